/*
 * tls.c: certificate generations for libmicrohttpd's HTTPS, reloadable on
 * SIGHUP, and client-certificate verification (see tls.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <gnutls/abstract.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "luofleet/log.h"
#include "luofleet/macro.h"
#include "luofleet/util.h"
#include "metrics.h"
#include "secfile.h"
#include "tls.h"

#define TLS_FILE_MAX (1024 * 1024)
#define TLS_CHAIN_MAX 16

struct tls_gen {
        struct tls_gen *older;
        gnutls_pcert_st pcert[TLS_CHAIN_MAX];
        unsigned n_pcert;
        gnutls_privkey_t key;
        gnutls_x509_trust_list_t trust; /* client CAs, NULL = none */
        char fingerprint[65];
};

static struct {
        pthread_mutex_t lock; /* reload vs. reload; readers use the atomic pointer */
        _Atomic(struct tls_gen *) current;
        char *cert_path, *key_path, *ca_path;
        char *ca_pem; /* as loaded at start, for MHD_OPTION_HTTPS_MEM_TRUST */
} tls = { .lock = PTHREAD_MUTEX_INITIALIZER };

static int read_file(const char *what, const char *path, bool secret, gnutls_datum_t *ret,
                     char *err, size_t err_size)
{
        _cleanup_close_ int fd = -1;
        struct stat st;
        size_t len = 0;
        char *buf;
        int r;

        fd = secfile_open(path);
        if (fd < 0)
                errno = -fd;
        if (fd < 0 || fstat(fd, &st) < 0) {
                r = -errno;
                snprintf(err, err_size, "%s %s: %s", what, path, strerror(-r));
                return r;
        }
        if (!S_ISREG(st.st_mode) || st.st_size > TLS_FILE_MAX) {
                snprintf(err, err_size, "%s %s: not a regular file of at most %d bytes", what, path,
                         TLS_FILE_MAX);
                return -EINVAL;
        }
        if (secret && (st.st_mode & (S_IROTH | S_IWOTH))) {
                snprintf(err, err_size,
                         "%s %s has mode %04o: a private key must not be accessible to others "
                         "(chmod 600 or 640)",
                         what, path, (unsigned)(st.st_mode & 07777));
                return -EPERM;
        }
        buf = gnutls_malloc((size_t)st.st_size + 1);
        if (!buf)
                return -ENOMEM;
        ssize_t n = read_full(fd, buf, (size_t)st.st_size);
        if (n < 0) {
                gnutls_free(buf);
                snprintf(err, err_size, "%s %s: %s", what, path, strerror((int)-n));
                return (int)n;
        }
        len = (size_t)n;
        buf[len] = 0;
        ret->data = (unsigned char *)buf;
        ret->size = (unsigned)len;
        return 0;
}

static void datum_free(gnutls_datum_t *d, bool secret)
{
        if (d->data && secret)
                gnutls_memset(d->data, 0, d->size);
        gnutls_free(d->data);
        d->data = NULL;
        d->size = 0;
}

static void gen_free(struct tls_gen *g)
{
        if (!g)
                return;
        for (unsigned i = 0; i < g->n_pcert; i++)
                gnutls_pcert_deinit(&g->pcert[i]);
        if (g->key)
                gnutls_privkey_deinit(g->key);
        if (g->trust)
                gnutls_x509_trust_list_deinit(g->trust, 1);
        free(g);
}

static bool same_public_key(gnutls_pubkey_t a, gnutls_privkey_t key)
{
        gnutls_pubkey_t b = NULL;
        gnutls_datum_t da = { 0 }, db = { 0 };
        bool same = false;

        if (gnutls_pubkey_init(&b) == 0 && gnutls_pubkey_import_privkey(b, key, 0, 0) == 0 &&
            gnutls_pubkey_export2(a, GNUTLS_X509_FMT_DER, &da) == 0 &&
            gnutls_pubkey_export2(b, GNUTLS_X509_FMT_DER, &db) == 0)
                same = da.size == db.size && memcmp(da.data, db.data, da.size) == 0;
        gnutls_free(da.data);
        gnutls_free(db.data);
        if (b)
                gnutls_pubkey_deinit(b);
        return same;
}

