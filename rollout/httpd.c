/*
 * httpd.c: luofleet-rollout's HTTP(S) server (see httpd.h).
 *
 * Threading: MHD_USE_THREAD_PER_CONNECTION, capped per listener by
 * MHD_OPTION_CONNECTION_LIMIT (--max-connections, default 64). The
 * controller's API is low-traffic (operators, luofleetctl, a dashboard), and
 * its one long-lived request, the event stream of a rollout, is easiest and
 * safest as a content-reader callback that simply blocks in
 * controller_events() (with a timeout) on its own thread: no suspend/resume
 * bookkeeping, no watcher that must resume the right connection when the
 * engine appends an event, no busy-looping reader (a reader that returns 0
 * bytes makes MHD call it again at once). The price, a thread per open
 * connection, is bounded by the connection cap, and api.c bounds streams to
 * half of it so that the API stays reachable while dashboards watch. The
 * agent, which serves thousands of long-polls, uses suspend/resume instead.
 * The blocking waits are cut into 500 ms slices, so a stop (or a client that
 * hung up) is noticed within half a second and MHD_stop_daemon() joins
 * every connection thread promptly.
 *
 * Per request: the connection context (struct conn) is allocated on MHD's
 * first call and freed in the request-completed callback; the body goes
 * into a buffer capped at API_BODY_MAX (413 payload-too-large). Callers
 * are authenticated before routing, by the agent's auth.c (tokens file,
 * roles: GET/HEAD need viewer, everything else operator; /healthz open) and
 * tls.c (certificates reloadable on SIGHUP, client certificates). Both keep
 * process-wide state, which is fine: one server per process.
 */
#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <microhttpd.h>

#include "api.h"
#include "auth.h"
#include "httpd.h"
#include "luofleet/log.h"
#include "luofleet/macro.h"
#include "luofleet/util.h"
#include "tls.h"

#define HTTPD_MAX_LISTEN 8
#define REALM "Bearer realm=\"luofleet-rollout\""

struct listener {
        struct httpd *h;
        int fd; /* bound socket, until MHD owns it */
        char url[160];
        bool tls;
        struct MHD_Daemon *daemon;
};

struct httpd {
        struct httpd_options o;
        struct api *api;
        struct listener lis[HTTPD_MAX_LISTEN];
        unsigned n_lis;
        bool security; /* tls.c/auth.c set up: undo at the end */
};

/* ---- sockets ------------------------------------------------------------------ */

/* "http://HOST:PORT" (or "http://[V6]:PORT") of a bound TCP socket. */
static int tcp_url(int fd, bool tls, char *url, size_t size)
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
        n = snprintf(url, size, ss.ss_family == AF_INET6 ? "%s://[%s]:%s" : "%s://%s:%s",
                     tls ? "https" : "http", host, port);
        return n < 0 || (size_t)n >= size ? -ENAMETOOLONG : 0;
}

static int listen_socket(const struct listen_addr *la)
{
        struct addrinfo hints = { .ai_family = AF_UNSPEC,
                                  .ai_socktype = SOCK_STREAM,
                                  .ai_flags = AI_PASSIVE | AI_NUMERICSERV },
                        *ai = NULL;
        _cleanup_close_ int fd = -1;
        int one = 1, r;

        if (getaddrinfo(la->host, la->port, &hints, &ai) != 0)
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
        r = bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 ? negative_errno() : 0;
        freeaddrinfo(ai);
        if (r < 0)
                return r;
        if (listen(fd, 128) < 0)
                return negative_errno();
        return TAKE_FD(fd);
}

/* ---- per request ---------------------------------------------------------------- */

struct conn {
        struct listener *lis;
        char *body;
        size_t len, cap;
        bool too_large;
        bool authed; /* authenticate() ran: verdict below */
        bool allowed;
        struct api_reply denial; /* the 401/403 when !allowed */
        const char *www_authenticate;
        char who[160]; /* the caller, as logs name it ("token:ops", "anonymous") */
};

static enum api_method method_of(const char *m)
{
        static const struct {
                const char *name;
                enum api_method m;
        } tab[] = {
                { "GET", API_GET }, { "HEAD", API_HEAD },     { "POST", API_POST },
                { "PUT", API_PUT }, { "DELETE", API_DELETE },
        };
        for (size_t i = 0; i < ELEMENTSOF(tab); i++)
                if (strcmp(tab[i].name, m) == 0)
                        return tab[i].m;
        return API_OTHER;
}

static enum MHD_Result collect_arg(void *cls, enum MHD_ValueKind kind, const char *key,
                                   const char *value)
{
        struct api_req *req = cls;

        (void)kind;
        if (req->n_args >= API_MAX_ARGS) {
                req->too_many_args = true;
                return MHD_NO;
        }
        req->args[req->n_args].key = key ? key : "";
        req->args[req->n_args].value = value;
        req->n_args++;
        return MHD_YES;
}

