#!/usr/bin/env bash
# fuzz/run.sh - build the libFuzzer targets into build/fuzz/, replay each one's saved corpus, then fuzz each
# for FUZZ_SECONDS (default 20) from a scratch copy of that corpus. Prints "fuzz: N passed, N failed" (one
# count per target: a build failure, a replay that fails or a crash while fuzzing fails it) and exits non-zero
# on any failure. Crashing inputs are kept in build/fuzz/artifacts/. Run from anywhere.
#   FUZZ_SECONDS=600 fuzz/run.sh             longer runs
#   FUZZ_TARGETS="json config" fuzz/run.sh   some targets only
#   FUZZ_PARALLEL=1 fuzz/run.sh              one target at a time (default 2)
#   FUZZ_OUT=dir fuzz/run.sh                build there instead of build/fuzz
# Needs clang with libFuzzer (Debian: clang and libclang-rt-dev); installs them with apt-get when missing.
set -u
cd "$(dirname "$0")/.."

FUZZ_CC=${FUZZ_CC:-clang}
FUZZ_SECONDS=${FUZZ_SECONDS:-20}
FUZZ_PARALLEL=${FUZZ_PARALLEL:-2}
TARGETS=${FUZZ_TARGETS:-"json safetensors config index tokenizer"}
FLAGS="-fsanitize=fuzzer,address,undefined -g -O1"
out=${FUZZ_OUT:-build/fuzz}
mkdir -p "$out/artifacts" "$out/work" "$out/logs"
# UBSan's findings stop the run (by default it would print and go on)
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}

max_len() {
    case $1 in
        safetensors) echo 20000 ;;
        tokenizer) echo 16384 ;;
        config) echo 2048 ;;
        *) echo 4096 ;;
    esac
}

# libFuzzer present? Try a one-line target; install clang when it does not link.
have_libfuzzer() {
    printf '#include <stddef.h>\n#include <stdint.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n' > "$out/probe.c"
    "$FUZZ_CC" $FLAGS "$out/probe.c" -o "$out/probe" >/dev/null 2>&1
}
if ! have_libfuzzer; then
    echo "fuzz: $FUZZ_CC cannot build a libFuzzer target; installing clang with apt-get"
    if command -v apt-get >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq clang >/dev/null
        have_libfuzzer || apt-get install -y -qq libclang-rt-dev >/dev/null 2>&1 || true
        if ! have_libfuzzer; then # the runtime package is named after the version on some releases
            ver=$("$FUZZ_CC" --version 2>/dev/null | sed -nE 's/.*clang version ([0-9]+).*/\1/p' | head -1)
            [ -n "$ver" ] && apt-get install -y -qq "libclang-rt-$ver-dev" >/dev/null 2>&1
        fi
    fi
    if ! have_libfuzzer; then
        echo "FAIL fuzz: no clang with libFuzzer (-fsanitize=fuzzer) and it could not be installed" >&2
        n=0; for t in $TARGETS; do n=$((n + 1)); done
        echo "fuzz: 0 passed, $n failed"
        exit 1
    fi
fi

# One target: build, replay the committed corpus, fuzz a scratch copy. Writes PASS or FAIL + why to its status.
one() {
    local t=$1 bin=$out/fuzz_$1 log=$out/logs/$1 status=$out/logs/$1.status
    local corpus=fuzz/corpus/fuzz_$t work=$out/work/fuzz_$t art=$out/artifacts/fuzz_$t/
    if ! "$FUZZ_CC" $FLAGS -I. "fuzz/fuzz_$t.c" -o "$bin" -lm >"$log.build" 2>&1; then
        echo "FAIL build: $(tail -5 "$log.build")" > "$status"; return
    fi
    mkdir -p "$art"
    if ! "$bin" "$corpus" -runs=0 -rss_limit_mb=2048 -timeout=10 -artifact_prefix="$art" >"$log.replay" 2>&1; then
        echo "FAIL replaying $corpus: $(grep -E 'ERROR|SUMMARY|runtime error|Test unit written' "$log.replay" | head -4)" > "$status"; return
    fi
    rm -rf "$work"; mkdir -p "$work"; cp "$corpus"/* "$work"/
    if ! "$bin" "$work" -dict="fuzz/fuzz_$t.dict" -max_len="$(max_len "$t")" -max_total_time="$FUZZ_SECONDS" \
            -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 -artifact_prefix="$art" >"$log.fuzz" 2>&1; then
        echo "FAIL fuzzing: $(grep -E 'ERROR|SUMMARY|runtime error|Test unit written' "$log.fuzz" | head -4)" > "$status"; return
    fi
    local execs cov
    execs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+)/\1/p' "$log.fuzz")
    cov=$(grep -E "DONE +cov" "$log.fuzz" | sed -nE 's/.*(cov: [0-9]+ ft: [0-9]+ corp: [0-9]+\/[0-9a-zA-Z]+).*/\1/p')
    echo "PASS $execs runs, $cov" > "$status"
}

for t in $TARGETS; do
    rm -f "$out/logs/$t.status"
    [ -f "fuzz/fuzz_$t.c" ] || { echo "FAIL no fuzz/fuzz_$t.c" > "$out/logs/$t.status"; continue; }
    while [ "$(jobs -rp | wc -l)" -ge "$FUZZ_PARALLEL" ]; do wait -n; done
    one "$t" &
done
wait

passed=0; failed=0
for t in $TARGETS; do
    s=$(cat "$out/logs/$t.status" 2>/dev/null || echo "FAIL no result")
    case $s in
        PASS*) passed=$((passed + 1)); echo "  fuzz_$t: ${s#PASS }" ;;
        *) failed=$((failed + 1)); echo "FAIL fuzz_$t: ${s#FAIL }" ;;
    esac
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
