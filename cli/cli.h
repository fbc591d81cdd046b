/*
 * cli.h: what luofleetctl's files share: exit codes, the resolved
 * configuration (config.c), the HTTP client (http.c), tables (table.c), host
 * addresses (target.c), rollout specs (spec.c), the host commands' plumbing
 * (cmd_host.c), workload sessions (cmd_session.c) and the command entry
 * points (cmd_*.c). Single-threaded program; no locks.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

/* Exit codes (docs/cli.md, --help). */
enum {
        EXIT_OK = 0,         /* success; rollout completed */
        EXIT_FAILED = 1,     /* a request failed or was refused */
        EXIT_USAGE = 2,      /* usage or configuration error */
        EXIT_RO_FAILED = 3,  /* rollout failed */
        EXIT_RO_PAUSED = 4,  /* rollout paused or blocked */
        EXIT_RO_ABORTED = 5, /* rollout aborted */
        EXIT_NO_CONNECT = 6, /* could not connect (no HTTP answer at all) */
        EXIT_UNDER_WAY = 7,  /* converge: the host is rebooting into the target; run again */
};

enum output_format {
        OUTPUT_TABLE,
        OUTPUT_JSON,
};

/* ---- config.c --------------------------------------------------------------- */

/* The settings of one layer (flags, environment, file): NULL when not set. */
enum cfg_key {
        CFG_CONTROLLER,
        CFG_TOKEN_FILE,
        CFG_CA_BUNDLE,
        CFG_CERT,
        CFG_KEY,
        CFG_OUTPUT,
        CFG_TIMEOUT,
        _CFG_MAX,
};

struct cfg_layer {
        char *v[_CFG_MAX];
        char *token; /* LUOFLEET_TOKEN (environment only) */
};

/* The resolved configuration every command uses. */
struct cli {
        struct cfg_layer
                flags;     /* filled by the option parser (strings borrowed from argv, dup'ed) */
        char *config_path; /* --config */
        /* resolved: */
        const char *controller; /* NULL: none configured */
        const char *ca_bundle, *cert, *key;
        char *token; /* owned; NULL: none */
        enum output_format output;
        uint64_t timeout_ms;
        /* common action options */
        const char *reason, *operation_id, *if_match;
        /* owned storage behind the resolved pointers */
        struct cfg_layer env, file;
        bool help;
};

const char *cfg_key_to_string(enum cfg_key k);
enum cfg_key cfg_key_from_string(const char *s); /* _CFG_MAX when unknown */

/*
 * Parse a config file's text ("key = value" lines, '#' comments) into layer.
 * On error returns -EINVAL with "LINE: what" in err (the caller adds the path).
 */
int config_parse_text(const char *text, struct cfg_layer *layer, char *err, size_t err_size);

/* Fill cli->env and cli->file, then resolve flags > env > file > defaults. Logs
 * its own errors (stderr); returns 0 or EXIT_USAGE. */
int config_resolve(struct cli *cli);
void config_layer_clear(struct cfg_layer *l);
void cli_free(struct cli *cli);

/* Read a token file: the first line. Refuses a file other users may read. */
int config_read_token_file(const char *path, char **ret, char *err, size_t err_size);

/* ---- http.c ----------------------------------------------------------------- */

struct http_resp {
        long status; /* 0: no answer */
        char *body;  /* NUL-terminated, owned */
        size_t len;
        char *etag; /* owned or NULL */
};

void http_resp_clear(struct http_resp *r);

/*
 * One request. body (JSON text) may be NULL. timeout_ms 0: the configured one.
 * Returns 0 when an HTTP answer came (any status), or -1 with a sentence in err
 * when there was no answer (connection refused, name resolution, TLS, timeout:
 * EXIT_NO_CONNECT), -2 for other failures (out of memory, body too large).
 */
int http_request(const struct cli *cli, const char *method, const char *url, const char *body,
                 const char *if_match, uint64_t timeout_ms, struct http_resp *ret, char *err,
                 size_t err_size);

/*
 * Server-Sent Events: calls on_event for every complete event; a non-zero
 * return ends the stream (and is returned). Returns 0 when the server closed
 * the stream, >0 from the callback, -1 no answer (err), -2 the answer was not
 * 200 (resp holds it).
 */
struct sse_event {
        const char *id, *type, *data;
};
typedef int (*sse_cb)(const struct sse_event *ev, void *userdata);
int http_sse(const struct cli *cli, const char *url, const char *last_event_id, sse_cb cb,
             void *userdata, struct http_resp *resp, char *err, size_t err_size);

