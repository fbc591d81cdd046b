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
 *
 * The load itself: with --privsep=no, kexec_file_load() on the descriptors
 * this process checked. Through the helper, KEXEC_LOAD sends the paths, the
 * digests checked here, the command line and the request's signature, and
 * the helper opens, hashes and verifies again on its own (a compromised
 * network process must not be able to load anything else): what this
 * process checked only gives the caller its precise answer first. The
 * signature is not part of the operation's request (agent.h), so the ones
 * staging_check_signature() verified are remembered here, by what they sign
 * (a few, under sig_lock: it runs on MHD's threads, the load on the worker).
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "download.h"
#include "luofleet/macro.h"
#include "luofleet/privsep.h"
#include "luofleet/sign.h"
#include "luofleet/stagepath.h"
#include "luofleet/util.h"
#include "problem.h"
#include "staging.h"

/* At most one journaled progress update per file this often (plus one at each file's start and
 * end). */
#define PROGRESS_INTERVAL_USEC (500 * 1000)

static char *const *allowed_dirs;
static unsigned n_allowed_dirs;

/* The signatures verified lately, by SHA-256 of their key id and signed message. */
#define SIG_REMEMBER 8
static struct {
        uint8_t what[32];
        char b64[SIGN_B64_LEN + 1];
} sigs[SIG_REMEMBER];
static unsigned sigs_next;
static pthread_mutex_t sig_lock = PTHREAD_MUTEX_INITIALIZER;

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

/* What a signature by key_id over rq's digests and command line signs, hashed; -errno. */
static int sig_what(const char *key_id, const char *kernel_sha256, const char *initrd_sha256,
                    const char *cmdline, uint8_t what[32])
{
        char msg[4352];
        unsigned len = 0;
        EVP_MD_CTX *ctx;
        int n, ok;

        n = sign_message(kernel_sha256, initrd_sha256, cmdline, msg, sizeof(msg));
        if (n < 0)
                return n;
        ctx = EVP_MD_CTX_new();
        if (!ctx)
                return -ENOMEM;
        ok = EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 &&
             EVP_DigestUpdate(ctx, key_id, strlen(key_id) + 1) == 1 &&
             EVP_DigestUpdate(ctx, msg, (size_t)n) == 1 && EVP_DigestFinal_ex(ctx, what, &len) == 1;
        EVP_MD_CTX_free(ctx);
        return ok && len == 32 ? 0 : -EIO;
}

static void sig_remember(const char *key_id, const struct op_request *rq, const char *b64)
{
        uint8_t what[32];

        if (strlen(b64) != SIGN_B64_LEN ||
            sig_what(key_id, rq->kernel_sha256, rq->initrd_sha256, rq->cmdline, what) < 0)
                return;
        pthread_mutex_lock(&sig_lock);
        memcpy(sigs[sigs_next].what, what, sizeof(what));
        memcpy(sigs[sigs_next].b64, b64, SIGN_B64_LEN + 1);
        sigs_next = (sigs_next + 1) % SIG_REMEMBER;
        pthread_mutex_unlock(&sig_lock);
}

/* The remembered signature of rq (signed by rq->signed_by) into b64; false when none. */
static bool sig_recall(const struct op_request *rq, char b64[static SIGN_B64_LEN + 1])
{
        uint8_t what[32];
        bool found = false;

        if (!rq->signed_by[0] ||
            sig_what(rq->signed_by, rq->kernel_sha256, rq->initrd_sha256, rq->cmdline, what) < 0)
                return false;
        pthread_mutex_lock(&sig_lock);
        for (unsigned i = 0; i < SIG_REMEMBER && !found; i++)
                if (sigs[i].b64[0] && memcmp(sigs[i].what, what, sizeof(what)) == 0) {
                        memcpy(b64, sigs[i].b64, SIGN_B64_LEN + 1);
                        found = true;
                }
        pthread_mutex_unlock(&sig_lock);
        return found;
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
                /* Name the directories and the flag: the operator's next step. */
                char dirs[1536] = ""; /* the allowed directories, listed in the detail */
                size_t len = 0;
                json_t *list = json_array();
                for (unsigned i = 0; i < n_allowed_dirs; i++) {
                        int k = snprintf(dirs + len, sizeof(dirs) - len, "%s%s", i ? ", " : "",
                                         allowed_dirs[i]);
                        if (k < 0 || (size_t)k >= sizeof(dirs) - len) {
                                dirs[len] = 0;
                                break;
                        }
                        len += (size_t)k;
                        json_array_append_new(list, json_string(allowed_dirs[i]));
                }
                fail(res, 422, "path-not-allowed",
                     "%s: %s is not inside an allowed staging directory (symbolic links are not "
                     "followed); "
                     "allowed: %s (the agent's --staging-dir)",
                     field, path, dirs[0] ? dirs : "none");
                res->extra = json_pack("{s:s, s:o}", "field", field, "allowed_dirs",
                                       list ? list : json_array());
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

/*
 * What runs now, so that a rollback target is known: the running kernel's
 * release and, when /boot/vmlinuz-<release> can be opened the way a staged
 * file is (inside an allowed directory, through the helper with privilege
 * separation), its path and SHA-256; null members otherwise.
 */
/* /boot/<prefix><release> when readable as a staged file would be: 1 and its digest in got. */
static int boot_file(struct backend *b, const char *prefix, const char *release, char *path,
                     size_t path_size, char got[static 65])
{
        char canonical[PATH_MAX];
        uint64_t size = 0;
        int n = snprintf(path, path_size, "/boot/%s%s", prefix, release);

        if (n > 0 && (size_t)n < path_size && !strchr(release, '/') && stagepath_valid(path) &&
            stagepath_allowed(path, realpath(path, canonical), allowed_dirs, n_allowed_dirs)) {
                _cleanup_close_ int fd = stage_open_fd(b, path);
                if (fd >= 0 && sha256_fd(fd, got, &size) >= 0)
                        return 1;
        }
        return 0;
}

static json_t *previous_kernel(struct backend *b)
{
        struct backend_info info = { 0 };
        char path[PATH_MAX], got[65];
        json_t *prev;

        if (b->ops->get_info(b, &info) < 0)
                return json_pack("{s:n, s:n, s:n}", "release", "image", "image_sha256");
        if (!boot_file(b, "vmlinuz-", info.release, path, sizeof(path), got))
                return json_pack("{s:s, s:n, s:n}", "release", info.release, "image",
                                 "image_sha256");
        prev = json_pack("{s:s, s:s, s:s}", "release", info.release, "image", path, "image_sha256",
                         got);
        if (prev && boot_file(b, "initrd.img-", info.release, path, sizeof(path), got)) {
                json_object_set_new(prev, "initrd", json_string(path));
                json_object_set_new(prev, "initrd_sha256", json_string(got));
        }
        return prev;
}

void staging_previous_from_booted(json_t *staged, json_t *booted)
{
        json_t *prev = json_object_get(staged, "previous");
        json_t *k = json_object_get(booted, "kernel"), *i = json_object_get(booted, "initrd");

        if (!json_is_object(prev) || !json_is_null(json_object_get(prev, "image")) ||
            !json_is_string(json_object_get(k, "path")) ||
            !json_is_string(json_object_get(k, "sha256")))
                return;
        json_object_set(prev, "image", json_object_get(k, "path"));
        json_object_set(prev, "image_sha256", json_object_get(k, "sha256"));
        if (json_is_object(i) && json_is_string(json_object_get(i, "path")) &&
            json_is_string(json_object_get(i, "sha256"))) {
                json_object_set(prev, "initrd", json_object_get(i, "path"));
                json_object_set(prev, "initrd_sha256", json_object_get(i, "sha256"));
        }
}

/* The problem of a KEXEC_LOAD the privileged helper refused itself (docs/privsep.md). */
static bool helper_refusal(int r, const struct op_request *rq, struct stage_result *res)
{
        switch (-r) {
        case STAGEPATH_NOT_ALLOWED:
                fail(res, 422, "path-not-allowed",
                     "the privileged helper refused the images: not inside its staging "
                     "directories (symbolic links are not followed)");
                break;
        case STAGEPATH_NOT_REGULAR:
                fail(res, 422, "not-a-regular-file",
                     "the privileged helper refused the images: not a regular file");
                break;
        case EBADMSG:
                fail(res, 422, "digest-mismatch",
                     "the privileged helper found another SHA-256 than the one checked here: the "
                     "file changed while it was staged");
                break;
        case EKEYREJECTED:
                fail(res, 422, rq->signed_by[0] ? "signature-invalid" : "signature-required",
                     "the privileged helper refused the images: %s",
                     rq->signed_by[0] ? "the signature does not verify with its trusted keys"
                                      : "this agent loads only signed kernels");
                break;
        default:
                return false;
        }
        res->err = -r;
        res->extra = json_pack("{s:s}", "field", -r == EKEYREJECTED ? "signature" : "kernel");
        return true;
}

/* The kernel command line: printable ASCII (the helper loads nothing else). */
static bool cmdline_ok(const char *cmdline, struct stage_result *res)
{
        if (privsep_helper_cmdline_check(cmdline, NULL, 0) >= 0)
                return true;
        fail(res, 400, "invalid-field", "cmdline must be printable ASCII (no control characters)");
        res->extra = json_pack("{s:s}", "field", "cmdline");
        return false;
}

int staging_run(struct backend *b, const struct op_request *rq, struct stage_result *res)
{
        _cleanup_close_ int kfd = -1, ifd = -1;
        json_t *kfile = NULL, *ifile = NULL;
        char when[RFC3339_MAX], sig[SIGN_B64_LEN + 1];
        int r;

        *res = (struct stage_result){ 0 };
        if (!cmdline_ok(rq->cmdline, res))
                return 0;
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
        if (privsep_is_proxy(b)) {
                /* The helper opens by path and checks again; these descriptors were for us. */
                bool signed_ = sig_recall(rq, sig);
                r = privsep_proxy_kexec_load(
                        b,
                        &(struct privsep_kexec_args){
                                .kernel_path = rq->kernel_path,
                                .kernel_sha256 =
                                        json_string_value(json_object_get(kfile, "sha256")),
                                .initrd_path = ifile ? rq->initrd_path : NULL,
                                .initrd_sha256 =
                                        ifile ? json_string_value(json_object_get(ifile, "sha256"))
                                              : NULL,
                                .cmdline = rq->cmdline,
                                .key_id = signed_ ? rq->signed_by : NULL,
                                .signature = signed_ ? sig : NULL,
                        });
                if (r < 0 && helper_refusal(r, rq, res)) {
                        json_decref(kfile);
                        json_decref(ifile);
                        return 0;
                }
        } else
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
        if (rq->kernel_url[0])
                json_object_set_new(kfile, "url", json_string(rq->kernel_url));
        if (ifile && rq->initrd_url[0])
                json_object_set_new(ifile, "url", json_string(rq->initrd_url));
        res->staged = json_pack("{s:o, s:o, s:s, s:s, s:b, s:o, s:o}", "kernel", kfile, "initrd",
                                ifile ? ifile : json_null(), "cmdline", rq->cmdline, "staged_at",
                                format_rfc3339_ms(now_real_usec(), when), "loaded", 1, "signed_by",
                                rq->signed_by[0] ? json_string(rq->signed_by) : json_null(),
                                "previous", previous_kernel(b));
        return res->staged ? 0 : -ENOMEM;
}

void stage_result_done(struct stage_result *res)
{
        json_decref(res->extra);
        json_decref(res->staged);
        res->extra = res->staged = NULL;
}

int staging_check_signature(const struct agent_config *cfg, json_t *sig, struct op_request *rq,
                            const char **ret_code, char *detail, size_t detail_size)
{
        const char *key_id, *b64;
        char msg[4352];
        int n, r;

        if (!sig) {
                if (cfg && cfg->require_signature) {
                        *ret_code = "signature-required";
                        snprintf(detail, detail_size,
                                 "this agent stages only signed requests (--require-signature): "
                                 "add \"signature\" (luofleetctl sign)");
                        return 0;
                }
                return 1;
        }
        key_id = json_string_value(json_object_get(sig, "key_id"));
        b64 = json_string_value(json_object_get(sig, "ed25519"));
        *ret_code = "signature-invalid";
        if (!cfg || !cfg->trusted_keys_dir) {
                snprintf(detail, detail_size,
                         "the request is signed but this agent has no trusted keys "
                         "(--trusted-keys)");
                return 0;
        }
        n = sign_message(rq->kernel_sha256, rq->initrd_sha256, rq->cmdline, msg, sizeof(msg));
        if (n < 0) {
                snprintf(detail, detail_size, "the request cannot be put in canonical form");
                return 0;
        }
        r = sign_verify(cfg->trusted_keys_dir, key_id, b64, msg, (size_t)n);
        switch (r) {
        case 0:
                snprintf(rq->signed_by, sizeof(rq->signed_by), "%s", key_id);
                sig_remember(key_id, rq, b64); /* for the privileged helper's own check */
                return 1;
        case -ENOKEY:
                snprintf(detail, detail_size, "no trusted Ed25519 public key named %s",
                         key_id ? key_id : "?");
                return 0;
        case -EBADMSG:
                snprintf(detail, detail_size,
                         "the signature does not verify with key %s over the kernel and initrd "
                         "digests and the command line",
                         key_id);
                return 0;
        case -EINVAL:
                snprintf(detail, detail_size, "malformed signature or key id");
                return 0;
        default: {
                char eb[16];
                snprintf(detail, detail_size, "cannot read the trusted key %s (%s)", key_id,
                         errno_name(r, eb));
                return 0;
        }
        }
}

/* The running operation's progress, journaled at most every PROGRESS_INTERVAL_USEC. */
struct fetch_ctx {
        struct agent *a;
        const char *field;
        uint64_t last_usec, last_done, last_total;
        bool published;
};

static bool fetch_progress(void *userdata, uint64_t done, uint64_t total)
{
        struct fetch_ctx *f = userdata;
        struct agent *a = f->a;
        uint64_t now = now_mono_usec(), idx = 0;
        bool go;

        agent_lock(a);
        go = !a->shutting_down;
        if (go && a->op_running && a->operation &&
            (!f->published || ((done != f->last_done || total != f->last_total) &&
                               now - f->last_usec >= PROGRESS_INTERVAL_USEC))) {
                json_t *p =
                        json_pack("{s:s, s:I, s:o}", "file", f->field, "bytes", (json_int_t)done,
                                  "total", total ? json_integer((json_int_t)total) : json_null());
                if (p) {
                        json_object_set_new(a->operation, "progress", p);
                        agent_record_op_locked(a, a->operation, 0);
                        idx = a->index;
                }
                f->published = true;
                f->last_usec = now;
                f->last_done = done;
                f->last_total = total;
        }
        agent_unlock(a);
        if (idx)
                agent_notify_index(a, idx);
        return go;
}

/* Remove temporaries a crash left behind (one operation at a time: none is in use). */
static void remove_partials(int dirfd)
{
        int fd = dup(dirfd);
        DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
        struct dirent *de;

        if (!d) {
                if (fd >= 0)
                        close(fd);
                return;
        }
        while ((de = readdir(d)))
                if (strncmp(de->d_name, ".partial-", 9) == 0)
                        (void)unlinkat(dirfd, de->d_name, 0);
        closedir(d);
}

/* Download one file to a temporary in dir; ret_tmp holds its path. 0 ok, else res filled. */
static int fetch_one(struct fetch_ctx *fc, const struct download_opts *o, const char *dir,
                     const char *field, const char *url, const char *sha, char *ret_tmp,
                     size_t tmp_size, uint64_t *ret_size, struct stage_result *res)
{
        struct download_error err;
        _cleanup_close_ int fd = -1;
        int n, r;

        n = snprintf(ret_tmp, tmp_size, "%s/.partial-%s-XXXXXX", dir, field);
        if (n < 0 || (size_t)n >= tmp_size) {
                fail(res, 500, "internal-error", "%s: state directory path too long", field);
                return -1;
        }
        fd = mkostemp(ret_tmp, O_CLOEXEC);
        if (fd < 0) {
                char eb[16];
                r = negative_errno();
                fail(res, 500, "internal-error", "%s: cannot create a file in %s (%s)", field, dir,
                     errno_name(r, eb));
                ret_tmp[0] = 0;
                return -1;
        }
        fc->field = field;
        fc->published = false;
        (void)fetch_progress(fc, 0, 0);
        r = download_to_fd(o, url, fd, sha, fetch_progress, fc, &err, ret_size);
        if (r == 0) {
                fc->published = false;
                (void)fetch_progress(fc, *ret_size, *ret_size);
                return 0;
        }
        (void)unlink(ret_tmp);
        ret_tmp[0] = 0;
        if (r == -EPROTO) {
                fail(res, err.status, err.code, "%s: %s", field, err.detail);
                if (strcmp(err.code, "digest-mismatch") == 0) {
                        char want[65];
                        for (int i = 0; i < 64; i++)
                                want[i] = (char)tolower((unsigned char)sha[i]);
                        want[64] = 0;
                        res->extra = json_pack("{s:s, s:s, s:s}", "field", field, "expected_sha256",
                                               want, "actual_sha256", err.actual_sha256);
                } else if (strcmp(err.code, "download-failed") == 0)
                        res->extra = json_pack(
                                "{s:s, s:o, s:s, s:i}", "field", field, "http_status",
                                err.http_status ? json_integer(err.http_status) : json_null(),
                                "curl_error", err.curl_error, "attempts", (int)err.attempts);
                else
                        res->extra = json_pack("{s:s}", "field", field);
                return -1;
        }
        {
                char eb[16];
                /* The state directory is full: the same answer as a journal that cannot grow. */
                if (r == -ENOSPC || r == -EDQUOT)
                        fail(res, 507, "journal-full", "%s: no room for the download in %s (%s)",
                             field, dir, errno_name(r, eb));
                else
                        fail(res, 500, "internal-error",
                             "%s: cannot write the download into %s (%s)", field, dir,
                             errno_name(r, eb));
                res->err = -r; /* the errno of the problem and of the operation's error */
                res->extra = json_pack("{s:s}", "field", field);
        }
        return -1;
}

/* The staged record's file path of a downloaded file ("" when none or not downloaded). */
static void staged_download_path(json_t *staged, const char *field, char *out, size_t size)
{
        json_t *f = json_object_get(staged, field);
        const char *p = json_string_value(json_object_get(f, "path"));

        out[0] = 0;
        if (p && json_is_string(json_object_get(f, "url")))
                snprintf(out, size, "%s", p);
}

static void lower_hex(char out[65], const char *s)
{
        for (int i = 0; i < 64; i++)
                out[i] = (char)tolower((unsigned char)s[i]);
        out[64] = 0;
}

static int staging_fetch(struct agent *a, struct op_request *rq, struct stage_result *res,
                         bool *ret_new_kernel, bool *ret_new_initrd)
{
        const struct agent_config *cfg = a->cfg;
        struct download_opts o;
        struct fetch_ctx fc = { .a = a };
        char dir[PATH_MAX], ktmp[PATH_MAX] = "", itmp[PATH_MAX] = "", sha[65];
        _cleanup_close_ int dirfd = -1;
        uint64_t ksize = 0, isize = 0;
        int n;

        if (!cfg || !cfg->state_dir) {
                fail(res, 500, "internal-error", "no state directory to download into");
                return -1;
        }
        o = (struct download_opts){ .ca_bundle = cfg->ca_bundle,
                                    .allow_http = cfg->allow_http,
                                    .max_bytes = cfg->download_max_bytes,
                                    .connect_ms = cfg->download_connect_ms,
                                    .timeout_ms = cfg->download_timeout_ms,
                                    .retries = cfg->download_retries,
                                    /* file:/// read beneath the staging directories only,
                                     * at the read itself too (not only at the request) */
                                    .file_dirs = cfg->staging_dirs,
                                    .n_file_dirs = cfg->n_staging_dirs };
        n = snprintf(dir, sizeof(dir), "%s/kernels", cfg->state_dir);
        if (n < 0 || (size_t)n >= sizeof(dir) - 96) {
                fail(res, 500, "internal-error", "state directory path too long");
                return -1;
        }
        if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
                char eb[16];
                int r = negative_errno();
                fail(res, 500, "internal-error", "cannot create %s (%s)", dir, errno_name(r, eb));
                return -1;
        }
        dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dirfd < 0) {
                char eb[16];
                int r = negative_errno();
                fail(res, 500, "internal-error", "cannot open %s (%s)", dir, errno_name(r, eb));
                return -1;
        }
        remove_partials(dirfd);
        if (fetch_one(&fc, &o, dir, "kernel", rq->kernel_url, rq->kernel_sha256, ktmp, sizeof(ktmp),
                      &ksize, res) < 0)
                return -1;
        if (rq->initrd_url[0] &&
            fetch_one(&fc, &o, dir, "initrd", rq->initrd_url, rq->initrd_sha256, itmp, sizeof(itmp),
                      &isize, res) < 0) {
                (void)unlink(ktmp);
                return -1;
        }
        /* Both complete and verified: now under their final, content-addressed names. */
        lower_hex(sha, rq->kernel_sha256);
        n = snprintf(rq->kernel_path, sizeof(rq->kernel_path), "%s/vmlinuz-%s", dir, sha);
        if (n < 0 || (size_t)n >= sizeof(rq->kernel_path))
                goto fail_rename; /* cannot happen: dir was checked to leave room */
        *ret_new_kernel = access(rq->kernel_path, F_OK) < 0;
        if (rename(ktmp, rq->kernel_path) < 0)
                goto fail_rename;
        ktmp[0] = 0;
        if (itmp[0]) {
                lower_hex(sha, rq->initrd_sha256);
                n = snprintf(rq->initrd_path, sizeof(rq->initrd_path), "%s/initrd-%s", dir, sha);
                if (n < 0 || (size_t)n >= sizeof(rq->initrd_path))
                        goto fail_rename;
                *ret_new_initrd = access(rq->initrd_path, F_OK) < 0;
                if (rename(itmp, rq->initrd_path) < 0)
                        goto fail_rename;
        }
        (void)fsync(dirfd);
        return 0;

fail_rename : {
        char eb[16];
        int r = negative_errno();
        if (ktmp[0])
                (void)unlink(ktmp);
        if (itmp[0])
                (void)unlink(itmp);
        if (!ktmp[0] && *ret_new_kernel)
                (void)unlink(rq->kernel_path);
        fail(res, 500, "internal-error", "cannot rename a download into %s (%s)", dir,
             errno_name(r, eb));
        return -1;
}
}

