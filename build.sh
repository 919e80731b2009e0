#!/usr/bin/env bash
# build.sh            build the examples into build/ (with the CUDA backend when nvcc is present)
# build.sh test       build and run the test suite (CPU; installs its Python test dependencies in .venv)
# build.sh gpu-test   build and run the GPU tests (needs an NVIDIA GPU)
set -euo pipefail
cd "$(dirname "$0")"

CC=${CC:-cc}
CXX=${CXX:-c++}
CFLAGS=${CFLAGS:-"-O2 -std=c99 -Wall -Wextra -Werror"}
NVCC=${NVCC:-nvcc}
NVCC_FLAGS=${NVCC_FLAGS:-"-O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -gencode arch=compute_80,code=compute_80"}
EXAMPLES="generate inspect convert tokenize bench train"
mkdir -p build

have_nvcc() { command -v "$NVCC" >/dev/null 2>&1 && [ -f te_llama_kernels.cu ]; }
cuda_libdir() { echo "$(dirname "$(command -v "$NVCC")")/../lib64"; }

# The CUDA object, rebuilt when the .cu or the header changed.
build_kernels() {
    if [ ! -f build/te_llama_kernels.o ] || [ te_llama_kernels.cu -nt build/te_llama_kernels.o ] || [ te_llama.h -nt build/te_llama_kernels.o ]; then
        echo "nvcc te_llama_kernels.cu"
        # shellcheck disable=SC2086
        "$NVCC" $NVCC_FLAGS -c te_llama_kernels.cu -o build/te_llama_kernels.o
    fi
}

build_examples() {
    local cuda_flags="" cuda_libs=""
    if have_nvcc && build_kernels; then
        cuda_flags="-DTE_LLAMA_CUDA"
        cuda_libs="build/te_llama_kernels.o -L$(cuda_libdir) -Wl,-rpath,$(cuda_libdir) -lcublasLt -lcudart -lstdc++"
    else
        have_nvcc && echo "warning: the CUDA backend did not build; the examples are CPU-only" >&2
    fi
    for e in $EXAMPLES; do
        [ -f "examples/$e.c" ] || continue
        # shellcheck disable=SC2086
        $CC $CFLAGS $cuda_flags -I. "examples/$e.c" -o "build/$e" $cuda_libs -lm -lpthread
    done
    # the training step benchmark (bench/bench_train.py) needs the CUDA backend
    # shellcheck disable=SC2086
    if [ -n "$cuda_flags" ]; then $CC $CFLAGS $cuda_flags -I. bench/bench_train.c -o build/bench_train $cuda_libs -lm -lpthread; fi
    echo "built: $(for e in $EXAMPLES bench_train; do [ -f build/$e ] && printf 'build/%s ' "$e"; done)"
}

# Python for the test-side tools (references made by HF tokenizers, safetensors read-back).
ensure_venv() {
    if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import numpy, safetensors, tokenizers" 2>/dev/null; then
        echo "setting up .venv (numpy, safetensors, tokenizers)"
        python3 -m venv .venv
        .venv/bin/pip install -q --disable-pip-version-check numpy safetensors tokenizers
    fi
}

passed=0
failed=0
# Run a test binary; add its "N passed, N failed" line to the totals.
run_counted() {
    local name=$1; shift
    local out rc=0
    out=$("$@" 2>&1) || rc=$?
    printf '%s\n' "$out" | grep -E "^(FAIL|  )|passed" || true
    local line
    line=$(printf '%s\n' "$out" | grep -E "^[a-z0-9_+ -]+: [0-9]+ passed, [0-9]+ failed$" | tail -1) || true
    if [ -z "$line" ]; then
        echo "$name: crashed or printed no summary (exit $rc)"
        printf '%s\n' "$out" | tail -20
        failed=$((failed + 1))
        return
    fi
    local p f
    p=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed.*/\1/')
    f=$(echo "$line" | sed -E 's/.* ([0-9]+) failed$/\1/')
    passed=$((passed + p))
    failed=$((failed + f))
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then echo "$name: exit $rc"; failed=$((failed + 1)); fi
}
# One pass or fail for a command.
run_one() {
    local name=$1; shift
    if "$@" >"build/tmp/$name.log" 2>&1; then passed=$((passed + 1)); echo "$name: ok"
    else failed=$((failed + 1)); echo "FAIL $name:"; tail -20 "build/tmp/$name.log"; fi
}

