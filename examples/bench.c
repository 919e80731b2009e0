/* bench: the project's side of bench/bench.py. Loads a checkpoint, then times prefill and greedy decode.
   build/bench -m MODEL_DIR [--backend cpu|cuda] [--dtype bf16|fp8] [--fp8-bf16-layers START,END]
               [--prefill-batch B] [--prefill-len T] [--decode-batch B] [--prompt N] [--new N] [--repeat R]
   Prints one JSON object on stdout: load_s, peak_rss_mib (after loading), prefill_ms, prefill_tok_s,
   decode_tok_s (new tokens per second summed over the batch); with --dtype fp8 also fp8_logits_rel_l2, the
   relative L2 distance of the FP8 prefill's last-token logits from the same model's BF16 ones. */
#define TE_LLAMA_IMPLEMENTATION
#include "../te_llama.h"

#include <math.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* This process's peak resident memory. Not getrusage's ru_maxrss: Linux keeps that across exec, so a child of a
   big Python parent would report the parent's peak. VmHWM belongs to this program's own address space. */
static double peak_rss_mib(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmHWM:", 6)) kb = atof(line + 6);
    if (f) fclose(f);
    return kb / 1024.0;
}

static void usage(FILE *f) {
    fprintf(f, "usage: bench -m MODEL_DIR [--backend cpu|cuda] [--dtype bf16|fp8] [--fp8-bf16-layers START,END]\n"
               "             [--prefill-batch B] [--prefill-len T] [--decode-batch B] [--prompt N] [--new N]\n"
               "             [--repeat R]\n"
               "Loads MODEL_DIR, times a prefill of B sequences of T tokens (best of R) and a greedy decode of N new\n"
               "tokens after an N-token prompt for a batch of sequences; prints JSON on stdout.\n"
               "fp8: FP8 GEMMs (TE DelayedScaling, E4M3), scales calibrated by one BF16 pass over the prefill batch,\n"
               "whose logits are the reference for fp8_logits_rel_l2. --fp8-bf16-layers keeps the first START and\n"
               "the last END decoder layers out of FP8 (default 0,0).\n"
               "Defaults: cpu, bf16 (the checkpoint's dtype), prefill 1 x 128, decode batch 1, prompt 128, new 128,\n"
               "repeat 3. 0 skips a part.\n");
}

static int die(const char *what) {
    fprintf(stderr, "bench: %s: %s\n", what, te_llama_last_error());
    return 1;
}

/* Deterministic pseudo-random token ids (not zeros: real data, METHOD.md). */
static int32_t token_at(int seq, int pos, int vocab) { return (int32_t)((seq * 7919u + pos * 104729u + 17u) % (unsigned)vocab); }

