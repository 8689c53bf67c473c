/*
 * test_golden_deepseek.c — deepseek_v3 (MLA, noaux_tc router, dense first
 * layers, shared experts, FP8 checkpoints) against HF transformers.
 *
 * Golden: every fixture under tests/fixtures/deepseek_v3/ (written by
 * tests/gen/gen_deepseek_v3.py: qlora_yarn, direct_q, groups, and
 * qlora_yarn_fp8, the FP8 block-scaled twin of qlora_yarn whose reference
 * comes from its dequantized weights) is converted with sl_convert and run
 * on its 40-token prompt (all logits), token by token, and as a 16-token
 * greedy decode:
 *   bf16 experts + bf16 dense: cosine >= 0.9999 at every position, prefill
 *       and token by token, greedy tokens identical; the same again with the
 *       naive MLA form (SLUICE_MLA=naive) instead of the absorbed one;
 *   q8 + q8: mean cosine >= 0.999;   q4 experts + bf16 dense: >= 0.99.
 * The FP8 twin is held to the bf16 bars only (its purpose is the
 * dequantization): at q8 / q4 its weights are rounded twice (the FP8 grid,
 * then sluice's), and the tiny model's router flips at a position or two
 * (measured: q8 mean 0.99126, q4 0.99325; its bf16 twin qlora_yarn: q8
 * 0.99981, q4 0.99461).
 * Also: the attention scale sluice derives equals transformers' (meta.json);
 * an MLA context holds the latent cache and no K/V cache; FP8 weights are
 * dequantized exactly (fp8 * scale_inv per block, compared with a decode
 * done here through safetensors.c); converter rejections for FP8 misuse.
 *
 * The fixtures are committed: a missing directory is a failure. Root:
 * tests/fixtures relative to the working directory, or $SLUICE_FIXTURES_ROOT.
 */
#include <cJSON.h>
#include <dirent.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "context.h"
#include "layer_mla.h"
#include "model.h"
#include "quant.h"
#include "safetensors.h"
#include "sluice.h"
#include "golden.h"
#include "test.h"
#include "util.h"

#define N_PROMPT 40
#define N_GEN 16
#define FX_MAX 16

struct fixture {
    char dir[512];
    size_t n_vocab;
    int32_t prompt[N_PROMPT], gen[N_GEN];
    float *logits; /* (N_PROMPT, n_vocab) */
    double attention_scaling;
};

static int fixture_load(const char *name, struct fixture *fx) {
    memset(fx, 0, sizeof *fx);
    snprintf(fx->dir, sizeof fx->dir, "%s/deepseek_v3/%s", golden_fx_root(), name);
    char p[600];
    size_t len;
    snprintf(p, sizeof p, "%s/meta.json", fx->dir);
    char *txt = golden_read_all(p, &len);
    cJSON *j = txt ? cJSON_Parse(txt) : NULL;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "attention_scaling");
    fx->attention_scaling = cJSON_IsNumber(v) ? v->valuedouble : -1;
    cJSON_Delete(j);
    free(txt);
    return golden_fixture_read(fx->dir, 0, N_PROMPT, N_GEN, &fx->n_vocab, fx->prompt, fx->gen,
                               &fx->logits);
}

static struct sl_model *convert_open(const char *dir, int ed, int dd) {
    return golden_convert_open(dir, ed, dd, "/tmp/sluice_gd_XXXXXX", NULL);
}

struct stats { double min_cos, mean_cos, step_min; int greedy; };

/* Prefill (all logits), greedy decode, then token by token. */
static struct stats run_fixture(struct sl_model *m, const struct fixture *fx) {
    struct stats s = {-1, -1, -1, 0};
    size_t V = fx->n_vocab;
    struct sl_context *ctx = NULL;
    struct sl_context_params cp = sl_context_default_params();
    cp.n_batch = 16; /* prompt in chunks of 16, 16, 8 */
    if (sl_context_create(m, &cp, &ctx)) return s;
    CHECK(ctx->mla != NULL && ctx->mla_cache != NULL && !ctx->k_cache && !ctx->v_cache);
    float *all = malloc(N_PROMPT * V * sizeof(float));
    int st = sl_eval(ctx, fx->prompt, N_PROMPT, all);
    CHECK_MSG(st == SL_OK, "%s: sl_eval: %s", fx->dir, sl_errmsg());
    if (!st) {
        golden_cos_stats(all, fx->logits, N_PROMPT, V, &s.min_cos, &s.mean_cos);
        s.greedy = golden_greedy_prefix(ctx, sl_logits(ctx), fx->gen, N_GEN, V);
        /* token by token: the decode path on the latent cache */
        s.step_min = golden_step_min(ctx, fx->prompt, N_PROMPT, fx->logits, V);
    }
    free(all);
    sl_context_free(ctx);
    return s;
}

