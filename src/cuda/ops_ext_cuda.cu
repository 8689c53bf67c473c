/*
 * ops_ext_cuda.cu — decode attention split over several blocks per head
 * (flash-decode), so that one token's attention does not run one block per
 * head over the whole context:
 *   kernel_attention_split   grid (heads, spans): block (h, s) takes the
 *                            positions lo + s * ATT_SPAN .. + ATT_SPAN of
 *                            head h (lo: the window's first position),
 *                            scores in shared memory, and writes its
 *                            partial max m_s, sum l_s = sum e^{a_p - m_s}
 *                            and acc_s = sum e^{a_p - m_s} v_p;
 *   kernel_attention_combine one block per head: M = max(sink, m_s),
 *                            out = sum_s acc_s e^{m_s - M} /
 *                            (e^{sink - M} + sum_s l_s e^{m_s - M}),
 *                            spans added in index order.
 * Contract: attention_ext_cuda (ops_cuda.cuh), which picks this path.
 *
 * Invariants: span boundaries depend only on the position count (and the
 * window), every sum runs in a fixed order: the result is deterministic
 * and does not depend on n_ctx. The grid (heads, max spans) depends only
 * on n_ctx and the window, never on the position (it lives in device
 * memory), so a captured decode graph replays at every position; blocks
 * past the last span return at once.
 * Partials layout (the scratch): (nh, max spans, 2 + hd) floats: m, l, acc.
 */
#include "cuda/ops_cuda_dev.cuh"

#define AS_THREADS 256

/* Spans of the decode attention: max over positions of the visible count. */
static int att_spans(int n_ctx, int window) {
    int span = window > 0 && window < n_ctx ? window : n_ctx;
    return (span + ATT_SPAN - 1) / ATT_SPAN;
}

size_t attention_split_floats(int nh, int hd, int n_ctx, int window) {
    int ns = att_spans(n_ctx, window);
    if (n_ctx <= ATT_SPAN || ns < 1) return 0;
    return (size_t)nh * ns * (size_t)(hd + 2);
}

/* The first visible position of the one query at position np - 1. */
__device__ __forceinline__ int att_lo(int np, int window) {
    return window > 0 && np - window > 0 ? np - window : 0;
}

