/* te_llama.h - v0.1 - HuggingFace Llama checkpoints in C, with TransformerEngine-style decoder layers
                       (fused QKV and fc1), a CPU reference and a CUDA backend (te_llama_kernels.cu).

   USING IT
     In exactly one C or C++ file:
         #define TE_LLAMA_IMPLEMENTATION
         #include "te_llama.h"
     Everywhere else include it plainly. For the GPU, also compile te_llama_kernels.cu with nvcc, define
     TE_LLAMA_CUDA in the implementation file and link -lcublasLt -lcudart. Without TE_LLAMA_CUDA the library is
     CPU-only and asking for the CUDA backend is the error TE_LLAMA_ERR_NO_CUDA.

   CONFIGURATION MACROS (define before the implementation include)
     TE_LLAMA_STATIC                     every public function static (private to one file)
     TE_LLAMA_MALLOC/REALLOC/FREE        replace the C allocator (define all three or none)
     TE_LLAMA_CUDA                       link the CUDA backend from te_llama_kernels.cu
     TE_LLAMA_TESTING                    expose fault-injection hooks used by the test suite

   API TOUR, in the order a user calls it
     te_llama_options opt = {0};                          all-zero means defaults
     te_llama_model *m;
     te_llama_load("path/to/hf_dir", &opt, &m);           TELlamaForCausalLM.from_pretrained_local: builds
                                                          TE decoder layers, streams one shard at a time
     te_llama_tokenizer_load("path/to/hf_dir", NULL, &tok);  tokenizer.json (Llama 3 and Llama 2 families)
     te_llama_tokenizer_encode(tok, text, len, 1, &ids, &n); text -> ids, BOS as the tokenizer's template says
     te_llama_generate(m, &gen, prompt, n, out, cap, &n_out);  greedy or sampled; on_token streams each id
     te_llama_generate_batch(m, &gen, prompts, lens, n_seq, out, cap, n_out);  several prompts, one forward a step
     te_llama_tokenizer_decode_piece(tok, &state, id, ...);   id -> text, safe across split UTF-8 characters
     te_llama_save(m, "out_dir", &save_opt);              save_pretrained: HF names, shards, index
     for (i = 0; i < te_llama_num_parameters(m); i++)     parameters(): name, shape, dtype, data
         te_llama_parameter(m, i);
     te_llama_free(m);
   Below generate: te_llama_kv_cache_create + te_llama_forward run batches mixing several sequences.
   Fine-tuning (CPU or CUDA alike): te_llama_trainer_create(m, &train_opt, &tr); te_llama_train_step(tr, tokens,
   labels, B, T, &loss) per batch; te_llama_trainer_save_state / te_llama_save (see TRAINING below).
   On failure every call returns a te_llama_result; te_llama_last_error() says what and where (file, tensor,
   byte offset, expected vs found). The library never prints and never exits: install options.log to hear it.

   DECODER FACTORY (the seed's replace_decoder context manager)
     A model is embeddings + N decoder layers + final norm + lm_head. Each layer is built by a factory, a function
     pointer. The current factory is the process default (te_llama_vanilla_decoder, HF's LlamaDecoderLayer layout)
     unless this thread overrides it with te_llama_replace_decoder(), which returns the previous one.
     te_llama_with_decoder(f, fn, user) runs fn with f installed and restores the previous factory whatever fn
     returns: the scoped form. te_llama_for_causal_lm() is TELlamaForCausalLM(config): te_llama_create inside the
     scope of te_llama_te_decoder, so the result is an ordinary te_llama_model whose layers are TE layers.

   REVISION HISTORY
     0.1  first version: JSON, safetensors, config, factory, load/save, CPU forward, generation, tokenizer,
          the CUDA backend (cuBLASLt, tensor-core prefill attention, split-KV decode, graph-captured decode),
          CPU training (backward, AdamW, optimizer state), CUDA training (device backward, fused AdamW)

   LICENSE: MIT (see the end of this file).
*/
#ifndef TE_LLAMA_H
#define TE_LLAMA_H

/* The implementation uses POSIX (open, pread, fsync, rename, opendir): ask for it before the first system header.
   Include te_llama.h first in the implementation file, or build with -D_XOPEN_SOURCE=700. */
#if defined(TE_LLAMA_IMPLEMENTATION) && !defined(_POSIX_C_SOURCE) && !defined(_GNU_SOURCE) && !defined(_XOPEN_SOURCE)
#define _XOPEN_SOURCE 700 /* POSIX.1-2008 with realpath */
#endif

#include <stddef.h>
#include <stdint.h>

#ifdef TE_LLAMA_STATIC
#define TE_LLAMA_API static
#else
#define TE_LLAMA_API extern
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ===================================================================================================== results */

/* One list makes the enum and its strings, so they cannot drift apart. */
#define TE_LLAMA__RESULTS(X)                                                                                  \
    X(OK, "ok")                                                                                               \
    X(ERR_INVALID_ARGUMENT, "invalid argument")                                                               \
    X(ERR_NOMEM, "out of memory")                                                                             \
    X(ERR_IO, "I/O error")                                                                                    \
    X(ERR_NOT_FOUND, "no checkpoint found")                                                                   \
    X(ERR_UNSAFE_PATH, "unsafe file name")                                                                    \
    X(ERR_JSON_SYNTAX, "JSON syntax error")                                                                   \
    X(ERR_JSON_LIMIT, "JSON limit exceeded")                                                                  \
    X(ERR_JSON_DUPLICATE_KEY, "duplicate JSON key")                                                           \
    X(ERR_JSON_SCHEMA, "JSON value of the wrong type or missing")                                             \
    X(ERR_ST_HEADER, "bad safetensors header")                                                                \
    X(ERR_ST_DTYPE, "unknown safetensors dtype")                                                              \
    X(ERR_ST_OFFSETS, "safetensors offsets do not tile the data")                                             \
    X(ERR_ST_SIZE, "safetensors tensor size overflows or disagrees with its offsets")                         \
    X(ERR_CONFIG, "invalid config")                                                                           \
    X(ERR_UNSUPPORTED, "unsupported model feature")                                                           \
    X(ERR_MISSING_TENSOR, "missing tensor")                                                                   \
    X(ERR_DUPLICATE_TENSOR, "duplicate tensor")                                                               \
    X(ERR_SHAPE_MISMATCH, "tensor shape mismatch")                                                            \
    X(ERR_OUT_OF_RANGE, "value out of range")                                                                 \
    X(ERR_TOKENIZER, "bad tokenizer")                                                                         \
    X(ERR_NO_CUDA, "CUDA backend not available")                                                              \
    X(ERR_CUDA, "CUDA error")                                                                                 \
    X(ERR_CUDA_OOM, "out of device memory")

typedef enum te_llama_result {
#define TE_LLAMA__ENUM(name, str) TE_LLAMA_##name,
    TE_LLAMA__RESULTS(TE_LLAMA__ENUM)
#undef TE_LLAMA__ENUM
    TE_LLAMA_RESULT_COUNT
} te_llama_result;

TE_LLAMA_API const char *te_llama_result_string(te_llama_result r);
/* The message of the last failure on this thread: what, and where (file, tensor, byte offset). */
TE_LLAMA_API const char *te_llama_last_error(void);
/* Set this thread's message and return r: for extensions (the CUDA side, user-written decoder layers). */
TE_LLAMA_API te_llama_result te_llama_set_error(te_llama_result r, const char *message);

/* ================================================================================================ allocation */

/* A runtime allocator (optional, in the options). Every object remembers the allocator that made it. */
typedef struct te_llama_allocator {
    void *(*alloc)(void *user, size_t size);
    void *(*realloc)(void *user, void *ptr, size_t size);
    void (*free)(void *user, void *ptr);
    void *user;
} te_llama_allocator;

/* ===================================================================================================== dtypes */

typedef enum te_llama_dtype {
    TE_LLAMA_DTYPE_AUTO = 0, /* in options: "as the checkpoint says" */
    TE_LLAMA_F32,
    TE_LLAMA_F16,
    TE_LLAMA_BF16,
    TE_LLAMA_F8_E4M3,
    TE_LLAMA_F8_E5M2,
    TE_LLAMA_F64,
    TE_LLAMA_BOOL,
    TE_LLAMA_U8,
    TE_LLAMA_I8,
    TE_LLAMA_I16,
    TE_LLAMA_U16,
    TE_LLAMA_I32,
    TE_LLAMA_U32,
    TE_LLAMA_I64,
    TE_LLAMA_U64,
    TE_LLAMA_DTYPE_COUNT
} te_llama_dtype;

TE_LLAMA_API const char *te_llama_dtype_name(te_llama_dtype t); /* safetensors spelling: "BF16" */
TE_LLAMA_API size_t te_llama_dtype_size(te_llama_dtype t);      /* bytes per element, 0 for AUTO */
/* Convert n elements between floating dtypes (F32, F16, BF16, F8_E4M3, F8_E5M2, F64), round to nearest even. */
TE_LLAMA_API te_llama_result te_llama_convert(void *dst, te_llama_dtype dst_type, const void *src,
                                              te_llama_dtype src_type, size_t n);

/* ======================================================================================================= JSON */

/* A strict, bounded JSON tokenizer in the jsmn spirit: tokens point into the caller's text, in document order;
   each knows where its subtree ends so skipping a value is O(1). Duplicate keys in an object are an error. */
typedef enum te_llama_json_type {
    TE_LLAMA_JSON_NULL = 1,
    TE_LLAMA_JSON_FALSE,
    TE_LLAMA_JSON_TRUE,
    TE_LLAMA_JSON_NUMBER,
    TE_LLAMA_JSON_STRING,
    TE_LLAMA_JSON_ARRAY,
    TE_LLAMA_JSON_OBJECT
} te_llama_json_type;

typedef struct te_llama_json_token {
    uint8_t type;     /* te_llama_json_type */
    uint8_t escaped;  /* strings: contains a backslash escape */
    uint32_t start;   /* byte offset in the text; strings: after the opening quote */
    uint32_t end;     /* one past the last byte; strings: at the closing quote */
    uint32_t size;    /* arrays: elements; objects: key/value pairs */
    uint32_t next;    /* index of the first token after this value's subtree */
} te_llama_json_token;

typedef struct te_llama_json {
    const char *text;
    size_t len;
    te_llama_json_token *tokens; /* tokens[0] is the root value; an object's pairs follow it as key, value */
    size_t n_tokens;
    te_llama_allocator allocator;
} te_llama_json;

#define TE_LLAMA_JSON_MAX_DEPTH 128

/* Parse len bytes of text (not copied: keep it alive while using the tokens). allocator may be NULL. */
TE_LLAMA_API te_llama_result te_llama_json_parse(const char *text, size_t len, const te_llama_allocator *allocator,
                                                 te_llama_json *out);
TE_LLAMA_API void te_llama_json_free(te_llama_json *json);
/* Index of the value stored under key in the object at index obj, or 0 when absent (0 is never a value). */
TE_LLAMA_API size_t te_llama_json_get(const te_llama_json *json, size_t obj, const char *key);
/* Whether the string token at index tok decodes to the C string s. */
TE_LLAMA_API int te_llama_json_equals(const te_llama_json *json, size_t tok, const char *s);
/* Decode the string token into buf (NUL-terminated, cap bytes); *len gets the decoded length (may hold NULs). */
TE_LLAMA_API te_llama_result te_llama_json_string(const te_llama_json *json, size_t tok, char *buf, size_t cap,
                                                  size_t *len);
/* Integer value of a number token; fractions, exponents and overflow are errors. */
TE_LLAMA_API te_llama_result te_llama_json_int64(const te_llama_json *json, size_t tok, int64_t *out);
TE_LLAMA_API te_llama_result te_llama_json_double(const te_llama_json *json, size_t tok, double *out);

/* ================================================================================================ safetensors */

#define TE_LLAMA_ST_MAX_HEADER (100u * 1000u * 1000u) /* the reference implementation's limit */
#define TE_LLAMA_ST_MAX_DIMS 8
#define TE_LLAMA_NAME_MAX 128

typedef struct te_llama_st_tensor {
    char *name;
    te_llama_dtype dtype;
    int ndim;
    int64_t shape[TE_LLAMA_ST_MAX_DIMS];
    uint64_t offset; /* from the start of the data section */
    uint64_t nbytes;
} te_llama_st_tensor;

typedef struct te_llama_safetensors {
    te_llama_st_tensor *tensors; /* sorted by offset: the order a reader streams them in */
    size_t n_tensors;
    uint64_t data_start;         /* 8 + header length: file offset of the data section */
    uint64_t data_len;
    te_llama_allocator allocator;
} te_llama_safetensors;

/* Validate and index a header, as the reference implementation does: header length <= 100 MB and inside the
   file, a JSON object of tensors (plus "__metadata__"), known dtypes, bytes = prod(shape) x dtype size without
   overflow, offsets that tile [0, data_len) exactly. bytes holds at least the 8-byte length and the header. */
TE_LLAMA_API te_llama_result te_llama_safetensors_parse(const void *bytes, size_t n_bytes, uint64_t file_size,
                                                        const te_llama_allocator *allocator,
                                                        te_llama_safetensors *out);
/* Read and validate the header of a file (the data stays on disk). */
TE_LLAMA_API te_llama_result te_llama_safetensors_open(const char *path, const te_llama_allocator *allocator,
                                                       te_llama_safetensors *out);
TE_LLAMA_API const te_llama_st_tensor *te_llama_safetensors_find(const te_llama_safetensors *st, const char *name);
TE_LLAMA_API void te_llama_safetensors_free(te_llama_safetensors *st);

typedef struct te_llama_st_write_tensor {
    const char *name;
    te_llama_dtype dtype;
    int ndim;
    const int64_t *shape;
    const void *data; /* prod(shape) elements of dtype */
} te_llama_st_write_tensor;

/* Write a safetensors file (header padded with spaces to a multiple of 8, metadata {"format":"pt"}), through a
   temporary name and a rename: the file at path is either the old one or the whole new one. */
TE_LLAMA_API te_llama_result te_llama_safetensors_write(const char *path, const te_llama_st_write_tensor *tensors,
                                                        size_t n_tensors);

/* ===================================================================================================== config */

typedef enum te_llama_rope_type { TE_LLAMA_ROPE_DEFAULT = 0, TE_LLAMA_ROPE_LINEAR, TE_LLAMA_ROPE_LLAMA3 } te_llama_rope_type;

#define TE_LLAMA_MAX_EOS 8

/* Every LlamaConfig field that changes the math. */
typedef struct te_llama_config {
    int vocab_size;
    int hidden_size;
    int intermediate_size;
    int num_hidden_layers;
    int num_attention_heads;
    int num_key_value_heads;
    int head_dim;                 /* hidden_size / num_attention_heads unless config.json gives it */
    int max_position_embeddings;
    double rms_norm_eps;
    double rope_theta;
    te_llama_rope_type rope_type;
    double rope_factor;           /* linear and llama3 */
    double rope_low_freq_factor;  /* llama3 */
    double rope_high_freq_factor; /* llama3 */
    int rope_original_max_position_embeddings; /* llama3 */
    int tie_word_embeddings;
    te_llama_dtype dtype;         /* torch_dtype / dtype: the checkpoint's parameter dtype */
    double initializer_range;
    int bos_token_id;             /* -1 when absent */
    int eos_token_ids[TE_LLAMA_MAX_EOS];
    int n_eos_token_ids;
} te_llama_config;

/* Parse config.json text (transformers 4.x and 5.x spellings). A model_type other than llama, an activation
   other than silu, attention or mlp biases, an unknown rope type, or absurd sizes are errors. */
TE_LLAMA_API te_llama_result te_llama_config_parse(const char *text, size_t len, te_llama_config *out);
TE_LLAMA_API te_llama_result te_llama_config_load(const char *path, te_llama_config *out);
/* Check a config built by hand: sizes positive and bounded, heads divide, kv heads divide heads. */
TE_LLAMA_API te_llama_result te_llama_config_validate(const te_llama_config *config);
/* Write config.json text for config into buf (cap bytes); *len gets the length. */
TE_LLAMA_API te_llama_result te_llama_config_write(const te_llama_config *config, char *buf, size_t cap,
                                                   size_t *len);

/* ==================================================================================================== options */

typedef enum te_llama_backend { TE_LLAMA_BACKEND_CPU = 0, TE_LLAMA_BACKEND_CUDA } te_llama_backend;
typedef enum te_llama_log_level { TE_LLAMA_LOG_INFO = 0, TE_LLAMA_LOG_WARN } te_llama_log_level;

/* Progress of long work (loading, saving): one report per chunk, done == total at the end of each file. */
typedef struct te_llama_progress {
    const char *what;       /* "load" or "save" */
    const char *file;       /* the shard being read or written */
    int file_index, n_files;
    uint64_t bytes_done, bytes_total; /* of this file */
} te_llama_progress;

typedef struct te_llama_layer te_llama_layer;
typedef struct te_llama_options te_llama_options;

/* A decoder factory builds layer `index` of a model of `config`. */
typedef te_llama_result (*te_llama_decoder_factory)(const te_llama_config *config, int index,
                                                     const te_llama_options *options, te_llama_layer **out);

/* All-zero means defaults. The library copies what it keeps; the caller's struct is never changed. */
struct te_llama_options {
    te_llama_backend backend;          /* CPU (default) or CUDA */
    te_llama_decoder_factory decoder;  /* NULL: te_llama_load builds TE layers, te_llama_create the current factory */
    te_llama_dtype dtype;              /* parameter storage dtype; AUTO: the checkpoint's (CUDA: BF16) */
    int num_layers;                    /* >0: build only the first N layers; extra checkpoint layers are skipped */
    size_t staging_bytes;              /* loader staging buffer; 0: 16 MiB */
    const te_llama_allocator *allocator;
    void (*log)(void *user, te_llama_log_level level, const char *message);
    void (*progress)(void *user, const te_llama_progress *progress);
    void *user;                        /* passed to log and progress */
    int cuda_device;                   /* CUDA device ordinal */
    /* FP8 inference (see FP8 below): non-NULL switches it on after load or create; the recipe is copied. The
       CPU backend emulates it; the CUDA backend keeps E4M3 weights on the device (te layers, BF16 storage). */
    const struct te_llama_fp8_recipe *fp8;
};

/* ================================================================================================= parameters */

/* Where a parameter's rows come from in an HF checkpoint: rows [row_begin, row_begin + n_rows) of the parameter
   are the whole HF tensor `name` (a fused TE parameter has several sources). */
typedef struct te_llama_hf_source {
    char name[TE_LLAMA_NAME_MAX];
    int64_t row_begin, n_rows;
} te_llama_hf_source;

/* One parameter: the seed's model.parameters() entry. 1-D (norm weights) or 2-D (rows, cols) row-major. */
typedef struct te_llama_param {
    char name[TE_LLAMA_NAME_MAX];      /* TE name, e.g. model.layers.0.self_attention.layernorm_qkv.query_weight */
    te_llama_dtype dtype;
    int ndim;
    int64_t shape[2];
    void *data;                        /* host memory, or device memory when on_device */
    int on_device;
    int n_sources;
    te_llama_hf_source sources[3];
    uint8_t loaded[3];                 /* loader bookkeeping: source i was read */
    uint8_t is_view;                   /* data belongs to another parameter (te_llama_param_view) */
} te_llama_param;

TE_LLAMA_API size_t te_llama_param_numel(const te_llama_param *p);
TE_LLAMA_API size_t te_llama_param_bytes(const te_llama_param *p);

/* ============================================================================================ decoder layers */

typedef struct te_llama_kv_cache te_llama_kv_cache;

/* What one layer sees of a forward call: n_tokens tokens, each at position pos[i] of the sequence in cache slot
   seq[i]. Tokens of one sequence come in position order; attention reads that slot's cache at [0, pos]. */
typedef struct te_llama_step {
    const te_llama_config *config;
    int n_tokens;
    const int32_t *pos;               /* (n_tokens) */
    const int32_t *seq;               /* (n_tokens) */
    te_llama_kv_cache *cache;
    const float *rope_cos, *rope_sin; /* (n_tokens, head_dim / 2): the rotation of each token's position */
    float *work;                      /* scratch of te_llama_work_floats(config, n_tokens, cache->max_len) */
    void *backend;                    /* backend state (CUDA: the device context) */
    void *fp8;                        /* the model's FP8 state (te_llama_fp8_enable); NULL when off */
} te_llama_step;

/* A decoder layer: an object with function pointers, as a Python module is. The built-in kinds fill params,
   and use te_llama_layer_map_by_sources for map_hf. */
struct te_llama_layer {
    const char *kind;                 /* "vanilla", "te", or a user's */
    int index;
    te_llama_param *params;
    int n_params;
    void *impl;                       /* the kind's own state */
    /* x: (n_tokens, hidden) residual stream, updated in place. */
    te_llama_result (*forward)(te_llama_layer *self, const te_llama_step *step, float *x);
    /* Accept a named HF tensor: say which parameter and first row it fills, or return TE_LLAMA_ERR_NOT_FOUND. */
    te_llama_result (*map_hf)(te_llama_layer *self, const char *hf_name, te_llama_param **param, int *source);
    void (*destroy)(te_llama_layer *self);
};

TE_LLAMA_API te_llama_result te_llama_layer_map_by_sources(te_llama_layer *self, const char *hf_name,
                                                           te_llama_param **param, int *source);

/* The two built-in factories. */
TE_LLAMA_API te_llama_result te_llama_vanilla_decoder(const te_llama_config *config, int index,
                                                      const te_llama_options *options, te_llama_layer **out);
TE_LLAMA_API te_llama_result te_llama_te_decoder(const te_llama_config *config, int index,
                                                 const te_llama_options *options, te_llama_layer **out);

/* The current factory: this thread's override if set, else the process default (te_llama_vanilla_decoder). */
TE_LLAMA_API te_llama_decoder_factory te_llama_current_decoder(void);
/* Set this thread's override (NULL clears it); returns the previous override (NULL when none was set). */
TE_LLAMA_API te_llama_decoder_factory te_llama_replace_decoder(te_llama_decoder_factory factory);
/* Set the process default (NULL: vanilla); returns the previous default. Not for use while other threads build. */
TE_LLAMA_API te_llama_decoder_factory te_llama_set_default_decoder(te_llama_decoder_factory factory);
/* The scoped override: install factory on this thread, run fn(user), restore the previous override, return
   what fn returned. Every exit path of fn restores it, since restoring happens after fn returns. */
TE_LLAMA_API te_llama_result te_llama_with_decoder(te_llama_decoder_factory factory,
                                                   te_llama_result (*fn)(void *user), void *user);

/* Allocate a layer with room for n_params parameters (for factories, the built-in ones and users'). */
TE_LLAMA_API te_llama_result te_llama_layer_alloc(const te_llama_options *options, int n_params, size_t impl_bytes,
                                                  te_llama_layer **out);
/* Allocate a parameter's storage (host or device per options) and zero it; used by factories. */
TE_LLAMA_API te_llama_result te_llama_param_init(te_llama_param *p, const te_llama_options *options,
                                                 const char *name, te_llama_dtype dtype, int64_t rows,
                                                 int64_t cols);
/* The default destroy: frees the storage of every parameter that is not a view, then the layer. */
TE_LLAMA_API void te_llama_layer_destroy_default(te_llama_layer *self);
/* A parameter viewing rows [row_begin, row_begin + rows) of another (TE's query/key/value views of fused QKV). */
TE_LLAMA_API void te_llama_param_view(te_llama_param *view, const char *name, const te_llama_param *whole,
                                      int64_t row_begin, int64_t rows);

/* ====================================================================================================== model */

typedef struct te_llama_model {
    te_llama_config config;           /* num_hidden_layers is the number actually built */
    te_llama_options options;         /* resolved copy: backend, dtype, allocator, callbacks */
    te_llama_param embed_tokens;      /* (vocab, hidden) model.embed_tokens.weight */
    te_llama_layer **layers;          /* (num_hidden_layers) */
    te_llama_param norm;              /* (hidden) model.norm.weight */
    te_llama_param lm_head;           /* (vocab, hidden) lm_head.weight; aliases embed_tokens when tied */
    float *rope_inv_freq;             /* (head_dim / 2) */
    int eos_token_ids[TE_LLAMA_MAX_EOS]; /* config.json and generation_config.json together */
    int n_eos_token_ids;
    void *backend;                    /* CUDA: device context */
    te_llama_allocator allocator;     /* the one options->allocator pointed to, or the C allocator */
    void *fp8;                        /* FP8 state (te_llama_fp8_enable); NULL when off. CUDA: the device state
                                         in the device context (te_llama_kernels.cu), not the CPU's struct */
} te_llama_model;

/* LlamaForCausalLM(config): random initialisation as HF does it (normal(0, initializer_range), norms 1), layers
   from options->decoder or else the current factory. */
TE_LLAMA_API te_llama_result te_llama_create(const te_llama_config *config, const te_llama_options *options,
                                             te_llama_model **out);
/* TELlamaForCausalLM(config): te_llama_create inside the scope of te_llama_te_decoder. */
TE_LLAMA_API te_llama_result te_llama_for_causal_lm(const te_llama_config *config, const te_llama_options *options,
                                                    te_llama_model **out);
/* TELlamaForCausalLM.from_pretrained_local(dir): config.json, then model.safetensors.index.json with its shards
   or model.safetensors, streamed one shard at a time through a fixed staging buffer, each HF tensor placed by
   its layer's map_hf. Layers: options->decoder, else TE. */
TE_LLAMA_API te_llama_result te_llama_load(const char *dir, const te_llama_options *options, te_llama_model **out);
TE_LLAMA_API void te_llama_free(te_llama_model *model);

/* All parameters in order: embed_tokens, each layer's, norm, lm_head (absent when tied). */
TE_LLAMA_API int te_llama_num_parameters(const te_llama_model *model);
TE_LLAMA_API te_llama_param *te_llama_parameter(te_llama_model *model, int i);

typedef struct te_llama_save_options {
    uint64_t max_shard_size;          /* bytes; 0: 5 GB (HF's default) */
    te_llama_dtype dtype;             /* AUTO: each parameter's own dtype */
} te_llama_save_options;

/* save_pretrained(dir): HF tensor names (TE fused parameters split back), config.json, generation_config.json,
   one model.safetensors or model-0000i-of-0000n.safetensors shards with model.safetensors.index.json. Files
   are written under temporary names and renamed at the end: a failure leaves what was there before intact. */
TE_LLAMA_API te_llama_result te_llama_save(te_llama_model *model, const char *dir,
                                           const te_llama_save_options *options);

/* ==================================================================================================== forward */

/* Keys and values of every layer for n_seq sequences of up to max_len positions. */
struct te_llama_kv_cache {
    int n_layers, n_seq, max_len, kv_dim;
    float *k, *v;                     /* CPU: (n_layers, n_seq, max_len, kv_dim) */
    void *device;                     /* CUDA: device buffers */
    int on_device;
    te_llama_allocator allocator;
};

TE_LLAMA_API te_llama_result te_llama_kv_cache_create(te_llama_model *model, int n_seq, int max_len,
                                                      te_llama_kv_cache **out);
TE_LLAMA_API void te_llama_kv_cache_free(te_llama_kv_cache *cache);

/* What a model and a cache take: parameters, the KV cache (NULL: none), the backend's workspace; on the GPU also
   the device's free and total memory. */
typedef struct te_llama_memory {
    uint64_t parameter_bytes;
    uint64_t kv_cache_bytes;
    uint64_t workspace_bytes;
    uint64_t device_free, device_total; /* 0 on the CPU */
} te_llama_memory;

TE_LLAMA_API te_llama_result te_llama_memory_usage(const te_llama_model *model, const te_llama_kv_cache *cache,
                                                   te_llama_memory *out);

/* One forward call over tokens of one or more sequences. */
typedef struct te_llama_batch {
    int n_tokens;
    const int32_t *tokens;            /* (n_tokens) */
    const int32_t *pos;               /* (n_tokens) position in its sequence */
    const int32_t *seq;               /* (n_tokens) cache slot; NULL: all slot 0 */
    const uint8_t *want_logits;       /* (n_tokens) nonzero: write this token's logits; NULL: every token */
} te_llama_batch;

/* Run the model. logits: (number of tokens wanting logits, vocab) float32, in batch order. */
TE_LLAMA_API te_llama_result te_llama_forward(te_llama_model *model, te_llama_kv_cache *cache,
                                              const te_llama_batch *batch, float *logits);
/* Floats of scratch a layer forward of n_tokens needs (the model allocates it). */
TE_LLAMA_API size_t te_llama_work_floats(const te_llama_config *config, int n_tokens, int max_len);

/* =================================================================================================== sampling */

typedef struct te_llama_sampler_options {
    float temperature;                /* 0: greedy */
    int top_k;                        /* 0: off */
    float top_p;                      /* 0 or 1: off */
    uint64_t seed;                    /* runs with one seed repeat exactly */
} te_llama_sampler_options;

typedef struct te_llama_candidate {
    float p;
    int32_t id;
} te_llama_candidate;

typedef struct te_llama_sampler {
    te_llama_sampler_options options;
    uint64_t rng;
    float *probs;                     /* (vocab) */
    te_llama_candidate *candidates;   /* (vocab) tokens still in the draw */
    int vocab;
    te_llama_allocator allocator;
} te_llama_sampler;

TE_LLAMA_API te_llama_result te_llama_sampler_init(te_llama_sampler *s, const te_llama_sampler_options *options,
                                                   int vocab, const te_llama_allocator *allocator);
TE_LLAMA_API int32_t te_llama_sample(te_llama_sampler *s, const float *logits);
TE_LLAMA_API void te_llama_sampler_free(te_llama_sampler *s);

/* ================================================================================================= generation */

typedef struct te_llama_generate_options {
    int max_new_tokens;               /* 0: 128 */
    te_llama_sampler_options sampler;
    int ignore_eos;                   /* do not stop at the model's eos ids */
    /* Called with each new token; return nonzero to stop. */
    int (*on_token)(void *user, int32_t token);
    void *user;
} te_llama_generate_options;

/* Prefill the prompt, then decode until an eos id, max_new_tokens or the callback says stop. out receives the
   new tokens (capacity cap); *n_out how many. On CUDA sampling is on the device and the decode steps run ahead of
   the host: while on_token sees token i, the steps making tokens i + 1 and i + 2 are already queued, so a stop
   (eos or on_token) leaves up to two steps computed and dropped; under FP8 their amaxes still enter the scaling
   states, as one or two more requested tokens would have. */
TE_LLAMA_API te_llama_result te_llama_generate(te_llama_model *model, const te_llama_generate_options *options,
                                               const int32_t *prompt, int n_prompt, int32_t *out, int cap,
                                               int *n_out);
/* Generate for n_seq prompts together: one forward per step over all the sequences still running. prompts[s]
   holds n_prompt[s] >= 1 tokens; sequence s's new tokens go to out + s * cap (out: (n_seq, cap)) and their count
   to n_out[s] (n_seq). Each sequence stops at its own eos id (unless ignore_eos) or at max_new_tokens / cap;
   sequence s samples with seed options->sampler.seed + s, so n_seq = 1 samples as te_llama_generate does.
   on_token is not called: one callback cannot say which sequence a token belongs to; read out and n_out after.
   On the CPU every sequence computes exactly as it would alone (greedy sequence s == te_llama_generate of prompt
   s), except under FP8 emulation, whose activation scales follow what each forward saw. On CUDA the decode step
   of the whole batch is one captured graph; finished sequences keep being computed, their tokens dropped, until
   the last one is done (and, as in te_llama_generate, up to two steps past it); and the GEMMs' summation order
   depends on the batch size, so a sequence may part from its single-sequence run where its two best logits are
   within rounding of each other. */
TE_LLAMA_API te_llama_result te_llama_generate_batch(te_llama_model *model, const te_llama_generate_options *options,
                                                     const int32_t *const *prompts, const int *n_prompt, int n_seq,
                                                     int32_t *out, int cap, int *n_out);

/* ============================================================================================== CUDA backend */
/* Implemented by te_llama_kernels.cu (nvcc); called by the implementation when TE_LLAMA_CUDA is defined and
   options.backend is CUDA. Parameters live in device memory in BF16 in the TE layout; a te layer's fused QKV
   buffer starts at its query_weight view (rows q_dim + 2 kv_dim), fc1 is layernorm_mlp.fc1_weight. Errors come
   back as TE_LLAMA_ERR_CUDA / TE_LLAMA_ERR_CUDA_OOM with the file and line of the failing call. */
TE_LLAMA_API te_llama_result te_llama_cuda_init(te_llama_model *model);  /* ERR_NO_CUDA when no device */
TE_LLAMA_API void te_llama_cuda_release(te_llama_model *model);
TE_LLAMA_API te_llama_result te_llama_cuda_malloc(void **ptr, size_t bytes);
TE_LLAMA_API void te_llama_cuda_free(void *ptr);
TE_LLAMA_API te_llama_result te_llama_cuda_memset(void *device, int value, size_t bytes);
TE_LLAMA_API te_llama_result te_llama_cuda_upload(void *device, const void *host, size_t bytes);
TE_LLAMA_API te_llama_result te_llama_cuda_download(void *host, const void *device, size_t bytes);
/* n pinned host staging buffers of bytes each, owned by the model's device context. */
TE_LLAMA_API te_llama_result te_llama_cuda_staging(te_llama_model *model, size_t bytes, void **buffers, int n);
/* Copy from staging buffer `slot` to the device without waiting; wait_slot blocks until that copy is done. */
TE_LLAMA_API te_llama_result te_llama_cuda_upload_async(te_llama_model *model, void *device, const void *host,
                                                        size_t bytes, int slot);
TE_LLAMA_API te_llama_result te_llama_cuda_wait_slot(te_llama_model *model, int slot);
TE_LLAMA_API te_llama_result te_llama_cuda_kv_cache_alloc(te_llama_model *model, te_llama_kv_cache *cache);
TE_LLAMA_API void te_llama_cuda_kv_cache_free(te_llama_kv_cache *cache);
TE_LLAMA_API te_llama_result te_llama_cuda_forward(te_llama_model *model, te_llama_kv_cache *cache,
                                                   const te_llama_batch *batch, float *logits);
/* Device bytes the context holds besides parameters and caches, and the device's free and total memory. */
TE_LLAMA_API te_llama_result te_llama_cuda_memory_info(const te_llama_model *model, size_t *workspace_bytes,
                                                       size_t *device_free, size_t *device_total);
/* te_llama_generate on the device: sampling there too, so no vocabulary of logits crosses per token. */
TE_LLAMA_API te_llama_result te_llama_cuda_generate(te_llama_model *model, const te_llama_generate_options *options,
                                                    const int32_t *prompt, int n_prompt, int32_t *out, int cap,
                                                    int *n_out);
/* te_llama_generate_batch on the device: n_seq sampling blocks a step, only the n_seq ids cross per step. */
TE_LLAMA_API te_llama_result te_llama_cuda_generate_batch(te_llama_model *model, const te_llama_generate_options *options,
                                                          const int32_t *const *prompts, const int *n_prompt, int n_seq,
                                                          int32_t *out, int cap, int *n_out);

/* =================================================================================================== training */
/* Fine-tuning, on the CPU in fp32 or on the CUDA backend (see the end of this section). A training forward over
   B sequences of T tokens keeps the activations the backward needs; the backward covers every op of the decoder
   layer and the model ends; AdamW updates fp32 master weights.
   Loss: HF's LlamaForCausalLM(labels=...): the logits at position t are scored against labels[t + 1] (the shift
   happens inside, per sequence), labels equal to TE_LLAMA_IGNORE_INDEX are skipped, and the loss is the mean
   token cross-entropy over the labels that count (0 when none count). labels NULL means labels = tokens.
   Gradients: one fp32 buffer per parameter, in te_llama_parameter order and in the parameter's own layout (a TE
   layer's query/key/value views are consecutive rows of the fused QKV gradient; fc1 is gate rows then up rows;
   a tied lm_head adds into the embedding's gradient). Layers of the built-in kinds "te" and "vanilla" train on
   the CPU, "te" on CUDA; another kind is TE_LLAMA_ERR_UNSUPPORTED.
   Optimizer: torch.optim.AdamW on fp32 master weights and moments; after each step the master weights are
   written back into the model's storage, rounded to its dtype, and the next forward uses those stored values.
   Weight decay applies to the 2-D parameters (embeddings, projections, lm_head) and not to the 1-D ones (RMSNorm
   weights): in torch, two param groups. Clipping is torch.nn.utils.clip_grad_norm_ over all gradients.
   Gradient accumulation sums over micro-batches weighted by their label counts, so K micro-batches give exactly
   the gradient of one batch holding all of them. Learning rate of optimizer step s (0-based): lr (s + 1) / warmup
   while s < warmup_steps; then, when total_steps > warmup_steps, cosine from lr down to min_lr_ratio lr at
   total_steps (and flat after); else lr. */

#define TE_LLAMA_IGNORE_INDEX (-100)

/* All-zero means defaults. Where zero is a meaningful value that is not the default, a negative value asks for it. */
typedef struct te_llama_train_options {
    float lr;                 /* peak learning rate; 0: 3e-4 */
    float beta1, beta2;       /* 0: 0.9 and 0.999 (torch's) */
    float eps;                /* 0: 1e-8 */
    float weight_decay;       /* decoupled, on 2-D parameters; 0: 0.01 (torch's AdamW default); < 0: none */
    float clip_norm;          /* clip the global gradient norm to this; 0: 1.0; < 0: no clipping */
    int warmup_steps;         /* linear warmup over this many optimizer steps; 0: none */
    int total_steps;          /* cosine decay ends here; 0: constant after warmup */
    float min_lr_ratio;       /* the cosine's floor, as a fraction of lr; 0: 0.1; < 0: 0 */
    int grad_accum;           /* micro-batches per optimizer step; 0: 1 */
} te_llama_train_options;

typedef struct te_llama_trainer {
    te_llama_model *model;
    te_llama_train_options options;   /* resolved: no zeros left */
    int n_params;
    size_t *offset;                   /* (n_params + 1) parameter i is [offset[i], offset[i + 1]) of each array */
    float *master;                    /* (offset[n_params]) fp32 master weights */
    float *weights;                   /* what the forward uses: the stored values in fp32 (== master when all F32) */
    float *grad;                      /* gradient of the mean loss over the labels since the last step */
    float *exp_avg, *exp_avg_sq;      /* AdamW moments */
    int64_t step;                     /* optimizer steps taken */
    int micro;                        /* micro-batches in grad */
    int64_t n_labels;                 /* labels counted in grad */
    double loss_sum;                  /* their summed token loss */
    double last_loss;                 /* of the last optimizer step: mean loss over all its micro-batches */
    double last_grad_norm;            /* its global gradient norm before clipping */
    double last_lr;                   /* its learning rate */
    te_llama_allocator allocator;
    void *device;                     /* CUDA model: the device state (te_llama_kernels.cu); master, weights,
                                         exp_avg and exp_avg_sq are then NULL and grad is a host copy that
                                         te_llama_trainer_grad fills */
} te_llama_trainer;

/* A trainer for model (CPU: layers "te" or "vanilla"; CUDA: see below): master weights from the model, zero
   moments. options may be NULL. The model must outlive the trainer; the trainer writes into its parameters. */
TE_LLAMA_API te_llama_result te_llama_trainer_create(te_llama_model *model, const te_llama_train_options *options,
                                                     te_llama_trainer **out);
TE_LLAMA_API void te_llama_trainer_free(te_llama_trainer *trainer);
/* Forward and backward of one micro-batch: tokens and labels (B, T) row-major, labels NULL = tokens. Adds to
   the gradients; *loss (may be NULL) gets this micro-batch's mean loss. No optimizer step. */
TE_LLAMA_API te_llama_result te_llama_trainer_backward(te_llama_trainer *trainer, const int32_t *tokens,
                                                       const int32_t *labels, int B, int T, double *loss);
/* The optimizer step: clip, AdamW at the scheduled lr, write back, zero the gradients. */
TE_LLAMA_API te_llama_result te_llama_trainer_update(te_llama_trainer *trainer);
/* te_llama_trainer_backward, then te_llama_trainer_update every grad_accum micro-batches. */
TE_LLAMA_API te_llama_result te_llama_train_step(te_llama_trainer *trainer, const int32_t *tokens,
                                                 const int32_t *labels, int B, int T, double *loss);
/* The gradient buffer of parameter i (te_llama_parameter order, te_llama_param_numel floats), or NULL. On CUDA a
   host copy downloaded by this call (NULL, with the reason in te_llama_last_error, when that fails); it does not
   follow later backward passes: call again. */
TE_LLAMA_API float *te_llama_trainer_grad(te_llama_trainer *trainer, int i);
/* The learning rate of optimizer step `step` (0-based) under options (defaults filled in). */
TE_LLAMA_API double te_llama_train_lr(const te_llama_train_options *options, int64_t step);
/* The mean loss of the model as it is stored (no trainer needed), as te_llama_trainer_backward defines it. */
TE_LLAMA_API te_llama_result te_llama_eval_loss(te_llama_model *model, const int32_t *tokens, const int32_t *labels,
                                                int B, int T, double *loss);
/* Optimizer state as a safetensors file: F32 "master", "exp_avg", "exp_avg_sq" (all parameters, enumeration
   order), I64 "numel" (the size of each HF tensor behind them, checked on load: te and vanilla layers lay their
   parameters out alike, so a state moves between the kinds) and I64 "step". Save between optimizer steps
   (not with a partial accumulation). Loading writes the master weights into the model, rounded to its storage,
   and zeroes the gradients; the options are the trainer's own, not the file's. */
TE_LLAMA_API te_llama_result te_llama_trainer_save_state(te_llama_trainer *trainer, const char *path);
TE_LLAMA_API te_llama_result te_llama_trainer_load_state(te_llama_trainer *trainer, const char *path);

/* Training on the CUDA backend: the same calls, on a model loaded or created with backend CUDA (layers "te", BF16
   device parameters, head_dim 16, 32, 64 or 128, hidden size up to 12288, FP8 off). The forward keeps bf16
   activations, every GEMM is bf16 on the tensor cores with fp32 accumulation (the gradients reaching a GEMM are
   rounded to bf16, as under torch.autocast), and the master weights, gradients and moments are fp32 in device
   memory (16 bytes a parameter); after each step the master weights are rounded into the model's BF16 weights.
   The loss is computed in fp32 from fp32 logits. Expect gradients within a few 1e-3 (relative L2) of the fp32
   CPU trainer's and losses within 1e-2. te_llama_trainer_grad downloads; save_state downloads the state (3 x 4
   bytes a parameter of host memory for the call) and load_state uploads it. te_llama_eval_loss runs there too.
   The library calls these; they are public only because te_llama_kernels.cu implements them. */
enum { TE_LLAMA_TRAIN_MASTER, TE_LLAMA_TRAIN_GRAD, TE_LLAMA_TRAIN_EXP_AVG, TE_LLAMA_TRAIN_EXP_AVG_SQ };
TE_LLAMA_API te_llama_result te_llama_cuda_train_create(te_llama_trainer *trainer);  /* sets trainer->device */
TE_LLAMA_API void te_llama_cuda_train_free(te_llama_trainer *trainer);
/* Forward, loss and, when trainer is given, backward over B x T tokens (checked by the caller): the gradients are
   first multiplied by keep, then gain grad_scale d(loss_sum)/dW. *loss_sum: the summed token loss. */
TE_LLAMA_API te_llama_result te_llama_cuda_train_pass(te_llama_model *model, te_llama_trainer *trainer, const int32_t *tokens,
                                                      const int32_t *labels, int B, int T, float keep, float grad_scale,
                                                      double *loss_sum);
/* Clip and AdamW at learning rate lr for step trainer->step (already counted); zeroes the gradients. */
TE_LLAMA_API te_llama_result te_llama_cuda_train_update(te_llama_trainer *trainer, double lr, double *grad_norm);
/* Copy a state array (TE_LLAMA_TRAIN_*) between the device and host, laid out as trainer->offset says: parameter i,
   or all when i is -1. Uploading the master weights (all only) also rounds them into the model's weights. */
TE_LLAMA_API te_llama_result te_llama_cuda_train_copy(te_llama_trainer *trainer, int what, int i, float *host, int to_device);

/* ======================================================================================================= FP8 */
/* FP8 as TransformerEngine does it (DelayedScaling). Every GEMM has three scaling states (input, weight,
   output); a tensor goes to FP8 as fp8(x * scale) and comes back as fp8 * scale_inv (scale_inv = 1 / scale).
   Each state keeps a ring buffer of the last amax_history_len amaxes (absolute maxima); after a step the new
   amax goes in and scale = fp8_max / amax_used / 2^margin, where amax_used is the history's maximum (MAX) or
   the amax just recorded (MOST_RECENT), as TE's fused update kernel has it: the maximum is fmaxf's (a NaN in the
   history is passed over), a zero amax (a step that saw nothing) is not recorded at all, amax_used zero or not
   finite keeps the old scale, and a scale that overflows float becomes FLT_MAX. The forward tensors are E4M3
   (max 448) in both formats; HYBRID would give the gradients E5M2 (max 57344), and training does not use FP8 yet.
   The CPU backend EMULATES FP8 inference (quantise, dequantise, multiply in float32): set options.fp8 to a
   recipe, or call te_llama_fp8_enable on a loaded model. Each GEMM weight of the decoder layers (fused QKV,
   proj, fc1, fc2; a vanilla layer's q/k/v and gate/up parts share one scale, as if fused) is quantised once to
   E4M3 with scale = 448 / amax / 2^margin from its own amax; the high-precision weights stay (calibration and
   training read them). Each GEMM's input activation is quantised with its delayed scale: the scale computed
   after the previous forward, while this forward's amax is recorded; te_llama_forward updates every scale at
   its end. The embeddings, norms, attention (softmax, KV cache) and lm_head stay in float32.
   Calibration (TE's calibrating=True): te_llama_fp8_calibrate(model, 1) makes forwards run in high precision
   while still recording amaxes and updating scales, to seed the activation scales before FP8 is switched on.
   te_llama_save of an FP8 model writes the dequantised GEMM weights in each parameter's dtype.
   On the CUDA backend (te layers with BF16 parameters, every GEMM dimension a multiple of 16, compute capability
   8.9 or newer: else TE_LLAMA_ERR_UNSUPPORTED saying which) te_llama_fp8_enable quantises the weights on the
   device to the same bytes and scales as the CPU and keeps the scaling states in device memory, where the
   forward's kernels raise the amaxes and update the scales (te_llama_kernels.cu, FP8 section); the bf16 weights
   stay. te_llama_fp8_meta_of then returns a snapshot downloaded at the call. The CUDA forward runs every decoder GEMM
   (but those of layers the recipe keeps in BF16) on E4M3 weights and E4M3 inputs (quantised by the kernels that
   produce them): up to 16 tokens (decode) through a GEMV on the tensor cores, which halves the weight bytes a decode
   step reads; more tokens through cuBLASLt's FP8 GEMM (fp32 accumulation, promoted periodically unless
   recipe.fast_accum). It needs hidden, q_dim and intermediate multiples of 64 and head_dim a multiple of 16. The
   output states' amaxes are recorded on the CPU only. */

#define TE_LLAMA_FP8_E4M3_MAX 448.0f
#define TE_LLAMA_FP8_E5M2_MAX 57344.0f
#define TE_LLAMA_FP8_MAX_HISTORY 1024 /* the longest amax history (TE's default length) */

typedef enum te_llama_fp8_format {
    TE_LLAMA_FP8_FORMAT_E4M3 = 0,     /* E4M3 everywhere */
    TE_LLAMA_FP8_FORMAT_HYBRID        /* E4M3 forward, E5M2 for gradients */
} te_llama_fp8_format;

typedef enum te_llama_fp8_amax_algo {
    TE_LLAMA_FP8_AMAX_MAX = 0,        /* the maximum over the history */
    TE_LLAMA_FP8_AMAX_MOST_RECENT     /* the amax just recorded */
} te_llama_fp8_amax_algo;

/* TE's DelayedScaling. All-zero means TE's defaults: E4M3, history 1024, max, margin 0. */
typedef struct te_llama_fp8_recipe {
    te_llama_fp8_format format;
    int amax_history_len;             /* 1 .. TE_LLAMA_FP8_MAX_HISTORY; 0: 1024 */
    te_llama_fp8_amax_algo amax_compute_algo;
    int margin;                       /* scale = fp8_max / amax / 2^margin; >= 0 */
    int fast_accum;                   /* CUDA prefill GEMMs (cuBLASLt FP8): 0: partial sums promoted to fp32
                                         periodically; 1: fast accumulation, TE's forward default (on the H200 no
                                         faster here, and 10x the error at k = 4096: bench/fp8_gemm.cu) */
    int bf16_layers_start;            /* the first this many decoder layers stay out of FP8, and */
    int bf16_layers_end;              /* the last this many (Megatron-Core's num_layers_at_start_in_bf16 and
                                         _at_end_in_bf16; 0 and 0: every layer in FP8, TE's way). Such a layer runs
                                         as with FP8 off: its GEMMs in high precision (BF16 on CUDA, float32 on the
                                         CPU), no E4M3 weight copy, its scaling states never updated. On the default
                                         model 1 and 1 lift top-1 agreement with BF16 from 93.8-94.4% to 95.1-95.5%
                                         (GPU, bench/NOTES_fp8.md); they make the 8B FP8 decode 4-6% slower. */
} te_llama_fp8_recipe;

/* One tensor's scaling state. */
typedef struct te_llama_fp8_meta {
    te_llama_dtype dtype;             /* TE_LLAMA_F8_E4M3 or TE_LLAMA_F8_E5M2 */
    te_llama_fp8_amax_algo algo;
    int margin;
    int history_len;                  /* of the ring buffer */
    int next;                         /* where the next amax goes */
    int64_t n_updates;                /* amaxes recorded so far */
    float scale, scale_inv;           /* 1 until the first usable amax */
    float amax;                       /* of the step in progress: quantising raises it; the update consumes it */
    float history[TE_LLAMA_FP8_MAX_HISTORY]; /* (history_len) the last amaxes, 0 where none yet */
} te_llama_fp8_meta;

/* Whether decoder layer `layer` of n_layers stays out of FP8 under recipe (bf16_layers_start / _end; NULL: no
   layer does). */
TE_LLAMA_API int te_llama_fp8_layer_in_bf16(const te_llama_fp8_recipe *recipe, int layer, int n_layers);
/* The largest finite value of an FP8 dtype (448 for E4M3, 57344 for E5M2), 0 for any other dtype. */
TE_LLAMA_API float te_llama_fp8_max(te_llama_dtype dtype);
/* A fresh state for a tensor of dtype (E4M3 or E5M2) under recipe (NULL: defaults): scale 1, empty history. */
TE_LLAMA_API te_llama_result te_llama_fp8_meta_init(te_llama_fp8_meta *meta, const te_llama_fp8_recipe *recipe,
                                                    te_llama_dtype dtype);
/* End a step: record amax in the history, recompute the scale as above, return the new scale. */
TE_LLAMA_API float te_llama_fp8_meta_update(te_llama_fp8_meta *meta, float amax);
/* dst[i] = fp8(src[i] * scale), round to nearest even, saturating at the dtype's max (NaN stays NaN).
   *amax (may be NULL) is raised to the largest |src[i]| that is not NaN (an infinity makes it infinite). */
TE_LLAMA_API te_llama_result te_llama_fp8_quantize(uint8_t *dst, const float *src, size_t n, float scale,
                                                   te_llama_dtype dtype, float *amax);
/* dst[i] = fp8_to_f32(src[i]) * scale_inv. */
TE_LLAMA_API te_llama_result te_llama_fp8_dequantize(float *dst, const uint8_t *src, size_t n, float scale_inv,
                                                     te_llama_dtype dtype);

/* The GEMMs of a decoder layer, and the three tensors of each. */
typedef enum te_llama_fp8_gemm { TE_LLAMA_FP8_QKV = 0, TE_LLAMA_FP8_PROJ, TE_LLAMA_FP8_FC1, TE_LLAMA_FP8_FC2, TE_LLAMA_FP8_GEMMS } te_llama_fp8_gemm;
typedef enum te_llama_fp8_tensor { TE_LLAMA_FP8_INPUT = 0, TE_LLAMA_FP8_WEIGHT, TE_LLAMA_FP8_OUTPUT } te_llama_fp8_tensor;

/* Switch FP8 on for a model whose layers are "te" or "vanilla" (CUDA: "te"; recipe NULL: defaults; a copy is
   kept), quantising every GEMM weight; on an FP8 model it starts over (new weights, fresh activation states). */
TE_LLAMA_API te_llama_result te_llama_fp8_enable(te_llama_model *model, const te_llama_fp8_recipe *recipe);
/* Back to the high-precision path; the FP8 state is freed. */
TE_LLAMA_API void te_llama_fp8_disable(te_llama_model *model);
/* Quantise the GEMM weights again from the stored weights (after changing them; training's optimizer step
   calls it). Activation states are kept. */
TE_LLAMA_API te_llama_result te_llama_fp8_update_weights(te_llama_model *model);
/* on: forwards run in high precision and record amaxes (TE's calibrating=True); off: FP8 again. */
TE_LLAMA_API te_llama_result te_llama_fp8_calibrate(te_llama_model *model, int on);
/* The scaling state of one tensor of one GEMM of layer `layer`; NULL when FP8 is off or out of range. On a CUDA
   model it is a copy downloaded by this call (NULL with the error set if that fails): reading it is a snapshot,
   changing it changes nothing on the device. */
TE_LLAMA_API te_llama_fp8_meta *te_llama_fp8_meta_of(te_llama_model *model, int layer, te_llama_fp8_gemm gemm,
                                                     te_llama_fp8_tensor tensor);

/* The CUDA backend's side of the above (te_llama_kernels.cu), called by them on a CUDA model. enable checks what
   the CUDA backend runs (te layers, BF16 device parameters) and the FP8 GEMM's limits, and sets model->fp8.
   saved: for te_llama_save, the DEVICE address of the E4M3 rows of a GEMM weight or of a q/k/v view of the fused
   QKV buffer, and its scale_inv; NULL when p is not one. */
TE_LLAMA_API te_llama_result te_llama_cuda_fp8_enable(te_llama_model *model, const te_llama_fp8_recipe *recipe);
TE_LLAMA_API void te_llama_cuda_fp8_disable(te_llama_model *model);
TE_LLAMA_API te_llama_result te_llama_cuda_fp8_update_weights(te_llama_model *model);
TE_LLAMA_API te_llama_result te_llama_cuda_fp8_calibrate(te_llama_model *model, int on);
TE_LLAMA_API te_llama_fp8_meta *te_llama_cuda_fp8_meta_of(te_llama_model *model, int layer, te_llama_fp8_gemm gemm,
                                                          te_llama_fp8_tensor tensor);
TE_LLAMA_API const uint8_t *te_llama_cuda_fp8_saved(te_llama_model *model, const te_llama_param *p, float *scale_inv);

/* ================================================================================================= tokenizer */
/* TE_LLAMA_TOKENIZER_DECLARATIONS */
/* A HuggingFace tokenizer.json, encoded and decoded exactly as the `tokenizers` package does, for the two kinds
   Llama checkpoints ship: byte-level BPE behind the Llama 3 Split regex (Llama 3), and BPE with byte fallback behind
   Prepend/Replace normalizers (Llama 2). Added tokens found in the text (<|eot_id|>, <s>) are split out first;
   add_special applies the TemplateProcessing post-processor (BOS). Anything else (WordPiece, Unigram, WordLevel,
   other normalizers, pre-tokenizers, decoders, regexes) is TE_LLAMA_ERR_UNSUPPORTED naming the kind.
   Input text that is not valid UTF-8 is first made valid as Rust's String::from_utf8_lossy does (each maximal
   invalid subsequence becomes U+FFFD). Ids that name no token are skipped when decoding, as HF does.
   A tokenizer is immutable once loaded: any number of threads may encode and decode with it at once. */
typedef struct te_llama_tokenizer te_llama_tokenizer;

/* Parse tokenizer.json text (len bytes; not kept). allocator may be NULL. */
TE_LLAMA_API te_llama_result te_llama_tokenizer_parse(const char *json, size_t len, const te_llama_allocator *allocator,
                                                      te_llama_tokenizer **out);
/* Load path: a tokenizer.json file, or a directory holding one. A tokenizer_config.json beside it, if present,
   names the bos and eos tokens. */
TE_LLAMA_API te_llama_result te_llama_tokenizer_load(const char *path, const te_llama_allocator *allocator,
                                                     te_llama_tokenizer **out);
TE_LLAMA_API void te_llama_tokenizer_free(te_llama_tokenizer *tok);

/* Encode len bytes of text; add_special applies the post-processor (e.g. prepends BOS). *ids is allocated by the
   library (free it with te_llama_tokenizer_free_ids); *n_ids gets the count. */
TE_LLAMA_API te_llama_result te_llama_tokenizer_encode(const te_llama_tokenizer *tok, const char *text, size_t len,
                                                       int add_special, int32_t **ids, size_t *n_ids);
TE_LLAMA_API void te_llama_tokenizer_free_ids(const te_llama_tokenizer *tok, int32_t *ids);
/* Decode n ids to text (NUL-terminated, *len bytes; free with te_llama_tokenizer_free_text). skip_special drops
   special added tokens, as HF's decode(skip_special_tokens=True), the Python default, does. */
TE_LLAMA_API te_llama_result te_llama_tokenizer_decode(const te_llama_tokenizer *tok, const int32_t *ids, size_t n,
                                                       int skip_special, char **text, size_t *len);
TE_LLAMA_API void te_llama_tokenizer_free_text(const te_llama_tokenizer *tok, char *text);

/* Streaming decode, one generated token at a time. A token may end inside a UTF-8 character: those bytes wait in
   the state until the character completes. A zeroed state starts a sequence. Each call writes complete UTF-8 text
   (not NUL-terminated) to out (cap bytes) and its length to *len; when cap is too small the result is
   TE_LLAMA_ERR_OUT_OF_RANGE, *len is the size needed and the state is unchanged (256 bytes always suffice for the
   Llama tokenizers). te_llama_tokenizer_decode_flush ends a sequence: leftover bytes of a cut character become
   U+FFFD. For valid UTF-8 the pieces concatenate to what te_llama_tokenizer_decode returns. */
typedef struct te_llama_decode_state {
    unsigned char pending[4]; /* bytes of an incomplete character */
    unsigned n_pending;
    unsigned n_stripped;      /* leading characters removed so far by a Strip decoder */
    int started;              /* a token has been decoded */
    int emitted;              /* a character has been written */
} te_llama_decode_state;
TE_LLAMA_API te_llama_result te_llama_tokenizer_decode_piece(const te_llama_tokenizer *tok, te_llama_decode_state *state,
                                                             int32_t id, int skip_special, char *out, size_t cap,
                                                             size_t *len);
TE_LLAMA_API te_llama_result te_llama_tokenizer_decode_flush(const te_llama_tokenizer *tok, te_llama_decode_state *state,
                                                             char *out, size_t cap, size_t *len);

/* Llama 3 instruct prompt: <|begin_of_text|>, a system turn (omitted when system is NULL), a user turn, and the
   assistant header, each content trimmed of white space as the chat template does. Contents are plain text:
   special-token strings inside them are not turned into special tokens. TE_LLAMA_ERR_NOT_FOUND when the
   tokenizer lacks the header tokens. Free *ids with te_llama_tokenizer_free_ids. */
TE_LLAMA_API te_llama_result te_llama_tokenizer_chat(const te_llama_tokenizer *tok, const char *system, const char *user,
                                                     int32_t **ids, size_t *n_ids);

/* The id of a token given in its tokenizer.json spelling ("<|eot_id|>", "Ġthe", "▁the"), or -1. */
TE_LLAMA_API int32_t te_llama_tokenizer_token_id(const te_llama_tokenizer *tok, const char *token);
/* The tokenizer.json spelling of id (not NUL-terminated; *len bytes), or NULL when no token has that id. */
TE_LLAMA_API const char *te_llama_tokenizer_token(const te_llama_tokenizer *tok, int32_t id, size_t *len);
/* One more than the largest id (model vocabulary and added tokens). */
TE_LLAMA_API size_t te_llama_tokenizer_vocab_size(const te_llama_tokenizer *tok);
TE_LLAMA_API int te_llama_tokenizer_is_special(const te_llama_tokenizer *tok, int32_t id);
/* bos and eos: from tokenizer_config.json when loaded from a path, else bos from the post-processor; -1 if unknown. */
TE_LLAMA_API int32_t te_llama_tokenizer_bos_id(const te_llama_tokenizer *tok);
TE_LLAMA_API int32_t te_llama_tokenizer_eos_id(const te_llama_tokenizer *tok);

#ifdef __cplusplus
}
#endif

#endif /* TE_LLAMA_H */

/* ============================================================================================================
   IMPLEMENTATION
   ============================================================================================================ */
#ifdef TE_LLAMA_IMPLEMENTATION
#ifndef TE_LLAMA_IMPLEMENTATION_DONE
#define TE_LLAMA_IMPLEMENTATION_DONE

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(TE_LLAMA_MALLOC) && defined(TE_LLAMA_REALLOC) && defined(TE_LLAMA_FREE)
#elif !defined(TE_LLAMA_MALLOC) && !defined(TE_LLAMA_REALLOC) && !defined(TE_LLAMA_FREE)
#define TE_LLAMA_MALLOC(sz) malloc(sz)
#define TE_LLAMA_REALLOC(p, sz) realloc(p, sz)
#define TE_LLAMA_FREE(p) free(p)
#else
#error "define all of TE_LLAMA_MALLOC, TE_LLAMA_REALLOC and TE_LLAMA_FREE, or none"
#endif

#if defined(__cplusplus) && __cplusplus >= 201103L
#define TE_LLAMA__THREAD_LOCAL thread_local
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
#define TE_LLAMA__THREAD_LOCAL _Thread_local
#elif defined(__GNUC__)
#define TE_LLAMA__THREAD_LOCAL __thread
#elif defined(_MSC_VER)
#define TE_LLAMA__THREAD_LOCAL __declspec(thread)
#else
#define TE_LLAMA__THREAD_LOCAL
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------------------ results and errors */

static TE_LLAMA__THREAD_LOCAL char te_llama__error[1024];

TE_LLAMA_API const char *te_llama_result_string(te_llama_result r) {
    static const char *const strings[] = {
#define TE_LLAMA__STRING(name, str) str,
        TE_LLAMA__RESULTS(TE_LLAMA__STRING)
#undef TE_LLAMA__STRING
    };
    if ((int)r < 0 || (int)r >= (int)TE_LLAMA_RESULT_COUNT) return "unknown result";
    return strings[r];
}

TE_LLAMA_API const char *te_llama_last_error(void) { return te_llama__error; }

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static te_llama_result te_llama__fail(te_llama_result r, const char *fmt, ...) {
    va_list ap;
    size_t n;
    snprintf(te_llama__error, sizeof te_llama__error, "%s: ", te_llama_result_string(r));
    n = strlen(te_llama__error);
    va_start(ap, fmt);
    vsnprintf(te_llama__error + n, sizeof te_llama__error - n, fmt, ap);
    va_end(ap);
    return r;
}

/* Put context (a file, a key) in front of this thread's message and return r: "code: context: detail", where
   detail is the old message without its own code. The old message is copied first: it lives in the same buffer. */
#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static te_llama_result te_llama__wrap(te_llama_result r, const char *fmt, ...) {
    char old[sizeof te_llama__error], context[512];
    const char *detail = old;
    va_list ap;
    int k;
    memcpy(old, te_llama__error, sizeof old);
    for (k = 0; k < (int)TE_LLAMA_RESULT_COUNT; k++) {
        size_t n = strlen(te_llama_result_string((te_llama_result)k));
        if (strncmp(old, te_llama_result_string((te_llama_result)k), n) == 0 && old[n] == ':' && old[n + 1] == ' ') {
            detail = old + n + 2;
            break;
        }
    }
    va_start(ap, fmt);
    vsnprintf(context, sizeof context, fmt, ap);
    va_end(ap);
    /* the code is under 60 bytes: 60 + 300 + 600 + separators fit the 1024-byte buffer */
    snprintf(te_llama__error, sizeof te_llama__error, "%s: %.300s: %.600s", te_llama_result_string(r), context, detail);
    return r;
}

TE_LLAMA_API te_llama_result te_llama_set_error(te_llama_result r, const char *message) {
    return te_llama__fail(r, "%s", message ? message : "");
}

/* ---------------------------------------------------------------------------------------------- allocation */

static void *te_llama__alloc(const te_llama_allocator *a, size_t n) {
    if (n == 0) n = 1;
    return (a && a->alloc) ? a->alloc(a->user, n) : TE_LLAMA_MALLOC(n);
}
static void *te_llama__realloc(const te_llama_allocator *a, void *p, size_t n) {
    if (n == 0) n = 1;
    return (a && a->realloc) ? a->realloc(a->user, p, n) : TE_LLAMA_REALLOC(p, n);
}
static void te_llama__free(const te_llama_allocator *a, void *p) {
    if (!p) return;
    if (a && a->free) a->free(a->user, p);
    else TE_LLAMA_FREE(p);
}
static void *te_llama__calloc(const te_llama_allocator *a, size_t n) {
    void *p = te_llama__alloc(a, n);
    if (p) memset(p, 0, n);
    return p;
}
static te_llama_allocator te_llama__allocator_copy(const te_llama_allocator *a) {
    te_llama_allocator c;
    memset(&c, 0, sizeof c);
    if (a && a->alloc && a->realloc && a->free) c = *a;
    return c;
}

/* Checked size arithmetic: 0 on overflow. */
static int te_llama__mul(uint64_t a, uint64_t b, uint64_t *out) {
    if (a != 0 && b > UINT64_MAX / a) return 0;
    *out = a * b;
    return 1;
}

/* --------------------------------------------------------------------------------------------------- dtypes */

static const char *const te_llama__dtype_names[TE_LLAMA_DTYPE_COUNT] = {
    "AUTO", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "F64", "BOOL",
    "U8",   "I8",  "I16", "U16",  "I32",     "U32",     "I64", "U64"};
static const unsigned char te_llama__dtype_sizes[TE_LLAMA_DTYPE_COUNT] = {0, 4, 2, 2, 1, 1, 8, 1,
                                                                         1, 1, 2, 2, 4, 4, 8, 8};

TE_LLAMA_API const char *te_llama_dtype_name(te_llama_dtype t) {
    return ((int)t >= 0 && t < TE_LLAMA_DTYPE_COUNT) ? te_llama__dtype_names[t] : "?";
}
TE_LLAMA_API size_t te_llama_dtype_size(te_llama_dtype t) {
    return ((int)t >= 0 && t < TE_LLAMA_DTYPE_COUNT) ? te_llama__dtype_sizes[t] : 0;
}
static int te_llama__is_float(te_llama_dtype t) {
    return t == TE_LLAMA_F32 || t == TE_LLAMA_F16 || t == TE_LLAMA_BF16 || t == TE_LLAMA_F8_E4M3 ||
           t == TE_LLAMA_F8_E5M2 || t == TE_LLAMA_F64;
}

static float te_llama__f32_from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static uint32_t te_llama__bits_from_f32(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

static float te_llama__bf16_to_f32(uint16_t h) { return te_llama__f32_from_bits((uint32_t)h << 16); }
static uint16_t te_llama__f32_to_bf16(float f) {
    uint32_t u = te_llama__bits_from_f32(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);                                           /* round to nearest even */
    return (uint16_t)(u >> 16);
}
static float te_llama__f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (exp == 0x1f) return te_llama__f32_from_bits(sign | 0x7f800000u | (man << 13));
    if (exp == 0) { /* zero or subnormal: man * 2^-24 */
        float f = (float)man * (1.0f / 16777216.0f);
        return sign ? -f : f;
    }
    return te_llama__f32_from_bits(sign | ((exp + 112u) << 23) | (man << 13));
}
static uint16_t te_llama__f32_to_f16(float f) {
    uint32_t u = te_llama__bits_from_f32(f), sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds to >= 65520: infinity */
    if (a < 0x38800000u) {                                     /* below the smallest normal: subnormal */
        float m = te_llama__f32_from_bits(a) * 16777216.0f;   /* exact scale to units of 2^-24 */
        float r = nearbyintf(m);                               /* default rounding mode: nearest even */
        return (uint16_t)(sign | (uint32_t)r);
    }
    a += 0xfffu + ((a >> 13) & 1u);
    return (uint16_t)(sign | ((a - 0x38000000u) >> 13));
}
/* FP8 E4M3 (OCP "fn": no infinities, 0x7f is NaN, max 448) and E5M2 (IEEE-like, max 57344). Values beyond the
   range saturate to the largest finite value, as TransformerEngine's casts do. */
static float te_llama__fp8_to_f32(uint8_t b, int e5m2) {
    if (e5m2) return te_llama__f16_to_f32((uint16_t)(b << 8));
    {
        uint32_t sign = b & 0x80u, exp = (b >> 3) & 0xfu, man = b & 7u;
        float f;
        if (exp == 0xf && man == 7) return NAN;
        f = exp ? ldexpf(1.0f + (float)man / 8.0f, (int)exp - 7) : ldexpf((float)man / 8.0f, -6);
        return sign ? -f : f;
    }
}
static uint8_t te_llama__f32_to_fp8(float f, int e5m2) {
    int mbits = e5m2 ? 2 : 3, bias = e5m2 ? 15 : 7, e;
    float maxv = e5m2 ? 57344.0f : 448.0f, a = fabsf(f), m;
    uint8_t sign = (uint8_t)(signbit(f) ? 0x80 : 0);
    uint32_t q;
    if (isnan(f)) return (uint8_t)(sign | (e5m2 ? 0x7f : 0x7f));
    if (a > maxv) a = maxv;
    if (a == 0.0f) return sign;
    frexpf(a, &e);                           /* a = m * 2^e, m in [0.5, 1) */
    e -= 1;                                  /* a = 1.x * 2^e */
    if (e < 1 - bias) e = 1 - bias;          /* subnormal range shares the smallest exponent */
    m = ldexpf(a, mbits - e);                /* units of the last mantissa bit */
    q = (uint32_t)nearbyintf(m);             /* round to nearest even */
    /* q in [2^mbits, 2^(mbits+1)] for normals, < 2^mbits for subnormals; a carry bumps the exponent */
    if (q >= (2u << mbits)) { q >>= 1; e += 1; }
    if (q < (1u << mbits)) return (uint8_t)(sign | q); /* subnormal */
    {
        uint32_t bits = ((uint32_t)(e + bias) << mbits) | (q & ((1u << mbits) - 1u));
        if (!e5m2 && bits > 0x7e) bits = 0x7e; /* saturate below NaN */
        if (e5m2 && bits > 0x7b) bits = 0x7b;  /* saturate below infinity */
        return (uint8_t)(sign | bits);
    }
}

static float te_llama__load_f32(const void *src, te_llama_dtype t, size_t i) {
    switch (t) {
    case TE_LLAMA_F32: return ((const float *)src)[i];
    case TE_LLAMA_BF16: return te_llama__bf16_to_f32(((const uint16_t *)src)[i]);
    case TE_LLAMA_F16: return te_llama__f16_to_f32(((const uint16_t *)src)[i]);
    case TE_LLAMA_F8_E4M3: return te_llama__fp8_to_f32(((const uint8_t *)src)[i], 0);
    case TE_LLAMA_F8_E5M2: return te_llama__fp8_to_f32(((const uint8_t *)src)[i], 1);
    case TE_LLAMA_F64: return (float)((const double *)src)[i];
    default: return 0.0f;
    }
}

TE_LLAMA_API te_llama_result te_llama_convert(void *dst, te_llama_dtype dt, const void *src, te_llama_dtype st,
                                              size_t n) {
    size_t i;
    if (!te_llama__is_float(dt) || !te_llama__is_float(st))
        return te_llama__fail(TE_LLAMA_ERR_UNSUPPORTED, "conversion %s -> %s", te_llama_dtype_name(st),
                              te_llama_dtype_name(dt));
    if (dt == st) { memcpy(dst, src, n * te_llama_dtype_size(dt)); return TE_LLAMA_OK; }
    if (dt == TE_LLAMA_F64 && st != TE_LLAMA_F64) {
        for (i = 0; i < n; i++) ((double *)dst)[i] = te_llama__load_f32(src, st, i);
        return TE_LLAMA_OK;
    }
    for (i = 0; i < n; i++) {
        float f = te_llama__load_f32(src, st, i);
        switch (dt) {
        case TE_LLAMA_F32: ((float *)dst)[i] = f; break;
        case TE_LLAMA_BF16: ((uint16_t *)dst)[i] = te_llama__f32_to_bf16(f); break;
        case TE_LLAMA_F16: ((uint16_t *)dst)[i] = te_llama__f32_to_f16(f); break;
        case TE_LLAMA_F8_E4M3: ((uint8_t *)dst)[i] = te_llama__f32_to_fp8(f, 0); break;
        case TE_LLAMA_F8_E5M2: ((uint8_t *)dst)[i] = te_llama__f32_to_fp8(f, 1); break;
        default: break;
        }
    }
    return TE_LLAMA_OK;
}

/* ----------------------------------------------------------------------------------------------------- JSON */

static int te_llama__json_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
static int te_llama__hex(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}
static long te_llama__hex4(const char *s) {
    int a = te_llama__hex(s[0]), b = te_llama__hex(s[1]), c = te_llama__hex(s[2]), d = te_llama__hex(s[3]);
    if ((a | b | c | d) < 0) return -1;
    return (long)((a << 12) | (b << 8) | (c << 4) | d);
}

/* Length of the valid UTF-8 sequence at s (at most n bytes), 0 if invalid: no overlongs, no surrogates. */
static int te_llama__utf8_len(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) return (n >= 2 && (s[1] & 0xc0) == 0x80) ? 2 : 0;
    if (c >= 0xe0 && c <= 0xef) {
        if (n < 3 || (s[1] & 0xc0) != 0x80 || (s[2] & 0xc0) != 0x80) return 0;
        if (c == 0xe0 && s[1] < 0xa0) return 0;  /* overlong */
        if (c == 0xed && s[1] >= 0xa0) return 0; /* surrogate */
        return 3;
    }
    if (c >= 0xf0 && c <= 0xf4) {
        if (n < 4 || (s[1] & 0xc0) != 0x80 || (s[2] & 0xc0) != 0x80 || (s[3] & 0xc0) != 0x80) return 0;
        if (c == 0xf0 && s[1] < 0x90) return 0;  /* overlong */
        if (c == 0xf4 && s[1] >= 0x90) return 0; /* above U+10FFFF */
        return 4;
    }
    return 0;
}

static size_t te_llama__utf8_put(char *out, uint32_t cp) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) { out[0] = (char)(0xc0 | (cp >> 6)); out[1] = (char)(0x80 | (cp & 0x3f)); return 2; }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12)); out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f)); return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18)); out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f)); out[3] = (char)(0x80 | (cp & 0x3f)); return 4;
}

/* Decode the (already validated) string body text[start, end) into dst (up to cap bytes written); returns the
   full decoded length. */
static size_t te_llama__json_decode(const char *text, size_t start, size_t end, char *dst, size_t cap) {
    size_t i = start, n = 0;
    char tmp[4];
    while (i < end) {
        size_t k, m;
        if (text[i] != '\\') {
            if (n < cap) dst[n] = text[i];
            n++; i++;
            continue;
        }
        i++;
        switch (text[i]) {
        case 'b': tmp[0] = '\b'; m = 1; break;
        case 'f': tmp[0] = '\f'; m = 1; break;
        case 'n': tmp[0] = '\n'; m = 1; break;
        case 'r': tmp[0] = '\r'; m = 1; break;
        case 't': tmp[0] = '\t'; m = 1; break;
        case 'u': {
            uint32_t cp = (uint32_t)te_llama__hex4(text + i + 1);
            i += 4;
            if (cp >= 0xd800 && cp <= 0xdbff) { /* validated: a low surrogate escape follows */
                uint32_t lo = (uint32_t)te_llama__hex4(text + i + 3);
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                i += 6;
            }
            m = te_llama__utf8_put(tmp, cp);
            break;
        }
        default: tmp[0] = text[i]; m = 1; break; /* \" \\ \/ */
        }
        i++;
        for (k = 0; k < m; k++, n++)
            if (n < cap) dst[n] = tmp[k];
    }
    return n;
}

typedef struct te_llama__json_parser {
    te_llama_json *json;
    size_t cap;
} te_llama__json_parser;

static te_llama_result te_llama__json_push(te_llama__json_parser *p, int type, size_t start, size_t *index) {
    te_llama_json *j = p->json;
    te_llama_json_token *t;
    if (j->n_tokens == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 256;
        te_llama_json_token *grown;
        if (cap > 0xffffffffu) return te_llama__fail(TE_LLAMA_ERR_JSON_LIMIT, "more than 2^32 JSON tokens");
        grown = (te_llama_json_token *)te_llama__realloc(&j->allocator, j->tokens, cap * sizeof *grown);
        if (!grown) return te_llama__fail(TE_LLAMA_ERR_NOMEM, "JSON tokens (%zu)", cap);
        j->tokens = grown;
        p->cap = cap;
    }
    t = &j->tokens[j->n_tokens];
    t->type = (uint8_t)type;
    t->escaped = 0;
    t->start = (uint32_t)start;
    t->end = (uint32_t)start;
    t->size = 0;
    *index = j->n_tokens++;
    t->next = (uint32_t)j->n_tokens;
    return TE_LLAMA_OK;
}

static te_llama_result te_llama__json_string(te_llama__json_parser *p, size_t *pos) {
    const char *s = p->json->text;
    size_t len = p->json->len, i = *pos + 1, index;
    int escaped = 0;
    te_llama_result r;
    for (;;) {
        unsigned char c;
        if (i >= len) return te_llama__fail(TE_LLAMA_ERR_JSON_SYNTAX, "unterminated string at byte %zu", *pos);
        c = (unsigned char)s[i];
        if (c == '"') break;
        if (c < 0x20) return te_llama__fail(TE_LLAMA_ERR_JSON_SYNTAX, "control character in string at byte %zu", i);
        if (c == '\\') {
            escaped = 1;
            if (i + 1 >= len) return te_llama__fail(TE_LLAMA_ERR_JSON_SYNTAX, "bad escape at byte %zu", i);
            c = (unsigned char)s[i + 1];
            if (c == 'u') {
                long cp = (i + 6 <= len) ? te_llama__hex4(s + i + 2) : -1;
                if (cp < 0) return te_llama__fail(TE_LLAMA_ERR_JSON_SYNTAX, "bad \\u escape at byte %zu", i);
                if (cp >= 0xdc00 && cp <= 0xdfff)
                    return te_llama__fail(TE_LLAMA_ERR_JSON_SYNTAX, "lone low surrogate at byte %zu", i);
                if (cp >= 0xd800 && cp <= 0xdbff) {
                    long lo = (i + 12 <= len && s[i + 6] == '\\' && s[i + 7] == 'u') ? te_llama__hex4(s + i + 8) : -1;
                    if (lo < 0xdc00 || lo > 0xdfff)
                        return te_llama__fail(TE_LLAMA_ERR_JSON_SYNTAX, "lone high surrogate at byte %zu", i);
                    i += 6;
                }
                i += 6;
            } else if (c == '"' || c == '\\' || c == '/' || c == 'b' || c == 'f' || c == 'n' || c == 'r' ||
                       c == 't') {
                i += 2;
            } else {
                return te_llama__fail(TE_LLAMA_ERR_JSON_SYNTAX, "bad escape at byte %zu", i);
            }
            continue;
        }
        if (c < 0x80) { i++; continue; }
        {
            int n = te_llama__utf8_len((const unsigned char *)s + i, len - i);
            if (!n) return te_llama__fail(TE_LLAMA_ERR_JSON_SYNTAX, "invalid UTF-8 in string at byte %zu", i);
            i += (size_t)n;
        }
    }
    if ((r = te_llama__json_push(p, TE_LLAMA_JSON_STRING, *pos + 1, &index)) != TE_LLAMA_OK) return r;
    p->json->tokens[index].end = (uint32_t)i;
    p->json->tokens[index].escaped = (uint8_t)escaped;
    *pos = i + 1;
    return TE_LLAMA_OK;
}

static te_llama_result te_llama__json_number(te_llama__json_parser *p, size_t *pos) {
    const char *s = p->json->text;
    size_t len = p->json->len, i = *pos, index;
    te_llama_result r;
    if (i < len && s[i] == '-') i++;
    if (i < len && s[i] == '0') i++;
    else if (i < len && s[i] >= '1' && s[i] <= '9') while (i < len && s[i] >= '0' && s[i] <= '9') i++;
    else return te_llama__fail(TE_LLAMA_ERR_JSON_SYNTAX, "bad number at byte %zu", *pos);
    if (i < len && s[i] == '.') {
        i++;
        if (!(i < len && s[i] >= '0' && s[i] <= '9'))
            return te_llama__fail(TE_LLAMA_ERR_JSON_SYNTAX, "bad fraction at byte %zu", *pos);
        while (i < len && s[i] >= '0' && s[i] <= '9') i++;
    }
    if (i < len && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < len && (s[i] == '+' || s[i] == '-')) i++;
        if (!(i < len && s[i] >= '0' && s[i] <= '9'))
            return te_llama__fail(TE_LLAMA_ERR_JSON_SYNTAX, "bad exponent at byte %zu", *pos);
        while (i < len && s[i] >= '0' && s[i] <= '9') i++;
    }
    if ((r = te_llama__json_push(p, TE_LLAMA_JSON_NUMBER, *pos, &index)) != TE_LLAMA_OK) return r;
    p->json->tokens[index].end = (uint32_t)i;
    *pos = i;
    return TE_LLAMA_OK;
}

/* Two key tokens decode to the same string. */
static int te_llama__json_keys_equal(const te_llama_json *j, const te_llama_json_token *a,
                                     const te_llama_json_token *b) {
    char sa[512], sb[512];
    size_t la, lb;
    if (!a->escaped && !b->escaped)
        return a->end - a->start == b->end - b->start && memcmp(j->text + a->start, j->text + b->start, a->end - a->start) == 0;
    la = te_llama__json_decode(j->text, a->start, a->end, sa, sizeof sa);
    lb = te_llama__json_decode(j->text, b->start, b->end, sb, sizeof sb);
    if (la != lb) return 0;
    if (la <= sizeof sa) return memcmp(sa, sb, la) == 0;
    {   /* long escaped keys: decode on the heap */
        char *da = (char *)te_llama__alloc(&j->allocator, la * 2 + 2), *db;
        int eq;
        if (!da) return 1; /* cannot tell: call them equal, which fails safe */
        db = da + la + 1;
        te_llama__json_decode(j->text, a->start, a->end, da, la);
        te_llama__json_decode(j->text, b->start, b->end, db, lb);
        eq = memcmp(da, db, la) == 0;
        te_llama__free(&j->allocator, da);
        return eq;
    }
}

/* FNV-1a of the first 512 decoded bytes of a key: escaped and plain spellings of one key hash alike. */
static uint64_t te_llama__json_key_hash(const te_llama_json *j, const te_llama_json_token *t) {
    uint64_t h = 1469598103934665603ull;
    const char *p = j->text + t->start;
    size_t i, n = t->end - t->start;
    char buf[512];
    if (t->escaped) {
        n = te_llama__json_decode(j->text, t->start, t->end, buf, sizeof buf);
        p = buf;
    }
    if (n > sizeof buf) n = sizeof buf;
    for (i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
    return h;
}

static te_llama_result te_llama__json_check_keys(te_llama_json *j, size_t obj) {
    const te_llama_json_token *tok = j->tokens;
    size_t n = tok[obj].size, i, k, key;
    if (n < 2) return TE_LLAMA_OK;
    if (n <= 8) {
        size_t keys[8];
        for (k = 0, key = obj + 1; k < n; k++, key = tok[key + 1].next) keys[k] = key;
        for (k = 0; k < n; k++)
            for (i = k + 1; i < n; i++)
                if (te_llama__json_keys_equal(j, &tok[keys[k]], &tok[keys[i]])) goto duplicate;
        return TE_LLAMA_OK;
    duplicate:
        return te_llama__fail(TE_LLAMA_ERR_JSON_DUPLICATE_KEY, "key \"%.*s\" at byte %u",
                              (int)(tok[keys[i]].end - tok[keys[i]].start), j->text + tok[keys[i]].start,
                              tok[keys[i]].start);
    }
    {   /* open addressing over key token indices */
        size_t cap = 16, mask;
        uint32_t *table;
        while (cap < n * 2) cap *= 2;
        mask = cap - 1;
        table = (uint32_t *)te_llama__calloc(&j->allocator, cap * sizeof *table);
        if (!table) return te_llama__fail(TE_LLAMA_ERR_NOMEM, "JSON key table (%zu keys)", n);
        for (k = 0, key = obj + 1; k < n; k++, key = tok[key + 1].next) {
            size_t h = (size_t)te_llama__json_key_hash(j, &tok[key]) & mask;
            while (table[h]) {
                if (te_llama__json_keys_equal(j, &tok[table[h] - 1], &tok[key])) {
                    te_llama__free(&j->allocator, table);
                    return te_llama__fail(TE_LLAMA_ERR_JSON_DUPLICATE_KEY, "key \"%.*s\" at byte %u",
                                          (int)(tok[key].end - tok[key].start), j->text + tok[key].start,
                                          tok[key].start);
                }
                h = (h + 1) & mask;
            }
            table[h] = (uint32_t)key + 1;
        }
        te_llama__free(&j->allocator, table);
    }
    return TE_LLAMA_OK;
}

static te_llama_result te_llama__json_key_colon(te_llama__json_parser *p, size_t *pos) {
    const char *s = p->json->text;
    size_t len = p->json->len;
    te_llama_result r;
    while (*pos < len && te_llama__json_ws(s[*pos])) (*pos)++;
    if (*pos >= len || s[*pos] != '"') return te_llama__fail(TE_LLAMA_ERR_JSON_SYNTAX, "expected a key at byte %zu", *pos);
    if ((r = te_llama__json_string(p, pos)) != TE_LLAMA_OK) return r;
    while (*pos < len && te_llama__json_ws(s[*pos])) (*pos)++;
    if (*pos >= len || s[*pos] != ':') return te_llama__fail(TE_LLAMA_ERR_JSON_SYNTAX, "expected ':' at byte %zu", *pos);
    (*pos)++;
    return TE_LLAMA_OK;
}

TE_LLAMA_API te_llama_result te_llama_json_parse(const char *text, size_t len, const te_llama_allocator *allocator,
                                                 te_llama_json *out) {
    te_llama__json_parser p;
    size_t stack[TE_LLAMA_JSON_MAX_DEPTH];
    size_t depth = 0, pos = 0, index;
    te_llama_result r = TE_LLAMA_OK;
    if (!out || (!text && len)) return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_json_parse: NULL");
    memset(out, 0, sizeof *out);
    out->text = text;
    out->len = len;
    out->allocator = te_llama__allocator_copy(allocator);
    if (len >= 0xffffffffu) return te_llama__fail(TE_LLAMA_ERR_JSON_LIMIT, "JSON text of %zu bytes", len);
    p.json = out;
    p.cap = 0;
    for (;;) {
        char c;
        /* a value is expected here */
        while (pos < len && te_llama__json_ws(text[pos])) pos++;
        if (pos >= len) { r = te_llama__fail(TE_LLAMA_ERR_JSON_SYNTAX, "unexpected end at byte %zu", pos); goto fail; }
        c = text[pos];
        if (c == '{' || c == '[') {
            int is_obj = c == '{';
            if (depth == TE_LLAMA_JSON_MAX_DEPTH) {
                r = te_llama__fail(TE_LLAMA_ERR_JSON_LIMIT, "nesting deeper than %d at byte %zu", TE_LLAMA_JSON_MAX_DEPTH, pos);
                goto fail;
            }
            if ((r = te_llama__json_push(&p, is_obj ? TE_LLAMA_JSON_OBJECT : TE_LLAMA_JSON_ARRAY, pos, &index))) goto fail;
            stack[depth++] = index;
            pos++;
            while (pos < len && te_llama__json_ws(text[pos])) pos++;
            if (pos < len && text[pos] == (is_obj ? '}' : ']')) {
                pos++;
                out->tokens[index].end = (uint32_t)pos;
                out->tokens[index].next = (uint32_t)out->n_tokens;
                depth--;
                goto after_value_closed;
            }
            if (is_obj && (r = te_llama__json_key_colon(&p, &pos))) goto fail;
            continue;
        } else if (c == '"') {
            if ((r = te_llama__json_string(&p, &pos))) goto fail;
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            if ((r = te_llama__json_number(&p, &pos))) goto fail;
        } else {
            static const char *const lits[3] = {"null", "false", "true"};
            int k, found = 0;
            for (k = 0; k < 3; k++) {
                size_t n = strlen(lits[k]);
                if (len - pos >= n && memcmp(text + pos, lits[k], n) == 0) {
                    if ((r = te_llama__json_push(&p, TE_LLAMA_JSON_NULL + k, pos, &index))) goto fail;
                    out->tokens[index].end = (uint32_t)(pos + n);
                    pos += n;
                    found = 1;
                    break;
                }
            }
            if (!found) { r = te_llama__fail(TE_LLAMA_ERR_JSON_SYNTAX, "unexpected character at byte %zu", pos); goto fail; }
        }
    after_value_closed:
        /* a value just ended: count it in its container, then a comma or the container's end follows */
        while (depth > 0) {
            size_t top = stack[depth - 1];
            int is_obj = out->tokens[top].type == TE_LLAMA_JSON_OBJECT;
            out->tokens[top].size++;
            while (pos < len && te_llama__json_ws(text[pos])) pos++;
            if (pos < len && text[pos] == ',') {
                pos++;
                if (is_obj && (r = te_llama__json_key_colon(&p, &pos))) goto fail;
                break;
            }
            if (pos < len && text[pos] == (is_obj ? '}' : ']')) {
                pos++;
                out->tokens[top].end = (uint32_t)pos;
                out->tokens[top].next = (uint32_t)out->n_tokens;
                if (is_obj && (r = te_llama__json_check_keys(out, top))) goto fail;
                depth--;
                continue;
            }
            r = te_llama__fail(TE_LLAMA_ERR_JSON_SYNTAX, "expected ',' or '%c' at byte %zu", is_obj ? '}' : ']', pos);
            goto fail;
        }
        if (depth == 0) break;
    }
    while (pos < len && te_llama__json_ws(text[pos])) pos++;
    if (pos != len) { r = te_llama__fail(TE_LLAMA_ERR_JSON_SYNTAX, "trailing bytes at byte %zu", pos); goto fail; }
    return TE_LLAMA_OK;
fail:
    te_llama_json_free(out);
    return r;
}

TE_LLAMA_API void te_llama_json_free(te_llama_json *json) {
    if (!json) return;
    te_llama__free(&json->allocator, json->tokens);
    json->tokens = NULL;
    json->n_tokens = 0;
}

TE_LLAMA_API int te_llama_json_equals(const te_llama_json *j, size_t tok, const char *s) {
    const te_llama_json_token *t;
    size_t n = strlen(s);
    if (!j || tok >= j->n_tokens) return 0;
    t = &j->tokens[tok];
    if (t->type != TE_LLAMA_JSON_STRING) return 0;
    if (!t->escaped) return (size_t)(t->end - t->start) == n && memcmp(j->text + t->start, s, n) == 0;
    {
        char buf[256], *heap = NULL;
        size_t m = te_llama__json_decode(j->text, t->start, t->end, buf, sizeof buf);
        int eq;
        if (m != n) return 0;
        if (m <= sizeof buf) return memcmp(buf, s, n) == 0;
        heap = (char *)te_llama__alloc(&j->allocator, m); /* a long escaped string */
        if (!heap) return 0;
        te_llama__json_decode(j->text, t->start, t->end, heap, m);
        eq = memcmp(heap, s, n) == 0;
        te_llama__free(&j->allocator, heap);
        return eq;
    }
}

TE_LLAMA_API size_t te_llama_json_get(const te_llama_json *j, size_t obj, const char *key) {
    size_t k, i;
    if (!j || obj >= j->n_tokens || j->tokens[obj].type != TE_LLAMA_JSON_OBJECT) return 0;
    for (k = 0, i = obj + 1; k < j->tokens[obj].size; k++, i = j->tokens[i + 1].next)
        if (te_llama_json_equals(j, i, key)) return i + 1;
    return 0;
}

TE_LLAMA_API te_llama_result te_llama_json_string(const te_llama_json *j, size_t tok, char *buf, size_t cap,
                                                  size_t *len) {
    const te_llama_json_token *t;
    size_t n;
    if (!j || tok >= j->n_tokens || j->tokens[tok].type != TE_LLAMA_JSON_STRING)
        return te_llama__fail(TE_LLAMA_ERR_JSON_SCHEMA, "expected a string at byte %u",
                              (j && tok < j->n_tokens) ? j->tokens[tok].start : 0u);
    t = &j->tokens[tok];
    n = te_llama__json_decode(j->text, t->start, t->end, buf, cap);
    if (len) *len = n;
    if (n >= cap) return te_llama__fail(TE_LLAMA_ERR_OUT_OF_RANGE, "string of %zu bytes at byte %u is too long", n, t->start);
    buf[n] = 0;
    return TE_LLAMA_OK;
}

TE_LLAMA_API te_llama_result te_llama_json_int64(const te_llama_json *j, size_t tok, int64_t *out) {
    const te_llama_json_token *t;
    size_t i;
    uint64_t v = 0, limit;
    int neg;
    if (!j || tok >= j->n_tokens || j->tokens[tok].type != TE_LLAMA_JSON_NUMBER)
        return te_llama__fail(TE_LLAMA_ERR_JSON_SCHEMA, "expected an integer at byte %u",
                              (j && tok < j->n_tokens) ? j->tokens[tok].start : 0u);
    t = &j->tokens[tok];
    i = t->start;
    neg = j->text[i] == '-';
    if (neg) i++;
    limit = neg ? (uint64_t)INT64_MAX + 1u : (uint64_t)INT64_MAX;
    for (; i < t->end; i++) {
        unsigned d;
        char c = j->text[i];
        if (c < '0' || c > '9')
            return te_llama__fail(TE_LLAMA_ERR_JSON_SCHEMA, "expected an integer, found %.*s at byte %u",
                                  (int)(t->end - t->start), j->text + t->start, t->start);
        d = (unsigned)(c - '0');
        if (v > (limit - d) / 10)
            return te_llama__fail(TE_LLAMA_ERR_OUT_OF_RANGE, "integer %.*s at byte %u overflows 64 bits",
                                  (int)(t->end - t->start), j->text + t->start, t->start);
        v = v * 10 + d;
    }
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return TE_LLAMA_OK;
}

TE_LLAMA_API te_llama_result te_llama_json_double(const te_llama_json *j, size_t tok, double *out) {
    const te_llama_json_token *t;
    char buf[64];
    size_t n;
    if (!j || tok >= j->n_tokens || j->tokens[tok].type != TE_LLAMA_JSON_NUMBER)
        return te_llama__fail(TE_LLAMA_ERR_JSON_SCHEMA, "expected a number at byte %u",
                              (j && tok < j->n_tokens) ? j->tokens[tok].start : 0u);
    t = &j->tokens[tok];
    n = t->end - t->start;
    if (n >= sizeof buf) return te_llama__fail(TE_LLAMA_ERR_OUT_OF_RANGE, "number of %zu digits at byte %u", n, t->start);
    memcpy(buf, j->text + t->start, n);
    buf[n] = 0;
    *out = strtod(buf, NULL); /* the grammar was checked by the parser; the C locale's '.' is assumed */
    if (!isfinite(*out)) return te_llama__fail(TE_LLAMA_ERR_OUT_OF_RANGE, "number %s at byte %u is not finite", buf, t->start);
    return TE_LLAMA_OK;
}

/* ---------------------------------------------------------------------------------------------- file helpers */

#ifdef TE_LLAMA_TESTING
/* Fault injection for the tests: when >= 0, the write that brings it to -1 fails (and so do the ones after). */
long te_llama_test_write_countdown = -1;
#endif

static te_llama_result te_llama__write(FILE *f, const void *data, size_t n, const char *path) {
#ifdef TE_LLAMA_TESTING
    if (te_llama_test_write_countdown >= 0 && te_llama_test_write_countdown-- == 0) {
        te_llama_test_write_countdown = 0;
        return te_llama__fail(TE_LLAMA_ERR_IO, "writing %s: injected failure", path);
    }
#endif
    if (n && fwrite(data, 1, n, f) != n) return te_llama__fail(TE_LLAMA_ERR_IO, "writing %s: %s", path, strerror(errno));
    return TE_LLAMA_OK;
}

/* Flush, fsync and close; a failure anywhere is an I/O error. */
static te_llama_result te_llama__close(FILE *f, const char *path, te_llama_result r) {
    int bad = 0;
    if (r == TE_LLAMA_OK) bad = fflush(f) != 0 || fsync(fileno(f)) != 0;
    if (fclose(f) != 0) bad = 1;
    if (r == TE_LLAMA_OK && bad) r = te_llama__fail(TE_LLAMA_ERR_IO, "closing %s: %s", path, strerror(errno));
    return r;
}

/* pread all of n bytes at offset. */
static te_llama_result te_llama__pread(int fd, void *buf, size_t n, uint64_t offset, const char *path) {
    char *p = (char *)buf;
    while (n) {
        ssize_t got = pread(fd, p, n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n, (off_t)offset);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) return te_llama__fail(TE_LLAMA_ERR_IO, "reading %s at byte %llu: %s", path, (unsigned long long)offset, strerror(errno));
        if (got == 0) return te_llama__fail(TE_LLAMA_ERR_ST_HEADER, "%s: file ends at byte %llu", path, (unsigned long long)offset);
        p += got; n -= (size_t)got; offset += (uint64_t)got;
    }
    return TE_LLAMA_OK;
}

/* Read a whole (small) file into memory, NUL-terminated. */
static te_llama_result te_llama__read_file(const char *path, const te_llama_allocator *a, size_t limit, char **out,
                                           size_t *len) {
    int fd = open(path, O_RDONLY | O_NONBLOCK); /* a FIFO must not block: it is refused below as not a regular file */
    struct stat st;
    te_llama_result r;
    char *buf;
    if (fd < 0) return te_llama__fail(errno == ENOENT ? TE_LLAMA_ERR_NOT_FOUND : TE_LLAMA_ERR_IO, "%s: %s", path, strerror(errno));
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) { close(fd); return te_llama__fail(TE_LLAMA_ERR_IO, "%s: not a regular file", path); }
    if ((uint64_t)st.st_size > limit) { close(fd); return te_llama__fail(TE_LLAMA_ERR_JSON_LIMIT, "%s: %llu bytes, above the limit of %zu", path, (unsigned long long)st.st_size, limit); }
    buf = (char *)te_llama__alloc(a, (size_t)st.st_size + 1);
    if (!buf) { close(fd); return te_llama__fail(TE_LLAMA_ERR_NOMEM, "%s (%llu bytes)", path, (unsigned long long)st.st_size); }
    r = te_llama__pread(fd, buf, (size_t)st.st_size, 0, path);
    close(fd);
    if (r) { te_llama__free(a, buf); return r; }
    buf[st.st_size] = 0;
    *out = buf;
    *len = (size_t)st.st_size;
    return TE_LLAMA_OK;
}

static te_llama_result te_llama__join(char *out, size_t cap, const char *dir, const char *name) {
    int n = snprintf(out, cap, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= cap) return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "path too long: %s/%s", dir, name);
    return TE_LLAMA_OK;
}

/* A file name read from a checkpoint is data from a stranger: plain names in the same directory only. */
static te_llama_result te_llama__check_plain_name(const char *name, const char *where) {
    size_t i, n = strlen(name);
    if (n == 0 || n > 255 || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
        return te_llama__fail(TE_LLAMA_ERR_UNSAFE_PATH, "%s: file name \"%s\"", where, name);
    for (i = 0; i < n; i++)
        if (name[i] == '/' || name[i] == '\\' || (unsigned char)name[i] < 0x20)
            return te_llama__fail(TE_LLAMA_ERR_UNSAFE_PATH, "%s: file name \"%s\" is not a plain name", where, name);
    return TE_LLAMA_OK;
}

/* ----------------------------------------------------------------------------------------------- safetensors */

static int te_llama__dtype_from_name(const te_llama_json *j, size_t tok, te_llama_dtype *out) {
    int t;
    for (t = 1; t < TE_LLAMA_DTYPE_COUNT; t++)
        if (te_llama_json_equals(j, tok, te_llama__dtype_names[t])) { *out = (te_llama_dtype)t; return 1; }
    return 0;
}

static int te_llama__st_by_offset(const void *a, const void *b) {
    const te_llama_st_tensor *x = (const te_llama_st_tensor *)a, *y = (const te_llama_st_tensor *)b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    return (x->nbytes > y->nbytes) - (x->nbytes < y->nbytes);
}

TE_LLAMA_API te_llama_result te_llama_safetensors_parse(const void *bytes, size_t n_bytes, uint64_t file_size,
                                                        const te_llama_allocator *allocator,
                                                        te_llama_safetensors *out) {
    const unsigned char *b = (const unsigned char *)bytes;
    uint64_t hlen = 0, expect = 0, ends[2];
    te_llama_json j;
    te_llama_result r;
    size_t k, i, n_tensors, names_bytes = 0, t;
    char *names;
    if (!out || !bytes) return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_safetensors_parse: NULL");
    memset(out, 0, sizeof *out);
    out->allocator = te_llama__allocator_copy(allocator);
    if (n_bytes < 8 || file_size < 8) return te_llama__fail(TE_LLAMA_ERR_ST_HEADER, "file of %llu bytes has no header length", (unsigned long long)file_size);
    for (k = 0; k < 8; k++) hlen |= (uint64_t)b[k] << (8 * k);
    if (hlen > TE_LLAMA_ST_MAX_HEADER)
        return te_llama__fail(TE_LLAMA_ERR_ST_HEADER, "header length %llu above the limit of %u", (unsigned long long)hlen, TE_LLAMA_ST_MAX_HEADER);
    if (hlen > file_size - 8)
        return te_llama__fail(TE_LLAMA_ERR_ST_HEADER, "header length %llu runs past the end of the %llu-byte file", (unsigned long long)hlen, (unsigned long long)file_size);
    if (hlen < 2) return te_llama__fail(TE_LLAMA_ERR_ST_HEADER, "header of %llu bytes", (unsigned long long)hlen);
    if (n_bytes < 8 + hlen) return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "only %zu of the header's %llu bytes given", n_bytes, (unsigned long long)(8 + hlen));
    out->data_start = 8 + hlen;
    out->data_len = file_size - 8 - hlen;
    if ((r = te_llama_json_parse((const char *)b + 8, (size_t)hlen, allocator, &j))) return r;
    if (j.tokens[0].type != TE_LLAMA_JSON_OBJECT) { te_llama_json_free(&j); return te_llama__fail(TE_LLAMA_ERR_ST_HEADER, "header is not a JSON object"); }
    /* first pass: count tensors and name bytes */
    n_tensors = 0;
    for (k = 0, i = 1; k < j.tokens[0].size; k++, i = j.tokens[i + 1].next) {
        if (te_llama_json_equals(&j, i, "__metadata__")) continue;
        n_tensors++;
        names_bytes += te_llama__json_decode(j.text, j.tokens[i].start, j.tokens[i].end, NULL, 0) + 1;
    }
    out->tensors = (te_llama_st_tensor *)te_llama__calloc(allocator, n_tensors * sizeof *out->tensors + names_bytes);
    if (!out->tensors) { te_llama_json_free(&j); return te_llama__fail(TE_LLAMA_ERR_NOMEM, "safetensors index of %zu tensors", n_tensors); }
    names = (char *)(out->tensors + n_tensors);
    for (k = 0, i = 1, t = 0; k < j.tokens[0].size; k++, i = j.tokens[i + 1].next) {
        size_t v = i + 1, f, d;
        te_llama_st_tensor *ts;
        uint64_t nbytes;
        char name[TE_LLAMA_NAME_MAX];
        size_t nlen = te_llama__json_decode(j.text, j.tokens[i].start, j.tokens[i].end, name, sizeof name - 1);
        name[nlen < sizeof name ? nlen : sizeof name - 1] = 0;
        if (te_llama_json_equals(&j, i, "__metadata__")) {
            size_t m, e;
            if (j.tokens[v].type != TE_LLAMA_JSON_OBJECT) { r = te_llama__fail(TE_LLAMA_ERR_ST_HEADER, "__metadata__ is not an object"); goto fail; }
            for (m = 0, e = v + 1; m < j.tokens[v].size; m++, e = j.tokens[e + 1].next)
                if (j.tokens[e + 1].type != TE_LLAMA_JSON_STRING) { r = te_llama__fail(TE_LLAMA_ERR_ST_HEADER, "__metadata__ value at byte %u is not a string", j.tokens[e + 1].start); goto fail; }
            continue;
        }
        ts = &out->tensors[t++];
        ts->name = names;
        {
            size_t name_len = te_llama__json_decode(j.text, j.tokens[i].start, j.tokens[i].end, names, (size_t)-1);
            if (memchr(names, 0, name_len)) { /* "a\u0000b" would read as the C string "a" */
                r = te_llama__fail(TE_LLAMA_ERR_ST_HEADER, "tensor name \"%s\\u0000...\" at byte %u holds a NUL character", names, j.tokens[i].start);
                goto fail;
            }
            names += name_len;
        }
        *names++ = 0;
        if (j.tokens[v].type != TE_LLAMA_JSON_OBJECT) { r = te_llama__fail(TE_LLAMA_ERR_ST_HEADER, "tensor \"%s\": entry is not an object", name); goto fail; }
        if (!(f = te_llama_json_get(&j, v, "dtype")) || j.tokens[f].type != TE_LLAMA_JSON_STRING) { r = te_llama__fail(TE_LLAMA_ERR_ST_HEADER, "tensor \"%s\": no dtype", name); goto fail; }
        if (!te_llama__dtype_from_name(&j, f, &ts->dtype)) {
            r = te_llama__fail(TE_LLAMA_ERR_ST_DTYPE, "tensor \"%s\": dtype \"%.*s\"", name, (int)(j.tokens[f].end - j.tokens[f].start), j.text + j.tokens[f].start);
            goto fail;
        }
        if (!(f = te_llama_json_get(&j, v, "shape")) || j.tokens[f].type != TE_LLAMA_JSON_ARRAY) { r = te_llama__fail(TE_LLAMA_ERR_ST_HEADER, "tensor \"%s\": no shape", name); goto fail; }
        if (j.tokens[f].size > TE_LLAMA_ST_MAX_DIMS) { r = te_llama__fail(TE_LLAMA_ERR_ST_HEADER, "tensor \"%s\": %u dimensions, at most %d", name, j.tokens[f].size, TE_LLAMA_ST_MAX_DIMS); goto fail; }
        ts->ndim = (int)j.tokens[f].size;
        nbytes = te_llama_dtype_size(ts->dtype);
        for (d = 0; d < (size_t)ts->ndim; d++) {
            int64_t dim;
            if (te_llama_json_int64(&j, f + 1 + d, &dim) || dim < 0) { r = te_llama__fail(TE_LLAMA_ERR_ST_HEADER, "tensor \"%s\": shape[%zu] is not a size", name, d); goto fail; }
            ts->shape[d] = dim;
            if (!te_llama__mul(nbytes, (uint64_t)dim, &nbytes)) { r = te_llama__fail(TE_LLAMA_ERR_ST_SIZE, "tensor \"%s\": shape x dtype size overflows 64 bits", name); goto fail; }
        }
        ts->nbytes = nbytes;
        if (!(f = te_llama_json_get(&j, v, "data_offsets")) || j.tokens[f].type != TE_LLAMA_JSON_ARRAY || j.tokens[f].size != 2) { r = te_llama__fail(TE_LLAMA_ERR_ST_HEADER, "tensor \"%s\": data_offsets is not [begin, end]", name); goto fail; }
        for (d = 0; d < 2; d++) {
            int64_t e;
            if (te_llama_json_int64(&j, f + 1 + d, &e) || e < 0) { r = te_llama__fail(TE_LLAMA_ERR_ST_HEADER, "tensor \"%s\": data_offsets[%zu] is not an offset", name, d); goto fail; }
            ends[d] = (uint64_t)e;
        }
        if (ends[1] < ends[0]) { r = te_llama__fail(TE_LLAMA_ERR_ST_OFFSETS, "tensor \"%s\": data_offsets [%llu, %llu] end before they begin", name, (unsigned long long)ends[0], (unsigned long long)ends[1]); goto fail; }
        if (ends[1] - ends[0] != nbytes) {
            r = te_llama__fail(TE_LLAMA_ERR_ST_SIZE, "tensor \"%s\": shape x dtype is %llu bytes, data_offsets span %llu", name, (unsigned long long)nbytes, (unsigned long long)(ends[1] - ends[0]));
            goto fail;
        }
        ts->offset = ends[0];
    }
    out->n_tensors = t;
    te_llama_json_free(&j);
    qsort(out->tensors, out->n_tensors, sizeof *out->tensors, te_llama__st_by_offset);
    for (t = 0; t < out->n_tensors; t++) {
        const te_llama_st_tensor *ts = &out->tensors[t];
        if (ts->offset != expect) {
            r = te_llama__fail(TE_LLAMA_ERR_ST_OFFSETS, "tensor \"%s\" begins at data byte %llu, expected %llu (%s)", ts->name, (unsigned long long)ts->offset, (unsigned long long)expect, ts->offset > expect ? "gap" : "overlap");
            te_llama_safetensors_free(out);
            return r;
        }
        expect = ts->offset + ts->nbytes;
    }
    if (expect != out->data_len) {
        r = te_llama__fail(TE_LLAMA_ERR_ST_OFFSETS, "tensors end at data byte %llu but the data section holds %llu bytes", (unsigned long long)expect, (unsigned long long)out->data_len);
        te_llama_safetensors_free(out);
        return r;
    }
    return TE_LLAMA_OK;
fail:
    te_llama_json_free(&j);
    te_llama_safetensors_free(out);
    return r;
}

TE_LLAMA_API void te_llama_safetensors_free(te_llama_safetensors *st) {
    if (!st) return;
    te_llama__free(&st->allocator, st->tensors);
    st->tensors = NULL;
    st->n_tensors = 0;
}

static te_llama_result te_llama__st_open_fd(int fd, const char *path, const te_llama_allocator *a,
                                            te_llama_safetensors *out) {
    struct stat sb;
    unsigned char prefix[8];
    uint64_t hlen = 0, size;
    char *buf;
    te_llama_result r;
    int k;
    memset(out, 0, sizeof *out);
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) return te_llama__fail(TE_LLAMA_ERR_IO, "%s: not a regular file", path);
    size = (uint64_t)sb.st_size;
    if (size < 8) return te_llama__fail(TE_LLAMA_ERR_ST_HEADER, "%s: file of %llu bytes has no header length", path, (unsigned long long)size);
    if ((r = te_llama__pread(fd, prefix, 8, 0, path))) return r;
    for (k = 0; k < 8; k++) hlen |= (uint64_t)prefix[k] << (8 * k);
    if (hlen > TE_LLAMA_ST_MAX_HEADER || hlen > size - 8) {
        r = te_llama_safetensors_parse(prefix, 8, size, a, out); /* produces the precise header error */
        return te_llama__wrap(r, "%s", path);
    }
    buf = (char *)te_llama__alloc(a, (size_t)hlen + 8);
    if (!buf) return te_llama__fail(TE_LLAMA_ERR_NOMEM, "%s: header of %llu bytes", path, (unsigned long long)hlen);
    memcpy(buf, prefix, 8);
    r = te_llama__pread(fd, buf + 8, (size_t)hlen, 8, path);
    if (!r) {
        r = te_llama_safetensors_parse(buf, (size_t)hlen + 8, size, a, out);
        if (r) te_llama__wrap(r, "%s (header bytes count from byte 8)", path);
    }
    te_llama__free(a, buf);
    return r;
}

TE_LLAMA_API te_llama_result te_llama_safetensors_open(const char *path, const te_llama_allocator *allocator,
                                                       te_llama_safetensors *out) {
    int fd;
    te_llama_result r;
    if (!path || !out) return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_safetensors_open: NULL");
    fd = open(path, O_RDONLY | O_NONBLOCK); /* a FIFO must not block: it is refused below as not a regular file */
    if (fd < 0) return te_llama__fail(errno == ENOENT ? TE_LLAMA_ERR_NOT_FOUND : TE_LLAMA_ERR_IO, "%s: %s", path, strerror(errno));
    r = te_llama__st_open_fd(fd, path, allocator, out);
    close(fd);
    return r;
}

TE_LLAMA_API const te_llama_st_tensor *te_llama_safetensors_find(const te_llama_safetensors *st, const char *name) {
    size_t i;
    for (i = 0; st && i < st->n_tensors; i++)
        if (strcmp(st->tensors[i].name, name) == 0) return &st->tensors[i];
    return NULL;
}

/* A growable text buffer for the JSON this library writes. */
typedef struct te_llama__buf {
    char *data;
    size_t len, cap;
    int failed;
    const te_llama_allocator *allocator;
} te_llama__buf;

static void te_llama__buf_put(te_llama__buf *b, const char *s, size_t n) {
    if (b->failed) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        char *grown;
        while (cap < b->len + n + 1) cap *= 2;
        grown = (char *)te_llama__realloc(b->allocator, b->data, cap);
        if (!grown) { b->failed = 1; return; }
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = 0;
}
static void te_llama__buf_str(te_llama__buf *b, const char *s) { te_llama__buf_put(b, s, strlen(s)); }
#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void te_llama__buf_printf(te_llama__buf *b, const char *fmt, ...) {
    char tmp[512];
    va_list ap;
    int n;
    va_start(ap, fmt);
    n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof tmp) { b->failed = 1; return; }
    te_llama__buf_put(b, tmp, (size_t)n);
}
/* A JSON string literal, escaped. */
static void te_llama__buf_json_string(te_llama__buf *b, const char *s) {
    te_llama__buf_put(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') { char e[2] = {'\\', (char)c}; te_llama__buf_put(b, e, 2); }
        else if (c < 0x20) te_llama__buf_printf(b, "\\u%04x", c);
        else te_llama__buf_put(b, s, 1);
    }
    te_llama__buf_put(b, "\"", 1);
}

/* One tensor to write: shape in the target dtype, data read from src (src_dtype; device memory if
   src_on_device) and converted on the way. */
typedef struct te_llama__st_source {
    const char *name;
    te_llama_dtype dtype;
    int ndim;
    int64_t shape[TE_LLAMA_ST_MAX_DIMS];
    const void *src;
    te_llama_dtype src_dtype;
    int src_on_device;
    float src_scale_inv;              /* nonzero: src is FP8 to multiply by this (an FP8 model's GEMM weights) */
} te_llama__st_source;


static uint64_t te_llama__st_source_bytes(const te_llama__st_source *t) {
    uint64_t n = te_llama_dtype_size(t->dtype);
    int d;
    for (d = 0; d < t->ndim; d++) n *= (uint64_t)t->shape[d];
    return n;
}

/* Write a safetensors file at path (which the caller names and renames). staging: scratch of staging_bytes for
   conversions and device copies. */
static te_llama_result te_llama__st_write_file(const char *path, const te_llama__st_source *t, size_t n,
                                               void *staging, size_t staging_bytes, const te_llama_allocator *a,
                                               const te_llama_options *progress, int file_index, int n_files) {
    te_llama__buf h;
    uint64_t offset = 0, total;
    size_t i;
    unsigned char prefix[8];
    int k;
    FILE *f;
    te_llama_result r = TE_LLAMA_OK;
    te_llama_progress pr;
    memset(&h, 0, sizeof h);
    h.allocator = a;
    te_llama__buf_str(&h, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (i = 0; i < n; i++) {
        uint64_t bytes = te_llama__st_source_bytes(&t[i]);
        te_llama__buf_put(&h, ",", 1);
        te_llama__buf_json_string(&h, t[i].name);
        te_llama__buf_printf(&h, ":{\"dtype\":\"%s\",\"shape\":[", te_llama_dtype_name(t[i].dtype));
        for (k = 0; k < t[i].ndim; k++) te_llama__buf_printf(&h, k ? ",%lld" : "%lld", (long long)t[i].shape[k]);
        te_llama__buf_printf(&h, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)offset, (unsigned long long)(offset + bytes));
        offset += bytes;
    }
    te_llama__buf_put(&h, "}", 1);
    while (!h.failed && (h.len % 8) != 0) te_llama__buf_put(&h, " ", 1);
    if (h.failed) { te_llama__free(a, h.data); return te_llama__fail(TE_LLAMA_ERR_NOMEM, "safetensors header for %s", path); }
    for (k = 0; k < 8; k++) prefix[k] = (unsigned char)((uint64_t)h.len >> (8 * k));
    total = 8 + h.len + offset;
    memset(&pr, 0, sizeof pr);
    pr.what = "save"; pr.file = path; pr.file_index = file_index; pr.n_files = n_files; pr.bytes_total = total;
    f = fopen(path, "wb");
    if (!f) { te_llama__free(a, h.data); return te_llama__fail(TE_LLAMA_ERR_IO, "creating %s: %s", path, strerror(errno)); }
    r = te_llama__write(f, prefix, 8, path);
    if (!r) r = te_llama__write(f, h.data, h.len, path);
    te_llama__free(a, h.data);
    pr.bytes_done = 8 + h.len;
    for (i = 0; i < n && !r; i++) {
        size_t src_es = te_llama_dtype_size(t[i].src_dtype), dst_es = te_llama_dtype_size(t[i].dtype);
        uint64_t count = te_llama__st_source_bytes(&t[i]) / dst_es, done = 0;
        size_t per = staging_bytes / (src_es > dst_es ? src_es : dst_es) / 2; /* half for the source, half converted */
        if (t[i].src_scale_inv != 0.0f) per = staging_bytes / 9; /* float32 (4), converted (<= 4), downloaded FP8 (1) */
        if (!t[i].src_on_device && t[i].src_dtype == t[i].dtype && t[i].src_scale_inv == 0.0f) {
            r = te_llama__write(f, t[i].src, (size_t)(count * dst_es), path);
            pr.bytes_done += count * dst_es;
            if (progress && progress->progress) progress->progress(progress->user, &pr);
            continue;
        }
        while (done < count && !r) {
            size_t m = (size_t)(count - done < per ? count - done : per);
            const char *src = (const char *)t[i].src + done * src_es;
            char *in = (char *)staging + (t[i].src_scale_inv != 0.0f ? per * 8 : 0); /* FP8: clear of the float32 */
            char *conv = (char *)staging + per * (src_es > dst_es ? src_es : dst_es);
            (void)in;
            if (t[i].src_on_device) {
#ifdef TE_LLAMA_CUDA
                if ((r = te_llama_cuda_download(in, src, m * src_es))) break;
                src = in;
#else
                r = te_llama__fail(TE_LLAMA_ERR_NO_CUDA, "%s: device tensor in a CPU-only build", t[i].name);
                break;
#endif
            }
            if (t[i].src_scale_inv != 0.0f) { /* FP8 source: dequantise into the first half */
                if ((r = te_llama_fp8_dequantize((float *)staging, (const uint8_t *)src, m, t[i].src_scale_inv, t[i].src_dtype))) break;
                conv = (char *)staging + per * 4;
                r = te_llama_convert(conv, t[i].dtype, staging, TE_LLAMA_F32, m);
            } else {
                r = te_llama_convert(conv, t[i].dtype, src, t[i].src_dtype, m);
            }
            if (r) break;
            r = te_llama__write(f, conv, m * dst_es, path);
            done += m;
            pr.bytes_done += m * dst_es;
            if (progress && progress->progress) progress->progress(progress->user, &pr);
        }
    }
    return te_llama__close(f, path, r);
}

TE_LLAMA_API te_llama_result te_llama_safetensors_write(const char *path, const te_llama_st_write_tensor *tensors,
                                                        size_t n_tensors) {
    te_llama__st_source *src;
    char tmp[4096];
    size_t i;
    te_llama_result r;
    int d;
    if (!path || (!tensors && n_tensors)) return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_safetensors_write: NULL");
    src = (te_llama__st_source *)te_llama__calloc(NULL, n_tensors * sizeof *src);
    if (!src) return te_llama__fail(TE_LLAMA_ERR_NOMEM, "writing %s", path);
    for (i = 0; i < n_tensors; i++) {
        if (tensors[i].ndim < 0 || tensors[i].ndim > TE_LLAMA_ST_MAX_DIMS || !te_llama_dtype_size(tensors[i].dtype)) {
            te_llama__free(NULL, src);
            return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "tensor \"%s\": bad dtype or ndim", tensors[i].name);
        }
        src[i].name = tensors[i].name;
        src[i].dtype = src[i].src_dtype = tensors[i].dtype;
        src[i].ndim = tensors[i].ndim;
        for (d = 0; d < tensors[i].ndim; d++) src[i].shape[d] = tensors[i].shape[d];
        src[i].src = tensors[i].data;
    }
    if (snprintf(tmp, sizeof tmp, "%s.tmp-te_llama", path) >= (int)sizeof tmp) { te_llama__free(NULL, src); return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "path too long"); }
    r = te_llama__st_write_file(tmp, src, n_tensors, NULL, 0, NULL, NULL, 0, 1);
    te_llama__free(NULL, src);
    if (!r && rename(tmp, path) != 0) r = te_llama__fail(TE_LLAMA_ERR_IO, "renaming %s to %s: %s", tmp, path, strerror(errno));
    if (r) remove(tmp);
    return r;
}

/* ---------------------------------------------------------------------------------------------------- config */

/* Bounds that reject absurd configs before any allocation. */
#define TE_LLAMA__MAX_VOCAB (1 << 24)
#define TE_LLAMA__MAX_HIDDEN (1 << 17)
#define TE_LLAMA__MAX_INTERMEDIATE (1 << 20)
#define TE_LLAMA__MAX_LAYERS 4096
#define TE_LLAMA__MAX_HEADS 4096
#define TE_LLAMA__MAX_HEAD_DIM 1024
#define TE_LLAMA__MAX_POSITIONS (1 << 24)

TE_LLAMA_API te_llama_result te_llama_config_validate(const te_llama_config *c) {
#define TE_LLAMA__RANGE(field, lo, hi)                                                                         \
    if (c->field < (lo) || c->field > (hi))                                                                   \
        return te_llama__fail(TE_LLAMA_ERR_CONFIG, #field " = %lld, must be in [%lld, %lld]", (long long)c->field, \
                              (long long)(lo), (long long)(hi));
    if (!c) return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "config is NULL");
    TE_LLAMA__RANGE(vocab_size, 1, TE_LLAMA__MAX_VOCAB)
    TE_LLAMA__RANGE(hidden_size, 1, TE_LLAMA__MAX_HIDDEN)
    TE_LLAMA__RANGE(intermediate_size, 1, TE_LLAMA__MAX_INTERMEDIATE)
    TE_LLAMA__RANGE(num_hidden_layers, 1, TE_LLAMA__MAX_LAYERS)
    TE_LLAMA__RANGE(num_attention_heads, 1, TE_LLAMA__MAX_HEADS)
    TE_LLAMA__RANGE(num_key_value_heads, 1, c->num_attention_heads)
    TE_LLAMA__RANGE(head_dim, 2, TE_LLAMA__MAX_HEAD_DIM)
    TE_LLAMA__RANGE(max_position_embeddings, 1, TE_LLAMA__MAX_POSITIONS)
#undef TE_LLAMA__RANGE
    if (c->num_attention_heads % c->num_key_value_heads != 0)
        return te_llama__fail(TE_LLAMA_ERR_CONFIG, "num_key_value_heads = %d does not divide num_attention_heads = %d", c->num_key_value_heads, c->num_attention_heads);
    if (c->head_dim % 2 != 0) return te_llama__fail(TE_LLAMA_ERR_CONFIG, "head_dim = %d is odd (RoPE rotates pairs)", c->head_dim);
    if ((int64_t)c->num_attention_heads * c->head_dim > TE_LLAMA__MAX_HIDDEN)
        return te_llama__fail(TE_LLAMA_ERR_CONFIG, "num_attention_heads x head_dim = %lld is too large", (long long)c->num_attention_heads * c->head_dim);
    if (!(c->rms_norm_eps > 0 && c->rms_norm_eps < 1)) return te_llama__fail(TE_LLAMA_ERR_CONFIG, "rms_norm_eps = %g", c->rms_norm_eps);
    if (!(c->rope_theta > 1 && c->rope_theta < 1e12)) return te_llama__fail(TE_LLAMA_ERR_CONFIG, "rope_theta = %g", c->rope_theta);
    if (c->rope_type != TE_LLAMA_ROPE_DEFAULT && !(c->rope_factor > 0 && c->rope_factor < 1e6))
        return te_llama__fail(TE_LLAMA_ERR_CONFIG, "rope_scaling factor = %g", c->rope_factor);
    if (c->rope_type == TE_LLAMA_ROPE_LLAMA3 &&
        (!(c->rope_high_freq_factor > c->rope_low_freq_factor) || !(c->rope_low_freq_factor > 0) || c->rope_original_max_position_embeddings < 1))
        return te_llama__fail(TE_LLAMA_ERR_CONFIG, "llama3 rope_scaling needs high_freq_factor > low_freq_factor > 0 and original_max_position_embeddings >= 1");
    if (c->dtype != TE_LLAMA_F32 && c->dtype != TE_LLAMA_BF16 && c->dtype != TE_LLAMA_F16)
        return te_llama__fail(TE_LLAMA_ERR_UNSUPPORTED, "parameter dtype %s (float32, bfloat16 and float16 are)", te_llama_dtype_name(c->dtype));
    if (c->n_eos_token_ids < 0 || c->n_eos_token_ids > TE_LLAMA_MAX_EOS) return te_llama__fail(TE_LLAMA_ERR_CONFIG, "%d eos ids", c->n_eos_token_ids);
    return TE_LLAMA_OK;
}

typedef struct te_llama__cfg_reader {
    const te_llama_json *j;
    size_t root;
} te_llama__cfg_reader;

/* An integer field: absent or null leaves *out unchanged; anything but an integer is an error. */
static te_llama_result te_llama__cfg_int(const te_llama_json *j, size_t obj, const char *key, int required,
                                         int64_t lo, int64_t hi, int *out) {
    size_t v = te_llama_json_get(j, obj, key);
    int64_t x;
    if (!v || j->tokens[v].type == TE_LLAMA_JSON_NULL) {
        if (required) return te_llama__fail(TE_LLAMA_ERR_CONFIG, "config.json has no %s", key);
        return TE_LLAMA_OK;
    }
    if (j->tokens[v].type != TE_LLAMA_JSON_NUMBER) return te_llama__fail(TE_LLAMA_ERR_CONFIG, "%s is not a number", key);
    if (te_llama_json_int64(j, v, &x)) return te_llama__wrap(TE_LLAMA_ERR_CONFIG, "%s", key);
    if (x < lo || x > hi) return te_llama__fail(TE_LLAMA_ERR_CONFIG, "%s = %lld, must be in [%lld, %lld]", key, (long long)x, (long long)lo, (long long)hi);
    *out = (int)x;
    return TE_LLAMA_OK;
}
static te_llama_result te_llama__cfg_double(const te_llama_json *j, size_t obj, const char *key, double *out) {
    size_t v = te_llama_json_get(j, obj, key);
    if (!v || j->tokens[v].type == TE_LLAMA_JSON_NULL) return TE_LLAMA_OK;
    if (j->tokens[v].type != TE_LLAMA_JSON_NUMBER) return te_llama__fail(TE_LLAMA_ERR_CONFIG, "%s is not a number", key);
    if (te_llama_json_double(j, v, out)) return te_llama__wrap(TE_LLAMA_ERR_CONFIG, "%s", key);
    return TE_LLAMA_OK;
}
static te_llama_result te_llama__cfg_bool(const te_llama_json *j, size_t obj, const char *key, int *out) {
    size_t v = te_llama_json_get(j, obj, key);
    if (!v || j->tokens[v].type == TE_LLAMA_JSON_NULL) return TE_LLAMA_OK;
    if (j->tokens[v].type != TE_LLAMA_JSON_TRUE && j->tokens[v].type != TE_LLAMA_JSON_FALSE)
        return te_llama__fail(TE_LLAMA_ERR_CONFIG, "%s is not true or false", key);
    *out = j->tokens[v].type == TE_LLAMA_JSON_TRUE;
    return TE_LLAMA_OK;
}
/* eos_token_id: an integer or a list of them. */
static te_llama_result te_llama__cfg_ids(const te_llama_json *j, size_t obj, const char *key, int *ids, int *n) {
    size_t v = te_llama_json_get(j, obj, key), k, e;
    int64_t x;
    if (!v || j->tokens[v].type == TE_LLAMA_JSON_NULL) return TE_LLAMA_OK;
    if (j->tokens[v].type == TE_LLAMA_JSON_NUMBER) {
        if (te_llama_json_int64(j, v, &x) || x < 0 || x >= TE_LLAMA__MAX_VOCAB) return te_llama__fail(TE_LLAMA_ERR_CONFIG, "%s is not a token id", key);
        ids[0] = (int)x;
        *n = 1;
        return TE_LLAMA_OK;
    }
    if (j->tokens[v].type != TE_LLAMA_JSON_ARRAY) return te_llama__fail(TE_LLAMA_ERR_CONFIG, "%s is not an id or a list of ids", key);
    if (j->tokens[v].size > TE_LLAMA_MAX_EOS) return te_llama__fail(TE_LLAMA_ERR_CONFIG, "%s lists %u ids, at most %d", key, j->tokens[v].size, TE_LLAMA_MAX_EOS);
    for (k = 0, e = v + 1; k < j->tokens[v].size; k++, e = j->tokens[e].next) {
        if (te_llama_json_int64(j, e, &x) || x < 0 || x >= TE_LLAMA__MAX_VOCAB) return te_llama__fail(TE_LLAMA_ERR_CONFIG, "%s[%zu] is not a token id", key, k);
        ids[k] = (int)x;
    }
    *n = (int)j->tokens[v].size;
    return TE_LLAMA_OK;
}

static te_llama_result te_llama__cfg_rope(const te_llama_json *j, size_t obj, te_llama_config *c) {
    size_t t = te_llama_json_get(j, obj, "rope_type");
    te_llama_result r;
    if (!t) t = te_llama_json_get(j, obj, "type"); /* older spelling */
    if (!t || te_llama_json_equals(j, t, "default")) c->rope_type = TE_LLAMA_ROPE_DEFAULT;
    else if (te_llama_json_equals(j, t, "linear")) c->rope_type = TE_LLAMA_ROPE_LINEAR;
    else if (te_llama_json_equals(j, t, "llama3")) c->rope_type = TE_LLAMA_ROPE_LLAMA3;
    else if (j->tokens[t].type == TE_LLAMA_JSON_STRING)
        return te_llama__fail(TE_LLAMA_ERR_UNSUPPORTED, "rope type \"%.*s\" (default, linear and llama3 are)", (int)(j->tokens[t].end - j->tokens[t].start), j->text + j->tokens[t].start);
    else return te_llama__fail(TE_LLAMA_ERR_CONFIG, "rope type is not a string");
    if ((r = te_llama__cfg_double(j, obj, "rope_theta", &c->rope_theta))) return r;
    if (c->rope_type == TE_LLAMA_ROPE_DEFAULT) return TE_LLAMA_OK;
    if (!te_llama_json_get(j, obj, "factor")) return te_llama__fail(TE_LLAMA_ERR_CONFIG, "rope scaling without a factor");
    if ((r = te_llama__cfg_double(j, obj, "factor", &c->rope_factor))) return r;
    if (c->rope_type == TE_LLAMA_ROPE_LLAMA3) {
        c->rope_low_freq_factor = 1.0;
        c->rope_high_freq_factor = 4.0;
        c->rope_original_max_position_embeddings = 8192;
        if ((r = te_llama__cfg_double(j, obj, "low_freq_factor", &c->rope_low_freq_factor))) return r;
        if ((r = te_llama__cfg_double(j, obj, "high_freq_factor", &c->rope_high_freq_factor))) return r;
        if ((r = te_llama__cfg_int(j, obj, "original_max_position_embeddings", 0, 1, TE_LLAMA__MAX_POSITIONS, &c->rope_original_max_position_embeddings))) return r;
    }
    return TE_LLAMA_OK;
}

static te_llama_result te_llama__cfg_dtype(const te_llama_json *j, size_t v, te_llama_dtype *out) {
    if (te_llama_json_equals(j, v, "float32")) *out = TE_LLAMA_F32;
    else if (te_llama_json_equals(j, v, "bfloat16")) *out = TE_LLAMA_BF16;
    else if (te_llama_json_equals(j, v, "float16")) *out = TE_LLAMA_F16;
    else if (j->tokens[v].type == TE_LLAMA_JSON_STRING)
        return te_llama__fail(TE_LLAMA_ERR_UNSUPPORTED, "dtype \"%.*s\" (float32, bfloat16 and float16 are)", (int)(j->tokens[v].end - j->tokens[v].start), j->text + j->tokens[v].start);
    else return te_llama__fail(TE_LLAMA_ERR_CONFIG, "dtype is not a string");
    return TE_LLAMA_OK;
}

TE_LLAMA_API te_llama_result te_llama_config_parse(const char *text, size_t len, te_llama_config *c) {
    te_llama_json j;
    te_llama_result r;
    size_t v;
    int bias = 0;
    if (!c) return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_config_parse: NULL");
    memset(c, 0, sizeof *c);
    if ((r = te_llama_json_parse(text, len, NULL, &j))) return r;
    if (j.tokens[0].type != TE_LLAMA_JSON_OBJECT) { te_llama_json_free(&j); return te_llama__fail(TE_LLAMA_ERR_CONFIG, "config.json is not an object"); }
    c->max_position_embeddings = 2048;
    c->rms_norm_eps = 1e-6;
    c->rope_theta = 10000.0;
    c->dtype = TE_LLAMA_F32;
    c->initializer_range = 0.02;
    c->bos_token_id = -1;
    c->head_dim = 0;
    c->num_key_value_heads = 0;
    v = te_llama_json_get(&j, 0, "model_type");
    if (!v) { r = te_llama__fail(TE_LLAMA_ERR_CONFIG, "config.json has no model_type"); goto done; }
    if (!te_llama_json_equals(&j, v, "llama")) {
        r = te_llama__fail(TE_LLAMA_ERR_UNSUPPORTED, "model_type \"%.*s\" (only llama is)", (int)(j.tokens[v].end - j.tokens[v].start), j.text + j.tokens[v].start);
        goto done;
    }
    if ((v = te_llama_json_get(&j, 0, "hidden_act")) && !te_llama_json_equals(&j, v, "silu")) {
        r = te_llama__fail(TE_LLAMA_ERR_UNSUPPORTED, "hidden_act \"%.*s\" (only silu is)", (int)(j.tokens[v].end - j.tokens[v].start), j.text + j.tokens[v].start);
        goto done;
    }
    if ((r = te_llama__cfg_int(&j, 0, "vocab_size", 1, 1, TE_LLAMA__MAX_VOCAB, &c->vocab_size))) goto done;
    if ((r = te_llama__cfg_int(&j, 0, "hidden_size", 1, 1, TE_LLAMA__MAX_HIDDEN, &c->hidden_size))) goto done;
    if ((r = te_llama__cfg_int(&j, 0, "intermediate_size", 1, 1, TE_LLAMA__MAX_INTERMEDIATE, &c->intermediate_size))) goto done;
    if ((r = te_llama__cfg_int(&j, 0, "num_hidden_layers", 1, 1, TE_LLAMA__MAX_LAYERS, &c->num_hidden_layers))) goto done;
    if ((r = te_llama__cfg_int(&j, 0, "num_attention_heads", 1, 1, TE_LLAMA__MAX_HEADS, &c->num_attention_heads))) goto done;
    if ((r = te_llama__cfg_int(&j, 0, "num_key_value_heads", 0, 1, TE_LLAMA__MAX_HEADS, &c->num_key_value_heads))) goto done;
    if ((r = te_llama__cfg_int(&j, 0, "head_dim", 0, 1, TE_LLAMA__MAX_HEAD_DIM, &c->head_dim))) goto done;
    if ((r = te_llama__cfg_int(&j, 0, "max_position_embeddings", 0, 1, TE_LLAMA__MAX_POSITIONS, &c->max_position_embeddings))) goto done;
    if ((r = te_llama__cfg_double(&j, 0, "rms_norm_eps", &c->rms_norm_eps))) goto done;
    if ((r = te_llama__cfg_double(&j, 0, "initializer_range", &c->initializer_range))) goto done;
    if ((r = te_llama__cfg_bool(&j, 0, "tie_word_embeddings", &c->tie_word_embeddings))) goto done;
    if ((r = te_llama__cfg_bool(&j, 0, "attention_bias", &bias))) goto done;
    if (bias) { r = te_llama__fail(TE_LLAMA_ERR_UNSUPPORTED, "attention_bias = true"); goto done; }
    if ((r = te_llama__cfg_bool(&j, 0, "mlp_bias", &bias))) goto done;
    if (bias) { r = te_llama__fail(TE_LLAMA_ERR_UNSUPPORTED, "mlp_bias = true"); goto done; }
    if ((r = te_llama__cfg_int(&j, 0, "bos_token_id", 0, 0, TE_LLAMA__MAX_VOCAB - 1, &c->bos_token_id))) goto done;
    if ((r = te_llama__cfg_ids(&j, 0, "eos_token_id", c->eos_token_ids, &c->n_eos_token_ids))) goto done;
    /* transformers 5.x: dtype and rope_parameters; 4.x: torch_dtype, rope_theta and rope_scaling */
    v = te_llama_json_get(&j, 0, "dtype");
    if (!v || j.tokens[v].type == TE_LLAMA_JSON_NULL) v = te_llama_json_get(&j, 0, "torch_dtype");
    if (v && j.tokens[v].type != TE_LLAMA_JSON_NULL && (r = te_llama__cfg_dtype(&j, v, &c->dtype))) goto done;
    if ((r = te_llama__cfg_double(&j, 0, "rope_theta", &c->rope_theta))) goto done;
    v = te_llama_json_get(&j, 0, "rope_parameters");
    if (!v || j.tokens[v].type == TE_LLAMA_JSON_NULL) v = te_llama_json_get(&j, 0, "rope_scaling");
    if (v && j.tokens[v].type != TE_LLAMA_JSON_NULL) {
        if (j.tokens[v].type != TE_LLAMA_JSON_OBJECT) { r = te_llama__fail(TE_LLAMA_ERR_CONFIG, "rope_scaling is not an object"); goto done; }
        if ((r = te_llama__cfg_rope(&j, v, c))) goto done;
    }
    if (!c->num_key_value_heads) c->num_key_value_heads = c->num_attention_heads;
    if (!c->head_dim) {
        if (c->hidden_size % c->num_attention_heads != 0) {
            r = te_llama__fail(TE_LLAMA_ERR_CONFIG, "num_attention_heads = %d does not divide hidden_size = %d", c->num_attention_heads, c->hidden_size);
            goto done;
        }
        c->head_dim = c->hidden_size / c->num_attention_heads;
    }
    r = te_llama_config_validate(c);
done:
    te_llama_json_free(&j);
    return r;
}

TE_LLAMA_API te_llama_result te_llama_config_load(const char *path, te_llama_config *out) {
    char *text;
    size_t len;
    te_llama_result r = te_llama__read_file(path, NULL, (size_t)1 << 20, &text, &len);
    if (r) return r;
    r = te_llama_config_parse(text, len, out);
    te_llama__free(NULL, text);
    if (r) return te_llama__wrap(r, "%s", path);
    return TE_LLAMA_OK;
}

static const char *te_llama__torch_dtype(te_llama_dtype t) {
    return t == TE_LLAMA_BF16 ? "bfloat16" : t == TE_LLAMA_F16 ? "float16" : "float32";
}

/* config.json in the transformers 4.x spelling (torch_dtype, rope_theta, rope_scaling), which 5.x also reads. */
TE_LLAMA_API te_llama_result te_llama_config_write(const te_llama_config *c, char *out, size_t cap, size_t *len) {
    te_llama__buf b;
    int i;
    te_llama_result r;
    if ((r = te_llama_config_validate(c))) return r;
    memset(&b, 0, sizeof b);
    te_llama__buf_str(&b, "{\n  \"architectures\": [\"LlamaForCausalLM\"],\n  \"model_type\": \"llama\",\n  \"hidden_act\": \"silu\",\n");
    te_llama__buf_printf(&b, "  \"vocab_size\": %d,\n  \"hidden_size\": %d,\n  \"intermediate_size\": %d,\n", c->vocab_size, c->hidden_size, c->intermediate_size);
    te_llama__buf_printf(&b, "  \"num_hidden_layers\": %d,\n  \"num_attention_heads\": %d,\n  \"num_key_value_heads\": %d,\n", c->num_hidden_layers, c->num_attention_heads, c->num_key_value_heads);
    te_llama__buf_printf(&b, "  \"head_dim\": %d,\n  \"max_position_embeddings\": %d,\n  \"rms_norm_eps\": %.17g,\n", c->head_dim, c->max_position_embeddings, c->rms_norm_eps);
    te_llama__buf_printf(&b, "  \"rope_theta\": %.17g,\n", c->rope_theta);
    if (c->rope_type == TE_LLAMA_ROPE_LINEAR)
        te_llama__buf_printf(&b, "  \"rope_scaling\": {\"rope_type\": \"linear\", \"factor\": %.17g},\n", c->rope_factor);
    else if (c->rope_type == TE_LLAMA_ROPE_LLAMA3)
        te_llama__buf_printf(&b, "  \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": %.17g, \"low_freq_factor\": %.17g, \"high_freq_factor\": %.17g, \"original_max_position_embeddings\": %d},\n",
                             c->rope_factor, c->rope_low_freq_factor, c->rope_high_freq_factor, c->rope_original_max_position_embeddings);
    else te_llama__buf_str(&b, "  \"rope_scaling\": null,\n");
    te_llama__buf_printf(&b, "  \"tie_word_embeddings\": %s,\n  \"attention_bias\": false,\n  \"mlp_bias\": false,\n", c->tie_word_embeddings ? "true" : "false");
    te_llama__buf_printf(&b, "  \"initializer_range\": %.17g,\n", c->initializer_range);
    if (c->bos_token_id >= 0) te_llama__buf_printf(&b, "  \"bos_token_id\": %d,\n", c->bos_token_id);
    if (c->n_eos_token_ids == 1) te_llama__buf_printf(&b, "  \"eos_token_id\": %d,\n", c->eos_token_ids[0]);
    else if (c->n_eos_token_ids > 1) {
        te_llama__buf_str(&b, "  \"eos_token_id\": [");
        for (i = 0; i < c->n_eos_token_ids; i++) te_llama__buf_printf(&b, i ? ", %d" : "%d", c->eos_token_ids[i]);
        te_llama__buf_str(&b, "],\n");
    }
    te_llama__buf_printf(&b, "  \"torch_dtype\": \"%s\"\n}\n", te_llama__torch_dtype(c->dtype));
    if (b.failed) { te_llama__free(NULL, b.data); return te_llama__fail(TE_LLAMA_ERR_NOMEM, "config.json"); }
    if (len) *len = b.len;
    if (b.len + 1 > cap) { te_llama__free(NULL, b.data); return te_llama__fail(TE_LLAMA_ERR_OUT_OF_RANGE, "config.json needs %zu bytes", b.len + 1); }
    memcpy(out, b.data, b.len + 1);
    te_llama__free(NULL, b.data);
    return TE_LLAMA_OK;
}

/* ------------------------------------------------------------------------------------------------ parameters */


TE_LLAMA_API size_t te_llama_param_numel(const te_llama_param *p) {
    return (size_t)p->shape[0] * (size_t)(p->ndim == 2 ? p->shape[1] : 1);
}
TE_LLAMA_API size_t te_llama_param_bytes(const te_llama_param *p) { return te_llama_param_numel(p) * te_llama_dtype_size(p->dtype); }
static int64_t te_llama__param_cols(const te_llama_param *p) { return p->ndim == 2 ? p->shape[1] : 1; }

static void te_llama__copy_name(char *dst, const char *src) {
    size_t n = strlen(src);
    if (n >= TE_LLAMA_NAME_MAX) n = TE_LLAMA_NAME_MAX - 1;
    memcpy(dst, src, n);
    dst[n] = 0;
}

TE_LLAMA_API te_llama_result te_llama_param_init(te_llama_param *p, const te_llama_options *options, const char *name,
                                                 te_llama_dtype dtype, int64_t rows, int64_t cols) {
    uint64_t bytes;
    memset(p, 0, sizeof *p);
    te_llama__copy_name(p->name, name);
    p->dtype = dtype;
    p->ndim = cols > 0 ? 2 : 1;
    p->shape[0] = rows;
    p->shape[1] = cols > 0 ? cols : 0;
    if (rows <= 0 || !te_llama__mul((uint64_t)rows, (uint64_t)(cols > 0 ? cols : 1), &bytes) ||
        !te_llama__mul(bytes, te_llama_dtype_size(dtype), &bytes) || bytes > ((uint64_t)1 << 42))
        return te_llama__fail(TE_LLAMA_ERR_CONFIG, "parameter %s of %lld x %lld is too large", name, (long long)rows, (long long)cols);
    if (options && options->backend == TE_LLAMA_BACKEND_CUDA) {
#ifdef TE_LLAMA_CUDA
        te_llama_result r = te_llama_cuda_malloc(&p->data, (size_t)bytes);
        if (r) return te_llama__wrap(r, "parameter %s (%llu bytes)", name, (unsigned long long)bytes);
        p->on_device = 1;
        return te_llama_cuda_memset(p->data, 0, (size_t)bytes);
#else
        return te_llama__fail(TE_LLAMA_ERR_NO_CUDA, "built without TE_LLAMA_CUDA");
#endif
    }
    p->data = te_llama__calloc(options ? options->allocator : NULL, (size_t)bytes);
    if (!p->data) return te_llama__fail(TE_LLAMA_ERR_NOMEM, "parameter %s (%llu bytes)", name, (unsigned long long)bytes);
    return TE_LLAMA_OK;
}

static void te_llama__param_release(te_llama_param *p, const te_llama_allocator *a) {
    if (p->is_view || !p->data) return;
#ifdef TE_LLAMA_CUDA
    if (p->on_device) { te_llama_cuda_free(p->data); p->data = NULL; return; }
#endif
    te_llama__free(a, p->data);
    p->data = NULL;
}

TE_LLAMA_API void te_llama_param_view(te_llama_param *view, const char *name, const te_llama_param *whole,
                                      int64_t row_begin, int64_t rows) {
    memset(view, 0, sizeof *view);
    te_llama__copy_name(view->name, name);
    view->dtype = whole->dtype;
    view->ndim = whole->ndim;
    view->shape[0] = rows;
    view->shape[1] = whole->shape[1];
    view->data = (char *)whole->data + (size_t)row_begin * (size_t)te_llama__param_cols(whole) * te_llama_dtype_size(whole->dtype);
    view->on_device = whole->on_device;
    view->is_view = 1;
}

/* Name the HF tensor that fills rows [row_begin, row_begin + rows) of p. */
static void te_llama__param_source(te_llama_param *p, const char *hf_name, int64_t row_begin, int64_t rows) {
    te_llama_hf_source *s = &p->sources[p->n_sources++];
    te_llama__copy_name(s->name, hf_name);
    s->row_begin = row_begin;
    s->n_rows = rows;
}

/* ---------------------------------------------------------------------------------------- decoder factories */

typedef struct te_llama__layer_alloc_header {
    te_llama_allocator allocator;
} te_llama__layer_alloc_header;

/* A layer, its params and its impl live in one block, preceded by the allocator that made it. */
TE_LLAMA_API te_llama_result te_llama_layer_alloc(const te_llama_options *options, int n_params, size_t impl_bytes,
                                                  te_llama_layer **out) {
    te_llama_allocator a = te_llama__allocator_copy(options ? options->allocator : NULL);
    size_t head = (sizeof(te_llama__layer_alloc_header) + 15) & ~(size_t)15;
    size_t body = (sizeof(te_llama_layer) + 15) & ~(size_t)15, params = (size_t)n_params * sizeof(te_llama_param);
    char *block;
    te_llama_layer *l;
    if (n_params < 0 || n_params > 64) return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "%d parameters in a layer", n_params);
    block = (char *)te_llama__calloc(&a, head + body + params + impl_bytes + 16);
    if (!block) return te_llama__fail(TE_LLAMA_ERR_NOMEM, "decoder layer");
    ((te_llama__layer_alloc_header *)block)->allocator = a;
    l = (te_llama_layer *)(block + head);
    l->params = (te_llama_param *)(block + head + body);
    l->n_params = n_params;
    l->impl = impl_bytes ? (void *)(((uintptr_t)(block + head + body + params) + 15) & ~(uintptr_t)15) : NULL;
    l->map_hf = te_llama_layer_map_by_sources;
    l->destroy = te_llama_layer_destroy_default;
    *out = l;
    return TE_LLAMA_OK;
}

static te_llama__layer_alloc_header *te_llama__layer_header(te_llama_layer *l) {
    size_t head = (sizeof(te_llama__layer_alloc_header) + 15) & ~(size_t)15;
    return (te_llama__layer_alloc_header *)((char *)l - head);
}

TE_LLAMA_API void te_llama_layer_destroy_default(te_llama_layer *self) {
    te_llama__layer_alloc_header *h;
    te_llama_allocator a;
    int i;
    if (!self) return;
    h = te_llama__layer_header(self);
    a = h->allocator;
    for (i = 0; i < self->n_params; i++) te_llama__param_release(&self->params[i], &a);
    te_llama__free(&a, h);
}

TE_LLAMA_API te_llama_result te_llama_layer_map_by_sources(te_llama_layer *self, const char *hf_name,
                                                           te_llama_param **param, int *source) {
    int i, s;
    for (i = 0; i < self->n_params; i++)
        for (s = 0; s < self->params[i].n_sources; s++)
            if (strcmp(self->params[i].sources[s].name, hf_name) == 0) {
                *param = &self->params[i];
                *source = s;
                return TE_LLAMA_OK;
            }
    return TE_LLAMA_ERR_NOT_FOUND;
}

static te_llama_result te_llama__vanilla_forward(te_llama_layer *self, const te_llama_step *step, float *x);
static te_llama_result te_llama__te_forward(te_llama_layer *self, const te_llama_step *step, float *x);

static te_llama_dtype te_llama__storage_dtype(const te_llama_config *c, const te_llama_options *o) {
    if (o && o->dtype != TE_LLAMA_DTYPE_AUTO) return o->dtype;
    if (o && o->backend == TE_LLAMA_BACKEND_CUDA) return TE_LLAMA_BF16;
    return c->dtype;
}

/* HF's LlamaDecoderLayer layout: the parameters are the HF tensors themselves. */
TE_LLAMA_API te_llama_result te_llama_vanilla_decoder(const te_llama_config *c, int index,
                                                      const te_llama_options *options, te_llama_layer **out) {
    static const char *const names[9] = {"input_layernorm.weight",   "self_attn.q_proj.weight",  "self_attn.k_proj.weight",
                                         "self_attn.v_proj.weight",  "self_attn.o_proj.weight",  "post_attention_layernorm.weight",
                                         "mlp.gate_proj.weight",     "mlp.up_proj.weight",       "mlp.down_proj.weight"};
    int64_t q = (int64_t)c->num_attention_heads * c->head_dim, kv = (int64_t)c->num_key_value_heads * c->head_dim;
    int64_t rows[9], cols[9];
    te_llama_dtype dt = te_llama__storage_dtype(c, options);
    te_llama_layer *l;
    te_llama_result r;
    int i;
    rows[0] = c->hidden_size; cols[0] = 0;
    rows[1] = q; rows[2] = kv; rows[3] = kv; cols[1] = cols[2] = cols[3] = c->hidden_size;
    rows[4] = c->hidden_size; cols[4] = q;
    rows[5] = c->hidden_size; cols[5] = 0;
    rows[6] = rows[7] = c->intermediate_size; cols[6] = cols[7] = c->hidden_size;
    rows[8] = c->hidden_size; cols[8] = c->intermediate_size;
    if ((r = te_llama_layer_alloc(options, 9, 0, &l))) return r;
    l->kind = "vanilla";
    l->index = index;
    l->forward = te_llama__vanilla_forward;
    for (i = 0; i < 9; i++) {
        char name[TE_LLAMA_NAME_MAX];
        snprintf(name, sizeof name, "model.layers.%d.%s", index, names[i]);
        if ((r = te_llama_param_init(&l->params[i], options, name, dt, rows[i], cols[i]))) { l->destroy(l); return r; }
        te_llama__param_source(&l->params[i], name, 0, rows[i]);
    }
    *out = l;
    return TE_LLAMA_OK;
}

/* TransformerEngine's TransformerLayer layout. impl holds the fused QKV buffer, (q + 2 kv, hidden): the
   query/key/value parameters are views of its row blocks, so one GEMM computes all three. */
typedef struct te_llama__te_impl {
    te_llama_param qkv; /* (q_dim + 2 kv_dim, hidden) */
} te_llama__te_impl;

static void te_llama__te_destroy(te_llama_layer *self) {
    te_llama__te_impl *impl = (te_llama__te_impl *)self->impl;
    te_llama_allocator a = te_llama__layer_header(self)->allocator;
    te_llama__param_release(&impl->qkv, &a);
    te_llama_layer_destroy_default(self);
}

TE_LLAMA_API te_llama_result te_llama_te_decoder(const te_llama_config *c, int index, const te_llama_options *options,
                                                 te_llama_layer **out) {
    int64_t q = (int64_t)c->num_attention_heads * c->head_dim, kv = (int64_t)c->num_key_value_heads * c->head_dim;
    int64_t h = c->hidden_size, I = c->intermediate_size;
    te_llama_dtype dt = te_llama__storage_dtype(c, options);
    te_llama_layer *l;
    te_llama__te_impl *impl;
    te_llama_result r;
    char te[TE_LLAMA_NAME_MAX], hf[TE_LLAMA_NAME_MAX], hf2[TE_LLAMA_NAME_MAX];
#define TE_LLAMA__TE_NAME(buf, suffix) snprintf(buf, sizeof buf, "model.layers.%d." suffix, index)
    if ((r = te_llama_layer_alloc(options, 8, sizeof(te_llama__te_impl), &l))) return r;
    l->kind = "te";
    l->index = index;
    l->forward = te_llama__te_forward;
    l->destroy = te_llama__te_destroy;
    impl = (te_llama__te_impl *)l->impl;
    TE_LLAMA__TE_NAME(te, "self_attention.layernorm_qkv.weight");
    if ((r = te_llama_param_init(&impl->qkv, options, te, dt, q + 2 * kv, h))) goto fail;
    TE_LLAMA__TE_NAME(te, "self_attention.layernorm_qkv.layer_norm_weight");
    if ((r = te_llama_param_init(&l->params[0], options, te, dt, h, 0))) goto fail;
    TE_LLAMA__TE_NAME(hf, "input_layernorm.weight");
    te_llama__param_source(&l->params[0], hf, 0, h);
    TE_LLAMA__TE_NAME(te, "self_attention.layernorm_qkv.query_weight");
    te_llama_param_view(&l->params[1], te, &impl->qkv, 0, q);
    TE_LLAMA__TE_NAME(hf, "self_attn.q_proj.weight");
    te_llama__param_source(&l->params[1], hf, 0, q);
    TE_LLAMA__TE_NAME(te, "self_attention.layernorm_qkv.key_weight");
    te_llama_param_view(&l->params[2], te, &impl->qkv, q, kv);
    TE_LLAMA__TE_NAME(hf, "self_attn.k_proj.weight");
    te_llama__param_source(&l->params[2], hf, 0, kv);
    TE_LLAMA__TE_NAME(te, "self_attention.layernorm_qkv.value_weight");
    te_llama_param_view(&l->params[3], te, &impl->qkv, q + kv, kv);
    TE_LLAMA__TE_NAME(hf, "self_attn.v_proj.weight");
    te_llama__param_source(&l->params[3], hf, 0, kv);
    TE_LLAMA__TE_NAME(te, "self_attention.proj.weight");
    if ((r = te_llama_param_init(&l->params[4], options, te, dt, h, q))) goto fail;
    TE_LLAMA__TE_NAME(hf, "self_attn.o_proj.weight");
    te_llama__param_source(&l->params[4], hf, 0, h);
    TE_LLAMA__TE_NAME(te, "layernorm_mlp.layer_norm_weight");
    if ((r = te_llama_param_init(&l->params[5], options, te, dt, h, 0))) goto fail;
    TE_LLAMA__TE_NAME(hf, "post_attention_layernorm.weight");
    te_llama__param_source(&l->params[5], hf, 0, h);
    TE_LLAMA__TE_NAME(te, "layernorm_mlp.fc1_weight");
    if ((r = te_llama_param_init(&l->params[6], options, te, dt, 2 * I, h))) goto fail;
    TE_LLAMA__TE_NAME(hf, "mlp.gate_proj.weight");
    TE_LLAMA__TE_NAME(hf2, "mlp.up_proj.weight");
    te_llama__param_source(&l->params[6], hf, 0, I);
    te_llama__param_source(&l->params[6], hf2, I, I);
    TE_LLAMA__TE_NAME(te, "layernorm_mlp.fc2_weight");
    if ((r = te_llama_param_init(&l->params[7], options, te, dt, h, I))) goto fail;
    TE_LLAMA__TE_NAME(hf, "mlp.down_proj.weight");
    te_llama__param_source(&l->params[7], hf, 0, h);
#undef TE_LLAMA__TE_NAME
    *out = l;
    return TE_LLAMA_OK;
fail:
    l->destroy(l);
    return r;
}

/* The factory override: a process default plus a per-thread override, as stb's flip-on-load does. */
static te_llama_decoder_factory te_llama__default_decoder = te_llama_vanilla_decoder;
static TE_LLAMA__THREAD_LOCAL te_llama_decoder_factory te_llama__decoder_override;

TE_LLAMA_API te_llama_decoder_factory te_llama_current_decoder(void) {
    return te_llama__decoder_override ? te_llama__decoder_override : te_llama__default_decoder;
}
TE_LLAMA_API te_llama_decoder_factory te_llama_replace_decoder(te_llama_decoder_factory factory) {
    te_llama_decoder_factory previous = te_llama__decoder_override;
    te_llama__decoder_override = factory;
    return previous;
}
TE_LLAMA_API te_llama_decoder_factory te_llama_set_default_decoder(te_llama_decoder_factory factory) {
    te_llama_decoder_factory previous = te_llama__default_decoder;
    te_llama__default_decoder = factory ? factory : te_llama_vanilla_decoder;
    return previous;
}
TE_LLAMA_API te_llama_result te_llama_with_decoder(te_llama_decoder_factory factory,
                                                   te_llama_result (*fn)(void *user), void *user) {
    te_llama_decoder_factory previous = te_llama_replace_decoder(factory);
    te_llama_result r = fn(user);
    te_llama_replace_decoder(previous);
    return r;
}

/* ----------------------------------------------------------------------------------------------------- model */

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static void te_llama__log(const te_llama_options *o, te_llama_log_level level, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    if (!o || !o->log) return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    o->log(o->user, level, msg);
}

/* HF's inverse frequencies, in float32 as HF computes them, with linear or llama3 scaling. */
static void te_llama__rope_inv_freq(const te_llama_config *c, float *inv) {
    int i, half = c->head_dim / 2;
    for (i = 0; i < half; i++) {
        float exponent = (float)(2 * i) / (float)c->head_dim;
        float f = 1.0f / powf((float)c->rope_theta, exponent);
        if (c->rope_type == TE_LLAMA_ROPE_LINEAR) f = (float)(f / c->rope_factor);
        if (c->rope_type == TE_LLAMA_ROPE_LLAMA3) {
            double old = c->rope_original_max_position_embeddings, pi = 3.14159265358979323846;
            double low_wavelen = old / c->rope_low_freq_factor, high_wavelen = old / c->rope_high_freq_factor;
            double wavelen = 2.0 * pi / f;
            if (wavelen > low_wavelen) f = (float)(f / c->rope_factor);
            else if (wavelen >= high_wavelen) {
                double smooth = (old / wavelen - c->rope_low_freq_factor) / (c->rope_high_freq_factor - c->rope_low_freq_factor);
                f = (float)((1.0 - smooth) * f / c->rope_factor + smooth * f);
            }
        }
        inv[i] = f;
    }
}

/* Fill defaults into the model's private copy of the options. */
static void te_llama__resolve_options(te_llama_model *m, const te_llama_options *options) {
    memset(&m->options, 0, sizeof m->options);
    if (options) m->options = *options;
    m->allocator = te_llama__allocator_copy(options ? options->allocator : NULL);
    m->options.allocator = &m->allocator;
    m->options.fp8 = NULL; /* read once by load and create; the FP8 state keeps its own copy */
    if (!m->options.staging_bytes) m->options.staging_bytes = (size_t)16 << 20;
    if (m->options.staging_bytes < 4096) m->options.staging_bytes = 4096;
}


/* Build the model's structure with zeroed parameters: the layers from factory. */
static te_llama_result te_llama__build(const te_llama_config *config, const te_llama_options *options,
                                       te_llama_decoder_factory factory, te_llama_model **out) {
    te_llama_model *m;
    te_llama_allocator a = te_llama__allocator_copy(options ? options->allocator : NULL);
    te_llama_dtype dt;
    te_llama_result r;
    int i;
    *out = NULL;
    if ((r = te_llama_config_validate(config))) return r;
    if (options && options->fp8 && options->backend == TE_LLAMA_BACKEND_CUDA && options->dtype != TE_LLAMA_DTYPE_AUTO &&
        options->dtype != TE_LLAMA_BF16) /* before anything is read; te_llama_fp8_enable checks the layers after the build */
        return te_llama__fail(TE_LLAMA_ERR_UNSUPPORTED, "FP8 on the CUDA backend runs over BF16 parameters, and options.dtype is %s",
                              te_llama_dtype_name(options->dtype));
    if (options && options->backend == TE_LLAMA_BACKEND_CUDA) {
#ifndef TE_LLAMA_CUDA
        return te_llama__fail(TE_LLAMA_ERR_NO_CUDA, "this build has no CUDA backend (compile te_llama_kernels.cu and define TE_LLAMA_CUDA)");
#endif
    }
    if (options && options->dtype != TE_LLAMA_DTYPE_AUTO && options->dtype != TE_LLAMA_F32 &&
        options->dtype != TE_LLAMA_BF16 && options->dtype != TE_LLAMA_F16)
        return te_llama__fail(TE_LLAMA_ERR_UNSUPPORTED, "storage dtype %s", te_llama_dtype_name(options->dtype));
    m = (te_llama_model *)te_llama__calloc(&a, sizeof *m);
    if (!m) return te_llama__fail(TE_LLAMA_ERR_NOMEM, "model");
    te_llama__resolve_options(m, options);
    m->config = *config;
    dt = te_llama__storage_dtype(config, &m->options);
    m->config.dtype = dt;
    for (i = 0; i < config->n_eos_token_ids; i++) m->eos_token_ids[i] = config->eos_token_ids[i];
    m->n_eos_token_ids = config->n_eos_token_ids;
#ifdef TE_LLAMA_CUDA
    if (m->options.backend == TE_LLAMA_BACKEND_CUDA && (r = te_llama_cuda_init(m))) {
        if (r != TE_LLAMA_ERR_NO_CUDA) { te_llama__free(&a, m); return r; }
        /* nvcc built it but there is no GPU here: run on the CPU, and say so once per process */
        static int warned;
        if (!warned) te_llama__log(&m->options, TE_LLAMA_LOG_WARN, "no CUDA device (%s): using the CPU backend", te_llama_last_error());
        warned = 1;
        m->options.backend = TE_LLAMA_BACKEND_CPU;
        if (!options->dtype) m->options.dtype = TE_LLAMA_DTYPE_AUTO;
        dt = te_llama__storage_dtype(config, &m->options);
        m->config.dtype = dt;
    }
#endif
    m->rope_inv_freq = (float *)te_llama__calloc(&a, sizeof(float) * (size_t)(config->head_dim / 2));
    m->layers = (te_llama_layer **)te_llama__calloc(&a, sizeof(te_llama_layer *) * (size_t)config->num_hidden_layers);
    if (!m->rope_inv_freq || !m->layers) { r = te_llama__fail(TE_LLAMA_ERR_NOMEM, "model tables"); goto fail; }
    te_llama__rope_inv_freq(config, m->rope_inv_freq);
    if ((r = te_llama_param_init(&m->embed_tokens, &m->options, "model.embed_tokens.weight", dt, config->vocab_size, config->hidden_size))) goto fail;
    te_llama__param_source(&m->embed_tokens, "model.embed_tokens.weight", 0, config->vocab_size);
    for (i = 0; i < config->num_hidden_layers; i++) {
        if ((r = factory(&m->config, i, &m->options, &m->layers[i]))) goto fail;
        if (!m->layers[i] || !m->layers[i]->forward || !m->layers[i]->map_hf || !m->layers[i]->destroy) {
            r = te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "decoder factory built layer %d without forward, map_hf or destroy", i);
            goto fail;
        }
    }
    if ((r = te_llama_param_init(&m->norm, &m->options, "model.norm.weight", dt, config->hidden_size, 0))) goto fail;
    te_llama__param_source(&m->norm, "model.norm.weight", 0, config->hidden_size);
    if (config->tie_word_embeddings) {
        te_llama_param_view(&m->lm_head, "lm_head.weight", &m->embed_tokens, 0, config->vocab_size);
    } else {
        if ((r = te_llama_param_init(&m->lm_head, &m->options, "lm_head.weight", dt, config->vocab_size, config->hidden_size))) goto fail;
        te_llama__param_source(&m->lm_head, "lm_head.weight", 0, config->vocab_size);
    }
    *out = m;
    return TE_LLAMA_OK;
fail:
    te_llama_free(m);
    return r;
}

TE_LLAMA_API void te_llama_free(te_llama_model *m) {
    te_llama_allocator a;
    int i;
    if (!m) return;
    a = m->allocator;
    te_llama_fp8_disable(m);
    for (i = 0; m->layers && i < m->config.num_hidden_layers; i++)
        if (m->layers[i]) m->layers[i]->destroy(m->layers[i]);
    te_llama__param_release(&m->embed_tokens, &a);
    te_llama__param_release(&m->norm, &a);
    te_llama__param_release(&m->lm_head, &a);
#ifdef TE_LLAMA_CUDA
    if (m->backend) te_llama_cuda_release(m);
#endif
    te_llama__free(&a, m->layers);
    te_llama__free(&a, m->rope_inv_freq);
    te_llama__free(&a, m);
}

TE_LLAMA_API int te_llama_num_parameters(const te_llama_model *m) {
    int i, n = 2 + (m->config.tie_word_embeddings ? 0 : 1);
    for (i = 0; i < m->config.num_hidden_layers; i++) n += m->layers[i]->n_params;
    return n;
}

TE_LLAMA_API te_llama_param *te_llama_parameter(te_llama_model *m, int i) {
    int l;
    if (i < 0) return NULL;
    if (i == 0) return &m->embed_tokens;
    i--;
    for (l = 0; l < m->config.num_hidden_layers; l++) {
        if (i < m->layers[l]->n_params) return &m->layers[l]->params[i];
        i -= m->layers[l]->n_params;
    }
    if (i == 0) return &m->norm;
    if (i == 1 && !m->config.tie_word_embeddings) return &m->lm_head;
    return NULL;
}

/* xorshift64*: the library's one random generator (initialisation and sampling). */
static uint64_t te_llama__rand(uint64_t *state) {
    uint64_t x = *state ? *state : 0x9e3779b97f4a7c15ull;
    x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
    *state = x;
    return x * 0x2545f4914f6cdd1dull;
}
static float te_llama__rand_unit(uint64_t *state) { return (float)(te_llama__rand(state) >> 40) / 16777216.0f; }

/* normal(0, std) for matrices, ones for norm weights: HF's _init_weights for Llama. */
static te_llama_result te_llama__init_param(te_llama_model *m, te_llama_param *p, uint64_t *rng) {
    size_t n = te_llama_param_numel(p), i, chunk = 1 << 16;
    float *tmp = (float *)te_llama__alloc(&m->allocator, chunk * sizeof(float) + chunk * 4);
    char *conv = (char *)(tmp + chunk);
    te_llama_result r = TE_LLAMA_OK;
    (void)conv; /* device parameters only */
    if (!tmp) return te_llama__fail(TE_LLAMA_ERR_NOMEM, "initialising %s", p->name);
    for (i = 0; i < n && !r; i += chunk) {
        size_t k, m_ = n - i < chunk ? n - i : chunk;
        for (k = 0; k < m_; k++) {
            if (p->ndim == 1) { tmp[k] = 1.0f; continue; }
            {   /* Box-Muller */
                float u1 = te_llama__rand_unit(rng), u2 = te_llama__rand_unit(rng);
                tmp[k] = (float)(m->config.initializer_range * sqrt(-2.0 * log(u1 + 1e-12)) * cos(6.283185307179586 * u2));
            }
        }
        if (p->on_device) {
#ifdef TE_LLAMA_CUDA
            if (!(r = te_llama_convert(conv, p->dtype, tmp, TE_LLAMA_F32, m_)))
                r = te_llama_cuda_upload((char *)p->data + i * te_llama_dtype_size(p->dtype), conv, m_ * te_llama_dtype_size(p->dtype));
#endif
        } else {
            r = te_llama_convert((char *)p->data + i * te_llama_dtype_size(p->dtype), p->dtype, tmp, TE_LLAMA_F32, m_);
        }
    }
    te_llama__free(&m->allocator, tmp);
    return r;
}

TE_LLAMA_API te_llama_result te_llama_create(const te_llama_config *config, const te_llama_options *options,
                                             te_llama_model **out) {
    te_llama_decoder_factory f = (options && options->decoder) ? options->decoder : te_llama_current_decoder();
    te_llama_model *m;
    te_llama_result r;
    uint64_t rng = 0x5eed5eed1234ull;
    int i, n;
    if (!config || !out) return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_create: NULL");
    if ((r = te_llama__build(config, options, f, &m))) return r;
    n = te_llama_num_parameters(m);
    for (i = 0; i < n; i++) {
        te_llama_param *p = te_llama_parameter(m, i);
        if ((r = te_llama__init_param(m, p, &rng))) { te_llama_free(m); return r; }
    }
    if (options && options->fp8 && (r = te_llama_fp8_enable(m, options->fp8))) { te_llama_free(m); return r; }
    *out = m;
    return TE_LLAMA_OK;
}

typedef struct te_llama__create_args {
    const te_llama_config *config;
    const te_llama_options *options;
    te_llama_model **out;
} te_llama__create_args;

static te_llama_result te_llama__create_cb(void *user) {
    te_llama__create_args *a = (te_llama__create_args *)user;
    return te_llama_create(a->config, a->options, a->out);
}

TE_LLAMA_API te_llama_result te_llama_for_causal_lm(const te_llama_config *config, const te_llama_options *options,
                                                    te_llama_model **out) {
    te_llama__create_args a;
    a.config = config;
    a.options = options;
    a.out = out;
    return te_llama_with_decoder(te_llama_te_decoder, te_llama__create_cb, &a);
}

/* ------------------------------------------------------------------------------------------------- loading */

/* Which parameter and source an HF tensor fills: NOT_FOUND when nothing in the model takes it; *skip_layer
   set when it belongs to a checkpoint layer past the layers built. */
static te_llama_result te_llama__route(te_llama_model *m, const char *name, int ckpt_layers, te_llama_param **p,
                                       int *src, int *skip_layer) {
    *skip_layer = -1;
    if (strcmp(name, "model.embed_tokens.weight") == 0) { *p = &m->embed_tokens; *src = 0; return TE_LLAMA_OK; }
    if (strcmp(name, "model.norm.weight") == 0) { *p = &m->norm; *src = 0; return TE_LLAMA_OK; }
    if (strcmp(name, "lm_head.weight") == 0 && !m->config.tie_word_embeddings) { *p = &m->lm_head; *src = 0; return TE_LLAMA_OK; }
    if (strncmp(name, "model.layers.", 13) == 0) {
        const char *s = name + 13;
        long layer = 0;
        int digits = 0;
        while (*s >= '0' && *s <= '9' && digits < 6) { layer = layer * 10 + (*s - '0'); s++; digits++; }
        if (digits == 0 || *s != '.' || (digits > 1 && name[13] == '0')) return TE_LLAMA_ERR_NOT_FOUND;
        if (layer >= m->config.num_hidden_layers) {
            if (layer < ckpt_layers) *skip_layer = (int)layer;
            return TE_LLAMA_ERR_NOT_FOUND;
        }
        return m->layers[layer]->map_hf(m->layers[layer], name, p, src);
    }
    return TE_LLAMA_ERR_NOT_FOUND;
}


typedef struct te_llama__loader {
    te_llama_model *m;
    void *staging[2];          /* host (pinned for CUDA) staging buffers */
    size_t staging_bytes;
    int slot;                  /* CUDA: which staging buffer the next chunk uses */
    int ckpt_layers;
    int *skipped;              /* per checkpoint layer past the built ones: logged once */
    te_llama_progress progress;
} te_llama__loader;

/* Stream one tensor's bytes from the file into its parameter rows, converting dtype on the way. */
static te_llama_result te_llama__load_tensor(te_llama__loader *L, int fd, const char *path,
                                             const te_llama_safetensors *st, const te_llama_st_tensor *t,
                                             te_llama_param *p, int src) {
    size_t src_es = te_llama_dtype_size(t->dtype), dst_es = te_llama_dtype_size(p->dtype);
    uint64_t count = t->nbytes / src_es, done = 0, file_off = st->data_start + t->offset;
    char *dst = (char *)p->data + (size_t)p->sources[src].row_begin * (size_t)te_llama__param_cols(p) * dst_es;
    te_llama_result r = TE_LLAMA_OK;
    if (!p->on_device && t->dtype == p->dtype) {
        r = te_llama__pread(fd, dst, (size_t)t->nbytes, file_off, path);
        L->progress.bytes_done += t->nbytes;
        return r;
    }
    while (done < count && !r) {
        /* a staging buffer holds the raw chunk in its first part and the converted chunk after it */
        size_t per = L->staging_bytes / (src_es + dst_es);
        size_t n = (size_t)(count - done < per ? count - done : per);
        char *raw = (char *)L->staging[L->slot], *conv = raw + per * src_es;
        if (p->on_device) {
#ifdef TE_LLAMA_CUDA
            if ((r = te_llama_cuda_wait_slot(L->m, L->slot))) break; /* the copy that used this buffer is done */
#endif
        }
        if ((r = te_llama__pread(fd, raw, n * src_es, file_off + done * src_es, path))) break;
        if (p->on_device) {
#ifdef TE_LLAMA_CUDA
            const char *up = raw;
            if (t->dtype != p->dtype) { if ((r = te_llama_convert(conv, p->dtype, raw, t->dtype, n))) break; up = conv; }
            if ((r = te_llama_cuda_upload_async(L->m, dst + done * dst_es, up, n * dst_es, L->slot))) break;
            L->slot ^= 1; /* read the next chunk while this one copies */
#endif
        } else if ((r = te_llama_convert(dst + done * dst_es, p->dtype, raw, t->dtype, n))) {
            break;
        }
        (void)conv;
        done += n;
        L->progress.bytes_done += n * src_es;
    }
    return r;
}

static te_llama_result te_llama__load_shard(te_llama__loader *L, const char *dir, const char *file, int index,
                                            int n_files) {
    te_llama_model *m = L->m;
    char path[4096];
    te_llama_safetensors st;
    te_llama_result r;
    struct stat lsb;
    size_t i;
    int fd;
    if ((r = te_llama__join(path, sizeof path, dir, file))) return r;
    if (lstat(path, &lsb) != 0) return te_llama__fail(TE_LLAMA_ERR_NOT_FOUND, "shard %s: %s", path, strerror(errno));
    if (S_ISLNK(lsb.st_mode)) { /* a link may point inside the directory, never out of it */
        char real_dir[4096], real_file[4096];
        size_t n;
        if (!realpath(dir, real_dir) || !realpath(path, real_file)) return te_llama__fail(TE_LLAMA_ERR_NOT_FOUND, "shard %s: %s", path, strerror(errno));
        n = strlen(real_dir);
        if (strncmp(real_file, real_dir, n) != 0 || real_file[n] != '/' || strchr(real_file + n + 1, '/'))
            return te_llama__fail(TE_LLAMA_ERR_UNSAFE_PATH, "shard %s is a link out of the checkpoint directory (to %s)", path, real_file);
    }
    fd = open(path, O_RDONLY | O_NONBLOCK); /* a FIFO must not block: it is refused below as not a regular file */
    if (fd < 0) return te_llama__fail(errno == ENOENT ? TE_LLAMA_ERR_NOT_FOUND : TE_LLAMA_ERR_IO, "shard %s: %s", path, strerror(errno));
    if ((r = te_llama__st_open_fd(fd, path, &m->allocator, &st))) { close(fd); return r; }
    L->progress.file = file;
    L->progress.file_index = index;
    L->progress.n_files = n_files;
    L->progress.bytes_done = st.data_start;
    L->progress.bytes_total = st.data_start + st.data_len;
    for (i = 0; i < st.n_tensors && !r; i++) {
        const te_llama_st_tensor *t = &st.tensors[i];
        te_llama_param *p = NULL;
        int src = 0, skip, rows_ok;
        te_llama_result found = te_llama__route(m, t->name, L->ckpt_layers, &p, &src, &skip);
        if (found == TE_LLAMA_ERR_NOT_FOUND) {
            if (skip >= 0) {
                if (!L->skipped[skip]) te_llama__log(&m->options, TE_LLAMA_LOG_INFO, "skipping checkpoint layer %d (the model has %d layers)", skip, m->config.num_hidden_layers);
                L->skipped[skip] = 1;
            } else if (strcmp(t->name, "lm_head.weight") == 0) {
                te_llama__log(&m->options, TE_LLAMA_LOG_INFO, "%s: lm_head.weight ignored, the embeddings are tied", file);
            } else {
                te_llama__log(&m->options, TE_LLAMA_LOG_WARN, "%s: unexpected tensor %s (not used by the model)", file, t->name);
            }
            L->progress.bytes_done += t->nbytes;
            continue;
        }
        if (found) { r = te_llama__wrap(found, "%s: tensor %s", path, t->name); break; }
        if (!te_llama__is_float(t->dtype)) { r = te_llama__fail(TE_LLAMA_ERR_UNSUPPORTED, "%s: tensor %s has dtype %s", path, t->name, te_llama_dtype_name(t->dtype)); break; }
        rows_ok = p->ndim == 2 ? (t->ndim == 2 && t->shape[0] == p->sources[src].n_rows && t->shape[1] == p->shape[1])
                               : (t->ndim == 1 && t->shape[0] == p->sources[src].n_rows);
        if (!rows_ok) {
            char found_shape[96] = "", expected[64];
            int d;
            size_t len = 0;
            for (d = 0; d < t->ndim && len < sizeof found_shape - 24; d++) len += (size_t)snprintf(found_shape + len, sizeof found_shape - len, d ? ", %lld" : "%lld", (long long)t->shape[d]);
            if (p->ndim == 2) snprintf(expected, sizeof expected, "%lld, %lld", (long long)p->sources[src].n_rows, (long long)p->shape[1]);
            else snprintf(expected, sizeof expected, "%lld", (long long)p->sources[src].n_rows);
            r = te_llama__fail(TE_LLAMA_ERR_SHAPE_MISMATCH, "%s: tensor %s has shape [%s], expected [%s] (config.json)", path, t->name, found_shape, expected);
            break;
        }
        if (p->loaded[src]) { r = te_llama__fail(TE_LLAMA_ERR_DUPLICATE_TENSOR, "%s: tensor %s was already read from another shard", path, t->name); break; }
        r = te_llama__load_tensor(L, fd, path, &st, t, p, src);
        p->loaded[src] = 1;
        if (m->options.progress) m->options.progress(m->options.user, &L->progress);
    }
#ifdef TE_LLAMA_CUDA
    if (!r && m->options.backend == TE_LLAMA_BACKEND_CUDA) {
        if (!(r = te_llama_cuda_wait_slot(m, 0))) r = te_llama_cuda_wait_slot(m, 1);
    }
#endif
    if (!r && m->options.progress) {
        L->progress.bytes_done = L->progress.bytes_total;
        m->options.progress(m->options.user, &L->progress);
    }
    te_llama_safetensors_free(&st); /* this shard's index goes before the next shard is opened */
    close(fd);
    return r;
}

/* The shard list of a model.safetensors.index.json: the distinct file names of weight_map, in order. */
static te_llama_result te_llama__index_shards(const char *path, const te_llama_allocator *a, char ***names, int *n) {
    char *text;
    size_t len, k, i;
    te_llama_json j;
    te_llama_result r;
    size_t wm;
    *names = NULL;
    *n = 0;
    if ((r = te_llama__read_file(path, a, (size_t)64 << 20, &text, &len))) return r;
    if ((r = te_llama_json_parse(text, len, a, &j))) {
        te_llama__free(a, text);
        return te_llama__wrap(r, "%s", path);
    }
    wm = j.tokens[0].type == TE_LLAMA_JSON_OBJECT ? te_llama_json_get(&j, 0, "weight_map") : 0;
    if (!wm || j.tokens[wm].type != TE_LLAMA_JSON_OBJECT) { r = te_llama__fail(TE_LLAMA_ERR_JSON_SCHEMA, "%s has no weight_map object", path); goto done; }
    *names = (char **)te_llama__calloc(a, sizeof(char *) * (j.tokens[wm].size + 1));
    if (!*names) { r = te_llama__fail(TE_LLAMA_ERR_NOMEM, "%s", path); goto done; }
    for (k = 0, i = wm + 1; k < j.tokens[wm].size; k++, i = j.tokens[i + 1].next) {
        char file[512];
        int s, seen = 0;
        if (j.tokens[i + 1].type != TE_LLAMA_JSON_STRING) { r = te_llama__fail(TE_LLAMA_ERR_JSON_SCHEMA, "%s: weight_map value at byte %u is not a file name", path, j.tokens[i + 1].start); goto done; }
        if ((r = te_llama_json_string(&j, i + 1, file, sizeof file, &len)) || strlen(file) != len) {
            r = te_llama__fail(TE_LLAMA_ERR_UNSAFE_PATH, "%s: weight_map file name at byte %u", path, j.tokens[i + 1].start);
            goto done;
        }
        if ((r = te_llama__check_plain_name(file, path))) goto done;
        for (s = 0; s < *n && !seen; s++) seen = strcmp((*names)[s], file) == 0;
        if (seen) continue;
        (*names)[*n] = (char *)te_llama__alloc(a, len + 1);
        if (!(*names)[*n]) { r = te_llama__fail(TE_LLAMA_ERR_NOMEM, "%s", path); goto done; }
        memcpy((*names)[*n], file, len + 1);
        (*n)++;
    }
    if (*n == 0) r = te_llama__fail(TE_LLAMA_ERR_JSON_SCHEMA, "%s: weight_map names no shard", path);
done:
    te_llama_json_free(&j);
    te_llama__free(a, text);
    if (r) {
        int k;
        for (k = 0; *names && k < *n; k++) te_llama__free(a, (*names)[k]);
        te_llama__free(a, *names);
        *names = NULL;
        *n = 0;
    }
    return r;
}

static void te_llama__free_names(const te_llama_allocator *a, char **names, int n) {
    int i;
    if (!names) return;
    for (i = 0; i < n; i++) te_llama__free(a, names[i]);
    te_llama__free(a, names);
}

static int te_llama__exists(const char *dir, const char *name) {
    char path[4096];
    struct stat sb;
    if (te_llama__join(path, sizeof path, dir, name)) return 0;
    return lstat(path, &sb) == 0;
}

/* generation_config.json: its eos ids join the config's (HF stops at either). */
static te_llama_result te_llama__load_generation_config(te_llama_model *m, const char *dir) {
    char path[4096], *text;
    size_t len;
    te_llama_json j;
    int ids[TE_LLAMA_MAX_EOS], n = 0, i, k;
    te_llama_result r;
    if ((r = te_llama__join(path, sizeof path, dir, "generation_config.json"))) return r;
    if (te_llama__read_file(path, &m->allocator, (size_t)1 << 20, &text, &len)) return TE_LLAMA_OK; /* optional */
    r = te_llama_json_parse(text, len, &m->allocator, &j);
    if (!r && j.tokens[0].type == TE_LLAMA_JSON_OBJECT) r = te_llama__cfg_ids(&j, 0, "eos_token_id", ids, &n);
    if (!r)
        for (i = 0; i < n; i++) {
            int seen = 0;
            for (k = 0; k < m->n_eos_token_ids; k++) seen |= m->eos_token_ids[k] == ids[i];
            if (!seen && m->n_eos_token_ids < TE_LLAMA_MAX_EOS) m->eos_token_ids[m->n_eos_token_ids++] = ids[i];
        }
    if (r) r = te_llama__wrap(r, "%s", path);
    if (j.tokens) te_llama_json_free(&j);
    te_llama__free(&m->allocator, text);
    return r;
}

TE_LLAMA_API te_llama_result te_llama_load(const char *dir, const te_llama_options *options, te_llama_model **out) {
    te_llama_config config;
    te_llama_options o;
    te_llama_model *m = NULL;
    te_llama__loader L;
    te_llama_allocator a = te_llama__allocator_copy(options ? options->allocator : NULL);
    char path[4096], **shards = NULL;
    int n_shards = 0, i, missing = 0, p, s, n_params;
    te_llama_result r;
    if (!dir || !out) return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_load: NULL");
    *out = NULL;
    memset(&L, 0, sizeof L);
    if ((r = te_llama__join(path, sizeof path, dir, "config.json"))) return r;
    if ((r = te_llama_config_load(path, &config))) return r;
    /* which files hold the weights */
    if (te_llama__exists(dir, "model.safetensors.index.json")) {
        if ((r = te_llama__join(path, sizeof path, dir, "model.safetensors.index.json"))) return r;
        if ((r = te_llama__index_shards(path, &a, &shards, &n_shards))) return r;
    } else if (te_llama__exists(dir, "model.safetensors")) {
        shards = (char **)te_llama__calloc(&a, sizeof(char *));
        if (shards) shards[0] = (char *)te_llama__alloc(&a, 18);
        if (!shards || !shards[0]) { te_llama__free_names(&a, shards, 0); return te_llama__fail(TE_LLAMA_ERR_NOMEM, "shard list"); }
        memcpy(shards[0], "model.safetensors", 18);
        n_shards = 1;
    } else if (te_llama__exists(dir, "pytorch_model.bin") || te_llama__exists(dir, "pytorch_model.bin.index.json")) {
        return te_llama__fail(TE_LLAMA_ERR_UNSUPPORTED, "%s holds pytorch_model.bin: safetensors only (convert it with HF save_pretrained(safe_serialization=True))", dir);
    } else {
        return te_llama__fail(TE_LLAMA_ERR_NOT_FOUND, "%s has neither model.safetensors.index.json nor model.safetensors", dir);
    }
    L.ckpt_layers = config.num_hidden_layers;
    if (options && options->num_layers > 0) {
        if (options->num_layers > config.num_hidden_layers) {
            r = te_llama__fail(TE_LLAMA_ERR_OUT_OF_RANGE, "num_layers = %d but the checkpoint has %d layers", options->num_layers, config.num_hidden_layers);
            goto done;
        }
        config.num_hidden_layers = options->num_layers;
    }
    memset(&o, 0, sizeof o);
    if (options) o = *options;
    if ((r = te_llama__build(&config, &o, o.decoder ? o.decoder : te_llama_te_decoder, &m))) goto done;
    if ((r = te_llama__load_generation_config(m, dir))) goto done;
    L.m = m;
    L.staging_bytes = m->options.staging_bytes;
    L.progress.what = "load";
    L.skipped = (int *)te_llama__calloc(&a, sizeof(int) * (size_t)L.ckpt_layers);
    if (!L.skipped) { r = te_llama__fail(TE_LLAMA_ERR_NOMEM, "loader"); goto done; }
#ifdef TE_LLAMA_CUDA
    if (m->options.backend == TE_LLAMA_BACKEND_CUDA) {
        if ((r = te_llama_cuda_staging(m, L.staging_bytes, L.staging, 2))) goto done;
    } else
#endif
    {
        L.staging[0] = te_llama__alloc(&a, L.staging_bytes);
        if (!L.staging[0]) { r = te_llama__fail(TE_LLAMA_ERR_NOMEM, "staging buffer of %zu bytes", L.staging_bytes); goto done; }
    }
    for (i = 0; i < n_shards && !r; i++) r = te_llama__load_shard(&L, dir, shards[i], i, n_shards);
    if (r) goto done;
    /* every parameter filled? name the first missing tensors and count them all */
    n_params = te_llama_num_parameters(m);
    path[0] = 0;
    for (p = 0; p < n_params; p++) {
        te_llama_param *q = te_llama_parameter(m, p);
        for (s = 0; s < q->n_sources; s++)
            if (!q->loaded[s]) {
                size_t len = strlen(path);
                if (missing < 3) snprintf(path + len, sizeof path - len, "%s%s (for %s)", missing ? ", " : "", q->sources[s].name, q->name);
                missing++;
            }
    }
    if (missing) r = te_llama__fail(TE_LLAMA_ERR_MISSING_TENSOR, "%s: %d tensor(s) never found in the checkpoint: %s%s", dir, missing, path, missing > 3 ? ", ..." : "");
    if (!r && o.fp8) r = te_llama_fp8_enable(m, o.fp8);
done:
    if (!(m && m->options.backend == TE_LLAMA_BACKEND_CUDA)) te_llama__free(&a, L.staging[0]);
    te_llama__free(&a, L.skipped);
    te_llama__free_names(&a, shards, n_shards);
    if (r) { te_llama_free(m); return r; }
    *out = m;
    return TE_LLAMA_OK;
}

/* ---------------------------------------------------------------------------------------------------- saving */

/* FP8 hooks (defined with the FP8 section) */
static int te_llama__fp8_gemm(const te_llama_step *step, int layer, int gemm, float *out, int ld_out, float *x,
                              int ld_x, int n, float *rowbuf);
static void te_llama__fp8_end_step(te_llama_model *m);
static const uint8_t *te_llama__fp8_saved(te_llama_model *m, const te_llama_param *p, float *scale_inv);

typedef struct te_llama__saved_file {
    char final_name[64];
    char tmp_path[4096];
} te_llama__saved_file;

/* Write text to a temporary file in dir. */
static te_llama_result te_llama__write_text(const char *tmp_path, const char *text, size_t len) {
    FILE *f = fopen(tmp_path, "wb");
    if (!f) return te_llama__fail(TE_LLAMA_ERR_IO, "creating %s: %s", tmp_path, strerror(errno));
    return te_llama__close(f, tmp_path, te_llama__write(f, text, len, tmp_path));
}

TE_LLAMA_API te_llama_result te_llama_save(te_llama_model *m, const char *dir, const te_llama_save_options *options) {
    te_llama_allocator *a;
    te_llama__st_source *src = NULL;
    te_llama__saved_file *files = NULL;
    int n_src = 0, n_params, i, s, n_files = 0, n_shards = 0, *shard_of = NULL, old_n = 0;
    uint64_t max_shard, cur = 0, total = 0;
    te_llama_dtype dt;
    char **old_shards = NULL, path[4096];
    void *staging = NULL;
    size_t staging_bytes;
    te_llama__buf text;
    te_llama_result r = TE_LLAMA_OK;
    struct stat sb;
    if (!m || !dir) return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_save: NULL");
    a = &m->allocator;
    max_shard = (options && options->max_shard_size) ? options->max_shard_size : (uint64_t)5000000000ull;
    dt = options ? options->dtype : TE_LLAMA_DTYPE_AUTO;
    if (dt != TE_LLAMA_DTYPE_AUTO && dt != TE_LLAMA_F32 && dt != TE_LLAMA_BF16 && dt != TE_LLAMA_F16)
        return te_llama__fail(TE_LLAMA_ERR_UNSUPPORTED, "saving as %s", te_llama_dtype_name(dt));
    if (stat(dir, &sb) != 0) {
        if (mkdir(dir, 0755) != 0) return te_llama__fail(TE_LLAMA_ERR_IO, "creating %s: %s", dir, strerror(errno));
    } else if (!S_ISDIR(sb.st_mode)) {
        return te_llama__fail(TE_LLAMA_ERR_IO, "%s is not a directory", dir);
    }
    /* the HF tensors, in parameter order: fused TE parameters split back into their sources */
    n_params = te_llama_num_parameters(m);
    for (i = 0; i < n_params; i++) n_src += te_llama_parameter(m, i)->n_sources;
    src = (te_llama__st_source *)te_llama__calloc(a, sizeof *src * (size_t)n_src);
    shard_of = (int *)te_llama__calloc(a, sizeof(int) * (size_t)n_src);
    files = (te_llama__saved_file *)te_llama__calloc(a, sizeof *files * ((size_t)n_src + 3));
    staging_bytes = m->options.staging_bytes;
    staging = te_llama__alloc(a, staging_bytes);
    memset(&text, 0, sizeof text);
    text.allocator = a;
    if (!src || !shard_of || !files || !staging) { r = te_llama__fail(TE_LLAMA_ERR_NOMEM, "saving %s", dir); goto done; }
    n_src = 0;
    for (i = 0; i < n_params; i++) {
        te_llama_param *p = te_llama_parameter(m, i);
        for (s = 0; s < p->n_sources; s++) {
            te_llama__st_source *t = &src[n_src];
            uint64_t bytes;
            t->name = p->sources[s].name;
            t->dtype = dt == TE_LLAMA_DTYPE_AUTO ? p->dtype : dt;
            t->ndim = p->ndim;
            t->shape[0] = p->sources[s].n_rows;
            t->shape[1] = p->shape[1];
            t->src_dtype = p->dtype;
            t->src_on_device = p->on_device;
            t->src = (const char *)p->data + (size_t)p->sources[s].row_begin * (size_t)te_llama__param_cols(p) * te_llama_dtype_size(p->dtype);
            {   /* an FP8 model saves what it computes with: the dequantised GEMM weights */
                float sinv;
                const uint8_t *q = te_llama__fp8_saved(m, p, &sinv);
                if (q) {
                    t->src = q + (size_t)p->sources[s].row_begin * (size_t)te_llama__param_cols(p);
                    t->src_dtype = TE_LLAMA_F8_E4M3;
                    t->src_scale_inv = sinv;
                }
            }
            bytes = te_llama__st_source_bytes(t);
            if (cur > 0 && cur + bytes > max_shard) { n_shards++; cur = 0; } /* HF's greedy split */
            shard_of[n_src] = n_shards;
            cur += bytes;
            total += bytes;
            n_src++;
        }
    }
    n_shards++;
    /* what an earlier save left here, to remove once the new files are in place */
    if (te_llama__exists(dir, "model.safetensors.index.json")) {
        if (!te_llama__join(path, sizeof path, dir, "model.safetensors.index.json") &&
            te_llama__index_shards(path, a, &old_shards, &old_n) != TE_LLAMA_OK) {
            old_shards = NULL;
            old_n = 0;
        }
    }
    /* every file goes to a temporary name first */
    for (i = 0; i < n_shards && !r; i++) {
        int first = -1, count = 0, k;
        te_llama__saved_file *f = &files[n_files];
        if (n_shards == 1) snprintf(f->final_name, sizeof f->final_name, "model.safetensors");
        else snprintf(f->final_name, sizeof f->final_name, "model-%05d-of-%05d.safetensors", i + 1, n_shards);
        if ((r = te_llama__join(f->tmp_path, sizeof f->tmp_path, dir, ".te_llama-tmp-"))) break;
        if (strlen(f->tmp_path) + strlen(f->final_name) + 1 > sizeof f->tmp_path) { r = te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "path too long"); break; }
        strcat(f->tmp_path, f->final_name);
        n_files++;
        for (k = 0; k < n_src; k++) if (shard_of[k] == i) { if (first < 0) first = k; count++; }
        r = te_llama__st_write_file(f->tmp_path, src + first, (size_t)count, staging, staging_bytes, a, &m->options, i, n_shards);
    }
    if (!r && n_shards > 1) {
        te_llama__saved_file *f = &files[n_files++];
        snprintf(f->final_name, sizeof f->final_name, "model.safetensors.index.json");
        if (!(r = te_llama__join(f->tmp_path, sizeof f->tmp_path, dir, ".te_llama-tmp-model.safetensors.index.json"))) {
            te_llama__buf_printf(&text, "{\n  \"metadata\": {\"total_size\": %llu},\n  \"weight_map\": {\n", (unsigned long long)total);
            for (i = 0; i < n_src; i++) {
                char shard[64];
                snprintf(shard, sizeof shard, "model-%05d-of-%05d.safetensors", shard_of[i] + 1, n_shards);
                te_llama__buf_str(&text, "    ");
                te_llama__buf_json_string(&text, src[i].name);
                te_llama__buf_printf(&text, ": \"%s\"%s\n", shard, i + 1 < n_src ? "," : "");
            }
            te_llama__buf_str(&text, "  }\n}\n");
            r = text.failed ? te_llama__fail(TE_LLAMA_ERR_NOMEM, "index") : te_llama__write_text(f->tmp_path, text.data, text.len);
        }
    }
    if (!r) {
        te_llama__saved_file *f = &files[n_files++];
        te_llama_config c = m->config;
        char cfg[4096];
        size_t len;
        if (dt != TE_LLAMA_DTYPE_AUTO) c.dtype = dt;
        snprintf(f->final_name, sizeof f->final_name, "config.json");
        if (!(r = te_llama__join(f->tmp_path, sizeof f->tmp_path, dir, ".te_llama-tmp-config.json")) &&
            !(r = te_llama_config_write(&c, cfg, sizeof cfg, &len)))
            r = te_llama__write_text(f->tmp_path, cfg, len);
    }
    if (!r) {
        te_llama__saved_file *f = &files[n_files++];
        char gen[512];
        int len = snprintf(gen, sizeof gen, "{\n  \"_from_model_config\": true");
        if (m->config.bos_token_id >= 0) len += snprintf(gen + len, sizeof gen - (size_t)len, ",\n  \"bos_token_id\": %d", m->config.bos_token_id);
        if (m->n_eos_token_ids == 1) len += snprintf(gen + len, sizeof gen - (size_t)len, ",\n  \"eos_token_id\": %d", m->eos_token_ids[0]);
        else if (m->n_eos_token_ids > 1) {
            len += snprintf(gen + len, sizeof gen - (size_t)len, ",\n  \"eos_token_id\": [");
            for (i = 0; i < m->n_eos_token_ids; i++) len += snprintf(gen + len, sizeof gen - (size_t)len, i ? ", %d" : "%d", m->eos_token_ids[i]);
            len += snprintf(gen + len, sizeof gen - (size_t)len, "]");
        }
        len += snprintf(gen + len, sizeof gen - (size_t)len, "\n}\n");
        snprintf(f->final_name, sizeof f->final_name, "generation_config.json");
        if (!(r = te_llama__join(f->tmp_path, sizeof f->tmp_path, dir, ".te_llama-tmp-generation_config.json")))
            r = te_llama__write_text(f->tmp_path, gen, (size_t)len);
    }
    if (r) { /* nothing was renamed yet: remove the temporaries, the old checkpoint is untouched */
        for (i = 0; i < n_files; i++) remove(files[i].tmp_path);
        goto done;
    }
    /* all written: rename into place, shards first, the index and config last */
    for (i = 0; i < n_files && !r; i++) {
        if (te_llama__join(path, sizeof path, dir, files[i].final_name) || rename(files[i].tmp_path, path) != 0)
            r = te_llama__fail(TE_LLAMA_ERR_IO, "renaming %s: %s", files[i].tmp_path, strerror(errno));
    }
    if (r) { for (; i < n_files; i++) remove(files[i].tmp_path); goto done; }
    /* remove what the new checkpoint no longer uses: old shards, and the other layout's files */
    for (i = 0; i < old_n; i++) {
        int k, kept = 0;
        for (k = 0; k < n_files; k++) kept |= strcmp(old_shards[i], files[k].final_name) == 0;
        if (!kept && !te_llama__join(path, sizeof path, dir, old_shards[i])) remove(path);
    }
    if (n_shards > 1 && !te_llama__join(path, sizeof path, dir, "model.safetensors")) remove(path);
    if (n_shards == 1 && !te_llama__join(path, sizeof path, dir, "model.safetensors.index.json")) remove(path);
done:
    te_llama__free_names(a, old_shards, old_n);
    te_llama__free(a, text.data);
    te_llama__free(a, staging);
    te_llama__free(a, files);
    te_llama__free(a, shard_of);
    te_llama__free(a, src);
    return r;
}

/* ---------------------------------------------------------------------------------------- CPU forward pass */

/* The CPU reference: fp32 arithmetic from any storage dtype. It is the specification the CUDA kernels are
   tested against, so it favours plain loops over cleverness. */

static float te_llama__dot(const float *a, const float *b, int n) {
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
    int i = 0;
    for (; i + 8 <= n; i += 8) { /* eight independent sums: vectorisable without -ffast-math */
        s0 += a[i] * b[i]; s1 += a[i + 1] * b[i + 1]; s2 += a[i + 2] * b[i + 2]; s3 += a[i + 3] * b[i + 3];
        s4 += a[i + 4] * b[i + 4]; s5 += a[i + 5] * b[i + 5]; s6 += a[i + 6] * b[i + 6]; s7 += a[i + 7] * b[i + 7];
    }
    for (; i < n; i++) s0 += a[i] * b[i];
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7));
}

/* Row r of a parameter as float32: the row itself when stored in F32, else converted into rowbuf. */
static const float *te_llama__row(const te_llama_param *w, int64_t r, float *rowbuf) {
    int64_t cols = w->ndim == 2 ? w->shape[1] : w->shape[0]; /* a 1-D weight is one row */
    const char *base = (const char *)w->data + (size_t)r * (size_t)cols * te_llama_dtype_size(w->dtype);
    int64_t i;
    if (w->dtype == TE_LLAMA_F32) return (const float *)base;
    if (w->dtype == TE_LLAMA_BF16)
        for (i = 0; i < cols; i++) rowbuf[i] = te_llama__bf16_to_f32(((const uint16_t *)base)[i]);
    else
        te_llama_convert(rowbuf, TE_LLAMA_F32, base, w->dtype, (size_t)cols);
    return rowbuf;
}

/* out[t, 0:rows] = x[t, 0:cols] @ W^T for n tokens: W (rows, cols) row-major as HF stores nn.Linear weights. */
static void te_llama__matmul(float *out, int ld_out, const float *x, int ld_x, int n, const te_llama_param *w,
                             float *rowbuf) {
    int64_t r, rows = w->shape[0];
    int cols = (int)w->shape[1], t;
    for (r = 0; r < rows; r++) {
        const float *wr = te_llama__row(w, r, rowbuf);
        for (t = 0; t < n; t++) out[(size_t)t * ld_out + r] = te_llama__dot(x + (size_t)t * ld_x, wr, cols);
    }
}

/* HF LlamaRMSNorm: x / sqrt(mean(x^2) + eps) * weight. */
static void te_llama__rmsnorm(float *out, const float *x, const te_llama_param *w, int n, double eps, float *rowbuf) {
    const float *wr = te_llama__row(w, 0, rowbuf); /* a 1-D weight is one row */
    double ss = 0;
    float inv;
    int i;
    for (i = 0; i < n; i++) ss += (double)x[i] * x[i];
    inv = (float)(1.0 / sqrt(ss / n + eps));
    for (i = 0; i < n; i++) out[i] = wr[i] * (x[i] * inv);
}

/* HF's rotate_half convention: pairs (i, i + half). cs, sn: (half) for this token's position. */
static void te_llama__rope(float *v, int half, const float *cs, const float *sn) {
    int i;
    for (i = 0; i < half; i++) {
        float a = v[i], b = v[i + half];
        v[i] = a * cs[i] - b * sn[i];
        v[i + half] = b * cs[i] + a * sn[i];
    }
}

/* Scratch of one layer forward, carved from step->work. */
typedef struct te_llama__layer_work {
    float *xn;     /* (n, hidden) normed input, then projection outputs */
    float *qkv;    /* (n, q_dim + 2 kv_dim) */
    float *att;    /* (n, q_dim) attention output */
    float *mlp;    /* (n, 2 intermediate): gate then up */
    float *rowbuf; /* (max(hidden, q_dim, intermediate)) a weight row in float32 */
    float *scores; /* (max_len) one head's attention scores */
} te_llama__layer_work;

static size_t te_llama__layer_work_layout(const te_llama_config *c, int n, int max_len, float *base, te_llama__layer_work *w) {
    size_t q = (size_t)c->num_attention_heads * c->head_dim, kv = (size_t)c->num_key_value_heads * c->head_dim;
    size_t h = (size_t)c->hidden_size, I = (size_t)c->intermediate_size, widest = h, off = 0;
    if (q > widest) widest = q;
    if (I > widest) widest = I;
#define TE_LLAMA__CARVE(field, count) do { if (w) w->field = base + off; off += (count); } while (0)
    TE_LLAMA__CARVE(xn, (size_t)n * h);
    TE_LLAMA__CARVE(qkv, (size_t)n * (q + 2 * kv));
    TE_LLAMA__CARVE(att, (size_t)n * q);
    TE_LLAMA__CARVE(mlp, (size_t)n * 2 * I);
    TE_LLAMA__CARVE(rowbuf, widest);
    TE_LLAMA__CARVE(scores, (size_t)max_len);
#undef TE_LLAMA__CARVE
    return off;
}

TE_LLAMA_API size_t te_llama_work_floats(const te_llama_config *config, int n_tokens, int max_len) {
    return te_llama__layer_work_layout(config, n_tokens, max_len, NULL, NULL);
}

/* The shared body of both decoder kinds. The kinds differ in how the weights are grouped: the TE layer passes
   its fused QKV and fc1 buffers (one GEMM each), the vanilla layer the separate HF tensors (one GEMM per part);
   the parts' outputs land side by side in the same columns either way. */
static te_llama_result te_llama__cpu_layer(const te_llama_step *step, float *x, int layer,
                                           const te_llama_param *ln1, const te_llama_param *const *qkv, int n_qkv,
                                           const te_llama_param *proj, const te_llama_param *ln2,
                                           const te_llama_param *const *fc1, int n_fc1, const te_llama_param *fc2) {
    const te_llama_config *c = step->config;
    te_llama_kv_cache *cache = step->cache;
    int n = step->n_tokens, h = c->hidden_size, hd = c->head_dim, half = hd / 2, I = c->intermediate_size;
    int nh = c->num_attention_heads, nkv = c->num_key_value_heads, q_dim = nh * hd, kv_dim = nkv * hd;
    int ld_qkv = q_dim + 2 * kv_dim, group = nh / nkv, t, k, col;
    float scale = 1.0f / sqrtf((float)hd);
    te_llama__layer_work w;
    te_llama__layer_work_layout(c, n, cache->max_len, step->work, &w);
    if (cache->on_device) return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "CPU layer given a device cache");
    /* attention block: x += proj(attention(rope(qkv(rmsnorm(x))))) */
    for (t = 0; t < n; t++) te_llama__rmsnorm(w.xn + (size_t)t * h, x + (size_t)t * h, ln1, h, c->rms_norm_eps, w.rowbuf);
    if (!te_llama__fp8_gemm(step, layer, 0, w.qkv, ld_qkv, w.xn, h, n, w.rowbuf))
        for (k = 0, col = 0; k < n_qkv; col += (int)qkv[k]->shape[0], k++)
            te_llama__matmul(w.qkv + col, ld_qkv, w.xn, h, n, qkv[k], w.rowbuf);
    for (t = 0; t < n; t++) { /* rotate q and k, then store k and v at this token's cache position */
        float *row = w.qkv + (size_t)t * ld_qkv;
        const float *cs = step->rope_cos + (size_t)t * half, *sn = step->rope_sin + (size_t)t * half;
        size_t at = (((size_t)layer * cache->n_seq + (size_t)step->seq[t]) * cache->max_len + (size_t)step->pos[t]) * kv_dim;
        int hh;
        for (hh = 0; hh < nh; hh++) te_llama__rope(row + hh * hd, half, cs, sn);
        for (hh = 0; hh < nkv; hh++) te_llama__rope(row + q_dim + hh * hd, half, cs, sn);
        memcpy(cache->k + at, row + q_dim, sizeof(float) * (size_t)kv_dim);
        memcpy(cache->v + at, row + q_dim + kv_dim, sizeof(float) * (size_t)kv_dim);
    }
    for (t = 0; t < n; t++) { /* causal grouped-query attention over the cache: positions [0, pos] */
        const float *row = w.qkv + (size_t)t * ld_qkv;
        int p = step->pos[t], hh, j;
        size_t base = ((size_t)layer * cache->n_seq + (size_t)step->seq[t]) * cache->max_len * kv_dim;
        for (hh = 0; hh < nh; hh++) {
            const float *qh = row + hh * hd;
            float *out = w.att + (size_t)t * q_dim + hh * hd, mx = -INFINITY, sum = 0;
            size_t off = (size_t)(hh / group) * hd;
            for (j = 0; j <= p; j++) {
                w.scores[j] = te_llama__dot(qh, cache->k + base + (size_t)j * kv_dim + off, hd) * scale;
                if (w.scores[j] > mx) mx = w.scores[j];
            }
            for (j = 0; j <= p; j++) { w.scores[j] = expf(w.scores[j] - mx); sum += w.scores[j]; }
            memset(out, 0, sizeof(float) * (size_t)hd);
            for (j = 0; j <= p; j++) {
                const float *vj = cache->v + base + (size_t)j * kv_dim + off;
                float pj = w.scores[j] / sum;
                int d;
                for (d = 0; d < hd; d++) out[d] += pj * vj[d];
            }
        }
    }
    if (!te_llama__fp8_gemm(step, layer, 1, w.xn, h, w.att, q_dim, n, w.rowbuf))
        te_llama__matmul(w.xn, h, w.att, q_dim, n, proj, w.rowbuf);
    for (k = 0; k < n * h; k++) x[k] += w.xn[k];
    /* MLP block: x += fc2(silu(gate) * up), gate and up from fc1(rmsnorm(x)) */
    for (t = 0; t < n; t++) te_llama__rmsnorm(w.xn + (size_t)t * h, x + (size_t)t * h, ln2, h, c->rms_norm_eps, w.rowbuf);
    if (!te_llama__fp8_gemm(step, layer, 2, w.mlp, 2 * I, w.xn, h, n, w.rowbuf))
        for (k = 0, col = 0; k < n_fc1; col += (int)fc1[k]->shape[0], k++)
            te_llama__matmul(w.mlp + col, 2 * I, w.xn, h, n, fc1[k], w.rowbuf);
    for (t = 0; t < n; t++) {
        float *g = w.mlp + (size_t)t * 2 * I, *u = g + I;
        for (k = 0; k < I; k++) g[k] = g[k] / (1.0f + expf(-g[k])) * u[k];
    }
    if (!te_llama__fp8_gemm(step, layer, 3, w.xn, h, w.mlp, 2 * I, n, w.rowbuf))
        te_llama__matmul(w.xn, h, w.mlp, 2 * I, n, fc2, w.rowbuf);
    for (k = 0; k < n * h; k++) x[k] += w.xn[k];
    return TE_LLAMA_OK;
}

static te_llama_result te_llama__vanilla_forward(te_llama_layer *self, const te_llama_step *step, float *x) {
    const te_llama_param *P = self->params, *qkv[3], *fc1[2];
    qkv[0] = &P[1]; qkv[1] = &P[2]; qkv[2] = &P[3];
    fc1[0] = &P[6]; fc1[1] = &P[7];
    return te_llama__cpu_layer(step, x, self->index, &P[0], qkv, 3, &P[4], &P[5], fc1, 2, &P[8]);
}

static te_llama_result te_llama__te_forward(te_llama_layer *self, const te_llama_step *step, float *x) {
    const te_llama_param *P = self->params, *qkv[1], *fc1[1];
    qkv[0] = &((te_llama__te_impl *)self->impl)->qkv;
    fc1[0] = &P[6];
    return te_llama__cpu_layer(step, x, self->index, &P[0], qkv, 1, &P[4], &P[5], fc1, 1, &P[7]);
}

/* ---------------------------------------------------------------------------------------------- model forward */


TE_LLAMA_API te_llama_result te_llama_kv_cache_create(te_llama_model *m, int n_seq, int max_len,
                                                      te_llama_kv_cache **out) {
    te_llama_kv_cache *c;
    uint64_t floats;
    if (!m || !out || n_seq < 1 || max_len < 1) return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "kv cache of %d sequences x %d positions", n_seq, max_len);
    c = (te_llama_kv_cache *)te_llama__calloc(&m->allocator, sizeof *c);
    if (!c) return te_llama__fail(TE_LLAMA_ERR_NOMEM, "kv cache");
    c->allocator = m->allocator;
    c->n_layers = m->config.num_hidden_layers;
    c->n_seq = n_seq;
    c->max_len = max_len;
    c->kv_dim = m->config.num_key_value_heads * m->config.head_dim;
    if (!te_llama__mul((uint64_t)c->n_layers * (uint64_t)n_seq, (uint64_t)max_len, &floats) ||
        !te_llama__mul(floats, (uint64_t)c->kv_dim, &floats) || floats > ((uint64_t)1 << 40)) {
        te_llama__free(&m->allocator, c);
        return te_llama__fail(TE_LLAMA_ERR_OUT_OF_RANGE, "kv cache of %d sequences x %d positions is too large", n_seq, max_len);
    }
#ifdef TE_LLAMA_CUDA
    if (m->options.backend == TE_LLAMA_BACKEND_CUDA) {
        te_llama_result r = te_llama_cuda_kv_cache_alloc(m, c);
        if (r) { te_llama__free(&m->allocator, c); return r; }
        *out = c;
        return TE_LLAMA_OK;
    }
#endif
    c->k = (float *)te_llama__calloc(&m->allocator, (size_t)floats * sizeof(float));
    c->v = (float *)te_llama__calloc(&m->allocator, (size_t)floats * sizeof(float));
    if (!c->k || !c->v) {
        te_llama_kv_cache_free(c);
        return te_llama__fail(TE_LLAMA_ERR_NOMEM, "kv cache of %llu floats", (unsigned long long)floats * 2);
    }
    *out = c;
    return TE_LLAMA_OK;
}

TE_LLAMA_API void te_llama_kv_cache_free(te_llama_kv_cache *c) {
    te_llama_allocator a;
    if (!c) return;
    a = c->allocator;
#ifdef TE_LLAMA_CUDA
    if (c->on_device) te_llama_cuda_kv_cache_free(c);
#endif
    te_llama__free(&a, c->k);
    te_llama__free(&a, c->v);
    te_llama__free(&a, c);
}

TE_LLAMA_API te_llama_result te_llama_memory_usage(const te_llama_model *m, const te_llama_kv_cache *cache,
                                                   te_llama_memory *out) {
    int i, n;
    if (!m || !out) return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_memory_usage: NULL");
    memset(out, 0, sizeof *out);
    n = te_llama_num_parameters(m);
    for (i = 0; i < n; i++) out->parameter_bytes += te_llama_param_bytes(te_llama_parameter((te_llama_model *)m, i));
    if (cache) /* keys and values: floats on the CPU, bf16 on the device */
        out->kv_cache_bytes = 2ull * (uint64_t)cache->n_layers * (uint64_t)cache->n_seq * (uint64_t)cache->max_len *
                              (uint64_t)cache->kv_dim * (cache->on_device ? 2u : 4u);
#ifdef TE_LLAMA_CUDA
    if (m->options.backend == TE_LLAMA_BACKEND_CUDA) {
        size_t ws = 0, f = 0, t = 0;
        te_llama_result r = te_llama_cuda_memory_info(m, &ws, &f, &t);
        if (r) return r;
        out->workspace_bytes = ws;
        out->device_free = f;
        out->device_total = t;
    }
#endif
    return TE_LLAMA_OK;
}

static te_llama_result te_llama__check_batch(const te_llama_model *m, const te_llama_kv_cache *cache,
                                             const te_llama_batch *b) {
    int i;
    if (!b || b->n_tokens < 1 || !b->tokens || !b->pos) return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "empty batch");
    if (!cache || cache->n_layers != m->config.num_hidden_layers || cache->kv_dim != m->config.num_key_value_heads * m->config.head_dim)
        return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "kv cache does not belong to this model");
    for (i = 0; i < b->n_tokens; i++) {
        int seq = b->seq ? b->seq[i] : 0;
        if (b->tokens[i] < 0 || b->tokens[i] >= m->config.vocab_size)
            return te_llama__fail(TE_LLAMA_ERR_OUT_OF_RANGE, "token %d at batch index %d is outside the vocabulary of %d", b->tokens[i], i, m->config.vocab_size);
        if (b->pos[i] < 0 || b->pos[i] >= cache->max_len)
            return te_llama__fail(TE_LLAMA_ERR_OUT_OF_RANGE, "position %d at batch index %d is outside the cache of %d positions", b->pos[i], i, cache->max_len);
        if (seq < 0 || seq >= cache->n_seq)
            return te_llama__fail(TE_LLAMA_ERR_OUT_OF_RANGE, "sequence %d at batch index %d is outside the cache of %d sequences", seq, i, cache->n_seq);
    }
    return TE_LLAMA_OK;
}

TE_LLAMA_API te_llama_result te_llama_forward(te_llama_model *m, te_llama_kv_cache *cache, const te_llama_batch *b,
                                              float *logits) {
    const te_llama_config *c;
    te_llama_step step;
    int n, h, half, i, l, row = 0;
    int32_t *seq0 = NULL;
    float *x, *rope, *work, *tmp;
    size_t work_floats;
    te_llama_result r;
    if (!m) return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_forward: NULL model");
    if ((r = te_llama__check_batch(m, cache, b))) return r;
#ifdef TE_LLAMA_CUDA
    if (m->options.backend == TE_LLAMA_BACKEND_CUDA) return te_llama_cuda_forward(m, cache, b, logits);
#endif
    c = &m->config;
    n = b->n_tokens;
    h = c->hidden_size;
    half = c->head_dim / 2;
    work_floats = te_llama_work_floats(c, n, cache->max_len);
    x = (float *)te_llama__alloc(&m->allocator, sizeof(float) * ((size_t)n * h + (size_t)n * 2 * half + work_floats + (size_t)h * 2));
    if (!b->seq) seq0 = (int32_t *)te_llama__calloc(&m->allocator, sizeof(int32_t) * (size_t)n);
    if (!x || (!b->seq && !seq0)) { te_llama__free(&m->allocator, x); te_llama__free(&m->allocator, seq0); return te_llama__fail(TE_LLAMA_ERR_NOMEM, "forward of %d tokens", n); }
    rope = x + (size_t)n * h;
    work = rope + (size_t)n * 2 * half;
    tmp = work + work_floats; /* (2 hidden) final norm output and a weight row */
    for (i = 0; i < n; i++) { /* embeddings */
        const float *e = te_llama__row(&m->embed_tokens, b->tokens[i], tmp);
        memcpy(x + (size_t)i * h, e, sizeof(float) * (size_t)h);
    }
    for (i = 0; i < n; i++) { /* cos and sin of each position, as HF: float32 angle = position x inv_freq */
        int k;
        for (k = 0; k < half; k++) {
            float angle = (float)b->pos[i] * m->rope_inv_freq[k];
            rope[(size_t)i * half + k] = (float)cos((double)angle);
            rope[(size_t)n * half + (size_t)i * half + k] = (float)sin((double)angle);
        }
    }
    memset(&step, 0, sizeof step);
    step.config = c;
    step.n_tokens = n;
    step.pos = b->pos;
    step.seq = b->seq ? b->seq : seq0;
    step.cache = cache;
    step.rope_cos = rope;
    step.rope_sin = rope + (size_t)n * half;
    step.work = work;
    step.fp8 = m->fp8;
    for (l = 0; l < c->num_hidden_layers && !r; l++) r = m->layers[l]->forward(m->layers[l], &step, x);
    if (!r) te_llama__fp8_end_step(m); /* delayed scaling: the amaxes of this forward set the next one's scales */
    if (!r && logits) {
        for (i = 0; i < n; i++) {
            if (b->want_logits && !b->want_logits[i]) continue;
            te_llama__rmsnorm(tmp, x + (size_t)i * h, &m->norm, h, c->rms_norm_eps, tmp + h);
            te_llama__matmul(logits + (size_t)row * c->vocab_size, c->vocab_size, tmp, h, 1, &m->lm_head, work);
            row++;
        }
    }
    te_llama__free(&m->allocator, seq0);
    te_llama__free(&m->allocator, x);
    return r;
}

/* -------------------------------------------------------------------------------------------------- sampling */

/* The generator state a seed starts from (the CUDA sampler seeds its own the same way). */
static uint64_t te_llama__seed_rng(uint64_t seed) { return seed ^ 0x853c49e6748fea9bull; }

TE_LLAMA_API te_llama_result te_llama_sampler_init(te_llama_sampler *s, const te_llama_sampler_options *options,
                                                   int vocab, const te_llama_allocator *allocator) {
    if (!s || vocab < 1) return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "sampler of vocab %d", vocab);
    memset(s, 0, sizeof *s);
    if (options) s->options = *options;
    if (s->options.temperature < 0 || s->options.top_k < 0 || s->options.top_p < 0 || s->options.top_p > 1)
        return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "sampler: temperature %g, top_k %d, top_p %g", s->options.temperature, s->options.top_k, s->options.top_p);
    s->allocator = te_llama__allocator_copy(allocator);
    s->vocab = vocab;
    s->rng = te_llama__seed_rng(s->options.seed);
    s->probs = (float *)te_llama__alloc(&s->allocator, sizeof(float) * (size_t)vocab);
    s->candidates = (te_llama_candidate *)te_llama__alloc(&s->allocator, sizeof *s->candidates * (size_t)vocab);
    if (!s->probs || !s->candidates) { te_llama_sampler_free(s); return te_llama__fail(TE_LLAMA_ERR_NOMEM, "sampler"); }
    return TE_LLAMA_OK;
}

TE_LLAMA_API void te_llama_sampler_free(te_llama_sampler *s) {
    if (!s) return;
    te_llama__free(&s->allocator, s->probs);
    te_llama__free(&s->allocator, s->candidates);
    s->probs = NULL;
    s->candidates = NULL;
}

static int te_llama__by_prob_desc(const void *a, const void *b) {
    const te_llama_candidate *x = (const te_llama_candidate *)a, *y = (const te_llama_candidate *)b;
    if (x->p != y->p) return x->p > y->p ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

/* Greedy when temperature is 0; else softmax(logits / T), keep the top_k most likely, then the smallest set
   whose mass reaches top_p (HF's warpers, in that order), and draw. */
TE_LLAMA_API int32_t te_llama_sample(te_llama_sampler *s, const float *logits) {
    int i, n = 0, v = s->vocab, keep;
    float mx = -INFINITY, sum = 0, cut, r, acc = 0;
    if (s->options.temperature <= 0) {
        int best = 0;
        for (i = 1; i < v; i++) if (logits[i] > logits[best]) best = i;
        return best;
    }
    for (i = 0; i < v; i++) if (logits[i] > mx) mx = logits[i];
    for (i = 0; i < v; i++) { s->probs[i] = expf((logits[i] - mx) / s->options.temperature); sum += s->probs[i]; }
    for (i = 0; i < v; i++) s->probs[i] /= sum;
    /* candidates: a token below (1 - top_p) / (v - 1) can never be inside the nucleus (llama2.c's bound) */
    cut = (s->options.top_p > 0 && s->options.top_p < 1 && v > 1) ? (1.0f - s->options.top_p) / (float)(v - 1) : 0.0f;
    for (i = 0; i < v; i++)
        if (s->probs[i] >= cut) { s->candidates[n].p = s->probs[i]; s->candidates[n].id = i; n++; }
    qsort(s->candidates, (size_t)n, sizeof *s->candidates, te_llama__by_prob_desc);
    keep = n;
    if (s->options.top_k > 0 && s->options.top_k < keep) keep = s->options.top_k;
    if (s->options.top_p > 0 && s->options.top_p < 1) {
        float mass = 0, total = 0;
        for (i = 0; i < keep; i++) total += s->candidates[i].p;
        for (i = 0; i < keep; i++) {
            mass += s->candidates[i].p / total;
            if (mass >= s->options.top_p) { keep = i + 1; break; }
        }
    }
    sum = 0;
    for (i = 0; i < keep; i++) sum += s->candidates[i].p;
    r = te_llama__rand_unit(&s->rng) * sum;
    for (i = 0; i < keep; i++) {
        acc += s->candidates[i].p;
        if (r < acc) return s->candidates[i].id;
    }
    return s->candidates[keep - 1].id;
}

/* ------------------------------------------------------------------------------------------------ generation */

TE_LLAMA_API te_llama_result te_llama_generate(te_llama_model *m, const te_llama_generate_options *options,
                                               const int32_t *prompt, int n_prompt, int32_t *out, int cap,
                                               int *n_out) {
    te_llama_generate_options g;
    te_llama_kv_cache *cache = NULL;
    te_llama_sampler sampler;
    te_llama_batch batch;
    int32_t *pos = NULL, token;
    uint8_t *want = NULL;
    float *logits = NULL;
    int i, k, produced = 0, limit;
    te_llama_result r;
    if (!m || !prompt || n_prompt < 1 || (!out && cap > 0) || !n_out) return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_generate: needs a model, a prompt of at least one token and n_out");
    *n_out = 0;
#ifdef TE_LLAMA_CUDA
    if (m->options.backend == TE_LLAMA_BACKEND_CUDA) return te_llama_cuda_generate(m, options, prompt, n_prompt, out, cap, n_out);
#endif
    memset(&g, 0, sizeof g);
    if (options) g = *options;
    if (g.max_new_tokens <= 0) g.max_new_tokens = 128;
    limit = g.max_new_tokens < cap ? g.max_new_tokens : cap;
    if (limit < 0) limit = 0;
    memset(&sampler, 0, sizeof sampler);
    if ((r = te_llama_sampler_init(&sampler, &g.sampler, m->config.vocab_size, &m->allocator))) return r;
    if ((r = te_llama_kv_cache_create(m, 1, n_prompt + limit + 1, &cache))) goto done;
    pos = (int32_t *)te_llama__alloc(&m->allocator, sizeof(int32_t) * (size_t)n_prompt);
    want = (uint8_t *)te_llama__calloc(&m->allocator, (size_t)n_prompt);
    logits = (float *)te_llama__alloc(&m->allocator, sizeof(float) * (size_t)m->config.vocab_size);
    if (!pos || !want || !logits) { r = te_llama__fail(TE_LLAMA_ERR_NOMEM, "generation buffers"); goto done; }
    for (i = 0; i < n_prompt; i++) pos[i] = i;
    want[n_prompt - 1] = 1;
    memset(&batch, 0, sizeof batch);
    batch.n_tokens = n_prompt;
    batch.tokens = prompt;
    batch.pos = pos;
    batch.want_logits = want;
    if ((r = te_llama_forward(m, cache, &batch, logits))) goto done;
    while (produced < limit) {
        int stop = 0;
        token = te_llama_sample(&sampler, logits);
        out[produced++] = token;
        if (g.on_token && g.on_token(g.user, token)) break;
        if (!g.ignore_eos)
            for (k = 0; k < m->n_eos_token_ids; k++) stop |= token == m->eos_token_ids[k];
        if (stop || produced == limit) break;
        pos[0] = n_prompt + produced - 1;
        batch.n_tokens = 1;
        batch.tokens = &token;
        batch.want_logits = NULL;
        if ((r = te_llama_forward(m, cache, &batch, logits))) break;
    }
    *n_out = produced;
done:
    te_llama__free(&m->allocator, logits);
    te_llama__free(&m->allocator, want);
    te_llama__free(&m->allocator, pos);
    te_llama_kv_cache_free(cache);
    te_llama_sampler_free(&sampler);
    return r;
}

TE_LLAMA_API te_llama_result te_llama_generate_batch(te_llama_model *m, const te_llama_generate_options *options,
                                                     const int32_t *const *prompts, const int *n_prompt, int n_seq,
                                                     int32_t *out, int cap, int *n_out) {
    te_llama_generate_options g;
    te_llama_kv_cache *cache = NULL;
    te_llama_sampler sampler;
    te_llama_batch batch;
    int32_t *tokens = NULL, *pos = NULL, *seq = NULL, *live = NULL;
    uint64_t *rng = NULL, logit_floats;
    uint8_t *want = NULL;
    float *logits = NULL;
    int64_t total = 0;
    int s, i, j, k, n, limit, longest = 0, n_live;
    te_llama_result r;
    if (!m || !prompts || !n_prompt || n_seq < 1 || cap < 0 || (!out && cap > 0) || !n_out)
        return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_generate_batch: needs a model, prompts, n_prompt and n_out, n_seq >= 1 (got %d), cap >= 0 (got %d) and out when cap > 0",
                              n_seq, cap);
    for (s = 0; s < n_seq; s++) n_out[s] = 0;
    memset(&g, 0, sizeof g);
    if (options) g = *options;
    if (g.sampler.temperature < 0 || g.sampler.top_k < 0 || g.sampler.top_p < 0 || g.sampler.top_p > 1 ||
        g.sampler.temperature != g.sampler.temperature || g.sampler.top_p != g.sampler.top_p) /* NaN too */
        return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_generate_batch: sampler temperature %g, top_k %d, top_p %g (want temperature >= 0, top_k >= 0, 0 <= top_p <= 1)",
                              (double)g.sampler.temperature, g.sampler.top_k, (double)g.sampler.top_p);
    for (s = 0; s < n_seq; s++) {
        if (!prompts[s] || n_prompt[s] < 1)
            return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_generate_batch: prompt %d is %s", s, prompts[s] ? "empty" : "NULL");
        for (i = 0; i < n_prompt[s]; i++)
            if (prompts[s][i] < 0 || prompts[s][i] >= m->config.vocab_size)
                return te_llama__fail(TE_LLAMA_ERR_OUT_OF_RANGE, "te_llama_generate_batch: prompt %d token %d at index %d is outside the vocabulary of %d",
                                      s, prompts[s][i], i, m->config.vocab_size);
        total += n_prompt[s];
        if (n_prompt[s] > longest) longest = n_prompt[s];
    }
    if (g.max_new_tokens <= 0) g.max_new_tokens = 128;
    limit = g.max_new_tokens < cap ? g.max_new_tokens : cap;
    /* one forward takes every prompt token (n_tokens is an int); the cache holds the longest prompt, its new tokens
       and one spare position */
    if (total > INT32_MAX || (int64_t)longest + limit + 1 > INT32_MAX)
        return te_llama__fail(TE_LLAMA_ERR_OUT_OF_RANGE, "te_llama_generate_batch: %lld prompt tokens (longest %d) and %d new tokens do not fit an int",
                              (long long)total, longest, limit);
    if (!te_llama__mul((uint64_t)n_seq, (uint64_t)m->config.vocab_size, &logit_floats) || logit_floats > (uint64_t)SIZE_MAX / sizeof(float))
        return te_llama__fail(TE_LLAMA_ERR_OUT_OF_RANGE, "te_llama_generate_batch: logits of %d sequences x vocab %d overflow", n_seq, m->config.vocab_size);
#ifdef TE_LLAMA_CUDA
    if (m->options.backend == TE_LLAMA_BACKEND_CUDA) return te_llama_cuda_generate_batch(m, options, prompts, n_prompt, n_seq, out, cap, n_out);
#endif
    if (limit == 0) return TE_LLAMA_OK;
    /* one sampler's scratch serves every sequence; each keeps its own generator state, seeded by seed + s */
    memset(&sampler, 0, sizeof sampler);
    if ((r = te_llama_sampler_init(&sampler, &g.sampler, m->config.vocab_size, &m->allocator))) return r;
    if ((r = te_llama_kv_cache_create(m, n_seq, longest + limit + 1, &cache))) goto done;
    n = (int)total;
    tokens = (int32_t *)te_llama__alloc(&m->allocator, sizeof(int32_t) * (size_t)n * 3);   /* (3, total) tokens, pos, seq */
    live = (int32_t *)te_llama__alloc(&m->allocator, sizeof(int32_t) * (size_t)n_seq);     /* (n_seq) running sequences */
    rng = (uint64_t *)te_llama__alloc(&m->allocator, sizeof(uint64_t) * (size_t)n_seq);    /* (n_seq) */
    want = (uint8_t *)te_llama__calloc(&m->allocator, (size_t)n);                          /* (total) */
    logits = (float *)te_llama__alloc(&m->allocator, sizeof(float) * (size_t)logit_floats); /* (n_seq, vocab) */
    if (!tokens || !live || !rng || !want || !logits) { r = te_llama__fail(TE_LLAMA_ERR_NOMEM, "te_llama_generate_batch: buffers for %d sequences", n_seq); goto done; }
    pos = tokens + n;
    seq = pos + n;
    /* prefill: every prompt in one forward, logits of each prompt's last token (rows in sequence order) */
    for (s = 0, j = 0; s < n_seq; s++) {
        for (i = 0; i < n_prompt[s]; i++, j++) { tokens[j] = prompts[s][i]; pos[j] = i; seq[j] = s; }
        want[j - 1] = 1;
        live[s] = s;
        rng[s] = te_llama__seed_rng(g.sampler.seed + (uint64_t)s);
    }
    memset(&batch, 0, sizeof batch);
    batch.n_tokens = n;
    batch.tokens = tokens;
    batch.pos = pos;
    batch.seq = seq;
    batch.want_logits = want;
    if ((r = te_llama_forward(m, cache, &batch, logits))) goto done;
    batch.want_logits = NULL;
    for (n_live = n_seq; n_live > 0;) {
        int still = 0;
        /* logits row j belongs to live[j]; the sequences that go on are compacted to the front in the same order */
        for (j = 0; j < n_live; j++) {
            int32_t token;
            int stop = 0;
            s = live[j];
            sampler.rng = rng[s];
            token = te_llama_sample(&sampler, logits + (size_t)j * (size_t)m->config.vocab_size);
            rng[s] = sampler.rng;
            out[(size_t)s * (size_t)cap + (size_t)n_out[s]++] = token;
            if (!g.ignore_eos)
                for (k = 0; k < m->n_eos_token_ids; k++) stop |= token == m->eos_token_ids[k];
            if (stop || n_out[s] == limit) continue;
            live[still] = s;
            tokens[still] = token;
            pos[still] = n_prompt[s] + n_out[s] - 1;
            seq[still] = s;
            still++;
        }
        n_live = still;
        if (!n_live) break;
        batch.n_tokens = n_live;
        if ((r = te_llama_forward(m, cache, &batch, logits))) break;
    }
done:
    te_llama__free(&m->allocator, logits);
    te_llama__free(&m->allocator, want);
    te_llama__free(&m->allocator, rng);
    te_llama__free(&m->allocator, live);
    te_llama__free(&m->allocator, tokens);
    te_llama_kv_cache_free(cache);
    te_llama_sampler_free(&sampler);
    return r;
}

/* -------------------------------------------------------------------------------------------------- training */
/* The training pass is the CPU reference for the backward, in fp32 like the forward above; it shares its dot
   product, RMSNorm arithmetic, rotation tables and SwiGLU, but works on fp32 copies of the weights laid out in
   parameter enumeration order. In that order a layer's q, k, v rows and its gate, up rows are consecutive, so
   both layer kinds become the same fused matrices: one code path, whichever factory built the model. */

/* C (M, N) = A (M, K) B (N, K)^T, or C += when accumulate. Blocks of 64 rows of B stay in cache across A. */
static void te_llama__gemm_nt(float *C, const float *A, const float *B, int M, int N, int K, int accumulate) {
    int j0, i, j;
    for (j0 = 0; j0 < N; j0 += 64) {
        int j1 = j0 + 64 < N ? j0 + 64 : N;
        for (i = 0; i < M; i++) {
            const float *a = A + (size_t)i * K;
            float *c = C + (size_t)i * N;
            for (j = j0; j < j1; j++) {
                float s = te_llama__dot(a, B + (size_t)j * K, K);
                c[j] = accumulate ? c[j] + s : s;
            }
        }
    }
}

static void te_llama__transpose(float *out, const float *in, int rows, int cols) {
    int r0, r, c;
    for (r0 = 0; r0 < rows; r0 += 32)
        for (c = 0; c < cols; c++)
            for (r = r0; r < rows && r < r0 + 32; r++) out[(size_t)c * rows + r] = in[(size_t)r * cols + c];
}

/* Backward of out (n, rows) = x (n, cols) W^T: dx = dout W (overwritten), dW += dout^T x. Both as gemm_nt on
   transposed copies; scratch holds max(rows cols, n rows) + n cols floats. */
static void te_llama__linear_back(float *dx, float *dW, const float *dout, const float *x, const float *W, int n,
                                  int rows, int cols, float *scratch) {
    size_t a = (size_t)rows * cols > (size_t)n * rows ? (size_t)rows * cols : (size_t)n * rows;
    float *t1 = scratch, *t2 = scratch + a;
    te_llama__transpose(t1, W, rows, cols); /* (cols, rows) */
    te_llama__gemm_nt(dx, dout, t1, n, cols, rows, 0);
    te_llama__transpose(t1, dout, n, rows); /* (rows, n) */
    te_llama__transpose(t2, x, n, cols);    /* (cols, n) */
    te_llama__gemm_nt(dW, t1, t2, rows, cols, n, 1);
}

/* te_llama__rmsnorm on fp32 weights, returning 1 / rms for the backward. */
static float te_llama__rmsnorm_f(float *out, const float *x, const float *w, int n, double eps) {
    double ss = 0;
    float inv;
    int i;
    for (i = 0; i < n; i++) ss += (double)x[i] * x[i];
    inv = (float)(1.0 / sqrt(ss / n + eps));
    for (i = 0; i < n; i++) out[i] = w[i] * (x[i] * inv);
    return inv;
}

/* y = w x inv, inv = (mean(x^2) + eps)^-1/2: dx += w dy inv - x inv^3 sum(w dy x) / n; dw += dy x inv. */
static void te_llama__rmsnorm_back(float *dx, float *dw, const float *dy, const float *x, float inv, const float *w,
                                   int n) {
    double s = 0;
    float k;
    int i;
    for (i = 0; i < n; i++) s += (double)w[i] * dy[i] * x[i];
    k = (float)((double)inv * inv * inv * s / n);
    for (i = 0; i < n; i++) {
        dx[i] += w[i] * dy[i] * inv - k * x[i];
        dw[i] += dy[i] * x[i] * inv;
    }
}

/* The transpose of te_llama__rope: rotate back by the same angle. */
static void te_llama__rope_back(float *d, int half, const float *cs, const float *sn) {
    int i;
    for (i = 0; i < half; i++) {
        float a = d[i], b = d[i + half];
        d[i] = a * cs[i] + b * sn[i];
        d[i + half] = b * cs[i] - a * sn[i];
    }
}

/* One layer's fp32 weights (or their gradients) in the training pass. */
typedef struct te_llama__tw {
    float *ln1;  /* (hidden) */
    float *qkv;  /* (q_dim + 2 kv_dim, hidden) */
    float *proj; /* (hidden, q_dim) */
    float *ln2;  /* (hidden) */
    float *fc1;  /* (2 intermediate, hidden) gate rows, then up rows */
    float *fc2;  /* (hidden, intermediate) */
} te_llama__tw;

/* What the training forward keeps of one layer; n = B T tokens. */
typedef struct te_llama__act {
    float *x;    /* (n, hidden) the layer's input residual stream */
    float *inv1; /* (n) 1 / rms of x */
    float *xn1;  /* (n, hidden) */
    float *qkv;  /* (n, q_dim + 2 kv_dim) q and k rotated */
    float *prob; /* (B, heads, T, T) attention probabilities, zero above the diagonal */
    float *att;  /* (n, q_dim) */
    float *xmid; /* (n, hidden) residual stream after attention */
    float *inv2; /* (n) */
    float *xn2;  /* (n, hidden) */
    float *fc1;  /* (n, 2 intermediate) gate then up, before the activation */
    float *act;  /* (n, intermediate) silu(gate) * up */
} te_llama__act;

/* The position of parameter `slot` of each layer's six weights in the enumeration, relative to the layer's first
   parameter: ln1, qkv (first of q, k, v), proj, ln2, fc1 (first of gate, up or the fused fc1), fc2. */
static te_llama_result te_llama__train_slots(te_llama_model *m, int l, int slot[6]) {
    static const int te[6] = {0, 1, 4, 5, 6, 7}, vanilla[6] = {0, 1, 4, 5, 6, 8};
    const te_llama_config *c = &m->config;
    te_llama_layer *L = m->layers[l];
    const int *s;
    size_t h = (size_t)c->hidden_size, q = (size_t)c->num_attention_heads * c->head_dim;
    size_t kv = (size_t)c->num_key_value_heads * c->head_dim, I = (size_t)c->intermediate_size;
    size_t want[6], got[6] = {0, 0, 0, 0, 0, 0};
    int k, i;
    if (L->kind && strcmp(L->kind, "te") == 0 && L->n_params == 8) s = te;
    else if (L->kind && strcmp(L->kind, "vanilla") == 0 && L->n_params == 9) s = vanilla;
    else return te_llama__fail(TE_LLAMA_ERR_UNSUPPORTED, "training layer %d of kind \"%s\" (only te and vanilla train)", l, L->kind ? L->kind : "");
    want[0] = h; want[1] = (q + 2 * kv) * h; want[2] = h * q; want[3] = h; want[4] = 2 * I * h; want[5] = h * I;
    for (k = 0; k < 6; k++) {
        int end = k < 5 ? s[k + 1] : L->n_params;
        for (i = s[k]; i < end; i++) {
            if (L->params[i].on_device && m->options.backend != TE_LLAMA_BACKEND_CUDA)
                return te_llama__fail(TE_LLAMA_ERR_UNSUPPORTED, "training %s: parameters on the device of a CPU model", L->params[i].name);
            got[k] += te_llama_param_numel(&L->params[i]);
        }
        if (got[k] != want[k]) return te_llama__fail(TE_LLAMA_ERR_UNSUPPORTED, "training layer %d: weight %d has %zu values, expected %zu", l, k, got[k], want[k]);
        slot[k] = s[k];
    }
    return TE_LLAMA_OK;
}

/* Offsets of every parameter in an fp32 array in enumeration order; checks the layers can train (on CUDA the
   device side checks the rest: te layers, BF16, head dims). */
static te_llama_result te_llama__train_offsets(te_llama_model *m, size_t *off) {
    int i, l, slot[6], n = te_llama_num_parameters(m), cuda = m->options.backend == TE_LLAMA_BACKEND_CUDA;
    te_llama_result r;
    if (cuda != (m->embed_tokens.on_device != 0)) return te_llama__fail(TE_LLAMA_ERR_UNSUPPORTED, "training: the embedding is not where the backend keeps parameters");
    for (l = 0; l < m->config.num_hidden_layers; l++)
        if ((r = te_llama__train_slots(m, l, slot))) return r;
    off[0] = 0;
    for (i = 0; i < n; i++) off[i + 1] = off[i] + te_llama_param_numel(te_llama_parameter(m, i));
    if (!cuda && off[n] > ((size_t)1 << 36)) return te_llama__fail(TE_LLAMA_ERR_OUT_OF_RANGE, "%zu parameters are too many to train on the CPU", off[n]);
    return TE_LLAMA_OK;
}

/* Check a batch; *count gets the labels that count. */
static te_llama_result te_llama__train_batch(const te_llama_model *m, const int32_t *tokens, const int32_t *labels,
                                             int B, int T, int64_t *count) {
    int64_t i, n;
    int b, t, V = m->config.vocab_size;
    if (!tokens || B < 1 || T < 1 || (int64_t)B * T > ((int64_t)1 << 24))
        return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "training batch of %d x %d tokens", B, T);
    if (T > m->config.max_position_embeddings)
        return te_llama__fail(TE_LLAMA_ERR_OUT_OF_RANGE, "sequences of %d tokens exceed max_position_embeddings %d", T, m->config.max_position_embeddings);
    n = (int64_t)B * T;
    for (i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= V) return te_llama__fail(TE_LLAMA_ERR_OUT_OF_RANGE, "token %d at %lld is outside the vocabulary of %d", tokens[i], (long long)i, V);
    if (!labels) labels = tokens;
    *count = 0;
    for (b = 0; b < B; b++)
        for (t = 1; t < T; t++) {
            int32_t y = labels[(size_t)b * T + t];
            if (y == TE_LLAMA_IGNORE_INDEX) continue;
            if (y < 0 || y >= V) return te_llama__fail(TE_LLAMA_ERR_OUT_OF_RANGE, "label %d at (%d, %d) is outside the vocabulary of %d", y, b, t, V);
            ++*count;
        }
    return TE_LLAMA_OK;
}

static void te_llama__train_layer_fwd(const te_llama_config *c, const te_llama__tw *w, te_llama__act *a, float *xout,
                                      int B, int T, const float *rcos, const float *rsin) {
    int n = B * T, h = c->hidden_size, hd = c->head_dim, half = hd / 2, I = c->intermediate_size;
    int nh = c->num_attention_heads, nkv = c->num_key_value_heads, q_dim = nh * hd, kv_dim = nkv * hd;
    int ld = q_dim + 2 * kv_dim, group = nh / nkv, t, k, b, hh, j, d;
    float scale = 1.0f / sqrtf((float)hd);
    for (t = 0; t < n; t++) a->inv1[t] = te_llama__rmsnorm_f(a->xn1 + (size_t)t * h, a->x + (size_t)t * h, w->ln1, h, c->rms_norm_eps);
    te_llama__gemm_nt(a->qkv, a->xn1, w->qkv, n, ld, h, 0);
    for (t = 0; t < n; t++) {
        float *row = a->qkv + (size_t)t * ld;
        const float *cs = rcos + (size_t)(t % T) * half, *sn = rsin + (size_t)(t % T) * half;
        for (hh = 0; hh < nh + nkv; hh++) te_llama__rope(row + hh * hd, half, cs, sn); /* q heads, then k heads */
    }
    for (b = 0; b < B; b++)
        for (hh = 0; hh < nh; hh++)
            for (t = 0; t < T; t++) {
                const float *qh = a->qkv + (size_t)(b * T + t) * ld + hh * hd;
                float *p = a->prob + (((size_t)b * nh + hh) * T + t) * T, mx = -INFINITY, sum = 0;
                float *out = a->att + (size_t)(b * T + t) * q_dim + hh * hd;
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
    te_llama__gemm_nt(a->xmid, a->att, w->proj, n, h, q_dim, 0);
    for (k = 0; k < n * h; k++) a->xmid[k] += a->x[k];
    for (t = 0; t < n; t++) a->inv2[t] = te_llama__rmsnorm_f(a->xn2 + (size_t)t * h, a->xmid + (size_t)t * h, w->ln2, h, c->rms_norm_eps);
    te_llama__gemm_nt(a->fc1, a->xn2, w->fc1, n, 2 * I, h, 0);
    for (t = 0; t < n; t++) {
        const float *g = a->fc1 + (size_t)t * 2 * I, *u = g + I;
        float *o = a->act + (size_t)t * I;
        for (k = 0; k < I; k++) o[k] = g[k] / (1.0f + expf(-g[k])) * u[k];
    }
    te_llama__gemm_nt(xout, a->act, w->fc2, n, h, I, 0);
    for (k = 0; k < n * h; k++) xout[k] += a->xmid[k];
}

/* Gradient buffers of the layer backward. */
typedef struct te_llama__grad_work {
    float *dxn;     /* (n, hidden) */
    float *dqkv;    /* (n, q_dim + 2 kv_dim) */
    float *datt;    /* (n, q_dim) */
    float *dfc1;    /* (n, 2 intermediate) */
    float *dact;    /* (n, intermediate) */
    float *dp;      /* (T) */
    float *scratch; /* for te_llama__linear_back */
} te_llama__grad_work;

/* dx: (n, hidden) the gradient at the layer's output on entry, at its input on return. */
static void te_llama__train_layer_back(const te_llama_config *c, const te_llama__tw *w, const te_llama__tw *g,
                                       const te_llama__act *a, float *dx, const te_llama__grad_work *s, int B, int T,
                                       const float *rcos, const float *rsin) {
    int n = B * T, h = c->hidden_size, hd = c->head_dim, half = hd / 2, I = c->intermediate_size;
    int nh = c->num_attention_heads, nkv = c->num_key_value_heads, q_dim = nh * hd, kv_dim = nkv * hd;
    int ld = q_dim + 2 * kv_dim, group = nh / nkv, t, k, b, hh, j, d;
    float scale = 1.0f / sqrtf((float)hd);
    /* MLP block: the residual passes dx through; fc2, SwiGLU, fc1, RMSNorm add the rest */
    te_llama__linear_back(s->dact, g->fc2, dx, a->act, w->fc2, n, h, I, s->scratch);
    for (t = 0; t < n; t++) {
        const float *gt = a->fc1 + (size_t)t * 2 * I, *u = gt + I, *da = s->dact + (size_t)t * I;
        float *dg = s->dfc1 + (size_t)t * 2 * I, *du = dg + I;
        for (k = 0; k < I; k++) {
            float sg = 1.0f / (1.0f + expf(-gt[k]));
            du[k] = da[k] * gt[k] * sg;
            dg[k] = da[k] * u[k] * sg * (1.0f + gt[k] * (1.0f - sg));
        }
    }
    te_llama__linear_back(s->dxn, g->fc1, s->dfc1, a->xn2, w->fc1, n, 2 * I, h, s->scratch);
    for (t = 0; t < n; t++)
        te_llama__rmsnorm_back(dx + (size_t)t * h, g->ln2, s->dxn + (size_t)t * h, a->xmid + (size_t)t * h, a->inv2[t], w->ln2, h);
    /* attention block */
    te_llama__linear_back(s->datt, g->proj, dx, a->att, w->proj, n, h, q_dim, s->scratch);
    memset(s->dqkv, 0, sizeof(float) * (size_t)n * ld);
    for (b = 0; b < B; b++)
        for (hh = 0; hh < nh; hh++)
            for (t = 0; t < T; t++) {
                const float *p = a->prob + (((size_t)b * nh + hh) * T + t) * T;
                const float *qh = a->qkv + (size_t)(b * T + t) * ld + hh * hd, *dout = s->datt + (size_t)(b * T + t) * q_dim + hh * hd;
                float *dq = s->dqkv + (size_t)(b * T + t) * ld + hh * hd, sum = 0;
                size_t koff = (size_t)q_dim + (size_t)(hh / group) * hd, voff = koff + kv_dim;
                for (j = 0; j <= t; j++) { /* out = sum_j p_j v_j */
                    float *dv = s->dqkv + (size_t)(b * T + j) * ld + voff;
                    s->dp[j] = te_llama__dot(dout, a->qkv + (size_t)(b * T + j) * ld + voff, hd);
                    sum += p[j] * s->dp[j];
                    for (d = 0; d < hd; d++) dv[d] += p[j] * dout[d];
                }
                for (j = 0; j <= t; j++) { /* through the softmax and the scaled dot product */
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
    te_llama__linear_back(s->dxn, g->qkv, s->dqkv, a->xn1, w->qkv, n, ld, h, s->scratch);
    for (t = 0; t < n; t++)
        te_llama__rmsnorm_back(dx + (size_t)t * h, g->ln1, s->dxn + (size_t)t * h, a->x + (size_t)t * h, a->inv1[t], w->ln1, h);
}

/* Forward, loss and (when G) backward over B sequences of T tokens. W, G: (n_params) fp32 weights and gradients
   per parameter. *loss_sum gets the summed token loss; gradients get d(loss_sum)/dW times grad_scale. */
static te_llama_result te_llama__train_pass(te_llama_model *m, float *const *W, float *const *G, const int32_t *tokens,
                                            const int32_t *labels, int B, int T, float grad_scale, double *loss_sum) {
    const te_llama_config *c = &m->config;
    int n = B * T, h = c->hidden_size, hd = c->head_dim, half = hd / 2, I = c->intermediate_size, V = c->vocab_size;
    int L = c->num_hidden_layers, nh = c->num_attention_heads, q_dim = nh * hd;
    int ld = q_dim + 2 * c->num_key_value_heads * hd, np = te_llama_num_parameters(m), lm = c->tie_word_embeddings ? 0 : np - 1;
    size_t per_layer = (size_t)n * (4 * (size_t)h + 2 + (size_t)ld + (size_t)q_dim + 3 * (size_t)I) + (size_t)B * nh * T * T;
    size_t widest = (size_t)(h > ld ? h : ld), max_w, total, off = 0;
    float *base, *rcos, *rsin, *xf, *invf, *logits, *dx;
    te_llama__act *acts;
    te_llama__grad_work gw;
    int l, t, i, pidx = 1;
    double sum = 0;
    if ((size_t)V > widest) widest = (size_t)V;
    if ((size_t)2 * I > widest) widest = (size_t)2 * I;
    if ((size_t)q_dim > widest) widest = (size_t)q_dim;
    max_w = (size_t)V * h; /* the largest weight matrix */
    if ((size_t)ld * h > max_w) max_w = (size_t)ld * h;
    if ((size_t)2 * I * h > max_w) max_w = (size_t)2 * I * h;
    if ((size_t)q_dim * h > max_w) max_w = (size_t)q_dim * h;
    total = (size_t)T * half * 2 + per_layer * L + (size_t)n * (2 * (size_t)h + 1 + (size_t)V);
    if (G) total += (size_t)n * (2 * (size_t)h + (size_t)ld + (size_t)q_dim + 3 * (size_t)I) + (size_t)T + max_w + 2 * (size_t)n * widest;
    base = (float *)te_llama__alloc(&m->allocator, sizeof(float) * total);
    acts = (te_llama__act *)te_llama__alloc(&m->allocator, sizeof(te_llama__act) * (size_t)(L ? L : 1));
    if (!base || !acts) {
        te_llama__free(&m->allocator, base);
        te_llama__free(&m->allocator, acts);
        return te_llama__fail(TE_LLAMA_ERR_NOMEM, "training pass of %d x %d tokens (%zu floats)", B, T, total);
    }
#define TE_LLAMA__TAKE(count) (off += (count), base + off - (count))
    rcos = TE_LLAMA__TAKE((size_t)T * half);
    rsin = TE_LLAMA__TAKE((size_t)T * half);
    for (l = 0; l < L; l++) {
        te_llama__act *a = &acts[l];
        a->x = TE_LLAMA__TAKE((size_t)n * h);
        a->inv1 = TE_LLAMA__TAKE((size_t)n);
        a->xn1 = TE_LLAMA__TAKE((size_t)n * h);
        a->qkv = TE_LLAMA__TAKE((size_t)n * ld);
        a->prob = TE_LLAMA__TAKE((size_t)B * nh * T * T);
        a->att = TE_LLAMA__TAKE((size_t)n * q_dim);
        a->xmid = TE_LLAMA__TAKE((size_t)n * h);
        a->inv2 = TE_LLAMA__TAKE((size_t)n);
        a->xn2 = TE_LLAMA__TAKE((size_t)n * h);
        a->fc1 = TE_LLAMA__TAKE((size_t)n * 2 * I);
        a->act = TE_LLAMA__TAKE((size_t)n * I);
    }
    dx = TE_LLAMA__TAKE((size_t)n * h); /* the last layer's output, then its gradient */
    xf = TE_LLAMA__TAKE((size_t)n * h);
    invf = TE_LLAMA__TAKE((size_t)n);
    logits = TE_LLAMA__TAKE((size_t)n * V);
    memset(&gw, 0, sizeof gw);
    if (G) {
        gw.dxn = TE_LLAMA__TAKE((size_t)n * h);
        gw.dqkv = TE_LLAMA__TAKE((size_t)n * ld);
        gw.datt = TE_LLAMA__TAKE((size_t)n * q_dim);
        gw.dfc1 = TE_LLAMA__TAKE((size_t)n * 2 * I);
        gw.dact = TE_LLAMA__TAKE((size_t)n * I);
        gw.dp = TE_LLAMA__TAKE((size_t)T);
        gw.scratch = TE_LLAMA__TAKE(max_w + 2 * (size_t)n * widest);
    }
#undef TE_LLAMA__TAKE
    for (t = 0; t < T; t++) /* as te_llama_forward: float32 angle = position x inv_freq */
        for (i = 0; i < half; i++) {
            float angle = (float)t * m->rope_inv_freq[i];
            rcos[(size_t)t * half + i] = (float)cos((double)angle);
            rsin[(size_t)t * half + i] = (float)sin((double)angle);
        }
    for (t = 0; t < n; t++) memcpy((L ? acts[0].x : dx) + (size_t)t * h, W[0] + (size_t)tokens[t] * h, sizeof(float) * (size_t)h);
    for (l = 0; l < L; l++) {
        te_llama__tw w;
        int s[6];
        te_llama__train_slots(m, l, s); /* checked when the offsets were made */
        w.ln1 = W[pidx + s[0]]; w.qkv = W[pidx + s[1]]; w.proj = W[pidx + s[2]];
        w.ln2 = W[pidx + s[3]]; w.fc1 = W[pidx + s[4]]; w.fc2 = W[pidx + s[5]];
        te_llama__train_layer_fwd(c, &w, &acts[l], l + 1 < L ? acts[l + 1].x : dx, B, T, rcos, rsin);
        pidx += m->layers[l]->n_params;
    }
    for (t = 0; t < n; t++) invf[t] = te_llama__rmsnorm_f(xf + (size_t)t * h, dx + (size_t)t * h, W[pidx], h, c->rms_norm_eps);
    te_llama__gemm_nt(logits, xf, W[lm], n, V, h, 0);
    if (!labels) labels = tokens;
    for (t = 0; t < n; t++) { /* cross-entropy of position t against the next label of its sequence */
        float *row = logits + (size_t)t * V;
        int32_t y = (t % T) + 1 < T ? labels[t + 1] : TE_LLAMA_IGNORE_INDEX;
        double mx = -INFINITY, z = 0;
        if (y == TE_LLAMA_IGNORE_INDEX) { memset(row, 0, sizeof(float) * (size_t)V); continue; }
        for (i = 0; i < V; i++) if (row[i] > mx) mx = row[i];
        for (i = 0; i < V; i++) z += exp((double)row[i] - mx);
        sum += mx + log(z) - row[y];
        if (G) { /* d loss / d logits = softmax - onehot */
            for (i = 0; i < V; i++) row[i] = (float)(exp((double)row[i] - mx) / z) * grad_scale;
            row[y] -= grad_scale;
        }
    }
    *loss_sum = sum;
    if (G) {
        float *dnorm = G[pidx];
        te_llama__linear_back(gw.dxn, G[lm], logits, xf, W[lm], n, V, h, gw.scratch);
        /* dx holds the last layer's output, the final norm's input: move it to xf (done with) and let dx hold
           the gradient of the residual stream from here down */
        memcpy(xf, dx, sizeof(float) * (size_t)n * h);
        memset(dx, 0, sizeof(float) * (size_t)n * h);
        for (t = 0; t < n; t++)
            te_llama__rmsnorm_back(dx + (size_t)t * h, dnorm, gw.dxn + (size_t)t * h, xf + (size_t)t * h, invf[t], W[pidx], h);
        for (l = L - 1; l >= 0; l--) {
            te_llama__tw w, g;
            int s[6];
            pidx -= m->layers[l]->n_params;
            te_llama__train_slots(m, l, s);
            w.ln1 = W[pidx + s[0]]; w.qkv = W[pidx + s[1]]; w.proj = W[pidx + s[2]];
            w.ln2 = W[pidx + s[3]]; w.fc1 = W[pidx + s[4]]; w.fc2 = W[pidx + s[5]];
            g.ln1 = G[pidx + s[0]]; g.qkv = G[pidx + s[1]]; g.proj = G[pidx + s[2]];
            g.ln2 = G[pidx + s[3]]; g.fc1 = G[pidx + s[4]]; g.fc2 = G[pidx + s[5]];
            te_llama__train_layer_back(c, &w, &g, &acts[l], dx, &gw, B, T, rcos, rsin);
        }
        for (t = 0; t < n; t++) { /* the embedding: a row gather, so a row scatter-add */
            float *ge = G[0] + (size_t)tokens[t] * h;
            const float *d = dx + (size_t)t * h;
            for (i = 0; i < h; i++) ge[i] += d[i];
        }
    }
    te_llama__free(&m->allocator, acts);
    te_llama__free(&m->allocator, base);
    return TE_LLAMA_OK;
}

static void te_llama__train_defaults(te_llama_train_options *o, const te_llama_train_options *in) {
    memset(o, 0, sizeof *o);
    if (in) *o = *in;
    if (o->lr == 0) o->lr = 3e-4f;
    if (o->beta1 == 0) o->beta1 = 0.9f;
    if (o->beta2 == 0) o->beta2 = 0.999f;
    if (o->eps == 0) o->eps = 1e-8f;
    if (o->weight_decay == 0) o->weight_decay = 0.01f;
    if (o->weight_decay < 0) o->weight_decay = 0;
    if (o->clip_norm == 0) o->clip_norm = 1.0f;
    if (o->clip_norm < 0) o->clip_norm = -1.0f; /* off */
    if (o->min_lr_ratio == 0) o->min_lr_ratio = 0.1f;
    if (o->min_lr_ratio < 0) o->min_lr_ratio = 0;
    if (o->grad_accum <= 0) o->grad_accum = 1;
    if (o->warmup_steps < 0) o->warmup_steps = 0;
    if (o->total_steps < 0) o->total_steps = 0;
}

TE_LLAMA_API double te_llama_train_lr(const te_llama_train_options *options, int64_t step) {
    te_llama_train_options o;
    te_llama__train_defaults(&o, options);
    if (step < o.warmup_steps) return (double)o.lr * (double)(step + 1) / (double)o.warmup_steps;
    if (o.total_steps > o.warmup_steps) {
        double p = (double)(step - o.warmup_steps) / (double)(o.total_steps - o.warmup_steps);
        if (p > 1) p = 1;
        return (double)o.lr * (o.min_lr_ratio + (1.0 - o.min_lr_ratio) * 0.5 * (1.0 + cos(3.14159265358979323846 * p)));
    }
    return o.lr;
}

/* Parameter i's fp32 values into dst (its stored values), or dst's values into its storage, rounded. */
static te_llama_result te_llama__param_f32(te_llama_param *p, float *dst, int store) {
    if (store) return te_llama_convert(p->data, p->dtype, dst, TE_LLAMA_F32, te_llama_param_numel(p));
    return te_llama_convert(dst, TE_LLAMA_F32, p->data, p->dtype, te_llama_param_numel(p));
}

TE_LLAMA_API te_llama_result te_llama_trainer_create(te_llama_model *m, const te_llama_train_options *options,
                                                     te_llama_trainer **out) {
    te_llama_trainer *tr;
    te_llama_result r;
    size_t N;
    int i, all_f32 = 1;
    if (!m || !out) return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_trainer_create: NULL");
    *out = NULL;
    tr = (te_llama_trainer *)te_llama__calloc(&m->allocator, sizeof *tr);
    if (!tr) return te_llama__fail(TE_LLAMA_ERR_NOMEM, "trainer");
    tr->allocator = m->allocator;
    tr->model = m;
    te_llama__train_defaults(&tr->options, options);
    tr->n_params = te_llama_num_parameters(m);
    tr->offset = (size_t *)te_llama__alloc(&tr->allocator, sizeof(size_t) * (size_t)(tr->n_params + 1));
    if (!tr->offset) { r = te_llama__fail(TE_LLAMA_ERR_NOMEM, "trainer"); goto fail; }
    if ((r = te_llama__train_offsets(m, tr->offset))) goto fail;
    N = tr->offset[tr->n_params];
#ifdef TE_LLAMA_CUDA
    if (m->options.backend == TE_LLAMA_BACKEND_CUDA) { /* the state lives on the device */
        if ((r = te_llama_cuda_train_create(tr))) goto fail;
        *out = tr;
        return TE_LLAMA_OK;
    }
#endif
    for (i = 0; i < tr->n_params; i++) all_f32 &= te_llama_parameter(m, i)->dtype == TE_LLAMA_F32;
    tr->master = (float *)te_llama__alloc(&tr->allocator, sizeof(float) * N);
    tr->weights = all_f32 ? tr->master : (float *)te_llama__alloc(&tr->allocator, sizeof(float) * N);
    tr->grad = (float *)te_llama__calloc(&tr->allocator, sizeof(float) * N);
    tr->exp_avg = (float *)te_llama__calloc(&tr->allocator, sizeof(float) * N);
    tr->exp_avg_sq = (float *)te_llama__calloc(&tr->allocator, sizeof(float) * N);
    if (!tr->master || !tr->weights || !tr->grad || !tr->exp_avg || !tr->exp_avg_sq) {
        r = te_llama__fail(TE_LLAMA_ERR_NOMEM, "trainer state: 5 x %zu floats", N);
        goto fail;
    }
    for (i = 0; i < tr->n_params; i++) {
        if ((r = te_llama__param_f32(te_llama_parameter(m, i), tr->master + tr->offset[i], 0))) goto fail;
        if (!all_f32) memcpy(tr->weights + tr->offset[i], tr->master + tr->offset[i], sizeof(float) * (tr->offset[i + 1] - tr->offset[i]));
    }
    *out = tr;
    return TE_LLAMA_OK;
fail:
    te_llama_trainer_free(tr);
    return r;
}

TE_LLAMA_API void te_llama_trainer_free(te_llama_trainer *tr) {
    te_llama_allocator a;
    if (!tr) return;
    a = tr->allocator;
#ifdef TE_LLAMA_CUDA
    te_llama_cuda_train_free(tr);
#endif
    if (tr->weights != tr->master) te_llama__free(&a, tr->weights);
    te_llama__free(&a, tr->master);
    te_llama__free(&a, tr->grad);
    te_llama__free(&a, tr->exp_avg);
    te_llama__free(&a, tr->exp_avg_sq);
    te_llama__free(&a, tr->offset);
    te_llama__free(&a, tr);
}

TE_LLAMA_API float *te_llama_trainer_grad(te_llama_trainer *tr, int i) {
    if (!tr || i < 0 || i >= tr->n_params) return NULL;
#ifdef TE_LLAMA_CUDA
    if (tr->device) { /* a host copy, made now */
        if (!tr->grad) tr->grad = (float *)te_llama__alloc(&tr->allocator, sizeof(float) * tr->offset[tr->n_params]);
        if (!tr->grad) { te_llama__fail(TE_LLAMA_ERR_NOMEM, "host copy of the gradients (%zu floats)", tr->offset[tr->n_params]); return NULL; }
        if (te_llama_cuda_train_copy(tr, TE_LLAMA_TRAIN_GRAD, i, tr->grad, 0)) return NULL;
    }
#endif
    return tr->grad + tr->offset[i];
}

/* Per-parameter pointers into an fp32 array in enumeration order. */
static float **te_llama__train_ptrs(const te_llama_allocator *a, float *arena, const size_t *off, int n) {
    float **p = (float **)te_llama__alloc(a, sizeof(float *) * (size_t)n);
    int i;
    if (p) for (i = 0; i < n; i++) p[i] = arena + off[i];
    return p;
}

TE_LLAMA_API te_llama_result te_llama_trainer_backward(te_llama_trainer *tr, const int32_t *tokens,
                                                       const int32_t *labels, int B, int T, double *loss) {
    float **W, **G;
    int64_t count, total;
    double sum = 0;
    size_t k, N;
    te_llama_result r;
    if (!tr) return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_trainer_backward: NULL trainer");
    if ((r = te_llama__train_batch(tr->model, tokens, labels, B, T, &count))) return r;
    total = tr->n_labels + count;
    N = tr->offset[tr->n_params];
#ifdef TE_LLAMA_CUDA
    if (tr->device) {
        float keep = tr->n_labels > 0 && count > 0 ? (float)((double)tr->n_labels / (double)total) : 1.0f;
        if ((r = te_llama_cuda_train_pass(tr->model, tr, tokens, labels, B, T, keep, total > 0 ? (float)(1.0 / (double)total) : 0.0f, &sum)))
            return r;
        tr->n_labels = total;
        tr->loss_sum += sum;
        tr->micro++;
        if (loss) *loss = count ? sum / (double)count : 0.0;
        return TE_LLAMA_OK;
    }
#endif
    if (tr->n_labels > 0 && count > 0) { /* grad holds the mean over n_labels: make it the mean over total */
        float keep = (float)((double)tr->n_labels / (double)total);
        for (k = 0; k < N; k++) tr->grad[k] *= keep;
    }
    W = te_llama__train_ptrs(&tr->allocator, tr->weights, tr->offset, tr->n_params);
    G = te_llama__train_ptrs(&tr->allocator, tr->grad, tr->offset, tr->n_params);
    if (!W || !G) r = te_llama__fail(TE_LLAMA_ERR_NOMEM, "trainer pointers");
    else r = te_llama__train_pass(tr->model, W, G, tokens, labels, B, T, total > 0 ? (float)(1.0 / (double)total) : 0.0f, &sum);
    te_llama__free(&tr->allocator, W);
    te_llama__free(&tr->allocator, G);
    if (r) return r;
    tr->n_labels = total;
    tr->loss_sum += sum;
    tr->micro++;
    if (loss) *loss = count ? sum / (double)count : 0.0;
    return TE_LLAMA_OK;
}

TE_LLAMA_API te_llama_result te_llama_trainer_update(te_llama_trainer *tr) {
    const te_llama_train_options *o;
    double norm = 0, lr, bc1, bc2_sqrt, step_size;
    size_t k, N;
    int i;
    te_llama_result r = TE_LLAMA_OK;
    if (!tr) return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_trainer_update: NULL trainer");
    o = &tr->options;
    N = tr->offset[tr->n_params];
#ifdef TE_LLAMA_CUDA
    if (tr->device) {
        lr = te_llama_train_lr(o, tr->step);
        tr->step++;
        r = te_llama_cuda_train_update(tr, lr, &norm);
        tr->last_loss = tr->n_labels ? tr->loss_sum / (double)tr->n_labels : 0.0;
        tr->last_grad_norm = norm;
        tr->last_lr = lr;
        tr->n_labels = 0;
        tr->loss_sum = 0;
        tr->micro = 0;
        return r;
    }
#endif
    for (k = 0; k < N; k++) norm += (double)tr->grad[k] * tr->grad[k];
    norm = sqrt(norm);
    if (o->clip_norm > 0) { /* torch.nn.utils.clip_grad_norm_ */
        float coef = (float)(o->clip_norm / (norm + 1e-6));
        if (coef < 1.0f) for (k = 0; k < N; k++) tr->grad[k] *= coef;
    }
    lr = te_llama_train_lr(o, tr->step);
    tr->step++;
    bc1 = 1.0 - pow((double)o->beta1, (double)tr->step);
    bc2_sqrt = sqrt(1.0 - pow((double)o->beta2, (double)tr->step));
    step_size = lr / bc1;
    for (i = 0; i < tr->n_params && !r; i++) { /* torch.optim.AdamW, single-tensor path */
        te_llama_param *p = te_llama_parameter(tr->model, i);
        float decay = p->ndim == 2 ? (float)(1.0 - lr * o->weight_decay) : 1.0f;
        float b1 = o->beta1, b2 = o->beta2, eps = o->eps, ss = (float)step_size, bc2 = (float)bc2_sqrt;
        float *w = tr->master + tr->offset[i], *g = tr->grad + tr->offset[i];
        float *m1 = tr->exp_avg + tr->offset[i], *m2 = tr->exp_avg_sq + tr->offset[i];
        size_t n = tr->offset[i + 1] - tr->offset[i];
        for (k = 0; k < n; k++) {
            w[k] *= decay;
            m1[k] += (1.0f - b1) * (g[k] - m1[k]);
            m2[k] = m2[k] * b2 + (1.0f - b2) * g[k] * g[k];
            w[k] -= ss * m1[k] / (sqrtf(m2[k]) / bc2 + eps);
        }
        r = te_llama__param_f32(p, w, 1);
        if (!r && tr->weights != tr->master) r = te_llama__param_f32(p, tr->weights + tr->offset[i], 0);
    }
    if (!r && tr->model->fp8) r = te_llama_fp8_update_weights(tr->model);
    tr->last_loss = tr->n_labels ? tr->loss_sum / (double)tr->n_labels : 0.0;
    tr->last_grad_norm = norm;
    tr->last_lr = lr;
    memset(tr->grad, 0, sizeof(float) * N);
    tr->n_labels = 0;
    tr->loss_sum = 0;
    tr->micro = 0;
    return r;
}

TE_LLAMA_API te_llama_result te_llama_train_step(te_llama_trainer *tr, const int32_t *tokens, const int32_t *labels,
                                                 int B, int T, double *loss) {
    te_llama_result r = te_llama_trainer_backward(tr, tokens, labels, B, T, loss);
    if (r) return r;
    return tr->micro >= tr->options.grad_accum ? te_llama_trainer_update(tr) : TE_LLAMA_OK;
}

TE_LLAMA_API te_llama_result te_llama_eval_loss(te_llama_model *m, const int32_t *tokens, const int32_t *labels,
                                                int B, int T, double *loss) {
    size_t *off = NULL;
    float *arena = NULL, **W = NULL;
    int64_t count;
    double sum = 0;
    int i, n;
    te_llama_result r;
    if (!m || !loss) return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_eval_loss: NULL");
    if ((r = te_llama__train_batch(m, tokens, labels, B, T, &count))) return r;
    n = te_llama_num_parameters(m);
    off = (size_t *)te_llama__alloc(&m->allocator, sizeof(size_t) * (size_t)(n + 1));
    if (!off) return te_llama__fail(TE_LLAMA_ERR_NOMEM, "eval");
    if ((r = te_llama__train_offsets(m, off))) goto done;
#ifdef TE_LLAMA_CUDA
    if (m->options.backend == TE_LLAMA_BACKEND_CUDA) {
        r = te_llama_cuda_train_pass(m, NULL, tokens, labels, B, T, 1.0f, 0.0f, &sum);
        if (!r) *loss = count ? sum / (double)count : 0.0;
        goto done;
    }
#endif
    arena = (float *)te_llama__alloc(&m->allocator, sizeof(float) * off[n]);
    if (arena) W = te_llama__train_ptrs(&m->allocator, arena, off, n);
    if (!arena || !W) { r = te_llama__fail(TE_LLAMA_ERR_NOMEM, "eval: %zu floats of weights", off[n]); goto done; }
    for (i = 0; i < n && !r; i++) r = te_llama__param_f32(te_llama_parameter(m, i), W[i], 0);
    if (!r) r = te_llama__train_pass(m, W, NULL, tokens, labels, B, T, 0.0f, &sum);
    if (!r) *loss = count ? sum / (double)count : 0.0;
done:
    te_llama__free(&m->allocator, W);
    te_llama__free(&m->allocator, arena);
    te_llama__free(&m->allocator, off);
    return r;
}

/* The size of every HF tensor behind the parameters, in enumeration order (NULL out: just count them). */
static int te_llama__state_sizes(te_llama_trainer *tr, int64_t *out) {
    int i, s, n = 0;
    for (i = 0; i < tr->n_params; i++) {
        te_llama_param *p = te_llama_parameter(tr->model, i);
        for (s = 0; s < p->n_sources; s++, n++)
            if (out) out[n] = p->sources[s].n_rows * (p->ndim == 2 ? p->shape[1] : 1);
    }
    return n;
}

TE_LLAMA_API te_llama_result te_llama_trainer_save_state(te_llama_trainer *tr, const char *path) {
    te_llama_st_write_tensor t[5];
    int64_t shape_n, shape_p, shape_1 = 1, *numel;
    float *state[3], *host = NULL; /* exp_avg, exp_avg_sq, master; host: their copy from the device */
    int i;
    te_llama_result r = TE_LLAMA_OK;
    if (!tr || !path) return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_trainer_save_state: NULL");
    if (tr->micro) return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "saving optimizer state with %d micro-batches accumulated: save after an optimizer step", tr->micro);
    shape_p = te_llama__state_sizes(tr, NULL);
    numel = (int64_t *)te_llama__alloc(&tr->allocator, sizeof(int64_t) * (size_t)shape_p);
    if (!numel) return te_llama__fail(TE_LLAMA_ERR_NOMEM, "optimizer state");
    te_llama__state_sizes(tr, numel);
    shape_n = (int64_t)tr->offset[tr->n_params];
    state[0] = tr->exp_avg; state[1] = tr->exp_avg_sq; state[2] = tr->master;
#ifdef TE_LLAMA_CUDA
    if (tr->device) {
        size_t N = tr->offset[tr->n_params];
        host = (float *)te_llama__alloc(&tr->allocator, sizeof(float) * 3 * (N ? N : 1));
        if (!host) r = te_llama__fail(TE_LLAMA_ERR_NOMEM, "host copy of the optimizer state (3 x %zu floats)", N);
        for (i = 0; i < 3; i++) state[i] = host ? host + (size_t)i * N : NULL;
        if (!r) r = te_llama_cuda_train_copy(tr, TE_LLAMA_TRAIN_EXP_AVG, -1, state[0], 0);
        if (!r) r = te_llama_cuda_train_copy(tr, TE_LLAMA_TRAIN_EXP_AVG_SQ, -1, state[1], 0);
        if (!r) r = te_llama_cuda_train_copy(tr, TE_LLAMA_TRAIN_MASTER, -1, state[2], 0);
        if (r) {
            te_llama__free(&tr->allocator, host);
            te_llama__free(&tr->allocator, numel);
            return r;
        }
    }
#endif
    memset(t, 0, sizeof t);
    t[0].name = "exp_avg"; t[0].data = state[0];
    t[1].name = "exp_avg_sq"; t[1].data = state[1];
    t[2].name = "master"; t[2].data = state[2];
    for (i = 0; i < 3; i++) { t[i].dtype = TE_LLAMA_F32; t[i].ndim = 1; t[i].shape = &shape_n; }
    t[3].name = "numel"; t[3].dtype = TE_LLAMA_I64; t[3].ndim = 1; t[3].shape = &shape_p; t[3].data = numel;
    t[4].name = "step"; t[4].dtype = TE_LLAMA_I64; t[4].ndim = 1; t[4].shape = &shape_1; t[4].data = &tr->step;
    r = te_llama_safetensors_write(path, t, 5);
    te_llama__free(&tr->allocator, host);
    te_llama__free(&tr->allocator, numel);
    return r;
}

TE_LLAMA_API te_llama_result te_llama_trainer_load_state(te_llama_trainer *tr, const char *path) {
    static const char *const names[5] = {"exp_avg", "exp_avg_sq", "master", "numel", "step"};
    te_llama_safetensors st;
    int64_t *numel = NULL, *sizes, step = 0;
    size_t N;
    float *state[3], *host = NULL; /* exp_avg, exp_avg_sq, master; host: staging for the device */
    int fd = -1, i, n_sizes;
    te_llama_result r;
    if (!tr || !path) return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_trainer_load_state: NULL");
    N = tr->offset[tr->n_params];
    state[0] = tr->exp_avg; state[1] = tr->exp_avg_sq; state[2] = tr->master;
    n_sizes = te_llama__state_sizes(tr, NULL);
    if ((r = te_llama_safetensors_open(path, &tr->allocator, &st))) return r;
    numel = (int64_t *)te_llama__alloc(&tr->allocator, sizeof(int64_t) * 2 * (size_t)n_sizes);
    if (!numel) { r = te_llama__fail(TE_LLAMA_ERR_NOMEM, "optimizer state"); goto done; }
    sizes = numel + n_sizes;
    te_llama__state_sizes(tr, sizes);
    for (i = 0; i < 5; i++) { /* every tensor present with the size this trainer expects */
        const te_llama_st_tensor *t = te_llama_safetensors_find(&st, names[i]);
        int64_t want = i < 3 ? (int64_t)N : i == 3 ? n_sizes : 1;
        if (!t) { r = te_llama__fail(TE_LLAMA_ERR_MISSING_TENSOR, "%s: no tensor \"%s\"", path, names[i]); goto done; }
        if (t->dtype != (i < 3 ? TE_LLAMA_F32 : TE_LLAMA_I64) || t->ndim != 1 || t->shape[0] != want) {
            r = te_llama__fail(TE_LLAMA_ERR_SHAPE_MISMATCH, "%s: \"%s\" is %s [%lld], expected %s [%lld] (a state of another model?)", path, names[i],
                               te_llama_dtype_name(t->dtype), t->ndim == 1 ? (long long)t->shape[0] : -1LL, i < 3 ? "F32" : "I64", (long long)want);
            goto done;
        }
    }
    fd = open(path, O_RDONLY); /* a regular file: te_llama_safetensors_open read it above */
    if (fd < 0) { r = te_llama__fail(TE_LLAMA_ERR_IO, "%s: %s", path, strerror(errno)); goto done; }
#define TE_LLAMA__READ(name, dst) do { const te_llama_st_tensor *t_ = te_llama_safetensors_find(&st, name); \
        if ((r = te_llama__pread(fd, dst, (size_t)t_->nbytes, st.data_start + t_->offset, path))) goto done; } while (0)
    TE_LLAMA__READ("numel", numel);
    for (i = 0; i < n_sizes; i++)
        if (numel[i] != sizes[i]) {
            r = te_llama__fail(TE_LLAMA_ERR_SHAPE_MISMATCH, "%s: tensor %d has %lld values, this model's has %lld", path, i, (long long)numel[i], (long long)sizes[i]);
            goto done;
        }
    TE_LLAMA__READ("step", &step);
    if (step < 0) { r = te_llama__fail(TE_LLAMA_ERR_OUT_OF_RANGE, "%s: step %lld", path, (long long)step); goto done; }
    if (tr->device) { /* CUDA: read into host staging, then upload below */
        host = (float *)te_llama__alloc(&tr->allocator, sizeof(float) * 3 * (N ? N : 1));
        if (!host) { r = te_llama__fail(TE_LLAMA_ERR_NOMEM, "host staging of the optimizer state (3 x %zu floats)", N); goto done; }
        for (i = 0; i < 3; i++) state[i] = host + (size_t)i * N;
    }
    TE_LLAMA__READ("exp_avg", state[0]);
    TE_LLAMA__READ("exp_avg_sq", state[1]);
    TE_LLAMA__READ("master", state[2]);
#undef TE_LLAMA__READ
    tr->step = step;
#ifdef TE_LLAMA_CUDA
    if (tr->device) { /* the master upload also rounds into the model's weights; the gradients go to zero */
        r = te_llama_cuda_train_copy(tr, TE_LLAMA_TRAIN_EXP_AVG, -1, state[0], 1);
        if (!r) r = te_llama_cuda_train_copy(tr, TE_LLAMA_TRAIN_EXP_AVG_SQ, -1, state[1], 1);
        if (!r) r = te_llama_cuda_train_copy(tr, TE_LLAMA_TRAIN_MASTER, -1, state[2], 1);
        memset(state[0], 0, sizeof(float) * N);
        if (!r) r = te_llama_cuda_train_copy(tr, TE_LLAMA_TRAIN_GRAD, -1, state[0], 1);
        tr->n_labels = 0;
        tr->loss_sum = 0;
        tr->micro = 0;
        goto done;
    }
#endif
    for (i = 0; i < tr->n_params && !r; i++) {
        te_llama_param *p = te_llama_parameter(tr->model, i);
        r = te_llama__param_f32(p, tr->master + tr->offset[i], 1);
        if (!r && tr->weights != tr->master) r = te_llama__param_f32(p, tr->weights + tr->offset[i], 0);
    }
    if (!r && tr->model->fp8) r = te_llama_fp8_update_weights(tr->model);
    memset(tr->grad, 0, sizeof(float) * N);
    tr->n_labels = 0;
    tr->loss_sum = 0;
    tr->micro = 0;
done:
    if (fd >= 0) close(fd);
    te_llama__free(&tr->allocator, host);
    te_llama__free(&tr->allocator, numel);
    te_llama_safetensors_free(&st);
    return r;
}

/* ------------------------------------------------------------------------------------------------------- FP8 */

TE_LLAMA_API float te_llama_fp8_max(te_llama_dtype dtype) {
    return dtype == TE_LLAMA_F8_E4M3 ? TE_LLAMA_FP8_E4M3_MAX : dtype == TE_LLAMA_F8_E5M2 ? TE_LLAMA_FP8_E5M2_MAX : 0.0f;
}

static te_llama_result te_llama__fp8_check_recipe(const te_llama_fp8_recipe *r) {
    if (!r) return TE_LLAMA_OK;
    if ((int)r->format < 0 || r->format > TE_LLAMA_FP8_FORMAT_HYBRID || (int)r->amax_compute_algo < 0 ||
        r->amax_compute_algo > TE_LLAMA_FP8_AMAX_MOST_RECENT)
        return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "FP8 recipe: format %d or amax_compute_algo %d", (int)r->format, (int)r->amax_compute_algo);
    if (r->amax_history_len < 0 || r->amax_history_len > TE_LLAMA_FP8_MAX_HISTORY || r->margin < 0 || r->margin > 64)
        return te_llama__fail(TE_LLAMA_ERR_OUT_OF_RANGE, "FP8 recipe: amax_history_len %d (0..%d) or margin %d (0..64)",
                              r->amax_history_len, TE_LLAMA_FP8_MAX_HISTORY, r->margin);
    if (r->bf16_layers_start < 0 || r->bf16_layers_end < 0)
        return te_llama__fail(TE_LLAMA_ERR_OUT_OF_RANGE, "FP8 recipe: bf16_layers_start %d and bf16_layers_end %d must be "
                              ">= 0", r->bf16_layers_start, r->bf16_layers_end);
    return TE_LLAMA_OK;
}

TE_LLAMA_API int te_llama_fp8_layer_in_bf16(const te_llama_fp8_recipe *recipe, int layer, int n_layers) {
    return recipe && (layer < recipe->bf16_layers_start || layer >= n_layers - recipe->bf16_layers_end);
}

TE_LLAMA_API te_llama_result te_llama_fp8_meta_init(te_llama_fp8_meta *meta, const te_llama_fp8_recipe *recipe,
                                                    te_llama_dtype dtype) {
    te_llama_result r;
    if (!meta) return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_fp8_meta_init: NULL");
    if (dtype != TE_LLAMA_F8_E4M3 && dtype != TE_LLAMA_F8_E5M2)
        return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "FP8 scaling state of dtype %s", te_llama_dtype_name(dtype));
    if ((r = te_llama__fp8_check_recipe(recipe))) return r;
    memset(meta, 0, sizeof *meta);
    meta->dtype = dtype;
    meta->algo = recipe ? recipe->amax_compute_algo : TE_LLAMA_FP8_AMAX_MAX;
    meta->margin = recipe ? recipe->margin : 0;
    meta->history_len = recipe && recipe->amax_history_len ? recipe->amax_history_len : TE_LLAMA_FP8_MAX_HISTORY;
    meta->scale = meta->scale_inv = 1.0f;
    return TE_LLAMA_OK;
}

TE_LLAMA_API float te_llama_fp8_meta_update(te_llama_fp8_meta *meta, float amax) {
    float used = amax, scale;
    int i;
    if (meta->history_len < 1 || meta->history_len > TE_LLAMA_FP8_MAX_HISTORY) return meta->scale; /* not initialised */
    meta->amax = 0.0f;
    if (amax == 0.0f) return meta->scale; /* a step that saw nothing leaves the history as it was */
    meta->history[meta->next] = amax;
    meta->next = (meta->next + 1) % meta->history_len;
    meta->n_updates++;
    if (meta->algo == TE_LLAMA_FP8_AMAX_MAX) /* fmaxf's maximum: a NaN in the history is passed over */
        for (i = 0, used = 0.0f; i < meta->history_len; i++) used = fmaxf(used, meta->history[i]);
    if (!(used > 0.0f) || !isfinite(used)) return meta->scale;
    scale = te_llama_fp8_max(meta->dtype) * ldexpf(1.0f, -meta->margin) / used; /* float, as TE divides */
    if (isinf(scale)) scale = FLT_MAX; /* an amax so small that the scale overflows */
    meta->scale = scale;
    meta->scale_inv = 1.0f / scale;
    return scale;
}

TE_LLAMA_API te_llama_result te_llama_fp8_quantize(uint8_t *dst, const float *src, size_t n, float scale,
                                                   te_llama_dtype dtype, float *amax) {
    int e5m2 = dtype == TE_LLAMA_F8_E5M2;
    float mx = amax ? *amax : 0.0f;
    size_t i;
    if (dtype != TE_LLAMA_F8_E4M3 && !e5m2) return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "quantising to %s", te_llama_dtype_name(dtype));
    for (i = 0; i < n; i++) {
        float a = fabsf(src[i]);
        if (a > mx) mx = a;
        dst[i] = te_llama__f32_to_fp8(src[i] * scale, e5m2);
    }
    if (amax) *amax = mx;
    return TE_LLAMA_OK;
}

TE_LLAMA_API te_llama_result te_llama_fp8_dequantize(float *dst, const uint8_t *src, size_t n, float scale_inv,
                                                     te_llama_dtype dtype) {
    int e5m2 = dtype == TE_LLAMA_F8_E5M2;
    size_t i;
    if (dtype != TE_LLAMA_F8_E4M3 && !e5m2) return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "dequantising %s", te_llama_dtype_name(dtype));
    for (i = 0; i < n; i++) dst[i] = te_llama__fp8_to_f32(src[i], e5m2) * scale_inv;
    return TE_LLAMA_OK;
}

/* One GEMM of one layer: its weight parts (the fused buffer, or a vanilla layer's separate tensors stacked in
   output order), their E4M3 copy (NULL in a layer the recipe keeps in BF16) and the three scaling states. */
typedef struct te_llama__fp8_gemm_state {
    const te_llama_param *parts[3];
    int n_parts;
    int64_t rows, cols;
    uint8_t *weight;                  /* (rows, cols) E4M3 */
    te_llama_fp8_meta meta[3];        /* input, weight, output */
} te_llama__fp8_gemm_state;

typedef struct te_llama__fp8_model {
    te_llama_fp8_recipe recipe;
    int calibrating;
    unsigned skip;                    /* measurement only (bench/fp8_error.c), 0 = the recipe: bit 2g keeps GEMM g's
                                         input in float32, bit 2g+1 its weight */
    int input_scaling;                /* measurement only (bench/fp8_error.c), 0 = the recipe (delayed, a scale per
                                         tensor): 1 = current per tensor (TE's Float8CurrentScaling), 2 = current per
                                         row and 128 columns (Float8BlockScaling's inputs), 3 = 2 with power-of-2
                                         scales */
    int n_layers;
    float lut[256];                   /* E4M3 byte -> float */
    te_llama__fp8_gemm_state *gemms;  /* (n_layers, TE_LLAMA_FP8_GEMMS) */
} te_llama__fp8_model;

/* A CUDA model keeps its FP8 state in the device context (te_llama_kernels.cu, FP8 section) and model->fp8 points
   there: every function below hands a CUDA model to its te_llama_cuda_fp8_* twin before touching the CPU's
   te_llama__fp8_model. */
static int te_llama__fp8_on_device(const te_llama_model *m) {
#ifdef TE_LLAMA_CUDA
    return m->options.backend == TE_LLAMA_BACKEND_CUDA;
#else
    (void)m;
    return 0;
#endif
}

/* Which parameters feed each GEMM of a built-in layer. */
static te_llama_result te_llama__fp8_parts(te_llama_layer *L, te_llama__fp8_gemm_state *g) {
    te_llama_param *P = L->params;
    if (L->kind && strcmp(L->kind, "te") == 0 && L->n_params == 8) {
        g[0].parts[0] = &((te_llama__te_impl *)L->impl)->qkv; g[0].n_parts = 1;
        g[1].parts[0] = &P[4]; g[1].n_parts = 1;
        g[2].parts[0] = &P[6]; g[2].n_parts = 1;
        g[3].parts[0] = &P[7]; g[3].n_parts = 1;
    } else if (L->kind && strcmp(L->kind, "vanilla") == 0 && L->n_params == 9) {
        g[0].parts[0] = &P[1]; g[0].parts[1] = &P[2]; g[0].parts[2] = &P[3]; g[0].n_parts = 3;
        g[1].parts[0] = &P[4]; g[1].n_parts = 1;
        g[2].parts[0] = &P[6]; g[2].parts[1] = &P[7]; g[2].n_parts = 2;
        g[3].parts[0] = &P[8]; g[3].n_parts = 1;
    } else {
        return te_llama__fail(TE_LLAMA_ERR_UNSUPPORTED, "FP8 for layer %d of kind \"%s\" (te and vanilla layers have it)", L->index, L->kind ? L->kind : "");
    }
    return TE_LLAMA_OK;
}

/* Quantise one GEMM's weight: amax over all its parts, scale = 448 / amax / 2^margin, E4M3 bytes. */
static te_llama_result te_llama__fp8_quantize_weight(te_llama_model *m, te_llama__fp8_gemm_state *g) {
    float *row = (float *)te_llama__alloc(&m->allocator, sizeof(float) * (size_t)g->cols);
    float amax = 0.0f;
    int k, pass;
    int64_t r;
    if (!row) return te_llama__fail(TE_LLAMA_ERR_NOMEM, "FP8 weight row");
    te_llama_fp8_meta_init(&g->meta[TE_LLAMA_FP8_WEIGHT], &((te_llama__fp8_model *)m->fp8)->recipe, TE_LLAMA_F8_E4M3);
    for (pass = 0; pass < 2; pass++) { /* first the amax, then the bytes */
        uint8_t *dst = g->weight;
        if (pass) te_llama_fp8_meta_update(&g->meta[TE_LLAMA_FP8_WEIGHT], amax);
        for (k = 0; k < g->n_parts; k++)
            for (r = 0; r < g->parts[k]->shape[0]; r++, dst += g->cols) {
                const float *x = te_llama__row(g->parts[k], r, row);
                if (!pass) { int64_t i; for (i = 0; i < g->cols; i++) if (fabsf(x[i]) > amax) amax = fabsf(x[i]); }
                else te_llama_fp8_quantize(dst, x, (size_t)g->cols, g->meta[TE_LLAMA_FP8_WEIGHT].scale, TE_LLAMA_F8_E4M3, NULL);
            }
    }
    g->meta[TE_LLAMA_FP8_WEIGHT].amax = 0.0f;
    te_llama__free(&m->allocator, row);
    return TE_LLAMA_OK;
}

TE_LLAMA_API void te_llama_fp8_disable(te_llama_model *m) {
    te_llama__fp8_model *f;
    int i;
    if (!m || !m->fp8) return;
#ifdef TE_LLAMA_CUDA
    if (te_llama__fp8_on_device(m)) { te_llama_cuda_fp8_disable(m); return; }
#endif
    f = (te_llama__fp8_model *)m->fp8;
    for (i = 0; f->gemms && i < f->n_layers * TE_LLAMA_FP8_GEMMS; i++) te_llama__free(&m->allocator, f->gemms[i].weight);
    te_llama__free(&m->allocator, f->gemms);
    te_llama__free(&m->allocator, f);
    m->fp8 = NULL;
}

TE_LLAMA_API te_llama_result te_llama_fp8_update_weights(te_llama_model *m) {
    te_llama__fp8_model *f;
    te_llama_result r = TE_LLAMA_OK;
    int i;
    if (!m || !m->fp8) return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_fp8_update_weights: FP8 is off");
#ifdef TE_LLAMA_CUDA
    if (te_llama__fp8_on_device(m)) return te_llama_cuda_fp8_update_weights(m);
#endif
    f = (te_llama__fp8_model *)m->fp8;
    for (i = 0; i < f->n_layers * TE_LLAMA_FP8_GEMMS && !r; i++)
        if (f->gemms[i].weight) r = te_llama__fp8_quantize_weight(m, &f->gemms[i]); /* not a layer kept in BF16 */
    return r;
}

TE_LLAMA_API te_llama_result te_llama_fp8_enable(te_llama_model *m, const te_llama_fp8_recipe *recipe) {
    te_llama__fp8_model *f;
    te_llama_result r;
    int l, g, k;
    if (!m) return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_fp8_enable: NULL model");
    if ((r = te_llama__fp8_check_recipe(recipe))) return r;
    if (recipe && recipe->bf16_layers_start + (int64_t)recipe->bf16_layers_end > m->config.num_hidden_layers)
        return te_llama__fail(TE_LLAMA_ERR_OUT_OF_RANGE, "FP8 recipe: bf16_layers_start %d + bf16_layers_end %d > the "
                              "model's %d layers", recipe->bf16_layers_start, recipe->bf16_layers_end,
                              m->config.num_hidden_layers);
    te_llama_fp8_disable(m);
#ifdef TE_LLAMA_CUDA
    if (te_llama__fp8_on_device(m)) return te_llama_cuda_fp8_enable(m, recipe);
#endif
    f = (te_llama__fp8_model *)te_llama__calloc(&m->allocator, sizeof *f);
    if (!f) return te_llama__fail(TE_LLAMA_ERR_NOMEM, "FP8 state");
    if (recipe) f->recipe = *recipe;
    f->n_layers = m->config.num_hidden_layers;
    for (k = 0; k < 256; k++) f->lut[k] = te_llama__fp8_to_f32((uint8_t)k, 0);
    m->fp8 = f;
    f->gemms = (te_llama__fp8_gemm_state *)te_llama__calloc(&m->allocator, sizeof *f->gemms * (size_t)f->n_layers * TE_LLAMA_FP8_GEMMS);
    if (!f->gemms) { r = te_llama__fail(TE_LLAMA_ERR_NOMEM, "FP8 state"); goto fail; }
    for (l = 0; l < f->n_layers; l++) {
        te_llama__fp8_gemm_state *gs = f->gemms + (size_t)l * TE_LLAMA_FP8_GEMMS;
        if ((r = te_llama__fp8_parts(m->layers[l], gs))) goto fail;
        for (g = 0; g < TE_LLAMA_FP8_GEMMS; g++) {
            te_llama__fp8_gemm_state *s = &gs[g];
            for (k = 0, s->rows = 0; k < s->n_parts; k++) s->rows += s->parts[k]->shape[0];
            s->cols = s->parts[0]->shape[1];
            for (k = 0; k < s->n_parts; k++)
                if (s->parts[k]->on_device || s->parts[k]->ndim != 2 || s->parts[k]->shape[1] != s->cols) {
                    r = te_llama__fail(TE_LLAMA_ERR_UNSUPPORTED, "FP8: %s is not a host matrix of %lld columns", s->parts[k]->name, (long long)s->cols);
                    goto fail;
                }
            te_llama_fp8_meta_init(&s->meta[TE_LLAMA_FP8_INPUT], recipe, TE_LLAMA_F8_E4M3);
            te_llama_fp8_meta_init(&s->meta[TE_LLAMA_FP8_WEIGHT], recipe, TE_LLAMA_F8_E4M3);
            te_llama_fp8_meta_init(&s->meta[TE_LLAMA_FP8_OUTPUT], recipe, TE_LLAMA_F8_E4M3);
            if (te_llama_fp8_layer_in_bf16(recipe, l, f->n_layers)) continue; /* no E4M3 copy: weight stays NULL */
            s->weight = (uint8_t *)te_llama__alloc(&m->allocator, (size_t)s->rows * (size_t)s->cols);
            if (!s->weight) { r = te_llama__fail(TE_LLAMA_ERR_NOMEM, "FP8 copy of %s", s->parts[0]->name); goto fail; }
            if ((r = te_llama__fp8_quantize_weight(m, s))) goto fail;
        }
    }
    return TE_LLAMA_OK;
fail:
    te_llama_fp8_disable(m);
    return r;
}

TE_LLAMA_API te_llama_result te_llama_fp8_calibrate(te_llama_model *m, int on) {
    if (!m || !m->fp8) return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_fp8_calibrate: FP8 is off");
#ifdef TE_LLAMA_CUDA
    if (te_llama__fp8_on_device(m)) return te_llama_cuda_fp8_calibrate(m, on);
#endif
    ((te_llama__fp8_model *)m->fp8)->calibrating = on != 0;
    return TE_LLAMA_OK;
}

TE_LLAMA_API te_llama_fp8_meta *te_llama_fp8_meta_of(te_llama_model *m, int layer, te_llama_fp8_gemm gemm,
                                                     te_llama_fp8_tensor tensor) {
    te_llama__fp8_model *f;
#ifdef TE_LLAMA_CUDA
    if (m && m->fp8 && te_llama__fp8_on_device(m)) return te_llama_cuda_fp8_meta_of(m, layer, gemm, tensor);
#endif
    f = m ? (te_llama__fp8_model *)m->fp8 : NULL;
    if (!f || layer < 0 || layer >= f->n_layers || (int)gemm < 0 || gemm >= TE_LLAMA_FP8_GEMMS || (int)tensor < 0 || tensor > TE_LLAMA_FP8_OUTPUT) return NULL;
    return &f->gemms[(size_t)layer * TE_LLAMA_FP8_GEMMS + gemm].meta[tensor];
}

/* Measurement only (bench/fp8_error.c): the block x (rows, cols; row stride ld) quantised to E4M3 and dequantised
   in place with a scale from its own amax (current scaling), rounded down to a power of 2 when pow2. */
static void te_llama__fp8_qdq_block(const float *lut, float *x, size_t ld, int rows, int cols, int pow2) {
    float amax = 0.0f, s;
    int r, k;
    for (r = 0; r < rows; r++)
        for (k = 0; k < cols; k++) amax = fmaxf(amax, fabsf(x[(size_t)r * ld + k]));
    s = amax > 0.0f && amax < FLT_MAX ? 448.0f / amax : 1.0f;
    if (isinf(s)) s = FLT_MAX; /* as te_llama_fp8_meta_update */
    if (pow2) s = exp2f(floorf(log2f(s)));
    for (r = 0; r < rows; r++)
        for (k = 0; k < cols; k++) x[(size_t)r * ld + k] = lut[te_llama__f32_to_fp8(x[(size_t)r * ld + k] * s, 0)] / s;
}

/* Measurement only (te_llama__fp8_model.input_scaling): x (n, cols) by te_llama__fp8_qdq_block, one block for the
   whole tensor or one per row and 128 columns. */
static void te_llama__fp8_qdq_current(const te_llama__fp8_model *f, float *x, int ld_x, int n, int cols) {
    int t, k0;
    if (f->input_scaling == 1) {
        te_llama__fp8_qdq_block(f->lut, x, (size_t)ld_x, n, cols, 0);
        return;
    }
    for (t = 0; t < n; t++)
        for (k0 = 0; k0 < cols; k0 += 128)
            te_llama__fp8_qdq_block(f->lut, x + (size_t)t * ld_x + k0, (size_t)ld_x, 1, cols - k0 < 128 ? cols - k0 : 128,
                                    f->input_scaling == 3);
}

/* One GEMM of the CPU layer under FP8: out[t, 0:rows] = x[t, 0:cols] @ W^T. Records the input's amax; unless
   calibrating, the input is quantised and dequantised in place with its delayed scale (the callers' inputs are
   scratch they no longer need) and W is the E4M3 copy, its scale_inv applied to the float32 sums as TE's GEMM
   applies it to the accumulator. Returns 0 (the caller runs its own GEMM) when FP8 is off or the recipe keeps the
   layer in BF16. */
static int te_llama__fp8_gemm(const te_llama_step *step, int layer, int gemm, float *out, int ld_out, float *x,
                              int ld_x, int n, float *rowbuf) {
    te_llama__fp8_model *f = (te_llama__fp8_model *)step->fp8;
    te_llama__fp8_gemm_state *g;
    te_llama_fp8_meta *in, *o;
    int64_t r, col;
    int t, k, cols, q_in, q_w;
    if (!f || layer >= f->n_layers) return 0;
    g = &f->gemms[(size_t)layer * TE_LLAMA_FP8_GEMMS + gemm];
    if (!g->weight) return 0; /* a layer the recipe keeps in BF16: as with FP8 off, no amax recorded */
    q_in = !f->calibrating && !(f->skip & (1u << (2 * gemm)));
    q_w = !f->calibrating && !(f->skip & (2u << (2 * gemm)));
    in = &g->meta[TE_LLAMA_FP8_INPUT];
    o = &g->meta[TE_LLAMA_FP8_OUTPUT];
    cols = (int)g->cols;
    for (t = 0; t < n; t++) {
        float *xt = x + (size_t)t * ld_x, mx = in->amax;
        for (k = 0; k < cols; k++) if (fabsf(xt[k]) > mx) mx = fabsf(xt[k]);
        in->amax = mx;
        if (q_in && !f->input_scaling)
            for (k = 0; k < cols; k++) xt[k] = f->lut[te_llama__f32_to_fp8(xt[k] * in->scale, 0)] * in->scale_inv;
    }
    if (q_in && f->input_scaling) te_llama__fp8_qdq_current(f, x, ld_x, n, cols);
    if (!q_w) {
        for (k = 0, col = 0; k < g->n_parts; col += g->parts[k]->shape[0], k++)
            te_llama__matmul(out + col, ld_out, x, ld_x, n, g->parts[k], rowbuf);
    } else {
        float sw = g->meta[TE_LLAMA_FP8_WEIGHT].scale_inv;
        for (r = 0; r < g->rows; r++) {
            const uint8_t *wr = g->weight + (size_t)r * (size_t)cols;
            for (k = 0; k < cols; k++) rowbuf[k] = f->lut[wr[k]];
            for (t = 0; t < n; t++) out[(size_t)t * ld_out + r] = te_llama__dot(x + (size_t)t * ld_x, rowbuf, cols) * sw;
        }
    }
    for (t = 0; t < n; t++) {
        const float *ot = out + (size_t)t * ld_out;
        float mx = o->amax;
        for (r = 0; r < g->rows; r++) if (fabsf(ot[r]) > mx) mx = fabsf(ot[r]);
        o->amax = mx;
    }
    return 1;
}

/* After a CPU forward: every activation state takes the amax it recorded and gets its next scale. */
static void te_llama__fp8_end_step(te_llama_model *m) {
    te_llama__fp8_model *f = (te_llama__fp8_model *)m->fp8;
    int i;
    if (!f || te_llama__fp8_on_device(m)) return;
    for (i = 0; i < f->n_layers * TE_LLAMA_FP8_GEMMS; i++) {
        te_llama_fp8_meta_update(&f->gemms[i].meta[TE_LLAMA_FP8_INPUT], f->gemms[i].meta[TE_LLAMA_FP8_INPUT].amax);
        te_llama_fp8_meta_update(&f->gemms[i].meta[TE_LLAMA_FP8_OUTPUT], f->gemms[i].meta[TE_LLAMA_FP8_OUTPUT].amax);
    }
}

/* For te_llama_save: the E4M3 rows of a GEMM weight part, or NULL when p is not one; they live where p does
   (host, or device on a CUDA model: te_llama__st_write_file downloads them chunk by chunk). */
static const uint8_t *te_llama__fp8_saved(te_llama_model *m, const te_llama_param *p, float *scale_inv) {
    te_llama__fp8_model *f = (te_llama__fp8_model *)m->fp8;
    int i, k;
    if (!f) return NULL;
#ifdef TE_LLAMA_CUDA
    if (te_llama__fp8_on_device(m)) return te_llama_cuda_fp8_saved(m, p, scale_inv);
#endif
    for (i = 0; i < f->n_layers * TE_LLAMA_FP8_GEMMS; i++) {
        const te_llama__fp8_gemm_state *g = &f->gemms[i];
        size_t row = 0;
        for (k = 0; g->weight && k < g->n_parts; row += (size_t)g->parts[k]->shape[0], k++) {
            const te_llama_param *q = g->parts[k];
            /* a te layer's q/k/v views are rows of the fused buffer */
            uintptr_t at = (uintptr_t)p->data, lo = (uintptr_t)q->data, hi = lo + te_llama_param_bytes(q);
            if (q == p || (p->is_view && at >= lo && at < hi)) {
                size_t off = (size_t)((const char *)p->data - (const char *)q->data) / te_llama_dtype_size(q->dtype);
                *scale_inv = g->meta[TE_LLAMA_FP8_WEIGHT].scale_inv;
                return g->weight + row * (size_t)g->cols + off;
            }
        }
    }
    return NULL;
}

/* ------------------------------------------------------------------------------------------------- tokenizer */
/* TE_LLAMA_TOKENIZER_IMPLEMENTATION */
/* BEGIN GENERATED UNICODE TABLES: tools/gen_unicode_tables.py, do not edit */
/* Unicode 15.0.0: code point classes as runs, (start << 3) | class, class bits 1 = L, 2 = N, 4 = White_Space;
   a run lasts until the next one starts. 1562 runs. */
static const uint32_t te_llama__uni_runs[1562] = {
    0x0, 0x4c, 0x70, 0x104, 0x108, 0x182, 0x1d0, 0x209, 0x2d8, 0x309,
    0x3d8, 0x42c, 0x430, 0x504, 0x508, 0x551, 0x558, 0x592, 0x5a0, 0x5a9,
    0x5b0, 0x5ca, 0x5d1, 0x5d8, 0x5e2, 0x5f8, 0x601, 0x6b8, 0x6c1, 0x7b8,
    0x7c1, 0x1610, 0x1631, 0x1690, 0x1701, 0x1728, 0x1761, 0x1768, 0x1771, 0x1778,
    0x1b81, 0x1ba8, 0x1bb1, 0x1bc0, 0x1bd1, 0x1bf0, 0x1bf9, 0x1c00, 0x1c31, 0x1c38,
    0x1c41, 0x1c58, 0x1c61, 0x1c68, 0x1c71, 0x1d10, 0x1d19, 0x1fb0, 0x1fb9, 0x2410,
    0x2451, 0x2980, 0x2989, 0x2ab8, 0x2ac9, 0x2ad0, 0x2b01, 0x2c48, 0x2e81, 0x2f58,
    0x2f79, 0x2f98, 0x3101, 0x3258, 0x3302, 0x3350, 0x3371, 0x3380, 0x3389, 0x36a0,
    0x36a9, 0x36b0, 0x3729, 0x3738, 0x3771, 0x3782, 0x37d1, 0x37e8, 0x37f9, 0x3800,
    0x3881, 0x3888, 0x3891, 0x3980, 0x3a69, 0x3d30, 0x3d89, 0x3d90, 0x3e02, 0x3e51,
    0x3f58, 0x3fa1, 0x3fb0, 0x3fd1, 0x3fd8, 0x4001, 0x40b0, 0x40d1, 0x40d8, 0x4121,
    0x4128, 0x4141, 0x4148, 0x4201, 0x42c8, 0x4301, 0x4358, 0x4381, 0x4440, 0x4449,
    0x4478, 0x4501, 0x4650, 0x4821, 0x49d0, 0x49e9, 0x49f0, 0x4a81, 0x4a88, 0x4ac1,
    0x4b10, 0x4b32, 0x4b80, 0x4b89, 0x4c08, 0x4c29, 0x4c68, 0x4c79, 0x4c88, 0x4c99,
    0x4d48, 0x4d51, 0x4d88, 0x4d91, 0x4d98, 0x4db1, 0x4dd0, 0x4de9, 0x4df0, 0x4e71,
    0x4e78, 0x4ee1, 0x4ef0, 0x4ef9, 0x4f10, 0x4f32, 0x4f81, 0x4f90, 0x4fa2, 0x4fd0,
    0x4fe1, 0x4fe8, 0x5029, 0x5058, 0x5079, 0x5088, 0x5099, 0x5148, 0x5151, 0x5188,
    0x5191, 0x51a0, 0x51a9, 0x51b8, 0x51c1, 0x51d0, 0x52c9, 0x52e8, 0x52f1, 0x52f8,
    0x5332, 0x5380, 0x5391, 0x53a8, 0x5429, 0x5470, 0x5479, 0x5490, 0x5499, 0x5548,
    0x5551, 0x5588, 0x5591, 0x55a0, 0x55a9, 0x55d0, 0x55e9, 0x55f0, 0x5681, 0x5688,
    0x5701, 0x5710, 0x5732, 0x5780, 0x57c9, 0x57d0, 0x5829, 0x5868, 0x5879, 0x5888,
    0x5899, 0x5948, 0x5951, 0x5988, 0x5991, 0x59a0, 0x59a9, 0x59d0, 0x59e9, 0x59f0,
    0x5ae1, 0x5af0, 0x5af9, 0x5b10, 0x5b32, 0x5b80, 0x5b89, 0x5b92, 0x5bc0, 0x5c19,
    0x5c20, 0x5c29, 0x5c58, 0x5c71, 0x5c88, 0x5c91, 0x5cb0, 0x5cc9, 0x5cd8, 0x5ce1,
    0x5ce8, 0x5cf1, 0x5d00, 0x5d19, 0x5d28, 0x5d41, 0x5d58, 0x5d71, 0x5dd0, 0x5e81,
    0x5e88, 0x5f32, 0x5f98, 0x6029, 0x6068, 0x6071, 0x6088, 0x6091, 0x6148, 0x6151,
    0x61d0, 0x61e9, 0x61f0, 0x62c1, 0x62d8, 0x62e9, 0x62f0, 0x6301, 0x6310, 0x6332,
    0x6380, 0x63c2, 0x63f8, 0x6401, 0x6408, 0x6429, 0x6468, 0x6471, 0x6488, 0x6491,
    0x6548, 0x6551, 0x65a0, 0x65a9, 0x65d0, 0x65e9, 0x65f0, 0x66e9, 0x66f8, 0x6701,
    0x6710, 0x6732, 0x6780, 0x6789, 0x6798, 0x6821, 0x6868, 0x6871, 0x6888, 0x6891,
    0x69d8, 0x69e9, 0x69f0, 0x6a71, 0x6a78, 0x6aa1, 0x6ab8, 0x6ac2, 0x6af9, 0x6b10,
    0x6b32, 0x6bc8, 0x6bd1, 0x6c00, 0x6c29, 0x6cb8, 0x6cd1, 0x6d90, 0x6d99, 0x6de0,
    0x6de9, 0x6df0, 0x6e01, 0x6e38, 0x6f32, 0x6f80, 0x7009, 0x7188, 0x7191, 0x71a0,
    0x7201, 0x7238, 0x7282, 0x72d0, 0x7409, 0x7418, 0x7421, 0x7428, 0x7431, 0x7458,
    0x7461, 0x7520, 0x7529, 0x7530, 0x7539, 0x7588, 0x7591, 0x75a0, 0x75e9, 0x75f0,
    0x7601, 0x7628, 0x7631, 0x7638, 0x7682, 0x76d0, 0x76e1, 0x7700, 0x7801, 0x7808,
    0x7902, 0x79a0, 0x7a01, 0x7a40, 0x7a49, 0x7b68, 0x7c41, 0x7c68, 0x8001, 0x8158,
    0x81f9, 0x8202, 0x8250, 0x8281, 0x82b0, 0x82d1, 0x82f0, 0x8309, 0x8310, 0x8329,
    0x8338, 0x8371, 0x8388, 0x83a9, 0x8410, 0x8471, 0x8478, 0x8482, 0x84d0, 0x8501,
    0x8630, 0x8639, 0x8640, 0x8669, 0x8670, 0x8681, 0x87d8, 0x87e1, 0x9248, 0x9251,
    0x9270, 0x9281, 0x92b8, 0x92c1, 0x92c8, 0x92d1, 0x92f0, 0x9301, 0x9448, 0x9451,
    0x9470, 0x9481, 0x9588, 0x9591, 0x95b0, 0x95c1, 0x95f8, 0x9601, 0x9608, 0x9611,
    0x9630, 0x9641, 0x96b8, 0x96c1, 0x9888, 0x9891, 0x98b0, 0x98c1, 0x9ad8, 0x9b4a,
    0x9be8, 0x9c01, 0x9c80, 0x9d01, 0x9fb0, 0x9fc1, 0x9ff0, 0xa009, 0xb368, 0xb379,
    0xb404, 0xb409, 0xb4d8, 0xb501, 0xb758, 0xb772, 0xb789, 0xb7c8, 0xb801, 0xb890,
    0xb8f9, 0xb990, 0xba01, 0xba90, 0xbb01, 0xbb68, 0xbb71, 0xbb88, 0xbc01, 0xbda0,
    0xbeb9, 0xbec0, 0xbee1, 0xbee8, 0xbf02, 0xbf50, 0xbf82, 0xbfd0, 0xc082, 0xc0d0,
    0xc101, 0xc3c8, 0xc401, 0xc428, 0xc439, 0xc548, 0xc551, 0xc558, 0xc581, 0xc7b0,
    0xc801, 0xc8f8, 0xca32, 0xca81, 0xcb70, 0xcb81, 0xcba8, 0xcc01, 0xcd60, 0xcd81,
    0xce50, 0xce82, 0xced8, 0xd001, 0xd0b8, 0xd101, 0xd2a8, 0xd402, 0xd450, 0xd482,
    0xd4d0, 0xd539, 0xd540, 0xd829, 0xd9a0, 0xda29, 0xda68, 0xda82, 0xdad0, 0xdc19,
    0xdd08, 0xdd71, 0xdd82, 0xddd1, 0xdf30, 0xe001, 0xe120, 0xe202, 0xe250, 0xe269,
    0xe282, 0xe2d1, 0xe3f0, 0xe401, 0xe448, 0xe481, 0xe5d8, 0xe5e9, 0xe600, 0xe749,
    0xe768, 0xe771, 0xe7a0, 0xe7a9, 0xe7b8, 0xe7d1, 0xe7d8, 0xe801, 0xee00, 0xf001,
    0xf8b0, 0xf8c1, 0xf8f0, 0xf901, 0xfa30, 0xfa41, 0xfa70, 0xfa81, 0xfac0, 0xfac9,
    0xfad0, 0xfad9, 0xfae0, 0xfae9, 0xfaf0, 0xfaf9, 0xfbf0, 0xfc01, 0xfda8, 0xfdb1,
    0xfde8, 0xfdf1, 0xfdf8, 0xfe11, 0xfe28, 0xfe31, 0xfe68, 0xfe81, 0xfea0, 0xfeb1,
    0xfee0, 0xff01, 0xff68, 0xff91, 0xffa8, 0xffb1, 0xffe8, 0x10004, 0x10058, 0x10144,
    0x10150, 0x1017c, 0x10180, 0x102fc, 0x10300, 0x10382, 0x10389, 0x10390, 0x103a2, 0x103d0,
    0x103f9, 0x10402, 0x10450, 0x10481, 0x104e8, 0x10811, 0x10818, 0x10839, 0x10840, 0x10851,
    0x108a0, 0x108a9, 0x108b0, 0x108c9, 0x108f0, 0x10921, 0x10928, 0x10931, 0x10938, 0x10941,
    0x10948, 0x10951, 0x10970, 0x10979, 0x109d0, 0x109e1, 0x10a00, 0x10a29, 0x10a50, 0x10a71,
    0x10a78, 0x10a82, 0x10c19, 0x10c2a, 0x10c50, 0x12302, 0x124e0, 0x12752, 0x12800, 0x13bb2,
    0x13ca0, 0x16001, 0x16728, 0x16759, 0x16778, 0x16791, 0x167a0, 0x167ea, 0x167f0, 0x16801,
    0x16930, 0x16939, 0x16940, 0x16969, 0x16970, 0x16981, 0x16b40, 0x16b79, 0x16b80, 0x16c01,
    0x16cb8, 0x16d01, 0x16d38, 0x16d41, 0x16d78, 0x16d81, 0x16db8, 0x16dc1, 0x16df8, 0x16e01,
    0x16e38, 0x16e41, 0x16e78, 0x16e81, 0x16eb8, 0x16ec1, 0x16ef8, 0x17179, 0x17180, 0x18004,
    0x18008, 0x18029, 0x1803a, 0x18040, 0x1810a, 0x18150, 0x18189, 0x181b0, 0x181c2, 0x181d9,
    0x181e8, 0x18209, 0x184b8, 0x184e9, 0x18500, 0x18509, 0x187d8, 0x187e1, 0x18800, 0x18829,
    0x18980, 0x18989, 0x18c78, 0x18c92, 0x18cb0, 0x18d01, 0x18e00, 0x18f81, 0x19000, 0x19102,
    0x19150, 0x19242, 0x19280, 0x1928a, 0x19300, 0x19402, 0x19450, 0x1958a, 0x19600, 0x1a001,
    0x26e00, 0x27001, 0x52468, 0x52681, 0x527f0, 0x52801, 0x53068, 0x53081, 0x53102, 0x53151,
    0x53160, 0x53201, 0x53378, 0x533f9, 0x534f0, 0x53501, 0x53732, 0x53780, 0x538b9, 0x53900,
    0x53911, 0x53c48, 0x53c59, 0x53e58, 0x53e81, 0x53e90, 0x53e99, 0x53ea0, 0x53ea9, 0x53ed0,
    0x53f91, 0x54010, 0x54019, 0x54030, 0x54039, 0x54058, 0x54061, 0x54118, 0x54182, 0x541b0,
    0x54201, 0x543a0, 0x54411, 0x545a0, 0x54682, 0x546d0, 0x54791, 0x547c0, 0x547d9, 0x547e0,
    0x547e9, 0x547f8, 0x54802, 0x54851, 0x54930, 0x54981, 0x54a38, 0x54b01, 0x54be8, 0x54c21,
    0x54d98, 0x54e79, 0x54e82, 0x54ed0, 0x54f01, 0x54f28, 0x54f31, 0x54f82, 0x54fd1, 0x54ff8,
    0x55001, 0x55148, 0x55201, 0x55218, 0x55221, 0x55260, 0x55282, 0x552d0, 0x55301, 0x553b8,
    0x553d1, 0x553d8, 0x553f1, 0x55580, 0x55589, 0x55590, 0x555a9, 0x555b8, 0x555c9, 0x555f0,
    0x55601, 0x55608, 0x55611, 0x55618, 0x556d9, 0x556f0, 0x55701, 0x55758, 0x55791, 0x557a8,
    0x55809, 0x55838, 0x55849, 0x55878, 0x55889, 0x558b8, 0x55901, 0x55938, 0x55941, 0x55978,
    0x55981, 0x55ad8, 0x55ae1, 0x55b50, 0x55b81, 0x55f18, 0x55f82, 0x55fd0, 0x56001, 0x6bd20,
    0x6bd81, 0x6be38, 0x6be59, 0x6bfe0, 0x7c801, 0x7d370, 0x7d381, 0x7d6d0, 0x7d801, 0x7d838,
    0x7d899, 0x7d8c0, 0x7d8e9, 0x7d8f0, 0x7d8f9, 0x7d948, 0x7d951, 0x7d9b8, 0x7d9c1, 0x7d9e8,
    0x7d9f1, 0x7d9f8, 0x7da01, 0x7da10, 0x7da19, 0x7da28, 0x7da31, 0x7dd90, 0x7de99, 0x7e9f0,
    0x7ea81, 0x7ec80, 0x7ec91, 0x7ee40, 0x7ef81, 0x7efe0, 0x7f381, 0x7f3a8, 0x7f3b1, 0x7f7e8,
    0x7f882, 0x7f8d0, 0x7f909, 0x7f9d8, 0x7fa09, 0x7fad8, 0x7fb31, 0x7fdf8, 0x7fe11, 0x7fe40,
    0x7fe51, 0x7fe80, 0x7fe91, 0x7fec0, 0x7fed1, 0x7fee8, 0x80001, 0x80060, 0x80069, 0x80138,
    0x80141, 0x801d8, 0x801e1, 0x801f0, 0x801f9, 0x80270, 0x80281, 0x802f0, 0x80401, 0x807d8,
    0x8083a, 0x809a0, 0x80a02, 0x80bc8, 0x80c52, 0x80c60, 0x81401, 0x814e8, 0x81501, 0x81688,
    0x8170a, 0x817e0, 0x81801, 0x81902, 0x81920, 0x81969, 0x81a0a, 0x81a11, 0x81a52, 0x81a58,
    0x81a81, 0x81bb0, 0x81c01, 0x81cf0, 0x81d01, 0x81e20, 0x81e41, 0x81e80, 0x81e8a, 0x81eb0,
    0x82001, 0x824f0, 0x82502, 0x82550, 0x82581, 0x826a0, 0x826c1, 0x827e0, 0x82801, 0x82940,
    0x82981, 0x82b20, 0x82b81, 0x82bd8, 0x82be1, 0x82c58, 0x82c61, 0x82c98, 0x82ca1, 0x82cb0,
    0x82cb9, 0x82d10, 0x82d19, 0x82d90, 0x82d99, 0x82dd0, 0x82dd9, 0x82de8, 0x83001, 0x839b8,
    0x83a01, 0x83ab0, 0x83b01, 0x83b40, 0x83c01, 0x83c30, 0x83c39, 0x83d88, 0x83d91, 0x83dd8,
    0x84001, 0x84030, 0x84041, 0x84048, 0x84051, 0x841b0, 0x841b9, 0x841c8, 0x841e1, 0x841e8,
    0x841f9, 0x842b0, 0x842c2, 0x84301, 0x843b8, 0x843ca, 0x84401, 0x844f8, 0x8453a, 0x84580,
    0x84701, 0x84798, 0x847a1, 0x847b0, 0x847da, 0x84801, 0x848b2, 0x848e0, 0x84901, 0x849d0,
    0x84c01, 0x84dc0, 0x84de2, 0x84df1, 0x84e02, 0x84e80, 0x84e92, 0x85001, 0x85008, 0x85081,
    0x850a0, 0x850a9, 0x850c0, 0x850c9, 0x851b0, 0x85202, 0x85248, 0x85301, 0x853ea, 0x853f8,
    0x85401, 0x854ea, 0x85500, 0x85601, 0x85640, 0x85649, 0x85728, 0x8575a, 0x85780, 0x85801,
    0x859b0, 0x85a01, 0x85ab0, 0x85ac2, 0x85b01, 0x85b98, 0x85bc2, 0x85c01, 0x85c90, 0x85d4a,
    0x85d80, 0x86001, 0x86248, 0x86401, 0x86598, 0x86601, 0x86798, 0x867d2, 0x86801, 0x86920,
    0x86982, 0x869d0, 0x87302, 0x873f8, 0x87401, 0x87550, 0x87581, 0x87590, 0x87801, 0x878ea,
    0x87939, 0x87940, 0x87981, 0x87a30, 0x87a8a, 0x87aa8, 0x87b81, 0x87c10, 0x87d81, 0x87e2a,
    0x87e60, 0x87f01, 0x87fb8, 0x88019, 0x881c0, 0x88292, 0x88380, 0x88389, 0x88398, 0x883a9,
    0x883b0, 0x88419, 0x88580, 0x88681, 0x88748, 0x88782, 0x887d0, 0x88819, 0x88938, 0x889b2,
    0x88a00, 0x88a21, 0x88a28, 0x88a39, 0x88a40, 0x88a81, 0x88b98, 0x88bb1, 0x88bb8, 0x88c19,
    0x88d98, 0x88e09, 0x88e28, 0x88e82, 0x88ed1, 0x88ed8, 0x88ee1, 0x88ee8, 0x88f0a, 0x88fa8,
    0x89001, 0x89090, 0x89099, 0x89160, 0x891f9, 0x89208, 0x89401, 0x89438, 0x89441, 0x89448,
    0x89451, 0x89470, 0x89479, 0x894f0, 0x894f9, 0x89548, 0x89581, 0x896f8, 0x89782, 0x897d0,
    0x89829, 0x89868, 0x89879, 0x89888, 0x89899, 0x89948, 0x89951, 0x89988, 0x89991, 0x899a0,
    0x899a9, 0x899d0, 0x899e9, 0x899f0, 0x89a81, 0x89a88, 0x89ae9, 0x89b10, 0x8a001, 0x8a1a8,
    0x8a239, 0x8a258, 0x8a282, 0x8a2d0, 0x8a2f9, 0x8a310, 0x8a401, 0x8a580, 0x8a621, 0x8a630,
    0x8a639, 0x8a640, 0x8a682, 0x8a6d0, 0x8ac01, 0x8ad78, 0x8aec1, 0x8aee0, 0x8b001, 0x8b180,
    0x8b221, 0x8b228, 0x8b282, 0x8b2d0, 0x8b401, 0x8b558, 0x8b5c1, 0x8b5c8, 0x8b602, 0x8b650,
    0x8b801, 0x8b8d8, 0x8b982, 0x8b9e0, 0x8ba01, 0x8ba38, 0x8c001, 0x8c160, 0x8c501, 0x8c702,
    0x8c798, 0x8c7f9, 0x8c838, 0x8c849, 0x8c850, 0x8c861, 0x8c8a0, 0x8c8a9, 0x8c8b8, 0x8c8c1,
    0x8c980, 0x8c9f9, 0x8ca00, 0x8ca09, 0x8ca10, 0x8ca82, 0x8cad0, 0x8cd01, 0x8cd40, 0x8cd51,
    0x8ce88, 0x8cf09, 0x8cf10, 0x8cf19, 0x8cf20, 0x8d001, 0x8d008, 0x8d059, 0x8d198, 0x8d1d1,
    0x8d1d8, 0x8d281, 0x8d288, 0x8d2e1, 0x8d450, 0x8d4e9, 0x8d4f0, 0x8d581, 0x8d7c8, 0x8e001,
    0x8e048, 0x8e051, 0x8e178, 0x8e201, 0x8e208, 0x8e282, 0x8e368, 0x8e391, 0x8e480, 0x8e801,
    0x8e838, 0x8e841, 0x8e850, 0x8e859, 0x8e988, 0x8ea31, 0x8ea38, 0x8ea82, 0x8ead0, 0x8eb01,
    0x8eb30, 0x8eb39, 0x8eb48, 0x8eb51, 0x8ec50, 0x8ecc1, 0x8ecc8, 0x8ed02, 0x8ed50, 0x8f701,
    0x8f798, 0x8f811, 0x8f818, 0x8f821, 0x8f888, 0x8f891, 0x8f9a0, 0x8fa82, 0x8fad0, 0x8fd81,
    0x8fd88, 0x8fe02, 0x8fea8, 0x90001, 0x91cd0, 0x92002, 0x92378, 0x92401, 0x92a20, 0x97c81,
    0x97f88, 0x98001, 0x9a180, 0x9a209, 0x9a238, 0xa2001, 0xa3238, 0xb4001, 0xb51c8, 0xb5201,
    0xb52f8, 0xb5302, 0xb5350, 0xb5381, 0xb55f8, 0xb5602, 0xb5650, 0xb5681, 0xb5770, 0xb5801,
    0xb5980, 0xb5a01, 0xb5a20, 0xb5a82, 0xb5ad0, 0xb5ada, 0xb5b10, 0xb5b19, 0xb5bc0, 0xb5be9,
    0xb5c80, 0xb7201, 0xb7402, 0xb74b8, 0xb7801, 0xb7a58, 0xb7a81, 0xb7a88, 0xb7c99, 0xb7d00,
    0xb7f01, 0xb7f10, 0xb7f19, 0xb7f20, 0xb8001, 0xc3fc0, 0xc4001, 0xc66b0, 0xc6801, 0xc6848,
    0xd7f81, 0xd7fa0, 0xd7fa9, 0xd7fe0, 0xd7fe9, 0xd7ff8, 0xd8001, 0xd8918, 0xd8991, 0xd8998,
    0xd8a81, 0xd8a98, 0xd8aa9, 0xd8ab0, 0xd8b21, 0xd8b40, 0xd8b81, 0xd97e0, 0xde001, 0xde358,
    0xde381, 0xde3e8, 0xde401, 0xde448, 0xde481, 0xde4d0, 0xe9602, 0xe96a0, 0xe9702, 0xe97a0,
    0xe9b02, 0xe9bc8, 0xea001, 0xea2a8, 0xea2b1, 0xea4e8, 0xea4f1, 0xea500, 0xea511, 0xea518,
    0xea529, 0xea538, 0xea549, 0xea568, 0xea571, 0xea5d0, 0xea5d9, 0xea5e0, 0xea5e9, 0xea620,
    0xea629, 0xea830, 0xea839, 0xea858, 0xea869, 0xea8a8, 0xea8b1, 0xea8e8, 0xea8f1, 0xea9d0,
    0xea9d9, 0xea9f8, 0xeaa01, 0xeaa28, 0xeaa31, 0xeaa38, 0xeaa51, 0xeaa88, 0xeaa91, 0xeb530,
    0xeb541, 0xeb608, 0xeb611, 0xeb6d8, 0xeb6e1, 0xeb7d8, 0xeb7e1, 0xeb8a8, 0xeb8b1, 0xeb9a8,
    0xeb9b1, 0xeba78, 0xeba81, 0xebb78, 0xebb81, 0xebc48, 0xebc51, 0xebd48, 0xebd51, 0xebe18,
    0xebe21, 0xebe60, 0xebe72, 0xec000, 0xef801, 0xef8f8, 0xef929, 0xef958, 0xf0181, 0xf0370,
    0xf0801, 0xf0968, 0xf09b9, 0xf09f0, 0xf0a02, 0xf0a50, 0xf0a71, 0xf0a78, 0xf1481, 0xf1570,
    0xf1601, 0xf1760, 0xf1782, 0xf17d0, 0xf2681, 0xf2760, 0xf2782, 0xf27d0, 0xf3f01, 0xf3f38,
    0xf3f41, 0xf3f60, 0xf3f69, 0xf3f78, 0xf3f81, 0xf3ff8, 0xf4001, 0xf4628, 0xf463a, 0xf4680,
    0xf4801, 0xf4a20, 0xf4a59, 0xf4a60, 0xf4a82, 0xf4ad0, 0xf638a, 0xf6560, 0xf656a, 0xf6580,
    0xf658a, 0xf65a8, 0xf680a, 0xf6970, 0xf697a, 0xf69f0, 0xf7001, 0xf7020, 0xf7029, 0xf7100,
    0xf7109, 0xf7118, 0xf7121, 0xf7128, 0xf7139, 0xf7140, 0xf7149, 0xf7198, 0xf71a1, 0xf71c0,
    0xf71c9, 0xf71d0, 0xf71d9, 0xf71e0, 0xf7211, 0xf7218, 0xf7239, 0xf7240, 0xf7249, 0xf7250,
    0xf7259, 0xf7260, 0xf7269, 0xf7280, 0xf7289, 0xf7298, 0xf72a1, 0xf72a8, 0xf72b9, 0xf72c0,
    0xf72c9, 0xf72d0, 0xf72d9, 0xf72e0, 0xf72e9, 0xf72f0, 0xf72f9, 0xf7300, 0xf7309, 0xf7318,
    0xf7321, 0xf7328, 0xf7339, 0xf7358, 0xf7361, 0xf7398, 0xf73a1, 0xf73c0, 0xf73c9, 0xf73e8,
    0xf73f1, 0xf73f8, 0xf7401, 0xf7450, 0xf7459, 0xf74e0, 0xf7509, 0xf7520, 0xf7529, 0xf7550,
    0xf7559, 0xf75e0, 0xf8802, 0xf8868, 0xfdf82, 0xfdfd0, 0x100001, 0x153700, 0x153801, 0x15b9d0,
    0x15ba01, 0x15c0f0, 0x15c101, 0x167510, 0x167581, 0x175f08, 0x17c001, 0x17d0f0, 0x180001, 0x189a58,
    0x189a81, 0x191d80,
};
/* END GENERATED UNICODE TABLES */

/* Layout: Unicode classes (generated), UTF-8 helpers, the tokenizer struct and its tables, loading
   (model, added tokens, normalizer, pre-tokenizer, decoder, post-processor), the Llama 3 pre-tokenizer regex,
   BPE, encoding, decoding (whole and streaming), the chat helper. */

#define TE_LLAMA__UL 1u  /* \p{L} */
#define TE_LLAMA__UN 2u  /* \p{N} */
#define TE_LLAMA__UWS 4u /* \s: White_Space */

static unsigned te_llama__uclass(uint32_t cp) {
    size_t lo = 0, hi = sizeof te_llama__uni_runs / sizeof te_llama__uni_runs[0];
    if (cp < 0x80) {
        if ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z') return TE_LLAMA__UL;
        if (cp >= '0' && cp <= '9') return TE_LLAMA__UN;
        return (cp == ' ' || (cp >= 9 && cp <= 13)) ? TE_LLAMA__UWS : 0u;
    }
    while (hi - lo > 1) { /* the last run that starts at or before cp */
        size_t mid = lo + (hi - lo) / 2;
        if ((te_llama__uni_runs[mid] >> 3) <= cp) lo = mid;
        else hi = mid;
    }
    return te_llama__uni_runs[lo] & 7u;
}

/* Decode the character at s of text already known to be valid UTF-8; *n gets its length. */
static uint32_t te_llama__utf8_dec(const unsigned char *s, size_t *n) {
    unsigned c = s[0];
    if (c < 0x80) { *n = 1; return c; }
    if (c < 0xe0) { *n = 2; return ((uint32_t)(c & 0x1f) << 6) | (s[1] & 0x3fu); }
    if (c < 0xf0) { *n = 3; return ((uint32_t)(c & 0x0f) << 12) | ((uint32_t)(s[1] & 0x3f) << 6) | (s[2] & 0x3fu); }
    *n = 4;
    return ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(s[1] & 0x3f) << 12) | ((uint32_t)(s[2] & 0x3f) << 6) | (s[3] & 0x3fu);
}

/* At s (n > 0 bytes): the length of the valid character there, or 0 with *bad the length of the maximal invalid
   subpart (one U+FFFD, as from_utf8_lossy and Python's "replace" make it) and *cut set when that subpart is a
   valid beginning cut off by the end of the bytes. */
static size_t te_llama__utf8_scan(const unsigned char *s, size_t n, size_t *bad, int *cut) {
    unsigned c = s[0], lo = 0x80, hi = 0xbf;
    size_t need, i;
    *cut = 0;
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) need = 1;
    else if (c >= 0xe0 && c <= 0xef) { need = 2; if (c == 0xe0) lo = 0xa0; if (c == 0xed) hi = 0x9f; }
    else if (c >= 0xf0 && c <= 0xf4) { need = 3; if (c == 0xf0) lo = 0x90; if (c == 0xf4) hi = 0x8f; }
    else { *bad = 1; return 0; }
    for (i = 1; i <= need; i++) {
        if (i >= n) { *bad = i; *cut = 1; return 0; }
        if (s[i] < lo || s[i] > hi) { *bad = i; return 0; }
        lo = 0x80; hi = 0xbf;
    }
    return need + 1;
}

/* Grow *p (elements of size elem, capacity *cap) to hold need elements; 0 on overflow or no memory. */
static int te_llama__grow(const te_llama_allocator *a, void **p, size_t *cap, size_t need, size_t elem) {
    size_t c = *cap ? *cap : 16;
    void *q;
    if (need <= *cap) return 1;
    while (c < need) {
        if (c > ((size_t)-1) / 2) return 0;
        c *= 2;
    }
    if (c > ((size_t)-1) / elem) return 0;
    q = te_llama__realloc(a, *p, c * elem);
    if (!q) return 0;
    *p = q;
    *cap = c;
    return 1;
}

/* Bytes, growable; failed sticks. */
typedef struct te_llama__bytes {
    char *data;
    size_t len, cap;
    int failed;
} te_llama__bytes;

static void te_llama__bytes_put(const te_llama_allocator *a, te_llama__bytes *b, const void *s, size_t n) {
    if (b->failed) return;
    if (n > ((size_t)-1) - b->len - 1 || !te_llama__grow(a, (void **)&b->data, &b->cap, b->len + n + 1, 1)) {
        b->failed = 1;
        return;
    }
    if (n) memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = 0;
}

/* Append s as valid UTF-8, each maximal invalid subpart replaced by U+FFFD. */
static void te_llama__bytes_put_lossy(const te_llama_allocator *a, te_llama__bytes *b, const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, run = 0;
    while (i < n) {
        size_t bad = 0, k;
        int cut;
        if (u[i] < 0x80) { i++; continue; }
        k = te_llama__utf8_scan(u + i, n - i, &bad, &cut);
        if (k) { i += k; continue; }
        te_llama__bytes_put(a, b, s + run, i - run);
        te_llama__bytes_put(a, b, "\xef\xbf\xbd", 3);
        i += bad;
        run = i;
    }
    te_llama__bytes_put(a, b, s + run, n - run);
}

static uint64_t te_llama__hash_str(const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    size_t i;
    for (i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
    return h ^ (h >> 29);
}
static uint64_t te_llama__hash_u64(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return k;
}

/* ------------------------------------------------------------------------------------------ tokenizer struct */

#define TE_LLAMA__TOK_MAX_VOCAB (1u << 24)
#define TE_LLAMA__TOK_MAX_STEPS 16
#define TE_LLAMA__TOK_MAX_TEMPLATE 16
#define TE_LLAMA__TOK_MODEL 1u   /* tok_flags: in the model vocabulary */
#define TE_LLAMA__TOK_ADDED 2u   /* an added token */
#define TE_LLAMA__TOK_SPECIAL 4u /* a special added token */

enum {
    TE_LLAMA__STEP_PREPEND = 1, /* normalizer Prepend(a) */
    TE_LLAMA__STEP_REPLACE,     /* normalizer or decoder Replace(a -> b), a plain string */
    TE_LLAMA__STEP_BYTE_LEVEL,  /* decoder */
    TE_LLAMA__STEP_BYTE_FALLBACK,
    TE_LLAMA__STEP_FUSE,
    TE_LLAMA__STEP_STRIP        /* Strip(a, start, stop) */
};

typedef struct te_llama__tok_step {
    int kind;
    uint32_t a_off, a_len, b_off, b_len; /* strings in the arena */
    int start, stop;
} te_llama__tok_step;

typedef struct te_llama__tok_added {
    int32_t id;
    uint32_t off, len; /* content; for a normalized token, the normalized content */
    uint8_t special, lstrip, rstrip, normalized, first;
} te_llama__tok_added;

struct te_llama_tokenizer {
    te_llama_allocator allocator;
    char *arena;                /* every string, back to back */
    size_t arena_len, arena_cap;
    size_t n_vocab;             /* largest id + 1 */
    uint32_t *tok_off, *tok_len; /* (n_vocab) what decode reads: the added token's content, else the model's */
    uint32_t *v_off, *v_len;    /* (n_vocab) the model vocabulary's string */
    uint8_t *tok_flags;         /* (n_vocab) TE_LLAMA__TOK_* */
    uint32_t *vocab_slots;      /* model vocabulary hash: id + 1, 0 empty */
    size_t vocab_mask;
    uint64_t *merge_keys;       /* merges hash: (left << 32 | right), UINT64_MAX empty */
    uint32_t *merge_rank, *merge_new;
    size_t merge_mask, n_merges;
    int32_t char_ids[512];      /* the id of each one-character token below U+0200, -1 when none */
    int32_t fallback_ids[256];  /* the id of <0xNN>, -1 when none */
    int32_t unk_id;             /* -1: no unk token */
    int unk_missing;            /* unk_token named but not in the vocabulary: an error when needed, as in HF */
    int fuse_unk, byte_fallback, ignore_merges;
    int split_llama3, byte_level; /* pre-tokenizers */
    uint16_t bl_map[256];       /* GPT-2 bytes_to_unicode */
    int16_t bl_unmap[324];      /* its inverse, -1 elsewhere */
    te_llama__tok_step norm[TE_LLAMA__TOK_MAX_STEPS];
    int n_norm;
    te_llama__tok_step dec[TE_LLAMA__TOK_MAX_STEPS];
    int n_dec, has_decoder;
    te_llama__tok_added *added; /* sorted by first byte, longest first */
    size_t n_added;
    uint32_t added_first[257];  /* added[added_first[b] .. added_first[b+1]) begin with byte b */
    int32_t tmpl_pre[TE_LLAMA__TOK_MAX_TEMPLATE], tmpl_post[TE_LLAMA__TOK_MAX_TEMPLATE];
    int n_pre, n_post;
    int32_t bos_id, eos_id;
};

static te_llama_result te_llama__arena_put(te_llama_tokenizer *t, const char *s, size_t n, uint32_t *off) {
    if (n > 0xffffffffu - t->arena_len - 1)
        return te_llama__fail(TE_LLAMA_ERR_TOKENIZER, "tokenizer strings exceed 4 GB");
    if (!te_llama__grow(&t->allocator, (void **)&t->arena, &t->arena_cap, t->arena_len + n + 1, 1))
        return te_llama__fail(TE_LLAMA_ERR_NOMEM, "tokenizer strings (%zu bytes)", t->arena_len + n + 1);
    if (n) memcpy(t->arena + t->arena_len, s, n);
    *off = (uint32_t)t->arena_len;
    t->arena_len += n;
    t->arena[t->arena_len] = 0;
    return TE_LLAMA_OK;
}

/* Put a JSON string token's decoded text in the arena. */
static te_llama_result te_llama__arena_json(te_llama_tokenizer *t, const te_llama_json *j, size_t tok, uint32_t *off,
                                            uint32_t *len) {
    const te_llama_json_token *k = &j->tokens[tok];
    size_t n;
    te_llama_result r;
    if (k->type != TE_LLAMA_JSON_STRING)
        return te_llama__fail(TE_LLAMA_ERR_JSON_SCHEMA, "tokenizer.json: expected a string at byte %u", k->start);
    if (!k->escaped) {
        r = te_llama__arena_put(t, j->text + k->start, k->end - k->start, off);
        if (!r) *len = k->end - k->start;
        return r;
    }
    n = te_llama__json_decode(j->text, k->start, k->end, NULL, 0); /* escapes only shrink; n <= raw length */
    r = te_llama__arena_put(t, j->text + k->start, n, off);         /* reserve n bytes, then decode over them */
    if (r) return r;
    te_llama__json_decode(j->text, k->start, k->end, t->arena + *off, n);
    *len = (uint32_t)n;
    return TE_LLAMA_OK;
}


static int32_t te_llama__vocab_find(const te_llama_tokenizer *t, const char *s, size_t n) {
    size_t i = (size_t)te_llama__hash_str(s, n) & t->vocab_mask;
    for (;; i = (i + 1) & t->vocab_mask) {
        uint32_t v = t->vocab_slots[i];
        if (!v) return -1;
        if (t->v_len[v - 1] == n && memcmp(t->arena + t->v_off[v - 1], s, n) == 0) return (int32_t)(v - 1);
    }
}

/* The slot of merge (a, b), or of the empty slot where it would go. */
static size_t te_llama__merge_slot(const te_llama_tokenizer *t, int32_t a, int32_t b) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t i = (size_t)te_llama__hash_u64(key) & t->merge_mask;
    while (t->merge_keys[i] != key && t->merge_keys[i] != UINT64_MAX) i = (i + 1) & t->merge_mask;
    return i;
}

/* Whether the JSON value at tok is null or absent (0). */
static int te_llama__json_null(const te_llama_json *j, size_t tok) {
    return tok == 0 || j->tokens[tok].type == TE_LLAMA_JSON_NULL;
}
static te_llama_result te_llama__json_bool(const te_llama_json *j, size_t tok, int dflt, int *out, const char *what) {
    if (te_llama__json_null(j, tok)) { *out = dflt; return TE_LLAMA_OK; }
    if (j->tokens[tok].type == TE_LLAMA_JSON_TRUE) { *out = 1; return TE_LLAMA_OK; }
    if (j->tokens[tok].type == TE_LLAMA_JSON_FALSE) { *out = 0; return TE_LLAMA_OK; }
    return te_llama__fail(TE_LLAMA_ERR_JSON_SCHEMA, "tokenizer.json: %s should be true or false (byte %u)", what,
                          j->tokens[tok].start);
}
/* The "type" of a component object, for messages: copied into buf. */
static te_llama_result te_llama__json_type(const te_llama_json *j, size_t obj, const char *what, char *buf, size_t cap) {
    size_t ty;
    if (j->tokens[obj].type != TE_LLAMA_JSON_OBJECT)
        return te_llama__fail(TE_LLAMA_ERR_JSON_SCHEMA, "tokenizer.json: %s is not an object (byte %u)", what,
                              j->tokens[obj].start);
    ty = te_llama_json_get(j, obj, "type");
    if (!ty || j->tokens[ty].type != TE_LLAMA_JSON_STRING)
        return te_llama__fail(TE_LLAMA_ERR_JSON_SCHEMA, "tokenizer.json: %s has no \"type\" (byte %u)", what,
                              j->tokens[obj].start);
    if (te_llama_json_string(j, ty, buf, cap, NULL))
        return te_llama__fail(TE_LLAMA_ERR_UNSUPPORTED, "tokenizer.json: %s of an unknown type", what);
    return TE_LLAMA_OK;
}

/* ------------------------------------------------------------------------------------------ tokenizer loading */

#define TE_LLAMA__LLAMA3_REGEX                                                                                    \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"      \
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

static void te_llama__normalize(const te_llama_tokenizer *t, const char *s, size_t n, te_llama__bytes *out,
                                te_llama__bytes *tmp);

/* A string member of obj into the arena; missing or not a string is a schema error. */
static te_llama_result te_llama__tok_member_str(te_llama_tokenizer *t, const te_llama_json *j, size_t obj,
                                                const char *key, const char *what, uint32_t *off, uint32_t *len) {
    size_t v = te_llama_json_get(j, obj, key);
    if (!v || j->tokens[v].type != TE_LLAMA_JSON_STRING)
        return te_llama__fail(TE_LLAMA_ERR_JSON_SCHEMA, "tokenizer.json: %s needs a string \"%s\" (byte %u)", what, key,
                              j->tokens[obj].start);
    return te_llama__arena_json(t, j, v, off, len);
}

/* Replace's pattern: {"String": s}; a regex is not supported. */
static te_llama_result te_llama__tok_pattern(te_llama_tokenizer *t, const te_llama_json *j, size_t obj, const char *what,
                                             te_llama__tok_step *st) {
    size_t p = te_llama_json_get(j, obj, "pattern"), s;
    te_llama_result r;
    if (!p || j->tokens[p].type != TE_LLAMA_JSON_OBJECT)
        return te_llama__fail(TE_LLAMA_ERR_JSON_SCHEMA, "tokenizer.json: %s needs a \"pattern\" object", what);
    s = te_llama_json_get(j, p, "String");
    if (!s) return te_llama__fail(TE_LLAMA_ERR_UNSUPPORTED, "tokenizer.json: %s with a regex pattern is not supported", what);
    if (j->tokens[s].type != TE_LLAMA_JSON_STRING)
        return te_llama__fail(TE_LLAMA_ERR_JSON_SCHEMA, "tokenizer.json: %s pattern is not a string", what);
    if ((r = te_llama__arena_json(t, j, s, &st->a_off, &st->a_len))) return r;
    if (!st->a_len) return te_llama__fail(TE_LLAMA_ERR_TOKENIZER, "tokenizer.json: %s with an empty pattern", what);
    return te_llama__tok_member_str(t, j, obj, "content", what, &st->b_off, &st->b_len);
}

static te_llama_result te_llama__tok_step_add(te_llama__tok_step *steps, int *n, const char *what, te_llama__tok_step **out) {
    if (*n >= TE_LLAMA__TOK_MAX_STEPS)
        return te_llama__fail(TE_LLAMA_ERR_UNSUPPORTED, "tokenizer.json: more than %d %s steps", TE_LLAMA__TOK_MAX_STEPS, what);
    *out = &steps[(*n)++];
    memset(*out, 0, sizeof **out);
    return TE_LLAMA_OK;
}

static te_llama_result te_llama__tok_normalizer(te_llama_tokenizer *t, const te_llama_json *j, size_t v, int depth) {
    char type[64];
    te_llama__tok_step *st = NULL;
    te_llama_result r;
    if (te_llama__json_null(j, v)) return TE_LLAMA_OK;
    if ((r = te_llama__json_type(j, v, "normalizer", type, sizeof type))) return r;
    if (strcmp(type, "Sequence") == 0 && depth < 4) {
        size_t arr = te_llama_json_get(j, v, "normalizers"), k, e;
        if (!arr || j->tokens[arr].type != TE_LLAMA_JSON_ARRAY)
            return te_llama__fail(TE_LLAMA_ERR_JSON_SCHEMA, "tokenizer.json: normalizer Sequence needs \"normalizers\"");
        for (k = 0, e = arr + 1; k < j->tokens[arr].size; k++, e = j->tokens[e].next)
            if ((r = te_llama__tok_normalizer(t, j, e, depth + 1))) return r;
        return TE_LLAMA_OK;
    }
    if (strcmp(type, "Prepend") == 0) {
        if ((r = te_llama__tok_step_add(t->norm, &t->n_norm, "normalizer", &st))) return r;
        st->kind = TE_LLAMA__STEP_PREPEND;
        return te_llama__tok_member_str(t, j, v, "prepend", "normalizer Prepend", &st->a_off, &st->a_len);
    }
    if (strcmp(type, "Replace") == 0) {
        if ((r = te_llama__tok_step_add(t->norm, &t->n_norm, "normalizer", &st))) return r;
        st->kind = TE_LLAMA__STEP_REPLACE;
        return te_llama__tok_pattern(t, j, v, "normalizer Replace", st);
    }
    return te_llama__fail(TE_LLAMA_ERR_UNSUPPORTED, "tokenizer.json: normalizer %s is not supported", type);
}

static te_llama_result te_llama__tok_decoder(te_llama_tokenizer *t, const te_llama_json *j, size_t v, int depth) {
    char type[64];
    te_llama__tok_step *st = NULL;
    te_llama_result r;
    if (te_llama__json_null(j, v)) return TE_LLAMA_OK;
    t->has_decoder = 1;
    if ((r = te_llama__json_type(j, v, "decoder", type, sizeof type))) return r;
    if (strcmp(type, "Sequence") == 0 && depth < 4) {
        size_t arr = te_llama_json_get(j, v, "decoders"), k, e;
        if (!arr || j->tokens[arr].type != TE_LLAMA_JSON_ARRAY)
            return te_llama__fail(TE_LLAMA_ERR_JSON_SCHEMA, "tokenizer.json: decoder Sequence needs \"decoders\"");
        for (k = 0, e = arr + 1; k < j->tokens[arr].size; k++, e = j->tokens[e].next)
            if ((r = te_llama__tok_decoder(t, j, e, depth + 1))) return r;
        return TE_LLAMA_OK;
    }
    if ((r = te_llama__tok_step_add(t->dec, &t->n_dec, "decoder", &st))) return r;
    if (strcmp(type, "ByteLevel") == 0) { st->kind = TE_LLAMA__STEP_BYTE_LEVEL; return TE_LLAMA_OK; }
    if (strcmp(type, "ByteFallback") == 0) { st->kind = TE_LLAMA__STEP_BYTE_FALLBACK; return TE_LLAMA_OK; }
    if (strcmp(type, "Fuse") == 0) { st->kind = TE_LLAMA__STEP_FUSE; return TE_LLAMA_OK; }
    if (strcmp(type, "Replace") == 0) { st->kind = TE_LLAMA__STEP_REPLACE; return te_llama__tok_pattern(t, j, v, "decoder Replace", st); }
    if (strcmp(type, "Strip") == 0) {
        int64_t a, b;
        size_t len;
        st->kind = TE_LLAMA__STEP_STRIP;
        if ((r = te_llama__tok_member_str(t, j, v, "content", "decoder Strip", &st->a_off, &st->a_len))) return r;
        if (te_llama_json_int64(j, te_llama_json_get(j, v, "start"), &a) || te_llama_json_int64(j, te_llama_json_get(j, v, "stop"), &b))
            return te_llama__fail(TE_LLAMA_ERR_JSON_SCHEMA, "tokenizer.json: decoder Strip needs integers start and stop");
        if (a < 0 || b < 0 || a > 1000000 || b > 1000000)
            return te_llama__fail(TE_LLAMA_ERR_OUT_OF_RANGE, "tokenizer.json: decoder Strip start %lld stop %lld", (long long)a, (long long)b);
        if (!st->a_len || te_llama__utf8_len((const unsigned char *)t->arena + st->a_off, st->a_len) != (int)st->a_len)
            return te_llama__fail(TE_LLAMA_ERR_JSON_SCHEMA, "tokenizer.json: decoder Strip content is not one character");
        (void)len;
        st->start = (int)a;
        st->stop = (int)b;
        return TE_LLAMA_OK;
    }
    return te_llama__fail(TE_LLAMA_ERR_UNSUPPORTED, "tokenizer.json: decoder %s is not supported", type);
}

/* Pre-tokenizers: the Llama 3 Split, then optionally ByteLevel (which must come last). */
static te_llama_result te_llama__tok_pretokenizer(te_llama_tokenizer *t, const te_llama_json *j, size_t v, int depth) {
    char type[64];
    te_llama_result r;
    int flag;
    if (te_llama__json_null(j, v)) return TE_LLAMA_OK;
    if ((r = te_llama__json_type(j, v, "pre_tokenizer", type, sizeof type))) return r;
    if (t->byte_level)
        return te_llama__fail(TE_LLAMA_ERR_UNSUPPORTED, "tokenizer.json: pre-tokenizer %s after ByteLevel is not supported", type);
    if (strcmp(type, "Sequence") == 0 && depth < 4) {
        size_t arr = te_llama_json_get(j, v, "pretokenizers"), k, e;
        if (!arr || j->tokens[arr].type != TE_LLAMA_JSON_ARRAY)
            return te_llama__fail(TE_LLAMA_ERR_JSON_SCHEMA, "tokenizer.json: pre_tokenizer Sequence needs \"pretokenizers\"");
        for (k = 0, e = arr + 1; k < j->tokens[arr].size; k++, e = j->tokens[e].next)
            if ((r = te_llama__tok_pretokenizer(t, j, e, depth + 1))) return r;
        return TE_LLAMA_OK;
    }
    if (strcmp(type, "Split") == 0) {
        size_t p = te_llama_json_get(j, v, "pattern"), re = p ? te_llama_json_get(j, p, "Regex") : 0;
        if (!re || !te_llama_json_equals(j, re, TE_LLAMA__LLAMA3_REGEX))
            return te_llama__fail(TE_LLAMA_ERR_UNSUPPORTED, "tokenizer.json: Split pre-tokenizer: only the Llama 3 regex is supported (byte %u)", j->tokens[v].start);
        if (!te_llama_json_equals(j, te_llama_json_get(j, v, "behavior"), "Isolated"))
            return te_llama__fail(TE_LLAMA_ERR_UNSUPPORTED, "tokenizer.json: Split pre-tokenizer: only behavior Isolated is supported");
        if ((r = te_llama__json_bool(j, te_llama_json_get(j, v, "invert"), 0, &flag, "Split invert"))) return r;
        if (flag) return te_llama__fail(TE_LLAMA_ERR_UNSUPPORTED, "tokenizer.json: Split pre-tokenizer with invert is not supported");
        if (t->split_llama3) return te_llama__fail(TE_LLAMA_ERR_UNSUPPORTED, "tokenizer.json: two Split pre-tokenizers");
        t->split_llama3 = 1;
        return TE_LLAMA_OK;
    }
    if (strcmp(type, "ByteLevel") == 0) {
        if ((r = te_llama__json_bool(j, te_llama_json_get(j, v, "add_prefix_space"), 1, &flag, "ByteLevel add_prefix_space"))) return r;
        if (flag) return te_llama__fail(TE_LLAMA_ERR_UNSUPPORTED, "tokenizer.json: ByteLevel pre-tokenizer with add_prefix_space is not supported");
        if ((r = te_llama__json_bool(j, te_llama_json_get(j, v, "use_regex"), 1, &flag, "ByteLevel use_regex"))) return r;
        if (flag) return te_llama__fail(TE_LLAMA_ERR_UNSUPPORTED, "tokenizer.json: ByteLevel pre-tokenizer with use_regex (the GPT-2 regex) is not supported");
        t->byte_level = 1;
        return TE_LLAMA_OK;
    }
    return te_llama__fail(TE_LLAMA_ERR_UNSUPPORTED, "tokenizer.json: pre-tokenizer %s is not supported", type);
}

static te_llama_result te_llama__tok_template_ids(te_llama_tokenizer *t, const te_llama_json *j, size_t specials,
                                                  size_t name, int32_t *ids, int *n) {
    size_t s = 0, arr, k, e;
    char buf[256];
    (void)t;
    if (specials && j->tokens[name].type == TE_LLAMA_JSON_STRING && !te_llama_json_string(j, name, buf, sizeof buf, NULL))
        s = te_llama_json_get(j, specials, buf);
    arr = s ? te_llama_json_get(j, s, "ids") : 0;
    if (!arr || j->tokens[arr].type != TE_LLAMA_JSON_ARRAY)
        return te_llama__fail(TE_LLAMA_ERR_JSON_SCHEMA, "tokenizer.json: TemplateProcessing special token at byte %u has no ids", j->tokens[name].start);
    for (k = 0, e = arr + 1; k < j->tokens[arr].size; k++, e = j->tokens[e].next) {
        int64_t id;
        te_llama_result r = te_llama_json_int64(j, e, &id);
        if (r) return r;
        if (id < 0 || id >= (int64_t)TE_LLAMA__TOK_MAX_VOCAB)
            return te_llama__fail(TE_LLAMA_ERR_OUT_OF_RANGE, "tokenizer.json: TemplateProcessing id %lld", (long long)id);
        if (*n >= TE_LLAMA__TOK_MAX_TEMPLATE)
            return te_llama__fail(TE_LLAMA_ERR_UNSUPPORTED, "tokenizer.json: TemplateProcessing with more than %d special ids", TE_LLAMA__TOK_MAX_TEMPLATE);
        ids[(*n)++] = (int32_t)id;
    }
    return TE_LLAMA_OK;
}

static te_llama_result te_llama__tok_post(te_llama_tokenizer *t, const te_llama_json *j, size_t v, int depth) {
    char type[64];
    te_llama_result r;
    if (te_llama__json_null(j, v)) return TE_LLAMA_OK;
    if ((r = te_llama__json_type(j, v, "post_processor", type, sizeof type))) return r;
    if (strcmp(type, "Sequence") == 0 && depth < 4) {
        size_t arr = te_llama_json_get(j, v, "processors"), k, e;
        if (!arr || j->tokens[arr].type != TE_LLAMA_JSON_ARRAY)
            return te_llama__fail(TE_LLAMA_ERR_JSON_SCHEMA, "tokenizer.json: post_processor Sequence needs \"processors\"");
        for (k = 0, e = arr + 1; k < j->tokens[arr].size; k++, e = j->tokens[e].next)
            if ((r = te_llama__tok_post(t, j, e, depth + 1))) return r;
        return TE_LLAMA_OK;
    }
    if (strcmp(type, "ByteLevel") == 0) return TE_LLAMA_OK; /* only trims offsets: ids are unchanged */
    if (strcmp(type, "TemplateProcessing") == 0) {
        size_t single = te_llama_json_get(j, v, "single"), specials = te_llama_json_get(j, v, "special_tokens"), k, e;
        int seen_a = 0;
        if (t->n_pre || t->n_post)
            return te_llama__fail(TE_LLAMA_ERR_UNSUPPORTED, "tokenizer.json: two TemplateProcessing post-processors");
        if (!single || j->tokens[single].type != TE_LLAMA_JSON_ARRAY)
            return te_llama__fail(TE_LLAMA_ERR_JSON_SCHEMA, "tokenizer.json: TemplateProcessing needs a \"single\" array");
        for (k = 0, e = single + 1; k < j->tokens[single].size; k++, e = j->tokens[e].next) {
            size_t sp = te_llama_json_get(j, e, "SpecialToken"), sq = te_llama_json_get(j, e, "Sequence");
            if (sp) {
                if ((r = te_llama__tok_template_ids(t, j, specials, te_llama_json_get(j, sp, "id"), seen_a ? t->tmpl_post : t->tmpl_pre,
                                                    seen_a ? &t->n_post : &t->n_pre)))
                    return r;
            } else if (sq && !seen_a && te_llama_json_equals(j, te_llama_json_get(j, sq, "id"), "A")) {
                seen_a = 1;
            } else {
                return te_llama__fail(TE_LLAMA_ERR_UNSUPPORTED, "tokenizer.json: TemplateProcessing \"single\" item at byte %u", j->tokens[e].start);
            }
        }
        if (!seen_a) return te_llama__fail(TE_LLAMA_ERR_UNSUPPORTED, "tokenizer.json: TemplateProcessing without the sequence");
        return TE_LLAMA_OK;
    }
    return te_llama__fail(TE_LLAMA_ERR_UNSUPPORTED, "tokenizer.json: post-processor %s is not supported", type);
}

/* Added tokens sort by first byte, then longest first: the first that matches at a position is the longest. */
static int te_llama__added_cmp(const void *pa, const void *pb) {
    const te_llama__tok_added *a = (const te_llama__tok_added *)pa, *b = (const te_llama__tok_added *)pb;
    if (a->first != b->first) return a->first < b->first ? -1 : 1;
    if (a->len != b->len) return a->len > b->len ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id;
}

/* The model: BPE only. Reads vocab and merges; fills the id tables. */
static te_llama_result te_llama__tok_model(te_llama_tokenizer *t, const te_llama_json *j, size_t model, size_t added) {
    char type[64];
    size_t vocab, merges, k, e, cap, n_entries;
    int64_t max_id = -1;
    te_llama_result r;
    int flag;
    te_llama__bytes tmp;
    if (!model) return te_llama__fail(TE_LLAMA_ERR_JSON_SCHEMA, "tokenizer.json: no \"model\"");
    if ((r = te_llama__json_type(j, model, "model", type, sizeof type))) return r;
    if (strcmp(type, "BPE") != 0)
        return te_llama__fail(TE_LLAMA_ERR_UNSUPPORTED, "tokenizer.json: tokenizer model %s is not supported (only BPE)", type);
    {
        size_t v = te_llama_json_get(j, model, "dropout");
        double d = 0;
        if (!te_llama__json_null(j, v) && (te_llama_json_double(j, v, &d) || d != 0.0))
            return te_llama__fail(TE_LLAMA_ERR_UNSUPPORTED, "tokenizer.json: BPE dropout is not supported");
        v = te_llama_json_get(j, model, "continuing_subword_prefix");
        if (!te_llama__json_null(j, v) && !te_llama_json_equals(j, v, ""))
            return te_llama__fail(TE_LLAMA_ERR_UNSUPPORTED, "tokenizer.json: BPE continuing_subword_prefix is not supported");
        v = te_llama_json_get(j, model, "end_of_word_suffix");
        if (!te_llama__json_null(j, v) && !te_llama_json_equals(j, v, ""))
            return te_llama__fail(TE_LLAMA_ERR_UNSUPPORTED, "tokenizer.json: BPE end_of_word_suffix is not supported");
    }
    if ((r = te_llama__json_bool(j, te_llama_json_get(j, model, "fuse_unk"), 0, &t->fuse_unk, "fuse_unk"))) return r;
    if ((r = te_llama__json_bool(j, te_llama_json_get(j, model, "byte_fallback"), 0, &t->byte_fallback, "byte_fallback"))) return r;
    if ((r = te_llama__json_bool(j, te_llama_json_get(j, model, "ignore_merges"), 0, &t->ignore_merges, "ignore_merges"))) return r;
    vocab = te_llama_json_get(j, model, "vocab");
    merges = te_llama_json_get(j, model, "merges");
    if (!vocab || j->tokens[vocab].type != TE_LLAMA_JSON_OBJECT)
        return te_llama__fail(TE_LLAMA_ERR_JSON_SCHEMA, "tokenizer.json: BPE model needs a \"vocab\" object");
    if (!merges || j->tokens[merges].type != TE_LLAMA_JSON_ARRAY)
        return te_llama__fail(TE_LLAMA_ERR_JSON_SCHEMA, "tokenizer.json: BPE model needs a \"merges\" array");

    /* ids: the largest of the vocabulary and the added tokens sizes the tables */
    n_entries = j->tokens[vocab].size;
    for (k = 0, e = vocab + 1; k < n_entries; k++, e = j->tokens[e + 1].next) {
        int64_t id;
        if ((r = te_llama_json_int64(j, e + 1, &id))) return r;
        if (id < 0 || id >= (int64_t)TE_LLAMA__TOK_MAX_VOCAB)
            return te_llama__fail(TE_LLAMA_ERR_OUT_OF_RANGE, "tokenizer.json: vocabulary id %lld (byte %u)", (long long)id, j->tokens[e + 1].start);
        if (id > max_id) max_id = id;
    }
    if (added) {
        for (k = 0, e = added + 1; k < j->tokens[added].size; k++, e = j->tokens[e].next) {
            int64_t id;
            if ((r = te_llama_json_int64(j, te_llama_json_get(j, e, "id"), &id))) return r;
            if (id < 0 || id >= (int64_t)TE_LLAMA__TOK_MAX_VOCAB)
                return te_llama__fail(TE_LLAMA_ERR_OUT_OF_RANGE, "tokenizer.json: added token id %lld", (long long)id);
            if (id > max_id) max_id = id;
        }
    }
    t->n_vocab = (size_t)(max_id + 1);
    t->tok_off = (uint32_t *)te_llama__calloc(&t->allocator, t->n_vocab * sizeof *t->tok_off);
    t->tok_len = (uint32_t *)te_llama__calloc(&t->allocator, t->n_vocab * sizeof *t->tok_len);
    t->v_off = (uint32_t *)te_llama__calloc(&t->allocator, t->n_vocab * sizeof *t->v_off);
    t->v_len = (uint32_t *)te_llama__calloc(&t->allocator, t->n_vocab * sizeof *t->v_len);
    t->tok_flags = (uint8_t *)te_llama__calloc(&t->allocator, t->n_vocab);
    for (cap = 16; cap < 2 * n_entries + 2; cap *= 2) {}
    t->vocab_slots = (uint32_t *)te_llama__calloc(&t->allocator, cap * sizeof *t->vocab_slots);
    t->vocab_mask = cap - 1;
    if (!t->tok_off || !t->tok_len || !t->v_off || !t->v_len || !t->tok_flags || !t->vocab_slots)
        return te_llama__fail(TE_LLAMA_ERR_NOMEM, "tokenizer vocabulary (%zu ids)", t->n_vocab);
    for (k = 0, e = vocab + 1; k < n_entries; k++, e = j->tokens[e + 1].next) {
        int64_t id;
        uint32_t off, len;
        size_t i;
        te_llama_json_int64(j, e + 1, &id);
        if (t->tok_flags[id] & TE_LLAMA__TOK_MODEL)
            return te_llama__fail(TE_LLAMA_ERR_TOKENIZER, "tokenizer.json: vocabulary id %lld given twice (byte %u)", (long long)id, j->tokens[e].start);
        if ((r = te_llama__arena_json(t, j, e, &off, &len))) return r;
        t->tok_flags[id] |= TE_LLAMA__TOK_MODEL;
        t->v_off[id] = t->tok_off[id] = off;
        t->v_len[id] = t->tok_len[id] = len;
        i = (size_t)te_llama__hash_str(t->arena + off, len) & t->vocab_mask;
        while (t->vocab_slots[i]) i = (i + 1) & t->vocab_mask;
        t->vocab_slots[i] = (uint32_t)id + 1;
    }
    {
        size_t v = te_llama_json_get(j, model, "unk_token");
        t->unk_id = -1;
        if (!te_llama__json_null(j, v)) {
            char buf[256];
            size_t n;
            if (te_llama_json_string(j, v, buf, sizeof buf, &n))
                return te_llama__fail(TE_LLAMA_ERR_JSON_SCHEMA, "tokenizer.json: bad unk_token");
            t->unk_id = te_llama__vocab_find(t, buf, n);
            t->unk_missing = t->unk_id < 0;
        }
    }

    /* merges: (left id, right id) -> (rank, merged id), both spellings: "a b" and ["a", "b"] */
    t->n_merges = j->tokens[merges].size;
    for (cap = 16; cap < 2 * t->n_merges + 2; cap *= 2) {}
    t->merge_keys = (uint64_t *)te_llama__alloc(&t->allocator, cap * sizeof *t->merge_keys);
    t->merge_rank = (uint32_t *)te_llama__alloc(&t->allocator, cap * sizeof *t->merge_rank);
    t->merge_new = (uint32_t *)te_llama__alloc(&t->allocator, cap * sizeof *t->merge_new);
    if (!t->merge_keys || !t->merge_rank || !t->merge_new)
        return te_llama__fail(TE_LLAMA_ERR_NOMEM, "tokenizer merges (%zu)", t->n_merges);
    memset(t->merge_keys, 0xff, cap * sizeof *t->merge_keys);
    t->merge_mask = cap - 1;
    memset(&tmp, 0, sizeof tmp);
    r = TE_LLAMA_OK;
    for (k = 0, e = merges + 1; k < t->n_merges && !r; k++, e = j->tokens[e].next) {
        const te_llama_json_token *m = &j->tokens[e];
        size_t la, lb, n, sp;
        int32_t a, b, c;
        tmp.len = 0;
        if (m->type == TE_LLAMA_JSON_STRING) {
            n = m->escaped ? te_llama__json_decode(j->text, m->start, m->end, NULL, 0) : (size_t)(m->end - m->start);
            if (!te_llama__grow(&t->allocator, (void **)&tmp.data, &tmp.cap, n + 1, 1)) { r = te_llama__fail(TE_LLAMA_ERR_NOMEM, "tokenizer merges"); break; }
            if (m->escaped) te_llama__json_decode(j->text, m->start, m->end, tmp.data, n);
            else memcpy(tmp.data, j->text + m->start, n);
            for (sp = 0; sp < n && tmp.data[sp] != ' '; sp++) {}
            if (sp == n || memchr(tmp.data + sp + 1, ' ', n - sp - 1)) {
                r = te_llama__fail(TE_LLAMA_ERR_TOKENIZER, "tokenizer.json: merge %zu \"%.*s\" is not two tokens", k, (int)(n > 64 ? 64 : n), tmp.data);
                break;
            }
            la = sp;
            lb = n - sp - 1;
            memmove(tmp.data + sp, tmp.data + sp + 1, lb); /* "a b" -> "ab": a at 0, b at la */
        } else if (m->type == TE_LLAMA_JSON_ARRAY && m->size == 2) {
            const te_llama_json_token *x = &j->tokens[e + 1], *y = &j->tokens[x->next];
            if (x->type != TE_LLAMA_JSON_STRING || y->type != TE_LLAMA_JSON_STRING) {
                r = te_llama__fail(TE_LLAMA_ERR_JSON_SCHEMA, "tokenizer.json: merge %zu is not two strings", k);
                break;
            }
            la = te_llama__json_decode(j->text, x->start, x->end, NULL, 0);
            lb = te_llama__json_decode(j->text, y->start, y->end, NULL, 0);
            if (!te_llama__grow(&t->allocator, (void **)&tmp.data, &tmp.cap, la + lb + 1, 1)) { r = te_llama__fail(TE_LLAMA_ERR_NOMEM, "tokenizer merges"); break; }
            te_llama__json_decode(j->text, x->start, x->end, tmp.data, la);
            te_llama__json_decode(j->text, y->start, y->end, tmp.data + la, lb);
        } else {
            r = te_llama__fail(TE_LLAMA_ERR_JSON_SCHEMA, "tokenizer.json: merge %zu is neither \"a b\" nor [a, b] (byte %u)", k, m->start);
            break;
        }
        a = te_llama__vocab_find(t, tmp.data, la);
        b = te_llama__vocab_find(t, tmp.data + la, lb);
        c = te_llama__vocab_find(t, tmp.data, la + lb);
        if (a < 0 || b < 0 || c < 0) {
            r = te_llama__fail(TE_LLAMA_ERR_TOKENIZER, "tokenizer.json: merge %zu (\"%.*s\" + \"%.*s\") names a token not in the vocabulary", k,
                               (int)(la > 64 ? 64 : la), tmp.data, (int)(lb > 64 ? 64 : lb), tmp.data + la);
            break;
        }
        {
            size_t s = te_llama__merge_slot(t, a, b);
            t->merge_keys[s] = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b; /* a repeated merge takes the later rank, as in HF */
            t->merge_rank[s] = (uint32_t)k;
            t->merge_new[s] = (uint32_t)c;
        }
    }
    te_llama__free(&t->allocator, tmp.data);
    (void)flag;
    return r;
}

static te_llama_result te_llama__tok_added_tokens(te_llama_tokenizer *t, const te_llama_json *j, size_t arr) {
    size_t k, e, n = arr ? j->tokens[arr].size : 0, m = 0, b;
    te_llama__bytes norm, tmp;
    te_llama_result r = TE_LLAMA_OK;
    t->added = (te_llama__tok_added *)te_llama__calloc(&t->allocator, (n ? n : 1) * sizeof *t->added);
    if (!t->added) return te_llama__fail(TE_LLAMA_ERR_NOMEM, "added tokens (%zu)", n);
    memset(&norm, 0, sizeof norm);
    memset(&tmp, 0, sizeof tmp);
    for (k = 0, e = arr + 1; k < n && !r; k++, e = j->tokens[e].next) {
        te_llama__tok_added *a = &t->added[m];
        int64_t id;
        int single_word = 0, lstrip = 0, rstrip = 0, normalized = 0, special = 0;
        uint32_t off, len;
        if (j->tokens[e].type != TE_LLAMA_JSON_OBJECT) { r = te_llama__fail(TE_LLAMA_ERR_JSON_SCHEMA, "tokenizer.json: added token %zu is not an object", k); break; }
        if ((r = te_llama_json_int64(j, te_llama_json_get(j, e, "id"), &id))) break; /* range checked by the model */
        if ((r = te_llama__tok_member_str(t, j, e, "content", "added token", &off, &len))) break;
        if ((r = te_llama__json_bool(j, te_llama_json_get(j, e, "single_word"), 0, &single_word, "single_word")) ||
            (r = te_llama__json_bool(j, te_llama_json_get(j, e, "lstrip"), 0, &lstrip, "lstrip")) ||
            (r = te_llama__json_bool(j, te_llama_json_get(j, e, "rstrip"), 0, &rstrip, "rstrip")) ||
            (r = te_llama__json_bool(j, te_llama_json_get(j, e, "special"), 0, &special, "special")) ||
            (r = te_llama__json_bool(j, te_llama_json_get(j, e, "normalized"), !special, &normalized, "normalized")))
            break;
        if (single_word) { r = te_llama__fail(TE_LLAMA_ERR_UNSUPPORTED, "tokenizer.json: added token \"%.*s\" with single_word is not supported", (int)len, t->arena + off); break; }
        t->tok_off[id] = off;
        t->tok_len[id] = len;
        t->tok_flags[id] = (uint8_t)((t->tok_flags[id] & ~TE_LLAMA__TOK_SPECIAL) | TE_LLAMA__TOK_ADDED | (special ? TE_LLAMA__TOK_SPECIAL : 0));
        a->id = (int32_t)id;
        a->special = (uint8_t)special;
        a->lstrip = (uint8_t)lstrip;
        a->rstrip = (uint8_t)rstrip;
        a->normalized = (uint8_t)normalized;
        a->off = off;
        a->len = len;
        if (normalized && t->n_norm) { /* HF matches a normalized token's normalized content in normalized text */
            norm.len = 0;
            te_llama__normalize(t, t->arena + off, len, &norm, &tmp);
            if (norm.failed || tmp.failed) { r = te_llama__fail(TE_LLAMA_ERR_NOMEM, "added tokens"); break; }
            if ((r = te_llama__arena_put(t, norm.data, norm.len, &a->off))) break;
            a->len = (uint32_t)norm.len;
        }
        if (!a->len) continue; /* never matches */
        a->first = (unsigned char)t->arena[a->off];
        m++;
    }
    te_llama__free(&t->allocator, norm.data);
    te_llama__free(&t->allocator, tmp.data);
    if (r) return r;
    t->n_added = m;
    qsort(t->added, m, sizeof *t->added, te_llama__added_cmp);
    for (b = 0, k = 0; b <= 256; b++) {
        while (k < m && t->added[k].first < b) k++;
        t->added_first[b] = (uint32_t)k;
    }
    return TE_LLAMA_OK;
}

static te_llama_result te_llama__tok_build(te_llama_tokenizer *t, const te_llama_json *j) {
    size_t added, v;
    te_llama_result r;
    int b, n;
    if (!j->n_tokens || j->tokens[0].type != TE_LLAMA_JSON_OBJECT)
        return te_llama__fail(TE_LLAMA_ERR_JSON_SCHEMA, "tokenizer.json: not a JSON object");
    if (!te_llama__json_null(j, te_llama_json_get(j, 0, "truncation")))
        return te_llama__fail(TE_LLAMA_ERR_UNSUPPORTED, "tokenizer.json: truncation is not supported");
    if (!te_llama__json_null(j, te_llama_json_get(j, 0, "padding")))
        return te_llama__fail(TE_LLAMA_ERR_UNSUPPORTED, "tokenizer.json: padding is not supported");
    added = te_llama_json_get(j, 0, "added_tokens");
    if (te_llama__json_null(j, added)) added = 0;
    else if (j->tokens[added].type != TE_LLAMA_JSON_ARRAY)
        return te_llama__fail(TE_LLAMA_ERR_JSON_SCHEMA, "tokenizer.json: added_tokens is not an array");
    if ((r = te_llama__tok_normalizer(t, j, te_llama_json_get(j, 0, "normalizer"), 0))) return r;
    if ((r = te_llama__tok_model(t, j, te_llama_json_get(j, 0, "model"), added))) return r;
    if ((r = te_llama__tok_added_tokens(t, j, added))) return r;
    if ((r = te_llama__tok_pretokenizer(t, j, te_llama_json_get(j, 0, "pre_tokenizer"), 0))) return r;
    if ((r = te_llama__tok_decoder(t, j, te_llama_json_get(j, 0, "decoder"), 0))) return r;
    if ((r = te_llama__tok_post(t, j, te_llama_json_get(j, 0, "post_processor"), 0))) return r;
    for (b = 0, n = 0; b < 256; b++) {
        t->bl_map[b] = (uint16_t)(((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174) ? b : 256 + n++);
    }
    for (b = 0; b < 324; b++) t->bl_unmap[b] = -1;
    for (b = 0; b < 256; b++) t->bl_unmap[t->bl_map[b]] = (int16_t)b;
    for (b = 0; b < 512; b++) {
        char u[4];
        size_t len = te_llama__utf8_put(u, (uint32_t)b);
        t->char_ids[b] = te_llama__vocab_find(t, u, len);
    }
    for (b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->fallback_ids[b] = te_llama__vocab_find(t, name, 6);
    }
    t->bos_id = t->n_pre ? t->tmpl_pre[0] : -1;
    t->eos_id = -1;
    v = 0;
    (void)v;
    return TE_LLAMA_OK;
}

TE_LLAMA_API void te_llama_tokenizer_free(te_llama_tokenizer *t) {
    te_llama_allocator a;
    if (!t) return;
    a = t->allocator;
    te_llama__free(&a, t->arena);
    te_llama__free(&a, t->tok_off);
    te_llama__free(&a, t->tok_len);
    te_llama__free(&a, t->v_off);
    te_llama__free(&a, t->v_len);
    te_llama__free(&a, t->tok_flags);
    te_llama__free(&a, t->vocab_slots);
    te_llama__free(&a, t->merge_keys);
    te_llama__free(&a, t->merge_rank);
    te_llama__free(&a, t->merge_new);
    te_llama__free(&a, t->added);
    te_llama__free(&a, t);
}

TE_LLAMA_API te_llama_result te_llama_tokenizer_parse(const char *json, size_t len, const te_llama_allocator *allocator,
                                                      te_llama_tokenizer **out) {
    te_llama_json j;
    te_llama_tokenizer *t;
    te_llama_result r;
    if (!out || (!json && len)) return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_tokenizer_parse: NULL");
    *out = NULL;
    if ((r = te_llama_json_parse(json, len, allocator, &j))) return r;
    t = (te_llama_tokenizer *)te_llama__calloc(allocator, sizeof *t);
    if (!t) { te_llama_json_free(&j); return te_llama__fail(TE_LLAMA_ERR_NOMEM, "tokenizer"); }
    t->allocator = te_llama__allocator_copy(allocator);
    r = te_llama__tok_build(t, &j);
    te_llama_json_free(&j);
    if (r) { te_llama_tokenizer_free(t); return r; }
    *out = t;
    return TE_LLAMA_OK;
}

/* bos_token / eos_token of tokenizer_config.json: a string, or an object with "content". */
static int32_t te_llama__tok_config_token(const te_llama_tokenizer *t, const te_llama_json *j, const char *key) {
    size_t v = te_llama_json_get(j, 0, key);
    char buf[256];
    if (v && j->tokens[v].type == TE_LLAMA_JSON_OBJECT) v = te_llama_json_get(j, v, "content");
    if (!v || j->tokens[v].type != TE_LLAMA_JSON_STRING || te_llama_json_string(j, v, buf, sizeof buf, NULL)) return -1;
    return te_llama_tokenizer_token_id(t, buf);
}

TE_LLAMA_API te_llama_result te_llama_tokenizer_load(const char *path, const te_llama_allocator *allocator,
                                                     te_llama_tokenizer **out) {
    char file[4096], dir[4096];
    struct stat st;
    char *text = NULL;
    size_t len, n;
    te_llama_result r;
    if (!path || !out) return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_tokenizer_load: NULL");
    *out = NULL;
    n = strlen(path);
    if (n + 32 >= sizeof dir) return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "path too long: %s", path);
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        memcpy(dir, path, n + 1);
        if ((r = te_llama__join(file, sizeof file, dir, "tokenizer.json"))) return r;
    } else {
        const char *slash = strrchr(path, '/');
        memcpy(file, path, n + 1);
        if (slash) { memcpy(dir, path, (size_t)(slash - path)); dir[slash - path] = 0; }
        else memcpy(dir, ".", 2);
        if (slash == path) memcpy(dir, "/", 2);
    }
    if ((r = te_llama__read_file(file, allocator, (size_t)1 << 30, &text, &len))) return r;
    r = te_llama_tokenizer_parse(text, len, allocator, out);
    te_llama__free(allocator, text);
    if (r) return te_llama__wrap(r, "%s", file);
    {
        char cfg[4096];
        te_llama_json j;
        if (te_llama__join(cfg, sizeof cfg, dir, "tokenizer_config.json")) return TE_LLAMA_OK;
        r = te_llama__read_file(cfg, allocator, (size_t)64 << 20, &text, &len);
        if (r == TE_LLAMA_ERR_NOT_FOUND) return TE_LLAMA_OK;
        if (!r) {
            if ((r = te_llama_json_parse(text, len, allocator, &j))) te_llama__wrap(r, "%s", cfg);
            if (!r && (!j.n_tokens || j.tokens[0].type != TE_LLAMA_JSON_OBJECT))
                r = te_llama__fail(TE_LLAMA_ERR_JSON_SCHEMA, "%s: not a JSON object", cfg);
            if (!r) {
                int32_t bos = te_llama__tok_config_token(*out, &j, "bos_token"), eos = te_llama__tok_config_token(*out, &j, "eos_token");
                if (bos >= 0) (*out)->bos_id = bos;
                if (eos >= 0) (*out)->eos_id = eos;
            }
            if (j.tokens) te_llama_json_free(&j);
            te_llama__free(allocator, text);
        }
        if (r) { te_llama_tokenizer_free(*out); *out = NULL; }
        return r;
    }
}

TE_LLAMA_API int32_t te_llama_tokenizer_token_id(const te_llama_tokenizer *t, const char *token) {
    size_t k, n;
    if (!t || !token) return -1;
    n = strlen(token);
    for (k = 0; k < t->n_added; k++) {
        int32_t id = t->added[k].id;
        if (t->tok_len[id] == n && memcmp(t->arena + t->tok_off[id], token, n) == 0) return id;
    }
    return te_llama__vocab_find(t, token, n);
}
TE_LLAMA_API const char *te_llama_tokenizer_token(const te_llama_tokenizer *t, int32_t id, size_t *len) {
    if (!t || id < 0 || (size_t)id >= t->n_vocab || !t->tok_flags[id]) return NULL;
    if (len) *len = t->tok_len[id];
    return t->arena + t->tok_off[id];
}
TE_LLAMA_API size_t te_llama_tokenizer_vocab_size(const te_llama_tokenizer *t) { return t ? t->n_vocab : 0; }
TE_LLAMA_API int te_llama_tokenizer_is_special(const te_llama_tokenizer *t, int32_t id) {
    return t && id >= 0 && (size_t)id < t->n_vocab && (t->tok_flags[id] & TE_LLAMA__TOK_SPECIAL) != 0;
}
TE_LLAMA_API int32_t te_llama_tokenizer_bos_id(const te_llama_tokenizer *t) { return t ? t->bos_id : -1; }
TE_LLAMA_API int32_t te_llama_tokenizer_eos_id(const te_llama_tokenizer *t) { return t ? t->eos_id : -1; }

/* ------------------------------------------------------------------------------------------------- encoding */

/* Normalizer steps, in order, on s into out (tmp: scratch). Failures stick in out->failed / tmp->failed. */
static void te_llama__normalize(const te_llama_tokenizer *t, const char *s, size_t n, te_llama__bytes *out,
                                te_llama__bytes *tmp) {
    const te_llama_allocator *a = &t->allocator;
    te_llama__bytes *bufs[2];
    const char *cur = s;
    size_t cn = n;
    int i, w = 0;
    bufs[0] = out;
    bufs[1] = tmp;
    for (i = 0; i < t->n_norm; i++, w ^= 1) {
        const te_llama__tok_step *st = &t->norm[i];
        te_llama__bytes *d = bufs[w];
        d->len = 0;
        if (st->kind == TE_LLAMA__STEP_PREPEND) {
            if (cn) te_llama__bytes_put(a, d, t->arena + st->a_off, st->a_len); /* HF prepends to non-empty text only */
            te_llama__bytes_put(a, d, cur, cn);
        } else { /* REPLACE: every non-overlapping occurrence, left to right */
            const char *pat = t->arena + st->a_off;
            size_t k = 0, run = 0, pl = st->a_len;
            while (cn >= pl && k <= cn - pl) {
                if (cur[k] == pat[0] && memcmp(cur + k, pat, pl) == 0) {
                    te_llama__bytes_put(a, d, cur + run, k - run);
                    te_llama__bytes_put(a, d, t->arena + st->b_off, st->b_len);
                    k += pl;
                    run = k;
                } else {
                    k++;
                }
            }
            te_llama__bytes_put(a, d, cur + run, cn - run);
        }
        if (d->failed) return;
        cur = d->data ? d->data : "";
        cn = d->len;
    }
    if (cur != out->data) {
        out->len = 0;
        te_llama__bytes_put(a, out, cur, cn);
    }
}

/* The Llama 3 pre-tokenizer regex, by hand. At p < n in valid UTF-8, the end of the match there (the regex
   matches at every position; the alternatives are tried in order, each with its backtracking worked out):
     1 (?i:'s|'t|'re|'ve|'m|'ll|'d)     case-insensitive as Oniguruma folds: 'ſ is 's
     2 [^\r\n\p{L}\p{N}]?\p{L}+
     3 \p{N}{1,3}
     4  ?[^\s\p{L}\p{N}]+[\r\n]*
     5 \s*[\r\n]+                      white space up to and including its last \r or \n
     6 \s+(?!\S)                       white space to the end, or all of it but its last character
     7 \s+                             (a single white space character before a non-space) */
static uint32_t te_llama__fold_ascii(uint32_t c) {
    if (c >= 'A' && c <= 'Z') return c | 0x20;
    return c == 0x17f ? 's' : c;
}
static size_t te_llama__llama3_match(const char *text, size_t n, size_t p) {
    const unsigned char *s = (const unsigned char *)text;
    size_t cl, l2, q;
    uint32_t c = te_llama__utf8_dec(s + p, &cl), d;
    unsigned cc = te_llama__uclass(c);
    if (c == '\'' && p + 1 < n) {
        d = te_llama__fold_ascii(te_llama__utf8_dec(s + p + 1, &l2));
        if (d == 's' || d == 't' || d == 'm' || d == 'd') return p + 1 + l2;
        if ((d == 'r' || d == 'v' || d == 'l') && p + 1 + l2 < n) {
            size_t l3;
            uint32_t e = te_llama__fold_ascii(te_llama__utf8_dec(s + p + 1 + l2, &l3));
            if ((d != 'l' && e == 'e') || (d == 'l' && e == 'l')) return p + 1 + l2 + l3;
        }
    }
    q = p;
    if (!(cc & TE_LLAMA__UL) && c != '\r' && c != '\n' && !(cc & TE_LLAMA__UN) && p + cl < n &&
        (te_llama__uclass(te_llama__utf8_dec(s + p + cl, &l2)) & TE_LLAMA__UL))
        q = p + cl; /* 2, with the optional leading character */
    if (q > p || (cc & TE_LLAMA__UL)) {
        while (q < n && (te_llama__uclass(te_llama__utf8_dec(s + q, &l2)) & TE_LLAMA__UL)) q += l2;
        return q;
    }
    if (cc & TE_LLAMA__UN) { /* 3 */
        int k;
        for (q = p, k = 0; k < 3 && q < n && (te_llama__uclass(te_llama__utf8_dec(s + q, &l2)) & TE_LLAMA__UN); k++) q += l2;
        return q;
    }
    q = p;
    if (c == ' ' && p + 1 < n && !te_llama__uclass(te_llama__utf8_dec(s + p + 1, &l2))) q = p + 1;
    if (q > p || !cc) { /* 4 */
        while (q < n && !te_llama__uclass(te_llama__utf8_dec(s + q, &l2))) q += l2;
        while (q < n && (s[q] == '\r' || s[q] == '\n')) q++;
        return q;
    }
    { /* c is white space: 5, 6, 7 */
        size_t last_nl = 0, last_start = p, chars = 0;
        for (q = p; q < n && (te_llama__uclass(d = te_llama__utf8_dec(s + q, &l2)) & TE_LLAMA__UWS); q += l2, chars++) {
            if (d == '\r' || d == '\n') last_nl = q + 1;
            last_start = q;
        }
        if (last_nl) return last_nl;
        if (q == n || chars < 2) return q;
        return last_start;
    }
}

typedef struct te_llama__sym {
    int32_t id, prev, next;
    int32_t alive;
} te_llama__sym;

typedef struct te_llama__merge_ent {
    uint32_t rank, pos, new_id;
} te_llama__merge_ent;

/* Encoding scratch, one per call: a tokenizer stays read-only, so threads may share it. */
typedef struct te_llama__work {
    const te_llama_tokenizer *t;
    int32_t *ids;
    size_t n_ids, cap_ids;
    te_llama__sym *syms;
    size_t cap_syms;
    te_llama__merge_ent *heap;
    size_t n_heap, cap_heap;
    te_llama__bytes norm, tmp, mapped, text;
    int match_special;
} te_llama__work;

static void te_llama__work_free(te_llama__work *w) {
    const te_llama_allocator *a = &w->t->allocator;
    te_llama__free(a, w->ids);
    te_llama__free(a, w->syms);
    te_llama__free(a, w->heap);
    te_llama__free(a, w->norm.data);
    te_llama__free(a, w->tmp.data);
    te_llama__free(a, w->mapped.data);
    te_llama__free(a, w->text.data);
}

static te_llama_result te_llama__push_id(te_llama__work *w, int32_t id) {
    if (w->n_ids == w->cap_ids && !te_llama__grow(&w->t->allocator, (void **)&w->ids, &w->cap_ids, w->n_ids + 1, sizeof *w->ids))
        return te_llama__fail(TE_LLAMA_ERR_NOMEM, "token ids (%zu)", w->n_ids + 1);
    w->ids[w->n_ids++] = id;
    return TE_LLAMA_OK;
}

static int te_llama__merge_less(const te_llama__merge_ent *a, const te_llama__merge_ent *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

/* Queue the merge of symbol pos with its right neighbour, if there is one. */
static int te_llama__heap_push_pair(te_llama__work *w, int32_t pos) {
    const te_llama_tokenizer *t = w->t;
    size_t s = te_llama__merge_slot(t, w->syms[pos].id, w->syms[w->syms[pos].next].id), i;
    te_llama__merge_ent e;
    if (t->merge_keys[s] == UINT64_MAX) return 1;
    if (w->n_heap == w->cap_heap && !te_llama__grow(&t->allocator, (void **)&w->heap, &w->cap_heap, w->n_heap + 1, sizeof *w->heap))
        return 0;
    e.rank = t->merge_rank[s];
    e.pos = (uint32_t)pos;
    e.new_id = t->merge_new[s];
    for (i = w->n_heap++; i > 0 && te_llama__merge_less(&e, &w->heap[(i - 1) / 2]); i = (i - 1) / 2) w->heap[i] = w->heap[(i - 1) / 2];
    w->heap[i] = e;
    return 1;
}
/* Sift the entry at i down to its place. */
static void te_llama__heap_down(te_llama__work *w, size_t i) {
    te_llama__merge_ent e = w->heap[i];
    size_t n = w->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && te_llama__merge_less(&w->heap[c + 1], &w->heap[c])) c++;
        if (!te_llama__merge_less(&w->heap[c], &e)) break;
        w->heap[i] = w->heap[c];
        i = c;
    }
    w->heap[i] = e;
}
static te_llama__merge_ent te_llama__heap_pop(te_llama__work *w) {
    te_llama__merge_ent top = w->heap[0];
    w->heap[0] = w->heap[--w->n_heap];
    if (w->n_heap) te_llama__heap_down(w, 0);
    return top;
}

/* BPE of one pre-token s (valid UTF-8, in the vocabulary's spelling), as HF's BPE::tokenize: the whole word
   when ignore_merges finds it; else one symbol per character (byte fallback, unk), then merges, lowest rank
   first and leftmost among equals, with HF's queue (a queued merge is checked against the merged id). */
static te_llama_result te_llama__bpe_word(te_llama__work *w, const char *s, size_t n) {
    const te_llama_tokenizer *t = w->t;
    size_t i, nsym = 0;
    int unk = 0;
    int32_t id, p;
    te_llama__sym *sy;
    if (!n) return TE_LLAMA_OK;
    if (t->ignore_merges && (id = te_llama__vocab_find(t, s, n)) >= 0) return te_llama__push_id(w, id);
    if (n > 0x7fffffff) return te_llama__fail(TE_LLAMA_ERR_OUT_OF_RANGE, "a pre-token of %zu bytes", n);
    if (!te_llama__grow(&t->allocator, (void **)&w->syms, &w->cap_syms, n, sizeof *w->syms))
        return te_llama__fail(TE_LLAMA_ERR_NOMEM, "BPE symbols (%zu)", n);
    sy = w->syms;
#define TE_LLAMA__ADD_SYM(x)                                                                                  \
    do {                                                                                                      \
        sy[nsym].id = (x); sy[nsym].prev = (int32_t)nsym - 1; sy[nsym].next = (int32_t)nsym + 1;              \
        sy[nsym].alive = 1; nsym++;                                                                           \
    } while (0)
    for (i = 0; i < n;) {
        size_t cl;
        uint32_t cp = te_llama__utf8_dec((const unsigned char *)s + i, &cl);
        id = cp < 512 ? t->char_ids[cp] : te_llama__vocab_find(t, s + i, cl);
        if (id >= 0) {
            if (unk) { TE_LLAMA__ADD_SYM(t->unk_id); unk = 0; }
            TE_LLAMA__ADD_SYM(id);
        } else {
            size_t k;
            int ok = t->byte_fallback;
            for (k = 0; ok && k < cl; k++) ok = t->fallback_ids[(unsigned char)s[i + k]] >= 0;
            if (ok) { /* as HF: a pending unk is not flushed first */
                for (k = 0; k < cl; k++) TE_LLAMA__ADD_SYM(t->fallback_ids[(unsigned char)s[i + k]]);
            } else if (t->unk_missing) {
                return te_llama__fail(TE_LLAMA_ERR_TOKENIZER, "the unk token is not in the vocabulary");
            } else if (t->unk_id >= 0) {
                if (unk && !t->fuse_unk) TE_LLAMA__ADD_SYM(t->unk_id);
                unk = 1;
            } /* no unk token: the character is dropped, as in HF */
        }
        i += cl;
    }
    if (unk) TE_LLAMA__ADD_SYM(t->unk_id);
#undef TE_LLAMA__ADD_SYM
    if (!nsym) return TE_LLAMA_OK;
    sy[nsym - 1].next = -1;
    w->n_heap = 0;
    if (!te_llama__grow(&t->allocator, (void **)&w->heap, &w->cap_heap, nsym, sizeof *w->heap))
        return te_llama__fail(TE_LLAMA_ERR_NOMEM, "BPE queue (%zu)", nsym);
    for (p = 0; p + 1 < (int32_t)nsym; p++) { /* the pairs in position order, then heapified in O(n) */
        size_t s2 = te_llama__merge_slot(t, sy[p].id, sy[p + 1].id);
        if (t->merge_keys[s2] == UINT64_MAX) continue;
        w->heap[w->n_heap].rank = t->merge_rank[s2];
        w->heap[w->n_heap].pos = (uint32_t)p;
        w->heap[w->n_heap].new_id = t->merge_new[s2];
        w->n_heap++;
    }
    for (i = w->n_heap / 2; i-- > 0;) te_llama__heap_down(w, i);
    while (w->n_heap) {
        te_llama__merge_ent top = te_llama__heap_pop(w);
        int32_t q;
        size_t slot;
        p = (int32_t)top.pos;
        if (!sy[p].alive || sy[p].next < 0) continue;
        q = sy[p].next;
        slot = te_llama__merge_slot(t, sy[p].id, sy[q].id);
        if (t->merge_keys[slot] == UINT64_MAX || t->merge_new[slot] != top.new_id) continue;
        sy[p].id = (int32_t)top.new_id;
        sy[q].alive = 0;
        sy[p].next = sy[q].next;
        if (sy[q].next >= 0) sy[sy[q].next].prev = p;
        if ((sy[p].prev >= 0 && !te_llama__heap_push_pair(w, sy[p].prev)) || (sy[p].next >= 0 && !te_llama__heap_push_pair(w, p)))
            return te_llama__fail(TE_LLAMA_ERR_NOMEM, "BPE queue");
    }
    for (p = 0; p >= 0; p = sy[p].next) {
        te_llama_result r = te_llama__push_id(w, sy[p].id);
        if (r) return r;
    }
    return TE_LLAMA_OK;
}

/* One pre-token: through the ByteLevel alphabet when that pre-tokenizer is on, then BPE. */
static te_llama_result te_llama__encode_word(te_llama__work *w, const char *s, size_t n) {
    const te_llama_tokenizer *t = w->t;
    size_t i;
    char *m;
    if (!t->byte_level) return te_llama__bpe_word(w, s, n);
    if (n > ((size_t)-1) / 2 - 1 || !te_llama__grow(&t->allocator, (void **)&w->mapped.data, &w->mapped.cap, 2 * n + 1, 1))
        return te_llama__fail(TE_LLAMA_ERR_NOMEM, "byte-level pre-token (%zu bytes)", n);
    for (i = 0, m = w->mapped.data; i < n; i++) {
        unsigned cp = t->bl_map[(unsigned char)s[i]];
        if (cp < 0x80) *m++ = (char)cp;
        else { *m++ = (char)(0xc0 | (cp >> 6)); *m++ = (char)(0x80 | (cp & 0x3f)); }
    }
    return te_llama__bpe_word(w, w->mapped.data, (size_t)(m - w->mapped.data));
}

/* Normalized text between added tokens: pre-tokenize, then each pre-token. */
static te_llama_result te_llama__encode_piece(te_llama__work *w, const char *s, size_t n) {
    size_t p, e;
    te_llama_result r;
    if (!w->t->split_llama3) return te_llama__encode_word(w, s, n);
    for (p = 0; p < n; p = e) {
        e = te_llama__llama3_match(s, n, p);
        if ((r = te_llama__encode_word(w, s + p, e - p))) return r;
    }
    return TE_LLAMA_OK;
}

static te_llama_result te_llama__encode_split(te_llama__work *w, const char *s, size_t n, int normalized_pass);

/* Text between added tokens of the first pass: normalize, then look for normalized added tokens. */
static te_llama_result te_llama__encode_gap(te_llama__work *w, const char *s, size_t n, int normalized_pass) {
    const te_llama_tokenizer *t = w->t;
    if (normalized_pass) return te_llama__encode_piece(w, s, n);
    if (t->n_norm) {
        w->norm.len = 0;
        te_llama__normalize(t, s, n, &w->norm, &w->tmp);
        if (w->norm.failed || w->tmp.failed) return te_llama__fail(TE_LLAMA_ERR_NOMEM, "normalizing %zu bytes", n);
        s = w->norm.data ? w->norm.data : "";
        n = w->norm.len;
    }
    return te_llama__encode_split(w, s, n, 1);
}

static int te_llama__is_ws_at(const unsigned char *s, size_t n, size_t i, size_t *len) {
    size_t bad;
    int cut;
    size_t k = te_llama__utf8_scan(s + i, n - i, &bad, &cut);
    *len = k;
    return k && (te_llama__uclass(te_llama__utf8_dec(s + i, &k)) & TE_LLAMA__UWS);
}

/* Split out the added tokens of one pass (HF's two: tokens with normalized false on the raw text, then tokens
   with normalized true on the normalized text), leftmost-longest as HF's Aho-Corasick; lstrip and rstrip take
   the white space beside a token into it. The text between goes on to encode_gap. */
static te_llama_result te_llama__encode_split(te_llama__work *w, const char *s, size_t n, int normalized_pass) {
    const te_llama_tokenizer *t = w->t;
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, gap = 0, k;
    te_llama_result r;
    while (i < n) {
        const te_llama__tok_added *a = NULL;
        size_t start, stop, cl;
        for (k = t->added_first[u[i]]; k < t->added_first[u[i] + 1]; k++) {
            const te_llama__tok_added *c = &t->added[k];
            if (c->normalized != normalized_pass || (c->special && !w->match_special)) continue;
            if (c->len <= n - i && memcmp(t->arena + c->off, s + i, c->len) == 0) { a = c; break; }
        }
        if (!a) { i++; continue; }
        start = i;
        stop = i + a->len;
        if (a->lstrip) {
            while (start > gap) {
                size_t b = start - 1;
                while (b > gap && (u[b] & 0xc0) == 0x80) b--;
                if (!te_llama__is_ws_at(u, n, b, &cl) || b + cl != start) break;
                start = b;
            }
        }
        if (a->rstrip)
            while (stop < n && te_llama__is_ws_at(u, n, stop, &cl)) stop += cl;
        if ((r = te_llama__encode_gap(w, s + gap, start - gap, normalized_pass))) return r;
        if ((r = te_llama__push_id(w, a->id))) return r;
        gap = i = stop;
    }
    return te_llama__encode_gap(w, s + gap, n - gap, normalized_pass);
}

/* Whole text: made valid UTF-8 (from_utf8_lossy), then split and encoded. */
static te_llama_result te_llama__encode_text(te_llama__work *w, const char *text, size_t len) {
    const unsigned char *u = (const unsigned char *)text;
    size_t i = 0, bad;
    int cut;
    while (i < len) {
        size_t k = u[i] < 0x80 ? 1 : te_llama__utf8_scan(u + i, len - i, &bad, &cut);
        if (!k) break;
        i += k;
    }
    if (i < len) {
        w->text.len = 0;
        te_llama__bytes_put_lossy(&w->t->allocator, &w->text, text, len);
        if (w->text.failed) return te_llama__fail(TE_LLAMA_ERR_NOMEM, "text (%zu bytes)", len);
        text = w->text.data;
        len = w->text.len;
    }
    return te_llama__encode_split(w, text ? text : "", len, 0);
}

static te_llama_result te_llama__encode_finish(te_llama__work *w, te_llama_result r, int32_t **ids, size_t *n_ids) {
    if (!r && !w->ids && !te_llama__grow(&w->t->allocator, (void **)&w->ids, &w->cap_ids, 1, sizeof *w->ids))
        r = te_llama__fail(TE_LLAMA_ERR_NOMEM, "token ids");
    if (!r) {
        *ids = w->ids;
        *n_ids = w->n_ids;
        w->ids = NULL;
    }
    te_llama__work_free(w);
    return r;
}

TE_LLAMA_API te_llama_result te_llama_tokenizer_encode(const te_llama_tokenizer *t, const char *text, size_t len,
                                                       int add_special, int32_t **ids, size_t *n_ids) {
    te_llama__work w;
    te_llama_result r = TE_LLAMA_OK;
    int k;
    if (!t || !ids || !n_ids || (!text && len)) return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_tokenizer_encode: NULL");
    *ids = NULL;
    *n_ids = 0;
    memset(&w, 0, sizeof w);
    w.t = t;
    w.match_special = 1;
    for (k = 0; add_special && k < t->n_pre && !r; k++) r = te_llama__push_id(&w, t->tmpl_pre[k]);
    if (!r) r = te_llama__encode_text(&w, text, len);
    for (k = 0; add_special && k < t->n_post && !r; k++) r = te_llama__push_id(&w, t->tmpl_post[k]);
    return te_llama__encode_finish(&w, r, ids, n_ids);
}

TE_LLAMA_API void te_llama_tokenizer_free_ids(const te_llama_tokenizer *t, int32_t *ids) {
    te_llama__free(t ? &t->allocator : NULL, ids);
}
TE_LLAMA_API void te_llama_tokenizer_free_text(const te_llama_tokenizer *t, char *text) {
    te_llama__free(t ? &t->allocator : NULL, text);
}

/* ------------------------------------------------------------------------------------------------- decoding */

/* A list of strings back to back in one buffer, as HF's decoders pass Vec<String> along. */
typedef struct te_llama__strs {
    te_llama__bytes b;
    size_t *end;
    size_t n, cap;
    int failed;
} te_llama__strs;

static void te_llama__strs_cut(const te_llama_allocator *a, te_llama__strs *l) {
    if (l->failed || l->b.failed) { l->failed = 1; return; }
    if (!te_llama__grow(a, (void **)&l->end, &l->cap, l->n + 1, sizeof *l->end)) { l->failed = 1; return; }
    l->end[l->n++] = l->b.len;
}
static void te_llama__strs_clear(te_llama__strs *l) { l->b.len = 0; l->n = 0; l->failed = 0; l->b.failed = 0; }

/* The ByteLevel decoder's bytes of one token: each character back to its byte, or the token's own bytes when
   a character is outside the alphabet. */
static void te_llama__byte_level_bytes(const te_llama_tokenizer *t, const char *s, size_t n, te_llama__bytes *out) {
    size_t i, cl, start = out->len;
    for (i = 0; i < n; i += cl) {
        uint32_t cp = te_llama__utf8_dec((const unsigned char *)s + i, &cl);
        if (cp >= 324 || t->bl_unmap[cp] < 0) { out->len = start; te_llama__bytes_put(&t->allocator, out, s, n); return; }
        {
            char b = (char)t->bl_unmap[cp];
            te_llama__bytes_put(&t->allocator, out, &b, 1);
        }
    }
}
static int te_llama__byte_token(const char *s, size_t n) { /* <0xNN> -> NN, else -1 */
    int hi, lo;
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    hi = te_llama__hex(s[3]);
    lo = te_llama__hex(s[4]);
    return (hi < 0 || lo < 0) ? -1 : hi * 16 + lo;
}
static int te_llama__utf8_valid(const char *s, size_t n) {
    size_t i = 0, bad;
    int cut;
    while (i < n) {
        size_t k = te_llama__utf8_scan((const unsigned char *)s + i, n - i, &bad, &cut);
        if (!k) return 0;
        i += k;
    }
    return 1;
}

/* One decoder step over the whole list: in -> out. */
static void te_llama__decode_step(const te_llama_tokenizer *t, const te_llama__tok_step *st, const te_llama__strs *in,
                                  te_llama__strs *out, te_llama__bytes *tmp) {
    const te_llama_allocator *a = &t->allocator;
    size_t i, begin;
    te_llama__strs_clear(out);
    if (st->kind == TE_LLAMA__STEP_BYTE_LEVEL) { /* all tokens' bytes, then from_utf8_lossy: one string */
        tmp->len = 0;
        for (i = 0, begin = 0; i < in->n; begin = in->end[i++]) te_llama__byte_level_bytes(t, in->b.data + begin, in->end[i] - begin, tmp);
        if (tmp->failed) { out->failed = 1; return; }
        te_llama__bytes_put_lossy(a, &out->b, tmp->data ? tmp->data : "", tmp->len);
        te_llama__strs_cut(a, out);
        return;
    }
    if (st->kind == TE_LLAMA__STEP_FUSE) {
        te_llama__bytes_put(a, &out->b, in->b.data ? in->b.data : "", in->b.len);
        te_llama__strs_cut(a, out);
        return;
    }
    tmp->len = 0; /* ByteFallback: pending bytes */
    for (i = 0, begin = 0; i <= in->n; begin = in->end[i++]) {
        const char *s = i < in->n ? in->b.data + begin : "";
        size_t n = i < in->n ? in->end[i] - begin : 0, k;
        if (st->kind == TE_LLAMA__STEP_BYTE_FALLBACK) {
            int byte = i < in->n ? te_llama__byte_token(s, n) : -1;
            if (byte >= 0) { char c = (char)byte; te_llama__bytes_put(a, tmp, &c, 1); continue; }
            if (tmp->len) {
                if (te_llama__utf8_valid(tmp->data, tmp->len)) {
                    te_llama__bytes_put(a, &out->b, tmp->data, tmp->len);
                    te_llama__strs_cut(a, out);
                } else {
                    for (k = 0; k < tmp->len; k++) { te_llama__bytes_put(a, &out->b, "\xef\xbf\xbd", 3); te_llama__strs_cut(a, out); }
                }
                tmp->len = 0;
            }
            if (i == in->n) break;
            te_llama__bytes_put(a, &out->b, s, n);
        } else if (i == in->n) {
            break;
        } else if (st->kind == TE_LLAMA__STEP_REPLACE) {
            const char *pat = t->arena + st->a_off;
            size_t pl = st->a_len, run = 0;
            for (k = 0; n >= pl && k <= n - pl;) {
                if (s[k] == pat[0] && memcmp(s + k, pat, pl) == 0) {
                    te_llama__bytes_put(a, &out->b, s + run, k - run);
                    te_llama__bytes_put(a, &out->b, t->arena + st->b_off, st->b_len);
                    k += pl;
                    run = k;
                } else {
                    k++;
                }
            }
            te_llama__bytes_put(a, &out->b, s + run, n - run);
        } else { /* STRIP: up to start leading and stop trailing copies of the character */
            const char *c = t->arena + st->a_off;
            size_t cl = st->a_len, lo = 0, hi = n;
            int m;
            for (m = 0; m < st->start && hi - lo >= cl && memcmp(s + lo, c, cl) == 0; m++) lo += cl;
            for (m = 0; m < st->stop && hi - lo >= cl && memcmp(s + hi - cl, c, cl) == 0; m++) hi -= cl;
            te_llama__bytes_put(a, &out->b, s + lo, hi - lo);
        }
        te_llama__strs_cut(a, out);
    }
    if (tmp->failed) out->failed = 1;
}

TE_LLAMA_API te_llama_result te_llama_tokenizer_decode(const te_llama_tokenizer *t, const int32_t *ids, size_t n,
                                                       int skip_special, char **text, size_t *len) {
    te_llama__strs l[2];
    te_llama__bytes tmp;
    const te_llama_allocator *a;
    size_t i;
    int k, cur = 0;
    te_llama_result r = TE_LLAMA_OK;
    if (!t || !text || (!ids && n)) return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_tokenizer_decode: NULL");
    *text = NULL;
    if (len) *len = 0;
    a = &t->allocator;
    memset(l, 0, sizeof l);
    memset(&tmp, 0, sizeof tmp);
    for (i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || (size_t)id >= t->n_vocab || !t->tok_flags[id]) continue; /* HF skips ids it does not know */
        if (skip_special && (t->tok_flags[id] & TE_LLAMA__TOK_SPECIAL)) continue;
        if (!t->has_decoder && l[0].n) te_llama__bytes_put(a, &l[0].b, " ", 1); /* no decoder: joined by spaces */
        te_llama__bytes_put(a, &l[0].b, t->arena + t->tok_off[id], t->tok_len[id]);
        te_llama__strs_cut(a, &l[0]);
    }
    for (k = 0; k < t->n_dec && !l[cur].failed; k++, cur ^= 1) te_llama__decode_step(t, &t->dec[k], &l[cur], &l[cur ^ 1], &tmp);
    te_llama__bytes_put(a, &l[cur].b, "", 0); /* NUL-terminated even when empty */
    if (l[cur].failed || l[cur].b.failed || tmp.failed) r = te_llama__fail(TE_LLAMA_ERR_NOMEM, "decoding %zu ids", n);
    if (!r) {
        *text = l[cur].b.data;
        if (len) *len = l[cur].b.len;
        l[cur].b.data = NULL;
    }
    te_llama__free(a, l[0].b.data);
    te_llama__free(a, l[1].b.data);
    te_llama__free(a, l[0].end);
    te_llama__free(a, l[1].end);
    te_llama__free(a, tmp.data);
    return r;
}

/* Streaming: one token through the decoder chain on its own (ByteFallback and ByteLevel give raw bytes, a
   Strip after Fuse acts on the start of the whole stream), then complete UTF-8 characters out, an incomplete
   one kept in the state. Invalid bytes become one U+FFFD per maximal invalid subpart (HF's ByteFallback gives
   one per byte: the two differ only on invalid UTF-8). */
TE_LLAMA_API te_llama_result te_llama_tokenizer_decode_piece(const te_llama_tokenizer *t, te_llama_decode_state *state,
                                                             int32_t id, int skip_special, char *out, size_t cap,
                                                             size_t *len) {
    const te_llama_allocator *a;
    te_llama__bytes cur, nxt, text;
    const te_llama__tok_step *strip = NULL;
    te_llama_decode_state st;
    te_llama_result r = TE_LLAMA_OK;
    size_t i;
    int k, fused = 0;
    if (!t || !state || !len || (!out && cap)) return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_tokenizer_decode_piece: NULL");
    *len = 0;
    if (id < 0 || (size_t)id >= t->n_vocab || !t->tok_flags[id]) return TE_LLAMA_OK;
    if (skip_special && (t->tok_flags[id] & TE_LLAMA__TOK_SPECIAL)) return TE_LLAMA_OK;
    a = &t->allocator;
    st = *state;
    memset(&cur, 0, sizeof cur);
    memset(&nxt, 0, sizeof nxt);
    memset(&text, 0, sizeof text);
    te_llama__bytes_put(a, &cur, st.pending, st.n_pending);
    if (!t->has_decoder && st.started) te_llama__bytes_put(a, &cur, " ", 1);
    i = cur.len; /* this token's bytes start here */
    te_llama__bytes_put(a, &cur, t->arena + t->tok_off[id], t->tok_len[id]);
    for (k = 0; k < t->n_dec && !cur.failed; k++) {
        const te_llama__tok_step *s = &t->dec[k];
        const char *p = cur.data + i;
        size_t n = cur.len - i, j, run;
        nxt.len = 0;
        te_llama__bytes_put(a, &nxt, cur.data, i);
        if (s->kind == TE_LLAMA__STEP_FUSE) { fused = 1; continue; }
        if (s->kind == TE_LLAMA__STEP_STRIP && fused) { if (!strip) strip = s; continue; }
        if (s->kind == TE_LLAMA__STEP_BYTE_LEVEL) te_llama__byte_level_bytes(t, p, n, &nxt);
        else if (s->kind == TE_LLAMA__STEP_BYTE_FALLBACK) {
            int b = te_llama__byte_token(p, n);
            char c = (char)b;
            if (b >= 0) te_llama__bytes_put(a, &nxt, &c, 1);
            else te_llama__bytes_put(a, &nxt, p, n);
        } else if (s->kind == TE_LLAMA__STEP_REPLACE) {
            const char *pat = t->arena + s->a_off;
            size_t pl = s->a_len;
            for (j = 0, run = 0; n >= pl && j <= n - pl;) {
                if (p[j] == pat[0] && memcmp(p + j, pat, pl) == 0) {
                    te_llama__bytes_put(a, &nxt, p + run, j - run);
                    te_llama__bytes_put(a, &nxt, t->arena + s->b_off, s->b_len);
                    j += pl;
                    run = j;
                } else {
                    j++;
                }
            }
            te_llama__bytes_put(a, &nxt, p + run, n - run);
        } else { /* a per-token Strip */
            const char *c = t->arena + s->a_off;
            size_t cl = s->a_len, lo = 0, hi = n;
            int m;
            for (m = 0; m < s->start && hi - lo >= cl && memcmp(p + lo, c, cl) == 0; m++) lo += cl;
            for (m = 0; m < s->stop && hi - lo >= cl && memcmp(p + hi - cl, c, cl) == 0; m++) hi -= cl;
            te_llama__bytes_put(a, &nxt, p + lo, hi - lo);
        }
        { te_llama__bytes x = cur; cur = nxt; nxt = x; }
    }
    st.started = 1;
    st.n_pending = 0;
    for (i = 0; i < cur.len && !cur.failed;) { /* complete characters out */
        const unsigned char *u = (const unsigned char *)cur.data + i;
        size_t bad = 0, c;
        int cut;
        c = te_llama__utf8_scan(u, cur.len - i, &bad, &cut);
        if (!c && cut) { memcpy(st.pending, u, bad); st.n_pending = (unsigned)bad; break; }
        if (!c) { te_llama__bytes_put(a, &text, "\xef\xbf\xbd", 3); st.emitted = 1; i += bad; continue; }
        if (strip && !st.emitted && st.n_stripped < (unsigned)strip->start && c == strip->a_len &&
            memcmp(u, t->arena + strip->a_off, c) == 0) {
            st.n_stripped++;
            i += c;
            continue;
        }
        st.emitted = 1;
        te_llama__bytes_put(a, &text, u, c);
        i += c;
    }
    if (cur.failed || nxt.failed || text.failed) r = te_llama__fail(TE_LLAMA_ERR_NOMEM, "decoding token %ld", (long)id);
    else if (text.len > cap) r = te_llama__fail(TE_LLAMA_ERR_OUT_OF_RANGE, "token %ld decodes to %zu bytes, above the %zu given", (long)id, text.len, cap);
    if (!r || r == TE_LLAMA_ERR_OUT_OF_RANGE) *len = text.len;
    if (!r) {
        if (text.len) memcpy(out, text.data, text.len);
        *state = st;
    }
    te_llama__free(a, cur.data);
    te_llama__free(a, nxt.data);
    te_llama__free(a, text.data);
    return r;
}

TE_LLAMA_API te_llama_result te_llama_tokenizer_decode_flush(const te_llama_tokenizer *t, te_llama_decode_state *state,
                                                             char *out, size_t cap, size_t *len) {
    size_t n;
    if (!t || !state || !len || (!out && cap)) return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_tokenizer_decode_flush: NULL");
    n = state->n_pending ? 3 : 0; /* a cut character is one maximal invalid subpart: one U+FFFD */
    *len = n;
    if (n > cap) return te_llama__fail(TE_LLAMA_ERR_OUT_OF_RANGE, "flush needs %zu bytes, %zu given", n, cap);
    if (n) memcpy(out, "\xef\xbf\xbd", 3);
    memset(state, 0, sizeof *state);
    return TE_LLAMA_OK;
}

/* ---------------------------------------------------------------------------------------------------- chat */

/* Python's str.strip(), which the chat template's trim is: White_Space and U+001C..U+001F. */
static int te_llama__strip_char(const unsigned char *s, size_t n, size_t *cl) {
    size_t bad;
    int cut;
    uint32_t cp;
    *cl = te_llama__utf8_scan(s, n, &bad, &cut);
    if (!*cl) return 0;
    cp = te_llama__utf8_dec(s, cl);
    return (cp >= 0x1c && cp <= 0x1f) || (te_llama__uclass(cp) & TE_LLAMA__UWS);
}

/* Encode plain text (special tokens not recognised) onto w's ids: prefix then the trimmed content. */
static te_llama_result te_llama__chat_text(te_llama__work *w, const char *prefix, const char *content, te_llama__bytes *buf) {
    const unsigned char *u = (const unsigned char *)(content ? content : "");
    size_t n = strlen((const char *)u), lo = 0, hi, cl;
    buf->len = 0;
    te_llama__bytes_put(&w->t->allocator, buf, prefix, strlen(prefix));
    if (content) {
        while (lo < n && te_llama__strip_char(u + lo, n - lo, &cl)) lo += cl;
        for (hi = n; hi > lo;) {
            size_t b = hi - 1;
            while (b > lo && (u[b] & 0xc0) == 0x80) b--;
            if (!te_llama__strip_char(u + b, hi - b, &cl) || b + cl != hi) break;
            hi = b;
        }
        te_llama__bytes_put(&w->t->allocator, buf, u + lo, hi - lo);
    }
    if (buf->failed) return te_llama__fail(TE_LLAMA_ERR_NOMEM, "chat text");
    return te_llama__encode_text(w, buf->data, buf->len);
}

TE_LLAMA_API te_llama_result te_llama_tokenizer_chat(const te_llama_tokenizer *t, const char *system, const char *user,
                                                     int32_t **ids, size_t *n_ids) {
    static const char *const names[4] = {"<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"};
    int32_t sp[4];
    te_llama__work w;
    te_llama__bytes buf;
    te_llama_result r = TE_LLAMA_OK;
    int k, turn;
    if (!t || !ids || !n_ids) return te_llama__fail(TE_LLAMA_ERR_INVALID_ARGUMENT, "te_llama_tokenizer_chat: NULL");
    *ids = NULL;
    *n_ids = 0;
    for (k = 0; k < 4; k++)
        if ((sp[k] = te_llama_tokenizer_token_id(t, names[k])) < 0)
            return te_llama__fail(TE_LLAMA_ERR_NOT_FOUND, "chat: the tokenizer has no %s token", names[k]);
    memset(&w, 0, sizeof w);
    memset(&buf, 0, sizeof buf);
    w.t = t;
    w.match_special = 0;
    r = te_llama__push_id(&w, sp[0]);
    for (turn = system ? 0 : 1; turn < 3 && !r; turn++) {
        static const char *const roles[3] = {"system", "user", "assistant"};
        if (!r) r = te_llama__push_id(&w, sp[1]);
        if (!r) r = te_llama__chat_text(&w, roles[turn], NULL, &buf);
        if (!r) r = te_llama__push_id(&w, sp[2]);
        if (!r) r = te_llama__chat_text(&w, "\n\n", turn == 0 ? system : turn == 1 ? user : NULL, &buf);
        if (!r && turn < 2) r = te_llama__push_id(&w, sp[3]);
    }
    te_llama__free(&t->allocator, buf.data);
    return te_llama__encode_finish(&w, r, ids, n_ids);
}

#ifdef __cplusplus
}
#endif

#endif /* TE_LLAMA_IMPLEMENTATION_DONE */
#endif /* TE_LLAMA_IMPLEMENTATION */

/*
   LICENSE (MIT)
   Copyright (c) 2026 the te_llama authors
   Permission is hereby granted, free of charge, to any person obtaining a copy of this software and associated
   documentation files (the "Software"), to deal in the Software without restriction, including without limitation
   the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of the Software, and
   to permit persons to whom the Software is furnished to do so, subject to the following conditions: the above
   copyright notice and this permission notice shall be included in all copies or substantial portions of the
   Software. THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED.
*/
