#!/bin/sh
# watch (issue 3, scenario 2): long-polls and an event stream wake on each kernel transition.
#  1. An SSE stream (Last-Event-ID = the start index, so it cannot miss a record) and, for
#     each of prepare, cancel, prepare, cancel through the agent, a long-poll on the current
#     index (wait=30s) that is suspended in the agent (/metrics) before the POST: the
#     long-poll answers 200 with a higher index and ETag = "index"; the stream delivers the
#     12 records (operation running, transition, operation done per POST) with consecutive
#     ids and the 4 transitions in order; sysfs agrees with /v1/state after every step.
#  2. finish from normal -> 409 invalid-transition and no wake-up: a long-poll (wait=2s)
#     answers after ~2 s with the SAME index and ETag, one with If-None-Match 304.
#  3. Latency, 10 rounds: prepare (POST), then the KERNEL freezes by itself: /bin/kexec-unload
#     --reboot calls reboot(LINUX_REBOOT_CMD_KEXEC) with no image loaded, the module's kprobe
#     moves prepared -> frozen (sysfs_notify) and the call fails with EINVAL. The agent did
#     not ask for it: only its sysfs watcher can see it, so "syscall entered -> long-poll
#     answered with frozen" is the sysfs -> HTTP latency. Then cancel (POST) from frozen.
#     Also the POST -> long-poll latency of every POST (send done -> first answer byte).
# The kernel's GET_STATE: /dev/liveupdate is exclusive and the agent holds it, so the test
# cannot call GET_STATE itself. The agent re-reads GET_STATE after every kernel call (that
# read is what /v1/state shows after a POST) and compares GET_STATE with sysfs at start-up:
# /readyz check "kernel-consistent" must be ok, here at the start and the end.
# shellcheck source=tests/e2e/scenarios/lib.sh
. /scenarios/lib.sh
SD=/mnt/state/watch
rm -rf "$SD" /tmp/post-lat /tmp/sysfs-lat
load_emul
start_agent --backend=luo-v3 --state-dir="$SD"
expect_state normal "initial"
idx0=$IDX
req GET /readyz
expect_status 200 "/readyz"
printf '%s' "$BODY" | grep -q '{"name":"kernel-consistent","ok":true' || fail "/readyz kernel-consistent is not ok"

# step ACTION ID TARGET: a long-poll on the current index, the POST, checks
step() {
        cur=$IDX
        lfc -T -i -t 35 GET "$A/v1/state?index=$cur&wait=30s" >/tmp/lp.out 2>/tmp/lp.err &
        lp=$!
        wait_waiters 1
        lfc -T -d "{\"operation_id\":\"$2\"}" POST "$A/v1/$1" >/tmp/post.out 2>/tmp/post.err
        [ "$(head -n 1 /tmp/post.out)" = 200 ] || fail "$1 $2: status $(head -n 1 /tmp/post.out)"
        [ "$(jstr state "$(tail -n 1 /tmp/post.out)")" = "$3" ] || fail "$1 $2: answer state is not $3"
        wait $lp || fail "$1 $2: long-poll client exit $?"
        [ "$(head -n 1 /tmp/lp.out)" = 200 ] || fail "$1 $2: long-poll status $(head -n 1 /tmp/lp.out)"
        lpdoc=$(tail -n 1 /tmp/lp.out)
        lpidx=$(jstr index "$lpdoc")
        [ "$lpidx" -gt "$cur" ] || fail "$1 $2: long-poll answered index $lpidx, not above $cur"
        etag=$(grep -i '^etag:' /tmp/lp.out | tr -d '\r' | sed 's/^[Ee][Tt][Aa][Gg]: *//')
        [ "$etag" = "\"$lpidx\"" ] || fail "$1 $2: long-poll ETag $etag, index $lpidx"
        lat=$(($(lfc_time /tmp/lp.err answer_us) - $(lfc_time /tmp/post.err sent_us)))
        echo "$lat" >>/tmp/post-lat
        expect_state "$3" "after $1 $2"
        log "ok: $1 $2 -> $3; long-poll index $cur -> $lpidx (ETag $etag) ${lat} us after the POST; now $IDX"
}

# 1. four transitions through the agent, watched
lfc -t 90 -e 12 -H "Last-Event-ID: $idx0" GET "$A/v1/events" >/tmp/sse.out 2>/tmp/sse.err &
sse=$!
step prepare w:prepare1 prepared
step cancel w:cancel1 normal
step prepare w:prepare2 prepared
step cancel w:cancel2 normal
wait $sse || { cat /tmp/sse.out /tmp/sse.err; fail "event stream client exit $? (fewer than 12 events?)"; }
[ "$(head -n 1 /tmp/sse.out)" = 200 ] || fail "GET /v1/events status $(head -n 1 /tmp/sse.out)"
grep -q '^event: ' /tmp/sse.out || fail "no events in the stream"
grep '^id: \|^event: ' /tmp/sse.out | paste - - | head -n 20
ids=$(sed -n 's/^id: //p' /tmp/sse.out | tr '\n' ' ')
want=""
i=1
while [ $i -le 12 ]; do
        want="$want$((idx0 + i)) "
        i=$((i + 1))
done
[ "$ids" = "$want" ] || fail "event ids '$ids', want '$want'"
tr=$(grep '^data: .*"kind":"transition"' /tmp/sse.out | grep -o '"from":"[a-z]*","to":"[a-z]*"' | tr '\n' ' ')
[ "$tr" = '"from":"normal","to":"prepared" "from":"prepared","to":"normal" "from":"normal","to":"prepared" "from":"prepared","to":"normal" ' ] ||
        fail "stream transitions: $tr"
