#!/bin/sh
# kexec-fail (issue 3, scenario 6): the kexec fails while frozen. Policy (docs/operations.md,
# "the kexec fails while frozen"): the reboot operation is recorded failed with the kernel's
# errno, the state stays frozen (as the kernel leaves it), POST /v1/cancel -> normal.
#  1. staged + prepared, luo_emul fail_kexec=16: POST /v1/reboot -> 202; reboot(KEXEC)
#     freezes then fails with EBUSY: operation failed, error kernel-busy/EBUSY, frozen
#     (sysfs too); the replayed id answers 409 kernel-busy replayed; cancel -> normal.
#  2. the same with fail_kexec=22: error kernel-error/EINVAL, frozen; a retried reboot from
#     frozen is accepted (202) and fails again; cancel -> normal.
#  3. the image unloaded behind the agent's back (kexec_file_load(KEXEC_FILE_UNLOAD) by
#     /bin/kexec-unload): POST /v1/reboot -> 409 no-kernel-staged before anything freezes,
#     state stays prepared; cancel -> normal.
# If a kexec happened anyway, boot 2 fails the scenario.
# shellcheck source=tests/e2e/scenarios/lib.sh
. /scenarios/lib.sh
SD=/mnt/state/kexec-fail
[ "$BOOT" = 1 ] || fail "a kexec happened although every reboot was meant to fail"


rm -rf "$SD"
load_emul
start_agent --backend=luo-v3 --state-dir="$SD"
expect_state normal "initial"
stage_kernel kf:stage "console=ttyS0 panic=-1 quiet luofleet.scenario=kexec-fail luofleet.boot=2"

# failing_reboot N ERRNO NAME CODE: prepared -> reboot with fail_kexec=ERRNO -> failed, frozen
failing_reboot() {
        emul_param fail_kexec "$2"
        req POST /v1/reboot "{\"operation_id\":\"kf:reboot$1\",\"reason\":\"fail_kexec=$2\"}" -t 20
        expect_status 202 "reboot $1 (fail_kexec=$2)"
        expect_field id "kf:reboot$1" "reboot $1: operation"
        wait_op_done "kf:reboot$1"
        expect_field state frozen "after the failed kexec $1"
        expect_field action reboot "operation after the failed kexec $1"
        expect_field status failed "operation status after the failed kexec $1"
        expect_field code "$4" "operation error code after the failed kexec $1"
        expect_field errno "$3" "operation errno after the failed kexec $1"
        expect_sysfs frozen "after the failed kexec $1"
        printf '%s' "$BODY" | grep -q '"finished_at":"' || fail "failed reboot $1 has no finished_at"
        [ "$(cat /sys/kernel/kexec_loaded)" = 1 ] || fail "the failed kexec $1 unloaded the image"
        ok "reboot $1 with fail_kexec=$2: 202, operation failed $4/$3, frozen (sysfs agrees)"
}

# 1. EBUSY
req POST /v1/prepare '{"operation_id":"kf:prepare1"}'
expect_status 200 "prepare 1"
expect_state prepared "after prepare 1"
failing_reboot 1 16 EBUSY kernel-busy
req POST /v1/reboot '{"operation_id":"kf:reboot1"}'
expect_problem 409 kernel-busy "replayed failed reboot 1"
expect_field replayed true "replayed failed reboot 1"
expect_field errno EBUSY "replayed failed reboot 1"
expect_state frozen "after the replay"
history_body
printf '%s\n' "$HIST" | grep -q '"from":"prepared","to":"frozen"' || fail "no prepared -> frozen transition in history"
emul_param fail_kexec 0
req POST /v1/cancel '{"operation_id":"kf:cancel1"}'
expect_status 200 "cancel from frozen (1)"
expect_field state normal "cancel from frozen (1)"
expect_state normal "after cancel 1"
ok "cancel from frozen: 200 normal"

# 2. EINVAL, then a retry from frozen fails the same way
req POST /v1/prepare '{"operation_id":"kf:prepare2"}'
expect_status 200 "prepare 2"
failing_reboot 2 22 EINVAL kernel-error
req POST /v1/reboot '{"operation_id":"kf:reboot3","reason":"retry from frozen"}' -t 20
expect_status 202 "retried reboot from frozen"
wait_op_done kf:reboot3
expect_field state frozen "after the retried reboot"
expect_field status failed "retried reboot"
expect_field errno EINVAL "retried reboot"
expect_sysfs frozen "after the retried reboot"
ok "a reboot retried from frozen is accepted and fails again (EINVAL), frozen"
emul_param fail_kexec 0
req POST /v1/cancel '{"operation_id":"kf:cancel2"}'
expect_status 200 "cancel from frozen (2)"
expect_state normal "after cancel 2"

# 3. the image unloaded behind the agent's back
req POST /v1/prepare '{"operation_id":"kf:prepare4"}'
expect_status 200 "prepare 4"
expect_state prepared "after prepare 4"
idx4=$IDX
kexec-unload || fail "kexec-unload failed"
[ "$(cat /sys/kernel/kexec_loaded)" = 0 ] || fail "kexec_loaded still 1 after the unload"
req POST /v1/reboot '{"operation_id":"kf:reboot4"}' -t 20
expect_problem 409 no-kernel-staged "reboot after the image was unloaded"
expect_field state prepared "no-kernel-staged problem state"
printf '%s' "$BODY" | grep -q 'no kexec image loaded' || fail "the problem does not say the image is not loaded"
expect_state prepared "after the refused reboot"
[ "$IDX" = "$idx4" ] || fail "the refused reboot changed the index: $idx4 -> $IDX"
sleep 0.5
expect_sysfs prepared "0.5 s after the refused reboot (nothing froze)"
ok "image unloaded behind the agent: reboot 409 no-kernel-staged, still prepared, index $IDX"
req POST /v1/cancel '{"operation_id":"kf:cancel4"}'
expect_status 200 "cancel 4"
expect_state normal "final"
stop_agent
exit 0
