/* test_bad.c - every broken checkpoint of tests/bad/make_bad.py gives its exact result code and a message
   that says what and where. Each case runs in a child process with a time limit, so a crash or a hang is one
   failed case, not the end of the run; under the sanitizers a leak fails the case too (the child's exit status).
     python3 tests/bad/make_bad.py build/tmp/bad
     cc -std=c99 -I. -Itests tests/bad/test_bad.c -o build/test_bad -lm && build/test_bad build/tmp/bad
   Prints "bad: N passed, N failed". BAD_TIMEOUT (seconds, default 5) bounds each case. */
#define TE_LLAMA_IMPLEMENTATION
#include "te_llama.h"
#include "check.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *const result_names[] = {
#define NAME(name, str) "TE_LLAMA_" #name,
    TE_LLAMA__RESULTS(NAME)
#undef NAME
};

static int result_from_name(const char *s) {
    int r;
    for (r = 0; r < (int)TE_LLAMA_RESULT_COUNT; r++)
        if (strcmp(result_names[r], s) == 0) return r;
    return -1;
}

typedef struct outcome {
    int result;
    int detail_ok;   /* the OK controls: the model or tokenizer works */
    char message[1024];
} outcome;

/* In the child: load, report through fd, free everything. */
static void run_case(const char *path, const char *kind, int fd) {
    outcome o;
    memset(&o, 0, sizeof o);
    if (strcmp(kind, "tokenizer") == 0) {
        te_llama_tokenizer *t = NULL;
        o.result = (int)te_llama_tokenizer_load(path, NULL, &t);
        snprintf(o.message, sizeof o.message, "%s", te_llama_last_error());
        if (o.result == TE_LLAMA_OK) {
            int32_t *ids = NULL;
            size_t n = 0;
            o.detail_ok = t != NULL && te_llama_tokenizer_encode(t, "Hello world", 11, 1, &ids, &n) == TE_LLAMA_OK && n > 0;
            if (ids) te_llama_tokenizer_free_ids(t, ids);
        } else {
            o.detail_ok = t == NULL;
        }
        te_llama_tokenizer_free(t);
    } else {
        te_llama_model *m = NULL;
        o.result = (int)te_llama_load(path, NULL, &m);
        snprintf(o.message, sizeof o.message, "%s", te_llama_last_error());
        o.detail_ok = o.result == TE_LLAMA_OK ? m != NULL && te_llama_num_parameters(m) > 0 : m == NULL;
        te_llama_free(m);
    }
    if (write(fd, &o, sizeof o) != (ssize_t)sizeof o) _exit(3);
}

int main(int argc, char **argv) {
    const char *root = argc > 1 ? argv[1] : "build/tmp/bad";
    const char *env = getenv("BAD_TIMEOUT");
    unsigned timeout = env && atoi(env) > 0 ? (unsigned)atoi(env) : 5;
    char manifest[2048], *text, *line, *next;
    FILE *f;
    long size;
    int n_cases = 0;
    snprintf(manifest, sizeof manifest, "%s/manifest.tsv", root);
    f = fopen(manifest, "r");
    CHECK(f != NULL, "cannot open %s (run tests/bad/make_bad.py first)", manifest);
    if (!f) return CHECK_DONE("bad");
    /* read it all first: a child's exit must not move the offset of a stdio stream shared with the parent */
    fseek(f, 0, SEEK_END);
    size = ftell(f);
    fseek(f, 0, SEEK_SET);
    text = (char *)calloc((size_t)size + 1, 1);
    if (!text || fread(text, 1, (size_t)size, f) != (size_t)size) { perror(manifest); return 2; }
    fclose(f);
    for (line = text; *line; line = next) {
        char *name, *kind, *expected_name, *needle, *desc, path[4096];
        int expected, pipefd[2], status = 0;
        pid_t pid;
        outcome o;
        ssize_t got;
        next = line + strcspn(line, "\n");
        if (*next) *next++ = 0;
        if (line[0] == '#' || line[0] == 0) continue;
        name = line;
        kind = strchr(name, '\t');
        expected_name = kind ? strchr(kind + 1, '\t') : NULL;
        needle = expected_name ? strchr(expected_name + 1, '\t') : NULL;
        desc = needle ? strchr(needle + 1, '\t') : NULL;
        CHECK(desc != NULL, "manifest line \"%s\" does not have 5 fields", line);
        if (!desc) continue;
        *kind++ = 0; *expected_name++ = 0; *needle++ = 0; *desc++ = 0;
        n_cases++;
        expected = result_from_name(expected_name);
        CHECK(expected >= 0, "%s: unknown result name %s", name, expected_name);
        if (expected < 0) continue;
        snprintf(path, sizeof path, "%s/%s", root, name);
        fflush(stdout);
        fflush(stderr);
        if (pipe(pipefd) != 0) { perror("pipe"); return 2; }
        pid = fork();
        if (pid < 0) { perror("fork"); return 2; }
        if (pid == 0) {
            close(pipefd[0]);
            alarm(timeout); /* a hang ends the child with SIGALRM */
            run_case(path, kind, pipefd[1]);
            close(pipefd[1]);
            exit(0); /* exit, not _exit: LeakSanitizer checks the child here */
        }
        close(pipefd[1]);
        memset(&o, 0, sizeof o);
        got = read(pipefd[0], &o, sizeof o);
        close(pipefd[0]);
        waitpid(pid, &status, 0);
        if (WIFSIGNALED(status)) {
            CHECK(0, "%s (%s): %s after %s", name, desc, WTERMSIG(status) == SIGALRM ? "hung" : "crashed",
                  WTERMSIG(status) == SIGALRM ? "the time limit" : strsignal(WTERMSIG(status)));
            continue;
        }
        CHECK(got == (ssize_t)sizeof o, "%s (%s): the child reported nothing (exit %d)", name, desc, WEXITSTATUS(status));
        if (got != (ssize_t)sizeof o) continue;
        CHECK(o.result == expected, "%s (%s): got %s (%s), expected %s", name, desc,
              o.result >= 0 && o.result < (int)TE_LLAMA_RESULT_COUNT ? result_names[o.result] : "?", o.message,
              expected_name);
        CHECK(WEXITSTATUS(status) == 0, "%s (%s): the child exited with %d (a leak under the sanitizers?)", name, desc,
              WEXITSTATUS(status));
        CHECK(o.detail_ok, "%s (%s): %s", name, desc,
              expected == TE_LLAMA_OK ? "loaded but does not work" : "a failed load handed back an object");
        if (expected != TE_LLAMA_OK && o.result == expected) {
            const char *prefix = te_llama_result_string((te_llama_result)o.result);
            /* the message is "<result string>: what and where" and names the thing in the needle */
            CHECK(strncmp(o.message, prefix, strlen(prefix)) == 0 && strlen(o.message) > strlen(prefix) + 2,
                  "%s: message \"%s\" does not start with \"%s: \"", name, o.message, prefix);
            CHECK(strstr(o.message, needle) != NULL, "%s (%s): message \"%s\" does not mention \"%s\"", name, desc,
                  o.message, needle);
        }
    }
    free(text);
    CHECK(n_cases >= 50, "only %d cases in %s", n_cases, manifest);
    return CHECK_DONE("bad");
}
