/* fp8_gemm.cu - cuBLASLt's E4M3 x E4M3 GEMM, as te_llama's FP8 prefill calls it, checked and timed on its own:
   which output types and options the H200 accepts, whether the result is right, and how fast it runs at the
   Llama-3-8B prefill shapes against the BF16 GEMM.

   The layout is te_llama__gemm's "TN": W (m, k) row-major E4M3 (cuBLAS's A, transposed), X (n, k) row-major E4M3
   (B, not transposed), Y (n, m) row-major (C = D, m leading). Scales are device pointers (A_SCALE_POINTER,
   B_SCALE_POINTER: the dequantisation factors, multiplied into the product).

   Build and run (no library needed):
     nvcc -O2 -std=c++17 -arch=sm_90a bench/fp8_gemm.cu -o build/fp8_gemm -lcublasLt && build/fp8_gemm */
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vector>

#define CU(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { printf("%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e_)); exit(1); } } while (0)

static cublasLtHandle_t lt;
static void *workspace;
static int SCALE_STRIDE = 4; /* floats between the scale values in device memory (FP8_SCALE_STRIDE) */
static void *D8; /* the E4M3 output of the d_fp8 variant (contents unchecked: the status is what is asked) */
static const size_t WS = 32u << 20;

struct variant {
    const char *name;
    cudaDataType_t ab;    /* CUDA_R_8F_E4M3 or CUDA_R_16BF */
    cudaDataType_t out;   /* C and D */
    float beta;
    int8_t fast;
    int amax;             /* AMAX_D_POINTER */
    int d_fp8;            /* D E4M3 (C stays bf16), D_SCALE_POINTER = 1: NVIDIA's LtFp8Matmul sample's setup */
};

/* Run one GEMM; returns 0 and the time per call (ms, when reps > 0), or prints the failing status. */
static int gemm(const variant &v, int m, int n, int k, const void *W, const void *X, void *Y, const float *sw, const float *sx,
                float *amax, int reps, float *ms) {
    cublasLtMatmulDesc_t desc = NULL;
    cublasLtMatrixLayout_t a = NULL, b = NULL, c = NULL, d = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t res;
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    size_t ws = WS;
    int found = 0, rc = 1;
    const float alpha = 1.0f;
    cublasStatus_t s;
    cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
    cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
    if (v.ab == CUDA_R_8F_E4M3) {
        cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sw, sizeof sw);
        cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sx, sizeof sx);
        cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &v.fast, sizeof v.fast);
        if (v.amax) cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_AMAX_D_POINTER, &amax, sizeof amax);
        if (v.d_fp8) {
            const float *one = sw; /* any device float works as the D scale for the status check */
            cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_C_SCALE_POINTER, &one, sizeof one);
            cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_D_SCALE_POINTER, &one, sizeof one);
        }
    }
    cublasLtMatrixLayoutCreate(&a, v.ab, (uint64_t)k, (uint64_t)m, (int64_t)k);
    cublasLtMatrixLayoutCreate(&b, v.ab, (uint64_t)k, (uint64_t)n, (int64_t)k);
    cublasLtMatrixLayoutCreate(&c, v.out, (uint64_t)m, (uint64_t)n, (int64_t)m);
    cublasLtMatrixLayoutCreate(&d, v.d_fp8 ? CUDA_R_8F_E4M3 : v.out, (uint64_t)m, (uint64_t)n, (int64_t)m);
    cublasLtMatmulPreferenceCreate(&pref);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    s = cublasLtMatmulAlgoGetHeuristic(lt, desc, a, b, c, d, pref, 1, &res, &found);
    if (s != CUBLAS_STATUS_SUCCESS || found < 1) {
        printf("  %-28s %5d x %5d x %5d: heuristic status %d, %d found\n", v.name, m, n, k, (int)s, found);
        goto out;
    }
    s = cublasLtMatmul(lt, desc, &alpha, W, a, X, b, &v.beta, Y, c, v.d_fp8 ? D8 : Y, d, &res.algo, workspace, WS, 0);
    if (s != CUBLAS_STATUS_SUCCESS) {
        printf("  %-28s %5d x %5d x %5d: matmul status %d\n", v.name, m, n, k, (int)s);
        goto out;
    }
    CU(cudaDeviceSynchronize());
    if (reps > 0) {
        cudaEvent_t e0, e1;
        cudaEventCreate(&e0);
        cudaEventCreate(&e1);
        cudaEventRecord(e0);
        for (int i = 0; i < reps; i++) cublasLtMatmul(lt, desc, &alpha, W, a, X, b, &v.beta, Y, c, v.d_fp8 ? D8 : Y, d, &res.algo, workspace, WS, 0);
        cudaEventRecord(e1);
        CU(cudaEventSynchronize(e1));
        cudaEventElapsedTime(ms, e0, e1);
        *ms /= reps;
        cudaEventDestroy(e0);
        cudaEventDestroy(e1);
    }
    rc = 0;
