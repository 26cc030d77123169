#!/bin/bash
# cache_bench.sh - the response cache (issue 13): cache-hit req/s and server CPU
# per request through proxyd and through nginx proxy_cache (the same zone
# sizes), the cold-key stampede (100 clients at once on one key of a slow
# origin: how many requests reach the origin) and proxyd's index memory per
# entry, in one run with interleaved rounds.
#
# usage: bench/cache_bench.sh [-r ROUNDS] [-d SECONDS] [-c CONNS] [-n FILL]
#   -r  rounds (default 3); each round starts proxyd, nginx, proxyd, nginx
#       (1 worker, then 2), each with an empty cache; the table shows medians
#   -d  seconds per wrk run (default 5)
#   -c  wrk connections (default 50)
#   -n  distinct 1 KiB keys filled into one proxyd at the end, for its
#       /cache/stats entry count (default 20000; 0 skips the fill)
#
# The origin (127.0.0.1:18591) is a threaded Python server that counts the
# requests it answers: GET /obj/N is N bytes of 'x', /slow/... the same 1 KiB
# after 1 s, without Cache-Control or Expires, so the zone's 200 validity
# decides.  Both proxies keep upstream connections alive and cache every
# path but / (which each answers itself):
#   proxyd (18581): proxy.yaml cache_zones {z: {path, max_size: 1g, memory: 64m}},
#                   the route cache {zone: z, valid: {"200": 10m}}
#   nginx  (18582): proxy_cache_path DIR levels=1:2 keys_zone=z:64m max_size=1g,
#                   proxy_cache_valid 200 10m, proxy_cache_lock on, X-Cache-Status,
#                   sendfile on (as Debian's nginx.conf; its tcp_nopush is left
#                   out: on loopback with keep-alive it held each 100 KiB answer
#                   ~40 ms, 1.7k req/s against 17k without it)
# In each cell: /obj/1024 and /obj/102400 are fetched until the answer says
# X-Cache-Status: HIT (at most 20 tries), a HEAD must say HIT too and the GET
# body must have the object's size, otherwise the row is not measured (n/a,
# and a note).  Then `wrk -t1 -cC -d1s` (discarded) and `wrk -t1 -cC -dDs
# --latency`; the origin's request count over the measured run must stay 0.
# Server CPU per request = user + system of the proxy's processes over the
# requests wrk counted (bench/lib.sh); it does not depend on how the 2 shared
# CPUs are divided, the req/s do.
# Stampede, in the same cell after the hits: 100 Python threads connect, wait
# on a barrier and send GET /slow/KEY (a new key) at once; the origin's count
# for that key is the figure (nginx: proxy_cache_lock, 5 s lock timeout).
# Index memory: proxyd's admin GET /cache/stats (zones: entries, max_entries,
# index_bytes_per_entry); nginx's figure is its documentation's, not measured.
#
# Ports: proxyd 18581, nginx 18582, origin 18591 (127.0.0.1; the script stops
# if one is taken).  PROXYD / PROXYCTL name other builds (default bin/).
# Output: Markdown on stdout; progress on stderr.  Every process started here
# is stopped by its PID on exit; the caches live under a mktemp folder.
set -eu

ROUNDS=3
DURATION=5
CONNS=50
FILL=20000
while getopts r:d:c:n:h opt; do
    case $opt in
    r) ROUNDS=$OPTARG ;;
    d) DURATION=$OPTARG ;;
    c) CONNS=$OPTARG ;;
    n) FILL=$OPTARG ;;
    *) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PROXYD=${PROXYD:-$ROOT/bin/proxyd}
PROXYCTL=${PROXYCTL:-$ROOT/bin/proxyctl}
PROXYD_PORT=18581
NGINX_PORT=18582
ORIGIN_PORT=18591
SIZES="1024 102400"
WORKER_COUNTS="1 2"
STAMPEDE=100
TMP=$(mktemp -d /tmp/cache-bench-XXXXXX)
chmod 755 "$TMP"                # nginx workers run as nobody when started as root
RESULTS=$TMP/results.txt        # workers proxy size round rps p50 p99 err non2xx cpu user sys rest origin_reqs
STAMPEDES=$TMP/stampede.txt     # workers proxy round origin_reqs answered_200 slowest_ms statuses
STATS=$TMP/stats.txt            # workers round entries max_entries index_bytes_per_entry hits misses size
COMMANDS=$TMP/commands.txt
NOTES=$TMP/notes.txt
: >"$RESULTS"
: >"$STAMPEDES"
: >"$STATS"
: >"$COMMANDS"
: >"$NOTES"
STARTED=""

