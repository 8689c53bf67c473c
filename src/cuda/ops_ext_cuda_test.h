/*
 * ops_ext_cuda_test.h — host-pointer twins of the CUDA kernels that the
 * mixtral / olmoe / gpt_oss families add (tests/test_cuda_families.c),
 * like ops_cuda_test.h: each uploads its inputs (outputs poisoned with
 * NaN), runs the launcher of ops_cuda.cuh on a private stream, downloads,
 * frees. Slow and simple; never used by the forward pass. Only in builds
 * with SLUICE_CUDA. Return SL_OK or a status with the CUDA error.
 */
#ifndef SL_CUDA_OPS_EXT_CUDA_TEST_H
#define SL_CUDA_OPS_EXT_CUDA_TEST_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* qk_rope_store_ext_cuda: q (n, nh, hd) and k (n, nkv, hd) in place (k as
 * normalised and rotated), v (n, nkv, hd); kc, vc ((pos + n, nkv * hd),
 * copied back whole) receive rows pos .. pos + n - 1. qn, kn: (hd) per-head
 * norms, or with full_norm (nh * hd) and (nkv * hd), or NULL; inv_freq
 * (hd / 2); mscale: YaRN's factor (1 plain). */
int cuda_test_qk_rope_ext(float *q, float *k, const float *v, float *kc, float *vc, int pos,
                          int n, int nh, int nkv, int hd, const float *qn, const float *kn,
                          int full_norm, float eps, const float *inv_freq, float mscale);

/* attention_ext_cuda: out (n, nh, hd); query t at position pos + t sees
 * the window of kc, vc ((n_ctx, nkv * hd), n_ctx >= pos + n) ending at
 * it; sinks (nh) or NULL. split = 0 sets SLUICE_CUDA_ATT_SPLIT=0 for the
 * call (the one-block-per-head kernel), 1 leaves the default (decode splits
 * when n_ctx > ATT_SPAN). The scratch is as large as the forward pass's
 * with n_batch = max(n, 2). */
int cuda_test_attention_ext(const float *q, const float *kc, const float *vc, float *out,
                            int pos, int n, int nh, int nkv, int hd, int n_ctx, float scale,
                            int window, const float *sinks, int split);

/* cuda_test_moe with gpt_oss's extras: gu_b (ne, 2 * ffn) interleaved
 * gate/up biases or NULL, down_b (ne, hidden) or NULL, the clamped SwiGLU
 * when limit > 0. x (n, hidden) += the weighted expert outputs; n == 1
 * runs the decode kernels (Q4 gate/up from shared x when the rows allow,
 * fused down + combine). */
int cuda_test_moe_ext(const void *records, uint64_t record_bytes, const uint64_t off[3], int ne,
                      int dt_gu, int dt_down, int hidden, int ffn, const int32_t *ids,
                      const float *w, int n, int k, const float *gu_b, const float *down_b,
                      float alpha, float limit, float *x);

#ifdef __cplusplus
}
#endif
#endif /* SL_CUDA_OPS_EXT_CUDA_TEST_H */
