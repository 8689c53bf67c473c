/*
 * ops_decode_test.cu — the host-pointer twins of ops_decode_test.h (tests
 * only): upload, run the decode launchers of ops_cuda.cuh on a private
 * stream, download, free. Device outputs are filled with NaN first, so an
 * element a kernel fails to write shows up.
 */
#include <string.h>

#include "cuda/ops_cuda.cuh"

extern "C" {
#include "config.h"
#include "cuda/ops_decode_test.h"
#include "quant.h"
}

/* A scope of device allocations freed together. */
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

/* Device copy of bytes (NaN-filled when src is NULL, zeroed when zero). */
static int tput(struct tscope *d, void **out, const void *src, size_t bytes, int zero) {
    void *p = NULL;
    if (d->n >= 24) return sl_seterr(SL_ERR_INTERNAL, "ops_decode_test: too many buffers");
    CU_TRY(cudaMalloc(&p, bytes ? bytes : 4));
    d->p[d->n++] = p;
    if (src) CU_TRY(cudaMemcpy(p, src, bytes, cudaMemcpyHostToDevice));
    else CU_TRY(cudaMemset(p, zero ? 0 : 0xff, bytes)); /* 0xffffffff is a NaN */
    *out = p;
    return SL_OK;
}

static int tsync(struct tscope *d, int st) {
    if (!st) {
        cudaError_t e = cudaStreamSynchronize(d->s);
        if (e != cudaSuccess) st = cuda_fail(e, "test kernel");
    }
    return st;
}

static int tget(void *dst, const void *src, size_t bytes) {
    cudaError_t e = cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost);
    return e == cudaSuccess ? SL_OK : cuda_fail(e, "download");
}

#define TPUT(ptr, src, bytes, zero)                                              \
    do {                                                                         \
        if ((st = tput(&d, (void **)&(ptr), (src), (bytes), (zero)))) goto out;  \
    } while (0)
#define TBEGIN                                                                   \
    struct tscope d;                                                             \
    memset(&d, 0, sizeof d);                                                     \
    int st = SL_OK;                                                              \
    if (cudaStreamCreate(&d.s) != cudaSuccess) return cuda_fail(cudaGetLastError(), "stream");

#define FAKE_REC 4096 /* bytes between the fake record bases of the router test */

/* The k items route wrote against the table of fake bases (dbase + e *
 * FAKE_REC) and part offsets po. */
static int check_items(const moe_item *items, const int32_t *sel, int32_t n_items,
                       const int32_t *ids, int k, const uint8_t *dbase, part_off po) {
    if (n_items != k)
        return sl_seterr(SL_ERR_INTERNAL, "route: n_items %d, want %d", n_items, k);
    for (int s = 0; s < k; s++) {
        const uint8_t *b = dbase + (uint64_t)ids[s] * FAKE_REC;
        if (items[s].gate != b + po.o[0] || items[s].up != b + po.o[1] ||
            items[s].down != b + po.o[2] || items[s].start != s || items[s].count != 1 ||
            sel[s] != s)
            return sl_seterr(SL_ERR_INTERNAL, "route: item %d (expert %d) wrong", s, ids[s]);
    }
    return SL_OK;
}

