/*
 * sim.c: the simulated kernel. The v3 live-update state machine of
 * kernel-abi.md section A, with the kernel's transitions and errnos
 * (luo_state_apply_event()), a simulated kexec image, a simulated
 * reboot(LINUX_REBOOT_CMD_KEXEC) and fault injection, so the agent, the
 * controller and the fleet tests run unprivileged on any Linux.
 *
 * Persistence: <state_dir>/sim/ (0700) holds
 *   kernel.json  the simulated machine: {state, boot_id, release,
 *                kexec: null | {kernel_sha256, initrd_sha256 | null, cmdline,
 *                kernel_size, release?}, reboot_pending, boots, applied,
 *                booted_usec?, handover?}, replaced
 *                atomically on every change; applied counts what the machine
 *                carried out, per kind ({prepare, cancel, finish, freeze,
 *                kexec, load, unload}: successful calls only), persisted with
 *                the change itself, so a test can tell that nothing ran twice
 *                across crashes and restarts (a file without it counts from 0);
 *   faults       optional, read again by every faultable operation: one
 *                backend_config_add_fault() spec per line, "#" comments; an
 *                op named there overrides the cfg->faults entry; the file
 *                alone may also name "preserve" (session_preserve, same
 *                syntax; not a backend_config_add_fault() op);
 *   lock         flock()ed for the backend's life: like the real
 *                /dev/liveupdate, one agent at a time (-EBUSY).
 * The simulated reboot persists reboot_pending and returns 0; the caller
 * ends or re-executes the process, and the next sim_open() "boots": a new
 * boot id, boots + 1, kexec image gone, state updated if the machine went
 * down frozen (live-update data handed over), normal otherwise; the release
 * is cfg->sim_boot_release (--sim-boot-release: the machine came back with
 * another kernel than the one staged; "IMAGE=WRONG" only when the image's
 * header named IMAGE), else the one the image's bzImage
 * header named (kexec.release), else --sim-release or uname. booted_usec
 * (wall clock of the simulated boot, taken when the open boots) gives
 * get_info() its uptime: however long the machine stayed down between the
 * reboot call and that open (the agent's --sim-downtime) is the jump's share
 * of a blackout (the agent's kexec_ms), never the new boot's uptime.
 *
 * Sessions (kernel-abi.md section B, mainline's rules; docs/sim-sessions.md):
 * the session_* members keep a table of outgoing sessions (created here,
 * each preserved file held as a dup) and incoming ones (handed over by the
 * previous boot). A session handle is a dup of an empty memfd the sim keeps
 * (a distinct inode): a handle is looked up by its st_dev/st_ino.
 *   sessions/<boot id>/  the handover a simulated kexec of boot <boot id>
 *                wrote: index.json ({version, boot_id, marker: null |
 *                {size}, sessions: [{name, name_hex, dir, files: [{token,
 *                size, seals, position}]}]}), one directory per session
 *                (0, 1, ...) holding one file per token (named by the token
 *                in decimal), and the marker. Written as .tmp-<boot id>,
 *                fsynced, renamed: the reboot_pending that follows in
 *                kernel.json is the commit point. The boot that lands records
 *                the boot id in kernel.json's "handover" and offers its
 *                sessions as incoming; whatever else sessions/ holds is
 *                removed at open. The directory lives through agent restarts
 *                within the boot: a session's directory goes when the session
 *                is finished (explicitly, by release, or, for one a process
 *                retrieved and then died holding, at the next open: the
 *                kernel's implicit finish when the session fd is closed, a
 *                "retrieved" file marks them); the FINISH event frees the
 *                sessions never retrieved and the marker and clears
 *                "handover"; the whole directory goes once nothing is left.
 *
 * Threads and locks: set_event, kexec_load, kexec_unload, reboot and
 * marker_write are serialised by op_lock, held through fault delays, hashing,
 * the handover copy and fsync; the session_* members and marker_read (the
 * broker's thread) take sess_lock, which guards the session table and the
 * incoming handover (set_event's FINISH and reboot take it under op_lock);
 * get_state, kexec_loaded, watch_read, get_info and self_check take only
 * lock, a short one guarding the in-memory copy, so the event loop never
 * waits for a slow operation. Lock order: op_lock, then sess_lock, then lock.
 * The outgoing marker is guarded by op_lock. Owns the directory fd, the lock
 * fd, the eventfd (the watch fd, POLLIN), the handover directory fd, every
 * session handle, each preserved file's dup and each restored memfd.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/magic.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "backend-private.h"
#include "luofleet/backend.h"
#include "luofleet/bzimage.h"
#include "luofleet/macro.h"
#include "luofleet/util.h"

#define SIM_DIR "sim"
#define SIM_STATE_FILE "kernel.json"
#define SIM_FAULTS_FILE "faults"
#define SIM_LOCK_FILE "lock"
/* x86's COMMAND_LINE_SIZE, NUL included: the kernel answers EINVAL past it. */
#define SIM_CMDLINE_MAX 2048
/* Cap on the files we read back (kernel.json, faults). */
#define SIM_FILE_MAX (64 * 1024)
#define SHA256_HEX_LEN 64

/* The session handover (see the comment at the top). */
#define SIM_SESSIONS_DIR "sessions"
#define SIM_INDEX_FILE "index.json"
#define SIM_MARKER_FILE "marker"
#define SIM_RETRIEVED_FILE "retrieved"
#define SIM_HANDOVER_TMP_PREFIX ".tmp-"
#define SIM_INDEX_VERSION 1
/* Cap on index.json: about 100 bytes a file, so some 100,000 preserved files. */
#define SIM_INDEX_MAX (16 * 1024 * 1024)
/* sessions/<boot id>/<n>/<token>: the deepest tree the sim removes. */
#define SIM_HANDOVER_DEPTH 4

/* The fault ops of the runtime faults file only: after cfg's. */
#define SIM_FAULT_PRESERVE _SIM_FAULT_OP_MAX
#define SIM_FAULTS_N (_SIM_FAULT_OP_MAX + 1)

#ifndef F_SEAL_EXEC
#define F_SEAL_EXEC 0x0020
#endif
#define SIM_SEALS_KNOWN                                                                            \
        (F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_FUTURE_WRITE |          \
         F_SEAL_EXEC)

/* What the simulated machine carried out, counted in kernel.json's "applied". */
enum sim_applied {
        SIM_APPLIED_PREPARE,
        SIM_APPLIED_CANCEL,
        SIM_APPLIED_FINISH,
        SIM_APPLIED_FREEZE,
        SIM_APPLIED_KEXEC,
        SIM_APPLIED_LOAD,
        SIM_APPLIED_UNLOAD,
        _SIM_APPLIED_MAX,
};

static const char *const sim_applied_names[_SIM_APPLIED_MAX] = {
        /* contract-enums: ignore */
        [SIM_APPLIED_PREPARE] = "prepare", [SIM_APPLIED_CANCEL] = "cancel",
        [SIM_APPLIED_FINISH] = "finish",   [SIM_APPLIED_FREEZE] = "freeze",
        [SIM_APPLIED_KEXEC] = "kexec",     [SIM_APPLIED_LOAD] = "load",
        [SIM_APPLIED_UNLOAD] = "unload",
};

/* The simulated machine, as persisted in kernel.json. A value type: copied, never shared. */
struct sim_kstate {
        enum luo_state state;
        char boot_id[37];
        char release[128];
        bool kexec; /* an image is staged */
        char kernel_sha256[SHA256_HEX_LEN + 1];
        char initrd_sha256[SHA256_HEX_LEN + 1]; /* "" = no initrd */
        char cmdline[SIM_CMDLINE_MAX];
        uint64_t kernel_size;
        bool reboot_pending; /* the simulated kexec happened; next open boots */
        uint64_t boots;
        /* the release the staged image's bzImage header names ("" = none): the next boot's */
        char next_release[128];
        uint64_t booted_usec; /* CLOCK_REALTIME of this simulated boot, 0 = unknown (uptime) */
        uint64_t applied[_SIM_APPLIED_MAX];
        /* the boot id whose session handover this boot received and has not
         * FINISHed ("" = none): sessions/<handover>/ */
        char handover[37];
};

/* A preserved file (outgoing) or a handed-over one (incoming). */
struct sim_sfile {
        uint64_t token;
        /* outgoing: the sim's dup of the preserved file; incoming: the memfd
         * the first session_retrieve_fd made (-1 before) */
        int fd;
        dev_t dev; /* outgoing: the file's identity (EBUSY) */
        ino_t ino;
        /* incoming: what the index says */
        uint64_t size;
        uint64_t pos;
        int seals;
};

struct sim_session {
        char name[LUO_SESSION_NAME_MAX];
        bool incoming;
        bool retrieved; /* incoming: session_retrieve handed out a handle */
        bool finished;  /* incoming: finished (its files freed) */
        int handle;     /* the sim's copy of the handle memfd, -1 = none handed out */
        dev_t hdev;
        ino_t hino;
        char dir[24]; /* incoming: its directory in the handover */
        struct sim_sfile *files;
        size_t n_files;
};

struct sim {
        struct backend base;     /* first: a struct backend * is a struct sim * */
        pthread_mutex_t op_lock; /* serialises the mutating operations */
        pthread_mutex_t lock;    /* guards k */
        struct sim_kstate k;
        struct sim_fault faults[_SIM_FAULT_OP_MAX]; /* from cfg, read-only */
        int dir_fd;                                 /* <state_dir>/sim */
        int lock_fd;
        int event_fd;

        pthread_mutex_t sess_lock; /* guards sessions, handover_* */
        struct sim_session **sessions;
        size_t n_sessions;
        int handover_fd;        /* sessions/<handover>/, -1 = no incoming handover */
        char handover_name[37]; /* its boot id */
        bool handover_marker;   /* it holds the previous boot's marker */
        void *marker;           /* outgoing marker (op_lock), NULL = none */
        size_t marker_len;
};

