#!/usr/bin/env python3
"""User-space memory per idle connection of the net layer's echo server.

    cargo build --release -p readiness-net --examples
    python3 crates/readiness-net/benches/idle_memory.py [--connections 19000]

Starts examples/echo_server.rs (one loop, a 1-hour idle timeout, so every
connection has a timer entry), reads its VmRSS, opens N idle connections
from another process (examples/idle_client.rs, several 127.0.0.x source
addresses), waits until the server reports them all open, reads VmRSS
again. Socket buffers and the epoll interest list live in the kernel and
are not in RSS: the delta is what the process itself holds.
"""

import argparse
import os
import re
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
EX = os.path.join(ROOT, "target", "release", "examples")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=19_000)
    a = ap.parse_args()
    n = a.connections
    server = subprocess.Popen(
        [os.path.join(EX, "echo_server"), "--addr", "127.0.0.1:0", "--threads", "1",
         "--idle-timeout-secs", "3600", "--report-ms", "200"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = server.stdout.readline()
    addr = re.match(r"listening on (\S+)", line).group(1)
    time.sleep(0.5)
    before = rss_kib(server.pid)
    client = subprocess.Popen(
        [os.path.join(EX, "idle_client"), "--addr", addr, "--connections", str(n)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if client.stdout.readline().strip() != f"open {n}":
        sys.exit("the idle client failed")
    deadline = time.time() + 60
    while True:
        line = server.stdout.readline()
        if line.strip() == f"open={n}":
            break
        if time.time() > deadline or not line:
            sys.exit(f"server reports {line!r}")
    time.sleep(0.5)
    after = rss_kib(server.pid)
    client.stdin.close()
    client.wait()
    server.stdin.close()
    server.wait(timeout=60)
    delta = (after - before) * 1024
    print(f"connections={n} rss_before_kib={before} rss_after_kib={after} "
          f"bytes_per_connection={delta / n:.1f}")


if __name__ == "__main__":
    main()
