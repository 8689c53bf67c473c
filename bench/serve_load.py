#!/usr/bin/env python3
"""Load benchmark of `sluice serve` (not a test): aggregate generated tok/s
with 1, 4 and 16 concurrent clients, each sending completions requests
(distinct prompts, temperature 0, ignore_eos so every answer has
--tokens tokens) for --seconds per level. Starts the server itself on a free
loopback port with --max-seqs 16. Prints a Markdown table for
docs/benchmarks.md. Standard library only (http.client), so the client
costs little next to the server.

Usage: python3 bench/serve_load.py [--sluice build/sluice] [--model build/default.sluice]
                                   [--tokens 32] [--seconds 10] [--levels 1,4,16] [-- server flags]
"""
import argparse
import http.client
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sluice", default="build/sluice")
    ap.add_argument("--model", default="build/default.sluice")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--levels", default="1,4,16")
    ap.add_argument("server_flags", nargs="*")
    a = ap.parse_args()
    d = tempfile.mkdtemp()
    pf = os.path.join(d, "port")
    srv = subprocess.Popen([a.sluice, "serve", "-m", a.model, "--port", "0", "--port-file", pf,
                            "--max-seqs", "16", *a.server_flags], stderr=subprocess.DEVNULL)
    try:
        while not (os.path.exists(pf) and open(pf).read().strip()):
            if srv.poll() is not None:
                sys.exit("server exited")
            time.sleep(0.05)
        port = int(open(pf).read())
        rows = []
        for level in [int(x) for x in a.levels.split(",")]:
            done = [0] * level
            lat = []
            stop_at = time.time() + a.seconds

            def client(k):
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
                i = 0
                while time.time() < stop_at:
                    body = json.dumps({"prompt": f"Client {k} request {i}: once upon a time",
                                       "max_tokens": a.tokens, "temperature": 0, "ignore_eos": True})
                    t0 = time.time()
                    c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
                    r = json.loads(c.getresponse().read())
                    lat.append(time.time() - t0)
                    done[k] += r["usage"]["completion_tokens"]
                    i += 1
                c.close()

            t0 = time.time()
            th = [threading.Thread(target=client, args=(k,)) for k in range(level)]
            for t in th:
                t.start()
            for t in th:
                t.join()
            wall = time.time() - t0
            lat.sort()
            rows.append((level, sum(done), wall, sum(done) / wall, lat[len(lat) // 2] if lat else 0))
            print(f"clients {level}: {sum(done)} tokens in {wall:.1f} s = {sum(done) / wall:.1f} tok/s",
                  file=sys.stderr)
        print(f"\nMachine: {platform.machine()}, {os.cpu_count()} CPUs; model {a.model}; "
              f"{a.tokens} tokens per request, temperature 0\n")
        print("| clients | tokens | wall s | aggregate tok/s | median request s |")
        print("|---:|---:|---:|---:|---:|")
        for lv, tok, wall, tps, med in rows:
            print(f"| {lv} | {tok} | {wall:.1f} | {tps:.1f} | {med:.2f} |")
    finally:
        srv.terminate()
        srv.wait()


if __name__ == "__main__":
    main()
