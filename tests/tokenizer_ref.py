#!/usr/bin/env python3
"""Reference token ids from HF `tokenizers` for tests/test_tokenizer.c.

    TE_LLAMA_SHARED=../shared python3 tests/tokenizer_ref.py build/tokref

Needs only `tokenizers` and the standard library. Reads the two tokenizers and the Austen corpus under
$TE_LLAMA_SHARED/data (default ../shared) and writes, for each of llama3 and llama2, into the given directory:

  NAME_cases.tsv        one case a line: name, add_special, hex(text), ids (comma separated),
                        hex(HF decode, skip_special_tokens=True), hex(HF decode, skip_special_tokens=False),
                        roundtrip (1 when HF's decode(encode(text)) with special tokens kept gives text back)
  NAME_austen_whole.ids the whole corpus encoded as one string (add_special False), ids space separated
  NAME_austen_lines.ids the corpus split on "\\n" (every piece, the last one too), one line of ids per piece
  NAME_austen.txt       "roundtrip 0|1" for the whole corpus
  llama3_pretok.tsv     name, hex(text), byte lengths of the Llama 3 pre-tokenizer's pieces (its regex split)
  llama3_chat.tsv       hex(system or "-"), hex(user), ids of the Llama 3 instruct prompt, rendered as the
                        chat template in tokenizer_config.json renders it (contents .strip()-ed)

Text that is not valid UTF-8 cannot reach HF from Python: for those cases the ids are HF's for the text decoded
with errors="replace" (U+FFFD per maximal invalid subpart), which is what the C library does to such input.
"""
import os
import random
import sys

from tokenizers import Tokenizer

SHARED = os.environ.get("TE_LLAMA_SHARED", "../shared")
DATA = os.path.join(SHARED, "data")

