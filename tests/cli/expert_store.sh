#!/usr/bin/env bash
# CLI tests of the expert-store flags (docs/streaming.md): bad values are
# usage errors (exit 2), a budget below one record is an error (exit 1),
# logits are byte-identical across cache sizes, policies, prefetch and I/O
# modes, and --timing prints the cache statistics.
set -u
S=${SLUICE:-build/sluice}
B=${BUILD:-build}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
pass=0; fail=0
ok() { pass=$((pass+1)); }
bad() { echo "  FAIL expert_store.sh: $*" >&2; fail=$((fail+1)); }
expect() {
  local code=$1 pat=$2; shift 3
  "$@" >"$T/out" 2>"$T/err"; local rc=$?
  if [ "$rc" -ne "$code" ]; then bad "$* -> exit $rc, want $code; stderr: $(head -c 300 "$T/err")"; return; fi
  if [ -n "$pat" ] && ! grep -Eq -- "$pat" "$T/err"; then bad "$* -> stderr lacks /$pat/: $(head -c 300 "$T/err")"; return; fi
  ok
}
M="$B/default.sluice"
TOK=1,2,3,4,5,6,7,8,9,10,11,12

expect 2 "not a size" -- $S logits -m "$M" --tokens 1 -o "$T/a.f32" --ram-cache 12X
expect 2 "not a size" -- $S run -m "$M" -p hi --ram-cache 0
expect 2 "direct, buffered or mmap" -- $S run -m "$M" -p hi --io fast
expect 2 "lru or lfu" -- $S logits -m "$M" --tokens 1 -o "$T/a.f32" --cache-policy mru
expect 2 "0/off" -- $S logits -m "$M" --tokens 1 -o "$T/a.f32" --prefetch maybe
expect 2 "needs a value" -- $S logits -m "$M" --tokens 1 -o "$T/a.f32" --ram-cache
expect 1 "smaller than one expert record" -- $S logits -m "$M" --tokens 1 -o "$T/a.f32" --ram-cache 4K

expect 0 "" -- $S logits -m "$M" --tokens $TOK -o "$T/ref.f32" --generate 6 --io mmap
cp "$T/out" "$T/ref.gen"
for flags in "--ram-cache all" "--ram-cache 300K --cache-policy lru" "--ram-cache 300K --prefetch 0" \
             "--ram-cache 300K --prefetch 2 --io buffered" "--ram-cache 0.5M --no-uring --io-threads 2"; do
  # shellcheck disable=SC2086
  expect 0 "" -- $S logits -m "$M" --tokens $TOK -o "$T/x.f32" --generate 6 $flags
  if cmp -s "$T/ref.f32" "$T/x.f32" && cmp -s "$T/ref.gen" "$T/out"; then ok; else bad "logits differ with $flags"; fi
done

expect 0 "prefetch: .* reads" -- $S run -m "$M" -p "hello" -n 4 --timing --ram-cache 300K --prefetch 2
expect 0 "expert cache: .* slots" -- $S run -m "$M" -p "hello" -n 4 --timing --ram-cache 300K
expect 0 "layer +0: hit" -- $S logits -m "$M" --tokens $TOK -o "$T/x.f32" --timing --ram-cache 300K
expect 0 "peak RSS" -- $S logits -m "$M" --tokens $TOK -o "$T/x.f32" --timing

echo "tests/cli/expert_store.sh: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
