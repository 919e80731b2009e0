/* test_model.c - JSON, safetensors, config, decoder factory, load/save, CPU forward, sampling.
   Build: cc -O2 -std=c99 -Wall -Wextra -I. tests/test_model.c -o build/test_model -lm -lpthread
   Run from the repository root: ./build/test_model  (TE_LLAMA_SHARED: the shared data, default ../shared) */
#define TE_LLAMA_IMPLEMENTATION
#define TE_LLAMA_TESTING
#include "te_llama.h"

#include <pthread.h>
#include <time.h>

#include "check.h"

static const char *fixtures = "tests/fixtures";
static char tmp_root[1024];

/* ------------------------------------------------------------------------------------------------- helpers */

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}


static void write_all(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) { perror(path); exit(2); }
    if (n) fwrite(data, 1, n, f);
    fclose(f);
}

static void write_text(const char *path, const char *text) { write_all(path, text, strlen(text)); }

/* A fresh empty directory under the test's temporary root. */
static const char *fresh_dir(const char *name) {
    static char path[2048];
    char cmd[4096];
    snprintf(path, sizeof path, "%s/%s", tmp_root, name);
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", path, path);
    if (system(cmd) != 0) exit(2);
    return path;
}

static void copy_dir(const char *src, const char *dst) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s' && cp -p '%s'/*.json '%s'/*.safetensors '%s'/", dst, dst, src, src, dst);
    if (system(cmd) != 0) exit(2);
}

/* A safetensors file from raw header text and data bytes. */
static void write_raw_st(const char *path, const char *header, const void *data, size_t data_len) {
    size_t h = strlen(header);
    unsigned char *buf = (unsigned char *)malloc(8 + h + data_len + 1);
    int k;
    for (k = 0; k < 8; k++) buf[k] = (unsigned char)((uint64_t)h >> (8 * k));
    memcpy(buf + 8, header, h);
    if (data_len) memcpy(buf + 8 + h, data, data_len);
    write_all(path, buf, 8 + h + data_len);
    free(buf);
}

static te_llama_result st_parse_raw(const char *header, size_t data_len, te_llama_safetensors *st) {
    char path[2048];
    unsigned char *zeros = (unsigned char *)calloc(1, data_len + 1);
    te_llama_result r;
    snprintf(path, sizeof path, "%s/raw.safetensors", tmp_root);
    write_raw_st(path, header, zeros, data_len);
    free(zeros);
    r = te_llama_safetensors_open(path, NULL, st);
    return r;
}

/* Reference data of a fixture (reference.json and the logits files). */
typedef struct reference {
    int prompt[64], n_prompt, greedy[64], n_greedy, vocab;
    float *logits; /* (n_prompt, vocab) */
} reference;

static int json_ints(const te_llama_json *j, size_t arr, int *out, int cap) {
    size_t k, e;
    int n = 0;
    for (k = 0, e = arr + 1; k < j->tokens[arr].size && n < cap; k++, e = j->tokens[e].next) {
        int64_t v;
        te_llama_json_int64(j, e, &v);
        out[n++] = (int)v;
    }
    return n;
}

static float *read_floats(const char *path, size_t count) {
    size_t len;
    char *buf = check_read_file(path, &len);
    if (!buf || len != count * 4) { free(buf); return NULL; }
    return (float *)buf;
}

static int load_reference(const char *dir, reference *ref) {
    char path[2048];
    size_t len;
    char *text;
    te_llama_json j;
    memset(ref, 0, sizeof *ref);
    snprintf(path, sizeof path, "%s/reference.json", dir);
    if (!(text = check_read_file(path, &len)) || te_llama_json_parse(text, len, NULL, &j)) { free(text); return 0; }
    ref->n_prompt = json_ints(&j, te_llama_json_get(&j, 0, "prompt_ids"), ref->prompt, 64);
    ref->n_greedy = json_ints(&j, te_llama_json_get(&j, 0, "greedy_ids"), ref->greedy, 64);
    {
        int64_t v;
        te_llama_json_int64(&j, te_llama_json_get(&j, 0, "vocab"), &v);
        ref->vocab = (int)v;
    }
    te_llama_json_free(&j);
    free(text);
    snprintf(path, sizeof path, "%s/ref_logits.f32", dir);
    ref->logits = read_floats(path, (size_t)ref->n_prompt * ref->vocab);
    return ref->logits != NULL;
}

/* max |a - b| / max |b| */
static double rel_max_err(const float *a, const float *b, size_t n) {
    double d = 0, m = 0;
    size_t i;
    for (i = 0; i < n; i++) {
        double e = fabs((double)a[i] - b[i]);
        if (e > d || e != e) d = e != e ? INFINITY : e;
        if (fabs(b[i]) > m) m = fabs(b[i]);
    }
    return m > 0 ? d / m : d;
}

/* Logits for every prompt position, one forward over the whole prompt. */
static te_llama_result prompt_logits(te_llama_model *m, const int *prompt, int n, float *logits) {
    te_llama_kv_cache *cache;
    te_llama_batch b;
    int32_t tokens[64], pos[64];
    int i;
    te_llama_result r = te_llama_kv_cache_create(m, 1, n, &cache);
    if (r) return r;
    for (i = 0; i < n; i++) { tokens[i] = prompt[i]; pos[i] = i; }
    memset(&b, 0, sizeof b);
    b.n_tokens = n;
    b.tokens = tokens;
    b.pos = pos;
    r = te_llama_forward(m, cache, &b, logits);
    te_llama_kv_cache_free(cache);
    return r;
}

static te_llama_result load_with(const char *dir, te_llama_decoder_factory f, te_llama_model **m) {
    te_llama_options o;
    memset(&o, 0, sizeof o);
    o.decoder = f;
    return te_llama_load(dir, &o, m);
}

/* Every tensor of the checkpoint in ref_dir is in out_dir with the same dtype, shape and bytes. */
static int same_checkpoint(const char *ref_dir, const char *out_dir) {
    const char *dirs[2];
    char names[2][64][128];
    int n_files[2], d, f, ok = 1, compared = 0;
    dirs[0] = ref_dir;
    dirs[1] = out_dir;
    for (d = 0; d < 2; d++) { /* list the shard files of each directory */
        char cmd[2048];
        FILE *p;
        snprintf(cmd, sizeof cmd, "ls '%s' | grep '\\.safetensors$' | grep -v '^ref_'", dirs[d]);
        p = popen(cmd, "r");
        n_files[d] = 0;
        while (p && n_files[d] < 64 && fgets(names[d][n_files[d]], 128, p)) {
            names[d][n_files[d]][strcspn(names[d][n_files[d]], "\n")] = 0;
            n_files[d]++;
        }
        if (p) pclose(p);
    }
    for (f = 0; f < n_files[0]; f++) {
        char path[2048];
        te_llama_safetensors a;
        size_t t;
        snprintf(path, sizeof path, "%s/%s", ref_dir, names[0][f]);
        if (te_llama_safetensors_open(path, NULL, &a)) return 0;
        for (t = 0; t < a.n_tensors; t++) {
            const te_llama_st_tensor *x = &a.tensors[t];
            int g, found = 0;
            for (g = 0; g < n_files[1] && !found; g++) {
                char path2[2048];
                te_llama_safetensors b;
                const te_llama_st_tensor *y;
                snprintf(path2, sizeof path2, "%s/%s", out_dir, names[1][g]);
                if (te_llama_safetensors_open(path2, NULL, &b)) return 0;
                if ((y = te_llama_safetensors_find(&b, x->name)) != NULL) {
                    char *bx = (char *)malloc(x->nbytes + 1), *by = (char *)malloc(y->nbytes + 1);
                    FILE *fx = fopen(path, "rb"), *fy = fopen(path2, "rb");
                    found = 1;
                    fseek(fx, (long)(a.data_start + x->offset), SEEK_SET);
                    fseek(fy, (long)(b.data_start + y->offset), SEEK_SET);
                    if (x->dtype != y->dtype || x->ndim != y->ndim || x->nbytes != y->nbytes ||
                        fread(bx, 1, x->nbytes, fx) != x->nbytes || fread(by, 1, y->nbytes, fy) != y->nbytes ||
                        memcmp(bx, by, x->nbytes) != 0 || memcmp(x->shape, y->shape, sizeof x->shape) != 0) {
                        fprintf(stderr, "  tensor %s differs\n", x->name);
                        ok = 0;
                    }
                    compared++;
                    fclose(fx); fclose(fy); free(bx); free(by);
                }
                te_llama_safetensors_free(&b);
            }
            if (!found) { fprintf(stderr, "  tensor %s missing from %s\n", x->name, out_dir); ok = 0; }
        }
        te_llama_safetensors_free(&a);
    }
    return ok && compared > 0;
}

/* ---------------------------------------------------------------------------------------------------- JSON */

