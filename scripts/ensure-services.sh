#!/usr/bin/env bash
# Makes sure the local services Stoa needs are running:
#   PostgreSQL on 127.0.0.1:5432 (required) and the redis-server binary (tests start
#   their own instances; `make run` uses one on 127.0.0.1:6379 if present).
# Starts what is installed but stopped, installs what is missing when it can (Debian,
# as root), and otherwise stops with a message that says what to do.
# --with-test-tools: also Prometheus/promtool, Chromium and PgBouncer (used by `make test`).
set -euo pipefail

PGHOST=${PGHOST:-127.0.0.1}
PGPORT=${PGPORT:-5432}

say() { printf '[ensure-services] %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

can_install() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }

apt_install() {
  say "installing $* with apt-get"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; }
}

pg_up() {
  if command -v pg_isready >/dev/null 2>&1; then
    pg_isready -q -h "$PGHOST" -p "$PGPORT"
  else
    (exec 3<>"/dev/tcp/$PGHOST/$PGPORT") 2>/dev/null
  fi
}

ensure_postgres() {
  pg_up && { say "PostgreSQL is up on $PGHOST:$PGPORT"; return; }
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    can_install || die "PostgreSQL is not running on $PGHOST:$PGPORT and cannot be installed here (need root and apt-get). Install PostgreSQL ≥ 13, allow 'postgres' to connect from 127.0.0.1 without a password (trust), or set DATABASE_URL."
    apt_install postgresql
  fi
  local version
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1)
  [ -n "$version" ] || die "PostgreSQL is installed but no cluster exists (see pg_createcluster)."
  say "starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null || pg_ctlcluster "$version" main start
  for _ in $(seq 1 30); do pg_up && break; sleep 0.5; done
  pg_up || die "PostgreSQL did not come up on $PGHOST:$PGPORT"
  # Local development trusts local connections, as the test suite expects.
  if ! psql -h "$PGHOST" -p "$PGPORT" -U postgres -c 'select 1' >/dev/null 2>&1; then
    local hba="/etc/postgresql/$version/main/pg_hba.conf"
    if [ -w "$hba" ]; then
      say "allowing trusted local connections in $hba (development machine)"
      sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
      pg_ctlcluster --skip-systemctl-redirect "$version" main reload 2>/dev/null || pg_ctlcluster "$version" main reload
    else
      die "cannot connect as postgres to $PGHOST:$PGPORT; set DATABASE_URL to a superuser URL"
    fi
  fi
  say "PostgreSQL is up on $PGHOST:$PGPORT"
}

ensure_redis() {
  if ! command -v redis-server >/dev/null 2>&1; then
    if can_install; then
      apt_install redis-server
    else
      say "WARNING: redis-server is not installed; Redis tests will fail. Install the Debian package redis-server."
      return
    fi
  fi
  if [ "${STOA_START_REDIS:-0}" = 1 ] && ! redis-cli -p 6379 ping >/dev/null 2>&1; then
    say "starting redis-server on 127.0.0.1:6379"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
  fi
}

# Test tools: Prometheus and promtool (the SRE assets' tests), Chromium (the docs page
# test) and shellcheck (CI) from Debian, playwright-core, axe-core, the HTTP Observatory
# scanner and node-oidc-provider (the sign-in tests' OpenID Provider) from npm. Without
# them those tests say SKIP, unless STOA_REQUIRE_TOOLS=1 (CI).
ensure_tools() {
  local missing=()
  command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  # The data-tier tests start their own PgBouncer in front of PostgreSQL.
  [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
  # CI checks the shell scripts (the kind suite included) with it.
  command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
  local browser
  browser="$(cd "$(dirname "$0")/../tests/browser" && pwd)"
  # Installed again whenever the lock file changed since the last install (a stamp of
  # its hash), so a checkout that gains a package (axe-core, say) gets it.
  local lock stamp
  lock=$(sha256sum "$browser/package-lock.json" | cut -d' ' -f1)
  stamp="$browser/node_modules/.stoa-installed-lock"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$lock" ]; then
    if command -v npm >/dev/null 2>&1; then
      say "installing playwright-core, axe-core, the HTTP Observatory scanner and the test OpenID Provider (npm ci in tests/browser)"
      # No install scripts: the scanner's would download lists from outside the registry.
      npm ci --prefix "$browser" --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null
      echo "$lock" >"$stamp"
    else
      say "WARNING: npm is not installed; the browser and identity provider tests will be skipped."
    fi
  fi
  [ ${#missing[@]} -eq 0 ] && return
  if can_install; then
    apt_install --no-install-recommends "${missing[@]}"
    # The packages' own Prometheus and PgBouncer services are not wanted (they would
    # hold ports 9090 and 6432).
    pkill -x prometheus 2>/dev/null || true
    if [[ " ${missing[*]} " == *" pgbouncer "* ]]; then pkill -x pgbouncer 2>/dev/null || true; fi
  else
    say "WARNING: ${missing[*]} not installed (Debian packages); the monitoring and docs page tests will be skipped."
  fi
}

ensure_postgres
ensure_redis
if [ "${1:-}" = --with-test-tools ]; then ensure_tools; fi
