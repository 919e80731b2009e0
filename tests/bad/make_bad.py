#!/usr/bin/env python3
"""make_bad.py OUT_DIR - write broken checkpoints (and a few good controls) for tests/bad/test_bad.c.

Each case is a directory OUT_DIR/NAME derived from a small fixture in tests/fixtures (mha_untied_bf16: one
model.safetensors; gqa_tied_llama3: 19 shards and an index) or from the tiny tokenizers of fuzz/make_seeds.py.
OUT_DIR/manifest.tsv has one line per case:
    name <TAB> kind <TAB> expected <TAB> needle <TAB> description
kind is "load" (te_llama_load on the directory) or "tokenizer" (te_llama_tokenizer_load on it); expected is the
exact te_llama_result name; needle is a substring that te_llama_last_error() must contain (what and where).
Run from the repository root. Python 3 standard library only."""
import json, os, shutil, struct, sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIX = os.path.join(ROOT, "tests", "fixtures")
SINGLE = os.path.join(FIX, "mha_untied_bf16")   # 2 layers, untied, bf16, model.safetensors
SHARDED = os.path.join(FIX, "gqa_tied_llama3")  # 3 layers, tied, f32, 19 shards + index
sys.path.insert(0, os.path.join(ROOT, "fuzz"))
import make_seeds  # noqa: E402  (the tiny hand-written tokenizers)

cases = []


# --------------------------------------------------------------------------------------------- safetensors
def st_read(path):
    """-> (list of [name, dtype, shape, raw bytes] in offset order, metadata or None)"""
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    meta = h.pop("__metadata__", None)
    data = b[8 + n:]
    ts = sorted(h.items(), key=lambda kv: kv[1]["data_offsets"][0])
    return [[k, v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]]] for k, v in ts], meta


def st_header(tensors, meta=None):
    """Entries with data_offsets tiling the data in order: a dict in insertion order."""
    h, off = {}, 0
    if meta is not None:
        h["__metadata__"] = meta
    for name, dt, shape, raw in tensors:
        h[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(raw)]}
        off += len(raw)
    return h


def st_bytes(header, data, pad=True):
    """header: a dict (dumped as JSON) or raw bytes (used as they are)."""
    h = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if pad:
        h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + data


def st_write(path, tensors, meta=None, header=None, data=None):
    h = header if header is not None else st_header(tensors, meta)
    d = data if data is not None else b"".join(t[3] for t in tensors)
    put(path, st_bytes(h, d))


# --------------------------------------------------------------------------------------------- helpers
def put(path, data):
    if os.path.lexists(path):
        os.unlink(path)  # never write through a link
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def case(out, name, kind, expected, needle, desc, base=None):
    """Make OUT/NAME (a copy of base, or empty) and record it; returns the directory."""
    d = os.path.join(out, name)
    assert all(c[0] != name for c in cases), name
    assert "\t" not in desc and "\t" not in needle
    if base:
        shutil.copytree(base, d, symlinks=False, ignore=shutil.ignore_patterns("ref_*", "reference.json"))
    else:
        os.makedirs(d)
    cases.append((name, kind, expected, needle, desc))
    return d


def config_of(base):
    return json.load(open(os.path.join(base, "config.json")))


def config_case(out, name, expected, needle, desc, edit=None, text=None):
    d = case(out, name, "load", expected, needle, desc, SINGLE)
    if text is None:
        c = config_of(SINGLE)
        edit(c)
        text = json.dumps(c, indent=2)
    put(os.path.join(d, "config.json"), text)


def single_st_case(out, name, expected, needle, desc, make):
    """make(tensors, meta) -> bytes of the new model.safetensors."""
    d = case(out, name, "load", expected, needle, desc, SINGLE)
    ts, meta = st_read(os.path.join(SINGLE, "model.safetensors"))
    put(os.path.join(d, "model.safetensors"), make(ts, meta))


def index_case(out, name, expected, needle, desc, edit=None, text=None):
    d = case(out, name, "load", expected, needle, desc, SHARDED)
    p = os.path.join(d, "model.safetensors.index.json")
    if text is None:
        idx = json.load(open(p))
        edit(idx, d)
        text = json.dumps(idx, indent=2)
    put(p, text)
    return d


def deep(n):
    return "[" * n + "]" * n


