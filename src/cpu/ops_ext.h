/*
 * ops_ext.h — CPU operations that some MoE families need beyond ops.h:
 * attention with a sliding window and per-head sink logits (gpt_oss,
 * mixtral with sliding_window), RoPE from a precomputed frequency table with
 * an attention scale (YaRN), the YaRN frequency table itself, and the
 * clamped SwiGLU of gpt-oss.
 *
 * What it is not: a replacement for ops.h. The plain paths (qwen3_moe, no
 * window, no sinks) keep using ops_attention / ops_rope_neox; these are only
 * called where a family needs them. Conventions are those of ops.h: float32
 * activations, `int` dimensions, SL_OK or SL_ERR_ARG with a message.
 */
#ifndef SL_CPU_OPS_EXT_H
#define SL_CPU_OPS_EXT_H

#include <stdint.h>

#include "cpu/pool.h"

/* Causal attention of n_q query positions p0 .. p0 + n_q - 1 whose keys and
 * values are already in the cache (n_q = 1 is decode), with two options:
 *   window > 0: query at position p attends to positions
 *       max(0, p - window + 1) .. p only (HF sliding_window: kv > q - window);
 *       window = 0: to 0 .. p.
 *   sinks != NULL: (n_heads) logits s_h that join each head's softmax as one
 *       extra column carrying no value (gpt-oss): out_h = sum_p e^{a_p - m}
 *       v_p / (sum_p e^{a_p - m} + e^{s_h - m}), m = max(max_p a_p, s_h).
 * a_p = scale * q_h . k_{p,j}, head h uses KV head h / (n_heads / n_kv_heads).
 *   out, q: (n_q, n_heads, head_dim); k, v: position p, KV head j at
 *   k + p * kv_stride + j * head_dim; scratch: (n_heads, p0 + n_q) floats.
 * The reference sums in double, single-threaded; ops_attention_ext splits
 * heads across the pool and sums in float (nmse <= 1e-10 vs the reference).
 * Returns SL_ERR_ARG for empty shapes, n_heads not a multiple of
 * n_kv_heads, kv_stride < n_kv_heads * head_dim, window < 0, p0 < 0, or a
 * NULL scratch. */
int ops_attention_ext_ref(float *out, const float *q, const float *k,
                          const float *v, int n_q, int p0, int n_heads,
                          int n_kv_heads, int head_dim, int64_t kv_stride,
                          float scale, int window, const float *sinks,
                          float *scratch);
int ops_attention_ext(struct sl_pool *pool, float *out, const float *q,
                      const float *k, const float *v, int n_q, int p0,
                      int n_heads, int n_kv_heads, int head_dim,
                      int64_t kv_stride, float scale, int window,
                      const float *sinks, float *scratch);

/* ops_rope_neox with the frequency table given: for i < rot_dim / 2,
 * f = pos * inv_freq[i] (float32), c = cos(f) * mscale, s = sin(f) * mscale
 * (HF multiplies cos and sin by the rope's attention_scaling), then the
 * rotate-half update of ops_rope_neox. inv_freq: (rot_dim / 2).
 * Errors as ops_rope_neox. */
int ops_rope_neox_freqs(float *x, int n_heads, int head_dim, int rot_dim,
                        int64_t pos, const float *inv_freq, float mscale);

/* The YaRN inverse frequencies of transformers' _compute_yarn_parameters
 * (float32 arithmetic where it uses float32): dim = rot_dim,
 *   pos_freq[i] = theta^(2i / dim), extrapolation 1 / pos_freq,
 *   interpolation 1 / (factor * pos_freq), blended by a linear ramp between
 *   the correction dims of beta_fast and beta_slow rotations over orig_ctx
 *   positions (floored / ceiled when truncate), clamped to [0, dim - 1].
 * inv_freq: (rot_dim / 2). SL_ERR_ARG for rot_dim odd or < 2, or a
 * non-positive theta, factor, beta or orig_ctx. */
int ops_rope_yarn_inv_freq(float *inv_freq, int rot_dim, float theta,
                           float factor, float beta_fast, float beta_slow,
                           uint32_t orig_ctx, int truncate);

/* gpt-oss's clamped SwiGLU: g = min(gate, limit), u = clamp(up, -limit,
 * limit), out = (u + 1) * g * sigmoid(alpha * g). out may equal gate or up. */
void ops_swiglu_clamped(float *out, const float *gate, const float *up, int n,
                        float alpha, float limit);

#endif /* SL_CPU_OPS_EXT_H */
