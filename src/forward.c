/*
 * forward.c — the qwen3_moe forward pass on the CPU backend, for a chunk of
 * n tokens at consecutive positions (n = 1 is decode), as the same named
 * stages on every backend:
 *
 *   embed → per layer: rmsnorm → q/k/v → per-head q/k rmsnorm → rope →
 *   KV append → causal attention → o_proj → residual → rmsnorm → MoE (router
 *   logits → softmax → top-k ids → top-k weights (renormalised if
 *   norm_topk_prob) → expert gate/up → SwiGLU → down → weighted sum) or a
 *   dense SwiGLU MLP → residual → final rmsnorm → lm_head.
 *
 * A chunk runs as matrix-matrix products (each weight crosses the memory
 * bus once per chunk), and the MoE stage groups the chunk's tokens by
 * expert, so that each distinct expert of a layer is acquired once per
 * chunk and applied to all of its tokens together.
 *
 * The forward pass allocates nothing: every buffer lives in the context,
 * sized for n_batch tokens. With SLUICE_DUMP=dir each stage's output is
 * appended to dir/L<i>.<stage> (one row per token) so that a script can find
 * the first stage that diverges from the reference.
 */
#include <math.h>
#include <stdio.h>

#include "context.h"
#include "cpu/ops.h"
#include "util.h"

static void dump(const struct sl_context *ctx, int layer, const char *stage,
                 const void *data, size_t bytes) {
    if (!ctx->dump_dir) return;
    char path[1024];
    if (layer >= 0)
        snprintf(path, sizeof path, "%s/L%d.%s", ctx->dump_dir, layer, stage);
    else
        snprintf(path, sizeof path, "%s/%s", ctx->dump_dir, stage);
    FILE *f = fopen(path, "ab");
    if (!f) return; /* a debugging aid: a failed dump must not fail the run */
    fwrite(data, 1, bytes, f);
    fclose(f);
}

/* Y (n, w->rows) = X (n, w->cols) · Wᵀ. Shapes were validated at model open,
 * so the only possible failure is the pool's scratch growing on first use. */
static int linear(struct sl_context *ctx, int dtype, const void *w, int rows,
                  int cols, const float *X, float *Y, int n) {
    if (n == 1) return ops_matvec(ctx->pool, dtype, w, X, Y, rows, cols);
    return ops_matmul(ctx->pool, dtype, w, X, Y, n, rows, cols);
}

static int linear_w(struct sl_context *ctx, const struct weight *w,
                    const float *X, float *Y, int n) {
    return linear(ctx, w->dtype, w->data, (int)w->rows, (int)w->cols, X, Y, n);
}

static void add_bias(float *Y, const float *b, int n, int dim) {
    if (!b) return;
    for (int t = 0; t < n; t++) ops_add(Y + (size_t)t * dim, b, dim);
}

/* Self-attention of n tokens at positions pos..pos+n-1: reads ctx->xb
 * (n, hidden), writes ctx->xb2 (n, hidden). */
