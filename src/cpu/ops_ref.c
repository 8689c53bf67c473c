/*
 * ops_ref.c — the scalar C specification of the CPU ops (see ops.h).
 *
 * Plain loops, no intrinsics, no threads. Weights are decoded element by
 * element exactly as quant_row_to_f32 (quant.c) does — a float per weight,
 * d * q for Q8 and d * q + m for Q4 — and dot products are summed in double.
 * The SIMD kernels and the CUDA backend are tested against these functions.
 * The elementwise ops (rmsnorm, rope, softmax, top-k, swiglu, add) live only
 * here: they are both the specification and what runs.
 */
#include <math.h>
#include <string.h>

#include "cpu/ops.h"
#include "cpu/ops_kern.h"
#include "quant.h"
#include "util.h"

static inline uint16_t ld_u16(const uint8_t *p) {
    return (uint16_t)(p[0] | (p[1] << 8));
}

/* Validates a matrix operation's shape; sets the message. */
int ops_check_mat(const char *op, int dtype, int n, int rows, int cols) {
    if (dtype < 0 || dtype >= SL_DTYPE_COUNT)
        return sl_seterr(SL_ERR_ARG, "%s: unknown weight dtype %d", op, dtype);
    if (rows < 1 || cols < 1 || n < 1)
        return sl_seterr(SL_ERR_ARG, "%s: empty shape (n %d, rows %d, cols %d)",
                         op, n, rows, cols);
    if (!quant_dtype_fits(dtype, (uint64_t)cols))
        return sl_seterr(SL_ERR_ARG,
                         "%s: %s weights need cols %% 32 == 0, got cols %d", op,
                         sl_dtype_name(dtype), cols);
    return SL_OK;
}

double ops_ref_dot_row(int dtype, const uint8_t *wrow, const float *x,
                       int cols) {
    double acc = 0;
    switch (dtype) {
    case SL_DTYPE_F32:
        for (int c = 0; c < cols; c++) {
            float w;
            memcpy(&w, wrow + 4 * (size_t)c, 4);
            acc += (double)w * x[c];
        }
        break;
    case SL_DTYPE_F16:
        for (int c = 0; c < cols; c++)
            acc += (double)sl_f16_to_f32(ld_u16(wrow + 2 * (size_t)c)) * x[c];
        break;
    case SL_DTYPE_BF16:
        for (int c = 0; c < cols; c++)
            acc += (double)sl_bf16_to_f32(ld_u16(wrow + 2 * (size_t)c)) * x[c];
        break;
    case SL_DTYPE_Q8: {
        const int8_t *q = (const int8_t *)wrow;
        const uint8_t *ds = wrow + cols; /* (cols/32) f16 */
        for (int b = 0; b < cols / 32; b++) {
            float d = sl_f16_to_f32(ld_u16(ds + 2 * b));
            for (int i = 0; i < 32; i++) {
                float w = d * (float)q[32 * b + i];
                acc += (double)w * x[32 * b + i];
            }
        }
        break;
    }
    case SL_DTYPE_Q4: {
        const uint8_t *ds = wrow + cols / 2, *ms = ds + 2 * (cols / 32);
        for (int b = 0; b < cols / 32; b++) {
            float d = sl_f16_to_f32(ld_u16(ds + 2 * b));
            float m = sl_f16_to_f32(ld_u16(ms + 2 * b));
            const uint8_t *nib = wrow + 16 * b;
            const float *xb = x + 32 * b;
            for (int j = 0; j < 16; j++) {
                float lo = d * (float)(nib[j] & 0x0f) + m;
                float hi = d * (float)(nib[j] >> 4) + m;
                acc += (double)lo * xb[j] + (double)hi * xb[j + 16];
            }
        }
        break;
    }
    }
    return acc;
}

void ops_ref_rows(int dtype, const uint8_t *w, uint64_t row_bytes,
                  const struct ops_act *x, float *Y, int n, int rows, int r0,
                  int r1, int cols) {
    for (int r = r0; r < r1; r++) {
        const uint8_t *wrow = w + (uint64_t)r * row_bytes;
        for (int i = 0; i < n; i++)
            Y[(size_t)i * rows + r] = (float)ops_ref_dot_row(
                dtype, wrow, x->f + (size_t)i * cols, cols);
    }
}