out:
    cublasLtMatmulPreferenceDestroy(pref);
    cublasLtMatrixLayoutDestroy(a);
    cublasLtMatrixLayoutDestroy(b);
    cublasLtMatrixLayoutDestroy(c);
    cublasLtMatrixLayoutDestroy(d);
    cublasLtMatmulDescDestroy(desc);
    return rc;
}

static float e4m3_to_float(uint8_t b) {
    __nv_fp8_e4m3 f;
    f.__x = b;
    return (float)f;
}

/* Small shapes against a double-precision product of the same E4M3 values (and the same C when beta = 1). */
static void check(const variant &v, int m, int n, int k) {
    std::vector<uint8_t> w((size_t)m * k), x((size_t)n * k);
    std::vector<double> ref((size_t)n * m);
    std::vector<float> c0((size_t)n * m), y((size_t)n * m);
    const float sw = 0.5f, sx = 0.25f;
    uint32_t r = 12345;
    for (auto &b : w) { r = r * 1664525u + 1013904223u; b = (uint8_t)(r >> 24) & 0x77; } /* finite, |v| <= 240 */
    for (auto &b : x) { r = r * 1664525u + 1013904223u; b = (uint8_t)(r >> 24) & 0x77; }
    for (size_t i = 0; i < c0.size(); i++) c0[i] = (float)((i * 7) % 13) - 6.0f;
    for (int t = 0; t < n; t++)
        for (int j = 0; j < m; j++) {
            double s = 0;
            for (int i = 0; i < k; i++) s += (double)e4m3_to_float(w[(size_t)j * k + i]) * e4m3_to_float(x[(size_t)t * k + i]);
            ref[(size_t)t * m + j] = s * sw * sx + v.beta * c0[(size_t)t * m + j];
        }
    void *dw, *dx, *dy;
    float *ds, *damax, amax = -1;
    const size_t esz = v.out == CUDA_R_32F ? 4 : 2;
    CU(cudaMalloc(&dw, w.size()));
    CU(cudaMalloc(&dx, x.size()));
    CU(cudaMalloc(&dy, y.size() * esz));
    CU(cudaMalloc((void **)&ds, 3 * 64 * sizeof(float)));
    damax = ds + 2 * SCALE_STRIDE;
    const float sc[3] = {sw, sx, -1.0f};
    for (int i = 0; i < 3; i++) CU(cudaMemcpy(ds + i * SCALE_STRIDE, sc + i, sizeof(float), cudaMemcpyHostToDevice));
    CU(cudaMemcpy(dw, w.data(), w.size(), cudaMemcpyHostToDevice));
    CU(cudaMemcpy(dx, x.data(), x.size(), cudaMemcpyHostToDevice));
    if (esz == 4) CU(cudaMemcpy(dy, c0.data(), c0.size() * 4, cudaMemcpyHostToDevice));
    else {
        std::vector<__nv_bfloat16> cb(c0.size());
        for (size_t i = 0; i < c0.size(); i++) cb[i] = __float2bfloat16(c0[i]);
        CU(cudaMemcpy(dy, cb.data(), cb.size() * 2, cudaMemcpyHostToDevice));
    }
    float ms;
    if (gemm(v, m, n, k, dw, dx, dy, ds, ds + SCALE_STRIDE, damax, 0, &ms) == 0) {
        if (esz == 4) CU(cudaMemcpy(y.data(), dy, y.size() * 4, cudaMemcpyDeviceToHost));
        else {
            std::vector<__nv_bfloat16> yb(y.size());
            CU(cudaMemcpy(yb.data(), dy, yb.size() * 2, cudaMemcpyDeviceToHost));
            for (size_t i = 0; i < y.size(); i++) y[i] = __bfloat162float(yb[i]);
        }
        CU(cudaMemcpy(&amax, damax, 4, cudaMemcpyDeviceToHost));
        double num = 0, den = 0, mx = 0;
        for (size_t i = 0; i < y.size(); i++) {
            num += (y[i] - ref[i]) * (y[i] - ref[i]);
            den += ref[i] * ref[i];
            mx = fmax(mx, fabs((double)y[i]));
        }
        printf("  %-28s %5d x %5d x %5d: rel L2 %.3g%s", v.name, m, n, k, sqrt(num / den), sqrt(num / den) < 1e-2 ? " ok" : " WRONG");
        if (v.amax) printf(", amax %g (max |y| %g)", amax, mx);
        printf("\n");
    }
    cudaFree(dw); cudaFree(dx); cudaFree(dy); cudaFree(ds);
}

