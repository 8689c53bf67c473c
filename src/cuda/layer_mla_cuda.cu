/*
 * layer_mla_cuda.cu — deepseek_v3 on the GPU (see layer_mla_cuda.cuh):
 * MLA over the device latent cache, the noaux_tc router, the shared
 * experts, and the host-pointer twins of layer_mla_cuda_test.h.
 *
 * One MLA layer for n tokens, every launch on one stream (the same
 * arithmetic as mla_attention's absorbed form, src/layer_mla.c):
 *   q       = q_b(rmsnorm(q_a(x)))  or  q_proj(x)           matmul_cuda
 *   ckv     = kv_a_proj_with_mqa(x)                          matmul_cuda
 *   cache[pos + t] = [rmsnorm(latent), rope(k_rot)], q_rot roped in place
 *                                                     kernel_mla_rope_store
 *   qabs[t, h] = [W_k,hᵀ q_nope, q_rot]                     kernel_mla_absorb
 *   oabs[t, h] = softmax(scale · qabs · cacheᵀ) · cache[:, :r]
 *                                                      kernel_mla_attention
 *   att[t, h]  = W_v,h oabs[t, h]                            kernel_mla_vproj
 *   out (+)=  o_proj(att)                                    matmul_cuda
 * RoPE and the norms use the CPU's float operations one for one (no fused
 * multiply-add: __fmul_rn / __fadd_rn), cos/sin in double then rounded, the
 * frequency table computed on the host exactly as the CPU computes it.
 *
 * The router: kernel_route_noaux, one warp per token, the serial decisions
 * of moe_route_noaux_tc (sigmoid via exp in double rounded to float, which
 * is what glibc's expf returns; group scores = the sum of each group's two
 * best biased scores; groups and experts ranked larger first, NaN last,
 * ties to the lower index; weights from the unbiased scores, summed in
 * selection order, divided by sum + 1e-20, times the scaling factor).
 *
 * Simple first: one block per (head, token) re-reads the latent cache for
 * every head (multi-query: a block per token over all heads would read it
 * once), and the absorb step re-reads kv_b_proj's key rows once per 8
 * tokens. docs/cuda.md lists what to speed up.
 */
#include <math.h>
#include <stdio.h>

#include "cuda/layer_mla_cuda.cuh"
#include "cuda/ops_cuda_dev.cuh"

extern "C" {
#include "cuda/layer_mla_cuda_test.h"
#include "layer_mla.h"
#include "quant.h"
}

/* HF DeepseekV3RMSNorm's default eps for q_a_layernorm / kv_a_layernorm
 * (layer_mla.c: MLA_NORM_EPS), not rms_norm_eps. */
#define MLA_EPS 1e-6f
#define MLA_THREADS 128    /* rope/store, absorb */
#define MLA_ATT_THREADS 256
#define ABS_TB 8           /* tokens per kv_b_proj pass of the absorb step */
#define MAX_SMEM 49152     /* default dynamic shared memory limit */

/* Shapes of one MLA layer. */
struct mla_shape {
    int hidden, nh, qr, r, nope, rope, vd, interleave;
    float scale, mscale;
};

/* Device weights of one MLA layer (pointers into the dense region or, in
 * the tests, their own buffers). */
struct mla_weights {
    const void *wq_a, *wq_b, *wq, *wkv_a, *wkv_b, *wo;
    int dt_qa, dt_qb, dt_q, dt_kva, dt_kvb, dt_o;
    const float *q_a_norm, *kv_a_norm;
};

/* Activations of one launch sequence (device). */
struct mla_bufs {
    float *qa;      /* (n, qr) */
    float *q;       /* (n, nh, nope + rope) */
    float *ckv;     /* (n, r + rope) */
    float *qabs;    /* (n, nh, r + rope) */
    float *oabs;    /* (n, nh, r) */
    float *att;     /* (n, nh * vd) */
    float *scores;  /* (n, nh, n_ctx) */
    int n_ctx;
};

struct mla_cuda_layer {
    mla_weights w;
    const float *sel_bias;              /* (n_experts) or NULL */
    const void *sh_gate, *sh_up, *sh_down;
    struct ffn_shape sh;                /* sh.ffn 0: no shared experts */
};

struct mla_cuda_model {
    mla_shape shape;
    float *d_inv_freq;                  /* (rope / 2) */
    struct mla_cuda_layer *layers;      /* (n_layers) */
    int sh_ffn_max;
};

struct mla_cuda_ctx {
    float *cache;                       /* (n_layers, n_ctx, r + rope) */
    mla_bufs b;
    float *hsh;                         /* (n_batch, sh_ffn_max) */
    float *tsum;                        /* (n_batch, hidden) shared + routed */
};

static mla_shape shape_of(const struct sl_config *c, float mscale) {
    mla_shape s;
    s.hidden = (int)c->hidden;
    s.nh = (int)c->n_heads;
    s.qr = (int)c->q_lora_rank;
    s.r = (int)c->kv_lora_rank;
    s.nope = (int)c->qk_nope_head_dim;
    s.rope = (int)c->qk_rope_head_dim;
    s.vd = (int)c->v_head_dim;
    s.interleave = c->rope_interleave;
    s.scale = mla_attn_scale(c);
    s.mscale = mscale;
    return s;
}

/* The CPU's frequencies: the YaRN table as it is, else ops_rope_neox's
 * 1 / theta^(2i / rope) in float. out: (rope / 2). */
