/*
 * model_cuda.cu — the CUDA backend's model and context state: device probe,
 * the dense region uploaded once (one allocation; device pointers mirror the
 * host pointers of struct sl_model by offset), the rope table, the GPU
 * expert cache, and per-context device buffers. Contracts in cuda.h.
 *
 * Not here: kernels (ops_cuda.cu), the cache's policy
 * (expert_cache_cuda.cu), the forward pass (forward_cuda.cu).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "cuda/internal.cuh"
#include "cuda/layer_gdn_cuda.cuh"
#include "cuda/layer_mla_cuda.cuh"
#include "cuda/nccl_cuda.cuh"

extern "C" {
#include "quant.h"
}

#define GIB (1024.0 * 1024.0 * 1024.0)
#define CTX_RESERVE (1ull << 30) /* device bytes left for contexts by the
                                    automatic GPU cache budget */

int cuda_probe(char *desc, size_t desc_len) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        if (e != cudaSuccess) cudaGetLastError();
        return sl_seterr(SL_ERR_UNSUPPORTED, "no CUDA device: %s",
                         e != cudaSuccess ? cudaGetErrorString(e) : "none found");
    }
    cudaDeviceProp p;
    if ((e = cudaGetDeviceProperties(&p, 0)) != cudaSuccess)
        return sl_seterr(SL_ERR_UNSUPPORTED, "CUDA device 0: %s", cudaGetErrorString(e));
    if (desc && desc_len)
        snprintf(desc, desc_len, "%s (sm_%d%d, %.1f GiB, %d SMs)", p.name, p.major, p.minor,
                 (double)p.totalGlobalMem / GIB, p.multiProcessorCount);
    return SL_OK;
}

/* What the backend cannot run yet: SL_ERR_UNSUPPORTED naming it. */
static int check_supported(const struct sl_model *m) {
    const struct sl_config *c = &m->cfg;
    const char *what = NULL;
    if (c->arch == SL_ARCH_DEEPSEEK_V3 || c->kv_lora_rank) /* MLA: layer_mla_cuda.cu */
        return mla_cuda_check(m);
    if (config_is_hybrid(c)) /* qwen3_next / qwen3_5_moe: checks of its own */
        what = hybrid_cuda_unsupported(m);
    else if (c->arch != SL_ARCH_QWEN3_MOE && c->arch != SL_ARCH_MIXTRAL && c->arch != SL_ARCH_OLMOE &&
        c->arch != SL_ARCH_GPT_OSS)
        what = "this architecture";
    /* sliding windows, sinks, YaRN, full-projection q/k norm, router and
     * expert biases, the clamped SwiGLU: supported (docs/cuda.md) */
    else if (c->rope_dim && c->rope_dim != c->head_dim) what = "partial rotary embeddings";
    else if (c->head_dim > 256 || c->head_dim % 2) what = "a head_dim over 256 or odd";
    else if (c->n_experts > 4096 || c->n_experts_used > 64) what = "over 4096 experts or top-64";
    if (!what) return SL_OK;
    return sl_seterr(SL_ERR_UNSUPPORTED, "the CUDA backend does not run %s yet (model %s); "
                     "HINT: --device cpu", what, c->model_type);
}

/* Device pointer of a host pointer into the dense region (NULL stays). */
static const void *dev(const struct cuda_model *cm, const void *h) {
    if (!h) return NULL;
    return cm->d_dense + ((const uint8_t *)h - cm->h_dense);
}

static struct ffn_shape ffn_shape_of(int hidden, int ffn, int dt_gu, int dt_down,
                                     uintptr_t gate, uintptr_t up, uintptr_t down) {
    struct ffn_shape s = {}; /* no biases, plain SwiGLU unless set after */
    s.hidden = hidden;
    s.ffn = ffn;
    s.dt_gu = dt_gu;
    s.dt_down = dt_down;
    s.rb_gu = quant_row_bytes(dt_gu, (uint64_t)hidden);
    s.rb_down = quant_row_bytes(dt_down, (uint64_t)ffn);
    s.aligned_gu = gate % 16 == 0 && up % 16 == 0 && s.rb_gu % 16 == 0 && hidden % 8 == 0;
    s.aligned_down = down % 16 == 0 && s.rb_down % 16 == 0 && ffn % 8 == 0;
    return s;
}

