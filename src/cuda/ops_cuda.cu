/*
 * ops_cuda.cu — the CUDA backend's kernels (kernel_<op>) and their host
 * launchers (<op>_cuda); contracts in ops_cuda.cuh.
 *
 * Weight rows are read exactly as src/quant.h lays them out:
 *   Q8: [cols int8][cols/32 f16 d]           w = d * q
 *   Q4: [cols/2 nibble bytes][f16 d][f16 m]   w = d * q + m, byte j of
 *       block b holds q[32b + j] (low) and q[32b + j + 16] (high)
 * One warp computes one output row: its lanes stride over 32-element
 * blocks (Q8/Q4) or 8-element chunks (BF16/F16; 4 for F32) with 16-byte
 * loads, each decoded chunk is used for up to TB tokens (a prompt chunk
 * reads every weight once per TB tokens), and a shuffle reduction ends it.
 * A row that is not 16-byte aligned (tiny models: q4 rows of 64 columns are
 * 40 bytes) takes the element-wise path (A = false). Every token's dot
 * product is computed the same way whatever the other tokens of its group,
 * so outputs do not depend on how tokens are grouped per expert.
 *
 * Not here: the one-token decode kernels (ops_decode_cuda.cu; shared
 * helpers in ops_cuda_dev.cuh), scheduling, the expert cache, the model
 * (forward_cuda.cu).
 */
#include <cuda_fp16.h>
#include <math.h>
#include <stdlib.h>

#include "cuda/ops_cuda_dev.cuh"


int cuda_fail(cudaError_t e, const char *what) {
    return sl_seterr(e == cudaErrorMemoryAllocation ? SL_ERR_NOMEM : SL_ERR_IO,
                     "CUDA error in %s: %s (%s)", what, cudaGetErrorString(e),
                     cudaGetErrorName(e));
}

int cuda_tune(const char *name, int dflt) {
    const char *v = getenv(name);
    return v && *v ? atoi(v) : dflt;
}

/* ---- matmul ------------------------------------------------------------ */

template <int DT, int TB, bool A>
__global__ void __launch_bounds__(MM_THREADS)
    kernel_matmul(const uint8_t *__restrict__ W, uint64_t rb, const float *__restrict__ X,
                  float *__restrict__ Y, int n, int rows, int cols,
                  const float *__restrict__ bias, int accumulate) {
    int r = blockIdx.x * (MM_THREADS / 32) + threadIdx.x / 32, lane = threadIdx.x & 31;
    if (r >= rows) return;
    const uint8_t *row = W + (uint64_t)r * rb;
    float b = bias ? bias[r] : 0.f;
    for (int t0 = 0; t0 < n; t0 += TB) {
        const float *xs[TB];
        float acc[TB];
#pragma unroll
        for (int i = 0; i < TB; i++) {
            xs[i] = X + (uint64_t)min(t0 + i, n - 1) * cols;
            acc[i] = 0.f;
        }
        row_dot<DT, TB, A>(row, cols, xs, acc, lane);
#pragma unroll
        for (int i = 0; i < TB; i++) {
            float v = warp_sum(acc[i]);
            if (lane == i && t0 + i < n) {
                float *y = Y + (uint64_t)(t0 + i) * rows + r;
                *y = accumulate ? *y + (v + b) : v + b;
            }
        }
    }
}

