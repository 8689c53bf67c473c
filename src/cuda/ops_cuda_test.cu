/*
 * ops_cuda_test.cu — the host-pointer twins of ops_cuda_test.h (tests
 * only): upload, run one kernel, download, free. Every device buffer is
 * filled with NaN first, so an element a kernel fails to write shows up.
 */
#include <math.h>

#include "cuda/ops_cuda.cuh"

extern "C" {
#include "config.h"
#include "cuda/ops_cuda_test.h"
#include "quant.h"
}

/* A scope of device allocations freed together. */
struct dscope {
    void *p[16];
    int n;
    cudaStream_t s;
};

static void scope_free(struct dscope *d) {
    if (d->s) cudaStreamSynchronize(d->s);
    for (int i = 0; i < d->n; i++) cudaFree(d->p[i]);
    if (d->s) cudaStreamDestroy(d->s);
}

/* Device copy of bytes (or NaN-filled when src is NULL). */
static int dput(struct dscope *d, void **out, const void *src, size_t bytes) {
    void *p = NULL;
    CU_TRY(cudaMalloc(&p, bytes ? bytes : 4));
    d->p[d->n++] = p;
    if (src) CU_TRY(cudaMemcpy(p, src, bytes, cudaMemcpyHostToDevice));
    else CU_TRY(cudaMemset(p, 0xff, bytes)); /* 0xffffffff is a NaN */
    *out = p;
    return SL_OK;
}

static int finish(struct dscope *d, int st) {
    if (!st) {
        cudaError_t e = cudaStreamSynchronize(d->s);
        if (e != cudaSuccess) st = cuda_fail(e, "test kernel");
    }
    return st;
}

#define PUT(ptr, src, bytes)                                               \
    do {                                                                   \
        if ((st = dput(&d, (void **)&(ptr), (src), (bytes)))) goto out;    \
    } while (0)
#define BEGIN                                                              \
    struct dscope d = {};                                                  \
    int st = SL_OK;                                                        \
    if (cudaStreamCreate(&d.s) != cudaSuccess) return cuda_fail(cudaGetLastError(), "stream");
#define GET(dst, src, bytes)                                                           \
    do {                                                                               \
        cudaError_t e_ = cudaMemcpy((dst), (src), (bytes), cudaMemcpyDeviceToHost);    \
        if (e_ != cudaSuccess) st = cuda_fail(e_, "download");                          \
    } while (0)

int cuda_test_matmul(int dtype, const void *w, const float *X, float *Y, int n, int rows,
                     int cols, const float *bias, int accumulate, int byte_offset) {
    BEGIN;
    uint64_t wb = (uint64_t)rows * quant_row_bytes(dtype, (uint64_t)cols);
    uint8_t *dw = NULL;
    float *dx = NULL, *dy = NULL, *db = NULL;
    PUT(dw, NULL, wb + 16);
    if (cudaMemcpy(dw + byte_offset, w, wb, cudaMemcpyHostToDevice) != cudaSuccess) {
        st = cuda_fail(cudaGetLastError(), "upload");
        goto out;
    }
    PUT(dx, X, (size_t)n * cols * 4);
    PUT(dy, accumulate ? Y : NULL, (size_t)n * rows * 4);
    if (bias) PUT(db, bias, (size_t)rows * 4);
    st = finish(&d, matmul_cuda(d.s, dtype, dw + byte_offset, dx, dy, n, rows, cols, db,
                                accumulate));
    if (!st) GET(Y, dy, (size_t)n * rows * 4);
out:
    scope_free(&d);
    return st;
}

int cuda_test_rmsnorm(const float *x, const float *w, float *out, int n, int dim, float eps) {
    BEGIN;
    float *dx = NULL, *dw = NULL, *dout = NULL;
    PUT(dx, x, (size_t)n * dim * 4);
    PUT(dw, w, (size_t)dim * 4);
    PUT(dout, NULL, (size_t)n * dim * 4);
    st = finish(&d, rmsnorm_cuda(d.s, dx, dw, dout, n, dim, eps));
    if (!st) GET(out, dout, (size_t)n * dim * 4);
out:
    scope_free(&d);
    return st;
}

int cuda_test_qk_rope(float *q, const float *k, const float *v, float *kc, float *vc, int pos,
                      int n, int nh, int nkv, int hd, const float *qn, const float *kn,
                      float eps, const float *inv_freq) {
    BEGIN;
    float *dq = NULL, *dk = NULL, *dv = NULL, *dkc = NULL, *dvc = NULL, *dqn = NULL, *dkn = NULL, *dif = NULL;
    int32_t *dpos = NULL;
    size_t kvb = (size_t)(pos + n) * nkv * hd * 4;
    PUT(dq, q, (size_t)n * nh * hd * 4);
    PUT(dk, k, (size_t)n * nkv * hd * 4);
    PUT(dv, v, (size_t)n * nkv * hd * 4);
    PUT(dkc, NULL, kvb);
    PUT(dvc, NULL, kvb);
    if (qn) PUT(dqn, qn, (size_t)hd * 4);
    if (kn) PUT(dkn, kn, (size_t)hd * 4);
    PUT(dif, inv_freq, (size_t)hd / 2 * 4);
    PUT(dpos, &pos, 4);
    st = finish(&d, qk_rope_store_cuda(d.s, dq, dk, dv, dkc, dvc, dpos, n, nh, nkv, hd, dqn, dkn,
                                       eps, dif));
    if (!st) GET(q, dq, (size_t)n * nh * hd * 4);
    if (!st) GET(kc, dkc, kvb);
    if (!st) GET(vc, dvc, kvb);
out:
    scope_free(&d);
    return st;
}