static void rope_table(const struct sl_config *c, const float *yarn, float *out) {
    int half = (int)c->qk_rope_head_dim / 2;
    for (int i = 0; i < half; i++) {
        float e = (float)(2 * i) / (float)c->qk_rope_head_dim;
        out[i] = yarn ? yarn[i] : 1.0f / powf(c->rope_theta, e);
    }
}

/* ---- kernels ------------------------------------------------------------ */

/* grid (n, nh + 1): block hh < nh ropes q_rot of head hh of token t in
 * place; block nh normalises token t's latent into its cache row and
 * ropes its k_rot there. With interleave the pairs (2i, 2i+1) are first
 * laid out as [evens | odds] (layer_mla.c rope_heads). */
__global__ void __launch_bounds__(MLA_THREADS)
    kernel_mla_rope_store(float *q, const float *__restrict__ ckv, float *cache,
                          const int32_t *d_pos, int nh, int nope, int rope, int r,
                          const float *__restrict__ kv_norm, float eps,
                          const float *__restrict__ inv_freq, float mscale, int interleave) {
    extern __shared__ float tmp[]; /* (rope) */
    int t = blockIdx.x, hh = blockIdx.y, tid = threadIdx.x;
    int pos = *d_pos + t, qk = nope + rope, D = r + rope, half = rope / 2;
    const float *src;
    float *dst;
    if (hh < nh) {
        dst = q + ((uint64_t)t * nh + hh) * qk + nope;
        src = dst;
    } else {
        const float *lat = ckv + (uint64_t)t * D;
        float *row = cache + (uint64_t)pos * D;
        double ss = 0;
        for (int i = tid; i < r; i += blockDim.x) ss += (double)lat[i] * lat[i];
        ss = block_sum_d(ss);
        float rr = (float)(1.0 / sqrt(ss / r + (double)eps));
        for (int i = tid; i < r; i += blockDim.x)
            row[i] = __fmul_rn(kv_norm[i], __fmul_rn(lat[i], rr));
        src = lat + r;
        dst = row + r;
    }
    for (int i = tid; i < rope; i += blockDim.x)
        tmp[i] = !interleave ? src[i] : i < half ? src[2 * i] : src[2 * (i - half) + 1];
    __syncthreads(); /* every read of src before any write of dst (q: in place) */
    for (int i = tid; i < half; i += blockDim.x) {
        float f = __fmul_rn((float)pos, inv_freq[i]); /* HF: float32 product */
        float c = __fmul_rn((float)cos((double)f), mscale);
        float sn = __fmul_rn((float)sin((double)f), mscale);
        float a = tmp[i], b = tmp[i + half];
        dst[i] = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, sn));
        dst[i + half] = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, sn));
    }
}

/* grid (nh, ceil(n / ABS_TB)): qabs[t, h, 0:r] = sum_i q_nope[t, h, i] *
 * W[h * (nope + vd) + i, :] in i order (layer_mla.c absorb_task), and
 * qabs[t, h, r:] = q_rot[t, h]. */
template <int DT>
__global__ void __launch_bounds__(MLA_THREADS)
    kernel_mla_absorb(const float *__restrict__ q, const uint8_t *__restrict__ W, uint64_t rb,
                      float *__restrict__ qabs, int n, int nh, int nope, int rope, int vd,
                      int r) {
    int h = blockIdx.x, t0 = blockIdx.y * ABS_TB, qk = nope + rope, D = r + rope;
    int nt = n - t0 < ABS_TB ? n - t0 : ABS_TB;
    for (int j = threadIdx.x; j < r; j += blockDim.x) {
        float acc[ABS_TB];
#pragma unroll
        for (int tt = 0; tt < ABS_TB; tt++) acc[tt] = 0.f;
        for (int i = 0; i < nope; i++) {
            float w = row_elem<DT>(W + (uint64_t)(h * (nope + vd) + i) * rb, j, r);
#pragma unroll
            for (int tt = 0; tt < ABS_TB; tt++)
                if (tt < nt)
                    acc[tt] = __fadd_rn(acc[tt],
                                        __fmul_rn(q[((uint64_t)(t0 + tt) * nh + h) * qk + i], w));
        }
#pragma unroll
        for (int tt = 0; tt < ABS_TB; tt++)
            if (tt < nt) qabs[((uint64_t)(t0 + tt) * nh + h) * D + j] = acc[tt];
    }
    for (int idx = threadIdx.x; idx < nt * rope; idx += blockDim.x) {
        int tt = idx / rope, i = idx % rope;
        qabs[((uint64_t)(t0 + tt) * nh + h) * D + r + i] =
            q[((uint64_t)(t0 + tt) * nh + h) * qk + nope + i];
    }
}

/* grid (nh, n): multi-query attention of head h of token t over cache rows
 * 0 .. *d_pos + t (keys: the whole row; values: its first r floats).
 * Scores in global scratch (any context length), softmax with a double sum
 * as kernel_attention. */
