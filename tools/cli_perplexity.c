/*
 * cli_perplexity.c — `sluice perplexity`: the perplexity of a model on a
 * text file and, with --kl-ref, its divergence from a reference model over
 * the same tokens (sl_perplexity in src/quality.c; protocol and recorded
 * numbers in docs/quality.md).
 *
 * What it is not: no tokenizer of its own: the text is encoded with the
 * model's embedded tokenizer, and the reference model is fed the same ids
 * (the vocabularies must agree).
 *
 * Output: a human summary on stdout, or one JSON object with --json;
 * nothing else on stdout. Exit codes as in cli.h.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "sluice.h"

static const char usage[] =
    "usage: sluice perplexity -m MODEL --text-file F [--window N] [--max-tokens N]\n"
    "                         [--kl-ref REF.sluice] [-t THREADS] [--json]\n"
    "  --window N      tokens per window, each evaluated from an empty context (256)\n"
    "  --max-tokens N  score only the first N tokens of the text (0 = all)\n"
    "  --kl-ref REF    also run REF (same vocabulary) over the same windows and\n"
    "                  report mean KL(REF || MODEL) and top-1 agreement\n";

static int usage_err(const char *fmt, const char *arg) {
    fprintf(stderr, "sluice perplexity: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n\n%s", usage);
    return 2;
}

/* Reads the whole file into a malloc'ed buffer. Prints and returns 0 on
 * failure. */
static int read_file(const char *path, char **out, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "sluice perplexity: open %s: %s\n", path, strerror(errno));
        return 0;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
        if (n == cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) free(buf);
            buf = nb;
        }
    }
    int err = ferror(f);
    fclose(f);
    if (!buf || err) {
        free(buf);
        fprintf(stderr, "sluice perplexity: read %s: %s\n", path,
                buf ? "read error" : "out of memory");
        return 0;
    }
    *out = buf;
    *len = n;
    return 1;
}

static int parse_count(const char *flag, const char *v, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long x = v ? strtol(v, &end, 10) : 0;
    if (!v || errno || end == v || *end || x < lo || x > hi) {
        fprintf(stderr, "sluice perplexity: option %s: '%s' is not an integer in "
                "[%ld, %ld]\n\n%s", flag, v ? v : "", lo, hi, usage);
        return 0;
    }
    *out = x;
    return 1;
}

static int open_ctx(const char *path, int n_threads, uint32_t window,
                    struct sl_model **m, struct sl_context **ctx) {
    struct sl_model_params mp = sl_model_default_params();
    mp.n_threads = n_threads;
    if (sl_model_open(path, &mp, m) != SL_OK) {
        fprintf(stderr, "sluice perplexity: %s\n", sl_errmsg());
        return 0;
    }
    struct sl_context_params cp = sl_context_default_params();
    cp.n_ctx = window;
    cp.n_batch = window; /* one forward chunk per window */
    if (sl_context_create(*m, &cp, ctx) != SL_OK) {
        fprintf(stderr, "sluice perplexity: %s: %s\n", path, sl_errmsg());
        return 0;
    }
    return 1;
}

int cli_perplexity(int argc, char **argv) {
    const char *model_path = NULL, *text_path = NULL, *ref_path = NULL;
    long window = 256, max_tokens = 0, n_threads = 0;
    int json = 0;
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        int has = i + 1 < argc;
        if (!strcmp(s, "--json")) {
            json = 1;
            continue;
        }
        if (!strcmp(s, "-m") || !strcmp(s, "--text-file") || !strcmp(s, "--kl-ref") ||
            !strcmp(s, "--window") || !strcmp(s, "--max-tokens") || !strcmp(s, "-t") ||
            !strcmp(s, "--threads")) {
            if (!has) return usage_err("option %s needs a value", s);
            const char *v = argv[++i];
            if (!strcmp(s, "-m")) model_path = v;
            else if (!strcmp(s, "--text-file")) text_path = v;
            else if (!strcmp(s, "--kl-ref")) ref_path = v;
            else if (!strcmp(s, "--window")) {
                if (!parse_count(s, v, 2, 1 << 20, &window)) return 2;
            } else if (!strcmp(s, "--max-tokens")) {
                if (!parse_count(s, v, 0, 1L << 40, &max_tokens)) return 2;
            } else if (!parse_count(s, v, 0, 1024, &n_threads)) return 2;
            continue;
        }
        return usage_err("unknown option %s", s);
    }
    if (!model_path) return usage_err("%s", "missing -m MODEL");
    if (!text_path) return usage_err("%s", "missing --text-file F");

    char *text = NULL;
    size_t len = 0;
    int32_t *ids = NULL;
    size_t n = 0;
    struct sl_model *m = NULL, *rm = NULL;
    struct sl_context *ctx = NULL, *rctx = NULL;
    int rc = 1;
    if (!read_file(text_path, &text, &len)) goto done;
    if (!open_ctx(model_path, (int)n_threads, (uint32_t)window, &m, &ctx)) goto done;
    const struct sl_tokenizer *tok = sl_model_tokenizer(m);
    if (!tok) {
        fprintf(stderr, "sluice perplexity: %s has no tokenizer\n", model_path);
        goto done;
    }
    if (sl_tokenize(tok, text, len, &ids, &n) != SL_OK) {
        fprintf(stderr, "sluice perplexity: %s: %s\n", text_path, sl_errmsg());
        goto done;
    }
    if (max_tokens > 0 && (size_t)max_tokens < n) n = (size_t)max_tokens;
    if (n < 2) {
        fprintf(stderr, "sluice perplexity: %s: %zu token(s); need at least 2\n",
                text_path, n);
        goto done;
    }
    if (ref_path && !open_ctx(ref_path, (int)n_threads, (uint32_t)window, &rm, &rctx))
        goto done;
    struct sl_quality q;
    if (sl_perplexity(ctx, rctx, ids, n, (uint32_t)window, &q) != SL_OK) {
        fprintf(stderr, "sluice perplexity: %s\n", sl_errmsg());
        goto done;
    }
    if (json) {
        printf("{\"tokens\":%llu,\"scored\":%llu,\"window\":%ld,\"nll\":%.10g,"
               "\"ppl\":%.8g",
               (unsigned long long)q.n_tokens, (unsigned long long)q.n_scored, window,
               q.nll, q.ppl);
        if (rctx)
            printf(",\"ref_ppl\":%.8g,\"kl_mean\":%.6g,\"kl_max\":%.6g,"
                   "\"top1_agree\":%.6f",
                   q.ref_ppl, q.kl_mean, q.kl_max, q.top1_agree);
        printf("}\n");
    } else {
        printf("model:      %s\n", model_path);
        printf("tokens:     %llu (%llu scored, windows of %ld)\n",
               (unsigned long long)q.n_tokens, (unsigned long long)q.n_scored, window);
        printf("perplexity: %.4f (mean nll %.5f nats)\n", q.ppl, q.nll / (double)q.n_scored);
        if (rctx) {
            printf("reference:  %s, perplexity %.4f\n", ref_path, q.ref_ppl);
            printf("KL(ref||model): mean %.6f nats, max %.4f\n", q.kl_mean, q.kl_max);
            printf("top-1 agreement: %.2f%%\n", 100 * q.top1_agree);
        }
    }
    rc = 0;
done:
    free(ids);
    free(text);
    sl_context_free(rctx);
    sl_model_close(rm);
    sl_context_free(ctx);
    sl_model_close(m);
    return rc;
}
