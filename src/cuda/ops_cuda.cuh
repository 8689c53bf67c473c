/*
 * ops_cuda.cuh — the CUDA backend's kernels as host launchers (C++, used by
 * the other .cu files of src/cuda): quantized matmul (n = 1 is the decode
 * matvec), embedding, RMSNorm, per-head q/k norm + NeoX RoPE + KV append,
 * GQA attention over the device KV cache, router softmax + top-k, MoE plan,
 * fused expert gate/up + SwiGLU, expert down, weighted combine.
 *
 * Conventions: activations float32, weights in the stored formats of
 * src/quant.h (rows self-contained; a row that is not 16-byte aligned takes
 * a byte-wise path), all pointers are device pointers, every launcher
 * enqueues on `stream` and returns SL_OK or a status with the CUDA error
 * (launch configuration errors only: execution errors surface at the next
 * synchronisation). Positions come from device memory (d_pos) so a decode
 * step can be captured once as a CUDA graph and replayed.
 * Numbers: float accumulation everywhere; the tolerances against the CPU
 * reference are stated in tests/test_cuda.c.
 */
#ifndef SL_CUDA_OPS_CUDA_CUH
#define SL_CUDA_OPS_CUDA_CUH

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

extern "C" {
#include "util.h"
}

/* Returns a status for a failed CUDA call and sets the message ("CUDA
 * error in <what>: <CUDA's message>"); out of memory maps to
 * SL_ERR_NOMEM, everything else to SL_ERR_IO. */
