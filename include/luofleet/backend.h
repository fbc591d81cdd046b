/*
 * backend.h: the kernel-orchestrator backend interface, one ops table behind
 * which the real kernel (luo-v3) and the simulated one (sim) live, in the
 * manner of Redis' ae.c: the agent never knows which one it talks to.
 *
 * Threads: backend_open()/backend_free() on the main thread; the watch
 * functions on the agent's event-loop thread; everything else (set_event,
 * kexec_load, kexec_unload, reboot) on the agent's single worker thread, one
 * call at a time. get_state()/kexec_loaded() may be called from either of
 * those two threads; implementations make them safe for that.
 *
 * Non-logging: every function returns >= 0 or -errno and leaves the words to
 * the caller, except that backend_open() may fill a message buffer with a
 * sentence for the operator (for example who holds /dev/liveupdate).
 *
 * Paths are resolved under a root directory (cfg->root, default "/"), so the
 * real backend can be pointed at a fake sysfs/dev tree by the tests.
 */
#pragma once

#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "luofleet/luo_state.h"

/* The v3 ioctl ABI (kernel-abi.md section A): type 0xBA, _IO(0xBA, nr). */
#define LUO_IOC_TYPE 0xBA
#define LUO_IOC(nr) ((unsigned long)((LUO_IOC_TYPE << 8) | (nr)))
#define LUO_IOC_FD_PRESERVE LUO_IOC(0x00)
#define LUO_IOC_FD_UNPRESERVE LUO_IOC(0x01)
#define LUO_IOC_FD_RESTORE LUO_IOC(0x02)
#define LUO_IOC_GET_STATE LUO_IOC(0x03)
#define LUO_IOC_SET_EVENT LUO_IOC(0x04)
#define LUO_IOC_GET_FD_STATE LUO_IOC(0x05)
#define LUO_IOC_SET_FD_EVENT LUO_IOC(0x06)

struct luo_ioc_get_state {
        uint32_t size; /* = 8 */
        uint32_t state;
};

struct luo_ioc_set_event {
        uint32_t size; /* = 8 */
        uint32_t event;
};

struct luo_ioc_fd_preserve {
        uint32_t size; /* = 16 */
        int32_t fd;
        uint64_t token;
};

struct luo_ioc_fd_unpreserve {
        uint32_t size; /* = 16 */
        uint32_t pad;
        uint64_t token;
};

struct luo_ioc_fd_restore {
        uint32_t size; /* = 16 */
        int32_t fd;
        uint64_t token;
};

/*
 * The mainline sessions ABI (kernel-abi.md section B, Linux 6.19+): no global
 * state; sessions of preserved fds. On /dev/liveupdate: CREATE_SESSION and
 * RETRIEVE_SESSION; on a session fd: PRESERVE_FD, RETRIEVE_FD, FINISH and
 * (7.3) GET_NAME. Same _IO(0xBA, nr) encoding and size-first structs.
 */
#define LUO_SESSION_NAME_MAX 64 /* bytes, NUL included: at most 63 characters */
#define LUO_IOC_CREATE_SESSION LUO_IOC(0x00)
#define LUO_IOC_RETRIEVE_SESSION LUO_IOC(0x01)
#define LUO_IOC_SESSION_PRESERVE_FD LUO_IOC(0x40)
#define LUO_IOC_SESSION_RETRIEVE_FD LUO_IOC(0x41)
#define LUO_IOC_SESSION_FINISH LUO_IOC(0x42)
#define LUO_IOC_SESSION_GET_NAME LUO_IOC(0x43)

struct luo_ioc_session {
        uint32_t size; /* = 72 */
        int32_t fd;    /* out: the session fd (O_CLOEXEC) */
        char name[LUO_SESSION_NAME_MAX];
};

struct luo_ioc_session_fd {
        uint32_t size; /* = 16 */
        int32_t fd;    /* PRESERVE_FD: in; RETRIEVE_FD: out */
        uint64_t token;
};

struct luo_ioc_session_finish {
        uint32_t size; /* = 8 */
        uint32_t reserved;
};

struct luo_ioc_session_get_name {
        uint32_t size; /* = 72 */
        uint32_t reserved;
        char name[LUO_SESSION_NAME_MAX];
};

/*
 * The system calls the real backend makes, behind a table so that unit tests
 * can inject a fake kernel. NULL members (or a NULL table) mean the real
 * system call. Each returns like the libc wrapper: -1 and errno on failure.
 */
struct luo_sys {
        int (*ioctl)(int fd, unsigned long request, void *arg);
        int (*poll)(struct pollfd *fds, nfds_t nfds, int timeout);
        long (*kexec_file_load)(int kernel_fd, int initrd_fd, unsigned long cmdline_len,
                                const char *cmdline, unsigned long flags);
        int (*reboot)(int cmd);
        /* Every open of the real backend (the root dir, sysfs, /dev/liveupdate, /proc). */
        int (*openat)(int dirfd, const char *path, int flags, mode_t mode);
        void *userdata;
};

