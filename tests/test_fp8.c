/* test_fp8.c - FP8 (TransformerEngine's DelayedScaling): the scaling arithmetic, quantise/dequantise, and the
   accuracy of the CPU emulation on the default model against its high-precision forward.
   Build: cc -O2 -std=c99 -Wall -Wextra -I. -Itests tests/test_fp8.c -o build/test_fp8 -lm -lpthread
   Run from the repository root: ./build/test_fp8  (TE_LLAMA_SHARED: the shared data, default ../shared;
   TE_LLAMA_TMP: scratch directory, default build/tmp; TE_LLAMA_FP8_CHUNKS: held-out chunks of 256 tokens) */
#define TE_LLAMA_IMPLEMENTATION
#include "te_llama.h"

#include <float.h>
#include <time.h>

#include "check.h"

static const char *model_dir = "models/austen";
static char tmp_root[1024];

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static float q_e4m3(float x) { /* one value through E4M3 at scale 1 */
    uint8_t b;
    float y;
    te_llama_fp8_quantize(&b, &x, 1, 1.0f, TE_LLAMA_F8_E4M3, NULL);
    te_llama_fp8_dequantize(&y, &b, 1, 1.0f, TE_LLAMA_F8_E4M3);
    return y;
}

/* ------------------------------------------------------------------------------------------ scaling state */

