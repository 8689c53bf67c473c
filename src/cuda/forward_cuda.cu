/*
 * forward_cuda.cu — the qwen3_moe forward pass on the GPU, for a chunk of n
 * tokens at consecutive positions (n = 1 is decode), with the stages of
 * src/forward.c:
 *
 *   embed → per layer: rmsnorm → q/k/v (+ biases) → per-head q/k rmsnorm →
 *   rope → KV append → causal GQA attention → o_proj (+ residual) → rmsnorm
 *   → MoE (router logits → softmax → top-k ids → top-k weights → expert
 *   gate/up → SwiGLU → down → weighted sum in expert-id order + residual) or
 *   a dense SwiGLU MLP (+ residual) → final rmsnorm → lm_head.
 *
 * Two ways to reach the experts:
 *   resident (every expert in the GPU cache): routing, grouping and the
 *     expert kernels read a device table of record bases, so a whole step
 *     is enqueued without waiting; the decode step is captured once as a
 *     CUDA graph and replayed (positions and tokens live in device memory).
 *   streaming: after the router, the top-k ids come back to the host, the
 *     GPU cache makes the layer's experts resident (uploading the missing
 *     ones on its copy stream), the resident experts run first and the
 *     uploaded ones after their copy event. Each selection's output is
 *     computed by the same kernels either way and summed in a fixed order,
 *     so logits are bit-identical whatever the GPU cache size.
 *
 * Allocates nothing: every buffer lives in struct cuda_ctx.
 * Not here: SLUICE_DUMP intermediates (CPU backend only), per-stage timers.
 */
#include <math.h>

#include "cuda/internal.cuh"

/* Decode: rmsnorm + q/k/v in one launch when the three share a dense
 * format; 1 if done, 0 to take the separate kernels, < 0 a status. */
static int qkv_fused(struct cuda_ctx *cc, const struct sl_config *c, const struct layer_weights *L,
                     const struct gpu_layer *g) {
    if (L->wq.dtype != L->wk.dtype || L->wq.dtype != L->wv.dtype ||
        !cuda_tune("SLUICE_CUDA_QKV", 1))
        return 0;
    int nf = cuda_tune("SLUICE_CUDA_NORMFUSE", 1), st;
    if (!nf && (st = rmsnorm_cuda(cc->stream, cc->x, g->attn_norm, cc->xb, 1, (int)c->hidden,
                                  c->rms_eps)))
        return -st;
    const void *w[3] = {g->wq, g->wk, g->wv};
    float *y[3] = {cc->q, cc->kb, cc->vb};
    const float *b[3] = {g->bq, g->bk, g->bv};
    int rows[3] = {(int)config_q_dim(c), (int)config_kv_dim(c), (int)config_kv_dim(c)};
    st = matvec_multi_cuda(cc->stream, L->wq.dtype, 3, w, y, b, rows, (int)c->hidden,
                           nf ? cc->x : cc->xb, nf ? g->attn_norm : NULL, c->rms_eps, NULL);
    return st == SL_OK ? 1 : st == SL_ERR_UNSUPPORTED ? 0 : -st;
}

/* Decode: the ffn rmsnorm fused into the router matvec (xn also written to
 * cc->xb for the experts); 1 if done, 0 to run them apart, < 0 a status. */
static int router_fused(struct cuda_ctx *cc, const struct sl_config *c,
                        const struct layer_weights *L, const struct gpu_layer *g) {
    if (!cuda_tune("SLUICE_CUDA_NORMFUSE", 1)) return 0;
    const void *w[1] = {g->router};
    float *y[1] = {cc->router};
    const float *b[1] = {g->router_b};
    int rows[1] = {(int)c->n_experts};
    int st = matvec_multi_cuda(cc->stream, L->router.dtype, 1, w, y, b, rows, (int)c->hidden,
                               cc->x, g->ffn_norm, c->rms_eps, cc->xb);
    return st == SL_OK ? 1 : st == SL_ERR_UNSUPPORTED ? 0 : -st;
}