int main(int argc, char **argv) {
    te_llama_options opt;
    te_llama_fp8_recipe recipe; /* all-zero: TE's defaults */
    te_llama_model *m;
    double fp8_rel_l2 = -1;
    const char *dir = NULL;
    int pb = 1, pt = 128, db = 1, prompt = 128, n_new = 128, repeat = 3, i, s, r;
    double t0, load_s, prefill_best = 0, decode_s = 0;
    double rss_after_load;
    memset(&opt, 0, sizeof opt);
    memset(&recipe, 0, sizeof recipe);
    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        else if (!v) { usage(stderr); return 2; }
        else if (!strcmp(a, "-m")) dir = v;
        else if (!strcmp(a, "--backend")) opt.backend = strcmp(v, "cuda") ? TE_LLAMA_BACKEND_CPU : TE_LLAMA_BACKEND_CUDA;
        else if (!strcmp(a, "--dtype") && !strcmp(v, "fp8")) opt.fp8 = &recipe;
        else if (!strcmp(a, "--dtype") && !strcmp(v, "bf16")) opt.fp8 = NULL;
        else if (!strcmp(a, "--prefill-batch")) pb = atoi(v);
        else if (!strcmp(a, "--prefill-len")) pt = atoi(v);
        else if (!strcmp(a, "--decode-batch")) db = atoi(v);
        else if (!strcmp(a, "--prompt")) prompt = atoi(v);
        else if (!strcmp(a, "--new")) n_new = atoi(v);
        else if (!strcmp(a, "--repeat")) repeat = atoi(v);
        else if (!strcmp(a, "--fp8-bf16-layers")) {
            if (sscanf(v, "%d,%d", &recipe.bf16_layers_start, &recipe.bf16_layers_end) != 2) {
                usage(stderr);
                return 2;
            }
        } else { usage(stderr); return 2; }
        i++;
    }
    if (!dir || repeat < 1) { usage(stderr); return 2; }
    t0 = now_s();
    if (te_llama_load(dir, &opt, &m)) return die("load");
    load_s = now_s() - t0;
    rss_after_load = peak_rss_mib();
    if (pb > 0 && pt > 0) { /* prefill: pb sequences of pt tokens in one forward, logits of the last token of each */
        int n = pb * pt;
        int32_t *tok = (int32_t *)malloc(sizeof(int32_t) * (size_t)n), *pos = (int32_t *)malloc(sizeof(int32_t) * (size_t)n);
        int32_t *seq = (int32_t *)malloc(sizeof(int32_t) * (size_t)n);
        uint8_t *want = (uint8_t *)calloc((size_t)n, 1);
        float *logits = (float *)malloc(sizeof(float) * (size_t)pb * m->config.vocab_size);
        float *ref = NULL;
        te_llama_kv_cache *cache;
        te_llama_batch b;
        for (s = 0; s < pb; s++)
            for (i = 0; i < pt; i++) {
                tok[s * pt + i] = token_at(s, i, m->config.vocab_size);
                pos[s * pt + i] = i;
                seq[s * pt + i] = s;
                want[s * pt + i] = i == pt - 1;
            }
        if (te_llama_kv_cache_create(m, pb, pt, &cache)) return die("kv cache");
        memset(&b, 0, sizeof b);
        b.n_tokens = n; b.tokens = tok; b.pos = pos; b.seq = seq; b.want_logits = want;
        if (m->fp8) { /* one BF16 pass records the amaxes (TE's calibrating=True); its logits are the reference */
            ref = (float *)malloc(sizeof(float) * (size_t)pb * m->config.vocab_size);
            if (te_llama_fp8_calibrate(m, 1) || te_llama_forward(m, cache, &b, ref) || te_llama_fp8_calibrate(m, 0))
                return die("fp8 calibration");
        }
        for (r = 0; r < repeat + 1; r++) { /* the first run warms up (handles, workspace, module load) */
            t0 = now_s();
            if (te_llama_forward(m, cache, &b, logits)) return die("prefill"); /* logits on the host: synchronised */
            t0 = now_s() - t0;
            if (r > 0 && (prefill_best == 0 || t0 < prefill_best)) prefill_best = t0;
        }
        if (ref) { /* the last timed FP8 forward against the BF16 pass */
            double num = 0, den = 0;
            for (i = 0; i < pb * m->config.vocab_size; i++) {
                num += ((double)logits[i] - ref[i]) * ((double)logits[i] - ref[i]);
                den += (double)ref[i] * ref[i];
            }
            fp8_rel_l2 = den > 0 ? sqrt(num / den) : 0;
            free(ref);
        }
        te_llama_kv_cache_free(cache);
        free(tok); free(pos); free(seq); free(want); free(logits);
    }
    if (db > 0 && n_new > 0) { /* greedy decode after a prompt */
        if (db == 1) { /* te_llama_generate: sampling stays on the device */
            te_llama_generate_options g;
            int32_t *p = (int32_t *)malloc(sizeof(int32_t) * (size_t)prompt), *out = (int32_t *)malloc(sizeof(int32_t) * (size_t)n_new);
            int n_out = 0;
            double prefill_only;
            memset(&g, 0, sizeof g);
            g.ignore_eos = 1;
            for (i = 0; i < prompt; i++) p[i] = token_at(0, i, m->config.vocab_size);
            g.max_new_tokens = 1; /* warm up, and time the prompt alone to subtract it */
            if (te_llama_generate(m, &g, p, prompt, out, n_new, &n_out)) return die("generate");
            t0 = now_s();
            if (te_llama_generate(m, &g, p, prompt, out, n_new, &n_out)) return die("generate");
            prefill_only = now_s() - t0;
            g.max_new_tokens = n_new;
            t0 = now_s();
            if (te_llama_generate(m, &g, p, prompt, out, n_new, &n_out)) return die("generate");
            decode_s = now_s() - t0 - prefill_only; /* the n_new - 1 decode steps */
            n_new = n_out - 1;
            free(p); free(out);
        } else { /* te_llama_generate_batch: one forward a step over the whole batch, sampling on the device */
            te_llama_generate_options g;
            int32_t *p = (int32_t *)malloc(sizeof(int32_t) * (size_t)db * prompt), *out = (int32_t *)malloc(sizeof(int32_t) * (size_t)db * n_new);
            const int32_t **prompts = (const int32_t **)malloc(sizeof *prompts * (size_t)db);
            int *lens = (int *)malloc(sizeof(int) * (size_t)db), *n_out = (int *)malloc(sizeof(int) * (size_t)db), fewest;
            double prefill_only;
            memset(&g, 0, sizeof g);
            g.ignore_eos = 1;
            for (s = 0; s < db; s++) {
                for (i = 0; i < prompt; i++) p[(size_t)s * prompt + i] = token_at(s, i, m->config.vocab_size);
                prompts[s] = p + (size_t)s * prompt;
                lens[s] = prompt;
            }
            g.max_new_tokens = 1; /* warm up, and time the prompts alone to subtract them */
            if (te_llama_generate_batch(m, &g, prompts, lens, db, out, n_new, n_out)) return die("generate batch");
            t0 = now_s();
            if (te_llama_generate_batch(m, &g, prompts, lens, db, out, n_new, n_out)) return die("generate batch");
            prefill_only = now_s() - t0;
            g.max_new_tokens = n_new;
            t0 = now_s();
            if (te_llama_generate_batch(m, &g, prompts, lens, db, out, n_new, n_out)) return die("generate batch");
            decode_s = now_s() - t0 - prefill_only; /* the n_new - 1 decode steps of the batch */
            for (s = 1, fewest = n_out[0]; s < db; s++) if (n_out[s] < fewest) fewest = n_out[s];
            n_new = fewest - 1;
            free(p); free(out); free(prompts); free(lens); free(n_out);
        }
    }
    printf("{\"load_s\": %.4f, \"peak_rss_mib\": %.1f, \"dtype\": \"%s\", \"prefill_batch\": %d, \"prefill_len\": %d, "
           "\"prefill_ms\": %.3f, \"prefill_tok_s\": %.1f, \"decode_batch\": %d, \"decode_new\": %d, \"decode_tok_s\": %.2f",
           load_s, rss_after_load, m->fp8 ? "fp8" : "bf16", pb, pt, prefill_best * 1e3,
           prefill_best > 0 ? pb * pt / prefill_best : 0.0, db, n_new, decode_s > 0 ? (double)db * n_new / decode_s : 0.0);
    if (fp8_rel_l2 >= 0) printf(", \"fp8_logits_rel_l2\": %.6g", fp8_rel_l2);
    if (m->fp8) printf(", \"fp8_bf16_layers\": [%d, %d]", recipe.bf16_layers_start, recipe.bf16_layers_end);
    printf("}\n");
    te_llama_free(m);
    return 0;
}
