/*
 * privsep.c: privilege separation for the kernel backend (privsep.h,
 * docs/privsep.md). Three parts:
 *   - the wire: fixed-size messages over SOCK_SEQPACKET socketpairs, fds by
 *     SCM_RIGHTS, and the two decoders that check every field before use;
 *   - the helper: a forked process that opens the real backend, keeps only
 *     what it needs (CAP_SYS_BOOT when root), and serves it: command
 *     requests on its main thread, queries and state-change doorbells on a
 *     second thread (the backend's "worker" and "loop" roles of backend.h);
 *   - the proxy: a struct backend whose ops send requests and read replies,
 *     one mutex per channel, so a stalled SET_EVENT (a simulator fault
 *     delay) never holds up a query or the watcher.
 *
 * The helper does not trust the network side's judgement either: it
 * enforces the policy itself (KEXEC_LOAD: the images opened by path inside
 * its own copy of the staging directories, hashed, compared with the
 * digests, the signature verified; REBOOT only while prepared), refusing
 * with a stable errno and a log line (privsep.h, docs/privsep.md).
 *
 * The helper answers a malformed request with -EPROTO and never acts on it
 * (its fds are closed unread): SEQPACKET keeps message boundaries, so one
 * bad datagram cannot desynchronise the stream, and the answer lets the
 * caller fail one operation rather than the whole agent. The proxy treats a
 * malformed reply, or the helper's EOF, as the loss of the helper: the
 * outcome of what was in flight is unknown, so the hook (main.c) ends the
 * process and the next start reconciles with the kernel.
 *
 * Logging: only the helper side logs (it is a program's main loop, and the
 * operator must hear of a rejected request); the proxy returns -errno.
 * Lock order (proxy): cmd_lock and query_lock are never held together.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/prctl.h>
#include <linux/securebits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/fsuid.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <grp.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "backend-private.h"
#include "luofleet/backend.h"
#include "luofleet/log.h"
#include "luofleet/macro.h"
#include "luofleet/privsep.h"
#include "luofleet/scm.h"
#include "luofleet/sign.h"
#include "luofleet/stagepath.h"
#include "luofleet/util.h"

#define ERRNO_MAX 4095

/* No padding anywhere: every byte is a field, so "unused fields are zero" covers them all. */
_Static_assert(sizeof(struct privsep_load) == 8504, "privsep_load layout");
_Static_assert(sizeof(struct privsep_req) == 2080 + 8504, "privsep_req layout");
_Static_assert(sizeof(((struct privsep_load *)0)->key_id) > SIGN_KEY_ID_MAX, "key ids fit");
_Static_assert(sizeof(((struct privsep_load *)0)->signature) > SIGN_B64_LEN, "signatures fit");
_Static_assert(sizeof(struct privsep_reply) == 744, "privsep_reply layout");

static const char *const type_names[_PRIVSEP_TYPE_MAX] = {
        [PRIVSEP_HELLO] = "HELLO",
        [PRIVSEP_GET_STATE] = "GET_STATE",
        [PRIVSEP_KEXEC_LOADED] = "KEXEC_LOADED",
        [PRIVSEP_GET_INFO] = "GET_INFO",
        [PRIVSEP_SELF_CHECK] = "SELF_CHECK",
        [PRIVSEP_SET_EVENT] = "SET_EVENT",
        [PRIVSEP_KEXEC_LOAD] = "KEXEC_LOAD",
        [PRIVSEP_KEXEC_UNLOAD] = "KEXEC_UNLOAD",
        [PRIVSEP_REBOOT] = "REBOOT",
        [PRIVSEP_STATE_CHANGED] = "STATE_CHANGED",
        [PRIVSEP_OPEN_CONFIG] = "OPEN_CONFIG",
        [PRIVSEP_OPEN_STAGING] = "OPEN_STAGING",
        [PRIVSEP_UNLINK_SOCKET] = "UNLINK_SOCKET",
        [PRIVSEP_SET_EVENT_EX] = "SET_EVENT_EX",
        [PRIVSEP_REBOOT_EX] = "REBOOT_EX",
        [PRIVSEP_SESSIONS] = "SESSIONS",
};

const char *privsep_type_to_string(enum privsep_type t)
{
        if ((unsigned)t >= _PRIVSEP_TYPE_MAX)
                return NULL;
        return type_names[t];
}

/* ---- the wire ------------------------------------------------------------- */

static bool all_zero(const void *p, size_t n)
{
        const unsigned char *c = p;

        for (size_t i = 0; i < n; i++)
                if (c[i])
                        return false;
        return true;
}

/* The channel a request type travels on; -1 for what is not a request. */
static int req_chan(uint16_t type)
{
        switch (type) {
        case PRIVSEP_GET_STATE:
        case PRIVSEP_KEXEC_LOADED:
        case PRIVSEP_GET_INFO:
        case PRIVSEP_SELF_CHECK:
        case PRIVSEP_OPEN_CONFIG:
        case PRIVSEP_OPEN_STAGING:
        case PRIVSEP_UNLINK_SOCKET:
        case PRIVSEP_SESSIONS:
                return PRIVSEP_CHAN_QUERY;
        case PRIVSEP_SET_EVENT:
        case PRIVSEP_KEXEC_LOAD:
        case PRIVSEP_KEXEC_UNLOAD:
        case PRIVSEP_REBOOT:
        case PRIVSEP_SET_EVENT_EX:
        case PRIVSEP_REBOOT_EX:
                return PRIVSEP_CHAN_CMD;
        default:
                return -1;
        }
}

int privsep_req_fds(uint16_t type, uint32_t arg)
{
        (void)arg; /* KEXEC_LOAD carries paths: the helper opens the images itself */
        if (req_chan(type) < 0)
                return -1;
        return 0;
}

int privsep_reply_fds(uint16_t type, int32_t result)
{
        if ((type == PRIVSEP_OPEN_CONFIG || type == PRIVSEP_OPEN_STAGING ||
             type == PRIVSEP_SESSIONS) &&
            result == 0)
                return 1;
        return 0;
}

/* exactly len bytes without a NUL, then NUL bytes to the end */
static bool text_ok(const char *text, uint32_t len)
{
        return len < PRIVSEP_CMDLINE_MAX && memchr(text, 0, len) == NULL &&
               all_zero(text + len, PRIVSEP_CMDLINE_MAX - len);
}

/* A note for the marker: text_ok, short, printable ASCII only. */
static bool note_ok(const char *text, uint32_t len)
{
        if (len > PRIVSEP_NOTE_MAX || !text_ok(text, len))
                return false;
        for (uint32_t i = 0; i < len; i++)
                if (text[i] < 0x20 || text[i] > 0x7e)
                        return false;
        return true;
}

/* A string terminated within its field and followed by zeros only: its length, or -1. */
static ssize_t field_len(const char *s, size_t size)
{
        const char *nul = memchr(s, 0, size);

        if (!nul || !all_zero(nul, size - (size_t)(nul - s)))
                return -1;
        return nul - s;
}

/* A SHA-256 digest as KEXEC_LOAD carries it: exactly 64 lower-case hex digits, then zeros. */
static bool digest_ok(const char *s, size_t size)
{
        if (field_len(s, size) != 64)
                return false;
        for (size_t i = 0; i < 64; i++)
                if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
                        return false;
        return true;
}

/* An image's path: terminated, zero tail, absolute (the helper applies the rest). */
static bool path_ok(const char *s, size_t size)
{
        return field_len(s, size) > 0 && s[0] == '/';
}

/* Standard base64 of 64 bytes: 88 characters of the alphabet (the last two '='). */
static bool b64_sig_ok(const char *s, size_t size)
{
        if (field_len(s, size) != SIGN_B64_LEN)
                return false;
        for (size_t i = 0; i < SIGN_B64_LEN; i++) {
                char c = s[i];
                if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                      c == '+' || c == '/' || c == '='))
                        return false;
        }
        return true;
}

/* KEXEC_LOAD's load block: the form of every field (the policy is the helper's). */
static bool load_ok(const struct privsep_req *q)
{
        const struct privsep_load *l = &q->load;

        if (!path_ok(l->kernel_path, sizeof(l->kernel_path)) ||
            !digest_ok(l->kernel_sha256, sizeof(l->kernel_sha256)))
                return false;
        if (q->arg == 1) {
                if (!path_ok(l->initrd_path, sizeof(l->initrd_path)) ||
                    !digest_ok(l->initrd_sha256, sizeof(l->initrd_sha256)))
                        return false;
        } else if (!all_zero(l->initrd_path, sizeof(l->initrd_path)) ||
                   !all_zero(l->initrd_sha256, sizeof(l->initrd_sha256)))
                return false;
        if (l->key_id[0] == 0)
                return all_zero(l->key_id, sizeof(l->key_id)) &&
                       all_zero(l->signature, sizeof(l->signature));
        return field_len(l->key_id, sizeof(l->key_id)) > 0 && sign_key_id_valid(l->key_id) &&
               b64_sig_ok(l->signature, sizeof(l->signature));
}

/* The longest confirmation timeout SET_EVENT_EX carries: a day. */
#define EX_TIMEOUT_MAX_MS (24u * 3600u * 1000u)

int privsep_req_decode(const void *buf, size_t len, int flags, size_t n_fds, enum privsep_chan chan,
                       uint64_t want_seq, struct privsep_req *ret)
{
        struct privsep_req q;

        if (!buf || len != sizeof(q) || (flags & (MSG_TRUNC | MSG_CTRUNC)))
                return -EPROTO;
        memcpy(&q, buf, sizeof(q));
        if (q.magic != PRIVSEP_MAGIC || q.version != PRIVSEP_VERSION || q.seq != want_seq)
                return -EPROTO;
        if (req_chan(q.type) < 0 || req_chan(q.type) != (int)chan)
                return -EPROTO;

        switch (q.type) {
        case PRIVSEP_SET_EVENT:
                /* FREEZE never travels: only the reboot call freezes. */
                if (q.arg != LUO_EVENT_PREPARE && q.arg != LUO_EVENT_CANCEL &&
                    q.arg != LUO_EVENT_FINISH)
                        return -EPROTO;
                break;
        case PRIVSEP_KEXEC_LOAD:
                if (q.arg > 1)
                        return -EPROTO;
                break;
        case PRIVSEP_OPEN_CONFIG:
                if (q.arg >= _PRIVSEP_CONFIG_MAX)
                        return -EPROTO;
                break;
        case PRIVSEP_UNLINK_SOCKET:
                if (q.arg >= PRIVSEP_MAX_SOCKETS)
                        return -EPROTO;
                break;
        case PRIVSEP_SET_EVENT_EX:
                if (q.arg != LUO_EVENT_PREPARE && q.arg != LUO_EVENT_CANCEL &&
                    q.arg != LUO_EVENT_FINISH)
                        return -EPROTO;
                if ((q.arg2 & ~(PRIVSEP_EX_TIMEOUT_MASK | PRIVSEP_EX_FORCE)) ||
                    (q.arg2 & PRIVSEP_EX_TIMEOUT_MASK) > EX_TIMEOUT_MAX_MS)
                        return -EPROTO;
                break;
        default:
                if (q.arg != 0)
                        return -EPROTO;
        }
        /* arg2 is SET_EVENT_EX's and SESSIONS' only. */
        if (q.arg2 != 0 && q.type != PRIVSEP_SET_EVENT_EX && q.type != PRIVSEP_SESSIONS)
                return -EPROTO;
        if ((int)n_fds != privsep_req_fds(q.type, q.arg))
                return -EPROTO;

        if (q.type == PRIVSEP_KEXEC_LOAD) {
                /* Exactly cmdline_len bytes without a NUL, the NUL, then zeros. */
                if (!text_ok(q.cmdline, q.cmdline_len) || !load_ok(&q))
                        return -EPROTO;
        } else if (!all_zero(&q.load, sizeof(q.load)))
                return -EPROTO;
        else if (q.type == PRIVSEP_OPEN_STAGING) {
                /* A path: the same, and not empty (the helper checks the rest). */
                if (q.cmdline_len == 0 || !text_ok(q.cmdline, q.cmdline_len))
                        return -EPROTO;
        } else if (q.type == PRIVSEP_SET_EVENT_EX || q.type == PRIVSEP_REBOOT_EX) {
                if (!note_ok(q.cmdline, q.cmdline_len))
                        return -EPROTO;
        } else if (q.cmdline_len != 0 || !all_zero(q.cmdline, sizeof(q.cmdline)))
                return -EPROTO;

        *ret = q;
        return 0;
}

