#!/usr/bin/env bash
# The whole test suite, as README.md states it: every backend this machine
# can run.
#   1. Linux, default backend (epoll): every crate's tests and doc tests.
#   2. Linux, poll(2) forced by `--cfg readiness_test_poll_backend`: the
#      poller crate's tests again (its own target dir, so pass 1 is not
#      rebuilt).
#   3. Windows, cross-built and run under Wine: the raw AFD tests and the
#      backends' own tests on the `afd` backend, and the conformance suite on
#      both `afd` and `afd-direct`; and the `readiness` command's tests (its
#      echo-client runs on `afd` and `afd-direct` by name)
#      (scripts/test-windows.sh installs what it needs on a fresh machine).
# Exits non-zero if any pass fails; every pass runs either way.
set -uo pipefail
cd "$(dirname "$0")/.."

failed=()
log=$(mktemp)
trap 'rm -f "$log"' EXIT
run() {
    local name=$1
    shift
    printf '\n==== %s\n' "$name"
    if ! "$@" 2>&1 | tee -a "$log"; then
        failed+=("$name")
    fi
}

run "linux: epoll (default backend)" cargo test --workspace
run "linux: poll(2) (forced by cfg)" env RUSTFLAGS="--cfg readiness_test_poll_backend" \
    cargo test -p readiness -p readiness-net -p readiness-async --target-dir target/poll-backend
run "windows under wine: afd and afd-direct" env \
    WINE_TEST_PACKAGES="${WINE_TEST_PACKAGES:-readiness readiness-net readiness-async readiness-cli}" scripts/test-windows.sh

# One total over every libtest result line of every pass (the Windows pass
# prints its binaries' own lines too).
read -r total_passed total_failed < <(
    sed -n 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed.*/\1 \2/p' "$log" |
        awk '{p += $1; f += $2} END {print p + 0, f + 0}'
)
printf '\n'
if ((${#failed[@]})); then
    printf 'FAILED: %s\n' "${failed[@]}"
fi
echo "total: $total_passed passed, $total_failed failed"
((${#failed[@]} == 0))
