#!/usr/bin/env python3
"""Build the tiny Llama test fixtures and their golden references for te_llama.

Usage:
    python3 tools/make_fixtures.py [--out tests/fixtures]
    python3 tools/make_fixtures.py --verify [--out tests/fixtures]

Default mode writes four random-weight checkpoints with HuggingFace
``LlamaForCausalLM(config).save_pretrained(...)`` and, for the first three,
float64 reference outputs computed by HuggingFace itself (eager attention,
CPU) over the *stored* (already rounded) weights:

  gqa_tied_llama3/  f32, GQA (4 q heads / 2 kv heads), tied embeddings,
                    llama3 rope scaling, sharded (gate/up and q/k split
                    across shard files), eos_token_id = [2, 3]
  mha_untied_bf16/  bf16, MHA, untied, default rope, single model.safetensors
  headdim_f16/      f16, explicit head_dim 32 != hidden/heads, linear rope
                    scaling, untied, single model.safetensors
  many_shards/      bf16, untied, 4 layers, >= 8 shards (loader peak-memory
                    test; no references)

Reference files (fixtures 1-3):
  ref_logits.f32        float32 LE logits, shape (n_prompt, vocab), row-major
  reference.json        prompt_ids, n_prompt, vocab, greedy_ids (24 new ids,
                        pure argmax, no eos stopping), top2_gap_min, versions
  ref_logits_2layers.f32  (gqa_tied_llama3 only) same prompt, checkpoint
                        loaded with num_hidden_layers=2
  ref_batch.json        (gqa_tied_llama3 only) two prompts (7 and 11 tokens),
                        last-position logits of each, computed separately

``--verify`` recomputes the references from the checkpoints already in
--out with the installed torch/transformers and compares them with the
stored files (it writes nothing). Use it to cross-check committed fixtures
against another transformers version.

Works with transformers 4.5x (rope_theta/rope_scaling, torch_dtype) and 5.x
(rope_parameters, dtype).
"""

import argparse
import inspect
import json
import math
import os
import shutil
import sys
import time

import numpy as np
import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

N_NEW = 24
VOCAB = 256

# Fixed prompts: start with bos (1); never contain the eos ids 2 or 3.
PROMPT = [1, 17, 99, 42, 200, 7, 128, 63, 251, 5, 88]
BATCH_PROMPTS = [
    [1, 33, 180, 9, 77, 140, 222],
    [1, 250, 4, 61, 119, 190, 13, 45, 230, 98, 171],
]

# HF's default initializer_range (0.02) gives logits with std ~0.15 on these
# tiny models, i.e. near-uniform next-token distributions and fragile greedy
# decoding. A larger init scale (still HF's own initialiser) keeps top-1/top-2
# gaps comfortably above float32 noise.
INIT_RANGE = 0.1

# Per-fixture seeds were picked (among a dozen tried with transformers 5.24)
# for a top2_gap_min >= ~0.02 and non-degenerate greedy continuations. HF's
# init order may differ between transformers versions, so other versions may
# produce different weights from the same seed; the committed checkpoints are
# the reference, and --verify checks them against any installed version.

