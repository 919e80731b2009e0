#!/usr/bin/env python3
"""Time HF `tokenizers` (single-threaded) against the C tokenizer on the Austen corpus, in one run.

    cc -O2 -std=c99 -I. examples/tokenize.c -o build/tokenize -lm
    TE_LLAMA_SHARED=../shared python3 tests/bench_tokenizer.py [build/tokenize]

HF runs with TOKENIZERS_PARALLELISM=false and RAYON_NUM_THREADS=1; it encodes the corpus as one string, and its
lines with encode_batch. The C side is `build/tokenize --bench`, which does the same (lines one encode each).
"""
import os
import subprocess
import sys
import time

os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["RAYON_NUM_THREADS"] = "1"
from tokenizers import Tokenizer  # noqa: E402  (after the environment is set)

SHARED = os.environ.get("TE_LLAMA_SHARED", "../shared")
DATA = os.path.join(SHARED, "data")


def best(f, reps=3):
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        r = f()
        t.append(time.perf_counter() - t0)
    return min(t), r


def main():
    exe = sys.argv[1] if len(sys.argv) > 1 else "build/tokenize"
    corpus = os.path.join(DATA, "austen", "austen.txt")
    with open(corpus, encoding="utf-8") as f:
        text = f.read()
    mb = len(text.encode("utf-8")) / 1e6
    lines = text.split("\n")
    for name in ("llama3", "llama2"):
        path = os.path.join(DATA, "tokenizers", name, "tokenizer.json")
        t_load, tok = best(lambda: Tokenizer.from_file(path))
        t_whole, enc = best(lambda: tok.encode(text, add_special_tokens=False), 1 if name == "llama2" else 3)
        t_lines, _ = best(lambda: tok.encode_batch(lines, add_special_tokens=False))
        t_dec, _ = best(lambda: tok.decode(enc.ids, skip_special_tokens=False))
        print("%s HF:  load %.1f ms | encode whole %.1f ms %.2f MB/s | encode lines %.1f ms %.2f MB/s | decode %.1f ms"
              % (name, t_load * 1e3, t_whole * 1e3, mb / t_whole, t_lines * 1e3, mb / t_lines, t_dec * 1e3))
        out = subprocess.run([exe, "-t", os.path.dirname(path), "--bench", corpus], capture_output=True, text=True)
        if out.returncode:
            sys.exit(out.stderr)
        print("%s C:   %s" % (name, " | ".join(out.stdout.strip().split("\n"))))


if __name__ == "__main__":
    main()
