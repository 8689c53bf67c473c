/*
 * context.c — contexts (see context.h) and evaluation: sl_eval validates a
 * whole batch before touching any state, so a rejected call leaves the
 * context exactly as it was; a failure inside the forward pass rolls the
 * position back, so the context stays usable.
 */
#include <stdlib.h>

#include "context.h"
#include "cuda/cuda.h"
#include "cpu/ops.h"
#include "cpu/pool.h"
#include "layer_hybrid.h"
#include "layer_mla.h"
#include "util.h"

struct sl_context_params sl_context_default_params(void) {
    struct sl_context_params p = {0};
    p.n_ctx = 0;
    p.n_batch = 0;
    p.n_threads = 0;
    p.state_checkpoint_interval = 0; /* = 256 */
    return p;
}

static uint64_t max_u64(uint64_t a, uint64_t b) { return a > b ? a : b; }

/* Allocates count floats, 64-byte aligned, into *p; tracks failure in *ok. */
static void alloc_f32(float **p, uint64_t count, int *ok) {
    *p = sl_aligned_alloc(64, count * sizeof(float));
    if (!*p) *ok = 0;
}

void sl_context_free(struct sl_context *ctx) {
    if (!ctx) return;
    context_seq_free(ctx); /* binds sequence 0: its buffers are freed below */
    float **bufs[] = {&ctx->k_cache, &ctx->v_cache, &ctx->x,      &ctx->xb,
                      &ctx->xb2,     &ctx->q,       &ctx->att,    &ctx->att_scores,
                      &ctx->router,  &ctx->topk_w,  &ctx->gather, &ctx->hb,
                      &ctx->hb2,     &ctx->moe_tmp, &ctx->logits,  &ctx->mla_cache};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        sl_aligned_free(*bufs[i]);
    sl_free(ctx->topk_ids);
    sl_free(ctx->expert_count);
    sl_free(ctx->expert_start);
    sl_free(ctx->sel_order);
    sl_free(ctx->moe_ids);
    sl_free(ctx->moe_done);
    sl_free(ctx->pf_ids);
    sl_free(ctx->tokens);
    context_free_checkpoints(ctx);
    mla_scratch_free(ctx->mla);
    hybrid_state_free(ctx->hybrid);
    pool_free(ctx->pool);
    cuda_ctx_free(ctx->cuda);
    sl_free(ctx);
}

