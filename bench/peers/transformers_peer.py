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
           offload_folder for what fits neither: the CPU/disk offload of
           transformers (accelerate hooks), its answer for models larger
           than the GPU. Without CUDA only the CPU and disk caps apply.
  cpu      the whole model on the CPU: a smoke test of this script on a
           machine without a GPU (tests, not a benchmark).

Weights: an HF checkpoint directory (config.json + safetensors): for the
synthetic models the `sluice export-hf` export of the same .sluice file
(q8/q4 experts dequantized exactly, stored bf16; bench/peers/check_hf.py
compares the logits).

What it is not: a quality check (bench/peers/check_hf.py, check_gguf.py and
the golden tests do that). Run on CPU here (tiny export, transformers 5.24);
the GPU modes run from bench/peers/gpu_peers.sh on the GPU machine.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time


def placement(model):
    """Where the modules landed: {device: count} of hf_device_map, or None."""
    m = getattr(model, "hf_device_map", None)
    if not m:
        return None
    out = {}
    for v in m.values():
        out[str(v)] = out.get(str(v), 0) + 1
    return out


def offloaded_bytes(model):
    """Parameter bytes placed on "cpu" or "disk" by device_map: what the
    offload hooks copy to the GPU on every forward pass (0 if none)."""
    m = getattr(model, "hf_device_map", None) or {}
    n = 0
    for name, dev in m.items():
        if str(dev) in ("cpu", "disk"):
            mod = model.get_submodule(name) if name else model
            n += sum(p.numel() * p.element_size() for p in mod.parameters())
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hf", required=True, help="HF checkpoint directory")
    ap.add_argument("--trace", required=True, help="JSON array of token ids")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--mode", choices=["gpu", "offload", "cpu"], default="gpu")
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
    cuda = torch.cuda.is_available()
    if a.mode == "gpu" and not cuda:
        sys.exit("transformers_peer: --mode gpu needs CUDA (torch.cuda.is_available() is False)")
    # transformers >= 4.56 calls it dtype; older ones torch_dtype
    major_minor = tuple(int(x) for x in transformers.__version__.split(".")[:2])
    kw = {"dtype" if major_minor >= (4, 56) else "torch_dtype": dtype}
    try:
        import accelerate  # noqa: F401  (device_map needs it)
        have_acc = True
    except ImportError:
        have_acc = False
    move_to = None
    if a.mode == "gpu":
        if have_acc:
            kw["device_map"] = {"": 0}
        else:  # load on the CPU, then move: same placement, no accelerate
            move_to = "cuda"
    elif a.mode == "cpu":
        pass
    elif not have_acc:
        sys.exit("transformers_peer: --mode offload needs the accelerate package "
                 "(pip install accelerate)")
    else:
        mm = {"cpu": a.cpu_mem}
        if cuda:
            mm[0] = a.gpu_mem
        kw.update(device_map="auto", max_memory=mm, offload_folder=a.offload_folder)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(a.hf, **kw).eval()
    if move_to:
        model = model.to(move_to)
    load_s = time.perf_counter() - t0
    dev = torch.cuda.get_device_name(0) if cuda else "cpu"
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
        if cuda:
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
                  "hf_device_map": placement(model)},
        "gpu_peak_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "offloaded_bytes": offloaded_bytes(model),
        "param_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "device": dev, "host": platform.node(), "model_path": a.hf,
        "prompt_tokens": a.prompt, "gen_tokens": a.gen, "reps": a.reps, "warmup": a.warmup,
        "prompt_tps": statistics.mean(pp), "prompt_tps_sd": sd(pp),
        "decode_tps": statistics.mean(tg), "decode_tps_sd": sd(tg),
        "final_argmax": int(last.argmax()), "load_seconds": load_s,
    }))


if __name__ == "__main__":
    main()
