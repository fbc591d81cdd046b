#!/bin/sh
# run-vm: kernel=mainline
# run-vm: mem=3G
# run-vm: timeout=2400
# mainline-rounds: the session broker against the bare ioctls, and the blackout through the
# agent against the raw one, in REPEATED, ALTERNATING samples of one QEMU run, reported as
# medians (bench/live-update --rounds; not part of the default VM suite). Command line
# (VM_APPEND): luofleet.mib=M (MiB per memfd, default 128), luofleet.rounds=R (preserve
# rounds, default 7), luofleet.sessions=K (sessions of each kind carried for the retrieve
# rounds, default 4: 2*K*M MiB cross the kexec), luofleet.pairs=P (blackout pairs, default 3),
# luofleet.settle_ms=MS (luofleet-bench-sessions --settle-ms, default 500), luofleet.pin
# (below).
# Boot 1: the agent; luofleet-bench-sessions preserve-rounds (R x raw PRESERVE_FD and
#   lfs_preserve, in turn); hold (K raw and K broker sessions, kept by a process that
#   confirms the prepare and the reboot); prepare and reboot through the agent.
# Boot 2: the agent; retrieve-rounds (RETRIEVE_FD and lfs_retrieve_fd of each, in turn,
#   checked word by word, finished); finish through the agent; blackout sample 1 starts.
# Boots 3 .. 2+2P: each ends blackout sample J and starts J+1: raw (luo_raw stage1/stage2,
#   no agent running) or through the agent (the example workload preserve / restore, the
#   agent's prepare and reboot), pairs alternating which kind comes first (raw-agent,
#   agent-raw, ...). Each blackout by the share's clock (the host's file mtimes), as
#   mainline-bench. The last boot prints one console line "BENCH ..." with every sample.
# shellcheck source=tests/e2e/scenarios/lib.sh
. /scenarios/lib.sh
# shellcheck source=tests/e2e/scenarios/sessions-lib.sh
. /scenarios/sessions-lib.sh
BS=luofleet-bench-sessions
D=/mnt/mainline-rounds
arg() { _v=$(cmdline_arg "$1"); echo "${_v:-$2}"; }
MIB=$(arg luofleet.mib 128)
ROUNDS=$(arg luofleet.rounds 7)
SESSIONS=$(arg luofleet.sessions 4)
PAIRS=$(arg luofleet.pairs 3)
SETTLE=$(arg luofleet.settle_ms 500)
# luofleet.pin=same|apart (diagnosis): for the preserve and retrieve rounds, the agent (every
# thread of it and of its helper) on vCPU 0 with the benchmark (same), or on vCPU 1 while the
# benchmark runs on vCPU 0 (apart); default none (the scheduler decides)
PIN=$(arg luofleet.pin none)
SAMPLES=$((2 * PAIRS))

# kind J: the kind of blackout sample J (1..SAMPLES): odd pairs raw first, even pairs agent
kind() {
        _p=$((($1 + 1) / 2))
        if [ $(($1 % 2)) -eq $((_p % 2)) ]; then echo raw; else echo agent; fi
}
# val FILE KEY: KEY's value on FILE's RESULT line
val() { grep -a '^RESULT ' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1; }
# mtime_ms FILE: its mtime in ms (on the share: the host's clock)
mtime_ms() { stat -c '%Y %y' "$1" | awk '{ split($3, f, "."); printf "%.0f", $1 * 1000 + substr(f[2] "000", 1, 3) }'; }
# median LIST (comma-separated)
median() {
        echo "$1" | tr ',' '\n' | sort -n | awk '{ v[NR] = $1 } END {
                if (NR % 2) print v[(NR + 1) / 2]; else printf "%.1f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
# wait_line FILE PATTERN PID what: until FILE has a line matching PATTERN, while PID lives
# (filling memfds under emulation takes its time: no fixed limit but the run's)
wait_line() {
        while ! grep -q "$2" "$1" 2>/dev/null; do
                kill -0 "$3" 2>/dev/null || { cat "$1"; fail "$4: exited before '$2'"; }
                sleep 0.2
        done
}
# helper_gone: after stop_agent, the privileged helper ends too (it holds nothing)
helper_gone() {
        _i=0
        while [ -n "$(helper_pid)" ]; do
                [ $_i -lt 100 ] || fail "the agent's helper is still there 10 s after the agent"
                sleep 0.1
                _i=$((_i + 1))
        done
}
# pin_agent: the agent's and its helper's threads where luofleet.pin says; the benchmark's CPU
# list in BSCPU
pin_agent() {
        BSCPU=""
        case "$PIN" in
        same) _c=0 BSCPU=0 ;;
        apart) _c=1 BSCPU=0 ;;
        *) return 0 ;;
        esac
        for _p in "$AGENT_PID" "$(helper_pid)"; do
                taskset -a -p -c "$_c" "$_p" >/dev/null || fail "taskset $_p"
        done
        log "agent and helper on vCPU $_c, the benchmark on vCPU $BSCPU"
}
# bs ARGS...: the benchmark, pinned as luofleet.pin says
bs() {
        if [ -n "$BSCPU" ]; then taskset -c "$BSCPU" "$BS" "$@"; else "$BS" "$@"; fi
}

