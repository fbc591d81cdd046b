#!/bin/sh
# smoke: the agent with the simulated kernel inside the guest, state on the 9p share.
# Proves the harness (initramfs, libraries, loopback, 9p, client) without the module.
# shellcheck source=tests/e2e/scenarios/lib.sh
. /scenarios/lib.sh

rm -rf /mnt/state/smoke
start_agent --backend=sim --state-dir=/mnt/state/smoke

req GET /v1/state
expect_status 200 "GET /v1/state"
expect_field state normal "initial state"
expect_field backend sim "backend"
idx0=$(jstr index)
ok "state normal, index $idx0"

req POST /v1/prepare '{"operation_id":"smoke:prepare","reason":"vm smoke"}'
expect_status 200 "POST /v1/prepare"
expect_field state prepared "after prepare"
expect_field status succeeded "prepare operation"
ok "prepared"

req POST /v1/prepare '{"operation_id":"smoke:prepare","reason":"vm smoke"}'
expect_status 200 "replayed prepare"
expect_field state prepared "after replayed prepare"
ok "replay answered 200 without acting"

req POST /v1/finish '{"operation_id":"smoke:finish-too-early"}'
expect_status 409 "finish while prepared"
expect_field code invalid-transition "finish while prepared"
ok "finish while prepared is 409 invalid-transition"

req POST /v1/cancel '{"operation_id":"smoke:cancel"}'
expect_status 200 "POST /v1/cancel"
expect_field state normal "after cancel"
idx1=$(jstr index)
[ "$idx1" -gt "$idx0" ] || fail "index did not grow: $idx0 -> $idx1"
ok "normal again, index $idx1"

# long-poll on the current index: held, then the unchanged document
t0=$(cut -d' ' -f1 /proc/uptime)
req GET "/v1/state?index=$idx1&wait=1s"
t1=$(cut -d' ' -f1 /proc/uptime)
expect_status 200 "long-poll"
expect_field index "$idx1" "long-poll"
held=$(awk "BEGIN{print ($t1 - $t0 >= 0.9) ? 1 : 0}")
[ "$held" = 1 ] || fail "long-poll returned after $t0..$t1, not held ~1 s"
ok "long-poll held ~1 s"

# event stream: the opening state event
req GET /v1/events "" -e 1 -t 10
expect_status 200 "GET /v1/events"
printf '%s\n' "$BODY" | grep -q '^event: state$' || fail "no state event on the stream"
ok "event stream opens with a state event"

stop_agent
ok "agent stopped with SIGTERM, exit 0"

# the journal on the share: a restarted agent continues the index
start_agent --backend=sim --state-dir=/mnt/state/smoke
req GET /v1/state
expect_status 200 "GET /v1/state after restart"
idx2=$(jstr index)
[ "$idx2" -ge "$idx1" ] || fail "index went back after restart: $idx1 -> $idx2"
ok "index after restart $idx2 (was $idx1)"
stop_agent
exit 0
