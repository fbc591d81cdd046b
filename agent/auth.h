/*
 * auth.h: who is asking, and may they? Bearer tokens from a tokens file
 * (name, role, SHA-256 of the token; compared in constant time), verified
 * TLS client certificates, and SO_PEERCRED on the Unix socket, mapped to
 * one of three roles. Loaded on the main thread (start-up and SIGHUP);
 * auth_check() runs on MHD's threads against an immutable, refcounted
 * tokens table that a reload swaps.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct agent_config;

enum auth_role {
        ROLE_NONE,     /* not authenticated */
        ROLE_VIEWER,   /* GET endpoints */
        ROLE_OPERATOR, /* + prepare, cancel, reboot, finish, kernel staging */
        ROLE_ADMIN,    /* + anything destructive that comes later */
        _ROLE_MAX,
};

const char *auth_role_to_string(enum auth_role r);
int auth_role_from_string(const char *s);

/* The caller's identity as established for one request. */
struct auth_identity {
        enum auth_role role;
        char method[12]; /* "token", "cert", "peercred", "none" (auth off), "anonymous" */
        char name[136];  /* token name, certificate subject, "uid=N"; "" for none/anonymous */
};

/* "token:ci-bot", "cert:ctl.example", "uid:0", "anonymous": for logs and requested_by. */
void auth_identity_string(const struct auth_identity *who, char *buf, size_t size);

/* ---- the tokens file ---------------------------------------------------- */

#define AUTH_TOKEN_NAME_MAX 64
#define AUTH_TOKENS_MAX 4096
#define AUTH_TOKENS_FILE_MAX (1024 * 1024)
#define AUTH_TOKEN_MAX 512 /* longest bearer token looked at */

struct auth_tokens;

/*
 * Parse a tokens file's text: one entry per line, "NAME ROLE SHA256":
 * NAME [A-Za-z0-9._-]{1,64}, ROLE viewer|operator|admin, SHA256 the 64 hex
 * digits of the token's digest; '#' comments and blank lines. Names and
 * digests are unique. Returns 0 or -EINVAL with "line N: why" in err.
 */
int auth_tokens_parse(const char *text, size_t len, struct auth_tokens **ret, char *err,
                      size_t err_size);
/* Open, check (regular file, no group/other permissions), read, parse. */
int auth_tokens_load(const char *path, struct auth_tokens **ret, char *err, size_t err_size);
struct auth_tokens *auth_tokens_ref(struct auth_tokens *t);
struct auth_tokens *auth_tokens_unref(struct auth_tokens *t);
size_t auth_tokens_count(const struct auth_tokens *t);
/*
 * Find the entry whose digest is SHA-256(token). Compares against every
 * entry in constant time. Returns 0 with the name (valid while t is held)
 * and role, or -ENOENT.
 */
int auth_tokens_find(const struct auth_tokens *t, const char *token, size_t len,
                     const char **ret_name, enum auth_role *ret_role);

/* ---- the process-wide policy (server.c) --------------------------------- */

/*
 * Load the tokens file and resolve --unix-group. Returns 0 or -errno with a
 * sentence for the operator in err.
 */
int auth_setup(const struct agent_config *cfg, char *err, size_t err_size);
/* SIGHUP: reread the tokens file; on error the old table stays. */
int auth_reload(char *err, size_t err_size);
void auth_done(void);
/*
 * Give the Unix socket to --unix-group (no-op without it): file_fd is its
 * file, opened O_PATH and checked to be the socket just bound (server.c).
 * 0 or -errno.
 */
int auth_chown_socket(int file_fd);
/* Tokens or client certificates configured: TCP callers must authenticate. */
bool auth_required(void);
/* Number of tokens loaded now (for /metrics and logs). */
size_t auth_token_count(void);

/* One request as auth sees it. */
struct auth_request {
        bool is_unix;              /* arrived on the Unix socket */
        bool is_read;              /* GET or HEAD */
        const char *path;          /* "/v1/state" */
        const char *authorization; /* the Authorization header or NULL */
        int fd;                    /* the connection's socket (Unix: SO_PEERCRED) */
        int cert;                  /* 1 verified client certificate, 0 none, -1 invalid */
        const char *cert_name;     /* the verified certificate's subject */
};

enum auth_verdict {
        AUTH_ALLOW,
        AUTH_UNAUTHENTICATED, /* 401 */
        AUTH_FORBIDDEN,       /* 403 */
};

/*
 * Decide. Fills who (always), and for a refusal the problem code and a
 * detail sentence. Never blocks; safe on any thread.
 */
enum auth_verdict auth_check(const struct auth_request *rq, struct auth_identity *who,
                             const char **ret_code, char *detail, size_t detail_size);

/* Count a refusal by its problem code (for /metrics). */
void auth_count_denied(enum auth_verdict v, const char *code);
/* luofleet_auth_denied_total{code="..."} lines, Prometheus text format. */
struct strbuf;
void auth_render_metrics(struct strbuf *sb);

/*
 * `luofleet-agent token NAME [ROLE]`: print a new random token on stdout
 * and, on stderr, the tokens-file line to add. Returns the exit status.
 */
int auth_token_command(int argc, char **argv);
