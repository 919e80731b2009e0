/* test_tokenizer.c - the tokenizer against HF `tokenizers` references, plus error codes and streaming decode.

   python3 tests/tokenizer_ref.py build/tokref          (TE_LLAMA_SHARED=../shared by default)
   cc -O2 -std=c99 -Wall -Wextra -Werror -I. tests/test_tokenizer.c -o build/test_tokenizer -lm
   TE_LLAMA_SHARED=../shared build/test_tokenizer [build/tokref]
*/
#define TE_LLAMA_IMPLEMENTATION
#include "te_llama.h"
#include "check.h"

static const char *shared_dir(void) {
    const char *s = getenv("TE_LLAMA_SHARED");
    return s && *s ? s : "../shared";
}

static char *read_whole(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    long n;
    if (!f) return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0) {
        buf = (char *)malloc((size_t)n + 1);
        if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) { free(buf); buf = NULL; }
        if (buf) { buf[n] = 0; *len = (size_t)n; }
    }
    fclose(f);
    return buf;
}

/* Hex (or "-" for empty) into a fresh buffer. */
static char *unhex(const char *s, size_t n, size_t *out_len) {
    char *b = (char *)malloc(n / 2 + 1);
    size_t i;
    *out_len = 0;
    if (!b) return NULL;
    if (n == 1 && s[0] == '-') { b[0] = 0; return b; }
    for (i = 0; i + 1 < n; i += 2) b[i / 2] = (char)(te_llama__hex(s[i]) * 16 + te_llama__hex(s[i + 1]));
    *out_len = n / 2;
    b[n / 2] = 0;
    return b;
}

/* Ids separated by sep (',' or ' '), "-" or nothing for none. */
static int32_t *parse_ids(const char *s, size_t n, size_t *count) {
    size_t cap = 16, k = 0, i = 0;
    int32_t *ids = (int32_t *)malloc(cap * sizeof *ids);
    while (ids && i < n) {
        long v = 0;
        if (s[i] < '0' || s[i] > '9') { i++; continue; }
        while (i < n && s[i] >= '0' && s[i] <= '9') v = v * 10 + (s[i++] - '0');
        if (k == cap) {
            int32_t *g = (int32_t *)realloc(ids, 2 * cap * sizeof *ids);
            if (!g) { free(ids); return NULL; }
            ids = g;
            cap *= 2;
        }
        ids[k++] = (int32_t)v;
    }
    *count = k;
    return ids;
}

static int same_ids(const int32_t *a, size_t na, const int32_t *b, size_t nb) {
    return na == nb && (na == 0 || memcmp(a, b, na * sizeof *a) == 0);
}

static te_llama_tokenizer *load(const char *name) {
    char path[1024];
    te_llama_tokenizer *t = NULL;
    snprintf(path, sizeof path, "%s/data/tokenizers/%s", shared_dir(), name);
    CHECK_RESULT(te_llama_tokenizer_load(path, NULL, &t), TE_LLAMA_OK);
    return t;
}

/* Streaming decode of ids, piece by piece, flushed at the end. */
static char *stream_decode(const te_llama_tokenizer *t, const int32_t *ids, size_t n, size_t *len) {
    te_llama_decode_state st;
    size_t cap = 64, total = 0, i, got;
    char *out = (char *)malloc(cap + 256);
    memset(&st, 0, sizeof st);
    for (i = 0; out && i <= n; i++) {
        if (total + 256 > cap) {
            char *g = (char *)realloc(out, 2 * cap + 256);
            if (!g) { free(out); return NULL; }
            out = g;
            cap = 2 * cap;
        }
        if (i < n ? te_llama_tokenizer_decode_piece(t, &st, ids[i], 0, out + total, 256, &got)
                  : te_llama_tokenizer_decode_flush(t, &st, out + total, 256, &got)) {
            free(out);
            return NULL;
        }
        total += got;
    }
    *len = total;
    return out;
}

