#!/bin/bash
# lb_bench.sh - load balancing through a pool of 4 origins: requests/s and
# latency for each algorithm, proxyd against nginx in the same run.
#
# usage: bench/lb_bench.sh [-r ROUNDS] [-d SECONDS] [-c CONNS] [-w WORKERS]
#   -r  rounds (default 3). Each round runs every (proxy, algorithm) pair once,
#       interleaved, so slow drift on the machine spreads over all of them;
#       the table shows the median.
#   -d  seconds per wrk run (default 10)
#   -c  wrk connections (default 50)
#   -w  proxy workers (default 1; nginx worker_processes, proxyd workers)
#
# Pool: 4 build/bench/origin processes on 127.0.0.1:18291-18294, 100-byte
# bodies, each proxy keeping up to 64 idle upstream connections per worker.
# Algorithms: proxyd round_robin, least_conn, ip_hash, random_two; nginx
# round robin (default), least_conn, ip_hash, and `random two least_conn`
# (its power of two choices).  Load: `wrk -t1 -cC -dDs --latency` with
# keep-alive, after a 1 s warm-up.  wrk connects from 127.0.0.1 only, so
# ip_hash sends every request to one server (for both proxies): that row
# measures the cost of hashing, not the spread.
# proxyd's spread: requests per server from its /status after each run.
#
# Ports: proxyd 18281, nginx 18282, origins 18291-18294 (all 127.0.0.1; the
# script stops if one is taken). PROXYD / PROXYCTL name other builds (default
# bin/proxyd, bin/proxyctl).  Output: Markdown on stdout (the table, notes,
# the exact commands, the configurations); progress on stderr.  Every process
# started here is stopped by its PID on exit.
set -eu

ROUNDS=3
DURATION=10
CONNS=50
WORKERS=1
while getopts r:d:c:w:h opt; do
    case $opt in
    r) ROUNDS=$OPTARG ;;
    d) DURATION=$OPTARG ;;
    c) CONNS=$OPTARG ;;
    w) WORKERS=$OPTARG ;;
    *) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/build/bench
PROXYD=${PROXYD:-$ROOT/bin/proxyd}
PROXYCTL=${PROXYCTL:-$ROOT/bin/proxyctl}
PROXYD_PORT=18281
NGINX_PORT=18282
ORIGIN_PORTS="18291 18292 18293 18294"
ALGOS="round_robin least_conn ip_hash random_two"
TMP=$(mktemp -d /tmp/lb-bench-XXXXXX)
chmod 755 "$TMP"                # nginx workers run as nobody when started as root
RESULTS=$TMP/results.txt        # proxy algo round rps p50_us p99_us errors non2xx
SPREAD=$TMP/spread.txt          # algo round n1 n2 n3 n4 (proxyd requests per server)
COMMANDS=$TMP/commands.txt
NOTES=$TMP/notes.txt
: >"$RESULTS"
: >"$SPREAD"
: >"$COMMANDS"
: >"$NOTES"
STARTED=""                      # PIDs of the processes this script started

# log, note, record, start_bg, stop_pid, cleanup (and the traps), port_taken,
# wait_http, cpu_ticks, cpu_us_per: bench/lib.sh
. "$ROOT/bench/lib.sh"

# ---- proxies ---------------------------------------------------------------

nginx_balance() {
    case $1 in
    round_robin) echo "" ;;
    least_conn) echo "least_conn;" ;;
    ip_hash) echo "ip_hash;" ;;
    random_two) echo "random two least_conn;" ;;
    esac
}

