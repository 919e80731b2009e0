/* tokenize.c - text to token ids and back with a HuggingFace tokenizer.json, through te_llama.h.

   Build:  cc -O2 -std=c99 -I. examples/tokenize.c -o build/tokenize -lm
   Use:    build/tokenize -t TOKENIZER_JSON_OR_MODEL_DIR [--special] < text > ids
           build/tokenize -t TOKENIZER_JSON_OR_MODEL_DIR --decode [--special] < ids > text
           build/tokenize -t TOKENIZER_JSON_OR_MODEL_DIR --bench FILE
*/
#define TE_LLAMA_IMPLEMENTATION
#include "te_llama.h"

#include <time.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: tokenize -t TOKENIZER_JSON_OR_MODEL_DIR [--special] [--decode]\n"
            "       tokenize -t TOKENIZER_JSON_OR_MODEL_DIR --bench FILE\n"
            "  text on stdin -> token ids on stdout, space separated\n"
            "  --special   encode: apply the post-processor (e.g. prepend BOS);\n"
            "              decode: keep special tokens (they are skipped by default, as in HF)\n"
            "  --decode    token ids on stdin -> text on stdout\n"
            "  --bench F   time loading, encoding F as one string and line by line, and decoding\n");
}

static int read_all(FILE *f, char **out, size_t *len) {
    size_t cap = 1 << 16, n = 0;
    char *buf = (char *)malloc(cap);
    if (!buf) return 0;
    for (;;) {
        size_t got;
        if (n == cap) {
            char *grown = (char *)realloc(buf, cap * 2);
            if (!grown) { free(buf); return 0; }
            buf = grown;
            cap *= 2;
        }
        got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
    }
    if (ferror(f)) { free(buf); return 0; }
    *out = buf;
    *len = n;
    return 1;
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int bench(const char *tok_path, const char *file) {
    te_llama_tokenizer *tok;
    FILE *f = fopen(file, "rb");
    char *text, *back;
    size_t len, n_ids, i, start, n_lines = 0, total_ids = 0, back_len;
    int32_t *ids;
    double t0, t_load, t_whole, t_lines, t_dec, mb;
    te_llama_result r;
    if (!f || !read_all(f, &text, &len)) { fprintf(stderr, "tokenize: cannot read %s\n", file); return 1; }
    fclose(f);
    mb = (double)len / 1e6;
    t0 = now_ms();
    if ((r = te_llama_tokenizer_load(tok_path, NULL, &tok))) { fprintf(stderr, "tokenize: %s\n", te_llama_last_error()); return 1; }
    t_load = now_ms() - t0;
    t0 = now_ms();
    if ((r = te_llama_tokenizer_encode(tok, text, len, 0, &ids, &n_ids))) { fprintf(stderr, "tokenize: %s\n", te_llama_last_error()); return 1; }
    t_whole = now_ms() - t0;
    t0 = now_ms();
    if ((r = te_llama_tokenizer_decode(tok, ids, n_ids, 0, &back, &back_len))) { fprintf(stderr, "tokenize: %s\n", te_llama_last_error()); return 1; }
    t_dec = now_ms() - t0;
    te_llama_tokenizer_free_text(tok, back);
    te_llama_tokenizer_free_ids(tok, ids);
    t0 = now_ms();
    for (i = 0, start = 0; i <= len; i++) {
        if (i == len || text[i] == '\n') {
            int32_t *line_ids;
            size_t n;
            if (i == len && start == len) break;
            if ((r = te_llama_tokenizer_encode(tok, text + start, i - start, 0, &line_ids, &n))) { fprintf(stderr, "tokenize: %s\n", te_llama_last_error()); return 1; }
            total_ids += n;
            n_lines++;
            te_llama_tokenizer_free_ids(tok, line_ids);
            start = i + 1;
        }
    }
    t_lines = now_ms() - t0;
    printf("load %.1f ms\n", t_load);
    printf("encode whole %.1f ms  %.2f MB/s  %zu ids\n", t_whole, mb / (t_whole / 1e3), n_ids);
    printf("encode lines %.1f ms  %.2f MB/s  %zu lines %zu ids\n", t_lines, mb / (t_lines / 1e3), n_lines, total_ids);
    printf("decode whole %.1f ms  %.2f MB/s\n", t_dec, mb / (t_dec / 1e3));
    te_llama_tokenizer_free(tok);
    free(text);
    return 0;
}

int main(int argc, char **argv) {
    const char *tok_path = NULL, *bench_file = NULL;
    int special = 0, decode = 0, i, status = 0;
    te_llama_tokenizer *tok;
    te_llama_result r;
    char *in;
    size_t len;
    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-t") == 0 && i + 1 < argc) tok_path = argv[++i];
        else if (strcmp(argv[i], "--bench") == 0 && i + 1 < argc) bench_file = argv[++i];
        else if (strcmp(argv[i], "--special") == 0) special = 1;
        else if (strcmp(argv[i], "--decode") == 0) decode = 1;
        else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) { usage(stdout); return 0; }
        else { usage(stderr); return 2; }
    }
    if (!tok_path) { usage(stderr); return 2; }
    if (bench_file) return bench(tok_path, bench_file);
    if ((r = te_llama_tokenizer_load(tok_path, NULL, &tok))) { fprintf(stderr, "tokenize: %s\n", te_llama_last_error()); return 1; }
    if (!read_all(stdin, &in, &len)) { fprintf(stderr, "tokenize: cannot read stdin\n"); te_llama_tokenizer_free(tok); return 1; }
    if (!decode) {
        int32_t *ids;
        size_t n, k;
        if ((r = te_llama_tokenizer_encode(tok, in, len, special, &ids, &n))) {
            fprintf(stderr, "tokenize: %s\n", te_llama_last_error());
            status = 1;
        } else {
            for (k = 0; k < n; k++) printf(k ? " %ld" : "%ld", (long)ids[k]);
            printf("\n");
            te_llama_tokenizer_free_ids(tok, ids);
        }
    } else {
        size_t cap = 1024, n = 0, out_len;
        int32_t *ids = (int32_t *)malloc(cap * sizeof *ids);
        char *p = in, *end, *text;
        in = (char *)realloc(in, len + 1); /* strtol needs a terminator */
        p = in;
        if (!ids || !in) { fprintf(stderr, "tokenize: out of memory\n"); return 1; }
        in[len] = 0;
        for (;;) {
            long v;
            while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r' || *p == ',') p++;
            if (!*p) break;
            v = strtol(p, &end, 10);
            if (end == p || v < 0 || v > INT32_MAX) { fprintf(stderr, "tokenize: bad id near \"%.16s\"\n", p); return 1; }
            p = end;
            if (n == cap) {
                int32_t *grown = (int32_t *)realloc(ids, 2 * cap * sizeof *ids);
                if (!grown) { fprintf(stderr, "tokenize: out of memory\n"); return 1; }
                ids = grown;
                cap *= 2;
            }
            ids[n++] = (int32_t)v;
        }
        if ((r = te_llama_tokenizer_decode(tok, ids, n, !special, &text, &out_len))) {
            fprintf(stderr, "tokenize: %s\n", te_llama_last_error());
            status = 1;
        } else {
            fwrite(text, 1, out_len, stdout);
            te_llama_tokenizer_free_text(tok, text);
        }
        free(ids);
    }
    free(in);
    te_llama_tokenizer_free(tok);
    return status;
}