static void test_cases(const char *ref, const char *name, te_llama_tokenizer *t) {
    char path[1024], *data, *line;
    size_t len, n_cases = 0, n_ok = 0;
    snprintf(path, sizeof path, "%s/%s_cases.tsv", ref, name);
    data = read_whole(path, &len);
    CHECK(data != NULL, "cannot read %s (run tests/tokenizer_ref.py first)", path);
    if (!data) return;
    for (line = data; line < data + len;) {
        char *end = (char *)memchr(line, '\n', (size_t)(data + len - line)), *f[7];
        size_t fl[7], k, text_len, skip_len, keep_len, n_ref, n_ids, dec_len, s_len;
        char *text, *skip, *keep, *dec, *streamed;
        int32_t *ref_ids, *ids;
        int add_special, roundtrip, ok = 1;
        if (!end) end = data + len;
        *end = 0;
        f[0] = line;
        for (k = 1; k < 7; k++) {
            char *tab = strchr(f[k - 1], '\t');
            if (!tab) break;
            *tab = 0;
            f[k] = tab + 1;
        }
        CHECK(k == 7, "%s: malformed line %.40s", path, line);
        if (k != 7) break;
        for (k = 0; k < 7; k++) fl[k] = strlen(f[k]);
        add_special = atoi(f[1]);
        roundtrip = atoi(f[6]);
        text = unhex(f[2], fl[2], &text_len);
        skip = unhex(f[4], fl[4], &skip_len);
        keep = unhex(f[5], fl[5], &keep_len);
        ref_ids = parse_ids(f[3], fl[3], &n_ref);
        n_cases++;
        CHECK_RESULT(te_llama_tokenizer_encode(t, text, text_len, add_special, &ids, &n_ids), TE_LLAMA_OK);
        if (!same_ids(ids, n_ids, ref_ids, n_ref)) {
            ok = 0;
            CHECK(0, "%s %s add_special=%d: ids differ (%zu vs HF %zu)", name, f[0], add_special, n_ids, n_ref);
        }
        CHECK_RESULT(te_llama_tokenizer_decode(t, ref_ids, n_ref, 1, &dec, &dec_len), TE_LLAMA_OK);
        if (dec_len != skip_len || memcmp(dec, skip, skip_len) != 0) { ok = 0; CHECK(0, "%s %s: decode (skip special) differs: \"%s\" vs HF \"%s\"", name, f[0], dec, skip); }
        te_llama_tokenizer_free_text(t, dec);
        CHECK_RESULT(te_llama_tokenizer_decode(t, ref_ids, n_ref, 0, &dec, &dec_len), TE_LLAMA_OK);
        if (dec_len != keep_len || memcmp(dec, keep, keep_len) != 0) { ok = 0; CHECK(0, "%s %s: decode differs: \"%s\" vs HF \"%s\"", name, f[0], dec, keep); }
        /* streaming gives the same text, wherever HF's decode is valid UTF-8 without replacements */
        if (!strstr(keep, "\xef\xbf\xbd") || strcmp(name, "llama3") == 0) {
            streamed = stream_decode(t, ref_ids, n_ref, &s_len);
            if (!streamed || s_len != dec_len || memcmp(streamed, dec, s_len) != 0) { ok = 0; CHECK(0, "%s %s: streaming decode differs", name, f[0]); }
            free(streamed);
        }
        te_llama_tokenizer_free_text(t, dec);
        if (!add_special) { /* the round trip holds exactly where HF's does */
            CHECK_RESULT(te_llama_tokenizer_decode(t, ids, n_ids, 0, &dec, &dec_len), TE_LLAMA_OK);
            if ((dec_len == text_len && memcmp(dec, text, text_len) == 0) != roundtrip) { ok = 0; CHECK(0, "%s %s: round trip %d, HF %d", name, f[0], !roundtrip, roundtrip); }
            te_llama_tokenizer_free_text(t, dec);
        }
        n_ok += ok;
        te_llama_tokenizer_free_ids(t, ids);
        free(text); free(skip); free(keep); free(ref_ids);
        line = end + 1;
    }
    printf("%s: %zu/%zu cases identical to HF\n", name, n_ok, n_cases);
    CHECK(n_cases > 100, "%s: only %zu cases", name, n_cases);
    free(data);
}

