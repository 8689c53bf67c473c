#!/bin/bash
# dev/device_final.sh — one GPU call for the closing numbers: every
# test_cuda* program, then bench/peers/gpu_peers.sh (sluice vs transformers,
# and llama.cpp CUDA when its binaries were carried over in parts: the
# 42 MB pack of llama-bench + libggml-cuda does not fit the device tool's
# 64 MiB transfer with the tree, so earlier calls copy .llc1/ and .llc2/ to
# /tmp/llc/ and this one brings .llc3/; see
# bench/peers/llamacpp_cuda_build.sh). Logs and JSON in $OUT/final.tgz.
set -u
O=/tmp/final; rm -rf $O; mkdir -p $O
R=.cudarun; tar xJf $R/pack.tar.xz -C $R
NV=$(python3 -c "import nvidia,glob;print(':'.join(glob.glob(list(nvidia.__path__)[0]+'/*/lib')))" 2>/dev/null)
TL=$(python3 -c "import torch,os;print(os.path.dirname(torch.__file__)+'/lib')" 2>/dev/null)
export LD_LIBRARY_PATH=$PWD/$R/lib:/usr/local/cuda/lib64:${NV}:${TL}:${LD_LIBRARY_PATH:-}
LB=""
if [ -f /tmp/llc/llpart.00 ] && [ -f /tmp/llc/llpart.01 ] && [ -f .llc3/llpart.02 ]; then
  mkdir -p /tmp/llc/bin
  cat /tmp/llc/llpart.00 /tmp/llc/llpart.01 .llc3/llpart.02 | tar xJ -C /tmp/llc/bin && LB=/tmp/llc/bin/llama-bench
  LD_LIBRARY_PATH=/tmp/llc/bin:$LD_LIBRARY_PATH $LB --list-devices > $O/llama_devices.txt 2>&1 || LB=""
  cat $O/llama_devices.txt | tail -3
fi
for t in $R/test_cuda*; do
  n=$(basename $t)
  timeout 100 $t > $O/$n.log 2>&1
  echo "$n rc=$? $(tail -1 $O/$n.log)"
  grep -h "FAIL" $O/$n.log | head -5
done
LLAMA_BENCH=$LB LD_LIBRARY_PATH=/tmp/llc/bin:$LD_LIBRARY_PATH LAYERS=${LAYERS:-8} BUDGET=${BUDGET:-250} \
  OUT=$O/peers timeout 300 bash bench/peers/gpu_peers.sh 2>&1 | tail -14
tar czf $OUT/final.tgz -C $O .
