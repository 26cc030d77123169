#!/bin/bash
# proxy_bench.sh - proxyd against nginx and haproxy in front of the same origin:
# throughput and latency under load, and memory per idle keep-alive connection.
#
# usage: bench/proxy_bench.sh [-r ROUNDS] [-d SECONDS] [-c CONNS] [-n IDLE_CONNS]
#                             [-w WARMUP_SECONDS]
#   -r  rounds (default 3). Each round runs every target once, interleaved
#       (origin, proxyd, [proxyd-base,] nginx, haproxy; 1 and 2 workers), so
#       slow drift on the machine spreads over all targets; the tables show
#       the median.
#   -d  seconds per wrk run (default 10)
#   -c  wrk connections (default 50)
#   -n  idle connections for the memory test (default 5000)
#   -w  seconds of discarded keep-alive load after each start (default 1)
#
# Load: `wrk -t1 -cC -dDs --latency`, once with keep-alive and once with
# `Connection: close` (a new connection per request), against the origin
# directly (the ceiling) and through each proxy with 1 and 2 workers; every
# proxy keeps upstream connections alive and logs nothing.
# Memory: each proxy with 1 worker, started fresh and warmed with 50 requests;
# the workers' VmRSS before and while IDLE_CONNS connections that have each
# made one request sit idle; (after - before) / connections open.
#
# Ports: origin 18080, proxyd 18081, nginx 18082, haproxy 18083, proxyd-base
# 18084 (all on 127.0.0.1; the script stops if one is taken). proxyd rows say
# n/a when bin/proxyd is missing or does not answer within 5 s. The environment
# variables PROXYD and PROXYCTL name other builds (default bin/proxyd, bin/proxyctl).
# PROXYD_BASE (optional): another proxyd binary, the baseline for a change.
# When set, target proxyd-base runs that binary on port 18084 with the same
# global and site settings, its own stores (one per worker count) built with
# the same PROXYCTL; it runs in every round and in the memory test, measured
# exactly like proxyd, has rows in every table, and one more table gives
# proxyd / proxyd-base: keep-alive and new-connection req/s and server CPU
# per request, 1 and 2 workers.  Unset or empty, none of this appears.
# Output: Markdown on stdout (tables, the commands, the configurations);
# progress on stderr. Every process started here is stopped by PID on exit.
set -eu

ROUNDS=3
DURATION=10
CONNS=50
IDLE_N=5000
IDLE_HOLD=5
WARMUP=1
while getopts r:d:c:n:w:h opt; do
    case $opt in
    r) ROUNDS=$OPTARG ;;
    d) DURATION=$OPTARG ;;
    c) CONNS=$OPTARG ;;
    n) IDLE_N=$OPTARG ;;
    w) WARMUP=$OPTARG ;;
    *) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/build/bench
PROXYD=${PROXYD:-$ROOT/bin/proxyd}
PROXYCTL=${PROXYCTL:-$ROOT/bin/proxyctl}
PROXYD_BASE=${PROXYD_BASE:-}
ORIGIN_PORT=18080
TARGETS="origin proxyd nginx haproxy"
PROXIES="proxyd nginx haproxy"  # the memory test's and the CPU table's
if [ -n "$PROXYD_BASE" ]; then
    TARGETS="origin proxyd proxyd-base nginx haproxy"
    PROXIES="proxyd proxyd-base nginx haproxy"
fi
TMP=$(mktemp -d /tmp/proxy-bench-XXXXXX)
chmod 755 "$TMP"                # nginx workers run as nobody when started as root
RESULTS=$TMP/results.txt        # label workers mode round rps p50_us p99_us errors non2xx
COMMANDS=$TMP/commands.txt
NOTES=$TMP/notes.txt
: >"$RESULTS"
: >"$COMMANDS"
: >"$NOTES"
STARTED=""                      # PIDs of the processes this script started
PROXYD_NA=""                    # why proxyd is n/a, once it is
PROXYD_BASE_NA=""               # why proxyd-base is n/a, once it is

