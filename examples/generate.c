/* generate: text (or token ids) in, a continuation out, from an HF Llama checkpoint.
   build/generate [-m MODEL_DIR] [-p TEXT | --prompt-ids "1 2 3"] [-n N] [--temp T] [--top-k K] [--top-p P]
                  [--seed S] [--backend cpu|cuda] [--decoder te|vanilla] [--dtype f32|bf16|f16|fp8]
                  [--fp8-bf16-layers START,END] [--num-layers N] [--print-ids]
                  [--logits-out FILE] [--chat] [--quiet] */
#define TE_LLAMA_IMPLEMENTATION
#include "../te_llama.h"

#include <time.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: generate [-m MODEL_DIR] [-p TEXT | --prompt-ids \"1 2 3\"] [options]\n"
            "Continues a prompt with an HF Llama checkpoint (a directory with config.json and safetensors).\n"
            "  -m MODEL_DIR        the checkpoint (default: models/austen beside this program's build/)\n"
            "  -p TEXT             the prompt, tokenized with MODEL_DIR/tokenizer.json (BOS added as the tokenizer says)\n"
            "  --prompt-ids IDS    the prompt as token ids, space separated\n"
            "  --chat              wrap -p TEXT in the Llama 3 instruct chat format (needs its special tokens)\n"
            "  -n N                new tokens to generate (default 128; 0: only run the prompt)\n"
            "  --temp T            sampling temperature (default 0.8; 0: greedy)\n"
            "  --top-k K           keep the K most likely tokens (default 0: off)\n"
            "  --top-p P           keep the smallest set of tokens with probability mass P (default 0.95)\n"
            "  --seed S            random seed (default: from the clock, printed on stderr)\n"
            "  --backend cpu|cuda  where to run (default: the GPU when this build has the CUDA backend and the\n"
            "                      machine has a GPU, else the CPU)\n"
            "  --decoder te|vanilla  decoder layer layout (default te: fused QKV and fc1)\n"
            "  --dtype D           f32, bf16 or f16: parameter storage (default: the checkpoint's); fp8: FP8 GEMMs as\n"
            "                      TransformerEngine's DelayedScaling (E4M3 weights and GEMM inputs), on the GPU with\n"
            "                      cuBLASLt and the decode GEMV, emulated on the CPU backend; activation scales\n"
            "                      calibrated on the prompt\n"
            "  --fp8-bf16-layers START,END  with --dtype fp8: keep the first START and the last END decoder layers\n"
            "                      out of FP8 (default 0,0; 1,1 is Megatron-Core's first_last_layers_bf16)\n"
            "  --num-layers N      load only the first N decoder layers\n"
            "  --ignore-eos        do not stop at the model's end-of-sequence ids\n"
            "  --print-ids         print the generated token ids on stdout, space separated, instead of text\n"
            "  --logits-out FILE   write float32 little-endian logits of every prompt position (n_prompt x vocab)\n"
            "  --quiet             no progress bar and no speed report\n"
            "Speed (tokens per second) goes to stderr.\n");
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* A progress bar per shard on stderr, with bytes and GB/s. */
static double shard_started;
static void progress(void *user, const te_llama_progress *p) {
    double t = now_s(), frac = p->bytes_total ? (double)p->bytes_done / (double)p->bytes_total : 1.0;
    int i, width = 30;
    (void)user;
    if (p->bytes_done <= p->bytes_total / 64 || shard_started == 0) shard_started = t;
    fprintf(stderr, "\r%s %-36.36s [", p->what, p->file);
    for (i = 0; i < width; i++) fputc(i < (int)(frac * width) ? '#' : '.', stderr);
    fprintf(stderr, "] %d/%d %7.1f MB %6.2f GB/s", p->file_index + 1, p->n_files, (double)p->bytes_done / 1e6,
            t > shard_started ? (double)p->bytes_done / (t - shard_started) / 1e9 : 0.0);
    if (p->bytes_done >= p->bytes_total) { fputc('\n', stderr); shard_started = 0; }
}

static int backend_chosen; /* --backend given: then falling back to the CPU is worth a warning */
static void log_message(void *user, te_llama_log_level level, const char *msg) {
    (void)user;
    if (!backend_chosen && strstr(msg, "no CUDA device")) return; /* the default just means "GPU if there is one" */
    fprintf(stderr, "%s: %s\n", level == TE_LLAMA_LOG_WARN ? "warning" : "info", msg);
}

