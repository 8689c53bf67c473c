#!/usr/bin/env bash
# `sluice export-gguf` and `sluice bench` contracts: exit codes (0 ok, 2
# usage, 1 error with one "sluice <cmd>: ..." line), nothing on stdout except
# bench's --json object, the GGUF magic, bench's JSON schema (the keys
# bench/report.py reads), identical logits hashes across runs (seeded trace),
# --trace-out, --disk, and the report generator's table from that JSON.
set -u
S=${SLUICE:-build/sluice}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
pass=0; fail=0
ok() { pass=$((pass+1)); }
bad() { echo "  FAIL bench_export.sh: $*" >&2; fail=$((fail+1)); }
TOK=tests/fixtures/tokenizer/gpt2style/tokenizer.json

# expect CODE PATTERN -- cmd...: exit code and a stderr line matching PATTERN
expect() {
  local code=$1 pat=$2; shift 3
  "$@" >"$T/out" 2>"$T/err"; local rc=$?
  if [ "$rc" -ne "$code" ]; then bad "$* -> exit $rc, want $code; stderr: $(head -c 300 "$T/err")"; return; fi
  if [ -n "$pat" ] && ! grep -Eq -- "$pat" "$T/err"; then bad "$* -> stderr lacks /$pat/: $(head -c 300 "$T/err")"; return; fi
  ok
}

$S synth --preset tiny --quiet -o "$T/tiny.sluice" 2>/dev/null || bad "synth tiny"
$S synth --preset demo --layers 2 --quiet --tokenizer $TOK -o "$T/demo.sluice" 2>/dev/null || bad "synth demo"

# export-gguf: usage errors, other errors, success
expect 2 "missing MODEL.sluice" -- $S export-gguf
expect 2 "missing -o" -- $S export-gguf "$T/demo.sluice"
expect 2 "unknown option --bogus" -- $S export-gguf "$T/demo.sluice" --bogus
expect 2 "missing value for --tokenizer" -- $S export-gguf "$T/demo.sluice" -o x --tokenizer
expect 1 "^sluice export-gguf: .*no embedded tokenizer" -- $S export-gguf "$T/tiny.sluice" -o "$T/t.gguf"
expect 1 "outside the model's vocabulary of 256" -- $S export-gguf "$T/tiny.sluice" -o "$T/t.gguf" --tokenizer $TOK
expect 1 "^sluice export-gguf: open .*missing.sluice" -- $S export-gguf "$T/missing.sluice" -o "$T/t.gguf"
[ -e "$T/t.gguf" ] || [ -e "$T/t.gguf.tmp" ] && bad "a failed export left a file" || ok
expect 0 "demo.sluice -> .*demo.gguf: 27 tensors, 2048 tokens \(0 padding\)" -- $S export-gguf "$T/demo.sluice" -o "$T/demo.gguf"
[ "$(head -c 4 "$T/demo.gguf")" = "GGUF" ] && ok || bad "no GGUF magic"
[ -s "$T/out" ] && bad "export-gguf wrote to stdout" || ok

# bench: usage errors, then a JSON run twice (same trace -> same hash)
expect 2 "missing -m MODEL" -- $S bench
expect 2 "unknown option --bogus" -- $S bench -m "$T/demo.sluice" --bogus
expect 2 "--reps must be" -- $S bench -m "$T/demo.sluice" --reps 0
expect 2 "--disk-block must be" -- $S bench --disk "$T/demo.sluice" --disk-block 100
expect 1 "^sluice bench: .*missing.sluice" -- $S bench -m "$T/missing.sluice"
B="-m $T/demo.sluice --prompt 8 --gen 4 --reps 2 --warmup 1 -t 1 --scenario clitest --json"
expect 0 "device: .*threads" -- $S bench $B --trace-out "$T/trace.json"
cp "$T/out" "$T/b1.json"
expect 0 "decode ms/token by stage: attention" -- $S bench $B
python3 - "$T/b1.json" "$T/out" "$T/trace.json" <<'PY' && ok || bad "bench JSON schema / determinism"
import json, sys
a, b = (json.loads(open(p).read()) for p in sys.argv[1:3])
keys = ["scenario", "engine", "model", "cpu", "threads", "prompt_tps", "prompt_tps_sd", "decode_tps",
        "decode_tps_sd", "decode_ms_per_token", "active_bytes_per_token", "achieved_gbs", "limit_tps",
        "ram_read_gbs", "cache_hit_rate", "disk_bytes_per_token", "cache_budget_bytes", "logits_hash"]
miss = [k for k in keys if k not in a]
assert not miss, miss
assert a["scenario"] == "clitest" and a["engine"] == "sluice"
assert set(a["decode_ms_per_token"]) == {"attention", "router", "experts", "io_wait", "other"}
assert a["logits_hash"] == b["logits_hash"], (a["logits_hash"], b["logits_hash"])
t = json.load(open(sys.argv[3]))
assert len(t) == 12 and all(0 <= x < 2048 for x in t)
PY
# disk limit alone (O_DIRECT may be unsupported on tmpfs: then exit 1 with a message)
$S bench --disk "$T/demo.sluice" --disk-qd 2 --json >"$T/out" 2>"$T/err"; rc=$?
if [ $rc -eq 0 ]; then grep -q '"disk_read_gbs"' "$T/out" && ok || bad "disk JSON"
else grep -q "^sluice bench: open .*O_DIRECT" "$T/err" && ok || bad "disk failure message"; fi

# report: the bench JSON becomes a table in a generated block
mkdir -p "$T/results"; cp "$T/b1.json" "$T/results/x.json"
printf '# Benchmarks\n\nhand-written\n' > "$T/doc.md"
python3 bench/report.py --results "$T/results" --doc "$T/doc.md" 2>/dev/null
python3 bench/report.py --results "$T/results" --doc "$T/doc.md" 2>/dev/null
grep -q "^hand-written" "$T/doc.md" && [ "$(grep -c 'BEGIN GENERATED' "$T/doc.md")" = 1 ] \
  && grep -q "### clitest: sluice bench" "$T/doc.md" && ok || bad "report.py output"

echo "tests/cli/bench_export.sh: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
