/*
 * sessions.h: what the agent knows of the workload session broker
 * (sessions.c; broker/broker.c runs the broker, in the privileged helper):
 * the broker's document, cached for GET /v1/sessions and the state
 * document's summary, and its change events turned into journal records
 * (kind "session": long-polls and event streams see them) and audit records.
 *
 * Threads: sessions_refresh() on the event-loop thread (the backend's
 * doorbell) and once at start-up on the main thread; the readers on any
 * thread. State lives in struct agent, under agent.lock.
 */
#pragma once

#include <jansson.h>
#include <stdbool.h>

struct agent;

/*
 * Ask the broker for its document and the events after the last one
 * journaled; journal and audit each, then cache the document. No-op
 * without a broker. Returns 0 or -errno (the broker could not be asked).
 */
int sessions_refresh(struct agent *a);

/* A copy of the cached document without its events (NULL: no broker). Takes agent.lock. */
json_t *sessions_doc(struct agent *a);

/* The state document's "sessions" member (agent.lock held): the summary, or null. */
json_t *sessions_summary_locked(struct agent *a);

/* A journal record of kind "session" during the load: remember where draining stopped. */
void sessions_load_record(struct agent *a, json_t *rec);
