/*
 * broker.c: the workload session broker (broker.h,
 * docs/design/session-broker.md). A decorator backend: every member of the
 * kernel backend it wraps passes through, except
 *   - set_event/set_event_ex: PREPARE asks every registered workload to
 *     confirm first (nothing reaches the kernel otherwise), then writes the
 *     broker's document into the backend's marker; FINISH refuses while
 *     workload sessions are unfinished (or finishes them, forced); CANCEL
 *     and FINISH are told to the workloads;
 *   - reboot/reboot_ex: the document (with the operation's note) into the
 *     marker, LFS_EVENT_REBOOT to the workloads, then the kernel's reboot;
 *   - sessions_json: the broker's document and its change events;
 *   - watch_*: the kernel's notifications and the broker's changes on one
 *     descriptor (an epoll set), so whoever watches the backend (the
 *     helper's query thread, the agent's loop) hears of both.
 * The session, token and marker members are the broker's alone (NULL in
 * the ops it exposes).
 *
 * Sessions: on a backend with session_* members (luo-sessions, sim) each
 * workload session is a kernel session named "lf:<uid>:<name>"; on one with
 * token members (luo-v3) the broker keeps the sessions itself and gives
 * every file a kernel token of its own (the mapping travels in the marker).
 *
 * Threads: one broker thread serves the socket (accept, requests); the
 * helper's command thread calls set_event/reboot; any thread may call
 * sessions_json and the passthrough reads. Locks: op_lock serialises every
 * mutation of the session table and every kernel call that changes
 * something (held across the call); lock guards the data (sessions,
 * clients, the prepare round, the event ring) and is held briefly, never
 * across a kernel call. Order: op_lock, then lock. A prepare round waits on
 * cond with lock only, so workloads can still preserve while it waits.
 * Sends to a client happen under lock (events) or from the broker thread
 * (answers); only the broker thread closes a client, under lock.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <sys/mman.h>
#include <systemd/sd-daemon.h>

#include "luofleet/backend.h"
#include "luofleet/broker.h"
#include "luofleet/log.h"
#include "luofleet/macro.h"
#include "luofleet/session_proto.h"
#include "luofleet/util.h"

#define BROKER_DOC_VERSION 1
#define KNAME_PREFIX "lf:"
/* The v3 kernel tokens the broker hands out start here (the marker's is far above). */
#define KTOKEN_FIRST 0x1000u
/* Clients beyond max_clients are answered EUSERS at their HELLO; at most this many wait so. */
#define REFUSE_QUEUE 8
/* The longest list of names a sentence carries (a privsep reply holds 512 bytes). */
#define SENTENCE_MAX 400

enum round_state {
        ROUND_NONE,      /* not asked (not registered, or no round) */
        ROUND_PENDING,   /* asked, no answer yet */
        ROUND_CONFIRMED, /* confirmed */
        ROUND_VETOED,    /* vetoed, with a reason */
        ROUND_GONE,      /* disconnected or unreachable while asked */
};

struct bfile {
        uint64_t token;  /* the workload's */
        uint64_t ktoken; /* token mode: the kernel's */
        uint64_t bytes;
        int fd; /* outgoing: our duplicate of the preserved file, else -1 */
        bool retrieved;
};

struct bsession {
        char name[LFS_NAME_MAX + 1];
        char kname[LUO_SESSION_NAME_MAX];
        uid_t owner;
        char workload[LFS_WORKLOAD_MAX + 1];
        enum lfs_phase phase;
        int sfd; /* session mode: the kernel's session descriptor, -1 when not held */
        struct bfile *files;
        size_t n_files, cap_files;
};

struct bclient {
        int fd;
        uid_t uid;
        gid_t gid;
        pid_t pid;
        char name[LFS_WORKLOAD_MAX + 1];
        bool hello, registered, refuse;
        enum round_state round;
        char veto[LFS_TEXT_MAX + 1];
};

struct bevent {
        uint64_t seq, usec;
        const char *event;
        char session[LFS_NAME_MAX + 1];
        uid_t owner;
        char workload[LFS_WORKLOAD_MAX + 1];
        pid_t pid;
        bool has_token;
        uint64_t token, bytes;
        int result;
        char detail[160];
};

struct broker {
        struct backend base; /* first: a struct backend * is a struct broker * */
        struct backend_ops ops;
        struct backend *inner;
        struct broker_config cfg;
        bool session_mode;
        char id[37];       /* this broker instance's: the agent resumes draining by (id, seq) */
        bool doc_stored;   /* the fd store holds our document (fdstore_doc) */
        char *marker_last; /* the document last written into the marker (op_lock) */

        pthread_t thread;
        bool thread_started;
        int listen_fd, epoll_fd, stop_fd, change_fd, watch_fd;

        pthread_mutex_t op_lock;
        pthread_mutex_t lock;
        pthread_cond_t cond;

        struct bsession **sessions; /* under op_lock to change, lock to read */
        size_t n_sessions, cap_sessions;
        struct bclient **clients;
        size_t n_clients, cap_clients;
        uint64_t next_ktoken;

        struct bevent *ring; /* BROKER_EVENTS_MAX */
        uint64_t next_seq;   /* the next event's number (first: 1) */
        uint64_t drained;    /* the highest number sessions_json() was asked to go past */
        uint64_t dropped;    /* events overwritten before anyone drained them */

        uint64_t event_ids; /* LFS_EVENT ids */
        bool round_active;
        uint64_t round_id;
        json_t *round_gone; /* clients that went away while asked (descriptions) */
        json_t *last_round;

        char prev_note[BACKEND_NOTE_MAX]; /* the previous boot's document: its note */
        char prev_boot_id[40];
        bool from_update; /* this boot got a document from the previous one */
};

static const struct backend_ops broker_ops_template;

static struct broker *to_broker(struct backend *b)
{
        return (struct broker *)b;
}

bool broker_is(const struct backend *b)
{
        return b && b->ops && b->ops->free == broker_ops_template.free;
}

bool broker_holds(const struct backend *b)
{
        struct broker *k;
        bool holds = false;

        if (!broker_is(b))
                return false;
        k = to_broker((struct backend *)b);
        pthread_mutex_lock(&k->lock);
        for (size_t i = 0; i < k->n_sessions && !holds; i++) {
                const struct bsession *s = k->sessions[i];
                holds = (s->phase == LFS_PHASE_OUTGOING && s->n_files > 0) ||
                        s->phase == LFS_PHASE_INCOMING || s->phase == LFS_PHASE_RETRIEVED;
        }
        pthread_mutex_unlock(&k->lock);
        return holds;
}

void broker_config_init(struct broker_config *c)
{
        *c = (struct broker_config){
                .listen_fd = -1,
                .socket_mode = 0660,
                .socket_gid = (gid_t)-1,
                .max_clients = BROKER_DEFAULT_MAX_CLIENTS,
                .max_sessions_per_owner = BROKER_DEFAULT_MAX_SESSIONS_PER_OWNER,
                .max_fds_per_owner = BROKER_DEFAULT_MAX_FDS_PER_OWNER,
                .max_bytes_per_owner = BROKER_DEFAULT_MAX_BYTES_PER_OWNER,
                .confirm_timeout_ms = BROKER_DEFAULT_CONFIRM_TIMEOUT_MS,
                .reboot_timeout_ms = BROKER_DEFAULT_REBOOT_TIMEOUT_MS,
        };
}

/* ---- small helpers ----------------------------------------------------------------------- */

static void copy_str(char *dst, size_t size, const char *src)
{
        size_t n = src ? strnlen(src, size - 1) : 0;

        memcpy(dst, src ? src : "", n);
        dst[n] = 0;
}

/* Ring the doorbell: the agent drains the events (sessions_json). Any thread. */
static void broker_changed(struct broker *k)
{
        uint64_t one = 1;

        (void)!write(k->change_fd, &one, sizeof(one));
}

/* One change event (lock held). */
static struct bevent *event_add_locked(struct broker *k, const char *event)
{
        struct bevent *e;

        /* The oldest one goes; the agent sees the gap through events_dropped. */
        if (k->next_seq > BROKER_EVENTS_MAX && k->next_seq - BROKER_EVENTS_MAX > k->drained)
                k->dropped++;
        e = &k->ring[k->next_seq % BROKER_EVENTS_MAX];
        memset(e, 0, sizeof(*e));
        e->seq = k->next_seq++;
        e->usec = now_real_usec();
        e->event = event;
        e->owner = (uid_t)-1;
        return e;
}

static void event_fill(struct bevent *e, const struct bclient *c, const struct bsession *s)
{
        if (c) {
                e->owner = c->uid;
                e->pid = c->pid;
                copy_str(e->workload, sizeof(e->workload), c->name);
        }
        if (s) {
                copy_str(e->session, sizeof(e->session), s->name);
                e->owner = s->owner;
                if (!c)
                        copy_str(e->workload, sizeof(e->workload), s->workload);
        }
}

/* An event about client c and session s (either may be NULL); takes lock. */
static void event_emit(struct broker *k, const char *event, const struct bclient *c,
                       const struct bsession *s, const uint64_t *token, uint64_t bytes, int result,
                       const char *detail)
{
        struct bevent *e;

        pthread_mutex_lock(&k->lock);
        e = event_add_locked(k, event);
        event_fill(e, c, s);
        if (token) {
                e->has_token = true;
                e->token = *token;
        }
        e->bytes = bytes;
        e->result = result;
        copy_str(e->detail, sizeof(e->detail), detail);
        pthread_mutex_unlock(&k->lock);
        broker_changed(k);
}

static uint64_t session_bytes(const struct bsession *s)
{
        uint64_t n = 0;

        for (size_t i = 0; i < s->n_files; i++)
                n += s->files[i].bytes;
        return n;
}

static void session_free(struct broker *k, struct bsession *s)
{
        if (!s)
                return;
        for (size_t i = 0; i < s->n_files; i++)
                if (s->files[i].fd >= 0)
                        close(s->files[i].fd);
        if (s->sfd >= 0 && k->inner->ops->session_release)
                k->inner->ops->session_release(k->inner, s->sfd);
        free(s->files);
        free(s);
}

static struct bsession *session_find(struct broker *k, uid_t owner, const char *name)
{
        for (size_t i = 0; i < k->n_sessions; i++)
                if (k->sessions[i]->owner == owner && strcmp(k->sessions[i]->name, name) == 0)
                        return k->sessions[i];
        return NULL;
}

static struct bfile *file_find(struct bsession *s, uint64_t token)
{
        for (size_t i = 0; i < s->n_files; i++)
                if (s->files[i].token == token)
                        return &s->files[i];
        return NULL;
}

/* Insert or remove under lock (the caller holds op_lock). */
static int session_insert(struct broker *k, struct bsession *s)
{
        int r = 0;

        pthread_mutex_lock(&k->lock);
        if (k->n_sessions == k->cap_sessions) {
                size_t cap = k->cap_sessions ? 2 * k->cap_sessions : 16;
                struct bsession **n = realloc(k->sessions, cap * sizeof(*n));
                if (!n)
                        r = -ENOMEM;
                else {
                        k->sessions = n;
                        k->cap_sessions = cap;
                }
        }
        if (r == 0)
                k->sessions[k->n_sessions++] = s;
        pthread_mutex_unlock(&k->lock);
        return r;
}

static void session_remove(struct broker *k, struct bsession *s)
{
        pthread_mutex_lock(&k->lock);
        for (size_t i = 0; i < k->n_sessions; i++)
                if (k->sessions[i] == s) {
                        memmove(&k->sessions[i], &k->sessions[i + 1],
                                (k->n_sessions - i - 1) * sizeof(*k->sessions));
                        k->n_sessions--;
                        break;
                }
        pthread_mutex_unlock(&k->lock);
}

