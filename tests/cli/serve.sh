#!/usr/bin/env bash
# `sluice serve` black-box tests (tests/serve/test_serve.py) with the official
# openai client, installed from PyPI into $BUILD/venv on first use, and the
# `sluice chat` REPL through a pseudo-terminal (tests/serve/test_chat_pty.py,
# standard library only).
set -u
S=${SLUICE:-build/sluice}
B=${BUILD:-build}
M=${SLUICE_TEST_MODEL:-$B/default.sluice}
fail=0
[ -f "$M" ] || { echo "  FAIL serve: no model $M (make all builds it)" >&2; exit 1; }
python3 tests/serve/test_chat_pty.py "$S" "$M" || fail=1
V="$B/venv"
if ! "$V/bin/python" -c "import openai" 2>/dev/null; then
  { python3 -m venv "$V" && "$V/bin/pip" install -q openai; } >"$B/venv-install.log" 2>&1 \
    || { echo "  FAIL serve: cannot install the openai client into $V (see $B/venv-install.log;" \
              "scripts/setup.sh installs python3-venv)" >&2; exit 1; }
fi
"$V/bin/python" tests/serve/test_serve.py "$S" "$M" || fail=1
exit $fail
