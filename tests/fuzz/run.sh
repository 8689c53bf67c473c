#!/usr/bin/env bash
# Runs every fuzz target built in DIR (DIR/fuzz_<name>) for SECONDS each,
# starting from its committed corpus tests/fuzz/corpus/<name> (which also
# holds every input that once crashed it: a regression replays first).
# New interesting inputs go to DIR/corpus/<name> (not committed); a crash
# leaves its input in DIR/crash/<name>/ and fails the run, with the hint to
# fix it and commit the input to tests/fuzz/corpus/<name>/.
# Usage: tests/fuzz/run.sh build/fuzz 60
set -u
dir=${1:-build/fuzz}
secs=${2:-60}
pass=0
fail=0
for bin in "$dir"/fuzz_*; do
  [ -x "$bin" ] || continue
  case "$bin" in *.d|*.o) continue;; esac
  name=$(basename "$bin"); name=${name#fuzz_}
  seed=tests/fuzz/corpus/$name
  work=$dir/corpus/$name
  crash=$dir/crash/$name
  mkdir -p "$work" "$crash"
  [ -d "$seed" ] || { echo "fuzz $name: no seed corpus $seed"; fail=$((fail + 1)); continue; }
  log=$dir/$name.log
  if "$bin" -max_total_time="$secs" -timeout=20 -rss_limit_mb=3072 -max_len=65536 \
       -print_final_stats=1 -artifact_prefix="$crash/" "$work" "$seed" >"$log" 2>&1; then
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
    echo "fuzz $name: ok, ${execs:-?} runs in ${secs}s, ${cov:-cov: ?}"
    pass=$((pass + 1))
  else
    echo "fuzz $name: FAILED (log $log); last lines:"
    tail -30 "$log" | sed 's/^/  /'
    echo "  HINT: fix the bug, then copy the input from $crash/ into $seed/"
    echo "  (it becomes a regression test replayed by every run)"
    fail=$((fail + 1))
  fi
done
echo "fuzz: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
