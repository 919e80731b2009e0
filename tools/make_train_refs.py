#!/usr/bin/env python3
"""Training references for te_llama's CPU backward and AdamW, made by HuggingFace transformers + torch.

Usage:
    python3 tools/make_train_refs.py [--fixtures tests/fixtures]

For each of gqa_tied_llama3, mha_untied_bf16 and headdim_f16 it writes, beside the checkpoint:

  ref_grads.safetensors  float32 gradient of the loss for every HF parameter (named as HF names them; a tied
                         lm_head is part of model.embed_tokens.weight), from the checkpoint loaded in float64 with
                         eager attention, autograd in float64. To keep the fixture small a 2-D gradient keeps
                         its even rows only (rows 0, 2, 4, ...: shape (ceil(rows / 2), cols)); 1-D ones are whole.
  ref_grads_bf16.safetensors   (fixtures not stored in bf16) the same gradients with the weights first rounded to
                         bfloat16, as the CUDA backend holds them, then computed in float64: the reference for
                         the GPU trainer's own arithmetic, apart from the rounding of the weights.
  ref_train.json         the batch (B = 2, T = 9 tokens, labels with some -100), the float64 loss of
                         LlamaForCausalLM(input_ids, labels=labels) (HF shifts the labels inside), and the losses
                         of 10 torch.optim.AdamW steps on the checkpoint loaded in float32 with the schedule and
                         hyper-parameters recorded there (loss i is measured before step i; losses[10] after the
                         last step). Weight decay on 2-D parameters only (two param groups), clip_grad_norm_ over
                         all parameters, lr per step as te_llama_train_lr computes it.
"""

import argparse
import json
import math
import os

import numpy as np
import torch
import transformers
from safetensors.numpy import save_file
from transformers import LlamaForCausalLM

FIXTURES = ["gqa_tied_llama3", "mha_untied_bf16", "headdim_f16"]
B, T = 2, 9
ADAMW = dict(lr=2e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, clip_norm=1.0,
             warmup_steps=3, total_steps=10, min_lr_ratio=0.1, steps=10)


def batch():
    g = np.random.default_rng(20240611)
    tokens = g.integers(4, 256, size=(B, T)).astype(np.int64)
    labels = tokens.copy()
    labels[0, 3] = -100   # an ignored label inside the first sequence
    labels[1, 5:7] = -100  # two in the second
    labels[1, 0] = -100   # position 0 is never a target anyway
    return tokens, labels


def lr_at(step):
    """te_llama_train_lr: linear warmup, then cosine to min_lr_ratio * lr at total_steps."""
    a = ADAMW
    if step < a["warmup_steps"]:
        return a["lr"] * (step + 1) / a["warmup_steps"]
    if a["total_steps"] > a["warmup_steps"]:
        p = min(1.0, (step - a["warmup_steps"]) / (a["total_steps"] - a["warmup_steps"]))
        return a["lr"] * (a["min_lr_ratio"] + (1 - a["min_lr_ratio"]) * 0.5 * (1 + math.cos(math.pi * p)))
    return a["lr"]


def load(path, dtype):
    m = LlamaForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager")
    m.train()  # no dropout in Llama (attention_dropout 0), so train == eval numerically
    return m


def grads_f64(path, tokens, labels, bf16_weights=False):
    m = load(path, torch.float64)
    if bf16_weights:
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(p.to(torch.bfloat16).to(torch.float64))
    out = m(input_ids=torch.tensor(tokens), labels=torch.tensor(labels), use_cache=False)
    out.loss.backward()
    grads = {}
    for name, p in m.named_parameters():
        g = p.grad.detach().to(torch.float32).numpy()
        grads[name] = np.ascontiguousarray(g[::2] if g.ndim == 2 else g)
    return float(out.loss.item()), grads


def adamw_losses(path, tokens, labels):
    a = ADAMW
    m = load(path, torch.float32)
    decay = [p for p in m.parameters() if p.ndim == 2]
    no_decay = [p for p in m.parameters() if p.ndim != 2]
    opt = torch.optim.AdamW([dict(params=decay, weight_decay=a["weight_decay"]),
                             dict(params=no_decay, weight_decay=0.0)],
                            lr=a["lr"], betas=(a["beta1"], a["beta2"]), eps=a["eps"])
    x, y = torch.tensor(tokens), torch.tensor(labels)
    losses, norms = [], []
    for step in range(a["steps"]):
        opt.zero_grad()
        loss = m(input_ids=x, labels=y, use_cache=False).loss
        loss.backward()
        losses.append(float(loss.item()))
        norms.append(float(torch.nn.utils.clip_grad_norm_(m.parameters(), a["clip_norm"]).item()))
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.step()
    with torch.no_grad():
        losses.append(float(m(input_ids=x, labels=y, use_cache=False).loss.item()))
    return losses, norms


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures"))
    ap.add_argument("--bf16-only", action="store_true", help="write only ref_grads_bf16.safetensors")
    args = ap.parse_args()
    torch.manual_seed(0)
    tokens, labels = batch()
    for name in FIXTURES:
        d = os.path.join(args.fixtures, name)
        with open(os.path.join(d, "config.json")) as f:
            config = json.load(f)
        stored = config.get("dtype") or config.get("torch_dtype")
        if stored != "bfloat16":
            loss16, grads16 = grads_f64(d, tokens, labels, bf16_weights=True)
            save_file(grads16, os.path.join(d, "ref_grads_bf16.safetensors"),
                      metadata={"rows": "even rows of 2-D gradients", "weights": "rounded to bfloat16, then float64",
                                "loss": repr(loss16)})
            print(f"{name}: bf16-rounded weights: loss {loss16:.8f}")
        if args.bf16_only:
            continue
        loss, grads = grads_f64(d, tokens, labels)
        losses, norms = adamw_losses(d, tokens, labels)
        save_file(grads, os.path.join(d, "ref_grads.safetensors"), metadata={"rows": "even rows of 2-D gradients"})
        ref = dict(B=B, T=T, tokens=tokens.tolist(), labels=labels.tolist(), loss=loss,
                   adamw=dict(ADAMW, losses=losses, grad_norms=norms,
                              note="float32 model, losses[i] before step i, losses[steps] after the last"),
                   grads_rows="even rows (0, 2, ...) of 2-D gradients, whole 1-D gradients",
                   versions=dict(torch=torch.__version__, transformers=transformers.__version__))
        with open(os.path.join(d, "ref_train.json"), "w") as f:
            json.dump(ref, f, indent=1)
            f.write("\n")
        print(f"{name}: loss {loss:.8f}, adamw {losses[0]:.6f} -> {losses[-1]:.6f}, grad norm {norms[0]:.4f}")


if __name__ == "__main__":
    main()
