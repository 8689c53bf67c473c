/*
 * ops_avx2.c — AVX2 + FMA + F16C kernels for matvec / matmul and the
 * attention dot/axpy; built with -mavx2 -mfma -mf16c by the Makefile and
 * only called when ops.c has checked the CPU.
 *
 * Float formats widen 8 weights at a time (4 accumulators); Q8/Q4 take one
 * 32-block per 256-bit register with int8 activations and vpmaddubsw +
 * vpmaddwd (u8 x s8 -> s16 pairs -> s32). Tails (cols % 8) are scalar, so
 * no load crosses the end of a row.
 */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "cpu/ops_kern.h"
#include "sluice.h"
#include "util.h"

static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline uint16_t ld_u16(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

static inline __m256 ld_f32(const uint8_t *p) { return _mm256_loadu_ps((const float *)p); }
static inline __m256 ld_f16(const uint8_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const void *)p));
}
static inline __m256 ld_bf16(const uint8_t *p) {
    __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128((const void *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
}
static inline float sc_f32(const uint8_t *p) {
    float f;
    memcpy(&f, p, 4);
    return f;
}
static inline float sc_f16(const uint8_t *p) { return _cvtsh_ss(ld_u16(p)); }
static inline float sc_bf16(const uint8_t *p) { return sl_bf16_to_f32(ld_u16(p)); }

#define FLOAT_DOT(LD, SC, ESIZE)                                              \
    do {                                                                      \
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;          \
        int c = 0;                                                            \
        for (; c + 32 <= cols; c += 32) {                                     \
            a0 = _mm256_fmadd_ps(LD(w + (c + 0) * ESIZE), _mm256_loadu_ps(x + c), a0);      \
            a1 = _mm256_fmadd_ps(LD(w + (c + 8) * ESIZE), _mm256_loadu_ps(x + c + 8), a1);  \
            a2 = _mm256_fmadd_ps(LD(w + (c + 16) * ESIZE), _mm256_loadu_ps(x + c + 16), a2); \
            a3 = _mm256_fmadd_ps(LD(w + (c + 24) * ESIZE), _mm256_loadu_ps(x + c + 24), a3); \
        }                                                                     \
        for (; c + 8 <= cols; c += 8)                                         \
            a0 = _mm256_fmadd_ps(LD(w + c * ESIZE), _mm256_loadu_ps(x + c), a0); \
        float t = hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3))); \
        for (; c < cols; c++) t += SC(w + c * ESIZE) * x[c];                 \
        return t;                                                             \
    } while (0)

static float dot_f32_row(const uint8_t *w, const float *x, int cols) {
    FLOAT_DOT(ld_f32, sc_f32, 4);
}
static float dot_f16_row(const uint8_t *w, const float *x, int cols) {
    FLOAT_DOT(ld_f16, sc_f16, 2);
}
static float dot_bf16_row(const uint8_t *w, const float *x, int cols) {
    FLOAT_DOT(ld_bf16, sc_bf16, 2);
}

static inline __m256i dp_u8s8(__m256i u, __m256i s) {
    /* u <= 128, |s| <= 127: a pair sums to at most 32512, no saturation. */
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

static float dot_q8(const uint8_t *wrow, const int8_t *xq, const float *xd,
                    int cols) {
    const uint8_t *wd = wrow + cols; /* (nb) f16 */
    int nb = cols / 32;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0;
    int b = 0;
    for (; b < nb; b++) {
        __m256i w = _mm256_loadu_si256((const void *)(wrow + 32 * b));
        __m256i x = _mm256_loadu_si256((const void *)(xq + 32 * b));
        /* |w| (unsigned) against x with w's sign. */
        __m256i p = dp_u8s8(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
        __m256 s = _mm256_set1_ps(sc_f16(wd + 2 * b) * xd[b]);
        if (b & 1) acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), s, acc1);
        else acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), s, acc0);
    }
    return hsum256(_mm256_add_ps(acc0, acc1));
}

static float dot_q4(const uint8_t *wrow, const int8_t *xq, const float *xd,
                    const float *xs, const float *xt, int cols) {
    int nb = cols / 32;
    const uint8_t *wd = wrow + cols / 2, *wm = wd + 2 * nb;
    const __m128i m4 = _mm_set1_epi8(0x0f);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0;
    float accm = 0;
    for (int b = 0; b < nb; b++) {
        __m128i v = _mm_loadu_si128((const void *)(wrow + 16 * b));
        __m128i lo = _mm_and_si128(v, m4);
        __m128i hi = _mm_and_si128(_mm_srli_epi16(v, 4), m4);
        __m256i z = _mm256_set_m128i(hi, lo); /* q0..15 | q16..31 */
        __m256i x = _mm256_loadu_si256((const void *)(xq + 32 * b));
        __m256i p = dp_u8s8(z, x);
        __m256 s = _mm256_set1_ps(sc_f16(wd + 2 * b) * xd[b]);
        if (b & 1) acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), s, acc1);
        else acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), s, acc0);
        /* + m sum(x) + 8 d t: see ops_quantize_act. */
        accm += sc_f16(wm + 2 * b) * xs[b] + 8.0f * sc_f16(wd + 2 * b) * xt[b];
    }
    return hsum256(_mm256_add_ps(acc0, acc1)) + accm;
}

static void rows_avx2(int dtype, const uint8_t *w, uint64_t row_bytes,
                      const struct ops_act *x, float *Y, int n, int rows,
                      int r0, int r1, int cols) {
    int nb = cols / 32;
    for (int r = r0; r < r1; r++) {
        const uint8_t *wrow = w + (uint64_t)r * row_bytes;
        for (int i = 0; i < n; i++) {
            float *y = Y + (size_t)i * rows + r;
            const float *xf = x->f + (size_t)i * cols;
            switch (dtype) {
            case SL_DTYPE_F32: *y = dot_f32_row(wrow, xf, cols); break;
            case SL_DTYPE_F16: *y = dot_f16_row(wrow, xf, cols); break;
            case SL_DTYPE_BF16: *y = dot_bf16_row(wrow, xf, cols); break;
            case SL_DTYPE_Q8:
                *y = dot_q8(wrow, x->q + (size_t)i * x->q_stride, x->d + (size_t)i * nb,
                            cols);
                break;
            case SL_DTYPE_Q4:
                *y = dot_q4(wrow, x->q + (size_t)i * x->q_stride, x->d + (size_t)i * nb,
                            x->s + (size_t)i * nb, x->t + (size_t)i * nb, cols);
                break;
            }
        }
    }
}

static float dot_f32(const float *a, const float *b, int n) {
    return dot_f32_row((const uint8_t *)a, b, n);
}

static void axpy(float *y, float a, const float *x, int n) {
    __m256 av = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i),
                                                _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * x[i];
}

const struct ops_kernels ops_kernels_avx2 = {
    .name = "avx2",
    .rows = rows_avx2,
    .int8_act = 1,
    .dot = dot_f32,
    .axpy = axpy,
};
