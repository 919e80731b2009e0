/* bench_gemv.c - the decode GEMV against cuBLASLt at the GEMM shapes of a decode step (Llama-3-8B and
   Llama-3.2-1B), 1 and 16 tokens. Each row: average time of 200 launches cycling through 512 MiB of weight
   copies (so W comes from DRAM), and the weight bytes per second that gives.

   Build from the repository root (te_llama_kernels.o as in tests/test_cuda.c):
     cc -O2 -std=c99 -I. -DTE_LLAMA_CUDA bench/bench_gemv.c build/te_llama_kernels.o -o build/bench_gemv \
        -L"$(dirname "$(which nvcc)")/../lib64" -lcublasLt -lcudart -lm -lpthread -lstdc++
     ./build/bench_gemv MODEL_DIR   (any small checkpoint: it only lends its CUDA context, e.g. models/austen) */
#define TE_LLAMA_IMPLEMENTATION
#include "te_llama.h"

#include <stdio.h>
#include <string.h>

te_llama_result te_llama_cuda_test_gemv(te_llama_model *model, int n, int m, int k, int accumulate, int reps,
                                        double *rel_gemv, double *rel_lt, double *us_gemv, double *us_lt);

int main(int argc, char **argv) {
    static const struct { const char *name; int m, k; } shapes[] = {
        {"8b qkv", 6144, 4096}, {"8b proj", 4096, 4096}, {"8b fc1", 28672, 4096}, {"8b fc2", 4096, 14336},
        {"8b lm_head", 128256, 4096}, {"1b qkv", 3072, 2048}, {"1b proj", 2048, 2048}, {"1b fc1", 16384, 2048},
        {"1b fc2", 2048, 8192}, {"1b lm_head", 128256, 2048}};
    static const int ns[] = {1, 16};
    te_llama_options o;
    te_llama_model *m = NULL;
    size_t i, j;
    if (argc != 2) { fprintf(stderr, "usage: bench_gemv MODEL_DIR\n"); return 2; }
    memset(&o, 0, sizeof o);
    o.backend = TE_LLAMA_BACKEND_CUDA;
    if (te_llama_load(argv[1], &o, &m) || m->options.backend != TE_LLAMA_BACKEND_CUDA) {
        fprintf(stderr, "bench_gemv: needs a CUDA load of %s: %s\n", argv[1], te_llama_last_error());
        return 1;
    }
    printf("| shape | n | MB of W | gemv us | gemv GB/s | cuBLASLt us | cuBLASLt GB/s |\n");
    printf("| --- | --- | --- | --- | --- | --- | --- |\n");
    for (i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        for (j = 0; j < sizeof ns / sizeof ns[0]; j++) {
            double tg = 0, tl = 0, mb = 2.0 * shapes[i].m * shapes[i].k / 1e6;
            /* timing only: tests/test_cuda.c checks the values */
            if (te_llama_cuda_test_gemv(m, ns[j], shapes[i].m, shapes[i].k, 0, 200, NULL, NULL, &tg, &tl)) {
                fprintf(stderr, "bench_gemv: %s: %s\n", shapes[i].name, te_llama_last_error());
                return 1;
            }
            printf("| %s | %d | %.1f | %.1f | %.0f | %.1f | %.0f |\n", shapes[i].name, ns[j], mb, tg,
                   mb * 1e-3 / (tg * 1e-6), tl, mb * 1e-3 / (tl * 1e-6));
            fflush(stdout);
        }
    te_llama_free(m);
    return 0;
}
