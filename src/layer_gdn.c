/*
 * layer_gdn.c — the Gated DeltaNet mixer (see layer_gdn.h): conv + SiLU,
 * q/k normalisation, the gated delta rule token by token or in chunks, the
 * gated RMSNorm. Float32 throughout, with transformers' formulas:
 * l2norm x * rsqrt(sum x^2 + 1e-6), softplus with PyTorch's threshold 20,
 * the chunk's strictly-lower UT system solved by forward substitution.
 *
 * Invariant: the chunked and the recurrent form read and write the same
 * state, so a prompt (chunked) followed by decode steps (recurrent) is one
 * sequence; tests/test_gdn.c holds them equal within float rounding.
 */
#include "layer_gdn.h"

#include <math.h>
#include <string.h>

#include "cpu/pool.h"
#include "util.h"

static float silu(float x) { return x / (1.0f + expf(-x)); }
static float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
static float softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

void gdn_conv_silu(float *x, int n, int dim, const float *w, int kernel,
                   float *state) {
    int h = kernel - 1; /* history length */
    for (int c = 0; c < dim; c++) {
        float win[64]; /* kernel <= 64 (config_hybrid.c) */
        const float *wc = w + (size_t)c * kernel;
        float *sc = state + (size_t)c * h;
        if (h) memcpy(win, sc, (size_t)h * sizeof(float));
        for (int t = 0; t < n; t++) {
            float *xt = x + (size_t)t * dim + c;
            win[h] = *xt;
            float s = 0;
            for (int i = 0; i < kernel; i++) s += wc[i] * win[i];
            memmove(win, win + 1, (size_t)h * sizeof(float));
            *xt = silu(s);
        }
        if (h) memcpy(sc, win, (size_t)h * sizeof(float));
    }
}

void gdn_step_ref(float *S, const float *q, const float *k, const float *v,
                  float g, float beta, float *out, int dk, int dv) {
    float decay = expf(g);
    float delta[1024]; /* v_dim <= 1024 (checked by gdn_forward) */
    for (int j = 0; j < dv; j++) delta[j] = 0;
    for (int i = 0; i < dk; i++) {
        float *row = S + (size_t)i * dv;
        for (int j = 0; j < dv; j++) {
            row[j] *= decay;
            delta[j] += row[j] * k[i]; /* kv_mem = Sᵀk */
        }
    }
    for (int j = 0; j < dv; j++) delta[j] = (v[j] - delta[j]) * beta;
    for (int j = 0; j < dv; j++) out[j] = 0;
    for (int i = 0; i < dk; i++) {
        float *row = S + (size_t)i * dv;
        for (int j = 0; j < dv; j++) {
            row[j] += k[i] * delta[j];
            out[j] += row[j] * q[i];
        }
    }
}

size_t gdn_chunk_scratch_floats(int dk, int dv) {
    size_t C = GDN_CHUNK;
    return C + C * C + C * (size_t)dv + C * (size_t)dk;
}

