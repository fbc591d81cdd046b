/*
 * fuzz_privsep.c: the privileged helper's request decoder
 * (privsep_req_decode(), kernel/privsep.c), the one function that reads
 * what a compromised network process can write, and the network side's
 * reply decoder on the same bytes.
 *
 * Input layout: byte 0: bit 0 the channel (command or query), bits 1-3 the
 * number of fds that came with the datagram (0-7), bit 4 MSG_TRUNC, bit 5
 * MSG_CTRUNC; byte 1: the sequence number the helper expects; the rest is
 * the datagram. Invariants (abort() when one breaks): a request accepted is
 * exactly one struct, of a type that belongs on that channel, with that
 * sequence number, the fd count its type demands, an argument in range (an
 * OPEN_CONFIG index below _PRIVSEP_CONFIG_MAX, an UNLINK_SOCKET index below
 * PRIVSEP_MAX_SOCKETS), a command line (KEXEC_LOAD) or path (OPEN_STAGING,
 * never empty) that is exactly cmdline_len bytes without a NUL followed by
 * zeros (or all zeros), KEXEC_LOAD's load block well-formed (absolute,
 * terminated paths, the initrd's exactly with arg 1; 64 lower-case hex
 * digits; a valid key id with an 88-character base64 signature, or
 * neither) and every other type's load block all zeros, and decoding is
 * deterministic; a reply accepted has a result in -4095..0, states in range,
 * terminated strings, and a descriptor exactly when it is a successful open
 * (or a SESSIONS document).
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "luofleet/luo_state.h"
#include "luofleet/privsep.h"
#include "luofleet/sign.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool zero(const void *p, size_t n)
{
        const unsigned char *c = p;

        for (size_t i = 0; i < n; i++)
                if (c[i])
                        return false;
        return true;
}

/* Terminated, zeros after: the length. */
static size_t field(const char *s, size_t size)
{
        size_t n = strnlen(s, size);

        if (n == size || !zero(s + n, size - n))
                abort();
        return n;
}

static void check_digest(const char *s, size_t size)
{
        if (field(s, size) != 64)
                abort();
        for (size_t i = 0; i < 64; i++)
                if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
                        abort();
}

static void check_load(const struct privsep_req *q)
{
        const struct privsep_load *l = &q->load;

        if (q->type != PRIVSEP_KEXEC_LOAD) {
                if (!zero(l, sizeof(*l)))
                        abort();
                return;
        }
        if (field(l->kernel_path, sizeof(l->kernel_path)) == 0 || l->kernel_path[0] != '/')
                abort();
        check_digest(l->kernel_sha256, sizeof(l->kernel_sha256));
        if (q->arg == 1) {
                if (field(l->initrd_path, sizeof(l->initrd_path)) == 0 || l->initrd_path[0] != '/')
                        abort();
                check_digest(l->initrd_sha256, sizeof(l->initrd_sha256));
        } else if (!zero(l->initrd_path, sizeof(l->initrd_path)) ||
                   !zero(l->initrd_sha256, sizeof(l->initrd_sha256)))
                abort();
        if (field(l->key_id, sizeof(l->key_id)) == 0) {
                if (!zero(l->signature, sizeof(l->signature)))
                        abort();
        } else if (!sign_key_id_valid(l->key_id) ||
                   field(l->signature, sizeof(l->signature)) != SIGN_B64_LEN)
                abort();
}

