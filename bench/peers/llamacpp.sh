#!/usr/bin/env bash
# llamacpp.sh — the a3b-cpu scenario (../shared/DESIGN.md) side by side:
# `sluice bench` and llama.cpp on THE SAME WEIGHTS (the synthetic model
# exported with `sluice export-gguf`: q4 -> Q4_1, q8 -> Q8_0, bf16 -> BF16,
# bit-identical), the same seeded token trace, the same thread count, in one
# script run. Writes one JSON file to bench/results/ (read by
# bench/report.py, `make bench-report`).
#
# usage: bench/peers/llamacpp.sh [SCENARIO]        (default a3b-cpu)
# env:   WORK=/tmp/sluice-bench   models, trace, logs (never in the repo)
#        LLAMA_VENV=/tmp/llvenv   venv with llama-cpp-python (installed here
#                                 from source if missing: several minutes)
#        LLAMA_CPP_PYTHON_VERSION=0.3.36   pinned version
#        THREADS=2 PROMPT=128 GEN=128 REPS=3 WARMUP=1 ROUNDS=2 LAYERS=8
#        PEER_THREADS="2 1"  thread counts llama.cpp runs with (one peer entry
#                            each; its OpenMP barriers suffer badly when a
#                            2-vCPU machine has any other load, so the best of
#                            them is the honest comparison)
#        SLUICE_FLAGS="--ram-cache all"   extra flags for sluice bench
#        CMAKE_ARGS="-DGGML_NATIVE=ON"    (add -DGGML_CUDA=on on a GPU host)
#        LLAMA_BUILD_NOTE="..."           how llama.cpp was built, when it was
#                                         not by this script (recorded in the JSON)
# Each round runs sluice then llama.cpp; ROUNDS > 1 interleaves them so that
# drift in machine load hits both.
set -euo pipefail
cd "$(dirname "$0")/../.."
SCENARIO=${1:-a3b-cpu}
WORK=${WORK:-/tmp/sluice-bench}
LLAMA_VENV=${LLAMA_VENV:-/tmp/llvenv}
LLAMA_CPP_PYTHON_VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
THREADS=${THREADS:-2} PROMPT=${PROMPT:-128} GEN=${GEN:-128}
REPS=${REPS:-3} WARMUP=${WARMUP:-1} ROUNDS=${ROUNDS:-2} LAYERS=${LAYERS:-8}
SLUICE_FLAGS=${SLUICE_FLAGS:---ram-cache all}
PEER_THREADS=${PEER_THREADS:-$THREADS}
SEED=1234
mkdir -p "$WORK" bench/results

# 1. llama.cpp, built from the llama-cpp-python sdist (no prebuilt wheel)
if ! "$LLAMA_VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
    echo "llamacpp.sh: building llama-cpp-python $LLAMA_CPP_PYTHON_VERSION from source" >&2
    python3 -m venv "$LLAMA_VENV"
    CMAKE_ARGS=${CMAKE_ARGS:--DGGML_NATIVE=ON} "$LLAMA_VENV/bin/pip" install \
        --no-binary llama-cpp-python "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" >&2
fi
PY="$LLAMA_VENV/bin/python"

# 2. the model, both formats
make -s build/sluice >&2 || { [ -x build/sluice ] && echo "llamacpp.sh: make failed; using the existing build/sluice" >&2; } || exit 1
MODEL="$WORK/$SCENARIO-L$LAYERS.sluice"
GGUF="$WORK/$SCENARIO-L$LAYERS.gguf"
[ -f "$MODEL" ] || build/sluice synth --preset "$SCENARIO" --layers "$LAYERS" -o "$MODEL" --quiet
[ -f "$GGUF" ] || build/sluice export-gguf "$MODEL" -o "$GGUF" \
    --tokenizer tests/fixtures/tokenizer/gpt2style/tokenizer.json --quiet

# 3. the mapping is exact: a small model's logits agree (llama.cpp vs sluice)
build/sluice synth --preset demo --layers 2 \
    --tokenizer tests/fixtures/tokenizer/gpt2style/tokenizer.json -o "$WORK/check.sluice" --quiet
build/sluice export-gguf "$WORK/check.sluice" -o "$WORK/check.gguf" --quiet
CHECK=$("$PY" bench/peers/check_gguf.py --sluice build/sluice --model "$WORK/check.sluice" \
        --gguf "$WORK/check.gguf" --python "$PY")
echo "llamacpp.sh: logits check: $CHECK" >&2

