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
 * Not here: scheduling, the expert cache, the model (forward_cuda.cu).
 */
#include <cuda_fp16.h>
#include <math.h>

#include "cuda/ops_cuda.cuh"

extern "C" {
#include "config.h"
#include "quant.h"
}

#define MM_THREADS 256 /* 8 warps = 8 rows per block */
#define TB_CHUNK 8     /* tokens per weight pass in a prompt chunk */

int cuda_fail(cudaError_t e, const char *what) {
    return sl_seterr(e == cudaErrorMemoryAllocation ? SL_ERR_NOMEM : SL_ERR_IO,
                     "CUDA error in %s: %s (%s)", what, cudaGetErrorString(e),
                     cudaGetErrorName(e));
}

/* The launch just enqueued: a bad configuration is reported now. */
static int launched(const char *what) {
    cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? SL_OK : cuda_fail(e, what);
}

/* ---- device helpers ---------------------------------------------------- */

__device__ __forceinline__ float f16f(uint16_t h) { return __half2float(__ushort_as_half(h)); }
__device__ __forceinline__ float bf16f(uint16_t h) { return __uint_as_float((uint32_t)h << 16); }
__device__ __forceinline__ uint16_t ldu16(const uint8_t *p) {
    return __ldg(reinterpret_cast<const unsigned short *>(p));
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Element i of a row in dtype DT (the specification, element-wise). */
template <int DT>
__device__ __forceinline__ float row_elem(const uint8_t *row, int i, int cols) {
    if (DT == SL_DTYPE_F32) return __ldg(reinterpret_cast<const float *>(row) + i);
    if (DT == SL_DTYPE_F16) return f16f(ldu16(row + 2 * (size_t)i));
    if (DT == SL_DTYPE_BF16) return bf16f(ldu16(row + 2 * (size_t)i));
    int b = i >> 5, j = i & 31;
    if (DT == SL_DTYPE_Q8) {
        float d = f16f(ldu16(row + cols + 2 * b));
        return d * (float)(int8_t)__ldg(row + i);
    }
    /* Q4 */
    int nb = cols >> 5;
    uint8_t byte = __ldg(row + 16 * b + (j & 15));
    int q = j < 16 ? (byte & 15) : (byte >> 4);
    float d = f16f(ldu16(row + (cols >> 1) + 2 * b));
    float m = f16f(ldu16(row + (cols >> 1) + 2 * nb + 2 * b));
    return d * (float)q + m;
}

/* acc[t] += this lane's share of row · xs[t] for t < TB. A: the row is
 * 16-byte aligned and cols a multiple of 8 (x rows 16-byte aligned). */
template <int DT, int TB, bool A>
__device__ __forceinline__ void row_dot(const uint8_t *__restrict__ row, int cols,
                                        const float *const (&xs)[TB], float (&acc)[TB],
                                        int lane) {
    if constexpr (!A) {
        for (int i = lane; i < cols; i += 32) {
            float w = row_elem<DT>(row, i, cols);
#pragma unroll
            for (int t = 0; t < TB; t++) acc[t] += w * xs[t][i];
        }
    } else if constexpr (DT == SL_DTYPE_Q4 || DT == SL_DTYPE_Q8) {
        int nb = cols >> 5;
        for (int b = lane; b < nb; b += 32) {
            float w[32], d, m = 0.f;
            if (DT == SL_DTYPE_Q4) {
                uint4 v = __ldg(reinterpret_cast<const uint4 *>(row + 16 * (size_t)b));
                uint32_t wd[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
                for (int q = 0; q < 4; q++)
#pragma unroll
                    for (int k = 0; k < 4; k++) {
                        uint32_t byte = (wd[q] >> (8 * k)) & 0xffu;
                        w[4 * q + k] = (float)(byte & 15u);
                        w[16 + 4 * q + k] = (float)(byte >> 4);
                    }
                d = f16f(ldu16(row + (cols >> 1) + 2 * b));
                m = f16f(ldu16(row + (cols >> 1) + 2 * nb + 2 * b));
            } else {
                const uint4 *p = reinterpret_cast<const uint4 *>(row + 32 * (size_t)b);
                uint4 v0 = __ldg(p), v1 = __ldg(p + 1);
                uint32_t wd[8] = {v0.x, v0.y, v0.z, v0.w, v1.x, v1.y, v1.z, v1.w};
#pragma unroll
                for (int q = 0; q < 8; q++)
#pragma unroll
                    for (int k = 0; k < 4; k++)
                        w[4 * q + k] = (float)(int8_t)((wd[q] >> (8 * k)) & 0xffu);
                d = f16f(ldu16(row + cols + 2 * b));
            }
#pragma unroll
            for (int t = 0; t < TB; t++) {
                const float4 *x = reinterpret_cast<const float4 *>(xs[t] + 32 * b);
                float sq = 0.f, sx = 0.f;
#pragma unroll
                for (int j = 0; j < 8; j++) {
                    float4 xv = x[j];
                    sq += w[4 * j] * xv.x + w[4 * j + 1] * xv.y + w[4 * j + 2] * xv.z +
                          w[4 * j + 3] * xv.w;
                    if (DT == SL_DTYPE_Q4) sx += xv.x + xv.y + xv.z + xv.w;
                }
                acc[t] += d * sq + (DT == SL_DTYPE_Q4 ? m * sx : 0.f);
            }
        }
    } else if constexpr (DT == SL_DTYPE_F32) {
        for (int c = lane; c < (cols >> 2); c += 32) {
            float4 wv = __ldg(reinterpret_cast<const float4 *>(row) + c);
#pragma unroll
            for (int t = 0; t < TB; t++) {
                float4 xv = reinterpret_cast<const float4 *>(xs[t])[c];
                acc[t] += wv.x * xv.x + wv.y * xv.y + wv.z * xv.z + wv.w * xv.w;
            }
        }
    } else { /* BF16, F16: chunks of 8 */
    for (int c = lane; c < (cols >> 3); c += 32) {
        uint4 v = __ldg(reinterpret_cast<const uint4 *>(row) + c);
        uint32_t wd[4] = {v.x, v.y, v.z, v.w};
        float w[8];
#pragma unroll
        for (int q = 0; q < 4; q++) {
            uint16_t lo = (uint16_t)(wd[q] & 0xffffu), hi = (uint16_t)(wd[q] >> 16);
            w[2 * q] = DT == SL_DTYPE_BF16 ? bf16f(lo) : f16f(lo);
            w[2 * q + 1] = DT == SL_DTYPE_BF16 ? bf16f(hi) : f16f(hi);
        }
#pragma unroll
        for (int t = 0; t < TB; t++) {
            const float4 *x = reinterpret_cast<const float4 *>(xs[t]) + 2 * c;
            float4 a = x[0], b = x[1];
            acc[t] += w[0] * a.x + w[1] * a.y + w[2] * a.z + w[3] * a.w + w[4] * b.x +
                      w[5] * b.y + w[6] * b.z + w[7] * b.w;
        }
    }
    }
}

static bool rows_aligned(const void *w, uint64_t row_bytes, int cols) {
    return ((uintptr_t)w % 16 == 0) && row_bytes % 16 == 0 && cols % 8 == 0;
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

#define MV_UNROLL 4 /* 16-byte loads in flight per lane */

/* y[r] = row r · x (+ bias) (+ y): WPR warps per row (the columns split
 * between them, partial sums added in warp order), each lane keeping
 * MV_UNROLL loads in flight: small matrices (router, k/v) still fill the
 * GPU and large ones stream at full bandwidth. Aligned rows only. */
template <int DT, int WPR>
__global__ void __launch_bounds__(MM_THREADS)
    kernel_matvec(const uint8_t *__restrict__ W, uint64_t rb, const float *__restrict__ x,
                  float *__restrict__ y, int rows, int cols, const float *__restrict__ bias,
                  int accumulate) {
    __shared__ float part[MM_THREADS / 32];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int r = blockIdx.x * (MM_THREADS / 32 / WPR) + warp / WPR, ws = warp % WPR;
    float acc = 0.f;
    if (r < rows) {
        const uint4 *row = reinterpret_cast<const uint4 *>(W + (uint64_t)r * rb);
        int nch = DT == SL_DTYPE_F32 ? cols >> 2 : cols >> 3;
        const int step = 32 * WPR;
        for (int c0 = ws * 32 + lane; c0 < nch; c0 += MV_UNROLL * step) {
            uint4 v[MV_UNROLL];
#pragma unroll
            for (int u = 0; u < MV_UNROLL; u++)
                if (c0 + u * step < nch) v[u] = __ldg(row + c0 + u * step);
#pragma unroll
            for (int u = 0; u < MV_UNROLL; u++)
                if (c0 + u * step < nch) acc += chunk_dot<DT>(v[u], x, c0 + u * step);
        }
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
    if (lane == 0 && r < rows) {
        float b = bias ? bias[r] : 0.f;
        y[r] = accumulate ? y[r] + (acc + b) : acc + b;
    }
}

/* Warps per row for a decode matvec of `rows`: enough warps to fill the
 * GPU (>= 4096) without splitting a row below 32 chunks per warp. */
static int matvec_wpr(int rows, int nch) {
    int wpr = 1;
    while (wpr < 8 && rows * wpr < 4096 && nch / (2 * wpr) >= 32) wpr *= 2;
    return wpr;
}

template <int DT>
static void matvec_launch(cudaStream_t s, const uint8_t *W, uint64_t rb, const float *x,
                          float *y, int rows, int cols, const float *bias, int accumulate) {
    int nch = DT == SL_DTYPE_F32 ? cols >> 2 : cols >> 3, wpr = matvec_wpr(rows, nch);
    int rpb = MM_THREADS / 32 / wpr;
    dim3 grid((rows + rpb - 1) / rpb);
    switch (wpr) {
    case 1: kernel_matvec<DT, 1><<<grid, MM_THREADS, 0, s>>>(W, rb, x, y, rows, cols, bias, accumulate); break;
    case 2: kernel_matvec<DT, 2><<<grid, MM_THREADS, 0, s>>>(W, rb, x, y, rows, cols, bias, accumulate); break;
    case 4: kernel_matvec<DT, 4><<<grid, MM_THREADS, 0, s>>>(W, rb, x, y, rows, cols, bias, accumulate); break;
    default: kernel_matvec<DT, 8><<<grid, MM_THREADS, 0, s>>>(W, rb, x, y, rows, cols, bias, accumulate); break;
    }
}

#define DISPATCH_DT(dt, CASE)                                                          \
    switch (dt) {                                                                      \
    case SL_DTYPE_F32: CASE(SL_DTYPE_F32); break;                                      \
    case SL_DTYPE_F16: CASE(SL_DTYPE_F16); break;                                      \
    case SL_DTYPE_BF16: CASE(SL_DTYPE_BF16); break;                                    \
    case SL_DTYPE_Q8: CASE(SL_DTYPE_Q8); break;                                        \
    case SL_DTYPE_Q4: CASE(SL_DTYPE_Q4); break;                                        \
    default: return sl_seterr(SL_ERR_UNSUPPORTED, "CUDA: no kernel for dtype %d", dt); \
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
    if (n == 1 && al && (dtype == SL_DTYPE_BF16 || dtype == SL_DTYPE_F16 || dtype == SL_DTYPE_F32)) {
        if (dtype == SL_DTYPE_BF16)
            matvec_launch<SL_DTYPE_BF16>(s, W, rb, X, Y, rows, cols, bias, accumulate);
        else if (dtype == SL_DTYPE_F16)
            matvec_launch<SL_DTYPE_F16>(s, W, rb, X, Y, rows, cols, bias, accumulate);
        else
            matvec_launch<SL_DTYPE_F32>(s, W, rb, X, Y, rows, cols, bias, accumulate);
        return launched("kernel_matvec");
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

/* Sum of v over the block (blockDim.x a multiple of 32, <= 1024); every
 * thread gets the result. */
__device__ double block_sum_d(double v) {
    __shared__ double part[32];
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum_d(v);
    __syncthreads(); /* part[] may still be read by a previous call */
    if (lane == 0) part[w] = v;
    __syncthreads();
    double t = 0;
    for (int i = 0; i < nw; i++) t += part[i];
    return t;
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
                                     const float *__restrict__ inv_freq) {
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
                                                              inv_freq);
    return launched("kernel_qk_rope_store");
}

/* ---- attention --------------------------------------------------------- */

#define ATT_THREADS 256

/* One block per (head, token). Scores go to global scratch (any context
 * length); the weighted sum splits positions over ATT_THREADS / hd groups
 * that are added in a fixed order. */
__global__ void __launch_bounds__(ATT_THREADS)
    kernel_attention(const float *__restrict__ q, const float *__restrict__ kc,
                     const float *__restrict__ vc, float *__restrict__ out, float *scores,
                     const int32_t *d_pos, int nh, int nkv, int hd, int n_ctx, float scale) {
    extern __shared__ float sm[]; /* qs (hd) | part (groups * hd) */
    __shared__ float red[32];
    int h = blockIdx.x, t = blockIdx.y, tid = threadIdx.x;
    int lane = tid & 31, wid = tid >> 5, nw = ATT_THREADS / 32;
    int np = *d_pos + t + 1, kv_dim = nkv * hd, kvh = h / (nh / nkv);
    float *qs = sm, *part = sm + hd;
    const float *qh = q + ((uint64_t)t * nh + h) * hd;
    for (int i = tid; i < hd; i += ATT_THREADS) qs[i] = qh[i];
    __syncthreads();
    float *sc = scores + ((uint64_t)t * nh + h) * n_ctx;
    for (int p = wid; p < np; p += nw) {
        const float *kr = kc + (uint64_t)p * kv_dim + (uint64_t)kvh * hd;
        float d = 0.f;
        for (int i = lane; i < hd; i += 32) d += qs[i] * kr[i];
        d = warp_sum(d);
        if (lane == 0) sc[p] = d * scale;
    }
    __syncthreads();
    float mx = -INFINITY;
    for (int p = tid; p < np; p += ATT_THREADS) mx = fmaxf(mx, sc[p]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    if (lane == 0) red[wid] = mx;
    __syncthreads();
    mx = red[0];
    for (int i = 1; i < nw; i++) mx = fmaxf(mx, red[i]);
    double sum = 0;
    for (int p = tid; p < np; p += ATT_THREADS) {
        float e = expf(sc[p] - mx);
        sc[p] = e;
        sum += e;
    }
    sum = block_sum_d(sum); /* its barriers also publish sc[] */
    float inv = (float)(1.0 / sum);
    int groups = ATT_THREADS / hd, d = tid % hd, g = tid / hd;
    if (g < groups) {
        const float *vr = vc + (uint64_t)kvh * hd + d;
        float acc = 0.f;
        for (int p = g; p < np; p += groups) acc += sc[p] * vr[(uint64_t)p * kv_dim];
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
                                                            nh, nkv, hd, n_ctx, scale);
    return launched("kernel_attention");
}

/* ---- routing ----------------------------------------------------------- */

/* (a, ia) ranks before (b, ib): larger first, NaN last, ties to the lower
 * index (ops_topk). */
__device__ __forceinline__ bool topk_before(float a, int ia, float b, int ib) {
    if (ia < 0) return false;
    if (ib < 0) return true;
    if (a != a) return b != b && ia < ib;
    if (b != b) return true;
    return a > b || (a == b && ia < ib);
}

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

#define GU_RPW 2 /* gate/up row pairs per warp */

/* Decode gate/up for Q4 rows (16-byte aligned): the item's x row staged
 * in shared memory once per block, each warp GU_RPW gate/up row pairs
 * with all their loads in flight, SwiGLU in the epilogue. */
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
    for (int j = 0; j < it.count; j++) {
        int sj = sel[it.start + j];
        const float *x = X + (uint64_t)(sj / k) * sh.hidden;
        __syncthreads(); /* the previous selection's reads of xs are done */
        for (int i = threadIdx.x; i < sh.hidden; i += MM_THREADS) xs[xpad(i)] = x[i];
        __syncthreads();
        float ga[GU_RPW], ua[GU_RPW];
#pragma unroll
        for (int q = 0; q < GU_RPW; q++) ga[q] = ua[q] = 0.f;
        for (int b = lane; b < nb; b += 32) {
            uint4 gv[GU_RPW], uv[GU_RPW];
            float gd[GU_RPW], gm[GU_RPW], ud[GU_RPW], um[GU_RPW];
#pragma unroll
            for (int q = 0; q < GU_RPW; q++) {
                int r = r0 + q < sh.ffn ? r0 + q : sh.ffn - 1;
                const uint8_t *g = it.gate + (uint64_t)r * sh.rb_gu;
                const uint8_t *u = it.up + (uint64_t)r * sh.rb_gu;
                gv[q] = __ldg(reinterpret_cast<const uint4 *>(g) + b);
                uv[q] = __ldg(reinterpret_cast<const uint4 *>(u) + b);
                gd[q] = f16f(ldu16(g + dofs + 2 * b));
                gm[q] = f16f(ldu16(g + mofs + 2 * b));
                ud[q] = f16f(ldu16(u + dofs + 2 * b));
                um[q] = f16f(ldu16(u + mofs + 2 * b));
            }
            const float *xb = xs + 33 * b;
#pragma unroll
            for (int q = 0; q < GU_RPW; q++) {
                ga[q] += q4_block_dot(gv[q], gd[q], gm[q], xb);
                ua[q] += q4_block_dot(uv[q], ud[q], um[q], xb);
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

#define DC_RPW 2      /* down rows per warp */
#define DC_MAX_K 64

/* Decode down + weighted combine: x[r] += sum over the token's nk
 * selections in expert-id order of w[s] * (down_s row r · H[s]). items
 * [0, nk) each hold one selection (sel[start] = s, its down rows); each
 * lane accumulates w[s] * its share of every selection's dot product in
 * that fixed order, one warp reduction at the end: the result depends only
 * on the ids, weights and bytes, not on where or in which order the items
 * were listed (resident or streaming: bit-identical). Q4 aligned rows read
 * the H rows from padded shared memory (SX). */
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
    if (SX) {
        int padded = ffn + (ffn >> 5);
        for (int i = threadIdx.x; i < nk * ffn; i += MM_THREADS) {
            int s = i / ffn, c = i - s * ffn;
            hs[s * padded + xpad(c)] = H[i];
        }
    }
    __syncthreads();
    int r0 = (blockIdx.x * (MM_THREADS / 32) + warp) * DC_RPW;
    float acc[DC_RPW];
#pragma unroll
    for (int q = 0; q < DC_RPW; q++) acc[q] = 0.f;
    for (int si = 0; si < nk; si++) {
        int s = order[si];
        float wt = ws[s];
        const uint8_t *base = down[s];
#pragma unroll
        for (int q = 0; q < DC_RPW; q++) {
            int r = r0 + q < sh.hidden ? r0 + q : sh.hidden - 1;
            const uint8_t *row = base + (uint64_t)r * sh.rb_down;
            float part = 0.f;
            if constexpr (SX) {
                int nb = ffn >> 5;
                const float *hrow = hs + s * (ffn + (ffn >> 5));
                uint64_t dofs = (uint64_t)(ffn >> 1), mofs = dofs + 2 * (uint64_t)nb;
                for (int b = lane; b < nb; b += 32) {
                    uint4 v = __ldg(reinterpret_cast<const uint4 *>(row) + b);
                    float d = f16f(ldu16(row + dofs + 2 * b)), m = f16f(ldu16(row + mofs + 2 * b));
                    part += q4_block_dot(v, d, m, hrow + 33 * b);
                }
            } else {
                const float *xs1[1] = {H + (uint64_t)s * ffn};
                float a1[1] = {0.f};
                row_dot<DT, 1, A>(row, ffn, xs1, a1, lane);
                part = a1[0];
            }
            acc[q] += wt * part;
        }
    }
#pragma unroll
    for (int q = 0; q < DC_RPW; q++) {
        float v = warp_sum(acc[q]);
        if (lane == 0 && r0 + q < sh.hidden) x[r0 + q] += v;
    }
}

int expert_down_combine_cuda(cudaStream_t s, const struct ffn_shape *sh,
                             const struct moe_item *items, int nk, const int32_t *sel,
                             const int32_t *ids, const float *w, const float *H, float *x) {
    if (nk < 1 || nk > DC_MAX_K)
        return sl_seterr(SL_ERR_UNSUPPORTED, "CUDA experts: %d selections per token (max %d)",
                         nk, DC_MAX_K);
    int rpb = MM_THREADS / 32 * DC_RPW;
    dim3 grid((sh->hidden + rpb - 1) / rpb);
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
                H[(uint64_t)sj[i] * sh.ffn + r] = gv / (1.0f + expf(-gv)) * uv;
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
    if (max_count == 1 && al && sh->dt_gu == SL_DTYPE_Q4 && sh->hidden <= 8192) {
        int rpb = MM_THREADS / 32 * GU_RPW;
        dim3 g2((sh->ffn + rpb - 1) / rpb, items ? max_items : 1);
        size_t smem = (size_t)(sh->hidden + sh->hidden / 32) * sizeof(float);
        kernel_expert_gate_up_q4<<<g2, MM_THREADS, smem, s>>>(*sh, items, n_items, one, sel, k,
                                                              X, H);
        return launched("kernel_expert_gate_up_q4");
    }
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
