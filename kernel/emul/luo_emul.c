// SPDX-License-Identifier: GPL-2.0
/*
 * luo_emul: an emulation of the v3 Live Update Orchestrator interface
 * (docs kernel-abi.md section A) for a stock kernel, so that luofleet's real
 * luo-v3 backend can be proven inside a QEMU guest.
 *
 *   /sys/kernel/liveupdate/state  0444, normal|prepared|frozen|updated|undefined
 *   /dev/liveupdate               misc device, exclusive, CAP_SYS_ADMIN
 *   ioctls                        _IO(0xBA, nr), sized structs (iommufd style)
 *
 * Freezing: the v3 series freezes (PREPARED -> FROZEN) inside the reboot
 * call, before kernel_kexec() looks at the image, so a kexec that then fails
 * (no image: EINVAL, busy: EBUSY) leaves FROZEN. A module cannot hook the
 * reboot syscall there, so a kprobe on kernel_kexec() does the freeze at the
 * function's entry, before its image check. Should the kprobe be refused, a
 * reboot notifier (called by kernel_kexec() through kernel_restart_prepare(),
 * after the image check) is the fallback. The hook in use is shown by the
 * read-only parameter freeze_hook. With the kprobe, the parameters fail_freeze
 * and fail_kexec make the reboot call fail (kernel_kexec() is skipped, as
 * fail_function does it) to emulate a failing freeze callback or a failing
 * kexec. See README.md.
 *
 * Locking: luo_mutex serialises the ioctls and the token table. The state
 * itself is also guarded by luo_state_lock (a spinlock), because the kprobe
 * handler runs in atomic context and changes it without the mutex.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/capability.h>
#include <linux/delay.h>
#include <linux/errno.h>
#include <linux/fcntl.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/ioctl.h>
#include <linux/kernfs.h>
#include <linux/kobject.h>
#include <linux/kprobes.h>
#include <linux/list.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/mutex.h>
#include <linux/notifier.h>
#include <linux/ptrace.h>
#include <linux/reboot.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/string.h>
#include <linux/sysfs.h>
#include <linux/types.h>
#include <linux/uaccess.h>

/* --- ABI (kernel-abi.md section A) --- */

#define LUO_IOC_TYPE 0xBA

enum luo_nr {
	LUO_NR_FD_PRESERVE = 0x00,
	LUO_NR_FD_UNPRESERVE = 0x01,
	LUO_NR_FD_RESTORE = 0x02,
	LUO_NR_GET_STATE = 0x03,
	LUO_NR_SET_EVENT = 0x04,
	LUO_NR_GET_FD_STATE = 0x05,
	LUO_NR_SET_FD_EVENT = 0x06,
	LUO_NR_MAX,
};

enum luo_state {
	LUO_STATE_UNDEFINED = 0,
	LUO_STATE_NORMAL = 1,
	LUO_STATE_PREPARED = 2,
	LUO_STATE_FROZEN = 3,
	LUO_STATE_UPDATED = 4,
};

enum luo_event {
	LUO_EVENT_PREPARE = 0,
	LUO_EVENT_FREEZE = 1,
	LUO_EVENT_FINISH = 2,
	LUO_EVENT_CANCEL = 3,
};

struct luo_arg_fd_preserve {
	u32 size;
	s32 fd;
	u64 token;
};

struct luo_arg_fd_unpreserve {
	u32 size;
	u32 pad;
	u64 token;
};

struct luo_arg_fd_restore {
	u32 size;
	s32 fd;
	u64 token;
};

struct luo_arg_get_state {
	u32 size;
	u32 state;
};

struct luo_arg_set_event {
	u32 size;
	u32 event;
};

struct luo_arg_get_fd_state {
	u32 size;
	u8 incoming;
	u8 pad[3];
	u64 token;
	u32 state;
	u32 pad2;
};

struct luo_arg_set_fd_event {
	u32 size;
	u32 event;
	u64 token;
};