/* Uploads the dense region and fills cm->layers with device pointers. */
static int upload_dense(struct cuda_model *cm) {
    struct sl_model *m = cm->m;
    const struct sl_file *f = &m->file;
    uint64_t lo = UINT64_MAX, hi = 0;
    for (uint32_t i = 0; i < f->n_tensors; i++) {
        if (f->tensors[i].offset < lo) lo = f->tensors[i].offset;
        if (f->tensors[i].offset + f->tensors[i].size > hi)
            hi = f->tensors[i].offset + f->tensors[i].size;
    }
    if (lo >= hi) return sl_seterr(SL_ERR_FORMAT, "model has no dense tensors");
    cm->h_dense = f->map + lo;
    cm->dense_span = hi - lo;
    cudaError_t e = cudaMalloc(&cm->d_dense, cm->dense_span);
    if (e != cudaSuccess) {
        cudaGetLastError();
        cm->d_dense = NULL;
        return sl_seterr(SL_ERR_NOMEM, "cannot allocate %.2f GiB of device memory for the "
                         "dense weights (%s)", cm->dense_span / GIB, cudaGetErrorString(e));
    }
    CU_TRY(cudaMemcpy(cm->d_dense, cm->h_dense, cm->dense_span, cudaMemcpyHostToDevice));
    const struct sl_config *c = &m->cfg;
    cm->layers = (struct gpu_layer *)sl_calloc(c->n_layers, sizeof *cm->layers);
    if (!cm->layers) return sl_seterr(SL_ERR_NOMEM, "out of memory");
    for (uint32_t l = 0; l < c->n_layers; l++) {
        const struct layer_weights *L = &m->layers[l];
        struct gpu_layer *g = &cm->layers[l];
        g->attn_norm = (const float *)dev(cm, L->attn_norm);
        g->ffn_norm = (const float *)dev(cm, L->ffn_norm);
        g->q_norm = (const float *)dev(cm, L->q_norm);
        g->k_norm = (const float *)dev(cm, L->k_norm);
        g->bq = (const float *)dev(cm, L->bq);
        g->bk = (const float *)dev(cm, L->bk);
        g->bv = (const float *)dev(cm, L->bv);
        g->bo = (const float *)dev(cm, L->bo);
        g->router_b = (const float *)dev(cm, L->router_b);
        g->sinks = (const float *)dev(cm, L->sinks);
        g->wq = dev(cm, L->wq.data);
        g->wk = dev(cm, L->wk.data);
        g->wv = dev(cm, L->wv.data);
        g->wo = dev(cm, L->wo.data);
        if (c->layer_is_moe[l]) {
            g->router = dev(cm, L->router.data);
            const struct sl_expert_layer *el = file_expert_layer(f, l);
            if (!el || el->part[0].dtype != el->part[1].dtype)
                return sl_seterr(SL_ERR_UNSUPPORTED, "CUDA: layer %u: expert gate and up in "
                                 "different formats", l);
            for (int i = 0; i < 3; i++) g->off.o[i] = el->part[i].offset;
            /* slots are 256-aligned like the file's 4096-aligned records */
            g->moe = ffn_shape_of((int)c->hidden, (int)c->moe_ffn, el->part[0].dtype,
                                  el->part[2].dtype, el->part[0].offset, el->part[1].offset,
                                  el->part[2].offset);
            g->moe.gu_b = (const float *)dev(cm, L->exp_gate_up_b); /* gpt_oss */
            g->moe.down_b = (const float *)dev(cm, L->exp_down_b);
            if (c->swiglu_limit > 0) {
                g->moe.alpha = c->swiglu_alpha;
                g->moe.limit = c->swiglu_limit;
            }
            cm->decode_expert_loads += c->n_experts_used;
            cm->decode_expert_bytes +=
                (uint64_t)c->n_experts_used * (el->part[2].offset + el->part[2].size);
        } else {
            if (L->w_gate.dtype != L->w_up.dtype)
                return sl_seterr(SL_ERR_UNSUPPORTED, "CUDA: layer %u: mlp gate and up in "
                                 "different formats", l);
            g->w_gate = dev(cm, L->w_gate.data);
            g->w_up = dev(cm, L->w_up.data);
            g->w_down = dev(cm, L->w_down.data);
            g->mlp = ffn_shape_of((int)c->hidden, (int)c->ffn, L->w_gate.dtype, L->w_down.dtype,
                                  (uintptr_t)g->w_gate, (uintptr_t)g->w_up,
                                  (uintptr_t)g->w_down);
        }
    }
    cm->embed = dev(cm, m->embed.data);
    cm->lm_head = dev(cm, m->lm_head.data);
    cm->final_norm = (const float *)dev(cm, m->final_norm);
    /* rope frequencies exactly as the CPU computes them (ops_rope_neox) */
    int half = (int)c->head_dim / 2;
    float *inv = (float *)sl_malloc((size_t)half * sizeof(float));
    if (!inv) return sl_seterr(SL_ERR_NOMEM, "out of memory");
    for (int i = 0; i < half; i++)
        inv[i] = m->rope_inv_freq ? m->rope_inv_freq[i]
                                  : 1.0f / powf(c->rope_theta, (float)(2 * i) / (float)c->head_dim);
    e = cudaMalloc(&cm->d_inv_freq, (size_t)half * sizeof(float));
    if (e == cudaSuccess)
        e = cudaMemcpy(cm->d_inv_freq, inv, (size_t)half * sizeof(float), cudaMemcpyHostToDevice);
    sl_free(inv);
    if (e != cudaSuccess) return cuda_fail(e, "uploading the rope table");
    return SL_OK;
}