enum {
        F_STATE = 1u << 0,
        F_STATE2 = 1u << 1,
        F_FLAG = 1u << 2,
        F_NAME = 1u << 3,
        F_INFO = 1u << 4,
        F_MSG = 1u << 5,
        F_SIZE = 1u << 6,
};

/* The fields a reply of this type carries (the others must be zero). */
static unsigned reply_fields(uint16_t type, int32_t result)
{
        if (type == PRIVSEP_HELLO)
                return result < 0 ? F_MSG : F_NAME | F_INFO | F_MSG | F_FLAG;
        if (type == PRIVSEP_SET_EVENT_EX || type == PRIVSEP_REBOOT_EX)
                return result < 0 ? F_MSG : 0;
        if (result < 0 && type != PRIVSEP_SELF_CHECK)
                return 0;
        switch (type) {
        case PRIVSEP_GET_STATE:
        case PRIVSEP_STATE_CHANGED:
                return F_STATE;
        case PRIVSEP_KEXEC_LOADED:
                return F_FLAG;
        case PRIVSEP_GET_INFO:
                return F_INFO;
        case PRIVSEP_SELF_CHECK:
                return F_STATE | F_STATE2;
        case PRIVSEP_SESSIONS:
                return F_SIZE;
        default:
                return 0;
        }
}

static bool str_ok(const char *s, size_t size, bool used)
{
        const char *nul = memchr(s, 0, size);

        if (!nul)
                return false;
        /* Nothing after the terminator; an unused field is all zeros. */
        if (!all_zero(nul, size - (size_t)(nul - s)))
                return false;
        return used || nul == s;
}

int privsep_reply_decode(const void *buf, size_t len, int flags, size_t n_fds, uint16_t want_type,
                         uint64_t want_seq, struct privsep_reply *ret)
{
        struct privsep_reply p;
        unsigned f;

        if (!buf || len != sizeof(p) || (flags & (MSG_TRUNC | MSG_CTRUNC)) || n_fds > 1)
                return -EPROTO;
        memcpy(&p, buf, sizeof(p));
        if (p.magic != PRIVSEP_MAGIC || p.version != PRIVSEP_VERSION || p.type != want_type ||
            p.seq != want_seq)
                return -EPROTO;
        if (p.result > 0 || p.result < -ERRNO_MAX)
                return -EPROTO;
        if ((int)n_fds != privsep_reply_fds(p.type, p.result))
                return -EPROTO;
        f = reply_fields(p.type, p.result);
        if ((!(f & F_STATE) && p.state != 0) || p.state >= _LUO_STATE_MAX)
                return -EPROTO;
        if ((!(f & F_STATE2) && p.state2 != 0) || p.state2 >= _LUO_STATE_MAX)
                return -EPROTO;
        if ((!(f & F_FLAG) && p.flag != 0) || p.flag > 1)
                return -EPROTO;
        if (!(f & F_INFO) && p.uptime_ms != 0)
                return -EPROTO;
        if ((!(f & F_SIZE) && p.size != 0) || p.size > PRIVSEP_SESSIONS_MAX)
                return -EPROTO;
        if (!str_ok(p.name, sizeof(p.name), f & F_NAME) ||
            !str_ok(p.boot_id, sizeof(p.boot_id), f & F_INFO) ||
            !str_ok(p.release, sizeof(p.release), f & F_INFO) ||
            !str_ok(p.msg, sizeof(p.msg), f & F_MSG))
                return -EPROTO;
        if (f & F_NAME) {
                int k = backend_kind_from_string(p.name);
                if (k < 0 || k == BACKEND_AUTO)
                        return -EPROTO;
        }
        if ((f & F_INFO) && (!uuid_valid(p.boot_id) || p.release[0] == 0))
                return -EPROTO;
        *ret = p;
        return 0;
}

static void close_fds(int *fds, size_t n)
{
        for (size_t i = 0; i < n; i++)
                if (fds[i] >= 0) {
                        close(fds[i]);
                        fds[i] = -1;
                }
}

_Static_assert(PRIVSEP_MAX_FDS == SCM_MAX_FDS, "privsep's fd arrays are scm.h's");

ssize_t privsep_recv(int fd, void *buf, size_t size, int *ret_flags, int fds[PRIVSEP_MAX_FDS],
                     size_t *ret_n_fds, bool nonblock)
{
        return scm_recv(fd, buf, size, nonblock, fds, ret_n_fds, ret_flags);
}

int privsep_send(int fd, const void *buf, size_t len, const int *fds, size_t n_fds, bool nonblock)
{
        return scm_send(fd, buf, len, fds, n_fds, nonblock);
}

static void reply_init(struct privsep_reply *p, uint16_t type, uint64_t seq)
{
        memset(p, 0, sizeof(*p));
        p->magic = PRIVSEP_MAGIC;
        p->version = PRIVSEP_VERSION;
        p->type = type;
        p->seq = seq;
}

static void copy_str(char *dst, size_t size, const char *src)
{
        size_t n = src ? strnlen(src, size - 1) : 0;

        memset(dst, 0, size);
        if (n)
                memcpy(dst, src, n);
}

/* ---- the helper ----------------------------------------------------------- */

struct helper {
        struct backend *b;
        int fds[_PRIVSEP_CHAN_MAX];
        int stop_fd;
        uint64_t ev_seq;
        /*
         * The helper process: end at once when the network side hangs up,
         * even with a command in flight. Its parent-death signal cannot be
         * relied on: a network process that dropped to --user may not
         * signal a uid 0 helper, and the kernel checks that.
         */
        bool exit_on_hangup;
        const struct privsep_files *files; /* OPEN_CONFIG, OPEN_STAGING, UNLINK_SOCKET */
        /*
         * A helper whose broker holds workloads' sessions outlives its network
         * process and waits for the next one on this listening socket (-1:
         * never). Not after a reboot went through (the simulated kexec: this
         * boot is over, a new helper opens the new one).
         */
        int rendezvous_fd;
        atomic_bool rebooted;
};

/* Does the helper stay when its network process is gone? */
static bool helper_survives(struct helper *h)
{
        return h->rendezvous_fd >= 0 && !atomic_load(&h->rebooted) && broker_holds(h->b);
}

/*
 * The query thread's file system identity (setfsuid(2) and setfsgid(2)
 * change the calling thread's only, so the command thread's simulator
 * writes keep the run user's). Switching between ids the process already
 * has needs no capability. A change clears the thread's parent-death
 * signal: armed again.
 */
/* The helper process dies with its network process (no rendezvous: it never outlives it). */
static bool helper_pdeath = true;

static int helper_fs_identity(uid_t uid, gid_t gid)
{
        (void)setfsgid(gid);
        (void)setfsuid(uid);
        if (helper_pdeath)
                (void)prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
        if ((gid_t)setfsgid((gid_t)-1) != gid || (uid_t)setfsuid((uid_t)-1) != uid)
                return -EPERM;
        return 0;
}

/* One of the configured files: followed if a symlink (deploy tools use them), regular. */
static int helper_open_config(const char *path)
{
        struct stat st;
        int fd;

        if (!path)
                return -ENOENT;
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (fd < 0)
                return negative_errno();
        if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
                int r = fstat(fd, &st) == 0 && S_ISDIR(st.st_mode) ? -EISDIR : -EINVAL;
                close(fd);
                return r;
        }
        return fd;
}

/*
 * A Unix listener's file, at the stop: only a socket is ever removed. Its directory is
 * opened once (O_PATH, not following a link in its place) and both the check and the
 * unlink are relative to it, so a directory swapped for a link in between (the run user
 * owns /run/luofleet) cannot point the unlink at another directory; what remains is the
 * name inside that one directory, which holds only the agent's sockets.
 */
