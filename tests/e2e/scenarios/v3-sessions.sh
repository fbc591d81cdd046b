#!/bin/sh
# v3-sessions: the session broker on the v3 interface (the emulation module), one boot
# (issue 11: "the same broker drives FD_PRESERVE / FD_RESTORE / the fd events of §A").
# The broker emulates sessions over the kernel's per-file tokens (interface "tokens"): a
# workload's memfd is FD_PRESERVEd under a kernel token the broker allocates (0x1000 upward);
# prepare asks the registered workload first, then SET_EVENT(PREPARE) (sysfs: prepared); a
# workload that does not confirm keeps the kernel normal; cancel keeps the tokens (v3: preserved
# tokens stay valid after a cancel) and the workload's session; finish from normal is refused.
# shellcheck source=tests/e2e/scenarios/lib.sh
. /scenarios/lib.sh
# shellcheck source=tests/e2e/scenarios/sessions-lib.sh
. /scenarios/sessions-lib.sh
SD=/mnt/state/v3-sessions

rm -rf "$SD"
load_emul
start_agent --backend=luo-v3 --state-dir="$SD" --sessions-socket="$SOCK" \
        --workload-confirm-timeout=2s
req GET /v1/state
expect_field backend luo-v3 "backend"
expect_field interface "v3 (GET_STATE SET_EVENT FD_PRESERVE FD_UNPRESERVE FD_RESTORE)" "interface"
sessions_body
expect_field interface tokens "the broker's interface on v3"

wl_start vm1 /tmp/vm1.log --session=ram --mib=4 --seed=5 preserve
wait_log /tmp/vm1.log "preserved" "vm1's preserve (FD_PRESERVE)"
sessions_body
printf '%s' "$BODY" | grep -q '"tokens":\[{"token":1,"kernel_token":4096,"bytes":4194304' ||
        fail "vm1's file not under kernel token 4096: $BODY"
ok "vm1's 4 MiB preserved under kernel token 0x1000"

req POST /v1/prepare '{"operation_id":"v3s:prepare"}' -t 30
expect_status 200 "prepare"
expect_sysfs prepared "after prepare"
wait_log /tmp/vm1.log "event prepare .*confirmed" "vm1 confirmed"
req POST /v1/cancel '{"operation_id":"v3s:cancel"}' -t 30
expect_status 200 "cancel"
expect_sysfs normal "after cancel"
wait_log /tmp/vm1.log "event cancel" "vm1 heard the cancel"
sessions_body
printf '%s' "$BODY" | grep -q '"phase":"outgoing"' || fail "vm1's session not kept: $BODY"
ok "prepare (confirmed), cancel (told; tokens and session kept)"

wl_start slow /tmp/slow.log --session=mem --mib=1 --no-confirm preserve
wait_log /tmp/slow.log "preserved" "slow's preserve"
req POST /v1/prepare '{"operation_id":"v3s:prepare-slow"}' -t 30
expect_problem 409 workloads-not-confirmed "prepare with a workload that never confirms"
expect_sysfs normal "after the refused prepare"
ok "not confirmed: 409, the kernel never heard PREPARE (sysfs normal)"

req POST /v1/finish '{"operation_id":"v3s:finish"}'
expect_problem 409 invalid-transition "finish from normal"
req GET '/v1/history?kind=session'
for e in connected created preserved confirmed; do
        printf '%s' "$BODY" | grep -q "\"event\":\"$e\"" || fail "no session record $e: $BODY"
done
ok "journal: connected, created, preserved, confirmed"
kill "$WL_PID"
stop_agent
exit 0
