#!/usr/bin/env python3
"""Server CPU time and system calls per echo round trip: the net layer's
echo server (examples/echo_server.rs, one loop) against the raw
edge-triggered loop on the same poller (examples/raw_echo.rs), in one run.

    cargo build --release -p readiness-net --examples
    python3 crates/readiness-net/benches/echo_cpu.py [--reps 5] [--round-trips 100000]
    python3 crates/readiness-net/benches/echo_cpu.py --instructions   # valgrind counts

The server is pinned to core 0, the client (examples/echo_load.rs, blocking,
one thread per connection, every byte validated) to core 1. Server CPU is
the sum over the server's threads of /proc/PID/task/*/schedstat (ns on
CPU), read before and after a fixed number of round trips. Servers are
interleaved; each cell is run --reps times and the median is reported.
System calls per round trip come from `strace -c -f` attached to the server
over a separate run of the same workload (strace slows it down; the counts
do not drift with machine noise).
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
EX = os.path.join(ROOT, "target", "release", "examples")
SERVERS = {
    "net": [os.path.join(EX, "echo_server"), "--threads", "1"],
    "raw": [os.path.join(EX, "raw_echo")],
}
WORKLOADS = [(1, 64), (10, 64), (1, 4096)]


def start(name, env=None, wrap=None):
    cmd = (wrap or ["taskset", "-c", "0"]) + SERVERS[name] + ["--addr", "127.0.0.1:0"]
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    line = p.stdout.readline()
    m = re.match(r"listening on (\S+)", line)
    if not m:
        sys.exit(f"{name}: unexpected first line {line!r}")
    return p, m.group(1)


def stop(p):
    p.stdin.close()
    p.stdout.read()
    p.wait(timeout=30)


def cpu_ns(pid):
    total = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{t}/schedstat") as f:
            total += int(f.read().split()[0])
    return total


def load(addr, conns, size, n):
    out = subprocess.run(
        ["taskset", "-c", "1", os.path.join(EX, "echo_load"), "--addr", addr,
         "--connections", str(conns), "--size", str(size), "--round-trips", str(n)],
        check=True, capture_output=True, text=True).stdout
    m = re.search(r"round_trips=(\d+) secs=([\d.]+) per_sec=(\d+) failures=0", out)
    if not m:
        sys.exit(f"load client: {out!r}")
    return int(m.group(1)), float(m.group(3))


def measure(name, conns, size, n):
    p, addr = start(name)
    load(addr, conns, size, max(1000, n // 20))  # warm-up
    before = cpu_ns(p.pid)
    total, rate = load(addr, conns, size, n)
    after = cpu_ns(p.pid)
    stop(p)
    return (after - before) / total / 1000.0, rate


def syscalls(name, conns, size, n):
    p, addr = start(name)
    load(addr, conns, size, 1000)
    out = "/tmp/echo_cpu_strace.txt"
    s = subprocess.Popen(["strace", "-c", "-f", "-o", out, "-p", str(p.pid)],
                         stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    total, _ = load(addr, conns, size, n)
    time.sleep(0.2)
    s.send_signal(2)
    s.wait(timeout=30)
    stop(p)
    counts = {}
    with open(out) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
                calls = int(parts[3])
                counts[parts[-1]] = calls
    # Only the calls of the echo path (the idle stdin thread reads nothing).
    per = {k: v / total for k, v in counts.items() if v / total >= 0.01}
    return sum(v for v in per.values()), per


def instructions(name, conns, size, n):
    """User-space instructions the server executes for n round trips
    (valgrind's callgrind: exact counts, no noise), startup included."""
    out = f"/tmp/echo_cpu_callgrind.{name}.out"
    p, addr = start(name, wrap=["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out])
    load(addr, conns, size, n)
    stop(p)
    with open(out) as f:
        for line in f:
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1])
    sys.exit("no callgrind summary")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--round-trips", type=int, default=100_000)
    ap.add_argument("--no-strace", action="store_true")
    ap.add_argument("--instructions", action="store_true",
                    help="only the user-space instruction counts (valgrind)")
    a = ap.parse_args()
    if a.instructions:
        print("| connections | size | net instr/rt | raw instr/rt | net - raw |")
        print("|---:|---:|---:|---:|---:|")
        for conns, size in WORKLOADS:
            per = {}
            for name in ("net", "raw"):
                # The difference of two runs cancels start-up and shutdown.
                small = instructions(name, conns, size, 1000)
                big = instructions(name, conns, size, 11000)
                per[name] = (big - small) / (10000 * conns)
            print(f"| {conns} | {size} | {per['net']:.0f} | {per['raw']:.0f} | "
                  f"{per['net'] - per['raw']:.0f} |")
            sys.stdout.flush()
        return
    print(f"# {a.reps} interleaved runs per cell, {a.round_trips} round trips each; medians")
    print("| connections | size | net µs/rt | raw µs/rt | ratio net/raw, median (range) | "
          "ratio of minima | net rt/s | raw rt/s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for conns, size in WORKLOADS:
        res = {"net": [], "raw": []}
        for _ in range(a.reps):
            for name in ("net", "raw"):
                res[name].append(measure(name, conns, size, a.round_trips))
        net = statistics.median(r[0] for r in res["net"])
        raw = statistics.median(r[0] for r in res["raw"])
        ratios = [n[0] / r[0] for n, r in zip(res["net"], res["raw"])]
        print(f"| {conns} | {size} | {net:.2f} | {raw:.2f} | {statistics.median(ratios):.3f} "
              f"({min(ratios):.3f}-{max(ratios):.3f}) | "
              f"{min(r[0] for r in res['net']) / min(r[0] for r in res['raw']):.3f} | "
              f"{statistics.median(r[1] for r in res['net']):.0f} | "
              f"{statistics.median(r[1] for r in res['raw']):.0f} |")
        sys.stdout.flush()
    if a.no_strace:
        return
    print()
    print("| connections | size | server | syscalls/rt | by call |")
    print("|---:|---:|---|---:|---|")
    for conns, size in WORKLOADS:
        for name in ("net", "raw"):
            total, per = syscalls(name, conns, size, 20_000)
            detail = ", ".join(f"{k} {v:.2f}" for k, v in sorted(per.items()))
            print(f"| {conns} | {size} | {name} | {total:.2f} | {detail} |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
