#!/usr/bin/env python3
"""The benchmark: te_llama against HF transformers and a CUDA-graph PyTorch peer, in one process tree, one run.

    python3 bench/bench.py --out OUT_DIR [--shapes 1b,8b] [--ckpt-dir /tmp/bench_ckpt] [--skip-hf] [--skip-graph]

For each shape it writes a random-weight checkpoint with HF save_pretrained (bf16, 2 GB shards), then measures,
each in its own child process so that peak host RSS is that side's alone:
  load time (warm page cache) and peak host RSS; prefill tokens/s at batch 1 and 8 of 2048 tokens; greedy decode
  tokens/s at batch 1 and 16 after a 128-token prompt (128 new tokens; the prompt's time is subtracted).
  te_llama also runs in FP8 (E4M3 weights and GEMM inputs, delayed scaling calibrated by one BF16 pass): prefill
  B1 and decode B1, and the relative L2 distance of its last-token logits from BF16; then the same two with the
  first and last decoder layers kept in BF16 (--fp8-bf16-layers 1,1).
Peers: HF transformers (bf16, sdpa, generate) and a minimal PyTorch Llama with fused weights, a static KV cache
and the decode step captured in one CUDA graph (the gpt-fast recipe). Ceilings: a device-to-device copy and a
bf16 GEMM, measured here. Prints a table with ratios, writes OUT_DIR/bench.json and OUT_DIR/bench.png.
"""
import argparse
import json
import os
import subprocess
import sys
import time

SHAPES = {
    "1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, head_dim=64, tie_word_embeddings=True, rope_theta=500000.0,
               rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 8192}, max_position_embeddings=131072),
    "8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, tie_word_embeddings=False, rope_theta=500000.0, max_position_embeddings=8192),
}
PROMPT, NEW, PREFILL_T = 128, 128, 2048


def make_checkpoint(shape, path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    if os.path.exists(os.path.join(path, "config.json")):
        return
    cfg = LlamaConfig(**SHAPES[shape], bos_token_id=128000, eos_token_id=128001)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(path, max_shard_size="2GB")
    del model
    torch.cuda.empty_cache()


def ceilings():
    import torch
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    src = torch.empty(4 << 30, device="cuda", dtype=torch.uint8).random_(0, 256)  # 4 GiB, not zeros
    dst = torch.empty_like(src)
    def t(fn, n):
        fn(); torch.cuda.synchronize()
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for _ in range(n):
            fn()
        e1.record(); torch.cuda.synchronize()
        return e0.elapsed_time(e1) / 1e3 / n
    gemm = 2 * 8192 ** 3 / t(lambda: a @ b, 20)
    copy = 2 * src.numel() / t(lambda: dst.copy_(src), 10)
    return {"bf16_gemm_tflops": gemm / 1e12, "copy_tb_s": copy / 1e12}


def timed(fn, reps=3):
    import torch
    fn(); torch.cuda.synchronize()
    best = 1e9
    for _ in range(reps):
        torch.cuda.synchronize(); t0 = time.perf_counter(); fn(); torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def peak_rss_mib():
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited from the parent across exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return -1


def tokens(batch, n, vocab, seed=0):
    import torch
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, n), generator=g).cuda()


def child_hf(path):
    """HF transformers: from_pretrained, forward for prefill, generate for decode."""
    import torch
    from transformers import LlamaForCausalLM
    t0 = time.perf_counter()
    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.bfloat16, device_map="cuda", attn_implementation="sdpa").eval()
    torch.cuda.synchronize()
    out = {"load_s": time.perf_counter() - t0, "peak_rss_mib": peak_rss_mib()}
    V = model.config.vocab_size
    with torch.no_grad():
        for b in (1, 8):
            x = tokens(b, PREFILL_T, V)
            out[f"prefill_b{b}_tok_s"] = b * PREFILL_T / timed(lambda: model(x, use_cache=False, logits_to_keep=1))
        for b in (1, 16):
            x = tokens(b, PROMPT, V)
            kw = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
            first = timed(lambda: model.generate(x, max_new_tokens=1, min_new_tokens=1, **kw), 2)
            full = timed(lambda: model.generate(x, max_new_tokens=NEW, min_new_tokens=NEW, **kw), 1)
            out[f"decode_b{b}_tok_s"] = b * (NEW - 1) / (full - first)
    return out