# 4. all in RAM: both files in the page cache before timing
cat "$MODEL" "$GGUF" > /dev/null

# 5. side by side
SL_CMD="build/sluice bench -m $MODEL --prompt $PROMPT --gen $GEN --reps $REPS --warmup $WARMUP -t $THREADS --seed $SEED --scenario $SCENARIO $SLUICE_FLAGS --json"
LL_CMD="$PY bench/peers/llamacpp_run.py -m $GGUF --trace $WORK/trace.json --prompt $PROMPT --gen $GEN --reps $REPS --warmup $WARMUP --scenario $SCENARIO"
: > "$WORK/sluice.jsonl"
for pt in $PEER_THREADS; do : > "$WORK/llama-t$pt.jsonl"; done
for r in $(seq "$ROUNDS"); do
    echo "llamacpp.sh: round $r: sluice" >&2
    $SL_CMD --trace-out "$WORK/trace.json" >> "$WORK/sluice.jsonl"
    for pt in $PEER_THREADS; do
        echo "llamacpp.sh: round $r: llama.cpp -t $pt" >&2
        $LL_CMD -t "$pt" >> "$WORK/llama-t$pt.jsonl"
    done
done
LL_FILES=$(for pt in $PEER_THREADS; do printf '%s,' "$WORK/llama-t$pt.jsonl"; done)

# 6. one result file
HOST=$(hostname -s 2>/dev/null || echo host)
OUT="bench/results/$SCENARIO-$HOST-$(date -u +%Y%m%dT%H%M%SZ).json"
python3 - "$OUT" "$WORK/sluice.jsonl" "${LL_FILES%,}" "$SL_CMD" "$LL_CMD" "$CHECK" \
    "$LLAMA_CPP_PYTHON_VERSION" "${CMAKE_ARGS:--DGGML_NATIVE=ON}" "${LLAMA_BUILD_NOTE:-}" <<'EOF'
import json, os, platform, sys
out, sj, lj, sl_cmd, ll_cmd, check, ver, cmake, note = sys.argv[1:10]
S = [json.loads(l) for l in open(sj) if l.strip()]
peer_runs = [[json.loads(l) for l in open(f) if l.strip()] for f in lj.split(",")]
def avg(runs, k):
    return sum(r[k] for r in runs) / len(runs)
res = {
    "scenario": S[0]["scenario"], "kind": "peer",
    "machine": {"cpu": S[0]["cpu"], "n_cpus": S[0]["n_cpus"], "kernel": platform.release(),
                "loadavg": open("/proc/loadavg").read().split()[:3]},
    "limit": {"name": "RAM read bandwidth (measured, same threads)",
              "gbs": avg(S, "ram_read_gbs"), "decode_tps": avg(S, "limit_tps"),
              "active_bytes_per_token": S[0]["active_bytes_per_token"]},
    "sluice": {"command": sl_cmd, "rounds": S,
               "prompt_tps": avg(S, "prompt_tps"), "decode_tps": avg(S, "decode_tps")},
    "peers": [{"name": f"llama.cpp -t {Lr[0]['threads']}", "version": Lr[0]["version"],
               "build": note or f"pip install --no-binary llama-cpp-python llama-cpp-python=={ver}, CMAKE_ARGS={cmake}",
               "weights": "same weights: sluice export-gguf (q4->Q4_1, bf16->BF16)",
               "command": f"{ll_cmd} -t {Lr[0]['threads']}", "rounds": Lr,
               "prompt_tps": avg(Lr, "prompt_tps"), "decode_tps": avg(Lr, "decode_tps")}
              for Lr in peer_runs],
    "logits_check": json.loads(check),
}
json.dump(res, open(out, "w"), indent=1)
for p in res["peers"]:
    print(f"{res['scenario']}: sluice prompt {res['sluice']['prompt_tps']:.2f} tok/s, decode "
          f"{res['sluice']['decode_tps']:.2f} tok/s | {p['name']} prompt {p['prompt_tps']:.2f}, "
          f"decode {p['decode_tps']:.2f} | ratio sluice/peer: prompt "
          f"{res['sluice']['prompt_tps'] / p['prompt_tps']:.2f}, decode "
          f"{res['sluice']['decode_tps'] / p['decode_tps']:.2f} | sluice decode at "
          f"{100 * res['sluice']['decode_tps'] / res['limit']['decode_tps']:.0f}% of the RAM limit "
          f"({res['limit']['decode_tps']:.2f} tok/s)", file=sys.stderr)
print(f"llamacpp.sh: -> {out}", file=sys.stderr)
EOF
