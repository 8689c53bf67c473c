/*
 * layer_gdn_cuda.cu — the qwen3_next / qwen3_5_moe hybrid layers on the GPU
 * (contracts in layer_gdn_cuda.cuh; the CPU specification is
 * src/layer_gdn.c and src/layer_hybrid.c, whose formulas each kernel
 * follows):
 *
 *   kernel_gdn_conv      causal depthwise conv1d + SiLU over a chunk, one
 *                        thread per channel walking the tokens in order,
 *                        the last kernel - 1 inputs kept as the state;
 *   kernel_gdn_rec       the gated delta rule, token by token: one warp per
 *                        (value head, 32 columns of S). Every column j of S
 *                        evolves on its own (decay, kv_mem_j = S[:,j]·k,
 *                        delta_j, S[:,j] += k delta_j, o_j = S[:,j]·q), so
 *                        lane j owns column j and loops over the k_dim rows;
 *                        the warp's (k_dim, 32) slice of S sits in shared
 *                        memory for the whole chunk (global memory when
 *                        k_dim > GDN_SMEM_MAX_DK). q and k of each token are
 *                        L2-normalised in the same kernel, g and beta
 *                        computed from a, b, A_log, dt_bias;
 *   kernel_gdn_norm      the gated RMSNorm: rmsnorm(o) * w * silu(z);
 *   kernel_gated_qk_rope per-head q/k RMSNorm, NeoX rotary over the first
 *                        rope_dim dims (partial rotary), q taken out of the
 *                        gated q projection (per head q then gate), k and v
 *                        appended to the KV cache;
 *   kernel_attn_gate     attention output *= sigmoid(gate);
 *   kernel_shared_gate   shared expert output *= sigmoid(gate_w · x).
 *
 * Then the hooks of forward_cuda.cu (hybrid_mixer_cuda, hybrid_moe_cuda),
 * the device state, and the host-pointer test twins (layer_gdn_cuda_test.h).
 *
 * Speed is not the point yet: the recurrence is sequential over a chunk's
 * tokens (no chunked form), and each layer costs a few extra launches.
 */
#include <math.h>
#include <string.h>

#include "cuda/layer_gdn_cuda.cuh"
#include "cuda/ops_cuda_dev.cuh"

extern "C" {
#include "cuda/layer_gdn_cuda_test.h"
#include "layer_gdn.h"
}

#define GDN_CONV_THREADS 128
#define GDN_SMEM_MAX_DK 256 /* (k_dim, 32) S slice + q, k: 34 KiB at 256 */

/* ---- kernels ------------------------------------------------------------ */

__device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }

/* x (n, dim) in place: x_t = silu(sum_i w[c][i] * window_i), window = the
 * kernel - 1 past inputs (state, oldest first) then x_t; state updated.
 * As gdn_conv_silu. kernel <= 64 (config_hybrid.c). */
__global__ void kernel_gdn_conv(float *x, int n, int dim, const float *__restrict__ w, int kernel,
                                float *state) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= dim) return;
    int h = kernel - 1;
    float win[64];
    const float *wc = w + (uint64_t)c * kernel;
    float *sc = state + (uint64_t)c * h;
    for (int i = 0; i < h; i++) win[i] = sc[i];
    for (int t = 0; t < n; t++) {
        float *xt = x + (uint64_t)t * dim + c;
        win[h] = *xt;
        float s = 0.f;
        for (int i = 0; i < kernel; i++) s += wc[i] * win[i];
        for (int i = 0; i < h; i++) win[i] = win[i + 1];
        *xt = s / (1.0f + expf(-s));
    }
    for (int i = 0; i < h; i++) sc[i] = win[i];
}

/* The delta rule for n tokens. Grid (n_v_heads, ceil(v_dim / 32)), one
 * warp: lane owns column j = blockIdx.y * 32 + lane of value head h's S
 * (k_dim, v_dim) and writes o[t][h * v_dim + j] (before the gated norm).
 * qkv (n, conv_dim): conv outputs [q heads | k heads | v heads], not yet
 * normalised; a, b (n, n_v_heads). Per token, as gdn_forward:
 *   q, k L2-normalised (x / sqrt(sum x^2 + 1e-6)), q scaled 1/sqrt(k_dim);
 *   g = -exp(A_log) softplus(a + dt_bias), beta = sigmoid(b);
 *   S *= exp(g); delta = (v - Sᵀk) beta; S += k ⊗ delta; o = Sᵀq. */