static void test_scaling(void) {
    te_llama_fp8_meta m;
    te_llama_fp8_recipe rc;
    float s;
    CHECK(te_llama_fp8_max(TE_LLAMA_F8_E4M3) == 448.0f, "E4M3 max %g", te_llama_fp8_max(TE_LLAMA_F8_E4M3));
    CHECK(te_llama_fp8_max(TE_LLAMA_F8_E5M2) == 57344.0f, "E5M2 max %g", te_llama_fp8_max(TE_LLAMA_F8_E5M2));
    CHECK(te_llama_fp8_max(TE_LLAMA_BF16) == 0.0f, "BF16 is not FP8");

    /* all-zero recipe = TE's defaults */
    CHECK_RESULT(te_llama_fp8_meta_init(&m, NULL, TE_LLAMA_F8_E4M3), TE_LLAMA_OK);
    CHECK(m.history_len == 1024 && m.algo == TE_LLAMA_FP8_AMAX_MAX && m.margin == 0, "defaults %d %d %d", m.history_len, (int)m.algo, m.margin);
    CHECK(m.scale == 1.0f && m.scale_inv == 1.0f, "initial scale %g", m.scale);
    CHECK_RESULT(te_llama_fp8_meta_init(&m, NULL, TE_LLAMA_F32), TE_LLAMA_ERR_INVALID_ARGUMENT);
    memset(&rc, 0, sizeof rc);
    rc.amax_history_len = TE_LLAMA_FP8_MAX_HISTORY + 1;
    CHECK_RESULT(te_llama_fp8_meta_init(&m, &rc, TE_LLAMA_F8_E4M3), TE_LLAMA_ERR_OUT_OF_RANGE);
    rc.amax_history_len = 0;
    rc.margin = -1;
    CHECK_RESULT(te_llama_fp8_meta_init(&m, &rc, TE_LLAMA_F8_E4M3), TE_LLAMA_ERR_OUT_OF_RANGE);

    /* scale = fp8_max / amax / 2^margin */
    te_llama_fp8_meta_init(&m, NULL, TE_LLAMA_F8_E4M3);
    s = te_llama_fp8_meta_update(&m, 2.0f);
    CHECK(s == 224.0f && m.scale == 224.0f && m.scale_inv == 1.0f / 224.0f, "448 / 2 = %g", s);
    memset(&rc, 0, sizeof rc);
    rc.margin = 2;
    te_llama_fp8_meta_init(&m, &rc, TE_LLAMA_F8_E4M3);
    s = te_llama_fp8_meta_update(&m, 7.0f);
    CHECK(s == 16.0f, "448 / 7 / 4 = %g", s);
    te_llama_fp8_meta_init(&m, &rc, TE_LLAMA_F8_E5M2);
    s = te_llama_fp8_meta_update(&m, 1.0f);
    CHECK(s == 14336.0f, "57344 / 1 / 4 = %g", s);

    /* zero and non-finite amax keep the old scale (MOST_RECENT, so the history's max does not hide it) */
    memset(&rc, 0, sizeof rc);
    rc.amax_compute_algo = TE_LLAMA_FP8_AMAX_MOST_RECENT;
    te_llama_fp8_meta_init(&m, &rc, TE_LLAMA_F8_E4M3);
    te_llama_fp8_meta_update(&m, 4.0f);
    CHECK(m.scale == 112.0f, "448 / 4 = %g", m.scale);
    CHECK(te_llama_fp8_meta_update(&m, 0.0f) == 112.0f, "zero amax keeps the scale: %g", m.scale);
    CHECK(te_llama_fp8_meta_update(&m, INFINITY) == 112.0f, "infinite amax keeps the scale: %g", m.scale);
    CHECK(te_llama_fp8_meta_update(&m, NAN) == 112.0f, "NaN amax keeps the scale: %g", m.scale);
    CHECK(m.scale_inv == 1.0f / 112.0f, "scale_inv follows: %g", m.scale_inv);
    /* TE's update kernel: a scale that overflows float becomes FLT_MAX */
    CHECK(te_llama_fp8_meta_update(&m, 1e-40f) == FLT_MAX && m.scale_inv == 1.0f / FLT_MAX, "tiny amax: scale %g, not FLT_MAX", m.scale);
    CHECK(te_llama_fp8_meta_update(&m, 8.0f) == 56.0f, "then 448 / 8 = %g", m.scale);
    CHECK(m.n_updates == 5, "%lld updates (the zero amax is not recorded)", (long long)m.n_updates);
    {   /* a fresh state with a zero first amax keeps scale 1 */
        te_llama_fp8_meta z;
        te_llama_fp8_meta_init(&z, NULL, TE_LLAMA_F8_E4M3);
        CHECK(te_llama_fp8_meta_update(&z, 0.0f) == 1.0f, "zero first amax: scale %g", z.scale);
    }

    /* history max vs most_recent */
    memset(&rc, 0, sizeof rc);
    rc.amax_history_len = 4;
    te_llama_fp8_meta_init(&m, &rc, TE_LLAMA_F8_E4M3);
    te_llama_fp8_meta_update(&m, 8.0f);
    te_llama_fp8_meta_update(&m, 1.0f);
    CHECK(m.scale == 56.0f, "max over [8, 1]: 448 / 8, got %g", m.scale);
    rc.amax_compute_algo = TE_LLAMA_FP8_AMAX_MOST_RECENT;
    te_llama_fp8_meta_init(&m, &rc, TE_LLAMA_F8_E4M3);
    te_llama_fp8_meta_update(&m, 8.0f);
    te_llama_fp8_meta_update(&m, 1.0f);
    CHECK(m.scale == 448.0f, "most recent 1: 448, got %g", m.scale);
    /* TE's MAX is fmaxf's: a NaN in the history is passed over (it still takes a slot) */
    rc.amax_compute_algo = TE_LLAMA_FP8_AMAX_MAX;
    rc.amax_history_len = 2;
    te_llama_fp8_meta_init(&m, &rc, TE_LLAMA_F8_E4M3);
    te_llama_fp8_meta_update(&m, 4.0f);
    CHECK(te_llama_fp8_meta_update(&m, NAN) == 112.0f, "[4, NaN]: 448 / 4, got %g", m.scale);
    CHECK(te_llama_fp8_meta_update(&m, 2.0f) == 224.0f, "[NaN, 2]: the NaN passed over, 448 / 2, got %g", m.scale);
    /* a zero amax (a step that saw nothing) is not recorded: it pushes no amax out of the history */
    te_llama_fp8_meta_init(&m, &rc, TE_LLAMA_F8_E4M3);
    te_llama_fp8_meta_update(&m, 8.0f);
    te_llama_fp8_meta_update(&m, 0.0f);
    te_llama_fp8_meta_update(&m, 0.0f);
    CHECK(te_llama_fp8_meta_update(&m, 1.0f) == 56.0f && m.n_updates == 2, "[8, 1] after two zero steps: 448 / 8, got %g (%lld updates)",
          m.scale, (long long)m.n_updates);
    rc.margin = 3; /* float division of the scaled max, as TE: 448 * 2^-3 / 3 */
    te_llama_fp8_meta_init(&m, &rc, TE_LLAMA_F8_E4M3);
    CHECK(te_llama_fp8_meta_update(&m, 3.0f) == 56.0f / 3.0f, "margin 3: %a vs %a", (double)m.scale, (double)(56.0f / 3.0f));
    rc.margin = 0;

    /* the ring wraps: with 3 slots, an amax leaves after 3 more updates */
    rc.amax_history_len = 3;
    te_llama_fp8_meta_init(&m, &rc, TE_LLAMA_F8_E4M3);
    te_llama_fp8_meta_update(&m, 16.0f);
    te_llama_fp8_meta_update(&m, 1.0f);
    te_llama_fp8_meta_update(&m, 2.0f);
    CHECK(m.scale == 28.0f && m.next == 0, "[16, 1, 2]: 448 / 16 = %g, next %d", m.scale, m.next);
    te_llama_fp8_meta_update(&m, 1.0f);
    CHECK(m.scale == 224.0f && m.next == 1, "[1, 1, 2] after the wrap: 448 / 2 = %g, next %d", m.scale, m.next);
    CHECK(m.history[0] == 1.0f && m.history[1] == 1.0f && m.history[2] == 2.0f, "history %g %g %g", m.history[0], m.history[1], m.history[2]);
    te_llama_fp8_meta_update(&m, 0.5f);
    te_llama_fp8_meta_update(&m, 0.5f);
    CHECK(m.scale == 448.0f, "[1, 0.5, 0.5]: %g", m.scale);
    {   /* the default 1024 slots */
        int i;
        te_llama_fp8_meta_init(&m, NULL, TE_LLAMA_F8_E4M3);
        te_llama_fp8_meta_update(&m, 64.0f);
        for (i = 0; i < 1023; i++) te_llama_fp8_meta_update(&m, 1.0f);
        CHECK(m.scale == 7.0f, "64 still among the last 1024: %g", m.scale);
        te_llama_fp8_meta_update(&m, 1.0f);
        CHECK(m.scale == 448.0f, "64 gone after 1025 updates: %g", m.scale);
    }
}

