/*
 * test_golden.c — the golden end-to-end test: sluice against HF transformers
 * on the committed qwen3_moe fixtures (tests/fixtures/qwen3_moe/<name>/,
 * written by tests/gen/gen_qwen3_moe.py; see tests/gen/README.md).
 *
 * For every fixture directory it converts the bf16 checkpoint with
 * sl_convert, opens the result, evaluates the 40-token prompt asking for all
 * logits and compares each row with transformers' float32 logits
 * (logits.f32), then decodes 16 greedy tokens and compares them with
 * generated.json:
 *   bf16 experts + bf16 dense: cosine >= 0.9999 at every position (prefill
 *       and token-by-token), greedy tokens identical;
 *   q8 experts + q8 dense:     mean cosine >= 0.999;
 *   q4 experts + bf16 dense:   mean cosine >= 0.99;
 * q8/q4 also print top-1 agreement and how many greedy tokens match. It also
 * checks the error contract of sl_eval: an out-of-range id or a full context
 * gives SL_ERR_RANGE and leaves the context unchanged, an empty batch gives
 * SL_ERR_ARG.
 *
 * What it is not: a unit test of any stage (a divergence is hunted with the
 * named intermediates in tests/fixtures/qwen3_moe/base/dump/).
 *
 * Uses only the public API (include/sluice.h). The fixtures are committed,
 * so a missing fixture directory is a failure, not a skip. The directory is
 * tests/fixtures/qwen3_moe relative to the working directory (the repository
 * root under `make test`), or $SLUICE_FIXTURES.
 */
#include <cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sluice.h"
#include "golden.h"
#include "test.h"

#define FX_ROOT_DEFAULT "tests/fixtures/qwen3_moe"
#define FX_MAX 32
#define N_PROMPT 40
#define N_GEN 16

/* One fixture directory, loaded. */
struct fixture {
    char name[64];
    char dir[512];
    size_t n_vocab;             /* config.json vocab_size */
    int32_t prompt[N_PROMPT];   /* generated.json "prompt" */
    int32_t gen[N_GEN];         /* generated.json "generated" (greedy) */
    float *logits;              /* (N_PROMPT, n_vocab) transformers f32 */
};

/* Agreement of one converted model with a fixture. */
struct golden_result {
    double min_cos, mean_cos;   /* over the N_PROMPT prefill rows */
    int top1_agree;             /* rows whose argmax equals the reference's */
    int greedy_prefix;          /* leading greedy tokens equal to the ref */
    int greedy_equal;           /* greedy tokens equal at the same index */
};

/* A converted model in a private temporary directory. */
struct golden_model {
    char tmpdir[64];
    char path[128];
    struct sl_model *model;
};

static const char *fx_root(void) {
    const char *r = getenv("SLUICE_FIXTURES");
    return r && *r ? r : FX_ROOT_DEFAULT;
}

/* Reads a whole file; malloc'ed and NUL-terminated, NULL on failure (the
 * reason is printed). */
static char *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "    %s: %s\n", path, strerror(errno));
        return NULL;
    }
    char *buf = NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0) n = ftell(f);
    if (n >= 0 && fseek(f, 0, SEEK_SET) == 0) buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (!buf) {
        fprintf(stderr, "    %s: read failed\n", path);
        return NULL;
    }
    buf[n] = 0;
    *len = (size_t)n;
    return buf;
}

static int name_cmp(const void *a, const void *b) {
    return strcmp((const char *)a, (const char *)b);
}

/* Names of the fixture directories (those holding a config.json), sorted.
 * Returns the count; 0 means the fixtures are missing. */