int matmul_cuda(cudaStream_t s, int dtype, const void *w, const float *X, float *Y, int n,
                int rows, int cols, const float *bias, int accumulate) {
    uint64_t rb = quant_row_bytes(dtype, (uint64_t)cols);
    if (rb == 0 || n < 1 || rows < 1)
        return sl_seterr(SL_ERR_ARG, "matmul_cuda: bad shape (%s, %d x %d, n %d)",
                         sl_dtype_name(dtype), rows, cols, n);
    bool al = rows_aligned(w, rb, cols);
    dim3 grid((rows + MM_THREADS / 32 - 1) / (MM_THREADS / 32));
    const uint8_t *W = (const uint8_t *)w;
    if (n == 1 && matvec_ok(dtype, w, cols)) {
        mv_args a = {};
        a.W[0] = W;
        a.y[0] = Y;
        a.bias[0] = bias;
        a.rows[0] = rows;
        a.nseg = 1;
        a.rb = rb;
        a.cols = cols;
        a.accumulate = accumulate;
        return matvec_run(s, dtype, a, X);
    }
#define MM_CASE(DT)                                                                      \
    if (n == 1 && al)                                                                    \
        kernel_matmul<DT, 1, true><<<grid, MM_THREADS, 0, s>>>(W, rb, X, Y, n, rows, cols, \
                                                               bias, accumulate);        \
    else if (n == 1)                                                                     \
        kernel_matmul<DT, 1, false><<<grid, MM_THREADS, 0, s>>>(W, rb, X, Y, n, rows,     \
                                                                cols, bias, accumulate); \
    else if (al)                                                                         \
        kernel_matmul<DT, TB_CHUNK, true><<<grid, MM_THREADS, 0, s>>>(W, rb, X, Y, n, rows,\
                                                                      cols, bias,        \
                                                                      accumulate);       \
    else                                                                                 \
        kernel_matmul<DT, TB_CHUNK, false><<<grid, MM_THREADS, 0, s>>>(W, rb, X, Y, n,    \
                                                                       rows, cols, bias, \
                                                                       accumulate);
    DISPATCH_DT(dtype, MM_CASE)
#undef MM_CASE
    return launched("kernel_matmul");
}

/* ---- embedding, rmsnorm ------------------------------------------------ */

template <int DT>
__global__ void kernel_embed(const uint8_t *__restrict__ W, uint64_t rb,
                             const int32_t *__restrict__ tokens, float *__restrict__ out,
                             int cols) {
    int t = blockIdx.x;
    const uint8_t *row = W + (uint64_t)tokens[t] * rb;
    for (int i = threadIdx.x; i < cols; i += blockDim.x)
        out[(uint64_t)t * cols + i] = row_elem<DT>(row, i, cols);
}

int embed_cuda(cudaStream_t s, int dtype, const void *w, const int32_t *tokens, float *out,
               int n, int cols) {
    uint64_t rb = quant_row_bytes(dtype, (uint64_t)cols);
#define EMB_CASE(DT) \
    kernel_embed<DT><<<n, 256, 0, s>>>((const uint8_t *)w, rb, tokens, out, cols)
    DISPATCH_DT(dtype, EMB_CASE)
#undef EMB_CASE
    return launched("kernel_embed");
}

__global__ void kernel_rmsnorm(const float *x, const float *__restrict__ w, float *out,
                               int dim, float eps) {
    const float *xr = x + (uint64_t)blockIdx.x * dim;
    float *o = out + (uint64_t)blockIdx.x * dim;
    double ss = 0;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += (double)xr[i] * xr[i];
    ss = block_sum_d(ss);
    float r = (float)(1.0 / sqrt(ss / dim + (double)eps));
    for (int i = threadIdx.x; i < dim; i += blockDim.x) o[i] = __fmul_rn(w[i], __fmul_rn(xr[i], r));
}

int rmsnorm_cuda(cudaStream_t s, const float *x, const float *w, float *out, int n, int dim,
                 float eps) {
    int threads = (dim / 2 + 31) / 32 * 32; /* two elements per thread, 32..1024 */
    threads = threads < 32 ? 32 : threads > 1024 ? 1024 : threads;
    kernel_rmsnorm<<<n, threads, 0, s>>>(x, w, out, dim, eps);
    return launched("kernel_rmsnorm");
}

/* ---- q/k norm, rope, KV append ---------------------------------------- */

__global__ void kernel_qk_rope_store(float *q, const float *kb, const float *vb, float *kcache,
                                     float *vcache, const int32_t *d_pos, int nh, int nkv,
                                     int hd, const float *qn, const float *kn, float eps,
                                     const float *__restrict__ inv_freq, float mscale) {
    int t = blockIdx.x, hh = blockIdx.y, lane = threadIdx.x;
    int pos = *d_pos + t, kv_dim = nkv * hd;
    const float *x, *nw;
    float *dst;
    if (hh < nh) {
        x = dst = q + ((uint64_t)t * nh + hh) * hd;
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
    int half = hd / 2;
    for (int i = lane; i < half; i += 32) {
        float a = x[i], b = x[i + half];
        if (nw) {
            a = __fmul_rn(nw[i], __fmul_rn(a, r));
            b = __fmul_rn(nw[i + half], __fmul_rn(b, r));
        }
        float f = __fmul_rn((float)pos, inv_freq[i]);
        float c = (float)cos((double)f), sn = (float)sin((double)f);
        if (mscale != 1.0f) { /* YaRN: ops_rope_neox_freqs */
            c = __fmul_rn(c, mscale);
            sn = __fmul_rn(sn, mscale);
        }
        dst[i] = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, sn));
        dst[i + half] = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, sn));
    }
}

