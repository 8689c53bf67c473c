#!/usr/bin/env python3
"""routing_report.py — expert-routing statistics from a SLUICE_DUMP directory.

What it is: reads dir/L<i>.moe_topk.i32 (for every evaluated token, the k
int32 expert ids the router of layer i picked, in evaluation order) as
written by any sluice command run with SLUICE_DUMP=dir, and prints per layer
and overall, as a Markdown table:

  * gini      Gini coefficient of the per-expert selection counts (0 =
              uniform, 1 = one expert takes everything);
  * top20%    share of all selections that go to the most used 20% of the
              experts;
  * unused    experts never selected;
  * reuse@1   fraction of a token's k experts that the previous token also
              used (what a one-token-old expert cache would hold);
  * dist      median / mean reuse distance: for each selection, tokens since
              the same expert was last selected in the layer (first use not
              counted);
  * <=4 / <=16  fraction of selections whose expert was used within the last
              4 / 16 tokens (an upper bound on the hit rate of a cache of
              4k / 16k experts of the layer holding recent ones).

What it is not: it runs no model; the counts are whatever the dumped run
evaluated (prompt and generated tokens alike, in order). Usage:

  SLUICE_DUMP=/tmp/d build/sluice perplexity -m M --text-file F --max-tokens 2048
  python3 tools/routing_report.py /tmp/d --k 4 --experts 32
"""
import argparse
import glob
import os
import re
import statistics
import struct
import sys


def gini(counts):
    xs = sorted(counts)
    n, tot = len(xs), sum(xs)
    if n == 0 or tot == 0:
        return 0.0
    cum = sum((i + 1) * x for i, x in enumerate(xs))
    return (2 * cum) / (n * tot) - (n + 1) / n


def layer_stats(ids, k, n_experts):
    if len(ids) % k:
        raise SystemExit(f"{len(ids)} ids is not a multiple of k={k}")
    toks = [ids[i:i + k] for i in range(0, len(ids), k)]
    counts = [0] * n_experts
    for t in toks:
        for e in t:
            if not 0 <= e < n_experts:
                raise SystemExit(f"expert id {e} outside [0, {n_experts})")
            counts[e] += 1
    srt = sorted(counts, reverse=True)
    n_top = max(1, round(0.2 * n_experts))
    last, dists, reuse, pairs = {}, [], 0, 0
    for i, t in enumerate(toks):
        if i:
            reuse += len(set(t) & set(toks[i - 1]))
            pairs += k
        for e in t:
            if e in last:
                dists.append(i - last[e])
        for e in t:
            last[e] = i
    sel = len(toks) * k
    return {
        "tokens": len(toks), "gini": gini(counts),
        "top20": sum(srt[:n_top]) / sel, "unused": counts.count(0),
        "reuse1": reuse / pairs if pairs else 0.0,
        "dist_median": statistics.median(dists) if dists else 0,
        "dist_mean": statistics.fmean(dists) if dists else 0.0,
        "le4": sum(d <= 4 for d in dists) / sel,
        "le16": sum(d <= 16 for d in dists) / sel,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dump_dir")
    ap.add_argument("--k", type=int, required=True, help="experts per token")
    ap.add_argument("--experts", type=int, required=True, help="experts per layer")
    a = ap.parse_args()
    files = glob.glob(os.path.join(a.dump_dir, "L*.moe_topk.i32"))
    layers = sorted((int(re.search(r"L(\d+)\.", os.path.basename(f)).group(1)), f)
                    for f in files)
    if not layers:
        sys.exit(f"{a.dump_dir}: no L<i>.moe_topk.i32 files (run with SLUICE_DUMP)")
    rows = []
    for li, f in layers:
        with open(f, "rb") as fh:
            raw = fh.read()
        if len(raw) % 4:
            sys.exit(f"{f}: {len(raw)} bytes is not a whole number of int32")
        rows.append((li, layer_stats(struct.unpack(f"<{len(raw) // 4}i", raw),
                                     a.k, a.experts)))
    print(f"tokens per layer: {rows[0][1]['tokens']}, k = {a.k}, "
          f"experts = {a.experts}\n")
    print("| layer | gini | top20% share | unused | reuse@1 | dist median / mean "
          "| used within 4 | within 16 |")
    print("|---|---|---|---|---|---|---|---|")
    for li, s in rows:
        print(f"| {li} | {s['gini']:.3f} | {s['top20']:.1%} | {s['unused']} | "
              f"{s['reuse1']:.1%} | {s['dist_median']:g} / {s['dist_mean']:.1f} | "
              f"{s['le4']:.1%} | {s['le16']:.1%} |")
    m = lambda key: statistics.fmean(s[key] for _, s in rows)  # noqa: E731
    print(f"| mean | {m('gini'):.3f} | {m('top20'):.1%} | {m('unused'):.1f} | "
          f"{m('reuse1'):.1%} | {m('dist_median'):g} / {m('dist_mean'):.1f} | "
          f"{m('le4'):.1%} | {m('le16'):.1%} |")


if __name__ == "__main__":
    main()
