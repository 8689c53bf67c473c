#!/usr/bin/env bash
# gpu_peers.sh — the GPU scenarios side by side with HF transformers, in ONE
# call on the GPU machine (H100/H200, torch + transformers installed, no
# network), about 300 s:
#   1. physical limits: host-to-device bandwidth (pinned and pageable),
#      device-to-host, device-to-device (HBM) with torch;
#   2. a3b-gpu with LAYERS layers (`sluice synth`), exported with
#      `sluice export-hf` (bf16; q4 experts dequantized exactly) — the same
#      weights for both engines; the mapping checked first on a small model
#      (bench/peers/check_hf.py: transformers vs `sluice logits`);
#   3. a3b-gpu: `sluice bench --device cuda --gpu-cache all` and
#      bench/peers/transformers_peer.py --mode gpu on the same token trace
#      (sluice's --trace-out), same prompt / gen lengths;
#   4. if the time budget allows, the streaming case (a17b-gpu-stream-like:
#      experts larger than the GPU memory given): sluice with small
#      --gpu-cache sizes (GPU_CACHES) vs transformers --mode offload with its
#      GPU memory capped (OFFLOAD_GPU_MEM; accelerate CPU offload).
# Results: JSON files under $OUT in bench/report.py's format — copy them to
# bench/results/ and run `make bench-report`:
#   gpu-limits-HOST-TS.json             {"kind": "gpu_limits", ...}
#   a3b-gpu-peer-HOST-TS.json           {"kind": "peer", ...}
#   a3b-gpu-stream-peer-HOST-TS.json    {"kind": "peer", ...} (if run)
#   a3b-gpu-stream-HOST-TS.jsonl        sluice bench lines by cache size
#                                       (a tok/s-vs-GPU-cache plot)
# plus logs (*.log) of every step.
#
# Run from the repository root with the CUDA binaries unpacked as
# dev/cuda_device_run.sh expects (.cudarun/sluice, .cudarun/lib; or
# .cudarun/pack.tar.xz from dev/cuda_pack.sh): device `run` with carry
# [".cudarun"] and the command   bash bench/peers/gpu_peers.sh
# Knobs (env): LAYERS=8 PROMPT=32 GEN=32 REPS=3 WARMUP=1 BUDGET=300 (s)
#   GPU_CACHES="1G 2G"  OFFLOAD_GPU_MEM=4GiB  STREAM_GEN=8  PYTHON=python3
#   SLUICE=.cudarun/sluice  WORK=/tmp/gpu-peers  SKIP_STREAM=1
#   CPU_SMOKE=1: a dry run of the whole script on a machine without a GPU
#   (PRESET=demo, sluice on the CPU, transformers --mode cpu, no limits):
#   checks the plumbing and the result files, measures nothing.
set -u
cd "$(dirname "$0")/../.."
R=.cudarun
[ -f $R/pack.tar.xz ] && [ ! -x $R/sluice ] && tar xJf $R/pack.tar.xz -C $R
export LD_LIBRARY_PATH=$PWD/$R/lib:${LD_LIBRARY_PATH:-}
O=${OUT:-/tmp/gpu-peers-out}
W=${WORK:-/tmp/gpu-peers}
SL=${SLUICE:-$R/sluice}
PY=${PYTHON:-python3}
LAYERS=${LAYERS:-8} PROMPT=${PROMPT:-32} GEN=${GEN:-32} REPS=${REPS:-3} WARMUP=${WARMUP:-1}
BUDGET=${BUDGET:-300} GPU_CACHES=${GPU_CACHES:-1G 2G} OFFLOAD_GPU_MEM=${OFFLOAD_GPU_MEM:-4GiB}
STREAM_GEN=${STREAM_GEN:-8}
PRESET=${PRESET:-a3b-gpu}
DEV="--device cuda" CACHE=--gpu-cache TF_MODE=gpu SYNTH_TOK=""
if [ -n "${CPU_SMOKE:-}" ]; then
    DEV="--device cpu -t 2" CACHE=--ram-cache TF_MODE=cpu
    [ "$PRESET" = a3b-gpu ] && PRESET=demo
