#!/bin/bash
# fastcgi_bench.sh - what a FastCGI route costs the proxy: server CPU per
# request and requests/s through proxyd's fastcgi action and through nginx's
# fastcgi_pass, in front of the same php-fpm, in the same run, with 1 and 2
# proxy workers.
#
# usage: bench/fastcgi_bench.sh [-r ROUNDS] [-d SECONDS] [-c CONNS] [-p CHILDREN]
#   -r  rounds (default 3); each round runs every (workers, proxy, script)
#       cell once, interleaved; the table shows the median
#   -d  seconds per wrk run (default 10)
#   -c  wrk connections (default 16)
#   -p  php-fpm children (default 16: as many as connections; fewer makes
#       requests wait for a child, see docs/fastcgi.md)
#
# Scripts (php-fpm 8.2, pm static with CHILDREN children, on a unix socket; both
# proxies keep their connections to it, nginx with fastcgi_keep_conn):
#   /hello.php  a 100-byte body
#   /big.php    a 64 KiB body
# Load: `wrk -t1 -cC -dDs --latency`, keep-alive, after a 1 s warm-up.  PHP
# dominates the machine's CPU; the decisive figure is the proxy's own CPU per
# request (user + system of its processes, bench/lib.sh), php-fpm's is under
# "rest".  Buffering is on for both (the defaults).
#
# Ports: proxyd 18481, nginx 18482 (127.0.0.1; the script stops if one is
# taken).  PROXYD / PROXYCTL name other builds (default bin/).  Output:
# Markdown on stdout; progress on stderr.  Every process started here is
# stopped by its PID on exit.
set -eu

ROUNDS=3
DURATION=10
CONNS=16
CHILDREN=16
while getopts r:d:c:p:h opt; do
    case $opt in
    r) ROUNDS=$OPTARG ;;
    d) DURATION=$OPTARG ;;
    c) CONNS=$OPTARG ;;
    p) CHILDREN=$OPTARG ;;
    *) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PROXYD=${PROXYD:-$ROOT/bin/proxyd}
PROXYCTL=${PROXYCTL:-$ROOT/bin/proxyctl}
PHP_FPM=${PHP_FPM:-$(command -v php-fpm8.2 || echo /usr/sbin/php-fpm8.2)}
PROXYD_PORT=18481
NGINX_PORT=18482
SCRIPTS="hello big"
WORKER_COUNTS="1 2"
TMP=$(mktemp -d /tmp/fcgi-bench-XXXXXX)
chmod 755 "$TMP"                # nginx workers run as nobody when started as root
SOCK=$TMP/fpm.sock
WWW=$TMP/www
RESULTS=$TMP/results.txt        # workers proxy script round rps p50 p99 err non2xx cpu user sys rest
COMMANDS=$TMP/commands.txt
NOTES=$TMP/notes.txt
: >"$RESULTS"
: >"$COMMANDS"
: >"$NOTES"
STARTED=""

# log, note, record, start_bg, stop_pid, cleanup (and the traps), port_taken,
# wait_http, measure_wrk, parse_wrk, median, fmt_*: bench/lib.sh
. "$ROOT/bench/lib.sh"

start_fpm() {
    mkdir -p "$WWW"
    printf '<?php echo str_repeat("x", 100);\n' >"$WWW/hello.php"
    printf '<?php echo str_repeat("0123456789abcdef", 4096);\n' >"$WWW/big.php"
    local user=""
    [ "$(id -u)" = 0 ] && user=$'user = root\ngroup = root'
    cat >"$TMP/fpm.conf" <<EOF
[global]
pid = $TMP/fpm.pid
error_log = $TMP/fpm.log
daemonize = no
[bench]
$user
listen = $SOCK
listen.mode = 0666
pm = static
pm.max_children = $CHILDREN
pm.max_requests = 0
EOF
    local args=(-F -y "$TMP/fpm.conf")
    [ "$(id -u)" = 0 ] && args=(-R "${args[@]}")
    start_bg "$TMP/fpm.out" "$PHP_FPM" "${args[@]}"
    ORIGIN_PID=$LAST_PID # measure_wrk counts it under "rest"
    local i
    for i in $(seq 1 50); do [ -S "$SOCK" ] && return 0; sleep 0.1; done
    return 1
}