__global__ void __launch_bounds__(MLA_ATT_THREADS)
    kernel_mla_attention(const float *__restrict__ qabs, const float *__restrict__ cache,
                         float *__restrict__ oabs, float *scores, const int32_t *d_pos, int nh,
                         int r, int D, int n_ctx, float scale) {
    extern __shared__ float qs[]; /* (D) */
    __shared__ float red[32];
    int h = blockIdx.x, t = blockIdx.y, tid = threadIdx.x;
    int lane = tid & 31, wid = tid >> 5, nw = blockDim.x >> 5;
    int np = *d_pos + t + 1;
    const float *qh = qabs + ((uint64_t)t * nh + h) * D;
    for (int i = tid; i < D; i += blockDim.x) qs[i] = qh[i];
    __syncthreads();
    float *sc = scores + ((uint64_t)t * nh + h) * n_ctx;
    for (int p = wid; p < np; p += nw) {
        const float *kr = cache + (uint64_t)p * D;
        float d = 0.f;
        for (int i = lane; i < D; i += 32) d += qs[i] * kr[i];
        d = warp_sum(d);
        if (lane == 0) sc[p] = d * scale;
    }
    __syncthreads();
    float mx = -INFINITY;
    for (int p = tid; p < np; p += blockDim.x) mx = fmaxf(mx, sc[p]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    if (lane == 0) red[wid] = mx;
    __syncthreads();
    mx = red[0];
    for (int i = 1; i < nw; i++) mx = fmaxf(mx, red[i]);
    double sum = 0;
    for (int p = tid; p < np; p += blockDim.x) {
        float e = expf(sc[p] - mx);
        sc[p] = e;
        sum += e;
    }
    sum = block_sum_d(sum); /* its barriers also publish sc[] */
    float inv = (float)(1.0 / sum);
    for (int j = tid; j < r; j += blockDim.x) {
        float acc = 0.f;
        for (int p = 0; p < np; p++) acc += sc[p] * cache[(uint64_t)p * D + j];
        oabs[((uint64_t)t * nh + h) * r + j] = acc * inv;
    }
}

/* grid (ceil(nh * vd / 8), n), one warp per output: att[t, h * vd + d] =
 * W[h * (nope + vd) + nope + d, :] · oabs[t, h] (row_dot of ops_cuda). */
template <int DT, bool A>
__global__ void __launch_bounds__(MM_THREADS)
    kernel_mla_vproj(const uint8_t *__restrict__ W, uint64_t rb, const float *__restrict__ oabs,
                     float *__restrict__ att, int nh, int nope, int vd, int r) {
    int row = blockIdx.x * (MM_THREADS / 32) + threadIdx.x / 32, lane = threadIdx.x & 31;
    int t = blockIdx.y;
    if (row >= nh * vd) return;
    int h = row / vd, d = row % vd;
    const uint8_t *w = W + (uint64_t)(h * (nope + vd) + nope + d) * rb;
    const float *xs[1] = {oabs + ((uint64_t)t * nh + h) * r};
    float acc[1] = {0.f};
    row_dot<DT, 1, A>(w, r, xs, acc, lane);
    float v = warp_sum(acc[0]);
    if (lane == 0) att[(uint64_t)t * nh * vd + row] = v;
}

/* One warp per token: moe_route_noaux_tc's decisions (see the file
 * comment). Shared: sc (ne) sigmoid scores, cv (ne) choice scores, taken
 * (ne bytes). */
__global__ void kernel_route_noaux(const float *__restrict__ logits,
                                   const float *__restrict__ bias, int ne, int k, int ng,
                                   int tg, int norm, float scaling, int32_t *ids, float *w,
                                   uint8_t *const *table, part_off off, moe_item *items,
                                   int32_t *sel, int32_t *n_items) {
    extern __shared__ float sm[];
    float *sc = sm, *cv = sm + ne;
    uint8_t *taken = (uint8_t *)(sm + 2 * ne);
    __shared__ float gs[SL_MAX_GROUPS];
    __shared__ uint8_t keep[SL_MAX_GROUPS];
    __shared__ float vals[64];
    __shared__ int32_t idx[64];
    int t = blockIdx.x, lane = threadIdx.x, per = ne / ng;
    const float *l = logits + (uint64_t)t * ne;
    for (int e = lane; e < ne; e += 32) {
        float s = __fdiv_rn(1.0f, __fadd_rn(1.0f, (float)exp(-(double)l[e])));
        sc[e] = s;
        cv[e] = bias ? __fadd_rn(s, bias[e]) : s;
        taken[e] = 0;
    }
    __syncwarp();
    for (int g = lane; g < ng; g += 32) { /* the two best of the group */
        float v0 = 0.f, v1 = 0.f;
        int i0 = -1, i1 = -1;
        for (int j = 0; j < per; j++) {
            int e = g * per + j;
            float v = cv[e];
            if (topk_before(v, e, v0, i0)) {
                v1 = v0, i1 = i0;
                v0 = v, i0 = e;
            } else if (topk_before(v, e, v1, i1)) {
                v1 = v, i1 = e;
            }
        }
        gs[g] = __fadd_rn(v0, v1);
        keep[g] = 0;
    }
    __syncwarp();
    if (lane == 0) /* the tg best groups */
        for (int s = 0; s < tg; s++) {
            float bv = 0.f;
            int bi = -1;
            for (int g = 0; g < ng; g++)
                if (!keep[g] && topk_before(gs[g], g, bv, bi)) bv = gs[g], bi = g;
            keep[bi] = 1;
        }
    __syncwarp();
    for (int s = 0; s < k; s++) { /* the k best experts of the kept groups */
        float bv = 0.f;
        int bi = -1;
        for (int e = lane; e < ne; e += 32)
            if (!taken[e] && keep[e / per] && topk_before(cv[e], e, bv, bi)) bv = cv[e], bi = e;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (topk_before(ov, oi, bv, bi)) bv = ov, bi = oi;
        }
        if (lane == 0) {
            idx[s] = bi;
            taken[bi] = 1;
        }
        __syncwarp();
    }
    if (lane == 0) {
        float sum = 0.f;
        for (int s = 0; s < k; s++) {
            vals[s] = sc[idx[s]];
            sum = __fadd_rn(sum, vals[s]);
        }
        if (norm) {
            float d = __fadd_rn(sum, 1e-20f);
            for (int s = 0; s < k; s++) vals[s] = __fdiv_rn(vals[s], d);
        }
        for (int s = 0; s < k; s++) vals[s] = __fmul_rn(vals[s], scaling);
    }
    __syncwarp();
    for (int s = lane; s < k; s += 32) {
        ids[(uint64_t)t * k + s] = idx[s];
        w[(uint64_t)t * k + s] = vals[s];
        if (table && gridDim.x == 1) { /* decode: one item per selection */
            const uint8_t *base = table[idx[s]];
            items[s] = moe_item{base + off.o[0], base + off.o[1], base + off.o[2], s, 1};
            sel[s] = s;
        }
    }
    if (table && gridDim.x == 1 && lane == 0) *n_items = k;
}