static int attention(struct sl_context *ctx, uint32_t l, uint32_t pos, int n) {
    const struct sl_config *c = &ctx->model->cfg;
    const struct layer_weights *L = &ctx->model->layers[l];
    int nh = (int)c->n_heads, nkv = (int)c->n_kv_heads, hd = (int)c->head_dim;
    int kv_dim = (int)config_kv_dim(c), q_dim = (int)config_q_dim(c);
    float *kc = ctx->k_cache + (uint64_t)l * ctx->n_ctx * (uint64_t)kv_dim;
    float *vc = ctx->v_cache + (uint64_t)l * ctx->n_ctx * (uint64_t)kv_dim;
    float *K = kc + (uint64_t)pos * kv_dim; /* (n, kv_dim), written in place */
    float *V = vc + (uint64_t)pos * kv_dim; /* in the cache */
    int st;

    if ((st = linear_w(ctx, &L->wq, ctx->xb, ctx->q, n)) ||
        (st = linear_w(ctx, &L->wk, ctx->xb, K, n)) ||
        (st = linear_w(ctx, &L->wv, ctx->xb, V, n)))
        return st;
    add_bias(ctx->q, L->bq, n, q_dim);
    add_bias(K, L->bk, n, kv_dim);
    add_bias(V, L->bv, n, kv_dim);
    for (int t = 0; t < n; t++) {
        float *q = ctx->q + (size_t)t * q_dim, *k = K + (size_t)t * kv_dim;
        ops_rmsnorm_heads(q, L->q_norm, nh, hd, c->rms_eps);
        ops_rmsnorm_heads(k, L->k_norm, nkv, hd, c->rms_eps);
        if ((st = ops_rope_neox(q, nh, hd, hd, pos + (uint32_t)t, c->rope_theta)) ||
            (st = ops_rope_neox(k, nkv, hd, hd, pos + (uint32_t)t, c->rope_theta)))
            return st;
    }
    dump(ctx, (int)l, "q.f32", ctx->q, (size_t)n * q_dim * 4);
    dump(ctx, (int)l, "k.f32", K, (size_t)n * kv_dim * 4);

    float scale = 1.0f / sqrtf((float)hd);
    if (n == 1)
        st = ops_attention(ctx->pool, ctx->att, ctx->q, kc, vc, nh, nkv, hd,
                           (int)pos + 1, kv_dim, scale, ctx->att_scores);
    else
        st = ops_attention_causal(ctx->pool, ctx->att, ctx->q, kc, vc, n, (int)pos,
                                  nh, nkv, hd, kv_dim, scale, ctx->att_scores);
    if (st || (st = linear_w(ctx, &L->wo, ctx->att, ctx->xb2, n))) return st;
    add_bias(ctx->xb2, L->bo, n, (int)c->hidden);
    dump(ctx, (int)l, "attn_out.f32", ctx->xb2, (size_t)n * c->hidden * 4);
    return SL_OK;
}

/* SwiGLU MLP of m rows: out (m, hidden) = down(silu(gate X) * up X), with
 * X (m, hidden); ctx->hb, ctx->hb2 hold (m, ffn). */
static int swiglu_mlp(struct sl_context *ctx, const int dtype[3],
                      const void *const w[3], int ffn, const float *X,
                      float *out, int m) {
    int hidden = (int)ctx->model->cfg.hidden, st;
    if ((st = linear(ctx, dtype[0], w[0], ffn, hidden, X, ctx->hb, m)) ||
        (st = linear(ctx, dtype[1], w[1], ffn, hidden, X, ctx->hb2, m)))
        return st;
    ops_swiglu(ctx->hb, ctx->hb, ctx->hb2, m * ffn);
    return linear(ctx, dtype[2], w[2], hidden, ffn, ctx->hb, out, m);
}

/* Routed experts of n tokens: reads ctx->xb (n, hidden), writes ctx->xb2. */
static int moe(struct sl_context *ctx, uint32_t l, int n) {
    const struct sl_config *c = &ctx->model->cfg;
    const struct layer_weights *L = &ctx->model->layers[l];
    int k = (int)c->n_experts_used, ne = (int)c->n_experts, hidden = (int)c->hidden;
    int st;

    /* router logits → probs → top-k ids → top-k weights */
    if ((st = linear_w(ctx, &L->router, ctx->xb, ctx->router, n))) return st;
    dump(ctx, (int)l, "router.f32", ctx->router, (size_t)n * ne * 4);
    for (int t = 0; t < n; t++) {
        float *p = ctx->router + (size_t)t * ne, *w = ctx->topk_w + (size_t)t * k;
        ops_softmax(p, ne);
        if ((st = ops_topk(p, ne, k, ctx->topk_ids + (size_t)t * k, w))) return st;
        if (c->norm_topk_prob) {
            float sum = 0;
            for (int i = 0; i < k; i++) sum += w[i];
            for (int i = 0; i < k; i++) w[i] /= sum;
        }
    }
    dump(ctx, (int)l, "moe_topk.i32", ctx->topk_ids, (size_t)n * k * 4);
    dump(ctx, (int)l, "moe_topw.f32", ctx->topk_w, (size_t)n * k * 4);

    /* Group the (token, slot) selections by expert: a counting sort, so
     * experts are visited in id order and each is acquired once. */
    int32_t *count = ctx->expert_count, *start = ctx->expert_start;
    memset(count, 0, (size_t)ne * sizeof *count);
    for (int i = 0; i < n * k; i++) count[ctx->topk_ids[i]]++;
    for (int e = 0, s = 0; e < ne; e++) {
        start[e] = s;
        s += count[e];
    }
    for (int i = 0; i < n * k; i++) ctx->sel_order[start[ctx->topk_ids[i]]++] = i;

    memset(ctx->xb2, 0, (size_t)n * hidden * sizeof(float));
    for (int e = 0, s = 0; e < ne; s += count[e], e++) {
        int m = count[e];
        if (m == 0) continue;
        for (int j = 0; j < m; j++) { /* gather the tokens routed to e */
            int t = ctx->sel_order[s + j] / k;
            memcpy(ctx->gather + (size_t)j * hidden, ctx->xb + (size_t)t * hidden,
                   (size_t)hidden * sizeof(float));
        }
        struct expert_view ev;
        if ((st = expert_store_acquire(ctx->model->experts, l, (uint32_t)e, &ev))) return st;
        const void *const w[3] = {ev.gate, ev.up, ev.down};
        st = swiglu_mlp(ctx, ev.dtype, w, (int)c->moe_ffn, ctx->gather, ctx->moe_tmp, m);
        expert_store_release(ctx->model->experts, l, (uint32_t)e);
        if (st) return st;
        ctx->stats.expert_loads++;
        ctx->stats.expert_bytes_read += ev.bytes;
        for (int j = 0; j < m; j++) { /* weighted scatter-add */
            int sel = ctx->sel_order[s + j], t = sel / k;
            ops_scale_add(ctx->xb2 + (size_t)t * hidden, ctx->moe_tmp + (size_t)j * hidden,
                          ctx->topk_w[sel], hidden);
        }
    }
    dump(ctx, (int)l, "moe_out.f32", ctx->xb2, (size_t)n * hidden * 4);
    return SL_OK;
}

