/*
 * h_sessions.c: GET /v1/sessions, the workloads' sessions as the session
 * broker last reported them (sessions.c keeps the copy, refreshed at every
 * change the broker announces): MHD thread, never waits for the broker.
 */
#include <errno.h>

#include "agent.h"
#include "http.h"
#include "router.h"
#include "sessions.h"

int h_sessions_get(struct http_req *req, struct http_reply *rep)
{
        struct agent *a = req->agent;
        json_t *doc = sessions_doc(a);

        if (!doc) {
                /* No broker behind this backend: nothing is brokered, nothing to show. */
                doc = json_pack("{s:[], s:[], s:n, s:n}", "sessions", "workloads", "summary",
                                "last_round");
                if (!doc)
                        return -ENOMEM;
        }
        json_object_del(doc, "version");
        json_object_del(doc, "next_seq");
        agent_lock(a);
        json_object_set_new(doc, "index", json_integer((json_int_t)a->index));
        json_object_set_new(doc, "backend", json_string(a->backend->ops->name));
        agent_unlock(a);
        return http_reply_json(rep, 200, doc);
}