int main(void) {
    cudaDeviceProp prop;
    CU(cudaGetDeviceProperties(&prop, 0));
    printf("%s, cuBLASLt %zu\n", prop.name, cublasLtGetVersion());
    if (cublasLtCreate(&lt) != CUBLAS_STATUS_SUCCESS) { printf("cublasLtCreate failed\n"); return 1; }
    CU(cudaMalloc(&workspace, WS));
    CU(cudaMalloc(&D8, (size_t)6144 * 16384));
    const variant E_SAMPLE = {"e4m3 -> e4m3 (C bf16), sample", CUDA_R_8F_E4M3, CUDA_R_16BF, 0.0f, 0, 1, 1};
    const variant E_F32 = {"e4m3 -> fp32", CUDA_R_8F_E4M3, CUDA_R_32F, 0.0f, 0, 0};
    const variant E_F32_ACC = {"e4m3 -> fp32, beta 1", CUDA_R_8F_E4M3, CUDA_R_32F, 1.0f, 0, 0};
    const variant E_F32_FAST = {"e4m3 -> fp32, fast accum", CUDA_R_8F_E4M3, CUDA_R_32F, 1.0f, 1, 0};
    const variant E_BF16 = {"e4m3 -> bf16", CUDA_R_8F_E4M3, CUDA_R_16BF, 0.0f, 0, 0};
    const variant E_BF16_FAST = {"e4m3 -> bf16, fast accum", CUDA_R_8F_E4M3, CUDA_R_16BF, 0.0f, 1, 0};
    const variant E_BF16_AMAX = {"e4m3 -> bf16, amax", CUDA_R_8F_E4M3, CUDA_R_16BF, 0.0f, 1, 1};
    const variant B_F32 = {"bf16 -> fp32 (reference)", CUDA_R_16BF, CUDA_R_32F, 1.0f, 0, 0};
    const variant B_BF16 = {"bf16 -> bf16 (reference)", CUDA_R_16BF, CUDA_R_16BF, 0.0f, 0, 0};
    const variant checks[] = {E_SAMPLE, E_F32, E_F32_ACC, E_F32_FAST, E_BF16, E_BF16_FAST, E_BF16_AMAX};
    printf("correctness (E4M3 values exact, scales 0.5 and 0.25):\n");
    if (getenv("FP8_SCALE_STRIDE")) SCALE_STRIDE = atoi(getenv("FP8_SCALE_STRIDE"));
    printf("scale pointers %d bytes apart\n", 4 * SCALE_STRIDE);
    if (getenv("FP8_GEMM_ONE")) { /* one small case per variant, e.g. under CUBLASLT_LOG_LEVEL=5 */
        for (const variant &v : checks) check(v, 256, 64, 128);
        return 0;
    }
    for (const variant &v : checks) {
        check(v, 256, 64, 128);
        check(v, 256, 100, 128);  /* tokens not a multiple of 16 */
        check(v, 256, 1, 128);
        check(v, 6144, 48, 4096);
    }
    /* speed: Llama-3-8B prefill shapes at 16384 tokens (8 x 2048), cuBLASLt's first heuristic choice */
    static const struct { const char *name; int m, k; } shapes[] = {{"qkv", 6144, 4096}, {"proj", 4096, 4096}, {"fc1", 28672, 4096}, {"fc2", 4096, 14336}};
    const int n = 16384;
    size_t wmax = (size_t)28672 * 4096 > (size_t)4096 * 14336 ? (size_t)28672 * 4096 : (size_t)4096 * 14336;
    void *dw, *dx, *dy;
    float *ds;
    CU(cudaMalloc(&dw, wmax * 2));
    CU(cudaMalloc(&dx, (size_t)n * 14336 * 2));
    CU(cudaMalloc(&dy, (size_t)n * 28672 * 4));
    CU(cudaMalloc((void **)&ds, 3 * 64 * sizeof(float)));
    CU(cudaMemset(dw, 0x22, wmax * 2));
    CU(cudaMemset(dx, 0x22, (size_t)n * 14336 * 2));
    const float one = 1.0f;
    for (int i = 0; i < 2; i++) CU(cudaMemcpy(ds + i * SCALE_STRIDE, &one, sizeof one, cudaMemcpyHostToDevice));
    printf("\nspeed, %d tokens (TFLOP/s, 20 calls each):\n| gemm | bf16->fp32 | bf16->bf16 | e4m3->fp32 | e4m3->fp32 fast | e4m3->bf16 | e4m3->bf16 fast |\n| --- | --- | --- | --- | --- | --- | --- |\n", n);
    const variant speed[] = {B_F32, B_BF16, E_F32_ACC, E_F32_FAST, E_BF16, E_BF16_FAST};
    double tot[6] = {0};
    for (const auto &s : shapes) {
        printf("| %s %dx%d |", s.name, s.m, s.k);
        for (int i = 0; i < 6; i++) {
            float ms = 0;
            if (gemm(speed[i], s.m, n, s.k, dw, dx, dy, ds, ds + SCALE_STRIDE, ds + 2 * SCALE_STRIDE, 20, &ms) == 0) {
                printf(" %.0f |", 2.0 * s.m * n * s.k / (ms * 1e-3) / 1e12);
                tot[i] += ms;
            } else printf(" - |");
        }
        printf("\n");
    }
    printf("| layer total ms |");
    for (int i = 0; i < 6; i++) printf(" %.2f |", tot[i]);
    printf("\n");
    return 0;
}