write_nginx_conf() {            # DIR ALGO
    local servers="" p
    for p in $ORIGIN_PORTS; do servers="$servers        server 127.0.0.1:$p;
"; done
    mkdir -p "$1"
    {
        nginx_head "$1" $WORKERS
        cat <<EOF
    upstream pool {
        $(nginx_balance "$2")
${servers}        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://pool;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    } >"$1/nginx.conf"
}

prepare_proxyd() {              # DIR ALGO
    local d=$1 p
    mkdir -p "$d"
    cat >"$d/proxy.yaml" <<EOF
listen: {http: ["127.0.0.1:$PROXYD_PORT"], https: []}
workers: $WORKERS
$ROOT_USER_LINE
admin: {socket: $d/admin.sock}
logs: {access: "off"}
EOF
    {
        echo "site: bench"
        echo "default: true"
        echo "hosts: [127.0.0.1]"
        echo "tls: {certificate: none}"
        echo "upstreams:"
        echo "  pool:"
        echo "    balance: $2"
        echo "    keepalive: 64"
        echo "    servers:"
        for p in $ORIGIN_PORTS; do echo "      - address: \"127.0.0.1:$p\""; done
        echo "routes:"
        echo "  - match: {path_prefix: /}"
        echo "    upstream: pool"
    } >"$d/bench.yaml"
    proxyd_store "$d"
}

# start_proxy NAME ALGO: TARGET_PID and TARGET_PORT; 1 when it did not come up.
start_proxy() {
    local name=$1 algo=$2 d=$TMP/$1-$2
    case $name in
    nginx)
        write_nginx_conf "$d" "$algo"
        start_bg "$d/out.log" nginx -p "$d" -e "$d/error.log" -c "$d/nginx.conf" -g 'daemon off;'
        TARGET_PORT=$NGINX_PORT
        ;;
    proxyd)
        if ! prepare_proxyd "$d" "$algo"; then
            log "proxyctl could not build the store: $(tail -n 3 "$d/proxyctl.log")"
            return 1
        fi
        start_bg "$d/out.log" "$PROXYD" --db "$d/store.db" --foreground
        TARGET_PORT=$PROXYD_PORT
        ;;
    esac
    TARGET_PID=$LAST_PID
    if ! wait_http "$TARGET_PORT" "$TARGET_PID"; then
        log "$name ($algo) did not serve within 5 s: $(tail -n 3 "$d/out.log" 2>/dev/null)"
        note "$name $algo: did not start ($(tail -n 1 "$d/out.log" 2>/dev/null))"
        stop_pid "$TARGET_PID"
        return 1
    fi
}

# proxyd's requests per server (pool order) from its /status.
proxyd_spread() {               # DIR
    curl -s --max-time 2 --unix-socket "$1/admin.sock" http://proxyd/status |
        python3 -c 'import json, sys
st = json.load(sys.stdin)
print(" ".join(str(s["requests"]) for u in st["upstreams"] for s in u["servers"]))' 2>/dev/null || echo "- - - -"
}

# ---- load ----------------------------------------------------------------

run_pair() {                    # NAME ALGO ROUND
    local name=$1 algo=$2 round=$3 out fields
    log "round $round: $name $algo"
    if ! start_proxy "$name" "$algo"; then
        echo "$name $algo $round - - - - -" >>"$RESULTS"
        return 0
    fi
    local warm=(wrk -t1 "-c$CONNS" -d1s "http://127.0.0.1:$TARGET_PORT/")
    record "${warm[@]}"
    "${warm[@]}" >/dev/null 2>&1 || true
    local cmd=(wrk -t1 "-c$CONNS" "-d${DURATION}s" --latency "http://127.0.0.1:$TARGET_PORT/")
    record "${cmd[@]}"
    out=$TMP/wrk-$name-$algo-$round.txt
    "${cmd[@]}" >"$out" 2>&1 || true
    fields=$(parse_wrk "$out")
    echo "$name $algo $round $fields" >>"$RESULTS"
    [ "$name" = proxyd ] && echo "$algo $round $(proxyd_spread "$TMP/$name-$algo")" >>"$SPREAD"
    log "  $fields"
    stop_pid "$TARGET_PID"
}

# ---- report --------------------------------------------------------------

cell() {                        # NAME ALGO COLUMN
    awk -v n="$1" -v a="$2" -v c="$3" '$1 == n && $2 == a && $c != "-" { print $c }' "$RESULTS" | median
}

