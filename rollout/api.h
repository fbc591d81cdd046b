/*
 * api.h: luofleet-rollout's REST API (api/rollout.yaml): the route table,
 * one handler per resource, request-body decoding, problem+json answers
 * and the Server-Sent Events stream of a rollout. Handlers never see
 * libmicrohttpd: httpd.c fills a struct api_req, calls api_handle() and
 * turns the struct api_reply into an MHD response, so everything here is
 * testable without sockets.
 *
 * Threads: api_handle() and the stream functions run on httpd.c's
 * per-connection threads, concurrently; they share only struct api (atomics)
 * and the controller (thread-safe by contract, controller.h).
 */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <jansson.h>

#include "luofleet/macro.h"

struct controller;

/* Request body cap: 413 payload-too-large past it. */
#define API_BODY_MAX (1024 * 1024)
#define API_MAX_ARGS 16

/* The process-wide API state: set up by main, read by every connection thread. */
struct api {
        struct controller *ctl;
        atomic_bool stopping;  /* streams end, new ones are refused */
        atomic_uint streams;   /* open event streams */
        unsigned max_streams;  /* 503 too-many-streams past it */
        uint64_t keepalive_ms; /* ": keepalive" on an idle stream */
        atomic_uint_fast64_t requests_total;
        atomic_uint_fast64_t responses_4xx, responses_5xx;
        atomic_uint_fast64_t streams_total;
};

void api_init(struct api *a, struct controller *ctl, unsigned max_streams, uint64_t keepalive_ms);

enum api_method {
        API_GET,
        API_HEAD,
        API_POST,
        API_PUT,
        API_DELETE,
        API_OTHER,
};

struct api_req {
        struct api *api;
        enum api_method method;
        const char *method_raw;
        const char *path; /* decoded, without the query */
        struct {
                const char *key, *value; /* value NULL: "?key" alone */
        } args[API_MAX_ARGS];
        unsigned n_args;
        bool too_many_args;
        const char *content_type;  /* of the body, or NULL */
        const char *last_event_id; /* header, or NULL */
        const char *body;          /* NULL when none */
        size_t body_len;
        int fd;          /* the connection's socket: an event stream notices a hang-up */
        const char *who; /* the authenticated caller ("token:ops"), for the audit log */
};

struct api_stream;

struct api_reply {
        int status;
        json_t *json; /* the body (owned), or NULL */
        bool problem; /* json is application/problem+json */
        char *text;   /* a non-JSON body (owned, malloc'ed), e.g. /metrics */
        size_t text_len;
        const char *text_type;     /* its Content-Type */
        char allow[64];            /* 405: the Allow header */
        char location[320];        /* 201: the Location header */
        unsigned retry_after;      /* seconds, 0: no Retry-After */
        struct api_stream *stream; /* 200 text/event-stream: httpd.c reads it */
};

/* Count an answer by status class (api_handle does it for its own). */
void api_count_status(struct api *a, int status);
/* Route and answer one complete request. Always fills rep (status > 0). */
void api_handle(struct api_req *req, struct api_reply *rep);
/* A problem+json answer; field may be NULL. */
void api_reply_problem(struct api_reply *rep, int status, const char *code, const char *field,
                       const char *fmt, ...) _printf_(5, 6);
/* Set "instance" of a problem answer to the request path. */
void api_reply_instance(struct api_reply *rep, const char *path);
/* Free what rep owns (not the stream, which httpd.c hands to MHD). */
void api_reply_clear(struct api_reply *rep);
/* "Error" for unknown codes. */
const char *api_problem_title(const char *code);

/*
 * The next bytes of an event stream, at most max (>= 64). Blocks until
 * there are some: events, or a keepalive comment after keepalive_ms of
 * silence. Returns the count, or -1 at the end (the rollout finished and
 * every event was sent, the client hung up, the rollout is gone, or the
 * daemon stops; the wait is cut into slices of STREAM_SLICE_MS to notice).
 */
ssize_t api_stream_read(struct api_stream *s, char *buf, size_t max);
void api_stream_free(struct api_stream *s);
