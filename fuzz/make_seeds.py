#!/usr/bin/env python3
"""make_seeds.py OUT_DIR - write the hand-made seed inputs of the fuzz targets into OUT_DIR/fuzz_NAME/.

The committed seed corpus in fuzz/corpus/ was made by this script (run from the repository root) and then
grown with libFuzzer's -merge=1. Python 3 standard library only; small files only."""
import json, os, struct, sys

LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
FIX = "tests/fixtures"


def byte_level_chars():
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b); cs.append(256 + n); n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def tokenizer_llama3():
    m = byte_level_chars()
    vocab = {m[b]: b for b in range(256)}
    merges = []
    def add(a, b):
        vocab[a + b] = len(vocab); merges.append([a, b])
    G = m[ord(" ")]
    add(G, "t"); add("h", "e"); add(G + "t", "he"); add("l", "l"); add("ll", "o"); add("H", "e"); add("He", "llo")
    add(G, "w"); add("o", "r"); add(G + "w", "or"); add("l", "d"); add(G + "wor", "ld"); add(m[0xc3], m[0xa9])
    added = [{"id": len(vocab) + i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, c in enumerate(
                  ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"])]
    bos = added[0]["id"]
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
            "post_processor": {"type": "Sequence", "processors": [
                {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
                {"type": "TemplateProcessing",
                 "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                 "pair": [],
                 "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [bos], "tokens": ["<|begin_of_text|>"]}}}]},
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                      "vocab": vocab, "merges": merges}}


def tokenizer_llama2():
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab["<0x%02X>" % b] = len(vocab)
    for c in ["\u2581", "a", "b", "c", "e", "h", "l", "o", "t", "w", "r", "d", "H", "\u00e9"]:
        vocab[c] = len(vocab)
    merges = []
    def add(a, b):
        vocab[a + b] = len(vocab); merges.append(a + " " + b)
    add("\u2581", "t"); add("h", "e"); add("\u2581t", "he"); add("l", "l"); add("H", "e"); add("He", "ll"); add("Hell", "o")
    add("\u2581", "w"); add("o", "r"); add("\u2581w", "or"); add("l", "d"); add("\u2581wor", "ld"); add("a", "b"); add("ab", "c")
    added = [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for i, c in enumerate(["<unk>", "<s>", "</s>"])]
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": "\u2581"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
            "pre_tokenizer": None,
            "post_processor": {"type": "TemplateProcessing",
                               "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                               "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
            "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                      "vocab": vocab, "merges": merges}}


def safetensors(tensors, metadata=None, pad=True):
    """tensors: list of (name, dtype, shape, bytes)."""
    hdr, off, data = {}, 0, b""
    if metadata is not None:
        hdr["__metadata__"] = metadata
    for name, dt, shape, raw in tensors:
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(raw)]}
        off += len(raw); data += raw
    h = json.dumps(hdr, separators=(",", ":")).encode()
    if pad:
        h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + data


def write(out, target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def main(out):
    # json
    for f in ["gqa_tied_llama3", "mha_untied_bf16", "headdim_f16"]:
        write(out, "fuzz_json", f + "_config.json", open(os.path.join(FIX, f, "config.json"), "rb").read())
        write(out, "fuzz_config", f + ".json", open(os.path.join(FIX, f, "config.json"), "rb").read())
    write(out, "fuzz_json", "escapes.json", r'{"a\u00e9\ud83e\udd99":"x\"\\\/\b\f\n\r\t","b":[true,false,null,-0,1.5e-3,-12E+2,9223372036854775807,-9223372036854775808,18446744073709551616],"c":{}}')
    write(out, "fuzz_json", "nested.json", '[[[[{"k":[{"a":1},{"a":2}]}]]]]')
    write(out, "fuzz_json", "keys.json", '{' + ",".join('"k%d":%d' % (i, i) for i in range(20)) + '}')
    # config variants
    base = json.load(open(os.path.join(FIX, "gqa_tied_llama3", "config.json")))
    v = dict(base); del v["rope_parameters"]; v["rope_scaling"] = {"type": "linear", "factor": 2.0}; v["rope_theta"] = 1e4
    v["torch_dtype"] = "bfloat16"; del v["dtype"]; v["eos_token_id"] = 2
    write(out, "fuzz_config", "linear_4x.json", json.dumps(v))
    v = dict(base); del v["head_dim"]; del v["num_key_value_heads"]; v["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e4}
    write(out, "fuzz_config", "defaults.json", json.dumps(v))
    # safetensors
    f32 = lambda n: struct.pack("<%df" % n, *[i * 0.5 for i in range(n)])
    write(out, "fuzz_safetensors", "two_f32.safetensors", safetensors(
        [("model.norm.weight", "F32", [4], f32(4)), ("model.embed_tokens.weight", "F32", [2, 3], f32(6))], {"format": "pt"}))
    write(out, "fuzz_safetensors", "dtypes.safetensors", safetensors(
        [("a", "BF16", [2, 2], b"\x80\x3f" * 4), ("b", "F16", [3], b"\x00\x3c" * 3), ("c", "I64", [1], b"\x07" + b"\0" * 7),
         ("d", "BOOL", [2], b"\x01\x00"), ("e", "F8_E4M3", [2], b"\x38\x40"), ("f", "U8", [0], b""),
         ("g", "F64", [1, 1, 1], struct.pack("<d", 1.0)), ("s", "F32", [], f32(1))]))
    write(out, "fuzz_safetensors", "empty.safetensors", safetensors([], {"format": "pt"}, pad=False))
    write(out, "fuzz_safetensors", "escaped_name.safetensors",
          struct.pack("<Q", 72) + b'{"\\u0061\\u00e9":{"dtype":"I8","shape":[2],"data_offsets":[0,2]}}'.ljust(72) + b"\x01\x02")
    # the smallest fixture shard, as it is
    write(out, "fuzz_safetensors", "fixture_shard.safetensors",
          open(os.path.join(FIX, "gqa_tied_llama3", "model-00002-of-00019.safetensors"), "rb").read())
    # index
    idx = open(os.path.join(FIX, "gqa_tied_llama3", "model.safetensors.index.json"), "rb").read()
    write(out, "fuzz_index", "fixture.index.json", idx)
    write(out, "fuzz_json", "index.json", idx)
    one = {"metadata": {"total_size": 1}, "weight_map": {"model.embed_tokens.weight": "in.safetensors", "x": "out.safetensors"}}
    write(out, "fuzz_index", "links.index.json", json.dumps(one))
    write(out, "fuzz_index", "partial.index.json", json.dumps({"weight_map": {"a": "model-00001-of-00019.safetensors", "b": "model-00002-of-00019.safetensors"}}))
    # tokenizers
    write(out, "fuzz_tokenizer", "llama3_tiny.json", json.dumps(tokenizer_llama3(), ensure_ascii=False))
    write(out, "fuzz_tokenizer", "llama2_tiny.json", json.dumps(tokenizer_llama2(), ensure_ascii=False))
    t = tokenizer_llama2(); t["normalizer"] = None; t["decoder"] = None; t["post_processor"] = None
    t["model"]["merges"] = [m.split(" ") for m in t["model"]["merges"]]
    write(out, "fuzz_tokenizer", "llama2_bare.json", json.dumps(t))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "fuzz/corpus")
