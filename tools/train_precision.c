/* train_precision.c - which rounding points of the CUDA trainer cost how much gradient accuracy on the test
   fixtures. The fp32 CPU training pass of te_llama.h, copied here with switches that round to bf16 where the GPU
   does (te_llama_kernels.cu, section "training"), against HF's float64 gradients (tests/fixtures/<name>/
   ref_grads.safetensors). Prints, per fixture, the worst relative L2 error over all parameters with each rounding
   point alone and with all the others; with an argument (a mask of the R_ flags), that combination only
   (VERBOSE=1: every parameter). Build: cc -O2 -std=c99 -Wall -Wextra -I. -Itests tools/train_precision.c -o build/train_precision -lm -lpthread
   Run from the repository root: ./build/train_precision */
#define TE_LLAMA_IMPLEMENTATION
#include "te_llama.h"

#include "check.h"
#include "train_ref.h"

enum {
    R_W = 1 << 0,      /* weights in bf16 (the fixture's own dtype otherwise) */
    R_XN = 1 << 1,     /* RMSNorm outputs xn1, xn2 */
    R_KV = 1 << 2,     /* k (after RoPE) and v */
    R_ATT = 1 << 3,    /* attention output */
    R_FC1 = 1 << 4,    /* fc1 output (gate, up) */
    R_XF = 1 << 5,     /* final norm output */
    R_DLOG = 1 << 6,   /* d loss / d logits */
    R_DX = 1 << 7,     /* the residual gradient before the fc2 and proj GEMMs */
    R_DFC1 = 1 << 8,   /* the SwiGLU backward's output */
    R_DQKV = 1 << 9,   /* the QKV gradient (after the RoPE transpose) */
    R_DBF = 1 << 10,   /* attention backward: D = rowsum(dO bf16(O)) instead of rowsum(P dP) */
    R_ALL = (1 << 12) - 1,
    R_ACT = 1 << 11,   /* the SwiGLU output */
    R_WGF = 1 << 12    /* the wgrad GEMMs get the fp32 xn1, xn2, att and act (the forward GEMMs the rounded ones) */
};
static const char *names[] = {"bf16 weights", "xn1/xn2 bf16", "k, v bf16", "att out bf16", "fc1 out bf16", "final norm out bf16",
                              "dlogits bf16", "dx bf16 (fc2, proj GEMMs)", "dfc1 bf16", "dqkv bf16", "D from bf16 O", "act bf16"};
static int F; /* the rounding points on */

static float rb(float x) { return te_llama__bf16_to_f32(te_llama__f32_to_bf16(x)); }
static void round_if(int flag, float *p, size_t n) {
    size_t i;
    if (F & flag) for (i = 0; i < n; i++) p[i] = rb(p[i]);
}

typedef struct em_act {
    te_llama__act a;
    float *xn1f, *xn2f, *attf, *actf; /* fp32 copies for R_WGF */
    float *att32; /* (n, q_dim) the attention output before rounding */
} em_act;

