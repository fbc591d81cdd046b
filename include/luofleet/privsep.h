/*
 * privsep.h: privilege separation for the kernel backend (kernel/privsep.c,
 * docs/privsep.md), in the manner of OpenBSD's daemons: a small privileged
 * helper process owns the real backend (the /dev/liveupdate handle, the
 * kexec and reboot system calls) and the network-facing process reaches it
 * over three SOCK_SEQPACKET socketpairs with fixed-size, fully checked
 * messages, through a proxy backend that implements every member of
 * struct backend_ops. The agent above never knows which one it talks to.
 *
 * Channels (one socketpair each, index into the fds arrays below):
 *   PRIVSEP_CHAN_CMD    the blocking operations (set_event, kexec_load by
 *                       path: the helper opens, hashes and verifies the
 *                       images itself, kexec_unload, reboot: only while
 *                       prepared) and the helper's HELLO; one request at a
 *                       time (the worker);
 *   PRIVSEP_CHAN_QUERY  the quick reads (get_state, kexec_loaded, get_info,
 *                       self_check) and the opens (OPEN_CONFIG, OPEN_STAGING,
 *                       which answer with a descriptor) from any thread,
 *                       served by a second helper thread so a stalled
 *                       operation never delays them;
 *   PRIVSEP_CHAN_EVENT  helper -> network: STATE_CHANGED doorbells; the
 *                       proxy's watch fd.
 *
 * Threads: privsep_spawn() on the main thread before any other thread
 * exists (it forks); the proxy's ops as backend.h says, each channel behind
 * its own mutex; the helper's lost hook may run on any of them.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "luofleet/backend.h"
#include "luofleet/broker.h"

#define PRIVSEP_MAGIC 0x5350464cu /* "LFPS" little-endian */
/* 2: KEXEC_LOAD carries paths, digests and the signature (struct privsep_load), no fds. */
#define PRIVSEP_VERSION 2
/* x86's COMMAND_LINE_SIZE, NUL included: what the kernel takes at most. */
#define PRIVSEP_CMDLINE_MAX 2048
#define PRIVSEP_MSG_MAX 512
#define PRIVSEP_NAME_MAX 16
/* No request carries fds any more; room for some so that extras are seen and closed. */
#define PRIVSEP_MAX_FDS 4
/* A staged image's path, NUL included (stagepath_valid(): shorter than 4096 bytes). */
#define PRIVSEP_PATH_MAX 4096
/* The largest image the helper hashes (staging.h's STAGING_MAX_FILE). */
#define PRIVSEP_IMAGE_MAX (1024ull * 1024 * 1024)

enum privsep_chan {
        PRIVSEP_CHAN_CMD,
        PRIVSEP_CHAN_QUERY,
        PRIVSEP_CHAN_EVENT,
        _PRIVSEP_CHAN_MAX,
};

enum privsep_type {
        PRIVSEP_HELLO = 1,     /* helper -> net, CMD, once: open result, name, info */
        PRIVSEP_GET_STATE,     /* QUERY */
        PRIVSEP_KEXEC_LOADED,  /* QUERY */
        PRIVSEP_GET_INFO,      /* QUERY */
        PRIVSEP_SELF_CHECK,    /* QUERY */
        PRIVSEP_SET_EVENT,     /* CMD: arg = PREPARE, CANCEL or FINISH */
        PRIVSEP_KEXEC_LOAD,    /* CMD: arg = 0 (kernel) or 1 (kernel and initrd); load = the
                                  paths, digests and signature; the helper opens and checks */
        PRIVSEP_KEXEC_UNLOAD,  /* CMD */
        PRIVSEP_REBOOT,        /* CMD */
        PRIVSEP_STATE_CHANGED, /* helper -> net, EVENT: a doorbell with the state */
        PRIVSEP_OPEN_CONFIG,   /* QUERY: arg = enum privsep_config_file; reply: 1 fd */
        PRIVSEP_OPEN_STAGING,  /* QUERY: cmdline = the path; reply: 1 fd */
        PRIVSEP_UNLINK_SOCKET, /* QUERY: arg = index of a --listen=unix: at the stop */
        /* The session broker (broker.h), when the helper runs one (HELLO's flag says): */
        PRIVSEP_SET_EVENT_EX, /* CMD: arg = event, arg2 = PRIVSEP_EX_*, cmdline = the note;
                                 a failure's reply carries a sentence (msg) */
        PRIVSEP_REBOOT_EX,    /* CMD: cmdline = the note; a failure carries a sentence */
        PRIVSEP_SESSIONS,     /* QUERY: arg2 = since; reply: 1 fd (a sealed memfd of size
                                 bytes of JSON) */
        _PRIVSEP_TYPE_MAX,
};