/* ------------------------------------------------------------------------------------- quantise, dequantise */

static void test_quantize(void) {
    static const float exact[] = {0.0f, 1.0f, -1.5f, 448.0f, -448.0f, 0.015625f, 0.001953125f /* 2^-9 */, 240.0f, 0.875f};
    uint8_t q[64];
    float back[64], src[64], amax = 0;
    size_t i;
    for (i = 0; i < sizeof exact / sizeof exact[0]; i++)
        CHECK(q_e4m3(exact[i]) == exact[i], "E4M3 holds %g exactly, got %g", exact[i], q_e4m3(exact[i]));
    /* round to nearest even: in [1, 2) the step is 1/8 */
    CHECK(q_e4m3(1.0625f) == 1.0f, "1.0625 ties to 1.0, got %g", q_e4m3(1.0625f));
    CHECK(q_e4m3(1.1875f) == 1.25f, "1.1875 ties to 1.25, got %g", q_e4m3(1.1875f));
    CHECK(q_e4m3(1.07f) == 1.125f, "1.07 -> 1.125, got %g", q_e4m3(1.07f));
    CHECK(q_e4m3(0.0009765625f) == 0.0f, "2^-10 ties to 0, got %g", q_e4m3(0.0009765625f));
    /* saturation, not infinity */
    CHECK(q_e4m3(464.0f) == 448.0f && q_e4m3(1e9f) == 448.0f && q_e4m3(-1e30f) == -448.0f && q_e4m3(INFINITY) == 448.0f,
          "E4M3 saturates at 448: %g %g %g", q_e4m3(464.0f), q_e4m3(1e9f), q_e4m3(-1e30f));
    CHECK(isnan(q_e4m3(NAN)), "NaN stays NaN");
    src[0] = 60000.0f; src[1] = -1e9f; src[2] = 57344.0f; src[3] = 49152.0f; src[4] = 1.0f; src[5] = 1.125f;
    te_llama_fp8_quantize(q, src, 6, 1.0f, TE_LLAMA_F8_E5M2, NULL);
    te_llama_fp8_dequantize(back, q, 6, 1.0f, TE_LLAMA_F8_E5M2);
    CHECK(back[0] == 57344.0f && back[1] == -57344.0f && back[2] == 57344.0f && back[3] == 49152.0f,
          "E5M2 saturates at 57344: %g %g %g %g", back[0], back[1], back[2], back[3]);
    CHECK(back[4] == 1.0f && back[5] == 1.0f, "E5M2 has 2 mantissa bits: 1.125 ties to 1, got %g", back[5]);
    CHECK(q[0] == 0x7b && q[1] == 0xfb, "E5M2 max bytes 0x%02x 0x%02x", q[0], q[1]);
    src[0] = 1000.0f;
    te_llama_fp8_quantize(q, src, 1, 1.0f, TE_LLAMA_F8_E4M3, NULL);
    CHECK(q[0] == 0x7e, "E4M3 max byte 0x%02x (0x7f is NaN)", q[0]);
    /* with a scale: x -> fp8(x * scale), back with scale_inv; amax is of the unscaled input */
    src[0] = 3.0f; src[1] = -0.5f; src[2] = 0.01f;
    amax = 0.25f;
    CHECK_RESULT(te_llama_fp8_quantize(q, src, 3, 100.0f, TE_LLAMA_F8_E4M3, &amax), TE_LLAMA_OK);
    CHECK(amax == 3.0f, "amax %g", amax);
    te_llama_fp8_dequantize(back, q, 3, 1.0f / 100.0f, TE_LLAMA_F8_E4M3);
    CHECK(fabsf(back[0] - 2.88f) < 1e-6f && back[1] == -0.48f && fabsf(back[2] - 0.01f) < 1e-6f, "scaled (300 -> 288, -50 -> -48, 1 -> 1): %g %g %g", back[0], back[1], back[2]);
    CHECK_RESULT(te_llama_fp8_quantize(q, src, 1, 1.0f, TE_LLAMA_BF16, NULL), TE_LLAMA_ERR_INVALID_ARGUMENT);
    CHECK_RESULT(te_llama_fp8_dequantize(back, q, 1, 1.0f, TE_LLAMA_F16), TE_LLAMA_ERR_INVALID_ARGUMENT);
    {   /* random values scaled into range: relative error within half a unit of the last place */
        uint64_t rng = 12345;
        float worst4 = 0, worst5 = 0, a4 = 0;
        te_llama_fp8_meta m4;
        for (i = 0; i < 64; i++) src[i] = (te_llama__rand_unit(&rng) - 0.5f) * 37.0f;
        te_llama_fp8_meta_init(&m4, NULL, TE_LLAMA_F8_E4M3);
        for (i = 0; i < 64; i++) if (fabsf(src[i]) > a4) a4 = fabsf(src[i]);
        te_llama_fp8_meta_update(&m4, a4);
        te_llama_fp8_quantize(q, src, 64, m4.scale, TE_LLAMA_F8_E4M3, NULL);
        te_llama_fp8_dequantize(back, q, 64, m4.scale_inv, TE_LLAMA_F8_E4M3);
        for (i = 0; i < 64; i++) if (fabsf(src[i]) * m4.scale >= 0.015625f) {
            float e = fabsf(back[i] - src[i]) / fabsf(src[i]);
            if (e > worst4) worst4 = e;
        }
        te_llama_fp8_quantize(q, src, 64, 1.0f, TE_LLAMA_F8_E5M2, NULL);
        te_llama_fp8_dequantize(back, q, 64, 1.0f, TE_LLAMA_F8_E5M2);
        for (i = 0; i < 64; i++) if (fabsf(src[i]) >= 6.2e-5f) {
            float e = fabsf(back[i] - src[i]) / fabsf(src[i]);
            if (e > worst5) worst5 = e;
        }
        CHECK(worst4 <= 1.0f / 16 + 1e-6f, "E4M3 round trip: relative error %g > 2^-4", worst4);
        CHECK(worst5 <= 1.0f / 8 + 1e-6f, "E5M2 round trip: relative error %g > 2^-3", worst5);
        CHECK(worst4 > 0 && worst5 > worst4 / 4, "errors look real: %g %g", worst4, worst5);
    }
}