# log, note, record, start_bg, stop_pid, cleanup (and the traps), port_taken,
# wait_http, cpu_ticks, cpu_us_per: bench/lib.sh
. "$ROOT/bench/lib.sh"

# check_body PORT: the response must be the origin's 100 bytes.
check_body() {
    [ "$(curl -s --max-time 2 "http://127.0.0.1:$1/" | wc -c)" -eq 100 ]
}

# ---- targets -------------------------------------------------------------

port_of() {
    case $1 in
    origin) echo $ORIGIN_PORT ;; proxyd) echo 18081 ;; nginx) echo 18082 ;; haproxy) echo 18083 ;;
    proxyd-base) echo 18084 ;;
    esac
}

# proxyd and proxyd-base: the binary, and why it is n/a (set_na NAME WHY).
bin_of() { if [ "$1" = proxyd-base ]; then echo "$PROXYD_BASE"; else echo "$PROXYD"; fi; }
na_of() { if [ "$1" = proxyd-base ]; then echo "$PROXYD_BASE_NA"; else echo "$PROXYD_NA"; fi; }
set_na() { if [ "$1" = proxyd-base ]; then PROXYD_BASE_NA=$2; else PROXYD_NA=$2; fi; }

write_nginx_conf() {            # DIR WORKERS
    mkdir -p "$1"
    {
        nginx_head "$1" $2
        cat <<EOF
    upstream origin {
        server 127.0.0.1:$ORIGIN_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$(port_of nginx);
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    } >"$1/nginx.conf"
}

write_haproxy_cfg() {           # DIR WORKERS
    mkdir -p "$1"
    cat >"$1/haproxy.cfg" <<EOF
global
    nbthread $2
    maxconn 9000
defaults
    mode http
    maxconn 9000
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    timeout http-keep-alive 120s
frontend bench
    bind 127.0.0.1:$(port_of haproxy)
    default_backend origin
backend origin
    server origin 127.0.0.1:$ORIGIN_PORT
EOF
}

# prepare_proxyd NAME WORKERS (NAME proxyd or proxyd-base): one store per
# target and worker count, TMP/NAME-wN/store.db; the two differ only in the
# port and the admin socket's folder.
prepare_proxyd() {
    local d=$TMP/$1-w$2
    mkdir -p "$d"
    cat >"$d/proxy.yaml" <<EOF
listen: {http: ["127.0.0.1:$(port_of "$1")"], https: []}
workers: $2
$ROOT_USER_LINE
admin: {socket: $d/admin.sock}
logs: {access: "off"}
EOF
    cat >"$d/bench.yaml" <<EOF
site: bench
default: true
hosts: [127.0.0.1]
tls: {certificate: none}
upstreams:
  origin:
    keepalive: 64
    servers:
      - address: "127.0.0.1:$ORIGIN_PORT"
routes:
  - match: {path_prefix: /}
    upstream: origin
EOF
    proxyd_store "$d"
}

# start_target NAME WORKERS: start a fresh proxy and wait until it serves the
# origin's body; TARGET_PID is its (master) PID. Returns 1 (stopped) if not.
start_target() {
    local name=$1 w=$2 d=$TMP/$1
    case $name in
    nginx)
        write_nginx_conf "$d" "$w"
        start_bg "$d/out.log" nginx -p "$d" -e "$d/error.log" -c "$d/nginx.conf" -g 'daemon off;'
        ;;
    haproxy)
        write_haproxy_cfg "$d" "$w"
        start_bg "$d/out.log" haproxy -f "$d/haproxy.cfg" -db
        ;;
    proxyd | proxyd-base)
        [ -z "$(na_of "$name")" ] || return 1
        if [ ! -x "$(bin_of "$name")" ]; then
            set_na "$name" "$(bin_of "$name") does not exist"
            return 1
        fi
        d=$TMP/$name-w$w
        if ! prepare_proxyd "$name" "$w"; then
            set_na "$name" "proxyctl could not build the store: $(tail -n 3 "$d/proxyctl.log" | tr '\n' ' ')"
            return 1
        fi
        start_bg "$d/out.log" "$(bin_of "$name")" --db "$d/store.db" --foreground
        ;;
    esac
    TARGET_PID=$LAST_PID
    if ! wait_http "$(port_of "$name")" "$TARGET_PID" || ! check_body "$(port_of "$name")"; then
        log "$name ($w workers) did not serve the origin's body within 5 s: $(tail -n 3 "$d/out.log" 2>/dev/null)"
        case $name in
        proxyd | proxyd-base)
            set_na "$name" "$(bin_of "$name") did not serve the origin's 100-byte body on 127.0.0.1:$(port_of "$name") within 5 s; its output: $(tail -n 3 "$d/out.log" | tr '\n' ' ')"
            ;;
        esac
        stop_pid "$TARGET_PID"
        return 1
    fi
}

