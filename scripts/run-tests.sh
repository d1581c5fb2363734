#!/usr/bin/env bash
# run-tests.sh — runs every test of `make test` and ends with "N passed, N failed".
#   1. the busted specs in tests/ against build/sluice.so and build/sluice
#   2. the same specs against the ASan+UBSan build (build/asan/)
#   3. the C tests given as arguments (sanitized, or ThreadSanitizer for *_tsan_test)
# A suite that dies before reporting (a crash, a sanitizer abort, a hang past
# SUITE_TIMEOUT seconds) counts as one failure.
set -u
SUITE_TIMEOUT=${SUITE_TIMEOUT:-900}
cd "$(dirname "$0")/.."
passed=0
failed=0

count_tap() { # $1 = label, $2 = file with TAP output, $3 = exit status
    local ok notok
    ok=$(grep -c '^ok ' "$2")
    notok=$(grep -c '^not ok ' "$2")
    passed=$((passed + ok))
    failed=$((failed + notok))
    if [ "$notok" = 0 ] && [ "$3" != 0 ]; then
        echo "$1: exited with status $3 without a failing test: counted as one failure"
        failed=$((failed + 1))
    fi
    echo "$1: $ok passed, $notok failed"
}

run_busted() { # $1 = label, $2 = build dir, rest = env
    local label=$1 dir=$2 out rc
    shift 2
    out=$(mktemp)
    env "$@" LUA_CPATH="$dir/?.so;;" SLUICE_BIN="$dir/sluice" \
        timeout -k 10 "$SUITE_TIMEOUT" lua5.4 /usr/bin/busted -o TAP tests 2>&1 | tee "$out" | grep -v '^ok '
    rc=${PIPESTATUS[0]}
    count_tap "$label" "$out" "$rc"
    rm -f "$out"
}

echo "== busted specs (build/)"
run_busted "specs" build
echo "== busted specs under ASan+UBSan (build/asan/)"
run_busted "specs[asan]" build/asan \
    LD_PRELOAD="$(gcc -print-file-name=libasan.so)" \
    ASAN_OPTIONS="detect_leaks=0:abort_on_error=1" \
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
    SLUICE_ASAN=1

echo "== C tests"
for t in "$@"; do
    out=$(mktemp)
    ASAN_OPTIONS="detect_leaks=1" TSAN_OPTIONS="halt_on_error=1" \
        timeout -k 10 "$SUITE_TIMEOUT" "$t" >"$out" 2>&1
    rc=$?
    grep -v '^ok ' "$out"
    count_tap "$(basename "$t")" "$out" "$rc"
    rm -f "$out"
done

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