/* Attention and the residual, then the ffn rmsnorm into cc->xb. With
 * router_done (decode MoE layers) the rmsnorm is fused into the router
 * matvec when the router's format allows: *router_done = 1 then. */
static int attention_block(struct cuda_model *cm, struct cuda_ctx *cc, struct sl_context *ctx,
                           uint32_t l, int n, int *router_done) {
    const struct sl_model *m = ctx->model;
    const struct sl_config *c = &m->cfg;
    const struct layer_weights *L = &m->layers[l];
    const struct gpu_layer *g = &cm->layers[l];
    cudaStream_t s = cc->stream;
    int hid = (int)c->hidden, nh = (int)c->n_heads, nkv = (int)c->n_kv_heads;
    int hd = (int)c->head_dim, qd = (int)config_q_dim(c), kvd = (int)config_kv_dim(c), st;
    uint64_t lay = (uint64_t)l * ctx->n_ctx * kvd;
    int qk = c->qk_norm == SL_QK_NORM_HEAD;
    int fused = n == 1 ? qkv_fused(cc, c, L, g) : 0;
    if (fused < 0) return -fused;
    if (!fused &&
        ((st = rmsnorm_cuda(s, cc->x, g->attn_norm, cc->xb, n, hid, c->rms_eps)) ||
         (st = matmul_cuda(s, L->wq.dtype, g->wq, cc->xb, cc->q, n, qd, hid, g->bq, 0)) ||
         (st = matmul_cuda(s, L->wk.dtype, g->wk, cc->xb, cc->kb, n, kvd, hid, g->bk, 0)) ||
         (st = matmul_cuda(s, L->wv.dtype, g->wv, cc->xb, cc->vb, n, kvd, hid, g->bv, 0))))
        return st;
    if ((st = qk_rope_store_cuda(s, cc->q, cc->kb, cc->vb, cc->k_cache + lay, cc->v_cache + lay,
                                 cc->d_io, n, nh, nkv, hd, qk ? g->q_norm : NULL,
                                 qk ? g->k_norm : NULL, c->rms_eps, cm->d_inv_freq)) ||
        (st = attention_cuda(s, cc->q, cc->k_cache + lay, cc->v_cache + lay, cc->att, cc->scores,
                             cc->d_io, n, nh, nkv, hd, (int)ctx->n_ctx,
                             1.0f / sqrtf((float)hd))) ||
        (st = matmul_cuda(s, L->wo.dtype, g->wo, cc->att, cc->x, n, hid, qd, g->bo, 1)))
        return st;
    if (router_done) {
        int f = router_fused(cc, c, L, g);
        if (f < 0) return -f;
        *router_done = f;
        if (f) return SL_OK; /* router logits and cc->xb written */
    }
    return rmsnorm_cuda(s, cc->x, g->ffn_norm, cc->xb, n, hid, c->rms_eps);
}

/* Streaming MoE: the host groups the selections by expert; the GPU cache
 * makes them resident batch by batch (at most its slot count at once);
 * in each batch the resident experts run while the missing ones arrive.
 * Each batch's items, selections and counts have their own place in the
 * pinned buffers, so no upload overwrites one still in flight. */
