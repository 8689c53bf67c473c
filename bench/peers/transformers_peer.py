#!/usr/bin/env python3
"""transformers_peer.py — the HuggingFace transformers peer of `sluice bench`
for the GPU scenarios (a3b-gpu, a17b-gpu-stream in ../shared/DESIGN.md), run
on the GPU machine where torch and transformers are installed.

What it measures, like tools/cli_bench.c: the same token trace (JSON array
from `sluice bench --trace-out`), a prompt of --prompt ids in one forward
pass, then --gen ids one at a time with the KV cache (ids from the trace, so
both engines route the same tokens); --warmup untimed repetitions, --reps
timed ones; prompt and decode tok/s mean ± sd; one JSON object on stdout.

Modes (--mode):
  gpu      the whole model on one GPU (device_map={"": 0}) — a3b-gpu.
  offload  device_map="auto" with --gpu-mem / --cpu-mem caps and
           offload_folder for what fits neither: accelerate's CPU/disk
           offload, the transformers answer for models larger than the GPU.

Weights: an HF checkpoint directory (config.json + safetensors) — the same
weights as a sluice model converted from it with `sluice convert`. A
synthetic sluice model has no HF twin yet (see docs/benchmarks.md, known
gaps): its weights are q4, which transformers cannot load bit-identically.

What it is not: a quality check (bench/peers/check_gguf.py and the golden
tests do that). Status: written, not yet run (device time was reserved for
other work when it was written).
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hf", required=True, help="HF checkpoint directory")
    ap.add_argument("--trace", required=True, help="JSON array of token ids")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--mode", choices=["gpu", "offload"], default="gpu")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--gpu-mem", default="70GiB", help="offload: GPU memory cap")
    ap.add_argument("--cpu-mem", default="100GiB", help="offload: host memory cap")
    ap.add_argument("--offload-folder", default="/tmp/hf-offload")
    ap.add_argument("--scenario", default="")
    a = ap.parse_args()

    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    trace = json.load(open(a.trace))
    if len(trace) < a.prompt + a.gen:
        sys.exit(f"transformers_peer: trace has {len(trace)} ids, need {a.prompt + a.gen}")
    dtype = getattr(torch, a.dtype)
    kw = {"torch_dtype": dtype}
    if a.mode == "gpu":
        kw["device_map"] = {"": 0}
    else:
        kw.update(device_map="auto", max_memory={0: a.gpu_mem, "cpu": a.cpu_mem},
                  offload_folder=a.offload_folder)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(a.hf, **kw).eval()
    load_s = time.perf_counter() - t0
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    n_vocab = model.config.vocab_size
    if max(trace[:a.prompt + a.gen]) >= n_vocab:
        sys.exit("transformers_peer: trace ids exceed the model's vocabulary")
    print(f"device: {dev}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"mode {a.mode}", file=sys.stderr)
    print(f"model: {a.hf} | {model.config.model_type}, {model.config.num_hidden_layers} layers, "
          f"loaded in {load_s:.1f} s", file=sys.stderr)
    first = next(model.parameters()).device
    ids = torch.tensor([trace[:a.prompt + a.gen]], device=first)

    def sync():
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    pp, tg, last = [], [], None
    with torch.inference_mode():
        for r in range(a.warmup + a.reps):
            sync()
            t0 = time.perf_counter()
            out = model(input_ids=ids[:, :a.prompt], use_cache=True)
            sync()
            t1 = time.perf_counter()
            past = out.past_key_values
            for i in range(a.gen):
                out = model(input_ids=ids[:, a.prompt + i:a.prompt + i + 1], past_key_values=past,
                            use_cache=True)
                past = out.past_key_values
            sync()
            t2 = time.perf_counter()
            last = out.logits[0, -1].float().cpu()
            p, g = a.prompt / (t1 - t0), (a.gen / (t2 - t1) if a.gen else 0)
            warm = r < a.warmup
            print(f"{'warm-up' if warm else 'rep'}: prompt {p:.2f} tok/s, decode {g:.2f} tok/s",
                  file=sys.stderr)
            if not warm:
                pp.append(p)
                tg.append(g)
    sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0
    print(json.dumps({
        "scenario": a.scenario, "engine": "transformers",
        "version": f"transformers {transformers.__version__}, torch {torch.__version__}",
        "flags": {"mode": a.mode, "dtype": a.dtype, "gpu_mem": a.gpu_mem, "cpu_mem": a.cpu_mem,
                  "hf_device_map": getattr(model, "hf_device_map", None) and
                  sorted(set(str(v) for v in model.hf_device_map.values()))},
        "device": dev, "host": platform.node(), "model_path": a.hf,
        "prompt_tokens": a.prompt, "gen_tokens": a.gen, "reps": a.reps, "warmup": a.warmup,
        "prompt_tps": statistics.mean(pp), "prompt_tps_sd": sd(pp),
        "decode_tps": statistics.mean(tg), "decode_tps_sd": sd(tg),
        "final_argmax": int(last.argmax()), "load_seconds": load_s,
    }))


if __name__ == "__main__":
    main()