static int helper_unlink_socket(const char *path)
{
        _cleanup_close_ int dfd = -1;
        char dir[PATH_MAX];
        const char *slash, *name;
        struct stat st;

        if (!path || path[0] != '/')
                return -ENOENT;
        slash = strrchr(path, '/');
        name = slash + 1;
        if (!*name || (size_t)(slash - path) >= sizeof(dir))
                return -EINVAL;
        memcpy(dir, path, (size_t)(slash - path));
        dir[slash - path] = 0;
        dfd = open(dir[0] ? dir : "/", O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (dfd < 0)
                return negative_errno();
        if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
                return negative_errno();
        if (!S_ISSOCK(st.st_mode))
                return -ENOTSOCK;
        return unlinkat(dfd, name, 0) < 0 ? negative_errno() : 0;
}

static int helper_file_op(const struct privsep_files *files, const struct privsep_req *q)
{
        switch (q->type) {
        case PRIVSEP_OPEN_CONFIG:
                return helper_open_config(files->config[q->arg]);
        case PRIVSEP_OPEN_STAGING:
                return stagepath_open(q->cmdline, files->staging_dirs, files->n_staging_dirs);
        case PRIVSEP_UNLINK_SOCKET:
                return helper_unlink_socket(files->sockets[q->arg]);
        default:
                return -EPROTO;
        }
}

int privsep_helper_file_request(const struct privsep_files *files, const struct privsep_req *q)
{
        int r, k;

        /* The decoder's checks again: this is reachable from the tests directly. */
        if (!q || (q->type == PRIVSEP_OPEN_CONFIG && q->arg >= _PRIVSEP_CONFIG_MAX) ||
            (q->type == PRIVSEP_UNLINK_SOCKET && q->arg >= PRIVSEP_MAX_SOCKETS) ||
            (q->type == PRIVSEP_OPEN_STAGING && memchr(q->cmdline, 0, sizeof(q->cmdline)) == NULL))
                return -EPROTO;
        if (!files)
                return q->type == PRIVSEP_OPEN_STAGING ? -EXDEV : -ENOENT;
        if (!files->fs_root)
                return helper_file_op(files, q);
        /*
         * Root's files first (a 0600 key in a 0700 root directory: uid 0 owns
         * them, no capability needed), then, when denied, as the run user (a
         * file that user owns and root's mode bits do not cover).
         */
        r = helper_fs_identity(0, 0);
        if (r >= 0) {
                r = helper_file_op(files, q);
                if (r == -EACCES) {
                        k = helper_fs_identity(files->user_uid, files->user_gid);
                        if (k < 0)
                                return k; /* cannot happen; the caller ends the helper */
                        return helper_file_op(files, q);
                }
        }
        k = helper_fs_identity(files->user_uid, files->user_gid);
        if (k < 0) {
                if (r >= 0 && q->type != PRIVSEP_UNLINK_SOCKET)
                        close(r);
                return k;
        }
        return r;
}

/* ---- the helper's policy (privsep.h, docs/privsep.md "What the helper checks itself") ---- */

/*
 * Run fn with root's file system identity first, then, on EACCES, the run
 * user's (like the file requests), and give the calling thread back the
 * identity it had: the command thread's is the simulator's run user or, for
 * the real backends, root's (luo-sessions opens /dev/liveupdate at every
 * session). fn returns a descriptor (closed again if the identity cannot be
 * restored; the caller then ends the helper) or -errno.
 */
static int helper_as_root(const struct privsep_files *files, int (*fn)(const void *),
                          const void *arg, bool returns_fd)
{
        uid_t uid;
        gid_t gid;
        int r, k;

        if (!files->fs_root)
                return fn(arg);
        uid = (uid_t)setfsuid((uid_t)-1);
        gid = (gid_t)setfsgid((gid_t)-1);
        r = helper_fs_identity(0, 0);
        if (r >= 0) {
                r = fn(arg);
                if (r == -EACCES) {
                        k = helper_fs_identity(files->user_uid, files->user_gid);
                        r = k < 0 ? k : fn(arg);
                }
        }
        k = helper_fs_identity(uid, gid);
        if (k < 0) {
                if (r >= 0 && returns_fd)
                        close(r);
                return k;
        }
        return r;
}

int privsep_helper_cmdline_check(const char *cmdline, char *why, size_t why_size)
{
        size_t n = cmdline ? strnlen(cmdline, PRIVSEP_CMDLINE_MAX) : 0;

        if (n >= PRIVSEP_CMDLINE_MAX) {
                backend_msgf(why, why_size, "the command line is longer than %d bytes",
                             PRIVSEP_CMDLINE_MAX - 1);
                return -EINVAL;
        }
        /*
         * Printable ASCII: what a kernel command line is made of. A control
         * character (a newline, an escape) would only serve to confuse whoever
         * reads it back in a log, /proc/cmdline or the journal.
         */
        for (size_t i = 0; i < n; i++)
                if ((unsigned char)cmdline[i] < 0x20 || (unsigned char)cmdline[i] > 0x7e) {
                        backend_msgf(why, why_size,
                                     "the command line has a byte 0x%02x at offset %zu: only "
                                     "printable ASCII is loaded",
                                     (unsigned char)cmdline[i], i);
                        return -EINVAL;
                }
        return 0;
}

struct verify_args {
        const char *dir, *key_id, *sig, *msg;
        size_t len;
};

static int helper_verify(const void *userdata)
{
        const struct verify_args *v = userdata;
        return sign_verify(v->dir, v->key_id, v->sig, v->msg, v->len);
}

int privsep_helper_signature_check(const struct privsep_files *files, const struct privsep_req *q,
                                   char *why, size_t why_size)
{
        const struct privsep_load *l = &q->load;
        char msg[PRIVSEP_CMDLINE_MAX + 512];
        struct verify_args v;
        int n, r;

        if (!files || !files->trusted_keys_dir) {
                if (files && files->require_signature) {
                        backend_msgf(why, why_size,
                                     "signatures are required but no trusted key is configured "
                                     "(--trusted-keys)");
                        return -EKEYREJECTED;
                }
                return 0; /* nothing to verify with: the network side refused a signed request */
        }
        if (!l->key_id[0]) {
                if (!files->require_signature)
                        return 0;
                backend_msgf(why, why_size,
                             "the kernel is not signed and this agent loads only signed kernels "
                             "(--require-signature)");
                return -EKEYREJECTED;
        }
        n = sign_message(l->kernel_sha256, q->arg == 1 ? l->initrd_sha256 : NULL, q->cmdline, msg,
                         sizeof(msg));
        if (n < 0) {
                backend_msgf(why, why_size, "the request cannot be put in canonical form");
                return -EKEYREJECTED;
        }
        v = (struct verify_args){ .dir = files->trusted_keys_dir,
                                  .key_id = l->key_id,
                                  .sig = l->signature,
                                  .msg = msg,
                                  .len = (size_t)n };
        r = helper_as_root(files, helper_verify, &v, false);
        if (r == 0)
                return 0;
        if (r == -ENOKEY)
                backend_msgf(why, why_size, "no trusted Ed25519 public key named %s", l->key_id);
        else if (r == -EBADMSG)
                backend_msgf(why, why_size,
                             "the signature does not verify with key %s over the kernel and "
                             "initrd digests and the command line",
                             l->key_id);
        else
                backend_msgf(why, why_size, "cannot check the signature with key %s: %s", l->key_id,
                             strerror(-r));
        return -EKEYREJECTED;
}

int privsep_helper_reboot_check(struct backend *b, char *why, size_t why_size)
{
        enum luo_state s = LUO_STATE_UNDEFINED;
        int r = b->ops->get_state(b, &s);

        if (r < 0) {
                backend_msgf(why, why_size, "cannot read the kernel's state: %s", strerror(-r));
                return r;
        }
        /*
         * Prepared: the update's own reboot. Frozen: the same reboot tried again
         * after the kexec failed past the freeze (v3 and the simulator stay
         * frozen then; luo-sessions never reads frozen outside the call). From
         * anywhere else the kernel would do a plain kexec that nobody prepared.
         */
        if (s == LUO_STATE_PREPARED || s == LUO_STATE_FROZEN)
                return 0;
        backend_msgf(why, why_size,
                     "the kernel is %s, not prepared: a reboot now would be a kexec no update "
                     "prepared",
                     luo_state_to_string(s) ? luo_state_to_string(s) : "in an unknown state");
        return -EPERM;
}

struct stage_args {
        const char *path;
        const struct privsep_files *files;
};

static int helper_stage_open(const void *userdata)
{
        const struct stage_args *a = userdata;
        return stagepath_open(a->path, a->files->staging_dirs, a->files->n_staging_dirs);
}

/* SHA-256 of the whole file at fd into hex; with out_fd >= 0 a copy of every byte hashed. */
static int helper_hash(int fd, int out_fd, char hex[static 65])
{
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        _cleanup_free_ uint8_t *buf = malloc(65536);
        uint8_t md[32];
        unsigned md_len = 0;
        uint64_t total = 0;
        int r = 0;

        if (!ctx || !buf) {
                EVP_MD_CTX_free(ctx);
                return -ENOMEM;
        }
        if (EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
                r = -EIO;
                goto out;
        }
        for (;;) {
                ssize_t n = pread(fd, buf, 65536, (off_t)total);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0) {
                        r = negative_errno();
                        goto out;
                }
                if (n == 0)
                        break;
                total += (uint64_t)n;
                if (total > PRIVSEP_IMAGE_MAX) {
                        r = -EFBIG;
                        goto out;
                }
                if (EVP_DigestUpdate(ctx, buf, (size_t)n) != 1) {
                        r = -EIO;
                        goto out;
                }
                if (out_fd >= 0) {
                        r = write_all(out_fd, buf, (size_t)n);
                        if (r < 0)
                                goto out;
                }
        }
        if (EVP_DigestFinal_ex(ctx, md, &md_len) != 1 || md_len != 32) {
                r = -EIO;
                goto out;
        }
        hex_encode(md, 32, hex);
out:
        EVP_MD_CTX_free(ctx);
        return r;
}

/*
 * A sealed memfd holding a copy of fd's bytes (hashed into hex on the way),
 * reopened read-only: kexec_file_load() refuses a file someone may still
 * write (ETXTBSY), and the memfd_create() descriptor is a writer.
 */
static int helper_sealed_copy(int fd, const char *name, char hex[static 65])
{
        _cleanup_close_ int mfd = -1;
        char proc[64];
        int r, ro;

        mfd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (mfd < 0)
                return negative_errno();
        r = helper_hash(fd, mfd, hex);
        if (r < 0)
                return r;
        if (fcntl(mfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0)
                return negative_errno();
        snprintf(proc, sizeof(proc), "/proc/self/fd/%d", mfd);
        ro = open(proc, O_RDONLY | O_CLOEXEC);
        /* No /proc: the sealed memfd itself (the kernel may say ETXTBSY: a failure, not a hole). */
        return ro >= 0 ? ro : TAKE_FD(mfd);
}

int privsep_helper_kexec_open(const struct privsep_files *files, const struct privsep_req *q,
                              unsigned which, char *why, size_t why_size)
{
        const struct privsep_load *l = &q->load;
        const char *field = which ? "initrd" : "kernel";
        const char *path = which ? l->initrd_path : l->kernel_path;
        const char *want = which ? l->initrd_sha256 : l->kernel_sha256;
        _cleanup_close_ int fd = -1;
        struct stage_args a = { .path = path, .files = files };
        struct stat st;
        char got[65];
        bool copy;
        int r;

        if (memchr(path, 0, PRIVSEP_PATH_MAX) == NULL || memchr(want, 0, 72) == NULL) {
                backend_msgf(why, why_size, "the %s's path or digest is not terminated", field);
                return -EPROTO;
        }
        if (!files || files->n_staging_dirs == 0) {
                backend_msgf(why, why_size, "the %s %s: no staging directory is configured", field,
                             path);
                return -EXDEV;
        }
        fd = helper_as_root(files, helper_stage_open, &a, true);
        if (fd == -STAGEPATH_NOT_ALLOWED) {
                backend_msgf(why, why_size,
                             "the %s %s is not inside a staging directory (symbolic links are not "
                             "followed) or "
                             "not a valid path",
                             field, path);
                return fd;
        }
        if (fd == -STAGEPATH_NOT_REGULAR) {
                backend_msgf(why, why_size, "the %s %s is not a regular file", field, path);
                return fd;
        }
        if (fd < 0) {
                backend_msgf(why, why_size, "cannot open the %s %s: %s", field, path,
                             strerror(-fd));
                return fd;
        }
        if (fstat(fd, &st) < 0) {
                r = negative_errno();
                backend_msgf(why, why_size, "cannot stat the %s %s: %s", field, path, strerror(-r));
                return r;
        }
        /*
         * Only root can change a file root owns that neither group nor others
         * may write: the kernel reads what was hashed. Anyone else's (the run
         * user's downloads in STATE_DIR/kernels: the network process could
         * rewrite them between this check and the kernel's read) is loaded
         * from a sealed copy of exactly the bytes hashed.
         */
        copy = st.st_uid != 0 || (st.st_mode & (S_IWGRP | S_IWOTH));
        if (copy) {
                r = helper_sealed_copy(fd, which ? "luofleet-initrd" : "luofleet-kernel", got);
                if (r >= 0) {
                        close(fd);
                        fd = r;
                }
        } else
                r = helper_hash(fd, -1, got);
        if (r < 0) {
                backend_msgf(why, why_size, "cannot read the %s %s: %s", field, path, strerror(-r));
                return r;
        }
        if (strcmp(got, want) != 0) {
                backend_msgf(why, why_size, "the %s %s has SHA-256 %s, not %s", field, path, got,
                             want);
                return -EBADMSG;
        }
        return TAKE_FD(fd);
}

/* KEXEC_LOAD: the command line, the signature, each image opened, hashed and compared. */
static int helper_kexec_load(struct helper *h, const struct privsep_req *q, char *why,
                             size_t why_size)
{
        _cleanup_close_ int kfd = -1, ifd = -1;
        int r;

        r = privsep_helper_cmdline_check(q->cmdline, why, why_size);
        if (r < 0)
                return r;
        /* The signature first: it is cheap, and it vouches for the digests compared next. */
        r = privsep_helper_signature_check(h->files, q, why, why_size);
        if (r < 0)
                return r;
        kfd = privsep_helper_kexec_open(h->files, q, 0, why, why_size);
        if (kfd < 0)
                return kfd;
        if (q->arg == 1) {
                ifd = privsep_helper_kexec_open(h->files, q, 1, why, why_size);
                if (ifd < 0)
                        return ifd;
        }
        why[0] = 0; /* from here on, the kernel's answer: not a refusal of ours */
        return h->b->ops->kexec_load(h->b, kfd, ifd, q->cmdline);
}

/* The broker's document in a sealed memfd (the reply's descriptor). */
static int helper_sessions(struct backend *b, uint64_t since, struct privsep_reply *p, int *ret_fd)
{
        _cleanup_free_ char *text = NULL;
        _cleanup_close_ int fd = -1;
        size_t len = 0;
        int r;

        if (!b->ops->sessions_json)
                return -EOPNOTSUPP;
        r = b->ops->sessions_json(b, since, &text, &len);
        if (r < 0)
                return r;
        if (len > PRIVSEP_SESSIONS_MAX)
                return -EFBIG;
        fd = memfd_create("luofleet-sessions", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd < 0)
                return negative_errno();
        r = write_all(fd, text, len);
        if (r < 0)
                return r;
        if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0)
                return negative_errno();
        p->size = len;
        *ret_fd = TAKE_FD(fd);
        return 0;
}