# agent_reboot ID NEXT_BOOT: stage, prepare (the registered workloads confirm), reboot
agent_reboot() {
        stage_kernel "$1:stage" "$(next_cmdline "$2")"
        req POST /v1/prepare "{\"operation_id\":\"$1:prepare\"}" -t 120
        expect_status 200 "prepare"
        sync
        req POST /v1/reboot "{\"operation_id\":\"$1:reboot\"}" -t 20
        expect_status 202 "reboot"
        sleep 300
        fail "no kexec"
}

# start_sample J (in boot J+1): ends in the kexec into boot J+2
start_sample() {
        _s=$D/s$1
        mkdir -p "$_s"
        log "blackout sample $1 of $SAMPLES: $(kind "$1")"
        if [ "$(kind "$1")" = raw ]; then
                luo_raw stage1 "$MIB" /mnt/vmlinuz /mnt/initrd "$(next_cmdline $(($1 + 2)))" "$_s"
                fail "luo_raw stage1 returned, no kexec"
        fi
        start_agent --backend=auto --state-dir="$D/state-$1" --sessions-socket="$SOCK" \
                --reboot-delay=100ms
        # --settle-ms: the session's creation is journaled before the timed preserve, as in
        # mainline-bench (a VMM creates its session at start)
        wl_start "vm$1" /tmp/wl.log --session=ram --mib="$MIB" --seed="$1" \
                --reboot-time="$_s/reboot" --settle-ms=1500 preserve
        wait_line /tmp/wl.log "preserve-ms=" "$WL_PID" "the workload's preserve"
        cp /tmp/wl.log "$_s/preserve.out"
        agent_reboot "mr$1" $(($1 + 2))
}

