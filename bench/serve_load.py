#!/usr/bin/env python3
"""Load benchmark of `sluice serve` (not a test): aggregate generated tok/s
and per-request latency with 1, 4 and 16 concurrent STREAMING clients, and
what continuous batching saves in expert reads.

For each level it starts a fresh `sluice serve` (so every level begins from
the same state: empty prefix cache, cold expert cache) on a free loopback
port, sends one warm-up request, then runs the SAME --requests prompts
(distinct, temperature 0, ignore_eos, --max-tokens each) through `level`
client threads (each takes the next prompt when its stream ends), and reads
/metrics before and after. One JSON line per level on stdout:

  level, requests, gen_tokens, wall_s, tok_s (aggregate generated tok/s),
  latency_s p50/p95 (request start -> last token), ttft_s p50/p95,
  client_tok_s_mean (one stream's tokens / its decode time),
  decode_steps, mean_batch (decode tokens per forward pass),
  expert_bytes_read (from the model file; the expert cache's misses +
  prefetch), expert_bytes_touched (expert bytes the forward passes used),
  expert_loads, and the same three per generated token, cache hit ratio,
  loadavg (1-minute, before and after).

The first line (stderr) names the machine and the command. Standard library
only (http.client), so the clients cost little next to the server.

Usage: python3 bench/serve_load.py [--sluice build/sluice] [--model build/default.sluice]
           [--levels 1,4,16] [--requests 32] [--max-tokens 32] [--max-seqs 16]
           [-- extra server flags, e.g. --ram-cache 64M]
"""
import argparse
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time

WORDS = ["king", "river", "city", "house", "mountain", "priest", "sword", "garden", "sea", "child",
         "temple", "road", "night", "bread", "wind", "stone"]


def prompts(n):
    """n distinct prompts; none shares more than a few tokens with another."""
    out = []
    for i in range(n):
        a, b = WORDS[i % len(WORDS)], WORDS[(i * 7 + 3) % len(WORDS)]
        out.append(f"{a.capitalize()} {i}: the {b} and the {a} went out at dawn, and")
    return out


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def metrics(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    c.close()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def stream_one(port, prompt, max_tokens):
    """One streaming completion; returns (tokens, t_first, t_end) relative to its start."""
    t0 = time.time()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                       "ignore_eos": True, "stream": True,
                       "stream_options": {"include_usage": True}})
    c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError(f"status {r.status}: {r.read()[:200]!r}")
    first, n = None, 0
    while True:
        line = r.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data: "):
            continue
        data = line[6:]
        if data == b"[DONE]":
            break
        ev = json.loads(data)
        if ev.get("error"):
            raise RuntimeError(f"the server failed the request: {ev['error']}")
        if ev.get("usage"):
            n = ev["usage"]["completion_tokens"]
        elif ev.get("choices") and first is None:
            first = time.time() - t0
    c.close()
    return n, first if first is not None else 0.0, time.time() - t0


def start_server(a, d):
    pf = os.path.join(d, "port")
    if os.path.exists(pf):
        os.remove(pf)
    log = open(os.path.join(d, "server.log"), "w")
    cmd = [a.sluice, "serve", "-m", a.model, "--port", "0", "--port-file", pf,
           "--max-seqs", str(a.max_seqs), "--max-queue", "1000", *a.server_flags]
    srv = subprocess.Popen(cmd, stderr=log)
    while not (os.path.exists(pf) and open(pf).read().strip()):
        if srv.poll() is not None:
            sys.exit(f"server exited: {open(os.path.join(d, 'server.log')).read()}")
        time.sleep(0.05)
    return srv, int(open(pf).read()), cmd


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else 0.0


def run_level(a, d, level, ps):
    srv, port, cmd = start_server(a, d)
    try:
        stream_one(port, "Warm-up: the house by the sea", 4)
        la0, m0 = loadavg(), metrics(port)
        results, lock, nxt = [], threading.Lock(), [0]

        def client():
            while True:
                with lock:
                    if nxt[0] >= len(ps):
                        return
                    i = nxt[0]
                    nxt[0] += 1
                results.append(stream_one(port, ps[i], a.max_tokens))

        t0 = time.time()
        th = [threading.Thread(target=client) for _ in range(level)]
        for t in th:
            t.start()
        for t in th:
            t.join()
        wall = time.time() - t0
        m1, la1 = metrics(port), loadavg()
    finally:
        srv.terminate()
        srv.wait(30)

    def dm(k):
        return m1.get(k, 0.0) - m0.get(k, 0.0)

    gen = sum(r[0] for r in results)
    rates = [(r[0] - 1) / (r[2] - r[1]) for r in results if r[0] > 1 and r[2] > r[1]]
    steps = dm("sluice_decode_steps_total")
    hits, misses = dm('sluice_expert_cache_hits_total{tier="ram"}'), dm('sluice_expert_cache_misses_total{tier="ram"}')
    read, touched, loads = dm("sluice_expert_bytes_read_total"), dm("sluice_expert_bytes_touched_total"), dm("sluice_expert_loads_total")
    return {
        "level": level, "requests": len(results), "max_tokens": a.max_tokens, "gen_tokens": int(gen),
        "wall_s": round(wall, 3), "tok_s": round(gen / wall, 2),
        "latency_s": {"p50": round(pct([r[2] for r in results], 0.5), 3),
                      "p95": round(pct([r[2] for r in results], 0.95), 3)},
        "ttft_s": {"p50": round(pct([r[1] for r in results], 0.5), 3),
                   "p95": round(pct([r[1] for r in results], 0.95), 3)},
        "client_tok_s_mean": round(statistics.mean(rates), 2) if rates else None,
        "decode_steps": int(steps),
        "mean_batch": round(dm("sluice_decode_batch_tokens_total") / steps, 2) if steps else 0,
        "expert_bytes_read": int(read), "expert_bytes_touched": int(touched), "expert_loads": int(loads),
        "read_bytes_per_token": round(read / gen) if gen else 0,
        "touched_bytes_per_token": round(touched / gen) if gen else 0,
        "loads_per_token": round(loads / gen, 2) if gen else 0,
        "ram_hit_ratio": round(hits / (hits + misses), 4) if hits + misses else None,
        "loadavg": [la0, la1],
        "server": " ".join(cmd[:4] + cmd[8:]),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sluice", default="build/sluice")
    ap.add_argument("--model", default="build/default.sluice")
    ap.add_argument("--levels", default="1,4,16")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-seqs", type=int, default=16)
    ap.add_argument("server_flags", nargs="*")
    a = ap.parse_args()
    print(f"# {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, loadavg {loadavg()}; "
          f"{' '.join(sys.argv)}", file=sys.stderr)
    ps = prompts(a.requests)
    with tempfile.TemporaryDirectory() as d:
        for level in [int(x) for x in a.levels.split(",")]:
            r = run_level(a, d, level, ps)
            print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