# log, note, record, start_bg, stop_pid, cleanup (and the traps), port_taken,
# wait_http, measure_wrk, parse_wrk, median, fmt_*, nginx_head, proxyd_store,
# machine_line, notes_block, commands_block, config_blocks: bench/lib.sh
. "$ROOT/bench/lib.sh"

# ---- helpers in Python ---------------------------------------------------------

write_helpers() {
    cat >"$TMP/origin.py" <<'EOF'
# The origin: GET /obj/N -> N bytes; /slow/... -> 1 KiB after 1 s; / -> "ok";
# GET /count -> {"PATH?QUERY": requests answered, ...} (itself not counted).
import json, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

counts, lock = {}, threading.Lock()

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True      # and one write per answer (flushed
    wbufsize = 1 << 20                  # after each request): no 40 ms stalls
    def log_message(self, *a): pass
    def answer(self, body, ctype="text/plain"):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
    def do_GET(self):
        p = self.path
        if p == "/count":
            with lock:
                return self.answer(json.dumps(counts).encode(), "application/json")
        if p == "/":
            return self.answer(b"ok")
        with lock:
            counts[p] = counts.get(p, 0) + 1
        if p.startswith("/slow/"):
            time.sleep(1.0)
            return self.answer(b"x" * 1024)
        if p.startswith("/obj/"):
            try:
                n = int(p[5:].split("?")[0])
            except ValueError:
                n = -1
            if 0 <= n <= 10 << 20:
                return self.answer(b"x" * n)
        self.send_error(404)
    do_HEAD = do_GET

class S(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024

S(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
EOF
    cat >"$TMP/stampede.py" <<'EOF'
# stampede.py PORT PATH N: N connections, a barrier, N GETs of PATH at once.
# Prints "answered_200 slowest_ms STATUS:X-CACHE-STATUS=count,...".
import http.client, sys, threading, time
port, path, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
barrier = threading.Barrier(n, timeout=20)
res, lock = [], threading.Lock()

def one():
    r = ("err", "-", 0.0)
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        c.connect()
        barrier.wait()
        t = time.monotonic()
        c.request("GET", path)
        a = c.getresponse()
        a.read()
        r = (str(a.status), a.getheader("X-Cache-Status", "-"), time.monotonic() - t)
        c.close()
    except Exception as e:
        r = ("err:" + type(e).__name__, "-", 0.0)
    with lock:
        res.append(r)

ts = [threading.Thread(target=one, daemon=True) for _ in range(n)]
for t in ts: t.start()
for t in ts: t.join(60)
tally = {}
for s, c, _ in res:
    tally[s + ":" + c] = tally.get(s + ":" + c, 0) + 1
ok = sum(1 for s, _, _ in res if s == "200")
slow = max((d for _, _, d in res), default=0.0)
print(ok, "%.0f" % (slow * 1000), ",".join("%s=%d" % kv for kv in sorted(tally.items())) or "none")
EOF
}

origin_count() {                # PATH-PREFIX: requests the origin answered under it
    curl -s --max-time 5 "http://127.0.0.1:$ORIGIN_PORT/count" |
        python3 -c 'import json, sys
d = json.load(sys.stdin)
print(sum(v for k, v in d.items() if k.startswith(sys.argv[1])))' "$1" 2>/dev/null || echo "-"
}

minus() { awk -v a="$1" -v b="$2" 'BEGIN { if (a ~ /^[0-9]+$/ && b ~ /^[0-9]+$/) print a - b; else print "-" }'; }

# ---- the proxies -----------------------------------------------------------------

write_nginx_conf() {            # DIR WORKERS
    mkdir -p "$1/cache"
    {
        nginx_head "$1" "$2"
        cat <<EOF
    sendfile on;
    proxy_cache_path $1/cache levels=1:2 keys_zone=z:64m max_size=1g;
    upstream app {
        server 127.0.0.1:$ORIGIN_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location = / { return 200 "ok"; }
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache z;
            proxy_cache_valid 200 10m;
            proxy_cache_lock on;
            add_header X-Cache-Status \$upstream_cache_status;
        }
    }
}
EOF
    } >"$1/nginx.conf"
}

