/*
 * cuda_decode_kernels.c — microbenchmark of the batch-1 decode kernels of
 * src/cuda/ops_decode_cuda.cu on the a3b-gpu shapes (qwen3_moe: hidden
 * 2048, 32/4 heads x 128, 128 experts top 8, ffn 768, bf16 dense, Q4
 * experts; docs/cuda.md, "Decode kernels"). For every kernel and every
 * variant (SLUICE_CUDA_* tuning knobs set in the environment before the
 * launch is enqueued, as in the forward pass) it prints one line: µs per
 * launch (a CUDA graph of reps launches, the weights rotating through
 * copies larger than the L2), GB/s of weight bytes, and the check of its
 * output: nmse vs the CPU reference (src/cpu/ops.h) and whether it is
 * bit-identical to the group's first (default) variant. Exit status 1 when
 * a check fails (nmse > 1e-9, router ids not the CPU's, or bits differing
 * where the variant keeps the arithmetic). Without a GPU or CUDA build it
 * says so and exits 0.
 * Run: build/bench/cuda_decode_kernels [reps]   (default 200)
 * Not a test (tests/test_cuda_decode.c holds the differential tests).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sluice.h"

#ifndef SLUICE_CUDA
int main(void) {
    printf("cuda_decode_kernels: built without CUDA (NO_CUDA=1 or no nvcc)\n");
    return 0;
}
#else

#include "config.h"
#include "cpu/ops.h"
#include "cuda/cuda.h"
#include "cuda/ops_decode_test.h"
#include "quant.h"
#include "util.h"

#define HID 2048
#define QD 4096 /* 32 heads x 128 */
#define KVD 512 /* 4 kv heads x 128 */
#define NE 128
#define TOPK 8
#define FFN 768
#define NSETS 16 /* disjoint expert sets: 16 x 8 = all 128 experts */
#define MAX_NMSE 1e-9

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t rnd64(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}
static float frand(void) { /* uniform in [-1, 1) */
    return (float)((rnd64() >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}
static void fill(float *x, size_t n, float scale) {
    for (size_t i = 0; i < n; i++) x[i] = frand() * scale;
}
static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "cuda_decode_kernels: out of memory (%zu bytes)\n", n);
        exit(2);
    }
    return p;
}

/* rows x cols random weights in a dense dtype (uniform * scale). */
static void *make_dense(int dtype, int rows, int cols, float scale) {
    uint64_t rb = quant_row_bytes(dtype, (uint64_t)cols);
    uint8_t *w = xmalloc((size_t)rb * rows);
    float *row = xmalloc((size_t)cols * sizeof(float));
    for (int r = 0; r < rows; r++) {
        fill(row, (size_t)cols, scale);
        quant_row_from_f32(dtype, row, w + (uint64_t)r * rb, (uint64_t)cols);
    }
    free(row);
    return w;
}

/* rows Q4 rows of cols at w: random nibbles, scales d in [0.001, 0.021),
 * minimums -8 d (quant.h's layout: cols / 2 nibble bytes, then d, then m as
 * f16 per 32-block). */
static void fill_q4(uint8_t *w, int rows, int cols) {
    uint64_t rb = quant_row_bytes(SL_DTYPE_Q4, (uint64_t)cols);
    int nb = cols / 32;
    for (int r = 0; r < rows; r++) {
        uint8_t *row = w + (uint64_t)r * rb;
        for (int i = 0; i < cols / 2; i += 8) {
            uint64_t v = rnd64();
            memcpy(row + i, &v, 8);
        }
        uint16_t *d = (uint16_t *)(row + cols / 2), *m = d + nb;
        for (int b = 0; b < nb; b++) {
            float dv = 0.011f + 0.01f * frand();
            d[b] = sl_f32_to_f16(dv);
            m[b] = sl_f32_to_f16(-8.0f * dv);
        }
    }
}

static double nmse(const float *got, const float *want, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)got[i] - want[i];
        num += d * d;
        den += (double)want[i] * want[i];
    }
    return den > 0 ? num / den : num;
}

