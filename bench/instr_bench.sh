#!/bin/bash
# instr_bench.sh - user-space instructions per proxied request of proxyd's
# worker, counted by callgrind: exact and repeatable whatever else the machine
# does, unlike req/s on a 2-core machine shared with the load generator.
#
# usage: bench/instr_bench.sh [PROXYD...]
#   Each binary (default bin/proxyd) serves one site proxying to
#   build/bench/origin with 1 worker under `valgrind --tool=callgrind`;
#   `h2load --h1 -c50` sends N1 then, on a fresh start, N2 keep-alive GETs;
#   (Ir(N2) - Ir(N1)) / (N2 - N1) cancels start-up and shutdown.
#   N1=10000 N2=50000 unless set in the environment.  Each binary is counted
#   on /nolimit/ (a plain proxied route) and on /limited/ (the same, with a
#   path as long, behind a rate limit keyed by the client address at
#   1000000 r/s, burst 1000, nodelay: every request counted, none refused),
#   so the difference is what the limit phase costs.
# Output: a Markdown table on stdout; progress on stderr.  Every process
# started here is stopped by PID on exit.  Port 18090 (proxyd), 18091 (origin).
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
N1=${N1:-10000}
N2=${N2:-50000}
PROXYCTL=${PROXYCTL:-$ROOT/bin/proxyctl}
[ $# -gt 0 ] || set -- "$ROOT/bin/proxyd"
TMP=$(mktemp -d /tmp/instr-bench-XXXXXX)
PIDS=""
cleanup() { for p in $PIDS; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT

"$ROOT/build/bench/origin" 18091 >/dev/null 2>&1 &
PIDS="$PIDS $!"

mkdir -p "$TMP/store"
cat >"$TMP/store/proxy.yaml" <<EOF
listen: {http: ["127.0.0.1:18090"], https: []}
workers: 1
$([ "$(id -u)" = 0 ] && echo "user: root")
admin: {socket: $TMP/store/admin.sock}
logs: {access: "off"}
rate_limit_zones: {api: {rate: 1000000r/s, key: client_ip}}
EOF
cat >"$TMP/store/bench.yaml" <<EOF
site: bench
default: true
tls: {certificate: none}
upstreams:
  origin: {keepalive: 64, servers: [{address: "127.0.0.1:18091"}]}
routes:
  - match: {path_prefix: /limited/}
    upstream: origin
    rate_limit: {zone: api, burst: 1000, nodelay: true}
  - match: {path_prefix: /}
    upstream: origin
EOF
"$PROXYCTL" --db "$TMP/store/store.db" init --global "$TMP/store/proxy.yaml" >/dev/null
"$PROXYCTL" --db "$TMP/store/store.db" add-site "$TMP/store/bench.yaml" >/dev/null

# worker_ir BINARY N PATH: Ir of the worker process serving N requests for PATH.
worker_ir() {
    local out=$TMP/cg.$$.$2
    rm -f "$out".*
    valgrind --tool=callgrind --trace-children=yes --callgrind-out-file="$out.%p" \
        "$1" --db "$TMP/store/store.db" --foreground >/dev/null 2>"$TMP/valgrind.log" &
    local master=$!
    for _ in $(seq 1 100); do
        curl -s -o /dev/null --max-time 1 http://127.0.0.1:18090/ && break
        sleep 0.2
    done
    h2load --h1 -c50 -n "$2" "http://127.0.0.1:18090$3" >"$TMP/h2load.log" 2>&1
    grep -q "succeeded, 0 failed" "$TMP/h2load.log" || grep "requests:" "$TMP/h2load.log" >&2
    kill -TERM "$master"
    wait "$master" 2>/dev/null || true
    # The worker is the file with the most instructions (the master idles).
    for f in "$out".*; do awk '/^summary:/ { print $2 }' "$f"; done | sort -n | tail -1
}

echo "| binary | route | Ir per request ($N1 → $N2 requests) |"
echo "| --- | --- | ---: |"
for bin in "$@"; do
    for path in /nolimit/ /limited/; do
        echo "instr_bench: $bin $path" >&2
        a=$(worker_ir "$bin" "$N1" "$path")
        b=$(worker_ir "$bin" "$N2" "$path")
        echo "| $bin | $path | $(( (b - a) / (N2 - N1) )) |"
    done
done
