#!/bin/bash
# reload_bench.sh [-r RELOADS] - time from "reload" to every worker serving the
# new configuration, proxyd vs nginx, for 10 and 10,000 sites, in one run.
#
# proxyd: two generations are prepared in the store; each reload flips the
#   active one (sqlite) and sends SIGHUP; we poll a probe site until it
#   answers with the new tag and /status shows every worker on the new
#   generation.  (Compiling the sites is proxyctl's job and is not timed.)
# nginx: the same sites as server blocks; each reload rewrites the probe
#   server's answer and sends SIGHUP; we poll until the new answer comes back.
# Both: 2 workers, RSS of all their processes after RELOADS reloads.
set -euo pipefail
RELOADS=20
while getopts r: o; do case $o in r) RELOADS=$OPTARG ;; *) exit 2 ;; esac; done
ROOT=$(cd "$(dirname "$0")/.." && pwd)
P="$ROOT/bin/proxyctl"
D="$ROOT/bin/proxyd"
W=$(mktemp -d /tmp/reload-bench.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    sleep 0.3
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true; done
    rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
command -v nginx >/dev/null || { echo "nginx is not installed (apt-get install nginx)"; exit 1; }
PORT_P=18381 PORT_N=18382 ORIGIN=18380

now_ms() { date +%s%3N; }
rss_kib() { local t=0; for p in "$@"; do t=$((t + $(awk '/VmRSS/{print $2}' /proc/$p/status 2>/dev/null || echo 0))); done; echo $t; }
tree() { echo "$1 $(pgrep -P "$1" | tr '\n' ' ')"; }

# Poll until the probe answers TAG; prints milliseconds waited (bounded to 30 s).
wait_tag() { # port tag start_ms
    local i=0
    while [ $i -lt 30000 ]; do
        if curl -s -m 1 -H 'Host: probe.bench.example' "http://127.0.0.1:$1/" 2>/dev/null | grep -q "$2"; then
            echo $(($(now_ms) - $3)); return 0; fi
        i=$((i + 1)); sleep 0.001
    done
    echo "timeout"
}

gen_yaml() { # dir n
    /usr/bin/python3 "$ROOT/bench/gen_sites.py" "$2" "$1"
}

probe_yaml() { # tag
    printf 'site: probe\nhosts: [probe.bench.example]\nroutes:\n  - return: {status: 200, body: "%s"}\n' "$1"
}

bench_proxyd() { # n -> "ms_median ms_max rss"
    local n=$1 dir="$W/proxyd-$n"
    mkdir -p "$dir/sites"
    gen_yaml "$dir/sites" "$n"
    printf 'listen: {http: ["127.0.0.1:%s"], https: []}\nworkers: 2\nadmin: {socket: %s/admin.sock}\nlogs: {access: "off"}\n%s\n' \
        "$PORT_P" "$dir" "$([ "$(id -u)" = 0 ] && echo "user: root")" > "$dir/proxy.yaml"
    "$P" --db "$dir/s.db" init --global "$dir/proxy.yaml" >/dev/null
    probe_yaml tag-A > "$dir/sites/zz-probe.yaml"
    "$P" --db "$dir/s.db" apply "$dir/sites" >/dev/null
    local ga; ga=$(sqlite3 "$dir/s.db" "SELECT id FROM generations WHERE active=1")
    probe_yaml tag-B > "$dir/sites/zz-probe.yaml"
    "$P" --db "$dir/s.db" apply "$dir/sites" >/dev/null
    local gb; gb=$(sqlite3 "$dir/s.db" "SELECT id FROM generations WHERE active=1")
    "$D" --db "$dir/s.db" --foreground 2>"$dir/proxyd.log" &
    local pid=$!; PIDS+=("$pid")
    wait_tag "$PORT_P" tag-B "$(now_ms)" >/dev/null
    local times=() i
    for i in $(seq 1 "$RELOADS"); do
        local want=$ga tag=tag-A
        [ $((i % 2)) = 0 ] && want=$gb && tag=tag-B
        sqlite3 "$dir/s.db" "UPDATE generations SET active=0 WHERE active=1; UPDATE generations SET active=1 WHERE id=$want;"
        local t0; t0=$(now_ms)
        kill -HUP "$pid"
        times+=("$(wait_tag "$PORT_P" "$tag" "$t0")")
    done
    sleep 0.5
    local rss; rss=$(rss_kib $(tree "$pid"))
    kill "$pid"; wait "$pid" 2>/dev/null || true
    printf '%s\n' "${times[@]}" | sort -n | awk -v rss="$rss" '{a[NR]=$1} END{printf "%s %s %s\n", a[int((NR+1)/2)], a[NR], rss}'
}

nginx_conf() { # dir n tag
    local dir=$1 n=$2 tag=$3
    {
        echo "worker_processes 2; pid $dir/nginx.pid; error_log $dir/error.log; events { worker_connections 1024; }"
        echo "http { access_log off; server_names_hash_max_size 32768; server_names_hash_bucket_size 128;"
        echo "  server { listen 127.0.0.1:$PORT_N; server_name probe.bench.example; location / { return 200 \"$tag\"; } }"
        cat "$dir/servers.conf"
        echo "}"
    } > "$dir/nginx.conf"
}

bench_nginx() { # n
    local n=$1 dir="$W/nginx-$n"
    mkdir -p "$dir"
    /usr/bin/python3 - "$n" "$PORT_N" "$ORIGIN" > "$dir/servers.conf" <<'PY'
import sys
n, port, origin = int(sys.argv[1]), sys.argv[2], sys.argv[3]
for i in range(n):
    extra = ""
    if i % 10 == 0:
        extra = ("  location = /healthz { return 200; }\n"
                 "  location ~ \\.(git|env)$ { return 404; }\n"
                 f"  location /api/ {{ proxy_pass http://127.0.0.{1 + i % 250}:{3000 + i % 1000}/; }}\n")
    print(f"server {{ listen 127.0.0.1:{port}; server_name www{i}.bench.example;\n{extra}"
          f"  location / {{ proxy_pass http://127.0.0.{1 + i % 250}:{3000 + i % 1000}; }} }}")
PY
    nginx_conf "$dir" "$n" tag-B
    nginx -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' 2>"$dir/stderr" &
    local pid=$!; PIDS+=("$pid")
    wait_tag "$PORT_N" tag-B "$(now_ms)" >/dev/null
    local times=() i
    for i in $(seq 1 "$RELOADS"); do
        local tag=tag-A
        [ $((i % 2)) = 0 ] && tag=tag-B
        nginx_conf "$dir" "$n" "$tag"
        local t0; t0=$(now_ms)
        kill -HUP "$pid"
        times+=("$(wait_tag "$PORT_N" "$tag" "$t0")")
    done
    sleep 2 # old workers exit once idle
    local rss; rss=$(rss_kib $(tree "$pid"))
    kill "$pid"; wait "$pid" 2>/dev/null || true
    printf '%s\n' "${times[@]}" | sort -n | awk -v rss="$rss" '{a[NR]=$1} END{printf "%s %s %s\n", a[int((NR+1)/2)], a[NR], rss}'
}

echo "| server | sites | reload to serving, median | max | RSS after $RELOADS reloads (all processes) |"
echo "| --- | ---: | ---: | ---: | ---: |"
for n in 10 10000; do
    read -r med max rss < <(bench_proxyd "$n")
    echo "| proxyd (2 workers) | $n | ${med} ms | ${max} ms | $((rss / 1024)) MiB |"
    read -r med max rss < <(bench_nginx "$n")
    echo "| nginx $(nginx -v 2>&1 | sed 's#.*/##') (2 workers) | $n | ${med} ms | ${max} ms | $((rss / 1024)) MiB |"
done
echo
echo "commands: proxyd: sqlite3 flips generations.active, kill -HUP <master>; nginx: rewrite nginx.conf, kill -HUP <master>;"
echo "both polled with curl -H 'Host: probe.bench.example' every ~1 ms until the new answer."
