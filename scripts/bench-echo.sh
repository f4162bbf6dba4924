#!/usr/bin/env bash
# The echo benchmark of issue 7: every built echo server (crates/readiness-bench,
# binary echo-peer) loaded by `readiness echo-client`, server pinned to core 0
# and client to core 1. Not part of CI: the full matrix takes about 20 minutes
# on two cores.
#
# Usage:
#   scripts/bench-echo.sh [ECHO-MATRIX OPTIONS...]
#
# Examples:
#   scripts/bench-echo.sh                       # timed matrix + syscall counts
#   scripts/bench-echo.sh --scale               # ... and the 19,000-idle scale part
#   scripts/bench-echo.sh --no-timed --strace-round-trips 0 --scale   # scale only
#   scripts/bench-echo.sh --servers epoll,raw --workloads 100:64:1 --reps 5
#   scripts/bench-echo.sh --help                # every option of echo-matrix
#
# Knobs are echo-matrix's options: --reps (3), --duration (3 s), --warmup
# (1 s), --strace-round-trips (20,000), --syscall-tools (perf,strace),
# --scale-idle (19,000), --scale-reps (2), --out (target/bench-echo).
#
# Writes target/bench-echo/results.json (rewritten after every run), the raw
# strace/perf outputs next to it, then target/bench-echo/report.md and
# target/bench-echo/echo-ratios.svg (echo-report). Installs strace (and perf,
# if the syscall tools ask for it) with apt-get when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_tool() { # tool package
    command -v "$1" >/dev/null 2>&1 && return 0
    if [[ $(id -u) -ne 0 ]]; then
        echo "bench-echo: $1 is missing and this is not root: install $2" >&2
        return 1
    fi
    echo "bench-echo: installing $2" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}

tools="perf,strace"
prev=""
for a in "$@"; do
    [[ $prev == --syscall-tools ]] && tools=$a
    [[ $a == --syscall-tools=* ]] && tools=${a#--syscall-tools=}
    prev=$a
done
command -v taskset >/dev/null || need_tool taskset util-linux
[[ $tools == *strace* ]] && need_tool strace strace
[[ $tools == *perf* ]] && need_tool perf linux-perf

cargo build --release -q -p readiness-cli -p readiness-bench --bin readiness --bin echo-peer \
    --bin echo-matrix --bin echo-report
out=target/bench-echo
for ((i = 1; i <= $#; i++)); do
    [[ ${!i} == --out ]] && { j=$((i + 1)); out=${!j}; }
    [[ ${!i} == --out=* ]] && out=${!i#--out=}
done
target/release/echo-matrix "$@"
target/release/echo-report "$out/results.json" --markdown "$out/report.md" --svg "$out/echo-ratios.svg"
echo "bench-echo: $out/report.md, $out/echo-ratios.svg"
