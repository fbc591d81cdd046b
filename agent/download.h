/*
 * download.h: fetch one kernel image (or initrd) from a URL into an open
 * file, hashing while it streams (download.c). Worker thread.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct download_opts {
        const char *ca_bundle; /* PEM bundle for https; NULL = the system's */
        bool allow_http;       /* plain http:// allowed */
        uint64_t max_bytes;    /* per file */
        uint64_t connect_ms;
        uint64_t timeout_ms; /* whole transfer, per attempt */
        unsigned retries;    /* attempts after the first */
        /*
         * The directories a file:/// URL may name (stagepath.h's rules; the
         * file is opened with stagepath_open(), never by libcurl). NULL: the
         * caller confined the path already (h_actions.c does, with the
         * agent's --staging-dir) and the file is opened by name here.
         */
        char *const *file_dirs;
        unsigned n_file_dirs;
};

/*
 * Bytes received so far and the announced size (0 = unknown); called often
 * (at least once a second, also while stalled, and before each retry with
 * 0, 0). Returning false abandons the download (the agent is stopping).
 */
typedef bool (*download_progress_fn)(void *userdata, uint64_t done, uint64_t total);

struct download_error {
        int status;       /* HTTP status for the problem */
        const char *code; /* download-failed, download-too-large, digest-mismatch, shutting-down;
                             file:// also path-not-allowed, not-a-regular-file */
        char detail[384];
        long http_status;       /* the server's last status, 0 = none */
        char curl_error[256];   /* libcurl's message, "" = none */
        char actual_sha256[65]; /* digest-mismatch */
        unsigned attempts;
};

/* https and file always; http only when allowed. Case-insensitive scheme. */
bool download_url_allowed(const char *url, bool allow_http);

/*
 * The path a file:/// URL names: what follows "file://", percent-decoded
 * (no %00, no '?' or '#': a query or fragment would make the name
 * ambiguous), then stagepath_valid() (absolute, no '.', '..' or empty
 * components, no control characters). 0, -EINVAL or -ENAMETOOLONG.
 */
int download_file_url_path(const char *url, char *path, size_t size);

/*
 * Download url into fd (truncated first, and again before each retry),
 * comparing the SHA-256 of the bytes with want_sha256 (64 hex digits) and
 * fsyncing the file. 0 success (*ret_size), -EPROTO with err filled when
 * the download failed, other -errno on an internal failure.
 */
int download_to_fd(const struct download_opts *o, const char *url, int fd, const char *want_sha256,
                   download_progress_fn progress, void *userdata, struct download_error *err,
                   uint64_t *ret_size);