/* The files OPEN_CONFIG may open: fixed at the helper's start, chosen by index. */
enum privsep_config_file {
        PRIVSEP_CONFIG_TLS_CERT,
        PRIVSEP_CONFIG_TLS_KEY,
        PRIVSEP_CONFIG_TLS_CLIENT_CA,
        PRIVSEP_CONFIG_TOKENS,
        _PRIVSEP_CONFIG_MAX,
};

/* SET_EVENT_EX's arg2: the confirmation timeout in ms (low 32 bits) and flags. */
#define PRIVSEP_EX_TIMEOUT_MASK UINT64_C(0xffffffff)
#define PRIVSEP_EX_FORCE (UINT64_C(1) << 32)
/* The longest note (the marker's "operation=ID index=N"), NUL excluded. */
#define PRIVSEP_NOTE_MAX (BACKEND_NOTE_MAX - 1)
/* The largest sessions document the network side reads. */
#define PRIVSEP_SESSIONS_MAX (16u * 1024u * 1024u)
/* HELLO's flag: the helper's backend is a session broker. */
#define PRIVSEP_HELLO_BROKER 1u

/* The most descriptors the fd store may hand a helper at its start (the broker's). */
#define PRIVSEP_RESTORE_MAX 4096

/* How many Unix-socket listeners UNLINK_SOCKET knows of (main's --listen maximum). */
#define PRIVSEP_MAX_SOCKETS 8

const char *privsep_type_to_string(enum privsep_type t);

/*
 * KEXEC_LOAD's images: the helper opens each by path itself, confined to its
 * own copy of the --staging-dir directories (stagepath_open()), hashes what
 * it opened and compares, and checks the signature over the digests and the
 * command line when it trusts keys (privsep_files). Every string is
 * terminated within its field and followed by zeros only; unused ones are
 * all zeros.
 */
struct privsep_load {
        char kernel_path[PRIVSEP_PATH_MAX]; /* absolute, non-empty */
        char initrd_path[PRIVSEP_PATH_MAX]; /* arg 1: absolute; arg 0: empty */
        char kernel_sha256[72];             /* 64 lower-case hex digits */
        char initrd_sha256[72];             /* the same with an initrd, else empty */
        char key_id[72];    /* the signature's key (sign_key_id_valid()), "" = unsigned */
        char signature[96]; /* with a key_id: the 88 base64 characters of the Ed25519
                               signature over sign_message(), else empty */
};

/* network -> helper. Every unused field is zero; the size is exact, the same for every type. */
struct privsep_req {
        uint32_t magic;
        uint16_t version;
        uint16_t type;
        uint64_t seq; /* per channel: 1, 2, 3, ... */
        uint32_t arg;
        uint32_t cmdline_len; /* KEXEC_LOAD: strlen(cmdline); OPEN_STAGING: strlen(path) */
        uint64_t arg2;        /* SET_EVENT_EX: timeout and flags; SESSIONS: since */
        char cmdline[PRIVSEP_CMDLINE_MAX]; /* KEXEC_LOAD's command line, OPEN_STAGING's path */
        struct privsep_load load;          /* KEXEC_LOAD only */
};

