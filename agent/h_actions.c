/*
 * h_actions.c: the mutating endpoints: POST /v1/{prepare,cancel,reboot,
 * finish,rollback} and PUT/GET/DELETE /v1/kernel. They validate the request,
 * let agent_op_begin() admit it (durably), and defer the kernel call to the
 * worker: the answer comes when it is done, except reboot and rollback,
 * answered 202 before the jump. Every answer of a mutating request leaves one audit
 * record (agent_audit): here when it is given at once, at the end of the
 * job when the worker gives it. MHD thread.
 */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "agent.h"
#include "body.h"
#include "download.h"
#include "http.h"
#include "luofleet/sign.h"
#include "luofleet/stagepath.h"
#include "lease.h"
#include "ops.h"
#include "router.h"
#include "staging.h"

static bool op_id_valid(const char *s)
{
        if (!*s)
                return false;
        for (; *s; s++)
                if (!isalnum((unsigned char)*s) && !strchr("._:-", *s))
                        return false;
        return true;
}

/* Common members of every action body. 1 ok, 0 answered. */
static int parse_common(json_t *body, struct op_request *rq, struct http_reply *rep)
{
        bool present;

        if (!body)
                return 1;
        if (!body_string(body, "operation_id", 1, OP_ID_MAX, rq->id, sizeof(rq->id), &present, rep))
                return 0;
        if (present && !op_id_valid(rq->id)) {
                http_reply_problem(rep, 400, "invalid-field",
                                   "operation_id may hold only letters, digits and . _ : -");
                json_object_set_new(rep->json, "field", json_string("operation_id"));
                return 0;
        }
        if (!body_string(body, "reason", 0, OP_REASON_MAX, rq->reason, sizeof(rq->reason),
                         &rq->has_reason, rep))
                return 0;
        return 1;
}

static void request_init(struct http_req *req, enum op_action act, struct op_request *rq)
{
        *rq = (struct op_request){ .action = act, .if_match = req->if_match, .who = req->who };
        agent_requested_by(&req->who, rq->requested_by, sizeof(rq->requested_by));
        snprintf(rq->source, sizeof(rq->source), "%s", req->peer[0] ? req->peer : "unknown");
        if (req->if_match) {
                /* Kept for the audit record of a job that outlives the request's headers. */
                snprintf(rq->precondition, sizeof(rq->precondition), "%.*s", AUDIT_PRECONDITION_MAX,
                         req->if_match);
                rq->has_precondition = true;
        }
}

/*
 * The audit record of an answer given now. An operation that went to the
 * worker (DEFER_WORKER) is audited when it ends, with its real answer
 * (agent_op_execute); a reboot (DEFER_AFTER) now, with its 202. r < 0: the
 * router answers 500 internal-error.
 */
static void audit_answer(struct http_req *req, const struct op_request *rq,
                         const struct http_reply *rep, int r)
{
        struct audit_entry e = {
                .who = &req->who,
                .source = rq->source,
                .action = op_action_to_string(rq->action),
                /* An id that failed validation is not repeated. */
                .operation_id = op_id_valid(rq->id) ? rq->id : NULL,
                .if_match = req->if_match,
                .status = rep->status,
                .force = rq->force,
        };

        if (r >= 0 && rep->defer == DEFER_WORKER)
                return;
        if (r < 0) {
                e.status = 500;
                e.code = "internal-error";
        } else if (rep->problem) {
                e.code = json_string_value(json_object_get(rep->json, "code"));
                e.replayed = json_is_true(json_object_get(rep->json, "replayed"));
        } else if (rep->defer == DEFER_AFTER && rep->job) {
                /* (a reboot deferred to the worker is audited there, like the others) */
                e.code = "accepted";
                e.operation_id = rep->job->rq.id;
        } else {
                /* A success answered at once is a replay of an earlier request. */
                e.code = "replayed";
                e.replayed = true;
        }
        agent_audit(req->agent, &e);
}