int cuda_test_router_route(int dtype, const void *w, const float *bias, int ne, int cols,
                           const float *x, const float *norm_w, float eps, int k, int kind,
                           int norm, int fused, int reps, float *logits, float *xn,
                           int32_t *ids, float *wts) {
    TBEGIN;
    uint64_t wb = (uint64_t)ne * quant_row_bytes(dtype, (uint64_t)cols);
    uint8_t *dw = NULL, *dbase = NULL, **dtab = NULL;
    float *dx = NULL, *dnw = NULL, *db = NULL, *dl = NULL, *dxn = NULL, *dwt = NULL;
    int32_t *di = NULL, *dsel = NULL, *dni = NULL;
    unsigned int *ddone = NULL;
    moe_item *ditems = NULL, *hitems = NULL;
    uint8_t **tab = NULL;
    part_off po = {{0, 1024, 2048}};
    int32_t *first = (int32_t *)malloc((size_t)k * 4), hsel[64], hni = 0;
    float *firstw = (float *)malloc((size_t)k * 4);
    hitems = (moe_item *)malloc((size_t)k * sizeof *hitems);
    tab = (uint8_t **)malloc((size_t)ne * sizeof *tab);
    if (!first || !firstw || !hitems || !tab || k > 64) {
        st = sl_seterr(SL_ERR_NOMEM, "ops_decode_test: out of memory (or k > 64)");
        goto out;
    }
    TPUT(dw, w, wb, 0);
    TPUT(dx, x, (size_t)cols * 4, 0);
    TPUT(dnw, norm_w, (size_t)cols * 4, 0);
    if (bias) TPUT(db, bias, (size_t)ne * 4, 0);
    TPUT(dl, NULL, (size_t)ne * 4, 0);
    TPUT(dxn, NULL, (size_t)cols * 4, 0);
    TPUT(di, NULL, (size_t)k * 4, 0);
    TPUT(dwt, NULL, (size_t)k * 4, 0);
    TPUT(dsel, NULL, (size_t)k * 4, 0);
    TPUT(dni, NULL, 4, 0);
    TPUT(ditems, NULL, (size_t)k * sizeof(moe_item), 0);
    TPUT(ddone, NULL, 32 * 4, 1);
    TPUT(dbase, NULL, (size_t)ne * FAKE_REC, 1);
    for (int e = 0; e < ne; e++) tab[e] = dbase + (uint64_t)e * FAKE_REC;
    TPUT(dtab, tab, (size_t)ne * sizeof *tab, 0);
    for (int rep = 0; rep < (fused ? reps : 1) && !st; rep++) {
        if (fused) {
            st = matvec_route_cuda(d.s, dtype, dw, db, ne, cols, dx, dnw, eps, dxn, dl, k, kind,
                                   norm, di, dwt, dtab, po, ditems, dsel, dni, ddone);
        } else {
            const void *wv[1] = {dw};
            float *yv[1] = {dl};
            const float *bv[1] = {db};
            int rows[1] = {ne};
            st = matvec_multi_cuda(d.s, dtype, 1, wv, yv, bv, rows, cols, dx, dnw, eps, dxn);
            if (!st)
                st = route_cuda(d.s, dl, 1, ne, k, kind, norm, di, dwt, dtab, po, ditems, dsel,
                                dni);
        }
        if ((st = tsync(&d, st))) break;
        if ((st = tget(ids, di, (size_t)k * 4)) || (st = tget(wts, dwt, (size_t)k * 4))) break;
        if (rep == 0) {
            memcpy(first, ids, (size_t)k * 4);
            memcpy(firstw, wts, (size_t)k * 4);
        } else if (memcmp(first, ids, (size_t)k * 4) || memcmp(firstw, wts, (size_t)k * 4)) {
            st = sl_seterr(SL_ERR_INTERNAL, "fused router: run %d differs from run 0", rep);
            break;
        }
        unsigned int done = 1;
        if (fused && (st = tget(&done, ddone, 4))) break;
        if (fused && done != 0) {
            st = sl_seterr(SL_ERR_INTERNAL, "fused router: block counter %u after run %d", done,
                           rep);
            break;
        }
    }
    if (!st) st = tget(logits, dl, (size_t)ne * 4);
    if (!st) st = tget(xn, dxn, (size_t)cols * 4);
    if (!st) st = tget(hitems, ditems, (size_t)k * sizeof *hitems);
    if (!st) st = tget(hsel, dsel, (size_t)k * 4);
    if (!st) st = tget(&hni, dni, 4);
    if (!st) st = check_items(hitems, hsel, hni, ids, k, dbase, po);
out:
    tscope_free(&d);
    free(first), free(firstw), free(hitems), free(tab);
    return st;
}