static int file_add(struct broker *k, struct bsession *s, const struct bfile *f)
{
        int r = 0;

        pthread_mutex_lock(&k->lock);
        if (s->n_files == s->cap_files) {
                size_t cap = s->cap_files ? 2 * s->cap_files : 4;
                struct bfile *n = realloc(s->files, cap * sizeof(*n));
                if (!n)
                        r = -ENOMEM;
                else {
                        s->files = n;
                        s->cap_files = cap;
                }
        }
        if (r == 0)
                s->files[s->n_files++] = *f;
        pthread_mutex_unlock(&k->lock);
        return r;
}

static void file_remove(struct broker *k, struct bsession *s, struct bfile *f)
{
        size_t i = (size_t)(f - s->files);

        pthread_mutex_lock(&k->lock);
        if (f->fd >= 0)
                close(f->fd);
        memmove(&s->files[i], &s->files[i + 1], (s->n_files - i - 1) * sizeof(*s->files));
        s->n_files--;
        pthread_mutex_unlock(&k->lock);
}

/* What one owner holds now (lock or op_lock held). */
static void owner_usage(struct broker *k, uid_t owner, unsigned *ret_sessions, unsigned *ret_fds,
                        uint64_t *ret_bytes)
{
        unsigned ns = 0, nf = 0;
        uint64_t nb = 0;

        for (size_t i = 0; i < k->n_sessions; i++) {
                struct bsession *s = k->sessions[i];
                if (s->owner != owner || s->phase == LFS_PHASE_FINISHED)
                        continue;
                ns++;
                nf += (unsigned)s->n_files;
                nb += session_bytes(s);
        }
        *ret_sessions = ns;
        *ret_fds = nf;
        *ret_bytes = nb;
}

static const char *sessions_interface(const struct broker *k)
{
        return k->session_mode ? "sessions" : "tokens";
}

/* ---- the document ------------------------------------------------------------------------ */

static json_t *session_json(const struct bsession *s, bool with_tokens)
{
        json_t *o = json_pack("{s:s, s:s, s:I, s:s, s:s, s:I, s:I}", "name", s->name, "kernel_name",
                              s->kname, "owner_uid", (json_int_t)s->owner, "workload", s->workload,
                              "phase", lfs_phase_to_string(s->phase), "fds", (json_int_t)s->n_files,
                              "bytes", (json_int_t)session_bytes(s));
        json_t *tokens;

        if (!o || !with_tokens)
                return o;
        tokens = json_array();
        for (size_t i = 0; tokens && i < s->n_files; i++)
                json_array_append_new(tokens,
                                      json_pack("{s:I, s:I, s:I, s:b}", "token",
                                                (json_int_t)s->files[i].token, "kernel_token",
                                                (json_int_t)s->files[i].ktoken, "bytes",
                                                (json_int_t)s->files[i].bytes, "retrieved",
                                                s->files[i].retrieved));
        json_object_set_new(o, "tokens", tokens ? tokens : json_null());
        return o;
}

/* The marker's document: the outgoing sessions (lock held). */
static json_t *marker_doc_locked(struct broker *k, const char *note)
{
        struct backend_info info = { 0 };
        json_t *doc, *arr = json_array();

        (void)k->inner->ops->get_info(k->inner, &info);
        for (size_t i = 0; arr && i < k->n_sessions; i++)
                if (k->sessions[i]->phase == LFS_PHASE_OUTGOING && k->sessions[i]->n_files > 0)
                        json_array_append_new(arr, session_json(k->sessions[i], true));
        doc = json_pack("{s:i, s:s, s:s, s:s, s:I, s:o}", "version", BROKER_DOC_VERSION,
                        "interface", sessions_interface(k), "note", note ? note : "", "boot_id",
                        info.boot_id, "next_kernel_token", (json_int_t)k->next_ktoken, "sessions",
                        arr ? arr : json_array());
        return doc;
}

static int marker_write_doc(struct broker *k, const char *note)
{
        char *text;
        json_t *doc;
        int r;

        if (!k->inner->ops->marker_write)
                return 0; /* a backend without a marker: nothing to carry */
        pthread_mutex_lock(&k->lock);
        doc = marker_doc_locked(k, note);
        pthread_mutex_unlock(&k->lock);
        if (!doc)
                return -ENOMEM;
        if (k->inner->ops->describe) {
                /* What the kernel offers, as learnt so far (GET_NAME: from a session fd). */
                char what[256];
                if (k->inner->ops->describe(k->inner, what, sizeof(what)) >= 0)
                        json_object_set_new(doc, "kernel_interface", json_string(what));
        }
        text = json_dumps(doc, JSON_COMPACT);
        json_decref(doc);
        if (!text)
                return -ENOMEM;
        /* The same document again (a reboot's second write, nothing changed): once is enough. */
        if (k->marker_last && strcmp(k->marker_last, text) == 0) {
                free(text);
                return 0;
        }
        r = k->inner->ops->marker_write(k->inner, text, strlen(text));
        free(k->marker_last);
        k->marker_last = r >= 0 ? text : NULL;
        if (r < 0)
                free(text);
        return r;
}

/* The previous boot's document: its sessions become incoming ones. */
static void marker_load(struct broker *k)
{
        _cleanup_free_ void *blob = NULL;
        json_error_t jerr;
        json_t *doc, *arr, *s;
        size_t len = 0, i;
        int r;

        if (!k->inner->ops->marker_read)
                return;
        r = k->inner->ops->marker_read(k->inner, &blob, &len);
        if (r < 0) {
                if (r != -ENOENT)
                        log_warning_errno(r, "Session broker: cannot read the marker: %m");
                return;
        }
        k->from_update = true;
        doc = json_loadb(blob, len, JSON_REJECT_DUPLICATES, &jerr);
        if (!doc || json_integer_value(json_object_get(doc, "version")) != BROKER_DOC_VERSION) {
                log_warning("Session broker: the previous boot's marker is not a document of "
                            "ours (%s): its sessions are retrievable by name only",
                            doc ? "unknown version" : jerr.text);
                json_decref(doc);
                return;
        }
        copy_str(k->prev_note, sizeof(k->prev_note),
                 json_string_value(json_object_get(doc, "note")));
        copy_str(k->prev_boot_id, sizeof(k->prev_boot_id),
                 json_string_value(json_object_get(doc, "boot_id")));
        if (json_integer_value(json_object_get(doc, "next_kernel_token")) > 0)
                k->next_ktoken =
                        (uint64_t)json_integer_value(json_object_get(doc, "next_kernel_token"));
        arr = json_object_get(doc, "sessions");
        json_array_foreach (arr, i, s) {
                const char *name = json_string_value(json_object_get(s, "name"));
                const char *kname = json_string_value(json_object_get(s, "kernel_name"));
                const char *wl = json_string_value(json_object_get(s, "workload"));
                json_int_t owner = json_integer_value(json_object_get(s, "owner_uid"));
                struct bsession *n;
                json_t *t;
                size_t j;

                if (!name || !kname || !lfs_name_valid(name, LFS_NAME_MAX) ||
                    strlen(kname) >= LUO_SESSION_NAME_MAX || owner < 0 ||
                    owner > (json_int_t)UINT32_MAX - 1)
                        continue;
                /* Known already: restored from the fd store (a restart within this boot). */
                if (session_find(k, (uid_t)owner, name))
                        continue;
                n = calloc(1, sizeof(*n));
                if (!n)
                        break;
                copy_str(n->name, sizeof(n->name), name);
                copy_str(n->kname, sizeof(n->kname), kname);
                copy_str(n->workload, sizeof(n->workload), wl);
                n->owner = (uid_t)owner;
                n->phase = LFS_PHASE_INCOMING;
                n->sfd = -1;
                json_array_foreach (json_object_get(s, "tokens"), j, t) {
                        struct bfile f = {
                                .token = (uint64_t)json_integer_value(json_object_get(t, "token")),
                                .ktoken = (uint64_t)json_integer_value(
                                        json_object_get(t, "kernel_token")),
                                .bytes = (uint64_t)json_integer_value(json_object_get(t, "bytes")),
                                .fd = -1,
                        };
                        if (file_add(k, n, &f) < 0)
                                break;
                }
                if (session_insert(k, n) < 0) {
                        session_free(k, n);
                        break;
                }
                event_emit(k, "incoming", NULL, n, NULL, session_bytes(n), 0, k->prev_note);
        }
        json_decref(doc);
}

/* ---- the service manager's fd store ------------------------------------------------------ */

static void fdname_session(const struct bsession *s, char *buf, size_t size)
{
        snprintf(buf, size, BROKER_FDNAME_SESSION "%u-%s", (unsigned)s->owner, s->name);
}

static void fdname_file(const struct bsession *s, uint64_t token, char *buf, size_t size)
{
        snprintf(buf, size, BROKER_FDNAME_FILE "%u-%llu-%s", (unsigned)s->owner,
                 (unsigned long long)token, s->name);
}

static void fdstore_put(struct broker *k, const char *name, int fd)
{
        char msg[320];
        int r;

        if (!k->cfg.fdstore || fd < 0)
                return;
        snprintf(msg, sizeof(msg), "FDSTORE=1\nFDNAME=%s", name);
        r = sd_pid_notify_with_fds(0, 0, msg, &fd, 1);
        if (r < 0)
                log_warning_errno(r, "Session broker: cannot keep %s in the fd store: %m", name);
}

static void fdstore_remove(struct broker *k, const char *name)
{
        char msg[320];

        if (!k->cfg.fdstore)
                return;
        snprintf(msg, sizeof(msg), "FDSTOREREMOVE=1\nFDNAME=%s", name);
        (void)sd_pid_notify(0, 0, msg);
}

/*
 * Wait until the service manager has acted on what we sent (FDSTOREREMOVE is
 * asynchronous): its duplicate of a session fd keeps the kernel's session
 * alive, and a session of the same name cannot be created before it is gone.
 */
static void fdstore_barrier(struct broker *k)
{
        int r;

        if (!k->cfg.fdstore)
                return;
        r = sd_notify_barrier(0, 5 * 1000 * 1000);
        if (r < 0)
                log_warning_errno(r, "Session broker: the fd store did not confirm a removal: %m");
}

/* A session's fds in (or out of) the store: the session's own and each file's duplicate. */
static void fdstore_session(struct broker *k, const struct bsession *s, bool put)
{
        char name[160];

        if (!k->cfg.fdstore)
                return;
        fdname_session(s, name, sizeof(name));
        fdstore_remove(k, name);
        if (put)
                fdstore_put(k, name, s->sfd);
        for (size_t i = 0; i < s->n_files; i++) {
                fdname_file(s, s->files[i].token, name, sizeof(name));
                fdstore_remove(k, name);
                if (put)
                        fdstore_put(k, name, s->files[i].fd);
        }
        if (!put)
                fdstore_barrier(k); /* the session is really closed when this returns */
}

