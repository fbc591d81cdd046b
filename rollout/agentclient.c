/*
 * agentclient.c: libcurl multi client for the agents' API (agentclient.h).
 * One multi handle; an easy handle per request, freed when it completes
 * (connections are kept alive in the multi handle's pool, so reuse does not
 * need the easy handle). Engine thread only, except ac_wakeup() and the
 * atomic counters.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "agentclient.h"
#include "luofleet/macro.h"
#include "luofleet/util.h"

#define AC_BODY_MAX (4u << 20) /* an agent's answer larger than this is refused */

struct ac_req {
        struct agentclient *ac;
        CURL *easy;
        struct curl_slist *headers;
        char *req_body;
        char *buf;
        size_t len, cap;
        bool too_large;
        enum ac_kind kind;
        struct ac_req *prev, *next; /* every live request, for ac_free() */
        ac_done_fn cb;
        void *userdata;
        char errbuf[CURL_ERROR_SIZE];
};

struct agentclient {
        CURLM *multi;
        struct ac_options o;
        char *auth_header; /* "Authorization: Bearer ..." or NULL */
        unsigned running;
        struct ac_req *live;
        _Atomic uint64_t requests[_AC_KIND_MAX], errors[_AC_KIND_MAX];
};

static const char *const kind_names[_AC_KIND_MAX] = {
        [AC_LONGPOLL] = "longpoll",
        [AC_ACTION] = "action",
        [AC_STATE] = "state",
        [AC_READYZ] = "readyz",
};

const char *ac_kind_to_string(enum ac_kind k)
{
        return k < _AC_KIND_MAX ? kind_names[k] : NULL;
}

static int read_token(const char *path, char **ret, char *err, size_t err_size)
{
        FILE *f = fopen(path, "re");
        char line[4096];

        if (!f) {
                int r = negative_errno();
                snprintf(err, err_size, "cannot read the agent token file %s: %s", path,
                         strerror(-r));
                return r;
        }
        if (!fgets(line, sizeof(line), f)) {
                fclose(f);
                snprintf(err, err_size, "the agent token file %s is empty", path);
                return -EINVAL;
        }
        fclose(f);
        line[strcspn(line, "\r\n")] = 0;
        size_t n = strlen("Authorization: Bearer ") + strlen(line) + 1;
        char *h = malloc(n);
        if (!h)
                return -ENOMEM;
        snprintf(h, n, "Authorization: Bearer %s", line);
        explicit_bzero(line, sizeof(line));
        *ret = h;
        return 0;
}

int ac_new(const struct ac_options *o, struct agentclient **ret, char *err, size_t err_size)
{
        struct agentclient *ac = calloc(1, sizeof(*ac));
        int r;

        if (!ac)
                return -ENOMEM;
        ac->o = *o;
        if (o->tls.token_file) {
                r = read_token(o->tls.token_file, &ac->auth_header, err, err_size);
                if (r < 0) {
                        free(ac);
                        return r;
                }
        }
        ac->multi = curl_multi_init();
        if (!ac->multi) {
                ac_free(ac);
                snprintf(err, err_size, "curl_multi_init failed");
                return -ENOMEM;
        }
        long maxc = o->max_connections ? (long)o->max_connections : 1024;
        curl_multi_setopt(ac->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, maxc);
        curl_multi_setopt(ac->multi, CURLMOPT_MAXCONNECTS, maxc);
        *ret = ac;
        return 0;
}

static void req_free(struct ac_req *q)
{
        if (!q)
                return;
        if (q->prev)
                q->prev->next = q->next;
        else if (q->ac->live == q)
                q->ac->live = q->next;
        if (q->next)
                q->next->prev = q->prev;
        if (q->easy) {
                curl_multi_remove_handle(q->ac->multi, q->easy);
                curl_easy_cleanup(q->easy);
        }
        curl_slist_free_all(q->headers);
        free(q->req_body);
        free(q->buf);
        free(q);
}

struct agentclient *ac_free(struct agentclient *ac)
{
        if (!ac)
                return NULL;
        if (ac->multi) {
                /* Abandon what still runs. */
                while (ac->live)
                        req_free(ac->live);
                curl_multi_cleanup(ac->multi);
        }
        if (ac->auth_header)
                explicit_bzero(ac->auth_header, strlen(ac->auth_header));
        free(ac->auth_header);
        free(ac);
        return NULL;
}

static size_t write_cb(char *data, size_t size, size_t nmemb, void *ud)
{
        struct ac_req *q = ud;
        size_t n = size * nmemb;

        if (q->len + n + 1 > AC_BODY_MAX) {
                q->too_large = true;
                return 0;
        }
        if (q->len + n + 1 > q->cap) {
                size_t cap = MAX(q->cap * 2, q->len + n + 1);
                cap = MAX(cap, (size_t)1024);
                char *b = realloc(q->buf, cap);
                if (!b)
                        return 0;
                q->buf = b;
                q->cap = cap;
        }
        memcpy(q->buf + q->len, data, n);
        q->len += n;
        q->buf[q->len] = 0;
        return n;
}

