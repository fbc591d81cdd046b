/*
 * test_rollout_store.c: the controller's SQLite store (rollout/store.c):
 * schema and version, file mode, round trips of hosts, rollouts and their
 * host records (the resume data), per-rollout event seqs, rollback, and
 * what a reopen finds after committed writes.
 */
#include <check.h>
#include <errno.h>
#include <sqlite3.h>
#include <string.h>
#include <sys/stat.h>

#include "store.h"
#include "testutil.h"

static char dir[512], path[600];

static void setup(void)
{
        testutil_mkdtemp(dir, sizeof(dir), "rstore");
        snprintf(path, sizeof(path), "%s/rollout.db", dir);
}

static void teardown(void)
{
        testutil_rm_rf(dir);
}

static struct store *open_store(void)
{
        struct store *s = NULL;
        char err[256] = "";
        ck_assert_int_eq(store_open(path, &s, err, sizeof(err)), 0);
        ck_assert_ptr_nonnull(s);
        return s;
}

static int user_version(void)
{
        sqlite3 *db;
        sqlite3_stmt *st;
        int v = -1;
        ck_assert_int_eq(sqlite3_open(path, &db), SQLITE_OK);
        ck_assert_int_eq(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL), SQLITE_OK);
        if (sqlite3_step(st) == SQLITE_ROW)
                v = sqlite3_column_int(st, 0);
        sqlite3_finalize(st);
        sqlite3_close(db);
        return v;
}

START_TEST(test_schema_and_mode)
{
        int fds = testutil_count_fds();
        struct store *s = open_store();
        struct stat st;

        ck_assert_int_eq(stat(path, &st), 0);
        ck_assert_int_eq(st.st_mode & 0777, 0600);
        store_close(s);
        ck_assert_int_eq(user_version(), STORE_SCHEMA_VERSION);
        /* Reopening an existing store keeps it. */
        s = open_store();
        store_close(s);
        ck_assert_int_eq(user_version(), 1);
        ck_assert_int_eq(testutil_count_fds(), fds);
}
END_TEST

START_TEST(test_newer_schema_refused)
{
        struct store *s = open_store();
        store_close(s);
        sqlite3 *db;
        ck_assert_int_eq(sqlite3_open(path, &db), SQLITE_OK);
        ck_assert_int_eq(sqlite3_exec(db, "PRAGMA user_version = 7", NULL, NULL, NULL), SQLITE_OK);
        sqlite3_close(db);
        char err[256] = "";
        s = NULL;
        ck_assert_int_eq(store_open(path, &s, err, sizeof(err)), -EPROTO);
        ck_assert_ptr_null(s);
        ck_assert_ptr_nonnull(strstr(err, "schema version 7"));
}
END_TEST

struct hosts_seen {
        int n;
        struct store_host h[4];
};

static int host_cb(void *ud, const struct store_host *h)
{
        struct hosts_seen *hs = ud;
        ck_assert_int_lt(hs->n, 4);
        struct store_host *c = &hs->h[hs->n++];
        *c = *h;
        c->url = strdup(h->url);
        c->labels = json_incref(h->labels);
        c->state = json_incref(h->state);
        c->error = h->error ? strdup(h->error) : NULL;
        return 0;
}