int qk_rope_store_cuda(cudaStream_t s, float *q, const float *kb, const float *vb,
                       float *kcache, float *vcache, const int32_t *d_pos, int n, int nh,
                       int nkv, int hd, const float *qn, const float *kn, float eps,
                       const float *inv_freq) {
    kernel_qk_rope_store<<<dim3(n, nh + 2 * nkv), 32, 0, s>>>(q, kb, vb, kcache, vcache, d_pos,
                                                              nh, nkv, hd, qn, kn, eps,
                                                              inv_freq, 1.0f);
    return launched("kernel_qk_rope_store");
}

int qk_rope_store_ext_cuda(cudaStream_t s, float *q, float *kb, const float *vb, float *kcache,
                           float *vcache, const int32_t *d_pos, int n, int nh, int nkv, int hd,
                           const float *qn, const float *kn, int full_norm, float eps,
                           const float *inv_freq, float mscale) {
    int st;
    if (full_norm && qn && kn) { /* olmoe: rmsnorm over the whole projection */
        if ((st = rmsnorm_cuda(s, q, qn, q, n, nh * hd, eps)) ||
            (st = rmsnorm_cuda(s, kb, kn, kb, n, nkv * hd, eps)))
            return st;
        qn = kn = NULL;
    }
    kernel_qk_rope_store<<<dim3(n, nh + 2 * nkv), 32, 0, s>>>(q, kb, vb, kcache, vcache, d_pos,
                                                              nh, nkv, hd, qn, kn, eps,
                                                              inv_freq, mscale);
    return launched("kernel_qk_rope_store");
}

/* ---- attention --------------------------------------------------------- */

#define ATT_THREADS 256

/* One block per (head, token). Scores go to global scratch (any context
 * length); the weighted sum splits positions over ATT_THREADS / hd groups
 * that are added in a fixed order. window > 0: positions p - window + 1 ..
 * p only; sinks (nh) or NULL: one more softmax column without value
 * (ops_attention_ext). */