static int moe_streaming(struct cuda_model *cm, struct cuda_ctx *cc, struct sl_context *ctx,
                         uint32_t l, int n) {
    const struct sl_config *c = &ctx->model->cfg;
    const struct gpu_layer *g = &cm->layers[l];
    cudaStream_t s = cc->stream;
    int k = (int)c->n_experts_used, ne = (int)c->n_experts, nsel = n * k, st = SL_OK;
    CU_TRY(cudaMemcpyAsync(cc->h_ids, cc->topk_ids, (size_t)nsel * 4, cudaMemcpyDeviceToHost, s));
    CU_TRY(cudaStreamSynchronize(s));
    int32_t *cnt = cc->tmp_count, *pos = cc->tmp_count + ne, *ids = cc->distinct;
    memset(cnt, 0, (size_t)ne * sizeof *cnt);
    for (int i = 0; i < nsel; i++) {
        if (cc->h_ids[i] < 0 || cc->h_ids[i] >= ne)
            return sl_seterr(SL_ERR_INTERNAL, "cuda: layer %u: router produced expert id %d",
                             l, cc->h_ids[i]);
        cnt[cc->h_ids[i]]++;
    }
    int nd = 0;
    for (int e = 0; e < ne; e++)
        if (cnt[e]) ids[nd++] = e;
    ctx->stats.expert_loads += (uint64_t)nd;
    ctx->stats.expert_bytes_read += (uint64_t)nd * (g->off.o[2] + g->moe.rb_down * g->moe.hidden);
    int cap = cm->gc.n_slots, maxc = n == 1 ? 1 : 2, ns = 0;
    moe_item none = {};
    for (int b0 = 0, bi = 0; b0 < nd && !st; b0 += cap, bi++) {
        int nb = nd - b0 < cap ? nd - b0 : cap, uploaded = 0, na = 0, ni = b0;
        if ((st = gpu_cache_acquire(cm, l, ids + b0, nb, s, cc->bases, cc->hit, cc->slot_ids,
                                    cc->ev_arrive, &uploaded)))
            return st;
        int s0 = ns; /* this batch's selections start here in h_sel */
        for (int pass = 0; pass < 2; pass++) /* resident first, then uploaded */
            for (int i = 0; i < nb; i++) {
                if (cc->hit[i] != (pass == 0)) continue;
                int e = ids[b0 + i];
                const uint8_t *b = cc->bases[i];
                cc->h_items[ni++] = moe_item{b + g->off.o[0], b + g->off.o[1], b + g->off.o[2],
                                             ns, cnt[e]};
                pos[e] = ns;
                ns += cnt[e];
                na += pass == 0;
            }
        for (int i = 0; i < nsel; i++) {
            int e = cc->h_ids[i];
            if (e >= ids[b0] && e <= ids[b0 + nb - 1]) cc->h_sel[pos[e]++] = i;
        }
        int32_t *hc = cc->h_counts + 2 * bi, *dc = cc->n_items + 2 * bi;
        hc[0] = na;
        hc[1] = nb - na;
        cudaError_t e = cudaMemcpyAsync(cc->items + b0, cc->h_items + b0, (size_t)nb * sizeof(moe_item),
                                        cudaMemcpyHostToDevice, s);
        if (e == cudaSuccess)
            e = cudaMemcpyAsync(cc->sel + s0, cc->h_sel + s0, (size_t)(ns - s0) * 4,
                                cudaMemcpyHostToDevice, s);
        if (e == cudaSuccess) e = cudaMemcpyAsync(dc, hc, 8, cudaMemcpyHostToDevice, s);
        if (e != cudaSuccess) st = cuda_fail(e, "cudaMemcpyAsync (expert items)");
        const moe_item *ia = cc->items + b0, *ib = cc->items + b0 + na;
        if (!st && na)
            st = expert_gate_up_cuda(s, &g->moe, ia, dc, na, none, cc->sel, k, cc->xb, cc->H, maxc);
        if (!st && na && n > 1)
            st = expert_down_cuda(s, &g->moe, ia, dc, na, none, cc->sel, k, cc->H, cc->moe_tmp, 0,
                                  maxc);
        if (!st && nb > na && uploaded) {
            e = cudaStreamWaitEvent(s, cc->ev_arrive, 0);
            if (e != cudaSuccess) st = cuda_fail(e, "cudaStreamWaitEvent");
        }
        if (!st && nb > na)
            st = expert_gate_up_cuda(s, &g->moe, ib, dc + 1, nb - na, none, cc->sel, k, cc->xb,
                                     cc->H, maxc);
        if (!st && nb > na && n > 1)
            st = expert_down_cuda(s, &g->moe, ib, dc + 1, nb - na, none, cc->sel, k, cc->H,
                                  cc->moe_tmp, 0, maxc);
        if (!st && n == 1) /* decode: the k distinct experts are one batch (cap >= k) */
            st = expert_down_combine_cuda(s, &g->moe, cc->items + b0, nb, cc->sel, cc->topk_ids,
                                          cc->topk_w, cc->H, cc->x);
        gpu_cache_release(cm, cc->slot_ids, nb, s);
    }
    return st;
}

