#!/usr/bin/env python3
"""A second, independent measurement of FP8's top-1 agreement on the default model (issue #9).

tests/test_fp8.c's test_accuracy measures the CPU emulation of TransformerEngine's DelayedScaling recipe on
held-out Austen text. This script measures the same thing with nothing of te_llama: HF transformers'
LlamaForCausalLM (float32, eager attention) loads models/austen, the HF tokenizers library encodes the text,
and torch's float8_e4m3fn cast quantises the four decoder GEMMs' operands. If both land on the same figure, the
figure belongs to the model and the recipe, not to our emulation.

The recipe, as TE's DelayedScaling with its defaults (E4M3, history 1024, MAX, margin 0):
  - QKV, proj, fc1 and fc2 in FP8; embeddings, norms, attention and lm_head in high precision.
  - One scale per fused weight (q, k and v share one, as gate and up do), from the weight's amax.
  - One scale per GEMM input, from the largest amax in its history; the forward quantises with the scales of the
    forwards before it, records its own amaxes, and the scales are updated after it. A zero amax is not recorded.
  - q = e4m3(clamp(x * scale, -448, 448)); the GEMM is (q_x . q_w^T) * (1/scale_x) * (1/scale_w).
  - Calibration: 4 forwards in high precision over the training text just before the held-out part, recording
    amaxes only.

Usage: python3 tools/fp8_peer.py [--model models/austen] [--shared ../shared] [--chunks 12] [--margin 0]
       [--history 1024] [--calibrate 4] [--dtype float32|float64] [--attn eager|sdpa] [--device cpu|cuda]
       [--gemm emulated|scaled_mm] [--bf16-layers START,END]
Prints the perplexities, the agreement, and how many disagreements fall where the reference's top-2 gap < 0.25.
Runs on the CPU in under a minute. --gemm scaled_mm (CUDA, Ada or Hopper) runs the four GEMMs on the FP8 tensor
cores through torch._scaled_mm, bf16 out, as TE's GEMMs do. --bf16-layers 1,1 keeps the first and the last decoder
layers out of FP8 (te_llama_fp8_recipe.bf16_layers_start / _end, Megatron-Core's first_last_layers_bf16).
"""

import argparse
import math
import os

import torch
from tokenizers import Tokenizer
import transformers
from transformers import LlamaForCausalLM

E4M3_MAX = 448.0


def e4m3(x, scale):
    """The E4M3 values of x * scale, saturated at +-448, in x's dtype (dequantising is the caller's 1 / scale)."""
    return torch.clamp(x * scale, -E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).to(x.dtype)


class ScalingState:
    """One tensor's delayed-scaling state: amax history (newest last) and the scale the next forward uses."""

    def __init__(self, history, margin):
        self.history, self.margin, self.amaxes, self.scale = history, margin, [], 1.0

    def record(self, amax):
        if amax > 0.0:  # TE does not roll the history on a zero amax
            self.amaxes = (self.amaxes + [amax])[-self.history:]

    def update(self):
        amax = max(self.amaxes) if self.amaxes else 0.0
        if amax > 0.0 and math.isfinite(amax):
            self.scale = E4M3_MAX / amax / 2.0 ** self.margin


class Fp8Gemm:
    """A fused decoder GEMM: one input scaling state, one weight scale, n linear layers sharing both."""

    def __init__(self, linears, args):
        self.linears = linears
        self.input = ScalingState(args.history, args.margin)
        w_amax = max(float(l.weight.detach().abs().max()) for l in linears)
        self.w_scale = E4M3_MAX / w_amax / 2.0 ** args.margin
        self.w_q = [e4m3(l.weight.data, self.w_scale) for l in linears]
        self.scaled_mm = args.gemm == "scaled_mm"
        if self.scaled_mm:  # E4M3 operands for the tensor cores: (out, in) row-major is W^T column-major
            self.w_f8 = [w.to(torch.float8_e4m3fn) for w in self.w_q]

    def forward(self, i, x, mode):
        """Linear i of this GEMM on input x ([tokens, in]) in `mode`: 'hp', 'calibrate' or 'fp8'."""
        lin = self.linears[i]
        if mode == "hp":
            return torch.nn.functional.linear(x, lin.weight)
        if i == 0:  # the fused input is quantised once, its amax recorded once
            self.input.record(float(x.abs().max()))
        if mode == "calibrate":
            return torch.nn.functional.linear(x, lin.weight)
        xq = e4m3(x, self.input.scale)
        if self.scaled_mm:  # the FP8 tensor-core GEMM, scales applied to the fp32 accumulator, bf16 out (as TE's)
            one = lambda v: torch.tensor(v, dtype=torch.float32, device=x.device)
            y = torch._scaled_mm(xq.to(torch.float8_e4m3fn), self.w_f8[i].t(), scale_a=one(1.0 / self.input.scale),
                                 scale_b=one(1.0 / self.w_scale), out_dtype=torch.bfloat16)
            return y.to(x.dtype)
        return (xq @ self.w_q[i].t()) * ((1.0 / self.input.scale) * (1.0 / self.w_scale))


