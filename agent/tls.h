/*
 * tls.h: the agent's HTTPS credentials for libmicrohttpd (GnuTLS underneath).
 *
 * The certificate chain and key are handed to GnuTLS through a certificate
 * callback rather than fixed at daemon start, so SIGHUP can load new ones:
 * handshakes after the reload present the new certificate, connections
 * already open keep theirs. Each loaded generation stays in memory until
 * tls_done() (GnuTLS may use it for the life of a session); a reload adds a
 * few KiB.
 *
 * Client certificates (--tls-client-ca) are requested in the handshake and
 * verified here, per connection, against the CA bundle of the current
 * generation (also reloaded on SIGHUP): chain, validity dates, and the TLS
 * client-authentication key purpose.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

struct agent_config;

/* The priority string: TLS 1.3 and 1.2 only, AEAD ciphers, ECDHE. */
#define TLS_PRIORITIES                                                                             \
        "SECURE128:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2:-CIPHER-ALL:+AES-256-GCM:+AES-128-GCM:"     \
        "+CHACHA20-POLY1305:-MAC-ALL:+AEAD:-KX-ALL:+ECDHE-ECDSA:+ECDHE-RSA:%SERVER_PRECEDENCE"

/* Load the first generation. Returns 0 or -errno with a sentence in err. */
int tls_setup(const struct agent_config *cfg, char *err, size_t err_size);
/* SIGHUP: load a new generation; on error the current one stays. */
int tls_reload(char *err, size_t err_size);
void tls_done(void);
bool tls_enabled(void);

/* For MHD_OPTION_HTTPS_CERT_CALLBACK (a gnutls_certificate_retrieve_function2). */
void *tls_cert_callback(void);
/* PEM of the client CA bundle as loaded at start (MHD_OPTION_HTTPS_MEM_TRUST), or NULL. */
const char *tls_client_ca_pem(void);

/*
 * Append the options of an HTTPS daemon to opts: the certificate callback,
 * TLS_PRIORITIES and, with a client CA bundle, the trust list that makes MHD
 * request client certificates (verified here). At most TLS_MHD_OPTIONS
 * items; returns how many. Shared by the agent's and the controller's daemons.
 */
#define TLS_MHD_OPTIONS 3
struct MHD_OptionItem;
unsigned tls_mhd_options(struct MHD_OptionItem *opts);

/* The current credentials generation (changes at each reload): a cache key. */
const void *tls_generation(void);

/* luofleet_tls_client_verifications_total, Prometheus text format. */
struct strbuf;
void tls_render_metrics(struct strbuf *sb);

/* SHA-256 fingerprint (hex) of the current leaf certificate, for logs and tests. */
void tls_current_fingerprint(char buf[static 65]);

/*
 * The client certificate of a TLS session (a gnutls_session_t): 1 verified,
 * with its identity (the subject's CN, else its first DNS/email/URI SAN,
 * printable ASCII) in name; 0 none presented; -1 presented but not valid.
 */
int tls_peer_identity(void *session, char *name, size_t size);