int cuda_model_create(struct sl_model *m, struct cuda_model **out) {
    *out = NULL;
    int st = check_supported(m);
    if (st) return st;
    char dd[300];
    if ((st = cuda_probe(dd, sizeof dd))) return st;
    CU_TRY(cudaSetDevice(0));
    struct cuda_model *cm = (struct cuda_model *)sl_calloc(1, sizeof *cm);
    if (!cm) return sl_seterr(SL_ERR_NOMEM, "out of memory");
    cm->m = m;
    const char *g = getenv("SLUICE_CUDA_GRAPH");
    cm->use_graphs = !(g && !strcmp(g, "0"));
    size_t free_b = 0, total_b = 0;
    if ((st = nccl_ep_create(cm))) goto fail; /* multi-GPU: before the cache (its shard) */
    if ((st = upload_dense(cm))) goto fail;
    if (config_is_hybrid(&m->cfg) && (st = hybrid_cuda_model_create(cm, &cm->hy))) goto fail;
    if (m->cfg.kv_lora_rank && (st = mla_cuda_model_create(cm))) goto fail; /* deepseek_v3 */
    {
        cudaError_t e = cudaMemGetInfo(&free_b, &total_b);
        if (e != cudaSuccess) {
            st = cuda_fail(e, "cudaMemGetInfo");
            goto fail;
        }
    }
    {
        uint64_t budget = m->params.gpu_cache_bytes;
        if (budget != SL_GPU_CACHE_AUTO && budget != SL_RAM_CACHE_ALL && budget > total_b) {
            st = sl_seterr(SL_ERR_ARG, "--gpu-cache %.2f GiB is larger than the device (%s)",
                           budget / GIB, dd);
            goto fail;
        }
        uint64_t room = free_b > CTX_RESERVE ? free_b - CTX_RESERVE : 0;
        if ((st = gpu_cache_create(cm, budget, room))) goto fail;
    }
    {
        const struct gpu_cache *gc = &cm->gc;
        snprintf(cm->desc, sizeof cm->desc, "cuda %s; dense %.2f GiB; gpu cache %d slots x %.2f "
                 "MiB = %.2f GiB (%s)%s", dd, cm->dense_span / GIB, gc->n_slots,
                 gc->slot_bytes / 1048576.0, gc->n_slots * (double)gc->slot_bytes / GIB,
                 gc->all_resident ? "every expert resident" : "streaming from host RAM/disk",
                 cm->use_graphs && gc->all_resident ? ", decode graphs" : "");
        if (cm->ep) /* "; expert parallel: rank R of N, ..." */
            snprintf(cm->desc + strlen(cm->desc), sizeof cm->desc - strlen(cm->desc), "; %s",
                     nccl_ep_desc(cm->ep));
    }
    *out = cm;
    return SL_OK;
fail:
    cuda_model_free(cm);
    return st;
}

