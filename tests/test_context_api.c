/*
 * test_context_api.c — the context API on every attention kind: plain GQA
 * (a synthetic qwen3_moe), sliding window (mixtral fixture), MLA
 * (deepseek_v3 fixture) and the hybrid Gated DeltaNet model (qwen3_next
 * fixture):
 *   - whole-prompt eval = token-by-token eval = eval in chunks of 1, 4, 16
 *     (cosine >= 0.9999, same argmax, every position);
 *   - reset then eval = a fresh context, and five back-to-back evaluations
 *     after reset, bit-identical;
 *   - save -> reset -> load -> continue = the uninterrupted run,
 *     bit-identical (buffer and file), and fork (sl_context_copy);
 *   - a cached prefix, then the suffix at start_pos != 0 = the full prompt;
 *   - truncation, and removal of a middle range, then eval = a context that
 *     never saw the removed tokens (hybrid: with and without checkpoints);
 *   - every refusal: bad position, corrupt byte, truncated image, bad
 *     magic, other version, other model, too small n_ctx, small buffer.
 *
 * Fixtures are converted to a temporary file (tests/fixtures relative to
 * the working directory, or $SLUICE_FIXTURES_ROOT); a missing one fails.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sluice.h"
#include "synth.h"
#include "test.h"

enum { M_TINY, M_SWA, M_MLA, M_HYBRID, M_COUNT };
static const char *const model_names[M_COUNT] = {"tiny", "mixtral/swa",
                                                 "deepseek_v3/direct_q", "qwen3_next/base"};
static struct sl_model *models[M_COUNT];
static int models_tried[M_COUNT];

static const char *fx_root(void) {
    const char *r = getenv("SLUICE_FIXTURES_ROOT");
    return r && *r ? r : "tests/fixtures";
}

static void quiet(int level, const char *msg, void *user) {
    (void)level, (void)msg, (void)user;
}

/* Every model stays open to the end: several models live in one process. */
static void close_models(void) {
    for (int i = 0; i < M_COUNT; i++) sl_model_close(models[i]);
}

/* The model of kind i, written or converted once (NULL with a message). */
static struct sl_model *model(int i) {
    if (models_tried[i]) return models[i];
    static int registered;
    if (!registered++) atexit(close_models);
    models_tried[i] = 1;
    char dir[64] = "/tmp/sluice_ctxapi_XXXXXX";
    if (!mkdtemp(dir)) return NULL;
    char path[128];
    snprintf(path, sizeof path, "%s/m.sluice", dir);
    int st;
    sl_set_log(quiet, NULL, 2);
    if (i == M_TINY) {
        struct synth_params p;
        st = synth_preset("tiny", &p);
        if (!st) {
            p.n_threads = 2;
            st = synth_write(&p, path, NULL);
        }
    } else {
        char src[512];
        snprintf(src, sizeof src, "%s/%s", fx_root(), model_names[i]);
        struct sl_convert_params cp = sl_convert_default_params();
        st = sl_convert(src, path, &cp);
    }
    sl_set_log(NULL, NULL, 1);
    if (!st) {
        struct sl_model_params mp = sl_model_default_params();
        mp.n_threads = 2;
        st = sl_model_open(path, &mp, &models[i]);
    }
    if (st) fprintf(stderr, "    model %s: %s\n", model_names[i], sl_errmsg());
    unlink(path);
    rmdir(dir);
    return models[i];
}

static struct sl_context *make_ctx(struct sl_model *m, uint32_t n_ctx, uint32_t n_batch,
                                   uint32_t ckpt) {
    struct sl_context_params cp = sl_context_default_params();
    cp.n_ctx = n_ctx;
    cp.n_batch = n_batch;
    cp.n_threads = 2;
    cp.state_checkpoint_interval = ckpt;
    struct sl_context *ctx = NULL;
    if (sl_context_create(m, &cp, &ctx)) fprintf(stderr, "    context: %s\n", sl_errmsg());
    return ctx;
}

/* A deterministic prompt of n ids (salt varies it). */
static void prompt(struct sl_model *m, int32_t *ids, int n, int salt) {
    int32_t nv = sl_model_n_vocab(m);
    for (int i = 0; i < n; i++) ids[i] = (int32_t)(((uint32_t)i * 37u + 11u + (uint32_t)salt * 101u) % (uint32_t)nv);
}