__global__ void __launch_bounds__(32)
    kernel_gdn_rec(const float *__restrict__ qkv, const float *__restrict__ a,
                   const float *__restrict__ b, const float *__restrict__ A_log,
                   const float *__restrict__ dt_bias, float *ssm, float *__restrict__ o, int n,
                   int nk, int nv, int dk, int dv, int use_smem) {
    extern __shared__ float sm[]; /* qs (dk) | ks (dk) | S slice (dk, 32) */
    float *qs = sm, *ks = sm + dk;
    int h = blockIdx.x, lane = threadIdx.x, j = blockIdx.y * 32 + lane;
    bool live = j < dv;
    int key_dim = nk * dk, cd = 2 * key_dim + nv * dv, vd = nv * dv, kh = h / (nv / nk);
    float *Sg = ssm + (uint64_t)h * dk * dv + j; /* column j, row stride dv */
    float *S = use_smem ? sm + 2 * dk + lane : Sg;
    int ss = use_smem ? 32 : dv;
    if (use_smem && live)
        for (int i = 0; i < dk; i++) S[i * 32] = Sg[(uint64_t)i * dv];
    float nA = -expf(A_log[h]), dtb = dt_bias[h], scale = 1.0f / sqrtf((float)dk);
    for (int t = 0; t < n; t++) {
        const float *qt = qkv + (uint64_t)t * cd + (uint64_t)kh * dk, *kt = qt + key_dim;
        __syncwarp(); /* the previous token's reads of qs, ks are done */
        float sq = 0.f, sk = 0.f;
        for (int i = lane; i < dk; i += 32) {
            float x = qt[i], y = kt[i];
            qs[i] = x;
            ks[i] = y;
            sq += x * x;
            sk += y * y;
        }
        sq = warp_sum(sq);
        sk = warp_sum(sk);
        float iq = 1.0f / sqrtf(sq + 1e-6f) * scale, ik = 1.0f / sqrtf(sk + 1e-6f);
        for (int i = lane; i < dk; i += 32) { /* each lane scales what it stored */
            qs[i] *= iq;
            ks[i] *= ik;
        }
        __syncwarp();
        float x = a[(uint64_t)t * nv + h] + dtb;
        float sp = x > 20.0f ? x : log1pf(expf(x));
        float decay = expf(nA * sp), beta = sigmoidf_(b[(uint64_t)t * nv + h]);
        if (!live) continue;
        float kv = 0.f;
        for (int i = 0; i < dk; i++) {
            float s = S[i * ss] * decay;
            S[i * ss] = s;
            kv += s * ks[i];
        }
        float v = qkv[(uint64_t)t * cd + 2 * key_dim + (uint64_t)h * dv + j];
        float delta = (v - kv) * beta, acc = 0.f;
        for (int i = 0; i < dk; i++) {
            float s = S[i * ss] + ks[i] * delta;
            S[i * ss] = s;
            acc += s * qs[i];
        }
        o[(uint64_t)t * vd + (uint64_t)h * dv + j] = acc;
    }
    if (use_smem && live)
        for (int i = 0; i < dk; i++) Sg[(uint64_t)i * dv] = S[i * 32];
}

/* o (n, n_v_heads * dv) in place: per (token, head) rmsnorm(o) * w *
 * silu(z), float sums as layer_gdn.c. Grid (n, n_v_heads), one warp. */
__global__ void __launch_bounds__(32)
    kernel_gdn_norm(float *o, const float *__restrict__ z, const float *__restrict__ w, int vd,
                    int dv, float eps) {
    uint64_t off = (uint64_t)blockIdx.x * vd + (uint64_t)blockIdx.y * dv;
    float *ot = o + off;
    const float *zt = z + off;
    float ss = 0.f;
    for (int c = threadIdx.x; c < dv; c += 32) ss += ot[c] * ot[c];
    ss = warp_sum(ss);
    float inv = 1.0f / sqrtf(ss / (float)dv + eps);
    for (int c = threadIdx.x; c < dv; c += 32) {
        float zc = zt[c];
        ot[c] = w[c] * (ot[c] * inv) * (zc / (1.0f + expf(-zc)));
    }
}

/* For token t at position *d_pos + t: q head h from qg (n, nh, 2 hd) into
 * q (n, nh, hd); k (n, nkv, hd) into kcache row pos; v copied into vcache
 * row pos. q, k: per-head rmsnorm (qn, kn when given; double sum as the
 * CPU), NeoX rotation of pairs (i, i + rd / 2) for i < rd / 2 with
 * inv_freq (rd / 2), dims rd.. unrotated. Grid (n, nh + 2 nkv), one warp.
 * Arithmetic as kernel_qk_rope_store (no contraction, cos/sin in double). */
