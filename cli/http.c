/*
 * http.c: luofleetctl's HTTP client: one libcurl easy handle per request
 * (TLS verification always on, the configured CA bundle, client certificate
 * and bearer token), bounded response bodies, a Server-Sent Events reader,
 * problem+json reporting, URL helpers. CURLcode stays inside this file.
 * Single-threaded; the signal handler only sets cli_interrupted.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>

#include "cli.h"

#include "luofleet/macro.h"
#include "luofleet/util.h"

#define BODY_MAX (32u * 1024 * 1024)
#define SSE_LINE_MAX (1024u * 1024)
#define CONNECT_TIMEOUT_MS 10000u

volatile int cli_interrupted;

static void on_signal(int sig)
{
        cli_interrupted = sig;
}

void cli_catch_signals(void)
{
        struct sigaction sa = { .sa_handler = on_signal };

        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
}

void http_resp_clear(struct http_resp *r)
{
        free(r->body);
        free(r->etag);
        *r = (struct http_resp){ 0 };
}

struct buf {
        char *data;
        size_t len, cap;
        bool overflow;
};

static int buf_append(struct buf *b, const char *p, size_t n)
{
        if (b->len + n + 1 > BODY_MAX) {
                b->overflow = true;
                return -EFBIG;
        }
        if (b->len + n + 1 > b->cap) {
                size_t cap = MAX(b->cap * 2, b->len + n + 1);
                char *d = realloc(b->data, MAX(cap, 4096u));
                if (!d)
                        return -ENOMEM;
                b->data = d;
                b->cap = MAX(cap, 4096u);
        }
        memcpy(b->data + b->len, p, n);
        b->len += n;
        b->data[b->len] = 0;
        return 0;
}

static size_t on_body(char *p, size_t size, size_t nmemb, void *userdata)
{
        return buf_append(userdata, p, size * nmemb) < 0 ? 0 : size * nmemb;
}

static size_t on_header(char *p, size_t size, size_t nmemb, void *userdata)
{
        char **etag = userdata;
        size_t n = size * nmemb;

        if (n > 5 && strncasecmp(p, "ETag:", 5) == 0) {
                size_t i = 5, j = n;
                while (i < n && (p[i] == ' ' || p[i] == '\t'))
                        i++;
                while (j > i && (p[j - 1] == '\r' || p[j - 1] == '\n' || p[j - 1] == ' '))
                        j--;
                free(*etag);
                *etag = strndup(p + i, j - i);
        }
        return n;
}

static int on_progress(void *p, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
        return cli_interrupted ? 1 : 0;
}

/* A configured easy handle, or NULL. headers: owned by the caller afterwards. */
static CURL *easy_new(const struct cli *cli, const char *method, const char *url, const char *body,
                      const char *if_match, bool sse, uint64_t timeout_ms,
                      struct curl_slist **ret_headers, char *errbuf)
{
        struct curl_slist *h = NULL, *t;
        char line[4200];
        CURL *e = curl_easy_init();
        int n;

        if (!e)
                return NULL;
        curl_easy_setopt(e, CURLOPT_URL, url);
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf);
        curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(e, CURLOPT_USERAGENT, "luofleetctl/" LUOFLEET_VERSION);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                         (long)MIN((uint64_t)CONNECT_TIMEOUT_MS, cli->timeout_ms));
        if (!sse)
                curl_easy_setopt(e, CURLOPT_TIMEOUT_MS,
                                 (long)(timeout_ms ? timeout_ms : cli->timeout_ms));
        /* a silent peer (a stream, a long-poll) that vanished is noticed by TCP keepalive */
        curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
        curl_easy_setopt(e, CURLOPT_TCP_KEEPIDLE, 30L);
        curl_easy_setopt(e, CURLOPT_TCP_KEEPINTVL, 10L);
        curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, on_progress);
        if (cli->ca_bundle)
                curl_easy_setopt(e, CURLOPT_CAINFO, cli->ca_bundle);
        if (cli->cert) {
                curl_easy_setopt(e, CURLOPT_SSLCERT, cli->cert);
                curl_easy_setopt(e, CURLOPT_SSLKEY, cli->key);
        }
        if (strcmp(method, "GET") != 0)
                curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
        if (body) {
                curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
                curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
                t = curl_slist_append(h, "Content-Type: application/json");
                h = t ?: h;
        } else if (strcmp(method, "GET") != 0) {
                /* The agent wants the media type on every mutating request, also without a
                 * body (against cross-site requests from browsers: docs/security.md). */
                if (strcmp(method, "POST") == 0) {
                        curl_easy_setopt(e, CURLOPT_POSTFIELDS, "");
                        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, 0L);
                }
                t = curl_slist_append(h, "Content-Type: application/json");
                h = t ?: h;
        }
        t = curl_slist_append(h, sse ? "Accept: text/event-stream"
                                     : "Accept: application/json, application/problem+json");
        h = t ?: h;
        t = curl_slist_append(h, "Expect:");
        h = t ?: h;
        if (if_match) {
                n = snprintf(line, sizeof(line), "If-Match: %s", if_match);
                if (n > 0 && (size_t)n < sizeof(line) && (t = curl_slist_append(h, line)))
                        h = t;
        }
        /* The token never crosses a network in clear text, whoever chose the URL (a name
         * the controller resolved included): https, or http to a loopback literal. */
        if (cli->token && !url_may_carry_token(url))
                fprintf(stderr,
                        "luofleetctl: not sending the token to %s: plain http off "
                        "loopback (use https://)\n",
                        url);
        else if (cli->token) {
                n = snprintf(line, sizeof(line), "Authorization: Bearer %s", cli->token);
                if (n > 0 && (size_t)n < sizeof(line) && (t = curl_slist_append(h, line)))
                        h = t;
                explicit_bzero(line, sizeof(line));
        }
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
        *ret_headers = h;
        return e;
}