write_nginx_conf() {            # DIR WORKERS
    mkdir -p "$1"
    {
        nginx_head "$1" $2
        cat <<EOF
    upstream fpm {
        server unix:$SOCK;
        keepalive 16;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        root $WWW;
        location = / { return 200 "ok"; }
        location ~ \.php\$ {
            fastcgi_pass fpm;
            fastcgi_keep_conn on;
            include /etc/nginx/fastcgi_params;
            fastcgi_param SCRIPT_FILENAME \$document_root\$fastcgi_script_name;
        }
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
EOF
    cat >"$d/bench.yaml" <<EOF
site: bench
default: true
hosts: [127.0.0.1]
security_headers: none
upstreams:
  fpm: {keepalive: 16, servers: [{address: "unix:$SOCK"}]}
routes:
  - match: {path_regex: '\.php\$'}
    fastcgi: {upstream: fpm, root: $WWW}
  - match: {path_exact: /}
    return: {status: 200, body: "ok"}
EOF
    proxyd_store "$d"
}

run_cell() {                    # NAME WORKERS ROUND
    local name=$1 w=$2 round=$3 s out cpu size
    log "round $round: $name, $w worker(s)"
    if ! start_proxy "$name" "$w" "r$round"; then
        for s in $SCRIPTS; do echo "$w $name $s $round - - - - - - - - -" >>"$RESULTS"; done
        return 0
    fi
    for s in $SCRIPTS; do
        local url="http://127.0.0.1:$TARGET_PORT/$s.php"
        size=$(curl -s --max-time 5 "$url" | wc -c)
        [ "$s" = hello ] && [ "$size" != 100 ] && note "round $round, $name $s: body of $size bytes (want 100)"
        [ "$s" = big ] && [ "$size" != 65536 ] && note "round $round, $name $s: body of $size bytes (want 65536)"
        wrk -t1 "-c$CONNS" -d1s "$url" >/dev/null 2>&1 || true
        local cmd=(wrk -t1 "-c$CONNS" "-d${DURATION}s" --latency "$url")
        record "${cmd[@]}"
        out=$TMP/wrk-$name-$w-$s-$round.txt
        cpu=$(measure_wrk "$out" "${cmd[@]}")
        echo "$w $name $s $round $(parse_wrk "$out") $cpu" >>"$RESULTS"
        log "  /$s.php: $(parse_wrk "$out") cpu $cpu"
    done
    stop_pid "$TARGET_PID"
}

table() {
    local w s
    echo "| workers | script | proxyd req/s | proxyd CPU µs/req | nginx req/s | nginx CPU µs/req | proxyd / nginx CPU | php-fpm + wrk µs/req (proxyd, nginx) |"
    echo "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    for w in $WORKER_COUNTS; do
        for s in $SCRIPTS; do
            local pc nc
            pc=$(cell "$w" proxyd "$s" 10)
            nc=$(cell "$w" nginx "$s" 10)
            echo "| $w | /$s.php | $(fmt_rps "$(cell "$w" proxyd "$s" 5)") | $pc | $(fmt_rps "$(cell "$w" nginx "$s" 5)") | $nc | $(ratio "$pc" "$nc") | $(cell "$w" proxyd "$s" 13), $(cell "$w" nginx "$s" 13) |"
        done
    done
}

report() {
    echo "## FastCGI benchmark"
    echo
    machine_line
    echo "$(nginx_version), $(wrk_version), $("$PHP_FPM" -v | head -n 1 | cut -d' ' -f1-2), $(proxyd_at)."
    echo "Median of $ROUNDS round(s); wrk -t1 -c$CONNS -d${DURATION}s per cell, keep-alive; one php-fpm ($CHILDREN children) behind both proxies."
    echo "CPU µs/req: user + system of the proxy's processes per request."
    echo
    table
    echo
    awk '$5 != "-" && ($8 > 0 || $9 > 0) {
        printf "- round %s, %s %s workers /%s.php: %d socket errors, %d non-2xx\n", $4, $2, $1, $3, $8, $9 }' "$RESULTS" >>"$NOTES"
    notes_block
    commands_block
    config_blocks fpm.conf
}

main() {
    local r w p
    ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
    for p in $PROXYD_PORT $NGINX_PORT; do
        if port_taken "$p"; then log "fastcgi_bench: port $p is in use"; exit 1; fi
    done
    for p in "$PROXYD" "$PROXYCTL" "$PHP_FPM"; do [ -x "$p" ] || { log "fastcgi_bench: $p is missing"; exit 1; }; done
    command -v nginx >/dev/null && command -v wrk >/dev/null || { log "fastcgi_bench: needs nginx and wrk"; exit 1; }
    start_fpm || { log "php-fpm did not start: $(tail -n 3 "$TMP/fpm.log" 2>/dev/null)"; exit 1; }
    for r in $(seq 1 "$ROUNDS"); do
        for w in $WORKER_COUNTS; do
            run_cell proxyd "$w" "$r"
            run_cell nginx "$w" "$r"
        done
    done
    report
}

main