/* ---- launchers ---------------------------------------------------------- */

/* Whether the groups fit (moe_route_noaux_tc's check, same message). */
static int noaux_fits(int ne, int k, int ng, int tg) {
    if (ng < 1 || ng > SL_MAX_GROUPS || ne % ng || ne / ng < 2 || tg < 1 || tg > ng || k < 1 ||
        k > tg * (ne / ng) || k > 64 || ne > 4096)
        return sl_seterr(SL_ERR_ARG, "noaux_tc routing: %d experts, n_group %d, topk_group %d, "
                         "top-%d do not fit", ne, ng, tg, k);
    return SL_OK;
}

static int route_noaux_cuda(cudaStream_t s, const float *logits, const float *bias, int n,
                            int ne, int k, int ng, int tg, int norm, float scaling,
                            int32_t *ids, float *w, uint8_t *const *table, part_off off,
                            moe_item *items, int32_t *sel, int32_t *n_items) {
    int st = noaux_fits(ne, k, ng, tg);
    if (st) return st;
    size_t smem = (size_t)ne * (2 * sizeof(float) + 1);
    kernel_route_noaux<<<n, 32, smem, s>>>(logits, bias, ne, k, ng, tg, norm, scaling, ids, w,
                                           n == 1 ? table : NULL, off, items, sel, n_items);
    return launched("kernel_route_noaux");
}

/* Every kernel of one MLA layer (file comment): xb (n, hidden) → out (n,
 * hidden), written (accumulate 0) or added to (1); cache: this layer's
 * (n_ctx, r + rope) rows. */
static int mla_enqueue(cudaStream_t s, const mla_shape &sh, const mla_weights &w,
                       const float *inv_freq, float *cache, const int32_t *d_pos,
                       const float *xb, float *out, int accumulate, int n, const mla_bufs &b) {
    int qk = sh.nope + sh.rope, D = sh.r + sh.rope, st;
    if (sh.qr) {
        if ((st = matmul_cuda(s, w.dt_qa, w.wq_a, xb, b.qa, n, sh.qr, sh.hidden, NULL, 0)) ||
            (st = rmsnorm_cuda(s, b.qa, w.q_a_norm, b.qa, n, sh.qr, MLA_EPS)) ||
            (st = matmul_cuda(s, w.dt_qb, w.wq_b, b.qa, b.q, n, sh.nh * qk, sh.qr, NULL, 0)))
            return st;
    } else if ((st = matmul_cuda(s, w.dt_q, w.wq, xb, b.q, n, sh.nh * qk, sh.hidden, NULL, 0))) {
        return st;
    }
    if ((st = matmul_cuda(s, w.dt_kva, w.wkv_a, xb, b.ckv, n, D, sh.hidden, NULL, 0))) return st;
    kernel_mla_rope_store<<<dim3(n, sh.nh + 1), MLA_THREADS, (size_t)sh.rope * sizeof(float), s>>>(
        b.q, b.ckv, cache, d_pos, sh.nh, sh.nope, sh.rope, sh.r, w.kv_a_norm, MLA_EPS, inv_freq,
        sh.mscale, sh.interleave);
    if ((st = launched("kernel_mla_rope_store"))) return st;
    uint64_t rb = quant_row_bytes(w.dt_kvb, (uint64_t)sh.r);
    const uint8_t *W = (const uint8_t *)w.wkv_b;
    dim3 ga(sh.nh, (n + ABS_TB - 1) / ABS_TB);
#define ABS_CASE(DT)                                                                     \
    kernel_mla_absorb<DT><<<ga, MLA_THREADS, 0, s>>>(b.q, W, rb, b.qabs, n, sh.nh, sh.nope, \
                                                     sh.rope, sh.vd, sh.r)
    DISPATCH_DT(w.dt_kvb, ABS_CASE)
#undef ABS_CASE
    if ((st = launched("kernel_mla_absorb"))) return st;
    kernel_mla_attention<<<dim3(sh.nh, n), MLA_ATT_THREADS, (size_t)D * sizeof(float), s>>>(
        b.qabs, cache, b.oabs, b.scores, d_pos, sh.nh, sh.r, D, b.n_ctx, sh.scale);
    if ((st = launched("kernel_mla_attention"))) return st;
    bool al = rows_aligned(W, rb, sh.r);
    dim3 gv((sh.nh * sh.vd + MM_THREADS / 32 - 1) / (MM_THREADS / 32), n);
#define VP_CASE(DT)                                                                            \
    if (al)                                                                                    \
        kernel_mla_vproj<DT, true><<<gv, MM_THREADS, 0, s>>>(W, rb, b.oabs, b.att, sh.nh,      \
                                                             sh.nope, sh.vd, sh.r);            \
    else                                                                                       \
        kernel_mla_vproj<DT, false><<<gv, MM_THREADS, 0, s>>>(W, rb, b.oabs, b.att, sh.nh,     \
                                                              sh.nope, sh.vd, sh.r);
    DISPATCH_DT(w.dt_kvb, VP_CASE)
#undef VP_CASE
    if ((st = launched("kernel_mla_vproj"))) return st;
    return matmul_cuda(s, w.dt_o, w.wo, b.att, out, n, sh.hidden, sh.nh * sh.vd, NULL,
                       accumulate);
}