/* ------------------------------------------------------------------------------------------------- model */

static int argmax(const float *x, int n) {
    int i, b = 0;
    for (i = 1; i < n; i++) if (x[i] > x[b]) b = i;
    return b;
}

/* x[b] (its largest) minus the second largest */
static float top2_gap(const float *x, int n, int b) {
    int i;
    float second = -INFINITY;
    for (i = 0; i < n; i++) if (i != b && x[i] > second) second = x[i];
    return x[b] - second;
}

/* Forward `n` tokens at positions 0..n-1 in a fresh cache; all logits. */
static te_llama_result run(te_llama_model *m, const int32_t *tokens, int n, float *logits) {
    te_llama_kv_cache *cache;
    te_llama_batch b;
    int32_t pos[1024];
    int i;
    te_llama_result r;
    for (i = 0; i < n; i++) pos[i] = i;
    memset(&b, 0, sizeof b);
    b.n_tokens = n;
    b.tokens = tokens;
    b.pos = pos;
    if ((r = te_llama_kv_cache_create(m, 1, n, &cache))) return r;
    r = te_llama_forward(m, cache, &b, logits);
    te_llama_kv_cache_free(cache);
    return r;
}

static void test_model_api(void) {
    te_llama_options o;
    te_llama_fp8_recipe rc;
    te_llama_model *m = NULL, *v = NULL, *back = NULL;
    static const int32_t prompt[12] = {0, 40, 512, 77, 1000, 3, 250, 999, 14, 15, 92, 4000};
    float *lt, *lv;
    int vocab, i;
    memset(&o, 0, sizeof o);
    memset(&rc, 0, sizeof rc);
    /* FP8 on the CUDA backend runs over BF16 parameters: other storage is a clear UNSUPPORTED before anything is
       read (in any build: this one has no CUDA backend at all) */
    o.backend = TE_LLAMA_BACKEND_CUDA;
    o.dtype = TE_LLAMA_F32;
    o.fp8 = &rc;
    CHECK_RESULT(te_llama_load(model_dir, &o, &m), TE_LLAMA_ERR_UNSUPPORTED);
    CHECK(strstr(te_llama_last_error(), "FP8") != NULL && strstr(te_llama_last_error(), "F32") != NULL, "message: %s", te_llama_last_error());
    o.backend = TE_LLAMA_BACKEND_CPU;
    o.dtype = TE_LLAMA_DTYPE_AUTO;
    rc.amax_history_len = 5000;
    CHECK_RESULT(te_llama_load(model_dir, &o, &m), TE_LLAMA_ERR_OUT_OF_RANGE);
    rc.amax_history_len = 16;
    CHECK_RESULT(te_llama_load(model_dir, &o, &m), TE_LLAMA_OK);
    if (!m) return;
    CHECK(m->fp8 != NULL && m->options.fp8 == NULL, "FP8 state on, the caller's recipe not kept");
    {   /* the weight scale is 448 / amax of the whole fused QKV buffer */
        te_llama_fp8_meta *w = te_llama_fp8_meta_of(m, 0, TE_LLAMA_FP8_QKV, TE_LLAMA_FP8_WEIGHT);
        te_llama_param *qkv = &((te_llama__te_impl *)m->layers[0]->impl)->qkv;
        size_t k, nq = te_llama_param_numel(qkv);
        float amax = 0;
        for (k = 0; k < nq; k++) { float a = fabsf(te_llama__bf16_to_f32(((const uint16_t *)qkv->data)[k])); if (a > amax) amax = a; }
        CHECK(w && w->history_len == 16 && fabsf(w->scale - 448.0f / amax) <= 1e-6f * w->scale, "QKV weight scale %g, 448 / %g = %g", w ? w->scale : 0, amax, 448.0f / amax);
        CHECK(te_llama_fp8_meta_of(m, 6, TE_LLAMA_FP8_QKV, TE_LLAMA_FP8_WEIGHT) == NULL && te_llama_fp8_meta_of(m, 0, TE_LLAMA_FP8_GEMMS, TE_LLAMA_FP8_INPUT) == NULL, "out of range: NULL");
    }
    /* a vanilla model quantises its q/k/v and gate/up with one scale each: the same numbers as te */
    o.decoder = te_llama_vanilla_decoder;
    CHECK_RESULT(te_llama_load(model_dir, &o, &v), TE_LLAMA_OK);
    vocab = m->config.vocab_size;
    lt = (float *)malloc(sizeof(float) * 12 * (size_t)vocab);
    lv = (float *)malloc(sizeof(float) * 12 * (size_t)vocab);
    if (v) {
        float worst = 0;
        CHECK_RESULT(run(m, prompt, 12, lt), TE_LLAMA_OK);
        CHECK_RESULT(run(v, prompt, 12, lv), TE_LLAMA_OK);
        for (i = 0; i < 12 * vocab; i++) if (fabsf(lt[i] - lv[i]) > worst) worst = fabsf(lt[i] - lv[i]);
        CHECK(worst < 1e-3f, "te vs vanilla under FP8: max |difference| %g", worst);
        /* delayed scaling: the first forward used scale 1, and recorded amaxes that set the next scales */
        {
            te_llama_fp8_meta *in = te_llama_fp8_meta_of(m, 2, TE_LLAMA_FP8_FC2, TE_LLAMA_FP8_INPUT);
            te_llama_fp8_meta *out = te_llama_fp8_meta_of(m, 2, TE_LLAMA_FP8_FC2, TE_LLAMA_FP8_OUTPUT);
            CHECK(in->n_updates == 1 && in->history[0] > 0 && in->scale == 448.0f / in->history[0] && in->amax == 0,
                  "fc2 input after one forward: %lld updates, amax %g, scale %g", (long long)in->n_updates, in->history[0], in->scale);
            CHECK(out->n_updates == 1 && out->history[0] > 0, "fc2 output amax %g", out->history[0]);
        }
        te_llama_free(v);
    }
    {   /* save writes the dequantised weights in the checkpoint's dtype; loading that without FP8 gives them */
        char dir[2048];
        snprintf(dir, sizeof dir, "%s/fp8_saved", tmp_root);
        CHECK_RESULT(te_llama_save(m, dir, NULL), TE_LLAMA_OK);
        CHECK_RESULT(te_llama_load(dir, NULL, &back), TE_LLAMA_OK);
        if (back) {
            te_llama_fp8_meta *w = te_llama_fp8_meta_of(m, 1, TE_LLAMA_FP8_FC1, TE_LLAMA_FP8_WEIGHT);
            te_llama_param *fc1 = &back->layers[1]->params[6], *orig = &m->layers[1]->params[6];
            te_llama_param *key = &back->layers[1]->params[2];
            size_t k, n = te_llama_param_numel(fc1), bad = 0, changed = 0;
            uint8_t *q = (uint8_t *)malloc(n);
            float *f = (float *)malloc(sizeof(float) * n), *o32 = (float *)malloc(sizeof(float) * n);
            CHECK(fc1->dtype == TE_LLAMA_BF16 && back->config.dtype == TE_LLAMA_BF16, "saved as %s", te_llama_dtype_name(fc1->dtype));
            te_llama_convert(o32, TE_LLAMA_F32, orig->data, orig->dtype, n);
            te_llama_fp8_quantize(q, o32, n, w->scale, TE_LLAMA_F8_E4M3, NULL);
            te_llama_fp8_dequantize(f, q, n, w->scale_inv, TE_LLAMA_F8_E4M3);
            for (k = 0; k < n; k++) {
                uint16_t want = te_llama__f32_to_bf16(f[k]), got = ((const uint16_t *)fc1->data)[k];
                bad += want != got;
                changed += got != ((const uint16_t *)orig->data)[k];
            }
            CHECK(bad == 0, "%zu of %zu fc1 values are not bf16(dequantised)", bad, n);
            CHECK(changed > n / 4, "only %zu of %zu fc1 values changed: not the FP8 weights?", changed, n);
            {   /* a view of the fused QKV (key rows) saved from the FP8 copy too */
                te_llama_fp8_meta *wq = te_llama_fp8_meta_of(m, 1, TE_LLAMA_FP8_QKV, TE_LLAMA_FP8_WEIGHT);
                float x = te_llama__bf16_to_f32(((const uint16_t *)m->layers[1]->params[2].data)[5]), y;
                uint8_t b;
                te_llama_fp8_quantize(&b, &x, 1, wq->scale, TE_LLAMA_F8_E4M3, NULL);
                te_llama_fp8_dequantize(&y, &b, 1, wq->scale_inv, TE_LLAMA_F8_E4M3);
                CHECK(((const uint16_t *)key->data)[5] == te_llama__f32_to_bf16(y), "key weight saved dequantised");
                CHECK(te_llama__bf16_to_f32(((const uint16_t *)back->norm.data)[0]) == te_llama__bf16_to_f32(((const uint16_t *)m->norm.data)[0]), "norms as they were");
            }
            free(q); free(f); free(o32);
            te_llama_free(back);
        }
    }
    {   /* layers kept out of FP8 (bf16_layers_start / _end): checked, computed as with FP8 off, saved as they were */
        te_llama_fp8_recipe kept;
        char dir[2048];
        float *plain = (float *)malloc(sizeof(float) * 12 * (size_t)vocab);
        int L = m->config.num_hidden_layers;
        memset(&kept, 0, sizeof kept);
        kept.bf16_layers_start = -1;
        CHECK_RESULT(te_llama_fp8_enable(m, &kept), TE_LLAMA_ERR_OUT_OF_RANGE);
        kept.bf16_layers_start = 4;
        kept.bf16_layers_end = L - 3;
        CHECK_RESULT(te_llama_fp8_enable(m, &kept), TE_LLAMA_ERR_OUT_OF_RANGE);
        CHECK(strstr(te_llama_last_error(), "bf16_layers_start 4") != NULL, "message: %s", te_llama_last_error());
        te_llama_fp8_disable(m);
        CHECK_RESULT(run(m, prompt, 12, plain), TE_LLAMA_OK);
        kept.bf16_layers_end = L - 4; /* every layer */
        CHECK_RESULT(te_llama_fp8_enable(m, &kept), TE_LLAMA_OK);
        CHECK_RESULT(run(m, prompt, 12, lt), TE_LLAMA_OK);
        CHECK(memcmp(plain, lt, sizeof(float) * 12 * (size_t)vocab) == 0, "every layer kept in BF16: logits differ from FP8 off");
        kept.bf16_layers_start = kept.bf16_layers_end = 1;
        CHECK_RESULT(te_llama_fp8_enable(m, &kept), TE_LLAMA_OK);
        CHECK(!te_llama_fp8_layer_in_bf16(&kept, 1, L) && te_llama_fp8_layer_in_bf16(&kept, 0, L) &&
              te_llama_fp8_layer_in_bf16(&kept, L - 1, L) && !te_llama_fp8_layer_in_bf16(NULL, 0, L), "te_llama_fp8_layer_in_bf16");
        CHECK_RESULT(run(m, prompt, 12, lt), TE_LLAMA_OK);
        CHECK(memcmp(plain, lt, sizeof(float) * 12 * (size_t)vocab) != 0, "layers 1 .. %d in FP8 changed nothing", L - 2);
        for (i = 0; i < L; i++) {
            te_llama_fp8_meta *in = te_llama_fp8_meta_of(m, i, TE_LLAMA_FP8_FC1, TE_LLAMA_FP8_INPUT);
            const int fp8 = i > 0 && i < L - 1;
            CHECK(in && in->n_updates == fp8 && (fp8 ? in->scale != 1.0f : in->scale == 1.0f), "layer %d fc1 input: %lld updates, scale %g",
                  i, in ? (long long)in->n_updates : -1LL, in ? in->scale : 0);
        }
        snprintf(dir, sizeof dir, "%s/fp8_saved_kept", tmp_root);
        CHECK_RESULT(te_llama_save(m, dir, NULL), TE_LLAMA_OK);
        CHECK_RESULT(te_llama_load(dir, NULL, &back), TE_LLAMA_OK);
        for (i = 0; back && i < L; i++) {
            const te_llama_param *a = &back->layers[i]->params[6], *b = &m->layers[i]->params[6];
            const te_llama_param *ka = &back->layers[i]->params[2], *kb = &m->layers[i]->params[2];
            const int same = memcmp(a->data, b->data, te_llama_param_bytes(b)) == 0 && memcmp(ka->data, kb->data, te_llama_param_bytes(kb)) == 0;
            CHECK(same == (i == 0 || i == L - 1), "layer %d: fc1 and key weights saved %s", i, same ? "as they were" : "dequantised");
        }
        te_llama_free(back);
        back = NULL;
        free(plain);
    }
    /* off again: the high-precision path, the state gone */
    te_llama_fp8_disable(m);
    CHECK(m->fp8 == NULL && te_llama_fp8_meta_of(m, 0, TE_LLAMA_FP8_QKV, TE_LLAMA_FP8_INPUT) == NULL, "disabled");
    CHECK_RESULT(te_llama_fp8_calibrate(m, 1), TE_LLAMA_ERR_INVALID_ARGUMENT);
    free(lt);
    free(lv);
    te_llama_free(m);
}

