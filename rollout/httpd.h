/*
 * httpd.h: luofleet-rollout's HTTP(S) server on libmicrohttpd: listeners,
 * TLS and bearer tokens (the agent's tls.c and auth.c), request bodies,
 * and the bridge from MHD to api.c. Main thread: setup, bind, start, reload,
 * stop; MHD's threads: everything else.
 */
#pragma once

#include <stdint.h>

#include "../agent/config.h" /* struct listen_addr */

struct api;
struct httpd;

struct httpd_options {
        const struct listen_addr *listen;
        unsigned n_listen;
        const char *tls_cert, *tls_key, *tls_client_ca; /* NULL: plain HTTP */
        const char *tokens_file;                        /* NULL: no tokens */
        bool insecure;                                  /* only for the warning */
        unsigned max_connections;                       /* per listener */
        uint64_t idle_timeout_ms;
};

/*
 * Load the TLS credentials and tokens, bind every listener. Returns 0, or
 * -EINVAL for a credentials problem (a configuration error: exit 2), or
 * another -errno (a socket that cannot be bound: exit 1); logged here.
 */
int httpd_new(const struct httpd_options *o, struct httpd **ret);
/* Serve api on the bound sockets; prints "luofleet-rollout: listening on URL" lines. */
int httpd_start(struct httpd *h, struct api *api);
/* SIGHUP: reread the TLS certificate and key and the tokens file (the old stay on error). */
int httpd_reload(struct httpd *h);
/* Stop serving: streams end, connections close, threads are joined. NULL-safe. */
struct httpd *httpd_free(struct httpd *h);
