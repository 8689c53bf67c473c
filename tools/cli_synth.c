/*
 * cli_synth.c — `sluice synth`: writes a synthetic qwen3_moe or
 * qwen3_5_moe (hybrid) model from a preset (src/synth.h). Argument
 * parsing and messages only; the generator is the library's.
 *
 * Output: the model file; on stderr, per-layer routing statistics (unless
 * --quiet) and one summary line that depends only on the arguments and the
 * elapsed time (no device names), e.g.
 *   sluice synth: a3b-cpu -> /tmp/m.sluice: qwen3_moe, 8 layers, ...
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "quant.h"
#include "synth.h"
#include "util.h"

static void synth_usage(void) {
    fprintf(stderr,
            "usage: sluice synth --preset NAME [-o OUT] [--layers N]\n"
            "                    [--experts bf16|q8|q4] [--dense bf16|q8|f32]\n"
            "                    [--skew GINI] [--seed S] [--tokenizer FILE]"
            " [--quiet]\n"
            "  presets: %s\n"
            "  (tiny-hybrid, a17b, a3b35: qwen3_5_moe hybrid; --layers keeps\n"
            "   3 linear : 1 full attention, layer i full iff (i+1) %% 4 == 0)\n"
            "  --skew: median target Gini of expert usage per layer, in "
            "[0, %.2f); 0 = uniform\n"
            "  OUT defaults to NAME.sluice\n",
            synth_preset_names(), (double)SYNTH_MAX_SKEW);
}

static int parse_dtype(const char *s, int dense) {
    if (strcmp(s, "bf16") == 0) return SL_DTYPE_BF16;
    if (strcmp(s, "q8") == 0) return SL_DTYPE_Q8;
    if (!dense && strcmp(s, "q4") == 0) return SL_DTYPE_Q4;
    if (dense && strcmp(s, "f32") == 0) return SL_DTYPE_F32;
    return -1;
}

static int parse_u64(const char *s, unsigned long long *out) {
    char *end;
    errno = 0;
    if (!*s || *s == '-') return 0;
    *out = strtoull(s, &end, 0);
    return errno == 0 && *end == 0;
}

#define USAGE_ERR(...)                                                        \
    do {                                                                      \
        fprintf(stderr, "sluice synth: " __VA_ARGS__);                        \
        fputc('\n', stderr);                                                  \
        synth_usage();                                                        \
        return 2;                                                             \
    } while (0)

int cli_synth(int argc, char **argv) {
    const char *preset = NULL, *out = NULL, *tokenizer = NULL;
    const char *layers = NULL, *experts = NULL, *dense = NULL, *skew = NULL,
               *seed = NULL;
    int quiet = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **dst = NULL;
        if (strcmp(a, "--quiet") == 0 || strcmp(a, "-q") == 0) {
            quiet = 1;
            continue;
        }
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            synth_usage();
            return 0;
        }
        if (strcmp(a, "--preset") == 0) dst = &preset;
        else if (strcmp(a, "-o") == 0) dst = &out;
        else if (strcmp(a, "--layers") == 0) dst = &layers;
        else if (strcmp(a, "--experts") == 0) dst = &experts;
        else if (strcmp(a, "--dense") == 0) dst = &dense;
        else if (strcmp(a, "--skew") == 0) dst = &skew;
        else if (strcmp(a, "--seed") == 0) dst = &seed;
        else if (strcmp(a, "--tokenizer") == 0) dst = &tokenizer;
        else USAGE_ERR("unknown argument '%s'", a);
        if (i + 1 >= argc) USAGE_ERR("%s needs a value", a);
        *dst = argv[++i];
    }
    if (!preset) USAGE_ERR("--preset is required");

    struct synth_params p;
    if (synth_preset(preset, &p) != SL_OK) USAGE_ERR("%s", sl_errmsg());
    unsigned long long v;
    if (layers) {
        if (!parse_u64(layers, &v) || v == 0 || v > SL_MAX_LAYERS)
            USAGE_ERR("--layers must be 1..%d, got '%s'", SL_MAX_LAYERS,
                      layers);
        synth_set_layers(&p, (uint32_t)v);
    }
    if (experts && (p.expert_dtype = parse_dtype(experts, 0)) < 0)
        USAGE_ERR("--experts must be bf16, q8 or q4, got '%s'", experts);
    if (dense && (p.dense_dtype = parse_dtype(dense, 1)) < 0)
        USAGE_ERR("--dense must be bf16, q8 or f32, got '%s'", dense);
    if (skew) {
        char *end;
        errno = 0;
        double g = strtod(skew, &end);
        if (errno || *end || !(g >= 0 && g < SYNTH_MAX_SKEW))
            USAGE_ERR("--skew must be a number in [0, %.2f), got '%s'",
                      (double)SYNTH_MAX_SKEW, skew);
        p.skew = (float)g;
    }
    if (seed) {
        if (!parse_u64(seed, &v)) USAGE_ERR("--seed must be an unsigned "
                                            "integer, got '%s'", seed);
        p.seed = v;
    }
    p.tokenizer_path = tokenizer;
    p.progress = !quiet;

    char default_out[300];
    if (!out) {
        snprintf(default_out, sizeof default_out, "%s.sluice", preset);
        out = default_out;
    }
    struct synth_report r;
    if (synth_write(&p, out, &r) != SL_OK) {
        fprintf(stderr, "sluice synth: %s\n", sl_errmsg());
        return 1;
    }
    const struct sl_config *c = &p.cfg;
    fprintf(stderr,
            "sluice synth: %s -> %s: %s, %u layers, hidden %u, %u "
            "experts top-%u, experts %s, dense %s, seed %llu, skew %.2f "
            "(gini %.3f..%.3f, median %.3f%s): %.3f GB (experts %.3f GB, "
            "dense %.3f GB) in %.1f s\n",
            preset, out, c->model_type, c->n_layers, c->hidden, c->n_experts,
            c->n_experts_used, sl_dtype_name(p.expert_dtype),
            sl_dtype_name(p.dense_dtype), (unsigned long long)p.seed,
            (double)p.skew, r.gini_min, r.gini_max, r.gini_median,
            r.n_capped ? ", some layer targets capped at reach" : "",
            (double)r.file_bytes / 1e9, (double)r.expert_bytes / 1e9,
            (double)r.dense_bytes / 1e9, r.seconds);
    return 0;
}
