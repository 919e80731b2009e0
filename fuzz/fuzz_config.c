/* fuzz_config.c - libFuzzer target for te_llama_config_parse. A config that parses must validate, and must
   survive te_llama_config_write -> te_llama_config_parse unchanged (every field, doubles exactly).
   Build (from the repository root; fuzz/run.sh does this):
     clang -fsanitize=fuzzer,address,undefined -g -O1 -I. fuzz/fuzz_config.c -o build/fuzz/fuzz_config -lm
   Run: build/fuzz/fuzz_config -dict=fuzz/fuzz_config.dict fuzz/corpus/fuzz_config */
#define TE_LLAMA_IMPLEMENTATION
#include "te_llama.h"

#include <stdint.h>
#include <string.h>

#define FUZZ_ASSERT(c) do { if (!(c)) __builtin_trap(); } while (0)

static int same_config(const te_llama_config *a, const te_llama_config *b) {
    int i;
    if (a->vocab_size != b->vocab_size || a->hidden_size != b->hidden_size ||
        a->intermediate_size != b->intermediate_size || a->num_hidden_layers != b->num_hidden_layers ||
        a->num_attention_heads != b->num_attention_heads || a->num_key_value_heads != b->num_key_value_heads ||
        a->head_dim != b->head_dim || a->max_position_embeddings != b->max_position_embeddings ||
        a->rms_norm_eps != b->rms_norm_eps || a->rope_theta != b->rope_theta || a->rope_type != b->rope_type ||
        a->rope_factor != b->rope_factor || a->rope_low_freq_factor != b->rope_low_freq_factor ||
        a->rope_high_freq_factor != b->rope_high_freq_factor ||
        a->rope_original_max_position_embeddings != b->rope_original_max_position_embeddings ||
        a->tie_word_embeddings != b->tie_word_embeddings || a->dtype != b->dtype ||
        a->initializer_range != b->initializer_range || a->bos_token_id != b->bos_token_id ||
        a->n_eos_token_ids != b->n_eos_token_ids)
        return 0;
    for (i = 0; i < a->n_eos_token_ids; i++)
        if (a->eos_token_ids[i] != b->eos_token_ids[i]) return 0;
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    te_llama_config c, c2;
    char text[8192];
    size_t len = 0;
    te_llama_result r = te_llama_config_parse((const char *)data, size, &c);
    if (r != TE_LLAMA_OK) {
        FUZZ_ASSERT(r > TE_LLAMA_OK && r < TE_LLAMA_RESULT_COUNT);
        FUZZ_ASSERT(te_llama_last_error()[0] != 0);
        return 0;
    }
    FUZZ_ASSERT(te_llama_config_validate(&c) == TE_LLAMA_OK);
    FUZZ_ASSERT(c.hidden_size > 0 && c.num_attention_heads > 0 && c.num_key_value_heads > 0);
    FUZZ_ASSERT(c.num_attention_heads % c.num_key_value_heads == 0 && c.head_dim % 2 == 0);
    FUZZ_ASSERT(te_llama_config_write(&c, text, sizeof text, &len) == TE_LLAMA_OK && len < sizeof text);
    FUZZ_ASSERT(te_llama_config_parse(text, len, &c2) == TE_LLAMA_OK);
    FUZZ_ASSERT(same_config(&c, &c2));
    return 0;
}