/* The document (every session, its phase and tokens) into the store, replacing the last. */
static void fdstore_doc(struct broker *k)
{
        _cleanup_free_ char *text = NULL;
        _cleanup_close_ int fd = -1;
        json_t *doc, *arr;

        if (!k->cfg.fdstore)
                return;
        pthread_mutex_lock(&k->lock);
        if (k->n_sessions == 0) {
                /* Nothing to keep: no message at all for an agent without workloads. */
                bool stored = k->doc_stored;
                k->doc_stored = false;
                pthread_mutex_unlock(&k->lock);
                if (stored)
                        fdstore_remove(k, BROKER_FDNAME_DOC);
                return;
        }
        pthread_mutex_unlock(&k->lock);
        arr = json_array();
        pthread_mutex_lock(&k->lock);
        for (size_t i = 0; arr && i < k->n_sessions; i++)
                json_array_append_new(arr, session_json(k->sessions[i], true));
        doc = json_pack("{s:i, s:I, s:o}", "version", BROKER_DOC_VERSION, "next_kernel_token",
                        (json_int_t)k->next_ktoken, "sessions", arr ? arr : json_array());
        pthread_mutex_unlock(&k->lock);
        text = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
        json_decref(doc);
        if (!text)
                return;
        fd = memfd_create("luofleet-broker-doc", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd < 0 || write_all(fd, text, strlen(text)) < 0 ||
            fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0)
                return;
        fdstore_remove(k, BROKER_FDNAME_DOC);
        fdstore_put(k, BROKER_FDNAME_DOC, fd);
        pthread_mutex_lock(&k->lock);
        k->doc_stored = true;
        pthread_mutex_unlock(&k->lock);
}

/* The descriptor the store gave back under name (taken), or -1. */
static int restore_take(struct broker *k, const char *name)
{
        for (size_t i = 0; i < k->cfg.n_restore; i++)
                if (k->cfg.restore_fds[i] >= 0 && k->cfg.restore_names[i] &&
                    strcmp(k->cfg.restore_names[i], name) == 0) {
                        int fd = k->cfg.restore_fds[i];
                        k->cfg.restore_fds[i] = -1;
                        return fd;
                }
        return -1;
}

static enum lfs_phase phase_from_string(const char *s)
{
        for (int p = LFS_PHASE_OUTGOING; s && p < _LFS_PHASE_MAX; p++)
                if (strcmp(lfs_phase_to_string((enum lfs_phase)p), s) == 0)
                        return (enum lfs_phase)p;
        return 0;
}

/*
 * A restart under a service manager: the sessions of the document the store
 * kept, with their session fds and files (which the store kept alive, so the
 * kernel kept them preserved). What is not recognised is closed.
 */
static void fdstore_restore(struct broker *k)
{
        _cleanup_close_ int dfd = restore_take(k, BROKER_FDNAME_DOC);
        _cleanup_free_ char *text = NULL;
        struct stat st;
        json_t *doc = NULL, *s;
        size_t i, restored = 0;

        if (dfd >= 0 && fstat(dfd, &st) == 0 && st.st_size > 0 && st.st_size < (16 << 20)) {
                text = malloc((size_t)st.st_size + 1);
                if (text && pread(dfd, text, (size_t)st.st_size, 0) == st.st_size) {
                        text[st.st_size] = 0;
                        doc = json_loads(text, JSON_REJECT_DUPLICATES, NULL);
                }
        }
        if (json_integer_value(json_object_get(doc, "next_kernel_token")) > 0)
                k->next_ktoken =
                        (uint64_t)json_integer_value(json_object_get(doc, "next_kernel_token"));
        json_array_foreach (json_object_get(doc, "sessions"), i, s) {
                const char *name = json_string_value(json_object_get(s, "name"));
                const char *kname = json_string_value(json_object_get(s, "kernel_name"));
                json_int_t owner = json_integer_value(json_object_get(s, "owner_uid"));
                enum lfs_phase ph =
                        phase_from_string(json_string_value(json_object_get(s, "phase")));
                struct bsession *n;
                char fdname[160];
                json_t *t;
                size_t j;

                if (!name || !kname || !lfs_name_valid(name, LFS_NAME_MAX) || !ph ||
                    ph == LFS_PHASE_FINISHED || strlen(kname) >= LUO_SESSION_NAME_MAX ||
                    owner < 0 || owner > (json_int_t)UINT32_MAX - 1)
                        continue;
                n = calloc(1, sizeof(*n));
                if (!n)
                        break;
                copy_str(n->name, sizeof(n->name), name);
                copy_str(n->kname, sizeof(n->kname), kname);
                copy_str(n->workload, sizeof(n->workload),
                         json_string_value(json_object_get(s, "workload")));
                n->owner = (uid_t)owner;
                n->phase = ph;
                fdname_session(n, fdname, sizeof(fdname));
                n->sfd = restore_take(k, fdname);
                /* An outgoing session whose fd the store lost lost its files with it. */
                if (k->session_mode && ph == LFS_PHASE_OUTGOING && n->sfd < 0) {
                        free(n);
                        continue;
                }
                json_array_foreach (json_object_get(s, "tokens"), j, t) {
                        struct bfile f = {
                                .token = (uint64_t)json_integer_value(json_object_get(t, "token")),
                                .ktoken = (uint64_t)json_integer_value(
                                        json_object_get(t, "kernel_token")),
                                .bytes = (uint64_t)json_integer_value(json_object_get(t, "bytes")),
                                .retrieved = json_is_true(json_object_get(t, "retrieved")),
                        };
                        fdname_file(n, f.token, fdname, sizeof(fdname));
                        f.fd = restore_take(k, fdname);
                        if (file_add(k, n, &f) < 0 && f.fd >= 0)
                                close(f.fd);
                }
                if (session_insert(k, n) < 0) {
                        session_free(k, n);
                        break;
                }
                restored++;
                event_emit(k, "restored", NULL, n, NULL, session_bytes(n), 0,
                           "from the service manager's fd store");
        }
        json_decref(doc);
        for (i = 0; i < k->cfg.n_restore; i++)
                if (k->cfg.restore_fds[i] >= 0) {
                        close(k->cfg.restore_fds[i]);
                        k->cfg.restore_fds[i] = -1;
                }
        if (restored)
                log_notice("Session broker: %zu session%s restored from the fd store", restored,
                           restored == 1 ? "" : "s");
}

/* ---- talking to clients ------------------------------------------------------------------ */

/* An LFS_EVENT to one client (lock held). False when it could not be sent. */
static bool client_event_locked(struct broker *k, struct bclient *c, enum lfs_event_kind kind,
                                uint64_t id, uint64_t deadline_ms, const char *note)
{
        struct lfs_msg m;

        lfs_msg_init(&m, LFS_EVENT, 0);
        m.arg = id;
        m.token = (uint64_t)kind;
        m.arg2 = deadline_ms;
        if (note)
                (void)lfs_msg_set_str(m.text, sizeof(m.text), note);
        return lfs_send(c->fd, &m, -1, true) == 0;
}

/* An event of this kind to every registered client (takes lock). */
static void tell_registered(struct broker *k, enum lfs_event_kind kind, const char *note)
{
        pthread_mutex_lock(&k->lock);
        uint64_t id = ++k->event_ids;
        for (size_t i = 0; i < k->n_clients; i++)
                if (k->clients[i]->registered)
                        (void)client_event_locked(k, k->clients[i], kind, id, 0, note);
        pthread_mutex_unlock(&k->lock);
}

static int client_answer(struct bclient *c, const struct lfs_msg *q, int result, uint64_t arg,
                         const char *text, int fd)
{
        struct lfs_msg m;

        lfs_msg_init(&m, (enum lfs_type)q->type, q->seq);
        m.result = result;
        if (result >= 0)
                m.arg = arg;
        if (text)
                (void)lfs_msg_set_str(m.text, sizeof(m.text), text);
        return lfs_send(c->fd, &m, result >= 0 ? fd : -1, true);
}

static int client_entry(struct bclient *c, const struct lfs_msg *q, enum lfs_type type,
                        const char *session, uint64_t token, uint64_t arg, uint64_t arg2)
{
        struct lfs_msg m;

        lfs_msg_init(&m, type, q->seq);
        if (session)
                (void)lfs_msg_set_str(m.session, sizeof(m.session), session);
        m.token = token;
        m.arg = arg;
        m.arg2 = arg2;
        return lfs_send(c->fd, &m, -1, true);
}

/* "vm-42 (uid 1000, pid 4242)" */
static void client_describe(const struct bclient *c, char *buf, size_t size)
{
        snprintf(buf, size, "%s (uid %u, pid %d)", c->name, (unsigned)c->uid, (int)c->pid);
}

/* ---- requests ---------------------------------------------------------------------------- */

/* A refusal, as an answer with the errno and a sentence, and an event. */
static void refuse(struct broker *k, struct bclient *c, const struct lfs_msg *q, struct bsession *s,
                   int r, const char *fmt, ...) _printf_(6, 7);
static void refuse(struct broker *k, struct bclient *c, const struct lfs_msg *q, struct bsession *s,
                   int r, const char *fmt, ...)
{
        char text[LFS_TEXT_MAX + 1];
        va_list ap;
        int n;

        va_start(ap, fmt);
        n = vsnprintf(text, sizeof(text), fmt, ap);
        va_end(ap);
        if (n < 0)
                text[0] = 0;
        /* Only printable ASCII travels (lfs_text_valid). */
        for (char *p = text; *p; p++)
                if (*p < 0x20 || *p > 0x7e)
                        *p = '?';
        (void)client_answer(c, q, r, 0, text, -1);
        event_emit(k, "refused", c, s,
                   q->type == LFS_PRESERVE || q->type == LFS_UNPRESERVE ||
                                   q->type == LFS_RETRIEVE_FD
                           ? &q->token
                           : NULL,
                   0, r, text);
}

static const char *kernel_said(int r, char eb[static 16])
{
        return errno_name(r, eb);
}

/* False when the client is to be dropped (refused for the number of clients). */
static bool do_hello(struct broker *k, struct bclient *c, const struct lfs_msg *q)
{
        enum luo_state st = LUO_STATE_UNDEFINED;
        struct lfs_msg m;

        if (c->hello) {
                refuse(k, c, q, NULL, -EINVAL, "HELLO was said already");
                return true;
        }
        if (c->refuse) {
                (void)client_answer(c, q, -EUSERS, 0,
                                    "too many workloads are connected to the session broker", -1);
                return false;
        }
        if (!lfs_name_valid(q->text, LFS_WORKLOAD_MAX) ||
            (q->arg & ~(uint64_t)LFS_HELLO_REGISTER)) {
                (void)client_answer(c, q, -EINVAL, 0,
                                    "HELLO needs a workload name of 1 to 63 characters "
                                    "[A-Za-z0-9._-] and known flags",
                                    -1);
                return true;
        }
        (void)k->inner->ops->get_state(k->inner, &st);
        pthread_mutex_lock(&k->lock);
        copy_str(c->name, sizeof(c->name), q->text);
        c->hello = true;
        c->registered = q->arg & LFS_HELLO_REGISTER;
        lfs_msg_init(&m, LFS_HELLO, q->seq);
        m.arg = (uint64_t)st;
        m.token = (uint64_t)c->uid;
        (void)lfs_send(c->fd, &m, -1, true);
        /* After a live update a registered workload hears it first thing. */
        if (c->registered && st == LUO_STATE_UPDATED)
                (void)client_event_locked(k, c, LFS_EVENT_UPDATED, ++k->event_ids, 0, k->prev_note);
        pthread_mutex_unlock(&k->lock);
        event_emit(k, "connected", c, NULL, NULL, 0, 0, c->registered ? "registered" : NULL);
        return true;
}

/* The caller's session by name, or a refusal already sent (NULL). */
static struct bsession *own_session(struct broker *k, struct bclient *c, const struct lfs_msg *q)
{
        struct bsession *s = session_find(k, c->uid, q->session);

        /* Another owner's session and no session at all look the same: ENOENT. */
        if (!s)
                refuse(k, c, q, NULL, -ENOENT, "no session %s of uid %u", q->session,
                       (unsigned)c->uid);
        return s;
}