static int fixtures_list(char names[FX_MAX][64]) {
    DIR *d = opendir(fx_root());
    if (!d) {
        fprintf(stderr,
                "    fixtures %s: %s (run from the repository root or set "
                "SLUICE_FIXTURES)\n",
                fx_root(), strerror(errno));
        return 0;
    }
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < FX_MAX) {
        char p[1024];
        struct stat st;
        if (e->d_name[0] == '.' || strlen(e->d_name) >= 64) continue;
        snprintf(p, sizeof p, "%s/%s/config.json", fx_root(), e->d_name);
        if (stat(p, &st) == 0) snprintf(names[n++], 64, "%.63s", e->d_name); /* length checked above */
    }
    closedir(d);
    qsort(names, (size_t)n, 64, name_cmp);
    if (n == 0) fprintf(stderr, "    no fixture under %s\n", fx_root());
    return n;
}

/* Reads a JSON array of exactly n ids in [0, n_vocab) into out. */
static int json_ids(const cJSON *arr, int32_t *out, int n, size_t n_vocab) {
    if (!cJSON_IsArray(arr) || cJSON_GetArraySize(arr) != n) return 0;
    for (int i = 0; i < n; i++) {
        const cJSON *v = cJSON_GetArrayItem(arr, i);
        if (!cJSON_IsNumber(v) || v->valuedouble < 0 ||
            v->valuedouble >= (double)n_vocab)
            return 0;
        out[i] = (int32_t)v->valuedouble;
    }
    return 1;
}

static void fixture_free(struct fixture *fx) {
    free(fx->logits);
    fx->logits = NULL;
}

/* Loads config.json (vocab_size), generated.json and logits.f32 of one
 * fixture. Returns nonzero on success; prints what is wrong otherwise. */
static int fixture_load(const char *name, struct fixture *fx) {
    memset(fx, 0, sizeof *fx);
    snprintf(fx->name, sizeof fx->name, "%s", name);
    snprintf(fx->dir, sizeof fx->dir, "%s/%s", fx_root(), name);
    char p[1024];
    size_t len;
    int ok = 0;

    snprintf(p, sizeof p, "%s/config.json", fx->dir);
    char *txt = read_all(p, &len);
    cJSON *j = txt ? cJSON_ParseWithLength(txt, len) : NULL;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "vocab_size");
    if (cJSON_IsNumber(v) && v->valuedouble >= 1) {
        fx->n_vocab = (size_t)v->valuedouble;
        ok = 1;
    } else if (txt) {
        fprintf(stderr, "    %s: no numeric vocab_size\n", p);
    }
    cJSON_Delete(j);
    free(txt);
    if (!ok) return 0;

    ok = 0;
    snprintf(p, sizeof p, "%s/generated.json", fx->dir);
    txt = read_all(p, &len);
    j = txt ? cJSON_ParseWithLength(txt, len) : NULL;
    if (json_ids(cJSON_GetObjectItemCaseSensitive(j, "prompt"), fx->prompt,
                 N_PROMPT, fx->n_vocab) &&
        json_ids(cJSON_GetObjectItemCaseSensitive(j, "generated"), fx->gen,
                 N_GEN, fx->n_vocab))
        ok = 1;
    else if (txt)
        fprintf(stderr,
                "    %s: want \"prompt\" of %d and \"generated\" of %d ids "
                "in [0, %zu)\n",
                p, N_PROMPT, N_GEN, fx->n_vocab);
    cJSON_Delete(j);
    free(txt);
    if (!ok) return 0;

    snprintf(p, sizeof p, "%s/logits.f32", fx->dir);
    txt = read_all(p, &len);
    if (!txt) return 0;
    if (len != (size_t)N_PROMPT * fx->n_vocab * sizeof(float)) {
        fprintf(stderr, "    %s: %zu bytes, want %d x %zu floats\n", p, len,
                N_PROMPT, fx->n_vocab);
        free(txt);
        return 0;
    }
    fx->logits = malloc(len);
    memcpy(fx->logits, txt, len); /* little-endian host assumed (x86-64) */
    free(txt);
    return 1;
}

/* Converts fx at the given dtypes into a private temporary file and opens
 * it. Returns nonzero on success; on failure prints sl_errmsg(). */
