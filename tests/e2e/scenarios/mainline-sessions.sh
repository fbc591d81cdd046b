#!/bin/sh
# run-vm: kernel=mainline
# mainline-sessions: the luo-sessions backend and the session broker on a real Linux 7.3, one
# boot (issue 11, VM scenarios 1, 3, 4 and 6):
# - cold boot: --backend=auto finds the sessions interface: backend luo-sessions, interface
#   with its ioctl set, state normal, GET /v1/sessions empty; a prepare without a staged kernel
#   is refused (409 no-kernel-staged: the kexec image is part of "prepared" here);
# - a registered workload that never confirms: prepare 409 workloads-not-confirmed naming it,
#   state normal, the kernel not touched (no marker session: a second agent... the state stays
#   normal, the staged image stays as staging left it);
# - cancel from prepared: the update's own session is released and the kexec image unloaded
#   (kexec_loaded 0, staged null); the workload hears cancel and its own session is kept;
# - two owners: root's and nobody's sessions of the same name coexist; nobody lists only its
#   own and gets ENOENT for root's session.
# shellcheck source=tests/e2e/scenarios/lib.sh
. /scenarios/lib.sh
# shellcheck source=tests/e2e/scenarios/sessions-lib.sh
. /scenarios/sessions-lib.sh
SD=/mnt/state/mainline-sessions

rm -rf "$SD"
start_agent --backend=auto --state-dir="$SD" --sessions-socket="$SOCK" \
        --sessions-socket-mode=0666 --workload-confirm-timeout=2s

# 1. cold boot
req GET /v1/state
expect_status 200 "GET /v1/state"
expect_field backend luo-sessions "auto-detected backend"
expect_field state normal "cold boot"
iface=$(jstr interface)
case "$iface" in
"sessions (CREATE_SESSION RETRIEVE_SESSION PRESERVE_FD RETRIEVE_FD FINISH"*) ok "interface: $iface" ;;
*) fail "interface is '$iface'" ;;
esac
sessions_body
[ "$(count_of '"kernel_name"')" = 0 ] || fail "sessions at a cold boot: $BODY"
expect_field interface sessions "broker interface"
ok "cold boot: luo-sessions, normal, no sessions"
req POST /v1/prepare '{"operation_id":"ms:prepare-unstaged"}'
expect_problem 409 no-kernel-staged "prepare without a staged kernel"
ok "prepare without a kexec image: 409 no-kernel-staged"

# 3. a registered workload that does not confirm
wl_start slow /tmp/slow.log --session=mem --mib=4 --no-confirm preserve
wait_log /tmp/slow.log "preserved" "the slow workload's preserve"
stage_kernel ms:stage "$(next_cmdline 2)"
req POST /v1/prepare '{"operation_id":"ms:prepare-slow"}' -t 30
expect_problem 409 workloads-not-confirmed "prepare with a workload that never confirms"
printf '%s' "$BODY" | grep -q '"name":"slow"' || fail "the problem does not name the workload: $BODY"
expect_state_plain() {
        req GET /v1/state
        expect_field state "$1" "$2"
}
expect_state_plain normal "after the refused prepare"
[ "$(cat /sys/kernel/kexec_loaded)" = 1 ] || fail "the refused prepare unloaded the staged image"
ok "not confirmed: 409 naming slow, state normal, staging untouched"
kill "$WL_PID"
wait "$WL_PID" 2>/dev/null
# the session stays with the broker: its owner may close it through the library; here the
# workload is gone, and its session with its 4 MiB is still listed
sessions_body
printf '%s' "$BODY" | grep -q '"name":"mem"' || fail "the gone workload's session vanished: $BODY"

# 4. cancel from prepared: a workload that confirms
wl_start vm1 /tmp/vm1.log --session=ram --mib=8 preserve
wait_log /tmp/vm1.log "preserved" "vm1's preserve"
# the slow workload is gone, but its registration went with its connection: only vm1 is asked
req POST /v1/prepare '{"operation_id":"ms:prepare"}' -t 30
expect_status 200 "prepare with vm1 confirming"
expect_field state prepared "after prepare"
wait_log /tmp/vm1.log "event prepare .*confirmed" "vm1 confirmed"
req POST /v1/cancel '{"operation_id":"ms:cancel"}' -t 30
expect_status 200 "cancel"
expect_field state normal "after cancel"
[ "$(cat /sys/kernel/kexec_loaded)" = 0 ] || fail "cancel left the kexec image loaded"
req GET /v1/state
[ "$(jstr staged)" = null ] || fail "staged record still there after the cancel: $BODY"
wait_log /tmp/vm1.log "event cancel" "vm1 heard the cancel"
sessions_body
printf '%s' "$BODY" | grep -q '"name":"ram","kernel_name":"lf:0:ram","owner_uid":0,"workload":"vm1","phase":"outgoing"' ||
        fail "vm1's session not kept as outgoing after the cancel: $BODY"
ok "cancel: normal, image unloaded, staged null, vm1 told, its session kept"

# 6. two owners
su -s /bin/sh nobody -c "$WL --socket=$SOCK --name=other --session=ram --mib=2 preserve" \
        >/tmp/other.log 2>&1 &
OTHER=$!
wait_log /tmp/other.log "preserved" "nobody's preserve"
sessions_body
printf '%s' "$BODY" | grep -q '"kernel_name":"lf:65534:ram","owner_uid":65534,"workload":"other"' ||
        fail "nobody's session ram not listed: $BODY"
[ "$(count_of '"name":"ram"')" = 2 ] || fail "two sessions named ram expected: $BODY"
su -s /bin/sh nobody -c "$WL --socket=$SOCK --name=lister list" >/tmp/list.log 2>&1 ||
        fail "nobody's list failed: $(cat /tmp/list.log)"
cat /tmp/list.log
grep -q 'ram' /tmp/list.log || fail "nobody does not see its own session"
grep -q 'mem' /tmp/list.log && fail "nobody sees root's session mem"
if su -s /bin/sh nobody -c "$WL --socket=$SOCK --name=thief --session=mem --mib=4 restore" \
        >/tmp/thief.log 2>&1; then
        fail "nobody retrieved root's session: $(cat /tmp/thief.log)"
fi
cat /tmp/thief.log
grep -q 'No such file' /tmp/thief.log || fail "nobody's retrieve of root's session is not ENOENT"
ok "owners: same names coexist, nobody sees and retrieves only its own (ENOENT for root's)"
kill "$OTHER" "$WL_PID"
stop_agent
console "mainline-sessions: backend luo-sessions, $iface"
exit 0
