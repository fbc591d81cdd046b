/*
 * fuzz_query.c: the query-string and scalar parsers the HTTP handlers and
 * the command line use, and the query validation of GET /v1/state,
 * /v1/history and /v1/events through router_dispatch.
 *
 * Input: a query string "key=value&key&..." as MHD would hand it over
 * (split on '&', then on the first '='; more than HTTP_MAX_ARGS sets
 * too_many_args). The first byte, if any, picks the method and path. The
 * whole input (and every value) also goes to the bare parsers.
 *
 * The handlers run against a fake agent: the link wraps (--wrap) the agent
 * and journal calls they make after validation, so no backend, no journal,
 * no threads. Only routes whose handlers touch nothing else are dispatched;
 * anything else is skipped (see dispatch_safe()).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"
#include "config.h"
#include "http.h"
#include "journal.h"
#include "luofleet/log.h"
#include "luofleet/luo_state.h"
#include "luofleet/util.h"
#include "router.h"
#include "snapshot.h"
#include "staging.h"

#define FAKE_INDEX 7

/* --- link-time fakes (-Wl,--wrap=...) ----------------------------------- */
struct doc_snapshot *__wrap_agent_snapshot(struct agent *a);
uint64_t __wrap_agent_index(struct agent *a);
void __wrap_agent_lock(struct agent *a);
void __wrap_agent_unlock(struct agent *a);
size_t __wrap_journal_count(const struct journal *j);
uint64_t __wrap_journal_first_index(const struct journal *j);
uint64_t __wrap_journal_last_index(const struct journal *j);
size_t __wrap_journal_find_after(const struct journal *j, uint64_t index);
const struct journal_rec *__wrap_journal_get(const struct journal *j, size_t pos);

struct doc_snapshot *__wrap_agent_snapshot(struct agent *a)
{
        return doc_snapshot_new(FAKE_INDEX, (enum luo_state)0, "{}", 2);
}
uint64_t __wrap_agent_index(struct agent *a)
{
        return FAKE_INDEX;
}
void __wrap_agent_lock(struct agent *a)
{
}
void __wrap_agent_unlock(struct agent *a)
{
}
size_t __wrap_journal_count(const struct journal *j)
{
        return 0;
}
uint64_t __wrap_journal_first_index(const struct journal *j)
{
        return 0;
}
uint64_t __wrap_journal_last_index(const struct journal *j)
{
        return 0;
}
size_t __wrap_journal_find_after(const struct journal *j, uint64_t index)
{
        return 0;
}
const struct journal_rec *__wrap_journal_get(const struct journal *j, size_t pos)
{
        return NULL;
}

/* ------------------------------------------------------------------------ */

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
        /* Only errors (a failing handler) are worth printing while fuzzing. */
        log_set_max_level(LOG_LEVEL_ERR);
        return 0;
}

static void parse_scalars(const char *s, size_t len)
{
        uint64_t v;
        struct listen_addr la;

        (void)parse_u64(s, UINT64_MAX, &v);
        (void)parse_u64(s, INT64_MAX, &v);
        (void)parse_u64(s, 1000, &v);
        (void)parse_duration_ms(s, UINT64_MAX / 1000, &v);
        (void)parse_duration_ms(s, 24ull * 3600 * 1000, &v);
        (void)parse_rfc3339(s, &v);
        (void)errno_from_name(s);
        (void)luo_state_from_buf(s, len);
        (void)luo_state_from_string(s);
        (void)config_parse_listen(s, &la);
        (void)staging_path_valid(s);
        (void)staging_sha256_valid(s);
        (void)uuid_valid(s);
}