def install(model, args):
    """Route the decoder's linears through Fp8Gemm; returns the GEMMs and a one-item list holding the mode."""
    mode = ["hp"]
    gemms = []

    def route(gemm, i):
        def fwd(x):
            shape = x.shape
            y = gemm.forward(i, x.reshape(-1, shape[-1]), mode[0])
            return y.reshape(*shape[:-1], y.shape[-1])
        gemm.linears[i].forward = fwd

    first, last = args.bf16_layers
    n = len(model.model.layers)
    for li, layer in enumerate(model.model.layers):
        if li < first or li >= n - last:  # kept out of FP8: its linears stay as they are
            continue
        a, m = layer.self_attn, layer.mlp
        for linears in ([a.q_proj, a.k_proj, a.v_proj], [a.o_proj], [m.gate_proj, m.up_proj], [m.down_proj]):
            g = Fp8Gemm(linears, args)
            for i in range(len(linears)):
                route(g, i)
            gemms.append(g)
    return gemms, mode


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="models/austen")
    ap.add_argument("--shared", default=os.environ.get("TE_LLAMA_SHARED", "../shared"))
    ap.add_argument("--chunks", type=int, default=12)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--margin", type=int, default=0)
    ap.add_argument("--history", type=int, default=1024)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                    help="the model's arithmetic (float64: how much of the figure is float32's rounding)")
    ap.add_argument("--attn", default="eager", choices=["eager", "sdpa"])
    ap.add_argument("--device", default="cpu", help="cpu or cuda (float32 matmuls without TF32)")
    ap.add_argument("--gemm", default="emulated", choices=["emulated", "scaled_mm"],
                    help="emulated: float matmul of the E4M3 values; scaled_mm: torch._scaled_mm's FP8 GEMM (CUDA, Hopper/Ada)")
    ap.add_argument("--calibrate", type=int, default=4, help="calibration forwards (0: the first forward at scale 1)")
    ap.add_argument("--bf16-layers", default="0,0", type=lambda v: tuple(int(x) for x in v.split(",")),
                    help="START,END: the first START and the last END decoder layers kept out of FP8")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    raw = open(os.path.join(args.shared, "data/austen/austen.txt"), "rb").read()
    cut = int(len(raw) * 0.95)  # as test_accuracy: the last 5%, from a character boundary
    while cut < len(raw) and (raw[cut] & 0xC0) == 0x80:
        cut += 1
    calib_at = cut - 20000
    while (raw[calib_at] & 0xC0) == 0x80:
        calib_at += 1
    tok = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    ids = tok.encode(raw[cut:].decode("utf-8"), add_special_tokens=False).ids
    cids = tok.encode(raw[calib_at:cut].decode("utf-8"), add_special_tokens=False).ids

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = LlamaForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype),
                                             attn_implementation=args.attn).eval().to(args.device)
    gemms, mode = install(model, args)

    def forward(x, m):
        mode[0] = m
        with torch.no_grad():
            logits = model(torch.tensor([x], device=args.device)).logits[0].double().cpu()
        if m != "hp":
            for g in gemms:
                g.input.update()
        return logits

    seq = args.seq
    for c in range(args.calibrate):
        forward(cids[c * seq:(c + 1) * seq], "calibrate")
    nll_ref = nll_fp8 = 0.0
    agree = total = ties = ties_flipped = 0
    for c in range(args.chunks):
        x = ids[c * seq:(c + 1) * seq]
        ref = forward(x, "hp")
        q = forward(x, "fp8")
        tgt = torch.tensor(x[1:])
        nll_ref += float(torch.nn.functional.cross_entropy(ref[:-1], tgt, reduction="sum"))
        nll_fp8 += float(torch.nn.functional.cross_entropy(q[:-1], tgt, reduction="sum"))
        same = ref[:-1].argmax(-1) == q[:-1].argmax(-1)
        top2 = ref[:-1].topk(2, dim=-1).values
        near = (top2[:, 0] - top2[:, 1]) < 0.25
        agree += int(same.sum())
        total += len(x) - 1
        ties += int(near.sum())
        ties_flipped += int((near & ~same).sum())
    ppl_ref, ppl_fp8 = math.exp(nll_ref / total), math.exp(nll_fp8 / total)
    print(f"HF transformers {transformers.__version__}, torch {torch.__version__}: {total} predictions in "
          f"{args.chunks} chunks of {seq}, {args.device}, {args.dtype}, {args.attn} attention, {args.gemm} GEMMs, margin {args.margin}, history {args.history}, calibration {args.calibrate}, "
          f"layers kept out of FP8: {args.bf16_layers[0]} first, {args.bf16_layers[1]} last")
    print(f"perplexity {ppl_ref:.3f} (high precision) vs {ppl_fp8:.3f} (FP8 E4M3), {100 * (ppl_fp8 / ppl_ref - 1):+.3f}%")
    print(f"top-1 agreement {100 * agree / total:.2f}% ({total - agree} disagreements; {ties_flipped} of them where "
          f"the reference's top-2 gap < 0.25, which holds at {ties} positions)")


if __name__ == "__main__":
    main()
