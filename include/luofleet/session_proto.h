/*
 * session_proto.h: the wire format between workloads and the session broker
 * (docs/session-protocol.md): fixed-size messages over a SOCK_SEQPACKET Unix
 * socket, descriptors by SCM_RIGHTS. Shared by the broker (broker/broker.c,
 * inside the privileged helper) and the client library (libsession/), which
 * workloads use instead of speaking it themselves.
 *
 * Every message is one struct lfs_msg, exactly sizeof(struct lfs_msg) bytes,
 * little-endian as the host (a Unix socket never leaves the machine). A
 * request carries a sequence number chosen by the client (1, 2, 3, ...);
 * its answer carries the same number and type. The broker also sends
 * unsolicited LFS_EVENT messages (seq 0) to workloads that registered.
 * List requests are answered by zero or more entry messages (LFS_INFO,
 * LFS_FD_INFO, same seq) followed by the answer itself.
 *
 * Decoding is strict (lfs_msg_decode): exact size, magic, version, a known
 * type valid in that direction, NUL-terminated and zero-padded strings,
 * names from [A-Za-z0-9._-], unused fields zero, the right number of fds.
 *
 * Pure functions, any thread, no allocation.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LFS_PROTO_MAGIC 0x53464c53u /* "SLFS" little-endian */
#define LFS_PROTO_VERSION 1

/* A workload's session name: 1..LFS_NAME_MAX bytes of [A-Za-z0-9._-], not "." or "..". */
#define LFS_NAME_MAX 48
/* A workload's own name (HELLO): the same alphabet, 1..LFS_WORKLOAD_MAX bytes. */
#define LFS_WORKLOAD_MAX 63
/* Free text: a veto's reason, a failure's sentence. Printable ASCII (0x20..0x7e). */
#define LFS_TEXT_MAX 255

/* The broker's socket when none is named: root's default; see lfs_default_socket(). */
#define LFS_SOCKET_DEFAULT "/run/luofleet/sessions.sock"
/* The environment variable the client library reads first. */
#define LFS_SOCKET_ENV "LUOFLEET_SESSIONS_SOCKET"

enum lfs_type {
        /* ---- requests (workload -> broker), each answered with the same type and seq ---- */
        LFS_HELLO = 1,        /* text: workload name; arg: LFS_HELLO_* flags. First request. Answer:
                                 arg = the host's state (enum luo_state), arg2 = the broker's
                                 limits (unused, 0), token = the uid the broker sees */
        LFS_SESSION_CREATE,   /* session: a new outgoing session */
        LFS_SESSION_RETRIEVE, /* session: an incoming session (after a live update) */
        LFS_SESSION_FINISH,   /* session: an incoming session is done: what was not retrieved
                                 is freed */
        LFS_SESSION_CLOSE,    /* session: drop an outgoing session (every fd unpreserved) */
        LFS_PRESERVE,         /* session, token, 1 fd. Answer: arg = the file's size in bytes */
        LFS_UNPRESERVE,       /* session, token */
        LFS_RETRIEVE_FD,      /* session, token. Answer: 1 fd (O_CLOEXEC), arg = size */
        LFS_LIST,             /* entries: LFS_INFO per session of the caller; answer: arg = count */
        LFS_SHOW,             /* session; entries: LFS_FD_INFO per fd; answer: arg = count */
        LFS_CONFIRM,          /* arg: the event id of an LFS_EVENT_PREPARE: state preserved */
        LFS_VETO,             /* arg: that event id; text: the reason. The prepare fails */
        /* ---- broker -> workload only ---- */
        LFS_EVENT,   /* seq 0; arg: event id; token: enum lfs_event_kind; arg2: for
                        PREPARE and REBOOT the deadline, in ms from now; text: a note */
        LFS_INFO,    /* entry of LFS_LIST: session, arg = enum lfs_phase, arg2 = fds,
                        token = bytes */
        LFS_FD_INFO, /* entry of LFS_SHOW: token, arg = bytes, arg2 = 1 if retrieved */
        _LFS_TYPE_MAX,
};

/* LFS_HELLO flags. */
#define LFS_HELLO_REGISTER 0x1u /* take part in prepare: confirm or veto each LFS_EVENT_PREPARE */

