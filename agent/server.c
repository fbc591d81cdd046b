/*
 * server.c: libmicrohttpd glue. One daemon per listen address, each with its
 * own internal epoll thread, sharing one agent, long-poll registry, SSE hub,
 * worker and loop. Owns the request contexts: allocated on the first call of
 * the access handler, freed only in the completion callback.
 *
 * A request's life: headers -> body (capped) -> route -> handler ->
 *   - answer now, or
 *   - DEFER_LONGPOLL: suspend, register a waiter; the waiter's resume calls
 *     MHD_resume_connection and the handler runs again with req.resumed;
 *   - DEFER_WORKER: suspend, queue the job; its done() stores the result and
 *     resumes;
 *   - DEFER_AFTER: answer now, queue the job when the answer has been sent;
 *   - DEFER_SSE: answer with the streaming response of sse.c.
 * Suspend always comes before the registration, so a wake-up can never find
 * a connection that is not suspended yet.
 *
 * The state document's MHD response is cached per listener and shared by
 * every answer until the index moves: the hot path builds nothing. With
 * --http-threads > 1 a listener has several MHD threads: cache_lock guards
 * the cache and is held across MHD_queue_response, so a response is never
 * destroyed between being picked and being queued.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <linux/sockios.h>
#include <sys/fsuid.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "auth.h"
#include "body.h"
#include "config.h"
#include "http.h"
#include "loop.h"
#include "luofleet/log.h"
#include "luofleet/macro.h"
#include "luofleet/privsep.h"
#include "luofleet/util.h"
#include "metrics.h"
#include "ops.h"
#include "router.h"
#include "server.h"
#include "staging.h"
#include "tls.h"
#include "websec.h"
#include "worker.h"

/* <linux/un.h>, which clashes with <sys/un.h>: O_PATH descriptor of a bound socket's file. */
#ifndef SIOCUNIXFILE
#define SIOCUNIXFILE (SIOCPROTOPRIVATE + 0)
#endif

struct server_listener {
        struct server *srv;
        struct MHD_Daemon *daemon;
        int fd;
        bool fd_given; /* to MHD, which closes it at the stop */
        struct listen_addr addr;
        bool tls;      /* HTTPS (TCP listeners when --tls-cert is set) */
        bool loopback; /* a loopback TCP listener: Host is checked (websec.h) */
        char url[160];
        /* The cached state document response (cache_lock). */
        pthread_mutex_t cache_lock;
        uint64_t cache_index;
        struct MHD_Response *cache;
};

enum req_phase {
        PH_HEADERS,
        PH_BODY,
        PH_SUSPENDED,
        PH_RESUMED,
        PH_ANSWERED,
};

struct req_ctx {
        struct server_listener *lis;
        struct MHD_Connection *conn;
        enum req_phase phase;
        enum http_defer deferred;
        struct http_req req;
        struct http_reply rep;
        char *body;
        size_t body_len;
        bool body_too_large;
        int route;
        int status;
        uint64_t started;
        bool timed;
        struct lp_waiter waiter;
        struct op_job *after_job; /* DEFER_AFTER: runs once the answer left */
        bool counted;             /* in server.deferred until completed */
        bool arrived;             /* the request deadline (connlimit.c) is off */
        bool refused;             /* rep holds a refusal decided from the head */
};

static uint64_t agent_index_cb(void *ud)
{
        return agent_index(ud);
}

/* ---- responses ---------------------------------------------------------- */

static void snap_free_cb(void *cls)
{
        doc_snapshot_unref(cls);
}

static struct MHD_Response *snapshot_response(struct server_listener *lis,
                                              struct doc_snapshot *snap)
{
        struct MHD_Response *r;
        char etag[32];

        if (lis->cache && lis->cache_index == snap->index)
                return lis->cache;
        r = MHD_create_response_from_buffer_with_free_callback_cls(
                snap->len, snap->json, snap_free_cb, doc_snapshot_ref(snap));
        if (!r) {
                doc_snapshot_unref(snap);
                return NULL;
        }
        snprintf(etag, sizeof(etag), "\"%llu\"", (unsigned long long)snap->index);
        MHD_add_response_header(r, "Content-Type", "application/json");
        MHD_add_response_header(r, "Cache-Control", "no-store");
        MHD_add_response_header(r, "ETag", etag);
        if (lis->cache)
                MHD_destroy_response(lis->cache);
        lis->cache = r;
        lis->cache_index = snap->index;
        return r;
}

static enum MHD_Result queue_reply(struct req_ctx *ctx)
{
        struct http_reply *rep = &ctx->rep;
        struct MHD_Response *r = NULL;
        enum MHD_Result ret;
        char buf[32];

        ctx->status = rep->status;
        if (rep->snap && rep->status == 200) {
                pthread_mutex_lock(&ctx->lis->cache_lock);
                r = snapshot_response(ctx->lis, rep->snap);
                ret = r ? MHD_queue_response(ctx->conn, MHD_HTTP_OK, r) : MHD_NO;
                pthread_mutex_unlock(&ctx->lis->cache_lock);
                ctx->phase = PH_ANSWERED;
                return ret;
        } else if (rep->json) {
                char *s = json_dumps(rep->json, JSON_COMPACT | JSON_PRESERVE_ORDER);
                if (s)
                        r = MHD_create_response_from_buffer(strlen(s), s, MHD_RESPMEM_MUST_FREE);
                if (r) {
                        MHD_add_response_header(r, "Content-Type",
                                                rep->problem ? "application/problem+json"
                                                             : "application/json");
                        MHD_add_response_header(r, "Cache-Control", "no-store");
                        json_t *idx = json_object_get(rep->json, "index");
                        if (!rep->problem && json_is_integer(idx) &&
                            json_object_get(rep->json, "boot_id")) {
                                snprintf(buf, sizeof(buf), "\"%lld\"",
                                         (long long)json_integer_value(idx));
                                MHD_add_response_header(r, "ETag", buf);
                        }
                } else
                        free(s);
        } else if (rep->text) {
                r = MHD_create_response_from_buffer(rep->text_len, rep->text,
                                                    MHD_RESPMEM_MUST_FREE);
                if (r) {
                        rep->text = NULL; /* MHD owns it now */
                        MHD_add_response_header(r, "Content-Type", rep->content_type);
                        MHD_add_response_header(r, "Cache-Control", "no-store");
                }
        } else {
                r = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
                if (r && rep->snap && rep->etag_from_snap) {
                        snprintf(buf, sizeof(buf), "\"%llu\"",
                                 (unsigned long long)rep->snap->index);
                        MHD_add_response_header(r, "ETag", buf);
                        MHD_add_response_header(r, "Cache-Control", "no-store");
                }
        }
        if (!r)
                return MHD_NO; /* out of memory: drop the connection */
        if (rep->allow[0])
                MHD_add_response_header(r, "Allow", rep->allow);
        if (rep->retry_after) {
                snprintf(buf, sizeof(buf), "%u", rep->retry_after);
                MHD_add_response_header(r, "Retry-After", buf);
        }
        if (rep->close)
                MHD_add_response_header(r, "Connection", "close");
        if (rep->www_authenticate)
                MHD_add_response_header(r, "WWW-Authenticate", rep->www_authenticate);
        ret = MHD_queue_response(ctx->conn, (unsigned)rep->status, r);
        MHD_destroy_response(r);
        ctx->phase = PH_ANSWERED;
        return ret;
}

/* ---- deferral ----------------------------------------------------------- */

static void waiter_resume(struct lp_waiter *w)
{
        struct req_ctx *ctx = (struct req_ctx *)((char *)w - offsetof(struct req_ctx, waiter));
        ctx->phase = PH_RESUMED;
        MHD_resume_connection(ctx->conn);
}

static void job_done(struct op_job *job, void *userdata)
{
        struct req_ctx *ctx = userdata;

        http_reply_clear(&ctx->rep);
        ctx->rep.status = job->status;
        ctx->rep.json = job->body;
        ctx->rep.problem = job->problem;
        job->body = NULL;
        op_job_free(job);
        ctx->phase = PH_RESUMED;
        MHD_resume_connection(ctx->conn);
}

