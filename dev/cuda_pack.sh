#!/bin/bash
# dev/cuda_pack.sh — builds the CUDA binaries here (nvcc, no GPU needed) and
# packs them for dev/cuda_device_run.sh on the GPU machine: every
# build/tests/test_cuda* program, build/sluice and the non-CUDA shared
# libraries they load (the CUDA runtime is linked statically), stripped, as
# .cudarun/pack.tar.xz (git-ignored through .git/info/exclude; carry it with
# the device call: carry [".cudarun"]).
# Run from the repository root: [BUILD=dir] bash dev/cuda_pack.sh
set -eu
B=${BUILD:-build}
tests=$(ls tests/test_cuda*.c | sed "s|^tests/\(.*\)\.c$|$B/tests/\1|")
make -j2 BUILD="$B" "$B/sluice" $tests >/dev/null
rm -rf .cudarun && mkdir -p .cudarun/stage/lib
cp "$B/sluice" $tests .cudarun/stage/
for f in .cudarun/stage/sluice .cudarun/stage/test_cuda*; do
  ldd "$f" | awk '/=> \// {print $3}' |
    grep -Ev '/lib(c|m|pthread|dl|rt|gcc_s|stdc\+\+)\.so' |
    xargs -r -I{} cp -Lu {} .cudarun/stage/lib/
done
strip .cudarun/stage/sluice .cudarun/stage/test_cuda*
tar cJf .cudarun/pack.tar.xz -C .cudarun/stage .
rm -rf .cudarun/stage
ls -la .cudarun/pack.tar.xz