static struct sim *to_sim(struct backend *b)
{
        return (struct sim *)b;
}

static struct sim *sim_op_lock(struct sim *s)
{
        pthread_mutex_lock(&s->op_lock);
        return s;
}

static void sim_op_unlockp(struct sim **s)
{
        if (*s)
                pthread_mutex_unlock(&(*s)->op_lock);
}

#define SIM_OP_LOCKED(s) _cleanup_(sim_op_unlockp) _unused_ struct sim *_op_locked = sim_op_lock(s)

static struct sim *sim_sess_lock(struct sim *s)
{
        pthread_mutex_lock(&s->sess_lock);
        return s;
}

static void sim_sess_unlockp(struct sim **s)
{
        if (*s)
                pthread_mutex_unlock(&(*s)->sess_lock);
}

#define SIM_SESS_LOCKED(s)                                                                         \
        _cleanup_(sim_sess_unlockp) _unused_ struct sim *_sess_locked = sim_sess_lock(s)

static void sim_sleep_ms(unsigned ms)
{
        struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };

        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

/* Read dir_fd/name whole (at most max bytes), NUL-terminated; -EFBIG past max. */
static int sim_read_file_max(int dir_fd, const char *name, size_t max, char **ret, size_t *ret_len)
{
        _cleanup_close_ int fd = -1;
        _cleanup_free_ char *buf = NULL;
        size_t len = 0, size = 0;

        fd = openat(dir_fd, name, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW);
        if (fd < 0)
                return negative_errno();
        for (;;) {
                if (len == size) {
                        /* Grow by doubling from 64 KiB, to max + 1 (to see a file past max). */
                        size_t nsize = size ? MIN(size * 2, max + 1) : MIN(SIM_FILE_MAX, max + 1);
                        char *nbuf = realloc(buf, nsize + 1);
                        if (!nbuf)
                                return -ENOMEM;
                        buf = nbuf;
                        size = nsize;
                }
                ssize_t n = read(fd, buf + len, size - len);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return negative_errno();
                }
                if (n == 0)
                        break;
                len += (size_t)n;
                if (len > max)
                        return -EFBIG;
        }
        buf[len] = 0;
        *ret = TAKE_PTR(buf);
        *ret_len = len;
        return 0;
}

static int sim_read_file_at(int dir_fd, const char *name, char **ret, size_t *ret_len)
{
        return sim_read_file_max(dir_fd, name, SIM_FILE_MAX, ret, ret_len);
}

static bool sha256_hex_valid(const char *s)
{
        if (strlen(s) != SHA256_HEX_LEN)
                return false;
        for (const char *p = s; *p; p++)
                if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
                        return false;
        return true;
}

/* Copy a string into a fixed field; -EBADMSG when it does not fit. */
static int copy_field(char *dst, size_t size, const char *src)
{
        size_t n = strlen(src);
        if (n >= size)
                return -EBADMSG;
        memcpy(dst, src, n + 1);
        return 0;
}

/*
 * Parse kernel.json. Returns 0, -EBADMSG (with a reason in why) or -errno.
 */
static int sim_kstate_from_json(const char *text, size_t len, struct sim_kstate *ret, char *why,
                                size_t why_size)
{
        struct sim_kstate k = {};
        json_error_t err;
        json_t *j, *kexec = NULL;
        const char *state, *boot_id, *release;
        json_int_t boots;
        int pending, r = -EBADMSG;

        j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &err);
        if (!j) {
                backend_msgf(why, why_size, "%s (line %d)", err.text, err.line);
                return -EBADMSG;
        }
        if (json_unpack_ex(j, &err, 0, "{s:s, s:s, s:s, s:o, s:b, s:I}", "state", &state, "boot_id",
                           &boot_id, "release", &release, "kexec", &kexec, "reboot_pending",
                           &pending, "boots", &boots) < 0) {
                backend_msgf(why, why_size, "%s", err.text);
                goto out;
        }
        r = luo_state_from_string(state);
        if (r < 0 || strchr(state, '\n')) {
                backend_msgf(why, why_size, "unknown state \"%s\"", state);
                r = -EBADMSG;
                goto out;
        }
        k.state = (enum luo_state)r;
        r = -EBADMSG;
        if (!uuid_valid(boot_id)) {
                backend_msgf(why, why_size, "invalid boot_id \"%s\"", boot_id);
                goto out;
        }
        memcpy(k.boot_id, boot_id, 37);
        if (release[0] == 0 || copy_field(k.release, sizeof(k.release), release) < 0) {
                backend_msgf(why, why_size, "invalid release");
                goto out;
        }
        if (boots < 1) {
                backend_msgf(why, why_size, "invalid boots %lld", (long long)boots);
                goto out;
        }
        k.boots = (uint64_t)boots;
        k.reboot_pending = pending;
        json_t *booted = json_object_get(j, "booted_usec");
        if (booted && (!json_is_integer(booted) || json_integer_value(booted) < 0)) {
                backend_msgf(why, why_size, "invalid booted_usec");
                goto out;
        }
        k.booted_usec = booted ? (uint64_t)json_integer_value(booted) : 0;
        json_t *handover = json_object_get(j, "handover");
        if (handover && (!json_is_string(handover) || !uuid_valid(json_string_value(handover)))) {
                backend_msgf(why, why_size, "invalid handover");
                goto out;
        }
        if (handover)
                memcpy(k.handover, json_string_value(handover), 37);

        json_t *applied = json_object_get(j, "applied");
        if (applied && !json_is_object(applied)) {
                backend_msgf(why, why_size, "applied is not an object");
                goto out;
        }
        for (int i = 0; applied && i < _SIM_APPLIED_MAX; i++) {
                json_t *v = json_object_get(applied, sim_applied_names[i]);
                if (!v)
                        continue;
                if (!json_is_integer(v) || json_integer_value(v) < 0) {
                        backend_msgf(why, why_size, "invalid applied.%s", sim_applied_names[i]);
                        goto out;
                }
                k.applied[i] = (uint64_t)json_integer_value(v);
        }

        if (!json_is_null(kexec)) {
                const char *ksha, *isha = NULL, *cmdline;
                json_t *initrd;
                json_int_t size;

                if (json_unpack_ex(kexec, &err, 0, "{s:s, s:o, s:s, s:I}", "kernel_sha256", &ksha,
                                   "initrd_sha256", &initrd, "cmdline", &cmdline, "kernel_size",
                                   &size) < 0) {
                        backend_msgf(why, why_size, "kexec: %s", err.text);
                        goto out;
                }
                if (json_is_string(initrd))
                        isha = json_string_value(initrd);
                else if (!json_is_null(initrd)) {
                        backend_msgf(why, why_size, "kexec: initrd_sha256 is not a string");
                        goto out;
                }
                if (!sha256_hex_valid(ksha) || (isha && !sha256_hex_valid(isha)) || size < 1 ||
                    copy_field(k.cmdline, sizeof(k.cmdline), cmdline) < 0) {
                        backend_msgf(why, why_size, "invalid kexec image record");
                        goto out;
                }
                json_t *nrel = json_object_get(kexec, "release");
                if (nrel &&
                    (!json_is_string(nrel) || copy_field(k.next_release, sizeof(k.next_release),
                                                         json_string_value(nrel)) < 0)) {
                        backend_msgf(why, why_size, "kexec: invalid release");
                        goto out;
                }
                k.kexec = true;
                memcpy(k.kernel_sha256, ksha, SHA256_HEX_LEN + 1);
                if (isha)
                        memcpy(k.initrd_sha256, isha, SHA256_HEX_LEN + 1);
                k.kernel_size = (uint64_t)size;
        }

        *ret = k;
        r = 0;
out:
        json_decref(j);
        return r;
}

static int sim_persist(struct sim *s, const struct sim_kstate *k)
{
        _cleanup_free_ char *text = NULL;
        json_t *j, *kexec;
        int r;

        if (k->kexec)
                kexec = json_pack("{s:s, s:s?, s:s, s:I, s:s*}", "kernel_sha256", k->kernel_sha256,
                                  "initrd_sha256", k->initrd_sha256[0] ? k->initrd_sha256 : NULL,
                                  "cmdline", k->cmdline, "kernel_size", (json_int_t)k->kernel_size,
                                  "release", k->next_release[0] ? k->next_release : NULL);
        else
                kexec = json_null();
        if (!kexec)
                return -ENOMEM;
        /* "o" steals kexec, even on failure. */
        j = json_pack("{s:s, s:s, s:s, s:o, s:b, s:I}", "state", luo_state_to_string(k->state),
                      "boot_id", k->boot_id, "release", k->release, "kexec", kexec,
                      "reboot_pending", (int)k->reboot_pending, "boots", (json_int_t)k->boots);
        if (!j)
                return -ENOMEM;
        if (k->booted_usec &&
            json_object_set_new(j, "booted_usec", json_integer((json_int_t)k->booted_usec)) < 0) {
                json_decref(j);
                return -ENOMEM;
        }
        if (k->handover[0] && json_object_set_new(j, "handover", json_string(k->handover)) < 0) {
                json_decref(j);
                return -ENOMEM;
        }
        json_t *applied = json_object();
        for (int i = 0; applied && i < _SIM_APPLIED_MAX; i++)
                json_object_set_new(applied, sim_applied_names[i],
                                    json_integer((json_int_t)k->applied[i]));
        if (!applied || json_object_set_new(j, "applied", applied) < 0) {
                json_decref(j);
                return -ENOMEM;
        }
        text = json_dumps(j, JSON_INDENT(2));
        json_decref(j);
        if (!text)
                return -ENOMEM;

        size_t len = strlen(text);
        _cleanup_free_ char *line = malloc(len + 2);
        if (!line)
                return -ENOMEM;
        memcpy(line, text, len);
        line[len] = '\n';
        line[len + 1] = 0;
        r = write_file_atomic_at(s->dir_fd, SIM_STATE_FILE, line, len + 1, 0600);
        return r;
}