/* ---- the model ------------------------------------------------------------ */

int mla_cuda_check(const struct sl_model *m) {
    const struct sl_config *c = &m->cfg;
    const char *what = NULL;
    char buf[160];
    if (!c->kv_lora_rank) what = "deepseek_v3 without MLA (kv_lora_rank 0)";
    else if (c->sliding_window || c->attn_sinks || c->expert_bias || c->swiglu_limit > 0 ||
             c->attn_gate || config_is_hybrid(c))
        what = "MLA combined with sliding windows, sinks, expert biases, clamped SwiGLU or "
               "gated attention";
    else if ((c->kv_lora_rank + c->qk_rope_head_dim) * sizeof(float) > MAX_SMEM ||
             c->qk_rope_head_dim * sizeof(float) > MAX_SMEM)
        what = "kv_lora_rank + qk_rope_head_dim over 12288";
    else if (c->n_experts > 4096 || c->n_experts_used > 64) what = "over 4096 experts or top-64";
    else if (c->router_kind == SL_ROUTER_NOAUX_TC &&
             noaux_fits((int)c->n_experts, (int)c->n_experts_used, (int)c->n_group,
                        (int)c->topk_group)) {
        snprintf(buf, sizeof buf, "this router grouping (%s)", sl_errmsg());
        what = buf;
    }
    for (uint32_t l = 0; !what && l < c->n_layers; l++) {
        const struct layer_weights *L = &m->layers[l];
        if (L->sh_gate.data && L->sh_gate.dtype != L->sh_up.dtype) {
            snprintf(buf, sizeof buf, "shared-expert gate and up in different formats "
                     "(layer %u: %s, %s)", l, sl_dtype_name(L->sh_gate.dtype),
                     sl_dtype_name(L->sh_up.dtype));
            what = buf;
        } else if (L->sh_expert_gate || L->router_b) {
            what = "a gated shared expert or a router bias with MLA";
        }
    }
    if (!what) return SL_OK;
    return sl_seterr(SL_ERR_UNSUPPORTED, "the CUDA backend does not run %s yet (model %s); "
                     "HINT: --device cpu", what, c->model_type);
}

void mla_cuda_model_free(struct mla_cuda_model *mm) {
    if (!mm) return;
    if (mm->d_inv_freq) cudaFree(mm->d_inv_freq);
    sl_free(mm->layers);
    sl_free(mm);
}

/* Device pointer of a host pointer into the uploaded dense region. */
static const void *dev_of(const struct cuda_model *cm, const void *h) {
    if (!h) return NULL;
    return cm->d_dense + ((const uint8_t *)h - cm->h_dense);
}

static int in_dense(const struct cuda_model *cm, const void *h) {
    const uint8_t *p = (const uint8_t *)h;
    return !h || (p >= cm->h_dense && p < cm->h_dense + cm->dense_span);
}

