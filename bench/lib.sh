# lib.sh - pieces the benchmark scripts share (sourced, not run).
#
# The sourcing script sets TMP (its scratch folder), COMMANDS and NOTES
# (files inside it) and STARTED="" first; sourcing installs the traps that
# stop every process started with start_bg and remove TMP on exit.

log() { printf '%s\n' "$*" >&2; }

# proxy.yaml's user line for a run as root: proxyd refuses to run its workers
# as root unless told, and a bench machine need not have a 'proxyd' account.
ROOT_USER_LINE=$([ "$(id -u)" = 0 ] && echo "user: root" || true)
note() { printf -- '- %s\n' "$*" >>"$NOTES"; }

# Remember a command line for the report, once.
record() {
    local line
    line=$(printf '%q ' "$@")
    grep -Fxq -- "${line% }" "$COMMANDS" || printf '%s\n' "${line% }" >>"$COMMANDS"
}

# start_bg LOG CMD...: start CMD in the background; its PID is in LAST_PID.
start_bg() {
    local out=$1
    shift
    record "$@"
    "$@" >"$out" 2>&1 </dev/null &
    LAST_PID=$!
    STARTED="$STARTED $LAST_PID"
}

# stop_pid PID: SIGTERM, up to 5 s, then SIGKILL; children left behind by a
# master that had to be killed are killed by their PIDs too.
stop_pid() {
    local pid=$1 kids i rest=""
    kids=$(ps -o pid= --ppid "$pid" 2>/dev/null || true)
    if kill -TERM "$pid" 2>/dev/null; then
        for i in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    for i in $kids; do kill -KILL "$i" 2>/dev/null || true; done
    for i in $STARTED; do [ "$i" = "$pid" ] || rest="$rest $i"; done
    STARTED=$rest
}

