/*
 * quant.c — the scalar reference for the stored weight formats (see
 * quant.h for the byte layout of each row).
 *
 * This file is the specification that SIMD and CUDA kernels must match; it
 * favours clarity over speed and is not on the hot path (the converter calls
 * it once per weight; the backends have their own dequantizing matvecs).
 *
 * Invariants:
 *   - A row is self-contained: quantizing or reading row r touches only the
 *     quant_row_bytes(dtype, cols) bytes of row r.
 *   - Scales (d) and minimums (m) are stored as IEEE half, little-endian.
 *     Quantization divides by the ROUNDED (stored) values, so the
 *     dequantization error is measured against what the kernels will see:
 *     Q8 |w - d*q| <= d/2, Q4 |w - (d*q + m)| <= d/2 + (rounding of m).
 *   - Output is a pure function of the input (deterministic, no state).
 *   - Non-finite input never causes undefined behaviour: NaN quantizes to
 *     q = 0 and +-Inf saturates; scales that overflow half saturate to the
 *     largest finite half (65504). Converters reject non-finite tensors
 *     first (quant_row_is_finite), so these encodings never reach a model.
 */
#include "quant.h"

#include <math.h>
#include <string.h>

#include "util.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "sluice files are little-endian; a big-endian host needs byte "
               "swapping in quant.c and format.c");

#define HALF_MAX_FINITE 0x7bffu

static void put_u16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)(v & 0xff);
    p[1] = (uint8_t)(v >> 8);
}

static uint16_t get_u16(const uint8_t *p) {
    return (uint16_t)(p[0] | (p[1] << 8));
}

uint64_t quant_row_bytes(int dtype, uint64_t cols) {
    uint64_t n;
    switch (dtype) {
    case SL_DTYPE_F32:
        return sl_mul_ok(cols, 4, &n) ? n : 0;
    case SL_DTYPE_F16:
    case SL_DTYPE_BF16:
        return sl_mul_ok(cols, 2, &n) ? n : 0;
    case SL_DTYPE_Q8: /* cols int8 + (cols/32) f16 scales */
        if (cols % SL_QBLOCK) return 0;
        return sl_add_ok(cols, cols / SL_QBLOCK * 2, &n) ? n : 0;
    case SL_DTYPE_Q4: /* cols/2 nibble bytes + (cols/32) f16 d + f16 m */
        if (cols % SL_QBLOCK) return 0;
        return cols / 2 + cols / SL_QBLOCK * 4; /* < cols: cannot overflow */
    }
    return 0;
}

int quant_dtype_fits(int dtype, uint64_t cols) {
    return cols > 0 && quant_row_bytes(dtype, cols) != 0;
}

int quant_row_is_finite(const float *src, uint64_t n) {
    for (uint64_t i = 0; i < n; i++)
        if (!isfinite(src[i])) return 0;
    return 1;
}

/* f32 -> half for a scale or minimum: round to nearest even, but overflow
 * saturates to +-65504 instead of becoming Inf (an Inf scale would turn
 * every dequantized weight of the block into NaN). */
static uint16_t half_saturating(float x) {
    uint16_t h = sl_f32_to_f16(x);
    if ((h & 0x7fffu) >= 0x7c00u) h = (uint16_t)((h & 0x8000u) | HALF_MAX_FINITE);
    return h;
}

/* round(x) clamped to [lo, hi]; NaN -> 0 (lo <= 0 <= hi for every caller).
 * Comparisons come first so that the float -> int conversion is always in
 * range (out-of-range conversion is undefined behaviour in C). */
static int round_clamp(float x, int lo, int hi) {
    if (x != x) return 0;
    if (x <= (float)lo) return lo;
    if (x >= (float)hi) return hi;
    return (int)roundf(x);
}

/* One Q8 block of 32: writes 32 int8 to q and returns the half scale. */
static uint16_t q8_block(const float *w, int8_t *q) {
    float amax = 0.0f;
    for (int i = 0; i < SL_QBLOCK; i++) {
        float a = fabsf(w[i]);
        if (a > amax) amax = a; /* NaN compares false: ignored */
    }
    uint16_t dh = half_saturating(amax / 127.0f);
    float d = sl_f16_to_f32(dh);
    for (int i = 0; i < SL_QBLOCK; i++)
        q[i] = (int8_t)(d == 0.0f ? 0 : round_clamp(w[i] / d, -127, 127));
    return dh;
}

