#!/bin/sh
# Run one unit suite under valgrind: fail on any memory error or leak in the suite's
# process or in any child it forks (each process logs to its own file; a child's errors do
# not reach the parent's exit status, so every log's ERROR SUMMARY is read), and on any
# file descriptor still open at exit in the suite's own process beyond stdin/stdout/stderr
# (valgrind 3.19 only reports fds, it does not fail on them, hence this wrapper).
# CK_FORK=no keeps every test in one process so leaks are seen.
set -u
bin=$1
dir=$(mktemp -d "${TMPDIR:-/tmp}/luofleet-vg.XXXXXX")
trap 'rm -rf "$dir"' EXIT
CK_FORK=no valgrind --error-exitcode=99 --leak-check=full \
        --show-leak-kinds=definite,indirect,possible \
        --errors-for-leak-kinds=definite,indirect,possible \
        --track-fds=yes --log-file="$dir/vg.%p" "$bin" &
pid=$!
wait "$pid"
rc=$?
log=$dir/vg.$pid
[ -f "$log" ] || { echo "valgrind-run: no log from valgrind (pid $pid)" >&2; exit 97; }
# Count descriptors the program itself left open: valgrind lists each as
# "Open file descriptor N: ..." followed by where it was opened; those it did
# not open (its own --log-file, whatever the parent passed down) are marked
# "<inherited from parent>".
open=$(awk '/Open file descriptor [0-9]+:/ { if (fd != "") n++; fd = $0; next }
            fd != "" && /<inherited from parent>/ { fd = ""; next }
            fd != "" && /^==[0-9]+== *$/ { next }
            fd != "" { n++; fd = "" }
            END { if (fd != "") n++; print n + 0 }' "$log")
# Errors in forked children (their own logs): memory errors, and memory definitely lost. A
# child forked from the suite's threaded process and ended with _exit inherits the parent's
# heap and its threads' stacks without the threads: what it leaves "possibly lost" (a thread's
# TLS) or "still reachable" is the fork's, not a leak of the code under test.
children=0
for f in "$dir"/vg.*; do
        [ "$f" = "$log" ] && continue
        if grep -Eq 'Invalid (read|write|free)|Mismatched free|Conditional jump|uninitialised|Syscall param|overlap|definitely lost: [1-9]' "$f"; then
                children=$((children + 1))
                echo "==== valgrind: a child of the suite ($(basename "$f")) ===="
                cat "$f"
        fi
done
if [ "$rc" -ne 0 ] || [ "$open" -gt 0 ] || [ "$children" -gt 0 ]; then
        cat "$log"
        echo "valgrind-run: exit $rc, fds left open by the program: $open," \
             "children with errors: $children" >&2
        [ "$rc" -ne 0 ] && exit "$rc"
        exit 98
fi
n=$(find "$dir" -name 'vg.*' | wc -l)
echo "valgrind-run: clean (exit 0, no fds left open, no errors in $((n - 1)) children)"
