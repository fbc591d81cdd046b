# shellcheck shell=sh disable=SC2034
# Helpers for the guest scenarios (sourced: . /scenarios/lib.sh).
# Every check prints one line to the log; fail() records the reason for /init
# (first line of /tmp/fail-reason) and exits 1.
A=http://127.0.0.1:8421
AGENT_PID=""

log() { echo "[$(cut -d' ' -f1 /proc/uptime)] $*"; }

fail() {
        log "FAIL: $*"
        [ -s /tmp/fail-reason ] || echo "$*" >/tmp/fail-reason
        if [ -n "$AGENT_PID" ] && kill -0 "$AGENT_PID" 2>/dev/null; then
                log "agent log tail:"
                tail -n 20 /tmp/agent.log 2>/dev/null
        fi
        exit 1
}

ok() { log "ok: $*"; }

cmdline_arg() { sed -n "s/.*\(^\| \)$1=\([^ ]*\).*/\2/p" /proc/cmdline; }

# req METHOD PATH [BODY] [extra lfc options...]: sets STATUS, BODY and RC (lfc's exit)
req() {
        _m=$1 _p=$2
        shift 2
        if [ $# -gt 0 ] && [ -n "$1" ]; then
                _b=$1
                shift
                _out=$(lfc "$@" -d "$_b" "$_m" "$A$_p")
        else
                [ $# -gt 0 ] && shift
                _out=$(lfc "$@" "$_m" "$A$_p")
        fi
        RC=$?
        STATUS=$(printf '%s\n' "$_out" | head -n 1)
        BODY=$(printf '%s\n' "$_out" | sed 1d)
        log "$_m $_p -> $STATUS $(printf '%s' "$BODY" | head -c 300)"
}

# expect_status CODE what
expect_status() {
        [ "$STATUS" = "$1" ] || fail "$2: status $STATUS, want $1"
}

# jstr KEY [JSON]: the first "KEY":"value" string (or number/null) in JSON (default $BODY)
jstr() {
        printf '%s' "${2:-$BODY}" | grep -o "\"$1\":\(\"[^\"]*\"\|[^,}]*\)" | head -n 1 |
                sed "s/^\"$1\"://; s/^\"//; s/\"\$//"
}

# expect_field KEY VALUE what
expect_field() {
        _v=$(jstr "$1")
        [ "$_v" = "$2" ] || fail "$3: $1 is '$_v', want '$2'"
}

# start_agent ARGS...: start the agent in the background, wait for /healthz
start_agent() {
        luofleet-agent --listen=127.0.0.1:8421 --staging-dir=/mnt "$@" >/tmp/agent.log 2>&1 &
        AGENT_PID=$!
        _i=0
        while [ $_i -lt 100 ]; do
                if lfc -t 1 GET $A/healthz 2>/dev/null | head -n 1 | grep -q '^200$'; then
                        log "agent pid $AGENT_PID up after $_i polls"
                        return 0
                fi
                kill -0 "$AGENT_PID" 2>/dev/null || {
                        cat /tmp/agent.log
                        fail "agent exited at start-up"
                }
                sleep 0.1
                _i=$((_i + 1))
        done
        cat /tmp/agent.log
        fail "agent did not answer /healthz within 10 s"
}

# stop_agent: SIGTERM, expect exit 0 within 10 s
stop_agent() {
        kill -TERM "$AGENT_PID"
        _i=0
        while kill -0 "$AGENT_PID" 2>/dev/null && [ $_i -lt 100 ]; do
                sleep 0.1
                _i=$((_i + 1))
        done
        kill -0 "$AGENT_PID" 2>/dev/null && fail "agent still running 10 s after SIGTERM"
        wait "$AGENT_PID"
        _rc=$?
        log "agent exited with status $_rc"
        cat /tmp/agent.log
        [ "$_rc" -eq 0 ] || fail "agent exit status $_rc after SIGTERM, want 0"
        AGENT_PID=""
}

# load_emul [PARAMS...]: insmod the emulation module; start_updated=1 when the
# kernel command line has luo_emul.start_updated=1 (insmod does not read it)
load_emul() {
        [ -e /lib/luofleet/luo_emul.ko ] || fail "no emulation module in the initramfs"
        _p=""
        [ "$(cmdline_arg luo_emul.start_updated)" = 1 ] && _p="start_updated=1"
        insmod /lib/luofleet/luo_emul.ko $_p "$@" || fail "insmod luo_emul.ko $_p $* failed"
        log "luo_emul loaded ($_p $*): state $(cat /sys/kernel/liveupdate/state 2>/dev/null)"
}

# --- helpers of the issue-3 scenarios (watch, refusals, crash-prepared, kexec-fail) ---

sysfs_state() { cat /sys/kernel/liveupdate/state; }

# sha_of NAME: the host-computed SHA-256 of /mnt/NAME (run-vm writes /mnt/sha256).
sha_of() { awk -v f="$1" '$2 == f {print $1}' /mnt/sha256; }

# stage_kernel OPERATION_ID CMDLINE: PUT /v1/kernel with the share's vmlinuz
# and initrd (digests computed on the host), then check the kernel loaded it.
stage_kernel() {
        kc=$(sha_of vmlinuz)
        ic=$(sha_of initrd)
        { [ -n "$kc" ] && [ -n "$ic" ]; } || fail "no sha256 for vmlinuz/initrd in /mnt/sha256"
        req PUT /v1/kernel "{\"kernel\":{\"path\":\"/mnt/vmlinuz\",\"sha256\":\"$kc\"},\"initrd\":{\"path\":\"/mnt/initrd\",\"sha256\":\"$ic\"},\"cmdline\":\"$2\",\"operation_id\":\"$1\"}" -t 60
        expect_status 200 "PUT /v1/kernel"
        [ "$(cat /sys/kernel/kexec_loaded)" = 1 ] || fail "kexec_loaded is not 1 after staging"
        ok "kernel staged and loaded"
}

# expect_sysfs STATE what: the kernel's own sysfs file says STATE
expect_sysfs() {
        _s=$(sysfs_state)
        [ "$_s" = "$1" ] || fail "$2: sysfs state is '$_s', want '$1'"
}

# expect_state STATE what: GET /v1/state is 200 with STATE and sysfs agrees (sets BODY, IDX)
expect_state() {
        req GET /v1/state
        expect_status 200 "$2: GET /v1/state"
        expect_field state "$1" "$2"
        expect_sysfs "$1" "$2"
        IDX=$(jstr index)
}

# expect_problem STATUS CODE what: a problem+json answer with this status and code
expect_problem() {
        expect_status "$1" "$3"
        expect_field code "$2" "$3"
        _st=$(jstr status)
        [ "$_st" = "$1" ] || fail "$3: problem status member is '$_st', want $1"
}

# emul_param NAME VALUE: write a writable luo_emul parameter
emul_param() {
        echo "$2" >/sys/module/luo_emul/parameters/"$1" || fail "cannot set luo_emul $1=$2"
        log "luo_emul $1=$(cat /sys/module/luo_emul/parameters/"$1")"
}

# wait_waiters N: until the agent holds N suspended long-polls (/metrics), at most 10 s
wait_waiters() {
        _i=0
        while [ $_i -lt 200 ]; do
                lfc -t 2 GET $A/metrics 2>/dev/null | grep -q "^luofleet_longpoll_waiters $1\$" &&
                        return 0
                sleep 0.05
                _i=$((_i + 1))
        done
        fail "the agent did not hold $1 long-poll(s) within 10 s"
}

# wait_op_done ID: long-poll until the operation ID is no longer running (at most ~20 s);
# leaves the final document in BODY
wait_op_done() {
        _i=0
        while [ $_i -lt 20 ]; do
                req GET /v1/state
                if [ "$(jstr id)" = "$1" ] && [ "$(jstr status)" != running ]; then
                        return 0
                fi
                req GET "/v1/state?index=$(jstr index)&wait=1s" "" -t 5
                _i=$((_i + 1))
        done
        fail "operation $1 still running after ~20 s"
}

# lfc_time FILE KEY: a value (sent_us, answer_us, elapsed_us) from lfc -T's stderr in FILE
lfc_time() { grep -o "$2=[0-9-]*" "$1" | head -n 1 | cut -d= -f2; }

# history_body: GET /v1/history?limit=1000 into BODY, one record per line in HIST
history_body() {
        req GET "/v1/history?limit=1000"
        expect_status 200 "GET /v1/history"
        HIST=$(printf '%s' "$BODY" | sed 's/},{"index"/},\n{"index"/g')
}

# console MSG: a line on the serial console too (run-vm prints RESULT lines on success)
console() {
        log "$*"
        echo "RESULT $SCENARIO: $*" >/dev/console
}