/* The request path: MHD hands over the decoded target; an absolute form names the same. */
static const char *request_path(const char *url)
{
        if (strncasecmp(url, "http://", 7) == 0 || strncasecmp(url, "https://", 8) == 0) {
                const char *p = strchr(strstr(url, "//") + 2, '/');
                return p ? p : "/";
        }
        return url;
}

/* Who asks, and may they? Once per request; a refusal is kept in c->denial. */
static bool authenticate(struct conn *c, struct MHD_Connection *conn, const char *path,
                         enum api_method m)
{
        struct auth_request arq = {
                .is_read = m == API_GET || m == API_HEAD,
                .path = path,
                .fd = -1,
        };
        struct auth_identity who;
        char cert_name[sizeof(who.name)] = "", detail[256] = "";
        const char *code = NULL;
        enum auth_verdict v;

        if (c->authed)
                return c->allowed;
        c->authed = true;
        c->allowed = true;
        snprintf(c->who, sizeof(c->who), "anonymous");
        if (!auth_required())
                return true;
        arq.authorization = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization");
        if (c->lis->tls) {
                const union MHD_ConnectionInfo *ci =
                        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);
                arq.cert = tls_peer_identity(ci ? ci->tls_session : NULL, cert_name,
                                             sizeof(cert_name));
                arq.cert_name = cert_name;
        }
        v = auth_check(&arq, &who, &code, detail, sizeof(detail));
        if (v == AUTH_ALLOW) {
                auth_identity_string(&who, c->who, sizeof(c->who));
                return true;
        }
        c->allowed = false;
        auth_count_denied(v, code);
        if (v == AUTH_UNAUTHENTICATED) {
                api_reply_problem(&c->denial, 401, code, NULL, "%s", detail);
                c->www_authenticate = strcmp(code, "invalid-credentials") == 0 ? REALM
                                              ", error=\"invalid_token\""
                                                                               : REALM;
        } else
                api_reply_problem(&c->denial, 403, code, NULL, "%s", detail);
        api_reply_instance(&c->denial, path);
        return false;
}

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
        (void)pos;
        ssize_t n = api_stream_read(cls, buf, max);
        return n < 0 ? MHD_CONTENT_READER_END_OF_STREAM : n;
}

static void stream_free(void *cls)
{
        api_stream_free(cls);
}

static void add_header(struct MHD_Response *resp, const char *name, const char *value)
{
        if (MHD_add_response_header(resp, name, value) != MHD_YES)
                log_debug("Could not add the header %s", name);
}

/* Turn rep into an MHD response (taking what it owns) and queue it. */
static enum MHD_Result queue_reply(struct MHD_Connection *conn, struct api_reply *rep,
                                   const char *www_authenticate, bool close)
{
        struct MHD_Response *resp;
        const char *ct = NULL;
        char num[24];
        enum MHD_Result ret;

        if (rep->stream) {
                resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, stream_reader,
                                                         rep->stream, stream_free);
                if (!resp) {
                        api_stream_free(rep->stream);
                        rep->stream = NULL;
                        api_reply_clear(rep);
                        return MHD_NO;
                }
                rep->stream = NULL; /* MHD's now: stream_free() at the end */
                ct = "text/event-stream";
                add_header(resp, "X-Accel-Buffering", "no");
        } else if (rep->text) {
                resp = MHD_create_response_from_buffer(rep->text_len, rep->text,
                                                       MHD_RESPMEM_MUST_FREE);
                if (resp)
                        rep->text = NULL;
                ct = rep->text_type;
        } else if (rep->json) {
                char *s = json_dumps(rep->json, JSON_COMPACT);
                resp = s ? MHD_create_response_from_buffer(strlen(s), s, MHD_RESPMEM_MUST_FREE)
                         : NULL;
                if (!resp)
                        free(s);
                ct = rep->problem ? "application/problem+json" : "application/json";
        } else
                resp = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
        if (!resp) {
                api_reply_clear(rep);
                return MHD_NO;
        }
        if (ct)
                add_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ct);
        add_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
        if (rep->allow[0])
                add_header(resp, MHD_HTTP_HEADER_ALLOW, rep->allow);
        if (rep->location[0])
                add_header(resp, MHD_HTTP_HEADER_LOCATION, rep->location);
        if (rep->retry_after) {
                snprintf(num, sizeof(num), "%u", rep->retry_after);
                add_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, num);
        }
        if (www_authenticate)
                add_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, www_authenticate);
        if (close)
                add_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
        ret = MHD_queue_response(conn, (unsigned)rep->status, resp);
        MHD_destroy_response(resp);
        api_reply_clear(rep);
        return ret;
}

