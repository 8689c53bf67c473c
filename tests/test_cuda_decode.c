/*
 * test_cuda_decode.c — the batch-1 decode kernels of src/cuda/
 * ops_decode_cuda.cu against the scalar CPU reference (src/cpu/ops.h) and
 * against themselves under every runtime switch (docs/cuda.md, "Decode
 * kernels"):
 *   the fused router + routing (matvec_route_cuda): logits nmse <= 1e-9 and
 *     xn nmse <= 1e-12 vs the reference, ids exact, weights nmse <= 1e-10;
 *     bit-identical to the two separate launches; three launches in a row
 *     give the same bits and leave the block counter at 0 (graph replay);
 *     items listed from the record table (dtypes f32/f16/bf16, 1..256
 *     experts, both router kinds, with and without renormalisation);
 *   programmatic dependent launch: a chain of 8 dependent matvecs (RMSNorm
 *     prologue, accumulate) eagerly and as a replayed CUDA graph, with
 *     SLUICE_CUDA_PDL on and off: all bit-identical, nmse <= 1e-9 vs the
 *     reference (a kernel that read its input before the previous one
 *     finished would differ);
 *   a whole decode MoE layer (router, routing, Q4 gate/up + SwiGLU, down +
 *     combine in expert-id order + residual) nmse <= 1e-9 vs the reference,
 *     bit-identical with the items listed in reverse, under each of
 *     SLUICE_CUDA_PDL, SLUICE_CUDA_ROUTEFUSE, SLUICE_CUDA_DC off, with
 *     SLUICE_CUDA_DC=2/3 (down + combine, all loads in flight, 1 or 2 rows
 *     per warp), SLUICE_CUDA_GU=3/4 (gate/up, loads before the x copy,
 *     16-byte x staging) and SLUICE_CUDA_PDL=1; SLUICE_CUDA_RWPR=1/2 (the
 *     router's warps per row, another order of sums) nmse <= 1e-9 only.
 * Without a GPU (CI) or in a build without CUDA every test is skipped with
 * the reason.
 */
#include <stdint.h>
#include <stdlib.h>

#include "sluice.h"
#include "test.h"

#ifndef SLUICE_CUDA

TEST(cuda_decode) { TEST_SKIP("built without CUDA (NO_CUDA=1 or no nvcc): GPU tests not run"); }

#else

#include "config.h"
#include "cpu/ops.h"
#include "cuda/cuda.h"
#include "cuda/ops_decode_test.h"
#include "quant.h"

#include "cuda_test.h" /* have_gpu, NEED_GPU */

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float frand(void) { /* uniform in [-1, 1) */
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}
static void fill(float *x, size_t n, float scale) {
    for (size_t i = 0; i < n; i++) x[i] = frand() * scale;
}

/* rows x cols random weights in dtype (uniform * scale). */
static void *make_weights(int dtype, int rows, int cols, float scale) {
    uint64_t rb = quant_row_bytes(dtype, (uint64_t)cols);
    uint8_t *w = malloc((size_t)rb * rows);
    float *row = malloc((size_t)cols * sizeof(float));
    for (int r = 0; r < rows; r++) {
        fill(row, (size_t)cols, scale);
        quant_row_from_f32(dtype, row, w + (uint64_t)r * rb, (uint64_t)cols);
    }
    free(row);
    return w;
}

/* The CPU router: logits (ne) → ids, w (k), as test_cuda.c's route test. */
static void route_ref(const float *logits, int ne, int k, int kind, int norm, int32_t *ids,
                      float *w) {
    float *p = malloc((size_t)ne * sizeof *p);
    memcpy(p, logits, (size_t)ne * sizeof *p);
    if (kind == SL_ROUTER_TOPK_SOFTMAX) {
        ops_topk(p, ne, k, ids, w);
        ops_softmax(w, k);
    } else {
        ops_softmax(p, ne);
        ops_topk(p, ne, k, ids, w);
        float s = 0;
        for (int i = 0; i < k; i++) s += w[i];
        for (int i = 0; norm && i < k; i++) w[i] /= s;
    }
    free(p);
}

