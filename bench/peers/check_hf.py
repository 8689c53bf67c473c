#!/usr/bin/env python3
"""check_hf.py — proves that `sluice export-hf` writes a checkpoint HF
transformers loads as the same model: the logits of transformers on the
export and of `sluice logits` on the original .sluice file, on one token
sequence, compared per position (cosine, max |Δ| / max |logit|, argmax).

    check_hf.py --sluice build/sluice --model M.sluice --hf EXPORT_DIR
                [--tokens 1,2,3] [--dtype float32|bfloat16] [--device cpu|cuda]

Prints one JSON object on stdout (the "logits_check" of a peer result, see
bench/report.py); exits 1 when the minimum cosine is below --min-cosine.
One position can sit on a near-tie of the router (4th and 5th expert within
1e-5 in probability): different arithmetic then picks another expert there
and that position's cosine drops to ~0.99 — which is why the median is
reported too.
Differences come from arithmetic (sluice quantizes activations for q4/q8
matvecs; transformers runs in --dtype) and from the bf16 rounding of
dequantized q8/q4 experts in a bf16 export (none with export-hf --dtype f32).

What it is not: a benchmark. Needs torch + transformers (the /tmp/tv venv
here, the system python on the GPU machine).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sluice", default="build/sluice")
    ap.add_argument("--model", required=True, help=".sluice file")
    ap.add_argument("--hf", required=True, help="export-hf output directory")
    ap.add_argument("--tokens", default="1,5,77,200,31,9,15,60,70,42,3,11")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--min-cosine", type=float, default=0.999)
    a = ap.parse_args()

    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    ids = [int(t) for t in a.tokens.split(",")]
    with tempfile.TemporaryDirectory() as td:
        out = os.path.join(td, "l.f32")
        subprocess.run([a.sluice, "logits", "-m", a.model, "--tokens", a.tokens, "-o", out],
                       check=True, stderr=subprocess.DEVNULL)
        with open(out, "rb") as f:
            s = torch.frombuffer(bytearray(f.read()), dtype=torch.float32)
        s = s.double().reshape(len(ids), -1)
    model = AutoModelForCausalLM.from_pretrained(a.hf, dtype=getattr(torch, a.dtype)).to(a.device)
    model.eval()
    with torch.inference_mode():
        h = model(input_ids=torch.tensor([ids], device=a.device)).logits[0].double().cpu()
    if h.shape != s.shape:
        sys.exit(f"check_hf: logits shapes differ: transformers {tuple(h.shape)}, "
                 f"sluice {tuple(s.shape)}")
    cos = (h * s).sum(1) / (h.norm(dim=1) * s.norm(dim=1))
    res = {
        "model": a.model, "hf": a.hf, "positions": len(ids), "n_vocab": int(s.shape[1]),
        "transformers": transformers.__version__, "torch": torch.__version__,
        "dtype": a.dtype, "device": a.device,
        "max_rel_diff": float((h - s).abs().max() / s.abs().max()),
        "min_cosine": float(cos.min()),
        "median_cosine": float(cos.median()),
        "argmax_agree": f"{int((h.argmax(1) == s.argmax(1)).sum())}/{len(ids)}",
    }
    print(json.dumps(res))
    if res["min_cosine"] < a.min_cosine:
        print(f"check_hf: min cosine {res['min_cosine']:.6f} < {a.min_cosine}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
