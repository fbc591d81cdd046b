/*
 * hostpolicy.c: the agent URLs the controller accepts (hostpolicy.h).
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "hostpolicy.h"

#include "luofleet/util.h"

static bool name_ok(const char *s)
{
        if (!*s)
                return false;
        for (; *s; s++)
                if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
                      (*s >= '0' && *s <= '9') || *s == '.' || *s == '-' || *s == '_'))
                        return false;
        return true;
}

/* An address literal into buf (16 bytes); its family, or 0. */
static int parse_addr(const char *s, unsigned char buf[16])
{
        if (inet_pton(AF_INET, s, buf) == 1)
                return AF_INET;
        if (inet_pton(AF_INET6, s, buf) == 1)
                return AF_INET6;
        return 0;
}

/* "ADDRESS/PREFIX": family and prefix length, or 0. */
static int parse_cidr(const char *pat, unsigned char addr[16], unsigned *ret_bits)
{
        const char *slash = strchr(pat, '/');
        char a[64];
        char *end;
        long bits;
        int fam;

        if (!slash || (size_t)(slash - pat) >= sizeof(a))
                return 0;
        memcpy(a, pat, (size_t)(slash - pat));
        a[slash - pat] = 0;
        fam = parse_addr(a, addr);
        if (!fam || !slash[1])
                return 0;
        bits = strtol(slash + 1, &end, 10);
        if (*end || bits < 0 || bits > (fam == AF_INET ? 32 : 128))
                return 0;
        *ret_bits = (unsigned)bits;
        return fam;
}

bool allow_pattern_valid(const char *pat)
{
        unsigned char a[16];
        unsigned bits;

        if (!pat || !*pat || strlen(pat) > 253)
                return false;
        if (strchr(pat, '/'))
                return parse_cidr(pat, a, &bits) != 0;
        if (parse_addr(pat, a))
                return true;
        if (strncmp(pat, "*.", 2) == 0)
                return name_ok(pat + 2) && pat[2] != '.';
        return name_ok(pat);
}

static bool prefix_match(const unsigned char *x, const unsigned char *y, unsigned bits)
{
        unsigned whole = bits / 8, rest = bits % 8;

        if (memcmp(x, y, whole) != 0)
                return false;
        if (!rest)
                return true;
        unsigned char mask = (unsigned char)(0xff << (8 - rest));
        return (x[whole] & mask) == (y[whole] & mask);
}

bool host_allowed(char *const *pats, unsigned n, const char *host)
{
        unsigned char h[16], a[16];
        int hfam = parse_addr(host, h);

        if (n == 0)
                return true;
        for (unsigned i = 0; i < n; i++) {
                const char *p = pats[i];
                unsigned bits;
                int fam;

                if (strchr(p, '/')) {
                        fam = parse_cidr(p, a, &bits);
                        if (fam && fam == hfam && prefix_match(h, a, bits))
                                return true;
                } else if ((fam = parse_addr(p, a))) {
                        if (fam == hfam && memcmp(h, a, fam == AF_INET ? 4 : 16) == 0)
                                return true;
                } else if (strncmp(p, "*.", 2) == 0) {
                        size_t hl = strlen(host), sl = strlen(p + 1); /* ".domain" */
                        if (!hfam && hl > sl && strcasecmp(host + hl - sl, p + 1) == 0)
                                return true;
                } else if (!hfam && strcasecmp(host, p) == 0) {
                        return true;
                }
        }
        return false;
}

int host_url_check(const struct host_policy *p, const char *url, char *why, size_t size)
{
        char host[256];
        bool https = url && strncasecmp(url, "https://", 8) == 0;

        if (!url || strlen(url) >= 1024 || url_host(url, host, sizeof(host)) < 0) {
                snprintf(why, size,
                         "url must be an http:// or https:// URL of the agent, without user "
                         "information");
                return -1;
        }
        if (!https && !host_is_loopback(host) && !p->allow_http) {
                snprintf(why, size,
                         "url: http:// only to a loopback address (the agent token and every "
                         "command would cross the network in clear text); use https://, or "
                         "start the controller with --allow-http-agents");
                return -1;
        }
        if (!host_allowed(p->allow, p->n_allow, host)) {
                snprintf(why, size, "url: the host %s matches no --agent-allow pattern", host);
                return -1;
        }
        return 0;
}
