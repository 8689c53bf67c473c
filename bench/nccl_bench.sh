#!/bin/bash
# bench/nccl_bench.sh — multi-GPU expert parallelism (docs/multi_gpu.md) on
# a machine with >= 2 GPUs, 1 vs 2 GPUs, about 150 s:
#   1. a3b-gpu resident (--gpu-cache all), decode graphs: tok/s;
#   2. the same without graphs (SLUICE_CUDA_GRAPH=0): tok/s and the timed
#      all-reduces (us each, bytes each = hidden x 4 per token and MoE layer);
#   3. a3b-gpu streaming with the same GPU cache budget per GPU (STREAM_GPU,
#      default 2G): tok/s and GPU cache hit rate.
# JSON per run and nccl_summary.json under $OUT (default /tmp/ncclout);
# nvidia-smi topo -m (NVLink or PCIe between the GPUs) in topo.txt.
# Binaries: .cudarun/ (dev/cuda_pack.sh; unpacked here if packed) or build/.
# The a3b-gpu model: /tmp/a3b.sluice when it exists (dev/cuda_device_run.sh
# leaves it there), else synthesized with LAYERS layers (default 24).
# libnccl.so.2: found through LD_LIBRARY_PATH, else PyTorch's copy
# (nvidia.nccl or torch/lib) is added to it.
set -u
O=${OUT:-/tmp/ncclout}
mkdir -p "$O"
R=.cudarun
[ -f $R/pack.tar.xz ] && [ ! -x $R/sluice ] && tar xJf $R/pack.tar.xz -C $R
if [ -x $R/sluice ]; then S=$R/sluice; export LD_LIBRARY_PATH=$PWD/$R/lib:${LD_LIBRARY_PATH:-}
else S=build/sluice; fi
if ! ldconfig -p 2>/dev/null | grep -q libnccl.so.2 && [ -z "${SLUICE_NCCL_LIB:-}" ]; then
  NL=$(python3 -c "import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__file__) + '/lib')" 2>/dev/null ||
       python3 -c "import torch, os; print(os.path.dirname(torch.__file__) + '/lib')" 2>/dev/null)
  [ -n "$NL" ] && export LD_LIBRARY_PATH=$NL:${LD_LIBRARY_PATH:-}
fi
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}" | tee "$O/env.txt"
nvidia-smi topo -m > "$O/topo.txt" 2>&1; cat "$O/topo.txt"
M=/tmp/a3b.sluice
if [ ! -f $M ]; then
  echo "== synth a3b-gpu, ${LAYERS:-24} layers"
  timeout 200 $S synth --preset a3b-gpu --layers ${LAYERS:-24} -o $M --quiet || exit 1
fi
L="tools/sluice_launch.sh --sluice $S --logs $O/ranks --gpus 2 --"
B="-m $M --device cuda --prompt 32 --gen 64 --reps 2 --warmup 1 --json"
SB="-m $M --device cuda --prompt 32 --gen 32 --reps 2 --warmup 1 --json --gpu-cache ${STREAM_GPU:-2G}"
run() { # name, timeout, command...
  local n=$1 t=$2; shift 2
  echo "== $n"
  timeout $t "$@" > "$O/$n.json" 2> "$O/$n.log"
  echo "rc=$?" >> "$O/$n.log"
  grep -E "^prompt:|gpu cache:|nccl:|rc=|error|rank" "$O/$n.log" | head -12
}
run r1_graph 60 $S bench $B --gpu-cache all
run r2_graph 90 $L bench $B --gpu-cache all
SLUICE_CUDA_GRAPH=0 run r1_eager 60 $S bench $B --gpu-cache all
SLUICE_CUDA_GRAPH=0 run r2_eager 90 $L bench $B --gpu-cache all
run s1 90 $S bench $SB
run s2 120 $L bench $SB
python3 - "$O" <<'PY'
import json, os, sys
o = sys.argv[1]; out = {}
for n in ["r1_graph", "r2_graph", "r1_eager", "r2_eager", "s1", "s2"]:
    try:
        j = json.loads(open(os.path.join(o, n + ".json")).read().strip().splitlines()[-1])
    except Exception as e:
        out[n] = {"error": str(e)}; continue
    nc = j.get("nccl", {})
    gen = j.get("gen_tokens", 0)
    out[n] = {"decode_tps": j.get("decode_tps"), "prompt_tps": j.get("prompt_tps"),
              "gpu_hit_rate_decode": j.get("gpu_hit_rate_decode"),
              "cache_hit_rate": j.get("cache_hit_rate"),
              "allreduce_us": nc.get("us_per_allreduce"),
              "allreduce_bytes_each": nc["bytes"] / nc["allreduces"] if nc.get("allreduces") else None,
              "allreduces": nc.get("allreduces"), "n_layers": j.get("n_layers"),
              "model": j.get("model")}
import re
r2 = out.get("r2_eager", {})
m = re.search(r"\((\d+) MoE\), hidden (\d+)", r2.get("model") or "")
if m:
    n_moe, hidden = int(m.group(1)), int(m.group(2))
    payload = hidden * 4 * n_moe  # float32 rows summed once per MoE layer
    us = r2.get("allreduce_us") or 0
    out["per_token"] = {"moe_layers": n_moe, "hidden": hidden,
                        "allreduce_payload_bytes": payload,
                        # ring all-reduce: each rank sends and receives 2 (N-1)/N x payload
                        "wire_bytes_per_rank_n2": payload * 2 * (2 - 1) / 2,
                        "allreduce_us_per_token": us * n_moe,
                        "allreduce_share_of_eager_step": us * n_moe / (1e6 / r2["decode_tps"])
                        if r2.get("decode_tps") else None}
json.dump(out, open(os.path.join(o, "nccl_summary.json"), "w"), indent=1)
print(json.dumps(out, indent=1))
PY
