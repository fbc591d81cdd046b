/*
 * sessions.c: the broker's document and events in the agent (sessions.h).
 * The broker numbers its events per instance (broker_id, seq); the agent
 * journals each once: a record of kind "session" carries both, so a
 * restarted agent talking to the same broker (the helper survived) resumes
 * after the last one it journaled, and a new broker instance starts from 0.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"
#include "auth.h"
#include "luofleet/log.h"
#include "luofleet/macro.h"
#include "sessions.h"

/* The members of a broker event that a journal record carries, as they are. */
static const char *const event_members[] = {
        "session", "owner_uid", "workload", "pid", "token", "bytes", "errno", "detail",
};

void sessions_load_record(struct agent *a, json_t *rec)
{
        json_t *b = json_object_get(rec, "broker");
        const char *id = json_string_value(json_object_get(b, "id"));
        json_int_t seq = json_integer_value(json_object_get(b, "seq"));

        if (!id || seq < 0)
                return;
        snprintf(a->sessions_broker_id, sizeof(a->sessions_broker_id), "%s", id);
        a->sessions_seq = (uint64_t)seq;
}

static void audit_event(struct agent *a, json_t *ev)
{
        struct auth_identity who = { .role = ROLE_NONE };
        const char *event = json_string_value(json_object_get(ev, "event"));
        const char *en = json_string_value(json_object_get(ev, "errno"));
        json_t *uid = json_object_get(ev, "owner_uid");
        char action[64];

        if (!event || strcmp(event, "connected") == 0 || strcmp(event, "disconnected") == 0)
                return; /* not a change of anything preserved */
        snprintf(who.method, sizeof(who.method), "peercred");
        if (json_is_integer(uid))
                snprintf(who.name, sizeof(who.name), "uid=%lld",
                         (long long)json_integer_value(uid));
        snprintf(action, sizeof(action), "session-%s", event);
        agent_audit(a, &(struct audit_entry){
                               .who = json_is_integer(uid) ? &who : NULL,
                               .source = "sessions",
                               .action = action,
                               .status = en ? 409 : 200,
                               .code = en ? en : "ok",
                       });
}

/* The broker's document with the events after since; NULL on failure (*ret_r). */
static json_t *broker_doc(struct backend *b, uint64_t since, int *ret_r)
{
        _cleanup_free_ char *text = NULL;
        size_t len = 0;
        json_t *doc;

        *ret_r = b->ops->sessions_json(b, since, &text, &len);
        if (*ret_r < 0)
                return NULL;
        doc = json_loadb(text, len, 0, NULL);
        if (!doc || !json_is_object(doc)) {
                json_decref(doc);
                *ret_r = -EPROTO;
                return NULL;
        }
        return doc;
}

int sessions_refresh(struct agent *a)
{
        struct backend *b = a->backend;
        json_t *doc, *events, *fresh, *ev;
        char known[sizeof(a->sessions_broker_id)];
        const char *id;
        uint64_t since, idx = 0;
        size_t i;
        int r;

        if (!b->ops->sessions_json)
                return 0;
        pthread_mutex_lock(&a->sessions_lock);
        agent_lock(a);
        since = a->sessions_seq;
        memcpy(known, a->sessions_broker_id, sizeof(known));
        agent_unlock(a);
        doc = broker_doc(b, since, &r);
        if (!doc)
                goto out;
        id = json_string_value(json_object_get(doc, "broker_id"));
        if (since > 0 && id && strcmp(id, known) != 0) {
                /* Another broker instance (a new helper): every event of it is new. */
                json_decref(doc);
                since = 0;
                doc = broker_doc(b, since, &r);
                if (!doc)
                        goto out;
                id = json_string_value(json_object_get(doc, "broker_id"));
        }
        events = json_incref(json_object_get(doc, "events"));
        json_object_del(doc, "events");
        fresh = json_array();

        agent_lock(a);
        snprintf(a->sessions_broker_id, sizeof(a->sessions_broker_id), "%s", id ? id : "");
        if (since == 0)
                a->sessions_seq = 0;
        /*
         * The document first, so the records below rebuild the state document with its
         * summary. Only with a record (or the first time, at start-up): the served
         * document never changes without its index (a change's event may come with the
         * next refresh, and the document with it then).
         */
        bool first = !a->sessions_summary, any = false;
        json_array_foreach (events, i, ev) {
                json_int_t seq = json_integer_value(json_object_get(ev, "seq"));
                if (seq > 0 && (uint64_t)seq > a->sessions_seq)
                        any = true;
        }
        if (first || any) {
                const char *ki = json_string_value(json_object_get(doc, "kernel_interface"));
                /* The backend learns some facts late (luo-sessions: GET_NAME). */
                if (ki)
                        snprintf(a->interface, sizeof(a->interface), "%s", ki);
                json_decref(a->sessions_summary);
                a->sessions_summary = json_deep_copy(json_object_get(doc, "summary"));
                if (!a->sessions_summary)
                        a->sessions_summary = json_null();
        }
        /* GET /v1/sessions is not the state document: it may be fresher (a last round). */
        json_object_del(doc, "kernel_interface");
        json_decref(a->sessions_doc);
        a->sessions_doc = doc;
        json_array_foreach (events, i, ev) {
                json_int_t seq = json_integer_value(json_object_get(ev, "seq"));
                json_t *f;
                if (seq <= 0 || (uint64_t)seq <= a->sessions_seq)
                        continue;
                f = json_pack("{s:O, s:{s:s, s:I}}", "event", json_object_get(ev, "event"),
                              "broker", "id", a->sessions_broker_id, "seq", (json_int_t)seq);
                if (!f)
                        continue;
                for (size_t k = 0; k < ELEMENTSOF(event_members); k++) {
                        json_t *v = json_object_get(ev, event_members[k]);
                        if (v)
                                json_object_set(f, event_members[k], v);
                }
                (void)agent_record_kind_locked(a, "session", f, false);
                a->sessions_seq = (uint64_t)seq;
                idx = a->index;
                json_array_append(fresh, ev);
        }
        if (!idx && first)
                agent_doc_refresh_locked(a); /* start-up: the summary, nothing new */
        agent_unlock(a);
        if (idx)
                agent_notify_index(a, idx);
        json_array_foreach (fresh, i, ev)
                audit_event(a, ev);
        json_decref(fresh);
        json_decref(events);
        r = 0;
out:
        pthread_mutex_unlock(&a->sessions_lock);
        return r;
}

json_t *sessions_doc(struct agent *a)
{
        json_t *d;

        agent_lock(a);
        d = a->sessions_doc ? json_deep_copy(a->sessions_doc) : NULL;
        agent_unlock(a);
        return d;
}

json_t *sessions_summary_locked(struct agent *a)
{
        return a->sessions_summary ? json_deep_copy(a->sessions_summary) : json_null();
}
