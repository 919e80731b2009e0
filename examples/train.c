/* train: fine-tune an HF Llama checkpoint on a text file, on the CPU or the GPU, and save an HF checkpoint.
   build/train -m MODEL_DIR -d TEXT_FILE -o OUT_DIR [--backend cpu|cuda] [--steps N] [--batch B] [--seq T] [--lr LR]
               [--warmup N] [--eval-every N] [--holdout FRAC] [--seed S] [--grad-accum K] [--resume STATE] */
#define TE_LLAMA_IMPLEMENTATION
#include "../te_llama.h"

#include <time.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: train -m MODEL_DIR -d TEXT_FILE -o OUT_DIR [options]\n"
            "Fine-tunes an HF Llama checkpoint on a text file (AdamW with fp32 master weights; CPU: fp32 math, CUDA:\n"
            "bf16 weights and activations on the tensor cores) and\n"
            "saves OUT_DIR as an HF checkpoint (with MODEL_DIR's tokenizer files) plus OUT_DIR/optimizer.safetensors.\n"
            "The text is tokenized with MODEL_DIR/tokenizer.json (BOS as the tokenizer adds it), cut into sequences of\n"
            "T tokens (the tail that does not fill one is dropped); the last FRAC of them are held out for evaluation,\n"
            "the rest are shuffled. The loss is HF's: each position predicts the next token, mean over positions.\n"
            "  -m MODEL_DIR        the checkpoint to start from (a resumed run: the OUT_DIR of the previous one)\n"
            "  -d TEXT_FILE        training text (UTF-8)\n"
            "  -o OUT_DIR          where to save the checkpoint, the tokenizer files and the optimizer state\n"
            "  --backend B         cpu (default) or cuda (BF16 parameters; the saved checkpoint is BF16)\n"
            "  --steps N           optimizer steps in all, counting those of a resumed state (default 20)\n"
            "  --batch B           sequences per micro-batch (default 4)\n"
            "  --seq T             tokens per sequence (default 128)\n"
            "  --grad-accum K      micro-batches per optimizer step (default 1)\n"
            "  --lr LR             peak learning rate (default 1e-3); cosine decay to 0.1 LR at the last step\n"
            "  --warmup N          linear warmup steps (default 2)\n"
            "  --weight-decay W    AdamW weight decay on 2-D parameters (default 0.01)\n"
            "  --eval-every N      held-out loss every N steps (default 5; 0: only before and after)\n"
            "  --holdout FRAC      fraction of the sequences held out (default 0.05; at least one)\n"
            "  --seed S            shuffling seed (default 1)\n"
            "  --resume STATE      optimizer state saved by an earlier run (OUT_DIR/optimizer.safetensors)\n"
            "Progress (loss, held-out loss, tokens/s) goes to stderr; OUT_DIR/train_log.json records the arguments\n"
            "and the final held-out loss for tools/check_finetuned.py.\n");
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t rng_next(uint64_t *s) { /* splitmix64 */
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int copy_file(const char *from, const char *to) {
    FILE *a = fopen(from, "rb"), *b;
    char buf[65536];
    size_t n;
    int ok = 1;
    if (!a) return 0;
    if (!(b = fopen(to, "wb"))) { fclose(a); return 0; }
    while ((n = fread(buf, 1, sizeof buf, a)) > 0) ok &= fwrite(buf, 1, n, b) == n;
    ok &= !ferror(a);
    fclose(a);
    ok &= fclose(b) == 0;
    return ok;
}

/* Mean loss over the held-out sequences (every one has T - 1 predictions, so the mean of equal-size chunks). */
static te_llama_result heldout_loss(te_llama_model *m, const int32_t *seqs, int n_seq, int T, int B, double *out) {
    double sum = 0;
    int i;
    for (i = 0; i < n_seq; i += B) {
        int b = n_seq - i < B ? n_seq - i : B;
        double loss;
        te_llama_result r = te_llama_eval_loss(m, seqs + (size_t)i * T, NULL, b, T, &loss);
        if (r) return r;
        sum += loss * b;
    }
    *out = sum / n_seq;
    return TE_LLAMA_OK;
}

#define FAIL(...) do { fprintf(stderr, "train: "); fprintf(stderr, __VA_ARGS__); fprintf(stderr, "\n"); goto done; } while (0)

int main(int argc, char **argv) {
    const char *model_dir = NULL, *data = NULL, *out_dir = NULL, *resume = NULL;
    int steps = 20, B = 4, T = 128, warmup = 2, eval_every = 5, accum = 1, cuda = 0, i, rc = 1;
    double lr = 1e-3, holdout = 0.05, wd = 0.01, held = 0, held0 = 0;
    uint64_t seed = 1;
    te_llama_options opt;
    te_llama_train_options to;
    te_llama_model *m = NULL;
    te_llama_tokenizer *tok = NULL;
    te_llama_trainer *tr = NULL;
    int32_t *ids = NULL, *order = NULL, *batch = NULL;
    size_t n_ids = 0, text_len = 0;
    char *text = NULL, path[4096], from[4096];
    int n_seq, n_held, n_train, cursor = 0;
    FILE *f;
    te_llama_result r;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
#define ARG(name) (!strcmp(a, name) && v && ++i)
        if (ARG("-m")) model_dir = v;
        else if (ARG("-d")) data = v;
        else if (ARG("-o")) out_dir = v;
        else if (ARG("--steps")) steps = atoi(v);
        else if (ARG("--batch")) B = atoi(v);
        else if (ARG("--seq")) T = atoi(v);
        else if (ARG("--lr")) lr = atof(v);
        else if (ARG("--warmup")) warmup = atoi(v);
        else if (ARG("--weight-decay")) wd = atof(v);
        else if (ARG("--eval-every")) eval_every = atoi(v);
        else if (ARG("--holdout")) holdout = atof(v);
        else if (ARG("--seed")) seed = strtoull(v, NULL, 10);
        else if (ARG("--grad-accum")) accum = atoi(v);
        else if (ARG("--resume")) resume = v;
        else if (ARG("--backend") && (!strcmp(v, "cpu") || !strcmp(v, "cuda"))) cuda = !strcmp(v, "cuda");
        else { fprintf(stderr, "train: unknown or incomplete argument %s\n", a); usage(stderr); return 2; }
#undef ARG
    }
    if (!model_dir || !data || !out_dir) { usage(stderr); return 2; }
    if (steps < 1 || B < 1 || T < 2 || accum < 1 || lr <= 0 || warmup < 0 || eval_every < 0 || !(holdout > 0 && holdout < 1)) {
        fprintf(stderr, "train: bad numbers (steps >= 1, batch >= 1, seq >= 2, grad-accum >= 1, lr > 0, 0 < holdout < 1)\n");
        return 2;
    }
    /* the text, tokenized and cut into sequences */
    if (!(f = fopen(data, "rb"))) FAIL("%s: cannot open", data);
    fseek(f, 0, SEEK_END);
    text_len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    text = (char *)malloc(text_len + 1);
    if (!text || fread(text, 1, text_len, f) != text_len) { fclose(f); FAIL("%s: cannot read", data); }
    fclose(f);
    if ((r = te_llama_tokenizer_load(model_dir, NULL, &tok))) FAIL("tokenizer: %s", te_llama_last_error());
    if ((r = te_llama_tokenizer_encode(tok, text, text_len, 1, &ids, &n_ids))) FAIL("tokenizing: %s", te_llama_last_error());
    n_seq = (int)(n_ids / (size_t)T);
    n_held = (int)(n_seq * holdout + 0.999999);
    if (n_held < 1) n_held = 1;
    n_train = n_seq - n_held;
    if (n_train < 1) FAIL("%zu tokens make %d sequences of %d: too few to hold %d out", n_ids, n_seq, T, n_held);
    fprintf(stderr, "train: %zu bytes -> %zu tokens -> %d sequences of %d (%d for training, the last %d held out)\n", text_len, n_ids, n_seq, T, n_train, n_held);
    /* the model: TE layers, on the CPU with storage as the checkpoint says, or on the GPU in BF16 (the trainer
       keeps fp32 masters either way) */
    memset(&opt, 0, sizeof opt);
    opt.decoder = te_llama_te_decoder;
    if (cuda) {
        opt.backend = TE_LLAMA_BACKEND_CUDA;
        opt.dtype = TE_LLAMA_BF16;
    }
    if ((r = te_llama_load(model_dir, &opt, &m))) FAIL("loading %s: %s", model_dir, te_llama_last_error());
    if (cuda && m->options.backend != TE_LLAMA_BACKEND_CUDA) FAIL("--backend cuda: no CUDA device (or a build without TE_LLAMA_CUDA)");
    if (T > m->config.max_position_embeddings) FAIL("--seq %d exceeds the model's %d positions", T, m->config.max_position_embeddings);
    memset(&to, 0, sizeof to);
    to.lr = (float)lr;
    to.weight_decay = wd > 0 ? (float)wd : -1.0f;
    to.warmup_steps = warmup;
    to.total_steps = steps;
    to.grad_accum = accum;
    if ((r = te_llama_trainer_create(m, &to, &tr))) FAIL("trainer: %s", te_llama_last_error());
    if (resume && (r = te_llama_trainer_load_state(tr, resume))) FAIL("resuming from %s: %s", resume, te_llama_last_error());
    /* a shuffled order of the training sequences, drawn again each epoch */
    order = (int32_t *)malloc(sizeof(int32_t) * (size_t)n_train);
    batch = (int32_t *)malloc(sizeof(int32_t) * (size_t)B * T);
    if (!order || !batch) FAIL("out of memory");
    for (i = 0; i < n_train; i++) order[i] = i;
    {
        const int32_t *held_seqs = ids + (size_t)n_train * T;
        double t0;
        if ((r = heldout_loss(m, held_seqs, n_held, T, B, &held0))) FAIL("eval: %s", te_llama_last_error());
        fprintf(stderr, "step %4lld  held-out loss %.4f (ppl %.1f)\n", (long long)tr->step, held0, exp(held0));
        held = held0;
        while (tr->step < steps) {
            double t_step = now_s(), loss = 0;
            int k, s;
            for (k = 0; k < accum; k++) {
                for (s = 0; s < B; s++) {
                    if (cursor == 0) { /* new epoch: Fisher-Yates */
                        int j;
                        for (j = n_train - 1; j > 0; j--) {
                            int x = (int)(rng_next(&seed) % (uint64_t)(j + 1));
                            int32_t tmp = order[j]; order[j] = order[x]; order[x] = tmp;
                        }
                    }
                    memcpy(batch + (size_t)s * T, ids + (size_t)order[cursor] * T, sizeof(int32_t) * (size_t)T);
                    cursor = (cursor + 1) % n_train;
                }
                if ((r = te_llama_train_step(tr, batch, NULL, B, T, &loss))) FAIL("step %lld: %s", (long long)tr->step, te_llama_last_error());
            }
            t0 = now_s() - t_step;
            fprintf(stderr, "step %4lld  loss %.4f  lr %.2e  grad norm %.3f  %.0f tokens/s\n", (long long)tr->step, tr->last_loss, tr->last_lr,
                    tr->last_grad_norm, (double)B * T * accum / t0);
            if ((eval_every && tr->step % eval_every == 0) || tr->step == steps) {
                if ((r = heldout_loss(m, held_seqs, n_held, T, B, &held))) FAIL("eval: %s", te_llama_last_error());
                fprintf(stderr, "step %4lld  held-out loss %.4f (ppl %.1f)\n", (long long)tr->step, held, exp(held));
            }
        }
    }
    /* the checkpoint, the tokenizer files beside it, the optimizer state, and a log for check_finetuned.py */
    if ((r = te_llama_save(m, out_dir, NULL))) FAIL("saving %s: %s", out_dir, te_llama_last_error());
    {
        static const char *const files[3] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"};
        for (i = 0; i < 3; i++) {
            snprintf(from, sizeof from, "%s/%s", model_dir, files[i]);
            snprintf(path, sizeof path, "%s/%s", out_dir, files[i]);
            if ((f = fopen(from, "rb")) != NULL) {
                fclose(f);
                if (!copy_file(from, path)) FAIL("copying %s to %s", from, path);
            }
        }
    }
    snprintf(path, sizeof path, "%s/optimizer.safetensors", out_dir);
    if ((r = te_llama_trainer_save_state(tr, path))) FAIL("saving the optimizer state: %s", te_llama_last_error());
    snprintf(path, sizeof path, "%s/train_log.json", out_dir);
    if (!(f = fopen(path, "w"))) FAIL("%s: cannot write", path);
    fprintf(f, "{\n  \"seq\": %d,\n  \"holdout\": %.17g,\n  \"n_sequences\": %d,\n  \"n_heldout\": %d,\n  \"steps\": %lld,\n"
               "  \"heldout_loss_before\": %.9f,\n  \"heldout_loss\": %.9f\n}\n", T, holdout, n_seq, n_held, (long long)tr->step, held0, held);
    fclose(f);
    fprintf(stderr, "train: saved %s (held-out loss %.4f -> %.4f)\n", out_dir, held0, held);
    rc = 0;
done:
    te_llama_trainer_free(tr);
    te_llama_free(m);
    if (tok) te_llama_tokenizer_free_ids(tok, ids);
    te_llama_tokenizer_free(tok);
    free(text);
    free(order);
    free(batch);
    return rc;
}
