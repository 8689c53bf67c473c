/*
 * layer_mla.c — multi-head latent attention (see layer_mla.h): the
 * projections, the latent cache rows, RoPE (interleaved or not), and the
 * two equivalent attention forms over the latent cache.
 *
 * What it is not: a kernel library. The absorbed form reuses the pooled
 * GQA kernels of ops.h (one KV head of dim kv_lora_rank + qk_rope_head_dim,
 * the cache serving as keys and as values); the naive form is plain loops.
 * Nothing here allocates after mla_scratch_create.
 *
 * Invariant: after mla_attention, cache rows pos .. pos + n - 1 hold
 * [rmsnorm(latent), rope(k_rot)] of the chunk's tokens; rows below pos are
 * read, never written.
 */
#include "layer_mla.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "context.h"
#include "cpu/ops.h"
#include "cpu/ops_ext.h"
#include "quant.h"
#include "util.h"

/* HF DeepseekV3RMSNorm(q_lora_rank) / (kv_lora_rank): the class default. */
#define MLA_NORM_EPS 1e-6f

void mla_scratch_free(struct mla_scratch *s) {
    if (!s) return;
    float **f[] = {&s->qa, &s->q, &s->qabs, &s->oabs, &s->rows,
                   &s->xg, &s->yg, &s->att, &s->kvb, &s->tmp};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) sl_aligned_free(*f[i]);
    sl_aligned_free(s->acc);
    sl_free(s);
}

int mla_scratch_create(const struct sl_config *c, int n_batch,
                       struct mla_scratch **out) {
    *out = NULL;
    if (!c->kv_lora_rank || n_batch < 1)
        return sl_seterr(SL_ERR_ARG, "mla_scratch_create: not an MLA config "
                         "(kv_lora_rank %u) or n_batch %d < 1", c->kv_lora_rank, n_batch);
    struct mla_scratch *s = sl_calloc(1, sizeof *s);
    if (!s) return sl_seterr(SL_ERR_NOMEM, "out of memory (MLA scratch)");
    uint64_t B = (uint64_t)n_batch, nh = c->n_heads, r = c->kv_lora_rank;
    uint64_t D = config_mla_cache_dim(c), vd = c->v_head_dim;
    uint64_t G = B > MLA_NAIVE_BLOCK ? B : MLA_NAIVE_BLOCK;
    s->n_batch = n_batch;
    const char *env = getenv("SLUICE_MLA");
    s->form = env && strcmp(env, "naive") == 0 ? MLA_NAIVE : MLA_ABSORBED;
    int ok = 1;
#define ALLOC(p, count)                                                    \
    do {                                                                   \
        (p) = sl_aligned_alloc(64, (uint64_t)(count) * sizeof *(p));       \
        ok &= (p) != NULL;                                                 \
    } while (0)
    if (c->q_lora_rank) ALLOC(s->qa, B * c->q_lora_rank);
    ALLOC(s->q, B * nh * config_qk_head_dim(c));
    ALLOC(s->qabs, B * nh * D);
    ALLOC(s->oabs, B * nh * D);
    ALLOC(s->rows, nh * r);
    ALLOC(s->xg, G * r);
    ALLOC(s->yg, B * vd);
    ALLOC(s->att, B * nh * vd);
    ALLOC(s->kvb, (uint64_t)MLA_NAIVE_BLOCK * nh * (c->qk_nope_head_dim + vd));
    ALLOC(s->acc, nh * vd);
    ALLOC(s->tmp, c->qk_rope_head_dim);
#undef ALLOC
    if (!ok) {
        mla_scratch_free(s);
        return sl_seterr(SL_ERR_NOMEM, "out of memory (MLA scratch for %d tokens)", n_batch);
    }
    *out = s;
    return SL_OK;
}

float mla_attn_scale(const struct sl_config *c) {
    double scale = pow((double)config_qk_head_dim(c), -0.5);
    if (c->rope_kind == SL_ROPE_YARN && c->rope_mscale_all_dim != 0 && c->rope_factor > 1) {
        double m = 0.1 * c->rope_mscale_all_dim * log((double)c->rope_factor) + 1.0;
        scale = scale * m * m;
    }
    return (float)scale;
}

/* Y (n, w->rows) = X (n, w->cols) · Wᵀ. */
static int linear_w(struct sl_pool *pool, const struct weight *w, const float *X,
                    float *Y, int n) {
    if (n == 1) return ops_matvec(pool, w->dtype, w->data, X, Y, (int)w->rows, (int)w->cols);
    return ops_matmul(pool, w->dtype, w->data, X, Y, n, (int)w->rows, (int)w->cols);
}

