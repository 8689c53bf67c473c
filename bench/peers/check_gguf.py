#!/usr/bin/env python3
"""check_gguf.py — proves that `sluice export-gguf` maps a model onto
llama.cpp's qwen3moe exactly: the same token ids through `sluice logits` and
through llama.cpp (llamacpp_run.py --logits) must give close logits at every
position and the same argmax. Prints one JSON line; exit 1 if a threshold is
missed. Differences come only from arithmetic (llama.cpp quantizes
activations to 8 bits for q4/q8 weights and to bf16 for bf16 weights;
sluice keeps activations in f32 or int8 per its kernels).

usage: check_gguf.py --sluice build/sluice --model M.sluice --gguf M.gguf
                     --python VENV/bin/python [--tokens 1,2,3]
"""
import argparse
import array
import json
import math
import os
import subprocess
import sys
import tempfile

here = os.path.dirname(os.path.abspath(__file__))


def rows(path, n_vocab):
    a = array.array("f")
    with open(path, "rb") as f:
        a.frombytes(f.read())
    return [a[i:i + n_vocab] for i in range(0, len(a), n_vocab)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sluice", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--tokens", default="11,257,3,1024,77,500,9,1999,42,600,1500,8")
    ap.add_argument("--llama-flags", default="", help="extra llamacpp_run.py flags")
    ap.add_argument("--max-rel", type=float, default=0.05,
                    help="max |diff| / max |logit| allowed per row")
    a = ap.parse_args()
    ids = [int(x) for x in a.tokens.split(",")]
    with tempfile.TemporaryDirectory() as d:
        s_out, l_out = os.path.join(d, "s.f32"), os.path.join(d, "l.f32")
        subprocess.run([a.sluice, "logits", "-m", a.model, "--tokens", a.tokens, "-o", s_out,
                        "-t", "1"], check=True)
        subprocess.run([a.python, os.path.join(here, "llamacpp_run.py"), "-m", a.gguf,
                        "--tokens", a.tokens, "--logits", l_out, "-t", "1"] + a.llama_flags.split(),
                       check=True,
                       stderr=subprocess.DEVNULL)
        n_vocab = os.path.getsize(s_out) // 4 // len(ids)
        S, Lr = rows(s_out, n_vocab), rows(l_out, n_vocab)
    worst_rel, argmax_same, cos_min = 0.0, 0, 1.0
    for s, l in zip(S, Lr):
        md = max(abs(x - y) for x, y in zip(s, l))
        scale = max(abs(x) for x in s)
        worst_rel = max(worst_rel, md / scale)
        argmax_same += max(range(n_vocab), key=s.__getitem__) == max(range(n_vocab), key=l.__getitem__)
        dot = sum(x * y for x, y in zip(s, l))
        cos = dot / math.sqrt(sum(x * x for x in s) * sum(y * y for y in l))
        cos_min = min(cos_min, cos)
    res = {"model": a.model, "positions": len(ids), "n_vocab": n_vocab,
           "max_rel_diff": worst_rel, "min_cosine": cos_min,
           "argmax_agree": f"{argmax_same}/{len(ids)}"}
    print(json.dumps(res))
    ok = worst_rel <= a.max_rel and argmax_same == len(ids)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
