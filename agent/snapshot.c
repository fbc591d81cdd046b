/*
 * snapshot.c: reference-counted state document serializations. Any thread.
 */
#include <stdlib.h>
#include <string.h>

#include "snapshot.h"

struct doc_snapshot *doc_snapshot_new(uint64_t index, enum luo_state state, const char *json,
                                      size_t len)
{
        struct doc_snapshot *s = malloc(sizeof(*s) + len + 1);
        if (!s)
                return NULL;
        atomic_init(&s->refs, 1);
        s->index = index;
        s->state = state;
        s->len = len;
        memcpy(s->json, json, len);
        s->json[len] = 0;
        return s;
}

struct doc_snapshot *doc_snapshot_ref(struct doc_snapshot *s)
{
        if (s)
                atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
        return s;
}

struct doc_snapshot *doc_snapshot_unref(struct doc_snapshot *s)
{
        if (s && atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1)
                free(s);
        return NULL;
}