void cuda_model_free(struct cuda_model *cm) {
    if (!cm) return;
    gpu_cache_free(&cm->gc);
    nccl_ep_free(cm->ep); /* after the cache, whose table points at its zero record */
    hybrid_cuda_model_free(cm->hy);
    mla_cuda_model_free(cm->mla);
    if (cm->d_dense) cudaFree(cm->d_dense);
    if (cm->d_inv_freq) cudaFree(cm->d_inv_freq);
    sl_free(cm->layers);
    sl_free(cm);
}

const char *cuda_model_desc(const struct cuda_model *cm) { return cm->desc; }

void cuda_model_stats(const struct cuda_model *cm, struct sl_stats *out) {
    gpu_cache_stats(&cm->gc, out); /* expert_cache_cuda.cu */
    nccl_ep_stats(cm->ep, out);    /* multi-GPU all-reduces (nccl_cuda.cu) */
}

/* ---- contexts ------------------------------------------------------------ */

void cuda_ctx_free(struct cuda_ctx *cc) {
    if (!cc) return;
    if (cc->stream) cudaStreamSynchronize(cc->stream);
    stream_ctx_free(cc); /* moe_stream_cuda.cu */
    hybrid_cuda_ctx_free(cc->hy);
    mla_cuda_ctx_free(cc->mla);
    if (cc->graph) cudaGraphExecDestroy(cc->graph);
    void *dbufs[] = {cc->d_io, cc->k_cache, cc->v_cache, cc->x, cc->xb, cc->q, cc->att,
                     cc->kb, cc->vb, cc->scores, cc->router, cc->topk_w, cc->topk_ids,
                     cc->sel, cc->n_items, cc->items, cc->H, cc->moe_tmp, cc->logits,
                     cc->iota, cc->d_sync};
    for (size_t i = 0; i < sizeof dbufs / sizeof *dbufs; i++)
        if (dbufs[i]) cudaFree(dbufs[i]);
    void *hbufs[] = {cc->h_io, cc->h_logits, cc->h_ids, cc->h_sel, cc->h_items, cc->h_counts};
    for (size_t i = 0; i < sizeof hbufs / sizeof *hbufs; i++)
        if (hbufs[i]) cudaFreeHost(hbufs[i]);
    if (cc->ev_arrive) cudaEventDestroy(cc->ev_arrive);
    if (cc->stream) cudaStreamDestroy(cc->stream);
    sl_free(cc->tmp_count);
    sl_free(cc->slot_ids);
    sl_free(cc->bases);
    sl_free(cc->hit);
    sl_free(cc->distinct);
    sl_free(cc);
}

