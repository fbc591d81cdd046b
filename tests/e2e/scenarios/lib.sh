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
        luofleet-agent --listen=127.0.0.1:8421 "$@" >/tmp/agent.log 2>&1 &
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