static void kname_of(uid_t uid, const char *name, char buf[static LUO_SESSION_NAME_MAX])
{
        /* "lf:" + at most 10 digits + ":" + at most 48 bytes: at most 62, fits. */
        snprintf(buf, LUO_SESSION_NAME_MAX, KNAME_PREFIX "%u:%.48s", (unsigned)uid, name);
}

static void do_create(struct broker *k, struct bclient *c, const struct lfs_msg *q)
{
        struct bsession *s;
        unsigned ns, nf;
        uint64_t nb;
        char eb[16];
        int r;

        s = session_find(k, c->uid, q->session);
        if (s) {
                refuse(k, c, q, s, -EEXIST, "session %s exists (%s)", q->session,
                       lfs_phase_to_string(s->phase));
                return;
        }
        owner_usage(k, c->uid, &ns, &nf, &nb);
        if (ns >= k->cfg.max_sessions_per_owner) {
                refuse(k, c, q, NULL, -EDQUOT, "uid %u has %u sessions, the limit is %u",
                       (unsigned)c->uid, ns, k->cfg.max_sessions_per_owner);
                return;
        }
        s = calloc(1, sizeof(*s));
        if (!s) {
                refuse(k, c, q, NULL, -ENOMEM, "out of memory");
                return;
        }
        copy_str(s->name, sizeof(s->name), q->session);
        kname_of(c->uid, q->session, s->kname);
        copy_str(s->workload, sizeof(s->workload), c->name);
        s->owner = c->uid;
        s->phase = LFS_PHASE_OUTGOING;
        s->sfd = -1;
        if (k->session_mode) {
                r = k->inner->ops->session_create(k->inner, s->kname, &s->sfd);
                if (r < 0) {
                        refuse(k, c, q, s, r, "the kernel refused CREATE_SESSION %s: %s", s->kname,
                               kernel_said(r, eb));
                        free(s);
                        return;
                }
        }
        r = session_insert(k, s);
        if (r < 0) {
                refuse(k, c, q, s, r, "out of memory");
                session_free(k, s);
                return;
        }
        {
                char fdname[160];
                fdname_session(s, fdname, sizeof(fdname));
                fdstore_put(k, fdname, s->sfd);
                fdstore_doc(k);
        }
        (void)client_answer(c, q, 0, 0, NULL, -1);
        event_emit(k, "created", c, s, NULL, 0, 0, NULL);
}

/* Preserve one file in session s, kernel side (op_lock held). */
static int kernel_preserve(struct broker *k, struct bsession *s, int fd, uint64_t token,
                           uint64_t *ret_ktoken)
{
        if (k->session_mode) {
                *ret_ktoken = token;
                return k->inner->ops->session_preserve(k->inner, s->sfd, fd, token);
        }
        /* Token mode: the kernel's token space is global; ours is per session. */
        for (int tries = 0; tries < 16; tries++) {
                uint64_t kt = k->next_ktoken++;
                int r;
                if (kt == BACKEND_MARKER_TOKEN)
                        continue;
                r = k->inner->ops->fd_preserve(k->inner, fd, kt);
                if (r != -EEXIST) {
                        *ret_ktoken = kt;
                        return r;
                }
        }
        return -EEXIST;
}

static void do_preserve(struct broker *k, struct bclient *c, const struct lfs_msg *q, int fd)
{
        struct bsession *s = own_session(k, c, q);
        struct bfile f = { .token = q->token, .fd = -1 };
        unsigned ns, nf;
        uint64_t nb;
        struct stat st;
        char eb[16];
        int r;

        if (!s)
                return;
        if (s->phase != LFS_PHASE_OUTGOING) {
                refuse(k, c, q, s, -EINVAL,
                       "session %s is %s: only an outgoing session takes "
                       "files",
                       s->name, lfs_phase_to_string(s->phase));
                return;
        }
        if (file_find(s, q->token)) {
                refuse(k, c, q, s, -EEXIST, "token %llu is in use in session %s",
                       (unsigned long long)q->token, s->name);
                return;
        }
        if (fstat(fd, &st) < 0) {
                r = negative_errno();
                refuse(k, c, q, s, r, "cannot stat the file: %s", kernel_said(r, eb));
                return;
        }
        f.bytes = S_ISREG(st.st_mode) && st.st_size > 0 ? (uint64_t)st.st_size : 0;
        owner_usage(k, c->uid, &ns, &nf, &nb);
        if (nf >= k->cfg.max_fds_per_owner) {
                refuse(k, c, q, s, -EDQUOT, "uid %u preserves %u files, the limit is %u",
                       (unsigned)c->uid, nf, k->cfg.max_fds_per_owner);
                return;
        }
        if (f.bytes > k->cfg.max_bytes_per_owner || nb > k->cfg.max_bytes_per_owner - f.bytes) {
                refuse(k, c, q, s, -EDQUOT, "uid %u would preserve %llu bytes, the limit is %llu",
                       (unsigned)c->uid, (unsigned long long)(nb + f.bytes),
                       (unsigned long long)k->cfg.max_bytes_per_owner);
                return;
        }
        r = kernel_preserve(k, s, fd, q->token, &f.ktoken);
        if (r < 0) {
                refuse(k, c, q, s, r, "the kernel refused PRESERVE_FD for token %llu: %s (%s)",
                       (unsigned long long)q->token, strerror(-r), kernel_said(r, eb));
                return;
        }
        /* Ours, for a rebuild (mainline has no UNPRESERVE) and for the fd store. */
        f.fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        r = file_add(k, s, &f);
        if (r < 0) {
                if (f.fd >= 0)
                        close(f.fd);
                refuse(k, c, q, s, r, "out of memory");
                return;
        }
        {
                char fdname[160];
                fdname_file(s, f.token, fdname, sizeof(fdname));
                fdstore_put(k, fdname, f.fd);
                fdstore_doc(k);
        }
        (void)client_answer(c, q, 0, f.bytes, NULL, -1);
        event_emit(k, "preserved", c, s, &q->token, f.bytes, 0, NULL);
}

/*
 * Mainline has no UNPRESERVE: release the session (which unpreserves every
 * file) and build it again from our duplicates of the others. op_lock held.
 */
static int session_build(struct broker *k, struct bsession *s, const struct bfile *without)
{
        int sfd = -1, r;

        if (s->sfd >= 0)
                k->inner->ops->session_release(k->inner, s->sfd);
        s->sfd = -1;
        r = k->inner->ops->session_create(k->inner, s->kname, &sfd);
        if (r < 0)
                return r;
        s->sfd = sfd;
        for (size_t i = 0; i < s->n_files; i++) {
                struct bfile *f = &s->files[i];
                if (f == without)
                        continue;
                if (f->fd < 0)
                        return -EBADF;
                r = k->inner->ops->session_preserve(k->inner, sfd, f->fd, f->token);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int session_rebuild_without(struct broker *k, struct bsession *s, struct bfile *gone)
{
        char name[160];
        int r;

        /* The store's duplicate would keep the old session (and its name) alive. */
        if (k->cfg.fdstore) {
                fdname_session(s, name, sizeof(name));
                fdstore_remove(k, name);
                fdstore_barrier(k);
        }
        r = session_build(k, s, gone);
        if (r >= 0)
                return 0;
        /* Nothing may change on a failure: the session again, with every file. */
        if (session_build(k, s, NULL) < 0) {
                if (s->sfd >= 0)
                        k->inner->ops->session_release(k->inner, s->sfd);
                s->sfd = -1;
                return -ENOTRECOVERABLE; /* the caller drops the session: the kernel has none */
        }
        if (k->cfg.fdstore)
                fdstore_put(k, name, s->sfd);
        return r;
}

static void do_unpreserve(struct broker *k, struct bclient *c, const struct lfs_msg *q)
{
        struct bsession *s = own_session(k, c, q);
        struct bfile *f;
        char eb[16];
        int r;

        if (!s)
                return;
        if (s->phase != LFS_PHASE_OUTGOING) {
                refuse(k, c, q, s, -EINVAL, "session %s is %s", s->name,
                       lfs_phase_to_string(s->phase));
                return;
        }
        f = file_find(s, q->token);
        if (!f) {
                refuse(k, c, q, s, -ENOENT, "no token %llu in session %s",
                       (unsigned long long)q->token, s->name);
                return;
        }
        if (!k->session_mode)
                r = k->inner->ops->fd_unpreserve(k->inner, f->ktoken);
        else if (k->inner->ops->session_unpreserve)
                r = k->inner->ops->session_unpreserve(k->inner, s->sfd, f->token);
        else
                r = session_rebuild_without(k, s, f);
        if (r == -ENOTRECOVERABLE) {
                /* The kernel has no session any more: neither do we (its files are unpreserved). */
                refuse(k, c, q, s, -EIO,
                       "unpreserving token %llu failed and session %s could not be built again: "
                       "it is gone with every file; create it again",
                       (unsigned long long)q->token, s->name);
                event_emit(k, "lost", c, s, NULL, session_bytes(s), -EIO, NULL);
                fdstore_session(k, s, false);
                session_remove(k, s);
                session_free(k, s);
                fdstore_doc(k);
                return;
        }
        if (r < 0) {
                refuse(k, c, q, s, r, "unpreserving token %llu failed: %s (%s)",
                       (unsigned long long)q->token, strerror(-r), kernel_said(r, eb));
                return;
        }
        {
                char fdname[160];
                fdname_file(s, f->token, fdname, sizeof(fdname));
                fdstore_remove(k, fdname);
                /* A rebuilt session has a new descriptor. */
                fdname_session(s, fdname, sizeof(fdname));
                fdstore_remove(k, fdname);
                fdstore_put(k, fdname, s->sfd);
        }
        file_remove(k, s, f);
        fdstore_doc(k);
        (void)client_answer(c, q, 0, 0, NULL, -1);
        event_emit(k, "unpreserved", c, s, &q->token, 0, 0, NULL);
}

static void do_close(struct broker *k, struct bclient *c, const struct lfs_msg *q)
{
        struct bsession *s = own_session(k, c, q);

        if (!s)
                return;
        if (s->phase != LFS_PHASE_OUTGOING) {
                refuse(k, c, q, s, -EINVAL,
                       "session %s is %s: finish an incoming session instead of closing it",
                       s->name, lfs_phase_to_string(s->phase));
                return;
        }
        if (!k->session_mode)
                for (size_t i = 0; i < s->n_files; i++)
                        (void)k->inner->ops->fd_unpreserve(k->inner, s->files[i].ktoken);
        event_emit(k, "closed", c, s, NULL, session_bytes(s), 0, NULL);
        fdstore_session(k, s, false);
        session_remove(k, s);
        session_free(k, s);
        fdstore_doc(k);
        (void)client_answer(c, q, 0, 0, NULL, -1);
}

static void do_retrieve(struct broker *k, struct bclient *c, const struct lfs_msg *q)
{
        struct bsession *s = session_find(k, c->uid, q->session);
        char kname[LUO_SESSION_NAME_MAX], eb[16];
        int sfd = -1, r;

        if (s && s->phase != LFS_PHASE_INCOMING) {
                refuse(k, c, q, s, -EINVAL, "session %s is %s, not incoming", s->name,
                       lfs_phase_to_string(s->phase));
                return;
        }
        kname_of(c->uid, q->session, kname);
        if (k->session_mode) {
                /*
                 * Without our document (a kexec nobody prepared, or a marker lost)
                 * the kernel still knows the session by name: ask it.
                 */
                r = k->inner->ops->session_retrieve(k->inner, kname, &sfd);
                if (r == -ENOENT && s) {
                        /*
                         * Handed over, yet gone: a helper that had retrieved it ended
                         * (closing a retrieved session finishes it). It is finished.
                         */
                        pthread_mutex_lock(&k->lock);
                        s->phase = LFS_PHASE_FINISHED;
                        pthread_mutex_unlock(&k->lock);
                        refuse(k, c, q, s, r,
                               "the kernel no longer has session %s: it was finished (a "
                               "process that had retrieved it ended)",
                               kname);
                        return;
                }
                if (r < 0) {
                        refuse(k, c, q, s, r, "the kernel refused RETRIEVE_SESSION %s: %s (%s)",
                               kname, strerror(-r), kernel_said(r, eb));
                        return;
                }
        } else if (!s) {
                refuse(k, c, q, NULL, -ENOENT, "no incoming session %s of uid %u", q->session,
                       (unsigned)c->uid);
                return;
        }
        if (!s) {
                s = calloc(1, sizeof(*s));
                if (s) {
                        copy_str(s->name, sizeof(s->name), q->session);
                        copy_str(s->kname, sizeof(s->kname), kname);
                        copy_str(s->workload, sizeof(s->workload), c->name);
                        s->owner = c->uid;
                        s->phase = LFS_PHASE_INCOMING;
                        s->sfd = -1;
                }
                if (!s || session_insert(k, s) < 0) {
                        free(s);
                        k->inner->ops->session_release(k->inner, sfd);
                        refuse(k, c, q, NULL, -ENOMEM, "out of memory");
                        return;
                }
        }
        pthread_mutex_lock(&k->lock);
        s->sfd = sfd;
        s->phase = LFS_PHASE_RETRIEVED;
        pthread_mutex_unlock(&k->lock);
        {
                char fdname[160];
                fdname_session(s, fdname, sizeof(fdname));
                fdstore_put(k, fdname, sfd);
                fdstore_doc(k);
        }
        (void)client_answer(c, q, 0, 0, NULL, -1);
        event_emit(k, "retrieved", c, s, NULL, session_bytes(s), 0, NULL);
}

static void do_retrieve_fd(struct broker *k, struct bclient *c, const struct lfs_msg *q)
{
        struct bsession *s = own_session(k, c, q);
        struct bfile *f;
        struct stat st;
        uint64_t bytes = 0;
        char eb[16];
        int fd = -1, r;

        if (!s)
                return;
        if (s->phase != LFS_PHASE_RETRIEVED) {
                refuse(k, c, q, s, -EINVAL, "session %s is %s: retrieve the session first", s->name,
                       lfs_phase_to_string(s->phase));
                return;
        }
        f = file_find(s, q->token);
        if (k->session_mode)
                r = k->inner->ops->session_retrieve_fd(k->inner, s->sfd, q->token, &fd);
        else
                r = f ? k->inner->ops->fd_restore(k->inner, f->ktoken, &fd) : -ENOENT;
        if (r < 0) {
                refuse(k, c, q, s, r, "the kernel refused RETRIEVE_FD for token %llu: %s (%s)",
                       (unsigned long long)q->token, strerror(-r), kernel_said(r, eb));
                return;
        }
        if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode))
                bytes = (uint64_t)st.st_size;
        if (!f) {
                /* A session found by name only: learn its files as they come. */
                struct bfile nf = {
                        .token = q->token, .ktoken = q->token, .bytes = bytes, .fd = -1
                };
                (void)file_add(k, s, &nf);
                f = file_find(s, q->token);
        }
        if (f) {
                pthread_mutex_lock(&k->lock);
                f->retrieved = true;
                f->bytes = bytes;
                pthread_mutex_unlock(&k->lock);
        }
        fdstore_doc(k);
        r = client_answer(c, q, 0, bytes, NULL, fd);
        close(fd);
        event_emit(k, "fd-retrieved", c, s, &q->token, bytes, r < 0 ? r : 0, NULL);
}

