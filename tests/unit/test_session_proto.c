/*
 * test_session_proto.c: the workload wire format (libsession/proto.c). Every
 * type in both directions round-trips through the strict decoder; every
 * rejection is covered (size, truncation flags, magic, version, type,
 * direction, sequence and result rules, each unused field, unterminated and
 * dirty strings, descriptor counts), with -EBADMSG only for a well-formed
 * message whose name or text leaves its alphabet; lfs_send/lfs_recv carry a
 * descriptor that really is the same file, and close what the protocol does
 * not allow (the fd count of the process is the same afterwards).
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "luofleet/session_proto.h"
#include "testutil.h"

#define MSG_SIZE sizeof(struct lfs_msg)

/* The fields each type uses, written from docs/session-protocol.md independently of proto.c. */
enum {
        U_TOKEN = 1 << 0,
        U_ARG = 1 << 1,
        U_ARG2 = 1 << 2,
        U_SESSION = 1 << 3,
        U_TEXT = 1 << 4,
};

static unsigned used_to_broker(int t)
{
        switch (t) {
        case LFS_HELLO:
                return U_ARG | U_TEXT;
        case LFS_SESSION_CREATE:
        case LFS_SESSION_RETRIEVE:
        case LFS_SESSION_FINISH:
        case LFS_SESSION_CLOSE:
        case LFS_SHOW:
                return U_SESSION;
        case LFS_PRESERVE:
        case LFS_UNPRESERVE:
        case LFS_RETRIEVE_FD:
                return U_SESSION | U_TOKEN;
        case LFS_CONFIRM:
                return U_ARG;
        case LFS_VETO:
                return U_ARG | U_TEXT;
        default:
                return 0;
        }
}

static unsigned used_to_client(int t)
{
        switch (t) {
        case LFS_HELLO:
                return U_ARG | U_TOKEN | U_TEXT;
        case LFS_PRESERVE:
        case LFS_RETRIEVE_FD:
        case LFS_LIST:
        case LFS_SHOW:
                return U_ARG | U_TEXT;
        case LFS_EVENT:
                return U_ARG | U_TOKEN | U_ARG2 | U_TEXT;
        case LFS_INFO:
                return U_SESSION | U_ARG | U_ARG2 | U_TOKEN;
        case LFS_FD_INFO:
                return U_TOKEN | U_ARG | U_ARG2;
        default:
                return U_TEXT;
        }
}

static void set_str(char *field, size_t size, const char *s)
{
        ck_assert_int_eq(lfs_msg_set_str(field, size, s), 0);
}

/* A valid request of type t. */
static void mk_request(struct lfs_msg *m, int t)
{
        lfs_msg_init(m, (enum lfs_type)t, 5);
        switch (t) {
        case LFS_HELLO:
                m->arg = LFS_HELLO_REGISTER;
                set_str(m->text, sizeof(m->text), "vm-42");
                break;
        case LFS_SESSION_CREATE:
        case LFS_SESSION_RETRIEVE:
        case LFS_SESSION_FINISH:
        case LFS_SESSION_CLOSE:
        case LFS_SHOW:
                set_str(m->session, sizeof(m->session), "vm1.memory_A-0");
                break;
        case LFS_PRESERVE:
        case LFS_UNPRESERVE:
        case LFS_RETRIEVE_FD:
                set_str(m->session, sizeof(m->session), "vm1");
                m->token = 7;
                break;
        case LFS_CONFIRM:
                m->arg = 9;
                break;
        case LFS_VETO:
                m->arg = 9;
                set_str(m->text, sizeof(m->text), "migration in progress (50%)");
                break;
        default:
                break;
        }
}

/* A valid message of type t towards the client (a successful answer, an event, an entry). */
static void mk_to_client(struct lfs_msg *m, int t)
{
        lfs_msg_init(m, (enum lfs_type)t, 5);
        switch (t) {
        case LFS_HELLO:
                m->arg = 4; /* updated */
                m->token = 1000;
                break;
        case LFS_PRESERVE:
        case LFS_RETRIEVE_FD:
                m->arg = 1u << 20;
                break;
        case LFS_LIST:
        case LFS_SHOW:
                m->arg = 2;
                break;
        case LFS_EVENT:
                m->seq = 0;
                m->arg = 11;
                m->token = LFS_EVENT_PREPARE;
                m->arg2 = 30000;
                set_str(m->text, sizeof(m->text), "operation=3f2a index=7");
                break;
        case LFS_INFO:
                set_str(m->session, sizeof(m->session), "vm1");
                m->arg = LFS_PHASE_INCOMING;
                m->arg2 = 1;
                m->token = 1u << 20;
                break;
        case LFS_FD_INFO:
                m->token = 7;
                m->arg = 1u << 20;
                m->arg2 = 1;
                break;
        default:
                set_str(m->text, sizeof(m->text), "done");
                break;
        }
}

static int fds_of(const struct lfs_msg *m, enum lfs_direction dir)
{
        return lfs_msg_fds(m->type, dir == LFS_TO_CLIENT, m->result);
}

static int dec(const struct lfs_msg *m, enum lfs_direction dir)
{
        struct lfs_msg out;

        return lfs_msg_decode(m, MSG_SIZE, 0, (size_t)fds_of(m, dir), dir, &out);
}

