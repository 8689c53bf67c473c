#!/usr/bin/env python3
"""llamacpp_run.py — the llama.cpp peer of `sluice bench`, through the
low-level C API of the llama-cpp-python package (llama_decode on token ids).

What it measures, the same way as tools/cli_bench.c: the same token trace
(a JSON array written by `sluice bench --trace-out`), a prompt of --prompt
ids evaluated as one batch, then --gen ids evaluated one at a time (the ids
come from the trace, not from sampling, so both engines route the same
tokens); --warmup untimed repetitions, then --reps timed ones with the KV
cache cleared in between; prompt and decode tok/s mean ± sd; an FNV-1a hash
of the final logits (not comparable across engines: summation order
differs). One JSON object on stdout; progress on stderr.

Second mode, --logits OUT.f32: evaluates --tokens (comma-separated) as one
batch and writes every position's logits as float32 rows (the layout of
`sluice logits -o`), to check that an exported GGUF computes what sluice
computes (bench/peers/check_gguf.py).

What it is not: a wrapper over llama-cpp-python's high-level Llama class
(which adds sampling and detokenisation work per token).
"""
import argparse
import ctypes
import json
import os
import platform
import statistics
import sys
import time

import llama_cpp as L


def fnv1a64(data: bytes) -> str:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def io_read_bytes() -> int:
    """Bytes this process (all its threads) caused to be read from storage
    (/proc/self/io read_bytes: page-fault readahead on an mmap included);
    -1 where the kernel does not expose it."""
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("read_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown cpu"


class Engine:
    def __init__(self, path, n_ctx, n_batch, n_threads, use_mmap=True, n_gpu_layers=0,
                 extra_bufts=True):
        L.llama_backend_init()
        mp = L.llama_model_default_params()
        mp.use_mmap = use_mmap
        mp.n_gpu_layers = n_gpu_layers
        mp.use_extra_bufts = extra_bufts
        self.model = L.llama_model_load_from_file(path.encode(), mp)
        if not self.model:
            sys.exit(f"llamacpp_run: cannot load {path}")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        cp = L.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = n_batch
        cp.n_ubatch = n_batch
        cp.n_threads = n_threads
        cp.n_threads_batch = n_threads
        self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            sys.exit("llamacpp_run: cannot create a context")
        self.batch = L.llama_batch_init(max(n_batch, 1), 0, 1)
        self.flags = {"n_ctx": n_ctx, "n_batch": n_batch, "n_ubatch": n_batch,
                      "n_threads": n_threads, "use_mmap": use_mmap, "n_gpu_layers": n_gpu_layers,
                      "flash_attn": "default", "use_extra_bufts": extra_bufts}

    def reset(self):
        L.llama_memory_clear(L.llama_get_memory(self.ctx), True)

    def decode(self, ids, pos0, all_logits=False):
        b = self.batch
        b.n_tokens = len(ids)
        for i, t in enumerate(ids):
            b.token[i] = t
            b.pos[i] = pos0 + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = 1 if (all_logits or i == len(ids) - 1) else 0
        rc = L.llama_decode(self.ctx, b)
        if rc != 0:
            sys.exit(f"llamacpp_run: llama_decode returned {rc}")

    def logits_row(self, i):
        p = L.llama_get_logits_ith(self.ctx, i)
        return ctypes.string_at(p, 4 * self.n_vocab)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-m", "--model", required=True, help="GGUF file")
    ap.add_argument("--trace", help="JSON array of token ids (sluice bench --trace-out)")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("-t", "--threads", type=int, default=os.cpu_count())
    ap.add_argument("--n-gpu-layers", type=int, default=0)
    ap.add_argument("--no-mmap", action="store_true")
    ap.add_argument("--no-extra-bufts", action="store_true",
                    help="no AMX/repacked weight buffers (the AMX Q8_0 kernel dies with SIGILL "
                         "on VMs that advertise AMX without enabling it)")
    ap.add_argument("--scenario", default="")
    ap.add_argument("--tokens", help="comma-separated ids for --logits")
    ap.add_argument("--logits", help="write every position's logits (float32) here")
    a = ap.parse_args()

    if a.logits:
        ids = [int(x) for x in a.tokens.split(",")]
        e = Engine(a.model, len(ids) + 1, len(ids), a.threads, not a.no_mmap, a.n_gpu_layers,
                   not a.no_extra_bufts)
        e.decode(ids, 0, all_logits=True)
        with open(a.logits, "wb") as f:
            for i in range(len(ids)):
                f.write(e.logits_row(i))
        return

    trace = json.load(open(a.trace))
    io0, tl0 = io_read_bytes(), time.perf_counter()
    if len(trace) < a.prompt + a.gen:
        sys.exit(f"llamacpp_run: trace has {len(trace)} ids, need {a.prompt + a.gen}")
    e = Engine(a.model, a.prompt + a.gen, a.prompt, a.threads, not a.no_mmap, a.n_gpu_layers,
               not a.no_extra_bufts)
    io_load, load_s = io_read_bytes() - io0, time.perf_counter() - tl0
    sysinfo = L.llama_print_system_info().decode(errors="replace").strip()
    print(f"device: {cpu_model()}, {os.cpu_count()} cpus, llama.cpp ({sysinfo}), "
          f"{a.threads} threads", file=sys.stderr)
    print(f"model: {a.model} | n_vocab {e.n_vocab}", file=sys.stderr)
    pp, tg = [], []
    io_pp, io_tg = 0, 0
    h = ""
    for r in range(a.warmup + a.reps):
        e.reset()
        b0 = io_read_bytes()
        t0 = time.perf_counter()
        e.decode(trace[:a.prompt], 0)
        L.llama_synchronize(e.ctx)
        t1 = time.perf_counter()
        b1 = io_read_bytes()
        for i in range(a.gen):
            e.decode([trace[a.prompt + i]], a.prompt + i)
        L.llama_synchronize(e.ctx)
        t2 = time.perf_counter()
        b2 = io_read_bytes()
        h = fnv1a64(e.logits_row(-1))
        p, g = a.prompt / (t1 - t0), (a.gen / (t2 - t1) if a.gen else 0)
        warm = r < a.warmup
        print(f"{'warm-up' if warm else 'rep'} {r + 1 if warm else r - a.warmup + 1}: "
              f"prompt {p:.2f} tok/s, decode {g:.2f} tok/s, logits hash {h}", file=sys.stderr)
        if not warm:
            pp.append(p)
            tg.append(g)
            io_pp += b1 - b0
            io_tg += b2 - b1
    sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0
    out = {
        "scenario": a.scenario, "engine": "llama.cpp",
        "version": f"llama-cpp-python {L.__version__}",
        "system_info": sysinfo, "flags": e.flags,
        "model_path": a.model, "cpu": cpu_model(), "n_cpus": os.cpu_count(),
        "threads": a.threads, "prompt_tokens": a.prompt, "gen_tokens": a.gen,
        "reps": a.reps, "warmup": a.warmup,
        "prompt_tps": statistics.mean(pp), "prompt_tps_sd": sd(pp),
        "decode_tps": statistics.mean(tg), "decode_tps_sd": sd(tg),
        "logits_hash": h,
        "load_seconds": load_s,
        # storage reads (/proc/self/io read_bytes), per timed token
        "io_read_bytes_load": io_load,
        "prompt_disk_bytes_per_token": io_pp / (a.reps * a.prompt) if a.prompt else 0,
        "disk_bytes_per_token": io_tg / (a.reps * a.gen) if a.gen else 0,
        "loadavg": open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else None,
    }
    print(json.dumps(out))
    print(f"prompt: {out['prompt_tps']:.2f} ± {out['prompt_tps_sd']:.2f} tok/s | decode: "
          f"{out['decode_tps']:.2f} ± {out['decode_tps_sd']:.2f} tok/s", file=sys.stderr)


if __name__ == "__main__":
    main()
