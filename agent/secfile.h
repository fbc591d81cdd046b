/*
 * secfile.h: how the agent opens its secret configuration files (the tokens
 * file, the TLS certificate, key and client CA bundle). At start-up the
 * process may still be root; after privilege separation the network-facing
 * process is not, and a SIGHUP reload asks the privileged helper to open the
 * files (only the configured paths) and pass the descriptors back. The
 * opener is set once by main before any thread reads it.
 */
#pragma once

/* Returns an O_RDONLY|O_CLOEXEC descriptor or -errno. */
typedef int (*secfile_open_fn)(const char *path, void *userdata);

/* NULL restores the default (open(2) in this process). */
void secfile_set_opener(secfile_open_fn fn, void *userdata);
int secfile_open(const char *path);
