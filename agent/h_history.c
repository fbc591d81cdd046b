/*
 * h_history.c: GET /v1/history (the journal, oldest first) and
 * GET /v1/events (the journal as a live Server-Sent Events stream; the
 * streaming itself is sse.c); kind=audit pages through the audit journal
 * instead. MHD thread; the agent lock (or the audit lock) is held only while
 * records are copied.
 */
#include <errno.h>
#include <string.h>

#include "agent.h"
#include "http.h"
#include "journal.h"
#include "luofleet/macro.h"
#include "luofleet/util.h"
#include "router.h"

#define HISTORY_DEFAULT_LIMIT 100
#define HISTORY_MAX_LIMIT 1000

/* kind filter: "a,b,c"; NULL matches everything. */
static bool kind_matches(const char *filter, const char *kind)
{
        size_t n = strlen(kind);

        if (!filter)
                return true;
        for (const char *p = filter; *p;) {
                const char *e = strchr(p, ',');
                size_t len = e ? (size_t)(e - p) : strlen(p);
                if (len == n && strncmp(p, kind, n) == 0)
                        return true;
                p += len + (e ? 1 : 0);
        }
        return false;
}

/* Every kind a record may have (api/openapi.yaml, HistoryRecord.kind), and audit. */
static const char *const record_kinds[] = { "transition", "operation", "staging", "reboot",
                                            "start",      "snapshot",  "hook",    "lease",
                                            "session",    "audit" };

/* The kinds, for a message: "transition, operation, ...". */
static const char *record_kinds_list(char *buf, size_t size)
{
        size_t len = 0;

        buf[0] = 0;
        for (size_t i = 0; i < ELEMENTSOF(record_kinds) && len < size; i++)
                len += (size_t)snprintf(buf + len, size - len, "%s%s", i ? ", " : "",
                                        record_kinds[i]);
        return buf;
}

static bool kind_filter_valid(const char *f)
{
        size_t n = strlen(f);

        /* No empty names: no comma first, last or twice in a row. */
        if (n == 0 || n > 256 || f[0] == ',' || f[n - 1] == ',' || strstr(f, ",,"))
                return false;
        for (const char *p = f; *p; p++)
                if (!((*p >= 'a' && *p <= 'z') || *p == '-' || *p == ','))
                        return false;
        return true;
}

/* The first name of the (valid) filter f that is no record kind, in buf; NULL if none. */
static const char *kind_filter_unknown(const char *f, char *buf, size_t size)
{
        while (*f) {
                size_t n = strcspn(f, ",");
                bool known = false;
                for (size_t i = 0; i < ELEMENTSOF(record_kinds); i++)
                        if (strlen(record_kinds[i]) == n && strncmp(record_kinds[i], f, n) == 0)
                                known = true;
                if (!known) {
                        snprintf(buf, size, "%.*s", (int)MIN(n, (size_t)64), f);
                        return buf;
                }
                f += n;
                if (*f == ',')
                        f++;
        }
        return NULL;
}

/*
 * One page of j (lock held: agent.lock for the journal, audit_lock for the
 * audit journal). Returns the page or NULL when out of memory.
 */
static json_t *history_page(struct journal *j, bool since_given, uint64_t since, uint64_t limit,
                            const char *kind)
{
        json_t *records = json_array();
        size_t n = j ? journal_count(j) : 0, pos, end;
        bool more = false;

        if (!records)
                return NULL;
        if (since_given) {
                /* Paging forward: the oldest `limit` records after since. */
                for (pos = j ? journal_find_after(j, since) : 0; pos < n; pos++) {
                        const struct journal_rec *r = journal_get(j, pos);
                        if (!kind_matches(kind, r->kind))
                                continue;
                        if (json_array_size(records) == limit) {
                                more = true;
                                break;
                        }
                        json_array_append_new(records, json_loadb(r->json, r->len, 0, NULL));
                }
        } else {
                /* The newest `limit` records, oldest first. */
                size_t take = 0;
                for (pos = n; pos > 0 && take < limit; pos--)
                        if (kind_matches(kind, journal_get(j, pos - 1)->kind))
                                take++;
                for (size_t p = pos; p > 0; p--)
                        if (kind_matches(kind, journal_get(j, p - 1)->kind)) {
                                more = true;
                                break;
                        }
                for (end = n; pos < end; pos++) {
                        const struct journal_rec *r = journal_get(j, pos);
                        if (kind_matches(kind, r->kind))
                                json_array_append_new(records,
                                                      json_loadb(r->json, r->len, 0, NULL));
                }
        }
        return json_pack("{s:o, s:I, s:I, s:b}", "records", records, "first_index",
                         (json_int_t)(j ? journal_first_index(j) : 0), "last_index",
                         (json_int_t)(j ? journal_last_index(j) : 0), "more", more);
}

