#!/usr/bin/env python3
"""report.py — turns bench/results/*.json into docs/benchmarks.md tables and
docs/benchmarks/*.png plots (`make bench-report`). Never edit the generated
part by hand: rerun the benchmark, commit its JSON, regenerate.

docs/benchmarks.md has two parts:
  - hand-written prose (methods, caveats, sections whose tools do not emit
    JSON yet), anywhere OUTSIDE the markers below: kept verbatim;
  - the generated part, between
        <!-- BEGIN GENERATED: make bench-report -->
        <!-- END GENERATED -->
    replaced on every run (appended at the end the first time).

Result kinds it understands (the "kind"/"engine" keys):
  - "kind": "peer"    — a scenario run side by side with peers
                        (bench/peers/llamacpp.sh): one table per scenario,
                        columns machine, command, sluice, peer, ratio, limit,
                        % of limit; prompt and decode rows.
  - "engine": "sluice" — a plain `sluice bench --json` line (saved as .json
                        or .jsonl): listed per scenario; results that differ
                        only in cache budget become a tok/s-vs-cache plot.
  - "engine": "disk"   — `sluice bench --disk FILE --json`: physical limits.
  - "kind": "gpu_limits" — bench/peers/gpu_peers.sh: host-to-device (pinned,
                        pageable), device-to-host and device-to-device
                        bandwidth on the GPU machine.
GPU peer results (bench/peers/gpu_peers.sh) are "peer" results whose
machine has a "gpu", whose limit is HBM (resident) or host-to-device
(streaming) bandwidth and whose peers may carry a limit of their own (the
bytes transformers' offload copies per token). Plain sluice results with a
"gpu_cache_bytes" key are plotted against the GPU cache size.
  - "kind": "table"   — any other tool's results: {"kind": "table",
                        "title", "columns": [...], "rows": [[...]], "note"}
                        rendered as is (e.g. bench_matvec once it emits JSON).
Anything else is listed as skipped, never silently dropped.
"""
import argparse
import glob
import json
import os
import sys
import textwrap

BEGIN = "<!-- BEGIN GENERATED: make bench-report -->"
END = "<!-- END GENERATED -->"


def load(paths):
    out = []
    for p in sorted(paths):
        try:
            with open(p) as f:
                text = f.read()
            try:
                objs = [json.loads(text)]
            except json.JSONDecodeError:
                objs = [json.loads(l) for l in text.splitlines() if l.strip()]
        except (OSError, json.JSONDecodeError) as e:
            print(f"report.py: skipping {p}: {e}", file=sys.stderr)
            continue
        for o in objs:
            if isinstance(o.get("bench"), dict) and "engine" not in o:
                # a wrapper from a scenario script: {"config", "flags", ..., "bench": {...}}
                inner = dict(o["bench"])
                inner["config"] = o.get("config") or o.get("flags")
                o = inner
            o["_file"] = os.path.basename(p)
            out.append(o)
    return out


def fmt(x, sd=None, digits=2):
    if x is None:
        return "—"
    s = f"{x:.{digits}f}"
    return s + (f" ± {sd:.{digits}f}" if sd else "")


def machine(o):
    m = o.get("machine", o)
    la = m.get("loadavg")
    load = f", load {la[0]}" if la else ""
    gpu = f"{m['gpu'].split(',')[0]} + " if m.get("gpu") else ""
    return f"{gpu}{m.get('cpu', '?')}, {m.get('n_cpus', '?')} cpus{load}"


def short_cmd(c):
    """Paths shortened to their base names, so that the table stays readable."""
    return " ".join(os.path.basename(w) if "/" in w and not w.startswith("build/") else w
                    for w in c.split())


def sd_of(rounds, key):
    """Spread over the rounds that carry key (a peer's raw lines may not:
    llama-bench's jsonl has avg_ts/stddev_ts instead)."""
    have = [r for r in rounds if key in r]
    v = [r[key] for r in have]
    if len(v) < 2:
        return have[0].get(key + "_sd") if have else None
    m = sum(v) / len(v)
    return (sum((x - m) ** 2 for x in v) / (len(v) - 1)) ** 0.5


