/*
 * ops_decode_cuda.cu — the CUDA kernels specialised for one token (batch-1
 * decode), where every weight byte is read once and launch count and
 * latency decide the speed (docs/cuda.md, "Decode kernels"):
 *   kernel_matvec      dense-format matvec, several warps per row for small
 *                      matrices, loads in flight, up to 3 matrices (q/k/v)
 *                      per launch, optional RMSNorm of x in the prologue;
 *   kernel_route_small router softmax + top-k in registers (ne <= 256);
 *   kernel_expert_gate_up_q4  Q4 gate/up + SwiGLU from x in shared memory;
 *   kernel_expert_down_combine  down projection + weighted combine in
 *                      expert-id order (bit-identical however the experts
 *                      were listed: resident or streaming).
 * Tuning knobs (cuda_tune): SLUICE_CUDA_MVU, SLUICE_CUDA_GU.
 * Not here: prompt-chunk (n > 1) kernels, attention (ops_cuda.cu).
 */
#include "cuda/ops_cuda_dev.cuh"

/* ---- decode matvec (n = 1, dense dtypes) ------------------------------- */

/* One 16-byte chunk of a BF16/F16 (8 weights) or F32 (4) row · x. */
template <int DT>
__device__ __forceinline__ float chunk_dot(uint4 v, const float *__restrict__ x, int c) {
    if (DT == SL_DTYPE_F32) {
        float4 xv = reinterpret_cast<const float4 *>(x)[c];
        return __uint_as_float(v.x) * xv.x + __uint_as_float(v.y) * xv.y +
               __uint_as_float(v.z) * xv.z + __uint_as_float(v.w) * xv.w;
    }
    uint32_t wd[4] = {v.x, v.y, v.z, v.w};
    const float4 *xp = reinterpret_cast<const float4 *>(x) + 2 * c;
    float4 a = xp[0], b = xp[1];
    float xv[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w}, s = 0.f;
#pragma unroll
    for (int q = 0; q < 4; q++) {
        uint16_t lo = (uint16_t)(wd[q] & 0xffffu), hi = (uint16_t)(wd[q] >> 16);
        s += (DT == SL_DTYPE_BF16 ? bf16f(lo) : f16f(lo)) * xv[2 * q] +
             (DT == SL_DTYPE_BF16 ? bf16f(hi) : f16f(hi)) * xv[2 * q + 1];
    }
    return s;
}

/* MV_UNROLL: 16-byte loads in flight per lane (4 or 8: SLUICE_CUDA_MVU) */

/* y[r] = row r · x (+ bias) (+ y) over up to 3 segments (matrices of the
 * same dtype and cols stacked by rows: q/k/v share one launch). WPR warps
 * per row (the columns split between them, partial sums added in warp
 * order), each lane keeping MV_UNROLL loads in flight: small matrices
 * (router, k/v) still fill the GPU and large ones stream at full
 * bandwidth. Aligned rows only. NORM: x is first replaced by rmsnorm(x) *
 * nw (computed by every block into shared memory; block 0 also writes it
 * to xn_out when given), so the RMSNorm needs no launch of its own. */
