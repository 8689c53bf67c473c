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
 * chunk and applied to all of its tokens together. A chunk may mix several
 * sequences (ctx->runs, sl_decode_batch): then only what reads a
 * sequence's own cache or state runs per sequence (mixer_runs).
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
#include "cpu/ops_ext.h"
#include "layer_hybrid.h"
#include "layer_mla.h"
#include "moe_route.h"
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

/* The per-family q/k normalisation and rotary embedding of one token at
 * position p: q (n_heads, head_dim), k (n_kv_heads, head_dim) in place. */
static int qk_norm_rope(const struct sl_model *m, const struct layer_weights *L,
                        float *q, float *k, uint32_t p) {
    const struct sl_config *c = &m->cfg;
    int nh = (int)c->n_heads, nkv = (int)c->n_kv_heads, hd = (int)c->head_dim;
    if (c->qk_norm == SL_QK_NORM_HEAD) {
        ops_rmsnorm_heads(q, L->q_norm, nh, hd, c->rms_eps);
        ops_rmsnorm_heads(k, L->k_norm, nkv, hd, c->rms_eps);
    } else if (c->qk_norm == SL_QK_NORM_FULL) { /* olmoe: the whole projection */
        ops_rmsnorm(q, q, L->q_norm, nh * hd, c->rms_eps);
        ops_rmsnorm(k, k, L->k_norm, nkv * hd, c->rms_eps);
    }
    int st;
    if (m->rope_inv_freq) { /* YaRN */
        if ((st = ops_rope_neox_freqs(q, nh, hd, hd, p, m->rope_inv_freq, m->rope_mscale)) ||
            (st = ops_rope_neox_freqs(k, nkv, hd, hd, p, m->rope_inv_freq, m->rope_mscale)))
            return st;
        return SL_OK;
    }
    int rd = (int)c->rope_dim; /* < head_dim: partial rotary (hybrid) */
    if ((st = ops_rope_neox(q, nh, hd, rd, p, c->rope_theta)) ||
        (st = ops_rope_neox(k, nkv, hd, rd, p, c->rope_theta)))
        return st;
    return SL_OK;
}

/* q, k and v of n tokens of ctx->xb (n, hidden) with their biases: q into
 * ctx->q (n, q_dim) (and the output gate, gated attention), K and V (n,
 * kv_dim) wherever the caller wants them (the cache, or a mixed batch's
 * scratch). Each projection is one matrix pass over all n rows. */
static int attn_qkv(struct sl_context *ctx, uint32_t l, float *K, float *V, int n) {
    const struct sl_config *c = &ctx->model->cfg;
    const struct layer_weights *L = &ctx->model->layers[l];
    int st;
    if ((st = c->attn_gate ? hybrid_attn_q(ctx, l, n) /* q and its output gate */
                           : linear_w(ctx, &L->wq, ctx->xb, ctx->q, n)) ||
        (st = linear_w(ctx, &L->wk, ctx->xb, K, n)) ||
        (st = linear_w(ctx, &L->wv, ctx->xb, V, n)))
        return st;
    ctx->n_attn_proj += 3;
    add_bias(ctx->q, L->bq, n, (int)config_q_dim(c));
    add_bias(K, L->bk, n, (int)config_kv_dim(c));
    add_bias(V, L->bv, n, (int)config_kv_dim(c));
    return SL_OK;
}

/* q/k norms and RoPE of n tokens at positions pos..pos+n-1: q (n, q_dim),
 * K (n, kv_dim) in place. */
static int attn_rope(const struct sl_context *ctx, uint32_t l, float *q, float *K,
                     uint32_t pos, int n) {
    const struct sl_config *c = &ctx->model->cfg;
    size_t q_dim = config_q_dim(c), kv_dim = config_kv_dim(c);
    int st;
    for (int t = 0; t < n; t++)
        if ((st = qk_norm_rope(ctx->model, &ctx->model->layers[l], q + (size_t)t * q_dim,
                               K + (size_t)t * kv_dim, pos + (uint32_t)t)))
            return st;
    return SL_OK;
}