/* Finish session s (op_lock held): the kernel's FINISH, then it is done. */
static int session_finish_kernel(struct broker *k, struct bsession *s)
{
        int r = 0;

        if (k->session_mode) {
                if (s->sfd < 0) {
                        r = k->inner->ops->session_retrieve(k->inner, s->kname, &s->sfd);
                        if (r < 0)
                                return r;
                }
                r = k->inner->ops->session_finish(k->inner, s->sfd);
                if (r < 0)
                        return r;
                fdstore_session(k, s, false);
                k->inner->ops->session_release(k->inner, s->sfd);
                s->sfd = -1;
        }
        /* Token mode: the kernel frees what was not restored at the global FINISH. */
        pthread_mutex_lock(&k->lock);
        s->phase = LFS_PHASE_FINISHED;
        pthread_mutex_unlock(&k->lock);
        fdstore_doc(k);
        return r;
}

static void do_finish(struct broker *k, struct bclient *c, const struct lfs_msg *q)
{
        struct bsession *s = own_session(k, c, q);
        char eb[16];
        int r;

        if (!s)
                return;
        if (s->phase == LFS_PHASE_FINISHED) {
                (void)client_answer(c, q, 0, 0, NULL, -1); /* a second FINISH is a no-op */
                return;
        }
        if (s->phase != LFS_PHASE_RETRIEVED && s->phase != LFS_PHASE_INCOMING) {
                refuse(k, c, q, s, -EINVAL,
                       "session %s is %s: only an incoming session is "
                       "finished",
                       s->name, lfs_phase_to_string(s->phase));
                return;
        }
        r = session_finish_kernel(k, s);
        if (r < 0) {
                refuse(k, c, q, s, r, "the kernel refused FINISH of %s: %s (%s)", s->kname,
                       strerror(-r), kernel_said(r, eb));
                return;
        }
        (void)client_answer(c, q, 0, 0, NULL, -1);
        event_emit(k, "finished", c, s, NULL, session_bytes(s), 0, NULL);
}

static void do_list(struct broker *k, struct bclient *c, const struct lfs_msg *q)
{
        uint64_t n = 0;

        for (size_t i = 0; i < k->n_sessions; i++) {
                struct bsession *s = k->sessions[i];
                if (s->owner != c->uid)
                        continue;
                if (client_entry(c, q, LFS_INFO, s->name, session_bytes(s), (uint64_t)s->phase,
                                 s->n_files) < 0)
                        return;
                n++;
        }
        (void)client_answer(c, q, 0, n, NULL, -1);
}

static void do_show(struct broker *k, struct bclient *c, const struct lfs_msg *q)
{
        struct bsession *s = own_session(k, c, q);

        if (!s)
                return;
        for (size_t i = 0; i < s->n_files; i++)
                if (client_entry(c, q, LFS_FD_INFO, NULL, s->files[i].token, s->files[i].bytes,
                                 s->files[i].retrieved) < 0)
                        return;
        (void)client_answer(c, q, 0, s->n_files, NULL, -1);
}

static void do_confirm(struct broker *k, struct bclient *c, const struct lfs_msg *q, bool veto)
{
        bool ok;

        pthread_mutex_lock(&k->lock);
        ok = k->round_active && q->arg == k->round_id && c->round == ROUND_PENDING;
        if (ok) {
                c->round = veto ? ROUND_VETOED : ROUND_CONFIRMED;
                if (veto)
                        copy_str(c->veto, sizeof(c->veto), q->text[0] ? q->text : "no reason");
                pthread_cond_broadcast(&k->cond);
        }
        pthread_mutex_unlock(&k->lock);
        if (!ok) {
                (void)client_answer(c, q, -ESTALE, 0,
                                    "no prepare of that id is waiting for this workload", -1);
                return;
        }
        (void)client_answer(c, q, 0, 0, NULL, -1);
        event_emit(k, veto ? "vetoed" : "confirmed", c, NULL, NULL, 0, 0, veto ? c->veto : NULL);
}

/* One request; false when the client is to be dropped. */
static bool client_request(struct broker *k, struct bclient *c, const struct lfs_msg *q, int fd)
{
        bool keep = true;

        if (!c->hello && q->type != LFS_HELLO) {
                (void)client_answer(c, q, -EPROTO, 0, "say HELLO first", -1);
                return false;
        }
        pthread_mutex_lock(&k->op_lock);
        switch (q->type) {
        case LFS_HELLO:
                keep = do_hello(k, c, q);
                break;
        case LFS_SESSION_CREATE:
                do_create(k, c, q);
                break;
        case LFS_SESSION_RETRIEVE:
                do_retrieve(k, c, q);
                break;
        case LFS_SESSION_FINISH:
                do_finish(k, c, q);
                break;
        case LFS_SESSION_CLOSE:
                do_close(k, c, q);
                break;
        case LFS_PRESERVE:
                do_preserve(k, c, q, fd);
                break;
        case LFS_UNPRESERVE:
                do_unpreserve(k, c, q);
                break;
        case LFS_RETRIEVE_FD:
                do_retrieve_fd(k, c, q);
                break;
        case LFS_LIST:
                do_list(k, c, q);
                break;
        case LFS_SHOW:
                do_show(k, c, q);
                break;
        case LFS_CONFIRM:
        case LFS_VETO:
                do_confirm(k, c, q, q->type == LFS_VETO);
                break;
        default:
                (void)client_answer(c, q, -EPROTO, 0, "not a request", -1);
                keep = false;
        }
        pthread_mutex_unlock(&k->op_lock);
        return keep;
}

/* ---- the broker thread ------------------------------------------------------------------- */

static void client_drop(struct broker *k, struct bclient *c, const char *why)
{
        bool said_hello = c->hello;

        pthread_mutex_lock(&k->lock);
        for (size_t i = 0; i < k->n_clients; i++)
                if (k->clients[i] == c) {
                        memmove(&k->clients[i], &k->clients[i + 1],
                                (k->n_clients - i - 1) * sizeof(*k->clients));
                        k->n_clients--;
                        break;
                }
        if (c->round == ROUND_PENDING && k->round_gone) {
                char d[LFS_WORKLOAD_MAX + 48];
                client_describe(c, d, sizeof(d));
                json_array_append_new(k->round_gone,
                                      json_pack("{s:s, s:I, s:i, s:s}", "name", c->name, "uid",
                                                (json_int_t)c->uid, "pid", (int)c->pid, "reason",
                                                "disconnected"));
                pthread_cond_broadcast(&k->cond);
        }
        (void)epoll_ctl(k->epoll_fd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
        pthread_mutex_unlock(&k->lock);
        if (said_hello)
                event_emit(k, "disconnected", c, NULL, NULL, 0, 0, why);
        free(c);
}

static void client_readable(struct broker *k, struct bclient *c)
{
        for (int i = 0; i < 16; i++) {
                struct lfs_msg q;
                int fd = -1, flags = 0, r;
                long n = lfs_recv(c->fd, &q, &fd, &flags, true);

                if (n == -EAGAIN)
                        return;
                if (n <= 0) {
                        client_drop(k, c, n == 0 ? "closed" : "receive failed");
                        return;
                }
                r = lfs_msg_decode(&q, (size_t)n, flags, fd >= 0 ? 1 : 0, LFS_TO_BROKER, &q);
                if (r == -EBADMSG) {
                        if (fd >= 0)
                                close(fd);
                        (void)client_answer(c, &q, -EINVAL, 0,
                                            "a name must be 1 to 48 characters [A-Za-z0-9._-] "
                                            "(a workload's: 63), text printable ASCII",
                                            -1);
                        continue;
                }
                if (r < 0) {
                        /* Never act on a malformed message: the connection ends. */
                        if (fd >= 0)
                                close(fd);
                        log_debug("Session broker: malformed message from pid %d, uid %u: "
                                  "disconnected",
                                  (int)c->pid, (unsigned)c->uid);
                        client_drop(k, c, "malformed message");
                        return;
                }
                bool keep = client_request(k, c, &q, fd);
                if (fd >= 0)
                        close(fd); /* the kernel and our duplicate hold the file now */
                if (!keep) {
                        client_drop(k, c, "refused");
                        return;
                }
        }
}

static void broker_accept(struct broker *k)
{
        for (;;) {
                struct ucred cred;
                socklen_t len = sizeof(cred);
                struct bclient *c;
                struct epoll_event ev = { .events = EPOLLIN };
                int fd = accept4(k->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);

                if (fd < 0)
                        return; /* EAGAIN, or a transient error: the next wake-up tries again */
                if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
                        close(fd);
                        continue;
                }
                pthread_mutex_lock(&k->lock);
                if (k->n_clients >= k->cfg.max_clients + REFUSE_QUEUE) {
                        pthread_mutex_unlock(&k->lock);
                        close(fd);
                        continue;
                }
                if (k->n_clients == k->cap_clients) {
                        size_t cap = k->cap_clients ? 2 * k->cap_clients : 16;
                        struct bclient **n = realloc(k->clients, cap * sizeof(*n));
                        if (!n) {
                                pthread_mutex_unlock(&k->lock);
                                close(fd);
                                continue;
                        }
                        k->clients = n;
                        k->cap_clients = cap;
                }
                c = calloc(1, sizeof(*c));
                if (!c) {
                        pthread_mutex_unlock(&k->lock);
                        close(fd);
                        continue;
                }
                c->fd = fd;
                c->uid = cred.uid;
                c->gid = cred.gid;
                c->pid = cred.pid;
                c->refuse = k->n_clients >= k->cfg.max_clients;
                ev.data.ptr = c;
                if (epoll_ctl(k->epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0) {
                        pthread_mutex_unlock(&k->lock);
                        close(fd);
                        free(c);
                        continue;
                }
                k->clients[k->n_clients++] = c;
                pthread_mutex_unlock(&k->lock);
        }
}

static void *broker_main(void *userdata)
{
        struct broker *k = userdata;
        struct epoll_event evs[32];

        for (;;) {
                int n = epoll_wait(k->epoll_fd, evs, (int)ELEMENTSOF(evs), -1);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        break;
                }
                for (int i = 0; i < n; i++) {
                        void *p = evs[i].data.ptr;
                        if (p == &k->stop_fd)
                                return NULL;
                        if (p == &k->listen_fd)
                                broker_accept(k);
                        else
                                client_readable(k, p);
                }
        }
        return NULL;
}