int sl_context_create(struct sl_model *model,
                      const struct sl_context_params *params,
                      struct sl_context **out) {
    if (!model || !out) return sl_seterr(SL_ERR_ARG, "sl_context_create: NULL argument");
    *out = NULL;
    struct sl_context_params p = params ? *params : sl_context_default_params();
    const struct sl_config *c = &model->cfg;
    uint32_t n_ctx = p.n_ctx;
    if (n_ctx == 0) n_ctx = c->n_ctx_train < 4096 ? c->n_ctx_train : 4096;
    if (n_ctx == 0) n_ctx = 4096;
    if (n_ctx > (1u << 24))
        return sl_seterr(SL_ERR_ARG, "n_ctx %u is too large (max %u)", n_ctx, 1u << 24);
    uint32_t n_batch = p.n_batch ? p.n_batch : 64;
    if (n_batch > 4096)
        return sl_seterr(SL_ERR_ARG, "n_batch %u is too large (max 4096)", n_batch);
    if (n_batch > n_ctx) n_batch = n_ctx;
    int n_threads = p.n_threads > 0 ? p.n_threads : model->params.n_threads;
    if (n_threads <= 0) n_threads = sl_n_cpus();

    struct sl_context *ctx = sl_calloc(1, sizeof *ctx);
    if (!ctx) return sl_seterr(SL_ERR_NOMEM, "out of memory creating a context");
    ctx->model = model;
    ctx->n_ctx = n_ctx;
    ctx->n_batch = n_batch;
    ctx->ckpt_interval = p.state_checkpoint_interval ? p.state_checkpoint_interval : 256;
    uint64_t kv = (uint64_t)c->n_layers * n_ctx * config_kv_dim(c);
    /* MLA layers cache the latent instead of K and V (layer_mla.h) */
    uint64_t mla_kv = c->kv_lora_rank ? (uint64_t)c->n_layers * n_ctx * config_mla_cache_dim(c) : 0;
    if (mla_kv) kv = 0;
    if (model->cuda) kv = 0; /* the KV cache lives on the GPU (cuda_ctx_create) */
    uint64_t ffn = max_u64(max_u64(c->ffn, c->moe_ffn),
                           (uint64_t)c->moe_ffn * c->n_shared_experts), B = n_batch;
    ffn = max_u64(ffn, c->shared_ffn); /* qwen3_next / qwen3_5_moe shared expert */
    uint64_t k = max_u64(c->n_experts_used, 1), ne = max_u64(c->n_experts, 1);
    int ok = 1;
    if (kv) alloc_f32(&ctx->k_cache, kv, &ok);
    if (kv) alloc_f32(&ctx->v_cache, kv, &ok);
    if (mla_kv) alloc_f32(&ctx->mla_cache, mla_kv, &ok);
    if (mla_kv && ok && mla_scratch_create(c, (int)n_batch, &ctx->mla)) ok = 0;
    if (config_is_hybrid(c) && ok &&
        hybrid_state_create(c, (int)n_batch, n_threads, &ctx->hybrid))
        ok = 0;
    alloc_f32(&ctx->x, B * c->hidden, &ok);
    alloc_f32(&ctx->xb, B * c->hidden, &ok);
    alloc_f32(&ctx->xb2, B * c->hidden, &ok);
    alloc_f32(&ctx->gather, B * c->hidden, &ok);
    alloc_f32(&ctx->moe_tmp, B * k * c->hidden, &ok);
    alloc_f32(&ctx->q, B * config_q_dim(c), &ok);
    alloc_f32(&ctx->att, B * config_q_dim(c), &ok);
    alloc_f32(&ctx->att_scores, (uint64_t)c->n_heads * n_ctx, &ok);
    alloc_f32(&ctx->router, B * ne, &ok);
    alloc_f32(&ctx->topk_w, B * k, &ok);
    alloc_f32(&ctx->hb, B * max_u64(ffn, 1), &ok);
    alloc_f32(&ctx->hb2, B * max_u64(ffn, 1), &ok);
    alloc_f32(&ctx->logits, c->n_vocab, &ok);
    ctx->topk_ids = sl_calloc(B * k, sizeof(int32_t));
    ctx->sel_order = sl_calloc(B * k, sizeof(int32_t));
    ctx->expert_count = sl_calloc(ne, sizeof(int32_t));
    ctx->expert_start = sl_calloc(ne, sizeof(int32_t));
    ctx->moe_ids = sl_calloc(ne, sizeof(int32_t));
    ctx->moe_done = sl_calloc(ne, 1);
    ctx->pf_ids = sl_calloc(ne, sizeof(int32_t));
    ctx->tokens = sl_calloc(n_ctx, sizeof(int32_t));
    if (!ok || !ctx->tokens || !ctx->topk_ids || !ctx->sel_order || !ctx->expert_count || !ctx->expert_start ||
        !ctx->moe_ids || !ctx->moe_done || !ctx->pf_ids) {
        sl_context_free(ctx);
        return sl_seterr(SL_ERR_NOMEM,
                         "out of memory for a context of %u positions (KV cache %.1f MiB); "
                         "HINT: lower n_ctx",
                         n_ctx, (2.0 * (double)kv + (double)mla_kv) * 4 / (1 << 20));
    }
    int st = pool_create(n_threads, &ctx->pool);
    if (st) {
        sl_context_free(ctx);
        return st;
    }
    const char *dump_dir = getenv("SLUICE_DUMP");
    ctx->dump_dir = dump_dir && *dump_dir ? dump_dir : NULL;
    if (model->cuda && (st = cuda_ctx_create(ctx, &ctx->cuda))) { /* may lower n_batch */
        sl_context_free(ctx);
        return st;
    }
    if ((st = context_seq_create(ctx, p.n_seq_max))) {
        sl_context_free(ctx);
        return st;
    }
    *out = ctx;
    return SL_OK;
}