__global__ void kernel_gated_qk_rope(const float *qg, float *q, const float *kb, const float *vb,
                                     float *kcache, float *vcache, const int32_t *d_pos, int nh,
                                     int nkv, int hd, int rd, const float *qn, const float *kn,
                                     float eps, const float *__restrict__ inv_freq) {
    int t = blockIdx.x, hh = blockIdx.y, lane = threadIdx.x;
    int pos = *d_pos + t, kv_dim = nkv * hd;
    const float *x, *nw;
    float *dst;
    if (hh < nh) {
        x = qg + ((uint64_t)t * nh + hh) * 2 * hd;
        dst = q + ((uint64_t)t * nh + hh) * hd;
        nw = qn;
    } else if (hh < nh + nkv) {
        int j = hh - nh;
        x = kb + ((uint64_t)t * nkv + j) * hd;
        dst = kcache + (uint64_t)pos * kv_dim + (uint64_t)j * hd;
        nw = kn;
    } else {
        int j = hh - nh - nkv;
        const float *src = vb + ((uint64_t)t * nkv + j) * hd;
        float *d = vcache + (uint64_t)pos * kv_dim + (uint64_t)j * hd;
        for (int i = lane; i < hd; i += 32) d[i] = src[i];
        return;
    }
    float r = 1.f;
    if (nw) {
        double ss = 0;
        for (int i = lane; i < hd; i += 32) ss += (double)x[i] * x[i];
        ss = warp_sum_d(ss);
        r = (float)(1.0 / sqrt(ss / hd + (double)eps));
    }
    int half = rd / 2;
    for (int i = lane; i < half; i += 32) {
        float a = x[i], b = x[i + half];
        if (nw) {
            a = __fmul_rn(nw[i], __fmul_rn(a, r));
            b = __fmul_rn(nw[i + half], __fmul_rn(b, r));
        }
        float f = __fmul_rn((float)pos, inv_freq[i]);
        float c = (float)cos((double)f), sn = (float)sin((double)f);
        dst[i] = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, sn));
        dst[i + half] = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, sn));
    }
    for (int i = rd + lane; i < hd; i += 32)
        dst[i] = nw ? __fmul_rn(nw[i], __fmul_rn(x[i], r)) : x[i];
}

/* att (n, nh * hd) *= sigmoid(gate), gate = the second half of each head's
 * 2 hd rows of qg (n, nh, 2 hd). */
__global__ void kernel_attn_gate(float *att, const float *__restrict__ qg, int nh, int hd,
                                 uint64_t total) {
    uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    uint64_t qd = (uint64_t)nh * hd, t = i / qd, r = i % qd, h = r / hd, c = r % hd;
    att[i] *= sigmoidf_(qg[t * 2 * qd + h * 2 * hd + hd + c]);
}

/* out row t (hidden) *= sigmoid(gw · x_t). Grid n, 256 threads. */
__global__ void kernel_shared_gate(float *out, const float *__restrict__ x,
                                   const float *__restrict__ gw, int hidden) {
    const float *xt = x + (uint64_t)blockIdx.x * hidden;
    float *ot = out + (uint64_t)blockIdx.x * hidden;
    double d = 0;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) d += (double)xt[i] * gw[i];
    d = block_sum_d(d);
    float sg = sigmoidf_((float)d);
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) ot[i] *= sg;
}

__global__ void kernel_add(float *y, const float *__restrict__ x, uint64_t count) {
    uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) y[i] += x[i];
}

/* ---- launchers ---------------------------------------------------------- */

/* The GDN mixer after the projections (gdn_forward's contract): qkv
 * overwritten by the conv, o (n, value_dim) receives the gated-normed
 * output; conv_state and ssm updated. */
static int gdn_enqueue(cudaStream_t s, const struct gdn_dims *d, const float *conv_w,
                       const float *A_log, const float *dt_bias, const float *norm_w,
                       float *conv_state, float *ssm, float *qkv, const float *z, const float *a,
                       const float *b, float *o, int n) {
    int cd = gdn_conv_dim(d), vd = gdn_value_dim(d);
    if (n < 1 || d->n_k_heads < 1 || d->n_v_heads % d->n_k_heads || d->k_dim < 1 ||
        d->v_dim < 1 || d->kernel < 1 || d->kernel > 64 || d->k_dim > 4096)
        return sl_seterr(SL_ERR_ARG, "CUDA Gated DeltaNet: bad shape (n %d, heads %d/%d, "
                         "dims %d/%d, kernel %d)", n, d->n_k_heads, d->n_v_heads, d->k_dim,
                         d->v_dim, d->kernel);
    kernel_gdn_conv<<<(cd + GDN_CONV_THREADS - 1) / GDN_CONV_THREADS, GDN_CONV_THREADS, 0, s>>>(
        qkv, n, cd, conv_w, d->kernel, conv_state);
    int st = launched("kernel_gdn_conv");
    if (st) return st;
    int use_smem = d->k_dim <= GDN_SMEM_MAX_DK;
    size_t smem = (size_t)(2 + (use_smem ? 32 : 0)) * d->k_dim * sizeof(float);
    kernel_gdn_rec<<<dim3(d->n_v_heads, (d->v_dim + 31) / 32), 32, smem, s>>>(
        qkv, a, b, A_log, dt_bias, ssm, o, n, d->n_k_heads, d->n_v_heads, d->k_dim, d->v_dim,
        use_smem);
    if ((st = launched("kernel_gdn_rec"))) return st;
    kernel_gdn_norm<<<dim3(n, d->n_v_heads), 32, 0, s>>>(o, z, norm_w, vd, d->v_dim, d->eps);
    return launched("kernel_gdn_norm");
}

