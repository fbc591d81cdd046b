/*
 * download.c: one file from a URL with libcurl's easy API, on the worker
 * thread (the operation is the only one running: the agent runs one at a
 * time, so a blocking transfer holds up nothing else; the MHD threads keep
 * answering reads and long-polls meanwhile).
 *
 * What the transfer may do is fixed here, not left to libcurl's defaults or
 * the environment: protocol https (http only with --allow-http), the same
 * for redirects (at most 5), certificate and host name
 * verification always on (--ca-bundle or the system store), no proxy (the
 * environment's http_proxy/https_proxy are ignored: an agent's downloads go
 * where the URL says), a size cap checked against the announced length and
 * against the bytes received, a connect timeout, a total timeout per attempt
 * and a low-speed limit that catches a stalled server well before it.
 *
 * file:/// URLs never reach libcurl: the path (download_file_url_path())
 * is opened the way a staged path is (stagepath_open() in the staging
 * directories: no symlink swapped in on the way, no hard link of somebody
 * else's file) and copied here. Otherwise an operator could have the
 * network process read any file its user can, and the digest-mismatch
 * answer (and its replay) would hand out that file's size and SHA-256.
 *
 * Bytes are hashed as they are written; a mismatch fails the download.
 * A stopping agent abandons the transfer (503 shutting-down; the progress
 * callback says so). Transient failures (connection refused or reset, timeouts, truncated
 * bodies, HTTP 408/429/5xx) are retried with exponential backoff (250 ms
 * doubling, at most 8 s) plus up to 50 % random jitter; the file is
 * truncated before each attempt. Everything else fails at once.
 *
 * Owns nothing beyond a call; libcurl's global init once (pthread_once).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "download.h"
#include "luofleet/macro.h"
#include "luofleet/stagepath.h"
#include "luofleet/util.h"

#define DOWNLOAD_MAX_REDIRS 5
#define BACKOFF_FIRST_MS 250
#define BACKOFF_MAX_MS 8000
#define FILE_PROGRESS_BYTES (1024 * 1024) /* a file:// copy reports progress this often */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_result = CURLE_FAILED_INIT;

static void curl_init(void)
{
        curl_init_result = curl_global_init(CURL_GLOBAL_DEFAULT);
}

bool download_url_allowed(const char *url, bool allow_http)
{
        if (!url)
                return false;
        if (strncasecmp(url, "https://", 8) == 0 && url[8])
                return true;
        if (strncasecmp(url, "file:///", 8) == 0 && url[8])
                return true;
        return allow_http && strncasecmp(url, "http://", 7) == 0 && url[7];
}