/* helper -> network. */
struct privsep_reply {
        uint32_t magic;
        uint16_t version;
        uint16_t type;
        uint64_t seq;                /* the request's; HELLO 0; STATE_CHANGED counts on its own */
        int32_t result;              /* 0 or -errno (-4095..0) */
        uint32_t state;              /* GET_STATE, STATE_CHANGED, SELF_CHECK (ioctl) */
        uint32_t state2;             /* SELF_CHECK (sysfs) */
        uint32_t flag;               /* KEXEC_LOADED: 0 or 1; HELLO: PRIVSEP_HELLO_BROKER */
        uint64_t uptime_ms;          /* GET_INFO: the kernel's uptime, 0 = unknown */
        uint64_t size;               /* SESSIONS: the document's length */
        char name[PRIVSEP_NAME_MAX]; /* HELLO: "sim", "luo-v3" or "luo-sessions" */
        char boot_id[40];            /* HELLO, GET_INFO */
        char release[128];           /* HELLO, GET_INFO */
        char msg[PRIVSEP_MSG_MAX];   /* HELLO on failure: the operator's sentence; on
                                        success the backend's describe(); SET_EVENT_EX and
                                        REBOOT_EX on failure: the broker's sentence */
};

/* How many fds a request of this type (and arg) must carry; -1 for an unknown type. */
int privsep_req_fds(uint16_t type, uint32_t arg);
/* How many fds a reply of this type and result carries (1: a successful open). */
int privsep_reply_fds(uint16_t type, int32_t result);

/*
 * The helper's decoder: one datagram of len bytes as received (flags are
 * recvmsg()'s msg_flags), with n_fds descriptors. Checks the size, magic,
 * version, the type (a request type valid on channel chan), the sequence
 * number (want_seq), the argument's range, the fd count, that unused fields
 * are zero, the command line's length and terminator, and KEXEC_LOAD's
 * load block (paths terminated, absolute, the initrd's there exactly with
 * arg 1; digests 64 lower-case hex digits; a key id and a signature of the
 * right form together or neither). Returns 0 with the request in *ret, or
 * -EPROTO. Pure: closes nothing, calls nothing. What it does not judge is
 * policy, the helper's (privsep_helper_kexec_policy()).
 */
int privsep_req_decode(const void *buf, size_t len, int flags, size_t n_fds, enum privsep_chan chan,
                       uint64_t want_seq, struct privsep_req *ret);

/*
 * The network side's decoder of a reply to a request of type want_type and
 * sequence want_seq (PRIVSEP_HELLO with seq 0; PRIVSEP_STATE_CHANGED with
 * want_seq 0 accepts any), with n_fds descriptors (privsep_reply_fds()).
 * Returns 0 or -EPROTO.
 */
int privsep_reply_decode(const void *buf, size_t len, int flags, size_t n_fds, uint16_t want_type,
                         uint64_t want_seq, struct privsep_reply *ret);

/*
 * Receive one datagram of at most size bytes and up to PRIVSEP_MAX_FDS
 * descriptors (into fds, *ret_n_fds of them, O_CLOEXEC). Returns its length
 * (0 at EOF) and its msg_flags in *ret_flags, or -errno. Descriptors beyond
 * the buffer are closed by the kernel and flagged MSG_CTRUNC.
 */
ssize_t privsep_recv(int fd, void *buf, size_t size, int *ret_flags, int fds[PRIVSEP_MAX_FDS],
                     size_t *ret_n_fds, bool nonblock);
/* Send one datagram with n_fds descriptors (SCM_RIGHTS). 0 or -errno. */
int privsep_send(int fd, const void *buf, size_t len, const int *fds, size_t n_fds, bool nonblock);

/* ---- the helper ----------------------------------------------------------- */

/*
 * What the helper may open or remove for the network side, fixed when it
 * starts (the configuration's, borrowed): the requests name them by index,
 * never by path, except OPEN_STAGING, whose path must pass the same
 * confinement again (common/stagepath.c) inside staging_dirs.
 */
struct privsep_files {
        const char *config[_PRIVSEP_CONFIG_MAX]; /* NULL: not configured (ENOENT) */
        char *const *staging_dirs;               /* OPEN_STAGING's and KEXEC_LOAD's confinement */
        unsigned n_staging_dirs;
        /*
         * KEXEC_LOAD's signature policy (--trusted-keys, --require-signature):
         * with a keys directory a signed request's signature is verified here
         * (sign_verify()); with require_signature an unsigned one is refused.
         * Without a keys directory, a signature is the network side's business
         * (it refuses one it cannot check) and is not looked at.
         */
        const char *trusted_keys_dir;
        bool require_signature;
        const char *sockets[PRIVSEP_MAX_SOCKETS]; /* Unix listeners by --listen index, or NULL */
        /*
         * Opening as root: try with file system identity 0 first, then (on
         * EACCES) as this user, the run user (drop_uid/drop_gid of the spawn).
         * Ignored unless root.
         */
        bool fs_root;
        uid_t user_uid;
        gid_t user_gid;
};