static int gated_qk_rope_enqueue(cudaStream_t s, const float *qg, float *q, const float *kb,
                                 const float *vb, float *kc, float *vc, const int32_t *d_pos,
                                 int n, int nh, int nkv, int hd, int rd, const float *qn,
                                 const float *kn, float eps, const float *inv_freq) {
    kernel_gated_qk_rope<<<dim3(n, nh + 2 * nkv), 32, 0, s>>>(qg, q, kb, vb, kc, vc, d_pos, nh,
                                                              nkv, hd, rd, qn, kn, eps, inv_freq);
    return launched("kernel_gated_qk_rope");
}

static int attn_gate_enqueue(cudaStream_t s, float *att, const float *qg, int n, int nh,
                             int hd) {
    uint64_t total = (uint64_t)n * nh * hd;
    kernel_attn_gate<<<(unsigned)((total + 255) / 256), 256, 0, s>>>(att, qg, nh, hd, total);
    return launched("kernel_attn_gate");
}

static int shared_gate_enqueue(cudaStream_t s, float *out, const float *x, const float *gw, int n,
                               int hidden) {
    kernel_shared_gate<<<n, 256, 0, s>>>(out, x, gw, hidden);
    return launched("kernel_shared_gate");
}

static int add_enqueue(cudaStream_t s, float *y, const float *x, uint64_t count) {
    kernel_add<<<(unsigned)((count + 255) / 256), 256, 0, s>>>(y, x, count);
    return launched("kernel_add");
}

/* inv_freq (rd / 2) exactly as ops_rope_neox computes it on the CPU. */
static void rope_table(float *inv, int rd, float theta) {
    for (int i = 0; i < rd / 2; i++) inv[i] = 1.0f / powf(theta, (float)(2 * i) / (float)rd);
}

static struct gdn_dims dims_of(const struct sl_config *c) {
    struct gdn_dims d = {(int)c->lin_k_heads, (int)c->lin_v_heads, (int)c->lin_k_dim,
                         (int)c->lin_v_dim, (int)c->lin_conv, c->rms_eps};
    return d;
}

/* ---- model and context state --------------------------------------------- */

const char *hybrid_cuda_unsupported(const struct sl_model *m) {
    const struct sl_config *c = &m->cfg;
    if (c->head_dim > 256 || c->head_dim % 2) return "a head_dim over 256 or odd";
    if (c->n_experts > 4096 || c->n_experts_used > 64) return "over 4096 experts or top-64";
    if (c->sliding_window || c->attn_sinks) return "gated attention with windows or sinks";
    if (c->expert_bias || c->swiglu_limit > 0 || c->attention_bias)
        return "biases or a clamped SwiGLU in a hybrid model";
    if (c->qk_norm != SL_QK_NORM_HEAD && c->qk_norm != SL_QK_NORM_NONE)
        return "gated attention with q/k norm over the whole projection";
    if (m->rope_inv_freq) return "gated attention with scaled (YaRN) rotary";
    if (c->rope_dim < 2 || c->rope_dim % 2 || c->rope_dim > c->head_dim)
        return "a partial rotary dimension that is odd or over head_dim";
    if (c->lin_k_dim > 4096 || c->lin_conv > 64 || c->lin_conv < 1)
        return "a linear_key_head_dim over 4096 or a conv kernel over 64";
    return NULL;
}

static const void *dev_of(const struct cuda_model *cm, const void *h) {
    if (!h) return NULL;
    return cm->d_dense + ((const uint8_t *)h - cm->h_dense);
}

void hybrid_cuda_model_free(struct hybrid_cuda *hy) {
    if (!hy) return;
    if (hy->d_inv_freq) cudaFree(hy->d_inv_freq);
    sl_free(hy->layers);
    sl_free(hy);
}