static bool is_request(int t)
{
        return t >= LFS_HELLO && t <= LFS_VETO;
}

START_TEST(test_strings)
{
        ck_assert_str_eq(lfs_type_to_string(LFS_HELLO), "hello");
        ck_assert_str_eq(lfs_type_to_string(LFS_SESSION_CREATE), "session-create");
        ck_assert_str_eq(lfs_type_to_string(LFS_SESSION_RETRIEVE), "session-retrieve");
        ck_assert_str_eq(lfs_type_to_string(LFS_SESSION_FINISH), "session-finish");
        ck_assert_str_eq(lfs_type_to_string(LFS_SESSION_CLOSE), "session-close");
        ck_assert_str_eq(lfs_type_to_string(LFS_PRESERVE), "preserve");
        ck_assert_str_eq(lfs_type_to_string(LFS_UNPRESERVE), "unpreserve");
        ck_assert_str_eq(lfs_type_to_string(LFS_RETRIEVE_FD), "retrieve-fd");
        ck_assert_str_eq(lfs_type_to_string(LFS_LIST), "list");
        ck_assert_str_eq(lfs_type_to_string(LFS_SHOW), "show");
        ck_assert_str_eq(lfs_type_to_string(LFS_CONFIRM), "confirm");
        ck_assert_str_eq(lfs_type_to_string(LFS_VETO), "veto");
        ck_assert_str_eq(lfs_type_to_string(LFS_EVENT), "event");
        ck_assert_str_eq(lfs_type_to_string(LFS_INFO), "info");
        ck_assert_str_eq(lfs_type_to_string(LFS_FD_INFO), "fd-info");
        ck_assert_ptr_null(lfs_type_to_string(0));
        ck_assert_ptr_null(lfs_type_to_string(_LFS_TYPE_MAX));
        ck_assert_ptr_null(lfs_type_to_string((enum lfs_type)0xffff));

        ck_assert_str_eq(lfs_event_kind_to_string(LFS_EVENT_PREPARE), "prepare");
        ck_assert_str_eq(lfs_event_kind_to_string(LFS_EVENT_CANCEL), "cancel");
        ck_assert_str_eq(lfs_event_kind_to_string(LFS_EVENT_REBOOT), "reboot");
        ck_assert_str_eq(lfs_event_kind_to_string(LFS_EVENT_UPDATED), "updated");
        ck_assert_str_eq(lfs_event_kind_to_string(LFS_EVENT_FINISH), "finish");
        ck_assert_ptr_null(lfs_event_kind_to_string(0));
        ck_assert_ptr_null(lfs_event_kind_to_string(_LFS_EVENT_KIND_MAX));

        ck_assert_str_eq(lfs_phase_to_string(LFS_PHASE_OUTGOING), "outgoing");
        ck_assert_str_eq(lfs_phase_to_string(LFS_PHASE_INCOMING), "incoming");
        ck_assert_str_eq(lfs_phase_to_string(LFS_PHASE_RETRIEVED), "retrieved");
        ck_assert_str_eq(lfs_phase_to_string(LFS_PHASE_FINISHED), "finished");
        ck_assert_ptr_null(lfs_phase_to_string(0));
        ck_assert_ptr_null(lfs_phase_to_string(_LFS_PHASE_MAX));
}
END_TEST

START_TEST(test_names_and_text)
{
        char n48[49], n49[50], n63[64], n64[65];

        memset(n48, 'a', 48);
        n48[48] = 0;
        memset(n49, 'b', 49);
        n49[49] = 0;
        memset(n63, 'c', 63);
        n63[63] = 0;
        memset(n64, 'd', 64);
        n64[64] = 0;

        ck_assert(lfs_name_valid("vm1", LFS_NAME_MAX));
        ck_assert(lfs_name_valid("A-Z_a-z.0-9", LFS_NAME_MAX));
        ck_assert(lfs_name_valid("...", LFS_NAME_MAX));
        ck_assert(lfs_name_valid(".hidden", LFS_NAME_MAX));
        ck_assert(lfs_name_valid(n48, LFS_NAME_MAX));
        ck_assert(!lfs_name_valid(n49, LFS_NAME_MAX));
        ck_assert(lfs_name_valid(n63, LFS_WORKLOAD_MAX));
        ck_assert(!lfs_name_valid(n64, LFS_WORKLOAD_MAX));
        ck_assert(!lfs_name_valid("", LFS_NAME_MAX));
        ck_assert(!lfs_name_valid(NULL, LFS_NAME_MAX));
        ck_assert(!lfs_name_valid(".", LFS_NAME_MAX));
        ck_assert(!lfs_name_valid("..", LFS_NAME_MAX));
        ck_assert(!lfs_name_valid("a/b", LFS_NAME_MAX));
        ck_assert(!lfs_name_valid("a b", LFS_NAME_MAX));
        ck_assert(!lfs_name_valid("a:b", LFS_NAME_MAX));
        ck_assert(!lfs_name_valid("caf\xc3\xa9", LFS_NAME_MAX));
        ck_assert(!lfs_name_valid("tab\t", LFS_NAME_MAX));

        ck_assert(lfs_text_valid(""));
        ck_assert(lfs_text_valid("workload vm-1 (uid 1000, pid 42) vetoed: busy ~!@#$%^&*()"));
        ck_assert(!lfs_text_valid(NULL));
        ck_assert(!lfs_text_valid("line\nbreak"));
        ck_assert(!lfs_text_valid("del\x7f"));
        ck_assert(!lfs_text_valid("high\x80"));
        ck_assert(!lfs_text_valid("esc\x1b[0m"));
        char t255[256], t256[257];
        memset(t255, 'x', 255);
        t255[255] = 0;
        memset(t256, 'x', 256);
        t256[256] = 0;
        ck_assert(lfs_text_valid(t255));
        ck_assert(!lfs_text_valid(t256));
}
END_TEST

