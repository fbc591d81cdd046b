# shellcheck shell=sh
# Helpers of the session-broker scenarios (mainline-*, v3-sessions): sourced after lib.sh.
SOCK=/run/luofleet/sessions.sock
WL=luofleet-memfd-workload

# wl_start NAME LOG ARGS...: a workload in the background (its pid in WL_PID)
wl_start() {
        _n=$1 _l=$2
        shift 2
        $WL --socket="$SOCK" --name="$_n" "$@" >"$_l" 2>&1 &
        WL_PID=$!
        log "workload $_n pid $WL_PID: $*"
}

# wait_log FILE PATTERN what: until FILE has a line matching PATTERN (at most 20 s)
wait_log() {
        _i=0
        while [ $_i -lt 200 ]; do
                grep -q "$2" "$1" 2>/dev/null && return 0
                sleep 0.1
                _i=$((_i + 1))
        done
        cat "$1" 2>/dev/null
        fail "$3: no line matching '$2' in $1 within 20 s"
}

# sessions_body: GET /v1/sessions into BODY (200 required)
sessions_body() {
        req GET /v1/sessions
        expect_status 200 "GET /v1/sessions"
}

# count_of WORD: how many times "WORD" occurs in BODY
count_of() { printf '%s' "$BODY" | grep -o "$1" | wc -l | tr -d ' '; }

# next_cmdline N: this boot's command line with luofleet.boot=N (the kexec's)
next_cmdline() {
        sed -e 's/ *luofleet\.boot=[0-9]*//g' -e "s/\$/ luofleet.boot=$1/" /proc/cmdline
}

# helper_pid: the agent's privileged helper (its child named luofleet-priv), or ""
helper_pid() {
        for _p in /proc/[0-9]*; do
                [ "$(cat "$_p/comm" 2>/dev/null)" = luofleet-priv ] && { basename "$_p"; return; }
        done
}