int mla_cuda_model_create(struct cuda_model *cm) {
    const struct sl_model *m = cm->m;
    const struct sl_config *c = &m->cfg;
    struct mla_cuda_model *mm = (struct mla_cuda_model *)sl_calloc(1, sizeof *mm);
    if (!mm) return sl_seterr(SL_ERR_NOMEM, "out of memory");
    cm->mla = mm;
    mm->shape = shape_of(c, m->rope_inv_freq ? m->rope_mscale : 1.0f);
    mm->layers = (struct mla_cuda_layer *)sl_calloc(c->n_layers, sizeof *mm->layers);
    if (!mm->layers) return sl_seterr(SL_ERR_NOMEM, "out of memory");
    for (uint32_t l = 0; l < c->n_layers; l++) {
        const struct layer_weights *L = &m->layers[l];
        struct mla_cuda_layer *g = &mm->layers[l];
        const void *hp[] = {L->wq_a.data, L->wq_b.data, L->wq.data, L->wkv_a.data,
                            L->wkv_b.data, L->wo.data, L->q_a_norm, L->kv_a_norm,
                            L->router_sel_bias, L->sh_gate.data, L->sh_up.data,
                            L->sh_down.data};
        for (size_t i = 0; i < sizeof hp / sizeof *hp; i++)
            if (!in_dense(cm, hp[i]))
                return sl_seterr(SL_ERR_INTERNAL, "CUDA: layer %u: an MLA weight outside "
                                 "the dense region", l);
        mla_weights *w = &g->w;
        w->wq_a = dev_of(cm, L->wq_a.data), w->dt_qa = L->wq_a.dtype;
        w->wq_b = dev_of(cm, L->wq_b.data), w->dt_qb = L->wq_b.dtype;
        w->wq = dev_of(cm, L->wq.data), w->dt_q = L->wq.dtype;
        w->wkv_a = dev_of(cm, L->wkv_a.data), w->dt_kva = L->wkv_a.dtype;
        w->wkv_b = dev_of(cm, L->wkv_b.data), w->dt_kvb = L->wkv_b.dtype;
        w->wo = dev_of(cm, L->wo.data), w->dt_o = L->wo.dtype;
        w->q_a_norm = (const float *)dev_of(cm, L->q_a_norm);
        w->kv_a_norm = (const float *)dev_of(cm, L->kv_a_norm);
        g->sel_bias = (const float *)dev_of(cm, L->router_sel_bias);
        if (L->sh_gate.data) {
            g->sh_gate = dev_of(cm, L->sh_gate.data);
            g->sh_up = dev_of(cm, L->sh_up.data);
            g->sh_down = dev_of(cm, L->sh_down.data);
            struct ffn_shape s = {};
            s.hidden = (int)c->hidden;
            s.ffn = (int)L->sh_gate.rows;
            s.dt_gu = L->sh_gate.dtype;
            s.dt_down = L->sh_down.dtype;
            s.rb_gu = quant_row_bytes(s.dt_gu, (uint64_t)s.hidden);
            s.rb_down = quant_row_bytes(s.dt_down, (uint64_t)s.ffn);
            s.aligned_gu = (uintptr_t)g->sh_gate % 16 == 0 && (uintptr_t)g->sh_up % 16 == 0 &&
                           s.rb_gu % 16 == 0 && s.hidden % 8 == 0;
            s.aligned_down = (uintptr_t)g->sh_down % 16 == 0 && s.rb_down % 16 == 0 &&
                             s.ffn % 8 == 0;
            g->sh = s;
            if (s.ffn > mm->sh_ffn_max) mm->sh_ffn_max = s.ffn;
        }
    }
    int half = (int)c->qk_rope_head_dim / 2;
    float inv[1024];
    rope_table(c, m->rope_inv_freq, inv); /* qk_rope_head_dim <= 2048 (config.c: 1024) */
    CU_TRY(cudaMalloc(&mm->d_inv_freq, (size_t)half * sizeof(float)));
    CU_TRY(cudaMemcpy(mm->d_inv_freq, inv, (size_t)half * sizeof(float), cudaMemcpyHostToDevice));
    return SL_OK;
}

/* ---- contexts ------------------------------------------------------------- */

void mla_cuda_ctx_free(struct mla_cuda_ctx *mc) {
    if (!mc) return;
    void *p[] = {mc->cache, mc->b.qa, mc->b.q, mc->b.ckv, mc->b.qabs, mc->b.oabs, mc->b.att,
                 mc->hsh, mc->tsum};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++)
        if (p[i]) cudaFree(p[i]);
    sl_free(mc);
}

int mla_cuda_ctx_create(const struct sl_context *ctx, struct cuda_ctx *cc) {
    const struct sl_config *c = &ctx->model->cfg;
    const struct mla_cuda_model *mm = ctx->model->cuda->mla;
    struct mla_cuda_ctx *mc = (struct mla_cuda_ctx *)sl_calloc(1, sizeof *mc);
    if (!mc) return sl_seterr(SL_ERR_NOMEM, "out of memory");
    cc->mla = mc;
    uint64_t B = ctx->n_batch, nh = c->n_heads, r = c->kv_lora_rank;
    uint64_t D = config_mla_cache_dim(c), qk = config_qk_head_dim(c);
    uint64_t cache = (uint64_t)c->n_layers * ctx->n_ctx * D;
    struct {
        float **p;
        uint64_t floats;
    } d[] = {
        {&mc->cache, cache},
        {&mc->b.qa, B * (c->q_lora_rank ? c->q_lora_rank : 1)},
        {&mc->b.q, B * nh * qk},
        {&mc->b.ckv, B * D},
        {&mc->b.qabs, B * nh * D},
        {&mc->b.oabs, B * nh * r},
        {&mc->b.att, B * nh * c->v_head_dim},
        {&mc->hsh, B * (mm->sh_ffn_max ? (uint64_t)mm->sh_ffn_max : 1)},
        {&mc->tsum, B * c->hidden},
    };
    for (size_t i = 0; i < sizeof d / sizeof *d; i++) {
        cudaError_t e = cudaMalloc((void **)d[i].p, d[i].floats * sizeof(float));
        if (e != cudaSuccess) {
            cudaGetLastError();
            *d[i].p = NULL;
            return sl_seterr(SL_ERR_NOMEM, "out of device memory for the MLA latent cache and "
                             "activations of a context of %u positions (latent cache %.2f "
                             "GiB): %s; HINT: lower --ctx", ctx->n_ctx,
                             cache * 4.0 / (1024.0 * 1024.0 * 1024.0), cudaGetErrorString(e));
        }
    }
    CU_TRY(cudaMemset(mc->cache, 0, cache * sizeof(float)));
    mc->b.scores = cc->scores; /* (n_batch, n_heads, n_ctx), cuda_ctx_create's */
    mc->b.n_ctx = (int)ctx->n_ctx;
    return SL_OK;
}

