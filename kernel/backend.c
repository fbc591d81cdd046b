/*
 * backend.c: the backend front door: kind names, the simulator's fault specs,
 * backend_open() dispatch (including --backend=auto detection) and
 * backend_free(), plus the small helpers the backends share
 * (backend-private.h).
 *
 * Threads: backend_open()/backend_free() on the main thread; the rest is pure
 * and callable from any thread. Owns nothing beyond the call.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "backend-private.h"
#include "luofleet/backend.h"
#include "luofleet/macro.h"
#include "luofleet/util.h"

#define SYSFS_STATE_REL "sys/kernel/liveupdate/state"
#define DEV_LIVEUPDATE_REL "dev/liveupdate"

/* A fault may stall an operation at most this long (10 minutes). */
#define FAULT_DELAY_MAX_MS (10u * 60u * 1000u)

static const char *const kind_names[_BACKEND_KIND_MAX] = {
        [BACKEND_LUO_V3] = "luo-v3",
        [BACKEND_SIM] = "sim",
        [BACKEND_AUTO] = "auto",
        [BACKEND_LUO_SESSIONS] = "luo-sessions",
};

static const char *const fault_op_names[_SIM_FAULT_OP_MAX] = {
        [SIM_FAULT_PREPARE] = "prepare", [SIM_FAULT_FREEZE] = "freeze",
        [SIM_FAULT_FINISH] = "finish",   [SIM_FAULT_CANCEL] = "cancel",
        [SIM_FAULT_REBOOT] = "reboot",   [SIM_FAULT_KEXEC_LOAD] = "kexec-load",
};

const char *backend_kind_to_string(enum backend_kind k)
{
        if ((unsigned)k >= _BACKEND_KIND_MAX)
                return NULL;
        return kind_names[k];
}

int backend_kind_from_string(const char *s)
{
        if (!s)
                return -EINVAL;
        for (int i = 0; i < _BACKEND_KIND_MAX; i++)
                if (strcmp(kind_names[i], s) == 0)
                        return i;
        return -EINVAL;
}

void backend_msgf(char *msg, size_t msg_size, const char *fmt, ...)
{
        va_list ap;

        if (!msg || msg_size == 0)
                return;
        va_start(ap, fmt);
        /* A truncated operator message is still better than none. */
        (void)vsnprintf(msg, msg_size, fmt, ap);
        va_end(ap);
}

const char *backend_display_path(const char *root, const char *rel, char *buf, size_t size)
{
        size_t n;

        if (!root)
                root = BACKEND_ROOT_DEFAULT;
        n = strlen(root);
        while (n > 0 && root[n - 1] == '/')
                n--;
        while (*rel == '/')
                rel++;
        if (snprintf(buf, size, "%.*s/%s", (int)n, root, rel) >= (int)size && size > 0)
                buf[size - 1] = 0; /* for a message only: truncation is acceptable */
        return buf;
}

/* A delay is digits with a unit ("250ms", "2s", "1m"); a bare number is an errno. */
static bool fault_value_is_delay(const char *s)
{
        size_t n = strspn(s, "0123456789");
        return n > 0 && s[n] != 0;
}

static int fault_parse_delay(const char *s, unsigned *ret_ms)
{
        uint64_t ms;

        if (!fault_value_is_delay(s))
                return -EINVAL;
        if (parse_duration_ms(s, FAULT_DELAY_MAX_MS, &ms) < 0)
                return -EINVAL;
        *ret_ms = (unsigned)ms;
        return 0;
}

