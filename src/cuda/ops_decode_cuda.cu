/*
 * ops_decode_cuda.cu — the CUDA kernels specialised for one token (batch-1
 * decode), where every weight byte is read once and launch count and
 * latency decide the speed (docs/cuda.md, "Decode kernels"):
 *   kernel_matvec      dense-format matvec, several warps per row for small
 *                      matrices, loads in flight, up to 3 matrices (q/k/v)
 *                      per launch, optional RMSNorm of x in the prologue,
 *                      optionally the router's softmax + top-k in the last
 *                      block to finish (ROUTE);
 *   kernel_route_small router softmax + top-k in registers (ne <= 256);
 *   kernel_expert_gate_up_q4  Q4 gate/up + SwiGLU from x in shared memory;
 *   kernel_expert_down_combine  down projection + weighted combine in
 *                      expert-id order (bit-identical however the experts
 *                      were listed: resident or streaming).
 * Tuning knobs (cuda_tune): SLUICE_CUDA_MVU, SLUICE_CUDA_GU, SLUICE_CUDA_PDL,
 * SLUICE_CUDA_DC (docs/cuda.md).
 *
 * Programmatic dependent launch (PDL, sm_90): kernel_matvec,
 * kernel_expert_gate_up_q4 and kernel_expert_down_combine are launched with
 * programmatic stream serialization when SLUICE_CUDA_PDL is on (default) and
 * the kernels were compiled for sm_90+: each may start while the previous
 * kernel of the stream finishes. Invariant of every such kernel: before
 * pdl_wait() it reads nothing but weights (constant for the model's life)
 * and writes nothing; every thread calls pdl_wait() before any return. So
 * when a kernel passes pdl_wait() all earlier work of the stream is done
 * (each predecessor passed its own wait), with or without a graph.
 * Not here: prompt-chunk (n > 1) kernels, attention (ops_cuda.cu).
 */
#include "cuda/ops_cuda_dev.cuh"

/* ---- programmatic dependent launch ------------------------------------- */

/* Waits until every grid this one depends on has completed and its writes
 * are visible; a no-op for a kernel launched without PDL. */
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
/* Lets the next PDL kernel of the stream be scheduled (its blocks then run
 * up to their pdl_wait). */
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void prefetch_l2(const void *p) {
    asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

__global__ void kernel_pdl_probe() { pdl_wait(); }

bool cuda_pdl_enabled(void) {
    static int compiled = -1; /* the kernels hold griddepcontrol (PTX >= 9.0) */
    if (compiled < 0) {
        cudaFuncAttributes fa = {};
        cudaError_t e = cudaFuncGetAttributes(&fa, kernel_pdl_probe);
        compiled = e == cudaSuccess && fa.ptxVersion >= 90;
        cudaGetLastError();
        sl_log(SL_LOG_INFO, "cuda: programmatic dependent launch %s (kernel code sm_%d from "
               "PTX %d%s%s)", compiled ? "available" : "unavailable", fa.binaryVersion,
               fa.ptxVersion, e == cudaSuccess ? "" : ": ", e == cudaSuccess ? "" :
               cudaGetErrorString(e));
    }
    return compiled && cuda_tune("SLUICE_CUDA_PDL", 0) != 0;
}

/* Launches kernel k on s, with programmatic stream serialization when
 * cuda_pdl_enabled(); SL_OK or the CUDA error naming `what`. */
template <typename... KA, typename... A>
static int dlaunch(const char *what, void (*k)(KA...), dim3 grid, dim3 block, size_t smem,
                   cudaStream_t s, A... args) {
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = s;
    cfg.attrs = at;
    cfg.numAttrs = cuda_pdl_enabled() ? 1 : 0;
    cudaError_t e = cudaLaunchKernelEx(&cfg, k, ((KA)args)...);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return cuda_fail(e, what);
    }
    return launched(what);
}

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

/* ---- router: softmax + top-k in registers ------------------------------ */

#define RT_PER 8 /* logits per lane in the register router: ne <= 256 */

/* What the router's top-k writes (see route_cuda): ids, w (k) of one
 * token; with items_too (decode, table given) also the k items, sel =
 * 0..k-1 and *n_items = k. done: the fused router's block counter. */
