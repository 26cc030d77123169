#!/bin/bash
# compress_bench.sh - response compression through proxyd and through nginx,
# one worker each, both proxying the same origin: requests per second, server
# CPU per request and bytes per response, for gzip at the same level in both,
# with proxyd's br and zstd beside them and the uncompressed answers for scale.
#
# usage: bench/compress_bench.sh [-r ROUNDS] [-d SECONDS] [-c CONNS] [-l GZIP_LEVEL]
#                                [-b BROTLI_LEVEL] [-z ZSTD_LEVEL] [-w WARMUP_SECONDS]
#   -r  rounds (default 3); each round starts each proxy once and runs every
#       cell on it; the tables show the median over rounds
#   -d  seconds per wrk run (default 5)
#   -c  wrk connections (default 16)
#   -l  gzip level for both proxies (default 5: nginx's gzip_comp_level,
#       proxyd's compression.level)
#   -b  proxyd's brotli_level (default 4); -z its zstd_level (default 3)
#   -w  seconds of discarded load after each start (default 1)
#
# Bodies: two 100 KiB files the script writes with a fixed seed, an HTML page
# (text/html; charset=utf-8: markup, text, links) and a JSON API answer
# (application/json: 350 records), each served by its own bench/origin
# (--body-file).  Load: `wrk -t1 -cC -dDs --latency` with keep-alive and
# `Accept-Encoding: CODING` (none for identity).  Each proxy keeps upstream
# connections alive, logs nothing and compresses those two types only.
#
# Columns: req/s; server CPU per request = user+system time of the proxy's
# processes (master and worker) during the run / requests wrk counted, which
# does not depend on how the 2 shared CPUs are divided; bytes per response =
# one response as it comes (status line, fields, chunk framing and body, curl
# --raw); body = its body's bytes.  Each body is checked once per round: it is
# decoded (gzip, zstd, python3-brotli) and compared with the file.
# nginx has no brotli or zstd in Debian 12: those cells are proxyd only.
#
# Ports: origins 18180 (html) and 18181 (json), proxyd 18182, nginx 18183 (on
# 127.0.0.1; the script stops if one is taken).  PROXYD and PROXYCTL name
# other builds (default bin/proxyd, bin/proxyctl).  Output: Markdown on
# stdout, progress on stderr.  Every process started here is stopped by PID.
set -eu

ROUNDS=3
DURATION=5
CONNS=16
GZ_LEVEL=5
BR_LEVEL=4
ZS_LEVEL=3
WARMUP=1
while getopts r:d:c:l:b:z:w:h opt; do
    case $opt in
    r) ROUNDS=$OPTARG ;;
    d) DURATION=$OPTARG ;;
    c) CONNS=$OPTARG ;;
    l) GZ_LEVEL=$OPTARG ;;
    b) BR_LEVEL=$OPTARG ;;
    z) ZS_LEVEL=$OPTARG ;;
    w) WARMUP=$OPTARG ;;
    *) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/build/bench
PROXYD=${PROXYD:-$ROOT/bin/proxyd}
PROXYCTL=${PROXYCTL:-$ROOT/bin/proxyctl}
BODIES="html json"
TMP=$(mktemp -d /tmp/compress-bench-XXXXXX)
chmod 755 "$TMP"                # nginx workers run as nobody when started as root
RESULTS=$TMP/results.txt        # target body coding round rps p50 p99 errors non2xx cpu user sys rest
BODYSIZE=$TMP/bodysize.txt      # target body coding round body_bytes response_bytes ok|bad
COMMANDS=$TMP/commands.txt
NOTES=$TMP/notes.txt
: >"$RESULTS"
: >"$BODYSIZE"
: >"$COMMANDS"
: >"$NOTES"
STARTED=""

# log, note, record, start_bg, stop_pid, cleanup (and the traps), port_taken,
# wait_http, measure_wrk, parse_wrk, median, fmt_*, nginx_head: bench/lib.sh
. "$ROOT/bench/lib.sh"

port_of() {
    case $1 in
    html) echo 18180 ;; json) echo 18181 ;; proxyd) echo 18182 ;; nginx) echo 18183 ;;
    esac
}
ctype_of() { if [ "$1" = html ]; then echo "text/html; charset=utf-8"; else echo "application/json"; fi; }
codings_of() { if [ "$1" = nginx ]; then echo "identity gzip"; else echo "identity gzip br zstd"; fi; }

# ---- the bodies ------------------------------------------------------------