def child_graph(path, batches=(1, 16)):
    """A minimal PyTorch Llama: fused QKV and gate/up weights, static KV cache, SDPA, one CUDA graph per step."""
    import torch
    import torch.nn.functional as F
    from transformers import LlamaConfig
    from safetensors.torch import load_file
    cfg = LlamaConfig.from_pretrained(path)
    sd = {}
    for f in sorted(os.listdir(path)):
        if f.endswith(".safetensors"):
            sd.update({k: v.cuda() for k, v in load_file(os.path.join(path, f)).items()})
    L, H, KV = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    W = []
    for i in range(L):
        p = f"model.layers.{i}."
        W.append(dict(ln1=sd[p + "input_layernorm.weight"], ln2=sd[p + "post_attention_layernorm.weight"],
                      qkv=torch.cat([sd[p + f"self_attn.{n}_proj.weight"] for n in "qkv"]), o=sd[p + "self_attn.o_proj.weight"],
                      fc1=torch.cat([sd[p + "mlp.gate_proj.weight"], sd[p + "mlp.up_proj.weight"]]), fc2=sd[p + "mlp.down_proj.weight"]))
    emb, norm = sd["model.embed_tokens.weight"], sd["model.norm.weight"]
    head = sd.get("lm_head.weight", emb)
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    rope = LlamaRotaryEmbedding(cfg, device="cuda")
    out = {}
    for B in batches:
        T = PROMPT + NEW
        kc = torch.zeros(L, B, KV, T, hd, device="cuda", dtype=torch.bfloat16)
        vc = torch.zeros_like(kc)

        def rms(x, w):
            return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + cfg.rms_norm_eps)).to(x.dtype) * w

        def rot(x, cos, sin):
            x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
            return x * cos + torch.cat([-x2, x1], -1) * sin

        def step(tok, pos):  # tok (B, n), pos (n,)
            n = tok.shape[1]
            x = emb[tok]
            cos, sin = rope(x, pos[None])
            cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)
            mask = (torch.arange(T, device="cuda")[None, :] <= pos[:, None])[None, None]
            for i, w in enumerate(W):
                q, k, v = (rms(x, w["ln1"]) @ w["qkv"].T).split([H * hd, KV * hd, KV * hd], -1)
                q = rot(q.view(B, n, H, hd).transpose(1, 2), cos, sin)
                k = rot(k.view(B, n, KV, hd).transpose(1, 2), cos, sin)
                kc[i].index_copy_(2, pos, k)
                vc[i].index_copy_(2, pos, v.view(B, n, KV, hd).transpose(1, 2))
                a = F.scaled_dot_product_attention(q, kc[i], vc[i], attn_mask=mask, enable_gqa=True)
                x = x + a.transpose(1, 2).reshape(B, n, H * hd) @ w["o"].T
                g, u = (rms(x, w["ln2"]) @ w["fc1"].T).chunk(2, -1)
                x = x + (F.silu(g) * u) @ w["fc2"].T
            return rms(x[:, -1], norm) @ head.T

        with torch.no_grad():
            prompt = tokens(B, PROMPT, cfg.vocab_size)
            logits = step(prompt, torch.arange(PROMPT, device="cuda"))
            static_tok = logits.argmax(-1)[:, None].clone()
            static_pos = torch.tensor([PROMPT], device="cuda")
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(2):
                    step(static_tok, static_pos)
            torch.cuda.current_stream().wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_logits = step(static_tok, static_pos)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for i in range(NEW - 1):
                static_pos.fill_(PROMPT + i)
                graph.replay()
                static_tok.copy_(static_logits.argmax(-1)[:, None])
            torch.cuda.synchronize()
            out[f"decode_b{B}_tok_s"] = B * (NEW - 1) / (time.perf_counter() - t0)
        del kc, vc, graph
    return out