/* Held-out perplexity and top-1 agreement: the last 5% of the corpus, as tools/train_default_model.py holds it
   out, in chunks of 256 tokens (255 predictions each), under each recipe of rc (NULL: TE's defaults), each model
   calibrated on 4 chunks of the training text before it. The reference (the same model in high precision) is
   computed once a chunk for all of them. Recipe r's agreement must reach bar[r]. */
enum { ACC_RECIPES = 2 };
static void test_accuracy(const te_llama_fp8_recipe *const rc[ACC_RECIPES], const double bar[ACC_RECIPES]) {
    const char *env_chunks = getenv("TE_LLAMA_FP8_CHUNKS");
    size_t len = 0, cut = 0, calib_at = 0;
    char *text = check_austen_split(&len, &cut, &calib_at);
    te_llama_tokenizer *tok = NULL;
    te_llama_model *plain = NULL, *m[ACC_RECIPES] = {NULL, NULL};
    int32_t *ids = NULL, *cids = NULL;
    size_t n_ids = 0, n_cids = 0;
    int seq = 256, n_chunks = env_chunks ? atoi(env_chunks) : 12, c, t, i, vocab, total = 0, decided = 0;
    int agree[ACC_RECIPES] = {0, 0}, agree_decided[ACC_RECIPES] = {0, 0};
    float *ref, *lg;
    double nll_ref = 0, nll_fp8[ACC_RECIPES] = {0, 0}, ppl_ref, t0;
    CHECK(text != NULL, "cannot read the Austen corpus (set TE_LLAMA_SHARED)");
    if (!text) return;
    CHECK_RESULT(te_llama_tokenizer_load(model_dir, NULL, &tok), TE_LLAMA_OK);
    CHECK_RESULT(te_llama_load(model_dir, NULL, &plain), TE_LLAMA_OK);
    for (i = 0; i < ACC_RECIPES; i++) CHECK_RESULT(te_llama_load(model_dir, NULL, &m[i]), TE_LLAMA_OK);
    if (!tok || !plain || !m[0] || !m[1]) goto done;
    CHECK_RESULT(te_llama_tokenizer_encode(tok, text + cut, (size_t)(len - cut), 0, &ids, &n_ids), TE_LLAMA_OK);
    CHECK_RESULT(te_llama_tokenizer_encode(tok, text + calib_at, (size_t)(cut - calib_at), 0, &cids, &n_cids), TE_LLAMA_OK);
    if ((size_t)n_chunks * seq > n_ids) n_chunks = (int)(n_ids / seq);
    vocab = plain->config.vocab_size;
    ref = (float *)malloc(sizeof(float) * (size_t)seq * vocab);
    lg = (float *)malloc(sizeof(float) * (size_t)seq * vocab);
    CHECK(n_chunks >= 4 && n_cids >= (size_t)4 * seq, "held-out %zu tokens, calibration %zu", n_ids, n_cids);
    t0 = now_s();
    for (i = 0; i < ACC_RECIPES; i++) { /* FP8 on, calibrated (high precision, amaxes recorded) */
        CHECK_RESULT(te_llama_fp8_enable(m[i], rc[i]), TE_LLAMA_OK);
        CHECK_RESULT(te_llama_fp8_calibrate(m[i], 1), TE_LLAMA_OK);
        for (c = 0; c < 4 && (size_t)(c + 1) * seq <= n_cids; c++)
            CHECK_RESULT(run(m[i], cids + (size_t)c * seq, seq, lg), TE_LLAMA_OK);
        {   /* calibration forwards compute exactly the high-precision result */
            const size_t bytes = sizeof(float) * 8 * (size_t)vocab;
            float *a = (float *)malloc(bytes), *b = (float *)malloc(bytes);
            CHECK_RESULT(run(plain, ids, 8, a), TE_LLAMA_OK);
            CHECK_RESULT(run(m[i], ids, 8, b), TE_LLAMA_OK);
            CHECK(memcmp(a, b, bytes) == 0, "recipe %d: a calibrating forward differs from the high-precision one", i);
            free(a); free(b);
        }
        CHECK(te_llama_fp8_meta_of(m[i], 2, TE_LLAMA_FP8_QKV, TE_LLAMA_FP8_INPUT)->scale != 1.0f,
              "calibration set the input scales");
        CHECK_RESULT(te_llama_fp8_calibrate(m[i], 0), TE_LLAMA_OK);
    }
    for (c = 0; c < n_chunks; c++) {
        const int32_t *x = ids + (size_t)c * seq;
        te_llama_fp8_gemm g;
        CHECK_RESULT(run(plain, x, seq, ref), TE_LLAMA_OK); /* the reference: the same model in high precision */
        for (t = 0; t + 1 < seq; t++) {
            const float *r = ref + (size_t)t * vocab;
            const int ar = argmax(r, vocab);
            double mr = r[ar], sr = 0;
            int k;
            for (k = 0; k < vocab; k++) sr += exp(r[k] - mr);
            nll_ref += log(sr) + mr - r[x[t + 1]];
            total++;
            decided += top2_gap(r, vocab, ar) >= 0.25f; /* the reference decided: its top two logits 0.25 or more apart */
        }
        for (i = 0; i < ACC_RECIPES; i++) {
            const int l = m[i]->config.num_hidden_layers - 1;
            CHECK_RESULT(run(m[i], x, seq, lg), TE_LLAMA_OK);
            for (t = 0; t + 1 < seq; t++) {
                const float *r = ref + (size_t)t * vocab, *q = lg + (size_t)t * vocab;
                const int ar = argmax(r, vocab), aq = argmax(q, vocab);
                double mq = q[aq], sq = 0;
                int k;
                for (k = 0; k < vocab; k++) sq += exp(q[k] - mq);
                nll_fp8[i] += log(sq) + mq - q[x[t + 1]];
                agree[i] += ar == aq;
                if (top2_gap(r, vocab, ar) >= 0.25f) agree_decided[i] += ar == aq;
            }
            for (g = TE_LLAMA_FP8_QKV; g < TE_LLAMA_FP8_GEMMS; g = (te_llama_fp8_gemm)(g + 1)) {
                te_llama_fp8_meta *in = te_llama_fp8_meta_of(m[i], l, g, TE_LLAMA_FP8_INPUT);
                if (te_llama_fp8_layer_in_bf16(rc[i], l, l + 1))
                    CHECK(in->scale == 1.0f && in->n_updates == 0, "layer %d (BF16) gemm %d input state used", l, (int)g);
                else CHECK(in->scale > 1.0f && isfinite(in->scale), "layer %d gemm %d input scale %g", l, (int)g, in->scale);
            }
        }
    }
    ppl_ref = exp(nll_ref / total);
    CHECK(ppl_ref > 30 && ppl_ref < 90, "reference perplexity %g (the model card says 55.98 on the whole held-out text)", ppl_ref);
    for (i = 0; i < ACC_RECIPES; i++) {
        const double ppl_fp8 = exp(nll_fp8[i] / total);
        printf("  held-out Austen, %d tokens in %d chunks of %d (%.1f s for all recipes): perplexity %.3f (bf16 weights, f32 "
               "math) vs %.3f (FP8 E4M3 emulated, layers kept in BF16: %d first, %d last), %+.3f%%; top-1 agreement %.2f%%, "
               "%.2f%% at the %d positions where the reference's top-2 gap >= 0.25\n", total, n_chunks, seq, now_s() - t0,
               ppl_ref, ppl_fp8, rc[i] ? rc[i]->bf16_layers_start : 0, rc[i] ? rc[i]->bf16_layers_end : 0,
               100.0 * (ppl_fp8 / ppl_ref - 1.0), 100.0 * agree[i] / total,
               100.0 * agree_decided[i] / (decided ? decided : 1), decided);
        CHECK(fabs(ppl_fp8 / ppl_ref - 1.0) <= 0.02, "FP8 perplexity %g vs %g: more than 2%% apart", ppl_fp8, ppl_ref);
        CHECK(agree[i] >= bar[i] * total, "top-1 agreement %d of %d below %.0f%%", agree[i], total, 100 * bar[i]);
        CHECK(agree_decided[i] >= 0.98 * decided && decided >= total / 2, "top-1 agreement where the reference decided: %d of %d",
              agree_decided[i], decided);
        CHECK(nll_fp8[i] != nll_ref, "FP8 changed nothing: not quantising?");
    }
    free(ref); free(lg);
done:
    free(text);
    te_llama_tokenizer_free_ids(tok, ids);
    te_llama_tokenizer_free_ids(tok, cids);
    te_llama_tokenizer_free(tok);
    te_llama_free(plain);
    for (i = 0; i < ACC_RECIPES; i++) te_llama_free(m[i]);
}