n=$(grep -c '^event: transition' /tmp/sse.out)
[ "$n" = 4 ] || fail "$n transition events, want 4"
ok "SSE: ids $((idx0 + 1))..$((idx0 + 12)) consecutive, 4 transitions in order"

# 2. an invalid transition wakes no one
expect_state normal "before the invalid finish"
cur=$IDX
lfc -T -i -t 10 GET "$A/v1/state?index=$cur&wait=2s" >/tmp/lp.out 2>/tmp/lp.err &
lp=$!
lfc -i -t 10 -H "If-None-Match: \"$cur\"" GET "$A/v1/state?index=$cur&wait=2s" >/tmp/lp2.out 2>&1 &
lp2=$!
wait_waiters 2
req POST /v1/finish '{"operation_id":"w:finish"}'
expect_problem 409 invalid-transition "finish from normal"
printf '%s' "$BODY" | grep -q '"allowed_actions":\["prepare"\]' || fail "allowed_actions is not [\"prepare\"]"
wait $lp || fail "long-poll after the invalid finish: exit $?"
wait $lp2 || fail "If-None-Match long-poll: exit $?"
[ "$(head -n 1 /tmp/lp.out)" = 200 ] || fail "long-poll after the invalid finish: status $(head -n 1 /tmp/lp.out)"
lpidx=$(jstr index "$(tail -n 1 /tmp/lp.out)")
etag=$(grep -i '^etag:' /tmp/lp.out | tr -d '\r' | sed 's/^[Ee][Tt][Aa][Gg]: *//')
held=$(($(lfc_time /tmp/lp.err elapsed_us) / 1000))
[ "$lpidx" = "$cur" ] || fail "long-poll woke with index $lpidx after an invalid transition, want $cur"
[ "$etag" = "\"$cur\"" ] || fail "ETag $etag after the invalid finish, want \"$cur\""
[ "$held" -ge 1800 ] || fail "the long-poll was answered after $held ms, before its 2 s wait"
[ "$(head -n 1 /tmp/lp2.out)" = 304 ] || fail "If-None-Match long-poll: status $(head -n 1 /tmp/lp2.out), want 304"
expect_state normal "after the invalid finish"
[ "$IDX" = "$cur" ] || fail "index moved after the invalid finish: $cur -> $IDX"
ok "invalid finish: 409, the long-poll held $held ms and answered index $cur, ETag $etag; If-None-Match 304"

# 3. latency rounds
r=1
while [ $r -le 10 ]; do
        step prepare "w:lat-prepare$r" prepared
        cur=$IDX
        lfc -T -t 35 GET "$A/v1/state?index=$cur&wait=30s" >/tmp/lp.out 2>/tmp/lp.err &
        lp=$!
        wait_waiters 1
        kexec-unload --reboot >/tmp/kr.out 2>&1
        krc=$?
        [ "$krc" = 1 ] || { cat /tmp/kr.out; fail "kexec-unload --reboot exit $krc, want 1"; }
        grep -q 'reboot(KEXEC) failed: EINVAL' /tmp/kr.out || { cat /tmp/kr.out; fail "reboot(KEXEC) did not fail with EINVAL"; }
        wait $lp || fail "round $r: long-poll exit $?"
        lpdoc=$(tail -n 1 /tmp/lp.out)
        [ "$(jstr state "$lpdoc")" = frozen ] || fail "round $r: long-poll woke with state $(jstr state "$lpdoc"), want frozen"
        lat=$(($(lfc_time /tmp/lp.err answer_us) - $(sed -n 's/^t_us=//p' /tmp/kr.out)))
        echo "$lat" >>/tmp/sysfs-lat
        expect_state frozen "round $r: after the kernel's freeze"
        log "ok: round $r: kernel prepared -> frozen seen by the long-poll ${lat} us after reboot(KEXEC)"
        step cancel "w:lat-cancel$r" normal
        r=$((r + 1))
done
history_body
n=$(printf '%s\n' "$HIST" | grep -c '"from":"prepared","to":"frozen"')
[ "$n" = 10 ] || fail "history has $n prepared -> frozen transitions, want 10"
n=$(printf '%s\n' "$HIST" | grep -c '"from":"prepared","to":"frozen","cause":"external"')
[ "$n" = 10 ] || fail "$n of the 10 kernel-made freezes are recorded with cause external"
n=$(printf '%s\n' "$HIST" | grep -c '"from":"frozen","to":"normal","cause":"operation"')
[ "$n" = 10 ] || fail "history has $n frozen -> normal transitions by cancel, want 10"
printf '%s\n' "$HIST" | grep '"to":"frozen"' | head -n 1

# stats FILE: p50 (lower median) and max of a column of µs
stats() {
        sort -n "$1" >/tmp/sorted
        cnt=$(wc -l </tmp/sorted)
        p50=$(sed -n "$(((cnt + 1) / 2))p" /tmp/sorted)
        max=$(tail -n 1 /tmp/sorted)
        echo "p50_us=$p50 max_us=$max n=$cnt"
}
log "sysfs->HTTP samples (us): $(tr '\n' ' ' </tmp/sysfs-lat)"
log "POST->long-poll samples (us): $(tr '\n' ' ' </tmp/post-lat)"
console "WATCH LATENCY $(stats /tmp/sysfs-lat) (sysfs->HTTP: the kernel's own prepared->frozen, reboot(KEXEC) entered -> long-poll answer, in the TCG guest)"
console "WATCH POST-WAKE $(stats /tmp/post-lat) (POST written -> long-poll answer, the operation's first journal record)"

req GET /readyz
expect_status 200 "/readyz at the end"
printf '%s' "$BODY" | grep -q '{"name":"kernel-consistent","ok":true' || fail "/readyz kernel-consistent is not ok at the end"
stop_agent
exit 0