int cuda_ctx_create(struct sl_context *ctx, struct cuda_ctx **out) {
    *out = NULL;
    const struct cuda_model *cm = ctx->model->cuda;
    const struct sl_config *c = &ctx->model->cfg;
    uint64_t k = c->n_experts_used ? c->n_experts_used : 1;
    struct cuda_ctx *cc = (struct cuda_ctx *)sl_calloc(1, sizeof *cc);
    if (!cc) return sl_seterr(SL_ERR_NOMEM, "out of memory");
    uint64_t B = ctx->n_batch, hid = c->hidden, ne = c->n_experts ? c->n_experts : 1;
    uint64_t kv = (uint64_t)c->n_layers * ctx->n_ctx * config_kv_dim(c);
    if (c->kv_lora_rank) kv = 0; /* MLA: the latent cache instead (layer_mla_cuda.cuh) */
    uint64_t ffn = c->moe_ffn > c->ffn ? c->moe_ffn : c->ffn;
    uint64_t rows_k = B * k > B ? B * k : B;
    cc->max_items = (uint32_t)(ne > rows_k ? ne : rows_k);
    struct {
        void **p;
        uint64_t bytes;
    } d[] = {
        {(void **)&cc->d_io, (B + 1) * 4},
        {(void **)&cc->k_cache, kv * 4},
        {(void **)&cc->v_cache, kv * 4},
        {(void **)&cc->x, B * hid * 4},
        {(void **)&cc->xb, B * hid * 4},
        {(void **)&cc->q, B * config_q_dim(c) * 4},
        {(void **)&cc->att, B * config_q_dim(c) * 4},
        {(void **)&cc->kb, B * config_kv_dim(c) * 4},
        {(void **)&cc->vb, B * config_kv_dim(c) * 4},
        {(void **)&cc->scores, B * c->n_heads * (uint64_t)ctx->n_ctx * 4},
        {(void **)&cc->router, B * ne * 4},
        {(void **)&cc->topk_w, B * k * 4},
        {(void **)&cc->topk_ids, B * k * 4},
        {(void **)&cc->sel, rows_k * 4},
        {(void **)&cc->n_items, (2 * ne + 2) * 4},
        {(void **)&cc->items, cc->max_items * sizeof(struct moe_item)},
        {(void **)&cc->H, rows_k * ffn * 4},
        {(void **)&cc->moe_tmp, rows_k * hid * 4},
        {(void **)&cc->logits, B * c->n_vocab * 4},
        {(void **)&cc->iota, B * 4},
        {(void **)&cc->d_sync, 32 * 4},
    };
    uint64_t total = 0;
    for (size_t i = 0; i < sizeof d / sizeof *d; i++) total += d[i].bytes;
    for (size_t i = 0; i < sizeof d / sizeof *d; i++) {
        cudaError_t e = cudaMalloc(d[i].p, d[i].bytes ? d[i].bytes : 4);
        if (e != cudaSuccess) {
            cudaGetLastError();
            *d[i].p = NULL;
            cuda_ctx_free(cc);
            return sl_seterr(SL_ERR_NOMEM, "out of device memory for a context of %u positions "
                             "(%.2f GiB, KV cache %.2f GiB): %s; HINT: lower --ctx or "
                             "--gpu-cache", ctx->n_ctx, total / GIB, 2.0 * kv * 4 / GIB,
                             cudaGetErrorString(e));
        }
    }
    struct {
        void **p;
        uint64_t bytes;
    } h[] = {
        {(void **)&cc->h_io, (B + 1) * 4},
        {(void **)&cc->h_logits, (uint64_t)c->n_vocab * 4},
        {(void **)&cc->h_ids, B * k * 4},
        {(void **)&cc->h_sel, rows_k * 4},
        {(void **)&cc->h_items, cc->max_items * sizeof(struct moe_item)},
        {(void **)&cc->h_counts, (2 * ne + 2) * 4},
    };
    for (size_t i = 0; i < sizeof h / sizeof *h; i++) {
        cudaError_t e = cudaHostAlloc(h[i].p, h[i].bytes, cudaHostAllocDefault);
        if (e != cudaSuccess) {
            cudaGetLastError();
            *h[i].p = NULL;
            cuda_ctx_free(cc);
            return sl_seterr(SL_ERR_NOMEM, "cannot pin host memory for a CUDA context: %s",
                             cudaGetErrorString(e));
        }
    }
    cc->tmp_count = (int32_t *)sl_malloc(ne * 2 * sizeof(int32_t));
    cc->slot_ids = (int32_t *)sl_malloc(ne * sizeof(int32_t));
    cc->bases = (const uint8_t **)sl_malloc(ne * sizeof(const uint8_t *));
    cc->hit = (uint8_t *)sl_malloc(ne);
    cc->distinct = (int32_t *)sl_malloc(ne * sizeof(int32_t));
    if (!cc->tmp_count || !cc->slot_ids || !cc->bases || !cc->hit || !cc->distinct) {
        cuda_ctx_free(cc);
        return sl_seterr(SL_ERR_NOMEM, "out of memory");
    }
    cudaError_t e = cudaStreamCreateWithFlags(&cc->stream, cudaStreamNonBlocking);
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&cc->ev_arrive, cudaEventDisableTiming);
    if (e == cudaSuccess) e = cudaMemset(cc->k_cache, 0, kv * 4);
    if (e == cudaSuccess) e = cudaMemset(cc->v_cache, 0, kv * 4);
    if (e == cudaSuccess) e = cudaMemset(cc->d_sync, 0, 32 * 4);
    for (uint64_t i = 0; i < B && e == cudaSuccess; i++) cc->h_io[i] = (int32_t)i;
    if (e == cudaSuccess) e = cudaMemcpy(cc->iota, cc->h_io, B * 4, cudaMemcpyHostToDevice);
    if (e != cudaSuccess) {
        int st = cuda_fail(e, "creating a CUDA context");
        cuda_ctx_free(cc);
        return st;
    }
    if (cm->hy) { /* Gated DeltaNet state, zeroed (layer_gdn_cuda.cuh) */
        int st = hybrid_cuda_ctx_create(cm, ctx, &cc->hy);
        if (st) {
            cuda_ctx_free(cc);
            return st;
        }
    }
    if (cm->mla) { /* deepseek_v3: latent cache and MLA buffers */
        int st = mla_cuda_ctx_create(ctx, cc);
        if (st) {
            cuda_ctx_free(cc);
            return st;
        }
    }
    cc->graph_state = cm->use_graphs && cm->gc.all_resident ? 0 : -1;
    *out = cc;
    return SL_OK;
}

