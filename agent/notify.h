/*
 * notify.h: the service manager's readiness and watchdog protocol
 * (sd_notify(3)), for luofleet-agent.service's Type=notify. Every function
 * is a no-op returning 0 when NOTIFY_SOCKET is unset (not under systemd);
 * > 0 means the message was sent. Failures are logged here, once, as
 * warnings: a service manager that cannot be told is no reason to stop.
 * Any thread (each message is one datagram on its own socket).
 */
#pragma once

#include <stdint.h>

#include "luofleet/macro.h"

/*
 * READY=1 with STATUS=<formatted text>: the agent listens and its backend
 * checks passed. Again after a reload, to end RELOADING=1.
 */
int notify_ready(const char *fmt, ...) _printf_(1, 2);
/* RELOADING=1 (with MONOTONIC_USEC=, as Type=notify-reload wants) at SIGHUP. */
int notify_reloading(void);
/* STOPPING=1: the orderly stop began. */
int notify_stopping(void);
/* STATUS=<formatted text> alone. */
int notify_status(const char *fmt, ...) _printf_(1, 2);

/*
 * The interval the service manager expects WATCHDOG=1 within (usec), 0
 * when there is no watchdog for this process (WATCHDOG_USEC unset, or
 * WATCHDOG_PID names another process).
 */
uint64_t notify_watchdog_usec(void);
/* WATCHDOG=1: one keep-alive (the event-loop thread, loop.c). */
int notify_watchdog(void);