/* Sets (val) or unsets (NULL) a tuning knob. */
static void knob(const char *name, const char *val) {
    if (val) setenv(name, val, 1);
    else unsetenv(name);
}

TEST(cuda_decode_router_route) {
    NEED_GPU();
    const int dts[] = {SL_DTYPE_BF16, SL_DTYPE_F16, SL_DTYPE_F32};
    /* ne, cols, k: a3b's router; a single-block grid; the register limit */
    const int shapes[][3] = {{128, 2048, 8}, {60, 256, 4}, {256, 64, 2}, {7, 512, 1}};
    for (int di = 0; di < 3; di++)
        for (int si = 0; si < 4; si++)
            for (int kind = 0; kind < 2; kind++)
                for (int norm = 0; norm < 2; norm++) {
                    int dt = dts[di], ne = shapes[si][0], cols = shapes[si][1], k = shapes[si][2];
                    int bias_on = si == 1;
                    void *w = make_weights(dt, ne, cols, 0.5f);
                    float *x = malloc(cols * 4), *nw = malloc(cols * 4), *b = malloc(ne * 4);
                    float *xr = malloc(cols * 4), *lr = malloc(ne * 4);
                    float *lf = malloc(ne * 4), *lu = malloc(ne * 4);
                    float *xf = malloc(cols * 4), *xu = malloc(cols * 4);
                    int32_t idr[32], idf[32], idu[32];
                    float wr[32], wf[32], wu[32];
                    fill(x, cols, 2.0f);
                    fill(nw, cols, 1.0f);
                    fill(b, ne, 0.5f);
                    ops_rmsnorm(xr, x, nw, cols, 1e-6f);
                    CHECK(ops_matvec_ref(dt, w, xr, lr, ne, cols) == SL_OK);
                    for (int i = 0; bias_on && i < ne; i++) lr[i] += b[i];
                    route_ref(lr, ne, k, kind, norm, idr, wr);
                    int st = cuda_test_router_route(dt, w, bias_on ? b : NULL, ne, cols, x, nw,
                                                    1e-6f, k, kind, norm, 1, 3, lf, xf, idf, wf);
                    CHECK_MSG(st == SL_OK, "fused: %s", sl_errmsg());
                    int su = cuda_test_router_route(dt, w, bias_on ? b : NULL, ne, cols, x, nw,
                                                    1e-6f, k, kind, norm, 0, 1, lu, xu, idu, wu);
                    CHECK_MSG(su == SL_OK, "apart: %s", sl_errmsg());
                    char what[96];
                    snprintf(what, sizeof what, "router %s %dx%d k%d kind%d norm%d",
                             sl_dtype_name(dt), ne, cols, k, kind, norm);
                    if (st == SL_OK && su == SL_OK) {
                        check_tensor(what, lf, lr, ne, 1e-9, -1);
                        check_tensor("xn", xf, xr, cols, 1e-12, -1);
                        CHECK_MSG(memcmp(idf, idr, k * 4) == 0, "%s: ids differ from the CPU",
                                  what);
                        check_tensor("router weights", wf, wr, k, 1e-10, -1);
                        CHECK_MSG(memcmp(lf, lu, ne * 4) == 0 && memcmp(xf, xu, cols * 4) == 0 &&
                                      memcmp(idf, idu, k * 4) == 0 && memcmp(wf, wu, k * 4) == 0,
                                  "%s: fused and separate launches differ", what);
                    }
                    free(w), free(x), free(nw), free(b), free(xr), free(lr), free(lf), free(lu);
                    free(xf), free(xu);
                }
}