static int gen_load(struct tls_gen **ret, char **ret_ca_pem, char *err, size_t err_size)
{
        gnutls_datum_t cert = { 0 }, key = { 0 }, ca = { 0 };
        struct tls_gen *g = calloc(1, sizeof(*g));
        uint8_t md[32];
        size_t md_len = sizeof(md);
        int r;

        if (!g)
                return -ENOMEM;
        r = read_file("certificate", tls.cert_path, false, &cert, err, err_size);
        if (r >= 0)
                r = read_file("key", tls.key_path, true, &key, err, err_size);
        if (r >= 0 && tls.ca_path)
                r = read_file("client CA bundle", tls.ca_path, false, &ca, err, err_size);
        if (r < 0)
                goto out;

        g->n_pcert = TLS_CHAIN_MAX;
        r = gnutls_pcert_list_import_x509_raw(g->pcert, &g->n_pcert, &cert, GNUTLS_X509_FMT_PEM,
                                              GNUTLS_X509_CRT_LIST_FAIL_IF_UNSORTED);
        if (r < 0 || g->n_pcert == 0) {
                g->n_pcert = 0;
                snprintf(err, err_size, "certificate %s: %s", tls.cert_path,
                         r < 0 ? gnutls_strerror(r) : "no certificate in the file");
                r = -EINVAL;
                goto out;
        }
        r = gnutls_privkey_init(&g->key);
        if (r >= 0)
                r = gnutls_privkey_import_x509_raw(g->key, &key, GNUTLS_X509_FMT_PEM, NULL, 0);
        if (r < 0) {
                snprintf(err, err_size, "key %s: %s", tls.key_path, gnutls_strerror(r));
                r = -EINVAL;
                goto out;
        }
        if (!same_public_key(g->pcert[0].pubkey, g->key)) {
                snprintf(err, err_size, "key %s does not belong to the certificate %s",
                         tls.key_path, tls.cert_path);
                r = -EINVAL;
                goto out;
        }
        if (tls.ca_path) {
                r = gnutls_x509_trust_list_init(&g->trust, 0);
                if (r >= 0)
                        r = gnutls_x509_trust_list_add_trust_mem(g->trust, &ca, NULL,
                                                                 GNUTLS_X509_FMT_PEM, 0, 0);
                if (r <= 0) {
                        snprintf(err, err_size, "client CA bundle %s: %s", tls.ca_path,
                                 r < 0 ? gnutls_strerror(r) : "no certificate in the file");
                        r = -EINVAL;
                        goto out;
                }
        }
        if (gnutls_fingerprint(GNUTLS_DIG_SHA256, &g->pcert[0].cert, md, &md_len) < 0 ||
            md_len != 32) {
                snprintf(err, err_size, "certificate %s: cannot compute its fingerprint",
                         tls.cert_path);
                r = -EINVAL;
                goto out;
        }
        hex_encode(md, 32, g->fingerprint);
        if (ret_ca_pem && ca.data) {
                *ret_ca_pem = strdup((const char *)ca.data);
                if (!*ret_ca_pem) {
                        r = -ENOMEM;
                        goto out;
                }
        }
        *ret = TAKE_PTR(g);
        r = 0;
out:
        datum_free(&cert, false);
        datum_free(&key, true);
        datum_free(&ca, false);
        gen_free(g);
        return r;
}

static int cert_callback(gnutls_session_t session, const gnutls_datum_t *req_ca_rdn, int nreqs,
                         const gnutls_pk_algorithm_t *pk_algos, int pk_algos_length,
                         gnutls_pcert_st **pcert, unsigned int *pcert_length,
                         gnutls_privkey_t *privkey)
{
        struct tls_gen *g = atomic_load(&tls.current);

        (void)session;
        (void)req_ca_rdn;
        (void)nreqs;
        (void)pk_algos;
        (void)pk_algos_length;
        if (!g)
                return -1;
        *pcert = g->pcert;
        *pcert_length = g->n_pcert;
        *privkey = g->key;
        return 0;
}

void *tls_cert_callback(void)
{
        return (void *)(gnutls_certificate_retrieve_function2 *)cert_callback;
}

const char *tls_client_ca_pem(void)
{
        return tls.ca_pem;
}

unsigned tls_mhd_options(struct MHD_OptionItem *opts)
{
        unsigned n = 0;

        /* The certificate comes from here per handshake: SIGHUP reloads it. */
        opts[n++] =
                (struct MHD_OptionItem){ MHD_OPTION_HTTPS_CERT_CALLBACK, 0, tls_cert_callback() };
        opts[n++] =
                (struct MHD_OptionItem){ MHD_OPTION_HTTPS_PRIORITIES, 0, (void *)TLS_PRIORITIES };
        /* A trust list makes MHD request client certificates; this file verifies them. */
        if (tls_client_ca_pem())
                opts[n++] = (struct MHD_OptionItem){ MHD_OPTION_HTTPS_MEM_TRUST, 0,
                                                     (void *)tls_client_ca_pem() };
        return n;
}

bool tls_enabled(void)
{
        return atomic_load(&tls.current) != NULL;
}

int tls_setup(const struct agent_config *cfg, char *err, size_t err_size)
{
        struct tls_gen *g = NULL;
        int r;

        if (!cfg->tls_cert)
                return 0;
        tls.cert_path = strdup(cfg->tls_cert);
        tls.key_path = strdup(cfg->tls_key);
        tls.ca_path = cfg->tls_client_ca ? strdup(cfg->tls_client_ca) : NULL;
        if (!tls.cert_path || !tls.key_path || (cfg->tls_client_ca && !tls.ca_path)) {
                tls_done();
                return -ENOMEM;
        }
        r = gen_load(&g, &tls.ca_pem, err, err_size);
        if (r < 0) {
                tls_done();
                return r;
        }
        atomic_store(&tls.current, g);
        log_info("TLS: certificate %s, SHA-256 fingerprint %s%s", tls.cert_path, g->fingerprint,
                 tls.ca_path ? "; client certificates required" : "");
        return 0;
}