static enum MHD_Result defer(struct req_ctx *ctx)
{
        struct server *srv = ctx->lis->srv;
        struct http_reply *rep = &ctx->rep;
        enum http_defer d = rep->defer;
        int r;

        ctx->deferred = d;
        rep->defer = DEFER_NONE;
        if (d != DEFER_AFTER) {
                ctx->counted = true;
                atomic_fetch_add(&srv->deferred, 1);
        }
        switch (d) {
        case DEFER_LONGPOLL:
                ctx->waiter = (struct lp_waiter){ .index = rep->wait_index,
                                                  .deadline = rep->wait_deadline,
                                                  .queued_at = now_mono_usec(),
                                                  .resume = waiter_resume };
                ctx->phase = PH_SUSPENDED;
                MHD_suspend_connection(ctx->conn);
                r = lp_add(&srv->lp, &ctx->waiter, agent_index_cb, srv->agent);
                if (r != 0) {
                        /* changed meanwhile (1) or over the cap: answer now */
                        if (r < 0) {
                                metrics_rejected(METRICS_REJECT_WAITERS);
                                http_reply_clear(rep);
                                http_reply_problem(rep, 503, "too-many-waiters",
                                                   "%u long-poll requests are waiting already",
                                                   srv->lp.max);
                                json_object_set_new(rep->json, "retry_after_ms",
                                                    json_integer(1000));
                                rep->retry_after = 1;
                                ctx->deferred = DEFER_NONE;
                        }
                        ctx->phase = PH_RESUMED;
                        MHD_resume_connection(ctx->conn);
                }
                return MHD_YES;
        case DEFER_WORKER: {
                struct op_job *job = TAKE_PTR(rep->job);
                job->done = job_done;
                job->done_data = ctx;
                ctx->phase = PH_SUSPENDED;
                MHD_suspend_connection(ctx->conn);
                r = worker_submit(srv->worker, job);
                if (r < 0) {
                        /* cannot happen before shutdown; answer rather than hang */
                        op_job_free(job);
                        http_reply_clear(rep);
                        http_reply_problem(rep, 503, "shutting-down", "the agent is stopping");
                        ctx->phase = PH_RESUMED;
                        MHD_resume_connection(ctx->conn);
                }
                return MHD_YES;
        }
        case DEFER_AFTER:
                ctx->after_job = TAKE_PTR(rep->job);
                return queue_reply(ctx);
        case DEFER_SSE: {
                struct MHD_Response *resp = sse_response_new(&srv->sse, ctx->conn, rep->sse_after,
                                                             rep->sse_initial_state, &r);
                if (!resp) {
                        http_reply_clear(rep);
                        if (r == -EBUSY) {
                                metrics_rejected(METRICS_REJECT_STREAMS);
                                http_reply_problem(rep, 503, "too-many-streams",
                                                   "%u event streams are open already",
                                                   srv->sse.max);
                                rep->retry_after = 5;
                        } else
                                http_reply_problem(rep, 500, "internal-error", "out of memory");
                        return queue_reply(ctx);
                }
                ctx->status = 200;
                ctx->phase = PH_ANSWERED;
                enum MHD_Result ret = MHD_queue_response(ctx->conn, MHD_HTTP_OK, resp);
                MHD_destroy_response(resp);
                return ret;
        }
        default:
                return queue_reply(ctx);
        }
}

/* ---- the access handler ------------------------------------------------- */

static enum MHD_Result collect_arg(void *cls, enum MHD_ValueKind kind, const char *key,
                                   const char *value)
{
        struct http_req *req = cls;

        (void)kind;
        if (req->n_args >= HTTP_MAX_ARGS) {
                req->too_many_args = true;
                return MHD_NO;
        }
        req->args[req->n_args].key = key ? key : "";
        req->args[req->n_args].value = value;
        req->n_args++;
        return MHD_YES;
}

static void peer_string(struct MHD_Connection *conn, char *buf, size_t size)
{
        const union MHD_ConnectionInfo *ci =
                MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        char host[64], port[16];

        snprintf(buf, size, "unix");
        if (!ci || !ci->client_addr)
                return;
        socklen_t len = ci->client_addr->sa_family == AF_INET6  ? sizeof(struct sockaddr_in6)
                        : ci->client_addr->sa_family == AF_INET ? sizeof(struct sockaddr_in)
                                                                : 0;
        if (len && getnameinfo(ci->client_addr, len, host, sizeof(host), port, sizeof(port),
                               NI_NUMERICHOST | NI_NUMERICSERV) == 0)
                snprintf(buf, size, "%s", host);
}

static void fill_request(struct req_ctx *ctx, const char *url, const char *method)
{
        struct http_req *req = &ctx->req;
        struct server *srv = ctx->lis->srv;

        req->method = http_method_from_string(method);
        req->method_raw = method;
        /* An absolute-form target (RFC 9112 3.2.2) names the same resource. */
        if (strncasecmp(url, "http://", 7) == 0 || strncasecmp(url, "https://", 8) == 0) {
                const char *p = strchr(strstr(url, "//") + 2, '/');
                url = p ? p : "/";
        }
        req->path = url;
        req->agent = srv->agent;
        req->server = srv;
        req->max_wait_ms = srv->cfg->max_wait_ms;
        req->n_args = 0;
        req->too_many_args = false;
        MHD_get_connection_values(ctx->conn, MHD_GET_ARGUMENT_KIND, collect_arg, req);
        req->content_type = MHD_lookup_connection_value(ctx->conn, MHD_HEADER_KIND,
                                                        MHD_HTTP_HEADER_CONTENT_TYPE);
        req->if_match = MHD_lookup_connection_value(ctx->conn, MHD_HEADER_KIND, "If-Match");
        req->if_none_match =
                MHD_lookup_connection_value(ctx->conn, MHD_HEADER_KIND, "If-None-Match");
        req->last_event_id =
                MHD_lookup_connection_value(ctx->conn, MHD_HEADER_KIND, "Last-Event-ID");
        req->body = ctx->body;
        req->body_len = ctx->body_len;
        /* Only the mutating handlers record who asked: spare the hot path. */
        if (req->method != HTTP_GET && req->method != HTTP_HEAD)
                peer_string(ctx->conn, req->peer, sizeof(req->peer));
}

/* "prepare" for /v1/prepare; "stage"/"unstage" for the kernel resource. */
static const char *audit_action(const struct http_req *req)
{
        const char *p = req->path;

        if (strcmp(p, "/v1/kernel") == 0)
                return req->method == HTTP_DELETE ? "unstage" : "stage";
        if (strncmp(p, "/v1/", 4) == 0 && p[4] && !strchr(p + 4, '/'))
                return p + 4;
        return p;
}

static struct connlimit_conn *conn_record(struct MHD_Connection *conn);

/*
 * Who is asking, and may they (auth.c)? Fills req.who; on a refusal the
 * 401/403 problem is in ctx->rep, and a mutating request is audited.
 */
static enum auth_verdict authenticate(struct req_ctx *ctx)
{
        struct http_req *req = &ctx->req;
        struct server_listener *lis = ctx->lis;
        struct auth_request arq = {
                .is_unix = lis->addr.is_unix,
                .is_read = req->method == HTTP_GET || req->method == HTTP_HEAD,
                .path = req->path,
                .fd = -1,
        };
        char cert_name[sizeof(req->who.name)] = "", detail[256] = "";
        const char *code = NULL;
        enum auth_verdict v;