static void test_json(void) {
    const char *good = "{\"a\": 1, \"b\": [true, false, null, -2.5e3], \"c\": {\"d\": \"x\\u00e9\\ud83d\\ude00\\n\"}}";
    te_llama_json j;
    char buf[64];
    size_t len, c;
    int64_t v;
    double dv;
    CHECK_RESULT(te_llama_json_parse(good, strlen(good), NULL, &j), TE_LLAMA_OK);
    CHECK(j.tokens[0].type == TE_LLAMA_JSON_OBJECT && j.tokens[0].size == 3, "root");
    CHECK(te_llama_json_int64(&j, te_llama_json_get(&j, 0, "a"), &v) == TE_LLAMA_OK && v == 1, "a = 1");
    CHECK(j.tokens[te_llama_json_get(&j, 0, "b")].size == 4, "b has 4 elements");
    CHECK(te_llama_json_double(&j, te_llama_json_get(&j, 0, "b") + 4, &dv) == TE_LLAMA_OK && dv == -2500.0, "-2.5e3");
    c = te_llama_json_get(&j, 0, "c");
    CHECK_RESULT(te_llama_json_string(&j, te_llama_json_get(&j, c, "d"), buf, sizeof buf, &len), TE_LLAMA_OK);
    CHECK(len == 8 && memcmp(buf, "x\xc3\xa9\xf0\x9f\x98\x80\n", 8) == 0, "escapes decode to UTF-8");
    CHECK(te_llama_json_get(&j, 0, "zz") == 0, "absent key");
    { /* a long escaped string compares by its decoded bytes */
        char text[2400], want[600];
        te_llama_json k;
        int i;
        strcpy(text, "[\"");
        for (i = 0; i < 300; i++) { strcat(text, "\\u0041"); want[i] = 'A'; }
        want[300] = 0;
        strcat(text, "\"]");
        CHECK_RESULT(te_llama_json_parse(text, strlen(text), NULL, &k), TE_LLAMA_OK);
        CHECK(te_llama_json_equals(&k, 1, want), "300 escaped characters equal their decoded string");
        want[299] = 'B';
        CHECK(!te_llama_json_equals(&k, 1, want), "and differ from another");
        te_llama_json_free(&k);
    }
    CHECK(j.tokens[te_llama_json_get(&j, 0, "b")].next == te_llama_json_get(&j, 0, "c") - 1, "next skips the subtree");
    te_llama_json_free(&j);

    {
        static const struct { const char *text; te_llama_result r; } bad[] = {
            {"{\"a\":1,\"a\":2}", TE_LLAMA_ERR_JSON_DUPLICATE_KEY},
            {"{\"a\":1,\"\\u0061\":2}", TE_LLAMA_ERR_JSON_DUPLICATE_KEY},
            {"{\"a\":1,}", TE_LLAMA_ERR_JSON_SYNTAX},
            {"[1 2]", TE_LLAMA_ERR_JSON_SYNTAX},
            {"[1,]", TE_LLAMA_ERR_JSON_SYNTAX},
            {"\"\\ud800\"", TE_LLAMA_ERR_JSON_SYNTAX},
            {"\"\\udc00\"", TE_LLAMA_ERR_JSON_SYNTAX},
            {"\"\\x\"", TE_LLAMA_ERR_JSON_SYNTAX},
            {"01", TE_LLAMA_ERR_JSON_SYNTAX},
            {"1.", TE_LLAMA_ERR_JSON_SYNTAX},
            {"-", TE_LLAMA_ERR_JSON_SYNTAX},
            {"{} x", TE_LLAMA_ERR_JSON_SYNTAX},
            {"", TE_LLAMA_ERR_JSON_SYNTAX},
            {"\"a\tb\"", TE_LLAMA_ERR_JSON_SYNTAX},
            {"\"\xff\"", TE_LLAMA_ERR_JSON_SYNTAX},
            {"\"\xc0\x80\"", TE_LLAMA_ERR_JSON_SYNTAX},
            {"\"\xed\xa0\x80\"", TE_LLAMA_ERR_JSON_SYNTAX},
            {"tru", TE_LLAMA_ERR_JSON_SYNTAX},
            {"{\"a\" 1}", TE_LLAMA_ERR_JSON_SYNTAX},
            {"{1:2}", TE_LLAMA_ERR_JSON_SYNTAX},
            {"\"abc", TE_LLAMA_ERR_JSON_SYNTAX},
        };
        size_t i;
        for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            te_llama_result r = te_llama_json_parse(bad[i].text, strlen(bad[i].text), NULL, &j);
            CHECK(r == bad[i].r, "case %zu (%s): got %s, expected %s", i, bad[i].text, te_llama_result_string(r), te_llama_result_string(bad[i].r));
            CHECK(j.tokens == NULL, "tokens freed on failure");
        }
    }
    { /* nesting limit */
        char deep[400];
        int i;
        for (i = 0; i < 200; i++) { deep[i] = '['; deep[200 + i - 1 + 1] = ']'; }
        CHECK_RESULT(te_llama_json_parse(deep, 400, NULL, &j), TE_LLAMA_ERR_JSON_LIMIT);
        CHECK_RESULT(te_llama_json_parse(deep + 200 - 100, 200, NULL, &j), TE_LLAMA_OK); /* 100 deep is fine */
        te_llama_json_free(&j);
    }
    { /* a large object: the hashed duplicate check */
        char *big = (char *)malloc(40000);
        int i;
        size_t n = 0;
        n += (size_t)sprintf(big + n, "{");
        for (i = 0; i < 2000; i++) n += (size_t)sprintf(big + n, "%s\"k%d\":%d", i ? "," : "", i, i);
        sprintf(big + n, "}");
        CHECK_RESULT(te_llama_json_parse(big, strlen(big), NULL, &j), TE_LLAMA_OK);
        CHECK(te_llama_json_int64(&j, te_llama_json_get(&j, 0, "k1999"), &v) == TE_LLAMA_OK && v == 1999, "k1999");
        te_llama_json_free(&j);
        sprintf(big + n, ",\"k777\":0}");
        CHECK_RESULT(te_llama_json_parse(big, strlen(big), NULL, &j), TE_LLAMA_ERR_JSON_DUPLICATE_KEY);
        sprintf(big + n, ",\"\\u006b777\":0}"); /* the same key spelled with an escape */
        CHECK_RESULT(te_llama_json_parse(big, strlen(big), NULL, &j), TE_LLAMA_ERR_JSON_DUPLICATE_KEY);
        free(big);
    }
    { /* integers */
        const char *t1 = "[9223372036854775807, -9223372036854775808, 9223372036854775808, 1.5, 1e3]";
        CHECK_RESULT(te_llama_json_parse(t1, strlen(t1), NULL, &j), TE_LLAMA_OK);
        CHECK(te_llama_json_int64(&j, 1, &v) == TE_LLAMA_OK && v == INT64_MAX, "INT64_MAX");
        CHECK(te_llama_json_int64(&j, 2, &v) == TE_LLAMA_OK && v == INT64_MIN, "INT64_MIN");
        CHECK_RESULT(te_llama_json_int64(&j, 3, &v), TE_LLAMA_ERR_OUT_OF_RANGE);
        CHECK_RESULT(te_llama_json_int64(&j, 4, &v), TE_LLAMA_ERR_JSON_SCHEMA);
        CHECK_RESULT(te_llama_json_int64(&j, 5, &v), TE_LLAMA_ERR_JSON_SCHEMA);
        te_llama_json_free(&j);
    }
    { /* speed on the real 9 MB Llama 3 tokenizer.json */
        char path[2048];
        const char *shared = getenv("TE_LLAMA_SHARED") ? getenv("TE_LLAMA_SHARED") : "../shared";
        char *text;
        snprintf(path, sizeof path, "%s/data/tokenizers/llama3/tokenizer.json", shared);
        text = check_read_file(path, &len);
        CHECK(text != NULL, "%s readable", path);
        if (text) {
            double best = 1e9, t0;
            int k;
            for (k = 0; k < 3; k++) {
                t0 = now_ms();
                CHECK_RESULT(te_llama_json_parse(text, len, NULL, &j), TE_LLAMA_OK);
                if (now_ms() - t0 < best) best = now_ms() - t0;
                if (k < 2) te_llama_json_free(&j);
            }
            printf("  json: parsed %.1f MB tokenizer.json (%zu tokens) in %.1f ms\n", len / 1e6, j.n_tokens, best);
#if !defined(__SANITIZE_ADDRESS__)
            /* timed in the optimised build only; about 32 ms on an idle core, the bound leaves room for a busy machine */
            CHECK(best < 250.0, "parse took %.1f ms", best);
#endif
            te_llama_json_free(&j);
            free(text);
        }
    }
}

/* ------------------------------------------------------------------------------------------------ dtypes */

static void test_dtypes(void) {
    float in[6] = {1.0f, -2.5f, 65504.0f, 5.9604645e-08f, 65520.0f, 0.1f}, back[6];
    uint16_t h[6];
    uint8_t q[4];
    float fq[4] = {1.0f, 448.0f, 1000.0f, -0.0625f};
    CHECK_RESULT(te_llama_convert(h, TE_LLAMA_F16, in, TE_LLAMA_F32, 6), TE_LLAMA_OK);
    CHECK(h[0] == 0x3c00 && h[1] == 0xc100 && h[2] == 0x7bff && h[3] == 0x0001 && h[4] == 0x7c00, "f16 encodings %04x %04x %04x %04x %04x", h[0], h[1], h[2], h[3], h[4]);
    te_llama_convert(back, TE_LLAMA_F32, h, TE_LLAMA_F16, 6);
    CHECK(back[0] == 1.0f && back[3] == in[3] && isinf(back[4]), "f16 decodes");
    CHECK_RESULT(te_llama_convert(h, TE_LLAMA_BF16, in, TE_LLAMA_F32, 6), TE_LLAMA_OK);
    CHECK(h[0] == 0x3f80 && h[1] == 0xc020 && h[5] == 0x3dcd, "bf16 encodings (0.1 rounds to 0x3dcd): %04x", h[5]);
    CHECK_RESULT(te_llama_convert(q, TE_LLAMA_F8_E4M3, fq, TE_LLAMA_F32, 4), TE_LLAMA_OK);
    CHECK(q[0] == 0x38 && q[1] == 0x7e && q[2] == 0x7e && q[3] == 0x98, "e4m3 encodings %02x %02x %02x %02x", q[0], q[1], q[2], q[3]);
    te_llama_convert(back, TE_LLAMA_F32, q, TE_LLAMA_F8_E4M3, 4);
    CHECK(back[0] == 1.0f && back[1] == 448.0f && back[3] == -0.0625f, "e4m3 decodes");
    CHECK_RESULT(te_llama_convert(q, TE_LLAMA_I32, fq, TE_LLAMA_F32, 1), TE_LLAMA_ERR_UNSUPPORTED);
}

/* ----------------------------------------------------------------------------------------------- safetensors */

