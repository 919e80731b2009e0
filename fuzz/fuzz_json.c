/* fuzz_json.c - libFuzzer target for te_llama_json_parse: parse, then read every token back the way the
   library's own readers do (strings into a small and an exact-size buffer, numbers as int64 and double,
   object lookups), then free.
   Build (from the repository root; fuzz/run.sh does this):
     clang -fsanitize=fuzzer,address,undefined -g -O1 -I. fuzz/fuzz_json.c -o build/fuzz/fuzz_json -lm
   Run: build/fuzz/fuzz_json -dict=fuzz/fuzz_json.dict fuzz/corpus/fuzz_json */
#define TE_LLAMA_IMPLEMENTATION
#include "te_llama.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_ASSERT(c) do { if (!(c)) __builtin_trap(); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    te_llama_json j;
    size_t i;
    if (te_llama_json_parse((const char *)data, size, NULL, &j) != TE_LLAMA_OK) {
        FUZZ_ASSERT(j.tokens == NULL && j.n_tokens == 0); /* a failed parse owns nothing */
        FUZZ_ASSERT(te_llama_last_error()[0] != 0);
        return 0;
    }
    FUZZ_ASSERT(j.n_tokens >= 1 && j.tokens[0].next == j.n_tokens);
    for (i = 0; i < j.n_tokens; i++) {
        const te_llama_json_token *t = &j.tokens[i];
        FUZZ_ASSERT(t->start <= t->end && t->end <= size);
        FUZZ_ASSERT(t->next > i && t->next <= j.n_tokens);
        switch (t->type) {
        case TE_LLAMA_JSON_STRING: {
            char small[8], *big;
            size_t n = 0, n2 = 0;
            te_llama_result r = te_llama_json_string(&j, i, small, sizeof small, &n);
            FUZZ_ASSERT(r == TE_LLAMA_OK ? n < sizeof small : r == TE_LLAMA_ERR_OUT_OF_RANGE && n >= sizeof small);
            FUZZ_ASSERT(n <= (size_t)(t->end - t->start)); /* escapes never decode longer */
            big = (char *)malloc(n + 1);
            FUZZ_ASSERT(big && te_llama_json_string(&j, i, big, n + 1, &n2) == TE_LLAMA_OK && n2 == n);
            /* (te_llama_json_equals compares escaped strings of at most 256 decoded bytes) */
            if (n <= 256 && memchr(big, 0, n) == NULL) FUZZ_ASSERT(te_llama_json_equals(&j, i, big));
            free(big);
            break;
        }
        case TE_LLAMA_JSON_NUMBER: {
            int64_t v;
            double d;
            te_llama_result r = te_llama_json_int64(&j, i, &v);
            FUZZ_ASSERT(r == TE_LLAMA_OK || r == TE_LLAMA_ERR_JSON_SCHEMA || r == TE_LLAMA_ERR_OUT_OF_RANGE);
            r = te_llama_json_double(&j, i, &d);
            FUZZ_ASSERT(r == TE_LLAMA_OK || r == TE_LLAMA_ERR_OUT_OF_RANGE);
            break;
        }
        case TE_LLAMA_JSON_OBJECT: {
            /* every key is found by te_llama_json_get (keys are unique), a missing key is 0 */
            size_t k, key;
            for (k = 0, key = i + 1; k < t->size; k++, key = j.tokens[key + 1].next) {
                char name[64];
                size_t n;
                FUZZ_ASSERT(j.tokens[key].type == TE_LLAMA_JSON_STRING);
                if (te_llama_json_string(&j, key, name, sizeof name, &n) == TE_LLAMA_OK && strlen(name) == n)
                    FUZZ_ASSERT(te_llama_json_get(&j, i, name) == key + 1);
            }
            (void)te_llama_json_get(&j, i, "model_type");
            break;
        }
        default:
            FUZZ_ASSERT(t->type >= TE_LLAMA_JSON_NULL && t->type <= TE_LLAMA_JSON_ARRAY);
            FUZZ_ASSERT(te_llama_json_int64(&j, i, NULL) != TE_LLAMA_OK || t->type == TE_LLAMA_JSON_NUMBER);
            break;
        }
    }
    te_llama_json_free(&j);
    return 0;
}
