/*
 * test_gdn.c — the Gated DeltaNet mixer (src/layer_gdn.c): hand-computed
 * steps of the delta rule and of the conv, the chunked form against the
 * token-by-token recurrence (whole prompts, prompts split at odd places,
 * then decode steps), threads against no threads, and bad shapes.
 */
#include <math.h>
#include <stdint.h>

#include "cpu/pool.h"
#include "layer_gdn.h"
#include "sluice.h"
#include "test.h"

static uint32_t rng = 987654321u;
static float frand(void) { /* uniform in [-1, 1) */
    rng = rng * 1664525u + 1013904223u;
    return (float)(rng >> 8) / (float)(1u << 23) - 1.0f;
}
static void fill(float *x, size_t n, float s) {
    for (size_t i = 0; i < n; i++) x[i] = s * frand();
}

TEST(step_by_hand) {
    /* k_dim = v_dim = 1: S = 0, q = k = 1, v = 2, beta 0.5, g = 0:
     * delta = 0.5 (2 - 0) = 1, S = 1, out = 1. Then g = ln 0.5: S = 0.5,
     * delta = 0.5 (2 - 0.5) = 0.75, S = 1.25, out = 1.25. */
    float S = 0, q = 1, k = 1, v = 2, out;
    gdn_step_ref(&S, &q, &k, &v, 0.0f, 0.5f, &out, 1, 1);
    CHECK_NEAR(S, 1.0, 1e-7);
    CHECK_NEAR(out, 1.0, 1e-7);
    gdn_step_ref(&S, &q, &k, &v, logf(0.5f), 0.5f, &out, 1, 1);
    CHECK_NEAR(S, 1.25, 1e-6);
    CHECK_NEAR(out, 1.25, 1e-6);
    /* k_dim 2, v_dim 1, orthogonal keys write separate rows: k = e0 then e1 */
    float S2[2] = {0, 0}, e0[2] = {1, 0}, e1[2] = {0, 1}, v1 = 3, v2 = -1;
    gdn_step_ref(S2, e0, e0, &v1, 0.0f, 1.0f, &out, 2, 1);
    gdn_step_ref(S2, e1, e1, &v2, 0.0f, 1.0f, &out, 2, 1);
    CHECK_NEAR(S2[0], 3, 1e-7);
    CHECK_NEAR(S2[1], -1, 1e-7);
    CHECK_NEAR(out, -1, 1e-7);
}

static float silu(float x) { return x / (1 + expf(-x)); }

TEST(conv_by_hand) {
    /* one channel, kernel 3, taps (1, 2, 3), zero state, inputs 1, 2, 3:
     * outputs silu(3), silu(2 + 6), silu(1 + 4 + 9); state (2, 3). */
    float w[3] = {1, 2, 3}, x[3] = {1, 2, 3}, st[2] = {0, 0};
    gdn_conv_silu(x, 3, 1, w, 3, st);
    CHECK_NEAR(x[0], silu(3), 1e-6);
    CHECK_NEAR(x[1], silu(8), 1e-6);
    CHECK_NEAR(x[2], silu(14), 1e-6);
    CHECK_NEAR(st[0], 2, 0);
    CHECK_NEAR(st[1], 3, 0);
    /* the state carries over: next input 4 sees (2, 3, 4) */
    float y = 4;
    gdn_conv_silu(&y, 1, 1, w, 3, st);
    CHECK_NEAR(y, silu(2 + 6 + 12), 1e-6);
    /* kernel 1: no history */
    float w1 = 2, z = 1.5f;
    gdn_conv_silu(&z, 1, 1, &w1, 1, NULL);
    CHECK_NEAR(z, silu(3), 1e-6);
}

/* Runs n_tok tokens through gdn_forward in the given split (pieces of
 * sizes split[], chunked or not) from a zero state; returns outputs
 * (n_tok, value_dim) and the final state. */
struct run {
    float *out, *conv, *ssm;
};

static void run_split(struct sl_pool *pool, const struct gdn_dims *d,
                      const struct gdn_weights *w, const float *qkv_in, const float *z,
                      const float *a, const float *b, int n_tok, const int *split,
                      int chunked, struct run *r) {
    int cd = gdn_conv_dim(d), vd = gdn_value_dim(d);
    r->out = calloc((size_t)n_tok * vd, 4);
    r->conv = calloc((size_t)cd * (d->kernel - 1) + 1, 4);
    r->ssm = calloc((size_t)d->n_v_heads * d->k_dim * d->v_dim, 4);
    float *qkv = malloc((size_t)n_tok * cd * 4);
    memcpy(qkv, qkv_in, (size_t)n_tok * cd * 4);
    float *scr = malloc(gdn_scratch_floats(d, n_tok, pool_n_threads(pool)) * 4);
    struct gdn_state st = {r->conv, r->ssm};
    int t = 0;
    for (int i = 0; t < n_tok; i++) {
        int n = split ? split[i] : n_tok;
        CHECK_EQ_INT(gdn_forward(pool, d, w, &st, qkv + (size_t)t * cd, z + (size_t)t * vd,
                                 a + (size_t)t * d->n_v_heads, b + (size_t)t * d->n_v_heads,
                                 r->out + (size_t)t * vd, n, chunked, scr),
                     SL_OK);
        t += n;
    }
    free(qkv);
    free(scr);
}