struct rt_args {
    int k, kind, norm, items_too;
    int32_t *ids;
    float *w;
    uint8_t *const *table;
    part_off off;
    moe_item *items;
    int32_t *sel, *n_items;
    unsigned int *done;
};

/* One warp routes one token (ne <= 256, k <= 32): logits in registers
 * (lane holds i = lane + 32 j, read through L2 so that a kernel may route
 * logits other blocks of it just wrote), the taken set as a bit mask, the
 * k winners gathered in vals/idx (shared, 32 each); then the same serial
 * finish as kernel_route, so both give the same ids and weights. */
__device__ void route_warp(const float *l, int ne, const rt_args &a, float *vals, int32_t *idx) {
    int lane = threadIdx.x & 31, k = a.k;
    float p[RT_PER];
    float mx = -INFINITY;
#pragma unroll
    for (int j = 0; j < RT_PER; j++) {
        int i = lane + 32 * j;
        p[j] = i < ne ? __ldcg(l + i) : -INFINITY;
        if (i < ne) mx = fmaxf(mx, p[j]);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    if (a.kind == SL_ROUTER_SOFTMAX_TOPK) {
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
        if (a.kind == SL_ROUTER_TOPK_SOFTMAX) { /* softmax over the k logits */
            float m = vals[0];
            for (int s = 1; s < k; s++) m = fmaxf(m, vals[s]);
            double sum = 0;
            for (int s = 0; s < k; s++) {
                vals[s] = expf(vals[s] - m);
                sum += vals[s];
            }
            float inv = (float)(1.0 / sum);
            for (int s = 0; s < k; s++) vals[s] *= inv;
        } else if (a.norm) {
            float sum = 0.f;
            for (int s = 0; s < k; s++) sum += vals[s];
            for (int s = 0; s < k; s++) vals[s] = __fdiv_rn(vals[s], sum);
        }
    }
    __syncwarp();
    if (lane < k) {
        int s = lane;
        a.ids[s] = idx[s];
        a.w[s] = vals[s];
        if (a.items_too) { /* decode: one item per selection */
            const uint8_t *base = a.table[idx[s]];
            a.items[s] = moe_item{base + a.off.o[0], base + a.off.o[1], base + a.off.o[2], s, 1};
            a.sel[s] = s;
        }
    }
    if (a.items_too && lane == 0) *a.n_items = k;
}

/* The router for ne <= 256 and k <= 32 (every qwen3_moe / mixtral /
 * olmoe): one warp per token (route_warp). */
__global__ void kernel_route_small(const float *__restrict__ logits, int ne, rt_args a) {
    __shared__ float vals[32];
    __shared__ int32_t idx[32];
    int t = blockIdx.x;
    a.ids += (uint64_t)t * a.k;
    a.w += (uint64_t)t * a.k;
    route_warp(logits + (uint64_t)t * ne, ne, a, vals, idx);
}

int route_small_cuda(cudaStream_t s, const float *logits, int n, int ne, int k, int kind,
                     int norm, int32_t *ids, float *w, uint8_t *const *table, part_off off,
                     moe_item *items, int32_t *sel, int32_t *n_items) {
    rt_args a = {k, kind, norm, table && n == 1, ids, w, table, off, items, sel, n_items, NULL};
    kernel_route_small<<<n, 32, 0, s>>>(logits, ne, a);
    return launched("kernel_route_small");
}

/* y[r] = row r · x (+ bias) (+ y) over up to 3 segments (matrices of the
 * same dtype and cols stacked by rows: q/k/v share one launch). WPR warps
 * per row (the columns split between them, partial sums added in warp
 * order), each lane keeping MV_UNROLL (4 or 8: SLUICE_CUDA_MVU) 16-byte
 * loads in flight: small matrices
 * (router, k/v) still fill the GPU and large ones stream at full
 * bandwidth. Aligned rows only. NORM: x is first replaced by rmsnorm(x) *
 * nw (computed by every block into shared memory; block 0 also writes it
 * to xn_out when given), so the RMSNorm needs no launch of its own.
 * ROUTE (one segment: the router, rows = ne <= 256): the last block to
 * finish (a counter that wraps to 0 by itself, so a graph replays it)
 * routes the logits with route_warp. PDL: the first weight loads and an L2
 * prefetch of the rest of the row are issued before pdl_wait. */
template <int DT, int WPR, bool NORM, int MV_UNROLL, bool ROUTE>
__global__ void __launch_bounds__(MM_THREADS)
    kernel_matvec(mv_args a, const float *__restrict__ x, rt_args rt) {
    extern __shared__ float xsh[]; /* NORM: (cols) */
    __shared__ float part[MM_THREADS / 32];
    pdl_trigger();
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, cols = a.cols;
    int r = blockIdx.x * (MM_THREADS / 32 / WPR) + warp / WPR, ws = warp % WPR;
    mv_seg sg = mv_seg_pick(a, &r);
    bool live = r < sg.rows;
    const uint4 *row = reinterpret_cast<const uint4 *>(sg.W + (uint64_t)(live ? r : 0) * a.rb);
    const int nch = DT == SL_DTYPE_F32 ? cols >> 2 : cols >> 3, step = 32 * WPR;
    int c0 = live ? ws * 32 + lane : nch;
    uint4 v[MV_UNROLL];
#pragma unroll
    for (int u = 0; u < MV_UNROLL; u++) /* first loads in flight before the wait and norm */
        if (c0 + u * step < nch) v[u] = __ldg(row + c0 + u * step);
    for (int c = c0 + MV_UNROLL * step; c < nch; c += step) /* one lane per 128-byte line */
        if ((c & 7) == 0) prefetch_l2(row + c);
    pdl_wait(); /* x, y and xn_out belong to earlier kernels from here on */
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
    bool head = true; /* this warp writes row r */
    if (WPR > 1) {
        if (lane == 0) part[warp] = acc;
        __syncthreads();
        head = ws == 0;
        if (head) {
            acc = 0.f;
#pragma unroll
            for (int i = 0; i < WPR; i++) acc += part[warp + i];
        }
    }
    if (head && lane == 0 && live) {
        float b = sg.bias ? sg.bias[r] : 0.f;
        float *y = sg.y + r;
        *y = a.accumulate ? *y + (acc + b) : acc + b;
    }
    if (ROUTE) {
        __shared__ unsigned int last;
        __shared__ float vals[32];
        __shared__ int32_t idx[32];
        __threadfence(); /* this block's logits are visible before it counts */
        __syncthreads();
        if (threadIdx.x == 0) last = atomicInc(rt.done, gridDim.x - 1) == gridDim.x - 1;
        __syncthreads();
        if (last && warp == 0) {
            __threadfence();
            route_warp(a.y[0], a.rows[0], rt, vals, idx);
        }
    }
}

/* Warps per row for a decode matvec of `rows`: enough warps to fill the
 * GPU (>= 4096) without splitting a row below 32 chunks per warp. */
static int matvec_wpr(int rows, int nch) {
    if (rows <= 256) { /* router-sized: SLUICE_CUDA_RWPR (1, 2, 4, 8) forces it */
        int f = cuda_tune("SLUICE_CUDA_RWPR", 0);
        if (f == 1 || f == 2 || f == 4 || f == 8) return f;
    }
    int wpr = 1;
    while (wpr < 8 && rows * wpr < 4096 && nch / (2 * wpr) >= 32) wpr *= 2;
    return wpr;
}

template <int DT, bool NORM, int U, bool ROUTE>
static int matvec_launch(cudaStream_t s, const mv_args &a, const float *x, const rt_args &rt) {
    int rows = 0;
    for (int i = 0; i < a.nseg; i++) rows += a.rows[i];
    int nch = DT == SL_DTYPE_F32 ? a.cols >> 2 : a.cols >> 3, wpr = matvec_wpr(rows, nch);
    int rpb = MM_THREADS / 32 / wpr;
    dim3 grid((rows + rpb - 1) / rpb);
    size_t sm = NORM ? (size_t)a.cols * sizeof(float) : 0;
    const char *what = "kernel_matvec";
    switch (wpr) {
    case 1: return dlaunch(what, kernel_matvec<DT, 1, NORM, U, ROUTE>, grid, MM_THREADS, sm, s, a, x, rt);
    case 2: return dlaunch(what, kernel_matvec<DT, 2, NORM, U, ROUTE>, grid, MM_THREADS, sm, s, a, x, rt);
    case 4: return dlaunch(what, kernel_matvec<DT, 4, NORM, U, ROUTE>, grid, MM_THREADS, sm, s, a, x, rt);
    default: return dlaunch(what, kernel_matvec<DT, 8, NORM, U, ROUTE>, grid, MM_THREADS, sm, s, a, x, rt);
    }
}

template <int DT, bool ROUTE>
static int matvec_launch_dt(cudaStream_t s, const mv_args &a, const float *x, const rt_args &rt) {
    bool u8 = cuda_tune("SLUICE_CUDA_MVU", 4) == 8;
    if (a.nw)
        return u8 ? matvec_launch<DT, true, 8, ROUTE>(s, a, x, rt)
                  : matvec_launch<DT, true, 4, ROUTE>(s, a, x, rt);
    return u8 ? matvec_launch<DT, false, 8, ROUTE>(s, a, x, rt)
              : matvec_launch<DT, false, 4, ROUTE>(s, a, x, rt);
}

bool matvec_ok(int dtype, const void *w, int cols) {
    uint64_t rb = quant_row_bytes(dtype, (uint64_t)cols);
    return (dtype == SL_DTYPE_BF16 || dtype == SL_DTYPE_F16 || dtype == SL_DTYPE_F32) && rb &&
           rows_aligned(w, rb, cols);
}

template <bool ROUTE>
static int matvec_run_rt(cudaStream_t s, int dtype, const mv_args &a, const float *x,
                         const rt_args &rt) {
    if (dtype == SL_DTYPE_BF16) return matvec_launch_dt<SL_DTYPE_BF16, ROUTE>(s, a, x, rt);
    if (dtype == SL_DTYPE_F16) return matvec_launch_dt<SL_DTYPE_F16, ROUTE>(s, a, x, rt);
    return matvec_launch_dt<SL_DTYPE_F32, ROUTE>(s, a, x, rt);
}

int matvec_run(cudaStream_t s, int dtype, const mv_args &a, const float *x) {
    rt_args none = {};
    return matvec_run_rt<false>(s, dtype, a, x, none);
}

/* The mv_args of matvec_multi_cuda; SL_ERR_UNSUPPORTED (no message) when
 * the formats do not qualify. */
static int mv_args_fill(mv_args *a, int dtype, int nseg, const void *const w[], float *const y[],
                        const float *const bias[], const int rows[], int cols,
                        const float *norm_w, float eps, float *x_norm_out) {
    if (nseg < 1 || nseg > 3 || cols < 1)
        return sl_seterr(SL_ERR_ARG, "matvec_multi_cuda: %d segments, %d cols", nseg, cols);
    *a = mv_args{};
    for (int i = 0; i < nseg; i++) {
        if (!matvec_ok(dtype, w[i], cols) || rows[i] < 1)
            return SL_ERR_UNSUPPORTED; /* the caller falls back; no message */
        a->W[i] = (const uint8_t *)w[i];
        a->y[i] = y[i];
        a->bias[i] = bias[i];
        a->rows[i] = rows[i];
    }
    if (norm_w && (size_t)cols * sizeof(float) > 48 * 1024) return SL_ERR_UNSUPPORTED;
    a->nseg = nseg;
    a->rb = quant_row_bytes(dtype, (uint64_t)cols);
    a->cols = cols;
    a->nw = norm_w;
    a->eps = eps;
    a->xn_out = x_norm_out;
    return SL_OK;
}

int matvec_multi_cuda(cudaStream_t s, int dtype, int nseg, const void *const w[],
                      float *const y[], const float *const bias[], const int rows[], int cols,
                      const float *x, const float *norm_w, float eps, float *x_norm_out) {
    mv_args a;
    int st = mv_args_fill(&a, dtype, nseg, w, y, bias, rows, cols, norm_w, eps, x_norm_out);
    return st ? st : matvec_run(s, dtype, a, x);
}

int matvec_route_cuda(cudaStream_t s, int dtype, const void *w, const float *bias, int ne,
                      int cols, const float *x, const float *norm_w, float eps,
                      float *x_norm_out, float *logits, int k, int kind, int norm,
                      int32_t *ids, float *wts, uint8_t *const *table, struct part_off off,
                      struct moe_item *items, int32_t *sel, int32_t *n_items,
                      unsigned int *done) {
    if (!cuda_tune("SLUICE_CUDA_ROUTEFUSE", 1) || !done || k < 1 || k > ne ||
        !route_small_ok(ne, k))
        return SL_ERR_UNSUPPORTED;
    const void *wv[1] = {w};
    float *yv[1] = {logits};
    const float *bv[1] = {bias};
    int rows[1] = {ne};
    mv_args a;
    int st = mv_args_fill(&a, dtype, 1, wv, yv, bv, rows, cols, norm_w, eps, x_norm_out);
    if (st) return st;
    rt_args rt = {k, kind, norm, table != NULL, ids, wts, table, off, items, sel, n_items, done};
    return matvec_run_rt<true>(s, dtype, a, x, rt);
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
template <int GU_RPW, int GU_PRE, bool VX>
__global__ void __launch_bounds__(MM_THREADS)
    kernel_expert_gate_up_q4(ffn_shape sh, const moe_item *items, const int32_t *n_items,
                             moe_item one, const int32_t *__restrict__ sel, int k,
                             const float *__restrict__ X, float *__restrict__ H) {
    extern __shared__ float xs[]; /* (hidden + hidden / 32) */
    pdl_trigger();
    pdl_wait(); /* items, n_items, sel and X come from earlier kernels */
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
        if (VX) /* 16-byte loads: 4 elements of one 32-block, contiguous in xs */
            for (int i = threadIdx.x; i < (sh.hidden >> 2); i += MM_THREADS) {
                float4 v = reinterpret_cast<const float4 *>(x)[i];
                float *d = xs + xpad(4 * i);
                d[0] = v.x, d[1] = v.y, d[2] = v.z, d[3] = v.w;
            }
        else
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
                H[(uint64_t)sj * sh.ffn + r0 + q] = ffn_h(sh, sj, r0 + q, gsum, usum);
        }
    }
}

