/*
 * api.c: luofleet-rollout's REST API (api/rollout.yaml): the route table,
 * the handlers, request bodies, problem+json, and the per-rollout event
 * stream. Runs on httpd.c's connection threads (any number at once); what
 * it shares is struct api (atomics) and the controller, whose functions are
 * thread-safe (controller.h). Never sees libmicrohttpd.
 */
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api.h"
#include "controller.h"
#include "luofleet/log.h"
#include "luofleet/macro.h"
#include "luofleet/util.h"
#include "problem.h"

/* How long one controller_events() wait lasts: the stop and hang-up latency of a stream. */
#define STREAM_SLICE_MS 500
/* Events fetched per controller_events() call. */
#define STREAM_BATCH 64
#define REASON_MAX 256

void api_init(struct api *a, struct controller *ctl, unsigned max_streams, uint64_t keepalive_ms)
{
        *a = (struct api){ .ctl = ctl, .max_streams = max_streams, .keepalive_ms = keepalive_ms };
        atomic_init(&a->stopping, false);
        atomic_init(&a->streams, 0);
}

/* ---- problems --------------------------------------------------------------- */

/* The HTTP side's codes; the core adds its own (controller.h, api/rollout.yaml). */
static const struct {
        const char *code;
        const char *title;
} titles[] = { /* contract-enums: ignore (titles, not an enum table) */
               { "invalid-json", "Malformed JSON body" },
               { "invalid-field", "Invalid field" },
               { "missing-field", "Required field missing" },
               { "invalid-query", "Invalid query parameter" },
               { "not-found", "No such resource" },
               { "method-not-allowed", "Method not allowed" },
               { "payload-too-large", "Request body too large" },
               { "unsupported-media-type", "Request body must be application/json" },
               { "authentication-required", "Authentication required" },
               { "invalid-credentials", "Invalid credentials" },
               { "client-certificate-required", "A TLS client certificate is required" },
               { "forbidden", "The caller's role may not do this" },
               { "too-many-streams", "Too many event streams" },
               { "shutting-down", "The controller is shutting down" },
               { "internal-error", "Internal error" },
               { "rollout-exists", "A rollout with this id and another spec exists" },
               { "host-in-rollout", "The host is part of an unfinished rollout" },
               { "invalid-transition", "Not allowed in the rollout's current status" },
               { "no-hosts", "No host matches the rollout's selection" },
               { "store-error", "The store cannot be written" },
               { "not-implemented", "Not implemented yet" }
};

const char *api_problem_title(const char *code)
{
        for (size_t i = 0; i < ELEMENTSOF(titles); i++)
                if (strcmp(titles[i].code, code) == 0)
                        return titles[i].title;
        /* The agent's codes (and titles) where the core reuses one. */
        return problem_title(code);
}

void api_reply_clear(struct api_reply *rep)
{
        json_decref(rep->json);
        free(rep->text);
        *rep = (struct api_reply){ 0 };
}

void api_reply_problem(struct api_reply *rep, int status, const char *code, const char *field,
                       const char *fmt, ...)
{
        char detail[512];
        va_list ap;
        json_t *p;

        va_start(ap, fmt);
        vsnprintf(detail, sizeof(detail), fmt, ap);
        va_end(ap);
        api_reply_clear(rep);
        rep->status = status;
        /* problem_new(): the agent's document ({type, title, status, detail, code}), with
         * client bytes in detail made valid UTF-8. */
        p = problem_new(status, code, detail);
        if (p) {
                json_object_set_new(p, "title", json_string(api_problem_title(code)));
                if (field && field[0])
                        json_object_set_new(p, "field", json_string(field));
        }
        rep->json = p;
        rep->problem = true;
}

void api_reply_instance(struct api_reply *rep, const char *path)
{
        if (rep->problem && rep->json && path) {
                json_t *s = json_string(path);
                if (s) /* (NULL for a path that is not UTF-8: then no instance) */
                        json_object_set_new(rep->json, "instance", s);
        }
}

