/*
 * broker.h: the workload session broker (broker/broker.c,
 * docs/design/session-broker.md): a decorator around a kernel backend that
 * serves workloads on a Unix socket (SOCK_SEQPACKET, session_proto.h),
 * preserves their files in kernel sessions owned by their uid, asks the
 * registered ones to confirm each prepare, carries its own document to the
 * next boot in the backend's marker, and tells the agent what changed
 * (backend ops set_event_ex, reboot_ex, sessions_json).
 *
 * It runs where the backend runs: in the privileged helper, or in the
 * agent's process with --privsep=no. Threads: broker_new()/free on the
 * caller's main thread; one thread of its own serves the socket; the ops
 * as backend.h says.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "luofleet/backend.h"

#define BROKER_DEFAULT_MAX_CLIENTS 64
#define BROKER_DEFAULT_MAX_SESSIONS_PER_OWNER 16
#define BROKER_DEFAULT_MAX_FDS_PER_OWNER 256
#define BROKER_DEFAULT_MAX_BYTES_PER_OWNER ((uint64_t)64 << 30)
#define BROKER_DEFAULT_CONFIRM_TIMEOUT_MS 30000u
#define BROKER_DEFAULT_REBOOT_TIMEOUT_MS 2000u
/* Change events kept for the agent (sessions_json's "events"). */
#define BROKER_EVENTS_MAX 1024

struct broker_config {
        /*
         * The workloads' socket: listen_fd when >= 0 (already bound and
         * listening; taken), else bind socket_path (a stale socket file is
         * replaced, anything else refused), else none (NULL: the broker
         * still wraps the backend; nobody can connect).
         */
        const char *socket_path;
        int listen_fd;
        /*
         * A default path, not one the operator chose: when it cannot be bound
         * (a state directory on a file system without sockets, such as 9p),
         * say so and go on without a workloads' socket instead of failing.
         */
        bool socket_optional;
        mode_t socket_mode; /* 0 = 0660 */
        gid_t socket_gid;   /* (gid_t)-1 = the creator's group */
        unsigned max_clients;
        unsigned max_sessions_per_owner;
        unsigned max_fds_per_owner;
        uint64_t max_bytes_per_owner;
        uint32_t confirm_timeout_ms; /* default for PREPARE when the caller gives 0 */
        /* the longest a reboot waits for registered workloads to answer LFS_EVENT_REBOOT */
        uint32_t reboot_timeout_ms;
        /*
         * The service manager's file-descriptor store (systemd: FDSTORE=1,
         * NotifyAccess=all, FileDescriptorStoreMax=): every session fd, every
         * preserved file and the broker's document go there too, named
         * BROKER_FDNAME_*, so a restart of the whole agent loses nothing.
         * restore: what the store gave back at this start (sd_listen_fds
         * with names; taken: the broker keeps what it recognises and closes
         * the rest).
         */
        bool fdstore;
        int *restore_fds;
        char **restore_names;
        size_t n_restore;
};

/* The fd store's names (FDNAME=): printable, no ':' (systemd's separator). */
#define BROKER_FDNAME_DOC "lf-doc"    /* a sealed memfd: the document */
#define BROKER_FDNAME_SESSION "lf-s-" /* lf-s-<uid>-<name>: a session fd */
#define BROKER_FDNAME_FILE "lf-f-"    /* lf-f-<uid>-<token>-<name>: a preserved file */

/* Defaults for every field (socket_path NULL, listen_fd -1). */
void broker_config_init(struct broker_config *c);

/*
 * Wrap inner (taken: freed with the broker, or on failure) in a broker and
 * start its thread. Reads the previous boot's document from the backend's
 * marker (its sessions become incoming). On failure -errno and a sentence
 * in msg.
 */
int broker_new(struct backend *inner, const struct broker_config *cfg, struct backend **ret,
               char *msg, size_t msg_size);

/* Is b a broker? */
bool broker_is(const struct backend *b);

/*
 * Does the broker hold anything a workload would lose if it ended: an
 * outgoing session with preserved files, or an incoming or retrieved
 * session not finished? (The privileged helper outlives its network
 * process then.) Any thread.
 */
bool broker_holds(const struct backend *b);

/*
 * Bind a Unix SOCK_SEQPACKET listener at path with mode and group, without
 * following a symlink there (a stale socket is replaced, anything else is
 * refused with -EEXIST). Returns the listening fd (O_CLOEXEC) or -errno.
 */
int broker_listen(const char *path, mode_t mode, gid_t gid);