# ---- load ----------------------------------------------------------------

# run_wrk LABEL WORKERS MODE ROUND: one measured run, appended to RESULTS as
# "label workers mode round rps p50 p99 errors non2xx server_cpu_us_per_request
# server_user_us server_system_us rest_us", all per request; rest is the CPU
# of wrk and the origin, which share the machine with the proxy.
run_wrk() {
    local label=$1 w=$2 mode=$3 round=$4 out fields cpu
    local cmd=(wrk -t1 "-c$CONNS" "-d${DURATION}s" --latency)
    [ "$mode" = close ] && cmd+=(-H 'Connection: close')
    cmd+=("http://127.0.0.1:$(port_of "$label")/")
    out=$TMP/wrk-$label-$w-$mode-$round.txt
    record "${cmd[@]}"
    cpu=$(measure_wrk "$out" "${cmd[@]}")
    fields=$(parse_wrk "$out")
    [ "$label" != origin ] || cpu="- - - -"
    echo "$label $w $mode $round $fields $cpu" >>"$RESULTS"
    log "  $label w$w $mode: $fields; CPU per request (server, user, system, wrk+origin): $cpu us"
}

warm_up() {
    local cmd=(wrk -t1 "-c$CONNS" "-d${WARMUP}s" "http://127.0.0.1:$(port_of "$1")/")
    [ "$WARMUP" -gt 0 ] || return 0
    record "${cmd[@]}"
    "${cmd[@]}" >/dev/null 2>&1 || true
}

load_round() {                  # ROUND
    local t w
    for t in $TARGETS; do
        for w in 1 2; do
            [ "$t" = origin ] && [ "$w" = 2 ] && continue
            log "round $1: $t, $w worker(s)"
            if [ "$t" != origin ] && ! start_target "$t" "$w"; then
                echo "$t $w keepalive $1 - - - - - - - - -" >>"$RESULTS"
                echo "$t $w close $1 - - - - - - - - -" >>"$RESULTS"
                continue
            fi
            warm_up "$t"
            run_wrk "$t" "$w" keepalive "$1"
            run_wrk "$t" "$w" close "$1"
            [ "$t" = origin ] || stop_pid "$TARGET_PID"
        done
    done
}

# ---- idle connections ----------------------------------------------------

# Worker processes: nginx's and proxyd's are the master's children; haproxy
# (-db, no master-worker) is one process.
worker_pids() {
    case $1 in
    haproxy) echo "$2" ;;
    *) ps -o pid= --ppid "$2" ;;
    esac
}

rss_kb() {                      # NAME PID: summed VmRSS of the workers, KiB
    local pid kb sum=0
    for pid in $(worker_pids "$1" "$2"); do
        kb=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || true)
        sum=$((sum + ${kb:-0}))
    done
    echo "$sum"
}