int cuda_test_attention(const float *q, const float *kc, const float *vc, float *out, int pos,
                        int n, int nh, int nkv, int hd, float scale) {
    BEGIN;
    float *dq = NULL, *dkc = NULL, *dvc = NULL, *dout = NULL, *dsc = NULL;
    int32_t *dpos = NULL;
    int n_ctx = pos + n;
    size_t kvb = (size_t)n_ctx * nkv * hd * 4;
    PUT(dq, q, (size_t)n * nh * hd * 4);
    PUT(dkc, kc, kvb);
    PUT(dvc, vc, kvb);
    PUT(dout, NULL, (size_t)n * nh * hd * 4);
    PUT(dsc, NULL, (size_t)n * nh * n_ctx * 4);
    PUT(dpos, &pos, 4);
    st = finish(&d, attention_cuda(d.s, dq, dkc, dvc, dout, dsc, dpos, n, nh, nkv, hd, n_ctx,
                                   scale));
    if (!st) GET(out, dout, (size_t)n * nh * hd * 4);
out:
    scope_free(&d);
    return st;
}

int cuda_test_route(const float *logits, int n, int ne, int k, int kind, int norm, int32_t *ids,
                    float *w) {
    BEGIN;
    float *dl = NULL, *dw = NULL;
    int32_t *di = NULL;
    PUT(dl, logits, (size_t)n * ne * 4);
    PUT(dw, NULL, (size_t)n * k * 4);
    PUT(di, NULL, (size_t)n * k * 4);
    st = finish(&d, route_cuda(d.s, dl, n, ne, k, kind, norm, di, dw, NULL, part_off{}, NULL,
                               NULL, NULL));
    if (!st) GET(ids, di, (size_t)n * k * 4);
    if (!st) GET(w, dw, (size_t)n * k * 4);
out:
    scope_free(&d);
    return st;
}

int cuda_test_moe(const void *records, uint64_t record_bytes, const uint64_t off[3], int ne,
                  int dt_gu, int dt_down, int hidden, int ffn, const int32_t *ids,
                  const float *w, int n, int k, float *x) {
    BEGIN;
    uint8_t *drec = NULL, **dtab = NULL;
    uint8_t *tab[4096];
    float *dx = NULL, *dw = NULL, *dh = NULL, *dy = NULL;
    int32_t *di = NULL, *dsel = NULL, *dni = NULL;
    struct moe_item *ditems = NULL;
    struct ffn_shape sh = {};
    part_off po = {{off[0], off[1], off[2]}};
    int nsel = n * k;
    PUT(drec, records, (size_t)record_bytes * ne);
    for (int e = 0; e < ne && e < 4096; e++) tab[e] = drec + (uint64_t)e * record_bytes;
    PUT(dtab, tab, (size_t)ne * sizeof *tab);
    PUT(dx, x, (size_t)n * hidden * 4);
    PUT(dw, w, (size_t)nsel * 4);
    PUT(di, ids, (size_t)nsel * 4);
    PUT(dsel, NULL, (size_t)nsel * 4);
    PUT(dni, NULL, 8);
    PUT(ditems, NULL, (size_t)(ne > nsel ? ne : nsel) * sizeof(struct moe_item));
    PUT(dh, NULL, (size_t)nsel * ffn * 4);
    PUT(dy, NULL, (size_t)nsel * hidden * 4);
    sh.hidden = hidden;
    sh.ffn = ffn;
    sh.dt_gu = dt_gu;
    sh.dt_down = dt_down;
    sh.rb_gu = quant_row_bytes(dt_gu, (uint64_t)hidden);
    sh.rb_down = quant_row_bytes(dt_down, (uint64_t)ffn);
    sh.aligned_gu = off[0] % 16 == 0 && off[1] % 16 == 0 && record_bytes % 16 == 0 &&
                    sh.rb_gu % 16 == 0 && hidden % 8 == 0;
    sh.aligned_down = off[2] % 16 == 0 && record_bytes % 16 == 0 && sh.rb_down % 16 == 0 &&
                      ffn % 8 == 0;
    {
        int maxc = n == 1 ? 1 : 2, mi = nsel < ne ? nsel : ne;
        struct moe_item none = {};
        if (!(st = moe_plan_cuda(d.s, di, n, k, ne, dtab, po, ditems, dsel, dni)) &&
            !(st = expert_gate_up_cuda(d.s, &sh, ditems, dni, mi, none, dsel, k, dx, dh, maxc))) {
            if (n == 1) /* decode: fused down + combine, as the forward pass */
                st = expert_down_combine_cuda(d.s, &sh, ditems, k, dsel, di, dw, dh, dx);
            else if (!(st = expert_down_cuda(d.s, &sh, ditems, dni, mi, none, dsel, k, dh, dy, 0,
                                             maxc)))
                st = moe_combine_cuda(d.s, dx, dy, di, dw, n, k, hidden);
        }
        st = finish(&d, st);
    }
    if (!st) GET(x, dx, (size_t)n * hidden * 4);
out:
    scope_free(&d);
    return st;
}
