/*
 * h_health.c: GET /healthz (the process answers), GET /readyz (pre-flight
 * checks a controller can gate on) and GET /metrics (Prometheus text).
 * MHD thread; reads counters and takes agent.lock briefly.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "agent.h"
#include "auth.h"
#include "tls.h"
#include "config.h"
#include "hooks.h"
#include "http.h"
#include "journal.h"
#include "loop.h"
#include "luofleet/util.h"
#include "metrics.h"
#include "router.h"
#include "server.h"
#include "verify.h"

int h_healthz_get(struct http_req *req, struct http_reply *rep)
{
        (void)req;
        return http_reply_json(rep, 200, json_pack("{s:s}", "status", "ok"));
}

static void check(json_t *arr, const char *name, bool ok, const char *detail, bool *all)
{
        json_array_append_new(
                arr, json_pack("{s:s, s:b, s:s}", "name", name, "ok", ok, "detail", detail));
        if (!ok)
                *all = false;
}

/* How callers are authenticated; says so loudly when --insecure is in force. */
static void security_detail(const struct agent_config *cfg, char *buf, size_t size)
{
        bool exposed = false;

        for (unsigned i = 0; i < cfg->n_listen; i++)
                exposed |= !listen_is_loopback(&cfg->listen[i]);
        if (exposed && cfg->insecure &&
            !(cfg->tls_cert && (cfg->tokens_file || cfg->tls_client_ca)))
                snprintf(buf, size,
                         "INSECURE (--insecure): a non-loopback listener without TLS and "
                         "authentication");
        else if (cfg->tokens_file || cfg->tls_client_ca)
                snprintf(buf, size, "%s, %s%s", cfg->tls_cert ? "TLS" : "plain HTTP on loopback",
                         cfg->tls_client_ca ? "client certificates" : "",
                         cfg->tokens_file
                                 ? (cfg->tls_client_ca ? " and bearer tokens" : "bearer tokens")
                                 : "");
        else
                snprintf(buf, size, "%s on loopback and the Unix socket only, no authentication",
                         cfg->tls_cert ? "TLS" : "plain HTTP");
}

int h_readyz_get(struct http_req *req, struct http_reply *rep)
{
        struct agent *a = req->agent;
        json_t *checks = json_array();
        bool all = true, shutting;
        char detail[160];

        agent_lock(a);
        shutting = a->shutting_down;
        enum luo_state s = a->state;
        agent_unlock(a);

        snprintf(detail, sizeof(detail), "%s backend open, kernel state %s", a->backend->ops->name,
                 luo_state_to_string(s));
        check(checks, "backend", s != LUO_STATE_UNDEFINED, detail, &all);
        /* Full or read-only state directory (probed), or a failed append (the audit's too). */
        bool jok = agent_journal_health(a, detail, sizeof(detail));
        check(checks, "journal", jok, detail, &all);
        check(checks, "kernel-consistent", a->self_check[0] == 0,
              a->self_check[0] ? a->self_check : "GET_STATE and sysfs agreed at start-up", &all);
        check(checks, "accepting", !shutting, shutting ? "shutting down" : "accepting operations",
              &all);
        /* With --hooks-dir: the post-update hooks, the host's own checks after an update. */
        if (a->cfg && a->cfg->hooks_dir) {
                bool hok = hooks_health(a, detail, sizeof(detail));
                check(checks, "hooks", hok, detail, &all);
        }
        security_detail(a->cfg, detail, sizeof(detail));
        check(checks, "security", true, detail, &all);
        /* After a kexec: is the staged kernel the one that runs (verify.c)? Last, since
         * clients index the checks. */
        bool vok = verify_health(a, detail, sizeof(detail));
        check(checks, "kernel-verified", vok, detail, &all);
        return http_reply_json(
                rep, all ? 200 : 503,
                json_pack("{s:s, s:o}", "status", all ? "ready" : "not-ready", "checks", checks));
}

