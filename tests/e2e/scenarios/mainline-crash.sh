#!/bin/sh
# run-vm: kernel=mainline
# mainline-crash: kill -9 of the agent's network process while prepared, then the live update
# (issue 11, VM scenario 5). The session fds live in the privileged helper, never in the
# network process: the helper outlives it, keeps serving the workload, and the next agent
# attaches to it; the reboot through that agent carries the memfd bit-exact.
# Boot 1: vm1 preserves 16 MiB; stage; prepare; kill -9 the network process (the helper stays);
#   start the agent again: it attaches ("Attached to the privileged helper"), state prepared,
#   vm1's session still outgoing; POST /v1/reboot -> 202.
# Boot 2: updated; vm1's data back bit-exact; finish -> normal.
# shellcheck source=tests/e2e/scenarios/lib.sh
. /scenarios/lib.sh
# shellcheck source=tests/e2e/scenarios/sessions-lib.sh
. /scenarios/sessions-lib.sh
SD=/mnt/state/mainline-crash
MARK=/mnt/mainline-crash-boot1

if [ "$BOOT" = 1 ]; then
        rm -rf "$SD" "$MARK"
        start_agent --backend=auto --state-dir="$SD" --sessions-socket="$SOCK" \
                --reboot-delay=300ms
        wl_start vm1 /tmp/vm1.log --session=ram --mib=16 --seed=11 preserve
        wait_log /tmp/vm1.log "preserved" "vm1's preserve"
        stage_kernel mk:stage "$(next_cmdline 2)"
        req POST /v1/prepare '{"operation_id":"mk:prepare"}' -t 60
        expect_status 200 "prepare"
        expect_field state prepared "after prepare"
        h=$(helper_pid)
        [ -n "$h" ] || fail "no privileged helper (luofleet-priv) found"
        kill -9 "$AGENT_PID"
        wait "$AGENT_PID" 2>/dev/null
        AGENT_PID=""
        sleep 1
        kill -0 "$h" 2>/dev/null || fail "the helper (pid $h) died with the network process"
        ok "network process killed (-9); the helper $h lives on"
        start_agent --backend=auto --state-dir="$SD" --sessions-socket="$SOCK" \
                --reboot-delay=300ms
        grep -q "Attached to the privileged helper (pid $h)" /tmp/agent.log ||
                { cat /tmp/agent.log; fail "the new agent did not attach to helper $h"; }
        req GET /v1/state
        expect_field state prepared "after the restart"
        sessions_body
        printf '%s' "$BODY" | grep -q '"name":"ram","kernel_name":"lf:0:ram","owner_uid":0,"workload":"vm1","phase":"outgoing","fds":1' ||
                fail "vm1's session not outgoing after the restart: $BODY"
        ok "the new agent attached to helper $h: prepared, vm1's session outgoing"
        req GET /v1/state
        echo "boot_id=$(jstr boot_id)" >"$MARK"
        sync
        req POST /v1/reboot '{"operation_id":"mk:reboot"}' -t 20
        expect_status 202 "POST /v1/reboot"
        sync
        sleep 60
        fail "still in boot 1 60 s after the 202 (no kexec)"
fi

[ -s "$MARK" ] || fail "boot 2 without the boot-1 marker"
start_agent --backend=auto --state-dir="$SD" --sessions-socket="$SOCK"
req GET /v1/state
expect_field state updated "after the live update"
$WL --socket="$SOCK" --name=vm1 --session=ram --mib=16 --seed=11 restore >/tmp/restore.log 2>&1 ||
        { cat /tmp/restore.log; fail "vm1's restore failed"; }
cat /tmp/restore.log
grep -q "checksum ok" /tmp/restore.log || fail "no bit-exact restore"
req POST /v1/finish '{"operation_id":"mk:finish"}' -t 30
expect_status 200 "finish"
expect_field state normal "after finish"
ok "after kill -9 of the network process and the kexec, vm1's 16 MiB came back bit-exact"
stop_agent
exit 0
