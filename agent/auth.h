/*
 * auth.h: who is asking, and may they? Bearer tokens from a tokens file
 * (name, role, SHA-256 of the token; compared in constant time), verified
 * TLS client certificates, and SO_PEERCRED on the Unix socket, mapped to
 * one of three roles. Loaded on the main thread (start-up and SIGHUP);
 * auth_check() runs on MHD's threads against an immutable, refcounted table.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

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
        char method[8]; /* "token", "cert", "peercred", "none" (auth off), "anon" */
        char name[160]; /* token name, certificate subject, "uid=N", "" */
};

/*
 * `luofleet-agent token NAME [ROLE]`: print a new random token on stdout
 * and, on stderr, the tokens-file line to add. Returns the exit status.
 */
int auth_token_command(int argc, char **argv);