static int golden_open(const struct fixture *fx, int expert_dtype,
                       int dense_dtype, struct golden_model *gm) {
    memset(gm, 0, sizeof *gm);
    snprintf(gm->tmpdir, sizeof gm->tmpdir, "/tmp/sluice_golden_XXXXXX");
    if (!mkdtemp(gm->tmpdir)) {
        fprintf(stderr, "    mkdtemp: %s\n", strerror(errno));
        return 0;
    }
    snprintf(gm->path, sizeof gm->path, "%s/model.sluice", gm->tmpdir);
    struct sl_convert_params cp = sl_convert_default_params();
    cp.expert_dtype = expert_dtype;
    cp.dense_dtype = dense_dtype;
    cp.progress = 0;
    int st = sl_convert(fx->dir, gm->path, &cp);
    if (st != SL_OK) {
        fprintf(stderr, "    sl_convert %s (experts %s, dense %s): %s: %s\n",
                fx->dir, sl_dtype_name(expert_dtype),
                sl_dtype_name(dense_dtype), sl_status_str(st), sl_errmsg());
        return 0;
    }
    struct sl_model_params mp = sl_model_default_params();
    st = sl_model_open(gm->path, &mp, &gm->model);
    if (st != SL_OK) {
        fprintf(stderr, "    sl_model_open %s: %s: %s\n", gm->path,
                sl_status_str(st), sl_errmsg());
        gm->model = NULL;
        return 0;
    }
    return 1;
}

static void golden_close(struct golden_model *gm) {
    sl_model_close(gm->model);
    gm->model = NULL;
    if (gm->path[0]) unlink(gm->path);
    if (gm->tmpdir[0]) rmdir(gm->tmpdir);
}

static int ctx_new(struct sl_model *model, uint32_t n_ctx,
                   struct sl_context **ctx) {
    struct sl_context_params cp = sl_context_default_params();
    cp.n_ctx = n_ctx;
    int st = sl_context_create(model, &cp, ctx);
    if (st != SL_OK) {
        fprintf(stderr, "    sl_context_create: %s: %s\n", sl_status_str(st),
                sl_errmsg());
        *ctx = NULL;
        return 0;
    }
    return 1;
}

/* Prefill of the prompt in one batch with all logits, then a 16-token
 * greedy decode feeding back its own tokens. Fills r; returns nonzero if
 * every call succeeded (failures are recorded as check failures). */
static int golden_run(struct sl_model *model, const struct fixture *fx,
                      struct golden_result *r) {
    size_t V = fx->n_vocab;
    memset(r, 0, sizeof *r);
    r->min_cos = INFINITY;
    CHECK_EQ_INT(sl_model_n_vocab(model), V);
    if ((size_t)sl_model_n_vocab(model) != V) return 0;
    struct sl_context *ctx;
    if (!ctx_new(model, 0, &ctx)) {
        CHECK(!"context");
        return 0;
    }
    float *all = malloc(N_PROMPT * V * sizeof(float)); /* (N_PROMPT, V) */
    int st = sl_eval(ctx, fx->prompt, N_PROMPT, all);
    CHECK_MSG(st == SL_OK, "sl_eval prompt: %s", sl_errmsg());
    if (st != SL_OK) {
        free(all);
        sl_context_free(ctx);
        return 0;
    }
    double sum = 0;
    for (int i = 0; i < N_PROMPT; i++) {
        double c = golden_cosine(all + i * V, fx->logits + i * V, V);
        if (!(c >= r->min_cos)) r->min_cos = c; /* NaN sticks */
        sum += c;
        r->top1_agree +=
            golden_argmax(all + i * V, V) == golden_argmax(fx->logits + i * V, V);
    }
    r->mean_cos = sum / N_PROMPT;
    /* The last row is also what sl_logits returns. */
    const float *last = sl_logits(ctx);
    CHECK(last != NULL);
    if (last)
        CHECK(memcmp(last, all + (N_PROMPT - 1) * V, V * sizeof(float)) == 0);
    free(all);

    int prefix = 1;
    for (int g = 0; g < N_GEN && last; g++) {
        int32_t tok = golden_argmax(last, V);
        r->greedy_equal += tok == fx->gen[g];
        prefix = prefix && tok == fx->gen[g];
        r->greedy_prefix += prefix;
        if (g == N_GEN - 1) break;
        st = sl_eval(ctx, &tok, 1, NULL);
        CHECK_MSG(st == SL_OK, "sl_eval decode %d: %s", g, sl_errmsg());
        if (st != SL_OK) break;
        last = sl_logits(ctx);
    }
    CHECK_EQ_INT(sl_context_n_past(ctx), N_PROMPT + N_GEN - 1);
    sl_context_free(ctx);
    return st == SL_OK;
}