/* Routes whose handler only touches the wrapped calls above. */
static bool dispatch_safe(enum http_method m, const char *path)
{
        static const char *const known[] = { "/v1/state",  "/v1/events",  "/v1/prepare",
                                             "/v1/cancel", "/v1/reboot",  "/v1/finish",
                                             "/v1/kernel", "/v1/history", "/healthz",
                                             "/readyz",    "/metrics" };
        bool is_known = false;

        for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
                if (strcmp(known[i], path) == 0)
                        is_known = true;
        if (!is_known)
                return true; /* 404 */
        if (m == HTTP_GET || m == HTTP_HEAD)
                return strcmp(path, "/v1/state") == 0 || strcmp(path, "/v1/history") == 0 ||
                       strcmp(path, "/v1/events") == 0 || strcmp(path, "/v1/prepare") == 0 ||
                       strcmp(path, "/v1/cancel") == 0 || strcmp(path, "/v1/reboot") == 0 ||
                       strcmp(path, "/v1/finish") == 0; /* last four: 405 */
        if (m == HTTP_POST)
                return strcmp(path, "/v1/prepare") != 0 && strcmp(path, "/v1/cancel") != 0 &&
                       strcmp(path, "/v1/reboot") != 0 && strcmp(path, "/v1/finish") != 0;
        if (m == HTTP_PUT || m == HTTP_DELETE)
                return strcmp(path, "/v1/kernel") != 0;
        return true; /* OTHER: 405 everywhere */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        static const char *const paths[] = { "/v1/state",  "/v1/history", "/v1/events",
                                             "/v1/kernel", "/v1/prepare", "/nope",
                                             "/healthz",   "/v1/state/" };
        static const enum http_method methods[] = { HTTP_GET,  HTTP_HEAD, HTTP_GET,
                                                    HTTP_POST, HTTP_PUT,  HTTP_OTHER };
        struct agent *fake = calloc(1, sizeof(*fake));
        struct http_req req = { 0 };
        struct http_reply rep = { 0 };
        char *buf, *q, *save = NULL;
        uint8_t sel = size ? data[0] : 0;

        if (!fake)
                return 0;
        /* The whole input, unsplit, with its exact length and NUL-terminated. */
        buf = malloc(size + 1);
        if (!buf) {
                free(fake);
                return 0;
        }
        memcpy(buf, data, size);
        buf[size] = 0;
        parse_scalars(buf, size);

        /* Then as a query string after the selector byte. */
        q = size ? buf + 1 : buf;
        for (char *tok = strtok_r(q, "&", &save); tok; tok = strtok_r(NULL, "&", &save)) {
                char *eq = strchr(tok, '=');
                if (req.n_args == HTTP_MAX_ARGS) {
                        req.too_many_args = true;
                        break;
                }
                if (eq) {
                        *eq = 0;
                        parse_scalars(eq + 1, strlen(eq + 1));
                }
                req.args[req.n_args].key = tok;
                req.args[req.n_args].value = eq ? eq + 1 : NULL;
                req.n_args++;
        }

        req.method = methods[sel % (sizeof(methods) / sizeof(methods[0]))];
        req.method_raw = (sel & 0x80) ? q : NULL; /* hostile method names in 405s */
        req.path = paths[(sel >> 3) % (sizeof(paths) / sizeof(paths[0]))];
        req.agent = fake;
        req.max_wait_ms = (sel & 0x40) ? 600000 : 0;
        req.resumed = sel & 0x20;
        {
                bool dup;
                const char *inm = http_req_arg(&req, "if-none-match", &dup);
                req.if_none_match = inm;
                req.last_event_id = http_req_arg(&req, "last-event-id", &dup);
        }
        snprintf(req.peer, sizeof(req.peer), "fuzz");

        if (dispatch_safe(req.method, req.path)) {
                (void)router_dispatch(&req, &rep);
                /* A deferred reply (long-poll) gets its status later. */
                if (rep.defer == DEFER_LONGPOLL ? rep.status != 0 || rep.wait_index != FAKE_INDEX
                                                : rep.status < 100 || rep.status > 599)
                        abort(); /* every answer must carry a status */
                if (rep.status >= 400 && (!rep.problem || !json_is_object(rep.json)))
                        abort(); /* and every refusal a problem document */
        }
        http_reply_clear(&rep);
        free(buf);
        free(fake);
        return 0;
}