START_TEST(test_init_and_set_str)
{
        struct lfs_msg m;
        char f[8];

        memset(&m, 0xff, sizeof(m));
        lfs_msg_init(&m, LFS_SHOW, 77);
        ck_assert_uint_eq(m.magic, LFS_PROTO_MAGIC);
        ck_assert_uint_eq(m.version, LFS_PROTO_VERSION);
        ck_assert_uint_eq(m.type, LFS_SHOW);
        ck_assert_uint_eq(m.seq, 77);
        ck_assert_int_eq(m.result, 0);
        ck_assert(m.token == 0 && m.arg == 0 && m.arg2 == 0);
        for (size_t i = 0; i < sizeof(m.session); i++)
                ck_assert_int_eq(m.session[i], 0);
        ck_assert_int_eq(memcmp(&m, "SLFS", 4), 0); /* the magic reads "SLFS" on the wire */

        memset(f, 'z', sizeof(f));
        ck_assert_int_eq(lfs_msg_set_str(f, sizeof(f), "abc"), 0);
        ck_assert_int_eq(memcmp(f, "abc\0\0\0\0\0", 8), 0);
        ck_assert_int_eq(lfs_msg_set_str(f, sizeof(f), "1234567"), 0);
        ck_assert_int_eq(lfs_msg_set_str(f, sizeof(f), "12345678"), -ENAMETOOLONG);
        ck_assert_str_eq(f, "1234567"); /* untouched by the failure */
        ck_assert_int_eq(lfs_msg_set_str(f, sizeof(f), ""), 0);
        ck_assert_int_eq(memcmp(f, "\0\0\0\0\0\0\0\0", 8), 0);
}
END_TEST

START_TEST(test_fd_counts)
{
        ck_assert_int_eq(lfs_msg_fds(LFS_PRESERVE, false, 0), 1);
        ck_assert_int_eq(lfs_msg_fds(LFS_PRESERVE, true, 0), 0);
        ck_assert_int_eq(lfs_msg_fds(LFS_RETRIEVE_FD, true, 0), 1);
        ck_assert_int_eq(lfs_msg_fds(LFS_RETRIEVE_FD, true, -ENOENT), 0);
        ck_assert_int_eq(lfs_msg_fds(LFS_RETRIEVE_FD, false, 0), 0);
        for (int t = 0; t < 0x20; t++)
                if (t != LFS_PRESERVE && t != LFS_RETRIEVE_FD) {
                        ck_assert_int_eq(lfs_msg_fds((uint16_t)t, false, 0), 0);
                        ck_assert_int_eq(lfs_msg_fds((uint16_t)t, true, 0), 0);
                }
}
END_TEST

START_TEST(test_roundtrip_every_type)
{
        struct lfs_msg m, out;
        int n = 0;

        for (int t = LFS_HELLO; t < _LFS_TYPE_MAX; t++) {
                if (is_request(t)) {
                        /* The request, to the broker. */
                        mk_request(&m, t);
                        memset(&out, 0xa5, sizeof(out));
                        ck_assert_int_eq(lfs_msg_decode(&m, MSG_SIZE, 0,
                                                        (size_t)fds_of(&m, LFS_TO_BROKER),
                                                        LFS_TO_BROKER, &out),
                                         0);
                        ck_assert_int_eq(memcmp(&m, &out, MSG_SIZE), 0);
                        /* Its failed answer: the sentence only. */
                        lfs_msg_init(&m, (enum lfs_type)t, 5);
                        m.result = -EEXIST;
                        set_str(m.text, sizeof(m.text), "session vm1 exists");
                        ck_assert_int_eq(dec(&m, LFS_TO_CLIENT), 0);
                        m.result = -4095;
                        ck_assert_int_eq(dec(&m, LFS_TO_CLIENT), 0);
                        n += 2;
                }
                mk_to_client(&m, t);
                memset(&out, 0xa5, sizeof(out));
                ck_assert_int_eq(lfs_msg_decode(&m, MSG_SIZE, 0, (size_t)fds_of(&m, LFS_TO_CLIENT),
                                                LFS_TO_CLIENT, &out),
                                 0);
                ck_assert_int_eq(memcmp(&m, &out, MSG_SIZE), 0);
                n++;
        }
        ck_assert_int_eq(n, 12 * 3 + 3);

        /* Every event kind; only a prepare has a deadline. */
        for (int k = LFS_EVENT_PREPARE; k < _LFS_EVENT_KIND_MAX; k++) {
                mk_to_client(&m, LFS_EVENT);
                m.token = (uint64_t)k;
                m.arg2 = k == LFS_EVENT_PREPARE ? 1 : 0;
                ck_assert_int_eq(dec(&m, LFS_TO_CLIENT), 0);
        }
        /* Every phase. */
        for (int p = LFS_PHASE_OUTGOING; p < _LFS_PHASE_MAX; p++) {
                mk_to_client(&m, LFS_INFO);
                m.arg = (uint64_t)p;
                ck_assert_int_eq(dec(&m, LFS_TO_CLIENT), 0);
        }
        /* Empty texts are fine where text is free; big values where numbers are free. */
        mk_request(&m, LFS_VETO);
        set_str(m.text, sizeof(m.text), "");
        m.arg = UINT64_MAX;
        ck_assert_int_eq(dec(&m, LFS_TO_BROKER), 0);
        mk_request(&m, LFS_PRESERVE);
        m.token = UINT64_MAX;
        ck_assert_int_eq(dec(&m, LFS_TO_BROKER), 0);
        mk_request(&m, LFS_HELLO);
        m.arg = 0;
        ck_assert_int_eq(dec(&m, LFS_TO_BROKER), 0);
        mk_request(&m, LFS_LIST);
        m.seq = UINT32_MAX;
        ck_assert_int_eq(dec(&m, LFS_TO_BROKER), 0);
}
END_TEST