fi
[ "$PRESET" = demo ] && SYNTH_TOK="--tokenizer tests/fixtures/tokenizer/gpt2style/tokenizer.json"
SEED=1234
mkdir -p "$O" "$W"
HOST=$(hostname -s 2>/dev/null || echo gpu)
TS=$(date -u +%Y%m%dT%H%M%SZ)
log() { echo "gpu_peers.sh [${SECONDS}s]: $*" >&2; }
left() { echo $((BUDGET - SECONDS)); }
[ -x "$SL" ] || { log "no sluice binary at $SL (see dev/cuda_pack.sh)"; exit 1; }

# 0. machine and versions
nvidia-smi --query-gpu=name,memory.total,driver_version,pcie.link.gen.current,pcie.link.width.current \
    --format=csv,noheader > "$O/gpu.txt" 2>&1 || echo "no GPU (nvidia-smi failed)" > "$O/gpu.txt"
TV=$("$PY" -c "import torch, transformers; print(torch.__version__, transformers.__version__)" 2>&1) \
    || { log "python has no torch/transformers: $TV"; exit 1; }
log "gpu: $(cat "$O/gpu.txt"); torch/transformers: $TV"
TF_MAJOR=$(echo "$TV" | awk '{split($2, v, "."); print v[1]}')
FUSED=""; [ "${TF_MAJOR:-4}" -ge 5 ] && FUSED=--fused-experts   # transformers 5 loads fused experts as is

# 1. physical limits: H2D pinned / pageable, D2H pinned, D2D (1 GiB, best of 5 after a warm-up)
[ -n "${CPU_SMOKE:-}" ] || "$PY" - "$O/limits.raw" <<'PY' 2>&1 | tee "$O/limits.log" >&2
import json, sys, time, torch
n = 1 << 30
dev = torch.empty(n, dtype=torch.uint8, device="cuda")
dev2 = torch.empty_like(dev)
pinned = torch.empty(n, dtype=torch.uint8, pin_memory=True)
pageable = torch.empty(n, dtype=torch.uint8)
pageable.fill_(1); pinned.fill_(1)
def best(fn, bytes_moved, reps=5):
    fn(); torch.cuda.synchronize()
    r = []
    for _ in range(reps):
        t = time.perf_counter(); fn(); torch.cuda.synchronize(); r.append(time.perf_counter() - t)
    return bytes_moved / min(r) / 1e9, bytes_moved / (sum(r) / len(r)) / 1e9
res = {}
for k, fn, b in (("h2d_pinned", lambda: dev.copy_(pinned, non_blocking=True), n),
                 ("h2d_pageable", lambda: dev.copy_(pageable), n),
                 ("d2h_pinned", lambda: pinned.copy_(dev, non_blocking=True), n),
                 ("d2d_read_write", lambda: dev2.copy_(dev), 2 * n)):
    b_, m_ = best(fn, b)
    res[k + "_gbs"], res[k + "_mean_gbs"] = b_, m_
    print(f"{k}: best {b_:.1f} GB/s, mean {m_:.1f} GB/s", file=sys.stderr)
res["gpu"] = torch.cuda.get_device_name(0)
res["method"] = ("torch copy_ of 1 GiB, best of 5 after one warm-up; pinned = pin_memory host "
                 "buffer; d2d counts read + write bytes")
json.dump(res, open(sys.argv[1], "w"))
PY

# 2. the weights: a3b-gpu (LAYERS layers), HF export; mapping check on a small model
M="$W/$PRESET-L$LAYERS.sluice" HF="$W/$PRESET-L$LAYERS-hf"
if [ ! -f "$M" ]; then
    log "synth $PRESET --layers $LAYERS"
    ( time timeout 150 $SL synth --preset "$PRESET" --layers "$LAYERS" $SYNTH_TOK -o "$M" --quiet ) > "$O/synth.log" 2>&1 \
        || { log "synth failed: $(tail -3 "$O/synth.log")"; exit 1; }