static void em_layer_fwd(const te_llama_config *c, const te_llama__tw *w, em_act *e, float *xout, int B, int T, const float *rcos,
                         const float *rsin) {
    te_llama__act *a = &e->a;
    int n = B * T, h = c->hidden_size, hd = c->head_dim, half = hd / 2, I = c->intermediate_size;
    int nh = c->num_attention_heads, nkv = c->num_key_value_heads, q_dim = nh * hd, kv_dim = nkv * hd;
    int ld = q_dim + 2 * kv_dim, group = nh / nkv, t, k, b, hh, j, d;
    float scale = 1.0f / sqrtf((float)hd);
    for (t = 0; t < n; t++) a->inv1[t] = te_llama__rmsnorm_f(a->xn1 + (size_t)t * h, a->x + (size_t)t * h, w->ln1, h, c->rms_norm_eps);
    memcpy(e->xn1f, a->xn1, sizeof(float) * (size_t)n * h);
    round_if(R_XN, a->xn1, (size_t)n * h);
    te_llama__gemm_nt(a->qkv, a->xn1, w->qkv, n, ld, h, 0);
    for (t = 0; t < n; t++) {
        float *row = a->qkv + (size_t)t * ld;
        const float *cs = rcos + (size_t)(t % T) * half, *sn = rsin + (size_t)(t % T) * half;
        for (hh = 0; hh < nh + nkv; hh++) te_llama__rope(row + hh * hd, half, cs, sn);
        round_if(R_KV, row + q_dim, (size_t)2 * kv_dim);
    }
    for (b = 0; b < B; b++)
        for (hh = 0; hh < nh; hh++)
            for (t = 0; t < T; t++) {
                const float *qh = a->qkv + (size_t)(b * T + t) * ld + hh * hd;
                float *p = a->prob + (((size_t)b * nh + hh) * T + t) * T, mx = -INFINITY, sum = 0;
                float *out = e->att32 + (size_t)(b * T + t) * q_dim + hh * hd;
                size_t koff = (size_t)q_dim + (size_t)(hh / group) * hd, voff = koff + kv_dim;
                for (j = 0; j <= t; j++) {
                    p[j] = te_llama__dot(qh, a->qkv + (size_t)(b * T + j) * ld + koff, hd) * scale;
                    if (p[j] > mx) mx = p[j];
                }
                for (j = 0; j <= t; j++) { p[j] = expf(p[j] - mx); sum += p[j]; }
                for (j = 0; j <= t; j++) p[j] /= sum;
                for (j = t + 1; j < T; j++) p[j] = 0;
                memset(out, 0, sizeof(float) * (size_t)hd);
                for (j = 0; j <= t; j++) {
                    const float *vj = a->qkv + (size_t)(b * T + j) * ld + voff;
                    for (d = 0; d < hd; d++) out[d] += p[j] * vj[d];
                }
            }
    memcpy(a->att, e->att32, sizeof(float) * (size_t)n * q_dim);
    memcpy(e->attf, a->att, sizeof(float) * (size_t)n * q_dim);
    round_if(R_ATT, a->att, (size_t)n * q_dim);
    te_llama__gemm_nt(a->xmid, a->att, w->proj, n, h, q_dim, 0);
    for (k = 0; k < n * h; k++) a->xmid[k] += a->x[k];
    for (t = 0; t < n; t++) a->inv2[t] = te_llama__rmsnorm_f(a->xn2 + (size_t)t * h, a->xmid + (size_t)t * h, w->ln2, h, c->rms_norm_eps);
    memcpy(e->xn2f, a->xn2, sizeof(float) * (size_t)n * h);
    round_if(R_XN, a->xn2, (size_t)n * h);
    te_llama__gemm_nt(a->fc1, a->xn2, w->fc1, n, 2 * I, h, 0);
    round_if(R_FC1, a->fc1, (size_t)n * 2 * I);
    for (t = 0; t < n; t++) {
        const float *g = a->fc1 + (size_t)t * 2 * I, *u = g + I;
        float *o = a->act + (size_t)t * I;
        for (k = 0; k < I; k++) o[k] = g[k] / (1.0f + expf(-g[k])) * u[k];
    }
    memcpy(e->actf, a->act, sizeof(float) * (size_t)n * I);
    round_if(R_ACT, a->act, (size_t)n * I);
    te_llama__gemm_nt(xout, a->act, w->fc2, n, h, I, 0);
    for (k = 0; k < n * h; k++) xout[k] += a->xmid[k];
}

