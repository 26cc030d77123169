# lib.sh - pieces the benchmark scripts share (sourced, not run).

# cpu_ticks: utime+stime (clock ticks) of $TARGET_PID and its children
# (nginx's and proxyd's workers; haproxy -db is one process).
cpu_ticks() {
    local pid sum=0 v
    [ -n "${TARGET_PID:-}" ] || { echo 0; return; }
    for pid in $TARGET_PID $(ps -o pid= --ppid "$TARGET_PID" 2>/dev/null); do
        v=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat" 2>/dev/null || echo 0)
        sum=$((sum + ${v:-0}))
    done
    echo "$sum"
}
CLK_TCK=$(getconf CLK_TCK)

# server CPU microseconds per unit: TICKS_BEFORE TICKS_AFTER UNITS
cpu_us_per() { awk -v a="$1" -v b="$2" -v n="$3" -v hz="$CLK_TCK" 'BEGIN { if (n > 0) printf "%.1f", (b - a) / hz * 1e6 / n; else print "-" }'; }