prepare_proxyd() {              # DIR WORKERS
    local d=$1
    mkdir -p "$d/cache"
    cat >"$d/proxy.yaml" <<EOF
listen: {http: ["127.0.0.1:$PROXYD_PORT"], https: []}
workers: $2
$ROOT_USER_LINE
admin: {socket: $d/admin.sock}
logs: {access: "off"}
cache_zones:
  z: {path: $d/cache, max_size: 1g, memory: 64m}
EOF
    cat >"$d/bench.yaml" <<EOF
site: bench
default: true
hosts: [127.0.0.1]
security_headers: none
upstreams:
  app: {keepalive: 64, servers: [{address: "127.0.0.1:$ORIGIN_PORT"}]}
routes:
  - match: {path_exact: /}
    return: {status: 200, body: "ok"}
  - match: {path_prefix: /}
    upstream: app
    cache: {zone: z, valid: {"200": 10m}}
EOF
    proxyd_store "$d"
}

cache_stats() {                 # DIR: "entries max_entries index_bytes_per_entry hits misses size" of zone z
    curl -s --max-time 5 --unix-socket "$1/admin.sock" http://proxyd/cache/stats >"$1/cache-stats.json" 2>/dev/null || true
    python3 - "$1/cache-stats.json" <<'EOF' 2>/dev/null || echo "- - - - - -"
import json, sys
d = json.load(open(sys.argv[1]))
zs = d.get("zones", d)
z = zs.get("z") if isinstance(zs, dict) else next(x for x in zs if x.get("name") == "z")
print(*(z.get(k, "-") for k in ("entries", "max_entries", "index_bytes_per_entry", "hits", "misses", "size")))
EOF
}

# ---- a cell: one proxy, one worker count ---------------------------------------------

# warm_hit NAME SIZE: true once GET /obj/SIZE says HIT with SIZE bytes and a
# HEAD says HIT; otherwise a note with what came back.
warm_hit() {
    local url="http://127.0.0.1:$TARGET_PORT/obj/$2" i got="" size=0 head=""
    for i in $(seq 1 20); do
        : >"$TMP/hdr"
        size=$(curl -s --max-time 5 -D "$TMP/hdr" -o /dev/null -w '%{size_download}' "$url" || echo 0)
        got=$(awk -F': *' 'tolower($1) == "x-cache-status" { sub(/\r$/, "", $2); print $2 }' "$TMP/hdr")
        [ "$got" = HIT ] && break
        sleep 0.1
    done
    head=$(curl -sI --max-time 5 "$url" | awk -F': *' 'tolower($1) == "x-cache-status" { sub(/\r$/, "", $2); print $2 }')
    if [ "$got" = HIT ] && [ "$head" = HIT ] && [ "$size" = "$2" ]; then
        return 0
    fi
    note "$1 ($w workers, round $round) /obj/$2: not a HIT after $i GETs (GET X-Cache-Status '${got:-none}', $size bytes; HEAD '${head:-none}'; status line '$(head -n 1 "$TMP/hdr" | tr -d '\r')'): row not measured"
    return 1
}

run_cell() {                    # NAME WORKERS ROUND
    local name=$1 w=$2 round=$3 size out cpu o0 o1 url
    log "round $round: $name, $w worker(s)"
    if ! start_proxy "$name" "$w" "r$round"; then
        for size in $SIZES; do echo "$w $name $size $round - - - - - - - - - -" >>"$RESULTS"; done
        echo "$w $name $round - - - -" >>"$STAMPEDES"
        return 0
    fi
    for size in $SIZES; do
        url="http://127.0.0.1:$TARGET_PORT/obj/$size"
        if ! warm_hit "$name" "$size"; then
            echo "$w $name $size $round - - - - - - - - - -" >>"$RESULTS"
            continue
        fi
        wrk -t1 "-c$CONNS" -d1s "$url" >/dev/null 2>&1 || true
        local cmd=(wrk -t1 "-c$CONNS" "-d${DURATION}s" --latency "$url")
        record "${cmd[@]}"
        out=$TMP/wrk-$name-$w-$size-$round.txt
        o0=$(origin_count /obj/)
        cpu=$(measure_wrk "$out" "${cmd[@]}")
        o1=$(origin_count /obj/)
        echo "$w $name $size $round $(parse_wrk "$out") $cpu $(minus "$o1" "$o0")" >>"$RESULTS"
        log "  /obj/$size: $(parse_wrk "$out"); CPU µs/req (server user sys rest) $cpu; origin requests $(minus "$o1" "$o0")"
    done
    stampede "$name" "$w" "$round"
    [ "$name" = proxyd ] && echo "$w $round $(cache_stats "$TARGET_DIR")" >>"$STATS"
    stop_pid "$TARGET_PID"
}

