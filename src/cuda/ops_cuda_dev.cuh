/*
 * ops_cuda_dev.cuh — what the kernel files of the CUDA backend share
 * (ops_cuda.cu: the general kernels; ops_decode_cuda.cu: the one-token
 * decode kernels): device helpers that read rows in the formats of
 * src/quant.h, warp/block reductions, the top-k order, launch checking, and
 * the launchers one file calls in the other. C++, included by those two
 * .cu files only (each gets its own copy of the static helpers; no
 * relocatable device code).
 */
#ifndef SL_CUDA_OPS_CUDA_DEV_CUH
#define SL_CUDA_OPS_CUDA_DEV_CUH

#include <cuda_fp16.h>
#include <math.h>
#include <stdlib.h>

#include "cuda/ops_cuda.cuh"

extern "C" {
#include "config.h"
#include "quant.h"
}

#define MM_THREADS 256 /* 8 warps = 8 rows per block */
#define TB_CHUNK 8     /* tokens per weight pass in a prompt chunk */

/* The launch just enqueued: a bad configuration is reported now. */
static inline int launched(const char *what) {
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

static inline bool rows_aligned(const void *w, uint64_t row_bytes, int cols) {
    return ((uintptr_t)w % 16 == 0) && row_bytes % 16 == 0 && cols % 8 == 0;
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

/* Sum of v over the block (blockDim.x a multiple of 32, <= 1024); every
 * thread gets the result. */
static __device__ double block_sum_d(double v) {
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

/* (a, ia) ranks before (b, ib): larger first, NaN last, ties to the lower
 * index (ops_topk). */
__device__ __forceinline__ bool topk_before(float a, int ia, float b, int ib) {
    if (ia < 0) return false;
    if (ib < 0) return true;
    if (a != a) return b != b && ia < ib;
    if (b != b) return true;
    return a > b || (a == b && ia < ib);
}

/* The expert activation of row r of selection sj from its gate and up dot
 * products: + the gate/up biases of expert sh.ids[sj] when sh.gu_b, then
 * the clamped SwiGLU of gpt-oss when sh.limit > 0 (ops_swiglu_clamped's
 * arithmetic), else silu(g) * u exactly as before (ops_swiglu). */
__device__ __forceinline__ float ffn_h(const ffn_shape &sh, int sj, int r, float g, float u) {
    if (sh.gu_b) {
        const float *b = sh.gu_b + (uint64_t)sh.ids[sj] * 2 * sh.ffn;
        g += b[2 * r];
        u += b[2 * r + 1];
    }
    if (sh.limit > 0.f) {
        float lim = sh.limit;
        g = g < lim ? g : lim;
        u = u < -lim ? -lim : u > lim ? lim : u;
        float glu = g / (1.0f + expf(-(g * sh.alpha)));
        return (u + 1.0f) * glu;
    }
    return g / (1.0f + expf(-g)) * u;
}

/* ---- launchers across the files (ops_decode_cuda.cu, ops_ext_cuda.cu) --- */

/* Decode attention split over spans of ATT_SPAN positions (ops_ext_cuda.cu):
 * the scratch floats it needs (0 when n_ctx <= ATT_SPAN: no split), and
 * the two launches (contract: attention_ext_cuda). */
#define ATT_SPAN 256
size_t attention_split_floats(int nh, int hd, int n_ctx, int window);
int attention_split_cuda(cudaStream_t s, const float *q, const float *kcache,
                         const float *vcache, float *out, float *part, const int32_t *d_pos,
                         int nh, int nkv, int hd, int n_ctx, float scale, int window,
                         const float *sinks);

/* dtype is a dense format (BF16, F16, F32) and w's rows of cols are
 * 16-byte aligned: matvec_run applies. */
bool matvec_ok(int dtype, const void *w, int cols);
/* The decode matvec over a's segments (x: (cols) floats). */
int matvec_run(cudaStream_t s, int dtype, const mv_args &a, const float *x);
/* The register router applies: ne <= 256, k <= 32. */
static inline bool route_small_ok(int ne, int k) { return ne <= 256 && k <= 32; }
/* route_cuda through the register router (same ids and weights). */
int route_small_cuda(cudaStream_t s, const float *logits, int n, int ne, int k, int kind,
                     int norm, int32_t *ids, float *w, uint8_t *const *table, part_off off,
                     moe_item *items, int32_t *sel, int32_t *n_items);
/* expert_gate_up_cuda for one selection per item with Q4 aligned rows,
 * hidden <= 8192. */
int expert_gate_up_q4_cuda(cudaStream_t s, const ffn_shape *sh, const moe_item *items,
                           const int32_t *n_items, int max_items, moe_item one,
                           const int32_t *sel, int k, const float *X, float *H);

#endif /* SL_CUDA_OPS_CUDA_DEV_CUH */
