#!/usr/bin/env bash
# llamacpp_cuda_build.sh — builds llama.cpp's llama-bench with the CUDA
# backend from the llama-cpp-python sdist (its vendor/llama.cpp tree) on a
# machine with nvcc (no GPU needed), and packs it with its shared libraries
# as .llcuda/pack.tar.xz for the GPU machine (carry [".llcuda"]; unpack with
# `tar xJf .llcuda/pack.tar.xz -C .llcuda`, then LLAMA_BENCH=.llcuda/llama-bench
# LD_LIBRARY_PATH=.llcuda bench/peers/gpu_peers.sh adds it as a peer).
# The CUDA runtime and cuBLAS come from the GPU machine (PyTorch's nvidia-*
# wheels or the toolkit); only ggml/llama are packed.
#
# env: SDIST=/tmp/llbuild/llama_cpp_python-0.3.36.tar.gz (pip download
#      --no-binary :all: --no-deps llama-cpp-python==0.3.36 fetches it)
#      BUILD_DIR=/tmp/llcuda  CUDA_ARCH=90  JOBS=2
set -euo pipefail
cd "$(dirname "$0")/../.."
SDIST=${SDIST:-/tmp/llbuild/llama_cpp_python-0.3.36.tar.gz}
BUILD_DIR=${BUILD_DIR:-/tmp/llcuda} CUDA_ARCH=${CUDA_ARCH:-90} JOBS=${JOBS:-2}
SRC=$(dirname "$SDIST")/$(basename "$SDIST" .tar.gz)
[ -d "$SRC" ] || tar xzf "$SDIST" -C "$(dirname "$SDIST")"
cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCH" -DGGML_NATIVE=OFF -DGGML_AVX2=ON \
    -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=ON \
    -DCMAKE_CUDA_COMPILER="${NVCC:-/usr/local/cuda/bin/nvcc}" >/dev/null
ninja -C "$BUILD_DIR" -j "$JOBS" llama-bench
rm -rf .llcuda/stage && mkdir -p .llcuda/stage
cp "$BUILD_DIR"/bin/llama-bench .llcuda/stage/
find "$BUILD_DIR"/bin -name "lib*.so*" -exec cp -P {} .llcuda/stage/ \;
strip .llcuda/stage/llama-bench .llcuda/stage/*.so* 2>/dev/null || true
tar cJf .llcuda/pack.tar.xz -C .llcuda/stage .
rm -rf .llcuda/stage
ls -la .llcuda/pack.tar.xz
