/* inspect: what a checkpoint holds, and where each HF tensor goes in the TE layout.
   build/inspect MODEL_DIR [--decoder te|vanilla] */
#define TE_LLAMA_IMPLEMENTATION
#include "../te_llama.h"

static void usage(FILE *f) {
    fprintf(f, "usage: inspect MODEL_DIR [--decoder te|vanilla]\n"
               "  Prints the config summary, the shards, and every parameter: TE name <- HF name(s), dtype, shape.\n");
}

int main(int argc, char **argv) {
    te_llama_options opt;
    te_llama_model *m;
    const char *dir = NULL;
    int i, s, n;
    size_t total = 0;
    memset(&opt, 0, sizeof opt);
    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) { usage(stdout); return 0; }
        else if (!strcmp(argv[i], "--decoder") && i + 1 < argc) {
            i++;
            if (!strcmp(argv[i], "vanilla")) opt.decoder = te_llama_vanilla_decoder;
            else if (strcmp(argv[i], "te")) { usage(stderr); return 2; }
        } else if (argv[i][0] != '-' && !dir) dir = argv[i];
        else { usage(stderr); return 2; }
    }
    if (!dir) { usage(stderr); return 2; }
    if (te_llama_load(dir, &opt, &m)) { fprintf(stderr, "inspect: %s\n", te_llama_last_error()); return 1; }
    {
        const te_llama_config *c = &m->config;
        static const char *ropes[] = {"default", "linear", "llama3"};
        printf("model: %s\n", dir);
        printf("  layers %d, hidden %d, intermediate %d, heads %d (kv %d, head_dim %d), vocab %d\n", c->num_hidden_layers, c->hidden_size,
               c->intermediate_size, c->num_attention_heads, c->num_key_value_heads, c->head_dim, c->vocab_size);
        printf("  rope %s theta %g", ropes[c->rope_type], c->rope_theta);
        if (c->rope_type) printf(" factor %g", c->rope_factor);
        printf(", rms_norm_eps %g, max positions %d, dtype %s, %s embeddings\n", c->rms_norm_eps, c->max_position_embeddings,
               te_llama_dtype_name(c->dtype), c->tie_word_embeddings ? "tied" : "untied");
        printf("  bos %d, eos", c->bos_token_id);
        for (i = 0; i < m->n_eos_token_ids; i++) printf(" %d", m->eos_token_ids[i]);
        printf("\n  decoder layers: %s\n", m->layers[0]->kind);
    }
    { /* the shards and their tensors, as stored */
        char path[4096];
        struct dirent **names;
        int k, count = scandir(dir, &names, NULL, alphasort);
        printf("shards:\n");
        for (k = 0; k < count; k++) {
            struct dirent *e = names[k];
            te_llama_safetensors st;
            size_t len = strlen(e->d_name);
            if (len < 12 || strcmp(e->d_name + len - 12, ".safetensors")) continue;
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            if (te_llama_safetensors_open(path, NULL, &st)) { printf("  %s: %s\n", e->d_name, te_llama_last_error()); continue; }
            printf("  %s: %zu tensors, %llu bytes of data\n", e->d_name, st.n_tensors, (unsigned long long)st.data_len);
            te_llama_safetensors_free(&st);
        }
        for (k = 0; k < count; k++) free(names[k]);
        if (count > 0) free(names);
    }
    printf("parameters (TE name <- HF name [rows], dtype, shape):\n");
    n = te_llama_num_parameters(m);
    for (i = 0; i < n; i++) {
        te_llama_param *p = te_llama_parameter(m, i);
        printf("  %-60s %-5s [%lld", p->name, te_llama_dtype_name(p->dtype), (long long)p->shape[0]);
        if (p->ndim == 2) printf(", %lld", (long long)p->shape[1]);
        printf("]\n");
        for (s = 0; s < p->n_sources; s++)
            printf("      <- %s rows [%lld, %lld)\n", p->sources[s].name, (long long)p->sources[s].row_begin,
                   (long long)(p->sources[s].row_begin + p->sources[s].n_rows));
        total += te_llama_param_numel(p);
    }
    printf("%zu parameters in %d tensors\n", total, n);
    te_llama_free(m);
    return 0;
}
