#!/bin/sh
# startup (issue 3, scenario 1): the real backend on the emulation module.
# The agent opens /dev/liveupdate, reports the kernel's state over HTTP, drives
# prepare/cancel through the real ioctls (sysfs agrees), and a second agent is
# refused with exit 4 while the first holds the device. An agent killed (-9) while
# prepared leaves the kernel prepared and the next one reports it (no cancel).
# shellcheck source=tests/e2e/scenarios/lib.sh
. /scenarios/lib.sh

load_emul
[ "$(cat /sys/kernel/liveupdate/state)" = normal ] || fail "sysfs state is not normal after insmod"
[ -c /dev/liveupdate ] || fail "no /dev/liveupdate"

rm -rf /mnt/state/startup /mnt/state/startup2
start_agent --backend=luo-v3 --state-dir=/mnt/state/startup

req GET /v1/state
expect_status 200 "GET /v1/state"
expect_field state normal "initial state"
expect_field backend luo-v3 "backend"
expect_field kernel "$(uname -r)" "kernel"
[ "$(jstr boot_id)" = "$(cat /proc/sys/kernel/random/boot_id)" ] || fail "boot_id differs from the kernel's"
ok "luo-v3 backend reports normal, kernel $(uname -r)"

req GET /readyz
expect_status 200 "GET /readyz"
ok "ready"

# the auto backend picks luo-v3 too, and the device is exclusive: exit 4
luofleet-agent --backend=auto --state-dir=/mnt/state/startup2 --listen=127.0.0.1:8422 \
        >/tmp/agent2.log 2>&1
rc=$?
cat /tmp/agent2.log
[ "$rc" -eq 4 ] || fail "second agent exited $rc, want 4"
grep -q "another live-update agent holds /dev/liveupdate" /tmp/agent2.log ||
        fail "second agent did not say 'another live-update agent holds /dev/liveupdate'"
ok "second agent refused: exit 4, device held"

req POST /v1/prepare '{"operation_id":"startup:prepare"}'
expect_status 200 "POST /v1/prepare"
expect_field state prepared "after prepare"
[ "$(cat /sys/kernel/liveupdate/state)" = prepared ] || fail "sysfs is not prepared after prepare"
ok "prepared (sysfs agrees)"

req POST /v1/cancel '{"operation_id":"startup:cancel"}'
expect_status 200 "POST /v1/cancel"
expect_field state normal "after cancel"
[ "$(cat /sys/kernel/liveupdate/state)" = normal ] || fail "sysfs is not normal after cancel"
ok "normal again (sysfs agrees)"

stop_agent
ok "agent stopped with SIGTERM, exit 0"

# the device is free again: a new agent opens it
start_agent --backend=luo-v3 --state-dir=/mnt/state/startup
req GET /v1/state
expect_status 200 "GET /v1/state after restart"
expect_field state normal "state after restart"

# docs/operations.md policy: the agent dies while prepared (kill -9); the device's
# close leaves the kernel prepared, and the next agent reports prepared, no cancel
req POST /v1/prepare '{"operation_id":"startup:prepare2"}'
expect_status 200 "second prepare"
idx=$(jstr index)
kill -9 "$AGENT_PID"
wait "$AGENT_PID" 2>/dev/null
AGENT_PID=""
[ "$(cat /sys/kernel/liveupdate/state)" = prepared ] || fail "sysfs left prepared after kill -9"
start_agent --backend=luo-v3 --state-dir=/mnt/state/startup
req GET /v1/state
expect_status 200 "GET /v1/state after kill -9"
expect_field state prepared "state after a restart while prepared"
[ "$(jstr index)" -ge "$idx" ] || fail "index went back after kill -9: $idx -> $(jstr index)"
[ "$(cat /sys/kernel/liveupdate/state)" = prepared ] || fail "restarted agent changed the kernel state"
ok "restart while prepared: still prepared, not cancelled"
req POST /v1/cancel '{"operation_id":"startup:cancel2"}'
expect_status 200 "cancel after restart"
expect_field state normal "after cancel"
stop_agent
exit 0