float ops_ref_dot_f32(const float *a, const float *b, int n) {
    double acc = 0;
    for (int i = 0; i < n; i++) acc += (double)a[i] * b[i];
    return (float)acc;
}

void ops_ref_axpy(float *y, float a, const float *x, int n) {
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}

void ops_quantize_act(const float *x, int8_t *q, float *d, float *s, float *t,
                      int cols) {
    for (int b = 0; b < cols / 32; b++) {
        const float *xb = x + 32 * b;
        float amax = 0, sum = 0;
        for (int i = 0; i < 32; i++) {
            float a = fabsf(xb[i]);
            if (a > amax) amax = a;
            sum += xb[i];
        }
        float db = amax / 127.0f, id = amax > 0 ? 127.0f / amax : 0.0f;
        for (int i = 0; i < 32; i++) {
            float v = xb[i] * id; /* |v| <= 127 up to rounding */
            v = v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v;
            /* Round to nearest even by the 1.5 * 2^23 trick: same as lrintf
             * for |v| < 2^22, but the loop vectorizes (no libm call). */
            q[32 * b + i] = (int8_t)(int)((v + 12582912.0f) - 12582912.0f);
        }
        float err = 0;
        for (int i = 0; i < 32; i++) err += xb[i] - db * (float)q[32 * b + i];
        d[b] = db;
        s[b] = sum;
        t[b] = err;
    }
}

int ops_matvec_ref(int dtype, const void *w, const float *x, float *y,
                   int rows, int cols) {
    return ops_matmul_ref(dtype, w, x, y, 1, rows, cols);
}

int ops_matmul_ref(int dtype, const void *w, const float *X, float *Y, int n,
                   int rows, int cols) {
    int st = ops_check_mat("matmul_ref", dtype, n, rows, cols);
    if (st) return st;
    struct ops_act act = {.f = X};
    ops_ref_rows(dtype, w, quant_row_bytes(dtype, (uint64_t)cols), &act, Y, n,
                 rows, 0, rows, cols);
    return SL_OK;
}

void ops_embed_row(int dtype, const void *w, int64_t row, int cols,
                   float *out) {
    uint64_t rb = quant_row_bytes(dtype, (uint64_t)cols);
    quant_row_to_f32(dtype, (const uint8_t *)w + (uint64_t)row * rb, out,
                     (uint64_t)cols);
}

/* ---- normalisation, rope ---- */

void ops_rmsnorm(float *out, const float *x, const float *w, int n,
                 float eps) {
    double ss = 0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float r = (float)(1.0 / sqrt(ss / n + (double)eps));
    for (int i = 0; i < n; i++) out[i] = w[i] * (x[i] * r);
}

void ops_rmsnorm_heads(float *x, const float *w, int n_heads, int head_dim,
                       float eps) {
    for (int h = 0; h < n_heads; h++) {
        float *xh = x + (size_t)h * head_dim;
        ops_rmsnorm(xh, xh, w, head_dim, eps);
    }
}

#define ROPE_MAX_DIM 4096

int ops_rope_neox(float *x, int n_heads, int head_dim, int rot_dim,
                  int64_t pos, float theta) {
    if (rot_dim < 2 || rot_dim > head_dim || rot_dim % 2 || rot_dim > ROPE_MAX_DIM ||
        pos < 0 || n_heads < 0)
        return sl_seterr(SL_ERR_ARG,
                         "rope: bad shape (n_heads %d, head_dim %d, rot_dim %d, pos %lld)",
                         n_heads, head_dim, rot_dim, (long long)pos);
    int half = rot_dim / 2;
    float cs[ROPE_MAX_DIM / 2], sn[ROPE_MAX_DIM / 2];
    for (int i = 0; i < half; i++) {
        /* HF: inv_freq = 1 / base ** (arange(0, dim, 2).float() / dim), all
         * float32; freqs = pos * inv_freq in float32. */
        float e = (float)(2 * i) / (float)rot_dim;
        float inv = 1.0f / powf(theta, e);
        float f = (float)pos * inv;
        cs[i] = (float)cos((double)f);
        sn[i] = (float)sin((double)f);
    }
    for (int h = 0; h < n_heads; h++) {
        float *xh = x + (size_t)h * head_dim;
        for (int i = 0; i < half; i++) {
            float a = xh[i], b = xh[i + half];
            float a_c = a * cs[i], b_s = b * sn[i];
            float b_c = b * cs[i], a_s = a * sn[i];
            xh[i] = a_c - b_s;
            xh[i + half] = b_c + a_s;
        }
    }
    return SL_OK;
}