template <int DT, int WPR, bool NORM, int MV_UNROLL>
__global__ void __launch_bounds__(MM_THREADS) kernel_matvec(mv_args a, const float *__restrict__ x) {
    extern __shared__ float xsh[]; /* NORM: (cols) */
    __shared__ float part[MM_THREADS / 32];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, cols = a.cols;
    int r = blockIdx.x * (MM_THREADS / 32 / WPR) + warp / WPR, ws = warp % WPR;
    mv_seg sg = mv_seg_pick(a, &r);
    bool live = r < sg.rows;
    const uint4 *row = reinterpret_cast<const uint4 *>(sg.W + (uint64_t)(live ? r : 0) * a.rb);
    const int nch = DT == SL_DTYPE_F32 ? cols >> 2 : cols >> 3, step = 32 * WPR;
    int c0 = live ? ws * 32 + lane : nch;
    uint4 v[MV_UNROLL];
#pragma unroll
    for (int u = 0; u < MV_UNROLL; u++) /* first loads in flight before the norm */
        if (c0 + u * step < nch) v[u] = __ldg(row + c0 + u * step);
    if (NORM) {
        double ss = 0;
        for (int i = threadIdx.x; i < cols; i += MM_THREADS) {
            float xv = x[i];
            xsh[i] = xv;
            ss += (double)xv * xv;
        }
        ss = block_sum_d(ss);
        float rs = (float)(1.0 / sqrt(ss / cols + (double)a.eps));
        for (int i = threadIdx.x; i < cols; i += MM_THREADS) {
            float xv = __fmul_rn(a.nw[i], __fmul_rn(xsh[i], rs));
            xsh[i] = xv;
            if (a.xn_out && blockIdx.x == 0) a.xn_out[i] = xv;
        }
        __syncthreads();
        x = xsh;
    }
    float acc = 0.f;
    while (c0 < nch) {
#pragma unroll
        for (int u = 0; u < MV_UNROLL; u++)
            if (c0 + u * step < nch) acc += chunk_dot<DT>(v[u], x, c0 + u * step);
        c0 += MV_UNROLL * step;
#pragma unroll
        for (int u = 0; u < MV_UNROLL; u++)
            if (c0 + u * step < nch) v[u] = __ldg(row + c0 + u * step);
    }
    acc = warp_sum(acc);
    if (WPR > 1) {
        if (lane == 0) part[warp] = acc;
        __syncthreads();
        if (ws != 0) return;
        acc = 0.f;
#pragma unroll
        for (int i = 0; i < WPR; i++) acc += part[warp + i];
    }
    if (lane == 0 && live) {
        float b = sg.bias ? sg.bias[r] : 0.f;
        float *y = sg.y + r;
        *y = a.accumulate ? *y + (acc + b) : acc + b;
    }
}

/* Warps per row for a decode matvec of `rows`: enough warps to fill the
 * GPU (>= 4096) without splitting a row below 32 chunks per warp. */
static int matvec_wpr(int rows, int nch) {
    int wpr = 1;
    while (wpr < 8 && rows * wpr < 4096 && nch / (2 * wpr) >= 32) wpr *= 2;
    return wpr;
}

template <int DT, bool NORM, int U>
static void matvec_launch(cudaStream_t s, const mv_args &a, const float *x) {
    int rows = 0;
    for (int i = 0; i < a.nseg; i++) rows += a.rows[i];
    int nch = DT == SL_DTYPE_F32 ? a.cols >> 2 : a.cols >> 3, wpr = matvec_wpr(rows, nch);
    int rpb = MM_THREADS / 32 / wpr;
    dim3 grid((rows + rpb - 1) / rpb);
    size_t sm = NORM ? (size_t)a.cols * sizeof(float) : 0;
    switch (wpr) {
    case 1: kernel_matvec<DT, 1, NORM, U><<<grid, MM_THREADS, sm, s>>>(a, x); break;
    case 2: kernel_matvec<DT, 2, NORM, U><<<grid, MM_THREADS, sm, s>>>(a, x); break;
    case 4: kernel_matvec<DT, 4, NORM, U><<<grid, MM_THREADS, sm, s>>>(a, x); break;
    default: kernel_matvec<DT, 8, NORM, U><<<grid, MM_THREADS, sm, s>>>(a, x); break;
    }
}

template <int DT>
static void matvec_launch_dt(cudaStream_t s, const mv_args &a, const float *x) {
    bool u8 = cuda_tune("SLUICE_CUDA_MVU", 4) == 8;
    if (a.nw)
        u8 ? matvec_launch<DT, true, 8>(s, a, x) : matvec_launch<DT, true, 4>(s, a, x);
    else
        u8 ? matvec_launch<DT, false, 8>(s, a, x) : matvec_launch<DT, false, 4>(s, a, x);
}

bool matvec_ok(int dtype, const void *w, int cols) {
    uint64_t rb = quant_row_bytes(dtype, (uint64_t)cols);
    return (dtype == SL_DTYPE_BF16 || dtype == SL_DTYPE_F16 || dtype == SL_DTYPE_F32) && rb &&
           rows_aligned(w, rb, cols);
}

int matvec_run(cudaStream_t s, int dtype, const mv_args &a, const float *x) {
    if (dtype == SL_DTYPE_BF16)
        matvec_launch_dt<SL_DTYPE_BF16>(s, a, x);
    else if (dtype == SL_DTYPE_F16)
        matvec_launch_dt<SL_DTYPE_F16>(s, a, x);
    else
        matvec_launch_dt<SL_DTYPE_F32>(s, a, x);
    return launched("kernel_matvec");
}

