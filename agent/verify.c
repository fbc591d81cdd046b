/*
 * verify.c: the expectation written at staging, the comparison with the
 * kernel that runs after the jump, the state document's "last_update" and
 * the /readyz check (see verify.h). Stateless: the expectation lives in the
 * Staged object, the result in the reboot record and a->last_update.
 *
 * How a version string is compared: the bzImage header holds
 * "RELEASE (USER@HOST) UTS_VERSION", /proc/version "Linux version RELEASE
 * (USER@HOST) (COMPILER) UTS_VERSION": the release is the first word of the
 * former, and UTS_VERSION (from its '#') is compared when both have one.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "agent.h"
#include "luofleet/bzimage.h"
#include "luofleet/log.h"
#include "luofleet/macro.h"
#include "luofleet/privsep.h"
#include "luofleet/stagepath.h"
#include "luofleet/util.h"
#include "verify.h"

#define NT_GNU_BUILD_ID 3
#define BUILD_ID_MAX 64 /* bytes; SHA-1 ids are 20 */

static json_t *str_or_null(const char *s)
{
        return s && s[0] ? json_string(s) : json_null();
}

void verify_stage_expectation(struct agent *a, const struct op_request *rq, json_t *staged)
{
        char version[VERIFY_VERSION_MAX] = "", release[128] = "";
        int fd, r;

        if (!json_is_object(staged))
                return;
        if (privsep_is_proxy(a->backend))
                fd = privsep_proxy_open_staging(a->backend, rq->kernel_path);
        else
                fd = stagepath_open(rq->kernel_path, a->cfg ? a->cfg->staging_dirs : NULL,
                                    a->cfg ? a->cfg->n_staging_dirs : 0);
        if (fd >= 0) {
                r = bzimage_version_fd(fd, version, sizeof(version));
                close(fd);
                if (r < 0)
                        version[0] = 0; /* not a bzImage (or not x86): no version to expect */
        }
        if (rq->expected_release[0])
                snprintf(release, sizeof(release), "%s", rq->expected_release);
        else if (version[0])
                bzimage_release(version, release, sizeof(release));
        json_object_set_new(staged, "expected",
                            json_pack("{s:o, s:o}", "release", str_or_null(release), "version",
                                      str_or_null(version)));
}

/* <root>/rel into buf (NUL-terminated); the length or -errno. */
static ssize_t read_under_root(struct agent *a, const char *rel, char *buf, size_t size)
{
        const char *root = a->cfg && a->cfg->backend.root ? a->cfg->backend.root : "/";
        char path[4096];

        if (snprintf(path, sizeof(path), "%s/%s", root, rel) >= (int)sizeof(path))
                return -ENAMETOOLONG;
        return read_small_file_at(AT_FDCWD, path, buf, size);
}

/* The GNU build id from /sys/kernel/notes (ELF notes, 4-byte aligned), hex. */
static void read_build_id(struct agent *a, char *out, size_t out_size)
{
        uint8_t buf[4096];
        ssize_t n = read_under_root(a, "sys/kernel/notes", (char *)buf, sizeof(buf));
        size_t off = 0;

        out[0] = 0;
        while (n > 0 && off + 12 <= (size_t)n) {
                uint32_t namesz, descsz, type;
                memcpy(&namesz, buf + off, 4);
                memcpy(&descsz, buf + off + 4, 4);
                memcpy(&type, buf + off + 8, 4);
                size_t name_off = off + 12, desc_off = name_off + ((namesz + 3u) & ~3u);
                size_t next = desc_off + ((descsz + 3u) & ~3u);
                if (namesz > 64 || descsz > 4096 || next > (size_t)n)
                        return;
                if (type == NT_GNU_BUILD_ID && namesz == 4 &&
                    memcmp(buf + name_off, "GNU", 4) == 0 && descsz > 0 && descsz <= BUILD_ID_MAX &&
                    out_size > 2 * descsz) {
                        hex_encode(buf + desc_off, descsz, out);
                        return;
                }
                off = next;
        }
}