int h_metrics_get(struct http_req *req, struct http_reply *rep)
{
        struct agent *a = req->agent;
        struct server *srv = req->server;
        struct strbuf sb = { 0 };

        agent_lock(a);
        strbuf_printf(&sb,
                      "# HELP luofleet_state The kernel's live-update state (1 for the current "
                      "one).\n# TYPE luofleet_state gauge\n");
        for (int i = 0; i < _LUO_STATE_MAX; i++)
                strbuf_printf(&sb, "luofleet_state{state=\"%s\"} %d\n", luo_state_to_string(i),
                              a->state == (enum luo_state)i);
        strbuf_printf(&sb,
                      "# HELP luofleet_index The state document's index.\n"
                      "# TYPE luofleet_index gauge\nluofleet_index %llu\n",
                      (unsigned long long)a->index);
        strbuf_printf(&sb, "# HELP luofleet_transitions_total Kernel state transitions seen, by "
                           "from and to.\n# TYPE luofleet_transitions_total counter\n");
        for (int f = 0; f < _LUO_STATE_MAX; f++)
                for (int t = 0; t < _LUO_STATE_MAX; t++)
                        if (a->transitions[f][t])
                                strbuf_printf(&sb,
                                              "luofleet_transitions_total{from=\"%s\",to=\"%s\"} "
                                              "%llu\n",
                                              luo_state_to_string(f), luo_state_to_string(t),
                                              (unsigned long long)a->transitions[f][t]);
        strbuf_printf(&sb, "# HELP luofleet_operations_total Operations finished, by action and "
                           "result.\n# TYPE luofleet_operations_total counter\n");
        for (int i = 0; i < _OP_ACTION_MAX; i++)
                for (int k = 0; k < 2; k++)
                        strbuf_printf(&sb,
                                      "luofleet_operations_total{action=\"%s\",result=\"%s\"} "
                                      "%llu\n",
                                      op_action_to_string(i), k ? "failed" : "succeeded",
                                      (unsigned long long)a->ops_done[i][k]);
        strbuf_printf(&sb,
                      "# HELP luofleet_operation_running 1 while an operation runs.\n"
                      "# TYPE luofleet_operation_running gauge\nluofleet_operation_running %d\n",
                      a->op_running);
        strbuf_printf(&sb,
                      "# HELP luofleet_journal_bytes Size of the journal file.\n"
                      "# TYPE luofleet_journal_bytes gauge\nluofleet_journal_bytes %llu\n"
                      "# HELP luofleet_journal_records Records in the journal.\n"
                      "# TYPE luofleet_journal_records gauge\nluofleet_journal_records %zu\n"
                      "# HELP luofleet_journal_writable 0 when the last append failed.\n"
                      "# TYPE luofleet_journal_writable gauge\nluofleet_journal_writable %d\n",
                      (unsigned long long)journal_size_bytes(a->journal), journal_count(a->journal),
                      a->journal_error == 0);
        strbuf_printf(&sb,
                      "# HELP luofleet_last_blackout_seconds Blackout of the last reboot seen "
                      "at start-up.\n# TYPE luofleet_last_blackout_seconds gauge\n"
                      "luofleet_last_blackout_seconds %.3f\n",
                      (double)a->last_blackout_ms / 1000.0);
        agent_unlock(a);

        if (srv) {
                pthread_mutex_lock(&srv->lp.lock);
                unsigned w = srv->lp.n;
                uint64_t woken = srv->lp.woken_total, to = srv->lp.timeouts_total,
                         rej = srv->lp.rejected_total;
                pthread_mutex_unlock(&srv->lp.lock);
                strbuf_printf(&sb,
                              "# HELP luofleet_longpoll_waiters Suspended long-poll requests.\n"
                              "# TYPE luofleet_longpoll_waiters gauge\n"
                              "luofleet_longpoll_waiters %u\n"
                              "# HELP luofleet_longpoll_waiters_max The waiter cap.\n"
                              "# TYPE luofleet_longpoll_waiters_max gauge\n"
                              "luofleet_longpoll_waiters_max %u\n"
                              "# HELP luofleet_longpoll_wakeups_total Long-polls answered, by "
                              "reason.\n# TYPE luofleet_longpoll_wakeups_total counter\n"
                              "luofleet_longpoll_wakeups_total{reason=\"change\"} %llu\n"
                              "luofleet_longpoll_wakeups_total{reason=\"timeout\"} %llu\n"
                              "# HELP luofleet_longpoll_rejected_total Long-polls refused over "
                              "the cap.\n# TYPE luofleet_longpoll_rejected_total counter\n"
                              "luofleet_longpoll_rejected_total %llu\n",
                              w, srv->lp.max, (unsigned long long)woken, (unsigned long long)to,
                              (unsigned long long)rej);
                pthread_mutex_lock(&srv->sse.lock);
                unsigned n = srv->sse.n;
                uint64_t ev = srv->sse.events_total, rj = srv->sse.rejected_total;
                pthread_mutex_unlock(&srv->sse.lock);
                strbuf_printf(&sb,
                              "# HELP luofleet_sse_clients Connected event-stream clients.\n"
                              "# TYPE luofleet_sse_clients gauge\nluofleet_sse_clients %u\n"
                              "# HELP luofleet_sse_events_total Events sent to stream clients.\n"
                              "# TYPE luofleet_sse_events_total counter\n"
                              "luofleet_sse_events_total %llu\n"
                              "# HELP luofleet_sse_rejected_total Streams refused over the cap.\n"
                              "# TYPE luofleet_sse_rejected_total counter\n"
                              "luofleet_sse_rejected_total %llu\n",
                              n, (unsigned long long)ev, (unsigned long long)rj);
                strbuf_printf(&sb,
                              "# HELP luofleet_watch_wakeups_total Kernel state notifications "
                              "handled.\n# TYPE luofleet_watch_wakeups_total counter\n"
                              "luofleet_watch_wakeups_total %llu\n",
                              (unsigned long long)(srv->loop ? loop_watch_wakeups(srv->loop) : 0));
        }
        strbuf_printf(&sb,
                      "# HELP luofleet_agent_info Agent build and backend.\n"
                      "# TYPE luofleet_agent_info gauge\n"
                      "luofleet_agent_info{version=\"%s\",backend=\"%s\"} 1\n",
                      LUOFLEET_VERSION, a->backend->ops->name);
        metrics_render_sessions(&sb, a); /* takes agent.lock itself */
        metrics_render_requests(&sb);
        auth_render_metrics(&sb);
        tls_render_metrics(&sb);
        if (sb.oom) {
                strbuf_free(&sb);
                return -ENOMEM;
        }
        rep->status = 200;
        rep->text = sb.s;
        rep->text_len = sb.len;
        rep->content_type = "text/plain; version=0.0.4; charset=utf-8";
        return 0;
}
