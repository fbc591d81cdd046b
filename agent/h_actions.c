/*
 * h_actions.c: the mutating endpoints: POST /v1/{prepare,cancel,reboot,
 * finish} and PUT/GET/DELETE /v1/kernel. They validate the request, let
 * agent_op_begin() admit it (durably), and defer the kernel call to the
 * worker: the answer comes when it is done, except reboot, answered 202
 * before the jump. Every answer of a mutating request leaves one audit
 * record (agent_audit): here when it is given at once, at the end of the
 * job when the worker gives it. MHD thread.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "agent.h"
#include "body.h"
#include "http.h"
#include "ops.h"
#include "router.h"
#include "staging.h"

static bool op_id_valid(const char *s)
{
        if (!*s)
                return false;
        for (; *s; s++)
                if (!isalnum((unsigned char)*s) && !strchr("._:-", *s))
                        return false;
        return true;
}

/* Common members of every action body. 1 ok, 0 answered. */
static int parse_common(json_t *body, struct op_request *rq, struct http_reply *rep)
{
        bool present;

        if (!body)
                return 1;
        if (!body_string(body, "operation_id", 1, OP_ID_MAX, rq->id, sizeof(rq->id), &present, rep))
                return 0;
        if (present && !op_id_valid(rq->id)) {
                http_reply_problem(rep, 400, "invalid-field",
                                   "operation_id may hold only letters, digits and . _ : -");
                json_object_set_new(rep->json, "field", json_string("operation_id"));
                return 0;
        }
        if (!body_string(body, "reason", 0, OP_REASON_MAX, rq->reason, sizeof(rq->reason),
                         &rq->has_reason, rep))
                return 0;
        return 1;
}

static void request_init(struct http_req *req, enum op_action act, struct op_request *rq)
{
        *rq = (struct op_request){ .action = act, .if_match = req->if_match, .who = req->who };
        agent_requested_by(&req->who, rq->requested_by, sizeof(rq->requested_by));
        snprintf(rq->source, sizeof(rq->source), "%s", req->peer[0] ? req->peer : "unknown");
        if (req->if_match) {
                /* Kept for the audit record of a job that outlives the request's headers. */
                snprintf(rq->precondition, sizeof(rq->precondition), "%.*s", AUDIT_PRECONDITION_MAX,
                         req->if_match);
                rq->has_precondition = true;
        }
}

/*
 * The audit record of an answer given now. An operation that went to the
 * worker (DEFER_WORKER) is audited when it ends, with its real answer
 * (agent_op_execute); a reboot (DEFER_AFTER) now, with its 202. r < 0: the
 * router answers 500 internal-error.
 */
static void audit_answer(struct http_req *req, const struct op_request *rq,
                         const struct http_reply *rep, int r)
{
        struct audit_entry e = {
                .who = &req->who,
                .source = rq->source,
                .action = op_action_to_string(rq->action),
                /* An id that failed validation is not repeated. */
                .operation_id = op_id_valid(rq->id) ? rq->id : NULL,
                .if_match = req->if_match,
                .status = rep->status,
        };

        if (r >= 0 && rep->defer == DEFER_WORKER)
                return;
        if (r < 0) {
                e.status = 500;
                e.code = "internal-error";
        } else if (rep->problem) {
                e.code = json_string_value(json_object_get(rep->json, "code"));
                e.replayed = json_is_true(json_object_get(rep->json, "replayed"));
        } else if (rep->defer == DEFER_AFTER && rep->job) {
                e.code = "accepted";
                e.operation_id = rep->job->rq.id;
        } else {
                /* A success answered at once is a replay of an earlier request. */
                e.code = "replayed";
                e.replayed = true;
        }
        agent_audit(req->agent, &e);
}

static int begin(struct http_req *req, struct http_reply *rep, const struct op_request *rq)
{
        struct op_job *job = NULL;
        int r;

        r = agent_op_begin(req->agent, rq, rep, &job);
        if (r <= 0)
                return r;
        rep->job = job;
        if (rq->action == OP_REBOOT) {
                /* Answer first, jump after: the job runs when the 202 has left. */
                agent_lock(req->agent);
                json_t *doc = agent_doc_locked(req->agent, req->agent->operation);
                agent_unlock(req->agent);
                if (!doc)
                        return -ENOMEM;
                http_reply_json(rep, 202, doc);
                rep->close = true;
                rep->defer = DEFER_AFTER;
        } else
                rep->defer = DEFER_WORKER;
        return 0;
}

