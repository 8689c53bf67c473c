/*
 * ops_attn_ext.c — the operations of ops_ext.h: windowed attention with
 * sinks, RoPE from a frequency table, the YaRN table, clamped SwiGLU.
 *
 * The attention has one body, instantiated twice: with double accumulators
 * (the reference) and with float ones (the pooled path, heads split across
 * threads). Both visit the same positions in the same order, so they differ
 * only by accumulation rounding. Nothing here allocates.
 */
#include <math.h>
#include <stddef.h>

#include "cpu/ops_ext.h"
#include "util.h"

#define ROPE_EXT_MAX_DIM 4096

static int check_shape(int n_q, int p0, int n_heads, int n_kv_heads,
                       int head_dim, int64_t kv_stride, int window,
                       const float *scratch) {
    if (n_q < 1 || p0 < 0 || n_heads < 1 || n_kv_heads < 1 || head_dim < 1)
        return sl_seterr(SL_ERR_ARG, "attention_ext: bad shape (n_q %d, p0 %d, "
                         "n_heads %d, n_kv_heads %d, head_dim %d)", n_q, p0,
                         n_heads, n_kv_heads, head_dim);
    if (n_heads % n_kv_heads)
        return sl_seterr(SL_ERR_ARG, "attention_ext: n_heads %d is not a "
                         "multiple of n_kv_heads %d", n_heads, n_kv_heads);
    if (kv_stride < (int64_t)n_kv_heads * head_dim)
        return sl_seterr(SL_ERR_ARG, "attention_ext: kv_stride %lld < "
                         "n_kv_heads * head_dim = %d", (long long)kv_stride,
                         n_kv_heads * head_dim);
    if (window < 0)
        return sl_seterr(SL_ERR_ARG, "attention_ext: window %d < 0", window);
    if (!scratch) return sl_seterr(SL_ERR_ARG, "attention_ext: NULL scratch");
    return SL_OK;
}

struct att_args {
    float *out;
    const float *q, *k, *v, *sinks;
    int n_q, p0, n_heads, n_kv_heads, head_dim, window;
    int64_t kv_stride;
    float scale;
    float *scratch;
};

/* Heads [h0, h1) of every query; ACC is the accumulator type. */
#define ATT_BODY(ACC)                                                         \
    int n_ctx = a->p0 + a->n_q, group = a->n_heads / a->n_kv_heads;          \
    int hd = a->head_dim;                                                     \
    for (int h = h0; h < h1; h++) {                                          \
        float *sc = a->scratch + (size_t)h * n_ctx;                           \
        const float *kh = a->k + (size_t)(h / group) * hd;                    \
        const float *vh = a->v + (size_t)(h / group) * hd;                    \
        for (int i = 0; i < a->n_q; i++) {                                    \
            int p = a->p0 + i;                                                \
            int lo = a->window > 0 && p - a->window + 1 > 0                   \
                         ? p - a->window + 1 : 0;                             \
            const float *qh = a->q + ((size_t)i * a->n_heads + h) * hd;       \
            float m = a->sinks ? a->sinks[h] : -INFINITY;                     \
            for (int t = lo; t <= p; t++) {                                   \
                const float *kt = kh + (size_t)t * a->kv_stride;              \
                ACC d = 0;                                                    \
                for (int j = 0; j < hd; j++) d += (ACC)qh[j] * kt[j];         \
                sc[t] = (float)d * a->scale;                                  \
                if (sc[t] > m) m = sc[t];                                     \
            }                                                                 \
            ACC sum = a->sinks ? (ACC)expf(a->sinks[h] - m) : 0;              \
            for (int t = lo; t <= p; t++) {                                   \
                sc[t] = expf(sc[t] - m);                                      \
                sum += sc[t];                                                 \
            }                                                                 \
            float *oh = a->out + ((size_t)i * a->n_heads + h) * hd;           \
            for (int j = 0; j < hd; j++) {                                    \
                ACC o = 0;                                                    \
                for (int t = lo; t <= p; t++)                                 \
                    o += (ACC)sc[t] * vh[(size_t)t * a->kv_stride + j];       \
                oh[j] = (float)(o / sum);                                     \
            }                                                                 \
        }                                                                     \
    }

static void att_heads_double(const struct att_args *a, int h0, int h1) {
    ATT_BODY(double)
}

static void att_heads_float(const struct att_args *a, int h0, int h1) {
    ATT_BODY(float)
}

static void att_task(void *arg, int ith, int nth) {
    const struct att_args *a = arg;
    int per = (a->n_heads + nth - 1) / nth;
    int h0 = ith * per, h1 = h0 + per < a->n_heads ? h0 + per : a->n_heads;
    if (h0 < h1) att_heads_float(a, h0, h1);
}

