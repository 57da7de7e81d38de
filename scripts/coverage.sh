#!/usr/bin/env bash
# Line coverage of the whole test suite (`make test`'s tests), per crate: cargo-tarpaulin
# with its LLVM engine (source-based coverage; tarpaulin reads the profiles itself, so
# rustup's llvm-tools are not needed). Processes the tests start (stoa-api, the operator's
# test servers) are instrumented too and counted. Reports: target/coverage-report/
# (tarpaulin-report.html, tarpaulin-report.json) and a per-crate table on stdout.
# Installs cargo-tarpaulin with `cargo install --locked` when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "[coverage] $*"; }

TARPAULIN_VERSION=0.37.5
if ! cargo tarpaulin --version 2>/dev/null | grep -q "$TARPAULIN_VERSION"; then
  say "installing cargo-tarpaulin $TARPAULIN_VERSION (cargo install --locked, a few minutes once)"
  cargo install --locked --quiet --force cargo-tarpaulin@"$TARPAULIN_VERSION"
fi

# Its own target directory: instrumented builds share nothing with the usual ones.
cargo tarpaulin --engine llvm --workspace --skip-clean \
  --target-dir target/coverage --timeout 900 \
  --exclude-files 'target/*' \
  --out Json --out Html --output-dir target/coverage-report "$@"

python3 - <<'PY'
import json
import os
from collections import defaultdict

report = json.load(open("target/coverage-report/tarpaulin-report.json"))
crates = [("api-server/contract/", "stoa-contract"), ("api-server/", "stoa-api"),
          ("operator/", "stoa-operator"), ("tests/", "stoa-tests (harness, load tools)")]
totals = defaultdict(lambda: [0, 0])
for f in report["files"]:
    path = os.path.relpath(os.path.normpath("/" + "/".join(f["path"])), os.getcwd())
    for prefix, crate in crates:
        if path.startswith(prefix):
            totals[crate][0] += f["covered"]
            totals[crate][1] += f["coverable"]
            break
print("| crate | lines covered | coverable | coverage |")
print("|---|---|---|---|")
for _, crate in crates:
    covered, coverable = totals[crate]
    if coverable:
        print(f"| {crate} | {covered} | {coverable} | {100 * covered / coverable:.1f}% |")
print(f"| all | {report['covered']} | {report['coverable']} | {report['coverage']:.1f}% |")
PY