static void sim_notify(struct sim *s)
{
        uint64_t one = 1;

        /* Nonblocking; the counter cannot realistically overflow, so ignore EAGAIN. */
        (void)!write(s->event_fd, &one, sizeof(one));
}

/* Persist n and make it current; notify watchers when the state moved. op_lock held. */
static int sim_update(struct sim *s, const struct sim_kstate *n)
{
        bool changed;
        int r;

        r = sim_persist(s, n);
        if (r < 0)
                return r;
        pthread_mutex_lock(&s->lock);
        changed = s->k.state != n->state;
        s->k = *n;
        pthread_mutex_unlock(&s->lock);
        if (changed)
                sim_notify(s);
        return 0;
}

/*
 * "preserve=SPEC" of the faults file: the value has the syntax of any other
 * op's, so it is parsed as one (backend_config_add_fault() knows no
 * "preserve"). Returns 0, or -EINVAL.
 */
static int sim_parse_preserve_fault(const char *value, struct sim_fault *ret)
{
        struct backend_config one = {};
        char spec[128];

        if (snprintf(spec, sizeof(spec), "prepare=%s", value) >= (int)sizeof(spec))
                return -EINVAL;
        if (backend_config_add_fault(&one, spec) < 0)
                return -EINVAL;
        *ret = one.faults[SIM_FAULT_PREPARE];
        return 0;
}

/*
 * The faults in force now: cfg's, overridden op by op by the runtime file.
 * A malformed file fails the operation with -EBADMSG rather than silently
 * running without the fault a test asked for.
 */
static int sim_load_faults(struct sim *s, struct sim_fault ret[static SIM_FAULTS_N])
{
        _cleanup_free_ char *text = NULL;
        struct backend_config tmp = {};
        struct sim_fault preserve = { .error = -1 };
        size_t len;
        char *line, *save = NULL;
        int r;

        memcpy(ret, s->faults, sizeof(s->faults));
        ret[SIM_FAULT_PRESERVE] = (struct sim_fault){};
        r = sim_read_file_at(s->dir_fd, SIM_FAULTS_FILE, &text, &len);
        if (r == -ENOENT)
                return 0;
        if (r == -EFBIG)
                return -EBADMSG;
        if (r < 0)
                return r;
        if (memchr(text, 0, len))
                return -EBADMSG;

        /* error = -1 marks the ops the file does not mention. */
        for (int i = 0; i < _SIM_FAULT_OP_MAX; i++)
                tmp.faults[i].error = -1;
        for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
                char *hash = strchr(line, '#');
                if (hash)
                        *hash = 0;
                while (*line == ' ' || *line == '\t')
                        line++;
                strip_trailing(line);
                if (*line == 0)
                        continue;
                if (strncmp(line, "preserve=", strlen("preserve=")) == 0) {
                        if (sim_parse_preserve_fault(line + strlen("preserve="), &preserve) < 0)
                                return -EBADMSG;
                        continue;
                }
                if (backend_config_add_fault(&tmp, line) < 0)
                        return -EBADMSG;
        }
        for (int i = 0; i < _SIM_FAULT_OP_MAX; i++)
                if (tmp.faults[i].error >= 0)
                        ret[i] = tmp.faults[i];
        if (preserve.error >= 0)
                ret[SIM_FAULT_PRESERVE] = preserve;
        return 0;
}

/*
 * Where a simulated kernel call meets its fault: load the faults (the
 * runtime file may have changed), stall, then fail with the configured errno
 * or return 0 to go on. faults is filled for callers that need other ops'.
 */
static int sim_strike(struct sim *s, int op, struct sim_fault faults[static SIM_FAULTS_N])
{
        int r = sim_load_faults(s, faults);
        if (r < 0)
                return r;
        sim_sleep_ms(faults[op].delay_ms);
        return faults[op].error ? -faults[op].error : 0;
}

static int sha256_fd(int fd, char hex[static SHA256_HEX_LEN + 1], uint64_t *ret_size)
{
        _cleanup_free_ uint8_t *buf = NULL;
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned mdlen = 0;
        EVP_MD_CTX *ctx;
        uint64_t off = 0;
        int r = 0;

        buf = malloc(64 * 1024);
        ctx = EVP_MD_CTX_new();
        if (!buf || !ctx) {
                EVP_MD_CTX_free(ctx);
                return -ENOMEM;
        }
        if (EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1)
                r = -EIO;
        /* pread from 0: the caller's file offset is neither used nor moved. */
        while (r == 0) {
                ssize_t n = pread(fd, buf, 64 * 1024, (off_t)off);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        r = negative_errno();
                        break;
                }
                if (n == 0)
                        break;
                if (EVP_DigestUpdate(ctx, buf, (size_t)n) != 1)
                        r = -EIO;
                off += (uint64_t)n;
        }
        if (r == 0 && (EVP_DigestFinal_ex(ctx, md, &mdlen) != 1 || mdlen != 32))
                r = -EIO;
        EVP_MD_CTX_free(ctx);
        if (r < 0)
                return r;
        hex_encode(md, 32, hex);
        *ret_size = off;
        return 0;
}

/* ---- sessions: the table, the files, the handover on disk ---- */

static struct sim_session *sim_session_free(struct sim_session *ss)
{
        if (!ss)
                return NULL;
        for (size_t i = 0; i < ss->n_files; i++)
                if (ss->files[i].fd >= 0)
                        close(ss->files[i].fd);
        free(ss->files);
        if (ss->handle >= 0)
                close(ss->handle);
        free(ss);
        return NULL;
}

static void sim_session_freep(struct sim_session **p)
{
        *p = sim_session_free(*p);
}

static struct sim_session *sim_session_new(const char *name, bool incoming)
{
        struct sim_session *ss = calloc(1, sizeof(*ss));

        if (!ss)
                return NULL;
        /* the callers checked: 1..63 bytes */
        memcpy(ss->name, name, strlen(name) + 1);
        ss->incoming = incoming;
        ss->handle = -1;
        return ss;
}

/* Room for one more session in the table. sess_lock held (or not yet shared). */
static int sim_sessions_reserve(struct sim *s)
{
        struct sim_session **n = reallocarray(s->sessions, s->n_sessions + 1, sizeof(*n));

        if (!n)
                return -ENOMEM;
        s->sessions = n;
        return 0;
}

/* Drop sessions[i] (its files, its handle). sess_lock held. */
static void sim_session_remove(struct sim *s, size_t i)
{
        sim_session_free(s->sessions[i]);
        memmove(&s->sessions[i], &s->sessions[i + 1],
                (s->n_sessions - i - 1) * sizeof(*s->sessions));
        s->n_sessions--;
}

static bool sim_going_down(struct sim *s)
{
        bool r;

        pthread_mutex_lock(&s->lock);
        r = s->k.reboot_pending;
        pthread_mutex_unlock(&s->lock);
        return r;
}

/* 1..63 bytes (the kernel's 64-byte field, NUL included), else -EINVAL. */
static int sim_session_name_check(const char *name)
{
        size_t len;

        if (!name)
                return -EINVAL;
        len = strnlen(name, LUO_SESSION_NAME_MAX);
        return len == 0 || len >= LUO_SESSION_NAME_MAX ? -EINVAL : 0;
}

/*
 * Give ss a handle: an empty memfd of the sim's own, a distinct inode that
 * names the session; *ret_fd is the caller's dup of it.
 */
static int sim_session_open_handle(struct sim_session *ss, int *ret_fd)
{
        _cleanup_close_ int h = -1, fd = -1;
        struct stat st;

        h = memfd_create("luofleet-sim-session", MFD_CLOEXEC);
        if (h < 0 || fstat(h, &st) < 0)
                return negative_errno();
        fd = fcntl(h, F_DUPFD_CLOEXEC, 3);
        if (fd < 0)
                return negative_errno();
        ss->handle = TAKE_FD(h);
        ss->hdev = st.st_dev;
        ss->hino = st.st_ino;
        *ret_fd = TAKE_FD(fd);
        return 0;
}

static struct sim_session *sim_session_by_stat(struct sim *s, const struct stat *st,
                                               size_t *ret_index)
{
        for (size_t i = 0; i < s->n_sessions; i++) {
                struct sim_session *ss = s->sessions[i];
                if (ss->handle >= 0 && ss->hdev == st->st_dev && ss->hino == st->st_ino) {
                        if (ret_index)
                                *ret_index = i;
                        return ss;
                }
        }
        return NULL;
}

/*
 * The session a caller's handle names. sess_lock held. -EBADF: not an open
 * descriptor; -EINVAL: not a session handle of this sim (the kernel's answer
 * to a session ioctl on another file).
 */
static int sim_session_find(struct sim *s, int session, struct sim_session **ret, size_t *ret_index)
{
        struct stat st;

        if (session < 0 || fstat(session, &st) < 0)
                return -EBADF;
        *ret = sim_session_by_stat(s, &st, ret_index);
        return *ret ? 0 : -EINVAL;
}

/*
 * Can mainline's memfd handler preserve this file? Only shmem files answer
 * F_GET_SEALS; of those, memfds are unlinked (a tmpfs file with a name is
 * not one), and hugetlb memfds (hugetlbfs, not tmpfs) are refused as 7.3
 * refuses them. No handler: -ENOENT.
 */
static int sim_preservable(int fd, const struct stat *st)
{
        struct statfs sfs;

        if (fcntl(fd, F_GET_SEALS) < 0)
                return -ENOENT;
        if (!S_ISREG(st->st_mode) || st->st_nlink != 0)
                return -ENOENT;
        if (fstatfs(fd, &sfs) < 0)
                return negative_errno();
        if ((unsigned long)sfs.f_type != (unsigned long)TMPFS_MAGIC)
                return -ENOENT; /* HUGETLBFS_MAGIC */
        return 0;
}