static int list_fixtures(char names[FX_MAX][64]) {
    char d[512];
    snprintf(d, sizeof d, "%s/deepseek_v3", golden_fx_root());
    return golden_list_fixtures(d, names, FX_MAX);
}

static void golden(int ed, int dd, double min_mean, int strict, const char *form) {
    char names[FX_MAX][64];
    int n = list_fixtures(names);
    CHECK_MSG(n >= 4, "%s/deepseek_v3: want >= 4 fixtures, found %d", golden_fx_root(), n);
    if (form) setenv("SLUICE_MLA", form, 1);
    for (int k = 0; k < n; k++) {
        struct fixture fx;
        size_t nl = strlen(names[k]);
        if (!strict && nl > 4 && strcmp(names[k] + nl - 4, "_fp8") == 0) {
            /* see the file comment: the FP8 twin is held to the bf16 bars */
            printf("  %-16s not run at %s (FP8 values re-quantized)\n", names[k],
                   sl_dtype_name(ed));
            continue;
        }
        if (!fixture_load(names[k], &fx)) {
            CHECK_MSG(0, "fixture %s", names[k]);
            continue;
        }
        struct sl_model *m = convert_open(fx.dir, ed, dd);
        CHECK_MSG(m != NULL, "%s: convert/open", fx.dir);
        if (m) {
            struct stats s = run_fixture(m, &fx);
            printf("  %-16s experts %-4s dense %-4s %-6s: cos min %.7f mean %.7f, stepwise "
                   "min %.7f, greedy prefix %d/%d\n", names[k], sl_dtype_name(ed),
                   sl_dtype_name(dd), form ? form : "absorbed", s.min_cos, s.mean_cos,
                   s.step_min, s.greedy, N_GEN);
            CHECK_MSG(s.mean_cos >= min_mean, "%s: mean cosine %.7f < %g", fx.dir, s.mean_cos,
                      min_mean);
            if (strict) {
                CHECK_MSG(s.min_cos >= 0.9999, "%s: min cosine %.7f", fx.dir, s.min_cos);
                CHECK_MSG(s.step_min >= 0.9999, "%s: stepwise min cosine %.7f", fx.dir, s.step_min);
                CHECK_MSG(s.greedy == N_GEN, "%s: greedy differs from index %d", fx.dir, s.greedy);
                /* the attention scale (YaRN mscale_all_dim) as transformers' */
                double sc = mla_attn_scale(&m->cfg);
                CHECK_MSG(fabs(sc - fx.attention_scaling) <= 1e-7 * fx.attention_scaling,
                          "%s: scale %.9g, transformers %.9g", fx.dir, sc, fx.attention_scaling);
            }
            sl_model_close(m);
        }
        free(fx.logits);
    }
    if (form) unsetenv("SLUICE_MLA");
}

TEST(golden_deepseek_bf16) { golden(SL_DTYPE_BF16, SL_DTYPE_BF16, 0.9999, 1, NULL); }
TEST(golden_deepseek_bf16_naive) { golden(SL_DTYPE_BF16, SL_DTYPE_BF16, 0.9999, 1, "naive"); }
TEST(golden_deepseek_q8) { golden(SL_DTYPE_Q8, SL_DTYPE_Q8, 0.999, 0, NULL); }
TEST(golden_deepseek_q4) { golden(SL_DTYPE_Q4, SL_DTYPE_BF16, 0.99, 0, NULL); }

/* The converter's FP8 dequantization is exact: q_a_proj of layer 0 stored
 * as f32 equals fp8 * scale_inv per [br, bc] block decoded here. */