TEST(cuda_decode_pdl_chain) {
    NEED_GPU();
    enum { DEPTH = 8 };
    const int cases[][2] = {{SL_DTYPE_BF16, 2048}, {SL_DTYPE_F32, 512}, {SL_DTYPE_F16, 64}};
    for (int ci = 0; ci < 3; ci++) {
        int dt = cases[ci][0], dim = cases[ci][1];
        void *w[DEPTH];
        float scale = 1.0f / sqrtf((float)dim);
        for (int i = 0; i < DEPTH; i++) w[i] = make_weights(dt, dim, dim, scale);
        float *x = malloc(dim * 4), *nw = malloc(dim * 4), *a = malloc(dim * 4);
        float *b = malloc(dim * 4), *t = malloc(dim * 4), *y = malloc(dim * 4);
        float *got[4];
        fill(x, dim, 1.0f);
        fill(nw, dim, 1.0f);
        memcpy(a, x, dim * 4);
        for (int i = 0; i < DEPTH; i++) { /* the reference chain */
            if (i % 2 == 0) {
                ops_rmsnorm(t, a, nw, dim, 1e-6f);
                ops_matvec_ref(dt, w[i], t, b, dim, dim);
            } else {
                ops_matvec_ref(dt, w[i], b, y, dim, dim);
                ops_add(a, y, dim);
            }
        }
        for (int m = 0; m < 4; m++) { /* graph off/on x PDL on/off */
            int graph = m & 1;
            knob("SLUICE_CUDA_PDL", m & 2 ? "0" : NULL);
            got[m] = malloc(dim * 4);
            int st = cuda_test_matvec_chain(dt, (const void *const *)w, DEPTH, dim, nw, 1e-6f, x,
                                            graph, 3, got[m]);
            CHECK_MSG(st == SL_OK, "chain %s dim %d graph %d pdl %d: %s", sl_dtype_name(dt), dim,
                      graph, !(m & 2), sl_errmsg());
            char what[96];
            snprintf(what, sizeof what, "chain %s dim %d graph %d pdl %d", sl_dtype_name(dt),
                     dim, graph, !(m & 2));
            if (st == SL_OK) check_tensor(what, got[m], a, dim, 1e-9, -1);
            if (st == SL_OK && m > 0)
                CHECK_MSG(memcmp(got[m], got[0], dim * 4) == 0, "%s: differs from eager PDL",
                          what);
        }
        knob("SLUICE_CUDA_PDL", NULL);
        for (int i = 0; i < DEPTH; i++) free(w[i]);
        for (int m = 0; m < 4; m++) free(got[m]);
        free(x), free(nw), free(a), free(b), free(t), free(y);
    }
}

