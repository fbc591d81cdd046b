/*
 * worker.h: the single thread that makes blocking kernel calls, so MHD's
 * thread never blocks. Jobs run one at a time in submission order.
 */
#pragma once

struct op_job;
struct worker;

int worker_new(struct worker **ret);
/* Queue a job (ownership moves to the worker). Any thread. */
int worker_submit(struct worker *w, struct op_job *job);
/* Finish the queued jobs and stop the thread; later submits fail. */
void worker_stop(struct worker *w);
/* Stop (if not yet) and free. NULL-safe. */
struct worker *worker_free(struct worker *w);