FIXTURES = [
    dict(
        name="gqa_tied_llama3",
        seed=1012,
        storage="float32",
        # Small enough that, in state-dict order, q_proj (16 KiB) and
        # k_proj+v_proj land in different shards, and gate/up/down
        # (24 KiB each, > limit) each get a shard of their own.
        max_shard_size=20000,
        expect_sharded=True,
        refs=True,
        extra_refs=True,
        config=dict(
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=VOCAB,
            tie_word_embeddings=True,
            max_position_embeddings=256,
            rms_norm_eps=1e-5,
            bos_token_id=1,
            eos_token_id=[2, 3],
        ),
        rope_theta=500000.0,
        # original_max_position_embeddings is 64, not 32: with theta 5e5 and
        # head_dim 16 the wavelengths are 6.3, 32.5, 168, ...; with 32 the
        # smooth (medium-frequency) band [8, 32] would be empty and the
        # interpolation branch of llama3 scaling would go untested. With 64
        # the band is [16, 64]: one high, one medium, six low frequencies.
        rope_scaling=dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=64,
        ),
    ),
    dict(
        name="mha_untied_bf16",
        seed=1013,
        storage="bfloat16",
        max_shard_size="1GB",
        expect_sharded=False,
        refs=True,
        # config.json rewritten in the transformers 4.x spelling (rope_theta,
        # rope_scaling: null, torch_dtype), as most published Llama
        # checkpoints have it; the other fixtures keep what the installed
        # transformers writes (5.x: rope_parameters, dtype).
        legacy_config=True,
        config=dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            vocab_size=VOCAB,
            tie_word_embeddings=False,
            max_position_embeddings=256,
            rms_norm_eps=1e-5,
            bos_token_id=1,
            eos_token_id=2,
        ),
        rope_theta=10000.0,
        rope_scaling=None,
    ),
    dict(
        name="headdim_f16",
        seed=1003,
        storage="float16",
        max_shard_size="1GB",
        expect_sharded=False,
        refs=True,
        config=dict(
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=32,
            vocab_size=VOCAB,
            tie_word_embeddings=False,
            max_position_embeddings=256,
            rms_norm_eps=1e-5,
            bos_token_id=1,
            eos_token_id=2,
        ),
        rope_theta=10000.0,
        rope_scaling=dict(rope_type="linear", factor=2.0),
    ),
    dict(
        name="many_shards",
        seed=1004,
        storage="bfloat16",
        # 4 layers of bf16 ~ 315 KB in total; 32 KB shards -> well over 8.
        max_shard_size=32000,
        expect_sharded=True,
        min_shards=8,
        refs=False,
        config=dict(
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=VOCAB,
            tie_word_embeddings=False,
            max_position_embeddings=256,
            rms_norm_eps=1e-5,
            bos_token_id=1,
            eos_token_id=[2, 3],
        ),
        rope_theta=500000.0,
        rope_scaling=dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=64,
        ),
    ),
]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# --------------------------------------------------------------------------
# transformers 4.x / 5.x compatibility


def _tf_major():
    return int(transformers.__version__.split(".")[0])


def _uses_rope_parameters():
    try:
        if "rope_parameters" in inspect.signature(LlamaConfig.__init__).parameters:
            return True
    except (TypeError, ValueError):
        pass
    return hasattr(LlamaConfig(), "rope_parameters")


def make_config(fx):
    kw = dict(fx["config"])
    kw["initializer_range"] = INIT_RANGE
    kw["attention_bias"] = False
    kw["mlp_bias"] = False
    kw["hidden_act"] = "silu"
    if _uses_rope_parameters():  # transformers 5.x
        rp = {"rope_type": "default", "rope_theta": fx["rope_theta"]}
        if fx["rope_scaling"]:
            rp.update(fx["rope_scaling"])
        kw["rope_parameters"] = rp
    else:  # transformers 4.x
        kw["rope_theta"] = fx["rope_theta"]
        kw["rope_scaling"] = dict(fx["rope_scaling"]) if fx["rope_scaling"] else None
    return LlamaConfig(**kw)


def _dtype_kwarg(dtype):
    """from_pretrained(dtype=...) in >= 4.56 / 5.x, torch_dtype=... before."""
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    if (major, minor) >= (4, 56):
        return {"dtype": dtype}
    return {"torch_dtype": dtype}


def load_config(path):
    """LlamaConfig for a saved fixture, whichever spelling its config.json uses.

    transformers 5.x reads both spellings. transformers 4.x silently ignores
    `rope_parameters` (it would fall back to theta 10000, no scaling), so for
    4.x translate it to rope_theta / rope_scaling here.
    """
    if _tf_major() >= 5:
        return LlamaConfig.from_pretrained(path)
    with open(os.path.join(path, "config.json")) as f:
        raw = json.load(f)
    if "rope_parameters" in raw:
        rp = dict(raw.pop("rope_parameters") or {})
        raw["rope_theta"] = rp.pop("rope_theta", 10000.0)
        raw["rope_scaling"] = None if rp.get("rope_type", "default") == "default" else rp
    if "dtype" in raw:
        raw["torch_dtype"] = raw.pop("dtype")
    for k in ("architectures", "model_type", "transformers_version"):
        raw.pop(k, None)
    return LlamaConfig(**raw)


def load_f64(path, config=None):
    kw = dict(_dtype_kwarg(torch.float64))
    kw["attn_implementation"] = "eager"
    kw["output_loading_info"] = True
    kw["config"] = config if config is not None else load_config(path)
    model, info = LlamaForCausalLM.from_pretrained(path, **kw)
    model.eval()
    return model, info


