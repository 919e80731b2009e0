/* fuzz_tokenizer.c - libFuzzer target for te_llama_tokenizer_parse. When the input loads, encode a few fixed
   strings (ASCII, added-token spellings, non-UTF-8 bytes) and the first bytes of the input itself, with and
   without the post-processor; decode the ids at once and piece by piece (the pieces must add up to the whole
   decode when that is valid UTF-8 and no Strip decoder cuts its end); decode ids outside the vocabulary; build
   a chat prompt; free.
   Build (from the repository root; fuzz/run.sh does this):
     clang -fsanitize=fuzzer,address,undefined -g -O1 -I. fuzz/fuzz_tokenizer.c -o build/fuzz/fuzz_tokenizer -lm
   Run: build/fuzz/fuzz_tokenizer -dict=fuzz/fuzz_tokenizer.dict fuzz/corpus/fuzz_tokenizer */
#define TE_LLAMA_IMPLEMENTATION
#include "te_llama.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_ASSERT(c) do { if (!(c)) __builtin_trap(); } while (0)

/* Strict UTF-8 (no overlongs, surrogates or code points above U+10FFFF). */
static int utf8_valid(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i], k, need;
        uint32_t cp;
        if (c < 0x80) { i++; continue; }
        if (c >= 0xc2 && c <= 0xdf) { need = 1; cp = c & 0x1f; }
        else if (c >= 0xe0 && c <= 0xef) { need = 2; cp = c & 0x0f; }
        else if (c >= 0xf0 && c <= 0xf4) { need = 3; cp = c & 0x07; }
        else return 0;
        if (need >= n - i) return 0; /* the sequence runs past the end */
        for (k = 1; k <= need; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((need == 2 && cp < 0x800) || (need == 3 && (cp < 0x10000 || cp > 0x10ffff)) || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += need + 1;
    }
    return 1;
}

/* A Strip decoder with stop > 0 removes characters from the end of the whole text, which a stream of pieces
   cannot know about: only without one must the pieces add up to the whole decode. */
static int strips_the_end(const uint8_t *data, size_t size) {
    te_llama_json j;
    size_t i;
    int found = 0;
    if (te_llama_json_parse((const char *)data, size, NULL, &j) != TE_LLAMA_OK) return 1;
    for (i = 0; i < j.n_tokens && !found; i++) {
        size_t stop;
        int64_t v;
        if (j.tokens[i].type != TE_LLAMA_JSON_OBJECT || !te_llama_json_equals(&j, te_llama_json_get(&j, i, "type"), "Strip"))
            continue;
        stop = te_llama_json_get(&j, i, "stop");
        found = stop && (te_llama_json_int64(&j, stop, &v) != TE_LLAMA_OK || v != 0);
    }
    te_llama_json_free(&j);
    return found;
}
static int pieces_must_match;

static void decode_both_ways(const te_llama_tokenizer *t, const int32_t *ids, size_t n, int skip) {
    char *text = NULL, piece[256], *joined;
    size_t len = 0, jl = 0, i, pl;
    te_llama_decode_state st;
    te_llama_result r = te_llama_tokenizer_decode(t, ids, n, skip, &text, &len);
    FUZZ_ASSERT(r == TE_LLAMA_OK || r == TE_LLAMA_ERR_NOMEM);
    if (r != TE_LLAMA_OK) return;
    FUZZ_ASSERT(text[len] == 0);
    joined = (char *)malloc(len + 4 * n + 1024);
    FUZZ_ASSERT(joined != NULL);
    memset(&st, 0, sizeof st);
    for (i = 0; i < n; i++) {
        r = te_llama_tokenizer_decode_piece(t, &st, ids[i], skip, piece, sizeof piece, &pl);
        if (r == TE_LLAMA_ERR_OUT_OF_RANGE) { /* a long token: *len says how much room it needs */
            char *big = (char *)malloc(pl);
            FUZZ_ASSERT(big != NULL && pl > sizeof piece);
            r = te_llama_tokenizer_decode_piece(t, &st, ids[i], skip, big, pl, &pl);
            FUZZ_ASSERT(r == TE_LLAMA_OK);
            if (jl + pl <= len + 4 * n + 512) memcpy(joined + jl, big, pl);
            jl += pl;
            free(big);
            continue;
        }
        FUZZ_ASSERT(r == TE_LLAMA_OK && pl <= sizeof piece);
        if (jl + pl <= len + 4 * n + 512) memcpy(joined + jl, piece, pl);
        jl += pl;
    }
    r = te_llama_tokenizer_decode_flush(t, &st, piece, sizeof piece, &pl);
    FUZZ_ASSERT(r == TE_LLAMA_OK);
    if (jl + pl <= len + 4 * n + 512) memcpy(joined + jl, piece, pl);
    jl += pl;
    if (pieces_must_match && utf8_valid((const unsigned char *)text, len))
        FUZZ_ASSERT(jl == len && memcmp(joined, text, len) == 0);
    free(joined);
    te_llama_tokenizer_free_text(t, text);
}