/* UTS_VERSION: from the '#', or NULL. */
static const char *uts_version(const char *v)
{
        return v ? strchr(v, '#') : NULL;
}

json_t *verify_running(struct agent *a, json_t *staged)
{
        json_t *exp = json_object_get(staged, "expected");
        const char *exp_rel = json_string_value(json_object_get(exp, "release"));
        const char *exp_ver = json_string_value(json_object_get(exp, "version"));
        const char *run_rel = a->info.release;
        char version[1024] = "", build_id[2 * BUILD_ID_MAX + 1] = "";
        bool compared = false, mismatch = false;

        /* The simulated kernel has no /proc of its own: only its release is known. */
        if (strcmp(a->backend->ops->name, "sim") != 0) {
                ssize_t n = read_under_root(a, "proc/version", version, sizeof(version));
                const char *prefix = "Linux version ";
                if (n > 0) {
                        strip_trailing(version);
                        if (strncmp(version, prefix, strlen(prefix)) == 0)
                                memmove(version, version + strlen(prefix),
                                        strlen(version) - strlen(prefix) + 1);
                        version[VERIFY_VERSION_MAX - 1] = 0;
                        for (char *p = version; *p; p++)
                                if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
                                        *p = '?';
                } else
                        version[0] = 0;
                read_build_id(a, build_id, sizeof(build_id));
        }
        if (exp_rel) {
                compared = true;
                mismatch |= strcmp(exp_rel, run_rel) != 0;
        }
        if (uts_version(exp_ver) && uts_version(version)) {
                compared = true;
                mismatch |= strcmp(uts_version(exp_ver), uts_version(version)) != 0;
        }
        return json_pack("{s:s, s:o, s:{s:s, s:o, s:o}}", "status",
                         mismatch   ? "mismatch"
                         : compared ? "match"
                                    : "unknown",
                         "expected", json_is_object(exp) ? json_deep_copy(exp) : json_null(),
                         "running", "release", run_rel, "version", str_or_null(version), "build_id",
                         str_or_null(build_id));
}

json_t *verify_last_update_from_record(json_t *rec)
{
        static const char *const keys[] = { "from_boot_id", "to_boot_id",
                                            "planned",      "operation_id",
                                            "blackout_ms",  "kernel_uptime_ms_at_start",
                                            "kexec_ms",     "verification" };
        json_t *u;

        if (!json_is_object(rec) || !json_object_get(rec, "to_boot_id"))
                return NULL;
        u = json_object();
        if (!u)
                return NULL;
        json_t *at = json_object_get(rec, "time");
        json_object_set_new(u, "at", at ? json_incref(at) : json_null());
        for (size_t i = 0; i < ELEMENTSOF(keys); i++) {
                json_t *v = json_object_get(rec, keys[i]);
                if (v)
                        json_object_set(u, keys[i], v);
                else if (strcmp(keys[i], "operation_id") != 0)
                        json_object_set_new(u, keys[i], json_null());
        }
        return u;
}

bool verify_health(struct agent *a, char *detail, size_t size)
{
        const char *status = NULL, *exp = NULL;
        char run[128] = "", want[128] = "";
        bool ok;

        agent_lock(a);
        json_t *v = json_object_get(a->last_update, "verification");
        status = json_string_value(json_object_get(v, "status"));
        ok = !status || strcmp(status, "mismatch") != 0;
        exp = json_string_value(json_object_get(json_object_get(v, "expected"), "release"));
        snprintf(want, sizeof(want), "%s", exp ? exp : "?");
        snprintf(run, sizeof(run), "%s", a->info.release);
        if (!status)
                snprintf(detail, size, "no update into this boot to verify");
        else if (ok)
                snprintf(detail, size, "the running kernel %s: %s", run,
                         strcmp(status, "match") == 0 ? "the staged one" : "nothing to compare");
        else
                snprintf(detail, size,
                         "the running kernel %s is not the staged one (expected %s): see "
                         "last_update.verification",
                         run, want);
        agent_unlock(a);
        return ok;
}