# --------------------------------------------------------------------------
# building


def perturb_norms(model):
    n = 0
    with torch.no_grad():
        for name, mod in model.named_modules():
            if type(mod).__name__.endswith("RMSNorm"):
                w = mod.weight
                w.copy_(1.0 + 0.1 * torch.randn(w.shape, dtype=torch.float32).to(w.dtype))
                n += 1
    return n


def check_llama3_bands(fx):
    """Assert that the llama3 scaling parameters exercise all three branches."""
    rs = fx["rope_scaling"]
    hd = fx["config"].get("head_dim") or fx["config"]["hidden_size"] // fx["config"]["num_attention_heads"]
    theta = fx["rope_theta"]
    old = rs["original_max_position_embeddings"]
    low_wl = old / rs["low_freq_factor"]
    high_wl = old / rs["high_freq_factor"]
    kinds = set()
    for i in range(0, hd, 2):
        wl = 2 * math.pi * theta ** (i / hd)
        kinds.add("high" if wl < high_wl else "low" if wl > low_wl else "medium")
    assert kinds == {"high", "medium", "low"}, f"{fx['name']}: llama3 bands hit: {kinds}"


def legacy_config_spelling(d):
    """Rewrite config.json with 4.x key names (no-op if already 4.x style)."""
    p = os.path.join(d, "config.json")
    with open(p) as f:
        cfg = json.load(f)
    if "rope_parameters" in cfg:
        rp = dict(cfg.pop("rope_parameters") or {})
        cfg["rope_theta"] = rp.pop("rope_theta", 10000.0)
        cfg["rope_scaling"] = None if rp.get("rope_type", "default") == "default" else rp
    if "dtype" in cfg:
        cfg["torch_dtype"] = cfg.pop("dtype")
    with open(p, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")


def effective_rope(config):
    """(theta, scaling dict or None) as the loaded HF config understands it."""
    if _tf_major() >= 5:
        rp = dict(config.rope_parameters)
        theta = rp.pop("rope_theta")
    else:  # 4.x
        theta = config.rope_theta
        rp = dict(config.rope_scaling or {})
        if "type" in rp and "rope_type" not in rp:
            rp["rope_type"] = rp.pop("type")
    if rp.get("rope_type", "default") == "default":
        rp = None
    return float(theta), rp


def read_index(d):
    with open(os.path.join(d, "model.safetensors.index.json")) as f:
        return json.load(f)["weight_map"]


def check_layout(fx, d):
    files = sorted(os.listdir(d))
    has_index = "model.safetensors.index.json" in files
    if not fx["expect_sharded"]:
        assert not has_index and "model.safetensors" in files, f"{fx['name']}: expected single file, got {files}"
        return 1
    assert has_index, f"{fx['name']}: expected a sharded checkpoint, got {files}"
    wm = read_index(d)
    shards = sorted(set(wm.values()))
    for s in shards:
        assert s in files, f"{fx['name']}: index names missing shard {s}"
    assert all(f in shards for f in files if f.endswith(".safetensors")), f"{fx['name']}: stray shard files"
    if "min_shards" in fx:
        assert len(shards) >= fx["min_shards"], f"{fx['name']}: only {len(shards)} shards"
    if fx["name"] == "gqa_tied_llama3":
        assert "lm_head.weight" not in wm, "tied checkpoint must not store lm_head.weight"
        L = fx["config"]["num_hidden_layers"]
        p = "model.layers.{}.{}.weight"
        gu = [i for i in range(L) if wm[p.format(i, "mlp.gate_proj")] != wm[p.format(i, "mlp.up_proj")]]
        qk = [i for i in range(L) if wm[p.format(i, "self_attn.q_proj")] != wm[p.format(i, "self_attn.k_proj")]]
        assert gu, "no layer has gate_proj and up_proj in different shards"
        assert qk, "no layer has q_proj and k_proj in different shards"
        print(f"  split check: gate/up split in layers {gu}, q/k split in layers {qk}")
    return len(shards)


def build(fx, out_root):
    d = os.path.join(out_root, fx["name"])
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    if fx["rope_scaling"] and fx["rope_scaling"]["rope_type"] == "llama3":
        check_llama3_bands(fx)

    torch.manual_seed(fx["seed"])
    config = make_config(fx)
    model = LlamaForCausalLM(config)
    n_norm = perturb_norms(model)
    assert n_norm == 2 * fx["config"]["num_hidden_layers"] + 1, n_norm
    model = model.to(DTYPES[fx["storage"]])
    model.eval()
    model.save_pretrained(d, max_shard_size=fx["max_shard_size"])
    assert os.path.isfile(os.path.join(d, "config.json"))
    assert os.path.isfile(os.path.join(d, "generation_config.json"))
    if fx.get("legacy_config"):
        legacy_config_spelling(d)
    n_shards = check_layout(fx, d)
    print(f"  saved {fx['name']}: {fx['storage']}, {n_shards} weight file(s)")
    return d


# --------------------------------------------------------------------------
# references


@torch.no_grad()
def logits_of(model, ids):
    x = torch.tensor([ids], dtype=torch.long)
    return model(input_ids=x, use_cache=False).logits[0].to(torch.float64)


@torch.no_grad()
def greedy_manual(model, prompt, n):
    """Pure argmax decoding with full recompute; returns new ids and top-2 gaps."""
    ids = list(prompt)
    new, gaps = [], []
    for _ in range(n):
        last = logits_of(model, ids)[-1]
        top = torch.topk(last, 2)
        new.append(int(top.indices[0]))
        gaps.append(float(top.values[0] - top.values[1]))
        ids.append(new[-1])
    return new, gaps


@torch.no_grad()
def greedy_generate(model, prompt, n):
    """model.generate greedy with eos stopping disabled.

    eos_token_id is set to an id outside the vocabulary (never produced), so
    generation always runs for exactly n steps and no logits are masked
    (min_new_tokens would mask the real eos ids and change the argmax).
    """
    x = torch.tensor([prompt], dtype=torch.long)
    out = model.generate(
        input_ids=x,
        attention_mask=torch.ones_like(x),
        do_sample=False,
        num_beams=1,
        max_new_tokens=n,
        eos_token_id=model.config.vocab_size,
        pad_token_id=0,
        temperature=None,
        top_p=None,
        top_k=None,
    )
    return [int(t) for t in out[0, len(prompt):]]


def compute_refs(fx, d):
    model, info = load_f64(d)
    for k in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        assert not info.get(k), f"{fx['name']}: {k}: {info.get(k)}"
    theta, scaling = effective_rope(model.config)
    want = dict(fx["rope_scaling"]) if fx["rope_scaling"] else None
    got = {k: v for k, v in (scaling or {}).items() if k in (want or {})} if scaling else None
    assert theta == fx["rope_theta"] and got == want, f"{fx['name']}: HF read rope {theta} {scaling}"
    for k, v in fx["config"].items():
        assert getattr(model.config, k) == v, f"{fx['name']}: HF read {k}={getattr(model.config, k)}, want {v}"
    refs = {}
    refs["logits"] = logits_of(model, PROMPT).numpy()
    new, gaps = greedy_manual(model, PROMPT, N_NEW)
    gen = greedy_generate(model, PROMPT, N_NEW)
    assert len(gen) == N_NEW, gen
    assert gen == new, f"{fx['name']}: generate {gen} != manual argmax {new}"
    refs["greedy_ids"] = new
    refs["gaps"] = gaps
    if fx.get("extra_refs"):
        refs["batch"] = [logits_of(model, p)[-1].numpy() for p in BATCH_PROMPTS]
        # Sanity: no batch prompt is the main prompt and lengths are 7 / 11.
        assert [len(p) for p in BATCH_PROMPTS] == [7, 11]
        del model
        cfg = load_config(d)
        cfg.num_hidden_layers = 2
        m2, info2 = load_f64(d, config=cfg)
        assert not info2.get("missing_keys"), info2.get("missing_keys")
        assert m2.config.num_hidden_layers == 2 and len(m2.model.layers) == 2
        refs["logits_2layers"] = logits_of(m2, PROMPT).numpy()
        assert np.abs(refs["logits_2layers"] - refs["logits"]).max() > 1e-2, "2-layer logits ~ 3-layer logits"
    return refs


def write_refs(fx, d, refs):
    def f32(path, arr):
        np.ascontiguousarray(arr, dtype="<f4").tofile(path)

    f32(os.path.join(d, "ref_logits.f32"), refs["logits"])
    meta = {
        "prompt_ids": PROMPT,
        "n_prompt": len(PROMPT),
        "vocab": VOCAB,
        "logits_file": "ref_logits.f32",
        "logits_layout": "float32 little-endian, row-major (n_prompt, vocab)",
        "n_new": N_NEW,
        "greedy_ids": refs["greedy_ids"],
        "top2_gaps": [round(g, 6) for g in refs["gaps"]],
        "top2_gap_min": min(refs["gaps"]),
        "reference_math": "float64, eager attention, CPU, weights as stored",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__.split("+")[0],
    }
    if "logits_2layers" in refs:
        f32(os.path.join(d, "ref_logits_2layers.f32"), refs["logits_2layers"])
        meta["logits_2layers_file"] = "ref_logits_2layers.f32"
    with open(os.path.join(d, "reference.json"), "w") as f:
        f.write("{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in meta.items()) + "\n}\n")
    if "batch" in refs:
        batch = {
            "prompts": BATCH_PROMPTS,
            "n_prompt": [len(p) for p in BATCH_PROMPTS],
            "vocab": VOCAB,
            "last_logits": [[float(v) for v in row] for row in refs["batch"]],
            "note": "each row: logits (float64 math) of the LAST position of that prompt, run alone, no padding",
        }
        with open(os.path.join(d, "ref_batch.json"), "w") as f:
            json.dump(batch, f)
            f.write("\n")
    print(f"  refs {fx['name']}: greedy {refs['greedy_ids']}")
    print(f"  top2_gap_min {min(refs['gaps']):.4g}, |logits| max {np.abs(refs['logits']).max():.3g}")


def verify_refs(fx, d, refs, tol):
    ok = True

    def cmp(label, got, path, shape):
        nonlocal ok
        want = np.fromfile(path, dtype="<f4").reshape(shape)
        err = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
        good = err <= tol
        ok &= good
        print(f"  {fx['name']}/{label}: max abs diff {err:.3g} {'ok' if good else 'MISMATCH'}")

    cmp("ref_logits.f32", refs["logits"], os.path.join(d, "ref_logits.f32"), (len(PROMPT), VOCAB))
    with open(os.path.join(d, "reference.json")) as f:
        meta = json.load(f)
    same = meta["greedy_ids"] == refs["greedy_ids"] and meta["prompt_ids"] == PROMPT
    ok &= same
    print(f"  {fx['name']}/greedy_ids: {'ok' if same else 'MISMATCH %s vs %s' % (refs['greedy_ids'], meta['greedy_ids'])}")
    if "logits_2layers" in refs:
        cmp("ref_logits_2layers.f32", refs["logits_2layers"], os.path.join(d, "ref_logits_2layers.f32"),
            (len(PROMPT), VOCAB))
        with open(os.path.join(d, "ref_batch.json")) as f:
            b = json.load(f)
        err = max(float(np.max(np.abs(np.array(w) - g))) for w, g in zip(b["last_logits"], refs["batch"]))
        good = err <= tol and b["prompts"] == BATCH_PROMPTS
        ok &= good
        print(f"  {fx['name']}/ref_batch.json: max abs diff {err:.3g} {'ok' if good else 'MISMATCH'}")
    return ok


def dir_size(d):
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(here), "tests", "fixtures"),
                    help="output root (default: tests/fixtures of this repo)")
    ap.add_argument("--verify", action="store_true",
                    help="recompute references from existing checkpoints and compare; write nothing")
    ap.add_argument("--tol", type=float, default=1e-4, help="--verify logits tolerance (abs)")
    args = ap.parse_args()

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    transformers.logging.set_verbosity_error()
    t0 = time.time()
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    if args.verify:
        ok = True
        for fx in FIXTURES:
            if fx["refs"]:
                d = os.path.join(args.out, fx["name"])
                ok &= verify_refs(fx, d, compute_refs(fx, d), args.tol)
        print(f"verify: {'OK' if ok else 'FAILED'} ({time.time() - t0:.1f}s)")
        return 0 if ok else 1

    os.makedirs(args.out, exist_ok=True)
    for fx in FIXTURES:
        print(f"[{fx['name']}]")
        d = build(fx, args.out)
        if fx["refs"]:
            write_refs(fx, d, compute_refs(fx, d))
        size = dir_size(d)
        assert size < 1_000_000, f"{fx['name']}: {size} bytes, fixture too big"
        print(f"  {size} bytes")
    print(f"make_fixtures: done in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
