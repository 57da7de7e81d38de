#!/usr/bin/env bash
# Contract fuzzing: schemathesis generates requests from the served OpenAPI document and
# checks that the server behaves as the document says (no 5xx, documented statuses only,
# responses matching their schemas, schema-valid requests accepted). Runs against the
# debug build `make test` produced, on a scratch database `stoa_fuzz`.
#
# Two checks are left out by default (FUZZ_EXCLUDE_CHECKS= runs them):
# - ensure_resource_availability: a stateful sequence that renames an article (a new title
#   gives a new slug, as RealWorld specifies) and then uses the old slug gets a 404.
# - negative_data_rejection: schemathesis 4.32 reports "Missing required property: body"
#   for a request whose reproduction carries every property (201 is right for it); not yet
#   understood, so not yet a gate.
#
#   scripts/contract-fuzz.sh [extra schemathesis args]
set -euo pipefail
cd "$(dirname "$0")/.."

PG=${FUZZ_PG:-postgres://postgres@127.0.0.1:5432}
PORT=${FUZZ_PORT:-18181}
BIN=${STOA_API_BIN:-target/debug/stoa-api}
WORK=$(mktemp -d)
trap 'kill ${SERVER_PID:-0} 2>/dev/null || true; rm -rf "$WORK"' EXIT

python3 -m pip install -q --disable-pip-version-check 'schemathesis>=4,<5'
[ -x "$BIN" ] || cargo build -q -p stoa-api --bin stoa-api

psql "$PG/postgres" -q -c "DROP DATABASE IF EXISTS stoa_fuzz" -c "CREATE DATABASE stoa_fuzz" 2>/dev/null
# Production code paths, cheap hashing, limits out of the way of a single fuzzing client.
STOA_DATABASE_URL="$PG/stoa_fuzz" \
STOA_LISTEN_ADDR="127.0.0.1:$PORT" STOA_ADMIN_ADDR="127.0.0.1:0" \
STOA_ARGON2_MEMORY_KIB=1024 STOA_ARGON2_ITERATIONS=1 \
STOA_RATE_LIMIT_PER_IP=100000000/1m STOA_RATE_LIMIT_PER_USER=100000000/1m \
STOA_RATE_LIMIT_AUTH=100000000/1m STOA_RATE_LIMIT_LOGIN_PER_ACCOUNT=100000000/1m \
STOA_RATE_LIMIT_MFA=100000000/1m \
STOA_LOG=warn "$BIN" serve --dev >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.1; done

# A signed-in admin, so the operations behind authentication and the admin routes are
# exercised too (logout is left out: it would revoke the caller's token for the rest of
# the run; it has tests). The role reaches the token issued by the sign-in after the grant.
curl -fs -o /dev/null -X POST "http://127.0.0.1:$PORT/api/users" -H 'Content-Type: application/json' \
  -d '{"user": {"username": "fuzzer", "email": "fuzzer@example.com", "password": "fuzzer-password"}}'
STOA_DATABASE_URL="$PG/stoa_fuzz" STOA_LOG=warn "$BIN" admin grant fuzzer >/dev/null
TOKEN=$(curl -fs -X POST "http://127.0.0.1:$PORT/api/users/login" -H 'Content-Type: application/json' \
  -d '{"user": {"email": "fuzzer@example.com", "password": "fuzzer-password"}}' \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["user"]["token"])')

fuzz() { # fuzz <schema location> <path excluded> [extra args]
  local schema=$1 logout=$2
  shift 2
  python3 -m schemathesis.cli --config-file tests/schemathesis.toml run "$schema" \
    --url "http://127.0.0.1:$PORT" \
    -H "Authorization: Token $TOKEN" \
    --exclude-path "$logout" \
    --exclude-checks "${FUZZ_EXCLUDE_CHECKS:-negative_data_rejection,ensure_resource_availability}" \
    --max-examples "${FUZZ_EXAMPLES:-25}" --seed "${FUZZ_SEED:-1}" --no-color "$@"
}

echo "-- the served document, as it is"
fuzz "http://127.0.0.1:$PORT/api/openapi.json" /api/auth/logout "$@"

# Every path also accepts one trailing slash (RealWorld clients send it): the same document
# with a slash appended to each path must hold just as well.
echo "-- the same document with a trailing slash on every path"
curl -fs "http://127.0.0.1:$PORT/api/openapi.json" | python3 -c '
import json, sys
document = json.load(sys.stdin)
document["paths"] = {path + "/": item for path, item in document["paths"].items()}
json.dump(document, sys.stdout)' >"$WORK/openapi-slashed.json"
fuzz "$WORK/openapi-slashed.json" /api/auth/logout/ "$@"
