/*
 * backend-private.h: helpers the kernel backends share (kernel/ only):
 * operator messages and display paths under the configured root.
 * Implemented in backend.c. Non-logging, no state, any thread.
 */
#pragma once

#include <stddef.h>

#include "luofleet/macro.h"

/* The root the backends resolve their paths under when cfg->root is NULL. */
#define BACKEND_ROOT_DEFAULT "/"

/* snprintf into msg when msg is non-NULL and msg_size > 0; truncation is fine. */
void backend_msgf(char *msg, size_t msg_size, const char *fmt, ...) _printf_(3, 4);

/*
 * "<root>/<rel>" for messages, without a doubled slash ("/sys/..." for the
 * default root). rel is relative ("sys/kernel/liveupdate/state"). Returns buf.
 */
const char *backend_display_path(const char *root, const char *rel, char *buf, size_t size);
