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
 *   streaming (src/cuda/moe_stream_cuda.cu): after the router, the top-k
 *     ids come back to the host, the GPU cache makes the layer's experts
 *     resident (uploading the missing ones on its copy stream) or has the
 *     CPU compute some misses (--gpu-miss), the resident experts run first
 *     and the uploaded ones after their copy event; summed in a fixed order,
 *     so with --gpu-miss upload logits are bit-identical whatever the GPU
 *     cache size.
 *
 * Allocates nothing: every buffer lives in struct cuda_ctx.
 * Not here: SLUICE_DUMP intermediates (CPU backend only), per-stage timers.
 */
#include <math.h>

#include "cuda/internal.cuh"
#include "cuda/layer_mla_cuda.cuh"
#include "cuda/layer_gdn_cuda.cuh"
#include "cuda/nccl_cuda.cuh"

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
static int router_fused(struct cuda_model *cm, struct cuda_ctx *cc, const struct sl_config *c,
                        const struct layer_weights *L, const struct gpu_layer *g, uint32_t l) {
    if (!cuda_tune("SLUICE_CUDA_NORMFUSE", 1)) return 0;
    if (c->router_kind == SL_ROUTER_SOFTMAX_TOPK || c->router_kind == SL_ROUTER_TOPK_SOFTMAX) {
        /* + the routing in the same launch (SLUICE_CUDA_ROUTEFUSE): 2 */
        int ne = (int)c->n_experts;
        uint8_t *const *table = cm->gc.all_resident ? cm->gc.d_table + (uint64_t)l * ne : NULL;
        int st = matvec_route_cuda(cc->stream, L->router.dtype, g->router, g->router_b, ne,
                                   (int)c->hidden, cc->x, g->ffn_norm, c->rms_eps, cc->xb,
                                   cc->router, (int)c->n_experts_used, c->router_kind,
                                   c->norm_topk_prob, cc->topk_ids, cc->topk_w, table, g->off,
                                   cc->items, cc->sel, cc->n_items, cc->d_sync);
        if (st != SL_ERR_UNSUPPORTED) return st == SL_OK ? 2 : -st;
    }
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
 * matvec when the router's format allows: *router_done = 1 then, 2 when
 * the routing (ids, weights, items) ran in that launch too. */
static int attention_block(struct cuda_model *cm, struct cuda_ctx *cc, struct sl_context *ctx,
                           uint32_t l, int n, int *router_done) {
    if (cm->mla) return mla_attention_block_cuda(cm, cc, ctx, l, n); /* deepseek_v3: MLA */
    const struct sl_model *m = ctx->model;
    const struct sl_config *c = &m->cfg;
    const struct layer_weights *L = &m->layers[l];
    const struct gpu_layer *g = &cm->layers[l];
    cudaStream_t s = cc->stream;
    int hid = (int)c->hidden, nh = (int)c->n_heads, nkv = (int)c->n_kv_heads;
    int hd = (int)c->head_dim, qd = (int)config_q_dim(c), kvd = (int)config_kv_dim(c), st;
    uint64_t lay = (uint64_t)l * ctx->n_ctx * kvd;
    int qk = c->qk_norm != SL_QK_NORM_NONE, full = c->qk_norm == SL_QK_NORM_FULL;
    int window = c->layer_sliding[l] ? (int)c->sliding_window : 0;
    int fused = n == 1 ? qkv_fused(cc, c, L, g) : 0;
    if (fused < 0) return -fused;
    if (!fused &&
        ((st = rmsnorm_cuda(s, cc->x, g->attn_norm, cc->xb, n, hid, c->rms_eps)) ||
         (st = matmul_cuda(s, L->wq.dtype, g->wq, cc->xb, cc->q, n, qd, hid, g->bq, 0)) ||
         (st = matmul_cuda(s, L->wk.dtype, g->wk, cc->xb, cc->kb, n, kvd, hid, g->bk, 0)) ||
         (st = matmul_cuda(s, L->wv.dtype, g->wv, cc->xb, cc->vb, n, kvd, hid, g->bv, 0))))
        return st;
    if ((st = qk_rope_store_ext_cuda(s, cc->q, cc->kb, cc->vb, cc->k_cache + lay,
                                     cc->v_cache + lay, cc->d_io, n, nh, nkv, hd,
                                     qk ? g->q_norm : NULL, qk ? g->k_norm : NULL, full,
                                     c->rms_eps, cm->d_inv_freq, m->rope_mscale)) ||
        (st = attention_ext_cuda(s, cc->q, cc->k_cache + lay, cc->v_cache + lay, cc->att,
                                 cc->scores, (size_t)ctx->n_batch * nh * ctx->n_ctx, cc->d_io, n,
                                 nh, nkv, hd, (int)ctx->n_ctx, 1.0f / sqrtf((float)hd), window,
                                 g->sinks)) ||
        (st = matmul_cuda(s, L->wo.dtype, g->wo, cc->att, cc->x, n, hid, qd, g->bo, 1)))
        return st;
    if (router_done) {
        int f = router_fused(cm, cc, c, L, g, l);
        if (f < 0) return -f;
        *router_done = f;
        if (f) return SL_OK; /* router logits and cc->xb written */
    }
    return rmsnorm_cuda(s, cc->x, g->ffn_norm, cc->xb, n, hid, c->rms_eps);
}

static int moe_block(struct cuda_model *cm, struct cuda_ctx *cc, struct sl_context *ctx,
                     uint32_t l, int n, int router_done) {
    const struct sl_model *m = ctx->model;
    const struct sl_config *c = &m->cfg;
    const struct gpu_layer *g = &cm->layers[l];
    struct ffn_shape sh = g->moe; /* + this context's ids (expert biases) */
    sh.ids = cc->topk_ids;
    cudaStream_t s = cc->stream;
    int k = (int)c->n_experts_used, ne = (int)c->n_experts, hid = (int)c->hidden, st;
    uint8_t *const *table = cm->gc.all_resident ? cm->gc.d_table + (uint64_t)l * ne : NULL;
    if ((!router_done && (st = matmul_cuda(s, m->layers[l].router.dtype, g->router, cc->xb,
                                           cc->router, n, ne, hid, g->router_b, 0))) ||
        (router_done < 2 && /* 2: routed by the router launch (router_fused) */
         (st = c->router_kind == SL_ROUTER_NOAUX_TC /* deepseek_v3 (layer_mla_cuda.cu) */
                  ? route_noaux_layer_cuda(cm, l, s, cc->router, n, cc->topk_ids, cc->topk_w,
                                           table, g->off, cc->items, cc->sel, cc->n_items)
                  : route_cuda(s, cc->router, n, ne, k, c->router_kind, c->norm_topk_prob,
                               cc->topk_ids, cc->topk_w, table, g->off, cc->items, cc->sel,
                               cc->n_items))))
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
        if ((st = expert_gate_up_cuda(s, &sh, cc->items, cc->n_items, max_items, none,
                                      cc->sel, k, cc->xb, cc->H, maxc)))
            return st;
        if (n == 1) /* the route kernel listed the k items */
            return expert_down_combine_cuda(s, &sh, cc->items, k, cc->sel, cc->topk_ids,
                                            cc->topk_w, cc->H, cc->x);
        if ((st = expert_down_cuda(s, &sh, cc->items, cc->n_items, max_items, none, cc->sel,
                                   k, cc->H, cc->moe_tmp, 0, maxc)))
            return st;
    } else { /* streaming (moe_stream_cuda.cu): combines into x itself */
        return moe_streaming_cuda(cm, cc, ctx, l, n);
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
        if (cm->hy) /* qwen3_next / qwen3_5_moe: Gated DeltaNet or gated attention */
            st = hybrid_mixer_cuda(cm, cc, ctx, l, n);
        else
            st = attention_block(cm, cc, ctx, l, n,
                                 n == 1 && c->layer_is_moe[l] ? &router_done : NULL);
        if (st) return st;
        if (c->layer_is_moe[l]) {
            /* multi-GPU (nccl_cuda.cuh): ranks > 0 zero x (the router has
             * read it), each rank adds its own experts, x summed over ranks */
            if (cm->ep && (st = nccl_ep_moe_begin(cm, cc, n))) return st;
            if ((st = cm->hy    ? hybrid_moe_cuda(cm, cc, ctx, l, n, moe_block) /* + shared */
                      : cm->mla ? mla_moe_cuda(cm, cc, ctx, l, n, router_done, moe_block)
                                : moe_block(cm, cc, ctx, l, n, router_done)))
                return st;
            if (cm->ep && (st = nccl_ep_moe_end(cm, cc, l, n))) return st;
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
    cuda_pdl_enabled(); /* its device query, before the capture */
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
    /* a sequence starts at position 0 with zero recurrent state (hybrid) */
    if (pos == 0 && (st = hybrid_cuda_reset(cc->hy, s))) return st;
    int graph_step = 0; /* multi-GPU: its all-reduces are counted at the wait */
    if (n == 1 && logits && decode_graph(cm, cc, ctx)) {
        CU_TRY(cudaGraphLaunch(cc->graph, s));
        graph_step = 1;
        ctx->stats.expert_loads += cm->decode_expert_loads; /* what moe_block counts */
        ctx->stats.expert_bytes_read += cm->decode_expert_bytes;
    } else if ((st = enqueue_forward(cm, cc, ctx, n, logits != NULL, all_logits))) {
        if (cm->ep) nccl_ep_wait(cm, s, 0); /* with a timeout: a peer may be gone */
        else cudaStreamSynchronize(s); /* leave nothing in flight that reads h_io */
        return st;
    }
    uint64_t V = c->n_vocab;
    if (logits && all_logits) {
        CU_TRY(cudaMemcpyAsync(logits, cc->logits, (size_t)n * V * 4, cudaMemcpyDeviceToHost, s));
    } else if (logits) {
        CU_TRY(cudaMemcpyAsync(cc->h_logits, cc->logits, V * 4, cudaMemcpyDeviceToHost, s));
    }
    if (cm->ep) { /* multi-GPU: polls NCCL, fails on a stalled peer (nccl_cuda.cuh) */
        if ((st = nccl_ep_wait(cm, s, graph_step))) return st;
    } else {
        cudaError_t e = cudaStreamSynchronize(s);
        if (e != cudaSuccess) return cuda_fail(e, "the forward pass");
    }
    if (logits && !all_logits) memcpy(logits, cc->h_logits, V * 4);
    return SL_OK;
}
