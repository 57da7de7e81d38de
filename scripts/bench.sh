#!/usr/bin/env bash
# Benchmarks a release build of stoa-api with the in-repo load harness (stoa-load).
#
#   scripts/bench.sh [stoa-load args...]      e.g. scripts/bench.sh --connections 64 --duration 10s
#
# Uses a scratch database `stoa_bench` (dropped and re-created), a generated key set, and
# production defaults except where noted below. Set BENCH_REDIS_URL to benchmark with Redis,
# STOA_API_BIN to benchmark another build of the server (e.g. the previous release, for a
# before/after in the same hour). stoa-load starts stoa-bare (the bare-handler limit) itself.
set -euo pipefail
cd "$(dirname "$0")/.."

PG=${BENCH_PG:-postgres://postgres@127.0.0.1:5432}
DB=stoa_bench
PORT=${BENCH_PORT:-18080}
ADMIN_PORT=${BENCH_ADMIN_PORT:-19090}
WORK=$(mktemp -d)
trap 'kill ${SERVER_PID:-0} 2>/dev/null || true; rm -rf "$WORK"' EXIT

cargo build --release -q -p stoa-api -p stoa-tests --bin stoa-api --bin stoa-load --bin stoa-bare
# wrk sends the read scenarios (a C client costs the shared CPUs far less than the
# harness's own); installed from Debian where possible, else the harness sends them.
if ! command -v wrk >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null 2>&1 || true
fi
ENGINE=reqwest
if command -v wrk >/dev/null 2>&1; then ENGINE=wrk; else echo "wrk not found: reads are sent by stoa-load itself"; fi
SERVER=${STOA_API_BIN:-./target/release/stoa-api}

psql "$PG/postgres" -q -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
# libpq and sqlx both default to sslmode=prefer: against a PostgreSQL with ssl=on (Debian's
# default) the server's connections are encrypted even on loopback, which costs point reads
# 15-20% here. Say which, so runs are compared like with like.
if [ "$(psql "$PG/$DB" -Atc 'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()')" = t ]; then
  echo "PostgreSQL link: TLS (sslmode ${PGSSLMODE:-prefer}; PGSSLMODE=disable measures without)"
else
  echo "PostgreSQL link: plain TCP"
fi
# Key sets come from this build (an older STOA_API_BIN may not know the MFA key set; it
# ignores the setting).
./target/release/stoa-api keys generate --dir "$WORK/keys" >/dev/null

export STOA_DATABASE_URL="$PG/$DB"
export STOA_JWT_KEYS_DIR="$WORK/keys"
./target/release/stoa-api mfa-keys generate --dir "$WORK/mfa-keys" >/dev/null
export STOA_MFA_KEYS_DIR="$WORK/mfa-keys"
export STOA_LISTEN_ADDR="127.0.0.1:$PORT"
export STOA_ADMIN_ADDR="127.0.0.1:$ADMIN_PORT"
export STOA_SHUTDOWN_DELAY=0s
# One client address sends everything: raise the rate limits out of the way (they still
# run, so their cost is measured). Everything else stays at production defaults.
export STOA_RATE_LIMIT_PER_IP=${STOA_RATE_LIMIT_PER_IP:-1000000000/1m}
export STOA_RATE_LIMIT_PER_USER=${STOA_RATE_LIMIT_PER_USER:-1000000000/1m}
export STOA_RATE_LIMIT_AUTH=${STOA_RATE_LIMIT_AUTH:-1000000000/1m}
export STOA_RATE_LIMIT_LOGIN_PER_ACCOUNT=${STOA_RATE_LIMIT_LOGIN_PER_ACCOUNT:-1000000000/1m}
export STOA_RATE_LIMIT_LOGIN_ACCOUNT_CEILING=${STOA_RATE_LIMIT_LOGIN_ACCOUNT_CEILING:-1000000000/1m}
[ -n "${BENCH_REDIS_URL:-}" ] && export STOA_REDIS_URL="$BENCH_REDIS_URL"

"$SERVER" migrate >/dev/null
"$SERVER" serve >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 50); do curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.2; done

IDLE_RSS_KB=$(awk '/VmRSS/ {print $2}' /proc/$SERVER_PID/status)
echo "server RSS at idle (before load): $((IDLE_RSS_KB / 1024)) MiB"

./target/release/stoa-load --url "http://127.0.0.1:$PORT" --database-url "$PG/$DB" \
    --metrics-url "http://127.0.0.1:$ADMIN_PORT/metrics" --engine "$ENGINE" "$@"

RSS_KB=$(awk '/VmRSS/ {print $2}' /proc/$SERVER_PID/status)
echo "server RSS after the run: $((RSS_KB / 1024)) MiB"