/* The prompt one token per sl_eval (the decode path and the KV cache):
 * returns the minimum cosine against the reference rows (-1 on failure). */
static double golden_run_stepwise(struct sl_model *model,
                                  const struct fixture *fx) {
    struct sl_context *ctx;
    if (!ctx_new(model, 0, &ctx)) return -1;
    double min_cos = INFINITY;
    for (int i = 0; i < N_PROMPT; i++) {
        int st = sl_eval(ctx, &fx->prompt[i], 1, NULL);
        const float *l = sl_logits(ctx);
        if (st != SL_OK || !l) {
            fprintf(stderr, "    step %d: %s\n", i, sl_errmsg());
            min_cos = -1;
            break;
        }
        double c = golden_cosine(l, fx->logits + (size_t)i * fx->n_vocab,
                          fx->n_vocab);
        if (!(c >= min_cos)) min_cos = c;
    }
    sl_context_free(ctx);
    return min_cos;
}

static void fixtures_run(int expert_dtype, int dense_dtype, double min_mean,
                         int strict) {
    char names[FX_MAX][64];
    int n = fixtures_list(names);
    CHECK_MSG(n > 0, "fixtures missing under %s (they are committed: "
              "HINT: see tests/gen/README.md)", fx_root());
    for (int k = 0; k < n; k++) {
        struct fixture fx;
        if (!fixture_load(names[k], &fx)) {
            CHECK_MSG(0, "fixture %s unreadable", names[k]);
            fixture_free(&fx);
            continue;
        }
        struct golden_model gm;
        if (!golden_open(&fx, expert_dtype, dense_dtype, &gm)) {
            CHECK_MSG(0, "fixture %s: convert/open failed", names[k]);
            golden_close(&gm);
            fixture_free(&fx);
            continue;
        }
        struct golden_result r;
        golden_run(gm.model, &fx, &r);
        printf("  %-16s experts %-4s dense %-4s: cos min %.7f mean %.7f, "
               "top-1 %d/%d, greedy %d/%d (prefix %d)",
               fx.name, sl_dtype_name(expert_dtype),
               sl_dtype_name(dense_dtype), r.min_cos, r.mean_cos,
               r.top1_agree, N_PROMPT, r.greedy_equal, N_GEN,
               r.greedy_prefix);
        if (strict) {
            double sc = golden_run_stepwise(gm.model, &fx);
            printf(", stepwise cos min %.7f", sc);
            CHECK_MSG(r.min_cos >= 0.9999, "%s: min cosine %.7f < 0.9999",
                      fx.name, r.min_cos);
            CHECK_MSG(sc >= 0.9999, "%s: stepwise min cosine %.7f < 0.9999",
                      fx.name, sc);
            CHECK_MSG(r.greedy_prefix == N_GEN,
                      "%s: greedy tokens differ from index %d", fx.name,
                      r.greedy_prefix);
        }
        printf("\n");
        CHECK_MSG(r.mean_cos >= min_mean, "%s: mean cosine %.7f < %g",
                  fx.name, r.mean_cos, min_mean);
        golden_close(&gm);
        fixture_free(&fx);
    }
}

