/*
 * layer_mla.h — multi-head latent attention (MLA), the attention of the
 * deepseek_v3 family (DeepSeek-V3/R1/V3.1, Kimi K2), as transformers'
 * DeepseekV3Attention computes it.
 *
 * Per token x (hidden):
 *   q      = q_b(rmsnorm(q_a(x)))   (q_lora_rank > 0)   or  q_proj(x);
 *            per head [q_nope (qk_nope_head_dim), q_rot (qk_rope_head_dim)]
 *   ckv    = kv_a_proj_with_mqa(x) = [latent (kv_lora_rank), k_rot (rope)]
 *   latent = rmsnorm(latent) (kv_a_layernorm; both MLA norms use eps 1e-6,
 *            HF's default, not rms_norm_eps)
 *   q_rot, k_rot rotated at the token's position (k_rot is one key shared by
 *   every head); with rope_interleave the rotary pairs are (2i, 2i+1) and the
 *   result is written de-interleaved (x[0::2] rotated, then x[1::2]), exactly
 *   as apply_rotary_pos_emb_interleave
 *   kv_b_proj(latent) per head = [k_nope (qk_nope_head_dim), v (v_head_dim)]
 *   score  = scale * (q_nope . k_nope + q_rot . k_rot), causal softmax,
 *   out_h  = sum_s p_s v_s,h; then o_proj.
 * scale = qk_head_dim^-0.5, times mscale(factor, mscale_all_dim)^2 for YaRN
 * with mscale_all_dim (mla_attn_scale).
 *
 * The cache keeps, per layer and position, only [latent, k_rot]
 * (kv_lora_rank + qk_rope_head_dim floats: config_mla_cache_dim), never
 * full K and V. Two forms compute the same attention from it:
 *   MLA_NAIVE     reconstructs k_nope and v of every cached position through
 *                 kv_b_proj (in blocks of positions), double accumulators:
 *                 the textbook form, the reference.
 *   MLA_ABSORBED  multiplies q_nope into kv_b_proj's key rows (q_lat_h =
 *                 W_k,h^T q_nope,h), so attention runs in latent space as
 *                 multi-query attention with head dim kv_lora_rank + rope
 *                 over the cache itself (ops_attention*), and applies the
 *                 value rows after the softmax (out_h = W_v,h o_lat,h).
 *                 What the forward pass runs, prefill and decode.
 * tests/test_mla.c holds them equal (and to a direct formula).
 *
 * What it is not: the router or experts (moe_route.h, forward.c), or the
 * cache allocation (context.c owns ctx->mla_cache).
 */
#ifndef SL_LAYER_MLA_H
#define SL_LAYER_MLA_H

#include <stdint.h>

#include "config.h"
#include "cpu/pool.h"
#include "model.h"

enum mla_form { MLA_ABSORBED = 0, MLA_NAIVE = 1 };

/* Positions per kv_b_proj reconstruction block of the naive form. */
#define MLA_NAIVE_BLOCK 32

/* Activation buffers of MLA for chunks of up to n_batch tokens. */
struct mla_scratch {
    int n_batch;
    int form;      /* enum mla_form; MLA_NAIVE when SLUICE_MLA=naive */
    float *qa;     /* (n_batch, q_lora_rank), when q_lora_rank > 0 */
    float *q;      /* (n_batch, n_heads, qk_head_dim) */
    float *qabs;   /* (n_batch, n_heads, cache_dim) absorbed queries */
    float *oabs;   /* (n_batch, n_heads, cache_dim) latent-space outputs */
    float *rows;   /* (n_heads, kv_lora_rank) a decoded kv_b row per head */
    float *xg;     /* (max(n_batch, MLA_NAIVE_BLOCK), kv_lora_rank) */
    float *yg;     /* (n_batch, v_head_dim) */
    float *att;    /* (n_batch, n_heads * v_head_dim) */
    float *kvb;    /* (MLA_NAIVE_BLOCK, n_heads * (nope + v)) naive form */
    double *acc;   /* (n_heads, v_head_dim) naive form */
    float *tmp;    /* (qk_rope_head_dim) rope de-interleave */
};

/* Allocates the buffers for cfg (kv_lora_rank > 0) and chunks of n_batch
 * tokens; the form is MLA_NAIVE if the environment has SLUICE_MLA=naive,
 * else MLA_ABSORBED. *out is owned by the caller (mla_scratch_free).
 * SL_ERR_NOMEM on allocation failure, SL_ERR_ARG if cfg is not MLA. */
int mla_scratch_create(const struct sl_config *cfg, int n_batch,
                       struct mla_scratch **out);
void mla_scratch_free(struct mla_scratch *s); /* NULL is a no-op */

/* The softmax scale: qk_head_dim^-0.5 in double, times mscale^2 with
 * mscale = 0.1 * mscale_all_dim * ln(factor) + 1 when the rope is YaRN with
 * mscale_all_dim != 0 and factor > 1 (HF yarn_apply_mscale). */
float mla_attn_scale(const struct sl_config *cfg);

/* One MLA layer over n tokens (1 <= n <= s->n_batch) at positions pos ..
 * pos + n - 1: x (n, hidden) → out (n, hidden), writing the tokens'
 * [latent, k_rot] rows into cache (n_ctx, cache_dim) at rows pos.. and
 * attending to rows 0 .. pos + t. L holds the MLA weights (model.h);
 * inv_freq: (qk_rope_head_dim / 2) YaRN table with its cos/sin factor
 * rope_mscale, or NULL for plain RoPE of cfg->rope_theta. scores: (n_heads,
 * pos + n) floats. form: enum mla_form. Errors: SL_ERR_NOMEM if the pool's
 * scratch cannot grow, SL_ERR_ARG for a bad form or shape (message set). */
int mla_attention(struct sl_pool *pool, struct mla_scratch *s,
                  const struct sl_config *cfg, const struct layer_weights *L,
                  const float *inv_freq, float rope_mscale, float *cache,
                  const float *x, float *out, uint32_t pos, int n,
                  float *scores, int form);

struct sl_context;
/* forward.c's hook: mla_attention of layer l on ctx->xb into ctx->xb2 with
 * the context's latent cache and scratch (context.h), plus the dump stages
 * q.f32, kv_latent.f32, attn_out.f32. */
int mla_forward(struct sl_context *ctx, uint32_t l, uint32_t pos, int n);

#endif /* SL_LAYER_MLA_H */