/* ---- attention ---- */

int ops_check_attention(int n_heads, int n_kv_heads, int head_dim, int n_pos,
                        int64_t kv_stride, const float *scratch) {
    if (n_heads < 1 || n_kv_heads < 1 || head_dim < 1 || n_pos < 1)
        return sl_seterr(SL_ERR_ARG,
                         "attention: empty shape (n_heads %d, n_kv_heads %d, "
                         "head_dim %d, n_pos %d)",
                         n_heads, n_kv_heads, head_dim, n_pos);
    if (n_heads % n_kv_heads)
        return sl_seterr(SL_ERR_ARG,
                         "attention: n_heads %d is not a multiple of n_kv_heads %d",
                         n_heads, n_kv_heads);
    if (kv_stride < (int64_t)n_kv_heads * head_dim)
        return sl_seterr(SL_ERR_ARG,
                         "attention: kv_stride %lld < n_kv_heads * head_dim = %lld",
                         (long long)kv_stride, (long long)n_kv_heads * head_dim);
    if (!scratch) return sl_seterr(SL_ERR_ARG, "attention: NULL scratch");
    return SL_OK;
}

int ops_attention_ref(float *out, const float *q, const float *k,
                      const float *v, int n_heads, int n_kv_heads,
                      int head_dim, int n_pos, int64_t kv_stride, float scale,
                      float *scratch) {
    int st = ops_check_attention(n_heads, n_kv_heads, head_dim, n_pos,
                                 kv_stride, scratch);
    if (st) return st;
    int group = n_heads / n_kv_heads;
    for (int h = 0; h < n_heads; h++) {
        const float *qh = q + (size_t)h * head_dim;
        size_t koff = (size_t)(h / group) * head_dim;
        float *p = scratch + (size_t)h * n_pos;
        for (int t = 0; t < n_pos; t++)
            p[t] = scale * ops_ref_dot_f32(qh, k + (size_t)t * kv_stride + koff,
                                           head_dim);
        ops_softmax(p, n_pos);
        for (int i = 0; i < head_dim; i++) {
            double acc = 0;
            for (int t = 0; t < n_pos; t++)
                acc += (double)p[t] * v[(size_t)t * kv_stride + koff + i];
            out[(size_t)h * head_dim + i] = (float)acc;
        }
    }
    return SL_OK;
}

/* ---- small vector ops ---- */

void ops_softmax(float *x, int n) {
    float mx = x[0];
    for (int i = 1; i < n; i++)
        if (x[i] > mx) mx = x[i];
    double sum = 0;
    for (int i = 0; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }
    float inv = (float)(1.0 / sum);
    for (int i = 0; i < n; i++) x[i] *= inv;
}

/* Whether (a, ia) ranks before (b, ib): larger first, NaN last, ties to the
 * lower index. */
static int topk_before(float a, int ia, float b, int ib) {
    if (a != a) return b != b && ia < ib;
    if (b != b) return 1;
    return a > b || (a == b && ia < ib);
}

int ops_topk(const float *x, int n, int k, int32_t *ids, float *vals) {
    if (k < 1 || k > n)
        return sl_seterr(SL_ERR_ARG, "topk: k = %d outside 1..n (n = %d)", k, n);
    int m = 0; /* entries held, sorted best first */
    for (int i = 0; i < n; i++) {
        if (m == k && !topk_before(x[i], i, vals[k - 1], ids[k - 1])) continue;
        int j = m < k ? m++ : k - 1; /* slot to fill, then sift up */
        while (j > 0 && topk_before(x[i], i, vals[j - 1], ids[j - 1])) {
            vals[j] = vals[j - 1];
            ids[j] = ids[j - 1];
            j--;
        }
        vals[j] = x[i];
        ids[j] = i;
    }
    return SL_OK;
}

void ops_swiglu(float *out, const float *gate, const float *up, int n) {
    for (int i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

void ops_add(float *y, const float *x, int n) {
    for (int i = 0; i < n; i++) y[i] += x[i];
}

void ops_scale_add(float *y, const float *x, float a, int n) {
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}
