/* luofleet e2e helper (static, in the VM guest as /bin/kexec-unload): change the
 * kernel's kexec / live-update state behind the agent's back.
 *
 *   kexec-unload              kexec_file_load(-1, -1, 0, NULL, KEXEC_FILE_UNLOAD):
 *                             unload the staged image (/sys/kernel/kexec_loaded -> 0)
 *   kexec-unload --reboot     reboot(LINUX_REBOOT_CMD_KEXEC) with no image loaded: the
 *                             emulation module's kprobe freezes a prepared state and the
 *                             kexec fails (EINVAL, or fail_kexec's errno); refused when
 *                             /sys/kernel/kexec_loaded is 1 (that would really kexec)
 *
 * Prints one line: "kexec-unload: <what>: ok" or "... failed: ERRNO (message)", and
 * for --reboot "t_us=N" first, N = CLOCK_MONOTONIC µs just before the call (compare
 * with lfc -T's answer_us). Exit 0 when the call succeeded, 1 when it failed (the
 * expected outcome of --reboot), 2 usage or refused.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/kexec.h>
#include <linux/reboot.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static const char *ename(int e)
{
        switch (e) {
        case EINVAL:
                return "EINVAL";
        case EBUSY:
                return "EBUSY";
        case EPERM:
                return "EPERM";
        case ENOENT:
                return "ENOENT";
        case EIO:
                return "EIO";
        case ENOMEM:
                return "ENOMEM";
        case ENOSYS:
                return "ENOSYS";
        default:
                return "E?";
        }
}

static int kexec_loaded(void)
{
        FILE *f = fopen("/sys/kernel/kexec_loaded", "r");
        int c = f ? fgetc(f) : EOF;
        if (f)
                fclose(f);
        return c == '1';
}

int main(int argc, char **argv)
{
        if (argc == 1) {
                long r = syscall(SYS_kexec_file_load, -1, -1, 0UL, NULL,
                                 (unsigned long)KEXEC_FILE_UNLOAD);
                if (r != 0) {
                        int e = errno;
                        printf("kexec-unload: unload failed: %s (%s)\n", ename(e), strerror(e));
                        return 1;
                }
                printf("kexec-unload: unload: ok (kexec_loaded=%d)\n", kexec_loaded());
                return 0;
        }
        if (argc == 2 && strcmp(argv[1], "--reboot") == 0) {
                if (kexec_loaded()) {
                        printf("kexec-unload: refused: an image is loaded, reboot would kexec\n");
                        return 2;
                }
                struct timespec ts;
                clock_gettime(CLOCK_MONOTONIC, &ts);
                printf("t_us=%lld\n", (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000);
                fflush(stdout);
                long r = syscall(SYS_reboot, LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2,
                                 LINUX_REBOOT_CMD_KEXEC, NULL);
                if (r != 0) {
                        int e = errno;
                        printf("kexec-unload: reboot(KEXEC) failed: %s (%s)\n", ename(e),
                               strerror(e));
                        return 1;
                }
                printf("kexec-unload: reboot(KEXEC) returned 0\n");
                return 0;
        }
        fprintf(stderr, "usage: kexec-unload [--reboot]\n");
        return 2;
}