/* RoPE of n_heads vectors of dim floats at x + h * stride, position p: with
 * interleave the pairs (2i, 2i+1) are first laid out as [x0 x2 .. | x1 x3
 * ..], which is what HF's interleaved variant computes (its output is
 * de-interleaved), then rotate-half with inv_freq (YaRN) or theta. */
static int rope_heads(const struct sl_config *c, const float *inv_freq, float mscale,
                      float *tmp, float *x, int n_heads, int stride, int dim, int64_t p) {
    int half = dim / 2, st;
    for (int h = 0; h < n_heads; h++) {
        float *xh = x + (size_t)h * stride;
        if (c->rope_interleave) {
            for (int i = 0; i < half; i++) {
                tmp[i] = xh[2 * i];
                tmp[half + i] = xh[2 * i + 1];
            }
            memcpy(xh, tmp, (size_t)dim * sizeof(float));
        }
        st = inv_freq ? ops_rope_neox_freqs(xh, 1, dim, dim, p, inv_freq, mscale)
                      : ops_rope_neox(xh, 1, dim, dim, p, c->rope_theta);
        if (st) return st;
    }
    return SL_OK;
}

/* ---- absorbed form ---- */

struct absorb_args {
    const struct sl_config *c;
    const struct weight *wkv_b;
    struct mla_scratch *s;
    int n;
};

/* qabs[t, h, 0:r] = W_k,hᵀ q_nope[t, h] for heads split across threads:
 * each key row of kv_b_proj is decoded once and used for every token. */
static void absorb_task(void *arg, int ith, int nth) {
    const struct absorb_args *a = arg;
    const struct sl_config *c = a->c;
    int nh = (int)c->n_heads, r = (int)c->kv_lora_rank, nope = (int)c->qk_nope_head_dim;
    int qk = (int)config_qk_head_dim(c), D = (int)config_mla_cache_dim(c);
    int per_head = nope + (int)c->v_head_dim;
    uint64_t rb = quant_row_bytes(a->wkv_b->dtype, (uint64_t)r);
    for (int h = ith; h < nh; h += nth) {
        float *row = a->s->rows + (size_t)h * r;
        for (int t = 0; t < a->n; t++)
            memset(a->s->qabs + ((size_t)t * nh + h) * D, 0, (size_t)r * sizeof(float));
        for (int i = 0; i < nope; i++) {
            const uint8_t *w = (const uint8_t *)a->wkv_b->data +
                               (uint64_t)(h * per_head + i) * rb;
            quant_row_to_f32(a->wkv_b->dtype, w, row, (uint64_t)r);
            for (int t = 0; t < a->n; t++) {
                float qi = a->s->q[((size_t)t * nh + h) * qk + i];
                float *dst = a->s->qabs + ((size_t)t * nh + h) * D;
                for (int j = 0; j < r; j++) dst[j] += qi * row[j];
            }
        }
    }
}

static int attend_absorbed(struct sl_pool *pool, struct mla_scratch *s,
                           const struct sl_config *c, const struct layer_weights *L,
                           const float *cache, uint32_t pos, int n, float *scores) {
    int nh = (int)c->n_heads, r = (int)c->kv_lora_rank, nope = (int)c->qk_nope_head_dim;
    int rope = (int)c->qk_rope_head_dim, qk = (int)config_qk_head_dim(c);
    int D = (int)config_mla_cache_dim(c), vd = (int)c->v_head_dim, st;
    struct absorb_args a = {c, &L->wkv_b, s, n};
    pool_run(pool, absorb_task, &a);
    for (int t = 0; t < n; t++) /* the rope part of the query as it is */
        for (int h = 0; h < nh; h++)
            memcpy(s->qabs + ((size_t)t * nh + h) * D + r,
                   s->q + ((size_t)t * nh + h) * qk + nope, (size_t)rope * sizeof(float));
    /* MQA over the cache: keys [latent, k_rot], values the same rows (the
     * last rope floats of each output are unused). */
    float scale = mla_attn_scale(c);
    if (n == 1)
        st = ops_attention(pool, s->oabs, s->qabs, cache, cache, nh, 1, D, (int)pos + 1, D,
                           scale, scores);
    else
        st = ops_attention_causal(pool, s->oabs, s->qabs, cache, cache, n, (int)pos, nh, 1,
                                  D, D, scale, scores);
    if (st) return st;
    /* out_h = W_v,h o_lat,h for each head, all tokens at once */
    uint64_t rb = quant_row_bytes(L->wkv_b.dtype, (uint64_t)r);
    for (int h = 0; h < nh; h++) {
        for (int t = 0; t < n; t++)
            memcpy(s->xg + (size_t)t * r, s->oabs + ((size_t)t * nh + h) * D,
                   (size_t)r * sizeof(float));
        struct weight wv = L->wkv_b;
        wv.data = (const uint8_t *)L->wkv_b.data + (uint64_t)(h * (nope + vd) + nope) * rb;
        wv.rows = (uint64_t)vd;
        if ((st = linear_w(pool, &wv, s->xg, s->yg, n))) return st;
        for (int t = 0; t < n; t++)
            memcpy(s->att + ((size_t)t * nh + h) * vd, s->yg + (size_t)t * vd,
                   (size_t)vd * sizeof(float));
    }
    return SL_OK;
}