/* ---- the decorator's ops ----------------------------------------------------------------- */

static int broker_watch_fd(struct backend *b)
{
        return to_broker(b)->watch_fd;
}

static short broker_watch_events(struct backend *b)
{
        (void)b;
        return POLLIN;
}

static int broker_watch_read(struct backend *b, enum luo_state *ret)
{
        struct broker *k = to_broker(b);
        struct epoll_event evs[2];
        bool inner_fired = false;
        uint64_t v;
        int n;

        n = epoll_wait(k->watch_fd, evs, 2, 0);
        for (int i = 0; i < n; i++) {
                if (evs[i].data.fd == k->change_fd)
                        (void)!read(k->change_fd, &v, sizeof(v));
                else
                        inner_fired = true;
        }
        if (inner_fired)
                return k->inner->ops->watch_read(k->inner, ret);
        return k->inner->ops->get_state(k->inner, ret);
}

/* Pass-through members (the reads). */
static int broker_get_state(struct backend *b, enum luo_state *ret)
{
        return to_broker(b)->inner->ops->get_state(to_broker(b)->inner, ret);
}

static int broker_kexec_load(struct backend *b, int kernel_fd, int initrd_fd, const char *cmdline)
{
        struct broker *k = to_broker(b);
        int r;

        pthread_mutex_lock(&k->op_lock);
        r = k->inner->ops->kexec_load(k->inner, kernel_fd, initrd_fd, cmdline);
        pthread_mutex_unlock(&k->op_lock);
        return r;
}

static int broker_kexec_unload(struct backend *b)
{
        struct broker *k = to_broker(b);
        int r;

        pthread_mutex_lock(&k->op_lock);
        r = k->inner->ops->kexec_unload(k->inner);
        pthread_mutex_unlock(&k->op_lock);
        return r;
}

static int broker_kexec_loaded(struct backend *b, bool *ret)
{
        return to_broker(b)->inner->ops->kexec_loaded(to_broker(b)->inner, ret);
}

static int broker_get_info(struct backend *b, struct backend_info *ret)
{
        return to_broker(b)->inner->ops->get_info(to_broker(b)->inner, ret);
}

static int broker_self_check(struct backend *b, enum luo_state *a, enum luo_state *s)
{
        return to_broker(b)->inner->ops->self_check(to_broker(b)->inner, a, s);
}

static int broker_describe(struct backend *b, char *buf, size_t size)
{
        struct broker *k = to_broker(b);

        if (k->inner->ops->describe)
                return k->inner->ops->describe(k->inner, buf, size);
        snprintf(buf, size, "%s", k->inner->ops->name);
        return 0;
}

/* The names of the clients in round state st, for a sentence and for last_round. */
static void round_names_locked(struct broker *k, enum round_state st, char *buf, size_t size,
                               json_t *arr)
{
        size_t len = 0;

        buf[0] = 0;
        for (size_t i = 0; i < k->n_clients; i++) {
                struct bclient *c = k->clients[i];
                char d[LFS_WORKLOAD_MAX + 48];
                if (c->round != st)
                        continue;
                client_describe(c, d, sizeof(d));
                if (len < size) {
                        int n = snprintf(buf + len, size - len, "%s%s", len ? ", " : "", d);
                        if (n > 0)
                                len += (size_t)n;
                }
                json_array_append_new(arr, json_pack("{s:s, s:I, s:i, s:s}", "name", c->name, "uid",
                                                     (json_int_t)c->uid, "pid", (int)c->pid,
                                                     "reason", st == ROUND_VETOED ? c->veto : ""));
        }
        if (len >= size && size > 4)
                memcpy(buf + size - 4, "...", 4);
}

/*
 * The prepare round (command thread): every registered workload gets
 * LFS_EVENT_PREPARE and must confirm within timeout_ms. Returns 0 when all
 * did (or none is registered), -ETIMEDOUT / -ECANCELED with a sentence. A
 * veto, or a workload that goes away or cannot be told, ends the round at
 * once.
 */
static int workload_round(struct broker *k, enum lfs_event_kind kind, uint32_t timeout_ms,
                          const char *note, char *msg, size_t msg_size)
{
        /* A reboot round cannot be vetoed any more: a veto counts as an answer there. */
        bool prepare = kind == LFS_EVENT_PREPARE;
        uint64_t deadline = now_mono_usec() + (uint64_t)timeout_ms * 1000u;
        char names[SENTENCE_MAX], gonebuf[SENTENCE_MAX];
        json_t *pending, *vetoed, *gone;
        size_t asked = 0, npend = 0;
        bool any_vetoed = false;
        int r = 0;

        pthread_mutex_lock(&k->lock);
        if (k->round_active) {
                pthread_mutex_unlock(&k->lock);
                snprintf(msg, msg_size, "another %s is waiting for the workloads",
                         lfs_event_kind_to_string(kind));
                return -EBUSY;
        }
        k->round_active = true;
        k->round_id = ++k->event_ids;
        k->round_gone = gone = json_array();
        for (size_t i = 0; i < k->n_clients; i++) {
                struct bclient *c = k->clients[i];
                c->round = ROUND_NONE;
                c->veto[0] = 0;
                if (!c->registered)
                        continue;
                asked++;
                if (client_event_locked(k, c, kind, k->round_id, timeout_ms, note))
                        c->round = ROUND_PENDING;
                else {
                        c->round = ROUND_GONE;
                        json_array_append_new(gone,
                                              json_pack("{s:s, s:I, s:i, s:s}", "name", c->name,
                                                        "uid", (json_int_t)c->uid, "pid",
                                                        (int)c->pid, "reason", "unreachable"));
                }
        }
        for (;;) {
                npend = 0;
                any_vetoed = false;
                for (size_t i = 0; i < k->n_clients; i++) {
                        npend += k->clients[i]->round == ROUND_PENDING;
                        any_vetoed |= prepare && k->clients[i]->round == ROUND_VETOED;
                }
                if (any_vetoed || json_array_size(gone) > 0 || npend == 0)
                        break;
                uint64_t now = now_mono_usec();
                if (now >= deadline)
                        break;
                struct timespec ts;
                clock_gettime(CLOCK_MONOTONIC, &ts);
                uint64_t left = deadline - now;
                ts.tv_sec += (time_t)(left / 1000000u);
                ts.tv_nsec += (long)(left % 1000000u) * 1000;
                if (ts.tv_nsec >= 1000000000L) {
                        ts.tv_sec++;
                        ts.tv_nsec -= 1000000000L;
                }
                pthread_cond_timedwait(&k->cond, &k->lock, &ts);
        }
        pending = json_array();
        vetoed = json_array();
        if (any_vetoed) {
                size_t len = 0;
                round_names_locked(k, ROUND_VETOED, names, sizeof(names), vetoed);
                /* "workload vm-1 (uid 1000, pid 42) vetoed: <reason>", each one. */
                msg[0] = 0;
                for (size_t i = 0; i < k->n_clients && len < msg_size; i++) {
                        struct bclient *c = k->clients[i];
                        char d[LFS_WORKLOAD_MAX + 48];
                        int w;
                        if (c->round != ROUND_VETOED)
                                continue;
                        client_describe(c, d, sizeof(d));
                        w = snprintf(msg + len, msg_size - len, "%sworkload %s vetoed: %s",
                                     len ? "; " : "", d, c->veto);
                        if (w < 0)
                                break;
                        len += (size_t)w;
                }
                r = -ECANCELED;
        } else if (npend > 0 || json_array_size(gone) > 0) {
                size_t len = 0, i;
                json_t *g;
                round_names_locked(k, ROUND_PENDING, names, sizeof(names), pending);
                gonebuf[0] = 0;
                json_array_foreach (gone, i, g) {
                        int w = snprintf(gonebuf + len, sizeof(gonebuf) - len,
                                         "%s%s (uid %lld, pid %lld, %s)", len ? ", " : "",
                                         json_string_value(json_object_get(g, "name")),
                                         json_integer_value(json_object_get(g, "uid")),
                                         json_integer_value(json_object_get(g, "pid")),
                                         json_string_value(json_object_get(g, "reason")));
                        if (w < 0 || (size_t)w >= sizeof(gonebuf) - len)
                                break;
                        len += (size_t)w;
                }
                if (names[0] && gonebuf[0])
                        snprintf(msg, msg_size,
                                 "workloads did not confirm within %u ms: %s; gone before "
                                 "confirming: %s",
                                 timeout_ms, names, gonebuf);
                else if (names[0])
                        snprintf(msg, msg_size, "workloads did not confirm within %u ms: %s",
                                 timeout_ms, names);
                else
                        snprintf(msg, msg_size, "workloads went away before confirming: %s",
                                 gonebuf);
                r = -ETIMEDOUT;
        }
        if (prepare) {
                json_decref(k->last_round);
                k->last_round = json_pack("{s:I, s:s, s:I, s:o, s:o, s:O}", "event_id",
                                          (json_int_t)k->round_id, "result",
                                          r == 0            ? "confirmed"
                                          : r == -ECANCELED ? "vetoed"
                                                            : "timeout",
                                          "asked", (json_int_t)asked, "pending", pending, "vetoed",
                                          vetoed, "gone", gone);
        } else {
                json_decref(pending);
                json_decref(vetoed);
        }
        for (size_t i = 0; i < k->n_clients; i++)
                k->clients[i]->round = ROUND_NONE;
        json_decref(gone);
        k->round_gone = NULL;
        k->round_active = false;
        pthread_mutex_unlock(&k->lock);
        return r;
}

