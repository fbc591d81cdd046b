/*
 * sign.h: detached Ed25519 signatures over a staging request (common/sign.c).
 * The one definition of the signed bytes, used by the agent (verify) and by
 * `luofleetctl sign` (create). Any thread; no state.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

/* The version line that opens every signed message. */
#define SIGN_MAGIC "luofleet-stage-v1"
/* A key id: the trusted key's file name without ".pem". */
#define SIGN_KEY_ID_MAX 64
/* Base64 of a 64-byte Ed25519 signature: 88 characters. */
#define SIGN_B64_LEN 88

/*
 * The canonical message (docs/staging.md):
 *
 *   "luofleet-stage-v1\n"
 *   "kernel <sha256 of the kernel, 64 lower-case hex>\n"
 *   "initrd <sha256 of the initrd, 64 lower-case hex, or ->\n"
 *   "cmdline <the command line, byte for byte>\n"
 *
 * initrd_sha256 NULL or "" means no initrd ("-"). Digests are lower-cased,
 * so the case a caller wrote them in does not matter. Returns the length
 * written (without the NUL), -EINVAL for a digest that is not 64 hex digits,
 * -ENOBUFS when size is too small (4096 + 256 always suffices for a cmdline
 * under 4096 bytes).
 */
int sign_message(const char *kernel_sha256, const char *initrd_sha256, const char *cmdline,
                 char *buf, size_t size);

/* [A-Za-z0-9_-][A-Za-z0-9._-]{0,63}: safe as a file name. */
bool sign_key_id_valid(const char *key_id);

/*
 * Verify sig_b64 (standard base64 of 64 bytes) over msg with the public key
 * DIR/<key_id>.pem. 0 valid; -ENOKEY no such key (or not an Ed25519 public
 * key), -EBADMSG the signature does not verify, -EINVAL malformed key id or
 * base64, other -errno reading the key.
 */
int sign_verify(const char *keys_dir, const char *key_id, const char *sig_b64, const char *msg,
                size_t len);

/*
 * Sign msg with the Ed25519 private key in the PEM file key_path; writes
 * SIGN_B64_LEN characters and a NUL into ret_b64 (at least SIGN_B64_LEN + 1
 * bytes). -ENOKEY when the file holds no Ed25519 private key.
 */
int sign_create(const char *key_path, const char *msg, size_t len, char *ret_b64);
