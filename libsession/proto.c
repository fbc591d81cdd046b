/*
 * proto.c: the workload wire format (session_proto.h,
 * docs/session-protocol.md): strings, name and text rules, the strict
 * decoder, and sending/receiving one message with at most one descriptor.
 * Shared by the broker (inside the privileged helper) and the client
 * library, so both ends refuse exactly the same datagrams.
 *
 * The decoder checks every byte before anyone acts on it: the size, the
 * socket's truncation flags, magic and version, a type that belongs in that
 * direction, the sequence number and result rules, the fields each type
 * uses (table below: every other field must be zero), terminated and
 * zero-padded strings, and the descriptor count. Only when the message is
 * well-formed does it look at the alphabets: a name or text outside them is
 * -EBADMSG, with the message returned, so the broker can answer that
 * request with EINVAL instead of dropping the client.
 *
 * Pure functions (lfs_send/lfs_recv: one system call each, retried on
 * EINTR), any thread, no allocation, no dependency but libc.
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "luofleet/luo_state.h"
#include "luofleet/scm.h"
#include "luofleet/session_proto.h"

#define LFS_EXPORT __attribute__((visibility("default")))

#define ERRNO_MAX 4095

/* No padding: every byte is a field, so "unused fields are zero" covers them all. */
_Static_assert(sizeof(struct lfs_msg) == 360, "lfs_msg layout");
_Static_assert(offsetof(struct lfs_msg, token) == 16, "lfs_msg layout");
_Static_assert(offsetof(struct lfs_msg, session) == 40, "lfs_msg layout");
_Static_assert(offsetof(struct lfs_msg, text) == 104, "lfs_msg layout");

static const char *const type_names[_LFS_TYPE_MAX] = {
        [LFS_HELLO] = "hello",
        [LFS_SESSION_CREATE] = "session-create",
        [LFS_SESSION_RETRIEVE] = "session-retrieve",
        [LFS_SESSION_FINISH] = "session-finish",
        [LFS_SESSION_CLOSE] = "session-close",
        [LFS_PRESERVE] = "preserve",
        [LFS_UNPRESERVE] = "unpreserve",
        [LFS_RETRIEVE_FD] = "retrieve-fd",
        [LFS_LIST] = "list",
        [LFS_SHOW] = "show",
        [LFS_CONFIRM] = "confirm",
        [LFS_VETO] = "veto",
        [LFS_EVENT] = "event",
        [LFS_INFO] = "info",
        [LFS_FD_INFO] = "fd-info",
};

static const char *const event_kind_names[_LFS_EVENT_KIND_MAX] = {
        [LFS_EVENT_PREPARE] = "prepare", [LFS_EVENT_CANCEL] = "cancel",
        [LFS_EVENT_REBOOT] = "reboot",   [LFS_EVENT_UPDATED] = "updated",
        [LFS_EVENT_FINISH] = "finish",
};

static const char *const phase_names[_LFS_PHASE_MAX] = {
        [LFS_PHASE_OUTGOING] = "outgoing",
        [LFS_PHASE_INCOMING] = "incoming",
        [LFS_PHASE_RETRIEVED] = "retrieved",
        [LFS_PHASE_FINISHED] = "finished",
};

LFS_EXPORT const char *lfs_type_to_string(enum lfs_type t)
{
        if ((unsigned)t >= _LFS_TYPE_MAX)
                return NULL;
        return type_names[t];
}

LFS_EXPORT const char *lfs_event_kind_to_string(enum lfs_event_kind k)
{
        if ((unsigned)k >= _LFS_EVENT_KIND_MAX)
                return NULL;
        return event_kind_names[k];
}

LFS_EXPORT const char *lfs_phase_to_string(enum lfs_phase p)
{
        if ((unsigned)p >= _LFS_PHASE_MAX)
                return NULL;
        return phase_names[p];
}

static bool name_char(char c)
{
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               c == '.' || c == '_' || c == '-';
}