static void em_layer_back(const te_llama_config *c, const te_llama__tw *w, const te_llama__tw *g, const em_act *e, float *dx,
                          float *dxb, const te_llama__grad_work *s, int B, int T, const float *rcos, const float *rsin) {
    const te_llama__act *a = &e->a;
    int n = B * T, h = c->hidden_size, hd = c->head_dim, half = hd / 2, I = c->intermediate_size;
    int nh = c->num_attention_heads, nkv = c->num_key_value_heads, q_dim = nh * hd, kv_dim = nkv * hd;
    int ld = q_dim + 2 * kv_dim, group = nh / nkv, t, k, b, hh, j, d;
    float scale = 1.0f / sqrtf((float)hd);
    memcpy(dxb, dx, sizeof(float) * (size_t)n * h);
    round_if(R_DX, dxb, (size_t)n * h);
    te_llama__linear_back(s->dact, g->fc2, dxb, F & R_WGF ? e->actf : a->act, w->fc2, n, h, I, s->scratch);
    for (t = 0; t < n; t++) {
        const float *gt = a->fc1 + (size_t)t * 2 * I, *u = gt + I, *da = s->dact + (size_t)t * I;
        float *dg = s->dfc1 + (size_t)t * 2 * I, *du = dg + I;
        for (k = 0; k < I; k++) {
            float sg = 1.0f / (1.0f + expf(-gt[k]));
            du[k] = da[k] * gt[k] * sg;
            dg[k] = da[k] * u[k] * sg * (1.0f + gt[k] * (1.0f - sg));
        }
    }
    round_if(R_DFC1, s->dfc1, (size_t)n * 2 * I);
    te_llama__linear_back(s->dxn, g->fc1, s->dfc1, F & R_WGF ? e->xn2f : a->xn2, w->fc1, n, 2 * I, h, s->scratch);
    for (t = 0; t < n; t++)
        te_llama__rmsnorm_back(dx + (size_t)t * h, g->ln2, s->dxn + (size_t)t * h, a->xmid + (size_t)t * h, a->inv2[t], w->ln2, h);
    memcpy(dxb, dx, sizeof(float) * (size_t)n * h);
    round_if(R_DX, dxb, (size_t)n * h);
    te_llama__linear_back(s->datt, g->proj, dxb, F & R_WGF ? e->attf : a->att, w->proj, n, h, q_dim, s->scratch);
    memset(s->dqkv, 0, sizeof(float) * (size_t)n * ld);
    for (b = 0; b < B; b++)
        for (hh = 0; hh < nh; hh++)
            for (t = 0; t < T; t++) {
                const float *p = a->prob + (((size_t)b * nh + hh) * T + t) * T;
                const float *qh = a->qkv + (size_t)(b * T + t) * ld + hh * hd, *dout = s->datt + (size_t)(b * T + t) * q_dim + hh * hd;
                const float *o32 = e->att32 + (size_t)(b * T + t) * q_dim + hh * hd;
                float *dq = s->dqkv + (size_t)(b * T + t) * ld + hh * hd, sum = 0;
                size_t koff = (size_t)q_dim + (size_t)(hh / group) * hd, voff = koff + kv_dim;
                for (j = 0; j <= t; j++) {
                    float *dv = s->dqkv + (size_t)(b * T + j) * ld + voff;
                    s->dp[j] = te_llama__dot(dout, a->qkv + (size_t)(b * T + j) * ld + voff, hd);
                    sum += p[j] * s->dp[j];
                    for (d = 0; d < hd; d++) dv[d] += p[j] * dout[d];
                }
                if (F & R_DBF) {
                    sum = 0;
                    for (d = 0; d < hd; d++) sum += dout[d] * rb(o32[d]);
                }
                for (j = 0; j <= t; j++) {
                    const float *kj = a->qkv + (size_t)(b * T + j) * ld + koff;
                    float *dk = s->dqkv + (size_t)(b * T + j) * ld + koff, ds = p[j] * (s->dp[j] - sum) * scale;
                    for (d = 0; d < hd; d++) { dq[d] += ds * kj[d]; dk[d] += ds * qh[d]; }
                }
            }
    for (t = 0; t < n; t++) {
        float *row = s->dqkv + (size_t)t * ld;
        const float *cs = rcos + (size_t)(t % T) * half, *sn = rsin + (size_t)(t % T) * half;
        for (hh = 0; hh < nh + nkv; hh++) te_llama__rope_back(row + hh * hd, half, cs, sn);
    }
    round_if(R_DQKV, s->dqkv, (size_t)n * ld);
    te_llama__linear_back(s->dxn, g->qkv, s->dqkv, F & R_WGF ? e->xn1f : a->xn1, w->qkv, n, ld, h, s->scratch);
    for (t = 0; t < n; t++)
        te_llama__rmsnorm_back(dx + (size_t)t * h, g->ln1, s->dxn + (size_t)t * h, a->x + (size_t)t * h, a->inv1[t], w->ln1, h);
}

