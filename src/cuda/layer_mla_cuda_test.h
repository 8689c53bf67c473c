/*
 * layer_mla_cuda_test.h — host-pointer twins of the deepseek_v3 kernels of
 * src/cuda/layer_mla_cuda.cu, for the differential tests
 * (tests/test_cuda_mla.c): each uploads its inputs, runs the same device
 * code as the forward pass on a private stream, downloads the outputs and
 * frees everything (outputs are NaN-filled first, so an element a kernel
 * misses shows up). Slow and simple; never used by the forward pass. Only
 * in builds with SLUICE_CUDA. Return SL_OK or a status with the error.
 */
#ifndef SL_CUDA_LAYER_MLA_CUDA_TEST_H
#define SL_CUDA_LAYER_MLA_CUDA_TEST_H

#include <stdint.h>

#include "config.h"
#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* mla_attention (layer_mla.h) of c, L (host weights: wq_a, q_a_norm, wq_b
 * or wq; wkv_a, kv_a_norm, wkv_b, wo) on x (n, hidden) at positions pos ..
 * pos + n - 1 into out (n, hidden); cache (pos + n, kv_lora_rank +
 * qk_rope_head_dim) host rows in and out (rows pos.. written). inv_freq:
 * (qk_rope_head_dim / 2) YaRN table with its cos/sin factor mscale, or NULL
 * for plain RoPE of c->rope_theta (mscale then ignored). */
int cuda_test_mla_attention(const struct sl_config *c, const struct layer_weights *L,
                            const float *inv_freq, float mscale, float *cache,
                            const float *x, float *out, int pos, int n);

/* moe_route_noaux_tc (moe_route.h) on the GPU: logits (n, n_experts),
 * sel_bias (n_experts) or NULL → ids, w (n, n_experts_used). SL_ERR_ARG
 * (message as the CPU's) when the groups do not fit. */
int cuda_test_route_noaux(const struct sl_config *c, const float *logits,
                          const float *sel_bias, int n, int32_t *ids, float *w);

#ifdef __cplusplus
}
#endif
#endif /* SL_CUDA_LAYER_MLA_CUDA_TEST_H */
