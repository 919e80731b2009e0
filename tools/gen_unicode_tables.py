#!/usr/bin/env python3
"""Generate te_llama.h's Unicode class table for the tokenizer's hand-written Llama 3 pre-tokenizer regex.

The classes are the ones the HF (Oniguruma) regex uses: \\p{L} (Lu Ll Lt Lm Lo), \\p{N} (Nd Nl No), and \\s, which
in that engine is the White_Space property (checked against `tokenizers`: U+00A0, U+0085, U+3000, U+2028, \\v and
\\f are white space; U+001C..U+001F and U+180E are not, unlike Python's str.isspace).

Input: UnicodeData.txt and PropList.txt (Debian: apt-get install unicode-data -> /usr/share/unicode/).
Output: the C block between the GENERATED markers; with --update FILE it replaces that block in FILE in place.

    python3 tools/gen_unicode_tables.py [--ucd /usr/share/unicode] [--update te_llama.h]
"""
import argparse, os, re, sys

BEGIN = "/* BEGIN GENERATED UNICODE TABLES: tools/gen_unicode_tables.py, do not edit */"
END = "/* END GENERATED UNICODE TABLES */"
L, N, WS = 1, 2, 4


def read_classes(ucd):
    cls = bytearray(0x110000)
    first = None
    version = "?"
    with open(os.path.join(ucd, "UnicodeData.txt"), encoding="utf-8") as f:
        for line in f:
            fields = line.split(";")
            cp, name, gc = int(fields[0], 16), fields[1], fields[2]
            bit = L if gc[0] == "L" else N if gc[0] == "N" else 0
            if name.endswith(", First>"):
                first = cp
                continue
            lo = first if name.endswith(", Last>") else cp
            first = None
            for c in range(lo, cp + 1):
                cls[c] |= bit
    with open(os.path.join(ucd, "PropList.txt"), encoding="utf-8") as f:
        for line in f:
            m = re.match(r"#\s*PropList-([0-9.]+)\.txt", line)
            if m:
                version = m.group(1)
            line = line.split("#")[0].strip()
            if not line:
                continue
            rng, prop = [x.strip() for x in line.split(";")]
            if prop != "White_Space":
                continue
            lo, _, hi = rng.partition("..")
            for c in range(int(lo, 16), int(hi or lo, 16) + 1):
                cls[c] |= WS
    return cls, version


def block(cls, version):
    runs = []  # (start, class): the class holds from start up to the next run's start
    for cp in range(0x110000):
        if not runs or runs[-1][1] != cls[cp]:
            runs.append((cp, cls[cp]))
    out = [BEGIN,
           "/* Unicode %s: code point classes as runs, (start << 3) | class, class bits 1 = L, 2 = N, 4 = White_Space;" % version,
           "   a run lasts until the next one starts. %d runs. */" % len(runs),
           "static const uint32_t te_llama__uni_runs[%d] = {" % len(runs)]
    vals = ["0x%x" % ((s << 3) | c) for s, c in runs]
    for i in range(0, len(vals), 10):
        out.append("    " + ", ".join(vals[i:i + 10]) + ",")
    out.append("};")
    out.append(END)
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ucd", default="/usr/share/unicode")
    ap.add_argument("--update", help="header whose generated block is replaced in place")
    a = ap.parse_args()
    text = block(*read_classes(a.ucd))
    if not a.update:
        sys.stdout.write(text)
        return
    with open(a.update, encoding="utf-8") as f:
        src = f.read()
    i, j = src.find(BEGIN), src.find(END)
    if i < 0 or j < i:
        sys.exit("%s: no generated block markers" % a.update)
    src = src[:i] + text + src[j + len(END) + 1:]
    with open(a.update, "w", encoding="utf-8") as f:
        f.write(src)


if __name__ == "__main__":
    main()