/* te_llama__train_pass with the switches; plain malloc (a test tool). */
static void em_pass(te_llama_model *m, float *const *W, float *const *G, const int32_t *tokens, const int32_t *labels, int B, int T,
                    float grad_scale) {
    const te_llama_config *c = &m->config;
    int n = B * T, h = c->hidden_size, hd = c->head_dim, half = hd / 2, I = c->intermediate_size, V = c->vocab_size;
    int L = c->num_hidden_layers, nh = c->num_attention_heads, q_dim = nh * hd, ld = q_dim + 2 * c->num_key_value_heads * hd;
    int np = te_llama_num_parameters(m), lm = c->tie_word_embeddings ? 0 : np - 1, l, t, i, pidx = 1;
    size_t big = (size_t)V * h + (size_t)ld * h + (size_t)2 * I * h + (size_t)n * (V + ld + 2 * I + 2 * h);
    float *rcos = (float *)calloc((size_t)T * half, 4), *rsin = (float *)calloc((size_t)T * half, 4);
    float *dx = (float *)calloc((size_t)n * h, 4), *dxb = (float *)calloc((size_t)n * h, 4), *xf = (float *)calloc((size_t)n * h, 4);
    float *invf = (float *)calloc((size_t)n, 4), *logits = (float *)calloc((size_t)n * V, 4);
    em_act *acts = (em_act *)calloc((size_t)L, sizeof(em_act));
    te_llama__grad_work gw;
    for (l = 0; l < L; l++) {
        te_llama__act *a = &acts[l].a;
        a->x = (float *)calloc((size_t)n * h, 4); a->inv1 = (float *)calloc((size_t)n, 4); a->xn1 = (float *)calloc((size_t)n * h, 4);
        a->qkv = (float *)calloc((size_t)n * ld, 4); a->prob = (float *)calloc((size_t)B * nh * T * T, 4);
        a->att = (float *)calloc((size_t)n * q_dim, 4); a->xmid = (float *)calloc((size_t)n * h, 4); a->inv2 = (float *)calloc((size_t)n, 4);
        a->xn2 = (float *)calloc((size_t)n * h, 4); a->fc1 = (float *)calloc((size_t)n * 2 * I, 4); a->act = (float *)calloc((size_t)n * I, 4);
        acts[l].att32 = (float *)calloc((size_t)n * q_dim, 4);
        acts[l].xn1f = (float *)calloc((size_t)n * h, 4); acts[l].xn2f = (float *)calloc((size_t)n * h, 4);
        acts[l].attf = (float *)calloc((size_t)n * q_dim, 4); acts[l].actf = (float *)calloc((size_t)n * I, 4);
    }
    gw.dxn = (float *)calloc((size_t)n * h, 4); gw.dqkv = (float *)calloc((size_t)n * ld, 4); gw.datt = (float *)calloc((size_t)n * q_dim, 4);
    gw.dfc1 = (float *)calloc((size_t)n * 2 * I, 4); gw.dact = (float *)calloc((size_t)n * I, 4); gw.dp = (float *)calloc((size_t)T, 4);
    gw.scratch = (float *)calloc(big, 4);
    for (t = 0; t < T; t++)
        for (i = 0; i < half; i++) {
            float angle = (float)t * m->rope_inv_freq[i];
            rcos[(size_t)t * half + i] = (float)cos((double)angle);
            rsin[(size_t)t * half + i] = (float)sin((double)angle);
        }
    for (t = 0; t < n; t++) memcpy(acts[0].a.x + (size_t)t * h, W[0] + (size_t)tokens[t] * h, sizeof(float) * (size_t)h);
    for (l = 0; l < L; l++) {
        te_llama__tw w;
        int s[6];
        te_llama__train_slots(m, l, s);
        w.ln1 = W[pidx + s[0]]; w.qkv = W[pidx + s[1]]; w.proj = W[pidx + s[2]];
        w.ln2 = W[pidx + s[3]]; w.fc1 = W[pidx + s[4]]; w.fc2 = W[pidx + s[5]];
        em_layer_fwd(c, &w, &acts[l], l + 1 < L ? acts[l + 1].a.x : dx, B, T, rcos, rsin);
        pidx += m->layers[l]->n_params;
    }
    for (t = 0; t < n; t++) invf[t] = te_llama__rmsnorm_f(xf + (size_t)t * h, dx + (size_t)t * h, W[pidx], h, c->rms_norm_eps);
    round_if(R_XF, xf, (size_t)n * h);
    te_llama__gemm_nt(logits, xf, W[lm], n, V, h, 0);
    for (t = 0; t < n; t++) {
        float *row = logits + (size_t)t * V;
        int32_t y = (t % T) + 1 < T ? labels[t + 1] : TE_LLAMA_IGNORE_INDEX;
        double mx = -INFINITY, z = 0;
        if (y == TE_LLAMA_IGNORE_INDEX) { memset(row, 0, sizeof(float) * (size_t)V); continue; }
        for (i = 0; i < V; i++) if (row[i] > mx) mx = row[i];
        for (i = 0; i < V; i++) z += exp((double)row[i] - mx);
        for (i = 0; i < V; i++) row[i] = (float)(exp((double)row[i] - mx) / z) * grad_scale;
        row[y] -= grad_scale;
    }
    round_if(R_DLOG, logits, (size_t)n * V);
    te_llama__linear_back(gw.dxn, G[lm], logits, xf, W[lm], n, V, h, gw.scratch);
    memcpy(xf, dx, sizeof(float) * (size_t)n * h);
    memset(dx, 0, sizeof(float) * (size_t)n * h);
    for (t = 0; t < n; t++) te_llama__rmsnorm_back(dx + (size_t)t * h, G[pidx], gw.dxn + (size_t)t * h, xf + (size_t)t * h, invf[t], W[pidx], h);
    for (l = L - 1; l >= 0; l--) {
        te_llama__tw w, g;
        int s[6];
        pidx -= m->layers[l]->n_params;
        te_llama__train_slots(m, l, s);
        w.ln1 = W[pidx + s[0]]; w.qkv = W[pidx + s[1]]; w.proj = W[pidx + s[2]];
        w.ln2 = W[pidx + s[3]]; w.fc1 = W[pidx + s[4]]; w.fc2 = W[pidx + s[5]];
        g.ln1 = G[pidx + s[0]]; g.qkv = G[pidx + s[1]]; g.proj = G[pidx + s[2]];
        g.ln2 = G[pidx + s[3]]; g.fc1 = G[pidx + s[4]]; g.fc2 = G[pidx + s[5]];
        em_layer_back(c, &w, &g, &acts[l], dx, dxb, &gw, B, T, rcos, rsin);
    }
    for (t = 0; t < n; t++) {
        float *ge = G[0] + (size_t)tokens[t] * h;
        for (i = 0; i < h; i++) ge[i] += dx[(size_t)t * h + i];
    }
    /* leaks: a short-lived tool */
}

