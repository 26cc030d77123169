#!/bin/sh
# install-deps.sh - install the Debian 12 packages that proxyd/proxyctl need,
# skipping those already present.  Run as root (CI does); as another user it
# prints the apt-get command to run instead.
#
#   install-deps.sh          everything: build, test, lint, fuzz and packaging (make test)
#   install-deps.sh demo     what `make demo` needs: the compiler, the libraries, curl
#
# On a fresh machine apt may be busy (unattended-upgrades, cloud-init): a
# held dpkg or apt lock is waited for, up to PROXYD_DEPS_LOCK_WAIT seconds
# (default 300), with a message, instead of failing.
set -eu

# Building bin/proxyctl, bin/proxyd and the demo backends (cc, libraries).
BUILD="build-essential pkg-config
       libyaml-dev libsqlite3-dev libssl-dev libsystemd-dev libpcre2-dev zlib1g-dev libseccomp-dev libnghttp2-dev
       libbrotli-dev libzstd-dev libcurl4-openssl-dev libjansson-dev"
# The demo's own tools: it waits for proxyd with curl, and its hints use curl.
DEMO="curl"
# make test: clang and the sanitizer runtime, cppcheck, cmocka, the pytest
# suite's Python modules and the tools it drives.
TEST="clang libclang-rt-14-dev cppcheck libcmocka-dev
      pebble python3-pytest python3-requests python3-jsonschema python3-yaml python3-brotli python3-zstandard zstd
      python3-h2 nghttp2-client chromium
      testssl.sh sqlite3 openssl bc keepalived iproute2 strace procps php8.2-fpm"
# make man, make deb and their tests (tests/integration/test_package.py, test_manpages.py;
# systemd: the package depends on its systemd-sysusers, though none runs as PID 1 here).
PACKAGING="scdoc man-db debhelper dpkg-dev lintian bash-completion logrotate systemd"

case "${1:-all}" in
    demo) PKGS="$BUILD $DEMO" ;;
    all) PKGS="$BUILD $DEMO $TEST $PACKAGING" ;;
    *) echo "usage: install-deps.sh [all|demo]" >&2; exit 2 ;;
esac
if [ "${PROXYD_DEPS_EXTRA:-}" != "" ]; then PKGS="$PKGS $PROXYD_DEPS_EXTRA"; fi

missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" != 0 ]; then
    echo "missing packages:$missing" >&2
    echo "run: sudo apt-get install -y$missing" >&2
    exit 1
fi

# apt_locked CMD...: run an apt-get command; while it fails because another
# process holds the dpkg or apt lock, wait and try again, up to the limit.
LOCK_WAIT=${PROXYD_DEPS_LOCK_WAIT:-300}
LOCK_POLL=${PROXYD_DEPS_LOCK_POLL:-5}
err=$(mktemp)
trap 'rm -f "$err"' EXIT
apt_locked() {
    waited=0
    while :; do
        if "$@" 2>"$err"; then
            return 0
        fi
        if ! grep -qi -e 'could not get lock' -e 'unable to acquire the dpkg frontend lock' \
                -e 'unable to lock' "$err"; then
            cat "$err" >&2
            return 1
        fi
        if [ "$waited" -ge "$LOCK_WAIT" ]; then
            cat "$err" >&2
            echo "install-deps.sh: the package manager stayed locked for ${LOCK_WAIT}s; try again when it is done" >&2
            return 1
        fi
        if [ "$waited" = 0 ]; then
            holder=$(grep -o 'held by process [0-9]* *([^)]*)' "$err" | head -n 1 || true)
            echo "install-deps.sh: waiting for the package manager lock${holder:+ ($holder)}, up to ${LOCK_WAIT}s" >&2
        fi
        sleep "$LOCK_POLL"
        waited=$((waited + LOCK_POLL))
    done
}

echo "installing:$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt_locked apt-get update -qq >/dev/null
# shellcheck disable=SC2086
apt_locked apt-get install -y -qq --no-install-recommends $missing >/dev/null
