/*
 * moe_stream_cuda.cu — the routed experts of one MoE layer when they do not
 * all fit on the GPU (the GPU expert cache streams them): per layer,
 *
 *   router top-k ids (and the experts' input x, and the next layer's
 *   lookahead router logits) come back to the host in one synchronisation
 *   → the distinct experts, grouped by expert in id order
 *   → per miss, upload or compute on the CPU (gpu_cache_plan; gpu_miss.h)
 *   → the GPU experts batch by batch (at most the slot count at once): the
 *     resident ones run while the missing ones are uploaded on the cache's
 *     copy stream, then the uploaded ones after their copy event
 *   → the lookahead: the next layer's predicted experts that sit in host RAM
 *     are uploaded behind this layer's (gpu_cache_prefetch), and the host
 *     store is asked to read the others (expert_store_prefetch)
 *   → the CPU experts, on the context's thread pool while the GPU works;
 *     their unweighted outputs go to their selections' rows of moe_tmp
 *   → the weighted sum in expert-id order + residual into x.
 *
 * Numbers: every selection's output is computed by the GPU kernels or by the
 * CPU expert (gpu_miss_expert_cpu) and summed in expert-id order, so logits
 * depend only on which side computed each expert: with --gpu-miss upload
 * they are bit-identical whatever the GPU cache size, the lookahead, or the
 * upload path (direct or staged). A decode step with no CPU expert keeps the
 * fused down + combine kernel; one with a CPU expert runs down and combine
 * apart (the result is deterministic given which experts ran where).
 *
 * Buffers: struct stream_ctx, made on first use and owned by the cuda_ctx
 * (stream_ctx_free from cuda_ctx_free). The pinned host buffers are
 * rewritten only after the layer's synchronisation, so no copy still in
 * flight reads them.
 *
 * Timing of decode steps (SLUICE_CUDA_STREAM_TIMING, default on; sl_stats
 * gpu_layer_*, gpu_upload_wait_seconds, gpu_roundtrip_seconds): events on
 * the compute stream at the first and the last MoE layer's entry (their
 * distance over the layers between is the per-layer time, mixer included),
 * around the wait for the uploads, and from the ids' synchronisation to the
 * first expert kernel (the GPU idles while the host plans). Each pair is
 * read after a later synchronisation, never waited for.
 */
#include "cuda/internal.cuh"
#include "cuda/nccl_cuda.cuh"

extern "C" {
#include "cpu/ops.h"
#include "moe_route.h"
}

struct stream_ctx {
    float *h_xb;         /* (n_batch, hidden) pinned: the experts' input */
    float *h_out;        /* (n_batch * k, hidden) pinned: CPU outputs by selection */
    float *d_pf;         /* (n_batch, n_experts) device: lookahead router logits */
    float *h_pf;         /* (n_batch, n_experts) pinned */
    int32_t *tok;        /* (n_experts) tokens per distinct expert */
    uint8_t *cpu;        /* (n_experts) distinct expert computed on the CPU */
    int32_t *gids, *cids; /* (n_experts) the GPU's and the CPU's experts */
    uint8_t *cdone;      /* (n_experts) acquired flags of cids */
    int32_t *batch_of;   /* (n_experts) GPU batch of an expert id, -1 */
    int32_t *csel;       /* (n_batch) selections of one CPU expert */
    uint8_t *sel_cpu;    /* (n_batch * k) selection computed on the CPU */
    int32_t *pf_ids;     /* (n_experts) the lookahead's union */
    /* decode timing (see the header); events exist iff `timing` */
    int timing;
    uint32_t first_moe, last_moe;
    cudaEvent_t ev[8];   /* [0, 1] first, last MoE layer's entry; [2, 3] around
                            the wait for uploads; [4 + 2p, 5 + 2p] the ids'
                            synchronisation, the first expert kernel (p: the
                            layer's parity, as a pair is read one layer later) */
    int l_open;          /* 1: ev[0] recorded this step, 2: and ev[1] */
    int w_pending, r_pending[2]; /* recorded, not yet read */
};