/* Sets "A=1,B=2" in the environment (set = 1) or unsets its names. */
static void envs(const char *list, int set) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", list);
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        char *eq = strchr(tok, '=');
        if (!eq) continue;
        *eq = 0;
        if (set) setenv(tok, eq + 1, 1);
        else unsetenv(tok);
    }
}

static int failures;

/* One result line. bits: 1 identical to the group's default, 0 not, -1 the
 * default itself; may_differ: the variant changes the order of sums. */
static void report(const char *kernel, const char *env, int st, double us, double bytes,
                   double err, int bits, int may_differ, int ids_ok) {
    if (st) {
        printf("%-12s %-34s ERROR %s\n", kernel, env[0] ? env : "(default)", sl_errmsg());
        failures++;
        return;
    }
    int ok = err <= MAX_NMSE && ids_ok && (bits != 0 || may_differ);
    if (!ok) failures++;
    printf("%-12s %-34s %8.2f us %7.1f GB/s  nmse %.2e%s %s %s\n", kernel,
           env[0] ? env : "(default)", us, bytes / us / 1e3, err, ids_ok ? "" : " IDS-DIFFER",
           bits < 0 ? "baseline" : bits ? "bit-identical" : "bits-differ", ok ? "ok" : "FAIL");
}

/* The CPU router: logits (ne) → ids, w (k), softmax then top-k, renormalised. */
static void route_ref(const float *logits, int ne, int k, int32_t *ids, float *w) {
    float *p = xmalloc((size_t)ne * sizeof *p);
    memcpy(p, logits, (size_t)ne * sizeof *p);
    ops_softmax(p, ne);
    ops_topk(p, ne, k, ids, w);
    float s = 0;
    for (int i = 0; i < k; i++) s += w[i];
    for (int i = 0; i < k; i++) w[i] /= s;
    free(p);
}

static int ncopies(double bytes) {
    int n = (int)(160e6 / bytes) + 1;
    return n > 400 ? 400 : n;
}

static void bench_matvecs(int reps, const float *x, const float *nw, float eps) {
    const int dt = SL_DTYPE_BF16;
    /* q/k/v with the RMSNorm prologue (the forward pass's first launch) */
    int rows[3] = {QD, KVD, KVD};
    const void *w[3] = {make_dense(dt, QD, HID, 0.05f), make_dense(dt, KVD, HID, 0.05f),
                        make_dense(dt, KVD, HID, 0.05f)};
    float *xn = xmalloc(HID * 4), *ref = xmalloc((QD + 2 * KVD) * 4);
    float *y = xmalloc((QD + 2 * KVD) * 4), *y0 = xmalloc((QD + 2 * KVD) * 4);
    ops_rmsnorm(xn, x, nw, HID, eps);
    for (int i = 0, o = 0; i < 3; o += rows[i], i++) ops_matvec_ref(dt, w[i], xn, ref + o, rows[i], HID);
    double bytes = (double)(QD + 2 * KVD) * quant_row_bytes(dt, HID);
    const char *qv[] = {"", "SLUICE_CUDA_MVU=8"};
    for (int v = 0; v < 2; v++) {
        double us = 0;
        envs(qv[v], 1);
        int st = cuda_kbench_matvec(dt, 3, w, rows, HID, x, nw, eps, 0, ncopies(bytes), reps, y, &us);
        envs(qv[v], 0);
        if (v == 0) memcpy(y0, y, (QD + 2 * KVD) * 4);
        report("qkv+norm", qv[v], st, us, bytes, st ? 1 : nmse(y, ref, QD + 2 * KVD),
               v == 0 ? -1 : !memcmp(y, y0, (QD + 2 * KVD) * 4), 0, 1);
    }
    for (int i = 0; i < 3; i++) free((void *)w[i]);
    /* o_proj + residual (accumulate) */
    void *wo = make_dense(dt, HID, QD, 0.05f);
    float *att = xmalloc(QD * 4), *res = xmalloc(HID * 4), *yo = xmalloc(HID * 4);
    fill(att, QD, 1.0f);
    fill(res, HID, 1.0f);
    ops_matvec_ref(dt, wo, att, ref, HID, QD);
    ops_add(ref, res, HID);
    bytes = (double)HID * quant_row_bytes(dt, QD);
    for (int v = 0; v < 2; v++) {
        double us = 0;
        memcpy(yo, res, HID * 4);
        envs(qv[v], 1);
        int st = cuda_kbench_matvec(dt, 1, (const void *const *)&wo, (int[]){HID}, QD, att, NULL,
                                    eps, 1, ncopies(bytes), reps, yo, &us);
        envs(qv[v], 0);
        if (v == 0) memcpy(y0, yo, HID * 4);
        report("o_proj+res", qv[v], st, us, bytes, st ? 1 : nmse(yo, ref, HID),
               v == 0 ? -1 : !memcmp(yo, y0, HID * 4), 0, 1);
    }
    free(wo), free(att), free(res), free(yo), free(xn), free(ref), free(y), free(y0);
}