int hybrid_cuda_model_create(struct cuda_model *cm, struct hybrid_cuda **out) {
    *out = NULL;
    const struct sl_model *m = cm->m;
    const struct sl_config *c = &m->cfg;
    struct hybrid_cuda *hy = (struct hybrid_cuda *)sl_calloc(1, sizeof *hy);
    if (!hy) return sl_seterr(SL_ERR_NOMEM, "out of memory");
    hy->layers = (struct hybrid_layer *)sl_calloc(c->n_layers, sizeof *hy->layers);
    if (!hy->layers) {
        hybrid_cuda_model_free(hy);
        return sl_seterr(SL_ERR_NOMEM, "out of memory");
    }
    for (uint32_t l = 0; l < c->n_layers; l++) {
        const struct layer_weights *L = &m->layers[l];
        struct hybrid_layer *h = &hy->layers[l];
        if (c->layer_linear[l]) {
            h->qkv = dev_of(cm, L->lin_qkv.data);
            h->z = dev_of(cm, L->lin_z.data);
            h->b = dev_of(cm, L->lin_b.data);
            h->a = dev_of(cm, L->lin_a.data);
            h->out = dev_of(cm, L->lin_out.data);
            h->conv = (const float *)dev_of(cm, L->lin_conv);
            h->A_log = (const float *)dev_of(cm, L->lin_A_log);
            h->dt_bias = (const float *)dev_of(cm, L->lin_dt_bias);
            h->norm = (const float *)dev_of(cm, L->lin_norm);
        }
        if (c->layer_is_moe[l] && L->sh_gate.data && L->sh_expert_gate) {
            if (L->sh_gate.dtype != L->sh_up.dtype) {
                hybrid_cuda_model_free(hy);
                return sl_seterr(SL_ERR_UNSUPPORTED, "CUDA: layer %u: shared expert gate and "
                                 "up in different formats; HINT: --device cpu", l);
            }
            h->sh_gate = (const uint8_t *)dev_of(cm, L->sh_gate.data);
            h->sh_up = (const uint8_t *)dev_of(cm, L->sh_up.data);
            h->sh_down = (const uint8_t *)dev_of(cm, L->sh_down.data);
            h->sh_expert_gate = (const float *)dev_of(cm, L->sh_expert_gate);
            struct ffn_shape *s = &h->sh;
            s->hidden = (int)c->hidden;
            s->ffn = (int)L->sh_gate.rows;
            s->dt_gu = L->sh_gate.dtype;
            s->dt_down = L->sh_down.dtype;
            s->rb_gu = quant_row_bytes(s->dt_gu, (uint64_t)s->hidden);
            s->rb_down = quant_row_bytes(s->dt_down, (uint64_t)s->ffn);
            s->aligned_gu = (uintptr_t)h->sh_gate % 16 == 0 && (uintptr_t)h->sh_up % 16 == 0 &&
                            s->rb_gu % 16 == 0 && s->hidden % 8 == 0;
            s->aligned_down = (uintptr_t)h->sh_down % 16 == 0 && s->rb_down % 16 == 0 &&
                              s->ffn % 8 == 0;
        }
    }
    int half = (int)c->rope_dim / 2;
    float inv[2048];
    if (half < 1 || half > 2048) {
        hybrid_cuda_model_free(hy);
        return sl_seterr(SL_ERR_UNSUPPORTED, "CUDA: rope_dim %u is not supported",
                         c->rope_dim);
    }
    rope_table(inv, (int)c->rope_dim, c->rope_theta);
    cudaError_t e = cudaMalloc(&hy->d_inv_freq, (size_t)half * sizeof(float));
    if (e == cudaSuccess)
        e = cudaMemcpy(hy->d_inv_freq, inv, (size_t)half * sizeof(float), cudaMemcpyHostToDevice);
    if (e != cudaSuccess) {
        if (hy->d_inv_freq == NULL) cudaGetLastError();
        hybrid_cuda_model_free(hy);
        return cuda_fail(e, "uploading the partial rope table");
    }
    *out = hy;
    return SL_OK;
}

void hybrid_cuda_ctx_free(struct hybrid_cuda_ctx *h) {
    if (!h) return;
    float *bufs[] = {h->state, h->qkv, h->z, h->a, h->b, h->core, h->qg, h->Hsh, h->sh_out};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        if (bufs[i]) cudaFree(bufs[i]);
    sl_free(h->conv);
    sl_free(h->ssm);
    sl_free(h);
}

int hybrid_cuda_ctx_create(const struct cuda_model *cm, const struct sl_context *ctx,
                           struct hybrid_cuda_ctx **out) {
    *out = NULL;
    const struct sl_config *c = &cm->m->cfg;
    struct gdn_dims d = dims_of(c);
    uint64_t cd = (uint64_t)gdn_conv_dim(&d), vd = (uint64_t)gdn_value_dim(&d);
    uint64_t per_conv = cd * (uint64_t)(d.kernel - 1);
    uint64_t per_ssm = (uint64_t)d.n_v_heads * d.k_dim * d.v_dim;
    uint64_t n_lin = 0, B = ctx->n_batch, hid = c->hidden;
    for (uint32_t l = 0; l < c->n_layers; l++) n_lin += c->layer_linear[l];
    struct hybrid_cuda_ctx *h = (struct hybrid_cuda_ctx *)sl_calloc(1, sizeof *h);
    if (!h) return sl_seterr(SL_ERR_NOMEM, "out of memory");
    h->state_floats = n_lin * (per_conv + per_ssm);
    h->conv = (float **)sl_calloc(c->n_layers, sizeof *h->conv);
    h->ssm = (float **)sl_calloc(c->n_layers, sizeof *h->ssm);
    if (!h->conv || !h->ssm) {
        hybrid_cuda_ctx_free(h);
        return sl_seterr(SL_ERR_NOMEM, "out of memory");
    }
    struct {
        float **p;
        uint64_t floats;
    } d_[] = {
        {&h->state, h->state_floats},
        {&h->qkv, B * cd},
        {&h->z, B * vd},
        {&h->a, B * d.n_v_heads},
        {&h->b, B * d.n_v_heads},
        {&h->core, B * vd},
        {&h->qg, B * 2 * config_q_dim(c)},
        {&h->Hsh, B * (c->shared_ffn ? c->shared_ffn : 1)},
        {&h->sh_out, B * hid},
    };
    uint64_t total = 0;
    for (size_t i = 0; i < sizeof d_ / sizeof *d_; i++) total += d_[i].floats * 4;
    for (size_t i = 0; i < sizeof d_ / sizeof *d_; i++) {
        cudaError_t e = cudaMalloc(d_[i].p, d_[i].floats ? d_[i].floats * 4 : 4);
        if (e != cudaSuccess) {
            cudaGetLastError();
            *d_[i].p = NULL;
            hybrid_cuda_ctx_free(h);
            return sl_seterr(SL_ERR_NOMEM, "out of device memory for the Gated DeltaNet state "
                             "(%.1f MiB) and scratch (%.1f MiB in all): %s",
                             (double)(n_lin * (per_conv + per_ssm)) * 4 / 1048576.0,
                             (double)total / 1048576.0, cudaGetErrorString(e));
        }
    }
    float *p = h->state;
    for (uint32_t l = 0; l < c->n_layers; l++) {
        if (!c->layer_linear[l]) continue;
        h->conv[l] = p;
        h->ssm[l] = p + per_conv;
        p += per_conv + per_ssm;
    }
    cudaError_t e = cudaMemset(h->state, 0, h->state_floats ? h->state_floats * 4 : 4);
    if (e != cudaSuccess) {
        hybrid_cuda_ctx_free(h);
        return cuda_fail(e, "zeroing the Gated DeltaNet state");
    }
    *out = h;
    return SL_OK;
}

