#!/usr/bin/env bash
# `sluice export-hf` contracts: usage and error exit codes and messages
# (non-empty or non-directory output, missing parent, unsupported model,
# disk full with the partial files removed), the safetensors structure
# (header offsets contiguous, file sizes, index covering every tensor,
# config.json), and the weights:
#   - f32 export of a q4 and of a q8 model, converted back with the same
#     expert dtype: logits bit-identical (the dequantization is exact and
#     the quantizer reproduces it);
#   - bf16 export converted back at bf16: logits cosine >= 0.9999 (bf16
#     rounding of dequantized experts is the only loss);
#   - fused experts in several small shards: same logits as per expert;
#   - with a python that has transformers (HF_PYTHON, default /tmp/tv/bin/python;
#     skipped with a note when absent): bench/peers/check_hf.py.
set -u
S=${SLUICE:-build/sluice}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
pass=0; fail=0
ok() { pass=$((pass+1)); }
bad() { echo "  FAIL export_hf.sh: $*" >&2; fail=$((fail+1)); }
TOK=tests/fixtures/tokenizer/gpt2style/tokenizer.json
TOKENS=1,5,77,300,1024,2000,3,9,15,600,700,42

# expect CODE PATTERN -- cmd...: exit code and a stderr line matching PATTERN
expect() {
  local code=$1 pat=$2; shift 3
  "$@" >"$T/out" 2>"$T/err"; local rc=$?
  if [ "$rc" -ne "$code" ]; then bad "$* -> exit $rc, want $code; stderr: $(head -c 300 "$T/err")"; return; fi
  if [ -n "$pat" ] && ! grep -Eq -- "$pat" "$T/err"; then bad "$* -> stderr lacks /$pat/: $(head -c 300 "$T/err")"; return; fi
  [ -s "$T/out" ] && { bad "$* wrote to stdout"; return; }
  ok
}

$S synth --preset tiny --quiet -o "$T/tiny.sluice" 2>/dev/null || bad "synth tiny"
$S synth --preset demo --layers 2 --quiet --tokenizer $TOK -o "$T/q4.sluice" 2>/dev/null || bad "synth demo q4"
$S synth --preset demo --layers 2 --experts q8 --quiet --tokenizer $TOK -o "$T/q8.sluice" 2>/dev/null || bad "synth demo q8"
$S synth --preset tiny-hybrid --quiet -o "$T/hybrid.sluice" 2>/dev/null || bad "synth tiny-hybrid"

# usage errors (exit 2)
expect 2 "missing -m MODEL.sluice" -- $S export-hf
expect 2 "missing -o DIR" -- $S export-hf -m "$T/q4.sluice"
expect 2 "unknown option --bogus" -- $S export-hf -m "$T/q4.sluice" -o "$T/x" --bogus
expect 2 "unexpected argument stray" -- $S export-hf -m "$T/q4.sluice" -o "$T/x" stray
expect 2 "missing value for --dtype" -- $S export-hf -m "$T/q4.sluice" -o "$T/x" --dtype
expect 2 "--dtype must be bf16 or f32, got f16" -- $S export-hf -m "$T/q4.sluice" -o "$T/x" --dtype f16
expect 2 "--shard-size must be a size like 4G or 512M, got lots" -- $S export-hf -m "$T/q4.sluice" -o "$T/x" --shard-size lots
expect 2 "--shard-size must be" -- $S export-hf -m "$T/q4.sluice" -o "$T/x" --shard-size 0
[ -e "$T/x" ] && bad "a usage error created the output" || ok

# other errors (exit 1, one line), nothing left behind
expect 1 "^sluice export-hf: open .*missing.sluice" -- $S export-hf -m "$T/missing.sluice" -o "$T/x"
expect 1 "^sluice export-hf: .*model_type qwen3_5_moe_text: only qwen3_moe is exported" -- \
  $S export-hf -m "$T/hybrid.sluice" -o "$T/x"
