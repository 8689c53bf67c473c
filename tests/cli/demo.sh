#!/usr/bin/env bash
# The trained demo model (models/demo, docs/quality.md) against the numbers
# transformers computed from the same bf16 weights (tests/fixtures/demo,
# written by tools/train_demo.py):
#   * greedy text of each fixture prompt, byte for byte (`sluice run --temp 0`,
#     64 tokens or up to end-of-text) from a bf16 conversion;
#   * perplexity of the first 2048 held-out tokens (windows of 256) within
#     0.1% of transformers' (bf16), within 2% (q8: the default model);
#   * `sluice perplexity` usage and input errors.
set -u
S=${SLUICE:-build/sluice}
B=${BUILD:-build}
F=tests/fixtures/demo
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
pass=0; fail=0
ok() { pass=$((pass+1)); }
bad() { echo "  FAIL demo: $*" >&2; fail=$((fail+1)); }
expect() {
  local code=$1 pat=$2; shift 3
  "$@" >"$T/out" 2>"$T/err"; local rc=$?
  if [ "$rc" -ne "$code" ]; then bad "$* -> exit $rc, want $code; stderr: $(head -c 300 "$T/err")"; return; fi
  if [ -n "$pat" ] && ! grep -Eq -- "$pat" "$T/err"; then bad "$* -> stderr lacks /$pat/: $(head -c 300 "$T/err")"; return; fi
  ok
}
# within A B REL: |A - B| <= REL * B
within() { awk -v a="$1" -v b="$2" -v r="$3" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= r * b) }'; }
json_num() { sed -n "s/.*\"$1\":\([0-9.eE+-]*\).*/\1/p" "$2" | head -1; }
# reference.json: "ppl_first_2048": {..., "ppl": X}
ref_ppl=$(tr -d '\n ' < $F/reference.json | sed -n 's/.*"ppl_first_2048":{[^}]*"ppl":\([0-9.eE+-]*\)}.*/\1/p')
[ -n "$ref_ppl" ] && ok || bad "no ppl_first_2048 in $F/reference.json"

if ! $S convert models/demo -o "$T/demo.bf16.sluice" --quiet 2>"$T/err"; then
  bad "convert models/demo: $(cat "$T/err")"
else
  for p in $F/greedy*.prompt; do
    want=${p%.prompt}.out
    $S run -m "$T/demo.bf16.sluice" -p "$(cat "$p")" -n 64 --temp 0 >"$T/got" 2>"$T/err" \
      || bad "run $(cat "$p"): $(cat "$T/err")"
    cmp -s "$T/got" "$want" && ok || bad "greedy text for '$(cat "$p")' differs from transformers:
    got:  $(head -c 300 "$T/got")
    want: $(head -c 300 "$want")"
  done
  if $S perplexity -m "$T/demo.bf16.sluice" --text-file $F/heldout.txt --max-tokens 2048 --json >"$T/p.json" 2>"$T/err"; then
    got=$(json_num ppl "$T/p.json")
    [ "$(json_num scored "$T/p.json")" = 2040 ] && ok || bad "scored: $(cat "$T/p.json")"
    within "$got" "$ref_ppl" 0.001 && ok || bad "bf16 perplexity $got, transformers $ref_ppl"
  else
    bad "perplexity bf16: $(cat "$T/err")"
  fi
fi

M="$B/default.sluice"
if $S perplexity -m "$M" --text-file $F/heldout.txt --max-tokens 2048 --json >"$T/q.json" 2>"$T/err"; then
  got=$(json_num ppl "$T/q.json")
  within "$got" "$ref_ppl" 0.02 && ok || bad "default (q8) perplexity $got, transformers bf16 $ref_ppl"
else
  bad "perplexity default: $(cat "$T/err")"
fi
# KL of a model against itself: 0, full agreement
if $S perplexity -m "$M" --kl-ref "$M" --text-file $F/greedy1.prompt --json >"$T/k.json" 2>"$T/err"; then
  grep -q '"kl_mean":0,' "$T/k.json" && grep -q '"top1_agree":1.000000' "$T/k.json" && ok \
    || bad "self KL: $(cat "$T/k.json")"
else
  bad "perplexity --kl-ref: $(cat "$T/err")"
fi

# usage (2) and input (1) errors
printf 'In' > "$T/one.txt"
$S synth --preset tiny -o "$T/tiny.sluice" --quiet 2>/dev/null || bad "synth tiny"
expect 2 "missing -m" -- $S perplexity --text-file $F/heldout.txt
expect 2 "missing --text-file" -- $S perplexity -m "$M"
expect 2 "not an integer" -- $S perplexity -m "$M" --text-file $F/heldout.txt --window 1
expect 2 "needs a value" -- $S perplexity -m "$M" --text-file
expect 2 "unknown option" -- $S perplexity -m "$M" --bogus
expect 1 "No such file" -- $S perplexity -m "$M" --text-file "$T/missing.txt"
expect 1 "need at least 2" -- $S perplexity -m "$M" --text-file "$T/one.txt"
expect 1 "must agree" -- $S perplexity -m "$M" --kl-ref "$T/tiny.sluice" --text-file $F/greedy1.prompt
expect 1 "has no tokenizer" -- $S perplexity -m "$T/tiny.sluice" --text-file $F/greedy1.prompt

echo "tests/cli/demo.sh: $pass passed, $fail failed"
[ $fail -eq 0 ]