int hybrid_cuda_reset(struct hybrid_cuda_ctx *h, cudaStream_t stream) {
    if (!h || !h->state_floats) return SL_OK;
    CU_TRY(cudaMemsetAsync(h->state, 0, h->state_floats * 4, stream));
    return SL_OK;
}

/* ---- the hooks of forward_cuda.cu ------------------------------------------ */

/* GDN layer l: projections of cc->xb, mixer, cc->x += out_proj. */
static int gdn_layer(struct cuda_model *cm, struct cuda_ctx *cc, struct sl_context *ctx,
                     uint32_t l, int n) {
    const struct sl_config *c = &ctx->model->cfg;
    const struct layer_weights *L = &ctx->model->layers[l];
    const struct hybrid_layer *hl = &cm->hy->layers[l];
    struct hybrid_cuda_ctx *h = cc->hy;
    cudaStream_t s = cc->stream;
    struct gdn_dims d = dims_of(c);
    int hid = (int)c->hidden, cd = gdn_conv_dim(&d), vd = gdn_value_dim(&d), nv = d.n_v_heads;
    int st;
    if ((st = matmul_cuda(s, L->lin_qkv.dtype, hl->qkv, cc->xb, h->qkv, n, cd, hid, NULL, 0)) ||
        (st = matmul_cuda(s, L->lin_z.dtype, hl->z, cc->xb, h->z, n, vd, hid, NULL, 0)) ||
        (st = matmul_cuda(s, L->lin_b.dtype, hl->b, cc->xb, h->b, n, nv, hid, NULL, 0)) ||
        (st = matmul_cuda(s, L->lin_a.dtype, hl->a, cc->xb, h->a, n, nv, hid, NULL, 0)) ||
        (st = gdn_enqueue(s, &d, hl->conv, hl->A_log, hl->dt_bias, hl->norm, h->conv[l],
                          h->ssm[l], h->qkv, h->z, h->a, h->b, h->core, n)))
        return st;
    return matmul_cuda(s, L->lin_out.dtype, hl->out, h->core, cc->x, n, hid, vd, NULL, 1);
}

/* Gated attention layer l: q (and its gate) / k / v of cc->xb, per-head
 * norms, partial rope, KV append, attention, gate, cc->x += o_proj. */
static int gated_attention(struct cuda_model *cm, struct cuda_ctx *cc, struct sl_context *ctx,
                           uint32_t l, int n) {
    const struct sl_config *c = &ctx->model->cfg;
    const struct layer_weights *L = &ctx->model->layers[l];
    const struct gpu_layer *g = &cm->layers[l];
    struct hybrid_cuda_ctx *h = cc->hy;
    cudaStream_t s = cc->stream;
    int hid = (int)c->hidden, nh = (int)c->n_heads, nkv = (int)c->n_kv_heads;
    int hd = (int)c->head_dim, qd = (int)config_q_dim(c), kvd = (int)config_kv_dim(c), st;
    uint64_t lay = (uint64_t)l * ctx->n_ctx * kvd;
    int qk = c->qk_norm == SL_QK_NORM_HEAD;
    if ((st = matmul_cuda(s, L->wq.dtype, g->wq, cc->xb, h->qg, n, 2 * qd, hid, NULL, 0)) ||
        (st = matmul_cuda(s, L->wk.dtype, g->wk, cc->xb, cc->kb, n, kvd, hid, NULL, 0)) ||
        (st = matmul_cuda(s, L->wv.dtype, g->wv, cc->xb, cc->vb, n, kvd, hid, NULL, 0)) ||
        (st = gated_qk_rope_enqueue(s, h->qg, cc->q, cc->kb, cc->vb, cc->k_cache + lay,
                                    cc->v_cache + lay, cc->d_io, n, nh, nkv, hd,
                                    (int)c->rope_dim, qk ? g->q_norm : NULL,
                                    qk ? g->k_norm : NULL, c->rms_eps, cm->hy->d_inv_freq)) ||
        (st = attention_cuda(s, cc->q, cc->k_cache + lay, cc->v_cache + lay, cc->att, cc->scores,
                             cc->d_io, n, nh, nkv, hd, (int)ctx->n_ctx,
                             1.0f / sqrtf((float)hd))) ||
        (st = attn_gate_enqueue(s, cc->att, h->qg, n, nh, hd)))
        return st;
    return matmul_cuda(s, L->wo.dtype, g->wo, cc->att, cc->x, n, hid, qd, NULL, 1);
}

