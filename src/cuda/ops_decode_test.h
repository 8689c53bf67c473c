/*
 * ops_decode_test.h — host-pointer twins of the decode kernels of
 * ops_decode_cuda.cu, for tests/test_cuda_decode.c: each uploads its
 * inputs, runs the launchers on a private stream (with programmatic
 * dependent launch when SLUICE_CUDA_PDL allows), downloads the outputs and
 * frees everything. Device outputs are poisoned with NaN first. Only in
 * builds with SLUICE_CUDA; never used by the forward pass. Return SL_OK or
 * a status with a message (CUDA errors; SL_ERR_INTERNAL for a broken
 * invariant the twin checks itself, named in the message).
 */
#ifndef SL_CUDA_OPS_DECODE_TEST_H
#define SL_CUDA_OPS_DECODE_TEST_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The decode router: logits (ne) = w (ne rows of cols, dtype) · xn + bias
 * (bias may be NULL), xn (cols) = rmsnorm(x) * norm_w, then the top-k
 * (kind: enum sl_router_kind; norm: renormalise) into ids, wts (k).
 * fused: one launch (matvec_route_cuda), run reps times, every run's ids
 * and weights bit-identical to the first and the block counter back to 0
 * (else SL_ERR_INTERNAL); SL_ERR_UNSUPPORTED when it does not apply. Not
 * fused: matvec_multi_cuda then route_cuda. Both also list the k items
 * through a table of fake record bases and check them (item s: expert
 * ids[s]'s base + part offsets, sel[s] = s, count 1, *n_items = k). */
int cuda_test_router_route(int dtype, const void *w, const float *bias, int ne, int cols,
                           const float *x, const float *norm_w, float eps, int k, int kind,
                           int norm, int fused, int reps, float *logits, float *xn,
                           int32_t *ids, float *wts);

/* A chain of depth dependent decode matvecs over square (dim x dim)
 * matrices w[i] of dtype: a = x; step i even: b = w[i] · (rmsnorm(a) *
 * norm_w) (the NORM prologue); i odd: a += w[i] · b (accumulate). out
 * (dim) = a at the end. graph: the chain (and the upload of x into a) is
 * captured as a CUDA graph and replayed reps times; else enqueued reps
 * times. Every repetition must give the same bits (else SL_ERR_INTERNAL). */
int cuda_test_matvec_chain(int dtype, const void *const *w, int depth, int dim,
                           const float *norm_w, float eps, const float *x, int graph, int reps,
                           float *out);

/* One decode MoE layer as the forward pass runs it with every expert
 * resident: router (dtype rdt, ne x hidden, with ffn norm_w) + routing
 * (fused when matvec_route_cuda applies, else apart), expert gate/up +
 * SwiGLU, down + weighted combine + residual into x (hidden, in/out).
 * records: ne records of record_bytes, gate/up/down at off[0..2] in dtype
 * edt (gate/up rows of hidden, down rows of ffn). reverse_items: the k
 * items are listed in reverse order before gate/up (as a streaming layer
 * may list them). ids, wts (k) out. */
int cuda_test_moe_decode(int rdt, const void *router_w, const float *norm_w, float eps,
                         const void *records, uint64_t record_bytes, const uint64_t off[3],
                         int edt, int ne, int hidden, int ffn, int k, int kind, int norm,
                         int reverse_items, float *x, int32_t *ids, float *wts);

#ifdef __cplusplus
}
#endif
#endif /* SL_CUDA_OPS_DECODE_TEST_H */