        /* The hot path: no credentials configured and a TCP listener. */
        if (!arq.is_unix && !auth_required()) {
                req->who = (struct auth_identity){ .role = ROLE_OPERATOR, .method = "none" };
                return AUTH_ALLOW;
        }
        arq.authorization =
                MHD_lookup_connection_value(ctx->conn, MHD_HEADER_KIND, "Authorization");
        if (arq.is_unix) {
                const union MHD_ConnectionInfo *ci =
                        MHD_get_connection_info(ctx->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
                arq.fd = ci ? ci->connect_fd : -1;
        } else if (lis->tls) {
                /* Verified once per connection (and certificate generation). */
                struct connlimit_peer_cache *pc = connlimit_peer_cache(conn_record(ctx->conn));
                const void *gen = tls_generation();
                if (pc && pc->gen && pc->gen == gen) {
                        arq.cert = pc->cert;
                        snprintf(cert_name, sizeof(cert_name), "%s", pc->name);
                } else {
                        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(
                                ctx->conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);
                        arq.cert = tls_peer_identity(ci ? ci->tls_session : NULL, cert_name,
                                                     sizeof(cert_name));
                        if (pc) {
                                pc->gen = gen;
                                pc->cert = arq.cert;
                                snprintf(pc->name, sizeof(pc->name), "%s", cert_name);
                        }
                }
                arq.cert_name = cert_name;
        }
        v = auth_check(&arq, &req->who, &code, detail, sizeof(detail));
        if (v == AUTH_ALLOW)
                return v;
        auth_count_denied(v, code);
        if (v == AUTH_UNAUTHENTICATED) {
                http_reply_problem(&ctx->rep, 401, code, "%s", detail);
                ctx->rep.www_authenticate =
                        strcmp(code, "invalid-credentials") == 0
                                ? "Bearer realm=\"luofleet-agent\", error=\"invalid_token\""
                                : "Bearer realm=\"luofleet-agent\"";
        } else
                http_reply_problem(&ctx->rep, 403, code, "%s", detail);
        if (!arq.is_read) {
                peer_string(ctx->conn, req->peer, sizeof(req->peer));
                struct audit_entry ae = {
                        .who = &req->who,
                        .source = req->peer,
                        .action = audit_action(req),
                        .if_match = req->if_match,
                        .status = ctx->rep.status,
                        .code = code,
                };
                (void)agent_audit(lis->srv->agent, &ae);
        }
        return v;
}

static bool method_mutates(enum http_method m)
{
        return m != HTTP_GET && m != HTTP_HEAD;
}

/* An answer that refuses a mutating request outside the handlers: audited too. */
static void audit_refusal(struct req_ctx *ctx, const char *code)
{
        struct http_req *req = &ctx->req;

        if (!method_mutates(req->method))
                return;
        if (!req->peer[0])
                peer_string(ctx->conn, req->peer, sizeof(req->peer));
        struct audit_entry ae = {
                .who = &req->who,
                .source = req->peer,
                .action = audit_action(req),
                .if_match = req->if_match,
                .status = ctx->rep.status,
                .code = code,
        };
        (void)agent_audit(ctx->lis->srv->agent, &ae);
}

/*
 * Refuse a request before routing (framing, body size, query count, Host,
 * Origin, media type). Only ever after authenticate() let it through (on the
 * request's first call): the refusal is then the answer, and a mutating
 * request's is audited with the caller's identity.
 */
static void refusal(struct req_ctx *ctx, int status, const char *code, const char *detail)
{
        http_reply_clear(&ctx->rep);
        http_reply_problem(&ctx->rep, status, code, "%s", detail);
        audit_refusal(ctx, code);
        ctx->rep.close = status == 413 || strcmp(code, "malformed-request") == 0;
}

static enum MHD_Result refuse(struct req_ctx *ctx, int status, const char *code, const char *detail)
{
        refusal(ctx, status, code, detail);
        return queue_reply(ctx);
}

/* The connection's accounting record (connlimit.c), kept in MHD's socket context. */
static struct connlimit_conn *conn_record(struct MHD_Connection *conn)
{
        const union MHD_ConnectionInfo *ci =
                MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
        return ci ? ci->socket_context : NULL;
}

/* The whole request is in (or answered early): its deadline is off. */
static void request_arrived(struct req_ctx *ctx)
{
        if (ctx->arrived)
                return;
        ctx->arrived = true;
        connlimit_arrived(&ctx->lis->srv->conns, conn_record(ctx->conn));
}

struct head_scan {
        unsigned content_length, transfer_encoding, host;
        bool bad_name, bad_value;
};

/* RFC 9110 5.1: a field name is a token. */
static bool field_name_valid(const char *s, size_t n)
{
        if (n == 0)
                return false;
        for (size_t i = 0; i < n; i++)
                if (!isalnum((unsigned char)s[i]) && !strchr("!#$%&'*+-.^_`|~", s[i]))
                        return false;
        return true;
}

/*
 * A folded header line (obs-fold, RFC 9112 5.2): MHD 0.9.75 appends the
 * continuation to the header's *name* ("If-Match: \"7\"\r\n x" arrives as a
 * header "If-Matchx"), so the header the client sent vanishes: a folded
 * If-Match would silently be no precondition at all. A fold cannot be told
 * from a header of that name in general; for the headers the agent reads,
 * a longer name starting with theirs is taken as one (no such header
 * exists) and refused.
 */
static bool field_name_folded(const char *s, size_t n)
{
        static const char *const read[] = { "Host",          "Content-Length", "Transfer-Encoding",
                                            "Content-Type",  "If-Match",       "If-None-Match",
                                            "Last-Event-ID", "Authorization",  "Connection" };

        for (size_t i = 0; i < ELEMENTSOF(read); i++) {
                size_t m = strlen(read[i]);
                if (n > m && strncasecmp(s, read[i], m) == 0)
                        return true;
        }
        return false;
}

/* RFC 9110 5.5: no CTL but HTAB (a NUL would have cut the value short). */
static bool field_value_valid(const char *s, size_t n)
{
        if (strlen(s) != n)
                return false;
        for (size_t i = 0; i < n; i++)
                if (((unsigned char)s[i] < 0x20 && s[i] != '\t') || s[i] == 0x7f)
                        return false;
        return true;
}

static enum MHD_Result scan_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                   size_t key_size, const char *value, size_t value_size)
{
        struct head_scan *hs = cls;

        (void)kind;
        if (!key || strlen(key) != key_size || !field_name_valid(key, key_size) ||
            field_name_folded(key, key_size))
                hs->bad_name = true;
        else if (value && !field_value_valid(value, value_size))
                hs->bad_value = true;
        else if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) == 0)
                hs->content_length++;
        else if (strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING) == 0)
                hs->transfer_encoding++;
        else if (strcasecmp(key, MHD_HTTP_HEADER_HOST) == 0)
                hs->host++;
        return MHD_YES;
}

/*
 * Message framing MHD (0.9.75) lets through but RFC 9112 forbids, each a way
 * to smuggle a second request past a proxy that frames it differently: more
 * than one Content-Length, Content-Length with Transfer-Encoding, a transfer
 * coding other than plain chunked (MHD would read such a body until the
 * client closes), more than one Host, a header name that is not a token
 * ("Content-Length : 5" is not Content-Length to MHD), a folded line (see
 * field_name_folded()), a control character in a value. Answered 400
 * malformed-request before the body is read; the connection closes after
 * the answer. NULL when the head is fine.
 */
static const char *framing_error(struct MHD_Connection *conn)
{
        struct head_scan hs = { 0 };
        const char *te;

        MHD_get_connection_values_n(conn, MHD_HEADER_KIND, scan_header, &hs);
        if (hs.bad_name)
                return "a header name is not a token, or a header line is folded";
        if (hs.bad_value)
                return "a header value holds a control character";
        if (hs.content_length > 1)
                return "more than one Content-Length";
        if (hs.transfer_encoding > 1)
                return "more than one Transfer-Encoding";
        if (hs.host > 1)
                return "more than one Host";
        if (hs.transfer_encoding && hs.content_length)
                return "both Content-Length and Transfer-Encoding";
        te = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING);
        if (te && strcasecmp(te, "chunked") != 0)
                return "the only transfer coding accepted is chunked";
        return NULL;
}

/* 413, counted; the connection closes after the answer. */
static enum MHD_Result body_too_large(struct req_ctx *ctx)
{
        char detail[96];

        metrics_rejected(METRICS_REJECT_BODY_TOO_LARGE);
        request_arrived(ctx);
        snprintf(detail, sizeof(detail), "the request body exceeds %zu bytes",
                 ctx->lis->srv->cfg->max_body_bytes);
        return refuse(ctx, 413, "body-too-large", detail);
}

/* A body follows the head: a Content-Length other than 0, or a transfer coding. */
static bool body_announced(struct MHD_Connection *conn)
{
        const char *cl =
                MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        uint64_t n;

        if (MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING))
                return true;
        return cl && !(parse_u64(cl, UINT64_MAX, &n) == 0 && n == 0);
}

