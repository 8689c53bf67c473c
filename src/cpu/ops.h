/*
 * ops.h — the CPU backend's numerical operations: matvec / matmul over the
 * stored weight formats of quant.h, RMSNorm, RoPE, attention, softmax,
 * top-k, SwiGLU and vector helpers.
 *
 * Two twins exist for the ops that matter for speed:
 *   ops_*_ref  the scalar C specification (ops_ref.c): plain loops, double
 *              accumulators, single-threaded; every other path is tested
 *              against it (tests/test_ops.c) within the tolerance stated on
 *              the optimized function.
 *   ops_*      the optimized path (ops.c dispatch, ops_avx2.c,
 *              ops_avx512.c), split across a thread pool; the instruction set
 *              is chosen at run time (ops_isa()).
 * The cheap elementwise ops (rmsnorm, rope, softmax, swiglu, topk, add) have
 * one implementation, which is both the specification and what runs.
 *
 * Not here: the model forward pass, MoE routing policy, memory ownership of
 * weights. No op allocates, except that ops_matvec / ops_matmul grow the
 * pool's scratch buffer the first time a larger activation is seen.
 *
 * Conventions: all activations are float32, dimensions are `int` (byte
 * offsets are computed in 64 bits). A weight matrix W [rows, cols] in dtype
 * is stored row by row with a stride of quant_row_bytes(dtype, cols) bytes
 * (quant.h); Q8 and Q4 need cols % 32 == 0. Row r of W is "W[r]".
 * Functions that return int return SL_OK or an sl_status with a message set
 * (sl_errmsg); void functions have no failure modes for inputs that satisfy
 * their stated shapes.
 */
#ifndef SL_CPU_OPS_H
#define SL_CPU_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "cpu/pool.h"

/* ---- instruction-set dispatch --------------------------------------- */

enum sl_isa {
    SL_ISA_SCALAR = 0, /* the reference kernels, threaded */
    SL_ISA_AVX2 = 1,   /* AVX2 + FMA + F16C */
    SL_ISA_AVX512 = 2, /* AVX-512 F + BW + VL (+ VNNI when present) */
    SL_ISA_COUNT
};

/* The path ops_matvec / ops_matmul / ops_attention use: the best one this
 * CPU supports, unless the environment variable SLUICE_ISA=scalar|avx2|avx512
 * asks for another (a request the CPU cannot run falls back to the best
 * available, with a warning through sl_log). Decided once per process. */
int ops_isa(void);
/* Whether this CPU can run isa. */
int ops_isa_available(int isa);
/* "scalar", "avx2", "avx512" ("avx512-vnni" when the VNNI kernels run). */
const char *ops_isa_name(int isa);

/* ---- matrix-vector and matrix-matrix products ----------------------- */

/* y[r] = sum_c W[r, c] * x[c] for r < rows. The reference: each weight is
 * decoded exactly as quant_row_to_f32 does and products are summed in
 * double, then rounded to float.
 * w: rows * quant_row_bytes(dtype, cols) bytes; x: (cols); y: (rows).
 * Returns SL_ERR_ARG for an unknown dtype, rows/cols < 1, or cols not a
 * multiple of 32 for Q8/Q4. */
int ops_matvec_ref(int dtype, const void *w, const float *x, float *y,
                   int rows, int cols);

/* The optimized ops_matvec_ref, rows split across pool's threads (pool must
 * not be NULL; use a 1-thread pool for no threads). Tolerance against the
 * reference, as normalised mean squared error over y:
 *   F32, F16, BF16: float accumulation, nmse <= 1e-10.
 *   Q8, Q4 on AVX2/AVX-512: x is quantized per block of 32 to int8
 *     (d = max|x| / 127, round to nearest) and dotted with integer
 *     instructions (VNNI vpdpbusd when present, else maddubs), the Q4 offset
 *     term and a centering correction use exact float block sums (see
 *     ops_quantize_act in ops_kern.h): nmse <= 2e-4, typically 2e-5..6e-5
 *     on Gaussian data (the int8 rounding of x; llama.cpp's q8_1 scheme).
 *   Scalar ISA: the reference kernels, identical results.
 * Results do not depend on the number of threads. y must not alias x or w.
 * Errors: as ops_matvec_ref, SL_ERR_ARG for a NULL pool, SL_ERR_NOMEM if
 * the pool's scratch cannot grow. */
int ops_matvec(struct sl_pool *pool, int dtype, const void *w, const float *x,
               float *y, int rows, int cols);
/* ops_matvec on a given isa (tests; SL_ERR_UNSUPPORTED if unavailable). */
int ops_matvec_isa(int isa, struct sl_pool *pool, int dtype, const void *w,
                   const float *x, float *y, int rows, int cols);

/* Batched product: Y[i, r] = sum_c W[r, c] * X[i, c] for i < n, r < rows,
 * i.e. Y = X · W^T. X: (n, cols) row-major; Y: (n, rows) row-major.
 * The reference is ops_matvec_ref on each X row. */
int ops_matmul_ref(int dtype, const void *w, const float *X, float *Y, int n,
                   int rows, int cols);
/* The optimized one: threads split W's rows; each weight row is decoded
 * (or loaded) once and used for all n inputs while it is in L1, so the
 * weights cross the memory bus once per batch. Same tolerances as
 * ops_matvec. Scratch: n * (cols + cols / 4) bytes of the pool for Q8/Q4. */
int ops_matmul(struct sl_pool *pool, int dtype, const void *w, const float *X,
               float *Y, int n, int rows, int cols);