TEST(golden_bf16) {
    fixtures_run(SL_DTYPE_BF16, SL_DTYPE_BF16, 0.9999, 1);
}

TEST(golden_q8) {
    fixtures_run(SL_DTYPE_Q8, SL_DTYPE_Q8, 0.999, 0);
}

TEST(golden_q4) {
    fixtures_run(SL_DTYPE_Q4, SL_DTYPE_BF16, 0.99, 0);
}

/* The "base" fixture (or the first one) converted at bf16, for the error
 * contract tests. */
static int error_fixture(struct fixture *fx, struct golden_model *gm) {
    char names[FX_MAX][64];
    int n = fixtures_list(names), pick = 0;
    CHECK_MSG(n > 0, "fixtures missing under %s", fx_root());
    if (n == 0) return 0;
    for (int k = 0; k < n; k++)
        if (strcmp(names[k], "base") == 0) pick = k;
    if (!fixture_load(names[pick], fx)) {
        CHECK_MSG(0, "fixture %s unreadable", names[pick]);
        fixture_free(fx);
        return 0;
    }
    if (!golden_open(fx, SL_DTYPE_BF16, SL_DTYPE_BF16, gm)) {
        CHECK_MSG(0, "fixture %s: convert/open failed", names[pick]);
        golden_close(gm);
        fixture_free(fx);
        return 0;
    }
    return 1;
}

/* An out-of-range id fails with SL_ERR_RANGE and changes nothing: the
 * context then gives exactly the logits of a fresh context fed the same
 * valid tokens. */
TEST(eval_bad_token_range) {
    struct fixture fx;
    struct golden_model gm;
    if (!error_fixture(&fx, &gm)) return;
    size_t V = fx.n_vocab;
    struct sl_context *a = NULL, *b = NULL;
    if (!ctx_new(gm.model, 0, &a) || !ctx_new(gm.model, 0, &b)) {
        CHECK(!"context");
        goto out;
    }
    /* Before any evaluation: a bad id leaves no logits and no positions. */
    int32_t bad_first[2] = {1, (int32_t)V};
    CHECK_EQ_INT(sl_eval(a, bad_first, 2, NULL), SL_ERR_RANGE);
    CHECK(strlen(sl_errmsg()) > 0);
    CHECK(sl_logits(a) == NULL);
    CHECK_EQ_INT(sl_context_n_past(a), 0);

    CHECK_EQ_INT(sl_eval(a, fx.prompt, 10, NULL), SL_OK);
    int32_t bad[3][3] = {{3, 4, (int32_t)V}, {-1, 0, 0}, {0, INT32_MAX, 0}};
    for (int k = 0; k < 3; k++) {
        CHECK_EQ_INT(sl_eval(a, bad[k], 3, NULL), SL_ERR_RANGE);
        CHECK_EQ_INT(sl_context_n_past(a), 10);
    }
    int32_t one_bad = (int32_t)V + 7;
    CHECK_EQ_INT(sl_eval(a, &one_bad, 1, NULL), SL_ERR_RANGE);
    CHECK_EQ_INT(sl_context_n_past(a), 10);

    float *ra = malloc((N_PROMPT - 10) * V * sizeof(float)); /* (30, V) */
    float *rb = malloc((N_PROMPT - 10) * V * sizeof(float)); /* (30, V) */
    CHECK_EQ_INT(sl_eval(a, fx.prompt + 10, N_PROMPT - 10, ra), SL_OK);
    CHECK_EQ_INT(sl_eval(b, fx.prompt, 10, NULL), SL_OK);
    CHECK_EQ_INT(sl_eval(b, fx.prompt + 10, N_PROMPT - 10, rb), SL_OK);
    CHECK_EQ_INT(sl_context_n_past(a), N_PROMPT);
    check_tensor("logits after failed evals vs fresh context", ra, rb,
                 (N_PROMPT - 10) * V, -1, 0.0);
    /* And both still agree with transformers. */
    double c = golden_cosine(ra + (N_PROMPT - 11) * V,
                      fx.logits + (N_PROMPT - 1) * V, V);
    CHECK_MSG(c >= 0.9999, "last row cosine %.7f", c);
    free(ra);
    free(rb);
out:
    sl_context_free(a);
    sl_context_free(b);
    golden_close(&gm);
    fixture_free(&fx);
}