idle_test() {                   # NAME; appends a row to TMP/idle.txt
    local name=$1 port before after open ic out i
    port=$(port_of "$name")
    log "idle: $name, $IDLE_N connections"
    if ! start_target "$name" 1; then
        echo "$name - - - -" >>"$TMP/idle.txt"
        return 0
    fi
    record "$BIN/idle_clients" 127.0.0.1 "$port" 50 0 --request
    "$BIN/idle_clients" 127.0.0.1 "$port" 50 0 --request >/dev/null 2>&1 || true
    sleep 0.5
    before=$(rss_kb "$name" "$TARGET_PID")
    out=$TMP/idle-$name.txt
    start_bg "$out" "$BIN/idle_clients" 127.0.0.1 "$port" "$IDLE_N" "$IDLE_HOLD" --request
    ic=$LAST_PID
    for i in $(seq 1 400); do   # set-up is bounded by idle_clients' 30 s
        grep -q holding "$out" 2>/dev/null && break
        kill -0 "$ic" 2>/dev/null || break
        sleep 0.1
    done
    sleep 1
    after=$(rss_kb "$name" "$TARGET_PID")
    open=$(sed -n 's/^idle_clients: holding \([0-9]*\) open.*/\1/p' "$out")
    for i in $(seq 1 $(((IDLE_HOLD + 5) * 10))); do
        kill -0 "$ic" 2>/dev/null || break
        sleep 0.1
    done
    stop_pid "$ic"
    stop_pid "$TARGET_PID"
    log "  $(tr '\n' ' ' <"$out")"
    echo "$name ${open:-0} $before $after $(sed -n 's/^idle_clients: \([0-9]*\) open after.*/\1/p' "$out")" \
        >>"$TMP/idle.txt"
}

# ---- report --------------------------------------------------------------

# cell LABEL WORKERS MODE COLUMN: median over rounds of one RESULTS column.
cell() {
    awk -v l="$1" -v w="$2" -v m="$3" -v c="$4" '$1 == l && $2 == w && $3 == m && $c != "-" { print $c }' \
        "$RESULTS" | median
}

fmt_cpu() {
    if [ "$1" = - ]; then echo -; else awk -v v="$1" 'BEGIN { printf "%.1f µs", v }'; fi
}

load_table() {
    local t w mode cells name
    echo "| target | workers | keep-alive req/s | p50 | p99 | server CPU per request | new-connection req/s | p50 | p99 | server CPU per request |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for t in $TARGETS; do
        for w in 1 2; do
            [ "$t" = origin ] && [ "$w" = 2 ] && continue
            cells=""
            for mode in keepalive close; do
                cells="$cells | $(fmt_rps "$(cell "$t" "$w" "$mode" 5)")"
                cells="$cells | $(fmt_ms "$(cell "$t" "$w" "$mode" 6)") | $(fmt_ms "$(cell "$t" "$w" "$mode" 7)")"
                cells="$cells | $(fmt_cpu "$(cell "$t" "$w" "$mode" 10)")"
            done
            name=$t
            [ "$t" != origin ] || name="origin (direct)"
            echo "| $name | $w$cells |"
        done
    done
}

# Where the CPU goes, keep-alive: the proxy's user and system time, and wrk's
# and the origin's, per request.  With every CPU busy, NCPU / (their sum) is
# the most requests per second the machine allows that proxy.
cpu_table() {
    local t w rps u sy rest
    echo "| target | workers | keep-alive req/s | proxy user | proxy system | wrk + origin | total per request | CPU-bound ceiling | measured / ceiling |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for t in $PROXIES; do
        for w in 1 2; do
            rps=$(cell "$t" "$w" keepalive 5)
            u=$(cell "$t" "$w" keepalive 11)
            sy=$(cell "$t" "$w" keepalive 12)
            rest=$(cell "$t" "$w" keepalive 13)
            if [ "$rps" = - ] || [ "$u" = - ] || [ "$rest" = - ]; then
                echo "| $t | $w | n/a | n/a | n/a | n/a | n/a | n/a | n/a |"
                continue
            fi
            awk -v t="$t" -v w="$w" -v r="$rps" -v u="$u" -v s="$sy" -v x="$rest" -v ncpu="$(nproc)" 'BEGIN {
                tot = u + s + x; ceil = ncpu * 1e6 / tot
                printf "| %s | %s | %.0f | %.1f µs | %.1f µs | %.1f µs | %.1f µs | %.0f | %.0f %% |\n", t, w, r, u, s, x, tot, ceil, 100 * r / ceil
            }'
        done
    done
}