fi
if [ ! -f "$HF/config.json" ]; then
    rm -rf "$HF"
    log "export-hf $FUSED"
    ( time timeout 150 $SL export-hf -m "$M" -o "$HF" $FUSED ) > "$O/export.log" 2>&1 \
        || { log "export-hf failed: $(tail -3 "$O/export.log")"; exit 1; }
fi
log "$(grep 'sluice export-hf' "$O/export.log" 2>/dev/null | tail -1)"
TOK=tests/fixtures/tokenizer/gpt2style/tokenizer.json
CHECK='{}'
if $SL synth --preset demo --layers 2 --tokenizer $TOK -o "$W/check.sluice" --quiet 2>/dev/null &&
   rm -rf "$W/check-hf" && $SL export-hf -m "$W/check.sluice" -o "$W/check-hf" $FUSED --quiet; then
    CHECK=$(timeout 60 "$PY" bench/peers/check_hf.py --sluice $SL --model "$W/check.sluice" \
            --hf "$W/check-hf" --min-cosine 0.99 2> "$O/check_hf.log") || CHECK='{}'
fi
log "logits check (transformers vs sluice, demo 2 layers): $CHECK"

# 3. a3b-gpu resident: sluice, then transformers, same trace
SL_CMD="$SL bench -m $M --prompt $PROMPT --gen $GEN --reps $REPS --warmup $WARMUP --seed $SEED $DEV $CACHE all --scenario a3b-gpu --json"
log "sluice: $SL_CMD"
timeout 150 $SL_CMD --trace-out "$W/trace.json" > "$O/sluice_resident.raw" 2> "$O/sluice_resident.log" \
    || log "sluice resident failed: $(tail -3 "$O/sluice_resident.log")"
TF_CMD="$PY bench/peers/transformers_peer.py --hf $HF --trace $W/trace.json --prompt $PROMPT --gen $GEN --reps $REPS --warmup $WARMUP --scenario a3b-gpu"
T_LEFT=$(left); [ "$T_LEFT" -lt 60 ] && T_LEFT=60
log "transformers --mode $TF_MODE (timeout ${T_LEFT}s)"
timeout "$T_LEFT" $TF_CMD --mode $TF_MODE > "$O/tf_gpu.raw" 2> "$O/tf_gpu.log" \
    || log "transformers gpu failed: $(grep -v Warning "$O/tf_gpu.log" | tail -3)"

# 3b. llama.cpp CUDA on the same weights (sluice export-gguf: q4 -> Q4_1,
# bf16 -> BF16, bit-identical), when LLAMA_BENCH names a llama-bench built
# with -DGGML_CUDA=ON (bench/peers/llamacpp_cuda_build.sh). llama-bench draws
# its own random tokens, so routing differs from the trace but not its
# distribution (uniform random ids in both).
LL_CMD=""
if [ -n "${LLAMA_BENCH:-}" ] && [ -x "$LLAMA_BENCH" ]; then
    G="$W/$PRESET-L$LAYERS.gguf"
    [ -f "$G" ] || { log "export-gguf"; timeout 150 $SL export-gguf "$M" -o "$G" --tokenizer $TOK --quiet \
        > "$O/export_gguf.log" 2>&1 || log "export-gguf failed: $(tail -3 "$O/export_gguf.log")"; }
    LL_CMD="$LLAMA_BENCH -m $G -ngl 99 -fa 1 -p $PROMPT -n $GEN -r $REPS -o jsonl"
    log "llama.cpp CUDA: $LL_CMD"
    timeout 150 $LL_CMD > "$O/llama_cuda.raw" 2> "$O/llama_cuda.log" \
        || log "llama-bench failed: $(tail -3 "$O/llama_cuda.log")"
fi

