/*
 * test_quality.c — sl_perplexity (src/quality.c): the window protocol, the
 * perplexity against a log-softmax computed here from sl_eval's logits, KL
 * and top-1 agreement against a reference, and every rejected input.
 *
 * The models are tiny synthetic qwen3_moe files (src/synth.h) written to a
 * temporary directory: A and B differ only in their seed; C has another
 * vocabulary size. The trained demo model's numbers are checked by
 * tests/cli/demo.sh.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sluice.h"
#include "synth.h"
#include "test.h"

static char tmp_dir[64];
static char paths[3][128];

static void cleanup(void) {
    for (int i = 0; i < 3; i++)
        if (paths[i][0]) unlink(paths[i]);
    if (tmp_dir[0]) rmdir(tmp_dir);
}

/* Writes models A (seed 1), B (seed 2), C (vocab 300) once; NULL on failure. */
static const char *model(int which) {
    if (!tmp_dir[0]) {
        snprintf(tmp_dir, sizeof tmp_dir, "/tmp/test_quality.XXXXXX");
        if (!mkdtemp(tmp_dir)) return NULL;
        atexit(cleanup);
    }
    if (!paths[which][0]) {
        struct synth_params p;
        if (synth_preset("tiny", &p) != SL_OK) return NULL;
        p.seed = which == 1 ? 2 : 1;
        if (which == 2) p.cfg.n_vocab = 300;
        p.n_threads = 1;
        snprintf(paths[which], sizeof paths[which], "%s/m%d.sluice", tmp_dir, which);
        if (synth_write(&p, paths[which], NULL) != SL_OK) {
            fprintf(stderr, "  synth_write: %s\n", sl_errmsg());
            paths[which][0] = 0;
            return NULL;
        }
    }
    return paths[which];
}

struct mc {
    struct sl_model *m;
    struct sl_context *c;
};

static int open_mc(int which, uint32_t n_ctx, struct mc *out) {
    const char *p = model(which);
    memset(out, 0, sizeof *out);
    if (!p) return 0;
    struct sl_model_params mp = sl_model_default_params();
    mp.n_threads = 1;
    if (sl_model_open(p, &mp, &out->m) != SL_OK) return 0;
    struct sl_context_params cp = sl_context_default_params();
    cp.n_ctx = n_ctx;
    return sl_context_create(out->m, &cp, &out->c) == SL_OK;
}

static void close_mc(struct mc *x) {
    sl_context_free(x->c);
    sl_model_close(x->m);
}

static void tokens(int32_t *t, size_t n, int32_t n_vocab) {
    uint32_t s = 12345;
    for (size_t i = 0; i < n; i++) {
        s = s * 1103515245u + 12345u;
        t[i] = (int32_t)((s >> 8) % (uint32_t)n_vocab);
    }
}

static double log_softmax_at(const float *row, size_t nv, size_t j) {
    double mx = row[0], s = 0;
    for (size_t i = 1; i < nv; i++) mx = row[i] > mx ? row[i] : mx;
    for (size_t i = 0; i < nv; i++) s += exp((double)row[i] - mx);
    return (double)row[j] - mx - log(s);
}

static size_t argmax(const float *row, size_t nv) {
    size_t a = 0;
    for (size_t i = 1; i < nv; i++)
        if (row[i] > row[a]) a = i;
    return a;
}

/* Independent computation: windows [s, s+w), each from a reset context. */
static void manual(struct mc *a, struct mc *b, const int32_t *t, size_t n,
                   uint32_t window, double *nll, double *kl, double *agree,
                   uint64_t *scored) {
    size_t nv = (size_t)sl_model_n_vocab(a->m);
    float *la = malloc(window * nv * sizeof(float));
    float *lb = malloc(window * nv * sizeof(float));
    *nll = *kl = *agree = 0;
    *scored = 0;
    for (size_t s = 0; la && lb && s < n; s += window) {
        size_t w = n - s < window ? n - s : window;
        if (w < 2) continue;
        sl_context_reset(a->c);
        CHECK(sl_eval(a->c, t + s, w, la) == SL_OK);
        if (b) {
            sl_context_reset(b->c);
            CHECK(sl_eval(b->c, t + s, w, lb) == SL_OK);
        }
        for (size_t i = 0; i + 1 < w; i++) {
            *nll -= log_softmax_at(la + i * nv, nv, (size_t)t[s + i + 1]);
            if (b) {
                double k = 0;
                for (size_t j = 0; j < nv; j++) {
                    double lp = log_softmax_at(lb + i * nv, nv, j);
                    k += exp(lp) * (lp - log_softmax_at(la + i * nv, nv, j));
                }
                *kl += k;
                *agree += argmax(la + i * nv, nv) == argmax(lb + i * nv, nv);
            }
            (*scored)++;
        }
    }
    free(la);
    free(lb);
}

