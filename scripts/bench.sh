#!/usr/bin/env bash
# Benchmarks a release build of stoa-api with the in-repo load harness (stoa-load), and the
# previous release built in the same hour on the same data, side by side.
#
#   scripts/bench.sh [stoa-load args...]      e.g. scripts/bench.sh --connections 64 --duration 10s
#
# Uses a scratch database `stoa_bench` (dropped and re-created for each build), a generated
# key set, and production defaults except where noted below.
#   BENCH_BASELINE   the previous release: a git revision built into target/bench-baseline
#                    (kept by commit, so it is built once); default the newest `v*` tag;
#                    `none` skips it.
#   BENCH_ROUNDS     rounds of both builds, alternating which runs first (default 1);
#                    the table gives each share's mean over the rounds.
#   BENCH_REDIS_URL  benchmark with Redis.
#   BENCH_PGBOUNCER  1: requests through a PgBouncer in transaction mode (Debian's
#                    pgbouncer, 8 server connections, the pool's default size) that this
#                    script starts on BENCH_PGBOUNCER_PORT (default 16432); migrations and
#                    LISTEN stay direct.
#   STOA_API_BIN     benchmark another build of the server instead of this checkout's.
# stoa-load starts stoa-bare (the bare-handler limit) itself, in every run.
set -euo pipefail
cd "$(dirname "$0")/.."

