#!/usr/bin/env python3
"""Server-to-server CPU ratios of the echo benchmark (docs/BENCHMARKS.md).

    scripts/echo-pair-ratios.py RESULTS.json... [--pairs net/mio,async/smol,...]

For each workload and each pair A/B: in every repetition where both ran,
(A's server CPU per round trip) / (B's), then the median and range of those
ratios: echo-report's ratio to the floor with B in the floor's place. Several
files are pooled (their repetitions kept apart).
"""
import json
import statistics
import sys
from collections import defaultdict

DEFAULT_PAIRS = "net/epoll,net/mio,net/tokio,async/epoll,async/smol,async/tokio"


def main(argv):
    pairs = DEFAULT_PAIRS
    files = []
    args = iter(argv)
    for a in args:
        if a == "--pairs":
            pairs = next(args)
        elif a.startswith("--pairs="):
            pairs = a.split("=", 1)[1]
        else:
            files.append(a)
    if not files:
        sys.exit(__doc__)
    pairs = [tuple(p.split("/")) for p in pairs.split(",")]
    cpu = defaultdict(dict)  # (workload, file, rep) -> server -> µs per round trip
    order = []
    for i, path in enumerate(files):
        with open(path) as f:
            results = json.load(f)
        for cell in results["cells"]:
            w = cell["workload"]
            wid = f"c{w['connections']}-s{w['size']}-d{w['depth']}"
            if wid not in order:
                order.append(wid)
            c = cell["client"]
            if c.get("server_cpu_s") is None or c["round_trips"] == 0:
                continue
            cpu[(wid, i, cell["rep"])][cell["server"]] = c["server_cpu_s"] * 1e6 / c["round_trips"]
    print("| workload | " + " | ".join(f"{a} / {b}" for a, b in pairs) + " |")
    print("|---|" + "---:|" * len(pairs))
    for wid in order:
        row = []
        for a, b in pairs:
            r = [d[a] / d[b] for (w, _, _), d in cpu.items() if w == wid and a in d and b in d]
            row.append(
                f"{statistics.median(r):.3f} ({min(r):.2f}-{max(r):.2f}, n={len(r)})" if r else "-"
            )
        print(f"| {wid} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