static void helper_event_opts(const struct privsep_req *q, struct backend_event_opts *o)
{
        memset(o, 0, sizeof(*o));
        o->confirm_timeout_ms = (uint32_t)(q->arg2 & PRIVSEP_EX_TIMEOUT_MASK);
        o->force = (q->arg2 & PRIVSEP_EX_FORCE) != 0;
        /* The decoder let through at most PRIVSEP_NOTE_MAX printable bytes. */
        memcpy(o->note, q->cmdline, MIN((size_t)q->cmdline_len, sizeof(o->note) - 1));
}

static void helper_execute(struct helper *h, const struct privsep_req *q, struct privsep_reply *p,
                           int *ret_fd)
{
        struct backend_event_opts opts;
        struct backend *b = h->b;
        struct backend_info info;
        enum luo_state s = LUO_STATE_UNDEFINED, s2 = LUO_STATE_UNDEFINED;
        char why[PRIVSEP_MSG_MAX] = ""; /* a refusal of the helper's own: the reason */
        bool loaded = false;
        int r;

        switch (q->type) {
        case PRIVSEP_GET_STATE:
                r = b->ops->get_state(b, &s);
                if (r >= 0)
                        p->state = (uint32_t)s;
                break;
        case PRIVSEP_KEXEC_LOADED:
                r = b->ops->kexec_loaded(b, &loaded);
                if (r >= 0)
                        p->flag = loaded;
                break;
        case PRIVSEP_GET_INFO:
                r = b->ops->get_info(b, &info);
                if (r >= 0) {
                        copy_str(p->boot_id, sizeof(p->boot_id), info.boot_id);
                        copy_str(p->release, sizeof(p->release), info.release);
                        p->uptime_ms = info.uptime_ms;
                }
                break;
        case PRIVSEP_SELF_CHECK:
                r = b->ops->self_check(b, &s, &s2);
                if (r >= 0 || r == -EPROTO) {
                        p->state = (uint32_t)s;
                        p->state2 = (uint32_t)s2;
                }
                break;
        case PRIVSEP_SET_EVENT:
                r = b->ops->set_event(b, (enum luo_event)q->arg);
                break;
        case PRIVSEP_KEXEC_LOAD:
                r = helper_kexec_load(h, q, why, sizeof(why));
                break;
        case PRIVSEP_KEXEC_UNLOAD:
                r = b->ops->kexec_unload(b);
                break;
        case PRIVSEP_REBOOT:
                r = privsep_helper_reboot_check(b, why, sizeof(why));
                if (r >= 0)
                        r = b->ops->reboot(b);
                if (r >= 0)
                        atomic_store(&h->rebooted, true);
                break;
        case PRIVSEP_OPEN_CONFIG:
        case PRIVSEP_OPEN_STAGING:
                r = privsep_helper_file_request(h->files, q);
                if (r >= 0) {
                        *ret_fd = r;
                        r = 0;
                }
                break;
        case PRIVSEP_UNLINK_SOCKET:
                r = privsep_helper_file_request(h->files, q);
                break;
        case PRIVSEP_SET_EVENT_EX:
                helper_event_opts(q, &opts);
                r = b->ops->set_event_ex ? b->ops->set_event_ex(b, (enum luo_event)q->arg, &opts,
                                                                p->msg, sizeof(p->msg))
                                         : -EOPNOTSUPP;
                break;
        case PRIVSEP_REBOOT_EX:
                helper_event_opts(q, &opts);
                r = privsep_helper_reboot_check(b, why, sizeof(why));
                if (r < 0)
                        copy_str(p->msg, sizeof(p->msg), why);
                else
                        r = b->ops->reboot_ex ? b->ops->reboot_ex(b, &opts, p->msg, sizeof(p->msg))
                                              : -EOPNOTSUPP;
                if (r >= 0)
                        atomic_store(&h->rebooted, true);
                break;
        case PRIVSEP_SESSIONS:
                r = helper_sessions(b, q->arg2, p, ret_fd);
                break;
        default:
                r = -EPROTO; /* the decoder lets no other type through */
        }
        if (r > 0)
                r = 0;
        if (r < -ERRNO_MAX)
                r = -EIO;
        /* Audited: the operator hears of every request the helper itself refused, and why. */
        if (r < 0 && why[0]) {
                char eb[16];
                log_warning("Privileged helper: refused %s (%s): %s", type_names[q->type],
                            errno_name(r, eb), why);
        }
        p->result = r;
        if ((unsigned)s >= _LUO_STATE_MAX || (unsigned)s2 >= _LUO_STATE_MAX)
                p->state = p->state2 = LUO_STATE_UNDEFINED;
        /* A sentence only with a failure of the two that carry one; always terminated, padded. */
        if (r >= 0 || (q->type != PRIVSEP_SET_EVENT_EX && q->type != PRIVSEP_REBOOT_EX))
                memset(p->msg, 0, sizeof(p->msg));
        else {
                char m[PRIVSEP_MSG_MAX];
                memcpy(m, p->msg, sizeof(m));
                m[sizeof(m) - 1] = 0;
                copy_str(p->msg, sizeof(p->msg), m);
        }
}

/*
 * One request on chan: receive, check, act, answer. Returns 1 when served
 * (or rejected and answered), 0 at EOF, -errno when the channel failed.
 */
static int helper_one(struct helper *h, enum privsep_chan chan, uint64_t *seq)
{
        struct privsep_req q;
        struct privsep_reply p;
        int fds[PRIVSEP_MAX_FDS], flags, r, out_fd = -1;
        size_t n_fds;
        ssize_t n;

        n = privsep_recv(h->fds[chan], &q, sizeof(q), &flags, fds, &n_fds, false);
        if (n <= 0) {
                close_fds(fds, n_fds);
                return (int)n;
        }
        /* Every datagram takes a number, so a rejected one keeps the count in step. */
        (*seq)++;
        r = privsep_req_decode(&q, (size_t)n, flags, n_fds, chan, *seq, &q);
        if (r < 0) {
                uint16_t type = 0;
                if ((size_t)n >= offsetof(struct privsep_req, type) + sizeof(q.type))
                        memcpy(&type, (char *)&q + offsetof(struct privsep_req, type),
                               sizeof(type));
                close_fds(fds, n_fds);
                log_warning("Privileged helper: rejected a malformed request on the %s channel "
                            "(%zd bytes, %zu fds, type %u): not acted on",
                            chan == PRIVSEP_CHAN_CMD ? "command" : "query", n, n_fds,
                            (unsigned)type);
                reply_init(&p, type, *seq);
                p.result = -EPROTO;
        } else {
                reply_init(&p, q.type, q.seq);
                close_fds(fds, n_fds); /* none: the decoder let no descriptor through */
                helper_execute(h, &q, &p, &out_fd);
        }
        r = privsep_send(h->fds[chan], &p, sizeof(p), &out_fd, out_fd >= 0 ? 1 : 0, false);
        if (out_fd >= 0)
                close(out_fd); /* the network side has its own now */
        return r < 0 ? r : 1;
}

static void helper_push_state(struct helper *h)
{
        struct privsep_reply p;
        enum luo_state s;
        int r;

        r = h->b->ops->watch_read(h->b, &s);
        if (r < 0 || (unsigned)s >= _LUO_STATE_MAX)
                return; /* the proxy re-reads at the next doorbell */
        reply_init(&p, PRIVSEP_STATE_CHANGED, h->ev_seq + 1);
        p.state = (uint32_t)s;
        /*
         * A doorbell: the proxy drains the channel and then asks for the
         * state, so when the queue is full a dropped doorbell loses nothing
         * (the queued ones ring). Never block the query thread on it.
         */
        if (privsep_send(h->fds[PRIVSEP_CHAN_EVENT], &p, sizeof(p), NULL, 0, true) == 0)
                h->ev_seq++;
}

/* The helper's own sockets (the workloads', the rendezvous): removed when it ends. */
static const char *helper_sockets[2];

/*
 * The helper process ends: descriptors first (the device handle goes with
 * them, as it always did with the agent), so nothing is left open even for
 * a checker that looks at exit (valgrind follows the fork); then its
 * sockets' files, which nobody serves any more (only sockets are removed).
 */
static _Noreturn void helper_exit(int status)
{
        (void)close_range(3, ~0u, 0);
        for (size_t i = 0; i < ELEMENTSOF(helper_sockets); i++) {
                struct stat st;
                if (helper_sockets[i] && lstat(helper_sockets[i], &st) == 0 && S_ISSOCK(st.st_mode))
                        (void)unlink(helper_sockets[i]);
        }
        exit_now(status);
}

/* The "loop" role: queries and the backend's watch fd. */
static void *helper_query_main(void *userdata)
{
        struct helper *h = userdata;
        struct backend *b = h->b;
        uint64_t seq = 0;
        struct pollfd pfd[5] = {
                { .fd = h->stop_fd, .events = POLLIN },
                { .fd = h->fds[PRIVSEP_CHAN_QUERY], .events = POLLIN },
                /* no events: POLLHUP and POLLERR only, when the network side is gone */
                { .fd = h->fds[PRIVSEP_CHAN_EVENT], .events = 0 },
                { .fd = b->ops->watch_fd(b), .events = b->ops->watch_events(b) },
                /* another agent knocking while one is attached: turned away at once */
                { .fd = h->rendezvous_fd, .events = POLLIN },
        };

        for (;;) {
                bool gone = false;
                /* poll() ignores the negative fds (no watch fd, no rendezvous). */
                int n = poll(pfd, ELEMENTSOF(pfd), -1);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        break;
                }
                if (pfd[0].revents)
                        break;
                if (pfd[3].revents)
                        helper_push_state(h);
                if (pfd[4].revents) {
                        /* An agent is attached: the knocking one hears EOF ("another agent"). */
                        int conn = accept4(h->rendezvous_fd, NULL, NULL, SOCK_CLOEXEC);
                        if (conn >= 0)
                                close(conn);
                }
                if (pfd[1].revents && helper_one(h, PRIVSEP_CHAN_QUERY, &seq) <= 0)
                        gone = true;
                if (pfd[2].revents & (POLLHUP | POLLERR))
                        gone = true;
                if (gone) {
                        /*
                         * The network side is gone: so is the reason to be, unless
                         * workloads' sessions live in us (helper_serve waits for the
                         * next network process then).
                         */
                        if (h->exit_on_hangup && !helper_survives(h))
                                helper_exit(0); /* a call in flight is cut, as by a crash */
                        shutdown(h->fds[PRIVSEP_CHAN_CMD], SHUT_RD);
                        break;
                }
        }
        return NULL;
}

static int helper_send_hello(int cmd_fd, struct backend *b, int error, const char *msg)
{
        struct privsep_reply p;
        struct backend_info info;
        int r = error;

        reply_init(&p, PRIVSEP_HELLO, 0);
        if (r >= 0 && b) {
                r = b->ops->get_info(b, &info);
                if (r < 0)
                        msg = "the kernel backend cannot tell its boot id";
        }
        if (r < 0) {
                p.result = r < -ERRNO_MAX ? -EIO : r;
                copy_str(p.msg, sizeof(p.msg), msg);
        } else {
                char what[PRIVSEP_MSG_MAX] = "";
                copy_str(p.name, sizeof(p.name), b->ops->name);
                copy_str(p.boot_id, sizeof(p.boot_id), info.boot_id);
                copy_str(p.release, sizeof(p.release), info.release);
                if (b->ops->describe && b->ops->describe(b, what, sizeof(what)) >= 0)
                        copy_str(p.msg, sizeof(p.msg), what);
                p.flag = broker_is(b) ? PRIVSEP_HELLO_BROKER : 0;
        }
        r = privsep_send(cmd_fd, &p, sizeof(p), NULL, 0, false);
        return r < 0 ? r : p.result;
}