TEST(perplexity_matches_manual_windows) {
    struct mc a;
    if (!open_mc(0, 8, &a)) TEST_SKIP("model: %s", sl_errmsg());
    int32_t t[23];
    tokens(t, 23, sl_model_n_vocab(a.m));
    /* windows of 8: 8 + 8 + 7 tokens -> 7 + 7 + 6 scored */
    struct sl_quality q;
    CHECK(sl_perplexity(a.c, NULL, t, 23, 8, &q) == SL_OK);
    CHECK_EQ_INT(sl_context_n_past(a.c), 0); /* reset on return */
    double nll, kl, agree;
    uint64_t scored;
    manual(&a, NULL, t, 23, 8, &nll, &kl, &agree, &scored);
    CHECK_EQ_INT(q.n_scored, 20);
    CHECK_EQ_INT(scored, 20);
    CHECK_EQ_INT(q.n_tokens, 23);
    CHECK_NEAR(q.nll, nll, 1e-9 * fabs(nll));
    CHECK_NEAR(q.ppl, exp(nll / 20), 1e-9 * q.ppl);
    CHECK(q.ppl > 1);
    CHECK(q.ref_ppl == 0 && q.kl_mean == 0 && q.top1_agree == 0);
    /* a lone last token is skipped: 17 = 8 + 8 + 1 -> 14 scored, 16 read */
    CHECK(sl_perplexity(a.c, NULL, t, 17, 8, &q) == SL_OK);
    CHECK_EQ_INT(q.n_scored, 14);
    CHECK_EQ_INT(q.n_tokens, 16);
    close_mc(&a);
}

TEST(perplexity_against_itself_is_exact) {
    struct mc a, a2;
    if (!open_mc(0, 16, &a) || !open_mc(0, 16, &a2)) TEST_SKIP("model: %s", sl_errmsg());
    int32_t t[40];
    tokens(t, 40, sl_model_n_vocab(a.m));
    struct sl_quality q;
    CHECK(sl_perplexity(a.c, a2.c, t, 40, 16, &q) == SL_OK);
    CHECK_NEAR(q.kl_mean, 0, 1e-12);
    CHECK_NEAR(q.kl_max, 0, 1e-12);
    CHECK_NEAR(q.top1_agree, 1, 0);
    CHECK_NEAR(q.ref_ppl, q.ppl, 0);
    close_mc(&a);
    close_mc(&a2);
}

TEST(kl_and_agreement_match_manual) {
    struct mc a, b;
    if (!open_mc(0, 16, &a) || !open_mc(1, 16, &b)) TEST_SKIP("model: %s", sl_errmsg());
    int32_t t[40];
    tokens(t, 40, sl_model_n_vocab(a.m));
    struct sl_quality q;
    CHECK(sl_perplexity(a.c, b.c, t, 40, 16, &q) == SL_OK);
    double nll, kl, agree;
    uint64_t scored;
    manual(&a, &b, t, 40, 16, &nll, &kl, &agree, &scored);
    CHECK_EQ_INT(q.n_scored, scored);
    CHECK_NEAR(q.nll, nll, 1e-9 * fabs(nll));
    CHECK_NEAR(q.kl_mean, kl / (double)scored, 1e-6 * kl / (double)scored + 1e-12);
    CHECK(q.kl_mean > 0);
    CHECK(q.kl_max >= q.kl_mean);
    CHECK_NEAR(q.top1_agree, agree / (double)scored, 1e-12);
    CHECK(q.ref_ppl != q.ppl);
    close_mc(&a);
    close_mc(&b);
}

TEST(rejects_bad_input) {
    struct mc a, a4, c;
    if (!open_mc(0, 16, &a) || !open_mc(0, 4, &a4) || !open_mc(2, 16, &c))
        TEST_SKIP("model: %s", sl_errmsg());
    int32_t t[20];
    tokens(t, 20, sl_model_n_vocab(a.m));
    struct sl_quality q;
    CHECK(sl_perplexity(NULL, NULL, t, 20, 8, &q) == SL_ERR_ARG);
    CHECK(sl_perplexity(a.c, NULL, t, 20, 8, NULL) == SL_ERR_ARG);
    CHECK(sl_perplexity(a.c, NULL, NULL, 20, 8, &q) == SL_ERR_ARG);
    CHECK(sl_perplexity(a.c, NULL, t, 20, 1, &q) == SL_ERR_ARG);
    CHECK(strstr(sl_errmsg(), "window 1 is too small") != NULL);
    CHECK(sl_perplexity(a.c, NULL, t, 1, 8, &q) == SL_ERR_ARG);
    CHECK(strstr(sl_errmsg(), "need at least 2") != NULL);
    CHECK(sl_perplexity(a.c, NULL, t, 20, 32, &q) == SL_ERR_ARG);
    CHECK(strstr(sl_errmsg(), "exceeds the context's n_ctx 16") != NULL);
    CHECK(sl_perplexity(a.c, a4.c, t, 20, 8, &q) == SL_ERR_ARG);
    CHECK(strstr(sl_errmsg(), "reference context's n_ctx 4") != NULL);
    CHECK(sl_perplexity(a.c, c.c, t, 20, 8, &q) == SL_ERR_ARG);
    CHECK(strstr(sl_errmsg(), "must agree") != NULL);
    /* an id out of range fails in sl_eval; both contexts end reset */
    t[11] = sl_model_n_vocab(a.m);
    struct mc a2;
    if (!open_mc(0, 16, &a2)) TEST_SKIP("model: %s", sl_errmsg());
    CHECK(sl_perplexity(a.c, a2.c, t, 20, 8, &q) == SL_ERR_RANGE);
    CHECK(strstr(sl_errmsg(), "window at token 8") != NULL);
    CHECK_EQ_INT(sl_context_n_past(a.c), 0);
    CHECK_EQ_INT(sl_context_n_past(a2.c), 0);
    close_mc(&a);
    close_mc(&a2);
    close_mc(&a4);
    close_mc(&c);
}

TEST_MAIN()
