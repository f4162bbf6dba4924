#!/usr/bin/env bash
# Server CPU time and system calls per echo round trip: the readiness-async
# echo server (crates/readiness-async/examples/echo.rs) against the same
# server on async-io (examples/echo_async_io.rs). Figures for
# docs/BENCHMARKS.md (async section). Linux only (taskset, /proc, strace).
#
# Usage: scripts/bench-async-echo.sh [ROUNDS]     (default 3)
#
#   - server pinned to CPU 0, the load generator (examples/echo_client.rs,
#     single-threaded, validating every byte) to CPU 1;
#   - workloads (connections, size, depth) of the echo matrix;
#   - servers interleaved within each round; each cell is the median over
#     ROUNDS runs of the server's CPU time (all threads, from
#     /proc/PID/task/*/schedstat) over a fixed number of round trips, after
#     warm-up;
#   - system calls per round trip: `strace -c -f` attached to the server for
#     a separate run of STRACE_RTS round trips (the whole run, connection
#     set-up included: under 0.5 % of the calls).
#
# Environment: WORKLOADS ("C,S,D C,S,D ..."), SERVERS ("echo echo_async_io"),
# STRACE=0 to skip the system-call counts.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}
WORKLOADS=${WORKLOADS:-"1,64,1 100,64,1 1000,64,1 100,4096,1 100,64,16 10,65536,1"}
SERVERS=${SERVERS:-"echo echo_async_io"}
STRACE=${STRACE:-1}
EX=target/release/examples

ulimit -n "$(ulimit -Hn)"
cargo build --release -q -p readiness-async --example echo --example echo_async_io --example echo_client

# Round trips measured per run, by message size and depth (about 1-3 s each).
round_trips() {
    local size=$2 depth=$3
    if ((size >= 65536)); then echo 20000
    elif ((size >= 4096)); then echo 100000
    elif ((depth > 1)); then echo 600000
    else echo 200000
    fi
}

start_server() { # name -> sets SERVER_PID, SERVER_ADDR
    local out
    out=$(mktemp)
    taskset -c 0 "$EX/$1" --addr 127.0.0.1:0 >"$out" &
    SERVER_PID=$!
    for _ in $(seq 100); do
        [[ -s "$out" ]] && break
        sleep 0.05
    done
    SERVER_ADDR=$(head -1 "$out")
    rm -f "$out"
    [[ -n "$SERVER_ADDR" ]] || { echo "server $1 printed no address" >&2; exit 1; }
}

stop_server() {
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
}

client() { # conns size depth rts [extra args] -> the client's result line
    local c=$1 s=$2 d=$3 r=$4
    shift 4
    taskset -c 1 "$EX/echo_client" --addr "$SERVER_ADDR" --connections "$c" --size "$s" \
        --depth "$d" --round-trips "$r" "$@"
}

field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p"; }

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A CPU RPS CALLS
for w in $WORKLOADS; do
    IFS=, read -r c s d <<<"$w"
    r=$(round_trips "$c" "$s" "$d")
    for round in $(seq "$ROUNDS"); do
        for server in $SERVERS; do
            start_server "$server"
            line=$(client "$c" "$s" "$d" "$r" --server-pid "$SERVER_PID")
            stop_server
            echo "$w $server round $round: $line" >&2
            [[ $(field failures <<<"$line") == 0 ]] || { echo "validation failed" >&2; exit 1; }
            CPU[$w,$server]+="$(field server_cpu_us_per_rt <<<"$line") "
            RPS[$w,$server]+="$(field round_trips_per_s <<<"$line") "
        done
    done
    if ((STRACE)); then
        for server in $SERVERS; do
            sr=$((r / 10))
            start_server "$server"
            log=$(mktemp)
            strace -c -f -q -p "$SERVER_PID" -o "$log" &
            spid=$!
            sleep 0.5
            client "$c" "$s" "$d" "$sr" --warmup 0 >/dev/null
            kill -INT "$spid"
            wait "$spid" 2>/dev/null || true
            stop_server
            total=$(awk '$NF == "total" {print $(NF-2)}' "$log")
            [[ -n "$total" ]] || total=$(awk '/total/ {print $3}' "$log")
            CALLS[$w,$server]=$(awk -v t="$total" -v r="$sr" 'BEGIN {printf "%.2f", t / r}')
            echo "$w $server strace: $total calls / $sr round trips" >&2
            sed -n '3,12p' "$log" >&2
            rm -f "$log"
        done
    fi
done

first=${SERVERS%% *}
printf '\n| workload (conns, size, depth) | server | CPU µs / round trip | ratio to %s | round trips/s | syscalls / round trip |\n' "$first"
printf '|---|---|---|---|---|---|\n'
for w in $WORKLOADS; do
    base=$(tr ' ' '\n' <<<"${CPU[$w,$first]}" | grep . | median)
    for server in $SERVERS; do
        cpu=$(tr ' ' '\n' <<<"${CPU[$w,$server]}" | grep . | median)
        rps=$(tr ' ' '\n' <<<"${RPS[$w,$server]}" | grep . | median)
        ratio=$(awk -v a="$cpu" -v b="$base" 'BEGIN {printf "%.2f", a / b}')
        printf '| %s | %s | %.3f | %s | %.0f | %s |\n' "$w" "$server" "$cpu" "$ratio" "$rps" "${CALLS[$w,$server]:--}"
    done
done
