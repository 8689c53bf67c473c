/*
 * ops_kern.h — the seam between the dispatcher (ops.c) and the per-ISA
 * kernel files (ops_ref.c, ops_avx2.c, ops_avx512.c). Internal to src/cpu.
 *
 * A kernel set computes a range of weight rows for a batch of inputs; the
 * dispatcher prepares the activations (float, or int8 blocks for Q8/Q4),
 * splits rows across threads and calls it. Kernels never allocate and read
 * weights exactly in the layout of quant.h.
 */
#ifndef SL_CPU_OPS_KERN_H
#define SL_CPU_OPS_KERN_H

#include <stdint.h>

struct sl_pool;

/* Activations for one batch of n inputs of cols elements. */
struct ops_act {
    const float *f;  /* (n, cols) float inputs: F32/F16/BF16, and every
                        dtype on the scalar path */
    const int8_t *q; /* (n, q_stride) int8 inputs for Q8/Q4 on SIMD paths:
                        x ~= d[block] * q; in element order, or for Q4 on
                        kernels with q4_interleave: per group of 4 blocks
                        (128 bytes) first q0..15 of the 4 blocks, then
                        q16..31 of the 4 blocks, zero-padded to a whole
                        group */
    int q_stride;    /* bytes between inputs in q */
    const float *d;  /* (n, cols/32) block scales of q */
    const float *s;  /* (n, cols/32) exact float sums of x over each block
                        (the Q4 "+ m" term) */
    const float *t;  /* (n, cols/32) sums of the rounding errors x - d q
                        over each block (the Q4 centering correction) */
};

/* Y[i * rows + r] = W[r] . X[i] for r0 <= r < r1, i < n.
 * w points at row 0; row r starts at w + r * row_bytes. */
typedef void (*ops_rows_fn)(int dtype, const uint8_t *w, uint64_t row_bytes,
                            const struct ops_act *x, float *Y, int n,
                            int rows, int r0, int r1, int cols);

struct ops_kernels {
    const char *name;
    ops_rows_fn rows;
    int int8_act;  /* Q8/Q4 want ops_act.q/d/s/t (else ops_act.f) */
    int q4_interleave; /* Q4 wants ops_act.q in the 4-block interleaved
                          order (one 64-byte nibble load = 4 blocks) */
    float (*dot)(const float *a, const float *b, int n);
    void (*axpy)(float *y, float a, const float *x, int n); /* y += a x */
};

/* ops_ref.c: the specification (double accumulation). */
double ops_ref_dot_row(int dtype, const uint8_t *wrow, const float *x,
                       int cols);
void ops_ref_rows(int dtype, const uint8_t *w, uint64_t row_bytes,
                  const struct ops_act *x, float *Y, int n, int rows, int r0,
                  int r1, int cols);
float ops_ref_dot_f32(const float *a, const float *b, int n);
void ops_ref_axpy(float *y, float a, const float *x, int n);

/* Argument checks shared by the twins (set the message, return a status). */
int ops_check_mat(const char *op, int dtype, int n, int rows, int cols);
int ops_check_attention(int n_heads, int n_kv_heads, int head_dim, int n_pos,
                        int64_t kv_stride, const float *scratch);

/* ops_avx2.c / ops_avx512.c */
extern const struct ops_kernels ops_kernels_avx2;
extern const struct ops_kernels ops_kernels_avx512;
extern const struct ops_kernels ops_kernels_avx512_vnni;

/* The kernel set for isa (NULL if this CPU cannot run it); allow_vnni = 0
 * picks the AVX-512 kernels without VNNI (tests cover both). */
const struct ops_kernels *ops_kernels_get(int isa, int allow_vnni);

/* ops_matmul with an explicit kernel set. */
int ops_matmul_kern(const struct ops_kernels *k, struct sl_pool *pool,
                    int dtype, const void *w, const float *X, float *Y, int n,
                    int rows, int cols);

/* Quantizes one row of cols floats (cols % 32 == 0) into int8 blocks:
 * d = max|x| / 127, q = round(x * 127 / max|x|) (0 for an all-zero block),
 * s = sum x, t = sum (x - d q), per block.
 *
 * Why t: a Q4 weight is d_w q + m with q in 0..15, far from zero mean, so
 * the int8 rounding error of x, multiplied by d_w q, would be amplified. The
 * kernels instead compute sum d_w (q - 8) x' + (m + 8 d_w) sum x, where only
 * the centered part sees the rounded x'; expanded, that is
 *   d_w d_x (q . qx) + m s + 8 d_w t,
 * which cuts the error ~4x (nmse) at the cost of one FMA per 16 blocks. */
void ops_quantize_act(const float *x, int8_t *q, float *d, float *s, float *t,
                      int cols);

#endif /* SL_CPU_OPS_KERN_H */