static void reply_ctl_problem(struct api_reply *rep, const struct ctl_problem *p)
{
        if (p->status >= 400 && p->status <= 599 && p->code[0])
                api_reply_problem(rep, p->status, p->code, p->field, "%s", p->detail);
        else
                api_reply_problem(rep, 500, "internal-error", NULL,
                                  "the controller failed without saying why");
}

static void reply_errno(struct api_reply *rep, int r, const char *what)
{
        if (r == -ENOMEM)
                api_reply_problem(rep, 500, "internal-error", NULL, "out of memory");
        else
                api_reply_problem(rep, 500, "internal-error", NULL, "%s: %s", what, strerror(-r));
}

static void reply_json(struct api_reply *rep, int status, json_t *body)
{
        api_reply_clear(rep);
        if (!body) {
                reply_errno(rep, -ENOMEM, "answer");
                return;
        }
        rep->status = status;
        rep->json = body;
}

/* ---- request pieces ------------------------------------------------------------ */

static const char *arg(const struct api_req *req, const char *key, unsigned *ret_count)
{
        const char *v = NULL;
        unsigned n = 0;
        for (unsigned i = 0; i < req->n_args; i++)
                if (strcmp(req->args[i].key, key) == 0) {
                        if (!n)
                                v = req->args[i].value ? req->args[i].value : "";
                        n++;
                }
        if (ret_count)
                *ret_count = n;
        return v;
}

/* application/json, with parameters (charset) allowed. */
static bool media_type_json(const char *ct)
{
        size_t n = strlen("application/json");
        if (!ct)
                return false;
        while (*ct == ' ' || *ct == '\t')
                ct++;
        if (strncasecmp(ct, "application/json", n) != 0)
                return false;
        ct += n;
        while (*ct == ' ' || *ct == '\t')
                ct++;
        return *ct == 0 || *ct == ';';
}

/*
 * The body as a JSON object. Returns 1 (with *ret NULL when there is none
 * and !required), 0 when rep holds the 400/415 answer.
 */
static int body_object(struct api_req *req, struct api_reply *rep, bool required, json_t **ret)
{
        json_error_t err;
        json_t *j;

        *ret = NULL;
        if (!req->body || req->body_len == 0) {
                if (!required)
                        return 1;
                api_reply_problem(rep, 400, "invalid-json", NULL,
                                  "this request needs a JSON object body");
                return 0;
        }
        if (!media_type_json(req->content_type)) {
                api_reply_problem(rep, 415, "unsupported-media-type", NULL,
                                  "the body's Content-Type is %s%s%s, expected application/json",
                                  req->content_type ? "\"" : "",
                                  req->content_type ? req->content_type : "missing",
                                  req->content_type ? "\"" : "");
                return 0;
        }
        j = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &err);
        if (!j) {
                api_reply_problem(rep, 400, "invalid-json", NULL, "line %d, column %d: %s",
                                  err.line, err.column, err.text);
                return 0;
        }
        if (!json_is_object(j)) {
                json_decref(j);
                api_reply_problem(rep, 400, "invalid-json", NULL, "the body must be a JSON object");
                return 0;
        }
        *ret = j;
        return 1;
}

/* Host names and rollout ids (the core's rule): [A-Za-z0-9._-], but not "." or "..". */
static bool token_valid(const char *s, size_t max)
{
        size_t n = strlen(s);
        if (n == 0 || n > max || strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
                return false;
        for (const char *p = s; *p; p++)
                if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                      (*p >= '0' && *p <= '9') || *p == '.' || *p == '_' || *p == '-'))
                        return false;
        return true;
}

#define HOST_NAME_MAX_LEN 253
#define ROLLOUT_ID_MAX_LEN 64

/*
 * ?selector=k=v,k2=v2 as {"k": "v", "k2": "v2"}. Keys are label names
 * ([A-Za-z0-9._/-]), values anything but ',' (empty allowed). Returns 1,
 * or 0 with the 400 in rep.
 */
