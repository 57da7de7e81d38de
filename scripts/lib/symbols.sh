# shellcheck shell=bash
# Sourced by the scripts that read the release binary's function names (the start-up
# order's list: scripts/startup-order.sh makes it, scripts/bench.sh checks it).

# has_symbol_table BIN: whether BIN kept its symbol table. nm answers a stripped binary
# with "no symbols" on stderr, and success.
has_symbol_table() {
  [ -n "$(nm "$1" 2>/dev/null | head -1)" ]
}

# defined_functions BIN: the functions BIN defines, one name each (as the linker sees
# them), sorted bytewise for comm.
defined_functions() {
  nm --defined-only "$1" | awk '$2 ~ /^[tTwW]$/ { print $3 }' | LC_ALL=C sort -u
}