int main(void) {
    const char *env = getenv("TE_LLAMA_TMP");
    char cmd[1200];
    snprintf(tmp_root, sizeof tmp_root, "%s/fp8", env ? env : "build/tmp");
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", tmp_root);
    if (system(cmd) != 0) return 2;
    test_scaling();
    test_quantize();
    test_model_api();
    {   /* The target is 95%. TE's default recipe measures 93.76% on these 3060 tokens (weights-only FP8: 96.47%,
           activations-only: 95.03%), and no TE setting reaches 95% (margin 2: 94.51%): 91% of the disagreements are
           where the reference's top-2 logits are within 0.25 (bench/NOTES_fp8.md, bench/fp8_error.c). Its bar sits
           just under what is measured, so a regression shows. With the first and the last layer kept in BF16
           (Megatron-Core's first_last_layers_bf16) the emulation measures 95.75%, and the bar is the target. */
        te_llama_fp8_recipe first_last;
        memset(&first_last, 0, sizeof first_last);
        first_last.bf16_layers_start = first_last.bf16_layers_end = 1;
        {
            const te_llama_fp8_recipe *const recipes[ACC_RECIPES] = {NULL, &first_last};
            const double bars[ACC_RECIPES] = {0.93, 0.95};
            test_accuracy(recipes, bars);
        }
    }
    return CHECK_DONE("fp8");
}
