/*
 * fuzz_session_proto.c: the workload wire format's decoder
 * (lfs_msg_decode(), libsession/proto.c): the broker runs it on every
 * datagram a workload sends (any local user may connect), the client
 * library on every datagram from the broker.
 *
 * Input layout: byte 0: bit 0 the direction (to the broker / to the
 * client), bits 1-2 the number of fds that came with the datagram (0-3),
 * bit 3 MSG_TRUNC, bit 4 MSG_CTRUNC; the rest is the datagram. Invariants
 * (abort() when one breaks): an accepted message is exactly one struct, not
 * truncated, with magic and version, a type allowed in that direction, the
 * sequence number and result rules of its kind, the fd count
 * lfs_msg_fds() demands, a session name (when there is one) inside the
 * alphabet, a workload name (HELLO request) or printable text, and it
 * re-encodes (lfs_msg_init, the numbers, lfs_msg_set_str) to exactly the
 * same bytes, so no unused byte can carry anything; -EBADMSG returns the
 * message, which breaks a name or text rule and nothing else; -EPROTO
 * leaves *ret untouched; decoding is deterministic.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "luofleet/session_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool is_request(uint16_t t)
{
        return t >= LFS_HELLO && t <= LFS_VETO;
}

/* Rebuild the message from its values through the public encoders. */
static void reencode(const struct lfs_msg *m, struct lfs_msg *out)
{
        lfs_msg_init(out, (enum lfs_type)m->type, m->seq);
        out->result = m->result;
        out->token = m->token;
        out->arg = m->arg;
        out->arg2 = m->arg2;
        if (lfs_msg_set_str(out->session, sizeof(out->session), m->session) != 0 ||
            lfs_msg_set_str(out->text, sizeof(out->text), m->text) != 0)
                abort();
}

/* The envelope rules an accepted or -EBADMSG message obeys. */
static void check_envelope(const struct lfs_msg *m, size_t len, int flags, size_t n_fds,
                           enum lfs_direction dir)
{
        if (len != sizeof(*m) || (flags & (MSG_TRUNC | MSG_CTRUNC)))
                abort();
        if (m->magic != LFS_PROTO_MAGIC || m->version != LFS_PROTO_VERSION)
                abort();
        if ((int)n_fds != lfs_msg_fds(m->type, dir == LFS_TO_CLIENT, m->result))
                abort();
        if (!memchr(m->session, 0, sizeof(m->session)) || !memchr(m->text, 0, sizeof(m->text)))
                abort();
        if (dir == LFS_TO_BROKER) {
                if (!is_request(m->type) || m->seq == 0 || m->result != 0)
                        abort();
                if (m->type == LFS_HELLO && (m->arg & ~(uint64_t)LFS_HELLO_REGISTER))
                        abort();
                return;
        }
        switch (m->type) {
        case LFS_EVENT:
                if (m->seq != 0 || m->result != 0 || m->token == 0 ||
                    m->token >= _LFS_EVENT_KIND_MAX || m->session[0])
                        abort();
                if (m->token != LFS_EVENT_PREPARE && m->token != LFS_EVENT_REBOOT && m->arg2 != 0)
                        abort();
                break;
        case LFS_INFO:
                if (m->seq == 0 || m->result != 0 || m->arg == 0 || m->arg >= _LFS_PHASE_MAX ||
                    m->text[0])
                        abort();
                break;
        case LFS_FD_INFO:
                if (m->seq == 0 || m->result != 0 || m->arg2 > 1 || m->session[0] || m->text[0])
                        abort();
                break;
        default:
                if (!is_request(m->type) || m->seq == 0 || m->result > 0 || m->result < -4095)
                        abort();
                /* Answers carry no session; a failure nothing but its sentence. */
                if (m->session[0])
                        abort();
                if (m->result < 0 && (m->token || m->arg || m->arg2))
                        abort();
                if (m->arg2 != 0)
                        abort();
        }
}

