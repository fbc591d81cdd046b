#!/bin/sh
# run-vm: kernel=mainline
# run-vm: timeout=600
# mainline-bench: the blackout as a workload sees it, through the agent, beside the raw figure
# of the same kernel without the agent, in one QEMU run (bench/live-update; not part of the
# default VM suite). luofleet.mib=N on the command line (VM_APPEND) sets the size (default 64).
# Boot 1: luo_raw stage1: N MiB in a memfd, PRESERVE_FD, kexec_file_load, reboot(KEXEC).
# Boot 2: luo_raw stage2 (the raw figures); then the agent and the example workload: N MiB
#   preserved through the broker, prepare (confirmed), POST /v1/reboot.
# Boot 3: the workload retrieves its memfd through the broker and checks it.
# Both blackouts are taken by the share's clock (the host's: file mtimes), from the reboot
# call (raw) or the workload's reboot event (just before it) to the data verified back.
# shellcheck source=tests/e2e/scenarios/lib.sh
. /scenarios/lib.sh
# shellcheck source=tests/e2e/scenarios/sessions-lib.sh
. /scenarios/sessions-lib.sh
MIB=$(cmdline_arg luofleet.mib)
[ -n "$MIB" ] || MIB=64
SD=/mnt/state/mainline-bench
RT=/mnt/mainline-bench-reboot-usec
val() { grep -a '^RESULT ' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1; }

case "$BOOT" in
1)
        rm -rf "$SD" "$RT" "$RT.back" /mnt/luo-raw.stage1 /mnt/luo-raw.stage2 /mnt/bench-raw.out
        luo_raw stage1 "$MIB" /mnt/vmlinuz /mnt/initrd "$(next_cmdline 2)" /mnt
        fail "luo_raw stage1 returned, no kexec"
        ;;
2)
        luo_raw stage2 "$MIB" /mnt >/mnt/bench-raw.out 2>&1 || { cat /mnt/bench-raw.out; fail "luo_raw stage2"; }
        ok "raw: $MIB MiB back bit-exact"
        start_agent --backend=auto --state-dir="$SD" --sessions-socket="$SOCK" --reboot-delay=100ms
        # --settle-ms: the session's creation is journaled by the agent before the timed preserve
        # (a VMM creates its session at start), not beside it on the two emulated CPUs.
        wl_start vm1 /tmp/vm1.log --session=ram --mib="$MIB" --seed=9 --reboot-time="$RT" \
                --settle-ms=1500 preserve
        wait_log /tmp/vm1.log "preserve-ms=" "the workload's preserve"
        cp /tmp/vm1.log /mnt/bench-preserve.out
        stage_kernel mb:stage "$(next_cmdline 3)"
        req POST /v1/prepare '{"operation_id":"mb:prepare"}' -t 120
        expect_status 200 "prepare"
        sync
        req POST /v1/reboot '{"operation_id":"mb:reboot"}' -t 20
        expect_status 202 "reboot"
        sleep 120
        fail "no kexec"
        ;;
esac
# The workload starts with the machine, as a VMM would: it waits for the broker's socket, not
# for the agent's HTTP side.
$WL --socket="$SOCK" --name=vm1 --session=ram --mib="$MIB" --seed=9 --reboot-time="$RT" \
        --wait=60 restore >/tmp/restore.log 2>&1 &
WPID=$!
start_agent --backend=auto --state-dir="$SD" --sessions-socket="$SOCK"
wait "$WPID" || { cat /tmp/restore.log; fail "restore"; }
cat /tmp/restore.log
grep -q "checksum ok" /tmp/restore.log || fail "not bit-exact"
agent_b=$(sed -n 's/^blackout-to-data-ms-by-mtime=//p' /tmp/restore.log)
agent_ret=$(sed -n 's/^retrieve-ms=//p' /tmp/restore.log)
agent_pre=$(sed -n 's/^preserve-ms=//p' /mnt/bench-preserve.out)
raw_b=$(val /mnt/bench-raw.out blackout_host_ms)
raw_pre=$(val /mnt/bench-raw.out preserve_ms)
raw_ret=$(val /mnt/bench-raw.out retrieve_ms)
console "BENCH mib=$MIB raw_blackout_ms=$raw_b agent_blackout_ms=$agent_b raw_preserve_ms=$raw_pre agent_preserve_ms=$agent_pre raw_retrieve_ms=$raw_ret agent_retrieve_ms=$agent_ret"
req POST /v1/finish '{"operation_id":"mb:finish"}' -t 30
expect_status 200 "finish"
stop_agent
exit 0
