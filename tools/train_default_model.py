#!/usr/bin/env python3
"""Train the small default model shipped in models/austen: a byte-level BPE tokenizer (Llama 3 style) and a
LlamaForCausalLM (GQA, rope_theta 500000, tied embeddings) on Jane Austen's novels, with HF tokenizers and
transformers. One command on a GPU machine:

    python3 tools/train_default_model.py --text ../shared/data/austen/austen.txt --out models/austen

It holds out the last 5% of the text, reports held-out perplexity, saves with save_pretrained into two shards
plus tokenizer.json, tokenizer_config.json and generation_config.json, writes the model card, and writes golden
references for the C tests (HF logits of a held-out prompt, float64) into tests/fixtures/austen_ref/.
"""
import argparse
import json
import math
import os
import time

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"


def train_tokenizer(text, vocab_size):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS, EOS], min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([text], trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]),
    ])
    return tok


def write_references(model_dir, ref_out, tok, held_text):
    """Golden references for the C tests: HF float64 logits of a held-out prompt and a 24-token greedy
    continuation (argmax step by step: eos does not stop it)."""
    ref = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float64, attn_implementation="eager").eval()
    bos = ref.config.bos_token_id
    prompt = [bos] + tok.encode(held_text[1000:1400], add_special_tokens=False).ids[:31]
    with torch.no_grad():
        logits = ref(torch.tensor([prompt])).logits[0]
        seq = list(prompt)
        for _ in range(24):
            seq.append(int(ref(torch.tensor([seq])).logits[0, -1].argmax()))
    os.makedirs(ref_out, exist_ok=True)
    logits.to(torch.float32).numpy().astype("<f4").tofile(os.path.join(ref_out, "ref_logits.f32"))
    with open(os.path.join(ref_out, "reference.json"), "w") as f:
        json.dump({"model": model_dir, "prompt_ids": prompt, "n_prompt": len(prompt), "vocab": ref.config.vocab_size,
                   "greedy_ids": seq[len(prompt):], "logits_file": "ref_logits.f32"}, f, indent=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--text", default="../shared/data/austen/austen.txt")
    ap.add_argument("--out", default="models/austen")
    ap.add_argument("--ref-out", default="tests/fixtures/austen_ref")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--hidden", type=int, default=256, help="the model's shape (defaults: the shipped model's)")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=704)
    ap.add_argument("--references-only", action="store_true", help="only rewrite the golden references of --out")
    args = ap.parse_args()
    if args.references_only:
        text = open(args.text, encoding="utf-8").read()
        cut = text.rfind("\n", 0, int(len(text) * 0.95)) + 1
        tok = Tokenizer.from_file(os.path.join(args.out, "tokenizer.json"))
        write_references(args.out, args.ref_out, tok, text[cut:])
        return
    torch.manual_seed(args.seed)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    t_start = time.time()

    text = open(args.text, encoding="utf-8").read()
    cut = int(len(text) * 0.95)
    cut = text.rfind("\n", 0, cut) + 1  # split on a line boundary
    train_text, held_text = text[:cut], text[cut:]
    tok = train_tokenizer(train_text, args.vocab)
    train_ids = torch.tensor(tok.encode(train_text, add_special_tokens=False).ids, dtype=torch.long)
    held_ids = torch.tensor(tok.encode(held_text, add_special_tokens=False).ids, dtype=torch.long)
    print(f"tokenizer: {tok.get_vocab_size()} tokens; train {len(train_ids)} tokens, held out {len(held_ids)}", flush=True)

    config = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                         max_position_embeddings=1024,
                         rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                         bos_token_id=tok.token_to_id(BOS), eos_token_id=tok.token_to_id(EOS))
    model = LlamaForCausalLM(config).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f} M parameters on {dev}", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = args.steps // 15

    def lr_at(step):
        if step < warmup:
            return args.lr * (step + 1) / warmup
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (args.steps - warmup))))

    @torch.no_grad()
    def held_out_ppl():
        model.eval()
        losses, n = 0.0, 0
        for i in range(0, len(held_ids) - args.seq - 1, args.seq):
            x = held_ids[i:i + args.seq + 1].to(dev)[None]
            with torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
                out = model(input_ids=x[:, :-1], labels=x[:, :-1].clone())
            losses += out.loss.float().item() * (args.seq - 1)
            n += args.seq - 1
        model.train()
        return math.exp(losses / n)

    t_train = time.time()
    model.train()
    for step in range(args.steps):
        starts = torch.randint(0, len(train_ids) - args.seq - 1, (args.batch,))
        x = torch.stack([train_ids[s:s + args.seq] for s in starts]).to(dev)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
            loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 250 == 0 or step == args.steps - 1:
            print(f"step {step} loss {loss.item():.3f} lr {lr_at(step):.2e} {time.time() - t_train:.0f}s", flush=True)
    train_seconds = time.time() - t_train
    model = model.to(torch.bfloat16)
    ppl = held_out_ppl()
    print(f"held-out perplexity (bf16 weights): {ppl:.2f}", flush=True)

    # save: bf16 weights in two shards, the tokenizer files, a generation config
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out, max_shard_size="6MB")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS)
    fast.save_pretrained(args.out)
    GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, do_sample=True,
                     temperature=0.8, top_p=0.95).save_pretrained(args.out)
    shards = sorted(f for f in os.listdir(args.out) if f.endswith(".safetensors"))
    assert len(shards) >= 2, shards

    write_references(args.out, args.ref_out, tok, held_text)

    size = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    card = f"""# austen: the default model

A small Llama trained by `tools/train_default_model.py` so that te_llama works out of the box.

| | |
| --- | --- |
| data | Jane Austen's six novels (`../shared/data/austen/austen.txt`, public domain); the last 5% held out |
| tokenizer | byte-level BPE, Llama 3 pre-tokenizer regex, {tok.get_vocab_size()} tokens, trained by HF `tokenizers` |
| model | LlamaForCausalLM, {n_params / 1e6:.2f} M parameters: {args.layers} layers, hidden {args.hidden}, {args.heads} heads / {args.kv_heads} KV heads, intermediate {args.intermediate}, rope_theta 500000, tied embeddings |
| weights | bfloat16, {len(shards)} shards, {size / 1e6:.1f} MB in this directory |
| training | {args.steps} steps of {args.batch} x {args.seq} tokens, AdamW lr {args.lr} cosine, bf16 autocast, {train_seconds:.0f} s on {torch.cuda.get_device_name() if dev == 'cuda' else 'CPU'} |
| held-out perplexity | {ppl:.2f} (per token, bf16 weights, HF transformers) |

Trained with torch {torch.__version__}; total script time {time.time() - t_start:.0f} s.
"""
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write(card)
    print(card)


if __name__ == "__main__":
    main()
