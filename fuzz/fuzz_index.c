/* fuzz_index.c - libFuzzer target for the model.safetensors.index.json path of te_llama_load. The input is
   written as model.safetensors.index.json into a per-process temporary directory that also holds the
   config.json of tests/fixtures/gqa_tied_llama3 (embedded below), copies of that fixture's 19 shards (when
   the fixture is found: run from the repository root, or set FUZZ_FIXTURE to its directory), a link to one
   of them inside the directory and a link to one outside it; then te_llama_load, and te_llama_free.
   A load that succeeds must have filled every parameter.
   Build (from the repository root; fuzz/run.sh does this):
     clang -fsanitize=fuzzer,address,undefined -g -O1 -I. fuzz/fuzz_index.c -o build/fuzz/fuzz_index -lm
   Run: build/fuzz/fuzz_index -dict=fuzz/fuzz_index.dict fuzz/corpus/fuzz_index */
#define TE_LLAMA_IMPLEMENTATION
#include "te_llama.h"

#include <dirent.h>
#include <sys/stat.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FUZZ_ASSERT(c) do { if (!(c)) __builtin_trap(); } while (0)

static const char config_json[] =
    "{\"architectures\":[\"LlamaForCausalLM\"],\"attention_bias\":false,\"bos_token_id\":1,\"dtype\":\"float32\","
    "\"eos_token_id\":[2,3],\"head_dim\":16,\"hidden_act\":\"silu\",\"hidden_size\":64,\"initializer_range\":0.1,"
    "\"intermediate_size\":96,\"max_position_embeddings\":256,\"mlp_bias\":false,\"model_type\":\"llama\","
    "\"num_attention_heads\":4,\"num_hidden_layers\":3,\"num_key_value_heads\":2,\"rms_norm_eps\":1e-05,"
    "\"rope_parameters\":{\"factor\":8.0,\"high_freq_factor\":4.0,\"low_freq_factor\":1.0,"
    "\"original_max_position_embeddings\":64,\"rope_theta\":500000.0,\"rope_type\":\"llama3\"},"
    "\"tie_word_embeddings\":true,\"vocab_size\":256}";

static char root[1024], dir[1200], index_path[1300];

static void write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(data, 1, n, f) != n) || fclose(f) != 0) {
        fprintf(stderr, "fuzz_index: cannot write %s\n", path);
        abort();
    }
}

static void copy_file(const char *from, const char *to) {
    FILE *f = fopen(from, "rb");
    char *buf;
    long n;
    if (!f) return;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = (char *)malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) == (size_t)n) write_file(to, buf, (size_t)n);
    free(buf);
    fclose(f);
}

static void remove_tree(void) {
    char cmd[1400];
    if (!root[0]) return;
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    if (system(cmd) != 0) fprintf(stderr, "fuzz_index: could not remove %s\n", root);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    const char *tmp = getenv("TMPDIR"), *fixture = getenv("FUZZ_FIXTURE");
    char path[1400], from[1400];
    DIR *d;
    struct dirent *e;
    (void)argc; (void)argv;
    snprintf(root, sizeof root, "%s/fuzz_index.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(root)) { perror("fuzz_index: mkdtemp"); abort(); }
    atexit(remove_tree);
    snprintf(dir, sizeof dir, "%s/ckpt", root);
    snprintf(path, sizeof path, "%s/outside", root);
    if (mkdir(dir, 0700) != 0 || mkdir(path, 0700) != 0) { perror("fuzz_index: mkdir"); abort(); }
    snprintf(index_path, sizeof index_path, "%s/model.safetensors.index.json", dir);
    snprintf(path, sizeof path, "%s/config.json", dir);
    write_file(path, config_json, sizeof config_json - 1);
    if (!fixture) fixture = "tests/fixtures/gqa_tied_llama3";
    if ((d = opendir(fixture)) != NULL) {
        while ((e = readdir(d)) != NULL) {
            size_t n = strlen(e->d_name);
            if (n < 12 || strcmp(e->d_name + n - 12, ".safetensors") != 0) continue;
            snprintf(from, sizeof from, "%s/%s", fixture, e->d_name);
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            copy_file(from, path);
        }
        closedir(d);
        snprintf(from, sizeof from, "%s/model-00001-of-00019.safetensors", fixture);
        snprintf(path, sizeof path, "%s/outside/out.safetensors", root);
        copy_file(from, path);
    } else {
        fprintf(stderr, "fuzz_index: no fixture at %s: fuzzing the index without shards\n", fixture);
    }
    snprintf(path, sizeof path, "%s/in.safetensors", dir);
    if (symlink("model-00001-of-00019.safetensors", path) != 0) perror("fuzz_index: symlink");
    snprintf(path, sizeof path, "%s/out.safetensors", dir);
    if (symlink("../outside/out.safetensors", path) != 0) perror("fuzz_index: symlink");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    te_llama_options opt;
    te_llama_model *m = NULL;
    te_llama_result r;
    memset(&opt, 0, sizeof opt);
    opt.staging_bytes = 64 << 10;
    write_file(index_path, data, size);
    r = te_llama_load(dir, &opt, &m);
    if (r != TE_LLAMA_OK) {
        FUZZ_ASSERT(m == NULL);
        FUZZ_ASSERT(te_llama_last_error()[0] != 0);
        return 0;
    }
    {
        int i, s, n = te_llama_num_parameters(m);
        for (i = 0; i < n; i++) {
            te_llama_param *p = te_llama_parameter(m, i);
            for (s = 0; s < p->n_sources; s++) FUZZ_ASSERT(p->loaded[s]);
        }
    }
    te_llama_free(m);
    return 0;
}
