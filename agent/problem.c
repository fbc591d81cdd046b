/*
 * problem.c: RFC 9457 problem documents and the one table that maps kernel
 * errnos to HTTP statuses and stable codes. Any thread; no state.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "luofleet/macro.h"
#include "luofleet/util.h"
#include "problem.h"
#include "snapshot.h"

static const struct {
        const char *code;
        const char *title;
} titles[] = {
        { "not-found", "No such resource" },
        { "method-not-allowed", "Method not allowed" },
        { "unsupported-media-type", "Request body must be application/json" },
        { "malformed-json", "Malformed JSON body" },
        { "unknown-field", "Unknown field in request body" },
        { "invalid-field", "Invalid field in request body" },
        { "invalid-query", "Invalid query parameter" },
        { "malformed-request", "Malformed HTTP request" },
        { "body-too-large", "Request body too large" },
        { "precondition-failed", "The state document changed (If-Match)" },
        { "invalid-transition", "Action not allowed in the current state" },
        { "operation-in-progress", "Another operation is in progress" },
        { "operation-id-conflict", "operation_id already used for another action" },
        { "no-kernel-staged", "No kernel is staged for kexec" },
        { "no-rollback-target", "No previous kernel to roll back to" },
        { "digest-mismatch", "SHA-256 digest does not match" },
        { "file-not-found", "File not found" },
        { "not-a-regular-file", "Not a regular file" },
        { "path-not-allowed", "Path outside the allowed staging directories" },
        { "kernel-busy", "The kernel orchestrator is busy" },
        { "kernel-interrupted", "The kernel call was interrupted; retry" },
        { "kernel-error", "The kernel refused the operation" },
        { "kernel-permission-denied", "The agent lacks the privilege for this kernel call" },
        { "too-many-waiters", "Too many long-poll waiters" },
        { "too-many-streams", "Too many event streams" },
        { "shutting-down", "The agent is shutting down" },
        { "journal-full", "No room in the state directory for the journal" },
        { "state-dir-read-only", "The state directory is read-only" },
        { "journal-error", "The journal cannot be written" },
        { "authentication-required", "Authentication required" },
        { "invalid-credentials", "Invalid credentials" },
        { "client-certificate-required", "A TLS client certificate is required" },
        { "forbidden", "The caller's role may not do this" },
        { "origin-not-allowed", "Origin not allowed" },
        { "host-not-allowed", "Host not allowed" },
        { "hook-veto", "A workload hook vetoed the action" },
        { "hook-failed", "A workload hook failed after the action" },
        { "health-check-failed", "A post-update health check hook is failing" },
        { "hooks-unreadable", "The hooks of this phase cannot be read" },
        { "url-not-allowed", "URL scheme not allowed for staging" },
        { "download-failed", "The download failed" },
        { "download-too-large", "The download exceeds the size limit" },
        { "signature-required", "A signed staging request is required" },
        { "signature-invalid", "The staging request's signature is not valid" },
        { "no-lease", "There is no lease to renew" },
        { "lease-mismatch", "The lease belongs to another prepare" },
        { "workloads-not-confirmed", "Registered workloads did not confirm the prepare" },
        { "workload-veto", "A workload vetoed the prepare" },
        { "sessions-unfinished", "Workload sessions of the update are not finished" },
        { "internal-error", "Internal error" },
};

const char *problem_title(const char *code)
{
        for (size_t i = 0; i < ELEMENTSOF(titles); i++)
                if (strcmp(titles[i].code, code) == 0)
                        return titles[i].title;
        return "Error";
}

bool problem_code_known(const char *code)
{
        for (size_t i = 0; i < ELEMENTSOF(titles); i++)
                if (strcmp(titles[i].code, code) == 0)
                        return true;
        return false;
}

size_t problem_codes(const char *const **ret)
{
        static const char *codes[ELEMENTSOF(titles)];
        for (size_t i = 0; i < ELEMENTSOF(titles); i++)
                codes[i] = titles[i].code;
        *ret = codes;
        return ELEMENTSOF(titles);
}

/*
 * Copy s into out (size > 0), replacing each byte that does not start a
 * valid UTF-8 sequence by '?': details echo client bytes (paths, methods,
 * media types, jansson's error text), and one invalid byte would make
 * json_pack fail and the problem document vanish.
 */