__global__ void __launch_bounds__(ATT_THREADS)
    kernel_attention(const float *__restrict__ q, const float *__restrict__ kc,
                     const float *__restrict__ vc, float *__restrict__ out, float *scores,
                     const int32_t *d_pos, int nh, int nkv, int hd, int n_ctx, float scale,
                     int window, const float *__restrict__ sinks) {
    extern __shared__ float sm[]; /* qs (hd) | part (groups * hd) */
    __shared__ float red[32];
    int h = blockIdx.x, t = blockIdx.y, tid = threadIdx.x;
    int lane = tid & 31, wid = tid >> 5, nw = ATT_THREADS / 32;
    int np = *d_pos + t + 1, kv_dim = nkv * hd, kvh = h / (nh / nkv);
    int lo = window > 0 && np - window > 0 ? np - window : 0;
    float *qs = sm, *part = sm + hd;
    const float *qh = q + ((uint64_t)t * nh + h) * hd;
    for (int i = tid; i < hd; i += ATT_THREADS) qs[i] = qh[i];
    __syncthreads();
    float *sc = scores + ((uint64_t)t * nh + h) * n_ctx;
    for (int p = lo + wid; p < np; p += nw) {
        const float *kr = kc + (uint64_t)p * kv_dim + (uint64_t)kvh * hd;
        float d = 0.f;
        for (int i = lane; i < hd; i += 32) d += qs[i] * kr[i];
        d = warp_sum(d);
        if (lane == 0) sc[p] = d * scale;
    }
    __syncthreads();
    float mx = -INFINITY;
    for (int p = lo + tid; p < np; p += ATT_THREADS) mx = fmaxf(mx, sc[p]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    if (lane == 0) red[wid] = mx;
    __syncthreads();
    mx = red[0];
    for (int i = 1; i < nw; i++) mx = fmaxf(mx, red[i]);
    if (sinks) mx = fmaxf(mx, sinks[h]);
    double sum = 0;
    for (int p = lo + tid; p < np; p += ATT_THREADS) {
        float e = expf(sc[p] - mx);
        sc[p] = e;
        sum += e;
    }
    sum = block_sum_d(sum); /* its barriers also publish sc[] */
    if (sinks) sum += (double)expf(sinks[h] - mx);
    float inv = (float)(1.0 / sum);
    int groups = ATT_THREADS / hd, d = tid % hd, g = tid / hd;
    if (g < groups) {
        const float *vr = vc + (uint64_t)kvh * hd + d;
        float acc = 0.f;
        for (int p = lo + g; p < np; p += groups) acc += sc[p] * vr[(uint64_t)p * kv_dim];
        part[g * hd + d] = acc;
    }
    __syncthreads();
    if (tid < hd) {
        float acc = 0.f;
        for (int i = 0; i < groups; i++) acc += part[i * hd + tid];
        out[((uint64_t)t * nh + h) * hd + tid] = acc * inv;
    }
}

int attention_cuda(cudaStream_t s, const float *q, const float *kcache, const float *vcache,
                   float *out, float *scores, const int32_t *d_pos, int n, int nh, int nkv,
                   int hd, int n_ctx, float scale) {
    if (hd > ATT_THREADS || nh % nkv)
        return sl_seterr(SL_ERR_UNSUPPORTED, "CUDA attention: head_dim %d > %d or %d heads "
                         "not a multiple of %d kv heads", hd, ATT_THREADS, nh, nkv);
    int groups = ATT_THREADS / hd;
    size_t smem = (size_t)(hd + groups * hd) * sizeof(float);
    kernel_attention<<<dim3(nh, n), ATT_THREADS, smem, s>>>(q, kcache, vcache, out, scores, d_pos,
                                                            nh, nkv, hd, n_ctx, scale, 0, NULL);
    return launched("kernel_attention");
}

int attention_ext_cuda(cudaStream_t s, const float *q, const float *kcache,
                       const float *vcache, float *out, float *scratch, size_t scratch_floats,
                       const int32_t *d_pos, int n, int nh, int nkv, int hd, int n_ctx,
                       float scale, int window, const float *sinks) {
    if (hd > ATT_THREADS || hd < 1 || nh % nkv || window < 0)
        return sl_seterr(SL_ERR_UNSUPPORTED, "CUDA attention: head_dim %d > %d, %d heads not "
                         "a multiple of %d kv heads, or window %d", hd, ATT_THREADS, nh, nkv,
                         window);
    size_t split = n == 1 ? attention_split_floats(nh, hd, n_ctx, window) : 0;
    if (split && split <= scratch_floats && cuda_tune("SLUICE_CUDA_ATT_SPLIT", 1))
        return attention_split_cuda(s, q, kcache, vcache, out, scratch, d_pos, nh, nkv, hd,
                                    n_ctx, scale, window, sinks);
    if ((size_t)n * nh * n_ctx > scratch_floats)
        return sl_seterr(SL_ERR_ARG, "CUDA attention: scratch of %zu floats < %d x %d x %d",
                         scratch_floats, n, nh, n_ctx);
    int groups = ATT_THREADS / hd;
    size_t smem = (size_t)(hd + groups * hd) * sizeof(float);
    kernel_attention<<<dim3(nh, n), ATT_THREADS, smem, s>>>(q, kcache, vcache, out, scratch,
                                                            d_pos, nh, nkv, hd, n_ctx, scale,
                                                            window, sinks);
    return launched("kernel_attention");
}

/* ---- routing ----------------------------------------------------------- */

/* One warp per token; p (ne) and taken flags in shared memory. */
__global__ void kernel_route(const float *__restrict__ logits, int ne, int k, int kind, int norm,
                             int32_t *ids, float *w, uint8_t *const *table, part_off off,
                             moe_item *items, int32_t *sel, int32_t *n_items) {
    extern __shared__ float p[]; /* (ne) values, then (ne) taken bytes */
    uint8_t *taken = (uint8_t *)(p + ne);
    __shared__ float vals[64];
    __shared__ int32_t idx[64];
    int t = blockIdx.x, lane = threadIdx.x;
    const float *l = logits + (uint64_t)t * ne;
    float mx = -INFINITY;
    for (int i = lane; i < ne; i += 32) {
        p[i] = l[i];
        taken[i] = 0;
        mx = fmaxf(mx, l[i]);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    if (kind == SL_ROUTER_SOFTMAX_TOPK) { /* softmax over all experts first */
        double sum = 0;
        for (int i = lane; i < ne; i += 32) {
            float e = expf(p[i] - mx);
            p[i] = e;
            sum += e;
        }
        float inv = (float)(1.0 / warp_sum_d(sum));
        for (int i = lane; i < ne; i += 32) p[i] *= inv;
    }
    __syncwarp();
    for (int s = 0; s < k; s++) {
        float bv = 0.f;
        int bi = -1;
        for (int i = lane; i < ne; i += 32)
            if (!taken[i] && topk_before(p[i], i, bv, bi)) {
                bv = p[i];
                bi = i;
            }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (topk_before(ov, oi, bv, bi)) {
                bv = ov;
                bi = oi;
            }
        }
        if (lane == 0) {
            vals[s] = bv;
            idx[s] = bi;
            taken[bi] = 1;
        }
        __syncwarp();
    }
    if (lane == 0) {
        if (kind == SL_ROUTER_TOPK_SOFTMAX) { /* softmax over the k logits */
            float m = vals[0];
            for (int s = 1; s < k; s++) m = fmaxf(m, vals[s]);
            double sum = 0;
            for (int s = 0; s < k; s++) {
                vals[s] = expf(vals[s] - m);
                sum += vals[s];
            }
            float inv = (float)(1.0 / sum);
            for (int s = 0; s < k; s++) vals[s] *= inv;
        } else if (norm) {
            float sum = 0.f;
            for (int s = 0; s < k; s++) sum += vals[s];
            for (int s = 0; s < k; s++) vals[s] = __fdiv_rn(vals[s], sum);
        }
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

int route_cuda(cudaStream_t s, const float *logits, int n, int ne, int k, int kind, int norm,
               int32_t *ids, float *w, uint8_t *const *table, part_off off,
               struct moe_item *items, int32_t *sel, int32_t *n_items) {
    if (k < 1 || k > 64 || k > ne)
        return sl_seterr(SL_ERR_UNSUPPORTED, "CUDA router: top-%d of %d experts (max 64)", k, ne);
    if (route_small_ok(ne, k))
        return route_small_cuda(s, logits, n, ne, k, kind, norm, ids, w, table, off, items, sel,
                                n_items);
    size_t smem = (size_t)ne * (sizeof(float) + 1);
    kernel_route<<<n, 32, smem, s>>>(logits, ne, k, kind, norm, ids, w, n == 1 ? table : NULL,
                                     off, items, sel, n_items);
    return launched("kernel_route");
}

/* Counting sort of the selections by expert; one thread: at most a few
 * hundred selections per chunk. */
__global__ void kernel_moe_plan(const int32_t *ids, int nsel, int ne, uint8_t *const *table,
                                part_off off, moe_item *items, int32_t *sel, int32_t *n_items) {
    extern __shared__ int32_t cnt[]; /* (ne) counts, then (ne) starts */
    int32_t *start = cnt + ne;
    if (threadIdx.x != 0) return;
    for (int e = 0; e < ne; e++) cnt[e] = 0;
    for (int i = 0; i < nsel; i++) cnt[ids[i]]++;
    int ni = 0, s = 0;
    for (int e = 0; e < ne; e++) {
        start[e] = s;
        if (cnt[e]) {
            const uint8_t *base = table[e];
            items[ni++] = moe_item{base + off.o[0], base + off.o[1], base + off.o[2], s, cnt[e]};
        }
        s += cnt[e];
    }
    for (int i = 0; i < nsel; i++) sel[start[ids[i]]++] = i;
    *n_items = ni;
}

int moe_plan_cuda(cudaStream_t s, const int32_t *ids, int n, int k, int ne,
                  uint8_t *const *table, struct part_off off, struct moe_item *items,
                  int32_t *sel, int32_t *n_items) {
    kernel_moe_plan<<<1, 32, (size_t)ne * 2 * sizeof(int32_t), s>>>(ids, n * k, ne, table, off,
                                                                   items, sel, n_items);
    return launched("kernel_moe_plan");
}

/* ---- experts ----------------------------------------------------------- */

template <int DT, int TB, bool A>
__global__ void __launch_bounds__(MM_THREADS)
    kernel_expert_gate_up(ffn_shape sh, const moe_item *items, const int32_t *n_items,
                          moe_item one, const int32_t *__restrict__ sel, int k,
                          const float *__restrict__ X, float *__restrict__ H) {
    moe_item it = one;
    if (items) {
        if ((int)blockIdx.y >= *n_items) return;
        it = items[blockIdx.y];
    }
    int r = blockIdx.x * (MM_THREADS / 32) + threadIdx.x / 32, lane = threadIdx.x & 31;
    if (r >= sh.ffn) return;
    const uint8_t *g = it.gate + (uint64_t)r * sh.rb_gu, *u = it.up + (uint64_t)r * sh.rb_gu;
    for (int j0 = 0; j0 < it.count; j0 += TB) {
        const float *xs[TB];
        int sj[TB];
        float ga[TB], ua[TB];
#pragma unroll
        for (int i = 0; i < TB; i++) {
            sj[i] = sel[it.start + min(j0 + i, it.count - 1)];
            xs[i] = X + (uint64_t)(sj[i] / k) * sh.hidden;
            ga[i] = ua[i] = 0.f;
        }
        row_dot<DT, TB, A>(g, sh.hidden, xs, ga, lane);
        row_dot<DT, TB, A>(u, sh.hidden, xs, ua, lane);
#pragma unroll
        for (int i = 0; i < TB; i++) {
            float gv = warp_sum(ga[i]), uv = warp_sum(ua[i]);
            if (lane == i && j0 + i < it.count)
                H[(uint64_t)sj[i] * sh.ffn + r] = ffn_h(sh, sj[i], r, gv, uv);
        }
    }
}

template <int DT, int TB, bool A>
__global__ void __launch_bounds__(MM_THREADS)
    kernel_expert_down(ffn_shape sh, const moe_item *items, const int32_t *n_items, moe_item one,
                       const int32_t *__restrict__ sel, int k, const float *__restrict__ H,
                       float *__restrict__ out, int into_x) {
    moe_item it = one;
    if (items) {
        if ((int)blockIdx.y >= *n_items) return;
        it = items[blockIdx.y];
    }
    int r = blockIdx.x * (MM_THREADS / 32) + threadIdx.x / 32, lane = threadIdx.x & 31;
    if (r >= sh.hidden) return;
    const uint8_t *d = it.down + (uint64_t)r * sh.rb_down;
    for (int j0 = 0; j0 < it.count; j0 += TB) {
        const float *xs[TB];
        int sj[TB];
        float acc[TB];
#pragma unroll
        for (int i = 0; i < TB; i++) {
            sj[i] = sel[it.start + min(j0 + i, it.count - 1)];
            xs[i] = H + (uint64_t)sj[i] * sh.ffn;
            acc[i] = 0.f;
        }
        row_dot<DT, TB, A>(d, sh.ffn, xs, acc, lane);
#pragma unroll
        for (int i = 0; i < TB; i++) {
            float v = warp_sum(acc[i]);
            if (lane == i && j0 + i < it.count) {
                if (into_x)
                    out[(uint64_t)(sj[i] / k) * sh.hidden + r] += v;
                else if (sh.down_b) /* gpt_oss: + the expert's down bias */
                    out[(uint64_t)sj[i] * sh.hidden + r] =
                        v + sh.down_b[(uint64_t)sh.ids[sj[i]] * sh.hidden + r];
                else
                    out[(uint64_t)sj[i] * sh.hidden + r] = v;
            }
        }
    }
}

int expert_gate_up_cuda(cudaStream_t s, const struct ffn_shape *sh, const struct moe_item *items,
                        const int32_t *n_items, int max_items, struct moe_item one,
                        const int32_t *sel, int k, const float *X, float *H, int max_count) {
    dim3 grid((sh->ffn + MM_THREADS / 32 - 1) / (MM_THREADS / 32), items ? max_items : 1);
    bool al = sh->aligned_gu;
    if (max_count == 1 && al && sh->dt_gu == SL_DTYPE_Q4 && sh->hidden <= 8192)
        return expert_gate_up_q4_cuda(s, sh, items, n_items, max_items, one, sel, k, X, H);
#define GU_CASE(DT)                                                                         \
    if (max_count == 1 && al)                                                               \
        kernel_expert_gate_up<DT, 1, true><<<grid, MM_THREADS, 0, s>>>(*sh, items, n_items,  \
                                                                       one, sel, k, X, H);  \
    else if (max_count == 1)                                                                \
        kernel_expert_gate_up<DT, 1, false><<<grid, MM_THREADS, 0, s>>>(*sh, items, n_items, \
                                                                        one, sel, k, X, H); \
    else if (al)                                                                            \
        kernel_expert_gate_up<DT, TB_CHUNK, true><<<grid, MM_THREADS, 0, s>>>(              \
            *sh, items, n_items, one, sel, k, X, H);                                        \
    else                                                                                    \
        kernel_expert_gate_up<DT, TB_CHUNK, false><<<grid, MM_THREADS, 0, s>>>(             \
            *sh, items, n_items, one, sel, k, X, H);
    DISPATCH_DT(sh->dt_gu, GU_CASE)
#undef GU_CASE
    return launched("kernel_expert_gate_up");
}

int expert_down_cuda(cudaStream_t s, const struct ffn_shape *sh, const struct moe_item *items,
                     const int32_t *n_items, int max_items, struct moe_item one,
                     const int32_t *sel, int k, const float *H, float *out, int into_x,
                     int max_count) {
    dim3 grid((sh->hidden + MM_THREADS / 32 - 1) / (MM_THREADS / 32), items ? max_items : 1);
    bool al = sh->aligned_down;
#define DN_CASE(DT)                                                                          \
    if (max_count == 1 && al)                                                                \
        kernel_expert_down<DT, 1, true><<<grid, MM_THREADS, 0, s>>>(*sh, items, n_items, one, \
                                                                    sel, k, H, out, into_x); \
    else if (max_count == 1)                                                                 \
        kernel_expert_down<DT, 1, false><<<grid, MM_THREADS, 0, s>>>(                        \
            *sh, items, n_items, one, sel, k, H, out, into_x);                               \
    else if (al)                                                                             \
        kernel_expert_down<DT, TB_CHUNK, true><<<grid, MM_THREADS, 0, s>>>(                  \
            *sh, items, n_items, one, sel, k, H, out, into_x);                               \
    else                                                                                     \
        kernel_expert_down<DT, TB_CHUNK, false><<<grid, MM_THREADS, 0, s>>>(                 \
            *sh, items, n_items, one, sel, k, H, out, into_x);
    DISPATCH_DT(sh->dt_down, DN_CASE)
#undef DN_CASE
    return launched("kernel_expert_down");
}

/* x[t] += the token's expert outputs weighted, summed in expert-id order. */
__global__ void kernel_moe_combine(float *x, const float *__restrict__ Y,
                                   const int32_t *__restrict__ ids, const float *__restrict__ w,
                                   int k, int hidden) {
    __shared__ int order[64];
    int t = blockIdx.x; /* blockIdx.y: a slice of 256 of the hidden dims */
    if (threadIdx.x == 0) {
        for (int s = 0; s < k; s++) order[s] = s;
        for (int a = 1; a < k; a++) /* insertion sort by expert id */
            for (int b = a; b > 0 && ids[t * k + order[b]] < ids[t * k + order[b - 1]]; b--) {
                int tmp = order[b];
                order[b] = order[b - 1];
                order[b - 1] = tmp;
            }
    }
    __syncthreads();
    for (int i = blockIdx.y * blockDim.x + threadIdx.x; i < hidden; i += gridDim.y * blockDim.x) {
        float sum = 0.f;
        for (int s = 0; s < k; s++) {
            int j = t * k + order[s];
            sum += w[j] * Y[(uint64_t)j * hidden + i];
        }
        x[(uint64_t)t * hidden + i] += sum;
    }
}

int moe_combine_cuda(cudaStream_t s, float *x, const float *Y, const int32_t *ids,
                     const float *w, int n, int k, int hidden) {
    kernel_moe_combine<<<dim3(n, (hidden + 255) / 256), 256, 0, s>>>(x, Y, ids, w, k, hidden);
    return launched("kernel_moe_combine");
}
