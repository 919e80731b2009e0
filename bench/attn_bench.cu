/* attn_bench.cu - the attention kernels of te_llama_kernels.cu alone: correctness against each other and a float64
   CPU reference on sampled rows, and their times; plus where the process's host memory (RSS) goes at CUDA setup.

   Build and run from the repository root (one translation unit: the kernels file, then the library's implementation):
     nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -o build/attn_bench bench/attn_bench.cu -lcublasLt -lm
     build/attn_bench              # RSS stages, then the prefill and decode cases
     build/attn_bench --rss-only   # the RSS stages alone (run it under CUDA_MODULE_LOADING=EAGER / LAZY to compare)
     build/attn_bench --load DIR   # RSS through te_llama_load of a checkpoint on CUDA and a first forward

   Prefill cases compare the tensor-core tiled kernel the library picks (wgmma on Hopper), the mma.sync one it takes
   elsewhere, and the split-KV kernel with the general CUDA-core kernel, the reference of the library before them;
   decode cases compare the split-KV kernel with the general one.
   Inputs are random (never zeros), times are medians of CUDA-event-timed launches after a warm-up. */
#include "../te_llama_kernels.cu"
#define TE_LLAMA_IMPLEMENTATION
#define TE_LLAMA_CUDA
#pragma nv_diag_suppress 550 /* a variable of te_llama.h set but unused, seen by nvcc's front end only */
#include "../te_llama.h"

#include <sys/resource.h>

#include <algorithm>
#include <vector>

#define CK(call)                                                                                              \
    do {                                                                                                      \
        cudaError_t e_ = (call);                                                                              \
        if (e_ != cudaSuccess) { fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); exit(1); } \
    } while (0)

/* ------------------------------------------------------------------------------------------------- host RSS */

static double status_mib(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double v = -1;
    size_t n = strlen(key);
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, n) && line[n] == ':') { v = atof(line + n + 1) / 1024.0; break; }
    fclose(f);
    return v;
}

static void rss(const char *stage) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("rss  %-46s VmRSS %8.1f MiB  VmHWM %8.1f MiB  ru_maxrss %8.1f MiB\n", stage, status_mib("VmRSS"),
           status_mib("VmHWM"), ru.ru_maxrss / 1024.0);
    fflush(stdout);
}

__global__ void noop_kernel(int *p) { if (p) *p = 1; }

/* What the library does at te_llama_cuda_init and the loader, step by step, with RSS after each. */
static void rss_probe(void) {
    const char *env = getenv("CUDA_MODULE_LOADING");
    int count = 0;
    cublasLtHandle_t lt;
    void *ws, *pinned[2], *a, *b, *c;
    cudaStream_t stream;
    printf("rss probe: CUDA_MODULE_LOADING=%s\n", env ? env : "(unset)");
    rss("start");
    CK(cudaGetDeviceCount(&count));
    rss("cudaGetDeviceCount (driver init)");
    CK(cudaFree(0));
    rss("cudaFree(0) (context)");
    CK(cudaStreamCreate(&stream));
    rss("cudaStreamCreate");
    if (cublasLtCreate(&lt) != CUBLAS_STATUS_SUCCESS) { fprintf(stderr, "cublasLtCreate failed\n"); exit(1); }
    rss("cublasLtCreate");
    CK(cudaMalloc(&ws, 32 << 20));
    rss("cudaMalloc 32 MiB workspace");
    CK(cudaHostAlloc(&pinned[0], 16 << 20, cudaHostAllocDefault));
    CK(cudaHostAlloc(&pinned[1], 16 << 20, cudaHostAllocDefault));
    rss("cudaHostAlloc 2 x 16 MiB (untouched)");
    memset(pinned[0], 1, 16 << 20);
    memset(pinned[1], 1, 16 << 20);
    rss("... touched");
    noop_kernel<<<1, 1, 0, stream>>>(NULL);
    CK(cudaStreamSynchronize(stream));
    rss("first launch of a kernel of this binary");
    {
        const int n = 4096;
        cublasLtMatmulDesc_t desc;
        cublasLtMatrixLayout_t la, lb, lc;
        cublasLtMatmulPreference_t pref;
        cublasLtMatmulHeuristicResult_t res;
        cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
        size_t wsb = 32 << 20;
        int found = 0;
        float alpha = 1, beta = 0;
        CK(cudaMalloc(&a, (size_t)n * n * 2));
        CK(cudaMalloc(&b, (size_t)n * n * 2));
        CK(cudaMalloc(&c, (size_t)n * n * 4));
        CK(cudaMemset(a, 0x3c, (size_t)n * n * 2));
        CK(cudaMemset(b, 0x3c, (size_t)n * n * 2));
        cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
        cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
        cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
        cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, n, n, n);
        cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, n, n, n);
        cublasLtMatrixLayoutCreate(&lc, CUDA_R_32F, n, n, n);
        cublasLtMatmulPreferenceCreate(&pref);
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof wsb);
        cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, lc, lc, pref, 1, &res, &found);
        rss("cublasLtMatmulAlgoGetHeuristic");
        if (found && cublasLtMatmul(lt, desc, &alpha, a, la, b, lb, &beta, c, lc, c, lc, &res.algo, ws, wsb, stream) == CUBLAS_STATUS_SUCCESS)
            CK(cudaStreamSynchronize(stream));
        rss("first cublasLtMatmul (bf16 4096^3, fp32 out)");
        cublasLtMatmulPreferenceDestroy(pref);
        cublasLtMatrixLayoutDestroy(la); cublasLtMatrixLayoutDestroy(lb); cublasLtMatrixLayoutDestroy(lc);
        cublasLtMatmulDescDestroy(desc);
        cudaFree(a); cudaFree(b); cudaFree(c);
    }
    cudaFreeHost(pinned[0]);
    cudaFreeHost(pinned[1]);
    cudaFree(ws);
    cublasLtDestroy(lt);
    cudaStreamDestroy(stream);
    rss("after freeing it all");
}

