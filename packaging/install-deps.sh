#!/bin/sh
# install-deps.sh - install the Debian 12 packages that building and testing
# proxyd/proxyctl need, skipping those already present.  Run as root (CI does);
# as another user it prints the apt-get command to run instead.
set -eu

PKGS="build-essential pkg-config clang libclang-rt-14-dev
      libyaml-dev libsqlite3-dev libssl-dev libsystemd-dev libpcre2-dev zlib1g-dev libseccomp-dev libnghttp2-dev
      libbrotli-dev libzstd-dev
      libcurl4-openssl-dev libjansson-dev pebble
      libcmocka-dev python3-pytest python3-requests python3-jsonschema python3-yaml python3-brotli python3-zstandard zstd
      python3-h2 nghttp2-client chromium
      testssl.sh sqlite3 curl openssl cppcheck bc keepalived iproute2 strace"
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
echo "installing:$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