static int action_post(struct http_req *req, struct http_reply *rep, struct op_request *rq)
{
        static const char *const fields[] = { "operation_id", "reason", NULL };
        json_t *body = NULL;

        if (!body_parse(req, rep, false, &body))
                return 0;
        if (body && (!body_only_fields(body, fields, NULL, rep) || !parse_common(body, rq, rep))) {
                json_decref(body);
                return 0;
        }
        json_decref(body);
        return begin(req, rep, rq);
}

int h_action_post(struct http_req *req, struct http_reply *rep)
{
        const char *name = strrchr(req->path, '/') + 1;
        struct op_request rq;
        int act = op_action_from_string(name), r;

        if (act < 0 || act == OP_STAGE || act == OP_UNSTAGE)
                return -EINVAL; /* the route table only maps the four actions here */
        request_init(req, act, &rq);
        r = action_post(req, rep, &rq);
        audit_answer(req, &rq, rep, r);
        return r;
}

/* {"path": ABS, "sha256": HEX}; 1 ok, 0 answered. */
static int parse_file(json_t *body, const char *key, bool required, char *path, size_t path_size,
                      char *sha, struct http_reply *rep)
{
        static const char *const fields[] = { "path", "sha256", NULL };
        json_t *f = json_object_get(body, key);
        bool present;
        char where[32];

        if (!f) {
                if (!required)
                        return 1;
                http_reply_problem(rep, 400, "invalid-field", "%s is required", key);
                json_object_set_new(rep->json, "field", json_string(key));
                return 0;
        }
        if (!json_is_object(f)) {
                http_reply_problem(rep, 400, "invalid-field",
                                   "%s must be an object {\"path\", \"sha256\"}", key);
                json_object_set_new(rep->json, "field", json_string(key));
                return 0;
        }
        snprintf(where, sizeof(where), "%s", key);
        if (!body_only_fields(f, fields, where, rep))
                return 0;
        if (!body_string(f, "path", 1, 4095, path, path_size, &present, rep))
                return 0;
        if (!present || !staging_path_valid(path)) {
                http_reply_problem(rep, 400, "invalid-field",
                                   "%s.path must be an absolute path without '.', '..' or empty "
                                   "components",
                                   key);
                json_object_set_new(rep->json, "field", json_string(key));
                return 0;
        }
        if (!body_string(f, "sha256", 64, 64, sha, 65, &present, rep))
                return 0;
        if (!present || !staging_sha256_valid(sha)) {
                http_reply_problem(rep, 400, "invalid-field", "%s.sha256 must be 64 hex digits",
                                   key);
                json_object_set_new(rep->json, "field", json_string(key));
                return 0;
        }
        return 1;
}

static int kernel_put(struct http_req *req, struct http_reply *rep, struct op_request *rq)
{
        static const char *const fields[] = { "kernel", "initrd",       "cmdline",
                                              "reason", "operation_id", NULL };
        json_t *body = NULL;
        bool present;
        int ok;

        if (!body_parse(req, rep, true, &body))
                return 0;
        ok = body_only_fields(body, fields, NULL, rep) && parse_common(body, rq, rep) &&
             parse_file(body, "kernel", true, rq->kernel_path, sizeof(rq->kernel_path),
                        rq->kernel_sha256, rep) &&
             parse_file(body, "initrd", false, rq->initrd_path, sizeof(rq->initrd_path),
                        rq->initrd_sha256, rep) &&
             body_string(body, "cmdline", 0, sizeof(rq->cmdline) - 1, rq->cmdline,
                         sizeof(rq->cmdline), &present, rep);
        json_decref(body);
        if (!ok)
                return 0;
        return begin(req, rep, rq);
}

int h_kernel_put(struct http_req *req, struct http_reply *rep)
{
        struct op_request rq;
        int r;

        request_init(req, OP_STAGE, &rq);
        r = kernel_put(req, rep, &rq);
        audit_answer(req, &rq, rep, r);
        return r;
}

int h_kernel_get(struct http_req *req, struct http_reply *rep)
{
        struct agent *a = req->agent;
        json_t *st;

        agent_lock(a);
        st = a->staged ? json_deep_copy(a->staged) : NULL;
        agent_unlock(a);
        if (!st)
                return http_reply_problem(rep, 404, "no-kernel-staged", "no kernel is staged");
        return http_reply_json(rep, 200, st);
}

int h_kernel_delete(struct http_req *req, struct http_reply *rep)
{
        struct op_request rq;
        int r;

        request_init(req, OP_UNSTAGE, &rq);
        /* The same body as the four actions: operation_id and reason. */
        r = action_post(req, rep, &rq);
        audit_answer(req, &rq, rep, r);
        return r;
}