# 4. streaming: small GPU caches vs transformers offload
SS_CMD="$SL bench -m $M --prompt $PROMPT --gen $STREAM_GEN --reps 1 --warmup 1 --seed $SEED $DEV $CACHE @C@ --scenario a3b-gpu-stream --json"
TO_CMD="$PY bench/peers/transformers_peer.py --hf $HF --trace $W/trace.json --prompt $PROMPT --gen $STREAM_GEN --reps 1 --warmup 0 --scenario a3b-gpu-stream --mode offload --gpu-mem $OFFLOAD_GPU_MEM --cpu-mem 100GiB"
if [ -z "${SKIP_STREAM:-}" ] && [ "$(left)" -gt 90 ]; then
    for c in $GPU_CACHES; do
        [ "$(left)" -gt 60 ] || break
        log "sluice $CACHE $c"
        timeout 90 ${SS_CMD/@C@/$c} > "$O/sluice_stream_$c.raw" \
            2>> "$O/sluice_stream.log" || log "sluice $CACHE $c failed"
    done
    T_LEFT=$(( $(left) - 5 ))
    if [ "$T_LEFT" -gt 45 ]; then
        log "transformers --mode offload --gpu-mem $OFFLOAD_GPU_MEM (timeout ${T_LEFT}s)"
        timeout "$T_LEFT" $TO_CMD > "$O/tf_offload.raw" \
            2> "$O/tf_offload.log" || log "transformers offload failed: $(grep -v Warning "$O/tf_offload.log" | tail -3)"
    fi
else
    log "streaming case skipped ($(left) s left of $BUDGET)"
fi

# 5. result files in bench/report.py's format
LL_CMD="$LL_CMD" TF_MODE=$TF_MODE GPU_CACHES="$GPU_CACHES" SS_CMD="$SS_CMD" TO_CMD="$TO_CMD" "$PY" - "$O" "$HOST" "$TS" "$SL_CMD" "$TF_CMD" "$CHECK" "$OFFLOAD_GPU_MEM" "$TV" <<'PY'
import json, os, platform, sys
O, host, ts, sl_cmd, tf_cmd, check, gpu_mem, tv = sys.argv[1:9]
def j(name):
    try:
        with open(os.path.join(O, name)) as f:
            return [json.loads(l) for l in f if l.strip()]
    except (OSError, json.JSONDecodeError):
        return []
lim = (j("limits.raw") or [{}])[0]
gpu = open(os.path.join(O, "gpu.txt")).read().strip()
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
machine = {"cpu": cpu, "n_cpus": os.cpu_count(), "gpu": gpu, "kernel": platform.release(),
           "loadavg": open("/proc/loadavg").read().split()[:3], "torch_transformers": tv}
if lim:
    json.dump(dict(lim, kind="gpu_limits", machine=machine),
              open(os.path.join(O, f"gpu-limits-{host}-{ts}.json"), "w"), indent=1)
def peer(scen, S, T, tf_command, limit, tlimit, name):
    if not S or not T:
        print(f"gpu_peers.sh: {scen}: no peer result (sluice {len(S)}, transformers {len(T)})",
              file=sys.stderr)
        return
    s, t = S[0], T[0]
    res = {"scenario": scen, "kind": "peer", "machine": machine, "limit": limit, "h2d": lim,
           "sluice": {"command": sl_cmd if scen == "a3b-gpu" else s.get("_command", ""),
                      "rounds": [s], "prompt_tps": s["prompt_tps"], "decode_tps": s["decode_tps"]},
           "peers": [{"name": name, "version": t["version"],
                      "build": "preinstalled on the GPU machine",
                      "weights": "same weights: sluice export-hf (q4 experts dequantized exactly, "
                                 "stored bf16; dense bf16 bit-identical)",
                      "command": tf_command, "rounds": [t], "limit": tlimit,
                      "prompt_tps": t["prompt_tps"], "decode_tps": t["decode_tps"]}],
           "logits_check": json.loads(check) or None}
    if scen == "a3b-gpu" and LL:
        res["peers"].append(LL)
    p = os.path.join(O, f"{scen}-peer-{host}-{ts}.json")
    json.dump(res, open(p, "w"), indent=1)
    for q in res["peers"]:
        print(f"gpu_peers.sh: {scen}: sluice decode {s['decode_tps']:.1f} tok/s, {q['name']} "
              f"{q['decode_tps']:.1f} tok/s, ratio {s['decode_tps'] / q['decode_tps']:.2f}; prompt "
              f"{s['prompt_tps']:.1f} vs {q['prompt_tps']:.1f} -> {p}", file=sys.stderr)