static int moe_block(struct cuda_model *cm, struct cuda_ctx *cc, struct sl_context *ctx,
                     uint32_t l, int n, int router_done) {
    const struct sl_model *m = ctx->model;
    const struct sl_config *c = &m->cfg;
    const struct gpu_layer *g = &cm->layers[l];
    cudaStream_t s = cc->stream;
    int k = (int)c->n_experts_used, ne = (int)c->n_experts, hid = (int)c->hidden, st;
    uint8_t *const *table = cm->gc.all_resident ? cm->gc.d_table + (uint64_t)l * ne : NULL;
    if ((!router_done && (st = matmul_cuda(s, m->layers[l].router.dtype, g->router, cc->xb,
                                           cc->router, n, ne, hid, g->router_b, 0))) ||
        (st = route_cuda(s, cc->router, n, ne, k, c->router_kind, c->norm_topk_prob,
                         cc->topk_ids, cc->topk_w, table, g->off, cc->items, cc->sel,
                         cc->n_items)))
        return st;
    if (table) {
        if (n == 1) { /* decode: k distinct experts, each read once */
            ctx->stats.expert_loads += (uint64_t)k;
            ctx->stats.expert_bytes_read +=
                (uint64_t)k * (g->off.o[2] + g->moe.rb_down * g->moe.hidden);
        }
        int maxc = n == 1 ? 1 : 2, max_items = n == 1 ? k : (n * k < ne ? n * k : ne);
        moe_item none = {};
        if (n > 1 && (st = moe_plan_cuda(s, cc->topk_ids, n, k, ne, table, g->off, cc->items,
                                         cc->sel, cc->n_items)))
            return st;
        if ((st = expert_gate_up_cuda(s, &g->moe, cc->items, cc->n_items, max_items, none,
                                      cc->sel, k, cc->xb, cc->H, maxc)))
            return st;
        if (n == 1) /* the route kernel listed the k items */
            return expert_down_combine_cuda(s, &g->moe, cc->items, k, cc->sel, cc->topk_ids,
                                            cc->topk_w, cc->H, cc->x);
        if ((st = expert_down_cuda(s, &g->moe, cc->items, cc->n_items, max_items, none, cc->sel,
                                   k, cc->H, cc->moe_tmp, 0, maxc)))
            return st;
    } else if ((st = moe_streaming(cm, cc, ctx, l, n))) {
        return st;
    } else if (n == 1) {
        return SL_OK; /* moe_streaming combined into x */
    }
    return moe_combine_cuda(s, cc->x, cc->moe_tmp, cc->topk_ids, cc->topk_w, n, k, hid);
}

/* Every kernel of a chunk, enqueued on cc->stream (no host copies: the
 * decode step is captured as it is); logits rows into cc->logits. */
static int enqueue_forward(struct cuda_model *cm, struct cuda_ctx *cc, struct sl_context *ctx,
                           int n, int want_logits, int all_logits) {
    const struct sl_model *m = ctx->model;
    const struct sl_config *c = &m->cfg;
    cudaStream_t s = cc->stream;
    int hid = (int)c->hidden, st;
    if ((st = embed_cuda(s, m->embed.dtype, cm->embed, cc->d_io + 1, cc->x, n, hid))) return st;
    for (uint32_t l = 0; l < c->n_layers; l++) {
        int router_done = 0;
        if ((st = attention_block(cm, cc, ctx, l, n,
                                  n == 1 && c->layer_is_moe[l] ? &router_done : NULL)))
            return st;
        if (c->layer_is_moe[l]) {
            if ((st = moe_block(cm, cc, ctx, l, n, router_done))) return st;
        } else {
            const struct gpu_layer *g = &cm->layers[l];
            moe_item one = {(const uint8_t *)g->w_gate, (const uint8_t *)g->w_up,
                            (const uint8_t *)g->w_down, 0, n};
            int maxc = n == 1 ? 1 : 2;
            if ((st = expert_gate_up_cuda(s, &g->mlp, NULL, NULL, 1, one, cc->iota, 1, cc->xb,
                                          cc->H, maxc)) ||
                (st = expert_down_cuda(s, &g->mlp, NULL, NULL, 1, one, cc->iota, 1, cc->H, cc->x,
                                       1, maxc)))
                return st;
        }
    }
    if (!want_logits) return SL_OK;
    int first = all_logits ? 0 : n - 1, rows = n - first;
    if ((st = rmsnorm_cuda(s, cc->x + (uint64_t)first * hid, cm->final_norm, cc->xb, rows, hid,
                           c->rms_eps)) ||
        (st = matmul_cuda(s, m->lm_head.dtype, cm->lm_head, cc->xb, cc->logits, rows,
                          (int)c->n_vocab, hid, NULL, 0)))
        return st;
    return SL_OK;
}

