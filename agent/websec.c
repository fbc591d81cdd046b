/*
 * websec.c: the Host and Origin checks against browsers (see websec.h).
 * Any thread; no state.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "websec.h"

static bool name_char(char c)
{
        return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_';
}

/* ":PORT" after a host: digits only, at most 65535; empty is allowed (RFC 3986 3.2.3). */
static bool port_valid(const char *p)
{
        unsigned long v = 0;
        size_t n = 0;

        for (; *p; p++, n++) {
                if (!isdigit((unsigned char)*p) || n >= 5)
                        return false;
                v = v * 10 + (unsigned long)(*p - '0');
        }
        return v <= 65535;
}

/* The canonical text of an IPv6 address (lower case, shortest form); -EINVAL. */
static int v6_canonical(const char *s, char *out, size_t out_size, struct in6_addr *ret)
{
        struct in6_addr a;

        if (inet_pton(AF_INET6, s, &a) != 1 || !inet_ntop(AF_INET6, &a, out, (socklen_t)out_size))
                return -EINVAL;
        if (ret)
                *ret = a;
        return 0;
}

/*
 * "name[:port]" or "[v6][:port]": the host part in lower case, without
 * brackets or a trailing dot, into name; *ret_v6 tells an IPv6 literal.
 * A bare IPv6 address (no brackets) is not a valid authority: -EINVAL.
 */
static int split_authority(const char *s, char *name, size_t size, bool *ret_v6)
{
        const char *start = s, *port = NULL;
        size_t n;

        *ret_v6 = false;
        if (s[0] == '[') {
                const char *end = strchr(s, ']');
                if (!end)
                        return -EINVAL;
                start = s + 1;
                n = (size_t)(end - start);
                if (end[1] == ':')
                        port = end + 2;
                else if (end[1])
                        return -EINVAL;
                *ret_v6 = true;
        } else {
                const char *colon = strchr(s, ':');
                if (colon && strchr(colon + 1, ':'))
                        return -EINVAL;
                n = colon ? (size_t)(colon - s) : strlen(s);
                if (colon)
                        port = colon + 1;
        }
        if (n == 0 || n >= size || (port && !port_valid(port)))
                return -EINVAL;
        for (size_t i = 0; i < n; i++)
                name[i] = (char)tolower((unsigned char)start[i]);
        name[n] = 0;
        if (*ret_v6)
                return v6_canonical(name, name, size, NULL);
        for (size_t i = 0; i < n; i++)
                if (!name_char(name[i]))
                        return -EINVAL;
        if (n > 1 && name[n - 1] == '.') /* "localhost." is "localhost" */
                name[n - 1] = 0;
        return 0;
}

static bool listed(const char *name, const char *const *allowed, size_t n_allowed)
{
        for (size_t i = 0; i < n_allowed; i++)
                if (allowed[i] && strcmp(name, allowed[i]) == 0)
                        return true;
        return false;
}

bool websec_host_allowed(const char *host, const char *const *allowed, size_t n_allowed)
{
        char name[WEBSEC_NAME_MAX + 1];
        struct in6_addr a6;
        struct in_addr a4;
        bool v6;

        if (!host)
                return true; /* HTTP/1.0 without Host: not a browser */
        if (split_authority(host, name, sizeof(name), &v6) < 0)
                return false;
        if (v6) {
                if (inet_pton(AF_INET6, name, &a6) != 1)
                        return false;
                if (IN6_IS_ADDR_LOOPBACK(&a6) ||
                    (IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127))
                        return true;
        } else if (strcmp(name, "localhost") == 0) {
                return true;
        } else if (inet_pton(AF_INET, name, &a4) == 1) {
                if ((ntohl(a4.s_addr) >> 24) == 127)
                        return true;
        } else if (!strchr(name, '.')) {
                /*
                 * A name without a dot ("x", the host's own short name) is
                 * resolved from /etc/hosts or the local search domains only: no
                 * DNS server of an attacker's answers for it, so it cannot be
                 * rebound from a web page (a numeric one is an address, and
                 * browsers send addresses in dotted form).
                 */
                return true;
        }
        return listed(name, allowed, n_allowed);
}

bool websec_origin_allowed(const char *origin, const char *const *allowed, size_t n_allowed)
{
        if (!origin)
                return true;
        for (size_t i = 0; i < n_allowed; i++)
                if (allowed[i] && strcasecmp(origin, allowed[i]) == 0)
                        return true;
        return false;
}

int websec_parse_allowed_host(const char *v, char *out, size_t out_size)
{
        char name[WEBSEC_NAME_MAX + 1], buf[WEBSEC_NAME_MAX + 3];
        bool v6;
        int n;

        if (!v || !v[0] || strlen(v) > WEBSEC_NAME_MAX)
                return -EINVAL;
        /* A bare IPv6 address is accepted here: bracket it for split_authority(). */
        if (v[0] != '[' && strchr(v, ':'))
                n = snprintf(buf, sizeof(buf), "[%s]", v);
        else
                n = snprintf(buf, sizeof(buf), "%s", v);
        if (n < 0 || (size_t)n >= sizeof(buf))
                return -EINVAL;
        /* No port: the port is never compared. */
        if (buf[0] == '[' ? buf[n - 1] != ']' : strchr(buf, ':') != NULL)
                return -EINVAL;
        if (split_authority(buf, name, sizeof(name), &v6) < 0 || (!v6 && name[0] == '.'))
                return -EINVAL;
        n = snprintf(out, out_size, "%s", name);
        return n < 0 || (size_t)n >= out_size ? -EINVAL : 0;
}

int websec_parse_allowed_origin(const char *v, char *out, size_t out_size)
{
        char name[WEBSEC_NAME_MAX + 1], lower[WEBSEC_ORIGIN_MAX + 1];
        const char *auth, *port;
        size_t len = v ? strlen(v) : 0;
        bool v6, https;
        int n;

        if (len == 0 || len > WEBSEC_ORIGIN_MAX)
                return -EINVAL;
        for (size_t i = 0; i <= len; i++)
                lower[i] = (char)tolower((unsigned char)v[i]);
        https = strncmp(lower, "https://", 8) == 0;
        if (!https && strncmp(lower, "http://", 7) != 0)
                return -EINVAL;
        auth = lower + (https ? 8 : 7);
        if (split_authority(auth, name, sizeof(name), &v6) < 0 || (!v6 && name[0] == '.'))
                return -EINVAL;
        /* Browsers leave out the scheme's default port: so does the stored form. */
        port = auth[0] == '[' ? strchr(auth, ']') + 1 : strchr(auth, ':');
        if (port && *port == ':' && (!port[1] || strcmp(port + 1, https ? "443" : "80") == 0))
                port = NULL;
        n = snprintf(out, out_size, "%s%s%s%s%s", https ? "https://" : "http://", v6 ? "[" : "",
                     name, v6 ? "]" : "", port && *port ? port : "");
        return n < 0 || (size_t)n >= out_size ? -EINVAL : 0;
}
