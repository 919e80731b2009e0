/* fp8_error.c - where the FP8 emulation's error comes from on the default model (bench/NOTES_fp8.md).
   Build: cc -O2 -std=c99 -I. bench/fp8_error.c -o build/fp8_error -lm -lpthread
   Run from the repository root: ./build/fp8_error [chunks, default 12]  (TE_LLAMA_SHARED: default ../shared)
   The held-out text, chunking, calibration text and metric are test_accuracy's (tests/test_fp8.c): top-1
   agreement with the same model in float32 and the perplexity ratio, over chunks of 256 tokens. Each row is one
   configuration: the recipe (history, algo, margin), how many chunks of training text calibrate it, which
   tensors are quantised (the private skip mask), the scaling granularity of TE's other recipes (the private
   input_scaling and block_weights below; group b), whole layers kept in float32 (the recipe's bf16_layers_start
   and _end; group l), and "sink": a NON-TE diagnostic that keeps the first token of every chunk (calibration and
   held-out) out of FP8 and out of the amaxes. Groups: ./build/fp8_error 12 d|g|r|b|l|s runs one. */
#define TE_LLAMA_IMPLEMENTATION
#include "te_llama.h"

static const char *model_dir = "models/austen";
enum { SEQ = 256 };

static int argmax(const float *x, int n) {
    int i, b = 0;
    for (i = 1; i < n; i++) if (x[i] > x[b]) b = i;
    return b;
}

/* Forward tokens[from..n) at positions from..n-1 on a cache that already holds 0..from-1; logits of each. */
static void fwd(te_llama_model *m, te_llama_kv_cache *c, const int32_t *tokens, int from, int n, float *logits) {
    static int32_t pos[SEQ];
    te_llama_batch b;
    int i;
    for (i = 0; i < n; i++) pos[i] = i;
    memset(&b, 0, sizeof b);
    b.n_tokens = n - from;
    b.tokens = tokens + from;
    b.pos = pos + from;
    if (te_llama_forward(m, c, &b, logits)) { fprintf(stderr, "%s\n", te_llama_last_error()); exit(1); }
}

/* One chunk; sink: token 0 in high precision with no amax recorded, then the rest. */
static void chunk(te_llama_model *m, const int32_t *x, int sink, float *lg) {
    te_llama_kv_cache *c;
    te_llama_kv_cache_create(m, 1, SEQ, &c);
    if (sink) {
        void *f = m->fp8;
        m->fp8 = NULL;
        fwd(m, c, x, 0, 1, lg);
        m->fp8 = f;
        fwd(m, c, x, 1, SEQ, lg + m->config.vocab_size);
    } else {
        fwd(m, c, x, 0, SEQ, lg);
    }
    te_llama_kv_cache_free(c);
}

static int n_chunks, vocab, *ref_top;
static double *ref_nll, ref_sum;
static float *ref_gap; /* reference logit of the top-1 minus the top-2 */
static int32_t *ids, *cids;
static size_t n_cids;
static float *lg;

static double nll_at(const float *q, int next) {
    double mq = q[argmax(q, vocab)], s = 0;
    int k;
    for (k = 0; k < vocab; k++) s += exp(q[k] - mq);
    return log(s) + mq - q[next];
}

/* TE's Float8BlockScaling weights, emulated in the parameters themselves: each 128 x 128 block of a GEMM's weight
   (the fused rows of its parts) quantised to E4M3 with a power-of-2 scale from the block's amax and dequantised,
   exact in the bf16 or f32 storage (E4M3 values times powers of 2). The row then keeps the weights out of the
   emulation's per-tensor path (skip) so the GEMMs read these. restore puts the original bytes back. */