static_assert(sizeof(struct luo_arg_fd_preserve) == 16);
static_assert(sizeof(struct luo_arg_fd_unpreserve) == 16);
static_assert(sizeof(struct luo_arg_fd_restore) == 16);
static_assert(sizeof(struct luo_arg_get_state) == 8);
static_assert(sizeof(struct luo_arg_set_event) == 8);
static_assert(sizeof(struct luo_arg_get_fd_state) == 24);
static_assert(sizeof(struct luo_arg_set_fd_event) == 16);
static_assert(offsetof(struct luo_arg_get_fd_state, token) == 8);
static_assert(offsetof(struct luo_arg_get_fd_state, state) == 16);

union luo_arg {
	u32 size;
	struct luo_arg_fd_preserve preserve;
	struct luo_arg_fd_unpreserve unpreserve;
	struct luo_arg_fd_restore restore;
	struct luo_arg_get_state get_state;
	struct luo_arg_set_event set_event;
	struct luo_arg_get_fd_state get_fd_state;
	struct luo_arg_set_fd_event set_fd_event;
};

/* --- parameters --- */

static bool start_updated;
module_param(start_updated, bool, 0444);
MODULE_PARM_DESC(start_updated,
		 "Start in 'updated', as a kernel that found live-update data (default 0)");

static int fail_prepare;
module_param(fail_prepare, int, 0644);
MODULE_PARM_DESC(fail_prepare,
		 "errno (e.g. 5 for EIO) a PREPARE fails with, leaving 'normal'; 0 = succeed");

static unsigned int prepare_delay_ms;
module_param(prepare_delay_ms, uint, 0644);
MODULE_PARM_DESC(prepare_delay_ms,
		 "Milliseconds a PREPARE takes, emulating slow subsystem callbacks (default 0)");

static int fail_freeze;
module_param(fail_freeze, int, 0644);
MODULE_PARM_DESC(fail_freeze,
		 "errno the freeze in reboot(KEXEC) fails with while prepared: back to 'normal', "
		 "reboot() returns it, no kexec (kprobe hook only; default 0)");

static int fail_kexec;
module_param(fail_kexec, int, 0644);
MODULE_PARM_DESC(fail_kexec,
		 "errno reboot(KEXEC) fails with after the freeze, as a failing kexec: "
		 "the state stays 'frozen' (kprobe hook only; default 0)");

static char freeze_hook[16] = "none";
module_param_string(freeze_hook, freeze_hook, sizeof(freeze_hook), 0444);
MODULE_PARM_DESC(freeze_hook,
		 "Read-only: how the reboot path freezes: kprobe (before the image check) or notifier");

/* --- state --- */

static const char *const luo_state_names[] = {
	[LUO_STATE_UNDEFINED] = "undefined",
	[LUO_STATE_NORMAL] = "normal",
	[LUO_STATE_PREPARED] = "prepared",
	[LUO_STATE_FROZEN] = "frozen",
	[LUO_STATE_UPDATED] = "updated",
};

static DEFINE_SPINLOCK(luo_state_lock);
static enum luo_state luo_state = LUO_STATE_NORMAL;

static DEFINE_MUTEX(luo_mutex);
static unsigned long luo_dev_busy; /* bit 0: /dev/liveupdate is open */

static struct kobject *luo_kobj;
static struct kernfs_node *luo_state_kn; /* for notifying from atomic context */

/* An outgoing (preserved) file. Incoming ones do not exist within one boot. */
struct luo_token {
	struct list_head list;
	u64 token;
	struct file *file;
	enum luo_state state; /* per-fd state: NORMAL, or PREPARED after a per-fd PREPARE */
};

static LIST_HEAD(luo_tokens); /* guarded by luo_mutex */

static enum luo_state luo_get_state(void)
{
	enum luo_state s;
	unsigned long flags;

	spin_lock_irqsave(&luo_state_lock, flags);
	s = luo_state;
	spin_unlock_irqrestore(&luo_state_lock, flags);
	return s;
}

static void luo_notify(void)
{
	sysfs_notify(luo_kobj, NULL, "state");
}

/*
 * Move from @from to @to atomically. Returns true when the state was @from.
 * Process context only (notifies through sysfs_notify()).
 */