[ -e "$T/x" ] && bad "a failed export created the output directory" || ok
mkdir "$T/full"; echo keep > "$T/full/keep.txt"
expect 1 "output directory .*full exists and is not empty" -- $S export-hf -m "$T/q4.sluice" -o "$T/full"
[ "$(ls "$T/full")" = keep.txt ] && [ "$(cat "$T/full/keep.txt")" = keep ] && ok || bad "non-empty dir was touched"
echo x > "$T/afile"
expect 1 "afile exists and is not a directory" -- $S export-hf -m "$T/q4.sluice" -o "$T/afile"
expect 1 "create directory .*nodir/sub: No such file" -- $S export-hf -m "$T/q4.sluice" -o "$T/nodir/sub"
# disk full: a file size limit makes write() fail (EFBIG) like a full disk
expect 1 "^sluice export-hf: write .*model-00001-of-00001.safetensors: File too large" -- \
  bash -c "ulimit -f 64; trap '' XFSZ; exec $S export-hf -m $T/q4.sluice -o $T/dfull"
[ -e "$T/dfull" ] && bad "disk-full export left $(ls "$T/dfull")" || ok
mkdir "$T/empty"
expect 1 "File too large" -- bash -c "ulimit -f 64; trap '' XFSZ; exec $S export-hf -m $T/q4.sluice -o $T/empty"
[ -d "$T/empty" ] && [ -z "$(ls -A "$T/empty")" ] && ok || bad "disk-full export into an empty dir left files"

# success: an existing empty directory is accepted; tiny has no tokenizer
mkdir "$T/tiny_hf"
expect 0 "tiny.sluice -> .*tiny_hf: 45 tensors \(bf16, experts per expert\) in 1 shard, .*tokenizer none embedded" -- \
  $S export-hf -m "$T/tiny.sluice" -o "$T/tiny_hf"
[ -e "$T/tiny_hf/tokenizer.json" ] && bad "tokenizer.json without an embedded tokenizer" || ok
expect 0 "" -- $S export-hf -m "$T/q4.sluice" -o "$T/q4_fused" --fused-experts --shard-size 1M --quiet
[ -s "$T/err" ] && bad "--quiet printed: $(cat "$T/err")" || ok
expect 0 "q4_bf16: 117 tensors \(bf16, experts per expert\) in 1 shard, 0.009 GB, tokenizer yes" -- $S export-hf -m "$T/q4.sluice" -o "$T/q4_bf16"
expect 0 "" -- $S export-hf -m "$T/q4.sluice" -o "$T/q4_f32" --dtype f32 --quiet
expect 0 "" -- $S export-hf -m "$T/q8.sluice" -o "$T/q8_bf16" --quiet
expect 0 "" -- $S export-hf -m "$T/q8.sluice" -o "$T/q8_f32" --dtype f32 --quiet