START_TEST(test_hosts_round_trip)
{
        struct store *s = open_store();
        struct store_host a = {
                .name = "web-2", .from_api = false, .reachable = true, .last_seen = 1764000000123
        };
        struct store_host b = { .name = "web-1", .from_api = true };

        a.url = "http://10.0.0.2:8421";
        a.labels = json_pack("{s:s, s:s}", "zone", "a", "rack", "r7");
        a.state = json_pack("{s:s, s:i, s:s}", "state", "normal", "index", 42, "boot_id", "b1");
        b.url = "https://10.0.0.1:8421";
        b.labels = json_object();
        b.error = "Connection refused";
        ck_assert_int_eq(store_begin(s), 0);
        ck_assert_int_eq(store_host_save(s, &a), 0);
        ck_assert_int_eq(store_host_save(s, &b), 0);
        ck_assert_int_eq(store_commit(s), 0);
        ck_assert_uint_eq(store_commits(s), 1);
        store_close(s);

        s = open_store();
        struct hosts_seen hs = { 0 };
        ck_assert_int_eq(store_hosts_load(s, host_cb, &hs), 0);
        ck_assert_int_eq(hs.n, 2);
        /* By name. */
        ck_assert_str_eq(hs.h[0].name, "web-1");
        ck_assert_str_eq(hs.h[0].url, "https://10.0.0.1:8421");
        ck_assert(hs.h[0].from_api);
        ck_assert(!hs.h[0].reachable);
        ck_assert_int_eq(hs.h[0].last_seen, 0);
        ck_assert_ptr_null(hs.h[0].state);
        ck_assert_str_eq(hs.h[0].error, "Connection refused");
        ck_assert_str_eq(hs.h[1].name, "web-2");
        ck_assert(!hs.h[1].from_api);
        ck_assert(hs.h[1].reachable);
        ck_assert_int_eq(hs.h[1].last_seen, 1764000000123);
        ck_assert(json_equal(hs.h[1].labels, a.labels));
        ck_assert(json_equal(hs.h[1].state, a.state));
        ck_assert_ptr_null(hs.h[1].error);

        /* Delete, rolled back: still there; committed: gone. */
        ck_assert_int_eq(store_begin(s), 0);
        ck_assert_int_eq(store_host_delete(s, "web-1"), 0);
        store_rollback(s);
        for (int i = 0; i < hs.n; i++)
                store_host_clear(&hs.h[i]);
        memset(&hs, 0, sizeof(hs));
        ck_assert_int_eq(store_hosts_load(s, host_cb, &hs), 0);
        ck_assert_int_eq(hs.n, 2);
        for (int i = 0; i < hs.n; i++)
                store_host_clear(&hs.h[i]);
        ck_assert_int_eq(store_begin(s), 0);
        ck_assert_int_eq(store_host_delete(s, "web-1"), 0);
        ck_assert_int_eq(store_commit(s), 0);
        memset(&hs, 0, sizeof(hs));
        ck_assert_int_eq(store_hosts_load(s, host_cb, &hs), 0);
        ck_assert_int_eq(hs.n, 1);
        ck_assert_str_eq(hs.h[0].name, "web-2");
        store_host_clear(&hs.h[0]);
        json_decref(a.labels);
        json_decref(a.state);
        json_decref(b.labels);
        store_close(s);
}
END_TEST

struct loaded {
        int nro, nrh;
        struct store_rollout ro[3];
        char rh_rollout[8][STORE_ID_MAX];
        struct store_rhost rh[8];
};

static int ro_cb(void *ud, const struct store_rollout *r)
{
        struct loaded *l = ud;
        ck_assert_int_lt(l->nro, 3);
        struct store_rollout *c = &l->ro[l->nro++];
        *c = *r;
        c->spec = json_incref(r->spec);
        c->plan = json_incref(r->plan);
        c->reason = json_incref(r->reason);
        return 0;
}

static int rh_cb(void *ud, const char *rollout, const struct store_rhost *h)
{
        struct loaded *l = ud;
        ck_assert_int_lt(l->nrh, 8);
        snprintf(l->rh_rollout[l->nrh], STORE_ID_MAX, "%s", rollout);
        struct store_rhost *c = &l->rh[l->nrh++];
        *c = *h;
        c->error = json_incref(h->error);
        return 0;
}

static void loaded_clear(struct loaded *l)
{
        for (int i = 0; i < l->nro; i++)
                store_rollout_clear(&l->ro[i]);
        for (int i = 0; i < l->nrh; i++)
                store_rhost_clear(&l->rh[i]);
        memset(l, 0, sizeof(*l));
}

