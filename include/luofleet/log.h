/*
 * log.h: the daemons' logging. Only programs log (main, the agent modules);
 * libraries return -errno and let the caller log once:
 *         return log_error_errno(r, "Failed to open %s: %m", path);
 * Lines go to stderr; under systemd (JOURNAL_STREAM set) they carry the
 * "<N>" priority prefix the journal understands. Thread-safe.
 */
#pragma once

#include <stdarg.h>

#include "luofleet/macro.h"

enum log_level {
        LOG_LEVEL_ERR = 3,
        LOG_LEVEL_WARNING = 4,
        LOG_LEVEL_NOTICE = 5,
        LOG_LEVEL_INFO = 6,
        LOG_LEVEL_DEBUG = 7,
};

void log_set_max_level(enum log_level l);
int log_level_from_string(const char *s);
enum log_level log_get_max_level(void);

/* Returns -abs(error) (or 0 when error is 0), so it can be returned directly. */
int log_internal(enum log_level level, int error, const char *file, int line, const char *fmt, ...)
        _printf_(5, 6);

#define log_full_errno(level, error, ...)                                                          \
        log_internal(level, error, __FILE__, __LINE__, __VA_ARGS__)
#define log_debug(...) log_full_errno(LOG_LEVEL_DEBUG, 0, __VA_ARGS__)
#define log_info(...) log_full_errno(LOG_LEVEL_INFO, 0, __VA_ARGS__)
#define log_notice(...) log_full_errno(LOG_LEVEL_NOTICE, 0, __VA_ARGS__)
#define log_warning(...) log_full_errno(LOG_LEVEL_WARNING, 0, __VA_ARGS__)
#define log_error(...) log_full_errno(LOG_LEVEL_ERR, 0, __VA_ARGS__)
#define log_warning_errno(e, ...) log_full_errno(LOG_LEVEL_WARNING, e, __VA_ARGS__)
#define log_error_errno(e, ...) log_full_errno(LOG_LEVEL_ERR, e, __VA_ARGS__)
#define log_debug_errno(e, ...) log_full_errno(LOG_LEVEL_DEBUG, e, __VA_ARGS__)
#define log_oom() log_full_errno(LOG_LEVEL_ERR, ENOMEM, "Out of memory")
