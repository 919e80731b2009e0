/* check.h - the test suite's tiny harness: CHECK counts, a failure prints where and why, and
   CHECK_DONE() prints "name: N passed, N failed" and gives the exit status. */
#ifndef TE_LLAMA_CHECK_H
#define TE_LLAMA_CHECK_H
#include <stdio.h>
#include <stdlib.h>

static int check_passed, check_failed;

#define CHECK(cond, ...)                                                                                      \
    do {                                                                                                      \
        if (cond) {                                                                                           \
            check_passed++;                                                                                   \
        } else {                                                                                              \
            check_failed++;                                                                                   \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                                   \
            fprintf(stderr, __VA_ARGS__);                                                                     \
            fprintf(stderr, "\n");                                                                            \
        }                                                                                                     \
    } while (0)

/* Assert an exact result code, printing the library's message when it differs. */
#define CHECK_RESULT(expr, expected)                                                                          \
    do {                                                                                                      \
        te_llama_result check_r_ = (expr);                                                                    \
        CHECK(check_r_ == (expected), "got %s (%s), expected %s", te_llama_result_string(check_r_),           \
              check_r_ ? te_llama_last_error() : "", te_llama_result_string(expected));                      \
    } while (0)

/* A whole file in memory, NUL-terminated, for the caller to free; NULL when it cannot be read. */
static inline char *check_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    char *buf;
    long n;
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = n >= 0 ? (char *)malloc((size_t)n + 1) : NULL;
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) { free(buf); buf = NULL; }
    fclose(f);
    if (!buf) return NULL;
    buf[n] = 0;
    if (len) *len = (size_t)n;
    return buf;
}

/* The Austen corpus ($TE_LLAMA_SHARED, default ../shared: data/austen/austen.txt) split as
   tools/train_default_model.py splits it: the held-out text is its last 5% from a character boundary, *cut on;
   FP8 calibration reads the training text just before it, from *calib_at (20000 bytes earlier) to *cut. Returns
   the corpus for the caller to free, or NULL when it cannot be read. */
static inline char *check_austen_split(size_t *len, size_t *cut, size_t *calib_at) {
    const char *shared = getenv("TE_LLAMA_SHARED") ? getenv("TE_LLAMA_SHARED") : "../shared";
    char path[2048];
    char *text;
    snprintf(path, sizeof path, "%s/data/austen/austen.txt", shared);
    text = check_read_file(path, len);
    if (!text || *len < 40000) { free(text); return NULL; }
    *cut = (size_t)((double)*len * 0.95);
    while (*cut < *len && ((unsigned char)text[*cut] & 0xc0) == 0x80) (*cut)++; /* a character boundary */
    *calib_at = *cut - 20000;
    while (((unsigned char)text[*calib_at] & 0xc0) == 0x80) (*calib_at)++;
    return text;
}

#define CHECK_DONE(name)                                                                                      \
    (printf("%s: %d passed, %d failed\n", (name), check_passed, check_failed), check_failed ? 1 : 0)

#endif