/* ------------------------------------------------------------------------------------------------ attention */

__global__ void fill_f32(float *p, size_t n, uint32_t seed, float amp) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t x = (uint32_t)i * 2654435761u ^ seed;
        x ^= x >> 15; x *= 2246822519u; x ^= x >> 13; x *= 3266489917u; x ^= x >> 16;
        p[i] = amp * ((float)(x >> 8) / 8388608.0f - 1.0f);
    }
}
__global__ void fill_bf16(te_llama__bf16 *p, size_t n, uint32_t seed, float amp) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t x = (uint32_t)i * 2654435761u ^ seed;
        x ^= x >> 15; x *= 2246822519u; x ^= x >> 13; x *= 3266489917u; x ^= x >> 16;
        p[i] = __float2bfloat16(amp * ((float)(x >> 8) / 8388608.0f - 1.0f));
    }
}

static float bf2f(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* One attention problem: tokens of sequences, a cache of n_seq x max_len, and a fake context and model for the
   library's own launch code (te_llama__upload_batch, te_llama__att_choose, te_llama__attention). */
struct Problem {
    te_llama_model m;
    te_llama__cuda ctx;
    te_llama_kv_cache cache;
    te_llama__bf16 *kc, *vc;
    std::vector<int32_t> tok, pos, seq;
    int n, n_tiles, n_rows;
    long keys; /* sum over tokens of pos + 1 */
};

static void setup(Problem &P, int nh, int nkv, int hd, int n_seq, int max_len, const std::vector<int32_t> &pos,
                  const std::vector<int32_t> &seq, uint32_t seed) {
    memset(&P.m, 0, sizeof P.m);
    memset(&P.ctx, 0, sizeof P.ctx);
    memset(&P.cache, 0, sizeof P.cache);
    P.m.config.num_attention_heads = nh;
    P.m.config.num_key_value_heads = nkv;
    P.m.config.head_dim = hd;
    P.n = (int)pos.size();
    P.pos = pos;
    P.seq = seq;
    P.tok.assign(P.n, 0);
    P.keys = 0;
    for (int p : pos) P.keys += p + 1;
    const int q_dim = nh * hd, kv_dim = nkv * hd, cap = (P.n + 63) / 64 * 64;
    CK(cudaStreamCreate(&P.ctx.stream));
    CK(cudaDeviceGetAttribute(&P.ctx.n_sm, cudaDevAttrMultiProcessorCount, 0));
    CK(cudaDeviceGetAttribute(&P.ctx.pdl, cudaDevAttrComputeCapabilityMajor, 0));
    P.ctx.pdl = P.ctx.pdl >= 9;
    if (te_llama__attention_init(&P.ctx)) { fprintf(stderr, "attention init: %s\n", te_llama_last_error()); exit(1); }
    P.ctx.cap_tokens = cap;
    P.ctx.host_ints = (int32_t *)malloc(sizeof(int32_t) * 8 * cap);
    CK(cudaMalloc(&P.ctx.ints, sizeof(int32_t) * 8 * cap));
    CK(cudaMalloc(&P.ctx.qkv, sizeof(float) * (size_t)cap * (q_dim + 2 * kv_dim)));
    CK(cudaMalloc(&P.ctx.att, 2 * (size_t)cap * q_dim));
    P.ctx.part_floats = (size_t)P.n * nh * TE_LLAMA__DEC_MAX_SPLITS * (hd + 2);
    if (P.ctx.part_floats > ((size_t)64 << 20)) P.ctx.part_floats = (size_t)64 << 20;
    CK(cudaMalloc(&P.ctx.part, sizeof(float) * P.ctx.part_floats));
    P.ctx.part_counts = (size_t)P.n * nkv; /* the decode kernel's finished-split counters, zero between launches */
    CK(cudaMalloc(&P.ctx.part_count, sizeof(unsigned) * P.ctx.part_counts));
    CK(cudaMemset(P.ctx.part_count, 0, sizeof(unsigned) * P.ctx.part_counts));
    P.cache.n_layers = 1;
    P.cache.n_seq = n_seq;
    P.cache.max_len = max_len;
    P.cache.kv_dim = kv_dim;
    size_t kv_elems = (size_t)n_seq * max_len * kv_dim;
    CK(cudaMalloc(&P.kc, 2 * kv_elems));
    CK(cudaMalloc(&P.vc, 2 * kv_elems));
    fill_f32<<<1024, 256>>>(P.ctx.qkv, (size_t)cap * (q_dim + 2 * kv_dim), seed, 2.0f);
    fill_bf16<<<1024, 256>>>(P.kc, kv_elems, seed * 7 + 1, 1.5f);
    fill_bf16<<<1024, 256>>>(P.vc, kv_elems, seed * 13 + 2, 1.0f);
    CK(cudaGetLastError());
    te_llama_batch b;
    memset(&b, 0, sizeof b);
    b.n_tokens = P.n;
    b.tokens = P.tok.data();
    b.pos = P.pos.data();
    b.seq = P.seq.data();
    if (te_llama__upload_batch(&P.ctx, &b, &P.n_rows, &P.n_tiles)) { fprintf(stderr, "upload: %s\n", te_llama_last_error()); exit(1); }
    CK(cudaStreamSynchronize(P.ctx.stream));
}

static void release(Problem &P) {
    cudaFree(P.ctx.ints); cudaFree(P.ctx.qkv); cudaFree(P.ctx.att); cudaFree(P.ctx.part); cudaFree(P.ctx.part_count);
    cudaFree(P.kc); cudaFree(P.vc);
    free(P.ctx.host_ints);
    cudaStreamDestroy(P.ctx.stream);
}

/* The attention of P as te_llama__attention runs it with a; a.mode < 0: the mma.sync prefill kernel whatever the
   device (the one the library takes where the sm_90a wgmma kernel does not run). */
static te_llama_result launch(Problem &P, const te_llama__att &a) {
    const int nh = P.m.config.num_attention_heads, hd = P.m.config.head_dim;
    if (a.mode >= 0) return te_llama__attention(&P.m, &P.ctx, &a, P.kc, P.vc, P.cache.max_len, P.n);
    return te_llama__flash_prefill(&P.ctx, 0, P.ctx.qkv, (const int4 *)(P.ctx.ints + 4 * P.ctx.cap_tokens), P.n_tiles, P.kc, P.vc,
                                   P.ctx.att, NULL, nh, P.m.config.num_key_value_heads, hd, P.cache.max_len,
                                   1.0f / sqrtf((float)hd) * 1.4426950408889634f);
}

static std::vector<uint16_t> run_once(Problem &P, const te_llama__att &a) {
    const int q_dim = P.m.config.num_attention_heads * P.m.config.head_dim;
    CK(cudaMemsetAsync(P.ctx.att, 0xff, 2 * (size_t)P.n * q_dim, P.ctx.stream)); /* NaN poison: every element written? */
    if (launch(P, a)) { fprintf(stderr, "launch: %s\n", te_llama_last_error()); exit(1); }
    CK(cudaStreamSynchronize(P.ctx.stream));
    std::vector<uint16_t> out((size_t)P.n * q_dim);
    CK(cudaMemcpy(out.data(), P.ctx.att, 2 * out.size(), cudaMemcpyDeviceToHost));
    return out;
}

static double time_ms(Problem &P, const te_llama__att &a, int reps) {
    cudaEvent_t e0, e1;
    std::vector<float> t;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    for (int i = 0; i < reps + 2; i++) {
        CK(cudaEventRecord(e0, P.ctx.stream));
        launch(P, a);
        CK(cudaEventRecord(e1, P.ctx.stream));
        CK(cudaEventSynchronize(e1));
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        if (i >= 2) t.push_back(ms);
    }
    CK(cudaGetLastError());
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

static double rel_l2(const std::vector<uint16_t> &a, const std::vector<uint16_t> &ref) {
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); i++) {
        double x = bf2f(a[i]), y = bf2f(ref[i]);
        if (x != x) return INFINITY;
        num += (x - y) * (x - y);
        den += y * y;
    }
    return sqrt(num / (den > 0 ? den : 1e-30));
}

