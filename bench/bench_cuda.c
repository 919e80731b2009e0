/* bench_cuda.c - time the CUDA backend on a randomly initialised model: prefill of a prompt and greedy decode.

   Build from the repository root (te_llama_kernels.o as in tests/test_cuda.c):
     cc -O2 -std=c99 -I. -DTE_LLAMA_CUDA bench/bench_cuda.c build/te_llama_kernels.o -o build/bench_cuda \
        -L"$(dirname "$(which nvcc)")/../lib64" -lcublasLt -lcudart -lm -lpthread -lstdc++
     ./build/bench_cuda [layers [prompt_tokens [new_tokens]]]
   The shapes are a small Llama (hidden 2048, 32 query / 8 kv heads of 64, ffn 5632, vocab 32000); the weights are
   random (the host draws them, which takes most of the start-up time). Decode is reported as time per token and as
   the parameter bytes read per second (the floor of a decode step is reading every weight once). */
#define TE_LLAMA_IMPLEMENTATION
#include "te_llama.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#define TRY(expr)                                                                                             \
    do {                                                                                                      \
        te_llama_result r_ = (expr);                                                                          \
        if (r_) { fprintf(stderr, "%s: %s\n", #expr, te_llama_last_error()); return 1; }                      \
    } while (0)

int main(int argc, char **argv) {
    int layers = argc > 1 ? atoi(argv[1]) : 4, n_prompt = argc > 2 ? atoi(argv[2]) : 512, n_new = argc > 3 ? atoi(argv[3]) : 128;
    te_llama_config c;
    te_llama_options o;
    te_llama_model *m = NULL;
    te_llama_kv_cache *cache = NULL;
    te_llama_generate_options g;
    te_llama_batch b;
    int32_t *prompt, *pos, *out;
    uint8_t *want;
    float *logits;
    double t, t_prefill = 1e30, t_gen = 1e30, bytes = 0;
    int i, rep, n_out = 0;
    uint64_t x = 1;
    memset(&c, 0, sizeof c);
    c.vocab_size = 32000;
    c.hidden_size = 2048;
    c.intermediate_size = 5632;
    c.num_hidden_layers = layers;
    c.num_attention_heads = 32;
    c.num_key_value_heads = 8;
    c.head_dim = 64;
    c.max_position_embeddings = 8192;
    c.rms_norm_eps = 1e-5;
    c.rope_theta = 10000;
    c.dtype = TE_LLAMA_BF16;
    c.initializer_range = 0.02;
    c.bos_token_id = -1;
    memset(&o, 0, sizeof o);
    o.backend = TE_LLAMA_BACKEND_CUDA;
    o.dtype = TE_LLAMA_BF16;
    t = now_s();
    TRY(te_llama_for_causal_lm(&c, &o, &m));
    if (m->options.backend != TE_LLAMA_BACKEND_CUDA) { fprintf(stderr, "no CUDA device\n"); return 1; }
    for (i = 0; i < te_llama_num_parameters(m); i++) bytes += (double)te_llama_param_bytes(te_llama_parameter(m, i));
    printf("model: %d layers, %.0f MB of bf16 parameters, created in %.1f s\n", layers, bytes / 1e6, now_s() - t);
    prompt = (int32_t *)malloc(sizeof(int32_t) * (size_t)n_prompt * 2);
    pos = prompt + n_prompt;
    out = (int32_t *)malloc(sizeof(int32_t) * (size_t)n_new);
    want = (uint8_t *)calloc((size_t)n_prompt, 1);
    logits = (float *)malloc(sizeof(float) * (size_t)c.vocab_size);
    for (i = 0; i < n_prompt; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        prompt[i] = (int32_t)((x >> 33) % (uint64_t)c.vocab_size);
        pos[i] = i;
    }
    want[n_prompt - 1] = 1;
    memset(&b, 0, sizeof b);
    b.n_tokens = n_prompt;
    b.tokens = prompt;
    b.pos = pos;
    b.want_logits = want;
    TRY(te_llama_kv_cache_create(m, 1, n_prompt + n_new, &cache));
    for (rep = 0; rep < 4; rep++) { /* the first run makes the GEMM plans */
        t = now_s();
        TRY(te_llama_forward(m, cache, &b, logits));
        t = now_s() - t;
        if (rep && t < t_prefill) t_prefill = t;
    }
    te_llama_kv_cache_free(cache);
    memset(&g, 0, sizeof g);
    g.max_new_tokens = n_new;
    g.ignore_eos = 1;
    for (rep = 0; rep < 3; rep++) {
        t = now_s();
        TRY(te_llama_generate(m, &g, prompt, n_prompt, out, n_new, &n_out));
        t = now_s() - t;
        if (rep && t < t_gen) t_gen = t;
    }
    printf("prefill %d tokens: %.2f ms (%.0f tokens/s)\n", n_prompt, 1e3 * t_prefill, n_prompt / t_prefill);
    printf("generate %d tokens after it: %.2f ms total, decode %.3f ms/token, %.0f GB/s of parameters\n", n_out,
           1e3 * t_gen, 1e3 * (t_gen - t_prefill) / (n_out - 1), bytes / ((t_gen - t_prefill) / (n_out - 1)) / 1e9);
    free(prompt);
    free(out);
    free(want);
    free(logits);
    te_llama_free(m);
    return 0;
}