static void test_austen(const char *ref, const char *name, te_llama_tokenizer *t) {
    char path[1024], *text, *ids_text, *flag, *dec;
    size_t len, ids_len, flag_len, n_ref, n_ids, dec_len, i, start, line_no = 0, bad_lines = 0;
    int32_t *ref_ids, *ids;
    snprintf(path, sizeof path, "%s/data/austen/austen.txt", shared_dir());
    text = read_whole(path, &len);
    CHECK(text != NULL, "cannot read %s", path);
    snprintf(path, sizeof path, "%s/%s_austen_whole.ids", ref, name);
    ids_text = read_whole(path, &ids_len);
    CHECK(ids_text != NULL, "cannot read %s", path);
    snprintf(path, sizeof path, "%s/%s_austen.txt", ref, name);
    flag = read_whole(path, &flag_len);
    CHECK(flag != NULL, "cannot read %s", path);
    if (!text || !ids_text || !flag) return;
    ref_ids = parse_ids(ids_text, ids_len, &n_ref);
    CHECK_RESULT(te_llama_tokenizer_encode(t, text, len, 0, &ids, &n_ids), TE_LLAMA_OK);
    CHECK(same_ids(ids, n_ids, ref_ids, n_ref), "%s: Austen as one string: %zu ids vs HF %zu", name, n_ids, n_ref);
    if (same_ids(ids, n_ids, ref_ids, n_ref)) printf("%s: Austen as one string identical (%zu ids)\n", name, n_ids);
    CHECK_RESULT(te_llama_tokenizer_decode(t, ids, n_ids, 0, &dec, &dec_len), TE_LLAMA_OK);
    CHECK((dec_len == len && memcmp(dec, text, len) == 0) == (strstr(flag, "roundtrip 1") != NULL), "%s: Austen round trip disagrees with HF", name);
    te_llama_tokenizer_free_text(t, dec);
    te_llama_tokenizer_free_ids(t, ids);
    free(ref_ids);
    free(ids_text);

    snprintf(path, sizeof path, "%s/%s_austen_lines.ids", ref, name);
    ids_text = read_whole(path, &ids_len);
    CHECK(ids_text != NULL, "cannot read %s", path);
    if (ids_text) {
        char *ref_line = ids_text;
        for (i = 0, start = 0; i <= len; i++) {
            char *nl;
            if (i < len && text[i] != '\n') continue;
            nl = (char *)memchr(ref_line, '\n', (size_t)(ids_text + ids_len - ref_line));
            if (!nl) { bad_lines++; break; }
            ref_ids = parse_ids(ref_line, (size_t)(nl - ref_line), &n_ref);
            if (te_llama_tokenizer_encode(t, text + start, i - start, 0, &ids, &n_ids) || !same_ids(ids, n_ids, ref_ids, n_ref)) {
                if (bad_lines++ < 5) CHECK(0, "%s: Austen line %zu differs", name, line_no + 1);
            }
            te_llama_tokenizer_free_ids(t, ids);
            free(ref_ids);
            ref_line = nl + 1;
            line_no++;
            start = i + 1;
        }
        CHECK(bad_lines == 0 && ref_line == ids_text + ids_len, "%s: Austen line by line: %zu of %zu lines differ", name, bad_lines, line_no);
        if (!bad_lines) printf("%s: Austen line by line identical (%zu lines)\n", name, line_no);
        free(ids_text);
    }
    free(text);
    free(flag);
}

/* The Llama 3 regex by hand against the pieces of HF's pre-tokenizer. */
static void test_pretokenizer(const char *ref) {
    char path[1024], *data, *line;
    size_t len, n_cases = 0, n_ok = 0;
    snprintf(path, sizeof path, "%s/llama3_pretok.tsv", ref);
    data = read_whole(path, &len);
    CHECK(data != NULL, "cannot read %s", path);
    for (line = data; data && line < data + len;) {
        char *end = (char *)memchr(line, '\n', (size_t)(data + len - line)), *t1, *t2, *text;
        size_t text_len, n_ref, k, p, e;
        int32_t *ref;
        int ok = 1;
        *end = 0;
        t1 = strchr(line, '\t');
        t2 = t1 ? strchr(t1 + 1, '\t') : NULL;
        if (!t2) { CHECK(0, "malformed %s", path); break; }
        *t1 = *t2 = 0;
        text = unhex(t1 + 1, strlen(t1 + 1), &text_len);
        ref = parse_ids(t2 + 1, strlen(t2 + 1), &n_ref);
        for (p = 0, k = 0; p < text_len; p = e, k++) {
            e = te_llama__llama3_match(text, text_len, p);
            if (k >= n_ref || e - p != (size_t)ref[k]) { ok = 0; break; }
        }
        if (k != n_ref) ok = 0;
        CHECK(ok, "pre-tokenizer %s: piece %zu at byte %zu differs from HF", line, k, p);
        n_ok += ok;
        n_cases++;
        free(text);
        free(ref);
        line = end + 1;
    }
    printf("llama3: %zu/%zu pre-tokenizer splits identical to HF\n", n_ok, n_cases);
    CHECK(n_cases > 100, "only %zu pre-tokenizer cases", n_cases);
    free(data);
}