/*
 * Copy the first size bytes of in to the same offsets of out (offsets of
 * neither descriptor move): copy_file_range, or pread/pwrite where the
 * kernel cannot (across file systems). A source shorter than size leaves the
 * rest as it was (the caller sized out: zeros).
 */
static int sim_copy(int in, int out, uint64_t size)
{
        _cleanup_free_ char *buf = NULL;
        uint64_t off = 0;
        bool cfr = true;

        while (off < size) {
                size_t chunk = (size_t)MIN(size - off, (uint64_t)(1u << 20));
                if (cfr) {
                        loff_t ioff = (loff_t)off, ooff = (loff_t)off;
                        ssize_t n = copy_file_range(in, &ioff, out, &ooff, chunk, 0);
                        if (n > 0) {
                                off += (uint64_t)n;
                                continue;
                        }
                        if (n == 0)
                                return 0; /* the source ended early */
                        if (errno == EINTR)
                                continue;
                        if (errno != EXDEV && errno != EINVAL && errno != ENOSYS &&
                            errno != EOPNOTSUPP && errno != EPERM)
                                return negative_errno();
                        cfr = false;
                }
                if (!buf) {
                        buf = malloc(1u << 20);
                        if (!buf)
                                return -ENOMEM;
                }
                ssize_t n = pread(in, buf, chunk, (off_t)off);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return negative_errno();
                }
                if (n == 0)
                        return 0;
                for (size_t done = 0; done < (size_t)n;) {
                        ssize_t w = pwrite(out, buf + done, (size_t)n - done, (off_t)(off + done));
                        if (w < 0) {
                                if (errno == EINTR)
                                        continue;
                                return negative_errno();
                        }
                        done += (size_t)w;
                }
                off += (uint64_t)n;
        }
        return 0;
}

/* rm -rf dir_fd/name without following symlinks, at most depth levels. ENOENT is success. */
static int sim_rm_rf_at(int dir_fd, const char *name, int depth)
{
        _cleanup_close_ int fd = -1;
        struct dirent *de;
        DIR *d;
        int r = 0;

        if (unlinkat(dir_fd, name, 0) == 0 || errno == ENOENT)
                return 0;
        if (errno != EISDIR && errno != EPERM)
                return negative_errno();
        if (depth <= 0)
                return -ELOOP;
        fd = openat(dir_fd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0)
                return errno == ENOENT ? 0 : negative_errno();
        d = fdopendir(fd);
        if (!d)
                return negative_errno();
        fd = -1; /* the DIR owns it */
        while ((errno = 0, de = readdir(d))) {
                if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                        continue;
                int q = sim_rm_rf_at(dirfd(d), de->d_name, depth - 1);
                if (q < 0 && r == 0)
                        r = q;
        }
        if (errno != 0 && r == 0)
                r = negative_errno();
        closedir(d);
        if (unlinkat(dir_fd, name, AT_REMOVEDIR) < 0 && errno != ENOENT && r == 0)
                r = negative_errno();
        return r;
}