# --------------------------------------------------------------------------------------------- the cases
def make(out):
    st_file = os.path.join(SINGLE, "model.safetensors")
    raw = open(st_file, "rb").read()
    hlen = struct.unpack("<Q", raw[:8])[0]

    # good controls: the bases load
    case(out, "ok_single", "load", "TE_LLAMA_OK", "", "control: the single-file fixture as it is", SINGLE)
    case(out, "ok_sharded", "load", "TE_LLAMA_OK", "", "control: the 19-shard fixture as it is", SHARDED)
    d = case(out, "ok_link_inside", "load", "TE_LLAMA_OK", "", "control: a shard that is a link to another file of the directory", SHARDED)
    os.rename(os.path.join(d, "model-00002-of-00019.safetensors"), os.path.join(d, "real-00002.safetensors"))
    os.symlink("real-00002.safetensors", os.path.join(d, "model-00002-of-00019.safetensors"))

    # ---- the safetensors file itself
    single_st_case(out, "st_truncated_data", "TE_LLAMA_ERR_ST_OFFSETS", "model.safetensors",
                   "model.safetensors cut in the middle of its data section", lambda ts, m: raw[:len(raw) // 2])
    single_st_case(out, "st_truncated_header", "TE_LLAMA_ERR_ST_HEADER", "model.safetensors",
                   "model.safetensors cut inside its JSON header", lambda ts, m: raw[:8 + hlen // 2])
    single_st_case(out, "st_three_bytes", "TE_LLAMA_ERR_ST_HEADER", "model.safetensors",
                   "model.safetensors of 3 bytes (no header length)", lambda ts, m: b"\x10\x00\x00")
    single_st_case(out, "st_empty_file", "TE_LLAMA_ERR_ST_HEADER", "model.safetensors",
                   "model.safetensors of 0 bytes", lambda ts, m: b"")
    single_st_case(out, "st_header_len_past_end", "TE_LLAMA_ERR_ST_HEADER", "past the end",
                   "header length one byte more than the file holds",
                   lambda ts, m: struct.pack("<Q", len(raw) - 8 + 1) + raw[8:])
    single_st_case(out, "st_header_len_2_63", "TE_LLAMA_ERR_ST_HEADER", "above the limit",
                   "header length 2^63", lambda ts, m: struct.pack("<Q", 1 << 63) + raw[8:])
    single_st_case(out, "st_header_len_zero", "TE_LLAMA_ERR_ST_HEADER", "model.safetensors",
                   "header length 0", lambda ts, m: struct.pack("<Q", 0) + raw[8:])
    # above the 100 MB limit but inside the (sparse) file: the limit, not the file size, must reject it
    d = case(out, "st_header_len_over_limit", "load", "TE_LLAMA_ERR_ST_HEADER", "above the limit",
             "header length 100,000,001 in a sparse file long enough to hold it", SINGLE)
    p = os.path.join(d, "model.safetensors")
    put(p, struct.pack("<Q", 100_000_001) + b"{" + b" " * 64)
    with open(p, "r+b") as f:
        f.truncate(8 + 100_000_001 + 64)
    single_st_case(out, "st_header_not_object", "TE_LLAMA_ERR_ST_HEADER", "model.safetensors",
                   "header is a JSON array", lambda ts, m: st_bytes(b"[]", b""))
    single_st_case(out, "st_header_not_json", "TE_LLAMA_ERR_JSON_SYNTAX", "model.safetensors",
                   "header is not JSON", lambda ts, m: st_bytes(b"{model.norm.weight: F32}", b""))

    def overlap(ts, m):
        h = st_header(ts, m)
        e = h[ts[5][0]]["data_offsets"]
        h[ts[5][0]]["data_offsets"] = [e[0] - 64, e[1] - 64]
        return st_bytes(h, b"".join(t[3] for t in ts))
    single_st_case(out, "st_offsets_overlap", "TE_LLAMA_ERR_ST_OFFSETS", "overlap",
                   "a tensor begins 64 bytes inside the one before it", overlap)

    def gap(ts, m):
        h = st_header(ts, m)
        e = h[ts[-1][0]]["data_offsets"]
        h[ts[-1][0]]["data_offsets"] = [e[0] + 16, e[1] + 16]
        return st_bytes(h, b"".join(t[3] for t in ts) + b"\0" * 16)
    single_st_case(out, "st_offsets_gap", "TE_LLAMA_ERR_ST_OFFSETS", "gap",
                   "16 unused bytes between the last two tensors", gap)

    def past_end(ts, m):
        ts = [list(t) for t in ts]
        ts[-1][2] = [ts[-1][2][0] * 2]          # model.norm.weight [128]: tiles, but the data stops at [64]
        ts[-1][3] = ts[-1][3] * 2
        h = st_header(ts, m)
        return st_bytes(h, b"".join(t[3] for t in ts)[:-128])
    single_st_case(out, "st_offsets_past_end", "TE_LLAMA_ERR_ST_OFFSETS", "data section",
                   "the last tensor's data_offsets end past the end of the file", past_end)

    def trailing(ts, m):
        return st_bytes(st_header(ts, m), b"".join(t[3] for t in ts) + b"\0" * 8)
    single_st_case(out, "st_trailing_bytes", "TE_LLAMA_ERR_ST_OFFSETS", "data section",
                   "8 bytes after the last tensor that no tensor covers", trailing)

    def backwards(ts, m):
        h = st_header(ts, m)
        e = h[ts[3][0]]["data_offsets"]
        h[ts[3][0]]["data_offsets"] = [e[1], e[0]]
        return st_bytes(h, b"".join(t[3] for t in ts))
    single_st_case(out, "st_offsets_end_before_begin", "TE_LLAMA_ERR_ST_OFFSETS", "before they begin",
                   "data_offsets [end, begin] reversed", backwards)

    def overflow(ts, m):
        h = st_header(ts, m)
        h[ts[0][0]]["shape"] = [1 << 62, 256]
        return st_bytes(h, b"".join(t[3] for t in ts))
    single_st_case(out, "st_shape_overflow", "TE_LLAMA_ERR_ST_SIZE", "overflows",
                   "shape [2^62, 256] x 2 bytes overflows 64 bits", overflow)

    def disagree(ts, m):
        h = st_header(ts, m)
        h[ts[2][0]]["shape"] = [63]
        return st_bytes(h, b"".join(t[3] for t in ts))
    single_st_case(out, "st_shape_offsets_disagree", "TE_LLAMA_ERR_ST_SIZE", "model.layers.0.input_layernorm.weight",
                   "shape [63] of BF16 is 126 bytes but data_offsets span 128", disagree)

    def dtype_unknown(ts, m):
        h = st_header(ts, m)
        h[ts[2][0]]["dtype"] = "Q4_0"
        return st_bytes(h, b"".join(t[3] for t in ts))
    single_st_case(out, "st_dtype_unknown", "TE_LLAMA_ERR_ST_DTYPE", "Q4_0", "dtype \"Q4_0\"", dtype_unknown)

    def dtype_int(ts, m):
        ts = [list(t) for t in ts]
        ts[-1][1] = "I16"
        return st_bytes(st_header(ts, m), b"".join(t[3] for t in ts))
    single_st_case(out, "st_dtype_integer", "TE_LLAMA_ERR_UNSUPPORTED", "model.norm.weight",
                   "model.norm.weight stored as I16 (a valid safetensors dtype, not a float)", dtype_int)

    def negative(ts, m):
        h = st_header(ts, m)
        h[ts[2][0]]["shape"] = [-64]
        return st_bytes(h, b"".join(t[3] for t in ts))
    single_st_case(out, "st_shape_negative", "TE_LLAMA_ERR_ST_HEADER", "shape", "shape [-64]", negative)

    def nine_dims(ts, m):
        h = st_header(ts, m)
        h[ts[2][0]]["shape"] = [64, 1, 1, 1, 1, 1, 1, 1, 1]
        return st_bytes(h, b"".join(t[3] for t in ts))
    single_st_case(out, "st_shape_nine_dims", "TE_LLAMA_ERR_ST_HEADER", "dimensions", "a shape of 9 dimensions", nine_dims)

    def float_offsets(ts, m):
        h = st_header(ts, m)
        hb = json.dumps(h, separators=(",", ":")).encode().replace(b'"data_offsets":[0,', b'"data_offsets":[0.0,', 1)
        return st_bytes(hb, b"".join(t[3] for t in ts))
    single_st_case(out, "st_offsets_float", "TE_LLAMA_ERR_ST_HEADER", "data_offsets", "data_offsets [0.0, 32768]", float_offsets)

    def no_offsets(ts, m):
        h = st_header(ts, m)
        del h[ts[2][0]]["data_offsets"]
        return st_bytes(h, b"".join(t[3] for t in ts))
    single_st_case(out, "st_offsets_missing", "TE_LLAMA_ERR_ST_HEADER", "data_offsets", "a tensor without data_offsets", no_offsets)

    def dup_key(ts, m):
        h = st_header(ts, m)
        hb = json.dumps(h, separators=(",", ":")).encode()
        e = json.dumps({ts[-1][0]: h[ts[-1][0]]}, separators=(",", ":")).encode()[1:-1]
        return st_bytes(hb[:-1] + b"," + e + b"}", b"".join(t[3] for t in ts))
    single_st_case(out, "st_duplicate_key", "TE_LLAMA_ERR_JSON_DUPLICATE_KEY", "model.norm.weight",
                   "model.norm.weight twice in the header", dup_key)

    def dup_key_escaped(ts, m):
        h = st_header(ts, m)
        hb = json.dumps(h, separators=(",", ":")).encode()
        e = json.dumps({ts[-1][0]: h[ts[-1][0]]}, separators=(",", ":")).encode()[1:-1]
        e = e.replace(b"model.norm.weight", b"model.norm.weigh\\u0074")
        return st_bytes(hb[:-1] + b"," + e + b"}", b"".join(t[3] for t in ts))
    single_st_case(out, "st_duplicate_key_escaped", "TE_LLAMA_ERR_JSON_DUPLICATE_KEY", "model.safetensors",
                   "model.norm.weight twice, once spelled with a \\u escape", dup_key_escaped)

    def deep_meta(ts, m):
        h = st_header(ts, m)
        hb = json.dumps(h, separators=(",", ":")).encode()
        return st_bytes(b'{"__metadata__":{"x":' + deep(200).encode() + b"}," + hb[1:], b"".join(t[3] for t in ts))
    single_st_case(out, "st_deep_nesting", "TE_LLAMA_ERR_JSON_LIMIT", "nesting", "header nested 200 deep", deep_meta)

    def meta_not_string(ts, m):
        return st_bytes(st_header(ts, {"format": 1}), b"".join(t[3] for t in ts))
    single_st_case(out, "st_metadata_not_string", "TE_LLAMA_ERR_ST_HEADER", "__metadata__",
                   "__metadata__ value that is not a string", meta_not_string)

    def name_not_utf8(ts, m):
        h = st_header(ts, m)
        hb = json.dumps(h, separators=(",", ":")).encode().replace(b"model.norm.weight", b"model.norm.w\xffight")
        return st_bytes(hb, b"".join(t[3] for t in ts))
    single_st_case(out, "st_name_not_utf8", "TE_LLAMA_ERR_JSON_SYNTAX", "UTF-8",
                   "a tensor name with the byte 0xFF (the reference reader rejects a non-UTF-8 header)", name_not_utf8)

    def name_nul(ts, m):
        h = st_header(ts, m)
        hb = json.dumps(h, separators=(",", ":")).encode().replace(b'"model.norm.weight"', b'"model.norm.weight\\u0000.bias"')
        return st_bytes(hb, b"".join(t[3] for t in ts))
    single_st_case(out, "st_name_with_nul", "TE_LLAMA_ERR_ST_HEADER", "model.norm.weight",
                   "model.norm.weight renamed \"model.norm.weight\\u0000.bias\": a name that is no C string", name_nul)

    # ---- tensors against the config
    def transposed(ts, m):
        ts = [list(t) for t in ts]
        i = [t[0] for t in ts].index("model.layers.1.mlp.down_proj.weight")
        ts[i][2] = ts[i][2][::-1]
        return st_bytes(st_header(ts, m), b"".join(t[3] for t in ts))
    single_st_case(out, "shape_transposed", "TE_LLAMA_ERR_SHAPE_MISMATCH", "model.layers.1.mlp.down_proj.weight",
                   "down_proj stored [128, 64] where the config says [64, 128]", transposed)
    config_case(out, "shape_vs_config", "TE_LLAMA_ERR_SHAPE_MISMATCH", "[256, 64]",
                "config.json says vocab_size 300; embed_tokens is [256, 64]",
                lambda c: c.update(vocab_size=300))

    def missing(ts, m):
        ts = [t for t in ts if t[0] != "model.layers.1.self_attn.k_proj.weight"]
        return st_bytes(st_header(ts, m), b"".join(t[3] for t in ts))
    single_st_case(out, "missing_tensor", "TE_LLAMA_ERR_MISSING_TENSOR", "model.layers.1.self_attn.k_proj.weight",
                   "layer 1's k_proj is not in the checkpoint", missing)

    def missing_head(ts, m):
        ts = [t for t in ts if t[0] != "lm_head.weight"]
        return st_bytes(st_header(ts, m), b"".join(t[3] for t in ts))
    single_st_case(out, "missing_lm_head", "TE_LLAMA_ERR_MISSING_TENSOR", "lm_head.weight",
                   "untied embeddings without lm_head.weight", missing_head)


    d = case(out, "duplicate_across_shards", "load", "TE_LLAMA_ERR_DUPLICATE_TENSOR", "model.norm.weight",
             "model.norm.weight in two shards", SHARDED)
    idx = json.load(open(os.path.join(d, "model.safetensors.index.json")))
    home = idx["weight_map"]["model.norm.weight"]
    other = sorted(set(idx["weight_map"].values()) - {home})[0]
    norm = [t for t in st_read(os.path.join(d, home))[0] if t[0] == "model.norm.weight"][0]
    ts, meta = st_read(os.path.join(d, other))
    st_write(os.path.join(d, other), ts + [norm], meta)

    # ---- config.json
    config_case(out, "config_duplicate_key", "TE_LLAMA_ERR_JSON_DUPLICATE_KEY", "config.json",
                "hidden_size twice in config.json",
                text=json.dumps(config_of(SINGLE), indent=2)[:-2] + ',\n  "hidden_size": 128\n}')
    config_case(out, "config_deep_nesting", "TE_LLAMA_ERR_JSON_LIMIT", "config.json", "config.json nested 129 deep",
                text='{"model_type":"llama","x":' + deep(128) + "}")
    config_case(out, "config_vocab_1e30", "TE_LLAMA_ERR_CONFIG", "vocab_size", "vocab_size 1e30",
                text=json.dumps(config_of(SINGLE)).replace('"vocab_size": 256', '"vocab_size": 1e30'))
    config_case(out, "config_vocab_2_64", "TE_LLAMA_ERR_CONFIG", "vocab_size", "vocab_size 2^64",
                lambda c: c.update(vocab_size=1 << 64))
    config_case(out, "config_vocab_2_40", "TE_LLAMA_ERR_CONFIG", "vocab_size", "vocab_size 2^40",
                lambda c: c.update(vocab_size=1 << 40))
    config_case(out, "config_vocab_string", "TE_LLAMA_ERR_CONFIG", "vocab_size", "vocab_size \"256\" (a string)",
                lambda c: c.update(vocab_size="256"))
    config_case(out, "config_zero_layers", "TE_LLAMA_ERR_CONFIG", "num_hidden_layers", "num_hidden_layers 0",
                lambda c: c.update(num_hidden_layers=0))
    config_case(out, "config_negative_hidden", "TE_LLAMA_ERR_CONFIG", "hidden_size", "hidden_size -64",
                lambda c: c.update(hidden_size=-64))
    config_case(out, "config_heads_not_dividing", "TE_LLAMA_ERR_CONFIG", "num_attention_heads",
                "5 heads do not divide hidden_size 64 (no head_dim given)",
                lambda c: (c.pop("head_dim"), c.update(num_attention_heads=5, num_key_value_heads=5)))
    config_case(out, "config_kv_not_dividing", "TE_LLAMA_ERR_CONFIG", "num_key_value_heads",
                "3 kv heads do not divide 4 heads", lambda c: c.update(num_key_value_heads=3))
    config_case(out, "config_kv_above_heads", "TE_LLAMA_ERR_CONFIG", "num_key_value_heads",
                "8 kv heads for 4 heads", lambda c: c.update(num_key_value_heads=8))
    config_case(out, "config_odd_head_dim", "TE_LLAMA_ERR_CONFIG", "head_dim", "head_dim 15 (RoPE rotates pairs)",
                lambda c: c.update(head_dim=15))
    config_case(out, "config_mistral", "TE_LLAMA_ERR_UNSUPPORTED", "mistral", "model_type mistral",
                lambda c: c.update(model_type="mistral"))
    config_case(out, "config_no_model_type", "TE_LLAMA_ERR_CONFIG", "model_type", "no model_type",
                lambda c: c.pop("model_type"))
    config_case(out, "config_gelu", "TE_LLAMA_ERR_UNSUPPORTED", "gelu", "hidden_act gelu",
                lambda c: c.update(hidden_act="gelu"))
    config_case(out, "config_attention_bias", "TE_LLAMA_ERR_UNSUPPORTED", "attention_bias", "attention_bias true",
                lambda c: c.update(attention_bias=True))
    config_case(out, "config_mlp_bias", "TE_LLAMA_ERR_UNSUPPORTED", "mlp_bias", "mlp_bias true",
                lambda c: c.update(mlp_bias=True))
    config_case(out, "config_rope_yarn", "TE_LLAMA_ERR_UNSUPPORTED", "yarn", "rope_scaling type yarn",
                lambda c: c.update(rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}))
    config_case(out, "config_rope_no_factor", "TE_LLAMA_ERR_CONFIG", "factor", "linear rope_scaling without a factor",
                lambda c: c.update(rope_scaling={"rope_type": "linear"}))
    config_case(out, "config_dtype_fp8", "TE_LLAMA_ERR_UNSUPPORTED", "float8", "torch_dtype float8_e4m3fn",
                lambda c: c.update(torch_dtype="float8_e4m3fn"))
    config_case(out, "config_eps_zero", "TE_LLAMA_ERR_CONFIG", "rms_norm_eps", "rms_norm_eps 0",
                lambda c: c.update(rms_norm_eps=0))
    config_case(out, "config_not_json", "TE_LLAMA_ERR_JSON_SYNTAX", "config.json", "config.json is not JSON",
                text="model_type = llama\nhidden_size = 64\n")
    config_case(out, "config_empty", "TE_LLAMA_ERR_JSON_SYNTAX", "config.json", "config.json of 0 bytes", text="")
    config_case(out, "config_array", "TE_LLAMA_ERR_CONFIG", "config.json", "config.json is a JSON array", text="[]")
    config_case(out, "config_trailing_garbage", "TE_LLAMA_ERR_JSON_SYNTAX", "config.json",
                "config.json followed by a second object", text=json.dumps(config_of(SINGLE)) + "{}")
    d = case(out, "config_is_directory", "load", "TE_LLAMA_ERR_IO", "config.json", "config.json is a directory", SINGLE)
    os.unlink(os.path.join(d, "config.json"))
    os.mkdir(os.path.join(d, "config.json"))
    d = case(out, "config_is_fifo", "load", "TE_LLAMA_ERR_IO", "config.json",
             "config.json is a named pipe (must not block)", SINGLE)
    os.unlink(os.path.join(d, "config.json"))
    os.mkfifo(os.path.join(d, "config.json"))

    # ---- which files
    case(out, "empty_directory", "load", "TE_LLAMA_ERR_NOT_FOUND", "config.json", "an empty directory")
    d = case(out, "no_weights", "load", "TE_LLAMA_ERR_NOT_FOUND", "model.safetensors", "config.json and nothing else")
    shutil.copy(os.path.join(SINGLE, "config.json"), d)
    d = case(out, "pytorch_bin_only", "load", "TE_LLAMA_ERR_UNSUPPORTED", "pytorch_model.bin",
             "pytorch_model.bin instead of safetensors")
    shutil.copy(os.path.join(SINGLE, "config.json"), d)
    put(os.path.join(d, "pytorch_model.bin"), b"PK\x03\x04" + b"\0" * 60)
    d = case(out, "pytorch_index_only", "load", "TE_LLAMA_ERR_UNSUPPORTED", "pytorch_model.bin",
             "pytorch_model.bin.index.json instead of safetensors")
    shutil.copy(os.path.join(SINGLE, "config.json"), d)
    put(os.path.join(d, "pytorch_model.bin.index.json"), '{"weight_map":{"lm_head.weight":"pytorch_model-00001-of-00002.bin"}}')
    d = case(out, "weights_is_directory", "load", "TE_LLAMA_ERR_IO", "model.safetensors",
             "model.safetensors is a directory", SINGLE)
    os.unlink(os.path.join(d, "model.safetensors"))
    os.mkdir(os.path.join(d, "model.safetensors"))
    d = case(out, "weights_is_fifo", "load", "TE_LLAMA_ERR_IO", "model.safetensors",
             "model.safetensors is a named pipe (must not block)", SINGLE)
    os.unlink(os.path.join(d, "model.safetensors"))
    os.mkfifo(os.path.join(d, "model.safetensors"))
    d = case(out, "weights_link_out", "load", "TE_LLAMA_ERR_UNSAFE_PATH", "model.safetensors",
             "model.safetensors is a link to a file outside the directory", SINGLE)
    os.makedirs(os.path.join(out, "_outside"), exist_ok=True)
    shutil.copy(st_file, os.path.join(out, "_outside", "model.safetensors"))
    os.unlink(os.path.join(d, "model.safetensors"))
    os.symlink(os.path.join("..", "_outside", "model.safetensors"), os.path.join(d, "model.safetensors"))
    d = case(out, "weights_link_dangling", "load", "TE_LLAMA_ERR_NOT_FOUND", "model.safetensors",
             "model.safetensors is a link to nothing", SINGLE)
    os.unlink(os.path.join(d, "model.safetensors"))
    os.symlink("nowhere.safetensors", os.path.join(d, "model.safetensors"))

    # ---- model.safetensors.index.json
    def set_shard(tensor, file):
        def edit(idx, d):
            idx["weight_map"][tensor] = file
        return edit
    index_case(out, "index_missing_shard", "TE_LLAMA_ERR_NOT_FOUND", "model-00020-of-00019.safetensors",
               "the index names a shard that is not there", set_shard("model.norm.weight", "model-00020-of-00019.safetensors"))
    index_case(out, "index_dotdot_path", "TE_LLAMA_ERR_UNSAFE_PATH", "../x", "a shard named ../x.safetensors",
               set_shard("model.norm.weight", "../x.safetensors"))
    index_case(out, "index_dotdot", "TE_LLAMA_ERR_UNSAFE_PATH", "model.safetensors.index.json", "a shard named ..",
               set_shard("model.norm.weight", ".."))
    index_case(out, "index_absolute_path", "TE_LLAMA_ERR_UNSAFE_PATH", "/etc/passwd", "a shard named /etc/passwd",
               set_shard("model.norm.weight", "/etc/passwd"))
    index_case(out, "index_backslash", "TE_LLAMA_ERR_UNSAFE_PATH", "model.safetensors.index.json",
               "a shard named ..\\x.safetensors", set_shard("model.norm.weight", "..\\x.safetensors"))
    index_case(out, "index_escaped_slash", "TE_LLAMA_ERR_UNSAFE_PATH", "model.safetensors.index.json",
               "a shard named ..\\u002fx: the slash spelled as an escape",
               text=open(os.path.join(SHARDED, "model.safetensors.index.json")).read().replace(
                   '"model-00019-of-00019.safetensors"', '"..\\u002fx.safetensors"', 1))
    index_case(out, "index_nul_in_name", "TE_LLAMA_ERR_UNSAFE_PATH", "model.safetensors.index.json",
               "a shard named with a \\u0000 inside",
               text=open(os.path.join(SHARDED, "model.safetensors.index.json")).read().replace(
                   '"model-00019-of-00019.safetensors"', '"model-00019-of-00019.safetensors\\u0000.txt"', 1))
    index_case(out, "index_empty_name", "TE_LLAMA_ERR_UNSAFE_PATH", "model.safetensors.index.json", "a shard named \"\"",
               set_shard("model.norm.weight", ""))

    def link_out(idx, d):
        f = idx["weight_map"]["model.norm.weight"]
        shutil.copy(os.path.join(d, f), os.path.join(out, "_outside", f))
        os.unlink(os.path.join(d, f))
        os.symlink(os.path.join("..", "_outside", f), os.path.join(d, f))
    index_case(out, "index_symlink_out", "TE_LLAMA_ERR_UNSAFE_PATH", "outside",
               "a shard that is a link to a file outside the directory", link_out)
    index_case(out, "index_duplicate_key", "TE_LLAMA_ERR_JSON_DUPLICATE_KEY", "model.safetensors.index.json",
               "model.norm.weight twice in weight_map",
               text=open(os.path.join(SHARDED, "model.safetensors.index.json")).read().replace(
                   '"weight_map": {', '"weight_map": {\n    "model.norm.weight": "model-00001-of-00019.safetensors",', 1))
    index_case(out, "index_not_json", "TE_LLAMA_ERR_JSON_SYNTAX", "model.safetensors.index.json",
               "the index is not JSON", text="weight_map: model.safetensors\n")
    index_case(out, "index_deep_nesting", "TE_LLAMA_ERR_JSON_LIMIT", "model.safetensors.index.json",
               "the index nested 300 deep", text='{"metadata":' + deep(300) + ',"weight_map":{}}')
    index_case(out, "index_no_weight_map", "TE_LLAMA_ERR_JSON_SCHEMA", "weight_map", "the index has no weight_map",
               lambda idx, d: idx.pop("weight_map"))
    index_case(out, "index_empty_weight_map", "TE_LLAMA_ERR_JSON_SCHEMA", "weight_map", "weight_map is {}",
               lambda idx, d: idx.update(weight_map={}))
    index_case(out, "index_file_not_string", "TE_LLAMA_ERR_JSON_SCHEMA", "weight_map",
               "a weight_map value that is a number", set_shard("model.norm.weight", 19))
    index_case(out, "index_names_config", "TE_LLAMA_ERR_ST_HEADER", "config.json",
               "the index names config.json as a shard", set_shard("model.norm.weight", "config.json"))

    def drop_shard(idx, d):
        f = idx["weight_map"]["model.layers.2.mlp.down_proj.weight"]
        idx["weight_map"] = {k: v for k, v in idx["weight_map"].items() if v != f}
    index_case(out, "index_drops_a_shard", "TE_LLAMA_ERR_MISSING_TENSOR", "model.layers.2.mlp.down_proj.weight",
               "the index leaves out the shard that holds layer 2's down_proj", drop_shard)

    def truncate_shard(idx, d):
        f = os.path.join(d, idx["weight_map"]["model.layers.1.mlp.up_proj.weight"])
        b = open(f, "rb").read()
        put(f, b[:len(b) - 100])
    index_case(out, "index_shard_truncated", "TE_LLAMA_ERR_ST_OFFSETS", "of-00019.safetensors",
               "one shard lost its last 100 bytes", truncate_shard)

    def tiny_shard(idx, d):
        put(os.path.join(d, idx["weight_map"]["model.norm.weight"]), b"abc")
    index_case(out, "index_shard_three_bytes", "TE_LLAMA_ERR_ST_HEADER", "of-00019.safetensors",
               "one shard is 3 bytes long", tiny_shard)

    # ---- tokenizer.json (te_llama_tokenizer_load on the directory)
    def tok_case(name, expected, needle, desc, tok=None, text=None, base="llama2", extra=None):
        d = case(out, name, "tokenizer", expected, needle, desc)
        if text is None:
            t = make_seeds.tokenizer_llama2() if base == "llama2" else make_seeds.tokenizer_llama3()
            if tok:
                tok(t)
            text = json.dumps(t, ensure_ascii=False)
        if text is not False:
            put(os.path.join(d, "tokenizer.json"), text)
        for k, v in (extra or {}).items():
            put(os.path.join(d, k), v)
    tok_case("ok_tokenizer_llama2", "TE_LLAMA_OK", "", "control: a tiny Llama 2 style tokenizer")
    tok_case("ok_tokenizer_llama3", "TE_LLAMA_OK", "", "control: a tiny Llama 3 style tokenizer", base="llama3")
    tok_case("tok_missing_merges", "TE_LLAMA_ERR_JSON_SCHEMA", "merges", "a BPE model without merges",
             lambda t: t["model"].pop("merges"))
    tok_case("tok_wordpiece", "TE_LLAMA_ERR_UNSUPPORTED", "WordPiece", "a WordPiece model",
             lambda t: t.update(model={"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                                       "max_input_chars_per_word": 100, "vocab": {"[UNK]": 0, "a": 1, "##b": 2}}))
    tok_case("tok_unigram", "TE_LLAMA_ERR_UNSUPPORTED", "Unigram", "a Unigram model",
             lambda t: t.update(model={"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0.0], ["a", -1.0]]}))
    tok_case("tok_merge_unknown_token", "TE_LLAMA_ERR_TOKENIZER", "not in the vocabulary",
             "a merge naming a token that is not in the vocabulary", lambda t: t["model"]["merges"].append("x y"))
    tok_case("tok_merge_three_parts", "TE_LLAMA_ERR_TOKENIZER", "two tokens", "a merge \"a b c\"",
             lambda t: t["model"]["merges"].append("a b c"))
    tok_case("tok_duplicate_id", "TE_LLAMA_ERR_TOKENIZER", "twice", "two vocabulary entries with one id",
             lambda t: t["model"]["vocab"].update(zz=5))
    tok_case("tok_huge_id", "TE_LLAMA_ERR_OUT_OF_RANGE", "id", "a vocabulary id of 2^40",
             lambda t: t["model"]["vocab"].update(zz=1 << 40))
    tok_case("tok_added_negative_id", "TE_LLAMA_ERR_OUT_OF_RANGE", "added token", "an added token with id -1",
             lambda t: t["added_tokens"].append({"id": -1, "content": "<x>", "special": True}))
    tok_case("tok_duplicate_key", "TE_LLAMA_ERR_JSON_DUPLICATE_KEY", "tokenizer.json",
             "the token \"a\" twice in the vocabulary",
             text=json.dumps(make_seeds.tokenizer_llama2(), ensure_ascii=False).replace('"a": ', '"a": 7, "a": ', 1))
    tok_case("tok_not_json", "TE_LLAMA_ERR_JSON_SYNTAX", "tokenizer.json", "tokenizer.json is not JSON", text="{'model': 'BPE'}")
    tok_case("tok_deep_nesting", "TE_LLAMA_ERR_JSON_LIMIT", "tokenizer.json", "tokenizer.json nested 129 deep",
             text='{"x":' + deep(128) + "}")
    tok_case("tok_regex_split", "TE_LLAMA_ERR_UNSUPPORTED", "regex", "a Split pre-tokenizer with another regex",
             lambda t: t.update(pre_tokenizer={"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Isolated", "invert": False}))
    tok_case("tok_missing_file", "TE_LLAMA_ERR_NOT_FOUND", "tokenizer.json", "a directory without tokenizer.json", text=False)
    tok_case("tok_config_not_json", "TE_LLAMA_ERR_JSON_SYNTAX", "tokenizer_config.json",
             "a good tokenizer.json beside a tokenizer_config.json that is not JSON",
             extra={"tokenizer_config.json": "{bos_token: <s>}"})

    with open(os.path.join(out, "manifest.tsv"), "w") as f:
        f.write("# name\tkind\texpected\tneedle\tdescription\n")
        for c in cases:
            f.write("\t".join(c) + "\n")


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make_bad.py OUT_DIR")
    out = sys.argv[1]
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    make(out)
    print("make_bad: %d cases in %s" % (len(cases), out))


if __name__ == "__main__":
    main()
