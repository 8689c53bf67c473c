#!/bin/bash
# dev/cuda_pack.sh — builds the CUDA binaries here (nvcc, no GPU needed) and
# packs them for dev/cuda_device_run.sh on the GPU machine: every
# build/tests/test_cuda* program, build/sluice, build/bench/cuda_decode_kernels
# (the decode-kernel microbenchmark; not run by cuda_device_run.sh unless
# KBENCH=1) and the non-CUDA shared
# libraries they load (the CUDA runtime is linked statically), stripped, as
# .cudarun/pack.tar.xz (git-ignored through .git/info/exclude; carry it with
# the device call: carry [".cudarun"]).
# Run from the repository root: [BUILD=dir] [ONLY="test_cuda_x ..."] bash dev/cuda_pack.sh
# ONLY packs just those test programs (the working tree plus the carry must
# stay under the device tool's 64 MiB).
set -eu
B=${BUILD:-build}
if [ -n "${ONLY:-}" ]; then
  tests=$(for t in $ONLY; do printf '%s ' "$B/tests/$t"; done)
else
  tests=$(ls tests/test_cuda*.c | sed "s|^tests/\(.*\)\.c$|$B/tests/\1|")
fi
make -j2 BUILD="$B" "$B/sluice" $tests "$B/bench/cuda_decode_kernels" >/dev/null
rm -rf .cudarun && mkdir -p .cudarun/stage/lib
cp "$B/sluice" $tests "$B/bench/cuda_decode_kernels" .cudarun/stage/
for f in .cudarun/stage/sluice .cudarun/stage/test_cuda* .cudarun/stage/cuda_decode_kernels; do
  [ -f "$f" ] || continue
  ldd "$f" | awk '/=> \// {print $3}' |
    grep -Ev '/lib(c|m|pthread|dl|rt|gcc_s|stdc\+\+)\.so' |
    xargs -r -I{} cp -Lu {} .cudarun/stage/lib/
done
strip .cudarun/stage/sluice .cudarun/stage/test_cuda* .cudarun/stage/cuda_decode_kernels
XZ_OPT=-9 tar cJf .cudarun/pack.tar.xz -C .cudarun/stage .
rm -rf .cudarun/stage
ls -la .cudarun/pack.tar.xz