LFS_EXPORT bool lfs_name_valid(const char *s, size_t max)
{
        size_t n;

        if (!s)
                return false;
        n = strnlen(s, max + 1);
        if (n == 0 || n > max)
                return false;
        /* Names become file-like kernel names (lf:<uid>:<name>): no path games. */
        if (strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
                return false;
        for (size_t i = 0; i < n; i++)
                if (!name_char(s[i]))
                        return false;
        return true;
}

LFS_EXPORT bool lfs_text_valid(const char *s)
{
        size_t n;

        if (!s)
                return false;
        n = strnlen(s, LFS_TEXT_MAX + 1);
        if (n > LFS_TEXT_MAX)
                return false;
        for (size_t i = 0; i < n; i++)
                if (s[i] < 0x20 || s[i] > 0x7e)
                        return false;
        return true;
}

LFS_EXPORT void lfs_msg_init(struct lfs_msg *m, enum lfs_type type, uint32_t seq)
{
        memset(m, 0, sizeof(*m));
        m->magic = LFS_PROTO_MAGIC;
        m->version = LFS_PROTO_VERSION;
        m->type = (uint16_t)type;
        m->seq = seq;
}

LFS_EXPORT int lfs_msg_set_str(char *field, size_t size, const char *s)
{
        size_t n;

        if (!field || size == 0 || !s)
                return -EINVAL;
        n = strnlen(s, size);
        if (n >= size)
                return -ENAMETOOLONG;
        memset(field, 0, size);
        memcpy(field, s, n);
        return 0;
}

LFS_EXPORT int lfs_msg_fds(uint16_t type, bool answer, int32_t result)
{
        if (!answer && type == LFS_PRESERVE)
                return 1;
        if (answer && type == LFS_RETRIEVE_FD && result == 0)
                return 1;
        return 0;
}

/*
 * The fields a message uses, per type and direction (docs/session-protocol.md,
 * "Fields"): everything else must be zero.
 */
enum {
        F_TOKEN = 1u << 0,
        F_ARG = 1u << 1,
        F_ARG2 = 1u << 2,
        F_SESSION = 1u << 3,   /* a session name, 1..LFS_NAME_MAX of the alphabet */
        F_TEXT_NAME = 1u << 4, /* text is a workload name, 1..LFS_WORKLOAD_MAX */
        F_TEXT = 1u << 5,      /* text is free printable text, may be empty */
};

static unsigned request_fields(uint16_t type)
{
        switch (type) {
        case LFS_HELLO:
                return F_ARG | F_TEXT_NAME;
        case LFS_SESSION_CREATE:
        case LFS_SESSION_RETRIEVE:
        case LFS_SESSION_FINISH:
        case LFS_SESSION_CLOSE:
        case LFS_SHOW:
                return F_SESSION;
        case LFS_PRESERVE:
        case LFS_UNPRESERVE:
        case LFS_RETRIEVE_FD:
                return F_SESSION | F_TOKEN;
        case LFS_LIST:
                return 0;
        case LFS_CONFIRM:
                return F_ARG;
        case LFS_VETO:
                return F_ARG | F_TEXT;
        default:
                return 0;
        }
}

static unsigned client_fields(uint16_t type, int32_t result)
{
        switch (type) {
        case LFS_EVENT:
                return F_ARG | F_TOKEN | F_ARG2 | F_TEXT;
        case LFS_INFO:
                return F_SESSION | F_ARG | F_ARG2 | F_TOKEN;
        case LFS_FD_INFO:
                return F_TOKEN | F_ARG | F_ARG2;
        default:
                break;
        }
        /* An answer: the broker's sentence always, the values only on success. */
        if (result < 0)
                return F_TEXT;
        switch (type) {
        case LFS_HELLO:
                return F_ARG | F_TOKEN | F_TEXT;
        case LFS_PRESERVE:
        case LFS_RETRIEVE_FD:
        case LFS_LIST:
        case LFS_SHOW:
                return F_ARG | F_TEXT;
        default:
                return F_TEXT;
        }
}

static bool all_zero(const void *p, size_t n)
{
        const unsigned char *b = p;

        for (size_t i = 0; i < n; i++)
                if (b[i])
                        return false;
        return true;
}

/* Terminated, nothing but zeros after the terminator, empty when unused. */
static bool str_ok(const char *s, size_t size, bool used)
{
        const char *nul = memchr(s, 0, size);

        if (!nul)
                return false;
        if (!all_zero(nul, size - (size_t)(nul - s)))
                return false;
        return used || nul == s;
}

/* Value ranges of the used numeric fields; 0 when they hold. */
static int values_ok(const struct lfs_msg *m, enum lfs_direction dir)
{
        if (dir == LFS_TO_BROKER) {
                if (m->type == LFS_HELLO && (m->arg & ~(uint64_t)LFS_HELLO_REGISTER))
                        return -EPROTO;
                return 0;
        }
        switch (m->type) {
        case LFS_EVENT:
                if (m->token == 0 || m->token >= _LFS_EVENT_KIND_MAX)
                        return -EPROTO;
                /* Only a prepare and a reboot (both answered) have a deadline. */
                if (m->token != LFS_EVENT_PREPARE && m->token != LFS_EVENT_REBOOT && m->arg2 != 0)
                        return -EPROTO;
                return 0;
        case LFS_INFO:
                if (m->arg == 0 || m->arg >= _LFS_PHASE_MAX)
                        return -EPROTO;
                return 0;
        case LFS_FD_INFO:
                if (m->arg2 > 1)
                        return -EPROTO;
                return 0;
        case LFS_HELLO:
                /* The host's state; the peer's uid ((uid_t)-1 is never one). */
                if (m->result == 0 && (m->arg >= _LUO_STATE_MAX || m->token >= UINT32_MAX))
                        return -EPROTO;
                return 0;
        default:
                return 0;
        }
}

LFS_EXPORT int lfs_msg_decode(const void *buf, size_t len, int flags, size_t n_fds,
                              enum lfs_direction dir, struct lfs_msg *ret)
{
        struct lfs_msg m;
        unsigned f;
        bool request;

        if (!buf || !ret || len != sizeof(m) || (flags & (MSG_TRUNC | MSG_CTRUNC)))
                return -EPROTO;
        if (dir != LFS_TO_BROKER && dir != LFS_TO_CLIENT)
                return -EPROTO;
        memcpy(&m, buf, sizeof(m));
        if (m.magic != LFS_PROTO_MAGIC || m.version != LFS_PROTO_VERSION)
                return -EPROTO;

        /* The type, and the sequence number and result rules of its kind. */
        request = m.type >= LFS_HELLO && m.type <= LFS_VETO;
        if (dir == LFS_TO_BROKER) {
                if (!request || m.seq == 0 || m.result != 0)
                        return -EPROTO;
                f = request_fields(m.type);
        } else {
                if (request) {
                        if (m.seq == 0 || m.result > 0 || m.result < -ERRNO_MAX)
                                return -EPROTO;
                } else if (m.type == LFS_EVENT) {
                        if (m.seq != 0 || m.result != 0)
                                return -EPROTO;
                } else if (m.type == LFS_INFO || m.type == LFS_FD_INFO) {
                        if (m.seq == 0 || m.result != 0)
                                return -EPROTO;
                } else
                        return -EPROTO;
                f = client_fields(m.type, m.result);
        }

        if ((int)n_fds != lfs_msg_fds(m.type, dir == LFS_TO_CLIENT, m.result))
                return -EPROTO;
        if ((!(f & F_TOKEN) && m.token != 0) || (!(f & F_ARG) && m.arg != 0) ||
            (!(f & F_ARG2) && m.arg2 != 0))
                return -EPROTO;
        if (values_ok(&m, dir) < 0)
                return -EPROTO;
        if (!str_ok(m.session, sizeof(m.session), f & F_SESSION) ||
            !str_ok(m.text, sizeof(m.text), f & (F_TEXT | F_TEXT_NAME)))
                return -EPROTO;

        /* Well-formed. The alphabets last: a request outside them is answerable. */
        *ret = m;
        if ((f & F_SESSION) && !lfs_name_valid(m.session, LFS_NAME_MAX))
                return -EBADMSG;
        if ((f & F_TEXT_NAME) && !lfs_name_valid(m.text, LFS_WORKLOAD_MAX))
                return -EBADMSG;
        if ((f & F_TEXT) && !lfs_text_valid(m.text))
                return -EBADMSG;
        return 0;
}

LFS_EXPORT int lfs_send(int sock, const struct lfs_msg *m, int fd, bool nonblock)
{
        if (!m)
                return -EINVAL;
        return scm_send(sock, m, sizeof(*m), &fd, fd >= 0 ? 1 : 0, nonblock);
}

LFS_EXPORT long lfs_recv(int sock, struct lfs_msg *m, int *ret_fd, int *ret_flags, bool nonblock)
{
        int fds[SCM_MAX_FDS];
        size_t n_fds;
        ssize_t k;

        if (!m || !ret_fd || !ret_flags)
                return -EINVAL;
        *ret_fd = -1;
        k = scm_recv(sock, m, sizeof(*m), nonblock, fds, &n_fds, ret_flags);
        if (k < 0)
                return (long)k;
        /*
         * More than one descriptor is never a message of ours: all of them
         * are closed and the datagram is reported as control-truncated, which
         * the decoder refuses.
         */
        if (n_fds > 1) {
                for (size_t i = 0; i < n_fds; i++)
                        close(fds[i]);
                *ret_flags |= MSG_CTRUNC;
        } else if (n_fds == 1)
                *ret_fd = fds[0];
        return (long)k;
}
