#!/usr/bin/env python3
"""Compare two safetensors checkpoints tensor by tensor, byte for byte.

Usage: python3 tests/check_saved.py OUT_DIR REF_DIR

Each directory holds either model.safetensors or model.safetensors.index.json
plus the shard files it names. Tensors are read with the official
``safetensors`` package (no torch needed: numpy + safetensors only). The two
checkpoints must have the same tensor names, and for each the same dtype,
shape and raw bytes. Sharding may differ between the two.

Exit 0 and print 'check_saved: OK N tensors' on success; exit 1 with the
list of differences otherwise (2 for usage errors / unreadable input).
"""

import json
import os
import struct
import sys

try:
    import safetensors
    from safetensors import safe_open
except ImportError as e:  # pragma: no cover
    print(f"check_saved: the 'safetensors' package is required: {e}", file=sys.stderr)
    sys.exit(2)

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


class Unreadable(Exception):
    pass


def _deserialize_fn():
    fn = getattr(safetensors, "deserialize", None)
    if fn is None:
        try:
            from safetensors._safetensors_rust import deserialize as fn  # older releases
        except ImportError:
            fn = None
    return fn


def _raw_by_header(path):
    """Last-resort byte reader (only used when safetensors has no deserialize):
    the data ranges from the file's own header; dtype/shape are cross-checked
    against safe_open by the caller."""
    with open(path, "rb") as f:
        buf = f.read()
    (n,) = struct.unpack("<Q", buf[:8])
    header = json.loads(buf[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        out[name] = bytes(buf[base + a:base + b])
    return out


def read_file(path):
    """name -> (dtype, shape, bytes) for one .safetensors file."""
    meta = {}
    try:
        # Official parser: validates the header and gives dtype/shape.
        with safe_open(path, framework="numpy") as f:
            for k in f.keys():
                sl = f.get_slice(k)
                meta[k] = (str(sl.get_dtype()).upper(), tuple(int(x) for x in sl.get_shape()))
    except Exception as e:
        raise Unreadable(f"{path}: safetensors cannot open it: {e}")

    fn = _deserialize_fn()
    if fn is not None:
        with open(path, "rb") as f:
            data = f.read()
        try:
            items = fn(data)
        except Exception as e:
            raise Unreadable(f"{path}: safetensors.deserialize failed: {e}")
        raw = {}
        for name, info in items:
            raw[name] = (str(info["dtype"]).upper(), tuple(int(x) for x in info["shape"]), bytes(info["data"]))
    else:
        bytes_by_name = _raw_by_header(path)
        raw = {k: (meta[k][0], meta[k][1], bytes_by_name[k]) for k in meta}

    if set(raw) != set(meta):
        raise Unreadable(f"{path}: tensor lists disagree between safe_open and deserialize")
    for k, (dt, shape, _) in raw.items():
        if (dt, shape) != meta[k]:
            raise Unreadable(f"{path}: {k}: dtype/shape disagree ({dt},{shape}) vs {meta[k]}")
    return raw


def read_checkpoint(d):
    """name -> (dtype, shape, bytes) for a whole checkpoint directory."""
    if not os.path.isdir(d):
        raise Unreadable(f"{d}: not a directory")
    idx = os.path.join(d, INDEX)
    single = os.path.join(d, SINGLE)
    if os.path.isfile(idx):
        if os.path.isfile(single):
            raise Unreadable(f"{d}: has both {INDEX} and {SINGLE}")
        try:
            with open(idx) as f:
                weight_map = json.load(f)["weight_map"]
        except Exception as e:
            raise Unreadable(f"{idx}: bad index: {e}")
        by_file = {}
        for name, fname in weight_map.items():
            by_file.setdefault(fname, set()).add(name)
        tensors = {}
        for fname in sorted(by_file):
            p = os.path.join(d, fname)
            if not os.path.isfile(p):
                raise Unreadable(f"{d}: index names missing shard {fname}")
            got = read_file(p)
            if set(got) != by_file[fname]:
                extra = sorted(set(got) - by_file[fname])
                missing = sorted(by_file[fname] - set(got))
                raise Unreadable(f"{p}: contents disagree with index (not in file: {missing}, not in index: {extra})")
            for k, v in got.items():
                if k in tensors:
                    raise Unreadable(f"{d}: tensor {k} stored twice")
                tensors[k] = v
        stray = sorted(f for f in os.listdir(d) if f.endswith(".safetensors") and f not in by_file
                       and not f.startswith("ref_"))  # test references beside a fixture
        if stray:
            raise Unreadable(f"{d}: shard files not named by the index: {stray}")
        return tensors
    if os.path.isfile(single):
        return read_file(single)
    raise Unreadable(f"{d}: neither {INDEX} nor {SINGLE}")


def compare(out, ref):
    errs = []
    for k in sorted(set(ref) - set(out)):
        errs.append(f"missing in OUT: {k}")
    for k in sorted(set(out) - set(ref)):
        errs.append(f"unexpected in OUT: {k}")
    for k in sorted(set(out) & set(ref)):
        (odt, osh, ob), (rdt, rsh, rb) = out[k], ref[k]
        if odt != rdt:
            errs.append(f"{k}: dtype {odt} != ref {rdt}")
        elif osh != rsh:
            errs.append(f"{k}: shape {list(osh)} != ref {list(rsh)}")
        elif len(ob) != len(rb):
            errs.append(f"{k}: {len(ob)} bytes != ref {len(rb)}")
        elif ob != rb:
            first = next(i for i in range(len(ob)) if ob[i] != rb[i])
            ndiff = sum(1 for a, b in zip(ob, rb) if a != b)
            errs.append(f"{k}: bytes differ ({ndiff} of {len(ob)} bytes, first at byte {first})")
    return errs


def main(argv):
    if len(argv) != 3:
        print("usage: check_saved.py OUT_DIR REF_DIR", file=sys.stderr)
        return 2
    try:
        out = read_checkpoint(argv[1])
        ref = read_checkpoint(argv[2])
    except Unreadable as e:
        print(f"check_saved: FAIL: {e}", file=sys.stderr)
        return 2
    errs = compare(out, ref)
    if errs:
        print(f"check_saved: FAIL: {len(errs)} difference(s) between {argv[1]} and {argv[2]}:", file=sys.stderr)
        for e in errs[:50]:
            print(f"  {e}", file=sys.stderr)
        if len(errs) > 50:
            print(f"  ... and {len(errs) - 50} more", file=sys.stderr)
        return 1
    print(f"check_saved: OK {len(ref)} tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