static void test_chat(const char *ref, te_llama_tokenizer *l3, te_llama_tokenizer *l2) {
    char path[1024], *data, *line;
    size_t len, n = 0;
    int32_t *ids;
    size_t n_ids;
    snprintf(path, sizeof path, "%s/llama3_chat.tsv", ref);
    data = read_whole(path, &len);
    CHECK(data != NULL, "cannot read %s", path);
    for (line = data; data && line < data + len; n++) {
        char *end = (char *)memchr(line, '\n', (size_t)(data + len - line)), *t1, *t2, *sys, *user;
        size_t sl, ul, n_ref;
        int32_t *ref_ids;
        *end = 0;
        t1 = strchr(line, '\t');
        t2 = t1 ? strchr(t1 + 1, '\t') : NULL;
        if (!t2) { CHECK(0, "malformed %s", path); break; }
        *t1 = *t2 = 0;
        sys = strcmp(line, "-") == 0 ? NULL : unhex(line, strlen(line), &sl);
        user = unhex(t1 + 1, strlen(t1 + 1), &ul);
        ref_ids = parse_ids(t2 + 1, strlen(t2 + 1), &n_ref);
        CHECK_RESULT(te_llama_tokenizer_chat(l3, sys, user, &ids, &n_ids), TE_LLAMA_OK);
        CHECK(same_ids(ids, n_ids, ref_ids, n_ref), "chat %zu: %zu ids vs HF %zu", n, n_ids, n_ref);
        te_llama_tokenizer_free_ids(l3, ids);
        free(sys); free(user); free(ref_ids);
        line = end + 1;
    }
    CHECK(n >= 5, "only %zu chat cases", n);
    free(data);
    /* contents are plain text: a special-token string in them is not the special token */
    CHECK_RESULT(te_llama_tokenizer_chat(l3, NULL, "a<|eot_id|>b", &ids, &n_ids), TE_LLAMA_OK);
    {
        size_t i, eot = 0;
        for (i = 0; i < n_ids; i++) eot += ids[i] == 128009;
        CHECK(eot == 1, "user text made %zu <|eot_id|> tokens", eot);
    }
    te_llama_tokenizer_free_ids(l3, ids);
    CHECK_RESULT(te_llama_tokenizer_chat(l2, "s", "u", &ids, &n_ids), TE_LLAMA_ERR_NOT_FOUND);
}

static void test_basics(te_llama_tokenizer *l3, te_llama_tokenizer *l2) {
    size_t len;
    const char *s;
    CHECK(te_llama_tokenizer_vocab_size(l3) == 128256, "llama3 vocab %zu", te_llama_tokenizer_vocab_size(l3));
    CHECK(te_llama_tokenizer_vocab_size(l2) == 32000, "llama2 vocab %zu", te_llama_tokenizer_vocab_size(l2));
    CHECK(te_llama_tokenizer_bos_id(l3) == 128000 && te_llama_tokenizer_eos_id(l3) == 128001, "llama3 bos %d eos %d",
          te_llama_tokenizer_bos_id(l3), te_llama_tokenizer_eos_id(l3));
    CHECK(te_llama_tokenizer_bos_id(l2) == 1 && te_llama_tokenizer_eos_id(l2) == 2, "llama2 bos %d eos %d",
          te_llama_tokenizer_bos_id(l2), te_llama_tokenizer_eos_id(l2));
    CHECK(te_llama_tokenizer_token_id(l3, "<|eot_id|>") == 128009, "eot");
    CHECK(te_llama_tokenizer_token_id(l3, "\xc4\xa0the") == 279, "Gthe %d", te_llama_tokenizer_token_id(l3, "\xc4\xa0the"));
    CHECK(te_llama_tokenizer_token_id(l2, "<s>") == 1 && te_llama_tokenizer_token_id(l2, "nope-not-a-token") == -1, "llama2 ids");
    s = te_llama_tokenizer_token(l3, 128009, &len);
    CHECK(s && len == 10 && memcmp(s, "<|eot_id|>", 10) == 0, "token 128009");
    CHECK(te_llama_tokenizer_token(l3, 128256, &len) == NULL && te_llama_tokenizer_token(l3, -1, &len) == NULL, "out of range token");
    CHECK(te_llama_tokenizer_is_special(l3, 128009) && !te_llama_tokenizer_is_special(l3, 279), "special flags");
    { /* ids without a token are skipped when decoding, as HF does */
        int32_t ids[3] = {9906, 999999, -5};
        char *text;
        CHECK_RESULT(te_llama_tokenizer_decode(l3, ids, 3, 0, &text, &len), TE_LLAMA_OK);
        CHECK(len == 5 && strcmp(text, "Hello") == 0, "decode with unknown ids: %s", text);
        te_llama_tokenizer_free_text(l3, text);
    }
}

