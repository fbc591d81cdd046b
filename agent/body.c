/*
 * body.c: request body decoding (see body.h).
 */
#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "body.h"

bool body_media_type_is_json(const char *ct)
{
        static const char want[] = "application/json";
        size_t n = sizeof(want) - 1;

        if (!ct)
                return false;
        while (*ct == ' ')
                ct++;
        if (strncasecmp(ct, want, n) != 0)
                return false;
        ct += n;
        while (*ct == ' ')
                ct++;
        return *ct == 0 || *ct == ';';
}

int body_parse(struct http_req *req, struct http_reply *rep, bool required, json_t **ret)
{
        json_error_t err;
        json_t *j;

        *ret = NULL;
        if (!req->body || req->body_len == 0) {
                if (required) {
                        http_reply_problem(rep, 400, "malformed-json",
                                           "a JSON object body is required");
                        return 0;
                }
                return 1;
        }
        if (!body_media_type_is_json(req->content_type)) {
                http_reply_problem(rep, 415, "unsupported-media-type",
                                   "Content-Type must be application/json, not %s",
                                   req->content_type ? req->content_type : "(none)");
                return 0;
        }
        j = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &err);
        if (!j) {
                http_reply_problem(rep, 400, "malformed-json",
                                   "invalid JSON at line %d column %d: %s", err.line, err.column,
                                   err.text);
                return 0;
        }
        if (!json_is_object(j)) {
                json_decref(j);
                http_reply_problem(rep, 400, "malformed-json", "the body must be a JSON object");
                return 0;
        }
        *ret = j;
        return 1;
}

int body_only_fields(json_t *obj, const char *const *allowed, const char *where,
                     struct http_reply *rep)
{
        const char *key;
        json_t *v;

        json_object_foreach (obj, key, v) {
                bool ok = false;
                for (const char *const *a = allowed; *a; a++)
                        if (strcmp(*a, key) == 0)
                                ok = true;
                if (!ok) {
                        /* Clip hostile keys in the message, at a UTF-8 boundary. */
                        size_t n = strnlen(key, 64);
                        if (key[n])
                                while (n > 0 && ((unsigned char)key[n] & 0xc0) == 0x80)
                                        n--;
                        http_reply_problem(rep, 400, "unknown-field", "unknown field %.*s%s%s",
                                           (int)n, key, where ? " in " : "", where ? where : "");
                        json_object_set_new(rep->json, "field", json_stringn(key, n));
                        return 0;
                }
        }
        return 1;
}

int body_string(json_t *obj, const char *key, size_t min_len, size_t max_len, char *out,
                size_t out_size, bool *ret_present, struct http_reply *rep)
{
        json_t *v = json_object_get(obj, key);
        size_t n;

        if (ret_present)
                *ret_present = false;
        if (!v)
                return 1;
        if (!json_is_string(v)) {
                http_reply_problem(rep, 400, "invalid-field", "%s must be a string", key);
                json_object_set_new(rep->json, "field", json_string(key));
                return 0;
        }
        n = json_string_length(v);
        if (n < min_len || n > max_len || n >= out_size ||
            strlen(json_string_value(v)) != n /* embedded NUL */) {
                http_reply_problem(rep, 400, "invalid-field", "%s must be %zu to %zu characters",
                                   key, min_len, max_len);
                json_object_set_new(rep->json, "field", json_string(key));
                return 0;
        }
        memcpy(out, json_string_value(v), n + 1);
        if (ret_present)
                *ret_present = true;
        return 1;
}