LL = None
LR = j("llama_cuda.raw")
pp = [r for r in LR if r.get("n_prompt", 0) > 0 and r.get("n_gen", 0) == 0]
tg = [r for r in LR if r.get("n_gen", 0) > 0 and r.get("n_prompt", 0) == 0]
if pp and tg:
    LL = {"name": "llama.cpp CUDA", "version": str(tg[0].get("build_commit", "?")) + " (llama-cpp-python 0.3.36 vendor tree)",
          "build": "cmake -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 (bench/peers/llamacpp_cuda_build.sh)",
          "weights": "same weights: sluice export-gguf (q4->Q4_1, bf16->BF16, bit-identical)",
          "command": os.environ.get("LL_CMD", ""), "limit": None,
          "rounds": [{"prompt_tps": pp[0]["avg_ts"], "prompt_tps_sd": pp[0].get("stddev_ts"),
                      "decode_tps": tg[0]["avg_ts"], "decode_tps_sd": tg[0].get("stddev_ts")}],
          "raw": LR,
          "prompt_tps": pp[0]["avg_ts"], "decode_tps": tg[0]["avg_ts"]}
hbm = lim.get("d2d_read_write_gbs") or 0
S, T = j("sluice_resident.raw"), j("tf_gpu.raw")
if S:
    a = S[0]["active_bytes_per_token"]
    peer("a3b-gpu", S, T, tf_cmd + " --mode " + os.environ.get("TF_MODE", "gpu"),
         {"name": "HBM bandwidth (device copy, read + write, measured)", "gbs": hbm,
          "decode_tps": hbm * 1e9 / a if hbm else None, "active_bytes_per_token": a},
         None, f"transformers ({os.environ.get('TF_MODE', 'gpu')}, bf16)")
def size(t):
    u = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    return int(float(t[:-1]) * u[t[-1].upper()]) if t[-1].upper() in u else int(t)
SS = []
for c in os.environ.get("GPU_CACHES", "").split():
    for r in j(f"sluice_stream_{c}.raw"):
        SS.append(dict(r, gpu_cache_bytes=size(c), _cache_arg=c))
for r in S:
    r["gpu_cache_bytes"] = r.get("expert_bytes")
TO = j("tf_offload.raw")
if SS:
    with open(os.path.join(O, f"a3b-gpu-stream-{host}-{ts}.jsonl"), "w") as f:
        for s in SS + S:   # the resident run is the 100 % point of the plot
            f.write(json.dumps(dict(s, scenario="a3b-gpu-stream")) + "\n")
if SS and TO:
    s = min(SS, key=lambda r: r["gpu_cache_bytes"])  # the smallest cache
    s["_command"] = os.environ["SS_CMD"].replace("@C@", s["_cache_arg"])
    h2d = lim.get("h2d_pinned_gbs") or 0
    miss = s["expert_bytes_per_token"] * (1 - s.get("cache_hit_rate", 0))
    off = TO[0].get("offloaded_bytes") or 0
    peer("a3b-gpu-stream", [s], TO,
         os.environ["TO_CMD"],
         {"name": "host-to-device bandwidth (pinned, measured)", "gbs": h2d,
          "decode_tps": h2d * 1e9 / miss if miss > 0 and h2d else None,
          "active_bytes_per_token": miss},
         {"name": "host-to-device (pageable: accelerate copies from unpinned memory)",
          "decode_tps": lim["h2d_pageable_gbs"] * 1e9 / off if off and lim else None,
          "active_bytes_per_token": off},
         f"transformers (offload, GPU capped at {gpu_mem})")
PY
log "done; results in $O: $(cd "$O" && ls *.json *.jsonl 2>/dev/null | tr '\n' ' ')"
