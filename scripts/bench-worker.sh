#!/usr/bin/env bash
# Worker throughput: how fast `stoa-api worker` drains a backlog of account exports.
#
#   scripts/bench-worker.sh [JOBS] [WORKERS] [CONCURRENCY]     defaults: 5000 1 4
#
# A scratch database `stoa_bench_worker` (dropped and re-created) gets JOBS accounts, each
# with two articles, a comment and a favorite, and one export request with its job (as
# `POST /api/user/export` writes them); then WORKERS release-build worker processes with
# STOA_WORKER_CONCURRENCY=CONCURRENCY drain the queue. Prints jobs per second.
set -euo pipefail
cd "$(dirname "$0")/.."

JOBS=${1:-5000}
WORKERS=${2:-1}
CONCURRENCY=${3:-4}
PG=${BENCH_PG:-postgres://postgres@127.0.0.1:5432}
DB=stoa_bench_worker
PIDS=()
# shellcheck disable=SC2154  # p is the loop variable inside the trap string
trap 'for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done' EXIT

cargo build --release -q -p stoa-api --bin stoa-api
BIN=${STOA_API_BIN:-./target/release/stoa-api}
psql "$PG/postgres" -q -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
export STOA_DATABASE_URL="$PG/$DB"
"$BIN" migrate >/dev/null
psql "$PG/$DB" -q <<SQL
INSERT INTO users (username, email, password_hash)
  SELECT 'user' || n, 'user' || n || '@example.com', 'x' FROM generate_series(1, $JOBS) n;
INSERT INTO articles (slug, author_id, title, description, body, tag_list)
  SELECT 'a-' || u.username || '-' || k, u.id, 'Title ' || k, 'About it', repeat('body ', 200),
         ARRAY['bench', 'tag' || k]
    FROM users u, generate_series(1, 2) k;
INSERT INTO comments (article_id, author_id, body)
  SELECT a.id, a.author_id, 'a comment' FROM articles a;
INSERT INTO favorites (user_id, article_id)
  SELECT a.author_id, a.id FROM articles a WHERE a.slug LIKE '%-1';
WITH request AS (
  INSERT INTO account_exports (user_id, requested_at) SELECT id, now() FROM users RETURNING user_id)
INSERT INTO jobs (kind, payload, idempotency_key)
  SELECT 'export_account', jsonb_build_object('userId', user_id), 'user:' || user_id FROM request;
SQL

export STOA_LOG=warn STOA_WORKER_CONCURRENCY=$CONCURRENCY
export STOA_DB_MAX_CONNECTIONS=$((CONCURRENCY + 2))
start=$(date +%s.%N)
for n in $(seq 1 "$WORKERS"); do
  STOA_ADMIN_ADDR="127.0.0.1:$((19190 + n))" "$BIN" worker &
  PIDS+=($!)
done
while :; do
  left=$(psql "$PG/$DB" -tAq -c "SELECT count(*) FROM jobs WHERE kind = 'export_account' AND state <> 'done'")
  [ "$left" = 0 ] && break
  sleep 0.2
done
end=$(date +%s.%N)
once=$(psql "$PG/$DB" -tAq -c "SELECT count(*) FROM account_exports WHERE revision = 1")
python3 - "$start" "$end" "$JOBS" "$WORKERS" "$CONCURRENCY" "$once" <<'PY'
import sys
start, end, jobs, workers, concurrency, once = sys.argv[1:]
seconds = float(end) - float(start)
print(f"{jobs} export jobs, {workers} worker(s) x {concurrency}: {seconds:.2f} s, "
      f"{int(jobs) / seconds:.0f} jobs/s; exports built exactly once: {once}/{jobs}")
PY