def peer_section(scen, runs):
    L = [f"### {scen}: sluice next to its peers", ""]
    L.append("| machine | command | metric | sluice tok/s | peer | peer tok/s | ratio sluice/peer "
             "| limit | % of limit |")
    L.append("|---|---|---|---:|---|---:|---:|---|---:|")
    notes = []
    for o in runs:
        s, lim = o["sluice"], o.get("limit") or {}
        for p in o.get("peers", []):
            for metric, key in (("prompt", "prompt_tps"), ("decode", "decode_tps")):
                sv, pv = s[key], p[key]
                if metric == "decode" and lim.get("decode_tps"):
                    what = f"{lim['name']}: " if lim.get("name") and "gpu" in o.get("machine", {}) else ""
                    lt = (f"{what}{lim['decode_tps']:.2f} tok/s ({lim.get('gbs', 0):.1f} GB/s ÷ "
                          f"{lim.get('active_bytes_per_token', 0) / 2**20:.1f} MiB/token)")
                    # a peer that reads other bytes per token has its own limit
                    pl = p.get("limit") or {}
                    plim = pl.get("decode_tps") or lim["decode_tps"]
                    pct = f"{100 * sv / lim['decode_tps']:.0f}% (peer {100 * pv / plim:.0f}%)"
                    if pl.get("decode_tps"):
                        lt += (f"; peer {plim:.2f} tok/s "
                               f"({pl['active_bytes_per_token'] / 2**20:.1f} MiB/token"
                               f"{', ' + pl['name'] if what and pl.get('name') else ''})")
                else:
                    lt, pct = lim.get("prompt_note", "compute-bound (no memory limit binds)"), "—"
                L.append(f"| {machine(o)} | `{short_cmd(s['command'])}` | {metric} | "
                         f"{fmt(sv, sd_of(s['rounds'], key))} | {p['name']} ({p.get('version', '?')}) "
                         f"| {fmt(pv, sd_of(p['rounds'], key))} | **{sv / pv:.2f}** | {lt} | {pct} |")
        for p in o.get("peers", []):
            notes.append(f"- {o['_file']}: peer command `{short_cmd(p['command'])}`; build: "
                         f"{p.get('build', '?')}; weights: {p.get('weights', '?')}.")
        if o.get("logits_check"):
            c = o["logits_check"]
            notes.append(f"- {o['_file']}: same-weights check on a small model: max |Δlogit| / "
                         f"max |logit| = {c['max_rel_diff']:.4f}, min cosine {c['min_cosine']:.6f}, "
                         f"argmax agrees {c['argmax_agree']}.")
        for p in o.get("peers", []):
            r0 = p["rounds"][0]
            if r0.get("offloaded_bytes") or r0.get("gpu_peak_bytes"):
                notes.append(f"- {o['_file']}: {p['name']}: parameters "
                             f"{r0.get('param_bytes', 0) / 2**30:.2f} GiB, offloaded to the host "
                             f"{r0.get('offloaded_bytes', 0) / 2**30:.2f} GiB, GPU peak "
                             f"{(r0.get('gpu_peak_bytes') or 0) / 2**30:.2f} GiB, load "
                             f"{r0.get('load_seconds', 0):.0f} s.")
        st = s["rounds"][0].get("decode_ms_per_token")
        if st:
            notes.append(f"- {o['_file']}: sluice decode ms/token by stage (round 1): " +
                         ", ".join(f"{k} {v:.2f}" for k, v in st.items()) + ".")
    return L + [""] + notes + [""]