/* ---- naive form ---- */

/* kvb (nb, n_heads * (nope + v)) = kv_b_proj of cache rows b0 .. b0+nb-1. */
static int reconstruct(struct sl_pool *pool, struct mla_scratch *s, const struct sl_config *c,
                       const struct layer_weights *L, const float *cache, int b0, int nb) {
    int r = (int)c->kv_lora_rank, D = (int)config_mla_cache_dim(c);
    for (int i = 0; i < nb; i++)
        memcpy(s->xg + (size_t)i * r, cache + (size_t)(b0 + i) * D, (size_t)r * sizeof(float));
    return linear_w(pool, &L->wkv_b, s->xg, s->kvb, nb);
}

static int attend_naive(struct sl_pool *pool, struct mla_scratch *s,
                        const struct sl_config *c, const struct layer_weights *L,
                        const float *cache, uint32_t pos, int n, float *scores) {
    int nh = (int)c->n_heads, r = (int)c->kv_lora_rank, nope = (int)c->qk_nope_head_dim;
    int rope = (int)c->qk_rope_head_dim, qk = (int)config_qk_head_dim(c);
    int D = (int)config_mla_cache_dim(c), vd = (int)c->v_head_dim, st;
    int ph = nope + vd; /* per head floats of a reconstructed row */
    double scale = (double)mla_attn_scale(c);
    for (int t = 0; t < n; t++) {
        int np = (int)pos + t + 1;
        const float *qt = s->q + (size_t)t * nh * qk;
        /* pass 1: scores */
        for (int b0 = 0; b0 < np; b0 += MLA_NAIVE_BLOCK) {
            int nb = np - b0 < MLA_NAIVE_BLOCK ? np - b0 : MLA_NAIVE_BLOCK;
            if ((st = reconstruct(pool, s, c, L, cache, b0, nb))) return st;
            for (int i = 0; i < nb; i++) {
                const float *krot = cache + (size_t)(b0 + i) * D + r;
                for (int h = 0; h < nh; h++) {
                    const float *qh = qt + (size_t)h * qk;
                    const float *kn = s->kvb + (size_t)i * nh * ph + (size_t)h * ph;
                    double d = 0;
                    for (int j = 0; j < nope; j++) d += (double)qh[j] * kn[j];
                    for (int j = 0; j < rope; j++) d += (double)qh[nope + j] * krot[j];
                    scores[(size_t)h * np + b0 + i] = (float)(d * scale);
                }
            }
        }
        for (int h = 0; h < nh; h++) {
            float *sc = scores + (size_t)h * np, m = -INFINITY;
            for (int i = 0; i < np; i++) m = sc[i] > m ? sc[i] : m;
            double sum = 0;
            for (int i = 0; i < np; i++) sum += exp((double)sc[i] - m);
            for (int i = 0; i < np; i++) sc[i] = (float)(exp((double)sc[i] - m) / sum);
        }
        /* pass 2: values */
        memset(s->acc, 0, (size_t)nh * vd * sizeof(double));
        for (int b0 = 0; b0 < np; b0 += MLA_NAIVE_BLOCK) {
            int nb = np - b0 < MLA_NAIVE_BLOCK ? np - b0 : MLA_NAIVE_BLOCK;
            if ((st = reconstruct(pool, s, c, L, cache, b0, nb))) return st;
            for (int i = 0; i < nb; i++)
                for (int h = 0; h < nh; h++) {
                    double p = scores[(size_t)h * np + b0 + i];
                    const float *v = s->kvb + (size_t)i * nh * ph + (size_t)h * ph + nope;
                    for (int j = 0; j < vd; j++) s->acc[(size_t)h * vd + j] += p * v[j];
                }
        }
        for (int i = 0; i < nh * vd; i++) s->att[(size_t)t * nh * vd + i] = (float)s->acc[i];
    }
    return SL_OK;
}

