#!/usr/bin/env bash
# stream_peer.sh — the a3b-cpu-stream scenario (docs/benchmarks.md) side by
# side: `sluice bench` (streaming expert store, best configuration) and
# llama.cpp (mmap, its default settings) on THE SAME WEIGHTS (the .sluice
# model and its `sluice export-gguf` twin, bit-identical Q4_1/BF16), the same
# seeded token trace, the same thread count, inside THE SAME v1 memory cgroup
# limit, in one script run. Not a test.
#
# Per round: disk read bandwidth (`sluice bench --disk`, O_DIRECT), then
# sluice, then llama.cpp, each from a cold page cache (drop_caches, or
# posix_fadvise DONTNEED on both model files where drop_caches is not
# writable) and an emptied cgroup; `uptime` before and after each run.
# ROUNDS > 1 alternates the engines so that drift in machine load hits both.
# Writes one JSON file to bench/results/ (kind "peer", read by
# bench/report.py, `make bench-report`).
#
# usage: bench/peers/stream_peer.sh [MODEL.sluice] [MODEL.gguf]
#   (defaults /tmp/a3b16.sluice, /tmp/a3b16.gguf; make them with
#    build/sluice synth --preset a3b-cpu --layers 16 -o /tmp/a3b16.sluice
#    build/sluice export-gguf /tmp/a3b16.sluice -o /tmp/a3b16.gguf)
# env:  LIMIT=3000000000  cgroup memory.limit_in_bytes (root: v1 memory cgroup)
#       THREADS=2 PROMPT=32 GEN=32 ROUNDS=2
#       LL_GEN=$GEN       decode tokens for llama.cpp (fewer if it thrashes)
#       LL_TIMEOUT=900    seconds before a llama.cpp run is killed
#       SLUICE_FLAGS="--ram-cache 512M --cache-policy lfu --prefetch 1"
#       LLAMA_VENV=/tmp/llvenv LLAMA_CPP_LIB_PATH=/tmp/llama-libs
#       LLAMA_PY_SRC=/tmp/llbuild/llama_cpp_python-0.3.36  (PYTHONPATH for the
#                         llama_cpp bindings when the venv lacks them)
#       LLAMA_BUILD_NOTE="..."  how llama.cpp was built (recorded in the JSON)
#       WORK=/tmp/sluice-bench  trace, logs, per-run JSON (never in the repo)
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=${1:-/tmp/a3b16.sluice}
GGUF=${2:-/tmp/a3b16.gguf}
LIMIT=${LIMIT:-3000000000}
THREADS=${THREADS:-2} PROMPT=${PROMPT:-32} GEN=${GEN:-32} ROUNDS=${ROUNDS:-2}
LL_GEN=${LL_GEN:-$GEN} LL_TIMEOUT=${LL_TIMEOUT:-900}
SLUICE_FLAGS=${SLUICE_FLAGS:---ram-cache 512M --cache-policy lfu --prefetch 1}
LLAMA_VENV=${LLAMA_VENV:-/tmp/llvenv}
export LLAMA_CPP_LIB_PATH=${LLAMA_CPP_LIB_PATH:-/tmp/llama-libs}
WORK=${WORK:-/tmp/sluice-bench}
SCENARIO=a3b-cpu-stream SEED=1234
PY="$LLAMA_VENV/bin/python"
# the llama_cpp bindings: installed in the venv, or the unpacked sdist's
# pure-Python package over the libraries in LLAMA_CPP_LIB_PATH
LLAMA_PY_SRC=${LLAMA_PY_SRC:-/tmp/llbuild/llama_cpp_python-0.3.36}
if ! "$PY" -c "import llama_cpp" 2>/dev/null; then
    export PYTHONPATH="$LLAMA_PY_SRC${PYTHONPATH:+:$PYTHONPATH}"
    "$PY" -c "import llama_cpp" || { echo "stream_peer.sh: cannot import llama_cpp" >&2; exit 1; }
fi
CG=/sys/fs/cgroup/memory/sluice_stream_peer
for f in "$MODEL" "$GGUF" build/sluice "$PY"; do
    [ -e "$f" ] || { echo "stream_peer.sh: missing $f" >&2; exit 1; }
done
mkdir -p "$WORK" bench/results "$CG"
echo "$LIMIT" > "$CG/memory.limit_in_bytes"
R="$WORK/stream_peer"      # per-run records
rm -rf "$R"; mkdir -p "$R"

