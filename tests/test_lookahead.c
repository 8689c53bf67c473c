/*
 * test_lookahead.c — the router lookahead's prediction (moe_route_predict:
 * forward.c's lookahead and the CUDA streaming path predict the next MoE
 * layer's experts with it).
 *
 * Direct: given the same router logits, the prediction is exactly the
 * experts the layer's routing picks (its bias added as the layer adds it,
 * the family's selection rule, ties included), compared with moe_route /
 * moe_route_noaux_tc called here on the same logits:
 *   gpt_oss/base (router bias, top-k of the biased logits), every MoE layer;
 *   deepseek_v3/groups (noaux_tc: sigmoid + e_score_correction_bias,
 *       group-limited top-k, 8 groups keep 3), with and without the bias,
 *       on a coarse grid of logits (many ties);
 *   a softmax-first config where two distinct logits round to the same
 *       probability (routing's tie goes to the lower id).
 * Each also counts the tokens on which the plain top-k of the raw logits
 * (what the lookahead predicted before) picks other experts, and requires
 * some: the cases do tell the two predictions apart.
 * Bad input: k above MOE_ROUTE_PREDICT_MAX_K, groups that do not fit.
 *
 * Through the engine (gpt_oss/base and deepseek_v3/qlora_yarn, the
 * deepseek fixture with two MoE layers; groups has one): a tiny RAM cache,
 * buffered reads, prefetch always on: the lookahead counters of sl_stats
 * are live (predicted share of the experts used is printed), and every
 * logit is bit-identical to prefetch off (the prediction moves bytes only).
 *
 * The fixtures are committed: a missing one is a failure.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "cpu/ops.h"
#include "model.h"
#include "moe_route.h"
#include "sluice.h"
#include "golden.h"
#include "test.h"
#include "util.h"

#define N_TOK 256   /* tokens of random logits per case */
#define MAX_E 64    /* experts of the configs here */

static uint32_t rng = 12345;

/* Uniform in [-1, 1); snapped to multiples of grid when grid > 0. */
static float frand(float grid) {
    rng = rng * 1664525u + 1013904223u;
    float u = (float)(rng >> 8) / (float)(1u << 23) - 1.0f;
    return grid > 0 ? grid * roundf(u / grid) : u;
}

/* The layer's own selection, computed here independently of the helper:
 * the bias added element by element, the family's routing function called
 * directly on all n tokens at once. ids: (n, k). */
static int route_ref(const struct sl_config *c, const float *logits, const float *rb,
                     const float *sb, int n, int32_t *ids) {
    int ne = (int)c->n_experts, k = (int)c->n_experts_used;
    float *l = malloc((size_t)n * ne * sizeof(float)), *w = malloc((size_t)n * k * sizeof(float));
    int st = SL_ERR_NOMEM;
    if (l && w) {
        for (int t = 0; t < n; t++)
            for (int e = 0; e < ne; e++)
                l[(size_t)t * ne + e] = logits[(size_t)t * ne + e] + (rb ? rb[e] : 0.0f);
        st = c->router_kind == SL_ROUTER_NOAUX_TC ? moe_route_noaux_tc(c, l, sb, n, ids, w)
                                                  : moe_route(c, l, n, ids, w);
    }
    free(l);
    free(w);
    return st;
}

/* Nonzero when the k ids of a and b hold the same experts. */
static int same_set(const int32_t *a, const int32_t *b, int k) {
    for (int i = 0; i < k; i++) {
        int in = 0;
        for (int j = 0; j < k && !in; j++) in = a[i] == b[j];
        if (!in) return 0;
    }
    return 1;
}

/* Checks moe_route_predict against route_ref on n tokens of logits:
 * token by token (exactly the routed ids, in routing order) and as one
 * chunk (the union in first-picked order). Returns the number of tokens on
 * which the plain top-k of the raw logits picks another set. */