static int begin(struct http_req *req, struct http_reply *rep, const struct op_request *rq)
{
        struct op_job *job = NULL;
        int r;

        r = agent_op_begin(req->agent, rq, rep, &job);
        if (r <= 0)
                return r;
        rep->job = job;
        /*
         * With hooks configured, pre-reboot hooks may veto: the worker runs them
         * first and answers (409, or the 202 before the jump: ops.c).
         */
        if ((rq->action == OP_REBOOT && !(req->agent->cfg && req->agent->cfg->hooks_dir)) ||
            (rq->action == OP_STAGE && rq->kernel_url[0])) {
                /*
                 * Answer first, jump after: the job runs when the 202 has left. A
                 * staging from URLs is answered the same way: the download runs in
                 * the background, its progress and end in the operation.
                 */
                agent_lock(req->agent);
                json_t *doc = agent_doc_locked(req->agent, req->agent->operation);
                agent_unlock(req->agent);
                if (!doc)
                        return -ENOMEM;
                http_reply_json(rep, 202, doc);
                rep->close = rq->action == OP_REBOOT;
                rep->defer = DEFER_AFTER;
        } else
                rep->defer = DEFER_WORKER;
        return 0;
}

/* finish only: {"force": true} goes on past a failing post-update hook (hooks.c). */
static int parse_force(json_t *body, struct op_request *rq, struct http_reply *rep)
{
        json_t *f = json_object_get(body, "force");

        if (!f)
                return 1;
        if (!json_is_boolean(f)) {
                http_reply_problem(rep, 400, "invalid-field", "force must be a boolean");
                json_object_set_new(rep->json, "field", json_string("force"));
                return 0;
        }
        rq->force = json_is_true(f);
        return 1;
}

static int action_post(struct http_req *req, struct http_reply *rep, struct op_request *rq)
{
        static const char *const fields[] = { "operation_id", "reason", NULL };
        static const char *const finish_fields[] = { "operation_id", "reason", "force", NULL };
        static const char *const prepare_fields[] = { "operation_id", "reason", "lease_seconds",
                                                      NULL };
        json_t *body = NULL;

        if (!body_parse(req, rep, false, &body))
                return 0;
        if (body &&
            (!body_only_fields(body,
                               rq->action == OP_FINISH    ? finish_fields
                               : rq->action == OP_PREPARE ? prepare_fields
                                                          : fields,
                               NULL, rep) ||
             !parse_common(body, rq, rep) ||
             (rq->action == OP_PREPARE &&
              !lease_parse_seconds(body, lease_max_seconds(req->agent), &rq->lease_seconds, rep)) ||
             (rq->action == OP_FINISH && !parse_force(body, rq, rep)))) {
                json_decref(body);
                return 0;
        }
        json_decref(body);
        return begin(req, rep, rq);
}

int h_action_post(struct http_req *req, struct http_reply *rep)
{
        const char *name = strrchr(req->path, '/') + 1;
        struct op_request rq;
        int act = op_action_from_string(name), r;

        if (act < 0 || act == OP_STAGE || act == OP_UNSTAGE)
                return -EINVAL; /* the route table only maps the five actions here */
        request_init(req, act, &rq);
        r = action_post(req, rep, &rq);
        audit_answer(req, &rq, rep, r);
        return r;
}