/*
 * Follow GET /v1/state of every URL with long-polls (all at once) until
 * cli_interrupted: on_doc for the first document and every change, on_err once
 * per failure streak (status 0: no answer, err a sentence; else the body).
 */
#define HTTP_WATCH_WAIT_S 30u
typedef void (*watch_doc_cb)(size_t i, json_t *doc, void *userdata);
typedef void (*watch_err_cb)(size_t i, long status, const char *err, void *userdata);
int http_watch_states(const struct cli *cli, size_t n, const char *const *urls, watch_doc_cb on_doc,
                      watch_err_cb on_err, void *userdata);

/* Set by the SIGINT/SIGTERM handler of the watching commands: 0 or the signal. */
extern volatile int cli_interrupted;
void cli_catch_signals(void);

/*
 * Report a non-2xx answer on stderr: "luofleetctl: WHO: 409 invalid-transition: detail".
 */
void http_report_problem(const char *who, const struct http_resp *r);

/* Parse a response body as JSON; NULL (and a message on stderr) when it is not. */
json_t *http_json(const char *who, const struct http_resp *r);

/* Join a base URL and a path ("http://h:1/x/" + "/v1/state"). Owned string or NULL. */
char *url_join(const char *base, const char *path);
/* Percent-encode a path segment or query value. Owned string or NULL. */
char *url_escape(const char *s);

/* ---- table.c ---------------------------------------------------------------- */

struct table;
struct table *table_new(size_t ncols, const char *const *headers);
/* Add a row of ncols strings (copied; NULL prints "-"). */
int table_add(struct table *t, const char *const *cells);
void table_print(const struct table *t, FILE *f);
/* The terminal columns of a UTF-8 string (wide CJK and emoji 2, combining marks 0). */
size_t display_width(const char *s);
struct table *table_free(struct table *t);

/* Format helpers: write into buf, return buf. */
char *fmt_ms(json_t *ms, char *buf, size_t size);       /* "123ms", "-" */
char *fmt_duration_s(double s, char *buf, size_t size); /* "1h02m03s", "45s" */
/* Bytes in binary units: "0 B", "512 B", "1.5 KiB", "64 MiB", "1023 GiB" (one decimal
 * below 100 when it is not .0). */
char *fmt_bytes(uint64_t bytes, char *buf, size_t size);
const char *json_str(const json_t *o, const char *key); /* string member or NULL */
/* Exit code of a failed http_request(): -1 EXIT_NO_CONNECT, else EXIT_FAILED. */
static inline int http_fail_exit(int r)
{
        return r == -1 ? EXIT_NO_CONNECT : EXIT_FAILED;
}
/* Print a document as one compact JSON line on stdout. */
void print_json_line(const json_t *doc);

/* ---- target.c --------------------------------------------------------------- */

/*
 * A HOST argument to an agent base URL: "http(s)://..." as is; "HOST:PORT"
 * http on loopback (127.0.0.0/8, ::1, localhost), https elsewhere. Returns 0
 * and an owned URL, or -ENOENT when it is a bare name (to resolve through the
 * controller), -EINVAL when it is malformed.
 */
int target_parse(const char *arg, char **ret_url);
/* Resolve: target_parse, else GET controller/v1/hosts/NAME -> url. Logs; returns an
 * exit code (0 with *ret_url). */
int target_resolve(const struct cli *cli, const char *arg, char **ret_url);

/* ---- spec.c ----------------------------------------------------------------- */

/* Count: "3" -> 3, "25%" -> "25%". NULL when invalid. */
json_t *spec_count(const char *s);
/* Duration syntax "250ms", "30s", "5m", "2h" or seconds. */
bool spec_duration_valid(const char *s);
/* "mon-fri 02:00-05:00 Europe/Berlin" -> {"days":[..],"start","end","time_zone"}. NULL + err. */
json_t *spec_window(const char *s, char *err, size_t err_size);
/* Set a member at a dotted path ("strategy.batch"), creating objects. Steals value. */
int spec_set(json_t *spec, const char *path, json_t *value);

/* ---- cmd_host.c: what the host commands share -------------------------------- */

/*
 * Every HOST argument of argv[first..argc) well-formed (and, for names, a
 * controller to resolve them) before anything is sent: a typo is a usage error
 * (message printed: EXIT_USAGE), not a partial failure. 0 when all are fine.
 */