static bool luo_transition(enum luo_state from, enum luo_state to)
{
	unsigned long flags;
	bool ok;

	spin_lock_irqsave(&luo_state_lock, flags);
	ok = luo_state == from;
	if (ok)
		luo_state = to;
	spin_unlock_irqrestore(&luo_state_lock, flags);
	if (ok)
		luo_notify();
	return ok;
}

static void luo_tokens_reset_fd_state(void)
{
	struct luo_token *t;

	lockdep_assert_held(&luo_mutex);
	list_for_each_entry(t, &luo_tokens, list)
		t->state = LUO_STATE_NORMAL;
}

static void luo_tokens_drop_all(void)
{
	struct luo_token *t, *n;

	lockdep_assert_held(&luo_mutex);
	list_for_each_entry_safe(t, n, &luo_tokens, list) {
		list_del(&t->list);
		fput(t->file);
		kfree(t);
	}
}

static struct luo_token *luo_token_find(u64 token)
{
	struct luo_token *t;

	lockdep_assert_held(&luo_mutex);
	list_for_each_entry(t, &luo_tokens, list)
		if (t->token == token)
			return t;
	return NULL;
}

/* --- the reboot path: PREPARED -> FROZEN --- */

static int luo_errno(int e)
{
	return e > 0 ? -clamp(e, 1, MAX_ERRNO) : clamp(e, -MAX_ERRNO, -1);
}

/*
 * The freeze of the reboot path: PREPARED -> FROZEN, or with @fail (a
 * negative errno, the emulated failing freeze callback) PREPARED -> NORMAL.
 * Returns true when the state was PREPARED. Atomic context (kprobe): no
 * mutex, and the notification goes through the cached kernfs node.
 */
static bool luo_freeze_atomic(int fail)
{
	unsigned long flags;
	bool prepared;

	spin_lock_irqsave(&luo_state_lock, flags);
	prepared = luo_state == LUO_STATE_PREPARED;
	if (prepared)
		luo_state = fail ? LUO_STATE_NORMAL : LUO_STATE_FROZEN;
	spin_unlock_irqrestore(&luo_state_lock, flags);
	if (prepared) {
		if (luo_state_kn)
			kernfs_notify(luo_state_kn); /* what sysfs_notify() ends up calling */
		if (fail)
			pr_info("reboot(KEXEC): freeze failed (%d), prepared -> normal\n", fail);
		else
			pr_info("reboot(KEXEC): prepared -> frozen\n");
	}
	return prepared;
}

/*
 * Runs in place of kernel_kexec() when the kprobe handler makes the reboot
 * call fail: same stack as at kernel_kexec()'s entry, so it returns to the
 * reboot syscall with this value. kernel_kexec() has not run at all, so
 * there is nothing (kexec_mutex, devices) to undo.
 */
static int luo_kexec_result;

static noinline int luo_kexec_failed(void)
{
	return READ_ONCE(luo_kexec_result);
}

static int luo_kexec_pre(struct kprobe *p, struct pt_regs *regs)
{
	int ff = READ_ONCE(fail_freeze);
	int fk = READ_ONCE(fail_kexec);
	int err = 0;

	if (luo_freeze_atomic(ff ? luo_errno(ff) : 0) && ff)
		err = luo_errno(ff);
	else if (fk)
		err = luo_errno(fk);
	if (!err)
		return 0;
	/* As fail_function/bpf_override_return do: skip the function. */
	WRITE_ONCE(luo_kexec_result, err);
	instruction_pointer_set(regs, (unsigned long)luo_kexec_failed);
	return 1;
}

static struct kprobe luo_kprobe = {
	.symbol_name = "kernel_kexec",
	.pre_handler = luo_kexec_pre,
};

static bool luo_kprobe_registered;

static int luo_reboot_notify(struct notifier_block *nb, unsigned long action, void *data)
{
	const char *cmd = data;

	/* kernel_kexec() calls kernel_restart_prepare("kexec reboot"). */
	if (action == SYS_RESTART && cmd && !strcmp(cmd, "kexec reboot"))
		luo_freeze_atomic(0); /* too late to fail: the kexec goes on */
	return NOTIFY_DONE;
}