/*
 * Answer a refusal decided from the request's head alone (ctx->rep holds
 * it). With a body on its way: at once, from the first call, so MHD reads
 * none of the body and closes the connection after the answer; a client that
 * may not send anything cannot make the agent read and hold what it uploads
 * (1,000 unauthenticated connections with 64 KiB bodies took the agent from
 * 10 MB to 90 MB when credentials were checked once the body was in). Without
 * a body: at the request's last call, which follows at once, like every
 * other answer (the connection stays open for the next request).
 */
static enum MHD_Result head_refusal(struct req_ctx *ctx)
{
        if (!body_announced(ctx->conn)) {
                ctx->refused = true;
                return MHD_YES;
        }
        request_arrived(ctx);
        ctx->rep.close = true;
        return queue_reply(ctx);
}

/* A client-supplied header value in a detail: short, printable, no markup; or not shown. */
static const char *shown(const char *v, char *buf, size_t size)
{
        size_t n = strlen(v);

        if (n > 64)
                return "(too long to show)";
        for (size_t i = 0; i < n; i++)
                if (!isprint((unsigned char)v[i]) || strchr("<>\"'`\\&", v[i]))
                        return "(not shown)";
        snprintf(buf, size, "%s", v);
        return buf;
}

/*
 * Browsers (websec.h): the Host of a request to a loopback TCP listener
 * (DNS rebinding) and any Origin (a page of another site). Returns true with
 * the 403 in ctx->rep.
 */
static bool browser_refused(struct req_ctx *ctx)
{
        const struct agent_config *cfg = ctx->lis->srv->cfg;
        const char *host, *origin;
        char buf[72], detail[320];

        if (ctx->lis->loopback) {
                host = MHD_lookup_connection_value(ctx->conn, MHD_HEADER_KIND,
                                                   MHD_HTTP_HEADER_HOST);
                if (!websec_host_allowed(host, (const char *const *)cfg->allowed_hosts,
                                         cfg->n_allowed_hosts)) {
                        snprintf(detail, sizeof(detail),
                                 "Host %s does not name this agent: on a loopback listener it "
                                 "must be localhost, a 127.0.0.0/8 or [::1] address, a name "
                                 "without a dot or an --allowed-host name",
                                 shown(host, buf, sizeof(buf)));
                        auth_count_denied(AUTH_FORBIDDEN, "host-not-allowed");
                        refusal(ctx, 403, "host-not-allowed", detail);
                        return true;
                }
        }
        origin = MHD_lookup_connection_value(ctx->conn, MHD_HEADER_KIND, "Origin");
        if (!websec_origin_allowed(origin, (const char *const *)cfg->allowed_origins,
                                   cfg->n_allowed_origins)) {
                snprintf(detail, sizeof(detail),
                         "requests from the web page origin %s are not served (the agent serves "
                         "no pages; --allowed-origin names the origins that may call it)",
                         shown(origin, buf, sizeof(buf)));
                auth_count_denied(AUTH_FORBIDDEN, "origin-not-allowed");
                refusal(ctx, 403, "origin-not-allowed", detail);
                return true;
        }
        return false;
}

/*
 * The request's first call, once its head is in and before any of its body
 * is read: who asks, framing, the announced size, Host and Origin, the query
 * count, the media type. Answers or marks a refusal; MHD_YES to read on.
 */
static enum MHD_Result head_checks(struct req_ctx *ctx, const char *url, const char *method)
{
        const struct agent_config *cfg = ctx->lis->srv->cfg;
        const char *bad, *cl;
        char detail[160], buf[72];
        uint64_t n;

        fill_request(ctx, url, method);
        bad = framing_error(ctx->conn);
        if (bad)
                metrics_rejected(METRICS_REJECT_MALFORMED);
        /* Credentials first: their refusal is the answer, whatever else is wrong. */
        if (authenticate(ctx) != AUTH_ALLOW) {
                if (!bad)
                        return head_refusal(ctx);
                /* Framed in a way MHD may misread: answer now and close. */
                request_arrived(ctx);
                ctx->rep.close = true;
                return queue_reply(ctx);
        }
        if (bad) {
                request_arrived(ctx);
                return refuse(ctx, 400, "malformed-request", bad);
        }
        /* Refuse an announced oversized body before reading it. */
        cl = MHD_lookup_connection_value(ctx->conn, MHD_HEADER_KIND,
                                         MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && (parse_u64(cl, UINT64_MAX, &n) < 0 || n > cfg->max_body_bytes))
                return body_too_large(ctx);
        if (browser_refused(ctx))
                return head_refusal(ctx);
        if (ctx->req.too_many_args) {
                snprintf(detail, sizeof(detail), "at most %d query parameters are accepted",
                         HTTP_MAX_ARGS);
                refusal(ctx, 400, "invalid-query", detail);
                return head_refusal(ctx);
        }
        /*
         * Every mutating request says application/json, with a body or not: a
         * browser sends that only after a CORS preflight, which the agent
         * never grants, so no form or script of another site gets a request
         * through (a body-less POST used to skip the media type check). Paths
         * and methods the API does not have still answer 404 and 405. On the
         * Unix socket, which no browser reaches, a body-less request may leave
         * Content-Type out (local scripts); one it names must still be JSON.
         */
        if (method_mutates(ctx->req.method) && !body_media_type_is_json(ctx->req.content_type) &&
            (!ctx->lis->addr.is_unix || ctx->req.content_type || body_announced(ctx->conn)) &&
            router_has_route(ctx->req.method, ctx->req.path)) {
                snprintf(detail, sizeof(detail),
                         "a %s request needs Content-Type: application/json, also without a "
                         "body (not %s)",
                         http_method_to_string(ctx->req.method),
                         ctx->req.content_type ? shown(ctx->req.content_type, buf, sizeof(buf))
                                               : "none");
                refusal(ctx, 415, "unsupported-media-type", detail);
                return head_refusal(ctx);
        }
        return MHD_YES;
}

static enum MHD_Result access_handler(void *cls, struct MHD_Connection *conn, const char *url,
                                      const char *method, const char *version,
                                      const char *upload_data, size_t *upload_data_size,
                                      void **con_cls)
{
        struct server_listener *lis = cls;
        struct req_ctx *ctx = *con_cls;

        (void)version;
        if (!ctx) {
                ctx = calloc(1, sizeof(*ctx));
                if (!ctx)
                        return MHD_NO;
                ctx->lis = lis;
                ctx->conn = conn;
                ctx->route = -1;
                ctx->started = now_mono_usec();
                ctx->timed = true;
                *con_cls = ctx;
                return head_checks(ctx, url, method);
        }

        if (ctx->phase == PH_ANSWERED || (ctx->refused && *upload_data_size)) {
                /* Answered early (413, 401...), or refused: swallow what the client still
                 * sends. */
                *upload_data_size = 0;
                return MHD_YES;
        }

        if (*upload_data_size) {
                size_t n = *upload_data_size;
                if (ctx->body_too_large || ctx->body_len + n > lis->srv->cfg->max_body_bytes) {
                        /*
                         * MHD (0.9.75) cannot queue an answer in the middle of an upload:
                         * discard the rest and answer 413 once the request is complete.
                         * Memory stays bounded; the connection closes after the answer.
                         */
                        ctx->body_too_large = true;
                        free(ctx->body);
                        ctx->body = NULL;
                        ctx->body_len = 0;
                        *upload_data_size = 0;
                        return MHD_YES;
                }
                char *nb = realloc(ctx->body, ctx->body_len + n + 1);
                if (!nb)
                        return MHD_NO;
                memcpy(nb + ctx->body_len, upload_data, n);
                ctx->body = nb;
                ctx->body_len += n;
                ctx->body[ctx->body_len] = 0;
                *upload_data_size = 0;
                return MHD_YES;
        }

        if (ctx->phase == PH_RESUMED) {
                if (ctx->deferred == DEFER_LONGPOLL) {
                        http_reply_clear(&ctx->rep);
                        ctx->req.resumed = true;
                        ctx->req.agent = lis->srv->agent;
                        int r = h_state_get(&ctx->req, &ctx->rep);
                        if (r < 0) {
                                http_reply_clear(&ctx->rep);
                                http_reply_problem(&ctx->rep, 500, "internal-error",
                                                   "out of memory");
                        }
                }
                ctx->timed = false;
                return queue_reply(ctx);
        }
        if (ctx->phase == PH_SUSPENDED)
                return MHD_YES; /* spurious call; the wake-up will come */

        /* The whole request is here (head_checks() passed it, or refused it). */
        request_arrived(ctx);
        if (ctx->refused)
                return queue_reply(ctx);
        if (ctx->body_too_large)
                return body_too_large(ctx);
        ctx->req.body = ctx->body;
        ctx->req.body_len = ctx->body_len;
        ctx->route = router_dispatch(&ctx->req, &ctx->rep);
        /* Unknown paths and methods on a mutating request: refused, audited. */
        if (ctx->rep.problem && (ctx->rep.status == 404 || ctx->rep.status == 405)) {
                json_t *code = json_object_get(ctx->rep.json, "code");
                audit_refusal(ctx, json_is_string(code) ? json_string_value(code) : "not-found");
        }
        if (ctx->rep.defer != DEFER_NONE) {
                if (ctx->rep.defer != DEFER_AFTER)
                        ctx->timed = false;
                return defer(ctx);
        }
        return queue_reply(ctx);
}