/* ---- forward-pass hooks ----------------------------------------------------- */

int mla_attention_block_cuda(struct cuda_model *cm, struct cuda_ctx *cc,
                             struct sl_context *ctx, uint32_t l, int n) {
    const struct sl_config *c = &ctx->model->cfg;
    const struct gpu_layer *g = &cm->layers[l];
    const struct mla_cuda_model *mm = cm->mla;
    struct mla_cuda_ctx *mc = cc->mla;
    cudaStream_t s = cc->stream;
    int hid = (int)c->hidden, st;
    float *cache = mc->cache + (uint64_t)l * ctx->n_ctx * config_mla_cache_dim(c);
    if ((st = rmsnorm_cuda(s, cc->x, g->attn_norm, cc->xb, n, hid, c->rms_eps)) ||
        (st = mla_enqueue(s, mm->shape, mm->layers[l].w, mm->d_inv_freq, cache, cc->d_io,
                          cc->xb, cc->x, 1, n, mc->b)))
        return st;
    return rmsnorm_cuda(s, cc->x, g->ffn_norm, cc->xb, n, hid, c->rms_eps);
}

int route_noaux_layer_cuda(const struct cuda_model *cm, uint32_t l, cudaStream_t s,
                           const float *logits, int n, int32_t *ids, float *w,
                           uint8_t *const *table, struct part_off off,
                           struct moe_item *items, int32_t *sel, int32_t *n_items) {
    const struct sl_config *c = &cm->m->cfg;
    if (!cm->mla)
        return sl_seterr(SL_ERR_INTERNAL, "CUDA: noaux_tc routing without the deepseek state");
    return route_noaux_cuda(s, logits, cm->mla->layers[l].sel_bias, n, (int)c->n_experts,
                            (int)c->n_experts_used, (int)c->n_group, (int)c->topk_group,
                            c->norm_topk_prob, c->routed_scaling_factor, ids, w, table, off,
                            items, sel, n_items);
}

/* x[i] += t[i], i < count. */
__global__ void kernel_mla_add(float *x, const float *__restrict__ t, uint64_t count) {
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < count;
         i += (uint64_t)gridDim.x * blockDim.x)
        x[i] = __fadd_rn(x[i], t[i]);
}

int mla_moe_cuda(struct cuda_model *cm, struct cuda_ctx *cc, struct sl_context *ctx,
                 uint32_t l, int n, int router_done, mla_routed_fn routed) {
    const struct mla_cuda_layer *g = cm->mla ? &cm->mla->layers[l] : NULL;
    if (!g || !g->sh.ffn) return routed(cm, cc, ctx, l, n, router_done);
    cudaStream_t s = cc->stream;
    struct mla_cuda_ctx *mc = cc->mla;
    moe_item one = {(const uint8_t *)g->sh_gate, (const uint8_t *)g->sh_up,
                    (const uint8_t *)g->sh_down, 0, n};
    int maxc = n == 1 ? 1 : 2, st;
    if ((st = expert_gate_up_cuda(s, &g->sh, NULL, NULL, 1, one, cc->iota, 1, cc->xb, mc->hsh,
                                  maxc)) ||
        (st = expert_down_cuda(s, &g->sh, NULL, NULL, 1, one, cc->iota, 1, mc->hsh, mc->tsum, 0,
                               maxc)))
        return st;
    float *x = cc->x;
    cc->x = mc->tsum; /* the routed experts add onto the shared output */
    st = routed(cm, cc, ctx, l, n, router_done);
    cc->x = x;
    if (st) return st;
    uint64_t count = (uint64_t)n * cm->m->cfg.hidden;
    int blocks = (int)((count + 255) / 256 < 1024 ? (count + 255) / 256 : 1024);
    kernel_mla_add<<<blocks, 256, 0, s>>>(cc->x, mc->tsum, count);
    return launched("kernel_mla_add");
}

/* ---- test twins (layer_mla_cuda_test.h) -------------------------------------- */

/* Device allocations of one twin, freed together. */
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

/* A device copy of bytes, or NaN-filled when src is NULL. */
static int tput(struct tscope *d, void **out, const void *src, size_t bytes) {
    void *p = NULL;
    *out = NULL;
    if (d->n == (int)(sizeof d->p / sizeof *d->p))
        return sl_seterr(SL_ERR_INTERNAL, "test twin: too many buffers");
    CU_TRY(cudaMalloc(&p, bytes ? bytes : 4));
    d->p[d->n++] = p;
    if (src) CU_TRY(cudaMemcpy(p, src, bytes, cudaMemcpyHostToDevice));
    else CU_TRY(cudaMemset(p, 0xff, bytes ? bytes : 4));
    *out = p;
    return SL_OK;
}

static int tput_w(struct tscope *d, const void **out, const struct weight *w) {
    void *p = NULL;
    int st = tput(d, &p, w->data, w->rows * quant_row_bytes(w->dtype, w->cols));
    *out = p;
    return st;
}

static int tfinish(struct tscope *d, int st) {
    if (!st) {
        cudaError_t e = cudaStreamSynchronize(d->s);
        if (e != cudaSuccess) st = cuda_fail(e, "test kernel");
    }
    return st;
}

