/*
 * snapshot.h: an immutable, reference-counted serialization of the state
 * document. The hot path (GET /v1/state, long-poll fan-out) hands out
 * references instead of serializing again: the document is rebuilt once per
 * change (agent.c), and httpd.c wraps each snapshot in one MHD response.
 * Any thread.
 */
#pragma once

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "luofleet/luo_state.h"

struct doc_snapshot {
        atomic_uint refs;
        uint64_t index;
        enum luo_state state;
        size_t len;
        char json[]; /* NUL-terminated */
};

struct doc_snapshot *doc_snapshot_new(uint64_t index, enum luo_state state, const char *json,
                                      size_t len);
struct doc_snapshot *doc_snapshot_ref(struct doc_snapshot *s);
/* NULL-safe; returns NULL. */
struct doc_snapshot *doc_snapshot_unref(struct doc_snapshot *s);

struct op_job;
/* NULL-safe; defined in ops.c. */
struct op_job *op_job_free(struct op_job *job);