static void transport_error(CURLcode c, const char *errbuf, char *err, size_t err_size)
{
        if (c == CURLE_ABORTED_BY_CALLBACK && cli_interrupted)
                snprintf(err, err_size, "interrupted");
        else if (c == CURLE_OPERATION_TIMEDOUT)
                snprintf(err, err_size, "no answer in time (%s)",
                         *errbuf ? errbuf : curl_easy_strerror(c));
        else
                snprintf(err, err_size, "could not connect: %s",
                         *errbuf ? errbuf : curl_easy_strerror(c));
}

int http_request(const struct cli *cli, const char *method, const char *url, const char *body,
                 const char *if_match, uint64_t timeout_ms, struct http_resp *ret, char *err,
                 size_t err_size)
{
        char errbuf[CURL_ERROR_SIZE] = "";
        struct curl_slist *h = NULL;
        struct buf b = { 0 };
        char *etag = NULL;
        CURLcode c;
        CURL *e;

        *ret = (struct http_resp){ 0 };
        e = easy_new(cli, method, url, body, if_match, false, timeout_ms, &h, errbuf);
        if (!e) {
                snprintf(err, err_size, "out of memory");
                return -2;
        }
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, &b);
        curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(e, CURLOPT_HEADERDATA, &etag);
        c = curl_easy_perform(e);
        if (c == CURLE_OK) {
                curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &ret->status);
                ret->body = b.data ? b.data : strdup("");
                ret->len = b.len;
                ret->etag = etag;
        } else {
                if (b.overflow)
                        snprintf(err, err_size, "the answer is larger than %u bytes", BODY_MAX);
                else
                        transport_error(c, errbuf, err, err_size);
                free(b.data);
                free(etag);
        }
        curl_easy_cleanup(e);
        curl_slist_free_all(h);
        if (c == CURLE_OK && !ret->body) {
                free(etag);
                *ret = (struct http_resp){ 0 };
                snprintf(err, err_size, "out of memory");
                return -2;
        }
        return c == CURLE_OK ? 0 : (b.overflow ? -2 : -1);
}

/* ---- Server-Sent Events ----------------------------------------------------- */

struct sse {
        CURL *easy;
        long status;
        struct buf line, data, body;
        char *id, *type;
        sse_cb cb;
        void *userdata;
        int stop;
};

static int sse_dispatch(struct sse *s)
{
        struct sse_event ev = { s->id, s->type ? s->type : "message",
                                s->data.data ? s->data.data : "" };
        int r = 0;

        if (s->data.len > 0 || s->type)
                r = s->cb(&ev, s->userdata);
        free(s->type);
        s->type = NULL;
        s->data.len = 0;
        if (s->data.data)
                s->data.data[0] = 0;
        return r;
}

static int sse_line(struct sse *s, char *line)
{
        char *v = strchr(line, ':');
        size_t n = strlen(line);

        if (n > 0 && line[n - 1] == '\r')
                line[--n] = 0;
        if (n == 0)
                return sse_dispatch(s);
        if (line[0] == ':')
                return 0; /* comment, keep-alive */
        if (v) {
                *v++ = 0;
                if (*v == ' ')
                        v++;
        } else
                v = line + n;
        if (strcmp(line, "data") == 0) {
                if (s->data.len > 0 && buf_append(&s->data, "\n", 1) < 0)
                        return -1;
                if (buf_append(&s->data, v, strlen(v)) < 0)
                        return -1;
        } else if (strcmp(line, "event") == 0) {
                free(s->type);
                s->type = strdup(v);
        } else if (strcmp(line, "id") == 0) {
                free(s->id);
                s->id = strdup(v);
        }
        return 0;
}

