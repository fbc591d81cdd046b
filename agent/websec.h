/*
 * websec.h: what keeps a web browser on the host from driving the agent
 * (docs/security.md, "Browsers"). Without credentials every local caller is
 * an operator, and a browser is a local caller that runs anybody's code:
 *
 *  - DNS rebinding: a page of evil.example whose name then resolves to
 *    127.0.0.1 talks to the agent as its own origin. Its requests carry
 *    Host: evil.example:8421, so a loopback listener accepts only Hosts that
 *    name the loopback (localhost, 127.0.0.0/8, [::1]), a name without a dot
 *    (resolved only locally: no outside DNS server answers for it) and the
 *    --allowed-host names.
 *  - Cross-site requests: a browser sends Origin with every request that is
 *    not a plain GET/HEAD navigation; the agent serves no page of its own, so
 *    an Origin is refused unless it is one of --allowed-origin.
 *  - Content-Type: every mutating request must say application/json (server.c
 *    uses body_media_type_is_json()), which a form or a no-cors fetch cannot
 *    send without a CORS preflight the agent never grants.
 *
 * Pure functions of a header value and the configuration; any thread.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

struct agent_config;

#define WEBSEC_NAME_MAX 253   /* an --allowed-host name */
#define WEBSEC_ORIGIN_MAX 300 /* an --allowed-origin */

/*
 * May a request with this Host header value be served on a loopback
 * listener? NULL (no Host: HTTP/1.0, no browser) is allowed. The port, when
 * present, must be a number; it is not compared (a proxy in front of the
 * agent has its own).
 */
bool websec_host_allowed(const char *host, const char *const *allowed, size_t n_allowed);

/* May a request with this Origin header value be served? NULL (none) is allowed. */
bool websec_origin_allowed(const char *origin, const char *const *allowed, size_t n_allowed);

/*
 * An --allowed-host value: a DNS name (letters, digits, '-', '.', '_'), an
 * IPv4 address or an IPv6 address (with or without brackets), without a
 * port. Writes the form the checks compare (lower case, no brackets, no
 * trailing dot) to out. 0 or -EINVAL.
 */
int websec_parse_allowed_host(const char *v, char *out, size_t out_size);

/*
 * An --allowed-origin value: http:// or https:// and a host with an optional
 * port, nothing after it (an origin, as browsers send it: no path, no
 * trailing slash). Writes it in lower case to out. 0 or -EINVAL.
 */
int websec_parse_allowed_origin(const char *v, char *out, size_t out_size);
