/*
 * http.h: what a request handler sees and returns. Handlers never see
 * libmicrohttpd: httpd.c extracts the request into struct http_req and turns
 * struct http_reply into an MHD response, so handlers are unit-testable
 * without sockets (tests/unit/test_handlers.c).
 *
 * Thread: handlers run on MHD's thread. They must not block: kernel calls go
 * to the worker (DEFER_WORKER), waiting goes to longpoll.c (DEFER_LONGPOLL).
 */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "auth.h"

struct agent;
struct server;
struct doc_snapshot;
struct op_job;

enum http_method {
        HTTP_GET,
        HTTP_HEAD,
        HTTP_POST,
        HTTP_PUT,
        HTTP_DELETE,
        HTTP_OTHER,
        _HTTP_METHOD_MAX,
};

const char *http_method_to_string(enum http_method m);
enum http_method http_method_from_string(const char *s);

#define HTTP_MAX_ARGS 16

struct http_arg {
        const char *key;
        const char *value; /* NULL for "?flag" without '=' */
};

struct http_req {
        enum http_method method;
        const char *method_raw; /* as the client sent it */
        const char *path;
        struct agent *agent;
        struct server *server; /* NULL in handler unit tests */
        uint64_t max_wait_ms;

        struct http_arg args[HTTP_MAX_ARGS];
        unsigned n_args;
        bool too_many_args;

        const char *content_type;
        const char *if_match;
        const char *if_none_match;
        const char *last_event_id;

        const char *body; /* NUL-terminated copy, NULL when there is none */
        size_t body_len;

        char peer[64]; /* "127.0.0.1", "::1", "unix" */
        /* Who is asking (auth.c), filled before routing. */
        struct auth_identity who;
        bool resumed; /* second call after a long-poll wake-up */
};

/* Value of query argument key; NULL when absent. *ret_dup tells duplicates. */
const char *http_req_arg(const struct http_req *req, const char *key, bool *ret_dup);

enum http_defer {
        DEFER_NONE,
        DEFER_LONGPOLL, /* suspend until index > wait_index or the deadline */
        DEFER_WORKER,   /* suspend until the operation job completes */
        DEFER_SSE,      /* answer with an event stream */
        DEFER_AFTER,    /* answer now, run the job once the answer is sent */
};

struct http_reply {
        int status;
        json_t *json;              /* owned body (application/json or problem+json) */
        bool problem;              /* json is a problem document */
        struct doc_snapshot *snap; /* owned reference: the state document as body */
        char *text;                /* owned raw body (metrics) */
        size_t text_len;
        const char *content_type;     /* for text */
        char allow[64];               /* 405: the Allow header, "" = none */
        unsigned retry_after;         /* seconds, 0 = none */
        bool etag_from_snap;          /* ETag: "<snap->index>" */
        bool close;                   /* Connection: close */
        const char *www_authenticate; /* 401: the WWW-Authenticate challenge (static) */

        enum http_defer defer;
        uint64_t wait_index;    /* DEFER_LONGPOLL */
        uint64_t wait_deadline; /* DEFER_LONGPOLL: CLOCK_MONOTONIC usec */
        uint64_t sse_after;     /* DEFER_SSE: replay records with index > this */
        bool sse_initial_state; /* DEFER_SSE: start with the current document */
        struct op_job *job;     /* DEFER_WORKER / DEFER_AFTER: owned */
};

void http_reply_clear(struct http_reply *rep);

/*
 * Fill rep with an RFC 9457 problem document: status, stable code, detail
 * (printf). Extension members can be added to rep->json afterwards. Returns 0.
 */
int http_reply_problem(struct http_reply *rep, int status, const char *code, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));

/* rep owns json (stolen). */
int http_reply_json(struct http_reply *rep, int status, json_t *json);

typedef int (*http_handler_fn)(struct http_req *req, struct http_reply *rep);