def run_project(bench_bin, path):
    def one(*args):
        r = subprocess.run([bench_bin, "-m", path, "--backend", "cuda", *args], capture_output=True, text=True)
        if r.returncode != 0:
            return {"error": (r.stderr or r.stdout)[-500:]}
        return json.loads(r.stdout.strip().splitlines()[-1])
    out = {}
    a = one("--prefill-batch", "1", "--prefill-len", str(PREFILL_T), "--decode-batch", "1", "--prompt", str(PROMPT), "--new", str(NEW))
    if "error" in a:
        return a
    out.update(load_s=a["load_s"], peak_rss_mib=a["peak_rss_mib"], prefill_b1_tok_s=a["prefill_tok_s"], decode_b1_tok_s=a["decode_tok_s"])
    b = one("--prefill-batch", "8", "--prefill-len", str(PREFILL_T), "--decode-batch", "16", "--prompt", str(PROMPT), "--new", str(NEW))
    if "error" in b:
        out["error"] = b["error"]
        return out
    out.update(prefill_b8_tok_s=b["prefill_tok_s"], decode_b16_tok_s=b["decode_tok_s"])
    f = one("--dtype", "fp8", "--prefill-batch", "1", "--prefill-len", str(PREFILL_T), "--decode-batch", "1",
            "--prompt", str(PROMPT), "--new", str(NEW))
    if "error" in f:
        out["fp8_error"] = f["error"]
        return out
    out.update(prefill_b1_fp8_tok_s=f["prefill_tok_s"], decode_b1_fp8_tok_s=f["decode_tok_s"],
               fp8_logits_rel_l2=f.get("fp8_logits_rel_l2"))
    # the recipe with the first and last layers kept in BF16 (te_llama_fp8_recipe.bf16_layers_start / _end)
    k = one("--dtype", "fp8", "--fp8-bf16-layers", "1,1", "--prefill-batch", "1", "--prefill-len", str(PREFILL_T),
            "--decode-batch", "1", "--prompt", str(PROMPT), "--new", str(NEW))
    if "error" in k:
        out["fp8_error"] = k["error"]
        return out
    out.update(prefill_b1_fp8_kept_tok_s=k["prefill_tok_s"], decode_b1_fp8_kept_tok_s=k["decode_tok_s"],
               fp8_kept_logits_rel_l2=k.get("fp8_logits_rel_l2"))
    return out


def child(kind, path):
    fn = {"hf": child_hf, "graph": child_graph, "ceilings": lambda p: ceilings()}[kind]
    try:
        print(json.dumps(fn(path)))
    except Exception as e:  # report, do not hide: the table shows the error
        print(json.dumps({"error": f"{type(e).__name__}: {e}"[-500:]}))


def spawn(kind, path):
    r = subprocess.run([sys.executable, __file__, "--child", kind, path], capture_output=True, text=True)
    lines = [l for l in r.stdout.strip().splitlines() if l.startswith("{")]
    return json.loads(lines[-1]) if lines else {"error": r.stderr[-500:]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--shapes", default="1b,8b")
    ap.add_argument("--ckpt-dir", default="/tmp/te_llama_bench")
    ap.add_argument("--bench-bin", default="build/bench")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--skip-graph", action="store_true")
    ap.add_argument("--child", nargs=2)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    os.makedirs(args.out, exist_ok=True)
    result = {"ceilings": spawn("ceilings", ""), "shapes": {}}
    for shape in args.shapes.split(","):
        path = os.path.join(args.ckpt_dir, shape)
        t0 = time.time()
        make_checkpoint(shape, path)
        print(f"[{shape}] checkpoint ready ({time.time() - t0:.0f} s)", flush=True)
        for f in sorted(os.listdir(path)):  # warm the page cache for every side alike
            with open(os.path.join(path, f), "rb") as fh:
                while fh.read(1 << 26):
                    pass
        r = {"project": run_project(args.bench_bin, path)}
        print(f"[{shape}] te_llama: {r['project']}", flush=True)
        if not args.skip_hf:
            r["hf"] = spawn("hf", path)
            print(f"[{shape}] HF: {r['hf']}", flush=True)
        if not args.skip_graph:
            r["graph"] = spawn("graph", path)
            print(f"[{shape}] graph peer: {r['graph']}", flush=True)
        weight_bytes = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".safetensors"))
        params = weight_bytes / 2
        c = result["ceilings"]
        if "copy_tb_s" in c:
            r["roofline"] = {"decode_b1_tok_s": c["copy_tb_s"] * 1e12 / weight_bytes,
                             "prefill_tok_s": c["bf16_gemm_tflops"] * 1e12 / (2 * params)}
        result["shapes"][shape] = r
    with open(os.path.join(args.out, "bench.json"), "w") as f:
        json.dump(result, f, indent=1)
    print_table(result)
    try:
        plot(result, os.path.join(args.out, "bench.png"))
    except Exception as e:
        print(f"(no plot: {e})")


ROWS = [("load_s", "load (s, warm cache)", False), ("peak_rss_mib", "peak host RSS (MiB)", False),
        ("prefill_b1_tok_s", "prefill B1 T2048 (tok/s)", True), ("prefill_b8_tok_s", "prefill B8 T2048 (tok/s)", True),
        ("decode_b1_tok_s", "decode B1 (tok/s)", True), ("decode_b16_tok_s", "decode B16 (tok/s)", True)]


