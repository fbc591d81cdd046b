/*
 * hostpolicy.h: which agent URLs the controller accepts (PUT /v1/hosts, the
 * inventory) and which it may send the agent token to: https, or http to a
 * loopback literal, or http elsewhere only with --allow-http-agents (and then
 * without the token); with --agent-allow patterns, only hosts that match.
 * Pure functions; no DNS (a name that resolves elsewhere tomorrow is checked
 * by the agent's certificate, which must name it: libcurl verifies the host).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

/* NAME (letters, digits, '.', '-', '_'), *.DOMAIN, an IPv4/IPv6 ADDRESS, ADDRESS/PREFIX. */
bool allow_pattern_valid(const char *pat);
/* Does host (luofleet/util.h url_host(): lower case, no brackets) match one of pats? */
bool host_allowed(char *const *pats, unsigned n, const char *host);

struct host_policy {
        bool allow_http;    /* --allow-http-agents */
        char *const *allow; /* --agent-allow patterns */
        unsigned n_allow;   /* 0: any host */
};

/* 0 when url may be an agent's; else -1 with why ("url": a sentence). */
int host_url_check(const struct host_policy *p, const char *url, char *why, size_t size);