int ops_matmul_isa(int isa, struct sl_pool *pool, int dtype, const void *w,
                   const float *X, float *Y, int n, int rows, int cols);

/* Dequantizes row `row` of W [*, cols] into out (cols floats): an embedding
 * lookup. Same decoding as quant_row_to_f32. */
void ops_embed_row(int dtype, const void *w, int64_t row, int cols,
                   float *out);

/* ---- normalisation, position encoding -------------------------------- */

/* out[i] = x[i] * (1 / sqrt(mean(x^2) + eps)) * w[i], like HF's RMSNorm in
 * float32 (mean of squares accumulated in double). x, w, out: (n); out may
 * equal x. */
void ops_rmsnorm(float *out, const float *x, const float *w, int n, float eps);

/* Per-head RMSNorm in place (Qwen3 q_norm / k_norm): x is (n_heads,
 * head_dim); every head is normalised on its own with the one weight vector
 * w (head_dim). */
void ops_rmsnorm_heads(float *x, const float *w, int n_heads, int head_dim,
                       float eps);

/* Rotary embedding, HF "rotate_half" (NeoX) layout, in place on x (n_heads,
 * head_dim) at position pos: for i < rot_dim/2, with h = rot_dim/2,
 *   inv_freq[i] = 1 / theta^((2i) / rot_dim), f = pos * inv_freq[i],
 *   x'[i]   = x[i] cos f - x[i+h] sin f,   x'[i+h] = x[i+h] cos f + x[i] sin f;
 * dims rot_dim..head_dim-1 untouched. Angles follow HF's float32 arithmetic
 * (float32 exponent, powf, float32 inv_freq and product; cos/sin of that
 * float rounded to float) to agree with transformers closely.
 * Returns SL_ERR_ARG unless 2 <= rot_dim <= head_dim, rot_dim even,
 * rot_dim <= 4096, pos >= 0. */
int ops_rope_neox(float *x, int n_heads, int head_dim, int rot_dim, int64_t pos,
                  float theta);

/* ---- attention ------------------------------------------------------- */

/* One query position against n_pos cached positions with grouped-query
 * attention. Head h uses KV head h / (n_heads / n_kv_heads).
 *   out: (n_heads, head_dim), must not alias q, k, v or scratch
 *   q:   (n_heads, head_dim)
 *   k,v: the KV cache: position p, KV head j is the head_dim floats at
 *        k + p * kv_stride + j * head_dim (kv_stride >= n_kv_heads * head_dim)
 *   scratch: (n_heads, n_pos) floats (the attention probabilities are left
 *        there, row h for head h)
 * out_h = sum_p softmax_p(scale * q_h . k_{p,j}) v_{p,j}; the softmax
 * subtracts the maximum. The reference sums in double.
 * Returns SL_ERR_ARG if n_heads is not a multiple of n_kv_heads, a size is
 * < 1, kv_stride is too small, or scratch is NULL. The optimized one splits
 * heads across the pool's threads and accumulates in float: nmse <= 1e-10
 * vs the reference. */
int ops_attention_ref(float *out, const float *q, const float *k,
                      const float *v, int n_heads, int n_kv_heads,
                      int head_dim, int n_pos, int64_t kv_stride, float scale,
                      float *scratch);
int ops_attention(struct sl_pool *pool, float *out, const float *q,
                  const float *k, const float *v, int n_heads, int n_kv_heads,
                  int head_dim, int n_pos, int64_t kv_stride, float scale,
                  float *scratch);
int ops_attention_isa(int isa, struct sl_pool *pool, float *out,
                      const float *q, const float *k, const float *v,
                      int n_heads, int n_kv_heads, int head_dim, int n_pos,
                      int64_t kv_stride, float scale, float *scratch);

/* Causal batch (prompt chunks): n_q query positions p0 .. p0 + n_q - 1 whose
 * keys and values are already in the cache; query i attends to positions
 * 0 .. p0 + i. Equal to ops_attention on query i with n_pos = p0 + i + 1.
 *   out, q: (n_q, n_heads, head_dim); k, v: as ops_attention, holding at
 *   least p0 + n_q positions; scratch: (n_heads, p0 + n_q) floats.
 * Errors as ops_attention, and SL_ERR_ARG for n_q < 1 or p0 < 0. */
int ops_attention_causal(struct sl_pool *pool, float *out, const float *q,
                         const float *k, const float *v, int n_q, int p0,
                         int n_heads, int n_kv_heads, int head_dim,
                         int64_t kv_stride, float scale, float *scratch);

/* ---- small vector ops ------------------------------------------------ */

/* In-place softmax over x (n >= 1): max subtracted, sum in double. */
void ops_softmax(float *x, int n);

/* The k largest values of x (n), ordered by value descending; equal values
 * go to the lower index first; NaN ranks below every number. ids, vals:
 * (k). Returns SL_ERR_ARG unless 1 <= k <= n. */
int ops_topk(const float *x, int n, int k, int32_t *ids, float *vals);

/* out[i] = silu(gate[i]) * up[i], silu(g) = g / (1 + exp(-g)). out may
 * equal gate or up. */
void ops_swiglu(float *out, const float *gate, const float *up, int n);

/* y[i] += x[i] (the residual add). */
void ops_add(float *y, const float *x, int n);

/* y[i] += a * x[i] (weighted sum of expert outputs). */
void ops_scale_add(float *y, const float *x, float a, int n);

#endif /* SL_CPU_OPS_H */