int expert_gate_up_q4_cuda(cudaStream_t s, const ffn_shape *sh, const moe_item *items,
                           const int32_t *n_items, int max_items, moe_item one,
                           const int32_t *sel, int k, const float *X, float *H) {
    int v = cuda_tune("SLUICE_CUDA_GU", 4), rpw = v == 0 || v >= 3 ? 2 : 1;
    int rpb = MM_THREADS / 32 * rpw;
    dim3 g2((sh->ffn + rpb - 1) / rpb, items ? max_items : 1);
    size_t smem = (size_t)(sh->hidden + sh->hidden / 32) * sizeof(float);
    const char *what = "kernel_expert_gate_up_q4";
    if (v == 0)
        return dlaunch(what, kernel_expert_gate_up_q4<2, 0, false>, g2, MM_THREADS, smem, s, *sh,
                       items, n_items, one, sel, k, X, H);
    if (v == 1)
        return dlaunch(what, kernel_expert_gate_up_q4<1, 2, false>, g2, MM_THREADS, smem, s, *sh,
                       items, n_items, one, sel, k, X, H);
    if (v == 3) /* every weight load of the 2 pairs (hidden <= 2048) before x is staged */
        return dlaunch(what, kernel_expert_gate_up_q4<2, 2, true>, g2, MM_THREADS, smem, s, *sh,
                       items, n_items, one, sel, k, X, H);
    if (v == 4)
        return dlaunch(what, kernel_expert_gate_up_q4<2, 0, true>, g2, MM_THREADS, smem, s, *sh,
                       items, n_items, one, sel, k, X, H);
    return dlaunch(what, kernel_expert_gate_up_q4<1, 0, false>, g2, MM_THREADS, smem, s, *sh,
                   items, n_items, one, sel, k, X, H);
}