HARD = [
    ("empty", ""),
    ("space", " "),
    ("spaces", "     "),
    ("leading_space", " hello"),
    ("leading_spaces", "   hello world"),
    ("trailing_spaces", "hello world   "),
    ("ws_runs", "a  b   c    d\t\te \t f"),
    ("tabs", "\tindented\n\t\tmore\tx"),
    ("crlf", "line one\r\nline two\r\n\r\nthree\r"),
    ("newlines", "\n\n\nx\n \n  \n"),
    ("space_newline_mix", "a \n b  \n\n  c\t\n\td"),
    ("only_newlines", "\n\n\n\n"),
    ("contractions", "it's don't we're they've I'm we'll he'd"),
    ("contractions_upper", "IT'S DON'T WE'RE THEY'VE I'M WE'LL HE'D 'S 'LL 'Re 'rE 'Ve"),
    ("contractions_edge", "'s's 'sa 'x ''s '' ' 'll'll O'Neill rock'n'roll"),
    ("long_s", "x'ſ x'ſa ſ"),
    ("kelvin", "x'\u212a 5\u212a"),
    ("digits", "0 12 345 6789 1234567890 3.14159 1,000,000 $42.50 2024-01-01"),
    ("long_number", "123456789012345678901234567890"),
    ("other_digits", "\u0663\u0664\u0665 \uff11\uff12\uff13\uff14 x\u00b2 \u216b \u00bd \u2460\u2461"),
    ("emoji", "I \u2764\ufe0f \U0001F600\U0001F601 \U0001F44D\U0001F3FD ok"),
    ("zwj", "\U0001F468\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466 family \U0001F3F3\ufe0f\u200d\U0001F308"),
    ("flags", "\U0001F1EF\U0001F1F5\U0001F1FA\U0001F1F8"),
    ("cjk", "\u6211\u7684\u540d\u5b57\u662f\u4e2d\u6587\u3002\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3001\ud55c\uad6d\uc5b4"),
    ("combining", "e\u0301 cafe\u0301 n\u0303o Z\u0335\u0321a\u0336l\u0337g\u0338o"),
    ("precomposed", "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00c5ngstr\u00f6m"),
    ("arabic", "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645 \u0661\u0662\u0663"),
    ("hindi", "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e \u0967\u0968\u0969"),
    ("greek_cyrillic", "\u0391\u03b8\u03ae\u03bd\u03b1 \u041c\u043e\u0441\u043a\u0432\u0430 \u0416\u0436"),
    ("control", "a\x01b\x02\x03c\x7f d\x1b[0m e\x1c\x1d\x1e\x1f f"),
    ("nul", "a\x00b\x00\x00 c"),
    ("unicode_spaces", "a\u00a0b\u00a0\u00a0c\u3000d\u3000\u3000e\u2028f\u2029g\x85h\x0bi\x0cj\u2009k\u200bl\u180em\ufeffn"),
    ("space_before_unicode_space", " \u00a0x \u3000 y"),
    ("punct", "Hello, world! (yes) [no] {maybe} ... --- ?!? \"quoted\" 'single' `tick` @#$%^&*_+=|\\/<>~"),
    ("punct_newline", "end.\n\nNext!\r\n?\n"),
    ("code", "def f(x):\n    return x ** 2  # square\n\nif __name__ == '__main__':\n\tprint(f(3))\n"),
    ("url", "https://example.com/path?q=1&r=two#frag user@mail.org"),
    ("special_llama3", "<|begin_of_text|>Hi<|eot_id|><|eot_id|> x <|start_header_id|>user<|end_header_id|>\n\n"),
    ("special_partial", "<|eot_id <|eot_id|| <|reserved_special_token_0|><|reserved_special_token_250|>"),
    ("special_llama2", "<s>Hello</s> <s> x</s><unk> y"),
    ("special_spaces", " <s>  </s>  <|eot_id|>  "),
    ("byte_token_text", "<0x41> <0x0A>"),
    ("metaspace_char", "\u2581 a\u2581b \u2581\u2581"),
    ("long_run", "a" * 1000),
    ("long_spaces", " " * 300 + "x"),
    ("long_word", "Pneumonoultramicroscopicsilicovolcanoconiosis supercalifragilisticexpialidocious"),
    ("mixed_scripts", "abc\u0430\u0431\u0432\u03b1\u03b2\u03b3123\u4e00\u4e8c\u4e09!?"),
    ("surrogate_range", "\ud7ff\ue000\uffff\U00010000\U0010fffd"),
    ("private_use", "\ue000\uf8ff\U000f0000"),
    ("letters_numbers_glued", "abc123def4567ghi89 x1y2z3 ___init___"),
    ("apostrophe_unicode", "it\u2019s don\u2019t \u2018quoted\u2019"),
]

INVALID = [  # raw bytes; not valid UTF-8
    ("invalid_lone_continuation", b"ab\x80cd"),
    ("invalid_lead", b"x\xff\xfey"),
    ("invalid_truncated", b"caf\xc3"),
    ("invalid_truncated3", b"\xe2\x82 euro \xf0\x9f\x98"),
    ("invalid_surrogate", b"a\xed\xa0\x80b"),
    ("invalid_overlong", b"\xc0\xaf\xe0\x80\xafz"),
    ("invalid_mixed", b"ok \xf4\x90\x80\x80 \xc3\xa9\xc3 done"),
]


def random_cases(n, seed):
    """Deterministic random strings over an alphabet of the characters the regex cares about."""
    rng = random.Random(seed)
    pieces = [" ", "  ", "\t", "\n", "\r\n", "\r", "\u00a0", "\u3000", "\x0b", "\x85", "'", "'s", "'S", "'ll", "'RE",
              "a", "Z", "hello", "World", "\u00e9", "e\u0301", "\u4e2d\u6587", "\u0645\u0631", "\u0928\u092e",
              "0", "12", "3456", "\u0663", "\u00bd", ".", ",", "!", "?", "...", "(", ")", "-", "_", "\"", "#",
              "\U0001F600", "\u200d", "\ufe0f", "\x00", "\x1f", "<|eot_id|>", "<s>", "</s>", "\u2581", "<0x41>"]
    out = []
    for i in range(n):
        k = rng.randint(1, 24)
        out.append(("random_%03d" % i, "".join(rng.choice(pieces) for _ in range(k))))
    return out