int privsep_helper_hello_error(int cmd_fd, int error, const char *msg)
{
        return helper_send_hello(cmd_fd, NULL, error < 0 ? error : -EIO, msg);
}

/* What a waiting helper hands the next network process: its ends of three new channels. */
struct privsep_attach_msg {
        uint32_t magic;
        uint16_t version;
        uint16_t pad;
        int32_t pid; /* the helper's */
        uint32_t pad2;
};

/*
 * The network process is gone and workloads' sessions live here: wait on the
 * rendezvous socket for the next one (root's, or ours when not root), give it
 * three new channels, and return our ends in fds. SIGTERM and SIGINT end the
 * helper while it waits (blocked while a network process is attached, they
 * are the service manager's for it). Returns 0, or -ENOENT when nothing is
 * held any more (the helper ends), -errno.
 */
static int helper_wait_attach(struct helper *h, int fds[_PRIVSEP_CHAN_MAX])
{
        sigset_t term;
        int r = -ENOENT;

        sigemptyset(&term);
        sigaddset(&term, SIGTERM);
        sigaddset(&term, SIGINT);
        pthread_sigmask(SIG_UNBLOCK, &term, NULL);
        log_notice("Privileged helper: the network process is gone; workloads' sessions live "
                   "here: waiting for the next agent");
        while (broker_holds(h->b)) {
                struct pollfd p = { .fd = h->rendezvous_fd, .events = POLLIN };
                int pair[_PRIVSEP_CHAN_MAX][2], theirs[_PRIVSEP_CHAN_MAX];
                struct privsep_attach_msg m = { .magic = PRIVSEP_MAGIC,
                                                .version = PRIVSEP_VERSION,
                                                .pid = (int32_t)getpid() };
                struct ucred cred;
                socklen_t len = sizeof(cred);
                int conn, k;

                k = poll(&p, 1, 1000);
                if (k <= 0)
                        continue; /* a timeout: is anything still held? */
                conn = accept4(h->rendezvous_fd, NULL, NULL, SOCK_CLOEXEC);
                if (conn < 0)
                        continue;
                if (getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 ||
                    (cred.uid != 0 && cred.uid != getuid())) {
                        log_warning("Privileged helper: refused an attach from pid %d, uid %u",
                                    (int)cred.pid, (unsigned)cred.uid);
                        close(conn);
                        continue;
                }
                for (int i = 0; i < _PRIVSEP_CHAN_MAX; i++)
                        pair[i][0] = pair[i][1] = -1;
                r = 0;
                for (int i = 0; i < _PRIVSEP_CHAN_MAX && r == 0; i++)
                        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair[i]) < 0)
                                r = negative_errno();
                for (int i = 0; i < _PRIVSEP_CHAN_MAX; i++)
                        theirs[i] = pair[i][1];
                if (r == 0)
                        r = privsep_send(conn, &m, sizeof(m), theirs, _PRIVSEP_CHAN_MAX, false);
                close(conn);
                close_fds(theirs, _PRIVSEP_CHAN_MAX);
                if (r < 0) {
                        for (int i = 0; i < _PRIVSEP_CHAN_MAX; i++)
                                if (pair[i][0] >= 0)
                                        close(pair[i][0]);
                        continue;
                }
                for (int i = 0; i < _PRIVSEP_CHAN_MAX; i++)
                        fds[i] = pair[i][0];
                log_notice("Privileged helper: agent pid %d attached", (int)cred.pid);
                break;
        }
        pthread_sigmask(SIG_BLOCK, &term, NULL);
        return r;
}

static int helper_serve_once(struct helper *h)
{
        pthread_t thread;
        uint64_t seq = 0, one = 1;
        int r;

        /* Every network process counts its channels from 1: an attached one too. */
        h->ev_seq = 0;

        /* Before HELLO: once the network side hears it, our fd table is settled. */
        h->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (h->stop_fd < 0)
                return negative_errno();
        r = helper_send_hello(h->fds[PRIVSEP_CHAN_CMD], h->b, 0, NULL);
        if (r < 0) {
                close(h->stop_fd);
                return r;
        }
        r = pthread_create(&thread, NULL, helper_query_main, h);
        if (r != 0) {
                close(h->stop_fd);
                return -r;
        }
        /* The "worker" role: the blocking operations, one at a time. */
        do
                r = helper_one(h, PRIVSEP_CHAN_CMD, &seq);
        while (r > 0);
        (void)!write(h->stop_fd, &one, sizeof(one));
        pthread_join(thread, NULL);
        close(h->stop_fd);
        h->stop_fd = -1;
        return r;
}

static int helper_serve(struct backend *b, const int fds[_PRIVSEP_CHAN_MAX], bool exit_on_hangup,
                        const struct privsep_files *files, int rendezvous_fd)
{
        struct helper h = { .b = b,
                            .stop_fd = -1,
                            .exit_on_hangup = exit_on_hangup,
                            .files = files,
                            .rendezvous_fd = rendezvous_fd };
        bool ours = false;
        int r;

        memcpy(h.fds, fds, sizeof(h.fds));
        for (;;) {
                r = helper_serve_once(&h);
                if (!exit_on_hangup || !helper_survives(&h))
                        break;
                /* Only channels of our own making are ours to close. */
                if (ours)
                        close_fds(h.fds, _PRIVSEP_CHAN_MAX);
                else
                        for (int i = 0; i < _PRIVSEP_CHAN_MAX; i++)
                                (void)shutdown(h.fds[i], SHUT_RDWR);
                if (helper_wait_attach(&h, h.fds) < 0)
                        break;
                ours = true;
        }
        if (ours)
                close_fds(h.fds, _PRIVSEP_CHAN_MAX);
        return r;
}

int privsep_helper_serve(struct backend *b, const int fds[_PRIVSEP_CHAN_MAX],
                         const struct privsep_files *files)
{
        return helper_serve(b, fds, false, files, -1);
}

/* ---- the helper process ----------------------------------------------------- */

/* Close every fd but 0, 1, 2, the channels and extra[] (the fd store's, for the broker). */
static void helper_close_other_fds(const int keep[_PRIVSEP_CHAN_MAX], const int *extra,
                                   size_t n_extra)
{
        int k[_PRIVSEP_CHAN_MAX + PRIVSEP_RESTORE_MAX];
        unsigned from = 3;
        size_t n = _PRIVSEP_CHAN_MAX;

        memcpy(k, keep, sizeof(int) * _PRIVSEP_CHAN_MAX);
        for (size_t i = 0; i < n_extra && n < ELEMENTSOF(k); i++)
                if (extra[i] >= 0)
                        k[n++] = extra[i];
        /* sort them (a handful) */
        for (size_t i = 0; i < n; i++)
                for (size_t j = i + 1; j < n; j++)
                        if (k[j] < k[i]) {
                                int t = k[i];
                                k[i] = k[j];
                                k[j] = t;
                        }
        for (size_t i = 0; i < n; i++) {
                if ((unsigned)k[i] > from)
                        (void)close_range(from, (unsigned)k[i] - 1, 0);
                if ((unsigned)k[i] + 1 > from)
                        from = (unsigned)k[i] + 1;
        }
        (void)close_range(from, ~0u, 0);
}

static int helper_open(const struct privsep_spawn_config *cfg, struct backend **ret, char *msg,
                       size_t msg_size)
{
        uint64_t deadline = now_mono_usec() + (uint64_t)cfg->busy_retry_ms * 1000u;
        int r;

        for (;;) {
                r = backend_open(cfg->backend, ret, msg, msg_size);
                if (r != -EBUSY || now_mono_usec() >= deadline)
                        return r;
                /* A predecessor (killed with its network process) may still be exiting. */
                struct timespec ts = { .tv_nsec = 20 * 1000 * 1000 };
                nanosleep(&ts, NULL);
        }
}

/*
 * Root: keep uid 0 and exactly CAP_SYS_BOOT (kexec_file_load, reboot). The
 * luo-v3 device needs CAP_SYS_ADMIN only to be opened, which happened
 * before; its ioctls are not checked again. The file system identity
 * becomes the run user's: what the helper still writes (the simulated
 * kernel's files) stays readable by the network side and by a re-executed,
 * unprivileged agent, and uid 0 without capabilities cannot write root's
 * files (it would still own them).
 */
static int helper_drop(const struct privsep_spawn_config *cfg)
{
        struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3 };
        struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3] = {};
        const uint32_t boot = CAP_TO_MASK(CAP_SYS_BOOT);
        const unsigned bi = CAP_TO_INDEX(CAP_SYS_BOOT);

        if (setgroups(0, NULL) < 0)
                return negative_errno();
        /*
         * The saved ids become the run user's too: the query thread moves its
         * file system identity between 0 (OPEN_CONFIG, OPEN_STAGING: root's
         * files) and the run user's, which without CAP_SETUID is only allowed
         * between ids the process has. (It also lets the run user signal the
         * helper, which it could stop anyway by closing the channels.)
         */
        if (setresgid((gid_t)-1, (gid_t)-1, cfg->drop_gid) < 0 ||
            setresuid((uid_t)-1, (uid_t)-1, cfg->drop_uid) < 0)
                return negative_errno();
        /*
         * Only the simulator writes files (its kernel's, in the state
         * directory, which the run user owns); the real backends open root's
         * /dev/liveupdate (luo-sessions: at every session it creates or
         * retrieves), so their file system identity stays root's.
         */
        if (cfg->backend->kind == BACKEND_SIM) {
                (void)setfsgid(cfg->drop_gid);
                if ((gid_t)setfsgid((gid_t)-1) != cfg->drop_gid)
                        return -EPERM;
                (void)setfsuid(cfg->drop_uid);
                if ((uid_t)setfsuid((uid_t)-1) != cfg->drop_uid)
                        return -EPERM;
        }
        /* The bounding set: what an exec could ever give back. */
        for (unsigned long cap = 0; cap < 64; cap++) {
                if (cap == CAP_SYS_BOOT)
                        continue;
                if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0) {
                        if (errno == EINVAL)
                                break; /* past the kernel's last capability */
                        return negative_errno();
                }
        }
        if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
                return negative_errno();
        /* uid 0 gains nothing by exec, and that cannot be undone. */
        if (prctl(PR_SET_SECUREBITS, SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_KEEP_CAPS_LOCKED,
                  0, 0, 0) < 0)
                return negative_errno();
        data[bi].effective = data[bi].permitted = boot;
        if (syscall(SYS_capset, &hdr, data) < 0)
                return negative_errno();
        memset(data, 0, sizeof(data));
        if (syscall(SYS_capget, &hdr, data) < 0)
                return negative_errno();
        for (unsigned i = 0; i < _LINUX_CAPABILITY_U32S_3; i++) {
                uint32_t want = i == bi ? boot : 0;
                if (data[i].effective != want || data[i].permitted != want ||
                    data[i].inheritable != 0)
                        return -EPERM;
        }
        return 0;
}

/*
 * Bind one of the helper's sockets (still root, before the drop). In a
 * directory the run user owns (the unit's /run/luofleet), root without
 * CAP_DAC_OVERRIDE may not create it: then with the run user's file system
 * identity, as the network process binds its own Unix listeners.
 */
static int helper_listen(const struct privsep_spawn_config *cfg, const char *path, mode_t mode,
                         gid_t gid)
{
        int r = broker_listen(path, mode, gid);

        if (r != -EACCES || !cfg->drop)
                return r;
        (void)setfsgid(cfg->drop_gid);
        (void)setfsuid(cfg->drop_uid);
        r = broker_listen(path, mode, gid);
        (void)setfsuid(0);
        (void)setfsgid(0);
        return r;
}

