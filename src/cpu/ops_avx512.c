/*
 * ops_avx512.c — AVX-512 (F+BW+VL+DQ) kernels for matvec / matmul and the
 * attention dot/axpy; built with -mavx512* by the Makefile and only called
 * when ops.c has checked the CPU. Two kernel sets: with VNNI (vpdpbusd,
 * compiled per function through a target attribute) and without.
 *
 * Float formats (F32/F16/BF16) widen 16 weights at a time to float and FMA
 * with float x (4 accumulators). Q8/Q4 use int8 activations (ops_act.q/d/s);
 * see ops_avx512_q.h. Tails use masked loads, so no load crosses the end of
 * a row.
 */
#include <immintrin.h>
#include <stdint.h>

#include "cpu/ops_kern.h"
#include "sluice.h"

/* Software prefetch distance in weight bytes. The hardware prefetchers
 * alone left the int8 kernels at ~55% of DRAM bandwidth (measured: Q4 2
 * threads 14-16 GB/s -> 17.5-19 GB/s with 4 KiB); rows are streamed
 * sequentially, so running past a row's end prefetches the next row. */
#define OPS_PREFETCH 4096

static inline __mmask16 tail_mask16(int left) {
    return (__mmask16)(left >= 16 ? 0xffff : (1u << left) - 1);
}

static inline __m512 ld_f16(const uint8_t *p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const void *)p));
}
static inline __m512 ld_f16_m(const uint8_t *p, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}
static inline __m512 ld_bf16(const uint8_t *p) {
    __m512i u = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const void *)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(u, 16));
}
static inline __m512 ld_bf16_m(const uint8_t *p, __mmask16 m) {
    __m512i u = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(u, 16));
}
static inline __m512 ld_f32(const uint8_t *p) { return _mm512_loadu_ps(p); }
static inline __m512 ld_f32_m(const uint8_t *p, __mmask16 m) {
    return _mm512_maskz_loadu_ps(m, p);
}

/* sum_c w[c] x[c] for weights of ESIZE bytes decoded by LD / LDM. */
#define FLOAT_DOT(LD, LDM, ESIZE)                                             \
    do {                                                                      \
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;          \
        int c = 0;                                                            \
        for (; c + 64 <= cols; c += 64) {                                     \
            for (int pf = 0; pf < 64 * ESIZE; pf += 64)                       \
                _mm_prefetch((const char *)w + c * ESIZE + OPS_PREFETCH + pf, \
                             _MM_HINT_T0);                                    \
            a0 = _mm512_fmadd_ps(LD(w + (c + 0) * ESIZE), _mm512_loadu_ps(x + c), a0);       \
            a1 = _mm512_fmadd_ps(LD(w + (c + 16) * ESIZE), _mm512_loadu_ps(x + c + 16), a1); \
            a2 = _mm512_fmadd_ps(LD(w + (c + 32) * ESIZE), _mm512_loadu_ps(x + c + 32), a2); \
            a3 = _mm512_fmadd_ps(LD(w + (c + 48) * ESIZE), _mm512_loadu_ps(x + c + 48), a3); \
        }                                                                     \
        for (; c < cols; c += 16) {                                           \
            __mmask16 m = tail_mask16(cols - c);                              \
            a0 = _mm512_fmadd_ps(LDM(w + c * ESIZE, m),                       \
                                 _mm512_maskz_loadu_ps(m, x + c), a0);        \
        }                                                                     \
        return _mm512_reduce_add_ps(                                          \
            _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));     \
    } while (0)

static float dot_f32_row(const uint8_t *w, const float *x, int cols) {
    FLOAT_DOT(ld_f32, ld_f32_m, 4);
}
static float dot_f16_row(const uint8_t *w, const float *x, int cols) {
    FLOAT_DOT(ld_f16, ld_f16_m, 2);
}
static float dot_bf16_row(const uint8_t *w, const float *x, int cols) {
    FLOAT_DOT(ld_bf16, ld_bf16_m, 2);
}

static float dot_row_float(int dtype, const uint8_t *w, const float *x,
                           int cols) {
    switch (dtype) {
    case SL_DTYPE_F32: return dot_f32_row(w, x, cols);
    case SL_DTYPE_F16: return dot_f16_row(w, x, cols);
    case SL_DTYPE_BF16: return dot_bf16_row(w, x, cols);
    }
    return 0; /* Q8/Q4 never come here (ops.c prepares int8 activations) */
}

static float dot_f32(const float *a, const float *b, int n) {
    return dot_f32_row((const uint8_t *)a, b, n);
}

static void axpy(float *y, float a, const float *x, int n) {
    __m512 av = _mm512_set1_ps(a);
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(av, _mm512_loadu_ps(x + i),
                                                _mm512_loadu_ps(y + i)));
    if (i < n) {
        __mmask16 m = tail_mask16(n - i);
        _mm512_mask_storeu_ps(y + i, m,
                              _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(m, x + i),
                                              _mm512_maskz_loadu_ps(m, y + i)));
    }
}

/* Scale vector of pair k of a 16-block group: lanes 0-7 sc[k], 8-15 sc[k+1]. */
static inline __m512 pair_scale(__m512 sc, int k) {
    const __m512i base = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0,
                                          0, 0, 0);
    return _mm512_permutexvar_ps(_mm512_add_epi32(base, _mm512_set1_epi32(k)), sc);
}

/* Scale vector of quad k of a 16-block group: lanes 4j..4j+3 = sc[k+j]. */
static inline __m512 quad_scale(__m512 sc, int k) {
    const __m512i base = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0,
                                          0, 0, 0);
    return _mm512_permutexvar_ps(_mm512_add_epi32(base, _mm512_set1_epi32(k)), sc);
}

#define QK_SUFFIX _plain
#define QK_ATTR
#define QK_VNNI 0
#include "cpu/ops_avx512_q.h"
#undef QK_SUFFIX
#undef QK_ATTR
#undef QK_VNNI

#define QK_SUFFIX _vnni
#define QK_ATTR __attribute__((target("avx512vnni")))
#define QK_VNNI 1
#include "cpu/ops_avx512_q.h"
#undef QK_SUFFIX
#undef QK_ATTR
#undef QK_VNNI

const struct ops_kernels ops_kernels_avx512 = {
    .name = "avx512",
    .rows = rows_plain,
    .int8_act = 1,
    .q4_interleave = 1,
    .dot = dot_f32,
    .axpy = axpy,
};

const struct ops_kernels ops_kernels_avx512_vnni = {
    .name = "avx512-vnni",
    .rows = rows_vnni,
    .int8_act = 1,
    .q4_interleave = 1,
    .dot = dot_f32,
    .axpy = axpy,
};