stampede() {                    # NAME WORKERS ROUND
    local path="/slow/$1-$2w-r$3/k" before after res
    before=$(origin_count "$path")
    record python3 "$TMP/stampede.py" "$TARGET_PORT" "/slow/KEY" "$STAMPEDE"
    res=$(timeout 60 python3 "$TMP/stampede.py" "$TARGET_PORT" "$path" "$STAMPEDE" 2>"$TMP/stampede.err" || echo "- - failed")
    sleep 0.5                   # an origin request still on its way counts too
    after=$(origin_count "$path")
    echo "$2 $1 $3 $(minus "$after" "$before") $res" >>"$STAMPEDES"
    log "  stampede $path: origin requests $(minus "$after" "$before"); answers $res"
}

# fill: FILL distinct 1 KiB keys into one proxyd (1 worker; curl --parallel, 8
# at a time, keep-alive), then its /cache/stats.
fill() {
    local before after
    log "fill: $FILL keys into proxyd"
    start_proxy proxyd 1 fill || return 0
    seq 1 "$FILL" | awk -v p="$PROXYD_PORT" '{ printf "url = \"http://127.0.0.1:%s/obj/1024?k=%d\"\noutput = /dev/null\n", p, $1 }' \
        >"$TMP/fill.curl"
    before=$(origin_count "/obj/1024?k=")
    record curl -s --no-progress-meter --parallel --parallel-max 8 -w '%{http_code}\n' -K "$TMP/fill.curl"
    timeout 300 curl -s --no-progress-meter --parallel --parallel-max 8 -w '%{http_code}\n' -K "$TMP/fill.curl" \
        >"$TMP/fill.codes" 2>"$TMP/fill.err" || true
    sleep 1
    after=$(origin_count "/obj/1024?k=")
    FILL_RESULT="$(minus "$after" "$before") $(cache_stats "$TARGET_DIR")"
    FILL_CODES=$(sort "$TMP/fill.codes" | uniq -c | awk '{ printf "%s%s x %s", (NR > 1 ? ", " : ""), $1, $2 }')
    FILL_DU=$(du -sk "$TARGET_DIR/cache" 2>/dev/null | awk '{ print $1 }')
    log "  origin requests, entries max_entries index_bytes hits misses size: $FILL_RESULT; answers: $FILL_CODES"
    stop_pid "$TARGET_PID"
}

# ---- report ------------------------------------------------------------------------

fmt_cpu() { if [ "$1" = - ]; then echo n/a; else echo "$1"; fi; }
fmt_size() { if [ "$1" -ge 1024 ]; then echo "$(($1 / 1024)) KiB"; else echo "$1 B"; fi; }

round_ratios() {                # WORKERS SIZE: proxyd/nginx CPU of each round
    awk -v w="$1" -v s="$2" '$1 == w && $3 == s && $10 != "-" { if ($2 == "proxyd") p[$4] = $10; else n[$4] = $10 }
        END { for (r = 1; r <= 1000; r++) if ((r in p) && (r in n) && n[r] > 0) printf "%s%.2f", (o++ ? ", " : ""), p[r] / n[r] }' "$RESULTS"
}

origin_reqs() {                 # WORKERS NAME SIZE: the origin's requests over the measured runs
    awk -v w="$1" -v n="$2" -v s="$3" '$1 == w && $2 == n && $3 == s && $14 != "-" { t += $14; k++ }
        END { print k ? t : "n/a" }' "$RESULTS"
}

hit_table() {
    local s w pc nc r
    echo "| object | workers | proxyd req/s | proxyd CPU µs/req | nginx req/s | nginx CPU µs/req | proxyd / nginx CPU (target ≤ 0.8) | per round | origin requests while measuring (proxyd, nginx) |"
    echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"
    for s in $SIZES; do
        for w in $WORKER_COUNTS; do
            pc=$(cell "$w" proxyd "$s" 10)
            nc=$(cell "$w" nginx "$s" 10)
            r=$(ratio "$pc" "$nc")
            echo "| $(fmt_size "$s") | $w | $(fmt_rps "$(cell "$w" proxyd "$s" 5)") | $(fmt_cpu "$pc") | $(fmt_rps "$(cell "$w" nginx "$s" 5)") | $(fmt_cpu "$nc") | $r | $(round_ratios "$w" "$s") | $(origin_reqs "$w" proxyd "$s"), $(origin_reqs "$w" nginx "$s") |"
        done
    done
}