/* Unfinished workload sessions (incoming or retrieved), as a sentence; their count. */
static size_t unfinished_sessions(struct broker *k, char *buf, size_t size)
{
        size_t n = 0, len = 0;

        buf[0] = 0;
        pthread_mutex_lock(&k->lock);
        for (size_t i = 0; i < k->n_sessions; i++) {
                struct bsession *s = k->sessions[i];
                if (s->phase != LFS_PHASE_INCOMING && s->phase != LFS_PHASE_RETRIEVED)
                        continue;
                n++;
                if (len < size) {
                        int w = snprintf(buf + len, size - len, "%s%s (uid %u, %s)",
                                         len ? ", " : "", s->name, (unsigned)s->owner,
                                         lfs_phase_to_string(s->phase));
                        if (w > 0)
                                len += (size_t)w;
                }
        }
        pthread_mutex_unlock(&k->lock);
        if (len >= size && size > 4)
                memcpy(buf + size - 4, "...", 4);
        return n;
}

/* The update is over: finished sessions leave the table (op_lock held). */
static void drop_finished(struct broker *k)
{
        for (size_t i = 0; i < k->n_sessions;) {
                struct bsession *s = k->sessions[i];
                if (s->phase == LFS_PHASE_FINISHED || s->phase == LFS_PHASE_INCOMING ||
                    s->phase == LFS_PHASE_RETRIEVED) {
                        /* The update is over: the session leaves the list (an event: the
                         * agent's document changes with a record, never without). */
                        session_remove(k, s);
                        event_emit(k, "released", NULL, s, NULL, session_bytes(s), 0, NULL);
                        session_free(k, s);
                } else
                        i++;
        }
        fdstore_doc(k);
}

static int broker_set_event_ex(struct backend *b, enum luo_event ev,
                               const struct backend_event_opts *opts, char *msg, size_t msg_size)
{
        struct broker *k = to_broker(b);
        struct backend_event_opts none = { 0 };
        char eb[16];
        int r;

        if (!opts)
                opts = &none;
        if (msg && msg_size)
                msg[0] = 0;
        switch (ev) {
        case LUO_EVENT_PREPARE:
                r = workload_round(k, LFS_EVENT_PREPARE,
                                   opts->confirm_timeout_ms ? opts->confirm_timeout_ms
                                                            : k->cfg.confirm_timeout_ms,
                                   opts->note, msg, msg_size);
                if (r < 0) {
                        tell_registered(k, LFS_EVENT_CANCEL, "the prepare failed");
                        event_emit(k, "prepare-refused", NULL, NULL, NULL, 0, r, msg);
                        return r;
                }
                pthread_mutex_lock(&k->op_lock);
                r = k->inner->ops->set_event(k->inner, LUO_EVENT_PREPARE);
                /* A new prepare, a new (empty) marker: nothing written into it yet. */
                free(k->marker_last);
                k->marker_last = NULL;
                if (r >= 0) {
                        int m = marker_write_doc(k, opts->note);
                        if (m < 0) {
                                /* Nothing half-prepared: the kernel's prepare is undone. */
                                (void)k->inner->ops->set_event(k->inner, LUO_EVENT_CANCEL);
                                snprintf(msg, msg_size,
                                         "the sessions' document could not be written into the "
                                         "marker (%s): the prepare was cancelled",
                                         errno_name(m, eb));
                                r = m;
                        }
                }
                pthread_mutex_unlock(&k->op_lock);
                if (r < 0)
                        tell_registered(k, LFS_EVENT_CANCEL, "the prepare failed");
                broker_changed(k);
                return r;
        case LUO_EVENT_CANCEL:
                pthread_mutex_lock(&k->op_lock);
                r = k->inner->ops->set_event(k->inner, LUO_EVENT_CANCEL);
                pthread_mutex_unlock(&k->op_lock);
                if (r >= 0)
                        tell_registered(k, LFS_EVENT_CANCEL, "cancelled");
                return r;
        case LUO_EVENT_FINISH: {
                char list[SENTENCE_MAX];
                size_t n = unfinished_sessions(k, list, sizeof(list));
                if (n > 0 && !opts->force) {
                        snprintf(msg, msg_size,
                                 "%zu workload session%s not finished: %s (finish them, or "
                                 "finish with force: their data is freed)",
                                 n, n == 1 ? " is" : "s are", list);
                        return -EBUSY;
                }
                pthread_mutex_lock(&k->op_lock);
                for (size_t i = 0; i < k->n_sessions; i++) {
                        struct bsession *s = k->sessions[i];
                        if (s->phase != LFS_PHASE_INCOMING && s->phase != LFS_PHASE_RETRIEVED)
                                continue;
                        int f = session_finish_kernel(k, s);
                        event_emit(k, "force-finished", NULL, s, NULL, session_bytes(s), f,
                                   f < 0 ? "the kernel refused FINISH" : NULL);
                }
                r = k->inner->ops->set_event(k->inner, LUO_EVENT_FINISH);
                if (r >= 0)
                        drop_finished(k);
                pthread_mutex_unlock(&k->op_lock);
                if (r >= 0)
                        tell_registered(k, LFS_EVENT_FINISH, "the update is finished");
                broker_changed(k);
                return r;
        }
        default:
                pthread_mutex_lock(&k->op_lock);
                r = k->inner->ops->set_event(k->inner, ev);
                pthread_mutex_unlock(&k->op_lock);
                return r;
        }
}

static int broker_set_event(struct backend *b, enum luo_event ev)
{
        return broker_set_event_ex(b, ev, NULL, NULL, 0);
}

static int broker_reboot_ex(struct backend *b, const struct backend_event_opts *opts, char *msg,
                            size_t msg_size)
{
        struct broker *k = to_broker(b);
        enum luo_state st = LUO_STATE_UNDEFINED;
        char eb[16];
        int r;

        if (msg && msg_size)
                msg[0] = 0;
        /* The document first: a reboot that cannot carry it does not happen, and nobody hears of
         * it. */
        pthread_mutex_lock(&k->op_lock);
        (void)k->inner->ops->get_state(k->inner, &st);
        r = st == LUO_STATE_PREPARED ? marker_write_doc(k, opts ? opts->note : NULL) : 0;
        pthread_mutex_unlock(&k->op_lock);
        if (r < 0) {
                snprintf(msg, msg_size,
                         "the sessions' document could not be written into the marker (%s): no "
                         "reboot",
                         errno_name(r, eb));
                return r;
        }
        /*
         * The registered workloads hear that the kexec is imminent and may
         * answer once they are ready for it (a VMM pauses its vCPUs, so the
         * memory it hands over is consistent): the reboot waits for their
         * answers, at most reboot_timeout_ms, and goes ahead without the late
         * ones (logged). Not under op_lock: their answers go through the broker
         * thread, which takes it.
         */
        {
                char late[SENTENCE_MAX] = "";
                uint32_t t = k->cfg.reboot_timeout_ms;
                if (workload_round(k, LFS_EVENT_REBOOT, t, opts ? opts->note : NULL, late,
                                   sizeof(late)) < 0)
                        log_warning("Session broker: rebooting without them: %s", late);
        }
        /* Again: what the workloads did while they were told is in it too. */
        pthread_mutex_lock(&k->op_lock);
        (void)k->inner->ops->get_state(k->inner, &st);
        if (st == LUO_STATE_PREPARED) {
                r = marker_write_doc(k, opts ? opts->note : NULL);
                if (r < 0) {
                        pthread_mutex_unlock(&k->op_lock);
                        snprintf(msg, msg_size,
                                 "the sessions' document could not be written into the marker "
                                 "(%s): no reboot",
                                 errno_name(r, eb));
                        return r;
                }
        }
        r = k->inner->ops->reboot(k->inner);
        pthread_mutex_unlock(&k->op_lock);
        return r;
}

static int broker_reboot(struct backend *b)
{
        return broker_reboot_ex(b, NULL, NULL, 0);
}

static int broker_sessions_json(struct backend *b, uint64_t since, char **ret_json, size_t *ret_len)
{
        struct broker *k = to_broker(b);
        uint64_t first;
        json_t *doc, *sessions, *workloads, *events, *summary;
        uint64_t n[_LFS_PHASE_MAX] = { 0 }, fds = 0, bytes = 0;
        char when[RFC3339_MAX];
        char *text;

        sessions = json_array();
        workloads = json_array();
        events = json_array();
        pthread_mutex_lock(&k->lock);
        for (size_t i = 0; i < k->n_sessions; i++) {
                struct bsession *s = k->sessions[i];
                json_array_append_new(sessions, session_json(s, true));
                n[s->phase]++;
                fds += s->n_files;
                bytes += session_bytes(s);
        }
        for (size_t i = 0; i < k->n_clients; i++) {
                struct bclient *c = k->clients[i];
                if (!c->hello)
                        continue;
                json_array_append_new(workloads,
                                      json_pack("{s:s, s:I, s:i, s:b}", "name", c->name, "uid",
                                                (json_int_t)c->uid, "pid", (int)c->pid,
                                                "registered", c->registered));
        }
        if (since > k->drained)
                k->drained = since;
        first = k->next_seq > BROKER_EVENTS_MAX ? k->next_seq - BROKER_EVENTS_MAX : 1;
        for (uint64_t s = MAX(first, since + 1); s < k->next_seq; s++) {
                const struct bevent *e = &k->ring[s % BROKER_EVENTS_MAX];
                json_t *o = json_pack("{s:I, s:s, s:s}", "seq", (json_int_t)e->seq, "time",
                                      format_rfc3339_ms(e->usec, when), "event", e->event);
                if (!o)
                        continue;
                if (e->session[0])
                        json_object_set_new(o, "session", json_string(e->session));
                if (e->owner != (uid_t)-1)
                        json_object_set_new(o, "owner_uid", json_integer((json_int_t)e->owner));
                if (e->workload[0])
                        json_object_set_new(o, "workload", json_string(e->workload));
                if (e->pid)
                        json_object_set_new(o, "pid", json_integer(e->pid));
                if (e->has_token)
                        json_object_set_new(o, "token", json_integer((json_int_t)e->token));
                if (e->bytes)
                        json_object_set_new(o, "bytes", json_integer((json_int_t)e->bytes));
                if (e->result < 0) {
                        char eb[16];
                        json_object_set_new(o, "errno", json_string(errno_name(e->result, eb)));
                }
                if (e->detail[0])
                        json_object_set_new(o, "detail", json_string(e->detail));
                json_array_append_new(events, o);
        }
        summary = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "sessions",
                            (json_int_t)k->n_sessions, "fds", (json_int_t)fds, "bytes",
                            (json_int_t)bytes, "outgoing", (json_int_t)n[LFS_PHASE_OUTGOING],
                            "incoming", (json_int_t)n[LFS_PHASE_INCOMING], "retrieved",
                            (json_int_t)n[LFS_PHASE_RETRIEVED], "finished",
                            (json_int_t)n[LFS_PHASE_FINISHED], "workloads",
                            (json_int_t)json_array_size(workloads));
        /* A copy of last_round, not a reference: the document is written out after the
         * unlock while a prepare round may drop the broker's reference. (jansson counts
         * references atomically, but inside the uninstrumented library ThreadSanitizer
         * cannot see it and reports a race; a private copy shares nothing.) */
        doc = json_pack("{s:i, s:s, s:s, s:o, s:o, s:o, s:o, s:o, s:I, s:I}", "version",
                        BROKER_DOC_VERSION, "broker_id", k->id, "interface", sessions_interface(k),
                        "sessions", sessions, "workloads", workloads, "summary", summary,
                        "last_round", k->last_round ? json_deep_copy(k->last_round) : json_null(),
                        "events", events, "events_dropped", (json_int_t)k->dropped, "next_seq",
                        (json_int_t)k->next_seq);
        if (doc && k->from_update)
                json_object_set_new(
                        doc, "previous_boot",
                        json_pack("{s:s, s:s}", "note", k->prev_note, "boot_id", k->prev_boot_id));
        pthread_mutex_unlock(&k->lock);
        if (!doc)
                return -ENOMEM;
        text = json_dumps(doc, JSON_COMPACT);
        json_decref(doc);
        if (!text)
                return -ENOMEM;
        *ret_json = text;
        *ret_len = strlen(text);
        return 0;
}