static void completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                      enum MHD_RequestTerminationCode toe)
{
        struct server_listener *lis = cls;
        struct req_ctx *ctx = *con_cls;

        if (!ctx)
                return;
        *con_cls = NULL;
        /* Answered: the next request on this connection has a deadline again. */
        if (toe == MHD_REQUEST_TERMINATED_COMPLETED_OK)
                connlimit_completed(&lis->srv->conns, conn_record(conn));
        metrics_request(ctx->route, http_method_to_string(ctx->req.method), ctx->status,
                        now_mono_usec() - ctx->started, ctx->timed);
        if (ctx->after_job) {
                /* The 202 has left (or the client is gone): the accepted operation (a
                 * reboot, a download) runs now. */
                if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
                        log_warning("202 answer not fully delivered (code %d); running the "
                                    "accepted operation anyway",
                                    (int)toe);
                if (worker_submit(lis->srv->worker, ctx->after_job) < 0) {
                        log_warning("Agent stopping: the accepted operation is not carried out");
                        op_job_free(ctx->after_job);
                }
                ctx->after_job = NULL;
        }
        if (ctx->waiter.linked)
                log_error("BUG: request completed with a linked long-poll waiter");
        if (ctx->counted)
                atomic_fetch_sub(&lis->srv->deferred, 1);
        http_reply_clear(&ctx->rep);
        free(ctx->body);
        free(ctx);
}

static void mhd_logger(void *cls, const char *fmt, va_list ap)
        __attribute__((format(printf, 2, 0)));
static void mhd_logger(void *cls, const char *fmt, va_list ap)
{
        static const char answered[] = "HTTP response code is ";
        char buf[512];
        const char *p;

        (void)cls;
        vsnprintf(buf, sizeof(buf), fmt, ap);
        strip_trailing(buf);
        log_debug("libmicrohttpd: %s", buf);
        /*
         * MHD answers some requests itself, before the access handler runs
         * ("Error processing request (HTTP response code is 431 (...)). Closing
         * connection."): the log line is the only trace, so count it here.
         */
        p = strstr(buf, answered);
        if (p) {
                unsigned long code = strtoul(p + strlen(answered), NULL, 10);
                if (code == 431 || code == 414)
                        metrics_rejected(METRICS_REJECT_HEADER_TOO_LARGE);
                else if (code == 413)
                        metrics_rejected(METRICS_REJECT_BODY_TOO_LARGE);
                else if (code == 400)
                        metrics_rejected(METRICS_REJECT_MALFORMED);
        }
}

/*
 * MHD's own unescaping, except that "%00" stays as it is: the path and the
 * query values reach the handlers as C strings, where a decoded NUL would
 * silently cut "/v1/state%00junk" down to "/v1/state". Left encoded, it
 * makes the path unknown (404) or the value invalid (400).
 */
static size_t unescape(void *cls, struct MHD_Connection *conn, char *s)
{
        char *w = s;

        (void)cls;
        (void)conn;
        for (const char *r = s; *r;) {
                if (r[0] == '%' && isxdigit((unsigned char)r[1]) && isxdigit((unsigned char)r[2])) {
                        char hex[3] = { r[1], r[2], 0 };
                        char c = (char)strtoul(hex, NULL, 16);
                        if (c != 0) {
                                *w++ = c;
                                r += 3;
                                continue;
                        }
                }
                *w++ = *r++;
        }
        *w = 0;
        return (size_t)(w - s);
}

/* ---- connection accounting (connlimit.c) -------------------------------- */

static enum MHD_Result accept_policy(void *cls, const struct sockaddr *addr, socklen_t addrlen)
{
        struct server *srv = cls;

        /* Stopping: a new connection is closed at once (instead of MHD_quiesce_daemon,
         * whose epoll side races MHD's own thread and aborts: server_stop). */
        if (atomic_load(&srv->closing))
                return MHD_NO;
        return connlimit_accept(&srv->conns, addr, addrlen) ? MHD_YES : MHD_NO;
}

static void notify_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                              enum MHD_ConnectionNotificationCode toe)
{
        struct server *srv = cls;

        if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
                const union MHD_ConnectionInfo *fd =
                        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
                const union MHD_ConnectionInfo *ci =
                        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
                if (!fd)
                        return;
                *socket_context =
                        connlimit_opened(&srv->conns, fd->connect_fd, ci ? ci->client_addr : NULL);
        } else if (toe == MHD_CONNECTION_NOTIFY_CLOSED) {
                /* Before MHD closes the socket: the loop never touches it after this. */
                connlimit_closed(&srv->conns, *socket_context);
                *socket_context = NULL;
        }
}

/* ---- listeners ---------------------------------------------------------- */

/*
 * Listening sockets are bound by server_bind(), which main calls while the
 * process may still be root (ports below 1024, a Unix socket in a root-only
 * directory, the chown to --unix-group), before privileges are dropped;
 * server_start() then gives them to the MHD daemons. Main thread only.
 */
static struct {
        int fd;
        char url[160];
        /* A Unix socket bound here: its directory (O_PATH) and inode, so that a failure
         * before server_start() removes that socket and nothing a swapped path names. */
        int dir_fd;
        dev_t dev;
        ino_t ino;
} bound[CONFIG_MAX_LISTEN];
static unsigned n_bound;
static const struct agent_config *bound_cfg;
/* The run user, for a Unix listener root may not create (server_set_bind_user()). */
static bool bind_user_set;
static uid_t bind_uid;
static gid_t bind_gid;

void server_set_bind_user(uid_t uid, gid_t gid)
{
        bind_user_set = true;
        bind_uid = uid;
        bind_gid = gid;
}

/* "http://HOST:PORT" (or "http://[V6]:PORT") of a bound TCP socket. */
static int tcp_url(int fd, char *url, size_t url_size)
{
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        char host[64], port[16];
        int n;

        if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0 ||
            (ss.ss_family != AF_INET && ss.ss_family != AF_INET6) ||
            getnameinfo((struct sockaddr *)&ss, sl, host, sizeof(host), port, sizeof(port),
                        NI_NUMERICHOST | NI_NUMERICSERV) != 0)
                return -EIO;
        if (ss.ss_family == AF_INET6)
                n = snprintf(url, url_size, "http://[%s]:%s", host, port);
        else
                n = snprintf(url, url_size, "http://%s:%s", host, port);
        return n < 0 || (size_t)n >= url_size ? -ENAMETOOLONG : 0;
}

/*
 * The file a Unix socket (fd) was just bound to as dir_fd/name, opened
 * O_PATH and checked to be that very socket: its group is then set on this
 * inode, never through the name, which whoever may write the directory can
 * replace in between (a root chmod and chown of the path once followed a
 * link planted right after bind() and gave a root-only file to
 * --unix-group). The kernel's own descriptor of the bound file when it has
 * one (SIOCUNIXFILE, which needs CAP_NET_ADMIN), and the name must still
 * hold it; otherwise the name opened without following a link, which must
 * be a socket of this process's file system uid (nobody else can make one).
 * Returns the descriptor, -ESTALE when the name no longer holds the socket,
 * or -errno.
 */