stampede_table() {
    local w n
    echo "| workers | proxy | origin requests per round (expected 1) | clients answered 200 per round | slowest answer, ms | answers (status:X-Cache-Status=count), last round |"
    echo "| ---: | --- | --- | --- | --- | --- |"
    for w in $WORKER_COUNTS; do
        for n in proxyd nginx; do
            awk -v w="$w" -v n="$n" -v N="$STAMPEDE" '$1 == w && $2 == n {
                    o = o (o == "" ? "" : ", ") $4; a = a (a == "" ? "" : ", ") $5 "/" N; m = m (m == "" ? "" : ", ") $6; last = $7 }
                END { printf "| %s | %s | %s | %s | %s | %s |\n", w, n, o, a, m, last }' "$STAMPEDES"
        done
    done
}

memory_table() {
    local per
    per=$(awk '$5 != "-" { print $5 }' "$STATS" | sort -u | paste -sd, -)
    echo "| | index bytes per entry | how |"
    echo "| --- | ---: | --- |"
    echo "| proxyd | ${per:-n/a} | admin GET /cache/stats, zones.z.index_bytes_per_entry (target ≤ 128) |"
    echo "| nginx (reference, not measured) | ~128 | nginx docs, proxy_cache_path: \"One megabyte zone can store about 8 thousand keys\" (1 MiB / 8,192); issue 13 says ~200 |"
    if [ -n "${FILL_RESULT:-}" ]; then
        set -- $FILL_RESULT
        echo
        echo "Fill: $FILL distinct 1 KiB keys into proxyd (1 worker, zone memory 64m): origin requests $1;"
        echo "/cache/stats then: entries $2 (of max_entries $3 in 64m), index_bytes_per_entry $4, hits $5, misses $6,"
        echo "size $7 bytes; cache folder ${FILL_DU:-?} KiB on disk (du); curl's answers (count x status): ${FILL_CODES:-none}."
    fi
}

report() {
    echo "## Cache benchmark"
    echo
    machine_line
    echo "$(nginx_version), $(wrk_version), python $(python3 -c 'import platform; print(platform.python_version())'), $(proxyd_at)."
    echo "Median of $ROUNDS round(s), interleaved (proxyd, nginx; 1 worker, then 2; each start with an empty cache);"
    echo "wrk -t1 -c$CONNS -d${DURATION}s --latency per cell, keep-alive, every answer a HIT (checked before, origin count during)."
    echo "CPU µs/req: user + system of the proxy's processes per request; wrk, the proxy and the origin share the CPUs."
    echo
    echo "Cache hits:"
    echo
    hit_table
    echo
    echo "Cold-key stampede ($STAMPEDE clients at once, one new key per cell, origin answers after 1 s):"
    echo
    stampede_table
    echo
    echo "Index memory:"
    echo
    memory_table
    echo
    awk '$5 != "-" && ($8 > 0 || $9 > 0) {
        printf "- round %s, %s %s workers /obj/%s: %d socket errors, %d non-2xx\n", $4, $2, $1, $3, $8, $9 }' "$RESULTS" >>"$NOTES"
    awk '$5 != "-" && $14 != "-" && $14 > 0 {
        printf "- round %s, %s %s workers /obj/%s: the origin got %d requests during the measured run (not all hits)\n", $4, $2, $1, $3, $14 }' "$RESULTS" >>"$NOTES"
    notes_block
    commands_block "ulimit -n $(ulimit -n)"
    echo
    echo "Configurations (the 2-worker runs differ only in workers / worker_processes):"
    config_blocks nginx-1w-r1/nginx.conf proxyd-1w-r1/proxy.yaml proxyd-1w-r1/bench.yaml
}

main() {
    local r w p
    ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
    for p in $PROXYD_PORT $NGINX_PORT $ORIGIN_PORT; do
        if port_taken "$p"; then log "cache_bench: port $p is in use"; exit 1; fi
    done
    for p in "$PROXYD" "$PROXYCTL"; do [ -x "$p" ] || { log "cache_bench: $p is missing (make all)"; exit 1; }; done
    for p in nginx wrk curl python3; do
        command -v "$p" >/dev/null || { log "cache_bench: needs $p"; exit 1; }
    done
    write_helpers
    start_bg "$TMP/origin.log" python3 "$TMP/origin.py" "$ORIGIN_PORT"
    ORIGIN_PID=$LAST_PID
    wait_http "$ORIGIN_PORT" "$ORIGIN_PID" || { log "cache_bench: the origin did not start: $(cat "$TMP/origin.log")"; exit 1; }
    for r in $(seq 1 "$ROUNDS"); do
        for w in $WORKER_COUNTS; do
            run_cell proxyd "$w" "$r"
            run_cell nginx "$w" "$r"
        done
    done
    [ "$FILL" -gt 0 ] && fill
    report
}

main