__global__ void __launch_bounds__(AS_THREADS)
    kernel_attention_split(const float *__restrict__ q, const float *__restrict__ kc,
                           const float *__restrict__ vc, float *__restrict__ part,
                           const int32_t *d_pos, int nh, int nkv, int hd, int max_spans,
                           float scale, int window) {
    extern __shared__ float sm[]; /* qs (hd) | accp (groups * hd) */
    __shared__ float sc[ATT_SPAN];
    __shared__ float red[AS_THREADS / 32];
    int h = blockIdx.x, sp = blockIdx.y, tid = threadIdx.x;
    int lane = tid & 31, wid = tid >> 5, nw = AS_THREADS / 32;
    int np = *d_pos + 1, lo = att_lo(np, window);
    int p0 = lo + sp * ATT_SPAN;
    if (p0 >= np) return; /* past the last span: the whole block leaves */
    int cnt = np - p0 < ATT_SPAN ? np - p0 : ATT_SPAN;
    int kv_dim = nkv * hd, kvh = h / (nh / nkv);
    float *qs = sm, *accp = sm + hd;
    for (int i = tid; i < hd; i += AS_THREADS) qs[i] = q[(uint64_t)h * hd + i];
    __syncthreads();
    const float *kbase = kc + (uint64_t)p0 * kv_dim + (uint64_t)kvh * hd;
    for (int i = wid; i < cnt; i += nw) { /* one warp per position */
        const float *kr = kbase + (uint64_t)i * kv_dim;
        float d = 0.f;
        for (int j = lane; j < hd; j += 32) d += qs[j] * kr[j];
        d = warp_sum(d);
        if (lane == 0) sc[i] = d * scale;
    }
    __syncthreads();
    float mx = -INFINITY;
    for (int i = tid; i < cnt; i += AS_THREADS) mx = fmaxf(mx, sc[i]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    if (lane == 0) red[wid] = mx;
    __syncthreads();
    mx = red[0];
    for (int i = 1; i < nw; i++) mx = fmaxf(mx, red[i]);
    double sum = 0;
    for (int i = tid; i < cnt; i += AS_THREADS) {
        float e = expf(sc[i] - mx);
        sc[i] = e;
        sum += e;
    }
    sum = block_sum_d(sum); /* its barriers also publish sc[] */
    int groups = AS_THREADS / hd, d = tid % hd, g = tid / hd;
    if (g < groups) {
        const float *vr = vc + (uint64_t)p0 * kv_dim + (uint64_t)kvh * hd + d;
        float acc = 0.f;
        for (int i = g; i < cnt; i += groups) acc += sc[i] * vr[(uint64_t)i * kv_dim];
        accp[g * hd + d] = acc;
    }
    __syncthreads();
    float *pp = part + ((uint64_t)h * max_spans + sp) * (hd + 2);
    if (tid < hd) {
        float acc = 0.f;
        for (int i = 0; i < groups; i++) acc += accp[i * hd + tid];
        pp[2 + tid] = acc;
    }
    if (tid == 0) {
        pp[0] = mx;
        pp[1] = (float)sum;
    }
}

__global__ void __launch_bounds__(AS_THREADS)
    kernel_attention_combine(const float *__restrict__ part, float *__restrict__ out,
                             const int32_t *d_pos, int hd, int max_spans, int window,
                             const float *__restrict__ sinks) {
    int h = blockIdx.x, tid = threadIdx.x;
    int np = *d_pos + 1, lo = att_lo(np, window);
    int ns = (np - lo + ATT_SPAN - 1) / ATT_SPAN;
    const float *ph = part + (uint64_t)h * max_spans * (hd + 2);
    float M = sinks ? sinks[h] : -INFINITY;
    for (int s = 0; s < ns; s++) M = fmaxf(M, ph[(uint64_t)s * (hd + 2)]);
    double L = sinks ? (double)expf(sinks[h] - M) : 0.0;
    for (int s = 0; s < ns; s++) {
        const float *p = ph + (uint64_t)s * (hd + 2);
        L += (double)p[1] * expf(p[0] - M);
    }
    float inv = (float)(1.0 / L);
    for (int d = tid; d < hd; d += AS_THREADS) {
        float acc = 0.f;
        for (int s = 0; s < ns; s++) {
            const float *p = ph + (uint64_t)s * (hd + 2);
            acc += p[2 + d] * expf(p[0] - M);
        }
        out[(uint64_t)h * hd + d] = acc * inv;
    }
}

int attention_split_cuda(cudaStream_t s, const float *q, const float *kcache,
                         const float *vcache, float *out, float *part, const int32_t *d_pos,
                         int nh, int nkv, int hd, int n_ctx, float scale, int window,
                         const float *sinks) {
    if (hd < 1 || hd > AS_THREADS || nkv < 1 || nh % nkv)
        return sl_seterr(SL_ERR_UNSUPPORTED, "CUDA split attention: head_dim %d (max %d), %d "
                         "heads over %d kv heads", hd, AS_THREADS, nh, nkv);
    int ns = att_spans(n_ctx, window);
    int groups = AS_THREADS / hd;
    size_t smem = (size_t)(hd + groups * hd) * sizeof(float);
    kernel_attention_split<<<dim3(nh, ns), AS_THREADS, smem, s>>>(q, kcache, vcache, part, d_pos,
                                                                 nh, nkv, hd, ns, scale, window);
    int st = launched("kernel_attention_split");
    if (st) return st;
    kernel_attention_combine<<<nh, AS_THREADS, 0, s>>>(part, out, d_pos, hd, ns, window, sinks);
    return launched("kernel_attention_combine");
}