static int bound_socket_file(int fd, int dir_fd, const char *name)
{
        _cleanup_close_ int file_fd = -1;
        struct stat st, at;

        file_fd = ioctl(fd, SIOCUNIXFILE);
        if (file_fd >= 0) {
                if (fstat(file_fd, &st) < 0)
                        return negative_errno();
                if (fstatat(dir_fd, name, &at, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISSOCK(st.st_mode) ||
                    at.st_dev != st.st_dev || at.st_ino != st.st_ino)
                        return -ESTALE;
                return TAKE_FD(file_fd);
        }
        file_fd = openat(dir_fd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
        if (file_fd < 0)
                return errno == ENOENT ? -ESTALE : negative_errno();
        if (fstat(file_fd, &st) < 0)
                return negative_errno();
        /* setfsuid() with an invalid id changes nothing and returns the current one. */
        if (!S_ISSOCK(st.st_mode) || st.st_uid != (uid_t)setfsuid((uid_t)-1))
                return -ESTALE;
        return TAKE_FD(file_fd);
}

/*
 * A Unix listener at la->path, created with mode 0660 by the umask at bind()
 * (a chmod after it would act on whatever the name holds by then; main
 * thread, before the HTTP threads exist). A stale socket there is replaced,
 * never anything else (bind() refuses an existing name, a link included).
 * *ret_file_fd: bound_socket_file(), for the chown to --unix-group;
 * *ret_dir_fd: the directory it is in (O_PATH).
 */
static int unix_listen_socket(const struct listen_addr *la, int *ret_file_fd, int *ret_dir_fd)
{
        _cleanup_close_ int fd = -1, dir_fd = -1, file_fd = -1;
        struct sockaddr_un sun = { .sun_family = AF_UNIX };
        const char *name = strrchr(la->path, '/');
        char dir[sizeof(la->path)];
        struct stat st;
        mode_t old;
        int r;

        if (strlen(la->path) >= sizeof(sun.sun_path))
                return -ENAMETOOLONG;
        if (!name || !name[1])
                return -EINVAL;
        name++;
        snprintf(dir, sizeof(dir), "%.*s", name - la->path > 1 ? (int)(name - la->path - 1) : 1,
                 la->path);
        memcpy(sun.sun_path, la->path, strlen(la->path) + 1);
        dir_fd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (dir_fd < 0)
                return negative_errno();
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return negative_errno();
        if (fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISSOCK(st.st_mode))
                (void)unlinkat(dir_fd, name, 0);
        old = umask(0117);
        r = bind(fd, (struct sockaddr *)&sun, sizeof(sun));
        umask(old);
        if (r < 0)
                return negative_errno();
        file_fd = bound_socket_file(fd, dir_fd, name);
        if (file_fd < 0)
                return file_fd;
        if (listen(fd, 1024) < 0)
                return negative_errno();
        *ret_file_fd = TAKE_FD(file_fd);
        *ret_dir_fd = TAKE_FD(dir_fd);
        return TAKE_FD(fd);
}

/* A listening socket for la; for a Unix one also its file and directory (unix_listen_socket()). */
static int listen_socket(const struct listen_addr *la, char *url, size_t url_size, int *ret_file_fd,
                         int *ret_dir_fd)
{
        _cleanup_close_ int fd = -1;
        int one = 1;

        *ret_file_fd = *ret_dir_fd = -1;
        if (la->is_unix) {
                int r = unix_listen_socket(la, ret_file_fd, ret_dir_fd);
                if (r >= 0)
                        snprintf(url, url_size, "unix:%s", la->path);
                return r;
        } else {
                struct addrinfo hints = { .ai_family = AF_UNSPEC,
                                          .ai_socktype = SOCK_STREAM,
                                          .ai_flags = AI_PASSIVE | AI_NUMERICSERV },
                                *ai = NULL;
                int r = getaddrinfo(la->host, la->port, &hints, &ai);
                if (r != 0)
                        return -EADDRNOTAVAIL;
                fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
                if (fd < 0) {
                        r = negative_errno();
                        freeaddrinfo(ai);
                        return r;
                }
                (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
                if (ai->ai_family == AF_INET6)
                        (void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
                if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
                        r = negative_errno();
                        freeaddrinfo(ai);
                        return r;
                }
                freeaddrinfo(ai);
                r = tcp_url(fd, url, url_size);
                if (r < 0)
                        return r;
        }
        if (listen(fd, 1024) < 0)
                return negative_errno();
        return TAKE_FD(fd);
}

/*
 * A listening socket inherited across the simulated kexec's re-execution
 * (SERVER_LISTEN_FDS_ENV, main.c's sim_jump): the re-executed process may
 * no longer be allowed to bind the address itself. Taken only when it is a
 * listening stream socket of the kind --listen asks for (the same path for
 * a Unix one); otherwise closed and bound anew.
 */
static bool is_listening_stream(int fd)
{
        int acc = 0, type = 0;
        socklen_t ol = sizeof(acc), tl = sizeof(type);

        return getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &ol) == 0 && acc &&
               getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) == 0 && type == SOCK_STREAM;
}

static int inherited_socket(int fd, const struct listen_addr *la, char *url, size_t url_size)
{
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);

        if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0)
                return -EINVAL;
        if (la->is_unix) {
                const struct sockaddr_un *sun = (const struct sockaddr_un *)&ss;
                if (ss.ss_family != AF_UNIX ||
                    strncmp(sun->sun_path, la->path, sizeof(sun->sun_path)) != 0)
                        return -EINVAL;
                snprintf(url, url_size, "unix:%s", la->path);
        } else if (tcp_url(fd, url, url_size) < 0)
                return -EINVAL;
        if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
                return negative_errno();
        return fd;
}

/*
 * SERVER_LISTEN_FDS_ENV: "I:FD,I:FD,...", --listen index and descriptor.
 * Only a listening stream socket is taken (or, unclaimed, closed): nothing
 * of this process's is one yet, so a wrong number never closes the state
 * directory's lock or a channel to the helper.
 */
static void take_inherited(int fds[CONFIG_MAX_LISTEN])
{
        const char *e = getenv(SERVER_LISTEN_FDS_ENV);

        for (unsigned i = 0; i < CONFIG_MAX_LISTEN; i++)
                fds[i] = -1;
        while (e && *e) {
                char *end;
                unsigned long i = strtoul(e, &end, 10), fd;
                if (end == e || *end != ':')
                        break;
                e = end + 1;
                fd = strtoul(e, &end, 10);
                if (end == e || (*end && *end != ','))
                        break;
                e = *end ? end + 1 : end;
                if (fd < 3 || fd > INT32_MAX || !is_listening_stream((int)fd))
                        continue;
                if (i < CONFIG_MAX_LISTEN && fds[i] < 0)
                        fds[i] = (int)fd;
                else
                        (void)close((int)fd);
        }
        (void)unsetenv(SERVER_LISTEN_FDS_ENV);
}