int matvec_multi_cuda(cudaStream_t s, int dtype, int nseg, const void *const w[],
                      float *const y[], const float *const bias[], const int rows[], int cols,
                      const float *x, const float *norm_w, float eps, float *x_norm_out) {
    if (nseg < 1 || nseg > 3 || cols < 1)
        return sl_seterr(SL_ERR_ARG, "matvec_multi_cuda: %d segments, %d cols", nseg, cols);
    mv_args a = {};
    for (int i = 0; i < nseg; i++) {
        if (!matvec_ok(dtype, w[i], cols) || rows[i] < 1)
            return SL_ERR_UNSUPPORTED; /* the caller falls back; no message */
        a.W[i] = (const uint8_t *)w[i];
        a.y[i] = y[i];
        a.bias[i] = bias[i];
        a.rows[i] = rows[i];
    }
    if (norm_w && (size_t)cols * sizeof(float) > 48 * 1024) return SL_ERR_UNSUPPORTED;
    a.nseg = nseg;
    a.rb = quant_row_bytes(dtype, (uint64_t)cols);
    a.cols = cols;
    a.nw = norm_w;
    a.eps = eps;
    a.xn_out = x_norm_out;
    return matvec_run(s, dtype, a, x);
}

#define RT_PER 8 /* logits per lane in the register router: ne <= 256 */

/* The router for ne <= 256 and k <= 32 (every qwen3_moe / mixtral /
 * olmoe): one warp per token, logits in registers (lane holds i = lane +
 * 32 j), the taken set as a bit mask, the k winners gathered in shared
 * memory; then the same serial finish as kernel_route, so both give the
 * same ids and weights. */