TEST(fp8_dequantized_exactly) {
    char dir[512], p[600];
    snprintf(dir, sizeof dir, "%s/deepseek_v3/qlora_yarn_fp8", golden_fx_root());
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    struct st_set *st = NULL;
    CHECK_MSG(st_open_file(p, &st) == SL_OK, "%s", sl_errmsg());
    struct sl_model *m = convert_open(dir, SL_DTYPE_BF16, SL_DTYPE_F32);
    CHECK(m != NULL);
    if (!st || !m) {
        st_close(st);
        sl_model_close(m);
        return;
    }
    const struct st_tensor *w = st_find(st, "model.layers.0.self_attn.q_a_proj.weight");
    const struct st_tensor *s = st_find(st, "model.layers.0.self_attn.q_a_proj.weight_scale_inv");
    CHECK(w && s && strcmp(w->dtype_name, "F8_E4M3") == 0);
    if (w && s) {
        uint64_t R = w->dims[0], C = w->dims[1];
        float *f = malloc(R * C * sizeof(float)), *sc = malloc(s->numel * sizeof(float));
        CHECK_EQ_INT(st_read_f32(st, w, f), SL_OK);
        CHECK_EQ_INT(st_read_f32(st, s, sc), SL_OK);
        uint64_t br = (R + s->dims[0] - 1) / s->dims[0]; /* 16 rows, 32 cols in the fixture */
        CHECK_EQ_INT(s->dims[0], (R + 15) / 16);
        CHECK_EQ_INT(s->dims[1], (C + 31) / 32);
        const struct weight *got = &m->layers[0].wq_a;
        CHECK(got->dtype == SL_DTYPE_F32 && got->rows == R && got->cols == C);
        int bad = 0;
        for (uint64_t i = 0; i < R && got->dtype == SL_DTYPE_F32; i++)
            for (uint64_t j = 0; j < C; j++)
                bad += ((const float *)got->data)[i * C + j] !=
                       f[i * C + j] * sc[(i / 16) * s->dims[1] + j / 32];
        CHECK_MSG(bad == 0, "%d values differ (row block %llu)", bad, (unsigned long long)br);
        free(f);
        free(sc);
    }
    st_close(st);
    sl_model_close(m);
}

/* ---- converter rejections (a copy of the FP8 fixture, one thing broken) ---- */

static int convert_patched(const char *name, const char *from, const char *to) {
    char src[512];
    snprintf(src, sizeof src, "%s/deepseek_v3/%s", golden_fx_root(), name);
    return golden_convert_patched(src, "/tmp/sluice_gdp_XXXXXX", from, to);
}

TEST(convert_deepseek_reject) {
    /* F8 tensors without an fp8 quantization_config */
    int st = convert_patched("qlora_yarn_fp8", "\"quant_method\": \"fp8\"",
                             "\"quant_method\": \"fp8x\"");
    CHECK_EQ_INT(st, SL_ERR_UNSUPPORTED);
    CHECK_MSG(strstr(sl_errmsg(), "fp8x") != NULL, "%s", sl_errmsg());
    /* a block size the scales do not match names the scale tensor */
    st = convert_patched("qlora_yarn_fp8", "\"weight_block_size\"",
                         "\"weight_block_size\": [128, 128], \"was\"");
    CHECK_EQ_INT(st, SL_ERR_FORMAT);
    CHECK_MSG(strstr(sl_errmsg(), "_scale_inv") != NULL, "%s", sl_errmsg());
    st = convert_patched("qlora_yarn_fp8", "\"fmt\": \"e4m3\"", "\"fmt\": \"e5m2\"");
    CHECK_EQ_INT(st, SL_ERR_UNSUPPORTED);
    CHECK_MSG(strstr(sl_errmsg(), "fmt") != NULL, "%s", sl_errmsg());
    st = convert_patched("qlora_yarn_fp8", "\"weight_block_size\"",
                         "\"weight_block_size\": 128, \"was\"");
    CHECK_EQ_INT(st, SL_ERR_UNSUPPORTED);
    CHECK_MSG(strstr(sl_errmsg(), "weight_block_size") != NULL, "%s", sl_errmsg());
    /* the bf16 checkpoint with a q_lora_rank it does not have */
    st = convert_patched("qlora_yarn", "\"q_lora_rank\": 32", "\"q_lora_rank\": null");
    CHECK_EQ_INT(st, SL_ERR_FORMAT);
    CHECK_MSG(strstr(sl_errmsg(), "q_proj") != NULL, "%s", sl_errmsg());
    st = convert_patched("qlora_yarn", "\"kv_lora_rank\": 32", "\"kv_lora_rank\": 64");
    CHECK_EQ_INT(st, SL_ERR_FORMAT);
    CHECK_MSG(strstr(sl_errmsg(), "kv_") != NULL, "%s", sl_errmsg());
}

TEST_MAIN()