# Requests per server over all rounds, as percentages.
spread() {                      # ALGO
    awk -v a="$1" '$1 == a && $3 != "-" { for (i = 3; i <= 6; i++) n[i] += $i }
        END {
            t = n[3] + n[4] + n[5] + n[6]
            if (t == 0) { print "n/a"; exit }
            printf "%.0f / %.0f / %.0f / %.0f %%\n", 100 * n[3] / t, 100 * n[4] / t, 100 * n[5] / t, 100 * n[6] / t
        }' "$SPREAD"
}

nginx_name() {
    case $1 in
    round_robin) echo "round robin" ;; least_conn) echo least_conn ;; ip_hash) echo ip_hash ;;
    random_two) echo "random two least_conn" ;;
    esac
}

load_table() {
    local a
    echo "| algorithm | proxyd req/s | proxyd p50 | proxyd p99 | proxyd spread over the 4 servers | nginx (same algorithm) | nginx req/s | nginx p50 | nginx p99 |"
    echo "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |"
    for a in $ALGOS; do
        echo "| $a | $(fmt_rps "$(cell proxyd "$a" 4)") | $(fmt_ms "$(cell proxyd "$a" 5)") | $(fmt_ms "$(cell proxyd "$a" 6)") | $(spread "$a") | $(nginx_name "$a") | $(fmt_rps "$(cell nginx "$a" 4)") | $(fmt_ms "$(cell nginx "$a" 5)") | $(fmt_ms "$(cell nginx "$a" 6)") |"
    done
}

wrk_notes() {
    awk '$7 != "-" && ($7 > 0 || $8 > 0) {
        printf "- round %s, %s %s: %d socket errors, %d non-2xx/3xx responses\n", $3, $1, $2, $7, $8
    }' "$RESULTS" >>"$NOTES"
}

report() {
    echo "## Load-balancing benchmark"
    echo
    machine_line
    echo "$(nginx_version), $(wrk_version), $(proxyd_at)."
    echo "Median of $ROUNDS round(s); wrk -t1 -c$CONNS -d${DURATION}s --latency per cell, keep-alive; $WORKERS worker(s) per proxy;"
    echo "4 bench/origin servers (100-byte body) on 127.0.0.1:${ORIGIN_PORTS// /,}. wrk, the proxy and the origins share the CPUs."
    echo
    load_table
    echo
    wrk_notes
    note "ip_hash: every wrk connection comes from 127.0.0.1, so all requests hash to one server (nginx hashes the first three octets of an IPv4 address, proxyd all of it); the row measures the per-request cost, not the spread."
    notes_block
    commands_block "ulimit -n $(ulimit -n)"
    echo
    echo "Configurations (the other algorithms differ only in the balance line):"
    config_blocks nginx-least_conn/nginx.conf proxyd-least_conn/proxy.yaml proxyd-least_conn/bench.yaml
}

# ---- main ----------------------------------------------------------------

main() {
    local r a p
    ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
    for p in $PROXYD_PORT $NGINX_PORT $ORIGIN_PORTS; do
        if port_taken "$p"; then
            log "lb_bench: port $p is already in use; stop what listens there first"
            exit 1
        fi
    done
    for p in "$PROXYD" "$PROXYCTL"; do
        [ -x "$p" ] || { log "lb_bench: $p is missing (make all)"; exit 1; }
    done
    mkdir -p "$BIN"
    if [ ! -x "$BIN/origin" ] || [ "$ROOT/bench/origin.c" -nt "$BIN/origin" ]; then
        cc -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -Werror -o "$BIN/origin" "$ROOT/bench/origin.c"
    fi
    for p in $ORIGIN_PORTS; do
        start_bg "$TMP/origin-$p.log" "$BIN/origin" "$p" --body 100
        wait_http "$p" "$LAST_PID" || { log "lb_bench: origin on $p did not start"; exit 1; }
    done
    for r in $(seq 1 "$ROUNDS"); do
        for a in $ALGOS; do
            run_pair proxyd "$a" "$r"
            run_pair nginx "$a" "$r"
        done
    done
    report
}

main