write_bodies() {
    /usr/bin/python3 - "$TMP" <<'EOF'
import json, random, sys
out = sys.argv[1]
rnd = random.Random(20240614)
words = ("proxy stream compress request response header body origin cache route site upstream "
         "balance health metric latency worker socket buffer table generation reload certificate "
         "the of and to in is for on with by at from as an be this that it are was").split()
def sentence(n):
    return " ".join(rnd.choice(words) for _ in range(n)).capitalize() + "."
size = 100 * 1024
html = ["<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Catalogue</title>"
        "<link rel=\"stylesheet\" href=\"/assets/site.css\"></head>\n<body>\n<main class=\"catalogue\">\n"]
i = 0
while sum(map(len, html)) < size:
    i += 1
    html.append(f"<article class=\"item\" id=\"item-{i}\"><h2><a href=\"/items/{i}-{rnd.choice(words)}\">"
                f"{sentence(4)}</a></h2><p class=\"price\">{rnd.randrange(100, 99999) / 100:.2f} EUR</p>"
                f"<p>{sentence(rnd.randrange(12, 40))}</p><ul class=\"tags\">"
                + "".join(f"<li>{rnd.choice(words)}</li>" for _ in range(rnd.randrange(1, 5)))
                + "</ul></article>\n")
page = "".join(html)[:size - 16] + "</main></body>\n"
open(f"{out}/body.html", "w").write(page.ljust(size)[:size])
items, i = [], 0
while True:
    i += 1
    items.append({"id": i, "sku": f"SKU-{rnd.randrange(10**8):08d}", "name": sentence(3),
                  "price": rnd.randrange(100, 99999) / 100, "in_stock": rnd.random() < 0.7,
                  "tags": rnd.sample(words, rnd.randrange(1, 4)), "description": sentence(rnd.randrange(8, 25)),
                  "updated": f"2024-{rnd.randrange(1, 13):02d}-{rnd.randrange(1, 29):02d}T12:00:00Z"})
    text = json.dumps({"items": items, "next": None}, separators=(",", ":"))
    if len(text) >= size:
        break
open(f"{out}/body.json", "w").write(text[:size - 20].rsplit("},", 1)[0] + "}],\"next\":null}")
EOF
}

# ---- targets ---------------------------------------------------------------

write_nginx_conf() {            # DIR
    mkdir -p "$1"
    nginx_head "$1" 1 >"$1/nginx.conf"
    cat >>"$1/nginx.conf" <<EOF
    gzip on;
    gzip_comp_level $GZ_LEVEL;
    gzip_min_length 256;
    gzip_types text/html application/json;
    gzip_vary on;
    gzip_proxied any;
    upstream html { server 127.0.0.1:$(port_of html); keepalive 64; keepalive_requests 1000000; }
    upstream json { server 127.0.0.1:$(port_of json); keepalive 64; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:$(port_of nginx);
        location /html/ { proxy_pass http://html; proxy_http_version 1.1; proxy_set_header Connection ""; }
        location /json/ { proxy_pass http://json; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
}
EOF
}

prepare_proxyd() {              # DIR
    mkdir -p "$1"
    cat >"$1/proxy.yaml" <<EOF
listen: {http: ["127.0.0.1:$(port_of proxyd)"], https: []}
workers: 1
$ROOT_USER_LINE
admin: {socket: $1/admin.sock}
logs: {access: "off"}
EOF
    cat >"$1/bench.yaml" <<EOF
site: bench
default: true
hosts: [127.0.0.1]
tls: {certificate: none}
upstreams:
  html: {keepalive: 64, servers: [{address: "127.0.0.1:$(port_of html)"}]}
  json: {keepalive: 64, servers: [{address: "127.0.0.1:$(port_of json)"}]}
routes:
  - match: {path_prefix: /html/}
    upstream: html
  - match: {path_prefix: /json/}
    upstream: json
compression:
  gzip: true
  brotli: true
  zstd: true
  level: $GZ_LEVEL
  brotli_level: $BR_LEVEL
  zstd_level: $ZS_LEVEL
  min_length: 256
  types: [text/html, application/json]
EOF
    rm -f "$1/store.db"*
    proxyd_store "$1"
}

start_target() {                # NAME; TARGET_PID
    local d=$TMP/$1
    case $1 in
    nginx)
        write_nginx_conf "$d"
        start_bg "$d/out.log" nginx -p "$d" -e "$d/error.log" -c "$d/nginx.conf" -g 'daemon off;'
        ;;
    proxyd)
        if ! prepare_proxyd "$d"; then
            log "proxyctl could not build the store: $(tail -n 3 "$d/proxyctl.log")"
            return 1
        fi
        start_bg "$d/out.log" "$PROXYD" --db "$d/store.db" --foreground
        ;;
    esac
    TARGET_PID=$LAST_PID
    local i
    for i in $(seq 1 50); do
        [ "$(curl -s -o /dev/null --max-time 1 -w '%{http_code}' "http://127.0.0.1:$(port_of "$1")/html/")" = 200 ] && return 0
        kill -0 "$TARGET_PID" 2>/dev/null || break
        sleep 0.1
    done
    log "$1 did not answer within 5 s: $(tail -n 3 "$d/out.log" 2>/dev/null)"
    stop_pid "$TARGET_PID"
    return 1
}

# ---- load --------------------------------------------------------------------

# check_body TARGET BODY CODING ROUND: the body as curl gets it, decoded, is the
# file; records the body's bytes and the whole response's (head, chunk framing
# and body, as they came: curl --raw).
check_body() {
    local url ae=() size wire ok=bad
    url="http://127.0.0.1:$(port_of "$1")/$2/"
    [ "$3" = identity ] || ae=(-H "Accept-Encoding: $3")
    size=$(curl -s --max-time 5 "${ae[@]}" -o "$TMP/raw" -w '%{size_download}' "$url" || echo 0)
    wire=$(curl -s --raw --max-time 5 "${ae[@]}" -o /dev/null -w '%{size_header} %{size_download}' "$url" |
        awk '{ print $1 + $2 }')
    case $3 in
    identity) cp "$TMP/raw" "$TMP/dec" ;;
    gzip) gzip -dc <"$TMP/raw" >"$TMP/dec" 2>/dev/null || : >"$TMP/dec" ;;
    zstd) zstd -qdc <"$TMP/raw" >"$TMP/dec" 2>/dev/null || : >"$TMP/dec" ;;
    br) /usr/bin/python3 -c 'import brotli, sys; sys.stdout.buffer.write(brotli.decompress(sys.stdin.buffer.read()))' \
        <"$TMP/raw" >"$TMP/dec" 2>/dev/null || : >"$TMP/dec" ;;
    esac
    cmp -s "$TMP/dec" "$TMP/body.$2" && ok=ok
    echo "$1 $2 $3 $4 $size $wire $ok" >>"$BODYSIZE"
    [ "$ok" = ok ] || note "round $4, $1 $2 $3: the body did not decode to the origin's bytes"
}

