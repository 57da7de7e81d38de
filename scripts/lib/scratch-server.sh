# shellcheck shell=bash
# Sourced by the scripts that start a stoa-api of their own (bench, start-up order,
# console timings).
#
# scratch_server_env BIN WORK DATABASE_URL PORT ADMIN_PORT: fresh key sets under WORK,
# made by BIN, and the settings that point a server at them, at the database and at the
# two listeners on 127.0.0.1. It stops at once when told to (no drain delay).
scratch_server_env() {
  local bin=$1 work=$2 database_url=$3 port=$4 admin_port=$5
  "$bin" keys generate --dir "$work/keys" >/dev/null
  "$bin" mfa-keys generate --dir "$work/mfa-keys" >/dev/null
  export STOA_DATABASE_URL="$database_url"
  export STOA_JWT_KEYS_DIR="$work/keys"
  export STOA_MFA_KEYS_DIR="$work/mfa-keys"
  export STOA_LISTEN_ADDR="127.0.0.1:$port"
  export STOA_ADMIN_ADDR="127.0.0.1:$admin_port"
  export STOA_SHUTDOWN_DELAY=0s
}

# lift_rate_limits: every rate limit out of a load generator's way (one client address
# sends everything), unless already set. The limiters still run, so their cost counts.
lift_rate_limits() {
  export STOA_RATE_LIMIT_PER_IP=${STOA_RATE_LIMIT_PER_IP:-1000000000/1m}
  export STOA_RATE_LIMIT_PER_USER=${STOA_RATE_LIMIT_PER_USER:-1000000000/1m}
  export STOA_RATE_LIMIT_AUTH=${STOA_RATE_LIMIT_AUTH:-1000000000/1m}
  export STOA_RATE_LIMIT_LOGIN_PER_ACCOUNT=${STOA_RATE_LIMIT_LOGIN_PER_ACCOUNT:-1000000000/1m}
  export STOA_RATE_LIMIT_LOGIN_ACCOUNT_CEILING=${STOA_RATE_LIMIT_LOGIN_ACCOUNT_CEILING:-1000000000/1m}
}
