/*
 * test_sign.c: the canonical staging message and Ed25519 sign/verify
 * (common/sign.c), with keys made here by OpenSSL.
 */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

#include "download.h"
#include "luofleet/sign.h"
#include "testutil.h"

static const char K[] = "3b1f0a6f0f5c3c1e1b7b2d5d9e0d8f7a6c5b4a39281706f5e4d3c2b1a0f9e8d7";
static const char I[] = "9f8e7d6c5b4a39281706f5e4d3c2b1a03b1f0a6f0f5c3c1e1b7b2d5d9e0d8f7a";

static char tmpdir[512];

/* A fresh Ed25519 key pair: DIR/<name>.key (private), DIR/<name>.pem (public). */
static void make_key(const char *name)
{
        EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
        char path[1024];
        FILE *f;

        ck_assert_ptr_nonnull(k);
        snprintf(path, sizeof(path), "%s/%s.key", tmpdir, name);
        f = fopen(path, "w");
        ck_assert_ptr_nonnull(f);
        ck_assert_int_eq(PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL), 1);
        fclose(f);
        snprintf(path, sizeof(path), "%s/%s.pem", tmpdir, name);
        f = fopen(path, "w");
        ck_assert_ptr_nonnull(f);
        ck_assert_int_eq(PEM_write_PUBKEY(f, k), 1);
        fclose(f);
        EVP_PKEY_free(k);
}

START_TEST(test_message)
{
        char buf[4352], upper[65];
        int n;

        n = sign_message(K, I, "console=ttyS0 ro", buf, sizeof(buf));
        ck_assert_int_gt(n, 0);
        ck_assert_str_eq(buf,
                         "luofleet-stage-v1\n"
                         "kernel 3b1f0a6f0f5c3c1e1b7b2d5d9e0d8f7a6c5b4a39281706f5e4d3c2b1a0f9e8d7\n"
                         "initrd 9f8e7d6c5b4a39281706f5e4d3c2b1a03b1f0a6f0f5c3c1e1b7b2d5d9e0d8f7a\n"
                         "cmdline console=ttyS0 ro\n");
        ck_assert_int_eq((size_t)n, strlen(buf));

        /* No initrd: "-"; NULL and "" mean the same; an empty command line. */
        n = sign_message(K, NULL, "", buf, sizeof(buf));
        ck_assert_int_gt(n, 0);
        ck_assert_str_eq(buf,
                         "luofleet-stage-v1\n"
                         "kernel 3b1f0a6f0f5c3c1e1b7b2d5d9e0d8f7a6c5b4a39281706f5e4d3c2b1a0f9e8d7\n"
                         "initrd -\n"
                         "cmdline \n");
        char again[4352];
        ck_assert_int_eq(sign_message(K, "", NULL, again, sizeof(again)), n);
        ck_assert_str_eq(buf, again);

        /* The case of the digests does not matter. */
        for (int i = 0; i < 64; i++)
                upper[i] = (char)(K[i] >= 'a' ? K[i] - 32 : K[i]);
        upper[64] = 0;
        ck_assert_int_eq(sign_message(upper, NULL, "", again, sizeof(again)), n);
        ck_assert_str_eq(buf, again);

        ck_assert_int_eq(sign_message("abc", NULL, "", buf, sizeof(buf)), -EINVAL);
        ck_assert_int_eq(sign_message(K, "xyz", "", buf, sizeof(buf)), -EINVAL);
        ck_assert_int_eq(sign_message(NULL, NULL, "", buf, sizeof(buf)), -EINVAL);
        ck_assert_int_eq(sign_message(K, I, "x", buf, 40), -ENOBUFS);
}
END_TEST

START_TEST(test_key_id)
{
        ck_assert(sign_key_id_valid("release-2026"));
        ck_assert(sign_key_id_valid("a.b_c-d"));
        ck_assert(!sign_key_id_valid(""));
        ck_assert(!sign_key_id_valid(NULL));
        ck_assert(!sign_key_id_valid(".hidden"));
        ck_assert(!sign_key_id_valid("../etc/passwd"));
        ck_assert(!sign_key_id_valid("a/b"));
        ck_assert(!sign_key_id_valid("a b"));
        char long_id[SIGN_KEY_ID_MAX + 2];
        memset(long_id, 'a', sizeof(long_id) - 1);
        long_id[sizeof(long_id) - 1] = 0;
        ck_assert(!sign_key_id_valid(long_id));
        long_id[SIGN_KEY_ID_MAX] = 0;
        ck_assert(sign_key_id_valid(long_id));
}
END_TEST