def sluice_section(scen, runs, plot_dir, rel_dir):
    L = [f"### {scen}: sluice bench", "",
         "| machine | model | config | cache budget | prompt tok/s | decode tok/s | active MiB/token "
         "| GB/s achieved | limit tok/s | % of limit | hit rate (GPU cache when on a GPU) "
         "| disk MiB/token | logits hash |",
         "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for o in runs:
        lim = o.get("limit_tps") or 0
        which = o.get("limit_tier") or ("bench" if o.get("gpu_cache_bytes") else "RAM")
        if o.get("disk_limit_tps") and o["disk_limit_tps"] < lim:
            lim, which = o["disk_limit_tps"], "disk"
        cfg = o.get("config") or "—"
        L.append(f"| {machine(o)} | {o.get('model', '?')} | {cfg} | "
                 f"{cache_of(o)[0] / 2**20:.1f} MiB{' GPU' if cache_of(o)[1] == 'GPU' else ''} | "
                 f"{fmt(o['prompt_tps'], o.get('prompt_tps_sd'))} | "
                 f"{fmt(o['decode_tps'], o.get('decode_tps_sd'))} | "
                 f"{o.get('active_bytes_per_token', 0) / 2**20:.1f} | {fmt(o.get('achieved_gbs'))} | "
                 f"{fmt(lim)} ({which}) | {100 * o['decode_tps'] / lim:.0f}% | "
                 f"{100 * o.get('gpu_hit_rate_decode', o.get('cache_hit_rate', 0)):.1f}% | "
                 f"{o.get('disk_bytes_per_token', 0) / 2**20:.2f} | `{o.get('logits_hash', '')}` |"
                 if lim else
                 f"| {machine(o)} | {o.get('model', '?')} | {cfg} | — | {fmt(o['prompt_tps'])} | "
                 f"{fmt(o['decode_tps'])} | — | — | — | — | — | — | `{o.get('logits_hash', '')}` |")
    L.append("")
    by_model = {}
    for o in runs:
        if "cache_budget_bytes" in o:
            by_model.setdefault(o.get("model", "?"), []).append(o)
    for i, (model, rs) in enumerate(by_model.items()):
        sizes = sorted({cache_of(r)[0] for r in rs})
        if len(sizes) < 2:
            continue
        png = f"{scen}-cache-{i}.png"
        if plot_cache(rs, os.path.join(plot_dir, png), f"{scen}: {model}"):
            L += [f"![decode tok/s against expert cache size]({rel_dir}/{png})", ""]
    return L


def cache_of(r):
    """(bytes, tier) of the cache a run varies: the GPU expert cache when the
    result says so (gpu_peers.sh), else the RAM expert cache."""
    if r.get("gpu_cache_bytes"):
        return r["gpu_cache_bytes"], "GPU"
    return r.get("cache_budget_bytes", 0), "RAM"


def plot_cache(rs, path, title):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("report.py: matplotlib missing: no plots (pip install matplotlib)", file=sys.stderr)
        return False
    rs = sorted(rs, key=lambda r: cache_of(r)[0])
    eb = rs[0].get("expert_bytes") or 1
    x = [100 * min(cache_of(r)[0], eb) / eb for r in rs]
    tier = cache_of(rs[0])[1]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.errorbar(x, [r["decode_tps"] for r in rs], yerr=[r.get("decode_tps_sd", 0) for r in rs],
                marker="o", label="decode")
    ax.errorbar(x, [r["prompt_tps"] for r in rs], yerr=[r.get("prompt_tps_sd", 0) for r in rs],
                marker="s", label="prompt")
    ax.set_xlabel(f"{'GPU ' if tier == 'GPU' else ''}expert cache (% of expert bytes)")
    ax.set_ylabel("tok/s")
    ax.set_title(textwrap.fill(title, 90), fontsize=7)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return True


def generate(results, plot_dir, rel_dir):
    L = [BEGIN, "", "## Results (generated)", "",
         "Generated by `make bench-report` (bench/report.py) from bench/results/*.json — edit "
         "the JSON's producer, not this part. Ratios are sluice ÷ peer on the same machine, "
         "in the same script run, on the same weights and token trace.", ""]
    peers, plain, disks, tables, skipped, gpus = {}, {}, [], [], [], []
    for o in results:
        if o.get("kind") == "peer":
            peers.setdefault(o["scenario"], []).append(o)
        elif o.get("kind") == "gpu_limits":
            gpus.append(o)
        elif o.get("kind") == "table":
            tables.append(o)
        elif o.get("engine") == "sluice":
            plain.setdefault(o.get("scenario") or "unnamed", []).append(o)
        elif o.get("engine") == "disk":
            disks.append(o)
        else:
            skipped.append(o["_file"])
    for scen in sorted(peers):
        L += peer_section(scen, peers[scen])
    for scen in sorted(plain):
        L += sluice_section(scen, plain[scen], plot_dir, rel_dir)
    if disks:
        L += ["### Physical limits: disk read bandwidth", "",
              "| file | reads in flight | block | GB/s (O_DIRECT, random) |", "|---|---:|---:|---:|"]
        L += [f"| {os.path.basename(d['disk_file'])} | {d['disk_qd']} | "
              f"{d['disk_block'] >> 10} KiB | {d['disk_read_gbs']:.2f} |" for d in disks]
        L.append("")
    if gpus:
        L += ["### Physical limits: GPU machine bandwidth", "",
              "| machine | GPU | host-to-device pinned GB/s | host-to-device pageable GB/s | "
              "device-to-host pinned GB/s | device-to-device GB/s (read + write) |",
              "|---|---|---:|---:|---:|---:|"]
        L += [f"| {machine(g)} | {g.get('gpu', '?')} | {fmt(g.get('h2d_pinned_gbs'), digits=1)} | "
              f"{fmt(g.get('h2d_pageable_gbs'), digits=1)} | {fmt(g.get('d2h_pinned_gbs'), digits=1)} | "
              f"{fmt(g.get('d2d_read_write_gbs'), digits=1)} |" for g in gpus]
        L += ["", f"Method: {gpus[0].get('method', '?')} (best of the repetitions; means in the JSON).",
              ""]
    for t in tables:
        L += [f"### {t.get('title', t['_file'])}", "",
              "| " + " | ".join(t["columns"]) + " |", "|" + "---|" * len(t["columns"])]
        L += ["| " + " | ".join(str(c) for c in row) + " |" for row in t["rows"]]
        L += ["", t.get("note", ""), ""]
    if skipped:
        L += ["Skipped (unknown kind): " + ", ".join(sorted(set(skipped))), ""]
    L.append(END)
    return "\n".join(L) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", default="bench/results")
    ap.add_argument("--doc", default="docs/benchmarks.md")
    a = ap.parse_args()
    results = load(glob.glob(os.path.join(a.results, "*.json")) +
                   glob.glob(os.path.join(a.results, "*.jsonl")))
    doc_dir = os.path.dirname(a.doc)
    gen = generate(results, os.path.join(doc_dir, "benchmarks"), "benchmarks")
    old = open(a.doc).read() if os.path.exists(a.doc) else "# Benchmarks\n\n"
    if BEGIN in old and END in old:
        new = old[:old.index(BEGIN)] + gen + old[old.index(END) + len(END) + 1:]
    else:
        new = old.rstrip("\n") + "\n\n" + gen
    with open(a.doc, "w") as f:
        f.write(new)
    print(f"report.py: {len(results)} results -> {a.doc}", file=sys.stderr)


if __name__ == "__main__":
    main()