static void run_free(struct run *r) {
    free(r->out);
    free(r->conv);
    free(r->ssm);
}

static void chunked_vs_recurrent(int nk, int nv, int dk, int dv, int K) {
    enum { N = 150 }; /* crosses two chunk boundaries */
    struct gdn_dims d = {nk, nv, dk, dv, K, 1e-6f};
    int cd = gdn_conv_dim(&d), vd = gdn_value_dim(&d);
    float *qkv = malloc((size_t)N * cd * 4), *z = malloc((size_t)N * vd * 4);
    float *a = malloc((size_t)N * nv * 4), *b = malloc((size_t)N * nv * 4);
    float *conv = malloc((size_t)cd * K * 4), *alog = malloc(nv * 4), *dt = malloc(nv * 4),
          *nw = malloc(dv * 4);
    fill(qkv, (size_t)N * cd, 2.0f);
    fill(z, (size_t)N * vd, 2.0f);
    fill(a, (size_t)N * nv, 2.0f);
    fill(b, (size_t)N * nv, 2.0f);
    fill(conv, (size_t)cd * K, 0.7f);
    for (int h = 0; h < nv; h++) {
        alog[h] = logf(0.05f + 0.5f * (float)h); /* slow to fast decays */
        dt[h] = 0.3f * frand();
    }
    for (int c = 0; c < dv; c++) nw[c] = 1 + 0.1f * frand();
    struct gdn_weights w = {conv, alog, dt, nw};
    struct run rec, chk, parts, dec;
    run_split(NULL, &d, &w, qkv, z, a, b, N, NULL, 0, &rec);
    run_split(NULL, &d, &w, qkv, z, a, b, N, NULL, 1, &chk);
    char what[96];
    snprintf(what, sizeof what, "chunked vs recurrent out (%d/%d heads, %dx%d, K %d)", nk, nv,
             dk, dv, K);
    check_tensor(what, chk.out, rec.out, N * vd, 1e-9, 1e-3);
    check_tensor("chunked vs recurrent state", chk.ssm, rec.ssm, nv * dk * dv, 1e-9, 1e-3);
    check_tensor("conv state", chk.conv, rec.conv, cd * (K - 1), 0, 0);
    /* a prompt split at odd places, then decode steps: one sequence */
    static const int split[] = {37, 1, 70, 12, 1, 1, 1, 27};
    run_split(NULL, &d, &w, qkv, z, a, b, N, split, 1, &parts);
    check_tensor("split chunked vs recurrent", parts.out, rec.out, N * vd, 1e-9, 1e-3);
    check_tensor("split state", parts.ssm, rec.ssm, nv * dk * dv, 1e-9, 1e-3);
    /* threads change nothing: heads are independent */
    struct sl_pool *pool;
    CHECK_EQ_INT(pool_create(3, &pool), SL_OK);
    run_split(pool, &d, &w, qkv, z, a, b, N, split, 1, &dec);
    check_tensor("3 threads vs 1", dec.out, parts.out, N * vd, 0, 0);
    pool_free(pool);
    /* the output is not trivially small (the test would prove nothing) */
    double ss = 0;
    for (int i = 0; i < N * vd; i++) ss += (double)rec.out[i] * rec.out[i];
    CHECK_MSG(ss / (N * vd) > 1e-3, "mean square output %g", ss / (N * vd));
    run_free(&rec);
    run_free(&chk);
    run_free(&parts);
    run_free(&dec);
    free(qkv), free(z), free(a), free(b), free(conv), free(alog), free(dt), free(nw);
}

TEST(chunked_matches_recurrent) {
    chunked_vs_recurrent(2, 4, 16, 8, 4);  /* grouped: 2 value heads per key head */
    chunked_vs_recurrent(1, 1, 32, 16, 2); /* one head, kernel 2 */
    chunked_vs_recurrent(3, 3, 8, 24, 5);  /* v_dim > k_dim, kernel 5 */
}

TEST(bad_shapes) {
    struct gdn_dims d = {2, 3, 8, 8, 4, 1e-6f}; /* 3 not a multiple of 2 */
    struct gdn_weights w = {0};
    struct gdn_state st = {0};
    float x[1] = {0};
    CHECK_EQ_INT(gdn_forward(NULL, &d, &w, &st, x, x, x, x, x, 1, 1, x), SL_ERR_ARG);
    d.n_v_heads = 4;
    CHECK_EQ_INT(gdn_forward(NULL, &d, &w, &st, x, x, x, x, x, 0, 1, x), SL_ERR_ARG);
    d.kernel = 0;
    CHECK_EQ_INT(gdn_forward(NULL, &d, &w, &st, x, x, x, x, x, 1, 1, x), SL_ERR_ARG);
}

TEST_MAIN()
