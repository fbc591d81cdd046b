/*
 * notify.c: sd_notify(3) for luofleet-agent (see notify.h). The main thread
 * sends READY=1, RELOADING=1 and STOPPING=1; the event-loop thread sends
 * WATCHDOG=1 (loop.c), so a wedged loop stops the keep-alives and the
 * service manager restarts the agent. libsystemd does the protocol
 * (NOTIFY_SOCKET parsing, abstract sockets, credentials); each call opens
 * and closes its own socket, so there is no state here but a flag that
 * keeps a failing watchdog from logging every interval.
 */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <systemd/sd-daemon.h>

#include "luofleet/log.h"
#include "luofleet/util.h"
#include "notify.h"

/* STATUS= is a one-line text for `systemctl status`: longer is cut. */
#define NOTIFY_STATUS_MAX 256

static atomic_bool watchdog_failed;

/* Format a one-line status: a newline would start another assignment. */
static void format_status(char buf[static NOTIFY_STATUS_MAX], const char *fmt, va_list ap)
        _printf_(2, 0);
static void format_status(char buf[static NOTIFY_STATUS_MAX], const char *fmt, va_list ap)
{
        int n = vsnprintf(buf, NOTIFY_STATUS_MAX, fmt, ap);

        if (n < 0)
                buf[0] = '\0';
        /* n >= NOTIFY_STATUS_MAX: truncated, which is fine for a status line. */
        for (char *p = buf; *p; p++)
                if (*p == '\n' || *p == '\r')
                        *p = ' ';
}

static int notify_send(const char *what, const char *msg)
{
        int r = sd_notify(0, msg);

        if (r < 0)
                log_warning_errno(r, "Failed to notify the service manager (%s): %m", what);
        return r;
}

int notify_ready(const char *fmt, ...)
{
        char status[NOTIFY_STATUS_MAX], msg[NOTIFY_STATUS_MAX + 32];
        va_list ap;
        int n;

        va_start(ap, fmt);
        format_status(status, fmt, ap);
        va_end(ap);
        n = snprintf(msg, sizeof(msg), "READY=1\nSTATUS=%s", status);
        if (n < 0 || (size_t)n >= sizeof(msg))
                return notify_send("ready", "READY=1");
        return notify_send("ready", msg);
}

int notify_reloading(void)
{
        char msg[96];
        int n;

        /* systemd >= 253 (Type=notify-reload) wants the CLOCK_MONOTONIC time
         * of the reload request; older ones ignore the field. */
        n = snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=Reloading",
                     (unsigned long long)now_mono_usec());
        if (n < 0 || (size_t)n >= sizeof(msg))
                return notify_send("reloading", "RELOADING=1");
        return notify_send("reloading", msg);
}

int notify_stopping(void)
{
        return notify_send("stopping", "STOPPING=1\nSTATUS=Stopping");
}

int notify_status(const char *fmt, ...)
{
        char status[NOTIFY_STATUS_MAX], msg[NOTIFY_STATUS_MAX + 16];
        va_list ap;
        int n;

        va_start(ap, fmt);
        format_status(status, fmt, ap);
        va_end(ap);
        n = snprintf(msg, sizeof(msg), "STATUS=%s", status);
        if (n < 0 || (size_t)n >= sizeof(msg))
                return 0;
        return notify_send("status", msg);
}

uint64_t notify_watchdog_usec(void)
{
        uint64_t usec = 0;

        /* > 0 only when WATCHDOG_USEC is set and WATCHDOG_PID, if set, is us. */
        if (sd_watchdog_enabled(0, &usec) <= 0)
                return 0;
        return usec;
}

int notify_watchdog(void)
{
        int r = sd_notify(0, "WATCHDOG=1");

        /* Log the first failure only: this runs every half interval. */
        if (r < 0 && !atomic_exchange(&watchdog_failed, true))
                log_warning_errno(r, "Failed to send the watchdog keep-alive: %m");
        else if (r > 0)
                atomic_store(&watchdog_failed, false);
        return r;
}