static int parse_selector(const char *s, struct api_reply *rep, json_t **ret)
{
        json_t *sel = json_object();
        const char *p = s;

        if (!sel) {
                reply_errno(rep, -ENOMEM, "selector");
                return 0;
        }
        while (*p) {
                const char *end = strchr(p, ','), *eq;
                size_t len = end ? (size_t)(end - p) : strlen(p);
                char key[128], val[256];

                eq = memchr(p, '=', len);
                if (!eq || eq == p || (size_t)(eq - p) >= sizeof(key) ||
                    len - (size_t)(eq - p) - 1 >= sizeof(val))
                        goto bad;
                memcpy(key, p, (size_t)(eq - p));
                key[eq - p] = 0;
                memcpy(val, eq + 1, len - (size_t)(eq - p) - 1);
                val[len - (size_t)(eq - p) - 1] = 0;
                for (const char *k = key; *k; k++)
                        if (!((*k >= 'a' && *k <= 'z') || (*k >= 'A' && *k <= 'Z') ||
                              (*k >= '0' && *k <= '9') || strchr("._/-", *k)))
                                goto bad;
                if (strchr(val, '=') || json_object_get(sel, key))
                        goto bad;
                json_t *v = json_string(val);
                if (!v) /* not UTF-8 */
                        goto bad;
                json_object_set_new(sel, key, v);
                if (!end)
                        break;
                p = end + 1;
                if (!*p)
                        goto bad; /* trailing comma */
        }
        *ret = sel;
        return 1;
bad:
        json_decref(sel);
        api_reply_problem(rep, 400, "invalid-query", "selector",
                          "selector must be LABEL=VALUE pairs separated by commas, each label "
                          "once (e.g. zone=a,rack=r1)");
        return 0;
}

/* A list from the controller as {"<member>": [...]} (or as it came, if already an object). */
static json_t *wrap_list(json_t *list, const char *member)
{
        if (!list || json_is_object(list))
                return list;
        json_t *o = json_object();
        if (!o || json_object_set_new(o, member, list) < 0) {
                json_decref(o);
                return NULL;
        }
        return o;
}

/* ---- handlers ------------------------------------------------------------------ */

struct route_match {
        const char *seg[2]; /* the path's variable segments ({name}, {id}), decoded */
        char buf[2][512];
};

typedef void (*handler_fn)(struct api_req *req, const struct route_match *m, struct api_reply *rep);

static void h_healthz(struct api_req *req, const struct route_match *m, struct api_reply *rep)
{
        char detail[256] = "";
        bool ok;

        (void)m;
        ok = !atomic_load(&req->api->stopping) &&
             controller_healthy(req->api->ctl, detail, sizeof(detail));
        if (!ok && !detail[0])
                snprintf(detail, sizeof(detail), "%s",
                         atomic_load(&req->api->stopping) ? "shutting down" : "unhealthy");
        json_t *b = json_pack("{s:s}", "status", ok ? "ok" : "unhealthy");
        if (b && detail[0]) {
                json_t *d = json_string(detail);
                if (d)
                        json_object_set_new(b, "detail", d);
        }
        reply_json(rep, ok ? 200 : 503, b);
}