int forward_batch(struct sl_context *ctx, const int32_t *tokens, int n,
                  uint32_t pos, float *logits, int all_logits) {
    const struct sl_model *m = ctx->model;
    const struct sl_config *c = &m->cfg;
    int hidden = (int)c->hidden, st;
    SL_ASSERT(n >= 1 && (uint32_t)n <= ctx->n_batch && pos + (uint32_t)n <= ctx->n_ctx);

    for (int t = 0; t < n; t++)
        ops_embed_row(m->embed.dtype, m->embed.data, tokens[t], hidden,
                      ctx->x + (size_t)t * hidden);
    for (uint32_t l = 0; l < c->n_layers; l++) {
        const struct layer_weights *L = &m->layers[l];
        for (int t = 0; t < n; t++)
            ops_rmsnorm(ctx->xb + (size_t)t * hidden, ctx->x + (size_t)t * hidden,
                        L->attn_norm, hidden, c->rms_eps);
        if ((st = attention(ctx, l, pos, n))) return st;
        ops_add(ctx->x, ctx->xb2, n * hidden);
        for (int t = 0; t < n; t++)
            ops_rmsnorm(ctx->xb + (size_t)t * hidden, ctx->x + (size_t)t * hidden,
                        L->ffn_norm, hidden, c->rms_eps);
        if (c->layer_is_moe[l]) {
            if ((st = moe(ctx, l, n))) return st;
        } else {
            const int dt[3] = {L->w_gate.dtype, L->w_up.dtype, L->w_down.dtype};
            const void *const w[3] = {L->w_gate.data, L->w_up.data, L->w_down.data};
            if ((st = swiglu_mlp(ctx, dt, w, (int)c->ffn, ctx->xb, ctx->xb2, n))) return st;
            dump(ctx, (int)l, "mlp_out.f32", ctx->xb2, (size_t)n * hidden * 4);
        }
        ops_add(ctx->x, ctx->xb2, n * hidden);
        dump(ctx, (int)l, "out.f32", ctx->x, (size_t)n * hidden * 4);
    }
    if (!logits) return SL_OK;
    /* Logits of every token, or of the last one only. */
    int first = all_logits ? 0 : n - 1, rows = n - first;
    for (int t = first; t < n; t++)
        ops_rmsnorm(ctx->xb + (size_t)(t - first) * hidden, ctx->x + (size_t)t * hidden,
                    m->final_norm, hidden, c->rms_eps);
    if ((st = linear_w(ctx, &m->lm_head, ctx->xb, logits, rows))) return st;
    dump(ctx, -1, "logits.f32", logits, (size_t)rows * c->n_vocab * 4);
    return SL_OK;
}
