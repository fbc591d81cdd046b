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
# Count descriptors the program itself left open: valgrind lists each as
# "Open file descriptor N: ..." followed by where it was opened; those it did
# not open (its own --log-file, whatever the parent passed down) are marked
# "<inherited from parent>".
open=$(awk '/Open file descriptor [0-9]+:/ { if (fd != "") n++; fd = $0; next }
            fd != "" && /<inherited from parent>/ { fd = ""; next }
            fd != "" && /^==[0-9]+== *$/ { next }
            fd != "" { n++; fd = "" }
            END { if (fd != "") n++; print n + 0 }' "$log")
if [ "$rc" -ne 0 ] || [ "$open" -gt 0 ]; then
        cat "$log"
        echo "valgrind-run: exit $rc, fds left open by the program: $open" >&2
        [ "$rc" -ne 0 ] && exit "$rc"
        exit 98
fi
echo "valgrind-run: clean (exit 0, no fds left open)"
