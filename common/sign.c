/*
 * sign.c: detached Ed25519 signatures over a staging request: the canonical
 * message, verification with a trusted public key (agent, MHD thread) and
 * creation with a private key (luofleetctl sign). OpenSSL 3 EVP one-shot
 * DigestSign/DigestVerify (Ed25519 signs the message itself, no pre-hash).
 * No state; any thread.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

#include "luofleet/sign.h"

static bool sha_valid(const char *s)
{
        if (!s || strlen(s) != 64)
                return false;
        for (int i = 0; i < 64; i++)
                if (!isxdigit((unsigned char)s[i]))
                        return false;
        return true;
}

static void lower(char out[65], const char *s)
{
        for (int i = 0; i < 64; i++)
                out[i] = (char)tolower((unsigned char)s[i]);
        out[64] = 0;
}

int sign_message(const char *kernel_sha256, const char *initrd_sha256, const char *cmdline,
                 char *buf, size_t size)
{
        char k[65], i[65] = "-";
        int n;

        if (!sha_valid(kernel_sha256))
                return -EINVAL;
        lower(k, kernel_sha256);
        if (initrd_sha256 && initrd_sha256[0]) {
                if (!sha_valid(initrd_sha256))
                        return -EINVAL;
                lower(i, initrd_sha256);
        }
        n = snprintf(buf, size, SIGN_MAGIC "\nkernel %s\ninitrd %s\ncmdline %s\n", k, i,
                     cmdline ? cmdline : "");
        if (n < 0)
                return -EINVAL;
        if ((size_t)n >= size)
                return -ENOBUFS;
        return n;
}

bool sign_key_id_valid(const char *key_id)
{
        size_t n = key_id ? strlen(key_id) : 0;

        if (n == 0 || n > SIGN_KEY_ID_MAX || key_id[0] == '.')
                return false;
        for (size_t j = 0; j < n; j++)
                if (!isalnum((unsigned char)key_id[j]) && !strchr("._-", key_id[j]))
                        return false;
        return true;
}

/* Read a PEM key file (small) through a FILE that OpenSSL's PEM reader takes. */
static EVP_PKEY *read_key(const char *path, bool private_key, int *ret_err)
{
        EVP_PKEY *k;
        FILE *f = fopen(path, "re");

        if (!f) {
                *ret_err = errno == ENOENT ? -ENOKEY : -errno;
                return NULL;
        }
        k = private_key ? PEM_read_PrivateKey(f, NULL, NULL, NULL)
                        : PEM_read_PUBKEY(f, NULL, NULL, NULL);
        fclose(f);
        if (!k || EVP_PKEY_get_id(k) != EVP_PKEY_ED25519) {
                EVP_PKEY_free(k);
                *ret_err = -ENOKEY;
                return NULL;
        }
        return k;
}

int sign_verify(const char *keys_dir, const char *key_id, const char *sig_b64, const char *msg,
                size_t len)
{
        unsigned char sig[66];
        char path[4096];
        EVP_PKEY *k;
        EVP_MD_CTX *ctx;
        int r, n;

        if (!keys_dir || !sign_key_id_valid(key_id))
                return -EINVAL;
        if (!sig_b64 || strlen(sig_b64) != SIGN_B64_LEN)
                return -EINVAL;
        /* 88 characters decode to 66 bytes, the last two being the "==" padding. */
        n = EVP_DecodeBlock(sig, (const unsigned char *)sig_b64, SIGN_B64_LEN);
        if (n != 66 || sig_b64[86] != '=' || sig_b64[87] != '=')
                return -EINVAL;
        n = snprintf(path, sizeof(path), "%s/%s.pem", keys_dir, key_id);
        if (n < 0 || (size_t)n >= sizeof(path))
                return -ENAMETOOLONG;
        k = read_key(path, false, &r);
        if (!k)
                return r;
        ctx = EVP_MD_CTX_new();
        if (!ctx) {
                EVP_PKEY_free(k);
                return -ENOMEM;
        }
        if (EVP_DigestVerifyInit_ex(ctx, NULL, NULL, NULL, NULL, k, NULL) != 1)
                r = -EIO;
        else if (EVP_DigestVerify(ctx, sig, 64, (const unsigned char *)msg, len) == 1)
                r = 0;
        else
                r = -EBADMSG;
        EVP_MD_CTX_free(ctx);
        EVP_PKEY_free(k);
        return r;
}

int sign_create(const char *key_path, const char *msg, size_t len, char *ret_b64)
{
        unsigned char sig[64];
        size_t siglen = sizeof(sig);
        EVP_PKEY *k;
        EVP_MD_CTX *ctx;
        int r = 0;

        k = read_key(key_path, true, &r);
        if (!k)
                return r;
        ctx = EVP_MD_CTX_new();
        if (!ctx) {
                EVP_PKEY_free(k);
                return -ENOMEM;
        }
        if (EVP_DigestSignInit_ex(ctx, NULL, NULL, NULL, NULL, k, NULL) != 1 ||
            EVP_DigestSign(ctx, sig, &siglen, (const unsigned char *)msg, len) != 1 || siglen != 64)
                r = -EIO;
        else if (EVP_EncodeBlock((unsigned char *)ret_b64, sig, 64) != SIGN_B64_LEN)
                r = -EIO;
        EVP_MD_CTX_free(ctx);
        EVP_PKEY_free(k);
        return r;
}
