#!/usr/bin/env bash
# CLI contract tests: exit codes (0 ok, 2 usage, 1 error), stdout carries only
# data, errors are one clear line on stderr. Uses the default model built by
# `make` and a tiny synthetic model.
set -u
S=${SLUICE:-build/sluice}
B=${BUILD:-build}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
pass=0; fail=0
ok() { pass=$((pass+1)); }
bad() { echo "  FAIL test_cli: $*" >&2; fail=$((fail+1)); }

# expect CODE PATTERN -- cmd...: runs cmd, checks exit code and that stderr matches PATTERN
expect() {
  local code=$1 pat=$2; shift 3
  "$@" >"$T/out" 2>"$T/err"; local rc=$?
  if [ "$rc" -ne "$code" ]; then bad "$* -> exit $rc, want $code; stderr: $(head -c 300 "$T/err")"; return; fi
  if [ -n "$pat" ] && ! grep -Eq -- "$pat" "$T/err"; then bad "$* -> stderr lacks /$pat/: $(head -c 300 "$T/err")"; return; fi
  ok
}

M="$B/default.sluice"
$S synth --preset tiny -o "$T/tiny.sluice" --quiet 2>/dev/null || bad "synth tiny failed"

# usage errors: exit 2
expect 2 "missing command" -- $S
expect 2 "unknown command" -- $S frobnicate
expect 2 "unknown option" -- $S run -p hi --bogus
expect 2 "needs a value" -- $S run -p
expect 2 "missing -p" -- $S run -m "$M"
expect 2 "not an integer" -- $S run -m "$M" -p hi -n abc
expect 2 "missing -o" -- $S logits -m "$M" --tokens 1,2
expect 2 "comma-separated" -- $S logits -m "$M" --tokens 1,x -o "$T/l.f32"
expect 2 "exactly one" -- $S tokenize --text-file /dev/null
expect 2 "unknown format" -- $S convert x -o y --experts q3

# other errors: exit 1, one line naming the problem
expect 1 "No such file" -- $S run -m "$T/missing.sluice" -p hi
expect 1 "out of range" -- $S logits -m "$T/tiny.sluice" --tokens 1,999999 -o "$T/l.f32"
expect 1 "empty" -- $S run -m "$M" -p ""
expect 1 "config.json" -- $S convert "$T" -o "$T/x.sluice"
expect 1 "CUDA" -- $S run -m "$M" -p hi --device cuda
head -c 1000 "$T/tiny.sluice" > "$T/trunc.sluice"
expect 1 "truncated" -- $S inspect "$T/trunc.sluice"
printf 'NOTASLUICEFILE%.0s' $(seq 10) > "$T/junk.sluice"
expect 1 "magic" -- $S run -m "$T/junk.sluice" -p hi

# logits: n_tokens x n_vocab float32 rows; --generate prints JSON on stdout
nv=$($S inspect "$T/tiny.sluice" | sed -n 's/.*"vocab_size":[[:space:]]*\([0-9]*\).*/\1/p' | head -1)
if $S logits -m "$T/tiny.sluice" --tokens 1,2,3 -o "$T/l.f32" --generate 4 >"$T/gen.json" 2>"$T/err"; then
  sz=$(stat -c %s "$T/l.f32")
  [ -n "$nv" ] && [ "$sz" -eq $((3 * nv * 4)) ] && ok || bad "logits file has $sz bytes, want 3*$nv*4"
  grep -Eq '^\{"generated":\[[0-9]+(,[0-9]+){3}\]\}$' "$T/gen.json" && ok || bad "generate output: $(cat "$T/gen.json")"
  # row 2 of a 3-token run equals the last row of a run on the same tokens
  $S logits -m "$T/tiny.sluice" --tokens 1,2,3 -o "$T/l2.f32" >/dev/null 2>&1
  cmp -s "$T/l.f32" "$T/l2.f32" && ok || bad "logits not deterministic"
else
  bad "logits failed: $(cat "$T/err")"
fi

# run: text on stdout, stats on stderr
if $S run -p "Hello world" -n 8 --seed 7 >"$T/run.out" 2>"$T/run.err"; then
  grep -q "tok/s" "$T/run.err" && ok || bad "run stats missing on stderr"
  grep -q "tok/s" "$T/run.out" && bad "stats leaked to stdout" || ok
  $S run -p "Hello world" -n 8 --seed 7 >"$T/run2.out" 2>/dev/null
  cmp -s "$T/run.out" "$T/run2.out" && ok || bad "same seed gave different text"
else
  bad "run on the default model failed: $(cat "$T/run.err")"
fi

# tokenize: JSON array of ids
printf 'Hello world' > "$T/text.txt"
# the default model embeds the tokenizer of models/demo (Makefile)
out=$($S tokenize --tokenizer models/demo/tokenizer.json --text-file "$T/text.txt" 2>&1)
echo "$out" | grep -Eq '^\[[0-9]+(,[0-9]+)*\]$' && ok || bad "tokenize output: $out"
out2=$($S tokenize -m "$M" --text-file "$T/text.txt" 2>&1)
[ "$out" = "$out2" ] && ok || bad "tokenize via model ($out2) differs from tokenizer file ($out)"

echo "tests/cli/test_cli.sh: $pass passed, $fail failed"
[ $fail -eq 0 ]