static void bench_router(int reps, const float *x, const float *nw, float eps) {
    const int dt = SL_DTYPE_BF16;
    void *w = make_dense(dt, NE, HID, 0.05f);
    float xn[HID], ref[NE], lg[NE], l0[NE], wr[TOPK], wts[TOPK], w0[TOPK];
    int32_t idr[TOPK], ids[TOPK];
    ops_rmsnorm(xn, x, nw, HID, eps);
    ops_matvec_ref(dt, w, xn, ref, NE, HID);
    route_ref(ref, NE, TOPK, idr, wr);
    double bytes = (double)NE * quant_row_bytes(dt, HID);
    static const struct {
        int mode;
        const char *env, *name;
    } rv[] = {
        {0, "", "router+rt"},
        {0, "SLUICE_CUDA_RWPR=1", "router+rt"},
        {0, "SLUICE_CUDA_RWPR=2", "router+rt"},
        {0, "SLUICE_CUDA_RWPR=4", "router+rt"},
        {0, "SLUICE_CUDA_PDL=1", "router+rt"},
        {1, "", "router,rt"},
        {2, "", "router-only"},
        {2, "SLUICE_CUDA_RWPR=1", "router-only"},
        {2, "SLUICE_CUDA_RWPR=2", "router-only"},
        {3, "", "route-only"},
    };
    for (size_t v = 0; v < sizeof rv / sizeof rv[0]; v++) {
        double us = 0;
        memset(ids, 0xff, sizeof ids);
        envs(rv[v].env, 1);
        int st = cuda_kbench_router(dt, w, NE, HID, x, nw, eps, TOPK, SL_ROUTER_SOFTMAX_TOPK, 1,
                                    rv[v].mode, ncopies(bytes), reps, lg, ids, wts, &us);
        envs(rv[v].env, 0);
        int ids_ok = rv[v].mode == 2 || !memcmp(ids, idr, sizeof ids);
        double err = st ? 1 : nmse(lg, ref, NE);
        if (!st && rv[v].mode != 2) {
            double e2 = nmse(wts, wr, TOPK);
            if (e2 > err) err = e2;
        }
        if (v == 0) memcpy(l0, lg, sizeof l0), memcpy(w0, wts, sizeof w0);
        int bits = v == 0 ? -1 : !memcmp(lg, l0, sizeof l0) &&
                                     (rv[v].mode == 2 || !memcmp(wts, w0, sizeof w0));
        report(rv[v].name, rv[v].env, st, us, rv[v].mode == 3 ? 0 : bytes, err, bits,
               strstr(rv[v].env, "RWPR") != NULL, ids_ok);
    }
    free(w);
}