/* One Q4 block of 32: writes 16 nibble bytes and the half d and m. */
static void q4_block(const float *w, uint8_t *nib, uint16_t *dh_out,
                     uint16_t *mh_out) {
    float lo = INFINITY, hi = -INFINITY;
    for (int i = 0; i < SL_QBLOCK; i++) {
        if (w[i] < lo) lo = w[i];
        if (w[i] > hi) hi = w[i];
    }
    if (lo > hi) lo = hi = 0.0f; /* every element NaN */
    uint16_t mh = half_saturating(lo);
    uint16_t dh = half_saturating((hi - lo) / 15.0f);
    float m = sl_f16_to_f32(mh), d = sl_f16_to_f32(dh);
    uint8_t q[SL_QBLOCK];
    for (int i = 0; i < SL_QBLOCK; i++)
        q[i] = (uint8_t)(d == 0.0f ? 0 : round_clamp((w[i] - m) / d, 0, 15));
    for (int j = 0; j < 16; j++) nib[j] = (uint8_t)(q[j] | (q[j + 16] << 4));
    *dh_out = dh;
    *mh_out = mh;
}

void quant_row_from_f32(int dtype, const float *src, void *dst, uint64_t cols) {
    SL_ASSERT(quant_dtype_fits(dtype, cols));
    uint8_t *o = dst;
    uint64_t nb = cols / SL_QBLOCK;
    switch (dtype) {
    case SL_DTYPE_F32:
        memcpy(o, src, cols * 4);
        break;
    case SL_DTYPE_F16:
        for (uint64_t i = 0; i < cols; i++) put_u16(o + 2 * i, sl_f32_to_f16(src[i]));
        break;
    case SL_DTYPE_BF16:
        for (uint64_t i = 0; i < cols; i++) put_u16(o + 2 * i, sl_f32_to_bf16(src[i]));
        break;
    case SL_DTYPE_Q8: {
        uint8_t *scales = o + cols; /* (nb) f16 after the (cols) int8 */
        for (uint64_t b = 0; b < nb; b++)
            put_u16(scales + 2 * b, q8_block(src + 32 * b, (int8_t *)o + 32 * b));
        break;
    }
    case SL_DTYPE_Q4: {
        uint8_t *ds = o + cols / 2; /* (nb) f16 d after the (cols/2) bytes */
        uint8_t *ms = ds + 2 * nb;  /* (nb) f16 m */
        for (uint64_t b = 0; b < nb; b++) {
            uint16_t dh, mh;
            q4_block(src + 32 * b, o + 16 * b, &dh, &mh);
            put_u16(ds + 2 * b, dh);
            put_u16(ms + 2 * b, mh);
        }
        break;
    }
    }
}

void quant_row_to_f32(int dtype, const void *src, float *dst, uint64_t cols) {
    SL_ASSERT(quant_dtype_fits(dtype, cols));
    const uint8_t *s = src;
    uint64_t nb = cols / SL_QBLOCK;
    switch (dtype) {
    case SL_DTYPE_F32:
        memcpy(dst, s, cols * 4);
        break;
    case SL_DTYPE_F16:
        for (uint64_t i = 0; i < cols; i++) dst[i] = sl_f16_to_f32(get_u16(s + 2 * i));
        break;
    case SL_DTYPE_BF16:
        for (uint64_t i = 0; i < cols; i++) dst[i] = sl_bf16_to_f32(get_u16(s + 2 * i));
        break;
    case SL_DTYPE_Q8: {
        const int8_t *q = (const int8_t *)s;
        const uint8_t *scales = s + cols;
        for (uint64_t b = 0; b < nb; b++) {
            float d = sl_f16_to_f32(get_u16(scales + 2 * b));
            for (int i = 0; i < SL_QBLOCK; i++) dst[32 * b + i] = d * (float)q[32 * b + i];
        }
        break;
    }
    case SL_DTYPE_Q4: {
        const uint8_t *ds = s + cols / 2, *ms = ds + 2 * nb;
        for (uint64_t b = 0; b < nb; b++) {
            float d = sl_f16_to_f32(get_u16(ds + 2 * b));
            float m = sl_f16_to_f32(get_u16(ms + 2 * b));
            const uint8_t *nib = s + 16 * b;
            float *out = dst + 32 * b;
            for (int j = 0; j < 16; j++) {
                out[j] = d * (float)(nib[j] & 0x0f) + m;
                out[j + 16] = d * (float)(nib[j] >> 4) + m;
            }
        }
        break;
    }
    }
}
