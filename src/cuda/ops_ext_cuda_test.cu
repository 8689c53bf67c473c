/*
 * ops_ext_cuda_test.cu — the host-pointer twins of ops_ext_cuda_test.h
 * (tests only): upload, run one launcher, download, free. Device outputs
 * start as NaN, so an element a kernel fails to write shows up.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/ops_cuda.cuh"

extern "C" {
#include "config.h"
#include "cuda/ops_ext_cuda_test.h"
#include "quant.h"
}

/* A scope of device allocations freed together. */
struct xscope {
    void *p[24];
    int n;
    cudaStream_t s;
};

static void xscope_free(struct xscope *d) {
    if (d->s) cudaStreamSynchronize(d->s);
    for (int i = 0; i < d->n; i++) cudaFree(d->p[i]);
    if (d->s) cudaStreamDestroy(d->s);
}

/* Device copy of bytes (NaN-filled when src is NULL). */
static int xput(struct xscope *d, void **out, const void *src, size_t bytes) {
    void *p = NULL;
    if (d->n == 24) return sl_seterr(SL_ERR_INTERNAL, "test scope full");
    CU_TRY(cudaMalloc(&p, bytes ? bytes : 4));
    d->p[d->n++] = p;
    if (src) CU_TRY(cudaMemcpy(p, src, bytes, cudaMemcpyHostToDevice));
    else CU_TRY(cudaMemset(p, 0xff, bytes ? bytes : 4)); /* 0xffffffff is a NaN */
    *out = p;
    return SL_OK;
}

static int xfinish(struct xscope *d, int st) {
    if (!st) {
        cudaError_t e = cudaStreamSynchronize(d->s);
        if (e != cudaSuccess) st = cuda_fail(e, "test kernel");
    }
    return st;
}

#define XPUT(ptr, src, bytes)                                               \
    do {                                                                    \
        if ((st = xput(&d, (void **)&(ptr), (src), (bytes)))) goto out;     \
    } while (0)
#define XBEGIN                                                              \
    struct xscope d = {};                                                   \
    int st = SL_OK;                                                         \
    if (cudaStreamCreate(&d.s) != cudaSuccess) return cuda_fail(cudaGetLastError(), "stream");
#define XGET(dst, src, bytes)                                                          \
    do {                                                                               \
        cudaError_t e_ = cudaMemcpy((dst), (src), (bytes), cudaMemcpyDeviceToHost);    \
        if (e_ != cudaSuccess && !st) st = cuda_fail(e_, "download");                   \
    } while (0)

int cuda_test_qk_rope_ext(float *q, float *k, const float *v, float *kc, float *vc, int pos,
                          int n, int nh, int nkv, int hd, const float *qn, const float *kn,
                          int full_norm, float eps, const float *inv_freq, float mscale) {
    XBEGIN;
    float *dq = NULL, *dk = NULL, *dv = NULL, *dkc = NULL, *dvc = NULL, *dqn = NULL,
          *dkn = NULL, *dif = NULL;
    int32_t *dpos = NULL;
    size_t kvb = (size_t)(pos + n) * nkv * hd * 4;
    size_t qnb = (size_t)(full_norm ? nh * hd : hd) * 4, knb = (size_t)(full_norm ? nkv * hd : hd) * 4;
    XPUT(dq, q, (size_t)n * nh * hd * 4);
    XPUT(dk, k, (size_t)n * nkv * hd * 4);
    XPUT(dv, v, (size_t)n * nkv * hd * 4);
    XPUT(dkc, NULL, kvb);
    XPUT(dvc, NULL, kvb);
    if (qn) XPUT(dqn, qn, qnb);
    if (kn) XPUT(dkn, kn, knb);
    XPUT(dif, inv_freq, (size_t)hd / 2 * 4);
    XPUT(dpos, &pos, 4);
    st = xfinish(&d, qk_rope_store_ext_cuda(d.s, dq, dk, dv, dkc, dvc, dpos, n, nh, nkv, hd, dqn,
                                            dkn, full_norm, eps, dif, mscale));
    if (!st) XGET(q, dq, (size_t)n * nh * hd * 4);
    if (!st) XGET(k, dk, (size_t)n * nkv * hd * 4);
    if (!st) XGET(kc, dkc, kvb);
    if (!st) XGET(vc, dvc, kvb);
out:
    xscope_free(&d);
    return st;
}