static struct notifier_block luo_reboot_nb = {
	.notifier_call = luo_reboot_notify,
};

static bool luo_notifier_registered;

/* --- ioctl handlers (called with luo_mutex held) --- */

static int luo_fd_preserve(struct luo_arg_fd_preserve *a)
{
	enum luo_state s = luo_get_state();
	struct luo_token *t;
	struct file *file;

	if (s != LUO_STATE_NORMAL && s != LUO_STATE_PREPARED)
		return -EBUSY;
	if (luo_token_find(a->token))
		return -EEXIST;
	file = fget(a->fd);
	if (!file)
		return -EBADF;
	t = kzalloc(sizeof(*t), GFP_KERNEL);
	if (!t) {
		fput(file);
		return -ENOMEM;
	}
	t->token = a->token;
	t->file = file;
	t->state = LUO_STATE_NORMAL;
	list_add_tail(&t->list, &luo_tokens);
	return 0;
}

static int luo_fd_unpreserve(struct luo_arg_fd_unpreserve *a)
{
	enum luo_state s = luo_get_state();
	struct luo_token *t;

	if (s != LUO_STATE_NORMAL && s != LUO_STATE_PREPARED)
		return -EBUSY;
	t = luo_token_find(a->token);
	if (!t)
		return -ENOENT;
	list_del(&t->list);
	fput(t->file);
	kfree(t);
	return 0;
}

static int luo_fd_restore(struct luo_arg_fd_restore *a)
{
	if (luo_get_state() != LUO_STATE_UPDATED)
		return -EBUSY;
	/* Nothing crosses a reboot here: no incoming token exists. */
	return -ENOENT;
}

static int luo_set_event(struct luo_arg_set_event *a)
{
	int err;

	switch (a->event) {
	case LUO_EVENT_PREPARE:
		if (luo_get_state() != LUO_STATE_NORMAL)
			return -EINVAL;
		/* The state cannot leave NORMAL without luo_mutex, which we hold. */
		if (prepare_delay_ms)
			msleep(prepare_delay_ms);
		err = READ_ONCE(fail_prepare);
		if (err)
			return luo_errno(err);
		return luo_transition(LUO_STATE_NORMAL, LUO_STATE_PREPARED) ? 0 : -EINVAL;
	case LUO_EVENT_FINISH:
		if (!luo_transition(LUO_STATE_UPDATED, LUO_STATE_NORMAL))
			return -EINVAL;
		/* Unrestored incoming resources would be discarded: there are none. */
		return 0;
	case LUO_EVENT_CANCEL:
		if (!luo_transition(LUO_STATE_PREPARED, LUO_STATE_NORMAL) &&
		    !luo_transition(LUO_STATE_FROZEN, LUO_STATE_NORMAL))
			return -EINVAL;
		/* Tokens stay preserved; per-fd preparation is undone. */
		luo_tokens_reset_fd_state();
		return 0;
	case LUO_EVENT_FREEZE: /* only inside the reboot call */
	default:
		return -EINVAL;
	}
}

static int luo_get_fd_state(struct luo_arg_get_fd_state *a)
{
	enum luo_state s = luo_get_state();
	struct luo_token *t;

	if (a->incoming)
		return -ENOENT; /* nothing was handed over */
	t = luo_token_find(a->token);
	if (!t)
		return -ENOENT;
	if (s == LUO_STATE_PREPARED || s == LUO_STATE_FROZEN)
		a->state = s;
	else
		a->state = t->state;
	return 0;
}

