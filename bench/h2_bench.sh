#!/bin/bash
# h2_bench.sh - HTTP/2 over TLS: requests/s and server CPU per request of
# proxyd, nginx and h2o (Debian packages), 1 worker each, serving the same
# small static file to h2load.
#
# usage: bench/h2_bench.sh [-r ROUNDS] [-d SECONDS]
#   -r  rounds (default 3); each round runs every (server, streams) cell once,
#       interleaved; the table shows the median
#   -d  seconds per h2load run (default 10, after a 1 s warm-up)
#
# Load: `h2load -c10 -mM -t1 -D S --warm-up-time=1` on https://127.0.0.1,
# ALPN h2, M = 10 and 100 concurrent streams per connection (10 connections:
# 100 and 1000 streams in flight).  The body is a 3-byte file ("ok\n"), from
# proxyd's static action, nginx's root and h2o's file.dir; access logs off;
# one ECDSA P-256 certificate for all three; TLS 1.3.  The decisive figure on
# this 2-CPU machine is the server CPU per request (user + system of the
# server's processes, bench/lib.sh), since h2load shares the CPUs.
#
# Ports: proxyd 18481, nginx 18482, h2o 18483 (127.0.0.1; the script stops
# if one is taken).  PROXYD / PROXYCTL name other builds (default bin/).
# Output: Markdown on stdout; progress on stderr.  Every process started here
# is stopped by its PID on exit.
set -eu

ROUNDS=3
DURATION=10
while getopts r:d:h opt; do
    case $opt in
    r) ROUNDS=$OPTARG ;;
    d) DURATION=$OPTARG ;;
    *) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PROXYD=${PROXYD:-$ROOT/bin/proxyd}
PROXYCTL=${PROXYCTL:-$ROOT/bin/proxyctl}
PROXYD_PORT=18481
NGINX_PORT=18482
H2O_PORT=18483
SERVERS="proxyd nginx h2o"
STREAMS="10 100"
TMP=$(mktemp -d /tmp/h2-bench-XXXXXX)
chmod 755 "$TMP"                # nginx and h2o workers run as nobody when started as root
RESULTS=$TMP/results.txt        # server streams round rps succeeded failed cpu user sys
COMMANDS=$TMP/commands.txt
NOTES=$TMP/notes.txt
: >"$RESULTS"
: >"$COMMANDS"
: >"$NOTES"
STARTED=""

# log, note, record, start_bg, stop_pid, cleanup (and the traps), port_taken,
# cpu_split, median, fmt_rps: bench/lib.sh
. "$ROOT/bench/lib.sh"

make_files() {
    mkdir -p "$TMP/www"
    printf 'ok\n' >"$TMP/www/ok.txt"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=bench.test -days 2 \
        -addext subjectAltName=DNS:bench.test -keyout "$TMP/key.pem" -out "$TMP/cert.pem" >/dev/null 2>&1
    chmod 644 "$TMP/key.pem" "$TMP/cert.pem"
    chmod -R a+rX "$TMP/www"
}

write_nginx() {                 # DIR
    mkdir -p "$1"
    cat >"$1/nginx.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile 20000;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 10240; }
http {
    access_log off;
    keepalive_timeout 120s;
    keepalive_requests 100000000;
    http2_max_concurrent_streams 128;
    client_body_temp_path $1/body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
    server {
        listen 127.0.0.1:$NGINX_PORT ssl http2;
        ssl_certificate $TMP/cert.pem;
        ssl_certificate_key $TMP/key.pem;
        ssl_protocols TLSv1.3;
        root $TMP/www;
    }
}
EOF
}

write_h2o() {                   # DIR
    mkdir -p "$1"
    chmod 777 "$1"              # h2o writes its log as nobody when started as root
    cat >"$1/h2o.conf" <<EOF
num-threads: 1
$([ "$(id -u)" = 0 ] && echo "user: nobody")
error-log: $1/error.log
http2-max-concurrent-requests-per-connection: 128
listen:
  host: 127.0.0.1
  port: $H2O_PORT
  ssl:
    certificate-file: $TMP/cert.pem
    key-file: $TMP/key.pem
    minimum-version: TLSv1.3
hosts:
  default:
    paths:
      /:
        file.dir: $TMP/www
EOF
}

prepare_proxyd() {              # DIR
    local d=$1
    mkdir -p "$d"
    cat >"$d/proxy.yaml" <<EOF
listen: {http: [], https: ["127.0.0.1:$PROXYD_PORT"]}
workers: 1
$ROOT_USER_LINE
admin: {socket: $d/admin.sock}
logs: {access: "off"}
tls: {protocols: [TLSv1.3]}
limits: {h2_max_streams: 128}
EOF
    cat >"$d/bench.yaml" <<EOF
site: bench
default: true
hosts: [bench.test]
security_headers: none
tls:
  certificate: {cert_file: "$TMP/cert.pem", key_file: "$TMP/key.pem"}
routes:
  - match: {path_prefix: /}
    static: {root: "$TMP/www"}
EOF
    proxyd_store "$d"
}

wait_tls_port() {               # PORT PID
    local i
    for i in $(seq 1 100); do
        kill -0 "$2" 2>/dev/null || return 1
        curl -sk --http2 -o /dev/null "https://127.0.0.1:$1/ok.txt" 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}

