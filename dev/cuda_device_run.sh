#!/bin/bash
# dev/cuda_device_run.sh — the CUDA backend's checks and benchmark in one
# call on the GPU machine (docs/cuda.md). Expects the binaries built on the
# development machine in .cudarun/ (test_cuda*, sluice, lib/ with the
# non-CUDA shared libraries; the CUDA runtime is linked statically), or
# packed as .cudarun/pack.tar.xz by dev/cuda_pack.sh (stripped; the working tree plus carry must
# stay under 64 MiB), run from the repository root; writes logs under $OUT.
# Run: device `run` with carry [".cudarun"] and the command
#   bash dev/cuda_device_run.sh
# Knobs: LAYERS (default 24) cuts the a3b-gpu preset's 48 layers to fit the
# call's time limit; SKIP_TEST, SKIP_BENCH skip those parts; BASELINE=path
# of another sluice binary benchmarked on the same model first (before /
# after on one machine); NOGRAPH=1 and STREAM=1 add the no-graph and the
# streaming (--gpu-cache 2G) benches; KBENCH=1 runs the decode-kernel
# microbenchmark (cuda_decode_kernels, after the tests); NCU=1 adds a per-kernel profile
# (ncu, gpu__time_duration) of decode steps on a 2-layer model.
set -u
R=.cudarun
[ -f $R/pack.tar.xz ] && tar xJf $R/pack.tar.xz -C $R
O=${OUT:-/tmp/cudaout}
mkdir -p "$O"
export LD_LIBRARY_PATH=$PWD/$R/lib:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$O/gpu.txt"
if [ -z "${SKIP_TEST:-}" ]; then
  for t in $R/test_cuda*; do
    n=$(basename $t)
    echo "== $n"
    timeout ${TEST_TIMEOUT:-150} $t 2>&1 | tee "$O/$n.log" | grep -v "^ok\|^  ok" | tail -40
  done
  if [ -n "${TEST_ENV:-}" ]; then # the tests again under other tuning knobs
    echo "== test_cuda with $TEST_ENV"
    env $(echo "$TEST_ENV" | tr ',' ' ') timeout 150 $R/test_cuda 2>&1 | grep "passed\|FAIL\|fail"
  fi
fi
if [ -n "${KBENCH:-}" ] && [ -x $R/cuda_decode_kernels ]; then # decode-kernel microbenchmark
  echo "== cuda_decode_kernels"
  timeout 100 $R/cuda_decode_kernels ${KBENCH_REPS:-200} 2>&1 | tee "$O/kbench.txt"
fi
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
B="--prompt 32 --gen 64 --reps 3 --warmup 1 --device cuda"
if [ -n "${BASELINE:-}" ]; then
  echo "== BASELINE $BASELINE: a3b-gpu resident, decode graphs"
  timeout 120 $BASELINE bench -m /tmp/a3b.sluice $B --gpu-cache all --json > "$O/bench_base.json" 2> "$O/bench_base.log"; cat "$O/bench_base.log"
fi
echo "== a3b-gpu resident, decode graphs"
timeout 120 $R/sluice bench -m /tmp/a3b.sluice $B --gpu-cache all --json > "$O/bench_graph.json" 2> "$O/bench_graph.log"; cat "$O/bench_graph.log"
# VARIANTS="name:VAR=v,VAR=v name2:..." benches each set of tuning knobs
# (docs/cuda.md) with a shorter run, one line each in variants.txt.
for v in ${VARIANTS:-}; do
  name=${v%%:*}; envs=${v#*:}
  env $(echo "$envs" | tr ',' ' ') timeout 60 $R/sluice bench -m /tmp/a3b.sluice --prompt 8 --gen 64 --reps 2 --warmup 1 \
    --device cuda --gpu-cache all 2>&1 | grep "^prompt:" | sed "s/^/$name [$envs] /" | tee -a "$O/variants.txt"
done
if [ -n "${NOGRAPH:-}" ]; then
  echo "== a3b-gpu resident, no graphs"
  SLUICE_CUDA_GRAPH=0 timeout 120 $R/sluice bench -m /tmp/a3b.sluice $B --gpu-cache all --json > "$O/bench_nograph.json" 2> "$O/bench_nograph.log"; cat "$O/bench_nograph.log"
fi
if [ -n "${STREAM:-}" ]; then
  echo "== a3b-gpu streaming, --gpu-cache 2G"
  timeout 120 $R/sluice bench -m /tmp/a3b.sluice --prompt 32 --gen 32 --reps 2 --warmup 1 --device cuda --gpu-cache 2G --json > "$O/bench_stream.json" 2> "$O/bench_stream.log"; cat "$O/bench_stream.log"
fi
if [ -n "${NCU:-}" ] && command -v ncu >/dev/null; then
  echo "== ncu: decode kernels, 2-layer a3b-gpu, no graphs"
  $R/sluice synth --preset a3b-gpu --layers 2 -o /tmp/a3b2.sluice --quiet
  SLUICE_CUDA_GRAPH=0 timeout 90 ncu --clock-control none --metrics gpu__time_duration.sum --csv \
    $R/sluice bench -m /tmp/a3b2.sluice --prompt 1 --gen 3 --reps 1 --warmup 0 --device cuda \
    --gpu-cache all > "$O/ncu.csv" 2> "$O/ncu.log"
  python3 - "$O/ncu.csv" <<'PY'
import csv, sys, collections
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
h = rows[0]; ik = h.index("Kernel Name"); iv = h.index("Metric Value")
ks = [(r[ik].split("(")[0].split("<")[0], float(r[iv].replace(",", ""))) for r in rows[1:]]
starts = [i for i, (k, v) in enumerate(ks) if "kernel_embed" in k]
last = ks[starts[-1]:] if starts else ks  # the last decode step
agg = collections.OrderedDict()
for k, v in last: agg[k] = agg.get(k, 0) + v
for k, v in agg.items(): print("%-40s %9.1f us" % (k, v / 1e3))
print("total %.1f us over %d kernels" % (sum(agg.values()) / 1e3, len(last)))
PY
fi
