#!/usr/bin/env python3
"""The training-step benchmark: te_llama (CUDA) against HF transformers + torch, in one run.

    python3 bench/bench_train.py [--shape 1b] [--batch 8] [--seq 256] [--steps 10] [--warmup 3]
                                 [--ckpt-dir /tmp/bench_ckpt] [--bench-bin build/bench_train] [--out OUT_DIR] [--skip-bf16]

One step = forward, loss (HF's shifted token cross-entropy), backward, global-norm clipping to 1.0 and AdamW
(lr 3e-4, weight decay 0.01 on the 2-D parameters) over a batch of random tokens; the median of the timed steps
after the warmup, each side in its own child process. The checkpoint is bench.py's (random weights, HF
save_pretrained, bf16).
  te_llama:  build/bench_train: bf16 weights and activations, fp32 master weights, gradients and moments on the
             device, one fused AdamW kernel.
  HF amp:    LlamaForCausalLM (sdpa) with fp32 parameters under torch.autocast(bfloat16), torch.optim.AdamW
             (fused=True): the usual mixed-precision recipe and the fair peer (fp32 master weights too).
  HF bf16:   the same with bf16 parameters and optimizer state (no master weights; cheaper, less exact).
Prints the predicted step time from the FLOP count, both step times and the ratios; with --out writes
OUT_DIR/bench_train.json.
"""
import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import SHAPES, make_checkpoint  # noqa: E402


def flops(shape, B, T):
    """Training FLOPs of one step: 6 x (matmul parameters, lm_head included) x tokens, plus causal attention
    (QK^T and PV: 2 x 2 x T^2 / 2 x head_dim per head, forward; x 3 with the backward, x 3.5 when the backward
    recomputes the scores as a flash backward does)."""
    c = SHAPES[shape]
    h, I, L, V = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    nh, nkv = c["num_attention_heads"], c["num_key_value_heads"]
    hd = c.get("head_dim", h // nh)
    per_layer = h * (nh * hd + 2 * nkv * hd) + nh * hd * h + 2 * I * h + I * h
    matmul = L * per_layer + V * h
    attn_fwd = L * B * nh * 2 * 2 * (T * T / 2) * hd
    return 6 * matmul * B * T, 3.5 * attn_fwd, matmul


def hf_child(kind, path, B, T, warmup, steps):
    import torch
    from transformers import LlamaForCausalLM
    amp = kind == "hf-amp"
    model = LlamaForCausalLM.from_pretrained(path, torch_dtype=torch.float32 if amp else torch.bfloat16,
                                             attn_implementation="sdpa").cuda()
    model.train()
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.ndim == 2], "weight_decay": 0.01},
              {"params": [p for p in params if p.ndim != 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=3e-4, betas=(0.9, 0.999), eps=1e-8, fused=True)
    g = torch.Generator(device="cuda").manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (B, T), device="cuda", generator=g)
    times, losses = [], []
    for _ in range(warmup + steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    t = sorted(times[warmup:])
    return {"step_ms_median": 1e3 * t[len(t) // 2], "step_ms_min": 1e3 * t[0], "step_ms_max": 1e3 * t[-1],
            "tokens_per_s": B * T / t[len(t) // 2], "loss_first": losses[0], "loss_last": losses[-1],
            "device_gib_peak": torch.cuda.max_memory_allocated() / 2 ** 30}


def run_child(kind, args, path):
    cmd = [sys.executable, __file__, "--child", kind, "--ckpt", path, "--batch", str(args.batch), "--seq", str(args.seq),
           "--steps", str(args.steps), "--warmup", str(args.warmup)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        print(f"{kind} failed:\n{r.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="1b", choices=sorted(SHAPES))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--ckpt-dir", default="/tmp/bench_ckpt")
    ap.add_argument("--bench-bin", default="build/bench_train")
    ap.add_argument("--out")
    ap.add_argument("--skip-bf16", action="store_true")
    ap.add_argument("--child")
    ap.add_argument("--ckpt")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(hf_child(args.child, args.ckpt, args.batch, args.seq, args.warmup, args.steps)))
        return
    path = os.path.join(args.ckpt_dir, args.shape)
    make_checkpoint(args.shape, path)
    mm, att, n_matmul = flops(args.shape, args.batch, args.seq)
    # prediction: GEMMs at ~600 TFLOPS (cuBLASLt on an H200 at these shapes), the CUDA-core attention backward at
    # ~10 TFLOPS, AdamW and the elementwise kernels at ~3.5 TB/s (34 bytes a parameter for AdamW)
    predicted = mm / 600e12 + att / 10e12 + 34 * n_matmul / 3.5e12
    print(f"{args.shape}: {n_matmul / 1e9:.2f} B matmul parameters, batch {args.batch} x {args.seq}: "
          f"{mm / 1e12:.2f} TFLOP matmuls + {att / 1e12:.3f} TFLOP attention a step; predicted te_llama step "
          f"{1e3 * predicted:.1f} ms")
    results = {"shape": args.shape, "batch": args.batch, "seq": args.seq, "tflop_matmul": mm / 1e12,
               "tflop_attention": att / 1e12, "predicted_ms": 1e3 * predicted}
    r = subprocess.run([args.bench_bin, "-m", path, "--batch", str(args.batch), "--seq", str(args.seq),
                        "--steps", str(args.steps), "--warmup", str(args.warmup)], capture_output=True, text=True)
    if r.returncode == 0:
        results["te_llama"] = json.loads(r.stdout.strip().splitlines()[-1])
    else:
        print(f"te_llama failed:\n{r.stderr[-3000:]}", file=sys.stderr)
    results["hf_amp"] = run_child("hf-amp", args, path)
    if not args.skip_bf16:
        results["hf_bf16"] = run_child("hf-bf16", args, path)
    ours = results.get("te_llama")
    print(f"{'side':<34}{'step ms (median)':>18}{'tokens/s':>12}{'TFLOPS':>9}{'loss first/last':>20}{'vs te_llama':>13}")
    for key, label in [("te_llama", "te_llama (CUDA, bf16 + fp32 master)"), ("hf_amp", "HF amp (fp32 params, autocast bf16)"),
                       ("hf_bf16", "HF pure bf16 params")]:
        x = results.get(key)
        if not x:
            continue
        ms = x["step_ms_median"]
        ratio = f"{ms / ours['step_ms_median']:.2f}x" if ours and key != "te_llama" else ""
        print(f"{label:<34}{ms:>18.2f}{x['tokens_per_s']:>12.0f}{(mm + att) / ms / 1e9:>9.0f}"
              f"{x['loss_first']:>10.3f}/{x['loss_last']:<9.3f}{ratio:>13}")
    if ours and results.get("hf_amp"):
        results["speedup_vs_hf_amp"] = results["hf_amp"]["step_ms_median"] / ours["step_ms_median"]
        print(f"te_llama step is {results['speedup_vs_hf_amp']:.2f}x faster than HF amp (target >= 1.3x)")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "bench_train.json"), "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