/* float64 attention of sampled (token, head) rows against out: the largest relative L2 error of a row. */
static double cpu_check(Problem &P, const std::vector<uint16_t> &out, int samples) {
    const int nh = P.m.config.num_attention_heads, nkv = P.m.config.num_key_value_heads, hd = P.m.config.head_dim;
    const int q_dim = nh * hd, kv_dim = nkv * hd, ld = q_dim + 2 * kv_dim;
    std::vector<float> q((size_t)P.n * ld);
    size_t kv_elems = (size_t)P.cache.n_seq * P.cache.max_len * kv_dim;
    std::vector<uint16_t> k(kv_elems), v(kv_elems);
    CK(cudaMemcpy(q.data(), P.ctx.qkv, sizeof(float) * q.size(), cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(k.data(), P.kc, 2 * kv_elems, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(v.data(), P.vc, 2 * kv_elems, cudaMemcpyDeviceToHost));
    double worst = 0;
    uint32_t x = 99991;
    for (int s = 0; s < samples; s++) {
        x = x * 1664525u + 1013904223u;
        int t = s == 0 ? P.n - 1 : (int)((x >> 8) % (uint32_t)P.n), h = (int)(x % (uint32_t)nh);
        if (s == 1) t = 0;
        const float *qr = &q[(size_t)t * ld + (size_t)h * hd];
        size_t base = (size_t)P.seq[t] * P.cache.max_len * kv_dim + (size_t)(h / (nh / nkv)) * hd;
        int nk = P.pos[t] + 1;
        std::vector<double> sc(nk), o(hd, 0.0);
        double mx = -INFINITY, sum = 0, num = 0, den = 0;
        for (int j = 0; j < nk; j++) {
            double d = 0;
            for (int i = 0; i < hd; i++) d += (double)qr[i] * bf2f(k[base + (size_t)j * kv_dim + i]);
            sc[j] = d / sqrt((double)hd);
            mx = std::max(mx, sc[j]);
        }
        for (int j = 0; j < nk; j++) { sc[j] = exp(sc[j] - mx); sum += sc[j]; }
        for (int j = 0; j < nk; j++)
            for (int i = 0; i < hd; i++) o[i] += sc[j] * bf2f(v[base + (size_t)j * kv_dim + i]);
        for (int i = 0; i < hd; i++) {
            double r = o[i] / sum, g = bf2f(out[(size_t)t * q_dim + (size_t)h * hd + i]);
            num += (g - r) * (g - r);
            den += r * r;
        }
        worst = std::max(worst, sqrt(num / den));
    }
    return worst;
}

static int failures = 0;

static void prefill_case(const char *name, int nh, int nkv, int hd, const std::vector<int> &lens, const std::vector<int> &pos0,
                         int reps_general) {
    std::vector<int32_t> pos, seq;
    int max_len = 0;
    for (size_t s = 0; s < lens.size(); s++) {
        for (int i = 0; i < lens[s]; i++) { pos.push_back(pos0[s] + i); seq.push_back((int32_t)(lens.size() - 1 - s)); }
        max_len = std::max(max_len, pos0[s] + lens[s]);
    }
    Problem P;
    setup(P, nh, nkv, hd, (int)lens.size(), max_len, pos, seq, 1234u + (uint32_t)hd);
    te_llama__att general, tiled, mma, dec;
    memset(&general, 0, sizeof general);
    general.mode = TE_LLAMA__ATT_GENERAL;
    tiled = te_llama__att_choose(&P.m, &P.ctx, &P.cache, P.n, P.n_tiles);
    mma = tiled;
    mma.mode = -1;
    dec.mode = TE_LLAMA__ATT_DECODE;
    dec.n_tiles = 0;
    dec.splits = 1;
    std::vector<uint16_t> ref = run_once(P, general), got = run_once(P, tiled), got_mma = run_once(P, mma), got_dec = run_once(P, dec);
    double e = rel_l2(got, ref), e_mma = rel_l2(got_mma, ref), e_pair = rel_l2(got, got_mma), e_dec = rel_l2(got_dec, ref);
    double c_gen = cpu_check(P, ref, 24), c_tiled = cpu_check(P, got, 24), c_mma = cpu_check(P, got_mma, 24), c_dec = cpu_check(P, got_dec, 24);
    double t_gen = time_ms(P, general, reps_general), t_tiled = time_ms(P, tiled, 20), t_mma = time_ms(P, mma, 20);
    double t_dec = time_ms(P, dec, reps_general);
    double flop = 4.0 * hd * nh * (double)P.keys; /* QK^T and PV, causal: 2 x 2 x hd per (query, visible key, head) */
    printf("prefill %-34s n %5d tiles %4d | general %8.3f ms | tiled (%s) %7.3f ms (%5.1f TFLOP/s) | mma.sync %7.3f ms (%5.1f "
           "TFLOP/s) | split-KV(S=1) %7.3f ms | rel L2 vs general: tiled %.2e, mma.sync %.2e, split %.2e; tiled vs mma.sync %.2e | "
           "worst row vs f64: general %.2e tiled %.2e mma.sync %.2e split %.2e\n",
           name, P.n, P.n_tiles, t_gen, P.ctx.wgmma ? "wgmma" : "mma.sync", t_tiled, flop / t_tiled / 1e9, t_mma, flop / t_mma / 1e9,
           t_dec, e, e_mma, e_dec, e_pair, c_gen, c_tiled, c_mma, c_dec);
    if (tiled.mode != TE_LLAMA__ATT_TILED || !(e < 1e-2) || !(e_mma < 1e-2) || !(e_dec < 1e-2) || !(c_tiled < 1e-2) ||
        !(c_mma < 1e-2) || !(c_dec < 1e-2) || !(e_pair < 1e-2)) {
        printf("FAIL prefill %s\n", name);
        failures++;
    }
    release(P);
}

static void decode_case(const char *name, int nh, int nkv, int hd, int n_seq, int max_len, int p) {
    std::vector<int32_t> pos, seq;
    for (int s = 0; s < n_seq; s++) { pos.push_back(p - 3 * s > 0 ? p - 3 * s : p); seq.push_back(s); }
    Problem P;
    setup(P, nh, nkv, hd, n_seq, max_len, pos, seq, 777u + (uint32_t)p);
    te_llama__att general, dec, one;
    memset(&general, 0, sizeof general);
    general.mode = TE_LLAMA__ATT_GENERAL;
    dec = te_llama__att_choose(&P.m, &P.ctx, &P.cache, P.n, 0);
    one = dec;
    one.splits = 1;
    std::vector<uint16_t> ref = run_once(P, general), got = run_once(P, dec), got1 = run_once(P, one);
    double e = rel_l2(got, ref), e1 = rel_l2(got1, ref), c = cpu_check(P, got, 16);
    double t_gen = time_ms(P, general, 50), t_dec = time_ms(P, dec, 50), t_one = time_ms(P, one, 50);
    double bytes = 0;
    for (int s = 0; s < n_seq; s++) bytes += 2.0 * (pos[s] + 1) * nkv * hd * 2;
    printf("decode  %-34s n %3d pos %5d splits %2d | general %8.1f us | split-KV %6.1f us (%6.0f GB/s of K+V) | S=1 %7.1f us | "
           "rel L2 vs general %.2e (S=1 %.2e) | worst row vs f64 %.2e\n",
           name, P.n, p, dec.splits, 1e3 * t_gen, 1e3 * t_dec, bytes / t_dec / 1e6, 1e3 * t_one, e, e1, c);
    if (dec.mode != TE_LLAMA__ATT_DECODE || !(e < 1e-2) || !(e1 < 1e-2) || !(c < 1e-2)) {
        printf("FAIL decode %s\n", name);
        failures++;
    }
    release(P);
}

static void load_progress(void *user, const te_llama_progress *p) {
    (void)p;
    if (!*(int *)user) rss("te_llama_load: at the first tensor");
    *(int *)user = 1;
}

/* RSS through the library: te_llama_load of a checkpoint on CUDA, then one forward of one token. */
static void load_probe(const char *dir) {
    te_llama_options o;
    te_llama_model *m = NULL;
    te_llama_kv_cache *cache = NULL;
    te_llama_batch b;
    int32_t tok = 1, pos = 0;
    int seen = 0;
    float *logits;
    memset(&o, 0, sizeof o);
    o.backend = TE_LLAMA_BACKEND_CUDA;
    o.progress = load_progress;
    o.user = &seen;
    rss("te_llama_load: before");
    if (te_llama_load(dir, &o, &m)) { printf("load failed: %s\n", te_llama_last_error()); return; }
    rss("te_llama_load: done");
    logits = (float *)malloc(sizeof(float) * (size_t)m->config.vocab_size);
    memset(&b, 0, sizeof b);
    b.n_tokens = 1;
    b.tokens = &tok;
    b.pos = &pos;
    if (!te_llama_kv_cache_create(m, 1, 16, &cache) && !te_llama_forward(m, cache, &b, logits)) rss("after a first forward");
    te_llama_kv_cache_free(cache);
    te_llama_free(m);
    free(logits);
    rss("after te_llama_free");
}

int main(int argc, char **argv) {
    if (argc > 2 && !strcmp(argv[1], "--load")) { load_probe(argv[2]); return 0; }
    rss_probe();
    if (argc > 1 && !strcmp(argv[1], "--rss-only")) return 0;
    /* Llama-3-8B: 32 heads, 8 kv heads, head_dim 128; Llama-3.2-1B: head_dim 64 */
    prefill_case("8b T4096 (the issue's target shape)", 32, 8, 128, {4096}, {0}, 1);
    prefill_case("8b T2048", 32, 8, 128, {2048}, {0}, 3);
    prefill_case("1b T2048", 32, 8, 64, {2048}, {0}, 3);
    prefill_case("8b 2 seqs 1500+548", 32, 8, 128, {1500, 548}, {0, 0}, 3);
    prefill_case("8b chunk 700 at pos 1000", 32, 8, 128, {700}, {1000}, 3);
    prefill_case("8b B8 T2048", 32, 8, 128, {2048, 2048, 2048, 2048, 2048, 2048, 2048, 2048}, {0, 0, 0, 0, 0, 0, 0, 0}, 1);
    prefill_case("hd128 GQA4 T1000 (test shape)", 4, 1, 128, {1000}, {0}, 3);
    prefill_case("hd128 MHA T2048 (one head a block)", 32, 32, 128, {2048}, {0}, 1);
    prefill_case("hd64 MHA 700 at pos 100", 8, 8, 64, {700}, {100}, 3);
    decode_case("8b pos 127", 32, 8, 128, 1, 8192, 127);
    decode_case("8b pos 255 (bench.py decode)", 32, 8, 128, 1, 257, 255);
    decode_case("8b pos 2047", 32, 8, 128, 1, 8192, 2047);
    decode_case("8b pos 8191", 32, 8, 128, 1, 8192, 8191);
    decode_case("8b B16 pos ~255", 32, 8, 128, 16, 257, 255);
    decode_case("1b pos 2047", 32, 8, 64, 1, 8192, 2047);
    decode_case("hd16 MQA-ish pos 1000", 4, 2, 16, 1, 2048, 1000);
    printf("attn_bench: %d failures\n", failures);
    return failures ? 1 : 0;
}