def byte_decoder():
    """GPT-2's bytes_to_unicode, inverted: alphabet character -> byte."""
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def hx(b):
    return b.hex() if b else "-"


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: tokenizer_ref.py OUT_DIR")
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(DATA, "austen", "austen.txt"), "rb") as f:
        austen = f.read().decode("utf-8")
    cases = [(n, s.encode("utf-8"), s) for n, s in HARD + random_cases(300, 1234)]
    cases += [(n, b, b.decode("utf-8", errors="replace")) for n, b in INVALID]
    for name in ("llama3", "llama2"):
        tok = Tokenizer.from_file(os.path.join(DATA, "tokenizers", name, "tokenizer.json"))
        with open(os.path.join(out, name + "_cases.tsv"), "w") as f:
            for cname, raw, text in cases:
                for add_special in (0, 1):
                    ids = tok.encode(text, add_special_tokens=bool(add_special)).ids
                    skip = tok.decode(ids, skip_special_tokens=True)
                    keep = tok.decode(ids, skip_special_tokens=False)
                    plain = tok.decode(tok.encode(text, add_special_tokens=False).ids, skip_special_tokens=False)
                    roundtrip = int(plain == text and text.encode("utf-8") == raw)
                    f.write("%s\t%d\t%s\t%s\t%s\t%s\t%d\n" % (cname, add_special, hx(raw), ",".join(map(str, ids)) or "-",
                                                             hx(skip.encode("utf-8")), hx(keep.encode("utf-8")), roundtrip))
        whole = tok.encode(austen, add_special_tokens=False).ids
        with open(os.path.join(out, name + "_austen_whole.ids"), "w") as f:
            f.write(" ".join(map(str, whole)) + "\n")
        with open(os.path.join(out, name + "_austen.txt"), "w") as f:
            f.write("roundtrip %d\n" % int(tok.decode(whole, skip_special_tokens=False) == austen))
        lines = austen.split("\n")
        with open(os.path.join(out, name + "_austen_lines.ids"), "w") as f:
            for enc in tok.encode_batch(lines, add_special_tokens=False):
                f.write(" ".join(map(str, enc.ids)) + "\n")
        if name == "llama3":
            dec = byte_decoder()
            with open(os.path.join(out, "llama3_pretok.tsv"), "w") as f:
                for cname, raw, text in cases:
                    if text.encode("utf-8") != raw:
                        continue
                    pieces = [len(bytes(dec[c] for c in p)) for p, _ in tok.pre_tokenizer.pre_tokenize_str(text)]
                    assert sum(pieces) == len(raw), cname
                    f.write("%s\t%s\t%s\n" % (cname, hx(raw), ",".join(map(str, pieces)) or "-"))
            chats = [("You are a helpful assistant.", "What is the capital of France?"),
                     (None, "Hello!"),
                     ("  Be brief.\n", "\n  Tell me about Emma Woodhouse, handsome, clever, and rich.  \t\n"),
                     ("", "x"),
                     ("Système: réponds en français \U0001F600", "Qu'est-ce que c'est ?\n\nDeux lignes.")]
            with open(os.path.join(out, "llama3_chat.tsv"), "w") as f:
                for system, user in chats:
                    text = "<|begin_of_text|>"
                    if system is not None:
                        text += "<|start_header_id|>system<|end_header_id|>\n\n" + system.strip() + "<|eot_id|>"
                    text += "<|start_header_id|>user<|end_header_id|>\n\n" + user.strip() + "<|eot_id|>"
                    text += "<|start_header_id|>assistant<|end_header_id|>\n\n"
                    ids = tok.encode(text, add_special_tokens=False).ids
                    f.write("%s\t%s\t%s\n" % ("-" if system is None else hx(system.encode("utf-8")) if system else "",
                                              hx(user.encode("utf-8")), ",".join(map(str, ids))))
        print("%s: %d cases, austen %d ids whole, %d lines" % (name, 2 * len(cases), len(whole), len(lines)))


if __name__ == "__main__":
    main()
