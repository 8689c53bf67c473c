/*
 * ops_avx512_q.h — a template, included twice by ops_avx512.c: the Q8/Q4
 * dot products and the row kernel, once with VNNI (vpdpbusd) and once
 * without (vpmaddubsw + vpmaddwd). Not a header of its own.
 *
 * The includer defines QK_SUFFIX (name suffix), QK_ATTR (function
 * attributes) and QK_VNNI (1 or 0).
 *
 * Both read quant.h's row layout directly: Q8 = [cols int8][cols/32 f16 d],
 * Q4 = [cols/2 nibble bytes][cols/32 f16 d][cols/32 f16 m], and the int8
 * activations of ops_quantize_act. Q8 goes by pairs of 32-blocks (one
 * 512-bit register), Q4 by quads (one 64-byte load of nibbles, against x in
 * the interleaved order of ops_kern.h, which saves the nibble shuffle);
 * block scales d_w * d_x are computed 16 blocks at a time and spread over
 * the lanes with one permute.
 */
#define QK_CAT2(a, b) a##b
#define QK_CAT(a, b) QK_CAT2(a, b)
#define QK_FN(name) QK_CAT(name, QK_SUFFIX)

/* 16 int32 sums of 4 u8 * s8 products each. */
QK_ATTR static inline __m512i QK_FN(dp_u8s8)(__m512i u, __m512i s) {
#if QK_VNNI
    return _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, s);
#else
    /* u <= 128, |s| <= 127: a pair sums to at most 32512, no saturation. */
    return _mm512_madd_epi16(_mm512_maddubs_epi16(u, s), _mm512_set1_epi16(1));
#endif
}

/* Q8 x int8: |w| against x with w's sign. */
QK_ATTR static inline __m512i QK_FN(dp_q8)(__m512i w, __m512i x) {
    __m512i sx = _mm512_mask_sub_epi8(x, _mm512_movepi8_mask(w),
                                      _mm512_setzero_si512(), x);
    return QK_FN(dp_u8s8)(_mm512_abs_epi8(w), sx);
}

QK_ATTR static float QK_FN(dot_q8)(const uint8_t *wrow, const int8_t *xq,
                                   const float *xd, int cols) {
    const int8_t *wq = (const int8_t *)wrow;
    const uint8_t *wd = wrow + cols; /* (nb) f16 */
    int nb = cols / 32;
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    for (int g = 0; g < nb; g += 16) {
        int cnt = nb - g < 16 ? nb - g : 16;
        __mmask16 m = (__mmask16)(cnt == 16 ? 0xffff : (1u << cnt) - 1);
        __m512 sc = _mm512_mul_ps(
            _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, wd + 2 * g)),
            _mm512_maskz_loadu_ps(m, xd + g));
        const int8_t *wp = wq + 32 * g, *xp = xq + 32 * g;
        int k = 0;
        for (; k + 4 <= cnt; k += 4) {
            _mm_prefetch((const char *)wp + 32 * k + OPS_PREFETCH, _MM_HINT_T0);
            _mm_prefetch((const char *)wp + 32 * k + OPS_PREFETCH + 64, _MM_HINT_T0);
            __m512i p0 = QK_FN(dp_q8)(_mm512_loadu_si512(wp + 32 * k),
                                      _mm512_loadu_si512(xp + 32 * k));
            __m512i p1 = QK_FN(dp_q8)(_mm512_loadu_si512(wp + 32 * k + 64),
                                      _mm512_loadu_si512(xp + 32 * k + 64));
            acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p0), pair_scale(sc, k), acc0);
            acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p1), pair_scale(sc, k + 2),
                                   acc1);
        }
        for (; k < cnt; k += 2) {
            /* The last pair may be a single block: masked loads stay inside
             * the row (its scale lane is 0). */
            __mmask64 lm = cnt - k >= 2 ? ~(__mmask64)0 : (__mmask64)0xffffffffu;
            __m512i p = QK_FN(dp_q8)(_mm512_maskz_loadu_epi8(lm, wp + 32 * k),
                                     _mm512_maskz_loadu_epi8(lm, xp + 32 * k));
            acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), pair_scale(sc, k), acc0);
        }
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

/* 16 int32: lanes 4j..4j+3 sum block j of the quad (x interleaved). */
QK_ATTR static inline __m512i QK_FN(dp_q4quad)(__m512i v, const int8_t *x) {
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    __m512i lo = _mm512_and_si512(v, m4);
    __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
    __m512i xl = _mm512_loadu_si512(x), xh = _mm512_loadu_si512(x + 64);
#if QK_VNNI
    return _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xl),
                               hi, xh);