static size_t on_sse(char *p, size_t size, size_t nmemb, void *userdata)
{
        struct sse *s = userdata;
        size_t n = size * nmemb;

        if (!s->status)
                curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &s->status);
        if (s->status != 200)
                return buf_append(&s->body, p, n) < 0 ? 0 : n;
        for (size_t i = 0; i < n; i++) {
                if (p[i] != '\n') {
                        if (s->line.len >= SSE_LINE_MAX || buf_append(&s->line, p + i, 1) < 0)
                                return 0;
                        continue;
                }
                if (!s->line.data && buf_append(&s->line, "", 0) < 0)
                        return 0;
                int r = sse_line(s, s->line.data);
                s->line.len = 0;
                s->line.data[0] = 0;
                if (r) {
                        s->stop = r;
                        return 0;
                }
        }
        return n;
}

int http_sse(const struct cli *cli, const char *url, const char *last_event_id, sse_cb cb,
             void *userdata, struct http_resp *resp, char *err, size_t err_size)
{
        char errbuf[CURL_ERROR_SIZE] = "", line[256];
        struct curl_slist *h = NULL, *t;
        struct sse s = { .cb = cb, .userdata = userdata };
        CURLcode c;
        int r;

        *resp = (struct http_resp){ 0 };
        s.easy = easy_new(cli, "GET", url, NULL, NULL, true, 0, &h, errbuf);
        if (!s.easy) {
                snprintf(err, err_size, "out of memory");
                return -1;
        }
        if (last_event_id) {
                r = snprintf(line, sizeof(line), "Last-Event-ID: %s", last_event_id);
                if (r > 0 && (size_t)r < sizeof(line) && (t = curl_slist_append(h, line))) {
                        h = t;
                        curl_easy_setopt(s.easy, CURLOPT_HTTPHEADER, h);
                }
        }
        curl_easy_setopt(s.easy, CURLOPT_WRITEFUNCTION, on_sse);
        curl_easy_setopt(s.easy, CURLOPT_WRITEDATA, &s);
        c = curl_easy_perform(s.easy);
        if (!s.status)
                curl_easy_getinfo(s.easy, CURLINFO_RESPONSE_CODE, &s.status);
        if (s.stop)
                r = s.stop;
        else if (cli_interrupted) {
                snprintf(err, err_size, "interrupted");
                r = -1;
        } else if (s.status && s.status != 200) {
                resp->status = s.status;
                resp->body = s.body.data ? TAKE_PTR(s.body.data) : strdup("");
                resp->len = s.body.len;
                r = resp->body ? -2 : -1;
        } else if (s.status == 200)
                r = 0; /* the server closed the stream (or it broke): the caller resumes */
        else {
                transport_error(c, errbuf, err, err_size);
                r = -1;
        }
        curl_easy_cleanup(s.easy);
        curl_slist_free_all(h);
        free(s.line.data);
        free(s.data.data);
        free(s.body.data);
        free(s.id);
        free(s.type);
        return r;
}

/* ---- problems, JSON, URLs ----------------------------------------------------- */

void http_report_problem(const char *who, const struct http_resp *r)
{
        json_t *p = r->body && *r->body ? json_loads(r->body, 0, NULL) : NULL;
        const char *code = json_str(p, "code"), *detail = json_str(p, "detail");

        if (!detail)
                detail = json_str(p, "title");
        if (code) {
                const json_t *acts = json_object_get(p, "allowed_actions"), *v;
                size_t i;
                fprintf(stderr, "luofleetctl: %s: %ld %s: %s", who, r->status, code,
                        detail ? detail : "(no detail)");
                /* the API's hint: what the host's state allows now */
                if (json_is_array(acts)) {
                        fputs(json_array_size(acts) ? " (allowed now:" : " (nothing is allowed now",
                              stderr);
                        json_array_foreach (acts, i, v)
                                if (json_is_string(v))
                                        fprintf(stderr, "%s %s", i ? "," : "",
                                                json_string_value(v));
                        fputc(')', stderr);
                }
                fputc('\n', stderr);
        } else
                fprintf(stderr, "luofleetctl: %s: HTTP %ld (not a problem document)\n", who,
                        r->status);
        json_decref(p);
}

json_t *http_json(const char *who, const struct http_resp *r)
{
        json_error_t e;
        json_t *j = json_loadb(r->body, r->len, JSON_REJECT_DUPLICATES, &e);

        if (!j)
                fprintf(stderr, "luofleetctl: %s: the answer is not JSON: %s\n", who, e.text);
        return j;
}

char *url_join(const char *base, const char *path)
{
        size_t n = strlen(base);
        char *s;

        while (n > 0 && base[n - 1] == '/')
                n--;
        if (asprintf(&s, "%.*s%s", (int)n, base, path) < 0)
                return NULL;
        return s;
}