static int hex_value(char c)
{
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

int download_file_url_path(const char *url, char *path, size_t size)
{
        size_t n = 0;

        if (!url || !path || size == 0 || strncasecmp(url, "file:///", 8) != 0)
                return -EINVAL;
        for (const char *p = url + 7; *p; p++) {
                unsigned char c = (unsigned char)*p;
                if (c == '?' || c == '#')
                        return -EINVAL;
                if (c == '%') {
                        int hi = hex_value(p[1]), lo = hi >= 0 ? hex_value(p[2]) : -1;
                        if (lo < 0 || (hi == 0 && lo == 0))
                                return -EINVAL;
                        c = (unsigned char)(hi * 16 + lo);
                        p += 2;
                }
                if (n + 1 >= size)
                        return -ENAMETOOLONG;
                path[n++] = (char)c;
        }
        path[n] = 0;
        return stagepath_valid(path) ? 0 : -EINVAL;
}

struct xfer {
        int fd;
        EVP_MD_CTX *md;
        uint64_t size, max;
        bool too_large;
        bool cancelled;
        int write_err;
        download_progress_fn progress;
        void *userdata;
};

static size_t on_data(char *ptr, size_t sz, size_t n, void *userdata)
{
        struct xfer *x = userdata;
        size_t len = sz * n, off = 0;

        if (x->size + len > x->max) {
                x->too_large = true;
                return 0; /* CURLE_WRITE_ERROR ends the transfer */
        }
        if (EVP_DigestUpdate(x->md, ptr, len) != 1) {
                x->write_err = EIO;
                return 0;
        }
        while (off < len) {
                ssize_t w = write(x->fd, ptr + off, len - off);
                if (w < 0) {
                        if (errno == EINTR)
                                continue;
                        x->write_err = errno;
                        return 0;
                }
                off += (size_t)w;
        }
        x->size += len;
        return len;
}

static int on_progress(void *userdata, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
        struct xfer *x = userdata;

        if (dltotal > 0 && (uint64_t)dltotal > x->max) {
                x->too_large = true;
                return 1; /* abort */
        }
        if (x->progress && !x->progress(x->userdata, dlnow > 0 ? (uint64_t)dlnow : 0,
                                        dltotal > 0 ? (uint64_t)dltotal : 0)) {
                x->cancelled = true;
                return 1; /* abort: the agent is stopping */
        }
        return 0;
}

static bool transient(CURLcode c, long http_status)
{
        switch (c) {
        case CURLE_COULDNT_RESOLVE_HOST:
        case CURLE_COULDNT_CONNECT:
        case CURLE_OPERATION_TIMEDOUT:
        case CURLE_PARTIAL_FILE:
        case CURLE_RECV_ERROR:
        case CURLE_SEND_ERROR:
        case CURLE_GOT_NOTHING:
        case CURLE_HTTP2:
        case CURLE_HTTP2_STREAM:
                return true;
        case CURLE_HTTP_RETURNED_ERROR:
                return http_status == 408 || http_status == 429 || http_status >= 500;
        default:
                return false;
        }
}

static void sleep_backoff(unsigned attempt)
{
        uint64_t ms = BACKOFF_FIRST_MS;
        uint32_t rnd = 0;
        struct timespec ts;

        for (unsigned i = 1; i < attempt && ms < BACKOFF_MAX_MS; i++)
                ms *= 2;
        if (ms > BACKOFF_MAX_MS)
                ms = BACKOFF_MAX_MS;
        if (RAND_bytes((unsigned char *)&rnd, sizeof(rnd)) == 1)
                ms += rnd % (ms / 2 + 1);
        ts = (struct timespec){ .tv_sec = (time_t)(ms / 1000),
                                .tv_nsec = (long)(ms % 1000) * 1000000 };
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

static int setup(CURL *c, const struct download_opts *o, const char *url, struct xfer *x,
                 char *errbuf)
{
        const char *protos = o->allow_http ? "https,http" : "https"; /* file: file_download() */
        const char *redir = o->allow_http ? "https,http" : "https";
        long low_speed_time;

        /* A stall is a second without a byte for this long: at most 30 s, within the total. */
        low_speed_time = (long)(o->timeout_ms / 1000);
        if (low_speed_time > 30)
                low_speed_time = 30;
        if (low_speed_time < 1)
                low_speed_time = 1;
        if (curl_easy_setopt(c, CURLOPT_URL, url) != CURLE_OK ||
            curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, protos) != CURLE_OK ||
            curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, redir) != CURLE_OK ||
            curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L) != CURLE_OK ||
            curl_easy_setopt(c, CURLOPT_MAXREDIRS, (long)DOWNLOAD_MAX_REDIRS) != CURLE_OK ||
            curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L) != CURLE_OK ||
            curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L) != CURLE_OK ||
            (o->ca_bundle && curl_easy_setopt(c, CURLOPT_CAINFO, o->ca_bundle) != CURLE_OK) ||
            curl_easy_setopt(c, CURLOPT_PROXY, "") != CURLE_OK ||
            curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L) != CURLE_OK ||
            curl_easy_setopt(c, CURLOPT_FAILONERROR, 1L) != CURLE_OK ||
            curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)o->max_bytes) != CURLE_OK ||
            curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)o->connect_ms) != CURLE_OK ||
            curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)o->timeout_ms) != CURLE_OK ||
            curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L) != CURLE_OK ||
            curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, low_speed_time) != CURLE_OK ||
            curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data) != CURLE_OK ||
            curl_easy_setopt(c, CURLOPT_WRITEDATA, x) != CURLE_OK ||
            curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress) != CURLE_OK ||
            curl_easy_setopt(c, CURLOPT_XFERINFODATA, x) != CURLE_OK ||
            curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L) != CURLE_OK ||
            curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf) != CURLE_OK ||
            curl_easy_setopt(c, CURLOPT_USERAGENT, "luofleet-agent/" LUOFLEET_VERSION) != CURLE_OK)
                return -EINVAL;
        return 0;
}

static void failf(struct download_error *err, int status, const char *code, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));
static void failf(struct download_error *err, int status, const char *code, const char *fmt, ...)
{
        va_list ap;

        err->status = status;
        err->code = code;
        va_start(ap, fmt);
        vsnprintf(err->detail, sizeof(err->detail), fmt, ap);
        va_end(ap);
}