/* A refusal before routing (body too large): after authentication, like any answer. */
static enum MHD_Result refuse_too_large(struct conn *c, struct MHD_Connection *conn,
                                        const char *path, enum api_method m)
{
        struct api_reply rep = { 0 };

        atomic_fetch_add(&c->lis->h->api->requests_total, 1);
        if (!authenticate(c, conn, path, m)) {
                api_count_status(c->lis->h->api, c->denial.status);
                return queue_reply(conn, &c->denial, c->www_authenticate, true);
        }
        api_reply_problem(&rep, 413, "payload-too-large", NULL, "the request body exceeds %d bytes",
                          API_BODY_MAX);
        api_reply_instance(&rep, path);
        api_count_status(c->lis->h->api, 413);
        return queue_reply(conn, &rep, NULL, true);
}

static enum MHD_Result access_handler(void *cls, struct MHD_Connection *conn, const char *url,
                                      const char *method, const char *version,
                                      const char *upload_data, size_t *upload_data_size,
                                      void **con_cls)
{
        struct listener *lis = cls;
        struct conn *c = *con_cls;
        const char *path = request_path(url);
        enum api_method m = method_of(method);

        (void)version;
        if (!c) {
                const char *cl;
                uint64_t n;

                c = calloc(1, sizeof(*c));
                if (!c)
                        return MHD_NO;
                c->lis = lis;
                *con_cls = c;
                cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_CONTENT_LENGTH);
                /* Refused before a byte of the body is read. */
                if (cl && (parse_u64(cl, UINT64_MAX, &n) < 0 || n > API_BODY_MAX))
                        return refuse_too_large(c, conn, path, m);
                return MHD_YES;
        }
        if (*upload_data_size) {
                size_t n = *upload_data_size;
                *upload_data_size = 0;
                if (c->too_large)
                        return MHD_YES; /* (chunked) keep reading, answer 413 at the end */
                if (c->len + n > API_BODY_MAX) {
                        c->too_large = true;
                        free(c->body);
                        c->body = NULL;
                        c->len = c->cap = 0;
                        return MHD_YES;
                }
                if (c->len + n + 1 > c->cap) {
                        size_t cap = MAX(c->cap * 2, c->len + n + 1);
                        cap = MAX(cap, (size_t)4096);
                        char *b = realloc(c->body, cap);
                        if (!b)
                                return MHD_NO;
                        c->body = b;
                        c->cap = cap;
                }
                memcpy(c->body + c->len, upload_data, n);
                c->len += n;
                c->body[c->len] = 0;
                return MHD_YES;
        }
        if (c->too_large)
                return refuse_too_large(c, conn, path, m);

        if (!authenticate(c, conn, path, m)) {
                atomic_fetch_add(&lis->h->api->requests_total, 1);
                api_count_status(lis->h->api, c->denial.status);
                return queue_reply(conn, &c->denial, c->www_authenticate, false);
        }

        struct api_req req = {
                .api = lis->h->api,
                .method = m,
                .method_raw = method,
                .path = path,
                .body = c->body,
                .body_len = c->len,
                .fd = -1,
                .who = c->who,
        };
        struct api_reply rep;
        const union MHD_ConnectionInfo *ci =
                MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (ci)
                req.fd = ci->connect_fd;
        MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, collect_arg, &req);
        req.content_type =
                MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
        req.last_event_id = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Last-Event-ID");
        api_handle(&req, &rep);
        log_debug("%s %s -> %d", method, path, rep.status);
        return queue_reply(conn, &rep, NULL, false);
}

static void completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                      enum MHD_RequestTerminationCode toe)
{
        struct conn *c = *con_cls;

        (void)cls;
        (void)conn;
        (void)toe;
        if (!c)
                return;
        api_reply_clear(&c->denial);
        free(c->body);
        free(c);
        *con_cls = NULL;
}

static void mhd_logger(void *cls, const char *fmt, va_list ap)
        __attribute__((format(printf, 2, 0)));
static void mhd_logger(void *cls, const char *fmt, va_list ap)
{
        char buf[512];

        (void)cls;
        vsnprintf(buf, sizeof(buf), fmt, ap);
        log_debug("libmicrohttpd: %s", strip_trailing(buf));
}

/* ---- life cycle --------------------------------------------------------------- */

static int security_setup(struct httpd *h)
{
        /* tls.c and auth.c read their settings from the agent's configuration struct. */
        struct agent_config shim = {
                .tls_cert = (char *)h->o.tls_cert,
                .tls_key = (char *)h->o.tls_key,
                .tls_client_ca = (char *)h->o.tls_client_ca,
                .tokens_file = (char *)h->o.tokens_file,
                .tls_client_role = ROLE_OPERATOR,
        };
        char err[512] = "";
        int r;

        r = tls_setup(&shim, err, sizeof(err));
        if (r >= 0)
                r = auth_setup(&shim, err, sizeof(err));
        if (r < 0) {
                log_error("%s", err[0] ? err : "Failed to set up TLS or authentication");
                auth_done();
                tls_done();
                return -EINVAL;
        }
        h->security = true;
        if (h->o.tokens_file)
                log_info("Authentication: %zu bearer tokens from %s", auth_token_count(),
                         h->o.tokens_file);
        if (h->o.insecure)
                log_warning("--insecure: non-loopback listeners may serve without TLS or "
                            "authentication");
        return 0;
}