static void h_metrics(struct api_req *req, const struct route_match *m, struct api_reply *rep)
{
        char *buf = NULL, own[1024];
        size_t len = 0;
        int r, n;
        struct api *a = req->api;

        (void)m;
        r = controller_metrics(a->ctl, &buf, &len);
        if (r < 0) {
                free(buf);
                reply_errno(rep, r, "metrics");
                return;
        }
        n = snprintf(own, sizeof(own),
                     "# HELP luofleet_rollout_http_requests_total API requests answered.\n"
                     "# TYPE luofleet_rollout_http_requests_total counter\n"
                     "luofleet_rollout_http_requests_total %llu\n"
                     "# HELP luofleet_rollout_http_errors_total API answers by status class.\n"
                     "# TYPE luofleet_rollout_http_errors_total counter\n"
                     "luofleet_rollout_http_errors_total{class=\"4xx\"} %llu\n"
                     "luofleet_rollout_http_errors_total{class=\"5xx\"} %llu\n"
                     "# HELP luofleet_rollout_event_streams Open event streams.\n"
                     "# TYPE luofleet_rollout_event_streams gauge\n"
                     "luofleet_rollout_event_streams %u\n"
                     "# HELP luofleet_rollout_event_streams_total Event streams opened.\n"
                     "# TYPE luofleet_rollout_event_streams_total counter\n"
                     "luofleet_rollout_event_streams_total %llu\n",
                     (unsigned long long)atomic_load(&a->requests_total),
                     (unsigned long long)atomic_load(&a->responses_4xx),
                     (unsigned long long)atomic_load(&a->responses_5xx), atomic_load(&a->streams),
                     (unsigned long long)atomic_load(&a->streams_total));
        if (n < 0 || (size_t)n >= sizeof(own)) {
                free(buf);
                reply_errno(rep, -ENOBUFS, "metrics");
                return;
        }
        char *all = realloc(buf, len + (size_t)n + 1);
        if (!all) {
                free(buf);
                reply_errno(rep, -ENOMEM, "metrics");
                return;
        }
        memcpy(all + len, own, (size_t)n + 1);
        api_reply_clear(rep);
        rep->status = 200;
        rep->text = all;
        rep->text_len = len + (size_t)n;
        rep->text_type = "text/plain; version=0.0.4; charset=utf-8";
}

static void h_hosts(struct api_req *req, const struct route_match *m, struct api_reply *rep)
{
        json_t *sel = NULL;
        unsigned n;
        const char *s = arg(req, "selector", &n);

        (void)m;
        if (n > 1) {
                api_reply_problem(rep, 400, "invalid-query", "selector",
                                  "selector is given %u times", n);
                return;
        }
        if (s && s[0] && !parse_selector(s, rep, &sel))
                return;
        json_t *list = controller_hosts(req->api->ctl, sel);
        json_decref(sel);
        reply_json(rep, 200, wrap_list(list, "hosts"));
}

static void h_host(struct api_req *req, const struct route_match *m, struct api_reply *rep)
{
        const char *name = m->seg[0];
        struct ctl_problem p = { 0 };
        json_t *ret = NULL, *body = NULL;
        bool created = false;
        int r;

        if (!token_valid(name, HOST_NAME_MAX_LEN)) {
                if (req->method == API_PUT)
                        api_reply_problem(rep, 400, "invalid-field", "name",
                                          "a host name is 1 to %d of [A-Za-z0-9._-] (not "
                                          "\".\" or \"..\")",
                                          HOST_NAME_MAX_LEN);
                else
                        api_reply_problem(rep, 404, "not-found", NULL, "no host %s", name);
                return;
        }
        switch (req->method) {
        case API_GET:
        case API_HEAD:
                r = controller_host_get(req->api->ctl, name, &ret);
                if (r == -ENOENT)
                        api_reply_problem(rep, 404, "not-found", NULL, "no host %s", name);
                else if (r < 0)
                        reply_errno(rep, r, "host");
                else
                        reply_json(rep, 200, ret);
                return;
        case API_PUT:
                if (!body_object(req, rep, true, &body))
                        return;
                r = controller_host_put(req->api->ctl, name, body, &ret, &created, &p);
                json_decref(body);
                if (r < 0) {
                        reply_ctl_problem(rep, &p);
                        return;
                }
                /* Audited: who pointed a host (and with it the agent token) where. */
                log_notice("Host %s %s by %s: url %s", name, created ? "added" : "changed",
                           req->who ? req->who : "?",
                           json_string_value(json_object_get(ret, "url")) ?: "?");
                reply_json(rep, created ? 201 : 200, ret);
                if (created)
                        snprintf(rep->location, sizeof(rep->location), "/v1/hosts/%s", name);
                return;
        case API_DELETE:
                r = controller_host_delete(req->api->ctl, name, &p);
                if (r < 0) {
                        if (!p.status && r == -ENOENT)
                                api_reply_problem(rep, 404, "not-found", NULL, "no host %s", name);
                        else
                                reply_ctl_problem(rep, &p);
                        return;
                }
                log_notice("Host %s deleted by %s", name, req->who ? req->who : "?");
                api_reply_clear(rep);
                rep->status = 204;
                return;
        default:
                api_reply_problem(rep, 500, "internal-error", NULL, "unrouted method");
        }
}