int staging_execute(struct agent *a, struct op_request *rq, struct stage_result *res)
{
        char old_k[PATH_MAX] = "", old_i[PATH_MAX] = "";
        bool new_k = false, new_i = false;
        int r;

        *res = (struct stage_result){ 0 };
        agent_lock(a);
        staged_download_path(a->staged, "kernel", old_k, sizeof(old_k));
        staged_download_path(a->staged, "initrd", old_i, sizeof(old_i));
        agent_unlock(a);

        r = rq->kernel_url[0] ? staging_fetch(a, rq, res, &new_k, &new_i) : 0;
        if (r == 0)
                r = staging_run(a->backend, rq, res);
        else
                r = 0; /* res says why */
        agent_lock(a);
        if (a->operation)
                json_object_del(a->operation, "progress"); /* the end record follows */
        agent_unlock(a);
        if (r < 0 || res->code) {
                /* Nothing staged: what this request brought in goes again. */
                if (new_k && rq->kernel_path[0])
                        (void)unlink(rq->kernel_path);
                if (new_i && rq->initrd_path[0])
                        (void)unlink(rq->initrd_path);
                return r < 0 ? r : 0;
        }
        /* Staged: the downloads it replaces are not needed any more. */
        if (old_k[0] && strcmp(old_k, rq->kernel_path) != 0 && strcmp(old_k, rq->initrd_path) != 0)
                (void)unlink(old_k);
        if (old_i[0] && strcmp(old_i, rq->kernel_path) != 0 && strcmp(old_i, rq->initrd_path) != 0)
                (void)unlink(old_i);
        return 0;
}