int httpd_new(const struct httpd_options *o, struct httpd **ret)
{
        struct httpd *h = calloc(1, sizeof(*h));
        int r;

        if (!h)
                return log_oom();
        h->o = *o;
        for (unsigned i = 0; i < HTTPD_MAX_LISTEN; i++)
                h->lis[i].fd = -1;
        r = security_setup(h);
        if (r < 0) {
                httpd_free(h);
                return r;
        }
        for (unsigned i = 0; i < o->n_listen && i < HTTPD_MAX_LISTEN; i++) {
                struct listener *l = &h->lis[h->n_lis];
                const struct listen_addr *la = &o->listen[i];
                l->h = h;
                l->tls = tls_enabled();
                l->fd = listen_socket(la);
                if (l->fd < 0) {
                        r = l->fd;
                        l->fd = -1;
                        log_error_errno(r, "Cannot listen on %s%s%s:%s: %m",
                                        strchr(la->host, ':') ? "[" : "", la->host,
                                        strchr(la->host, ':') ? "]" : "", la->port);
                        httpd_free(h);
                        return r;
                }
                h->n_lis++;
                r = tcp_url(l->fd, l->tls, l->url, sizeof(l->url));
                if (r < 0) {
                        httpd_free(h);
                        return log_error_errno(r, "Cannot name the listening socket: %m");
                }
        }
        *ret = h;
        return 0;
}

int httpd_start(struct httpd *h, struct api *api)
{
        unsigned idle_sec = (unsigned)((h->o.idle_timeout_ms + 999) / 1000);

        h->api = api;
        /* An idle stream writes a keepalive well within the idle timeout. */
        idle_sec = MAX(idle_sec, (unsigned)(2 * api->keepalive_ms / 1000 + 1));
        for (unsigned i = 0; i < h->n_lis; i++) {
                struct listener *l = &h->lis[i];
                struct MHD_OptionItem opts[TLS_MHD_OPTIONS + 1];
                unsigned n = 0;

                if (l->tls)
                        n += tls_mhd_options(opts + n); /* cert callback: SIGHUP reloads */
                opts[n] = (struct MHD_OptionItem){ MHD_OPTION_END, 0, NULL };
                l->daemon = MHD_start_daemon(
                        MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                                MHD_USE_POLL | MHD_USE_ERROR_LOG | MHD_USE_ITC |
                                (l->tls ? MHD_USE_TLS : 0),
                        0, NULL, NULL, access_handler, l, MHD_OPTION_EXTERNAL_LOGGER, mhd_logger,
                        NULL, MHD_OPTION_ARRAY, opts, MHD_OPTION_LISTEN_SOCKET, l->fd,
                        MHD_OPTION_NOTIFY_COMPLETED, completed, l, MHD_OPTION_CONNECTION_LIMIT,
                        h->o.max_connections, MHD_OPTION_CONNECTION_TIMEOUT, idle_sec,
                        MHD_OPTION_STRICT_FOR_CLIENT, (int)1, MHD_OPTION_END);
                if (!l->daemon)
                        return log_error_errno(EIO, "Failed to start the HTTP server on %s",
                                               l->url);
                l->fd = -1; /* MHD's now, closed by MHD_stop_daemon() */
        }
        /* Only now that every daemon runs: the tests (and scripts) wait for these lines. */
        for (unsigned i = 0; i < h->n_lis; i++)
                printf("luofleet-rollout: listening on %s\n", h->lis[i].url);
        fflush(stdout);
        return 0;
}

int httpd_reload(struct httpd *h)
{
        char err[512] = "";
        int r, ret = 0;

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
        } else if (h->o.tokens_file)
                log_info("SIGHUP: %zu tokens loaded from %s", auth_token_count(), h->o.tokens_file);
        return ret;
}

struct httpd *httpd_free(struct httpd *h)
{
        if (!h)
                return NULL;
        if (h->api)
                atomic_store(&h->api->stopping, true);
        for (unsigned i = 0; i < h->n_lis; i++) {
                struct listener *l = &h->lis[i];
                if (l->daemon)
                        MHD_stop_daemon(l->daemon);
                l->daemon = NULL;
                if (l->fd >= 0)
                        close(l->fd);
                l->fd = -1;
        }
        if (h->security) {
                auth_done();
                tls_done();
        }
        free(h);
        return NULL;
}
