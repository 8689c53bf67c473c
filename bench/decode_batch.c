/*
 * decode_batch.c — aggregate decode throughput of sl_decode_batch with 1, 4,
 * 16 ... concurrent sequences in one context (what `sluice serve` does each
 * step), without the HTTP server, tokenizer or prefill in the timing. Not a
 * test.
 *
 * Usage: build/bench/decode_batch --model PATH [--levels 1,4,16] [--steps N]
 *            [--prompt P] [--threads T] [--ram-cache all|BYTES]
 *
 * Per level L: a fresh context with n_seq_max = L; each sequence gets its
 * own P-token prompt (distinct ids) evaluated alone, then one untimed warm-up
 * step, then N timed steps, each ONE sl_decode_batch of L tokens (one per
 * sequence, greedy). One JSON line per level on stdout: level, steps,
 * tok_s (L * N / wall), ms_step and its attention / router / expert stage
 * times (sl_stats t_*; the rest is embed, norms, dense MLPs and the
 * lm_head), expert loads and bytes touched per token, loadavg (1-minute) before and after. The model's expert cache is warmed by
 * the previous levels: run with --ram-cache all to compare the dense part.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sluice.h"
#include "util.h"

static double loadavg(void) {
    double a = -1;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (fscanf(f, "%lf", &a) != 1) a = -1;
        fclose(f);
    }
    return a;
}

static int32_t argmax(const float *v, size_t n) {
    size_t b = 0;
    for (size_t i = 1; i < n; i++)
        if (v[i] > v[b]) b = i;
    return (int32_t)b;
}

/* One level: returns 0 on success. */
static int run_level(struct sl_model *m, int lv, int steps, int plen, int threads) {
    size_t nv = (size_t)sl_model_n_vocab(m);
    struct sl_context_params cp = sl_context_default_params();
    cp.n_ctx = (uint32_t)(plen + steps + 2);
    cp.n_batch = (uint32_t)(lv > plen ? lv : plen);
    cp.n_threads = threads;
    cp.n_seq_max = (uint32_t)lv;
    struct sl_context *ctx = NULL;
    if (sl_context_create(m, &cp, &ctx)) {
        fprintf(stderr, "context: %s\n", sl_errmsg());
        return 1;
    }
    int32_t *toks = malloc((size_t)(lv > plen ? lv : plen) * sizeof(int32_t));
    int32_t *sids = malloc((size_t)(lv > plen ? lv : plen) * sizeof(int32_t));
    int32_t *next = malloc((size_t)lv * sizeof(int32_t));
    float *rows = malloc((size_t)(lv > plen ? lv : plen) * nv * sizeof(float));
    int st = toks && sids && next && rows ? 0 : 1;
    for (int q = 0; q < lv && !st; q++) { /* each prompt alone */
        for (int k = 0; k < plen; k++) {
            toks[k] = (int32_t)((17 + 131 * q + 7 * k) % nv);
            sids[k] = q;
        }
        struct sl_batch b = {(size_t)plen, toks, sids, rows};
        st = sl_decode_batch(ctx, &b);
        if (!st) next[q] = argmax(rows + (size_t)(plen - 1) * nv, nv);
    }
    for (int q = 0; q < lv && !st; q++) {
        toks[q] = next[q];
        sids[q] = q;
    }
    struct sl_stats s0, s1;
    double la0 = loadavg(), t0 = 0;
    for (int s = 0; s <= steps && !st; s++) {
        if (s == 1) {
            sl_context_stats(ctx, &s0);
            t0 = sl_now();
        }
        struct sl_batch b = {(size_t)lv, toks, sids, rows};
        st = sl_decode_batch(ctx, &b);
        for (int q = 0; q < lv && !st; q++) toks[q] = argmax(rows + (size_t)q * nv, nv);
    }
    double wall = sl_now() - t0;
    if (st) {
        fprintf(stderr, "level %d: %s\n", lv, sl_errmsg());
    } else {
        sl_context_stats(ctx, &s1);
        double nt = (double)lv * steps;
        printf("{\"level\": %d, \"steps\": %d, \"tok_s\": %.3f, \"ms_step\": %.2f, "
               "\"ms_step_attention\": %.2f, \"ms_step_router\": %.2f, \"ms_step_experts\": %.2f, "
               "\"expert_loads_per_tok\": %.2f, \"expert_mb_touched_per_tok\": %.2f, "
               "\"loadavg\": [%.2f, %.2f]}\n",
               lv, steps, nt / wall, 1e3 * wall / steps,
               1e3 * (s1.t_attention - s0.t_attention) / steps,
               1e3 * (s1.t_router - s0.t_router) / steps,
               1e3 * (s1.t_experts - s0.t_experts) / steps,
               (double)(s1.expert_loads - s0.expert_loads) / nt,
               (double)(s1.expert_bytes_read - s0.expert_bytes_read) / nt / 1e6, la0,
               loadavg());
        fflush(stdout);
    }
    free(toks);
    free(sids);
    free(next);
    free(rows);
    sl_context_free(ctx);
    return st;
}

int main(int argc, char **argv) {
    const char *path = NULL, *levels = "1,4,16";
    int steps = 8, plen = 8, threads = 0;
    uint64_t cache = SL_RAM_CACHE_DEFAULT;
    for (int i = 1; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            fprintf(stderr, "%s: missing value\n", a);
            return 2;
        }
        if (!strcmp(a, "--model")) path = v;
        else if (!strcmp(a, "--levels")) levels = v;
        else if (!strcmp(a, "--steps")) steps = atoi(v);
        else if (!strcmp(a, "--prompt")) plen = atoi(v);
        else if (!strcmp(a, "--threads")) threads = atoi(v);
        else if (!strcmp(a, "--ram-cache"))
            cache = !strcmp(v, "all") ? SL_RAM_CACHE_ALL : strtoull(v, NULL, 10);
        else {
            fprintf(stderr, "unknown option %s\n", a);
            return 2;
        }
    }
    if (!path || steps < 1 || plen < 1) {
        fprintf(stderr, "usage: %s --model PATH [--levels 1,4,16] [--steps N] [--prompt P] "
                        "[--threads T] [--ram-cache all|BYTES]\n", argv[0]);
        return 2;
    }
    struct sl_model_params mp = sl_model_default_params();
    mp.n_threads = threads;
    mp.ram_cache_bytes = cache;
    struct sl_model *m = NULL;
    if (sl_model_open(path, &mp, &m)) {
        fprintf(stderr, "%s: %s\n", path, sl_errmsg());
        return 1;
    }
    fprintf(stderr, "decode_batch: %s, %d steps, prompt %d, threads %d\n", path, steps, plen,
            threads);
    int rc = 0;
    for (const char *p = levels; *p && !rc;) {
        int lv = atoi(p);
        if (lv >= 1) rc = run_level(m, lv, steps, plen, threads);
        while (*p && *p != ',') p++;
        if (*p) p++;
    }
    sl_model_close(m);
    return rc;
}