start_server() {                # NAME ROUND: TARGET_PID, TARGET_PORT
    local name=$1 d=$TMP/$1-$2
    case $name in
    nginx)
        write_nginx "$d"
        start_bg "$d/out.log" nginx -p "$d" -e "$d/error.log" -c "$d/nginx.conf" -g 'daemon off;'
        TARGET_PORT=$NGINX_PORT
        ;;
    h2o)
        write_h2o "$d"
        start_bg "$d/out.log" h2o -c "$d/h2o.conf"
        TARGET_PORT=$H2O_PORT
        ;;
    proxyd)
        prepare_proxyd "$d" || { log "proxyctl: $(tail -n 3 "$d/proxyctl.log")"; return 1; }
        start_bg "$d/out.log" "$PROXYD" --db "$d/store.db" --foreground
        TARGET_PORT=$PROXYD_PORT
        ;;
    esac
    TARGET_PID=$LAST_PID
    if ! wait_tls_port "$TARGET_PORT" "$TARGET_PID"; then
        note "$name: did not start ($(tail -n 1 "$d/out.log" 2>/dev/null))"
        stop_pid "$TARGET_PID"
        return 1
    fi
}

# parse_h2load FILE: "rps succeeded failed" ("- - -" without a result)
parse_h2load() {
    awk '/^finished in/ { gsub(/,/, ""); rps = $4 }
         /^requests:/ { gsub(/,/, ""); ok = $8; failed = $10 }
         END { if (rps == "") print "- - -"; else printf "%s %s %s\n", rps, ok, failed }' "$1"
}

run_cell() {                    # NAME ROUND
    local name=$1 round=$2 m out t0 t1 n
    log "round $round: $name"
    if ! start_server "$name" "$round"; then
        for m in $STREAMS; do echo "$name $m $round - - - - - -" >>"$RESULTS"; done
        return 0
    fi
    for m in $STREAMS; do
        local cmd=(h2load -c10 "-m$m" -t1 -D "$DURATION" --warm-up-time=1 "https://127.0.0.1:$TARGET_PORT/ok.txt")
        record "${cmd[@]}"
        out=$TMP/h2load-$name-$m-$round.txt
        t0=$(cpu_split)
        "${cmd[@]}" >"$out" 2>&1 || true
        t1=$(cpu_split)
        read -r rps ok failed <<<"$(parse_h2load "$out")"
        # CPU over the whole run (warm-up included) per request that h2load counted in the measured part,
        # scaled by the measured part's share of the run.
        n=$ok
        local cpu
        cpu=$(awk -v a="$t0" -v b="$t1" -v n="$n" -v hz="$CLK_TCK" -v d="$DURATION" '
            BEGIN { split(a, x, " "); split(b, y, " ")
                    if (n == "-" || n <= 0) { print "- - -"; exit }
                    u = (y[1] - x[1]) / hz; s = (y[2] - x[2]) / hz; f = d / (d + 1)
                    printf "%.1f %.1f %.1f\n", (u + s) * f * 1e6 / n, u * f * 1e6 / n, s * f * 1e6 / n }')
        echo "$name $m $round $rps $ok $failed $cpu" >>"$RESULTS"
        log "  -m$m: $rps req/s, $ok ok, $failed failed, cpu $cpu"
    done
    stop_pid "$TARGET_PID"
}

cell() { awk -v s="$1" -v m="$2" -v c="$3" '$1 == s && $2 == m && $c != "-" { print $c }' "$RESULTS" | median; }


table() {
    local m s best
    echo "| streams per connection (10 connections) | server | req/s | server CPU µs/req | proxyd / best peer CPU |"
    echo "| ---: | --- | ---: | ---: | ---: |"
    for m in $STREAMS; do
        best=$( (cell nginx "$m" 7; cell h2o "$m" 7) | grep -v '^-$' | sort -g | head -n 1)
        for s in $SERVERS; do
            local c
            c=$(cell "$s" "$m" 7)
            echo "| $m | $s | $(fmt_rps "$(cell "$s" "$m" 4)") | $c | $([ "$s" = proxyd ] && ratio "$c" "${best:--}" || echo) |"
        done
    done
}

report() {
    echo "## HTTP/2 benchmark"
    echo
    machine_line
    echo "$(nginx_version), $(h2o --version 2>&1 | head -n 1), $(h2load --version 2>&1 | head -n 1), $(proxyd_at)."
    echo "Median of $ROUNDS round(s); h2load -c10 -mM -t1 -D $DURATION --warm-up-time=1 per cell; TLS 1.3, ECDSA P-256; a 3-byte static file; 1 worker each."
    echo "CPU µs/req: user + system of the server's processes per request (the warm-up second's share taken out)."
    echo
    table
    echo
    awk '$4 != "-" && $6 > 0 { printf "- round %s, %s -m%s: %d requests failed\n", $3, $1, $2, $6 }' "$RESULTS" >>"$NOTES"
    notes_block
    commands_block
}

main() {
    local r s p
    ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
    for p in $PROXYD_PORT $NGINX_PORT $H2O_PORT; do
        if port_taken "$p"; then log "h2_bench: port $p is in use"; exit 1; fi
    done
    for p in "$PROXYD" "$PROXYCTL"; do [ -x "$p" ] || { log "h2_bench: $p is missing (make all)"; exit 1; }; done
    for p in nginx h2o h2load curl openssl; do
        command -v "$p" >/dev/null || { log "h2_bench: needs $p (nginx, h2o, nghttp2-client, curl, openssl)"; exit 1; }
    done
    make_files
    for r in $(seq 1 "$ROUNDS"); do
        for s in $SERVERS; do run_cell "$s" "$r"; done
    done
    report
}

main