/* A token holding half a character: the piece waits until the character completes. */
static void test_streaming(te_llama_tokenizer *l3, te_llama_tokenizer *l2) {
    te_llama_decode_state st;
    char out[256];
    size_t got, n, i;
    int32_t *ids;
    const char *smile = "\xf0\x9f\x99\x82"; /* U+1F642: byte tokens in Llama 2, split tokens in Llama 3 */
    te_llama_tokenizer *toks[2];
    toks[0] = l3;
    toks[1] = l2;
    for (i = 0; i < 2; i++) {
        te_llama_tokenizer *t = toks[i];
        size_t k, total = 0, empty = 0;
        char all[64];
        CHECK_RESULT(te_llama_tokenizer_encode(t, "a\xf0\x9f\x99\x82", 5, 0, &ids, &n), TE_LLAMA_OK);
        memset(&st, 0, sizeof st);
        for (k = 0; k < n; k++) {
            CHECK_RESULT(te_llama_tokenizer_decode_piece(t, &st, ids[k], 1, out, sizeof out, &got), TE_LLAMA_OK);
            if (!got) empty++;
            CHECK(total + got < sizeof all, "piece overflow");
            if (total + got < sizeof all) { memcpy(all + total, out, got); total += got; }
        }
        CHECK(n >= 3 && empty >= 1, "tokenizer %zu: %zu ids, %zu empty pieces", i, n, empty);
        CHECK(total == 5 && memcmp(all, "a", 1) == 0 && memcmp(all + 1, smile, 4) == 0, "tokenizer %zu: streamed %zu bytes", i, total);
        CHECK(st.n_pending == 0, "pending after a complete character");
        te_llama_tokenizer_free_ids(t, ids);
    }
    /* Llama 2: byte tokens, one at a time; the first piece's leading space is stripped as the Strip decoder does */
    memset(&st, 0, sizeof st);
    {
        int32_t bytes[4] = {0xf0 + 3, 0x9f + 3, 0x99 + 3, 0x82 + 3}; /* <0xNN> is id NN + 3 */
        int32_t hello = te_llama_tokenizer_token_id(l2, "\xe2\x96\x81Hello");
        CHECK_RESULT(te_llama_tokenizer_decode_piece(l2, &st, hello, 1, out, sizeof out, &got), TE_LLAMA_OK);
        CHECK(got == 5 && memcmp(out, "Hello", 5) == 0, "first piece stripped: %.*s", (int)got, out);
        for (i = 0; i < 3; i++) {
            CHECK_RESULT(te_llama_tokenizer_decode_piece(l2, &st, bytes[i], 1, out, sizeof out, &got), TE_LLAMA_OK);
            CHECK(got == 0 && st.n_pending == i + 1, "byte %zu: got %zu pending %u", i, got, st.n_pending);
        }
        CHECK_RESULT(te_llama_tokenizer_decode_piece(l2, &st, bytes[3], 1, out, 3, &got), TE_LLAMA_ERR_OUT_OF_RANGE);
        CHECK(got == 4 && st.n_pending == 3, "too small: needs %zu, state kept (%u pending)", got, st.n_pending);
        CHECK_RESULT(te_llama_tokenizer_decode_piece(l2, &st, bytes[3], 1, out, sizeof out, &got), TE_LLAMA_OK);
        CHECK(got == 4 && memcmp(out, smile, 4) == 0, "completed character");
        CHECK_RESULT(te_llama_tokenizer_decode_piece(l2, &st, hello, 1, out, sizeof out, &got), TE_LLAMA_OK);
        CHECK(got == 6 && memcmp(out, " Hello", 6) == 0, "later pieces keep their space");
        /* a cut character at the end: flush gives U+FFFD */
        CHECK_RESULT(te_llama_tokenizer_decode_piece(l2, &st, bytes[0], 1, out, sizeof out, &got), TE_LLAMA_OK);
        CHECK_RESULT(te_llama_tokenizer_decode_flush(l2, &st, out, sizeof out, &got), TE_LLAMA_OK);
        CHECK(got == 3 && memcmp(out, "\xef\xbf\xbd", 3) == 0 && st.n_pending == 0, "flush");
        /* an invalid byte in the middle: U+FFFD at once */
        memset(&st, 0, sizeof st);
        CHECK_RESULT(te_llama_tokenizer_decode_piece(l2, &st, bytes[0], 1, out, sizeof out, &got), TE_LLAMA_OK);
        CHECK_RESULT(te_llama_tokenizer_decode_piece(l2, &st, hello, 1, out, sizeof out, &got), TE_LLAMA_OK);
        CHECK(got == 9 && memcmp(out, "\xef\xbf\xbd Hello", 9) == 0, "invalid then text: %zu", got);
        /* special tokens: skipped or kept */
        memset(&st, 0, sizeof st);
        CHECK_RESULT(te_llama_tokenizer_decode_piece(l2, &st, 1, 1, out, sizeof out, &got), TE_LLAMA_OK);
        CHECK(got == 0, "skipped special");
        CHECK_RESULT(te_llama_tokenizer_decode_piece(l2, &st, 1, 0, out, sizeof out, &got), TE_LLAMA_OK);
        CHECK(got == 3 && memcmp(out, "<s>", 3) == 0, "kept special");
    }
}