typedef struct stream_state {
    int print_ids;
    int count;
    te_llama_tokenizer *tok;
    te_llama_decode_state decode; /* a token may end in the middle of a UTF-8 character */
} stream_state;

/* Print each token as it comes: its id, or its text. */
static int on_token(void *user, int32_t token) {
    stream_state *s = (stream_state *)user;
    if (s->print_ids || !s->tok) {
        printf(s->count ? " %d" : "%d", token);
    } else {
        char piece[256];
        size_t len = 0;
        if (te_llama_tokenizer_decode_piece(s->tok, &s->decode, token, 1, piece, sizeof piece, &len) == TE_LLAMA_OK)
            fwrite(piece, 1, len, stdout);
    }
    s->count++;
    fflush(stdout);
    return 0;
}

/* The default model: models/austen next to the build/ directory holding this program. */
static const char *default_model(const char *argv0) {
    static char path[4096];
    const char *slash = strrchr(argv0, '/');
    if (slash) snprintf(path, sizeof path, "%.*s/../models/austen", (int)(slash - argv0), argv0);
    else snprintf(path, sizeof path, "models/austen");
    return path;
}

int main(int argc, char **argv) {
    te_llama_options opt;
    te_llama_generate_options g;
    te_llama_model *m = NULL;
    const char *dir = NULL, *text = NULL, *ids_text = NULL, *logits_out = NULL;
    int32_t *prompt = NULL, *out = NULL;
    int n_prompt = 0, n_new = 128, i, n_out = 0, quiet = 0, seed_given = 0, chat = 0;
    te_llama_fp8_recipe fp8; /* all-zero: TE's defaults */
    stream_state st;
    double t0, t1, t2;
    te_llama_result r;
    memset(&opt, 0, sizeof opt);
    memset(&g, 0, sizeof g);
    memset(&st, 0, sizeof st);
    memset(&fp8, 0, sizeof fp8);
    opt.decoder = te_llama_te_decoder;
#ifdef TE_LLAMA_CUDA
    opt.backend = TE_LLAMA_BACKEND_CUDA; /* falls back to the CPU when there is no GPU */
#endif
    g.sampler.temperature = 0.8f;
    g.sampler.top_p = 0.95f;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        else if (!strcmp(a, "--print-ids")) st.print_ids = 1;
        else if (!strcmp(a, "--quiet")) quiet = 1;
        else if (!strcmp(a, "--chat")) chat = 1;
        else if (!strcmp(a, "--ignore-eos")) g.ignore_eos = 1;
        else if (!v) { fprintf(stderr, "generate: %s needs a value (try --help)\n", a); return 2; }
        else if (!strcmp(a, "-m")) { dir = v; i++; }
        else if (!strcmp(a, "-p")) { text = v; i++; }
        else if (!strcmp(a, "--prompt-ids")) { ids_text = v; i++; }
        else if (!strcmp(a, "-n")) { n_new = atoi(v); i++; }
        else if (!strcmp(a, "--temp")) { g.sampler.temperature = (float)atof(v); i++; }
        else if (!strcmp(a, "--top-k")) { g.sampler.top_k = atoi(v); i++; }
        else if (!strcmp(a, "--top-p")) { g.sampler.top_p = (float)atof(v); i++; }
        else if (!strcmp(a, "--seed")) { g.sampler.seed = strtoull(v, NULL, 10); seed_given = 1; i++; }
        else if (!strcmp(a, "--num-layers")) { opt.num_layers = atoi(v); i++; }
        else if (!strcmp(a, "--logits-out")) { logits_out = v; i++; }
        else if (!strcmp(a, "--fp8-bf16-layers")) {
            char end = 0;
            if (sscanf(v, "%d,%d%c", &fp8.bf16_layers_start, &fp8.bf16_layers_end, &end) != 2 ||
                fp8.bf16_layers_start < 0 || fp8.bf16_layers_end < 0) {
                fprintf(stderr, "generate: --fp8-bf16-layers is START,END (two counts >= 0, e.g. 1,1)\n");
                return 2;
            }
            i++;
        }
        else if (!strcmp(a, "--backend")) {
            backend_chosen = 1;
            if (!strcmp(v, "cuda")) opt.backend = TE_LLAMA_BACKEND_CUDA;
            else if (!strcmp(v, "cpu")) opt.backend = TE_LLAMA_BACKEND_CPU;
            else { fprintf(stderr, "generate: --backend is cpu or cuda\n"); return 2; }
            i++;
        } else if (!strcmp(a, "--decoder")) {
            if (!strcmp(v, "vanilla")) opt.decoder = te_llama_vanilla_decoder;
            else if (strcmp(v, "te")) { fprintf(stderr, "generate: --decoder is te or vanilla\n"); return 2; }
            i++;
        } else if (!strcmp(a, "--dtype")) {
            if (!strcmp(v, "f32")) opt.dtype = TE_LLAMA_F32;
            else if (!strcmp(v, "bf16")) opt.dtype = TE_LLAMA_BF16;
            else if (!strcmp(v, "f16")) opt.dtype = TE_LLAMA_F16;
            else if (!strcmp(v, "fp8")) opt.fp8 = &fp8;
            else { fprintf(stderr, "generate: --dtype is f32, bf16, f16 or fp8\n"); return 2; }
            i++;
        } else { fprintf(stderr, "generate: unknown option %s (try --help)\n", a); return 2; }
    }
    if (n_new < 0 || (text && ids_text)) { usage(stderr); return 2; }
    if ((fp8.bf16_layers_start || fp8.bf16_layers_end) && !opt.fp8) {
        fprintf(stderr, "generate: --fp8-bf16-layers needs --dtype fp8\n");
        return 2;
    }
    if (!dir) dir = default_model(argv[0]);
    if (!seed_given) g.sampler.seed = (uint64_t)time(NULL);
    if (!quiet && isatty(2)) opt.progress = progress;
    opt.log = log_message;
    t0 = now_s();
    if ((r = te_llama_load(dir, &opt, &m))) { fprintf(stderr, "generate: %s\n", te_llama_last_error()); return 1; }
    t1 = now_s();
    if (!quiet) {
        te_llama_memory mem;
        fprintf(stderr, "loaded %s (%d layers, %s, %s%s) in %.2f s", dir, m->config.num_hidden_layers, m->layers[0]->kind,
                m->options.backend == TE_LLAMA_BACKEND_CUDA ? "cuda" : "cpu",
                m->fp8 ? (m->options.backend == TE_LLAMA_BACKEND_CUDA ? ", FP8" : ", FP8 emulated") : "", t1 - t0);
        if (te_llama_memory_usage(m, NULL, &mem) == TE_LLAMA_OK) {
            fprintf(stderr, ": %.1f MB of parameters", mem.parameter_bytes / 1e6);
            if (mem.device_total) fprintf(stderr, ", device %.1f of %.1f GB free", mem.device_free / 1e9, mem.device_total / 1e9);
        }
        fputc('\n', stderr);
    }
    /* the prompt */
    if (ids_text) {
        const char *s = ids_text;
        char *end;
        prompt = (int32_t *)malloc(sizeof(int32_t) * (strlen(ids_text) / 2 + 2));
        for (;;) {
            long id = strtol(s, &end, 10);
            if (end == s) break;
            prompt[n_prompt++] = (int32_t)id;
            s = end;
        }
        while (*s == ' ' || *s == '\n' || *s == '\t') s++;
        if (*s) { fprintf(stderr, "generate: --prompt-ids: not an id at \"%s\"\n", s); return 2; }
    }
    if (!st.print_ids || text) { /* text in or text out: the checkpoint's tokenizer.json */
        te_llama_tokenizer *tok = NULL;
        if ((r = te_llama_tokenizer_load(dir, NULL, &tok))) {
            if (text) { fprintf(stderr, "generate: %s\n", te_llama_last_error()); return 1; }
            if (!quiet) fprintf(stderr, "generate: no usable tokenizer (%s): printing ids\n", te_llama_last_error());
        }
        st.tok = tok;
    }
    if (text) {
        size_t n = 0;
        if (chat) r = te_llama_tokenizer_chat(st.tok, NULL, text, &prompt, &n);
        else r = te_llama_tokenizer_encode(st.tok, text, strlen(text), 1, &prompt, &n);
        if (r) { fprintf(stderr, "generate: %s\n", te_llama_last_error()); return 1; }
        {   /* Llama expects BOS first; Llama 3's tokenizer template does not add it, so add it here */
            int add_bos = m->config.bos_token_id >= 0 && (n == 0 || prompt[0] != m->config.bos_token_id);
            int32_t *copy = (int32_t *)malloc(sizeof(int32_t) * (n + 1));
            if (add_bos) copy[0] = m->config.bos_token_id;
            memcpy(copy + add_bos, prompt, sizeof(int32_t) * n);
            te_llama_tokenizer_free_ids(st.tok, prompt);
            prompt = copy;
            n_prompt = (int)n + add_bos;
        }
        if (!st.print_ids) { fputs(text, stdout); fflush(stdout); }
    } else if (!ids_text) {
        fprintf(stderr, "generate: give a prompt with -p TEXT or --prompt-ids \"1 2 3\" (try --help)\n");
        return 2;
    }
    if (n_prompt == 0) { fprintf(stderr, "generate: empty prompt\n"); return 2; }
    if (m->fp8) { /* FP8: seed the activation scales with one high-precision pass over the prompt (TE's calibrating) */
        te_llama_kv_cache *cache;
        te_llama_batch b;
        int32_t *pos = (int32_t *)malloc(sizeof(int32_t) * (size_t)n_prompt);
        for (i = 0; i < n_prompt; i++) pos[i] = i;
        memset(&b, 0, sizeof b);
        b.n_tokens = n_prompt;
        b.tokens = prompt;
        b.pos = pos;
        if ((r = te_llama_fp8_calibrate(m, 1)) || (r = te_llama_kv_cache_create(m, 1, n_prompt, &cache))) {
            fprintf(stderr, "generate: %s\n", te_llama_last_error());
            return 1;
        }
        r = te_llama_forward(m, cache, &b, NULL);
        te_llama_kv_cache_free(cache);
        free(pos);
        if (r || (r = te_llama_fp8_calibrate(m, 0))) { fprintf(stderr, "generate: %s\n", te_llama_last_error()); return 1; }
    }
    if (logits_out) { /* every prompt position's logits */
        te_llama_kv_cache *cache;
        te_llama_batch b;
        int32_t *pos = (int32_t *)malloc(sizeof(int32_t) * (size_t)n_prompt);
        float *logits = (float *)malloc(sizeof(float) * (size_t)n_prompt * (size_t)m->config.vocab_size);
        FILE *f;
        for (i = 0; i < n_prompt; i++) pos[i] = i;
        memset(&b, 0, sizeof b);
        b.n_tokens = n_prompt;
        b.tokens = prompt;
        b.pos = pos;
        if ((r = te_llama_kv_cache_create(m, 1, n_prompt, &cache)) || (r = te_llama_forward(m, cache, &b, logits))) {
            fprintf(stderr, "generate: %s\n", te_llama_last_error());
            return 1;
        }
        te_llama_kv_cache_free(cache);
        f = fopen(logits_out, "wb");
        if (!f || fwrite(logits, sizeof(float), (size_t)n_prompt * m->config.vocab_size, f) != (size_t)n_prompt * m->config.vocab_size) {
            fprintf(stderr, "generate: writing %s failed\n", logits_out);
            return 1;
        }
        fclose(f);
        free(pos);
        free(logits);
    }
    if (n_new > 0) {
        out = (int32_t *)malloc(sizeof(int32_t) * (size_t)n_new);
        g.max_new_tokens = n_new;
        g.on_token = on_token;
        g.user = &st;
        t1 = now_s();
        if ((r = te_llama_generate(m, &g, prompt, n_prompt, out, n_new, &n_out))) { fprintf(stderr, "\ngenerate: %s\n", te_llama_last_error()); return 1; }
        t2 = now_s();
        printf("\n");
        if (!quiet)
            fprintf(stderr, "%d prompt + %d new tokens in %.3f s: %.1f tokens/s (seed %llu)\n", n_prompt, n_out, t2 - t1,
                    n_out / (t2 - t1), (unsigned long long)g.sampler.seed);
    }
    free(out);
    free(prompt);
    te_llama_tokenizer_free(st.tok);
    te_llama_free(m);
    return 0;
}
