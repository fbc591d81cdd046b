#!/bin/sh
# run-vm: kernel=mainline
# mainline-raw: the raw live-update figures of the mainline kernel, without the agent.
# Boot 1: luo_raw stage1 (tests/e2e/mainline/luo_raw.c): the §B errno checks, a 64 MiB memfd
# (luofleet.raw_mib=N on the command line changes the size) filled with a pattern and
# preserved in session "luo-raw", kexec_file_load of /mnt/vmlinuz + /mnt/initrd with this
# command line plus luofleet.boot=2, reboot(LINUX_REBOOT_CMD_KEXEC): a real kexec.
# Boot 2: luo_raw stage2: retrieve, verify bit-exact, finish; the blackout (reboot call ->
# data verified back) and the preserve/retrieve times go to the console as RESULT lines.
# shellcheck source=tests/e2e/scenarios/lib.sh
. /scenarios/lib.sh

MIB=$(cmdline_arg luofleet.raw_mib)
[ -n "$MIB" ] || MIB=64

# the first failed check of luo_raw's output in FILE, for the FAIL line
first_failure() { grep -a '^not ok' "$1" | head -n 1; }

if [ "$BOOT" = 1 ]; then
        console "boot 1: kernel $(uname -r), /init at ${INIT_UPTIME:-?} s uptime"
        [ -c /dev/liveupdate ] || fail "no /dev/liveupdate"
        rm -f /mnt/luo-raw.stage1 /mnt/luo-raw.stage2
        next="$(sed 's/ *luofleet\.boot=[0-9]*//g' /proc/cmdline) luofleet.boot=2"
        log "luo_raw stage1 $MIB MiB; next command line: $next"
        # luo_raw writes straight into the log on the share (no pipe: its last lines
        # before the kexec must not wait in a pipe buffer)
        luo_raw stage1 "$MIB" /mnt/vmlinuz /mnt/initrd "$next" /mnt
        rc=$?
        fail "luo_raw stage1 returned $rc, no kexec: $(first_failure "$LOG")"
fi
[ "$BOOT" = 2 ] || fail "unexpected boot $BOOT"

log "kernel $(uname -r), /init at ${INIT_UPTIME:-?} s uptime; kernel log on the handover:"
dmesg | grep -E 'KHO|luo|liveupdate' | sed 's/^/  kernel: /'
dmesg | grep -q 'KHO: found kexec handover data' || fail "the kernel log has no 'KHO: found kexec handover data'"
luo_raw stage2 "$MIB" /mnt >/tmp/raw.out 2>&1
rc=$?
cat /tmp/raw.out
[ "$rc" -eq 0 ] || fail "luo_raw stage2 exit $rc: $(first_failure /tmp/raw.out)"
ok "the $MIB MiB memfd came back bit-exact through the kexec"

# luo_raw's "RESULT k=v ..." lines, and the kexec alone: reboot call -> the next /init
# (the host clock's blackout minus the time from /init to the verification)
val() { grep -a '^RESULT ' /tmp/raw.out | tr ' ' '\n' | sed -n "s/^$1=//p" | head -n 1; }
kexec_ms=$(awk -v b="$(val blackout_host_ms)" -v v="$(val uptime_at_verified_ms)" \
        -v i="${INIT_UPTIME:-0}" 'BEGIN { printf "%.0f", b - (v - i * 1000) }')
console "raw blackout $(val blackout_ms) ms by the guest's clock, $(val blackout_host_ms) ms by the host's (reboot(KEXEC) -> $MIB MiB verified); reboot call -> next /init $kexec_ms ms, kernel uptime at /init ${INIT_UPTIME:-?} s, at stage 2 start $(val uptime_at_stage2_ms) ms"
console "raw preserve $(val preserve_ms) ms, retrieve $(val retrieve_ms) ms for $MIB MiB ($(val preserve_ms_per_gib) / $(val retrieve_ms_per_gib) ms per GiB); first open of /dev/liveupdate $(val first_open_ms) ms"
grep -a '^RESULT ' /tmp/raw.out | while read -r _ rest; do console "luo_raw $rest"; done
exit 0