# end_sample J (in boot J+2): the data back; into $D/blackouts: J, the kind, the blackout, and
# this kernel's uptime at /init and when the data was back (ms), to split the blackout into
# the jump (reboot call or event -> this kernel's clock starts), the kernel's boot and user space;
# then user space's own parts as the program that gets the data back saw them (ms): waiting
# for the broker (its start-up in this boot; 0 for raw), the session, the fd, reading it back
end_sample() {
        _s=$D/s$1
        if [ "$(kind "$1")" = raw ]; then
                luo_raw stage2 "$MIB" "$_s" >"$_s/raw.out" 2>&1 || { cat "$_s/raw.out"; fail "luo_raw stage2"; }
                cat "$_s/raw.out"
                BLK=$(val "$_s/raw.out" blackout_host_ms)
                UP=$(val "$_s/raw.out" uptime_at_verified_ms)
                PARTS="0 $(val "$_s/raw.out" retrieve_session_ms) $(val "$_s/raw.out" retrieve_ms)"
                PARTS="$PARTS $(sed -n 's/.*, verify \([0-9.]*\) ms$/\1/p' "$_s/raw.out")"
        else
                # The workload starts with the machine, as a VMM would: it waits for the
                # broker's socket, not for the agent's HTTP side.
                log "sample $1: the workload starts"
                $WL --socket="$SOCK" --name="vm$1" --session=ram --mib="$MIB" --seed="$1" \
                        --reboot-time="$_s/reboot" --wait=60 restore >"$_s/restore.out" 2>&1 &
                _w=$!
                start_agent --backend=auto --state-dir="$D/state-$1" --sessions-socket="$SOCK"
                log "sample $1: the agent is up"
                wait "$_w" || { cat "$_s/restore.out"; fail "restore"; }
                # the uptime when the workload wrote reboot.back (its blackout's end): now, less
                # the host-clock time between that file and one written now
                UP=$(awk '{ printf "%d", $1 * 1000 }' /proc/uptime)
                : >"$_s/up"
                UP=$((UP - $(mtime_ms "$_s/up") + $(mtime_ms "$_s/reboot.back")))
                cat "$_s/restore.out"
                grep -q "checksum ok" "$_s/restore.out" || fail "not bit-exact"
                BLK=$(sed -n 's/^blackout-to-data-ms-by-mtime=//p' "$_s/restore.out")
                PARTS=""
                for _k in connect-ms retrieve-session-ms retrieve-ms verify-ms; do
                        PARTS="$PARTS $(sed -n "s/^$_k=//p" "$_s/restore.out")"
                done
                req POST /v1/finish "{\"operation_id\":\"mr$1:finish\"}" -t 30
                expect_status 200 "finish"
                stop_agent
                helper_gone
        fi
        { [ -n "$BLK" ] && [ -n "$UP" ]; } || fail "no blackout figure for sample $1"
        _i=$(echo "$INIT_UPTIME" | awk '{ printf "%d", $1 * 1000 }')
        # shellcheck disable=SC2086 # four numbers
        set -- "$1" $PARTS
        [ $# -eq 5 ] || fail "sample $1: user space's parts are not four numbers: '$PARTS'"
        echo "$1 $(kind "$1") $BLK $_i $UP $2 $3 $4 $5" >>"$D/blackouts"
        ok "blackout sample $1 ($(kind "$1")): $BLK ms; uptime at /init $_i ms, at the data back $UP ms"
}

# report: one console line with every sample and the medians
report() {
        p=$D/preserve.out r=$D/retrieve.out
        # column C of the kind's lines, comma-separated
        col() { awk -v k="$1" -v c="$2" '$2 == k { printf "%s%s", s, $c; s = "," }' "$D/blackouts"; }
        braw=$(col raw 3)
        bagt=$(col agent 3)
        console "BENCH mib=$MIB rounds=$ROUNDS sessions=$SESSIONS pairs=$PAIRS pin=$PIN" \
                "preserve_raw_ms=$(val "$p" raw_ms) preserve_broker_ms=$(val "$p" broker_ms)" \
                "preserve_raw_median_ms=$(val "$p" raw_median_ms)" \
                "preserve_broker_median_ms=$(val "$p" broker_median_ms)" \
                "retrieve_raw_ms=$(val "$r" raw_ms) retrieve_broker_ms=$(val "$r" broker_ms)" \
                "retrieve_raw_median_ms=$(val "$r" raw_median_ms)" \
                "retrieve_broker_median_ms=$(val "$r" broker_median_ms)" \
                "preserve_rtt_ms=$(val "$p" rtt_ms) retrieve_rtt_ms=$(val "$r" rtt_ms)" \
                "blackout_raw_ms=$braw blackout_agent_ms=$bagt" \
                "blackout_raw_median_ms=$(median "$braw") blackout_agent_median_ms=$(median "$bagt")" \
                "blackout_raw_init_ms=$(col raw 4) blackout_agent_init_ms=$(col agent 4)" \
                "blackout_raw_up_ms=$(col raw 5) blackout_agent_up_ms=$(col agent 5)" \
                "user_raw_wait_ms=$(col raw 6) user_agent_wait_ms=$(col agent 6)" \
                "user_raw_session_ms=$(col raw 7) user_agent_session_ms=$(col agent 7)" \
                "user_raw_fd_ms=$(col raw 8) user_agent_fd_ms=$(col agent 8)" \
                "user_raw_read_ms=$(col raw 9) user_agent_read_ms=$(col agent 9)"
}

case "$BOOT" in
1)
        rm -rf "$D"
        mkdir -p "$D"
        log "mainline-rounds: $MIB MiB, $ROUNDS preserve rounds, $SESSIONS sessions of each kind," \
                "$PAIRS blackout pairs, settle $SETTLE ms"
        start_agent --backend=auto --state-dir="$D/state-0" --sessions-socket="$SOCK" \
                --reboot-delay=100ms
        pin_agent
        bs --socket="$SOCK" --mib="$MIB" --rounds="$ROUNDS" --settle-ms="$SETTLE" \
                preserve-rounds >"$D/preserve.out" 2>&1 || { cat "$D/preserve.out"; fail "preserve-rounds"; }
        cat "$D/preserve.out"
        bs --socket="$SOCK" --name=bench-hold --mib="$MIB" --sessions="$SESSIONS" \
                --state="$D/hold.state" hold >/tmp/hold.log 2>&1 &
        HOLD=$!
        wait_line /tmp/hold.log "^holding " "$HOLD" "hold"
        cat /tmp/hold.log
        cp /tmp/hold.log "$D/hold.out"
        agent_reboot mr0 2
        ;;
2)
        start_agent --backend=auto --state-dir="$D/state-0" --sessions-socket="$SOCK"
        pin_agent
        bs --socket="$SOCK" --state="$D/hold.state" --settle-ms="$SETTLE" \
                retrieve-rounds >"$D/retrieve.out" 2>&1 || { cat "$D/retrieve.out"; fail "retrieve-rounds"; }
        cat "$D/retrieve.out"
        ok "every raw and broker session came back bit-exact"
        req POST /v1/finish '{"operation_id":"mr0:finish"}' -t 30
        expect_status 200 "finish"
        stop_agent
        helper_gone
        : >"$D/blackouts"
        start_sample 1
        ;;
esac
J=$((BOOT - 2))
if [ "$J" -lt 1 ] || [ "$J" -gt "$SAMPLES" ]; then
        fail "boot $BOOT: no such boot in this scenario"
fi
end_sample "$J"
if [ "$J" -lt "$SAMPLES" ]; then
        start_sample $((J + 1))
fi
report
exit 0