extern "C" int cuda_test_mla_attention(const struct sl_config *c, const struct layer_weights *L,
                                       const float *inv_freq, float mscale, float *cache,
                                       const float *x, float *out, int pos, int n) {
    struct tscope d = {};
    if (cudaStreamCreate(&d.s) != cudaSuccess) return cuda_fail(cudaGetLastError(), "stream");
    mla_shape sh = shape_of(c, inv_freq ? mscale : 1.0f);
    int D = sh.r + sh.rope, qk = sh.nope + sh.rope, n_ctx = pos + n, st = SL_OK;
    float inv[1024];
    rope_table(c, inv_freq, inv);
    mla_weights w = {};
    mla_bufs b = {};
    float *dinv = NULL, *dcache = NULL, *dx = NULL, *dout = NULL;
    int32_t *dpos = NULL;
#define TPUT(ptr, src, bytes)                                                  \
    do {                                                                       \
        void *p_ = NULL;                                                       \
        if ((st = tput(&d, &p_, (src), (bytes)))) goto out;                    \
        (ptr) = (decltype(ptr))p_;                                             \
    } while (0)
    if (sh.qr) {
        if ((st = tput_w(&d, &w.wq_a, &L->wq_a)) || (st = tput_w(&d, &w.wq_b, &L->wq_b))) goto out;
        TPUT(w.q_a_norm, L->q_a_norm, (size_t)sh.qr * 4);
        w.dt_qa = L->wq_a.dtype, w.dt_qb = L->wq_b.dtype;
    } else {
        if ((st = tput_w(&d, &w.wq, &L->wq))) goto out;
        w.dt_q = L->wq.dtype;
    }
    if ((st = tput_w(&d, &w.wkv_a, &L->wkv_a)) || (st = tput_w(&d, &w.wkv_b, &L->wkv_b)) ||
        (st = tput_w(&d, &w.wo, &L->wo)))
        goto out;
    w.dt_kva = L->wkv_a.dtype, w.dt_kvb = L->wkv_b.dtype, w.dt_o = L->wo.dtype;
    TPUT(w.kv_a_norm, L->kv_a_norm, (size_t)sh.r * 4);
    TPUT(dinv, inv, (size_t)(sh.rope / 2) * 4);
    TPUT(dpos, &pos, 4);
    TPUT(dcache, NULL, (size_t)n_ctx * D * 4);
    if (pos && cudaMemcpy(dcache, cache, (size_t)pos * D * 4, cudaMemcpyHostToDevice) !=
                   cudaSuccess) {
        st = cuda_fail(cudaGetLastError(), "upload");
        goto out;
    }
    TPUT(dx, x, (size_t)n * sh.hidden * 4);
    TPUT(dout, NULL, (size_t)n * sh.hidden * 4);
    TPUT(b.qa, NULL, (size_t)n * (sh.qr ? sh.qr : 1) * 4);
    TPUT(b.q, NULL, (size_t)n * sh.nh * qk * 4);
    TPUT(b.ckv, NULL, (size_t)n * D * 4);
    TPUT(b.qabs, NULL, (size_t)n * sh.nh * D * 4);
    TPUT(b.oabs, NULL, (size_t)n * sh.nh * sh.r * 4);
    TPUT(b.att, NULL, (size_t)n * sh.nh * sh.vd * 4);
    TPUT(b.scores, NULL, (size_t)n * sh.nh * n_ctx * 4);
    b.n_ctx = n_ctx;
    st = tfinish(&d, mla_enqueue(d.s, sh, w, dinv, dcache, dpos, dx, dout, 0, n, b));
    if (!st && (cudaMemcpy(out, dout, (size_t)n * sh.hidden * 4, cudaMemcpyDeviceToHost) !=
                    cudaSuccess ||
                cudaMemcpy(cache, dcache, (size_t)n_ctx * D * 4, cudaMemcpyDeviceToHost) !=
                    cudaSuccess))
        st = cuda_fail(cudaGetLastError(), "download");
out:
    tscope_free(&d);
    return st;
}

extern "C" int cuda_test_route_noaux(const struct sl_config *c, const float *logits,
                                     const float *sel_bias, int n, int32_t *ids, float *w) {
    int ne = (int)c->n_experts, k = (int)c->n_experts_used, st = SL_OK;
    if ((st = noaux_fits(ne, k, (int)c->n_group, (int)c->topk_group))) return st;
    struct tscope d = {};
    if (cudaStreamCreate(&d.s) != cudaSuccess) return cuda_fail(cudaGetLastError(), "stream");
    float *dl = NULL, *db = NULL, *dw = NULL;
    int32_t *di = NULL;
    part_off off = {};
    TPUT(dl, logits, (size_t)n * ne * 4);
    if (sel_bias) TPUT(db, sel_bias, (size_t)ne * 4);
    TPUT(di, NULL, (size_t)n * k * 4);
    TPUT(dw, NULL, (size_t)n * k * 4);
    st = tfinish(&d, route_noaux_cuda(d.s, dl, db, n, ne, k, (int)c->n_group,
                                      (int)c->topk_group, c->norm_topk_prob,
                                      c->routed_scaling_factor, di, dw, NULL, off, NULL, NULL,
                                      NULL));
    if (!st && (cudaMemcpy(ids, di, (size_t)n * k * 4, cudaMemcpyDeviceToHost) != cudaSuccess ||
                cudaMemcpy(w, dw, (size_t)n * k * 4, cudaMemcpyDeviceToHost) != cudaSuccess))
        st = cuda_fail(cudaGetLastError(), "download");
out:
    tscope_free(&d);
    return st;
#undef TPUT
}
