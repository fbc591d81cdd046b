/*
 * target.c: what a HOST argument means: a URL as given, "ADDR:PORT" (http on
 * loopback, https elsewhere: tokens never cross a network in clear text), or
 * a name the controller resolves (GET /v1/hosts/{name} -> "url").
 * Single-threaded.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#include "luofleet/macro.h"
#include "luofleet/util.h"

/* By the literal only (luofleet/util.h): 127.evil.example is not loopback. */
static bool is_loopback(const char *host, size_t n)
{
        char h[256];

        if (n >= 2 && host[0] == '[' && host[n - 1] == ']') {
                host++;
                n -= 2;
        }
        if (n == 0 || n >= sizeof(h))
                return false;
        memcpy(h, host, n);
        h[n] = 0;
        return host_is_loopback(h);
}

int target_parse(const char *arg, char **ret_url)
{
        const char *colon;
        uint64_t port;
        char *s;

        if (!arg || !*arg)
                return -EINVAL;
        if (strncmp(arg, "http://", 7) == 0 || strncmp(arg, "https://", 8) == 0) {
                if (!arg[strncmp(arg, "http://", 7) == 0 ? 7 : 8])
                        return -EINVAL;
                s = strdup(arg);
                if (!s)
                        return -ENOMEM;
                *ret_url = s;
                return 0;
        }
        if (strstr(arg, "://") || strchr(arg, '/') || strchr(arg, ' '))
                return -EINVAL;
        colon = strrchr(arg, ':');
        if (!colon) {
                /* a bare name: for the controller to resolve */
                for (const char *p = arg; *p; p++)
                        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                              (*p >= '0' && *p <= '9') || *p == '.' || *p == '-' || *p == '_'))
                                return -EINVAL;
                return -ENOENT;
        }
        if (colon == arg || parse_u64(colon + 1, 65535, &port) < 0 || port == 0)
                return -EINVAL;
        if (arg[0] != '[' && memchr(arg, ':', (size_t)(colon - arg)))
                return -EINVAL; /* a bare IPv6 address: needs [ ] */
        if (asprintf(&s, "%s://%s", is_loopback(arg, (size_t)(colon - arg)) ? "http" : "https",
                     arg) < 0)
                return -ENOMEM;
        *ret_url = s;
        return 0;
}

int target_resolve(const struct cli *cli, const char *arg, char **ret_url)
{
        _cleanup_free_ char *esc = NULL, *path = NULL, *url = NULL;
        struct http_resp resp;
        char err[512];
        json_t *doc;
        const char *u;
        int r = target_parse(arg, ret_url);

        if (r == 0)
                return EXIT_OK;
        if (r == -ENOMEM) {
                fputs("luofleetctl: out of memory\n", stderr);
                return EXIT_FAILED;
        }
        if (r == -EINVAL) {
                cli_usage_error(NULL,
                                "'%s' is not a host: expected http(s)://ADDR:PORT, ADDR:PORT "
                                "or a host name",
                                arg);
                return EXIT_USAGE;
        }
        if (!cli->controller) {
                cli_usage_error(NULL,
                                "'%s': a host name needs a controller to resolve it "
                                "(--controller, LUOFLEET_CONTROLLER); or give ADDR:PORT or a URL",
                                arg);
                return EXIT_USAGE;
        }
        esc = url_escape(arg);
        if (!esc || asprintf(&path, "/v1/hosts/%s", esc) < 0 ||
            !(url = url_join(cli->controller, path))) {
                fputs("luofleetctl: out of memory\n", stderr);
                return EXIT_FAILED;
        }
        r = http_request(cli, "GET", url, NULL, NULL, 0, &resp, err, sizeof(err));
        if (r < 0) {
                fprintf(stderr, "luofleetctl: controller %s: %s\n", cli->controller, err);
                return http_fail_exit(r);
        }
        if (resp.status != 200) {
                http_report_problem(arg, &resp);
                http_resp_clear(&resp);
                return EXIT_FAILED;
        }
        doc = http_json(arg, &resp);
        http_resp_clear(&resp);
        u = json_str(doc, "url");
        if (!u || target_parse(u, ret_url) != 0) {
                fprintf(stderr, "luofleetctl: %s: the controller gave no usable \"url\"\n", arg);
                json_decref(doc);
                return EXIT_FAILED;
        }
        json_decref(doc);
        return EXIT_OK;
}
