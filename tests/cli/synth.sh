#!/usr/bin/env bash
# `sluice synth` contract: exit codes (0 ok, 2 usage, 1 error), one
# "sluice synth: ..." line for errors, the summary line on stderr, nothing on
# stdout, byte-identical output for identical arguments.
set -u
S=${SLUICE:-build/sluice}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
pass=0; fail=0
ok() { pass=$((pass+1)); }
bad() { echo "  FAIL synth.sh: $*" >&2; fail=$((fail+1)); }

# expect CODE PATTERN -- cmd...: exit code and a stderr line matching PATTERN
expect() {
  local code=$1 pat=$2; shift 3
  "$@" >"$T/out" 2>"$T/err"; local rc=$?
  if [ "$rc" -ne "$code" ]; then bad "$* -> exit $rc, want $code; stderr: $(head -c 300 "$T/err")"; return; fi
  if [ -n "$pat" ] && ! grep -Eq -- "$pat" "$T/err"; then bad "$* -> stderr lacks /$pat/: $(head -c 300 "$T/err")"; return; fi
  if [ -s "$T/out" ]; then bad "$* -> wrote to stdout"; return; fi
  ok
}

# usage errors: exit 2, usage shown
expect 2 "preset is required" -- $S synth
expect 2 "unknown preset 'nope'" -- $S synth --preset nope
expect 2 "unknown argument '--bogus'" -- $S synth --preset tiny --bogus
expect 2 "needs a value" -- $S synth --preset tiny -o
expect 2 "--layers must be" -- $S synth --preset tiny --layers 0
expect 2 "--layers must be" -- $S synth --preset tiny --layers x
expect 2 "--experts must be" -- $S synth --preset tiny --experts q3
expect 2 "--dense must be" -- $S synth --preset tiny --dense q4
expect 2 "--skew must be" -- $S synth --preset tiny --skew 0.95
expect 2 "--skew must be" -- $S synth --preset tiny --skew abc
expect 2 "--seed must be" -- $S synth --preset tiny --seed -1
expect 2 "usage: sluice synth" -- $S synth --preset tiny --bogus

# other errors: exit 1, one line
expect 1 "^sluice synth: .*nonexistent" -- $S synth --preset tiny -o /nonexistent/x.sluice
expect 1 "^sluice synth: tokenizer: .*missing.json" -- $S synth --preset tiny --tokenizer "$T/missing.json" -o "$T/x.sluice"
expect 1 "^sluice synth: .*--tokenizer" -- $S synth --preset demo -o "$T/x.sluice"
if [ -f tests/fixtures/tokenizer/gpt2style/tokenizer.json ]; then
  expect 1 "more than the model's n_vocab 256" -- $S synth --preset tiny --tokenizer tests/fixtures/tokenizer/gpt2style/tokenizer.json -o "$T/x.sluice"
  expect 0 "demo -> .*4 layers" -- $S synth --preset demo --quiet --tokenizer tests/fixtures/tokenizer/gpt2style/tokenizer.json -o "$T/demo.sluice"
fi
[ -e "$T/x.sluice" ] && bad "a failed synth left $T/x.sluice"

# success: summary line; deterministic; flags change the bytes
expect 0 "tiny -> .*2 layers.*experts q4, dense bf16" -- $S synth --preset tiny -o "$T/a.sluice"
expect 0 "" -- $S synth --preset tiny --quiet -o "$T/b.sluice"
cmp -s "$T/a.sluice" "$T/b.sluice" && ok || bad "same arguments, different bytes"
expect 0 "3 layers.*experts q8, dense f32.*seed 7" -- $S synth --preset tiny --layers 3 --experts q8 --dense f32 --seed 7 --skew 0.2 --quiet -o "$T/c.sluice"
cmp -s "$T/a.sluice" "$T/c.sluice" && bad "different arguments, same bytes" || ok

# hybrid (qwen3_5_moe) preset: written, opened and evaluated by the engine
expect 0 "tiny-hybrid -> .*qwen3_5_moe_text, 6 layers" -- $S synth --preset tiny-hybrid --layers 6 --quiet -o "$T/h.sluice"
$S logits -m "$T/h.sluice" --tokens 1,2,3 -o "$T/h.f32" >/dev/null 2>"$T/err" && [ "$(stat -c %s "$T/h.f32")" -eq $((3 * 256 * 4)) ] && ok || bad "logits on tiny-hybrid: $(head -c 300 "$T/err")"

echo "tests/cli/synth.sh: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