static void broker_free(struct backend *b)
{
        struct broker *k = to_broker(b);
        uint64_t one = 1;

        if (!k)
                return;
        if (k->thread_started) {
                (void)!write(k->stop_fd, &one, sizeof(one));
                pthread_join(k->thread, NULL);
        }
        for (size_t i = 0; i < k->n_clients; i++) {
                close(k->clients[i]->fd);
                free(k->clients[i]);
        }
        free(k->clients);
        for (size_t i = 0; i < k->n_sessions; i++)
                session_free(k, k->sessions[i]);
        free(k->sessions);
        free(k->ring);
        free(k->marker_last);
        json_decref(k->last_round);
        if (k->inner)
                k->inner->ops->free(k->inner);
        if (k->listen_fd >= 0)
                close(k->listen_fd);
        if (k->epoll_fd >= 0)
                close(k->epoll_fd);
        if (k->watch_fd >= 0)
                close(k->watch_fd);
        if (k->stop_fd >= 0)
                close(k->stop_fd);
        if (k->change_fd >= 0)
                close(k->change_fd);
        pthread_mutex_destroy(&k->lock);
        pthread_mutex_destroy(&k->op_lock);
        pthread_cond_destroy(&k->cond);
        free(k);
}

static const struct backend_ops broker_ops_template = {
        .free = broker_free,
        .get_state = broker_get_state,
        .watch_fd = broker_watch_fd,
        .watch_events = broker_watch_events,
        .watch_read = broker_watch_read,
        .set_event = broker_set_event,
        .kexec_load = broker_kexec_load,
        .kexec_unload = broker_kexec_unload,
        .kexec_loaded = broker_kexec_loaded,
        .reboot = broker_reboot,
        .get_info = broker_get_info,
        .self_check = broker_self_check,
        .describe = broker_describe,
        .set_event_ex = broker_set_event_ex,
        .reboot_ex = broker_reboot_ex,
        .sessions_json = broker_sessions_json,
};

/* ---- set-up ------------------------------------------------------------------------------ */

/*
 * A sockaddr for name inside the directory dir_fd: "/proc/self/fd/N/name",
 * which fits sun_path however deep the directory is (a state directory in a
 * deep build tree would not).
 */
static int unix_addr_at(int dir_fd, const char *name, struct sockaddr_un *sa)
{
        int n;

        *sa = (struct sockaddr_un){ .sun_family = AF_UNIX };
        n = snprintf(sa->sun_path, sizeof(sa->sun_path), "/proc/self/fd/%d/%s", dir_fd, name);
        return n < 0 || (size_t)n >= sizeof(sa->sun_path) ? -ENAMETOOLONG : 0;
}

/* Is somebody listening there? (A live broker's socket must never be replaced.) */
static bool unix_socket_alive(const struct sockaddr_un *sa)
{
        _cleanup_close_ int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);

        return fd >= 0 && connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) == 0;
}

int broker_listen(const char *path, mode_t mode, gid_t gid)
{
        _cleanup_close_ int fd = -1, dir_fd = -1;
        _cleanup_free_ char *dir = NULL;
        struct sockaddr_un sa;
        const char *name;
        struct stat st;
        mode_t old;
        int r;

        if (!path || path[0] != '/' || strlen(path) >= 4096)
                return -EINVAL;
        name = strrchr(path, '/') + 1;
        if (!name[0] || strlen(name) > 64)
                return -EINVAL;
        dir = strndup(path, (size_t)(name - path));
        if (!dir)
                return -ENOMEM;
        dir_fd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (dir_fd < 0)
                return negative_errno();
        r = unix_addr_at(dir_fd, name, &sa);
        if (r < 0)
                return r;
        fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return negative_errno();
        if (fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
                /* Only a dead socket (a predecessor's) is replaced; never a link or a file. */
                if (!S_ISSOCK(st.st_mode))
                        return -EEXIST;
                if (unix_socket_alive(&sa))
                        return -EADDRINUSE;
                if (unlinkat(dir_fd, name, 0) < 0 && errno != ENOENT)
                        return negative_errno();
        }
        /*
         * The mode is set by the umask at bind (a chmod after it would follow
         * a link planted in between); the process is single-threaded here.
         */
        old = umask((mode_t)(0777 & ~mode));
        r = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
        umask(old);
        if (r < 0)
                return negative_errno();
        if (gid != (gid_t)-1 && fchownat(dir_fd, name, (uid_t)-1, gid, AT_SYMLINK_NOFOLLOW) < 0)
                return negative_errno();
        if (fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISSOCK(st.st_mode))
                return -ENOTSOCK;
        if (listen(fd, 64) < 0)
                return negative_errno();
        return TAKE_FD(fd);
}

int broker_new(struct backend *inner, const struct broker_config *cfg, struct backend **ret,
               char *msg, size_t msg_size)
{
        struct broker *k;
        struct epoll_event ev;
        int r;

        if (msg && msg_size)
                msg[0] = 0;
        if (!inner || !cfg || !ret) {
                if (inner)
                        inner->ops->free(inner);
                return -EINVAL;
        }
        k = calloc(1, sizeof(*k));
        if (!k) {
                inner->ops->free(inner);
                return -ENOMEM;
        }
        k->inner = inner;
        k->cfg = *cfg;
        k->listen_fd = k->epoll_fd = k->stop_fd = k->change_fd = k->watch_fd = -1;
        k->next_seq = 1;
        k->next_ktoken = KTOKEN_FIRST;
        if (uuid_v4(k->id) < 0)
                snprintf(k->id, sizeof(k->id), "%llx", (unsigned long long)now_real_usec());
        pthread_mutex_init(&k->lock, NULL);
        pthread_mutex_init(&k->op_lock, NULL);
        {
                pthread_condattr_t ca;
                pthread_condattr_init(&ca);
                pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
                pthread_cond_init(&k->cond, &ca);
                pthread_condattr_destroy(&ca);
        }
        k->ops = broker_ops_template;
        k->ops.name = inner->ops->name;
        k->base.ops = &k->ops;
        k->session_mode = inner->ops->session_create && inner->ops->session_preserve &&
                          inner->ops->session_retrieve && inner->ops->session_retrieve_fd &&
                          inner->ops->session_finish && inner->ops->session_release;
        if (!k->session_mode &&
            !(inner->ops->fd_preserve && inner->ops->fd_unpreserve && inner->ops->fd_restore)) {
                snprintf(msg, msg_size,
                         "the %s backend can preserve no files: the session broker needs "
                         "sessions or tokens",
                         inner->ops->name);
                r = -EOPNOTSUPP;
                goto fail;
        }
        if (!k->cfg.max_clients)
                k->cfg.max_clients = BROKER_DEFAULT_MAX_CLIENTS;
        if (!k->cfg.confirm_timeout_ms)
                k->cfg.confirm_timeout_ms = BROKER_DEFAULT_CONFIRM_TIMEOUT_MS;
        if (!k->cfg.reboot_timeout_ms)
                k->cfg.reboot_timeout_ms = BROKER_DEFAULT_REBOOT_TIMEOUT_MS;
        k->ring = calloc(BROKER_EVENTS_MAX, sizeof(*k->ring));
        k->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
        k->watch_fd = epoll_create1(EPOLL_CLOEXEC);
        k->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        k->change_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (!k->ring || k->epoll_fd < 0 || k->watch_fd < 0 || k->stop_fd < 0 || k->change_fd < 0) {
                r = k->ring ? negative_errno() : -ENOMEM;
                snprintf(msg, msg_size, "the session broker cannot set up: %s", strerror(-r));
                goto fail;
        }
        /* One descriptor to watch: the kernel's notifications and our changes. */
        {
                int ifd = inner->ops->watch_fd(inner);
                short ie = inner->ops->watch_events(inner);
                ev = (struct epoll_event){ .events = EPOLLIN, .data.fd = k->change_fd };
                if (epoll_ctl(k->watch_fd, EPOLL_CTL_ADD, k->change_fd, &ev) < 0) {
                        r = negative_errno();
                        goto fail_msg;
                }
                if (ifd >= 0) {
                        ev = (struct epoll_event){
                                .events = (ie & POLLIN ? EPOLLIN : 0) |
                                          (ie & POLLPRI ? EPOLLPRI : 0) |
                                          (ie & POLLERR ? EPOLLERR : 0),
                                .data.fd = ifd,
                        };
                        if (epoll_ctl(k->watch_fd, EPOLL_CTL_ADD, ifd, &ev) < 0) {
                                r = negative_errno();
                                goto fail_msg;
                        }
                }
        }
        if (cfg->listen_fd >= 0)
                k->listen_fd = cfg->listen_fd;
        else if (cfg->socket_path) {
                r = broker_listen(cfg->socket_path, cfg->socket_mode ? cfg->socket_mode : 0660,
                                  cfg->socket_gid);
                if (r < 0 && cfg->socket_optional && r != -EADDRINUSE) {
                        log_warning("Cannot listen on %s for workloads (%s): no workload can "
                                    "preserve anything; choose a place with --sessions-socket",
                                    cfg->socket_path, strerror(-r));
                        r = -1;
                } else if (r < 0) {
                        snprintf(msg, msg_size, "cannot listen on %s for workloads: %s%s",
                                 cfg->socket_path, strerror(-r),
                                 r == -EEXIST       ? " (a file that is not a socket is in the way)"
                                 : r == -EADDRINUSE ? " (another agent serves it)"
                                                    : "");
                        goto fail;
                }
                k->listen_fd = r;
        }
        ev = (struct epoll_event){ .events = EPOLLIN, .data.ptr = &k->stop_fd };
        if (epoll_ctl(k->epoll_fd, EPOLL_CTL_ADD, k->stop_fd, &ev) < 0) {
                r = negative_errno();
                goto fail_msg;
        }
        if (k->listen_fd >= 0) {
                ev = (struct epoll_event){ .events = EPOLLIN, .data.ptr = &k->listen_fd };
                if (epoll_ctl(k->epoll_fd, EPOLL_CTL_ADD, k->listen_fd, &ev) < 0) {
                        r = negative_errno();
                        goto fail_msg;
                }
        }
        if (k->cfg.n_restore)
                fdstore_restore(k);
        marker_load(k);
        fdstore_doc(k);
        r = -pthread_create(&k->thread, NULL, broker_main, k);
        if (r < 0)
                goto fail_msg;
        k->thread_started = true;
        *ret = &k->base;
        return 0;
fail_msg:
        snprintf(msg, msg_size, "the session broker cannot set up: %s", strerror(-r));
fail:
        if (cfg->listen_fd >= 0 && k->listen_fd < 0)
                close(cfg->listen_fd);
        for (size_t i = 0; i < cfg->n_restore; i++)
                if (cfg->restore_fds[i] >= 0) {
                        close(cfg->restore_fds[i]);
                        cfg->restore_fds[i] = -1;
                }
        broker_free(&k->base);
        return r;
}
