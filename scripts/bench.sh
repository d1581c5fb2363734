#!/usr/bin/env bash
# bench.sh — the SPEC §5 benchmarks. Prints one line per target,
#   Bn <what was measured> <baseline> ratio=<r> target=<t> PASS|MISS
# and writes the same, with the machine and the commands, to BENCHMARKS.md.
# Targets whose subject is not built yet print NOT-BUILT instead of a number.
set -u
cd "$(dirname "$0")/.."
out=$(mktemp)
run() { # the command is printed into BENCHMARKS.md as it was run
    echo "\$ $*" >>"$out.cmds"
    "$@" | tee -a "$out"
}
: >"$out.cmds"
run build/bench/plan_bench policies 100000 1000
run build/bench/core_bench 1000 100000 1000000
for line in \
    "B3 simulated drain makespan / lower bound: simulator not built yet (M1) ratio=- target=<=1.05 NOT-BUILT" \
    "B4 status ingestion over loopback TCP: node protocol not built yet (A5) ratio=- target=>=200000/s NOT-BUILT" \
    "B5 GET drain over HTTP keep-alive vs nginx: HTTP API not built yet (A1) ratio=- target=>=0.5 NOT-BUILT" \
    "B7 policy saved -> live: hot reload not built yet (P4) ratio=- target=<=300ms NOT-BUILT"; do
    echo "$line" | tee -a "$out"
done
{
    echo "# Benchmarks"
    echo
    echo "Written by \`make bench\` ($(date -u '+%Y-%m-%d %H:%M UTC')). Ratios are against a baseline"
    echo "measured in the same run; the machine is shared, so read them as ratios, not absolutes."
    echo
    echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -srm), $(gcc --version | head -1)"
    echo
    echo '```'
    cat "$out"
    echo '```'
    echo
    echo "Commands:"
    echo
    echo '```'
    cat "$out.cmds"
    echo '```'
} >BENCHMARKS.md
rm -f "$out" "$out.cmds"