static void utf8_sanitize(const char *s, char *out, size_t size)
{
        const unsigned char *p = (const unsigned char *)s;
        size_t o = 0;

        while (*p && o + 1 < size) {
                unsigned char c = *p;
                size_t n = c < 0x80                 ? 1
                           : c >= 0xc2 && c <= 0xdf ? 2
                           : (c & 0xf0) == 0xe0     ? 3
                           : c >= 0xf0 && c <= 0xf4 ? 4
                                                    : 0;
                bool ok = n > 0;

                for (size_t i = 1; ok && i < n; i++)
                        ok = (p[i] & 0xc0) == 0x80;
                if (ok && n == 3 && ((c == 0xe0 && p[1] < 0xa0) || (c == 0xed && p[1] > 0x9f)))
                        ok = false; /* overlong, surrogate */
                if (ok && n == 4 && ((c == 0xf0 && p[1] < 0x90) || (c == 0xf4 && p[1] > 0x8f)))
                        ok = false; /* overlong, > U+10FFFF */
                if (!ok || o + n >= size) {
                        out[o++] = '?';
                        p++;
                        continue;
                }
                memcpy(out + o, p, n);
                o += n;
                p += n;
        }
        out[o] = 0;
}

json_t *problem_new(int status, const char *code, const char *detail)
{
        char type[96], clean[2048]; /* a detail may name paths (deep folders) */

        utf8_sanitize(detail ? detail : "", clean, sizeof(clean));
        detail = clean;

        snprintf(type, sizeof(type), "urn:luofleet:problem:%s", code);
        return json_pack("{s:s, s:s, s:i, s:s, s:s}", "type", type, "title", problem_title(code),
                         "status", status, "detail", detail ? detail : "", "code", code);
}

/*
 * Kernel errno -> HTTP. EINVAL from SET_EVENT means "not from this state":
 * the kernel is the truth, even when our own table said yes a moment ago.
 */
static const struct problem_errno_map errno_map[] = {
        { EINVAL, 409, "invalid-transition" },      { EBUSY, 409, "kernel-busy" },
        { EAGAIN, 503, "kernel-interrupted" },      { EINTR, 503, "kernel-interrupted" },
        { EPERM, 500, "kernel-permission-denied" }, { EACCES, 500, "kernel-permission-denied" },
        { ENOEXEC, 409, "no-kernel-staged" },
};

struct problem_errno_map problem_from_errno(int err)
{
        if (err < 0)
                err = -err;
        for (size_t i = 0; i < ELEMENTSOF(errno_map); i++)
                if (errno_map[i].err == err)
                        return errno_map[i];
        return (struct problem_errno_map){ err, 500, "kernel-error" };
}

void http_reply_clear(struct http_reply *rep)
{
        json_decref(rep->json);
        doc_snapshot_unref(rep->snap);
        free(rep->text);
        op_job_free(rep->job);
        *rep = (struct http_reply){ 0 };
}

int http_reply_json(struct http_reply *rep, int status, json_t *json)
{
        json_decref(rep->json);
        rep->json = json;
        rep->status = status;
        rep->problem = false;
        return 0;
}

int http_reply_problem(struct http_reply *rep, int status, const char *code, const char *fmt, ...)
{
        /* room for a detail that names paths (two staging directories at a deep place) */
        char detail[2048];
        va_list ap;

        va_start(ap, fmt);
        int n = vsnprintf(detail, sizeof(detail), fmt, ap);
        va_end(ap);
        if (n < 0)
                detail[0] = 0;
        json_decref(rep->json);
        rep->json = problem_new(status, code, detail);
        rep->status = status;
        rep->problem = true;
        return 0;
}

static const char *const method_names[_HTTP_METHOD_MAX] = {
        [HTTP_GET] = "GET", [HTTP_HEAD] = "HEAD",     [HTTP_POST] = "POST",
        [HTTP_PUT] = "PUT", [HTTP_DELETE] = "DELETE", [HTTP_OTHER] = "OTHER",
};

const char *http_method_to_string(enum http_method m)
{
        return (unsigned)m < _HTTP_METHOD_MAX ? method_names[m] : "OTHER";
}

enum http_method http_method_from_string(const char *s)
{
        for (int i = 0; i < HTTP_OTHER; i++)
                if (s && strcmp(s, method_names[i]) == 0)
                        return i;
        return HTTP_OTHER;
}

const char *http_req_arg(const struct http_req *req, const char *key, bool *ret_dup)
{
        const char *v = NULL;
        bool found = false, dup = false;

        for (unsigned i = 0; i < req->n_args; i++) {
                if (strcmp(req->args[i].key, key) != 0)
                        continue;
                if (found)
                        dup = true;
                else
                        v = req->args[i].value ? req->args[i].value : "";
                found = true;
        }
        if (ret_dup)
                *ret_dup = dup;
        return v;
}
