#!/usr/bin/env bash
# test_bad.sh - hostile input: the broken checkpoints of tests/bad/make_bad.py, each with its exact result code,
# loaded by tests/bad/test_bad.c built plainly and under AddressSanitizer + UndefinedBehaviorSanitizer; then
# fuzz/run.sh (replay of the saved corpora and a short run of every libFuzzer target, FUZZ_SECONDS each,
# default 15). Run from the repository root; prints "bad: N passed, N failed" (all of it together) last.
set -u
cd "$(dirname "$0")/.."
CC=${CC:-cc}
passed=0; failed=0
count() { # add the "NAME: N passed, N failed" line of a run's output; a run without one is a failure
    local what=$1 out=$2 rc=$3 line p f
    line=$(printf '%s\n' "$out" | grep -E "^[a-z0-9_+ -]+: [0-9]+ passed, [0-9]+ failed$" | tail -1)
    printf '%s\n' "$out" | grep -E "^(FAIL|  )" || true
    if [ -z "$line" ]; then
        echo "FAIL $what: crashed or printed no summary (exit $rc)"; printf '%s\n' "$out" | tail -20
        failed=$((failed + 1)); return
    fi
    p=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed.*/\1/'); f=$(echo "$line" | sed -E 's/.* ([0-9]+) failed$/\1/')
    echo "  $what: $p passed, $f failed"
    passed=$((passed + p)); failed=$((failed + f))
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then echo "FAIL $what: exit $rc"; failed=$((failed + 1)); fi
}
run() { local what=$1 out rc=0; shift; out=$("$@" 2>&1) || rc=$?; count "$what" "$out" "$rc"; }

mkdir -p build/tmp
if python3 tests/bad/make_bad.py build/tmp/bad >build/tmp/make_bad.log 2>&1; then
    cflags="-std=c99 -Wall -Wextra -Werror -Wno-format-truncation -I. -Itests"
    san="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined"
    if $CC -O2 $cflags tests/bad/test_bad.c -o build/test_bad -lm 2>build/tmp/test_bad.build; then
        run "bad (plain)" build/test_bad build/tmp/bad
    else
        echo "FAIL bad: tests/bad/test_bad.c does not build"; cat build/tmp/test_bad.build; failed=$((failed + 1))
    fi
    if $CC $san $cflags tests/bad/test_bad.c -o build/test_bad-asan -lm 2>build/tmp/test_bad-asan.build; then
        run "bad (asan+ubsan)" env BAD_TIMEOUT=15 build/test_bad-asan build/tmp/bad
    else
        echo "FAIL bad: tests/bad/test_bad.c does not build with the sanitizers"; cat build/tmp/test_bad-asan.build; failed=$((failed + 1))
    fi
else
    echo "FAIL bad: tests/bad/make_bad.py"; tail -20 build/tmp/make_bad.log; failed=$((failed + 1))
fi
run "fuzz" env FUZZ_SECONDS="${FUZZ_SECONDS:-15}" fuzz/run.sh
echo "bad: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
