/*
 * cli_export_hf.c — `sluice export-hf -m MODEL.sluice -o DIR [--dtype
 * bf16|f32] [--shard-size SIZE] [--fused-experts] [--quiet]`: writes the
 * model as a HuggingFace checkpoint (config.json, sharded safetensors +
 * index, generation config, tokenizer files) with the same weights, q8/q4
 * dequantized exactly and stored bf16 (or f32) — src/safetensors_write.h —
 * so that HF transformers can be benchmarked on the numbers sluice runs.
 * Exit codes: 0 ok, 2 usage, 1 other errors (one line on stderr).
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "safetensors_write.h"
#include "sluice.h"

static int hf_usage(const char *msg, const char *arg) {
    fprintf(stderr, "sluice export-hf: %s%s\n", msg, arg ? arg : "");
    fprintf(stderr, "usage: sluice export-hf -m MODEL.sluice -o DIR [--dtype bf16|f32] "
                    "[--shard-size SIZE] [--fused-experts] [--quiet]\n");
    return 2;
}

int cli_export_hf(int argc, char **argv) {
    const char *in = NULL, *out = NULL;
    struct hf_export_params p = {0};
    int quiet = 0;
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        if (!strcmp(s, "-m") || !strcmp(s, "-o") || !strcmp(s, "--dtype") ||
            !strcmp(s, "--shard-size")) {
            if (i + 1 >= argc) return hf_usage("missing value for ", s);
            const char *v = argv[++i];
            if (!strcmp(s, "-m")) {
                in = v;
            } else if (!strcmp(s, "-o")) {
                out = v;
            } else if (!strcmp(s, "--dtype")) {
                if (!strcmp(v, "f32")) p.f32 = 1;
                else if (strcmp(v, "bf16")) return hf_usage("--dtype must be bf16 or f32, got ", v);
            } else if (sl_parse_size(v, &p.shard_bytes) != SL_OK || p.shard_bytes == 0 ||
                       p.shard_bytes == SL_RAM_CACHE_ALL) {
                return hf_usage("--shard-size must be a size like 4G or 512M, got ", v);
            }
        } else if (!strcmp(s, "--fused-experts")) {
            p.fused_experts = 1;
        } else if (!strcmp(s, "--quiet")) {
            quiet = 1;
        } else {
            return hf_usage(s[0] == '-' ? "unknown option " : "unexpected argument ", s);
        }
    }
    if (!in) return hf_usage("missing -m MODEL.sluice", NULL);
    if (!out) return hf_usage("missing -o DIR", NULL);
    p.progress = !quiet && isatty(2);
    struct hf_export_report r;
    if (hf_export(in, out, &p, &r) != SL_OK) {
        fprintf(stderr, "sluice export-hf: %s\n", sl_errmsg());
        return 1;
    }
    if (!quiet)
        fprintf(stderr, "sluice export-hf: %s -> %s: %u tensors (%s, experts %s) in %u shard%s, "
                        "%.3f GB, tokenizer %s, in %.1f s\n",
                in, out, r.n_tensors, p.f32 ? "f32" : "bf16",
                p.fused_experts ? "fused" : "per expert", r.n_shards, r.n_shards == 1 ? "" : "s",
                (double)r.data_bytes / 1e9, r.tokenizer ? "yes" : "none embedded", r.seconds);
    return 0;
}