static void bench_experts(int reps, float eps) {
    uint64_t rgu = quant_row_bytes(SL_DTYPE_Q4, HID), rdn = quant_row_bytes(SL_DTYPE_Q4, FFN);
    uint64_t off[3] = {0, rgu * FFN, 2 * rgu * FFN};
    uint64_t rec = (off[2] + rdn * HID + 4095) / 4096 * 4096;
    uint8_t *recs = xmalloc((size_t)rec * NE);
    memset(recs, 0, (size_t)rec * NE);
    for (int e = 0; e < NE; e++) {
        fill_q4(recs + e * rec + off[0], FFN, HID);
        fill_q4(recs + e * rec + off[1], FFN, HID);
        fill_q4(recs + e * rec + off[2], HID, FFN);
    }
    int32_t ids[NSETS * TOPK];
    for (int r = 0; r < NSETS; r++) /* router order: not sorted by id */
        for (int j = 0; j < TOPK; j++) ids[r * TOPK + j] = r * TOPK + (j * 5 + 3) % TOPK;
    float wts[TOPK], s = 0, xn[HID], x[HID], href[TOPK * FFN], xref[HID], g[FFN], u[FFN], y[HID];
    for (int j = 0; j < TOPK; j++) s += wts[j] = 0.1f + (frand() + 1.0f);
    for (int j = 0; j < TOPK; j++) wts[j] /= s;
    fill(xn, HID, 1.0f);
    fill(x, HID, 1.0f);
    memcpy(xref, x, sizeof x);
    float sum[HID];
    memset(sum, 0, sizeof sum);
    for (int id = 0; id < TOPK; id++) /* set 0 is experts 0..7: id order = expert order */
        for (int j = 0; j < TOPK; j++) {
            if (ids[j] != id) continue;
            const uint8_t *r = recs + (uint64_t)id * rec;
            ops_matvec_ref(SL_DTYPE_Q4, r + off[0], xn, g, FFN, HID);
            ops_matvec_ref(SL_DTYPE_Q4, r + off[1], xn, u, FFN, HID);
            ops_swiglu(href + j * FFN, g, u, FFN);
            ops_matvec_ref(SL_DTYPE_Q4, r + off[2], href + j * FFN, y, HID, FFN);
            ops_scale_add(sum, y, wts[j], HID);
        }
    ops_add(xref, sum, HID);
    double bgu = 2.0 * TOPK * FFN * rgu, bdc = (double)TOPK * HID * rdn;
    static const char *ev[] = {"", "SLUICE_CUDA_GU=1", "SLUICE_CUDA_GU=2", "SLUICE_CUDA_GU=3",
                               "SLUICE_CUDA_GU=4", "SLUICE_CUDA_DC=0", "SLUICE_CUDA_DC=2",
                               "SLUICE_CUDA_DC=3", "SLUICE_CUDA_GU=3,SLUICE_CUDA_DC=2"};
    float h[TOPK * FFN], h0[TOPK * FFN], xo[HID], x0[HID];
    for (size_t v = 0; v < sizeof ev / sizeof ev[0]; v++) {
        double ug = 0, ud = 0;
        envs(ev[v], 1);
        int st = cuda_kbench_experts(recs, rec, off, NE, HID, FFN, TOPK, ids, NSETS, wts, xn, x,
                                     reps, h, xo, &ug, &ud);
        envs(ev[v], 0);
        if (v == 0) memcpy(h0, h, sizeof h), memcpy(x0, xo, sizeof xo);
        int gu_v = v == 0 || strstr(ev[v], "GU") != NULL, dc_v = v == 0 || strstr(ev[v], "DC");
        if (gu_v)
            report("gate_up", ev[v], st, ug, bgu, st ? 1 : nmse(h, href, TOPK * FFN),
                   v == 0 ? -1 : !memcmp(h, h0, sizeof h), 0, 1);
        if (dc_v)
            report("down+comb", ev[v], st, ud, bdc, st ? 1 : nmse(xo, xref, HID),
                   v == 0 ? -1 : !memcmp(xo, x0, sizeof xo), 0, 1);
    }
    free(recs);
}

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 200;
    char dev[256];
    if (reps < 1) reps = 200;
    if (cuda_probe(dev, sizeof dev) != SL_OK) {
        printf("cuda_decode_kernels: no usable CUDA device (%s)\n", sl_errmsg());
        return 0;
    }
    printf("cuda_decode_kernels: %s, a3b-gpu shapes, %d launches per graph; "
           "PDL default off unless SLUICE_CUDA_PDL=1\n", dev, reps);
    float x[HID], nw[HID], eps = 1e-6f;
    fill(x, HID, 1.0f);
    fill(nw, HID, 1.0f);
    bench_matvecs(reps, x, nw, eps);
    bench_router(reps, x, nw, eps);
    bench_experts(reps, eps);
    printf("cuda_decode_kernels: %s (%d failed)\n", failures ? "FAILED" : "all checks ok",
           failures);
    return failures ? 1 : 0;
}

#endif /* SLUICE_CUDA */
