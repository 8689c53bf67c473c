/*
 * ops_cuda_test.h — host-pointer twins of the CUDA kernels, for the
 * differential tests (tests/test_cuda.c): each copies its inputs to the
 * device, runs the kernel of ops_cuda.cuh on a private stream, copies the
 * outputs back and frees everything. Slow and simple; never used by the
 * forward pass. Only in builds with SLUICE_CUDA. Return SL_OK or a status
 * with the CUDA error.
 */
#ifndef SL_CUDA_OPS_CUDA_TEST_H
#define SL_CUDA_OPS_CUDA_TEST_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Y (n, rows) = X (n, cols) · Wᵀ (+ bias) (+ Y when accumulate); w holds
 * rows * quant_row_bytes(dtype, cols) bytes; byte_offset shifts w inside
 * its device buffer (1..15 tests the unaligned path). */
int cuda_test_matmul(int dtype, const void *w, const float *X, float *Y, int n, int rows,
                     int cols, const float *bias, int accumulate, int byte_offset);
/* out (n, dim) = rmsnorm rows of x with weight w. */
int cuda_test_rmsnorm(const float *x, const float *w, float *out, int n, int dim, float eps);
/* q (n, nh, hd) in place, k (n, nkv, hd) and v (n, nkv, hd) appended at
 * rows pos..pos+n-1 of kc, vc ((pos + n, nkv * hd), copied back whole);
 * per-head norms qn, kn (hd) or NULL; inv_freq (hd / 2). */
int cuda_test_qk_rope(float *q, const float *k, const float *v, float *kc, float *vc, int pos,
                      int n, int nh, int nkv, int hd, const float *qn, const float *kn,
                      float eps, const float *inv_freq);
/* out (n, nh, hd): query t attends to 0 .. pos + t of kc, vc ((pos + n,
 * nkv * hd)). */
int cuda_test_attention(const float *q, const float *kc, const float *vc, float *out, int pos,
                        int n, int nh, int nkv, int hd, float scale);
/* logits (n, ne) → ids, w (n, k) (kind: enum sl_router_kind). */
int cuda_test_route(const float *logits, int n, int ne, int k, int kind, int norm, int32_t *ids,
                    float *w);
/* The routed-expert path: ne records of record_bytes (gate, up, down at
 * off[0..2]) in dtypes dt_gu, dt_down; x (n, hidden) += sum of the
 * selections (ids, w: (n, k)) through plan, gate/up, then down + combine
 * (n > 1) or the fused decode down + combine (n == 1). */
int cuda_test_moe(const void *records, uint64_t record_bytes, const uint64_t off[3], int ne,
                  int dt_gu, int dt_down, int hidden, int ffn, const int32_t *ids,
                  const float *w, int n, int k, float *x);

#ifdef __cplusplus
}
#endif
#endif /* SL_CUDA_OPS_CUDA_TEST_H */
