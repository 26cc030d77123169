#!/bin/bash
# tls_bench.sh - TLS termination: proxyd against nginx and haproxy, each with
# 1 worker, one ECDSA P-256 certificate for all, the same origin behind each.
#
# usage: bench/tls_bench.sh [-r ROUNDS] [-d SECONDS] [-p CLIENTS] [-c CONNS]
#   -r  rounds (default 3). Each round measures every target once per column,
#       interleaved (proxyd, nginx, haproxy), so slow drift on the machine
#       spreads over all of them; the table shows the median.
#   -d  seconds per measurement (default 10)
#   -p  parallel openssl s_time clients for the handshake columns (default 2)
#   -c  wrk connections for the keep-alive column (default 50)
#
# Columns:
#  (a) full handshakes/s: a new TCP connection and a full TLS 1.3 handshake
#      per request: CLIENTS x `openssl s_time -new -www PATH` in parallel,
#      (connections made) / (wall time).  s_time keeps no session between
#      connections, so every handshake is a full one (its per-connection
#      marks say so: '*' new, 'r' resumed; the table counts them).  Why not
#      h2load or wrk with `Connection: close`: both resume the TLS session of
#      a client's previous connection when they reconnect (verified against
#      nginx's $ssl_session_reused: wrk 99.8 %, h2load -c10 -n2000 99.5 %
#      resumed), so they measure resumption, not full handshakes.
#  (b) resumed handshakes/s: the same with `s_time -reuse` (every connection
#      offers the first connection's TLS 1.3 ticket), and the share of
#      connections that really resumed.  A server that closes without a TLS
#      close_notify makes OpenSSL 3 clients drop the session ("unexpected
#      eof while reading"), so this column also shows whether real clients
#      get to resume at all.
#  (b') resumed TLS 1.2 handshakes/s, handshake only: `s_time -reuse -tls1_2`
#      without a request (the ticket comes inside the handshake, and no read
#      can fail): the pure cost of an abbreviated handshake.
#  (c) keep-alive HTTPS requests/s: `wrk -t1 -cCONNS -dSECONDS --latency`
#      over https (one handshake per connection, then requests).
# Each column also shows the server's CPU time (user + system of its master
# and workers, from /proc) per connection or request: on a small machine the
# clients share the CPUs and bound the rates, the CPU cost does not depend
# on them.
# Clients offer TLS_AES_128_GCM_SHA256 (s_time) and X25519; every server is
# configured alike: TLS 1.2 + 1.3, ECDHE AEAD suites, server preference,
# session tickets on, ALPN http/1.1, upstream keep-alive 64, no access log.
# s_time's request is HTTP/1.0 with no Host; the -www path carries one
# (`-www $'/ HTTP/1.0\r\nHost: bench.test\r\nX-Bench: 1'`) so that every
# server gets the same ordinary request (earlier proxyd builds crashed a
# worker on HTTP/1.0 without Host: test_tls.py's test_http10_without_host_*).
#
# Ports (127.0.0.1; the script stops if one is taken): origin 18090, proxyd
# 18091, nginx 18092, haproxy 18093. proxyd cells say n/a when bin/proxyd is
# missing or does not serve. PROXYD and PROXYCTL name other builds (default
# bin/proxyd, bin/proxyctl). Output: Markdown on stdout (table, commands,
# configurations); progress on stderr. Every process started here is stopped
# by PID on exit. Clients, servers and the origin share the machine's CPUs.
set -eu

ROUNDS=3
DURATION=10
CLIENTS=2
CONNS=50
while getopts r:d:p:c:h opt; do
    case $opt in
    r) ROUNDS=$OPTARG ;;
    d) DURATION=$OPTARG ;;
    p) CLIENTS=$OPTARG ;;
    c) CONNS=$OPTARG ;;
    *) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/build/bench
PROXYD=${PROXYD:-$ROOT/bin/proxyd}
PROXYCTL=${PROXYCTL:-$ROOT/bin/proxyctl}
ORIGIN_PORT=18090
TARGETS="proxyd nginx haproxy"
TMP=$(mktemp -d /tmp/tls-bench-XXXXXX)
chmod 755 "$TMP"                # nginx workers run as nobody when started as root
RESULTS=$TMP/results.txt        # target column round value extra
COMMANDS=$TMP/commands.txt
NOTES=$TMP/notes.txt
: >"$RESULTS"
: >"$COMMANDS"
: >"$NOTES"
STARTED=""
PROXYD_NA=""
WWW=$'/ HTTP/1.0\r\nHost: bench.test\r\nX-Bench: 1'
SUITE=TLS_AES_128_GCM_SHA256
TLS12_CIPHERS="ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
TLS13_SUITES="TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"

