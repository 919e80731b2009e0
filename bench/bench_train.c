/* bench_train.c - time te_llama's training step on the CUDA backend: forward, loss, backward and AdamW over a
   batch of random tokens, the median of the timed steps after a warmup. bench/bench_train.py runs it beside the
   HF transformers + torch peers; ./build.sh builds it as build/bench_train when nvcc is present.
     build/bench_train -m MODEL_DIR [--batch B] [--seq T] [--warmup N] [--steps N]
   Prints one JSON object on stdout: the step times, tokens/s, the first and last loss and the device memory. */
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

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    const char *dir = NULL;
    int B = 8, T = 256, warmup = 3, steps = 10, i, s;
    te_llama_options o;
    te_llama_model *m = NULL;
    te_llama_trainer *tr = NULL;
    int32_t *tokens;
    double *t, loss = 0, first = 0, t0, used = 0;
    size_t ws = 0, dev_free = 0, dev_total = 0;
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-m") && i + 1 < argc) dir = argv[++i];
        else if (!strcmp(argv[i], "--batch") && i + 1 < argc) B = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--seq") && i + 1 < argc) T = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--warmup") && i + 1 < argc) warmup = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = atoi(argv[++i]);
        else { fprintf(stderr, "usage: bench_train -m MODEL_DIR [--batch B] [--seq T] [--warmup N] [--steps N]\n"); return 2; }
    }
    if (!dir || B < 1 || T < 2 || warmup < 0 || steps < 1) { fprintf(stderr, "bench_train: -m MODEL_DIR is required; B >= 1, T >= 2, steps >= 1\n"); return 2; }
    memset(&o, 0, sizeof o);
    o.backend = TE_LLAMA_BACKEND_CUDA;
    o.decoder = te_llama_te_decoder;
    o.dtype = TE_LLAMA_BF16;
    if (te_llama_load(dir, &o, &m) || m->options.backend != TE_LLAMA_BACKEND_CUDA) {
        fprintf(stderr, "bench_train: loading %s on CUDA: %s\n", dir, m ? "fell back to the CPU" : te_llama_last_error());
        te_llama_free(m);
        return 1;
    }
    if (te_llama_trainer_create(m, NULL, &tr)) { fprintf(stderr, "bench_train: %s\n", te_llama_last_error()); te_llama_free(m); return 1; }
    tokens = (int32_t *)malloc(sizeof(int32_t) * (size_t)B * T);
    t = (double *)malloc(sizeof(double) * (size_t)steps);
    if (!tokens || !t) return 1;
    for (i = 0; i < B * T; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        tokens[i] = (int32_t)(x % (uint64_t)m->config.vocab_size);
    }
    for (s = 0; s < warmup + steps; s++) { /* te_llama_train_step returns after the step is done on the device */
        t0 = now_s();
        if (te_llama_train_step(tr, tokens, NULL, B, T, &loss)) { fprintf(stderr, "bench_train: step %d: %s\n", s, te_llama_last_error()); return 1; }
        if (s >= warmup) t[s - warmup] = now_s() - t0;
        if (s == 0) first = loss;
    }
    if (!te_llama_cuda_memory_info(m, &ws, &dev_free, &dev_total)) used = (double)(dev_total - dev_free) / (1 << 30);
    qsort(t, (size_t)steps, sizeof(double), cmp_double);
    printf("{\"batch\": %d, \"seq\": %d, \"steps\": %d, \"warmup\": %d, \"step_ms_median\": %.3f, \"step_ms_min\": %.3f, "
           "\"step_ms_max\": %.3f, \"tokens_per_s\": %.1f, \"loss_first\": %.5f, \"loss_last\": %.5f, \"device_gib_used\": %.2f}\n",
           B, T, steps, warmup, 1e3 * t[steps / 2], 1e3 * t[0], 1e3 * t[steps - 1], (double)B * T / t[steps / 2], first, loss, used);
    free(tokens);
    free(t);
    te_llama_trainer_free(tr);
    te_llama_free(m);
    return 0;
}