static int check_predict(const struct sl_config *c, const float *logits, const float *rb,
                         const float *sb, int n) {
    int ne = (int)c->n_experts, k = (int)c->n_experts_used, plain_diff = 0;
    int32_t *ref = malloc((size_t)n * k * sizeof(int32_t));
    float *buf = malloc((size_t)n * ne * sizeof(float));
    if (!ref || !buf) {
        CHECK(!"out of memory");
        free(ref);
        free(buf);
        return 0;
    }
    CHECK_EQ_INT(route_ref(c, logits, rb, sb, n, ref), SL_OK);
    int32_t got[MAX_E], want[MAX_E], plain[MAX_E];
    float vals[MAX_E];
    int np, nw = 0, bad = 0;
    for (int t = 0; t < n; t++) {
        const int32_t *r = ref + (size_t)t * k;
        memcpy(buf, logits + (size_t)t * ne, (size_t)ne * sizeof(float));
        CHECK_EQ_INT(moe_route_predict(c, buf, rb, sb, 1, got, &np), SL_OK);
        if (np != k || memcmp(got, r, (size_t)k * sizeof(int32_t))) bad++;
        memcpy(buf, logits + (size_t)t * ne, (size_t)ne * sizeof(float));
        CHECK_EQ_INT(ops_topk(buf, ne, k, plain, vals), SL_OK);
        plain_diff += !same_set(plain, r, k);
        for (int i = 0; i < k; i++) { /* the chunk's expected union */
            int dup = 0;
            for (int j = 0; j < nw && !dup; j++) dup = want[j] == r[i];
            if (!dup) want[nw++] = r[i];
        }
    }
    CHECK_MSG(bad == 0, "%d of %d tokens predicted other ids than routing", bad, n);
    memcpy(buf, logits, (size_t)n * ne * sizeof(float));
    CHECK_EQ_INT(moe_route_predict(c, buf, rb, sb, n, got, &np), SL_OK);
    CHECK_EQ_INT(np, nw);
    CHECK(np == nw && !memcmp(got, want, (size_t)nw * sizeof(int32_t)));
    free(ref);
    free(buf);
    return plain_diff;
}

/* n tokens of router logits for c: uniform * scale, snapped to grid. */
static float *random_logits(const struct sl_config *c, int n, float scale, float grid) {
    float *l = malloc((size_t)n * c->n_experts * sizeof(float));
    for (size_t i = 0; l && i < (size_t)n * c->n_experts; i++) l[i] = scale * frand(grid);
    return l;
}

static struct sl_model *open_fixture(const char *family, const char *name) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/%s/%s", golden_fx_root(), family, name);
    return golden_convert_open(dir, SL_DTYPE_BF16, SL_DTYPE_BF16, "/tmp/sluice_la_XXXXXX",
                               NULL);
}

TEST(predict_gpt_oss_router_bias) {
    struct sl_model *m = open_fixture("gpt_oss", "base");
    CHECK(m);
    if (!m) return;
    const struct sl_config *c = &m->cfg;
    CHECK_EQ_INT(c->router_kind, SL_ROUTER_TOPK_SOFTMAX);
    CHECK(c->n_experts <= MAX_E);
    int moe_layers = 0, diff = 0;
    for (uint32_t l = 0; l < c->n_layers && c->n_experts <= MAX_E; l++) {
        if (!c->layer_is_moe[l]) continue;
        moe_layers++;
        const float *rb = m->layers[l].router_b;
        CHECK_MSG(rb != NULL, "layer %u has no router bias", l);
        /* logits on the bias's scale (the fixture's bias has std 0.1) */
        float *lg = random_logits(c, N_TOK, 0.2f, 0);
        CHECK(lg);
        if (lg) diff += check_predict(c, lg, rb, NULL, N_TOK);
        free(lg);
    }
    CHECK(moe_layers >= 2);
    fprintf(stderr, "    gpt_oss/base: plain top-k of the raw logits misses on %d of %d "
            "tokens\n", diff, moe_layers * N_TOK);
    CHECK(diff > 0);
    sl_model_close(m);
}

