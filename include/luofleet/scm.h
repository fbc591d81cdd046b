/*
 * scm.h: one datagram and the descriptors riding on it (SCM_RIGHTS) over a
 * SOCK_SEQPACKET socket, for both of our fd-passing wires: the privileged
 * helper's channels (kernel/privsep.c) and the workloads' session protocol
 * (libsession/proto.c). Header-only and libc-only, because libluofleet-session
 * links nothing but libc; not installed.
 */
#pragma once

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Descriptors one datagram may carry; more arrive control-truncated (MSG_CTRUNC). */
#define SCM_MAX_FDS 4

static inline int scm_negative_errno(void)
{
        return errno > 0 ? -errno : -EIO;
}

/*
 * Send len bytes of buf with n_fds descriptors (0..SCM_MAX_FDS), retrying
 * EINTR, never raising SIGPIPE. Returns 0, -EINVAL, -errno, or -EIO when the
 * datagram went out short (SEQPACKET: all or nothing).
 */
static inline int scm_send(int sock, const void *buf, size_t len, const int *fds, size_t n_fds,
                           bool nonblock)
{
        union {
                struct cmsghdr h;
                char buf[CMSG_SPACE(sizeof(int) * SCM_MAX_FDS)];
        } control;
        struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
        ssize_t k;

        if (n_fds > SCM_MAX_FDS)
                return -EINVAL;
        if (n_fds > 0) {
                memset(&control, 0, sizeof(control));
                mh.msg_control = control.buf;
                mh.msg_controllen = CMSG_SPACE(sizeof(int) * n_fds);
                struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
                c->cmsg_level = SOL_SOCKET;
                c->cmsg_type = SCM_RIGHTS;
                c->cmsg_len = CMSG_LEN(sizeof(int) * n_fds);
                memcpy(CMSG_DATA(c), fds, sizeof(int) * n_fds);
        }
        for (;;) {
                k = sendmsg(sock, &mh, MSG_NOSIGNAL | (nonblock ? MSG_DONTWAIT : 0));
                if (k >= 0 || errno != EINTR)
                        break;
        }
        if (k < 0)
                return scm_negative_errno();
        return (size_t)k == len ? 0 : -EIO;
}

/*
 * Receive one datagram into buf (size bytes) and the descriptors on it, close
 * on exec, retrying EINTR. The descriptors go to fds (*ret_n_fds of them, all
 * the caller's to close); *ret_flags gets msg_flags (MSG_TRUNC, MSG_CTRUNC), for
 * the caller's decoder to refuse. Returns the datagram's length or -errno.
 */
static inline ssize_t scm_recv(int sock, void *buf, size_t size, bool nonblock,
                               int fds[SCM_MAX_FDS], size_t *ret_n_fds, int *ret_flags)
{
        union {
                struct cmsghdr h;
                char buf[CMSG_SPACE(sizeof(int) * SCM_MAX_FDS)];
        } control;
        struct iovec iov = { .iov_base = buf, .iov_len = size };
        struct msghdr mh = {
                .msg_iov = &iov,
                .msg_iovlen = 1,
                .msg_control = control.buf,
                .msg_controllen = sizeof(control.buf),
        };
        size_t n = 0;
        ssize_t k;

        *ret_n_fds = 0;
        *ret_flags = 0;
        for (;;) {
                k = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC | (nonblock ? MSG_DONTWAIT : 0));
                if (k >= 0 || errno != EINTR)
                        break;
        }
        if (k < 0)
                return scm_negative_errno();
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
                if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
                        continue;
                size_t m = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                const unsigned char *data = CMSG_DATA(c);
                for (size_t i = 0; i < m; i++) {
                        int x;
                        memcpy(&x, data + i * sizeof(int), sizeof(int));
                        if (n < SCM_MAX_FDS)
                                fds[n++] = x;
                        else
                                close(x); /* cannot happen: the buffer holds SCM_MAX_FDS */
                }
        }
        *ret_n_fds = n;
        *ret_flags = mh.msg_flags;
        return k;
}
