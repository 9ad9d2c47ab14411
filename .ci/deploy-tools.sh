#!/usr/bin/env bash
# Install the tools the deploy/ tests run and print the exports that point the tests at them.
#
#   eval "$(.ci/deploy-tools.sh)"
#
# - docker-compose: Debian's package (v1.29). `docker-compose config` validates and renders
#   deploy/compose.yaml without a Docker engine.
# - systemd-analyze (package systemd, usually present): `verify` and `security` on the units.
# - checkov: the static scanner for deploy/Dockerfile and deploy/kubernetes, pinned, in its
#   own venv (CHECKOV_VENV, default .ci/.checkov-venv, git-ignored): its dependencies are
#   heavy and must never mix with the project's .venv.
#
# Idempotent: installs only what is missing. Run as root on Debian (CI runs as root).
# Progress goes to stderr; stdout carries only `export ...` lines.
set -euo pipefail
cd "$(dirname "$0")/.."

CHECKOV_VERSION=3.3.30
CHECKOV_VENV=${CHECKOV_VENV:-.ci/.checkov-venv}
PYTHON=${PYTHON:-python3}

log() { printf 'deploy-tools.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

started=$SECONDS

missing=()
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
if [ "${#missing[@]}" -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "${missing[*]} missing and installing needs root"
    log "installing Debian's ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

case "$CHECKOV_VENV" in /*) ;; *) CHECKOV_VENV="$PWD/$CHECKOV_VENV" ;; esac
checkov="$CHECKOV_VENV/bin/checkov"
if [ "$("$checkov" --version 2>/dev/null || true)" != "$CHECKOV_VERSION" ]; then
    log "installing checkov $CHECKOV_VERSION into $CHECKOV_VENV"
    rm -rf "$CHECKOV_VENV"
    "$PYTHON" -m venv "$CHECKOV_VENV"
    "$CHECKOV_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "checkov==$CHECKOV_VERSION" >&2
    [ "$("$checkov" --version)" = "$CHECKOV_VERSION" ] || die "checkov did not install"
fi

log "ready in $((SECONDS - started)) s: $(docker-compose version --short), checkov $CHECKOV_VERSION"
printf 'export GREENHOUSE_DOCKER_COMPOSE=%s\n' "$(command -v docker-compose)"
printf 'export GREENHOUSE_CHECKOV=%s\n' "$checkov"
printf 'export GREENHOUSE_SYSTEMD_ANALYZE=%s\n' "$(command -v systemd-analyze)"
