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

#define CHECK_DONE(name)                                                                                      \
    (printf("%s: %d passed, %d failed\n", (name), check_passed, check_failed), check_failed ? 1 : 0)

#endif