START_TEST(test_reject_envelope)
{
        unsigned char big[MSG_SIZE + 1];
        struct lfs_msg m, out;

        mk_request(&m, LFS_LIST);
        memset(&out, 0xa5, sizeof(out));
        ck_assert_int_eq(lfs_msg_decode(&m, MSG_SIZE - 1, 0, 0, LFS_TO_BROKER, &out), -EPROTO);
        memcpy(big, &m, MSG_SIZE);
        big[MSG_SIZE] = 0;
        ck_assert_int_eq(lfs_msg_decode(big, sizeof(big), 0, 0, LFS_TO_BROKER, &out), -EPROTO);
        ck_assert_int_eq(lfs_msg_decode(&m, 0, 0, 0, LFS_TO_BROKER, &out), -EPROTO);
        ck_assert_int_eq(lfs_msg_decode(NULL, MSG_SIZE, 0, 0, LFS_TO_BROKER, &out), -EPROTO);
        ck_assert_int_eq(lfs_msg_decode(&m, MSG_SIZE, MSG_TRUNC, 0, LFS_TO_BROKER, &out), -EPROTO);
        ck_assert_int_eq(lfs_msg_decode(&m, MSG_SIZE, MSG_CTRUNC, 0, LFS_TO_BROKER, &out), -EPROTO);
        ck_assert_int_eq(lfs_msg_decode(&m, MSG_SIZE, 0, 0, (enum lfs_direction)2, &out), -EPROTO);
        /* Other flags (MSG_EOR on SEQPACKET, MSG_CMSG_CLOEXEC echoes) are fine. */
        ck_assert_int_eq(lfs_msg_decode(&m, MSG_SIZE, MSG_EOR, 0, LFS_TO_BROKER, &out), 0);

        /* A refused message leaves *ret alone. */
        m.magic ^= 1;
        memset(&out, 0xa5, sizeof(out));
        ck_assert_int_eq(lfs_msg_decode(&m, MSG_SIZE, 0, 0, LFS_TO_BROKER, &out), -EPROTO);
        for (size_t i = 0; i < sizeof(out); i++)
                ck_assert_uint_eq(((unsigned char *)&out)[i], 0xa5);

        mk_request(&m, LFS_LIST);
        m.version = 2;
        ck_assert_int_eq(dec(&m, LFS_TO_BROKER), -EPROTO);
        m.version = 0;
        ck_assert_int_eq(dec(&m, LFS_TO_BROKER), -EPROTO);

        /* Unknown types, both ways. */
        const uint16_t bad_types[] = { 0, _LFS_TYPE_MAX, 100, 0xffff };
        for (size_t i = 0; i < sizeof(bad_types) / sizeof(bad_types[0]); i++) {
                lfs_msg_init(&m, LFS_LIST, 5);
                m.type = bad_types[i];
                ck_assert_int_eq(dec(&m, LFS_TO_BROKER), -EPROTO);
                ck_assert_int_eq(dec(&m, LFS_TO_CLIENT), -EPROTO);
        }
        /* Broker-only types never go to the broker. */
        for (int t = LFS_EVENT; t < _LFS_TYPE_MAX; t++) {
                mk_to_client(&m, t);
                ck_assert_int_eq(dec(&m, LFS_TO_BROKER), -EPROTO);
                m.seq = 5;
                ck_assert_int_eq(dec(&m, LFS_TO_BROKER), -EPROTO);
        }
}
END_TEST