/* The file a file:/// URL names, opened as a staged path is; -EPROTO with err filled. */
static int file_open(const struct download_opts *o, const char *url, struct download_error *err)
{
        char path[4096];
        struct stat before, st;
        int fd;

        if (download_file_url_path(url, path, sizeof(path)) < 0) {
                failf(err, 422, "path-not-allowed",
                      "%s does not name an absolute path without '.', '..' or empty components",
                      url);
                return -EPROTO;
        }
        if (o->file_dirs)
                fd = stagepath_open(path, o->file_dirs, o->n_file_dirs);
        else if (stat(path, &before) < 0)
                fd = negative_errno();
        else if (!S_ISREG(before.st_mode))
                fd = -STAGEPATH_NOT_REGULAR; /* a FIFO would block, some devices act */
        else {
                fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
                if (fd < 0)
                        fd = negative_errno();
                else if (fstat(fd, &st) < 0 || st.st_ino != before.st_ino ||
                         st.st_dev != before.st_dev) {
                        close(fd);
                        fd = -STAGEPATH_NOT_REGULAR;
                }
        }
        if (fd >= 0)
                return fd;
        if (fd == -STAGEPATH_NOT_ALLOWED)
                failf(err, 422, "path-not-allowed",
                      "%s is not inside an allowed staging directory "
                      "(symbolic links are not followed)",
                      path);
        else if (fd == -STAGEPATH_NOT_REGULAR)
                failf(err, 422, "not-a-regular-file", "%s is not a regular file", path);
        else {
                char eb[16];
                snprintf(err->curl_error, sizeof(err->curl_error), "cannot open %.200s: %s", path,
                         errno_name(fd, eb));
                failf(err, 502, "download-failed", "%s (after 1 attempt)", err->curl_error);
        }
        return -EPROTO;
}

/* A file:/// URL: the file copied into fd, hashed, capped and reported like a transfer. */
static int file_download(const struct download_opts *o, const char *url, int fd,
                         const char *want_sha256, download_progress_fn progress, void *userdata,
                         struct download_error *err, uint64_t *ret_size)
{
        _cleanup_close_ int src = -1;
        uint8_t buf[65536], md[32];
        uint64_t total = 0, size = 0, reported = 0;
        unsigned md_len = 0;
        EVP_MD_CTX *ctx = NULL;
        struct stat st;
        char got[65];
        int r = 0;

        err->attempts = 1;
        src = file_open(o, url, err);
        if (src < 0)
                return src;
        if (fstat(src, &st) == 0 && st.st_size > 0)
                size = (uint64_t)st.st_size;
        if (size > o->max_bytes) {
                failf(err, 422, "download-too-large",
                      "the file is larger than the limit of %llu bytes",
                      (unsigned long long)o->max_bytes);
                return -EPROTO;
        }
        if (ftruncate(fd, 0) < 0 || lseek(fd, 0, SEEK_SET) < 0)
                return negative_errno();
        ctx = EVP_MD_CTX_new();
        if (!ctx)
                return -ENOMEM;
        if (EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
                r = -EIO;
                goto out;
        }
        for (;;) {
                if (progress && (total == 0 || total - reported >= FILE_PROGRESS_BYTES)) {
                        reported = total;
                        if (!progress(userdata, total, size)) {
                                failf(err, 503, "shutting-down",
                                      "the agent is shutting down: download abandoned");
                                r = -EPROTO;
                                goto out;
                        }
                }
                ssize_t n = read(src, buf, sizeof(buf));
                if (n < 0) {
                        char eb[16];
                        if (errno == EINTR)
                                continue;
                        snprintf(err->curl_error, sizeof(err->curl_error), "cannot read %.200s: %s",
                                 url, errno_name(negative_errno(), eb));
                        failf(err, 502, "download-failed", "%s (after 1 attempt)", err->curl_error);
                        r = -EPROTO;
                        goto out;
                }
                if (n == 0)
                        break;
                if (total + (uint64_t)n > o->max_bytes) {
                        failf(err, 422, "download-too-large",
                              "the file is larger than the limit of %llu bytes",
                              (unsigned long long)o->max_bytes);
                        r = -EPROTO;
                        goto out;
                }
                if (EVP_DigestUpdate(ctx, buf, (size_t)n) != 1) {
                        r = -EIO;
                        goto out;
                }
                r = write_all(fd, buf, (size_t)n);
                if (r < 0)
                        goto out;
                total += (uint64_t)n;
        }
        if (EVP_DigestFinal_ex(ctx, md, &md_len) != 1 || md_len != 32) {
                r = -EIO;
                goto out;
        }
        hex_encode(md, 32, got);
        if (strcasecmp(got, want_sha256) != 0) {
                memcpy(err->actual_sha256, got, sizeof(got));
                failf(err, 422, "digest-mismatch",
                      "the SHA-256 of the %llu bytes downloaded does not match",
                      (unsigned long long)total);
                r = -EPROTO;
                goto out;
        }
        if (fsync(fd) < 0) {
                r = negative_errno();
                goto out;
        }
        *ret_size = total;
out:
        EVP_MD_CTX_free(ctx);
        return r;
}

