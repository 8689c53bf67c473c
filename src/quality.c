/*
 * quality.c — model quality measured by the engine itself: perplexity of a
 * token sequence and, against a reference context, the KL divergence and
 * top-1 agreement of the next-token distributions (sl_perplexity).
 *
 * What it is not: no tokenizer or file handling (tools/cli_perplexity.c reads
 * the text), and no sampling: every number comes from the logits of sl_eval.
 *
 * Invariants:
 *   * the protocol is fixed and documented in sluice.h and docs/quality.md:
 *     non-overlapping windows, each from an empty context, every token of a
 *     window but the first scored, so the numbers are comparable with the
 *     reference computed by transformers (tools/train_demo.py);
 *   * sums are accumulated in double, log-softmax is computed in double with
 *     the maximum subtracted, so the result does not depend on the logit
 *     scale;
 *   * both contexts are reset on entry and on return, whatever the outcome.
 */
#include <math.h>

#include "context.h"
#include "util.h"

/* log-sum-exp of row (n floats) in double. */
static double row_lse(const float *row, size_t n, size_t *argmax) {
    size_t am = 0;
    for (size_t j = 1; j < n; j++)
        if (row[j] > row[am]) am = j;
    double mx = row[am], s = 0;
    for (size_t j = 0; j < n; j++) s += exp((double)row[j] - mx);
    if (argmax) *argmax = am;
    return mx + log(s);
}

/* KL(p || q) of the distributions softmax(p_row) and softmax(q_row). */
static double row_kl(const float *p_row, double p_lse, const float *q_row,
                     double q_lse, size_t n) {
    double kl = 0;
    for (size_t j = 0; j < n; j++) {
        double lp = (double)p_row[j] - p_lse, lq = (double)q_row[j] - q_lse;
        double p = exp(lp);
        if (p > 0) kl += p * (lp - lq);
    }
    return kl > 0 ? kl : 0; /* rounding can leave -1e-17 for equal rows */
}

int sl_perplexity(struct sl_context *ctx, struct sl_context *ref,
                  const int32_t *tokens, size_t n, uint32_t window,
                  struct sl_quality *out) {
    if (!ctx || !out || (!tokens && n))
        return sl_seterr(SL_ERR_ARG, "sl_perplexity: ctx, out and tokens "
                         "must not be NULL");
    memset(out, 0, sizeof *out);
    if (window < 2)
        return sl_seterr(SL_ERR_ARG, "sl_perplexity: window %u is too small "
                         "(at least 2 tokens: one context, one scored)", window);
    if (window > ctx->n_ctx)
        return sl_seterr(SL_ERR_ARG, "sl_perplexity: window %u exceeds the "
                         "context's n_ctx %u", window, ctx->n_ctx);
    if (ref && window > ref->n_ctx)
        return sl_seterr(SL_ERR_ARG, "sl_perplexity: window %u exceeds the "
                         "reference context's n_ctx %u", window, ref->n_ctx);
    size_t nv = (size_t)sl_model_n_vocab(ctx->model);
    if (ref && (size_t)sl_model_n_vocab(ref->model) != nv)
        return sl_seterr(SL_ERR_ARG, "sl_perplexity: the reference has %d "
                         "vocabulary entries, the model %zu: they must agree",
                         sl_model_n_vocab(ref->model), nv);
    if (n < 2)
        return sl_seterr(SL_ERR_ARG, "sl_perplexity: %zu token(s): need at "
                         "least 2 to score one", n);

    /* (window, n_vocab) logits of the model and of the reference */
    float *lg = sl_malloc((size_t)window * nv * sizeof(float));
    float *rl = ref ? sl_malloc((size_t)window * nv * sizeof(float)) : NULL;
    int rc = SL_OK;
    if (!lg || (ref && !rl)) {
        rc = sl_seterr(SL_ERR_NOMEM, "sl_perplexity: %u x %zu logits",
                       window, nv);
        goto done;
    }
    uint64_t agree = 0;
    for (size_t s = 0; s < n; s += window) {
        size_t w = n - s < window ? n - s : window;
        if (w < 2) continue; /* a lone last token has nothing to predict it */
        sl_context_reset(ctx);
        if ((rc = sl_eval(ctx, tokens + s, w, lg)) != SL_OK) {
            sl_preerr(rc, "window at token %zu: ", s);
            goto done;
        }
        if (ref) {
            sl_context_reset(ref);
            if ((rc = sl_eval(ref, tokens + s, w, rl)) != SL_OK) {
                sl_preerr(rc, "reference, window at token %zu: ", s);
                goto done;
            }
        }
        /* row i predicts token s + i + 1 */
        for (size_t i = 0; i + 1 < w; i++) {
            const float *row = lg + i * nv;
            size_t am;
            double lse = row_lse(row, nv, &am);
            int32_t t = tokens[s + i + 1];
            out->nll += lse - (double)row[t];
            if (ref) {
                const float *rrow = rl + i * nv;
                size_t ram;
                double rlse = row_lse(rrow, nv, &ram);
                out->ref_nll += rlse - (double)rrow[t];
                double kl = row_kl(rrow, rlse, row, lse, nv);
                out->kl_mean += kl;
                if (kl > out->kl_max) out->kl_max = kl;
                agree += am == ram;
            }
            out->n_scored++;
        }
        out->n_tokens += w;
    }
    double ns = (double)out->n_scored;
    out->ppl = exp(out->nll / ns);
    if (ref) {
        out->ref_ppl = exp(out->ref_nll / ns);
        out->kl_mean /= ns;
        out->top1_agree = (double)agree / ns;
    }
done:
    sl_context_reset(ctx);
    if (ref) sl_context_reset(ref);
    sl_free(lg);
    sl_free(rl);
    return rc;
}
