#!/bin/sh
# run-vm: kernel=mainline
# mainline-cycle: a live update that keeps a workload's memory, on a real Linux 7.3 (issue 11,
# VM scenarios 2 and 7). Two boots in one QEMU run, through a real kexec_file_load +
# reboot(LINUX_REBOOT_CMD_KEXEC) with kexec handover.
# Boot 1: workload vm1 (registered) fills 64 MiB of a memfd from a seed and preserves it;
#   workload idle preserves 4 MiB and will never retrieve it; stage the kernel; prepare (both
#   confirm); POST /v1/reboot -> 202 before the jump.
# Boot 2: the agent finds luo-sessions in updated (its marker session came through), a new boot
#   id, the index continued, the reboot operation succeeded with its record; GET /v1/sessions
#   has both sessions incoming and the previous boot's note naming the reboot; vm1's next
#   incarnation retrieves its memfd and checks it bit-exact, printing the time from the reboot
#   call to its data being back; finish -> 409 sessions-unfinished naming idle's session;
#   finish with force -> normal, idle's session freed (a force-finished record).
# shellcheck source=tests/e2e/scenarios/lib.sh
. /scenarios/lib.sh
# shellcheck source=tests/e2e/scenarios/sessions-lib.sh
. /scenarios/sessions-lib.sh
SD=/mnt/state/mainline-cycle
MARK=/mnt/mainline-cycle-boot1
RT=/mnt/mainline-cycle-reboot-usec
MIB=${MIB:-64}

if [ "$BOOT" = 1 ]; then
        rm -rf "$SD" "$MARK" "$RT"
        start_agent --backend=auto --state-dir="$SD" --sessions-socket="$SOCK" \
                --reboot-delay=300ms
        req GET /v1/state
        expect_field state normal "boot 1"
        expect_field backend luo-sessions "backend"
        boot1=$(jstr boot_id)
        wl_start vm1 /tmp/vm1.log --session=ram --mib="$MIB" --seed=7 --reboot-time="$RT" preserve
        VM1=$WL_PID
        wl_start idle /tmp/idle.log --session=cache --mib=4 --seed=3 preserve
        wait_log /tmp/vm1.log "preserved" "vm1's preserve"
        wait_log /tmp/idle.log "preserved" "idle's preserve"
        cat /tmp/vm1.log
        sessions_body
        [ "$(count_of '"phase":"outgoing"')" = 2 ] || fail "two outgoing sessions expected: $BODY"
        stage_kernel mc:stage "$(next_cmdline 2)"
        req POST /v1/prepare '{"operation_id":"mc:prepare"}' -t 60
        expect_status 200 "prepare"
        expect_field state prepared "after prepare"
        wait_log /tmp/vm1.log "event prepare .*confirmed" "vm1 confirmed"
        wait_log /tmp/idle.log "event prepare .*confirmed" "idle confirmed"
        idx1=$(jstr index)
        echo "boot_id=$boot1 index=$idx1" >"$MARK"
        sync
        req POST /v1/reboot '{"operation_id":"mc:reboot","reason":"mainline live update"}' -t 20
        expect_status 202 "POST /v1/reboot"
        ok "202 received before the jump; waiting for the kexec"
        sync
        sleep 60
        fail "still in boot 1 60 s after the 202 (no kexec)"
fi

# boot 2
t_init=$(cut -d' ' -f1 /proc/uptime)
[ -s "$MARK" ] || fail "boot 2 without the boot-1 marker"
boot1=$(sed -n 's/.*boot_id=\([^ ]*\).*/\1/p' "$MARK")
idx1=$(sed -n 's/.*index=\([0-9]*\).*/\1/p' "$MARK")
start_agent --backend=auto --state-dir="$SD" --sessions-socket="$SOCK"
req GET /v1/state
expect_status 200 "GET /v1/state (boot 2)"
expect_field backend luo-sessions "backend (boot 2)"
expect_field state updated "state after the live update"
boot2=$(jstr boot_id)
idx2=$(jstr index)
[ "$boot2" != "$boot1" ] || fail "boot_id unchanged across the kexec ($boot1)"
[ "$idx2" -gt "$idx1" ] || fail "index did not continue: boot 1 $idx1, boot 2 $idx2"
expect_field action reboot "last operation"
expect_field status succeeded "reboot operation"
printf '%s' "$BODY" | grep -q '"incoming":2' || fail "summary without 2 incoming sessions: $BODY"
# the retrieved marker session told whether the kernel has GET_NAME (7.3 has it)
case "$(jstr interface)" in
*" GET_NAME)"*) ok "interface: $(jstr interface)" ;;
*) fail "interface without GET_NAME on 7.3: $(jstr interface)" ;;
esac
ok "updated, boot $boot1 -> $boot2, index $idx1 -> $idx2, reboot succeeded"
req GET '/v1/history?kind=reboot'
printf '%s' "$BODY" | grep -q "\"from_boot_id\":\"$boot1\"" || fail "no reboot record from $boot1: $BODY"
sessions_body
[ "$(count_of '"phase":"incoming"')" = 2 ] || fail "two incoming sessions expected: $BODY"
printf '%s' "$BODY" | grep -q 'operation=mc:reboot' || fail "previous_boot note lacks the reboot: $BODY"

# vm1 takes its memory back, bit-exact
$WL --socket="$SOCK" --name=vm1 --session=ram --mib="$MIB" --seed=7 --reboot-time="$RT" restore \
        >/tmp/restore.log 2>&1 || { cat /tmp/restore.log; fail "vm1's restore failed"; }
cat /tmp/restore.log
grep -q "checksum ok" /tmp/restore.log || fail "no bit-exact restore"
b2d=$(sed -n 's/^blackout-to-data-ms=\([-0-9.]*\).*/\1/p' /tmp/restore.log)
b2h=$(sed -n 's/^blackout-to-data-ms-by-mtime=\([-0-9.]*\).*/\1/p' /tmp/restore.log)
[ -n "$b2h" ] || fail "no host-clock blackout figure"
rtime=$(sed -n 's/.*restored .* in \([0-9.]*\) ms.*/\1/p' /tmp/restore.log)
ok "vm1: $MIB MiB back bit-exact (retrieve ${rtime} ms, reboot event -> data back ${b2h} ms by the share's clock, ${b2d} ms by the guest's)"

# finish: idle never retrieved its session
req POST /v1/finish '{"operation_id":"mc:finish"}' -t 30
expect_problem 409 sessions-unfinished "finish with idle's session unfinished"
printf '%s' "$BODY" | grep -q '"name":"cache"' || fail "the problem does not name cache: $BODY"
req POST /v1/finish '{"operation_id":"mc:finish-force","force":true}' -t 30
expect_status 200 "finish with force"
expect_field state normal "after the forced finish"
req GET '/v1/history?kind=session'
printf '%s' "$BODY" | grep -q '"event":"force-finished"' || fail "no force-finished record: $BODY"
sessions_body
[ "$(count_of '"kernel_name"')" = 0 ] || fail "sessions left after finish: $BODY"
ok "finish: 409 naming cache, then forced: normal, no session left"
stop_agent
console "LIVE UPDATE ${MIB} MiB: kernel up at /init ${t_init} s, retrieve ${rtime} ms, reboot event -> data back ${b2h} ms (host clock; guest clock ${b2d} ms)"
exit 0