PG=${BENCH_PG:-postgres://postgres@127.0.0.1:5432}
DB=stoa_bench
PORT=${BENCH_PORT:-18080}
ADMIN_PORT=${BENCH_ADMIN_PORT:-19090}
WORK=$(mktemp -d)
trap '[ -n "${SERVER_PID:-}" ] && kill "$SERVER_PID" 2>/dev/null; [ -f "$WORK/bouncer/pgbouncer.pid" ] && kill "$(cat "$WORK/bouncer/pgbouncer.pid")" 2>/dev/null; rm -rf "$WORK"' EXIT

# The many_* scenarios hold 10,000 connections: the harness and the server it starts need a
# descriptor each (plus their own). Raised here, for this run only, never in the product.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 10500 ]; then
  echo "note: open-file limit $(ulimit -n): the many_* scenarios need about 10,500 (pass --many-connections lower, or raise the hard limit)"
fi

# The server alone, as the image builds it: built with the harness, their shared
# dependencies would get the union of both feature sets, which is another binary (and
# renames the functions api-server/startup-order.txt lists).
cargo build --release -q -p stoa-api --bin stoa-api
cargo build --release -q -p stoa-tests --bin stoa-load --bin stoa-bare
# The start-up code's order (api-server/build.rs) holds only while the list names this
# build's functions; a toolchain or dependency update renames many.
# shellcheck source=scripts/lib/symbols.sh
. scripts/lib/symbols.sh
if has_symbol_table ./target/release/stoa-api; then
  listed=$(grep -vc '^#' api-server/startup-order.txt)
  found=$(defined_functions ./target/release/stoa-api \
    | LC_ALL=C comm -12 - <(grep -v '^#' api-server/startup-order.txt | LC_ALL=C sort -u) | wc -l)
  echo "start-up order: $found of $listed listed functions are in this build"
  if [ $((found * 10)) -lt $((listed * 9)) ]; then
    echo "  fewer than 90%: idle memory grows; regenerate the list with scripts/startup-order.sh"
  fi
fi
# wrk sends every scenario (a C client costs the shared CPUs far less than the harness's
# own); installed from Debian where possible, else the harness sends them.
if ! command -v wrk >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null 2>&1 || true
fi
ENGINE=reqwest
if command -v wrk >/dev/null 2>&1; then ENGINE=wrk; else echo "wrk not found: requests are sent by stoa-load itself"; fi
SERVER=${STOA_API_BIN:-./target/release/stoa-api}

# The previous release, built from its own worktree with its own target directory (its
# dependencies may differ), once per commit.
BASELINE=${BENCH_BASELINE:-$(git describe --tags --abbrev=0 --match 'v*' 2>/dev/null || echo none)}
BASELINE_BIN=
if [ "$BASELINE" != none ]; then
  sha=$(git rev-parse --verify "$BASELINE^{commit}")
  BASELINE_BIN=target/bench-baseline/stoa-api-$sha
  if [ ! -x "$BASELINE_BIN" ]; then
    echo "building the baseline $BASELINE ($sha) in target/bench-baseline (once)"
    tree=target/bench-baseline/src
    git worktree remove --force "$tree" 2>/dev/null || rm -rf "$tree"
    git worktree add -q --detach "$tree" "$sha"
    (cd "$tree" && CARGO_TARGET_DIR=../target cargo build --release -q -p stoa-api --bin stoa-api)
    cp target/bench-baseline/target/release/stoa-api "$BASELINE_BIN"
    git worktree remove --force "$tree"
  fi
fi

# Key sets come from this build (an older server that does not know the MFA key set ignores
# the setting).
# shellcheck source=scripts/lib/scratch-server.sh
. scripts/lib/scratch-server.sh
scratch_server_env ./target/release/stoa-api "$WORK" "$PG/$DB" "$PORT" "$ADMIN_PORT"
# One client address sends everything: raise the rate limits out of the way (they still
# run, so their cost is measured). Everything else stays at production defaults.
lift_rate_limits
# The many_* scenarios hold 10,000 connections; the default (4096) would keep the rest
# waiting to be accepted. Each costs about 20 KiB while in use (docs/benchmarks.md, "Memory budget").
export STOA_MAX_CONNECTIONS=${STOA_MAX_CONNECTIONS:-12000}
[ -n "${BENCH_REDIS_URL:-}" ] && export STOA_REDIS_URL="$BENCH_REDIS_URL"
if [ "${BENCH_PGBOUNCER:-}" = 1 ]; then
  BOUNCER_PORT=${BENCH_PGBOUNCER_PORT:-16432}
  mkdir -p "$WORK/bouncer"
  cat >"$WORK/bouncer/pgbouncer.ini" <<INI
[databases]
* = host=127.0.0.1 port=5432
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
pool_mode = transaction
auth_type = trust
auth_file = $WORK/bouncer/userlist.txt
max_client_conn = 1000
default_pool_size = 8
logfile = $WORK/bouncer/pgbouncer.log
pidfile = $WORK/bouncer/pgbouncer.pid
INI
  echo '"postgres" ""' >"$WORK/bouncer/userlist.txt"
  # PgBouncer refuses to run as root.
  if [ "$(id -u)" = 0 ]; then
    chown -R postgres "$WORK"
    runuser -u postgres -- /usr/sbin/pgbouncer -d "$WORK/bouncer/pgbouncer.ini"
  else
    /usr/sbin/pgbouncer -d "$WORK/bouncer/pgbouncer.ini"
  fi
  export STOA_DATABASE_POOLER_URL="postgres://postgres@127.0.0.1:$BOUNCER_PORT/$DB"
  echo "requests through PgBouncer (transaction mode) on 127.0.0.1:$BOUNCER_PORT"
fi

# The running server's resident memory now (VmRSS) or at its peak (VmHWM), in MiB.
server_mib() {
  awk -v field="$1:" '$1 == field { print int($2 / 1024) }' "/proc/$SERVER_PID/status"
}

# One build on a fresh database: start it, seed and measure, stop it. $1: the server
# binary, $2: a label, $3: where the results go (JSON); the rest: stoa-load's arguments.
bench_one() {
  local server=$1 label=$2 json=$3
  shift 3
  echo
  echo "== $label ($server)"
  psql "$PG/postgres" -q -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
  # libpq and sqlx both default to sslmode=prefer: against a PostgreSQL with ssl=on
  # (Debian's default) the server's connections are encrypted even on loopback, which
  # costs point reads 15-20% here. Say which, so runs are compared like with like.
  if [ "$(psql "$PG/$DB" -Atc 'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()')" = t ]; then
    echo "PostgreSQL link: TLS (sslmode ${PGSSLMODE:-prefer}; PGSSLMODE=disable measures without)"
  else
    echo "PostgreSQL link: plain TCP"
  fi
  "$server" migrate >/dev/null
  "$server" serve >"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 50); do curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.2; done
  echo "server RSS at idle (before load): $(server_mib VmRSS) MiB"
  ./target/release/stoa-load --url "http://127.0.0.1:$PORT" --database-url "$PG/$DB" \
      --metrics-url "http://127.0.0.1:$ADMIN_PORT/metrics" --engine "$ENGINE" --json "$json" "$@"
  echo "server RSS after the run: $(server_mib VmRSS) MiB (peak $(server_mib VmHWM) MiB)"
  # What a burst freed goes back to the OS within about three seconds of the runtime's
  # workers going idle (api-server/src/freed_memory.rs), so RSS is read 5 s after the
  # server's last client connection closed.
  local drained=0
  # (awk reads the whole scrape: a reader that quit at the match would fail curl's write.)
  while [ "$drained" -lt 60 ] && ! curl -fs "http://127.0.0.1:$ADMIN_PORT/metrics" \
      | awk '$0 == "stoa_http_connections_open 0" { seen = 1 } END { exit !seen }'; do
    sleep 0.5; drained=$((drained + 1))
  done
  sleep 5
  echo "server RSS 5 s after its last connection closed ($((drained / 2)) s after the run): $(server_mib VmRSS) MiB"
  kill "$SERVER_PID"
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
}

if [ -z "$BASELINE_BIN" ]; then
  bench_one "$SERVER" "this build" "$WORK/current-1.json" "$@"
  exit 0
fi
# Rounds alternate which build runs first (ABBA...): the second run of a pair measured
# consistently faster here, whichever build it was.
ROUNDS=${BENCH_ROUNDS:-1}
for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) = 1 ]; then
    bench_one "$SERVER" "this build, round $round" "$WORK/current-$round.json" "$@"
    bench_one "$BASELINE_BIN" "baseline $BASELINE, round $round" "$WORK/baseline-$round.json" "$@"
  else
    bench_one "$BASELINE_BIN" "baseline $BASELINE, round $round" "$WORK/baseline-$round.json" "$@"
    bench_one "$SERVER" "this build, round $round" "$WORK/current-$round.json" "$@"
  fi
done
echo
python3 scripts/bench-compare.py --label "$BASELINE" \
    --current "$WORK"/current-*.json --baseline "$WORK"/baseline-*.json
