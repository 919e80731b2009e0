/* test_cuda.c - the CUDA backend (te_llama_kernels.cu) against the CPU reference of te_llama.h.

   The decode attention kernels (test_decode_attention) and the two tensor-core prefill attention kernels
   (test_prefill_attention) are also checked alone against double precision.

   Build and run from the repository root:
     mkdir -p build
     nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -c te_llama_kernels.cu -o build/te_llama_kernels.o
     cc -O2 -std=c99 -I. -DTE_LLAMA_CUDA tests/test_cuda.c build/te_llama_kernels.o -o build/test_cuda \
        -L"$(dirname "$(which nvcc)")/../lib64" -lcublasLt -lcudart -lm -lpthread -lstdc++
     ./build/test_cuda
   Without a device the CUDA loads fall back to the CPU; the test then says so and checks only that fallback.

   Both sides load with the TE decoder and BF16 storage, so they compute over the same rounded weights; what
   differs is the GPU's bf16 activations at GEMM inputs and bf16 KV cache (see te_llama_kernels.cu, NUMERICS).
   Tolerances: relative L2 error of logits (||gpu - cpu|| / ||cpu||) < 1e-2 against the CPU; < 5e-3 between two
   GPU computations of the same logits by the same kernels (decode vs recompute, batch vs separate), 1e-2 where the
   prompt went through the tensor-core attention and the decode steps through the split-KV one (check_decode). Greedy tokens are compared step by
   step while the CPU's top-1 minus top-2 logit gap exceeds 3x the largest absolute logit difference measured on
   the prompt: a flip needs the two logits' errors to add up to the gap, so below that bound a different token is
   not a bug, and from the first such step on the two continuations may legitimately part. */
#define TE_LLAMA_IMPLEMENTATION
#include "te_llama.h"
#include "tests/check.h"
#include "tests/train_ref.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define FIXTURES "tests/fixtures/"

static char out_dir[1024]; /* saved checkpoints: $TE_LLAMA_TMP, else build/tmp/cuda */