# The bound the keep-alive target meets (1 worker): even a proxy that spent
# no user time at all would still pay proxyd's system time.
cpu_bound() {
    local ps pr best=0 bt="" t c
    ps=$(cell proxyd 1 keepalive 12)
    pr=$(cell proxyd 1 keepalive 13)
    [ "$ps" != - ] && [ "$pr" != - ] || return 0
    for t in nginx haproxy; do
        c=$(cell "$t" 1 keepalive 5)
        [ "$c" != - ] || continue
        if awk -v a="$c" -v b="$best" 'BEGIN { exit !(a > b) }'; then best=$c; bt=$t; fi
    done
    [ -n "$bt" ] || return 0
    awk -v s="$ps" -v x="$pr" -v b="$best" -v bt="$bt" -v ncpu="$(nproc)" \
        -v m="$(cell proxyd 1 keepalive 5)" -v mu="$(cell proxyd 1 keepalive 11)" 'BEGIN {
        ceil = ncpu * 1e6 / (s + x)
        printf "Bound (1 worker): a proxy with proxyd'"'"'s system time (%.1f µs) and no user time at all, with wrk and the origin\n", s
        printf "as measured around proxyd (%.1f µs), could not exceed %.0f req/s even with every CPU busy all the\n", x, ceil
        printf "time: %.2fx the best peer'"'"'s measured rate (%s, %.0f req/s).  proxyd measured %.0f req/s with %.1f µs of user time.\n", ceil / b, bt, b, m, mu
    }'
}

# proxyd / proxyd-base (PROXYD_BASE), 1 and 2 workers: ratios of the medians,
# and with more than one round the range of the per-round ratios (both run
# close together in each round, so a round's ratio sees much the same machine).
# ratio_cell WORKERS MODE COLUMN UNIT
ratio_cell() {
    local new base
    new=$(cell proxyd "$1" "$2" "$3")
    base=$(cell proxyd-base "$1" "$2" "$3")
    if [ "$new" = - ] || [ "$base" = - ] || ! awk -v b="$base" 'BEGIN { exit !(b > 0) }'; then
        echo n/a
        return
    fi
    awk -v w="$1" -v m="$2" -v c="$3" -v n="$new" -v b="$base" -v unit="$4" '
        $2 == w && $3 == m && $c != "-" { if ($1 == "proxyd") pn[$4] = $c; else if ($1 == "proxyd-base") pb[$4] = $c }
        END {
            fmt = unit == "" ? "%.0f" : "%.1f"
            printf "%.3f (" fmt " / " fmt "%s)", n / b, n, b, unit
            k = 0
            for (r in pn) if ((r in pb) && pb[r] > 0) {
                x = pn[r] / pb[r]
                if (k == 0 || x < lo) lo = x
                if (k == 0 || x > hi) hi = x
                k++
            }
            if (k > 1) printf "; rounds %.3f–%.3f", lo, hi
            printf "\n"
        }' "$RESULTS"
}

sha12() { sha256sum "$1" 2>/dev/null | cut -c1-12 | grep . || echo '?'; }

base_table() {
    local w
    echo "| workers | keep-alive req/s | new-connection req/s | server CPU per keep-alive request | server CPU per new-connection request |"
    echo "| ---: | ---: | ---: | ---: | ---: |"
    for w in 1 2; do
        echo "| $w | $(ratio_cell "$w" keepalive 5 "") | $(ratio_cell "$w" close 5 "") | $(ratio_cell "$w" keepalive 10 " µs") | $(ratio_cell "$w" close 10 " µs") |"
    done
}

