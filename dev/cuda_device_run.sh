#!/bin/bash
# dev/cuda_device_run.sh — the CUDA backend's checks and benchmark in one
# call on the GPU machine (docs/cuda.md). Expects the binaries built on the
# development machine in .cudarun/ (test_cuda, sluice, lib/ with the
# non-CUDA shared libraries; the CUDA runtime is linked statically), run
# from the repository root; writes logs under $OUT. LAYERS (default 24) cuts
# the a3b-gpu preset's 48 layers to fit the call's time limit.
set -u
R=.cudarun
O=${OUT:-/tmp/cudaout}
mkdir -p "$O"
export LD_LIBRARY_PATH=$PWD/$R/lib:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$O/gpu.txt"
echo "== test_cuda"
timeout 150 $R/test_cuda 2>&1 | tee "$O/test_cuda.log"
echo "== device memory bandwidth (1 GiB device-to-device copy, read + write)"
python3 - <<'PY' 2>&1 | tee "$O/bw.txt"
import torch
x = torch.randint(0, 255, (2**30,), dtype=torch.uint8, device='cuda'); y = torch.empty_like(x)
for _ in range(3): y.copy_(x)
s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
torch.cuda.synchronize(); s.record()
for _ in range(20): y.copy_(x)
e.record(); torch.cuda.synchronize()
print("d2d_GBps %.1f" % (2 * 2**30 * 20 / (s.elapsed_time(e) / 1e3) / 1e9))
PY
[ -n "${SKIP_BENCH:-}" ] && exit 0
L=${LAYERS:-24}
echo "== synth a3b-gpu, $L layers"
( time timeout 200 $R/sluice synth --preset a3b-gpu --layers $L -o /tmp/a3b.sluice --quiet ) 2>&1 | tee "$O/synth.log"
B="$R/sluice bench -m /tmp/a3b.sluice --prompt 32 --gen 64 --reps 3 --warmup 1 --device cuda"
echo "== a3b-gpu resident, decode graphs"
timeout 120 $B --gpu-cache all --json > "$O/bench_graph.json" 2> "$O/bench_graph.log"; cat "$O/bench_graph.log"
echo "== a3b-gpu resident, no graphs"
SLUICE_CUDA_GRAPH=0 timeout 120 $B --gpu-cache all --json > "$O/bench_nograph.json" 2> "$O/bench_nograph.log"; cat "$O/bench_nograph.log"
echo "== a3b-gpu streaming, --gpu-cache 2G"
timeout 120 $R/sluice bench -m /tmp/a3b.sluice --prompt 32 --gen 32 --reps 2 --warmup 1 --device cuda --gpu-cache 2G --json > "$O/bench_stream.json" 2> "$O/bench_stream.log"; cat "$O/bench_stream.log"