static void **saved;
static void block_weights(te_llama_model *m, int restore) {
    te_llama__fp8_model *f = (te_llama__fp8_model *)m->fp8;
    int gi, k, n = f->n_layers * TE_LLAMA_FP8_GEMMS, at = 0;
    if (!saved) saved = (void **)calloc((size_t)n * 3, sizeof(void *));
    for (gi = 0; gi < n; gi++) {
        te_llama__fp8_gemm_state *g = &f->gemms[gi];
        const int64_t cols = g->cols;
        float *w = (float *)malloc(sizeof(float) * (size_t)(g->rows * cols)), *row = w;
        int64_t r, r0, c0, j;
        for (k = 0; k < g->n_parts; k++, at++) {
            te_llama_param *p = (te_llama_param *)g->parts[k];
            if (restore) { memcpy(p->data, saved[at], te_llama_param_bytes(p)); continue; }
            if (!saved[at]) { saved[at] = malloc(te_llama_param_bytes(p)); memcpy(saved[at], p->data, te_llama_param_bytes(p)); }
            for (r = 0; r < p->shape[0]; r++, row += cols) memmove(row, te_llama__row(p, r, row), sizeof(float) * (size_t)cols);
        }
        if (!restore) {
            for (r0 = 0; r0 < g->rows; r0 += 128)
                for (c0 = 0; c0 < cols; c0 += 128)
                    te_llama__fp8_qdq_block(f->lut, w + r0 * cols + c0, (size_t)cols, (int)(g->rows - r0 < 128 ? g->rows - r0 : 128),
                                            (int)(cols - c0 < 128 ? cols - c0 : 128), 1);
            for (k = 0, row = w; k < g->n_parts; k++) {
                te_llama_param *p = (te_llama_param *)g->parts[k];
                for (r = 0; r < p->shape[0]; r++, row += cols)
                    for (j = 0; j < cols; j++) {
                        const size_t e = (size_t)r * (size_t)cols + (size_t)j;
                        if (p->dtype == TE_LLAMA_BF16) ((uint16_t *)p->data)[e] = te_llama__f32_to_bf16(row[j]);
                        else if (p->dtype == TE_LLAMA_F32) ((float *)p->data)[e] = row[j];
                        else { fprintf(stderr, "block_weights: bf16 or f32 storage only\n"); exit(1); }
                    }
            }
        }
        free(w);
    }
}

/* One configuration. input_scaling: te_llama__fp8_model.input_scaling (0: the recipe's delayed scales);
   wblocks: the weights as Float8BlockScaling's (block_weights) instead of a scale per tensor. */
static int bf16_start, bf16_end; /* the recipe's bf16_layers_start and _end for the next rows (group l) */
static void row(te_llama_model *m, const char *name, int hist, te_llama_fp8_amax_algo algo, int margin, int calib,
                unsigned skip, int sink, int input_scaling, int wblocks) {
    te_llama_fp8_recipe rc;
    double nll = 0;
    int c, t, agree = 0, total = 0, flips = 0, near = 0;
    memset(&rc, 0, sizeof rc);
    rc.amax_history_len = hist;
    rc.amax_compute_algo = algo;
    rc.margin = margin;
    rc.bf16_layers_start = bf16_start;
    rc.bf16_layers_end = bf16_end;
    te_llama_fp8_enable(m, &rc);
    ((te_llama__fp8_model *)m->fp8)->skip = skip | (wblocks ? 0xaau : 0u);
    ((te_llama__fp8_model *)m->fp8)->input_scaling = input_scaling;
    if (wblocks) block_weights(m, 0);
    te_llama_fp8_calibrate(m, 1);
    for (c = 0; c < calib && (size_t)(c + 1) * SEQ <= n_cids; c++) chunk(m, cids + (size_t)c * SEQ, sink, lg);
    te_llama_fp8_calibrate(m, 0);
    for (c = 0; c < n_chunks; c++) {
        const int32_t *x = ids + (size_t)c * SEQ;
        chunk(m, x, sink, lg);
        for (t = 0; t + 1 < SEQ; t++, total++) {
            const float *q = lg + (size_t)t * vocab;
            nll += nll_at(q, x[t + 1]);
            if (argmax(q, vocab) == ref_top[total]) agree++;
            else { flips++; near += ref_gap[total] < 0.25f; }
        }
    }
    printf("%-34s hist %4d %-6s margin %d calib %2d: top-1 %.2f%%  ppl %+.3f%%\n", name, hist ? hist : 1024,
           algo ? "recent" : "max", margin, calib, 100.0 * agree / total, 100.0 * (exp((nll - ref_sum) / total) - 1.0));
    if (skip == 0 && !sink) printf("    %d of the %d flips are where the reference's top-2 logits are within 0.25\n", near, flips);
    fflush(stdout);
    if (wblocks) block_weights(m, 1);
    te_llama_fp8_disable(m);
}