idle_table() {
    local name open before after end per
    echo "| target | workers | connections open | worker RSS before | worker RSS with them | bytes per idle connection | open at the end |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    while read -r name open before after end; do
        if [ "$open" = - ] || [ "$open" = 0 ]; then
            echo "| $name | 1 | n/a | n/a | n/a | n/a | n/a |"
            continue
        fi
        per=$(((after - before) * 1024 / open))
        echo "| $name | 1 | $open | $before KiB | $after KiB | $per | ${end:-?} |"
    done <"$TMP/idle.txt"
}

wrk_notes() {
    awk '$8 != "-" && ($8 > 0 || $9 > 0) {
        printf "- round %s, %s (%s workers, %s): %d socket errors, %d non-2xx/3xx responses\n", $4, $1, $2, $3, $8, $9
    }' "$RESULTS" >>"$NOTES"
}

report() {
    echo "## Proxy benchmark"
    echo
    machine_line
    echo "$(nginx_version), $(haproxy -v | awk 'NR == 1 { print "haproxy " $3 }'), $(wrk_version), $(proxyd_at)."
    echo "Median of $ROUNDS round(s); wrk -t1 -c$CONNS -d${DURATION}s per cell; 100-byte body from bench/origin on 127.0.0.1:$ORIGIN_PORT."
    echo "wrk, the proxy and the origin share the machine's CPUs."
    echo "\"Server CPU per request\": user+system time of the proxy's processes during the run, divided by the"
    echo "requests wrk counted; unlike the rates it does not depend on how the shared CPUs are divided."
    echo
    load_table
    echo
    if [ -n "$PROXYD_BASE" ]; then
        echo "proxyd vs proxyd-base, new / base: the ratio of the medians (the medians in brackets) and, with"
        echo "more than one round, the lowest and highest per-round ratio. proxyd: $PROXYD (sha256"
        echo "$(sha12 "$PROXYD")); proxyd-base: $PROXYD_BASE (sha256 $(sha12 "$PROXYD_BASE"))."
        echo
        base_table
        echo
    fi
    echo "Where the CPU goes (keep-alive, per request; medians):"
    echo
    cpu_table
    echo
    cpu_bound
    echo
    echo "Memory per idle keep-alive connection ($IDLE_N connections, one request each, 1 worker;"
    echo "worker VmRSS, so kernel socket buffers are not included):"
    echo
    idle_table
    echo
    wrk_notes
    [ -n "$PROXYD_NA" ] && note "proxyd: n/a: $PROXYD_NA"
    [ -n "$PROXYD_BASE_NA" ] && note "proxyd-base: n/a: $PROXYD_BASE_NA"
    notes_block
    commands_block "ulimit -n $(ulimit -n)"
    echo
    echo "Configurations (the 2-worker runs differ only in worker_processes / nbthread / workers):"
    config_blocks nginx/nginx.conf haproxy/haproxy.cfg proxyd-w1/proxy.yaml proxyd-w1/bench.yaml proxyd-base-w1/proxy.yaml
}

# ---- main ----------------------------------------------------------------

main() {
    local r t
    ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
    for t in $TARGETS; do
        if port_taken "$(port_of "$t")"; then
            log "proxy_bench: port $(port_of "$t") ($t) is already in use; stop what listens there first"
            exit 1
        fi
    done
    mkdir -p "$BIN"
    for t in origin idle_clients; do
        if [ ! -x "$BIN/$t" ] || [ "$ROOT/bench/$t.c" -nt "$BIN/$t" ]; then
            cc -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -Werror -o "$BIN/$t" "$ROOT/bench/$t.c"
        fi
    done
    start_bg "$TMP/origin.log" "$BIN/origin" "$ORIGIN_PORT" --body 100 --pid-file "$TMP/origin.pid"
    ORIGIN_PID=$LAST_PID
    if ! wait_http "$ORIGIN_PORT" "$LAST_PID" || ! check_body "$ORIGIN_PORT"; then
        log "proxy_bench: the origin did not start: $(cat "$TMP/origin.log")"
        exit 1
    fi
    for r in $(seq 1 "$ROUNDS"); do load_round "$r"; done
    : >"$TMP/idle.txt"
    for t in $PROXIES; do idle_test "$t"; done
    report
}

main