int hybrid_mixer_cuda(struct cuda_model *cm, struct cuda_ctx *cc, struct sl_context *ctx,
                      uint32_t l, int n) {
    const struct sl_config *c = &ctx->model->cfg;
    const struct gpu_layer *g = &cm->layers[l];
    int hid = (int)c->hidden, st;
    if ((st = rmsnorm_cuda(cc->stream, cc->x, g->attn_norm, cc->xb, n, hid, c->rms_eps)) ||
        (st = c->layer_linear[l] ? gdn_layer(cm, cc, ctx, l, n)
                                 : gated_attention(cm, cc, ctx, l, n)))
        return st;
    return rmsnorm_cuda(cc->stream, cc->x, g->ffn_norm, cc->xb, n, hid, c->rms_eps);
}

int hybrid_moe_cuda(struct cuda_model *cm, struct cuda_ctx *cc, struct sl_context *ctx,
                    uint32_t l, int n, hybrid_routed_fn routed) {
    const struct hybrid_layer *hl = &cm->hy->layers[l];
    struct hybrid_cuda_ctx *h = cc->hy;
    cudaStream_t s = cc->stream;
    int hid = (int)ctx->model->cfg.hidden, maxc = n == 1 ? 1 : 2, st;
    if (!hl->sh_gate) return routed(cm, cc, ctx, l, n, 0);
    moe_item one = {hl->sh_gate, hl->sh_up, hl->sh_down, 0, n};
    if ((st = expert_gate_up_cuda(s, &hl->sh, NULL, NULL, 1, one, cc->iota, 1, cc->xb, h->Hsh,
                                  maxc)) ||
        (st = expert_down_cuda(s, &hl->sh, NULL, NULL, 1, one, cc->iota, 1, h->Hsh, h->sh_out, 0,
                               maxc)) ||
        (st = shared_gate_enqueue(s, h->sh_out, cc->xb, hl->sh_expert_gate, n, hid)))
        return st;
    float *x = cc->x;
    cc->x = h->sh_out; /* routed outputs are added to the gated shared expert */
    st = routed(cm, cc, ctx, l, n, 0);
    cc->x = x;
    if (st) return st;
    return add_enqueue(s, cc->x, h->sh_out, (uint64_t)n * hid);
}

/* ---- test twins (layer_gdn_cuda_test.h) ----------------------------------- */

struct tscope {
    void *p[24];
    int n;
    cudaStream_t s;
};

static void tscope_free(struct tscope *d) {
    if (d->s) cudaStreamSynchronize(d->s);
    for (int i = 0; i < d->n; i++) cudaFree(d->p[i]);
    if (d->s) cudaStreamDestroy(d->s);
}

/* Device copy of bytes, or NaN-filled when src is NULL. */
static int tput(struct tscope *d, void **out, const void *src, size_t bytes) {
    void *p = NULL;
    CU_TRY(cudaMalloc(&p, bytes ? bytes : 4));
    d->p[d->n++] = p;
    if (src) CU_TRY(cudaMemcpy(p, src, bytes, cudaMemcpyHostToDevice));
    else CU_TRY(cudaMemset(p, 0xff, bytes ? bytes : 4)); /* 0xffffffff is a NaN */
    *out = p;
    return SL_OK;
}

static int tget(struct tscope *d, int st, void *dst, const void *src, size_t bytes) {
    if (st) return st;
    cudaError_t e = cudaStreamSynchronize(d->s);
    if (e == cudaSuccess && bytes) e = cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost);
    return e == cudaSuccess ? SL_OK : cuda_fail(e, "test download");
}

#define TPUT(ptr, src, bytes)                                              \
    do {                                                                   \
        if ((st = tput(&d, (void **)&(ptr), (src), (bytes)))) goto out;    \
    } while (0)
#define TBEGIN                                                             \
    struct tscope d = {};                                                  \
    int st = SL_OK;                                                        \
    if (cudaStreamCreate(&d.s) != cudaSuccess) return cuda_fail(cudaGetLastError(), "stream");