static _Noreturn void helper_main(const struct privsep_spawn_config *cfg,
                                  const int fds[_PRIVSEP_CHAN_MAX], pid_t parent)
{
        struct backend *b = NULL;
        struct privsep_files files = cfg->files;
        char msg[PRIVSEP_MSG_MAX] = "";
        int r, broker_listen_fd = -1, rendezvous_fd = -1;
        /*
         * Dies with the network process (a kernel call in flight is cut like a
         * crash), unless it may outlive it to keep workloads' sessions: then it
         * notices the hang-up on its channels and decides (helper_serve).
         */
        bool pdeath = !cfg->rendezvous;

        helper_pdeath = pdeath;

        if ((pdeath && prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0) || getppid() != parent)
                helper_exit(1);
        (void)prctl(PR_SET_NAME, "luofleet-priv", 0, 0, 0);
        /*
         * The state directory's lock, the signalfd, the listeners to come:
         * nothing of the network side's. Signals stay blocked as inherited
         * (SIGTERM to the process group stops the network side, whose EOF
         * stops us in order).
         */
        helper_close_other_fds(fds, cfg->broker ? cfg->broker->restore_fds : NULL,
                               cfg->broker ? cfg->broker->n_restore : 0);

        r = helper_open(cfg, &b, msg, sizeof(msg));
        if (r < 0) {
                (void)privsep_helper_hello_error(fds[PRIVSEP_CHAN_CMD], r, msg);
                helper_exit(0);
        }
        /* The workloads' socket, bound as root (its directory is root's); served later. */
        if (cfg->broker && cfg->broker->listen_fd < 0 && cfg->broker->socket_path) {
                broker_listen_fd = helper_listen(cfg, cfg->broker->socket_path,
                                                 cfg->broker->socket_mode, cfg->broker->socket_gid);
                if (broker_listen_fd < 0 && cfg->broker->socket_optional &&
                    broker_listen_fd != -EADDRINUSE) {
                        log_warning("Cannot listen on %s for workloads (%s): no workload can "
                                    "preserve anything; choose a place with --sessions-socket",
                                    cfg->broker->socket_path, strerror(-broker_listen_fd));
                } else if (broker_listen_fd < 0) {
                        snprintf(msg, sizeof(msg), "cannot listen on %s for workloads: %s%s",
                                 cfg->broker->socket_path, strerror(-broker_listen_fd),
                                 broker_listen_fd == -EEXIST
                                         ? " (a file that is not a socket is in the way)"
                                 : broker_listen_fd == -EADDRINUSE ? " (another agent serves it)"
                                                                   : "");
                        (void)privsep_helper_hello_error(fds[PRIVSEP_CHAN_CMD], broker_listen_fd,
                                                         msg);
                        helper_exit(1);
                }
                if (broker_listen_fd >= 0)
                        helper_sockets[0] = cfg->broker->socket_path;
        }
        /* No workloads' socket, no workloads' sessions: nothing to outlive the agent for. */
        if (cfg->broker && cfg->rendezvous && broker_listen_fd >= 0) {
                rendezvous_fd = helper_listen(cfg, cfg->rendezvous, 0600, (gid_t)-1);
                if (rendezvous_fd < 0 && rendezvous_fd != -EADDRINUSE) {
                        /* Not fatal: this helper will not outlive its agent, that is all. */
                        log_warning("Cannot listen on %s (%s): if the agent's network process "
                                    "dies, the workloads' sessions die with the helper",
                                    cfg->rendezvous, strerror(-rendezvous_fd));
                        rendezvous_fd = -1;
                } else if (rendezvous_fd < 0) {
                        snprintf(msg, sizeof(msg), "cannot listen on %s for the next agent: %s%s",
                                 cfg->rendezvous, strerror(-rendezvous_fd),
                                 rendezvous_fd == -EADDRINUSE
                                         ? " (another helper waits there: attach to it)"
                                         : "");
                        (void)privsep_helper_hello_error(fds[PRIVSEP_CHAN_CMD], rendezvous_fd, msg);
                        helper_exit(1);
                }
                if (rendezvous_fd >= 0)
                        helper_sockets[1] = cfg->rendezvous;
        }
        if (cfg->drop) {
                r = helper_drop(cfg);
                if (r < 0) {
                        snprintf(msg, sizeof(msg),
                                 "the privileged helper could not drop its privileges: %s",
                                 strerror(-r));
                        (void)privsep_helper_hello_error(fds[PRIVSEP_CHAN_CMD], r, msg);
                        helper_exit(1);
                }
                /* A change of the fsuid/fsgid clears the parent-death signal: again. */
                if ((pdeath && prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0) ||
                    getppid() != parent)
                        helper_exit(1);
        }
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
                r = negative_errno();
                (void)privsep_helper_hello_error(fds[PRIVSEP_CHAN_CMD], r,
                                                 "the privileged helper could not set "
                                                 "no_new_privs");
                helper_exit(1);
        }
        /* After the drop: the broker's thread starts with what this thread kept. */
        if (cfg->broker) {
                struct broker_config bc = *cfg->broker;
                if (broker_listen_fd >= 0)
                        bc.listen_fd = broker_listen_fd;
                bc.socket_path = NULL;
                r = broker_new(b, &bc, &b, msg, sizeof(msg));
                if (r < 0) {
                        (void)privsep_helper_hello_error(fds[PRIVSEP_CHAN_CMD], r, msg);
                        helper_exit(1);
                }
        }
        files.fs_root = cfg->drop;
        files.user_uid = cfg->drop_uid;
        files.user_gid = cfg->drop_gid;
        /* What this helper enforces, whatever the network side asks (docs/privsep.md). */
        log_info("Privileged helper: kernel images from %u staging director%s only; signatures %s",
                 files.n_staging_dirs, files.n_staging_dirs == 1 ? "y" : "ies",
                 files.require_signature && files.trusted_keys_dir ? "required and verified"
                 : files.require_signature                         ? "required (no trusted keys: "
                                                                     "nothing loads)"
                 : files.trusted_keys_dir                          ? "verified when present"
                                                                   : "not checked here");
        r = helper_serve(b, fds, true, &files, rendezvous_fd);
        if (r < 0)
                log_error_errno(r, "Privileged helper: lost the network process: %m");
        helper_exit(r < 0 ? 1 : 0);
}

int privsep_spawn(const struct privsep_spawn_config *cfg, const struct privsep_hooks *hooks,
                  struct backend **ret, char *msg, size_t msg_size)
{
        int pair[_PRIVSEP_CHAN_MAX][2], mine[_PRIVSEP_CHAN_MAX], theirs[_PRIVSEP_CHAN_MAX];
        pid_t parent = getpid(), pid;
        int r;

        if (msg && msg_size)
                msg[0] = 0;
        for (int i = 0; i < _PRIVSEP_CHAN_MAX; i++)
                pair[i][0] = pair[i][1] = -1;
        for (int i = 0; i < _PRIVSEP_CHAN_MAX; i++)
                if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair[i]) < 0) {
                        r = negative_errno();
                        backend_msgf(msg, msg_size, "socketpair() failed: %s", strerror(-r));
                        close_fds(&pair[0][0], 2 * _PRIVSEP_CHAN_MAX);
                        return r;
                }
        for (int i = 0; i < _PRIVSEP_CHAN_MAX; i++) {
                mine[i] = pair[i][0];
                theirs[i] = pair[i][1];
        }
        pid = fork();
        if (pid < 0) {
                r = negative_errno();
                backend_msgf(msg, msg_size, "fork() failed: %s", strerror(-r));
                close_fds(&pair[0][0], 2 * _PRIVSEP_CHAN_MAX);
                return r;
        }
        if (pid == 0) {
                close_fds(mine, _PRIVSEP_CHAN_MAX);
                helper_main(cfg, theirs, parent);
        }
        close_fds(theirs, _PRIVSEP_CHAN_MAX);
        return privsep_proxy_new(mine, pid, hooks, ret, msg, msg_size);
}

/* ---- the proxy -------------------------------------------------------------- */

struct proxy {
        struct backend base; /* first: a struct backend * is a struct proxy * */
        struct backend_ops ops;
        char name[PRIVSEP_NAME_MAX];
        char describe[PRIVSEP_MSG_MAX]; /* the helper's backend's, from HELLO */
        int fds[_PRIVSEP_CHAN_MAX];
        int quiet_fd; /* an eventfd never written: dup2()ed over a dead event channel */
        pid_t helper;
        pid_t attached; /* privsep_attach(): the helper's pid (not our child: never reaped) */
        bool reaped;
        pthread_mutex_t lock[_PRIVSEP_CHAN_MAX]; /* CMD and QUERY; EVENT: loop thread only */
        uint64_t seq[_PRIVSEP_CHAN_MAX];         /* under lock[chan] */
        struct privsep_hooks hooks;
        atomic_bool stopping, lost;
        atomic_uint last_state; /* the last state the helper told, for the stop */
};

static const struct backend_ops proxy_ops_template;

static struct proxy *to_proxy(struct backend *b)
{
        return (struct proxy *)b;
}

bool privsep_is_proxy(const struct backend *b)
{
        return b && b->ops && b->ops->free == proxy_ops_template.free;
}

bool privsep_proxy_attached(const struct backend *b)
{
        return privsep_is_proxy(b) && ((const struct proxy *)b)->attached > 0;
}

pid_t privsep_proxy_helper(const struct backend *b)
{
        if (!privsep_is_proxy(b))
                return 0;
        return ((const struct proxy *)b)->helper ? ((const struct proxy *)b)->helper
                                                 : ((const struct proxy *)b)->attached;
}

/* The helper is gone or broke the protocol: whatever was in flight is unknown. */
static int proxy_lost(struct proxy *p, const char *why)
{
        if (atomic_load(&p->stopping))
                return -ENOTCONN;
        if (!atomic_exchange(&p->lost, true) && p->hooks.lost)
                p->hooks.lost(p->hooks.userdata, why);
        return -ENOTCONN;
}

static int proxy_call_load(struct proxy *p, enum privsep_chan chan, uint16_t type, uint32_t arg,
                           uint64_t arg2, const char *cmdline, const struct privsep_load *load,
                           const int *fds, size_t n_fds, struct privsep_reply *ret, int *ret_fd)
{
        struct privsep_req q = { .magic = PRIVSEP_MAGIC, .version = PRIVSEP_VERSION, .type = type };
        struct privsep_reply rep;
        int rfds[PRIVSEP_MAX_FDS], flags, r;
        size_t n_rfds;
        const char *why = NULL;
        char wbuf[160];
        ssize_t n;

        if (atomic_load(&p->lost) || atomic_load(&p->stopping))
                return -ENOTCONN;
        q.arg = arg;
        q.arg2 = arg2;
        memset(ret, 0, sizeof(*ret));
        if (cmdline) {
                size_t len = strlen(cmdline);
                if (len >= PRIVSEP_CMDLINE_MAX)
                        return -EINVAL;
                q.cmdline_len = (uint32_t)len;
                memcpy(q.cmdline, cmdline, len);
        }
        if (load)
                q.load = *load;
        pthread_mutex_lock(&p->lock[chan]);
        q.seq = ++p->seq[chan];
        r = privsep_send(p->fds[chan], &q, sizeof(q), fds, n_fds, false);
        if (r < 0) {
                snprintf(wbuf, sizeof(wbuf), "sending %s failed: %s", type_names[type],
                         strerror(-r));
                why = wbuf;
                goto out;
        }
        n = privsep_recv(p->fds[chan], &rep, sizeof(rep), &flags, rfds, &n_rfds, false);
        if (n <= 0) {
                close_fds(rfds, n_rfds);
                snprintf(wbuf, sizeof(wbuf), "no answer to %s: %s", type_names[type],
                         n == 0 ? "the channel closed" : strerror((int)-n));
                why = wbuf;
                goto out;
        }
        if (privsep_reply_decode(&rep, (size_t)n, flags, n_rfds, type, q.seq, ret) < 0) {
                close_fds(rfds, n_rfds);
                snprintf(wbuf, sizeof(wbuf), "malformed answer to %s", type_names[type]);
                why = wbuf;
                goto out;
        }
        /* The decoder let a descriptor through only with a successful open. */
        if (n_rfds == 1 && ret_fd)
                *ret_fd = rfds[0];
        else
                close_fds(rfds, n_rfds);
out:
        pthread_mutex_unlock(&p->lock[chan]);
        if (why)
                return proxy_lost(p, why);
        return ret->result;
}