START_TEST(test_reject_seq_and_result)
{
        struct lfs_msg m;

        /* Requests: seq 1.., result 0. */
        mk_request(&m, LFS_SESSION_CREATE);
        m.seq = 0;
        ck_assert_int_eq(dec(&m, LFS_TO_BROKER), -EPROTO);
        mk_request(&m, LFS_SESSION_CREATE);
        m.result = -EINVAL;
        ck_assert_int_eq(dec(&m, LFS_TO_BROKER), -EPROTO);
        m.result = 1;
        ck_assert_int_eq(dec(&m, LFS_TO_BROKER), -EPROTO);

        /* Answers: seq 1.., result -4095..0. */
        mk_to_client(&m, LFS_SESSION_CREATE);
        m.seq = 0;
        ck_assert_int_eq(dec(&m, LFS_TO_CLIENT), -EPROTO);
        mk_to_client(&m, LFS_SESSION_CREATE);
        m.result = 1;
        ck_assert_int_eq(dec(&m, LFS_TO_CLIENT), -EPROTO);
        m.result = -4096;
        ck_assert_int_eq(dec(&m, LFS_TO_CLIENT), -EPROTO);
        m.result = INT32_MIN;
        ck_assert_int_eq(dec(&m, LFS_TO_CLIENT), -EPROTO);
        m.result = -4095;
        ck_assert_int_eq(dec(&m, LFS_TO_CLIENT), 0);

        /* Events: seq 0, result 0. */
        mk_to_client(&m, LFS_EVENT);
        m.seq = 1;
        ck_assert_int_eq(dec(&m, LFS_TO_CLIENT), -EPROTO);
        mk_to_client(&m, LFS_EVENT);
        m.result = -EIO;
        ck_assert_int_eq(dec(&m, LFS_TO_CLIENT), -EPROTO);

        /* Entries: seq 1.., result 0. */
        for (int t = LFS_INFO; t <= LFS_FD_INFO; t++) {
                mk_to_client(&m, t);
                m.seq = 0;
                ck_assert_int_eq(dec(&m, LFS_TO_CLIENT), -EPROTO);
                mk_to_client(&m, t);
                m.result = -ENOENT;
                ck_assert_int_eq(dec(&m, LFS_TO_CLIENT), -EPROTO);
        }
}
END_TEST

/* Set field f of m to something non-zero that would be valid if the field were used. */
static void poke(struct lfs_msg *m, unsigned f)
{
        switch (f) {
        case U_TOKEN:
                m->token = 1;
                break;
        case U_ARG:
                m->arg = 1;
                break;
        case U_ARG2:
                m->arg2 = 1;
                break;
        case U_SESSION:
                set_str(m->session, sizeof(m->session), "x");
                break;
        case U_TEXT:
                set_str(m->text, sizeof(m->text), "x");
                break;
        }
}

START_TEST(test_reject_unused_fields)
{
        struct lfs_msg m;
        int checked = 0;

        for (int t = LFS_HELLO; t < _LFS_TYPE_MAX; t++) {
                for (unsigned f = U_TOKEN; f <= U_TEXT; f <<= 1) {
                        if (is_request(t) && !(used_to_broker(t) & f)) {
                                mk_request(&m, t);
                                poke(&m, f);
                                ck_assert_msg(dec(&m, LFS_TO_BROKER) == -EPROTO,
                                              "request %s field %u", lfs_type_to_string(t), f);
                                checked++;
                        }
                        if (!(used_to_client(t) & f)) {
                                mk_to_client(&m, t);
                                poke(&m, f);
                                ck_assert_msg(dec(&m, LFS_TO_CLIENT) == -EPROTO,
                                              "to client %s field %u", lfs_type_to_string(t), f);
                                checked++;
                        }
                        /* A failed answer has nothing but its sentence. */
                        if (is_request(t) && f != U_TEXT) {
                                lfs_msg_init(&m, (enum lfs_type)t, 5);
                                m.result = -EBUSY;
                                poke(&m, f);
                                ck_assert_msg(dec(&m, LFS_TO_CLIENT) == -EPROTO,
                                              "failed %s field %u", lfs_type_to_string(t), f);
                                checked++;
                        }
                }
        }
        ck_assert_int_gt(checked, 60);

        /* Value ranges of used fields. */
        mk_request(&m, LFS_HELLO);
        m.arg = 2; /* an unknown flag */
        ck_assert_int_eq(dec(&m, LFS_TO_BROKER), -EPROTO);
        m.arg = 1ull << 63;
        ck_assert_int_eq(dec(&m, LFS_TO_BROKER), -EPROTO);
        mk_to_client(&m, LFS_HELLO);
        m.arg = 5; /* no such luo_state */
        ck_assert_int_eq(dec(&m, LFS_TO_CLIENT), -EPROTO);
        mk_to_client(&m, LFS_HELLO);
        m.token = UINT32_MAX; /* (uid_t)-1 */
        ck_assert_int_eq(dec(&m, LFS_TO_CLIENT), -EPROTO);
        m.token = 1ull << 32;
        ck_assert_int_eq(dec(&m, LFS_TO_CLIENT), -EPROTO);
        mk_to_client(&m, LFS_EVENT);
        m.token = 0;
        ck_assert_int_eq(dec(&m, LFS_TO_CLIENT), -EPROTO);
        m.token = _LFS_EVENT_KIND_MAX;
        ck_assert_int_eq(dec(&m, LFS_TO_CLIENT), -EPROTO);
        m.token = LFS_EVENT_CANCEL; /* arg2 30000: only a prepare has a deadline */
        ck_assert_int_eq(dec(&m, LFS_TO_CLIENT), -EPROTO);
        mk_to_client(&m, LFS_INFO);
        m.arg = 0;
        ck_assert_int_eq(dec(&m, LFS_TO_CLIENT), -EPROTO);
        m.arg = _LFS_PHASE_MAX;
        ck_assert_int_eq(dec(&m, LFS_TO_CLIENT), -EPROTO);
        mk_to_client(&m, LFS_FD_INFO);
        m.arg2 = 2;
        ck_assert_int_eq(dec(&m, LFS_TO_CLIENT), -EPROTO);
}
END_TEST