enum lfs_event_kind {
        LFS_EVENT_PREPARE = 1, /* an update is being prepared: preserve, then confirm (or veto) */
        LFS_EVENT_CANCEL,      /* the prepare was cancelled (or failed): back to normal */
        LFS_EVENT_REBOOT,      /* the kexec is imminent: nothing more will be preserved */
        LFS_EVENT_UPDATED,     /* this boot came from a live update: retrieve your sessions */
        LFS_EVENT_FINISH,      /* the update is finished: unretrieved data is gone */
        _LFS_EVENT_KIND_MAX,
};

enum lfs_phase {
        LFS_PHASE_OUTGOING = 1, /* created in this boot, fds being preserved for the next */
        LFS_PHASE_INCOMING,     /* handed over by the previous boot, not retrieved yet */
        LFS_PHASE_RETRIEVED,    /* retrieved by its owner, not finished */
        LFS_PHASE_FINISHED,     /* done (kept in lists until the update is finished) */
        _LFS_PHASE_MAX,
};

struct lfs_msg {
        uint32_t magic;
        uint16_t version;
        uint16_t type;
        uint32_t seq;
        int32_t result; /* answers: 0 or -errno (-4095..0); requests and events: 0 */
        uint64_t token;
        uint64_t arg;
        uint64_t arg2;
        char session[LFS_NAME_MAX + 16]; /* NUL-terminated, zero-padded (64 bytes) */
        char text[LFS_TEXT_MAX + 1];     /* NUL-terminated, zero-padded (256 bytes) */
};

/* The strings of api/openapi.yaml (phase) and docs/session-protocol.md. */
const char *lfs_type_to_string(enum lfs_type t);
const char *lfs_event_kind_to_string(enum lfs_event_kind k);
const char *lfs_phase_to_string(enum lfs_phase p);

/* 1..max bytes of [A-Za-z0-9._-], not "." or "..". */
bool lfs_name_valid(const char *s, size_t max);
/* Printable ASCII only (may be empty), shorter than LFS_TEXT_MAX + 1. */
bool lfs_text_valid(const char *s);

/* A zeroed message with magic, version, type and seq set. */
void lfs_msg_init(struct lfs_msg *m, enum lfs_type type, uint32_t seq);
/* Copy s into a fixed field (zero-padded); -ENAMETOOLONG when it does not fit. */
int lfs_msg_set_str(char *field, size_t size, const char *s);

/*
 * How many fds a message carries: a PRESERVE request 1, a RETRIEVE_FD answer
 * with result 0 1, anything else 0.
 */
int lfs_msg_fds(uint16_t type, bool answer, int32_t result);

enum lfs_direction {
        LFS_TO_BROKER, /* requests */
        LFS_TO_CLIENT, /* answers, entries, events */
};

/*
 * Check one datagram of len bytes (recvmsg()'s msg_flags in flags) carrying
 * n_fds descriptors, travelling in direction dir. Returns 0 with the message
 * in *ret, or -EPROTO (malformed: never act on it, *ret untouched) or
 * -EBADMSG (well-formed but a name or text outside its alphabet: answerable
 * with EINVAL; *ret is filled so the answer can carry its type and seq). Pure.
 */
int lfs_msg_decode(const void *buf, size_t len, int flags, size_t n_fds, enum lfs_direction dir,
                   struct lfs_msg *ret);

/*
 * Send and receive one message with up to one descriptor (MSG_NOSIGNAL,
 * MSG_CMSG_CLOEXEC, EINTR retried). lfs_recv returns the length (0 at EOF)
 * with *ret_fd = the descriptor or -1 (the caller closes it, also when the
 * decoder refuses the message), and *ret_flags = msg_flags. More than one
 * descriptor: all are closed, *ret_fd is -1 and MSG_CTRUNC is set in
 * *ret_flags, so the decoder refuses the message. -errno on failure.
 */
int lfs_send(int sock, const struct lfs_msg *m, int fd, bool nonblock);
long lfs_recv(int sock, struct lfs_msg *m, int *ret_fd, int *ret_flags, bool nonblock);

#ifdef __cplusplus
}
#endif
