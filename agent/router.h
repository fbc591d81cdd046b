/*
 * router.h: the static route table {method, path, handler} and dispatch:
 * unknown path 404, known path with another method 405 + Allow, HEAD served
 * by the GET handler. No state after router_init(); any thread.
 */
#pragma once

#include <stdbool.h>

#include "http.h"

void router_init(void);
/* Is there a handler for method on path? (server.c: checks before the body is read) */
bool router_has_route(enum http_method method, const char *path);
/* Dispatch req; fills rep. Returns the route's metrics id (-1 unmatched). */
int router_dispatch(struct http_req *req, struct http_reply *rep);

/* Handlers (h_*.c). */
int h_state_get(struct http_req *req, struct http_reply *rep);
int h_events_get(struct http_req *req, struct http_reply *rep);
int h_action_post(struct http_req *req, struct http_reply *rep);
int h_kernel_put(struct http_req *req, struct http_reply *rep);
int h_kernel_get(struct http_req *req, struct http_reply *rep);
int h_kernel_delete(struct http_req *req, struct http_reply *rep);
int h_history_get(struct http_req *req, struct http_reply *rep);
int h_healthz_get(struct http_req *req, struct http_reply *rep);
int h_readyz_get(struct http_req *req, struct http_reply *rep);
int h_metrics_get(struct http_req *req, struct http_reply *rep);
int h_sessions_get(struct http_req *req, struct http_reply *rep);