static void check_request(const struct privsep_req *q, size_t len, int flags, size_t n_fds,
                          enum privsep_chan chan, uint64_t seq)
{
        if (len != sizeof(*q) || (flags & (MSG_TRUNC | MSG_CTRUNC)))
                abort();
        if (q->magic != PRIVSEP_MAGIC || q->version != PRIVSEP_VERSION || q->seq != seq)
                abort();
        if ((int)n_fds != privsep_req_fds(q->type, q->arg))
                abort();
        switch (q->type) {
        case PRIVSEP_GET_STATE:
        case PRIVSEP_KEXEC_LOADED:
        case PRIVSEP_GET_INFO:
        case PRIVSEP_SELF_CHECK:
                if (chan != PRIVSEP_CHAN_QUERY || q->arg != 0)
                        abort();
                break;
        case PRIVSEP_SET_EVENT:
                if (chan != PRIVSEP_CHAN_CMD ||
                    (q->arg != LUO_EVENT_PREPARE && q->arg != LUO_EVENT_CANCEL &&
                     q->arg != LUO_EVENT_FINISH))
                        abort();
                break;
        case PRIVSEP_KEXEC_LOAD:
                if (chan != PRIVSEP_CHAN_CMD || q->arg > 1)
                        abort();
                break;
        case PRIVSEP_KEXEC_UNLOAD:
        case PRIVSEP_REBOOT:
                if (chan != PRIVSEP_CHAN_CMD || q->arg != 0)
                        abort();
                break;
        case PRIVSEP_OPEN_CONFIG:
                if (chan != PRIVSEP_CHAN_QUERY || q->arg >= _PRIVSEP_CONFIG_MAX)
                        abort();
                break;
        case PRIVSEP_OPEN_STAGING:
                if (chan != PRIVSEP_CHAN_QUERY || q->arg != 0 || q->cmdline_len == 0)
                        abort();
                break;
        case PRIVSEP_UNLINK_SOCKET:
                if (chan != PRIVSEP_CHAN_QUERY || q->arg >= PRIVSEP_MAX_SOCKETS)
                        abort();
                break;
        case PRIVSEP_SET_EVENT_EX:
                if (chan != PRIVSEP_CHAN_CMD ||
                    (q->arg != LUO_EVENT_PREPARE && q->arg != LUO_EVENT_CANCEL &&
                     q->arg != LUO_EVENT_FINISH) ||
                    q->cmdline_len > PRIVSEP_NOTE_MAX)
                        abort();
                break;
        case PRIVSEP_REBOOT_EX:
                if (chan != PRIVSEP_CHAN_CMD || q->arg != 0 || q->cmdline_len > PRIVSEP_NOTE_MAX)
                        abort();
                break;
        case PRIVSEP_SESSIONS:
                if (chan != PRIVSEP_CHAN_QUERY || q->arg != 0)
                        abort();
                break;
        default:
                abort(); /* HELLO, STATE_CHANGED, unknown: never a request */
        }
        if (q->arg2 != 0 && q->type != PRIVSEP_SET_EVENT_EX && q->type != PRIVSEP_SESSIONS)
                abort();
        if (q->type == PRIVSEP_KEXEC_LOAD || q->type == PRIVSEP_OPEN_STAGING ||
            q->type == PRIVSEP_SET_EVENT_EX || q->type == PRIVSEP_REBOOT_EX) {
                if (q->cmdline_len >= PRIVSEP_CMDLINE_MAX ||
                    strnlen(q->cmdline, PRIVSEP_CMDLINE_MAX) != q->cmdline_len)
                        abort();
        } else if (q->cmdline_len != 0)
                abort();
        for (size_t i = q->cmdline_len; i < PRIVSEP_CMDLINE_MAX; i++)
                if (q->cmdline[i])
                        abort();
        check_load(q);
}

static void check_terminated(const char *s, size_t size)
{
        if (!memchr(s, 0, size))
                abort();
}

static void check_reply(const struct privsep_reply *p)
{
        if (p->result > 0 || p->result < -4095 || p->state >= _LUO_STATE_MAX ||
            p->state2 >= _LUO_STATE_MAX || p->flag > 1)
                abort();
        check_terminated(p->name, sizeof(p->name));
        check_terminated(p->boot_id, sizeof(p->boot_id));
        check_terminated(p->release, sizeof(p->release));
        check_terminated(p->msg, sizeof(p->msg));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        struct privsep_req q, q2;
        struct privsep_reply p;
        enum privsep_chan chan;
        size_t n_fds, len;
        uint64_t seq;
        uint8_t *buf;
        int flags = 0, r;

        if (size < 2)
                return 0;
        chan = (data[0] & 1) ? PRIVSEP_CHAN_QUERY : PRIVSEP_CHAN_CMD;
        n_fds = (data[0] >> 1) & 7;
        if (data[0] & 0x10)
                flags |= MSG_TRUNC;
        if (data[0] & 0x20)
                flags |= MSG_CTRUNC;
        seq = data[1];
        len = size - 2;
        /* An exact-size copy, so ASan sees any read past the datagram. */
        buf = malloc(len ? len : 1);
        if (!buf)
                return 0;
        memcpy(buf, data + 2, len);

        memset(&q, 0xa5, sizeof(q));
        r = privsep_req_decode(buf, len, flags, n_fds, chan, seq, &q);
        if (r == 0) {
                check_request(&q, len, flags, n_fds, chan, seq);
                /* Deterministic, and what it returns is the datagram itself. */
                if (privsep_req_decode(buf, len, flags, n_fds, chan, seq, &q2) != 0 ||
                    memcmp(&q, &q2, sizeof(q)) != 0 || memcmp(&q, buf, sizeof(q)) != 0)
                        abort();
                /* The other channel never takes it. */
                if (privsep_req_decode(buf, len, flags, n_fds,
                                       chan == PRIVSEP_CHAN_CMD ? PRIVSEP_CHAN_QUERY
                                                                : PRIVSEP_CHAN_CMD,
                                       seq, &q2) == 0)
                        abort();
        } else if (r != -EPROTO)
                abort();

        /* The same bytes as a reply, for every type the network side waits for. */
        for (uint16_t t = PRIVSEP_HELLO; t < _PRIVSEP_TYPE_MAX; t++) {
                memset(&p, 0x5a, sizeof(p));
                if (privsep_reply_decode(buf, len, flags, n_fds, t, seq, &p) == 0) {
                        if (len != sizeof(p) || p.type != t || p.seq != seq ||
                            (int)n_fds != privsep_reply_fds(t, p.result))
                                abort();
                        if (n_fds == 1 &&
                            (p.result != 0 || (t != PRIVSEP_OPEN_CONFIG &&
                                               t != PRIVSEP_OPEN_STAGING && t != PRIVSEP_SESSIONS)))
                                abort();
                        check_reply(&p);
                }
        }
        free(buf);
        return 0;
}