/* Attention of n queries q (n, q_dim) at positions pos..pos+n-1 over the
 * bound sequence's cache of layer l (rows 0..pos+n-1 written) into att (n,
 * q_dim). */
static int attn_core(struct sl_context *ctx, uint32_t l, const float *q, float *att,
                     uint32_t pos, int n) {
    const struct sl_config *c = &ctx->model->cfg;
    const struct layer_weights *L = &ctx->model->layers[l];
    int nh = (int)c->n_heads, nkv = (int)c->n_kv_heads, hd = (int)c->head_dim;
    int kv_dim = (int)config_kv_dim(c);
    const float *kc = ctx->k_cache + (uint64_t)l * ctx->n_ctx * (uint64_t)kv_dim;
    const float *vc = ctx->v_cache + (uint64_t)l * ctx->n_ctx * (uint64_t)kv_dim;
    float scale = 1.0f / sqrtf((float)hd);
    int window = c->layer_sliding[l] ? (int)c->sliding_window : 0;
    if (window || L->sinks) /* mixtral's window, gpt_oss's window and sinks */
        return ops_attention_ext(ctx->pool, att, q, kc, vc, n, (int)pos, nh, nkv, hd,
                                 kv_dim, scale, window, L->sinks, ctx->att_scores);
    if (n == 1)
        return ops_attention(ctx->pool, att, q, kc, vc, nh, nkv, hd, (int)pos + 1, kv_dim,
                             scale, ctx->att_scores);
    return ops_attention_causal(ctx->pool, att, q, kc, vc, n, (int)pos, nh, nkv, hd,
                                kv_dim, scale, ctx->att_scores);
}

/* The output gate (gated attention) and o_proj of n rows: ctx->att (n,
 * q_dim) into ctx->xb2 (n, hidden), one matrix pass. */
static int attn_out(struct sl_context *ctx, uint32_t l, int n) {
    const struct sl_config *c = &ctx->model->cfg;
    const struct layer_weights *L = &ctx->model->layers[l];
    int st;
    if (c->attn_gate) hybrid_attn_gate(ctx, n);
    if ((st = linear_w(ctx, &L->wo, ctx->att, ctx->xb2, n))) return st;
    ctx->n_attn_proj++;
    add_bias(ctx->xb2, L->bo, n, (int)c->hidden);
    dump(ctx, (int)l, "attn_out.f32", ctx->xb2, (size_t)n * c->hidden * 4);
    return SL_OK;
}

/* Self-attention of n tokens of the bound sequence at positions
 * pos..pos+n-1: reads ctx->xb (n, hidden), writes ctx->xb2 (n, hidden); K
 * and V are projected straight into the cache. */
static int attention(struct sl_context *ctx, uint32_t l, uint32_t pos, int n) {
    if (ctx->mla) return mla_forward(ctx, l, pos, n); /* deepseek_v3 */
    const struct sl_config *c = &ctx->model->cfg;
    uint64_t kv_dim = config_kv_dim(c), row = ((uint64_t)l * ctx->n_ctx + pos) * kv_dim;
    float *K = ctx->k_cache + row, *V = ctx->v_cache + row; /* (n, kv_dim) */
    int st;
    if ((st = attn_qkv(ctx, l, K, V, n)) || (st = attn_rope(ctx, l, ctx->q, K, pos, n)))
        return st;
    dump(ctx, (int)l, "q.f32", ctx->q, (size_t)n * config_q_dim(c) * 4);
    dump(ctx, (int)l, "k.f32", K, (size_t)n * kv_dim * 4);
    if ((st = attn_core(ctx, l, ctx->q, ctx->att, pos, n))) return st;
    return attn_out(ctx, l, n);
}

/* Self-attention of a mixed batch (ctx->runs, n rows in run order): the
 * projections once over all n rows (K and V into the ctx->bt_k / bt_v
 * scratch), then per run, bound to its sequence: the norms and RoPE at the
 * run's positions, its K/V rows appended to its cache, attention over that
 * cache; then o_proj once over all n rows. Every step is per row or per
 * run, so each sequence's rows come out as if it ran alone. */
