#!/bin/bash
# ratelimit_bench.sh - what a rate limit costs: server CPU per request and
# requests/s on a rate-limited route beside an unlimited one, and on a route
# where nearly every request is refused, proxyd against nginx (limit_req with
# the same zone) in the same run, with 1 and 2 workers.
#
# usage: bench/ratelimit_bench.sh [-r ROUNDS] [-d SECONDS] [-c CONNS]
#   -r  rounds (default 3); each round runs every (workers, proxy, route)
#       cell once, interleaved; the table shows the median
#   -d  seconds per wrk run (default 10)
#   -c  wrk connections (default 50)
#
# Routes (both proxies, keep-alive to one bench/origin with a 100-byte body):
#   /free/     no limit
#   /limited/  a zone keyed by the client address at 1000000 r/s, burst 1000,
#              nodelay: every request is counted, none is refused (wrk comes
#              from 127.0.0.1: one key that every connection and worker hits)
#   /refused/  a zone at 1 r/s: all but about one request a second get 429
#              (nginx: limit_req_status 429), nothing reaches the origin
# Load: `wrk -t1 -cC -dDs --latency`, keep-alive, after a 1 s warm-up.  The
# decisive figure on this 2-CPU machine is the server CPU per request (user +
# system of the proxy's processes, bench/lib.sh), since wrk shares the CPUs.
#
# Ports: proxyd 18381, nginx 18382, origin 18391 (127.0.0.1; the script stops
# if one is taken).  PROXYD / PROXYCTL name other builds (default bin/).
# Output: Markdown on stdout; progress on stderr.  Every process started here
# is stopped by its PID on exit.
set -eu

ROUNDS=3
DURATION=10
CONNS=50
while getopts r:d:c:h opt; do
    case $opt in
    r) ROUNDS=$OPTARG ;;
    d) DURATION=$OPTARG ;;
    c) CONNS=$OPTARG ;;
    *) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/build/bench
PROXYD=${PROXYD:-$ROOT/bin/proxyd}
PROXYCTL=${PROXYCTL:-$ROOT/bin/proxyctl}
PROXYD_PORT=18381
NGINX_PORT=18382
ORIGIN_PORT=18391
ROUTES="free limited refused"
WORKER_COUNTS="1 2"
TMP=$(mktemp -d /tmp/rl-bench-XXXXXX)
chmod 755 "$TMP"                # nginx workers run as nobody when started as root
RESULTS=$TMP/results.txt        # workers proxy route round rps p50 p99 err non2xx cpu user sys rest
COMMANDS=$TMP/commands.txt
NOTES=$TMP/notes.txt
: >"$RESULTS"
: >"$COMMANDS"
: >"$NOTES"
STARTED=""

# log, note, record, start_bg, stop_pid, cleanup (and the traps), port_taken,
# wait_http, measure_wrk, parse_wrk, median, fmt_*: bench/lib.sh
. "$ROOT/bench/lib.sh"