START_TEST(test_rollouts_resume_data)
{
        struct store *s = open_store();
        struct store_rollout r = { .id = "r-1",
                                   .created_seq = 1,
                                   .status = "running",
                                   .created_at = 1000,
                                   .updated_at = 2000,
                                   .current_wave = 1,
                                   .wave_finished_at = 1500,
                                   .budget_baseline = 2,
                                   .aborting = false,
                                   .last_seq = 0 };
        r.spec = json_pack("{s:{s:s}}", "strategy", "mode", "rolling");
        r.plan = json_pack("{s:i, s:[]}", "hosts", 2, "waves");
        r.reason = json_pack("{s:s, s:s, s:s}", "code", "outside-window", "detail", "closed",
                             "next_window_at", "2026-11-26T02:00:00.000Z");
        struct store_rhost h1 = { .name = "h1",
                                  .wave = 0,
                                  .phase = "rebooting",
                                  .step = "reboot",
                                  .step_done = false,
                                  .op_id = "lf:r-1:h1:reboot",
                                  .step_at = 1700,
                                  .attempts = 3,
                                  .boot_id_before = "11111111-1111-4111-8111-111111111111",
                                  .blackout_ms = -1,
                                  .started_at = 1100,
                                  .last_index = 42 };
        struct store_rhost h2 = { .name = "h0",
                                  .wave = 1,
                                  .phase = "failed",
                                  .step = "cancel",
                                  .step_done = true,
                                  .op_id = "lf:r-1:h0:cancel",
                                  .blackout_ms = 812,
                                  .last_index = -1,
                                  .finished_at = 1900 };
        h2.error = json_pack("{s:s, s:s}", "code", "kernel-error", "detail", "EIO");

        ck_assert_int_eq(store_rollout_next_seq(s), 1);
        ck_assert_int_eq(store_begin(s), 0);
        ck_assert_int_eq(store_rollout_save(s, &r), 0);
        ck_assert_int_eq(store_rhost_save(s, "r-1", &h1), 0);
        ck_assert_int_eq(store_rhost_save(s, "r-1", &h2), 0);
        ck_assert_int_eq(store_commit(s), 0);
        ck_assert_int_eq(store_rollout_next_seq(s), 2);

        /* An update keeps the plan order (h1 first). */
        snprintf(h1.phase, sizeof(h1.phase), "updated");
        h1.step_done = true;
        snprintf(h1.boot_id_after, sizeof(h1.boot_id_after), "%s",
                 "22222222-2222-4222-8222-222222222222");
        snprintf(h1.kernel, sizeof(h1.kernel), "6.12.9-luo");
        h1.blackout_ms = 0;
        h1.updated_at = 1800;
        ck_assert_int_eq(store_begin(s), 0);
        ck_assert_int_eq(store_rhost_save(s, "r-1", &h1), 0);
        ck_assert_int_eq(store_commit(s), 0);
        store_close(s);

        s = open_store();
        struct loaded l = { 0 };
        ck_assert_int_eq(store_rollouts_load(s, ro_cb, rh_cb, &l), 0);
        ck_assert_int_eq(l.nro, 1);
        ck_assert_str_eq(l.ro[0].id, "r-1");
        ck_assert_str_eq(l.ro[0].status, "running");
        ck_assert_int_eq(l.ro[0].current_wave, 1);
        ck_assert_int_eq(l.ro[0].wave_finished_at, 1500);
        ck_assert_int_eq(l.ro[0].budget_baseline, 2);
        ck_assert_int_eq(l.ro[0].finished_at, 0);
        ck_assert(json_equal(l.ro[0].spec, r.spec));
        ck_assert(json_equal(l.ro[0].plan, r.plan));
        ck_assert(json_equal(l.ro[0].reason, r.reason));
        ck_assert_int_eq(l.nrh, 2);
        ck_assert_str_eq(l.rh_rollout[0], "r-1");
        ck_assert_str_eq(l.rh[0].name, "h1");
        ck_assert_str_eq(l.rh[0].phase, "updated");
        ck_assert_str_eq(l.rh[0].step, "reboot");
        ck_assert(l.rh[0].step_done);
        ck_assert_str_eq(l.rh[0].op_id, "lf:r-1:h1:reboot");
        ck_assert_int_eq(l.rh[0].attempts, 3);
        ck_assert_int_eq(l.rh[0].step_at, 1700);
        ck_assert_str_eq(l.rh[0].boot_id_before, "11111111-1111-4111-8111-111111111111");
        ck_assert_str_eq(l.rh[0].boot_id_after, "22222222-2222-4222-8222-222222222222");
        ck_assert_str_eq(l.rh[0].kernel, "6.12.9-luo");
        ck_assert_int_eq(l.rh[0].blackout_ms, 0);
        ck_assert_int_eq(l.rh[0].updated_at, 1800);
        ck_assert_int_eq(l.rh[0].last_index, 42);
        ck_assert_ptr_null(l.rh[0].error);
        ck_assert_str_eq(l.rh[1].name, "h0");
        ck_assert_int_eq(l.rh[1].wave, 1);
        ck_assert_int_eq(l.rh[1].blackout_ms, 812);
        ck_assert_int_eq(l.rh[1].last_index, -1);
        ck_assert_int_eq(l.rh[1].finished_at, 1900);
        ck_assert(json_equal(l.rh[1].error, h2.error));
        loaded_clear(&l);
        store_close(s);
        store_rollout_clear(&r);
        store_rhost_clear(&h2);
}
END_TEST