int ac_start(struct agentclient *ac, enum ac_kind kind, const char *method, const char *base_url,
             const char *path, const json_t *body, int64_t if_match, unsigned timeout_ms,
             ac_done_fn cb, void *userdata, struct ac_req **ret)
{
        struct ac_req *q = calloc(1, sizeof(*q));
        char url[2048], hdr[64];
        size_t blen = strlen(base_url);

        if (!q)
                return -ENOMEM;
        while (blen > 0 && base_url[blen - 1] == '/')
                blen--;
        int n = snprintf(url, sizeof(url), "%.*s%s", (int)blen, base_url, path);
        if (n < 0 || (size_t)n >= sizeof(url)) {
                free(q);
                return -ENAMETOOLONG;
        }
        q->ac = ac;
        q->kind = kind;
        q->cb = cb;
        q->userdata = userdata;
        q->easy = curl_easy_init();
        if (!q->easy)
                goto oom;
        CURL *e = q->easy;
        curl_easy_setopt(e, CURLOPT_URL, url);
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_PRIVATE, q);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, q);
        curl_easy_setopt(e, CURLOPT_ERRORBUFFER, q->errbuf);
        curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
        /* the agent's identity: its certificate must name the URL's host */
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                         (long)(ac->o.connect_timeout_ms ? ac->o.connect_timeout_ms : 3000));
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS,
                         (long)(timeout_ms                 ? timeout_ms
                                : ac->o.request_timeout_ms ? ac->o.request_timeout_ms
                                                           : 15000));
        curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
        curl_easy_setopt(e, CURLOPT_MAXCONNECTS,
                         (long)(ac->o.max_connections ? ac->o.max_connections : 1024));
        if (ac->o.tls.ca_bundle)
                curl_easy_setopt(e, CURLOPT_CAINFO, ac->o.tls.ca_bundle);
        if (ac->o.tls.client_cert)
                curl_easy_setopt(e, CURLOPT_SSLCERT, ac->o.tls.client_cert);
        if (ac->o.tls.client_key)
                curl_easy_setopt(e, CURLOPT_SSLKEY, ac->o.tls.client_key);
        /* The fleet-wide token only where it cannot be read on the way: https (the agent's
         * certificate verified for the URL's host), or http to a loopback literal. An
         * http:// agent elsewhere (--allow-http-agents) gets no token (and answers 401). */
        if (ac->auth_header && url_may_carry_token(url) &&
            !(q->headers = curl_slist_append(q->headers, ac->auth_header)))
                goto oom;
        if (if_match >= 0) {
                snprintf(hdr, sizeof(hdr), "If-Match: \"%lld\"", (long long)if_match);
                struct curl_slist *h = curl_slist_append(q->headers, hdr);
                if (!h)
                        goto oom;
                q->headers = h;
        }
        if (strcmp(method, "GET") != 0) {
                q->req_body = body ? json_dumps(body, JSON_COMPACT) : strdup("{}");
                if (!q->req_body)
                        goto oom;
                struct curl_slist *h =
                        curl_slist_append(q->headers, "Content-Type: application/json");
                if (!h)
                        goto oom;
                q->headers = h;
                curl_easy_setopt(e, CURLOPT_POSTFIELDS, q->req_body);
                curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
        }
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, q->headers);
        if (curl_multi_add_handle(ac->multi, e) != CURLM_OK)
                goto oom;
        ac->running++;
        q->next = ac->live;
        if (ac->live)
                ac->live->prev = q;
        ac->live = q;
        atomic_fetch_add(&ac->requests[kind], 1);
        if (ret)
                *ret = q;
        return 0;
oom:
        req_free(q);
        return -ENOMEM;
}

void ac_cancel(struct agentclient *ac, struct ac_req *req)
{
        if (!req)
                return;
        ac->running--;
        req_free(req);
}

int ac_poll(struct agentclient *ac, int timeout_ms)
{
        int still;

        if (curl_multi_poll(ac->multi, NULL, 0, timeout_ms, NULL) != CURLM_OK)
                return -EIO;
        if (curl_multi_perform(ac->multi, &still) != CURLM_OK)
                return -EIO;
        return 0;
}

void ac_dispatch(struct agentclient *ac)
{
        CURLMsg *m;
        int left;

        while ((m = curl_multi_info_read(ac->multi, &left))) {
                if (m->msg != CURLMSG_DONE)
                        continue;
                struct ac_req *q = NULL;
                struct ac_result res = { 0 };
                long code = 0;

                curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&q);
                if (!q)
                        continue;
                if (m->data.result == CURLE_OK) {
                        curl_easy_getinfo(q->easy, CURLINFO_RESPONSE_CODE, &code);
                        res.status = (int)code;
                        if (q->buf && q->len)
                                res.body = json_loadb(q->buf, q->len, 0, NULL);
                } else {
                        snprintf(res.error, sizeof(res.error), "%s",
                                 q->too_large   ? "answer too large"
                                 : q->errbuf[0] ? q->errbuf
                                                : curl_easy_strerror(m->data.result));
                }
                if (res.status == 0 || res.status >= 500)
                        atomic_fetch_add(&ac->errors[q->kind], 1);
                /* Detach first: the callback may start the next request. */
                curl_multi_remove_handle(ac->multi, q->easy);
                ac->running--;
                ac_done_fn cb = q->cb;
                void *ud = q->userdata;
                free(q->buf);
                q->buf = NULL;
                cb(ud, &res);
                json_decref(res.body);
                curl_easy_cleanup(q->easy);
                q->easy = NULL;
                req_free(q);
        }
}

void ac_wakeup(struct agentclient *ac)
{
        curl_multi_wakeup(ac->multi);
}

unsigned ac_running(struct agentclient *ac)
{
        return ac->running;
}

uint64_t ac_requests(struct agentclient *ac, enum ac_kind k)
{
        return atomic_load(&ac->requests[k]);
}

uint64_t ac_errors(struct agentclient *ac, enum ac_kind k)
{
        return atomic_load(&ac->errors[k]);
}
