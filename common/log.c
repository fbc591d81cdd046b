/*
 * log.c: logging to stderr, with journal priority prefixes when stderr is
 * connected to the systemd journal. Any thread; one write(2) per line so
 * lines from different threads never interleave.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "luofleet/log.h"

static _Atomic int max_level = LOG_LEVEL_INFO;
static _Atomic int use_prefix = -1;

void log_set_max_level(enum log_level l)
{
        max_level = l;
}

enum log_level log_get_max_level(void)
{
        return max_level;
}

int log_level_from_string(const char *s)
{
        static const struct {
                const char *name;
                enum log_level level;
        } t[] = {
                { "error", LOG_LEVEL_ERR },     { "warning", LOG_LEVEL_WARNING },
                { "notice", LOG_LEVEL_NOTICE }, { "info", LOG_LEVEL_INFO },
                { "debug", LOG_LEVEL_DEBUG },
        };
        for (size_t i = 0; s && i < ELEMENTSOF(t); i++)
                if (strcmp(s, t[i].name) == 0)
                        return t[i].level;
        return -EINVAL;
}

int log_internal(enum log_level level, int error, const char *file, int line, const char *fmt, ...)
{
        int saved = errno;
        char buf[2048];
        int n = 0, k;
        va_list ap;

        if (error < 0)
                error = -error;
        if ((int)level > max_level)
                goto out;

        if (use_prefix < 0)
                use_prefix = getenv("JOURNAL_STREAM") ? 1 : 0;
        if (use_prefix)
                n = snprintf(buf, sizeof(buf), "<%d>", (int)level);
        else
                n = snprintf(buf, sizeof(buf), "%s",
                             level <= LOG_LEVEL_ERR       ? "error: "
                             : level == LOG_LEVEL_WARNING ? "warning: "
                             : level == LOG_LEVEL_DEBUG   ? "debug: "
                                                          : "");
        if (n < 0)
                n = 0;
        if (level == LOG_LEVEL_DEBUG) {
                k = snprintf(buf + n, sizeof(buf) - (size_t)n, "%s:%d: ", file, line);
                if (k > 0 && (size_t)k < sizeof(buf) - (size_t)n)
                        n += k;
        }
        errno = error; /* for %m */
        va_start(ap, fmt);
        k = vsnprintf(buf + n, sizeof(buf) - (size_t)n, fmt, ap);
        va_end(ap);
        if (k < 0)
                k = 0;
        if ((size_t)k >= sizeof(buf) - (size_t)n - 1)
                n = (int)sizeof(buf) - 2; /* truncated: keep what fits */
        else
                n += k;
        buf[n++] = '\n';
        (void)!write(STDERR_FILENO, buf, (size_t)n);
out:
        errno = saved;
        return error > 0 ? -error : 0;
}