static int luo_set_fd_event(struct luo_arg_set_fd_event *a)
{
	enum luo_state s = luo_get_state();
	struct luo_token *t;

	switch (a->event) {
	case LUO_EVENT_PREPARE:
		t = luo_token_find(a->token);
		if (!t)
			return -ENOENT;
		if (s != LUO_STATE_NORMAL || t->state != LUO_STATE_NORMAL)
			return -EINVAL;
		t->state = LUO_STATE_PREPARED;
		return 0;
	case LUO_EVENT_CANCEL:
		t = luo_token_find(a->token);
		if (!t)
			return -ENOENT;
		if (s != LUO_STATE_NORMAL || t->state != LUO_STATE_PREPARED)
			return -EINVAL;
		t->state = LUO_STATE_NORMAL;
		return 0;
	case LUO_EVENT_FINISH:
		if (s != LUO_STATE_UPDATED)
			return -EBUSY;
		return -ENOENT; /* finish applies to incoming tokens: none */
	case LUO_EVENT_FREEZE:
	default:
		return -EINVAL;
	}
}

struct luo_ioctl_op {
	size_t size;	/* the kernel's struct */
	size_t min_size; /* offsetofend() of the last field, as the series' IOCTL_OP() */
};

#define LUO_OP(nr, type, last)                                                \
	[nr] = { .size = sizeof(type),                                        \
		 .min_size = offsetofend(type, last) }

static const struct luo_ioctl_op luo_ops[LUO_NR_MAX] = {
	LUO_OP(LUO_NR_FD_PRESERVE, struct luo_arg_fd_preserve, token),
	LUO_OP(LUO_NR_FD_UNPRESERVE, struct luo_arg_fd_unpreserve, token),
	LUO_OP(LUO_NR_FD_RESTORE, struct luo_arg_fd_restore, token),
	LUO_OP(LUO_NR_GET_STATE, struct luo_arg_get_state, state),
	LUO_OP(LUO_NR_SET_EVENT, struct luo_arg_set_event, event),
	LUO_OP(LUO_NR_GET_FD_STATE, struct luo_arg_get_fd_state, state),
	LUO_OP(LUO_NR_SET_FD_EVENT, struct luo_arg_set_fd_event, token),
};

static long luo_ioctl(struct file *filp, unsigned int cmd, unsigned long arg)
{
	void __user *uarg = (void __user *)arg;
	const struct luo_ioctl_op *op;
	union luo_arg a;
	unsigned int nr;
	u32 usize;
	long ret;

	nr = _IOC_NR(cmd);
	if (_IOC_TYPE(cmd) != LUO_IOC_TYPE || nr >= LUO_NR_MAX || cmd != _IO(LUO_IOC_TYPE, nr))
		return -EINVAL; /* the series answers EINVAL, not ENOTTY */
	op = &luo_ops[nr];

	if (get_user(usize, (u32 __user *)uarg))
		return -EFAULT;
	if (usize < op->min_size)
		return -EINVAL;
	memset(&a, 0, sizeof(a));
	ret = copy_struct_from_user(&a, op->size, uarg, usize);
	if (ret)
		return ret;

	if (mutex_lock_killable(&luo_mutex))
		return -EAGAIN;

	switch (nr) {
	case LUO_NR_FD_PRESERVE:
		ret = luo_fd_preserve(&a.preserve);
		break;
	case LUO_NR_FD_UNPRESERVE:
		ret = luo_fd_unpreserve(&a.unpreserve);
		break;
	case LUO_NR_FD_RESTORE:
		/* A real restore would fill a.restore.fd with an O_CLOEXEC fd. */
		ret = luo_fd_restore(&a.restore);
		break;
	case LUO_NR_GET_STATE:
		a.get_state.state = luo_get_state();
		ret = 0;
		break;
	case LUO_NR_SET_EVENT:
		ret = luo_set_event(&a.set_event);
		break;
	case LUO_NR_GET_FD_STATE:
		ret = luo_get_fd_state(&a.get_fd_state);
		break;
	case LUO_NR_SET_FD_EVENT:
		ret = luo_set_fd_event(&a.set_fd_event);
		break;
	default:
		ret = -EINVAL;
		break;
	}
	mutex_unlock(&luo_mutex);
	if (ret)
		return ret;

	/* Respond: the kernel's struct, cut to what userspace passed. */
	if (nr == LUO_NR_FD_RESTORE || nr == LUO_NR_GET_STATE || nr == LUO_NR_GET_FD_STATE) {
		if (copy_to_user(uarg, &a, min_t(size_t, usize, op->size)))
			return -EFAULT;
	}
	return 0;
}