static void h_rollouts(struct api_req *req, const struct route_match *m, struct api_reply *rep)
{
        struct ctl_problem p = { 0 };
        json_t *body = NULL, *ret = NULL;
        int status = 0, r;

        (void)m;
        if (req->method != API_POST) {
                reply_json(rep, 200, wrap_list(controller_rollouts(req->api->ctl), "rollouts"));
                return;
        }
        if (!body_object(req, rep, true, &body))
                return;
        r = controller_rollout_create(req->api->ctl, body, &ret, &status, &p);
        json_decref(body);
        if (r < 0) {
                reply_ctl_problem(rep, &p);
                return;
        }
        if (status < 200 || status > 299)
                status = 200;
        reply_json(rep, status, ret);
        const char *id = ret ? json_string_value(json_object_get(ret, "id")) : NULL;
        if (status == 201 && id)
                snprintf(rep->location, sizeof(rep->location), "/v1/rollouts/%s", id);
}

static bool rollout_id_ok(const char *id, struct api_reply *rep)
{
        if (token_valid(id, ROLLOUT_ID_MAX_LEN))
                return true;
        api_reply_problem(rep, 404, "not-found", NULL, "no rollout %s", id);
        return false;
}

static void h_rollout(struct api_req *req, const struct route_match *m, struct api_reply *rep)
{
        struct ctl_problem p = { 0 };
        json_t *ret = NULL;

        if (!rollout_id_ok(m->seg[0], rep))
                return;
        if (controller_rollout_get(req->api->ctl, m->seg[0], &ret, &p) < 0) {
                reply_ctl_problem(rep, &p);
                return;
        }
        reply_json(rep, 200, ret);
}

static void h_action(struct api_req *req, const struct route_match *m, struct api_reply *rep)
{
        static const char *const allowed[] = { "reason" };
        struct ctl_problem p = { 0 };
        const char *reason = NULL, *key;
        json_t *body = NULL, *ret = NULL, *v;
        int r;

        if (!rollout_id_ok(m->seg[0], rep))
                return;
        if (!body_object(req, rep, false, &body))
                return;
        json_object_foreach (body, key, v) {
                bool known = false;
                for (size_t i = 0; i < ELEMENTSOF(allowed); i++)
                        known = known || strcmp(key, allowed[i]) == 0;
                if (!known) {
                        api_reply_problem(rep, 400, "invalid-field", key,
                                          "unknown member \"%s\" (the body may have \"reason\")",
                                          key);
                        goto out;
                }
        }
        v = json_object_get(body, "reason");
        if (v && !json_is_null(v)) {
                reason = json_string_value(v);
                if (!reason || !reason[0] || strlen(reason) > REASON_MAX) {
                        api_reply_problem(rep, 400, "invalid-field", "reason",
                                          "reason must be a string of 1 to %d bytes", REASON_MAX);
                        goto out;
                }
        }
        r = controller_rollout_action(req->api->ctl, m->seg[0], m->seg[1], reason, &ret, &p);
        if (r < 0)
                reply_ctl_problem(rep, &p);
        else
                reply_json(rep, 200, ret);
out:
        json_decref(body);
}