static int proxy_call_ex(struct proxy *p, enum privsep_chan chan, uint16_t type, uint32_t arg,
                         uint64_t arg2, const char *cmdline, const int *fds, size_t n_fds,
                         struct privsep_reply *ret, int *ret_fd)
{
        return proxy_call_load(p, chan, type, arg, arg2, cmdline, NULL, fds, n_fds, ret, ret_fd);
}

static int proxy_call(struct proxy *p, enum privsep_chan chan, uint16_t type, uint32_t arg,
                      const char *cmdline, const int *fds, size_t n_fds, struct privsep_reply *ret,
                      int *ret_fd)
{
        return proxy_call_ex(p, chan, type, arg, 0, cmdline, fds, n_fds, ret, ret_fd);
}

static int proxy_get_state(struct backend *b, enum luo_state *ret)
{
        struct privsep_reply rep;
        struct proxy *p = to_proxy(b);
        int r = proxy_call(p, PRIVSEP_CHAN_QUERY, PRIVSEP_GET_STATE, 0, NULL, NULL, 0, &rep, NULL);
        if (r < 0)
                return r;
        /* Replies arrive in channel order: the last one stored is the freshest. */
        atomic_store(&p->last_state, rep.state);
        *ret = (enum luo_state)rep.state;
        return 0;
}

static int proxy_watch_fd(struct backend *b)
{
        return to_proxy(b)->fds[PRIVSEP_CHAN_EVENT];
}

static short proxy_watch_events(struct backend *b)
{
        (void)b;
        return POLLIN;
}

static int proxy_watch_read(struct backend *b, enum luo_state *ret)
{
        struct proxy *p = to_proxy(b);
        int ev = p->fds[PRIVSEP_CHAN_EVENT];

        if (atomic_load(&p->stopping)) {
                /*
                 * The helper is being stopped for the simulated kexec: nothing can
                 * change the kernel through us any more, so the last state it told
                 * is the final one of this process. Quiet the poll() for good.
                 */
                (void)dup3(p->quiet_fd, ev, O_CLOEXEC);
                *ret = (enum luo_state)atomic_load(&p->last_state);
                return 0;
        }
        /* Drain the doorbells (they coalesce), then ask: the answer is the state now. */
        for (;;) {
                struct privsep_reply rep;
                int rfds[PRIVSEP_MAX_FDS], flags;
                size_t n_rfds;
                ssize_t n = privsep_recv(ev, &rep, sizeof(rep), &flags, rfds, &n_rfds, true);

                close_fds(rfds, n_rfds);
                if (n == -EAGAIN)
                        break;
                if (n <= 0) {
                        /* Quiet the watcher's poll() for good: a hung-up fd always fires. */
                        (void)dup3(p->quiet_fd, ev, O_CLOEXEC);
                        return proxy_lost(p, n == 0 ? "the event channel closed"
                                                    : "the event channel failed");
                }
                if (privsep_reply_decode(&rep, (size_t)n, flags, n_rfds, PRIVSEP_STATE_CHANGED,
                                         p->seq[PRIVSEP_CHAN_EVENT] + 1, &rep) < 0) {
                        (void)dup3(p->quiet_fd, ev, O_CLOEXEC);
                        return proxy_lost(p, "malformed state-change message");
                }
                p->seq[PRIVSEP_CHAN_EVENT]++;
        }
        return proxy_get_state(b, ret);
}

static int proxy_set_event(struct backend *b, enum luo_event ev)
{
        struct privsep_reply rep;

        if (ev != LUO_EVENT_PREPARE && ev != LUO_EVENT_CANCEL && ev != LUO_EVENT_FINISH)
                return -EINVAL; /* the kernel's answer to FREEZE through SET_EVENT */
        return proxy_call(to_proxy(b), PRIVSEP_CHAN_CMD, PRIVSEP_SET_EVENT, (uint32_t)ev, NULL,
                          NULL, 0, &rep, NULL);
}

/* The helper takes no descriptor: it opens the images itself (privsep_proxy_kexec_load). */
static int proxy_kexec_load(struct backend *b, int kernel_fd, int initrd_fd, const char *cmdline)
{
        (void)b;
        (void)kernel_fd;
        (void)initrd_fd;
        (void)cmdline;
        return -EOPNOTSUPP;
}

/* A path into its field: absolute, shorter than the field. */
static int load_path(char *dst, size_t size, const char *path)
{
        size_t n = path ? strlen(path) : 0;

        if (n == 0 || path[0] != '/')
                return -EINVAL;
        if (n >= size)
                return -ENAMETOOLONG;
        memcpy(dst, path, n);
        return 0;
}

/* A digest into its field, lower-cased: 64 hex digits in any case. */
static int load_digest(char *dst, const char *hex)
{
        if (!hex || strlen(hex) != 64)
                return -EINVAL;
        for (size_t i = 0; i < 64; i++) {
                char c = hex[i];
                if (c >= 'A' && c <= 'F')
                        c = (char)(c - 'A' + 'a');
                if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
                        return -EINVAL;
                dst[i] = c;
        }
        return 0;
}

int privsep_proxy_kexec_load(struct backend *b, const struct privsep_kexec_args *a)
{
        _cleanup_free_ struct privsep_load *l = NULL;
        struct privsep_reply rep;
        const char *cmdline;
        bool initrd, sig;
        int r;

        if (!privsep_is_proxy(b) || !a)
                return -EINVAL;
        cmdline = a->cmdline ? a->cmdline : "";
        initrd = a->initrd_path && a->initrd_path[0];
        sig = a->key_id && a->key_id[0];
        /* What the helper would refuse as malformed is refused here, with the same answer. */
        if (strlen(cmdline) >= PRIVSEP_CMDLINE_MAX ||
            privsep_helper_cmdline_check(cmdline, NULL, 0) < 0)
                return -EINVAL;
        l = calloc(1, sizeof(*l));
        if (!l)
                return -ENOMEM;
        r = load_path(l->kernel_path, sizeof(l->kernel_path), a->kernel_path);
        if (r >= 0)
                r = load_digest(l->kernel_sha256, a->kernel_sha256);
        if (r >= 0 && initrd) {
                r = load_path(l->initrd_path, sizeof(l->initrd_path), a->initrd_path);
                if (r >= 0)
                        r = load_digest(l->initrd_sha256, a->initrd_sha256);
        }
        if (r >= 0 && sig) {
                if (!sign_key_id_valid(a->key_id) || !a->signature ||
                    strlen(a->signature) != SIGN_B64_LEN)
                        return -EINVAL;
                memcpy(l->key_id, a->key_id, strlen(a->key_id));
                memcpy(l->signature, a->signature, SIGN_B64_LEN);
        }
        if (r < 0)
                return r;
        return proxy_call_load(to_proxy(b), PRIVSEP_CHAN_CMD, PRIVSEP_KEXEC_LOAD, initrd, 0,
                               cmdline, l, NULL, 0, &rep, NULL);
}

static int proxy_open(struct backend *b, uint16_t type, uint32_t arg, const char *path)
{
        struct privsep_reply rep;
        int fd = -1, r;

        if (!privsep_is_proxy(b))
                return -EINVAL;
        r = proxy_call(to_proxy(b), PRIVSEP_CHAN_QUERY, type, arg, path, NULL, 0, &rep, &fd);
        if (r < 0)
                return r;
        return fd >= 0 ? fd : -EIO; /* the decoder demands the fd: cannot happen */
}

int privsep_proxy_open_config(struct backend *b, enum privsep_config_file which)
{
        if ((unsigned)which >= _PRIVSEP_CONFIG_MAX)
                return -EINVAL;
        return proxy_open(b, PRIVSEP_OPEN_CONFIG, (uint32_t)which, NULL);
}

int privsep_proxy_open_staging(struct backend *b, const char *path)
{
        /* What the helper would refuse is refused here (its answer to a bad path). */
        if (!path || !path[0] || strlen(path) >= PRIVSEP_CMDLINE_MAX)
                return -ENAMETOOLONG;
        return proxy_open(b, PRIVSEP_OPEN_STAGING, 0, path);
}

int privsep_proxy_unlink_socket(struct backend *b, unsigned index)
{
        struct privsep_reply rep;

        if (!privsep_is_proxy(b))
                return -EINVAL;
        if (index >= PRIVSEP_MAX_SOCKETS)
                return -EINVAL;
        return proxy_call(to_proxy(b), PRIVSEP_CHAN_QUERY, PRIVSEP_UNLINK_SOCKET, index, NULL, NULL,
                          0, &rep, NULL);
}

static int proxy_kexec_unload(struct backend *b)
{
        struct privsep_reply rep;

        return proxy_call(to_proxy(b), PRIVSEP_CHAN_CMD, PRIVSEP_KEXEC_UNLOAD, 0, NULL, NULL, 0,
                          &rep, NULL);
}

static int proxy_kexec_loaded(struct backend *b, bool *ret)
{
        struct privsep_reply rep;
        int r = proxy_call(to_proxy(b), PRIVSEP_CHAN_QUERY, PRIVSEP_KEXEC_LOADED, 0, NULL, NULL, 0,
                           &rep, NULL);
        if (r < 0)
                return r;
        *ret = rep.flag != 0;
        return 0;
}

static int proxy_reboot(struct backend *b)
{
        struct privsep_reply rep;

        return proxy_call(to_proxy(b), PRIVSEP_CHAN_CMD, PRIVSEP_REBOOT, 0, NULL, NULL, 0, &rep,
                          NULL);
}

static int proxy_get_info(struct backend *b, struct backend_info *ret)
{
        struct privsep_reply rep;
        struct backend_info info = {};
        int r = proxy_call(to_proxy(b), PRIVSEP_CHAN_QUERY, PRIVSEP_GET_INFO, 0, NULL, NULL, 0,
                           &rep, NULL);
        if (r < 0)
                return r;
        /* Checked by the decoder: terminated, and they fit. */
        memcpy(info.boot_id, rep.boot_id, sizeof(info.boot_id));
        memcpy(info.release, rep.release, sizeof(info.release));
        info.uptime_ms = rep.uptime_ms;
        *ret = info;
        return 0;
}

static int proxy_event_ex(struct proxy *p, uint16_t type, uint32_t arg,
                          const struct backend_event_opts *opts, char *msg, size_t msg_size)
{
        struct privsep_reply rep;
        uint64_t arg2 = 0;
        char note[BACKEND_NOTE_MAX] = "";
        int r;

        if (msg && msg_size)
                msg[0] = 0;
        if (opts) {
                arg2 = opts->confirm_timeout_ms | (opts->force ? PRIVSEP_EX_FORCE : 0);
                memcpy(note, opts->note, sizeof(note) - 1);
        }
        r = proxy_call_ex(p, PRIVSEP_CHAN_CMD, type, arg, arg2, note, NULL, 0, &rep, NULL);
        if (r < 0 && r != -ENOTCONN && msg && msg_size)
                snprintf(msg, msg_size, "%s", rep.msg);
        return r;
}

