#!/usr/bin/env bash
# Supply-chain checks of the Rust dependency graph with cargo deny (deny.toml): known
# vulnerabilities, unmaintained and unsound crates (RustSec), licenses, banned crates and
# sources. The advisory database is the offline snapshot in ../shared/advisory-db (the
# machines that build this cannot reach GitHub; see its SNAPSHOT.md), or ADVISORY_DB;
# without one, the other three checks still run and the run says so.
# Installs cargo-deny with `cargo install --locked` (from crates.io) when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "[supply-chain] $*"; }

# Where the snapshot is: ADVISORY_DB, else beside this checkout, else the machine's copy
# (a CI checkout elsewhere has no ../shared).
SNAPSHOT=
for candidate in "${ADVISORY_DB:-}" "$(pwd)/../shared/advisory-db" /work/shared/advisory-db; do
  if [ -n "$candidate" ] && [ -d "$candidate/crates" ]; then
    SNAPSHOT=$candidate
    break
  fi
done
CHECKS="advisories licenses bans sources"
if [ -z "$SNAPSHOT" ]; then
  say "WARNING: no advisory database (ADVISORY_DB, ../shared/advisory-db, /work/shared/advisory-db):"
  say "WARNING: known vulnerabilities are NOT checked in this run; licenses, bans and sources are"
  CHECKS="licenses bans sources"
fi
if ! command -v cargo-deny >/dev/null 2>&1; then
  say "installing cargo-deny (cargo install --locked cargo-deny, a few minutes once)"
  cargo install --locked --quiet cargo-deny@0.20.2
fi

# cargo-deny reads a git checkout at <db-path>/advisory-db-<hash of the default URL>
# (deny.toml's db-path) and, with --offline, never fetches: a throw-away repository of the
# snapshot, rebuilt when the snapshot changes.
DB="target/advisory-dbs/advisory-db-3157b0e258782691"
STAMP="$(cat "$SNAPSHOT/SNAPSHOT.md" 2>/dev/null | sha256sum | cut -c1-16)"
if [ -n "$SNAPSHOT" ] && [ "$(cat "$DB/.snapshot" 2>/dev/null)" != "$STAMP" ]; then
  say "preparing the advisory database from $SNAPSHOT"
  rm -rf "$DB"
  mkdir -p "$DB"
  cp -r "$SNAPSHOT"/. "$DB"/
  (
    cd "$DB"
    git init -q
    git -c user.name=snapshot -c user.email=snapshot@localhost add -A
    git -c user.name=snapshot -c user.email=snapshot@localhost commit -qm snapshot
  )
  echo "$STAMP" >"$DB/.snapshot"
fi

# Every platform's crates must be present for `cargo metadata` (crates.io is reachable;
# nothing is fetched when they already are).
cargo fetch --locked --quiet
# shellcheck disable=SC2086 # the checks are words
cargo deny --offline --locked check $CHECKS