/* The chain's kernels on s (see cuda_test_matvec_chain). */
static int chain_enqueue(cudaStream_t s, int dtype, uint8_t *const *dw, int depth, int dim,
                         const float *dnw, float eps, const float *dx, float *da, float *db) {
    CU_TRY(cudaMemcpyAsync(da, dx, (size_t)dim * 4, cudaMemcpyDeviceToDevice, s));
    for (int i = 0; i < depth; i++) {
        int st;
        if (i % 2 == 0) {
            const void *wv[1] = {dw[i]};
            float *yv[1] = {db};
            const float *bv[1] = {NULL};
            int rows[1] = {dim};
            st = matvec_multi_cuda(s, dtype, 1, wv, yv, bv, rows, dim, da, dnw, eps, NULL);
        } else {
            st = matmul_cuda(s, dtype, dw[i], db, da, 1, dim, dim, NULL, 1);
        }
        if (st) return st;
    }
    return SL_OK;
}

int cuda_test_matvec_chain(int dtype, const void *const *w, int depth, int dim,
                           const float *norm_w, float eps, const float *x, int graph, int reps,
                           float *out) {
    TBEGIN;
    uint8_t *dw[16] = {};
    float *dx = NULL, *da = NULL, *db = NULL, *dnw = NULL;
    cudaGraph_t g = NULL;
    cudaGraphExec_t ge = NULL;
    uint64_t wb = (uint64_t)dim * quant_row_bytes(dtype, (uint64_t)dim);
    float *first = (float *)malloc((size_t)dim * 4);
    if (!first || depth > 16) {
        st = sl_seterr(SL_ERR_ARG, "ops_decode_test: depth %d > 16 or out of memory", depth);
        goto out;
    }
    for (int i = 0; i < depth; i++) TPUT(dw[i], w[i], wb, 0);
    TPUT(dx, x, (size_t)dim * 4, 0);
    TPUT(da, NULL, (size_t)dim * 4, 0);
    TPUT(db, NULL, (size_t)dim * 4, 0);
    TPUT(dnw, norm_w, (size_t)dim * 4, 0);
    cuda_pdl_enabled(); /* outside the capture */
    if (graph) {
        CU_TRY(cudaStreamBeginCapture(d.s, cudaStreamCaptureModeThreadLocal));
        st = chain_enqueue(d.s, dtype, dw, depth, dim, dnw, eps, dx, da, db);
        cudaError_t e = cudaStreamEndCapture(d.s, &g);
        if (!st && e != cudaSuccess) st = cuda_fail(e, "cudaStreamEndCapture");
        if (!st) {
            e = cudaGraphInstantiate(&ge, g, 0);
            if (e != cudaSuccess) st = cuda_fail(e, "cudaGraphInstantiate");
        }
        if (st) goto out;
    }
    for (int rep = 0; rep < reps && !st; rep++) {
        if (graph) {
            cudaError_t e = cudaGraphLaunch(ge, d.s);
            if (e != cudaSuccess) st = cuda_fail(e, "cudaGraphLaunch");
        } else {
            st = chain_enqueue(d.s, dtype, dw, depth, dim, dnw, eps, dx, da, db);
        }
        if ((st = tsync(&d, st)) || (st = tget(out, da, (size_t)dim * 4))) break;
        if (rep == 0)
            memcpy(first, out, (size_t)dim * 4);
        else if (memcmp(first, out, (size_t)dim * 4))
            st = sl_seterr(SL_ERR_INTERNAL, "matvec chain: run %d differs from run 0", rep);
    }
out:
    if (ge) cudaGraphExecDestroy(ge);
    if (g) cudaGraphDestroy(g);
    tscope_free(&d);
    free(first);
    return st;
}