/* Seconds between two recorded events that have run, 0 on error. */
static double ev_seconds(cudaEvent_t a, cudaEvent_t b) {
    float ms = 0;
    if (cudaEventElapsedTime(&ms, a, b) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return ms / 1e3;
}

/* Reads the pending wait and round-trip pairs (the stream has been
 * synchronised since they were recorded). */
static void timing_read(struct stream_ctx *sx, struct sl_context *ctx) {
    if (sx->w_pending) ctx->stats.gpu_upload_wait_seconds += ev_seconds(sx->ev[2], sx->ev[3]);
    for (int p = 0; p < 2; p++)
        if (sx->r_pending[p])
            ctx->stats.gpu_roundtrip_seconds += ev_seconds(sx->ev[4 + 2 * p], sx->ev[5 + 2 * p]);
    sx->w_pending = sx->r_pending[0] = sx->r_pending[1] = 0;
}

/* Records timing event i on s; 0 if it failed (timing then skips it). */
static int ev_mark(struct stream_ctx *sx, int i, cudaStream_t s) {
    if (cudaEventRecord(sx->ev[i], s) == cudaSuccess) return 1;
    cudaGetLastError();
    return 0;
}

void stream_ctx_free(struct cuda_ctx *cc) {
    struct stream_ctx *sx = cc->sx;
    if (!sx) return;
    if (cc->stream) cudaStreamSynchronize(cc->stream);
    if (sx->h_xb) cudaFreeHost(sx->h_xb);
    if (sx->h_out) cudaFreeHost(sx->h_out);
    if (sx->h_pf) cudaFreeHost(sx->h_pf);
    if (sx->d_pf) cudaFree(sx->d_pf);
    for (int i = 0; i < 8; i++)
        if (sx->ev[i]) cudaEventDestroy(sx->ev[i]);
    sl_free(sx->tok);
    sl_free(sx->cpu);
    sl_free(sx->gids);
    sl_free(sx->cids);
    sl_free(sx->cdone);
    sl_free(sx->batch_of);
    sl_free(sx->csel);
    sl_free(sx->sel_cpu);
    sl_free(sx->pf_ids);
    sl_free(sx);
    cc->sx = NULL;
}

static int stream_ctx_make(struct cuda_ctx *cc, const struct sl_context *ctx) {
    const struct sl_config *c = &ctx->model->cfg;
    uint64_t B = ctx->n_batch, hid = c->hidden, ne = c->n_experts, k = c->n_experts_used;
    struct stream_ctx *sx = (struct stream_ctx *)sl_calloc(1, sizeof *sx);
    if (!sx) return sl_seterr(SL_ERR_NOMEM, "out of memory");
    cc->sx = sx;
    struct {
        void **p;
        uint64_t bytes;
        int device;
    } b[] = {{(void **)&sx->h_xb, B * hid * 4, 0},
             {(void **)&sx->h_out, B * k * hid * 4, 0},
             {(void **)&sx->h_pf, B * ne * 4, 0},
             {(void **)&sx->d_pf, B * ne * 4, 1}};
    for (size_t i = 0; i < sizeof b / sizeof *b; i++) {
        cudaError_t e = b[i].device ? cudaMalloc(b[i].p, b[i].bytes)
                                    : cudaHostAlloc(b[i].p, b[i].bytes, cudaHostAllocDefault);
        if (e != cudaSuccess) {
            cudaGetLastError();
            *b[i].p = NULL;
            stream_ctx_free(cc);
            return sl_seterr(SL_ERR_NOMEM, "cannot allocate %.1f MiB of %s memory for the "
                             "streaming MoE of a CUDA context: %s", b[i].bytes / 1048576.0,
                             b[i].device ? "device" : "pinned host", cudaGetErrorString(e));
        }
    }
    sx->tok = (int32_t *)sl_malloc(ne * sizeof(int32_t));
    sx->cpu = (uint8_t *)sl_malloc(ne);
    sx->gids = (int32_t *)sl_malloc(ne * sizeof(int32_t));
    sx->cids = (int32_t *)sl_malloc(ne * sizeof(int32_t));
    sx->cdone = (uint8_t *)sl_malloc(ne);
    sx->batch_of = (int32_t *)sl_malloc(ne * sizeof(int32_t));
    sx->csel = (int32_t *)sl_malloc(B * sizeof(int32_t));
    sx->sel_cpu = (uint8_t *)sl_calloc(B * k, 1);
    sx->pf_ids = (int32_t *)sl_malloc(ne * sizeof(int32_t));
    if (!sx->tok || !sx->cpu || !sx->gids || !sx->cids || !sx->cdone || !sx->batch_of ||
        !sx->csel || !sx->sel_cpu || !sx->pf_ids) {
        stream_ctx_free(cc);
        return sl_seterr(SL_ERR_NOMEM, "out of memory");
    }
    sx->first_moe = sx->last_moe = 0;
    int any = 0;
    for (uint32_t l = 0; l < c->n_layers; l++)
        if (c->layer_is_moe[l]) {
            if (!any) sx->first_moe = l;
            sx->last_moe = l;
            any = 1;
        }
    sx->timing = cuda_tune("SLUICE_CUDA_STREAM_TIMING", 1) != 0;
    for (int i = 0; i < 8 && sx->timing; i++)
        if (cudaEventCreate(&sx->ev[i]) != cudaSuccess) { /* timing off, not an error */
            cudaGetLastError();
            sx->ev[i] = NULL;
            sx->timing = 0;
        }
    return SL_OK;
}

/* The lookahead's union of the experts layer nl would route the n tokens
 * to, from its router logits (h_pf, host, the bias added by the matmul as
 * the layer's own router adds it; overwritten) with the layer's own
 * selection rule (moe_route_predict), into sx->pf_ids; returns how many. */
static int lookahead_ids(struct stream_ctx *sx, const struct sl_model *m, uint32_t nl, int n) {
    int np = 0;
    if (moe_route_predict(&m->cfg, sx->h_pf, NULL, m->layers[nl].router_sel_bias, n,
                          sx->pf_ids, &np))
        return 0;
    return np;
}

/* The nc CPU experts sx->cids (requested from the host store): computed as
 * they become resident, each output row into h_out at its selection. */
static int cpu_experts(struct cuda_model *cm, struct sl_context *ctx, struct stream_ctx *sx,
                       uint32_t l, int nc, const int32_t *h_ids, int nsel, uint64_t rec_bytes) {
    const struct sl_config *c = &ctx->model->cfg;
    struct expert_store *store = ctx->model->experts;
    int k = (int)c->n_experts_used, hid = (int)c->hidden, st = SL_OK;
    for (int left = nc; left > 0; left--) {
        struct expert_view v;
        int i;
        if ((st = expert_store_acquire_next(store, l, sx->cids, sx->cdone, nc, &i, &v))) break;
        int e = sx->cids[i], m = 0;
        for (int s = 0; s < nsel; s++) { /* gather the tokens routed to e */
            if (h_ids[s] != e) continue;
            memcpy(ctx->gather + (size_t)m * hid, sx->h_xb + (size_t)(s / k) * hid,
                   (size_t)hid * sizeof(float));
            sx->csel[m++] = s;
        }
        double t0 = sl_now();
        st = gpu_miss_expert_cpu(ctx->pool, &v, hid, (int)c->moe_ffn, ctx->gather,
                                 ctx->moe_tmp, m, ctx->hb, ctx->hb2);
        double dt = sl_now() - t0;
        expert_store_release(store, l, (uint32_t)e);
        if (st) break;
        gpu_cache_note_cpu(cm, dt, rec_bytes, m);
        for (int j = 0; j < m; j++) {
            memcpy(sx->h_out + (size_t)sx->csel[j] * hid, ctx->moe_tmp + (size_t)j * hid,
                   (size_t)hid * sizeof(float));
            sx->sel_cpu[sx->csel[j]] = 1;
        }
    }
    if (st) expert_store_cancel(store, l, sx->cids, sx->cdone, nc);
    return st;
}

int moe_streaming_cuda(struct cuda_model *cm, struct cuda_ctx *cc, struct sl_context *ctx,
                       uint32_t l, int n) {
    const struct sl_model *m = ctx->model;
    const struct sl_config *c = &m->cfg;
    const struct gpu_layer *g = &cm->layers[l];
    struct ffn_shape sh = g->moe; /* + this context's ids (expert biases) */
    sh.ids = cc->topk_ids;
    struct gpu_cache *gc = &cm->gc;
    struct expert_store *store = m->experts;
    cudaStream_t s = cc->stream;
    int k = (int)c->n_experts_used, ne = (int)c->n_experts, hid = (int)c->hidden;
    int nsel = n * k, st = SL_OK;
    if (!cc->sx && (st = stream_ctx_make(cc, ctx))) return st;
    struct stream_ctx *sx = cc->sx;
    int timed = sx->timing && n == 1, par = (int)(l & 1); /* decode steps only */
    if (l == sx->first_moe) sx->l_open = timed ? ev_mark(sx, 0, s) : 0;
    if (timed && l == sx->last_moe && l > sx->first_moe && sx->l_open == 1)
        sx->l_open = ev_mark(sx, 1, s) ? 2 : 0;
    uint64_t rec_bytes = g->off.o[2] + g->moe.rb_down * (uint64_t)g->moe.hidden;
    /* the CPU expert is the plain SwiGLU: gpt_oss's (biases, clamp) upload */
    int plain = !c->expert_bias && !(c->swiglu_limit > 0);
    int may_cpu = plain && (gc->miss_policy == SL_GPU_MISS_CPU ||
                            (gc->miss_policy == SL_GPU_MISS_AUTO && n <= GPU_MISS_CPU_MAX_TOKENS));

    /* the lookahead's router logits, the ids and (for the CPU) x: one sync */
    uint32_t nl = l + 1; /* the next MoE layer (dense ones may come between) */
    while (nl < c->n_layers && !c->layer_is_moe[nl]) nl++;
    int next_moe = nl < c->n_layers && c->layer_is_moe[nl] && k <= MOE_ROUTE_PREDICT_MAX_K;
    int host_pf = next_moe && expert_store_prefetch_wanted(store, nl);
    int look = next_moe && (host_pf || gc->prefetch_on);
    if (look && (st = matmul_cuda(s, m->layers[nl].router.dtype, cm->layers[nl].router, cc->xb,
                                  sx->d_pf, n, ne, hid, cm->layers[nl].router_b, 0)))
        return st;
    if (look)
        CU_TRY(cudaMemcpyAsync(sx->h_pf, sx->d_pf, (size_t)n * ne * 4, cudaMemcpyDeviceToHost, s));
    if (may_cpu)
        CU_TRY(cudaMemcpyAsync(sx->h_xb, cc->xb, (size_t)n * hid * 4, cudaMemcpyDeviceToHost, s));
    CU_TRY(cudaMemcpyAsync(cc->h_ids, cc->topk_ids, (size_t)nsel * 4, cudaMemcpyDeviceToHost, s));
    int rt = timed && !sx->r_pending[par] && ev_mark(sx, 4 + 2 * par, s);
    CU_TRY(cudaStreamSynchronize(s));
    if (sx->timing) { /* every pending pair has run: read them */
        timing_read(sx, ctx);
        if (l == sx->last_moe && sx->l_open == 2) { /* first to last MoE entry */
            ctx->stats.gpu_layer_seconds += ev_seconds(sx->ev[0], sx->ev[1]);
            ctx->stats.gpu_layer_intervals += sx->last_moe - sx->first_moe;
        }
        if (l == sx->last_moe) sx->l_open = 0;
    }

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
        if (cnt[e]) {
            sx->tok[nd] = cnt[e];
            sx->batch_of[e] = -1;
            ids[nd++] = e;
        }
    ctx->stats.expert_loads += (uint64_t)nd;
    ctx->stats.expert_bytes_read += (uint64_t)nd * rec_bytes;
    int np = look ? lookahead_ids(sx, m, nl, n) : 0;
    np = nccl_ep_filter(cm->ep, nl, sx->pf_ids, np); /* multi-GPU: this rank's experts */
    if (host_pf && np) expert_store_prefetch(store, nl, sx->pf_ids, np);

    /* who computes each expert */
    if (may_cpu) gpu_cache_plan(cm, l, ids, sx->tok, nd, n, sx->cpu);
    else memset(sx->cpu, 0, (size_t)nd);
    int ng = 0, nc = 0;
    for (int i = 0; i < nd; i++) {
        if (sx->cpu[i]) sx->cids[nc++] = ids[i];
        else sx->gids[ng++] = ids[i];
    }
    if (nc) {
        if ((st = expert_store_request(store, l, sx->cids, nc))) return st;
        memset(sx->cdone, 0, (size_t)nc);
    }

    /* the GPU's experts, batch by batch; a decode step without CPU experts
     * fuses down and the weighted combine */
    int fused = n == 1 && nc == 0;
    int cap = gc->n_slots, maxc = n == 1 ? 1 : 2, ns = 0;
    moe_item none = {};
    for (int b0 = 0, bi = 0; b0 < ng && !st; b0 += cap, bi++) {
        int nb = ng - b0 < cap ? ng - b0 : cap, uploaded = 0, na = 0, ni = b0;
        if ((st = gpu_cache_acquire(cm, l, sx->gids + b0, nb, s, cc->bases, cc->hit,
                                    cc->slot_ids, cc->ev_arrive, &uploaded)))
            break;
        if (rt && bi == 0) sx->r_pending[par] = ev_mark(sx, 5 + 2 * par, s);
        int s0 = ns; /* this batch's selections start here in h_sel */
        for (int pass = 0; pass < 2; pass++) /* resident first, then uploaded */
            for (int i = 0; i < nb; i++) {
                if (cc->hit[i] != (pass == 0)) continue;
                int e = sx->gids[b0 + i];
                const uint8_t *b = cc->bases[i];
                cc->h_items[ni++] = moe_item{b + g->off.o[0], b + g->off.o[1], b + g->off.o[2],
                                             ns, cnt[e]};
                pos[e] = ns;
                sx->batch_of[e] = bi;
                ns += cnt[e];
                na += pass == 0;
            }
        for (int i = 0; i < nsel; i++) {
            int e = cc->h_ids[i];
            if (sx->batch_of[e] == bi) cc->h_sel[pos[e]++] = i;
        }
        int32_t *hc = cc->h_counts + 2 * bi, *dc = cc->n_items + 2 * bi;
        hc[0] = na;
        hc[1] = nb - na;
        cudaError_t e = cudaMemcpyAsync(cc->items + b0, cc->h_items + b0,
                                        (size_t)nb * sizeof(moe_item), cudaMemcpyHostToDevice, s);
        if (e == cudaSuccess)
            e = cudaMemcpyAsync(cc->sel + s0, cc->h_sel + s0, (size_t)(ns - s0) * 4,
                                cudaMemcpyHostToDevice, s);
        if (e == cudaSuccess) e = cudaMemcpyAsync(dc, hc, 8, cudaMemcpyHostToDevice, s);
        if (e != cudaSuccess) st = cuda_fail(e, "cudaMemcpyAsync (expert items)");
        const moe_item *ia = cc->items + b0, *ib = cc->items + b0 + na;
        if (!st && na)
            st = expert_gate_up_cuda(s, &sh, ia, dc, na, none, cc->sel, k, cc->xb, cc->H, maxc);
        if (!st && na && !fused)
            st = expert_down_cuda(s, &sh, ia, dc, na, none, cc->sel, k, cc->H, cc->moe_tmp, 0,
                                  maxc);
        if (!st && nb > na && uploaded) {
            int tw = timed && !sx->w_pending && ev_mark(sx, 2, s);
            e = cudaStreamWaitEvent(s, cc->ev_arrive, 0);
            if (e != cudaSuccess) st = cuda_fail(e, "cudaStreamWaitEvent");
            if (!st && tw) sx->w_pending = ev_mark(sx, 3, s);
        }
        if (!st && nb > na)
            st = expert_gate_up_cuda(s, &sh, ib, dc + 1, nb - na, none, cc->sel, k, cc->xb,
                                     cc->H, maxc);
        if (!st && nb > na && !fused)
            st = expert_down_cuda(s, &sh, ib, dc + 1, nb - na, none, cc->sel, k, cc->H,
                                  cc->moe_tmp, 0, maxc);
        if (!st && fused) /* decode: the k distinct experts are one batch (cap >= k) */
            st = expert_down_combine_cuda(s, &sh, cc->items + b0, nb, cc->sel, cc->topk_ids,
                                          cc->topk_w, cc->H, cc->x);
        gpu_cache_release(cm, cc->slot_ids, nb, s);
    }
    if (st) {
        if (nc) expert_store_cancel(store, l, sx->cids, sx->cdone, nc);
        return st;
    }
    /* the next layer's predicted experts, behind this layer's uploads */
    if (look && gc->prefetch_on && np) gpu_cache_prefetch(cm, nl, sx->pf_ids, np);

    /* the CPU's experts while the GPU runs, then their rows into moe_tmp */
    if (nc) {
        if ((st = cpu_experts(cm, ctx, sx, l, nc, cc->h_ids, nsel, rec_bytes))) {
            memset(sx->sel_cpu, 0, (size_t)nsel);
            return st;
        }
        for (int i = 0; i < nsel && !st;) {
            if (!sx->sel_cpu[i]) {
                i++;
                continue;
            }
            int j = i;
            while (j < nsel && sx->sel_cpu[j]) sx->sel_cpu[j++] = 0;
            cudaError_t e = cudaMemcpyAsync(cc->moe_tmp + (size_t)i * hid, sx->h_out + (size_t)i * hid,
                                            (size_t)(j - i) * hid * 4, cudaMemcpyHostToDevice, s);
            if (e != cudaSuccess) st = cuda_fail(e, "cudaMemcpyAsync (CPU expert outputs)");
            i = j;
        }
        if (st) {
            memset(sx->sel_cpu, 0, (size_t)nsel);
            return st;
        }
    }
    if (fused) return SL_OK; /* combined into x by the down kernel */
    return moe_combine_cuda(s, cc->x, cc->moe_tmp, cc->topk_ids, cc->topk_w, n, k, hid);
}