write_nginx_conf() {            # DIR WORKERS
    mkdir -p "$1"
    {
        nginx_head "$1" $2
        cat <<EOF
    limit_req_zone \$binary_remote_addr zone=api:10m rate=1000000r/s;
    limit_req_zone \$binary_remote_addr zone=slow:10m rate=1r/s;
    limit_req_status 429;
    limit_req_log_level warn;
    upstream app {
        server 127.0.0.1:$ORIGIN_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        location / { return 200 "ok"; }
        location /free/ { proxy_pass http://app; }
        location /limited/ { limit_req zone=api burst=1000 nodelay; proxy_pass http://app; }
        location /refused/ { limit_req zone=slow nodelay; proxy_pass http://app; }
    }
}
EOF
    } >"$1/nginx.conf"
}

prepare_proxyd() {              # DIR WORKERS
    local d=$1
    mkdir -p "$d"
    cat >"$d/proxy.yaml" <<EOF
listen: {http: ["127.0.0.1:$PROXYD_PORT"], https: []}
workers: $2
$ROOT_USER_LINE
admin: {socket: $d/admin.sock}
logs: {access: "off"}
rate_limit_zones:
  api: {rate: 1000000r/s, key: client_ip}
  slow: {rate: 1r/s, key: client_ip}
EOF
    cat >"$d/bench.yaml" <<EOF
site: bench
default: true
hosts: [127.0.0.1]
security_headers: none
upstreams:
  app: {keepalive: 64, servers: [{address: "127.0.0.1:$ORIGIN_PORT"}]}
routes:
  - match: {path_prefix: /free/}
    upstream: app
  - match: {path_prefix: /limited/}
    upstream: app
    rate_limit: {zone: api, burst: 1000, nodelay: true}
  - match: {path_prefix: /refused/}
    upstream: app
    rate_limit: {zone: slow, nodelay: true}
  - match: {path_exact: /}
    return: {status: 200, body: "ok"}
EOF
    proxyd_store "$d"
}

run_cell() {                    # NAME WORKERS ROUND
    local name=$1 w=$2 round=$3 route out cpu
    log "round $round: $name, $w worker(s)"
    if ! start_proxy "$name" "$w" "r$round"; then
        for route in $ROUTES; do echo "$w $name $route $round - - - - - - - - -" >>"$RESULTS"; done
        return 0
    fi
    for route in $ROUTES; do
        local url="http://127.0.0.1:$TARGET_PORT/$route/x"
        wrk -t1 "-c$CONNS" -d1s "$url" >/dev/null 2>&1 || true
        local cmd=(wrk -t1 "-c$CONNS" "-d${DURATION}s" --latency "$url")
        record "${cmd[@]}"
        out=$TMP/wrk-$name-$w-$route-$round.txt
        cpu=$(measure_wrk "$out" "${cmd[@]}")
        echo "$w $name $route $round $(parse_wrk "$out") $cpu" >>"$RESULTS"
        log "  /$route/: $(parse_wrk "$out") cpu $cpu"
        sleep 1 # the refused route's bucket drains before the next run
    done
    stop_pid "$TARGET_PID"
}

table() {
    local w n r
    echo "| workers | route | proxyd req/s | proxyd CPU µs/req | proxyd vs /free/ | nginx req/s | nginx CPU µs/req | nginx vs /free/ | proxyd / nginx CPU |"
    echo "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for w in $WORKER_COUNTS; do
        for r in $ROUTES; do
            local pc nc
            pc=$(cell "$w" proxyd "$r" 10)
            nc=$(cell "$w" nginx "$r" 10)
            echo "| $w | /$r/ | $(fmt_rps "$(cell "$w" proxyd "$r" 5)") | $pc | $(ratio "$pc" "$(cell "$w" proxyd free 10)" 3) | $(fmt_rps "$(cell "$w" nginx "$r" 5)") | $nc | $(ratio "$nc" "$(cell "$w" nginx free 10)" 3) | $(ratio "$pc" "$nc" 3) |"
        done
    done
}

report() {
    echo "## Rate-limit benchmark"
    echo
    machine_line
    echo "$(nginx_version), $(wrk_version), $(proxyd_at)."
    echo "Median of $ROUNDS round(s); wrk -t1 -c$CONNS -d${DURATION}s per cell, keep-alive; origin bench/origin (100-byte body)."
    echo "CPU µs/req: user + system of the proxy's processes per request; \"vs /free/\": that over the unlimited route's, same proxy and run."
    echo
    table
    echo
    awk '$5 != "-" && $3 != "refused" && ($8 > 0 || $9 > 0) {
        printf "- round %s, %s %s workers /%s/: %d socket errors, %d non-2xx\n", $4, $2, $1, $3, $8, $9 }' "$RESULTS" >>"$NOTES"
    notes_block
    commands_block
}

main() {
    local r w p
    ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
    for p in $PROXYD_PORT $NGINX_PORT $ORIGIN_PORT; do
        if port_taken "$p"; then log "ratelimit_bench: port $p is in use"; exit 1; fi
    done
    for p in "$PROXYD" "$PROXYCTL"; do [ -x "$p" ] || { log "ratelimit_bench: $p is missing (make all)"; exit 1; }; done
    command -v nginx >/dev/null && command -v wrk >/dev/null || { log "ratelimit_bench: needs nginx and wrk"; exit 1; }
    mkdir -p "$BIN"
    if [ ! -x "$BIN/origin" ] || [ "$ROOT/bench/origin.c" -nt "$BIN/origin" ]; then
        cc -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -Werror -o "$BIN/origin" "$ROOT/bench/origin.c"
    fi
    start_bg "$TMP/origin.log" "$BIN/origin" "$ORIGIN_PORT" --body 100
    ORIGIN_PID=$LAST_PID
    wait_http "$ORIGIN_PORT" "$ORIGIN_PID" || { log "origin did not start"; exit 1; }
    for r in $(seq 1 "$ROUNDS"); do
        for w in $WORKER_COUNTS; do
            run_cell proxyd "$w" "$r"
            run_cell nginx "$w" "$r"
        done
    done
    report
}

main