/* ---- measured limits (sluice bench) --------------------------------------- */

static int cu_ok(cudaError_t e, const char *what) {
    return e == cudaSuccess ? (int)SL_OK : cuda_fail(e, what);
}

/* Best of 5 timed copies of `bytes` from src to dst on a private stream. */
static int time_copy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind,
                     double *best_s) {
    cudaStream_t s;
    cudaEvent_t e0 = NULL, e1 = NULL;
    CU_TRY(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    int st = SL_OK;
    if ((st = cu_ok(cudaEventCreate(&e0), "cudaEventCreate")) == SL_OK &&
        (st = cu_ok(cudaEventCreate(&e1), "cudaEventCreate")) == SL_OK) {
        *best_s = 0;
        for (int r = 0; r < 6 && st == SL_OK; r++) { /* the first one warms up */
            float ms = 0;
            cudaError_t e = cudaEventRecord(e0, s);
            if (e == cudaSuccess) e = cudaMemcpyAsync(dst, src, bytes, kind, s);
            if (e == cudaSuccess) e = cudaEventRecord(e1, s);
            if (e == cudaSuccess) e = cudaEventSynchronize(e1);
            if (e == cudaSuccess) e = cudaEventElapsedTime(&ms, e0, e1);
            if (e != cudaSuccess) st = cuda_fail(e, "timed copy");
            else if (r > 0 && (*best_s == 0 || ms / 1e3 < *best_s)) *best_s = ms / 1e3;
        }
    }
    if (e1) cudaEventDestroy(e1);
    if (e0) cudaEventDestroy(e0);
    cudaStreamDestroy(s);
    return st;
}

int cuda_measure_bandwidth(struct cuda_model *cm, double *mem_gbs, double *h2d_gbs) {
    (void)cm;
    *mem_gbs = *h2d_gbs = 0;
    size_t free_b = 0, total_b = 0;
    CU_TRY(cudaMemGetInfo(&free_b, &total_b));
    size_t bytes = (size_t)256 << 20;
    while (bytes > ((size_t)16 << 20) && 2 * bytes > free_b / 2) bytes /= 2;
    if (2 * bytes > free_b)
        return sl_seterr(SL_ERR_NOMEM, "cuda: %.0f MiB of device memory free: too little to "
                         "measure bandwidth", free_b / 1048576.0);
    char *d = NULL, *h = NULL;
    int st = SL_OK;
    double t = 0;
    if ((st = cu_ok(cudaMalloc(&d, 2 * bytes), "cudaMalloc (bandwidth probe)")) == SL_OK &&
        (st = cu_ok(cudaMemset(d, 1, 2 * bytes), "cudaMemset")) == SL_OK &&
        (st = time_copy(d + bytes, d, bytes, cudaMemcpyDeviceToDevice, &t)) == SL_OK) {
        *mem_gbs = t > 0 ? 2.0 * (double)bytes / t / 1e9 : 0; /* read + write */
        if ((st = cu_ok(cudaMallocHost(&h, bytes), "cudaMallocHost (bandwidth probe)")) ==
                SL_OK) {
            memset(h, 1, bytes);
            if ((st = time_copy(d, h, bytes, cudaMemcpyHostToDevice, &t)) == SL_OK)
                *h2d_gbs = t > 0 ? (double)bytes / t / 1e9 : 0;
        }
    }
    if (h) cudaFreeHost(h);
    if (d) cudaFree(d);
    return st;
}