int cuda_test_attention_ext(const float *q, const float *kc, const float *vc, float *out,
                            int pos, int n, int nh, int nkv, int hd, int n_ctx, float scale,
                            int window, const float *sinks, int split) {
    XBEGIN;
    float *dq = NULL, *dkc = NULL, *dvc = NULL, *dout = NULL, *dsc = NULL, *dsk = NULL;
    int32_t *dpos = NULL;
    /* a forward pass's scratch with n_batch = max(n, 2): room for the split */
    size_t kvb = (size_t)n_ctx * nkv * hd * 4, scr = (size_t)(n < 2 ? 2 : n) * nh * n_ctx;
    char old[32] = "";
    const char *o = getenv("SLUICE_CUDA_ATT_SPLIT");
    int had = o != NULL;
    if (had) snprintf(old, sizeof old, "%s", o);
    XPUT(dq, q, (size_t)n * nh * hd * 4);
    XPUT(dkc, kc, kvb);
    XPUT(dvc, vc, kvb);
    XPUT(dout, NULL, (size_t)n * nh * hd * 4);
    XPUT(dsc, NULL, scr * 4);
    if (sinks) XPUT(dsk, sinks, (size_t)nh * 4);
    XPUT(dpos, &pos, 4);
    if (!split) setenv("SLUICE_CUDA_ATT_SPLIT", "0", 1);
    st = attention_ext_cuda(d.s, dq, dkc, dvc, dout, dsc, scr, dpos, n, nh, nkv, hd, n_ctx,
                            scale, window, dsk);
    if (!split) {
        if (had) setenv("SLUICE_CUDA_ATT_SPLIT", old, 1);
        else unsetenv("SLUICE_CUDA_ATT_SPLIT");
    }
    st = xfinish(&d, st);
    if (!st) XGET(out, dout, (size_t)n * nh * hd * 4);
out:
    xscope_free(&d);
    return st;
}

int cuda_test_moe_ext(const void *records, uint64_t record_bytes, const uint64_t off[3], int ne,
                      int dt_gu, int dt_down, int hidden, int ffn, const int32_t *ids,
                      const float *w, int n, int k, const float *gu_b, const float *down_b,
                      float alpha, float limit, float *x) {
    XBEGIN;
    uint8_t *drec = NULL, **dtab = NULL;
    uint8_t **tab = (uint8_t **)malloc((size_t)ne * sizeof *tab);
    float *dx = NULL, *dw = NULL, *dh = NULL, *dy = NULL, *dgb = NULL, *ddb = NULL;
    int32_t *di = NULL, *dsel = NULL, *dni = NULL;
    struct moe_item *ditems = NULL;
    struct ffn_shape sh = {};
    part_off po = {{off[0], off[1], off[2]}};
    int nsel = n * k;
    if (!tab) {
        st = sl_seterr(SL_ERR_NOMEM, "out of memory");
        goto out;
    }
    XPUT(drec, records, (size_t)record_bytes * ne);
    for (int e = 0; e < ne; e++) tab[e] = drec + (uint64_t)e * record_bytes;
    XPUT(dtab, tab, (size_t)ne * sizeof *tab);
    XPUT(dx, x, (size_t)n * hidden * 4);
    XPUT(dw, w, (size_t)nsel * 4);
    XPUT(di, ids, (size_t)nsel * 4);
    XPUT(dsel, NULL, (size_t)nsel * 4);
    XPUT(dni, NULL, 8);
    XPUT(ditems, NULL, (size_t)(ne > nsel ? ne : nsel) * sizeof(struct moe_item));
    XPUT(dh, NULL, (size_t)nsel * ffn * 4);
    XPUT(dy, NULL, (size_t)nsel * hidden * 4);
    if (gu_b) XPUT(dgb, gu_b, (size_t)ne * 2 * ffn * 4);
    if (down_b) XPUT(ddb, down_b, (size_t)ne * hidden * 4);
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
    sh.gu_b = dgb;
    sh.down_b = ddb;
    sh.alpha = alpha;
    sh.limit = limit;
    sh.ids = di;
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
        st = xfinish(&d, st);
    }
    if (!st) XGET(x, dx, (size_t)n * hidden * 4);
out:
    xscope_free(&d);
    free(tab);
    return st;
}
