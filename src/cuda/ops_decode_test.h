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

/* Decode-kernel timing for bench/cuda_decode_kernels.c. Each twin uploads
 * its inputs (weights in ncopy back-to-back copies, so that the timed
 * launches rotate through more bytes than the L2 holds), runs the kernel
 * once and downloads that output, then captures reps launches (launch r on
 * copy r % ncopy) as one CUDA graph, replays it once to warm up and times
 * a second replay with events: *us = microseconds per launch, the gaps of
 * a graph included. The tuning knobs (SLUICE_CUDA_*) in the environment
 * pick the variant, as in the forward pass. */

/* y (rows[0] + .. + rows[nseg-1]) = the nseg stacked matrices w[i] (rows[i]
 * x cols, dtype) · x, with the RMSNorm prologue when norm_w (matvec_multi_
 * cuda: the q/k/v launch); accumulate (nseg 1, no norm): y += w · x
 * through matmul_cuda (o_proj + residual), y in/out. */
int cuda_kbench_matvec(int dtype, int nseg, const void *const w[], const int rows[], int cols,
                       const float *x, const float *norm_w, float eps, int accumulate,
                       int ncopy, int reps, float *y, double *us);

/* The decode router over w (ne x cols, dtype) and rmsnorm(x) * norm_w, top
 * k. mode 0: the fused router + route (matvec_route_cuda; the caller
 * checks for SL_ERR_UNSUPPORTED); 1: the router matvec then route_cuda;
 * 2: the router matvec alone (ids, wts untouched); 3: route_cuda alone on
 * the logits of one mode-1 run. logits (ne), ids, wts (k) out. */
int cuda_kbench_router(int dtype, const void *w, int ne, int cols, const float *x,
                       const float *norm_w, float eps, int k, int kind, int norm, int mode,
                       int ncopy, int reps, float *logits, int32_t *ids, float *wts,
                       double *us);

/* The decode expert kernels on Q4 records (ne records of record_bytes,
 * gate/up/down at off[0..2]): ids (nsets x k) are nsets expert sets, launch
 * r of the timing uses set r % nsets (spread the sets over all experts so
 * that the reads come from HBM). Set 0 once: h (k x ffn) = SwiGLU of gate/
 * up · xn (expert_gate_up_cuda), x_out (hidden) = x + sum in expert-id
 * order of wts[s] * down · h[s] (expert_down_combine_cuda). *us_gu, *us_dc:
 * per launch of each. */
int cuda_kbench_experts(const void *records, uint64_t record_bytes, const uint64_t off[3],
                        int ne, int hidden, int ffn, int k, const int32_t *ids, int nsets,
                        const float *wts, const float *xn, const float *x, int reps, float *h,
                        float *x_out, double *us_gu, double *us_dc);

#ifdef __cplusplus
}
#endif
#endif /* SL_CUDA_OPS_DECODE_TEST_H */