int sl_eval(struct sl_context *ctx, const int32_t *tokens, size_t n,
            float *logits_all) {
    if (!ctx || (!tokens && n)) return sl_seterr(SL_ERR_ARG, "sl_eval: NULL argument");
    if (n == 0) return sl_seterr(SL_ERR_ARG, "sl_eval: no tokens to evaluate (empty prompt)");
    const struct sl_config *c = &ctx->model->cfg;
    for (size_t i = 0; i < n; i++)
        if (tokens[i] < 0 || (uint32_t)tokens[i] >= c->n_vocab)
            return sl_seterr(SL_ERR_RANGE,
                             "token id %d at index %zu is out of range (vocabulary has %u ids)",
                             tokens[i], i, c->n_vocab);
    if (n > ctx->n_ctx - ctx->n_past)
        return sl_seterr(SL_ERR_RANGE,
                         "context is full: %u of %u positions used, %zu more requested",
                         ctx->n_past, ctx->n_ctx, n);
    double t0 = sl_now();
    uint32_t start = ctx->n_past;
    memmove(ctx->tokens + start, tokens, n * sizeof(int32_t));
    for (size_t i = 0; i < n; i += ctx->n_batch) {
        int chunk = (int)(n - i < ctx->n_batch ? n - i : ctx->n_batch);
        int last = i + (size_t)chunk == n;
        float *out = logits_all ? logits_all + i * (uint64_t)c->n_vocab
                     : last     ? ctx->logits
                                : NULL;
        int st = (ctx->cuda ? forward_batch_cuda : forward_batch)(ctx, tokens + i, chunk,
                                                                  start + (uint32_t)i, out,
                               logits_all != NULL);
        if (st) {
            ctx->n_past = start;
            ctx->has_logits = 0;
            /* recurrent state cannot be rewound: start the sequence over */
            if (ctx->hybrid) {
                hybrid_state_reset(ctx->hybrid);
                context_drop_checkpoints(ctx, 0);
                ctx->n_past = 0;
            }
            return st;
        }
        /* a failed copy only means fewer checkpoints (more recompute) */
        if (ctx->hybrid) (void)context_checkpoint(ctx, start + (uint32_t)(i + (size_t)chunk));
    }
    if (logits_all)
        memcpy(ctx->logits, logits_all + (n - 1) * (uint64_t)c->n_vocab,
               (size_t)c->n_vocab * sizeof(float));
    ctx->n_past = start + (uint32_t)n;
    ctx->has_logits = 1;
    double dt = sl_now() - t0;
    if (n == 1) {
        ctx->stats.n_decode_tokens++;
        ctx->stats.decode_seconds += dt;
    } else {
        ctx->stats.n_prompt_tokens += n;
        ctx->stats.prompt_seconds += dt;
    }
    return SL_OK;
}

const float *sl_logits(const struct sl_context *ctx) {
    return ctx && ctx->has_logits ? ctx->logits : NULL;
}

uint32_t sl_context_n_past(const struct sl_context *ctx) { return ctx->n_past; }

void sl_context_reset(struct sl_context *ctx) {
    ctx->n_past = 0;
    ctx->has_logits = 0;
    hybrid_state_reset(ctx->hybrid);
    context_drop_checkpoints(ctx, 0);
}

void sl_context_stats(const struct sl_context *ctx, struct sl_stats *out) {
    *out = ctx->stats;
    expert_store_stats(ctx->model->experts, out);
    if (ctx->model->cuda) cuda_model_stats(ctx->model->cuda, out);
}

const char *sl_backend_desc(void) {
    static const char *names[SL_ISA_COUNT] = {"cpu scalar", "cpu avx2", "cpu avx512"};
    int isa = ops_isa();
    return isa >= 0 && isa < SL_ISA_COUNT ? names[isa] : "cpu";
}