#else
    return _mm512_add_epi32(QK_FN(dp_u8s8)(lo, xl), QK_FN(dp_u8s8)(hi, xh));
#endif
}

QK_ATTR static float QK_FN(dot_q4)(const uint8_t *wrow, const int8_t *xq,
                                   const float *xd, const float *xs,
                                   const float *xt, int cols) {
    int nb = cols / 32;
    const uint8_t *wd = wrow + cols / 2, *wm = wd + 2 * nb; /* (nb) f16 each */
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    __m512 accm = _mm512_setzero_ps(), acct = _mm512_setzero_ps();
    for (int g = 0; g < nb; g += 16) {
        int cnt = nb - g < 16 ? nb - g : 16;
        __mmask16 m = (__mmask16)(cnt == 16 ? 0xffff : (1u << cnt) - 1);
        /* sum_b m_b s_b + 8 d_b t_b: the "+ m" part of w = d q + m and
         * the centering correction (see ops_quantize_act). */
        __m512 dw = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, wd + 2 * g));
        accm = _mm512_fmadd_ps(
            _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, wm + 2 * g)),
            _mm512_maskz_loadu_ps(m, xs + g), accm);
        acct = _mm512_fmadd_ps(dw, _mm512_maskz_loadu_ps(m, xt + g), acct);
        __m512 sc = _mm512_mul_ps(dw, _mm512_maskz_loadu_ps(m, xd + g));
        /* Quads of blocks: one 64-byte load holds 4 blocks' nibbles; low
         * nibbles meet x's interleaved first halves, high the second. */
        const uint8_t *wp = wrow + 16 * g;
        const int8_t *xp = xq + 32 * g;
        int k = 0;
        for (; k + 8 <= cnt; k += 8) {
            _mm_prefetch((const char *)wp + 16 * k + OPS_PREFETCH, _MM_HINT_T0);
            _mm_prefetch((const char *)wp + 16 * k + OPS_PREFETCH + 64, _MM_HINT_T0);
            __m512i v0 = _mm512_loadu_si512(wp + 16 * k);
            __m512i v1 = _mm512_loadu_si512(wp + 16 * k + 64);
            __m512i p0 = QK_FN(dp_q4quad)(v0, xp + 32 * k);
            __m512i p1 = QK_FN(dp_q4quad)(v1, xp + 32 * k + 128);
            acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p0), quad_scale(sc, k), acc0);
            acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p1), quad_scale(sc, k + 4),
                                   acc1);
        }
        for (; k < cnt; k += 4) {
            int left = cnt - k < 4 ? cnt - k : 4;
            __mmask64 lm = left == 4 ? ~(__mmask64)0 : ((__mmask64)1 << (16 * left)) - 1;
            __m512i v = _mm512_maskz_loadu_epi8(lm, wp + 16 * k);
            __m512i p = QK_FN(dp_q4quad)(v, xp + 32 * k);
            acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), quad_scale(sc, k), acc0);
        }
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) +
           _mm512_reduce_add_ps(_mm512_fmadd_ps(acct, _mm512_set1_ps(8.0f), accm));
}

QK_ATTR static void QK_FN(rows)(int dtype, const uint8_t *w, uint64_t row_bytes,
                                const struct ops_act *x, float *Y, int n,
                                int rows, int r0, int r1, int cols) {
    int nb = cols / 32;
    for (int r = r0; r < r1; r++) {
        const uint8_t *wrow = w + (uint64_t)r * row_bytes;
        for (int i = 0; i < n; i++) {
            float *y = Y + (size_t)i * rows + r;
            switch (dtype) {
            case SL_DTYPE_Q8:
                *y = QK_FN(dot_q8)(wrow, x->q + (size_t)i * x->q_stride,
                                   x->d + (size_t)i * nb, cols);
                break;
            case SL_DTYPE_Q4:
                *y = QK_FN(dot_q4)(wrow, x->q + (size_t)i * x->q_stride,
                                   x->d + (size_t)i * nb, x->s + (size_t)i * nb,
                                   x->t + (size_t)i * nb, cols);
                break;
            default:
                *y = dot_row_float(dtype, wrow, x->f + (size_t)i * cols, cols);
            }
        }
    }
}

#undef QK_FN
#undef QK_CAT
#undef QK_CAT2