/* ----------------------------------------------------------------------------------------------- the fixtures */

typedef struct fixture {
    const char *name;
    train_ref ref; /* the batch */
} fixture;

/* The worst relative L2 error over all parameters (source by source, even rows) with rounding points `flags`;
   *where gets the parameter's source name. */
static double run(const fixture *fx, int flags, const char **where) {
    char dir[512], path[600];
    te_llama_options o;
    te_llama_model *m = NULL;
    te_llama_trainer *tr = NULL;
    float **W, **G;
    int i, s;
    double worst = 0;
    int64_t tot = 0;
    static char worst_name[200];
    snprintf(dir, sizeof dir, "tests/fixtures/%s", fx->name);
    snprintf(path, sizeof path, "%s/ref_grads.safetensors", dir);
    memset(&o, 0, sizeof o);
    o.decoder = te_llama_te_decoder;
    o.dtype = flags & R_W ? TE_LLAMA_BF16 : TE_LLAMA_DTYPE_AUTO;
    if (te_llama_load(dir, &o, &m) || te_llama_trainer_create(m, NULL, &tr)) { fprintf(stderr, "%s\n", te_llama_last_error()); exit(1); }
    W = (float **)malloc(sizeof(float *) * (size_t)tr->n_params);
    G = (float **)malloc(sizeof(float *) * (size_t)tr->n_params);
    for (i = 0; i < tr->n_params; i++) { W[i] = tr->weights + tr->offset[i]; G[i] = tr->grad + tr->offset[i]; }
    for (i = 1; i < fx->ref.B * fx->ref.T; i++) if (i % fx->ref.T && fx->ref.labels[i] != TE_LLAMA_IGNORE_INDEX) tot++;
    F = flags;
    em_pass(m, W, G, fx->ref.tokens, fx->ref.labels, fx->ref.B, fx->ref.T, (float)(1.0 / (double)tot));
    for (i = 0; i < tr->n_params; i++) {
        te_llama_param *p = te_llama_parameter(m, i);
        for (s = 0; s < p->n_sources; s++) {
            double e = 0;
            if (ref_grad_error(path, p, s, G[i], &e) != REF_GRAD_OK) { fprintf(stderr, "no %s of the expected shape\n", p->sources[s].name); exit(1); }
            if (getenv("VERBOSE")) printf("    %-44s %.2e\n", p->sources[s].name, e);
            if (e > worst) { worst = e; snprintf(worst_name, sizeof worst_name, "%s", p->sources[s].name); }
        }
    }
    if (where) *where = worst_name;
    te_llama_trainer_free(tr);
    te_llama_free(m);
    free(W);
    free(G);
    return worst;
}