int main(int argc, char **argv) {
    const char *shared = getenv("TE_LLAMA_SHARED") ? getenv("TE_LLAMA_SHARED") : "../shared";
    const char *only = argc > 2 ? argv[2] : "";
    char path[2048];
    FILE *f;
    char *text;
    long len, cut, calib_at;
    te_llama_tokenizer *tok = NULL;
    te_llama_model *m = NULL;
    size_t n_ids = 0;
    int c, t, total = 0, g;
    n_chunks = argc > 1 ? atoi(argv[1]) : 12;
    snprintf(path, sizeof path, "%s/data/austen/austen.txt", shared);
    if (!(f = fopen(path, "rb"))) { fprintf(stderr, "cannot read %s\n", path); return 1; }
    fseek(f, 0, SEEK_END);
    len = ftell(f);
    fseek(f, 0, SEEK_SET);
    text = (char *)malloc((size_t)len + 1);
    if (fread(text, 1, (size_t)len, f) != (size_t)len) return 1;
    fclose(f);
    cut = (long)(len * 0.95);
    while (cut < len && ((unsigned char)text[cut] & 0xc0) == 0x80) cut++;
    calib_at = cut - 80000; /* 20000 characters is test_accuracy's 4 chunks; more for the calibration rows */
    while (((unsigned char)text[calib_at] & 0xc0) == 0x80) calib_at++;
    if (te_llama_tokenizer_load(model_dir, NULL, &tok) || te_llama_load(model_dir, NULL, &m)) { fprintf(stderr, "%s\n", te_llama_last_error()); return 1; }
    te_llama_tokenizer_encode(tok, text + cut, (size_t)(len - cut), 0, &ids, &n_ids);
    {   /* test_accuracy's calibration chunks are the first 4 of those starting 20000 characters back: take the
           chunks in that order first, then older text */
        int32_t *near = NULL, *far = NULL;
        size_t n_near = 0, n_far = 0;
        long at20 = cut - 20000;
        while (((unsigned char)text[at20] & 0xc0) == 0x80) at20++;
        te_llama_tokenizer_encode(tok, text + at20, (size_t)(cut - at20), 0, &near, &n_near);
        te_llama_tokenizer_encode(tok, text + calib_at, (size_t)(at20 - calib_at), 0, &far, &n_far);
        n_cids = n_near + n_far;
        cids = (int32_t *)malloc(sizeof(int32_t) * n_cids);
        memcpy(cids, near, sizeof(int32_t) * n_near);
        memcpy(cids + n_near, far, sizeof(int32_t) * n_far);
        te_llama_tokenizer_free_ids(tok, near);
        te_llama_tokenizer_free_ids(tok, far);
    }
    if ((size_t)n_chunks * SEQ > n_ids) n_chunks = (int)(n_ids / SEQ);
    vocab = m->config.vocab_size;
    lg = (float *)malloc(sizeof(float) * SEQ * (size_t)vocab);
    ref_top = (int *)malloc(sizeof(int) * (size_t)n_chunks * SEQ);
    ref_nll = (double *)malloc(sizeof(double) * (size_t)n_chunks * SEQ);
    ref_gap = (float *)malloc(sizeof(float) * (size_t)n_chunks * SEQ);
    for (c = 0; c < n_chunks; c++) {
        const int32_t *x = ids + (size_t)c * SEQ;
        chunk(m, x, 0, lg);
        for (t = 0; t + 1 < SEQ; t++, total++) {
            const float *r = lg + (size_t)t * vocab;
            int k;
            float second = -INFINITY;
            ref_top[total] = argmax(r, vocab);
            for (k = 0; k < vocab; k++) if (k != ref_top[total] && r[k] > second) second = r[k];
            ref_gap[total] = r[ref_top[total]] - second;
            ref_nll[total] = nll_at(lg + (size_t)t * vocab, x[t + 1]);
            ref_sum += ref_nll[total];
        }
    }
    printf("%d held-out tokens in %d chunks, reference perplexity %.3f, %zu calibration tokens available\n", total,
           n_chunks, exp(ref_sum / total), n_cids);
    for (c = 0, t = 0; c < total; c++) t += ref_gap[c] < 0.25f;
    printf("the reference's top-2 logits are within 0.25 at %d of the %d positions\n", t, total);
    if (!*only || strchr(only, 'd')) {
        row(m, "default recipe (TE's)", 0, TE_LLAMA_FP8_AMAX_MAX, 0, 4, 0, 0, 0, 0);
        if (strchr(only, 'D')) return 0;
        row(m, "weights only", 0, TE_LLAMA_FP8_AMAX_MAX, 0, 4, 0x55, 0, 0, 0);
        row(m, "activations only", 0, TE_LLAMA_FP8_AMAX_MAX, 0, 4, 0xaa, 0, 0, 0);
    }
    if (!*only || strchr(only, 'g')) {
        static const char *names[4] = {"input of QKV only", "input of proj only", "input of fc1 only", "input of fc2 only"};
        for (g = 0; g < 4; g++) row(m, names[g], 0, TE_LLAMA_FP8_AMAX_MAX, 0, 4, 0xffu & ~(1u << (2 * g)), 0, 0, 0);
        for (g = 0; g < 4; g++) {
            char name[64];
            snprintf(name, sizeof name, "all but the input of %s", g == 0 ? "QKV" : g == 1 ? "proj" : g == 2 ? "fc1" : "fc2");
            row(m, name, 0, TE_LLAMA_FP8_AMAX_MAX, 0, 4, 1u << (2 * g), 0, 0, 0);
        }
    }
    if (!*only || strchr(only, 'r')) {
        row(m, "margin 1", 0, TE_LLAMA_FP8_AMAX_MAX, 1, 4, 0, 0, 0, 0);
        row(m, "margin 2", 0, TE_LLAMA_FP8_AMAX_MAX, 2, 4, 0, 0, 0, 0);
        row(m, "most recent", 1, TE_LLAMA_FP8_AMAX_MOST_RECENT, 0, 4, 0, 0, 0, 0);
        row(m, "history 16", 16, TE_LLAMA_FP8_AMAX_MAX, 0, 4, 0, 0, 0, 0);
        row(m, "no calibration", 0, TE_LLAMA_FP8_AMAX_MAX, 0, 0, 0, 0, 0, 0);
        row(m, "calibration 1 chunk", 0, TE_LLAMA_FP8_AMAX_MAX, 0, 1, 0, 0, 0, 0);
        row(m, "calibration 16 chunks", 0, TE_LLAMA_FP8_AMAX_MAX, 0, 16, 0, 0, 0, 0);
    }
    if (!*only || strchr(only, 'b')) { /* TE's other recipes: current scaling, per tensor or per block */
        row(m, "current scaling per tensor", 0, TE_LLAMA_FP8_AMAX_MAX, 0, 4, 0, 0, 1, 0);
        row(m, "inputs 1x128 blocks, weights per tensor", 0, TE_LLAMA_FP8_AMAX_MAX, 0, 4, 0, 0, 2, 0);
        row(m, "weights 128x128 blocks only", 0, TE_LLAMA_FP8_AMAX_MAX, 0, 4, 0x55, 0, 0, 1);
        row(m, "Float8BlockScaling, fp32 input scales", 0, TE_LLAMA_FP8_AMAX_MAX, 0, 4, 0, 0, 2, 1);
        row(m, "Float8BlockScaling, power-of-2 scales", 0, TE_LLAMA_FP8_AMAX_MAX, 0, 4, 0, 0, 3, 1);
    }
    if (!*only || strchr(only, 'l')) { /* whole layers kept out of FP8 (Megatron-Core's first_last_layers_bf16) */
        const int last = m->config.num_hidden_layers - 1;
        char name[64];
        bf16_start = 1;
        row(m, "layer 0 in float32", 0, TE_LLAMA_FP8_AMAX_MAX, 0, 4, 0, 0, 0, 0);
        bf16_start = 0, bf16_end = 1;
        snprintf(name, sizeof name, "layer %d (the last) in float32", last);
        row(m, name, 0, TE_LLAMA_FP8_AMAX_MAX, 0, 4, 0, 0, 0, 0);
        bf16_start = 1;
        row(m, "first and last layers in float32", 0, TE_LLAMA_FP8_AMAX_MAX, 0, 4, 0, 0, 0, 0);
        bf16_start = bf16_end = 0;
    }
    if (!*only || strchr(only, 's')) {
        row(m, "sink: first token kept out (non-TE)", 0, TE_LLAMA_FP8_AMAX_MAX, 0, 4, 0, 1, 0, 0);
        row(m, "sink, activations only (non-TE)", 0, TE_LLAMA_FP8_AMAX_MAX, 0, 4, 0xaa, 1, 0, 0);
    }
    return 0;
}