/*
 * Serve a backend on the helper's ends of the three channels: send HELLO,
 * answer QUERY and push EVENT on a second thread, execute CMD requests on
 * the calling thread. A malformed request is answered with -EPROTO and
 * never acted on (its fds are closed). Returns 0 when the network side
 * closes the command or query channel, -errno on a failure to communicate.
 * Closes nothing it was given. files may be NULL (every open: ENOENT).
 */
int privsep_helper_serve(struct backend *b, const int fds[_PRIVSEP_CHAN_MAX],
                         const struct privsep_files *files);

/*
 * The helper's handling of one decoded OPEN_CONFIG, OPEN_STAGING or
 * UNLINK_SOCKET request (exposed for the tests: it is what a network
 * process that skipped its own checks reaches). Returns a descriptor
 * (the opens), 0 (the unlink) or -errno.
 */
int privsep_helper_file_request(const struct privsep_files *files, const struct privsep_req *q);

/*
 * The helper's policy, message by message (docs/privsep.md, "What the
 * helper checks itself"). Each returns 0 or a stable -errno, and writes the
 * reason for the log into why (the helper logs it; a refusal never reaches
 * the kernel):
 *   the command line: printable ASCII only (-EINVAL);
 *   KEXEC_LOAD's images (privsep_helper_kexec_open()): outside the staging
 *   directories or not a valid path -EXDEV, not a regular file -ENODEV,
 *   open()'s errno, larger than PRIVSEP_IMAGE_MAX -EFBIG, a SHA-256 other
 *   than the one sent -EBADMSG; its signature: unsigned while required, or
 *   not verifying with a trusted key -EKEYREJECTED;
 *   REBOOT and REBOOT_EX: only while the kernel is prepared (or frozen: a
 *   reboot that failed after the freeze), else -EPERM.
 */
int privsep_helper_cmdline_check(const char *cmdline, char *why, size_t why_size);
int privsep_helper_signature_check(const struct privsep_files *files, const struct privsep_req *q,
                                   char *why, size_t why_size);
int privsep_helper_reboot_check(struct backend *b, char *why, size_t why_size);
/*
 * Open KEXEC_LOAD's kernel (which 0) or initrd (1) by path, confined like
 * OPEN_STAGING, hash it and compare with the digest sent. Returns the
 * descriptor to load: the file itself when only root can write it, else a
 * sealed memfd copy of exactly what was hashed (the run user, which the
 * network process is, could otherwise change the file between the check and
 * the kernel's read). -errno with why filled otherwise.
 */
int privsep_helper_kexec_open(const struct privsep_files *files, const struct privsep_req *q,
                              unsigned which, char *why, size_t why_size);

/* Send a failed HELLO (backend_open's result and sentence) on the command channel. */
int privsep_helper_hello_error(int cmd_fd, int error, const char *msg);

/* ---- the network side ----------------------------------------------------- */

struct privsep_hooks {
        /*
         * Called (on whichever thread noticed) when the helper is gone or
         * broke the protocol while the proxy was not being stopped: whatever
         * was in flight has an unknown outcome. May not return (main.c's
         * ends the process). When NULL, or when it returns, the call fails
         * with -ENOTCONN, as does every later one.
         */
        void (*lost)(void *userdata, const char *why);
        void *userdata;
};

/*
 * Wrap the network side's ends of the channels (taken, closed on failure
 * too) in a proxy backend: read the helper's HELLO. On failure returns the
 * helper's error with its sentence in msg, like backend_open(). helper is
 * the helper's pid (0 when it is a thread, in tests): privsep_proxy_stop()
 * and backend_free() wait for it.
 */
int privsep_proxy_new(int fds[_PRIVSEP_CHAN_MAX], pid_t helper, const struct privsep_hooks *hooks,
                      struct backend **ret, char *msg, size_t msg_size);

