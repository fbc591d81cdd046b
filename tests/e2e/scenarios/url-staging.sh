#!/bin/sh
# url-staging: staging from a URL on the host's loopback-only artifact server, then a real
# kexec and the blackout figure (issue 5).
# run-vm: artifact-server
# (the line above makes run-vm start tests/e2e/artifact-server on the host's 127.0.0.1,
# serving copies of /mnt/vmlinuz and /mnt/initrd, and give the guest a virtio-net NIC on
# QEMU user networking: the guest's 10.0.2.2:PORT is the host's 127.0.0.1:PORT, the port
# is in /mnt/artifact-port; /init sets eth0 to 10.0.2.15/24). Plain http with --allow-http:
# https (CA bundle, verification) is covered by tests/integration/test_download.py.
# Boot 1: a PUT /v1/kernel by URL with a wrong kernel digest -> 202, the stage operation
#   fails with digest-mismatch (the id replayed: 422, actual_sha256 = the
#   kernel's digest), nothing staged, nothing loaded, no file left in
#   STATE_DIR/kernels; the right digests -> 202, followed by long-polls to succeeded (progress
#   seen at least once is reported), staged = the URLs' digests, kexec_loaded 1; the
#   operation id replayed -> the stored result; prepare, reboot -> a real kexec.
# Boot 2: updated; the reboot record in /v1/history has blackout_ms, kernel_uptime_ms_at_start
#   and kexec_ms (integers, blackout = uptime + kexec within 1 ms), /v1/state's last_update
#   carries the same figures; finish -> normal.
# shellcheck source=tests/e2e/scenarios/lib.sh
. /scenarios/lib.sh
SD=/mnt/state/url-staging
MARK=/mnt/url-staging-boot1

now_ms() { awk '{printf "%d", $1 * 1000}' /proc/uptime; }

# op_body: the state document's operation object onward (its first id/status are the operation's)
op_of() { printf '%s' "$1" | sed 's/.*"operation":{/{/'; }

# follow_op ID LIMIT_S: long-poll /v1/state until operation ID is no longer running;
# sets OPST (its final status), OPB (the operation onward), PROG (1 if progress was seen)
follow_op() {
        _dl=$(($(now_ms) + $2 * 1000))
        PROG=0
        req GET /v1/state
        while :; do
                OPB=$(op_of "$BODY")
                if printf '%s' "$OPB" | grep -q '"progress":{'; then
                        [ "$PROG" = 1 ] || log "progress: $(printf '%s' "$OPB" | grep -o '"progress":{[^}]*}')"
                        PROG=1
                fi
                OPST=$(jstr status "$OPB")
                if [ "$(jstr id "$OPB")" = "$1" ] && [ "$OPST" != running ]; then
                        return 0
                fi
                [ "$(now_ms)" -lt "$_dl" ] || fail "operation $1 still running after $2 s"
                req GET "/v1/state?index=$(jstr index)&wait=5s" "" -t 10
                expect_status 200 "long-poll following $1"
        done
}