static void test_invalid_utf8(te_llama_tokenizer *l3, te_llama_tokenizer *l2) {
    /* Random bytes: no crash, and the same ids as the lossy text (each maximal invalid subpart -> U+FFFD). */
    uint32_t seed = 12345;
    int round, i;
    for (round = 0; round < 300; round++) {
        char buf[64];
        int32_t *a, *b;
        size_t na, nb, n = (size_t)(round % 60) + 1;
        te_llama__bytes fixed;
        te_llama_tokenizer *t = round & 1 ? l2 : l3;
        char *text;
        size_t text_len;
        for (i = 0; i < (int)n; i++) {
            seed = seed * 1664525u + 1013904223u;
            buf[i] = (char)(seed >> 24);
            if ((seed >> 8) % 3 == 0) buf[i] = (char)(' ' + (seed >> 10) % 90);
        }
        memset(&fixed, 0, sizeof fixed);
        te_llama__bytes_put_lossy(NULL, &fixed, buf, n);
        CHECK_RESULT(te_llama_tokenizer_encode(t, buf, n, 1, &a, &na), TE_LLAMA_OK);
        CHECK_RESULT(te_llama_tokenizer_encode(t, fixed.data, fixed.len, 1, &b, &nb), TE_LLAMA_OK);
        CHECK(same_ids(a, na, b, nb), "round %d: raw and lossy ids differ", round);
        CHECK_RESULT(te_llama_tokenizer_decode(t, a, na, 1, &text, &text_len), TE_LLAMA_OK);
        CHECK(te_llama__utf8_valid(text, text_len), "round %d: decode is not valid UTF-8", round);
        te_llama_tokenizer_free_text(t, text);
        te_llama_tokenizer_free_ids(t, a);
        te_llama_tokenizer_free_ids(t, b);
        free(fixed.data);
    }
}

#define TOY_HEAD "{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,\"added_tokens\":[],"
#define TOY_MODEL "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2,\"c\":3,\"abc\":4}"

static te_llama_result parse_str(const char *json, te_llama_tokenizer **t) {
    return te_llama_tokenizer_parse(json, strlen(json), NULL, t);
}

static void expect_error(const char *json, te_llama_result expected, const char *needle) {
    te_llama_tokenizer *t = NULL;
    te_llama_result r = parse_str(json, &t);
    CHECK_RESULT(r, expected);
    CHECK(t == NULL, "no tokenizer on failure");
    if (needle) CHECK(strstr(te_llama_last_error(), needle) != NULL, "message \"%s\" lacks \"%s\"", te_llama_last_error(), needle);
    te_llama_tokenizer_free(t);
}

