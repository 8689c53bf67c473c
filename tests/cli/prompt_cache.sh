#!/usr/bin/env bash
# `sluice run --prompt-cache FILE` and `--batch N` (docs/api.md):
#   * a cold run writes FILE; a second run of the same prompt reuses every
#     prompt token and prints the same greedy text;
#   * a longer prompt sharing a prefix reuses that prefix, and its text
#     equals a run without the cache; --batch 4 changes nothing;
#   * a corrupt cache is ignored with a warning (another model's cache:
#     tests/test_context_api.c).
set -u
S=${SLUICE:-build/sluice}
B=${BUILD:-build}
M=${SLUICE_MODEL:-$B/default.sluice}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
pass=0; fail=0
ok() { pass=$((pass+1)); }
bad() { echo "  FAIL prompt_cache: $*" >&2; fail=$((fail+1)); }
P1="Hello there, how are you"
P2="Hello there, how are you today my friend"
C="$T/p.state"
run() { $S run -m "$M" --temp 0 -n 8 "$@" >"$T/out" 2>"$T/err" || bad "run $*: $(cat "$T/err")"; }

run -p "$P1"; cp "$T/out" "$T/ref1"
run -p "$P2"; cp "$T/out" "$T/ref2"
run -p "$P1" --prompt-cache "$C"
[ -s "$C" ] && ok || bad "no cache file written"
cmp -s "$T/out" "$T/ref1" && ok || bad "cold run with cache differs"
run -p "$P1" --prompt-cache "$C"
grep -q "reusing 8 of 8 prompt tokens" "$T/err" && ok || bad "warm run: $(cat "$T/err")"
cmp -s "$T/out" "$T/ref1" && ok || bad "warm run text differs"
run -p "$P2" --prompt-cache "$C" --batch 4
grep -q "reusing 8 of 13 prompt tokens" "$T/err" && ok || bad "prefix run: $(cat "$T/err")"
cmp -s "$T/out" "$T/ref2" && ok || bad "prefix run text differs"
run -p "$P2" --batch 1
cmp -s "$T/out" "$T/ref2" && ok || bad "--batch 1 text differs"
printf 'garbage' > "$T/bad.state"
run -p "$P1" --prompt-cache "$T/bad.state"
grep -q "ignoring the prompt cache.*bad magic" "$T/err" && ok || bad "corrupt cache: $(cat "$T/err")"
cmp -s "$T/out" "$T/ref1" && ok || bad "text after ignored cache differs"
$S run -m "$M" -p "$P1" --batch 0 >/dev/null 2>"$T/err"; [ $? -eq 2 ] && ok || bad "--batch 0 accepted"

echo "prompt_cache.sh: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