TEST(cuda_decode_moe_layer) {
    NEED_GPU();
    /* Q4 experts (the aligned shared-memory paths), bf16 router; a small
     * a3b-like layer: 32 experts, top 8 */
    const int hid = 512, ffn = 384, ne = 32, k = 8, dt = SL_DTYPE_Q4;
    uint64_t rgu = quant_row_bytes(dt, hid), rdn = quant_row_bytes(dt, ffn);
    uint64_t off[3] = {0, rgu * ffn, 2 * rgu * ffn};
    uint64_t rec = (off[2] + rdn * hid + 4095) / 4096 * 4096;
    uint8_t *recs = calloc(ne, rec);
    for (int e = 0; e < ne; e++)
        for (int part = 0; part < 3; part++) {
            int rows = part < 2 ? ffn : hid, cols = part < 2 ? hid : ffn;
            void *w = make_weights(dt, rows, cols, 0.5f);
            memcpy(recs + e * rec + off[part], w, quant_row_bytes(dt, cols) * rows);
            free(w);
        }
    void *rw = make_weights(SL_DTYPE_BF16, ne, hid, 0.5f);
    float *x0 = malloc(hid * 4), *nw = malloc(hid * 4), *ref = malloc(hid * 4);
    float *xn = malloc(hid * 4), *lg = malloc(ne * 4), *g = malloc(ffn * 4);
    float *u = malloc(ffn * 4), *y = malloc(hid * 4), *sum = calloc(hid, 4);
    fill(x0, hid, 1.0f);
    fill(nw, hid, 1.0f);
    for (int kind = 0; kind < 2; kind++) {
        int norm = kind == SL_ROUTER_SOFTMAX_TOPK;
        int32_t idr[8], order[8];
        float wr[8];
        memcpy(ref, x0, hid * 4);
        ops_rmsnorm(xn, x0, nw, hid, 1e-6f);
        ops_matvec_ref(SL_DTYPE_BF16, rw, xn, lg, ne, hid);
        route_ref(lg, ne, k, kind, norm, idr, wr);
        for (int s = 0; s < k; s++) order[s] = s;
        for (int a = 1; a < k; a++) /* expert-id order */
            for (int b = a; b > 0 && idr[order[b]] < idr[order[b - 1]]; b--) {
                int t = order[b];
                order[b] = order[b - 1];
                order[b - 1] = t;
            }
        memset(sum, 0, hid * 4);
        for (int s = 0; s < k; s++) {
            int j = order[s];
            const uint8_t *r = recs + (uint64_t)idr[j] * rec;
            ops_matvec_ref(dt, r + off[0], xn, g, ffn, hid);
            ops_matvec_ref(dt, r + off[1], xn, u, ffn, hid);
            ops_swiglu(g, g, u, ffn);
            ops_matvec_ref(dt, r + off[2], g, y, hid, ffn);
            ops_scale_add(sum, y, wr[j], hid);
        }
        ops_add(ref, sum, hid);
        /* variants: defaults, items reversed, then each switch off, then
         * the faster kernels (same sums: bit-identical), then the router's
         * warps per row forced (another order of sums: nmse only) */
        const char *knobs[] = {NULL, NULL, "SLUICE_CUDA_PDL", "SLUICE_CUDA_ROUTEFUSE",
                               "SLUICE_CUDA_DC", "SLUICE_CUDA_DC", "SLUICE_CUDA_DC",
                               "SLUICE_CUDA_GU", "SLUICE_CUDA_GU", "SLUICE_CUDA_PDL",
                               "SLUICE_CUDA_RWPR", "SLUICE_CUDA_RWPR"};
        const char *vals[] = {NULL, NULL, "0", "0", "0", "2", "3", "3", "4", "1", "1", "2"};
        const int nv = (int)(sizeof knobs / sizeof knobs[0]);
        float *first = malloc(hid * 4), *x = malloc(hid * 4);
        for (int v = 0; v < nv; v++) {
            int32_t ids[8];
            float wts[8];
            if (knobs[v]) knob(knobs[v], vals[v]);
            memcpy(x, x0, hid * 4);
            int st = cuda_test_moe_decode(SL_DTYPE_BF16, rw, nw, 1e-6f, recs, rec, off, dt, ne,
                                          hid, ffn, k, kind, norm, v == 1, x, ids, wts);
            if (knobs[v]) knob(knobs[v], NULL);
            char what[96];
            snprintf(what, sizeof what, "moe layer kind %d variant %d (%s=%s)", kind, v,
                     knobs[v] ? knobs[v] : v == 1 ? "items reversed" : "none",
                     knobs[v] ? vals[v] : "-");
            CHECK_MSG(st == SL_OK, "%s: %s", what, sl_errmsg());
            if (st != SL_OK) continue;
            CHECK_MSG(memcmp(ids, idr, sizeof ids) == 0, "%s: ids differ from the CPU", what);
            check_tensor("moe weights", wts, wr, k, 1e-10, -1);
            check_tensor(what, x, ref, hid, 1e-9, -1);
            if (v == 0)
                memcpy(first, x, hid * 4);
            else if (!knobs[v] || strcmp(knobs[v], "SLUICE_CUDA_RWPR") != 0)
                CHECK_MSG(memcmp(first, x, hid * 4) == 0, "%s: not bit-identical to defaults",
                          what);
        }
        free(first), free(x);
    }
    free(recs), free(rw), free(x0), free(nw), free(ref), free(xn), free(lg), free(g), free(u);
    free(y), free(sum);
}

#endif /* SLUICE_CUDA */

TEST_MAIN()