/* Requests that name a session. */
static bool used_session(uint16_t t)
{
        return (t >= LFS_SESSION_CREATE && t <= LFS_RETRIEVE_FD) || t == LFS_SHOW;
}

/* Whether the strings of an envelope-valid message obey their alphabets. */
static bool strings_ok(const struct lfs_msg *m, enum lfs_direction dir)
{
        if (m->session[0] || (dir == LFS_TO_BROKER && used_session(m->type)) ||
            (dir == LFS_TO_CLIENT && m->type == LFS_INFO))
                if (!lfs_name_valid(m->session, LFS_NAME_MAX))
                        return false;
        if (dir == LFS_TO_BROKER && m->type == LFS_HELLO)
                return lfs_name_valid(m->text, LFS_WORKLOAD_MAX);
        return lfs_text_valid(m->text);
}

static void check_names(const uint8_t *data, size_t size)
{
        char s[LFS_TEXT_MAX + 2];
        size_t n = size < sizeof(s) - 1 ? size : sizeof(s) - 1;

        memcpy(s, data, n);
        s[n] = 0;
        if (lfs_name_valid(s, LFS_NAME_MAX)) {
                size_t k = strlen(s);
                if (k == 0 || k > LFS_NAME_MAX || strcmp(s, ".") == 0 || strcmp(s, "..") == 0 ||
                    strspn(s,
                           "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") !=
                            k)
                        abort();
        }
        if (lfs_text_valid(s)) {
                for (const char *p = s; *p; p++)
                        if (*p < 0x20 || *p > 0x7e)
                                abort();
                if (strlen(s) > LFS_TEXT_MAX)
                        abort();
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        struct lfs_msg m, m2, again;
        enum lfs_direction dir;
        size_t n_fds, len;
        uint8_t *buf;
        int flags = 0, r;

        if (size < 1)
                return 0;
        dir = (data[0] & 1) ? LFS_TO_CLIENT : LFS_TO_BROKER;
        n_fds = (data[0] >> 1) & 3;
        if (data[0] & 0x08)
                flags |= MSG_TRUNC;
        if (data[0] & 0x10)
                flags |= MSG_CTRUNC;
        len = size - 1;
        /* An exact-size copy, so ASan sees any read past the datagram. */
        buf = malloc(len ? len : 1);
        if (!buf)
                return 0;
        memcpy(buf, data + 1, len);
        check_names(buf, len);

        memset(&m, 0xa5, sizeof(m));
        r = lfs_msg_decode(buf, len, flags, n_fds, dir, &m);
        if (r == 0 || r == -EBADMSG) {
                check_envelope(&m, len, flags, n_fds, dir);
                /* What it returns is the datagram itself, and it re-encodes to it. */
                if (memcmp(&m, buf, sizeof(m)) != 0)
                        abort();
                reencode(&m, &again);
                if (memcmp(&again, buf, sizeof(m)) != 0)
                        abort();
                /* -EBADMSG exactly when a name or text breaks its alphabet. */
                if ((r == 0) != strings_ok(&m, dir))
                        abort();
                /* Events and entries never go to the broker. */
                if (dir == LFS_TO_CLIENT && !is_request(m.type) &&
                    lfs_msg_decode(buf, len, flags, n_fds, LFS_TO_BROKER, &m2) != -EPROTO)
                        abort();
        } else if (r == -EPROTO) {
                for (size_t i = 0; i < sizeof(m); i++)
                        if (((uint8_t *)&m)[i] != 0xa5)
                                abort();
        } else
                abort();

        /* Deterministic. */
        memset(&m2, 0xa5, sizeof(m2));
        if (lfs_msg_decode(buf, len, flags, n_fds, dir, &m2) != r ||
            (r != -EPROTO && memcmp(&m, &m2, sizeof(m)) != 0))
                abort();
        free(buf);
        return 0;
}
