#!/bin/sh
# kexec: a real live-update reboot through the agent (luo-v3 on the emulation module).
# Boot 1: stage /mnt/vmlinuz + /mnt/initrd (sha256 from the host, /mnt/sha256) with a
#   command line that says luofleet.boot=2 luo_emul.start_updated=1, prepare, reboot:
#   the 202 must reach the client before the jump; the kernel is then replaced.
# Boot 2 (same initramfs): the module starts in `updated`; the agent finds its journal
#   on the share: state updated, a new boot_id, the index continued, a planned reboot
#   record in /v1/history, the reboot operation succeeded; finish -> normal.
# shellcheck source=tests/e2e/scenarios/lib.sh
. /scenarios/lib.sh
SD=/mnt/state/kexec
MARK=/mnt/kexec-boot1


if [ "$BOOT" = 1 ]; then
        rm -rf "$SD" "$MARK"
        load_emul
        start_agent --backend=luo-v3 --state-dir="$SD" --reboot-delay=300ms
        req GET /v1/state
        expect_status 200 "GET /v1/state"
        expect_field state normal "initial state"
        boot1=$(jstr boot_id)

        stage_kernel kexec:stage \
                "console=ttyS0 panic=-1 quiet luofleet.scenario=kexec luofleet.boot=2 luo_emul.start_updated=1"

        req POST /v1/prepare '{"operation_id":"kexec:prepare"}'
        expect_status 200 "POST /v1/prepare"
        expect_field state prepared "after prepare"
        idx1=$(jstr index)
        echo "boot_id=$boot1 index=$idx1" >"$MARK"
        sync

        req POST /v1/reboot '{"operation_id":"kexec:reboot","reason":"vm kexec"}' -t 20
        expect_status 202 "POST /v1/reboot"
        ok "202 received before the jump; waiting for the kexec"
        sync
        sleep 30
        fail "still in boot 1 30 s after the 202 (no kexec)"
fi

# boot 2
[ -s "$MARK" ] || fail "boot 2 without the boot-1 marker"
boot1=$(sed -n 's/.*boot_id=\([^ ]*\).*/\1/p' "$MARK")
idx1=$(sed -n 's/.*index=\([0-9]*\).*/\1/p' "$MARK")
[ "$(cmdline_arg luo_emul.start_updated)" = 1 ] || fail "kexec command line lost: $(cat /proc/cmdline)"
load_emul
[ "$(cat /sys/kernel/liveupdate/state)" = updated ] || fail "module did not start in updated"
start_agent --backend=luo-v3 --state-dir="$SD"

req GET /v1/state
expect_status 200 "GET /v1/state (boot 2)"
expect_field state updated "state after kexec"
boot2=$(jstr boot_id)
idx2=$(jstr index)
[ "$boot2" != "$boot1" ] || fail "boot_id unchanged across the kexec ($boot1)"
[ "$idx2" -gt "$idx1" ] || fail "index did not continue: boot 1 $idx1, boot 2 $idx2"
expect_field action reboot "last operation"
expect_field status succeeded "reboot operation"
ok "updated, new boot_id $boot2, index $idx1 -> $idx2, reboot succeeded"

req GET /v1/history
expect_status 200 "GET /v1/history"
printf '%s\n' "$BODY" | sed 's/},{"index"/},\n{"index"/g'
# The kernel freezes inside reboot() itself (kernel_kexec), and the kexec follows at once: the
# agent records the prepared -> frozen transition only when its watcher (in the privileged
# helper, one hop further than the journal) sees the sysfs notification before the CPU leaves
# the old kernel, which on one vCPU it mostly does not. What the agent guarantees is the
# reboot record of the new boot: planned, from the old boot, with the state it last knew
# (frozen when the freeze was seen, else prepared).
if printf '%s' "$BODY" | grep -q '"from":"prepared","to":"frozen"'; then
        printf '%s' "$BODY" | grep -o '"kind":"reboot"[^}]*' | grep -q '"from_state":"frozen"' ||
                fail "frozen recorded before the jump, but the reboot record's from_state is not frozen"
        ok "prepared -> frozen seen and recorded before the jump"
else
        printf '%s' "$BODY" | grep -o '"kind":"reboot"[^}]*' | grep -q '"from_state":"prepared"' ||
                fail "no frozen transition and the reboot record's from_state is not prepared"
        ok "the freeze inside reboot() was not seen before the jump; reboot record from prepared"
fi
printf '%s' "$BODY" | grep -q '"kind":"reboot"' || fail "no reboot record in /v1/history"
printf '%s' "$BODY" | grep -o '"kind":"reboot"[^}]*' | grep -q "\"from_boot_id\":\"$boot1\"" ||
        fail "reboot record does not name from_boot_id $boot1"
printf '%s' "$BODY" | grep -o '"kind":"reboot"[^}]*' | grep -q '"planned":true' ||
        fail "reboot record is not planned"
printf '%s' "$BODY" | grep -o '"kind":"reboot"[^}]*' | grep -q '"blackout_ms":[0-9]' ||
        fail "reboot record has no blackout_ms"
ok "reboot record: from $boot1, planned"

req POST /v1/finish '{"operation_id":"kexec:finish"}'
expect_status 200 "POST /v1/finish"
expect_field state normal "after finish"
[ "$(cat /sys/kernel/liveupdate/state)" = normal ] || fail "sysfs is not normal after finish"
ok "finished: normal"

req POST /v1/reboot '{"operation_id":"kexec:reboot"}'
expect_status 202 "replayed reboot after the kexec"
expect_field state normal "replayed reboot did not act"
ok "replayed reboot id answers 202 without rebooting"
stop_agent
exit 0
