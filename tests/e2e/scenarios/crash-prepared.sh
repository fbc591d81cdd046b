#!/bin/sh
# crash-prepared (issue 3, scenario 5): the agent is killed (-9) while the kernel is
# prepared. Policy (docs/operations.md, "the agent restarts while the host is prepared"):
# the device's release leaves the kernel prepared; the next agent reopens the device (no
# EBUSY), reads prepared, does not cancel and does not reboot, logs the warning
# "Started while the kernel is prepared", and reports prepared; POST /v1/cancel -> normal.
# shellcheck source=tests/e2e/scenarios/lib.sh
. /scenarios/lib.sh
SD=/mnt/state/crash-prepared
rm -rf "$SD"
load_emul
start_agent --backend=luo-v3 --state-dir="$SD"
expect_state normal "initial"
boot=$(jstr boot_id)
req POST /v1/prepare '{"operation_id":"crash:prepare"}'
expect_status 200 "prepare"
expect_state prepared "after prepare"
idx1=$IDX

pid1=$AGENT_PID
kill -9 "$pid1"
wait "$pid1" 2>/dev/null
rc=$?
AGENT_PID=""
[ "$rc" -eq 137 ] || fail "killed agent exit status $rc, want 137 (SIGKILL)"
kill -0 "$pid1" 2>/dev/null && fail "agent $pid1 still alive after kill -9"
expect_sysfs prepared "after kill -9 (the device release must not cancel)"
ok "agent $pid1 killed with SIGKILL; kernel still prepared"
cp /tmp/agent.log /tmp/agent1.log

# the restart: must open the device (the killed agent's handle was released)
start_agent --backend=luo-v3 --state-dir="$SD"
grep -q "another live-update agent" /tmp/agent.log && fail "the restarted agent met EBUSY"
grep -q "Started while the kernel is prepared" /tmp/agent.log ||
        { cat /tmp/agent.log; fail "no warning 'Started while the kernel is prepared' in the agent log"; }
grep "Started while the kernel is prepared" /tmp/agent.log
ok "restarted agent $AGENT_PID opened /dev/liveupdate and warned"

expect_state prepared "after the restart"
[ "$(jstr boot_id)" = "$boot" ] || fail "boot_id changed without a reboot"
# same boot, same agent/kernel/backend, same state: the restart has nothing to record
[ "$IDX" = "$idx1" ] || fail "the restart while prepared changed the index: $idx1 -> $IDX"
expect_field backend luo-v3 "backend after the restart"
req GET /readyz
expect_status 200 "/readyz after the restart while prepared"
expect_field status ready "/readyz"
sleep 1
expect_sysfs prepared "1 s after the restart (no cancel, no reboot)"

history_body
printf '%s\n' "$HIST"
printf '%s\n' "$HIST" | grep -q '"action":"cancel"' && fail "history has a cancel operation"
printf '%s\n' "$HIST" | grep -q '"to":"normal"' && fail "history has a transition to normal"
printf '%s\n' "$HIST" | grep -q '"action":"reboot"' && fail "history has a reboot operation"
n=$(printf '%s\n' "$HIST" | grep -c '"kind":"start"')
[ "$n" = 1 ] || fail "history has $n start records, want 1 (the restart changed no fact)"
n=$(printf '%s\n' "$HIST" | grep -c '"from":"normal","to":"prepared"')
[ "$n" = 1 ] || fail "history has $n normal -> prepared transitions, want 1"
ok "history: one start, one prepare, no cancel/reboot, no transition to normal"

# replaying the prepare id answers the recorded outcome and does not act
req POST /v1/prepare '{"operation_id":"crash:prepare"}'
expect_status 200 "replayed prepare after the restart"
expect_state prepared "after the replayed prepare"

req POST /v1/cancel '{"operation_id":"crash:cancel"}'
expect_status 200 "cancel after the restart"
expect_field state normal "cancel after the restart"
expect_state normal "after cancel"
history_body
printf '%s\n' "$HIST" | grep -q '"from":"prepared","to":"normal","cause":"operation","operation_id":"crash:cancel"' ||
        fail "no prepared -> normal transition by crash:cancel in history"
ok "cancel -> normal, recorded as crash:cancel"
stop_agent
exit 0