# cold start: no page of either model file cached, nothing charged to the cgroup
drop_caches() {
    sync
    if echo 1 > /proc/sys/vm/drop_caches 2>/dev/null; then how=drop_caches; else how=fadvise; fi
    python3 -c "import os,sys
for p in sys.argv[1:]:
    fd=os.open(p, os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)" \
        "$MODEL" "$GGUF"
    echo 0 > "$CG/memory.force_empty" 2>/dev/null || true
    echo 0 > "$CG/memory.max_usage_in_bytes" 2>/dev/null || true
    echo "$how"
}

# run_cg NAME CMD... : CMD inside the cgroup; its stdout to $R/NAME.json; a
# side record $R/NAME.run.json: uptime before/after, wall time, cgroup peak,
# storage bytes read by the whole process tree (wait4 ru_inblock x 512: the
# kernel's read_bytes, O_DIRECT and mmap-fault readahead alike), major
# faults, and the cgroup's memory.stat counters that move
run_cg() {
    local name=$1; shift
    local how; how=$(drop_caches)
    local up0; up0=$(uptime)
    echo "stream_peer.sh: $name ($how): $*" >&2
    python3 - "$CG" "$R/$name" "$how" "$up0" "$@" <<'EOF' || echo "stream_peer.sh: $name failed" >&2
import json, os, subprocess, sys, time
cg, base, how, up0, cmd = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
def stat():
    d = {}
    for l in open(f"{cg}/memory.stat"):
        k, v = l.split()
        d[k] = int(v)
    return d
s0 = stat()
def enter():
    with open(f"{cg}/cgroup.procs", "w") as f:
        f.write(str(os.getpid()))
t0 = time.time()
with open(base + ".json", "w") as out, open(base + ".log", "w") as err:
    p = subprocess.Popen(cmd, stdout=out, stderr=err, preexec_fn=enter)
    _, status, ru = os.wait4(p.pid, 0)
wall = time.time() - t0
s1 = stat()
rec = {"name": os.path.basename(base), "command": " ".join(cmd), "cache_drop": how,
       "exit_status": os.waitstatus_to_exitcode(status), "wall_s": wall,
       "uptime_before": up0, "uptime_after": subprocess.run(["uptime"], capture_output=True,
                                                            text=True).stdout.strip(),
       "cgroup_limit": int(open(f"{cg}/memory.limit_in_bytes").read()),
       "cgroup_peak": int(open(f"{cg}/memory.max_usage_in_bytes").read()),
       "cgroup_failcnt": int(open(f"{cg}/memory.failcnt").read()),
       "read_bytes": ru.ru_inblock * 512, "major_faults": ru.ru_majflt,
       "max_rss": ru.ru_maxrss * 1024,
       "memory_stat_delta": {k: s1[k] - s0.get(k, 0) for k in
                             ("total_pgpgin", "total_pgmajfault", "pgpgin", "pgmajfault")
                             if k in s1}}
json.dump(rec, open(base + ".run.json", "w"))
print(f"  {rec['name']}: exit {rec['exit_status']}, {wall:.1f} s, read {rec['read_bytes']/1e9:.2f} GB, "
      f"cgroup peak {rec['cgroup_peak']/2**30:.2f} GiB | before: {up0} | after: {rec['uptime_after']}",
      file=sys.stderr)
EOF
}

SL_CMD="build/sluice bench -m $MODEL --prompt $PROMPT --gen $GEN --reps 1 --warmup 0 -t $THREADS --seed $SEED --scenario $SCENARIO $SLUICE_FLAGS --json"
LL_CMD="$PY bench/peers/llamacpp_run.py -m $GGUF --trace $WORK/trace-stream.json --prompt $PROMPT --gen $LL_GEN --reps 1 --warmup 0 -t $THREADS --scenario $SCENARIO"
rm -f "$WORK/trace-stream.json"
for r in $(seq "$ROUNDS"); do
    drop_caches > /dev/null
    build/sluice bench --disk "$MODEL" --json > "$R/disk-$r.json"
    echo "stream_peer.sh: round $r: disk $(cat "$R/disk-$r.json")" >&2
    # sluice first in odd rounds, llama.cpp first in even ones (round 1 makes the trace)
    if [ $((r % 2)) = 1 ] || [ ! -s "$WORK/trace-stream.json" ]; then
        # shellcheck disable=SC2086
        run_cg "sluice-$r" $SL_CMD --trace-out "$WORK/trace-stream.json"
        # shellcheck disable=SC2086
        run_cg "llama-$r" timeout "$LL_TIMEOUT" $LL_CMD
    else
        # shellcheck disable=SC2086
        run_cg "llama-$r" timeout "$LL_TIMEOUT" $LL_CMD
        # shellcheck disable=SC2086
        run_cg "sluice-$r" $SL_CMD --trace-out "$WORK/trace-stream.json"
    fi
done

