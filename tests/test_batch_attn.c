/*
 * test_batch_attn.c — a mixed sl_decode_batch shares the attention
 * projections across its sequences (forward.c attention_runs) and each
 * sequence still gets exactly what it gets alone.
 *
 * Models: the committed HF fixtures converted here — qwen3_moe attn_bias
 * (q/k/v/o biases + per-head q/k norm; also with q8 dense and q4 experts,
 * the int8-activation path), olmoe gqa_norm (whole-projection q/k norm),
 * gpt_oss base (sliding window, sinks, biases, YaRN), qwen3_next base
 * (gated attention between Gated DeltaNet layers, which stay per sequence)
 * and deepseek_v3 direct_q (MLA, per sequence). Skipped per model when its
 * fixture is missing (run from the repository root).
 *
 * Checked: (1) bit identity (memcmp) of every logits row of a sequence in
 * mixed batches — sequences in a changing order, runs of 1-3 tokens at
 * different positions — against the same token groups evaluated alone with
 * sl_eval; (2) the sharing itself: a batch of 4 sequences applies each
 * attention projection (q, k, v, o) once per attention layer, like a single
 * sequence's step (ctx->n_attn_proj), not once per sequence; (3) the
 * mixed batch's K/V rows land in each sequence's own cache (the next steps
 * read them: covered by (1) over several steps).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "context.h"
#include "sluice.h"
#include "test.h"

struct fx {
    const char *dir;
    int expert_dtype, dense_dtype;
    int shares; /* attention layers share projections (not MLA) */
};

static const struct fx FX[] = {
    {"tests/fixtures/qwen3_moe/attn_bias", SL_DTYPE_BF16, SL_DTYPE_BF16, 1},
    {"tests/fixtures/qwen3_moe/attn_bias", SL_DTYPE_Q4, SL_DTYPE_Q8, 1},
    {"tests/fixtures/olmoe/gqa_norm", SL_DTYPE_BF16, SL_DTYPE_BF16, 1},
    {"tests/fixtures/gpt_oss/base", SL_DTYPE_BF16, SL_DTYPE_BF16, 1},
    {"tests/fixtures/qwen3_next/base", SL_DTYPE_BF16, SL_DTYPE_BF16, 1},
    {"tests/fixtures/deepseek_v3/direct_q", SL_DTYPE_BF16, SL_DTYPE_BF16, 0},
};
#define N_FX (sizeof FX / sizeof *FX)

/* Converts fx into dir/model.sluice and opens it; NULL (after a message)
 * when the fixture is missing or conversion fails. */
static struct sl_model *open_fx(const struct fx *f, const char *dir) {
    char cfg[256], path[256];
    snprintf(cfg, sizeof cfg, "%s/config.json", f->dir);
    if (access(cfg, R_OK)) {
        printf("    (fixture %s missing: skipped)\n", f->dir);
        return NULL;
    }
    snprintf(path, sizeof path, "%s/model.sluice", dir);
    struct sl_convert_params cp = sl_convert_default_params();
    cp.expert_dtype = f->expert_dtype;
    cp.dense_dtype = f->dense_dtype;
    cp.progress = 0;
    sl_set_log(NULL, NULL, 0);
    int st = sl_convert(f->dir, path, &cp);
    sl_set_log(NULL, NULL, 1);
    CHECK_MSG(st == SL_OK, "convert %s: %s", f->dir, sl_errmsg());
    struct sl_model_params mp = sl_model_default_params();
    mp.n_threads = 2;
    struct sl_model *m = NULL;
    if (!st) CHECK_MSG(sl_model_open(path, &mp, &m) == SL_OK, "open %s: %s", path, sl_errmsg());
    unlink(path);
    return m;
}

enum { NS = 4, ND = 5, MAXG = 3, PLEN = 6 };

/* Tokens sequence q adds at step d (1..MAXG): a mix of decode and short
 * prefill runs. */
static int group_len(int q, int d) { return 1 + (q * 3 + d * 5) % MAXG; }

static int32_t tok_of(int q, int k, size_t nv) { return (int32_t)((31 + 97 * q + 13 * k) % nv); }