static void test_errors(void) {
    te_llama_tokenizer *t = NULL;
    int32_t *ids;
    size_t n;
    char *text;
    /* both merge spellings */
    const char *pairs = TOY_HEAD "\"normalizer\":null,\"pre_tokenizer\":null,\"post_processor\":null,\"decoder\":null," TOY_MODEL
                        ",\"merges\":[[\"a\",\"b\"],[\"ab\",\"c\"]]}}";
    const char *strings = TOY_HEAD "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2,\"c\":3,\"abc\":4},\"merges\":[\"a b\",\"ab c\"]}}";
    CHECK_RESULT(parse_str(pairs, &t), TE_LLAMA_OK);
    if (t) {
        CHECK_RESULT(te_llama_tokenizer_encode(t, "abcabx", 6, 1, &ids, &n), TE_LLAMA_OK);
        CHECK(n == 2 && ids[0] == 4 && ids[1] == 2, "pair merges: %zu ids", n); /* x has no token and no unk: dropped, as HF */
        CHECK_RESULT(te_llama_tokenizer_decode(t, ids, n, 0, &text, &n), TE_LLAMA_OK);
        CHECK(strcmp(text, "abc ab") == 0, "no decoder joins with spaces: %s", text);
        te_llama_tokenizer_free_text(t, text);
        te_llama_tokenizer_free_ids(t, ids);
        te_llama_tokenizer_free(t);
    }
    t = NULL;
    CHECK_RESULT(parse_str(strings, &t), TE_LLAMA_OK);
    if (t) {
        CHECK_RESULT(te_llama_tokenizer_encode(t, "cab", 3, 0, &ids, &n), TE_LLAMA_OK);
        CHECK(n == 2 && ids[0] == 3 && ids[1] == 2, "string merges");
        te_llama_tokenizer_free_ids(t, ids);
        te_llama_tokenizer_free(t);
    }
    expect_error(TOY_HEAD "\"model\":{\"type\":\"WordPiece\",\"vocab\":{\"a\":0}}}", TE_LLAMA_ERR_UNSUPPORTED, "WordPiece");
    expect_error(TOY_HEAD "\"model\":{\"type\":\"Unigram\",\"vocab\":[[\"a\",0.0]]}}", TE_LLAMA_ERR_UNSUPPORTED, "Unigram");
    expect_error(TOY_HEAD "\"model\":{\"type\":\"WordLevel\",\"vocab\":{\"a\":0}}}", TE_LLAMA_ERR_UNSUPPORTED, "WordLevel");
    expect_error(TOY_HEAD TOY_MODEL "}}", TE_LLAMA_ERR_JSON_SCHEMA, "merges");
    expect_error(TOY_HEAD "\"model\":{\"type\":\"BPE\",\"merges\":[]}}", TE_LLAMA_ERR_JSON_SCHEMA, "vocab");
    expect_error(TOY_HEAD "\"model\":{}}", TE_LLAMA_ERR_JSON_SCHEMA, "type");
    expect_error(TOY_HEAD TOY_MODEL ",\"merges\":[\"a x\"]}}", TE_LLAMA_ERR_TOKENIZER, "not in the vocabulary");
    expect_error(TOY_HEAD TOY_MODEL ",\"merges\":[\"c c\"]}}", TE_LLAMA_ERR_TOKENIZER, "not in the vocabulary");
    expect_error(TOY_HEAD TOY_MODEL ",\"merges\":[\"a b c\"]}}", TE_LLAMA_ERR_TOKENIZER, "two tokens");
    expect_error(TOY_HEAD TOY_MODEL ",\"merges\":[[\"a\"]]}}", TE_LLAMA_ERR_JSON_SCHEMA, "merge 0");
    expect_error(TOY_HEAD TOY_MODEL ",\"merges\":[],\"dropout\":0.1}}", TE_LLAMA_ERR_UNSUPPORTED, "dropout");
    expect_error(TOY_HEAD "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":0},\"merges\":[]}}", TE_LLAMA_ERR_TOKENIZER, "twice");
    expect_error(TOY_HEAD "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":99999999},\"merges\":[]}}", TE_LLAMA_ERR_OUT_OF_RANGE, "id");
    expect_error(TOY_HEAD "\"normalizer\":{\"type\":\"NFC\"}," TOY_MODEL ",\"merges\":[]}}", TE_LLAMA_ERR_UNSUPPORTED, "normalizer NFC");
    expect_error(TOY_HEAD "\"normalizer\":{\"type\":\"Replace\",\"pattern\":{\"Regex\":\" +\"},\"content\":\" \"}," TOY_MODEL ",\"merges\":[]}}", TE_LLAMA_ERR_UNSUPPORTED, "regex");
    expect_error(TOY_HEAD "\"pre_tokenizer\":{\"type\":\"Whitespace\"}," TOY_MODEL ",\"merges\":[]}}", TE_LLAMA_ERR_UNSUPPORTED, "pre-tokenizer Whitespace");
    expect_error(TOY_HEAD "\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"\\\\s+\"},\"behavior\":\"Isolated\",\"invert\":false}," TOY_MODEL ",\"merges\":[]}}", TE_LLAMA_ERR_UNSUPPORTED, "Llama 3 regex");
    expect_error(TOY_HEAD "\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":true}," TOY_MODEL ",\"merges\":[]}}", TE_LLAMA_ERR_UNSUPPORTED, "use_regex");
    expect_error(TOY_HEAD "\"decoder\":{\"type\":\"Metaspace\",\"replacement\":\"_\"}," TOY_MODEL ",\"merges\":[]}}", TE_LLAMA_ERR_UNSUPPORTED, "decoder Metaspace");
    expect_error(TOY_HEAD "\"post_processor\":{\"type\":\"BertProcessing\"}," TOY_MODEL ",\"merges\":[]}}", TE_LLAMA_ERR_UNSUPPORTED, "BertProcessing");
    expect_error("{\"truncation\":{\"max_length\":5}," TOY_MODEL ",\"merges\":[]}}", TE_LLAMA_ERR_UNSUPPORTED, "truncation");
    expect_error("{\"added_tokens\":[{\"id\":5,\"content\":\"x\",\"single_word\":true}]," TOY_MODEL ",\"merges\":[]}}", TE_LLAMA_ERR_UNSUPPORTED, "single_word");
    expect_error("{\"model\":", TE_LLAMA_ERR_JSON_SYNTAX, NULL);
    expect_error("[]", TE_LLAMA_ERR_JSON_SCHEMA, NULL);
    CHECK_RESULT(te_llama_tokenizer_load("/nonexistent/te_llama/tokenizer.json", NULL, &t), TE_LLAMA_ERR_NOT_FOUND);
    { /* added tokens with lstrip/rstrip, non-special added tokens, and a normalized one */
        const char *json = "{\"added_tokens\":[{\"id\":5,\"content\":\"<x>\",\"lstrip\":true,\"rstrip\":true,\"special\":true,\"normalized\":false},"
                           "{\"id\":6,\"content\":\"cc\",\"special\":false,\"normalized\":true}]," TOY_MODEL ",\"merges\":[\"a b\"]}}";
        CHECK_RESULT(parse_str(json, &t), TE_LLAMA_OK);
        if (t) {
            CHECK_RESULT(te_llama_tokenizer_encode(t, "a  <x>  bccc", 12, 0, &ids, &n), TE_LLAMA_OK);
            CHECK(n == 5 && ids[0] == 0 && ids[1] == 5 && ids[2] == 1 && ids[3] == 6 && ids[4] == 3, "added tokens: %zu ids", n);
            te_llama_tokenizer_free_ids(t, ids);
            te_llama_tokenizer_free(t);
        }
    }
}

