/*
 * cmd_sign.c: `luofleetctl sign --key=PRIVATE.pem --kernel-sha256=HEX
 * [--initrd-sha256=HEX] --cmdline=STRING [--key-id=NAME]` prints the
 * `signature` object of a PUT /v1/kernel request, signed over the canonical
 * message of common/sign.c (docs/staging.md). Its own option parser: it
 * predates the common options and keeps its behaviour. Single-threaded.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cli.h"
#include "luofleet/sign.h"

static void sign_usage(FILE *f)
{
        fputs("Usage: luofleetctl sign --key=PRIVATE.pem --kernel-sha256=HEX\n"
              "                        [--initrd-sha256=HEX] --cmdline=STRING [--key-id=NAME]\n"
              "\n"
              "sign: print the \"signature\" object of a PUT /v1/kernel request: an Ed25519\n"
              "signature (OpenSSL PEM private key) over the kernel and initrd digests and the\n"
              "command line. --key-id names the public key in the agent's --trusted-keys\n"
              "directory (its file name without .pem); default: the name of --key without\n"
              ".pem or .key. --cmdline may be empty (--cmdline=).\n",
              f);
}

int cmd_sign(int argc, char **argv)
{
        static const struct option opts[] = {
                { "key", required_argument, NULL, 'k' },
                { "kernel-sha256", required_argument, NULL, 'K' },
                { "initrd-sha256", required_argument, NULL, 'I' },
                { "cmdline", required_argument, NULL, 'c' },
                { "key-id", required_argument, NULL, 'i' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        const char *key = NULL, *ksha = NULL, *isha = NULL, *cmdline = NULL, *key_id = NULL;
        char id[SIGN_KEY_ID_MAX + 1], msg[8192], sig[SIGN_B64_LEN + 1];
        json_t *out;
        char *s;
        int c, n, r;

        while ((c = getopt_long(argc, argv, "h", opts, NULL)) >= 0) {
                switch (c) {
                case 'k':
                        key = optarg;
                        break;
                case 'K':
                        ksha = optarg;
                        break;
                case 'I':
                        isha = optarg;
                        break;
                case 'c':
                        cmdline = optarg;
                        break;
                case 'i':
                        key_id = optarg;
                        break;
                case 'h':
                        sign_usage(stdout);
                        return 0;
                default:
                        sign_usage(stderr);
                        return 2;
                }
        }
        if (optind != argc || !key || !ksha || !cmdline) {
                fputs("luofleetctl sign: --key, --kernel-sha256 and --cmdline are required\n",
                      stderr);
                sign_usage(stderr);
                return 2;
        }
        if (!key_id) {
                const char *base = strrchr(key, '/');
                size_t len;
                base = base ? base + 1 : key;
                len = strlen(base);
                if (len > 4 &&
                    (strcmp(base + len - 4, ".pem") == 0 || strcmp(base + len - 4, ".key") == 0))
                        len -= 4;
                n = snprintf(id, sizeof(id), "%.*s", (int)len, base);
                if (n < 0 || (size_t)n >= sizeof(id)) {
                        fputs("luofleetctl sign: key file name too long for a key id: use "
                              "--key-id\n",
                              stderr);
                        return 2;
                }
                key_id = id;
        }
        if (!sign_key_id_valid(key_id)) {
                fprintf(stderr,
                        "luofleetctl sign: invalid key id '%s' (letters, digits, . _ -, at most "
                        "%d)\n",
                        key_id, SIGN_KEY_ID_MAX);
                return 2;
        }
        n = sign_message(ksha, isha, cmdline, msg, sizeof(msg));
        if (n < 0) {
                fputs(n == -EINVAL ? "luofleetctl sign: a digest is not 64 hex digits\n"
                                   : "luofleetctl sign: command line too long\n",
                      stderr);
                return 2;
        }
        r = sign_create(key, msg, (size_t)n, sig);
        if (r < 0) {
                fprintf(stderr, "luofleetctl sign: %s: %s\n", key,
                        r == -ENOKEY ? "not an Ed25519 private key (PEM)" : strerror(-r));
                return 1;
        }
        out = json_pack("{s:s, s:s}", "key_id", key_id, "ed25519", sig);
        s = out ? json_dumps(out, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
        json_decref(out);
        if (!s) {
                fputs("luofleetctl sign: out of memory\n", stderr);
                return 1;
        }
        puts(s);
        free(s);
        return 0;
}