START_TEST(test_events_seq)
{
        struct store *s = open_store();
        json_t *arr = NULL;

        ck_assert_int_eq(store_begin(s), 0);
        for (int i = 1; i <= 5; i++) {
                json_t *d = json_pack("{s:s, s:s, s:i}", "rollout", "ra", "type", "host-phase",
                                      "wave", i);
                ck_assert_int_eq(store_event_append(s, "ra", i, 1000 + i, "host-phase", d), 0);
                json_decref(d);
        }
        json_t *d = json_pack("{s:s}", "rollout", "rb");
        ck_assert_int_eq(store_event_append(s, "rb", 1, 2000, "rollout-created", d), 0);
        /* The same seq twice for a rollout is refused. */
        ck_assert_int_eq(store_event_append(s, "rb", 1, 2001, "rollout-created", d), -EIO);
        json_decref(d);
        ck_assert_int_eq(store_commit(s), 0);
        store_close(s);

        s = open_store();
        ck_assert_int_eq(store_events_get(s, "ra", 2, 2, &arr), 0);
        ck_assert_int_eq(json_array_size(arr), 2);
        ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(arr, 0), "seq")), 3);
        ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(arr, 0), "wave")), 3);
        ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(arr, 1), "seq")), 4);
        json_decref(arr);
        ck_assert_int_eq(store_events_get(s, "ra", 5, 10, &arr), 0);
        ck_assert_int_eq(json_array_size(arr), 0);
        json_decref(arr);
        ck_assert_int_eq(store_events_get(s, "rb", 0, 10, &arr), 0);
        ck_assert_int_eq(json_array_size(arr), 1);
        ck_assert_str_eq(json_string_value(json_object_get(json_array_get(arr, 0), "rollout")),
                         "rb");
        json_decref(arr);
        store_close(s);
}
END_TEST

START_TEST(test_uncommitted_is_lost)
{
        /* A crash between writes and the commit: a reopen finds the last commit only. */
        struct store *s = open_store();
        struct store_host h = { .name = "a" };
        h.url = "http://a";
        h.labels = json_object();
        ck_assert_int_eq(store_begin(s), 0);
        ck_assert_int_eq(store_host_save(s, &h), 0);
        ck_assert_int_eq(store_commit(s), 0);
        ck_assert_int_eq(store_begin(s), 0);
        snprintf(h.name, sizeof(h.name), "b");
        ck_assert_int_eq(store_host_save(s, &h), 0);
        /* No commit: closing abandons the transaction (as a kill would). */
        store_close(s);
        s = open_store();
        struct hosts_seen hs = { 0 };
        ck_assert_int_eq(store_hosts_load(s, host_cb, &hs), 0);
        ck_assert_int_eq(hs.n, 1);
        ck_assert_str_eq(hs.h[0].name, "a");
        store_host_clear(&hs.h[0]);
        json_decref(h.labels);
        store_close(s);
}
END_TEST

static Suite *suite(void)
{
        Suite *s = suite_create("rollout_store");
        TCase *tc = tcase_create("store");
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_add_test(tc, test_schema_and_mode);
        tcase_add_test(tc, test_newer_schema_refused);
        tcase_add_test(tc, test_hosts_round_trip);
        tcase_add_test(tc, test_rollouts_resume_data);
        tcase_add_test(tc, test_events_seq);
        tcase_add_test(tc, test_uncommitted_is_lost);
        suite_add_tcase(s, tc);
        return s;
}

TESTUTIL_MAIN(suite)