__global__ void kernel_route_small(const float *__restrict__ logits, int ne, int k, int kind,
                                   int norm, int32_t *ids, float *w, uint8_t *const *table,
                                   part_off off, moe_item *items, int32_t *sel,
                                   int32_t *n_items) {
    __shared__ float vals[32];
    __shared__ int32_t idx[32];
    int t = blockIdx.x, lane = threadIdx.x;
    const float *l = logits + (uint64_t)t * ne;
    float p[RT_PER];
    float mx = -INFINITY;
#pragma unroll
    for (int j = 0; j < RT_PER; j++) {
        int i = lane + 32 * j;
        p[j] = i < ne ? l[i] : -INFINITY;
        if (i < ne) mx = fmaxf(mx, p[j]);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    if (kind == SL_ROUTER_SOFTMAX_TOPK) {
        double sum = 0;
#pragma unroll
        for (int j = 0; j < RT_PER; j++)
            if (lane + 32 * j < ne) {
                p[j] = expf(p[j] - mx);
                sum += p[j];
            }
        float inv = (float)(1.0 / warp_sum_d(sum));
#pragma unroll
        for (int j = 0; j < RT_PER; j++) p[j] *= inv;
    }
    uint32_t taken = 0;
    for (int s = 0; s < k; s++) {
        float bv = 0.f;
        int bi = -1;
#pragma unroll
        for (int j = 0; j < RT_PER; j++) {
            int i = lane + 32 * j;
            if (i < ne && !(taken >> j & 1u) && topk_before(p[j], i, bv, bi)) {
                bv = p[j];
                bi = i;
            }
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
        if (bi >= 0 && (bi & 31) == lane) taken |= 1u << (bi >> 5);
        if (lane == 0) {
            vals[s] = bv;
            idx[s] = bi;
        }
    }
    __syncwarp();
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
    if (lane < k) {
        int s = lane;
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

int route_small_cuda(cudaStream_t s, const float *logits, int n, int ne, int k, int kind,
                     int norm, int32_t *ids, float *w, uint8_t *const *table, part_off off,
                     moe_item *items, int32_t *sel, int32_t *n_items) {
    kernel_route_small<<<n, 32, 0, s>>>(logits, ne, k, kind, norm, ids, w, n == 1 ? table : NULL,
                                        off, items, sel, n_items);
    return launched("kernel_route_small");
}

/* ---- decode experts: Q4 gate/up from shared x, fused down + combine ---- */

/* x staged in shared memory with one pad float per 32 (element i at
 * i + i / 32): lane b reading element j of its 32-weight block b hits bank
 * (b + j) % 32, so a warp's reads never conflict (global float4 reads of
 * 32 blocks' x spans would touch 32 lines per instruction). */
__device__ __forceinline__ int xpad(int i) { return i + (i >> 5); }

/* Block b of a 16-byte-aligned Q4 row · x (padded shared, block b at
 * xs + 33 b): nibbles v, scale d, min m. */
__device__ __forceinline__ float q4_block_dot(uint4 v, float d, float m, const float *xs) {
    uint32_t wd[4] = {v.x, v.y, v.z, v.w};
    float sq = 0.f, sx = 0.f;
#pragma unroll
    for (int q = 0; q < 4; q++)
#pragma unroll
        for (int k = 0; k < 4; k++) {
            uint32_t byte = (wd[q] >> (8 * k)) & 0xffu;
            float lo = xs[4 * q + k], hi = xs[16 + 4 * q + k];
            sq += (float)(byte & 15u) * lo + (float)(byte >> 4) * hi;
            sx += lo + hi;
        }
    return d * sq + m * sx;
}


/* One lane's loads of block b of gate and up row r (Q4). */
struct q4_pair {
    uint4 g, u;
    float gd, gm, ud, um;
};
__device__ __forceinline__ q4_pair q4_pair_load(const moe_item &it, const ffn_shape &sh, int r,
                                                int b, uint64_t dofs, uint64_t mofs) {
    const uint8_t *g = it.gate + (uint64_t)r * sh.rb_gu, *u = it.up + (uint64_t)r * sh.rb_gu;
    q4_pair q;
    q.g = __ldg(reinterpret_cast<const uint4 *>(g) + b);
    q.u = __ldg(reinterpret_cast<const uint4 *>(u) + b);
    q.gd = f16f(ldu16(g + dofs + 2 * b));
    q.gm = f16f(ldu16(g + mofs + 2 * b));
    q.ud = f16f(ldu16(u + dofs + 2 * b));
    q.um = f16f(ldu16(u + mofs + 2 * b));
    return q;
}

/* Decode gate/up for Q4 rows (16-byte aligned): each warp GU_RPW gate/up
 * row pairs; the first GU_PRE strides of their weights are loaded before
 * the item's x row is staged in shared memory (so the weight stream and
 * the x copy overlap), SwiGLU in the epilogue. The variant is a tuning
 * knob (cuda_tune). */
template <int GU_RPW, int GU_PRE>
__global__ void __launch_bounds__(MM_THREADS)
    kernel_expert_gate_up_q4(ffn_shape sh, const moe_item *items, const int32_t *n_items,
                             moe_item one, const int32_t *__restrict__ sel, int k,
                             const float *__restrict__ X, float *__restrict__ H) {
    extern __shared__ float xs[]; /* (hidden + hidden / 32) */
    moe_item it = one;
    if (items) {
        if ((int)blockIdx.y >= *n_items) return;
        it = items[blockIdx.y];
    }
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nb = sh.hidden >> 5;
    int r0 = (blockIdx.x * (MM_THREADS / 32) + warp) * GU_RPW;
    uint64_t dofs = (uint64_t)(sh.hidden >> 1), mofs = dofs + 2 * (uint64_t)nb;
    int rr[GU_RPW];
#pragma unroll
    for (int q = 0; q < GU_RPW; q++) rr[q] = r0 + q < sh.ffn ? r0 + q : sh.ffn - 1;
    for (int j = 0; j < it.count; j++) {
        int sj = sel[it.start + j];
        const float *x = X + (uint64_t)(sj / k) * sh.hidden;
        q4_pair pre[GU_PRE > 0 ? GU_PRE : 1][GU_RPW];
#pragma unroll
        for (int p = 0; p < GU_PRE; p++)
#pragma unroll
            for (int q = 0; q < GU_RPW; q++)
                if (lane + 32 * p < nb) pre[p][q] = q4_pair_load(it, sh, rr[q], lane + 32 * p, dofs, mofs);
        __syncthreads(); /* the previous selection's reads of xs are done */
        for (int i = threadIdx.x; i < sh.hidden; i += MM_THREADS) xs[xpad(i)] = x[i];
        __syncthreads();
        float ga[GU_RPW], ua[GU_RPW];
#pragma unroll
        for (int q = 0; q < GU_RPW; q++) ga[q] = ua[q] = 0.f;
#pragma unroll
        for (int p = 0; p < GU_PRE; p++) {
            int b = lane + 32 * p;
            if (b < nb)
#pragma unroll
                for (int q = 0; q < GU_RPW; q++) {
                    ga[q] += q4_block_dot(pre[p][q].g, pre[p][q].gd, pre[p][q].gm, xs + 33 * b);
                    ua[q] += q4_block_dot(pre[p][q].u, pre[p][q].ud, pre[p][q].um, xs + 33 * b);
                }
        }
        for (int b = lane + 32 * GU_PRE; b < nb; b += 32) {
            q4_pair cur[GU_RPW];
#pragma unroll
            for (int q = 0; q < GU_RPW; q++) cur[q] = q4_pair_load(it, sh, rr[q], b, dofs, mofs);
#pragma unroll
            for (int q = 0; q < GU_RPW; q++) {
                ga[q] += q4_block_dot(cur[q].g, cur[q].gd, cur[q].gm, xs + 33 * b);
                ua[q] += q4_block_dot(cur[q].u, cur[q].ud, cur[q].um, xs + 33 * b);
            }
        }
#pragma unroll
        for (int q = 0; q < GU_RPW; q++) {
            float gsum = warp_sum(ga[q]), usum = warp_sum(ua[q]);
            if (lane == 0 && r0 + q < sh.ffn)
                H[(uint64_t)sj * sh.ffn + r0 + q] = gsum / (1.0f + expf(-gsum)) * usum;
        }
    }
}

int expert_gate_up_q4_cuda(cudaStream_t s, const ffn_shape *sh, const moe_item *items,
                           const int32_t *n_items, int max_items, moe_item one,
                           const int32_t *sel, int k, const float *X, float *H) {
    int v = cuda_tune("SLUICE_CUDA_GU", 0), rpw = v == 0 ? 2 : 1;
    int rpb = MM_THREADS / 32 * rpw;
    dim3 g2((sh->ffn + rpb - 1) / rpb, items ? max_items : 1);
    size_t smem = (size_t)(sh->hidden + sh->hidden / 32) * sizeof(float);
    if (v == 0)
        kernel_expert_gate_up_q4<2, 0><<<g2, MM_THREADS, smem, s>>>(*sh, items, n_items, one,
                                                                    sel, k, X, H);
    else if (v == 1)
        kernel_expert_gate_up_q4<1, 2><<<g2, MM_THREADS, smem, s>>>(*sh, items, n_items, one,
                                                                    sel, k, X, H);
    else
        kernel_expert_gate_up_q4<1, 0><<<g2, MM_THREADS, smem, s>>>(*sh, items, n_items, one,
                                                                    sel, k, X, H);
    return launched("kernel_expert_gate_up_q4");
}

#define DC_MAX_K 64
#define DC_UNROLL 4 /* (selection, block) pairs whose loads a lane keeps in flight */

/* Decode down + weighted combine: x[r] += sum over the token's nk
 * selections in expert-id order of w[s] * (down_s row r · H[s]). items
 * [0, nk) each hold one selection (sel[start] = s, its down rows); one warp
 * per output row. Lane accumulation order is fixed by the ids alone (pairs
 * (selection rank si, block b) at idx = si * nb + b, lane idx % 32, one
 * warp reduction at the end), so the result depends only on the ids,
 * weights and bytes, not on where or in which order the items were listed
 * (resident or streaming: bit-identical). Q4 aligned rows (SX) read the H
 * rows from padded shared memory, every (selection, block) of a row spread
 * over the lanes with DC_UNROLL loads in flight; other formats use row_dot
 * per selection. */
template <int DT, bool A, bool SX>
__global__ void __launch_bounds__(MM_THREADS)
    kernel_expert_down_combine(ffn_shape sh, const moe_item *items, int nk,
                               const int32_t *__restrict__ sel, const int32_t *__restrict__ ids,
                               const float *__restrict__ w, const float *__restrict__ H,
                               float *__restrict__ x) {
    extern __shared__ float hs[]; /* SX: (nk, ffn + ffn / 32) */
    __shared__ const uint8_t *down[DC_MAX_K];
    __shared__ float ws[DC_MAX_K];
    __shared__ int order[DC_MAX_K];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, ffn = sh.ffn;
    if (threadIdx.x < nk) {
        moe_item it = items[threadIdx.x];
        int s = sel[it.start];
        down[s] = it.down;
        ws[s] = w[s];
    }
    if (threadIdx.x == 0) {
        for (int s = 0; s < nk; s++) order[s] = s;
        for (int a = 1; a < nk; a++) /* insertion sort by expert id */
            for (int b = a; b > 0 && ids[order[b]] < ids[order[b - 1]]; b--) {
                int tmp = order[b];
                order[b] = order[b - 1];
                order[b - 1] = tmp;
            }
    }
    int padded = ffn + (ffn >> 5);
    if (SX)
        for (int i = threadIdx.x; i < nk * ffn; i += MM_THREADS) {
            int s = i / ffn, c = i - s * ffn;
            hs[s * padded + xpad(c)] = H[i];
        }
    __syncthreads();
    int r = blockIdx.x * (MM_THREADS / 32) + warp;
    if (r >= sh.hidden) return;
    float acc = 0.f;
    if constexpr (SX) {
        int nb = ffn >> 5, total = nk * nb;
        uint64_t dofs = (uint64_t)(ffn >> 1), mofs = dofs + 2 * (uint64_t)nb;
        for (int i0 = lane; i0 < total; i0 += 32 * DC_UNROLL) {
            uint4 v[DC_UNROLL];
            float d[DC_UNROLL], m[DC_UNROLL];
            int sv[DC_UNROLL], bv[DC_UNROLL];
#pragma unroll
            for (int u = 0; u < DC_UNROLL; u++) {
                int i = i0 + 32 * u;
                if (i < total) {
                    int si = i / nb, b = i - si * nb, s = order[si];
                    const uint8_t *row = down[s] + (uint64_t)r * sh.rb_down;
                    v[u] = __ldg(reinterpret_cast<const uint4 *>(row) + b);
                    d[u] = f16f(ldu16(row + dofs + 2 * b));
                    m[u] = f16f(ldu16(row + mofs + 2 * b));
                    sv[u] = s;
                    bv[u] = b;
                }
            }
#pragma unroll
            for (int u = 0; u < DC_UNROLL; u++)
                if (i0 + 32 * u < total)
                    acc += ws[sv[u]] *
                           q4_block_dot(v[u], d[u], m[u], hs + sv[u] * padded + 33 * bv[u]);
        }
    } else {
        for (int si = 0; si < nk; si++) {
            int s = order[si];
            const uint8_t *row = down[s] + (uint64_t)r * sh.rb_down;
            const float *xs1[1] = {H + (uint64_t)s * ffn};
            float a1[1] = {0.f};
            row_dot<DT, 1, A>(row, ffn, xs1, a1, lane);
            acc += ws[s] * a1[0];
        }
    }
    acc = warp_sum(acc);
    if (lane == 0) x[r] += acc;
}

int expert_down_combine_cuda(cudaStream_t s, const struct ffn_shape *sh,
                             const struct moe_item *items, int nk, const int32_t *sel,
                             const int32_t *ids, const float *w, const float *H, float *x) {
    if (nk < 1 || nk > DC_MAX_K)
        return sl_seterr(SL_ERR_UNSUPPORTED, "CUDA experts: %d selections per token (max %d)",
                         nk, DC_MAX_K);
    dim3 grid((sh->hidden + MM_THREADS / 32 - 1) / (MM_THREADS / 32));
    bool al = sh->aligned_down;
    size_t smem = (size_t)nk * (sh->ffn + sh->ffn / 32) * sizeof(float);
    if (sh->dt_down == SL_DTYPE_Q4 && al && smem <= 48 * 1024) {
        kernel_expert_down_combine<SL_DTYPE_Q4, true, true>
            <<<grid, MM_THREADS, smem, s>>>(*sh, items, nk, sel, ids, w, H, x);
        return launched("kernel_expert_down_combine");
    }
#define DC_CASE(DT)                                                                          \
    if (al)                                                                                  \
        kernel_expert_down_combine<DT, true, false>                                          \
            <<<grid, MM_THREADS, 0, s>>>(*sh, items, nk, sel, ids, w, H, x);                 \
    else                                                                                     \
        kernel_expert_down_combine<DT, false, false>                                         \
            <<<grid, MM_THREADS, 0, s>>>(*sh, items, nk, sel, ids, w, H, x);
    DISPATCH_DT(sh->dt_down, DC_CASE)
#undef DC_CASE
    return launched("kernel_expert_down_combine");
}