static int proxy_set_event_ex(struct backend *b, enum luo_event ev,
                              const struct backend_event_opts *opts, char *msg, size_t msg_size)
{
        if (ev != LUO_EVENT_PREPARE && ev != LUO_EVENT_CANCEL && ev != LUO_EVENT_FINISH)
                return -EINVAL;
        return proxy_event_ex(to_proxy(b), PRIVSEP_SET_EVENT_EX, (uint32_t)ev, opts, msg, msg_size);
}

static int proxy_reboot_ex(struct backend *b, const struct backend_event_opts *opts, char *msg,
                           size_t msg_size)
{
        return proxy_event_ex(to_proxy(b), PRIVSEP_REBOOT_EX, 0, opts, msg, msg_size);
}

static int proxy_sessions_json(struct backend *b, uint64_t since, char **ret_json, size_t *ret_len)
{
        struct privsep_reply rep;
        _cleanup_close_ int fd = -1;
        _cleanup_free_ char *text = NULL;
        ssize_t n;
        int r;

        r = proxy_call_ex(to_proxy(b), PRIVSEP_CHAN_QUERY, PRIVSEP_SESSIONS, 0, since, NULL, NULL,
                          0, &rep, &fd);
        if (r < 0)
                return r;
        if (fd < 0)
                return -EIO;
        /* The decoder bounded the size; the memfd is sealed, read it whole. */
        text = malloc(rep.size + 1);
        if (!text)
                return -ENOMEM;
        n = pread(fd, text, rep.size, 0);
        if (n < 0)
                return negative_errno();
        if ((uint64_t)n != rep.size)
                return -EIO;
        text[n] = 0;
        *ret_len = (size_t)n;
        *ret_json = TAKE_PTR(text);
        return 0;
}

static int proxy_describe(struct backend *b, char *buf, size_t size)
{
        snprintf(buf, size, "%s", to_proxy(b)->describe);
        return 0;
}

static int proxy_self_check(struct backend *b, enum luo_state *ret_ioctl, enum luo_state *ret_sysfs)
{
        struct privsep_reply rep;
        int r = proxy_call(to_proxy(b), PRIVSEP_CHAN_QUERY, PRIVSEP_SELF_CHECK, 0, NULL, NULL, 0,
                           &rep, NULL);
        if (r < 0 && r != -EPROTO)
                return r;
        if (ret_ioctl)
                *ret_ioctl = (enum luo_state)rep.state;
        if (ret_sysfs)
                *ret_sysfs = (enum luo_state)rep.state2;
        return r;
}

/*
 * Wait for the helper process to end, up to timeout_ms; then SIGKILL it
 * (kill), or leave it be: a helper that keeps workloads' sessions outlives
 * us on purpose (helper_survives()).
 */
static void proxy_reap(struct proxy *p, unsigned timeout_ms, bool kill_it)
{
        uint64_t deadline = now_mono_usec() + (uint64_t)timeout_ms * 1000u;

        if (p->helper <= 0 || p->reaped)
                return;
        for (;;) {
                pid_t w = waitpid(p->helper, NULL, WNOHANG);
                if (w == p->helper || (w < 0 && errno != EINTR))
                        break;
                if (w == 0 && now_mono_usec() >= deadline) {
                        if (!kill_it)
                                return; /* not reaped: whoever adopts it will */
                        (void)kill(p->helper, SIGKILL);
                        while (waitpid(p->helper, NULL, 0) < 0 && errno == EINTR)
                                ;
                        break;
                }
                struct timespec ts = { .tv_nsec = 2 * 1000 * 1000 };
                nanosleep(&ts, NULL);
        }
        p->reaped = true;
}

int privsep_proxy_stop(struct backend *b, unsigned timeout_ms)
{
        struct proxy *p;

        if (!privsep_is_proxy(b))
                return -EINVAL;
        p = to_proxy(b);
        atomic_store(&p->stopping, true);
        for (int i = 0; i < _PRIVSEP_CHAN_MAX; i++)
                if (p->fds[i] >= 0)
                        (void)shutdown(p->fds[i], SHUT_RDWR);
        proxy_reap(p, timeout_ms, true);
        return 0;
}

static void proxy_free(struct backend *b)
{
        struct proxy *p = to_proxy(b);

        if (!p)
                return;
        /*
         * The orderly stop: the helper sees the hang-up and ends at once,
         * unless workloads' sessions live in it; then it stays and waits for
         * the next agent (helper_wait_attach), and is not killed here.
         */
        if (!atomic_exchange(&p->stopping, true)) {
                for (int i = 0; i < _PRIVSEP_CHAN_MAX; i++)
                        if (p->fds[i] >= 0)
                                (void)shutdown(p->fds[i], SHUT_RDWR);
                proxy_reap(p, 2000, false);
        } else
                proxy_reap(p, 5000, true);
        close_fds(p->fds, _PRIVSEP_CHAN_MAX);
        if (p->quiet_fd >= 0)
                close(p->quiet_fd);
        for (int i = 0; i < _PRIVSEP_CHAN_MAX; i++)
                pthread_mutex_destroy(&p->lock[i]);
        free(p);
}

static const struct backend_ops proxy_ops_template = {
        .name = NULL, /* the helper's backend's, from HELLO */
        .free = proxy_free,
        .get_state = proxy_get_state,
        .watch_fd = proxy_watch_fd,
        .watch_events = proxy_watch_events,
        .watch_read = proxy_watch_read,
        .set_event = proxy_set_event,
        .kexec_load = proxy_kexec_load,
        .kexec_unload = proxy_kexec_unload,
        .kexec_loaded = proxy_kexec_loaded,
        .reboot = proxy_reboot,
        .get_info = proxy_get_info,
        .self_check = proxy_self_check,
        .describe = proxy_describe,
        .set_event_ex = proxy_set_event_ex,
        .reboot_ex = proxy_reboot_ex,
        .sessions_json = proxy_sessions_json,
};

int privsep_proxy_new(int fds[_PRIVSEP_CHAN_MAX], pid_t helper, const struct privsep_hooks *hooks,
                      struct backend **ret, char *msg, size_t msg_size)
{
        struct privsep_reply rep;
        struct proxy *p;
        int rfds[PRIVSEP_MAX_FDS], flags, r;
        size_t n_rfds;
        ssize_t n;

        if (msg && msg_size)
                msg[0] = 0;
        p = calloc(1, sizeof(*p));
        if (!p) {
                close_fds(fds, _PRIVSEP_CHAN_MAX);
                if (helper > 0) {
                        (void)kill(helper, SIGKILL);
                        (void)waitpid(helper, NULL, 0);
                }
                return -ENOMEM;
        }
        p->ops = proxy_ops_template;
        p->ops.name = p->name;
        p->base.ops = &p->ops;
        memcpy(p->fds, fds, sizeof(p->fds));
        for (int i = 0; i < _PRIVSEP_CHAN_MAX; i++) {
                fds[i] = -1;
                pthread_mutex_init(&p->lock[i], NULL);
        }
        p->helper = helper;
        if (hooks)
                p->hooks = *hooks;
        p->quiet_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (p->quiet_fd < 0) {
                r = negative_errno();
                goto fail;
        }

        /* The helper's first word: how the backend's opening went. */
        n = privsep_recv(p->fds[PRIVSEP_CHAN_CMD], &rep, sizeof(rep), &flags, rfds, &n_rfds, false);
        close_fds(rfds, n_rfds);
        if (n <= 0) {
                r = n < 0 ? (int)n : -ECHILD;
                backend_msgf(msg, msg_size,
                             "the privileged helper ended before opening the kernel backend");
                goto fail;
        }
        if (privsep_reply_decode(&rep, (size_t)n, flags, n_rfds, PRIVSEP_HELLO, 0, &rep) < 0) {
                r = -EPROTO;
                backend_msgf(msg, msg_size, "the privileged helper answered a malformed HELLO");
                goto fail;
        }
        if (rep.result < 0) {
                r = rep.result;
                backend_msgf(msg, msg_size, "%s", rep.msg);
                goto fail;
        }
        memcpy(p->name, rep.name, sizeof(p->name));
        memcpy(p->describe, rep.msg, sizeof(p->describe));
        if (!(rep.flag & PRIVSEP_HELLO_BROKER)) {
                /* No broker behind the helper: the agent sees a plain backend. */
                p->ops.set_event_ex = NULL;
                p->ops.reboot_ex = NULL;
                p->ops.sessions_json = NULL;
        }
        if (!p->describe[0])
                p->ops.describe = NULL;
        atomic_store(&p->last_state, LUO_STATE_UNDEFINED);
        *ret = &p->base;
        return 0;
fail:
        atomic_store(&p->stopping, true);
        proxy_free(&p->base);
        return r;
}

int privsep_attach(const char *rendezvous, const struct privsep_hooks *hooks, struct backend **ret,
                   char *msg, size_t msg_size)
{
        struct privsep_attach_msg m;
        struct sockaddr_un sa;
        struct ucred cred;
        socklen_t len = sizeof(cred);
        _cleanup_close_ int fd = -1, dir_fd = -1;
        int fds[PRIVSEP_MAX_FDS], flags = 0, r;
        struct pollfd p;
        size_t n_fds = 0;
        ssize_t n;

        if (msg && msg_size)
                msg[0] = 0;
        if (!rendezvous)
                return 0;
        r = unix_sockaddr(rendezvous, &sa, &dir_fd);
        if (r < 0)
                return r == -ENOENT ? 0 : r;
        fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return negative_errno();
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
                r = negative_errno();
                /*
                 * No socket, nobody listens, or not ours to reach (root's, and we are the
                 * run user after a simulated kexec): no helper waits for us.
                 */
                if (r == -ENOENT || r == -ECONNREFUSED || r == -EACCES || r == -EPERM)
                        return 0;
                backend_msgf(msg, msg_size, "cannot reach %s: %s", rendezvous, strerror(-r));
                return r;
        }
        /* Only root's helper (or, not root, our own uid's) is trusted with the kernel. */
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
                return negative_errno();
        if (cred.uid != 0 && cred.uid != geteuid()) {
                backend_msgf(msg, msg_size,
                             "%s is served by pid %d of uid %u, not by a privileged helper: "
                             "refusing to attach",
                             rendezvous, (int)cred.pid, (unsigned)cred.uid);
                return -EPERM;
        }
        p = (struct pollfd){ .fd = fd, .events = POLLIN };
        if (poll(&p, 1, 5000) <= 0) {
                backend_msgf(msg, msg_size, "the helper at %s did not answer", rendezvous);
                return -ETIMEDOUT;
        }
        n = privsep_recv(fd, &m, sizeof(m), &flags, fds, &n_fds, false);
        if (n == (ssize_t)sizeof(m) && m.magic == PRIVSEP_MAGIC && m.version != PRIVSEP_VERSION) {
                close_fds(fds, n_fds);
                /* An older (or newer) helper: its messages are not ours, nor its checks. */
                backend_msgf(msg, msg_size,
                             "the helper at %s (pid %d) speaks protocol version %u, this agent "
                             "%u: stop it (its workloads' sessions end with it) or start the "
                             "agent it belongs to",
                             rendezvous, (int)cred.pid, (unsigned)m.version, PRIVSEP_VERSION);
                return -EPROTO;
        }
        if (n != (ssize_t)sizeof(m) || (flags & (MSG_TRUNC | MSG_CTRUNC)) ||
            n_fds != _PRIVSEP_CHAN_MAX || m.magic != PRIVSEP_MAGIC ||
            m.version != PRIVSEP_VERSION || m.pid != (int32_t)cred.pid) {
                close_fds(fds, n_fds);
                /* Another agent is attached already (the helper closed on us), or garbage. */
                backend_msgf(msg, msg_size,
                             "the helper at %s (pid %d) turned us away: another agent serves it",
                             rendezvous, (int)cred.pid);
                return -EBUSY;
        }
        r = privsep_proxy_new(fds, 0, hooks, ret, msg, msg_size);
        if (r < 0)
                return r;
        to_proxy(*ret)->attached = cred.pid;
        return 1;
}