char *url_escape(const char *s)
{
        char *e = curl_easy_escape(NULL, s, 0), *r;

        if (!e)
                return NULL;
        r = strdup(e);
        curl_free(e);
        return r;
}

/* ---- state watcher: one long-poll per host, on one multi handle ---------------- */

struct watch_host {
        CURL *easy;
        struct curl_slist *headers;
        struct buf body;
        char errbuf[CURL_ERROR_SIZE];
        int64_t index; /* -1: not seen yet */
        uint64_t retry_at_ms;
        bool failing;
};

static uint64_t mono_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int watch_start(const struct cli *cli, CURLM *m, struct watch_host *h, const char *base)
{
        char path[96];
        _cleanup_free_ char *url = NULL;

        if (h->index < 0)
                snprintf(path, sizeof(path), "/v1/state");
        else
                snprintf(path, sizeof(path), "/v1/state?index=%lld&wait=%us", (long long)h->index,
                         HTTP_WATCH_WAIT_S);
        url = url_join(base, path);
        if (!url)
                return -ENOMEM;
        h->body.len = 0;
        h->errbuf[0] = 0;
        h->easy = easy_new(cli, "GET", url, NULL, NULL, false,
                           HTTP_WATCH_WAIT_S * 1000ull + cli->timeout_ms, &h->headers, h->errbuf);
        if (!h->easy)
                return -ENOMEM;
        curl_easy_setopt(h->easy, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(h->easy, CURLOPT_WRITEDATA, &h->body);
        curl_easy_setopt(h->easy, CURLOPT_PRIVATE, h);
        if (curl_multi_add_handle(m, h->easy) != CURLM_OK)
                return -ENOMEM;
        return 0;
}

static void watch_end(CURLM *m, struct watch_host *h)
{
        if (!h->easy)
                return;
        curl_multi_remove_handle(m, h->easy);
        curl_easy_cleanup(h->easy);
        curl_slist_free_all(h->headers);
        h->easy = NULL;
        h->headers = NULL;
}

int http_watch_states(const struct cli *cli, size_t n, const char *const *urls, watch_doc_cb on_doc,
                      watch_err_cb on_err, void *userdata)
{
        struct watch_host *hs = calloc(n, sizeof(*hs));
        CURLM *m = curl_multi_init();
        int r = 0;

        if (!hs || !m) {
                free(hs);
                if (m)
                        curl_multi_cleanup(m);
                return -ENOMEM;
        }
        for (size_t i = 0; i < n; i++)
                hs[i].index = -1;
        while (!cli_interrupted) {
                uint64_t now = mono_ms();
                int running, left;
                CURLMsg *msg;

                for (size_t i = 0; i < n && r == 0; i++)
                        if (!hs[i].easy && now >= hs[i].retry_at_ms)
                                r = watch_start(cli, m, &hs[i], urls[i]);
                if (r < 0)
                        break;
                curl_multi_perform(m, &running);
                while ((msg = curl_multi_info_read(m, &left))) {
                        struct watch_host *h = NULL;
                        long status = 0;
                        char err[CURL_ERROR_SIZE + 64];
                        size_t i;

                        if (msg->msg != CURLMSG_DONE)
                                continue;
                        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&h);
                        i = (size_t)(h - hs);
                        curl_easy_getinfo(h->easy, CURLINFO_RESPONSE_CODE, &status);
                        if (msg->data.result != CURLE_OK) {
                                transport_error(msg->data.result, h->errbuf, err, sizeof(err));
                                if (!cli_interrupted && !h->failing)
                                        on_err(i, 0, err, userdata);
                                h->failing = true;
                                h->retry_at_ms = mono_ms() + 1000;
                        } else if (status != 200) {
                                struct http_resp resp = { .status = status,
                                                          .body = h->body.data,
                                                          .len = h->body.len };
                                if (!h->failing)
                                        on_err(i, status, resp.body ? resp.body : "", userdata);
                                h->failing = true;
                                h->retry_at_ms = mono_ms() + 1000;
                        } else {
                                json_t *doc = h->body.data ? json_loadb(h->body.data, h->body.len,
                                                                        0, NULL)
                                                           : NULL;
                                json_int_t idx = json_integer_value(json_object_get(doc, "index"));
                                h->failing = false;
                                if (doc && idx != h->index) {
                                        h->index = idx;
                                        on_doc(i, doc, userdata);
                                } else if (!doc)
                                        h->retry_at_ms = mono_ms() + 1000;
                                json_decref(doc);
                        }
                        watch_end(m, h);
                }
                curl_multi_poll(m, NULL, 0, 200, NULL);
        }
        for (size_t i = 0; i < n; i++) {
                watch_end(m, &hs[i]);
                free(hs[i].body.data);
        }
        curl_multi_cleanup(m);
        free(hs);
        return r;
}