def print_table(result):
    c = result["ceilings"]
    print(f"\nceilings: bf16 GEMM {c.get('bf16_gemm_tflops', 0):.0f} TFLOP/s, copy {c.get('copy_tb_s', 0):.2f} TB/s")
    for shape, r in result["shapes"].items():
        print(f"\n| {shape} | te_llama | HF | graph peer | te_llama / HF | te_llama / graph | roofline |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for key, name, higher in ROWS:
            p, h, g = (r.get(k, {}).get(key) for k in ("project", "hf", "graph"))
            roof = r.get("roofline", {}).get("decode_b1_tok_s" if key == "decode_b1_tok_s" else "prefill_tok_s" if "prefill" in key else "", "")
            fmt = lambda v: "-" if v is None else f"{v:.4g}"
            ratio = lambda a, b: "-" if a is None or b is None or not a or not b else f"{(a / b if higher else b / a):.2f}x"
            print(f"| {name} | {fmt(p)} | {fmt(h)} | {fmt(g)} | {ratio(p, h)} | {ratio(p, g)} | {fmt(roof) if roof != '' else '-'} |")
        p, h = r.get("project", {}), r.get("hf", {})
        if p.get("prefill_b1_fp8_tok_s"):
            # three decimals: issue #9's targets (1.5x, 1.35x, 1.7x) are met or missed in the third (run 18 read
            # 383.45 / 225.99 = 1.6968, which two decimals printed as 1.70x)
            fmt = lambda a, b: f"{a / b:.3f}x" if a and b else "-"
            print(f"FP8 (E4M3 weights and GEMM inputs): prefill B1 T2048 {p['prefill_b1_fp8_tok_s']:.4g} tok/s = "
                  f"{fmt(p['prefill_b1_fp8_tok_s'], h.get('prefill_b1_tok_s'))} HF bf16, "
                  f"{fmt(p['prefill_b1_fp8_tok_s'], p.get('prefill_b1_tok_s'))} te_llama BF16; decode B1 "
                  f"{p['decode_b1_fp8_tok_s']:.4g} tok/s = {fmt(p['decode_b1_fp8_tok_s'], p.get('decode_b1_tok_s'))} te_llama BF16; "
                  f"last-token logits rel L2 vs BF16 {p.get('fp8_logits_rel_l2')}")
        if p.get("prefill_b1_fp8_kept_tok_s"):
            print(f"FP8 with the first and last layers in BF16 (--fp8-bf16-layers 1,1): prefill B1 T2048 "
                  f"{p['prefill_b1_fp8_kept_tok_s']:.4g} tok/s = {fmt(p['prefill_b1_fp8_kept_tok_s'], h.get('prefill_b1_tok_s'))} "
                  f"HF bf16, {fmt(p['prefill_b1_fp8_kept_tok_s'], p.get('prefill_b1_tok_s'))} te_llama BF16; decode B1 "
                  f"{p['decode_b1_fp8_kept_tok_s']:.4g} tok/s = {fmt(p['decode_b1_fp8_kept_tok_s'], p.get('decode_b1_tok_s'))} "
                  f"te_llama BF16; last-token logits rel L2 vs BF16 {p.get('fp8_kept_logits_rel_l2')}")
        if "fp8_error" in p:
            print(f"project FP8 error: {p['fp8_error']}")
        for k in ("project", "hf", "graph"):
            if "error" in r.get(k, {}):
                print(f"{k} error: {r[k]['error']}")


def plot(result, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    shapes = list(result["shapes"])
    fig, axes = plt.subplots(1, len(shapes), figsize=(6 * len(shapes), 4))
    axes = [axes] if len(shapes) == 1 else axes
    for ax, shape in zip(axes, shapes):
        r = result["shapes"][shape]
        keys = [k for k, _, hi in ROWS if hi]
        for i, side in enumerate(("project", "hf", "graph")):
            vals = [r.get(side, {}).get(k) or 0 for k in keys]
            ax.bar([j + i * 0.27 for j in range(len(keys))], vals, 0.27, label=side)
        ax.set_xticks([j + 0.27 for j in range(len(keys))], [k.replace("_tok_s", "") for k in keys], rotation=20)
        ax.set_yscale("log"); ax.set_title(f"{shape}: tokens/s"); ax.legend()
    fig.tight_layout(); fig.savefig(path)


if __name__ == "__main__":
    main()