START_TEST(test_reject_strings)
{
        struct lfs_msg m;

        /* Not terminated. */
        mk_request(&m, LFS_SESSION_CREATE);
        memset(m.session, 'a', sizeof(m.session));
        ck_assert_int_eq(dec(&m, LFS_TO_BROKER), -EPROTO);
        mk_request(&m, LFS_VETO);
        memset(m.text, 'a', sizeof(m.text));
        ck_assert_int_eq(dec(&m, LFS_TO_BROKER), -EPROTO);
        mk_request(&m, LFS_HELLO);
        memset(m.text, 'a', sizeof(m.text));
        ck_assert_int_eq(dec(&m, LFS_TO_BROKER), -EPROTO);

        /* Garbage after the NUL, at each end of the padding. */
        mk_request(&m, LFS_SESSION_CREATE);
        m.session[strlen(m.session) + 1] = 'x';
        ck_assert_int_eq(dec(&m, LFS_TO_BROKER), -EPROTO);
        mk_request(&m, LFS_SESSION_CREATE);
        m.session[sizeof(m.session) - 1] = 1;
        ck_assert_int_eq(dec(&m, LFS_TO_BROKER), -EPROTO);
        mk_request(&m, LFS_VETO);
        m.text[sizeof(m.text) - 1] = 'x';
        ck_assert_int_eq(dec(&m, LFS_TO_BROKER), -EPROTO);
        mk_to_client(&m, LFS_SESSION_CREATE);
        m.text[5] = 'y'; /* "done\0y" */
        ck_assert_int_eq(dec(&m, LFS_TO_CLIENT), -EPROTO);
        /* Garbage in an unused string field hidden behind a leading NUL. */
        mk_request(&m, LFS_LIST);
        m.session[10] = 'z';
        ck_assert_int_eq(dec(&m, LFS_TO_BROKER), -EPROTO);
}
END_TEST

static void expect_badmsg(struct lfs_msg *m, enum lfs_direction dir)
{
        struct lfs_msg out;

        memset(&out, 0xa5, sizeof(out));
        ck_assert_int_eq(lfs_msg_decode(m, MSG_SIZE, 0, (size_t)fds_of(m, dir), dir, &out),
                         -EBADMSG);
        /* Returned anyway, so the broker can answer this type and seq with EINVAL. */
        ck_assert_int_eq(memcmp(m, &out, MSG_SIZE), 0);
}

START_TEST(test_badmsg_names)
{
        const char *bad[] = { "vm/1", "vm 1", "vm\x01", "vm:1", ".", "..", "", "\xff" };
        struct lfs_msg m;
        char n48[49], n49[50];

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                mk_request(&m, LFS_SESSION_CREATE);
                set_str(m.session, sizeof(m.session), bad[i]);
                expect_badmsg(&m, LFS_TO_BROKER);
                mk_request(&m, LFS_PRESERVE);
                set_str(m.session, sizeof(m.session), bad[i]);
                expect_badmsg(&m, LFS_TO_BROKER);
                mk_request(&m, LFS_HELLO);
                set_str(m.text, sizeof(m.text), bad[i]);
                expect_badmsg(&m, LFS_TO_BROKER);
                mk_to_client(&m, LFS_INFO);
                set_str(m.session, sizeof(m.session), bad[i]);
                expect_badmsg(&m, LFS_TO_CLIENT);
        }

        memset(n48, 'a', 48);
        n48[48] = 0;
        memset(n49, 'a', 49);
        n49[49] = 0;
        mk_request(&m, LFS_SESSION_CREATE);
        set_str(m.session, sizeof(m.session), n48);
        ck_assert_int_eq(dec(&m, LFS_TO_BROKER), 0);
        set_str(m.session, sizeof(m.session), n49); /* fits the field, not the rule */
        expect_badmsg(&m, LFS_TO_BROKER);

        /* Workload names: up to 63. */
        char w63[64], w64[65];
        memset(w63, 'w', 63);
        w63[63] = 0;
        memset(w64, 'w', 64);
        w64[64] = 0;
        mk_request(&m, LFS_HELLO);
        set_str(m.text, sizeof(m.text), w63);
        ck_assert_int_eq(dec(&m, LFS_TO_BROKER), 0);
        set_str(m.text, sizeof(m.text), w64);
        expect_badmsg(&m, LFS_TO_BROKER);

        /* Free text: printable ASCII. */
        mk_request(&m, LFS_VETO);
        set_str(m.text, sizeof(m.text), "two\nlines");
        expect_badmsg(&m, LFS_TO_BROKER);
        set_str(m.text, sizeof(m.text), "del\x7f");
        expect_badmsg(&m, LFS_TO_BROKER);
        mk_to_client(&m, LFS_EVENT);
        set_str(m.text, sizeof(m.text), "\x1b[31mred");
        expect_badmsg(&m, LFS_TO_CLIENT);

        /* Malformed wins over a bad name: an unused field set -> EPROTO, not EBADMSG. */
        mk_request(&m, LFS_SESSION_CREATE);
        set_str(m.session, sizeof(m.session), "a/b");
        m.arg = 1;
        ck_assert_int_eq(dec(&m, LFS_TO_BROKER), -EPROTO);
}
END_TEST