static void test_safetensors(void) {
    float a[6] = {1, 2, 3, 4, 5, 6};
    uint16_t b[3] = {1, 2, 3};
    int64_t sa[2] = {2, 3}, sb[1] = {3};
    te_llama_st_write_tensor t[2];
    te_llama_safetensors st;
    char path[2048];
    const te_llama_st_tensor *x;
    memset(t, 0, sizeof t);
    t[0].name = "w\"eird\\name"; t[0].dtype = TE_LLAMA_F32; t[0].ndim = 2; t[0].shape = sa; t[0].data = a;
    t[1].name = "b"; t[1].dtype = TE_LLAMA_BF16; t[1].ndim = 1; t[1].shape = sb; t[1].data = b;
    snprintf(path, sizeof path, "%s/rt.safetensors", tmp_root);
    CHECK_RESULT(te_llama_safetensors_write(path, t, 2), TE_LLAMA_OK);
    CHECK_RESULT(te_llama_safetensors_open(path, NULL, &st), TE_LLAMA_OK);
    CHECK(st.n_tensors == 2 && st.data_start % 8 == 0 && st.data_len == 30, "2 tensors, header padded to 8, 30 data bytes");
    x = te_llama_safetensors_find(&st, "w\"eird\\name");
    CHECK(x && x->dtype == TE_LLAMA_F32 && x->ndim == 2 && x->shape[1] == 3 && x->nbytes == 24 && x->offset == 0, "escaped name round trip");
    x = te_llama_safetensors_find(&st, "b");
    CHECK(x && x->dtype == TE_LLAMA_BF16 && x->offset == 24, "bf16 tensor");
    te_llama_safetensors_free(&st);

    {
        static const struct { const char *header; size_t data; te_llama_result r; } bad[] = {
            {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}", 20, TE_LLAMA_ERR_ST_OFFSETS},
            {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, TE_LLAMA_ERR_ST_OFFSETS},
            {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4, TE_LLAMA_ERR_ST_OFFSETS},
            {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 12, TE_LLAMA_ERR_ST_OFFSETS},
            {"{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, TE_LLAMA_ERR_ST_SIZE},
            {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,16],\"data_offsets\":[0,8]}}", 8, TE_LLAMA_ERR_ST_SIZE},
            {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, TE_LLAMA_ERR_ST_OFFSETS},
            {"{\"a\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, TE_LLAMA_ERR_ST_DTYPE},
            {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, TE_LLAMA_ERR_ST_HEADER},
            {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4, TE_LLAMA_ERR_ST_HEADER},
            {"{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, TE_LLAMA_ERR_ST_HEADER},
            {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, TE_LLAMA_ERR_ST_HEADER},
            {"[1]", 0, TE_LLAMA_ERR_ST_HEADER},
            {"{\"__metadata__\":{\"format\":1}}", 0, TE_LLAMA_ERR_ST_HEADER},
            {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, TE_LLAMA_ERR_JSON_DUPLICATE_KEY},
            {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", 8, TE_LLAMA_ERR_JSON_SYNTAX},
        };
        size_t i;
        for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            te_llama_result r = st_parse_raw(bad[i].header, bad[i].data, &st);
            CHECK(r == bad[i].r, "bad header %zu: got %s (%s), expected %s", i, te_llama_result_string(r), te_llama_last_error(), te_llama_result_string(bad[i].r));
            if (!r) te_llama_safetensors_free(&st);
        }
        /* listed out of order but tiling exactly: valid, as the reference implementation sorts first */
        CHECK_RESULT(st_parse_raw("{\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]},\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 12, &st), TE_LLAMA_OK);
        CHECK(st.n_tensors == 2 && strcmp(st.tensors[0].name, "a") == 0, "sorted by offset");
        te_llama_safetensors_free(&st);
        CHECK_RESULT(st_parse_raw("{\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}", 0, &st), TE_LLAMA_OK);
        te_llama_safetensors_free(&st);
    }
    { /* header length fields */
        unsigned char raw[16];
        memset(raw, 0, sizeof raw);
        raw[0] = 0x10; raw[3] = 0x10; /* 268 MB */
        snprintf(path, sizeof path, "%s/big.safetensors", tmp_root);
        write_all(path, raw, 16);
        CHECK_RESULT(te_llama_safetensors_open(path, NULL, &st), TE_LLAMA_ERR_ST_HEADER);
        memset(raw, 0, sizeof raw);
        raw[0] = 100; /* past the end of a 16-byte file */
        write_all(path, raw, 16);
        CHECK_RESULT(te_llama_safetensors_open(path, NULL, &st), TE_LLAMA_ERR_ST_HEADER);
        write_all(path, raw, 5);
        CHECK_RESULT(te_llama_safetensors_open(path, NULL, &st), TE_LLAMA_ERR_ST_HEADER);
    }
}

/* ---------------------------------------------------------------------------------------------------- config */

static const char *config_4x =
    "{\"model_type\":\"llama\",\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":96,"
    "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":2,\"vocab_size\":300,"
    "\"rope_theta\":500000.0,\"rope_scaling\":{\"factor\":32.0,\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,"
    "\"original_max_position_embeddings\":8192,\"rope_type\":\"llama3\"},\"torch_dtype\":\"bfloat16\","
    "\"bos_token_id\":128000,\"eos_token_id\":[128001,128008,128009],\"tie_word_embeddings\":true,"
    "\"rms_norm_eps\":1e-05,\"max_position_embeddings\":131072,\"hidden_act\":\"silu\",\"pretraining_tp\":1}";

static void test_config(void) {
    te_llama_config c, d;
    char buf[4096];
    size_t len;
    char text[2048];
    CHECK_RESULT(te_llama_config_parse(config_4x, strlen(config_4x), &c), TE_LLAMA_OK);
    CHECK(c.hidden_size == 64 && c.head_dim == 16 && c.num_key_value_heads == 2 && c.vocab_size == 300, "sizes");
    CHECK(c.rope_type == TE_LLAMA_ROPE_LLAMA3 && c.rope_factor == 32.0 && c.rope_original_max_position_embeddings == 8192 && c.rope_theta == 500000.0, "llama3 rope (4.x)");
    CHECK(c.dtype == TE_LLAMA_BF16 && c.tie_word_embeddings && c.bos_token_id == 128000, "dtype, tie, bos");
    CHECK(c.n_eos_token_ids == 3 && c.eos_token_ids[2] == 128009, "eos list");
    CHECK_RESULT(te_llama_config_write(&c, buf, sizeof buf, &len), TE_LLAMA_OK);
    CHECK_RESULT(te_llama_config_parse(buf, len, &d), TE_LLAMA_OK);
    CHECK(memcmp(&c, &d, sizeof c) == 0, "write then parse gives the same config");
    {
        const char *v5 = "{\"model_type\":\"llama\",\"hidden_size\":64,\"intermediate_size\":96,\"num_hidden_layers\":2,"
                         "\"num_attention_heads\":4,\"vocab_size\":300,\"head_dim\":32,\"dtype\":\"float16\","
                         "\"rope_parameters\":{\"rope_type\":\"linear\",\"factor\":2.0,\"rope_theta\":20000.0},\"eos_token_id\":2}";
        CHECK_RESULT(te_llama_config_parse(v5, strlen(v5), &c), TE_LLAMA_OK);
        CHECK(c.rope_type == TE_LLAMA_ROPE_LINEAR && c.rope_factor == 2.0 && c.rope_theta == 20000.0 && c.dtype == TE_LLAMA_F16, "5.x rope_parameters and dtype");
        CHECK(c.head_dim == 32 && c.num_key_value_heads == 4 && c.n_eos_token_ids == 1, "explicit head_dim, kv heads default to heads");
    }
    {
        static const struct { const char *from, *to; te_llama_result r; } bad[] = {
            {"\"model_type\":\"llama\"", "\"model_type\":\"mistral\"", TE_LLAMA_ERR_UNSUPPORTED},
            {"\"num_hidden_layers\":2", "\"num_hidden_layers\":0", TE_LLAMA_ERR_CONFIG},
            {"\"num_attention_heads\":4", "\"num_attention_heads\":5", TE_LLAMA_ERR_CONFIG},
            {"\"num_key_value_heads\":2", "\"num_key_value_heads\":3", TE_LLAMA_ERR_CONFIG},
            {"\"vocab_size\":300", "\"vocab_size\":1099511627776", TE_LLAMA_ERR_CONFIG},
            {"\"vocab_size\":300", "\"vocab_size\":99999999999999999999999", TE_LLAMA_ERR_CONFIG},
            {"\"vocab_size\":300", "\"vocab_size\":\"300\"", TE_LLAMA_ERR_CONFIG},
            {"\"hidden_size\":64", "\"hidden_size\":64.5", TE_LLAMA_ERR_CONFIG},
            {"\"hidden_size\":64,", "", TE_LLAMA_ERR_CONFIG},
            {"\"hidden_act\":\"silu\"", "\"hidden_act\":\"gelu\"", TE_LLAMA_ERR_UNSUPPORTED},
            {"\"rope_type\":\"llama3\"", "\"rope_type\":\"yarn\"", TE_LLAMA_ERR_UNSUPPORTED},
            {"\"torch_dtype\":\"bfloat16\"", "\"torch_dtype\":\"int8\"", TE_LLAMA_ERR_UNSUPPORTED},
            {"\"pretraining_tp\":1", "\"attention_bias\":true", TE_LLAMA_ERR_UNSUPPORTED},
            {"\"pretraining_tp\":1", "\"mlp_bias\":true", TE_LLAMA_ERR_UNSUPPORTED},
            {"\"rms_norm_eps\":1e-05", "\"rms_norm_eps\":-1", TE_LLAMA_ERR_CONFIG},
            {"\"pretraining_tp\":1", "\"pretraining_tp\":1,\"pretraining_tp\":1", TE_LLAMA_ERR_JSON_DUPLICATE_KEY},
            {"\"eos_token_id\":[128001,128008,128009]", "\"eos_token_id\":[1,2,3,4,5,6,7,8,9]", TE_LLAMA_ERR_CONFIG},
        };
        size_t i;
        for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            const char *at = strstr(config_4x, bad[i].from);
            te_llama_result r;
            size_t pre = (size_t)(at - config_4x);
            snprintf(text, sizeof text, "%.*s%s%s", (int)pre, config_4x, bad[i].to, at + strlen(bad[i].from));
            r = te_llama_config_parse(text, strlen(text), &c);
            CHECK(r == bad[i].r, "config case %zu (%s): got %s (%s), expected %s", i, bad[i].to, te_llama_result_string(r), te_llama_last_error(), te_llama_result_string(bad[i].r));
        }
    }
}

/* ------------------------------------------------------------------------------------------ decoder factory */

static int wrapped_builds, wrapped_forwards;
static te_llama_result (*te_forward_of_wrapped)(te_llama_layer *, const te_llama_step *, float *);

static te_llama_result wrapped_forward(te_llama_layer *self, const te_llama_step *step, float *x) {
    wrapped_forwards++;
    return te_forward_of_wrapped(self, step, x);
}

/* A user-written factory: the TE layer, with its forward wrapped to count calls. */
static te_llama_result wrapped_te_decoder(const te_llama_config *c, int index, const te_llama_options *o, te_llama_layer **out) {
    te_llama_result r = te_llama_te_decoder(c, index, o, out);
    if (r) return r;
    wrapped_builds++;
    te_forward_of_wrapped = (*out)->forward;
    (*out)->forward = wrapped_forward;
    (*out)->kind = "wrapped-te";
    return TE_LLAMA_OK;
}

static te_llama_result failing_body(void *user) {
    *(te_llama_decoder_factory *)user = te_llama_current_decoder();
    return TE_LLAMA_ERR_IO; /* leave the scope by the error path */
}

static te_llama_config tiny_config(void) {
    te_llama_config c;
    te_llama_config_parse(config_4x, strlen(config_4x), &c);
    c.vocab_size = 64;
    return c;
}

typedef struct thread_probe {
    te_llama_decoder_factory set, seen_before, seen_after;
    pthread_barrier_t *barrier;
    const char *kind;
} thread_probe;

static void *thread_body(void *arg) {
    thread_probe *p = (thread_probe *)arg;
    te_llama_config c = tiny_config();
    te_llama_model *m = NULL;
    te_llama_decoder_factory prev;
    p->seen_before = te_llama_current_decoder();
    prev = te_llama_replace_decoder(p->set);
    pthread_barrier_wait(p->barrier); /* both threads have set their override */
    if (te_llama_create(&c, NULL, &m) == TE_LLAMA_OK) p->kind = m->layers[0]->kind;
    te_llama_free(m);
    pthread_barrier_wait(p->barrier);
    te_llama_replace_decoder(prev);
    p->seen_after = te_llama_current_decoder();
    return NULL;
}

static void test_factory(void) {
    te_llama_config c = tiny_config();
    te_llama_model *m;
    te_llama_decoder_factory seen = NULL, prev;
    CHECK(te_llama_current_decoder() == te_llama_vanilla_decoder, "the process default is vanilla");
    CHECK_RESULT(te_llama_create(&c, NULL, &m), TE_LLAMA_OK);
    CHECK(strcmp(m->layers[0]->kind, "vanilla") == 0, "LlamaForCausalLM(config) builds vanilla layers");
    CHECK(te_llama_num_parameters(m) == 1 + 2 * 9 + 1, "vanilla parameter count (tied)");
    te_llama_free(m);
    CHECK_RESULT(te_llama_for_causal_lm(&c, NULL, &m), TE_LLAMA_OK);
    CHECK(strcmp(m->layers[1]->kind, "te") == 0, "TELlamaForCausalLM(config) builds TE layers");
    CHECK(te_llama_current_decoder() == te_llama_vanilla_decoder, "restored after the scope");
    {
        te_llama_param *p = te_llama_parameter(m, 2);
        te_llama_param *e = te_llama_parameter(m, 0);
        CHECK(strcmp(p->name, "model.layers.0.self_attention.layernorm_qkv.query_weight") == 0 && p->ndim == 2 && p->shape[0] == 64, "TE parameter names: %s", p->name);
        CHECK(p->n_sources == 1 && strcmp(p->sources[0].name, "model.layers.0.self_attn.q_proj.weight") == 0, "HF name of query_weight");
        CHECK(te_llama_parameter(m, 7)->n_sources == 2 && te_llama_parameter(m, 7)->sources[1].row_begin == 96, "fc1 = gate rows then up rows");
        CHECK(te_llama_parameter(m, 3)->data == (char *)p->data + 64 * 64 * 2, "key_weight follows query_weight in the fused buffer");
        { /* HF's init: norms are one, matrices normal(0, 0.02) */
            double ss = 0;
            size_t i, n = te_llama_param_numel(e);
            for (i = 0; i < n; i++) { float f = te_llama__bf16_to_f32(((uint16_t *)e->data)[i]); ss += f * f; }
            CHECK(fabs(sqrt(ss / n) - 0.02) < 0.002, "embedding std %.4f", sqrt(ss / n));
            CHECK(te_llama__bf16_to_f32(((uint16_t *)te_llama_parameter(m, 1)->data)[5]) == 1.0f, "norm weight is 1");
        }
    }
    te_llama_free(m);
    prev = te_llama_replace_decoder(te_llama_te_decoder);
    CHECK(prev == NULL, "no override before");
    CHECK_RESULT(te_llama_create(&c, NULL, &m), TE_LLAMA_OK);
    CHECK(strcmp(m->layers[0]->kind, "te") == 0, "the override decides what create builds");
    te_llama_free(m);
    CHECK(te_llama_replace_decoder(prev) == te_llama_te_decoder, "replace returns the previous override");
    CHECK_RESULT(te_llama_with_decoder(wrapped_te_decoder, failing_body, &seen), TE_LLAMA_ERR_IO);
    CHECK(seen == wrapped_te_decoder, "inside the scope the factory is installed");
    CHECK(te_llama_current_decoder() == te_llama_vanilla_decoder, "an error exit restores the previous factory");
    { /* nested scopes restore in order */
        te_llama_decoder_factory outer = te_llama_replace_decoder(te_llama_te_decoder);
        CHECK_RESULT(te_llama_with_decoder(wrapped_te_decoder, failing_body, &seen), TE_LLAMA_ERR_IO);
        CHECK(te_llama_current_decoder() == te_llama_te_decoder, "the inner scope restores the outer override");
        te_llama_replace_decoder(outer);
    }
    { /* per thread: two threads with different overrides at the same time */
        pthread_t t[2];
        pthread_barrier_t barrier;
        thread_probe p[2];
        memset(p, 0, sizeof p);
        pthread_barrier_init(&barrier, NULL, 2);
        p[0].set = te_llama_te_decoder;
        p[1].set = wrapped_te_decoder;
        p[0].barrier = p[1].barrier = &barrier;
        pthread_create(&t[0], NULL, thread_body, &p[0]);
        pthread_create(&t[1], NULL, thread_body, &p[1]);
        pthread_join(t[0], NULL);
        pthread_join(t[1], NULL);
        pthread_barrier_destroy(&barrier);
        CHECK(p[0].kind && strcmp(p[0].kind, "te") == 0 && p[1].kind && strcmp(p[1].kind, "wrapped-te") == 0, "each thread builds with its own override");
        CHECK(p[0].seen_before == te_llama_vanilla_decoder && p[1].seen_before == te_llama_vanilla_decoder, "a new thread starts at the default");
        CHECK(p[0].seen_after == te_llama_vanilla_decoder && p[1].seen_after == te_llama_vanilla_decoder, "each thread restored");
        CHECK(te_llama_current_decoder() == te_llama_vanilla_decoder, "main thread untouched");
    }
}

/* ---------------------------------------------------------------------------------------- load and save */

static void test_round_trip(const char *name) {
    char src[2048];
    int k;
    snprintf(src, sizeof src, "%s/%s", fixtures, name);
    for (k = 0; k < 2; k++) {
        te_llama_model *m = NULL, *m2 = NULL;
        te_llama_save_options so;
        char out_name[256];
        const char *out;
        snprintf(out_name, sizeof out_name, "saved_%s_%s", name, k ? "vanilla" : "te");
        out = fresh_dir(out_name);
        CHECK_RESULT(load_with(src, k ? te_llama_vanilla_decoder : te_llama_te_decoder, &m), TE_LLAMA_OK);
        if (!m) continue;
        memset(&so, 0, sizeof so);
        CHECK_RESULT(te_llama_save(m, out, &so), TE_LLAMA_OK);
        CHECK(same_checkpoint(src, out), "%s: load then save (%s layers) reproduces every tensor byte for byte", name, k ? "vanilla" : "te");
        CHECK_RESULT(load_with(out, NULL, &m2), TE_LLAMA_OK);
        if (m2) {
            CHECK(memcmp(&m2->config, &m->config, sizeof m->config) == 0, "%s: config.json round trip", name);
            CHECK(m2->n_eos_token_ids == m->n_eos_token_ids, "%s: eos ids round trip", name);
        }
        te_llama_free(m2);
        { /* sharded save, small shards */
            const char *out2;
            snprintf(out_name, sizeof out_name, "sharded_%s_%d", name, k);
            out2 = fresh_dir(out_name);
            so.max_shard_size = 20000;
            CHECK_RESULT(te_llama_save(m, out2, &so), TE_LLAMA_OK);
            CHECK(same_checkpoint(src, out2), "%s: sharded save reproduces every tensor", name);
            m2 = NULL;
            CHECK_RESULT(load_with(out2, NULL, &m2), TE_LLAMA_OK);
            te_llama_free(m2);
            /* saving over it again unsharded removes the old shards */
            so.max_shard_size = 0;
            CHECK_RESULT(te_llama_save(m, out2, &so), TE_LLAMA_OK);
            {
                char probe[2048];
                struct stat sb;
                snprintf(probe, sizeof probe, "%s/model-00001-of-00002.safetensors", out2);
                CHECK(stat(probe, &sb) != 0, "stale shards removed");
                snprintf(probe, sizeof probe, "%s/model.safetensors.index.json", out2);
                CHECK(stat(probe, &sb) != 0, "stale index removed");
            }
        }
        te_llama_free(m);
    }
}

/* An allocator that counts live and peak bytes. */
static size_t live_bytes, peak_bytes;
static void *count_alloc(void *user, size_t n) {
    size_t *p = (size_t *)malloc(n + 16);
    (void)user;
    if (!p) return NULL;
    p[0] = n;
    live_bytes += n;
    if (live_bytes > peak_bytes) peak_bytes = live_bytes;
    return (char *)p + 16;
}
static void count_free(void *user, void *ptr) {
    size_t *p;
    (void)user;
    if (!ptr) return;
    p = (size_t *)((char *)ptr - 16);
    live_bytes -= p[0];
    free(p);
}
static void *count_realloc(void *user, void *ptr, size_t n) {
    void *q = count_alloc(user, n);
    if (q && ptr) {
        size_t old = ((size_t *)((char *)ptr - 16))[0];
        memcpy(q, ptr, old < n ? old : n);
        count_free(user, ptr);
    }
    return q;
}

static void test_peak_memory(void) {
    te_llama_allocator a;
    te_llama_options o;
    te_llama_model *m = NULL;
    char dir[2048], cmd[2048];
    size_t model_bytes, largest = 0;
    FILE *p;
    a.alloc = count_alloc; a.realloc = count_realloc; a.free = count_free; a.user = NULL;
    memset(&o, 0, sizeof o);
    o.allocator = &a;
    o.staging_bytes = 16384;
    snprintf(dir, sizeof dir, "%s/many_shards", fixtures);
    snprintf(cmd, sizeof cmd, "ls -l '%s'/*.safetensors | awk '{print $5}' | sort -n | tail -1", dir);
    if ((p = popen(cmd, "r"))) { if (fscanf(p, "%zu", &largest) != 1) largest = 0; pclose(p); }
    live_bytes = peak_bytes = 0;
    CHECK_RESULT(te_llama_load(dir, &o, &m), TE_LLAMA_OK);
    model_bytes = live_bytes;
    printf("  load: model %zu bytes, peak %zu bytes, so the loader's overhead peaked at %zu bytes (staging %zu, largest shard %zu)\n",
           model_bytes, peak_bytes, peak_bytes - model_bytes, o.staging_bytes, largest);
    CHECK(peak_bytes - model_bytes <= o.staging_bytes + 16384, "loader overhead %zu above staging + 16 KiB", peak_bytes - model_bytes);
    CHECK(peak_bytes - model_bytes < largest, "loader overhead below the largest shard (%zu)", largest);
    te_llama_free(m);
    CHECK(live_bytes == 0, "everything freed: %zu bytes live", live_bytes);
}

static char log_text[8192];
static void capture_log(void *user, te_llama_log_level level, const char *msg) {
    (void)user;
    (void)level;
    if (strlen(log_text) + strlen(msg) + 2 < sizeof log_text) { strcat(log_text, msg); strcat(log_text, "\n"); }
}

/* Rewrite one single-file checkpoint's tensors: drop `drop`, rename, or add an extra tensor. */
static void rewrite_single(const char *src_file, const char *dst_file, const char *drop, const char *extra) {
    te_llama_safetensors st;
    te_llama_st_write_tensor *t;
    char *data;
    size_t len, i, n = 0;
    int64_t extra_shape[1] = {4};
    static float extra_data[4] = {1, 2, 3, 4};
    data = check_read_file(src_file, &len);
    if (te_llama_safetensors_open(src_file, NULL, &st)) exit(2);
    t = (te_llama_st_write_tensor *)calloc(st.n_tensors + 1, sizeof *t);
    for (i = 0; i < st.n_tensors; i++) {
        if (drop && strcmp(st.tensors[i].name, drop) == 0) continue;
        t[n].name = st.tensors[i].name;
        t[n].dtype = st.tensors[i].dtype;
        t[n].ndim = st.tensors[i].ndim;
        t[n].shape = st.tensors[i].shape;
        t[n].data = data + st.data_start + st.tensors[i].offset;
        n++;
    }
    if (extra) { t[n].name = extra; t[n].dtype = TE_LLAMA_F32; t[n].ndim = 1; t[n].shape = extra_shape; t[n].data = extra_data; n++; }
    if (te_llama_safetensors_write(dst_file, t, n)) exit(2);
    te_llama_safetensors_free(&st);
    free(t);
    free(data);
}

static void test_load_errors(void) {
    char src[2048], path[2048], path2[2048];
    const char *dir;
    te_llama_model *m = NULL;
    te_llama_options o;
    char *index;
    size_t len;
    /* a sharded fixture with a broken index */
    snprintf(src, sizeof src, "%s/gqa_tied_llama3", fixtures);
    dir = fresh_dir("bad_index");
    copy_dir(src, dir);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    index = check_read_file(path, &len);
    {
        static const struct { const char *to; te_llama_result r; } cases[] = {
            {"../x.safetensors", TE_LLAMA_ERR_UNSAFE_PATH},
            {"/etc/passwd", TE_LLAMA_ERR_UNSAFE_PATH},
            {"sub/x.safetensors", TE_LLAMA_ERR_UNSAFE_PATH},
            {"..", TE_LLAMA_ERR_UNSAFE_PATH},
            {"model-99999-of-99999.safetensors", TE_LLAMA_ERR_NOT_FOUND},
        };
        size_t i;
        for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            char *at = strstr(index, "model-00002-of-00019.safetensors"), *text = (char *)malloc(len + 256);
            size_t pre = (size_t)(at - index);
            sprintf(text, "%.*s%s%s", (int)pre, index, cases[i].to, at + strlen("model-00002-of-00019.safetensors"));
            write_text(path, text);
            free(text);
            CHECK_RESULT(load_with(dir, NULL, &m), cases[i].r);
            CHECK(m == NULL, "no model on failure");
        }
        write_text(path, "{\"weight_map\": 3}");
        CHECK_RESULT(load_with(dir, NULL, &m), TE_LLAMA_ERR_JSON_SCHEMA);
        write_text(path, "{\"weight_map\": {\"a\": \"x.safetensors\", \"a\": \"y.safetensors\"}}");
        CHECK_RESULT(load_with(dir, NULL, &m), TE_LLAMA_ERR_JSON_DUPLICATE_KEY);
        write_all(path, index, len);
    }
    /* a shard that is a link out of the directory */
    snprintf(path, sizeof path, "%s/model-00002-of-00019.safetensors", dir);
    {
        char real[2048];
        if (!realpath(tmp_root, real)) exit(2);
        snprintf(path2, sizeof path2, "%s/outside.safetensors", real);
    }
    rename(path, path2);
    CHECK(symlink(path2, path) == 0, "symlink");
    CHECK_RESULT(load_with(dir, NULL, &m), TE_LLAMA_ERR_UNSAFE_PATH);
    unlink(path);
    rename(path2, path);
    CHECK_RESULT(load_with(dir, NULL, &m), TE_LLAMA_OK);
    te_llama_free(m);
    m = NULL;
    /* a shard truncated */
    {
        char *shard = check_read_file(path, &len);
        write_all(path, shard, len - 10);
        CHECK_RESULT(load_with(dir, NULL, &m), TE_LLAMA_ERR_ST_OFFSETS);
        write_all(path, shard, len);
        free(shard);
    }
    /* the same tensor in two shards */
    {
        char extra[2048], *text, *at;
        snprintf(extra, sizeof extra, "%s/model-extra.safetensors", dir);
        snprintf(path2, sizeof path2, "%s/model-00001-of-00019.safetensors", dir);
        rewrite_single(path2, extra, NULL, NULL);
        text = (char *)malloc(len + 256);
        at = strstr(index, "\"weight_map\": {");
        CHECK(at != NULL, "index layout");
        if (at) {
            at += strlen("\"weight_map\": {");
            sprintf(text, "%.*s\"zz.dup\": \"model-extra.safetensors\",%s", (int)(at - index), index, at);
            snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
            write_text(path, text);
            CHECK_RESULT(load_with(dir, NULL, &m), TE_LLAMA_ERR_DUPLICATE_TENSOR);
            write_text(path, index);
        }
        unlink(extra);
        free(text);
    }
    free(index);
    /* no checkpoint, or a pickle */
    dir = fresh_dir("pickle");
    snprintf(path, sizeof path, "%s/config.json", dir);
    write_text(path, config_4x);
    CHECK_RESULT(load_with(dir, NULL, &m), TE_LLAMA_ERR_NOT_FOUND);
    snprintf(path, sizeof path, "%s/pytorch_model.bin", dir);
    write_text(path, "PK");
    CHECK_RESULT(load_with(dir, NULL, &m), TE_LLAMA_ERR_UNSUPPORTED);
    CHECK(strstr(te_llama_last_error(), "safetensors only") != NULL, "message says safetensors only: %s", te_llama_last_error());
    CHECK_RESULT(load_with("/nonexistent-dir", NULL, &m), TE_LLAMA_ERR_NOT_FOUND);
    /* single-file checkpoints: missing, unexpected tensors, shapes */
    snprintf(src, sizeof src, "%s/mha_untied_bf16", fixtures);
    dir = fresh_dir("single");
    copy_dir(src, dir);
    snprintf(path, sizeof path, "%s/model.safetensors", src);
    snprintf(path2, sizeof path2, "%s/model.safetensors", dir);
    rewrite_single(path, path2, "model.layers.1.mlp.up_proj.weight", NULL);
    CHECK_RESULT(load_with(dir, NULL, &m), TE_LLAMA_ERR_MISSING_TENSOR);
    CHECK(strstr(te_llama_last_error(), "model.layers.1.mlp.up_proj.weight") && strstr(te_llama_last_error(), "fc1_weight"), "names the HF tensor and the TE parameter: %s", te_llama_last_error());
    rewrite_single(path, path2, "lm_head.weight", NULL);
    CHECK_RESULT(load_with(dir, NULL, &m), TE_LLAMA_ERR_MISSING_TENSOR);
    rewrite_single(path, path2, NULL, "model.layers.0.self_attn.rotary_emb.inv_freq");
    memset(&o, 0, sizeof o);
    o.log = capture_log;
    log_text[0] = 0;
    CHECK_RESULT(te_llama_load(dir, &o, &m), TE_LLAMA_OK);
    CHECK(strstr(log_text, "unexpected tensor model.layers.0.self_attn.rotary_emb.inv_freq") != NULL, "unexpected tensor reported: %s", log_text);
    te_llama_free(m);
    m = NULL;
    rewrite_single(path, path2, NULL, NULL);
    {
        char cfg[2048], *text = check_read_file("tests/fixtures/mha_untied_bf16/config.json", &len), *at;
        snprintf(cfg, sizeof cfg, "%s/config.json", dir);
        at = strstr(text, "\"intermediate_size\": 128");
        CHECK(at != NULL, "fixture config layout");
        if (at) {
            char *t2 = (char *)malloc(len + 64);
            sprintf(t2, "%.*s\"intermediate_size\": 100%s", (int)(at - text), text, at + strlen("\"intermediate_size\": 128"));
            write_text(cfg, t2);
            CHECK_RESULT(load_with(dir, NULL, &m), TE_LLAMA_ERR_SHAPE_MISMATCH);
            CHECK(strstr(te_llama_last_error(), "expected [200, 64]") != NULL || strstr(te_llama_last_error(), "expected [100") != NULL || strstr(te_llama_last_error(), "expected [64, 100]") != NULL, "expected vs found: %s", te_llama_last_error());
            free(t2);
        }
        write_text(cfg, text);
        free(text);
    }
    /* fewer layers than the checkpoint: the extra ones are skipped and logged */
    memset(&o, 0, sizeof o);
    o.num_layers = 1;
    o.log = capture_log;
    log_text[0] = 0;
    CHECK_RESULT(te_llama_load(dir, &o, &m), TE_LLAMA_OK);
    CHECK(m && m->config.num_hidden_layers == 1 && strstr(log_text, "skipping checkpoint layer 1"), "layer 1 skipped: %s", log_text);
    te_llama_free(m);
    m = NULL;
    o.num_layers = 5;
    CHECK_RESULT(te_llama_load(dir, &o, &m), TE_LLAMA_ERR_OUT_OF_RANGE);
    /* an unsupported storage dtype */
    memset(&o, 0, sizeof o);
    o.dtype = TE_LLAMA_F8_E4M3;
    CHECK_RESULT(te_llama_load(dir, &o, &m), TE_LLAMA_ERR_UNSUPPORTED);
}

/* A failed save leaves the checkpoint that was there intact, and no temporary files. */
static void test_atomic_save(void) {
    char src[2048], cmd[4096];
    const char *dir;
    te_llama_model *m = NULL, *m2 = NULL;
    te_llama_save_options so;
    long point;
    int intact = 1, clean = 1, failed = 0;
    snprintf(src, sizeof src, "%s/gqa_tied_llama3", fixtures);
    CHECK_RESULT(load_with(src, NULL, &m), TE_LLAMA_OK);
    if (!m) return;
    dir = fresh_dir("atomic");
    copy_dir(src, dir);
    memset(&so, 0, sizeof so);
    so.max_shard_size = 30000;
    for (point = 0; point < 400; point++) {
        FILE *p;
        int n = 0;
        te_llama_test_write_countdown = point;
        if (te_llama_save(m, dir, &so) != TE_LLAMA_ERR_IO) { te_llama_test_write_countdown = -1; break; }
        failed++;
        te_llama_test_write_countdown = -1;
        intact &= same_checkpoint(src, dir);
        snprintf(cmd, sizeof cmd, "ls -a '%s' | grep -c te_llama-tmp", dir);
        if ((p = popen(cmd, "r"))) { if (fscanf(p, "%d", &n) != 1) n = -1; pclose(p); }
        clean &= n == 0;
    }
    printf("  save: %d injected write failures, each left the old checkpoint intact: %s\n", failed, intact ? "yes" : "no");
    CHECK(failed > 10, "failures injected at %d points", failed);
    CHECK(intact, "the old checkpoint intact after every failed save");
    CHECK(clean, "no temporary files left");
    CHECK_RESULT(te_llama_save(m, dir, &so), TE_LLAMA_OK);
    CHECK_RESULT(load_with(dir, NULL, &m2), TE_LLAMA_OK);
    te_llama_free(m2);
    te_llama_free(m);
}

/* ------------------------------------------------------------------------------------------------ forward */

/* model_dir: NULL when the references sit beside the checkpoint in fixtures/name */
static void test_golden(const char *name, const char *model_dir) {
    char dir[2048], ref_dir[2048];
    reference ref;
    te_llama_model *te = NULL, *van = NULL;
    float *a, *b;
    size_t n;
    int k;
    snprintf(ref_dir, sizeof ref_dir, "%s/%s", fixtures, name);
    snprintf(dir, sizeof dir, "%s", model_dir ? model_dir : ref_dir);
    CHECK(load_reference(ref_dir, &ref), "%s: reference files", name);
    if (!ref.logits) return;
    n = (size_t)ref.n_prompt * ref.vocab;
    a = (float *)calloc(n, sizeof(float));
    b = (float *)calloc(n, sizeof(float));
    CHECK_RESULT(load_with(dir, te_llama_te_decoder, &te), TE_LLAMA_OK);
    CHECK_RESULT(load_with(dir, te_llama_vanilla_decoder, &van), TE_LLAMA_OK);
    if (!te || !van) return;
    CHECK_RESULT(prompt_logits(te, ref.prompt, ref.n_prompt, a), TE_LLAMA_OK);
    CHECK_RESULT(prompt_logits(van, ref.prompt, ref.n_prompt, b), TE_LLAMA_OK);
    {
        double e_te = rel_max_err(a, ref.logits, n), e_van = rel_max_err(b, ref.logits, n), e_kinds = rel_max_err(a, b, n);
        printf("  %s: max|logit - HF float64| / max|HF| = %.2e (te), %.2e (vanilla); te vs vanilla %.2e\n", name, e_te, e_van, e_kinds);
        CHECK(e_te < 1e-4, "%s: te logits vs HF %.3e", name, e_te);
        CHECK(e_van < 1e-4, "%s: vanilla logits vs HF %.3e", name, e_van);
        CHECK(e_kinds <= 1e-6, "%s: te vs vanilla %.3e", name, e_kinds);
    }
    for (k = 0; k < 2; k++) { /* greedy continuation */
        te_llama_generate_options g;
        int32_t prompt[64], out[64];
        int n_out = 0, i, same = 1;
        memset(&g, 0, sizeof g);
        g.max_new_tokens = ref.n_greedy;
        g.ignore_eos = 1;
        for (i = 0; i < ref.n_prompt; i++) prompt[i] = ref.prompt[i];
        CHECK_RESULT(te_llama_generate(k ? van : te, &g, prompt, ref.n_prompt, out, 64, &n_out), TE_LLAMA_OK);
        for (i = 0; i < ref.n_greedy; i++) same &= i < n_out && out[i] == ref.greedy[i];
        CHECK(same && n_out == ref.n_greedy, "%s: %d-token greedy continuation equals HF's (%s)", name, ref.n_greedy, k ? "vanilla" : "te");
    }
    { /* KV cache: prefill 6 tokens, then decode one at a time == the full prompt at once */
        te_llama_kv_cache *cache;
        te_llama_batch bt;
        int32_t tokens[64], pos[64];
        int i, split = 6;
        float *c = (float *)calloc(n, sizeof(float));
        for (i = 0; i < ref.n_prompt; i++) { tokens[i] = ref.prompt[i]; pos[i] = i; }
        CHECK_RESULT(te_llama_kv_cache_create(te, 1, 64, &cache), TE_LLAMA_OK);
        memset(&bt, 0, sizeof bt);
        bt.n_tokens = split; bt.tokens = tokens; bt.pos = pos;
        CHECK_RESULT(te_llama_forward(te, cache, &bt, c), TE_LLAMA_OK);
        for (i = split; i < ref.n_prompt; i++) {
            bt.n_tokens = 1; bt.tokens = tokens + i; bt.pos = pos + i;
            CHECK_RESULT(te_llama_forward(te, cache, &bt, c + (size_t)i * ref.vocab), TE_LLAMA_OK);
        }
        CHECK(rel_max_err(c, a, n) <= 1e-6, "%s: cached decode equals full recompute (%.2e)", name, rel_max_err(c, a, n));
        bt.n_tokens = 1; pos[0] = 64;
        bt.pos = pos;
        CHECK_RESULT(te_llama_forward(te, cache, &bt, c), TE_LLAMA_ERR_OUT_OF_RANGE);
        tokens[0] = 256000;
        pos[0] = 0;
        bt.tokens = tokens;
        CHECK_RESULT(te_llama_forward(te, cache, &bt, c), TE_LLAMA_ERR_OUT_OF_RANGE);
        te_llama_kv_cache_free(cache);
        free(c);
    }
    te_llama_free(te);
    te_llama_free(van);
    free(a);
    free(b);
    free(ref.logits);
}

/* Two sequences of different lengths in one batch, against HF run on each alone; and --num-layers. */
static void test_batch_and_layers(void) {
    char dir[2048], path[2048];
    char *text;
    size_t len;
    te_llama_json j;
    te_llama_model *m = NULL;
    int prompts[2][16], n[2], s, i, row = 0;
    int32_t tokens[32], pos[32], seq[32];
    uint8_t want[32];
    float logits[2 * 256], ref[2 * 256];
    te_llama_kv_cache *cache;
    te_llama_batch b;
    te_llama_options o;
    snprintf(dir, sizeof dir, "%s/gqa_tied_llama3", fixtures);
    snprintf(path, sizeof path, "%s/ref_batch.json", dir);
    text = check_read_file(path, &len);
    CHECK(text && te_llama_json_parse(text, len, NULL, &j) == TE_LLAMA_OK, "ref_batch.json");
    if (!text) return;
    {
        size_t p = te_llama_json_get(&j, 0, "prompts"), l = te_llama_json_get(&j, 0, "last_logits"), e;
        n[0] = json_ints(&j, p + 1, prompts[0], 16);
        n[1] = json_ints(&j, j.tokens[p + 1].next, prompts[1], 16);
        for (s = 0, e = l + 1; s < 2; s++, e = j.tokens[e].next) {
            size_t k, f;
            for (k = 0, f = e + 1; k < 256; k++, f = j.tokens[f].next) {
                double d;
                te_llama_json_double(&j, f, &d);
                ref[s * 256 + k] = (float)d;
            }
        }
    }
    te_llama_json_free(&j);
    free(text);
    CHECK_RESULT(load_with(dir, NULL, &m), TE_LLAMA_OK);
    if (!m) return;
    /* interleave the two sequences token by token, as a server would batch them */
    for (i = 0; i < 16; i++)
        for (s = 0; s < 2; s++)
            if (i < n[s]) { tokens[row] = prompts[s][i]; pos[row] = i; seq[row] = s; want[row] = i == n[s] - 1; row++; }
    CHECK_RESULT(te_llama_kv_cache_create(m, 2, 16, &cache), TE_LLAMA_OK);
    memset(&b, 0, sizeof b);
    b.n_tokens = row; b.tokens = tokens; b.pos = pos; b.seq = seq; b.want_logits = want;
    CHECK_RESULT(te_llama_forward(m, cache, &b, logits), TE_LLAMA_OK);
    /* logits come in batch order: sequence 0 (7 tokens) ends before sequence 1 (11 tokens) */
    CHECK(rel_max_err(logits, ref, 256) < 1e-4, "batched sequence of 7 tokens vs HF alone: %.2e", rel_max_err(logits, ref, 256));
    CHECK(rel_max_err(logits + 256, ref + 256, 256) < 1e-4, "batched sequence of 11 tokens vs HF alone: %.2e", rel_max_err(logits + 256, ref + 256, 256));
    te_llama_kv_cache_free(cache);
    te_llama_free(m);
    m = NULL;
    { /* the first 2 of 3 layers, against HF loading the same checkpoint with num_hidden_layers = 2 */
        reference r3;
        float *two, *got;
        load_reference(dir, &r3);
        snprintf(path, sizeof path, "%s/ref_logits_2layers.f32", dir);
        two = read_floats(path, (size_t)r3.n_prompt * r3.vocab);
        got = (float *)calloc((size_t)r3.n_prompt * r3.vocab, sizeof(float));
        memset(&o, 0, sizeof o);
        o.num_layers = 2;
        CHECK_RESULT(te_llama_load(dir, &o, &m), TE_LLAMA_OK);
        if (m && two) {
            CHECK_RESULT(prompt_logits(m, r3.prompt, r3.n_prompt, got), TE_LLAMA_OK);
            CHECK(rel_max_err(got, two, (size_t)r3.n_prompt * r3.vocab) < 1e-4, "2 of 3 layers vs HF with 2 layers: %.2e", rel_max_err(got, two, (size_t)r3.n_prompt * r3.vocab));
        }
        te_llama_free(m);
        free(two); free(got); free(r3.logits);
    }
    { /* a storage dtype other than the checkpoint's: bf16 -> f32 is exact, so the logits agree closely */
        reference rb;
        float *x = NULL, *y = NULL;
        te_llama_model *m32 = NULL, *m16 = NULL;
        snprintf(dir, sizeof dir, "%s/mha_untied_bf16", fixtures);
        load_reference(dir, &rb);
        memset(&o, 0, sizeof o);
        o.dtype = TE_LLAMA_F32;
        CHECK_RESULT(te_llama_load(dir, &o, &m32), TE_LLAMA_OK);
        CHECK_RESULT(te_llama_load(dir, NULL, &m16), TE_LLAMA_OK);
        if (m32 && m16) {
            CHECK(m32->embed_tokens.dtype == TE_LLAMA_F32, "stored as f32");
            x = (float *)calloc((size_t)rb.n_prompt * rb.vocab, 4);
            y = (float *)calloc((size_t)rb.n_prompt * rb.vocab, 4);
            prompt_logits(m32, rb.prompt, rb.n_prompt, x);
            prompt_logits(m16, rb.prompt, rb.n_prompt, y);
            CHECK(rel_max_err(x, y, (size_t)rb.n_prompt * rb.vocab) <= 1e-6, "f32 storage of bf16 weights gives the same logits");
        }
        te_llama_free(m32); te_llama_free(m16);
        free(x); free(y); free(rb.logits);
    }
}

/* A user factory's layers load and run like the built-in ones. */
static void test_user_factory_runs(void) {
    char dir[2048];
    reference ref;
    te_llama_model *m = NULL;
    float *a;
    snprintf(dir, sizeof dir, "%s/headdim_f16", fixtures);
    load_reference(dir, &ref);
    wrapped_builds = wrapped_forwards = 0;
    CHECK_RESULT(load_with(dir, wrapped_te_decoder, &m), TE_LLAMA_OK);
    if (!m || !ref.logits) return;
    a = (float *)calloc((size_t)ref.n_prompt * ref.vocab, 4);
    CHECK_RESULT(prompt_logits(m, ref.prompt, ref.n_prompt, a), TE_LLAMA_OK);
    CHECK(wrapped_builds == 2 && wrapped_forwards == 2, "user factory built %d layers, forwarded %d times", wrapped_builds, wrapped_forwards);
    CHECK(rel_max_err(a, ref.logits, (size_t)ref.n_prompt * ref.vocab) < 1e-4, "user factory's model matches HF");
    te_llama_free(m);
    free(a);
    free(ref.logits);
}

/* --------------------------------------------------------------------------------------------------- sampling */

static int stop_after_three(void *user, int32_t token) {
    (void)token;
    return ++*(int *)user >= 3;
}

static void test_sampling(void) {
    float logits[256];
    te_llama_sampler s1, s2;
    te_llama_sampler_options so;
    int i, same = 1, differ = 0, counts[4] = {0, 0, 0, 0};
    int32_t a[64], b[64];
    for (i = 0; i < 256; i++) logits[i] = (float)sin(i * 0.7) * 2.0f;
    memset(&so, 0, sizeof so);
    CHECK_RESULT(te_llama_sampler_init(&s1, &so, 256, NULL), TE_LLAMA_OK);
    {
        int best = 0;
        for (i = 1; i < 256; i++) if (logits[i] > logits[best]) best = i;
        CHECK(te_llama_sample(&s1, logits) == best, "temperature 0 is greedy");
    }
    te_llama_sampler_free(&s1);
    so.temperature = 1.0f;
    so.seed = 42;
    te_llama_sampler_init(&s1, &so, 256, NULL);
    te_llama_sampler_init(&s2, &so, 256, NULL);
    for (i = 0; i < 64; i++) { a[i] = te_llama_sample(&s1, logits); b[i] = te_llama_sample(&s2, logits); same &= a[i] == b[i]; }
    CHECK(same, "one seed, one sequence");
    te_llama_sampler_free(&s2);
    so.seed = 43;
    te_llama_sampler_init(&s2, &so, 256, NULL);
    for (i = 0; i < 64; i++) differ += te_llama_sample(&s2, logits) != a[i];
    CHECK(differ > 32, "another seed, another sequence (%d of 64 differ)", differ);
    te_llama_sampler_free(&s1);
    te_llama_sampler_free(&s2);
    { /* frequencies follow softmax(logits / T) */
        float l4[4] = {0.0f, 1.0f, 2.0f, -1.0f};
        double z = 0, p[4];
        int n = 40000, ok = 1;
        so.temperature = 0.7f;
        so.seed = 7;
        te_llama_sampler_init(&s1, &so, 4, NULL);
        for (i = 0; i < n; i++) counts[te_llama_sample(&s1, l4)]++;
        for (i = 0; i < 4; i++) z += exp(l4[i] / 0.7);
        for (i = 0; i < 4; i++) { p[i] = exp(l4[i] / 0.7) / z; ok &= fabs(counts[i] / (double)n - p[i]) < 0.01; }
        CHECK(ok, "frequencies %d %d %d %d match softmax", counts[0], counts[1], counts[2], counts[3]);
        te_llama_sampler_free(&s1);
        so.top_k = 1;
        te_llama_sampler_init(&s1, &so, 4, NULL);
        for (i = 0, ok = 1; i < 100; i++) ok &= te_llama_sample(&s1, l4) == 2;
        CHECK(ok, "top_k 1 always takes the best");
        te_llama_sampler_free(&s1);
        so.top_k = 2;
        so.top_p = 0;
        te_llama_sampler_init(&s1, &so, 4, NULL);
        for (i = 0, ok = 1; i < 1000; i++) { int t = te_llama_sample(&s1, l4); ok &= t == 2 || t == 1; }
        CHECK(ok, "top_k 2 keeps the two best");
        te_llama_sampler_free(&s1);
        so.top_k = 0;
        so.top_p = 0.5f; /* p(2) alone is 0.74 > 0.5 */
        te_llama_sampler_init(&s1, &so, 4, NULL);
        for (i = 0, ok = 1; i < 1000; i++) ok &= te_llama_sample(&s1, l4) == 2;
        CHECK(ok, "top_p 0.5 keeps only the nucleus");
        te_llama_sampler_free(&s1);
        so.top_p = 0.9f; /* 0.74 + 0.18 = 0.92 >= 0.9: tokens 2 and 1 */
        te_llama_sampler_init(&s1, &so, 4, NULL);
        for (i = 0, ok = 1; i < 1000; i++) { int t = te_llama_sample(&s1, l4); ok &= t == 2 || t == 1; }
        CHECK(ok, "top_p 0.9 keeps two tokens");
        te_llama_sampler_free(&s1);
        so.top_p = 2.0f;
        CHECK_RESULT(te_llama_sampler_init(&s1, &so, 4, NULL), TE_LLAMA_ERR_INVALID_ARGUMENT);
    }
    { /* generation stops: at eos, at the callback, at the limit */
        char dir[2048];
        te_llama_model *m = NULL;
        te_llama_generate_options g;
        int32_t prompt[3] = {1, 17, 99}, out[64];
        int n_out = 0, calls = 0;
        reference ref;
        snprintf(dir, sizeof dir, "%s/gqa_tied_llama3", fixtures);
        load_reference(dir, &ref);
        CHECK_RESULT(load_with(dir, NULL, &m), TE_LLAMA_OK);
        if (!m) return;
        CHECK(m->n_eos_token_ids == 2 && m->eos_token_ids[0] == 2 && m->eos_token_ids[1] == 3, "eos ids from config and generation_config");
        memset(&g, 0, sizeof g);
        g.max_new_tokens = 10;
        g.on_token = stop_after_three;
        g.user = &calls;
        CHECK_RESULT(te_llama_generate(m, &g, prompt, 3, out, 64, &n_out), TE_LLAMA_OK);
        CHECK(n_out == 3 && calls == 3, "the callback stops generation (%d tokens)", n_out);
        g.on_token = NULL;
        CHECK_RESULT(te_llama_generate(m, &g, prompt, 3, out, 5, &n_out), TE_LLAMA_OK);
        CHECK(n_out == 5, "capacity limits the output (%d)", n_out);
        { /* make the first new token of the greedy continuation that is not its first token an eos id */
            int k = 1;
            while (k < ref.n_greedy && ref.greedy[k] == ref.greedy[0]) k++;
            m->eos_token_ids[0] = ref.greedy[k];
            g.max_new_tokens = 20;
            for (i = 0; i < ref.n_prompt; i++) a[i] = ref.prompt[i];
            CHECK_RESULT(te_llama_generate(m, &g, a, ref.n_prompt, out, 64, &n_out), TE_LLAMA_OK);
            CHECK(n_out == k + 1 && out[k] == ref.greedy[k], "stops at an eos id, which it includes (%d tokens, expected %d)", n_out, k + 1);
        }
        te_llama_free(m);
        free(ref.logits);
    }
}

/* --------------------------------------------------------------------------------------------- batched generation */

static int count_calls(void *user, int32_t token) {
    (void)token;
    ++*(int *)user;
    return 0;
}

/* te_llama_generate_batch on the CPU: sequence s of a batch is te_llama_generate of prompt s alone, greedy (prompts
   of 11, 2, 1 and 7 tokens; then with an eos id that stops some sequences early) and sampled (seed + s); the limits;
   every bad argument's exact code. */
static void test_generate_batch(void) {
    enum { N = 4, CAP = 12 };
    char dir[2048];
    te_llama_model *m = NULL;
    te_llama_generate_options g;
    reference ref;
    int32_t p0[64], p1[2] = {1, 17}, p2[1] = {99}, p3[7], bad[2] = {1, 256}, out[N * CAP], one[CAP];
    const int32_t *prompts[N];
    int n_prompt[N], n_out[N], s, i, n1 = 0, same, calls = 0, saved_eos[TE_LLAMA_MAX_EOS], saved_n, early = 0, full = 0;
    snprintf(dir, sizeof dir, "%s/gqa_tied_llama3", fixtures);
    load_reference(dir, &ref);
    free(ref.logits);
    CHECK_RESULT(load_with(dir, NULL, &m), TE_LLAMA_OK);
    if (!m || ref.n_prompt < 7) { te_llama_free(m); return; }
    for (i = 0; i < ref.n_prompt; i++) p0[i] = ref.prompt[i];
    for (i = 0; i < 7; i++) p3[i] = ref.prompt[ref.n_prompt - 1 - i];
    prompts[0] = p0; n_prompt[0] = ref.n_prompt;
    prompts[1] = p1; n_prompt[1] = 2;
    prompts[2] = p2; n_prompt[2] = 1;
    prompts[3] = p3; n_prompt[3] = 7;
    memset(&g, 0, sizeof g);
    g.max_new_tokens = CAP;
    g.ignore_eos = 1;
    g.on_token = count_calls; /* not called by the batch */
    g.user = &calls;
    CHECK_RESULT(te_llama_generate_batch(m, &g, prompts, n_prompt, N, out, CAP, n_out), TE_LLAMA_OK);
    CHECK(calls == 0, "te_llama_generate_batch called on_token %d times", calls);
    g.on_token = NULL;
    for (s = 0; s < N; s++) {
        CHECK_RESULT(te_llama_generate(m, &g, prompts[s], n_prompt[s], one, CAP, &n1), TE_LLAMA_OK);
        CHECK(n_out[s] == CAP && n1 == CAP && memcmp(out + s * CAP, one, sizeof one) == 0,
              "batch greedy sequence %d (%d-token prompt, %d tokens) differs from it alone (%d tokens)", s, n_prompt[s], n_out[s], n1);
    }
    for (i = 0, same = 1; i < CAP && i < ref.n_greedy; i++) same &= out[i] == ref.greedy[i];
    CHECK(same, "batch greedy sequence 0 vs HF's greedy ids");
    /* an eos id: sequence 0's third token; sequences stop at it, each on its own step, the others run on */
    memcpy(saved_eos, m->eos_token_ids, sizeof saved_eos);
    saved_n = m->n_eos_token_ids;
    m->eos_token_ids[0] = out[2];
    m->n_eos_token_ids = 1;
    g.ignore_eos = 0;
    CHECK_RESULT(te_llama_generate_batch(m, &g, prompts, n_prompt, N, out, CAP, n_out), TE_LLAMA_OK);
    for (s = 0; s < N; s++) {
        CHECK_RESULT(te_llama_generate(m, &g, prompts[s], n_prompt[s], one, CAP, &n1), TE_LLAMA_OK);
        CHECK(n_out[s] == n1 && memcmp(out + s * CAP, one, sizeof(int32_t) * (size_t)n1) == 0,
              "batch greedy with eos: sequence %d gave %d tokens, alone %d", s, n_out[s], n1);
        early += n_out[s] < CAP;
        full += n_out[s] == CAP;
    }
    CHECK(n_out[0] <= 3 && early >= 1 && full >= 1, "eos %d: %d sequences stopped early, %d ran to the limit (sequence 0: %d tokens)",
          m->eos_token_ids[0], early, full, n_out[0]);
    memcpy(m->eos_token_ids, saved_eos, sizeof saved_eos);
    m->n_eos_token_ids = saved_n;
    g.ignore_eos = 1;
    /* sampled: sequence s draws as te_llama_generate with seed + s */
    g.sampler.temperature = 0.8f;
    g.sampler.top_k = 40;
    g.sampler.seed = 42;
    CHECK_RESULT(te_llama_generate_batch(m, &g, prompts, n_prompt, N, out, CAP, n_out), TE_LLAMA_OK);
    for (s = 0; s < N; s++) {
        te_llama_generate_options g1 = g;
        g1.sampler.seed = 42 + (uint64_t)s;
        CHECK_RESULT(te_llama_generate(m, &g1, prompts[s], n_prompt[s], one, CAP, &n1), TE_LLAMA_OK);
        CHECK(n_out[s] == n1 && memcmp(out + s * CAP, one, sizeof(int32_t) * (size_t)n1) == 0, "sampled batch sequence %d vs alone with seed %d", s, 42 + s);
    }
    { /* one prompt twice: two seeds, two draws */
        const int32_t *twice[2];
        int n_twice[2];
        twice[0] = twice[1] = p0;
        n_twice[0] = n_twice[1] = ref.n_prompt;
        g.sampler.temperature = 1.5f;
        g.sampler.top_k = 0;
        CHECK_RESULT(te_llama_generate_batch(m, &g, twice, n_twice, 2, out, CAP, n_out), TE_LLAMA_OK);
        CHECK(memcmp(out, out + CAP, sizeof one) != 0, "one prompt with seeds 42 and 43 drew the same %d tokens", CAP);
    }
    g.sampler.temperature = 0;
    g.sampler.top_k = 0;
    /* limits: cap below max_new_tokens; cap 0 (out may be NULL) */
    CHECK_RESULT(te_llama_generate_batch(m, &g, prompts, n_prompt, N, out, 5, n_out), TE_LLAMA_OK);
    CHECK(n_out[0] == 5 && n_out[1] == 5 && n_out[2] == 5 && n_out[3] == 5, "cap 5 gave %d %d %d %d tokens", n_out[0], n_out[1], n_out[2], n_out[3]);
    CHECK_RESULT(te_llama_generate_batch(m, &g, prompts, n_prompt, N, NULL, 0, n_out), TE_LLAMA_OK);
    CHECK(n_out[0] == 0 && n_out[3] == 0, "cap 0 gave tokens");
    /* bad arguments */
    CHECK_RESULT(te_llama_generate_batch(NULL, &g, prompts, n_prompt, N, out, CAP, n_out), TE_LLAMA_ERR_INVALID_ARGUMENT);
    CHECK_RESULT(te_llama_generate_batch(m, &g, NULL, n_prompt, N, out, CAP, n_out), TE_LLAMA_ERR_INVALID_ARGUMENT);
    CHECK_RESULT(te_llama_generate_batch(m, &g, prompts, NULL, N, out, CAP, n_out), TE_LLAMA_ERR_INVALID_ARGUMENT);
    CHECK_RESULT(te_llama_generate_batch(m, &g, prompts, n_prompt, 0, out, CAP, n_out), TE_LLAMA_ERR_INVALID_ARGUMENT);
    CHECK_RESULT(te_llama_generate_batch(m, &g, prompts, n_prompt, -1, out, CAP, n_out), TE_LLAMA_ERR_INVALID_ARGUMENT);
    CHECK_RESULT(te_llama_generate_batch(m, &g, prompts, n_prompt, N, out, -1, n_out), TE_LLAMA_ERR_INVALID_ARGUMENT);
    CHECK_RESULT(te_llama_generate_batch(m, &g, prompts, n_prompt, N, NULL, CAP, n_out), TE_LLAMA_ERR_INVALID_ARGUMENT);
    CHECK_RESULT(te_llama_generate_batch(m, &g, prompts, n_prompt, N, out, CAP, NULL), TE_LLAMA_ERR_INVALID_ARGUMENT);
    prompts[1] = NULL;
    CHECK_RESULT(te_llama_generate_batch(m, &g, prompts, n_prompt, N, out, CAP, n_out), TE_LLAMA_ERR_INVALID_ARGUMENT);
    CHECK(strstr(te_llama_last_error(), "prompt 1 is NULL") != NULL, "message: %s", te_llama_last_error());
    prompts[1] = p1;
    n_prompt[2] = 0;
    CHECK_RESULT(te_llama_generate_batch(m, &g, prompts, n_prompt, N, out, CAP, n_out), TE_LLAMA_ERR_INVALID_ARGUMENT);
    CHECK(strstr(te_llama_last_error(), "prompt 2 is empty") != NULL, "message: %s", te_llama_last_error());
    n_prompt[2] = 1;
    prompts[3] = bad;
    n_prompt[3] = 2;
    n_out[0] = 7;
    CHECK_RESULT(te_llama_generate_batch(m, &g, prompts, n_prompt, N, out, CAP, n_out), TE_LLAMA_ERR_OUT_OF_RANGE);
    CHECK(strstr(te_llama_last_error(), "prompt 3 token 256 at index 1") != NULL, "message: %s", te_llama_last_error());
    CHECK(n_out[0] == 0, "n_out not cleared on failure");
    bad[1] = -1;
    CHECK_RESULT(te_llama_generate_batch(m, &g, prompts, n_prompt, N, out, CAP, n_out), TE_LLAMA_ERR_OUT_OF_RANGE);
    prompts[3] = p3;
    n_prompt[3] = 7;
    g.sampler.temperature = -1;
    CHECK_RESULT(te_llama_generate_batch(m, &g, prompts, n_prompt, N, out, CAP, n_out), TE_LLAMA_ERR_INVALID_ARGUMENT);
    g.sampler.temperature = (float)NAN;
    CHECK_RESULT(te_llama_generate_batch(m, &g, prompts, n_prompt, N, out, CAP, n_out), TE_LLAMA_ERR_INVALID_ARGUMENT);
    g.sampler.temperature = 1;
    g.sampler.top_k = -1;
    CHECK_RESULT(te_llama_generate_batch(m, &g, prompts, n_prompt, N, out, CAP, n_out), TE_LLAMA_ERR_INVALID_ARGUMENT);
    g.sampler.top_k = 0;
    g.sampler.top_p = 1.5f;
    CHECK_RESULT(te_llama_generate_batch(m, &g, prompts, n_prompt, N, out, CAP, n_out), TE_LLAMA_ERR_INVALID_ARGUMENT);
    g.sampler.top_p = 0;
    CHECK_RESULT(te_llama_generate_batch(m, NULL, prompts, n_prompt, 1, out, CAP, n_out), TE_LLAMA_OK); /* NULL options: defaults */
    CHECK(n_out[0] == CAP, "defaults with cap %d gave %d tokens", CAP, n_out[0]);
    te_llama_free(m);
}

int main(void) {
    const char *env = getenv("TE_LLAMA_TMP");
    char cmd[2048];
    snprintf(tmp_root, sizeof tmp_root, "%s", env ? env : "build/tmp");
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", tmp_root);
    if (system(cmd) != 0) return 2;
    if (getenv("TE_LLAMA_FIXTURES")) fixtures = getenv("TE_LLAMA_FIXTURES");
    test_json();
    test_dtypes();
    test_safetensors();
    test_config();
    test_factory();
    test_round_trip("gqa_tied_llama3");
    test_round_trip("mha_untied_bf16");
    test_round_trip("headdim_f16");
    test_peak_memory();
    test_load_errors();
    test_atomic_save();
    test_golden("gqa_tied_llama3", NULL);
    test_golden("mha_untied_bf16", NULL);
    test_golden("headdim_f16", NULL);
    test_golden("austen_ref", "models/austen"); /* the shipped default model */
    test_batch_and_layers();
    test_user_factory_runs();
    test_sampling();
    test_generate_batch();
    return CHECK_DONE("model");
}
