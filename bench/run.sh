#!/usr/bin/env bash
# Runs the benchmarks in BUILD/bench (default build): the matvec bandwidth
# bench, then any other bench binary. Not a test; numbers go to stdout.
# Usage: bench/run.sh [BUILD] [extra args for bench_matvec]
set -eu
build=${1:-build}
shift || true
"$build/bench/bench_matvec" "$@"
for b in "$build"/bench/bench_*; do
  case "$b" in *.o|*.d|*/bench_matvec) continue;; esac
  [ -x "$b" ] && "$b"
done