cmd_test() {
    ensure_venv
    mkdir -p build/tmp
    local san="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined"
    local tflags="-std=c99 -Wall -Wextra -Werror -Wno-format-truncation -I. -Itests"
    # the header compiled every way a user may: C99, C++17, static linkage, custom allocator, with the CUDA declarations
    printf '#define TE_LLAMA_IMPLEMENTATION\n#include "te_llama.h"\nint main(void){return 0;}\n' > build/tmp/header.c
    run_one header-c99 $CC -std=c99 -Wall -Wextra -Werror -pedantic -I. build/tmp/header.c -o build/tmp/header-c99 -lm
    run_one header-c11 $CC -std=c11 -Wall -Wextra -Werror -I. build/tmp/header.c -o build/tmp/header-c11 -lm
    run_one header-cxx17 $CXX -x c++ -std=c++17 -Wall -Wextra -Werror -I. build/tmp/header.c -o build/tmp/header-cxx -lm
    run_one header-static $CC -std=c99 -Wall -Wextra -Werror -Wno-unused-function -DTE_LLAMA_STATIC -I. build/tmp/header.c -o build/tmp/header-static -lm
    run_one header-allocator $CC -std=c99 -Wall -Wextra -Werror "-DTE_LLAMA_MALLOC(n)=malloc(n)" "-DTE_LLAMA_REALLOC(p,n)=realloc(p,n)" "-DTE_LLAMA_FREE(p)=free(p)" -I. build/tmp/header.c -o build/tmp/header-alloc -lm
    run_one header-cuda-decls $CC -std=c99 -Wall -Wextra -Werror -DTE_LLAMA_CUDA -I. -c build/tmp/header.c -o build/tmp/header-cuda.o
    # tokenizer references from HF tokenizers, on the shared real tokenizers and corpus
    TE_LLAMA_SHARED=${TE_LLAMA_SHARED:-../shared} .venv/bin/python tests/tokenizer_ref.py build/tokref >/dev/null
    # the test programs, plain, then under AddressSanitizer + UndefinedBehaviorSanitizer as C and as C++
    for t in tests/test_*.c; do
        local name
        name=$(basename "$t" .c)
        [ "$name" = test_cuda ] && continue
        $CC -O2 $tflags "$t" -o "build/$name" -lm -lpthread
        $CC $san $tflags "$t" -o "build/$name-asan" -lm -lpthread
        $CXX -x c++ -std=c++17 $san -Wall -Wextra -Werror -Wno-format-truncation -Wno-missing-field-initializers -I. -Itests "$t" -o "build/$name-asan-cxx" -lm -lpthread
        run_counted "$name" env TE_LLAMA_TMP=build/tmp/plain "build/$name"
        run_counted "$name (asan+ubsan, C)" env TE_LLAMA_TMP=build/tmp/asan "build/$name-asan"
        run_counted "$name (asan+ubsan, C++)" env TE_LLAMA_TMP=build/tmp/asan-cxx "build/$name-asan-cxx"
    done
    # what test_model saved, read back by the official safetensors package
    for f in gqa_tied_llama3 mha_untied_bf16 headdim_f16; do
        for k in te vanilla; do
            run_one "check-saved-$f-$k" .venv/bin/python tests/check_saved.py "build/tmp/plain/saved_${f}_$k" "tests/fixtures/$f"
        done
    done
    # the command-line programs, as a user runs them
    build_examples >/dev/null
    if [ -x tests/test_cli.sh ]; then run_counted cli tests/test_cli.sh; fi
    # hostile input: broken checkpoints with exact result codes, fuzz corpus replay and a short fuzz run
    if [ -x tests/test_bad.sh ]; then run_counted bad tests/test_bad.sh; fi
    echo
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ]
}

cmd_gpu_test() {
    mkdir -p build/tmp
    build_kernels
    $CC -O2 -std=c99 -Wall -Wextra -Wno-format-truncation -I. -Itests -DTE_LLAMA_CUDA tests/test_cuda.c build/te_llama_kernels.o \
        -o build/test_cuda -L"$(cuda_libdir)" -Wl,-rpath,"$(cuda_libdir)" -lcublasLt -lcudart -lstdc++ -lm -lpthread
    run_counted cuda env TE_LLAMA_TMP=build/tmp/cuda build/test_cuda
    echo
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ]
}

case "${1:-}" in
    "") build_examples ;;
    test) cmd_test ;;
    gpu-test) cmd_gpu_test ;;
    -h|--help) sed -n '2,4p' "$0" | sed 's/^# //' ;;
    *) echo "usage: ./build.sh [test|gpu-test]" >&2; exit 2 ;;
esac