run_wrk() {                     # TARGET BODY CODING ROUND
    local out cpu fields cmd=(wrk -t1 "-c$CONNS" "-d${DURATION}s" --latency)
    [ "$3" = identity ] || cmd+=(-H "Accept-Encoding: $3")
    cmd+=("http://127.0.0.1:$(port_of "$1")/$2/")
    out=$TMP/wrk-$1-$2-$3-$4.txt
    record "${cmd[@]}"
    ORIGIN_PID=$(cat "$TMP/origin-$2.pid")
    cpu=$(measure_wrk "$out" "${cmd[@]}")
    fields=$(parse_wrk "$out")
    echo "$1 $2 $3 $4 $fields $cpu" >>"$RESULTS"
    log "  $1 $2 $3: $fields; CPU per request (server, user, system, wrk+origin): $cpu µs"
}

round() {                       # ROUND
    local t b c
    for t in nginx proxyd; do
        log "round $1: $t"
        if ! start_target "$t"; then
            note "round $1: $t did not start"
            continue
        fi
        if [ "$WARMUP" -gt 0 ]; then
            wrk -t1 "-c$CONNS" "-d${WARMUP}s" -H 'Accept-Encoding: gzip' "http://127.0.0.1:$(port_of "$t")/html/" \
                >/dev/null 2>&1 || true
        fi
        for b in $BODIES; do
            for c in $(codings_of "$t"); do
                check_body "$t" "$b" "$c" "$1"
                run_wrk "$t" "$b" "$c" "$1"
            done
        done
        stop_pid "$TARGET_PID"
    done
}

# ---- report --------------------------------------------------------------------

cell() {                        # TARGET BODY CODING COLUMN
    awk -v t="$1" -v b="$2" -v c="$3" -v k="$4" '$1 == t && $2 == b && $3 == c && $k != "-" { print $k }' \
        "$RESULTS" | median
}

body_cell() {                   # TARGET BODY CODING [COLUMN: 5 body, 6 response]
    awk -v t="$1" -v b="$2" -v c="$3" -v k="${4:-5}" '$1 == t && $2 == b && $3 == c { print $k }' "$BODYSIZE" | median
}

fmt_us() { if [ "$1" = - ]; then echo n/a; else awk -v v="$1" 'BEGIN { printf "%.0f µs", v }'; fi; }

