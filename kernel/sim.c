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
 *                booted_usec?}, replaced
 *                atomically on every change; applied counts what the machine
 *                carried out, per kind ({prepare, cancel, finish, freeze,
 *                kexec, load, unload}: successful calls only), persisted with
 *                the change itself, so a test can tell that nothing ran twice
 *                across crashes and restarts (a file without it counts from 0);
 *   faults       optional, read again by every faultable operation: one
 *                backend_config_add_fault() spec per line, "#" comments; an
 *                op named there overrides the cfg->faults entry;
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
 * Threads and locks: set_event, kexec_load, kexec_unload and reboot are
 * serialised by op_lock, held through fault delays, hashing and fsync;
 * get_state, kexec_loaded, watch_read, get_info and self_check take only
 * lock, a short one guarding the in-memory copy, so the event loop never
 * waits for a slow operation. Lock order: op_lock, then lock. Owns the
 * directory fd, the lock fd and the eventfd (the watch fd, POLLIN).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/utsname.h>
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

static void sim_sleep_ms(unsigned ms)
{
        struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };

        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

/* Read dir_fd/name whole (at most SIM_FILE_MAX bytes), NUL-terminated. */
static int sim_read_file_at(int dir_fd, const char *name, char **ret, size_t *ret_len)
{
        _cleanup_close_ int fd = -1;
        _cleanup_free_ char *buf = NULL;
        size_t len = 0;

        fd = openat(dir_fd, name, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW);
        if (fd < 0)
                return negative_errno();
        buf = malloc(SIM_FILE_MAX + 1);
        if (!buf)
                return -ENOMEM;
        for (;;) {
                ssize_t n = read(fd, buf + len, SIM_FILE_MAX + 1 - len);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return negative_errno();
                }
                if (n == 0)
                        break;
                len += (size_t)n;
                if (len > SIM_FILE_MAX)
                        return -EFBIG;
        }
        buf[len] = 0;
        *ret = TAKE_PTR(buf);
        *ret_len = len;
        return 0;
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
 * The faults in force now: cfg's, overridden op by op by the runtime file.
 * A malformed file fails the operation with -EBADMSG rather than silently
 * running without the fault a test asked for.
 */
static int sim_load_faults(struct sim *s, struct sim_fault ret[static _SIM_FAULT_OP_MAX])
{
        _cleanup_free_ char *text = NULL;
        struct backend_config tmp = {};
        size_t len;
        char *line, *save = NULL;
        int r;

        memcpy(ret, s->faults, sizeof(s->faults));
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
                if (backend_config_add_fault(&tmp, line) < 0)
                        return -EBADMSG;
        }
        for (int i = 0; i < _SIM_FAULT_OP_MAX; i++)
                if (tmp.faults[i].error >= 0)
                        ret[i] = tmp.faults[i];
        return 0;
}

/*
 * Where a simulated kernel call meets its fault: load the faults (the
 * runtime file may have changed), stall, then fail with the configured errno
 * or return 0 to go on. faults is filled for callers that need other ops'.
 */
static int sim_strike(struct sim *s, enum sim_fault_op op, struct sim_fault *faults)
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
        struct sim_fault faults[_SIM_FAULT_OP_MAX];
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
        r = sim_strike(s, (enum sim_fault_op)ev, faults);
        if (r < 0)
                return r; /* a failing callback: the state stays */

        n.state = to;
        n.applied[ev == LUO_EVENT_PREPARE  ? SIM_APPLIED_PREPARE
                  : ev == LUO_EVENT_CANCEL ? SIM_APPLIED_CANCEL
                                           : SIM_APPLIED_FINISH]++;
        return sim_update(s, &n);
}

static int sim_kexec_load(struct backend *b, int kernel_fd, int initrd_fd, const char *cmdline)
{
        struct sim *s = to_sim(b);
        struct sim_fault faults[_SIM_FAULT_OP_MAX];
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
        struct sim_fault faults[_SIM_FAULT_OP_MAX];
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

        n.reboot_pending = true;
        n.applied[SIM_APPLIED_KEXEC]++;
        return sim_update(s, &n);
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
        s->dir_fd = s->lock_fd = s->event_fd = -1;
        pthread_mutex_init(&s->op_lock, NULL);
        pthread_mutex_init(&s->lock, NULL);
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
                        /* The simulated kexec lands: this open is the new boot. */
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
        *ret = &TAKE_PTR(s)->base;
        return 0;
}