int host_check(const struct cli *cli, const char *cmd, int argc, char **argv, int first);
/*
 * Resolve host, send the request (If-Match for the mutating ones), check the status
 * is ok1 or ok2, parse the answer. Reports failures on stderr. Returns an exit code;
 * *ret_doc (and the agent's base URL in *ret_url when not NULL) on success.
 */
int host_call(const struct cli *cli, const char *host, const char *method, const char *path,
              const char *body, long ok1, long ok2, json_t **ret_doc, char **ret_url);

/* ---- cmd_session.c ------------------------------------------------------------ */

enum session_cmd {
        SESSION_LIST,
        SESSION_SHOW,
};

struct session_args {
        enum session_cmd cmd;
        const char *host; /* borrowed from argv */
        const char *name; /* show: the session's name */
        bool has_owner;   /* --owner=UID given */
        uint32_t owner;
};

/*
 * `session list HOST [--owner=UID]` / `session show HOST NAME [--owner=UID]`
 * (argv[0] is "session"): 0 and *ret, EXIT_USAGE (message printed), -1 when
 * --help was shown.
 */
int session_parse(struct cli *cli, int argc, char **argv, struct session_args *ret);
/*
 * The sessions of GET /v1/sessions named name (and owned by owner when
 * has_owner): how many; *ret_first (borrowed) is the first one, NULL when none.
 */
size_t session_find(const json_t *doc, const char *name, bool has_owner, uint32_t owner,
                    const json_t **ret_first);
/* DETAIL of a journal record of kind "session" for `history`. */
void session_record_detail(const json_t *rec, char *buf, size_t size);

/* ---- commands --------------------------------------------------------------- */

int cmd_sign(int argc, char **argv);
int cmd_state(struct cli *cli, int argc, char **argv);
int cmd_stage(struct cli *cli, int argc, char **argv);
int cmd_action(struct cli *cli, const char *action, int argc, char **argv);
int cmd_history(struct cli *cli, int argc, char **argv);
int cmd_session(struct cli *cli, int argc, char **argv);
int cmd_hosts(struct cli *cli, int argc, char **argv);
int cmd_converge(struct cli *cli, int argc, char **argv);

/* cmd_host.c, shared with cmd_converge.c: one file of a staging request ({"url"|"path",
 * "sha256"}; the digest computed when loc is a readable local file; NULL after a usage
 * message naming cmd); a JSON file (NULL after a message); following a host from the 202
 * of a reboot through the kexec to its new boot (an exit code; the outcome printed). */
json_t *cli_stage_file(const char *cmd, const char *what, const char *loc, const char *sha);
/* The staging options (--kernel k, --kernel-sha256 K, --initrd i, --initrd-sha256 I,
 * --cmdline c, --signature s, --release r: cli_parse's callback) and the PUT /v1/kernel
 * body they make (NULL after a usage message naming cmd). */
struct stage_args {
        const char *kernel, *kernel_sha, *initrd, *initrd_sha, *cmdline, *signature, *release;
};
int cli_stage_opt(int c, const char *arg, void *userdata);
json_t *cli_stage_body(const char *cmd, const struct stage_args *a);
json_t *cli_read_json_file(const char *path, const char *what);
int cli_reboot_wait(struct cli *cli, const char *host, const char *base, json_t *accepted,
                    uint64_t limit_ms);
int cmd_rollout(struct cli *cli, int argc, char **argv);

/*
 * Option parsing shared by the commands: the common options (--output,
 * --controller, ..., --reason, --operation-id, --if-match, -h) are accepted by
 * every command. opts: the command's own (ending with {}), ids < 256 or >= 0x200.
 * For each option of the command calls handle(c, optarg, userdata) (returns 0 or
 * EXIT_USAGE). Positional arguments are left in argv[*ret_optind..argc).
 * Returns 0, EXIT_USAGE, or -1 when --help was shown (the caller exits 0).
 */
struct option;
typedef int (*opt_handler)(int c, const char *arg, void *userdata);
int cli_parse(struct cli *cli, int argc, char **argv, const char *shortopts,
              const struct option *opts, opt_handler handle, void *userdata, const char *usage,
              int *ret_optind);
/* The options before the command: 0 (*ret_optind: the command), -1 --version was
 * asked, or an exit code. --help sets cli->help. */
int cli_parse_global(struct cli *cli, int argc, char **argv, int *ret_optind);
void cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Exit code for a rollout status string. */
int rollout_status_exit(const char *status);
