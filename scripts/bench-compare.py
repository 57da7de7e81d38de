#!/usr/bin/env python3
"""Prints stoa-load runs (--json) of this build and of a baseline side by side: each
scenario's share of the bare handler measured in its own run (the mean over the rounds),
and this build's share over the baseline's (above 1 is faster). Shares, not req/s, are
compared: this machine's speed drifts by a third between runs.

    scripts/bench-compare.py --label v1 --current a1.json a2.json --baseline b1.json b2.json
"""
import argparse
import json
from statistics import mean


def load(paths):
    """Scenario -> list of results, one per run."""
    runs = {}
    for path in paths:
        with open(path) as f:
            for result in json.load(f)["results"]:
                runs.setdefault(result["scenario"], []).append(result)
    return runs


def share(results):
    shares = [r["ratio_to_bare"] for r in results if r.get("ratio_to_bare") is not None]
    return mean(shares) if shares else None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--label", default="baseline")
    parser.add_argument("--current", nargs="+", required=True)
    parser.add_argument("--baseline", nargs="+", required=True)
    args = parser.parse_args()
    current, baseline = load(args.current), load(args.baseline)
    label = args.label
    print(f"this build against {label}: share of the bare handler in the same run, "
          f"mean of {len(args.current)} run(s) each")
    header = ("scenario", "req/s", "p99 ms", "% of bare", f"{label}: % of bare", "ratio")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, runs in current.items():
        now, before = share(runs), share(baseline.get(name, []))
        cells = [
            name,
            f"{mean(r['requests_per_second'] for r in runs):.0f}",
            f"{mean(r['p99_ms'] for r in runs):.2f}",
            "-" if now is None else f"{now * 100:.1f}",
            "-" if before is None else f"{before * 100:.1f}",
            "-" if not (now and before) else f"{now / before:.2f}",
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
