#!/usr/bin/env bash
# Installs the build and test dependencies sluice needs, from Debian's packages,
# when they are missing. Safe to run again: it does nothing when all are present.
# Needs root (or sudo) only when something must be installed.
set -euo pipefail
# clang + libclang-rt-14-dev: `make tsan` and the libFuzzer targets (make fuzz-check)
# libmicrohttpd-dev + libreadline-dev: `sluice serve` and `sluice chat`;
# python3-venv: the server tests install the openai client into build/venv
pkgs=(build-essential libcjson-dev libpcre2-dev libutf8proc-dev liburing-dev pkg-config
      clang libclang-rt-14-dev libmicrohttpd-dev libreadline-dev python3-venv)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
echo "setup: installing ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null || true
$SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
