#!/bin/sh
# selftest: the emulation module's own ABI selftest (kernel/emul/selftest.c),
# run against the loaded module: sizes, errnos, transitions, exclusivity, notify.
# shellcheck source=tests/e2e/scenarios/lib.sh
. /scenarios/lib.sh

[ -x /lib/luofleet/luo_emul_selftest ] || fail "no luo_emul_selftest in the initramfs"
load_emul
/lib/luofleet/luo_emul_selftest
rc=$?
[ "$rc" -eq 0 ] || fail "luo_emul_selftest exited $rc"
ok "luo_emul_selftest passed"
exit 0