int h_history_get(struct http_req *req, struct http_reply *rep)
{
        bool dup1 = false, dup2 = false, dup3 = false;
        const char *since_s = http_req_arg(req, "since", &dup1);
        const char *limit_s = http_req_arg(req, "limit", &dup2);
        const char *kind = http_req_arg(req, "kind", &dup3);
        uint64_t since = 0, limit = HISTORY_DEFAULT_LIMIT;
        struct agent *a = req->agent;
        json_t *out;

        if (dup1 || dup2 || dup3)
                return http_reply_problem(rep, 400, "invalid-query",
                                          "since, limit and kind may be given once each");
        if (since_s && parse_u64(since_s, INT64_MAX, &since) < 0)
                return http_reply_problem(rep, 400, "invalid-query",
                                          "since must be an integer between 0 and %lld",
                                          (long long)INT64_MAX);
        if (limit_s && (parse_u64(limit_s, HISTORY_MAX_LIMIT, &limit) < 0 || limit == 0))
                return http_reply_problem(rep, 400, "invalid-query",
                                          "limit must be an integer between 1 and %d",
                                          HISTORY_MAX_LIMIT);
        char unknown[65], kinds[160];
        if (kind && !kind_filter_valid(kind))
                return http_reply_problem(rep, 400, "invalid-query",
                                          "kind must be a comma-separated list of record "
                                          "kinds: %s",
                                          record_kinds_list(kinds, sizeof(kinds)));
        if (kind && kind_filter_unknown(kind, unknown, sizeof(unknown)))
                return http_reply_problem(rep, 400, "invalid-query",
                                          "kind: %s is no record kind; the kinds: %s", unknown,
                                          record_kinds_list(kinds, sizeof(kinds)));

        if (kind && kind_matches(kind, "audit")) {
                /*
                 * Audit records live in their own journal, numbered on their own
                 * (agent.h): since, first_index and last_index are its indexes, so
                 * it cannot share a page with the state journal's kinds.
                 */
                if (strcmp(kind, "audit") != 0)
                        return http_reply_problem(rep, 400, "invalid-query",
                                                  "kind=audit cannot be combined with other "
                                                  "kinds: audit records have their own indexes");
                struct journal *aj = agent_audit_lock(a);
                out = history_page(aj, since_s != NULL, since, limit, kind);
                agent_audit_unlock(a);
        } else {
                agent_lock(a);
                out = history_page(a->journal, since_s != NULL, since, limit, kind);
                agent_unlock(a);
        }
        if (!out)
                return -ENOMEM;
        return http_reply_json(rep, 200, out);
}

int h_events_get(struct http_req *req, struct http_reply *rep)
{
        bool dup = false;
        const char *q = http_req_arg(req, "last_event_id", &dup);
        const char *id = req->last_event_id ? req->last_event_id : q;
        uint64_t after;

        if (dup)
                return http_reply_problem(rep, 400, "invalid-query",
                                          "last_event_id given more than once");
        if (id) {
                if (parse_u64(id, INT64_MAX, &after) < 0)
                        return http_reply_problem(rep, 400, "invalid-query",
                                                  "Last-Event-ID must be an event id (an index)");
                rep->sse_after = after;
                rep->sse_initial_state = false;
                if (after > agent_index(req->agent)) {
                        /* The client saw a future this agent does not have (state reset):
                         * start it over, as a long-poll would. */
                        rep->sse_after = agent_index(req->agent);
                        rep->sse_initial_state = true;
                }
        } else {
                /* New subscribers get the current document first, then changes. */
                rep->sse_after = agent_index(req->agent);
                rep->sse_initial_state = true;
        }
        rep->status = 200;
        rep->defer = DEFER_SSE;
        return 0;
}
