/* fuzz_safetensors.c - libFuzzer target for te_llama_safetensors_parse: the input is a whole .safetensors file
   (bytes, n, file_size = n). On success the index must satisfy what the parser promises: tensors sorted by
   offset, tiling [0, data_len) exactly, bytes = prod(shape) x dtype size; every name is found again.
   Build (from the repository root; fuzz/run.sh does this):
     clang -fsanitize=fuzzer,address,undefined -g -O1 -I. fuzz/fuzz_safetensors.c -o build/fuzz/fuzz_safetensors -lm
   Run: build/fuzz/fuzz_safetensors -dict=fuzz/fuzz_safetensors.dict fuzz/corpus/fuzz_safetensors */
#define TE_LLAMA_IMPLEMENTATION
#include "te_llama.h"

#include <stdint.h>
#include <string.h>

#define FUZZ_ASSERT(c) do { if (!(c)) __builtin_trap(); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    te_llama_safetensors st;
    uint64_t expect = 0;
    size_t i;
    static const uint8_t empty[1] = {0};
    te_llama_result r = te_llama_safetensors_parse(size ? data : empty, size, size, NULL, &st);
    if (r != TE_LLAMA_OK) {
        FUZZ_ASSERT(st.tensors == NULL && st.n_tensors == 0);
        FUZZ_ASSERT(r == TE_LLAMA_ERR_ST_HEADER || r == TE_LLAMA_ERR_ST_DTYPE || r == TE_LLAMA_ERR_ST_OFFSETS ||
                    r == TE_LLAMA_ERR_ST_SIZE || r == TE_LLAMA_ERR_JSON_SYNTAX || r == TE_LLAMA_ERR_JSON_LIMIT ||
                    r == TE_LLAMA_ERR_JSON_DUPLICATE_KEY);
        FUZZ_ASSERT(te_llama_last_error()[0] != 0);
        return 0;
    }
    FUZZ_ASSERT(st.data_start >= 10 && st.data_start <= size && st.data_len == size - st.data_start);
    for (i = 0; i < st.n_tensors; i++) {
        const te_llama_st_tensor *t = &st.tensors[i];
        uint64_t n = te_llama_dtype_size(t->dtype);
        int d;
        FUZZ_ASSERT(t->dtype > TE_LLAMA_DTYPE_AUTO && t->dtype < TE_LLAMA_DTYPE_COUNT);
        FUZZ_ASSERT(t->ndim >= 0 && t->ndim <= TE_LLAMA_ST_MAX_DIMS);
        for (d = 0; d < t->ndim; d++) {
            FUZZ_ASSERT(t->shape[d] >= 0);
            FUZZ_ASSERT(t->shape[d] == 0 || n <= UINT64_MAX / (uint64_t)t->shape[d]);
            n *= (uint64_t)t->shape[d];
        }
        FUZZ_ASSERT(n == t->nbytes);
        FUZZ_ASSERT(t->offset == expect);
        expect += t->nbytes;
        FUZZ_ASSERT(expect <= st.data_len);
        FUZZ_ASSERT(t->name != NULL);
        /* a name with a NUL inside (\u0000) is found by its prefix, which may belong to another tensor */
        FUZZ_ASSERT(te_llama_safetensors_find(&st, t->name) != NULL);
    }
    FUZZ_ASSERT(expect == st.data_len);
    te_llama_safetensors_free(&st);
    FUZZ_ASSERT(st.tensors == NULL);
    return 0;
}
