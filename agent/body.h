/*
 * body.h: request body decoding shared by the mutating handlers: media type,
 * size already capped by httpd.c, JSON syntax with duplicate keys rejected,
 * an object at the top, only known members, strings of bounded length.
 * MHD thread; no state.
 */
#pragma once

#include <jansson.h>
#include <stdbool.h>

#include "http.h"

/*
 * Is this Content-Type application/json (any case, parameters allowed)?
 * server.c asks it of every mutating request, with a body or not.
 */
bool body_media_type_is_json(const char *ct);

/*
 * Decode the body. *ret is NULL when there is no body (allowed only when
 * !required). Returns 1 ok, 0 when rep holds a 400/415 answer.
 */
int body_parse(struct http_req *req, struct http_reply *rep, bool required, json_t **ret);

/* Reject members not in the NULL-terminated list. 1 ok, 0 answered. */
int body_only_fields(json_t *obj, const char *const *allowed, const char *where,
                     struct http_reply *rep);

/*
 * Optional string member with a length range; copies into out (size >
 * max_len). 1 ok (present or not, *ret_present tells), 0 answered.
 */
int body_string(json_t *obj, const char *key, size_t min_len, size_t max_len, char *out,
                size_t out_size, bool *ret_present, struct http_reply *rep);
