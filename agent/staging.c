/*
 * staging.c: local kernel staging: resolve, check the allowed directories,
 * open, fstat, stream SHA-256, compare, kexec_file_load on the same fds.
 * Worker thread. Its one piece of state, the allowed directories, is set
 * once by the server before any request (staging_set_allowed_dirs()).
 *
 * The confinement (common/stagepath.c): a path is taken only when its
 * canonical form lies inside one of the allowed directories, themselves
 * resolved at each request (they may appear after the start, and a relative
 * --state-dir makes the default STATE_DIR/kernels relative); opened with
 * O_NOFOLLOW, the inode stat(2) saw. With privilege separation the network
 * process only checks (it may not even be able to resolve a root-only
 * directory) and the privileged helper opens: OPEN_STAGING re-applies every
 * check there and passes the descriptor back (docs/privsep.md); with
 * --privsep=no this process opens.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "luofleet/macro.h"
#include "luofleet/privsep.h"
#include "luofleet/stagepath.h"
#include "luofleet/util.h"
#include "problem.h"
#include "staging.h"

static char *const *allowed_dirs;
static unsigned n_allowed_dirs;

void staging_set_allowed_dirs(char *const *dirs, unsigned n)
{
        allowed_dirs = dirs;
        n_allowed_dirs = n;
}

bool staging_path_valid(const char *path)
{
        return stagepath_valid(path);
}

bool staging_sha256_valid(const char *hex)
{
        if (!hex || strlen(hex) != 64)
                return false;
        for (int i = 0; i < 64; i++)
                if (!isxdigit((unsigned char)hex[i]))
                        return false;
        return true;
}

static int sha256_fd(int fd, char out[65], uint64_t *ret_size)
{
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        uint8_t buf[65536], md[32];
        unsigned md_len = 0;
        uint64_t total = 0;
        off_t off = 0;
        int r = 0;

        if (!ctx)
                return -ENOMEM;
        if (EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
                r = -EIO;
                goto out;
        }
        for (;;) {
                ssize_t n = pread(fd, buf, sizeof(buf), off);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        r = negative_errno();
                        goto out;
                }
                if (n == 0)
                        break;
                if (EVP_DigestUpdate(ctx, buf, (size_t)n) != 1) {
                        r = -EIO;
                        goto out;
                }
                off += n;
                total += (uint64_t)n;
                if (total > STAGING_MAX_FILE) {
                        r = -EFBIG;
                        goto out;
                }
        }
        if (EVP_DigestFinal_ex(ctx, md, &md_len) != 1 || md_len != 32) {
                r = -EIO;
                goto out;
        }
        hex_encode(md, 32, out);
        *ret_size = total;
out:
        EVP_MD_CTX_free(ctx);
        return r;
}

static void fail(struct stage_result *res, int status, const char *code, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));
static void fail(struct stage_result *res, int status, const char *code, const char *fmt, ...)
{
        va_list ap;
        res->status = status;
        res->code = code;
        va_start(ap, fmt);
        vsnprintf(res->detail, sizeof(res->detail), fmt, ap);
        va_end(ap);
}

/* Open one file here or through the privileged helper: stagepath_open()'s answers. */
static int stage_open_fd(struct backend *b, const char *path)
{
        if (privsep_is_proxy(b))
                return privsep_proxy_open_staging(b, path);
        return stagepath_open(path, allowed_dirs, n_allowed_dirs);
}

/* Open and check one file; returns the fd or -1 with res filled. */
static int stage_open(struct backend *b, const char *field, const char *path, const char *want,
                      struct stage_result *res, json_t **ret_file)
{
        _cleanup_close_ int fd = -1;
        char got[65], canonical[PATH_MAX];
        const char *real = realpath(path, canonical);
        uint64_t size = 0;
        int r;

        /*
         * Only inside the allowed directories; checked before anything else is
         * said about the file, so the answer tells nothing about other places.
         * (This process's own check: the helper makes it again.)
         */
        if (!stagepath_allowed(path, real, allowed_dirs, n_allowed_dirs))
                fd = -STAGEPATH_NOT_ALLOWED;
        else
                fd = stage_open_fd(b, path);
        if (fd == -STAGEPATH_NOT_ALLOWED) {
                fail(res, 422, "path-not-allowed",
                     "%s: %s is not inside an allowed staging directory", field, path);
                res->extra = json_pack("{s:s}", "field", field);
                return -1;
        }
        if (fd == -STAGEPATH_NOT_REGULAR) {
                fail(res, 422, "not-a-regular-file", "%s: %s is not a regular file", field, path);
                res->extra = json_pack("{s:s}", "field", field);
                return -1;
        }
        if (fd < 0) {
                if (fd == -ENOENT || fd == -ENOTDIR)
                        fail(res, 422, "file-not-found", "%s: %s does not exist", field, path);
                else
                        fail(res, 422, "file-not-found", "%s: cannot open %s: %s", field, path,
                             strerror(-fd));
                res->extra = json_pack("{s:s}", "field", field);
                return -1;
        }
        r = sha256_fd(fd, got, &size);
        if (r < 0) {
                char eb[16];
                fail(res, 422, r == -EFBIG ? "invalid-field" : "file-not-found",
                     "%s: cannot read %s: %s", field, path, errno_name(r, eb));
                res->extra = json_pack("{s:s}", "field", field);
                return -1;
        }
        if (strcasecmp(got, want) != 0) {
                fail(res, 422, "digest-mismatch", "%s: SHA-256 of %s does not match", field, path);
                res->extra = json_pack("{s:s, s:s, s:s}", "field", field, "expected_sha256", want,
                                       "actual_sha256", got);
                return -1;
        }
        *ret_file =
                json_pack("{s:s, s:s, s:I}", "path", path, "sha256", got, "size", (json_int_t)size);
        return TAKE_FD(fd);
}

int staging_run(struct backend *b, const struct op_request *rq, struct stage_result *res)
{
        _cleanup_close_ int kfd = -1, ifd = -1;
        json_t *kfile = NULL, *ifile = NULL;
        char when[RFC3339_MAX];
        int r;

        *res = (struct stage_result){ 0 };
        kfd = stage_open(b, "kernel", rq->kernel_path, rq->kernel_sha256, res, &kfile);
        if (kfd < 0)
                return 0;
        if (rq->initrd_path[0]) {
                ifd = stage_open(b, "initrd", rq->initrd_path, rq->initrd_sha256, res, &ifile);
                if (ifd < 0) {
                        json_decref(kfile);
                        return 0;
                }
        }
        r = b->ops->kexec_load(b, kfd, ifd, rq->cmdline);
        if (r < 0) {
                struct problem_errno_map m = problem_from_errno(r);
                char eb[16];
                /* EINVAL from kexec_file_load is not a transition problem. */
                if (-r == EINVAL || -r == ENOEXEC)
                        m = (struct problem_errno_map){ -r, 422, "kernel-error" };
                fail(res, m.status, m.code, "kexec_file_load failed: %s (%s)", strerror(-r),
                     errno_name(r, eb));
                res->err = -r;
                json_decref(kfile);
                json_decref(ifile);
                return 0;
        }
        res->staged = json_pack("{s:o, s:o, s:s, s:s, s:b}", "kernel", kfile, "initrd",
                                ifile ? ifile : json_null(), "cmdline", rq->cmdline, "staged_at",
                                format_rfc3339_ms(now_real_usec(), when), "loaded", 1);
        return res->staged ? 0 : -ENOMEM;
}

void stage_result_done(struct stage_result *res)
{
        json_decref(res->extra);
        json_decref(res->staged);
        res->extra = res->staged = NULL;
}
