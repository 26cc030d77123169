#!/bin/sh
# compile_scale.sh [N] - compile N (default 10000) generated sites into one
# generation, then time route-test against it.  Prints a table; the targets
# (issue 2) are: compile < 2 s, route-test < 50 ms, < 1 KiB of table per
# simple site.
set -eu
N=${1:-10000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
P="$ROOT/bin/proxyctl"
W=$(mktemp -d /tmp/proxyd-bench-XXXXXX)
trap 'rm -rf "$W"' EXIT INT TERM

now() { date +%s%N; }
ms() { echo "scale=1; ($2 - $1) / 1000000" | bc; }

/usr/bin/python3 "$ROOT/bench/gen_sites.py" "$N" "$W/sites"
"$P" --db "$W/s.db" init >/dev/null
t0=$(now); "$P" --db "$W/s.db" validate "$W"/sites/*.yaml >/dev/null; t1=$(now)
validate_ms=$(ms "$t0" "$t1")
t0=$(now); "$P" --db "$W/s.db" apply "$W/sites" >/dev/null; t1=$(now)
apply_ms=$(ms "$t0" "$t1")
bytes=$(sqlite3 "$W/s.db" "SELECT length(blob) FROM generations WHERE active = 1")
# route-test: best and median of 20 runs, each a fresh process.
runs=""
for i in $(seq 1 20); do
    h=$(( (i * 379) % N ))
    t0=$(now); "$P" --db "$W/s.db" route-test "http://www$h.bench.example/api/users" >/dev/null; t1=$(now)
    runs="$runs $(( (t1 - t0) / 1000 ))"
done
rt=$(echo $runs | tr ' ' '\n' | sort -n)
rt_best=$(echo "$rt" | head -1); rt_med=$(echo "$rt" | sed -n 10p)
t0=$(now); "$P" --db "$W/s.db" dump >/dev/null; t1=$(now)
dump_ms=$(ms "$t0" "$t1")

printf '| %-36s | %12s | %10s |\n' "measure ($N sites)" "value" "target"
printf '| %-36s | %12s | %10s |\n' "------------------------------------" "------------" "----------"
printf '| %-36s | %9s ms | %10s |\n' "apply (parse, check, compile, store)" "$apply_ms" "< 2000 ms"
printf '| %-36s | %9s ms | %10s |\n' "validate (parse and check only)" "$validate_ms" ""
printf '| %-36s | %9s ms | %10s |\n' "route-test, best of 20" "$(echo "scale=1; $rt_best/1000" | bc)" "< 50 ms"
printf '| %-36s | %9s ms | %10s |\n' "route-test, median of 20" "$(echo "scale=1; $rt_med/1000" | bc)" "< 50 ms"
printf '| %-36s | %9s ms | %10s |\n' "dump" "$dump_ms" ""
printf '| %-36s | %12s | %10s |\n' "rule table size" "$bytes B" ""
printf '| %-36s | %10s B | %10s |\n' "table bytes per site" "$((bytes / N))" "< 1024 B"