int backend_config_add_fault(struct backend_config *cfg, const char *spec)
{
        struct sim_fault f = { 0 };
        const char *eq, *value, *colon;
        char errbuf[32];
        int op = -1, e;

        if (!cfg || !spec)
                return -EINVAL;
        eq = strchr(spec, '=');
        if (!eq)
                return -EINVAL;
        for (int i = 0; i < _SIM_FAULT_OP_MAX; i++)
                if (strlen(fault_op_names[i]) == (size_t)(eq - spec) &&
                    memcmp(fault_op_names[i], spec, (size_t)(eq - spec)) == 0)
                        op = i;
        if (op < 0)
                return -EINVAL;

        value = eq + 1;
        colon = strchr(value, ':');
        if (colon) {
                /* "ERRNO:DELAY" */
                size_t n = (size_t)(colon - value);
                if (n == 0 || n >= sizeof(errbuf))
                        return -EINVAL;
                memcpy(errbuf, value, n);
                errbuf[n] = 0;
                e = errno_from_name(errbuf);
                if (e <= 0)
                        return -EINVAL;
                f.error = e;
                if (fault_parse_delay(colon + 1, &f.delay_ms) < 0)
                        return -EINVAL;
        } else if (fault_value_is_delay(value)) {
                if (fault_parse_delay(value, &f.delay_ms) < 0)
                        return -EINVAL;
        } else {
                e = errno_from_name(value);
                if (e <= 0)
                        return -EINVAL;
                f.error = e;
        }

        cfg->faults[op] = f;
        return 0;
}

/*
 * --backend=auto: the v3 interface is recognised by its sysfs file; a
 * /dev/liveupdate without it is the mainline sessions interface (Linux 6.19+,
 * kernel-abi.md section B). Only stat()s here: the device is exclusive, and
 * the backend that drives it opens it itself.
 */
static int backend_open_auto(const struct backend_config *cfg, struct backend **ret, char *msg,
                             size_t msg_size)
{
        const char *root = cfg->root ? cfg->root : BACKEND_ROOT_DEFAULT;
        _cleanup_close_ int root_fd = -1;
        struct backend_config c;
        char path[512], dev[512];
        struct stat st;

        root_fd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (root_fd < 0) {
                int r = negative_errno();
                backend_msgf(msg, msg_size, "cannot open root directory %s: %s", root,
                             strerror(-r));
                return r;
        }

        c = *cfg;
        backend_display_path(root, SYSFS_STATE_REL, path, sizeof(path));
        if (fstatat(root_fd, SYSFS_STATE_REL, &st, 0) == 0) {
                c.kind = BACKEND_LUO_V3;
                return luo_v3_open(&c, ret, msg, msg_size);
        }
        if (errno != ENOENT && errno != ENOTDIR) {
                int r = negative_errno();
                backend_msgf(msg, msg_size, "cannot look for %s: %s", path, strerror(-r));
                return r;
        }

        backend_display_path(root, DEV_LIVEUPDATE_REL, dev, sizeof(dev));
        if (fstatat(root_fd, DEV_LIVEUPDATE_REL, &st, 0) == 0) {
                c.kind = BACKEND_LUO_SESSIONS;
                return luo_sessions_open(&c, ret, msg, msg_size);
        }
        if (errno != ENOENT && errno != ENOTDIR) {
                int r = negative_errno();
                backend_msgf(msg, msg_size, "cannot look for %s: %s", dev, strerror(-r));
                return r;
        }

        /* The advice first: the paths (under a --root, maybe long) may be cut short. */
        backend_msgf(msg, msg_size,
                     "no live-update orchestrator found: use --backend=sim to run on the simulated "
                     "kernel (a Linux 6.19+ kernel needs liveupdate=on kho=on on its command "
                     "line; neither %s nor %s exists)",
                     path, dev);
        return -ENOENT;
}

int backend_open(const struct backend_config *cfg, struct backend **ret, char *msg, size_t msg_size)
{
        if (msg && msg_size > 0)
                msg[0] = 0;
        if (!cfg || !ret) {
                backend_msgf(msg, msg_size, "no backend configuration");
                return -EINVAL;
        }

        switch (cfg->kind) {
        case BACKEND_LUO_V3:
                return luo_v3_open(cfg, ret, msg, msg_size);
        case BACKEND_LUO_SESSIONS:
                return luo_sessions_open(cfg, ret, msg, msg_size);
        case BACKEND_SIM:
                return sim_open(cfg, ret, msg, msg_size);
        case BACKEND_AUTO:
                return backend_open_auto(cfg, ret, msg, msg_size);
        default:
                backend_msgf(msg, msg_size, "unknown backend kind %d", (int)cfg->kind);
                return -EINVAL;
        }
}

struct backend *backend_free(struct backend *b)
{
        if (b)
                b->ops->free(b);
        return NULL;
}
