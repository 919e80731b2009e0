/* train_ref.h - the training references of the test fixtures (tools/make_train_refs.py), read the same way by
   tests/test_train.c (CPU), tests/test_cuda.c (GPU) and tools/train_precision.c. Include after te_llama.h (with its
   implementation) and check.h. */
#ifndef TE_LLAMA_TRAIN_REF_H
#define TE_LLAMA_TRAIN_REF_H
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ref_train.json of a fixture: the batch, HF's float64 loss, the AdamW settings, torch's losses. */
typedef struct train_ref {
    int B, T, steps;
    int32_t tokens[64], labels[64];
    double loss, losses[32];
    te_llama_train_options adamw;
} train_ref;

static double json_num(const te_llama_json *j, size_t obj, const char *key) {
    double v = NAN;
    size_t t = te_llama_json_get(j, obj, key);
    if (t) te_llama_json_double(j, t, &v);
    return v;
}

/* A (B, T) array of ints, flattened. */
static int json_matrix(const te_llama_json *j, size_t arr, int32_t *out, int cap) {
    size_t r, e, k, x;
    int n = 0;
    if (!arr) return 0;
    for (r = 0, e = arr + 1; r < j->tokens[arr].size; r++, e = j->tokens[e].next)
        for (k = 0, x = e + 1; k < j->tokens[e].size && n < cap; k++, x = j->tokens[x].next) {
            int64_t v = 0;
            te_llama_json_int64(j, x, &v);
            out[n++] = (int32_t)v;
        }
    return n;
}

/* 1 when dir/ref_train.json was read and its batch and step count fit. */
static int load_train_ref(const char *dir, train_ref *ref) {
    char path[2048];
    size_t len, a, ls, e;
    char *text;
    te_llama_json j;
    unsigned k;
    memset(ref, 0, sizeof *ref);
    snprintf(path, sizeof path, "%s/ref_train.json", dir);
    if (!(text = check_read_file(path, &len)) || te_llama_json_parse(text, len, NULL, &j)) { free(text); return 0; }
    ref->B = (int)json_num(&j, 0, "B");
    ref->T = (int)json_num(&j, 0, "T");
    ref->loss = json_num(&j, 0, "loss");
    json_matrix(&j, te_llama_json_get(&j, 0, "tokens"), ref->tokens, 64);
    json_matrix(&j, te_llama_json_get(&j, 0, "labels"), ref->labels, 64);
    a = te_llama_json_get(&j, 0, "adamw");
    ref->adamw.lr = (float)json_num(&j, a, "lr");
    ref->adamw.beta1 = (float)json_num(&j, a, "beta1");
    ref->adamw.beta2 = (float)json_num(&j, a, "beta2");
    ref->adamw.eps = (float)json_num(&j, a, "eps");
    ref->adamw.weight_decay = (float)json_num(&j, a, "weight_decay");
    ref->adamw.clip_norm = (float)json_num(&j, a, "clip_norm");
    ref->adamw.warmup_steps = (int)json_num(&j, a, "warmup_steps");
    ref->adamw.total_steps = (int)json_num(&j, a, "total_steps");
    ref->adamw.min_lr_ratio = (float)json_num(&j, a, "min_lr_ratio");
    ref->steps = (int)json_num(&j, a, "steps");
    ls = te_llama_json_get(&j, a, "losses");
    for (k = 0, e = ls + 1; ls && k < j.tokens[ls].size && k < 32; k++, e = j.tokens[e].next) te_llama_json_double(&j, e, &ref->losses[k]);
    te_llama_json_free(&j);
    free(text);
    return ref->B * ref->T > 0 && ref->B * ref->T <= 64 && ref->steps > 0 && ref->steps < 32;
}

/* A float32 tensor of a safetensors file, malloc'd; *rows, *cols its shape (cols 1 for 1-D). */
static float *read_tensor(const char *path, const char *name, int64_t *rows, int64_t *cols) {
    te_llama_safetensors st;
    const te_llama_st_tensor *t;
    float *out = NULL;
    FILE *f;
    if (te_llama_safetensors_open(path, NULL, &st)) return NULL;
    t = te_llama_safetensors_find(&st, name);
    if (t && t->dtype == TE_LLAMA_F32 && (f = fopen(path, "rb"))) {
        out = (float *)malloc((size_t)t->nbytes);
        *rows = t->shape[0];
        *cols = t->ndim == 2 ? t->shape[1] : 1;
        if (fseek(f, (long)(st.data_start + t->offset), SEEK_SET) || fread(out, 1, (size_t)t->nbytes, f) != (size_t)t->nbytes) { free(out); out = NULL; }
        fclose(f);
    }
    te_llama_safetensors_free(&st);
    return out;
}

enum { REF_GRAD_OK = 0, REF_GRAD_MISSING, REF_GRAD_SHAPE };
/* Relative L2 error (norm of the difference over the reference's) in *err of g, the gradient of parameter p in its
   own layout, against HF source tensor src of p in the reference file at path, which keeps the even rows of each
   matrix (rows 0, 2, ...) and 1-D gradients whole. REF_GRAD_MISSING: no such tensor; REF_GRAD_SHAPE: its shape
   does not fit (*err is then left alone). */
static int ref_grad_error(const char *path, const te_llama_param *p, int src, const float *g, double *err) {
    const int64_t cols = p->ndim == 2 ? p->shape[1] : 1;
    int64_t rows = 0, rcols = 0, r, c;
    float *want = read_tensor(path, p->sources[src].name, &rows, &rcols);
    double d2 = 0, w2 = 0;
    if (!want) return REF_GRAD_MISSING;
    if (rcols != cols || rows != (p->ndim == 2 ? (p->sources[src].n_rows + 1) / 2 : p->shape[0])) {
        free(want);
        return REF_GRAD_SHAPE;
    }
    for (r = 0; r < rows; r++)
        for (c = 0; c < cols; c++) {
            int64_t row = p->ndim == 2 ? p->sources[src].row_begin + 2 * r : 0, col = p->ndim == 2 ? c : r;
            double got = g[row * cols + col], w = want[r * cols + c];
            d2 += (got - w) * (got - w);
            w2 += w * w;
        }
    free(want);
    *err = sqrt(d2) / (sqrt(w2) > 0 ? sqrt(w2) : 1);
    if (!(*err == *err)) *err = INFINITY;
    return REF_GRAD_OK;
}
#endif