START_TEST(test_sign_verify)
{
        char msg[4352], other[4352], key[1024], sig[SIGN_B64_LEN + 1], bad[SIGN_B64_LEN + 1];
        int n, m;

        testutil_mkdtemp(tmpdir, sizeof(tmpdir), "sign");
        make_key("alice");
        make_key("bob");
        n = sign_message(K, I, "ro quiet", msg, sizeof(msg));
        ck_assert_int_gt(n, 0);
        snprintf(key, sizeof(key), "%s/alice.key", tmpdir);
        ck_assert_int_eq(sign_create(key, msg, (size_t)n, sig), 0);
        ck_assert_int_eq(strlen(sig), SIGN_B64_LEN);

        ck_assert_int_eq(sign_verify(tmpdir, "alice", sig, msg, (size_t)n), 0);
        /* Another key, another message, a flipped bit: refused. */
        ck_assert_int_eq(sign_verify(tmpdir, "bob", sig, msg, (size_t)n), -EBADMSG);
        m = sign_message(K, I, "ro quiet init=/bin/sh", other, sizeof(other));
        ck_assert_int_eq(sign_verify(tmpdir, "alice", sig, other, (size_t)m), -EBADMSG);
        m = sign_message(K, NULL, "ro quiet", other, sizeof(other));
        ck_assert_int_eq(sign_verify(tmpdir, "alice", sig, other, (size_t)m), -EBADMSG);
        memcpy(bad, sig, sizeof(bad));
        bad[10] = bad[10] == 'A' ? 'B' : 'A';
        ck_assert_int_eq(sign_verify(tmpdir, "alice", bad, msg, (size_t)n), -EBADMSG);

        /* Unknown key, a private key where a public one belongs, malformed input. */
        ck_assert_int_eq(sign_verify(tmpdir, "carol", sig, msg, (size_t)n), -ENOKEY);
        ck_assert_int_eq(sign_verify(tmpdir, "../x", sig, msg, (size_t)n), -EINVAL);
        ck_assert_int_eq(sign_verify(tmpdir, "alice", "AAAA", msg, (size_t)n), -EINVAL);
        memcpy(bad, sig, sizeof(bad));
        bad[87] = 'A';
        ck_assert_int_eq(sign_verify(tmpdir, "alice", bad, msg, (size_t)n), -EINVAL);
        memcpy(bad, sig, sizeof(bad));
        bad[5] = '*';
        ck_assert_int_eq(sign_verify(tmpdir, "alice", bad, msg, (size_t)n), -EINVAL);
        ck_assert_int_eq(sign_verify(NULL, "alice", sig, msg, (size_t)n), -EINVAL);

        /* Signing needs an Ed25519 private key. */
        snprintf(key, sizeof(key), "%s/alice.pem", tmpdir);
        ck_assert_int_eq(sign_create(key, msg, (size_t)n, sig), -ENOKEY);
        snprintf(key, sizeof(key), "%s/none.key", tmpdir);
        ck_assert_int_eq(sign_create(key, msg, (size_t)n, sig), -ENOKEY);
        testutil_rm_rf(tmpdir);
}
END_TEST

/* The URL schemes a staging request may use (agent/download.c). */
START_TEST(test_url_schemes)
{
        ck_assert(download_url_allowed("https://h/x", false));
        ck_assert(download_url_allowed("HTTPS://h/x", false));
        ck_assert(download_url_allowed("file:///srv/vmlinuz", false));
        ck_assert(!download_url_allowed("http://h/x", false));
        ck_assert(download_url_allowed("http://h/x", true));
        ck_assert(!download_url_allowed("file://host/x", true));
        ck_assert(!download_url_allowed("file:///", true));
        ck_assert(!download_url_allowed("https://", true));
        ck_assert(!download_url_allowed("ftp://h/x", true));
        ck_assert(!download_url_allowed("/srv/vmlinuz", true));
        ck_assert(!download_url_allowed("", true));
        ck_assert(!download_url_allowed(NULL, true));
}
END_TEST

static Suite *sign_suite(void)
{
        Suite *s = suite_create("sign");
        TCase *tc = tcase_create("core");

        tcase_add_test(tc, test_message);
        tcase_add_test(tc, test_key_id);
        tcase_add_test(tc, test_sign_verify);
        tcase_add_test(tc, test_url_schemes);
        suite_add_tcase(s, tc);
        return s;
}

TESTUTIL_MAIN(sign_suite)
