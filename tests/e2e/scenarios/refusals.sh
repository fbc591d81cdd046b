#!/bin/sh
# refusals (issue 3, scenario 4): what the agent refuses on the real backend, and that a
# refusal changes nothing (the kernel's sysfs and /v1/state, the index).
#  - reboot with no kernel staged from prepared -> 409 no-kernel-staged, still prepared (from
#    normal the action table answers first: 409 invalid-transition)
#  - finish from normal -> 409 invalid-transition, allowed_actions ["prepare"]; cancel from
#    normal and finish from prepared likewise; prepare -> 200; cancel from prepared -> normal
#  - fail_prepare=5: prepare -> 500 kernel-error, errno EIO, state normal; the replay of the
#    same operation_id answers the recorded failure (replayed: true)
#  - prepare_delay_ms=1500: a cancel during the slow prepare -> 409 operation-in-progress
#    naming the running operation; the prepare then answers 200 prepared
# shellcheck source=tests/e2e/scenarios/lib.sh
. /scenarios/lib.sh
SD=/mnt/state/refusals
rm -rf "$SD"
load_emul
expect_sysfs normal "after insmod"
start_agent --backend=luo-v3 --state-dir="$SD"
expect_state normal "initial"
idx0=$IDX

# reboot from normal: not in the action table (docs/api.md "Which action when"), so the
# agent answers invalid-transition before it looks for a staged kernel
req POST /v1/reboot '{"operation_id":"ref:reboot-normal"}'
expect_problem 409 invalid-transition "reboot from normal"
expect_field state normal "reboot from normal: problem state"
printf '%s' "$BODY" | grep -q '"allowed_actions":\["prepare"\]' ||
        fail "reboot from normal: allowed_actions is not [\"prepare\"]"
expect_state normal "after the refused reboot"
[ "$IDX" = "$idx0" ] || fail "a refused reboot changed the index: $idx0 -> $IDX"
[ "$(cat /sys/kernel/kexec_loaded)" = 0 ] || fail "kexec_loaded is not 0"
ok "reboot from normal: 409 invalid-transition, allowed_actions [prepare], index $IDX unchanged"

# finish / cancel from normal
req POST /v1/finish '{"operation_id":"ref:finish-normal"}'
expect_problem 409 invalid-transition "finish from normal"
expect_field state normal "finish from normal: problem state"
printf '%s' "$BODY" | grep -q '"allowed_actions":\["prepare"\]' ||
        fail "finish from normal: allowed_actions is not [\"prepare\"]"
req POST /v1/cancel '{"operation_id":"ref:cancel-normal"}'
expect_problem 409 invalid-transition "cancel from normal"
printf '%s' "$BODY" | grep -q '"allowed_actions":\["prepare"\]' ||
        fail "cancel from normal: allowed_actions is not [\"prepare\"]"
expect_state normal "after the refused finish/cancel"
[ "$IDX" = "$idx0" ] || fail "refused finish/cancel changed the index: $idx0 -> $IDX"
ok "finish and cancel from normal: 409 invalid-transition, allowed_actions [prepare], nothing changed"

# prepare, then the refusals of prepared
req POST /v1/prepare '{"operation_id":"ref:prepare1"}'
expect_status 200 "prepare from normal"
expect_field state prepared "prepare from normal"
expect_state prepared "after prepare"
idx1=$IDX
req POST /v1/finish '{"operation_id":"ref:finish-prepared"}'
expect_problem 409 invalid-transition "finish from prepared"
printf '%s' "$BODY" | grep -q '"allowed_actions":\["reboot","cancel"\]' ||
        fail "finish from prepared: allowed_actions is not [\"reboot\",\"cancel\"]"
req POST /v1/reboot '{"operation_id":"ref:reboot-prepared"}'
expect_problem 409 no-kernel-staged "reboot with no kernel staged (prepared)"
expect_field state prepared "no-kernel-staged problem (prepared)"
expect_state prepared "after the refused reboot (prepared)"
[ "$IDX" = "$idx1" ] || fail "refusals in prepared changed the index: $idx1 -> $IDX"
ok "prepared: finish 409 invalid-transition [reboot,cancel], reboot 409 no-kernel-staged, still prepared"
req POST /v1/cancel '{"operation_id":"ref:cancel1"}'
expect_status 200 "cancel from prepared"
expect_field state normal "cancel from prepared"
expect_state normal "after cancel"
ok "cancel from prepared: 200 normal (sysfs agrees)"

# a failing PREPARE callback: EIO
emul_param fail_prepare 5
req POST /v1/prepare '{"operation_id":"ref:prepare-eio"}'
expect_problem 500 kernel-error "prepare with fail_prepare=5"
expect_field errno EIO "prepare with fail_prepare=5"
expect_field state normal "prepare with fail_prepare=5: problem state"
expect_state normal "after the failed prepare"
expect_field id ref:prepare-eio "operation after the failed prepare"
expect_field status failed "operation status after the failed prepare"
expect_field errno EIO "operation error after the failed prepare"
req POST /v1/prepare '{"operation_id":"ref:prepare-eio"}'
expect_problem 500 kernel-error "replayed failed prepare"
expect_field replayed true "replayed failed prepare"
expect_sysfs normal "after the replay"
emul_param fail_prepare 0
ok "fail_prepare=5: 500 kernel-error errno EIO, operation failed, normal; replay answers the same"

# a slow PREPARE: a cancel meanwhile is refused
emul_param prepare_delay_ms 1500
lfc -T -t 20 -d '{"operation_id":"ref:prepare-slow"}' POST "$A/v1/prepare" >/tmp/slow.out 2>/tmp/slow.err &
slow=$!
i=0
while :; do
        req GET /v1/state
        [ "$(jstr id)" = ref:prepare-slow ] && [ "$(jstr status)" = running ] && break
        i=$((i + 1))
        [ $i -lt 50 ] || fail "the slow prepare never showed as running"
        sleep 0.05
done
expect_field state normal "state while the slow prepare runs"
req POST /v1/cancel '{"operation_id":"ref:cancel-during"}'
expect_problem 409 operation-in-progress "cancel during the slow prepare"
expect_field operation_id ref:prepare-slow "operation-in-progress names the running operation"
req POST /v1/prepare '{"operation_id":"ref:prepare-other"}'
expect_problem 409 operation-in-progress "a second prepare during the slow prepare"
wait $slow || fail "the slow prepare's client failed (exit $?)"
cat /tmp/slow.out /tmp/slow.err
[ "$(head -n 1 /tmp/slow.out)" = 200 ] || fail "slow prepare answered $(head -n 1 /tmp/slow.out), want 200"
ms=$(($(lfc_time /tmp/slow.err elapsed_us) / 1000))
[ "$ms" -ge 1400 ] || fail "the slow prepare took only $ms ms with prepare_delay_ms=1500"
expect_state prepared "after the slow prepare"
emul_param prepare_delay_ms 0
ok "prepare_delay_ms=1500: cancel meanwhile 409 operation-in-progress (ref:prepare-slow); prepare 200 after $ms ms"
req POST /v1/cancel '{"operation_id":"ref:cancel-during"}'
expect_status 200 "cancel after the slow prepare (a refused id is not recorded)"
expect_state normal "final"
stop_agent
exit 0
