#!/bin/sh
# run-vm: kernel=mainline
# mainline-boot: the mainline guest (Linux 7.3 of scripts/mainline-kernel, kexec handover and
# live update built in, booted with kho=on liveupdate=on). The sessions interface is there
# (/dev/liveupdate, "liveupdate" in /proc/misc), the v3 one is not (no /sys/kernel/liveupdate),
# and the agent's userland runs on this kernel: --backend=sim, state on the 9p share,
# GET /v1/state 200, SIGTERM -> exit 0.
# shellcheck source=tests/e2e/scenarios/lib.sh
. /scenarios/lib.sh

log "kernel $(uname -r), /init at ${INIT_UPTIME:-?} s uptime, cmdline: $(cat /proc/cmdline)"
[ "$(uname -r)" = "$(cat /etc/kver)" ] || fail "running kernel $(uname -r), initramfs built for $(cat /etc/kver)"
[ -c /dev/liveupdate ] || fail "no character device /dev/liveupdate (kho=on liveupdate=on?)"
ok "/dev/liveupdate: $(ls -l /dev/liveupdate)"
[ ! -e /sys/kernel/liveupdate ] || fail "/sys/kernel/liveupdate exists (the v3 interface) on the mainline kernel"
ok "no /sys/kernel/liveupdate"
grep -qw liveupdate /proc/misc || fail "/proc/misc does not list liveupdate"
ok "/proc/misc: $(grep -w liveupdate /proc/misc)"
[ "$(cat /sys/kernel/kexec_loaded)" = 0 ] || fail "/sys/kernel/kexec_loaded is not 0 at boot"
bid=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)
[ ${#bid} -eq 36 ] || fail "no boot id in /proc/sys/kernel/random/boot_id ('$bid')"
ok "kexec_loaded 0, boot_id $bid"
cpus=$(cat /sys/devices/system/cpu/online)
log "CPUs online: $cpus"

t0=$(cut -d' ' -f1 /proc/uptime)
rm -rf /mnt/state/mainline-boot
start_agent --backend=sim --state-dir=/mnt/state/mainline-boot
t1=$(cut -d' ' -f1 /proc/uptime)
req GET /v1/state
expect_status 200 "GET /v1/state"
expect_field backend sim "backend"
expect_field state normal "initial state"
ok "the agent answers /v1/state 200 normal (sim)"
req POST /v1/prepare '{"operation_id":"mainline-boot:prepare"}'
expect_status 200 "POST /v1/prepare"
req POST /v1/cancel '{"operation_id":"mainline-boot:cancel"}'
expect_status 200 "POST /v1/cancel"
expect_field state normal "after cancel"
ok "prepare and cancel through the journal on the share"
stop_agent

console "kernel $(uname -r), CPUs $cpus, /init at ${INIT_UPTIME:-?} s uptime, agent up in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b - a}') s"
exit 0
