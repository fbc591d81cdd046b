/*
 * router.c: the route table and dispatch (see router.h).
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "lease.h"
#include "luofleet/log.h"
#include "luofleet/macro.h"
#include "metrics.h"
#include "router.h"

struct route {
        enum http_method method;
        const char *path;
        http_handler_fn handler;
        int metrics_id;
};

static struct route routes[] = {
        { HTTP_GET, "/v1/state", h_state_get, -1 },
        { HTTP_GET, "/v1/events", h_events_get, -1 },
        { HTTP_POST, "/v1/prepare", h_action_post, -1 },
        { HTTP_POST, "/v1/cancel", h_action_post, -1 },
        { HTTP_POST, "/v1/reboot", h_action_post, -1 },
        { HTTP_POST, "/v1/rollback", h_action_post, -1 },
        { HTTP_POST, "/v1/finish", h_action_post, -1 },
        { HTTP_POST, "/v1/lease", h_lease_post, -1 },
        { HTTP_PUT, "/v1/kernel", h_kernel_put, -1 },
        { HTTP_GET, "/v1/kernel", h_kernel_get, -1 },
        { HTTP_DELETE, "/v1/kernel", h_kernel_delete, -1 },
        { HTTP_GET, "/v1/history", h_history_get, -1 },
        { HTTP_GET, "/v1/sessions", h_sessions_get, -1 },
        { HTTP_GET, "/healthz", h_healthz_get, -1 },
        { HTTP_GET, "/readyz", h_readyz_get, -1 },
        { HTTP_GET, "/metrics", h_metrics_get, -1 },
};

void router_init(void)
{
        for (size_t i = 0; i < ELEMENTSOF(routes); i++)
                routes[i].metrics_id = metrics_route_register(routes[i].path);
}

bool router_has_route(enum http_method method, const char *path)
{
        enum http_method m = method == HTTP_HEAD ? HTTP_GET : method;

        for (size_t i = 0; i < ELEMENTSOF(routes); i++)
                if (routes[i].method == m && strcmp(routes[i].path, path) == 0)
                        return true;
        return false;
}

int router_dispatch(struct http_req *req, struct http_reply *rep)
{
        enum http_method m = req->method == HTTP_HEAD ? HTTP_GET : req->method;
        char allow[64] = "";
        bool path_known = false;
        int id = -1, r;

        for (size_t i = 0; i < ELEMENTSOF(routes); i++) {
                if (strcmp(routes[i].path, req->path) != 0)
                        continue;
                path_known = true;
                id = routes[i].metrics_id;
                if (routes[i].method == m) {
                        r = routes[i].handler(req, rep);
                        if (r < 0) {
                                http_reply_clear(rep);
                                log_error_errno(r, "Handler for %s %s failed: %m",
                                                http_method_to_string(req->method), req->path);
                                http_reply_problem(rep, 500, "internal-error",
                                                   "internal error handling %s", req->path);
                        }
                        return id;
                }
                size_t n = strlen(allow);
                snprintf(allow + n, sizeof(allow) - n, "%s%s", n ? ", " : "",
                         http_method_to_string(routes[i].method));
                if (routes[i].method == HTTP_GET) {
                        n = strlen(allow);
                        snprintf(allow + n, sizeof(allow) - n, ", HEAD");
                }
        }
        if (!path_known) {
                http_reply_problem(rep, 404, "not-found", "no resource at %s", req->path);
                return -1;
        }
        http_reply_problem(rep, 405, "method-not-allowed",
                           "%.32s is not allowed on %s (allowed: %s)",
                           req->method_raw ? req->method_raw : http_method_to_string(req->method),
                           req->path, allow);
        snprintf(rep->allow, sizeof(rep->allow), "%s", allow);
        return id;
}
