/* te_llama_kernels.cu - the CUDA backend of te_llama.h: device memory, the loader's pinned staging, the KV cache,
   the TE decoder forward pass, generation with sampling on the device, and training (the training section: the
   forward keeping activations, the loss, the backward of every op and a fused AdamW).

   BUILD
     nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -gencode arch=compute_80,code=compute_80 \
          -c te_llama_kernels.cu
   and link the object beside the C file that defines TE_LLAMA_IMPLEMENTATION and TE_LLAMA_CUDA, with
   -lcublasLt -lcudart (and -lstdc++ when the final link is done by a C compiler).

   WHAT RUNS HERE, per forward call of n tokens (every layer must be of kind "te", parameters BF16 on the device)
     embed -> rope table -> per layer: rmsnorm -> QKV GEMM -> rope + KV store -> attention -> proj GEMM (+= x)
     -> rmsnorm -> fc1 GEMM -> SwiGLU -> fc2 GEMM (+= x) -> final rmsnorm on the rows that want logits -> lm_head GEMM.
   GEMMs are cuBLASLt, y = x @ W^T with W the transposed operand ("TN"), bf16 inputs, fp32 accumulation; the
   residual adds are the GEMMs' own epilogue (beta = 1 on the fp32 residual stream). For up to 8 tokens (decode)
   QKV and proj run through te_llama__gemv_kernel, a weight-streaming GEMV on the tensor cores whose QKV epilogue
   applies RoPE and stores k and v in the cache (no separate kernel); for one token fc1 (SwiGLU in its epilogue)
   and fc2 too, and the two RMSNorms fold into the GEMVs around them (proj and fc2 write bf16(w x) and the sums of
   squares, QKV and fc1 scale their sums by 1 / rms: no norm kernel but layer 0's and the final one). With FP8 on
   (see the FP8 section at the end) every decoder GEMM of up to 16 tokens runs through the same GEMV on E4M3
   weights and inputs.
   Attention, chosen per forward call from the batch's host arrays (te_llama__att_choose):
     - prefill (runs of consecutive positions of one sequence averaging >= 16 tokens a 64-row tile, head_dim 64 or
       128): FlashAttention on the tensor cores, te_llama__flash_wgmma_kernel (Hopper's warpgroup MMA, when the
       device runs this build's sm_90a code) else te_llama__flash_prefill_kernel (mma.sync bf16);
     - otherwise, up to 8 query heads a kv head and head_dim <= 256 (decode steps, interleaved batches):
       split-KV (flash-decoding) with one block per (token, split, kv head): te_llama__decode_attention2_kernel
       (head_dim 32/64/128/256 and 1/2/4/8 query heads a kv head; a round of keys in flight a block, its last
       split merges the others), else te_llama__decode_attention_kernel then te_llama__decode_combine_kernel;
       the splits' extent is computed on the device from the positions, so the captured decode graph stays valid
       at every position;
     - otherwise te_llama__attention_kernel, one block per (token, query head) on the CUDA cores.

   NUMERICS (what differs from the fp32 CPU reference, te_llama__cpu_layer)
     - The residual stream x is fp32, as are the QKV GEMM output, RoPE and the softmax statistics. fc1's output
       (gate and up) is bf16, as TE and HF have it.
     - Every GEMM input is bf16: the normed activations, the attention output and the SwiGLU output are rounded
       to bf16 before their GEMM (the CPU keeps them fp32). Keys and values are cached in bf16.
     - A one-token bf16 forward (a decode step of one sequence) rounds its normed activations differently: bf16(w x)
       goes into the GEMM and its fp32 sums are multiplied by 1 / rms(x) (the same relative rounding error at
       another point; tests/test_cuda.c emulates both).
     - cos and sin of the rotary angle are computed as the CPU does (float32 angle, double cos/sin, then float).
     - The tensor-core prefill attention rounds q (after RoPE, before the 1/sqrt(hd) scale) and the softmax
       probabilities to bf16 for its two products (fp32 accumulation, fp32 softmax statistics and row sums); the
       other two attention kernels keep q and the probabilities in fp32.
     Expected relative L2 error of the logits against the CPU over the same bf16 weights: a few 1e-3.

   SAMPLING (te_llama_cuda_generate, te_llama_cuda_generate_batch)
     Greedy: te_llama__argmax_kernel, up to 64 blocks a row, ties to the lowest id as the CPU. Otherwise one block
     a sequence draws from softmax(logits / T) restricted by top_k then top_p, found by bisection on the logits'
     bit patterns (no sort), with the library's xorshift64* generator kept in device memory, one state a
     sequence. The distribution is the CPU's; the draw is not bit-identical to te_llama_sample's (that walks tokens
     in probability order, this one in id order), and ties at the top_k / top_p boundary keep every tied token.
     Only the sampled ids cross to the host per step.
     The decode step (forward of one token a sequence, lm_head, sampling, the copy of the ids) is captured once in a
     CUDA graph and replayed: tokens and positions are read from device memory, which the sampling kernel advances.
     A batch keeps its finished sequences in the step (their ids are dropped) so that the graph keeps its shape. If
     the capture fails, the steps run as plain launches.

   MEMORY
     Model parameters are allocated by the library through te_llama_cuda_malloc. The device context holds a cuBLASLt
     workspace (32 MiB), per-token scratch grown to the largest batch seen (~ 4 (hidden + q_dim + 2 kv_dim)
     + 2 (hidden + q_dim + 3 I) + 32 bytes a token), the split-KV attention's partial results (tokens x heads x
     splits x (head_dim + 2) fp32, for batches small enough to split: at most ~ 2 x SMs x G (head_dim + 2) x 4
     bytes, 0.5 MiB for Llama-3-8B) and a logits buffer of up to 128 rows x vocab fp32 (plus 516 bytes a row for
     the greedy argmax). The KV cache is two
     bf16 buffers of n_layers x n_seq x max_len x kv_dim. A failed allocation frees what the call took and returns
     TE_LLAMA_ERR_CUDA_OOM. The loader's pinned staging buffers are freed at the first forward call.
*/
#ifdef TE_LLAMA_IMPLEMENTATION
#error "compile te_llama_kernels.cu without TE_LLAMA_IMPLEMENTATION: the implementation lives in one C file"
#endif
#include "te_llama.h"
#ifndef TE_LLAMA_H
#error "te_llama_kernels.cu needs te_llama.h"
#endif
#ifdef TE_LLAMA_STATIC
#error "the CUDA backend links against the implementation: build without TE_LLAMA_STATIC"
#endif

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <utility>

typedef __nv_bfloat16 te_llama__bf16;

/* ============================================================================================ errors */

/* A CUDA runtime error as a result code, with the call, file and line in the message. */
static te_llama_result te_llama__cuda_error(cudaError_t e, const char *what, const char *file, int line) {
    char msg[768];
    te_llama_result r = e == cudaErrorMemoryAllocation ? TE_LLAMA_ERR_CUDA_OOM : TE_LLAMA_ERR_CUDA;
    (void)cudaGetLastError(); /* clear a non-sticky error so that the next check does not see it again */
    snprintf(msg, sizeof msg, "%s:%d: %s: %s (%s)", file, line, what, cudaGetErrorName(e), cudaGetErrorString(e));
    return te_llama_set_error(r, msg);
}

static te_llama_result te_llama__cublas_error(cublasStatus_t s, const char *what, const char *file, int line) {
    char msg[768];
    te_llama_result r = s == CUBLAS_STATUS_ALLOC_FAILED ? TE_LLAMA_ERR_CUDA_OOM : TE_LLAMA_ERR_CUDA;
    snprintf(msg, sizeof msg, "%s:%d: %s: cuBLASLt %s (%s)", file, line, what, cublasLtGetStatusName(s),
             cublasLtGetStatusString(s));
    return te_llama_set_error(r, msg);
}

static te_llama_result te_llama__cuda_fail(te_llama_result r, const char *file, int line, const char *what) {
    char msg[768];
    snprintf(msg, sizeof msg, "%s:%d: %s", file, line, what);
    return te_llama_set_error(r, msg);
}

#define TE_LLAMA__CU(call)                                                                                    \
    do {                                                                                                      \
        cudaError_t e_ = (call);                                                                              \
        if (e_ != cudaSuccess) return te_llama__cuda_error(e_, #call, __FILE__, __LINE__);                    \
    } while (0)
/* The same, for functions that clean up at a label: sets r and jumps. */
#define TE_LLAMA__CU_GOTO(call, label)                                                                        \
    do {                                                                                                      \
        cudaError_t e_ = (call);                                                                              \
        if (e_ != cudaSuccess) { r = te_llama__cuda_error(e_, #call, __FILE__, __LINE__); goto label; }       \
    } while (0)
#define TE_LLAMA__LT(call)                                                                                    \
    do {                                                                                                      \
        cublasStatus_t s_ = (call);                                                                           \
        if (s_ != CUBLAS_STATUS_SUCCESS) return te_llama__cublas_error(s_, #call, __FILE__, __LINE__);        \
    } while (0)
/* After a kernel launch: a bad configuration or a missing kernel image shows here. */
#define TE_LLAMA__LAUNCHED(name)                                                                              \
    do {                                                                                                      \
        cudaError_t e_ = cudaGetLastError();                                                                  \
        if (e_ != cudaSuccess) return te_llama__cuda_error(e_, "launch of the " #name " kernel", __FILE__, __LINE__); \
    } while (0)
#define TE_LLAMA__FAIL(r, what) te_llama__cuda_fail((r), __FILE__, __LINE__, (what))

/* ====================================================================================== device context */

#define TE_LLAMA__MAX_STAGING 4
#define TE_LLAMA__MAX_PLANS 64
#define TE_LLAMA__WORKSPACE_BYTES ((size_t)32 << 20)
#define TE_LLAMA__LOGIT_ROWS 128 /* lm_head runs over at most this many rows at a time */
#define TE_LLAMA__ALIGN 256

/* One GEMM shape: its descriptors and the algorithm the heuristic chose. */
typedef struct te_llama__plan {
    int m, n, k, accumulate;
    int fp8;             /* 0: bf16 operands; 1: E4M3 (te_llama__gemm_fp8); 2: E4M3 with fast accumulation */
    int ta, tb;          /* A and B transposed (the forward's "TN": ta 1, tb 0); the training backward adds NN and NT */
    cudaDataType_t ctype;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algo;
} te_llama__plan;

/* te_llama_cuda_test_fp8_fused */
enum { TE_LLAMA__FP8_UNFUSED_ATTENTION = 1, TE_LLAMA__FP8_UNFUSED_NORMS = 2, TE_LLAMA__FP8_UNFUSED_AMAX_PARTS = 4 };

typedef struct te_llama__cuda {
    te_llama_allocator allocator;
    int device;
    cudaStream_t stream; /* a blocking stream: ordered after the legacy-stream memsets and copies of the loader */
    cudaStream_t side;   /* a decode step's FP8 scale update, beside its lm_head (te_llama__fp8_end_step_beside) */
    cudaEvent_t fp8_fork, fp8_updated;
    cublasLtHandle_t lt;
    void *workspace;     /* (TE_LLAMA__WORKSPACE_BYTES) cuBLASLt */
    /* the loader's pinned staging buffers, one event each marking the end of the last copy out of it */
    void *staging[TE_LLAMA__MAX_STAGING];
    cudaEvent_t staged[TE_LLAMA__MAX_STAGING];
    int n_staging;
    float *inv_freq;     /* (head_dim / 2) device copy of model->rope_inv_freq, made at the first forward */
    /* per-token scratch for up to cap_tokens tokens, one allocation */
    int cap_tokens;
    void *scratch;
    size_t scratch_bytes;
    float *x;            /* (cap, hidden) residual stream */
    te_llama__bf16 *xn;  /* (cap, hidden) normed input of a GEMM */
    float *qkv;          /* (cap, q_dim + 2 kv_dim) */
    float *rope;         /* (cap, head_dim): cos (head_dim / 2) then sin (head_dim / 2) per token */
    te_llama__bf16 *att; /* (cap, q_dim) attention output */
    te_llama__bf16 *mlp; /* (cap, 2 I) fc1 output: gate then up */
    te_llama__bf16 *act; /* (cap, I) silu(gate) * up */
    float *norm_ss;      /* (hidden / 16) a one-token step's sums of squares of x, a float per GEMV block (fold_norm) */
    int32_t *ints;       /* (8, cap): tokens, positions, sequences, rows wanting logits, then the prefill tile table
                            (4 ints a tile, at most cap tiles) */
    int32_t *host_ints;  /* (8, cap) host copy being uploaded */
    int n_sm;            /* multiprocessors: sizes the decode attention's splits */
    float *part;         /* split-KV partial results of the decode attention */
    size_t part_floats;
    unsigned *part_count; /* (part_counts) the decode attention's finished splits per (token, kv head); kept 0 between launches */
    size_t part_counts;
    int cap_rows;
    float *logits;       /* (cap_rows, vocab); the greedy argmax's buffers follow it in the same allocation
                            (te_llama__ensure_rows, te_llama__rows_bytes): */
    float *argmax_v;     /* (cap_rows, TE_LLAMA__ARGMAX_SLICES) each slice's maximum */
    int *argmax_i;       /* (cap_rows, TE_LLAMA__ARGMAX_SLICES) its id */
    unsigned *argmax_count; /* (cap_rows) slices finished; kept 0 between launches */
    /* generation */
    int cap_seqs;            /* sequences rng and pinned_token hold; grown by te_llama__ensure_seqs */
    unsigned long long *rng; /* (cap_seqs) device: each sequence's sampler state */
    int32_t *pinned_token;   /* (3, cap_seqs) pinned host: the ids a prefill sampled, then a decode step's in row
                                1 + (step & 1) (two steps may be in flight: te_llama__decoder), which the samplers
                                write through the host pointer (unified addressing maps cudaHostAlloc memory) */
    te_llama__plan plans[TE_LLAMA__MAX_PLANS];
    int n_plans, next_plan;
    void *fp8;               /* te_llama__fp8_dev (FP8 section) while FP8 is on, else NULL; model->fp8 is the same */
    int fp8_gemm_unsupported; /* cuBLASLt had no FP8 algorithm: longer inputs take the E4M3 GEMV too */
    int fp8_unfused;         /* tests only: the FP8 forward's fusions left out (TE_LLAMA__FP8_UNFUSED_*) */
    void *train;             /* te_llama__tact (training section): activations of training forwards, else NULL */
    int pdl;                 /* sm_90 or newer: decode kernels launch with programmatic dependent launch */
    int wgmma;               /* the device runs this build's sm_90a code: prefill attention on wgmma */
    int gemv_occ[14][33];    /* blocks an SM of each GEMV kernel by its warps a block (0: not asked yet); rows 12, 13:
                                the E4M3 ROPE_KV and SWIGLU kernels with a folded norm's stages */
} te_llama__cuda;

/* kernel<<<grid, block, smem, ctx->stream>>>(args), allowed to overlap the previous kernel's tail when ctx->pdl
   (te_llama__pdl_start says what the kernel must do for that); with cluster_y > 1 (sm_90 code only) the blocks
   form thread-block clusters of 1 x cluster_y x 1, which must divide the grid. Check with TE_LLAMA__LAUNCHED. */
template <typename... P, typename... A>
static void te_llama__launch_cluster(te_llama__cuda *ctx, unsigned cluster_y, void (*kernel)(P...), dim3 grid, dim3 block,
                                     size_t smem, A &&...args) {
    cudaLaunchConfig_t cfg;
    cudaLaunchAttribute attr[2];
    unsigned n = 0;
    memset(&cfg, 0, sizeof cfg);
    memset(attr, 0, sizeof attr);
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = ctx->stream;
    if (ctx->pdl) {
        attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[n++].val.programmaticStreamSerializationAllowed = 1;
    }
    if (cluster_y > 1) {
        attr[n].id = cudaLaunchAttributeClusterDimension;
        attr[n].val.clusterDim.x = 1;
        attr[n].val.clusterDim.y = cluster_y;
        attr[n++].val.clusterDim.z = 1;
    }
    cfg.attrs = attr;
    cfg.numAttrs = n;
    (void)cudaLaunchKernelEx(&cfg, kernel, std::forward<A>(args)...);
}
template <typename... P, typename... A>
static void te_llama__launch(te_llama__cuda *ctx, void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, A &&...args) {
    te_llama__launch_cluster(ctx, 1, kernel, grid, block, smem, std::forward<A>(args)...);
}

/* The FP8 section's pieces (defined and documented at the end of this file), declared here for the forward. */
static void te_llama__fp8_release(te_llama_model *m, te_llama__cuda *ctx);
static void te_llama__tact_free(te_llama__cuda *ctx); /* the training section's activations */
static inline int te_llama__fp8_calibrating(const te_llama__cuda *ctx);
static inline int te_llama__fp8_fast_accum(const te_llama__cuda *ctx);
static inline int te_llama__fp8_layer(const te_llama__cuda *ctx, int l);
static inline uint8_t *te_llama__fp8_weight(const te_llama__cuda *ctx, int l, int g);
static inline float *te_llama__fp8_scale(const te_llama__cuda *ctx, int l, int g, int t);
static inline float *te_llama__fp8_scale_inv(const te_llama__cuda *ctx, int l, int g, int t);
static inline float *te_llama__fp8_lt_scale_inv(const te_llama__cuda *ctx, int l, int g, int t);
static inline float *te_llama__fp8_amax(const te_llama__cuda *ctx, int l, int g, int t);
static inline float *te_llama__fp8_act_amax_part(const te_llama__cuda *ctx, int l);
static te_llama_result te_llama__rmsnorm_fp8(te_llama__cuda *ctx, const float *x, const int32_t *rows, const te_llama__bf16 *w,
                                             uint8_t *out, te_llama__bf16 *out_bf16, int n, int h, float eps,
                                             const float *scale, float *amax);
template <typename T>
static te_llama_result te_llama__swiglu_fp8(te_llama__cuda *ctx, const T *mlp, uint8_t *out, te_llama__bf16 *out_bf16, int n,
                                            int I, const float *scale, float *amax);
static te_llama_result te_llama__cast_fp8(te_llama__cuda *ctx, const te_llama__bf16 *in, uint8_t *out, size_t n, const float *scale,
                                          float *amax);
template <typename T> static te_llama_result te_llama__amax(te_llama__cuda *ctx, const T *in, size_t n, float *amax);
__device__ uint8_t te_llama__e4m3_scaled(float v, float scale);
__device__ void te_llama__amax_commit(float mx, float *red, float *amax);
static te_llama_result te_llama__fp8_end_step_dev(te_llama__cuda *ctx);
static size_t te_llama__fp8_device_bytes(const te_llama__cuda *ctx);

typedef struct te_llama__kv {
    te_llama__bf16 *k, *v; /* (n_layers, n_seq, max_len, kv_dim) each */
} te_llama__kv;

static void *te_llama__host_alloc(const te_llama_allocator *a, size_t n) {
    return (a && a->alloc) ? a->alloc(a->user, n ? n : 1) : malloc(n ? n : 1);
}
static void te_llama__host_free(const te_llama_allocator *a, void *p) {
    if (!p) return;
    if (a && a->free) a->free(a->user, p);
    else free(p);
}

/* ============================================================================================ kernels */

__device__ __forceinline__ float te_llama__warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float te_llama__warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ int te_llama__warp_isum(int v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
/* Block-wide reductions (blockDim.x a multiple of 32): every thread gets the result. red: 32 slots of shared
   memory; the leading barrier lets consecutive calls reuse it. Deterministic: a fixed order of additions. */
__device__ float te_llama__block_sum(float v, float *red) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = te_llama__warp_sum(v);
    __syncthreads();
    if (lane == 0) red[w] = v;
    __syncthreads();
    return te_llama__warp_sum(lane < nw ? red[lane] : 0.0f);
}
__device__ float te_llama__block_max(float v, float *red) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = te_llama__warp_max(v);
    __syncthreads();
    if (lane == 0) red[w] = v;
    __syncthreads();
    return te_llama__warp_max(lane < nw ? red[lane] : -INFINITY);
}
__device__ int te_llama__block_isum(int v, int *red) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = te_llama__warp_isum(v);
    __syncthreads();
    if (lane == 0) red[w] = v;
    __syncthreads();
    return te_llama__warp_isum(lane < nw ? red[lane] : 0);
}

/* Programmatic dependent launch (Hopper): a kernel launched by te_llama__launch may start while the kernel
   before it in the stream is still running. It calls te_llama__pdl_start (the GEMV: te_llama__pdl_start_early) in
   every block before reading anything earlier kernels write or writing anything they read (work before it: the
   GEMV loads weights, which no forward writes; a decode step's attention its earlier keys, and the FP8 scale update
   its history, which only earlier forwards wrote). The wait returns once the previous kernel has
   finished and its writes are visible, which chains the guarantee through the stream; the trigger that follows
   lets the next kernel start launching, so two grids share the SMs (three around a GEMV). Both instructions are
   no-ops for a normal launch and before sm_90. */
__device__ __forceinline__ void te_llama__pdl_start() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
/* The GEMV's order: trigger, then wait. Its successor may then launch while the GEMV still waits on its own
   predecessor, so up to three grids share the SMs (each still waits for the one before it to finish). The
   successor's blocks take only free slots: a grid launches once every block of the one before it has started.
   The trigger also keeps ptxas from hoisting the wait (ACQBULK) above the GEMV's first weight loads, which it
   does past a lone wait (cuobjdump -sass). Measured on the H200 against wait-then-trigger (bench/NOTES.md, run 6):
   8B decode BF16 205.0 against 201.7 tok/s, FP8 282.0 against 273.1, 1B BF16 961 against 905. */
__device__ __forceinline__ void te_llama__pdl_start_early() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ uint32_t te_llama__pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi); /* lo in the low half: the lower index */
    return *(uint32_t *)&v;
}

/* 8 bf16 (one 16-byte load) as floats */
__device__ __forceinline__ void te_llama__bf16x8_to_f32(const uint4 &u, float f[8]) {
    const __nv_bfloat162 *b2 = (const __nv_bfloat162 *)&u;
#pragma unroll
    for (int e = 0; e < 4; e++) {
        const float2 v = __bfloat1622float2(b2[e]);
        f[2 * e] = v.x;
        f[2 * e + 1] = v.y;
    }
}

/* x[t, :] = float(embed[tokens[t], :]). One block per token: reads n x hidden bf16 (scattered rows), writes
   n x hidden fp32. With h % 8 == 0, 16-byte loads, four a thread issued before any store: one DRAM round trip for
   a row of up to 8192 (256 threads), where the scalar loop took 6.6 us of each 8B decode step (bench/NOTES.md,
   run 18). */
__global__ void te_llama__embed_kernel(const te_llama__bf16 *__restrict__ embed, const int32_t *tokens, float *__restrict__ x, int h) {
    te_llama__pdl_start();
    const te_llama__bf16 *row = embed + (size_t)tokens[blockIdx.x] * h;
    float *out = x + (size_t)blockIdx.x * h;
    if (h % 8) {
        for (int i = threadIdx.x; i < h; i += blockDim.x) out[i] = __bfloat162float(row[i]);
        return;
    }
    const int n8 = h / 8;
    for (int i0 = threadIdx.x; i0 < n8; i0 += 4 * blockDim.x) {
        uint4 v[4];
#pragma unroll
        for (int j = 0; j < 4; j++)
            if (i0 + j * (int)blockDim.x < n8) v[j] = ((const uint4 *)row)[i0 + j * blockDim.x];
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int i = i0 + j * blockDim.x;
            if (i >= n8) break;
            float f[8];
            te_llama__bf16x8_to_f32(v[j], f);
            ((float4 *)out)[2 * i] = make_float4(f[0], f[1], f[2], f[3]);
            ((float4 *)out)[2 * i + 1] = make_float4(f[4], f[5], f[6], f[7]);
        }
    }
}

/* The rotation of each token's position, as the CPU makes it: angle = float(pos) * inv_freq[i] in float32,
   cos and sin in double, rounded to float. rope[t] = cos (half) then sin (half). Reads n positions, writes
   n x head_dim fp32. */
__global__ void te_llama__rope_table_kernel(const int32_t *pos, const float *inv_freq, float *rope, int half) {
    te_llama__pdl_start();
    float p = (float)pos[blockIdx.x];
    float *out = rope + (size_t)blockIdx.x * 2 * half;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        double s, c;
        sincos((double)(p * inv_freq[i]), &s, &c);
        out[i] = (float)c;
        out[half + i] = (float)s;
    }
}

/* 1 / sqrt(mean(xr^2) + eps) for a row of h floats (h % 4 == 0, 16-byte aligned), summed in the same order
   whatever the block size: V = te_llama__norm_lanes(h) virtual lanes, lane i adding the squares of float4s i,
   i + V, ... in turn; each 32 lanes' sums added by a butterfly, then the groups' sums by one more. So the bf16
   and the FP8 rmsnorm kernels give the same inv at any block size (prefill 256 threads, decode up to 1024). Every
   thread of the block calls it; red: 32 floats of shared memory (reusable after it returns). */
__device__ __forceinline__ int te_llama__norm_lanes(int h) {
    const int v = (h / 4 + 31) / 32 * 32;
    return v < 32 ? 32 : v > 1024 ? 1024 : v;
}
__device__ float te_llama__rms_inv(const float *xr, int h, float eps, float *red) {
    const int n4 = h / 4, V = te_llama__norm_lanes(h), groups = V / 32, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    const float4 *x4 = (const float4 *)xr;
    __syncthreads(); /* red may still be read by an earlier reduction */
    for (int j = threadIdx.x >> 5; j < groups; j += nw) {
        float s = 0.0f;
        for (int i = j * 32 + lane; i < n4; i += V) {
            const float4 v = x4[i];
            s += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
        }
        s = te_llama__warp_sum(s);
        if (lane == 0) red[j] = s;
    }
    __syncthreads();
    return 1.0f / sqrtf(te_llama__warp_sum(lane < groups ? red[lane] : 0.0f) / (float)h + eps);
}

/* Four elements of HF's LlamaRMSNorm, y = float(w) * (x * inv), from four fp32 and four bf16 (wv); raises *mx to
   their largest |y|. te_llama__norm_row and the norm folded into the E4M3 GEMV (te_llama__gemv_norm_fp8) both
   take it, so that the two make the same bytes. */
__device__ __forceinline__ void te_llama__norm4(const float4 &v, const uint2 &wv, float inv, float y[4], float *mx) {
    const __nv_bfloat162 w01 = *(const __nv_bfloat162 *)&wv.x, w23 = *(const __nv_bfloat162 *)&wv.y;
    y[0] = __low2float(w01) * (v.x * inv);
    y[1] = __high2float(w01) * (v.y * inv);
    y[2] = __low2float(w23) * (v.z * inv);
    y[3] = __high2float(w23) * (v.w * inv);
    *mx = fmaxf(*mx, fmaxf(fmaxf(fabsf(y[0]), fabsf(y[1])), fmaxf(fabsf(y[2]), fabsf(y[3]))));
}
/* e4m3(y * s) of four elements, the first in the low byte */
__device__ __forceinline__ uint32_t te_llama__e4m3x4_scaled(const float y[4], float s) {
    return (uint32_t)te_llama__e4m3_scaled(y[0], s) | (uint32_t)te_llama__e4m3_scaled(y[1], s) << 8 |
           (uint32_t)te_llama__e4m3_scaled(y[2], s) << 16 | (uint32_t)te_llama__e4m3_scaled(y[3], s) << 24;
}

/* One row of HF's LlamaRMSNorm: y = float(w) * (xr * inv), inv = 1 / sqrt(mean(xr^2) + eps) (te_llama__rms_inv
   when h % 4 == 0: 16-byte loads, the second pass reading xr again from L1), stored as bf16(y) in ob and / or
   e4m3(y * s) in oq (either may be NULL); returns this thread's max |y| (an FP8 input's amax). Every thread of the
   block calls it; red: 32 floats of shared memory. Reads h fp32 + h bf16, writes h bf16 and / or h bytes. */
__device__ __forceinline__ float te_llama__norm_row(const float *xr, const te_llama__bf16 *w, int h, float eps, float *red,
                                                   te_llama__bf16 *ob, uint8_t *oq, float s) {
    float mx = 0.0f, inv;
    if ((h & 3) == 0) {
        const float4 *x4 = (const float4 *)xr;
        const uint2 *w4 = (const uint2 *)w;
        inv = te_llama__rms_inv(xr, h, eps, red);
        for (int i = threadIdx.x; i < h / 4; i += blockDim.x) {
            const float4 v = x4[i]; /* one 16-byte and one 8-byte load (through the reference they split into 6) */
            const uint2 wv = w4[i];
            float y[4];
            te_llama__norm4(v, wv, inv, y, &mx);
            if (oq) ((uint32_t *)oq)[i] = te_llama__e4m3x4_scaled(y, s);
            if (ob) {
                uint2 r;
                r.x = te_llama__pack_bf16(y[0], y[1]);
                r.y = te_llama__pack_bf16(y[2], y[3]);
                ((uint2 *)ob)[i] = r;
            }
        }
        return mx;
    }
    float ss = 0.0f;
    for (int i = threadIdx.x; i < h; i += blockDim.x) ss += xr[i] * xr[i];
    ss = te_llama__block_sum(ss, red);
    inv = 1.0f / sqrtf(ss / (float)h + eps);
    for (int i = threadIdx.x; i < h; i += blockDim.x) {
        const float y = __bfloat162float(w[i]) * (xr[i] * inv), a = fabsf(y);
        if (a > mx) mx = a;
        if (oq) oq[i] = te_llama__e4m3_scaled(y, s);
        if (ob) ob[i] = __float2bfloat16(y);
    }
    return mx;
}

/* HF LlamaRMSNorm into bf16: out[r, :] = bf16(w * (x[src, :] * inv)) (te_llama__norm_row), src = rows[r] when rows
   is given, else r. One block per row: reads hidden fp32 + hidden bf16, writes hidden bf16. A decode step runs it
   with one row, where it is pure latency: 16-byte loads and a wide block (te_llama__norm_threads) make it one round
   of loads, a reduction and one round of stores. Launched by te_llama__launch (programmatic dependent launch). */
__global__ void __launch_bounds__(1024) te_llama__rmsnorm_kernel(const float *x, const int32_t *rows, const te_llama__bf16 *w,
                                                                 te_llama__bf16 *out, int h, float eps) {
    __shared__ float red[32];
    te_llama__pdl_start();
    const float *xr = x + (size_t)(rows ? rows[blockIdx.x] : (int32_t)blockIdx.x) * h;
    (void)te_llama__norm_row(xr, w, h, eps, red, out + (size_t)blockIdx.x * h, NULL, 0.0f);
}

/* Threads for the norm of n rows of h: a few rows (decode) get wide blocks, one 16-byte load a thread; many rows
   (prefill) 256 threads, which keeps the SMs full. */
static int te_llama__norm_threads(int n, int h) {
    int t = n <= 64 ? (h / 4 + 31) / 32 * 32 : 256;
    return t < 32 ? 32 : t > 1024 ? 1024 : t;
}

/* RoPE on one pair (a, b) = (x[i], x[i + hd / 2]) at angle (cos c, sin s): (a c - b s, b c + a s), each product
   rounded before the sum, as the CPU reference computes it. Written out because the compiler fuses a product into
   the sum where it likes, and which one it picked changed with the code around it (an FP8 decode step's logits
   moved with an unrelated change to the GEMV's epilogue, bench/NOTES.md run 16); the prefill's kernel and the
   decode GEMV's epilogue share it. */
__device__ __forceinline__ void te_llama__rope_pair(float a, float b, float c, float s, float *ra, float *rb) {
    *ra = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
    *rb = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
}

/* RoPE in HF's rotate-half convention (pairs (i, i + half)) on the q and k heads of each token's fused QKV row,
   in place, then k and v stored in bf16 at the token's cache row [seq][pos] of this layer. Grid (tokens, heads /
   blockDim.y), blocks of head_dim / 2 threads (rounded up to a warp) by blockDim.y heads (te_llama__rope_kv), one
   pair a thread: every block is one round of loads, so a decode step's tokens cost one short wave, not a loop over
   their heads. One head a block (32 or 64 threads) took 62 us a layer of the 1B prefill at 2048 tokens, 98k
   blocks for 46 MB (bench/NOTES.md, run 12). Reads and writes n x (q_dim + kv_dim) fp32, reads n x kv_dim fp32
   (v), writes 2 n x kv_dim bf16. */
__global__ void te_llama__rope_kv_kernel(float *qkv, const float *rope, const int32_t *pos, const int32_t *seq,
                                         te_llama__bf16 *kc, te_llama__bf16 *vc, int n_heads, int n_kv, int hd,
                                         int max_len) {
    const int half = hd / 2, q_dim = n_heads * hd, kv_dim = n_kv * hd, t = blockIdx.x;
    const int head = blockIdx.y * blockDim.y + threadIdx.y;
    if (head >= n_heads + 2 * n_kv) return;
    float *v = qkv + (size_t)t * (q_dim + 2 * kv_dim) + (size_t)head * hd; /* q heads, then k heads, then v heads */
    const float *cs = rope + (size_t)t * hd, *sn = cs + half;
    const size_t at = ((size_t)seq[t] * (size_t)max_len + (size_t)pos[t]) * (size_t)kv_dim;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        const float a = v[i], b = v[i + half];
        if (head >= n_heads + n_kv) { /* a v head: stored as it is */
            te_llama__bf16 *d = vc + at + (size_t)(head - n_heads - n_kv) * hd;
            d[i] = __float2bfloat16(a);
            d[i + half] = __float2bfloat16(b);
            continue;
        }
        float ra, rb;
        te_llama__rope_pair(a, b, cs[i], sn[i], &ra, &rb);
        v[i] = ra;
        v[i + half] = rb;
        if (head >= n_heads) {
            te_llama__bf16 *d = kc + at + (size_t)(head - n_heads) * hd;
            d[i] = __float2bfloat16(ra);
            d[i + half] = __float2bfloat16(rb);
        }
    }
}

/* te_llama__rope_kv_kernel over n tokens: 256 threads a block where head_dim / 2 allows */
static void te_llama__rope_kv(cudaStream_t stream, float *qkv, const float *rope, const int32_t *pos, const int32_t *seq,
                              te_llama__bf16 *kc, te_llama__bf16 *vc, int n, int n_heads, int n_kv, int hd, int max_len) {
    const int lanes = (hd / 2 + 31) / 32 * 32, per_block = lanes >= 256 ? 1 : 256 / lanes, heads = n_heads + 2 * n_kv;
    te_llama__rope_kv_kernel<<<dim3((unsigned)n, (unsigned)((heads + per_block - 1) / per_block)), dim3((unsigned)lanes, (unsigned)per_block),
                               0, stream>>>(qkv, rope, pos, seq, kc, vc, n_heads, n_kv, hd, max_len);
}

#define TE_LLAMA__ATT_THREADS 128
#define TE_LLAMA__ATT_MAX_HD 1024
#define TE_LLAMA__ATT_PAIRS (TE_LLAMA__ATT_MAX_HD / 2 / TE_LLAMA__ATT_THREADS) /* value pairs a thread may own */

/* Causal grouped-query attention over the cache, flash style: one block per (token, query head) streams the keys
   [0, pos] of its sequence in tiles of 128 with an online softmax (running max and sum, no score matrix). In a
   tile each thread scores one key (q . k / sqrt(hd), q in shared memory), then the threads, split into groups
   over the value dimensions in pairs, accumulate p_j v_j for the tile's keys. Output bf16 (n, q_dim). Traffic:
   per block (pos + 1) x head_dim x 2 bf16 of keys and values (heads of one group and tokens of one sequence re-read
   them, mostly from L2) plus head_dim fp32 of q; n x q_dim bf16 written. CUDA cores only, for now. */
__global__ void __launch_bounds__(TE_LLAMA__ATT_THREADS)
te_llama__attention_kernel(const float *qkv, const int32_t *pos, const int32_t *seq, const te_llama__bf16 *kc,
                           const te_llama__bf16 *vc, te_llama__bf16 *out, int n_heads, int n_kv, int hd,
                           int max_len, float scale) {
    __shared__ float sq[TE_LLAMA__ATT_MAX_HD];
    __shared__ float sp[TE_LLAMA__ATT_THREADS];
    __shared__ float sacc[TE_LLAMA__ATT_THREADS * 2];
    __shared__ float red[32];
    const int t = blockIdx.x, head = blockIdx.y, tid = threadIdx.x;
    const int q_dim = n_heads * hd, kv_dim = n_kv * hd, n_keys = pos[t] + 1, pairs = hd / 2;
    const float *q = qkv + (size_t)t * (q_dim + 2 * kv_dim) + (size_t)head * hd;
    const size_t base = (size_t)seq[t] * (size_t)max_len * (size_t)kv_dim + (size_t)(head / (n_heads / n_kv)) * hd;
    /* value work split: groups of `pairs` threads when a pair each suffices, else one group owning several */
    const int groups = pairs <= TE_LLAMA__ATT_THREADS ? TE_LLAMA__ATT_THREADS / pairs : 1;
    const int g = pairs <= TE_LLAMA__ATT_THREADS ? tid / pairs : 0;
    const int d2 = pairs <= TE_LLAMA__ATT_THREADS ? tid - g * pairs : tid;
    float acc[TE_LLAMA__ATT_PAIRS][2], m = -INFINITY, l = 0.0f;
#pragma unroll
    for (int c = 0; c < TE_LLAMA__ATT_PAIRS; c++) acc[c][0] = acc[c][1] = 0.0f;
    for (int i = tid; i < hd; i += TE_LLAMA__ATT_THREADS) sq[i] = q[i] * scale;
    __syncthreads();
    for (int j0 = 0; j0 < n_keys; j0 += TE_LLAMA__ATT_THREADS) {
        const int j = j0 + tid, in_tile = min(TE_LLAMA__ATT_THREADS, n_keys - j0);
        float s = -INFINITY;
        if (j < n_keys) {
            const te_llama__bf16 *kr = kc + base + (size_t)j * kv_dim;
            s = 0.0f;
            if ((hd & 7) == 0) { /* 16-byte loads */
                for (int c = 0; c < hd; c += 8) {
                    uint4 u = *(const uint4 *)(kr + c);
                    const __nv_bfloat162 *b2 = (const __nv_bfloat162 *)&u;
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        float2 f = __bfloat1622float2(b2[e]);
                        s += sq[c + 2 * e] * f.x + sq[c + 2 * e + 1] * f.y;
                    }
                }
            } else {
                for (int c = 0; c < hd; c += 2) {
                    float2 f = __bfloat1622float2(*(const __nv_bfloat162 *)(kr + c));
                    s += sq[c] * f.x + sq[c + 1] * f.y;
                }
            }
        }
        const float m_new = fmaxf(m, te_llama__block_max(s, red)); /* finite: the tile has a key */
        const float corr = expf(m - m_new);
        const float p = j < n_keys ? expf(s - m_new) : 0.0f;
        sp[tid] = p;
        l = l * corr + te_llama__block_sum(p, red); /* its barriers also publish sp */
        m = m_new;
        if (g < groups) {
#pragma unroll
            for (int c = 0; c < TE_LLAMA__ATT_PAIRS; c++) {
                const int d = d2 + c * TE_LLAMA__ATT_THREADS;
                if ((c > 0 && groups > 1) || d >= pairs) continue;
                float a0 = acc[c][0] * corr, a1 = acc[c][1] * corr;
                const te_llama__bf16 *vr = vc + base + (size_t)j0 * kv_dim + 2 * d;
#pragma unroll 4
                for (int jj = g; jj < in_tile; jj += groups) { /* unrolled: several value loads in flight */
                    float2 f = __bfloat1622float2(*(const __nv_bfloat162 *)(vr + (size_t)jj * kv_dim));
                    a0 += sp[jj] * f.x;
                    a1 += sp[jj] * f.y;
                }
                acc[c][0] = a0;
                acc[c][1] = a1;
            }
        }
        __syncthreads(); /* sp is rewritten by the next tile */
    }
    te_llama__bf16 *o = out + (size_t)t * q_dim + (size_t)head * hd;
    const float inv_l = 1.0f / l;
    if (groups == 1) {
#pragma unroll
        for (int c = 0; c < TE_LLAMA__ATT_PAIRS; c++) {
            const int d = d2 + c * TE_LLAMA__ATT_THREADS;
            if (d < pairs) *(__nv_bfloat162 *)(o + 2 * d) = __floats2bfloat162_rn(acc[c][0] * inv_l, acc[c][1] * inv_l);
        }
        return;
    }
    /* the groups saw disjoint keys under the same running max: their sums add */
    if (g < groups) { sacc[2 * tid] = acc[0][0]; sacc[2 * tid + 1] = acc[0][1]; }
    __syncthreads();
    if (g == 0) {
        float a0 = 0.0f, a1 = 0.0f;
        for (int k = 0; k < groups; k++) { a0 += sacc[2 * (k * pairs + d2)]; a1 += sacc[2 * (k * pairs + d2) + 1]; }
        *(__nv_bfloat162 *)(o + 2 * d2) = __floats2bfloat162_rn(a0 * inv_l, a1 * inv_l);
    }
}

/* ------------------------------------------------------------------------------- tensor-core prefill attention */

#define TE_LLAMA__FA_BM 64      /* query rows of a block: 4 warps of 16 */
#define TE_LLAMA__FA_BN 64      /* keys of a shared-memory tile */
#define TE_LLAMA__FA_THREADS 128
#define TE_LLAMA__FA_MIN_ROWS 16 /* the tiled path runs when the batch's tiles average at least this many rows */

/* 2^x by the special-function unit alone: results below 2^-126 flush to 0 (exp2f scales them back up with three
   more instructions), which as a softmax weight beside the maximum's 1 is no loss. */
__device__ __forceinline__ float te_llama__exp2_ftz(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
__device__ __forceinline__ void te_llama__cp_async16(void *smem, const void *gmem, int src_bytes) {
    unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void te_llama__cp_async4(void *smem, const void *gmem) {
    unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ void te_llama__cp_async_commit(void) { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void te_llama__cp_async_wait(void) {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void te_llama__ldmatrix_x4(uint32_t r[4], const void *smem) {
    unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(s) : "memory");
}
__device__ __forceinline__ void te_llama__ldmatrix_x4_trans(uint32_t r[4], const void *smem) {
    unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(s) : "memory");
}
/* c (16 x 8 fp32) += a (16 x 16 bf16, row) b (16 x 8 bf16, col) */
__device__ __forceinline__ void te_llama__mma_bf16(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* Two adjacent outputs of a prefill attention row at element at, from fp32 lo, hi: bf16 into out and / or, quantised
   as te_llama__cast_fp8_kernel quantises that bf16, e4m3(float(bf16) * s) into out_q (FP8: proj's input). Returns
   their largest |bf16| (for proj's input amax), 0 for NaN as the cast kernel keeps NaN out. */
__device__ __forceinline__ float te_llama__att_out2(te_llama__bf16 *out, uint8_t *out_q, size_t at, float lo, float hi, float s) {
    const __nv_bfloat162 b = __floats2bfloat162_rn(lo, hi);
    const float f0 = __low2float(b), f1 = __high2float(b);
    float mx = 0.0f;
    if (out) *(__nv_bfloat162 *)(out + at) = b;
    if (out_q) *(uint16_t *)(out_q + at) = (uint16_t)(te_llama__e4m3_scaled(f0, s) | te_llama__e4m3_scaled(f1, s) << 8);
    if (fabsf(f0) > mx) mx = fabsf(f0);
    if (fabsf(f1) > mx) mx = fabsf(f1);
    return mx;
}
/* *amax raised to the warp's largest mx (every lane calls it; mx >= 0 and never NaN): one atomic a warp, as
   te_llama__amax_commit's on the float's bits. */
__device__ __forceinline__ void te_llama__warp_amax(float mx, float *amax) {
    mx = te_llama__warp_max(mx);
    if ((threadIdx.x & 31) == 0 && mx > 0.0f) atomicMax((unsigned int *)amax, __float_as_uint(mx));
}

/* Causal GQA attention for runs of consecutive tokens (same sequence, positions +1 each), FlashAttention-2 style on
   the tensor cores. A block is one tile of up to 64 query rows of one run and one query head (grid: heads x tiles;
   tiles[] = {first token, rows, sequence, position of the first row}, heaviest first). Its 4 warps own 16 rows
   each. Keys and values [0, last row's position] of the sequence stream through shared memory in tiles of 64
   (cp.async, two stages; rows padded by 16 bytes so that ldmatrix is conflict-free); S = Q K^T and O += P V are
   mma.sync m16n8k16 bf16 with fp32 accumulation; the online softmax (running max and sum) is fp32, in the base-2
   domain (scale * log2 e folded into the scores).
   Rounding (beyond the general kernel's): q is read from the fp32 QKV row after RoPE and rounded to bf16 (RNE)
   before the product, unscaled; the probabilities P are rounded to bf16 for the P V product, while the row sums
   use the fp32 P. lse (training, else NULL): each row's log-sum-exp of the scaled scores (natural log) at
   (sequence, head, position) of a (n_seq, heads, max_len) array. Traffic per block: (last position + 1) x HD x 2 x 2 bytes of K and V (the other heads of the
   group and the run's other tiles re-read them, mostly from L2), 64 x HD fp32 of q, 64 x HD bf16 written.
   FP8 (te_llama__att_fp8): with q_amax, proj's input amax is raised to the largest |bf16 output| (one atomic a
   warp); with out_q too, the output is written there as E4M3 (te_llama__att_out2) and out is NULL. The 1B FP8
   prefill's separate cast took 10.7 us a layer for 13 MB (bench/NOTES.md run 12). */
template <int HD>
__global__ void __launch_bounds__(TE_LLAMA__FA_THREADS, 3)
te_llama__flash_prefill_kernel(const float *qkv, const int4 *tiles, const te_llama__bf16 *kc, const te_llama__bf16 *vc,
                               te_llama__bf16 *out, float *lse, uint8_t *out_q, const float *q_scale, float *q_amax,
                               int n_heads, int n_kv, int max_len, float scale_log2) {
    constexpr int BN = TE_LLAMA__FA_BN, LD = HD + 8, KCH = HD / 16, NT = HD / 8, CPR = HD / 8 /* 16-byte chunks a row */;
    extern __shared__ __align__(16) unsigned char te_llama__fa_smem[];
    te_llama__bf16 *sk = (te_llama__bf16 *)te_llama__fa_smem; /* [2][BN][LD] */
    te_llama__bf16 *sv = sk + 2 * BN * LD;                      /* [2][BN][LD] */
    const int head = blockIdx.x, tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, c = lane & 3;
    const int4 tile = tiles[blockIdx.y];
    const int q_dim = n_heads * HD, kv_dim = n_kv * HD, ld = q_dim + 2 * kv_dim;
    const int n_keys = tile.w + tile.y, n_kt = (n_keys + BN - 1) / BN;
    const size_t kv_base = (size_t)tile.z * (size_t)max_len * (size_t)kv_dim + (size_t)(head / (n_heads / n_kv)) * HD;
    const te_llama__bf16 *kg = kc + kv_base, *vg = vc + kv_base;
    const int r0 = min(warp * 16 + g, tile.y - 1), r1 = min(warp * 16 + g + 8, tile.y - 1); /* rows past the run: copies */
    const int p0 = tile.w + r0, p1 = tile.w + r1;
    uint32_t qf[KCH][4];
    {
        const float *q0 = qkv + (size_t)(tile.x + r0) * ld + (size_t)head * HD + 2 * c;
        const float *q1 = qkv + (size_t)(tile.x + r1) * ld + (size_t)head * HD + 2 * c;
#pragma unroll
        for (int k = 0; k < KCH; k++) {
            float2 a = *(const float2 *)(q0 + 16 * k), b = *(const float2 *)(q1 + 16 * k);
            float2 a8 = *(const float2 *)(q0 + 16 * k + 8), b8 = *(const float2 *)(q1 + 16 * k + 8);
            qf[k][0] = te_llama__pack_bf16(a.x, a.y);
            qf[k][1] = te_llama__pack_bf16(b.x, b.y);
            qf[k][2] = te_llama__pack_bf16(a8.x, a8.y);
            qf[k][3] = te_llama__pack_bf16(b8.x, b8.y);
        }
    }
    float o[NT][4], m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;
#pragma unroll
    for (int nt = 0; nt < NT; nt++) o[nt][0] = o[nt][1] = o[nt][2] = o[nt][3] = 0.0f;
    /* keys past the last row's position are zero-filled (never read from the cache) and masked */
#define TE_LLAMA__FA_LOAD(kt, st)                                                                                   \
    do {                                                                                                          \
        const int j0_ = (kt) * BN;                                                                                \
        for (int i_ = tid; i_ < BN * CPR; i_ += TE_LLAMA__FA_THREADS) {                                           \
            const int row_ = i_ / CPR, col_ = (i_ - row_ * CPR) * 8, j_ = j0_ + row_, ok_ = j_ < n_keys;        \
            const size_t at_ = (size_t)(ok_ ? j_ : 0) * (size_t)kv_dim + col_;                                    \
            te_llama__cp_async16(sk + ((st) * BN + row_) * LD + col_, kg + at_, ok_ ? 16 : 0);                    \
            te_llama__cp_async16(sv + ((st) * BN + row_) * LD + col_, vg + at_, ok_ ? 16 : 0);                    \
        }                                                                                                         \
        te_llama__cp_async_commit();                                                                              \
    } while (0)
    TE_LLAMA__FA_LOAD(0, 0);
    for (int kt = 0; kt < n_kt; kt++) {
        if (kt + 1 < n_kt) {
            TE_LLAMA__FA_LOAD(kt + 1, (kt + 1) & 1);
            te_llama__cp_async_wait<1>();
        } else {
            te_llama__cp_async_wait<0>();
        }
        __syncthreads();
        const te_llama__bf16 *K = sk + (kt & 1) * BN * LD, *V = sv + (kt & 1) * BN * LD;
        float s[BN / 8][4];
#pragma unroll
        for (int nt = 0; nt < BN / 8; nt++) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
        /* S = Q K^T: per 16 keys, one ldmatrix.x4 gives the B fragments of two 8-key tiles for 16 dims */
#pragma unroll
        for (int k = 0; k < KCH; k++) {
#pragma unroll
            for (int np = 0; np < BN / 16; np++) {
                uint32_t b[4];
                te_llama__ldmatrix_x4(b, K + (np * 16 + ((lane >> 4) << 3) + (lane & 7)) * LD + k * 16 + (((lane >> 3) & 1) << 3));
                te_llama__mma_bf16(s[2 * np], qf[k], b[0], b[1]);
                te_llama__mma_bf16(s[2 * np + 1], qf[k], b[2], b[3]);
            }
        }
        /* scale, causal mask (key j visible to the row at position p when j <= p), running max */
        const int j0 = kt * BN;
        float mx0 = m0, mx1 = m1;
#pragma unroll
        for (int nt = 0; nt < BN / 8; nt++) {
            const int j = j0 + nt * 8 + 2 * c;
            s[nt][0] = j <= p0 ? s[nt][0] * scale_log2 : -INFINITY;
            s[nt][1] = j + 1 <= p0 ? s[nt][1] * scale_log2 : -INFINITY;
            s[nt][2] = j <= p1 ? s[nt][2] * scale_log2 : -INFINITY;
            s[nt][3] = j + 1 <= p1 ? s[nt][3] * scale_log2 : -INFINITY;
            mx0 = fmaxf(mx0, fmaxf(s[nt][0], s[nt][1]));
            mx1 = fmaxf(mx1, fmaxf(s[nt][2], s[nt][3]));
        }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        /* finite: key 0 is visible to every row, so the first tile sets a finite max */
        const float corr0 = exp2f(m0 - mx0), corr1 = exp2f(m1 - mx1);
        m0 = mx0;
        m1 = mx1;
        float ls0 = 0.0f, ls1 = 0.0f;
#pragma unroll
        for (int nt = 0; nt < BN / 8; nt++) {
            s[nt][0] = exp2f(s[nt][0] - mx0);
            s[nt][1] = exp2f(s[nt][1] - mx0);
            s[nt][2] = exp2f(s[nt][2] - mx1);
            s[nt][3] = exp2f(s[nt][3] - mx1);
            ls0 += s[nt][0] + s[nt][1];
            ls1 += s[nt][2] + s[nt][3];
        }
        l0 = l0 * corr0 + ls0; /* this thread's share of the row sum; the quad's shares add at the end */
        l1 = l1 * corr1 + ls1;
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            o[nt][0] *= corr0;
            o[nt][1] *= corr0;
            o[nt][2] *= corr1;
            o[nt][3] *= corr1;
        }
        /* O += P V: the S accumulators of 16 keys are the A fragment; V's B fragments by ldmatrix.trans */
#pragma unroll
        for (int kk = 0; kk < BN / 16; kk++) {
            uint32_t a[4];
            a[0] = te_llama__pack_bf16(s[2 * kk][0], s[2 * kk][1]);
            a[1] = te_llama__pack_bf16(s[2 * kk][2], s[2 * kk][3]);
            a[2] = te_llama__pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            a[3] = te_llama__pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
            for (int dp = 0; dp < HD / 16; dp++) {
                uint32_t b[4];
                te_llama__ldmatrix_x4_trans(b, V + (kk * 16 + (((lane >> 3) & 1) << 3) + (lane & 7)) * LD + dp * 16 + ((lane >> 4) << 3));
                te_llama__mma_bf16(o[2 * dp], a, b[0], b[1]);
                te_llama__mma_bf16(o[2 * dp + 1], a, b[2], b[3]);
            }
        }
        __syncthreads(); /* this stage is refilled by the next iteration's load */
    }
#undef TE_LLAMA__FA_LOAD
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float inv0 = 1.0f / l0, inv1 = 1.0f / l1;
    const int w0 = warp * 16 + g, w1 = w0 + 8;
    if (lse && c == 0) { /* training: the natural-log log-sum-exp of each row's scaled scores, for the backward */
        float *at = lse + ((size_t)tile.z * n_heads + head) * (size_t)max_len + tile.w;
        if (w0 < tile.y) at[w0] = (m0 + log2f(l0)) * 0.69314718055994531f;
        if (w1 < tile.y) at[w1] = (m1 + log2f(l1)) * 0.69314718055994531f;
    }
    const size_t at0 = (size_t)(tile.x + w0) * q_dim + (size_t)head * HD + 2 * c, at1 = at0 + (size_t)8 * q_dim;
    const float qs = out_q ? *q_scale : 0.0f;
    float q_max = 0.0f;
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        if (w0 < tile.y) q_max = fmaxf(q_max, te_llama__att_out2(out, out_q, at0 + nt * 8, o[nt][0] * inv0, o[nt][1] * inv0, qs));
        if (w1 < tile.y) q_max = fmaxf(q_max, te_llama__att_out2(out, out_q, at1 + nt * 8, o[nt][2] * inv1, o[nt][3] * inv1, qs));
    }
    if (q_amax) te_llama__warp_amax(q_max, q_amax);
}

/* Shared memory of the prefill kernel: K and V, two stages, padded rows. */
static size_t te_llama__fa_smem_bytes(int hd) { return (size_t)2 * 2 * TE_LLAMA__FA_BN * (size_t)(hd + 8) * sizeof(te_llama__bf16); }

/* -------------------------------------------------------------- tensor-core prefill attention on Hopper (wgmma) */

/* wgmma is sm_90a only: the kernel below has a body in that pass alone, and te_llama__wgmma_probe_kernel tells the
   host at init whether the device runs that pass (te_llama__cuda.wgmma). */
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define TE_LLAMA__WGMMA 1
#else
#define TE_LLAMA__WGMMA 0
#endif

__global__ void te_llama__wgmma_probe_kernel(int *has) { *has = TE_LLAMA__WGMMA; }

#if TE_LLAMA__WGMMA
/* A shared-memory matrix descriptor of wgmma: 128-byte swizzle (16-byte chunk c of 128-byte row r stored at chunk
   c ^ (r % 8), the pattern anchored at 1024-byte boundaries); lbo and sbo in bytes (PTX ISA, "Matrix Descriptor
   Format"). */
__device__ __forceinline__ uint64_t te_llama__wg_desc(const void *smem, uint32_t lbo, uint32_t sbo) {
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(smem);
    return (uint64_t)((a & 0x3FFFF) >> 4) | (uint64_t)((lbo >> 4) & 0x3FFF) << 16 | (uint64_t)((sbo >> 4) & 0x3FFF) << 32 |
           (uint64_t)1 << 62;
}
__device__ __forceinline__ void te_llama__wg_fence(void) { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void te_llama__wg_commit(void) { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void te_llama__wg_wait0(void) { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
/* Pins registers at this point of the instruction stream, among the wgmma asm statements (which the compiler keeps
   in order): after a wait, so that reads of accumulators are not moved above it (the asm's outputs look written at
   the wgmma itself); before a fence, so that writes of a wgmma's operands are not moved below it. */
template <int N> __device__ __forceinline__ void te_llama__wg_regs_ready(float *r) {
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N> __device__ __forceinline__ void te_llama__wg_regs_ready(uint32_t *r) {
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+r"(r[i])::"memory");
}
/* The accumulator operands of a wgmma: the register list of its PTX ("%0, ..., %N-1") and the asm outputs d[0..N-1]. */
#define TE_LLAMA__WG_REGS32 \
    "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define TE_LLAMA__WG_REGS64 \
    "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
    "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
    "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define TE_LLAMA__WG_D32(d) \
    "+f"((d)[0]), "+f"((d)[1]), "+f"((d)[2]), "+f"((d)[3]), "+f"((d)[4]), "+f"((d)[5]), "+f"((d)[6]), "+f"((d)[7]), \
    "+f"((d)[8]), "+f"((d)[9]), "+f"((d)[10]), "+f"((d)[11]), "+f"((d)[12]), "+f"((d)[13]), "+f"((d)[14]), "+f"((d)[15]), \
    "+f"((d)[16]), "+f"((d)[17]), "+f"((d)[18]), "+f"((d)[19]), "+f"((d)[20]), "+f"((d)[21]), "+f"((d)[22]), "+f"((d)[23]), \
    "+f"((d)[24]), "+f"((d)[25]), "+f"((d)[26]), "+f"((d)[27]), "+f"((d)[28]), "+f"((d)[29]), "+f"((d)[30]), "+f"((d)[31])
#define TE_LLAMA__WG_D64(d) \
    "+f"((d)[0]), "+f"((d)[1]), "+f"((d)[2]), "+f"((d)[3]), "+f"((d)[4]), "+f"((d)[5]), "+f"((d)[6]), "+f"((d)[7]), \
    "+f"((d)[8]), "+f"((d)[9]), "+f"((d)[10]), "+f"((d)[11]), "+f"((d)[12]), "+f"((d)[13]), "+f"((d)[14]), "+f"((d)[15]), \
    "+f"((d)[16]), "+f"((d)[17]), "+f"((d)[18]), "+f"((d)[19]), "+f"((d)[20]), "+f"((d)[21]), "+f"((d)[22]), "+f"((d)[23]), \
    "+f"((d)[24]), "+f"((d)[25]), "+f"((d)[26]), "+f"((d)[27]), "+f"((d)[28]), "+f"((d)[29]), "+f"((d)[30]), "+f"((d)[31]), \
    "+f"((d)[32]), "+f"((d)[33]), "+f"((d)[34]), "+f"((d)[35]), "+f"((d)[36]), "+f"((d)[37]), "+f"((d)[38]), "+f"((d)[39]), \
    "+f"((d)[40]), "+f"((d)[41]), "+f"((d)[42]), "+f"((d)[43]), "+f"((d)[44]), "+f"((d)[45]), "+f"((d)[46]), "+f"((d)[47]), \
    "+f"((d)[48]), "+f"((d)[49]), "+f"((d)[50]), "+f"((d)[51]), "+f"((d)[52]), "+f"((d)[53]), "+f"((d)[54]), "+f"((d)[55]), \
    "+f"((d)[56]), "+f"((d)[57]), "+f"((d)[58]), "+f"((d)[59]), "+f"((d)[60]), "+f"((d)[61]), "+f"((d)[62]), "+f"((d)[63])

/* d (64 x 64 fp32, accumulator layout) = (accumulate: +=) A B^T, A (64 x 16) and B (64 x 16) bf16 K-major in
   shared memory (descriptors a and b) */
__device__ __forceinline__ void te_llama__wgmma_n64_ss(float *d, uint64_t a, uint64_t b, int accumulate) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {" TE_LLAMA__WG_REGS32 "}, "
                 "%32, %33, p, 1, 1, 0, 0;\n}\n"
                 : TE_LLAMA__WG_D32(d)
                 : "l"(a), "l"(b), "r"(accumulate));
}

/* d (64 x 128 fp32, accumulator layout) = (accumulate: +=) A B^T, A (64 x 16) and B (128 x 16) bf16 K-major in
   shared memory (descriptors a and b) */
__device__ __forceinline__ void te_llama__wgmma_n128_ss(float *d, uint64_t a, uint64_t b, int accumulate) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {" TE_LLAMA__WG_REGS64 "}, "
                 "%64, %65, p, 1, 1, 0, 0;\n}\n"
                 : TE_LLAMA__WG_D64(d)
                 : "l"(a), "l"(b), "r"(accumulate));
}

/* d (64 x 64 fp32) += A B, A (64 x 16 bf16) in registers (a warp's 16 rows as mma.sync's A fragment), B (16 x 64
   bf16) N-major in shared memory (descriptor b, transposed) */
__device__ __forceinline__ void te_llama__wgmma_n64_rs(float *d, const uint32_t a[4], uint64_t b) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {" TE_LLAMA__WG_REGS32 "}, "
                 "{%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
                 : TE_LLAMA__WG_D32(d)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}

/* d (64 x 128 fp32) += A B, A (64 x 16 bf16) in registers (a warp's 16 rows as mma.sync's A fragment), B (16 x 128
   bf16) N-major in shared memory (descriptor b, transposed) */
__device__ __forceinline__ void te_llama__wgmma_n128_rs(float *d, const uint32_t a[4], uint64_t b) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {" TE_LLAMA__WG_REGS64 "}, "
                 "{%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
                 : TE_LLAMA__WG_D64(d)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}

#endif

/* The prefill attention of te_llama__flash_prefill_kernel (same tiles, masks, rounding and outputs) on Hopper's
   warpgroup MMA. A block is one 64-row tile and NH query heads of one kv head (NH = 2 when the group size is even:
   the two heads share every K and V stage, halving the L2 traffic), one warpgroup (128 threads) a head. q is
   rounded to bf16 into shared memory once; K and V stream through 3 stages of BN keys (cp.async, 128-byte
   swizzled rows as wgmma reads them, the next stage loading while one is used). Per stage kt, S = q K^T is HD / 16
   wgmma m64nBNk16 from shared memory and O += P V is BN / 16 wgmma m64nHDk16 with P from registers (its bf16
   fragments are the accumulators' own layout) and V read N-major. The products overlap the softmax: stage kt's S
   and stage kt - 1's P V are issued together, and stage kt's softmax runs while that P V executes, so the tensor
   cores have work queued while the warpgroup computes exponentials (FlashAttention-3's intra-warpgroup
   pipelining). Measured (bench/NOTES.md, run 9): 370 TFLOP/s causal at 4096 tokens on the 8B shape, 37% of the
   dense bf16 peak; the mma.sync kernel reads 256. Shared memory: te_llama__fa3_smem_bytes. */
#define TE_LLAMA__WG_STAGES 3
template <int HD, int NH, int BN>
__global__ void __launch_bounds__(128 * NH, 1)
te_llama__flash_wgmma_kernel(const float *qkv, const int4 *tiles, const te_llama__bf16 *kc, const te_llama__bf16 *vc,
                             te_llama__bf16 *out, float *lse, uint8_t *out_q, const float *q_scale, float *q_amax,
                             int n_heads, int n_kv, int max_len, float scale_log2) {
#if TE_LLAMA__WGMMA
    constexpr int CPR = HD / 8 /* 16-byte chunks a row */, QT = 64 * HD * 2, KT = BN * HD * 2 /* bytes of a q, K, V tile */;
    constexpr int ST = TE_LLAMA__WG_STAGES, AHEAD = ST - 2; /* stages loading beyond the one in use */
    static_assert((HD == 64 || HD == 128) && (BN == 64 || BN == 128), "head dim, keys a stage");
    extern __shared__ unsigned char te_llama__fa3_raw[];
    unsigned char *sq = te_llama__fa3_raw + ((1024u - ((unsigned)__cvta_generic_to_shared(te_llama__fa3_raw) & 1023u)) & 1023u);
    unsigned char *sk = sq + NH * QT, *sv = sk + ST * KT; /* [NH] q, [ST] K, [ST] V: each HD / 64 x [rows][128 B] */
    const int tid = threadIdx.x, wg = tid >> 7, warp = (tid >> 5) & 3, lane = tid & 31, g = lane >> 2, c = lane & 3;
    const int head = blockIdx.x * NH + wg;
    const int4 tile = tiles[blockIdx.y];
    const int q_dim = n_heads * HD, kv_dim = n_kv * HD, ld = q_dim + 2 * kv_dim;
    const int n_keys = tile.w + tile.y, n_kt = (n_keys + BN - 1) / BN;
    const size_t kv_base = (size_t)tile.z * (size_t)max_len * (size_t)kv_dim + (size_t)(blockIdx.x * NH / (n_heads / n_kv)) * HD;
    const te_llama__bf16 *kg = kc + kv_base, *vg = vc + kv_base;
    /* byte offset of 16-byte chunk ch of row r in a tile of n rows (q: 64, K and V: BN) */
#define TE_LLAMA__SW128(r, ch, n) (((ch) >> 3) * ((n) * 128) + (r) * 128 + ((((ch) ^ (r)) & 7) << 4))
    {   /* this warpgroup's q, rows past the run are copies of its last row */
        unsigned char *q_s = sq + wg * QT;
        for (int i = tid & 127; i < 64 * CPR; i += 128) {
            const int r = i / CPR, ch = i - r * CPR;
            const float *src = qkv + (size_t)(tile.x + min(r, tile.y - 1)) * ld + (size_t)head * HD + ch * 8;
            const float4 a = *(const float4 *)src, b = *(const float4 *)(src + 4);
            uint4 v;
            v.x = te_llama__pack_bf16(a.x, a.y);
            v.y = te_llama__pack_bf16(a.z, a.w);
            v.z = te_llama__pack_bf16(b.x, b.y);
            v.w = te_llama__pack_bf16(b.z, b.w);
            *(uint4 *)(q_s + TE_LLAMA__SW128(r, ch, 64)) = v;
        }
    }
    /* keys past the last row's position are zero-filled (never read from the cache) and masked; one cp.async group
       a call, empty past the last stage */
    auto load = [&](int kt) {
        unsigned char *k_s = sk + (kt % ST) * KT, *v_s = sv + (kt % ST) * KT;
        for (int i = tid; i < BN * CPR && kt < n_kt; i += 128 * NH) {
            const int r = i / CPR, ch = i - r * CPR, j = kt * BN + r, ok = j < n_keys;
            const size_t at = (size_t)(ok ? j : 0) * (size_t)kv_dim + ch * 8;
            te_llama__cp_async16(k_s + TE_LLAMA__SW128(r, ch, BN), kg + at, ok ? 16 : 0);
            te_llama__cp_async16(v_s + TE_LLAMA__SW128(r, ch, BN), vg + at, ok ? 16 : 0);
        }
        te_llama__cp_async_commit();
    };
#undef TE_LLAMA__SW128
    const unsigned char *q_s = sq + wg * QT;
    /* S = q K^T of stage kt into s: 16 dims a step, 32 bytes into the swizzled rows, the next 64 dims a half tile on */
    auto issue_s = [&](int kt, float *s) {
        const unsigned char *k_s = sk + (kt % ST) * KT;
        te_llama__wg_fence();
#pragma unroll
        for (int k = 0; k < HD / 16; k++) {
            const uint64_t dq = te_llama__wg_desc(q_s + (k >> 2) * (64 * 128) + (k & 3) * 32, 16, 1024);
            const uint64_t dk = te_llama__wg_desc(k_s + (k >> 2) * (BN * 128) + (k & 3) * 32, 16, 1024);
            if (BN == 128) te_llama__wgmma_n128_ss(s, dq, dk, k > 0);
            else te_llama__wgmma_n64_ss(s, dq, dk, k > 0);
        }
        te_llama__wg_commit();
    };
    /* stage kt is in (for every thread's copies) and every warpgroup is done with stage kt + AHEAD - ST (at most
       kt - 2, whose P V was waited for in step kt - 1): load stage kt + AHEAD in its place */
    auto next_stage = [&](int kt) {
        te_llama__cp_async_wait<AHEAD - 1>();
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); /* this thread's stores, seen by wgmma */
        __syncthreads();
        load(kt + AHEAD);
    };
    float o[HD / 2], m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;
    uint32_t pa[BN / 16][4]; /* the previous stage's P, bf16 A fragments of 16 keys */
#pragma unroll
    for (int i = 0; i < HD / 2; i++) o[i] = 0.0f;
    const int r0 = warp * 16 + g, r1 = r0 + 8; /* this thread's rows; positions of rows past the run: the last's */
    const int p0 = tile.w + min(r0, tile.y - 1), p1 = tile.w + min(r1, tile.y - 1);
    /* O += P V of stage kt (its P in pa, packed at the end of step kt): V N-major, its two 64-dim halves a half tile
       apart (lbo), 8 keys 1 KiB (sbo) */
    auto issue_pv = [&](int kt) {
        const unsigned char *v_s = sv + (kt % ST) * KT;
        te_llama__wg_fence();
#pragma unroll
        for (int kk = 0; kk < BN / 16; kk++) {
            const uint64_t dv = te_llama__wg_desc(v_s + kk * 16 * 128, BN * 128, 1024);
            if (HD == 128) te_llama__wgmma_n128_rs(o, pa[kk], dv);
            else te_llama__wgmma_n64_rs(o, pa[kk], dv);
        }
        te_llama__wg_commit();
    };
#pragma unroll
    for (int t = 0; t < AHEAD; t++) load(t);
    /* step kt: S of stage kt issued, then (kt > 0) stage kt - 1's P V; the softmax of S runs while the tensor cores
       do that P V; then O is rescaled and P packed once the P V is done (those registers are its operands) */
    for (int kt = 0; kt < n_kt; kt++) {
        float s[BN / 2];
#pragma unroll
        for (int i = 0; i < BN / 2; i++) s[i] = 0.0f;
        te_llama__wg_regs_ready<BN / 2>(s);
        next_stage(kt);
        issue_s(kt, s);
        if (kt > 0) {
            issue_pv(kt - 1);
            asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory"); /* S in, the P V may run on */
        } else {
            te_llama__wg_wait0();
        }
        te_llama__wg_regs_ready<BN / 2>(s);
        /* causal mask (key j visible to the row at position p when j <= p), on the stages reaching past the first
           row; then the running max of the raw scores (scale_log2 > 0 keeps the order) */
        const int j0 = kt * BN;
        if (j0 + BN - 1 > tile.w) {
#pragma unroll
            for (int nt = 0; nt < BN / 8; nt++) {
                const int j = j0 + nt * 8 + 2 * c;
                if (j > p0) s[4 * nt] = -INFINITY;
                if (j + 1 > p0) s[4 * nt + 1] = -INFINITY;
                if (j > p1) s[4 * nt + 2] = -INFINITY;
                if (j + 1 > p1) s[4 * nt + 3] = -INFINITY;
            }
        }
        /* the maxima and sums as trees of 4 chains: with two warps a scheduler the chains' latency shows */
        float mq0[4], mq1[4];
#pragma unroll
        for (int q = 0; q < 4; q++) {
            mq0[q] = fmaxf(s[4 * q], s[4 * q + 1]);
            mq1[q] = fmaxf(s[4 * q + 2], s[4 * q + 3]);
        }
#pragma unroll
        for (int nt = 4; nt < BN / 8; nt++) {
            mq0[nt & 3] = fmaxf(mq0[nt & 3], fmaxf(s[4 * nt], s[4 * nt + 1]));
            mq1[nt & 3] = fmaxf(mq1[nt & 3], fmaxf(s[4 * nt + 2], s[4 * nt + 3]));
        }
        float mx0 = fmaxf(fmaxf(m0, fmaxf(mq0[0], mq0[1])), fmaxf(mq0[2], mq0[3]));
        float mx1 = fmaxf(fmaxf(m1, fmaxf(mq1[0], mq1[1])), fmaxf(mq1[2], mq1[3]));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        /* finite: key 0 is visible to every row, so the first stage sets a finite max. ex2.approx.ftz: results
           below 2^-126 flush to 0 (exp2f would scale them back up), a probability of no weight beside the max's 1 */
        const float corr0 = te_llama__exp2_ftz((m0 - mx0) * scale_log2), corr1 = te_llama__exp2_ftz((m1 - mx1) * scale_log2);
        const float b0 = mx0 * scale_log2, b1 = mx1 * scale_log2;
        m0 = mx0;
        m1 = mx1;
        float lq0[4] = {0.0f, 0.0f, 0.0f, 0.0f}, lq1[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int nt = 0; nt < BN / 8; nt++) {
            s[4 * nt] = te_llama__exp2_ftz(fmaf(s[4 * nt], scale_log2, -b0));
            s[4 * nt + 1] = te_llama__exp2_ftz(fmaf(s[4 * nt + 1], scale_log2, -b0));
            s[4 * nt + 2] = te_llama__exp2_ftz(fmaf(s[4 * nt + 2], scale_log2, -b1));
            s[4 * nt + 3] = te_llama__exp2_ftz(fmaf(s[4 * nt + 3], scale_log2, -b1));
            lq0[nt & 3] += s[4 * nt] + s[4 * nt + 1];
            lq1[nt & 3] += s[4 * nt + 2] + s[4 * nt + 3];
        }
        /* this thread's share of the row sum; the quad's shares add at the end */
        l0 = l0 * corr0 + ((lq0[0] + lq0[1]) + (lq0[2] + lq0[3]));
        l1 = l1 * corr1 + ((lq1[0] + lq1[1]) + (lq1[2] + lq1[3]));
        te_llama__wg_wait0(); /* the previous stage's P V: o and pa are free */
        te_llama__wg_regs_ready<HD / 2>(o);
        /* O takes this stage's correction now, with no wgmma in flight (ptxas serialises the products when an
           accumulator is written between the issue of one and the wait for another) */
#pragma unroll
        for (int nt = 0; nt < HD / 8; nt++) {
            o[4 * nt] *= corr0;
            o[4 * nt + 1] *= corr0;
            o[4 * nt + 2] *= corr1;
            o[4 * nt + 3] *= corr1;
        }
#pragma unroll
        for (int kk = 0; kk < BN / 16; kk++) {
            pa[kk][0] = te_llama__pack_bf16(s[8 * kk], s[8 * kk + 1]);
            pa[kk][1] = te_llama__pack_bf16(s[8 * kk + 2], s[8 * kk + 3]);
            pa[kk][2] = te_llama__pack_bf16(s[8 * kk + 4], s[8 * kk + 5]);
            pa[kk][3] = te_llama__pack_bf16(s[8 * kk + 6], s[8 * kk + 7]);
        }
        te_llama__wg_regs_ready<HD / 2>(o);
        te_llama__wg_regs_ready<BN / 4>(&pa[0][0]);
    }
    issue_pv(n_kt - 1);
    te_llama__wg_wait0();
    te_llama__wg_regs_ready<HD / 2>(o);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float inv0 = 1.0f / l0, inv1 = 1.0f / l1;
    if (lse && c == 0) { /* training: the natural-log log-sum-exp of each row's scaled scores, for the backward */
        float *at = lse + ((size_t)tile.z * n_heads + head) * (size_t)max_len + tile.w;
        if (r0 < tile.y) at[r0] = (m0 * scale_log2 + log2f(l0)) * 0.69314718055994531f;
        if (r1 < tile.y) at[r1] = (m1 * scale_log2 + log2f(l1)) * 0.69314718055994531f;
    }
    const size_t at0 = (size_t)(tile.x + r0) * q_dim + (size_t)head * HD + 2 * c, at1 = at0 + (size_t)8 * q_dim;
    const float qs = out_q ? *q_scale : 0.0f;
    float q_max = 0.0f;
#pragma unroll
    for (int nt = 0; nt < HD / 8; nt++) {
        if (r0 < tile.y) q_max = fmaxf(q_max, te_llama__att_out2(out, out_q, at0 + nt * 8, o[4 * nt] * inv0, o[4 * nt + 1] * inv0, qs));
        if (r1 < tile.y) q_max = fmaxf(q_max, te_llama__att_out2(out, out_q, at1 + nt * 8, o[4 * nt + 2] * inv1, o[4 * nt + 3] * inv1, qs));
    }
    if (q_amax) te_llama__warp_amax(q_max, q_amax);
#endif
}

/* Shared memory of te_llama__flash_wgmma_kernel<hd, nh, bn>: nh q tiles (64 x hd bf16), the stages of K and V (bn x
   hd bf16 each), and 1 KiB to align the first to the swizzle's 1024 bytes (225 KiB at hd 128, two heads, 128 keys). */
static size_t te_llama__fa3_smem_bytes(int hd, int nh, int bn) {
    return ((size_t)nh * 64 + (size_t)2 * TE_LLAMA__WG_STAGES * bn) * (size_t)hd * 2 + 1024;
}

/* --------------------------------------------------------------------------- split-KV (flash-decoding) attention */

#define TE_LLAMA__DEC_THREADS 128
#define TE_LLAMA__DEC_GMAX 8        /* query heads per kv head it takes */
#define TE_LLAMA__DEC_MAX_HD 256
#define TE_LLAMA__DEC_TILE 64
#define TE_LLAMA__DEC_MAX_SPLITS 64
#define TE_LLAMA__DEC_MIN_CHUNK 16
#define TE_LLAMA__DEC_MAX_CLUSTER 16 /* splits merged in a thread-block cluster (sm_90: 8 portable, 16 allowed) */

/* Keys a split covers, from the device-side key count: the splits of a token share its keys evenly, in multiples
   of 16; the ones past the last key have nothing to do. Both kernels below compute it the same way. */
__device__ __forceinline__ int te_llama__split_chunk(int n_keys, int splits) {
    const int c = (n_keys + splits - 1) / splits;
    return (c + TE_LLAMA__DEC_MIN_CHUNK - 1) / TE_LLAMA__DEC_MIN_CHUNK * TE_LLAMA__DEC_MIN_CHUNK;
}

/* Attention of single tokens over long caches, any positions and sequences: one block per (token, split, kv
   head), all the group's query heads together so that each key and value row is read once per group. The split's
   keys stream in tiles of 64: scores by 4 keys a warp (8 lanes a key, 16-byte loads), the online softmax per head
   in fp32 (base 2), then P V with the threads over value dimension pairs and key groups. With one split the block
   writes the bf16 output; else its unnormalised sums and (max, sum) go to part[(t, head, split)] (hd + 2 floats)
   and te_llama__decode_combine_kernel merges them. q stays fp32 (as the general kernel). The grid is fixed by the
   host (tokens x splits x kv heads) and the work found on the device from pos[]: CUDA-graph safe.
   Traffic: (pos + 1) x hd x 2 x 2 bytes per (token, kv head), hd x G fp32 of q; part: splits x (hd + 2) floats
   per (token, head) written and read back. */
__global__ void __launch_bounds__(TE_LLAMA__DEC_THREADS)
te_llama__decode_attention_kernel(const float *qkv, const int32_t *pos, const int32_t *seq, const te_llama__bf16 *kc,
                                  const te_llama__bf16 *vc, te_llama__bf16 *out, float *part, int n_heads, int n_kv,
                                  int hd, int max_len, float scale_log2) {
    extern __shared__ float te_llama__dec_smem[];
    __shared__ float s_m[TE_LLAMA__DEC_GMAX], s_l[TE_LLAMA__DEC_GMAX], s_c[TE_LLAMA__DEC_GMAX];
    const int t = blockIdx.x, split = blockIdx.y, kvh = blockIdx.z, S = gridDim.y, tid = threadIdx.x;
    const int lane = tid & 31, warp = tid >> 5, sub = lane >> 3, part8 = lane & 7;
    const int G = n_heads / n_kv, q_dim = n_heads * hd, kv_dim = n_kv * hd, pairs = hd >> 1;
    const int octs = (hd & 7) ? 0 : hd >> 3; /* 16-byte loads need rows of whole 16-byte chunks */
    const int n_keys = pos[t] + 1, chunk = te_llama__split_chunk(n_keys, S), k0 = split * chunk;
    const int k1 = min(n_keys, k0 + chunk);
    if (k0 >= n_keys) return; /* the whole block: nothing of this token's keys is left for it */
    float *sq = te_llama__dec_smem;           /* (G, hd) q * scale * log2 e */
    float *sp = sq + G * hd;                  /* (G, TILE) scores, then probabilities */
    float *sacc = sp + G * TE_LLAMA__DEC_TILE; /* (G, groups, pairs, 2) */
    const float *q = qkv + (size_t)t * (q_dim + 2 * kv_dim) + (size_t)kvh * G * hd;
    for (int i = tid; i < G * hd; i += TE_LLAMA__DEC_THREADS) sq[i] = q[i] * scale_log2;
    if (tid < G) { s_m[tid] = -INFINITY; s_l[tid] = 0.0f; }
    const size_t base = (size_t)seq[t] * (size_t)max_len * (size_t)kv_dim + (size_t)kvh * hd;
    const int groups = TE_LLAMA__DEC_THREADS / pairs, grp = tid / pairs, d2 = tid - grp * pairs;
    float acc[TE_LLAMA__DEC_GMAX][2];
#pragma unroll
    for (int g = 0; g < TE_LLAMA__DEC_GMAX; g++) acc[g][0] = acc[g][1] = 0.0f;
    __syncthreads();
    for (int j0 = k0; j0 < k1; j0 += TE_LLAMA__DEC_TILE) {
        const int in_tile = min(TE_LLAMA__DEC_TILE, k1 - j0);
        for (int jb = warp * 4; jb < TE_LLAMA__DEC_TILE; jb += 16) { /* 4 keys a warp at a time: uniform trip count */
            const int jj = jb + sub;
            float d[TE_LLAMA__DEC_GMAX];
#pragma unroll
            for (int g = 0; g < TE_LLAMA__DEC_GMAX; g++) d[g] = 0.0f;
            if (jj < in_tile) {
                const te_llama__bf16 *kr = kc + base + (size_t)(j0 + jj) * kv_dim;
                for (int o8 = part8; o8 < octs; o8 += 8) { /* 8 dims, one 16-byte load */
                    uint4 u = *(const uint4 *)(kr + 8 * o8);
                    const __nv_bfloat162 *b2 = (const __nv_bfloat162 *)&u;
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const float2 f = __bfloat1622float2(b2[e]);
#pragma unroll
                        for (int g = 0; g < TE_LLAMA__DEC_GMAX; g++)
                            if (g < G) {
                                const float2 qq = *(const float2 *)(sq + g * hd + 8 * o8 + 2 * e);
                                d[g] += qq.x * f.x + qq.y * f.y;
                            }
                    }
                }
                for (int p = 4 * octs + part8; p < pairs; p += 8) { /* head dims not a multiple of 8 */
                    const float2 f = __bfloat1622float2(*(const __nv_bfloat162 *)(kr + 2 * p));
#pragma unroll
                    for (int g = 0; g < TE_LLAMA__DEC_GMAX; g++)
                        if (g < G) d[g] += sq[g * hd + 2 * p] * f.x + sq[g * hd + 2 * p + 1] * f.y;
                }
            }
#pragma unroll
            for (int g = 0; g < TE_LLAMA__DEC_GMAX; g++) {
                if (g >= G) break;
                d[g] += __shfl_xor_sync(0xffffffffu, d[g], 1);
                d[g] += __shfl_xor_sync(0xffffffffu, d[g], 2);
                d[g] += __shfl_xor_sync(0xffffffffu, d[g], 4);
                if (part8 == 0 && jj < in_tile) sp[g * TE_LLAMA__DEC_TILE + jj] = d[g];
            }
        }
        __syncthreads();
        for (int g = warp; g < G; g += TE_LLAMA__DEC_THREADS / 32) { /* a warp per head: max, p, sum */
            float *row = sp + g * TE_LLAMA__DEC_TILE;
            const float s0 = lane < in_tile ? row[lane] : -INFINITY, s1 = lane + 32 < in_tile ? row[lane + 32] : -INFINITY;
            const float m_old = s_m[g], m_new = fmaxf(m_old, te_llama__warp_max(fmaxf(s0, s1))); /* finite: in_tile >= 1 */
            const float p0 = exp2f(s0 - m_new), p1 = exp2f(s1 - m_new);
            row[lane] = p0;
            row[lane + 32] = p1;
            const float sum = te_llama__warp_sum(p0 + p1);
            __syncwarp(); /* every lane has read s_m[g] before lane 0 writes it (racecheck flagged the pair) */
            if (lane == 0) {
                const float corr = exp2f(m_old - m_new);
                s_c[g] = corr;
                s_l[g] = s_l[g] * corr + sum;
                s_m[g] = m_new;
            }
        }
        __syncthreads();
        if (grp < groups) {
            const te_llama__bf16 *vr = vc + base + (size_t)j0 * kv_dim + 2 * d2;
#pragma unroll
            for (int g = 0; g < TE_LLAMA__DEC_GMAX; g++)
                if (g < G) { acc[g][0] *= s_c[g]; acc[g][1] *= s_c[g]; }
#pragma unroll 4
            for (int jj = grp; jj < in_tile; jj += groups) {
                const float2 f = __bfloat1622float2(*(const __nv_bfloat162 *)(vr + (size_t)jj * kv_dim));
#pragma unroll
                for (int g = 0; g < TE_LLAMA__DEC_GMAX; g++)
                    if (g < G) {
                        const float p = sp[g * TE_LLAMA__DEC_TILE + jj];
                        acc[g][0] += p * f.x;
                        acc[g][1] += p * f.y;
                    }
            }
        }
        __syncthreads(); /* sp is rewritten by the next tile */
    }
    /* the key groups saw disjoint keys under the same running max: their sums add */
    if (grp < groups) {
#pragma unroll
        for (int g = 0; g < TE_LLAMA__DEC_GMAX; g++)
            if (g < G) {
                float *a = sacc + (((size_t)g * groups + grp) * pairs + d2) * 2;
                a[0] = acc[g][0];
                a[1] = acc[g][1];
            }
    }
    __syncthreads();
    if (grp == 0) {
        for (int g = 0; g < G; g++) {
            float a0 = 0.0f, a1 = 0.0f;
            for (int k = 0; k < groups; k++) {
                const float *a = sacc + (((size_t)g * groups + k) * pairs + d2) * 2;
                a0 += a[0];
                a1 += a[1];
            }
            const int head = kvh * G + g;
            if (S == 1) {
                const float inv = 1.0f / s_l[g];
                *(__nv_bfloat162 *)(out + (size_t)t * q_dim + (size_t)head * hd + 2 * d2) = __floats2bfloat162_rn(a0 * inv, a1 * inv);
            } else {
                float *po = part + ((size_t)t * n_heads + head) * (size_t)S * (hd + 2) + (size_t)split * (hd + 2);
                po[2 * d2] = a0;
                po[2 * d2 + 1] = a1;
                if (d2 == 0) { po[hd] = s_m[g]; po[hd + 1] = s_l[g]; }
            }
        }
    }
}

/* Merge the splits of te_llama__decode_attention_kernel: one block per (token, head) reads the (max, sum) of the
   splits that had keys (the count follows from pos[] as there), weights each by 2^(m_s - M), and writes
   bf16(sum_s w_s o_s / sum_s w_s l_s). */
__global__ void __launch_bounds__(TE_LLAMA__DEC_THREADS)
te_llama__decode_combine_kernel(const float *part, const int32_t *pos, te_llama__bf16 *out, int n_heads, int hd, int S) {
    __shared__ float w[TE_LLAMA__DEC_MAX_SPLITS];
    __shared__ float inv_l;
    const int t = blockIdx.x, head = blockIdx.y, tid = threadIdx.x;
    const int n_keys = pos[t] + 1, chunk = te_llama__split_chunk(n_keys, S), active = (n_keys + chunk - 1) / chunk;
    const float *p = part + ((size_t)t * n_heads + head) * (size_t)S * (hd + 2);
    if (tid < 32) {
        float mx = -INFINITY, l = 0.0f;
        for (int s = tid; s < active; s += 32) mx = fmaxf(mx, p[(size_t)s * (hd + 2) + hd]);
        mx = te_llama__warp_max(mx);
        for (int s = tid; s < active; s += 32) {
            const float ws = exp2f(p[(size_t)s * (hd + 2) + hd] - mx);
            w[s] = ws;
            l += ws * p[(size_t)s * (hd + 2) + hd + 1];
        }
        l = te_llama__warp_sum(l);
        if (tid == 0) inv_l = 1.0f / l;
    }
    __syncthreads();
    for (int d = tid; d < hd; d += TE_LLAMA__DEC_THREADS) {
        float o = 0.0f;
        for (int s = 0; s < active; s++) o += w[s] * p[(size_t)s * (hd + 2) + d];
        out[(size_t)t * n_heads * hd + (size_t)head * hd + d] = __float2bfloat16(o * inv_l);
    }
}

/* Decode attention for head_dim HD in {32, 64, 128, 256} and G in {1, 2, 4, 8} query heads a kv head (every
   Llama decode step): one block per (token, split, kv head). A decode step waits on this kernel between its QKV
   and proj GEMVs, so what counts is its latency. A key row is HD / 8 lanes ("a subgroup": one 16-byte load of K
   and one of V each); a warp holds 32 / (HD / 8) subgroups, and each subgroup has KPS keys of a round in flight
   (a round: WARPS x subgroups x KPS keys, dealt round-robin so that neighbouring subgroups read neighbouring
   rows; a split covers at least one round). Scores: the lane's 8 dims of q (fp32, scaled by 1/sqrt(hd) log2 e)
   against its 8 dims of each K row, a shuffle reduction over the subgroup; then one online-softmax update per
   round and head (the round's maximum), and P V on the lane's 8 dims. The subgroups of a warp merge by shuffles,
   the warps in shared memory. With one split active the block writes the bf16 output. Else, where the splits form
   a thread-block cluster (cluster: te_llama__dec2_cluster, one token, 2 to 16 splits on sm_90a), each block
   leaves its (sums, max, sum) in its shared memory and, after the cluster's barrier, merges a 1 / S share of the
   outputs from every split's, read through distributed shared memory. Otherwise it writes them to part like
   te_llama__decode_attention_kernel, and the last of the token's splits to finish (a counter per (token, kv
   head), reset by that block, so a captured graph replays) merges them. Both merges add the splits in the same
   order: the same bits (test_decode_attention). The cluster merge spares the global round trips (the partial
   stores, the acq_rel atomic, two rounds of L2 loads): decode 8B FP8 400.6 against 383.8 tok/s, 8B BF16 225.3
   against 221.6, 1B FP8 1487 against 1456 (bench/NOTES.md, run 16). Rounding as the split-KV kernel: q and the
   probabilities in fp32. Traffic: (pos + 1) HD 2 2 bytes per (token, kv head), G HD fp32 of q.
   With out_q (an FP8 decode step: proj's E4M3 input) the output goes there instead of out, quantised as
   te_llama__cast_fp8_kernel would quantise the bf16 output: out_q = e4m3(float(bf16(o)) * *q_scale), and *q_amax
   raised to its largest |bf16(o)|. The step then has no cast launch before proj (a test build that skipped that
   launch decoded the 8B FP8 shape 3.3% faster, bench/NOTES.md run 10).
   Measured on the 8B shape at position 128 (bench/NOTES.md, run 8): 10.0 us a launch alone under ncu (13.5 for
   the previous form: 4 warps, 2 keys in flight a subgroup, a key at a time), 17 us at 16 tokens (16 before).
   In the captured step attention still costs about 14 us a layer: skipping it (a test build) decodes at 237
   tok/s against 214; an empty kernel in its place costs 1.5 us. With 8 keys a subgroup the launch took 13 us
   alone and 23 at 16 tokens (177 registers, one block an SM).
   keys_early (a decode step: one token a sequence): every key before a token's position, and the position itself,
   was written by an earlier forward or step, finished before this kernel starts: under programmatic launch only
   the kernel before this one (QKV) may still run, since the previous layer's attention let its successors launch
   only once the previous QKV had finished (a step's first kernels wait for the kernel before them). So the block
   reads its range and the first round of those keys before griddepcontrol.wait, while QKV runs; the token's own
   key, which QKV writes, comes after the wait. The same keys in the same order: the output is bit-identical.
   Measured (bench/NOTES.md, run 15): 8B FP8 decode 383.8 tok/s, against 382.3 for the same kernel loading after
   the wait and 373.6 for the previous kernel; BF16 218.3 / 217.7 / 215.6. */
__host__ __device__ constexpr int te_llama__dec2_warps(int hd, int G) { return hd * G > 1024 ? 4 : 8; } /* sacc <= 32 KB */
/* Keys a subgroup has in flight: 2 for one token (half the round, twice the splits: more blocks share the one
   token's keys, each with a shorter chain; run 9 measured the 8B B1 step 1.0% faster, the 1B 2.6%), 4 for a batch
   of tokens (which has blocks enough: KPS 2 read 1-5% slower at 16 tokens), 2 for G = 8 (registers). */
__host__ __device__ constexpr int te_llama__dec2_kps(int G, int n) { return G > 4 || n == 1 ? 2 : 4; }
/* keys a block reads in one round: the least a split covers */
__host__ __device__ constexpr int te_llama__dec2_round(int hd, int G, int kps) { return te_llama__dec2_warps(hd, G) * (32 / (hd / 8)) * kps; }
static int te_llama__dec2_takes(int hd, int G) {
    return (hd == 32 || hd == 64 || hd == 128 || hd == 256) && (G == 1 || G == 2 || G == 4 || G == 8);
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
/* Thread-block clusters (sm_90): every thread of the cluster's blocks arrives and waits; what a block wrote to its
   shared memory before the barrier, the others read after it. */
__device__ __forceinline__ void te_llama__cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}
/* The float at p (an address in this block's shared memory) in the cluster's block of rank `rank`. Volatile, so
   that it stays after the barrier; loads of several ranks still go out together. */
__device__ __forceinline__ float te_llama__cluster_ld(const float *p, unsigned rank) {
    uint32_t at;
    float v;
    asm("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(at) : "r"((uint32_t)__cvta_generic_to_shared(p)), "r"(rank));
    asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(at));
    return v;
}
#endif

/* 8 consecutive bf16 or fp32 (16-byte aligned) as floats */
__device__ __forceinline__ void te_llama__load8(const te_llama__bf16 *p, float f[8]) { te_llama__bf16x8_to_f32(*(const uint4 *)p, f); }
__device__ __forceinline__ void te_llama__load8(const float *p, float f[8]) {
    const float4 a = *(const float4 *)p, b = *(const float4 *)(p + 4);
    f[0] = a.x; f[1] = a.y; f[2] = a.z; f[3] = a.w; f[4] = b.x; f[5] = b.y; f[6] = b.z; f[7] = b.w;
}

template <int HD, int G, int KPS>
__global__ void __launch_bounds__(32 * te_llama__dec2_warps(HD, G))
te_llama__decode_attention2_kernel(const float *qkv, const int32_t *pos, const int32_t *seq, const te_llama__bf16 *kc,
                                   const te_llama__bf16 *vc, te_llama__bf16 *out, float *part, unsigned *counts,
                                   int n_heads, int n_kv, int max_len, float scale_log2, uint8_t *out_q,
                                   const float *q_scale, float *q_amax, int keys_early, int cluster) {
    constexpr int LPK = HD / 8, SUBS = 32 / LPK, WARPS = te_llama__dec2_warps(HD, G), STREAMS = WARPS * SUBS;
    constexpr int ROUND = te_llama__dec2_round(HD, G, KPS);
    __shared__ float sm[WARPS][G], sl[WARPS][G];
    __shared__ float sacc[WARPS][G][HD];
    __shared__ float split_m[G][TE_LLAMA__DEC_MAX_SPLITS], split_l[G][TE_LLAMA__DEC_MAX_SPLITS]; /* the merge's */
    __shared__ float block_m[G], block_l[G]; /* cluster: the block's (max, sum), its sums in sacc[0] */
    __shared__ float q_mx[WARPS]; /* out_q: each warp's largest |output| */
    __shared__ int last;
    const int t = blockIdx.x, split = blockIdx.y, kvh = blockIdx.z, S = gridDim.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, sub = lane / LPK, li = lane % LPK;
    const int stream = warp * SUBS + sub, q_dim = n_heads * HD, kv_dim = n_kv * HD;
    float q[G][8], acc[G][8], m[G], l[G];
    float q_max = 0.0f, q_s = 1.0f; /* out_q: this thread's largest |output|, and the scale (loaded with q) */
    /* output element `at` (bf16 or quantised) */
    const auto put = [&](size_t at, float v) {
        const te_llama__bf16 b = __float2bfloat16(v);
        if (!out_q) {
            out[at] = b;
        } else {
            const float f = __bfloat162float(b);
            if (fabsf(f) > q_max) q_max = fabsf(f);
            out_q[at] = te_llama__e4m3_scaled(f, q_s);
        }
    };
    /* out_q's amax: one atomic a block, by thread 0 after a barrier (stage_amax before it), where one a warp made 576
       on one address for an 8B layer's 72 blocks, which the grid's end waited for (with the embedding's wide loads:
       8B FP8 decode +0.3%, TE's recipe and the 1,1 one alike; bench/NOTES.md, run 18) */
    const auto stage_amax = [&]() {
        const float mx = te_llama__warp_max(q_max);
        if (lane == 0) q_mx[warp] = mx;
    };
    const auto commit_amax = [&]() {
        if (threadIdx.x) return;
        float mx = 0.0f;
#pragma unroll
        for (int w = 0; w < WARPS; w++) mx = fmaxf(mx, q_mx[w]);
        if (mx > 0.0f) atomicMax((unsigned int *)q_amax, __float_as_uint(mx));
    };
    int n_keys = 0, k0 = 0, k1 = 0, active = 0;
    size_t base = 0;
    const auto range = [&]() { /* this block's keys [k0, k1) of the token's n_keys; active: the splits with keys */
        n_keys = pos[t] + 1;
        int chunk = (n_keys + S - 1) / S;
        chunk = chunk <= ROUND ? ROUND : (chunk + 15) / 16 * 16;
        k0 = split * chunk;
        k1 = min(n_keys, k0 + chunk);
        active = (n_keys + chunk - 1) / chunk;
        base = (size_t)seq[t] * (size_t)max_len * (size_t)kv_dim + (size_t)kvh * HD + 8 * li;
    };
    uint4 kr[KPS], vr[KPS];
    const auto load_key = [&](int i, int j) { /* key j's K and V row slices as the lane's i-th of the round */
        kr[i] = *(const uint4 *)(kc + base + (size_t)j * kv_dim);
        vr[i] = *(const uint4 *)(vc + base + (size_t)j * kv_dim);
    };
    const auto load_keys = [&](int r0, int lim) { /* the lane's rows of the round from r0, keys below lim */
#pragma unroll
        for (int i = 0; i < KPS; i++) {
            const int j = r0 + i * STREAMS + stream;
            kr[i] = vr[i] = make_uint4(0, 0, 0, 0);
            if (j < lim) load_key(i, j);
        }
    };
    if (keys_early) { /* see above: the first round's keys but the token's own, before the wait */
        range();
        if (k0 < n_keys) load_keys(k0, min(k1, n_keys - 1));
    }
    te_llama__pdl_start();
    if (out_q) q_s = *q_scale; /* with q, not at the first output after the merge, where its L2 round trip ended the chain */
    const float *qrow = qkv + (size_t)t * (q_dim + 2 * kv_dim) + (size_t)kvh * G * HD + 8 * li;
#pragma unroll
    for (int g = 0; g < G; g++) { /* (without keys_early) before pos[]: these loads do not wait for it */
        const float4 a = *(const float4 *)(qrow + g * HD), b = *(const float4 *)(qrow + g * HD + 4);
        q[g][0] = a.x * scale_log2; q[g][1] = a.y * scale_log2; q[g][2] = a.z * scale_log2; q[g][3] = a.w * scale_log2;
        q[g][4] = b.x * scale_log2; q[g][5] = b.y * scale_log2; q[g][6] = b.z * scale_log2; q[g][7] = b.w * scale_log2;
        m[g] = -INFINITY;
        l[g] = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; e++) acc[g][e] = 0.0f;
    }
    if (!keys_early) range(); /* q, pos and seq in one round trip, then the keys (the previous form loaded pos,
                                 returned on it, then loaded seq: a third round trip before the keys; sm_90a SASS,
                                 8B FP8 decode +2.3%, bench/NOTES.md run 15) */
    if (k0 >= n_keys && (!cluster || active == 1)) return; /* a cluster's blocks all meet at its barriers */
    for (int r0 = k0; r0 < k1; r0 += ROUND) {
        if (!keys_early || r0 != k0) {
            load_keys(r0, k1);
        } else { /* the token's own key, written by QKV */
#pragma unroll
            for (int i = 0; i < KPS; i++) {
                const int j = r0 + i * STREAMS + stream;
                if (j == n_keys - 1 && j < k1) load_key(i, j);
            }
        }
        float s[KPS][G]; /* the trip counts are the warp's (shuffles need all 32 lanes); keys past k1 score 0 */
#pragma unroll
        for (int i = 0; i < KPS; i++) {
            float kf[8];
            te_llama__bf16x8_to_f32(kr[i], kf);
#pragma unroll
            for (int g = 0; g < G; g++) {
                float d = 0.0f;
#pragma unroll
                for (int e = 0; e < 8; e++) d += q[g][e] * kf[e];
#pragma unroll
                for (int o = LPK / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
                s[i][g] = d;
            }
        }
        float mx[G];
#pragma unroll
        for (int g = 0; g < G; g++) { /* the round's maximum, then one rescale of the running sums */
            mx[g] = m[g];
#pragma unroll
            for (int i = 0; i < KPS; i++)
                if (r0 + i * STREAMS + stream < k1) mx[g] = fmaxf(mx[g], s[i][g]);
            const float corr = mx[g] == m[g] ? 1.0f : te_llama__exp2_ftz(m[g] - mx[g]); /* 1 while no key was seen (-inf) */
            l[g] *= corr;
#pragma unroll
            for (int e = 0; e < 8; e++) acc[g][e] *= corr;
            m[g] = mx[g];
        }
#pragma unroll
        for (int i = 0; i < KPS; i++) {
            if (r0 + i * STREAMS + stream >= k1) continue;
            float vf[8];
            te_llama__bf16x8_to_f32(vr[i], vf);
#pragma unroll
            for (int g = 0; g < G; g++) {
                const float p = te_llama__exp2_ftz(s[i][g] - mx[g]);
                l[g] += p;
#pragma unroll
                for (int e = 0; e < 8; e++) acc[g][e] += p * vf[e];
            }
        }
    }
    /* the warp's subgroups merge (same dims, different keys); one that saw no key has m = -inf and weighs 0 */
#pragma unroll
    for (int o = LPK; o < 32; o <<= 1)
#pragma unroll
        for (int g = 0; g < G; g++) {
            const float mo = __shfl_xor_sync(0xffffffffu, m[g], o), lo = __shfl_xor_sync(0xffffffffu, l[g], o);
            const float M = fmaxf(m[g], mo);
            const float wa = m[g] == -INFINITY ? 0.0f : te_llama__exp2_ftz(m[g] - M), wb = mo == -INFINITY ? 0.0f : te_llama__exp2_ftz(mo - M);
            l[g] = l[g] * wa + lo * wb;
#pragma unroll
            for (int e = 0; e < 8; e++) acc[g][e] = acc[g][e] * wa + __shfl_xor_sync(0xffffffffu, acc[g][e], o) * wb;
            m[g] = M;
        }
    if (sub == 0) {
#pragma unroll
        for (int g = 0; g < G; g++) {
            if (li == 0) { sm[warp][g] = m[g]; sl[warp][g] = l[g]; }
#pragma unroll
            for (int e = 0; e < 8; e++) sacc[warp][g][8 * li + e] = acc[g][e];
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < G * HD; i += blockDim.x) {
        const int g = i / HD, d = i - g * HD, head = kvh * G + g;
        float M = -INFINITY, L = 0.0f, o = 0.0f;
#pragma unroll
        for (int w = 0; w < WARPS; w++) M = fmaxf(M, sm[w][g]);
#pragma unroll
        for (int w = 0; w < WARPS; w++) {
            const float wt = sm[w][g] == -INFINITY ? 0.0f : te_llama__exp2_ftz(sm[w][g] - M);
            L += wt * sl[w][g];
            o += wt * sacc[w][g][d];
        }
        if (active == 1) {
            put((size_t)t * q_dim + (size_t)head * HD + d, o / L);
        } else if (cluster) { /* sacc[0][g][d] was read above by this thread alone */
            sacc[0][g][d] = o;
            if (d == 0) { block_m[g] = M; block_l[g] = L; }
        } else {
            float *po = part + ((size_t)t * n_heads + head) * (size_t)S * (HD + 2) + (size_t)split * (HD + 2);
            po[d] = o;
            if (d == 0) { po[HD] = M; po[HD + 1] = L; }
        }
    }
    if (active == 1) {
        if (out_q) {
            stage_amax();
            __syncthreads();
            commit_amax();
        }
        return;
    }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (cluster) { /* the splits are one cluster (at most TE_LLAMA__DEC_MAX_CLUSTER blocks): each block merges a share
                      of the outputs, reading every split's sums from its shared memory, in the order of the merge
                      below (the same bits) */
        te_llama__cluster_sync();
        const int per = (G * HD + S - 1) / S, i1 = min(G * HD, (split + 1) * per);
        for (int i = split * per + threadIdx.x; i < i1; i += blockDim.x) {
            const int g = i / HD, d = i - g * HD;
            float ms[TE_LLAMA__DEC_MAX_CLUSTER], ls[TE_LLAMA__DEC_MAX_CLUSTER], os[TE_LLAMA__DEC_MAX_CLUSTER];
            float M = -INFINITY, L = 0.0f, o = 0.0f;
#pragma unroll
            for (int s = 0; s < TE_LLAMA__DEC_MAX_CLUSTER; s++)
                if (s < active) {
                    ms[s] = te_llama__cluster_ld(&block_m[g], s);
                    ls[s] = te_llama__cluster_ld(&block_l[g], s);
                    os[s] = te_llama__cluster_ld(&sacc[0][g][d], s);
                }
#pragma unroll
            for (int s = 0; s < TE_LLAMA__DEC_MAX_CLUSTER; s++)
                if (s < active) M = fmaxf(M, ms[s]);
#pragma unroll
            for (int s = 0; s < TE_LLAMA__DEC_MAX_CLUSTER; s++)
                if (s < active) {
                    const float w = te_llama__exp2_ftz(ms[s] - M);
                    L += w * ls[s];
                    o += w * os[s];
                }
            put((size_t)t * q_dim + (size_t)(kvh * G + g) * HD + d, o / L);
        }
        if (out_q) stage_amax();
        te_llama__cluster_sync(); /* no block leaves while the others may still read its shared memory */
        if (out_q) commit_amax();
        return;
    }
#endif
    /* The last split of this (token, kv head) to finish merges them all. The barrier orders the block's partial
       stores before thread 0's count, whose acq_rel atomic publishes them at gpu scope and, in the last block,
       acquires the others' (the partials are then read through L2): one fence a block (MEMBAR.ALL.GPU) where
       __threadfence in every thread gave each a MEMBAR.SC.GPU (8B decode 211.8 against 210.3 tok/s, run 8). */
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned prev;
        asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], 1;"
                     : "=r"(prev) : "l"(counts + (size_t)t * n_kv + kvh) : "memory");
        last = prev == (unsigned)active - 1;
        if (last) counts[(size_t)t * n_kv + kvh] = 0; /* ready for the next step (a graph replays this launch) */
    }
    __syncthreads();
    if (!last) return;
    /* Every split's (max, sum) at once into shared memory, then each output's sums with the splits' loads unrolled:
       two round trips to L2 rather than 4 x active dependent ones (8B decode 212.4 against 211.2 tok/s, run 8). */
    for (int i = threadIdx.x; i < G * active; i += blockDim.x) {
        const int g = i / active, s = i - g * active;
        const float *p = part + ((size_t)t * n_heads + kvh * G + g) * (size_t)S * (HD + 2) + (size_t)s * (HD + 2);
        split_m[g][s] = __ldcg(p + HD);
        split_l[g][s] = __ldcg(p + HD + 1);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < G * HD; i += blockDim.x) {
        const int g = i / HD, d = i - g * HD, head = kvh * G + g;
        const float *p = part + ((size_t)t * n_heads + head) * (size_t)S * (HD + 2) + d;
        float M = -INFINITY, L = 0.0f, o = 0.0f;
        for (int s = 0; s < active; s++) M = fmaxf(M, split_m[g][s]); /* finite: a split that ran had keys */
#pragma unroll 8
        for (int s = 0; s < active; s++) {
            const float w = te_llama__exp2_ftz(split_m[g][s] - M);
            L += w * split_l[g][s];
            o += w * __ldcg(p + (size_t)s * (HD + 2));
        }
        put((size_t)t * q_dim + (size_t)head * HD + d, o / L);
    }
    if (out_q) {
        stage_amax();
        __syncthreads();
        commit_amax();
    }
}

/* Shared memory of the decode kernel for G query heads a kv head. */
static size_t te_llama__dec_smem_bytes(int G, int hd) {
    return sizeof(float) * ((size_t)G * hd + (size_t)G * TE_LLAMA__DEC_TILE + (size_t)G * 2 * TE_LLAMA__DEC_THREADS);
}

/* ============================================================================== small-batch GEMV (decode) */

/* Y (n, m) = X (n, k) @ W^T for n <= 16 tokens: a decode step reads every weight once for a handful of tokens, so
   it is bound by the weight bytes. cuBLASLt's GEMMs at n = 1..16 leave part of the bandwidth unused and their
   outputs need separate kernels for RoPE, the KV store and SwiGLU; this kernel streams W at full width and finishes
   those in its epilogue.
   Work split: a block owns RT tiles of 16 rows of W (which rows: te_llama__gemv_row) and all n tokens; its
   KW warps split k. Each lane loads 16 bytes of each of its two rows (g = lane / 4 and g + 8) per "chunk": a quad of
   lanes covers 4 x 16 contiguous bytes of a row, so W is read in full 32-byte sectors, with U chunks in flight.
   The 16 bytes feed the tensor cores (mma.sync m16n8k16, fp32 accumulation, A = the 16 rows, B = 8 tokens) under a
   permutation of k that is the same for W and X, so no shuffles are needed: lane (g, t) holds elements [E t, E t + E)
   of the chunk (E = 8 bf16 or 16 e4m3), and mma i of the chunk takes elements 4i, 4i + 1 as logical k 2t, 2t + 1 and
   4i + 2, 4i + 3 as 2t + 8, 2t + 9. X's elements for token g come by the same 16-byte loads (L1/L2: X is tiny).
   E4M3 operands (W and X both, the FP8 path) are widened to fp16 exactly (every E4M3 value is an fp16 value) and
   go to mma.sync m16n8k16 f16 (four per 16 bytes), except on Ada, which runs mma.sync m16n8k32 e4m3 on its FP8
   tensor cores (the same k permutation, two per 16 bytes). Hopper's FP8 tensor cores are reached only by wgmma,
   and ptxas lowers the e4m3 mma.sync for sm_90a to two HMMA from zero whose sums FADD adds into the accumulator.
   The scales are applied to the fp32 sums. The warps' partial sums meet in shared memory in a fixed order
   (deterministic), and warp 0 runs the epilogue. Requires k % 64 == 0 and m % 16 == 0
   (te_llama__gemv_ok). Traffic: m k (2 or 1) bytes of W, n k bytes of X per block from L2, n m outputs. */
#define TE_LLAMA__GEMV_MAX_N 16
#define TE_LLAMA__GEMV_MAX_KW 32 /* warps a block: 32 for one tile (RT 1), 16 for the SwiGLU pair (RT 2) */
#define TE_LLAMA__GEMV_MAX_SS 1024 /* a folded norm's partial sums (hidden / 16): hidden up to 16384 */

enum {
    TE_LLAMA__EPI_STORE = 0, /* y[t, row] = (y[t, row] if accumulate) + sum: an fp32 output or the residual stream */
    TE_LLAMA__EPI_ROPE_KV,   /* the fused QKV rows: RoPE on q and k, q to the fp32 QKV row, k and v to the cache */
    TE_LLAMA__EPI_SWIGLU     /* fc1 (FP8): tiles pair gate rows j and up rows I + j; writes e4m3(silu(gate) * up) */
};

typedef struct te_llama__gemv_args {
    const void *w;           /* (m, k) row-major, bf16 or e4m3 */
    const void *x;           /* (n, k) row-major, same type as w */
    int n, m, k, accumulate;
    const float *scale_inv;  /* e4m3: the two dequantisation factors (weight, input) as device pointers; else NULL */
    const float *scale_inv_x;
    float *y;                /* STORE: (n, m) fp32 */
    /* ROPE_KV */
    float *qkv;              /* (n, q_dim + 2 kv_dim): only the q part is written */
    const float *rope;       /* (n, hd): cos then sin */
    const int32_t *pos, *seq;
    te_llama__bf16 *kc, *vc; /* this layer's cache, (n_seq, max_len, kv_dim) */
    int n_heads, n_kv, hd, max_len;
    /* SWIGLU (the FP8 forward's fc1): act (n, I) e4m3, quantised with *act_scale, its amax raised in *act_amax, or
       with act_amax_part (one launch: n <= 16) each block's amax stored at act_amax_part[blockIdx.x] for the scale
       update to fold. All I / 16 blocks end together (every one resident), and their 896 atomics on one address (8B)
       then queue at the end of the kernel; plain stores do not (8B FP8 decode +0.2%, bench/NOTES.md run 19). */
    void *act;
    int inter;
    const float *act_scale;
    float *act_amax, *act_amax_part;
    /* The RMSNorm folded into the GEMVs around it (a one-token step). A STORE with ss_out writes each token's sum
       of y^2 over the block's 16 rows to ss_out[tok * blocks + block], and with norm_w (bf16) also xg (n, m) =
       bf16(norm_w * y). A bf16 ROPE_KV or SWIGLU with ss_in reads that xg as x and scales its sums by inv = 1 /
       sqrt(sum of ss_in[0 .. ss_parts) / k + eps). An E4M3 one with ss_in makes its input itself, from the
       producer's fp32 row norm_x: x = e4m3(norm_w * (norm_x * inv) * *x_scale), raising *x_amax to max |norm_w *
       (norm_x * inv)| (te_llama__gemv_norm_fp8); a.x is unused. */
    const te_llama__bf16 *norm_w;
    te_llama__bf16 *xg;
    float *ss_out;
    const float *ss_in;
    int ss_parts;
    float eps;
    const float *norm_x;     /* E4M3 with ss_in: (k) the residual stream's row */
    const float *x_scale;    /* its INPUT state's delayed scale and amax */
    float *x_amax;
} te_llama__gemv_args;

/* Row of W that row r (0..15) of tile tt stands for. ROPE_KV: a tile holds dims [8a, 8a + 8) of a head in rows 0..7
   and their rotation partners [hd/2 + 8a, ...) in rows 8..15, so a lane owns both halves of each RoPE pair. */
template <int EPI>
__device__ __forceinline__ int te_llama__gemv_row(int tt, int r, const te_llama__gemv_args &a) {
    if (EPI == TE_LLAMA__EPI_ROPE_KV) {
        const int per_head = a.hd / 16, head = tt / per_head, blk = tt - head * per_head;
        return head * a.hd + (r < 8 ? 8 * blk + r : a.hd / 2 + 8 * blk + r - 8);
    }
    return tt * 16 + r;
}

/* two e4m3 of a word (bytes 0 and 1, or 2 and 3 when HI, low byte first) as an fp16 pair, exactly. On Ada and
   Hopper the conversion reads the word's upper half itself (F2FP ... R.H1) where word >> 16 cost a shift a pair: 80
   of the 553 instructions of the 8B fc1 kernel's main loop. */
template <bool HI>
__device__ __forceinline__ uint32_t te_llama__e4m3x2_to_f16x2(uint32_t word) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    uint32_t h;
    if (HI) asm("{\n .reg .b16 lo, hi;\n mov.b32 {lo, hi}, %1;\n cvt.rn.f16x2.e4m3x2 %0, hi;\n}" : "=r"(h) : "r"(word));
    else asm("{\n .reg .b16 lo, hi;\n mov.b32 {lo, hi}, %1;\n cvt.rn.f16x2.e4m3x2 %0, lo;\n}" : "=r"(h) : "r"(word));
    return h;
#else
    const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)((HI ? word >> 16 : word) & 0xffffu), __NV_E4M3);
    return (uint32_t)h.x | ((uint32_t)h.y << 16);
#endif
}
__device__ __forceinline__ void te_llama__mma_f16(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890 && __CUDA_ARCH__ < 900
/* mma.sync e4m3 (Ada's FP8 tensor cores): A 16 x 32 E4M3 (four words: rows g, g + 8,
   g, g + 8 at k 4t.. and 16 + 4t..), B 32 x 8 (two words: k 4t.. and 16 + 4t.. of column g), fp32 accumulation. */
__device__ __forceinline__ void te_llama__mma_e4m3(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
#endif
/* 16 bytes of W, streamed past L1 (each weight is read once per step). The L2::256B hint makes each miss fetch the
   whole 256-byte span around it, which the lane's next chunks (and the quad's neighbours) read next: measured 3.7
   to 4.0 TB/s on the 8B fc1 / lm_head shapes with it, 2.1 to 2.5 TB/s without (bench/NOTES.md, run 3). */
__device__ __forceinline__ uint4 te_llama__ld_stream(const void *p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

/* acc (16 rows x 8 tokens) += the chunk's products: w0 = row g, w1 = row g + 8, xv = token g's elements */
template <bool FP8>
__device__ __forceinline__ void te_llama__gemv_mma(float acc[4], const uint4 &w0, const uint4 &w1, const uint4 &xv) {
    const uint32_t a0[4] = {w0.x, w0.y, w0.z, w0.w}, a1[4] = {w1.x, w1.y, w1.z, w1.w}, b[4] = {xv.x, xv.y, xv.z, xv.w};
    if (!FP8) {
#pragma unroll
        for (int i = 0; i < 2; i++) { /* 8 bf16: words 2i (k 4i, 4i+1) and 2i + 1 (4i+2, 4i+3) */
            const uint32_t fa[4] = {a0[2 * i], a1[2 * i], a0[2 * i + 1], a1[2 * i + 1]};
            te_llama__mma_bf16(acc, fa, b[2 * i], b[2 * i + 1]);
        }
    } else {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890 && __CUDA_ARCH__ < 900
#pragma unroll
        for (int i = 0; i < 2; i++) { /* 16 e4m3: words 2i (k 4t..4t+3 of mma i) and 2i + 1 (k 16 + 4t..) */
            const uint32_t fa[4] = {a0[2 * i], a1[2 * i], a0[2 * i + 1], a1[2 * i + 1]};
            te_llama__mma_e4m3(acc, fa, b[2 * i], b[2 * i + 1]);
        }
#else
#pragma unroll
        for (int i = 0; i < 4; i++) { /* 16 e4m3: word i holds elements 4i..4i+3 */
            const uint32_t fa[4] = {te_llama__e4m3x2_to_f16x2<false>(a0[i]), te_llama__e4m3x2_to_f16x2<false>(a1[i]),
                                    te_llama__e4m3x2_to_f16x2<true>(a0[i]), te_llama__e4m3x2_to_f16x2<true>(a1[i])};
            te_llama__mma_f16(acc, fa, te_llama__e4m3x2_to_f16x2<false>(b[i]), te_llama__e4m3x2_to_f16x2<true>(b[i]));
        }
#endif
    }
}

/* The RMSNorm folded into a one-token E4M3 GEMV (QKV, fc1). inv = 1 / sqrt(mean(x^2) + eps) from the producer's
   sums of squares a.ss_in, which every warp adds in the same order (one inv for the whole grid). */
__device__ __forceinline__ float te_llama__gemv_norm_inv(const te_llama__gemv_args &a, int lane) {
    float ss = 0.0f;
    for (int p = 4 * lane; p < a.ss_parts; p += 128) {
        const float4 v = *(const float4 *)(a.ss_in + p);
        ss += (v.x + v.y) + (v.z + v.w);
    }
    return 1.0f / sqrtf(te_llama__warp_sum(ss) / (float)a.k + a.eps);
}
/* Its input for 4 chunks (256 elements from e0 = 64 c): lane L makes elements e0 + 8 L .. + 8 as
   te_llama__norm_row does (te_llama__norm4), e4m3(y * s) into the warp's 256-byte stage, and raises its *mx;
   lanes past chunk c1 write zeros. The loads (te_llama__gemv_norm_load: 8 fp32 of a.norm_x and 8 bf16 of a.norm_w a
   lane; L2: every block reads the whole row, 6 bytes an element against the E4M3 input's 1, spread over the main
   loop's iterations) are apart from the arithmetic (te_llama__gemv_norm_fp8) because they do not need inv: the
   first iteration's go out with the sums of squares. */
typedef struct te_llama__norm_in { float4 x0, x1; uint2 w0, w1; } te_llama__norm_in;
__device__ __forceinline__ void te_llama__gemv_norm_load(const te_llama__gemv_args &a, int c, int c1, int lane, te_llama__norm_in *in) {
    if (c + (lane >> 3) < c1) {
        const size_t e0 = (size_t)64 * c + 8 * lane;
        in->x0 = ((const float4 *)a.norm_x)[e0 / 4];
        in->x1 = ((const float4 *)a.norm_x)[e0 / 4 + 1];
        in->w0 = ((const uint2 *)a.norm_w)[e0 / 4];
        in->w1 = ((const uint2 *)a.norm_w)[e0 / 4 + 1];
    }
}
__device__ __forceinline__ void te_llama__gemv_norm_fp8(const te_llama__norm_in &in, int c, int c1, int lane, float inv, float s,
                                                        uint32_t *stage, float *mx) {
    uint32_t q0 = 0, q1 = 0;
    if (c + (lane >> 3) < c1) {
        float y0[4], y1[4];
        te_llama__norm4(in.x0, in.w0, inv, y0, mx);
        te_llama__norm4(in.x1, in.w1, inv, y1, mx);
        q0 = te_llama__e4m3x4_scaled(y0, s);
        q1 = te_llama__e4m3x4_scaled(y1, s);
    }
    stage[2 * lane] = q0;
    stage[2 * lane + 1] = q1;
}

/* Chunks a warp has in flight (a lane: 16 bytes of each of its 2 rows of each of the RT tiles a chunk): 128 bytes
   of W a lane for one tile (256 for E4M3 was not faster: 1B FP8 decode 0.93x BF16, 0.98x before; NOTES run 4);
   for the SwiGLU pair 128 bytes in bf16 and 256 in E4M3, where 128 left the 8B FP8 fc1 at 43 us of a decode step
   (2.7 TB/s, 5 warps a block in two waves) and 256 (2 warps, one wave) decodes 9.6% faster (bench/NOTES.md,
   run 10). */
__host__ __device__ constexpr int te_llama__gemv_u(int rt, bool fp8) { return rt == 1 || fp8 ? 4 : 2; }

/* One tile (RT 1): at most 64 registers a thread, so that 32 warps fit an SM in any block shape (up to 70 without
   the bound, which halved the blocks an SM of the E4M3 kernels); the SwiGLU pair keeps its 82-84. NORM: the E4M3
   one-token form with the folded norm (te_llama__gemv_norm_fp8), a kernel of its own so that its registers do not
   weigh on the others (as a runtime branch the 64-register QKV kernel spilled in its main loop). Its one-tile form
   (QKV) spills at 64 registers and takes 82 unbound, which leaves 2 blocks of 8 warps an SM (the 8B QKV's 384
   blocks in two waves): at most 8 warps a block and 3 blocks an SM bound it to 80. */
__host__ __device__ constexpr int te_llama__gemv_max_warps(int rt, bool norm) { return rt == 1 ? (norm ? 8 : TE_LLAMA__GEMV_MAX_KW) : TE_LLAMA__GEMV_MAX_KW / 2; }
template <int NT, int RT, int EPI, bool FP8, bool NORM = false>
__global__ void __launch_bounds__(32 * te_llama__gemv_max_warps(RT, NORM), RT == 1 ? (NORM ? 3 : 1) : 0)
te_llama__gemv_kernel(const te_llama__gemv_args a) {
    constexpr int ES = FP8 ? 1 : 2;          /* bytes an element */
    constexpr int CHUNK = 64 / ES;           /* elements of a row a quad covers per chunk */
    constexpr int U = te_llama__gemv_u(RT, FP8); /* chunks in flight */
    /* red (KW, RT NT 4, 32): the warps' partial sums, sized by the launch (te_llama__gemv_smem) rather than for 32
       warps. With 16 KB for 32 warps plus the folded norm's 4 KB the 8B BF16 decode fell from 206 to 200 tok/s
       (bench/NOTES.md, run 7, call 1); sized by kw it runs at 204.7 against the previous commit's 202.8 (call 4,
       one machine, with the fold and the split argmax). */
    extern __shared__ float te_llama__gemv_red[];
    float(*red)[RT * NT * 4][32] = (float(*)[RT * NT * 4][32])te_llama__gemv_red;
    __shared__ __align__(16) float ssm[EPI == TE_LLAMA__EPI_STORE ? 4 : TE_LLAMA__GEMV_MAX_SS]; /* a.ss_in */
    __shared__ float epi_scale[3]; /* E4M3 SwiGLU: *scale_inv, *scale_inv_x, *act_scale */
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, KW = blockDim.x >> 5, g = lane >> 2, t = lane & 3;
    const int chunks = a.k / CHUNK, c0 = (int)((long)chunks * warp / KW), c1 = (int)((long)chunks * (warp + 1) / KW);
    const char *wrow[RT][2];
    const char *xrow[NT];
    float acc[RT][NT][4];
#pragma unroll
    for (int rt = 0; rt < RT; rt++) {
        const int tt = EPI == TE_LLAMA__EPI_SWIGLU ? (rt == 0 ? blockIdx.x : blockIdx.x + a.inter / 16) : blockIdx.x * RT + rt;
        wrow[rt][0] = (const char *)a.w + ((size_t)te_llama__gemv_row<EPI>(tt, g, a) * a.k + (size_t)t * (16 / ES)) * ES;
        wrow[rt][1] = (const char *)a.w + ((size_t)te_llama__gemv_row<EPI>(tt, g + 8, a) * a.k + (size_t)t * (16 / ES)) * ES;
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[rt][nt][e] = 0.0f;
    }
    uint4 wv[U][RT][2];
    const int last = max(c1 - 1, 0); /* a warp's last chunk (a warp may have none when k is small: chunk 0 then) */
    /* The first chunks' weight loads go out before the wait (weights are never written by a forward), so they
       overlap the previous kernel's tail; te_llama__pdl_start_early's trigger keeps them there in SASS. */
    const auto load_w = [&](int c) {
#pragma unroll
        for (int u = 0; u < U; u++) {
            const size_t off = (size_t)(c + u) * 64;
            const bool in = c + u < c1;
            /* E4M3: a chunk past the warp's range reads the warp's last chunk again (or chunk 0) instead of making
               zeros: its X is zero, and the weights are finite E4M3 (or a NaN already in the sums). That spares the
               zeroing: 8B FP8 decode +0.8%, 1B +3.6%, 8B at 4 tokens +2.6% (bench/NOTES.md, run 14). */
            const size_t off_last = (size_t)min(c + u, last) * 64;
#pragma unroll
            for (int rt = 0; rt < RT; rt++) {
                if (FP8) {
                    wv[u][rt][0] = te_llama__ld_stream(wrow[rt][0] + off_last);
                    wv[u][rt][1] = te_llama__ld_stream(wrow[rt][1] + off_last);
                } else {
                    wv[u][rt][0] = in ? te_llama__ld_stream(wrow[rt][0] + off) : make_uint4(0, 0, 0, 0);
                    wv[u][rt][1] = in ? te_llama__ld_stream(wrow[rt][1] + off) : make_uint4(0, 0, 0, 0);
                }
            }
        }
    };
    if (NT == 1) load_w(c0); /* two token tiles (9-16 tokens, FP8 only since BF16 takes cuBLASLt there) keep the
                                plain loop: the 8B BF16 B16 decode measured 2.66k tok/s with this form, 2.83k before
                                it (run 5; other runs, not isolated) */
    te_llama__pdl_start_early();
    /* E4M3 SwiGLU: its epilogue's three scales by cp.async here, rather than by warp 0 before the block's barrier,
       where their L2 round trip followed the main loop whenever warp 0 finished last (1 warp in 2). With the
       attention's scale loaded with q: 8B FP8 decode +0.1-0.25% (bench/NOTES.md, run 18) */
    constexpr bool EARLY_SCALES = EPI == TE_LLAMA__EPI_SWIGLU && FP8;
    if (EARLY_SCALES && threadIdx.x < 3) {
        te_llama__cp_async4(epi_scale + threadIdx.x, threadIdx.x == 0 ? a.scale_inv : threadIdx.x == 1 ? a.scale_inv_x : a.act_scale);
        te_llama__cp_async_commit();
    }
    /* NORM: the folded norm makes each iteration's input in the warp's stage, past red */
    static_assert(!NORM || (FP8 && NT == 1 && EPI != TE_LLAMA__EPI_STORE && U == 4), "te_llama__gemv_norm_fp8: E4M3, one token, 4 chunks");
    uint32_t *stage = (uint32_t *)(te_llama__gemv_red + (size_t)KW * RT * NT * 4 * 32) + 64 * warp;
    float norm_inv = 0.0f, norm_s = 0.0f, norm_mx = 0.0f;
    te_llama__norm_in nin = {};
    if (NORM) { /* the first iteration's norm inputs go out with the sums: one L2 round trip before it, not two (8B
                   FP8 decode +0.9%, the 1,1 recipe's +0.7%; bench/NOTES.md, run 17) */
        norm_s = *a.x_scale;
        te_llama__gemv_norm_load(a, c0, c1, lane, &nin);
        norm_inv = te_llama__gemv_norm_inv(a, lane);
    }
    if (EPI != TE_LLAMA__EPI_STORE && !FP8 && a.ss_in) { /* the folded norm's sums, written by the kernel before: in flight
                                                  during the main loop, waited for at its end */
        for (int i = threadIdx.x; i < a.ss_parts / 4; i += blockDim.x) te_llama__cp_async16(ssm + 4 * i, a.ss_in + 4 * i, 16);
        te_llama__cp_async_commit();
    }
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        const int tok = nt * 8 + g;
        xrow[nt] = tok < a.n ? (const char *)a.x + ((size_t)tok * a.k + (size_t)t * (16 / ES)) * ES : NULL;
    }
    if (NORM) { /* one token, one tile: the first iteration peeled, so that its inputs, loaded already, are not
                   carried around the loop (that spilled 16-32 bytes) */
        const auto step = [&](int c, bool first) {
            uint4 xv[U][1];
            if (!first) {
                load_w(c);
                te_llama__gemv_norm_load(a, c, c1, lane, &nin);
            }
            te_llama__gemv_norm_fp8(nin, c, c1, lane, norm_inv, norm_s, stage, &norm_mx);
            __syncwarp(); /* chunk c + u's 16 bytes of lane (0, t) at stage + 16 u + 4 t */
#pragma unroll
            for (int u = 0; u < U; u++) xv[u][0] = g == 0 ? *(const uint4 *)(stage + 16 * u + 4 * t) : make_uint4(0, 0, 0, 0);
            __syncwarp();
#pragma unroll
            for (int u = 0; u < U; u++)
#pragma unroll
                for (int rt = 0; rt < RT; rt++) te_llama__gemv_mma<FP8>(acc[rt][0], wv[u][rt][0], wv[u][rt][1], xv[u][0]);
        };
        if (c0 < c1) step(c0, true);
        for (int c = c0 + U; c < c1; c += U) step(c, false);
    } else {
        for (int c = c0; c < c1; c += U) {
            uint4 xv[U][NT];
            if (NT != 1 || c != c0) load_w(c);
#pragma unroll
            for (int u = 0; u < U; u++) {
                const size_t off = (size_t)(c + u) * 64;
                const bool in = c + u < c1;
#pragma unroll
                for (int nt = 0; nt < NT; nt++)
                    xv[u][nt] = in && xrow[nt] ? __ldg((const uint4 *)(xrow[nt] + off)) : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
            for (int u = 0; u < U; u++)
#pragma unroll
                for (int rt = 0; rt < RT; rt++)
#pragma unroll
                    for (int nt = 0; nt < NT; nt++) te_llama__gemv_mma<FP8>(acc[rt][nt], wv[u][rt][0], wv[u][rt][1], xv[u][nt]);
        }
    }
    if (NORM && blockIdx.x == 0) { /* block 0's warps cover k: the norm output's amax */
        norm_mx = te_llama__warp_max(norm_mx);
        if (lane == 0 && norm_mx > 0.0f) atomicMax((unsigned *)a.x_amax, __float_as_uint(norm_mx));
    }
    /* the warps' partial sums, added in warp order by warp 0 */
#pragma unroll
    for (int rt = 0; rt < RT; rt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) red[warp][(rt * NT + nt) * 4 + e][lane] = acc[rt][nt][e];
    /* Warp 0's other inputs of the epilogue go out before the barrier, so that their L2 round trip overlaps the wait
       for the block's other warps instead of following it: the dequantisation factors, SwiGLU's output scale, the
       rows a STORE adds to and its norm weights, a ROPE_KV's cos / sin and cache rows. The main loop's registers
       are free by then. */
    float si_w = 1.0f, si_x = 1.0f, act_scale = 1.0f, y_in[NT][2][RT][2] = {}, norm_wr[RT][2] = {};
    float rope_c[NT][2] = {}, rope_s[NT][2] = {};
    size_t kv_row[NT][2] = {};
    if (warp == 0) {
        if (FP8 && !EARLY_SCALES) {
            si_w = *a.scale_inv;
            si_x = *a.scale_inv_x;
        }
        if (EPI == TE_LLAMA__EPI_STORE && !FP8 && a.norm_w)
#pragma unroll
            for (int rt = 0; rt < RT; rt++)
#pragma unroll
                for (int h = 0; h < 2; h++) norm_wr[rt][h] = __bfloat162float(a.norm_w[te_llama__gemv_row<EPI>(blockIdx.x * RT + rt, g + 8 * h, a)]);
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int j = 0; j < 2; j++) {
                const int tok = nt * 8 + 2 * t + j;
                if (tok >= a.n) continue;
                if (EPI == TE_LLAMA__EPI_STORE && a.accumulate) {
#pragma unroll
                    for (int rt = 0; rt < RT; rt++)
#pragma unroll
                        for (int h = 0; h < 2; h++)
                            y_in[nt][j][rt][h] = a.y[(size_t)tok * a.m + te_llama__gemv_row<EPI>(blockIdx.x * RT + rt, g + 8 * h, a)];
                } else if (EPI == TE_LLAMA__EPI_ROPE_KV) {
                    const int per_head = a.hd / 16, head = blockIdx.x / per_head, i = 8 * (blockIdx.x - head * per_head) + g;
                    if (head < a.n_heads + a.n_kv) {
                        rope_c[nt][j] = a.rope[(size_t)tok * a.hd + i];
                        rope_s[nt][j] = a.rope[(size_t)tok * a.hd + a.hd / 2 + i];
                    }
                    if (head >= a.n_heads) kv_row[nt][j] = (size_t)a.seq[tok] * a.max_len + a.pos[tok];
                }
            }
    }
    if ((EPI != TE_LLAMA__EPI_STORE && !FP8 && a.ss_in) || (EARLY_SCALES && threadIdx.x < 3)) te_llama__cp_async_wait<0>();
    __syncthreads();
    if (warp) return;
    if (EARLY_SCALES) {
        si_w = epi_scale[0];
        si_x = epi_scale[1];
        act_scale = epi_scale[2];
    }
    float amax = 0.0f;
    const float scale = si_w * si_x;
#pragma unroll
    for (int rt = 0; rt < RT; rt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float s = red[0][(rt * NT + nt) * 4 + e][lane];
                for (int w = 1; w < KW; w++) s += red[w][(rt * NT + nt) * 4 + e][lane];
                acc[rt][nt][e] = FP8 ? s * scale : s;
            }
    if (EPI != TE_LLAMA__EPI_STORE && !FP8 && a.ss_in) { /* the folded norm: sum_k W (w x) times inv, one token */
        float ss = 0.0f;
        for (int p = lane; p < a.ss_parts; p += 32) ss += ssm[p];
        const float inv = 1.0f / sqrtf(te_llama__warp_sum(ss) / (float)a.k + a.eps);
#pragma unroll
        for (int rt = 0; rt < RT; rt++)
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) acc[rt][nt][e] *= inv;
    }
    float sq[NT][2] = {}; /* STORE with ss_out: this lane's y^2 of each of its tokens */
    /* acc[rt][nt][e]: row g (e < 2) or g + 8 (e >= 2) of tile rt, token nt * 8 + 2t + (e & 1) */
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int j = 0; j < 2; j++) {
            const int tok = nt * 8 + 2 * t + j;
            if (tok >= a.n) continue;
            if (EPI == TE_LLAMA__EPI_STORE) {
#pragma unroll
                for (int rt = 0; rt < RT; rt++)
#pragma unroll
                    for (int h = 0; h < 2; h++) {
                        const int row = te_llama__gemv_row<EPI>(blockIdx.x * RT + rt, g + 8 * h, a);
                        const float v = a.accumulate ? y_in[nt][j][rt][h] + acc[rt][nt][2 * h + j] : acc[rt][nt][2 * h + j];
                        a.y[(size_t)tok * a.m + row] = v;
                        if (!FP8 && a.norm_w) a.xg[(size_t)tok * a.m + row] = __float2bfloat16(norm_wr[rt][h] * v);
                        if (a.ss_out) sq[nt][j] += v * v;
                    }
            } else if (EPI == TE_LLAMA__EPI_ROPE_KV) {
                const int per_head = a.hd / 16, head = blockIdx.x / per_head, i = 8 * (blockIdx.x - head * per_head) + g;
                const int half = a.hd / 2, q_dim = a.n_heads * a.hd, kv_dim = a.n_kv * a.hd;
                const float lo = acc[0][nt][j], hi = acc[0][nt][2 + j];
                if (head < a.n_heads + a.n_kv) { /* q or k: rotate the pair (i, i + half) */
                    float ra, rb;
                    te_llama__rope_pair(lo, hi, rope_c[nt][j], rope_s[nt][j], &ra, &rb);
                    if (head < a.n_heads) {
                        float *q = a.qkv + (size_t)tok * (q_dim + 2 * kv_dim) + (size_t)head * a.hd;
                        q[i] = ra;
                        q[i + half] = rb;
                    } else {
                        te_llama__bf16 *k = a.kc + kv_row[nt][j] * kv_dim + (size_t)(head - a.n_heads) * a.hd;
                        k[i] = __float2bfloat16(ra);
                        k[i + half] = __float2bfloat16(rb);
                    }
                } else {
                    te_llama__bf16 *v = a.vc + kv_row[nt][j] * kv_dim + (size_t)(head - a.n_heads - a.n_kv) * a.hd;
                    v[i] = __float2bfloat16(lo);
                    v[i + half] = __float2bfloat16(hi);
                }
            } else { /* SWIGLU: tile 0 is gate rows, tile 1 the matching up rows */
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const size_t at = (size_t)tok * a.inter + (size_t)blockIdx.x * 16 + g + 8 * h;
                    if (FP8) {
                        const float gt = acc[0][nt][2 * h + j], up = acc[RT - 1][nt][2 * h + j];
                        const float v = gt / (1.0f + expf(-gt)) * up;
                        ((uint8_t *)a.act)[at] = te_llama__e4m3_scaled(v, act_scale);
                        amax = fmaxf(amax, fabsf(v));
                    } else { /* gate and up rounded to bf16 first, as cuBLASLt's fc1 writes them for te_llama__swiglu_kernel */
                        const float gt = __bfloat162float(__float2bfloat16(acc[0][nt][2 * h + j]));
                        const float up = __bfloat162float(__float2bfloat16(acc[RT - 1][nt][2 * h + j]));
                        ((te_llama__bf16 *)a.act)[at] = __float2bfloat16(gt / (1.0f + expf(-gt)) * up);
                    }
                }
            }
        }
    if (EPI == TE_LLAMA__EPI_STORE && a.ss_out) /* the block's sum of y^2 a token: over g (lanes 4 g + t) */
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int j = 0; j < 2; j++) {
                float q = sq[nt][j];
                for (int o = 4; o < 32; o <<= 1) q += __shfl_xor_sync(0xffffffffu, q, o);
                const int tok = nt * 8 + 2 * t + j;
                if (g == 0 && tok < a.n) a.ss_out[(size_t)tok * gridDim.x + blockIdx.x] = q;
            }
    if (EPI == TE_LLAMA__EPI_SWIGLU && FP8) {
        amax = te_llama__warp_max(amax);
        if (lane == 0 && a.act_amax_part) a.act_amax_part[blockIdx.x] = amax;
        else if (lane == 0) atomicMax((unsigned *)a.act_amax, __float_as_uint(amax));
    }
}

/* silu(g) * u, the expression of every SwiGLU kernel here */
__device__ __forceinline__ float te_llama__silu_mul(float g, float u) { return g / (1.0f + expf(-g)) * u; }

/* The SwiGLU kernels' grid: blockIdx.x and the threads stride over a row's 16-byte chunks (or elements, when I is
   not a multiple of 8), blockIdx.y over the rows, 256 threads a block and at most 1024 blocks: no division in the
   loop. The first form (one element a thread, grid-stride with a 64-bit division for the row) took 57 us a layer of
   the 1B prefill for 100 MB, 2.4x its bytes (bench/NOTES.md, run 12). */
#define TE_LLAMA__SWIGLU_THREADS 256
static dim3 te_llama__swiglu_grid(int n, int I) {
    const int per_row = I % 8 == 0 ? I / 8 : I;
    int x = (per_row + TE_LLAMA__SWIGLU_THREADS - 1) / TE_LLAMA__SWIGLU_THREADS, y;
    x = x < 1 ? 1 : x > 64 ? 64 : x;
    y = n < 1024 / x ? n : 1024 / x;
    return dim3((unsigned)x, (unsigned)(y < 1 ? 1 : y));
}
/* defined with the FP8 kernels, whose helpers it shares */
template <typename T>
__global__ void __launch_bounds__(TE_LLAMA__SWIGLU_THREADS)
te_llama__swiglu_kernel(const T *mlp, uint8_t *out, te_llama__bf16 *out_bf16, int n, int I, const float *scale, float *amax);

#define TE_LLAMA__SAMPLE_THREADS 1024

/* A float's bit pattern as an unsigned key in the same order as the floats (for bisection on values). */
__device__ __forceinline__ unsigned te_llama__order_key(float f) {
    unsigned u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* Greedy decoding: the first largest logit of each row, ties to the lowest id, NaN never wins (a row of NaN
   gives id 0). Block (s, r) scans slice s of row r (ids [s span, (s + 1) span), span a multiple of 4: 16-byte
   loads strided over the threads when the row allows), writes its (max, id) to part, and the last of the row's
   blocks to finish (a counter per row, reset by that block, so a captured graph replays) merges the slices and
   writes token[r] (and host_token[r] when given: pinned host memory), advancing pos[r] when pos is given. A
   single block a row read the 128k logits of a Llama 3 shape in 20.6 us (bench/NOTES.md, run 6): one SM's share
   of L2. Traffic: vocab fp32 a row, 8 bytes a block. */
#define TE_LLAMA__ARGMAX_THREADS 256
#define TE_LLAMA__ARGMAX_SLICES 64 /* most blocks a row */
#define TE_LLAMA__ARGMAX_SPAN 2048 /* fewest ids a block */

/* (best, bi) = the larger of it and (ob, oi), the lower id on ties; id < 0 marks "nothing yet" */
__device__ __forceinline__ void te_llama__argmax_merge(float &best, int &bi, float ob, int oi) {
    if (oi >= 0 && (bi < 0 || ob > best || (ob == best && oi < bi))) { best = ob; bi = oi; }
}
__device__ __forceinline__ void te_llama__argmax_warp(float &best, int &bi) {
    for (int o = 16; o > 0; o >>= 1) te_llama__argmax_merge(best, bi, __shfl_xor_sync(0xffffffffu, best, o), __shfl_xor_sync(0xffffffffu, bi, o));
}

__global__ void __launch_bounds__(TE_LLAMA__ARGMAX_THREADS)
te_llama__argmax_kernel(const float *logits, int vocab, int span, float *part_v, int *part_i, unsigned *counts,
                        int32_t *token, int32_t *pos, int32_t *host_token) {
    te_llama__pdl_start();
    __shared__ float wb[TE_LLAMA__ARGMAX_THREADS / 32];
    __shared__ int wi[TE_LLAMA__ARGMAX_THREADS / 32];
    __shared__ int last;
    const int s = blockIdx.x, row = blockIdx.y, S = gridDim.x, tid = threadIdx.x, lane = tid & 31;
    const float *lr = logits + (size_t)row * (size_t)vocab;
    const int lo = min(vocab, s * span), hi = min(vocab, lo + span);
    const auto finish = [&](int best_id) { /* the row's id (a row of NaN gives 0) */
        const int id = best_id < 0 ? 0 : best_id;
        token[row] = id;
        if (pos) pos[row] += 1;
        if (host_token) host_token[row] = id;
    };
    float best = -INFINITY;
    int bi = -1;
    /* each thread meets its ids in increasing order, so a strict > keeps its first maximum */
    if ((vocab & 3) == 0 && ((size_t)logits & 15) == 0) {
        for (int i4 = lo / 4 + tid; i4 < hi / 4; i4 += TE_LLAMA__ARGMAX_THREADS) {
            const float4 v4 = ((const float4 *)lr)[i4];
            const float v[4] = {v4.x, v4.y, v4.z, v4.w};
#pragma unroll
            for (int e = 0; e < 4; e++)
                if (bi < 0 ? v[e] == v[e] : v[e] > best) { best = v[e]; bi = 4 * i4 + e; }
        }
    } else {
        for (int i = lo + tid; i < hi; i += TE_LLAMA__ARGMAX_THREADS) {
            const float v = lr[i];
            if (bi < 0 ? v == v : v > best) { best = v; bi = i; }
        }
    }
    te_llama__argmax_warp(best, bi);
    if (lane == 0) { wb[tid >> 5] = best; wi[tid >> 5] = bi; }
    __syncthreads();
    if (tid >= 32) return;
    best = lane < TE_LLAMA__ARGMAX_THREADS / 32 ? wb[lane] : -INFINITY;
    bi = lane < TE_LLAMA__ARGMAX_THREADS / 32 ? wi[lane] : -1;
    te_llama__argmax_warp(best, bi);
    if (S == 1) {
        if (lane == 0) finish(bi);
        return;
    }
    /* the last block of the row merges: every writer fences its (max, id) before the count goes up, the last
       block fences before reading them (through L2) */
    if (lane == 0) {
        part_v[(size_t)row * S + s] = best;
        part_i[(size_t)row * S + s] = bi;
        __threadfence();
        last = atomicAdd(&counts[row], 1u) == (unsigned)S - 1;
        if (last) counts[row] = 0;
    }
    __syncwarp();
    if (!last) return;
    __threadfence();
    best = -INFINITY;
    bi = -1;
    for (int j = lane; j < S; j += 32) te_llama__argmax_merge(best, bi, __ldcg(part_v + (size_t)row * S + j), __ldcg(part_i + (size_t)row * S + j));
    te_llama__argmax_warp(best, bi);
    if (lane == 0) finish(bi);
}

/* One token from each row of logits by sampling (temperature > 0; greedy rows take te_llama__argmax_kernel), one
   block of 1024 threads a row: block b reads logits + b * vocab, draws with rng[b], writes token[b] and advances
   pos[b]. Each thread owns a contiguous chunk of the row's ids. p_i = exp((l_i - max) / T); top_k keeps the ids
   whose logit key is >= the largest key that still leaves k ids (32 counting passes over the vocabulary); top_p
   then keeps those >= the largest key whose kept mass reaches top_p of the top_k mass (32 summing passes); the
   draw u * mass (xorshift64* state in rng[b], as te_llama_sample's) picks the id whose interval in id order holds
   it. Writes token[b] (and host_token[b] when given), and advances pos[b] when pos is given (the next decode
   step's position). Traffic per row: vocab fp32 reads per pass (3 to 67), mostly from L2. */
__global__ void __launch_bounds__(TE_LLAMA__SAMPLE_THREADS)
te_llama__sample_kernel(const float *logits, int vocab, float temperature, int top_k, float top_p,
                        unsigned long long *rng, int32_t *token, int32_t *pos, int32_t *host_token) {
    te_llama__pdl_start();
    __shared__ float red[32];
    __shared__ int ired[32];
    __shared__ float scan[TE_LLAMA__SAMPLE_THREADS];
    __shared__ float draw;
    const int tid = threadIdx.x, chunk = (vocab + TE_LLAMA__SAMPLE_THREADS - 1) / TE_LLAMA__SAMPLE_THREADS;
    const int lo = min(vocab, tid * chunk), hi = min(vocab, lo + chunk);
    logits += (size_t)blockIdx.x * (size_t)vocab; /* this block's row */
    rng += blockIdx.x;
    token += blockIdx.x;
    if (pos) pos += blockIdx.x;
    float mx = -INFINITY;
    for (int i = lo; i < hi; i++) mx = fmaxf(mx, logits[i]);
    mx = te_llama__block_max(mx, red);
    unsigned thr = 0u; /* keep ids whose key >= thr */
    if (top_k > 0 && top_k < vocab) {
        for (int b = 31; b >= 0; b--) {
            unsigned c = thr | (1u << b);
            int cnt = 0;
            for (int i = lo; i < hi; i++) cnt += te_llama__order_key(logits[i]) >= c;
            if (te_llama__block_isum(cnt, ired) >= top_k) thr = c;
        }
    }
    if (top_p > 0.0f && top_p < 1.0f) {
        float total = 0.0f;
        for (int i = lo; i < hi; i++)
            if (te_llama__order_key(logits[i]) >= thr) total += expf((logits[i] - mx) / temperature);
        total = te_llama__block_sum(total, red);
        unsigned t2 = 0u;
        for (int b = 31; b >= 0; b--) {
            unsigned c = t2 | (1u << b), cut = c > thr ? c : thr;
            float mass = 0.0f;
            for (int i = lo; i < hi; i++)
                if (te_llama__order_key(logits[i]) >= cut) mass += expf((logits[i] - mx) / temperature);
            if (te_llama__block_sum(mass, red) >= top_p * total) t2 = c;
        }
        if (t2 > thr) thr = t2;
    }
    /* this thread's kept mass, then an inclusive scan over threads: interval [scan[tid-1], scan[tid]) */
    float s = 0.0f;
    int last = -1;
    for (int i = lo; i < hi; i++)
        if (te_llama__order_key(logits[i]) >= thr) { s += expf((logits[i] - mx) / temperature); last = i; }
    scan[tid] = s;
    __syncthreads();
    for (int off = 1; off < TE_LLAMA__SAMPLE_THREADS; off <<= 1) { /* Hillis-Steele */
        float add = tid >= off ? scan[tid - off] : 0.0f;
        __syncthreads();
        scan[tid] += add;
        __syncthreads();
    }
    if (tid == 0) {
        unsigned long long x = *rng ? *rng : 0x9e3779b97f4a7c15ull;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        *rng = x;
        draw = (float)((x * 0x2545f4914f6cdd1dull) >> 40) / 16777216.0f * scan[TE_LLAMA__SAMPLE_THREADS - 1];
    }
    __syncthreads();
    const float r = draw, begin = tid ? scan[tid - 1] : 0.0f;
    int pick = -1;
    if (last >= 0 && r >= begin && r < scan[tid]) {
        float acc = begin;
        for (int i = lo; i < hi && pick < 0; i++)
            if (te_llama__order_key(logits[i]) >= thr) {
                acc += expf((logits[i] - mx) / temperature);
                if (r < acc) pick = i;
            }
        if (pick < 0) pick = last; /* the walk's rounding fell short of the scan's */
    }
    /* one thread at most picked; when none did (r at the very end), the last kept id */
    pick = (int)te_llama__block_max((float)pick, red);
    last = (int)te_llama__block_max((float)last, red);
    const int result = pick >= 0 ? pick : (last >= 0 ? last : 0);
    if (tid == 0) {
        *token = result;
        if (pos) *pos += 1;
        if (host_token) host_token[blockIdx.x] = result;
    }
}

/* =================================================================================================== helpers */

static size_t te_llama__round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

static te_llama_result te_llama__ctx(te_llama_model *m, te_llama__cuda **out) {
    if (!m || !m->backend) return TE_LLAMA__FAIL(TE_LLAMA_ERR_INVALID_ARGUMENT, "model has no CUDA device context");
    *out = (te_llama__cuda *)m->backend;
    return TE_LLAMA_OK;
}

/* The device and stream of the model: every entry point sets the device first (a thread may use several). */
static te_llama_result te_llama__enter(te_llama_model *m, te_llama__cuda **ctx) {
    te_llama_result r;
    if ((r = te_llama__ctx(m, ctx))) return r;
    TE_LLAMA__CU(cudaSetDevice((*ctx)->device));
    return TE_LLAMA_OK;
}

/* Free the loader's staging buffers once loading is over (the first forward). */
static te_llama_result te_llama__drop_staging(te_llama__cuda *ctx) {
    int i;
    for (i = 0; i < ctx->n_staging; i++) {
        TE_LLAMA__CU(cudaEventSynchronize(ctx->staged[i]));
        TE_LLAMA__CU(cudaEventDestroy(ctx->staged[i]));
        TE_LLAMA__CU(cudaFreeHost(ctx->staging[i]));
        ctx->staging[i] = NULL;
    }
    ctx->n_staging = 0;
    return TE_LLAMA_OK;
}

/* Check that every layer can run here: kind "te", eight BF16 device parameters. */
static te_llama_result te_llama__check_model(te_llama_model *m) {
    const te_llama_config *c = &m->config;
    char msg[256];
    int l, p;
    if (c->head_dim > TE_LLAMA__ATT_MAX_HD || c->head_dim % 2) {
        snprintf(msg, sizeof msg, "head_dim %d: the CUDA attention kernel takes even head dims up to %d", c->head_dim, TE_LLAMA__ATT_MAX_HD);
        return TE_LLAMA__FAIL(TE_LLAMA_ERR_UNSUPPORTED, msg);
    }
    if (!m->embed_tokens.on_device || m->embed_tokens.dtype != TE_LLAMA_BF16 || !m->norm.on_device ||
        m->norm.dtype != TE_LLAMA_BF16 || !m->lm_head.on_device || m->lm_head.dtype != TE_LLAMA_BF16) {
        snprintf(msg, sizeof msg, "the CUDA backend runs BF16 device parameters; embed_tokens is %s", te_llama_dtype_name(m->embed_tokens.dtype));
        return TE_LLAMA__FAIL(TE_LLAMA_ERR_UNSUPPORTED, msg);
    }
    for (l = 0; l < c->num_hidden_layers; l++) {
        te_llama_layer *L = m->layers[l];
        if (!L->kind || strcmp(L->kind, "te") != 0 || L->n_params != 8) {
            snprintf(msg, sizeof msg, "layer %d is of kind \"%s\": the CUDA backend runs \"te\" layers only", l, L->kind ? L->kind : "");
            return TE_LLAMA__FAIL(TE_LLAMA_ERR_UNSUPPORTED, msg);
        }
        for (p = 0; p < 8; p++)
            if (!L->params[p].on_device || L->params[p].dtype != TE_LLAMA_BF16) {
                snprintf(msg, sizeof msg, "%s is %s%s: the CUDA backend runs BF16 device parameters", L->params[p].name,
                         te_llama_dtype_name(L->params[p].dtype), L->params[p].on_device ? "" : " in host memory");
                return TE_LLAMA__FAIL(TE_LLAMA_ERR_UNSUPPORTED, msg);
            }
    }
    return TE_LLAMA_OK;
}

/* Grow the per-token scratch to n tokens (waits for the stream first: the old buffers may be in use). */
static te_llama_result te_llama__ensure_tokens(te_llama_model *m, te_llama__cuda *ctx, int n) {
    const te_llama_config *c = &m->config;
    size_t cap, h, q, kv, I, off = 0, o_x, o_xn, o_qkv, o_rope, o_att, o_mlp, o_act, o_ints, o_ss;
    void *p = NULL, *hp;
    cudaError_t e;
    if (n <= ctx->cap_tokens) return TE_LLAMA_OK;
    cap = te_llama__round_up((size_t)n, 64);
    h = (size_t)c->hidden_size; q = (size_t)c->num_attention_heads * c->head_dim;
    kv = (size_t)c->num_key_value_heads * c->head_dim; I = (size_t)c->intermediate_size;
#define TE_LLAMA__PART(o, bytes) do { o = off; off = te_llama__round_up(off + (bytes), TE_LLAMA__ALIGN); } while (0)
    TE_LLAMA__PART(o_x, cap * h * 4);
    TE_LLAMA__PART(o_xn, cap * h * 2);
    TE_LLAMA__PART(o_qkv, cap * (q + 2 * kv) * 4);
    TE_LLAMA__PART(o_rope, cap * (size_t)c->head_dim * 4);
    TE_LLAMA__PART(o_att, cap * q * 2);
    TE_LLAMA__PART(o_mlp, cap * 2 * I * 2);
    TE_LLAMA__PART(o_act, cap * I * 2);
    TE_LLAMA__PART(o_ints, cap * 8 * 4);
    TE_LLAMA__PART(o_ss, h / 16 * 4);
#undef TE_LLAMA__PART
    TE_LLAMA__CU(cudaStreamSynchronize(ctx->stream));
    TE_LLAMA__CU(cudaFree(ctx->scratch));
    te_llama__host_free(&ctx->allocator, ctx->host_ints);
    ctx->scratch = NULL;
    ctx->scratch_bytes = 0;
    ctx->host_ints = NULL;
    ctx->cap_tokens = 0;
    hp = te_llama__host_alloc(&ctx->allocator, cap * 8 * 4);
    if (!hp) return TE_LLAMA__FAIL(TE_LLAMA_ERR_NOMEM, "host copy of the batch indices");
    if ((e = cudaMalloc(&p, off)) != cudaSuccess) {
        te_llama__host_free(&ctx->allocator, hp);
        return te_llama__cuda_error(e, "cudaMalloc(scratch for a batch of tokens)", __FILE__, __LINE__);
    }
    ctx->scratch = p;
    ctx->scratch_bytes = off;
    ctx->host_ints = (int32_t *)hp;
    ctx->x = (float *)((char *)p + o_x);
    ctx->xn = (te_llama__bf16 *)((char *)p + o_xn);
    ctx->qkv = (float *)((char *)p + o_qkv);
    ctx->rope = (float *)((char *)p + o_rope);
    ctx->att = (te_llama__bf16 *)((char *)p + o_att);
    ctx->mlp = (te_llama__bf16 *)((char *)p + o_mlp);
    ctx->act = (te_llama__bf16 *)((char *)p + o_act);
    ctx->ints = (int32_t *)((char *)p + o_ints);
    ctx->norm_ss = (float *)((char *)p + o_ss);
    ctx->cap_tokens = (int)cap;
    return TE_LLAMA_OK;
}

/* Bytes of the logits allocation for rows rows: the logits, then the greedy argmax's partials and counters. */
static size_t te_llama__rows_bytes(int rows, int vocab) {
    return (size_t)rows * ((size_t)vocab * sizeof(float) + TE_LLAMA__ARGMAX_SLICES * (sizeof(float) + sizeof(int)) + sizeof(unsigned));
}

static te_llama_result te_llama__ensure_rows(te_llama_model *m, te_llama__cuda *ctx, int rows) {
    void *p = NULL;
    cudaError_t e;
    if (rows > TE_LLAMA__LOGIT_ROWS) rows = TE_LLAMA__LOGIT_ROWS;
    if (rows <= ctx->cap_rows) return TE_LLAMA_OK;
    TE_LLAMA__CU(cudaStreamSynchronize(ctx->stream));
    TE_LLAMA__CU(cudaFree(ctx->logits));
    ctx->logits = NULL;
    ctx->cap_rows = 0;
    if ((e = cudaMalloc(&p, te_llama__rows_bytes(rows, m->config.vocab_size))) != cudaSuccess)
        return te_llama__cuda_error(e, "cudaMalloc(logits)", __FILE__, __LINE__);
    ctx->logits = (float *)p;
    ctx->argmax_v = ctx->logits + (size_t)rows * (size_t)m->config.vocab_size;
    ctx->argmax_i = (int *)(ctx->argmax_v + (size_t)rows * TE_LLAMA__ARGMAX_SLICES);
    ctx->argmax_count = (unsigned *)(ctx->argmax_i + (size_t)rows * TE_LLAMA__ARGMAX_SLICES);
    ctx->cap_rows = rows;
    TE_LLAMA__CU(cudaMemsetAsync(ctx->argmax_count, 0, sizeof(unsigned) * (size_t)rows, ctx->stream));
    return TE_LLAMA_OK;
}

/* One token from each of rows rows of ctx->logits into token[] (advancing pos[] when given, and into host_token[]
   when given: pinned host memory, which the kernel writes itself): the greedy argmax when temperature <= 0, else
   the sampler with rng[]. Stream work (capturable). */
static void te_llama__sample(te_llama__cuda *ctx, int rows, int vocab, float temperature, int top_k, float top_p,
                             unsigned long long *rng, int32_t *token, int32_t *pos, int32_t *host_token) {
    if (temperature > 0.0f) {
        te_llama__launch(ctx, te_llama__sample_kernel, dim3((unsigned)rows), dim3(TE_LLAMA__SAMPLE_THREADS), 0, ctx->logits, vocab,
                         temperature, top_k, top_p, rng, token, pos, host_token);
        return;
    }
    int slices = (vocab + TE_LLAMA__ARGMAX_SPAN - 1) / TE_LLAMA__ARGMAX_SPAN;
    slices = slices > TE_LLAMA__ARGMAX_SLICES ? TE_LLAMA__ARGMAX_SLICES : slices;
    const int span = (int)te_llama__round_up((size_t)((vocab + slices - 1) / slices), 4);
    te_llama__launch(ctx, te_llama__argmax_kernel, dim3((unsigned)slices, (unsigned)rows), dim3(TE_LLAMA__ARGMAX_THREADS), 0,
                     (const float *)ctx->logits, vocab, span, ctx->argmax_v, ctx->argmax_i, ctx->argmax_count, token, pos, host_token);
}

/* Grow a device buffer of *have elements of elem bytes to n (zeroed when zero), freeing the old one after the
   stream is done with it. */
static te_llama_result te_llama__grow(te_llama__cuda *ctx, void **buf, size_t *have, size_t n, size_t elem, int zero,
                                      const char *what) {
    cudaError_t e;
    if (n <= *have) return TE_LLAMA_OK;
    TE_LLAMA__CU(cudaStreamSynchronize(ctx->stream));
    TE_LLAMA__CU(cudaFree(*buf));
    *buf = NULL;
    *have = 0;
    if ((e = cudaMalloc(buf, n * elem)) != cudaSuccess) {
        *buf = NULL;
        return te_llama__cuda_error(e, what, __FILE__, __LINE__);
    }
    if (zero) TE_LLAMA__CU(cudaMemsetAsync(*buf, 0, n * elem, ctx->stream));
    *have = n;
    return TE_LLAMA_OK;
}

/* Grow the decode attention's split partials to n_part floats and its split counters to n_counts (zeroed:
   te_llama__decode_attention2_kernel leaves them 0 after each launch). Outside a graph capture only: a decode
   step runs plainly before the step is captured, with the same shape, so the capture finds them large enough. */
static te_llama_result te_llama__ensure_split(te_llama__cuda *ctx, size_t n_part, size_t n_counts) {
    void *part = ctx->part, *count = ctx->part_count;
    te_llama_result r = te_llama__grow(ctx, &part, &ctx->part_floats, n_part, sizeof(float), 0,
                                       "cudaMalloc(split attention partials)");
    ctx->part = (float *)part;
    if (r) return r;
    r = te_llama__grow(ctx, &count, &ctx->part_counts, n_counts, sizeof(unsigned), 1, "cudaMalloc(split attention counters)");
    ctx->part_count = (unsigned *)count;
    return r;
}

static te_llama_result te_llama__ensure_inv_freq(te_llama_model *m, te_llama__cuda *ctx) {
    size_t bytes = sizeof(float) * (size_t)(m->config.head_dim / 2);
    if (ctx->inv_freq) return TE_LLAMA_OK;
    TE_LLAMA__CU(cudaMalloc((void **)&ctx->inv_freq, bytes));
    TE_LLAMA__CU(cudaMemcpy(ctx->inv_freq, m->rope_inv_freq, bytes, cudaMemcpyHostToDevice));
    return TE_LLAMA_OK;
}

/* ====================================================================================================== GEMM */

static void te_llama__plan_destroy(te_llama__plan *p) {
    if (p->desc) cublasLtMatmulDescDestroy(p->desc);
    if (p->a) cublasLtMatrixLayoutDestroy(p->a);
    if (p->b) cublasLtMatrixLayoutDestroy(p->b);
    if (p->c) cublasLtMatrixLayoutDestroy(p->c);
    memset(p, 0, sizeof *p);
}

#define TE_LLAMA__ALGOS 8        /* heuristic candidates timed for each new GEMM shape */
#define TE_LLAMA__TUNE_MIN_N 64  /* below this many tokens the heuristic's choice stands (see te_llama__plan_tune) */

/* Descriptors for p's shape and the heuristic's first TE_LLAMA__ALGOS algorithms (*n_algos of them). An FP8 plan
   (p->fp8) has E4M3 A and B, the two dequantisation factors as device scale pointers (a_scale for W, b_scale for
   X; set again at every call, since they differ by layer) and fast accumulation when p->fp8 == 2. When cuBLASLt
   has no FP8 algorithm for the shape the result is TE_LLAMA_ERR_UNSUPPORTED. */
static te_llama_result te_llama__plan_make(te_llama__cuda *ctx, te_llama__plan *p, cublasLtMatmulHeuristicResult_t *res,
                                           int *n_algos, const float *a_scale, const float *b_scale) {
    cublasOperation_t ta = p->ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb = p->tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cudaDataType_t ab = p->fp8 ? CUDA_R_8F_E4M3 : CUDA_R_16BF;
    cublasLtMatmulPreference_t pref = NULL;
    size_t ws = TE_LLAMA__WORKSPACE_BYTES;
    cublasStatus_t s;
    *n_algos = 0;
    TE_LLAMA__LT(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    TE_LLAMA__LT(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    TE_LLAMA__LT(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    if (p->fp8) {
        const int8_t fast = p->fp8 == 2;
        TE_LLAMA__LT(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof fast));
        TE_LLAMA__LT(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &a_scale, sizeof a_scale));
        TE_LLAMA__LT(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &b_scale, sizeof b_scale));
    }
    /* column-major view: A stored (k, m) when transposed else (m, k), B stored (n, k) when transposed else (k, n),
       C stored (m, n); the forward's A = W (k, m), B = X (k, n), C = Y (m, n) */
    if (p->ta) TE_LLAMA__LT(cublasLtMatrixLayoutCreate(&p->a, ab, (uint64_t)p->k, (uint64_t)p->m, (int64_t)p->k));
    else TE_LLAMA__LT(cublasLtMatrixLayoutCreate(&p->a, ab, (uint64_t)p->m, (uint64_t)p->k, (int64_t)p->m));
    if (p->tb) TE_LLAMA__LT(cublasLtMatrixLayoutCreate(&p->b, ab, (uint64_t)p->n, (uint64_t)p->k, (int64_t)p->n));
    else TE_LLAMA__LT(cublasLtMatrixLayoutCreate(&p->b, ab, (uint64_t)p->k, (uint64_t)p->n, (int64_t)p->k));
    TE_LLAMA__LT(cublasLtMatrixLayoutCreate(&p->c, p->ctype, (uint64_t)p->m, (uint64_t)p->n, (int64_t)p->m));
    TE_LLAMA__LT(cublasLtMatmulPreferenceCreate(&pref));
    s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulAlgoGetHeuristic(ctx->lt, p->desc, p->a, p->b, p->c, p->c, pref, TE_LLAMA__ALGOS, res, n_algos);
    cublasLtMatmulPreferenceDestroy(pref);
    if (p->fp8 && (s == CUBLAS_STATUS_NOT_SUPPORTED || (s == CUBLAS_STATUS_SUCCESS && *n_algos < 1))) {
        char msg[200];
        snprintf(msg, sizeof msg, "cuBLASLt has no algorithm for a %d x %d x %d FP8 GEMM (E4M3 x E4M3 -> %s) on this device",
                 p->m, p->n, p->k, p->ctype == CUDA_R_32F ? "fp32" : "bf16");
        return TE_LLAMA__FAIL(TE_LLAMA_ERR_UNSUPPORTED, msg);
    }
    if (s != CUBLAS_STATUS_SUCCESS) return te_llama__cublas_error(s, "cublasLtMatmulAlgoGetHeuristic", __FILE__, __LINE__);
    if (*n_algos < 1) {
        char msg[160];
        snprintf(msg, sizeof msg, "cuBLASLt has no algorithm for a %d x %d x %d bf16 GEMM (%c%c)", p->m, p->n, p->k,
                 p->ta ? 'T' : 'N', p->tb ? 'T' : 'N');
        return TE_LLAMA__FAIL(TE_LLAMA_ERR_CUDA, msg);
    }
    p->algo = res[0].algo;
    return TE_LLAMA_OK;
}

/* Pick the fastest of the heuristic's candidates on the call's own operands, for GEMMs of at least 64 tokens
   (prefill), where the heuristic's first choice is not always the fastest. Not for decode shapes: there a GEMM is
   a stream of weights that come from DRAM once per step, while back-to-back timing finds them in L2, and the
   kernels it then prefers ran slower in the real step (bench/NOTES.md, run 3). Each candidate runs once to warm up,
   then 3 times, into a scratch output (beta = 0: the real output is not touched). Never inside a
   graph capture: a shape's first call runs plainly (te_llama_cuda_generate's first decode step). The timings run
   a few ms once per shape; ties and errors keep the heuristic's order. */
static te_llama_result te_llama__plan_tune(te_llama__cuda *ctx, te_llama__plan *p, const cublasLtMatmulHeuristicResult_t *res,
                                           int n_algos, const void *W, const void *X) {
    cudaEvent_t e0 = NULL, e1 = NULL;
    void *y = NULL;
    float best = 0.0f;
    const float alpha = 1.0f, beta = 0.0f;
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    int i, rep;
    if (n_algos < 2 || p->n < TE_LLAMA__TUNE_MIN_N) return TE_LLAMA_OK;
    TE_LLAMA__CU(cudaStreamIsCapturing(ctx->stream, &cs));
    if (cs != cudaStreamCaptureStatusNone) return TE_LLAMA_OK;
    if (cudaMalloc(&y, (size_t)p->m * (size_t)p->n * (p->ctype == CUDA_R_32F ? 4 : 2)) != cudaSuccess) {
        (void)cudaGetLastError(); /* no room to time: the heuristic's choice */
        return TE_LLAMA_OK;
    }
    if (cudaEventCreate(&e0) != cudaSuccess || cudaEventCreate(&e1) != cudaSuccess) goto done;
    for (i = 0; i < n_algos; i++) {
        float ms = 0.0f;
        cublasStatus_t s = CUBLAS_STATUS_SUCCESS;
        for (rep = 0; rep < 4 && s == CUBLAS_STATUS_SUCCESS; rep++) {
            if (rep == 1) cudaEventRecord(e0, ctx->stream);
            s = cublasLtMatmul(ctx->lt, p->desc, &alpha, W, p->a, X, p->b, &beta, y, p->c, y, p->c, &res[i].algo,
                               ctx->workspace, TE_LLAMA__WORKSPACE_BYTES, ctx->stream);
        }
        if (s != CUBLAS_STATUS_SUCCESS) continue;
        cudaEventRecord(e1, ctx->stream);
        if (cudaEventSynchronize(e1) != cudaSuccess || cudaEventElapsedTime(&ms, e0, e1) != cudaSuccess) break;
        if (i == 0 || ms < best * 0.97f) { best = ms; p->algo = res[i].algo; }
    }
done:
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    (void)cudaGetLastError();
    TE_LLAMA__CU(cudaStreamSynchronize(ctx->stream));
    TE_LLAMA__CU(cudaFree(y));
    return TE_LLAMA_OK;
}

/* The cached plan of a GEMM shape (made, and timed for 64 tokens or more, on first use); NULL with the error in *r. */
static te_llama__plan *te_llama__plan_get(te_llama__cuda *ctx, int fp8, int ta, int tb, int m, int n, int k, cudaDataType_t ctype,
                                          int accumulate, const void *A, const void *B, const float *a_scale,
                                          const float *b_scale, te_llama_result *r) {
    te_llama__plan *p = NULL;
    cublasLtMatmulHeuristicResult_t res[TE_LLAMA__ALGOS];
    int i, n_algos = 0;
    for (i = 0; i < ctx->n_plans; i++) {
        te_llama__plan *q = &ctx->plans[i];
        if (q->fp8 == fp8 && q->ta == ta && q->tb == tb && q->m == m && q->n == n && q->k == k && q->ctype == ctype &&
            q->accumulate == accumulate)
            return q;
    }
    if (ctx->n_plans < TE_LLAMA__MAX_PLANS) p = &ctx->plans[ctx->n_plans++];
    else { p = &ctx->plans[ctx->next_plan]; ctx->next_plan = (ctx->next_plan + 1) % TE_LLAMA__MAX_PLANS; }
    te_llama__plan_destroy(p);
    p->fp8 = fp8; p->ta = ta; p->tb = tb; p->m = m; p->n = n; p->k = k; p->ctype = ctype; p->accumulate = accumulate;
    if ((*r = te_llama__plan_make(ctx, p, res, &n_algos, a_scale, b_scale)) || (*r = te_llama__plan_tune(ctx, p, res, n_algos, A, B))) {
        te_llama__plan_destroy(p);
        p->m = -1; /* matches nothing; the slot is reused */
        return NULL;
    }
    return p;
}

/* D = op(A) op(B) (+ C when accumulate), column-major: D and C (m, n) with leading dimension m, op(A) (m, k),
   op(B) (k, n), A and B bf16 stored densely (see te_llama__plan_make), D and C of ctype; C may be D. Plans are
   cached by shape and transposes; the heuristic and the timing run once per shape. */
static te_llama_result te_llama__gemm_op(te_llama__cuda *ctx, int ta, int tb, const void *A, const void *B, const void *C,
                                         void *D, cudaDataType_t ctype, int m, int n, int k, int accumulate) {
    const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    te_llama_result r = TE_LLAMA_OK;
    te_llama__plan *p = te_llama__plan_get(ctx, 0, ta, tb, m, n, k, ctype, accumulate, A, B, NULL, NULL, &r);
    if (!p) return r;
    TE_LLAMA__LT(cublasLtMatmul(ctx->lt, p->desc, &alpha, A, p->a, B, p->b, &beta, accumulate ? C : D, p->c, D, p->c, &p->algo,
                                ctx->workspace, TE_LLAMA__WORKSPACE_BYTES, ctx->stream));
    return TE_LLAMA_OK;
}

/* The FP8 GEMM of a prefill (TE's fp8 GEMM, "TN", the only FP8 layout before Blackwell): Y (n, m) row-major, fp32
   or bf16 (ctype), = (X (n, k) E4M3 * *x_scale_inv) @ (W (m, k) E4M3 * *w_scale_inv)^T (+ Y when accumulate:
   beta = 1, the residual add), fp32 accumulation, with fast accumulation (no periodic promotion of the tensor
   cores' partial sums, TE's choice for the forward) when fast. The scales are device floats read when the GEMM
   runs. cuBLASLt's FP8 rules: m and k multiples of 16 (te_llama_cuda_fp8_enable checks the model), 16-byte
   aligned pointers, the two scale pointers included (te_llama__fp8_lt_scale_inv). TE_LLAMA_ERR_UNSUPPORTED when
   cuBLASLt has no FP8 algorithm for the shape. */
static te_llama_result te_llama__gemm_fp8(te_llama__cuda *ctx, const uint8_t *W, const float *w_scale_inv, const uint8_t *X,
                                          const float *x_scale_inv, void *Y, cudaDataType_t ctype, int m, int n, int k,
                                          int accumulate, int fast) {
    const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    te_llama_result r = TE_LLAMA_OK;
    te_llama__plan *p;
    if (m % 16 || k % 16 || n < 1) {
        char msg[160];
        snprintf(msg, sizeof msg, "FP8 GEMM of %d x %d x %d (rows x tokens x inner): rows and inner must be multiples of 16", m, n, k);
        return TE_LLAMA__FAIL(TE_LLAMA_ERR_INVALID_ARGUMENT, msg);
    }
    if (((uintptr_t)w_scale_inv | (uintptr_t)x_scale_inv) & 15) /* cublasLtMatmul: NOT_SUPPORTED, no reason given */
        return TE_LLAMA__FAIL(TE_LLAMA_ERR_INVALID_ARGUMENT, "FP8 GEMM: the scale pointers must be 16-byte aligned");
    if (!(p = te_llama__plan_get(ctx, fast ? 2 : 1, 1, 0, m, n, k, ctype, accumulate, W, X, w_scale_inv, x_scale_inv, &r))) return r;
    TE_LLAMA__LT(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &w_scale_inv, sizeof w_scale_inv));
    TE_LLAMA__LT(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &x_scale_inv, sizeof x_scale_inv));
    TE_LLAMA__LT(cublasLtMatmul(ctx->lt, p->desc, &alpha, W, p->a, X, p->b, &beta, Y, p->c, Y, p->c, &p->algo,
                                ctx->workspace, TE_LLAMA__WORKSPACE_BYTES, ctx->stream));
    return TE_LLAMA_OK;
}

/* Y (n, m) row-major = X (n, k) @ W^T (+ Y when accumulate): W (m, k) row-major bf16 as nn.Linear stores it,
   X bf16, Y fp32 or bf16. In cuBLAS's column-major terms Y^T = op(W') X' with W' the (k, m) column-major view of W
   and op = transpose: the "TN" GEMM. */
static te_llama_result te_llama__gemm(te_llama__cuda *ctx, const void *W, const void *X, void *Y, cudaDataType_t ctype,
                                      int m, int n, int k, int accumulate) {
    return te_llama__gemm_op(ctx, 1, 0, W, X, Y, Y, ctype, m, n, k, accumulate);
}

/* Whether a GEMM of n tokens, m output rows and k inputs takes the small-batch GEMV (te_llama__gemv_kernel). */
static int te_llama__gemv_ok(int n, int m, int k) {
    return n >= 1 && n <= TE_LLAMA__GEMV_MAX_N && m % 16 == 0 && k % 64 == 0 && k > 0;
}

/* Dynamic shared memory of a GEMV block of kw warps: its partial sums, red (kw, RT NT 4, 32) floats, then with a
   folded norm (E4M3) each warp's 256-byte stage (te_llama__gemv_norm_fp8). */
static size_t te_llama__gemv_smem(int kw, int nt, int rt, int fold) {
    return sizeof(float) * (size_t)kw * (size_t)(rt * nt * 4 * 32) + (fold ? (size_t)256 * kw : 0);
}

/* The k split: kw warps a block. A decode GEMV block is bound by latency: it takes about (1 + rounds) rounds of
   loads, rounds = its warps' chunks / U (the 1: the first loads' wait, the partial-sum reduction, the epilogue),
   and the grid runs in `waves` at the occupancy the compiled kernel allows (its registers decide it). So kw
   minimises waves x (1 + rounds), ties to fewer warps. The previous rule (the most warps resident averaged over
   the waves) gave the 8B QKV (384 blocks, 128 chunks) 32 warps in 3 waves of one round each: 204.5 tok/s against
   210.9 with 8 warps in one wave of 4 rounds. Of 10 GEMVs swept (bench/NOTES.md, run 8, call 1) its pick is the
   measured best or within 0.3% of it for 9; the 8B FP8 fc1 measured 3% faster at 2 warps than at its 5. Never
   more warps than chunks of k. */
template <int NT, int RT, int EPI, bool FP8, bool NORM>
static int te_llama__gemv_warps(te_llama__cuda *ctx, int blocks, int chunks) {
    static_assert(TE_LLAMA__GEMV_MAX_KW < 33, "te_llama__cuda.gemv_occ");
    constexpr int U = te_llama__gemv_u(RT, FP8); /* chunks in flight a warp */
    int *occ = ctx->gemv_occ[NORM ? 11 + EPI : (EPI * 2 + (FP8 ? 1 : 0)) * 2 + NT - 1];
    const int sms = ctx->n_sm > 0 ? ctx->n_sm : 132, most = te_llama__gemv_max_warps(RT, NORM);
    long best_cost = -1;
    int kw, best = 1;
    for (kw = 1; kw <= most && kw <= chunks; kw++) {
        long waves, rounds, cost;
        if (!occ[kw] && (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ[kw], te_llama__gemv_kernel<NT, RT, EPI, FP8, NORM>, 32 * kw,
                                                                       te_llama__gemv_smem(kw, NT, RT, NORM)) ||
                         occ[kw] < 1))
            occ[kw] = 1;
        waves = (blocks + (long)occ[kw] * sms - 1) / ((long)occ[kw] * sms);
        rounds = (chunks + (long)kw * U - 1) / ((long)kw * U);
        cost = waves * (1 + rounds);
        if (best_cost < 0 || cost < best_cost) best_cost = cost, best = kw;
    }
    return best;
}

/* Launch the GEMV over `blocks` blocks (one per tile, or per gate/up tile pair), kw warps a block, each with its
   partial sums in dynamic shared memory (and an E4M3 folded norm's stage). */
template <int EPI, bool FP8>
static te_llama_result te_llama__gemv(te_llama__cuda *ctx, const te_llama__gemv_args &a, int blocks) {
    constexpr int RT = EPI == TE_LLAMA__EPI_SWIGLU ? 2 : 1;
    const int chunks = a.k / (FP8 ? 64 : 32), fold = FP8 && EPI != TE_LLAMA__EPI_STORE && a.ss_in;
    if (fold && (a.n != 1 || !a.norm_x || !a.norm_w || !a.x_scale || !a.x_amax || a.ss_parts % 4))
        return TE_LLAMA__FAIL(TE_LLAMA_ERR_INVALID_ARGUMENT, "E4M3 GEMV with a folded norm: one token, its row, weight, scale, amax");
    if constexpr (FP8 && EPI != TE_LLAMA__EPI_STORE) {
        if (fold) {
            const int kw = te_llama__gemv_warps<1, RT, EPI, true, true>(ctx, blocks, chunks);
            te_llama__launch(ctx, te_llama__gemv_kernel<1, RT, EPI, true, true>, dim3((unsigned)blocks), dim3((unsigned)(32 * kw)),
                             te_llama__gemv_smem(kw, 1, RT, 1), a);
            TE_LLAMA__LAUNCHED(gemv);
            return TE_LLAMA_OK;
        }
    }
    if (a.n <= 8) {
        const int kw = te_llama__gemv_warps<1, RT, EPI, FP8, false>(ctx, blocks, chunks);
        te_llama__launch(ctx, te_llama__gemv_kernel<1, RT, EPI, FP8>, dim3((unsigned)blocks), dim3((unsigned)(32 * kw)),
                         te_llama__gemv_smem(kw, 1, RT, 0), a);
    } else {
        const int kw = te_llama__gemv_warps<2, RT, EPI, FP8, false>(ctx, blocks, chunks);
        te_llama__launch(ctx, te_llama__gemv_kernel<2, RT, EPI, FP8>, dim3((unsigned)blocks), dim3((unsigned)(32 * kw)),
                         te_llama__gemv_smem(kw, 2, RT, 0), a);
    }
    TE_LLAMA__LAUNCHED(gemv);
    return TE_LLAMA_OK;
}

/* Y (n, m) fp32 (+)= X (n, k) bf16 @ W^T by the GEMV; with next_norm (the residual stream's next RMSNorm weight,
   folded into the GEMV after this one), also ctx->xn = bf16(next_norm * Y) and ctx->norm_ss its sums of squares. */
static te_llama_result te_llama__gemv_store(te_llama__cuda *ctx, const void *W, const void *X, float *Y, int m, int n, int k,
                                            int accumulate, const te_llama__bf16 *next_norm) {
    te_llama__gemv_args a;
    memset(&a, 0, sizeof a);
    a.w = W; a.x = X; a.y = Y; a.n = n; a.m = m; a.k = k; a.accumulate = accumulate;
    if (next_norm) { a.norm_w = next_norm; a.xg = ctx->xn; a.ss_out = ctx->norm_ss; }
    return te_llama__gemv<TE_LLAMA__EPI_STORE, false>(ctx, a, m / 16);
}

/* =================================================================================================== forward */

/* Which attention kernel a forward runs. */
enum { TE_LLAMA__ATT_GENERAL, TE_LLAMA__ATT_TILED, TE_LLAMA__ATT_DECODE };
typedef struct te_llama__att {
    int mode;
    int n_tiles; /* TILED: entries of the tile table (ctx->ints + 4 cap) */
    int splits;  /* DECODE: blocks per (token, kv head) */
    int keys_ready; /* DECODE: one token a sequence (a decode step), so every key before a token's position is
                       from an earlier forward */
    int global_merge; /* DECODE, tests only: merge the splits through global memory even where a cluster could */
} te_llama__att;

/* The kernel for n tokens; n_tiles: the tiles te_llama__upload_batch found (0 for a decode step, whose positions
   are on the device only). Tiled (tensor cores) when the tokens come in runs averaging 16 or more a tile and the
   head dim is 64 or 128; else the split-KV kernel when a kv head has at most 8 query heads and head_dim <= 256;
   else the general kernel. The split count depends on host values only (n, kv heads, max_len), so a captured
   decode step keeps it. */
static te_llama__att te_llama__att_choose(const te_llama_model *m, const te_llama__cuda *ctx,
                                          const te_llama_kv_cache *cache, int n, int n_tiles) {
    const te_llama_config *c = &m->config;
    const int hd = c->head_dim, nkv = c->num_key_value_heads, G = c->num_attention_heads / nkv;
    te_llama__att a;
    memset(&a, 0, sizeof a);
    a.mode = TE_LLAMA__ATT_GENERAL;
    if ((hd == 64 || hd == 128) && n_tiles > 0 && n_tiles <= 65535 && (long)n_tiles * TE_LLAMA__FA_MIN_ROWS <= (long)n) {
        a.mode = TE_LLAMA__ATT_TILED;
        a.n_tiles = n_tiles;
    } else if (G <= TE_LLAMA__DEC_GMAX && hd <= TE_LLAMA__DEC_MAX_HD && nkv <= 65535) {
        /* a split never covers less than the kernel's least chunk: more splits than the cache holds chunks of it
           would be launched only to exit (the 8B shape at max_len 256: 4 instead of 16) */
        const long least = te_llama__dec2_takes(hd, G) ? te_llama__dec2_round(hd, G, te_llama__dec2_kps(G, n)) : TE_LLAMA__DEC_MIN_CHUNK;
        long blocks = (long)n * nkv, target = 2L * (ctx->n_sm > 0 ? ctx->n_sm : 132);
        long s = (target + blocks - 1) / blocks, most = (cache->max_len + least - 1) / least;
        if (s > most) s = most;
        if (s > TE_LLAMA__DEC_MAX_SPLITS) s = TE_LLAMA__DEC_MAX_SPLITS;
        /* one token where the splits can merge in a cluster (te_llama__dec2_cluster): at most 16, each covering
           more of a long cache; at 2048 positions (33 splits before, merged through global memory) the 8B BF16
           decode ran 1.0% faster and the 1B's 2.8% (bench/NOTES.md, run 17) */
        if (n == 1 && ctx->wgmma && te_llama__dec2_takes(hd, G) && s > TE_LLAMA__DEC_MAX_CLUSTER) s = TE_LLAMA__DEC_MAX_CLUSTER;
        a.mode = TE_LLAMA__ATT_DECODE;
        a.splits = s < 1 ? 1 : (int)s;
    }
    return a;
}

/* The attention output as proj's FP8 input: te_llama__attention's q. With out, the output is quantised there
   (e4m3(float(bf16(o)) * *scale), what te_llama__cast_fp8 makes of the bf16 output) instead of written in bf16; with
   out NULL (calibration) it is written in bf16 as usual. Either way *amax is raised to the largest |bf16(o)|. */
typedef struct te_llama__att_fp8 {
    uint8_t *out;       /* (n, q_dim) E4M3, or NULL: the amax only */
    const float *scale; /* proj's INPUT state: scale, amax */
    float *amax;
    int done;           /* set when the attention kernel did the above (else te_llama__cast_fp8 has to) */
} te_llama__att_fp8;

/* The tensor-core prefill attention over n_tiles tiles (head_dim 64 or 128) into out (and lse when training; q
   for FP8, else NULL): te_llama__flash_wgmma_kernel where the device runs the sm_90a code (two heads a block when
   the group size is even), else te_llama__flash_prefill_kernel; allow_wgmma 0 asks for the latter whatever the
   device (tests). */
static te_llama_result te_llama__flash_prefill(te_llama__cuda *ctx, int allow_wgmma, const float *qkv, const int4 *tiles, int n_tiles,
                                               const te_llama__bf16 *kc, const te_llama__bf16 *vc, te_llama__bf16 *out,
                                               float *lse, te_llama__att_fp8 *q, int nh, int nkv, int hd, int max_len,
                                               float scale_log2) {
    uint8_t *out_q = q ? q->out : NULL;
    const float *q_scale = q ? q->scale : NULL;
    float *q_amax = q ? q->amax : NULL;
    if (out_q) out = NULL; /* E4M3 instead of bf16 */
    if (q) q->done = 1;
    if (allow_wgmma && ctx->wgmma) {
        const int pair = (nh / nkv) % 2 == 0;
        const dim3 grid((unsigned)(pair ? nh / 2 : nh), (unsigned)n_tiles);
#define TE_LLAMA__FA3(HD_, NH_, BN_)                                                                                   \
    te_llama__flash_wgmma_kernel<HD_, NH_, BN_><<<grid, 128 * NH_, te_llama__fa3_smem_bytes(HD_, NH_, BN_), ctx->stream>>>( \
        qkv, tiles, kc, vc, out, lse, out_q, q_scale, q_amax, nh, nkv, max_len, scale_log2)
        if (hd == 128 && pair) TE_LLAMA__FA3(128, 2, 128);
        else if (hd == 128) TE_LLAMA__FA3(128, 1, 64);
        else if (pair) TE_LLAMA__FA3(64, 2, 64);
        else TE_LLAMA__FA3(64, 1, 64);
#undef TE_LLAMA__FA3
        TE_LLAMA__LAUNCHED(flash_wgmma);
        return TE_LLAMA_OK;
    }
    {
        const dim3 grid((unsigned)nh, (unsigned)n_tiles);
        if (hd == 128)
            te_llama__flash_prefill_kernel<128><<<grid, TE_LLAMA__FA_THREADS, te_llama__fa_smem_bytes(128), ctx->stream>>>(
                qkv, tiles, kc, vc, out, lse, out_q, q_scale, q_amax, nh, nkv, max_len, scale_log2);
        else
            te_llama__flash_prefill_kernel<64><<<grid, TE_LLAMA__FA_THREADS, te_llama__fa_smem_bytes(64), ctx->stream>>>(
                qkv, tiles, kc, vc, out, lse, out_q, q_scale, q_amax, nh, nkv, max_len, scale_log2);
        TE_LLAMA__LAUNCHED(flash_prefill);
    }
    return TE_LLAMA_OK;
}

/* Every instance of te_llama__decode_attention2_kernel (head dim, group size, keys a subgroup) as X(HD, G, KPS):
   te_llama__dec2_takes' head dims and group sizes by te_llama__dec2_kps' values. */
#define TE_LLAMA__DEC2_EACH_HD(X, HD_)                                                                                 \
    X(HD_, 1, 2) X(HD_, 1, 4) X(HD_, 2, 2) X(HD_, 2, 4) X(HD_, 4, 2) X(HD_, 4, 4) X(HD_, 8, 2)
#define TE_LLAMA__DEC2_EACH(X)                                                                                         \
    TE_LLAMA__DEC2_EACH_HD(X, 32) TE_LLAMA__DEC2_EACH_HD(X, 64) TE_LLAMA__DEC2_EACH_HD(X, 128)                         \
    TE_LLAMA__DEC2_EACH_HD(X, 256)

/* Once per device context (ctx->stream and ctx->pdl set): whether the device runs this build's sm_90a code
   (ctx->wgmma), and the shared memory the prefill attention kernels need beyond the default 48 KiB. */
static te_llama_result te_llama__attention_init(te_llama__cuda *ctx) {
    if (ctx->pdl) { /* sm_90 or newer: the probe's sm_90a pass runs unless the driver compiled the PTX */
        int *d_has = NULL, has = 0;
        cudaError_t e;
        TE_LLAMA__CU(cudaMalloc((void **)&d_has, sizeof(int)));
        te_llama__wgmma_probe_kernel<<<1, 1, 0, ctx->stream>>>(d_has);
        e = cudaMemcpyAsync(&has, d_has, sizeof has, cudaMemcpyDeviceToHost, ctx->stream);
        if (e == cudaSuccess) e = cudaStreamSynchronize(ctx->stream);
        cudaFree(d_has);
        if (e != cudaSuccess) return te_llama__cuda_error(e, "the sm_90a probe kernel", __FILE__, __LINE__);
        ctx->wgmma = has == 1;
    }
    TE_LLAMA__CU(cudaFuncSetAttribute(te_llama__flash_prefill_kernel<128>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      (int)te_llama__fa_smem_bytes(128)));
    if (ctx->wgmma) {
#define TE_LLAMA__FA3_SMEM(HD_, NH_, BN_)                                                                              \
    TE_LLAMA__CU(cudaFuncSetAttribute(te_llama__flash_wgmma_kernel<HD_, NH_, BN_>, cudaFuncAttributeMaxDynamicSharedMemorySize, \
                                      (int)te_llama__fa3_smem_bytes(HD_, NH_, BN_)))
        TE_LLAMA__FA3_SMEM(128, 2, 128);
        TE_LLAMA__FA3_SMEM(128, 1, 64);
        TE_LLAMA__FA3_SMEM(64, 2, 64);
        TE_LLAMA__FA3_SMEM(64, 1, 64);
#undef TE_LLAMA__FA3_SMEM
#define TE_LLAMA__DEC2_CLUSTER(HD_, G_, KPS_)                                                                          \
    TE_LLAMA__CU(cudaFuncSetAttribute(te_llama__decode_attention2_kernel<HD_, G_, KPS_>,                              \
                                      cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
        TE_LLAMA__DEC2_EACH(TE_LLAMA__DEC2_CLUSTER)
#undef TE_LLAMA__DEC2_CLUSTER
    }
    return TE_LLAMA_OK;
}

/* Whether te_llama__decode_attention2_kernel's splits for n tokens form one thread-block cluster and merge through
   distributed shared memory: where the device runs the sm_90a code, for 2 to 16 splits (Hopper's largest cluster,
   which te_llama__attention_init allows), and for one token, where the merge is the step's critical path (8B
   decode B1 +4.4% FP8, +1.7% BF16). At 16 tokens (384 blocks, 3 splits) the clusters read 2945 against 3001 tok/s
   (8B BF16 decode B16, bench/NOTES.md run 16): there the global merge stays. */
static int te_llama__dec2_cluster(const te_llama__cuda *ctx, const te_llama__att *a, int n) {
    return ctx->wgmma && !a->global_merge && n == 1 && a->splits >= 2 && a->splits <= TE_LLAMA__DEC_MAX_CLUSTER;
}

/* Launch te_llama__decode_attention2_kernel when it has the head dim and group size; 0 when it does not. */
static int te_llama__dec2_launch(te_llama__cuda *ctx, int hd, int G, int n, int S, int nkv, const int32_t *pos,
                                 const int32_t *seq, const te_llama__bf16 *kc, const te_llama__bf16 *vc, int nh,
                                 int max_len, float scale_log2, const te_llama__att_fp8 *q, int keys_early, int cluster) {
    const dim3 grid((unsigned)n, (unsigned)S, (unsigned)nkv);
    const int kps = te_llama__dec2_kps(G, n);
#define TE_LLAMA__DEC2(HD_, G_, KPS_)                                                                                  \
    if (hd == HD_ && G == G_ && kps == KPS_) {                                                                        \
        te_llama__launch_cluster(ctx, cluster ? (unsigned)S : 1u, te_llama__decode_attention2_kernel<HD_, G_, KPS_>,   \
                                 grid, dim3(32 * te_llama__dec2_warps(HD_, G_)), 0, ctx->qkv, pos, seq, kc, vc,       \
                                 ctx->att, ctx->part, ctx->part_count, nh, nkv, max_len, scale_log2,                  \
                                 q ? q->out : NULL, q ? q->scale : NULL, q ? q->amax : NULL, keys_early, cluster);    \
        return 1;                                                                                                     \
    }
    TE_LLAMA__DEC2_EACH(TE_LLAMA__DEC2)
#undef TE_LLAMA__DEC2
    return 0;
}

/* Attention of layer kc/vc for the n tokens, into ctx->att. With q (FP8, proj's input: te_llama__att_fp8), the
   prefill kernels (tiled) and, when q->out is given, te_llama__decode_attention2_kernel do what q asks and set
   q->done; every other path leaves q->done 0 and the bf16 output for te_llama__cast_fp8. */
static te_llama_result te_llama__attention(te_llama_model *m, te_llama__cuda *ctx, const te_llama__att *a,
                                           const te_llama__bf16 *kc, const te_llama__bf16 *vc, int max_len, int n,
                                           te_llama__att_fp8 *q) {
    const te_llama_config *c = &m->config;
    const int hd = c->head_dim, nh = c->num_attention_heads, nkv = c->num_key_value_heads, cap = ctx->cap_tokens;
    const int32_t *pos = ctx->ints + cap, *seq = ctx->ints + 2 * cap;
    const float scale = 1.0f / sqrtf((float)hd), scale_log2 = scale * 1.4426950408889634f;
    if (a->mode == TE_LLAMA__ATT_TILED) {
        const te_llama_result r = te_llama__flash_prefill(ctx, 1, ctx->qkv, (const int4 *)(ctx->ints + 4 * cap), a->n_tiles,
                                                          kc, vc, ctx->att, NULL, q, nh, nkv, hd, max_len, scale_log2);
        if (r) return r;
    } else if (a->mode == TE_LLAMA__ATT_DECODE && te_llama__dec2_launch(ctx, hd, nh / nkv, n, a->splits, nkv, pos, seq, kc, vc,
                                                                         nh, max_len, scale_log2, q && q->out ? q : NULL, a->keys_ready,
                                                                         te_llama__dec2_cluster(ctx, a, n))) {
        TE_LLAMA__LAUNCHED(decode_attention2);
        if (q && q->out) q->done = 1;
    } else if (a->mode == TE_LLAMA__ATT_DECODE) {
        const dim3 grid((unsigned)n, (unsigned)a->splits, (unsigned)nkv);
        te_llama__decode_attention_kernel<<<grid, TE_LLAMA__DEC_THREADS, te_llama__dec_smem_bytes(nh / nkv, hd), ctx->stream>>>(
            ctx->qkv, pos, seq, kc, vc, ctx->att, ctx->part, nh, nkv, hd, max_len, scale_log2);
        TE_LLAMA__LAUNCHED(decode_attention);
        if (a->splits > 1) {
            te_llama__decode_combine_kernel<<<dim3((unsigned)n, (unsigned)nh), TE_LLAMA__DEC_THREADS, 0, ctx->stream>>>(
                ctx->part, pos, ctx->att, nh, hd, a->splits);
            TE_LLAMA__LAUNCHED(decode_combine);
        }
    } else {
        te_llama__attention_kernel<<<dim3((unsigned)n, (unsigned)nh), TE_LLAMA__ATT_THREADS, 0, ctx->stream>>>(
            ctx->qkv, pos, seq, kc, vc, ctx->att, nh, nkv, hd, max_len, scale);
        TE_LLAMA__LAUNCHED(attention);
    }
    return TE_LLAMA_OK;
}

/* The E4M3 GEMV over n tokens, 16 at a time (its largest tile): a's pointers are those of token 0 and move with
   the chunk (X and the outputs by rows, the RoPE table, positions and sequences by tokens). Longer inputs take
   cuBLASLt's FP8 GEMM (te_llama__layer_fp8); this is their fallback where cuBLASLt has no FP8 algorithm. */
template <int EPI>
static te_llama_result te_llama__gemv_fp8_chunks(te_llama__cuda *ctx, const te_llama__gemv_args &a, int blocks, int n) {
    te_llama_result r;
    int c0;
    for (c0 = 0; c0 < n; c0 += TE_LLAMA__GEMV_MAX_N) {
        te_llama__gemv_args c = a;
        c.n = n - c0 < TE_LLAMA__GEMV_MAX_N ? n - c0 : TE_LLAMA__GEMV_MAX_N;
        c.x = (const uint8_t *)a.x + (size_t)c0 * a.k;
        if (EPI == TE_LLAMA__EPI_STORE) c.y = a.y + (size_t)c0 * a.m;
        if (EPI == TE_LLAMA__EPI_ROPE_KV) {
            c.qkv = a.qkv + (size_t)c0 * (size_t)(a.n_heads + 2 * a.n_kv) * a.hd;
            c.rope = a.rope + (size_t)c0 * a.hd;
            c.pos = a.pos + c0;
            c.seq = a.seq + c0;
        }
        if (EPI == TE_LLAMA__EPI_SWIGLU) c.act = (uint8_t *)a.act + (size_t)c0 * a.inter;
        if ((r = te_llama__gemv<EPI, true>(ctx, c, blocks))) return r;
    }
    return TE_LLAMA_OK;
}

/* Y (n, m) fp32 (+)= X (n, k) E4M3 @ W^T E4M3, scaled by *w_scale_inv * *x_scale_inv: te_llama__gemv_fp8_chunks
   with the plain epilogue; with ss_out (one token) also Y's sums of squares for a folded norm after it. */
static te_llama_result te_llama__gemv_fp8(te_llama__cuda *ctx, const uint8_t *W, const float *w_scale_inv, const uint8_t *X,
                                          const float *x_scale_inv, float *Y, int m, int n, int k, int accumulate, float *ss_out) {
    te_llama__gemv_args a;
    memset(&a, 0, sizeof a);
    a.w = W; a.x = X; a.y = Y; a.m = m; a.k = k; a.accumulate = accumulate;
    a.scale_inv = w_scale_inv; a.scale_inv_x = x_scale_inv; a.ss_out = n == 1 ? ss_out : NULL;
    return te_llama__gemv_fp8_chunks<TE_LLAMA__EPI_STORE>(ctx, a, m / 16, n);
}

/* One decoder layer in FP8 (TE's fp8_autocast with the model's recipe, as the CPU's te_llama__fp8_gemm emulates
   it): each GEMM input is quantised by the kernel that produces it, with its INPUT state's delayed scale, which
   also raises the state's amax: the rmsnorms before QKV and fc1, the attention before proj (the prefill's
   tensor-core kernels and a decode step's kernel themselves, else a cast of its output), and SwiGLU before fc2.
   Up to 16 tokens (decode) every GEMM is the E4M3 GEMV, RoPE + KV store in QKV's epilogue and SwiGLU + fc2's
   input quantisation in fc1's; for one token the rmsnorms (but layer 0's first) fold into the GEMVs around them:
   proj and fc2 write the residual stream's sums of squares, and QKV and fc1 make their E4M3 input from it
   (te_llama__gemv_norm_fp8: 8B decode 370.7 tok/s against 365.6 with the two norm kernels, 1B 1384 against 1289;
   bench/NOTES.md run 11). More tokens
   (prefill) take cuBLASLt's FP8 GEMM (te_llama__gemm_fp8: QKV to fp32 then the RoPE + KV kernel, proj and fc2
   added into the residual stream, fc1 to bf16 then te_llama__swiglu_fp8); if cuBLASLt has no FP8 algorithm for a
   shape, the GEMV 16 tokens at a time instead. The E4M3 inputs live in the bf16 buffers xn and act, which they
   half fill. The OUTPUT states' amaxes are not recorded here (the CPU records them; nothing reads them in
   inference). */
static te_llama_result te_llama__layer_fp8(te_llama_model *m, te_llama__cuda *ctx, te_llama_kv_cache *cache, int l, int n,
                                           const te_llama__att *a) {
    const te_llama_config *c = &m->config;
    const te_llama__kv *kv = (const te_llama__kv *)cache->device;
    const int h = c->hidden_size, hd = c->head_dim, nh = c->num_attention_heads, nkv = c->num_key_value_heads;
    const int q_dim = nh * hd, kv_dim = nkv * hd, I = c->intermediate_size, cap = ctx->cap_tokens;
    const size_t layer_elems = (size_t)cache->n_seq * (size_t)cache->max_len * (size_t)kv_dim;
    const te_llama_param *P = m->layers[l]->params;
    uint8_t *xq = (uint8_t *)ctx->xn, *actq = (uint8_t *)ctx->act;
    const float eps = (float)c->rms_norm_eps;
    const int IN = TE_LLAMA_FP8_INPUT, WT = TE_LLAMA_FP8_WEIGHT, QKV = TE_LLAMA_FP8_QKV, PROJ = TE_LLAMA_FP8_PROJ;
    const int FC1 = TE_LLAMA_FP8_FC1, FC2 = TE_LLAMA_FP8_FC2, fast = te_llama__fp8_fast_accum(ctx);
    /* one token: the norms fold into the GEMVs, across layers only between FP8 layers (te_llama__layers) */
    const int fold = n == 1 && !(ctx->fp8_unfused & TE_LLAMA__FP8_UNFUSED_NORMS);
    const int fold_in = fold && te_llama__fp8_layer(ctx, l - 1), fold_out = fold && te_llama__fp8_layer(ctx, l + 1);
    int lt = n > TE_LLAMA__GEMV_MAX_N && !ctx->fp8_gemm_unsupported;
    te_llama__att_fp8 att_q = {NULL, NULL, NULL, 0};
    te_llama__gemv_args ga;
    te_llama_result r = TE_LLAMA_OK;
#define TE_LLAMA__W(g) te_llama__fp8_weight(ctx, l, (g)), te_llama__fp8_scale_inv(ctx, l, (g), WT)
#define TE_LLAMA__LTW(g) te_llama__fp8_weight(ctx, l, (g)), te_llama__fp8_lt_scale_inv(ctx, l, (g), WT)
#define TE_LLAMA__LTX(g) te_llama__fp8_lt_scale_inv(ctx, l, (g), IN)
    if (lt) { /* the four plans first (cached after the first layer), so that a shape cuBLASLt refuses is known
                 before the layer has changed anything */
        static const cudaDataType_t out[TE_LLAMA_FP8_GEMMS] = {CUDA_R_32F, CUDA_R_32F, CUDA_R_16BF, CUDA_R_32F};
        const int rows[TE_LLAMA_FP8_GEMMS] = {q_dim + 2 * kv_dim, h, 2 * I, h}, cols[TE_LLAMA_FP8_GEMMS] = {h, q_dim, h, I};
        const int acc[TE_LLAMA_FP8_GEMMS] = {0, 1, 0, 1};
        int g;
        for (g = 0; g < TE_LLAMA_FP8_GEMMS && !r; g++)
            if (!te_llama__plan_get(ctx, fast ? 2 : 1, 1, 0, rows[g], n, cols[g], out[g], acc[g], te_llama__fp8_weight(ctx, l, g), xq,
                                    te_llama__fp8_lt_scale_inv(ctx, l, g, WT), te_llama__fp8_lt_scale_inv(ctx, l, g, IN), &r) && !r)
                r = TE_LLAMA__FAIL(TE_LLAMA_ERR_CUDA, "FP8 GEMM plan");
        if (r == TE_LLAMA_ERR_UNSUPPORTED) { /* no FP8 algorithm: this and later inputs take the GEMV */
            ctx->fp8_gemm_unsupported = 1;
            lt = 0;
        } else if (r) {
            return r;
        }
    }
    /* attention block */
    if (!fold_in && (r = te_llama__rmsnorm_fp8(ctx, ctx->x, NULL, (const te_llama__bf16 *)P[0].data, xq, NULL, n, h, eps,
                                                        te_llama__fp8_scale(ctx, l, QKV, IN), te_llama__fp8_amax(ctx, l, QKV, IN))))
        return r;
    memset(&ga, 0, sizeof ga);
    ga.w = te_llama__fp8_weight(ctx, l, QKV); ga.x = xq; ga.m = q_dim + 2 * kv_dim; ga.k = h;
    ga.scale_inv = te_llama__fp8_scale_inv(ctx, l, QKV, WT); ga.scale_inv_x = te_llama__fp8_scale_inv(ctx, l, QKV, IN);
    ga.qkv = ctx->qkv; ga.rope = ctx->rope; ga.pos = ctx->ints + cap; ga.seq = ctx->ints + 2 * cap;
    ga.kc = kv->k + (size_t)l * layer_elems; ga.vc = kv->v + (size_t)l * layer_elems;
    ga.n_heads = nh; ga.n_kv = nkv; ga.hd = hd; ga.max_len = cache->max_len;
    if (fold_in) { /* from fc2's sums of squares (the layer before) */
        ga.ss_in = ctx->norm_ss; ga.ss_parts = h / 16; ga.eps = eps; ga.norm_w = (const te_llama__bf16 *)P[0].data; ga.norm_x = ctx->x;
        ga.x_scale = te_llama__fp8_scale(ctx, l, QKV, IN); ga.x_amax = te_llama__fp8_amax(ctx, l, QKV, IN);
    }
    if (lt) {
        if ((r = te_llama__gemm_fp8(ctx, TE_LLAMA__LTW(QKV), xq, TE_LLAMA__LTX(QKV), ctx->qkv, CUDA_R_32F, ga.m, n, h, 0, fast))) return r;
        te_llama__rope_kv(ctx->stream, ctx->qkv, ctx->rope, ga.pos, ga.seq, ga.kc, ga.vc, n, nh, nkv, hd, cache->max_len);
        TE_LLAMA__LAUNCHED(rope_kv);
    } else if ((r = te_llama__gemv_fp8_chunks<TE_LLAMA__EPI_ROPE_KV>(ctx, ga, ga.m / 16, n))) {
        return r;
    }
    att_q.out = xq; att_q.scale = te_llama__fp8_scale(ctx, l, PROJ, IN); att_q.amax = te_llama__fp8_amax(ctx, l, PROJ, IN);
    if ((r = te_llama__attention(m, ctx, a, ga.kc, ga.vc, cache->max_len, n,
                                 ctx->fp8_unfused & TE_LLAMA__FP8_UNFUSED_ATTENTION ? NULL : &att_q)))
        return r;
    if (!att_q.done && (r = te_llama__cast_fp8(ctx, ctx->att, xq, (size_t)n * q_dim, att_q.scale, att_q.amax))) return r;
    r = lt ? te_llama__gemm_fp8(ctx, TE_LLAMA__LTW(PROJ), xq, TE_LLAMA__LTX(PROJ), ctx->x, CUDA_R_32F, h, n, q_dim, 1, fast)
           : te_llama__gemv_fp8(ctx, TE_LLAMA__W(PROJ), xq, te_llama__fp8_scale_inv(ctx, l, PROJ, IN), ctx->x, h, n, q_dim, 1,
                                fold ? ctx->norm_ss : NULL);
    if (r) return r;
    /* MLP block */
    if (!fold && (r = te_llama__rmsnorm_fp8(ctx, ctx->x, NULL, (const te_llama__bf16 *)P[5].data, xq, NULL, n, h, eps,
                                            te_llama__fp8_scale(ctx, l, FC1, IN), te_llama__fp8_amax(ctx, l, FC1, IN))))
        return r;
    if (lt) {
        if ((r = te_llama__gemm_fp8(ctx, TE_LLAMA__LTW(FC1), xq, TE_LLAMA__LTX(FC1), ctx->mlp, CUDA_R_16BF, 2 * I, n, h, 0, fast)) ||
            (r = te_llama__swiglu_fp8<te_llama__bf16>(ctx, ctx->mlp, actq, NULL, n, I, te_llama__fp8_scale(ctx, l, FC2, IN),
                                                      te_llama__fp8_amax(ctx, l, FC2, IN))))
            return r;
        r = te_llama__gemm_fp8(ctx, TE_LLAMA__LTW(FC2), actq, TE_LLAMA__LTX(FC2), ctx->x, CUDA_R_32F, h, n, I, 1, fast);
    } else { /* fc1's epilogue quantises SwiGLU's output for fc2 */
        memset(&ga, 0, sizeof ga);
        ga.w = te_llama__fp8_weight(ctx, l, FC1); ga.x = xq; ga.m = 2 * I; ga.k = h;
        ga.scale_inv = te_llama__fp8_scale_inv(ctx, l, FC1, WT); ga.scale_inv_x = te_llama__fp8_scale_inv(ctx, l, FC1, IN);
        ga.act = actq; ga.inter = I; ga.act_scale = te_llama__fp8_scale(ctx, l, FC2, IN);
        if (n <= TE_LLAMA__GEMV_MAX_N && !(ctx->fp8_unfused & TE_LLAMA__FP8_UNFUSED_AMAX_PARTS)) /* one launch */
            ga.act_amax_part = te_llama__fp8_act_amax_part(ctx, l);
        else ga.act_amax = te_llama__fp8_amax(ctx, l, FC2, IN);
        if (fold) { /* from proj's sums of squares */
            ga.ss_in = ctx->norm_ss; ga.ss_parts = h / 16; ga.eps = eps; ga.norm_w = (const te_llama__bf16 *)P[5].data; ga.norm_x = ctx->x;
            ga.x_scale = te_llama__fp8_scale(ctx, l, FC1, IN); ga.x_amax = te_llama__fp8_amax(ctx, l, FC1, IN);
        }
        if ((r = te_llama__gemv_fp8_chunks<TE_LLAMA__EPI_SWIGLU>(ctx, ga, I / 16, n))) return r;
        r = te_llama__gemv_fp8(ctx, TE_LLAMA__W(FC2), actq, te_llama__fp8_scale_inv(ctx, l, FC2, IN), ctx->x, h, n, I, 1,
                               fold_out ? ctx->norm_ss : NULL);
    }
#undef TE_LLAMA__W
#undef TE_LLAMA__LTW
#undef TE_LLAMA__LTX
    return r;
}

/* Embeddings and every layer for the n tokens whose ids, positions and sequences are in ctx->ints (device), the
   attention by plan a: stream work only, so that a decode step can be captured in a graph. With FP8 on, the layers
   run te_llama__layer_fp8, or in bf16 while recording the GEMM inputs' amaxes when calibrating; either way the
   caller then updates the FP8 states (te_llama__fp8_end_step_dev), as the CPU does after each forward. */
static te_llama_result te_llama__layers(te_llama_model *m, te_llama__cuda *ctx, te_llama_kv_cache *cache, int n,
                                        const te_llama__att *a) {
    const te_llama_config *c = &m->config;
    const te_llama__kv *kv = (const te_llama__kv *)cache->device;
    const int h = c->hidden_size, hd = c->head_dim, nh = c->num_attention_heads, nkv = c->num_key_value_heads;
    const int q_dim = nh * hd, kv_dim = nkv * hd, I = c->intermediate_size, cap = ctx->cap_tokens;
    const int32_t *tokens = ctx->ints, *pos = ctx->ints + cap, *seq = ctx->ints + 2 * cap;
    const size_t layer_elems = (size_t)cache->n_seq * (size_t)cache->max_len * (size_t)kv_dim;
    const float eps = (float)c->rms_norm_eps;
    const int norm_threads = te_llama__norm_threads(n, h);
    const int fp8 = ctx->fp8 != NULL, calibrating = te_llama__fp8_calibrating(ctx), IN = TE_LLAMA_FP8_INPUT;
    /* up to 8 tokens (decode): QKV and proj through the GEMV, RoPE and the KV store in the QKV's epilogue; for one
       token fc1 (SwiGLU in its epilogue) and fc2 too. The rest, lm_head always, is cuBLASLt's: its TMA-pipelined
       kernels stream the larger weights about as fast; the GEMV's fc1 and fc2 cost the 8B decode 3 to 5% at 2 to 8
       tokens (each block reads X again from L2) and gain 0.4% at 1 token, 4.7% on the 1B shape; the two-tile GEMV
       (9-16 tokens) made the 8B B16 decode 2.75k tok/s against cuBLASLt's 3.04k (bench/NOTES.md, run 6). In FP8
       every GEMM of up to 16 tokens takes the E4M3 GEMV (te_llama__layer_fp8). */
    const int small = n <= 8 && te_llama__gemv_ok(n, q_dim + 2 * kv_dim, h) && te_llama__gemv_ok(n, h, q_dim) && hd % 16 == 0;
    const int small_mlp = small && n == 1 && !calibrating && te_llama__gemv_ok(n, 2 * I, h) && te_llama__gemv_ok(n, h, I);
    /* one token: the RMSNorms before QKV (but layer 0's) and fc1 fold into the GEMVs around them (te_llama__gemv_args):
       proj and fc2 write bf16(w x) and the sums of squares, QKV and fc1 scale their sums by 1 / rms. */
    const int fold_norm = small_mlp && h / 16 <= TE_LLAMA__GEMV_MAX_SS;
    te_llama__gemv_args ga;
    te_llama_result r;
    int l;
    if (fp8 && !calibrating && (q_dim > 2 * h || !te_llama__gemv_ok(1, q_dim + 2 * kv_dim, h) || !te_llama__gemv_ok(1, h, q_dim) ||
                                 !te_llama__gemv_ok(1, 2 * I, h) || !te_llama__gemv_ok(1, h, I) || hd % 16 || I % 16)) {
        char msg[200];
        snprintf(msg, sizeof msg, "FP8 on CUDA runs its GEMMs through the E4M3 GEMV, which needs hidden, q_dim and intermediate "
                 "multiples of 64, head_dim of 16 and q_dim <= 2 hidden; this model has %d, %d, %d, %d", h, q_dim, I, hd);
        return TE_LLAMA__FAIL(TE_LLAMA_ERR_UNSUPPORTED, msg);
    }
    if (a->mode == TE_LLAMA__ATT_DECODE && a->splits > 1 &&
        (r = te_llama__ensure_split(ctx, (size_t)n * (size_t)nh * (size_t)a->splits * (size_t)(hd + 2), (size_t)n * (size_t)nkv)))
        return r;
    te_llama__launch(ctx, te_llama__embed_kernel, dim3((unsigned)n), dim3(256), 0, (const te_llama__bf16 *)m->embed_tokens.data, tokens,
                     ctx->x, h);
    TE_LLAMA__LAUNCHED(embed);
    te_llama__launch(ctx, te_llama__rope_table_kernel, dim3((unsigned)n), dim3(64), 0, pos, ctx->inv_freq, ctx->rope, hd / 2);
    TE_LLAMA__LAUNCHED(rope_table);
    memset(&ga, 0, sizeof ga);
    ga.n = n;
    for (l = 0; l < c->num_hidden_layers; l++) {
        const te_llama_param *P = m->layers[l]->params;
        te_llama__bf16 *kc = kv->k + (size_t)l * layer_elems, *vc = kv->v + (size_t)l * layer_elems;
        /* a layer the recipe keeps out of FP8 runs here as with FP8 off, and the norms fold across a layer boundary
           only where both layers run here (te_llama__layer_fp8 folds between FP8 layers alike) */
        const int layer_fp8 = te_llama__fp8_layer(ctx, l), cal = calibrating && layer_fp8;
        const int fold_in = fold_norm && l > 0 && !te_llama__fp8_layer(ctx, l - 1);
        const int fold_out = fold_norm && l + 1 < c->num_hidden_layers && !te_llama__fp8_layer(ctx, l + 1);
        if (layer_fp8 && !calibrating) {
            if ((r = te_llama__layer_fp8(m, ctx, cache, l, n, a))) return r;
            continue;
        }
        /* attention block: x += proj(attention(rope(qkv(rmsnorm(x))))) */
        r = TE_LLAMA_OK;
        if (cal)
            r = te_llama__rmsnorm_fp8(ctx, ctx->x, NULL, (const te_llama__bf16 *)P[0].data, NULL, ctx->xn, n, h, eps,
                                      te_llama__fp8_scale(ctx, l, TE_LLAMA_FP8_QKV, IN), te_llama__fp8_amax(ctx, l, TE_LLAMA_FP8_QKV, IN));
        else if (!fold_in)
            te_llama__launch(ctx, te_llama__rmsnorm_kernel, dim3((unsigned)n), dim3((unsigned)norm_threads), 0, ctx->x, (const int32_t *)NULL,
                             (const te_llama__bf16 *)P[0].data, ctx->xn, h, eps);
        if (r) return r;
        TE_LLAMA__LAUNCHED(rmsnorm);
        if (small) {
            ga.w = P[1].data; ga.x = ctx->xn; ga.m = q_dim + 2 * kv_dim; ga.k = h;
            ga.ss_in = fold_in ? ctx->norm_ss : NULL; ga.ss_parts = h / 16; ga.eps = eps; /* fc2's blocks */
            ga.qkv = ctx->qkv; ga.rope = ctx->rope; ga.pos = pos; ga.seq = seq; ga.kc = kc; ga.vc = vc;
            ga.n_heads = nh; ga.n_kv = nkv; ga.hd = hd; ga.max_len = cache->max_len;
            if ((r = te_llama__gemv<TE_LLAMA__EPI_ROPE_KV, false>(ctx, ga, ga.m / 16))) return r;
        } else {
            if ((r = te_llama__gemm(ctx, P[1].data, ctx->xn, ctx->qkv, CUDA_R_32F, q_dim + 2 * kv_dim, n, h, 0))) return r;
            te_llama__rope_kv(ctx->stream, ctx->qkv, ctx->rope, pos, seq, kc, vc, n, nh, nkv, hd, cache->max_len);
            TE_LLAMA__LAUNCHED(rope_kv);
        }
        {   /* calibrating: proj's input amax, by the prefill attention itself where it can (te_llama__att_fp8) */
            te_llama__att_fp8 att_amax = {NULL, NULL, NULL, 0};
            if (cal) {
                att_amax.scale = te_llama__fp8_scale(ctx, l, TE_LLAMA_FP8_PROJ, IN);
                att_amax.amax = te_llama__fp8_amax(ctx, l, TE_LLAMA_FP8_PROJ, IN);
            }
            if ((r = te_llama__attention(m, ctx, a, kc, vc, cache->max_len, n,
                                         cal && !(ctx->fp8_unfused & TE_LLAMA__FP8_UNFUSED_ATTENTION) ? &att_amax : NULL)))
                return r;
            if (cal && !att_amax.done &&
                (r = te_llama__cast_fp8(ctx, ctx->att, NULL, (size_t)n * q_dim, att_amax.scale, att_amax.amax)))
                return r;
        }
        if (small) r = te_llama__gemv_store(ctx, P[4].data, ctx->att, ctx->x, h, n, q_dim, 1, fold_norm ? (const te_llama__bf16 *)P[5].data : NULL);
        else r = te_llama__gemm(ctx, P[4].data, ctx->att, ctx->x, CUDA_R_32F, h, n, q_dim, 1);
        if (r) return r;
        /* MLP block: x += fc2(silu(gate) * up), gate and up from fc1(rmsnorm(x)) */
        r = TE_LLAMA_OK;
        if (cal)
            r = te_llama__rmsnorm_fp8(ctx, ctx->x, NULL, (const te_llama__bf16 *)P[5].data, NULL, ctx->xn, n, h, eps,
                                      te_llama__fp8_scale(ctx, l, TE_LLAMA_FP8_FC1, IN), te_llama__fp8_amax(ctx, l, TE_LLAMA_FP8_FC1, IN));
        else if (!fold_norm)
            te_llama__launch(ctx, te_llama__rmsnorm_kernel, dim3((unsigned)n), dim3((unsigned)norm_threads), 0, ctx->x, (const int32_t *)NULL,
                             (const te_llama__bf16 *)P[5].data, ctx->xn, h, eps);
        if (r) return r;
        TE_LLAMA__LAUNCHED(rmsnorm);
        if (small_mlp) { /* fc1 with SwiGLU in its epilogue (gate and up rounded to bf16 first, as cuBLASLt's are), fc2 */
            const te_llama__bf16 *next = fold_out ? (const te_llama__bf16 *)m->layers[l + 1]->params[0].data : NULL;
            memset(&ga, 0, sizeof ga);
            ga.n = n; ga.w = P[6].data; ga.x = ctx->xn; ga.m = 2 * I; ga.k = h; ga.act = ctx->act; ga.inter = I;
            if (fold_norm) { ga.ss_in = ctx->norm_ss; ga.ss_parts = h / 16; ga.eps = eps; } /* proj's blocks */
            if ((r = te_llama__gemv<TE_LLAMA__EPI_SWIGLU, false>(ctx, ga, I / 16)) ||
                (r = te_llama__gemv_store(ctx, P[7].data, ctx->act, ctx->x, h, n, I, 1, next)))
                return r;
            continue;
        }
        if ((r = te_llama__gemm(ctx, P[6].data, ctx->xn, ctx->mlp, CUDA_R_16BF, 2 * I, n, h, 0))) return r;
        if (cal) {
            if ((r = te_llama__swiglu_fp8<te_llama__bf16>(ctx, ctx->mlp, NULL, ctx->act, n, I, te_llama__fp8_scale(ctx, l, TE_LLAMA_FP8_FC2, IN),
                                                          te_llama__fp8_amax(ctx, l, TE_LLAMA_FP8_FC2, IN))))
                return r;
        } else {
            te_llama__launch(ctx, te_llama__swiglu_kernel<te_llama__bf16>, te_llama__swiglu_grid(n, I), dim3(TE_LLAMA__SWIGLU_THREADS), 0,
                             (const te_llama__bf16 *)ctx->mlp, (uint8_t *)NULL, ctx->act, n, I, (const float *)NULL, (float *)NULL);
            TE_LLAMA__LAUNCHED(swiglu);
        }
        if ((r = te_llama__gemm(ctx, P[7].data, ctx->act, ctx->x, CUDA_R_32F, h, n, I, 1))) return r;
    }
    return TE_LLAMA_OK;
}

/* Final norm and lm_head for n_rows rows of x (rows: device indices, NULL for rows 0..n_rows-1) into ctx->logits. */
static te_llama_result te_llama__head(te_llama_model *m, te_llama__cuda *ctx, const int32_t *rows, int n_rows) {
    const te_llama_config *c = &m->config;
    te_llama__launch(ctx, te_llama__rmsnorm_kernel, dim3((unsigned)n_rows), dim3((unsigned)te_llama__norm_threads(n_rows, c->hidden_size)),
                     0, ctx->x, rows, (const te_llama__bf16 *)m->norm.data, ctx->xn, c->hidden_size, (float)c->rms_norm_eps);
    TE_LLAMA__LAUNCHED(rmsnorm);
    return te_llama__gemm(ctx, m->lm_head.data, ctx->xn, ctx->logits, CUDA_R_32F, c->vocab_size, n_rows, c->hidden_size, 0);
}

/* Checks shared by forward and generate, and the one-time setup they need. */
static te_llama_result te_llama__prepare(te_llama_model *m, te_llama__cuda **ctx) {
    te_llama_result r;
    if ((r = te_llama__enter(m, ctx))) return r;
    if ((r = te_llama__check_model(m))) return r;
    if ((r = te_llama__drop_staging(*ctx))) return r;
    return te_llama__ensure_inv_freq(m, *ctx);
}

/* Tiles with more work (a later last position: more keys) first, so that the short ones fill the tail. */
static int te_llama__tile_cmp(const void *pa, const void *pb) {
    const int32_t *a = (const int32_t *)pa, *b = (const int32_t *)pb;
    const int32_t ea = a[3] + a[1], eb = b[3] + b[1];
    if (ea != eb) return ea > eb ? -1 : 1;
    return a[0] < b[0] ? -1 : a[0] > b[0]; /* deterministic */
}

/* Upload the batch's ids, positions, sequences, the rows wanting logits and the prefill tile table; returns how
   many rows want logits and how many tiles there are. A run is a stretch of tokens of one sequence at consecutive
   positions (the usual prompt); each run is cut into tiles of up to 64 tokens {first token, rows, sequence,
   position of the first row}. */
static te_llama_result te_llama__upload_batch(te_llama__cuda *ctx, const te_llama_batch *b, int *n_rows, int *n_tiles) {
    int i, n = b->n_tokens, cap = ctx->cap_tokens, rows = 0, tiles = 0;
    int32_t *h = ctx->host_ints, *tt = h + 4 * cap;
    for (i = 0; i < n; i++) {
        h[i] = b->tokens[i];
        h[cap + i] = b->pos[i];
        h[2 * cap + i] = b->seq ? b->seq[i] : 0;
        if (!b->want_logits || b->want_logits[i]) h[3 * cap + rows++] = i;
    }
    for (i = 0; i < n;) {
        int j = i + 1, t0;
        while (j < n && h[2 * cap + j] == h[2 * cap + i] && h[cap + j] == h[cap + j - 1] + 1) j++;
        for (t0 = i; t0 < j; t0 += TE_LLAMA__FA_BM, tiles++) {
            tt[4 * tiles] = t0;
            tt[4 * tiles + 1] = j - t0 < TE_LLAMA__FA_BM ? j - t0 : TE_LLAMA__FA_BM;
            tt[4 * tiles + 2] = h[2 * cap + i];
            tt[4 * tiles + 3] = h[cap + t0];
        }
        i = j;
    }
    qsort(tt, (size_t)tiles, 4 * sizeof(int32_t), te_llama__tile_cmp);
    /* pageable source: the copy has taken the bytes when the call returns */
    TE_LLAMA__CU(cudaMemcpyAsync(ctx->ints, h, sizeof(int32_t) * (4 * (size_t)cap + 4 * (size_t)tiles), cudaMemcpyHostToDevice, ctx->stream));
    *n_rows = rows;
    *n_tiles = tiles;
    return TE_LLAMA_OK;
}

static te_llama_result te_llama__check_cache(te_llama_model *m, te_llama_kv_cache *cache) {
    if (!cache || !cache->on_device || !cache->device)
        return TE_LLAMA__FAIL(TE_LLAMA_ERR_INVALID_ARGUMENT, "a CUDA model needs a KV cache made by te_llama_kv_cache_create on it");
    if (cache->n_layers != m->config.num_hidden_layers || cache->kv_dim != m->config.num_key_value_heads * m->config.head_dim)
        return TE_LLAMA__FAIL(TE_LLAMA_ERR_INVALID_ARGUMENT, "kv cache does not belong to this model");
    return TE_LLAMA_OK;
}

/* ==================================================================================================== public */

extern "C" {

TE_LLAMA_API te_llama_result te_llama_cuda_init(te_llama_model *m) {
    te_llama__cuda *ctx = NULL;
    te_llama_result r = TE_LLAMA_OK;
    int count = 0, dev = m ? m->options.cuda_device : 0;
    cudaError_t e;
    char msg[256];
    if (!m) return TE_LLAMA__FAIL(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_cuda_init: NULL model");
    if ((e = cudaGetDeviceCount(&count)) != cudaSuccess || count == 0) {
        (void)cudaGetLastError();
        snprintf(msg, sizeof msg, "no CUDA device (%s)", e != cudaSuccess ? cudaGetErrorString(e) : "count is 0");
        return TE_LLAMA__FAIL(TE_LLAMA_ERR_NO_CUDA, msg);
    }
    if (dev < 0 || dev >= count) {
        snprintf(msg, sizeof msg, "options.cuda_device = %d but there are %d devices", dev, count);
        return TE_LLAMA__FAIL(TE_LLAMA_ERR_INVALID_ARGUMENT, msg);
    }
    ctx = (te_llama__cuda *)te_llama__host_alloc(&m->allocator, sizeof *ctx);
    if (!ctx) return TE_LLAMA__FAIL(TE_LLAMA_ERR_NOMEM, "device context");
    memset(ctx, 0, sizeof *ctx);
    ctx->allocator = m->allocator;
    ctx->device = dev;
    m->backend = ctx;
    TE_LLAMA__CU_GOTO(cudaSetDevice(dev), fail);
    TE_LLAMA__CU_GOTO(cudaStreamCreate(&ctx->stream), fail);
    TE_LLAMA__CU_GOTO(cudaStreamCreateWithFlags(&ctx->side, cudaStreamNonBlocking), fail);
    TE_LLAMA__CU_GOTO(cudaEventCreateWithFlags(&ctx->fp8_fork, cudaEventDisableTiming), fail);
    TE_LLAMA__CU_GOTO(cudaEventCreateWithFlags(&ctx->fp8_updated, cudaEventDisableTiming), fail);
    {
        cublasStatus_t s = cublasLtCreate(&ctx->lt);
        if (s != CUBLAS_STATUS_SUCCESS) { r = te_llama__cublas_error(s, "cublasLtCreate", __FILE__, __LINE__); goto fail; }
    }
    TE_LLAMA__CU_GOTO(cudaDeviceGetAttribute(&ctx->n_sm, cudaDevAttrMultiProcessorCount, dev), fail);
    TE_LLAMA__CU_GOTO(cudaDeviceGetAttribute(&ctx->pdl, cudaDevAttrComputeCapabilityMajor, dev), fail);
    ctx->pdl = ctx->pdl >= 9;
    if ((r = te_llama__attention_init(ctx))) goto fail;
    TE_LLAMA__CU_GOTO(cudaMalloc(&ctx->workspace, TE_LLAMA__WORKSPACE_BYTES), fail);
    TE_LLAMA__CU_GOTO(cudaMalloc((void **)&ctx->rng, sizeof(unsigned long long)), fail);
    TE_LLAMA__CU_GOTO(cudaHostAlloc((void **)&ctx->pinned_token, 3 * sizeof(int32_t), cudaHostAllocDefault), fail);
    ctx->cap_seqs = 1;
    return TE_LLAMA_OK;
fail:
    te_llama_cuda_release(m);
    return r;
}

TE_LLAMA_API void te_llama_cuda_release(te_llama_model *m) {
    te_llama__cuda *ctx = NULL;
    int i;
    if (!m || !m->backend) return;
    ctx = (te_llama__cuda *)m->backend;
    cudaSetDevice(ctx->device);
    if (ctx->stream) cudaStreamSynchronize(ctx->stream);
    te_llama__fp8_release(m, ctx);
    te_llama__tact_free(ctx);
    for (i = 0; i < ctx->n_staging; i++) {
        cudaEventDestroy(ctx->staged[i]);
        cudaFreeHost(ctx->staging[i]);
    }
    for (i = 0; i < ctx->n_plans; i++) te_llama__plan_destroy(&ctx->plans[i]);
    cudaFree(ctx->scratch);
    cudaFree(ctx->logits);
    cudaFree(ctx->part);
    cudaFree(ctx->part_count);
    cudaFree(ctx->inv_freq);
    cudaFree(ctx->workspace);
    cudaFree(ctx->rng);
    if (ctx->pinned_token) cudaFreeHost(ctx->pinned_token);
    if (ctx->lt) cublasLtDestroy(ctx->lt);
    if (ctx->fp8_fork) cudaEventDestroy(ctx->fp8_fork);
    if (ctx->fp8_updated) cudaEventDestroy(ctx->fp8_updated);
    if (ctx->side) cudaStreamDestroy(ctx->side);
    if (ctx->stream) cudaStreamDestroy(ctx->stream);
    (void)cudaGetLastError();
    te_llama__host_free(&ctx->allocator, ctx->host_ints);
    te_llama__host_free(&m->allocator, ctx);
    m->backend = NULL;
}

TE_LLAMA_API te_llama_result te_llama_cuda_malloc(void **ptr, size_t bytes) {
    cudaError_t e;
    char what[96];
    if (!ptr) return TE_LLAMA__FAIL(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_cuda_malloc: NULL");
    *ptr = NULL;
    if ((e = cudaMalloc(ptr, bytes ? bytes : 1)) != cudaSuccess) {
        *ptr = NULL;
        snprintf(what, sizeof what, "cudaMalloc(%zu bytes)", bytes);
        return te_llama__cuda_error(e, what, __FILE__, __LINE__);
    }
    return TE_LLAMA_OK;
}

TE_LLAMA_API void te_llama_cuda_free(void *ptr) {
    if (ptr) cudaFree(ptr);
}

/* The next three run on the legacy default stream; the context's stream is a blocking one, so its work is
   ordered after them. */
TE_LLAMA_API te_llama_result te_llama_cuda_memset(void *device, int value, size_t bytes) {
    TE_LLAMA__CU(cudaMemset(device, value, bytes));
    return TE_LLAMA_OK;
}

TE_LLAMA_API te_llama_result te_llama_cuda_upload(void *device, const void *host, size_t bytes) {
    TE_LLAMA__CU(cudaMemcpy(device, host, bytes, cudaMemcpyHostToDevice));
    return TE_LLAMA_OK;
}

TE_LLAMA_API te_llama_result te_llama_cuda_download(void *host, const void *device, size_t bytes) {
    TE_LLAMA__CU(cudaMemcpy(host, device, bytes, cudaMemcpyDeviceToHost));
    return TE_LLAMA_OK;
}

TE_LLAMA_API te_llama_result te_llama_cuda_staging(te_llama_model *m, size_t bytes, void **buffers, int n) {
    te_llama__cuda *ctx = NULL;
    te_llama_result r;
    int i;
    if (!buffers || n < 1 || n > TE_LLAMA__MAX_STAGING || !bytes)
        return TE_LLAMA__FAIL(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_cuda_staging: 1 to 4 buffers of nonzero size");
    if ((r = te_llama__enter(m, &ctx))) return r;
    if ((r = te_llama__drop_staging(ctx))) return r;
    for (i = 0; i < n; i++) {
        cudaError_t e = cudaHostAlloc(&ctx->staging[i], bytes, cudaHostAllocDefault);
        if (e == cudaSuccess && (e = cudaEventCreateWithFlags(&ctx->staged[i], cudaEventDisableTiming)) != cudaSuccess)
            cudaFreeHost(ctx->staging[i]);
        if (e != cudaSuccess) { /* nothing was copied out of the ones made so far: free them as they are */
            r = te_llama__cuda_error(e, "cudaHostAlloc(loader staging)", __FILE__, __LINE__);
            while (--i >= 0) {
                cudaEventDestroy(ctx->staged[i]);
                cudaFreeHost(ctx->staging[i]);
                ctx->staging[i] = NULL;
            }
            ctx->n_staging = 0;
            return r;
        }
        ctx->n_staging = i + 1;
        buffers[i] = ctx->staging[i];
    }
    return TE_LLAMA_OK;
}

TE_LLAMA_API te_llama_result te_llama_cuda_upload_async(te_llama_model *m, void *device, const void *host, size_t bytes,
                                                        int slot) {
    te_llama__cuda *ctx = NULL;
    te_llama_result r;
    if ((r = te_llama__ctx(m, &ctx))) return r;
    if (slot < 0 || slot >= ctx->n_staging) return TE_LLAMA__FAIL(TE_LLAMA_ERR_INVALID_ARGUMENT, "staging slot out of range");
    TE_LLAMA__CU(cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, ctx->stream));
    TE_LLAMA__CU(cudaEventRecord(ctx->staged[slot], ctx->stream));
    return TE_LLAMA_OK;
}

TE_LLAMA_API te_llama_result te_llama_cuda_wait_slot(te_llama_model *m, int slot) {
    te_llama__cuda *ctx = NULL;
    te_llama_result r;
    if ((r = te_llama__ctx(m, &ctx))) return r;
    if (slot < 0 || slot >= ctx->n_staging) return TE_LLAMA_OK; /* nothing was staged there */
    TE_LLAMA__CU(cudaEventSynchronize(ctx->staged[slot])); /* an event never recorded is complete */
    return TE_LLAMA_OK;
}

TE_LLAMA_API te_llama_result te_llama_cuda_kv_cache_alloc(te_llama_model *m, te_llama_kv_cache *cache) {
    te_llama__cuda *ctx = NULL;
    te_llama__kv *kv;
    te_llama_result r;
    size_t bytes;
    if (!cache) return TE_LLAMA__FAIL(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_cuda_kv_cache_alloc: NULL cache");
    if ((r = te_llama__enter(m, &ctx))) return r;
    bytes = (size_t)cache->n_layers * (size_t)cache->n_seq * (size_t)cache->max_len * (size_t)cache->kv_dim * 2;
    kv = (te_llama__kv *)te_llama__host_alloc(&cache->allocator, sizeof *kv);
    if (!kv) return TE_LLAMA__FAIL(TE_LLAMA_ERR_NOMEM, "kv cache");
    memset(kv, 0, sizeof *kv);
    TE_LLAMA__CU_GOTO(cudaMalloc((void **)&kv->k, bytes), fail);
    TE_LLAMA__CU_GOTO(cudaMalloc((void **)&kv->v, bytes), fail);
    TE_LLAMA__CU_GOTO(cudaMemsetAsync(kv->k, 0, bytes, ctx->stream), fail);
    TE_LLAMA__CU_GOTO(cudaMemsetAsync(kv->v, 0, bytes, ctx->stream), fail);
    cache->device = kv;
    cache->on_device = 1;
    return TE_LLAMA_OK;
fail:
    cudaFree(kv->k);
    cudaFree(kv->v);
    (void)cudaGetLastError();
    te_llama__host_free(&cache->allocator, kv);
    return r;
}

TE_LLAMA_API void te_llama_cuda_kv_cache_free(te_llama_kv_cache *cache) {
    te_llama__kv *kv;
    if (!cache || !cache->device) return;
    kv = (te_llama__kv *)cache->device;
    cudaFree(kv->k); /* cudaFree waits for the device work that may still read them */
    cudaFree(kv->v);
    te_llama__host_free(&cache->allocator, kv);
    cache->device = NULL;
    cache->on_device = 0;
}

TE_LLAMA_API te_llama_result te_llama_cuda_forward(te_llama_model *m, te_llama_kv_cache *cache, const te_llama_batch *b,
                                                   float *logits) {
    te_llama__cuda *ctx = NULL;
    te_llama__att att;
    te_llama_result r;
    int i, n_rows, n_tiles, vocab;
    char msg[160];
    if (!b || b->n_tokens < 1 || !b->tokens || !b->pos) return TE_LLAMA__FAIL(TE_LLAMA_ERR_INVALID_ARGUMENT, "empty batch");
    if ((r = te_llama__prepare(m, &ctx))) return r;
    if ((r = te_llama__check_cache(m, cache))) return r;
    vocab = m->config.vocab_size;
    for (i = 0; i < b->n_tokens; i++) { /* te_llama_forward checked these too; a direct call must not index wild */
        int s = b->seq ? b->seq[i] : 0;
        if (b->tokens[i] < 0 || b->tokens[i] >= vocab || b->pos[i] < 0 || b->pos[i] >= cache->max_len || s < 0 || s >= cache->n_seq) {
            snprintf(msg, sizeof msg, "batch index %d: token %d, position %d, sequence %d out of range", i, b->tokens[i], b->pos[i], s);
            return TE_LLAMA__FAIL(TE_LLAMA_ERR_OUT_OF_RANGE, msg);
        }
    }
    if ((r = te_llama__ensure_tokens(m, ctx, b->n_tokens))) return r;
    if ((r = te_llama__upload_batch(ctx, b, &n_rows, &n_tiles))) return r;
    att = te_llama__att_choose(m, ctx, cache, b->n_tokens, n_tiles);
    if ((r = te_llama__layers(m, ctx, cache, b->n_tokens, &att)) || (r = te_llama__fp8_end_step_dev(ctx))) return r;
    if (logits && n_rows > 0) {
        int r0;
        if ((r = te_llama__ensure_rows(m, ctx, n_rows))) return r;
        for (r0 = 0; r0 < n_rows; r0 += TE_LLAMA__LOGIT_ROWS) {
            int rows = n_rows - r0 < TE_LLAMA__LOGIT_ROWS ? n_rows - r0 : TE_LLAMA__LOGIT_ROWS;
            if ((r = te_llama__head(m, ctx, ctx->ints + 3 * ctx->cap_tokens + r0, rows))) return r;
            TE_LLAMA__CU(cudaMemcpyAsync(logits + (size_t)r0 * vocab, ctx->logits, sizeof(float) * (size_t)rows * vocab,
                                         cudaMemcpyDeviceToHost, ctx->stream));
        }
    }
    TE_LLAMA__CU(cudaStreamSynchronize(ctx->stream));
    return TE_LLAMA_OK;
}

} /* extern "C" */

/* ================================================================================================ generation */

/* Grow the samplers' states (device) and the sampled ids' landing place (pinned host) to n sequences. Outside a
   graph capture only; the contents are not kept: every generation seeds its states before use. On failure the
   context holds neither (cap_seqs 0), and the next generation tries again. */
static te_llama_result te_llama__ensure_seqs(te_llama__cuda *ctx, int n) {
    unsigned long long *rng = NULL;
    int32_t *pinned = NULL;
    cudaError_t e;
    if (n <= ctx->cap_seqs) return TE_LLAMA_OK;
    TE_LLAMA__CU(cudaStreamSynchronize(ctx->stream));
    cudaFree(ctx->rng);
    if (ctx->pinned_token) cudaFreeHost(ctx->pinned_token);
    ctx->rng = NULL;
    ctx->pinned_token = NULL;
    ctx->cap_seqs = 0;
    if ((e = cudaMalloc((void **)&rng, sizeof(unsigned long long) * (size_t)n)) != cudaSuccess)
        return te_llama__cuda_error(e, "cudaMalloc(samplers' states)", __FILE__, __LINE__);
    if ((e = cudaHostAlloc((void **)&pinned, 3 * sizeof(int32_t) * (size_t)n, cudaHostAllocDefault)) != cudaSuccess) {
        cudaFree(rng);
        return te_llama__cuda_error(e, "cudaHostAlloc(sampled ids)", __FILE__, __LINE__);
    }
    ctx->rng = rng;
    ctx->pinned_token = pinned;
    ctx->cap_seqs = n;
    return TE_LLAMA_OK;
}

/* te_llama__fp8_end_step_dev on ctx->side, forked here from ctx->stream, which te_llama__decode_step joins at its
   end (ctx->fp8_updated): a decode step's scale update runs beside the final norm, lm_head and sampling, none of
   which reads the FP8 states, instead of between the last layer and them (8B FP8 decode with the first and last
   layers in BF16: 385.1 against 384.6 tok/s, bench/NOTES.md run 19). The next step's kernels follow the join.
   Nothing when FP8 is off. */
static te_llama_result te_llama__fp8_end_step_beside(te_llama__cuda *ctx) {
    cudaStream_t stream = ctx->stream;
    te_llama_result r;
    if (!ctx->fp8) return TE_LLAMA_OK;
    TE_LLAMA__CU(cudaEventRecord(ctx->fp8_fork, stream));
    TE_LLAMA__CU(cudaStreamWaitEvent(ctx->side, ctx->fp8_fork, 0));
    ctx->stream = ctx->side; /* where te_llama__launch launches */
    r = te_llama__fp8_end_step_dev(ctx);
    ctx->stream = stream;
    if (r) return r;
    TE_LLAMA__CU(cudaEventRecord(ctx->fp8_updated, ctx->side));
    return TE_LLAMA_OK;
}

/* One decode step from device state for n sequences: forward of token ints[s] at position ints[cap + s] of
   sequence ints[2 cap + s] (s < n), lm_head, sampling with rng[s], which writes the next token to ints[s] and to
   ids[s] (pinned host) and advances ints[cap + s]. lm_head and sampling go by chunks of TE_LLAMA__LOGIT_ROWS rows
   (the logits buffer); rows past the first chunk take their indices from ints[3 cap + s], which must hold s there.
   Stream work only: captured, then replayed. */
static te_llama_result te_llama__decode_step(te_llama_model *m, te_llama__cuda *ctx, te_llama_kv_cache *cache, int n,
                                             const te_llama_sampler_options *s, int32_t *ids) {
    te_llama__att att = te_llama__att_choose(m, ctx, cache, n, 0);
    const int cap = ctx->cap_tokens;
    te_llama_result r;
    int r0;
    att.keys_ready = 1;
    if ((r = te_llama__layers(m, ctx, cache, n, &att)) || (r = te_llama__fp8_end_step_beside(ctx))) return r;
    for (r0 = 0; r0 < n; r0 += TE_LLAMA__LOGIT_ROWS) {
        const int rows = n - r0 < TE_LLAMA__LOGIT_ROWS ? n - r0 : TE_LLAMA__LOGIT_ROWS;
        if ((r = te_llama__head(m, ctx, r0 ? ctx->ints + 3 * cap + r0 : NULL, rows))) return r;
        te_llama__sample(ctx, rows, m->config.vocab_size, s->temperature, s->top_k, s->top_p, ctx->rng + r0, ctx->ints + r0,
                         ctx->ints + cap + r0, ids + r0);
        TE_LLAMA__LAUNCHED(sample);
    }
    if (ctx->fp8) TE_LLAMA__CU(cudaStreamWaitEvent(ctx->stream, ctx->fp8_updated, 0)); /* the join */
    return TE_LLAMA_OK;
}

static void te_llama__info(te_llama_model *m, const char *msg) {
    if (m->options.log) m->options.log(m->options.user, TE_LLAMA_LOG_INFO, msg);
}

/* The decode loop of a generation. The first step runs plainly (it makes the GEMM plans and grows the buffers),
   the next two are captured in graphs, the rest replay them; if a capture fails, its steps stay plain launches.
   Sampling is on the device, so a step needs nothing from the host: the loops keep the next step queued while
   the host reads a step's ids (te_llama__decode_launch, te_llama__decode_wait), and the GPU never waits for
   the host between steps. Step j's sampler writes its ids to row 1 + (j & 1) of ctx->pinned_token itself, so
   steps alternate between two graphs, one for each row. One graph ending in a copy node to the row (pointed at
   it before each replay) decoded the 8B shape as fast in BF16 and 0.15% slower in FP8 (bench/NOTES.md, run 19).
   A queued step the host then finds unneeded (an end of sequence, on_token's stop) computes one more position
   inside the cache and its ids are dropped. */
typedef struct te_llama__decoder {
    cudaGraphExec_t exec[2]; /* step j replays exec[j & 1] */
    cudaEvent_t done[2];     /* recorded after step j in done[j & 1] */
    int launched, waited, graph_failed;
} te_llama__decoder;

/* The capture of one step writing its ids to ids: an executable graph, or NULL. */
static cudaGraphExec_t te_llama__decode_capture(te_llama_model *m, te_llama__cuda *ctx, te_llama_kv_cache *cache, int n,
                                                const te_llama_sampler_options *s, int32_t *ids) {
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    te_llama_result rc;
    if (cudaStreamBeginCapture(ctx->stream, cudaStreamCaptureModeThreadLocal) != cudaSuccess) return NULL;
    rc = te_llama__decode_step(m, ctx, cache, n, s, ids);
    if (cudaStreamEndCapture(ctx->stream, &graph) == cudaSuccess && !rc && graph && cudaGraphInstantiate(&exec, graph, 0) != cudaSuccess)
        exec = NULL;
    if (graph) cudaGraphDestroy(graph);
    return exec;
}

/* Queue decode step d->launched of n sequences (te_llama__decode_step); its ids land in pinned row
   1 + (step & 1), which te_llama__decode_wait hands out. */
static te_llama_result te_llama__decode_launch(te_llama_model *m, te_llama__cuda *ctx, te_llama_kv_cache *cache, int n,
                                               const te_llama_sampler_options *s, te_llama__decoder *d, const char *who) {
    const int slot = d->launched & 1;
    int32_t *ids = ctx->pinned_token + (size_t)(1 + slot) * (size_t)ctx->cap_seqs;
    te_llama_result r;
    char msg[160];
    if (!d->done[slot]) TE_LLAMA__CU(cudaEventCreateWithFlags(&d->done[slot], cudaEventDisableTiming));
    if (!d->exec[slot] && d->launched >= 1 && !d->graph_failed) {
        d->exec[slot] = te_llama__decode_capture(m, ctx, cache, n, s, ids);
        if (!d->exec[slot]) {
            d->graph_failed = 1;
            (void)cudaGetLastError();
            snprintf(msg, sizeof msg, "%s: decode graph capture failed (%.80s); plain launches", who, te_llama_last_error());
            te_llama__info(m, msg);
        } else if (d->launched == 1) {
            snprintf(msg, sizeof msg, "%s: decode step captured in CUDA graphs", who);
            te_llama__info(m, msg);
        }
    }
    if (d->exec[slot]) TE_LLAMA__CU(cudaGraphLaunch(d->exec[slot], ctx->stream));
    else if ((r = te_llama__decode_step(m, ctx, cache, n, s, ids))) return r;
    TE_LLAMA__CU(cudaEventRecord(d->done[slot], ctx->stream));
    d->launched++;
    return TE_LLAMA_OK;
}

/* Wait for the oldest queued step; *ids: its n ids, valid until the step two after it is queued. */
static te_llama_result te_llama__decode_wait(te_llama__cuda *ctx, te_llama__decoder *d, const int32_t **ids) {
    const int slot = d->waited & 1;
    TE_LLAMA__CU(cudaEventSynchronize(d->done[slot]));
    *ids = ctx->pinned_token + (size_t)(1 + slot) * (size_t)ctx->cap_seqs;
    d->waited++;
    return TE_LLAMA_OK;
}

/* Queue steps until two are ahead of the host, at most `steps` in all. */
static te_llama_result te_llama__decode_fill(te_llama_model *m, te_llama__cuda *ctx, te_llama_kv_cache *cache, int n,
                                             const te_llama_sampler_options *s, te_llama__decoder *d, int steps, const char *who) {
    te_llama_result r;
    while (d->launched < d->waited + 2 && d->launched < steps)
        if ((r = te_llama__decode_launch(m, ctx, cache, n, s, d, who))) return r;
    return TE_LLAMA_OK;
}

static void te_llama__decoder_free(te_llama__decoder *d) {
    if (d->exec[0]) cudaGraphExecDestroy(d->exec[0]);
    if (d->exec[1]) cudaGraphExecDestroy(d->exec[1]);
    if (d->done[0]) cudaEventDestroy(d->done[0]);
    if (d->done[1]) cudaEventDestroy(d->done[1]);
    memset(d, 0, sizeof *d);
}

extern "C" TE_LLAMA_API te_llama_result te_llama_cuda_generate(te_llama_model *m, const te_llama_generate_options *options,
                                                               const int32_t *prompt, int n_prompt, int32_t *out, int cap,
                                                               int *n_out) {
    te_llama_generate_options g;
    te_llama__cuda *ctx = NULL;
    te_llama_kv_cache *cache = NULL;
    te_llama_batch batch;
    te_llama__decoder dec;
    int32_t *pos = NULL, next_pos, token;
    unsigned long long rng;
    te_llama__att att;
    int i, k, produced = 0, limit, n_rows, n_tiles;
    te_llama_result r;
    char msg[160];
    if (!m || !prompt || n_prompt < 1 || (!out && cap > 0) || !n_out)
        return TE_LLAMA__FAIL(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_cuda_generate: needs a model, a prompt of at least one token and n_out");
    *n_out = 0;
    memset(&g, 0, sizeof g);
    if (options) g = *options;
    if (g.max_new_tokens <= 0) g.max_new_tokens = 128;
    limit = g.max_new_tokens < cap ? g.max_new_tokens : cap;
    if (limit < 0) limit = 0;
    if (g.sampler.temperature < 0 || g.sampler.top_k < 0 || g.sampler.top_p < 0 || g.sampler.top_p > 1 ||
        g.sampler.temperature != g.sampler.temperature || g.sampler.top_p != g.sampler.top_p) {
        snprintf(msg, sizeof msg, "sampler: temperature %g, top_k %d, top_p %g", g.sampler.temperature, g.sampler.top_k, g.sampler.top_p);
        return TE_LLAMA__FAIL(TE_LLAMA_ERR_INVALID_ARGUMENT, msg);
    }
    for (i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= m->config.vocab_size) {
            snprintf(msg, sizeof msg, "prompt token %d at index %d is outside the vocabulary of %d", prompt[i], i, m->config.vocab_size);
            return TE_LLAMA__FAIL(TE_LLAMA_ERR_OUT_OF_RANGE, msg);
        }
    memset(&dec, 0, sizeof dec);
    if ((r = te_llama__prepare(m, &ctx))) return r;
    if ((r = te_llama_kv_cache_create(m, 1, n_prompt + limit + 1, &cache))) return r;
    pos = (int32_t *)te_llama__host_alloc(&m->allocator, sizeof(int32_t) * (size_t)n_prompt);
    if (!pos) { r = TE_LLAMA__FAIL(TE_LLAMA_ERR_NOMEM, "generation positions"); goto done; }
    for (i = 0; i < n_prompt; i++) pos[i] = i;
    memset(&batch, 0, sizeof batch);
    batch.n_tokens = n_prompt;
    batch.tokens = prompt;
    batch.pos = pos;
    /* prefill: logits of the last prompt token only, sampled on the device */
    if ((r = te_llama__ensure_tokens(m, ctx, n_prompt))) goto done;
    if ((r = te_llama__ensure_rows(m, ctx, 1))) goto done;
    if ((r = te_llama__ensure_seqs(ctx, 1))) goto done;
    if ((r = te_llama__upload_batch(ctx, &batch, &n_rows, &n_tiles))) goto done;
    att = te_llama__att_choose(m, ctx, cache, n_prompt, n_tiles);
    rng = g.sampler.seed ^ 0x853c49e6748fea9bull; /* te_llama_sampler_init's seeding */
    TE_LLAMA__CU_GOTO(cudaMemcpyAsync(ctx->rng, &rng, sizeof rng, cudaMemcpyHostToDevice, ctx->stream), done);
    if ((r = te_llama__layers(m, ctx, cache, n_prompt, &att)) || (r = te_llama__fp8_end_step_dev(ctx))) goto done;
    {
        const int32_t *last = ctx->ints + 3 * ctx->cap_tokens + (n_prompt - 1); /* rows[] holds 0..n-1 */
        if ((r = te_llama__head(m, ctx, last, 1))) goto done;
    }
    te_llama__sample(ctx, 1, m->config.vocab_size, g.sampler.temperature, g.sampler.top_k, g.sampler.top_p, ctx->rng, ctx->ints,
                     (int32_t *)NULL, (int32_t *)NULL);
    TE_LLAMA__CU_GOTO(cudaGetLastError(), done);
    next_pos = n_prompt; /* the first new token sits right after the prompt; the sampler advances it from here */
    TE_LLAMA__CU_GOTO(cudaMemcpyAsync(ctx->ints + ctx->cap_tokens, &next_pos, sizeof next_pos, cudaMemcpyHostToDevice, ctx->stream), done);
    TE_LLAMA__CU_GOTO(cudaMemcpyAsync(ctx->pinned_token, ctx->ints, sizeof(int32_t), cudaMemcpyDeviceToHost, ctx->stream), done);
    TE_LLAMA__CU_GOTO(cudaStreamSynchronize(ctx->stream), done);
    token = *ctx->pinned_token;
    while (produced < limit) { /* token: the next new one; decode step j makes new token j + 1 */
        const int32_t *ids;
        int stop = 0;
        if ((r = te_llama__decode_fill(m, ctx, cache, 1, &g.sampler, &dec, limit - 1, "te_llama_cuda_generate"))) goto done;
        out[produced++] = token;
        if (g.on_token && g.on_token(g.user, token)) break;
        if (!g.ignore_eos)
            for (k = 0; k < m->n_eos_token_ids; k++) stop |= token == m->eos_token_ids[k];
        if (stop || produced == limit) break;
        if ((r = te_llama__decode_wait(ctx, &dec, &ids))) goto done;
        token = ids[0];
    }
    *n_out = produced;
done:
    if (ctx && (r || dec.launched > dec.waited)) cudaStreamSynchronize(ctx->stream); /* steps still queued */
    te_llama__decoder_free(&dec);
    te_llama__host_free(&m->allocator, pos);
    te_llama_kv_cache_free(cache);
    return r;
}

/* n_seq sequences: one prefill forward of every prompt (rows wanting logits: each prompt's last token), lm_head and
   sampling by chunks of those rows, then decode steps of all n_seq sequences (te_llama__decode_fill).
   Device state of a decode step, as te_llama__decode_step reads it: ints[s] the token of sequence s, ints[cap + s]
   its position, ints[2 cap + s] = s its cache slot, ints[3 cap + s] = s its logits row, rng[s] its sampler. A
   finished sequence stays in the batch (its ids are dropped): the graph keeps one shape and its positions keep
   advancing, at most to longest prompt + limit - 1, inside the cache of longest prompt + limit + 1 positions. */
extern "C" TE_LLAMA_API te_llama_result te_llama_cuda_generate_batch(te_llama_model *m, const te_llama_generate_options *options,
                                                                     const int32_t *const *prompts, const int *n_prompt,
                                                                     int n_seq, int32_t *out, int cap, int *n_out) {
    te_llama_generate_options g;
    te_llama__cuda *ctx = NULL;
    te_llama_kv_cache *cache = NULL;
    te_llama_batch batch;
    te_llama__decoder dec;
    int32_t *tokens = NULL, *pos, *seq;
    const int32_t *ids;
    unsigned long long *rng;
    uint8_t *want, *done_seq;
    void *host = NULL;
    te_llama__att att;
    long long total = 0;
    int s, i, j, k, limit, longest = 0, n_rows, n_tiles, running, r0, tcap;
    te_llama_result r = TE_LLAMA_OK;
    char msg[200];
    if (!m || !prompts || !n_prompt || n_seq < 1 || cap < 0 || (!out && cap > 0) || !n_out)
        return TE_LLAMA__FAIL(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_cuda_generate_batch: needs a model, prompts, n_prompt and n_out, n_seq >= 1, cap >= 0 and out when cap > 0");
    for (s = 0; s < n_seq; s++) n_out[s] = 0;
    memset(&g, 0, sizeof g);
    if (options) g = *options;
    if (g.max_new_tokens <= 0) g.max_new_tokens = 128;
    limit = g.max_new_tokens < cap ? g.max_new_tokens : cap;
    if (g.sampler.temperature < 0 || g.sampler.top_k < 0 || g.sampler.top_p < 0 || g.sampler.top_p > 1 ||
        g.sampler.temperature != g.sampler.temperature || g.sampler.top_p != g.sampler.top_p) {
        snprintf(msg, sizeof msg, "te_llama_cuda_generate_batch: sampler temperature %g, top_k %d, top_p %g", g.sampler.temperature,
                 g.sampler.top_k, g.sampler.top_p);
        return TE_LLAMA__FAIL(TE_LLAMA_ERR_INVALID_ARGUMENT, msg);
    }
    for (s = 0; s < n_seq; s++) { /* te_llama_generate_batch checked these too; a direct call must not index wild */
        if (!prompts[s] || n_prompt[s] < 1) {
            snprintf(msg, sizeof msg, "te_llama_cuda_generate_batch: prompt %d is %s", s, prompts[s] ? "empty" : "NULL");
            return TE_LLAMA__FAIL(TE_LLAMA_ERR_INVALID_ARGUMENT, msg);
        }
        for (i = 0; i < n_prompt[s]; i++)
            if (prompts[s][i] < 0 || prompts[s][i] >= m->config.vocab_size) {
                snprintf(msg, sizeof msg, "te_llama_cuda_generate_batch: prompt %d token %d at index %d is outside the vocabulary of %d",
                         s, prompts[s][i], i, m->config.vocab_size);
                return TE_LLAMA__FAIL(TE_LLAMA_ERR_OUT_OF_RANGE, msg);
            }
        total += n_prompt[s];
        if (n_prompt[s] > longest) longest = n_prompt[s];
    }
    if (total > INT32_MAX || (long long)longest + limit + 1 > INT32_MAX) {
        snprintf(msg, sizeof msg, "te_llama_cuda_generate_batch: %lld prompt tokens (longest %d) and %d new tokens do not fit an int",
                 total, longest, limit);
        return TE_LLAMA__FAIL(TE_LLAMA_ERR_OUT_OF_RANGE, msg);
    }
    if (limit == 0) return TE_LLAMA_OK;
    memset(&dec, 0, sizeof dec);
    if ((r = te_llama__prepare(m, &ctx))) return r;
    if ((r = te_llama_kv_cache_create(m, n_seq, longest + limit + 1, &cache))) return r;
    /* host side: (3, total) tokens, positions, sequences; (n_seq) seeds; (total) want_logits; (n_seq) finished */
    host = te_llama__host_alloc(&m->allocator, sizeof(int32_t) * 3 * (size_t)total + sizeof(unsigned long long) * (size_t)n_seq +
                                                   (size_t)total + (size_t)n_seq);
    if (!host) { r = TE_LLAMA__FAIL(TE_LLAMA_ERR_NOMEM, "te_llama_cuda_generate_batch: host buffers"); goto done; }
    rng = (unsigned long long *)host;
    tokens = (int32_t *)(rng + n_seq);
    pos = tokens + total;
    seq = pos + total;
    want = (uint8_t *)(seq + total);
    done_seq = want + total;
    memset(want, 0, (size_t)total + (size_t)n_seq);
    for (s = 0, j = 0; s < n_seq; s++) {
        for (i = 0; i < n_prompt[s]; i++, j++) { tokens[j] = prompts[s][i]; pos[j] = i; seq[j] = s; }
        want[j - 1] = 1;
        rng[s] = (g.sampler.seed + (unsigned long long)s) ^ 0x853c49e6748fea9bull; /* te_llama_sampler_init's seeding of seed + s */
    }
    memset(&batch, 0, sizeof batch);
    batch.n_tokens = (int)total;
    batch.tokens = tokens;
    batch.pos = pos;
    batch.seq = seq;
    batch.want_logits = want;
    if ((r = te_llama__ensure_tokens(m, ctx, (int)total))) goto done;
    if ((r = te_llama__ensure_rows(m, ctx, n_seq))) goto done;
    if ((r = te_llama__ensure_seqs(ctx, n_seq))) goto done;
    tcap = ctx->cap_tokens;
    /* pageable sources: each copy has taken the bytes when the call returns */
    TE_LLAMA__CU_GOTO(cudaMemcpyAsync(ctx->rng, rng, sizeof(unsigned long long) * (size_t)n_seq, cudaMemcpyHostToDevice, ctx->stream), done);
    if ((r = te_llama__upload_batch(ctx, &batch, &n_rows, &n_tiles))) goto done;
    att = te_llama__att_choose(m, ctx, cache, (int)total, n_tiles);
    if ((r = te_llama__layers(m, ctx, cache, (int)total, &att)) || (r = te_llama__fp8_end_step_dev(ctx))) goto done;
    /* first tokens: lm_head over each prompt's last row (indices at ints[3 cap + s]), sampled into ints[s] */
    for (r0 = 0; r0 < n_seq; r0 += TE_LLAMA__LOGIT_ROWS) {
        const int rows = n_seq - r0 < TE_LLAMA__LOGIT_ROWS ? n_seq - r0 : TE_LLAMA__LOGIT_ROWS;
        if ((r = te_llama__head(m, ctx, ctx->ints + 3 * tcap + r0, rows))) goto done;
        te_llama__sample(ctx, rows, m->config.vocab_size, g.sampler.temperature, g.sampler.top_k, g.sampler.top_p, ctx->rng + r0,
                         ctx->ints + r0, (int32_t *)NULL, (int32_t *)NULL);
        TE_LLAMA__CU_GOTO(cudaGetLastError(), done);
    }
    /* the decode state: positions right after each prompt (the sampler advances them), slots and rows 0..n_seq-1;
       written after the prefill's readers of the same ints in stream order */
    for (s = 0; s < n_seq; s++) { pos[s] = n_prompt[s]; seq[s] = s; tokens[s] = s; }
    TE_LLAMA__CU_GOTO(cudaMemcpyAsync(ctx->ints + tcap, pos, sizeof(int32_t) * (size_t)n_seq, cudaMemcpyHostToDevice, ctx->stream), done);
    TE_LLAMA__CU_GOTO(cudaMemcpyAsync(ctx->ints + 2 * tcap, seq, sizeof(int32_t) * (size_t)n_seq, cudaMemcpyHostToDevice, ctx->stream), done);
    TE_LLAMA__CU_GOTO(cudaMemcpyAsync(ctx->ints + 3 * tcap, tokens, sizeof(int32_t) * (size_t)n_seq, cudaMemcpyHostToDevice, ctx->stream), done);
    TE_LLAMA__CU_GOTO(cudaMemcpyAsync(ctx->pinned_token, ctx->ints, sizeof(int32_t) * (size_t)n_seq, cudaMemcpyDeviceToHost, ctx->stream), done);
    TE_LLAMA__CU_GOTO(cudaStreamSynchronize(ctx->stream), done);
    ids = ctx->pinned_token; /* the prefill's row; decode step j makes every sequence's new token j + 1 */
    for (running = n_seq;;) {
        for (s = 0; s < n_seq; s++) {
            int32_t token;
            int stop = 0;
            if (done_seq[s]) continue;
            token = ids[s];
            out[(size_t)s * (size_t)cap + (size_t)n_out[s]++] = token;
            if (!g.ignore_eos)
                for (k = 0; k < m->n_eos_token_ids; k++) stop |= token == m->eos_token_ids[k];
            if (stop || n_out[s] == limit) { done_seq[s] = 1; running--; }
        }
        if (!running) break;
        /* after the reads above: the step queued next may be the one that writes their row */
        if ((r = te_llama__decode_fill(m, ctx, cache, n_seq, &g.sampler, &dec, limit - 1, "te_llama_cuda_generate_batch")) ||
            (r = te_llama__decode_wait(ctx, &dec, &ids)))
            goto done;
    }
done:
    if (ctx && (r || dec.launched > dec.waited)) cudaStreamSynchronize(ctx->stream); /* steps still queued */
    te_llama__decoder_free(&dec);
    te_llama__host_free(&m->allocator, host);
    te_llama_kv_cache_free(cache);
    return r;
}

/* ================================================================================================ training */
/* Fine-tuning on the device: te_llama_trainer_* and te_llama_eval_loss on a CUDA model come here (the header's
   training section is the specification; te_llama__train_pass there is the fp32 CPU reference).

   FORWARD of B sequences of T tokens (n = B T), keeping per layer what the backward reads:
     x (fp32, the layer's input) -> rmsnorm (bf16 out, 1/rms kept) -> QKV GEMM (fp32) -> RoPE on q and k in place,
     rotated k and v to bf16 (te_llama__rope_kv_kernel, the KV "cache" being the layer's own (B, T, kv_dim) buffers)
     -> causal GQA attention (bf16 out, log-sum-exp kept) -> proj GEMM + x -> rmsnorm -> fc1 GEMM (bf16 gate, up)
     -> SwiGLU (bf16) -> fc2 GEMM + residual. Attention: head_dim 64 and 128 take the inference prefill kernel
     (tensor cores), which writes the log-sum-exp when asked; 16 and 32 take te_llama__t_attn_fwd_kernel (CUDA cores).
   LOSS: final rmsnorm, then lm_head over chunks of rows (fp32 logits of at most 2^28 floats), one block a row for
     the cross-entropy, which writes bf16 d loss / d logits scaled by 1 / (labels counted so far) in place of the
     row's softmax; dgrad and wgrad of lm_head follow chunk by chunk.
   BACKWARD: every GEMM is cuBLASLt bf16 x bf16 with fp32 accumulation: dgrad dX = dY W ("NN", fp32 out), wgrad
     dW += dY^T X ("NT", beta 1 into the fp32 gradients). A gradient that feeds a GEMM is rounded to bf16 first (as
     under torch.autocast); those feeding elementwise kernels (RMSNorm, SwiGLU, attention) stay fp32. The attention
     backward (te_llama__t_attn_bwd_kernel) recomputes P from q, k and the log-sum-exp (FlashAttention-2's scheme,
     on the CUDA cores): one block a (64-key tile, query head, sequence) loops over the query tiles at or after its
     keys, keeping dK and dV in registers, and adds dQ, dK and dV to the fp32 gradient with atomics.
     RMSNorm weight gradients and the embedding's scatter-add are fp32 atomics (per block partial sums first).
   OPTIMIZER: fp32 master weights, gradients and moments in one device allocation, each parameter's span starting
     at a multiple of 64 floats (cuBLASLt's alignment), except that a te layer's query, key and value views stay
     adjacent (their gradient is the fused QKV GEMM's output). The global norm is one reduction (double atomics); AdamW is
     one kernel over a table of tiles of at most 64K elements, each inside one parameter (torch's multi-tensor
     apply): it clips, updates, zeroes the gradient and rounds the master weight into the model's BF16 parameter.
     Traffic per optimizer step: 34 bytes a parameter (about 42 GB for Llama-3.2-1B, ~10 ms on an H200).
   MEMORY for the activations: per token and layer about 4 (3 h + q + 2 kv) + 2 (2 h + q + 2 kv + 3 I) + 4 heads
     bytes (and 4 q more at head_dim 16 and 32: the fp32 attention output), plus the backward's work buffers and the
     logits chunk; grown to the largest batch, kept in the device context until the model is freed.
   NUMERICS (tools/train_precision.c emulates each rounding point in the fp32 CPU pass; bench/NOTES.md, "Training
     precision", has the table): on the tiny test fixtures most of the gradient error against float64 comes from the
     forward's bf16 GEMM inputs, which a bf16 trainer cannot avoid: the weights themselves (1.85% relative L2 on a
     float32 checkpoint) and the RMSNorm outputs (1.05%); rounding them only in the wgrad GEMMs would not help. The
     avoidable part was at the attention: k and v read in bf16 (0.7%) and D = rowsum(dO O) from the bf16 O (0.6%,
     cancellation in dP - D). At head_dim 16 and 32 the attention kernels now read k and v from the fp32 QKV rows
     and D takes an fp32 copy of O; at 64 and 128 the tensor-core prefill kernel's bf16 q, k, v, P and O remain. */

#define TE_LLAMA__T_TILE 64          /* query rows and keys of an attention tile */
#define TE_LLAMA__T_THREADS 256      /* 16 x 16 threads: 4 rows by 4 columns of a 64 x 64 tile each */
#define TE_LLAMA__T_NORM_ROWS 16     /* rows a block of the RMSNorm backward takes */
#define TE_LLAMA__T_MAX_HIDDEN 12288 /* the RMSNorm backward keeps a block's weight gradient in shared memory */
#define TE_LLAMA__T_ADAM_TILE 65536  /* elements of an AdamW tile */
#define TE_LLAMA__T_ALIGN 64         /* floats: each parameter's span in the device state starts at a multiple */
#define TE_LLAMA__T_LOGITS ((size_t)1 << 28) /* fp32 logits of one lm_head chunk, at most */

/* out[t] = bf16(w * x[t] * inv[t]), inv[t] = 1 / sqrt(mean(x[t]^2) + eps), kept for the backward. One block a
   row: reads h fp32 + h bf16, writes h bf16 + 1 fp32. */
__global__ void te_llama__t_rmsnorm_kernel(const float *x, const te_llama__bf16 *w, te_llama__bf16 *out, float *inv, int h,
                                           float eps) {
    __shared__ float red[32];
    const float *xr = x + (size_t)blockIdx.x * h;
    te_llama__bf16 *o = out + (size_t)blockIdx.x * h;
    float ss = 0.0f, r;
    for (int i = threadIdx.x; i < h; i += blockDim.x) ss += xr[i] * xr[i];
    ss = te_llama__block_sum(ss, red);
    r = 1.0f / sqrtf(ss / (float)h + eps);
    if (threadIdx.x == 0) inv[blockIdx.x] = r;
    for (int i = threadIdx.x; i < h; i += blockDim.x) o[i] = __float2bfloat16(__bfloat162float(w[i]) * (xr[i] * r));
}

/* RMSNorm backward (y = w x inv): dx[t] += w dy[t] inv[t] - x[t] inv[t]^3 sum(w dy[t] x[t]) / h, and
   dw += sum_t dy[t] x[t] inv[t]. A block takes TE_LLAMA__T_NORM_ROWS rows, each thread the same columns in every
   row, so its share of dw sums in shared memory (h floats, dynamic) without barriers and goes to dw with one atomic
   add a column a block. Reads 2 n h fp32, reads and writes n h fp32. */
__global__ void te_llama__t_rmsnorm_back_kernel(const float *dy, const float *x, const float *inv, const te_llama__bf16 *w,
                                                float *dx, float *dw, int n, int h) {
    extern __shared__ float te_llama__t_dw[];
    __shared__ float red[32];
    const int t0 = blockIdx.x * TE_LLAMA__T_NORM_ROWS, t1 = min(t0 + TE_LLAMA__T_NORM_ROWS, n);
    for (int i = threadIdx.x; i < h; i += blockDim.x) te_llama__t_dw[i] = 0.0f;
    for (int t = t0; t < t1; t++) {
        const float *dyr = dy + (size_t)t * h, *xr = x + (size_t)t * h, r = inv[t];
        float *dxr = dx + (size_t)t * h, s = 0.0f, k;
        for (int i = threadIdx.x; i < h; i += blockDim.x) s += __bfloat162float(w[i]) * dyr[i] * xr[i];
        s = te_llama__block_sum(s, red);
        k = r * r * r * s / (float)h;
        for (int i = threadIdx.x; i < h; i += blockDim.x) {
            dxr[i] += __bfloat162float(w[i]) * dyr[i] * r - k * xr[i];
            te_llama__t_dw[i] += dyr[i] * xr[i] * r;
        }
    }
    for (int i = threadIdx.x; i < h; i += blockDim.x) atomicAdd(dw + i, te_llama__t_dw[i]);
}

/* The transpose of RoPE on the q and k heads of each token's QKV gradient (rotate back by the same angle), and the
   whole row rounded to bf16 for the QKV GEMMs. Grid (tokens, q + 2 kv heads), head_dim / 2 threads (rounded up to a
   warp) a head. Reads n ld fp32, writes n ld bf16. */
__global__ void te_llama__t_rope_back_kernel(const float *dqkv, const float *rope, te_llama__bf16 *out, int n_rot, int hd, int ld) {
    const int half = hd / 2, t = blockIdx.x, head = blockIdx.y;
    const size_t at = (size_t)t * ld + (size_t)head * hd;
    const float *d = dqkv + at, *cs = rope + (size_t)t * hd, *sn = cs + half;
    te_llama__bf16 *o = out + at;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        const float a = d[i], b = d[i + half];
        if (head < n_rot) {
            o[i] = __float2bfloat16(a * cs[i] + b * sn[i]);
            o[i + half] = __float2bfloat16(b * cs[i] - a * sn[i]);
        } else {
            o[i] = __float2bfloat16(a);
            o[i + half] = __float2bfloat16(b);
        }
    }
}

/* SwiGLU backward of one element: act = silu(g) u; *dg = d act u silu'(g), *du = d act silu(g), silu'(g) = s (1 + g
   (1 - s)), s = sigmoid(g), in fp32. */
__device__ __forceinline__ void te_llama__t_swiglu_back1(float g, float u, float da, float *dg, float *du) {
    const float s = 1.0f / (1.0f + expf(-g));
    *dg = da * u * s * (1.0f + g * (1.0f - s));
    *du = da * g * s;
}
/* SwiGLU backward over n tokens: g, u the bf16 fc1 outputs (n, 2 I), d act (n, I) fp32; dfc1 (n, 2 I) =
   (dg, du) in bf16 (te_llama__t_swiglu_back1). Grid te_llama__swiglu_grid, as the forward's kernel: no division,
   8 elements a thread (16-byte loads and stores) when I is a multiple of 8, one otherwise. The first form, one
   element a thread with a 64-bit division each, is what made the forward's kernel 57 us a layer of the 1B prefill
   against 33 (bench/NOTES.md run 12). Reads n 2I bf16 + n I fp32, writes n 2I bf16. */
__global__ void __launch_bounds__(TE_LLAMA__SWIGLU_THREADS)
te_llama__t_swiglu_back_kernel(const te_llama__bf16 *fc1, const float *dact, te_llama__bf16 *dfc1, int n, int I) {
    const int vec = I % 8 == 0, per_row = vec ? I / 8 : I;
    for (int t = blockIdx.y; t < n; t += gridDim.y) {
        const te_llama__bf16 *g = fc1 + (size_t)t * 2 * I, *u = g + I;
        const float *da = dact + (size_t)t * I;
        te_llama__bf16 *dg = dfc1 + (size_t)t * 2 * I, *du = dg + I;
        for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < per_row; c += gridDim.x * blockDim.x) {
            if (!vec) {
                float a, b;
                te_llama__t_swiglu_back1(__bfloat162float(g[c]), __bfloat162float(u[c]), da[c], &a, &b);
                dg[c] = __float2bfloat16(a);
                du[c] = __float2bfloat16(b);
                continue;
            }
            float gf[8], uf[8], df[8], a[8], b[8];
            te_llama__load8(g + 8 * (size_t)c, gf);
            te_llama__load8(u + 8 * (size_t)c, uf);
            te_llama__load8(da + 8 * (size_t)c, df);
#pragma unroll
            for (int e = 0; e < 8; e++) te_llama__t_swiglu_back1(gf[e], uf[e], df[e], &a[e], &b[e]);
            uint4 pa, pb;
            pa.x = te_llama__pack_bf16(a[0], a[1]); pa.y = te_llama__pack_bf16(a[2], a[3]);
            pa.z = te_llama__pack_bf16(a[4], a[5]); pa.w = te_llama__pack_bf16(a[6], a[7]);
            pb.x = te_llama__pack_bf16(b[0], b[1]); pb.y = te_llama__pack_bf16(b[2], b[3]);
            pb.z = te_llama__pack_bf16(b[4], b[5]); pb.w = te_llama__pack_bf16(b[6], b[7]);
            *(uint4 *)(dg + 8 * (size_t)c) = pa;
            *(uint4 *)(du + 8 * (size_t)c) = pb;
        }
    }
}

/* Token cross-entropy of rows of fp32 logits against their targets (a target outside [0, V): the row does not
   count, loss 0): loss[r] = logsumexp(row) - row[y]; when dlogits is given, dlogits[r] = bf16(scale (softmax(row) -
   onehot(y))), zeros for a row that does not count. One block a row: reads the row three times (max, sum, write),
   mostly from L2. */
__global__ void te_llama__t_xent_kernel(const float *logits, const int32_t *target, float *loss, te_llama__bf16 *dlogits,
                                        int V, float scale) {
    __shared__ float red[32];
    const float *row = logits + (size_t)blockIdx.x * V;
    te_llama__bf16 *d = dlogits ? dlogits + (size_t)blockIdx.x * V : NULL;
    const int y = target[blockIdx.x];
    float mx = -INFINITY, z = 0.0f;
    if (y < 0 || y >= V) {
        if (d) for (int i = threadIdx.x; i < V; i += blockDim.x) d[i] = __float2bfloat16(0.0f);
        if (threadIdx.x == 0) loss[blockIdx.x] = 0.0f;
        return;
    }
    for (int i = threadIdx.x; i < V; i += blockDim.x) mx = fmaxf(mx, row[i]);
    mx = te_llama__block_max(mx, red);
    for (int i = threadIdx.x; i < V; i += blockDim.x) z += expf(row[i] - mx);
    z = te_llama__block_sum(z, red);
    if (threadIdx.x == 0) loss[blockIdx.x] = mx + logf(z) - row[y];
    if (d) {
        const float k = scale / z;
        for (int i = threadIdx.x; i < V; i += blockDim.x) d[i] = __float2bfloat16(expf(row[i] - mx) * k - (i == y ? scale : 0.0f));
    }
}

/* dd[t, head] = sum_d dO[t, head, d] O[t, head, d] (FlashAttention's D): O in fp32 (att32) when the forward kept
   it (head_dim 16, 32: then D equals rowsum(P dP) of the backward up to fp32 rounding), else the bf16 O. One warp a
   (token, head); dO and O are (n, heads, hd), so (token, head) w starts at w hd. */
__global__ void te_llama__t_attn_dd_kernel(const float *datt, const te_llama__bf16 *att, const float *att32, float *dd, int rows, int hd) {
    const int w = (int)((blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5), lane = threadIdx.x & 31;
    float s = 0.0f;
    if (w >= rows) return;
    for (int d = lane; d < hd; d += 32)
        s += datt[(size_t)w * hd + d] * (att32 ? att32[(size_t)w * hd + d] : __bfloat162float(att[(size_t)w * hd + d]));
    s = te_llama__warp_sum(s);
    if (lane == 0) dd[w] = s;
}

/* Shared memory of the training attention kernels: q, k, v (forward) or k, v, q, dO (backward) tiles of 64 rows of
   HD + 1 floats (the odd stride keeps 16 threads reading 16 rows conflict-free), the 64 x 65 probability tile, and
   (backward) the tile's log-sum-exp and D. */
static size_t te_llama__t_fwd_smem(int hd) { return sizeof(float) * (size_t)(3 * TE_LLAMA__T_TILE * (hd + 1) + TE_LLAMA__T_TILE * (TE_LLAMA__T_TILE + 1)); }
static size_t te_llama__t_bwd_smem(int hd) {
    return sizeof(float) * (size_t)(4 * TE_LLAMA__T_TILE * (hd + 1) + TE_LLAMA__T_TILE * (TE_LLAMA__T_TILE + 1) + 2 * TE_LLAMA__T_TILE);
}

/* Causal GQA attention forward for training, head_dim HD (16 or 32; 64 and 128 use the tensor-core prefill kernel),
   on the CUDA cores: one block a (64-query tile, head, sequence), 16 x 16 threads, thread (ty, tx) owning query rows
   4 ty .. 4 ty + 3 and keys (or output dims) tx + 16 j. Key tiles 0 .. its own stream through shared memory; online
   softmax in fp32 (natural log). q, k and v all from the fp32 QKV rows after RoPE (bf16 k and v cost about 0.7%
   relative error on the fixtures' gradients, see NUMERICS above). Writes O (bf16 for the proj GEMM, and fp32 for the
   backward's D: (n, heads, HD) each) and the log-sum-exp of the scaled scores (B, heads, T). */
template <int HD>
__global__ void __launch_bounds__(TE_LLAMA__T_THREADS)
te_llama__t_attn_fwd_kernel(const float *qkv, te_llama__bf16 *out, float *out32, float *lse, int T, int nh, int nkv, float scale) {
    constexpr int BT = TE_LLAMA__T_TILE, LD = HD + 1, DJ = HD / 16;
    extern __shared__ float te_llama__t_smem[];
    float *Qs = te_llama__t_smem, *Ks = Qs + BT * LD, *Vs = Ks + BT * LD, *Ps = Vs + BT * LD; /* Ps: [BT][BT + 1] */
    const int qt = blockIdx.x, h = blockIdx.y, b = blockIdx.z, tid = threadIdx.x, ty = tid >> 4, tx = tid & 15;
    const int q_dim = nh * HD, kv_dim = nkv * HD, ld = q_dim + 2 * kv_dim, kvh = h / (nh / nkv), q0 = qt * BT;
    const size_t tok0 = (size_t)b * T;
    float m[4], l[4], o[4][DJ];
    for (int i = tid; i < BT * HD; i += TE_LLAMA__T_THREADS) {
        const int r = i / HD, d = i - r * HD;
        Qs[r * LD + d] = q0 + r < T ? qkv[(tok0 + q0 + r) * ld + (size_t)h * HD + d] : 0.0f;
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
#pragma unroll
        for (int j = 0; j < DJ; j++) o[i][j] = 0.0f;
    }
    for (int kt = 0; kt <= qt; kt++) {
        const int k0 = kt * BT;
        float s[4][4];
        __syncthreads(); /* the last tile's K, V and P are read */
        for (int i = tid; i < BT * HD; i += TE_LLAMA__T_THREADS) {
            const int r = i / HD, d = i - r * HD, ok = k0 + r < T;
            const size_t at = (tok0 + (size_t)(ok ? k0 + r : 0)) * ld + q_dim + (size_t)kvh * HD + d;
            Ks[r * LD + d] = ok ? qkv[at] : 0.0f;
            Vs[r * LD + d] = ok ? qkv[at + kv_dim] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int j = 0; j < 4; j++) s[i][j] = 0.0f;
        for (int d = 0; d < HD; d++) {
            float a[4], k[4];
#pragma unroll
            for (int i = 0; i < 4; i++) a[i] = Qs[(4 * ty + i) * LD + d];
#pragma unroll
            for (int j = 0; j < 4; j++) k[j] = Ks[(tx + 16 * j) * LD + d];
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) s[i][j] += a[i] * k[j];
        }
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int q = q0 + 4 * ty + i;
            float mx = -INFINITY, ls = 0.0f, mn, corr;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const int key = k0 + tx + 16 * j;
                s[i][j] = key <= q && key < T ? s[i][j] * scale : -INFINITY;
                mx = fmaxf(mx, s[i][j]);
            }
            for (int off = 8; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off)); /* the row's 16 threads */
            mn = fmaxf(m[i], mx); /* finite: key 0 is visible to every row, so the first tile sets it */
            corr = expf(m[i] - mn);
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const float p = expf(s[i][j] - mn);
                Ps[(4 * ty + i) * (BT + 1) + tx + 16 * j] = p;
                ls += p;
            }
            for (int off = 8; off > 0; off >>= 1) ls += __shfl_xor_sync(0xffffffffu, ls, off);
            l[i] = l[i] * corr + ls;
            m[i] = mn;
#pragma unroll
            for (int j = 0; j < DJ; j++) o[i][j] *= corr;
        }
        __syncthreads();
        for (int c = 0; c < BT; c++) {
            float v[DJ];
#pragma unroll
            for (int j = 0; j < DJ; j++) v[j] = Vs[c * LD + tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const float p = Ps[(4 * ty + i) * (BT + 1) + c];
#pragma unroll
                for (int j = 0; j < DJ; j++) o[i][j] += p * v[j];
            }
        }
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int q = q0 + 4 * ty + i;
        if (q >= T) continue;
#pragma unroll
        for (int j = 0; j < DJ; j++) {
            const size_t at = (tok0 + q) * q_dim + (size_t)h * HD + tx + 16 * j;
            out[at] = __float2bfloat16(o[i][j] / l[i]);
            out32[at] = o[i][j] / l[i];
        }
        if (tx == 0) lse[((size_t)b * nh + h) * T + q] = m[i] + logf(l[i]);
    }
}

/* Causal GQA attention backward, FlashAttention-2's scheme on the CUDA cores: one block a (64-key tile, query
   head, sequence), 16 x 16 threads (a block per query head rather than per kv head: four times the blocks for
   Llama-3's groups, a shorter critical path). Its keys and values stay in shared memory; for each query tile at or
   after the key tile it loads q, dO, the log-sum-exp and D (= rowsum(dO O)), recomputes
   P = exp(scale q k - lse) (k and v in fp32 from the QKV rows at head_dim 16 and 32, from the bf16 buffers at 64
   and 128, as the forward read them), and accumulates dV += P^T dO and dK += dS^T q in registers (thread (ty, tx): keys
   4 ty .. 4 ty + 3, dims tx + 16 j), dS = P (dO v - D); dQ = scale dS k is added to the fp32 gradient with atomics.
   At the end dK (times scale) and dV are added with atomics into their columns of the fp32 QKV gradient (the
   group's query heads share them; the whole gradient must be zero before the launch). Traffic: per block its keys and values once, and per (head, query tile) 64 x HD fp32 of
   q and dO, and 64 x HD atomics. */
template <int HD>
__global__ void __launch_bounds__(TE_LLAMA__T_THREADS)
te_llama__t_attn_bwd_kernel(const float *qkv, const te_llama__bf16 *kc, const te_llama__bf16 *vc, const float *datt, const float *lse,
                            const float *dd, float *dqkv, int T, int nh, int nkv, float scale) {
    constexpr int BT = TE_LLAMA__T_TILE, LD = HD + 1, DJ = HD / 16;
    extern __shared__ float te_llama__t_smem[];
    float *Ks = te_llama__t_smem, *Vs = Ks + BT * LD, *Qs = Vs + BT * LD, *Os = Qs + BT * LD, *Ps = Os + BT * LD;
    float *Ls = Ps + BT * (BT + 1), *Ds = Ls + BT;
    const int kt = blockIdx.x, h = blockIdx.y, b = blockIdx.z, tid = threadIdx.x, ty = tid >> 4, tx = tid & 15;
    const int q_dim = nh * HD, kv_dim = nkv * HD, ld = q_dim + 2 * kv_dim, kvh = h / (nh / nkv), k0 = kt * BT, n_qt = (T + BT - 1) / BT;
    const size_t tok0 = (size_t)b * T;
    float dk[4][DJ], dv[4][DJ];
    for (int i = tid; i < BT * HD; i += TE_LLAMA__T_THREADS) { /* k and v as the forward read them */
        const int r = i / HD, d = i - r * HD, ok = k0 + r < T;
        const size_t tok = tok0 + (size_t)(ok ? k0 + r : 0), at = tok * kv_dim + (size_t)kvh * HD + d, af = tok * ld + q_dim + (size_t)kvh * HD + d;
        Ks[r * LD + d] = !ok ? 0.0f : HD <= 32 ? qkv[af] : __bfloat162float(kc[at]);
        Vs[r * LD + d] = !ok ? 0.0f : HD <= 32 ? qkv[af + kv_dim] : __bfloat162float(vc[at]);
    }
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < DJ; j++) dk[i][j] = dv[i][j] = 0.0f;
    for (int qt = kt; qt < n_qt; qt++) {
        const int q0 = qt * BT;
        float s[4][4], dp[4][4];
        __syncthreads(); /* the last tile's q, dO and P are read */
        for (int i = tid; i < BT * HD; i += TE_LLAMA__T_THREADS) {
            const int r = i / HD, d = i - r * HD, ok = q0 + r < T;
            const size_t row = tok0 + (size_t)(ok ? q0 + r : 0);
            Qs[r * LD + d] = ok ? qkv[row * ld + (size_t)h * HD + d] : 0.0f;
            Os[r * LD + d] = ok ? datt[row * q_dim + (size_t)h * HD + d] : 0.0f;
        }
        if (tid < BT) {
            const int ok = q0 + tid < T;
            Ls[tid] = ok ? lse[((size_t)b * nh + h) * T + q0 + tid] : 0.0f;
            Ds[tid] = ok ? dd[(tok0 + q0 + tid) * nh + h] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int j = 0; j < 4; j++) s[i][j] = dp[i][j] = 0.0f;
        for (int d = 0; d < HD; d++) {
            float a[4], o[4], k[4], v[4];
#pragma unroll
            for (int i = 0; i < 4; i++) { a[i] = Qs[(4 * ty + i) * LD + d]; o[i] = Os[(4 * ty + i) * LD + d]; }
#pragma unroll
            for (int j = 0; j < 4; j++) { k[j] = Ks[(tx + 16 * j) * LD + d]; v[j] = Vs[(tx + 16 * j) * LD + d]; }
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) { s[i][j] += a[i] * k[j]; dp[i][j] += o[i] * v[j]; }
        }
        /* P into shared memory for dV; dS kept in s until P is consumed */
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int r = 4 * ty + i, q = q0 + r;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const int key = k0 + tx + 16 * j;
                const float p = key <= q && q < T && key < T ? expf(s[i][j] * scale - Ls[r]) : 0.0f;
                Ps[r * (BT + 1) + tx + 16 * j] = p;
                s[i][j] = p * (dp[i][j] - Ds[r]);
            }
        }
        __syncthreads();
        for (int r = 0; r < BT; r++) { /* dV[c] += sum_r P[r][c] dO[r] */
            float o[DJ];
#pragma unroll
            for (int j = 0; j < DJ; j++) o[j] = Os[r * LD + tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const float p = Ps[r * (BT + 1) + 4 * ty + i];
#pragma unroll
                for (int j = 0; j < DJ; j++) dv[i][j] += p * o[j];
            }
        }
        __syncthreads();
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int j = 0; j < 4; j++) Ps[(4 * ty + i) * (BT + 1) + tx + 16 * j] = s[i][j];
        __syncthreads();
        for (int r = 0; r < BT; r++) { /* dK[c] += sum_r dS[r][c] q[r] */
            float a[DJ];
#pragma unroll
            for (int j = 0; j < DJ; j++) a[j] = Qs[r * LD + tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const float p = Ps[r * (BT + 1) + 4 * ty + i];
#pragma unroll
                for (int j = 0; j < DJ; j++) dk[i][j] += p * a[j];
            }
        }
        {   /* dQ[r] = scale sum_c dS[r][c] k[c] */
            float dq[4][DJ];
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < DJ; j++) dq[i][j] = 0.0f;
            for (int c = 0; c < BT; c++) {
                float k[DJ];
#pragma unroll
                for (int j = 0; j < DJ; j++) k[j] = Ks[c * LD + tx + 16 * j];
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    const float p = Ps[(4 * ty + i) * (BT + 1) + c];
#pragma unroll
                    for (int j = 0; j < DJ; j++) dq[i][j] += p * k[j];
                }
            }
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int q = q0 + 4 * ty + i;
                if (q >= T) continue;
#pragma unroll
                for (int j = 0; j < DJ; j++) atomicAdd(dqkv + (tok0 + q) * ld + (size_t)h * HD + tx + 16 * j, dq[i][j] * scale);
            }
        }
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int key = k0 + 4 * ty + i;
        if (key >= T) continue;
        float *row = dqkv + (tok0 + key) * ld + q_dim + (size_t)kvh * HD;
#pragma unroll
        for (int j = 0; j < DJ; j++) {
            atomicAdd(row + tx + 16 * j, dk[i][j] * scale);
            atomicAdd(row + kv_dim + tx + 16 * j, dv[i][j]);
        }
    }
}

/* The embedding's backward: a row gather, so a row scatter-add, g[tokens[t]] += dx[t] (fp32 atomics: tokens repeat).
   One block a token. */
__global__ void te_llama__t_embed_back_kernel(const float *dx, const int32_t *tokens, float *g, int h) {
    float *row = g + (size_t)tokens[blockIdx.x] * h;
    const float *d = dx + (size_t)blockIdx.x * h;
    for (int i = threadIdx.x; i < h; i += blockDim.x) atomicAdd(row + i, d[i]);
}

__global__ void te_llama__t_to_bf16_kernel(const float *in, te_llama__bf16 *out, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) out[i] = __float2bfloat16(in[i]);
}

__global__ void te_llama__t_scale_kernel(float *x, size_t n, float s) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) x[i] *= s;
}

/* One parameter in the optimizer's tables: its BF16 storage and where its span starts in the flat fp32 arrays. */
typedef struct te_llama__tparam {
    te_llama__bf16 *data;
    unsigned long long offset;
    int two_d;            /* weight decay applies */
    int pad;
} te_llama__tparam;
/* Elements [begin, end) of the flat arrays, all inside parameter `param`. */
typedef struct te_llama__ttile {
    unsigned long long begin, end;
    int param, pad;
} te_llama__ttile;

/* master[k] = float(the parameter's stored value), or (to_weights) the parameter = bf16(master[k]). One block a tile. */
__global__ void te_llama__t_master_kernel(const te_llama__ttile *tiles, const te_llama__tparam *params, float *master, int to_weights) {
    const te_llama__ttile t = tiles[blockIdx.x];
    const te_llama__tparam p = params[t.param];
    for (unsigned long long k = t.begin + threadIdx.x; k < t.end; k += blockDim.x) {
        if (to_weights) p.data[k - p.offset] = __float2bfloat16(master[k]);
        else master[k] = __bfloat162float(p.data[k - p.offset]);
    }
}

/* *sumsq += sum of g^2 (fp32 per thread and block, double across blocks). */
__global__ void te_llama__t_sumsq_kernel(const float *g, size_t n, double *sumsq) {
    __shared__ float red[32];
    float s = 0.0f;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) s += g[i] * g[i];
    s = te_llama__block_sum(s, red);
    if (threadIdx.x == 0) atomicAdd(sumsq, (double)s);
}

/* The AdamW step of te_llama_trainer_update, element by element in the CPU's order of operations: clip by
   clip / (norm + 1e-6) when that is below 1 (norm from *sumsq; clip <= 0: off), decay (2-D parameters), the moments,
   the update; then the gradient is zeroed and the master weight rounded into the parameter's BF16 storage. One block
   a tile: reads 16 bytes an element, writes 18. */
__global__ void te_llama__t_adamw_kernel(const te_llama__ttile *tiles, const te_llama__tparam *params, float *w, float *g, float *m1,
                                         float *m2, const double *sumsq, float clip, float decay, float b1, float b2, float eps,
                                         float step_size, float bc2) {
    const te_llama__ttile t = tiles[blockIdx.x];
    const te_llama__tparam p = params[t.param];
    const float dec = p.two_d ? decay : 1.0f;
    float coef = 1.0f;
    if (clip > 0.0f) {
        const float c = (float)((double)clip / (sqrt(*sumsq) + 1e-6));
        if (c < 1.0f) coef = c;
    }
    for (unsigned long long k = t.begin + threadIdx.x; k < t.end; k += blockDim.x) {
        const float gk = g[k] * coef;
        float wk = w[k] * dec, a = m1[k], v = m2[k];
        a += (1.0f - b1) * (gk - a);
        v = v * b2 + (1.0f - b2) * gk * gk;
        wk -= step_size * a / (sqrtf(v) / bc2 + eps);
        w[k] = wk;
        m1[k] = a;
        m2[k] = v;
        g[k] = 0.0f;
        p.data[k - p.offset] = __float2bfloat16(wk);
    }
}

/* The activations a training forward keeps and the backward's work buffers, for up to cap tokens (one device
   allocation, te_llama__cuda.train). Per-layer arrays are (layers, cap, ...). */
typedef struct te_llama__tact {
    int cap;                 /* tokens */
    int chunk;               /* rows of an lm_head chunk */
    void *mem;
    size_t bytes;
    int32_t *ints;           /* (8, cap): tokens, targets (the label each position is scored against, or -1),
                                positions, sequences, then the prefill attention's tile table (4 ints a tile) */
    int32_t *host_ints;      /* (8, cap) host copy */
    float *rope;             /* (cap, head_dim) cos then sin of each token's position */
    float *x;                /* (layers + 1, cap, h) each layer's input; the last is the final norm's input */
    float *xmid;             /* (layers, cap, h) residual stream after attention */
    float *inv;              /* (2 layers + 1, cap) 1 / rms: each layer's two norms, then the final norm */
    te_llama__bf16 *xn1;     /* (layers, cap, h) normed inputs of QKV */
    te_llama__bf16 *xn2;     /* (layers, cap, h) normed inputs of fc1 */
    float *qkv;              /* (layers, cap, q_dim + 2 kv_dim) q and k rotated */
    te_llama__bf16 *kc, *vc; /* (layers, cap, kv_dim) rotated k and v in bf16, as the attention read them */
    te_llama__bf16 *att;     /* (layers, cap, q_dim) attention output */
    float *att32;            /* (layers, cap, q_dim) the same in fp32 for D; head_dim 16 and 32 only, else NULL */
    float *lse;              /* (layers, B, heads, T) log-sum-exp of each query row's scaled scores */
    te_llama__bf16 *fc1;     /* (layers, cap, 2 I) gate then up */
    te_llama__bf16 *act;     /* (layers, cap, I) */
    te_llama__bf16 *xf;      /* (cap, h) final normed rows, lm_head's input */
    float *dx;               /* (cap, h) gradient of the residual stream */
    float *dxn;              /* (cap, h) gradient at a norm's output */
    te_llama__bf16 *dxb;     /* (cap, h) dx in bf16 for the GEMMs */
    float *datt;             /* (cap, q_dim) */
    float *dd;               /* (cap, heads) rowsum(dO O) */
    float *dqkv;             /* (cap, q_dim + 2 kv_dim) */
    te_llama__bf16 *dqkvb;   /* (cap, q_dim + 2 kv_dim) after RoPE's transpose, bf16 */
    float *dact;             /* (cap, I) */
    te_llama__bf16 *dfc1;    /* (cap, 2 I) */
    float *logits;           /* (chunk, vocab) */
    te_llama__bf16 *dlogits; /* (chunk, vocab) */
    float *row_loss;         /* (cap) each position's token loss, 0 where its target does not count */
    float *host_loss;        /* (cap) host copy */
} te_llama__tact;

/* A trainer's device state (te_llama_trainer.device). */
typedef struct te_llama__tstate {
    size_t n;                /* floats in each flat array (padded spans) */
    size_t *off;             /* (n_params + 1) host: parameter i's span starts at off[i] */
    float *mem;              /* (4 n) device: master, grad, exp_avg, exp_avg_sq */
    float *master, *grad, *m1, *m2;
    te_llama__tparam *params; /* (n_params) device */
    te_llama__ttile *tiles;  /* (n_tiles) device */
    int n_tiles;
    double *sumsq;           /* (1) device */
} te_llama__tstate;

static void te_llama__tact_free(te_llama__cuda *ctx) {
    te_llama__tact *a = (te_llama__tact *)ctx->train;
    if (!a) return;
    cudaFree(a->mem);
    te_llama__host_free(&ctx->allocator, a->host_ints);
    te_llama__host_free(&ctx->allocator, a->host_loss);
    te_llama__host_free(&ctx->allocator, a);
    ctx->train = NULL;
}

/* Grow the training activations to n tokens (waits for the stream: the old buffers may be in use). */
static te_llama_result te_llama__tact_ensure(te_llama_model *m, te_llama__cuda *ctx, int n) {
    const te_llama_config *c = &m->config;
    const size_t L = (size_t)c->num_hidden_layers, h = (size_t)c->hidden_size, nh = (size_t)c->num_attention_heads;
    const size_t q = nh * c->head_dim, kv = (size_t)c->num_key_value_heads * c->head_dim, ld = q + 2 * kv;
    const size_t I = (size_t)c->intermediate_size, V = (size_t)c->vocab_size;
    te_llama__tact *a = (te_llama__tact *)ctx->train, fresh;
    size_t cap, chunk, off = 0, o[32];
    int k = 0;
    cudaError_t e;
    char msg[200];
    if (a && n <= a->cap) return TE_LLAMA_OK;
    cap = te_llama__round_up((size_t)n, TE_LLAMA__T_TILE);
    chunk = TE_LLAMA__T_LOGITS / V;
    chunk = chunk < TE_LLAMA__T_TILE ? TE_LLAMA__T_TILE : chunk / TE_LLAMA__T_TILE * TE_LLAMA__T_TILE;
    if (chunk > cap) chunk = cap;
    TE_LLAMA__CU(cudaStreamSynchronize(ctx->stream));
    te_llama__tact_free(ctx);
    memset(&fresh, 0, sizeof fresh);
#define TE_LLAMA__TPART(bytes) do { o[k++] = off; off = te_llama__round_up(off + (bytes), TE_LLAMA__ALIGN); } while (0)
    TE_LLAMA__TPART(cap * 8 * 4);            /* 0 ints */
    TE_LLAMA__TPART(cap * (size_t)c->head_dim * 4);
    TE_LLAMA__TPART((L + 1) * cap * h * 4);  /* 2 x */
    TE_LLAMA__TPART(L * cap * h * 4);
    TE_LLAMA__TPART((2 * L + 1) * cap * 4);
    TE_LLAMA__TPART(L * cap * h * 2);        /* 5 xn1 */
    TE_LLAMA__TPART(L * cap * h * 2);
    TE_LLAMA__TPART(L * cap * ld * 4);
    TE_LLAMA__TPART(L * cap * kv * 2);       /* 8 kc */
    TE_LLAMA__TPART(L * cap * kv * 2);
    TE_LLAMA__TPART(L * cap * q * 2);
    TE_LLAMA__TPART(L * cap * nh * 4);       /* 11 lse */
    TE_LLAMA__TPART(L * cap * 2 * I * 2);
    TE_LLAMA__TPART(L * cap * I * 2);
    TE_LLAMA__TPART(cap * h * 2);            /* 14 xf */
    TE_LLAMA__TPART(cap * h * 4);
    TE_LLAMA__TPART(cap * h * 4);
    TE_LLAMA__TPART(cap * h * 2);            /* 17 dxb */
    TE_LLAMA__TPART(cap * q * 4);
    TE_LLAMA__TPART(cap * nh * 4);
    TE_LLAMA__TPART(cap * ld * 4);           /* 20 dqkv */
    TE_LLAMA__TPART(cap * ld * 2);
    TE_LLAMA__TPART(cap * I * 4);
    TE_LLAMA__TPART(cap * 2 * I * 2);        /* 23 dfc1 */
    TE_LLAMA__TPART(chunk * V * 4);
    TE_LLAMA__TPART(chunk * V * 2);
    TE_LLAMA__TPART(cap * 4);                /* 26 row_loss */
    TE_LLAMA__TPART(c->head_dim <= 32 ? L * cap * q * 4 : 0); /* 27 att32 */
#undef TE_LLAMA__TPART
    fresh.host_ints = (int32_t *)te_llama__host_alloc(&ctx->allocator, cap * 8 * 4);
    fresh.host_loss = (float *)te_llama__host_alloc(&ctx->allocator, cap * 4);
    a = (te_llama__tact *)te_llama__host_alloc(&ctx->allocator, sizeof *a);
    if (!fresh.host_ints || !fresh.host_loss || !a) {
        te_llama__host_free(&ctx->allocator, fresh.host_ints);
        te_llama__host_free(&ctx->allocator, fresh.host_loss);
        te_llama__host_free(&ctx->allocator, a);
        return TE_LLAMA__FAIL(TE_LLAMA_ERR_NOMEM, "host copies of a training batch");
    }
    if ((e = cudaMalloc(&fresh.mem, off)) != cudaSuccess) {
        te_llama__host_free(&ctx->allocator, fresh.host_ints);
        te_llama__host_free(&ctx->allocator, fresh.host_loss);
        te_llama__host_free(&ctx->allocator, a);
        snprintf(msg, sizeof msg, "cudaMalloc(training activations for %d tokens: %zu MiB)", n, off >> 20);
        return te_llama__cuda_error(e, msg, __FILE__, __LINE__);
    }
#define TE_LLAMA__TAT(i, type) ((type *)((char *)fresh.mem + o[i]))
    fresh.ints = TE_LLAMA__TAT(0, int32_t);
    fresh.rope = TE_LLAMA__TAT(1, float);
    fresh.x = TE_LLAMA__TAT(2, float);
    fresh.xmid = TE_LLAMA__TAT(3, float);
    fresh.inv = TE_LLAMA__TAT(4, float);
    fresh.xn1 = TE_LLAMA__TAT(5, te_llama__bf16);
    fresh.xn2 = TE_LLAMA__TAT(6, te_llama__bf16);
    fresh.qkv = TE_LLAMA__TAT(7, float);
    fresh.kc = TE_LLAMA__TAT(8, te_llama__bf16);
    fresh.vc = TE_LLAMA__TAT(9, te_llama__bf16);
    fresh.att = TE_LLAMA__TAT(10, te_llama__bf16);
    fresh.lse = TE_LLAMA__TAT(11, float);
    fresh.fc1 = TE_LLAMA__TAT(12, te_llama__bf16);
    fresh.act = TE_LLAMA__TAT(13, te_llama__bf16);
    fresh.xf = TE_LLAMA__TAT(14, te_llama__bf16);
    fresh.dx = TE_LLAMA__TAT(15, float);
    fresh.dxn = TE_LLAMA__TAT(16, float);
    fresh.dxb = TE_LLAMA__TAT(17, te_llama__bf16);
    fresh.datt = TE_LLAMA__TAT(18, float);
    fresh.dd = TE_LLAMA__TAT(19, float);
    fresh.dqkv = TE_LLAMA__TAT(20, float);
    fresh.dqkvb = TE_LLAMA__TAT(21, te_llama__bf16);
    fresh.dact = TE_LLAMA__TAT(22, float);
    fresh.dfc1 = TE_LLAMA__TAT(23, te_llama__bf16);
    fresh.logits = TE_LLAMA__TAT(24, float);
    fresh.dlogits = TE_LLAMA__TAT(25, te_llama__bf16);
    fresh.row_loss = TE_LLAMA__TAT(26, float);
    fresh.att32 = c->head_dim <= 32 ? TE_LLAMA__TAT(27, float) : NULL;
#undef TE_LLAMA__TAT
    fresh.cap = (int)cap;
    fresh.chunk = (int)chunk;
    fresh.bytes = off;
    *a = fresh;
    ctx->train = a;
    return TE_LLAMA_OK;
}

/* What training needs beyond what the forward checks: a head dim the attention kernels take, a hidden size the
   RMSNorm backward takes, no FP8. */
static te_llama_result te_llama__train_check(te_llama_model *m, te_llama__cuda *ctx) {
    const te_llama_config *c = &m->config;
    char msg[200];
    if (c->head_dim != 16 && c->head_dim != 32 && c->head_dim != 64 && c->head_dim != 128) {
        snprintf(msg, sizeof msg, "training on CUDA takes head_dim 16, 32, 64 or 128; this model has %d", c->head_dim);
        return TE_LLAMA__FAIL(TE_LLAMA_ERR_UNSUPPORTED, msg);
    }
    if (c->hidden_size > TE_LLAMA__T_MAX_HIDDEN) {
        snprintf(msg, sizeof msg, "training on CUDA takes hidden sizes up to %d; this model has %d", TE_LLAMA__T_MAX_HIDDEN, c->hidden_size);
        return TE_LLAMA__FAIL(TE_LLAMA_ERR_UNSUPPORTED, msg);
    }
    if (ctx->fp8) return TE_LLAMA__FAIL(TE_LLAMA_ERR_UNSUPPORTED, "training on CUDA with FP8 on: switch FP8 off (te_llama_fp8_disable) first");
    return TE_LLAMA_OK;
}

/* Launch the training attention kernels at head dim HD_ (a macro body: the launch line differs per kernel). */
#define TE_LLAMA__T_HD_SWITCH(hd, CALL) \
    switch (hd) { case 16: CALL(16); break; case 32: CALL(32); break; case 64: CALL(64); break; default: CALL(128); break; }

/* The forward of every layer over the batch in a->ints (n tokens, B sequences of T), keeping the activations. */
static te_llama_result te_llama__t_forward(te_llama_model *m, te_llama__cuda *ctx, te_llama__tact *a, int n, int B, int T, int n_tiles) {
    const te_llama_config *c = &m->config;
    const int h = c->hidden_size, hd = c->head_dim, nh = c->num_attention_heads, nkv = c->num_key_value_heads, L = c->num_hidden_layers;
    const int q_dim = nh * hd, kv_dim = nkv * hd, ld = q_dim + 2 * kv_dim, I = c->intermediate_size, cap = a->cap;
    const int32_t *pos = a->ints + 2 * cap, *seq = a->ints + 3 * cap;
    const float eps = (float)c->rms_norm_eps, scale = 1.0f / sqrtf((float)hd);
    te_llama_result r;
    int l;
    te_llama__embed_kernel<<<n, 256, 0, ctx->stream>>>((const te_llama__bf16 *)m->embed_tokens.data, a->ints, a->x, h);
    TE_LLAMA__LAUNCHED(embed);
    te_llama__rope_table_kernel<<<n, 64, 0, ctx->stream>>>(pos, ctx->inv_freq, a->rope, hd / 2);
    TE_LLAMA__LAUNCHED(rope_table);
    for (l = 0; l < L; l++) {
        const te_llama_param *P = m->layers[l]->params;
        const size_t nl = (size_t)l * cap;
        float *x = a->x + nl * h, *xmid = a->xmid + nl * h, *qkv = a->qkv + nl * ld, *lse = a->lse + nl * nh;
        te_llama__bf16 *xn1 = a->xn1 + nl * h, *xn2 = a->xn2 + nl * h, *kc = a->kc + nl * kv_dim, *vc = a->vc + nl * kv_dim;
        te_llama__bf16 *att = a->att + nl * q_dim, *fc1 = a->fc1 + nl * 2 * I, *act = a->act + nl * I;
        te_llama__t_rmsnorm_kernel<<<n, 256, 0, ctx->stream>>>(x, (const te_llama__bf16 *)P[0].data, xn1, a->inv + (size_t)(2 * l) * cap, h, eps);
        TE_LLAMA__LAUNCHED(t_rmsnorm);
        if ((r = te_llama__gemm(ctx, P[1].data, xn1, qkv, CUDA_R_32F, ld, n, h, 0))) return r;
        te_llama__rope_kv(ctx->stream, qkv, a->rope, pos, seq, kc, vc, n, nh, nkv, hd, T);
        TE_LLAMA__LAUNCHED(rope_kv);
        if (hd == 64 || hd == 128) {
            if ((r = te_llama__flash_prefill(ctx, 1, qkv, (const int4 *)(a->ints + 4 * cap), n_tiles, kc, vc, att, lse, NULL, nh, nkv, hd, T,
                                             scale * 1.4426950408889634f)))
                return r;
        } else {
            const dim3 grid((unsigned)((T + TE_LLAMA__T_TILE - 1) / TE_LLAMA__T_TILE), (unsigned)nh, (unsigned)B);
#define TE_LLAMA__T_FWD(HD_) te_llama__t_attn_fwd_kernel<HD_><<<grid, TE_LLAMA__T_THREADS, te_llama__t_fwd_smem(HD_), ctx->stream>>>( \
                qkv, att, a->att32 + nl * q_dim, lse, T, nh, nkv, scale)
            TE_LLAMA__T_HD_SWITCH(hd, TE_LLAMA__T_FWD)
#undef TE_LLAMA__T_FWD
            TE_LLAMA__LAUNCHED(t_attn_fwd);
        }
        if ((r = te_llama__gemm_op(ctx, 1, 0, P[4].data, att, x, xmid, CUDA_R_32F, h, n, q_dim, 1))) return r;
        te_llama__t_rmsnorm_kernel<<<n, 256, 0, ctx->stream>>>(xmid, (const te_llama__bf16 *)P[5].data, xn2, a->inv + (size_t)(2 * l + 1) * cap, h, eps);
        TE_LLAMA__LAUNCHED(t_rmsnorm);
        if ((r = te_llama__gemm(ctx, P[6].data, xn2, fc1, CUDA_R_16BF, 2 * I, n, h, 0))) return r;
        te_llama__swiglu_kernel<te_llama__bf16><<<te_llama__swiglu_grid(n, I), TE_LLAMA__SWIGLU_THREADS, 0, ctx->stream>>>(
            fc1, (uint8_t *)NULL, act, n, I, (const float *)NULL, (float *)NULL);
        TE_LLAMA__LAUNCHED(swiglu);
        if ((r = te_llama__gemm_op(ctx, 1, 0, P[7].data, act, xmid, x + (size_t)cap * h, CUDA_R_32F, h, n, I, 1))) return r;
    }
    te_llama__t_rmsnorm_kernel<<<n, 256, 0, ctx->stream>>>(a->x + (size_t)L * cap * h, (const te_llama__bf16 *)m->norm.data, a->xf,
                                                          a->inv + (size_t)(2 * L) * cap, h, eps);
    TE_LLAMA__LAUNCHED(t_rmsnorm);
    return TE_LLAMA_OK;
}

static te_llama_result te_llama__t_to_bf16(te_llama__cuda *ctx, const float *in, te_llama__bf16 *out, size_t n) {
    const size_t blocks = (n + 255) / 256;
    te_llama__t_to_bf16_kernel<<<(unsigned)(blocks < 4096 ? blocks : 4096), 256, 0, ctx->stream>>>(in, out, n);
    TE_LLAMA__LAUNCHED(t_to_bf16);
    return TE_LLAMA_OK;
}

/* dx += the RMSNorm backward of dy (rows of n, h) at input x with 1/rms inv; dw += its weight gradient. */
static te_llama_result te_llama__t_norm_back(te_llama__cuda *ctx, const float *dy, const float *x, const float *inv, const void *w,
                                             float *dx, float *dw, int n, int h) {
    const int blocks = (n + TE_LLAMA__T_NORM_ROWS - 1) / TE_LLAMA__T_NORM_ROWS;
    te_llama__t_rmsnorm_back_kernel<<<blocks, 256, sizeof(float) * (size_t)h, ctx->stream>>>(dy, x, inv, (const te_llama__bf16 *)w, dx, dw, n, h);
    TE_LLAMA__LAUNCHED(t_rmsnorm_back);
    return TE_LLAMA_OK;
}

/* lm_head, the loss and (when G) lm_head's backward, chunk by chunk: a->row_loss gets each row's loss; with G,
   a->dxn gets the gradient at the final norm's output and G's lm_head gradient gains its wgrad. */
static te_llama_result te_llama__t_head(te_llama_model *m, te_llama__cuda *ctx, te_llama__tact *a, int n, float *g_lm, float grad_scale) {
    const te_llama_config *c = &m->config;
    const int h = c->hidden_size, V = c->vocab_size;
    te_llama_result r;
    int r0;
    for (r0 = 0; r0 < n; r0 += a->chunk) {
        const int rows = n - r0 < a->chunk ? n - r0 : a->chunk;
        const te_llama__bf16 *xf = a->xf + (size_t)r0 * h;
        if ((r = te_llama__gemm(ctx, m->lm_head.data, xf, a->logits, CUDA_R_32F, V, rows, h, 0))) return r;
        te_llama__t_xent_kernel<<<rows, 512, 0, ctx->stream>>>(a->logits, a->ints + a->cap + r0, a->row_loss + r0, g_lm ? a->dlogits : NULL,
                                                             V, grad_scale);
        TE_LLAMA__LAUNCHED(t_xent);
        if (!g_lm) continue;
        if ((r = te_llama__gemm_op(ctx, 0, 0, m->lm_head.data, a->dlogits, NULL, a->dxn + (size_t)r0 * h, CUDA_R_32F, h, rows, V, 0))) return r;
        if ((r = te_llama__gemm_op(ctx, 0, 1, xf, a->dlogits, g_lm, g_lm, CUDA_R_32F, h, V, rows, 1))) return r;
    }
    return TE_LLAMA_OK;
}

/* The backward of every layer, the final norm and the embedding: a->dxn holds the gradient at the final norm's
   output; G(i) is parameter i's gradient span. */
static te_llama_result te_llama__t_backward(te_llama_model *m, te_llama__cuda *ctx, te_llama__tact *a, te_llama__tstate *st, int n, int B, int T) {
    const te_llama_config *c = &m->config;
    const int h = c->hidden_size, hd = c->head_dim, nh = c->num_attention_heads, nkv = c->num_key_value_heads, L = c->num_hidden_layers;
    const int q_dim = nh * hd, kv_dim = nkv * hd, ld = q_dim + 2 * kv_dim, I = c->intermediate_size, cap = a->cap;
    const int np = te_llama_num_parameters(m), norm_idx = c->tie_word_embeddings ? np - 1 : np - 2;
    const float scale = 1.0f / sqrtf((float)hd);
    te_llama_result r;
    int l, pidx = 1 + 8 * L;
#define TE_LLAMA__G(i) (st->grad + st->off[(i)])
    TE_LLAMA__CU(cudaMemsetAsync(a->dx, 0, sizeof(float) * (size_t)n * h, ctx->stream));
    if ((r = te_llama__t_norm_back(ctx, a->dxn, a->x + (size_t)L * cap * h, a->inv + (size_t)(2 * L) * cap, m->norm.data, a->dx,
                                   TE_LLAMA__G(norm_idx), n, h)))
        return r;
    for (l = L - 1; l >= 0; l--) {
        const te_llama_param *P = m->layers[l]->params;
        const size_t nl = (size_t)l * cap;
        const float *x = a->x + nl * h, *xmid = a->xmid + nl * h, *qkv = a->qkv + nl * ld, *lse = a->lse + nl * nh;
        const te_llama__bf16 *xn1 = a->xn1 + nl * h, *xn2 = a->xn2 + nl * h, *kc = a->kc + nl * kv_dim, *vc = a->vc + nl * kv_dim;
        const te_llama__bf16 *att = a->att + nl * q_dim, *fc1 = a->fc1 + nl * 2 * I, *act = a->act + nl * I;
        pidx -= 8;
        /* MLP block: dx passes through the residual; fc2, SwiGLU, fc1 and the norm add theirs */
        if ((r = te_llama__t_to_bf16(ctx, a->dx, a->dxb, (size_t)n * h))) return r;
        if ((r = te_llama__gemm_op(ctx, 0, 0, P[7].data, a->dxb, NULL, a->dact, CUDA_R_32F, I, n, h, 0))) return r;
        if ((r = te_llama__gemm_op(ctx, 0, 1, act, a->dxb, TE_LLAMA__G(pidx + 7), TE_LLAMA__G(pidx + 7), CUDA_R_32F, I, h, n, 1))) return r;
        te_llama__t_swiglu_back_kernel<<<te_llama__swiglu_grid(n, I), TE_LLAMA__SWIGLU_THREADS, 0, ctx->stream>>>(fc1, a->dact, a->dfc1, n, I);
        TE_LLAMA__LAUNCHED(t_swiglu_back);
        if ((r = te_llama__gemm_op(ctx, 0, 0, P[6].data, a->dfc1, NULL, a->dxn, CUDA_R_32F, h, n, 2 * I, 0))) return r;
        if ((r = te_llama__gemm_op(ctx, 0, 1, xn2, a->dfc1, TE_LLAMA__G(pidx + 6), TE_LLAMA__G(pidx + 6), CUDA_R_32F, h, 2 * I, n, 1))) return r;
        if ((r = te_llama__t_norm_back(ctx, a->dxn, xmid, a->inv + (size_t)(2 * l + 1) * cap, P[5].data, a->dx, TE_LLAMA__G(pidx + 5), n, h)))
            return r;
        /* attention block */
        if ((r = te_llama__t_to_bf16(ctx, a->dx, a->dxb, (size_t)n * h))) return r;
        if ((r = te_llama__gemm_op(ctx, 0, 0, P[4].data, a->dxb, NULL, a->datt, CUDA_R_32F, q_dim, n, h, 0))) return r;
        if ((r = te_llama__gemm_op(ctx, 0, 1, att, a->dxb, TE_LLAMA__G(pidx + 4), TE_LLAMA__G(pidx + 4), CUDA_R_32F, q_dim, h, n, 1))) return r;
        te_llama__t_attn_dd_kernel<<<(unsigned)(((size_t)n * nh * 32 + 255) / 256), 256, 0, ctx->stream>>>(
            a->datt, att, a->att32 ? a->att32 + nl * q_dim : NULL, a->dd, n * nh, hd);
        TE_LLAMA__LAUNCHED(t_attn_dd);
        TE_LLAMA__CU(cudaMemsetAsync(a->dqkv, 0, sizeof(float) * (size_t)n * ld, ctx->stream));
        {
            const dim3 grid((unsigned)((T + TE_LLAMA__T_TILE - 1) / TE_LLAMA__T_TILE), (unsigned)nh, (unsigned)B);
#define TE_LLAMA__T_BWD(HD_) te_llama__t_attn_bwd_kernel<HD_><<<grid, TE_LLAMA__T_THREADS, te_llama__t_bwd_smem(HD_), ctx->stream>>>( \
                qkv, kc, vc, a->datt, lse, a->dd, a->dqkv, T, nh, nkv, scale)
            TE_LLAMA__T_HD_SWITCH(hd, TE_LLAMA__T_BWD)
#undef TE_LLAMA__T_BWD
            TE_LLAMA__LAUNCHED(t_attn_bwd);
        }
        te_llama__t_rope_back_kernel<<<dim3((unsigned)n, (unsigned)(nh + 2 * nkv)), (hd / 2 + 31) / 32 * 32, 0, ctx->stream>>>(
            a->dqkv, a->rope, a->dqkvb, nh + nkv, hd, ld);
        TE_LLAMA__LAUNCHED(t_rope_back);
        if ((r = te_llama__gemm_op(ctx, 0, 0, P[1].data, a->dqkvb, NULL, a->dxn, CUDA_R_32F, h, n, ld, 0))) return r;
        if ((r = te_llama__gemm_op(ctx, 0, 1, xn1, a->dqkvb, TE_LLAMA__G(pidx + 1), TE_LLAMA__G(pidx + 1), CUDA_R_32F, h, ld, n, 1))) return r;
        if ((r = te_llama__t_norm_back(ctx, a->dxn, x, a->inv + (size_t)(2 * l) * cap, P[0].data, a->dx, TE_LLAMA__G(pidx), n, h)))
            return r;
    }
    te_llama__t_embed_back_kernel<<<n, 256, 0, ctx->stream>>>(a->dx, a->ints, TE_LLAMA__G(0), h);
    TE_LLAMA__LAUNCHED(t_embed_back);
#undef TE_LLAMA__G
    return TE_LLAMA_OK;
}

/* Upload the batch: tokens, the target of each position (labels[t + 1] of its sequence, -1 where it does not
   count), positions t % T, sequences t / T and the prefill kernel's tile table (runs of T tokens in tiles of 64).
   *n_tiles gets the table's length. The caller checked tokens and labels. */
static te_llama_result te_llama__t_upload(te_llama__cuda *ctx, te_llama__tact *a, const int32_t *tokens, const int32_t *labels, int B, int T,
                                          int *n_tiles) {
    const int n = B * T, cap = a->cap;
    int32_t *hi = a->host_ints, *tt = hi + 4 * cap;
    int t, b, t0, tiles = 0;
    if (!labels) labels = tokens;
    for (t = 0; t < n; t++) {
        const int32_t y = (t % T) + 1 < T ? labels[t + 1] : TE_LLAMA_IGNORE_INDEX;
        hi[t] = tokens[t];
        hi[cap + t] = y == TE_LLAMA_IGNORE_INDEX ? -1 : y;
        hi[2 * cap + t] = t % T;
        hi[3 * cap + t] = t / T;
    }
    for (b = 0; b < B; b++)
        for (t0 = 0; t0 < T; t0 += TE_LLAMA__FA_BM, tiles++) {
            tt[4 * tiles] = b * T + t0;
            tt[4 * tiles + 1] = T - t0 < TE_LLAMA__FA_BM ? T - t0 : TE_LLAMA__FA_BM;
            tt[4 * tiles + 2] = b;
            tt[4 * tiles + 3] = t0;
        }
    qsort(tt, (size_t)tiles, 4 * sizeof(int32_t), te_llama__tile_cmp);
    TE_LLAMA__CU(cudaMemcpyAsync(a->ints, hi, sizeof(int32_t) * (4 * (size_t)cap + 4 * (size_t)tiles), cudaMemcpyHostToDevice, ctx->stream));
    *n_tiles = tiles;
    return TE_LLAMA_OK;
}

/* ---------------------------------------------------------------------------------------------- public */

extern "C" {

TE_LLAMA_API te_llama_result te_llama_cuda_train_pass(te_llama_model *m, te_llama_trainer *tr, const int32_t *tokens,
                                                      const int32_t *labels, int B, int T, float keep, float grad_scale,
                                                      double *loss_sum) {
    te_llama__cuda *ctx = NULL;
    te_llama__tstate *st = tr ? (te_llama__tstate *)tr->device : NULL;
    te_llama__tact *a;
    te_llama_result r;
    const int n = B * T;
    int n_tiles = 0, t, hd;
    double sum = 0;
    if (!m || !tokens || !loss_sum || B < 1 || T < 1 || (int64_t)B * T > ((int64_t)1 << 24) || (tr && (!st || tr->model != m)))
        return TE_LLAMA__FAIL(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_cuda_train_pass: bad arguments");
    if ((r = te_llama__prepare(m, &ctx))) return r;
    if ((r = te_llama__train_check(m, ctx))) return r;
    if (T > 65535 * TE_LLAMA__T_TILE || B > 65535 || (long)B * ((T + TE_LLAMA__FA_BM - 1) / TE_LLAMA__FA_BM) > 65535)
        return TE_LLAMA__FAIL(TE_LLAMA_ERR_OUT_OF_RANGE, "training batch too large for the attention grid (at most 65535 tiles of 64 tokens)");
    if ((r = te_llama__tact_ensure(m, ctx, n))) return r;
    a = (te_llama__tact *)ctx->train;
    hd = m->config.head_dim;
    /* the attention kernels' shared memory exceeds the default 48 KiB at the larger head dims */
#define TE_LLAMA__T_ATTR(HD_) do { \
        TE_LLAMA__CU(cudaFuncSetAttribute(te_llama__t_attn_fwd_kernel<HD_>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)te_llama__t_fwd_smem(HD_))); \
        TE_LLAMA__CU(cudaFuncSetAttribute(te_llama__t_attn_bwd_kernel<HD_>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)te_llama__t_bwd_smem(HD_))); \
    } while (0)
    TE_LLAMA__T_HD_SWITCH(hd, TE_LLAMA__T_ATTR)
#undef TE_LLAMA__T_ATTR
    if ((r = te_llama__t_upload(ctx, a, tokens, labels, B, T, &n_tiles))) return r;
    if ((r = te_llama__t_forward(m, ctx, a, n, B, T, n_tiles))) return r;
    if (st) {
        const int np = te_llama_num_parameters(m);
        float *g_lm = st->grad + st->off[m->config.tie_word_embeddings ? 0 : np - 1];
        if (keep != 1.0f) {
            te_llama__t_scale_kernel<<<(unsigned)(4 * (ctx->n_sm > 0 ? ctx->n_sm : 132)), 256, 0, ctx->stream>>>(st->grad, st->n, keep);
            TE_LLAMA__LAUNCHED(t_scale);
        }
        if ((r = te_llama__t_head(m, ctx, a, n, g_lm, grad_scale))) return r;
        if ((r = te_llama__t_backward(m, ctx, a, st, n, B, T))) return r;
    } else if ((r = te_llama__t_head(m, ctx, a, n, NULL, 0.0f))) {
        return r;
    }
    TE_LLAMA__CU(cudaMemcpyAsync(a->host_loss, a->row_loss, sizeof(float) * (size_t)n, cudaMemcpyDeviceToHost, ctx->stream));
    TE_LLAMA__CU(cudaStreamSynchronize(ctx->stream));
    for (t = 0; t < n; t++) sum += (double)a->host_loss[t];
    *loss_sum = sum;
    return TE_LLAMA_OK;
}

TE_LLAMA_API te_llama_result te_llama_cuda_train_create(te_llama_trainer *tr) {
    te_llama_model *m = tr ? tr->model : NULL;
    te_llama__cuda *ctx = NULL;
    te_llama__tstate *st;
    te_llama__tparam *hp = NULL;
    te_llama__ttile *ht = NULL;
    te_llama_result r;
    size_t off = 0, n_tiles = 0, k;
    int i, np;
    if (!m) return TE_LLAMA__FAIL(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_cuda_train_create: no model");
    if ((r = te_llama__prepare(m, &ctx))) return r;
    if ((r = te_llama__train_check(m, ctx))) return r;
    np = te_llama_num_parameters(m);
    st = (te_llama__tstate *)te_llama__host_alloc(&ctx->allocator, sizeof *st);
    if (!st) return TE_LLAMA__FAIL(TE_LLAMA_ERR_NOMEM, "trainer device state");
    memset(st, 0, sizeof *st);
    tr->device = st;
    st->off = (size_t *)te_llama__host_alloc(&ctx->allocator, sizeof(size_t) * (size_t)(np + 1));
    hp = (te_llama__tparam *)te_llama__host_alloc(&ctx->allocator, sizeof *hp * (size_t)np);
    if (!st->off || !hp) { r = TE_LLAMA__FAIL(TE_LLAMA_ERR_NOMEM, "trainer tables"); goto done; }
    for (i = 0; i < np; i++) {
        te_llama_param *p = te_llama_parameter(m, i), *next = i + 1 < np ? te_llama_parameter(m, i + 1) : NULL;
        const size_t numel = te_llama_param_numel(p);
        st->off[i] = off;
        /* views of one buffer (a te layer's query, key and value) stay adjacent, so that the fused QKV gradient
           is one (q_dim + 2 kv_dim, h) matrix for its wgrad; every other span starts aligned */
        const int adjacent = next && p->is_view && next->is_view &&
                             (const char *)p->data + numel * sizeof(te_llama__bf16) == (const char *)next->data;
        hp[i].data = (te_llama__bf16 *)p->data;
        hp[i].offset = off;
        hp[i].two_d = p->ndim == 2;
        hp[i].pad = 0;
        n_tiles += (numel + TE_LLAMA__T_ADAM_TILE - 1) / TE_LLAMA__T_ADAM_TILE;
        off = adjacent ? off + numel : te_llama__round_up(off + numel, TE_LLAMA__T_ALIGN);
    }
    st->off[np] = off;
    st->n = off;
    if (n_tiles > 0x7fffffff) { r = TE_LLAMA__FAIL(TE_LLAMA_ERR_OUT_OF_RANGE, "too many parameters for the optimizer's tile table"); goto done; }
    ht = (te_llama__ttile *)te_llama__host_alloc(&ctx->allocator, sizeof *ht * (n_tiles ? n_tiles : 1));
    if (!ht) { r = TE_LLAMA__FAIL(TE_LLAMA_ERR_NOMEM, "trainer tile table"); goto done; }
    for (i = 0, k = 0; i < np; i++) {
        const size_t numel = te_llama_param_numel(te_llama_parameter(m, i));
        size_t b;
        for (b = 0; b < numel; b += TE_LLAMA__T_ADAM_TILE, k++) {
            ht[k].begin = st->off[i] + b;
            ht[k].end = st->off[i] + (numel - b < TE_LLAMA__T_ADAM_TILE ? numel : b + TE_LLAMA__T_ADAM_TILE);
            ht[k].param = i;
            ht[k].pad = 0;
        }
    }
    st->n_tiles = (int)n_tiles;
    TE_LLAMA__CU_GOTO(cudaMalloc((void **)&st->mem, sizeof(float) * 4 * st->n), done);
    st->master = st->mem;
    st->grad = st->mem + st->n;
    st->m1 = st->mem + 2 * st->n;
    st->m2 = st->mem + 3 * st->n;
    TE_LLAMA__CU_GOTO(cudaMalloc((void **)&st->params, sizeof *hp * (size_t)np), done);
    TE_LLAMA__CU_GOTO(cudaMalloc((void **)&st->tiles, sizeof *ht * (n_tiles ? n_tiles : 1)), done);
    TE_LLAMA__CU_GOTO(cudaMalloc((void **)&st->sumsq, sizeof(double)), done);
    TE_LLAMA__CU_GOTO(cudaMemsetAsync(st->mem, 0, sizeof(float) * 4 * st->n, ctx->stream), done);
    TE_LLAMA__CU_GOTO(cudaMemcpyAsync(st->params, hp, sizeof *hp * (size_t)np, cudaMemcpyHostToDevice, ctx->stream), done);
    TE_LLAMA__CU_GOTO(cudaMemcpyAsync(st->tiles, ht, sizeof *ht * n_tiles, cudaMemcpyHostToDevice, ctx->stream), done);
    if (n_tiles) {
        te_llama__t_master_kernel<<<(unsigned)n_tiles, 256, 0, ctx->stream>>>(st->tiles, st->params, st->master, 0);
        TE_LLAMA__CU_GOTO(cudaGetLastError(), done);
    }
    TE_LLAMA__CU_GOTO(cudaStreamSynchronize(ctx->stream), done);
done:
    te_llama__host_free(&ctx->allocator, hp);
    te_llama__host_free(&ctx->allocator, ht);
    if (r) te_llama_cuda_train_free(tr);
    return r;
}

TE_LLAMA_API void te_llama_cuda_train_free(te_llama_trainer *tr) {
    te_llama__tstate *st = tr ? (te_llama__tstate *)tr->device : NULL;
    te_llama__cuda *ctx = tr && tr->model ? (te_llama__cuda *)tr->model->backend : NULL;
    if (!st || !ctx) return;
    cudaSetDevice(ctx->device);
    cudaStreamSynchronize(ctx->stream);
    cudaFree(st->mem);
    cudaFree(st->params);
    cudaFree(st->tiles);
    cudaFree(st->sumsq);
    (void)cudaGetLastError();
    te_llama__host_free(&ctx->allocator, st->off);
    te_llama__host_free(&ctx->allocator, st);
    tr->device = NULL;
}

TE_LLAMA_API te_llama_result te_llama_cuda_train_update(te_llama_trainer *tr, double lr, double *grad_norm) {
    te_llama__tstate *st = tr ? (te_llama__tstate *)tr->device : NULL;
    te_llama__cuda *ctx = NULL;
    const te_llama_train_options *o;
    te_llama_result r;
    double sumsq = 0, bc1, bc2;
    if (!st || !grad_norm) return TE_LLAMA__FAIL(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_cuda_train_update: no device trainer");
    if ((r = te_llama__enter(tr->model, &ctx))) return r;
    o = &tr->options;
    /* the caller has counted this step in tr->step, as the CPU update does before its bias corrections */
    bc1 = 1.0 - pow((double)o->beta1, (double)tr->step);
    bc2 = sqrt(1.0 - pow((double)o->beta2, (double)tr->step));
    TE_LLAMA__CU(cudaMemsetAsync(st->sumsq, 0, sizeof(double), ctx->stream));
    te_llama__t_sumsq_kernel<<<(unsigned)(4 * (ctx->n_sm > 0 ? ctx->n_sm : 132)), 256, 0, ctx->stream>>>(st->grad, st->n, st->sumsq);
    TE_LLAMA__LAUNCHED(t_sumsq);
    if (st->n_tiles) {
        te_llama__t_adamw_kernel<<<(unsigned)st->n_tiles, 256, 0, ctx->stream>>>(st->tiles, st->params, st->master, st->grad, st->m1, st->m2,
                                                                                st->sumsq, o->clip_norm, (float)(1.0 - lr * o->weight_decay),
                                                                                o->beta1, o->beta2, o->eps, (float)(lr / bc1), (float)bc2);
        TE_LLAMA__LAUNCHED(t_adamw);
    }
    TE_LLAMA__CU(cudaMemcpyAsync(&sumsq, st->sumsq, sizeof(double), cudaMemcpyDeviceToHost, ctx->stream));
    TE_LLAMA__CU(cudaStreamSynchronize(ctx->stream));
    *grad_norm = sqrt(sumsq);
    return TE_LLAMA_OK;
}

TE_LLAMA_API te_llama_result te_llama_cuda_train_copy(te_llama_trainer *tr, int what, int i, float *host, int to_device) {
    te_llama__tstate *st = tr ? (te_llama__tstate *)tr->device : NULL;
    te_llama__cuda *ctx = NULL;
    te_llama_result r;
    float *base;
    int k, first, last;
    if (!st || !host || what < 0 || what > 3 || i < -1 || i >= tr->n_params || (to_device && what == TE_LLAMA_TRAIN_MASTER && i != -1))
        return TE_LLAMA__FAIL(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_cuda_train_copy: bad arguments");
    if ((r = te_llama__enter(tr->model, &ctx))) return r;
    base = what == TE_LLAMA_TRAIN_MASTER ? st->master : what == TE_LLAMA_TRAIN_GRAD ? st->grad : what == TE_LLAMA_TRAIN_EXP_AVG ? st->m1 : st->m2;
    first = i < 0 ? 0 : i;
    last = i < 0 ? tr->n_params : i + 1;
    for (k = first; k < last; k++) { /* host spans are packed (tr->offset), device spans padded (st->off) */
        const size_t bytes = sizeof(float) * (tr->offset[k + 1] - tr->offset[k]);
        if (to_device) TE_LLAMA__CU(cudaMemcpyAsync(base + st->off[k], host + tr->offset[k], bytes, cudaMemcpyHostToDevice, ctx->stream));
        else TE_LLAMA__CU(cudaMemcpyAsync(host + tr->offset[k], base + st->off[k], bytes, cudaMemcpyDeviceToHost, ctx->stream));
    }
    if (to_device && what == TE_LLAMA_TRAIN_MASTER && st->n_tiles) {
        te_llama__t_master_kernel<<<(unsigned)st->n_tiles, 256, 0, ctx->stream>>>(st->tiles, st->params, st->master, 1);
        TE_LLAMA__LAUNCHED(t_master);
    }
    TE_LLAMA__CU(cudaStreamSynchronize(ctx->stream));
    return TE_LLAMA_OK;
}

} /* extern "C" */

/* ====================================================================================== memory report */

/* The device memory the context holds besides parameters and KV caches: cuBLASLt's workspace, the per-batch
   scratch, the logits rows, the decode attention's partials, the FP8 state (E4M3 weights and scaling states) and
   the small tables (the samplers' states among them); and the device's free/total. */
extern "C" te_llama_result te_llama_cuda_memory_info(const te_llama_model *model, size_t *workspace_bytes,
                                                     size_t *device_free, size_t *device_total) {
    const te_llama__cuda *ctx = model ? (const te_llama__cuda *)model->backend : NULL;
    size_t ws = 0, f = 0, t = 0;
    if (ctx) {
        ws = TE_LLAMA__WORKSPACE_BYTES + ctx->scratch_bytes + (ctx->logits ? te_llama__rows_bytes(ctx->cap_rows, model->config.vocab_size) : 0) +
             ctx->part_floats * sizeof(float) + ctx->part_counts * sizeof(unsigned) + (ctx->inv_freq ? sizeof(float) * (size_t)(model->config.head_dim / 2) : 0) +
             sizeof(unsigned long long) * (size_t)ctx->cap_seqs + te_llama__fp8_device_bytes(ctx) +
             (ctx->train ? ((const te_llama__tact *)ctx->train)->bytes : 0);
        TE_LLAMA__CU(cudaSetDevice(ctx->device));
    }
    TE_LLAMA__CU(cudaMemGetInfo(&f, &t));
    if (workspace_bytes) *workspace_bytes = ws;
    if (device_free) *device_free = f;
    if (device_total) *device_total = t;
    return TE_LLAMA_OK;
}

/* ================================================================================================ test hooks */

/* For tests/test_cuda.c and bench/bench_gemv.c only (not in the public header): the small-batch GEMV on random bf16
   operands, Y = X W^T (+ Y0 when accumulate), n tokens, m rows, k inputs, against a float64 host product of the same
   bf16 values (relative L2 in *rel_gemv) and cuBLASLt's GEMM of the same shape (*rel_lt); when reps > 0, the
   average time of reps launches of each (event-timed, back to back) in *us_gemv and *us_lt. The timed launches
   cycle through copies of W spanning at least 512 MiB, so that W comes from DRAM as in a decode step, not from
   the 60 MB L2. */
extern "C" te_llama_result te_llama_cuda_test_gemv(te_llama_model *model, int n, int m, int k, int accumulate, int reps,
                                                   double *rel_gemv, double *rel_lt, double *us_gemv, double *us_lt) {
    te_llama__cuda *ctx = NULL;
    te_llama_result r = TE_LLAMA_OK;
    const size_t nw = (size_t)m * k, nx = (size_t)n * k, ny = (size_t)n * m;
    te_llama__bf16 *hw = NULL, *hx = NULL, *dw = NULL, *dx = NULL;
    float *hy0 = NULL, *hy = NULL, *dy = NULL;
    double *ref = NULL, num, den;
    cudaEvent_t e0 = NULL, e1 = NULL;
    uint64_t s = 0x9e3779b97f4a7c15ull;
    const size_t copies = ((size_t)512 << 20) / (nw * 2) + 1;
    size_t i;
    int pass, rep;
    if ((r = te_llama__enter(model, &ctx))) return r;
    if (!te_llama__gemv_ok(n, m, k)) return TE_LLAMA__FAIL(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_cuda_test_gemv: shape outside the GEMV");
    hw = (te_llama__bf16 *)malloc(nw * 2); hx = (te_llama__bf16 *)malloc(nx * 2);
    hy0 = (float *)malloc(ny * 4); hy = (float *)malloc(ny * 4); ref = (double *)malloc(ny * 8);
    if (!hw || !hx || !hy0 || !hy || !ref) { r = TE_LLAMA__FAIL(TE_LLAMA_ERR_NOMEM, "test buffers"); goto done; }
    for (i = 0; i < nw + nx + ny; i++) { /* uniform in [-1, 1) */
        float v;
        s ^= s >> 12; s ^= s << 25; s ^= s >> 27;
        v = (float)((s * 0x2545f4914f6cdd1dull) >> 40) / 8388608.0f - 1.0f;
        if (i < nw) hw[i] = __float2bfloat16(v);
        else if (i < nw + nx) hx[i - nw] = __float2bfloat16(v);
        else hy0[i - nw - nx] = v;
    }
    for (i = 0; i < ny && (rel_gemv || rel_lt); i++) { /* the reference only when asked for: it is slow */
        const size_t t = i / m, row = i % m;
        double acc = accumulate ? hy0[i] : 0.0;
        for (size_t j = 0; j < (size_t)k; j++) acc += (double)__bfloat162float(hx[t * k + j]) * (double)__bfloat162float(hw[row * k + j]);
        ref[i] = acc;
    }
    TE_LLAMA__CU_GOTO(cudaMalloc((void **)&dw, nw * 2 * (reps > 0 ? copies : 1)), done);
    TE_LLAMA__CU_GOTO(cudaMalloc((void **)&dx, nx * 2), done);
    TE_LLAMA__CU_GOTO(cudaMalloc((void **)&dy, ny * 4), done);
    TE_LLAMA__CU_GOTO(cudaMemcpy(dw, hw, nw * 2, cudaMemcpyHostToDevice), done);
    TE_LLAMA__CU_GOTO(cudaMemcpy(dx, hx, nx * 2, cudaMemcpyHostToDevice), done);
    TE_LLAMA__CU_GOTO(cudaEventCreate(&e0), done);
    TE_LLAMA__CU_GOTO(cudaEventCreate(&e1), done);
    for (pass = 0; pass < 2; pass++) {
        double *rel = pass ? rel_lt : rel_gemv, *us = pass ? us_lt : us_gemv;
        float ms = 0.0f;
        TE_LLAMA__CU_GOTO(cudaMemcpy(dy, hy0, ny * 4, cudaMemcpyHostToDevice), done);
        r = pass ? te_llama__gemm(ctx, dw, dx, dy, CUDA_R_32F, m, n, k, accumulate) : te_llama__gemv_store(ctx, dw, dx, dy, m, n, k, accumulate, NULL);
        if (r) goto done;
        TE_LLAMA__CU_GOTO(cudaMemcpyAsync(hy, dy, ny * 4, cudaMemcpyDeviceToHost, ctx->stream), done);
        TE_LLAMA__CU_GOTO(cudaStreamSynchronize(ctx->stream), done);
        for (i = 0, num = den = 0.0; i < ny && rel; i++) {
            num += ((double)hy[i] - ref[i]) * ((double)hy[i] - ref[i]);
            den += ref[i] * ref[i];
        }
        if (rel) *rel = den > 0 ? sqrt(num / den) : sqrt(num);
        if (reps > 0 && us) {
            TE_LLAMA__CU_GOTO(cudaEventRecord(e0, ctx->stream), done);
            for (rep = 0; rep < reps && !r; rep++)
            {
                const te_llama__bf16 *w = dw + nw * (rep % copies); /* contents beyond copy 0 do not matter for time */
                r = pass ? te_llama__gemm(ctx, w, dx, dy, CUDA_R_32F, m, n, k, 0) : te_llama__gemv_store(ctx, w, dx, dy, m, n, k, 0, NULL);
            }
            if (r) goto done;
            TE_LLAMA__CU_GOTO(cudaEventRecord(e1, ctx->stream), done);
            TE_LLAMA__CU_GOTO(cudaEventSynchronize(e1), done);
            TE_LLAMA__CU_GOTO(cudaEventElapsedTime(&ms, e0, e1), done);
            *us = 1e3 * ms / reps;
        }
    }
done:
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    cudaFree(dw); cudaFree(dx); cudaFree(dy);
    free(hw); free(hx); free(hy0); free(hy); free(ref);
    return r;
}

/* For tests/test_cuda.c only: the greedy argmax of the decode step (te_llama__sample at temperature 0) over rows
   rows of logits (rows x the model's vocab, host memory) into ids (host). */
extern "C" te_llama_result te_llama_cuda_test_argmax(te_llama_model *model, const float *logits, int rows, int32_t *ids) {
    te_llama__cuda *ctx = NULL;
    te_llama_result r;
    int32_t *d_ids = NULL;
    const int vocab = model ? model->config.vocab_size : 0;
    if ((r = te_llama__enter(model, &ctx))) return r;
    if (rows < 1 || rows > TE_LLAMA__LOGIT_ROWS)
        return TE_LLAMA__FAIL(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_cuda_test_argmax: rows outside 1..TE_LLAMA__LOGIT_ROWS");
    if ((r = te_llama__ensure_rows(model, ctx, rows))) return r;
    TE_LLAMA__CU(cudaMalloc((void **)&d_ids, sizeof(int32_t) * (size_t)rows));
    TE_LLAMA__CU_GOTO(cudaMemcpyAsync(ctx->logits, logits, sizeof(float) * (size_t)rows * (size_t)vocab, cudaMemcpyHostToDevice, ctx->stream), done);
    te_llama__sample(ctx, rows, vocab, 0.0f, 0, 0.0f, NULL, d_ids, NULL, NULL);
    TE_LLAMA__CU_GOTO(cudaGetLastError(), done);
    TE_LLAMA__CU_GOTO(cudaMemcpyAsync(ids, d_ids, sizeof(int32_t) * (size_t)rows, cudaMemcpyDeviceToHost, ctx->stream), done);
    TE_LLAMA__CU_GOTO(cudaStreamSynchronize(ctx->stream), done);
done:
    cudaFree(d_ids);
    return r;
}

/* Test entry (tests/test_cuda.c): the decode attention of n tokens over host K/V caches (n_seq, max_len, kv_dim) bf16
   bits, with the model's head shape and the given split count, as a decode step launches it; q comes in QKV rows
   (n, q_dim + 2 kv_dim) fp32 (only the q part is read); out (n, q_dim) bf16 bits. keys_ready: as a decode step of
   one token a sequence launches it (te_llama__att.keys_ready), which the caller's tokens must be. global_merge: the
   splits merge through global memory even where they could form a cluster; *clustered (may be NULL): whether they
   formed one. */
extern "C" te_llama_result te_llama_cuda_test_decode_attention(te_llama_model *model, int n, int splits, int max_len, int n_seq,
                                                              const int32_t *pos, const int32_t *seq, const float *qkv,
                                                              const uint16_t *kc, const uint16_t *vc, int keys_ready,
                                                              int global_merge, int *clustered, uint16_t *out) {
    te_llama__cuda *ctx = NULL;
    te_llama_result r;
    te_llama__att a;
    te_llama__bf16 *d_kc = NULL, *d_vc = NULL;
    int i, hd, nh, nkv, cap;
    size_t cache_elems;
    if ((r = te_llama__enter(model, &ctx))) return r;
    hd = model->config.head_dim, nh = model->config.num_attention_heads, nkv = model->config.num_key_value_heads;
    if (n < 1 || n > 64 || splits < 1 || splits > TE_LLAMA__DEC_MAX_SPLITS || max_len < 1 || n_seq < 1 ||
        nh / nkv > TE_LLAMA__DEC_GMAX || hd > TE_LLAMA__DEC_MAX_HD)
        return TE_LLAMA__FAIL(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_cuda_test_decode_attention: shape outside the decode kernels");
    for (i = 0; i < n; i++)
        if (pos[i] < 0 || pos[i] >= max_len || seq[i] < 0 || seq[i] >= n_seq)
            return TE_LLAMA__FAIL(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_cuda_test_decode_attention: position or sequence out of range");
    if ((r = te_llama__ensure_tokens(model, ctx, n))) return r;
    if ((r = te_llama__ensure_split(ctx, (size_t)n * nh * splits * (size_t)(hd + 2), (size_t)n * nkv))) return r;
    cap = ctx->cap_tokens;
    cache_elems = (size_t)n_seq * (size_t)max_len * (size_t)nkv * (size_t)hd;
    TE_LLAMA__CU_GOTO(cudaMalloc((void **)&d_kc, sizeof(te_llama__bf16) * cache_elems), done);
    TE_LLAMA__CU_GOTO(cudaMalloc((void **)&d_vc, sizeof(te_llama__bf16) * cache_elems), done);
    TE_LLAMA__CU_GOTO(cudaMemcpyAsync(d_kc, kc, sizeof(te_llama__bf16) * cache_elems, cudaMemcpyHostToDevice, ctx->stream), done);
    TE_LLAMA__CU_GOTO(cudaMemcpyAsync(d_vc, vc, sizeof(te_llama__bf16) * cache_elems, cudaMemcpyHostToDevice, ctx->stream), done);
    TE_LLAMA__CU_GOTO(cudaMemcpyAsync(ctx->qkv, qkv, sizeof(float) * (size_t)n * (size_t)(nh + 2 * nkv) * hd, cudaMemcpyHostToDevice,
                                      ctx->stream), done);
    TE_LLAMA__CU_GOTO(cudaMemcpyAsync(ctx->ints + cap, pos, sizeof(int32_t) * (size_t)n, cudaMemcpyHostToDevice, ctx->stream), done);
    TE_LLAMA__CU_GOTO(cudaMemcpyAsync(ctx->ints + 2 * cap, seq, sizeof(int32_t) * (size_t)n, cudaMemcpyHostToDevice, ctx->stream), done);
    memset(&a, 0, sizeof a);
    a.mode = TE_LLAMA__ATT_DECODE;
    a.splits = splits;
    a.keys_ready = keys_ready;
    a.global_merge = global_merge;
    if (clustered) *clustered = te_llama__dec2_takes(hd, nh / nkv) && te_llama__dec2_cluster(ctx, &a, n);
    if ((r = te_llama__attention(model, ctx, &a, d_kc, d_vc, max_len, n, NULL))) goto done;
    TE_LLAMA__CU_GOTO(cudaGetLastError(), done);
    TE_LLAMA__CU_GOTO(cudaMemcpyAsync(out, ctx->att, sizeof(te_llama__bf16) * (size_t)n * nh * hd, cudaMemcpyDeviceToHost, ctx->stream), done);
    TE_LLAMA__CU_GOTO(cudaStreamSynchronize(ctx->stream), done);
done:
    cudaFree(d_kc);
    cudaFree(d_vc);
    return r;
}

/* Test entry (tests/test_cuda.c): the tensor-core prefill attention of n tokens (runs of consecutive positions, as
   a prefill has them) over host K/V caches (n_seq, max_len, kv_dim) bf16 bits, with the model's head shape
   (head_dim 64 or 128); kernel 0: te_llama__flash_prefill_kernel (mma.sync), 1: te_llama__flash_wgmma_kernel
   (TE_LLAMA_ERR_UNSUPPORTED where the device does not run it). q in QKV rows (n, q_dim + 2 kv_dim) fp32; out (n,
   q_dim) bf16 bits; lse (n_seq, heads, max_len) the rows' log-sum-exp as training keeps it, or NULL. With q_amax
   (FP8, proj's input: te_llama__att_fp8), *q_amax is raised to the output's largest |bf16| and, with out_q, the
   output comes quantised there, (n, q_dim) e4m3(float(bf16(o)) * q_scale), and out is left alone. */
extern "C" te_llama_result te_llama_cuda_test_prefill_attention(te_llama_model *model, int kernel, int n, int max_len, int n_seq,
                                                               const int32_t *pos, const int32_t *seq, const float *qkv,
                                                               const uint16_t *kc, const uint16_t *vc, uint16_t *out, float *lse,
                                                               float q_scale, uint8_t *out_q, float *q_amax) {
    te_llama__cuda *ctx = NULL;
    te_llama_result r;
    te_llama_batch b;
    te_llama__att_fp8 att_q = {NULL, NULL, NULL, 0};
    te_llama__bf16 *d_kc = NULL, *d_vc = NULL;
    float *d_lse = NULL, *d_q_state = NULL; /* scale, amax */
    uint8_t *d_q = NULL;
    int32_t *tokens = NULL;
    int i, hd, nh, nkv, cap, n_rows = 0, n_tiles = 0;
    size_t cache_elems, lse_elems;
    if ((r = te_llama__enter(model, &ctx))) return r;
    hd = model->config.head_dim, nh = model->config.num_attention_heads, nkv = model->config.num_key_value_heads;
    if (n < 1 || max_len < 1 || n_seq < 1 || (hd != 64 && hd != 128) || (kernel != 0 && kernel != 1))
        return TE_LLAMA__FAIL(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_cuda_test_prefill_attention: shape outside the tiled kernels");
    if (kernel == 1 && !ctx->wgmma) return TE_LLAMA__FAIL(TE_LLAMA_ERR_UNSUPPORTED, "the wgmma attention needs the sm_90a code on an sm_90 device");
    for (i = 0; i < n; i++)
        if (pos[i] < 0 || pos[i] >= max_len || seq[i] < 0 || seq[i] >= n_seq)
            return TE_LLAMA__FAIL(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_cuda_test_prefill_attention: position or sequence out of range");
    if ((r = te_llama__ensure_tokens(model, ctx, n))) return r;
    cap = ctx->cap_tokens;
    cache_elems = (size_t)n_seq * (size_t)max_len * (size_t)nkv * (size_t)hd;
    lse_elems = (size_t)n_seq * (size_t)nh * (size_t)max_len;
    tokens = (int32_t *)calloc((size_t)n, sizeof(int32_t));
    if (!tokens) return TE_LLAMA__FAIL(TE_LLAMA_ERR_NOMEM, "test tokens");
    memset(&b, 0, sizeof b);
    b.n_tokens = n;
    b.tokens = tokens;
    b.pos = pos;
    b.seq = seq;
    if ((r = te_llama__upload_batch(ctx, &b, &n_rows, &n_tiles))) goto done;
    TE_LLAMA__CU_GOTO(cudaMalloc((void **)&d_kc, sizeof(te_llama__bf16) * cache_elems), done);
    TE_LLAMA__CU_GOTO(cudaMalloc((void **)&d_vc, sizeof(te_llama__bf16) * cache_elems), done);
    if (lse) TE_LLAMA__CU_GOTO(cudaMalloc((void **)&d_lse, sizeof(float) * lse_elems), done);
    TE_LLAMA__CU_GOTO(cudaMemcpyAsync(d_kc, kc, sizeof(te_llama__bf16) * cache_elems, cudaMemcpyHostToDevice, ctx->stream), done);
    TE_LLAMA__CU_GOTO(cudaMemcpyAsync(d_vc, vc, sizeof(te_llama__bf16) * cache_elems, cudaMemcpyHostToDevice, ctx->stream), done);
    TE_LLAMA__CU_GOTO(cudaMemcpyAsync(ctx->qkv, qkv, sizeof(float) * (size_t)n * (size_t)(nh + 2 * nkv) * hd, cudaMemcpyHostToDevice,
                                      ctx->stream), done);
    if (lse) TE_LLAMA__CU_GOTO(cudaMemsetAsync(d_lse, 0, sizeof(float) * lse_elems, ctx->stream), done);
    TE_LLAMA__CU_GOTO(cudaMemsetAsync(ctx->att, 0xff, sizeof(te_llama__bf16) * (size_t)n * nh * hd, ctx->stream), done); /* NaN */
    if (q_amax) {
        const float state[2] = {q_scale, *q_amax};
        TE_LLAMA__CU_GOTO(cudaMalloc((void **)&d_q_state, sizeof state), done);
        TE_LLAMA__CU_GOTO(cudaMemcpyAsync(d_q_state, state, sizeof state, cudaMemcpyHostToDevice, ctx->stream), done);
        if (out_q) {
            TE_LLAMA__CU_GOTO(cudaMalloc((void **)&d_q, (size_t)n * nh * hd), done);
            TE_LLAMA__CU_GOTO(cudaMemsetAsync(d_q, 0x7f, (size_t)n * nh * hd, ctx->stream), done); /* NaN */
        }
        att_q.out = d_q; att_q.scale = d_q_state; att_q.amax = d_q_state + 1;
    }
    if ((r = te_llama__flash_prefill(ctx, kernel, ctx->qkv, (const int4 *)(ctx->ints + 4 * cap), n_tiles, d_kc, d_vc, ctx->att,
                                     d_lse, q_amax ? &att_q : NULL, nh, nkv, hd, max_len, 1.0f / sqrtf((float)hd) * 1.4426950408889634f)))
        goto done;
    if (!d_q) TE_LLAMA__CU_GOTO(cudaMemcpyAsync(out, ctx->att, sizeof(te_llama__bf16) * (size_t)n * nh * hd, cudaMemcpyDeviceToHost, ctx->stream), done);
    if (lse) TE_LLAMA__CU_GOTO(cudaMemcpyAsync(lse, d_lse, sizeof(float) * lse_elems, cudaMemcpyDeviceToHost, ctx->stream), done);
    if (q_amax) TE_LLAMA__CU_GOTO(cudaMemcpyAsync(q_amax, d_q_state + 1, sizeof(float), cudaMemcpyDeviceToHost, ctx->stream), done);
    if (d_q) TE_LLAMA__CU_GOTO(cudaMemcpyAsync(out_q, d_q, (size_t)n * nh * hd, cudaMemcpyDeviceToHost, ctx->stream), done);
    TE_LLAMA__CU_GOTO(cudaStreamSynchronize(ctx->stream), done);
done:
    cudaFree(d_kc);
    cudaFree(d_vc);
    cudaFree(d_lse);
    cudaFree(d_q_state);
    cudaFree(d_q);
    free(tokens);
    return r;
}

/* ======================================================================================================== FP8 */
/* FP8 (E4M3) on the device: the building blocks of the FP8 forward. The CPU emulation in te_llama.h (FP8 section,
   te_llama__fp8_gemm) is the specification; everything here computes what it computes.

   STATE (te_llama__fp8_dev in ctx->fp8; model->fp8 points to the same struct on a CUDA model)
     Every decoder GEMM (per layer QKV, PROJ, FC1, FC2: g = TE_LLAMA_FP8_QKV ..) but those of the layers the recipe
     keeps in BF16 (bf16_layers_start / _end: te_llama__fp8_layer is 0, and te_llama__layers runs them as with FP8
     off) has an E4M3 copy of its bf16 weight in the parameter's row order (QKV: the fused buffer, q then k then v
     rows; FC1: gate rows then up rows), quantised as the CPU does: scale = 448 / amax / 2^margin from the weight's
     own amax (found on the device; the scale is made on the host by te_llama_fp8_meta_init +
     te_llama_fp8_meta_update, so it is the CPU's to the bit), bytes = e4m3(float(w) * scale). The bf16 weights stay
     (prefill, calibration). The scaling states are the header's own te_llama_fp8_meta structs in device memory,
     (n_layers, 4 GEMMs, 3 tensors: input, weight, output): kernels and cuBLASLt read scale and scale_inv and raise
     amax through fixed pointers, so a captured graph stays valid, and te_llama_fp8_meta_of downloads one as it is.

   WHAT THE FORWARD CALLS, per GEMM g of layer l (delayed scaling, as te_llama__fp8_gemm on the CPU)
     The producer of the GEMM's input quantises it with the INPUT state's scale and raises its amax:
     te_llama__rmsnorm_fp8 before QKV and FC1, the attention kernel itself before PROJ (the prefill's tensor-core
     kernels and te_llama__decode_attention2_kernel, te_llama__att_fp8; the other attention kernels' bf16 output
     goes through te_llama__cast_fp8), te_llama__swiglu_fp8 (or the fc1 GEMV's epilogue) before FC2. Then the
     E4M3 GEMV (te_llama__layer_fp8) with te_llama__fp8_weight(ctx, l, g) and the two scale_inv pointers. The OUTPUT states' amaxes are recorded only
     by te_llama_cuda_test_fp8_layer_gemm (te_llama__amax on a GEMM's own output); the forward leaves them. After each
     forward or decode step, captured graphs included, te_llama__fp8_end_step_dev updates every input and
     output state. While calibrating (te_llama__fp8_dev.calibrating) the CPU runs its GEMMs in high precision
     but records the amaxes and updates the states all the same: the three producers with a NULL E4M3 output
     and a bf16 output do exactly that.

   NUMERICS
     The conversion te_llama__e4m3 is te_llama__f32_to_fp8(x, 0) bit for bit (checked on every float pattern):
     round to nearest even, |x| >= 448 (infinities too) saturates to 448, NaN keeps its sign, -0 stays -0.
     Amaxes ignore NaN as the CPU's `if (|x| > amax)` does and are exact (a maximum does not depend on the
     order). The update is the host's formula in double, bit-identical. The fp32 values the producers quantise
     are computed by the same expressions as the bf16 kernels (te_llama__rmsnorm_kernel, te_llama__swiglu_kernel);
     the CPU's rmsnorm takes its sum of squares in double, so the inputs agree with the CPU's to rounding. */

#define TE_LLAMA__FP8_THREADS 256
#define TE_LLAMA__FP8_MAX_BLOCKS 1024 /* grid-stride kernels: enough blocks to fill an H200, one atomic each */
#define TE_LLAMA__FP8_UPDATE_THREADS 256 /* a warp a state */
#define TE_LLAMA__FP8_META_INDEX(l, g, t) (((size_t)(l) * TE_LLAMA_FP8_GEMMS + (size_t)(g)) * 3 + (size_t)(t))

/* One GEMM's E4M3 weight. */
typedef struct te_llama__fp8_gemm_dev {
    size_t offset;              /* of its bytes in te_llama__fp8_dev.weights (256-byte aligned) */
    int rows, cols;             /* the bf16 parameter's shape */
    const te_llama__bf16 *src;  /* the bf16 parameter (QKV: the fused buffer, which starts at query_weight); NULL in a
                                   layer the recipe keeps in BF16, which has no E4M3 bytes */
} te_llama__fp8_gemm_dev;

typedef struct te_llama__fp8_dev {
    te_llama_fp8_recipe recipe;   /* all-zero (the defaults) when enabled with NULL, as the CPU keeps it */
    int n_layers;
    int calibrating;              /* te_llama_fp8_calibrate: GEMMs in bf16; amaxes and updates still run */
    te_llama__fp8_gemm_dev *gemm; /* host (n_layers, TE_LLAMA_FP8_GEMMS) */
    uint8_t *weights;             /* device, one allocation: every GEMM's E4M3 (rows, cols) at its offset */
    size_t weight_bytes;
    te_llama_fp8_meta *meta;      /* device (n_layers, TE_LLAMA_FP8_GEMMS, 3): input, weight, output */
    te_llama_fp8_meta *host_meta; /* host (n_layers, TE_LLAMA_FP8_GEMMS, 3): the weight states are made here and
                                     uploaded; the others are what te_llama_fp8_meta_of last downloaded */
    float *lt_scale_inv;          /* device (n_layers, TE_LLAMA_FP8_GEMMS, 2: weight, input) copies of scale_inv, 16
                                     bytes apart: cuBLASLt refuses FP8 scale pointers that are not 16-byte aligned
                                     (CUBLAS_STATUS_NOT_SUPPORTED from cublasLtMatmul, bench/fp8_gemm.cu), and a
                                     state's own scale_inv is not. The update kernel refreshes the input copies. */
    float *act_amax_part;         /* device (n_layers, intermediate / 16) the one-launch E4M3 SwiGLU GEMV's amaxes
                                     a block (te_llama__gemv_args.act_amax_part), fc2's input amax in parts; the
                                     update kernel folds them into that state's and zeroes them */
    int act_amax_parts;           /* parts a layer: intermediate / 16 */
} te_llama__fp8_dev;
#define TE_LLAMA__FP8_LT_SLOT(gemm_index, t) (((size_t)(gemm_index) * 2 + (size_t)(t)) * 4) /* t: 0 weight, 1 input */

/* ---------------------------------------------------------------------------------------------- accessors */
/* For the forward; ctx->fp8 must be set (FP8 on). l: layer, g: TE_LLAMA_FP8_QKV .. FC2, t: TE_LLAMA_FP8_INPUT,
   WEIGHT or OUTPUT. All pointers are device pointers, fixed while FP8 stays on (update_weights keeps them). */

/* FP8 on and calibrating (te_llama_fp8_calibrate): the GEMMs run in bf16, the producers still record amaxes. */
static inline int te_llama__fp8_calibrating(const te_llama__cuda *ctx) {
    return ctx->fp8 && ((const te_llama__fp8_dev *)ctx->fp8)->calibrating;
}
/* Whether FP8 is on and layer l (0 .. n_layers - 1, else 0) runs in FP8: the recipe's bf16_layers_start and _end
   keep layers out, whose GEMMs then run as with FP8 off. */
static inline int te_llama__fp8_layer(const te_llama__cuda *ctx, int l) {
    const te_llama__fp8_dev *f = (const te_llama__fp8_dev *)ctx->fp8;
    return f && l >= 0 && l < f->n_layers && f->gemm[(size_t)l * TE_LLAMA_FP8_GEMMS].src != NULL;
}
/* Whether cuBLASLt's FP8 GEMMs accumulate fast (te_llama_fp8_recipe.fast_accum). */
static inline int te_llama__fp8_fast_accum(const te_llama__cuda *ctx) {
    return ctx->fp8 && ((const te_llama__fp8_dev *)ctx->fp8)->recipe.fast_accum;
}
/* Layer l's GEMM g weight in E4M3, (rows, cols) row-major as the bf16 parameter: QKV (q_dim + 2 kv_dim, hidden),
   PROJ (hidden, q_dim), FC1 (2 I, hidden), FC2 (hidden, I). */
static inline uint8_t *te_llama__fp8_weight(const te_llama__cuda *ctx, int l, int g) {
    const te_llama__fp8_dev *f = (const te_llama__fp8_dev *)ctx->fp8;
    return f->weights + f->gemm[(size_t)l * TE_LLAMA_FP8_GEMMS + (size_t)g].offset;
}
/* The scaling state of tensor t of layer l's GEMM g. */
static inline te_llama_fp8_meta *te_llama__fp8_meta_dev(const te_llama__cuda *ctx, int l, int g, int t) {
    return ((const te_llama__fp8_dev *)ctx->fp8)->meta + TE_LLAMA__FP8_META_INDEX(l, g, t);
}
/* Its fields: scale (quantise with), scale_inv (cuBLASLt's A/B scale), amax (the kernels raise it). */
static inline float *te_llama__fp8_scale(const te_llama__cuda *ctx, int l, int g, int t) {
    return (float *)((char *)te_llama__fp8_meta_dev(ctx, l, g, t) + offsetof(te_llama_fp8_meta, scale));
}
static inline float *te_llama__fp8_scale_inv(const te_llama__cuda *ctx, int l, int g, int t) {
    return (float *)((char *)te_llama__fp8_meta_dev(ctx, l, g, t) + offsetof(te_llama_fp8_meta, scale_inv));
}
static inline float *te_llama__fp8_amax(const te_llama__cuda *ctx, int l, int g, int t) {
    return (float *)((char *)te_llama__fp8_meta_dev(ctx, l, g, t) + offsetof(te_llama_fp8_meta, amax));
}
/* Layer l's parts of fc2's input amax (te_llama__fp8_dev.act_amax_part). */
static inline float *te_llama__fp8_act_amax_part(const te_llama__cuda *ctx, int l) {
    const te_llama__fp8_dev *f = (const te_llama__fp8_dev *)ctx->fp8;
    return f->act_amax_part + (size_t)l * (size_t)f->act_amax_parts;
}
/* The 16-byte aligned copy of scale_inv of the weight (t = TE_LLAMA_FP8_WEIGHT) or input state, for cuBLASLt. */
static inline float *te_llama__fp8_lt_scale_inv(const te_llama__cuda *ctx, int l, int g, int t) {
    return ((const te_llama__fp8_dev *)ctx->fp8)->lt_scale_inv +
           TE_LLAMA__FP8_LT_SLOT(l * TE_LLAMA_FP8_GEMMS + g, t == TE_LLAMA_FP8_WEIGHT ? 0 : 1);
}

/* ------------------------------------------------------------------------------------------------ kernels */

/* float -> FP8 E4M3 ("fn": no infinities, 0x7f / 0xff NaN, max 448), exactly te_llama__f32_to_fp8(f, 0): round
   to nearest even; |f| >= 448, infinities included, saturates to 448 (0x7e); NaN keeps its sign; -0, and what
   rounds to 0, keeps its sign. Below Ada on the bits with integer arithmetic only, so that the host and the device
   compilations agree (tests/test_cuda.c compares both with the CPU's frexpf / nearbyintf version). */
__host__ __device__ __forceinline__ uint8_t te_llama__e4m3(float f) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    /* Ada and Hopper convert in hardware (cvt.rn.satfinite.e4m3x2.f32: nearest even, subnormals, saturation to
       +-448, infinities included): the bytes of the code below but for a NaN's sign, which the CPU keeps
       (test_fp8_convert compares 2^24 floats). One instruction against about 30 with branches: the 8B FP8 decode
       365.6 tok/s against 362.4 (means of 4, bench/NOTES.md run 11), and it keeps te_llama__gemv_norm_fp8's
       quantisation cheap inside a GEMV's main loop. */
    if (f != f) return (uint8_t)(((__float_as_uint(f) >> 24) & 0x80u) | 0x7fu);
    return (uint8_t)__nv_cvt_float_to_fp8(f, __NV_SATFINITE, __NV_E4M3);
#else
    uint32_t u, a, sign;
#ifdef __CUDA_ARCH__
    u = __float_as_uint(f);
#else
    memcpy(&u, &f, sizeof u);
#endif
    sign = (u >> 24) & 0x80u;
    a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint8_t)(sign | 0x7fu); /* NaN */
    if (a >= 0x43e00000u) return (uint8_t)(sign | 0x7eu); /* >= 448: saturate */
    if (a >= 0x3c800000u) {                              /* [2^-6, 448): normal, 3 of the 23 mantissa bits */
        a += 0x7ffffu + ((a >> 20) & 1u);                /* to nearest even at bit 20; a carry bumps the exponent */
        return (uint8_t)(sign | ((a >> 20) - (120u << 3))); /* exponent bias 127 -> 7 */
    }
    {   /* below 2^-6: q = round(|f| / 2^-9) in 0..8 (8 is 0x08, the smallest normal); |f| < 2^-10 rounds to 0 */
        const uint32_t e = a >> 23;
        uint32_t sig, sh, q, rest, half;
        if (e < 117u) return (uint8_t)sign;
        sig = 0x800000u | (a & 0x7fffffu); /* |f| = sig * 2^(e - 150), so |f| / 2^-9 = sig >> (141 - e) */
        sh = 141u - e;                     /* 21 .. 24 */
        q = sig >> sh;
        rest = sig & ((1u << sh) - 1u);
        half = 1u << (sh - 1u);
        if (rest > half || (rest == half && (q & 1u))) q++;
        return (uint8_t)(sign | q);
    }
#endif
}

/* e4m3(v * scale) for a positive finite scale. A NaN v goes through unmultiplied: the GPU's product would be the
   canonical NaN (sign lost), where the CPU's x86 product keeps v's sign and so its byte. */
__device__ __forceinline__ uint8_t te_llama__e4m3_scaled(float v, float scale) {
    return te_llama__e4m3(v != v ? v : v * scale);
}

__device__ __forceinline__ float te_llama__to_f32(float v) { return v; }
__device__ __forceinline__ float te_llama__to_f32(te_llama__bf16 v) { return __bfloat162float(v); }
/* 8 consecutive elements (16-byte aligned) as floats: one 16-byte load of bf16, two of fp32 */

/* Raise *amax to the block's largest |x|. mx: this thread's running maximum, kept as `if (|x| > mx) mx = |x|`
   from 0, so NaN never enters it (the CPU's rule) and it is >= 0. Every thread of the block calls it (a block
   reduction), then one atomicMax on the float's bits: non-negative floats order as their bits do as unsigned
   integers, +infinity included. */
__device__ void te_llama__amax_commit(float mx, float *red, float *amax) {
    mx = te_llama__block_max(mx, red);
    if (threadIdx.x == 0 && mx > 0.0f) atomicMax((unsigned int *)amax, __float_as_uint(mx));
}

/* *amax = max(*amax, |in[i]|) over n values (bf16 weights, fp32 GEMM outputs). Grid-stride: reads n elements. */
template <typename T>
__global__ void __launch_bounds__(TE_LLAMA__FP8_THREADS) te_llama__amax_kernel(const T *in, size_t n, float *amax) {
    __shared__ float red[32];
    float mx = 0.0f;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float a = fabsf(te_llama__to_f32(in[i]));
        if (a > mx) mx = a;
    }
    te_llama__amax_commit(mx, red, amax);
}

/* out[i] = e4m3(float(in[i]) * scale): the weight quantisation (bf16; the scale by value, set outside graphs) and,
   at scale 1 over floats, the bare conversion for the tests. Grid-stride: reads n elements, writes n bytes. */
template <typename T>
__global__ void __launch_bounds__(TE_LLAMA__FP8_THREADS)
te_llama__quantize_kernel(const T *in, uint8_t *out, size_t n, float scale) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = te_llama__e4m3_scaled(te_llama__to_f32(in[i]), scale);
}

/* HF LlamaRMSNorm in fp32 quantised for the next GEMM: y = float(w) * (x[src, :] * inv), inv = 1 / sqrt(mean(
   x[src, :]^2) + eps) exactly as te_llama__rmsnorm_kernel makes them (src = rows[r] when rows is given, else r);
   out[r, :] = e4m3(y * *scale) when out is given, out_bf16[r, :] = bf16(y) when that is (calibration: the bf16
   GEMM input), and *amax raised to max |y|. The scale is read from device memory (the delayed scale, a fixed
   pointer). One block per row, as wide as te_llama__rmsnorm_kernel's (a decode step's single row is latency:
   the first version, 256 threads of scalar loads, took 15.6 us of an 8B step's 4.4 ms, 64 times; bench/NOTES.md
   run 5): reads h fp32 + h bf16, writes h bytes (and / or 2h). */
__global__ void __launch_bounds__(1024)
te_llama__rmsnorm_fp8_kernel(const float *x, const int32_t *rows, const te_llama__bf16 *w, uint8_t *out,
                             te_llama__bf16 *out_bf16, int h, float eps, const float *scale, float *amax) {
    __shared__ float red[32];
    te_llama__pdl_start();
    const float *xr = x + (size_t)(rows ? rows[blockIdx.x] : (int32_t)blockIdx.x) * h;
    const float mx = te_llama__norm_row(xr, w, h, eps, red, out_bf16 ? out_bf16 + (size_t)blockIdx.x * h : NULL,
                                        out ? out + (size_t)blockIdx.x * h : NULL, *scale);
    te_llama__amax_commit(mx, red, amax);
}

/* SwiGLU: y = silu(g) * u in fp32 (te_llama__silu_mul), g = mlp[t, i], u = mlp[t, I + i] (the fc1 output (n, 2 I):
   gate then up, fp32 or bf16; bf16 as fc1's GEMM writes it: TE and HF round there too, and an fp32 fc1 output cost
   8% of an 8B prefill in traffic). out_bf16[t, i] = bf16(y) when out_bf16 is given (the BF16 step, FP8
   calibration); out[t, i] = e4m3(y * *scale) when out is (FC2's FP8 input); *amax raised to max |y| when amax is.
   Grid te_llama__swiglu_grid, 256 threads; a thread takes 8 elements (16 bytes of bf16, two loads of fp32) when I
   is a multiple of 8, one otherwise. Reads n x 2I elements, writes n x I bytes and / or bf16. */
template <typename T>
__global__ void __launch_bounds__(TE_LLAMA__SWIGLU_THREADS)
te_llama__swiglu_kernel(const T *mlp, uint8_t *out, te_llama__bf16 *out_bf16, int n, int I, const float *scale, float *amax) {
    te_llama__pdl_start();
    __shared__ float red[32];
    const int vec = I % 8 == 0, per_row = vec ? I / 8 : I;
    const float s = out ? *scale : 1.0f;
    float mx = 0.0f;
    for (int t = blockIdx.y; t < n; t += gridDim.y) {
        const T *g = mlp + (size_t)t * 2 * I, *u = g + I;
        for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < per_row; c += gridDim.x * blockDim.x) {
            const size_t i = (size_t)t * I + (vec ? 8 * (size_t)c : (size_t)c);
            if (!vec) {
                const float y = te_llama__silu_mul(te_llama__to_f32(g[c]), te_llama__to_f32(u[c]));
                if (fabsf(y) > mx) mx = fabsf(y);
                if (out) out[i] = te_llama__e4m3_scaled(y, s);
                if (out_bf16) out_bf16[i] = __float2bfloat16(y);
                continue;
            }
            float gf[8], uf[8];
            te_llama__load8(g + 8 * (size_t)c, gf);
            te_llama__load8(u + 8 * (size_t)c, uf);
            uint2 q = make_uint2(0u, 0u);
            uint4 b = make_uint4(0u, 0u, 0u, 0u);
#pragma unroll
            for (int e = 0; e < 8; e += 2) { /* only the outputs asked for: the BF16 step wants no E4M3, FP8 no bf16 */
                const float y0 = te_llama__silu_mul(gf[e], uf[e]), y1 = te_llama__silu_mul(gf[e + 1], uf[e + 1]);
                if (fabsf(y0) > mx) mx = fabsf(y0);
                if (fabsf(y1) > mx) mx = fabsf(y1);
                if (out) (&q.x)[e / 4] |= ((unsigned)te_llama__e4m3_scaled(y0, s) | (unsigned)te_llama__e4m3_scaled(y1, s) << 8) << (e % 4 * 8);
                if (out_bf16) (&b.x)[e / 2] = te_llama__pack_bf16(y0, y1);
            }
            if (out) *(uint2 *)(out + i) = q;
            if (out_bf16) *(uint4 *)(out_bf16 + i) = b;
        }
    }
    if (amax) te_llama__amax_commit(mx, red, amax);
}

/* The attention output (bf16) quantised for PROJ: out[i] = e4m3(float(in[i]) * *scale) when out is given (NULL:
   calibration, the amax only), *amax raised to max |in|. Grid-stride: reads n bf16, writes n bytes. */
__global__ void __launch_bounds__(TE_LLAMA__FP8_THREADS)
te_llama__cast_fp8_kernel(const te_llama__bf16 *in, uint8_t *out, size_t n, const float *scale, float *amax) {
    te_llama__pdl_start();
    __shared__ float red[32];
    const float s = *scale;
    float mx = 0.0f;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float v = __bfloat162float(in[i]), a = fabsf(v);
        if (a > mx) mx = a;
        if (out) out[i] = te_llama__e4m3_scaled(v, s);
    }
    te_llama__amax_commit(mx, red, amax);
}

/* The device twin of te_llama_fp8_meta_update(meta, meta->amax), for the input and output states of n_gemms
   GEMMs laid out as (n_gemms, 3: input, weight, output); weight states are left alone, as the CPU's
   te_llama__fp8_end_step leaves them. One warp per state: lane 0 records a nonzero amax in the ring (a zero one
   is not recorded), the warp takes the history's fmaxf maximum (NaN passed over), and lane 0 computes the scale
   with the host's float operations (the same bits; FLT_MAX when it overflows). The history but its slot `next`
   (which the new amax replaces) is read before griddepcontrol.wait, into each lane's hist_mx: only this kernel
   writes it (its launch after the previous forward, finished by then, since a forward's first kernel waits for
   the one before it) and host uploads, copies ordered on the stream before any kernel of the forward. After the
   wait only amax is read (fc2's input state also folds the parts of its amax, te_llama__fp8_dev.act_amax_part):
   one L2 round trip, not two. A warp a state needs no barrier: a block a state (256 blocks of 128 threads, three
   barriers) took 5.8 to 6.2 us of the 8B step after its release, a warp a state 1.0 us (bench/NOTES.md, run 19). */
__device__ void te_llama__fp8_update_state(te_llama_fp8_meta *m, float *parts, int n_parts) {
    const int lane = threadIdx.x & 31, len = m->history_len, next = m->next;
    const bool use_history = m->algo == TE_LLAMA_FP8_AMAX_MAX && len >= 1 && len <= TE_LLAMA_FP8_MAX_HISTORY;
    float hist_mx = 0.0f;
    if (use_history)
#pragma unroll 8
        for (int i = lane; i < len; i += 32)
            if (i != next) hist_mx = fmaxf(hist_mx, m->history[i]);
    te_llama__pdl_start();
    float amax = m->amax;
    if (parts) { /* fc2's input: the SwiGLU GEMV's amaxes a block (never NaN, never negative), zeroed for the next
                    step and folded as their atomics would have (a max on the bits: a NaN amax stays) */
        float part_mx = 0.0f;
#pragma unroll 8
        for (int i = lane; i < n_parts; i += 32) part_mx = fmaxf(part_mx, parts[i]);
        for (int i = lane; i < n_parts; i += 32) parts[i] = 0.0f;
        amax = __uint_as_float(max(__float_as_uint(amax), __float_as_uint(te_llama__warp_max(part_mx))));
    }
    float used = amax;
    if (len < 1 || len > TE_LLAMA_FP8_MAX_HISTORY) return; /* not initialised: as the host, nothing changes */
    __syncwarp(); /* every lane has read amax before lane 0 resets it */
    if (lane == 0) m->amax = 0.0f;
    if (amax == 0.0f) return; /* the whole warp sees the same amax: nothing recorded, the scale stays */
    if (lane == 0) {
        m->history[next] = amax;
        m->next = (next + 1) % len;
        m->n_updates++;
    }
    if (use_history) used = te_llama__warp_max(fmaxf(hist_mx, amax)); /* the history with amax at next */
    if (lane == 0) {
        const float fp8_max = m->dtype == TE_LLAMA_F8_E4M3 ? TE_LLAMA_FP8_E4M3_MAX
                              : m->dtype == TE_LLAMA_F8_E5M2 ? TE_LLAMA_FP8_E5M2_MAX : 0.0f; /* te_llama_fp8_max */
        float scale;
        if (!(used > 0.0f) || !isfinite(used)) return;
        scale = __fdiv_rn(fp8_max * ldexpf(1.0f, -m->margin), used); /* IEEE division whatever the math flags */
        if (isinf(scale)) scale = FLT_MAX;
        m->scale = scale;
        m->scale_inv = __fdiv_rn(1.0f, scale);
    }
}
/* Warp w of the grid updates state w of the (n_gemms, 2: input, output) states. lt_scale_inv (may be NULL): the
   input states' aligned copies (te_llama__fp8_dev.lt_scale_inv) get the new scale_inv. */
__global__ void __launch_bounds__(TE_LLAMA__FP8_UPDATE_THREADS)
te_llama__fp8_update_kernel(te_llama_fp8_meta *metas, int n_gemms, float *lt_scale_inv, float *act_amax_part, int parts) {
    const int state = (int)(blockIdx.x * (TE_LLAMA__FP8_UPDATE_THREADS / 32) + threadIdx.x / 32), g = state >> 1, out = state & 1;
    if (g >= n_gemms) {
        te_llama__pdl_start();
        return;
    }
    te_llama_fp8_meta *m = metas + (size_t)g * 3 + (out ? TE_LLAMA_FP8_OUTPUT : TE_LLAMA_FP8_INPUT);
    float *fc2_parts = act_amax_part && !out && g % TE_LLAMA_FP8_GEMMS == TE_LLAMA_FP8_FC2
                           ? act_amax_part + (size_t)(g / TE_LLAMA_FP8_GEMMS) * parts : NULL;
    te_llama__fp8_update_state(m, fc2_parts, parts);
    if (lt_scale_inv && !out && (threadIdx.x & 31) == 0) lt_scale_inv[TE_LLAMA__FP8_LT_SLOT(g, 1)] = m->scale_inv;
}
static unsigned te_llama__fp8_update_blocks(int n_gemms) {
    return (unsigned)((2 * n_gemms + TE_LLAMA__FP8_UPDATE_THREADS / 32 - 1) / (TE_LLAMA__FP8_UPDATE_THREADS / 32));
}

/* Every weight and input state's scale_inv into its aligned copy (after the states were uploaded). */
__global__ void te_llama__fp8_lt_copy_kernel(const te_llama_fp8_meta *metas, int n_gemms, float *lt_scale_inv) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < 2 * n_gemms; i += gridDim.x * blockDim.x) {
        const int g = i / 2, t = i % 2;
        lt_scale_inv[TE_LLAMA__FP8_LT_SLOT(g, t)] = metas[(size_t)g * 3 + (t ? TE_LLAMA_FP8_INPUT : TE_LLAMA_FP8_WEIGHT)].scale_inv;
    }
}

/* ---------------------------------------------------------------------------------------------- launchers */

static unsigned te_llama__fp8_blocks(size_t n) {
    const size_t b = (n + TE_LLAMA__FP8_THREADS - 1) / TE_LLAMA__FP8_THREADS;
    return (unsigned)(b < 1 ? 1 : b > TE_LLAMA__FP8_MAX_BLOCKS ? TE_LLAMA__FP8_MAX_BLOCKS : b);
}

/* *amax = max(*amax, |in|) over n values (T: float or te_llama__bf16). */
template <typename T>
static te_llama_result te_llama__amax(te_llama__cuda *ctx, const T *in, size_t n, float *amax) {
    if (!n) return TE_LLAMA_OK;
    te_llama__amax_kernel<T><<<te_llama__fp8_blocks(n), TE_LLAMA__FP8_THREADS, 0, ctx->stream>>>(in, n, amax);
    TE_LLAMA__LAUNCHED(amax);
    return TE_LLAMA_OK;
}

template <typename T>
static te_llama_result te_llama__quantize(te_llama__cuda *ctx, const T *in, uint8_t *out, size_t n, float scale) {
    if (!n) return TE_LLAMA_OK;
    te_llama__quantize_kernel<T><<<te_llama__fp8_blocks(n), TE_LLAMA__FP8_THREADS, 0, ctx->stream>>>(in, out, n, scale);
    TE_LLAMA__LAUNCHED(quantize);
    return TE_LLAMA_OK;
}

/* n rows of x (rows: device indices, NULL for 0..n-1) normed with w into out (n, h) E4M3 and / or out_bf16. */
static te_llama_result te_llama__rmsnorm_fp8(te_llama__cuda *ctx, const float *x, const int32_t *rows, const te_llama__bf16 *w,
                                             uint8_t *out, te_llama__bf16 *out_bf16, int n, int h, float eps,
                                             const float *scale, float *amax) {
    if (n < 1) return TE_LLAMA_OK;
    te_llama__launch(ctx, te_llama__rmsnorm_fp8_kernel, dim3((unsigned)n), dim3((unsigned)te_llama__norm_threads(n, h)), 0, x, rows, w,
                     out, out_bf16, h, eps, scale, amax);
    TE_LLAMA__LAUNCHED(rmsnorm_fp8);
    return TE_LLAMA_OK;
}

/* SwiGLU of the fc1 output mlp (n, 2 I) (T: float or te_llama__bf16) into out (n, I) E4M3 and / or out_bf16. */
template <typename T>
static te_llama_result te_llama__swiglu_fp8(te_llama__cuda *ctx, const T *mlp, uint8_t *out, te_llama__bf16 *out_bf16, int n,
                                            int I, const float *scale, float *amax) {
    const size_t total = (size_t)n * (size_t)I;
    if (!total) return TE_LLAMA_OK;
    te_llama__launch(ctx, te_llama__swiglu_kernel<T>, te_llama__swiglu_grid(n, I), dim3(TE_LLAMA__SWIGLU_THREADS), 0, mlp, out,
                     out_bf16, n, I, scale, amax);
    TE_LLAMA__LAUNCHED(swiglu_fp8);
    return TE_LLAMA_OK;
}

/* n bf16 values (the attention output) into out E4M3 (NULL: the amax only). */
static te_llama_result te_llama__cast_fp8(te_llama__cuda *ctx, const te_llama__bf16 *in, uint8_t *out, size_t n, const float *scale,
                                          float *amax) {
    if (!n) return TE_LLAMA_OK;
    te_llama__launch(ctx, te_llama__cast_fp8_kernel, dim3(te_llama__fp8_blocks(n)), dim3(TE_LLAMA__FP8_THREADS), 0, in, out, n, scale, amax);
    TE_LLAMA__LAUNCHED(cast_fp8);
    return TE_LLAMA_OK;
}

/* After a forward or decode step (stream work only: inside a captured graph too): every input and output state
   takes the amax it recorded and gets its next scale, as te_llama__fp8_end_step after a CPU forward, calibrating
   or not. Nothing when FP8 is off. */
static te_llama_result te_llama__fp8_end_step_dev(te_llama__cuda *ctx) {
    const te_llama__fp8_dev *f = (const te_llama__fp8_dev *)ctx->fp8;
    if (!f || f->n_layers < 1) return TE_LLAMA_OK;
    te_llama__launch(ctx, te_llama__fp8_update_kernel, dim3(te_llama__fp8_update_blocks(f->n_layers * TE_LLAMA_FP8_GEMMS)),
                     dim3(TE_LLAMA__FP8_UPDATE_THREADS), 0, f->meta, f->n_layers * TE_LLAMA_FP8_GEMMS, f->lt_scale_inv, f->act_amax_part,
                     f->act_amax_parts);
    TE_LLAMA__LAUNCHED(fp8_update);
    return TE_LLAMA_OK;
}

/* The aligned scale_inv copies from the device states (after an upload of the states). */
static te_llama_result te_llama__fp8_lt_copy(te_llama__cuda *ctx, const te_llama__fp8_dev *f) {
    te_llama__fp8_lt_copy_kernel<<<1, 256, 0, ctx->stream>>>(f->meta, f->n_layers * TE_LLAMA_FP8_GEMMS, f->lt_scale_inv);
    TE_LLAMA__LAUNCHED(fp8_lt_copy);
    return TE_LLAMA_OK;
}

/* --------------------------------------------------------------------------------------------- the state */

/* Device bytes of the FP8 state (E4M3 weights and scaling states), for te_llama_cuda_memory_info. */
static size_t te_llama__fp8_device_bytes(const te_llama__cuda *ctx) {
    const te_llama__fp8_dev *f = (const te_llama__fp8_dev *)ctx->fp8;
    return f ? f->weight_bytes + sizeof(te_llama_fp8_meta) * (size_t)f->n_layers * TE_LLAMA_FP8_GEMMS * 3 +
                   sizeof(float) * TE_LLAMA__FP8_LT_SLOT(f->n_layers * TE_LLAMA_FP8_GEMMS, 0) : 0;
}

static void te_llama__fp8_free(te_llama__cuda *ctx, te_llama__fp8_dev *f) {
    if (!f) return;
    cudaFree(f->weights); /* cudaFree waits for the device work that may still read them */
    cudaFree(f->meta);
    cudaFree(f->lt_scale_inv);
    cudaFree(f->act_amax_part);
    (void)cudaGetLastError();
    te_llama__host_free(&ctx->allocator, f->gemm);
    te_llama__host_free(&ctx->allocator, f->host_meta);
    te_llama__host_free(&ctx->allocator, f);
}

/* Free the FP8 state (te_llama_fp8_disable, te_llama_cuda_release). */
static void te_llama__fp8_release(te_llama_model *m, te_llama__cuda *ctx) {
    te_llama__fp8_dev *f = (te_llama__fp8_dev *)ctx->fp8;
    if (!f) return;
    cudaSetDevice(ctx->device);
    te_llama__fp8_free(ctx, f);
    ctx->fp8 = NULL;
    if (m && m->fp8 == f) m->fp8 = NULL;
}

/* Quantise every GEMM weight as te_llama__fp8_quantize_weight does on the CPU: the weight's amax on the device
   (one float each comes back, one synchronisation for all), its state on the host (te_llama_fp8_meta_init, then
   te_llama_fp8_meta_update with that amax: the CPU's scale to the bit) into host_meta, then the E4M3 bytes on
   the device with that scale. The caller uploads the weight states. */
static te_llama_result te_llama__fp8_quantize_weights(te_llama__cuda *ctx, te_llama__fp8_dev *f) {
    const int count = f->n_layers * TE_LLAMA_FP8_GEMMS;
    float *amax = (float *)te_llama__host_alloc(&ctx->allocator, sizeof(float) * (size_t)count), *amax_d = NULL;
    te_llama_result r = TE_LLAMA_OK;
    int i;
    if (!amax) return TE_LLAMA__FAIL(TE_LLAMA_ERR_NOMEM, "FP8 weight amaxes");
    TE_LLAMA__CU_GOTO(cudaMalloc((void **)&amax_d, sizeof(float) * (size_t)count), done);
    TE_LLAMA__CU_GOTO(cudaMemsetAsync(amax_d, 0, sizeof(float) * (size_t)count, ctx->stream), done);
    for (i = 0; i < count; i++) {
        const te_llama__fp8_gemm_dev *g = &f->gemm[i];
        if (g->src && (r = te_llama__amax(ctx, g->src, (size_t)g->rows * (size_t)g->cols, amax_d + i))) goto done;
    }
    TE_LLAMA__CU_GOTO(cudaMemcpyAsync(amax, amax_d, sizeof(float) * (size_t)count, cudaMemcpyDeviceToHost, ctx->stream), done);
    TE_LLAMA__CU_GOTO(cudaStreamSynchronize(ctx->stream), done);
    for (i = 0; i < count; i++) {
        const te_llama__fp8_gemm_dev *g = &f->gemm[i];
        te_llama_fp8_meta *w = &f->host_meta[(size_t)i * 3 + TE_LLAMA_FP8_WEIGHT];
        if ((r = te_llama_fp8_meta_init(w, &f->recipe, TE_LLAMA_F8_E4M3))) goto done;
        if (!g->src) continue; /* a layer kept in BF16: its weight state stays fresh, as the CPU's */
        te_llama_fp8_meta_update(w, amax[i]);
        if ((r = te_llama__quantize(ctx, g->src, f->weights + g->offset, (size_t)g->rows * (size_t)g->cols, w->scale))) goto done;
    }
done:
    if (amax_d) cudaFree(amax_d);
    te_llama__host_free(&ctx->allocator, amax);
    return r;
}

extern "C" {

TE_LLAMA_API te_llama_result te_llama_cuda_fp8_enable(te_llama_model *m, const te_llama_fp8_recipe *recipe) {
    static const char *const names[TE_LLAMA_FP8_GEMMS] = {"QKV", "PROJ", "FC1", "FC2"};
    te_llama__cuda *ctx = NULL;
    te_llama__fp8_dev *f = NULL;
    te_llama_result r;
    const te_llama_config *c;
    int l, g, count, major = 0, minor = 0, shape[TE_LLAMA_FP8_GEMMS][2];
    size_t off = 0;
    char msg[320];
    if ((r = te_llama__enter(m, &ctx))) return r;
    if ((r = te_llama__check_model(m))) return r; /* te layers with BF16 device parameters: what the forward runs */
    c = &m->config;
    TE_LLAMA__CU(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, ctx->device));
    TE_LLAMA__CU(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, ctx->device));
    if (major * 10 + minor < 89) {
        snprintf(msg, sizeof msg, "FP8 on the CUDA backend needs compute capability 8.9 or newer (E4M3 mma, cuBLASLt FP8); device %d is %d.%d",
                 ctx->device, major, minor);
        return TE_LLAMA__FAIL(TE_LLAMA_ERR_UNSUPPORTED, msg);
    }
    {
        const int h = c->hidden_size, q = c->num_attention_heads * c->head_dim, kv = c->num_key_value_heads * c->head_dim;
        const int I = c->intermediate_size;
        shape[TE_LLAMA_FP8_QKV][0] = q + 2 * kv; shape[TE_LLAMA_FP8_QKV][1] = h;
        shape[TE_LLAMA_FP8_PROJ][0] = h;         shape[TE_LLAMA_FP8_PROJ][1] = q;
        shape[TE_LLAMA_FP8_FC1][0] = 2 * I;      shape[TE_LLAMA_FP8_FC1][1] = h;
        shape[TE_LLAMA_FP8_FC2][0] = h;          shape[TE_LLAMA_FP8_FC2][1] = I;
    }
    for (g = 0; g < TE_LLAMA_FP8_GEMMS; g++)
        if (shape[g][0] % 16 || shape[g][1] % 16) {
            snprintf(msg, sizeof msg, "FP8 on the CUDA backend: the %s weight is %d x %d, and cuBLASLt's FP8 GEMM needs both "
                     "dimensions multiples of 16 (hidden %d, q_dim %d, kv_dim %d, intermediate %d)", names[g], shape[g][0],
                     shape[g][1], c->hidden_size, c->num_attention_heads * c->head_dim, c->num_key_value_heads * c->head_dim,
                     c->intermediate_size);
            return TE_LLAMA__FAIL(TE_LLAMA_ERR_UNSUPPORTED, msg);
        }
    te_llama__fp8_release(m, ctx); /* on an FP8 model: start over */
    count = c->num_hidden_layers * TE_LLAMA_FP8_GEMMS;
    f = (te_llama__fp8_dev *)te_llama__host_alloc(&ctx->allocator, sizeof *f);
    if (!f) return TE_LLAMA__FAIL(TE_LLAMA_ERR_NOMEM, "FP8 state");
    memset(f, 0, sizeof *f);
    if (recipe) f->recipe = *recipe;
    f->n_layers = c->num_hidden_layers;
    f->gemm = (te_llama__fp8_gemm_dev *)te_llama__host_alloc(&ctx->allocator, sizeof *f->gemm * (size_t)count);
    f->host_meta = (te_llama_fp8_meta *)te_llama__host_alloc(&ctx->allocator, sizeof *f->host_meta * (size_t)count * 3);
    if (!f->gemm || !f->host_meta) { r = TE_LLAMA__FAIL(TE_LLAMA_ERR_NOMEM, "FP8 state"); goto fail; }
    memset(f->gemm, 0, sizeof *f->gemm * (size_t)count);
    memset(f->host_meta, 0, sizeof *f->host_meta * (size_t)count * 3);
    for (l = 0; l < f->n_layers; l++) {
        const te_llama_param *P = m->layers[l]->params;
        for (g = 0; g < TE_LLAMA_FP8_GEMMS; g++) {
            te_llama__fp8_gemm_dev *d = &f->gemm[(size_t)l * TE_LLAMA_FP8_GEMMS + g];
            static const int param_of[TE_LLAMA_FP8_GEMMS] = {1, 4, 6, 7}; /* query_weight (the fused QKV), proj, fc1, fc2 */
            d->rows = shape[g][0];
            d->cols = shape[g][1];
            d->offset = off;
            if (!te_llama_fp8_layer_in_bf16(recipe, l, f->n_layers)) {
                d->src = (const te_llama__bf16 *)P[param_of[g]].data;
                off = te_llama__round_up(off + (size_t)d->rows * (size_t)d->cols, TE_LLAMA__ALIGN);
            }
            if ((r = te_llama_fp8_meta_init(&f->host_meta[TE_LLAMA__FP8_META_INDEX(l, g, TE_LLAMA_FP8_INPUT)], recipe, TE_LLAMA_F8_E4M3)) ||
                (r = te_llama_fp8_meta_init(&f->host_meta[TE_LLAMA__FP8_META_INDEX(l, g, TE_LLAMA_FP8_OUTPUT)], recipe, TE_LLAMA_F8_E4M3)))
                goto fail;
        }
    }
    f->weight_bytes = off;
    TE_LLAMA__CU_GOTO(cudaMalloc((void **)&f->weights, off ? off : 1), fail);
    TE_LLAMA__CU_GOTO(cudaMalloc((void **)&f->meta, sizeof *f->meta * (size_t)count * 3), fail);
    TE_LLAMA__CU_GOTO(cudaMalloc((void **)&f->lt_scale_inv, sizeof(float) * TE_LLAMA__FP8_LT_SLOT(count, 0)), fail);
    f->act_amax_parts = c->intermediate_size / 16;
    TE_LLAMA__CU_GOTO(cudaMalloc((void **)&f->act_amax_part, sizeof(float) * (size_t)f->n_layers * (size_t)f->act_amax_parts), fail);
    TE_LLAMA__CU_GOTO(cudaMemsetAsync(f->act_amax_part, 0, sizeof(float) * (size_t)f->n_layers * (size_t)f->act_amax_parts, ctx->stream),
                      fail);
    if ((r = te_llama__fp8_quantize_weights(ctx, f))) goto fail;
    TE_LLAMA__CU_GOTO(cudaMemcpyAsync(f->meta, f->host_meta, sizeof *f->meta * (size_t)count * 3, cudaMemcpyHostToDevice, ctx->stream), fail);
    if ((r = te_llama__fp8_lt_copy(ctx, f))) goto fail;
    TE_LLAMA__CU_GOTO(cudaStreamSynchronize(ctx->stream), fail);
    ctx->fp8 = f;
    m->fp8 = f;
    return TE_LLAMA_OK;
fail:
    if (ctx->stream) cudaStreamSynchronize(ctx->stream);
    te_llama__fp8_free(ctx, f);
    return r;
}

TE_LLAMA_API void te_llama_cuda_fp8_disable(te_llama_model *m) {
    if (!m || !m->backend) return;
    te_llama__fp8_release(m, (te_llama__cuda *)m->backend);
}

TE_LLAMA_API te_llama_result te_llama_cuda_fp8_update_weights(te_llama_model *m) {
    te_llama__cuda *ctx = NULL;
    te_llama__fp8_dev *f;
    te_llama_result r;
    int i, count;
    if ((r = te_llama__enter(m, &ctx))) return r;
    if (!(f = (te_llama__fp8_dev *)ctx->fp8)) return TE_LLAMA__FAIL(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_fp8_update_weights: FP8 is off");
    if ((r = te_llama__fp8_quantize_weights(ctx, f))) return r;
    count = f->n_layers * TE_LLAMA_FP8_GEMMS;
    for (i = 0; i < count; i++) { /* the weight states only: the device's input and output states go on */
        const size_t k = (size_t)i * 3 + TE_LLAMA_FP8_WEIGHT;
        TE_LLAMA__CU(cudaMemcpyAsync(&f->meta[k], &f->host_meta[k], sizeof *f->meta, cudaMemcpyHostToDevice, ctx->stream));
    }
    if ((r = te_llama__fp8_lt_copy(ctx, f))) return r;
    TE_LLAMA__CU(cudaStreamSynchronize(ctx->stream));
    return TE_LLAMA_OK;
}

TE_LLAMA_API te_llama_result te_llama_cuda_fp8_calibrate(te_llama_model *m, int on) {
    te_llama__cuda *ctx = NULL;
    te_llama_result r;
    if ((r = te_llama__ctx(m, &ctx))) return r;
    if (!ctx->fp8) return TE_LLAMA__FAIL(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_fp8_calibrate: FP8 is off");
    ((te_llama__fp8_dev *)ctx->fp8)->calibrating = on != 0;
    return TE_LLAMA_OK;
}

TE_LLAMA_API te_llama_fp8_meta *te_llama_cuda_fp8_meta_of(te_llama_model *m, int layer, te_llama_fp8_gemm gemm,
                                                          te_llama_fp8_tensor tensor) {
    te_llama__cuda *ctx = m ? (te_llama__cuda *)m->backend : NULL;
    te_llama__fp8_dev *f = ctx ? (te_llama__fp8_dev *)ctx->fp8 : NULL;
    cudaError_t e;
    size_t k;
    if (!f || layer < 0 || layer >= f->n_layers || (int)gemm < 0 || gemm >= TE_LLAMA_FP8_GEMMS || (int)tensor < 0 ||
        tensor > TE_LLAMA_FP8_OUTPUT)
        return NULL;
    k = TE_LLAMA__FP8_META_INDEX(layer, gemm, tensor);
    if ((e = cudaSetDevice(ctx->device)) != cudaSuccess ||
        (e = cudaMemcpyAsync(&f->host_meta[k], &f->meta[k], sizeof *f->meta, cudaMemcpyDeviceToHost, ctx->stream)) != cudaSuccess ||
        (e = cudaStreamSynchronize(ctx->stream)) != cudaSuccess) {
        te_llama__cuda_error(e, "downloading an FP8 scaling state", __FILE__, __LINE__);
        return NULL;
    }
    return &f->host_meta[k];
}

TE_LLAMA_API const uint8_t *te_llama_cuda_fp8_saved(te_llama_model *m, const te_llama_param *p, float *scale_inv) {
    te_llama__cuda *ctx = m ? (te_llama__cuda *)m->backend : NULL;
    const te_llama__fp8_dev *f = ctx ? (const te_llama__fp8_dev *)ctx->fp8 : NULL;
    int i;
    if (!f || !p || !p->on_device || p->dtype != TE_LLAMA_BF16) return NULL;
    for (i = 0; i < f->n_layers * TE_LLAMA_FP8_GEMMS; i++) {
        const te_llama__fp8_gemm_dev *g = &f->gemm[i];
        const uintptr_t at = (uintptr_t)p->data, lo = (uintptr_t)g->src;
        if (!g->src) continue; /* a layer kept in BF16: saved from its bf16 weights */
        const uintptr_t hi = lo + (uintptr_t)g->rows * (uintptr_t)g->cols * sizeof(te_llama__bf16);
        if (at >= lo && at < hi) { /* the parameter, or a q/k/v view's rows of the fused buffer */
            *scale_inv = f->host_meta[(size_t)i * 3 + TE_LLAMA_FP8_WEIGHT].scale_inv;
            return f->weights + g->offset + (at - lo) / sizeof(te_llama__bf16);
        }
    }
    return NULL;
}


/* ------------------------------------------------------------------------------------ test entry points */
/* For tests/test_cuda.c, which declares them; not in the public header. Each copies host data to the device,
   runs one of the pieces above on the model's stream and copies the results back. uint16_t arrays are bf16 bits;
   a scale and an amax go in as one device pair {scale, amax}, *amax in and out (the kernels raise it). */

typedef struct te_llama__test_bufs {
    void *p[8];
    int n;
    te_llama_result r; /* the first failure; everything after it is skipped */
} te_llama__test_bufs;

/* A device copy of bytes of host (NULL: zeroed), freed by te_llama__test_end; NULL once anything failed. */
static void *te_llama__test_put(te_llama__test_bufs *b, const void *host, size_t bytes) {
    void *d = NULL;
    cudaError_t e;
    if (b->r) return NULL;
    if ((e = cudaMalloc(&d, bytes ? bytes : 1)) != cudaSuccess) {
        b->r = te_llama__cuda_error(e, "cudaMalloc(test buffer)", __FILE__, __LINE__);
        return NULL;
    }
    b->p[b->n++] = d;
    e = host ? cudaMemcpy(d, host, bytes, cudaMemcpyHostToDevice) : cudaMemset(d, 0, bytes ? bytes : 1);
    if (e != cudaSuccess) { b->r = te_llama__cuda_error(e, "test buffer upload", __FILE__, __LINE__); return NULL; }
    return d;
}

/* After the stream's work: bytes of dev to host (host NULL: nothing). */
static void te_llama__test_get(te_llama__test_bufs *b, te_llama__cuda *ctx, void *host, const void *dev, size_t bytes) {
    cudaError_t e;
    if (b->r || !host) return;
    if ((e = cudaStreamSynchronize(ctx->stream)) != cudaSuccess || (e = cudaMemcpy(host, dev, bytes, cudaMemcpyDeviceToHost)) != cudaSuccess)
        b->r = te_llama__cuda_error(e, "test download", __FILE__, __LINE__);
}

static te_llama_result te_llama__test_end(te_llama__test_bufs *b, te_llama__cuda *ctx) {
    cudaStreamSynchronize(ctx->stream);
    while (b->n > 0) cudaFree(b->p[--b->n]);
    return b->r;
}

/* A context for a test entry: the model's, with the device set. */
static te_llama__cuda *te_llama__test_begin(te_llama_model *m, te_llama__test_bufs *b) {
    te_llama__cuda *ctx = NULL;
    memset(b, 0, sizeof *b);
    b->r = te_llama__enter(m, &ctx);
    return ctx;
}

/* out[i] = e4m3(in[i]) on the device (the quantising kernel at scale 1); out_host (may be NULL) the same by the
   host compilation of te_llama__e4m3. */
te_llama_result te_llama_cuda_test_fp8_convert(te_llama_model *m, const float *in, uint8_t *out, uint8_t *out_host, size_t n) {
    te_llama__test_bufs b;
    te_llama__cuda *ctx = te_llama__test_begin(m, &b);
    size_t i;
    float *din;
    uint8_t *dout;
    if (b.r) return b.r;
    if (out_host) for (i = 0; i < n; i++) out_host[i] = te_llama__e4m3(in[i]);
    din = (float *)te_llama__test_put(&b, in, n * sizeof(float));
    dout = (uint8_t *)te_llama__test_put(&b, NULL, n);
    if (!b.r) b.r = te_llama__quantize(ctx, (const float *)din, dout, n, 1.0f);
    te_llama__test_get(&b, ctx, out, dout, n);
    return te_llama__test_end(&b, ctx);
}

/* The E4M3 weight of layer l's GEMM g (through the accessor) into out (cap bytes), and its shape. */
te_llama_result te_llama_cuda_test_fp8_weight(te_llama_model *m, int l, int g, uint8_t *out, size_t cap, int *rows, int *cols) {
    te_llama__test_bufs b;
    te_llama__cuda *ctx = te_llama__test_begin(m, &b);
    const te_llama__fp8_dev *f;
    const te_llama__fp8_gemm_dev *d;
    if (b.r) return b.r;
    if (!(f = (const te_llama__fp8_dev *)ctx->fp8) || l < 0 || l >= f->n_layers || g < 0 || g >= TE_LLAMA_FP8_GEMMS ||
        !f->gemm[(size_t)l * TE_LLAMA_FP8_GEMMS + g].src)
        return TE_LLAMA__FAIL(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_cuda_test_fp8_weight: FP8 off or no such E4M3 weight");
    d = &f->gemm[(size_t)l * TE_LLAMA_FP8_GEMMS + g];
    *rows = d->rows;
    *cols = d->cols;
    if ((size_t)d->rows * (size_t)d->cols > cap) return TE_LLAMA__FAIL(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_cuda_test_fp8_weight: buffer too small");
    te_llama__test_get(&b, ctx, out, te_llama__fp8_weight(ctx, l, g), (size_t)d->rows * (size_t)d->cols);
    return te_llama__test_end(&b, ctx);
}

/* te_llama__rmsnorm_fp8 over x (x_rows, h), rows (n) or NULL, w (h) bf16: out (n, h) E4M3 and out_bf16 (n, h),
   each may be NULL. */
te_llama_result te_llama_cuda_test_fp8_rmsnorm(te_llama_model *m, const float *x, int x_rows, const int32_t *rows, const uint16_t *w,
                                               int n, int h, float eps, float scale, uint8_t *out, uint16_t *out_bf16, float *amax) {
    te_llama__test_bufs b;
    te_llama__cuda *ctx = te_llama__test_begin(m, &b);
    const float sa[2] = {scale, *amax};
    float *dx, *dsa;
    int32_t *drows = NULL;
    te_llama__bf16 *dw, *dbf = NULL;
    uint8_t *dout = NULL;
    if (b.r) return b.r;
    dx = (float *)te_llama__test_put(&b, x, sizeof(float) * (size_t)x_rows * h);
    if (rows) drows = (int32_t *)te_llama__test_put(&b, rows, sizeof(int32_t) * (size_t)n);
    dw = (te_llama__bf16 *)te_llama__test_put(&b, w, 2 * (size_t)h);
    if (out) dout = (uint8_t *)te_llama__test_put(&b, NULL, (size_t)n * h);
    if (out_bf16) dbf = (te_llama__bf16 *)te_llama__test_put(&b, NULL, 2 * (size_t)n * h);
    dsa = (float *)te_llama__test_put(&b, sa, sizeof sa);
    if (!b.r) b.r = te_llama__rmsnorm_fp8(ctx, dx, drows, dw, dout, dbf, n, h, eps, dsa, dsa + 1);
    te_llama__test_get(&b, ctx, out, dout, (size_t)n * h);
    te_llama__test_get(&b, ctx, out_bf16, dbf, 2 * (size_t)n * h);
    te_llama__test_get(&b, ctx, amax, dsa + 1, sizeof(float));
    return te_llama__test_end(&b, ctx);
}

/* te_llama__swiglu_fp8 over mlp (n, 2 I), fp32 or (mlp_bf16) bf16: out (n, I) E4M3 and out_bf16, each may be NULL. */
te_llama_result te_llama_cuda_test_fp8_swiglu(te_llama_model *m, const void *mlp, int mlp_bf16, int n, int I, float scale, uint8_t *out,
                                              uint16_t *out_bf16, float *amax) {
    te_llama__test_bufs b;
    te_llama__cuda *ctx = te_llama__test_begin(m, &b);
    const float sa[2] = {scale, *amax};
    const size_t total = (size_t)n * I;
    void *dmlp;
    float *dsa;
    te_llama__bf16 *dbf = NULL;
    uint8_t *dout = NULL;
    if (b.r) return b.r;
    dmlp = te_llama__test_put(&b, mlp, 2 * total * (mlp_bf16 ? 2 : 4));
    if (out) dout = (uint8_t *)te_llama__test_put(&b, NULL, total);
    if (out_bf16) dbf = (te_llama__bf16 *)te_llama__test_put(&b, NULL, 2 * total);
    dsa = (float *)te_llama__test_put(&b, sa, sizeof sa);
    if (!b.r)
        b.r = mlp_bf16 ? te_llama__swiglu_fp8(ctx, (const te_llama__bf16 *)dmlp, dout, dbf, n, I, dsa, dsa + 1)
                       : te_llama__swiglu_fp8(ctx, (const float *)dmlp, dout, dbf, n, I, dsa, dsa + 1);
    te_llama__test_get(&b, ctx, out, dout, total);
    te_llama__test_get(&b, ctx, out_bf16, dbf, 2 * total);
    te_llama__test_get(&b, ctx, amax, dsa + 1, sizeof(float));
    return te_llama__test_end(&b, ctx);
}

/* te_llama__cast_fp8 of n bf16 values into out (NULL: the amax only). */
te_llama_result te_llama_cuda_test_fp8_cast(te_llama_model *m, const uint16_t *in, size_t n, float scale, uint8_t *out, float *amax) {
    te_llama__test_bufs b;
    te_llama__cuda *ctx = te_llama__test_begin(m, &b);
    const float sa[2] = {scale, *amax};
    te_llama__bf16 *din;
    uint8_t *dout = NULL;
    float *dsa;
    if (b.r) return b.r;
    din = (te_llama__bf16 *)te_llama__test_put(&b, in, 2 * n);
    if (out) dout = (uint8_t *)te_llama__test_put(&b, NULL, n);
    dsa = (float *)te_llama__test_put(&b, sa, sizeof sa);
    if (!b.r) b.r = te_llama__cast_fp8(ctx, din, dout, n, dsa, dsa + 1);
    te_llama__test_get(&b, ctx, out, dout, n);
    te_llama__test_get(&b, ctx, amax, dsa + 1, sizeof(float));
    return te_llama__test_end(&b, ctx);
}

/* te_llama__amax over n floats. */
te_llama_result te_llama_cuda_test_fp8_amax(te_llama_model *m, const float *in, size_t n, float *amax) {
    te_llama__test_bufs b;
    te_llama__cuda *ctx = te_llama__test_begin(m, &b);
    float *din, *da;
    if (b.r) return b.r;
    din = (float *)te_llama__test_put(&b, in, sizeof(float) * n);
    da = (float *)te_llama__test_put(&b, amax, sizeof(float));
    if (!b.r) b.r = te_llama__amax(ctx, (const float *)din, n, da);
    te_llama__test_get(&b, ctx, amax, da, sizeof(float));
    return te_llama__test_end(&b, ctx);
}

/* te_llama__fp8_calibrating: 1 while te_llama_fp8_calibrate(m, 1) holds, 0 otherwise (and when FP8 is off). */
int te_llama_cuda_test_fp8_calibrating(te_llama_model *m) {
    return m && m->backend ? te_llama__fp8_calibrating((const te_llama__cuda *)m->backend) : 0;
}

/* Which fusions an FP8 forward uses, so that a test can compare each with the separate kernel it replaces: bit 0
   (1) proj's input quantised (and, calibrating, its amax taken) by the attention kernels (te_llama__att_fp8; off:
   te_llama__cast_fp8), bit 1 (2) one token's rmsnorms folded into the GEMVs (te_llama__gemv_norm_fp8; off:
   te_llama__rmsnorm_fp8), bit 2 (4) the E4M3 SwiGLU GEMV's amax in per-block parts folded by the update kernel
   (te_llama__gemv_args.act_amax_part; off: an atomic a block). 7 is the default. */
te_llama_result te_llama_cuda_test_fp8_fused(te_llama_model *m, int fused) {
    if (!m || !m->backend) return TE_LLAMA__FAIL(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_cuda_test_fp8_fused: not a CUDA model");
    ((te_llama__cuda *)m->backend)->fp8_unfused = (fused & 1 ? 0 : TE_LLAMA__FP8_UNFUSED_ATTENTION) |
                                                  (fused & 2 ? 0 : TE_LLAMA__FP8_UNFUSED_NORMS) |
                                                  (fused & 4 ? 0 : TE_LLAMA__FP8_UNFUSED_AMAX_PARTS);
    return TE_LLAMA_OK;
}

/* te_llama__fp8_update_kernel over metas (n_gemms, 3), in place. */
te_llama_result te_llama_cuda_test_fp8_update(te_llama_model *m, te_llama_fp8_meta *metas, int n_gemms) {
    te_llama__test_bufs b;
    te_llama__cuda *ctx = te_llama__test_begin(m, &b);
    const size_t bytes = sizeof *metas * (size_t)n_gemms * 3;
    te_llama_fp8_meta *d;
    if (b.r) return b.r;
    d = (te_llama_fp8_meta *)te_llama__test_put(&b, metas, bytes);
    if (!b.r && n_gemms > 0) {
        te_llama__fp8_update_kernel<<<te_llama__fp8_update_blocks(n_gemms), TE_LLAMA__FP8_UPDATE_THREADS, 0, ctx->stream>>>(d, n_gemms,
                                                                                                                            NULL, NULL, 0);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) b.r = te_llama__cuda_error(e, "launch of the fp8_update kernel", __FILE__, __LINE__);
    }
    te_llama__test_get(&b, ctx, metas, d, bytes);
    return te_llama__test_end(&b, ctx);
}

/* The forward's pattern for the QKV (g = 0) or FC1 (g = 2) GEMM of layer l over n rows of the residual stream x
   (n, hidden): te_llama__rmsnorm_fp8 with the layer's norm weight, quantising with the GEMM's input state (its
   amax raised), te_llama__gemv_fp8 with the accessors' E4M3 weight and scale_inv pointers into y (n, rows), and
   te_llama__amax of y into the output state. */
te_llama_result te_llama_cuda_test_fp8_layer_gemm(te_llama_model *m, int l, int g, const float *x, int n, float *y) {
    te_llama__test_bufs b;
    te_llama__cuda *ctx = te_llama__test_begin(m, &b);
    const te_llama__fp8_dev *f;
    const te_llama__fp8_gemm_dev *d;
    float *dx, *dy;
    uint8_t *dq;
    if (b.r) return b.r;
    f = (const te_llama__fp8_dev *)ctx->fp8;
    if (!f || l < 0 || l >= f->n_layers || (g != TE_LLAMA_FP8_QKV && g != TE_LLAMA_FP8_FC1) || !f->gemm[(size_t)l * TE_LLAMA_FP8_GEMMS + g].src)
        return TE_LLAMA__FAIL(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_cuda_test_fp8_layer_gemm: FP8 off, not a QKV or FC1 GEMM, or a layer kept in BF16");
    d = &f->gemm[(size_t)l * TE_LLAMA_FP8_GEMMS + g];
    dx = (float *)te_llama__test_put(&b, x, sizeof(float) * (size_t)n * d->cols);
    dq = (uint8_t *)te_llama__test_put(&b, NULL, (size_t)n * d->cols);
    dy = (float *)te_llama__test_put(&b, NULL, sizeof(float) * (size_t)n * d->rows);
    if (!b.r)
        b.r = te_llama__rmsnorm_fp8(ctx, dx, NULL, (const te_llama__bf16 *)m->layers[l]->params[g == TE_LLAMA_FP8_QKV ? 0 : 5].data, dq,
                                    NULL, n, d->cols, (float)m->config.rms_norm_eps, te_llama__fp8_scale(ctx, l, g, TE_LLAMA_FP8_INPUT),
                                    te_llama__fp8_amax(ctx, l, g, TE_LLAMA_FP8_INPUT));
    if (!b.r)
        b.r = te_llama__gemv_fp8(ctx, te_llama__fp8_weight(ctx, l, g), te_llama__fp8_scale_inv(ctx, l, g, TE_LLAMA_FP8_WEIGHT), dq,
                                 te_llama__fp8_scale_inv(ctx, l, g, TE_LLAMA_FP8_INPUT), dy, d->rows, n, d->cols, 0, NULL);
    if (!b.r) b.r = te_llama__amax(ctx, (const float *)dy, (size_t)n * d->rows, te_llama__fp8_amax(ctx, l, g, TE_LLAMA_FP8_OUTPUT));
    te_llama__test_get(&b, ctx, y, dy, sizeof(float) * (size_t)n * d->rows);
    return te_llama__test_end(&b, ctx);
}

/* Set the device amax of every input and output state (amax: (n_layers, 4 GEMMs, 2) input then output; NULL:
   keep what the kernels recorded), then te_llama__fp8_end_step_dev. */
te_llama_result te_llama_cuda_test_fp8_end_step(te_llama_model *m, const float *amax) {
    te_llama__test_bufs b;
    te_llama__cuda *ctx = te_llama__test_begin(m, &b);
    const te_llama__fp8_dev *f;
    int l, g;
    if (b.r) return b.r;
    if (!(f = (const te_llama__fp8_dev *)ctx->fp8)) return TE_LLAMA__FAIL(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_cuda_test_fp8_end_step: FP8 is off");
    for (l = 0; l < f->n_layers && amax && !b.r; l++)
        for (g = 0; g < TE_LLAMA_FP8_GEMMS && !b.r; g++) {
            const float *a = amax + ((size_t)l * TE_LLAMA_FP8_GEMMS + g) * 2;
            cudaError_t e = cudaMemcpyAsync(te_llama__fp8_amax(ctx, l, g, TE_LLAMA_FP8_INPUT), a, sizeof(float), cudaMemcpyHostToDevice, ctx->stream);
            if (e == cudaSuccess)
                e = cudaMemcpyAsync(te_llama__fp8_amax(ctx, l, g, TE_LLAMA_FP8_OUTPUT), a + 1, sizeof(float), cudaMemcpyHostToDevice, ctx->stream);
            if (e != cudaSuccess) b.r = te_llama__cuda_error(e, "test amax upload", __FILE__, __LINE__);
        }
    if (!b.r) b.r = te_llama__fp8_end_step_dev(ctx);
    return te_llama__test_end(&b, ctx);
}

/* Y (n, mm) = X (n, k) @ W (mm, k)^T with the two scale_inv (+ Y when accumulate), by te_llama__gemm_fp8 (cuBLASLt,
   fp32 output, fast accumulation when fast_accum; mm and k multiples of 16) when cublaslt, else by
   te_llama__gemv_fp8 (mm a multiple of 16, k of 64; fast_accum ignored: its products are exact in fp16 or E4M3
   and its sums fp32). INVALID_ARGUMENT for other shapes. */
te_llama_result te_llama_cuda_test_gemm_fp8(te_llama_model *m, const uint8_t *W, float w_scale_inv, const uint8_t *X, float x_scale_inv,
                                            float *Y, int mm, int n, int k, int accumulate, int fast_accum, int cublaslt) {
    te_llama__test_bufs b;
    te_llama__cuda *ctx = te_llama__test_begin(m, &b);
    const float s[8] = {w_scale_inv, 0, 0, 0, x_scale_inv, 0, 0, 0}; /* 16 bytes apart, as cuBLASLt wants them */
    const size_t ny = sizeof(float) * (size_t)n * mm;
    uint8_t *dw, *dx;
    float *dy, *ds;
    if (b.r) return b.r;
    dw = (uint8_t *)te_llama__test_put(&b, W, (size_t)mm * k);
    dx = (uint8_t *)te_llama__test_put(&b, X, (size_t)n * k);
    dy = (float *)te_llama__test_put(&b, Y, ny);
    ds = (float *)te_llama__test_put(&b, s, sizeof s);
    if (!b.r && cublaslt) b.r = te_llama__gemm_fp8(ctx, dw, ds, dx, ds + 4, dy, CUDA_R_32F, mm, n, k, accumulate, fast_accum);
    if (!b.r && !cublaslt && !te_llama__gemv_ok(1, mm, k)) b.r = TE_LLAMA__FAIL(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_cuda_test_gemm_fp8: rows % 16, k % 64");
    if (!b.r && !cublaslt) b.r = te_llama__gemv_fp8(ctx, dw, ds, dx, ds + 4, dy, mm, n, k, accumulate, NULL);
    te_llama__test_get(&b, ctx, Y, dy, ny);
    return te_llama__test_end(&b, ctx);
}

} /* extern "C" */
