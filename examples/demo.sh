#!/bin/sh
# demo.sh - `make demo`: compile examples/ into a store under ./var/demo,
# start demo backends (bench/origin --echo, which answers with what it
# received) on the example upstream ports 9001-9010 and proxyd on
# 127.0.0.1:8080, print things to try, and stop everything it started on
# Ctrl-C, on `kill` (SIGTERM, which make forwards too) and on SIGHUP (the
# terminal closed).  DEMO_SECONDS=N stops it after N seconds.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
P="$ROOT/bin/proxyctl"
DB="$ROOT/var/demo/store.db"
PIDS=""
# Stop what was started, by PID: SIGTERM (proxyd drains, with nothing in
# flight at once), then `wait` reaps each one; whatever is still there after
# 5 seconds gets SIGKILL from a watchdog.
cleanup() {
    trap - EXIT INT TERM HUP
    [ -n "$PIDS" ] || return 0
    # shellcheck disable=SC2086
    kill $PIDS 2>/dev/null || true
    # shellcheck disable=SC2086
    (sleep 5; kill -9 $PIDS 2>/dev/null) >/dev/null 2>&1 &
    watchdog=$!
    for p in $PIDS; do wait "$p" 2>/dev/null || true; done
    kill "$watchdog" 2>/dev/null || true
    echo "demo stopped"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

rm -rf "$ROOT/var/demo" && mkdir -p "$ROOT/var/demo/run" "$ROOT/var/demo/log"
"$P" --db "$DB" init >/dev/null
if [ "$(id -u)" = 0 ] && ! getent passwd proxyd >/dev/null; then
    # proxyd refuses to run its workers as root unless proxy.yaml says so; the
    # demo, run as root on a machine without a 'proxyd' account, says so.
    { cat "$ROOT/examples/proxy.yaml"; echo "user: root"; } >"$ROOT/var/demo/proxy.yaml"
    "$P" --db "$DB" apply --global "$ROOT/var/demo/proxy.yaml" "$ROOT/examples"
else
    "$P" --db "$DB" apply "$ROOT/examples"
fi
for port in 9001 9002 9003 9004 9005 9006 9007 9008 9009 9010; do
    "$ROOT/build/bench/origin" "$port" --echo >/dev/null 2>&1 &
    PIDS="$PIDS $!"
done
"$ROOT/bin/proxyd" --db "$DB" --foreground 2>"$ROOT/var/demo/log/proxyd.stderr" &
PIDS="$PIDS $!"
i=0
until curl -s -o /dev/null http://127.0.0.1:8080/ 2>/dev/null; do
    i=$((i + 1))
    [ $i -lt 50 ] || { echo "proxyd did not start:"; cat "$ROOT/var/demo/log/proxyd.stderr"; exit 1; }
    sleep 0.1
done
cat <<MSG

proxyd is serving the examples on http://127.0.0.1:8080 (backends echo what they receive).
Try (from any directory):
  curl -s http://127.0.0.1:8080/ -H 'Host: www.example.com'                     # basic proxy (default site)
  curl -s 'http://127.0.0.1:8080/api/users?x=1' -H 'Host: routing.example.com'  # path routing, /api/ stripped
  curl -si http://127.0.0.1:8080/backup.sql -H 'Host: blog.example.com'         # exploit path blocked: 404
  curl -si http://127.0.0.1:8080/ -H 'Host: secure.example.com'                 # redirect_http: 301 to https
  curl -si --compressed http://127.0.0.1:8080/ -H 'Host: compressed.example.com'  # compression (br, zstd, gzip)
  curl -si http://127.0.0.1:8080/articles/1 -H 'Host: news.example.com'         # cache: X-Cache-Status MISS, then HIT
  $P --db $DB cache stats     # cache zones: entries, size, hit ratio
  $P --db $DB route-test http://routing.example.com/api/users    # which route, upstream and policies
  curl -s --unix-socket $ROOT/var/demo/run/admin.sock http://x/status               # admin: status JSON
  curl -s --unix-socket $ROOT/var/demo/run/admin.sock http://x/metrics | head -20  # admin: Prometheus metrics
  tail -f $ROOT/var/demo/log/access.log                                             # access log
Press Ctrl-C (or kill $$) to stop.
MSG
# A shell runs its traps only between commands: sleep in the background and
# `wait`, which a signal interrupts, so SIGTERM stops the demo at once.
sleep "${DEMO_SECONDS:-infinity}" &
PIDS="$PIDS $!"
wait "$!" || true