/* A counting allocator: everything the tokenizer allocates comes back. */
static long live_blocks;
static void *count_alloc(void *u, size_t n) { (void)u; live_blocks++; return malloc(n); }
static void *count_realloc(void *u, void *p, size_t n) { (void)u; if (!p) live_blocks++; return realloc(p, n); }
static void count_free(void *u, void *p) { (void)u; if (p) live_blocks--; free(p); }

static void test_allocator(void) {
    te_llama_allocator a;
    te_llama_tokenizer *t = NULL;
    char path[1024], *text;
    int32_t *ids;
    size_t n, len;
    a.alloc = count_alloc;
    a.realloc = count_realloc;
    a.free = count_free;
    a.user = NULL;
    snprintf(path, sizeof path, "%s/data/tokenizers/llama2/tokenizer.json", shared_dir());
    CHECK_RESULT(te_llama_tokenizer_load(path, &a, &t), TE_LLAMA_OK);
    if (!t) return;
    CHECK_RESULT(te_llama_tokenizer_encode(t, "Hello <s> world \xf0\x9f\x99\x82", 20, 1, &ids, &n), TE_LLAMA_OK);
    CHECK_RESULT(te_llama_tokenizer_decode(t, ids, n, 0, &text, &len), TE_LLAMA_OK);
    CHECK(strcmp(text, "<s> Hello <s>  world \xf0\x9f\x99\x82") == 0, "allocator round trip: %s", text);
    te_llama_tokenizer_free_text(t, text);
    te_llama_tokenizer_free_ids(t, ids);
    te_llama_tokenizer_free(t);
    CHECK(live_blocks == 0, "%ld blocks leaked through the allocator", live_blocks);
}

int main(int argc, char **argv) {
    const char *ref = argc > 1 ? argv[1] : "build/tokref";
    te_llama_tokenizer *l3 = load("llama3"), *l2 = load("llama2");
    if (!l3 || !l2) return CHECK_DONE("tokenizer");
    test_basics(l3, l2);
    test_pretokenizer(ref);
    test_cases(ref, "llama3", l3);
    test_cases(ref, "llama2", l2);
    test_austen(ref, "llama3", l3);
    test_austen(ref, "llama2", l2);
    test_chat(ref, l3, l2);
    test_streaming(l3, l2);
    test_invalid_utf8(l3, l2);
    test_errors();
    test_allocator();
    te_llama_tokenizer_free(l3);
    te_llama_tokenizer_free(l2);
    return CHECK_DONE("tokenizer");
}