int ops_attention_ext_ref(float *out, const float *q, const float *k,
                          const float *v, int n_q, int p0, int n_heads,
                          int n_kv_heads, int head_dim, int64_t kv_stride,
                          float scale, int window, const float *sinks,
                          float *scratch) {
    int st = check_shape(n_q, p0, n_heads, n_kv_heads, head_dim, kv_stride,
                         window, scratch);
    if (st) return st;
    struct att_args a = {out, q, k, v, sinks, n_q, p0, n_heads, n_kv_heads,
                         head_dim, window, kv_stride, scale, scratch};
    att_heads_double(&a, 0, n_heads);
    return SL_OK;
}

int ops_attention_ext(struct sl_pool *pool, float *out, const float *q,
                      const float *k, const float *v, int n_q, int p0,
                      int n_heads, int n_kv_heads, int head_dim,
                      int64_t kv_stride, float scale, int window,
                      const float *sinks, float *scratch) {
    int st = check_shape(n_q, p0, n_heads, n_kv_heads, head_dim, kv_stride,
                         window, scratch);
    if (st) return st;
    struct att_args a = {out, q, k, v, sinks, n_q, p0, n_heads, n_kv_heads,
                         head_dim, window, kv_stride, scale, scratch};
    pool_run(pool, att_task, &a);
    return SL_OK;
}

int ops_rope_neox_freqs(float *x, int n_heads, int head_dim, int rot_dim,
                        int64_t pos, const float *inv_freq, float mscale) {
    if (rot_dim < 2 || rot_dim > head_dim || rot_dim % 2 ||
        rot_dim > ROPE_EXT_MAX_DIM || pos < 0 || n_heads < 0 || !inv_freq)
        return sl_seterr(SL_ERR_ARG, "rope_freqs: bad shape (n_heads %d, "
                         "head_dim %d, rot_dim %d, pos %lld)", n_heads,
                         head_dim, rot_dim, (long long)pos);
    int half = rot_dim / 2;
    float cs[ROPE_EXT_MAX_DIM / 2], sn[ROPE_EXT_MAX_DIM / 2];
    for (int i = 0; i < half; i++) {
        float f = (float)pos * inv_freq[i]; /* HF: float32 product */
        cs[i] = (float)cos((double)f) * mscale;
        sn[i] = (float)sin((double)f) * mscale;
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

/* HF find_correction_dim: the dimension whose wavelength makes
 * num_rotations turns over max_pos positions. */
static double correction_dim(double rotations, int dim, double base,
                             double max_pos) {
    return dim * log(max_pos / (rotations * 2 * M_PI)) / (2 * log(base));
}

int ops_rope_yarn_inv_freq(float *inv_freq, int rot_dim, float theta,
                           float factor, float beta_fast, float beta_slow,
                           uint32_t orig_ctx, int truncate) {
    if (rot_dim < 2 || rot_dim % 2 || rot_dim > ROPE_EXT_MAX_DIM ||
        !(theta > 0) || !(factor > 0) || !(beta_fast > 0) ||
        !(beta_slow > 0) || orig_ctx == 0)
        return sl_seterr(SL_ERR_ARG, "yarn: bad parameters (dim %d, theta %g, "
                         "factor %g, beta %g/%g, original context %u)", rot_dim,
                         (double)theta, (double)factor, (double)beta_fast,
                         (double)beta_slow, orig_ctx);
    double low = correction_dim(beta_fast, rot_dim, theta, orig_ctx);
    double high = correction_dim(beta_slow, rot_dim, theta, orig_ctx);
    if (truncate) {
        low = floor(low);
        high = ceil(high);
    }
    if (low < 0) low = 0;
    if (high > rot_dim - 1) high = rot_dim - 1;
    if (low == high) high += 0.001; /* HF: prevent a singular ramp */
    /* torch computes the ramp in float32 from the python floats low/high. */
    float lo = (float)low, span = (float)(high - low);
    for (int i = 0; i < rot_dim / 2; i++) {
        float pf = powf(theta, (float)(2 * i) / (float)rot_dim);
        float extra = 1.0f / pf, inter = 1.0f / (factor * pf);
        float ramp = ((float)i - lo) / span;
        ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
        float ext_factor = 1.0f - ramp;
        inv_freq[i] = inter * (1.0f - ext_factor) + extra * ext_factor;
    }
    return SL_OK;
}

void ops_swiglu_clamped(float *out, const float *gate, const float *up, int n,
                        float alpha, float limit) {
    for (int i = 0; i < n; i++) {
        float g = gate[i] < limit ? gate[i] : limit;
        float u = up[i] < -limit ? -limit : up[i] > limit ? limit : up[i];
        float glu = g / (1.0f + expf(-(g * alpha)));
        out[i] = (u + 1.0f) * glu;
    }
}
