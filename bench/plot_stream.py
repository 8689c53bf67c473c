#!/usr/bin/env python3
"""Table and plot of the a3b-cpu-stream benchmark (bench/stream_a3b.sh).

Usage: bench/plot_stream.py RESULTS.jsonl DISK_GBS [OUT.png]

Prints a markdown table (decode tok/s, hit rates, prefetch accuracy, disk
bytes per token, the disk-bound limit = DISK_GBS / disk bytes per token) and
writes a PNG of decode tok/s against cache size per policy (matplotlib).
Not a test.
"""
import json
import sys


def main():
    rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
    disk = float(sys.argv[2])
    out = sys.argv[3] if len(sys.argv) > 3 else None
    print("| config | flags | load avg | decode tok/s | prompt tok/s | decode hit "
          "| run hit / prefetch-hit / miss | decode disk MiB/token | disk-bound limit tok/s "
          "| % of limit | prefetch acc. / precision | lookahead acc. | cgroup peak GiB "
          "| llama.cpp (mmap) tok/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    pts = {}
    for r in rows:
        b = r["bench"]
        es = b.get("expert_store_run", {})
        dbt = b.get("disk_bytes_per_token", 0)
        lim = disk * 1e9 / dbt if dbt > 0 else float("inf")
        tps = b["decode_tps"]
        hit = b.get("cache_hit_rate", 0)
        print("| %s | `%s` | %.1f | %.2f | %.2f | %.1f%% | %.0f / %.0f / %.0f %% | %.1f | %s | %s | %s | %s | %.2f | _peer: TODO (bench/peers)_ |" % (
            r["config"], r["flags"], b.get("loadavg", [0])[0], tps, b["prompt_tps"], 100 * hit,
            100 * es.get("hit", 0), 100 * es.get("prefetch_hit", 0), 100 * es.get("miss", 0),
            dbt / 2**20,
            "%.2f" % lim if lim != float("inf") else "∞",
            "%.0f%%" % (100 * tps / lim) if lim != float("inf") else "—",
            "%.0f%% / %.0f%%" % (100 * es.get("prefetch_accuracy", 0),
                                 100 * es.get("prefetch_precision", 0))
            if es.get("prefetch_issued", 0) else "off",
            "%.0f%%" % (100 * es["lookahead_accuracy"]) if es.get("lookahead_accuracy") else "—",
            r["cgroup_peak"] / 2**30))
        budget = b.get("cache_budget_bytes", 0)
        name = r["config"]
        if name.startswith("mmap") or budget == 0:
            continue
        series = name.split("-")[0] + ("" if "nopf" not in name else " no prefetch")
        pts.setdefault(series, []).append((budget / 2**20, tps))
    if not out:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for series, p in sorted(pts.items()):
        p.sort()
        ax.plot([x for x, _ in p], [y for _, y in p], marker="o", label=series)
    for r in rows:
        if r["config"].startswith("mmap"):
            ax.axhline(r["bench"]["decode_tps"], color="gray", ls="--",
                       label="--io mmap (page cache)")
    ax.set_xlabel("expert cache budget (MiB)")
    ax.set_ylabel("decode tok/s")
    ax.set_title("a3b-cpu-stream: 16 layers, experts 5.9 GB, cgroup 3.0 GB, 2 vCPU")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