HOST=$(hostname -s 2>/dev/null || echo host)
OUT="bench/results/$SCENARIO-peer-$HOST-$(date -u +%Y%m%dT%H%M%SZ).json"
python3 - "$OUT" "$R" "$ROUNDS" "$SL_CMD" "$LL_CMD" "$LIMIT" "${LLAMA_BUILD_NOTE:-}" <<'EOF'
import json, os, platform, sys
out, R, rounds, sl_cmd, ll_cmd, limit, note = sys.argv[1:8]
rounds = int(rounds)
def rd(name):
    try:
        o = json.loads(open(os.path.join(R, name + ".json")).read().strip().splitlines()[-1])
    except (OSError, IndexError, json.JSONDecodeError):
        o = None
    run = json.load(open(os.path.join(R, name + ".run.json")))
    if o is not None:
        o["run"] = run
    return o, run
disk = [json.load(open(os.path.join(R, f"disk-{r}.json"))) for r in range(1, rounds + 1)]
S = [o for o, _ in (rd(f"sluice-{r}") for r in range(1, rounds + 1)) if o]
Lr, Lfail = [], []
for r in range(1, rounds + 1):
    o, run = rd(f"llama-{r}")
    (Lr.append(o) if o else Lfail.append(run))
if not S:
    sys.exit("stream_peer.sh: no sluice run succeeded")
avg = lambda rs, k: sum(x[k] for x in rs) / len(rs)
gbs = avg(disk, "disk_read_gbs")
def limit_of(rs):
    b = avg(rs, "disk_bytes_per_token")
    return {"name": "disk read bandwidth (sluice bench --disk: O_DIRECT, random 4 MiB, 8 in flight; "
                    "mean of the rounds) / decode bytes read from disk per token",
            "gbs": gbs, "active_bytes_per_token": b,
            "decode_tps": gbs * 1e9 / b if b > 0 else None,
            "prompt_note": "not computed (the prompt also reads from disk; see the rounds' "
                           "prompt bytes)"}
res = {
    "scenario": "a3b-cpu-stream", "kind": "peer",
    "machine": {"cpu": S[0]["cpu"], "n_cpus": S[0]["n_cpus"], "kernel": platform.release(),
                "loadavg": open("/proc/loadavg").read().split()[:3]},
    "cgroup": {"version": "v1 memory", "limit_in_bytes": int(limit)},
    "disk": disk,
    "limit": limit_of(S),
    "sluice": {"command": sl_cmd, "rounds": S,
               "prompt_tps": avg(S, "prompt_tps"), "decode_tps": avg(S, "decode_tps")},
    "peers": [],
}
if Lr:
    res["peers"].append({
        "name": f"llama.cpp mmap -t {Lr[0]['threads']}", "version": Lr[0]["version"],
        "build": note or "llama-cpp-python (LLAMA_CPP_LIB_PATH=" +
                 os.environ.get("LLAMA_CPP_LIB_PATH", "?") + ")",
        "weights": "same weights: sluice export-gguf (q4->Q4_1, bf16->BF16)",
        "command": ll_cmd, "flags": Lr[0]["flags"], "rounds": Lr,
        "prompt_tps": avg(Lr, "prompt_tps"), "decode_tps": avg(Lr, "decode_tps"),
        "limit": limit_of(Lr)})
res["failed_peer_runs"] = Lfail
json.dump(res, open(out, "w"), indent=1)
s = res["sluice"]
print(f"disk {gbs:.2f} GB/s; sluice prompt {s['prompt_tps']:.2f}, decode {s['decode_tps']:.2f} tok/s "
      f"({s['rounds'][0]['disk_bytes_per_token']/2**20:.0f} MiB/token from disk, "
      f"{100 * s['decode_tps'] / res['limit']['decode_tps']:.0f}% of its disk limit "
      f"{res['limit']['decode_tps']:.2f})", file=sys.stderr)
for p in res["peers"]:
    pl = p["limit"]
    print(f"{p['name']}: prompt {p['prompt_tps']:.2f}, decode {p['decode_tps']:.2f} tok/s "
          f"({pl['active_bytes_per_token']/2**20:.0f} MiB/token from disk"
          + (f", {100 * p['decode_tps'] / pl['decode_tps']:.0f}% of its disk limit {pl['decode_tps']:.2f}"
             if pl["decode_tps"] else "") +
          f") | ratio sluice/llama.cpp: prompt {s['prompt_tps'] / p['prompt_tps']:.2f}, "
          f"decode {s['decode_tps'] / p['decode_tps']:.2f}", file=sys.stderr)
for f in Lfail:
    print(f"llama.cpp run failed: {f}", file=sys.stderr)
print(f"stream_peer.sh: -> {out}", file=sys.stderr)
EOF