TEST(predict_deepseek_noaux_tc_groups) {
    struct sl_model *m = open_fixture("deepseek_v3", "groups");
    CHECK(m);
    if (!m) return;
    const struct sl_config *c = &m->cfg;
    CHECK_EQ_INT(c->router_kind, SL_ROUTER_NOAUX_TC);
    CHECK(c->n_group > 1 && c->topk_group < c->n_group);
    CHECK(c->n_experts <= MAX_E);
    uint32_t l = 0;
    while (l < c->n_layers && !c->layer_is_moe[l]) l++;
    CHECK(l < c->n_layers);
    if (l >= c->n_layers || c->n_experts > MAX_E) {
        sl_model_close(m);
        return;
    }
    const float *sb = m->layers[l].router_sel_bias;
    CHECK(sb != NULL);
    CHECK(m->layers[l].router_b == NULL);
    float *lg = random_logits(c, N_TOK, 2.0f, 0), *tie = random_logits(c, N_TOK, 1.0f, 0.25f);
    CHECK(lg && tie);
    int d1 = 0, d2 = 0, d3 = 0;
    if (lg && tie) {
        d1 = check_predict(c, lg, NULL, sb, N_TOK);
        d2 = check_predict(c, tie, NULL, sb, N_TOK);
        d3 = check_predict(c, tie, NULL, NULL, N_TOK); /* ties among experts and groups */
    }
    fprintf(stderr, "    deepseek_v3/groups: plain top-k misses on %d, %d (grid), %d "
            "(grid, no bias) of %d tokens\n", d1, d2, d3, N_TOK);
    CHECK(d1 > 0 && d2 > 0 && d3 > 0);
    free(lg);
    free(tie);
    sl_model_close(m);
}

TEST(predict_softmax_first_ties) {
    struct sl_config c;
    memset(&c, 0, sizeof c);
    c.n_experts = 8;
    c.n_experts_used = 2;
    c.router_kind = SL_ROUTER_SOFTMAX_TOPK;
    c.norm_topk_prob = 1;
    /* experts 1 and 3 differ by 1e-8 in logit, not in float probability:
     * routing keeps 1 (the lower id), the raw logits' top-k 3 */
    float lg[8] = {-10, 0, -10, 1e-8f, -10, 0.5f, -10, -10};
    CHECK(check_predict(&c, lg, NULL, NULL, 1) == 1);
    int32_t got[8];
    int np;
    CHECK_EQ_INT(moe_route_predict(&c, lg, NULL, NULL, 1, got, &np), SL_OK);
    CHECK(np == 2 && got[0] == 5 && got[1] == 1);
    float *r = random_logits(&c, N_TOK, 4.0f, 0.5f); /* qwen3 / mixtral / olmoe */
    CHECK(r);
    if (r) check_predict(&c, r, NULL, NULL, N_TOK);
    c.router_kind = SL_ROUTER_TOPK_SOFTMAX; /* gpt_oss without a bias */
    if (r) CHECK_EQ_INT(check_predict(&c, r, NULL, NULL, N_TOK), 0);
    free(r);
}

TEST(predict_bad_input) {
    struct sl_config c;
    memset(&c, 0, sizeof c);
    c.n_experts = 128;
    c.n_experts_used = MOE_ROUTE_PREDICT_MAX_K + 1;
    float lg[128] = {0};
    int32_t out[128];
    int np = -1;
    CHECK_EQ_INT(moe_route_predict(&c, lg, NULL, NULL, 1, out, &np), SL_ERR_ARG);
    CHECK_EQ_INT(np, 0);
    CHECK(strstr(sl_errmsg(), "top-65") != NULL);
    c.n_experts = 16; /* 16 experts do not split into 3 groups */
    c.n_experts_used = 2;
    c.router_kind = SL_ROUTER_NOAUX_TC;
    c.n_group = 3;
    c.topk_group = 1;
    np = -1;
    CHECK_EQ_INT(moe_route_predict(&c, lg, NULL, NULL, 1, out, &np), SL_ERR_ARG);
    CHECK_EQ_INT(np, 0);
    CHECK(strstr(sl_errmsg(), "n_group 3") != NULL);
}

#define N_PROMPT 40
#define N_GEN 16

/* Prefill of the fixture's prompt in chunks of 8, then its generated tokens
 * one by one: every row of logits into out (N_PROMPT + N_GEN, n_vocab),
 * the context's stats into st. */
static int run_model(const char *path, int prefetch, uint64_t cache, const int32_t *prompt,
                     const int32_t *gen, float *out, struct sl_stats *st) {
    struct sl_model_params mp = sl_model_default_params();
    mp.n_threads = 2;
    mp.ram_cache_bytes = cache;
    mp.io_mode = SL_IO_BUFFERED; /* the store's counters (mmap has none) */
    mp.prefetch = prefetch;
    struct sl_model *m;
    int rc = sl_model_open(path, &mp, &m);
    if (rc) {
        fprintf(stderr, "    sl_model_open %s: %s\n", path, sl_errmsg());
        return rc;
    }
    struct sl_context_params cp = sl_context_default_params();
    cp.n_ctx = 64;
    cp.n_batch = 8;
    struct sl_context *ctx;
    if (!(rc = sl_context_create(m, &cp, &ctx))) {
        size_t nv = (size_t)sl_model_n_vocab(m);
        rc = sl_eval(ctx, prompt, N_PROMPT, out);
        for (int i = 0; !rc && i < N_GEN; i++) {
            rc = sl_eval(ctx, &gen[i], 1, NULL);
            if (!rc) memcpy(out + (N_PROMPT + i) * nv, sl_logits(ctx), nv * sizeof(float));
        }
        sl_context_stats(ctx, st);
        sl_context_free(ctx);
    }
    sl_model_close(m);
    return rc;
}