static int luo_open(struct inode *inode, struct file *filp)
{
	int ret;

	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;
	if (test_and_set_bit(0, &luo_dev_busy))
		return -EBUSY;
	/* misc_open() set private_data to the miscdevice; keep it. */
	ret = nonseekable_open(inode, filp);
	if (ret)
		clear_bit(0, &luo_dev_busy);
	return ret;
}

static int luo_release(struct inode *inode, struct file *filp)
{
	/* Closing unpreserves every preserved fd but does not cancel. */
	mutex_lock(&luo_mutex);
	luo_tokens_drop_all();
	mutex_unlock(&luo_mutex);
	clear_bit(0, &luo_dev_busy);
	return 0;
}

static const struct file_operations luo_fops = {
	.owner = THIS_MODULE,
	.open = luo_open,
	.release = luo_release,
	.unlocked_ioctl = luo_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.llseek = no_llseek,
};

static struct miscdevice luo_miscdev = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "liveupdate",
	.fops = &luo_fops,
	.mode = 0600,
};

/* --- sysfs --- */

static ssize_t state_show(struct kobject *kobj, struct kobj_attribute *attr, char *buf)
{
	enum luo_state s = luo_get_state();

	if (s >= ARRAY_SIZE(luo_state_names))
		s = LUO_STATE_UNDEFINED;
	return sysfs_emit(buf, "%s\n", luo_state_names[s]);
}

static struct kobj_attribute luo_state_attr = __ATTR_RO(state);

/* --- module --- */

static int __init luo_emul_init(void)
{
	int ret;

	luo_state = start_updated ? LUO_STATE_UPDATED : LUO_STATE_NORMAL;

	luo_kobj = kobject_create_and_add("liveupdate", kernel_kobj);
	if (!luo_kobj)
		return -ENOMEM;
	ret = sysfs_create_file(luo_kobj, &luo_state_attr.attr);
	if (ret)
		goto err_kobj;
	luo_state_kn = sysfs_get_dirent(luo_kobj->sd, "state");
	if (!luo_state_kn) {
		ret = -ENOENT;
		goto err_kobj;
	}

	ret = register_kprobe(&luo_kprobe);
	if (!ret) {
		luo_kprobe_registered = true;
		strscpy(freeze_hook, "kprobe", sizeof(freeze_hook));
	} else {
		pr_warn("kprobe on kernel_kexec refused (%d), freezing from a reboot notifier\n",
			ret);
		ret = register_reboot_notifier(&luo_reboot_nb);
		if (ret)
			goto err_kn;
		luo_notifier_registered = true;
		strscpy(freeze_hook, "notifier", sizeof(freeze_hook));
	}

	ret = misc_register(&luo_miscdev);
	if (ret)
		goto err_hook;

	pr_info("v3 live-update emulation loaded: state %s, freeze hook %s\n",
		luo_state_names[luo_state], freeze_hook);
	return 0;

err_hook:
	if (luo_kprobe_registered)
		unregister_kprobe(&luo_kprobe);
	if (luo_notifier_registered)
		unregister_reboot_notifier(&luo_reboot_nb);
err_kn:
	sysfs_put(luo_state_kn);
	luo_state_kn = NULL;
err_kobj:
	kobject_put(luo_kobj);
	return ret;
}

static void __exit luo_emul_exit(void)
{
	misc_deregister(&luo_miscdev);
	if (luo_kprobe_registered)
		unregister_kprobe(&luo_kprobe);
	if (luo_notifier_registered)
		unregister_reboot_notifier(&luo_reboot_nb);
	/* No open file can remain (the module is pinned while open); be safe. */
	mutex_lock(&luo_mutex);
	luo_tokens_drop_all();
	mutex_unlock(&luo_mutex);
	sysfs_put(luo_state_kn);
	luo_state_kn = NULL;
	kobject_put(luo_kobj);
}

module_init(luo_emul_init);
module_exit(luo_emul_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Emulation of the v3 live-update orchestrator interface (luofleet tests)");