extern "C" int cuda_test_gdn(const struct gdn_dims *dm, const struct gdn_weights *w,
                             float *conv_state, float *ssm_state, const float *qkv,
                             const float *z, const float *a, const float *b, float *out, int n) {
    TBEGIN
    size_t cd = (size_t)gdn_conv_dim(dm), vd = (size_t)gdn_value_dim(dm), nv = dm->n_v_heads;
    size_t nconv = cd * (dm->kernel - 1), nssm = nv * dm->k_dim * dm->v_dim;
    float *dconv_w = NULL, *dA = NULL, *ddt = NULL, *dnorm = NULL, *dcs = NULL, *dss = NULL;
    float *dqkv = NULL, *dz = NULL, *da = NULL, *db = NULL, *dout = NULL;
    TPUT(dconv_w, w->conv, cd * dm->kernel * 4);
    TPUT(dA, w->A_log, nv * 4);
    TPUT(ddt, w->dt_bias, nv * 4);
    TPUT(dnorm, w->norm, (size_t)dm->v_dim * 4);
    TPUT(dcs, conv_state, nconv * 4);
    TPUT(dss, ssm_state, nssm * 4);
    TPUT(dqkv, qkv, (size_t)n * cd * 4);
    TPUT(dz, z, (size_t)n * vd * 4);
    TPUT(da, a, (size_t)n * nv * 4);
    TPUT(db, b, (size_t)n * nv * 4);
    TPUT(dout, NULL, (size_t)n * vd * 4);
    st = gdn_enqueue(d.s, dm, dconv_w, dA, ddt, dnorm, dcs, dss, dqkv, dz, da, db, dout, n);
    st = tget(&d, st, out, dout, (size_t)n * vd * 4);
    st = tget(&d, st, conv_state, dcs, nconv * 4);
    st = tget(&d, st, ssm_state, dss, nssm * 4);
out:
    tscope_free(&d);
    return st;
}

extern "C" int cuda_test_gated_attn_parts(const float *qg, float *q_out, const float *k,
                                          const float *v, float *kc, float *vc, int pos, int n,
                                          int nh, int nkv, int hd, int rd, float theta,
                                          const float *qn, const float *kn, float eps,
                                          float *att) {
    TBEGIN
    size_t qd = (size_t)nh * hd, kvd = (size_t)nkv * hd, rows = (size_t)(pos + n);
    float inv[2048];
    if (rd < 2 || rd > hd || rd % 2 || rd / 2 > 2048) {
        tscope_free(&d);
        return sl_seterr(SL_ERR_ARG, "cuda_test_gated_attn_parts: rd %d", rd);
    }
    rope_table(inv, rd, theta);
    float *dqg = NULL, *dq = NULL, *dk = NULL, *dv = NULL, *dkc = NULL, *dvc = NULL;
    float *dqn = NULL, *dkn = NULL, *dinv = NULL, *datt = NULL;
    int32_t *dpos = NULL;
    TPUT(dqg, qg, (size_t)n * 2 * qd * 4);
    TPUT(dq, NULL, (size_t)n * qd * 4);
    TPUT(dk, k, (size_t)n * kvd * 4);
    TPUT(dv, v, (size_t)n * kvd * 4);
    TPUT(dkc, kc, rows * kvd * 4);
    TPUT(dvc, vc, rows * kvd * 4);
    if (qn) TPUT(dqn, qn, (size_t)hd * 4);
    if (kn) TPUT(dkn, kn, (size_t)hd * 4);
    TPUT(dinv, inv, (size_t)(rd / 2) * 4);
    TPUT(datt, att, (size_t)n * qd * 4);
    TPUT(dpos, &pos, 4);
    st = gated_qk_rope_enqueue(d.s, dqg, dq, dk, dv, dkc, dvc, dpos, n, nh, nkv, hd, rd, dqn, dkn,
                               eps, dinv);
    if (!st) st = attn_gate_enqueue(d.s, datt, dqg, n, nh, hd);
    st = tget(&d, st, q_out, dq, (size_t)n * qd * 4);
    st = tget(&d, st, kc, dkc, rows * kvd * 4);
    st = tget(&d, st, vc, dvc, rows * kvd * 4);
    st = tget(&d, st, att, datt, (size_t)n * qd * 4);
out:
    tscope_free(&d);
    return st;
}

extern "C" int cuda_test_shared_gate(float *out_, const float *x, const float *gw, int n,
                                     int hidden) {
    TBEGIN
    float *dout = NULL, *dx = NULL, *dg = NULL;
    TPUT(dout, out_, (size_t)n * hidden * 4);
    TPUT(dx, x, (size_t)n * hidden * 4);
    TPUT(dg, gw, (size_t)hidden * 4);
    st = shared_gate_enqueue(d.s, dout, dx, dg, n, hidden);
    st = tget(&d, st, out_, dout, (size_t)n * hidden * 4);
out:
    tscope_free(&d);
    return st;
}
