/*
 * config.c: luofleetctl's configuration: three layers (flags, environment,
 * config file) resolved in that order of precedence over the defaults, the
 * config file parser ("key = value" lines, '#' comments, unknown keys are
 * errors) and the bearer token file (refused when other users may read it).
 * Single-threaded; the layers own their strings, struct cli borrows them.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"

#include "luofleet/macro.h"
#include "luofleet/util.h"

#define CONFIG_MAX_BYTES (64 * 1024)
#define TOKEN_MAX_BYTES 4096
#define DEFAULT_TIMEOUT_MS 30000u

static const char *const cfg_keys[_CFG_MAX] = {
        [CFG_CONTROLLER] = "controller",
        [CFG_TOKEN_FILE] = "token-file",
        [CFG_CA_BUNDLE] = "ca-bundle",
        [CFG_CERT] = "cert",
        [CFG_KEY] = "key",
        [CFG_OUTPUT] = "output",
        [CFG_TIMEOUT] = "timeout",
};

/* The environment variable of each key (NULL: none). */
static const char *const cfg_env[_CFG_MAX] = {
        [CFG_CONTROLLER] = "LUOFLEET_CONTROLLER",
        [CFG_TOKEN_FILE] = "LUOFLEET_TOKEN_FILE",
        [CFG_CA_BUNDLE] = "LUOFLEET_CA_BUNDLE",
        [CFG_CERT] = "LUOFLEET_CERT",
        [CFG_KEY] = "LUOFLEET_KEY",
        [CFG_OUTPUT] = "LUOFLEET_OUTPUT",
        [CFG_TIMEOUT] = "LUOFLEET_TIMEOUT",
};

const char *cfg_key_to_string(enum cfg_key k)
{
        return k < _CFG_MAX ? cfg_keys[k] : NULL;
}

enum cfg_key cfg_key_from_string(const char *s)
{
        for (int k = 0; k < _CFG_MAX; k++)
                if (strcmp(cfg_keys[k], s) == 0)
                        return (enum cfg_key)k;
        return _CFG_MAX;
}

void config_layer_clear(struct cfg_layer *l)
{
        for (int k = 0; k < _CFG_MAX; k++) {
                free(l->v[k]);
                l->v[k] = NULL;
        }
        free(l->token);
        l->token = NULL;
}

void cli_free(struct cli *cli)
{
        config_layer_clear(&cli->flags);
        config_layer_clear(&cli->env);
        config_layer_clear(&cli->file);
        free(cli->config_path);
        cli->config_path = NULL;
        if (cli->token) {
                explicit_bzero(cli->token, strlen(cli->token));
                free(cli->token);
                cli->token = NULL;
        }
}

static char *trim(char *s)
{
        while (*s == ' ' || *s == '\t')
                s++;
        strip_trailing(s);
        return s;
}

int config_parse_text(const char *text, struct cfg_layer *layer, char *err, size_t err_size)
{
        _cleanup_free_ char *copy = strdup(text);
        char *line, *next;
        unsigned lineno = 0;

        if (!copy)
                return -ENOMEM;
        for (line = copy; line; line = next) {
                char *eq, *key, *value;
                enum cfg_key k;

                next = strchr(line, '\n');
                if (next)
                        *next++ = 0;
                lineno++;
                line = trim(line);
                if (*line == 0 || *line == '#')
                        continue;
                eq = strchr(line, '=');
                if (!eq) {
                        snprintf(err, err_size, "%u: expected \"key = value\"", lineno);
                        return -EINVAL;
                }
                *eq = 0;
                key = trim(line);
                value = trim(eq + 1);
                k = cfg_key_from_string(key);
                if (k == _CFG_MAX) {
                        snprintf(err, err_size,
                                 "%u: unknown key '%s' (known: controller, token-file, "
                                 "ca-bundle, cert, key, output, timeout)",
                                 lineno, key);
                        return -EINVAL;
                }
                if (*value == 0) {
                        snprintf(err, err_size, "%u: '%s' has no value", lineno, key);
                        return -EINVAL;
                }
                free(layer->v[k]);
                layer->v[k] = strdup(value);
                if (!layer->v[k])
                        return -ENOMEM;
        }
        return 0;
}