static void check_model(struct sl_model *m, const struct fx *f) {
    const struct sl_config *c = &m->cfg;
    size_t nv = (size_t)sl_model_n_vocab(m);
    struct sl_context_params cp = sl_context_default_params();
    cp.n_ctx = 64;
    cp.n_batch = 32;
    cp.n_threads = 2;
    cp.n_seq_max = NS;
    struct sl_context *mix = NULL;
    CHECK(sl_context_create(m, &cp, &mix) == SL_OK);
    if (!mix) return;
    uint32_t n_attn = 0;
    for (uint32_t l = 0; l < c->n_layers; l++) n_attn += !c->layer_linear[l];

    /* every token of every sequence, in its order; rows[q][k] = its logits */
    int32_t seq_toks[NS][PLEN + ND * MAXG];
    int seq_len[NS];
    float *got = malloc((size_t)NS * (PLEN + ND * MAXG) * nv * sizeof(float));
    float *rows = malloc((size_t)NS * PLEN * nv * sizeof(float));
    int32_t bt[NS * PLEN], bs[NS * PLEN]; /* PLEN >= MAXG */
    int bk[NS * PLEN]; /* position of batch token j in its sequence */

    for (int q = 0; q < NS; q++) seq_len[q] = 0;
    /* step 0: every prompt in one batch, tokens interleaved */
    for (int d = 0; d <= ND; d++) {
        int n = 0;
        if (d == 0) {
            for (int k = 0; k < PLEN; k++)
                for (int q = NS - 1; q >= 0; q--) {
                    bt[n] = tok_of(q, k, nv);
                    bs[n] = q;
                    bk[n++] = k;
                }
        } else {
            for (int j = 0; j < NS; j++) { /* a different sequence order every step */
                int q = (j + d) % NS, g = group_len(q, d);
                for (int i = 0; i < g; i++) {
                    /* the next token: the previous row's argmax for the
                     * first, arbitrary ids for a multi-token run */
                    int32_t t = tok_of(q, seq_len[q] + i + 100, nv);
                    if (i == 0) {
                        const float *r = got + ((size_t)q * (PLEN + ND * MAXG) +
                                                (size_t)seq_len[q] - 1) * nv;
                        t = 0;
                        for (size_t v = 1; v < nv; v++)
                            if (r[v] > r[t]) t = (int32_t)v;
                    }
                    bt[n] = t;
                    bs[n] = q;
                    bk[n++] = seq_len[q] + i;
                }
            }
        }
        struct sl_batch b = {(size_t)n, bt, bs, rows};
        uint64_t p0 = mix->n_attn_proj;
        CHECK_MSG(sl_decode_batch(mix, &b) == SL_OK, "%s step %d: %s", f->dir, d, sl_errmsg());
        if (f->shares)
            CHECK_MSG(mix->n_attn_proj - p0 == 4ull * n_attn,
                      "%s step %d: %llu attention projection passes for %d sequences, "
                      "want %u (4 per attention layer, shared)",
                      f->dir, d, (unsigned long long)(mix->n_attn_proj - p0), NS, 4 * n_attn);
        for (int j = 0; j < n; j++) {
            int q = bs[j];
            seq_toks[q][bk[j]] = bt[j];
            memcpy(got + ((size_t)q * (PLEN + ND * MAXG) + (size_t)bk[j]) * nv,
                   rows + (size_t)j * nv, nv * sizeof(float));
        }
        for (int j = 0; j < n; j++)
            if (bk[j] + 1 > seq_len[bs[j]]) seq_len[bs[j]] = bk[j] + 1;
    }
    for (int q = 0; q < NS; q++) CHECK_EQ_INT(sl_seq_pos_max(mix, q), seq_len[q] - 1);

    /* alone: the same token groups, one sl_eval each, in a fresh context */
    cp.n_seq_max = 1;
    float *alone = malloc((size_t)MAXG * nv * sizeof(float));
    for (int q = 0; q < NS; q++) {
        struct sl_context *one = NULL;
        CHECK(sl_context_create(m, &cp, &one) == SL_OK);
        if (!one) continue;
        uint64_t p0 = one->n_attn_proj;
        CHECK(sl_eval(one, seq_toks[q], PLEN, NULL) == SL_OK);
        if (f->shares) CHECK_EQ_INT((int)(one->n_attn_proj - p0), (int)(4 * n_attn));
        int at = PLEN;
        const float *want_last = sl_logits(one);
        CHECK_MSG(want_last && memcmp(want_last, got + ((size_t)q * (PLEN + ND * MAXG) +
                                                        PLEN - 1) * nv,
                                      nv * sizeof(float)) == 0,
                  "%s: sequence %d prompt: mixed-batch logits differ from alone", f->dir, q);
        for (int d = 1; d <= ND; d++) {
            int g = group_len(q, d);
            CHECK(sl_eval(one, seq_toks[q] + at, (size_t)g, alone) == SL_OK);
            for (int i = 0; i < g; i++)
                CHECK_MSG(memcmp(alone + (size_t)i * nv,
                                 got + ((size_t)q * (PLEN + ND * MAXG) + (size_t)(at + i)) * nv,
                                 nv * sizeof(float)) == 0,
                          "%s: sequence %d step %d row %d: mixed-batch logits differ from "
                          "alone", f->dir, q, d, i);
            at += g;
        }
        CHECK_EQ_INT(at, seq_len[q]);
        sl_context_free(one);
    }
    free(alone);
    free(rows);
    free(got);
    sl_context_free(mix);
}