int main(int argc, char **argv) {
    static fixture fxs[3] = {{"gqa_tied_llama3", {0}}, {"mha_untied_bf16", {0}}, {"headdim_f16", {0}}};
    char dir[512];
    int f, k, extra = argc > 1 ? (int)strtol(argv[1], NULL, 0) : -1;
    const char *where;
    for (f = 0; f < 3; f++) {
        snprintf(dir, sizeof dir, "tests/fixtures/%s", fxs[f].name);
        CHECK(load_train_ref(dir, &fxs[f].ref), "%s: ref_train.json", fxs[f].name);
    }
    if (check_failed) return CHECK_DONE("train_precision");
    if (extra >= 0) { /* one set of flags */
        for (f = 0; f < 3; f++) {
            double e = run(&fxs[f], extra, &where);
            printf("%-16s flags 0x%04x: worst %.2e (%s)\n", fxs[f].name, extra, e, where);
        }
        return 0;
    }
    printf("%-28s %-22s %-22s %-22s\n", "rounding point", fxs[0].name, fxs[1].name, fxs[2].name);
    printf("%-28s", "none (fp32 CPU trainer)");
    for (f = 0; f < 3; f++) printf(" %-22.2e", run(&fxs[f], 0, NULL));
    printf("\n");
    for (k = 0; k < 12; k++) {
        printf("%-28s", names[k]);
        for (f = 0; f < 3; f++) {
            double alone = run(&fxs[f], 1 << k, NULL), but = run(&fxs[f], R_ALL & ~(1 << k), NULL);
            printf(" alone %.2e  all but %.2e", alone, but);
        }
        printf("\n");
    }
    printf("%-28s", "all (the GPU before the fix)");
    for (f = 0; f < 3; f++) printf(" %-22.2e", run(&fxs[f], R_ALL, &where));
    printf("\n");
    return 0;
}