int cuda_test_moe_decode(int rdt, const void *router_w, const float *norm_w, float eps,
                         const void *records, uint64_t record_bytes, const uint64_t off[3],
                         int edt, int ne, int hidden, int ffn, int k, int kind, int norm,
                         int reverse_items, float *x, int32_t *ids, float *wts) {
    TBEGIN;
    uint8_t *drw = NULL, *drec = NULL, **dtab = NULL, **tab = NULL;
    float *dx = NULL, *dxb = NULL, *dnw = NULL, *dl = NULL, *dwt = NULL, *dh = NULL;
    int32_t *di = NULL, *dsel = NULL, *dni = NULL;
    unsigned int *ddone = NULL;
    moe_item *ditems = NULL, hitems[64];
    part_off po = {{off[0], off[1], off[2]}};
    ffn_shape sh;
    memset(&sh, 0, sizeof sh);
    tab = (uint8_t **)malloc((size_t)ne * sizeof *tab);
    if (!tab || k > 64) {
        st = sl_seterr(SL_ERR_ARG, "ops_decode_test: k %d > 64 or out of memory", k);
        goto out;
    }
    TPUT(drw, router_w, (size_t)ne * quant_row_bytes(rdt, (uint64_t)hidden), 0);
    TPUT(drec, records, (size_t)record_bytes * ne, 0);
    for (int e = 0; e < ne; e++) tab[e] = drec + (uint64_t)e * record_bytes;
    TPUT(dtab, tab, (size_t)ne * sizeof *tab, 0);
    TPUT(dx, x, (size_t)hidden * 4, 0);
    TPUT(dxb, NULL, (size_t)hidden * 4, 0);
    TPUT(dnw, norm_w, (size_t)hidden * 4, 0);
    TPUT(dl, NULL, (size_t)ne * 4, 0);
    TPUT(dwt, NULL, (size_t)k * 4, 0);
    TPUT(di, NULL, (size_t)k * 4, 0);
    TPUT(dsel, NULL, (size_t)k * 4, 0);
    TPUT(dni, NULL, 4, 0);
    TPUT(ditems, NULL, (size_t)k * sizeof(moe_item), 0);
    TPUT(dh, NULL, (size_t)k * ffn * 4, 0);
    TPUT(ddone, NULL, 32 * 4, 1);
    sh.hidden = hidden;
    sh.ffn = ffn;
    sh.dt_gu = edt;
    sh.dt_down = edt;
    sh.rb_gu = quant_row_bytes(edt, (uint64_t)hidden);
    sh.rb_down = quant_row_bytes(edt, (uint64_t)ffn);
    sh.aligned_gu = off[0] % 16 == 0 && off[1] % 16 == 0 && record_bytes % 16 == 0 &&
                    sh.rb_gu % 16 == 0 && hidden % 8 == 0;
    sh.aligned_down = off[2] % 16 == 0 && record_bytes % 16 == 0 && sh.rb_down % 16 == 0 &&
                      ffn % 8 == 0;
    sh.ids = di;
    st = matvec_route_cuda(d.s, rdt, drw, NULL, ne, hidden, dx, dnw, eps, dxb, dl, k, kind, norm,
                           di, dwt, dtab, po, ditems, dsel, dni, ddone);
    if (st == SL_ERR_UNSUPPORTED) { /* as the forward pass: the two launches */
        const void *wv[1] = {drw};
        float *yv[1] = {dl};
        const float *bv[1] = {NULL};
        int rows[1] = {ne};
        st = matvec_multi_cuda(d.s, rdt, 1, wv, yv, bv, rows, hidden, dx, dnw, eps, dxb);
        if (!st) st = route_cuda(d.s, dl, 1, ne, k, kind, norm, di, dwt, dtab, po, ditems, dsel, dni);
    }
    if (!st && reverse_items) {
        if ((st = tsync(&d, st)) || (st = tget(hitems, ditems, (size_t)k * sizeof *hitems)))
            goto out;
        for (int i = 0; i < k / 2; i++) {
            moe_item t = hitems[i];
            hitems[i] = hitems[k - 1 - i];
            hitems[k - 1 - i] = t;
        }
        cudaError_t e = cudaMemcpy(ditems, hitems, (size_t)k * sizeof *hitems,
                                   cudaMemcpyHostToDevice);
        if (e != cudaSuccess) st = cuda_fail(e, "upload items");
    }
    if (!st) {
        moe_item none;
        memset(&none, 0, sizeof none);
        st = expert_gate_up_cuda(d.s, &sh, ditems, dni, k, none, dsel, k, dxb, dh, 1);
    }
    if (!st) st = expert_down_combine_cuda(d.s, &sh, ditems, k, dsel, di, dwt, dh, dx);
    st = tsync(&d, st);
    if (!st) st = tget(x, dx, (size_t)hidden * 4);
    if (!st) st = tget(ids, di, (size_t)k * 4);
    if (!st) st = tget(wts, dwt, (size_t)k * 4);
out:
    tscope_free(&d);
    free(tab);
    return st;
}
