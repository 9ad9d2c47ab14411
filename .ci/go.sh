#!/usr/bin/env bash
# Install Debian's Go toolchain and golang.org/x/mod sources for the audit interop
# test (tests/interop/audit: Go's sumdb/note and sumdb/tlog verify an export).
#
#   .ci/go.sh        # idempotent; installs golang-go + golang-golang-x-mod-dev if missing
#
# The test builds offline in GOPATH mode against /usr/share/gocode (no module
# downloads). Run as root on Debian. Progress goes to stderr; stdout stays empty.
set -euo pipefail

GOPATH_DEBIAN=/usr/share/gocode

log() { printf 'go.sh: %s\n' "$*" >&2; }

if command -v go >/dev/null 2>&1 && [ -d "$GOPATH_DEBIAN/src/golang.org/x/mod/sumdb/note" ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    log "error: golang-go / golang-golang-x-mod-dev are missing and installing them needs root"
    exit 1
fi
log "installing Debian's golang-go and golang-golang-x-mod-dev"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends golang-go golang-golang-x-mod-dev >&2
log "ready: $(go version)"