/* Remove the Unix socket bound[i] bound: in its directory, only that inode. */
static void bound_unlink(unsigned i)
{
        const char *path = bound_cfg->listen[i].path, *name = strrchr(path, '/') + 1;
        struct stat st;

        if (bound[i].dir_fd < 0) { /* inherited: no root privilege involved */
                (void)unlink(path);
                return;
        }
        if (fstatat(bound[i].dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISSOCK(st.st_mode) &&
            st.st_dev == bound[i].dev && st.st_ino == bound[i].ino)
                (void)unlinkat(bound[i].dir_fd, name, 0);
}

static void bound_close(void)
{
        for (unsigned i = 0; i < n_bound; i++) {
                if (bound[i].fd >= 0) {
                        close(bound[i].fd);
                        bound[i].fd = -1;
                        if (bound_cfg->listen[i].is_unix)
                                bound_unlink(i);
                }
                if (bound[i].dir_fd >= 0)
                        close(bound[i].dir_fd);
                bound[i].dir_fd = -1;
        }
        n_bound = 0;
        bound_cfg = NULL;
}

int server_bind(const struct agent_config *cfg)
{
        int inherited[CONFIG_MAX_LISTEN];
        int r;

        if (bound_cfg)
                return 0;
        take_inherited(inherited);
        bound_cfg = cfg;
        for (unsigned i = 0; i < cfg->n_listen && i < CONFIG_MAX_LISTEN; i++) {
                const struct listen_addr *la = &cfg->listen[i];
                _cleanup_close_ int file_fd = -1; /* a Unix socket's file (O_PATH) */
                struct stat st;
                bool fresh = true;

                bound[i].fd = bound[i].dir_fd = -1;
                n_bound = i + 1;
                r = -EBADF;
                if (inherited[i] >= 0) {
                        r = inherited_socket(inherited[i], la, bound[i].url, sizeof(bound[i].url));
                        if (r < 0)
                                close(inherited[i]);
                        inherited[i] = -1;
                        fresh = r < 0;
                }
                if (fresh)
                        r = listen_socket(la, bound[i].url, sizeof(bound[i].url), &file_fd,
                                          &bound[i].dir_fd);
                if (fresh && r < 0 && la->is_unix && bind_user_set && geteuid() == 0 &&
                    (r == -EACCES || r == -EPERM || r == -EADDRINUSE)) {
                        /*
                         * Root without CAP_DAC_OVERRIDE (the systemd unit's bounding
                         * set) may not create, replace or chmod a socket in a
                         * directory the run user owns (/run/luofleet of the
                         * tmpfiles.d file): that user may, so try once more with its
                         * file system identity. The first error is the one told.
                         */
                        int k;
                        (void)setfsgid(bind_gid);
                        (void)setfsuid(bind_uid);
                        k = listen_socket(la, bound[i].url, sizeof(bound[i].url), &file_fd,
                                          &bound[i].dir_fd);
                        (void)setfsuid(geteuid());
                        (void)setfsgid(getegid());
                        if (k >= 0)
                                r = k;
                }
                if (r == -ESTALE) {
                        log_error("Failed to listen on %s: the socket file was replaced or "
                                  "moved right after it was bound (who else may write to its "
                                  "directory?); nothing was changed through the new name",
                                  la->path);
                        goto fail;
                }
                if (r < 0) {
                        log_error_errno(r, "Failed to listen on %s%s%s: %m",
                                        la->is_unix ? la->path : la->host, la->is_unix ? "" : ":",
                                        la->is_unix ? "" : la->port);
                        goto fail;
                }
                bound[i].fd = r;
                if (file_fd >= 0 && fstat(file_fd, &st) == 0) {
                        bound[i].dev = st.st_dev;
                        bound[i].ino = st.st_ino;
                }
                if (la->is_unix && fresh) {
                        r = auth_chown_socket(file_fd);
                        if (r < 0) {
                                log_error_errno(r, "Failed to give %s to --unix-group=%s: %m",
                                                la->path, cfg->unix_group);
                                goto fail;
                        }
                }
        }
        for (unsigned i = 0; i < CONFIG_MAX_LISTEN; i++)
                if (inherited[i] >= 0)
                        close(inherited[i]);
        return 0;
fail:
        for (unsigned i = 0; i < CONFIG_MAX_LISTEN; i++)
                if (inherited[i] >= 0)
                        close(inherited[i]);
        bound_close();
        return r;
}

void server_unbind(void)
{
        if (bound_cfg)
                bound_close();
}

/*
 * The listeners are written by server_start() in the main thread while the
 * worker thread already runs (MHD's threads may even answer a request before
 * server_start() returns): read them only once it published them.
 */
static bool listeners_published(struct server *s)
{
        return atomic_load_explicit(&s->listening, memory_order_acquire);
}

int server_listen_fd(struct server *s, unsigned i)
{
        if (!listeners_published(s) || i >= s->n_listeners || !s->listeners[i]->daemon)
                return -ENOENT;
        return s->listeners[i]->fd;
}

static bool security_ready;

int server_security_setup(const struct agent_config *cfg)
{
        char err[512] = "";
        int r;

        if (security_ready)
                return 0;
        r = tls_setup(cfg, err, sizeof(err));
        if (r >= 0)
                r = auth_setup(cfg, err, sizeof(err));
        if (r < 0) {
                log_error("%s", err[0] ? err : "Failed to set up TLS or authentication");
                tls_done();
                return r;
        }
        if (cfg->tokens_file)
                log_info("Authentication: %zu bearer tokens from %s", auth_token_count(),
                         cfg->tokens_file);
        if (cfg->insecure)
                log_warning("--insecure: non-loopback listeners may serve without TLS or "
                            "authentication");
        security_ready = true;
        return 0;
}

int server_new(struct agent *a, const struct agent_config *cfg, struct server **ret)
{
        struct server *s = calloc(1, sizeof(*s));
        int r;

        if (!s)
                return -ENOMEM;
        s->agent = a;
        s->cfg = cfg;
        r = server_security_setup(cfg);
        if (r < 0) {
                free(s);
                return r;
        }
        connlimit_init(&s->conns, cfg->max_connections, cfg->max_connections_per_ip,
                       cfg->header_timeout_ms, cfg->idle_timeout_ms);
        metrics_set_limits(&(struct metrics_limits){
                .max_connections = cfg->max_connections,
                .max_connections_per_ip = cfg->max_connections_per_ip,
                .max_waiters = cfg->max_waiters,
                .max_streams = cfg->max_streams,
                .max_header_bytes = cfg->max_header_bytes,
                .max_body_bytes = cfg->max_body_bytes,
                .header_timeout_ms = cfg->header_timeout_ms,
                .idle_timeout_ms = cfg->idle_timeout_ms,
        });
        staging_set_allowed_dirs(cfg->staging_dirs, cfg->n_staging_dirs);
        lp_init(&s->lp, cfg->max_waiters);
        sse_init(&s->sse, a, cfg->max_streams, cfg->sse_heartbeat_ms);
        router_init();
        r = worker_new(&s->worker);
        if (r >= 0)
                r = loop_new(a, &s->loop);
        if (r < 0) {
                server_free(s);
                return r;
        }
        lp_set_loop(&s->lp, s->loop);
        sse_set_loop(&s->sse, s->loop);
        connlimit_set_loop(&s->conns, s->loop);
        loop_add_timer_client(s->loop,
                              &(struct loop_timer_client){ lp_next_deadline, lp_fire, &s->lp });
        loop_add_timer_client(s->loop,
                              &(struct loop_timer_client){ sse_next_deadline, sse_fire, &s->sse });
        r = loop_add_timer_client(
                s->loop,
                &(struct loop_timer_client){ connlimit_next_deadline, connlimit_fire, &s->conns });
        if (r < 0) {
                server_free(s);
                return r;
        }
        agent_add_listener(a, lp_notify, &s->lp);
        agent_add_listener(a, sse_notify, &s->sse);
        *ret = s;
        return 0;
}

int server_start(struct server *s)
{
        int r;

        s->started_mono = now_mono_usec();
        /* Normally done by main before the drop; then the sockets are only taken here. */
        r = server_bind(s->cfg);
        if (r < 0)
                return r;
        r = loop_start(s->loop);
        if (r < 0)
                return log_error_errno(r, "Failed to start the event loop: %m");
        for (unsigned i = 0; i < s->cfg->n_listen && i < ELEMENTSOF(s->listeners); i++) {
                struct server_listener *lis = calloc(1, sizeof(*lis));
                if (!lis)
                        return log_oom();
                lis->srv = s;
                lis->addr = s->cfg->listen[i];
                lis->fd = -1;
                pthread_mutex_init(&lis->cache_lock, NULL);
                s->listeners[s->n_listeners++] = lis;
                /* server_bind()'s socket is the listener's now (closed or unlinked by it). */
                lis->fd = bound[i].fd;
                bound[i].fd = -1;
                if (bound[i].dir_fd >= 0)
                        close(bound[i].dir_fd);
                bound[i].dir_fd = -1;
                memcpy(lis->url, bound[i].url, sizeof(lis->url));
                if (lis->fd < 0)
                        return log_error_errno(EBADF, "No socket bound for %s", lis->url);
                lis->tls = !lis->addr.is_unix && tls_enabled();
                lis->loopback = !lis->addr.is_unix && listen_is_loopback(&lis->addr);
                if (lis->tls) { /* "http://..." -> "https://..." */
                        size_t len = strlen(lis->url);
                        if (len + 1 < sizeof(lis->url)) {
                                memmove(lis->url + 5, lis->url + 4, len - 4 + 1);
                                lis->url[4] = 's';
                        }
                }
                /*
                 * The logger first, so MHD's own option warnings reach it. The pool
                 * size option only when asked for: MHD warns about a size of 0/1.
                 * MHD zeroes the connection pool per request: the default 16 KiB
                 * (--max-header-bytes) holds any sane header set (bodies are copied
                 * out) at a third of the cost of 64 KiB.
                 */
                struct MHD_OptionItem opts[8];
                unsigned n = 0;
                if (s->cfg->http_threads > 1)
                        opts[n++] = (struct MHD_OptionItem){ MHD_OPTION_THREAD_POOL_SIZE,
                                                             (intptr_t)s->cfg->http_threads, NULL };
                if (lis->tls)
                        n += tls_mhd_options(opts + n); /* cert callback: SIGHUP reloads */
                opts[n] = (struct MHD_OptionItem){ MHD_OPTION_END, 0, NULL };
                /*
                 * Limits (docs/limits.md): connlimit.c counts connections over every
                 * listener in the accept policy, so MHD's own per-daemon limit (split
                 * between its threads; at the limit it stops accepting instead of
                 * refusing) is only a backstop above ours. The per-connection memory
                 * pool bounds the request head (MHD answers 431 past it); the idle
                 * timeout is in whole seconds.
                 */
                unsigned mhd_limit = (s->cfg->max_connections + 64) *
                                     (s->cfg->http_threads ? s->cfg->http_threads : 1);
                unsigned idle_sec = (unsigned)((s->cfg->idle_timeout_ms + 999) / 1000);
                lis->daemon = MHD_start_daemon(
                        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
                                MHD_USE_ERROR_LOG | MHD_USE_ITC | (lis->tls ? MHD_USE_TLS : 0),
                        0, accept_policy, s, access_handler, lis, MHD_OPTION_EXTERNAL_LOGGER,
                        mhd_logger, NULL, MHD_OPTION_ARRAY, opts, MHD_OPTION_LISTEN_SOCKET, lis->fd,
                        MHD_OPTION_NOTIFY_COMPLETED, completed, lis, MHD_OPTION_NOTIFY_CONNECTION,
                        notify_connection, s, MHD_OPTION_CONNECTION_LIMIT, mhd_limit,
                        MHD_OPTION_CONNECTION_TIMEOUT, idle_sec, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
                        s->cfg->max_header_bytes, MHD_OPTION_UNESCAPE_CALLBACK, unescape, NULL,
                        MHD_OPTION_STRICT_FOR_CLIENT, (int)1, MHD_OPTION_LISTENING_ADDRESS_REUSE,
                        (unsigned)1, MHD_OPTION_END);
                if (!lis->daemon)
                        return log_error_errno(EIO, "Failed to start the HTTP server on %s",
                                               lis->url);
                /* MHD owns the socket now and closes it at stop. */
                lis->fd_given = true;
        }
        /* The listeners are complete: other threads (the worker's simulated kexec) may
         * read them from now on (server_listen_spec, server_listen_fd). */
        atomic_store_explicit(&s->listening, true, memory_order_release);
        /* Only now that every daemon runs: the tests (and scripts) wait for these lines. */
        for (unsigned i = 0; i < s->n_listeners; i++)
                printf("luofleet-agent: listening on %s\n", s->listeners[i]->url);
        fflush(stdout);
        return 0;
}

void server_stop(struct server *s)
{
        if (s->stopped)
                return;
        s->stopped = true;
        agent_set_shutting_down(s->agent);
        /*
         * No new connection from now on. Not MHD_quiesce_daemon(): with epoll and
         * internal threads (libmicrohttpd 0.9.75) it removes the listen socket from
         * the epoll set while the daemon's thread may do the same, and the loser's
         * ENOENT is an MHD_PANIC ("Failed to remove listen FD from epoll set"),
         * an abort at SIGTERM. The accept policy refuses instead; MHD_stop_daemon()
         * below closes the socket.
         */
        atomic_store(&s->closing, true);
        lp_close(&s->lp);
        sse_close_all(&s->sse);
        /* The running operation finishes and its client is answered. */
        if (s->worker)
                worker_stop(s->worker);
        /* No more kernel notifications or timers: nothing will resume anything.
         * (Freed only in server_free: handlers may still read its counters.) */
        if (s->loop)
                loop_stop(s->loop);
        /*
         * The requests just resumed (long-polls, the finished operation, ended
         * streams) still have to be written by MHD's threads: give them a bounded
         * moment before the daemons close every connection.
         */
        for (int i = 0; i < 200 && atomic_load(&s->deferred) > 0; i++) {
                struct timespec ts = { 0, 10 * 1000 * 1000 };
                nanosleep(&ts, NULL);
        }
        if (atomic_load(&s->deferred) > 0)
                log_warning("Stopping with %u answers not yet delivered",
                            (unsigned)atomic_load(&s->deferred));
        for (unsigned i = 0; i < s->n_listeners; i++) {
                struct server_listener *lis = s->listeners[i];
                if (lis->daemon)
                        MHD_stop_daemon(lis->daemon);
                lis->daemon = NULL;
                if (lis->cache)
                        MHD_destroy_response(lis->cache);
                lis->cache = NULL;
        }
        s->worker = worker_free(s->worker);
}

int server_listen_spec(struct server *s, unsigned i, char *buf, size_t size)
{
        struct server_listener *lis;
        int n;

        if (!listeners_published(s) || i >= s->n_listeners)
                return -ENOENT;
        lis = s->listeners[i];
        if (lis->addr.is_unix)
                n = snprintf(buf, size, "unix:%s", lis->addr.path);
        else /* url is http(s)://HOST:PORT or http(s)://[V6]:PORT */
                n = snprintf(buf, size, "%s", strstr(lis->url, "://") + 3);
        return n < 0 || (size_t)n >= size ? -ENAMETOOLONG : 0;
}

/*
 * The Unix listener's file at the stop. Bound by root before the drop, in a
 * directory the run user may not write (a root-only one): then the
 * privileged helper removes it (UNLINK_SOCKET names it by its --listen
 * index; the helper only ever removes a socket). If that fails too, the
 * next start replaces the stale socket.
 */
static void unlink_socket(struct server *s, unsigned i, const char *path)
{
        struct backend *b = s->agent ? s->agent->backend : NULL;
        int r;

        if (unlink(path) == 0 || errno == ENOENT)
                return;
        r = negative_errno();
        if ((r == -EACCES || r == -EPERM) && privsep_is_proxy(b))
                r = privsep_proxy_unlink_socket(b, i);
        if (r < 0 && r != -ENOENT)
                log_debug_errno(r, "Could not remove %s: %m (the next start replaces it)", path);
}

struct server *server_free(struct server *s)
{
        if (!s)
                return NULL;
        server_stop(s);
        for (unsigned i = 0; i < s->n_listeners; i++) {
                struct server_listener *lis = s->listeners[i];
                if (lis->fd >= 0 && !lis->fd_given)
                        close(lis->fd);
                if (lis->addr.is_unix && lis->fd >= 0)
                        unlink_socket(s, i, lis->addr.path);
                pthread_mutex_destroy(&lis->cache_lock);
                free(lis);
        }
        server_unbind();
        s->loop = loop_free(s->loop);
        connlimit_done(&s->conns);
        auth_done();
        tls_done();
        security_ready = false;
        lp_done(&s->lp);
        sse_done(&s->sse);
        free(s);
        return NULL;
}

int server_reload(struct server *s)
{
        char err[512] = "";
        int r, ret = 0;

        (void)s;
        r = tls_reload(err, sizeof(err));
        if (r < 0) {
                log_error("SIGHUP: TLS not reloaded, the running certificate stays: %s", err);
                ret = r;
        }
        err[0] = 0;
        r = auth_reload(err, sizeof(err));
        if (r < 0) {
                log_error("SIGHUP: tokens not reloaded, the running table stays: %s", err);
                ret = ret ? ret : r;
        } else if (s->cfg->tokens_file)
                log_info("SIGHUP: %zu tokens loaded from %s", auth_token_count(),
                         s->cfg->tokens_file);
        return ret;
}
