/*
 * fuzz_body.c: request body decoding (body.c) as the mutating handlers use
 * it: body_parse on arbitrary bytes, body_only_fields with the handlers'
 * field lists, body_string with their length bounds, and the staging
 * path/digest checks on whatever strings came out (h_actions.c).
 *
 * Input: the first byte picks the Content-Type variant and whether a body is
 * required; the rest is the body, copied NUL-terminated the way httpd.c
 * hands it over.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "body.h"
#include "http.h"
#include "staging.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const action_fields[] = { "operation_id", "reason", NULL };
static const char *const kernel_fields[] = { "kernel",       "initrd", "cmdline",
                                             "operation_id", "reason", NULL };
static const char *const file_fields[] = { "path", "sha256", NULL };

static void check_reply(struct http_reply *rep)
{
        /* A refusal must be a complete problem document naming the field. */
        if (rep->status != 400 || !rep->problem || !json_is_object(rep->json) ||
            !json_is_string(json_object_get(rep->json, "field")))
                abort();
        http_reply_clear(rep);
}

static void file_object(json_t *body, const char *key)
{
        struct http_reply rep = { 0 };
        json_t *f = json_object_get(body, key);
        char path[4096], sha[65];
        bool present;

        if (!json_is_object(f))
                return;
        if (!body_only_fields(f, file_fields, key, &rep)) {
                check_reply(&rep);
                return;
        }
        if (!body_string(f, "path", 1, 4095, path, sizeof(path), &present, &rep)) {
                check_reply(&rep);
                return;
        }
        if (present) {
                if (strlen(path) < 1 || strlen(path) > 4095)
                        abort();
                (void)staging_path_valid(path);
        }
        if (!body_string(f, "sha256", 64, 64, sha, sizeof(sha), &present, &rep)) {
                check_reply(&rep);
                return;
        }
        if (present) {
                if (strlen(sha) != 64)
                        abort();
                (void)staging_sha256_valid(sha);
        }
        http_reply_clear(&rep);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        static const char *const types[] = {
                "application/json",   "application/json; charset=utf-8",
                " APPLICATION/JSON ", "application/jsonx",
                "text/plain",         NULL,
                "application/json;",  "application/json ;x",
        };
        struct http_req req = { 0 };
        struct http_reply rep = { 0 };
        uint8_t sel = size ? data[0] : 0;
        char *body;
        json_t *j = NULL;
        char id[128], reason[1024], cmdline[4096];
        bool present;

        if (size)
                data++, size--;
        body = malloc(size + 1);
        if (!body)
                return 0;
        memcpy(body, data, size);
        body[size] = 0;

        req.method = HTTP_POST;
        req.path = "/v1/prepare";
        req.content_type = types[sel % (sizeof(types) / sizeof(types[0]))];
        req.body = (sel & 0x80) && size == 0 ? NULL : body;
        req.body_len = size;

        if (!body_parse(&req, &rep, sel & 0x40, &j)) {
                if (j || (rep.status != 400 && rep.status != 415) || !rep.problem || !rep.json)
                        abort();
                goto out;
        }
        if (!j)
                goto out;
        if (!json_is_object(j))
                abort();

        if (!body_only_fields(j, (sel & 0x20) ? kernel_fields : action_fields, NULL, &rep)) {
                check_reply(&rep);
        } else {
                http_reply_clear(&rep);
        }
        /* Bounds as in h_actions.c; an over-long member must be refused, not copied. */
        if (!body_string(j, "operation_id", 1, sizeof(id) - 1, id, sizeof(id), &present, &rep))
                check_reply(&rep);
        else if (present && strlen(id) >= sizeof(id))
                abort();
        if (!body_string(j, "reason", 0, sizeof(reason) - 1, reason, sizeof(reason), &present,
                         &rep))
                check_reply(&rep);
        if (!body_string(j, "cmdline", 0, sizeof(cmdline) - 1, cmdline, sizeof(cmdline), &present,
                         &rep))
                check_reply(&rep);
        /* A caller that passes max_len >= out_size must still be safe. */
        if (!body_string(j, "reason", 0, 100000, id, sizeof(id), &present, &rep))
                check_reply(&rep);
        file_object(j, "kernel");
        file_object(j, "initrd");
out:
        json_decref(j);
        http_reply_clear(&rep);
        free(body);
        return 0;
}