enum backend_kind {
        BACKEND_LUO_V3,
        BACKEND_SIM,
        BACKEND_AUTO,
        BACKEND_LUO_SESSIONS, /* the mainline sessions interface (luo_sessions.c) */
        _BACKEND_KIND_MAX,
};

const char *backend_kind_to_string(enum backend_kind k);
int backend_kind_from_string(const char *s);

/* Simulator fault injection: make one event (or the reboot) fail or stall. */
enum sim_fault_op {
        SIM_FAULT_PREPARE = LUO_EVENT_PREPARE,
        SIM_FAULT_FREEZE = LUO_EVENT_FREEZE,
        SIM_FAULT_FINISH = LUO_EVENT_FINISH,
        SIM_FAULT_CANCEL = LUO_EVENT_CANCEL,
        SIM_FAULT_REBOOT,
        SIM_FAULT_KEXEC_LOAD,
        _SIM_FAULT_OP_MAX,
};

struct sim_fault {
        int error;         /* positive errno to fail with, 0 = succeed */
        unsigned delay_ms; /* stall this long before answering */
};

struct backend_config {
        enum backend_kind kind;
        const char *root;          /* resolve kernel paths under this dir; NULL = "/" */
        const char *state_dir;     /* sim: where its state survives a simulated reboot */
        const struct luo_sys *sys; /* luo-v3: injected system calls, NULL = real */
        /* sim only: */
        struct sim_fault faults[_SIM_FAULT_OP_MAX];
        const char *sim_release; /* kernel release the sim reports; NULL = uname */
        /* the release every boot after a simulated kexec reports, whatever the staged image's
         * header names (a "came back with the wrong kernel" fault); NULL = the image's */
        const char *sim_boot_release;
};

/*
 * Parse a fault spec "OP=ERRNO[:DELAYms]" or "OP=DELAYms" (OP: prepare, freeze,
 * finish, cancel, reboot, kexec-load; ERRNO: a name like EIO or a number) into
 * cfg->faults. Returns 0 or -EINVAL.
 */
int backend_config_add_fault(struct backend_config *cfg, const char *spec);

struct backend_ops;

/* What an operation tells the session broker (set_event_ex, reboot_ex). */
#define BACKEND_NOTE_MAX 128
struct backend_event_opts {
        /* PREPARE: how long registered workloads have to confirm; 0 = the broker's default */
        uint32_t confirm_timeout_ms;
        /* FINISH: finish the workloads' unfinished sessions too (their data is freed) */
        bool force;
        /*
         * PREPARE, REBOOT: printable ASCII for the marker, at most
         * BACKEND_NOTE_MAX - 1 bytes: "operation=ID index=N" (the operation
         * and the journal position the next boot continues from).
         */
        char note[BACKEND_NOTE_MAX];
};

struct backend {
        const struct backend_ops *ops;
};

struct backend_info {
        char boot_id[40];   /* 36 chars of a UUID */
        char release[128];  /* kernel release ("uname -r") */
        uint64_t uptime_ms; /* the kernel's uptime at the call (/proc/uptime), 0 = unknown */
};

struct backend_ops {
        const char *name; /* "luo-v3", "sim": the `backend` field of /v1/state */
        void (*free)(struct backend *b);

        /* Authoritative state read (GET_STATE ioctl on luo-v3). */
        int (*get_state)(struct backend *b, enum luo_state *ret);

        /*
         * Change notification. watch_fd() is polled for watch_events() by the
         * event loop; when it fires, watch_read() consumes the notification
         * and returns the current state (a re-read: wake-ups coalesce).
         */
        int (*watch_fd)(struct backend *b);
        short (*watch_events)(struct backend *b);
        int (*watch_read)(struct backend *b, enum luo_state *ret);

        /* SET_EVENT; blocking; the kernel's errno as -errno. */
        int (*set_event)(struct backend *b, enum luo_event ev);

        /* kexec_file_load(kernel_fd, initrd_fd or -1, cmdline); blocking. */
        int (*kexec_load)(struct backend *b, int kernel_fd, int initrd_fd, const char *cmdline);
        int (*kexec_unload)(struct backend *b);
        /* /sys/kernel/kexec_loaded == 1 */
        int (*kexec_loaded)(struct backend *b, bool *ret);

        /*
         * reboot(LINUX_REBOOT_CMD_KEXEC). On the real kernel it does not return
         * on success. On the simulator it returns 0 after moving to frozen and
         * persisting "reboot pending": the caller then ends the process (or
         * re-executes itself), which is the simulated jump.
         */
        int (*reboot)(struct backend *b);

        /* boot id and kernel release of the running (possibly simulated) boot. */
        int (*get_info)(struct backend *b, struct backend_info *ret);

        /*
         * Start-up consistency check: luo-v3 compares GET_STATE with sysfs.
         * Returns 0 when consistent, -EPROTO with both values in *ret_ioctl, *ret_sysfs
         * when not.
         */
        int (*self_check)(struct backend *b, enum luo_state *ret_ioctl, enum luo_state *ret_sysfs);

