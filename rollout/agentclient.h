/*
 * agentclient.h: HTTP requests to luofleet-agents over libcurl's multi
 * interface. Used by the engine thread only (ac_wakeup() and the counters
 * excepted: any thread). Requests complete through a callback called from
 * ac_dispatch(); a response body is parsed as JSON (capped) and freed right
 * after the callback: nothing per host stays allocated between requests.
 */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "controller.h"

enum ac_kind {
        AC_LONGPOLL, /* GET /v1/state?index=N&wait= */
        AC_ACTION,   /* POST/PUT of an action */
        AC_STATE,    /* GET /v1/state (no wait) */
        AC_READYZ,   /* GET /readyz */
        _AC_KIND_MAX,
};
const char *ac_kind_to_string(enum ac_kind k);

struct ac_result {
        int status;      /* HTTP status, 0 when no answer came (transport error) */
        char error[256]; /* the transport error, "" with an answer */
        json_t *body;    /* parsed JSON body or NULL (borrowed during the callback) */
};

struct agentclient;
struct ac_req;
typedef void (*ac_done_fn)(void *userdata, const struct ac_result *res);

struct ac_options {
        struct ctl_agent_tls tls;
        unsigned connect_timeout_ms, request_timeout_ms, max_connections;
};

int ac_new(const struct ac_options *o, struct agentclient **ret, char *err, size_t err_size);
struct agentclient *ac_free(struct agentclient *ac);

/*
 * Start a request: base_url + path (path starts with '/'), body (JSON, may
 * be NULL), if_match (the index for If-Match, or -1 for none), timeout_ms (0:
 * the default request timeout). cb(userdata, result) is called exactly once
 * from ac_dispatch() unless ac_cancel() is called first.
 */
int ac_start(struct agentclient *ac, enum ac_kind kind, const char *method, const char *base_url,
             const char *path, const json_t *body, int64_t if_match, unsigned timeout_ms,
             ac_done_fn cb, void *userdata, struct ac_req **ret);
/* Abandon a request: its callback is never called. NULL-safe. */
void ac_cancel(struct agentclient *ac, struct ac_req *req);

/* Wait for network activity or ac_wakeup(), at most timeout_ms, and run transfers. */
int ac_poll(struct agentclient *ac, int timeout_ms);
/* Call the callbacks of the finished requests. */
void ac_dispatch(struct agentclient *ac);
/* Any thread: make ac_poll() return now. */
void ac_wakeup(struct agentclient *ac);
unsigned ac_running(struct agentclient *ac);

/* Counters: requests started and failed (transport errors and 5xx), per kind. */
uint64_t ac_requests(struct agentclient *ac, enum ac_kind k);
uint64_t ac_errors(struct agentclient *ac, enum ac_kind k);
