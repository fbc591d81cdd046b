/*
 * h_state.c: GET /v1/state, with ETag / If-None-Match and Consul-style
 * blocking queries (?index=N&wait=D). MHD thread; never blocks: a waiting
 * request is deferred to longpoll.c.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "agent.h"
#include "http.h"
#include "luofleet/macro.h"
#include "luofleet/util.h"
#include "router.h"
#include "snapshot.h"

#define DEFAULT_WAIT_MS (5 * 60 * 1000)

/* Does an If-None-Match header name this ETag? ("*" matches any.) */
static bool etag_matches(const char *hdr, uint64_t index)
{
        char want[32];
        int n = snprintf(want, sizeof(want), "\"%llu\"", (unsigned long long)index);

        for (const char *p = hdr; p && *p;) {
                while (*p == ' ' || *p == ',')
                        p++;
                if (*p == '*')
                        return true;
                if (p[0] == 'W' && p[1] == '/')
                        p += 2;
                if (strncmp(p, want, (size_t)n) == 0 && (p[n] == 0 || p[n] == ',' || p[n] == ' '))
                        return true;
                p = strchr(p, ',');
        }
        return false;
}

int h_state_get(struct http_req *req, struct http_reply *rep)
{
        bool dup_index = false, dup_wait = false;
        const char *index_s = http_req_arg(req, "index", &dup_index);
        const char *wait_s = http_req_arg(req, "wait", &dup_wait);
        uint64_t index = 0, wait_ms = 0;
        struct doc_snapshot *snap;
        int r;

        if (dup_index || dup_wait)
                return http_reply_problem(rep, 400, "invalid-query", "%s given more than once",
                                          dup_index ? "index" : "wait");
        if (wait_s && !index_s)
                return http_reply_problem(rep, 400, "invalid-query",
                                          "wait needs index: wait for a change of the document "
                                          "after the index you have seen");
        if (index_s) {
                r = parse_u64(index_s, INT64_MAX, &index);
                if (r < 0)
                        return http_reply_problem(rep, 400, "invalid-query",
                                                  "index must be an integer between 0 and %lld%s",
                                                  (long long)INT64_MAX,
                                                  r == -ERANGE ? " (out of range)" : "");
                wait_ms = MIN((uint64_t)DEFAULT_WAIT_MS, req->max_wait_ms);
        }
        if (wait_s) {
                r = parse_duration_ms(wait_s, UINT64_MAX / 1000, &wait_ms);
                if (r < 0)
                        return http_reply_problem(rep, 400, "invalid-query",
                                                  "wait must be a duration like 250ms, 30s or 5m%s",
                                                  r == -ERANGE ? " (out of range)" : "");
                if (wait_ms > req->max_wait_ms)
                        wait_ms = req->max_wait_ms; /* clamped, as Consul does */
        }

        snap = agent_snapshot(req->agent);
        if (!snap)
                return -ENOMEM;
        /* A client index from the future (state dir reset) answers at once. */
        if (index_s && !req->resumed && wait_ms > 0 && snap->index == index) {
                doc_snapshot_unref(snap);
                rep->defer = DEFER_LONGPOLL;
                rep->wait_index = index;
                rep->wait_deadline = now_mono_usec() + wait_ms * 1000;
                return 0;
        }
        if (req->if_none_match && etag_matches(req->if_none_match, snap->index)) {
                rep->status = 304;
                rep->snap = snap; /* for the ETag only: 304 has no body */
                rep->etag_from_snap = true;
                return 0;
        }
        rep->status = 200;
        rep->snap = snap;
        rep->etag_from_snap = true;
        return 0;
}
