/*
 * http_get.c: small helpers for bench/run (libc only).
 *
 *   http_get --port=P [--path=/v1/state] [--requests=N] [--host=127.0.0.1]
 *            [--header='Name: value']
 *       N sequential GETs on one keep-alive connection (a fixed, repeatable
 *       load, e.g. under callgrind); every answer must be 200. Prints
 *       "RESULT http_get requests=N seconds=S rps=R bytes=B".
 *   http_get --port=P --path=/v1/state --body
 *       one GET, the body (exactly the bytes received) on stdout.
 *   http_get --free-port
 *       a TCP port on 127.0.0.1 that was free a moment ago.
 */
#include "benchhttp.h"

static void usage(void)
{
        fprintf(stderr, "usage: http_get --port=P [--path=PATH] [--requests=N] [--host=IPv4] "
                        "[--header='N: V'] [--body] | --free-port\n");
        exit(2);
}

static int free_port(void)
{
        struct sockaddr_in sin = { .sin_family = AF_INET,
                                   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t l = sizeof(sin);
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

        if (fd < 0 || bind(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0 ||
            getsockname(fd, (struct sockaddr *)&sin, &l) < 0)
                die("cannot find a free port: %s", strerror(errno));
        printf("%u\n", ntohs(sin.sin_port));
        close(fd);
        return 0;
}

int main(int argc, char **argv)
{
        const char *host = "127.0.0.1", *path = "/v1/state", *header = NULL;
        unsigned long port = 0, requests = 1;
        bool body = false;
        struct bconn c;
        char req[512];
        uint64_t t0, bytes = 0;
        double sec;

        for (int i = 1; i < argc; i++) {
                if (parse_uint_arg(argv[i], "--port", &port) ||
                    parse_uint_arg(argv[i], "--requests", &requests))
                        continue;
                if (strncmp(argv[i], "--host=", 7) == 0)
                        host = argv[i] + 7;
                else if (strncmp(argv[i], "--path=", 7) == 0)
                        path = argv[i] + 7;
                else if (strncmp(argv[i], "--header=", 9) == 0)
                        header = argv[i] + 9;
                else if (strcmp(argv[i], "--body") == 0)
                        body = true;
                else if (strcmp(argv[i], "--free-port") == 0)
                        return free_port();
                else
                        usage();
        }
        if (!port || port > 65535 || !requests)
                usage();
        if (snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: %s:%lu\r\n%s%s\r\n", path, host,
                     port, header ? header : "", header ? "\r\n" : "") >= (int)sizeof(req))
                usage();
        bconn_open(&c, host, (unsigned)port);
        bconn_wait_connected(&c);
        t0 = now_ns();
        for (unsigned long i = 0; i < requests; i++) {
                bconn_request(&c, req, 60000);
                if (c.status != 200)
                        die("GET %s answered %d", path, c.status);
                bytes += c.len;
        }
        sec = (double)(now_ns() - t0) / 1e9;
        if (body) {
                if (fwrite(bconn_body(&c), 1, c.body_len, stdout) != c.body_len)
                        die("write: %s", strerror(errno));
        } else
                printf("RESULT http_get requests=%lu seconds=%.3f rps=%.0f bytes=%llu\n", requests,
                       sec, (double)requests / sec, (unsigned long long)bytes);
        bconn_close(&c);
        return 0;
}
