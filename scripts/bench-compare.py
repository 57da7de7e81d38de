#!/usr/bin/env python3
"""Prints two stoa-load runs (--json) side by side: each scenario's share of the bare
handler in its own run, and this build's share over the baseline's (a ratio above 1 is
faster). Shares, not req/s, are compared: the machine's speed drifts between runs.

    scripts/bench-compare.py current.json baseline.json [baseline-label]
"""
import json
import sys


def load(path):
    with open(path) as f:
        return {r["scenario"]: r for r in json.load(f)["results"]}


def main():
    current, baseline = load(sys.argv[1]), load(sys.argv[2])
    label = sys.argv[3] if len(sys.argv) > 3 else "baseline"
    print(f"this build against {label}, each as a share of the bare handler in its own run:")
    header = ("scenario", "req/s", "p99 ms", "% of bare", f"{label}: % of bare", "ratio")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, now in current.items():
        share = now.get("ratio_to_bare")
        before = baseline.get(name, {}).get("ratio_to_bare")
        cells = [
            name,
            f"{now['requests_per_second']:.0f}",
            f"{now['p99_ms']:.2f}",
            "-" if share is None else f"{share * 100:.1f}",
            "-" if before is None else f"{before * 100:.1f}",
            "-" if not (share and before) else f"{share / before:.2f}",
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