int download_to_fd(const struct download_opts *o, const char *url, int fd, const char *want_sha256,
                   download_progress_fn progress, void *userdata, struct download_error *err,
                   uint64_t *ret_size)
{
        char errbuf[CURL_ERROR_SIZE], got[65];
        uint8_t md[32];
        unsigned md_len = 0;
        struct xfer x = {
                .fd = fd, .max = o->max_bytes, .progress = progress, .userdata = userdata
        };
        CURL *c = NULL;
        CURLcode cc = CURLE_OK;
        int r = 0;

        *err = (struct download_error){ 0 };
        pthread_once(&curl_once, curl_init);
        if (curl_init_result != CURLE_OK)
                return -ENOMEM;
        if (!download_url_allowed(url, o->allow_http)) {
                failf(err, 400, "url-not-allowed", "the URL's scheme is not allowed");
                return -EPROTO;
        }
        if (strncasecmp(url, "file:", 5) == 0)
                return file_download(o, url, fd, want_sha256, progress, userdata, err, ret_size);
        x.md = EVP_MD_CTX_new();
        c = curl_easy_init();
        if (!x.md || !c) {
                r = -ENOMEM;
                goto out;
        }
        for (unsigned attempt = 0;; attempt++) {
                long http_status = 0;

                if (attempt > 0) {
                        if (progress && !progress(userdata, 0, 0)) {
                                failf(err, 503, "shutting-down",
                                      "the agent is shutting down: download abandoned");
                                r = -EPROTO;
                                goto out;
                        }
                        sleep_backoff(attempt);
                        curl_easy_reset(c);
                }
                err->attempts = attempt + 1;
                x.size = 0;
                x.too_large = false;
                x.cancelled = false;
                x.write_err = 0;
                if (ftruncate(fd, 0) < 0 || lseek(fd, 0, SEEK_SET) < 0) {
                        r = negative_errno();
                        goto out;
                }
                if (EVP_DigestInit_ex(x.md, EVP_sha256(), NULL) != 1) {
                        r = -EIO;
                        goto out;
                }
                errbuf[0] = 0;
                if (setup(c, o, url, &x, errbuf) < 0) {
                        r = -EINVAL;
                        goto out;
                }
                cc = curl_easy_perform(c);
                (void)curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &http_status);
                err->http_status = http_status;
                if (cc == CURLE_OK)
                        break;
                snprintf(err->curl_error, sizeof(err->curl_error), "%s",
                         errbuf[0] ? errbuf : curl_easy_strerror(cc));
                if (x.write_err) {
                        r = -x.write_err;
                        goto out;
                }
                if (x.cancelled) {
                        failf(err, 503, "shutting-down",
                              "the agent is shutting down: download abandoned");
                        r = -EPROTO;
                        goto out;
                }
                if (x.too_large || cc == CURLE_FILESIZE_EXCEEDED) {
                        failf(err, 422, "download-too-large",
                              "the file is larger than the limit of %llu bytes",
                              (unsigned long long)o->max_bytes);
                        r = -EPROTO;
                        goto out;
                }
                if (!transient(cc, http_status) || attempt >= o->retries) {
                        if (cc == CURLE_HTTP_RETURNED_ERROR)
                                failf(err, 502, "download-failed",
                                      "the server answered HTTP %ld (after %u attempt%s)",
                                      http_status, attempt + 1, attempt ? "s" : "");
                        else
                                failf(err, 502, "download-failed", "%s (after %u attempt%s)",
                                      err->curl_error, attempt + 1, attempt ? "s" : "");
                        r = -EPROTO;
                        goto out;
                }
        }
        if (EVP_DigestFinal_ex(x.md, md, &md_len) != 1 || md_len != 32) {
                r = -EIO;
                goto out;
        }
        hex_encode(md, 32, got);
        if (strcasecmp(got, want_sha256) != 0) {
                memcpy(err->actual_sha256, got, sizeof(got));
                failf(err, 422, "digest-mismatch",
                      "the SHA-256 of the %llu bytes downloaded does not match",
                      (unsigned long long)x.size);
                r = -EPROTO;
                goto out;
        }
        if (fsync(fd) < 0) {
                r = negative_errno();
                goto out;
        }
        *ret_size = x.size;
out:
        curl_easy_cleanup(c);
        EVP_MD_CTX_free(x.md);
        return r;
}