static int field_problem(struct http_reply *rep, int status, const char *code, const char *key,
                         const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static int field_problem(struct http_reply *rep, int status, const char *code, const char *key,
                         const char *fmt, ...)
{
        char detail[256];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(detail, sizeof(detail), fmt, ap);
        va_end(ap);
        http_reply_problem(rep, status, code, "%s", detail);
        json_object_set_new(rep->json, "field", json_string(key));
        return 0;
}

/*
 * A file:/// URL is read by this process (download.c): only inside the
 * staging directories, the way a path is (stagepath_open()), or an operator
 * would learn the size and SHA-256 of any file the run user can read from
 * the digest-mismatch answer. Refused here with the answer a path outside
 * is given (422 path-not-allowed, the same detail and allowed_dirs), before an
 * operation exists; a file that is missing or unreadable is the download's
 * to report. 1 ok, 0 answered.
 */
static int file_url_allowed(const struct agent_config *cfg, const char *key, const char *url,
                            struct http_reply *rep)
{
        char *const *dirs = cfg ? cfg->staging_dirs : NULL;
        unsigned n = cfg ? cfg->n_staging_dirs : 0;
        char path[4096], names[1536] = ""; /* the allowed directories, as the detail lists them */
        size_t len = 0;
        json_t *list;
        int fd;

        if (download_file_url_path(url, path, sizeof(path)) < 0)
                return field_problem(rep, 400, "invalid-field", key,
                                     "%s.url: a file:/// URL must name an absolute path without "
                                     "'.', '..' or empty components, '?' or '#'",
                                     key);
        fd = stagepath_open(path, dirs, n);
        if (fd != -STAGEPATH_NOT_ALLOWED) {
                if (fd >= 0)
                        close(fd);
                return 1;
        }
        list = json_array();
        for (unsigned i = 0; i < n; i++) {
                int k = snprintf(names + len, sizeof(names) - len, "%s%s", i ? ", " : "", dirs[i]);
                if (k < 0 || (size_t)k >= sizeof(names) - len) {
                        names[len] = 0;
                        break;
                }
                len += (size_t)k;
                json_array_append_new(list, json_string(dirs[i]));
        }
        http_reply_problem(
                rep, 422, "path-not-allowed",
                "%s: %s is not inside an allowed staging directory "
                "(symbolic links are not followed); allowed: %s (the agent's --staging-dir)",
                key, url, names[0] ? names : "none");
        json_object_set_new(rep->json, "field", json_string(key));
        json_object_set_new(rep->json, "allowed_dirs", list ? list : json_array());
        return 0;
}

/*
 * {"path": ABS, "sha256": HEX} or {"url": URL, "sha256": HEX} (download.c);
 * the initrd takes the kernel's form. 1 ok, 0 answered.
 */
static int parse_file(json_t *body, const char *key, bool required, struct http_req *req,
                      char *path, char *url, char *sha, bool *by_url, struct http_reply *rep)
{
        static const char *const fields[] = { "path", "url", "sha256", NULL };
        const struct agent_config *cfg = req->agent->cfg;
        json_t *f = json_object_get(body, key);
        bool present, has_url;
        char where[32];

        if (!f) {
                if (!required)
                        return 1;
                return field_problem(rep, 400, "invalid-field", key, "%s is required", key);
        }
        if (!json_is_object(f))
                return field_problem(rep, 400, "invalid-field", key,
                                     "%s must be an object {\"path\" or \"url\", \"sha256\"}", key);
        snprintf(where, sizeof(where), "%s", key);
        if (!body_only_fields(f, fields, where, rep))
                return 0;
        has_url = json_object_get(f, "url") != NULL;
        if (has_url == (json_object_get(f, "path") != NULL))
                return field_problem(rep, 400, "invalid-field", key,
                                     "%s must have exactly one of \"path\" and \"url\"", key);
        if (required)
                *by_url = has_url;
        else if (has_url != *by_url)
                return field_problem(rep, 400, "invalid-field", key,
                                     "%s must be given the same way as kernel (path or url)", key);
        if (has_url) {
                if (!body_string(f, "url", 1, 4095, url, 4096, &present, rep))
                        return 0;
                for (const char *p = url; *p; p++)
                        if ((unsigned char)*p <= 0x20 || *p == 0x7f)
                                return field_problem(rep, 400, "invalid-field", key,
                                                     "%s.url must not contain spaces or control "
                                                     "characters",
                                                     key);
                if (!download_url_allowed(url, cfg && cfg->allow_http))
                        return field_problem(rep, 400, "url-not-allowed", key,
                                             "%s.url: only https:// and file:/// URLs%s are "
                                             "accepted",
                                             key,
                                             cfg && cfg->allow_http
                                                     ? " and http://"
                                                     : " (http:// needs --allow-http)");
                if (strncasecmp(url, "file:", 5) == 0 && !file_url_allowed(cfg, key, url, rep))
                        return 0;
        } else {
                if (!body_string(f, "path", 1, 4095, path, 4096, &present, rep))
                        return 0;
                if (!present || !staging_path_valid(path))
                        return field_problem(rep, 400, "invalid-field", key,
                                             "%s.path must be an absolute path without '.', '..' "
                                             "or empty components",
                                             key);
        }
        if (!body_string(f, "sha256", 64, 64, sha, 65, &present, rep))
                return 0;
        if (!present || !staging_sha256_valid(sha))
                return field_problem(rep, 400, "invalid-field", key,
                                     "%s.sha256 must be 64 hex digits", key);
        return 1;
}

/* {"key_id": NAME, "ed25519": BASE64}: the shape only; 1 ok, 0 answered. */
static int parse_signature(json_t *body, json_t **ret_sig, struct http_reply *rep)
{
        static const char *const fields[] = { "key_id", "ed25519", NULL };
        json_t *sig = json_object_get(body, "signature");
        const char *id, *b64;

        *ret_sig = NULL;
        if (!sig)
                return 1;
        if (!json_is_object(sig))
                return field_problem(rep, 400, "invalid-field", "signature",
                                     "signature must be an object {\"key_id\", \"ed25519\"}");
        if (!body_only_fields(sig, fields, "signature", rep))
                return 0;
        id = json_string_value(json_object_get(sig, "key_id"));
        b64 = json_string_value(json_object_get(sig, "ed25519"));
        if (!id || !sign_key_id_valid(id))
                return field_problem(rep, 400, "invalid-field", "signature",
                                     "signature.key_id must be 1 to %d letters, digits, '.', '_' "
                                     "or '-', not starting with '.'",
                                     SIGN_KEY_ID_MAX);
        if (!b64 || strlen(b64) != SIGN_B64_LEN)
                return field_problem(rep, 400, "invalid-field", "signature",
                                     "signature.ed25519 must be the %d-character base64 of a "
                                     "64-byte Ed25519 signature",
                                     SIGN_B64_LEN);
        *ret_sig = sig;
        return 1;
}

static int kernel_put(struct http_req *req, struct http_reply *rep, struct op_request *rq)
{
        static const char *const fields[] = { "kernel",       "initrd",    "cmdline", "reason",
                                              "operation_id", "signature", "release", NULL };
        json_t *body = NULL, *sig = NULL;
        const char *code = NULL;
        char detail[256];
        bool present, by_url = false;
        int ok;

        if (!body_parse(req, rep, true, &body))
                return 0;
        ok = body_only_fields(body, fields, NULL, rep) && parse_common(body, rq, rep) &&
             parse_file(body, "kernel", true, req, rq->kernel_path, rq->kernel_url,
                        rq->kernel_sha256, &by_url, rep) &&
             parse_file(body, "initrd", false, req, rq->initrd_path, rq->initrd_url,
                        rq->initrd_sha256, &by_url, rep) &&
             body_string(body, "cmdline", 0, sizeof(rq->cmdline) - 1, rq->cmdline,
                         sizeof(rq->cmdline), &present, rep) &&
             parse_signature(body, &sig, rep) &&
             /* the release the new boot must report (verify.c) */
             body_string(body, "release", 1, sizeof(rq->expected_release) - 1, rq->expected_release,
                         sizeof(rq->expected_release), &present, rep);
        /* Checked before the operation exists: a refused signature starts nothing. */
        if (ok &&
            !staging_check_signature(req->agent->cfg, sig, rq, &code, detail, sizeof(detail))) {
                http_reply_problem(rep, 422, code, "%s", detail);
                json_object_set_new(rep->json, "field", json_string("signature"));
                ok = 0;
        }
        json_decref(body);
        if (!ok)
                return 0;
        return begin(req, rep, rq);
}

int h_kernel_put(struct http_req *req, struct http_reply *rep)
{
        struct op_request rq;
        int r;

        request_init(req, OP_STAGE, &rq);
        r = kernel_put(req, rep, &rq);
        audit_answer(req, &rq, rep, r);
        return r;
}

int h_kernel_get(struct http_req *req, struct http_reply *rep)
{
        struct agent *a = req->agent;
        json_t *st;

        agent_lock(a);
        st = a->staged ? json_deep_copy(a->staged) : NULL;
        agent_unlock(a);
        if (!st)
                return http_reply_problem(rep, 404, "no-kernel-staged", "no kernel is staged");
        return http_reply_json(rep, 200, st);
}

int h_kernel_delete(struct http_req *req, struct http_reply *rep)
{
        struct op_request rq;
        int r;

        request_init(req, OP_UNSTAGE, &rq);
        /* The same body as the four actions: operation_id and reason. */
        r = action_post(req, rep, &rq);
        audit_answer(req, &rq, rep, r);
        return r;
}