# structure: every shard's header, sizes, the index, config.json, tokenizer files
python3 - "$T" <<'PY' && ok || bad "safetensors / index / config structure"
import json, os, struct, sys
T = sys.argv[1]
def check(d, want_dtype, fused, tok):
    idx = json.load(open(os.path.join(d, "model.safetensors.index.json")))
    shards = sorted(f for f in os.listdir(d) if f.endswith(".safetensors"))
    n = len(shards)
    assert shards == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)], shards
    seen, total = {}, 0
    for s in shards:
        b = open(os.path.join(d, s), "rb").read()
        hl = struct.unpack("<Q", b[:8])[0]
        assert (8 + hl) % 8 == 0
        h = json.loads(b[8:8 + hl])
        assert h.pop("__metadata__") == {"format": "pt"}
        end = 0
        for name, t in sorted(h.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            lo, hi = t["data_offsets"]
            assert lo == end, (s, name, lo, end)
            el = {"BF16": 2, "F32": 4}[t["dtype"]]
            cnt = 1
            for x in t["shape"]:
                cnt *= x
            assert hi - lo == cnt * el, (name, t)
            if len(t["shape"]) == 1:
                assert t["dtype"] == "F32", name            # norms stay exact
            elif ".mlp.experts." in name:
                assert t["dtype"] == want_dtype, (name, t["dtype"])
            end = hi
            seen[name] = s
        assert len(b) == 8 + hl + end, s
        total += end
    assert seen == idx["weight_map"], "index differs from the shard headers"
    assert idx["metadata"]["total_size"] == total
    ex = [k for k in seen if ".mlp.experts." in k]
    if fused:
        assert all(k.endswith(("experts.gate_up_proj", "experts.down_proj")) for k in ex), ex[:3]
    else:
        assert "model.layers.0.mlp.experts.0.gate_proj.weight" in seen
    c = json.load(open(os.path.join(d, "config.json")))
    assert c["model_type"] == "qwen3_moe" and c["architectures"] == ["Qwen3MoeForCausalLM"]
    assert "sluice" not in c and "synth" not in c
    assert c["torch_dtype"] == ("float32" if want_dtype == "F32" else "bfloat16")
    assert os.path.exists(os.path.join(d, "generation_config.json"))
    assert os.path.exists(os.path.join(d, "tokenizer.json")) == tok
    if tok:
        tc = json.load(open(os.path.join(d, "tokenizer_config.json")))
        assert tc["eos_token"] == "<|endoftext|>" and "<|im_start|>" in tc["chat_template"]
        assert c["eos_token_id"] == 0
    return n
assert check(f"{T}/tiny_hf", "BF16", False, False) == 1
assert check(f"{T}/q4_fused", "BF16", True, True) > 2
check(f"{T}/q4_bf16", "BF16", False, True)
check(f"{T}/q4_f32", "F32", False, True)
check(f"{T}/q8_f32", "F32", False, True)
PY

# weights: round trips through `sluice convert`
conv() { $S convert "$1" -o "$2" --experts "$3" --quiet 2>"$T/cerr" || bad "convert $1: $(cat "$T/cerr")"; }
logits() { $S logits -m "$1" --tokens $TOKENS -o "$2" 2>/dev/null || bad "logits $1"; }
for q in q4 q8; do
  logits "$T/$q.sluice" "$T/$q.orig.f32"
  conv "$T/${q}_f32" "$T/$q.rtq.sluice" $q
  logits "$T/$q.rtq.sluice" "$T/$q.rtq.f32"
  cmp -s "$T/$q.orig.f32" "$T/$q.rtq.f32" && ok || bad "$q: f32 export -> convert $q: logits not bit-identical"
done
conv "$T/q4_bf16" "$T/q4.rtb.sluice" bf16
conv "$T/q8_bf16" "$T/q8.rtb.sluice" bf16
conv "$T/q4_fused" "$T/q4.rtfused.sluice" bf16
for m in q4.rtb q8.rtb q4.rtfused; do logits "$T/$m.sluice" "$T/$m.f32"; done
cmp -s "$T/q4.rtb.f32" "$T/q4.rtfused.f32" && ok || bad "fused/sharded export: logits differ from per-expert"
python3 - "$T" <<'PY' && ok || bad "bf16 round trip cosine"
import array, math, sys
T = sys.argv[1]
def rows(p):
    a = array.array("f"); a.frombytes(open(p, "rb").read())
    n = len(a) // 12
    return [a[i * n:(i + 1) * n] for i in range(12)]
for q in ("q4", "q8"):
    cos = []
    for x, y in zip(rows(f"{T}/{q}.orig.f32"), rows(f"{T}/{q}.rtb.f32")):
        cos.append(sum(a * b for a, b in zip(x, y)) /
                   math.sqrt(sum(a * a for a in x) * sum(b * b for b in y)))
    print(f"export_hf.sh: {q} experts, bf16 export round trip: min cosine {min(cos):.7f}",
          file=sys.stderr)
    assert min(cos) >= 0.9999, (q, min(cos))
PY

# transformers itself, where a python with it exists
HF_PYTHON=${HF_PYTHON:-/tmp/tv/bin/python}
if "$HF_PYTHON" -c "import transformers, torch" 2>/dev/null; then
  for d in q4_bf16 q4_fused; do
    r=$("$HF_PYTHON" bench/peers/check_hf.py --sluice "$S" --model "$T/q4.sluice" --hf "$T/$d" \
        --min-cosine 0.9999 2>"$T/herr") && ok || bad "check_hf.py $d: $(tail -3 "$T/herr")"
    echo "export_hf.sh: transformers on $d: $r" >&2
  done
else
  echo "export_hf.sh: no python with transformers at $HF_PYTHON: transformers check skipped" >&2
fi

echo "tests/cli/export_hf.sh: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