static float dot(const float *a, const float *b, int n) {
    float s = 0;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

void gdn_chunk_ref(float *S, const float *q, int qs, const float *k, int ks,
                   const float *v, int vs, const float *g, const float *beta,
                   float *out, int os, int L, int dk, int dv, float *scratch) {
    float *G = scratch;               /* (C) cumulative log decay */
    float *A = G + GDN_CHUNK;         /* (C, C) strictly lower UT system */
    float *U = A + GDN_CHUNK * GDN_CHUNK; /* (C, dv) new values, then v_new */
    float *W = U + (size_t)GDN_CHUNK * dv; /* (C, dk) decayed k_beta, solved */
    float acc = 0;
    for (int t = 0; t < L; t++) G[t] = acc += g[t];
    /* A[i][j] = beta_i (k_i . k_j) exp(G_i - G_j), j < i */
    for (int i = 0; i < L; i++)
        for (int j = 0; j < i; j++)
            A[i * GDN_CHUNK + j] = beta[i] * dot(k + (size_t)i * ks, k + (size_t)j * ks, dk) *
                                   expf(G[i] - G[j]);
    /* (I + A) U = beta v,  (I + A) W = beta k exp(G): forward substitution */
    for (int i = 0; i < L; i++) {
        float *u = U + (size_t)i * dv, *wv = W + (size_t)i * dk;
        const float *vi = v + (size_t)i * vs, *ki = k + (size_t)i * ks;
        float eg = expf(G[i]);
        for (int c = 0; c < dv; c++) u[c] = beta[i] * vi[c];
        for (int c = 0; c < dk; c++) wv[c] = beta[i] * ki[c] * eg;
        for (int j = 0; j < i; j++) {
            float a = A[i * GDN_CHUNK + j];
            const float *uj = U + (size_t)j * dv, *wj = W + (size_t)j * dk;
            for (int c = 0; c < dv; c++) u[c] -= a * uj[c];
            for (int c = 0; c < dk; c++) wv[c] -= a * wj[c];
        }
    }
    /* v_new_i = U_i - W_i S (the part of U the old state does not predict) */
    for (int i = 0; i < L; i++) {
        float *u = U + (size_t)i * dv;
        const float *wv = W + (size_t)i * dk;
        for (int r = 0; r < dk; r++) {
            const float *srow = S + (size_t)r * dv;
            for (int c = 0; c < dv; c++) u[c] -= wv[r] * srow[c];
        }
    }
    /* out_i = exp(G_i) q_i S + sum_{j <= i} (q_i . k_j) exp(G_i - G_j) v_new_j */
    for (int i = 0; i < L; i++) {
        float *o = out + (size_t)i * os;
        const float *qi = q + (size_t)i * qs;
        float eg = expf(G[i]);
        for (int c = 0; c < dv; c++) o[c] = 0;
        for (int r = 0; r < dk; r++) {
            float qr = qi[r] * eg;
            const float *srow = S + (size_t)r * dv;
            for (int c = 0; c < dv; c++) o[c] += qr * srow[c];
        }
        for (int j = 0; j <= i; j++) {
            float a = dot(qi, k + (size_t)j * ks, dk) * expf(G[i] - G[j]);
            const float *uj = U + (size_t)j * dv;
            for (int c = 0; c < dv; c++) o[c] += a * uj[c];
        }
    }
    /* S = exp(G_last) S + sum_j exp(G_last - G_j) k_j ⊗ v_new_j */
    float gl = G[L - 1], el = expf(gl);
    for (int r = 0; r < dk; r++) {
        float *srow = S + (size_t)r * dv;
        for (int c = 0; c < dv; c++) srow[c] *= el;
    }
    for (int j = 0; j < L; j++) {
        const float *kj = k + (size_t)j * ks, *uj = U + (size_t)j * dv;
        float e = expf(gl - G[j]);
        for (int r = 0; r < dk; r++) {
            float kr = kj[r] * e;
            float *srow = S + (size_t)r * dv;
            for (int c = 0; c < dv; c++) srow[c] += kr * uj[c];
        }
    }
}

size_t gdn_scratch_floats(const struct gdn_dims *d, int n_max, int n_threads) {
    return 2 * (size_t)n_max * d->n_v_heads +
           (size_t)(n_threads > 0 ? n_threads : 1) * gdn_chunk_scratch_floats(d->k_dim, d->v_dim);
}

/* q and k of every token: l2-normalised, q also scaled by 1/sqrt(k_dim). */
static void normalize_qk(float *qkv, int n, const struct gdn_dims *d) {
    int conv_dim = gdn_conv_dim(d), nk = d->n_k_heads, dk = d->k_dim;
    float scale = 1.0f / sqrtf((float)dk);
    for (int t = 0; t < n; t++) {
        for (int h = 0; h < 2 * nk; h++) { /* q heads, then k heads */
            float *x = qkv + (size_t)t * conv_dim + (size_t)h * dk;
            float inv = 1.0f / sqrtf(dot(x, x, dk) + 1e-6f);
            if (h < nk) inv *= scale;
            for (int i = 0; i < dk; i++) x[i] *= inv;
        }
    }
}

struct gdn_job {
    const struct gdn_dims *d;
    const struct gdn_weights *w;
    struct gdn_state *st;
    const float *qkv, *z, *gs, *bs; /* gs, bs: (n_v_heads, n) */
    float *out, *scratch;
    int n, chunked;
};

/* Value heads [ith * nv / nth, (ith + 1) * nv / nth): delta rule, then the
 * gated RMSNorm of their outputs. */
static void gdn_heads(void *arg, int ith, int nth) {
    const struct gdn_job *j = arg;
    const struct gdn_dims *d = j->d;
    int nv = d->n_v_heads, dk = d->k_dim, dv = d->v_dim, n = j->n;
    int conv_dim = gdn_conv_dim(d), vdim = gdn_value_dim(d), key_dim = d->n_k_heads * dk;
    int per = nv / d->n_k_heads;
    float *scr = j->scratch + (size_t)ith * gdn_chunk_scratch_floats(dk, dv);
    for (int h = ith * nv / nth; h < (ith + 1) * nv / nth; h++) {
        int kh = h / per;
        const float *q = j->qkv + (size_t)kh * dk, *k = q + key_dim;
        const float *v = j->qkv + 2 * (size_t)key_dim + (size_t)h * dv;
        const float *g = j->gs + (size_t)h * n, *b = j->bs + (size_t)h * n;
        float *S = j->st->ssm + (size_t)h * dk * dv, *o = j->out + (size_t)h * dv;
        if (j->chunked) {
            for (int t0 = 0; t0 < n; t0 += GDN_CHUNK) {
                int L = n - t0 < GDN_CHUNK ? n - t0 : GDN_CHUNK;
                size_t off = (size_t)t0 * conv_dim;
                gdn_chunk_ref(S, q + off, conv_dim, k + off, conv_dim, v + off, conv_dim,
                              g + t0, b + t0, o + (size_t)t0 * vdim, vdim, L, dk, dv, scr);
            }
        } else {
            for (int t = 0; t < n; t++) {
                size_t off = (size_t)t * conv_dim;
                gdn_step_ref(S, q + off, k + off, v + off, g[t], b[t], o + (size_t)t * vdim,
                             dk, dv);
            }
        }
        /* gated RMSNorm: rmsnorm(o) * w * silu(z), per token */
        for (int t = 0; t < n; t++) {
            float *ot = o + (size_t)t * vdim;
            const float *zt = j->z + (size_t)t * vdim + (size_t)h * dv;
            float inv = 1.0f / sqrtf(dot(ot, ot, dv) / (float)dv + d->eps);
            for (int c = 0; c < dv; c++) ot[c] = j->w->norm[c] * (ot[c] * inv) * silu(zt[c]);
        }
    }
}

int gdn_forward(struct sl_pool *pool, const struct gdn_dims *d,
                const struct gdn_weights *w, struct gdn_state *st, float *qkv,
                const float *z, const float *a, const float *b, float *out,
                int n, int chunked, float *scratch) {
    if (n < 1 || d->n_k_heads < 1 || d->n_v_heads % d->n_k_heads || d->k_dim < 1 ||
        d->v_dim < 1 || d->v_dim > 1024 || d->kernel < 1 || d->kernel > 64)
        return sl_seterr(SL_ERR_ARG, "gdn_forward: bad shape (n %d, heads %d/%d, dims "
                         "%d/%d, kernel %d)", n, d->n_k_heads, d->n_v_heads, d->k_dim,
                         d->v_dim, d->kernel);
    int nv = d->n_v_heads;
    gdn_conv_silu(qkv, n, gdn_conv_dim(d), w->conv, d->kernel, st->conv);
    normalize_qk(qkv, n, d);
    float *gs = scratch, *bs = gs + (size_t)n * nv; /* (n_v_heads, n) each */
    for (int t = 0; t < n; t++)
        for (int h = 0; h < nv; h++) {
            float at = a[(size_t)t * nv + h], bt = b[(size_t)t * nv + h];
            gs[(size_t)h * n + t] = -expf(w->A_log[h]) * softplus(at + w->dt_bias[h]);
            bs[(size_t)h * n + t] = sigmoid(bt);
        }
    struct gdn_job job = {d, w, st, qkv, z, gs, bs, out, bs + (size_t)n * nv, n, chunked};
    pool_run(pool, gdn_heads, &job);
    return SL_OK;
}