int cuda_fail(cudaError_t e, const char *what);
#define CU_TRY(call)                                                      \
    do {                                                                  \
        cudaError_t e_ = (call);                                          \
        if (e_ != cudaSuccess) return cuda_fail(e_, #call);               \
    } while (0)

/* Tuning knob `name` from the environment (an integer), else dflt: kernel
 * variants for measurement (docs/cuda.md); read when a launch is enqueued
 * (a decode graph keeps the variants it was captured with). */
int cuda_tune(const char *name, int dflt);

/* One expert's work in a MoE launch. */
struct moe_item {
    const uint8_t *gate, *up, *down; /* device rows of the three matrices */
    int32_t start, count;            /* its selections sel[start, +count) */
};

/* Byte offsets of gate, up, down inside an expert record. */
struct part_off {
    uint64_t o[3];
};

/* Shapes and formats of an expert (or of a dense SwiGLU MLP). */
struct ffn_shape {
    int hidden, ffn;
    int dt_gu, dt_down;              /* gate/up share a dtype */
    uint64_t rb_gu, rb_down;         /* row bytes */
    int aligned_gu, aligned_down;    /* rows 16-byte aligned */
    /* gpt_oss experts (ffn_h in ops_cuda_dev.cuh); all zero for the plain
     * SwiGLU, whose arithmetic they then leave untouched: */
    const float *gu_b;               /* (n_experts, 2 * ffn) gate/up biases,
                                        HF-interleaved (gate j at 2j, up j
                                        at 2j + 1), or NULL */
    const float *down_b;             /* (n_experts, hidden) or NULL */
    float alpha, limit;              /* limit > 0: the clamped SwiGLU */
    const int32_t *ids;              /* (n * k) expert id of each selection
                                        (the router's ids); read only with
                                        gu_b / down_b */
};

/* Arguments of the decode matvec kernel (ops_cuda.cu). */
struct mv_args {
    const uint8_t *W[3];
    float *y[3];
    const float *bias[3];
    int rows[3], nseg;
    uint64_t rb;
    int cols, accumulate;
    const float *nw; /* rmsnorm weight (cols) or NULL */
    float eps;
    float *xn_out;   /* the normalised x (cols) or NULL */
};

/* One segment of an mv_args. */
struct mv_seg {
    const uint8_t *W;
    float *y;
    const float *bias;
    int rows;
};

/* The segment holding stacked row *r, *r made relative to it (past the
 * last segment: the last one, *r >= its rows). Constant indices only: a
 * dynamically indexed kernel parameter array would be copied to local
 * memory by every thread. */
__host__ __device__ inline mv_seg mv_seg_pick(const mv_args &a, int *r) {
    mv_seg s = {a.W[0], a.y[0], a.bias[0], a.rows[0]};
    if (a.nseg > 1 && *r >= s.rows) {
        *r -= s.rows;
        s = mv_seg{a.W[1], a.y[1], a.bias[1], a.rows[1]};
        if (a.nseg > 2 && *r >= s.rows) {
            *r -= s.rows;
            s = mv_seg{a.W[2], a.y[2], a.bias[2], a.rows[2]};
        }
    }
    return s;
}

/* Decode (one token) y_i (rows[i]) = w_i · xn (+ bias_i) for nseg <= 3
 * matrices of one dense dtype (BF16, F16, F32; 16-byte aligned rows) and
 * cols in ONE launch, xn = rmsnorm(x) * norm_w when norm_w is given (then
 * also written to x_norm_out when that is not NULL), else x. Returns
 * SL_ERR_UNSUPPORTED without a message when the formats do not qualify (the
 * caller then runs rmsnorm_cuda + matmul_cuda). */
int matvec_multi_cuda(cudaStream_t s, int dtype, int nseg, const void *const w[],
                      float *const y[], const float *const bias[], const int rows[], int cols,
                      const float *x, const float *norm_w, float eps, float *x_norm_out);
/* Decode router + routing in ONE launch: logits (ne) = w · xn (+ bias),
 * xn as matvec_multi_cuda (norm_w, x_norm_out), then the last block to
 * finish routes them exactly as route_cuda with n = 1 (same ids and
 * weights; items, sel, *n_items when table is given). done: one device
 * counter, 0 before the first launch; the kernel leaves it 0 (graphs
 * replay it), so launches sharing it must not overlap (one stream).
 * SL_ERR_UNSUPPORTED without a message when it does not apply (dtype or
 * alignment as matvec_multi_cuda, ne > 256, k > 32, or
 * SLUICE_CUDA_ROUTEFUSE=0): the caller then runs the two apart. */
int matvec_route_cuda(cudaStream_t s, int dtype, const void *w, const float *bias, int ne,
                      int cols, const float *x, const float *norm_w, float eps,
                      float *x_norm_out, float *logits, int k, int kind, int norm,
                      int32_t *ids, float *wts, uint8_t *const *table, struct part_off off,
                      struct moe_item *items, int32_t *sel, int32_t *n_items,
                      unsigned int *done);
/* Whether the decode kernels are launched with programmatic dependent
 * launch (ops_decode_cuda.cu): compiled for sm_90+ and SLUICE_CUDA_PDL not
 * 0. The first call queries the device: make it outside a stream capture. */
bool cuda_pdl_enabled(void);
/* Y (n, rows) = X (n, cols) · Wᵀ (+ bias) (+ Y when accumulate). */
int matmul_cuda(cudaStream_t s, int dtype, const void *w, const float *X, float *Y, int n,
                int rows, int cols, const float *bias, int accumulate);
/* out (n, cols) = rows tokens[t] of W, dequantized. */
int embed_cuda(cudaStream_t s, int dtype, const void *w, const int32_t *tokens, float *out,
               int n, int cols);
/* out (n, dim) = rmsnorm(x) * w, rows independent; out may equal x. */
int rmsnorm_cuda(cudaStream_t s, const float *x, const float *w, float *out, int n, int dim,
                 float eps);
/* For token t of n at position *d_pos + t: per-head rmsnorm of q (n, nh,
 * hd) and kb (n, nkv, hd) when qn/kn are given, NeoX rope with inv_freq
 * (hd / 2), q in place; k written to kcache row pos+t, vb copied to vcache
 * row pos+t (kv_dim = nkv * hd floats per row). */
int qk_rope_store_cuda(cudaStream_t s, float *q, const float *kb, const float *vb,
                       float *kcache, float *vcache, const int32_t *d_pos, int n, int nh,
                       int nkv, int hd, const float *qn, const float *kn, float eps,
                       const float *inv_freq);
/* qk_rope_store_cuda for every family (kb in place too): full_norm (olmoe)
 * normalises each token's whole q (nh * hd) and k (nkv * hd) projection
 * with qn (nh * hd) and kn (nkv * hd) first (two kernel_rmsnorm launches),
 * else qn/kn (hd) are per-head norms or NULL; rope cos and sin are
 * multiplied by mscale (YaRN's attention factor; 1 = plain NeoX, the same
 * arithmetic as ops_rope_neox_freqs). */
int qk_rope_store_ext_cuda(cudaStream_t s, float *q, float *kb, const float *vb, float *kcache,
                           float *vcache, const int32_t *d_pos, int n, int nh, int nkv, int hd,
                           const float *qn, const float *kn, int full_norm, float eps,
                           const float *inv_freq, float mscale);
/* Causal GQA attention: out (n, nh, hd); query t sees positions 0 ..
 * *d_pos + t. scores: (n, nh, n_ctx) scratch. */
int attention_cuda(cudaStream_t s, const float *q, const float *kcache, const float *vcache,
                   float *out, float *scores, const int32_t *d_pos, int n, int nh, int nkv,
                   int hd, int n_ctx, float scale);
/* attention_cuda with the extensions of ops_attention_ext (src/cpu/
 * ops_ext.h): window > 0 limits query position p to p - window + 1 .. p;
 * sinks (nh) or NULL join each head's softmax as a column without value.
 * scratch: scratch_floats floats (>= n * nh * n_ctx). Decode (n = 1) splits
 * the positions of each head into spans of ATT_SPAN over several blocks
 * (flash-decode: kernel_attention_split, then kernel_attention_combine;
 * span boundaries depend only on the position count, so results are
 * deterministic) when n_ctx > ATT_SPAN, the partials fit in scratch and
 * SLUICE_CUDA_ATT_SPLIT is not 0; the launch grid depends only on n_ctx and
 * window, so a captured decode graph stays valid at every position.
 * hd <= 256. */
int attention_ext_cuda(cudaStream_t s, const float *q, const float *kcache,
                       const float *vcache, float *out, float *scratch, size_t scratch_floats,
                       const int32_t *d_pos, int n, int nh, int nkv, int hd, int n_ctx,
                       float scale, int window, const float *sinks);
/* Router: logits (n, ne) → ids, w (n, k) (kind: enum sl_router_kind; norm:
 * renormalise). When table (ne device record bases) is given and n == 1,
 * also writes the k items (record part offsets off), sel = 0..k-1 and
 * *n_items = k: decode needs no separate plan. */
int route_cuda(cudaStream_t s, const float *logits, int n, int ne, int k, int kind, int norm,
               int32_t *ids, float *w, uint8_t *const *table, struct part_off off,
               struct moe_item *items, int32_t *sel, int32_t *n_items);
/* Groups the n * k selections by expert in id order (n > 1): items, sel,
 * *n_items, from table and part offsets as route_cuda. */
int moe_plan_cuda(cudaStream_t s, const int32_t *ids, int n, int k, int ne,
                  uint8_t *const *table, struct part_off off, struct moe_item *items,
                  int32_t *sel, int32_t *n_items);
/* H[sel] (·, ffn) = silu(gate · x) * (up · x) for every selection of every
 * item (items[0 .. *n_items), at most max_items; or the one item `one` when
 * items is NULL), x = X row sel / k. */
int expert_gate_up_cuda(cudaStream_t s, const struct ffn_shape *sh, const struct moe_item *items,
                        const int32_t *n_items, int max_items, struct moe_item one,
                        const int32_t *sel, int k, const float *X, float *H, int max_count);
/* out row = down · H[sel]: out[sel] (·, hidden) when !into_x, else
 * out[sel / k] += (dense MLP, k = 1). */
int expert_down_cuda(cudaStream_t s, const struct ffn_shape *sh, const struct moe_item *items,
                     const int32_t *n_items, int max_items, struct moe_item one,
                     const int32_t *sel, int k, const float *H, float *out, int into_x,
                     int max_count);
/* Decode (one token): x (hidden) += sum over its nk selections, in
 * expert-id order (ids[s]), of w[s] * down_s · H[s], where items[0, nk)
 * hold one selection each (sel[items[i].start] = s, down rows
 * items[i].down) in any order: the MoE down projection and the weighted
 * combine in one launch, bit-identical however the items are listed.
 * nk <= 64. */
int expert_down_combine_cuda(cudaStream_t s, const struct ffn_shape *sh,
                             const struct moe_item *items, int nk, const int32_t *sel,
                             const int32_t *ids, const float *w, const float *H, float *x);
/* x[t] += sum over t's k selections in expert-id order of w * Y[t*k+s]. */
int moe_combine_cuda(cudaStream_t s, float *x, const float *Y, const int32_t *ids,
                     const float *w, int n, int k, int hidden);

#endif /* SL_CUDA_OPS_CUDA_CUH */
