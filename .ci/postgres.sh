#!/usr/bin/env bash
# Start Debian's packaged PostgreSQL for the state tests and print the URL to use.
#
#   eval "$(.ci/postgres.sh)"     # install if missing, start, create role + db, export URL
#   .ci/postgres.sh stop          # stop the cluster again
#
# For Debian, run as root (CI runs as root; Debian's initdb refuses root, so the
# packaged cluster is used: pg_ctlcluster runs the server as the postgres user).
# Idempotent: re-running keeps the database and sets a fresh random password.
# Progress goes to stderr; stdout carries only the `export ...` line.
set -euo pipefail

ROLE=greenhouse
DB=greenhouse_test
WAIT_S=30

log() { printf 'postgres.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

as_postgres() {
    # Run a command as the postgres OS user from a directory it can read.
    (cd / && if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres -- "$@"; fi)
}

install_if_missing() {
    if command -v pg_ctlcluster >/dev/null 2>&1 && command -v psql >/dev/null 2>&1; then
        return
    fi
    [ "$(id -u)" = 0 ] || die "PostgreSQL is not installed and installing it needs root"
    log "installing Debian's postgresql package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends postgresql >&2
}

# Prints "<version> <cluster> <port> <status>" of the first cluster, creating one if none.
cluster() {
    local line
    line=$(pg_lsclusters --no-header 2>/dev/null | head -n 1 || true)
    if [ -z "$line" ]; then
        local version
        version=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)
        [ -n "$version" ] || die "no PostgreSQL server binaries under /usr/lib/postgresql"
        log "creating cluster $version/main"
        pg_createcluster "$version" main >&2
        line=$(pg_lsclusters --no-header | head -n 1)
    fi
    awk '{print $1, $2, $3, $4}' <<<"$line"
}

start() {
    install_if_missing
    local version name port status
    read -r version name port status < <(cluster)
    if [ "$status" != online ]; then
        log "starting cluster $version/$name on port $port"
        pg_ctlcluster "$version" "$name" start >&2
    fi
    local waited=0
    until pg_isready -q -h 127.0.0.1 -p "$port"; do
        waited=$((waited + 1))
        [ "$waited" -le "$WAIT_S" ] || die "PostgreSQL not ready on 127.0.0.1:$port after ${WAIT_S}s"
        sleep 1
    done

    local password
    password=$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')
    as_postgres psql -q -v ON_ERROR_STOP=1 -p "$port" -d postgres >&2 <<SQL
DO \$\$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$ROLE') THEN
        CREATE ROLE $ROLE LOGIN;
    END IF;
END \$\$;
ALTER ROLE $ROLE WITH LOGIN PASSWORD '$password';
SQL
    if ! as_postgres psql -tA -p "$port" -d postgres \
        -c "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1; then
        log "creating database $DB"
        as_postgres createdb -p "$port" -O "$ROLE" "$DB" >&2
    fi
    log "ready: database $DB on 127.0.0.1:$port"
    printf 'export GREENHOUSE_TEST_POSTGRES_URL=postgresql+psycopg://%s:%s@127.0.0.1:%s/%s\n' \
        "$ROLE" "$password" "$port" "$DB"
}

stop() {
    local version name port status
    read -r version name port status < <(cluster)
    if [ "$status" = online ]; then
        log "stopping cluster $version/$name"
        pg_ctlcluster "$version" "$name" stop >&2
    fi
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    *) die "usage: $0 [start|stop]" ;;
esac