if [ "$BOOT" = 1 ]; then
        rm -rf "$SD" "$MARK"
        [ -s /mnt/artifact-port ] || fail "no /mnt/artifact-port (run-vm starts the artifact server)"
        PORT=$(cat /mnt/artifact-port)
        U=http://10.0.2.2:$PORT
        log "eth0: $(ip -4 addr show eth0 | grep -o 'inet [0-9./]*'); artifacts at $U"
        kc=$(sha_of vmlinuz)
        ic=$(sha_of initrd)
        { [ -n "$kc" ] && [ -n "$ic" ]; } || fail "no sha256 for vmlinuz/initrd in /mnt/sha256"
        load_emul
        start_agent --backend=luo-v3 --state-dir="$SD" --reboot-delay=300ms --allow-http
        expect_state normal "initial state"
        boot1=$(jstr boot_id)
        CMD="console=ttyS0 panic=-1 quiet luofleet.scenario=url-staging luofleet.boot=2 luo_emul.start_updated=1"

        # (1) a wrong digest (the initrd's, for the kernel): downloaded, refused, nothing staged
        req PUT /v1/kernel "{\"kernel\":{\"url\":\"$U/vmlinuz\",\"sha256\":\"$ic\"},\"initrd\":{\"url\":\"$U/initrd\",\"sha256\":\"$ic\"},\"cmdline\":\"$CMD\",\"operation_id\":\"url:bad\"}" -t 20
        expect_status 202 "PUT /v1/kernel by URL, wrong digest"
        follow_op url:bad 60
        [ "$OPST" = failed ] || fail "wrong digest: stage operation $OPST, want failed"
        _c=$(jstr code "$OPB")
        [ "$_c" = digest-mismatch ] || fail "wrong digest: error code '$_c', want digest-mismatch"
        # the operation id again: its stored answer, the problem (docs/staging.md "Errors")
        req PUT /v1/kernel "{\"kernel\":{\"url\":\"$U/vmlinuz\",\"sha256\":\"$ic\"},\"initrd\":{\"url\":\"$U/initrd\",\"sha256\":\"$ic\"},\"cmdline\":\"$CMD\",\"operation_id\":\"url:bad\"}" -t 20
        expect_problem 422 digest-mismatch "url:bad replayed"
        expect_field replayed true "url:bad replayed"
        _a=$(jstr actual_sha256)
        [ "$_a" = "$kc" ] || fail "wrong digest: actual_sha256 '$_a' is not the kernel's $kc"
        req GET /v1/state
        expect_field staged null "after a digest mismatch"
        [ "$(cat /sys/kernel/kexec_loaded)" = 0 ] || fail "kexec_loaded is not 0 after a digest mismatch"
        _left=$(ls -A "$SD/kernels" 2>/dev/null)
        [ -z "$_left" ] || fail "files left in STATE_DIR/kernels after a digest mismatch: $_left"
        ok "wrong digest: failed with digest-mismatch (actual ${_a:-?}), nothing staged or loaded, no file left"

        # (2) the right digests: 202, followed to succeeded
        t0=$(now_ms)
        req PUT /v1/kernel "{\"kernel\":{\"url\":\"$U/vmlinuz\",\"sha256\":\"$kc\"},\"initrd\":{\"url\":\"$U/initrd\",\"sha256\":\"$ic\"},\"cmdline\":\"$CMD\",\"operation_id\":\"url:stage\"}" -t 20
        expect_status 202 "PUT /v1/kernel by URL"
        [ "$(jstr status "$(op_of "$BODY")")" = running ] || fail "the 202 does not carry the running stage operation"
        follow_op url:stage 90
        t1=$(now_ms)
        [ "$OPST" = succeeded ] || fail "stage operation $OPST ($(printf '%s' "$OPB" | head -c 300)), want succeeded"
        [ "$(cat /sys/kernel/kexec_loaded)" = 1 ] || fail "kexec_loaded is not 1 after the URL staging"
        req GET /v1/kernel
        expect_status 200 "GET /v1/kernel"
        printf '%s' "$BODY" | grep -q "\"$kc\"" || fail "staged kernel does not carry the digest $kc"
        printf '%s' "$BODY" | grep -q "\"$ic\"" || fail "staged initrd does not carry the digest $ic"
        ksz=$(wc -c </mnt/vmlinuz)
        isz=$(wc -c </mnt/initrd)
        ok "staged from $U: kexec_loaded 1, digests match; progress seen: $PROG"
        console "URL STAGING $((ksz + isz)) bytes (vmlinuz $ksz + initrd $isz) over slirp: 202 -> succeeded in $((t1 - t0)) ms; progress seen: $PROG"

        # the same operation id again: the stored result, no second download
        req PUT /v1/kernel "{\"kernel\":{\"url\":\"$U/vmlinuz\",\"sha256\":\"$kc\"},\"initrd\":{\"url\":\"$U/initrd\",\"sha256\":\"$ic\"},\"cmdline\":\"$CMD\",\"operation_id\":\"url:stage\"}" -t 20
        case "$STATUS" in 200 | 202) ;; *) fail "replayed url:stage: status $STATUS" ;; esac
        req GET /v1/state
        [ "$(jstr id "$(op_of "$BODY")")" = url:stage ] || fail "replayed url:stage started another operation"
        [ "$(cat /sys/kernel/kexec_loaded)" = 1 ] || fail "kexec_loaded changed after the replay"
        ok "replayed stage id answered $STATUS without a new operation"

        req POST /v1/prepare '{"operation_id":"url:prepare"}'
        expect_status 200 "POST /v1/prepare"
        expect_field state prepared "after prepare"
        idx1=$(jstr index)
        echo "boot_id=$boot1 index=$idx1" >"$MARK"
        sync
        req POST /v1/reboot '{"operation_id":"url:reboot","reason":"vm url-staging"}' -t 20
        expect_status 202 "POST /v1/reboot"
        ok "202 received; waiting for the kexec"
        sync
        sleep 30
        fail "still in boot 1 30 s after the 202 (no kexec)"
