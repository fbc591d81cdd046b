/*
 * ops.h: one accepted operation on its way through the worker thread.
 * Created by agent_op_begin() on MHD's thread, executed by
 * agent_op_execute() on the worker, then handed back through done().
 */
#pragma once

#include <jansson.h>

#include "agent.h"

struct op_job {
        struct agent *agent;
        struct op_request rq;
        int ok_status; /* 200, or 202 for reboot */

        /* result, filled before done() */
        int status;
        json_t *body; /* document or problem */
        bool problem;

        void (*done)(struct op_job *job, void *userdata);
        void *done_data;
};

struct op_job *op_job_new(struct agent *a, const struct op_request *rq);
/* Does an If-Match header ("12", "\"12\"", W/"12", "*", a list) match index? Also lease.c. */
bool op_if_match_ok(const char *hdr, uint64_t index);