cleanup() {
    local pid
    trap - EXIT INT TERM
    for pid in $STARTED; do stop_pid "$pid"; done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_taken() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

# wait_http PORT PID: true once http://127.0.0.1:PORT/ answers 200 (5 s at most).
wait_http() {
    local i
    for i in $(seq 1 50); do
        kill -0 "$2" 2>/dev/null || return 1
        [ "$(curl -s -o /dev/null --max-time 1 -w '%{http_code}' "http://127.0.0.1:$1/")" = 200 ] && return 0
        sleep 0.1
    done
    return 1
}

# cpu_split [PID]: "utime stime" (clock ticks) of PID (default $TARGET_PID)
# and its children (nginx's and proxyd's workers; haproxy -db is one process).
cpu_split() {
    local top=${1:-${TARGET_PID:-}} pid u=0 s=0 v
    [ -n "$top" ] || { echo 0 0; return; }
    for pid in $top $(ps -o pid= --ppid "$top" 2>/dev/null); do
        v=$(awk '{ sub(/^.*\) /, ""); print $12, $13 }' "/proc/$pid/stat" 2>/dev/null || echo 0 0)
        u=$((u + ${v% *}))
        s=$((s + ${v#* }))
    done
    echo "$u $s"
}

# cpu_ticks: utime+stime of $TARGET_PID and its children.
cpu_ticks() {
    local v
    v=$(cpu_split)
    echo $((${v% *} + ${v#* }))
}
CLK_TCK=$(getconf CLK_TCK)

# server CPU microseconds per unit: TICKS_BEFORE TICKS_AFTER UNITS
cpu_us_per() { awk -v a="$1" -v b="$2" -v n="$3" -v hz="$CLK_TCK" 'BEGIN { if (n > 0) printf "%.1f", (b - a) / hz * 1e6 / n; else print "-" }'; }

# children_s FILE: user+system seconds of the shell's waited-for children, from
# the second line of bash's `times` saved in FILE (run `times >FILE` in the
# shell itself: in a subshell, $(...) or a pipe, the counts start at zero).
children_s() {
    awk 'NR == 2 { s = 0; for (i = 1; i <= NF; i++) { split($i, p, "m"); s += p[1] * 60 + p[2] } print s }' "$1"
}

# nginx_head DIR WORKERS: the top of the nginx.conf the benches write (pid, log
# and temp paths inside DIR, no access log, long keep-alive), up to and in the
# http block; the caller writes the rest of the block and closes it.
nginx_head() {
    cat <<EOF
worker_processes $2;
worker_rlimit_nofile 20000;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 10240; }
http {
    access_log off;
    keepalive_timeout 120s;
    keepalive_requests 1000000;
    client_body_temp_path $1/body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
EOF
}

# proxyd_store DIR: the store DIR/store.db from DIR/proxy.yaml and DIR/bench.yaml
# ($PROXYCTL init --global, add-site; output in DIR/proxyctl.log).
proxyd_store() {
    record "$PROXYCTL" --db "$1/store.db" init --global "$1/proxy.yaml"
    record "$PROXYCTL" --db "$1/store.db" add-site "$1/bench.yaml"
    "$PROXYCTL" --db "$1/store.db" init --global "$1/proxy.yaml" >"$1/proxyctl.log" 2>&1 &&
        "$PROXYCTL" --db "$1/store.db" add-site "$1/bench.yaml" >>"$1/proxyctl.log" 2>&1
}

# ---- nginx or proxyd, one cell ----------------------------------------------------

# start_proxy NAME WORKERS TAG: start nginx (the caller's write_nginx_conf DIR
# WORKERS) or proxyd (its prepare_proxyd DIR WORKERS) in $TMP/NAME-Ww-TAG on
# $NGINX_PORT or $PROXYD_PORT; sets TARGET_PID, TARGET_PORT, TARGET_DIR.  A
# proxy that is refused or does not answer is noted, and 1 returned.
start_proxy() {
    local name=$1 w=$2 d=$TMP/$1-$2w-$3
    TARGET_DIR=$d
    case $name in
    nginx)
        write_nginx_conf "$d" "$w"
        start_bg "$d/out.log" nginx -p "$d" -e "$d/error.log" -c "$d/nginx.conf" -g 'daemon off;'
        TARGET_PORT=$NGINX_PORT
        ;;
    proxyd)
        if ! prepare_proxyd "$d" "$w"; then
            note "$name ($w workers, $3): proxyctl refused the configuration: $(tail -n 2 "$d/proxyctl.log" | tr '\n' ' ')"
            return 1
        fi
        start_bg "$d/out.log" "$PROXYD" --db "$d/store.db" --foreground
        TARGET_PORT=$PROXYD_PORT
        ;;
    esac
    TARGET_PID=$LAST_PID
    if ! wait_http "$TARGET_PORT" "$TARGET_PID"; then
        note "$name ($w workers, $3): did not start ($(tail -n 1 "$d/out.log" 2>/dev/null))"
        stop_pid "$TARGET_PID"
        return 1
    fi
}

# ---- wrk ---------------------------------------------------------------------

# parse_wrk FILE: wrk's output -> "rps p50_us p99_us socket_errors non2xx";
# "- - - - -" when wrk printed no result.
parse_wrk() {
    awk '
    function us(v) {
        if (v ~ /us$/) return v + 0
        if (v ~ /ms$/) return (v + 0) * 1000
        if (v ~ /s$/) return (v + 0) * 1000000
        return v + 0
    }
    /^ +50% / { p50 = us($2) }
    /^ +99% / { p99 = us($2) }
    /^Requests\/sec:/ { rps = $2 }
    /Socket errors:/ { gsub(/,/, ""); err = $4 + $6 + $8 + $10 }
    /Non-2xx or 3xx responses:/ { non2xx = $5 }
    END {
        if (rps == "" || p50 == "") { print "- - - - -"; exit }
        printf "%s %s %s %d %d\n", rps, p50, p99, err, non2xx
    }' "$1"
}

# measure_wrk OUT CMD...: run CMD (a wrk command line) with its output in OUT,
# and print the CPU per request it counted, in µs: "server user system rest".
# server = user + system of $TARGET_PID and its children; rest = wrk's own
# (bash `time`) plus the origin's ($ORIGIN_PID).  "- - - -" without requests.
measure_wrk() {
    local out=$1 t0 t1 o0 o1 n TIMEFORMAT='%U %S'
    shift
    t0=$(cpu_split)
    o0=$(cpu_split "$ORIGIN_PID")
    { time "$@" >"$out" 2>&1; } 2>"$out.time" || true
    t1=$(cpu_split)
    o1=$(cpu_split "$ORIGIN_PID")
    n=$(awk '/^ *[0-9]+ requests in/ { print $1 }' "$out" | grep . || echo 0)
    awk -v t0="$t0" -v t1="$t1" -v o0="$o0" -v o1="$o1" -v n="$n" -v hz="$CLK_TCK" '
        BEGIN {
            if (n <= 0) { print "- - - -"; exit }
            split(t0, a, " "); split(t1, b, " "); split(o0, c, " "); split(o1, d, " ")
            getline w < ARGV[1]
            split(w, wt, " ")
            u = (b[1] - a[1]) / hz; s = (b[2] - a[2]) / hz
            rest = (d[1] + d[2] - c[1] - c[2]) / hz + wt[1] + wt[2]
            printf "%.1f %.1f %.1f %.1f\n", (u + s) * 1e6 / n, u * 1e6 / n, s * 1e6 / n, rest * 1e6 / n
        }' "$out.time"
}

# ---- report cells --------------------------------------------------------------

# median: of the numbers on stdin, one per line; "-" for none.
median() {
    sort -g | awk '{ a[NR] = $1 }
        END {
            if (NR == 0) { print "-"; exit }
            print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
        }'
}

# cell A B C COLUMN: the median of COLUMN over the $RESULTS rows whose first
# three fields are A B C (e.g. workers, proxy, route), "-" cells left out.
cell() {
    awk -v a="$1" -v b="$2" -v x="$3" -v c="$4" '$1 == a && $2 == b && $3 == x && $c != "-" { print $c }' "$RESULTS" |
        median
}

# ratio A B [DIGITS]: A / B with DIGITS decimals (2), n/a when either is missing.
ratio() {
    awk -v a="$1" -v b="$2" -v d="${3:-2}" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "n/a"; else printf "%.*f", d, a / b }'
}

fmt_rps() { if [ "$1" = - ]; then echo n/a; else printf '%.0f' "$1"; fi; }
fmt_ms() { if [ "$1" = - ]; then echo n/a; else awk -v v="$1" 'BEGIN { printf "%.2f ms", v / 1000 }'; fi; }

# ---- report scaffolding ----------------------------------------------------------

# machine_line: when and on what: date, CPUs, CPU model, kernel.
machine_line() {
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) CPUs ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)); Linux $(uname -r);"
}

# proxyd_at: "proxyd at COMMIT" of $ROOT.
proxyd_at() { echo "proxyd at $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"; }
nginx_version() { nginx -v 2>&1 | sed 's/^nginx version: //'; }
wrk_version() { wrk -v 2>&1 | awk 'NR == 1 { print $1, $2 }'; }

# notes_block: "Notes:" and $NOTES, or "- none".
notes_block() {
    echo "Notes:"
    echo
    if [ -s "$NOTES" ]; then cat "$NOTES"; else echo "- none"; fi
    echo
}

# commands_block [LINE...]: the commands the run recorded (TMP for $TMP), after LINEs.
commands_block() {
    echo "Commands (TMP = $TMP, removed on exit):"
    echo
    echo '```sh'
    [ $# -eq 0 ] || printf '%s\n' "$@"
    sed "s|$TMP|TMP|g" "$COMMANDS"
    echo '```'
}

# config_blocks FILE...: each of $TMP/FILE that exists, fenced, TMP for $TMP.
config_blocks() {
    local f
    for f in "$@"; do
        [ -f "$TMP/$f" ] || continue
        echo
        echo "TMP/$f:"
        echo
        echo '```'
        sed "s|$TMP|TMP|g" "$TMP/$f"
        echo '```'
    done
}
