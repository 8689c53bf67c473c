#!/usr/bin/env bash
# Runs every test binary in BUILD/tests and the CLI tests (tests/cli/*.sh).
# Prints each binary's summary; exits non-zero if any failed.
set -u
build=${1:-build}
fail=0
# the demo model of this build (tests that need it skip without it)
[ -f "$build/default.sluice" ] && export SLUICE_TEST_MODEL=${SLUICE_TEST_MODEL:-$build/default.sluice}
for t in "$build"/tests/test_*; do
  [ -x "$t" ] || continue
  case "$t" in *.o|*.d) continue;; esac
  if ! "$t"; then echo "FAILED: $t"; fail=1; fi
done
for s in tests/cli/*.sh; do
  [ -f "$s" ] || continue
  if ! SLUICE="$build/sluice" BUILD="$build" bash "$s"; then echo "FAILED: $s"; fail=1; fi
done
if [ $fail -ne 0 ]; then echo "test suite: FAILED"; exit 1; fi
echo "test suite: all passed"