static void encode_decode(const te_llama_tokenizer *t, const char *s, size_t n) {
    int special;
    for (special = 0; special < 2; special++) {
        int32_t *ids = NULL;
        size_t n_ids = 0, i;
        te_llama_result r = te_llama_tokenizer_encode(t, s, n, special, &ids, &n_ids);
        /* TOKENIZER: the model names an unk_token that is not in its vocabulary and the text needs it (HF fails too) */
        FUZZ_ASSERT(r == TE_LLAMA_OK || r == TE_LLAMA_ERR_NOMEM || r == TE_LLAMA_ERR_OUT_OF_RANGE || r == TE_LLAMA_ERR_TOKENIZER);
        if (r != TE_LLAMA_OK) continue;
        /* the post-processor's ids come from TemplateProcessing as written, and HF does not check that they
           name a token: only the model's ids must be in the vocabulary */
        for (i = 0; i < n_ids; i++) FUZZ_ASSERT(ids[i] >= 0 && (special || (size_t)ids[i] < te_llama_tokenizer_vocab_size(t)));
        decode_both_ways(t, ids, n_ids, special);
        te_llama_tokenizer_free_ids(t, ids);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const char *const texts[] = {
        "Hello, world! It's 2024.",
        "  <|begin_of_text|>x<|eot_id|>\n\n  tab\there ",
        "\xc3\xa9t\xc3\xa9 \xe2\x96\x81 \xf0\x9f\xa6\x99 \xff\xfe\xc0\x80 \xed\xa0\x80 end",
        "",
    };
    te_llama_tokenizer *t = NULL;
    size_t i, v;
    te_llama_result r = te_llama_tokenizer_parse((const char *)data, size, NULL, &t);
    if (r != TE_LLAMA_OK) {
        FUZZ_ASSERT(t == NULL);
        FUZZ_ASSERT(te_llama_last_error()[0] != 0);
        return 0;
    }
    pieces_must_match = !strips_the_end(data, size);
    v = te_llama_tokenizer_vocab_size(t);
    FUZZ_ASSERT(v >= 1);
    for (i = 0; i < sizeof texts / sizeof texts[0]; i++) encode_decode(t, texts[i], strlen(texts[i]));
    encode_decode(t, (const char *)data, size < 200 ? size : 200);
    {   /* ids outside the vocabulary are skipped, as HF does */
        int32_t odd[6];
        odd[0] = -1; odd[1] = (int32_t)v; odd[2] = INT32_MAX; odd[3] = INT32_MIN; odd[4] = 0; odd[5] = (int32_t)(v - 1);
        decode_both_ways(t, odd, 6, 0);
        decode_both_ways(t, odd, 6, 1);
    }
    for (i = 0; i < v && i < 64; i++) {
        size_t len = 0;
        const char *s = te_llama_tokenizer_token(t, (int32_t)i, &len);
        if (s && len > 0 && len < 256) {
            char buf[256];
            memcpy(buf, s, len);
            buf[len] = 0;
            if (strlen(buf) == len) FUZZ_ASSERT(te_llama_tokenizer_token_id(t, buf) >= 0);
        }
        (void)te_llama_tokenizer_is_special(t, (int32_t)i);
    }
    {
        int32_t *ids = NULL;
        size_t n_ids = 0;
        r = te_llama_tokenizer_chat(t, "You are terse.", " Hi! ", &ids, &n_ids);
        FUZZ_ASSERT(r == TE_LLAMA_OK || r == TE_LLAMA_ERR_NOT_FOUND || r == TE_LLAMA_ERR_NOMEM);
        if (r == TE_LLAMA_OK) te_llama_tokenizer_free_ids(t, ids);
    }
    te_llama_tokenizer_free(t);
    return 0;
}
