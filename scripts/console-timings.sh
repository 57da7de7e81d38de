#!/usr/bin/env bash
# The admin console's page timings on the bench data: a release build on a fresh
# database, seeded by stoa-load as `make bench` seeds it (57 users, 1,450 articles,
# follows and favorites), then each console page fetched 30 times by a signed-in
# admin. Prints the median and the slowest time to first byte per page (loopback, so
# that is the server's time). `make console-timings`.
#   scripts/console-timings.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PG=${CONSOLE_TIMINGS_PG:-postgres://postgres@127.0.0.1:5432}
DB=stoa_console_timings
PORT=${CONSOLE_TIMINGS_PORT:-18291}
ADMIN_PORT=$((PORT + 1))
WORK=$(mktemp -d)
trap 'kill ${SERVER_PID:-0} 2>/dev/null || true; rm -rf "$WORK"' EXIT

# Each on its own: built together they would share a feature set (see scripts/bench.sh).
cargo build -q --release -p stoa-api --bin stoa-api
cargo build -q --release -p stoa-tests --bin stoa-load
SERVER=./target/release/stoa-api
# shellcheck source=scripts/lib/scratch-server.sh
. scripts/lib/scratch-server.sh
scratch_server_env "$SERVER" "$WORK" "$PG/$DB" "$PORT" "$ADMIN_PORT"
export STOA_LOG=warn STOA_RATE_LIMIT_ENABLED=false

psql "$PG/postgres" -q -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
"$SERVER" migrate >/dev/null
"$SERVER" serve >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 50); do curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.2; done

# The bench data: stoa-load seeds, then runs one short scenario.
./target/release/stoa-load --url "http://127.0.0.1:$PORT" --database-url "$PG/$DB" \
  --scenarios tags --duration 1s --connections 4 --bare none >/dev/null
curl -fs -o /dev/null "http://127.0.0.1:$PORT/api/users" -H 'content-type: application/json' \
  -d '{"user":{"username":"timings-admin","email":"timings-admin@example.com","password":"timings-password"}}'
"$SERVER" admin grant timings-admin >/dev/null

# Sign in as a browser would: the form's token and its cookie, then the session cookie.
# (Headers by hand: curl's cookie engine drops Secure cookies over plain http.)
cookie_of() { sed -n "s/^set-cookie: $1=\([^;]*\);.*/\1/Ip" "$2" | tail -1; }
form=$(curl -fs -D "$WORK/form.headers" "http://127.0.0.1:$PORT/admin/login")
csrf=$(sed -n 's/.*name="csrf" value="\([^"]*\)".*/\1/p' <<<"$form")
sign_in=$(cookie_of __Secure-stoa-console-sign-in "$WORK/form.headers")
curl -fs -o /dev/null -D "$WORK/login.headers" -H "Cookie: __Secure-stoa-console-sign-in=$sign_in" \
  "http://127.0.0.1:$PORT/admin/login" \
  --data-urlencode "email=timings-admin@example.com" --data-urlencode "password=timings-password" \
  --data-urlencode "csrf=$csrf"
session="__Secure-stoa-console=$(cookie_of __Secure-stoa-console "$WORK/login.headers")"

user=$(psql "$PG/$DB" -Atc "SELECT username FROM users ORDER BY created_at LIMIT 1")
slug=$(psql "$PG/$DB" -Atc "SELECT a.slug FROM articles a ORDER BY (SELECT count(*) FROM comments c WHERE c.article_id = a.id) DESC LIMIT 1")
printf '%-48s %10s %10s\n' page "median ms" "max ms"
for path in /admin /admin/users "/admin/users?q=user" "/admin/users?only=admins" "/admin/users/$user" \
  /admin/articles "/admin/articles?q=a" "/admin/articles/$slug" /admin/jobs /admin/events /admin/audit; do
  times=()
  for _ in $(seq 1 30); do
    t=$(curl -s -o "$WORK/page" -H "Cookie: $session" -w '%{http_code} %{time_pretransfer} %{time_starttransfer}' "http://127.0.0.1:$PORT$path")
    read -r code pre start <<<"$t"
    if [ "$code" != 200 ]; then echo "$path answered $code" >&2; exit 1; fi
    times+=("$(awk -v a="$pre" -v b="$start" 'BEGIN { printf "%.2f", (b - a) * 1000 }')")
  done
  sorted=$(printf '%s\n' "${times[@]}" | sort -n)
  printf '%-48s %10s %10s\n' "$path" "$(sed -n 15p <<<"$sorted")" "$(tail -1 <<<"$sorted")"
done