#define DC_MAX_K 64
#define DC_UNROLL 4 /* (selection, block) pairs whose loads a lane keeps in flight */

/* One lane's DC_UNROLL (selection, block) pairs starting at pair i0 of row
 * r (SX path): pair i = si * nb + b, si the selection's rank in expert-id
 * order. */
struct dc_batch {
    uint4 v[DC_UNROLL];
    float d[DC_UNROLL], m[DC_UNROLL];
    int sv[DC_UNROLL], bv[DC_UNROLL];
};
__device__ __forceinline__ void dc_load(dc_batch &q, int i0, int total, int nb, int r,
                                        const int *order, const uint8_t *const *down,
                                        uint64_t rb, uint64_t dofs, uint64_t mofs) {
#pragma unroll
    for (int u = 0; u < DC_UNROLL; u++) {
        int i = i0 + 32 * u;
        if (i < total) {
            int si = i / nb, b = i - si * nb, s = order[si];
            const uint8_t *row = down[s] + (uint64_t)r * rb;
            q.v[u] = __ldg(reinterpret_cast<const uint4 *>(row) + b);
            q.d[u] = f16f(ldu16(row + dofs + 2 * b));
            q.m[u] = f16f(ldu16(row + mofs + 2 * b));
            q.sv[u] = s;
            q.bv[u] = b;
        }
    }
}

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
 * per selection. RANK (SLUICE_CUDA_DC=1): thread s < nk finds selection
 * s's rank among the ids (the stable order the serial insertion sort of
 * RANK = false gives), and with SX each lane's first loads are issued
 * before H is staged. */