/* ---- the event stream ------------------------------------------------------------- */

struct api_stream {
        struct api *api;
        char id[ROLLOUT_ID_MAX_LEN + 1];
        int64_t after;      /* the last seq sent */
        int fd;             /* the client's socket, for hang-ups; -1 unknown */
        uint64_t last_usec; /* the last write (monotonic) */
        bool finished;      /* no events will come anymore */
        bool ended;
        json_t *batch; /* fetched, not yet formatted */
        size_t batch_i;
        char *pend; /* formatted, not yet handed out */
        size_t pend_len, pend_off, pend_cap;
};

void api_stream_free(struct api_stream *s)
{
        if (!s)
                return;
        json_decref(s->batch);
        free(s->pend);
        atomic_fetch_sub(&s->api->streams, 1);
        free(s);
}

static int pend_add(struct api_stream *s, const char *data, size_t len)
{
        if (s->pend_off == s->pend_len)
                s->pend_off = s->pend_len = 0;
        if (s->pend_len + len > s->pend_cap) {
                size_t cap = MAX(s->pend_cap * 2, s->pend_len + len + 1024);
                char *n = realloc(s->pend, cap);
                if (!n)
                        return -ENOMEM;
                s->pend = n;
                s->pend_cap = cap;
        }
        memcpy(s->pend + s->pend_len, data, len);
        s->pend_len += len;
        return 0;
}

/* "id: <seq>\nevent: <type>\ndata: <json>\n\n" for one event. */
static int format_event(struct api_stream *s, json_t *ev)
{
        json_int_t seq = json_integer_value(json_object_get(ev, "seq"));
        const char *type = json_string_value(json_object_get(ev, "type"));
        char head[128];
        char *data;
        int n, r;

        data = json_dumps(ev, JSON_COMPACT);
        if (!data)
                return -ENOMEM;
        n = snprintf(head, sizeof(head), "id: %lld\nevent: %s\ndata: ", (long long)seq,
                     type && strlen(type) < 64 && !strpbrk(type, "\r\n") ? type : "message");
        r = n > 0 && (size_t)n < sizeof(head) ? pend_add(s, head, (size_t)n) : -ENOBUFS;
        if (r >= 0)
                r = pend_add(s, data, strlen(data));
        if (r >= 0)
                r = pend_add(s, "\n\n", 2);
        free(data);
        if (r >= 0 && seq > s->after)
                s->after = seq;
        return r;
}