        /*
         * ---- preserving workloads' files (the session broker, broker/) ----
         * Optional members: NULL when the kernel interface has no such thing.
         * The broker uses the session members when session_create is set
         * (luo-sessions, sim), else the token members (luo-v3). All on the
         * broker's callers' threads (the helper's command and broker threads),
         * never two at a time (the broker serialises them).
         *
         * Sessions (kernel-abi.md section B): a session is a descriptor (the
         * kernel's session fd on luo-sessions; a handle of the backend's own
         * on sim) that only the backend's session_* members interpret. Names
         * are 1..63 bytes. Errnos are the kernel's, unchanged: session_create
         * EEXIST (name in use), session_retrieve ENOENT (no such incoming
         * session) / EINVAL (retrieved already), session_preserve EEXIST
         * (token in use) / EBUSY (file preserved already) / EBADF / ENOENT
         * (a file type that cannot be preserved), session_retrieve_fd ENOENT.
         * session_unpreserve may be NULL (mainline has no such ioctl: the
         * broker then rebuilds the session). session_release closes the
         * descriptor: an outgoing session's files are unpreserved, a
         * retrieved incoming one is finished implicitly.
         */
        int (*session_create)(struct backend *b, const char *name, int *ret_session);
        int (*session_retrieve)(struct backend *b, const char *name, int *ret_session);
        int (*session_preserve)(struct backend *b, int session, int fd, uint64_t token);
        int (*session_unpreserve)(struct backend *b, int session, uint64_t token);
        int (*session_retrieve_fd)(struct backend *b, int session, uint64_t token, int *ret_fd);
        int (*session_finish)(struct backend *b, int session);
        void (*session_release)(struct backend *b, int session);

        /*
         * Tokens (kernel-abi.md section A, the v3 interface): FD_PRESERVE,
         * FD_UNPRESERVE, FD_RESTORE on the device the backend holds, one
         * global token space. The broker builds sessions on top.
         */
        int (*fd_preserve)(struct backend *b, int fd, uint64_t token);
        int (*fd_unpreserve)(struct backend *b, uint64_t token);
        int (*fd_restore)(struct backend *b, uint64_t token, int *ret_fd);

        /*
         * The agent's marker: a blob (at most BACKEND_MARKER_MAX bytes) the
         * agent hands to the next kernel with the update, read back there.
         * marker_write: while prepared (-EINVAL otherwise; luo-sessions
         * keeps it in its own "luofleet" session, created by PREPARE and
         * released by CANCEL; luo-v3 in a memfd under BACKEND_MARKER_TOKEN;
         * sim in its state directory). marker_read: what the previous boot
         * wrote (malloc'ed, *ret_len bytes), -ENOENT when this boot was not
         * a live update or nothing was written; available until FINISH.
         */
        int (*marker_write)(struct backend *b, const void *blob, size_t len);
        int (*marker_read)(struct backend *b, void **ret_blob, size_t *ret_len);

        /*
         * Facts for /v1/state's "interface" member: a sentence-sized JSON-free
         * summary, e.g. "sessions (CREATE_SESSION RETRIEVE_SESSION PRESERVE_FD
         * RETRIEVE_FD FINISH GET_NAME)". Optional; writes at most size bytes.
         */
        int (*describe)(struct backend *b, char *buf, size_t size);

        /*
         * ---- the session broker's own members (broker/broker.c and the privsep
         * proxy implement them; NULL in the kernel backends) ----
         * set_event_ex, reboot_ex: set_event/reboot with the broker's options;
         * on failure a sentence for the operator in msg (which workloads did
         * not confirm, which sessions are unfinished). sessions_json: the
         * broker's document (docs/session-broker.md: sessions, workloads,
         * summary, and the change events after sequence number `since`),
         * malloc'ed JSON text.
         */
        int (*set_event_ex)(struct backend *b, enum luo_event ev,
                            const struct backend_event_opts *opts, char *msg, size_t msg_size);
        int (*reboot_ex)(struct backend *b, const struct backend_event_opts *opts, char *msg,
                         size_t msg_size);
        int (*sessions_json)(struct backend *b, uint64_t since, char **ret_json, size_t *ret_len);
};

/* The marker's size limit and v3 token (see marker_write above). */
#define BACKEND_MARKER_MAX (1024u * 1024u)
#define BACKEND_MARKER_TOKEN UINT64_C(0x4c46000000000000) /* "LF" << 48 */

/*
 * Open the backend cfg->kind names (BACKEND_AUTO: luo-v3 when
 * <root>/sys/kernel/liveupdate/state exists, luo-sessions when only
 * <root>/dev/liveupdate does). On failure returns -errno and
 * writes an operator-facing sentence into msg (e.g. -EBUSY: "another
 * live-update agent holds /dev/liveupdate").
 */
int backend_open(const struct backend_config *cfg, struct backend **ret, char *msg,
                 size_t msg_size);
struct backend *backend_free(struct backend *b);

/* Implementations (kernel/luo_v3.c, kernel/luo_sessions.c, kernel/sim.c). */
int luo_v3_open(const struct backend_config *cfg, struct backend **ret, char *msg, size_t msg_size);
int luo_sessions_open(const struct backend_config *cfg, struct backend **ret, char *msg,
                      size_t msg_size);
int sim_open(const struct backend_config *cfg, struct backend **ret, char *msg, size_t msg_size);