/* A full context refuses more tokens with SL_ERR_RANGE and stays usable. */
TEST(eval_context_full) {
    struct fixture fx;
    struct golden_model gm;
    if (!error_fixture(&fx, &gm)) return;
    struct sl_context *ctx = NULL;
    if (!ctx_new(gm.model, 8, &ctx)) {
        CHECK(!"context");
        goto out;
    }
    CHECK_EQ_INT(sl_eval(ctx, fx.prompt, 9, NULL), SL_ERR_RANGE);
    CHECK(strlen(sl_errmsg()) > 0);
    CHECK_EQ_INT(sl_context_n_past(ctx), 0);
    CHECK_EQ_INT(sl_eval(ctx, fx.prompt, 6, NULL), SL_OK);
    CHECK_EQ_INT(sl_eval(ctx, fx.prompt + 6, 3, NULL), SL_ERR_RANGE);
    CHECK_EQ_INT(sl_context_n_past(ctx), 6);
    CHECK_EQ_INT(sl_eval(ctx, fx.prompt + 6, 2, NULL), SL_OK);
    CHECK_EQ_INT(sl_context_n_past(ctx), 8);
    CHECK_EQ_INT(sl_eval(ctx, fx.prompt + 8, 1, NULL), SL_ERR_RANGE);
    CHECK_EQ_INT(sl_context_n_past(ctx), 8);
    const float *l = sl_logits(ctx);
    CHECK(l != NULL);
    if (l) {
        double c = golden_cosine(l, fx.logits + 7 * fx.n_vocab, fx.n_vocab);
        CHECK_MSG(c >= 0.9999, "row 7 cosine %.7f", c);
    }
    /* After a reset the whole window is free again. */
    sl_context_reset(ctx);
    CHECK_EQ_INT(sl_context_n_past(ctx), 0);
    CHECK_EQ_INT(sl_eval(ctx, fx.prompt, 8, NULL), SL_OK);
out:
    sl_context_free(ctx);
    golden_close(&gm);
    fixture_free(&fx);
}

/* An empty batch and a NULL token array are caller errors. */
TEST(eval_empty_arg) {
    struct fixture fx;
    struct golden_model gm;
    if (!error_fixture(&fx, &gm)) return;
    struct sl_context *ctx = NULL;
    if (!ctx_new(gm.model, 0, &ctx)) {
        CHECK(!"context");
        goto out;
    }
    CHECK_EQ_INT(sl_eval(ctx, fx.prompt, 0, NULL), SL_ERR_ARG);
    CHECK(strlen(sl_errmsg()) > 0);
    CHECK_EQ_INT(sl_eval(ctx, NULL, 1, NULL), SL_ERR_ARG);
    CHECK_EQ_INT(sl_context_n_past(ctx), 0);
    CHECK(sl_logits(ctx) == NULL);
    CHECK_EQ_INT(sl_eval(ctx, fx.prompt, 1, NULL), SL_OK);
    CHECK_EQ_INT(sl_eval(ctx, fx.prompt, 0, NULL), SL_ERR_ARG);
    CHECK_EQ_INT(sl_context_n_past(ctx), 1);
out:
    sl_context_free(ctx);
    golden_close(&gm);
    fixture_free(&fx);
}

TEST_MAIN()