/* The fixture family/name converted, run with prefetch always and off on a
 * cache of about 3 experts' records per MoE layer. */
static void check_engine(const char *family, const char *name) {
    char dir[512], tmp[64] = "/tmp/sluice_la_XXXXXX", path[96];
    snprintf(dir, sizeof dir, "%s/%s/%s", golden_fx_root(), family, name);
    size_t nv = 0;
    int32_t prompt[N_PROMPT], gen[N_GEN];
    float *ref = NULL;
    CHECK(golden_fixture_read(dir, 0, N_PROMPT, N_GEN, &nv, prompt, gen, &ref));
    free(ref);
    CHECK(mkdtemp(tmp) != NULL);
    snprintf(path, sizeof path, "%s/m.sluice", tmp);
    struct sl_convert_params cvp = sl_convert_default_params();
    int rc = nv ? sl_convert(dir, path, &cvp) : SL_ERR_ARG;
    CHECK_MSG(rc == SL_OK, "sl_convert %s: %s", dir, sl_errmsg());
    struct sl_model *m = NULL;
    struct sl_model_params mp = sl_model_default_params();
    if (!rc) rc = sl_model_open(path, &mp, &m);
    uint64_t cache = 0;
    if (!rc) {
        const struct sl_config *c = &m->cfg;
        uint32_t moe = 0;
        for (uint32_t l = 0; l < c->n_layers; l++) moe += c->layer_is_moe[l];
        CHECK(moe >= 2); /* a next MoE layer to predict */
        cache = sl_model_expert_bytes(m) / ((uint64_t)moe * c->n_experts) * 3 * moe;
        sl_model_close(m);
    }
    size_t rows = N_PROMPT + N_GEN;
    float *on = calloc(rows * nv, sizeof(float)), *off = calloc(rows * nv, sizeof(float));
    struct sl_stats s_on, s_off;
    memset(&s_on, 0, sizeof s_on);
    memset(&s_off, 0, sizeof s_off);
    CHECK(on && off);
    if (!rc && on && off) {
        CHECK_EQ_INT(run_model(path, SL_PREFETCH_ALWAYS, cache, prompt, gen, on, &s_on), SL_OK);
        CHECK_EQ_INT(run_model(path, SL_PREFETCH_OFF, cache, prompt, gen, off, &s_off), SL_OK);
        CHECK_MSG(!memcmp(on, off, rows * nv * sizeof(float)),
                  "logits differ with prefetch on and off");
        CHECK(s_on.lookahead_total > 0);
        CHECK(s_on.lookahead_hits > 0 && s_on.lookahead_hits <= s_on.lookahead_total);
        CHECK(s_on.prefetch_issued > 0);
        CHECK_EQ_INT(s_off.lookahead_total, 0);
        CHECK_EQ_INT(s_off.prefetch_issued, 0);
        fprintf(stderr, "    %s/%s: lookahead predicted %.1f%% of experts used (%llu of "
                "%llu), %llu prefetches, %llu useful\n", family, name,
                s_on.lookahead_total ? 100.0 * (double)s_on.lookahead_hits /
                                           (double)s_on.lookahead_total : 0.0,
                (unsigned long long)s_on.lookahead_hits,
                (unsigned long long)s_on.lookahead_total,
                (unsigned long long)s_on.prefetch_issued,
                (unsigned long long)s_on.prefetch_useful);
    }
    free(on);
    free(off);
    unlink(path);
    rmdir(tmp);
}

TEST(engine_gpt_oss) { check_engine("gpt_oss", "base"); }
TEST(engine_deepseek_v3) { check_engine("deepseek_v3", "qlora_yarn"); }

TEST_MAIN()
