#!/bin/sh
# Run one unit suite under valgrind: fail on any memory error, on any leak,
# and on any file descriptor still open at exit beyond stdin/stdout/stderr
# (valgrind 3.19 only reports fds, it does not fail on them, hence this
# wrapper). CK_FORK=no keeps every test in one process so leaks are seen.
set -u
bin=$1
log=$(mktemp "${TMPDIR:-/tmp}/luofleet-vg.XXXXXX")
trap 'rm -f "$log"' EXIT
CK_FORK=no valgrind --error-exitcode=99 --leak-check=full \
        --show-leak-kinds=definite,indirect,possible \
        --errors-for-leak-kinds=definite,indirect,possible \
        --track-fds=yes --log-file="$log" "$bin"
rc=$?
# "FILE DESCRIPTORS: 3 open (3 std) at exit." (3.20+) or "... 3 open at exit."
open=$(sed -n 's/.*FILE DESCRIPTORS: \([0-9]*\) open.*/\1/p' "$log" | head -n1)
if [ "$rc" -ne 0 ] || [ -z "$open" ] || [ "$open" -gt 3 ]; then
        cat "$log"
        echo "valgrind-run: exit $rc, fds open at exit: ${open:-unknown}" >&2
        [ "$rc" -ne 0 ] && exit "$rc"
        exit 98
fi
echo "valgrind-run: clean (exit 0, $open fds at exit)"