static void quiet_log(void *user, te_llama_log_level level, const char *message) {
    (void)user;
    if (level == TE_LLAMA_LOG_WARN || strstr(message, "te_llama_cuda")) fprintf(stderr, "  log: %s\n", message);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int same_file(const char *a, const char *b) {
    size_t na = 0, nb = 0;
    char *x = check_read_file(a, &na), *y = check_read_file(b, &nb);
    int same = x && y && na == nb && memcmp(x, y, na) == 0;
    free(x);
    free(y);
    return same;
}

static double rel_l2(const float *a, const float *ref, size_t n, double *max_abs) {
    double num = 0, den = 0, mx = 0;
    size_t i;
    for (i = 0; i < n; i++) {
        double d = (double)a[i] - (double)ref[i];
        if (!(d == d)) return INFINITY; /* NaN never passes */
        num += d * d;
        den += (double)ref[i] * ref[i];
        if (fabs(d) > mx) mx = fabs(d);
    }
    if (max_abs) *max_abs = mx;
    return sqrt(num / (den > 0 ? den : 1e-30));
}

static int argmax(const float *x, int n, float *gap) {
    int i, best = 0, second = -1;
    for (i = 1; i < n; i++) if (x[i] > x[best]) best = i;
    for (i = 0; i < n; i++) if (i != best && (second < 0 || x[i] > x[second])) second = i;
    if (gap) *gap = second < 0 ? INFINITY : x[best] - x[second];
    return best;
}

/* An array of integers at token index arr of a parsed JSON document. */
static int json_ints(const te_llama_json *j, size_t arr, int32_t *out, int cap) {
    size_t i = arr + 1, k;
    int n = 0;
    if (!arr || j->tokens[arr].type != TE_LLAMA_JSON_ARRAY) return -1;
    for (k = 0; k < j->tokens[arr].size && n < cap; k++, i = j->tokens[i].next) {
        int64_t v;
        if (te_llama_json_int64(j, i, &v)) return -1;
        out[n++] = (int32_t)v;
    }
    return n;
}

/* A checkpoint as the tests load it: TE decoder layers, bf16 (the CUDA backend's dtype; the CPU side then holds
   the same rounded values), log as given (NULL: none). */
static te_llama_result load_status(const char *dir, te_llama_backend backend,
                                   void (*log)(void *, te_llama_log_level, const char *), te_llama_model **m) {
    te_llama_options o;
    memset(&o, 0, sizeof o);
    o.backend = backend;
    o.decoder = te_llama_te_decoder;
    o.dtype = TE_LLAMA_BF16;
    o.log = log;
    *m = NULL;
    return te_llama_load(dir, &o, m);
}

static te_llama_model *load(const char *dir, te_llama_backend backend) {
    te_llama_model *m = NULL;
    CHECK_RESULT(load_status(dir, backend, quiet_log, &m), TE_LLAMA_OK);
    return m;
}

/* ------------------------------------------------------------------------------ the GPU's rounding, on the CPU */

/* Round to bf16 and back (round to nearest even), in place. */
static void round_bf16(float *x, size_t n) {
    uint16_t *tmp = (uint16_t *)malloc(n * 2);
    te_llama_convert(tmp, TE_LLAMA_BF16, x, TE_LLAMA_F32, n);
    te_llama_convert(x, TE_LLAMA_F32, tmp, TE_LLAMA_BF16, n);
    free(tmp);
}

/* A parameter of a host model as float32: rows of a matrix (a view's buffer may go on past its own rows), or
   the whole of a vector. */
static float *param_f32(const te_llama_param *p, size_t rows) {
    size_t n = p->ndim == 2 ? rows * (size_t)p->shape[1] : (size_t)p->shape[0];
    float *f = (float *)malloc(sizeof(float) * n);
    te_llama_convert(f, TE_LLAMA_F32, p->data, p->dtype, n);
    return f;
}

/* out (n, m) = x (n, k) @ W^T, W (m, k); sums in double. */
static void matmul_ref(float *out, const float *x, const float *w, int n, int m, int k, int accumulate) {
    int t, r, i;
    for (t = 0; t < n; t++)
        for (r = 0; r < m; r++) {
            double s = accumulate ? out[(size_t)t * m + r] : 0.0;
            for (i = 0; i < k; i++) s += (double)x[(size_t)t * k + i] * w[(size_t)r * k + i];
            out[(size_t)t * m + r] = (float)s;
        }
}

static void rmsnorm_bf16(float *out, const float *x, const float *w, int n, int h, double eps) {
    int t, i;
    for (t = 0; t < n; t++) {
        double ss = 0;
        float inv;
        for (i = 0; i < h; i++) ss += (double)x[(size_t)t * h + i] * x[(size_t)t * h + i];
        inv = (float)(1.0 / sqrt(ss / h + eps));
        for (i = 0; i < h; i++) out[(size_t)t * h + i] = w[i] * (x[(size_t)t * h + i] * inv);
    }
    round_bf16(out, (size_t)n * h);
}

/* The RMSNorm folded into the GEMVs (a one-token forward, te_llama_kernels.cu's fold_norm): out = bf16(w x) and
   inv[t] = 1 / rms(x[t]), which the GEMM after it applies to its fp32 sums. */
static void rmsnorm_folded(float *out, float *inv, const float *x, const float *w, int n, int h, double eps) {
    int t, i;
    for (t = 0; t < n; t++) {
        double ss = 0;
        for (i = 0; i < h; i++) ss += (double)x[(size_t)t * h + i] * x[(size_t)t * h + i];
        inv[t] = (float)(1.0 / sqrt(ss / h + eps));
        for (i = 0; i < h; i++) out[(size_t)t * h + i] = w[i] * x[(size_t)t * h + i];
    }
    round_bf16(out, (size_t)n * h);
}

/* Whether a one-token forward of this config folds its norms into the GEMVs (te_llama__layers: every GEMM on the
   GEMV, whose k must be a multiple of 64 and m of 16). */
static int one_token_folds(const te_llama_config *c) {
    const int q = c->num_attention_heads * c->head_dim, kv = c->num_key_value_heads * c->head_dim;
    return c->hidden_size % 64 == 0 && q % 64 == 0 && c->intermediate_size % 64 == 0 && (q + 2 * kv) % 16 == 0 &&
           c->head_dim % 16 == 0 && c->hidden_size / 16 <= 1024;
}

/* The forward of one fresh sequence as the CUDA backend rounds it (te_llama_kernels.cu, NUMERICS): the CPU
   reference's math with bf16 at every GEMM input and in the KV cache. Logits (n, vocab) at every position. With
   fold, the norms before fc1 and before QKV (but layer 0's) are folded as a one-token forward folds them. */
static float *emulate_gpu(te_llama_model *m, const int32_t *tokens, int n, int fold) {
    const te_llama_config *c = &m->config;
    int h = c->hidden_size, hd = c->head_dim, half = hd / 2, nh = c->num_attention_heads, nkv = c->num_key_value_heads;
    int q_dim = nh * hd, kv_dim = nkv * hd, ld = q_dim + 2 * kv_dim, I = c->intermediate_size, V = c->vocab_size;
    int t, l, i, hh, j;
    float scale = 1.0f / sqrtf((float)hd);
    float *x = (float *)malloc(sizeof(float) * (size_t)n * h), *xn = (float *)malloc(sizeof(float) * (size_t)n * h);
    float *qkv = (float *)malloc(sizeof(float) * (size_t)n * ld), *att = (float *)malloc(sizeof(float) * (size_t)n * q_dim);
    float *mlp = (float *)malloc(sizeof(float) * (size_t)n * 2 * I), *act = (float *)malloc(sizeof(float) * (size_t)n * I);
    float *kc = (float *)malloc(sizeof(float) * (size_t)n * kv_dim), *vc = (float *)malloc(sizeof(float) * (size_t)n * kv_dim);
    float *cs = (float *)malloc(sizeof(float) * (size_t)n * hd), *sc = (float *)malloc(sizeof(float) * (size_t)n);
    float *logits = (float *)malloc(sizeof(float) * (size_t)n * V), *w;
    float *inv = (float *)malloc(sizeof(float) * (size_t)n);
    float *emb = param_f32(&m->embed_tokens, (size_t)V);
    for (t = 0; t < n; t++) memcpy(x + (size_t)t * h, emb + (size_t)tokens[t] * h, sizeof(float) * h);
    free(emb);
    for (t = 0; t < n; t++)
        for (i = 0; i < half; i++) {
            float angle = (float)t * m->rope_inv_freq[i];
            cs[(size_t)t * hd + i] = (float)cos((double)angle);
            cs[(size_t)t * hd + half + i] = (float)sin((double)angle);
        }
    for (l = 0; l < c->num_hidden_layers; l++) {
        const te_llama_param *P = m->layers[l]->params;
        w = param_f32(&P[0], 1);
        if (fold && l > 0) rmsnorm_folded(xn, inv, x, w, n, h, c->rms_norm_eps);
        else rmsnorm_bf16(xn, x, w, n, h, c->rms_norm_eps);
        free(w);
        w = param_f32(&P[1], (size_t)ld); /* the view's first rows and the k, v rows after them */
        matmul_ref(qkv, xn, w, n, ld, h, 0);
        free(w);
        for (t = 0; t < n; t++) {
            float *row = qkv + (size_t)t * ld;
            if (fold && l > 0)
                for (i = 0; i < ld; i++) row[i] *= inv[t];
            const float *cos_ = cs + (size_t)t * hd, *sin_ = cos_ + half;
            for (hh = 0; hh < nh + nkv; hh++)
                for (i = 0; i < half; i++) {
                    float a = row[hh * hd + i], b = row[hh * hd + i + half];
                    row[hh * hd + i] = a * cos_[i] - b * sin_[i];
                    row[hh * hd + i + half] = b * cos_[i] + a * sin_[i];
                }
            memcpy(kc + (size_t)t * kv_dim, row + q_dim, sizeof(float) * kv_dim);
            memcpy(vc + (size_t)t * kv_dim, row + q_dim + kv_dim, sizeof(float) * kv_dim);
        }
        round_bf16(kc, (size_t)n * kv_dim);
        round_bf16(vc, (size_t)n * kv_dim);
        for (t = 0; t < n; t++)
            for (hh = 0; hh < nh; hh++) {
                const float *q = qkv + (size_t)t * ld + hh * hd;
                size_t off = (size_t)(hh / (nh / nkv)) * hd;
                double mx = -INFINITY, sum = 0;
                for (j = 0; j <= t; j++) {
                    double s = 0;
                    for (i = 0; i < hd; i++) s += (double)(q[i] * scale) * kc[(size_t)j * kv_dim + off + i];
                    sc[j] = (float)s;
                    if (sc[j] > mx) mx = sc[j];
                }
                for (j = 0; j <= t; j++) { sc[j] = (float)exp(sc[j] - mx); sum += sc[j]; }
                for (i = 0; i < hd; i++) {
                    double o = 0;
                    for (j = 0; j <= t; j++) o += (double)sc[j] * vc[(size_t)j * kv_dim + off + i];
                    att[(size_t)t * q_dim + hh * hd + i] = (float)(o / sum);
                }
            }
        round_bf16(att, (size_t)n * q_dim);
        w = param_f32(&P[4], (size_t)h);
        matmul_ref(x, att, w, n, h, q_dim, 1);
        free(w);
        w = param_f32(&P[5], 1);
        if (fold) rmsnorm_folded(xn, inv, x, w, n, h, c->rms_norm_eps);
        else rmsnorm_bf16(xn, x, w, n, h, c->rms_norm_eps);
        free(w);
        w = param_f32(&P[6], (size_t)2 * I);
        matmul_ref(mlp, xn, w, n, 2 * I, h, 0);
        free(w);
        if (fold)
            for (t = 0; t < n; t++)
                for (i = 0; i < 2 * I; i++) mlp[(size_t)t * 2 * I + i] *= inv[t];
        round_bf16(mlp, (size_t)n * 2 * I); /* fc1 writes bf16 */
        for (t = 0; t < n; t++)
            for (i = 0; i < I; i++) {
                float g = mlp[(size_t)t * 2 * I + i], u = mlp[(size_t)t * 2 * I + I + i];
                act[(size_t)t * I + i] = g / (1.0f + expf(-g)) * u;
            }
        round_bf16(act, (size_t)n * I);
        w = param_f32(&P[7], (size_t)h);
        matmul_ref(x, act, w, n, h, I, 1);
        free(w);
    }
    w = param_f32(&m->norm, 1);
    rmsnorm_bf16(xn, x, w, n, h, c->rms_norm_eps);
    free(w);
    w = param_f32(&m->lm_head, (size_t)V);
    matmul_ref(logits, xn, w, n, V, h, 0);
    free(w);
    free(x); free(xn); free(qkv); free(att); free(mlp); free(act); free(kc); free(vc); free(cs); free(sc); free(inv);
    return logits;
}

/* Logits of tokens at positions pos0.. of sequence seq in cache (want: every token when NULL). */
static te_llama_result run(te_llama_model *m, te_llama_kv_cache *cache, const int32_t *tokens, int n, int pos0,
                           const uint8_t *want, float *logits) {
    int32_t *pos = (int32_t *)malloc(sizeof(int32_t) * (size_t)n);
    te_llama_batch b;
    te_llama_result r;
    int i;
    for (i = 0; i < n; i++) pos[i] = pos0 + i;
    memset(&b, 0, sizeof b);
    b.n_tokens = n;
    b.tokens = tokens;
    b.pos = pos;
    b.want_logits = want;
    r = te_llama_forward(m, cache, &b, logits);
    free(pos);
    return r;
}

/* Logits at every position of a fresh sequence. */
static float *prompt_logits(te_llama_model *m, const int32_t *tokens, int n) {
    te_llama_kv_cache *cache = NULL;
    float *logits = (float *)malloc(sizeof(float) * (size_t)n * (size_t)m->config.vocab_size);
    CHECK_RESULT(te_llama_kv_cache_create(m, 1, n + 1, &cache), TE_LLAMA_OK);
    if (cache) CHECK_RESULT(run(m, cache, tokens, n, 0, NULL, logits), TE_LLAMA_OK);
    te_llama_kv_cache_free(cache);
    return logits;
}

/* Last-token logits of one prompt run alone. */
static void last_logits(te_llama_model *m, const int32_t *tokens, int n, float *out) {
    te_llama_kv_cache *cache = NULL;
    uint8_t *want = (uint8_t *)calloc((size_t)n, 1);
    want[n - 1] = 1;
    CHECK_RESULT(te_llama_kv_cache_create(m, 1, n, &cache), TE_LLAMA_OK);
    if (cache) CHECK_RESULT(run(m, cache, tokens, n, 0, want, out), TE_LLAMA_OK);
    te_llama_kv_cache_free(cache);
    free(want);
}

static int stop_at_three(void *user, int32_t token) {
    (void)token;
    return ++*(int *)user == 3;
}

/* A slow host: each token is recorded after 2 ms, while the decode steps queued behind it run and land their ids. */
typedef struct slow_host { int32_t ids[64]; int n; } slow_host;
static int record_slowly(void *user, int32_t token) {
    slow_host *h = (slow_host *)user;
    const double until = now_s() + 2e-3;
    while (now_s() < until) {}
    if (h->n < 64) h->ids[h->n] = token;
    h->n++;
    return 0;
}

/* The GPU against the CPU emulation of its rounding. On the small fixtures what is left is summation order, far
   below the bf16 error itself (measured 1e-6 and under), so tol = 1e-4 catches what the 1e-2 tolerance would let
   through. On larger inputs the bf16 roundings cascade: one rounding that a last-bit difference flips perturbs the
   next GEMM's outputs enough to flip others, and the two computations become independent bf16 roundings of the
   same math (on the random model merely fusing the rope multiply-add in the emulation moves its logits by 1.9e-3),
   so there tol is the bf16 tolerance. */
static void check_emulated(const char *name, te_llama_model *cpu, const int32_t *prompt, int n, const float *gpu,
                           double e_cpu, double tol) {
    const int fold = n == 1 && one_token_folds(&cpu->config);
    float *emu = emulate_gpu(cpu, prompt, n, fold);
    double e = rel_l2(gpu, emu, (size_t)n * cpu->config.vocab_size, NULL);
    printf("  %s: GPU vs CPU emulating the GPU's bf16 rounding: rel L2 %.2e (vs %.2e against the fp32 CPU)\n", name, e, e_cpu);
    if (fold) { /* how far the same emulation without the fold would be: what the check tells apart */
        float *plain = emulate_gpu(cpu, prompt, n, 0);
        printf("  %s: the emulation without the fold is %.2e from the GPU\n", name, rel_l2(gpu, plain, (size_t)n * cpu->config.vocab_size, NULL));
        free(plain);
    }
    CHECK(e < tol, "%s: GPU vs its CPU emulation rel L2 %g (tolerance %g)", name, e, tol);
    free(emu);
}

/* A one-token forward against the emulation: every GEMM takes the GEMV, with the norms folded into it where the
   shapes allow (one_token_folds; the emulation follows). */
static void check_one_token(const char *name, te_llama_model *cpu, te_llama_model *gpu, const int32_t *prompt, double tol) {
    float *lg = prompt_logits(gpu, prompt, 1), *lc = prompt_logits(cpu, prompt, 1);
    char name1[96];
    snprintf(name1, sizeof name1, "%s, one token%s", name, one_token_folds(&cpu->config) ? " (norms folded)" : "");
    check_emulated(name1, cpu, prompt, 1, lg, rel_l2(lg, lc, (size_t)cpu->config.vocab_size, NULL), tol);
    free(lg);
    free(lc);
}

/* KV-cache decode vs recompute on the GPU: prefill half the prompt, then one token at a time. Where the prompt
   ran through the tensor-core prefill attention (head_dim 64 or 128: q and the probabilities rounded to bf16) and
   the steps through the split-KV kernel (fp32), the two are independent bf16 roundings of the same math, and the
   tolerance is the bf16 one (1e-2); where one kernel did both, 5e-3 (measured 0 before the tiled kernel). */
static void check_decode(const char *name, te_llama_model *gpu, const int32_t *prompt, int n, const float *full) {
    const double tol = (gpu->config.head_dim == 64 || gpu->config.head_dim == 128) && n / 2 >= 16 ? 1e-2 : 5e-3;
    int V = gpu->config.vocab_size, k = n / 2, i;
    te_llama_kv_cache *cache = NULL;
    float *got = (float *)malloc(sizeof(float) * (size_t)n * V);
    double e;
    CHECK_RESULT(te_llama_kv_cache_create(gpu, 1, n, &cache), TE_LLAMA_OK);
    if (!cache) { free(got); return; }
    CHECK_RESULT(run(gpu, cache, prompt, k, 0, NULL, got), TE_LLAMA_OK);
    for (i = k; i < n; i++) CHECK_RESULT(run(gpu, cache, prompt + i, 1, i, NULL, got + (size_t)i * V), TE_LLAMA_OK);
    e = rel_l2(got, full, (size_t)n * V, NULL);
    printf("  %s: decode after a %d-token prefill vs recompute: rel L2 %.2e (tolerance %.0e)\n", name, k, e, tol);
    CHECK(e < tol, "%s: decode vs recompute rel L2 %g", name, e);
    te_llama_kv_cache_free(cache);
    free(got);
}

/* Two sequences of unequal lengths in one batch, interleaved, vs each alone. */
static void check_batch(const char *name, te_llama_model *gpu, te_llama_model *cpu, const int32_t *a, int na,
                        const int32_t *b, int nb, const float *ref /* (2, V) or NULL */) {
    int V = gpu->config.vocab_size, n = na + nb, i = 0, ia = 0, ib = 0;
    int32_t *tok = (int32_t *)malloc(sizeof(int32_t) * (size_t)n * 3), *pos = tok + n, *seq = pos + n;
    uint8_t *want = (uint8_t *)calloc((size_t)n, 1);
    float *both = (float *)malloc(sizeof(float) * 2 * V), *alone = (float *)malloc(sizeof(float) * 2 * V);
    float *cpu_alone = (float *)malloc(sizeof(float) * 2 * V);
    te_llama_kv_cache *cache = NULL;
    te_llama_batch batch;
    int last_a = -1, last_b = -1;
    double e_gpu, e_cpu, e_ref = 0;
    while (ia < na || ib < nb) { /* a0 b0 a1 b1 ...: each sequence in position order */
        if (ia < na) { tok[i] = a[ia]; pos[i] = ia; seq[i] = 0; if (++ia == na) last_a = i; i++; }
        if (ib < nb) { tok[i] = b[ib]; pos[i] = ib; seq[i] = 1; if (++ib == nb) last_b = i; i++; }
    }
    want[last_a] = want[last_b] = 1;
    memset(&batch, 0, sizeof batch);
    batch.n_tokens = n;
    batch.tokens = tok;
    batch.pos = pos;
    batch.seq = seq;
    batch.want_logits = want;
    CHECK_RESULT(te_llama_kv_cache_create(gpu, 2, n, &cache), TE_LLAMA_OK);
    if (cache) CHECK_RESULT(te_llama_forward(gpu, cache, &batch, both), TE_LLAMA_OK);
    te_llama_kv_cache_free(cache);
    /* batch order: whichever sequence ends first comes first */
    last_logits(gpu, last_a < last_b ? a : b, last_a < last_b ? na : nb, alone);
    last_logits(gpu, last_a < last_b ? b : a, last_a < last_b ? nb : na, alone + V);
    last_logits(cpu, last_a < last_b ? a : b, last_a < last_b ? na : nb, cpu_alone);
    last_logits(cpu, last_a < last_b ? b : a, last_a < last_b ? nb : na, cpu_alone + V);
    e_gpu = rel_l2(both, alone, 2 * (size_t)V, NULL);
    e_cpu = rel_l2(both, cpu_alone, 2 * (size_t)V, NULL);
    CHECK(e_gpu < 5e-3, "%s: batch vs separate on the GPU rel L2 %g", name, e_gpu);
    CHECK(e_cpu < 1e-2, "%s: GPU batch vs CPU separate rel L2 %g", name, e_cpu);
    if (ref) { /* the reference rows are in prompt order (a, b) */
        float *ordered = (float *)malloc(sizeof(float) * 2 * V);
        memcpy(ordered, last_a < last_b ? both : both + V, sizeof(float) * V);
        memcpy(ordered + V, last_a < last_b ? both + V : both, sizeof(float) * V);
        e_ref = rel_l2(ordered, ref, 2 * (size_t)V, NULL);
        CHECK(e_ref < 2e-2, "%s: GPU batch vs HF reference rel L2 %g", name, e_ref);
        free(ordered);
    }
    printf("  %s: batch of %d + %d tokens vs separate: GPU %.2e, CPU %.2e%s", name, na, nb, e_gpu, e_cpu, ref ? "" : "\n");
    if (ref) printf(", HF float64 %.2e\n", e_ref);
    free(tok);
    free(want);
    free(both);
    free(alone);
    free(cpu_alone);
}

/* The CPU's greedy continuation with its top-2 gaps, by forward calls (te_llama_generate does not expose them). */
static void cpu_greedy(te_llama_model *cpu, const int32_t *prompt, int n, int steps, int32_t *ids, float *gaps) {
    int V = cpu->config.vocab_size, s;
    te_llama_kv_cache *cache = NULL;
    uint8_t *want = (uint8_t *)calloc((size_t)n, 1);
    float *logits = (float *)malloc(sizeof(float) * V);
    want[n - 1] = 1;
    CHECK_RESULT(te_llama_kv_cache_create(cpu, 1, n + steps, &cache), TE_LLAMA_OK);
    if (cache) CHECK_RESULT(run(cpu, cache, prompt, n, 0, want, logits), TE_LLAMA_OK);
    for (s = 0; s < steps && cache; s++) {
        ids[s] = argmax(logits, V, &gaps[s]);
        if (s + 1 < steps) CHECK_RESULT(run(cpu, cache, &ids[s], 1, n + s, NULL, logits), TE_LLAMA_OK);
    }
    te_llama_kv_cache_free(cache);
    free(want);
    free(logits);
}

static void check_generate(const char *name, te_llama_model *gpu, te_llama_model *cpu, const int32_t *prompt, int n,
                           double max_abs, const int32_t *hf_ids) {
    enum { STEPS = 24 };
    int32_t cpu_ids[STEPS], out[STEPS], out2[STEPS], out3[STEPS];
    float gaps[STEPS];
    te_llama_generate_options g;
    double bound = 3.0 * max_abs;
    int n_out = 0, n2 = 0, compared = 0, s, same = 1, hf_same = 0, calls = 0, saved_eos[TE_LLAMA_MAX_EOS], saved_n, stop_id, expect;
    double t0;
    cpu_greedy(cpu, prompt, n, STEPS, cpu_ids, gaps);
    memset(&g, 0, sizeof g);
    g.max_new_tokens = STEPS;
    g.ignore_eos = 1;
    t0 = now_s();
    CHECK_RESULT(te_llama_generate(gpu, &g, prompt, n, out, STEPS, &n_out), TE_LLAMA_OK);
    t0 = now_s() - t0;
    CHECK(n_out == STEPS, "%s: greedy produced %d tokens", name, n_out);
    for (s = 0; s < n_out && gaps[s] > bound; s++, compared++) same &= out[s] == cpu_ids[s];
    for (s = 0; s < n_out; s++) hf_same += hf_ids && out[s] == hf_ids[s];
    printf("  %s: greedy %d tokens in %.1f ms; compared %d steps (CPU top-2 gap > %.3g): %s; %d of %d equal to HF's\n",
           name, n_out, 1e3 * t0, compared, bound, same ? "identical" : "DIFFERENT", hf_same, STEPS);
    CHECK(same, "%s: GPU greedy differs from the CPU's within the first %d steps", name, compared);
    /* a first step closer than the bound (the prompt's own GPU-CPU difference) makes every later step incomparable:
       the two continuations may part there legitimately (seen on gqa_tied_llama3 once fc1's output went bf16) */
    if (!compared) printf("  %s: the CPU's first top-2 gap %.3g is within the bound %.3g: no step comparable\n", name, gaps[0], bound);
    if (n_out != STEPS) return;
    /* the callback stops it; max_new_tokens beyond cap is cut to cap */
    g.on_token = stop_at_three;
    g.user = &calls;
    CHECK_RESULT(te_llama_generate(gpu, &g, prompt, n, out2, STEPS, &n2), TE_LLAMA_OK);
    CHECK(n2 == 3 && memcmp(out2, out, 3 * sizeof(int32_t)) == 0, "%s: on_token stop gave %d tokens", name, n2);
    {   /* two steps stay queued ahead of the host (te_llama__decode_fill); a slow host reads each in time */
        slow_host h;
        h.n = 0;
        g.on_token = record_slowly;
        g.user = &h;
        CHECK_RESULT(te_llama_generate(gpu, &g, prompt, n, out2, STEPS, &n2), TE_LLAMA_OK);
        CHECK(n2 == STEPS && h.n == STEPS && memcmp(out2, out, sizeof out) == 0 && memcmp(h.ids, out, sizeof out) == 0,
              "%s: with a slow on_token the greedy ids differ (%d tokens, %d seen)", name, n2, h.n);
    }
    g.on_token = NULL;
    CHECK_RESULT(te_llama_generate(gpu, &g, prompt, n, out2, 5, &n2), TE_LLAMA_OK);
    CHECK(n2 == 5 && memcmp(out2, out, 5 * sizeof(int32_t)) == 0, "%s: cap 5 gave %d tokens", name, n2);
    /* eos: make the second greedy token the only eos id; generation stops at its first appearance */
    memcpy(saved_eos, gpu->eos_token_ids, sizeof saved_eos);
    saved_n = gpu->n_eos_token_ids;
    stop_id = out[1];
    for (expect = 0; out[expect] != stop_id; expect++) {}
    expect++;
    gpu->eos_token_ids[0] = stop_id;
    gpu->n_eos_token_ids = 1;
    g.ignore_eos = 0;
    CHECK_RESULT(te_llama_generate(gpu, &g, prompt, n, out2, STEPS, &n2), TE_LLAMA_OK);
    CHECK(n2 == expect, "%s: eos %d should stop after %d tokens, got %d", name, stop_id, expect, n2);
    g.ignore_eos = 1;
    memcpy(gpu->eos_token_ids, saved_eos, sizeof saved_eos);
    gpu->n_eos_token_ids = saved_n;
    /* sampling on the device: one seed repeats; top_k 1 and a tiny top_p are greedy */
    g.sampler.temperature = 0.8f;
    g.sampler.top_k = 20;
    g.sampler.top_p = 0.9f;
    g.sampler.seed = 42;
    CHECK_RESULT(te_llama_generate(gpu, &g, prompt, n, out2, STEPS, &n2), TE_LLAMA_OK);
    CHECK_RESULT(te_llama_generate(gpu, &g, prompt, n, out3, STEPS, &n_out), TE_LLAMA_OK);
    CHECK(n2 == STEPS && n_out == STEPS && memcmp(out2, out3, sizeof out2) == 0, "%s: one seed, two different samples", name);
    for (s = 0, same = 1; s < n2; s++) same &= out2[s] >= 0 && out2[s] < gpu->config.vocab_size;
    CHECK(same, "%s: sampled id out of the vocabulary", name);
    printf("  %s: sampled (T 0.8, top_k 20, top_p 0.9, seed 42):", name);
    for (s = 0; s < 8; s++) printf(" %d", out2[s]);
    printf(" ...\n");
    g.sampler.temperature = 1.0f;
    g.sampler.top_k = 1;
    g.sampler.top_p = 0;
    CHECK_RESULT(te_llama_generate(gpu, &g, prompt, n, out2, STEPS, &n2), TE_LLAMA_OK);
    CHECK(n2 == STEPS && memcmp(out2, out, sizeof out) == 0, "%s: top_k 1 is not greedy", name);
    g.sampler.top_k = 0;
    g.sampler.top_p = 1e-6f;
    CHECK_RESULT(te_llama_generate(gpu, &g, prompt, n, out2, STEPS, &n2), TE_LLAMA_OK);
    CHECK(n2 == STEPS && memcmp(out2, out, sizeof out) == 0, "%s: top_p 1e-6 is not greedy", name);
    g.sampler.temperature = -1;
    CHECK_RESULT(te_llama_generate(gpu, &g, prompt, n, out2, STEPS, &n2), TE_LLAMA_ERR_INVALID_ARGUMENT);
}

/* Leading steps of ids that must equal the CPU's greedy ids: while the CPU's top-2 gap exceeds bound (see the top
   of this file); 0 when a compared step differs. */
static int gap_prefix(const int32_t *ids, const int32_t *cpu_ids, const float *gaps, int steps, double bound, int *same) {
    int s;
    for (s = 0; s < steps && gaps[s] > bound; s++) *same &= ids[s] == cpu_ids[s];
    return s;
}

/* te_llama_generate_batch on the GPU with prompts of n, n / 2 + 1, 1 and 3 tokens: each sequence against
   te_llama_generate of its prompt on the GPU and against the CPU's batch (which is exactly the CPU alone). Batch and
   single runs of the GPU sum their GEMMs and the split-KV attention in orders that depend on the batch size, so
   tokens are compared with check_generate's rule: step by step while the CPU's top-2 gap exceeds 3x the largest
   logit difference measured on the prompt (the rest is printed). Then an eos id that stops sequences on different
   steps, sampling (one seed repeats; n_seq 1 draws exactly as te_llama_generate), top_k 1 == greedy, and 130
   sequences (more than the 128 logits rows lm_head and sampling run over at a time). */
static void check_generate_batch(const char *name, te_llama_model *gpu, te_llama_model *cpu, const int32_t *prompt,
                                 int n, double max_abs) {
    enum { N = 4, STEPS = 16, BIG = 130, BIG_STEPS = 6 };
    const int32_t *prompts[BIG];
    int32_t out[N * STEPS], cpu_out[N * STEPS], again[N * STEPS], one[STEPS], cpu_ids[STEPS], tail[3];
    int32_t *big_out = NULL, *big_cpu = NULL;
    int n_prompt[BIG], n_out[BIG], n_cpu[BIG], n1 = 0, s, i, compared = 0, same = 1, cpu_same = 1, identical = 0, ok;
    int expect, stop_id, saved_eos[TE_LLAMA_MAX_EOS], saved_n;
    float gaps[STEPS];
    double bound = 3.0 * max_abs, t_batch, t_single = 0, t0;
    te_llama_generate_options g;
    for (i = 0; i < 3; i++) tail[i] = prompt[n - 1 - i];
    prompts[0] = prompt; n_prompt[0] = n;
    prompts[1] = prompt; n_prompt[1] = n / 2 + 1;
    prompts[2] = prompt + n - 1; n_prompt[2] = 1;
    prompts[3] = tail; n_prompt[3] = 3;
    memset(&g, 0, sizeof g);
    g.max_new_tokens = STEPS;
    g.ignore_eos = 1;
    t0 = now_s();
    CHECK_RESULT(te_llama_generate_batch(gpu, &g, prompts, n_prompt, N, out, STEPS, n_out), TE_LLAMA_OK);
    t_batch = now_s() - t0;
    CHECK_RESULT(te_llama_generate_batch(cpu, &g, prompts, n_prompt, N, cpu_out, STEPS, n_cpu), TE_LLAMA_OK);
    for (s = 0; s < N; s++) {
        int c;
        t0 = now_s();
        CHECK_RESULT(te_llama_generate(gpu, &g, prompts[s], n_prompt[s], one, STEPS, &n1), TE_LLAMA_OK);
        t_single += now_s() - t0;
        cpu_greedy(cpu, prompts[s], n_prompt[s], STEPS, cpu_ids, gaps);
        CHECK(n_out[s] == STEPS && n_cpu[s] == STEPS && n1 == STEPS, "%s: batch sequence %d: %d tokens on the GPU, %d on the CPU, %d alone",
              name, s, n_out[s], n_cpu[s], n1);
        cpu_same &= memcmp(cpu_out + s * STEPS, cpu_ids, sizeof cpu_ids) == 0;
        c = gap_prefix(out + s * STEPS, cpu_ids, gaps, STEPS, bound, &same);
        gap_prefix(one, cpu_ids, gaps, c, bound, &same); /* the single run over the same steps: so batch == single there */
        compared += c;
        identical += memcmp(out + s * STEPS, one, sizeof one) == 0;
    }
    printf("  %s: batch of %d greedy x %d tokens in %.1f ms (one at a time %.1f ms); compared %d steps (CPU top-2 gap > %.3g): %s; "
           "%d of %d sequences identical to the GPU alone\n", name, N, STEPS, 1e3 * t_batch, 1e3 * t_single, compared, bound,
           same ? "identical" : "DIFFERENT", identical, N);
    CHECK(cpu_same, "%s: the CPU's batch greedy differs from the CPU alone", name);
    CHECK(same, "%s: GPU batch greedy differs from GPU single / CPU greedy within the compared steps", name);
    CHECK(compared >= 1, "%s: the gap bound %g leaves no step to compare", name, bound);
    /* eos: sequence 0's second token; each sequence stops at its first appearance, the rest as before */
    memcpy(saved_eos, gpu->eos_token_ids, sizeof saved_eos);
    saved_n = gpu->n_eos_token_ids;
    stop_id = out[1];
    gpu->eos_token_ids[0] = stop_id;
    gpu->n_eos_token_ids = 1;
    g.ignore_eos = 0;
    CHECK_RESULT(te_llama_generate_batch(gpu, &g, prompts, n_prompt, N, again, STEPS, n_out), TE_LLAMA_OK);
    for (s = 0, ok = 1; s < N; s++) {
        for (expect = 0; expect < STEPS && out[s * STEPS + expect] != stop_id; expect++) {}
        expect = expect < STEPS ? expect + 1 : STEPS;
        ok &= n_out[s] == expect && memcmp(again + s * STEPS, out + s * STEPS, sizeof(int32_t) * (size_t)expect) == 0;
    }
    CHECK(ok && n_out[0] <= 2, "%s: batch with eos %d: sequences stopped after %d %d %d %d tokens", name, stop_id, n_out[0], n_out[1],
          n_out[2], n_out[3]);
    memcpy(gpu->eos_token_ids, saved_eos, sizeof saved_eos);
    gpu->n_eos_token_ids = saved_n;
    g.ignore_eos = 1;
    /* top_k 1 is greedy */
    g.sampler.temperature = 1.0f;
    g.sampler.top_k = 1;
    g.sampler.seed = 3;
    CHECK_RESULT(te_llama_generate_batch(gpu, &g, prompts, n_prompt, N, again, STEPS, n_out), TE_LLAMA_OK);
    CHECK(memcmp(again, out, sizeof out) == 0, "%s: batch top_k 1 is not the batch's greedy", name);
    /* sampled: one seed repeats, ids in the vocabulary; one sequence draws as te_llama_generate */
    g.sampler.temperature = 0.8f;
    g.sampler.top_k = 40;
    g.sampler.seed = 42;
    CHECK_RESULT(te_llama_generate_batch(gpu, &g, prompts, n_prompt, N, out, STEPS, n_out), TE_LLAMA_OK);
    CHECK_RESULT(te_llama_generate_batch(gpu, &g, prompts, n_prompt, N, again, STEPS, n_cpu), TE_LLAMA_OK);
    CHECK(memcmp(out, again, sizeof out) == 0 && memcmp(n_out, n_cpu, sizeof(int) * N) == 0, "%s: batch sampled twice with one seed differs", name);
    for (i = 0, ok = 1; i < N * STEPS; i++) ok &= out[i] >= 0 && out[i] < gpu->config.vocab_size;
    CHECK(ok, "%s: batch sampled an id outside the vocabulary", name);
    printf("  %s: batch sampled (T 0.8, top_k 40, seed 42 + s):", name);
    for (s = 0; s < N; s++) printf(" [%d %d %d ...]", out[s * STEPS], out[s * STEPS + 1], out[s * STEPS + 2]);
    printf("\n");
    CHECK_RESULT(te_llama_generate_batch(gpu, &g, prompts, n_prompt, 1, again, STEPS, n_cpu), TE_LLAMA_OK);
    CHECK_RESULT(te_llama_generate(gpu, &g, prompts[0], n_prompt[0], one, STEPS, &n1), TE_LLAMA_OK);
    CHECK(n_cpu[0] == n1 && memcmp(again, one, sizeof one) == 0, "%s: a batch of one sampled differs from te_llama_generate", name);
    memset(&g.sampler, 0, sizeof g.sampler);
    /* 130 sequences, prompts of 1 to 5 tokens from every offset of the prompt */
    for (s = 0; s < BIG; s++) {
        prompts[s] = prompt + s % n;
        n_prompt[s] = 1 + s % 5 < n - s % n ? 1 + s % 5 : n - s % n;
    }
    g.max_new_tokens = BIG_STEPS;
    big_out = (int32_t *)malloc(sizeof(int32_t) * BIG * BIG_STEPS);
    big_cpu = (int32_t *)malloc(sizeof(int32_t) * BIG * BIG_STEPS);
    CHECK_RESULT(te_llama_generate_batch(gpu, &g, prompts, n_prompt, BIG, big_out, BIG_STEPS, n_out), TE_LLAMA_OK);
    CHECK_RESULT(te_llama_generate_batch(cpu, &g, prompts, n_prompt, BIG, big_cpu, BIG_STEPS, n_cpu), TE_LLAMA_OK);
    for (s = 0, compared = 0, same = 1, ok = 1; s < BIG; s++) {
        cpu_greedy(cpu, prompts[s], n_prompt[s], BIG_STEPS, cpu_ids, gaps);
        ok &= n_out[s] == BIG_STEPS && n_cpu[s] == BIG_STEPS && memcmp(big_cpu + s * BIG_STEPS, cpu_ids, sizeof(int32_t) * BIG_STEPS) == 0;
        compared += gap_prefix(big_out + s * BIG_STEPS, cpu_ids, gaps, BIG_STEPS, bound, &same);
    }
    printf("  %s: batch of %d sequences: compared %d steps with the CPU: %s\n", name, BIG, compared, same ? "identical" : "DIFFERENT");
    CHECK(ok, "%s: batch of %d: token counts, or the CPU's batch vs the CPU alone", name, BIG);
    CHECK(same && compared >= 1, "%s: batch of %d vs the CPU: %d steps compared, %s", name, BIG, compared, same ? "same" : "different");
    free(big_out);
    free(big_cpu);
    /* the library checks before the device runs; a direct call checks too */
    tail[1] = gpu->config.vocab_size;
    prompts[0] = tail;
    n_prompt[0] = 3;
    CHECK_RESULT(te_llama_generate_batch(gpu, &g, prompts, n_prompt, 1, out, STEPS, n_out), TE_LLAMA_ERR_OUT_OF_RANGE);
    CHECK_RESULT(te_llama_cuda_generate_batch(gpu, &g, prompts, n_prompt, 1, out, STEPS, n_out), TE_LLAMA_ERR_OUT_OF_RANGE);
    CHECK_RESULT(te_llama_cuda_generate_batch(gpu, &g, prompts, n_prompt, 0, out, STEPS, n_out), TE_LLAMA_ERR_INVALID_ARGUMENT);
    g.sampler.top_p = 2;
    CHECK_RESULT(te_llama_generate_batch(gpu, &g, prompts, n_prompt, 1, out, STEPS, n_out), TE_LLAMA_ERR_INVALID_ARGUMENT);
}

static void check_save(const char *name, te_llama_model *gpu, te_llama_model *cpu) {
    char dg[1100], dc[1100], a[1200], b[1200];
    snprintf(dg, sizeof dg, "%s/%s_cuda", out_dir, name);
    snprintf(dc, sizeof dc, "%s/%s_cpu", out_dir, name);
    CHECK_RESULT(te_llama_save(gpu, dg, NULL), TE_LLAMA_OK);
    CHECK_RESULT(te_llama_save(cpu, dc, NULL), TE_LLAMA_OK);
    snprintf(a, sizeof a, "%s/model.safetensors", dg);
    snprintf(b, sizeof b, "%s/model.safetensors", dc);
    CHECK(same_file(a, b), "%s: saved weights differ between the CUDA and the CPU model", name);
    snprintf(a, sizeof a, "%s/config.json", dg);
    snprintf(b, sizeof b, "%s/config.json", dc);
    CHECK(same_file(a, b), "%s: saved config.json differs between the CUDA and the CPU model", name);
}

static void test_fixture(const char *name) {
    char dir[256], path[300];
    int32_t prompt[64], hf_ids[64], batch_a[64], batch_b[64];
    int n, V, n_hf, na = 0, nb = 0, i;
    size_t len;
    char *text;
    te_llama_json j;
    float *ref, *lc, *lg, *batch_ref = NULL;
    double e_cpu, e_hf, e_cpu_hf, max_abs;
    te_llama_model *cpu, *gpu;
    snprintf(dir, sizeof dir, FIXTURES "%s", name);
    snprintf(path, sizeof path, "%s/reference.json", dir);
    text = check_read_file(path, &len);
    CHECK(text != NULL, "%s missing", path);
    if (!text) return;
    CHECK_RESULT(te_llama_json_parse(text, len, NULL, &j), TE_LLAMA_OK);
    n = json_ints(&j, te_llama_json_get(&j, 0, "prompt_ids"), prompt, 64);
    n_hf = json_ints(&j, te_llama_json_get(&j, 0, "greedy_ids"), hf_ids, 64);
    te_llama_json_free(&j);
    free(text);
    snprintf(path, sizeof path, "%s/ref_logits.f32", dir);
    ref = (float *)check_read_file(path, &len);
    cpu = load(dir, TE_LLAMA_BACKEND_CPU);
    gpu = load(dir, TE_LLAMA_BACKEND_CUDA);
    if (!cpu || !gpu || !ref || n < 4) goto done;
    V = cpu->config.vocab_size;
    CHECK(len == sizeof(float) * (size_t)n * V, "%s: ref_logits.f32 has %zu bytes", name, len);
    CHECK(gpu->options.backend == TE_LLAMA_BACKEND_CUDA, "%s: CUDA load fell back to the CPU", name);
    /* the prompt's logits at every position */
    lc = prompt_logits(cpu, prompt, n);
    lg = prompt_logits(gpu, prompt, n);
    e_cpu = rel_l2(lg, lc, (size_t)n * V, &max_abs);
    e_hf = rel_l2(lg, ref, (size_t)n * V, NULL);
    e_cpu_hf = rel_l2(lc, ref, (size_t)n * V, NULL);
    printf("  %s: prompt logits (%d x %d) rel L2: GPU vs CPU %.2e (max abs %.2e), GPU vs HF %.2e, CPU vs HF %.2e\n", name,
           n, V, e_cpu, max_abs, e_hf, e_cpu_hf);
    CHECK(e_cpu < 1e-2, "%s: GPU vs CPU logits rel L2 %g", name, e_cpu);
    CHECK(e_hf < 2e-2, "%s: GPU vs HF float64 logits rel L2 %g", name, e_hf);
    /* Up to 8 tokens the decode GEMVs run QKV and proj (te_llama__gemv_kernel); the 11-token prompt takes cuBLASLt,
       as every longer prefill does. Both follow the emulation to 1e-7 here but for one value of mha_untied_bf16's
       11-token forward that lies within an fp32 ulp of a bf16 rounding boundary: cuBLASLt's sum lands on the
       other side of it, and that one flip moves the logits by 1.2e-3 (bench/NOTES.md, run 6: the emulation with
       every value nudged by -1, 0 or +1 ulp before each rounding flips it in 7 of 12 trials, by exactly that much).
       So the tight check runs on the first 8 tokens, the whole prompt at half the bf16 tolerance. Since run 8
       changed two summation orders on this path (the GEMV's k split, the decode attention's) the 8-token forward
       lands on cuBLASLt's side too: mha_untied_bf16's first 8 tokens are 1.31e-3 from the emulation, the size of
       that one flip, and take 2e-3 (its one-token forward still takes 1e-4; the fp32 CPU is 5.1e-3 away). */
    {
        float *lg8 = prompt_logits(gpu, prompt, 8);
        char name8[96];
        snprintf(name8, sizeof name8, "%s, first 8 tokens (GEMV)", name);
        check_emulated(name8, cpu, prompt, 8, lg8, rel_l2(lg8, lc, (size_t)8 * V, NULL), strcmp(name, "mha_untied_bf16") ? 1e-4 : 2e-3);
        free(lg8);
    }
    check_emulated(name, cpu, prompt, n, lg, e_cpu, 5e-3);
    check_one_token(name, cpu, gpu, prompt, 1e-4);
    check_decode(name, gpu, prompt, n, lg);
    /* two sequences of unequal lengths */
    snprintf(path, sizeof path, "%s/ref_batch.json", dir);
    text = check_read_file(path, &len);
    if (text && te_llama_json_parse(text, len, NULL, &j) == TE_LLAMA_OK) {
        size_t prompts = te_llama_json_get(&j, 0, "prompts"), rows = te_llama_json_get(&j, 0, "last_logits"), t;
        na = json_ints(&j, prompts + 1, batch_a, 64);
        nb = json_ints(&j, j.tokens[prompts + 1].next, batch_b, 64);
        batch_ref = (float *)malloc(sizeof(float) * 2 * V);
        for (t = rows + 2, i = 0; i < 2 * V; i++, t = j.tokens[t].next) {
            double v = 0;
            if (i == V) t = j.tokens[rows + 1].next + 1; /* second row */
            te_llama_json_double(&j, t, &v);
            batch_ref[i] = (float)v;
        }
        te_llama_json_free(&j);
    } else {
        na = 7;
        memcpy(batch_a, prompt, sizeof(int32_t) * (size_t)na);
        for (nb = 0; nb < n; nb++) batch_b[nb] = prompt[n - 1 - nb];
    }
    free(text);
    if (na > 0 && nb > 0) check_batch(name, gpu, cpu, batch_a, na, batch_b, nb, batch_ref);
    check_generate(name, gpu, cpu, prompt, n, max_abs, n_hf == 24 ? hf_ids : NULL);
    check_generate_batch(name, gpu, cpu, prompt, n, max_abs);
    check_save(name, gpu, cpu);
    free(lc);
    free(lg);
done:
    free(batch_ref);
    free(ref);
    te_llama_free(cpu);
    te_llama_free(gpu);
}

/* A random model of more realistic shapes (head_dim 128, 4 query heads per kv head, 300 positions: several
   attention tiles) built on both sides from one seed. */
static void test_random_model(void) {
    te_llama_config c;
    te_llama_options o;
    te_llama_model *cpu = NULL, *gpu = NULL;
    int n = 300, V, i;
    int32_t prompt[300], out[32];
    uint64_t x = 12345;
    float *lc, *lg;
    double e, max_abs, t0;
    int n_out = 0;
    te_llama_generate_options g;
    memset(&c, 0, sizeof c);
    c.vocab_size = 4096;
    c.hidden_size = 512;
    c.intermediate_size = 1408;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 1;
    c.head_dim = 128;
    c.max_position_embeddings = 4096;
    c.rms_norm_eps = 1e-5;
    c.rope_theta = 10000;
    c.dtype = TE_LLAMA_BF16;
    c.initializer_range = 0.03; /* large enough that the layers, not the embeddings, dominate the output */
    c.bos_token_id = -1;
    memset(&o, 0, sizeof o);
    o.decoder = te_llama_te_decoder;
    o.dtype = TE_LLAMA_BF16;
    o.log = quiet_log;
    CHECK_RESULT(te_llama_create(&c, &o, &cpu), TE_LLAMA_OK);
    o.backend = TE_LLAMA_BACKEND_CUDA;
    CHECK_RESULT(te_llama_create(&c, &o, &gpu), TE_LLAMA_OK);
    if (!cpu || !gpu) goto done;
    V = c.vocab_size;
    for (i = 0; i < n; i++) { x = x * 6364136223846793005ull + 1442695040888963407ull; prompt[i] = (int32_t)((x >> 33) % (uint64_t)V); }
    lc = prompt_logits(cpu, prompt, n);
    t0 = now_s();
    lg = prompt_logits(gpu, prompt, n);
    t0 = now_s() - t0;
    e = rel_l2(lg, lc, (size_t)n * V, &max_abs);
    printf("  random model (hidden 512, head_dim 128, GQA 4:1, vocab 4096): %d-token prefill logits GPU vs CPU rel L2 %.2e "
           "(max abs %.2e), GPU %.1f ms\n", n, e, max_abs, 1e3 * t0);
    CHECK(e < 1e-2, "random model: GPU vs CPU rel L2 %g", e);
    check_emulated("random model", cpu, prompt, n, lg, e, 1e-2);
    check_one_token("random model", cpu, gpu, prompt, 1e-3);
    check_decode("random model", gpu, prompt, n, lg);
    memset(&g, 0, sizeof g);
    g.max_new_tokens = 32;
    g.ignore_eos = 1;
    t0 = now_s();
    CHECK_RESULT(te_llama_generate(gpu, &g, prompt, n, out, 32, &n_out), TE_LLAMA_OK);
    t0 = now_s() - t0;
    CHECK(n_out == 32, "random model: %d tokens", n_out);
    printf("  random model: 300-token prompt + 32 greedy tokens on the GPU in %.1f ms\n", 1e3 * t0);
    free(lc);
    free(lg);
done:
    te_llama_free(cpu);
    te_llama_free(gpu);
}

/* A random model of config c on both sides (one seed), or 0 when either failed. */
/* A model of config c with the TE decoder and bf16 storage on the backend; NULL (and a failed check) if refused. */
static te_llama_model *create_bf16(const te_llama_config *c, te_llama_backend backend) {
    te_llama_options o;
    te_llama_model *m = NULL;
    memset(&o, 0, sizeof o);
    o.decoder = te_llama_te_decoder;
    o.dtype = TE_LLAMA_BF16;
    o.log = quiet_log;
    o.backend = backend;
    CHECK_RESULT(te_llama_create(c, &o, &m), TE_LLAMA_OK);
    return m;
}

static int random_pair(const te_llama_config *c, te_llama_model **cpu, te_llama_model **gpu) {
    *cpu = create_bf16(c, TE_LLAMA_BACKEND_CPU);
    *gpu = create_bf16(c, TE_LLAMA_BACKEND_CUDA);
    return *cpu && *gpu;
}

static void random_config(te_llama_config *c, int hidden, int inter, int layers, int nh, int nkv, int hd, int vocab) {
    memset(c, 0, sizeof *c);
    c->vocab_size = vocab;
    c->hidden_size = hidden;
    c->intermediate_size = inter;
    c->num_hidden_layers = layers;
    c->num_attention_heads = nh;
    c->num_key_value_heads = nkv;
    c->head_dim = hd;
    c->max_position_embeddings = 4096;
    c->rms_norm_eps = 1e-5;
    c->rope_theta = 10000;
    c->dtype = TE_LLAMA_BF16;
    c->initializer_range = 0.03;
    c->bos_token_id = -1;
}

/* Greedy continuation on the GPU by forward calls (plain launches, no graph, host argmax). */
static void gpu_forward_greedy(te_llama_model *gpu, const int32_t *prompt, int n, int steps, int max_len, int32_t *ids) {
    int V = gpu->config.vocab_size, s;
    te_llama_kv_cache *cache = NULL;
    uint8_t *want = (uint8_t *)calloc((size_t)n, 1);
    float *logits = (float *)malloc(sizeof(float) * V);
    want[n - 1] = 1;
    CHECK_RESULT(te_llama_kv_cache_create(gpu, 1, max_len, &cache), TE_LLAMA_OK);
    if (cache) CHECK_RESULT(run(gpu, cache, prompt, n, 0, want, logits), TE_LLAMA_OK);
    for (s = 0; s < steps && cache; s++) {
        ids[s] = argmax(logits, V, NULL);
        if (s + 1 < steps) CHECK_RESULT(run(gpu, cache, &ids[s], 1, n + s, NULL, logits), TE_LLAMA_OK);
    }
    te_llama_kv_cache_free(cache);
    free(want);
    free(logits);
}

/* Long prompts through the tensor-core prefill attention (head_dim 64 or 128: many 64-row tiles, the causal
   diagonal inside tiles, a last partial tile when n % 64 != 0), then: chunked prefill (a second forward whose
   keys start in the cache), two sequences of unequal lengths as contiguous runs in one batch, single-token decode
   through the split-KV kernel at every position from n/2 on (the split boundaries move with the position), and
   te_llama_generate's captured decode graph against the same steps by plain forward calls. */
static void test_long_prompt(const char *name, int hd, int nh, int nkv, int n) {
    enum { STEPS = 24 };
    te_llama_config c;
    te_llama_model *cpu = NULL, *gpu = NULL;
    int V, i, k = n * 3 / 10, na = n, nb = n / 2 + 37, n_out = 0, same = 1;
    int32_t *prompt = (int32_t *)malloc(sizeof(int32_t) * (size_t)(n + nb));
    int32_t *tok = (int32_t *)malloc(sizeof(int32_t) * (size_t)(na + nb) * 3), *pos = tok + na + nb, *seq = pos + na + nb;
    int32_t out[STEPS], ref_ids[STEPS];
    uint64_t x = 777;
    float *lc, *lg, *got, *lb;
    double e, max_abs, t0;
    te_llama_kv_cache *cache = NULL;
    te_llama_batch b;
    te_llama_generate_options g;
    random_config(&c, 256, 512, 2, nh, nkv, hd, 1024);
    if (!random_pair(&c, &cpu, &gpu)) goto done;
    V = c.vocab_size;
    for (i = 0; i < n + nb; i++) { x = x * 6364136223846793005ull + 1442695040888963407ull; prompt[i] = (int32_t)((x >> 33) % (uint64_t)V); }
    lc = prompt_logits(cpu, prompt, n);
    t0 = now_s();
    lg = prompt_logits(gpu, prompt, n);
    t0 = now_s() - t0;
    e = rel_l2(lg, lc, (size_t)n * V, &max_abs);
    printf("  %s (head_dim %d, %d:%d heads): %d-token prefill logits GPU vs CPU rel L2 %.2e (max abs %.2e), GPU %.1f ms\n",
           name, hd, nh, nkv, n, e, max_abs, 1e3 * t0);
    CHECK(e < 1e-2, "%s: GPU vs CPU rel L2 %g", name, e);
    check_emulated(name, cpu, prompt, n, lg, e, 1e-2);
    /* chunked prefill: k tokens, then the other n - k in one forward at positions k.. */
    got = (float *)malloc(sizeof(float) * (size_t)n * V);
    CHECK_RESULT(te_llama_kv_cache_create(gpu, 1, n, &cache), TE_LLAMA_OK);
    if (cache) {
        CHECK_RESULT(run(gpu, cache, prompt, k, 0, NULL, got), TE_LLAMA_OK);
        CHECK_RESULT(run(gpu, cache, prompt + k, n - k, k, NULL, got + (size_t)k * V), TE_LLAMA_OK);
        e = rel_l2(got, lg, (size_t)n * V, NULL);
        printf("  %s: prefill in chunks of %d + %d vs one: rel L2 %.2e\n", name, k, n - k, e);
        CHECK(e < 5e-3, "%s: chunked prefill vs one rel L2 %g", name, e);
    }
    te_llama_kv_cache_free(cache);
    cache = NULL;
    /* two sequences as contiguous runs: slot 1 holds the prompt (na tokens), slot 0 another (nb), in that order */
    for (i = 0; i < na; i++) { tok[i] = prompt[i]; pos[i] = i; seq[i] = 1; }
    for (i = 0; i < nb; i++) { tok[na + i] = prompt[n + i]; pos[na + i] = i; seq[na + i] = 0; }
    memset(&b, 0, sizeof b);
    b.n_tokens = na + nb;
    b.tokens = tok;
    b.pos = pos;
    b.seq = seq;
    free(got);
    got = (float *)malloc(sizeof(float) * (size_t)(na + nb) * V);
    CHECK_RESULT(te_llama_kv_cache_create(gpu, 2, na, &cache), TE_LLAMA_OK);
    if (cache) {
        double e_b, e_cpu;
        float *cpu_b;
        CHECK_RESULT(te_llama_forward(gpu, cache, &b, got), TE_LLAMA_OK);
        lb = prompt_logits(gpu, prompt + n, nb);
        cpu_b = prompt_logits(cpu, prompt + n, nb);
        e = rel_l2(got, lg, (size_t)na * V, NULL);
        e_b = rel_l2(got + (size_t)na * V, lb, (size_t)nb * V, NULL);
        e_cpu = rel_l2(got + (size_t)na * V, cpu_b, (size_t)nb * V, NULL);
        printf("  %s: batch of %d + %d tokens (contiguous runs) vs each alone: GPU %.2e and %.2e, second vs CPU %.2e\n", name,
               na, nb, e, e_b, e_cpu);
        CHECK(e < 5e-3 && e_b < 5e-3, "%s: batch vs alone rel L2 %g, %g", name, e, e_b);
        CHECK(e_cpu < 1e-2, "%s: batch vs CPU rel L2 %g", name, e_cpu);
        free(lb);
        free(cpu_b);
    }
    te_llama_kv_cache_free(cache);
    cache = NULL;
    /* decode one token at a time from n / 2 (split-KV) vs the prefill (tiled) */
    check_decode(name, gpu, prompt, n, lg);
    /* the captured decode graph vs plain forward calls of the same steps, with the same cache length */
    memset(&g, 0, sizeof g);
    g.max_new_tokens = STEPS;
    g.ignore_eos = 1;
    t0 = now_s();
    CHECK_RESULT(te_llama_generate(gpu, &g, prompt, n - STEPS, out, STEPS, &n_out), TE_LLAMA_OK);
    t0 = now_s() - t0;
    gpu_forward_greedy(gpu, prompt, n - STEPS, STEPS, n - STEPS + STEPS + 1, ref_ids);
    for (i = 0; i < n_out; i++) same &= out[i] == ref_ids[i];
    printf("  %s: generate %d tokens after %d (graph) in %.1f ms: %s plain forward greedy\n", name, n_out, n - STEPS,
           1e3 * t0, same && n_out == STEPS ? "identical to" : "DIFFERENT from");
    CHECK(n_out == STEPS && same, "%s: generate (graph) differs from forward greedy", name);
    free(got);
    free(lc);
    free(lg);
done:
    free(prompt);
    free(tok);
    te_llama_free(cpu);
    te_llama_free(gpu);
}

/* More than 8 query heads a kv head: the general attention kernel (the split-KV kernel takes up to 8). */
static void test_general_attention(void) {
    te_llama_config c;
    te_llama_model *cpu = NULL, *gpu = NULL;
    int n = 150, i;
    int32_t prompt[150];
    uint64_t x = 4242;
    float *lc, *lg;
    double e;
    random_config(&c, 256, 512, 2, 16, 1, 32, 512);
    if (!random_pair(&c, &cpu, &gpu)) goto done;
    for (i = 0; i < n; i++) { x = x * 6364136223846793005ull + 1442695040888963407ull; prompt[i] = (int32_t)((x >> 33) % 512u); }
    lc = prompt_logits(cpu, prompt, n);
    lg = prompt_logits(gpu, prompt, n);
    e = rel_l2(lg, lc, (size_t)n * c.vocab_size, NULL);
    printf("  MQA 16:1 head_dim 32 (general kernel): %d-token prefill GPU vs CPU rel L2 %.2e\n", n, e);
    CHECK(e < 1e-2, "MQA 16:1: GPU vs CPU rel L2 %g", e);
    check_decode("MQA 16:1", gpu, prompt, n, lg);
    free(lc);
    free(lg);
done:
    te_llama_free(cpu);
    te_llama_free(gpu);
}

static void test_errors(void) {
    void *p = (void *)1;
    te_llama_model *m;
    te_llama_kv_cache *cache = NULL, *cpu_cache = NULL;
    te_llama_model *cpu;
    int32_t tok = 1, pos = 0;
    te_llama_batch b;
    float *logits;
    /* an impossible allocation is a clean OOM that names this file's kernels source, and nothing breaks after it */
    CHECK_RESULT(te_llama_cuda_malloc(&p, (size_t)1 << 50), TE_LLAMA_ERR_CUDA_OOM);
    CHECK(p == NULL, "failed allocation left a pointer");
    CHECK(strstr(te_llama_last_error(), "te_llama_kernels.cu:") != NULL, "message without file and line: %s", te_llama_last_error());
    m = load(FIXTURES "gqa_tied_llama3", TE_LLAMA_BACKEND_CUDA);
    if (!m) return;
    /* 3 layers x 4096 x 2^20 positions x 32 bf16: 0.8 TB each for keys and values */
    CHECK_RESULT(te_llama_kv_cache_create(m, 4096, 1 << 20, &cache), TE_LLAMA_ERR_CUDA_OOM);
    CHECK(cache == NULL, "failed cache left an object");
    logits = (float *)malloc(sizeof(float) * (size_t)m->config.vocab_size);
    memset(&b, 0, sizeof b);
    b.n_tokens = 1;
    b.tokens = &tok;
    b.pos = &pos;
    CHECK_RESULT(te_llama_kv_cache_create(m, 1, 8, &cache), TE_LLAMA_OK);
    if (cache) CHECK_RESULT(te_llama_forward(m, cache, &b, logits), TE_LLAMA_OK);
    /* a host cache given to a CUDA model */
    cpu = load(FIXTURES "gqa_tied_llama3", TE_LLAMA_BACKEND_CPU);
    if (cpu && te_llama_kv_cache_create(cpu, 1, 8, &cpu_cache) == TE_LLAMA_OK)
        CHECK_RESULT(te_llama_forward(m, cpu_cache, &b, logits), TE_LLAMA_ERR_INVALID_ARGUMENT);
    te_llama_kv_cache_free(cpu_cache);
    { /* the memory report: parameters, cache, workspace, and the device */
        te_llama_memory mem;
        CHECK_RESULT(te_llama_memory_usage(m, cache, &mem), TE_LLAMA_OK);
        printf("  memory: parameters %llu B, kv cache %llu B, workspace %llu B, device free %.1f of %.1f GiB\n",
               (unsigned long long)mem.parameter_bytes, (unsigned long long)mem.kv_cache_bytes,
               (unsigned long long)mem.workspace_bytes, mem.device_free / 1073741824.0, mem.device_total / 1073741824.0);
        CHECK(mem.parameter_bytes == 2ull * (256 * 64 + 3 * (64 + 128 * 64 + 64 * 64 + 64 + 2 * 96 * 64 + 64 * 96) + 64),
              "parameter bytes %llu", (unsigned long long)mem.parameter_bytes);
        CHECK(mem.kv_cache_bytes == 2ull * 3 * 1 * 8 * 32 * 2, "kv cache bytes %llu", (unsigned long long)mem.kv_cache_bytes);
        CHECK(mem.workspace_bytes >= ((size_t)32 << 20) && mem.device_total > mem.device_free && mem.device_free > 0, "workspace and device");
    }
    te_llama_kv_cache_free(cache);
    te_llama_free(cpu);
    te_llama_free(m);
    free(logits);
    { /* a model larger than the device: a clean OOM partway through the parameters, nothing leaked, and the next
         load in this process succeeds */
        char dir[1200], path[1300];
        size_t free0 = 0, free1 = 0, total = 0;
        FILE *f;
        te_llama_model *big = NULL, *again = NULL;
        snprintf(dir, sizeof dir, "%s/too_big", out_dir);
        snprintf(path, sizeof path, "mkdir -p '%s'", dir);
        if (system(path) != 0) return;
        snprintf(path, sizeof path, "%s/config.json", dir);
        f = fopen(path, "w");
        if (!f) return;
        /* ~7.5 GB a layer, 64 layers: about 480 GB of bf16 parameters */
        fputs("{\"model_type\":\"llama\",\"hidden_size\":16384,\"intermediate_size\":65536,\"num_hidden_layers\":64,"
              "\"num_attention_heads\":128,\"num_key_value_heads\":8,\"vocab_size\":131072,\"torch_dtype\":\"bfloat16\"}", f);
        fclose(f);
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        f = fopen(path, "w");
        if (f) { fputs("not read: the parameters do not fit", f); fclose(f); }
        te_llama_cuda_memory_info(NULL, NULL, &free0, &total);
        CHECK_RESULT(load_status(dir, TE_LLAMA_BACKEND_CUDA, NULL, &big), TE_LLAMA_ERR_CUDA_OOM);
        CHECK(big == NULL, "a failed load returned a model");
        te_llama_cuda_memory_info(NULL, NULL, &free1, &total);
        printf("  oom: device free %.2f GiB before the oversized load, %.2f GiB after it failed\n", free0 / 1073741824.0, free1 / 1073741824.0);
        CHECK(free1 + ((size_t)64 << 20) >= free0, "the failed load leaked %.1f MiB of device memory", ((double)free0 - (double)free1) / 1048576.0);
        CHECK_RESULT(load_status(FIXTURES "gqa_tied_llama3", TE_LLAMA_BACKEND_CUDA, NULL, &again), TE_LLAMA_OK);
        te_llama_free(again);
    }
}

/* test hook in te_llama_kernels.cu: the small-batch GEMV and cuBLASLt against a float64 product */
te_llama_result te_llama_cuda_test_gemv(te_llama_model *model, int n, int m, int k, int accumulate, int reps,
                                        double *rel_gemv, double *rel_lt, double *us_gemv, double *us_lt);

/* The decode GEMV over the shapes it takes: 1 to 16 tokens (one and two 8-token tiles, a partial last one), rows
   a multiple of 16, k a multiple of 64 split over 1 to 16 warps (uneven splits when the chunks do not divide),
   plain and accumulating. Both it and cuBLASLt should sit at fp32 summation error (1e-6) from the float64 product
   of the same bf16 values; a wrong row, token or k mapping gives O(1). */
static void test_gemv(te_llama_model *gpu) {
    static const int shapes[][3] = {{1, 16, 64}, {1, 4096, 4096}, {3, 48, 1088}, {8, 1024, 2048}, {9, 512, 4160},
                                    {16, 256, 14336}, {16, 8192, 64}, {5, 2048, 192}};
    size_t i;
    int acc;
    for (i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        for (acc = 0; acc < 2; acc++) {
            double eg = 1, el = 1;
            CHECK_RESULT(te_llama_cuda_test_gemv(gpu, shapes[i][0], shapes[i][1], shapes[i][2], acc, 0, &eg, &el, NULL, NULL), TE_LLAMA_OK);
            CHECK(eg < 1e-5, "gemv n %d m %d k %d acc %d: rel L2 %g against float64", shapes[i][0], shapes[i][1], shapes[i][2], acc, eg);
            CHECK(el < 1e-5, "cuBLASLt n %d m %d k %d acc %d: rel L2 %g against float64", shapes[i][0], shapes[i][1], shapes[i][2], acc, el);
            if (acc) printf("  gemv n %2d, %5d x %5d: rel L2 vs float64 %.1e (cuBLASLt %.1e)\n", shapes[i][0], shapes[i][1], shapes[i][2], eg, el);
        }
    CHECK_RESULT(te_llama_cuda_test_gemv(gpu, 17, 16, 64, 0, 0, NULL, NULL, NULL, NULL), TE_LLAMA_ERR_INVALID_ARGUMENT);
    CHECK_RESULT(te_llama_cuda_test_gemv(gpu, 1, 16, 96, 0, 0, NULL, NULL, NULL, NULL), TE_LLAMA_ERR_INVALID_ARGUMENT);
}

/* test hook in te_llama_kernels.cu: the decode step's greedy argmax */
te_llama_result te_llama_cuda_test_argmax(te_llama_model *model, const float *logits, int rows, int32_t *ids);

/* The first largest logit ignoring NaN, 0 when there is none: what the greedy argmax must return. */
static int32_t first_max(const float *x, int n) {
    int i, best = -1;
    for (i = 0; i < n; i++)
        if (x[i] == x[i] && (best < 0 || x[i] > x[best])) best = i;
    return best < 0 ? 0 : best;
}

/* The greedy argmax, split over up to 64 blocks a row whose last block merges: on a Llama 3 vocabulary (63
   slices of 2036 ids, 16-byte loads) and an odd one (scalar loads), with ties inside and across slices (the
   lowest id wins), the maximum at the last id, NaN anywhere (never wins), rows of NaN (id 0), and a second launch
   (the counters must have been reset). */
static void test_argmax(void) {
    static const int vocabs[] = {128256, 4099};
    enum { ROWS = 7 };
    size_t v;
    for (v = 0; v < sizeof vocabs / sizeof vocabs[0]; v++) {
        const int V = vocabs[v];
        te_llama_config c;
        te_llama_model *gpu;
        float *x = (float *)malloc(sizeof(float) * (size_t)ROWS * V);
        int32_t got[ROWS], want[ROWS];
        uint64_t s = 0x2545f4914f6cdd1dull + (uint64_t)V;
        int r, i, pass, wrong = 0;
        random_config(&c, 64, 128, 1, 2, 1, 32, V);
        gpu = create_bf16(&c, TE_LLAMA_BACKEND_CUDA);
        if (!gpu || !x) { free(x); te_llama_free(gpu); return; }
        for (i = 0; i < ROWS * V; i++) {
            s ^= s >> 12; s ^= s << 25; s ^= s >> 27;
            x[i] = (float)((s * 0x2545f4914f6cdd1dull) >> 40) / 1677721.6f - 5.0f; /* [-5, 5) */
        }
        x[1 * V + 3 * V / 4] = x[1 * V + V / 3] = 9.0f;        /* a tie across slices: the lower id */
        x[2 * V + 2036] = x[2 * V + 2035] = 9.0f;               /* a tie at a slice boundary */
        x[3 * V + V - 1] = 9.0f;                                 /* the last id */
        for (i = 0; i < V; i += 97) x[3 * V + i] = NAN;          /* NaN around it, id 0 included */
        for (i = 0; i < V; i++) x[4 * V + i] = NAN;              /* no number at all */
        for (i = 0; i < V; i++) x[5 * V + i] = -1.0f;            /* all equal */
        x[6 * V + V / 2] = INFINITY;
        x[6 * V + V / 2 + 1] = INFINITY;
        for (r = 0; r < ROWS; r++) want[r] = first_max(x + (size_t)r * V, V);
        for (pass = 0; pass < 2; pass++) {
            memset(got, 0xff, sizeof got);
            CHECK_RESULT(te_llama_cuda_test_argmax(gpu, x, ROWS, got), TE_LLAMA_OK);
            for (r = 0; r < ROWS; r++) wrong += got[r] != want[r];
        }
        printf("  greedy argmax, vocab %d, %d rows x 2 launches: %d wrong (row 1 %d, row 3 %d, row 4 %d)\n", V, ROWS, wrong,
               got[1], got[3], got[4]);
        CHECK(wrong == 0, "greedy argmax on vocab %d: %d of %d rows differ from the first maximum", V, wrong, 2 * ROWS);
        CHECK(want[1] == V / 3 && want[2] == 2035 && want[3] == V - 1 && want[4] == 0 && want[5] == 0 && want[6] == V / 2,
              "test_argmax's own expectations (vocab %d)", V);
        free(x);
        te_llama_free(gpu);
    }
}

/* Random inputs of the attention kernel tests: K (bf16 bits) in [-2, 2), spread enough that the softmax is far from
   uniform, V in [-1, 1), n_cache elements each; q (fp32) in [-2, 2), n_q elements. */
static void random_attention_inputs(uint64_t *x, uint16_t *kc, uint16_t *vc, size_t n_cache, float *q, size_t n_q) {
    size_t i;
    for (i = 0; i < n_cache; i++) {
        *x ^= *x >> 12; *x ^= *x << 25; *x ^= *x >> 27;
        kc[i] = te_llama__f32_to_bf16((float)((*x * 0x2545f4914f6cdd1dull) >> 40) / 4194304.0f - 2.0f);
        vc[i] = te_llama__f32_to_bf16((float)((*x * 0x9e3779b97f4a7c15ull) >> 40) / 8388608.0f - 1.0f);
    }
    for (i = 0; i < n_q; i++) {
        *x ^= *x >> 12; *x ^= *x << 25; *x ^= *x >> 27;
        q[i] = (float)((*x * 0x2545f4914f6cdd1dull) >> 40) / 4194304.0f - 2.0f;
    }
}

te_llama_result te_llama_cuda_test_decode_attention(te_llama_model *model, int n, int splits, int max_len, int n_seq,
                                                    const int32_t *pos, const int32_t *seq, const float *qkv,
                                                    const uint16_t *kc, const uint16_t *vc, int keys_ready,
                                                    int global_merge, int *clustered, uint16_t *out);

/* The decode attention kernels against attention in double precision over the same bf16 K/V and fp32 q, for every head
   dim and group size of te_llama__decode_attention2_kernel (and head_dim 48, the split-KV fallback): one token at
   positions around the kernel's round sizes and the cache's end, with 1 split (several rounds in one block), 2, 5, 16
   (Hopper's largest cluster) and 64 (the last block merges); then 16 tokens of 3 sequences at random positions, and 3
   tokens of one sequence each. Each launch runs three times (the split counters must be back at 0): with the splits
   merged through global memory; as a decode step merges them (in a thread-block cluster where the device runs sm_90a
   code, for one token and 2 to 16 splits), which must give the same bits; and where the tokens are one a sequence, as a
   decode step launches it (keys_ready: the first round of keys loaded before the kernel's wait), again the same bits.
   Every output element must lie within one bf16 rounding of the exact value: 2^-8 relative, plus 1e-6 for fp32 sums. */
static void test_decode_attention(void) {
    static const int shapes[][2] = {{32, 1}, {32, 8}, {64, 1}, {64, 2}, {64, 4}, {64, 8}, {128, 1}, {128, 2},
                                    {128, 4}, {128, 8}, {256, 1}, {256, 2}, {256, 4}, {256, 8}, {48, 2}};
    static const int positions[] = {0, 1, 63, 64, 65, 127, 128, 129, 255, 256, 500, 699};
    static const int split_counts[] = {1, 2, 5, 16, 64};
    enum { MAX_LEN = 700, N_SEQ = 3, NKV = 2, BATCH = 16 };
    size_t sh;
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (sh = 0; sh < sizeof shapes / sizeof shapes[0]; sh++) {
        const int hd = shapes[sh][0], G = shapes[sh][1], nh = G * NKV, qd = nh * hd, kvd = NKV * hd, row = qd + 2 * kvd;
        const size_t cache = (size_t)N_SEQ * MAX_LEN * kvd;
        te_llama_config c;
        te_llama_model *gpu;
        uint16_t *kc = (uint16_t *)malloc(sizeof(uint16_t) * cache), *vc = (uint16_t *)malloc(sizeof(uint16_t) * cache);
        uint16_t *got = (uint16_t *)malloc(sizeof(uint16_t) * (size_t)BATCH * qd * 3);
        float *q = (float *)malloc(sizeof(float) * (size_t)BATCH * row);
        double *p = (double *)malloc(sizeof(double) * MAX_LEN), worst = 0.0;
        int32_t pos[BATCH], seq[BATCH];
        int launches = 0, clustered_launches = 0, bad = 0, early_differ = 0, cluster_differ = 0, pi, si, t, rep;
        random_config(&c, 64, 128, 1, nh, NKV, hd, 256);
        gpu = create_bf16(&c, TE_LLAMA_BACKEND_CUDA);
        if (!gpu || !kc || !vc || !got || !q || !p) goto next;
        random_attention_inputs(&x, kc, vc, cache, q, (size_t)BATCH * row);
        for (pi = -2; pi < (int)(sizeof positions / sizeof positions[0]); pi++) {
            /* pi = -1: a batch of 16 tokens at random positions of 3 sequences, -2: one token of each sequence, 3
               splits; else one token */
            const int n = pi == -1 ? BATCH : pi == -2 ? N_SEQ : 1;
            for (si = 0; si < (pi < 0 ? 1 : (int)(sizeof split_counts / sizeof split_counts[0])); si++) {
                const int S = pi < 0 ? 3 : split_counts[si];
                for (t = 0; t < n; t++) {
                    x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
                    pos[t] = pi < 0 ? (int)((x >> 20) % MAX_LEN) : positions[pi];
                    seq[t] = pi == -1 ? (int)((x >> 50) % N_SEQ) : pi == -2 ? t : 1;
                }
                for (rep = 0; rep < 3; rep++) {
                    int clustered = 0;
                    CHECK_RESULT(te_llama_cuda_test_decode_attention(gpu, n, S, MAX_LEN, N_SEQ, pos, seq, q, kc, vc, rep == 2 && pi != -1,
                                                                     rep == 0, &clustered, got + (size_t)rep * BATCH * qd), TE_LLAMA_OK);
                    clustered_launches += clustered;
                }
                launches += 3;
                if (memcmp(got, got + (size_t)BATCH * qd, sizeof(uint16_t) * (size_t)n * qd)) cluster_differ++;
                if (memcmp(got + (size_t)BATCH * qd, got + (size_t)2 * BATCH * qd, sizeof(uint16_t) * (size_t)n * qd)) early_differ++;
                for (t = 0; t < n; t++) {
                    int h, d, j;
                    for (h = 0; h < nh; h++) {
                        const float *qh = q + (size_t)t * row + (size_t)h * hd;
                        const size_t kv0 = (size_t)seq[t] * MAX_LEN * kvd + (size_t)(h / G) * hd;
                        double mx = -1e300, sum = 0.0;
                        for (j = 0; j <= pos[t]; j++) {
                            double dot = 0.0;
                            for (d = 0; d < hd; d++) dot += (double)qh[d] * te_llama__bf16_to_f32(kc[kv0 + (size_t)j * kvd + d]);
                            p[j] = dot / sqrt((double)hd);
                            if (p[j] > mx) mx = p[j];
                        }
                        for (j = 0; j <= pos[t]; j++) sum += (p[j] = exp(p[j] - mx));
                        for (d = 0; d < hd; d++) {
                            double ref = 0.0;
                            for (j = 0; j <= pos[t]; j++) ref += p[j] * te_llama__bf16_to_f32(vc[kv0 + (size_t)j * kvd + d]);
                            ref /= sum;
                            for (rep = 0; rep < 3; rep++) {
                                const double g = te_llama__bf16_to_f32(got[(size_t)rep * BATCH * qd + (size_t)t * qd + (size_t)h * hd + d]);
                                const double err = fabs(g - ref), tol = fabs(ref) / 256.0 + 1e-6;
                                if (!(err <= tol)) bad++;
                                if (err / tol > worst) worst = err / tol;
                            }
                        }
                    }
                }
            }
        }
        printf("  decode attention, head_dim %d, %d query heads a kv head: %d launches, %d elements off, worst error %.2f "
               "of the bound; keys loaded early: %s; %d launches merged in a cluster: %s\n", hd, G, launches, bad, worst,
               early_differ ? "DIFFERENT" : "bit-identical", clustered_launches, cluster_differ ? "DIFFERENT" : "bit-identical");
        CHECK(bad == 0, "decode attention hd %d G %d: %d elements beyond one bf16 rounding (worst %.2f x)", hd, G, bad, worst);
        CHECK(cluster_differ == 0, "decode attention hd %d G %d: %d launches merged in a cluster differ", hd, G, cluster_differ);
        CHECK(early_differ == 0, "decode attention hd %d G %d: %d launches with the keys loaded early differ", hd, G, early_differ);
    next:
        te_llama_free(gpu);
        free(kc);
        free(vc);
        free(got);
        free(q);
        free(p);
    }
}

te_llama_result te_llama_cuda_test_prefill_attention(te_llama_model *model, int kernel, int n, int max_len, int n_seq,
                                                     const int32_t *pos, const int32_t *seq, const float *qkv,
                                                     const uint16_t *kc, const uint16_t *vc, uint16_t *out, float *lse,
                                                     float q_scale, uint8_t *out_q, float *q_amax);

/* The prefill attention's FP8 output (te_llama__att_fp8) against its own bf16 output got (n x qd) of the same
   kernel: calibrating, the bf16 output unchanged and the amax its largest |value|; as proj's E4M3 input, the bytes
   te_llama__f32_to_fp8(float(bf16) * scale) (the cast kernel's) at a scale that saturates the largest values, and
   the same amax. Both amaxes start from 0.25, which an atomic max has to keep or pass. Returns the differences. */
static int check_prefill_attention_fp8(te_llama_model *gpu, int kernel, int n, int max_len, int n_seq, const int32_t *pos,
                                       const int32_t *seq, const float *q, const uint16_t *kc, const uint16_t *vc,
                                       const uint16_t *got, int qd) {
    const size_t count = (size_t)n * qd;
    uint16_t *again = (uint16_t *)malloc(sizeof(uint16_t) * count);
    uint8_t *bytes = (uint8_t *)malloc(count);
    float ref_amax = 0.25f, amax_cal = 0.25f, amax_q = 0.25f, scale;
    size_t i;
    int bad = 0;
    if (!again || !bytes) { free(again); free(bytes); return 1; }
    for (i = 0; i < count; i++) {
        const float v = fabsf(te_llama__bf16_to_f32(got[i]));
        if (v > ref_amax) ref_amax = v;
    }
    scale = 2.0f * 448.0f / ref_amax; /* the upper half of the range saturates */
    CHECK_RESULT(te_llama_cuda_test_prefill_attention(gpu, kernel, n, max_len, n_seq, pos, seq, q, kc, vc, again, NULL, scale, NULL,
                                                      &amax_cal), TE_LLAMA_OK);
    bad += memcmp(again, got, sizeof(uint16_t) * count) != 0;
    bad += amax_cal != ref_amax;
    CHECK_RESULT(te_llama_cuda_test_prefill_attention(gpu, kernel, n, max_len, n_seq, pos, seq, q, kc, vc, again, NULL, scale, bytes,
                                                      &amax_q), TE_LLAMA_OK);
    for (i = 0; i < count; i++) bad += bytes[i] != te_llama__f32_to_fp8(te_llama__bf16_to_f32(got[i]) * scale, 0);
    bad += amax_q != ref_amax;
    CHECK(bad == 0, "prefill attention (%s) FP8 output: %d differences from its bf16 output cast (amax calibrating %.9g, "
          "quantising %.9g, host %.9g)", kernel ? "wgmma" : "mma.sync", bad, amax_cal, amax_q, ref_amax);
    free(again);
    free(bytes);
    return bad;
}

/* The two tensor-core prefill attention kernels (mma.sync, and wgmma where the device runs sm_90a code) against
   attention in double precision over the same bf16 K/V and bf16-rounded q, as both kernels round q: head_dim 64
   and 128, 1, 2 and 4 query heads a kv head (odd groups take the wgmma kernel's one-head blocks), on a batch of
   three runs: 300 tokens of sequence 1 from position 0 (a partial last tile), 200 of sequence 0 from position
   100 (tiles not aligned to the 64-key stages), 77 of sequence 2 from 0. Bounds per element: the probabilities
   are rounded to bf16 for P V (2^-9 relative each, so up to 2^-9 of sum p|v| / sum p; twice that allowed) plus
   the output's own bf16 rounding; the log-sum-exp (training's) within 1e-5 of the reference's. The kernels
   against each other: within the same bound (each rounds its own P: the wgmma kernel forms the exponent with an
   fma, the mma.sync one with a multiply then a subtraction, so a probability may round to the other bf16). Each
   kernel's FP8 output (proj's E4M3 input and amax) against its bf16 output: check_prefill_attention_fp8. */
static void test_prefill_attention(void) {
    static const int shapes[][2] = {{64, 1}, {64, 2}, {64, 4}, {128, 1}, {128, 2}, {128, 4}};
    enum { MAX_LEN = 320, N_SEQ = 3, NKV = 2, N = 300 + 200 + 77 };
    size_t sh;
    uint64_t x = 0x243f6a8885a308d3ull;
    int wgmma_ran = 0, wgmma_missing = 0;
    for (sh = 0; sh < sizeof shapes / sizeof shapes[0]; sh++) {
        const int hd = shapes[sh][0], G = shapes[sh][1], nh = G * NKV, qd = nh * hd, kvd = NKV * hd, row = qd + 2 * kvd;
        const size_t cache = (size_t)N_SEQ * MAX_LEN * kvd, lse_n = (size_t)N_SEQ * nh * MAX_LEN;
        te_llama_config c;
        te_llama_model *gpu;
        uint16_t *kc = (uint16_t *)malloc(sizeof(uint16_t) * cache), *vc = (uint16_t *)malloc(sizeof(uint16_t) * cache);
        uint16_t *got = (uint16_t *)malloc(sizeof(uint16_t) * (size_t)N * qd * 2);
        float *q = (float *)malloc(sizeof(float) * (size_t)N * row), *lse = (float *)malloc(sizeof(float) * lse_n * 2);
        double *p = (double *)malloc(sizeof(double) * MAX_LEN), worst[2] = {0.0, 0.0}, worst_lse[2] = {0.0, 0.0}, worst_pair = 0.0;
        int32_t pos[N], seq[N];
        int bad[2] = {0, 0}, fp8_bad[2] = {0, 0}, bad_pair = 0, kernels = 1, k, t, h, d, j;
        random_config(&c, 64, 128, 1, nh, NKV, hd, 256);
        gpu = create_bf16(&c, TE_LLAMA_BACKEND_CUDA);
        if (!gpu || !kc || !vc || !got || !q || !lse || !p) goto next;
        random_attention_inputs(&x, kc, vc, cache, q, (size_t)N * row);
        for (t = 0; t < N; t++) {
            pos[t] = t < 300 ? t : t < 500 ? 100 + t - 300 : t - 500;
            seq[t] = t < 300 ? 1 : t < 500 ? 0 : 2;
        }
        CHECK_RESULT(te_llama_cuda_test_prefill_attention(gpu, 0, N, MAX_LEN, N_SEQ, pos, seq, q, kc, vc, got, lse, 0.0f, NULL, NULL),
                     TE_LLAMA_OK);
        {
            const te_llama_result r = te_llama_cuda_test_prefill_attention(gpu, 1, N, MAX_LEN, N_SEQ, pos, seq, q, kc, vc,
                                                                           got + (size_t)N * qd, lse + lse_n, 0.0f, NULL, NULL);
            if (r == TE_LLAMA_OK) kernels = 2, wgmma_ran++;
            else if (r == TE_LLAMA_ERR_UNSUPPORTED) wgmma_missing++;
            else CHECK(0, "wgmma prefill attention: %s", te_llama_last_error());
        }
        for (t = 0; t < N; t++)
            for (h = 0; h < nh; h++) {
                const float *qh = q + (size_t)t * row + (size_t)h * hd;
                const size_t kv0 = (size_t)seq[t] * MAX_LEN * kvd + (size_t)(h / G) * hd;
                double mx = -1e300, sum = 0.0, ref_lse;
                for (j = 0; j <= pos[t]; j++) {
                    double dot = 0.0;
                    for (d = 0; d < hd; d++)
                        dot += (double)te_llama__bf16_to_f32(te_llama__f32_to_bf16(qh[d])) * te_llama__bf16_to_f32(kc[kv0 + (size_t)j * kvd + d]);
                    p[j] = dot / sqrt((double)hd);
                    if (p[j] > mx) mx = p[j];
                }
                for (j = 0; j <= pos[t]; j++) sum += (p[j] = exp(p[j] - mx));
                ref_lse = mx + log(sum);
                for (k = 0; k < kernels; k++) {
                    const double e = fabs(lse[k * lse_n + ((size_t)seq[t] * nh + h) * MAX_LEN + pos[t]] - ref_lse) / (1e-5 * fmax(1.0, fabs(ref_lse)));
                    if (!(e <= 1.0)) bad[k]++;
                    if (e > worst_lse[k]) worst_lse[k] = e;
                }
                for (d = 0; d < hd; d++) {
                    double ref = 0.0, mag = 0.0, tol;
                    for (j = 0; j <= pos[t]; j++) {
                        const double v = te_llama__bf16_to_f32(vc[kv0 + (size_t)j * kvd + d]);
                        ref += p[j] * v;
                        mag += p[j] * fabs(v);
                    }
                    ref /= sum;
                    tol = mag / sum / 256.0 + fabs(ref) / 256.0 + 1e-6;
                    for (k = 0; k < kernels; k++) {
                        const double gk = te_llama__bf16_to_f32(got[(size_t)k * N * qd + (size_t)t * qd + (size_t)h * hd + d]);
                        const double err = fabs(gk - ref);
                        if (!(err <= tol)) bad[k]++;
                        if (err / tol > worst[k]) worst[k] = err / tol;
                    }
                    if (kernels == 2) {
                        const double a = te_llama__bf16_to_f32(got[(size_t)t * qd + (size_t)h * hd + d]);
                        const double b = te_llama__bf16_to_f32(got[(size_t)N * qd + (size_t)t * qd + (size_t)h * hd + d]);
                        const double e = fabs(a - b) / (mag / sum / 256.0 + (fabs(a) + fabs(b)) / 256.0 + 1e-6);
                        if (!(e <= 1.0)) bad_pair++;
                        if (e > worst_pair) worst_pair = e;
                    }
                }
            }
        for (k = 0; k < kernels; k++)
            fp8_bad[k] = check_prefill_attention_fp8(gpu, k, N, MAX_LEN, N_SEQ, pos, seq, q, kc, vc, got + (size_t)k * N * qd, qd);
        printf("  prefill attention, head_dim %d, %d query heads a kv head, %d tokens: mma.sync %d off (worst %.2f of the "
               "bound, lse %.2f; FP8 output %d off its cast)", hd, G, N, bad[0], worst[0], worst_lse[0], fp8_bad[0]);
        if (kernels == 2)
            printf("; wgmma %d off (worst %.2f, lse %.2f; FP8 output %d off); the two apart: %d off (worst %.2f)\n", bad[1], worst[1],
                   worst_lse[1], fp8_bad[1], bad_pair, worst_pair);
        else
            printf("; wgmma not run on this device\n");
        CHECK(bad[0] == 0, "prefill attention (mma.sync) hd %d G %d: %d elements beyond the bound (worst %.2f x)", hd, G, bad[0], worst[0]);
        CHECK(bad[1] == 0, "prefill attention (wgmma) hd %d G %d: %d elements beyond the bound (worst %.2f x)", hd, G, bad[1], worst[1]);
        CHECK(bad_pair == 0, "prefill attention: wgmma vs mma.sync hd %d G %d: %d elements apart (worst %.2f x)", hd, G, bad_pair, worst_pair);
    next:
        te_llama_free(gpu);
        free(kc);
        free(vc);
        free(got);
        free(q);
        free(lse);
        free(p);
    }
    printf("  prefill attention: the wgmma kernel ran on %d of %d shapes%s\n", wgmma_ran, (int)(sizeof shapes / sizeof shapes[0]),
           wgmma_missing ? " (the device does not run this build's sm_90a code)" : "");
}

/* ---------------------------------------------------------------------------------------------------------- FP8 */

/* The FP8 section of te_llama_kernels.cu: its test-only entry points (not in the public header). uint16_t arrays
   are bf16 bits; *amax goes in and comes out raised. */
te_llama_result te_llama_cuda_test_fp8_convert(te_llama_model *m, const float *in, uint8_t *out, uint8_t *out_host, size_t n);
te_llama_result te_llama_cuda_test_fp8_weight(te_llama_model *m, int l, int g, uint8_t *out, size_t cap, int *rows, int *cols);
te_llama_result te_llama_cuda_test_fp8_rmsnorm(te_llama_model *m, const float *x, int x_rows, const int32_t *rows, const uint16_t *w,
                                               int n, int h, float eps, float scale, uint8_t *out, uint16_t *out_bf16, float *amax);
te_llama_result te_llama_cuda_test_fp8_swiglu(te_llama_model *m, const void *mlp, int mlp_bf16, int n, int I, float scale, uint8_t *out,
                                              uint16_t *out_bf16, float *amax);
te_llama_result te_llama_cuda_test_fp8_cast(te_llama_model *m, const uint16_t *in, size_t n, float scale, uint8_t *out, float *amax);
te_llama_result te_llama_cuda_test_fp8_amax(te_llama_model *m, const float *in, size_t n, float *amax);
te_llama_result te_llama_cuda_test_fp8_update(te_llama_model *m, te_llama_fp8_meta *metas, int n_gemms);
int te_llama_cuda_test_fp8_calibrating(te_llama_model *m);
te_llama_result te_llama_cuda_test_fp8_fused(te_llama_model *m, int fused);
te_llama_result te_llama_cuda_test_fp8_layer_gemm(te_llama_model *m, int l, int g, const float *x, int n, float *y);
te_llama_result te_llama_cuda_test_fp8_end_step(te_llama_model *m, const float *amax);
te_llama_result te_llama_cuda_test_gemm_fp8(te_llama_model *m, const uint8_t *W, float w_scale_inv, const uint8_t *X, float x_scale_inv,
                                            float *Y, int mm, int n, int k, int accumulate, int fast_accum, int cublaslt);

static uint64_t fp8_rng = 0x2545f4914f6cdd1dull;
static uint32_t fp8_rand(void) {
    fp8_rng ^= fp8_rng >> 12; fp8_rng ^= fp8_rng << 25; fp8_rng ^= fp8_rng >> 27;
    return (uint32_t)((fp8_rng * 0x2545f4914f6cdd1dull) >> 32);
}
static float fp8_uniform(float lo, float hi) { return lo + (hi - lo) * (float)(fp8_rand() >> 8) / 16777216.0f; }
static float f32_of_bits(uint32_t u) { float f; memcpy(&f, &u, sizeof f); return f; }

/* The device conversion (and its host compilation) against te_llama__f32_to_fp8(x, 0) on 2^24 floats: every
   pattern of the top 16 bits (sign, exponent, 7 mantissa bits) with 256 low halves (0, 1, 0x7fff, 0x8000, 0x8001,
   0xffff and random ones). The rounding boundaries of normals (bit 19) and of the subnormal range (bits 20-24)
   lie in the top half, so every tie and every value next to one is here. All 2^32 floats were compared on the
   host compilation, which is the same code. */
static void test_fp8_convert(te_llama_model *gpu) {
    const size_t n = (size_t)1 << 24;
    float *in = (float *)malloc(sizeof(float) * n);
    uint8_t *dev = (uint8_t *)malloc(n), *host = (uint8_t *)malloc(n);
    uint16_t low[256] = {0, 1, 0x7fff, 0x8000, 0x8001, 0xffff};
    size_t i, bad_dev = 0, bad_host = 0, first = 0;
    int j;
    for (j = 6; j < 256; j++) low[j] = (uint16_t)fp8_rand();
    for (i = 0; i < n; i++) in[i] = f32_of_bits((uint32_t)(i >> 8) << 16 | low[i & 255]);
    CHECK_RESULT(te_llama_cuda_test_fp8_convert(gpu, in, dev, host, n), TE_LLAMA_OK);
    for (i = 0; i < n; i++) {
        uint8_t ref = te_llama__f32_to_fp8(in[i], 0);
        if (dev[i] != ref && !bad_dev++) first = i;
        bad_host += host[i] != ref;
    }
    printf("  fp8: E4M3 conversion of 2^24 floats: %zu device and %zu host-compiled mismatches with te_llama__f32_to_fp8\n", bad_dev, bad_host);
    CHECK(bad_dev == 0 && bad_host == 0, "first: %a -> device %02x, CPU %02x", (double)in[first], dev[first], te_llama__f32_to_fp8(in[first], 0));
    free(in);
    free(dev);
    free(host);
}

/* The producers of GEMM inputs against host computations from the same inputs. rmsnorm: x in multiples of 1/8
   up to 8 in magnitude, so the sum of squares is exact in any order and inv, y and the bytes must be identical;
   swiglu: the device's expf is not the host's, so a byte may differ only where the host's y * scale is within
   2e-6 (relative) of an E4M3 rounding boundary, and the amax by as much; cast and amax: identical. NaN never
   enters an amax; infinity does. */
static void test_fp8_kernels(te_llama_model *gpu) {
    enum { H = 320, XR = 9, N = 7, SN = 5, SI = 300, CN = 1000, AN = 100000 };
    static float x[XR * H], mlp[SN * 2 * SI], af[AN];
    static uint16_t w[H], bf[N * H], mlp16[SN * 2 * SI], bf_dev[N * H], cin[CN];
    static uint8_t q[N * H], q_dev[N * H], sq[SN * SI], sq_dev[SN * SI], cq[CN], cq_dev[CN];
    int32_t rows[N];
    const float eps = 1e-5f, scale = 37.5f;
    float amax, ref_amax, mx;
    int t, i, bad, kind;
    /* rmsnorm */
    for (i = 0; i < XR * H; i++) x[i] = (float)((int)(fp8_rand() % 129) - 64) / 8.0f;
    for (i = 0; i < H; i++) w[i] = te_llama__f32_to_bf16(fp8_uniform(-2.0f, 2.0f));
    for (t = 0; t < N; t++) rows[t] = XR - 1 - t;
    ref_amax = 0.0f;
    for (t = 0; t < N; t++) {
        const float *xr = x + (size_t)rows[t] * H;
        float ss = 0.0f, inv;
        for (i = 0; i < H; i++) ss += xr[i] * xr[i];
        inv = 1.0f / sqrtf(ss / (float)H + eps);
        for (i = 0; i < H; i++) {
            float y = te_llama__bf16_to_f32(w[i]) * (xr[i] * inv);
            q[t * H + i] = te_llama__f32_to_fp8(y * scale, 0);
            bf[t * H + i] = te_llama__f32_to_bf16(y);
            if (fabsf(y) > ref_amax) ref_amax = fabsf(y);
        }
    }
    amax = 0.0f;
    CHECK_RESULT(te_llama_cuda_test_fp8_rmsnorm(gpu, x, XR, rows, w, N, H, eps, scale, q_dev, bf_dev, &amax), TE_LLAMA_OK);
    for (i = 0, bad = 0; i < N * H; i++) bad += q[i] != q_dev[i] || bf[i] != bf_dev[i];
    printf("  fp8: rmsnorm_fp8 %d x %d: %d bytes differ from the host's, amax %.9g (host %.9g)\n", N, H, bad, amax, ref_amax);
    CHECK(bad == 0 && amax == ref_amax, "rmsnorm_fp8: %d differing, amax %.9g vs %.9g", bad, amax, ref_amax);
    amax = 1e9f; /* a larger amax stays; no outputs: the amax alone */
    CHECK_RESULT(te_llama_cuda_test_fp8_rmsnorm(gpu, x, XR, rows, w, N, H, eps, scale, NULL, NULL, &amax), TE_LLAMA_OK);
    CHECK(amax == 1e9f, "rmsnorm_fp8: amax 1e9 became %g", amax);
    amax = ref_amax * 0.5f;
    CHECK_RESULT(te_llama_cuda_test_fp8_rmsnorm(gpu, x, XR, rows, w, N, H, eps, scale, q_dev, NULL, &amax), TE_LLAMA_OK);
    CHECK(amax == ref_amax, "rmsnorm_fp8: amax %.9g, host %.9g", amax, ref_amax);
    /* swiglu, fp32 and bf16 input, I = 300 (a value a thread) and 296 (8 a thread); the extremes of the gate:
       exp(100) overflows to infinity, exp(-100) underflows */
    for (i = 0; i < SN * 2 * SI; i++) mlp[i] = fp8_uniform(-6.0f, 6.0f);
    mlp[0] = -100.0f;
    mlp[1] = 100.0f;
    for (i = 0; i < SN * 2 * SI; i++) mlp16[i] = te_llama__f32_to_bf16(mlp[i]);
    for (kind = 0; kind < 4; kind++) {
        const int in_bf16 = kind & 1, si = kind & 2 ? SI - 4 : SI;
        int near = 0;
        ref_amax = 0.0f;
        for (t = 0; t < SN; t++)
            for (i = 0; i < si; i++) {
                const size_t at = (size_t)t * 2 * si + i;
                float g = in_bf16 ? te_llama__bf16_to_f32(mlp16[at]) : mlp[at], u = in_bf16 ? te_llama__bf16_to_f32(mlp16[at + si]) : mlp[at + si];
                float y = g / (1.0f + expf(-g)) * u;
                sq[t * si + i] = te_llama__f32_to_fp8(y * scale, 0);
                if (fabsf(y) > ref_amax) ref_amax = fabsf(y);
            }
        amax = 0.0f;
        CHECK_RESULT(te_llama_cuda_test_fp8_swiglu(gpu, in_bf16 ? (const void *)mlp16 : (const void *)mlp, in_bf16, SN, si, scale, sq_dev,
                                                   NULL, &amax),
                     TE_LLAMA_OK);
        for (t = 0, bad = 0; t < SN; t++)
            for (i = 0; i < si; i++) {
                const size_t at = (size_t)t * 2 * si + i;
                float g = in_bf16 ? te_llama__bf16_to_f32(mlp16[at]) : mlp[at], u = in_bf16 ? te_llama__bf16_to_f32(mlp16[at + si]) : mlp[at + si];
                float ysc = g / (1.0f + expf(-g)) * u * scale;
                uint8_t d = sq_dev[t * si + i];
                if (d == sq[t * si + i]) continue;
                if (d == te_llama__f32_to_fp8(ysc * (1.0f - 2e-6f), 0) || d == te_llama__f32_to_fp8(ysc * (1.0f + 2e-6f), 0)) near++;
                else bad++;
            }
        printf("  fp8: swiglu_fp8 (%s input) %d x %d: %d bytes off by an expf rounding, %d wrong; amax %.9g (host %.9g)\n",
               in_bf16 ? "bf16" : "fp32", SN, si, near, bad, amax, ref_amax);
        CHECK(bad == 0 && fabsf(amax - ref_amax) <= 2e-6f * ref_amax, "swiglu_fp8 (%s, I %d): %d wrong bytes, amax %.9g vs %.9g",
              in_bf16 ? "bf16" : "fp32", si, bad, amax, ref_amax);
    }
    /* swiglu's bf16 output (calibration) with no E4M3 output, both widths */
    for (kind = 0; kind < 2; kind++) {
        const int si = kind ? SI - 4 : SI;
        amax = 0.0f;
        CHECK_RESULT(te_llama_cuda_test_fp8_swiglu(gpu, mlp, 0, 1, si, scale, NULL, bf_dev, &amax), TE_LLAMA_OK);
        for (i = 0, bad = 0; i < si; i++) {
            float y = mlp[i] / (1.0f + expf(-mlp[i])) * mlp[si + i];
            uint16_t b = bf_dev[i];
            bad += b != te_llama__f32_to_bf16(y) && b != te_llama__f32_to_bf16(y * (1.0f - 2e-6f)) && b != te_llama__f32_to_bf16(y * (1.0f + 2e-6f));
        }
        CHECK(bad == 0 && amax > 0.0f, "swiglu_fp8 bf16 output, I %d: %d wrong", si, bad);
    }
    /* cast of the attention output: NaN of both signs keep their sign and stay out of the amax, -0, saturation */
    for (i = 0; i < CN; i++) cin[i] = te_llama__f32_to_bf16(fp8_uniform(-12.0f, 12.0f));
    cin[3] = 0x7fc0;
    cin[4] = 0xffc0;
    cin[5] = 0x8000;
    cin[6] = te_llama__f32_to_bf16(-1e5f);
    ref_amax = 0.0f;
    for (i = 0; i < CN; i++) {
        float v = te_llama__bf16_to_f32(cin[i]);
        cq[i] = te_llama__f32_to_fp8(v * scale, 0);
        if (fabsf(v) > ref_amax) ref_amax = fabsf(v);
    }
    amax = 0.0f;
    CHECK_RESULT(te_llama_cuda_test_fp8_cast(gpu, cin, CN, scale, cq_dev, &amax), TE_LLAMA_OK);
    for (i = 0, bad = 0; i < CN; i++) bad += cq[i] != cq_dev[i];
    CHECK(bad == 0 && amax == ref_amax && cq_dev[3] == 0x7f && cq_dev[4] == 0xff && cq_dev[5] == 0x80 && cq_dev[6] == 0xfe,
          "cast_fp8: %d differing, amax %.9g vs %.9g, NaN %02x %02x, -0 %02x, -1e5 %02x", bad, amax, ref_amax, cq_dev[3], cq_dev[4],
          cq_dev[5], cq_dev[6]);
    cin[7] = 0xff80; /* -infinity: the amax is infinite, as on the CPU; the amax alone */
    amax = 0.0f;
    CHECK_RESULT(te_llama_cuda_test_fp8_cast(gpu, cin, CN, scale, NULL, &amax), TE_LLAMA_OK);
    CHECK(isinf(amax) && amax > 0, "cast_fp8 with -inf: amax %g", amax);
    /* amax over fp32 GEMM outputs, NaN sprinkled in */
    for (i = 0, mx = 0.0f; i < AN; i++) {
        af[i] = i % 997 == 5 ? NAN : fp8_uniform(-50.0f, 50.0f);
        if (fabsf(af[i]) > mx) mx = fabsf(af[i]);
    }
    amax = 0.0f;
    CHECK_RESULT(te_llama_cuda_test_fp8_amax(gpu, af, AN, &amax), TE_LLAMA_OK);
    CHECK(amax == mx, "amax over %d floats: %.9g, host %.9g", AN, amax, mx);
}

/* The device update against te_llama_fp8_meta_update over a sequence of amaxes with zeros, NaN, infinity, a scale
   that would overflow: MAX over a history of 3 and of 1024 (the block reduction), MOST_RECENT, margins 0, 1 and 2,
   an E5M2 state; the weight states must stay as they are. Every field, to the bit, after every step. */
static void test_fp8_update(te_llama_model *gpu) {
    static const float seq[] = {1.5f, 0.0f, 3.0f, NAN, 2.0f, INFINITY, 0.25f, 0.5f, 0.125f, 7.0f, 0.0f, 0.0f, 0.0f, 1e-30f, 3e38f, 1e-37f, 5.0f};
    enum { NS = sizeof seq / sizeof seq[0], STEPS = 40 };
    te_llama_fp8_meta *dev = (te_llama_fp8_meta *)calloc(6, sizeof *dev), *ref = (te_llama_fp8_meta *)calloc(6, sizeof *ref);
    te_llama_fp8_recipe r3, r5, def;
    int step, k, bad = 0;
    memset(&r3, 0, sizeof r3);
    memset(&def, 0, sizeof def);
    r3.amax_history_len = 3;
    r3.margin = 1;
    r5 = r3;
    r5.amax_history_len = 5;
    r5.margin = 2;
    te_llama_fp8_meta_init(&ref[0], &r3, TE_LLAMA_F8_E4M3); /* GEMM 0 input: MAX, history 3, margin 1 */
    r3.amax_compute_algo = TE_LLAMA_FP8_AMAX_MOST_RECENT;
    te_llama_fp8_meta_init(&ref[1], &r3, TE_LLAMA_F8_E4M3); /* GEMM 0 weight: left alone */
    te_llama_fp8_meta_update(&ref[1], 2.0f);
    te_llama_fp8_meta_init(&ref[2], &r3, TE_LLAMA_F8_E4M3); /* GEMM 0 output: MOST_RECENT, history 3, margin 1 */
    te_llama_fp8_meta_init(&ref[3], &def, TE_LLAMA_F8_E4M3); /* GEMM 1 input: MAX over 1024 */
    te_llama_fp8_meta_init(&ref[4], NULL, TE_LLAMA_F8_E4M3); /* GEMM 1 weight */
    ref[4].amax = 9.0f; /* an amax in a weight state is not consumed either */
    te_llama_fp8_meta_init(&ref[5], &r5, TE_LLAMA_F8_E5M2); /* GEMM 1 output: E5M2, MAX over 5, margin 2 */
    memcpy(dev, ref, 6 * sizeof *dev);
    for (step = 0; step < STEPS && !bad; step++) {
        for (k = 0; k < 6; k++) {
            float a;
            if (k == 1 || k == 4) continue;
            a = seq[(step + 3 * k) % NS];
            dev[k].amax = ref[k].amax = a;
            te_llama_fp8_meta_update(&ref[k], a);
        }
        CHECK_RESULT(te_llama_cuda_test_fp8_update(gpu, dev, 2), TE_LLAMA_OK);
        for (k = 0; k < 6; k++)
            if (memcmp(&dev[k], &ref[k], sizeof *dev) != 0) {
                CHECK(0, "fp8 update step %d, state %d: device scale %a / %a, next %d, n %lld; host %a / %a, next %d, n %lld", step, k,
                      (double)dev[k].scale, (double)dev[k].scale_inv, dev[k].next, (long long)dev[k].n_updates, (double)ref[k].scale,
                      (double)ref[k].scale_inv, ref[k].next, (long long)ref[k].n_updates);
                bad = 1;
            }
    }
    printf("  fp8: scale update kernel vs te_llama_fp8_meta_update, %d steps of 4 states: %s\n", step, bad ? "DIFFERENT" : "bit-identical");
    free(dev);
    free(ref);
}

/* The two FP8 GEMMs, cuBLASLt's (te_llama__gemm_fp8, prefill) and the E4M3 GEMV (decode), against a
   double-precision reference: Y (n, 256) = X (n, 128) @ W (256, 128)^T with two scale_inv, accumulate off and on,
   fast accumulation off and on, for 64 tokens and for 37 (not a multiple of 16; the GEMV takes 16 at a time).
   Operands in -3..3 make every partial sum an integer below 2^11, exact whatever precision the tensor cores
   accumulate in, so rel L2 < 1e-5 holds; then random finite E4M3 operands, where the tensor cores' accumulation
   shows (looser bound, printed). Shapes the kernels cannot take are refused. */
static void test_fp8_gemm(te_llama_model *gpu) {
    enum { M = 256, NT = 64, K = 128 };
    static uint8_t W[M * K], X[NT * K];
    static float Y[NT * M], Y0[NT * M], ref[NT * M];
    static const int ns[2] = {NT, 37};
    const float ws = 0.37f, xs = 1.9f;
    int pass, acc, fast, path, ni, i, t, r, k;
    for (i = 0; i < NT * M; i++) Y0[i] = fp8_uniform(-100.0f, 100.0f);
    for (pass = 0; pass < 2; pass++) {
        for (i = 0; i < M * K; i++) {
            if (pass == 0) W[i] = te_llama__f32_to_fp8((float)((int)(fp8_rand() % 7) - 3), 0);
            else do W[i] = (uint8_t)fp8_rand(); while ((W[i] & 0x7f) == 0x7f);
        }
        for (i = 0; i < NT * K; i++) {
            if (pass == 0) X[i] = te_llama__f32_to_fp8((float)((int)(fp8_rand() % 7) - 3), 0);
            else do X[i] = (uint8_t)fp8_rand(); while ((X[i] & 0x7f) == 0x7f);
        }
        for (acc = 0; acc < 2; acc++) {
            for (t = 0; t < NT; t++)
                for (r = 0; r < M; r++) {
                    double sum = 0;
                    for (k = 0; k < K; k++) sum += (double)te_llama__fp8_to_f32(X[t * K + k], 0) * te_llama__fp8_to_f32(W[r * K + k], 0);
                    ref[t * M + r] = (float)(sum * ws * xs + (acc ? Y0[t * M + r] : 0.0));
                }
            for (path = 0; path < 2; path++)
                for (ni = 0; ni < 2; ni++)
                    for (fast = 0; fast < 2; fast++) {
                        const int n = ns[ni];
                        double e;
                        memcpy(Y, Y0, sizeof Y);
                        CHECK_RESULT(te_llama_cuda_test_gemm_fp8(gpu, W, ws, X, xs, Y, M, n, K, acc, fast, path), TE_LLAMA_OK);
                        e = rel_l2(Y, ref, (size_t)n * M, NULL);
                        printf("  fp8: %s %d x %d x %d, %s operands, accumulate %d, fast accumulation %d: rel L2 %.2e\n",
                               path ? "cuBLASLt GEMM" : "GEMV", M, n, K, pass ? "random E4M3" : "integer", acc, fast, e);
                        CHECK(e < (pass ? 1e-2 : 1e-5), "FP8 %s (%s operands, %d tokens, accumulate %d, fast %d): rel L2 %g",
                              path ? "cuBLASLt GEMM" : "GEMV", pass ? "random" : "integer", n, acc, fast, e);
                        CHECK(n == NT || Y[n * M] == Y0[n * M], "FP8 %s wrote past its %d tokens", path ? "GEMM" : "GEMV", n);
                        if (path == 0) break; /* fast accumulation means nothing to the GEMV */
                    }
        }
    }
    CHECK_RESULT(te_llama_cuda_test_gemm_fp8(gpu, W, ws, X, xs, Y, 250, NT, K, 0, 0, 0), TE_LLAMA_ERR_INVALID_ARGUMENT);
    CHECK_RESULT(te_llama_cuda_test_gemm_fp8(gpu, W, ws, X, xs, Y, M, NT, 120, 0, 0, 0), TE_LLAMA_ERR_INVALID_ARGUMENT);
    CHECK(strstr(te_llama_last_error(), "k % 64") != NULL, "message: %s", te_llama_last_error());
    CHECK_RESULT(te_llama_cuda_test_gemm_fp8(gpu, W, ws, X, xs, Y, 250, NT, K, 0, 0, 1), TE_LLAMA_ERR_INVALID_ARGUMENT);
}

/* Every state of both models field for field (te_llama_fp8_meta_of: the device's a downloaded snapshot). */
static int fp8_same_states(te_llama_model *gpu, te_llama_model *cpu, const char *when) {
    int l, g, t, same = 1;
    for (l = 0; l < cpu->config.num_hidden_layers; l++)
        for (g = 0; g < TE_LLAMA_FP8_GEMMS; g++)
            for (t = 0; t <= TE_LLAMA_FP8_OUTPUT; t++) {
                te_llama_fp8_meta *a = te_llama_fp8_meta_of(gpu, l, (te_llama_fp8_gemm)g, (te_llama_fp8_tensor)t);
                te_llama_fp8_meta *b = te_llama_fp8_meta_of(cpu, l, (te_llama_fp8_gemm)g, (te_llama_fp8_tensor)t);
                if (!a || !b || memcmp(a, b, sizeof *a) != 0) {
                    if (same)
                        CHECK(0, "%s: layer %d GEMM %d tensor %d: device scale %a (n %lld), CPU %a (n %lld)", when, l, g, t,
                              a ? (double)a->scale : 0.0, a ? (long long)a->n_updates : -1LL, b ? (double)b->scale : 0.0,
                              b ? (long long)b->n_updates : -1LL);
                    same = 0;
                }
            }
    return same;
}

/* The input and output states of m's first `layers` layers (at most 8) into snap. */
static void fp8_snapshot(te_llama_model *m, te_llama_fp8_meta snap[8][TE_LLAMA_FP8_GEMMS][2], int layers) {
    int l, g, t;
    for (l = 0; l < layers && l < 8; l++)
        for (g = 0; g < TE_LLAMA_FP8_GEMMS; g++)
            for (t = 0; t < 2; t++) {
                te_llama_fp8_meta *x = te_llama_fp8_meta_of(m, l, (te_llama_fp8_gemm)g, t ? TE_LLAMA_FP8_OUTPUT : TE_LLAMA_FP8_INPUT);
                if (x) snap[l][g][t] = *x;
            }
}

/* The input states (and with `outputs` the output states) of a's first `layers` layers (at most 8) against b's
   (two models, or with b NULL a snapshot snap from fp8_snapshot): returns the largest relative difference of their
   scales; *updates_differ counts the states whose numbers of recorded amaxes differ. (The CPU records its GEMMs'
   output amaxes; the device's forward does not.) */
static double fp8_states_diff(te_llama_model *a, te_llama_model *b, te_llama_fp8_meta snap[8][TE_LLAMA_FP8_GEMMS][2], int layers,
                              int outputs, int *updates_differ) {
    double worst = 0;
    int l, g, t;
    *updates_differ = 0;
    for (l = 0; l < layers && l < 8; l++)
        for (g = 0; g < TE_LLAMA_FP8_GEMMS; g++)
            for (t = 0; t < 1 + outputs; t++) {
                const te_llama_fp8_tensor tt = t ? TE_LLAMA_FP8_OUTPUT : TE_LLAMA_FP8_INPUT;
                te_llama_fp8_meta *x = te_llama_fp8_meta_of(a, l, (te_llama_fp8_gemm)g, tt);
                te_llama_fp8_meta *y = b ? te_llama_fp8_meta_of(b, l, (te_llama_fp8_gemm)g, tt) : &snap[l][g][t];
                double d;
                if (!x || !y) { (*updates_differ)++; continue; }
                *updates_differ += x->n_updates != y->n_updates;
                d = fabs((double)x->scale - y->scale) / fabs((double)y->scale);
                if (!(d <= worst)) worst = d;
            }
    return worst;
}

/* Every E4M3 weight of the device against the CPU's, byte for byte. */
static int fp8_same_weights(te_llama_model *gpu, te_llama_model *cpu) {
    const te_llama__fp8_model *f = (const te_llama__fp8_model *)cpu->fp8;
    int i, same = 1;
    for (i = 0; i < f->n_layers * TE_LLAMA_FP8_GEMMS; i++) {
        const te_llama__fp8_gemm_state *s = &f->gemms[i];
        size_t bytes = (size_t)s->rows * (size_t)s->cols, k, diff = 0;
        uint8_t *buf = (uint8_t *)malloc(bytes);
        int rows = 0, cols = 0;
        CHECK_RESULT(te_llama_cuda_test_fp8_weight(gpu, i / TE_LLAMA_FP8_GEMMS, i % TE_LLAMA_FP8_GEMMS, buf, bytes, &rows, &cols), TE_LLAMA_OK);
        for (k = 0; k < bytes; k++) diff += buf[k] != s->weight[k];
        if (rows != s->rows || cols != s->cols || diff) {
            CHECK(0, "E4M3 weight %d (layer %d, GEMM %d): device %d x %d, CPU %lld x %lld, %zu bytes differ", i, i / TE_LLAMA_FP8_GEMMS,
                  i % TE_LLAMA_FP8_GEMMS, rows, cols, (long long)s->rows, (long long)s->cols, diff);
            same = 0;
        }
        free(buf);
    }
    return same;
}

/* FP8 on a CUDA model against the same model on the CPU (one seed, same BF16 weights): te_llama_fp8_enable gives
   the same E4M3 bytes and the same states; the end of a step (the device update kernel) keeps every state equal
   to the CPU's under amaxes with zeros, NaN and infinity; the forward's pattern for the QKV and FC1 GEMMs
   (rmsnorm_fp8, the FP8 GEMM through the accessors, the output amax) against te_llama__fp8_gemm; te_llama_save
   writes the same dequantised file; calibrate, update_weights, disable, enable again; and the precise refusals. */
static void test_fp8_model(void) {
    te_llama_config c;
    te_llama_options o;
    te_llama_model *cpu = NULL, *gpu = NULL, *other = NULL;
    te_llama_fp8_recipe rc;
    static const float vals[] = {2.5f, 0.0f, 6.0f, NAN, 0.75f, INFINITY, 1.25f, 3.0f};
    float *amax = NULL, *x = NULL, *yg = NULL, *yc = NULL, *xn = NULL, *rowbuf = NULL;
    int L, h, step, i, l, g, round, n = 24;
    random_config(&c, 256, 512, 2, 4, 2, 64, 1024);
    if (!random_pair(&c, &cpu, &gpu)) goto done;
    memset(&rc, 0, sizeof rc);
    rc.amax_history_len = 16;
    rc.margin = 1;
    CHECK_RESULT(te_llama_fp8_enable(cpu, &rc), TE_LLAMA_OK);
    CHECK_RESULT(te_llama_fp8_enable(gpu, &rc), TE_LLAMA_OK);
    if (!cpu->fp8 || !gpu->fp8) goto done;
    L = c.num_hidden_layers;
    h = c.hidden_size;
    CHECK(fp8_same_weights(gpu, cpu), "E4M3 weights after te_llama_fp8_enable");
    CHECK(fp8_same_states(gpu, cpu, "after enable"), "states after enable");
    CHECK(te_llama_fp8_meta_of(gpu, L, TE_LLAMA_FP8_QKV, TE_LLAMA_FP8_INPUT) == NULL &&
          te_llama_fp8_meta_of(gpu, 0, TE_LLAMA_FP8_GEMMS, TE_LLAMA_FP8_INPUT) == NULL, "meta_of out of range: NULL");
    /* end of step: the same amaxes on both sides */
    amax = (float *)malloc(sizeof(float) * (size_t)L * TE_LLAMA_FP8_GEMMS * 2);
    for (step = 0; step < 10; step++) {
        for (i = 0; i < L * TE_LLAMA_FP8_GEMMS * 2; i++) {
            te_llama_fp8_meta *m;
            amax[i] = vals[(step + 3 * i) % 8] * (float)(1 + i % 5);
            m = te_llama_fp8_meta_of(cpu, i / 8, (te_llama_fp8_gemm)(i / 2 % 4), i % 2 ? TE_LLAMA_FP8_OUTPUT : TE_LLAMA_FP8_INPUT);
            m->amax = amax[i];
        }
        te_llama__fp8_end_step(cpu);
        CHECK_RESULT(te_llama_cuda_test_fp8_end_step(gpu, amax), TE_LLAMA_OK);
        if (!fp8_same_states(gpu, cpu, "end of step")) break;
    }
    printf("  fp8: %d ends of step (device update kernel vs te_llama__fp8_end_step): states %s\n", step, step == 10 ? "bit-identical" : "DIFFERENT");
    /* enabling again starts over: fresh states (scale 1) for the GEMMs below */
    CHECK_RESULT(te_llama_fp8_enable(cpu, &rc), TE_LLAMA_OK);
    CHECK_RESULT(te_llama_fp8_enable(gpu, &rc), TE_LLAMA_OK);
    if (!cpu->fp8 || !gpu->fp8) goto done;
    CHECK(fp8_same_states(gpu, cpu, "enabled again"), "states after enabling again");
    /* the forward's pattern against the CPU's FP8 GEMM: rmsnorm_fp8 -> FP8 GEMM -> output amax, twice (the second
       time with the scales the first one's amaxes made) */
    x = (float *)malloc(sizeof(float) * (size_t)n * h);
    xn = (float *)malloc(sizeof(float) * (size_t)n * h);
    yg = (float *)malloc(sizeof(float) * (size_t)n * 2 * c.intermediate_size);
    yc = (float *)malloc(sizeof(float) * (size_t)n * 2 * c.intermediate_size);
    rowbuf = (float *)malloc(sizeof(float) * (size_t)(h + c.intermediate_size + c.num_attention_heads * c.head_dim));
    for (i = 0; i < n * h; i++) x[i] = fp8_uniform(-3.0f, 3.0f);
    for (round = 0; round < 2; round++) {
        for (l = 0; l < L; l++)
            for (g = TE_LLAMA_FP8_QKV; g <= TE_LLAMA_FP8_FC1; g += TE_LLAMA_FP8_FC1 - TE_LLAMA_FP8_QKV) {
                te_llama_step st;
                te_llama_fp8_meta *ig, *ic, *og, *oc;
                float in_g, in_c, out_g, out_c;
                int rows = g == TE_LLAMA_FP8_QKV ? (c.num_attention_heads + 2 * c.num_key_value_heads) * c.head_dim : 2 * c.intermediate_size, t;
                double e;
                memset(&st, 0, sizeof st);
                st.fp8 = cpu->fp8;
                for (t = 0; t < n; t++)
                    te_llama__rmsnorm(xn + (size_t)t * h, x + (size_t)t * h, &cpu->layers[l]->params[g == TE_LLAMA_FP8_QKV ? 0 : 5], h,
                                      c.rms_norm_eps, rowbuf);
                CHECK(te_llama__fp8_gemm(&st, l, g, yc, rows, xn, h, n, rowbuf) == 1, "CPU FP8 GEMM did not run");
                CHECK_RESULT(te_llama_cuda_test_fp8_layer_gemm(gpu, l, g, x, n, yg), TE_LLAMA_OK);
                e = rel_l2(yg, yc, (size_t)n * rows, NULL);
                ig = te_llama_fp8_meta_of(gpu, l, (te_llama_fp8_gemm)g, TE_LLAMA_FP8_INPUT);
                in_g = ig ? ig->amax : -1.0f;
                ic = te_llama_fp8_meta_of(cpu, l, (te_llama_fp8_gemm)g, TE_LLAMA_FP8_INPUT);
                in_c = ic->amax;
                og = te_llama_fp8_meta_of(gpu, l, (te_llama_fp8_gemm)g, TE_LLAMA_FP8_OUTPUT);
                out_g = og ? og->amax : -1.0f;
                oc = te_llama_fp8_meta_of(cpu, l, (te_llama_fp8_gemm)g, TE_LLAMA_FP8_OUTPUT);
                out_c = oc->amax;
                printf("  fp8: round %d layer %d %s: rmsnorm_fp8 + FP8 GEMM vs the CPU's FP8 GEMM rel L2 %.2e (input scale %g); amax in %.7g "
                       "(CPU %.7g), out %.7g (CPU %.7g)\n", round, l, g ? "FC1" : "QKV", e, (double)ic->scale, in_g, in_c, out_g, out_c);
                CHECK(e < 1e-2, "layer %d GEMM %d: rel L2 %g", l, g, e);
                CHECK(fabsf(in_g - in_c) <= 1e-6f * in_c && fabsf(out_g - out_c) <= 1e-2f * out_c, "layer %d GEMM %d amaxes", l, g);
            }
        te_llama__fp8_end_step(cpu);
        CHECK_RESULT(te_llama_cuda_test_fp8_end_step(gpu, NULL), TE_LLAMA_OK);
        for (l = 0; l < L; l++)
            for (g = 0; g < TE_LLAMA_FP8_GEMMS; g++)
                for (i = 0; i <= TE_LLAMA_FP8_OUTPUT; i++) {
                    te_llama_fp8_meta *a = te_llama_fp8_meta_of(gpu, l, (te_llama_fp8_gemm)g, (te_llama_fp8_tensor)i);
                    te_llama_fp8_meta *b = te_llama_fp8_meta_of(cpu, l, (te_llama_fp8_gemm)g, (te_llama_fp8_tensor)i);
                    float tol = i == TE_LLAMA_FP8_OUTPUT ? 1e-2f : 1e-6f;
                    CHECK(a && a->n_updates == b->n_updates && fabsf(a->scale - b->scale) <= tol * b->scale,
                          "after the GEMMs' step: layer %d GEMM %d tensor %d: scale %g vs CPU %g", l, g, i, a ? a->scale : 0.0, b->scale);
                }
    }
    /* saving writes the dequantised E4M3 weights: the same file from both */
    check_save("fp8_random", gpu, cpu);
    /* calibrate, update_weights (the same bytes and weight states again), disable, enable again */
    CHECK(!te_llama_cuda_test_fp8_calibrating(gpu), "calibrating before te_llama_fp8_calibrate");
    CHECK_RESULT(te_llama_fp8_calibrate(gpu, 1), TE_LLAMA_OK);
    CHECK(te_llama_cuda_test_fp8_calibrating(gpu), "te_llama_fp8_calibrate(1) did not reach the device state");
    CHECK_RESULT(te_llama_fp8_calibrate(gpu, 0), TE_LLAMA_OK);
    CHECK(!te_llama_cuda_test_fp8_calibrating(gpu), "te_llama_fp8_calibrate(0) did not reach the device state");
    CHECK_RESULT(te_llama_fp8_update_weights(gpu), TE_LLAMA_OK);
    CHECK_RESULT(te_llama_fp8_update_weights(cpu), TE_LLAMA_OK);
    CHECK(fp8_same_weights(gpu, cpu), "E4M3 weights after te_llama_fp8_update_weights");
    for (l = 0; l < L; l++)
        for (g = 0; g < TE_LLAMA_FP8_GEMMS; g++) {
            te_llama_fp8_meta *a = te_llama_fp8_meta_of(gpu, l, (te_llama_fp8_gemm)g, TE_LLAMA_FP8_WEIGHT);
            te_llama_fp8_meta *b = te_llama_fp8_meta_of(cpu, l, (te_llama_fp8_gemm)g, TE_LLAMA_FP8_WEIGHT);
            CHECK(a && memcmp(a, b, sizeof *a) == 0, "weight state of layer %d GEMM %d after update_weights", l, g);
        }
    te_llama_fp8_disable(gpu);
    CHECK(gpu->fp8 == NULL && te_llama_fp8_meta_of(gpu, 0, TE_LLAMA_FP8_QKV, TE_LLAMA_FP8_INPUT) == NULL, "disabled: no state");
    CHECK_RESULT(te_llama_fp8_calibrate(gpu, 1), TE_LLAMA_ERR_INVALID_ARGUMENT);
    CHECK_RESULT(te_llama_fp8_enable(gpu, NULL), TE_LLAMA_OK); /* freed with the model */
    /* options.fp8 at creation; the refusals, each before or at enable with what is wrong */
    memset(&o, 0, sizeof o);
    o.backend = TE_LLAMA_BACKEND_CUDA;
    o.decoder = te_llama_te_decoder;
    o.log = quiet_log;
    o.fp8 = &rc;
    CHECK_RESULT(te_llama_create(&c, &o, &other), TE_LLAMA_OK);
    CHECK(other && other->fp8 != NULL, "options.fp8 on a CUDA model: FP8 on");
    te_llama_free(other);
    other = NULL;
    o.dtype = TE_LLAMA_F32;
    CHECK_RESULT(te_llama_create(&c, &o, &other), TE_LLAMA_ERR_UNSUPPORTED);
    o.dtype = TE_LLAMA_DTYPE_AUTO;
    o.decoder = te_llama_vanilla_decoder;
    CHECK_RESULT(te_llama_create(&c, &o, &other), TE_LLAMA_ERR_UNSUPPORTED);
    CHECK(strstr(te_llama_last_error(), "vanilla") != NULL, "message: %s", te_llama_last_error());
    o.decoder = te_llama_te_decoder;
    c.intermediate_size = 520; /* fc2's inner dimension 520 is not a multiple of 16 */
    CHECK_RESULT(te_llama_create(&c, &o, &other), TE_LLAMA_ERR_UNSUPPORTED);
    CHECK(strstr(te_llama_last_error(), "FC2") != NULL, "message: %s", te_llama_last_error());
done:
    free(amax);
    free(x);
    free(xn);
    free(yg);
    free(yc);
    free(rowbuf);
    te_llama_free(cpu);
    te_llama_free(gpu);
}

/* All of the FP8 section. */
/* The same forwards on a fresh FP8 state under recipe rc, calibrated by one BF16 prefill of each sequence: FP8
   prefills of the S prompts (lens[s] tokens of tokens + 64 s, cache slot s), then `steps` decode steps, each one batch of S tokens
   (sequence s at position lens[s] + i). logits gets the steps' (steps, S, V) logits. */
static int fp8_decode_batches(te_llama_model *m, const te_llama_fp8_recipe *rc, te_llama_kv_cache *cache, const int32_t *tokens,
                              const int *lens, int S, int steps, float *logits) {
    const int V = m->config.vocab_size;
    int32_t tok[16], pos[16], seq[16], ppos[64], pseq[64];
    te_llama_batch b;
    float *last = (float *)malloc(sizeof(float) * (size_t)V);
    int pass, s, i, ok = S <= 16;
    for (s = 0; s < S; s++) ok &= lens[s] >= 1 && lens[s] + steps <= 64; /* each sequence's span of tokens */
    ok &= te_llama_fp8_enable(m, rc) == TE_LLAMA_OK;
    for (pass = 0; pass < 2 && ok; pass++) { /* pass 0: calibration (BF16, amaxes recorded), pass 1: FP8 */
        ok &= te_llama_fp8_calibrate(m, pass == 0) == TE_LLAMA_OK;
        for (s = 0; s < S && ok; s++) {
            uint8_t want[64] = {0};
            for (i = 0; i < lens[s]; i++) { ppos[i] = i; pseq[i] = s; }
            want[lens[s] - 1] = 1;
            memset(&b, 0, sizeof b);
            b.n_tokens = lens[s]; b.tokens = tokens + 64 * s; b.pos = ppos; b.seq = pseq; b.want_logits = want;
            ok &= te_llama_forward(m, cache, &b, last) == TE_LLAMA_OK;
        }
    }
    for (i = 0; i < steps && ok; i++) {
        for (s = 0; s < S; s++) { tok[s] = tokens[64 * s + lens[s] + i]; pos[s] = lens[s] + i; seq[s] = s; }
        memset(&b, 0, sizeof b);
        b.n_tokens = S; b.tokens = tok; b.pos = pos; b.seq = seq;
        ok &= te_llama_forward(m, cache, &b, logits + (size_t)i * S * V) == TE_LLAMA_OK;
    }
    free(last);
    return ok;
}

/* FP8 decode of S sequences batched (2-16 tokens a step) and of a short one (its attention a single split, no
   merge): the GPU against the CPU emulation of the same forwards, and proj's input quantised by the attention
   kernels (the decode steps', and the prompts' where they take the tensor-core prefill kernels, calibrating too)
   against te_llama__cast_fp8 (the same arithmetic: bit-identical logits). e_q: FP8 vs BF16 on the CPU. */
static void check_fp8_decode_batch(const char *name, te_llama_model *cpu, te_llama_model *gpu, const te_llama_fp8_recipe *rc,
                                   const int32_t *tokens, const int *lens, int S, double e_q) {
    enum { STEPS = 6 };
    const int V = cpu->config.vocab_size;
    te_llama_kv_cache *cc = NULL, *cg = NULL;
    const size_t count = (size_t)STEPS * S * V;
    float *lc = (float *)malloc(sizeof(float) * count), *lg = (float *)malloc(sizeof(float) * count);
    float *lu = (float *)malloc(sizeof(float) * count);
    double worst = 0;
    int i, max_len = 0, ok;
    for (i = 0; i < S; i++) if (lens[i] + STEPS > max_len) max_len = lens[i] + STEPS;
    CHECK_RESULT(te_llama_kv_cache_create(cpu, S, max_len, &cc), TE_LLAMA_OK);
    CHECK_RESULT(te_llama_kv_cache_create(gpu, S, max_len, &cg), TE_LLAMA_OK);
    if (!cc || !cg) goto done;
    ok = fp8_decode_batches(cpu, rc, cc, tokens, lens, S, STEPS, lc) && fp8_decode_batches(gpu, rc, cg, tokens, lens, S, STEPS, lg);
    CHECK(ok, "%s: FP8 forwards failed: %s", name, te_llama_last_error());
    if (!ok) goto done;
    for (i = 0; i < STEPS; i++) {
        const double e = rel_l2(lg + (size_t)i * S * V, lc + (size_t)i * S * V, (size_t)S * V, NULL);
        if (!(e <= worst)) worst = e;
    }
    CHECK(worst < 0.9 * e_q, "%s: FP8 decode: GPU vs CPU emulation rel L2 %g (FP8 vs BF16 %g)", name, worst, e_q);
    CHECK_RESULT(te_llama_cuda_test_fp8_fused(gpu, 6), TE_LLAMA_OK);
    ok = fp8_decode_batches(gpu, rc, cg, tokens, lens, S, STEPS, lu) && memcmp(lu, lg, sizeof(float) * count) == 0;
    CHECK_RESULT(te_llama_cuda_test_fp8_fused(gpu, 7), TE_LLAMA_OK);
    CHECK(ok, "%s: FP8 decode: the attention kernels' quantised output and te_llama__cast_fp8's give different logits", name);
    printf("  fp8 forward: %s: %d FP8 decode steps of %d token%s: worst GPU vs CPU emulation rel L2 %.2e; with proj's "
           "input cast by a separate kernel: logits %s\n", name, STEPS, S, S > 1 ? "s" : "", worst,
           ok ? "bit-identical" : "DIFFERENT");
done:
    te_llama_kv_cache_free(cc);
    te_llama_kv_cache_free(cg);
    free(lc); free(lg); free(lu);
}

/* The FP8 forward on the GPU against the CPU's FP8 emulation, on a random model (hd 128, GQA 4:2): both enable
   FP8, calibrate on the same prompt (one BF16 pass recording amaxes), then run a 40-token FP8 prefill (cuBLASLt's
   FP8 GEMMs, token count padded to 16) and 8 single-token FP8 decode steps (the E4M3 GEMV with RoPE and SwiGLU in
   its epilogues), compared step by step. The two sides quantise slightly different inputs (bf16 K/V and attention
   output on the GPU, about 0.4% apart), and where an input sits that close to an E4M3 rounding boundary (the
   spacing s is 6.25% to 12.5% of the value: a fraction of about 0.4% / s of them) it rounds the other way, a step
   of s. Per GEMM input that is an RMS difference of s sqrt(0.4% / s) against FP8's own s / sqrt(12): the
   GPU-vs-emulation distance is expected at 0.6 to 0.75 of the FP8-vs-BF16 distance, while a fault (a wrong row,
   scale or RoPE pair) leaves the two uncorrelated, at 1.4 times it or more. The bound is 0.9 of it. (The first
   bound, 0.5 with a 5e-2 cap, failed on the H200 at 0.58 and 0.62: bench/NOTES.md, run 3.) Then
   te_llama_generate (graph-captured FP8 decode) against the same greedy steps by plain forward calls, from the same
   FP8 state: identical ids. Each fusion of the decode step against the kernel it replaces, and batched and
   single-split decode (check_fp8_decode_batch). */
static void test_fp8_forward(const te_llama_fp8_recipe *rc, int layers, const char *tag) {
    enum { N = 40, STEPS = 8 };
    te_llama_config c;
    te_llama_model *cpu = NULL, *gpu = NULL;
    te_llama_kv_cache *cc = NULL, *cg = NULL;
    te_llama_generate_options g;
    int32_t prompt[N + STEPS], ids_gen[16], ids_fwd[16];
    uint8_t want[N];
    float *lc = NULL, *lg = NULL, *lb = NULL, *steps = NULL;
    static te_llama_fp8_meta gen_states[8][TE_LLAMA_FP8_GEMMS][2];
    double e_emu, e_q, worst = 0;
    int i, V, n_out = 0, same = 1;
    uint64_t x = 4242;
    random_config(&c, 512, 1408, layers, 4, 2, 128, 2048);
    if (!random_pair(&c, &cpu, &gpu)) goto done;
    V = c.vocab_size;
    for (i = 0; i < N + STEPS; i++) { x = x * 6364136223846793005ull + 1442695040888963407ull; prompt[i] = (int32_t)((x >> 33) % (uint64_t)V); }
    memset(want, 0, sizeof want);
    want[N - 1] = 1;
    lc = (float *)malloc(sizeof(float) * V); lg = (float *)malloc(sizeof(float) * V); lb = (float *)malloc(sizeof(float) * V * STEPS);
    steps = (float *)malloc(sizeof(float) * V * STEPS);
    CHECK_RESULT(te_llama_fp8_enable(cpu, rc), TE_LLAMA_OK);
    CHECK_RESULT(te_llama_fp8_enable(gpu, rc), TE_LLAMA_OK);
    CHECK_RESULT(te_llama_kv_cache_create(cpu, 1, N + STEPS, &cc), TE_LLAMA_OK);
    CHECK_RESULT(te_llama_kv_cache_create(gpu, 1, N + STEPS, &cg), TE_LLAMA_OK);
    if (!cpu->fp8 || !gpu->fp8 || !cc || !cg) goto done;
    /* calibration: BF16 forwards recording amaxes; the CPU's logits here are the BF16 reference */
    CHECK_RESULT(te_llama_fp8_calibrate(cpu, 1), TE_LLAMA_OK);
    CHECK_RESULT(te_llama_fp8_calibrate(gpu, 1), TE_LLAMA_OK);
    CHECK_RESULT(run(cpu, cc, prompt, N, 0, want, lb), TE_LLAMA_OK);
    CHECK_RESULT(run(gpu, cg, prompt, N, 0, want, lg), TE_LLAMA_OK);
    e_emu = rel_l2(lg, lb, (size_t)V, NULL);
    printf("  fp8 forward%s: calibration pass (bf16) GPU vs CPU rel L2 %.2e\n", tag, e_emu);
    CHECK(e_emu < 1e-2, "FP8 calibration pass (bf16): GPU vs CPU rel L2 %g", e_emu);
    CHECK_RESULT(te_llama_fp8_calibrate(cpu, 0), TE_LLAMA_OK);
    CHECK_RESULT(te_llama_fp8_calibrate(gpu, 0), TE_LLAMA_OK);
    /* FP8 prefill, then FP8 decode steps */
    CHECK_RESULT(run(cpu, cc, prompt, N, 0, want, lc), TE_LLAMA_OK);
    CHECK_RESULT(run(gpu, cg, prompt, N, 0, want, lg), TE_LLAMA_OK);
    e_emu = rel_l2(lg, lc, (size_t)V, NULL);
    e_q = rel_l2(lc, lb, (size_t)V, NULL);
    printf("  fp8 forward%s: %d-token FP8 prefill: GPU vs CPU emulation rel L2 %.2e; FP8 vs BF16 on the CPU %.2e\n", tag, N, e_emu, e_q);
    CHECK(e_emu < 0.9 * e_q, "FP8 prefill: GPU vs CPU emulation rel L2 %g (FP8 vs BF16 %g)", e_emu, e_q);
    for (i = 0; i < STEPS; i++) {
        CHECK_RESULT(run(cpu, cc, prompt + N + i, 1, N + i, NULL, lc), TE_LLAMA_OK);
        CHECK_RESULT(run(gpu, cg, prompt + N + i, 1, N + i, NULL, lg), TE_LLAMA_OK);
        e_emu = rel_l2(lg, lc, (size_t)V, NULL);
        if (e_emu > worst) worst = e_emu;
    }
    printf("  fp8 forward%s: %d FP8 decode steps (E4M3 GEMV): worst GPU vs CPU emulation rel L2 %.2e\n", tag, STEPS, worst);
    CHECK(worst < 0.9 * e_q, "FP8 decode: GPU vs CPU emulation rel L2 %g (FP8 vs BF16 %g)", worst, e_q);
    { /* the states those steps left: every amax recorded (fc2's input from the SwiGLU GEMV's per-block parts) */
        int differ;
        const double d = fp8_states_diff(gpu, cpu, NULL, c.num_hidden_layers, 0, &differ);
        printf("  fp8 forward%s: FP8 input states after prefill and %d decode steps: %d of %d record a different number of "
               "amaxes than the CPU's; scales within %.2e of the CPU's\n", tag, STEPS, differ, 4 * c.num_hidden_layers, d);
        CHECK(differ == 0 && d < 0.1, "FP8 decode: states vs the CPU's: %d differ in updates, scales by %g", differ, d);
    }
    /* Each fusion of the FP8 decode step against the separate kernel it replaces, from fresh states calibrated
       alike. proj's input quantised by the attention kernels (the prompt's tensor-core prefill, calibrating and
       in FP8, and every decode step's) against te_llama__cast_fp8 after them: the same arithmetic, so the same
       logits to the bit at every step. The rmsnorms folded into QKV and fc1 against
       te_llama__rmsnorm_fp8: the same arithmetic but for inv, whose sum of squares is added in another order, so
       an e4m3 rounding may flip where y s lies within an ulp of a boundary: close logits, and the inputs' amaxes
       (their states' histories) equal to float rounding. */
    {
        const int len = N;
        te_llama_fp8_meta ref[2][8], *mt;
        double e_fold = 0, e_amax = 0;
        int l, t, k;
        CHECK(c.num_hidden_layers <= 8, "test_fp8_forward: at most 8 layers");
        CHECK(fp8_decode_batches(gpu, rc, cg, prompt, &len, 1, STEPS, steps), "FP8 decode: %s", te_llama_last_error());
        for (l = 0; l < c.num_hidden_layers && l < 8; l++)
            for (t = 0; t < 2; t++)
                if ((mt = te_llama_fp8_meta_of(gpu, l, t ? TE_LLAMA_FP8_FC1 : TE_LLAMA_FP8_QKV, TE_LLAMA_FP8_INPUT))) ref[t][l] = *mt;
        fp8_snapshot(gpu, gen_states, c.num_hidden_layers);
        CHECK_RESULT(te_llama_cuda_test_fp8_fused(gpu, 3), TE_LLAMA_OK); /* fc1's amax by atomics, not per-block parts */
        same = fp8_decode_batches(gpu, rc, cg, prompt, &len, 1, STEPS, lb) && memcmp(lb, steps, sizeof(float) * V * STEPS) == 0;
        {
            int differ;
            const double d = fp8_states_diff(gpu, NULL, gen_states, c.num_hidden_layers, 1, &differ);
            printf("  fp8 forward%s: the same %d steps with fc1's amax by atomics instead of per-block parts: logits %s, %d of %d "
                   "states record a different number of amaxes, scales within %.2e\n", tag, STEPS, same ? "bit-identical" : "DIFFERENT",
                   differ, 8 * c.num_hidden_layers, d);
            CHECK(same && differ == 0 && d == 0, "FP8 decode: fc1's amax by atomics vs by parts: logits %s, %d states differ, scales by %g",
                  same ? "same" : "differ", differ, d);
        }
        CHECK_RESULT(te_llama_cuda_test_fp8_fused(gpu, 6), TE_LLAMA_OK);
        same = fp8_decode_batches(gpu, rc, cg, prompt, &len, 1, STEPS, lb) && memcmp(lb, steps, sizeof(float) * V * STEPS) == 0;
        printf("  fp8 forward%s: the same %d steps with proj's input cast by a separate kernel: logits %s\n", tag, STEPS,
               same ? "bit-identical" : "DIFFERENT");
        CHECK(same, "FP8 decode: the attention kernels' quantised output and te_llama__cast_fp8's give different logits");
        CHECK_RESULT(te_llama_cuda_test_fp8_fused(gpu, 5), TE_LLAMA_OK);
        CHECK(fp8_decode_batches(gpu, rc, cg, prompt, &len, 1, STEPS, lb), "FP8 decode: %s", te_llama_last_error());
        CHECK_RESULT(te_llama_cuda_test_fp8_fused(gpu, 7), TE_LLAMA_OK);
        for (i = 0; i < STEPS; i++) {
            const double e = rel_l2(lb + (size_t)i * V, steps + (size_t)i * V, (size_t)V, NULL);
            if (!(e <= e_fold)) e_fold = e;
        }
        for (l = 0; l < c.num_hidden_layers && l < 8; l++)
            for (t = 0; t < 2; t++) {
                mt = te_llama_fp8_meta_of(gpu, l, t ? TE_LLAMA_FP8_FC1 : TE_LLAMA_FP8_QKV, TE_LLAMA_FP8_INPUT);
                CHECK(mt && mt->n_updates == ref[t][l].n_updates,
                      "FP8 decode: layer %d %s input: %lld amaxes recorded with the folded norms, %lld with the kernels", l,
                      t ? "fc1" : "QKV", mt ? (long long)mt->n_updates : -1LL, (long long)ref[t][l].n_updates);
                for (k = 0; mt && k < mt->history_len; k++) {
                    const double d = fabs((double)mt->history[k] - ref[t][l].history[k]) / (fabs((double)ref[t][l].history[k]) + 1e-30);
                    if (!(d <= e_amax)) e_amax = d;
                }
            }
        printf("  fp8 forward%s: the same %d steps with te_llama__rmsnorm_fp8 instead of the folded norms: logits rel L2 %.2e, "
               "QKV and fc1 input amaxes relative difference %.2e\n", tag, STEPS, e_fold, e_amax);
        CHECK(e_fold < 1e-2, "FP8 decode: folded norms vs te_llama__rmsnorm_fp8: logits rel L2 %g", e_fold);
        CHECK(e_amax < 1e-5, "FP8 decode: folded norms vs te_llama__rmsnorm_fp8: amaxes differ by %g", e_amax);
    }
    /* the captured FP8 decode graph against plain forwards, each from a fresh FP8 state calibrated alike */
    memset(&g, 0, sizeof g);
    g.max_new_tokens = 16;
    g.ignore_eos = 1;
    CHECK_RESULT(te_llama_fp8_enable(gpu, rc), TE_LLAMA_OK);
    CHECK_RESULT(te_llama_fp8_calibrate(gpu, 1), TE_LLAMA_OK);
    last_logits(gpu, prompt, N, lg);
    CHECK_RESULT(te_llama_fp8_calibrate(gpu, 0), TE_LLAMA_OK);
    CHECK_RESULT(te_llama_generate(gpu, &g, prompt, N, ids_gen, 16, &n_out), TE_LLAMA_OK);
    fp8_snapshot(gpu, gen_states, c.num_hidden_layers);
    CHECK_RESULT(te_llama_fp8_enable(gpu, rc), TE_LLAMA_OK);
    CHECK_RESULT(te_llama_fp8_calibrate(gpu, 1), TE_LLAMA_OK);
    last_logits(gpu, prompt, N, lg);
    CHECK_RESULT(te_llama_fp8_calibrate(gpu, 0), TE_LLAMA_OK);
    gpu_forward_greedy(gpu, prompt, N, 16, N + 16, ids_fwd);
    CHECK(n_out == 16 && memcmp(ids_gen, ids_fwd, sizeof ids_gen) == 0, "FP8: te_llama_generate (graph) and plain forwards differ");
    printf("  fp8 forward%s: te_llama_generate (captured FP8 decode) vs plain forwards: %s\n", tag,
           n_out == 16 && memcmp(ids_gen, ids_fwd, sizeof ids_gen) == 0 ? "16 of 16 ids identical" : "DIFFERENT");
    { /* the graph's scale update, a branch beside lm_head, against the forwards' in line */
        int differ;
        const double d = fp8_states_diff(gpu, NULL, gen_states, c.num_hidden_layers, 1, &differ);
        printf("  fp8 forward%s: FP8 states after te_llama_generate vs after the plain forwards: %d of %d record a different "
               "number of amaxes; scales within %.2e\n", tag, differ, 8 * c.num_hidden_layers, d);
        CHECK(differ == 0 && d < 1e-3, "FP8: states after generate vs plain forwards: %d differ in updates, scales by %g", differ, d);
    }
    { /* sequence s reads tokens[64 s ..]: the prompt's ids, one sequence's span after another */
        static const int one[1] = {3}, four[4] = {2, 40, 13, 27};
        int32_t tokens[64 * 4];
        for (i = 0; i < 64 * 4; i++) { x = x * 6364136223846793005ull + 1442695040888963407ull; tokens[i] = (int32_t)((x >> 33) % (uint64_t)V); }
        check_fp8_decode_batch("a 3-token prompt", cpu, gpu, rc, tokens, one, 1, e_q);
        check_fp8_decode_batch("4 sequences of 2, 40, 13, 27 tokens", cpu, gpu, rc, tokens, four, 4, e_q);
    }
    if (rc && (rc->bf16_layers_start || rc->bf16_layers_end)) { /* the kept layers' states unused; saved as the CPU saves */
        int l, unused = 1;
        for (l = 0; l < layers; l++) {
            te_llama_fp8_meta *in = te_llama_fp8_meta_of(gpu, l, TE_LLAMA_FP8_FC2, TE_LLAMA_FP8_INPUT);
            const int kept = te_llama_fp8_layer_in_bf16(rc, l, layers);
            const int ok = in && (kept ? in->n_updates == 0 && in->scale == 1.0f : in->n_updates > 0);
            CHECK(ok, "%s: layer %d (%s) fc2 input state: %lld updates, scale %g", tag, l, kept ? "BF16" : "FP8",
                  in ? (long long)in->n_updates : -1LL, in ? in->scale : 0);
            unused &= ok;
        }
        printf("  fp8 forward%s: the kept layers' scaling states %s\n", tag, unused ? "never updated, the others updated" : "WRONG");
        check_save("fp8_kept", gpu, cpu);
    }
done:
    te_llama_kv_cache_free(cc);
    te_llama_kv_cache_free(cg);
    free(lc); free(lg); free(lb); free(steps);
    te_llama_free(cpu);
    te_llama_free(gpu);
}

/* Every layer kept out of FP8 (bf16_layers_start = all): the FP8 model computes what the BF16 model computes, bit
   for bit, in a prefill, in single-token decode steps (the norms folded across layers) and in te_llama_generate's
   captured decode. */
static void test_fp8_all_layers_kept(void) {
    enum { N = 40, STEPS = 6, L = 3 };
    te_llama_config c;
    te_llama_model *gpu;
    te_llama_fp8_recipe rc;
    te_llama_generate_options g;
    int32_t prompt[N + STEPS], ids[2][16];
    float *out[2];
    int V, i, pass, n_out[2] = {0, 0}, same;
    uint64_t x = 777;
    random_config(&c, 512, 1408, L, 4, 2, 128, 2048);
    gpu = create_bf16(&c, TE_LLAMA_BACKEND_CUDA);
    if (!gpu) return;
    V = c.vocab_size;
    for (i = 0; i < N + STEPS; i++) { x = x * 6364136223846793005ull + 1442695040888963407ull; prompt[i] = (int32_t)((x >> 33) % (uint64_t)V); }
    memset(&rc, 0, sizeof rc);
    rc.bf16_layers_start = L;
    memset(&g, 0, sizeof g);
    g.max_new_tokens = 16;
    g.ignore_eos = 1;
    for (pass = 0; pass < 2; pass++) { /* pass 0: FP8 off; pass 1: FP8 on, every layer kept */
        te_llama_kv_cache *cache = NULL;
        out[pass] = (float *)malloc(sizeof(float) * (size_t)(N + STEPS) * V);
        if (pass) CHECK_RESULT(te_llama_fp8_enable(gpu, &rc), TE_LLAMA_OK);
        CHECK_RESULT(te_llama_kv_cache_create(gpu, 1, N + STEPS, &cache), TE_LLAMA_OK);
        if (cache) CHECK_RESULT(run(gpu, cache, prompt, N, 0, NULL, out[pass]), TE_LLAMA_OK);
        for (i = 0; cache && i < STEPS; i++)
            CHECK_RESULT(run(gpu, cache, prompt + N + i, 1, N + i, NULL, out[pass] + (size_t)(N + i) * V), TE_LLAMA_OK);
        te_llama_kv_cache_free(cache);
        CHECK_RESULT(te_llama_generate(gpu, &g, prompt, N, ids[pass], 16, &n_out[pass]), TE_LLAMA_OK);
    }
    same = memcmp(out[0], out[1], sizeof(float) * (size_t)(N + STEPS) * V) == 0;
    CHECK(same, "FP8 with every layer kept in BF16: logits differ from FP8 off");
    CHECK(n_out[0] == 16 && n_out[1] == 16 && memcmp(ids[0], ids[1], sizeof ids[0]) == 0, "FP8 with every layer kept: generate differs");
    printf("  fp8 forward (every layer kept in BF16): a %d-token prefill and %d decode steps against FP8 off: logits %s; "
           "te_llama_generate: %s\n", N, STEPS, same ? "bit-identical" : "DIFFERENT",
           memcmp(ids[0], ids[1], sizeof ids[0]) == 0 ? "16 of 16 ids identical" : "DIFFERENT");
    free(out[0]);
    free(out[1]);
    te_llama_free(gpu);
}

/* -log softmax(row)[target], in double */
static double nll_of(const float *row, int V, int target) {
    double mx = row[0], sum = 0;
    int k;
    for (k = 1; k < V; k++) if (row[k] > mx) mx = row[k];
    for (k = 0; k < V; k++) sum += exp(row[k] - mx);
    return log(sum) + mx - row[target];
}

/* Issue #9's accuracy measure on the GPU's own FP8 kernels (test_fp8.c's test_accuracy measures the CPU
   emulation): the default model, held-out Austen in 12 chunks of 256 tokens, FP8 calibrated on 4 chunks of the
   training text before it, as there. Reference: the same model in BF16 on the GPU. FP8 prefill: each chunk in one
   forward (cuBLASLt's FP8 GEMMs); FP8 decode: a second FP8 model, calibrated alike, reads each chunk a token at a
   time (the E4M3 GEMVs with the folded norms), teacher-forced. Each forward updates its model's scales, as TE
   does after each step. Also GPU BF16 against the CPU's float32 math, the part of the figure that is BF16's own
   rounding. rc: the recipe (NULL: TE's defaults). Bars: perplexity within 2% (the target); top-1 agreement >= bar
   (test_fp8.c's bars: 93% for TE's recipe, whose misses of the target's 95% bench/NOTES_fp8.md explains by the
   model's near-ties, and the target itself with the first and last layers kept in BF16), and >= 98% where BF16's
   top two logits are 0.25 or more apart (the CPU emulation: 99.3%). */
static void test_fp8_accuracy(const te_llama_fp8_recipe *rc, double bar) {
    enum { SEQ = 256, CHUNKS = 12, CALIB = 4 };
    size_t len = 0, cut = 0, calib_at = 0, n_ids = 0, n_cids = 0;
    char *text = check_austen_split(&len, &cut, &calib_at);
    te_llama_tokenizer *tok = NULL;
    te_llama_model *cpu = NULL, *bf16 = NULL, *fp8p = NULL, *fp8d = NULL;
    te_llama_kv_cache *cache = NULL;
    int32_t *ids = NULL, *cids = NULL;
    float *dec = NULL;
    double nll[4] = {0, 0, 0, 0}; /* CPU f32, GPU bf16, FP8 prefill, FP8 decode */
    int agree[3] = {0, 0, 0}, decided = 0, agree_decided[2] = {0, 0}, total = 0, c, t, V = 0;
    double t0 = now_s();
    CHECK(text != NULL, "cannot read the Austen corpus (set TE_LLAMA_SHARED)");
    if (!text) return;
    CHECK_RESULT(te_llama_tokenizer_load("models/austen", NULL, &tok), TE_LLAMA_OK);
    if (tok) {
        CHECK_RESULT(te_llama_tokenizer_encode(tok, text + cut, len - cut, 0, &ids, &n_ids), TE_LLAMA_OK);
        CHECK_RESULT(te_llama_tokenizer_encode(tok, text + calib_at, cut - calib_at, 0, &cids, &n_cids), TE_LLAMA_OK);
    }
    cpu = load("models/austen", TE_LLAMA_BACKEND_CPU);
    bf16 = load("models/austen", TE_LLAMA_BACKEND_CUDA);
    fp8p = load("models/austen", TE_LLAMA_BACKEND_CUDA);
    fp8d = load("models/austen", TE_LLAMA_BACKEND_CUDA);
    CHECK(n_ids >= (size_t)CHUNKS * SEQ && n_cids >= (size_t)CALIB * SEQ, "held-out %zu tokens, calibration %zu", n_ids, n_cids);
    if (!cpu || !bf16 || !fp8p || !fp8d || n_ids < (size_t)CHUNKS * SEQ || n_cids < (size_t)CALIB * SEQ) goto done;
    V = cpu->config.vocab_size;
    CHECK_RESULT(te_llama_fp8_enable(fp8p, rc), TE_LLAMA_OK);
    CHECK_RESULT(te_llama_fp8_enable(fp8d, rc), TE_LLAMA_OK);
    CHECK_RESULT(te_llama_fp8_calibrate(fp8p, 1), TE_LLAMA_OK);
    CHECK_RESULT(te_llama_fp8_calibrate(fp8d, 1), TE_LLAMA_OK);
    for (c = 0; c < CALIB; c++) {
        free(prompt_logits(fp8p, cids + (size_t)c * SEQ, SEQ));
        free(prompt_logits(fp8d, cids + (size_t)c * SEQ, SEQ));
    }
    CHECK_RESULT(te_llama_fp8_calibrate(fp8p, 0), TE_LLAMA_OK);
    CHECK_RESULT(te_llama_fp8_calibrate(fp8d, 0), TE_LLAMA_OK);
    dec = (float *)malloc(sizeof(float) * SEQ * (size_t)V);
    CHECK_RESULT(te_llama_kv_cache_create(fp8d, 1, SEQ, &cache), TE_LLAMA_OK);
    if (!cache) goto done;
    for (c = 0; c < CHUNKS; c++) {
        const int32_t *x = ids + (size_t)c * SEQ;
        float *ref = prompt_logits(cpu, x, SEQ), *lb = prompt_logits(bf16, x, SEQ), *lp = prompt_logits(fp8p, x, SEQ);
        te_llama_result r = TE_LLAMA_OK;
        for (t = 0; t < SEQ && !r; t++) /* positions from 0 again: each step writes its cache row before reading it */
            r = run(fp8d, cache, x + t, 1, t, NULL, dec + (size_t)t * V);
        CHECK_RESULT(r, TE_LLAMA_OK);
        if (r) { free(ref); free(lb); free(lp); goto done; }
        for (t = 0; t + 1 < SEQ; t++) {
            const size_t at = (size_t)t * V;
            float gap;
            const int b = argmax(lb + at, V, &gap), same_p = argmax(lp + at, V, NULL) == b, same_d = argmax(dec + at, V, NULL) == b;
            nll[0] += nll_of(ref + at, V, x[t + 1]);
            nll[1] += nll_of(lb + at, V, x[t + 1]);
            nll[2] += nll_of(lp + at, V, x[t + 1]);
            nll[3] += nll_of(dec + at, V, x[t + 1]);
            agree[0] += argmax(ref + at, V, NULL) == b;
            agree[1] += same_p;
            agree[2] += same_d;
            if (gap >= 0.25f) { /* BF16 decided: its top two logits 0.25 or more apart */
                decided++;
                agree_decided[0] += same_p;
                agree_decided[1] += same_d;
            }
            total++;
        }
        free(ref); free(lb); free(lp);
    }
    {
        const double p_ref = exp(nll[0] / total), p_b = exp(nll[1] / total), p_p = exp(nll[2] / total), p_d = exp(nll[3] / total);
        printf("  fp8 accuracy (GPU): held-out Austen, %d predictions (%.1f s): perplexity CPU f32 %.3f, GPU BF16 %.3f "
               "(%+.3f%%), FP8 prefill %.3f (%+.3f%% vs BF16), FP8 decode %.3f (%+.3f%%)\n",
               total, now_s() - t0, p_ref, p_b, 100 * (p_b / p_ref - 1), p_p, 100 * (p_p / p_b - 1), p_d, 100 * (p_d / p_b - 1));
        printf("  fp8 accuracy (GPU): layers kept in BF16: %d first, %d last: top-1 agreement with GPU BF16: FP8 prefill %.2f%%, "
               "FP8 decode %.2f%%; CPU f32 %.2f%%; at the %d positions where BF16's top-2 gap >= 0.25: FP8 prefill %.2f%%, "
               "decode %.2f%%\n", rc ? rc->bf16_layers_start : 0, rc ? rc->bf16_layers_end : 0,
               100.0 * agree[1] / total, 100.0 * agree[2] / total, 100.0 * agree[0] / total, decided,
               100.0 * agree_decided[0] / (decided ? decided : 1), 100.0 * agree_decided[1] / (decided ? decided : 1));
        CHECK(fabs(p_p / p_b - 1) <= 0.02 && fabs(p_d / p_b - 1) <= 0.02, "FP8 perplexity %g (prefill), %g (decode) vs BF16 %g",
              p_p, p_d, p_b);
        CHECK(agree[1] >= bar * total && agree[2] >= bar * total, "FP8 top-1 agreement %d (prefill), %d (decode) of %d, bar %g",
              agree[1], agree[2], total, bar);
        CHECK(agree[0] >= 0.97 * total && fabs(p_b / p_ref - 1) <= 0.005, "GPU BF16 vs CPU f32: agreement %d of %d, perplexity %g vs %g",
              agree[0], total, p_b, p_ref);
        CHECK(agree_decided[0] >= 0.98 * decided && agree_decided[1] >= 0.98 * decided && decided >= total / 2,
              "FP8 top-1 agreement where BF16 is decided: %d (prefill), %d (decode) of %d", agree_decided[0], agree_decided[1], decided);
        CHECK(nll[2] != nll[1] && nll[3] != nll[1], "FP8 changed nothing: not quantising?");
    }
done:
    te_llama_kv_cache_free(cache);
    free(dec);
    te_llama_free(cpu); te_llama_free(bf16); te_llama_free(fp8p); te_llama_free(fp8d);
    if (tok) {
        te_llama_tokenizer_free_ids(tok, ids);
        te_llama_tokenizer_free_ids(tok, cids);
    }
    te_llama_tokenizer_free(tok);
    free(text);
}

static void test_fp8(void) {
    te_llama_config c;
    te_llama_model *cpu = NULL, *gpu = NULL;
    random_config(&c, 64, 128, 1, 2, 1, 32, 256);
    if (random_pair(&c, &cpu, &gpu)) { /* a context for the kernels */
        test_fp8_convert(gpu);
        test_fp8_kernels(gpu);
        test_fp8_update(gpu);
        test_fp8_gemm(gpu);
    }
    te_llama_free(cpu);
    te_llama_free(gpu);
    test_fp8_model();
    {
        te_llama_fp8_recipe first_last;
        memset(&first_last, 0, sizeof first_last);
        first_last.bf16_layers_start = first_last.bf16_layers_end = 1;
        test_fp8_forward(NULL, 2, "");
        test_fp8_forward(&first_last, 4, " (layers 0 and 3 of 4 kept in BF16)");
        test_fp8_all_layers_kept();
        test_fp8_accuracy(NULL, 0.93);
        test_fp8_accuracy(&first_last, 0.95);
    }
}

/* ------------------------------------------------------------------------------------------------ training */

/* Relative L2 error of the GPU trainer's gradient of every parameter against the CPU trainer's (same model, same
   batch, backward already run on both); prints each parameter's error when verbose or over tol; returns the worst. */
static double grads_vs_cpu(const char *name, te_llama_trainer *gpu, te_llama_trainer *cpu, double tol, int verbose) {
    double worst = 0;
    int i;
    for (i = 0; i < cpu->n_params; i++) {
        te_llama_param *p = te_llama_parameter(cpu->model, i);
        size_t n = te_llama_param_numel(p);
        const float *gc = te_llama_trainer_grad(cpu, i), *gg = te_llama_trainer_grad(gpu, i);
        double e, max_abs = 0;
        CHECK(gg != NULL, "%s: GPU gradient %d: %s", name, i, te_llama_last_error());
        if (!gg) return INFINITY;
        e = rel_l2(gg, gc, n, &max_abs);
        if (verbose || !(e < tol)) printf("    %s: %-58s rel L2 %.2e (max abs diff %.2e)\n", name, p->name, e, max_abs);
        CHECK(e < tol, "%s: gradient of %s, GPU trainer vs the reference trainer: rel L2 %.3g (tolerance %.g)", name, p->name, e, tol);
        if (!(e <= worst)) worst = e;
    }
    return worst;
}

/* The trainer's gradient of every HF source tensor against the float64 reference in path (even rows of each
   matrix), each below bound; *worst gets the largest relative L2. Returns the number compared. */
static int grads_vs_hf(const char *name, te_llama_model *gpu, te_llama_trainer *tg, const char *path, double bound, double *worst) {
    const char *file = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    int i, n = 0;
    *worst = 0;
    for (i = 0; i < te_llama_num_parameters(gpu); i++) {
        te_llama_param *p = te_llama_parameter(gpu, i);
        const float *g = te_llama_trainer_grad(tg, i);
        int src;
        CHECK(g != NULL, "%s: gradient %d: %s", name, i, te_llama_last_error());
        if (!g) break;
        for (src = 0; src < p->n_sources; src++) {
            double e = INFINITY;
            int st = ref_grad_error(path, p, src, g, &e);
            CHECK(st != REF_GRAD_MISSING, "%s: no reference gradient %s in %s", name, p->sources[src].name, file);
            CHECK(st != REF_GRAD_SHAPE, "%s: %s shape", name, p->sources[src].name);
            if (st == REF_GRAD_MISSING) continue;
            printf("    %s: %-44s vs HF (%s) rel L2 %.2e\n", name, p->sources[src].name, file, e);
            CHECK(e < bound, "%s: GPU gradient of %s (from %s) vs HF float64 (%s): relative error %.3g", name, p->name, p->sources[src].name, file, e);
            if (!(e <= *worst)) *worst = e;
            n++;
        }
    }
    return n;
}

/* A fixture's gradients on the GPU against HF's float64 ones (tools/make_train_refs.py: at the bf16-rounded weights
   the GPU holds, and at the checkpoint's own) and against the CPU trainer's on the same bf16 weights; then 10 AdamW steps against torch's losses; gradient accumulation over two
   micro-batches against one batch; an optimizer state saved, loaded into a fresh model and trained on. */
static void test_train_fixture(const char *name) {
    char dir[256], path[400];
    te_llama_model *gpu = NULL, *cpu = NULL, *g2 = NULL;
    te_llama_trainer *tg = NULL, *tc = NULL, *t2 = NULL;
    train_ref ref;
    double lg = 0, lc = 0, worst_hf = 0, worst_hf_own = 0, worst_cpu, worst_step = 0, a[2] = {0, 0}, b[2] = {0, 0};
    int s, n_sources = 0;
    snprintf(dir, sizeof dir, FIXTURES "%s", name);
    snprintf(path, sizeof path, "%s/ref_grads.safetensors", dir);
    CHECK(load_train_ref(dir, &ref), "%s: ref_train.json", name);
    CHECK_RESULT(load_status(dir, TE_LLAMA_BACKEND_CUDA, quiet_log, &gpu), TE_LLAMA_OK);
    CHECK_RESULT(load_status(dir, TE_LLAMA_BACKEND_CPU, quiet_log, &cpu), TE_LLAMA_OK);
    if (!gpu || !cpu || ref.B < 1) goto done;
    CHECK_RESULT(te_llama_trainer_create(gpu, NULL, &tg), TE_LLAMA_OK);
    CHECK_RESULT(te_llama_trainer_create(cpu, NULL, &tc), TE_LLAMA_OK);
    if (!tg || !tc) { printf("  %s: %s\n", name, te_llama_last_error()); goto done; }
    CHECK(tg->device != NULL && tg->master == NULL, "%s: the CUDA trainer keeps its state on the device", name);
    CHECK_RESULT(te_llama_trainer_backward(tg, ref.tokens, ref.labels, ref.B, ref.T, &lg), TE_LLAMA_OK);
    CHECK_RESULT(te_llama_trainer_backward(tc, ref.tokens, ref.labels, ref.B, ref.T, &lc), TE_LLAMA_OK);
    printf("  train %s: loss GPU %.6f, CPU (bf16 weights) %.6f, HF float64 %.6f\n", name, lg, lc, ref.loss);
    CHECK(fabs(lg - ref.loss) < 2e-2 * fabs(ref.loss), "%s: GPU loss %.6f, HF %.6f", name, lg, ref.loss);
    CHECK(fabs(lg - lc) < 1e-2 * fabs(lc), "%s: GPU loss %.6f, CPU %.6f", name, lg, lc);
    /* every parameter against HF, source by source (the reference keeps the even rows of each matrix), twice: at the
       weights the GPU holds (ref_grads_bf16.safetensors: HF float64 at the bf16-rounded weights, for the fixtures
       not stored in bf16; issue 10's bound 2e-2) and at the checkpoint's own weights (ref_grads.safetensors, which
       adds the weights' rounding: 1.85e-2 alone on gqa_tied_llama3 by tools/train_precision.c; bound 3e-2) */
    {
        char path16[400];
        FILE *f16;
        snprintf(path16, sizeof path16, "%s/ref_grads_bf16.safetensors", dir);
        f16 = fopen(path16, "rb");
        if (f16) fclose(f16);
        else snprintf(path16, sizeof path16, "%s", path);
        n_sources = grads_vs_hf(name, gpu, tg, path16, 2e-2, &worst_hf);
        CHECK(grads_vs_hf(name, gpu, tg, path, 3e-2, &worst_hf_own) == n_sources, "%s: the two references differ in count", name);
    }
    CHECK(n_sources >= 9 * gpu->config.num_hidden_layers + 2, "%s: %d gradients compared", name, n_sources);
    /* 2e-2: tools/train_precision.c puts the GPU's rounding points (bf16 GEMM inputs and stored activations) at
       1.2-1.4e-2 worst on these fixtures against the fp32 CPU pass, and they measured up to 10% above their
       emulation before (1.88e-2 against 1.71e-2); a wrong term is an error of order 1 */
    worst_cpu = grads_vs_cpu(name, tg, tc, 2e-2, 0);
    printf("  train %s: worst gradient rel L2 vs HF float64 at the bf16-rounded weights %.2e, at the checkpoint's weights %.2e; vs the CPU "
           "trainer %.2e\n", name, worst_hf, worst_hf_own, worst_cpu);
    te_llama_trainer_free(tg);
    te_llama_trainer_free(tc);
    tg = tc = NULL;
    te_llama_free(gpu);
    gpu = NULL;
    /* 10 AdamW steps against torch's losses (torch: float32 weights; here bf16 weights and activations) */
    CHECK_RESULT(load_status(dir, TE_LLAMA_BACKEND_CUDA, quiet_log, &gpu), TE_LLAMA_OK);
    if (gpu) CHECK_RESULT(te_llama_trainer_create(gpu, &ref.adamw, &tg), TE_LLAMA_OK);
    printf("  train %s: AdamW losses GPU / torch:", name);
    for (s = 0; tg && s < ref.steps; s++) {
        double l = 0;
        CHECK_RESULT(te_llama_train_step(tg, ref.tokens, ref.labels, ref.B, ref.T, &l), TE_LLAMA_OK);
        printf(" %.4f/%.4f", l, ref.losses[s]);
        CHECK(fabs(l - ref.losses[s]) < 2e-2, "%s: AdamW step %d: GPU loss %.6f, torch %.6f", name, s, l, ref.losses[s]);
        if (!(fabs(l - ref.losses[s]) <= worst_step)) worst_step = fabs(l - ref.losses[s]);
        CHECK(tg->step == s + 1 && fabs(tg->last_lr - te_llama_train_lr(&ref.adamw, s)) < 1e-12 && tg->last_grad_norm > 0,
              "%s: step %d: lr %g, grad norm %g", name, s, tg->last_lr, tg->last_grad_norm);
    }
    if (tg) {
        double l = 0;
        CHECK_RESULT(te_llama_eval_loss(gpu, ref.tokens, ref.labels, ref.B, ref.T, &l), TE_LLAMA_OK);
        printf(" | after: %.4f/%.4f\n", l, ref.losses[ref.steps]);
        CHECK(fabs(l - ref.losses[ref.steps]) < 2e-2, "%s: loss after %d AdamW steps: GPU %.6f, torch %.6f", name, ref.steps, l, ref.losses[ref.steps]);
        if (!(fabs(l - ref.losses[ref.steps]) <= worst_step)) worst_step = fabs(l - ref.losses[ref.steps]);
        printf("  train %s: worst AdamW loss difference from torch %.2e\n", name, worst_step);
    }
    /* the optimizer state: save after 10 steps, load into a fresh model's trainer, train 2 more steps on both */
    snprintf(path, sizeof path, "%s/%s.train_state.safetensors", out_dir, name);
    CHECK_RESULT(load_status(dir, TE_LLAMA_BACKEND_CUDA, quiet_log, &g2), TE_LLAMA_OK);
    if (g2) CHECK_RESULT(te_llama_trainer_create(g2, &ref.adamw, &t2), TE_LLAMA_OK);
    if (tg && t2) {
        CHECK_RESULT(te_llama_trainer_save_state(tg, path), TE_LLAMA_OK);
        CHECK_RESULT(te_llama_trainer_load_state(t2, path), TE_LLAMA_OK);
        CHECK(t2->step == tg->step, "%s: resumed at step %lld, saved at %lld", name, (long long)t2->step, (long long)tg->step);
        for (s = 0; s < 2; s++) {
            CHECK_RESULT(te_llama_train_step(tg, ref.tokens, ref.labels, ref.B, ref.T, &a[s]), TE_LLAMA_OK);
            CHECK_RESULT(te_llama_train_step(t2, ref.tokens, ref.labels, ref.B, ref.T, &b[s]), TE_LLAMA_OK);
        }
        printf("  train %s: resumed from a saved state: losses %.7f %.7f, uninterrupted %.7f %.7f\n", name, b[0], b[1], a[0], a[1]);
        /* atomics make the summation order vary between runs: equal to rounding, not bit for bit */
        CHECK(fabs(a[0] - b[0]) < 1e-4 && fabs(a[1] - b[1]) < 1e-4, "%s: resumed losses %.7f %.7f, uninterrupted %.7f %.7f", name, b[0], b[1], a[0], a[1]);
    }
    te_llama_trainer_free(t2);
    te_llama_trainer_free(tg);
    t2 = tg = NULL;
    /* two micro-batches of one sequence each == one batch of both (the label counts differ): two trainers on one
       model, backward only */
    if (ref.B == 2 && gpu) {
        te_llama_train_options o;
        te_llama_trainer *t1 = NULL;
        memset(&o, 0, sizeof o);
        o.grad_accum = 2;
        CHECK_RESULT(te_llama_trainer_create(gpu, &o, &t1), TE_LLAMA_OK);
        CHECK_RESULT(te_llama_trainer_create(gpu, NULL, &t2), TE_LLAMA_OK);
        if (t1 && t2) {
            CHECK_RESULT(te_llama_trainer_backward(t1, ref.tokens, ref.labels, 1, ref.T, NULL), TE_LLAMA_OK);
            CHECK_RESULT(te_llama_trainer_backward(t1, ref.tokens + ref.T, ref.labels + ref.T, 1, ref.T, NULL), TE_LLAMA_OK);
            CHECK_RESULT(te_llama_trainer_backward(t2, ref.tokens, ref.labels, ref.B, ref.T, NULL), TE_LLAMA_OK);
            CHECK(t1->n_labels == t2->n_labels && t1->micro == 2, "%s: labels %lld vs %lld", name, (long long)t1->n_labels, (long long)t2->n_labels);
            /* the same math up to bf16 rounding: the loss gradient reaches the GEMMs scaled by 1 / (the first
               micro-batch's labels) then rescaled, against 1 / (all labels) directly, so the roundings differ */
            printf("  train %s: two accumulated micro-batches vs one batch: worst gradient rel L2 %.2e\n", name, grads_vs_cpu(name, t1, t2, 1e-2, 0));
        }
        te_llama_trainer_free(t1);
    }
done:
    te_llama_trainer_free(t2);
    te_llama_trainer_free(tg);
    te_llama_trainer_free(tc);
    te_llama_free(g2);
    te_llama_free(gpu);
    te_llama_free(cpu);
}

/* A random model at a longer T (several 64-row attention tiles, a partial last one, GQA), GPU gradients against the
   CPU trainer's on the same bf16 weights: exercises the attention backward's tiling and the prefill kernel's
   log-sum-exp (head_dim 64 and 128) or the CUDA-core training forward (32). */
static void test_train_long(int hd, int nh, int nkv, int B, int T) {
    te_llama_config c;
    te_llama_model *cpu = NULL, *gpu = NULL;
    te_llama_trainer *tc = NULL, *tg = NULL;
    int32_t *tokens = (int32_t *)malloc(sizeof(int32_t) * (size_t)B * T), *labels = (int32_t *)malloc(sizeof(int32_t) * (size_t)B * T);
    uint64_t x = 777 + (uint64_t)hd;
    double lc = 0, lg = 0, le = 0, worst, t0, t1;
    char name[96];
    int i;
    snprintf(name, sizeof name, "train B %d x T %d, head_dim %d, %d:%d heads", B, T, hd, nh, nkv);
    random_config(&c, 256, 512, 2, nh, nkv, hd, 512);
    if (!random_pair(&c, &cpu, &gpu)) goto done;
    for (i = 0; i < B * T; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        tokens[i] = (int32_t)((x >> 33) % (uint64_t)c.vocab_size);
        labels[i] = i % 7 == 3 ? TE_LLAMA_IGNORE_INDEX : tokens[i];
    }
    CHECK_RESULT(te_llama_trainer_create(cpu, NULL, &tc), TE_LLAMA_OK);
    CHECK_RESULT(te_llama_trainer_create(gpu, NULL, &tg), TE_LLAMA_OK);
    if (!tc || !tg) { printf("  %s: %s\n", name, te_llama_last_error()); goto done; }
    t0 = now_s();
    CHECK_RESULT(te_llama_trainer_backward(tc, tokens, labels, B, T, &lc), TE_LLAMA_OK);
    t1 = now_s();
    CHECK_RESULT(te_llama_trainer_backward(tg, tokens, labels, B, T, &lg), TE_LLAMA_OK);
    CHECK_RESULT(te_llama_eval_loss(gpu, tokens, labels, B, T, &le), TE_LLAMA_OK);
    worst = grads_vs_cpu(name, tg, tc, 2e-2, 1);
    printf("  %s: loss GPU %.6f (eval %.6f), CPU %.6f; worst gradient rel L2 %.2e; CPU %.0f ms, GPU %.1f ms\n", name, lg, le, lc, worst,
           1e3 * (t1 - t0), 1e3 * (now_s() - t1));
    CHECK(fabs(lg - lc) < 1e-2 * fabs(lc) && fabs(le - lg) < 1e-4 * fabs(lg), "%s: loss GPU %.6f, eval %.6f, CPU %.6f", name, lg, le, lc);
done:
    te_llama_trainer_free(tc);
    te_llama_trainer_free(tg);
    te_llama_free(cpu);
    te_llama_free(gpu);
    free(tokens);
    free(labels);
}

static void test_train_errors(void) {
    te_llama_config c;
    te_llama_model *cpu = NULL, *gpu = NULL;
    te_llama_trainer *t = NULL;
    random_config(&c, 192, 256, 1, 4, 2, 48, 256); /* head_dim 48: the training attention kernels do not take it */
    if (!random_pair(&c, &cpu, &gpu)) goto done;
    CHECK_RESULT(te_llama_trainer_create(gpu, NULL, &t), TE_LLAMA_ERR_UNSUPPORTED);
    CHECK(t == NULL && strstr(te_llama_last_error(), "head_dim") != NULL, "head_dim 48: %s", te_llama_last_error());
done:
    te_llama_free(cpu);
    te_llama_free(gpu);
}

static void test_train(void) {
    static const char *const names[] = {"gqa_tied_llama3", "mha_untied_bf16", "headdim_f16"};
    size_t f;
    for (f = 0; f < sizeof names / sizeof names[0]; f++) test_train_fixture(names[f]);
    test_train_long(64, 8, 2, 2, 300);
    test_train_long(128, 4, 1, 2, 200);
    test_train_long(32, 4, 4, 2, 300);
    test_train_long(16, 4, 2, 1, 130);
    test_train_errors();
}

int main(void) {
    static const char *const fixtures[] = {"gqa_tied_llama3", "mha_untied_bf16", "headdim_f16"};
    const char *env = getenv("TE_LLAMA_TMP");
    char cmd[1100];
    te_llama_model *probe;
    size_t f;
    snprintf(out_dir, sizeof out_dir, "%s", env ? env : "build/tmp/cuda");
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", out_dir);
    if (system(cmd) != 0) return 2;
    probe = load(FIXTURES "gqa_tied_llama3", TE_LLAMA_BACKEND_CUDA);
    if (probe && probe->options.backend != TE_LLAMA_BACKEND_CUDA) {
        printf("cuda: no CUDA device here; the CUDA load fell back to the CPU (checked), GPU tests skipped\n");
        te_llama_free(probe);
        return CHECK_DONE("cuda");
    }
    test_gemv(probe);
    te_llama_free(probe);
    test_argmax();
    test_decode_attention();
    test_prefill_attention();
    test_errors();
    test_fp8();
    for (f = 0; f < sizeof fixtures / sizeof fixtures[0]; f++) test_fixture(fixtures[f]);
    test_random_model();
    test_long_prompt("long prompt hd128", 128, 4, 1, 1024);
    test_long_prompt("long prompt hd64", 64, 8, 2, 777);
    test_general_attention();
    test_train();
    return CHECK_DONE("cuda");
}