TEST(mixed_batch_shares_projections_bit_identical) {
    char dir[] = "/tmp/sluice_battn_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    int done = 0;
    for (size_t i = 0; i < N_FX; i++) {
        struct sl_model *m = open_fx(&FX[i], dir);
        if (!m) continue;
        check_model(m, &FX[i]);
        sl_model_close(m);
        done++;
    }
    rmdir(dir);
    if (!done) TEST_SKIP("no fixture found (run from the repository root)");
}

/* One sequence in an n_seq_max > 1 context, and a single-sequence context
 * (no batch scratch: the per-run path): both the same as sl_eval. */
TEST(single_run_batches) {
    char dir[] = "/tmp/sluice_battn_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    struct sl_model *m = open_fx(&FX[0], dir);
    rmdir(dir);
    if (!m) TEST_SKIP("fixture %s missing", FX[0].dir);
    size_t nv = (size_t)sl_model_n_vocab(m);
    int32_t toks[8], sid[8];
    for (int k = 0; k < 8; k++) {
        toks[k] = tok_of(2, k, nv);
        sid[k] = 1;
    }
    struct sl_context_params cp = sl_context_default_params();
    cp.n_ctx = 32;
    cp.n_batch = 8;
    cp.n_threads = 2;
    struct sl_context *ref = NULL, *solo = NULL, *multi = NULL;
    CHECK(sl_context_create(m, &cp, &ref) == SL_OK);
    CHECK(sl_context_create(m, &cp, &solo) == SL_OK);
    cp.n_seq_max = 3;
    CHECK(sl_context_create(m, &cp, &multi) == SL_OK);
    if (ref && solo && multi) {
        CHECK(solo->bt_k == NULL && multi->bt_k != NULL);
        float *a = malloc(8 * nv * sizeof(float)), *b = malloc(8 * nv * sizeof(float));
        float *r = malloc(8 * nv * sizeof(float));
        CHECK(sl_eval(ref, toks, 8, r) == SL_OK);
        memset(sid, 0, sizeof sid);
        struct sl_batch bs = {8, toks, sid, a};
        CHECK(sl_decode_batch(solo, &bs) == SL_OK);
        for (int k = 0; k < 8; k++) sid[k] = 2;
        struct sl_batch bm = {8, toks, sid, b};
        CHECK(sl_decode_batch(multi, &bm) == SL_OK);
        CHECK(memcmp(a, r, 8 * nv * sizeof(float)) == 0);
        CHECK(memcmp(b, r, 8 * nv * sizeof(float)) == 0);
        CHECK_EQ_INT((int)sl_seq_pos_max(multi, 2), 7);
        CHECK_EQ_INT((int)sl_seq_pos_max(multi, 0), -1);
        free(a);
        free(b);
        free(r);
    }
    sl_context_free(ref);
    sl_context_free(solo);
    sl_context_free(multi);
    sl_model_close(m);
}

TEST_MAIN()