/*
 * Ask the helper to open one of its configured files (an O_RDONLY|O_CLOEXEC
 * descriptor of a regular file; -errno), to open a kernel or initrd image
 * for staging (stagepath_open()'s answers), or to remove a Unix-socket
 * listener's file (index into privsep_files.sockets) that this process
 * can no longer remove itself. Any thread.
 */
int privsep_proxy_open_config(struct backend *b, enum privsep_config_file which);
int privsep_proxy_open_staging(struct backend *b, const char *path);
int privsep_proxy_unlink_socket(struct backend *b, unsigned index);

/*
 * KEXEC_LOAD through the helper, which opens the images itself: the paths,
 * the digests the staging checked (64 hex digits, any case), the command
 * line and, when the request was signed, its key id and base64 signature
 * (NULL or "": unsigned). Checks locally what the helper would refuse as
 * malformed (-EINVAL, -ENAMETOOLONG). The proxy's ops->kexec_load, which
 * takes descriptors, answers -EOPNOTSUPP: the helper takes no descriptor.
 */
struct privsep_kexec_args {
        const char *kernel_path, *kernel_sha256;
        const char *initrd_path, *initrd_sha256; /* NULL or "": none */
        const char *cmdline;                     /* NULL: "" */
        const char *key_id, *signature;          /* NULL or "": unsigned */
};
int privsep_proxy_kexec_load(struct backend *b, const struct privsep_kexec_args *a);

/* Is b a privsep proxy? Attached to a helper that outlived an earlier agent (privsep_attach)? */
bool privsep_is_proxy(const struct backend *b);
bool privsep_proxy_attached(const struct backend *b);
pid_t privsep_proxy_helper(const struct backend *b);

/*
 * Stop talking to the helper: shut the channels down (the helper sees EOF
 * and exits) and wait up to timeout_ms for it to be gone (then SIGKILL and
 * wait). Later calls fail with -ENOTCONN and do not count as a loss. Used
 * before the simulated kexec so that no two helpers ever share the
 * simulated kernel. Returns 0, or -errno.
 */
int privsep_proxy_stop(struct backend *b, unsigned timeout_ms);

/* What the helper process needs to know (privsep_spawn()). */
struct privsep_spawn_config {
        const struct backend_config *backend;
        /*
         * Running as root with the network side about to drop to drop_uid:
         * the helper keeps uid 0 and only CAP_SYS_BOOT, and its file system
         * identity (fsuid/fsgid) becomes drop_uid/drop_gid so the files it
         * writes (the simulated kernel's) stay the run user's.
         */
        bool drop;
        uid_t drop_uid;
        gid_t drop_gid;
        /* -EBUSY from the backend: retry this long (a predecessor may still be exiting). */
        unsigned busy_retry_ms;
        /* What OPEN_CONFIG, OPEN_STAGING and UNLINK_SOCKET may reach (fs_root: set by the spawn).
         */
        struct privsep_files files;
        /*
         * Run a session broker around the backend (NULL: none). Its socket is
         * bound before the helper drops its privileges, its thread started
         * after (capabilities are per thread).
         */
        const struct broker_config *broker;
        /*
         * Where a helper whose network process died waits for the next one
         * (with a broker that holds workloads' sessions; NULL: it never
         * survives its network process). Bound as root before the drop,
         * mode 0600; only uid 0 (or, not started as root, our own uid) may
         * attach.
         */
        const char *rendezvous;
};

/*
 * Attach to a helper that outlived its network process and waits at
 * rendezvous (privsep_spawn_config.rendezvous): returns 1 with the proxy in
 * *ret, 0 when no helper waits there (no socket, nobody listening: spawn
 * one), -errno with a sentence in msg otherwise (a helper that is not
 * root's, a protocol failure). Before any thread exists.
 */
int privsep_attach(const char *rendezvous, const struct privsep_hooks *hooks, struct backend **ret,
                   char *msg, size_t msg_size);

/*
 * Fork the helper (which opens the real backend, drops what it does not
 * need and serves it) and return the proxy backend. Call before any thread
 * exists. On failure returns -errno with the helper's sentence in msg (the
 * helper's backend_open() result, so the caller keeps its exit codes).
 */
int privsep_spawn(const struct privsep_spawn_config *cfg, const struct privsep_hooks *hooks,
                  struct backend **ret, char *msg, size_t msg_size);