int tls_reload(char *err, size_t err_size)
{
        struct tls_gen *g = NULL;
        int r;

        if (!tls_enabled())
                return 0;
        pthread_mutex_lock(&tls.lock);
        r = gen_load(&g, NULL, err, err_size);
        if (r >= 0) {
                g->older = atomic_load(&tls.current);
                atomic_store(&tls.current, g);
        }
        pthread_mutex_unlock(&tls.lock);
        if (r >= 0)
                log_info("TLS: reloaded; certificate SHA-256 fingerprint now %s", g->fingerprint);
        return r;
}

void tls_done(void)
{
        struct tls_gen *g = atomic_exchange(&tls.current, NULL);

        while (g) {
                struct tls_gen *older = g->older;
                gen_free(g);
                g = older;
        }
        free(tls.cert_path);
        free(tls.key_path);
        free(tls.ca_path);
        free(tls.ca_pem);
        tls.cert_path = tls.key_path = tls.ca_path = tls.ca_pem = NULL;
}

static atomic_uint_fast64_t verifications;

const void *tls_generation(void)
{
        return atomic_load(&tls.current);
}

void tls_render_metrics(struct strbuf *sb)
{
        strbuf_printf(sb,
                      "# HELP luofleet_tls_client_verifications_total TLS client certificates "
                      "verified (once per connection and credentials generation).\n"
                      "# TYPE luofleet_tls_client_verifications_total counter\n"
                      "luofleet_tls_client_verifications_total %llu\n",
                      (unsigned long long)atomic_load(&verifications));
}

void tls_current_fingerprint(char buf[static 65])
{
        struct tls_gen *g = atomic_load(&tls.current);
        snprintf(buf, 65, "%s", g ? g->fingerprint : "");
}

static void printable(char *s)
{
        for (; *s; s++)
                if ((unsigned char)*s < 0x21 || (unsigned char)*s > 0x7e)
                        *s = '_';
}

static int crt_name(gnutls_x509_crt_t crt, char *name, size_t size)
{
        char buf[256];
        size_t len = sizeof(buf);

        if (gnutls_x509_crt_get_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME, 0, 0, buf, &len) == 0 &&
            len > 0) {
                snprintf(name, size, "%s", buf);
                printable(name);
                return 0;
        }
        for (unsigned i = 0; i < 16; i++) {
                unsigned critical = 0;
                len = sizeof(buf) - 1;
                int t = gnutls_x509_crt_get_subject_alt_name(crt, i, buf, &len, &critical);
                if (t < 0)
                        break;
                if (t == GNUTLS_SAN_DNSNAME || t == GNUTLS_SAN_RFC822NAME || t == GNUTLS_SAN_URI) {
                        buf[MIN(len, sizeof(buf) - 1)] = 0;
                        snprintf(name, size, "%s", buf);
                        printable(name);
                        return 0;
                }
        }
        return -ENOENT;
}

int tls_peer_identity(void *session, char *name, size_t size)
{
        struct tls_gen *g = atomic_load(&tls.current);
        gnutls_x509_crt_t crts[TLS_CHAIN_MAX];
        const gnutls_datum_t *peers;
        unsigned n = 0, imported = 0, voutput = 1;
        gnutls_typed_vdata_st purpose = { .type = GNUTLS_DT_KEY_PURPOSE_OID,
                                          .data = (void *)GNUTLS_KP_TLS_WWW_CLIENT };
        int ret = -1;

        name[0] = 0;
        if (!session)
                return 0;
        peers = gnutls_certificate_get_peers((gnutls_session_t)session, &n);
        if (!peers || n == 0)
                return 0;
        if (!g || !g->trust || n > TLS_CHAIN_MAX)
                return -1;
        atomic_fetch_add(&verifications, 1);
        while (imported < n) {
                if (gnutls_x509_crt_init(&crts[imported]) < 0)
                        goto out;
                imported++;
                if (gnutls_x509_crt_import(crts[imported - 1], &peers[imported - 1],
                                           GNUTLS_X509_FMT_DER) < 0)
                        goto out;
        }
        if (gnutls_x509_trust_list_verify_crt2(g->trust, crts, n, &purpose, 1, 0, &voutput, NULL) <
                    0 ||
            voutput != 0)
                goto out;
        if (crt_name(crts[0], name, size) < 0)
                snprintf(name, size, "unnamed");
        ret = 1;
out:
        for (unsigned i = 0; i < imported; i++)
                gnutls_x509_crt_deinit(crts[i]);
        return ret;
}