static bool client_gone(int fd)
{
        struct pollfd pfd = { .fd = fd, .events = POLLRDHUP };
        if (fd < 0)
                return false;
        return poll(&pfd, 1, 0) > 0 && (pfd.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

/* Format what was fetched; fetch more (waiting one slice) when nothing is pending. */
static int stream_fill(struct api_stream *s)
{
        while (s->pend_off == s->pend_len) {
                if (s->batch && s->batch_i < json_array_size(s->batch)) {
                        int r = format_event(s, json_array_get(s->batch, s->batch_i++));
                        if (r < 0)
                                return r;
                        continue;
                }
                s->batch = (json_decref(s->batch), NULL);
                s->batch_i = 0;
                if (s->finished || atomic_load(&s->api->stopping) || client_gone(s->fd))
                        return -EPIPE;
                uint64_t now = now_mono_usec();
                if (now - s->last_usec >= s->api->keepalive_ms * 1000)
                        return pend_add(s, ": keepalive\n\n", 13);
                uint64_t left_ms = s->api->keepalive_ms - (now - s->last_usec) / 1000;
                bool finished = false;
                json_t *arr = NULL;
                int r = controller_events(s->api->ctl, s->id, s->after, STREAM_BATCH,
                                          (unsigned)MIN(left_ms, (uint64_t)STREAM_SLICE_MS), &arr,
                                          &finished);
                if (r < 0) {
                        json_decref(arr);
                        return r; /* -ENOENT: the rollout is gone */
                }
                s->batch = arr;
                /* Finished only counts once this batch is out: it is the last. */
                s->finished = finished;
        }
        return 0;
}

ssize_t api_stream_read(struct api_stream *s, char *buf, size_t max)
{
        size_t n;

        if (s->ended)
                return -1;
        if (stream_fill(s) < 0) {
                s->ended = true;
                return -1;
        }
        n = MIN(max, s->pend_len - s->pend_off);
        memcpy(buf, s->pend + s->pend_off, n);
        s->pend_off += n;
        s->last_usec = now_mono_usec();
        return (ssize_t)n;
}

/* Last-Event-ID (wins) or ?after=N: a seq, 0 for everything. */
static int parse_after(struct api_req *req, struct api_reply *rep, int64_t *ret)
{
        const char *field = "Last-Event-ID", *v = req->last_event_id;
        uint64_t n = 0;
        unsigned count = 0;

        if (!v) {
                field = "after";
                v = arg(req, "after", &count);
                if (count > 1) {
                        api_reply_problem(rep, 400, "invalid-query", field,
                                          "after is given %u times", count);
                        return 0;
                }
        }
        if (v) {
                while (*v == ' ')
                        v++;
                if (parse_u64(v, INT64_MAX, &n) < 0) {
                        api_reply_problem(rep, 400, "invalid-query", field,
                                          "%s must be an event seq (a non-negative integer)",
                                          field);
                        return 0;
                }
        }
        *ret = (int64_t)n;
        return 1;
}

static void h_events(struct api_req *req, const struct route_match *m, struct api_reply *rep)
{
        struct api *a = req->api;
        struct api_stream *s;
        bool finished = false;
        json_t *arr = NULL;
        int64_t after;
        int r;

        if (!rollout_id_ok(m->seg[0], rep) || !parse_after(req, rep, &after))
                return;
        if (atomic_load(&a->stopping)) {
                api_reply_problem(rep, 503, "shutting-down", NULL, "the controller is stopping");
                rep->retry_after = 5;
                return;
        }
        /* The first batch now: an unknown rollout answers 404 instead of an empty stream. */
        r = controller_events(a->ctl, m->seg[0], after, STREAM_BATCH, 0, &arr, &finished);
        if (r == -ENOENT) {
                api_reply_problem(rep, 404, "not-found", NULL, "no rollout %s", m->seg[0]);
                return;
        }
        if (r < 0) {
                reply_errno(rep, r, "events");
                return;
        }
        if (atomic_fetch_add(&a->streams, 1) >= a->max_streams) {
                atomic_fetch_sub(&a->streams, 1);
                json_decref(arr);
                api_reply_problem(rep, 503, "too-many-streams", NULL,
                                  "%u event streams are open already", a->max_streams);
                rep->retry_after = 5;
                return;
        }
        s = calloc(1, sizeof(*s));
        if (!s) {
                atomic_fetch_sub(&a->streams, 1);
                json_decref(arr);
                reply_errno(rep, -ENOMEM, "events");
                return;
        }
        atomic_fetch_add(&a->streams_total, 1);
        s->api = a;
        snprintf(s->id, sizeof(s->id), "%s", m->seg[0]);
        s->after = after;
        s->fd = req->fd;
        s->batch = arr;
        s->finished = finished;
        s->last_usec = now_mono_usec();
        /* Reconnect after 2 s (EventSource); and the answer's head leaves at once. */
        if (pend_add(s, "retry: 2000\n\n", 13) < 0) {
                api_stream_free(s);
                reply_errno(rep, -ENOMEM, "events");
                return;
        }
        api_reply_clear(rep);
        rep->status = 200;
        rep->stream = s;
}

/* ---- routing ---------------------------------------------------------------------- */

enum {
        M_GET = 1u << API_GET,
        M_HEAD = 1u << API_HEAD,
        M_POST = 1u << API_POST,
        M_PUT = 1u << API_PUT,
        M_DELETE = 1u << API_DELETE,
};

static const struct route {
        const char *pattern; /* '*' matches one segment */
        unsigned methods;
        handler_fn fn;
        const char *allow;
} routes[] = {
        { "/healthz", M_GET | M_HEAD, h_healthz, "GET, HEAD" },
        { "/metrics", M_GET | M_HEAD, h_metrics, "GET, HEAD" },
        { "/v1/hosts", M_GET | M_HEAD, h_hosts, "GET, HEAD" },
        { "/v1/hosts/*", M_GET | M_HEAD | M_PUT | M_DELETE, h_host, "GET, HEAD, PUT, DELETE" },
        { "/v1/rollouts", M_GET | M_HEAD | M_POST, h_rollouts, "GET, HEAD, POST" },
        { "/v1/rollouts/*", M_GET | M_HEAD, h_rollout, "GET, HEAD" },
        { "/v1/rollouts/*/pause", M_POST, h_action, "POST" },
        { "/v1/rollouts/*/resume", M_POST, h_action, "POST" },
        { "/v1/rollouts/*/abort", M_POST, h_action, "POST" },
        { "/v1/rollouts/*/events", M_GET, h_events, "GET" },
};

/* Does path match pattern? Fills m with the '*' segments (and the action's name). */
static bool route_match(const char *pattern, const char *path, struct route_match *m)
{
        unsigned nvar = 0;
        const char *p = pattern, *q = path;

        *m = (struct route_match){ 0 };
        while (*p && *q) {
                if (*p == '*') {
                        const char *end = strchr(q, '/');
                        size_t len = end ? (size_t)(end - q) : strlen(q);
                        if (len == 0 || len >= sizeof(m->buf[0]) || nvar >= 2)
                                return false;
                        memcpy(m->buf[nvar], q, len);
                        m->buf[nvar][len] = 0;
                        m->seg[nvar] = m->buf[nvar];
                        nvar++;
                        p++;
                        q += len;
                        continue;
                }
                if (*p != *q)
                        return false;
                p++;
                q++;
        }
        if (*p || *q)
                return false;
        /* /v1/rollouts/{id}/<action>: the action is the last segment. */
        if (nvar == 1 && strncmp(pattern, "/v1/rollouts/*/", 15) == 0) {
                snprintf(m->buf[1], sizeof(m->buf[1]), "%s", pattern + 15);
                m->seg[1] = m->buf[1];
        }
        return true;
}

void api_count_status(struct api *a, int status)
{
        if (status >= 500)
                atomic_fetch_add(&a->responses_5xx, 1);
        else if (status >= 400)
                atomic_fetch_add(&a->responses_4xx, 1);
}

void api_handle(struct api_req *req, struct api_reply *rep)
{
        const struct route *found = NULL;
        struct route_match m;

        *rep = (struct api_reply){ 0 };
        atomic_fetch_add(&req->api->requests_total, 1);
        if (req->too_many_args) {
                api_reply_problem(rep, 400, "invalid-query", NULL, "more than %d query parameters",
                                  API_MAX_ARGS);
                goto out;
        }
        for (size_t i = 0; i < ELEMENTSOF(routes); i++)
                if (route_match(routes[i].pattern, req->path, &m)) {
                        found = &routes[i];
                        break;
                }
        if (!found) {
                api_reply_problem(rep, 404, "not-found", NULL, "no resource at %s", req->path);
                goto out;
        }
        if (req->method == API_OTHER || !(found->methods & (1u << req->method))) {
                api_reply_problem(rep, 405, "method-not-allowed", NULL,
                                  "%s is not allowed on %s (allowed: %s)", req->method_raw,
                                  req->path, found->allow);
                snprintf(rep->allow, sizeof(rep->allow), "%s", found->allow);
                goto out;
        }
        found->fn(req, &m, rep);
out:
        api_reply_instance(rep, req->path);
        api_count_status(req->api, rep->status);
}
