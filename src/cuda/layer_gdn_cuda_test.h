/*
 * layer_gdn_cuda_test.h — host-pointer twins of the hybrid kernels of
 * src/cuda/layer_gdn_cuda.cu, for the differential tests
 * (tests/test_cuda_hybrid.c): each copies its inputs to the device, runs the
 * kernels on a private stream, copies the outputs back and frees
 * everything. Slow and simple; never used by the forward pass. Only in
 * builds with SLUICE_CUDA. Return SL_OK or a status with the CUDA error.
 */
#ifndef SL_CUDA_LAYER_GDN_CUDA_TEST_H
#define SL_CUDA_LAYER_GDN_CUDA_TEST_H

#include "layer_gdn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* gdn_forward (layer_gdn.h) on the GPU: conv + SiLU over qkv (n, conv_dim)
 * with conv_state (conv_dim, kernel - 1) updated, the delta rule token by
 * token with ssm_state (n_v_heads, k_dim, v_dim) updated, the gated RMSNorm
 * with z (n, value_dim); out (n, value_dim). a, b: (n, n_v_heads). */
int cuda_test_gdn(const struct gdn_dims *d, const struct gdn_weights *w, float *conv_state,
                  float *ssm_state, const float *qkv, const float *z, const float *a,
                  const float *b, float *out, int n);

/* The gated attention's pieces for n tokens at positions pos..pos+n-1:
 * qg (n, n_heads, 2 * hd) per head q then gate; q_out (n, n_heads, hd) the
 * per-head-normed (qn) partially rotated (rd dims, theta) q; k, v (n, nkv,
 * hd) normed/rotated (kn) and copied into rows pos.. of kc, vc ((pos + n,
 * nkv * hd), copied back whole); then att (n, n_heads * hd) *= sigmoid(gate)
 * in place. */
int cuda_test_gated_attn_parts(const float *qg, float *q_out, const float *k, const float *v,
                               float *kc, float *vc, int pos, int n, int nh, int nkv, int hd,
                               int rd, float theta, const float *qn, const float *kn, float eps,
                               float *att);

/* out (n, hidden) rows scaled by sigmoid(gw · x_t), x (n, hidden). */
int cuda_test_shared_gate(float *out, const float *x, const float *gw, int n, int hidden);

#ifdef __cplusplus
}
#endif
#endif /* SL_CUDA_LAYER_GDN_CUDA_TEST_H */
