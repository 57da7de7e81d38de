#!/usr/bin/env bash
# The book (docs/, mdBook): regenerates the three references from the code, then builds
# the book into target/book with every internal link checked (mdbook-linkcheck; web links
# are not followed, as the build machines have no network).
#   scripts/docs.sh           regenerate and build (`make docs`)
#   scripts/docs.sh --check   build only; fail if a reference is out of date (CI)
# Installs mdbook 0.4 and mdbook-linkcheck with `cargo install --locked` when missing
# (mdbook-linkcheck 0.7.7 reads mdbook 0.4's render context; 0.5 changed it).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "[docs] $*"; }

MDBOOK_VERSION=0.4.52
LINKCHECK_VERSION=0.7.7
if ! mdbook --version 2>/dev/null | grep -q "v$MDBOOK_VERSION"; then
  say "installing mdbook $MDBOOK_VERSION (cargo install --locked, a few minutes once)"
  cargo install --locked --quiet --force mdbook@"$MDBOOK_VERSION"
fi
if ! mdbook-linkcheck --version 2>/dev/null | grep -q "$LINKCHECK_VERSION"; then
  say "installing mdbook-linkcheck $LINKCHECK_VERSION"
  cargo install --locked --quiet --force mdbook-linkcheck@"$LINKCHECK_VERSION"
fi

generate() {
  cargo run -q -p stoa-api -- reference settings >"$1/settings.md"
  cargo run -q -p stoa-operator -- reference crd >"$1/crd.md"
  cargo run -q -p stoa-operator -- reference conditions >"$1/conditions.md"
}

if [ "${1:-}" = "--check" ]; then
  fresh=$(mktemp -d)
  trap 'rm -rf "$fresh"' EXIT
  generate "$fresh"
  for page in settings crd conditions; do
    if ! diff -q "$fresh/$page.md" "docs/reference/$page.md" >/dev/null; then
      say "docs/reference/$page.md is out of date: run make docs"
      exit 1
    fi
  done
else
  generate docs/reference
fi

mdbook build docs
say "the book: target/book/html/index.html"
