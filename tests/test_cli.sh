#!/usr/bin/env bash
# test_cli.sh - the command-line programs as a user runs them, against the fixtures' HF references.
# Run from the repository root after ./build.sh; prints "cli: N passed, N failed".
set -u
passed=0; failed=0
ok() { passed=$((passed + 1)); }
bad() { failed=$((failed + 1)); echo "FAIL cli: $*"; }
check() { local what=$1; shift; if "$@" >/dev/null 2>&1; then ok; else bad "$what"; fi; }
py=.venv/bin/python
tmp=build/tmp/cli; rm -rf "$tmp"; mkdir -p "$tmp"

for p in generate inspect convert tokenize; do
    [ -x build/$p ] || continue
    check "$p --help exits 0" build/$p --help
    build/$p --help | grep -q usage && ok || bad "$p --help prints usage"
    build/$p --no-such-option >/dev/null 2>&1 && bad "$p rejects an unknown option" || ok
done

for f in gqa_tied_llama3 mha_untied_bf16 headdim_f16; do
    dir=tests/fixtures/$f
    ids=$($py -c "import json;print(' '.join(map(str,json.load(open('$dir/reference.json'))['prompt_ids'])))")
    want=$($py -c "import json;print(' '.join(map(str,json.load(open('$dir/reference.json'))['greedy_ids'])))")
    for dec in te vanilla; do
        got=$(build/generate -m $dir --prompt-ids "$ids" -n 24 --temp 0 --ignore-eos --print-ids --decoder $dec --quiet \
              --logits-out $tmp/$f.f32 2>$tmp/err) || { bad "$f $dec: generate failed: $(cat $tmp/err)"; continue; }
        [ "$(echo $got)" = "$want" ] && ok || bad "$f $dec: greedy ids '$got' != HF '$want'"
        $py - "$tmp/$f.f32" "$dir/ref_logits.f32" <<'PY' && ok || bad "$f $dec: --logits-out differs from HF"
import sys, numpy as np
a = np.fromfile(sys.argv[1], "<f4"); b = np.fromfile(sys.argv[2], "<f4")
sys.exit(0 if a.shape == b.shape and np.abs(a - b).max() / np.abs(b).max() < 1e-4 else 1)
PY
    done
done
# --num-layers 2 on the 3-layer checkpoint equals HF loading it with 2 layers
dir=tests/fixtures/gqa_tied_llama3
ids=$($py -c "import json;print(' '.join(map(str,json.load(open('$dir/reference.json'))['prompt_ids'])))")
build/generate -m $dir --prompt-ids "$ids" -n 0 --num-layers 2 --logits-out $tmp/two.f32 --quiet 2>/dev/null || bad "--num-layers 2 run"
$py -c "
import sys, numpy as np
a = np.fromfile('$tmp/two.f32', '<f4'); b = np.fromfile('$dir/ref_logits_2layers.f32', '<f4')
sys.exit(0 if a.shape == b.shape and np.abs(a - b).max() / np.abs(b).max() < 1e-4 else 1)" && ok || bad "--num-layers 2 logits"
# sampling with a seed repeats
a=$(build/generate -m $dir --prompt-ids "1 5 9" -n 16 --seed 7 --print-ids --quiet 2>/dev/null)
b=$(build/generate -m $dir --prompt-ids "1 5 9" -n 16 --seed 7 --print-ids --quiet 2>/dev/null)
[ -n "$a" ] && [ "$a" = "$b" ] && ok || bad "--seed repeats ('$a' vs '$b')"
# errors are messages, not crashes
build/generate -m $tmp/none --prompt-ids "1" 2>$tmp/err >/dev/null; [ $? -eq 1 ] && grep -q "config.json" $tmp/err && ok || bad "missing model: $(cat $tmp/err)"
build/generate -m $dir --prompt-ids "1 999999" -n 1 2>$tmp/err >/dev/null; [ $? -eq 1 ] && grep -q "outside the vocabulary" $tmp/err && ok || bad "bad id: $(cat $tmp/err)"
# FP8 with layers kept in BF16: the CPU emulation runs; bad counts are refused with the reason
build/generate -m $dir --prompt-ids "1 5 9" -n 4 --temp 0 --dtype fp8 --fp8-bf16-layers 1,1 --backend cpu --quiet \
    >/dev/null 2>$tmp/err && ok || bad "--fp8-bf16-layers 1,1: $(cat $tmp/err)"
build/generate -m $dir --prompt-ids "1" --fp8-bf16-layers 1,1 2>$tmp/err >/dev/null; [ $? -eq 2 ] && grep -q "needs --dtype fp8" $tmp/err && ok || bad "--fp8-bf16-layers without fp8: $(cat $tmp/err)"
build/generate -m $dir --prompt-ids "1" --dtype fp8 --fp8-bf16-layers 2,2 --backend cpu 2>$tmp/err >/dev/null; [ $? -eq 1 ] && grep -q "bf16_layers_start 2 + bf16_layers_end 2" $tmp/err && ok || bad "--fp8-bf16-layers 2,2 on 3 layers: $(cat $tmp/err)"
build/generate -m $dir --prompt-ids "1" --dtype fp8 --fp8-bf16-layers 1 2>$tmp/err >/dev/null; [ $? -eq 2 ] && ok || bad "--fp8-bf16-layers 1: $(cat $tmp/err)"
# convert: change dtype and sharding, then read back by the official safetensors package
check "convert to f32 in shards" build/convert tests/fixtures/headdim_f16 $tmp/conv --dtype f32 --max-shard-size 50KB --quiet
[ -f $tmp/conv/model.safetensors.index.json ] && ok || bad "convert wrote shards"
check "convert back" build/convert $tmp/conv $tmp/conv2 --dtype f16 --quiet
check "f16 -> f32 -> f16 is the identity" $py tests/check_saved.py $tmp/conv2 tests/fixtures/headdim_f16
check "inspect" build/inspect tests/fixtures/gqa_tied_llama3
build/inspect tests/fixtures/gqa_tied_llama3 | grep -q "layernorm_mlp.fc1_weight" && ok || bad "inspect names TE parameters"
# the default model, from text: the prompt comes back followed by a continuation
out=$(build/generate -p "It is a truth universally acknowledged" -n 24 --seed 3 --quiet 2>$tmp/err)
case "$out" in "It is a truth universally acknowledged"?*) ok ;; *) bad "default model text: '$out' $(cat $tmp/err)" ;; esac
a=$(echo "It is a truth" | build/tokenize -t models/austen)
b=$(echo "$a" | build/tokenize -t models/austen --decode)
[ "$b" = "It is a truth" ] && ok || bad "tokenize round trip: '$a' -> '$b'"
echo "cli: $passed passed, $failed failed"
[ $failed -eq 0 ]