/* <sim>/sessions/, created when create is set. Returns an fd or -errno. */
static int sim_sessions_dir(struct sim *s, bool create)
{
        int fd;

        if (create && mkdirat(s->dir_fd, SIM_SESSIONS_DIR, 0700) < 0 && errno != EEXIST)
                return negative_errno();
        fd = openat(s->dir_fd, SIM_SESSIONS_DIR, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
        return fd < 0 ? negative_errno() : fd;
}

static int sim_mkdir_open_at(int dir_fd, const char *name)
{
        int fd;

        if (mkdirat(dir_fd, name, 0700) < 0)
                return negative_errno();
        fd = openat(dir_fd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
        return fd < 0 ? negative_errno() : fd;
}

/* One outgoing file into dir_fd/<token>, fsynced; its entry for the index in *ret. */
static int sim_handover_file(int dir_fd, const struct sim_sfile *f, json_t **ret)
{
        _cleanup_close_ int out = -1;
        char fname[24];
        struct stat st;
        off_t pos;
        int seals, r;

        if (fstat(f->fd, &st) < 0)
                return negative_errno();
        seals = fcntl(f->fd, F_GET_SEALS);
        if (seals < 0)
                return negative_errno();
        /* the open file's position (the dup shares it with the workload's descriptor) */
        pos = lseek(f->fd, 0, SEEK_CUR);
        if (pos < 0)
                return negative_errno();
        snprintf(fname, sizeof(fname), "%" PRIu64, f->token);
        out = openat(dir_fd, fname, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (out < 0)
                return negative_errno();
        if (ftruncate(out, st.st_size) < 0)
                return negative_errno();
        r = sim_copy(f->fd, out, (uint64_t)st.st_size);
        if (r < 0)
                return r;
        if (fsync(out) < 0)
                return negative_errno();
        *ret = json_pack("{s:s, s:I, s:i, s:I}", "token", fname, "size", (json_int_t)st.st_size,
                         "seals", seals, "position", (json_int_t)pos);
        return *ret ? 0 : -ENOMEM;
}

/* One outgoing session into tmp_fd/<dir>; its index entry in *ret. */
static int sim_handover_session(int tmp_fd, const struct sim_session *ss, const char *dir,
                                json_t **ret)
{
        _cleanup_close_ int dir_fd = -1;
        char name_hex[2 * LUO_SESSION_NAME_MAX + 1];
        json_t *e, *files;
        size_t len = strlen(ss->name);
        int r;

        dir_fd = sim_mkdir_open_at(tmp_fd, dir);
        if (dir_fd < 0)
                return dir_fd;
        hex_encode((const uint8_t *)ss->name, len, name_hex);
        /* "name" for the reader, when it is valid UTF-8; name_hex is what counts */
        e = json_pack("{s:s, s:s, s:[]}", "name_hex", name_hex, "dir", dir, "files");
        if (!e)
                return -ENOMEM;
        json_t *jname = json_stringn(ss->name, len);
        if (jname)
                json_object_set_new(e, "name", jname);
        files = json_object_get(e, "files");
        for (size_t i = 0; i < ss->n_files; i++) {
                json_t *fe = NULL;
                r = sim_handover_file(dir_fd, &ss->files[i], &fe);
                if (r >= 0 && json_array_append_new(files, fe) < 0)
                        r = -ENOMEM;
                if (r < 0) {
                        json_decref(e);
                        return r;
                }
        }
        if (fsync(dir_fd) < 0) {
                json_decref(e);
                return negative_errno();
        }
        *ret = e;
        return 0;
}

/*
 * The simulated kexec's serialisation: every outgoing session that has files,
 * and the marker, into sessions/<boot_id>/ (a temp dir first, fsynced, then
 * renamed). Nothing to hand over: nothing written. op_lock and sess_lock held.
 */
static int sim_handover_write(struct sim *s, const char *boot_id)
{
        _cleanup_close_ int sessions_fd = -1, tmp_fd = -1;
        _cleanup_free_ char *text = NULL;
        char tmp[64];
        size_t n = 0;
        json_t *index, *list;
        int r;

        for (size_t i = 0; i < s->n_sessions; i++)
                if (!s->sessions[i]->incoming && s->sessions[i]->n_files > 0)
                        n++;
        sessions_fd = sim_sessions_dir(s, n > 0 || s->marker);
        if (sessions_fd == -ENOENT)
                return 0; /* nothing to write, nothing stale */
        if (sessions_fd < 0)
                return sessions_fd;
        /* a handover of this boot an earlier, crashed reboot call left behind */
        r = sim_rm_rf_at(sessions_fd, boot_id, SIM_HANDOVER_DEPTH);
        if (r < 0 || (n == 0 && !s->marker))
                return r;

        snprintf(tmp, sizeof(tmp), SIM_HANDOVER_TMP_PREFIX "%s", boot_id);
        r = sim_rm_rf_at(sessions_fd, tmp, SIM_HANDOVER_DEPTH);
        if (r < 0)
                return r;
        tmp_fd = sim_mkdir_open_at(sessions_fd, tmp);
        if (tmp_fd < 0)
                return tmp_fd;

        index = json_pack("{s:i, s:s, s:n, s:[]}", "version", SIM_INDEX_VERSION, "boot_id", boot_id,
                          "marker", "sessions");
        if (!index) {
                r = -ENOMEM;
                goto fail;
        }
        list = json_object_get(index, "sessions");
        for (size_t i = 0, d = 0; i < s->n_sessions; i++) {
                const struct sim_session *ss = s->sessions[i];
                char dir[24];
                json_t *e = NULL;

                if (ss->incoming || ss->n_files == 0)
                        continue;
                snprintf(dir, sizeof(dir), "%zu", d++);
                r = sim_handover_session(tmp_fd, ss, dir, &e);
                if (r >= 0 && json_array_append_new(list, e) < 0)
                        r = -ENOMEM;
                if (r < 0)
                        goto fail;
        }
        if (s->marker) {
                r = write_file_atomic_at(tmp_fd, SIM_MARKER_FILE, s->marker, s->marker_len, 0600);
                if (r >= 0 &&
                    json_object_set_new(index, "marker",
                                        json_pack("{s:I}", "size", (json_int_t)s->marker_len)) < 0)
                        r = -ENOMEM;
                if (r < 0)
                        goto fail;
        }
        text = json_dumps(index, JSON_INDENT(2));
        json_decref(TAKE_PTR(index));
        if (!text) {
                r = -ENOMEM;
                goto fail;
        }
        /* the index last: its presence says the directory is complete (fsyncs tmp too) */
        r = write_file_atomic_at(tmp_fd, SIM_INDEX_FILE, text, strlen(text), 0600);
        if (r < 0)
                goto fail;
        if (renameat(sessions_fd, tmp, sessions_fd, boot_id) < 0) {
                r = negative_errno();
                goto fail;
        }
        if (fsync(sessions_fd) < 0 || fsync(s->dir_fd) < 0) {
                r = negative_errno();
                (void)sim_rm_rf_at(sessions_fd, boot_id, SIM_HANDOVER_DEPTH);
                return r;
        }
        return 0;

fail:
        json_decref(index);
        (void)sim_rm_rf_at(sessions_fd, tmp, SIM_HANDOVER_DEPTH);
        return r;
}

/* Undo sim_handover_write() (the reboot failed after it). Best effort. */
static void sim_handover_discard(struct sim *s, const char *boot_id)
{
        _cleanup_close_ int sessions_fd = sim_sessions_dir(s, false);

        if (sessions_fd >= 0)
                (void)sim_rm_rf_at(sessions_fd, boot_id, SIM_HANDOVER_DEPTH);
}

/*
 * Nothing of the incoming handover is needed any more (no session with files
 * on disk, no marker): remove the directory. sess_lock held.
 */
static void sim_handover_maybe_remove(struct sim *s)
{
        _cleanup_close_ int sessions_fd = -1;

        if (s->handover_fd < 0 || s->handover_marker)
                return;
        for (size_t i = 0; i < s->n_sessions; i++)
                if (s->sessions[i]->incoming && !s->sessions[i]->finished)
                        return;
        close(s->handover_fd);
        s->handover_fd = -1;
        sessions_fd = sim_sessions_dir(s, false);
        if (sessions_fd >= 0)
                (void)sim_rm_rf_at(sessions_fd, s->handover_name, SIM_HANDOVER_DEPTH);
}

/*
 * An incoming session is finished (FINISH, its release, or the FINISH event
 * for one never retrieved): its files are freed, in memory and on disk.
 * Descriptors the caller got from retrieve_fd stay valid. sess_lock held.
 */
static void sim_incoming_finish(struct sim *s, struct sim_session *ss)
{
        if (ss->finished)
                return;
        ss->finished = true;
        for (size_t i = 0; i < ss->n_files; i++)
                if (ss->files[i].fd >= 0) {
                        close(ss->files[i].fd);
                        ss->files[i].fd = -1;
                }
        if (s->handover_fd >= 0)
                (void)sim_rm_rf_at(s->handover_fd, ss->dir, SIM_HANDOVER_DEPTH - 2);
        sim_handover_maybe_remove(s);
}

/*
 * The FINISH event: like the kernel, the sessions nobody retrieved are freed,
 * and with them the marker. Retrieved ones live on until their own finish.
 * sess_lock held.
 */
static void sim_incoming_finish_event(struct sim *s)
{
        for (size_t i = 0; i < s->n_sessions;) {
                struct sim_session *ss = s->sessions[i];
                if (ss->incoming && !ss->retrieved) {
                        sim_incoming_finish(s, ss);
                        sim_session_remove(s, i);
                } else
                        i++;
        }
        if (s->handover_fd >= 0 && s->handover_marker)
                (void)unlinkat(s->handover_fd, SIM_MARKER_FILE, 0);
        s->handover_marker = false;
        sim_handover_maybe_remove(s);
}

static int unhex(char c)
{
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        return -1;
}

/* name_hex of the index: 1..63 bytes, no NUL. */
static int sim_name_from_hex(const char *hex, char name[static LUO_SESSION_NAME_MAX])
{
        size_t len = strlen(hex);

        if (len == 0 || len % 2 || len / 2 >= LUO_SESSION_NAME_MAX)
                return -EBADMSG;
        for (size_t i = 0; i < len / 2; i++) {
                int hi = unhex(hex[2 * i]), lo = unhex(hex[2 * i + 1]);
                if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
                        return -EBADMSG;
                name[i] = (char)(hi << 4 | lo);
        }
        name[len / 2] = 0;
        return 0;
}

static bool sim_dir_name_valid(const char *d)
{
        size_t len = strlen(d);

        if (len == 0 || len > 20)
                return false;
        for (; *d; d++)
                if (*d < '0' || *d > '9')
                        return false;
        return true;
}

/* One session of the index into an incoming session (not yet in the table). */
static int sim_incoming_from_json(json_t *e, struct sim_session **ret, char *why, size_t why_size)
{
        _cleanup_(sim_session_freep) struct sim_session *ss = NULL;
        char name[LUO_SESSION_NAME_MAX];
        const char *name_hex, *dir;
        json_error_t err;
        json_t *files, *fe;
        size_t i;

        if (json_unpack_ex(e, &err, 0, "{s:s, s:s, s:o}", "name_hex", &name_hex, "dir", &dir,
                           "files", &files) < 0) {
                backend_msgf(why, why_size, "session: %s", err.text);
                return -EBADMSG;
        }
        if (sim_name_from_hex(name_hex, name) < 0 || !sim_dir_name_valid(dir) ||
            !json_is_array(files)) {
                backend_msgf(why, why_size, "invalid session entry");
                return -EBADMSG;
        }
        ss = sim_session_new(name, true);
        if (!ss)
                return -ENOMEM;
        memcpy(ss->dir, dir, strlen(dir) + 1);
        ss->files = calloc(MAX(json_array_size(files), 1u), sizeof(*ss->files));
        if (!ss->files)
                return -ENOMEM;
        json_array_foreach (files, i, fe) {
                struct sim_sfile *f = &ss->files[i];
                const char *token;
                json_int_t size, pos;
                int seals;

                if (json_unpack_ex(fe, &err, 0, "{s:s, s:I, s:i, s:I}", "token", &token, "size",
                                   &size, "seals", &seals, "position", &pos) < 0) {
                        backend_msgf(why, why_size, "session file: %s", err.text);
                        return -EBADMSG;
                }
                if (parse_u64(token, UINT64_MAX, &f->token) < 0 || size < 0 || pos < 0 ||
                    seals < 0 || (seals & ~SIM_SEALS_KNOWN)) {
                        backend_msgf(why, why_size, "invalid session file entry");
                        return -EBADMSG;
                }
                for (size_t j = 0; j < i; j++)
                        if (ss->files[j].token == f->token) {
                                backend_msgf(why, why_size, "token %s twice", token);
                                return -EBADMSG;
                        }
                f->fd = -1;
                f->size = (uint64_t)size;
                f->pos = (uint64_t)pos;
                f->seals = seals;
                ss->n_files = i + 1;
        }
        *ret = TAKE_PTR(ss);
        return 0;
}

/*
 * At open: remove from sessions/ whatever is not the handover this boot
 * received (an older boot's, a temp dir of a crashed reboot, a handover a
 * reboot call wrote before it failed or crashed), then load that handover:
 * its sessions that are still on disk and were not retrieved by an earlier
 * process of this boot become the incoming set (one an earlier process
 * retrieved was finished when it died, as the kernel finishes a session whose
 * fd is closed: removed now). -EBADMSG with a reason when the index is
 * damaged (the kernel panics on handover data it cannot parse).
 */
static int sim_handover_load(struct sim *s, char *why, size_t why_size)
{
        _cleanup_close_ int sessions_fd = -1, hfd = -1;
        _cleanup_free_ char *text = NULL;
        const char *boot_id;
        json_error_t err;
        json_t *j = NULL, *list, *marker, *e;
        size_t len, i;
        DIR *d;
        int r;

        sessions_fd = sim_sessions_dir(s, false);
        if (sessions_fd == -ENOENT)
                return 0;
        if (sessions_fd < 0)
                return sessions_fd;
        r = dup(sessions_fd);
        if (r < 0)
                return negative_errno();
        d = fdopendir(r);
        if (!d) {
                close(r);
                return negative_errno();
        }
        for (struct dirent *de; (de = readdir(d));) {
                if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0 ||
                    (s->k.handover[0] && strcmp(de->d_name, s->k.handover) == 0))
                        continue;
                (void)sim_rm_rf_at(sessions_fd, de->d_name, SIM_HANDOVER_DEPTH);
        }
        closedir(d);
        if (!s->k.handover[0])
                return 0;

        hfd = openat(sessions_fd, s->k.handover, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
        if (hfd < 0)
                return errno == ENOENT ? 0 : negative_errno(); /* all finished */
        r = sim_read_file_max(hfd, SIM_INDEX_FILE, SIM_INDEX_MAX, &text, &len);
        if (r < 0) {
                backend_msgf(why, why_size, SIM_INDEX_FILE ": %s", strerror(-r));
                return r == -ENOENT || r == -EFBIG ? -EBADMSG : r;
        }
        j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &err);
        if (!j) {
                backend_msgf(why, why_size, "%s (line %d)", err.text, err.line);
                return -EBADMSG;
        }
        r = -EBADMSG;
        int version;
        if (json_unpack_ex(j, &err, 0, "{s:i, s:s, s:o, s:o}", "version", &version, "boot_id",
                           &boot_id, "marker", &marker, "sessions", &list) < 0) {
                backend_msgf(why, why_size, "%s", err.text);
                goto out;
        }
        if (version != SIM_INDEX_VERSION || strcmp(boot_id, s->k.handover) != 0 ||
            !json_is_array(list) || !(json_is_null(marker) || json_is_object(marker))) {
                backend_msgf(why, why_size, "not a version %d handover of boot %s",
                             SIM_INDEX_VERSION, s->k.handover);
                goto out;
        }
        json_array_foreach (list, i, e) {
                _cleanup_(sim_session_freep) struct sim_session *ss = NULL;
                struct stat st;
                char mark[64];

                r = sim_incoming_from_json(e, &ss, why, why_size);
                if (r < 0)
                        goto out;
                for (size_t k = 0; k < s->n_sessions; k++)
                        if (strcmp(s->sessions[k]->name, ss->name) == 0 ||
                            strcmp(s->sessions[k]->dir, ss->dir) == 0) {
                                backend_msgf(why, why_size, "session \"%s\" twice", ss->name);
                                r = -EBADMSG;
                                goto out;
                        }
                if (fstatat(hfd, ss->dir, &st, AT_SYMLINK_NOFOLLOW) < 0)
                        continue; /* finished earlier in this boot */
                snprintf(mark, sizeof(mark), "%s/" SIM_RETRIEVED_FILE, ss->dir);
                if (fstatat(hfd, mark, &st, AT_SYMLINK_NOFOLLOW) == 0) {
                        /* retrieved by a process that is gone: finished implicitly */
                        (void)sim_rm_rf_at(hfd, ss->dir, SIM_HANDOVER_DEPTH - 2);
                        continue;
                }
                r = sim_sessions_reserve(s);
                if (r < 0)
                        goto out;
                s->sessions[s->n_sessions++] = TAKE_PTR(ss);
        }
        struct stat mst;
        s->handover_marker = json_is_object(marker) &&
                             fstatat(hfd, SIM_MARKER_FILE, &mst, AT_SYMLINK_NOFOLLOW) == 0;
        memcpy(s->handover_name, s->k.handover, 37);
        s->handover_fd = TAKE_FD(hfd);
        sim_handover_maybe_remove(s);
        r = 0;
out:
        json_decref(j);
        return r;
}

/* The incoming file's data into a new memfd: size, contents, position, seals. */
static int sim_restore_file(struct sim *s, const struct sim_session *ss, struct sim_sfile *f)
{
        _cleanup_close_ int in = -1, m = -1;
        char path[64];
        int r;

        snprintf(path, sizeof(path), "%s/%" PRIu64, ss->dir, f->token);
        in = openat(s->handover_fd, path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (in < 0)
                return negative_errno();
        m = memfd_create("luofleet-sim-restored", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (m < 0)
                return negative_errno();
        if (ftruncate(m, (off_t)f->size) < 0)
                return negative_errno();
        r = sim_copy(in, m, f->size);
        if (r < 0)
                return r;
        if (lseek(m, (off_t)f->pos, SEEK_SET) < 0)
                return negative_errno();
        if (f->seals && fcntl(m, F_ADD_SEALS, f->seals) < 0)
                return negative_errno();
        f->fd = TAKE_FD(m);
        return 0;
}

static void sim_sessions_free(struct sim *s)
{
        for (size_t i = 0; i < s->n_sessions; i++)
                sim_session_free(s->sessions[i]);
        free(s->sessions);
        s->sessions = NULL;
        s->n_sessions = 0;
        if (s->handover_fd >= 0)
                close(s->handover_fd);
        s->handover_fd = -1;
        free(s->marker);
        s->marker = NULL;
}

/* The outgoing marker goes when the machine leaves prepared/frozen for normal. op_lock held. */
static void sim_marker_drop(struct sim *s)
{
        free(s->marker);
        s->marker = NULL;
        s->marker_len = 0;
}

static void sim_free(struct backend *b)
{
        struct sim *s = to_sim(b);

        if (!s)
                return;
        if (s->event_fd >= 0)
                close(s->event_fd);
        if (s->lock_fd >= 0)
                close(s->lock_fd); /* releases the flock */
        if (s->dir_fd >= 0)
                close(s->dir_fd);
        sim_sessions_free(s);
        pthread_mutex_destroy(&s->sess_lock);
        pthread_mutex_destroy(&s->lock);
        pthread_mutex_destroy(&s->op_lock);
        free(s);
}

static void sim_freep(struct sim **p)
{
        if (*p)
                sim_free(&(*p)->base);
}

static int sim_get_state(struct backend *b, enum luo_state *ret)
{
        struct sim *s = to_sim(b);

        pthread_mutex_lock(&s->lock);
        *ret = s->k.state;
        pthread_mutex_unlock(&s->lock);
        return 0;
}

static int sim_watch_fd(struct backend *b)
{
        return to_sim(b)->event_fd;
}

static short sim_watch_events(struct backend *b)
{
        return POLLIN;
}

static int sim_watch_read(struct backend *b, enum luo_state *ret)
{
        struct sim *s = to_sim(b);
        uint64_t v;

        /* Drain: several changes coalesce into one wake-up and one re-read. */
        if (read(s->event_fd, &v, sizeof(v)) < 0 && errno != EAGAIN && errno != EINTR)
                return negative_errno();
        return sim_get_state(b, ret);
}

static int sim_set_event(struct backend *b, enum luo_event ev)
{
        struct sim *s = to_sim(b);
        struct sim_fault faults[SIM_FAULTS_N];
        struct sim_kstate n;
        enum luo_state to;
        int r;

        /* The kernel's answer to FREEZE through SET_EVENT: only reboot freezes. */
        if ((unsigned)ev >= _LUO_EVENT_MAX || ev == LUO_EVENT_FREEZE)
                return -EINVAL;

        SIM_OP_LOCKED(s);
        n = s->k; /* only op_lock holders write k */
        if (n.reboot_pending)
                return -EBUSY; /* the simulated kexec is under way */
        r = luo_state_apply_event(n.state, ev, &to);
        if (r < 0)
                return r;

        /* A valid event runs the subsystems' callbacks: that is where faults strike. */
        r = sim_strike(s, (int)ev, faults);
        if (r < 0)
                return r; /* a failing callback: the state stays */

        n.state = to;
        n.applied[ev == LUO_EVENT_PREPARE  ? SIM_APPLIED_PREPARE
                  : ev == LUO_EVENT_CANCEL ? SIM_APPLIED_CANCEL
                                           : SIM_APPLIED_FINISH]++;
        if (ev != LUO_EVENT_FINISH) {
                r = sim_update(s, &n);
                if (r >= 0 && ev == LUO_EVENT_CANCEL)
                        sim_marker_drop(s); /* the live update is off: nothing to vouch for */
                return r;
        }

        /*
         * FINISH: the handover is done with in the same write (a restart after
         * it offers nothing), then what nobody retrieved is freed.
         */
        pthread_mutex_lock(&s->sess_lock);
        n.handover[0] = 0;
        r = sim_update(s, &n);
        if (r >= 0)
                sim_incoming_finish_event(s);
        pthread_mutex_unlock(&s->sess_lock);
        return r;
}

static int sim_kexec_load(struct backend *b, int kernel_fd, int initrd_fd, const char *cmdline)
{
        struct sim *s = to_sim(b);
        struct sim_fault faults[SIM_FAULTS_N];
        struct sim_kstate n;
        uint64_t size, isize;
        int r;

        if (kernel_fd < 0)
                return -EBADF;
        if (!cmdline)
                cmdline = "";
        if (strlen(cmdline) + 1 > SIM_CMDLINE_MAX)
                return -EINVAL;

        SIM_OP_LOCKED(s);
        n = s->k;
        if (n.reboot_pending)
                return -EBUSY;
        r = sim_strike(s, SIM_FAULT_KEXEC_LOAD, faults);
        if (r < 0)
                return r;

        r = sha256_fd(kernel_fd, n.kernel_sha256, &size);
        if (r < 0)
                return r;
        if (size == 0)
                return -ENOEXEC; /* what the kernel says of an image it cannot parse */
        n.initrd_sha256[0] = 0;
        if (initrd_fd >= 0) {
                r = sha256_fd(initrd_fd, n.initrd_sha256, &isize);
                if (r < 0)
                        return r;
        }
        /* The kernel the image is: its header's release runs after the simulated kexec. */
        char version[256];
        n.next_release[0] = 0;
        if (bzimage_version_fd(kernel_fd, version, sizeof(version)) >= 0)
                bzimage_release(version, n.next_release, sizeof(n.next_release));
        n.kexec = true;
        n.kernel_size = size;
        memcpy(n.cmdline, cmdline, strlen(cmdline) + 1);
        n.applied[SIM_APPLIED_LOAD]++;
        return sim_update(s, &n);
}

static int sim_kexec_unload(struct backend *b)
{
        struct sim *s = to_sim(b);
        struct sim_kstate n;

        SIM_OP_LOCKED(s);
        n = s->k;
        if (n.reboot_pending)
                return -EBUSY;
        if (!n.kexec)
                return 0; /* like the kernel: unloading nothing succeeds */
        n.kexec = false;
        n.kernel_sha256[0] = n.initrd_sha256[0] = n.cmdline[0] = n.next_release[0] = 0;
        n.kernel_size = 0;
        n.applied[SIM_APPLIED_UNLOAD]++;
        return sim_update(s, &n);
}

static int sim_kexec_loaded(struct backend *b, bool *ret)
{
        struct sim *s = to_sim(b);

        pthread_mutex_lock(&s->lock);
        *ret = s->k.kexec;
        pthread_mutex_unlock(&s->lock);
        return 0;
}

/*
 * reboot(LINUX_REBOOT_CMD_KEXEC), as the v3 kernel does it: a reboot fault
 * fails the call before anything happens (like EPERM or a busy kexec lock);
 * from PREPARED the freeze callbacks run first (a freeze fault: back to
 * NORMAL and the error); then, without an image, the kexec fails with EINVAL
 * and the state stays where it is (FROZEN if it was prepared). With an image
 * the machine "goes down": reboot_pending is persisted and 0 returned.
 */
static int sim_reboot(struct backend *b)
{
        struct sim *s = to_sim(b);
        struct sim_fault faults[SIM_FAULTS_N];
        struct sim_kstate n;
        int r;

        SIM_OP_LOCKED(s);
        n = s->k;
        if (n.reboot_pending)
                return -EBUSY;
        r = sim_strike(s, SIM_FAULT_REBOOT, faults);
        if (r < 0)
                return r;

        if (n.state == LUO_STATE_PREPARED) {
                sim_sleep_ms(faults[SIM_FAULT_FREEZE].delay_ms);
                if (faults[SIM_FAULT_FREEZE].error) {
                        n.state = LUO_STATE_NORMAL;
                        r = sim_update(s, &n);
                        if (r >= 0)
                                sim_marker_drop(s);
                        return r < 0 ? r : -faults[SIM_FAULT_FREEZE].error;
                }
                n.state = LUO_STATE_FROZEN;
                n.applied[SIM_APPLIED_FREEZE]++;
                r = sim_update(s, &n);
                if (r < 0)
                        return r;
        }

        if (!n.kexec)
                return -EINVAL; /* kernel_kexec() without an image */

        /*
         * Mainline serialises every outgoing session inside the reboot call,
         * from any state (a plain kexec too): the handover is written, then
         * reboot_pending commits it. A failure returns the error; the state
         * stays (frozen from prepared), as when the kexec itself fails.
         */
        pthread_mutex_lock(&s->sess_lock);
        r = sim_handover_write(s, n.boot_id);
        if (r >= 0) {
                n.reboot_pending = true;
                n.applied[SIM_APPLIED_KEXEC]++;
                r = sim_update(s, &n);
                if (r < 0)
                        sim_handover_discard(s, n.boot_id);
        }
        pthread_mutex_unlock(&s->sess_lock);
        return r;
}

static int sim_get_info(struct backend *b, struct backend_info *ret)
{
        struct sim *s = to_sim(b);
        struct backend_info info = {};

        pthread_mutex_lock(&s->lock);
        memcpy(info.boot_id, s->k.boot_id, sizeof(s->k.boot_id));
        memcpy(info.release, s->k.release, sizeof(s->k.release));
        uint64_t booted = s->k.booted_usec, now = now_real_usec();
        pthread_mutex_unlock(&s->lock);
        /* The simulated boot's uptime: wall-clock time since sim_boot() (0 when unknown). */
        /* At least 1 ms: 0 means unknown, and the agent may ask within the boot's first ms. */
        info.uptime_ms = booted ? MAX((now > booted ? now - booted : 0) / 1000, 1u) : 0;
        *ret = info;
        return 0;
}

static int sim_self_check(struct backend *b, enum luo_state *ret_ioctl, enum luo_state *ret_sysfs)
{
        enum luo_state st;

        /* One source of truth: always consistent. */
        sim_get_state(b, &st);
        if (ret_ioctl)
                *ret_ioctl = st;
        if (ret_sysfs)
                *ret_sysfs = st;
        return 0;
}

/* ---- sessions: the backend members (kernel-abi.md section B) ---- */

static int sim_session_create(struct backend *b, const char *name, int *ret_session)
{
        struct sim *s = to_sim(b);
        _cleanup_(sim_session_freep) struct sim_session *ss = NULL;
        int fd, r;

        r = sim_session_name_check(name);
        if (r < 0)
                return r;
        if (!ret_session)
                return -EINVAL;

        SIM_SESS_LOCKED(s);
        if (sim_going_down(s))
                return -EBUSY;
        /* an incoming session of the same name is no conflict (mainline: separate sets) */
        for (size_t i = 0; i < s->n_sessions; i++)
                if (!s->sessions[i]->incoming && strcmp(s->sessions[i]->name, name) == 0)
                        return -EEXIST;
        ss = sim_session_new(name, false);
        if (!ss)
                return -ENOMEM;
        r = sim_sessions_reserve(s);
        if (r < 0)
                return r;
        r = sim_session_open_handle(ss, &fd);
        if (r < 0)
                return r;
        s->sessions[s->n_sessions++] = TAKE_PTR(ss);
        *ret_session = fd;
        return 0;
}

static int sim_session_preserve(struct backend *b, int session, int fd, uint64_t token)
{
        struct sim *s = to_sim(b);
        struct sim_fault faults[SIM_FAULTS_N];
        struct sim_session *ss;
        struct sim_sfile *nf;
        struct stat st;
        int r, dup_fd;

        SIM_SESS_LOCKED(s);
        r = sim_session_find(s, session, &ss, NULL);
        if (r < 0)
                return r;
        if (ss->incoming)
                return -EINVAL;
        if (sim_going_down(s))
                return -EBUSY;
        if (fd < 0 || fstat(fd, &st) < 0)
                return -EBADF;
        if (sim_session_by_stat(s, &st, NULL))
                return -ENOENT; /* a session fd: no handler */
        r = sim_preservable(fd, &st);
        if (r < 0)
                return r;
        for (size_t i = 0; i < ss->n_files; i++)
                if (ss->files[i].token == token)
                        return -EEXIST;
        for (size_t i = 0; i < s->n_sessions; i++) {
                const struct sim_session *o = s->sessions[i];
                for (size_t j = 0; !o->incoming && j < o->n_files; j++)
                        if (o->files[j].dev == st.st_dev && o->files[j].ino == st.st_ino)
                                return -EBUSY;
        }
        /* A valid call reaches the memfd handler: where the "preserve" fault strikes. */
        r = sim_strike(s, SIM_FAULT_PRESERVE, faults);
        if (r < 0)
                return r;

        nf = reallocarray(ss->files, ss->n_files + 1, sizeof(*nf));
        if (!nf)
                return -ENOMEM;
        ss->files = nf;
        dup_fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        if (dup_fd < 0)
                return negative_errno();
        ss->files[ss->n_files++] = (struct sim_sfile){
                .token = token, .fd = dup_fd, .dev = st.st_dev, .ino = st.st_ino
        };
        return 0;
}

/* Not in mainline (the broker rebuilds the session there); the sim offers it. */
static int sim_session_unpreserve(struct backend *b, int session, uint64_t token)
{
        struct sim *s = to_sim(b);
        struct sim_session *ss;
        int r;

        SIM_SESS_LOCKED(s);
        r = sim_session_find(s, session, &ss, NULL);
        if (r < 0)
                return r;
        if (ss->incoming)
                return -EINVAL;
        if (sim_going_down(s))
                return -EBUSY;
        for (size_t i = 0; i < ss->n_files; i++)
                if (ss->files[i].token == token) {
                        close(ss->files[i].fd);
                        memmove(&ss->files[i], &ss->files[i + 1],
                                (ss->n_files - i - 1) * sizeof(*ss->files));
                        ss->n_files--;
                        return 0;
                }
        return -ENOENT;
}

static int sim_session_retrieve(struct backend *b, const char *name, int *ret_session)
{
        struct sim *s = to_sim(b);
        struct sim_session *ss = NULL;
        _cleanup_close_ int fd = -1, mark = -1;
        char path[64];
        int r;

        r = sim_session_name_check(name);
        if (r < 0)
                return r;
        if (!ret_session)
                return -EINVAL;

        SIM_SESS_LOCKED(s);
        if (sim_going_down(s))
                return -EBUSY;
        for (size_t i = 0; !ss && i < s->n_sessions; i++)
                if (s->sessions[i]->incoming && strcmp(s->sessions[i]->name, name) == 0)
                        ss = s->sessions[i];
        if (!ss)
                return -ENOENT;
        if (ss->retrieved)
                return -EINVAL;
        /* Mark it on disk: a later process of this boot then knows it was finished
         * implicitly when this one died (see sim_handover_load). */
        snprintf(path, sizeof(path), "%s/" SIM_RETRIEVED_FILE, ss->dir);
        mark = openat(s->handover_fd, path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (mark < 0)
                return negative_errno();
        r = sim_session_open_handle(ss, &fd);
        if (r < 0) {
                (void)unlinkat(s->handover_fd, path, 0);
                return r;
        }
        ss->retrieved = true;
        *ret_session = TAKE_FD(fd);
        return 0;
}

static int sim_session_retrieve_fd(struct backend *b, int session, uint64_t token, int *ret_fd)
{
        struct sim *s = to_sim(b);
        struct sim_session *ss;
        int r, fd;

        if (!ret_fd)
                return -EINVAL;
        SIM_SESS_LOCKED(s);
        r = sim_session_find(s, session, &ss, NULL);
        if (r < 0)
                return r;
        if (!ss->incoming)
                return -EINVAL;
        if (sim_going_down(s))
                return -EBUSY;
        if (ss->finished)
                return -ENOENT;
        for (size_t i = 0; i < ss->n_files; i++) {
                struct sim_sfile *f = &ss->files[i];
                if (f->token != token)
                        continue;
                if (f->fd < 0) {
                        r = sim_restore_file(s, ss, f);
                        if (r < 0)
                                return r;
                }
                /* the same token again: the same file */
                fd = fcntl(f->fd, F_DUPFD_CLOEXEC, 3);
                if (fd < 0)
                        return negative_errno();
                *ret_fd = fd;
                return 0;
        }
        return -ENOENT;
}

static int sim_session_finish(struct backend *b, int session)
{
        struct sim *s = to_sim(b);
        struct sim_session *ss;
        int r;

        SIM_SESS_LOCKED(s);
        r = sim_session_find(s, session, &ss, NULL);
        if (r < 0)
                return r;
        if (!ss->incoming)
                return -EINVAL;
        if (sim_going_down(s))
                return -EBUSY;
        sim_incoming_finish(s, ss); /* a second FINISH: a no-op */
        return 0;
}

static void sim_session_release(struct backend *b, int session)
{
        struct sim *s = to_sim(b);
        struct sim_session *ss;
        size_t i;

        if (session < 0)
                return;
        pthread_mutex_lock(&s->sess_lock);
        if (sim_session_find(s, session, &ss, &i) == 0) {
                /* outgoing: its files are unpreserved; incoming: finished implicitly */
                if (ss->incoming)
                        sim_incoming_finish(s, ss);
                sim_session_remove(s, i);
        }
        pthread_mutex_unlock(&s->sess_lock);
        close(session);
}

/* ---- the marker ---- */

static int sim_marker_write(struct backend *b, const void *blob, size_t len)
{
        struct sim *s = to_sim(b);
        _cleanup_free_ void *copy = NULL;

        if (len > BACKEND_MARKER_MAX)
                return -EFBIG;
        if (!blob && len > 0)
                return -EINVAL;
        copy = malloc(MAX(len, 1u));
        if (!copy)
                return -ENOMEM;
        if (len)
                memcpy(copy, blob, len);

        SIM_OP_LOCKED(s);
        /* only op_lock holders write k */
        if (s->k.state != LUO_STATE_PREPARED || s->k.reboot_pending)
                return -EINVAL;
        free(s->marker);
        s->marker = TAKE_PTR(copy);
        s->marker_len = len;
        return 0;
}

static int sim_marker_read(struct backend *b, void **ret_blob, size_t *ret_len)
{
        struct sim *s = to_sim(b);
        char *blob;
        size_t len;
        int r;

        if (!ret_blob || !ret_len)
                return -EINVAL;
        SIM_SESS_LOCKED(s);
        if (s->handover_fd < 0 || !s->handover_marker)
                return -ENOENT;
        r = sim_read_file_max(s->handover_fd, SIM_MARKER_FILE, BACKEND_MARKER_MAX, &blob, &len);
        if (r < 0)
                return r == -EFBIG ? -EBADMSG : r;
        *ret_blob = blob;
        *ret_len = len;
        return 0;
}

#define SIM_DESCRIPTION "sim (sessions: mainline rules; global state: v3)"

static int sim_describe(struct backend *b, char *buf, size_t size)
{
        if (!buf || size == 0)
                return -EINVAL;
        if (snprintf(buf, size, "%s", SIM_DESCRIPTION) >= (int)size)
                return -ENOBUFS; /* truncated, still terminated */
        return 0;
}

static const struct backend_ops sim_ops = {
        .name = "sim",
        .free = sim_free,
        .get_state = sim_get_state,
        .watch_fd = sim_watch_fd,
        .watch_events = sim_watch_events,
        .watch_read = sim_watch_read,
        .set_event = sim_set_event,
        .kexec_load = sim_kexec_load,
        .kexec_unload = sim_kexec_unload,
        .kexec_loaded = sim_kexec_loaded,
        .reboot = sim_reboot,
        .get_info = sim_get_info,
        .self_check = sim_self_check,
        .session_create = sim_session_create,
        .session_retrieve = sim_session_retrieve,
        .session_preserve = sim_session_preserve,
        .session_unpreserve = sim_session_unpreserve,
        .session_retrieve_fd = sim_session_retrieve_fd,
        .session_finish = sim_session_finish,
        .session_release = sim_session_release,
        .marker_write = sim_marker_write,
        .marker_read = sim_marker_read,
        .describe = sim_describe,
};

/*
 * A (simulated) boot: fresh boot id, the release this boot runs. kexec: the
 * boot a simulated kexec lands in (cfg->sim_boot_release applies), not the
 * machine's first.
 */
static int sim_boot(struct sim_kstate *k, const struct backend_config *cfg, bool kexec)
{
        int r;

        r = uuid_v4(k->boot_id);
        if (r < 0)
                return r;
        k->booted_usec = now_real_usec();
        const char *wrong = NULL;
        if (kexec && cfg->sim_boot_release) {
                /* "IMAGE=WRONG": only a kexec into an image whose header names IMAGE
                 * comes up wrong (so a rollback into another kernel works). */
                const char *eq = strchr(cfg->sim_boot_release, '=');
                if (!eq)
                        wrong = cfg->sim_boot_release;
                else if (strlen(k->next_release) == (size_t)(eq - cfg->sim_boot_release) &&
                         strncmp(k->next_release, cfg->sim_boot_release,
                                 (size_t)(eq - cfg->sim_boot_release)) == 0)
                        wrong = eq + 1;
        }
        if (wrong) {
                /* The wrong kernel came up: not the one the image names. */
                if (copy_field(k->release, sizeof(k->release), wrong) < 0)
                        return -EINVAL;
                k->next_release[0] = 0;
        } else if (k->next_release[0]) {
                /* The simulated kexec into an image whose header named its release. */
                if (copy_field(k->release, sizeof(k->release), k->next_release) < 0)
                        return -EINVAL;
                k->next_release[0] = 0;
        } else if (cfg->sim_release) {
                if (copy_field(k->release, sizeof(k->release), cfg->sim_release) < 0)
                        return -EINVAL;
        } else {
                struct utsname u;
                if (uname(&u) < 0)
                        return negative_errno();
                if (copy_field(k->release, sizeof(k->release), u.release) < 0)
                        return -EINVAL;
        }
        return 0;
}

int sim_open(const struct backend_config *cfg, struct backend **ret, char *msg, size_t msg_size)
{
        _cleanup_(sim_freep) struct sim *s = NULL;
        _cleanup_free_ char *text = NULL;
        char dir[4096], why[256] = "";
        struct sim_kstate k = {};
        bool dirty = true;
        size_t len = 0;
        int r;

        if (msg && msg_size > 0)
                msg[0] = 0;
        if (!cfg || !ret)
                return -EINVAL;
        if (!cfg->state_dir || !cfg->state_dir[0]) {
                backend_msgf(msg, msg_size, "the simulated kernel needs a state directory");
                return -EINVAL;
        }
        if (cfg->sim_release && (!cfg->sim_release[0] || strlen(cfg->sim_release) >= 128)) {
                backend_msgf(msg, msg_size, "invalid simulated kernel release");
                return -EINVAL;
        }
        if (cfg->sim_boot_release &&
            (!cfg->sim_boot_release[0] || strlen(cfg->sim_boot_release) >= 128 ||
             cfg->sim_boot_release[0] == '=' ||
             cfg->sim_boot_release[strlen(cfg->sim_boot_release) - 1] == '=')) {
                backend_msgf(msg, msg_size, "invalid simulated kernel release after a kexec");
                return -EINVAL;
        }
        if (snprintf(dir, sizeof(dir), "%s/" SIM_DIR, cfg->state_dir) >= (int)sizeof(dir)) {
                backend_msgf(msg, msg_size, "state directory path too long");
                return -ENAMETOOLONG;
        }
        r = mkdir_p(dir, 0700);
        if (r < 0) {
                backend_msgf(msg, msg_size, "cannot create %s: %s", dir, strerror(-r));
                return r;
        }

        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->base.ops = &sim_ops;
        s->dir_fd = s->lock_fd = s->event_fd = s->handover_fd = -1;
        pthread_mutex_init(&s->op_lock, NULL);
        pthread_mutex_init(&s->lock, NULL);
        pthread_mutex_init(&s->sess_lock, NULL);
        memcpy(s->faults, cfg->faults, sizeof(s->faults));

        s->dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (s->dir_fd < 0) {
                r = negative_errno();
                backend_msgf(msg, msg_size, "cannot open %s: %s", dir, strerror(-r));
                return r;
        }
        s->lock_fd =
                openat(s->dir_fd, SIM_LOCK_FILE, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (s->lock_fd < 0) {
                r = negative_errno();
                backend_msgf(msg, msg_size, "cannot open %s/" SIM_LOCK_FILE ": %s", dir,
                             strerror(-r));
                return r;
        }
        if (flock(s->lock_fd, LOCK_EX | LOCK_NB) < 0) {
                r = errno == EWOULDBLOCK ? -EBUSY : negative_errno();
                backend_msgf(msg, msg_size,
                             "another live-update agent holds the simulated /dev/liveupdate "
                             "(%s/" SIM_LOCK_FILE ")",
                             dir);
                return r;
        }
        s->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (s->event_fd < 0)
                return negative_errno();

        r = sim_read_file_at(s->dir_fd, SIM_STATE_FILE, &text, &len);
        if (r == -ENOENT) {
                /* First start ever: a machine that just booted normally. */
                k.state = LUO_STATE_NORMAL;
                k.boots = 1;
                r = sim_boot(&k, cfg, false);
                if (r < 0)
                        return r;
        } else if (r < 0 && r != -EFBIG) {
                backend_msgf(msg, msg_size, "cannot read %s/" SIM_STATE_FILE ": %s", dir,
                             strerror(-r));
                return r;
        } else {
                if (r == -EFBIG)
                        backend_msgf(why, sizeof(why), "larger than %d bytes", SIM_FILE_MAX);
                else
                        r = sim_kstate_from_json(text, len, &k, why, sizeof(why));
                if (r < 0) {
                        backend_msgf(msg, msg_size,
                                     "corrupt simulated kernel state %s/" SIM_STATE_FILE ": %s",
                                     dir, why);
                        return -EBADMSG;
                }
                if (k.reboot_pending) {
                        /* The simulated kexec lands: this open is the new boot, which
                         * receives the handover the old boot wrote, if it wrote one. */
                        char path[64];
                        struct stat st;
                        snprintf(path, sizeof(path), SIM_SESSIONS_DIR "/%s/" SIM_INDEX_FILE,
                                 k.boot_id);
                        k.handover[0] = 0;
                        if (fstatat(s->dir_fd, path, &st, AT_SYMLINK_NOFOLLOW) == 0)
                                memcpy(k.handover, k.boot_id, sizeof(k.handover));
                        k.state =
                                k.state == LUO_STATE_FROZEN ? LUO_STATE_UPDATED : LUO_STATE_NORMAL;
                        k.boots++;
                        k.reboot_pending = false;
                        k.kexec = false;
                        k.kernel_sha256[0] = k.initrd_sha256[0] = k.cmdline[0] = 0;
                        k.kernel_size = 0;
                        r = sim_boot(&k, cfg, true);
                        if (r < 0)
                                return r;
                } else
                        dirty = false; /* the machine keeps running as it was */
        }

        if (dirty) {
                r = sim_persist(s, &k);
                if (r < 0) {
                        backend_msgf(msg, msg_size, "cannot write %s/" SIM_STATE_FILE ": %s", dir,
                                     strerror(-r));
                        return r;
                }
        }
        s->k = k;
        r = sim_handover_load(s, why, sizeof(why));
        if (r < 0) {
                backend_msgf(msg, msg_size, "%s session handover %s/" SIM_SESSIONS_DIR "/%s: %s",
                             r == -EBADMSG ? "corrupt" : "cannot load the", dir, k.handover,
                             r == -EBADMSG ? why : strerror(-r));
                return r;
        }
        *ret = &TAKE_PTR(s)->base;
        return 0;
}