static int attention_runs(struct sl_context *ctx, uint32_t l, int n) {
    const struct sl_config *c = &ctx->model->cfg;
    size_t qd = config_q_dim(c), kvd = config_kv_dim(c);
    float *K = ctx->bt_k, *V = ctx->bt_v; /* (n, kv_dim) */
    uint32_t bound = ctx->cur_seq;
    int st = attn_qkv(ctx, l, K, V, n);
    for (int r = 0; r < ctx->n_runs && !st; r++) {
        const struct seq_run *u = &ctx->runs[r];
        st = attn_rope(ctx, l, ctx->q + u->start * qd, K + u->start * kvd, u->pos, u->n);
    }
    if (st) return st;
    dump(ctx, (int)l, "q.f32", ctx->q, (size_t)n * qd * 4);
    dump(ctx, (int)l, "k.f32", K, (size_t)n * kvd * 4);
    for (int r = 0; r < ctx->n_runs && !st; r++) {
        const struct seq_run *u = &ctx->runs[r];
        seq_bind(ctx, u->seq);
        uint64_t row = ((uint64_t)l * ctx->n_ctx + u->pos) * kvd;
        memcpy(ctx->k_cache + row, K + u->start * kvd, (size_t)u->n * kvd * sizeof(float));
        memcpy(ctx->v_cache + row, V + u->start * kvd, (size_t)u->n * kvd * sizeof(float));
        st = attn_core(ctx, l, ctx->q + u->start * qd, ctx->att + u->start * qd, u->pos,
                       u->n);
    }
    seq_bind(ctx, bound);
    return st ? st : attn_out(ctx, l, n);
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

/* One routed expert e of layer l on m rows X (m, hidden) into out (m,
 * hidden): swiglu_mlp, or for gpt_oss gate/up with their biases (stored
 * interleaved, HF's layout), the clamped SwiGLU, down with its bias. */
static int expert_ffn(struct sl_context *ctx, uint32_t l, int e, const int dtype[3],
                      const void *const w[3], const float *X, float *out, int m) {
    const struct sl_config *c = &ctx->model->cfg;
    const struct layer_weights *L = &ctx->model->layers[l];
    int ffn = (int)c->moe_ffn, hidden = (int)c->hidden, st;
    if (!c->expert_bias && !(c->swiglu_limit > 0))
        return swiglu_mlp(ctx, dtype, w, ffn, X, out, m);
    if ((st = linear(ctx, dtype[0], w[0], ffn, hidden, X, ctx->hb, m)) ||
        (st = linear(ctx, dtype[1], w[1], ffn, hidden, X, ctx->hb2, m)))
        return st;
    if (L->exp_gate_up_b) {
        const float *b = L->exp_gate_up_b + (size_t)e * 2 * ffn; /* (2 * ffn) */
        for (int r = 0; r < m; r++) {
            float *g = ctx->hb + (size_t)r * ffn, *u = ctx->hb2 + (size_t)r * ffn;
            for (int j = 0; j < ffn; j++) {
                g[j] += b[2 * j];
                u[j] += b[2 * j + 1];
            }
        }
    }
    if (c->swiglu_limit > 0)
        ops_swiglu_clamped(ctx->hb, ctx->hb, ctx->hb2, m * ffn, c->swiglu_alpha,
                           c->swiglu_limit);
    else
        ops_swiglu(ctx->hb, ctx->hb, ctx->hb2, m * ffn);
    if ((st = linear(ctx, dtype[2], w[2], hidden, ffn, ctx->hb, out, m))) return st;
    if (L->exp_down_b) add_bias(out, L->exp_down_b + (size_t)e * hidden, m, hidden);
    return SL_OK;
}

/* Router lookahead: the next MoE layer's router (l+1's, or later past dense
 * layers) applied to layer l's ffn-normed input ctx->xb (n, hidden) predicts
 * the experts it will pick, with that layer's own bias and selection rule
 * (moe_route_predict); they are handed to the store as low-priority
 * prefetch while layer l computes. The prediction only moves bytes, never
 * numbers. Uses ctx->router as scratch (layer l's routing is done by then)
 * and ctx->pf_ids for the union of the chunk's predictions. */
static void lookahead(struct sl_context *ctx, uint32_t l, int n) {
    const struct sl_config *c = &ctx->model->cfg;
    uint32_t nl = l + 1; /* the next MoE layer (dense ones may come between) */
    while (nl < c->n_layers && !c->layer_is_moe[nl]) nl++;
    if (nl >= c->n_layers || !c->layer_is_moe[nl] ||
        c->n_experts_used > MOE_ROUTE_PREDICT_MAX_K ||
        !expert_store_prefetch_wanted(ctx->model->experts, nl))
        return;
    const struct layer_weights *N = &ctx->model->layers[nl];
    int np;
    if (linear_w(ctx, &N->router, ctx->xb, ctx->router, n) ||
        moe_route_predict(c, ctx->router, N->router_b, N->router_sel_bias, n, ctx->pf_ids,
                          &np))
        return;
    expert_store_prefetch(ctx->model->experts, nl, ctx->pf_ids, np);
}

/* Routed experts of n tokens: reads ctx->xb (n, hidden), writes ctx->xb2. */
static int moe(struct sl_context *ctx, uint32_t l, int n) {
    const struct sl_config *c = &ctx->model->cfg;
    const struct layer_weights *L = &ctx->model->layers[l];
    int k = (int)c->n_experts_used, ne = (int)c->n_experts, hidden = (int)c->hidden;
    int st;

    double t_stage = sl_now(); /* stage timers: ctx->stats.t_* */
    /* router logits → probs → top-k ids → top-k weights */
    if ((st = linear_w(ctx, &L->router, ctx->xb, ctx->router, n))) return st;
    add_bias(ctx->router, L->router_b, n, ne);
    dump(ctx, (int)l, "router.f32", ctx->router, (size_t)n * ne * 4);
    if ((st = moe_route_layer(c, ctx->router, L->router_sel_bias, n, ctx->topk_ids,
                              ctx->topk_w)))
        return st;
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

    /* The distinct experts, in id order; start[e] back to its first slot. */
    int nd = 0;
    for (int e = 0; e < ne; e++) {
        start[e] -= count[e];
        if (count[e]) ctx->moe_ids[nd++] = e;
    }
    struct expert_store *store = ctx->model->experts;
    if ((st = expert_store_request(store, l, ctx->moe_ids, nd))) return st;
    memset(ctx->moe_done, 0, (size_t)nd);
    lookahead(ctx, l, n);
    double t_now = sl_now();
    ctx->stats.t_router += t_now - t_stage;
    t_stage = t_now;
    double io_before = ctx->stats.t_io_wait;

    /* Compute whichever requested expert is resident next, so that the
     * resident ones run while the others are read. Each expert's outputs go
     * to its own rows of moe_tmp. */
    for (int left = nd; left > 0; left--) {
        struct expert_view ev;
        int i;
        double t_acq = sl_now();
        st = expert_store_acquire_next(store, l, ctx->moe_ids, ctx->moe_done, nd, &i, &ev);
        ctx->stats.t_io_wait += sl_now() - t_acq;
        if (st) break;
        int e = ctx->moe_ids[i], m = count[e], s0 = start[e];
        for (int j = 0; j < m; j++) { /* gather the tokens routed to e */
            int t = ctx->sel_order[s0 + j] / k;
            memcpy(ctx->gather + (size_t)j * hidden, ctx->xb + (size_t)t * hidden,
                   (size_t)hidden * sizeof(float));
        }
        const void *const w[3] = {ev.gate, ev.up, ev.down};
        st = expert_ffn(ctx, l, e, ev.dtype, w, ctx->gather,
                        ctx->moe_tmp + (size_t)s0 * hidden, m);
        expert_store_release(store, l, (uint32_t)e);
        if (st) break;
        ctx->stats.expert_loads++;
        ctx->stats.expert_bytes_read += ev.bytes;
    }
    if (st) {
        expert_store_cancel(store, l, ctx->moe_ids, ctx->moe_done, nd);
        return st;
    }
    /* Weighted sum in a fixed order (experts by id, then tokens), whatever
     * order the experts arrived in: outputs stay bit-identical. */
    memset(ctx->xb2, 0, (size_t)n * hidden * sizeof(float));
    for (int j = 0; j < n * k; j++) {
        int sel = ctx->sel_order[j], t = sel / k;
        ops_scale_add(ctx->xb2 + (size_t)t * hidden, ctx->moe_tmp + (size_t)j * hidden,
                      ctx->topk_w[sel], hidden);
    }
    /* expert compute = the loop and the sum, less the time in acquire */
    ctx->stats.t_experts += sl_now() - t_stage - (ctx->stats.t_io_wait - io_before);
    if (L->sh_gate.data) { /* deepseek_v3 shared experts, added unscaled */
        const int dt[3] = {L->sh_gate.dtype, L->sh_up.dtype, L->sh_down.dtype};
        const void *const w[3] = {L->sh_gate.data, L->sh_up.data, L->sh_down.data};
        if ((st = swiglu_mlp(ctx, dt, w, (int)L->sh_gate.rows, ctx->xb, ctx->gather, n)))
            return st;
        if (L->sh_expert_gate) /* qwen3_next / qwen3_5_moe: sigmoid-gated */
            hybrid_shared_gate(ctx, l, ctx->gather, n);
        ops_add(ctx->xb2, ctx->gather, n * hidden);
    }
    dump(ctx, (int)l, "moe_out.f32", ctx->xb2, (size_t)n * hidden * 4);
    return SL_OK;
}

/* The token mixer of layer l: Gated DeltaNet or attention. */
static int mixer(struct sl_context *ctx, uint32_t l, uint32_t pos, int n) {
    return ctx->model->cfg.layer_linear[l] ? hybrid_gdn_layer(ctx, l, n)
                                           : attention(ctx, l, pos, n);
}

/* A chunk of several sequences (ctx->runs, n rows): attention layers share
 * their projections (attention_runs); Gated DeltaNet and MLA layers run
 * whole once per run, bound to that sequence's cache and state, on the
 * run's rows of the activations. Everything else in the layer runs over the
 * whole chunk (forward_batch). */
static int mixer_runs(struct sl_context *ctx, uint32_t l, int n) {
    const struct sl_config *c = &ctx->model->cfg;
    if (!c->layer_linear[l] && !ctx->mla && ctx->bt_k) return attention_runs(ctx, l, n);
    size_t hidden = c->hidden, qd = config_q_dim(c);
    float *xb = ctx->xb, *xb2 = ctx->xb2, *q = ctx->q, *att = ctx->att;
    uint32_t bound = ctx->cur_seq;
    int st = SL_OK;
    for (int r = 0; r < ctx->n_runs && !st; r++) {
        const struct seq_run *u = &ctx->runs[r];
        seq_bind(ctx, u->seq);
        ctx->xb = xb + (size_t)u->start * hidden;
        ctx->xb2 = xb2 + (size_t)u->start * hidden;
        ctx->q = q + (size_t)u->start * qd;
        ctx->att = att + (size_t)u->start * qd;
        st = mixer(ctx, l, u->pos, u->n);
        ctx->xb = xb;
        ctx->xb2 = xb2;
        ctx->q = q;
        ctx->att = att;
    }
    seq_bind(ctx, bound);
    return st;
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
        double t_att = sl_now();
        for (int t = 0; t < n; t++)
            ops_rmsnorm(ctx->xb + (size_t)t * hidden, ctx->x + (size_t)t * hidden,
                        L->attn_norm, hidden, c->rms_eps);
        if ((st = ctx->runs ? mixer_runs(ctx, l, n) : mixer(ctx, l, pos, n))) return st;
        ops_add(ctx->x, ctx->xb2, n * hidden);
        ctx->stats.t_attention += sl_now() - t_att;
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