table() {
    local b t c rps cpu
    echo "| body | proxy | coding (level) | req/s | p99 | server CPU per request | bytes per response | body bytes |"
    echo "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"
    for b in $BODIES; do
        for c in identity gzip br zstd; do
            for t in nginx proxyd; do
                case " $(codings_of "$t") " in *" $c "*) ;; *) continue ;; esac
                rps=$(cell "$t" "$b" "$c" 5)
                cpu=$(cell "$t" "$b" "$c" 10)
                echo "| $b | $t | $c$(level_of "$c") | $(fmt_rps "$rps") | $(fmt_ms "$(cell "$t" "$b" "$c" 7)") | $(fmt_us "$cpu") | $(body_cell "$t" "$b" "$c" 6) | $(body_cell "$t" "$b" "$c") |"
            done
        done
    done
}

level_of() {
    case $1 in gzip) echo " ($GZ_LEVEL)" ;; br) echo " ($BR_LEVEL)" ;; zstd) echo " ($ZS_LEVEL)" ;; *) echo "" ;; esac
}

# proxyd / nginx: gzip CPU per request (medians, and each round's ratio),
# gzip body bytes, and identity CPU per request, per body.
ratio_table() {
    local b rounds
    echo "| body | gzip CPU per request, proxyd / nginx | per round | gzip body bytes, proxyd / nginx | identity CPU per request, proxyd / nginx |"
    echo "| --- | ---: | --- | ---: | ---: |"
    for b in $BODIES; do
        rounds=$(awk -v b="$b" '$2 == b && $3 == "gzip" && $10 != "-" { if ($1 == "proxyd") p[$4] = $10; else n[$4] = $10 }
            END { for (r = 1; r <= 1000; r++) if ((r in p) && (r in n) && n[r] > 0) printf " %.2f", p[r] / n[r] }' "$RESULTS")
        awk -v b="$b" -v rounds="$rounds" \
            -v pc="$(cell proxyd "$b" gzip 10)" -v nc="$(cell nginx "$b" gzip 10)" \
            -v pb="$(body_cell proxyd "$b" gzip)" -v nb="$(body_cell nginx "$b" gzip)" \
            -v pi="$(cell proxyd "$b" identity 10)" -v ni="$(cell nginx "$b" identity 10)" 'BEGIN {
                r1 = (pc != "-" && nc > 0) ? sprintf("%.2f (%.0f / %.0f µs)", pc / nc, pc, nc) : "n/a"
                r2 = (pb != "-" && nb > 0) ? sprintf("%.3f (%d / %d)", pb / nb, pb, nb) : "n/a"
                r3 = (pi != "-" && ni > 0) ? sprintf("%.2f (%.0f / %.0f µs)", pi / ni, pi, ni) : "n/a"
                printf "| %s | %s |%s | %s | %s |\n", b, r1, rounds, r2, r3
            }'
    done
}

report() {
    echo "## Compression benchmark"
    echo
    machine_line
    echo "$(nginx_version), $(wrk_version), zlib $(pkg-config --modversion zlib), brotli $(pkg-config --modversion libbrotlienc), zstd $(pkg-config --modversion libzstd); $(proxyd_at)."
    echo "Median of $ROUNDS round(s); wrk -t1 -c$CONNS -d${DURATION}s --latency per cell, keep-alive; 1 worker each; 100 KiB bodies"
    echo "from bench/origin (html $(wc -c <"$TMP/body.html") bytes, json $(wc -c <"$TMP/body.json") bytes). wrk, the proxy and the origin share the CPUs."
    echo
    table
    echo
    ratio_table
    echo
    notes_block
    commands_block
    config_blocks nginx/nginx.conf proxyd/proxy.yaml proxyd/bench.yaml
}

main() {
    local r b
    ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
    for t in html json proxyd nginx; do
        if port_taken "$(port_of "$t")"; then
            log "compress_bench: port $(port_of "$t") ($t) is already in use; stop what listens there first"
            exit 1
        fi
    done
    if [ ! -x "$PROXYD" ] || [ ! -x "$PROXYCTL" ]; then
        log "compress_bench: $PROXYD or $PROXYCTL is missing (make)"
        exit 1
    fi
    mkdir -p "$BIN"
    if [ ! -x "$BIN/origin" ] || [ "$ROOT/bench/origin.c" -nt "$BIN/origin" ]; then
        cc -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -Werror -o "$BIN/origin" "$ROOT/bench/origin.c"
    fi
    write_bodies
    for b in $BODIES; do
        start_bg "$TMP/origin-$b.log" "$BIN/origin" "$(port_of "$b")" --body-file "$TMP/body.$b" \
            --type "$(ctype_of "$b")" --pid-file "$TMP/origin-$b.pid"
        if ! wait_http "$(port_of "$b")" "$LAST_PID"; then
            log "compress_bench: the $b origin did not start: $(cat "$TMP/origin-$b.log")"
            exit 1
        fi
    done
    for r in $(seq 1 "$ROUNDS"); do round "$r"; done
    report
}

main