/* ---- the layer ---- */

int mla_attention(struct sl_pool *pool, struct mla_scratch *s,
                  const struct sl_config *c, const struct layer_weights *L,
                  const float *inv_freq, float rope_mscale, float *cache,
                  const float *x, float *out, uint32_t pos, int n,
                  float *scores, int form) {
    if (n < 1 || n > s->n_batch || (form != MLA_ABSORBED && form != MLA_NAIVE))
        return sl_seterr(SL_ERR_ARG, "mla_attention: %d tokens (batch %d), form %d",
                         n, s->n_batch, form);
    int nh = (int)c->n_heads, r = (int)c->kv_lora_rank, nope = (int)c->qk_nope_head_dim;
    int rope = (int)c->qk_rope_head_dim, qk = (int)config_qk_head_dim(c);
    int D = (int)config_mla_cache_dim(c), qr = (int)c->q_lora_rank, st;
    /* q: low-rank path or direct */
    if (qr) {
        if ((st = linear_w(pool, &L->wq_a, x, s->qa, n))) return st;
        for (int t = 0; t < n; t++)
            ops_rmsnorm(s->qa + (size_t)t * qr, s->qa + (size_t)t * qr, L->q_a_norm, qr,
                        MLA_NORM_EPS);
        if ((st = linear_w(pool, &L->wq_b, s->qa, s->q, n))) return st;
    } else if ((st = linear_w(pool, &L->wq, x, s->q, n))) {
        return st;
    }
    /* [latent, k_rot] straight into the cache rows of the chunk */
    float *rows = cache + (size_t)pos * D;
    if ((st = linear_w(pool, &L->wkv_a, x, rows, n))) return st;
    for (int t = 0; t < n; t++) {
        float *row = rows + (size_t)t * D;
        ops_rmsnorm(row, row, L->kv_a_norm, r, MLA_NORM_EPS);
        if ((st = rope_heads(c, inv_freq, rope_mscale, s->tmp, row + r, 1, D, rope,
                             (int64_t)pos + t)) ||
            (st = rope_heads(c, inv_freq, rope_mscale, s->tmp, s->q + (size_t)t * nh * qk + nope,
                             nh, qk, rope, (int64_t)pos + t)))
            return st;
    }
    st = form == MLA_NAIVE ? attend_naive(pool, s, c, L, cache, pos, n, scores)
                           : attend_absorbed(pool, s, c, L, cache, pos, n, scores);
    if (st) return st;
    return linear_w(pool, &L->wo, s->att, out, n);
}

/* SLUICE_DUMP: append a stage (as forward.c's dump). */
static void dump(const struct sl_context *ctx, uint32_t l, const char *stage,
                 const void *data, size_t bytes) {
    if (!ctx->dump_dir) return;
    char path[1024];
    snprintf(path, sizeof path, "%s/L%u.%s", ctx->dump_dir, l, stage);
    FILE *f = fopen(path, "ab");
    if (!f) return;
    fwrite(data, 1, bytes, f);
    fclose(f);
}

int mla_forward(struct sl_context *ctx, uint32_t l, uint32_t pos, int n) {
    const struct sl_model *m = ctx->model;
    const struct sl_config *c = &m->cfg;
    uint64_t D = config_mla_cache_dim(c);
    float *cache = ctx->mla_cache + (uint64_t)l * ctx->n_ctx * D;
    int st = mla_attention(ctx->pool, ctx->mla, c, &m->layers[l], m->rope_inv_freq,
                           m->rope_mscale, cache, ctx->xb, ctx->xb2, pos, n,
                           ctx->att_scores, ctx->mla->form);
    if (st) return st;
    dump(ctx, l, "q.f32", ctx->mla->q, (size_t)n * c->n_heads * config_qk_head_dim(c) * 4);
    dump(ctx, l, "kv_latent.f32", cache + pos * D, (size_t)n * D * 4);
    dump(ctx, l, "attn_out.f32", ctx->xb2, (size_t)n * c->hidden * 4);
    return SL_OK;
}