static double cosine(const float *a, const float *b, size_t n) {
    double ab = 0, aa = 0, bb = 0;
    for (size_t i = 0; i < n; i++) {
        ab += (double)a[i] * b[i];
        aa += (double)a[i] * a[i];
        bb += (double)b[i] * b[i];
    }
    return aa > 0 && bb > 0 ? ab / sqrt(aa * bb) : 0.0;
}

static int32_t argmax(const float *x, size_t n) {
    size_t b = 0;
    for (size_t i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return (int32_t)b;
}

/* cosine >= 0.9999 and the same argmax */
static void check_close(const char *what, const char *model_name, const float *got,
                        const float *want, size_t nv) {
    double cs = cosine(got, want, nv);
    if (getenv("CTXAPI_VERBOSE")) fprintf(stderr, "    %s %s: 1-cos %.3g\n", model_name, what, 1 - cs);
    CHECK_MSG(cs >= 0.9999, "%s %s: cosine %.6f", model_name, what, cs);
    CHECK_MSG(argmax(got, nv) == argmax(want, nv), "%s %s: argmax %d vs %d", model_name,
              what, argmax(got, nv), argmax(want, nv));
}

/* Truncation is exact up to rounding: far tighter than check_close (a
 * recurrent state not rewound gives 1 - cosine ~ 1e-4 on the fixture). */
static void check_exact(const char *what, const char *model_name, const float *got,
                        const float *want, size_t nv) {
    check_close(what, model_name, got, want, nv);
    double cs = cosine(got, want, nv);
    CHECK_MSG(1 - cs <= 1e-9, "%s %s: 1 - cosine %.3g > 1e-9", model_name, what, 1 - cs);
}

#define NP 40 /* prompt tokens */

TEST(test_eval_whole_equals_tokenwise_and_chunks) {
    for (int i = 0; i < M_COUNT; i++) {
        struct sl_model *m = model(i);
        CHECK_MSG(m != NULL, "model %s", model_names[i]);
        if (!m) continue;
        size_t nv = (size_t)sl_model_n_vocab(m);
        int32_t ids[NP];
        prompt(m, ids, NP, 0);
        float *whole = malloc(NP * nv * sizeof(float)), *rows = malloc(NP * nv * sizeof(float));
        struct sl_context *ctx = make_ctx(m, 128, 64, 0);
        CHECK(ctx && sl_eval(ctx, ids, NP, whole) == SL_OK);
        sl_context_free(ctx);
        /* token by token */
        ctx = make_ctx(m, 128, 64, 0);
        for (int t = 0; t < NP && ctx; t++) {
            CHECK(sl_eval(ctx, ids + t, 1, NULL) == SL_OK);
            char what[32];
            snprintf(what, sizeof what, "token-by-token pos %d", t);
            check_close(what, model_names[i], sl_logits(ctx), whole + t * nv, nv);
        }
        sl_context_free(ctx);
        const uint32_t chunks[3] = {1, 4, 16};
        for (int c = 0; c < 3; c++) {
            ctx = make_ctx(m, 128, chunks[c], 0);
            CHECK(ctx && sl_eval(ctx, ids, NP, rows) == SL_OK);
            for (int t = 0; t < NP; t++) {
                char what[48];
                snprintf(what, sizeof what, "n_batch %u pos %d", chunks[c], t);
                check_close(what, model_names[i], rows + t * nv, whole + t * nv, nv);
            }
            sl_context_free(ctx);
        }
        free(whole);
        free(rows);
    }
}

TEST(test_reset_equals_fresh_and_repeats_bit_identical) {
    for (int i = 0; i < M_COUNT; i++) {
        struct sl_model *m = model(i);
        if (!m) continue;
        size_t nv = (size_t)sl_model_n_vocab(m);
        int32_t ids[NP], other[NP];
        prompt(m, ids, NP, 0);
        prompt(m, other, NP, 3);
        float *fresh = malloc(nv * sizeof(float));
        struct sl_context *ctx = make_ctx(m, 128, 16, 0);
        CHECK(sl_eval(ctx, ids, NP, NULL) == SL_OK);
        memcpy(fresh, sl_logits(ctx), nv * sizeof(float));
        sl_context_free(ctx);
        ctx = make_ctx(m, 128, 16, 0);
        CHECK(sl_eval(ctx, other, NP, NULL) == SL_OK); /* different history */
        for (int rep = 0; rep < 5; rep++) {
            sl_context_reset(ctx);
            CHECK(sl_logits(ctx) == NULL && sl_context_pos_max(ctx) == -1);
            CHECK(sl_eval(ctx, ids, NP, NULL) == SL_OK);
            CHECK_MSG(memcmp(sl_logits(ctx), fresh, nv * sizeof(float)) == 0,
                      "%s: evaluation %d after reset differs from a fresh context",
                      model_names[i], rep);
        }
        CHECK_EQ_INT(sl_context_pos_max(ctx), NP - 1);
        sl_context_free(ctx);
        free(fresh);
    }
}

/* Greedy-decodes n tokens from ctx's logits, storing each step's logits. */
static int decode(struct sl_context *ctx, size_t nv, int n, float *out) {
    for (int s = 0; s < n; s++) {
        const float *lg = sl_logits(ctx);
        if (!lg) return 1;
        memcpy(out + s * nv, lg, nv * sizeof(float));
        int32_t id = argmax(lg, nv);
        if (sl_eval(ctx, &id, 1, NULL)) return 1;
    }
    return 0;
}

#define ND 6
TEST(test_save_load_continue_bit_identical) {
    char dir[64] = "/tmp/sluice_state_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char path[128];
    snprintf(path, sizeof path, "%s/s.state", dir);
    for (int i = 0; i < M_COUNT; i++) {
        struct sl_model *m = model(i);
        if (!m) continue;
        size_t nv = (size_t)sl_model_n_vocab(m);
        int32_t ids[NP];
        prompt(m, ids, NP, 1);
        float *want = malloc(ND * nv * sizeof(float)), *got = malloc(ND * nv * sizeof(float));
        struct sl_context *a = make_ctx(m, 128, 16, 8);
        CHECK(sl_eval(a, ids, NP, NULL) == SL_OK && decode(a, nv, ND, want) == 0);
        sl_context_free(a);

        struct sl_context *b = make_ctx(m, 128, 16, 8);
        CHECK(sl_eval(b, ids, NP, NULL) == SL_OK);
        size_t size = 0, written = 0;
        CHECK(sl_state_size(b, &size) == SL_OK && size > 0);
        uint8_t *buf = malloc(size);
        CHECK(sl_state_save_buffer(b, buf, size, &written) == SL_OK && written == size);
        CHECK(sl_state_save(b, path) == SL_OK);
        /* fork into another context before the original goes on */
        struct sl_context *f = make_ctx(m, 64, 4, 8);
        CHECK(sl_context_copy(f, b) == SL_OK);
        sl_context_reset(b);
        CHECK(sl_state_load_buffer(b, buf, size) == SL_OK);
        CHECK_EQ_INT(sl_context_n_past(b), NP);
        uint32_t nt = 0;
        const int32_t *hist = sl_context_tokens(b, &nt);
        CHECK(nt == NP && memcmp(hist, ids, sizeof ids) == 0);
        CHECK(decode(b, nv, ND, got) == 0);
        CHECK_MSG(memcmp(got, want, ND * nv * sizeof(float)) == 0,
                  "%s: buffer load then decode differs", model_names[i]);
        sl_context_reset(b);
        CHECK(sl_state_load(b, path) == SL_OK);
        CHECK(decode(b, nv, ND, got) == 0);
        CHECK_MSG(memcmp(got, want, ND * nv * sizeof(float)) == 0,
                  "%s: file load then decode differs", model_names[i]);
        CHECK(decode(f, nv, ND, got) == 0);
        CHECK_MSG(memcmp(got, want, ND * nv * sizeof(float)) == 0,
                  "%s: forked context decodes differently", model_names[i]);
        sl_context_free(f);
        sl_context_free(b);
        free(buf);
        free(want);
        free(got);
    }
    unlink(path);
    rmdir(dir);
}

TEST(test_prefix_cache_then_suffix) {
    for (int i = 0; i < M_COUNT; i++) {
        struct sl_model *m = model(i);
        if (!m) continue;
        size_t nv = (size_t)sl_model_n_vocab(m);
        int32_t ids[NP];
        prompt(m, ids, NP, 2);
        float *full = malloc(nv * sizeof(float));
        struct sl_context *ctx = make_ctx(m, 128, 64, 0);
        CHECK(sl_eval(ctx, ids, NP, NULL) == SL_OK);
        memcpy(full, sl_logits(ctx), nv * sizeof(float));
        sl_context_reset(ctx);
        CHECK(sl_eval(ctx, ids, 23, NULL) == SL_OK);
        size_t size = 0;
        CHECK(sl_state_size(ctx, &size) == SL_OK);
        uint8_t *buf = malloc(size);
        CHECK(sl_state_save_buffer(ctx, buf, size, NULL) == SL_OK);
        sl_context_free(ctx);
        ctx = make_ctx(m, 128, 64, 0);
        CHECK(sl_state_load_buffer(ctx, buf, size) == SL_OK);
        CHECK(sl_eval(ctx, ids + 23, NP - 23, NULL) == SL_OK); /* start_pos 23 */
        check_close("prefix + suffix", model_names[i], sl_logits(ctx), full, nv);
        sl_context_free(ctx);
        free(buf);
        free(full);
    }
}

/* Truncation and removal against a context that never saw the junk. */
static void truncate_case(int i, uint32_t ckpt) {
    struct sl_model *m = model(i);
    if (!m) return;
    size_t nv = (size_t)sl_model_n_vocab(m);
    enum { NA = 30, NJ = 15, NB = 10 };
    int32_t a[NA], junk[NJ], b[NB], ab[NA + NB];
    prompt(m, a, NA, 4);
    prompt(m, junk, NJ, 5);
    prompt(m, b, NB, 6);
    memcpy(ab, a, sizeof a);
    memcpy(ab + NA, b, sizeof b);
    float *want = malloc(nv * sizeof(float));
    struct sl_context *ref = make_ctx(m, 128, 8, ckpt);
    CHECK(sl_eval(ref, ab, NA + NB, NULL) == SL_OK);
    memcpy(want, sl_logits(ref), nv * sizeof(float));
    sl_context_free(ref);
    char what[64];

    /* truncate [NA, end) then evaluate B */
    struct sl_context *ctx = make_ctx(m, 128, 8, ckpt);
    CHECK(sl_eval(ctx, a, NA, NULL) == SL_OK && sl_eval(ctx, junk, NJ, NULL) == SL_OK);
    int32_t one = junk[0];
    CHECK(sl_eval(ctx, &one, 1, NULL) == SL_OK); /* a decode step too */
    CHECK(sl_context_truncate(ctx, NA) == SL_OK);
    CHECK(sl_logits(ctx) == NULL);
    CHECK_EQ_INT(sl_context_pos_max(ctx), NA - 1);
    CHECK(sl_eval(ctx, b, NB, NULL) == SL_OK);
    snprintf(what, sizeof what, "truncate (checkpoint interval %u)", ckpt);
    check_exact(what, model_names[i], sl_logits(ctx), want, nv);

    /* remove the middle range [NA, NA + NJ) of A + junk + B */
    sl_context_reset(ctx);
    CHECK(sl_eval(ctx, a, NA, NULL) == SL_OK && sl_eval(ctx, junk, NJ, NULL) == SL_OK &&
          sl_eval(ctx, b, NB, NULL) == SL_OK);
    CHECK(sl_context_remove(ctx, NA, NA + NJ) == SL_OK);
    CHECK_EQ_INT(sl_context_n_past(ctx), NA + NB);
    uint32_t nt;
    const int32_t *hist = sl_context_tokens(ctx, &nt);
    CHECK(nt == NA + NB && memcmp(hist, ab, sizeof ab) == 0);
    snprintf(what, sizeof what, "remove middle (checkpoint interval %u)", ckpt);
    CHECK(sl_logits(ctx) != NULL);
    if (sl_logits(ctx)) check_exact(what, model_names[i], sl_logits(ctx), want, nv);

    /* truncate to 0 = reset */
    CHECK(sl_context_truncate(ctx, 0) == SL_OK && sl_context_n_past(ctx) == 0);
    CHECK(sl_eval(ctx, ab, NA + NB, NULL) == SL_OK);
    check_exact("truncate to 0", model_names[i], sl_logits(ctx), want, nv);
    sl_context_free(ctx);
    free(want);
}

TEST(test_truncate_and_remove_every_architecture) {
    for (int i = 0; i < M_COUNT; i++) truncate_case(i, 0);
    truncate_case(M_HYBRID, 8);          /* several checkpoints */
    truncate_case(M_HYBRID, UINT32_MAX); /* none: recompute from 0 */
}

TEST(test_refusals) {
    struct sl_model *m = model(M_TINY), *h = model(M_HYBRID);
    if (!m || !h) TEST_SKIP("models missing");
    int32_t ids[NP];
    prompt(m, ids, NP, 0);
    struct sl_context *ctx = make_ctx(m, 128, 16, 0);
    CHECK(sl_eval(ctx, ids, NP, NULL) == SL_OK);
    CHECK(sl_context_truncate(ctx, NP + 1) == SL_ERR_RANGE);
    CHECK(strstr(sl_errmsg(), "n_past 40") != NULL);
    CHECK(sl_context_remove(ctx, 10, 5) == SL_ERR_RANGE);
    CHECK_EQ_INT(sl_context_n_past(ctx), NP);
    size_t size = 0;
    CHECK(sl_state_size(ctx, &size) == SL_OK);
    uint8_t *buf = malloc(size), *bad = malloc(size);
    CHECK(sl_state_save_buffer(ctx, buf, size - 1, NULL) == SL_ERR_RANGE);
    CHECK(sl_state_save_buffer(ctx, buf, size, NULL) == SL_OK);
    struct sl_context *dst = make_ctx(m, 128, 16, 0);
    int32_t t3[3] = {1, 2, 3};
    CHECK(sl_eval(dst, t3, 3, NULL) == SL_OK);

    /* corrupt payload byte: checksum */
    memcpy(bad, buf, size);
    bad[size / 2] ^= 0x40;
    CHECK(sl_state_load_buffer(dst, bad, size) == SL_ERR_FORMAT);
    CHECK_MSG(strstr(sl_errmsg(), "corrupt") != NULL, "%s", sl_errmsg());
    CHECK_EQ_INT(sl_context_n_past(dst), 3); /* unchanged */
    /* truncated */
    CHECK(sl_state_load_buffer(dst, buf, size - 100) == SL_ERR_FORMAT);
    CHECK_MSG(strstr(sl_errmsg(), "truncated") != NULL, "%s", sl_errmsg());
    CHECK(sl_state_load_buffer(dst, buf, 20) == SL_ERR_FORMAT);
    CHECK_MSG(strstr(sl_errmsg(), "truncated") != NULL, "%s", sl_errmsg());
    /* trailing bytes */
    uint8_t *longer = calloc(1, size + 4);
    memcpy(longer, buf, size);
    CHECK(sl_state_load_buffer(dst, longer, size + 4) == SL_ERR_FORMAT);
    CHECK_MSG(strstr(sl_errmsg(), "trailing") != NULL, "%s", sl_errmsg());
    free(longer);
    /* bad magic */
    memcpy(bad, buf, size);
    bad[0] = 'X';
    CHECK(sl_state_load_buffer(dst, bad, size) == SL_ERR_FORMAT);
    CHECK_MSG(strstr(sl_errmsg(), "magic") != NULL, "%s", sl_errmsg());
    /* another format version */
    memcpy(bad, buf, size);
    bad[8] = 99;
    CHECK(sl_state_load_buffer(dst, bad, size) == SL_ERR_FORMAT);
    CHECK_MSG(strstr(sl_errmsg(), "version 99") != NULL, "%s", sl_errmsg());
    /* another model */
    struct sl_context *hc = make_ctx(h, 128, 16, 0);
    CHECK(sl_state_load_buffer(hc, buf, size) == SL_ERR_ARG);
    CHECK_MSG(strstr(sl_errmsg(), "another model") != NULL, "%s", sl_errmsg());
    CHECK(sl_context_copy(hc, ctx) == SL_ERR_ARG);
    CHECK(sl_model_identity(m) != sl_model_identity(h) && sl_model_identity(m) != 0);
    /* too small a context */
    struct sl_context *small = make_ctx(m, 32, 16, 0);
    CHECK(sl_state_load_buffer(small, buf, size) == SL_ERR_RANGE);
    CHECK_MSG(strstr(sl_errmsg(), "raise n_ctx") != NULL, "%s", sl_errmsg());
    /* a missing file, and a file that is not a state */
    CHECK(sl_state_load(dst, "/nonexistent/s.state") == SL_ERR_IO);
    char dir[64] = "/tmp/sluice_state_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char path[128];
    snprintf(path, sizeof path, "%s/bad.state", dir);
    FILE *fp = fopen(path, "wb");
    fwrite(bad, 1, size / 2, fp);
    fclose(fp);
    CHECK(sl_state_load(dst, path) == SL_ERR_FORMAT);
    CHECK_MSG(strstr(sl_errmsg(), path) != NULL, "%s", sl_errmsg());
    CHECK(sl_state_save(ctx, "/nonexistent/dir/s.state") == SL_ERR_IO);
    unlink(path);
    rmdir(dir);
    CHECK_EQ_INT(sl_context_n_past(dst), 3);
    sl_context_free(small);
    sl_context_free(hc);
    sl_context_free(dst);
    sl_context_free(ctx);
    free(buf);
    free(bad);
}


/* Several sequences decoded together give each one's tokens alone. */
#define NS 3
TEST(test_batched_decode_equals_alone) {
    const int plen[NS] = {10, 17, 5};
    for (int i = 0; i < M_COUNT; i++) {
        struct sl_model *m = model(i);
        if (!m) continue;
        size_t nv = (size_t)sl_model_n_vocab(m);
        int32_t ps[NS][17], want_tok[NS][ND];
        float *want = malloc(NS * ND * nv * sizeof(float));
        for (int q = 0; q < NS; q++) {
            prompt(m, ps[q], plen[q], 10 + q);
            struct sl_context *ctx = make_ctx(m, 64, 64, 4);
            CHECK(sl_eval(ctx, ps[q], (size_t)plen[q], NULL) == SL_OK);
            for (int s = 0; s < ND; s++) {
                memcpy(want + (q * ND + s) * nv, sl_logits(ctx), nv * sizeof(float));
                want_tok[q][s] = argmax(sl_logits(ctx), nv);
                CHECK(sl_eval(ctx, &want_tok[q][s], 1, NULL) == SL_OK);
            }
            sl_context_free(ctx);
        }
        struct sl_context_params cp = sl_context_default_params();
        cp.n_ctx = 64;
        cp.n_batch = 64;
        cp.n_threads = 2;
        cp.n_seq_max = NS;
        cp.state_checkpoint_interval = 4;
        struct sl_context *ctx = NULL;
        CHECK(sl_context_create(m, &cp, &ctx) == SL_OK);
        if (!ctx) continue;
        /* the prompts in one mixed batch, sequences interleaved */
        int32_t toks[64], seqs[64];
        int n = 0;
        for (int t = 0; t < 17; t++)
            for (int q = NS - 1; q >= 0; q--)
                if (t < plen[q]) {
                    toks[n] = ps[q][t];
                    seqs[n++] = q;
                }
        float *rows = malloc((size_t)n * nv * sizeof(float));
        struct sl_batch b = {(size_t)n, toks, seqs, rows};
        CHECK(sl_decode_batch(ctx, &b) == SL_OK);
        float *last[NS];
        for (int j = 0; j < n; j++) last[seqs[j]] = rows + (size_t)j * nv;
        int32_t cur[NS];
        float *step = malloc(NS * nv * sizeof(float));
        for (int q = 0; q < NS; q++) {
            CHECK_EQ_INT(sl_seq_pos_max(ctx, q), plen[q] - 1);
            memcpy(step + q * nv, last[q], nv * sizeof(float));
        }
        CHECK(sl_logits(ctx) && memcmp(sl_logits(ctx), step, nv * sizeof(float)) == 0);
        for (int s = 0; s < ND; s++) {
            char what[48];
            for (int q = 0; q < NS; q++) {
                snprintf(what, sizeof what, "batched seq %d step %d", q, s);
                check_close(what, model_names[i], step + q * nv, want + (q * ND + s) * nv, nv);
                cur[q] = argmax(step + q * nv, nv);
                CHECK_MSG(cur[q] == want_tok[q][s], "%s seq %d step %d: token %d, alone %d",
                          model_names[i], q, s, cur[q], want_tok[q][s]);
            }
            int32_t bt[NS] = {cur[2], cur[0], cur[1]}, bs[NS] = {2, 0, 1};
            float *out = malloc(NS * nv * sizeof(float));
            struct sl_batch d = {NS, bt, bs, out};
            struct sl_stats st0, st1;
            sl_context_stats(ctx, &st0);
            CHECK(sl_decode_batch(ctx, &d) == SL_OK);
            sl_context_stats(ctx, &st1);
            /* tiny: 2 MoE layers of 4 experts top-2: alone, 3 sequences
             * load 3 * 2 * 2 = 12 (layer, expert) records; together each
             * distinct expert of a layer once, so at most 2 * 4 = 8 */
            if (i == M_TINY)
                CHECK_MSG(st1.expert_loads - st0.expert_loads <= 8,
                          "batched step loaded %llu expert records",
                          (unsigned long long)(st1.expert_loads - st0.expert_loads));
            for (int j = 0; j < NS; j++) memcpy(step + bs[j] * nv, out + j * nv, nv * sizeof(float));
            free(out);
        }
        for (int q = 0; q < NS; q++) CHECK_EQ_INT(sl_seq_pos_max(ctx, q), plen[q] + ND - 1);

        /* fork sequence 0 into 1, truncate 2 back to its prompt: then one
         * batch gives 0 and 1 the same row, 2 its first decode step again */
        CHECK(sl_seq_copy(ctx, 0, 1) == SL_OK);
        CHECK_EQ_INT(sl_seq_pos_max(ctx, 1), plen[0] + ND - 1);
        CHECK(sl_seq_truncate(ctx, 2, (uint32_t)plen[2]) == SL_OK);
        CHECK_EQ_INT(sl_seq_pos_max(ctx, 2), plen[2] - 1);
        int32_t ft[NS] = {5, 5, want_tok[2][0]}, fs[NS] = {0, 1, 2};
        float *out = malloc(NS * nv * sizeof(float));
        struct sl_batch f = {NS, ft, fs, out};
        CHECK(sl_decode_batch(ctx, &f) == SL_OK);
        check_close("forked sequences", model_names[i], out + nv, out, nv);
        check_close("truncated sequence", model_names[i], out + 2 * nv, want + (2 * ND + 1) * nv,
                    nv);
        /* clear one sequence; the others keep their positions */
        CHECK(sl_seq_clear(ctx, 1) == SL_OK);
        CHECK_EQ_INT(sl_seq_pos_max(ctx, 1), -1);
        CHECK_EQ_INT(sl_seq_pos_max(ctx, 0), plen[0] + ND);
        /* refusals */
        int32_t bad_seq = NS, one = 1;
        struct sl_batch e = {1, &one, &bad_seq, NULL};
        CHECK(sl_decode_batch(ctx, &e) == SL_ERR_RANGE);
        CHECK_MSG(strstr(sl_errmsg(), "sequence 3 is out of range") != NULL, "%s", sl_errmsg());
        CHECK(sl_seq_clear(ctx, -1) == SL_ERR_RANGE);
        CHECK(sl_seq_copy(ctx, 0, NS) == SL_ERR_RANGE);
        CHECK_EQ_INT(sl_seq_pos_max(ctx, NS), -1);
        struct sl_batch z = {0, &one, &bad_seq, NULL};
        CHECK(sl_decode_batch(ctx, &z) == SL_ERR_ARG);
        int32_t many[65] = {0}, s0[65] = {0};
        struct sl_batch big = {65, many, s0, NULL};
        CHECK(sl_decode_batch(ctx, &big) == SL_ERR_RANGE);
        /* a full sequence is refused, the context unchanged */
        struct sl_batch full = {64, many, s0, NULL};
        CHECK(sl_decode_batch(ctx, &full) == SL_ERR_RANGE);
        CHECK_MSG(strstr(sl_errmsg(), "sequence 0 is full") != NULL, "%s", sl_errmsg());
        CHECK_EQ_INT(sl_seq_pos_max(ctx, 0), plen[0] + ND);
        free(out);
        free(step);
        free(rows);
        free(want);
        sl_context_free(ctx);
    }
}

TEST(test_single_sequence_context_refuses_other_ids) {
    struct sl_model *m = model(M_TINY);
    if (!m) TEST_SKIP("model missing");
    struct sl_context *ctx = make_ctx(m, 64, 16, 0);
    int32_t one = 1, seq = 1;
    struct sl_batch b = {1, &one, &seq, NULL};
    CHECK(sl_decode_batch(ctx, &b) == SL_ERR_RANGE);
    seq = 0;
    CHECK(sl_decode_batch(ctx, &b) == SL_OK); /* sequence 0 = sl_eval's */
    CHECK_EQ_INT(sl_context_n_past(ctx), 1);
    CHECK(sl_logits(ctx) == NULL); /* no logits asked for */
    struct sl_context_params cp = sl_context_default_params();
    cp.n_seq_max = 100000;
    struct sl_context *big = NULL;
    CHECK(sl_context_create(m, &cp, &big) == SL_ERR_ARG && big == NULL);
    sl_context_free(ctx);
}

TEST_MAIN()
