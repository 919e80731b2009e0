#!/usr/bin/env python3
"""Check a checkpoint saved by build/train with HuggingFace transformers.

Usage:
    python3 tools/check_finetuned.py OUT_DIR TEXT_FILE [--tol 1e-3]

Loads OUT_DIR with LlamaForCausalLM (weights as stored, computed in float32, eager attention) and its tokenizer
with the `tokenizers` package, tokenizes TEXT_FILE as build/train does (BOS as the tokenizer adds it, sequences of
`seq` tokens from OUT_DIR/train_log.json, the tail that does not fill one dropped, the last `n_heldout` held out),
and prints HF's loss on the held-out sequences (labels = input_ids: mean over every next-token prediction) beside
the held-out loss build/train reported. Exit status 1 when they differ by more than --tol.
"""

import argparse
import json
import os
import sys

import torch
from tokenizers import Tokenizer
from transformers import LlamaForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("text")
    ap.add_argument("--tol", type=float, default=1e-3)
    args = ap.parse_args()
    with open(os.path.join(args.out_dir, "train_log.json")) as f:
        log = json.load(f)
    T, n_held = log["seq"], log["n_heldout"]
    tok = Tokenizer.from_file(os.path.join(args.out_dir, "tokenizer.json"))
    with open(args.text, "rb") as f:
        text = f.read().decode("utf-8", errors="replace")
    ids = tok.encode(text).ids
    n_seq = len(ids) // T
    if n_seq != log["n_sequences"]:
        sys.exit(f"{n_seq} sequences of {T} tokens, build/train had {log['n_sequences']}: not the same text or tokenizer")
    held = torch.tensor(ids[(n_seq - n_held) * T: n_seq * T]).view(n_held, T)
    model = LlamaForCausalLM.from_pretrained(args.out_dir, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        loss = model(input_ids=held, labels=held, use_cache=False).loss.item()
    diff = abs(loss - log["heldout_loss"])
    print(f"held-out: {n_held} sequences of {T} tokens; HF loss {loss:.6f}, build/train reported {log['heldout_loss']:.6f}, "
          f"difference {diff:.2e} (ppl {torch.tensor(loss).exp().item():.2f})")
    sys.exit(0 if diff <= args.tol else 1)


if __name__ == "__main__":
    main()