# log, note, record, start_bg, stop_pid, cleanup (and the traps), port_taken,
# wait_http, cpu_ticks, cpu_us_per: bench/lib.sh
. "$ROOT/bench/lib.sh"

port_of() {
    case $1 in
    origin) echo $ORIGIN_PORT ;; proxyd) echo 18091 ;; nginx) echo 18092 ;; haproxy) echo 18093 ;;
    esac
}

# wait_https PORT PID: true once https://127.0.0.1:PORT/ serves the origin's 100 bytes (5 s at most).
wait_https() {
    local i
    for i in $(seq 1 50); do
        kill -0 "$2" 2>/dev/null || return 1
        [ "$(curl -sk --max-time 1 "https://127.0.0.1:$1/" | wc -c)" -eq 100 ] && return 0
        sleep 0.1
    done
    return 1
}

# ---- certificate and configurations ----------------------------------------

make_cert() {
    record openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=bench.test \
        -addext subjectAltName=DNS:bench.test,IP:127.0.0.1 -days 30 -keyout TMP/key.pem -out TMP/cert.pem
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=bench.test \
        -addext subjectAltName=DNS:bench.test,IP:127.0.0.1 -days 30 \
        -keyout "$TMP/key.pem" -out "$TMP/cert.pem" >/dev/null 2>&1
    cat "$TMP/cert.pem" "$TMP/key.pem" >"$TMP/combined.pem"
    chmod 644 "$TMP/key.pem" "$TMP/combined.pem"
}

write_nginx_conf() {            # DIR
    mkdir -p "$1"
    {
        nginx_head "$1" 1
        cat <<EOF
    upstream origin {
        server 127.0.0.1:$ORIGIN_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$(port_of nginx) ssl;
        ssl_certificate $TMP/cert.pem;
        ssl_certificate_key $TMP/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers $TLS12_CIPHERS;
        ssl_conf_command Ciphersuites $TLS13_SUITES;
        ssl_prefer_server_ciphers on;
        ssl_session_tickets on;
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

write_haproxy_cfg() {           # DIR
    mkdir -p "$1"
    cat >"$1/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 9000
    ssl-default-bind-ciphers $TLS12_CIPHERS
    ssl-default-bind-ciphersuites $TLS13_SUITES
    ssl-default-bind-options ssl-min-ver TLSv1.2
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
    bind 127.0.0.1:$(port_of haproxy) ssl crt $TMP/combined.pem alpn http/1.1
    default_backend origin
backend origin
    server origin 127.0.0.1:$ORIGIN_PORT
EOF
}

prepare_proxyd() {
    local d=$TMP/proxyd
    mkdir -p "$d"
    cat >"$d/proxy.yaml" <<EOF
listen: {http: [], https: ["127.0.0.1:$(port_of proxyd)"]}
workers: 1
$ROOT_USER_LINE
admin: {socket: $d/admin.sock}
logs: {access: /dev/null, error: $d/error.log}
tls: {protocols: [TLSv1.2, TLSv1.3], session_tickets: true}
EOF
    cat >"$d/bench.yaml" <<EOF
site: bench
default: true
hosts: [bench.test]
tls:
  certificate: {cert_file: $TMP/cert.pem, key_file: $TMP/key.pem}
access_log: {format: off}
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

start_target() {                # NAME: TARGET_PID, or 1
    local name=$1 d=$TMP/$1
    case $name in
    nginx)
        write_nginx_conf "$d"
        start_bg "$d/out.log" nginx -p "$d" -e "$d/error.log" -c "$d/nginx.conf" -g 'daemon off;'
        ;;
    haproxy)
        write_haproxy_cfg "$d"
        start_bg "$d/out.log" haproxy -f "$d/haproxy.cfg" -db
        ;;
    proxyd)
        [ -z "$PROXYD_NA" ] || return 1
        if [ ! -x "$PROXYD" ]; then
            PROXYD_NA="$PROXYD does not exist"
            return 1
        fi
        if [ ! -f "$d/store.db" ] && ! prepare_proxyd; then
            PROXYD_NA="proxyctl could not build the store: $(tail -n 3 "$d/proxyctl.log" | tr '\n' ' ')"
            return 1
        fi
        start_bg "$d/out.log" "$PROXYD" --db "$d/store.db" --foreground
        ;;
    esac
    TARGET_PID=$LAST_PID
    if ! wait_https "$(port_of "$name")" "$TARGET_PID"; then
        log "$name did not serve the origin's body over https within 5 s: $(tail -n 3 "$d/out.log" 2>/dev/null)"
        [ "$name" = proxyd ] &&
            PROXYD_NA="did not serve the origin's body on https://127.0.0.1:$(port_of proxyd)/ within 5 s: $(tail -n 3 "$d/out.log" | tr '\n' ' ')"
        stop_pid "$TARGET_PID"
        return 1
    fi
}

# ---- measurements ----------------------------------------------------------

now() { date +%s.%N; }

# s_time_run TARGET COLUMN ROUND ARGS...: CLIENTS parallel s_time; appends
# "target column round rate resumed_pct bytes_per_conn server_cpu_us_per_conn
# clients_cpu_us_per_conn" to RESULTS.
s_time_run() {
    local t=$1 col=$2 round=$3 i start end total reused bytes rate pct bpc
    shift 3
    local cmd=(openssl s_time -connect "127.0.0.1:$(port_of "$t")" -time "$DURATION" "$@")
    record "${cmd[@]}"
    local pids=() rest="" t0 t1 c0 c1
    t0=$(cpu_ticks)
    times >"$TMP/times0"
    start=$(now)
    for i in $(seq 1 "$CLIENTS"); do
        "${cmd[@]}" >"$TMP/st-$t-$col-$round-$i.txt" 2>&1 </dev/null &
        pids+=($!)
    done
    STARTED="$STARTED ${pids[*]}"
    for i in "${pids[@]}"; do wait "$i" 2>/dev/null || true; done
    end=$(now)
    times >"$TMP/times1"
    t1=$(cpu_ticks)
    c0=$(children_s "$TMP/times0")
    c1=$(children_s "$TMP/times1")
    for i in $STARTED; do [[ " ${pids[*]} " == *" $i "* ]] || rest="$rest $i"; done
    STARTED=$rest
    total=0 reused=0 bytes=0
    for i in $(seq 1 "$CLIENTS"); do
        local f=$TMP/st-$t-$col-$round-$i.txt marks
        marks=$(grep -v -E 'connections|Collecting|Now timing|bytes read|ERROR|error' "$f" | sed 's/starting//g' | tr -cd '*r')
        total=$((total + ${#marks}))
        marks=${marks//\*/}
        reused=$((reused + ${#marks}))
        bytes=$((bytes + $(sed -n 's/.*bytes read \([0-9]*\)$/\1/p' "$f" | head -n 1 | grep . || echo 0)))
    done
    if [ "$total" -eq 0 ]; then
        echo "$t $col $round - - - - -" >>"$RESULTS"
        log "  $t $col: no connections: $(head -c 300 "$TMP/st-$t-$col-$round-1.txt")"
        return
    fi
    rate=$(awk -v n="$total" -v s="$start" -v e="$end" 'BEGIN { printf "%.1f", n / (e - s) }')
    pct=$(awk -v r="$reused" -v n="$total" 'BEGIN { printf "%.1f", 100 * r / n }')
    bpc=$((bytes / total))
    local cpu ccpu
    cpu=$(cpu_us_per "$t0" "$t1" "$total")
    ccpu=$(awk -v a="$c0" -v b="$c1" -v n="$total" 'BEGIN { printf "%.1f", (b - a) * 1e6 / n }')
    echo "$t $col $round $rate $pct $bpc $cpu $ccpu" >>"$RESULTS"
    log "  $t $col: $rate conn/s, $pct % resumed, $bpc bytes read per connection, server CPU $cpu us, clients $ccpu us per connection"
}

wrk_run() {                     # TARGET ROUND
    local t=$1 round=$2 out fields cpu
    local cmd=(wrk -t1 "-c$CONNS" "-d${DURATION}s" --latency "https://127.0.0.1:$(port_of "$t")/")
    out=$TMP/wrk-$t-$round.txt
    record "${cmd[@]}"
    cpu=$(measure_wrk "$out" "${cmd[@]}")
    fields=$(parse_wrk "$out")
    # target keepalive round rps p50 p99 errors non2xx, then per request: server_cpu server_user server_system wrk+origin
    echo "$t keepalive $round $fields $cpu" >>"$RESULTS"
    log "  $t keep-alive: $fields; CPU per request (server, user, system, wrk+origin): $cpu us"
}

round() {                       # ROUND
    local t
    for t in $TARGETS; do
        log "round $1: $t"
        if ! start_target "$t"; then
            for c in full resumed resumed12; do echo "$t $c $1 - - - - -" >>"$RESULTS"; done
            echo "$t keepalive $1 - - - - - - - - -" >>"$RESULTS"
            continue
        fi
        s_time_run "$t" full "$1" -new -ciphersuites "$SUITE" -www "$WWW"
        s_time_run "$t" resumed "$1" -reuse -ciphersuites "$SUITE" -www "$WWW"
        s_time_run "$t" resumed12 "$1" -reuse -tls1_2 -cipher ECDHE-ECDSA-AES128-GCM-SHA256
        wrk_run "$t" "$1"
        stop_pid "$TARGET_PID"
    done
}

# ---- report ----------------------------------------------------------------

cell() {                        # TARGET COLUMN FIELD
    awk -v t="$1" -v c="$2" -v f="$3" '$1 == t && $2 == c && $f != "-" { print $f }' "$RESULTS" | median
}

fmt_us() { if [ "$1" = - ]; then echo n/a; else printf '%.0f µs' "$1"; fi; }

# rate (resumed %) / server CPU per unit
hs_cell() {                     # TARGET COLUMN
    local rate pct cpu
    rate=$(fmt_rps "$(cell "$1" "$2" 4)")
    pct=$(cell "$1" "$2" 5)
    cpu=$(fmt_us "$(cell "$1" "$2" 7)")
    if [ "$2" = full ] || [ "$pct" = - ]; then echo "$rate | $cpu"; else echo "$rate ($pct %) | $cpu"; fi
}

table() {
    local t
    echo "| target | (a) full handshakes/s | server CPU per (a) | (b) resumed handshakes/s (resumed) | server CPU per (b) | (b') TLS 1.2 resumed, handshake only/s (resumed) | server CPU per (b') | (c) keep-alive req/s | server CPU per (c) | (c) p50 | (c) p99 |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for t in $TARGETS; do
        echo "| $t | $(hs_cell "$t" full) | $(hs_cell "$t" resumed) | $(hs_cell "$t" resumed12) | $(fmt_rps "$(cell "$t" keepalive 4)") | $(fmt_us "$(cell "$t" keepalive 9)") | $(fmt_ms "$(cell "$t" keepalive 5)") | $(fmt_ms "$(cell "$t" keepalive 6)") |"
    done
}

# Where the CPU goes: per connection, the server's and the clients' CPU for
# (a) and (b); per request, the server's user and system time and wrk's and
# the origin's for (c).  NCPU / (their sum) is the most the machine allows
# with every CPU busy; the clients' share bounds every server alike.
cpu_table() {
    local t
    echo "| target | (a) server | (a) clients | (a) ceiling | (b) server | (b) clients | (b) ceiling | (c) server user | (c) server system | (c) wrk + origin | (c) ceiling |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for t in $TARGETS; do
        awk -v t="$t" -v ncpu="$(nproc)" -v as="$(cell "$t" full 7)" -v ac="$(cell "$t" full 8)" \
            -v bs="$(cell "$t" resumed 7)" -v bc="$(cell "$t" resumed 8)" -v cu="$(cell "$t" keepalive 10)" \
            -v cs="$(cell "$t" keepalive 11)" -v cr="$(cell "$t" keepalive 12)" '
            function us(v) { return v == "-" ? "n/a" : sprintf("%.0f µs", v) }
            function us1(v) { return v == "-" ? "n/a" : sprintf("%.1f µs", v) }
            function ceil(a, b, c) { return (a == "-" || b == "-" || c == "-") ? "n/a" : sprintf("%.0f/s", ncpu * 1e6 / (a + b + c)) }
            BEGIN {
                printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", t, us(as), us(ac), ceil(as, ac, 0),
                    us(bs), us(bc), ceil(bs, bc, 0), us1(cu), us1(cs), us1(cr), ceil(cu, cs, cr)
            }'
    done
}

notes_from_results() {
    awk '$2 == "full" && $5 != "-" && $5 > 0 { printf "- round %s, %s: %s %% of the (a) connections resumed (expected 0)\n", $3, $1, $5 }
         $2 == "resumed" && $5 != "-" && $5 < 90 { printf "- round %s, %s: only %s %% of the (b) connections resumed: that cell is mostly full handshakes\n", $3, $1, $5 }
         $2 == "resumed12" && $5 != "-" && $5 < 90 { printf "- round %s, %s: only %s %% of the (b'\'') connections resumed\n", $3, $1, $5 }
         $2 == "keepalive" && $7 != "-" && ($7 > 0 || $8 > 0) { printf "- round %s, %s: wrk saw %d socket errors, %d non-2xx/3xx responses\n", $3, $1, $7, $8 }
         ($2 == "full" || $2 == "resumed") && $6 != "-" && $6 < 100 { printf "- round %s, %s %s: %s bytes read per connection: the request failed\n", $3, $1, $2, $6 }' \
        "$RESULTS" >>"$NOTES"
}

report() {
    echo "## TLS benchmark"
    echo
    machine_line
    echo "$(openssl version | awk '{ print $1, $2 }'), $(nginx_version), $(haproxy -v | awk 'NR == 1 { print "haproxy " $3 }'), $(wrk_version), $(proxyd_at)."
    echo "Median of $ROUNDS round(s), $DURATION s per cell; 1 worker each; ECDSA P-256 certificate; 100-byte body from bench/origin."
    echo "(a), (b): $CLIENTS parallel \`openssl s_time\` clients, TLS 1.3 $SUITE, one GET per connection; (b'): the same without the GET, TLS 1.2;"
    echo "(c): wrk -t1 -c$CONNS over https. Clients, servers and the origin share the CPUs, so the rates are bounded by"
    echo "the clients too; \"server CPU per\" (user+system time of the server's processes / connections or requests)"
    echo "is the server's own cost, independent of how fast the clients are."
    echo
    table
    echo
    echo "Where the CPU goes (per connection for (a) and (b), per request for (c); medians). \"clients\": the"
    echo "s_time processes' user+system time; \"ceiling\": $(nproc) CPUs / (the sum), the rate if every CPU were busy:"
    echo
    cpu_table
    echo
    notes_from_results
    [ -n "$PROXYD_NA" ] && note "proxyd: n/a: $PROXYD_NA"
    notes_block
    commands_block
    config_blocks nginx/nginx.conf haproxy/haproxy.cfg proxyd/proxy.yaml proxyd/bench.yaml
}

# ---- main ----------------------------------------------------------------

main() {
    local r t
    ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
    for t in origin $TARGETS; do
        if port_taken "$(port_of "$t")"; then
            log "tls_bench: port $(port_of "$t") ($t) is already in use; stop what listens there first"
            exit 1
        fi
    done
    for t in openssl nginx haproxy wrk curl; do
        command -v "$t" >/dev/null || { log "tls_bench: $t is not installed (apt-get install $t)"; exit 1; }
    done
    mkdir -p "$BIN"
    if [ ! -x "$BIN/origin" ] || [ "$ROOT/bench/origin.c" -nt "$BIN/origin" ]; then
        cc -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -Werror -o "$BIN/origin" "$ROOT/bench/origin.c"
    fi
    make_cert
    start_bg "$TMP/origin.log" "$BIN/origin" "$ORIGIN_PORT" --body 100
    ORIGIN_PID=$LAST_PID
    local i
    for i in $(seq 1 50); do
        [ "$(curl -s --max-time 1 "http://127.0.0.1:$ORIGIN_PORT/" | wc -c)" -eq 100 ] && break
        [ "$i" = 50 ] && { log "tls_bench: the origin did not start: $(cat "$TMP/origin.log")"; exit 1; }
        sleep 0.1
    done
    for r in $(seq 1 "$ROUNDS"); do round "$r"; done
    report
}

main