/* Read a whole small file; -ENOENT, -EFBIG, -errno. */
static int read_text(const char *path, size_t max, char **ret)
{
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        _cleanup_free_ char *buf = NULL;
        ssize_t n;

        if (fd < 0)
                return negative_errno();
        buf = malloc(max + 1);
        if (!buf)
                return -ENOMEM;
        n = read_full(fd, buf, max + 1);
        if (n < 0)
                return (int)n;
        if ((size_t)n > max)
                return -EFBIG;
        buf[n] = 0;
        if (memchr(buf, 0, (size_t)n))
                return -EINVAL;
        *ret = TAKE_PTR(buf);
        return 0;
}

int config_read_token_file(const char *path, char **ret, char *err, size_t err_size)
{
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        _cleanup_free_ char *buf = NULL;
        struct stat st;
        ssize_t n;
        char *nl;

        if (fd < 0) {
                snprintf(err, err_size, "token file %s: %s", path, strerror(errno));
                return -errno;
        }
        if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
                snprintf(err, err_size, "token file %s: not a regular file", path);
                return -EINVAL;
        }
        /* A bearer token is a password: refuse it when other users can read it, the way
         * ssh refuses a private key (a warning would be ignored and the token copied). */
        if (st.st_mode & S_IROTH) {
                snprintf(err, err_size,
                         "token file %s is readable by every user (mode %04o): refusing to "
                         "use it; run chmod o-rwx on it",
                         path, (unsigned)(st.st_mode & 07777));
                return -EPERM;
        }
        buf = malloc(TOKEN_MAX_BYTES + 1);
        if (!buf)
                return -ENOMEM;
        n = read_full(fd, buf, TOKEN_MAX_BYTES + 1);
        if (n < 0 || n > TOKEN_MAX_BYTES) {
                snprintf(err, err_size, "token file %s: %s", path,
                         n < 0 ? strerror((int)-n) : "too large");
                return n < 0 ? (int)n : -EFBIG;
        }
        buf[n] = 0;
        nl = strchr(buf, '\n');
        if (nl)
                *nl = 0;
        strip_trailing(buf);
        if (*buf == 0) {
                snprintf(err, err_size, "token file %s: the first line is empty", path);
                return -EINVAL;
        }
        *ret = TAKE_PTR(buf);
        return 0;
}

/* Which config file: --config, LUOFLEETCTL_CONFIG (both must exist), else the first
 * of the defaults that exists (none is fine). */
static int config_load_file(struct cli *cli)
{
        const char *explicit_path = cli->config_path ?: getenv("LUOFLEETCTL_CONFIG");
        char home_path[4096], err[256];
        const char *candidates[2] = { NULL, "/etc/luofleet/luofleetctl.conf" };
        _cleanup_free_ char *text = NULL;
        const char *path = NULL;
        int r, n = -1;

        if (explicit_path && *explicit_path) {
                path = explicit_path;
                r = read_text(path, CONFIG_MAX_BYTES, &text);
                if (r < 0) {
                        fprintf(stderr, "luofleetctl: config file %s: %s\n", path,
                                r == -EFBIG ? "too large" : strerror(-r));
                        return EXIT_USAGE;
                }
        } else {
                const char *xdg = getenv("XDG_CONFIG_HOME"), *home = getenv("HOME");
                if (xdg && *xdg == '/')
                        n = snprintf(home_path, sizeof(home_path), "%s/luofleet/luofleetctl.conf",
                                     xdg);
                else if (home && *home)
                        n = snprintf(home_path, sizeof(home_path),
                                     "%s/.config/luofleet/luofleetctl.conf", home);
                if (n > 0 && (size_t)n < sizeof(home_path))
                        candidates[0] = home_path;
                for (size_t i = 0; i < ELEMENTSOF(candidates) && !text; i++) {
                        if (!candidates[i])
                                continue;
                        r = read_text(candidates[i], CONFIG_MAX_BYTES, &text);
                        if (r == -ENOENT || r == -ENOTDIR)
                                continue;
                        path = candidates[i];
                        if (r < 0) {
                                fprintf(stderr, "luofleetctl: config file %s: %s\n", path,
                                        r == -EFBIG ? "too large" : strerror(-r));
                                return EXIT_USAGE;
                        }
                }
        }
        if (!text)
                return 0;
        r = config_parse_text(text, &cli->file, err, sizeof(err));
        if (r == -ENOMEM) {
                fputs("luofleetctl: out of memory\n", stderr);
                return EXIT_FAILED;
        }
        if (r < 0) {
                fprintf(stderr, "luofleetctl: %s:%s\n", path, err);
                return EXIT_USAGE;
        }
        return 0;
}