START_TEST(test_reject_fd_counts)
{
        struct lfs_msg m, out;

        mk_request(&m, LFS_PRESERVE);
        ck_assert_int_eq(lfs_msg_decode(&m, MSG_SIZE, 0, 1, LFS_TO_BROKER, &out), 0);
        ck_assert_int_eq(lfs_msg_decode(&m, MSG_SIZE, 0, 0, LFS_TO_BROKER, &out), -EPROTO);
        ck_assert_int_eq(lfs_msg_decode(&m, MSG_SIZE, 0, 2, LFS_TO_BROKER, &out), -EPROTO);
        mk_request(&m, LFS_SESSION_CREATE);
        ck_assert_int_eq(lfs_msg_decode(&m, MSG_SIZE, 0, 1, LFS_TO_BROKER, &out), -EPROTO);
        mk_request(&m, LFS_RETRIEVE_FD);
        ck_assert_int_eq(lfs_msg_decode(&m, MSG_SIZE, 0, 1, LFS_TO_BROKER, &out), -EPROTO);

        mk_to_client(&m, LFS_RETRIEVE_FD);
        ck_assert_int_eq(lfs_msg_decode(&m, MSG_SIZE, 0, 1, LFS_TO_CLIENT, &out), 0);
        ck_assert_int_eq(lfs_msg_decode(&m, MSG_SIZE, 0, 0, LFS_TO_CLIENT, &out), -EPROTO);
        lfs_msg_init(&m, LFS_RETRIEVE_FD, 5);
        m.result = -ENOENT;
        ck_assert_int_eq(lfs_msg_decode(&m, MSG_SIZE, 0, 0, LFS_TO_CLIENT, &out), 0);
        ck_assert_int_eq(lfs_msg_decode(&m, MSG_SIZE, 0, 1, LFS_TO_CLIENT, &out), -EPROTO);
        mk_to_client(&m, LFS_PRESERVE);
        ck_assert_int_eq(lfs_msg_decode(&m, MSG_SIZE, 0, 1, LFS_TO_CLIENT, &out), -EPROTO);
        mk_to_client(&m, LFS_EVENT);
        ck_assert_int_eq(lfs_msg_decode(&m, MSG_SIZE, 0, 1, LFS_TO_CLIENT, &out), -EPROTO);
}
END_TEST

/* ---- over a real socket ------------------------------------------------------------------- */

