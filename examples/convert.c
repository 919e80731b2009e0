/* convert: load a checkpoint and save it again (shard size, dtype), the seed's from_pretrained_local then
   save_pretrained.  build/convert IN_DIR OUT_DIR [--max-shard-size SIZE] [--dtype bf16|f16|f32] */
#define TE_LLAMA_IMPLEMENTATION
#include "../te_llama.h"

static void usage(FILE *f) {
    fprintf(f, "usage: convert IN_DIR OUT_DIR [--max-shard-size SIZE] [--dtype bf16|f16|f32] [--quiet]\n"
               "  Loads an HF Llama checkpoint (safetensors) and saves it in HF layout: shards of at most SIZE\n"
               "  (bytes, or with a suffix: 500MB, 2GB; default 5GB), in the given dtype (default: as stored).\n");
}

static int parse_size(const char *s, unsigned long long *out) {
    char *end;
    double v = strtod(s, &end);
    unsigned long long mul = 1;
    if (end == s || v <= 0) return 0;
    if (!strcmp(end, "KB")) mul = 1000ull;
    else if (!strcmp(end, "MB")) mul = 1000000ull;
    else if (!strcmp(end, "GB")) mul = 1000000000ull;
    else if (!strcmp(end, "KiB")) mul = 1024ull;
    else if (!strcmp(end, "MiB")) mul = 1048576ull;
    else if (!strcmp(end, "GiB")) mul = 1073741824ull;
    else if (*end) return 0;
    *out = (unsigned long long)(v * (double)mul);
    return 1;
}

static void progress(void *user, const te_llama_progress *p) {
    (void)user;
    fprintf(stderr, "\r%s %s [%d/%d] %5.1f%%", p->what, p->file, p->file_index + 1, p->n_files,
            p->bytes_total ? 100.0 * (double)p->bytes_done / (double)p->bytes_total : 100.0);
    if (p->bytes_done == p->bytes_total) fprintf(stderr, "\n");
}

int main(int argc, char **argv) {
    te_llama_options opt;
    te_llama_save_options so;
    te_llama_model *m;
    const char *in = NULL, *out = NULL;
    int i, quiet = 0;
    memset(&opt, 0, sizeof opt);
    memset(&so, 0, sizeof so);
    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) { usage(stdout); return 0; }
        else if (!strcmp(argv[i], "--max-shard-size") && i + 1 < argc) {
            unsigned long long v;
            if (!parse_size(argv[++i], &v)) { fprintf(stderr, "convert: bad size %s\n", argv[i]); return 2; }
            so.max_shard_size = v;
        } else if (!strcmp(argv[i], "--dtype") && i + 1 < argc) {
            i++;
            if (!strcmp(argv[i], "bf16")) so.dtype = TE_LLAMA_BF16;
            else if (!strcmp(argv[i], "f16")) so.dtype = TE_LLAMA_F16;
            else if (!strcmp(argv[i], "f32")) so.dtype = TE_LLAMA_F32;
            else { fprintf(stderr, "convert: dtype must be bf16, f16 or f32\n"); return 2; }
        } else if (!strcmp(argv[i], "--quiet")) quiet = 1;
        else if (argv[i][0] != '-' && !in) in = argv[i];
        else if (argv[i][0] != '-' && !out) out = argv[i];
        else { usage(stderr); return 2; }
    }
    if (!in || !out) { usage(stderr); return 2; }
    if (!quiet && isatty(2)) opt.progress = progress;
    if (te_llama_load(in, &opt, &m)) { fprintf(stderr, "convert: %s\n", te_llama_last_error()); return 1; }
    if (te_llama_save(m, out, &so)) { fprintf(stderr, "convert: %s\n", te_llama_last_error()); te_llama_free(m); return 1; }
    te_llama_free(m);
    if (!quiet) fprintf(stderr, "convert: wrote %s\n", out);
    return 0;
}