/* Captures the decode step as a graph on first use; 1 if it is ready. */
static int decode_graph(struct cuda_model *cm, struct cuda_ctx *cc, struct sl_context *ctx) {
    if (cc->graph_state) return cc->graph_state > 0;
    cudaGraph_t graph = NULL;
    cc->graph_state = -1;
    if (cudaStreamBeginCapture(cc->stream, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    int st = enqueue_forward(cm, cc, ctx, 1, 1, 0);
    cudaError_t e = cudaStreamEndCapture(cc->stream, &graph);
    if (!st && e == cudaSuccess && graph &&
        cudaGraphInstantiate(&cc->graph, graph, 0) == cudaSuccess)
        cc->graph_state = 1;
    if (graph) cudaGraphDestroy(graph);
    if (cc->graph_state < 0) {
        cudaGetLastError();
        sl_clearerr();
        sl_log(SL_LOG_WARN, "cuda: decode graph capture failed; launching kernels one by one");
    }
    return cc->graph_state > 0;
}

int forward_batch_cuda(struct sl_context *ctx, const int32_t *tokens, int n, uint32_t pos,
                       float *logits, int all_logits) {
    struct cuda_model *cm = ctx->model->cuda;
    struct cuda_ctx *cc = ctx->cuda;
    const struct sl_config *c = &ctx->model->cfg;
    SL_ASSERT(n >= 1 && (uint32_t)n <= ctx->n_batch && pos + (uint32_t)n <= ctx->n_ctx);
    cudaStream_t s = cc->stream;
    int st;
    /* the previous step's copies out of h_io are done: every call ends in
     * a synchronisation */
    cc->h_io[0] = (int32_t)pos;
    memcpy(cc->h_io + 1, tokens, (size_t)n * sizeof *tokens);
    CU_TRY(cudaMemcpyAsync(cc->d_io, cc->h_io, (size_t)(n + 1) * 4, cudaMemcpyHostToDevice, s));
    if (n == 1 && logits && decode_graph(cm, cc, ctx)) {
        CU_TRY(cudaGraphLaunch(cc->graph, s));
        ctx->stats.expert_loads += cm->decode_expert_loads; /* what moe_block counts */
        ctx->stats.expert_bytes_read += cm->decode_expert_bytes;
    } else if ((st = enqueue_forward(cm, cc, ctx, n, logits != NULL, all_logits))) {
        cudaStreamSynchronize(s); /* leave nothing in flight that reads h_io */
        return st;
    }
    uint64_t V = c->n_vocab;
    if (logits && all_logits) {
        CU_TRY(cudaMemcpyAsync(logits, cc->logits, (size_t)n * V * 4, cudaMemcpyDeviceToHost, s));
    } else if (logits) {
        CU_TRY(cudaMemcpyAsync(cc->h_logits, cc->logits, V * 4, cudaMemcpyDeviceToHost, s));
    }
    cudaError_t e = cudaStreamSynchronize(s);
    if (e != cudaSuccess) return cuda_fail(e, "the forward pass");
    if (logits && !all_logits) memcpy(logits, cc->h_logits, V * 4);
    return SL_OK;
}