fi

# boot 2
[ -s "$MARK" ] || fail "boot 2 without the boot-1 marker"
boot1=$(sed -n 's/.*boot_id=\([^ ]*\).*/\1/p' "$MARK")
idx1=$(sed -n 's/.*index=\([0-9]*\).*/\1/p' "$MARK")
load_emul
[ "$(sysfs_state)" = updated ] || fail "module did not start in updated"
start_agent --backend=luo-v3 --state-dir="$SD"
up_now=$(now_ms)

req GET /v1/state
expect_status 200 "GET /v1/state (boot 2)"
expect_field state updated "state after kexec"
STATE=$BODY
[ "$(jstr boot_id)" != "$boot1" ] || fail "boot_id unchanged across the kexec"
[ "$(jstr index)" -gt "$idx1" ] || fail "index did not continue"
ok "updated after the kexec into the URL-staged kernel"

history_body
REC=$(printf '%s\n' "$HIST" | grep '"kind":"reboot"' | tail -n 1)
[ -n "$REC" ] || fail "no reboot record in /v1/history"
printf '%s' "$REC" | grep -q "\"from_boot_id\":\"$boot1\"" || fail "reboot record not from boot 1 ($boot1)"
printf '%s' "$REC" | grep -q '"planned":true' || fail "reboot record is not planned"
b=$(jstr blackout_ms "$REC")
u=$(jstr kernel_uptime_ms_at_start "$REC")
k=$(jstr kexec_ms "$REC")
log "reboot record: blackout_ms=$b kernel_uptime_ms_at_start=$u kexec_ms=$k"
for v in "$b" "$u" "$k"; do
        case "$v" in '' | *[!0-9]*) fail "reboot record: blackout_ms '$b', kernel_uptime_ms_at_start '$u', kexec_ms '$k': not all integers" ;; esac
done
# kexec_ms is defined as blackout_ms - kernel_uptime_ms_at_start, at least 0 (docs/leases.md);
# the three are rounded to ms separately, so the sum may be off by 1 ms.
d=$((b - u - k))
if [ "$k" -gt 0 ]; then
        [ "$d" -ge -1 ] && [ "$d" -le 1 ] || fail "blackout_ms $b != kernel_uptime_ms_at_start $u + kexec_ms $k (off by $d ms)"
else
        [ "$b" -le $((u + 1)) ] || fail "kexec_ms 0 but blackout_ms $b > kernel_uptime_ms_at_start $u"
fi
# the uptime at the agent's start cannot exceed the uptime now, and the agent started in this
# boot after /init did (>= 1 s of boot under TCG)
[ "$u" -le "$up_now" ] || fail "kernel_uptime_ms_at_start $u > uptime now $up_now"
[ "$u" -ge 500 ] || fail "kernel_uptime_ms_at_start $u: implausibly early for this boot"
[ "$b" -ge "$u" ] || fail "blackout_ms $b < kernel_uptime_ms_at_start $u"
ok "blackout $b ms = uptime at start $u ms + kexec $k ms"

# last_update in the state document carries the same figures
LU=$(printf '%s' "$STATE" | sed -n 's/.*"last_update":{/{/p')
[ -n "$LU" ] || fail "/v1/state has no last_update object after the kexec"
[ "$(jstr blackout_ms "$LU")" = "$b" ] || fail "last_update.blackout_ms '$(jstr blackout_ms "$LU")', history $b"
[ "$(jstr kernel_uptime_ms_at_start "$LU")" = "$u" ] || fail "last_update.kernel_uptime_ms_at_start differs from history's $u"
[ "$(jstr kexec_ms "$LU")" = "$k" ] || fail "last_update.kexec_ms differs from history's $k"
vs=$(printf '%s' "$LU" | grep -o '"verification":{"status":"[a-z]*"' | sed 's/.*"status":"//; s/"//')
[ "$vs" != mismatch ] || fail "last_update.verification is mismatch: $(printf '%s' "$LU" | head -c 400)"
ok "last_update: blackout_ms $b, kernel_uptime_ms_at_start $u, kexec_ms $k, verification ${vs:-?}"
console "BLACKOUT blackout_ms=$b kernel_uptime_ms_at_start=$u kexec_ms=$k (verification ${vs:-?})"

req POST /v1/finish '{"operation_id":"url:finish"}'
expect_status 200 "POST /v1/finish"
expect_state normal "after finish"
ok "finished: normal"
stop_agent
exit 0