static int config_load_env(struct cli *cli)
{
        for (int k = 0; k < _CFG_MAX; k++) {
                const char *v = cfg_env[k] ? getenv(cfg_env[k]) : NULL;
                if (!v || !*v)
                        continue;
                cli->env.v[k] = strdup(v);
                if (!cli->env.v[k])
                        return -ENOMEM;
        }
        const char *t = getenv("LUOFLEET_TOKEN");
        if (t && *t) {
                cli->env.token = strdup(t);
                if (!cli->env.token)
                        return -ENOMEM;
        }
        return 0;
}

/* flags > environment > file; NULL when none sets it. Also says where from. */
static const char *pick(const struct cli *cli, enum cfg_key k, const char **ret_from)
{
        if (cli->flags.v[k]) {
                *ret_from = "flag";
                return cli->flags.v[k];
        }
        if (cli->env.v[k]) {
                *ret_from = cfg_env[k];
                return cli->env.v[k];
        }
        *ret_from = "config file";
        return cli->file.v[k];
}

int config_resolve(struct cli *cli)
{
        const char *from, *v;
        char err[512];
        int r;

        config_layer_clear(&cli->env);
        config_layer_clear(&cli->file);
        if (config_load_env(cli) < 0) {
                fputs("luofleetctl: out of memory\n", stderr);
                return EXIT_FAILED;
        }
        r = config_load_file(cli);
        if (r)
                return r;

        cli->controller = pick(cli, CFG_CONTROLLER, &from);
        if (cli->controller && strncmp(cli->controller, "http://", 7) != 0 &&
            strncmp(cli->controller, "https://", 8) != 0) {
                fprintf(stderr,
                        "luofleetctl: controller '%s' (%s): expected an http:// or https:// "
                        "URL\n",
                        cli->controller, from);
                return EXIT_USAGE;
        }
        cli->ca_bundle = pick(cli, CFG_CA_BUNDLE, &from);
        cli->cert = pick(cli, CFG_CERT, &from);
        cli->key = pick(cli, CFG_KEY, &from);
        if (!!cli->cert != !!cli->key) {
                fputs("luofleetctl: a client certificate needs its key and the other way "
                      "round (--cert and --key)\n",
                      stderr);
                return EXIT_USAGE;
        }

        v = pick(cli, CFG_OUTPUT, &from);
        if (!v || strcmp(v, "table") == 0)
                cli->output = OUTPUT_TABLE;
        else if (strcmp(v, "json") == 0)
                cli->output = OUTPUT_JSON;
        else {
                fprintf(stderr, "luofleetctl: output '%s' (%s): expected table or json\n", v, from);
                return EXIT_USAGE;
        }

        v = pick(cli, CFG_TIMEOUT, &from);
        cli->timeout_ms = DEFAULT_TIMEOUT_MS;
        if (v && (parse_duration_ms(v, 24 * 3600 * 1000ull, &cli->timeout_ms) < 0 ||
                  cli->timeout_ms == 0)) {
                fprintf(stderr,
                        "luofleetctl: timeout '%s' (%s): expected a duration like 500ms, 30s "
                        "or 2m\n",
                        v, from);
                return EXIT_USAGE;
        }

        /* Token: --token-file > LUOFLEET_TOKEN > LUOFLEET_TOKEN_FILE > token-file. */
        if (cli->token) {
                explicit_bzero(cli->token, strlen(cli->token));
                free(cli->token);
                cli->token = NULL;
        }
        v = cli->flags.v[CFG_TOKEN_FILE];
        if (!v && cli->env.token) {
                cli->token = strdup(cli->env.token);
                if (!cli->token) {
                        fputs("luofleetctl: out of memory\n", stderr);
                        return EXIT_FAILED;
                }
                return 0;
        }
        if (!v)
                v = pick(cli, CFG_TOKEN_FILE, &from);
        if (v) {
                r = config_read_token_file(v, &cli->token, err, sizeof(err));
                if (r < 0) {
                        fprintf(stderr, "luofleetctl: %s\n", err);
                        return EXIT_USAGE;
                }
        }
        return 0;
}