template <int DT, bool A, bool SX, bool RANK>
__global__ void __launch_bounds__(MM_THREADS)
    kernel_expert_down_combine(ffn_shape sh, const moe_item *items, int nk,
                               const int32_t *__restrict__ sel, const int32_t *__restrict__ ids,
                               const float *__restrict__ w, const float *__restrict__ H,
                               float *__restrict__ x) {
    extern __shared__ float hs[]; /* SX: (nk, ffn + ffn / 32) */
    __shared__ const uint8_t *down[DC_MAX_K];
    __shared__ float ws[DC_MAX_K];
    __shared__ int order[DC_MAX_K];
    pdl_trigger();
    pdl_wait(); /* items, sel, ids, w, H and x come from earlier kernels */
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, ffn = sh.ffn;
    if (threadIdx.x < nk) {
        moe_item it = items[threadIdx.x];
        int s = sel[it.start];
        down[s] = it.down;
        ws[s] = w[s];
    }
    if (RANK) {
        if (threadIdx.x < nk) {
            int s = threadIdx.x, my = ids[s], rank = 0;
            for (int j = 0; j < nk; j++) {
                int o = ids[j];
                rank += o < my || (o == my && j < s);
            }
            order[rank] = s;
        }
    } else if (threadIdx.x == 0) {
        for (int s = 0; s < nk; s++) order[s] = s;
        for (int a = 1; a < nk; a++) /* insertion sort by expert id */
            for (int b = a; b > 0 && ids[order[b]] < ids[order[b - 1]]; b--) {
                int tmp = order[b];
                order[b] = order[b - 1];
                order[b - 1] = tmp;
            }
    }
    int r = blockIdx.x * (MM_THREADS / 32) + warp, padded = ffn + (ffn >> 5);
    int nb = ffn >> 5, total = nk * nb;
    uint64_t dofs = (uint64_t)(ffn >> 1), mofs = dofs + 2 * (uint64_t)nb;
    dc_batch q;
    if (SX && RANK) {
        __syncthreads(); /* order and down */
        if (r < sh.hidden) dc_load(q, lane, total, nb, r, order, down, sh.rb_down, dofs, mofs);
    }
    if (SX)
        for (int i = threadIdx.x; i < nk * ffn; i += MM_THREADS) {
            int s = i / ffn, c = i - s * ffn;
            hs[s * padded + xpad(c)] = H[i];
        }
    __syncthreads();
    if (r >= sh.hidden) return;
    float acc = 0.f;
    if constexpr (SX) {
        for (int i0 = lane; i0 < total; i0 += 32 * DC_UNROLL) {
            if (!RANK || i0 != lane) dc_load(q, i0, total, nb, r, order, down, sh.rb_down, dofs, mofs);
#pragma unroll
            for (int u = 0; u < DC_UNROLL; u++)
                if (i0 + 32 * u < total)
                    acc += ws[q.sv[u]] *
                           q4_block_dot(q.v[u], q.d[u], q.m[u], hs + q.sv[u] * padded + 33 * q.bv[u]);
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
    if (lane == 0 && sh.down_b) /* gpt_oss: the experts' down biases, weighted */
        for (int si = 0; si < nk; si++) {
            int s = order[si];
            acc += ws[s] * sh.down_b[(uint64_t)ids[s] * sh.hidden + r];
        }
    if (lane == 0) x[r] += acc;
}

/* SLUICE_CUDA_DC = 2, 3: kernel_expert_down_combine's Q4 shared-memory path
 * (SX, RANK) with every weight load of the row issued at once (U pairs per
 * lane: U = 8 covers k = 8, ffn = 1024 in one batch), H staged with
 * 16-byte loads, RPW output rows per warp (fewer blocks, fewer copies of
 * H). Each row's lanes take the same (selection, block) pairs in the same
 * order as kernel_expert_down_combine and add them with the same
 * expression, so the sums are the same. Rows past hidden load row
 * hidden - 1 and write nothing. */
template <int U>
struct dc_batch_t {
    uint4 v[U];
    float d[U], m[U];
    int sv[U], bv[U];
};
template <int U>
__device__ __forceinline__ void dc_load_t(dc_batch_t<U> &q, int i0, int total, int nb, int r,
                                          const int *order, const uint8_t *const *down,
                                          uint64_t rb, uint64_t dofs, uint64_t mofs) {
#pragma unroll
    for (int u = 0; u < U; u++) {
        int i = i0 + 32 * u;
        if (i < total) {
            int si = i / nb, b = i - si * nb, s = order[si];
            const uint8_t *row = down[s] + (uint64_t)r * rb;
            q.v[u] = __ldg(reinterpret_cast<const uint4 *>(row) + b);
            q.d[u] = f16f(ldu16(row + dofs + 2 * b));
            q.m[u] = f16f(ldu16(row + mofs + 2 * b));
            q.sv[u] = s;
            q.bv[u] = b;
        }
    }
}

template <int RPW, int U>
__global__ void __launch_bounds__(MM_THREADS)
    kernel_expert_down_combine_v(ffn_shape sh, const moe_item *items, int nk,
                                 const int32_t *__restrict__ sel, const int32_t *__restrict__ ids,
                                 const float *__restrict__ w, const float *__restrict__ H,
                                 float *__restrict__ x) {
    extern __shared__ float hs[]; /* (nk, ffn + ffn / 32) */
    __shared__ const uint8_t *down[DC_MAX_K];
    __shared__ float ws[DC_MAX_K];
    __shared__ int order[DC_MAX_K];
    pdl_trigger();
    pdl_wait(); /* items, sel, ids, w, H and x come from earlier kernels */
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, ffn = sh.ffn;
    if (threadIdx.x < nk) {
        moe_item it = items[threadIdx.x];
        int s = sel[it.start];
        down[s] = it.down;
        ws[s] = w[s];
        int me = threadIdx.x, my = ids[me], rank = 0;
        for (int j = 0; j < nk; j++) {
            int o = ids[j];
            rank += o < my || (o == my && j < me);
        }
        order[rank] = me;
    }
    __syncthreads(); /* order, down, ws */
    int r0 = (blockIdx.x * (MM_THREADS / 32) + warp) * RPW, padded = ffn + (ffn >> 5);
    int nb = ffn >> 5, total = nk * nb;
    uint64_t dofs = (uint64_t)(ffn >> 1), mofs = dofs + 2 * (uint64_t)nb;
    int rr[RPW];
    dc_batch_t<U> q[RPW];
#pragma unroll
    for (int j = 0; j < RPW; j++) {
        rr[j] = r0 + j < sh.hidden ? r0 + j : sh.hidden - 1;
        dc_load_t<U>(q[j], lane, total, nb, rr[j], order, down, sh.rb_down, dofs, mofs);
    }
    const float4 *H4 = reinterpret_cast<const float4 *>(H); /* ffn % 32 == 0 */
#pragma unroll 4
    for (int i = threadIdx.x; i < (total << 3); i += MM_THREADS) {
        float4 v = H4[i];
        int e = 4 * i, s = e / ffn, c = e - s * ffn;
        float *d = hs + s * padded + xpad(c);
        d[0] = v.x, d[1] = v.y, d[2] = v.z, d[3] = v.w;
    }
    __syncthreads();
    float acc[RPW];
#pragma unroll
    for (int j = 0; j < RPW; j++) acc[j] = 0.f;
    for (int i0 = lane; i0 < total; i0 += 32 * U) {
        if (i0 != lane)
#pragma unroll
            for (int j = 0; j < RPW; j++)
                dc_load_t<U>(q[j], i0, total, nb, rr[j], order, down, sh.rb_down, dofs, mofs);
#pragma unroll
        for (int j = 0; j < RPW; j++)
#pragma unroll
            for (int u = 0; u < U; u++)
                if (i0 + 32 * u < total)
                    acc[j] += ws[q[j].sv[u]] * q4_block_dot(q[j].v[u], q[j].d[u], q[j].m[u],
                                                            hs + q[j].sv[u] * padded +
                                                                33 * q[j].bv[u]);
    }
#pragma unroll
    for (int j = 0; j < RPW; j++) {
        float a = warp_sum(acc[j]);
        if (lane == 0 && r0 + j < sh.hidden) {
            if (sh.down_b) /* gpt_oss: the experts' down biases, weighted */
                for (int si = 0; si < nk; si++) {
                    int s = order[si];
                    a += ws[s] * sh.down_b[(uint64_t)ids[s] * sh.hidden + r0 + j];
                }
            x[r0 + j] += a;
        }
    }
}

template <bool RANK>
static int down_combine_launch(cudaStream_t s, const struct ffn_shape *sh,
                               const struct moe_item *items, int nk, const int32_t *sel,
                               const int32_t *ids, const float *w, const float *H, float *x) {
    dim3 grid((sh->hidden + MM_THREADS / 32 - 1) / (MM_THREADS / 32));
    bool al = sh->aligned_down;
    size_t smem = (size_t)nk * (sh->ffn + sh->ffn / 32) * sizeof(float);
    const char *what = "kernel_expert_down_combine";
    if (sh->dt_down == SL_DTYPE_Q4 && al && smem <= 48 * 1024)
        return dlaunch(what, kernel_expert_down_combine<SL_DTYPE_Q4, true, true, RANK>, grid,
                       MM_THREADS, smem, s, *sh, items, nk, sel, ids, w, H, x);
#define DC_CASE(DT)                                                                          \
    return al ? dlaunch(what, kernel_expert_down_combine<DT, true, false, RANK>, grid,       \
                        MM_THREADS, 0, s, *sh, items, nk, sel, ids, w, H, x)                 \
              : dlaunch(what, kernel_expert_down_combine<DT, false, false, RANK>, grid,      \
                        MM_THREADS, 0, s, *sh, items, nk, sel, ids, w, H, x);
    DISPATCH_DT(sh->dt_down, DC_CASE)
#undef DC_CASE
}

int expert_down_combine_cuda(cudaStream_t s, const struct ffn_shape *sh,
                             const struct moe_item *items, int nk, const int32_t *sel,
                             const int32_t *ids, const float *w, const float *H, float *x) {
    if (nk < 1 || nk > DC_MAX_K)
        return sl_seterr(SL_ERR_UNSUPPORTED, "CUDA experts: %d selections per token (max %d)",
                         nk, DC_MAX_K);
    int dc = cuda_tune("SLUICE_CUDA_DC", 2);
    size_t smem = (size_t)nk * (sh->ffn + sh->ffn / 32) * sizeof(float);
    if ((dc == 2 || dc == 3) && sh->dt_down == SL_DTYPE_Q4 && sh->aligned_down &&
        smem <= 48 * 1024) {
        int rpw = dc == 2 ? 1 : 2, rpb = MM_THREADS / 32 * rpw;
        dim3 grid((sh->hidden + rpb - 1) / rpb);
        const char *what = "kernel_expert_down_combine_v";
        if (dc == 2)
            return dlaunch(what, kernel_expert_down_combine_v<1, 8>, grid, MM_THREADS, smem, s,
                           *sh, items, nk, sel, ids, w, H, x);
        return dlaunch(what, kernel_expert_down_combine_v<2, 4>, grid, MM_THREADS, smem, s, *sh,
                       items, nk, sel, ids, w, H, x);
    }
    if (dc)
        return down_combine_launch<true>(s, sh, items, nk, sel, ids, w, H, x);
    return down_combine_launch<false>(s, sh, items, nk, sel, ids, w, H, x);
}