static void pair(int sv[2])
{
        ck_assert_int_eq(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
}

START_TEST(test_send_recv_plain)
{
        int before = testutil_count_fds();
        struct lfs_msg m, in, out;
        int sv[2], fd = 123, flags = 123;

        pair(sv);
        mk_request(&m, LFS_SESSION_CREATE);
        ck_assert_int_eq(lfs_send(sv[0], &m, -1, false), 0);
        ck_assert_int_eq(lfs_recv(sv[1], &in, &fd, &flags, false), (long)MSG_SIZE);
        ck_assert_int_eq(fd, -1);
        ck_assert_int_eq(flags & (MSG_TRUNC | MSG_CTRUNC), 0);
        ck_assert_int_eq(lfs_msg_decode(&in, MSG_SIZE, flags, 0, LFS_TO_BROKER, &out), 0);
        ck_assert_int_eq(memcmp(&m, &out, MSG_SIZE), 0);

        /* Nothing there: non-blocking says so. */
        ck_assert_int_eq(lfs_recv(sv[1], &in, &fd, &flags, true), -EAGAIN);
        /* End of file. */
        close(sv[0]);
        ck_assert_int_eq(lfs_recv(sv[1], &in, &fd, &flags, false), 0);
        ck_assert_int_eq(fd, -1);
        close(sv[1]);

        /* A peer gone: EPIPE, and no SIGPIPE (it would kill this process). */
        pair(sv);
        close(sv[1]);
        ck_assert_int_eq(lfs_send(sv[0], &m, -1, false), -EPIPE);
        close(sv[0]);
        ck_assert_int_eq(lfs_send(-1, &m, -1, false), -EBADF);
        ck_assert_int_eq(testutil_count_fds(), before);
}
END_TEST

START_TEST(test_send_recv_fd)
{
        int before = testutil_count_fds();
        struct lfs_msg m, in, out;
        int sv[2], fd = -1, flags = 0, mfd;
        char buf[16] = { 0 };

        pair(sv);
        mfd = memfd_create("test-session", MFD_CLOEXEC);
        ck_assert_int_ge(mfd, 0);
        ck_assert_int_eq(write(mfd, "preserved", 9), 9);

        mk_request(&m, LFS_PRESERVE);
        ck_assert_int_eq(lfs_send(sv[0], &m, mfd, false), 0);
        ck_assert_int_eq(lfs_recv(sv[1], &in, &fd, &flags, false), (long)MSG_SIZE);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_ne(fd, mfd);
        ck_assert_int_eq(lfs_msg_decode(&in, MSG_SIZE, flags, 1, LFS_TO_BROKER, &out), 0);
        /* MSG_CMSG_CLOEXEC. */
        ck_assert_int_eq(fcntl(fd, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
        /* The same file: what one writes the other reads, offsets shared. */
        ck_assert_int_eq(pread(fd, buf, sizeof(buf), 0), 9);
        ck_assert_str_eq(buf, "preserved");
        ck_assert_int_eq(pwrite(fd, "!", 1, 9), 1);
        memset(buf, 0, sizeof(buf));
        ck_assert_int_eq(pread(mfd, buf, sizeof(buf), 0), 10);
        ck_assert_str_eq(buf, "preserved!");
        ck_assert_int_eq(lseek(fd, 0, SEEK_CUR), lseek(mfd, 0, SEEK_CUR));

        close(fd);
        close(mfd);
        close(sv[0]);
        close(sv[1]);
        ck_assert_int_eq(testutil_count_fds(), before);
}
END_TEST

/* sendmsg() with n descriptors attached. */
static void send_raw_fds(int sock, const void *buf, size_t len, const int *fds, size_t n)
{
        union {
                struct cmsghdr h;
                char buf[CMSG_SPACE(sizeof(int) * 16)];
        } control;
        struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };

        ck_assert_uint_le(n, 16);
        if (n) {
                memset(&control, 0, sizeof(control));
                mh.msg_control = control.buf;
                mh.msg_controllen = CMSG_SPACE(sizeof(int) * n);
                struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
                c->cmsg_level = SOL_SOCKET;
                c->cmsg_type = SCM_RIGHTS;
                c->cmsg_len = CMSG_LEN(sizeof(int) * n);
                memcpy(CMSG_DATA(c), fds, sizeof(int) * n);
        }
        ck_assert_int_eq(sendmsg(sock, &mh, MSG_NOSIGNAL), (ssize_t)len);
}

START_TEST(test_recv_extra_fds_closed)
{
        int before = testutil_count_fds();
        struct lfs_msg m, in, out;
        int sv[2], p[2], fds[16], fd = 5, flags = 0;

        pair(sv);
        ck_assert_int_eq(pipe2(p, O_CLOEXEC), 0);
        mk_request(&m, LFS_PRESERVE);

        /* Two, three, sixteen descriptors (more than lfs_recv makes room for). */
        const size_t counts[] = { 2, 3, 16 };
        for (size_t k = 0; k < sizeof(counts) / sizeof(counts[0]); k++) {
                for (size_t i = 0; i < counts[k]; i++)
                        fds[i] = p[i % 2];
                send_raw_fds(sv[0], &m, MSG_SIZE, fds, counts[k]);
                ck_assert_int_eq(lfs_recv(sv[1], &in, &fd, &flags, false), (long)MSG_SIZE);
                ck_assert_int_eq(fd, -1);
                ck_assert(flags & MSG_CTRUNC);
                ck_assert_int_eq(lfs_msg_decode(&in, MSG_SIZE, flags, 0, LFS_TO_BROKER, &out),
                                 -EPROTO);
                ck_assert_int_eq(testutil_count_fds(), before + 4);
        }

        /* A datagram longer than a message: MSG_TRUNC, refused. */
        unsigned char big[MSG_SIZE + 40];
        memset(big, 0, sizeof(big));
        memcpy(big, &m, MSG_SIZE);
        send_raw_fds(sv[0], big, sizeof(big), p, 1);
        ck_assert_int_eq(lfs_recv(sv[1], &in, &fd, &flags, false), (long)MSG_SIZE);
        ck_assert(flags & MSG_TRUNC);
        ck_assert_int_ge(fd, 0); /* the caller closes it */
        ck_assert_int_eq(lfs_msg_decode(&in, MSG_SIZE, flags, 1, LFS_TO_BROKER, &out), -EPROTO);
        close(fd);

        /* A short one. */
        send_raw_fds(sv[0], &m, 100, NULL, 0);
        ck_assert_int_eq(lfs_recv(sv[1], &in, &fd, &flags, false), 100);
        ck_assert_int_eq(lfs_msg_decode(&in, 100, flags, 0, LFS_TO_BROKER, &out), -EPROTO);

        close(p[0]);
        close(p[1]);
        close(sv[0]);
        close(sv[1]);
        ck_assert_int_eq(testutil_count_fds(), before);
}
END_TEST

static Suite *session_proto_suite(void)
{
        Suite *s = suite_create("session_proto");
        TCase *tc = tcase_create("core");

        tcase_set_timeout(tc, 30);
        tcase_add_test(tc, test_strings);
        tcase_add_test(tc, test_names_and_text);
        tcase_add_test(tc, test_init_and_set_str);
        tcase_add_test(tc, test_fd_counts);
        tcase_add_test(tc, test_roundtrip_every_type);
        tcase_add_test(tc, test_reject_envelope);
        tcase_add_test(tc, test_reject_seq_and_result);
        tcase_add_test(tc, test_reject_unused_fields);
        tcase_add_test(tc, test_reject_strings);
        tcase_add_test(tc, test_badmsg_names);
        tcase_add_test(tc, test_reject_fd_counts);
        tcase_add_test(tc, test_send_recv_plain);
        tcase_add_test(tc, test_send_recv_fd);
        tcase_add_test(tc, test_recv_extra_fds_closed);
        suite_add_tcase(s, tc);
        return s;
}

TESTUTIL_MAIN(session_proto_suite)
