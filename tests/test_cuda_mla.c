/*
 * test_cuda_mla.c — deepseek_v3 on the CUDA backend (src/cuda/
 * layer_mla_cuda.cu) against the CPU specification:
 *   per op (host-pointer twins of src/cuda/layer_mla_cuda_test.h):
 *     MLA attention vs mla_attention's absorbed form (src/layer_mla.c) on
 *       random layers (q through q_a/q_b or q_proj, interleaved rope or not,
 *       plain RoPE or a YaRN table with its cos/sin factor, f32 and bf16
 *       weights), chunks {5, 3} then decode steps, and a 280-token prefill
 *       (positions beyond one block of threads): outputs and the latent
 *       cache rows nmse <= 1e-9;
 *     the noaux_tc router vs moe_route_noaux_tc (src/moe_route.c): ids
 *       exact (ties among experts and among groups go to the lower id, a
 *       NaN logit ranks last), weights nmse <= 1e-12, with and without the
 *       selection bias and renormalisation, 1 to 8 groups, 4 to 256 experts;
 *       the CPU's message for groups that do not fit;
 *   end to end on every fixture of tests/fixtures/deepseek_v3 (converted at
 *     bf16): GPU logits vs transformers and vs the CPU backend cosine >=
 *     0.9999 at every prompt position (chunks of 16) and token by token,
 *     the 16 greedy tokens identical to both; the decode graph and the
 *     launch-by-launch path (SLUICE_CUDA_GRAPH=0) alike; q8 / q4 mean
 *     cosine vs transformers >= 0.999 / 0.99 (the FP8 twin at bf16 only,
 *     as test_golden_deepseek.c); logits bit-identical with every expert
 *     resident and with a GPU cache of k + 2 slots (prompt and decode).
 * Without a GPU (CI) or in a build without CUDA every GPU test is skipped
 * with the reason; the refusal test runs everywhere.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include "golden.h"
#include "sluice.h"
#include "test.h"

#define N_PROMPT 40
#define N_GEN 16
#define FX_MAX 16

static int have_gpu(void);

/* Converts dir into a fresh temporary model file at path (caller removes). */
static int convert_to(const char *dir, int ed, int dd, char *path, size_t n) {
    char tmp[] = "/tmp/sluice_cmla_XXXXXX";
    if (!mkdtemp(tmp)) return 0;
    snprintf(path, n, "%s/m.sluice", tmp);
    struct sl_convert_params cp = sl_convert_default_params();
    cp.expert_dtype = ed;
    cp.dense_dtype = dd;
    int st = sl_convert(dir, path, &cp);
    if (st) fprintf(stderr, "    convert %s: %s\n", dir, sl_errmsg());
    return st == SL_OK;
}

static void remove_model(const char *path) {
    char dir[600];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    unlink(path);
    if (slash) {
        *slash = 0;
        rmdir(dir);
    }
}

__attribute__((unused)) static struct sl_model *open_dev(const char *path, int device,
                                                         uint64_t gpu_cache) {
    struct sl_model_params mp = sl_model_default_params();
    mp.device = device;
    mp.gpu_cache_bytes = gpu_cache;
    struct sl_model *m = NULL;
    if (sl_model_open(path, &mp, &m) != SL_OK) {
        fprintf(stderr, "    open %s (device %d): %s\n", path, device, sl_errmsg());
        return NULL;
    }
    return m;
}

/* Without a GPU or CUDA build, --device cuda on a deepseek_v3 model fails
 * with SL_ERR_UNSUPPORTED and a message; --device auto runs on the CPU. */
TEST(cuda_mla_refusal_without_gpu) {
    if (have_gpu()) TEST_SKIP("a GPU is present (the GPU tests below cover it)");
    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s/deepseek_v3/direct_q", golden_fx_root());
    CHECK(convert_to(dir, SL_DTYPE_BF16, SL_DTYPE_BF16, path, sizeof path));
    struct sl_model_params mp = sl_model_default_params();
    struct sl_model *m = NULL;
    mp.device = SL_DEVICE_CUDA;
    CHECK_EQ_INT(sl_model_open(path, &mp, &m), SL_ERR_UNSUPPORTED);
    CHECK(m == NULL);
    CHECK_MSG(strstr(sl_errmsg(), "CUDA") != NULL, "message: %s", sl_errmsg());
    mp.device = SL_DEVICE_AUTO;
    CHECK_EQ_INT(sl_model_open(path, &mp, &m), SL_OK);
    sl_model_close(m);
    remove_model(path);
}

#ifndef SLUICE_CUDA

static int have_gpu(void) { return 0; }

TEST(cuda_mla) { TEST_SKIP("built without CUDA (NO_CUDA=1 or no nvcc): GPU tests not run"); }

#else

#include "config.h"
#include "cpu/ops_ext.h"
#include "cpu/pool.h"
#include "cuda/cuda.h"
#include "cuda/layer_mla_cuda_test.h"
#include "layer_mla.h"
#include "model.h"
#include "moe_route.h"
#include "quant.h"

#include "cuda_test.h" /* have_gpu, NEED_GPU */

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float frand(void) { /* uniform in [-1, 1) */
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

/* ---- MLA attention ---- */

struct mlayer {
    struct sl_config c;
    struct layer_weights L;
    void *buf[8];
    int nbuf;
    float *qa_norm, *kva_norm;
};

static void mat(struct mlayer *ly, struct weight *w, int rows, int cols, float std, int dtype) {
    uint64_t rb = quant_row_bytes(dtype, (uint64_t)cols);
    uint8_t *q = malloc((size_t)(rb * rows));
    float *row = malloc((size_t)cols * sizeof(float));
    for (int i = 0; i < rows; i++) {
        for (int j = 0; j < cols; j++) row[j] = std * frand() * 1.7f;
        quant_row_from_f32(dtype, row, q + i * rb, (uint64_t)cols);
    }
    free(row);
    ly->buf[ly->nbuf++] = q;
    w->data = q;
    w->dtype = dtype;
    w->rows = (uint64_t)rows;
    w->cols = (uint64_t)cols;
}

/* hidden 64; nh heads; kv_lora_rank r; rope dims; nope 16; v 24. */
static void mlayer_init(struct mlayer *ly, int nh, int r, int rope, int lora, int interleave,
                        int dtype) {
    memset(ly, 0, sizeof *ly);
    struct sl_config *c = &ly->c;
    c->arch = SL_ARCH_DEEPSEEK_V3;
    c->hidden = 64;
    c->n_heads = (uint32_t)nh;
    c->n_kv_heads = (uint32_t)nh;
    c->q_lora_rank = lora ? 32 : 0;
    c->kv_lora_rank = (uint32_t)r;
    c->qk_nope_head_dim = 16;
    c->qk_rope_head_dim = (uint32_t)rope;
    c->head_dim = (uint32_t)rope;
    c->v_head_dim = 24;
    c->rope_theta = 10000.0f;
    c->rope_interleave = interleave;
    int qk = 16 + rope, h = 64;
    if (lora) {
        mat(ly, &ly->L.wq_a, 32, h, 0.125f, dtype);
        mat(ly, &ly->L.wq_b, nh * qk, 32, 0.18f, dtype);
    } else {
        mat(ly, &ly->L.wq, nh * qk, h, 0.125f, dtype);
    }
    mat(ly, &ly->L.wkv_a, r + rope, h, 0.125f, dtype);
    mat(ly, &ly->L.wkv_b, nh * (16 + 24), r, 0.18f, dtype);
    mat(ly, &ly->L.wo, h, nh * 24, 0.1f, dtype);
    ly->qa_norm = malloc(32 * sizeof(float));
    ly->kva_norm = malloc((size_t)r * sizeof(float));
    for (int i = 0; i < 32; i++) ly->qa_norm[i] = 1 + 0.2f * frand();
    for (int i = 0; i < r; i++) ly->kva_norm[i] = 1 + 0.2f * frand();
    ly->L.q_a_norm = lora ? ly->qa_norm : NULL;
    ly->L.kv_a_norm = ly->kva_norm;
}

static void mlayer_free(struct mlayer *ly) {
    for (int i = 0; i < ly->nbuf; i++) free(ly->buf[i]);
    free(ly->qa_norm);
    free(ly->kva_norm);
}

/* N tokens through the CPU (absorbed form) and the GPU in the same chunks
 * (chunk sizes from chunks[], the last repeated), outputs and caches
 * compared. */
static void check_mla(struct sl_pool *pool, struct mlayer *ly, const float *inv, float msc,
                      int N, const int *chunks, int n_chunks, const char *what) {
    int h = 64, D = (int)config_mla_cache_dim(&ly->c), maxn = 0;
    for (int i = 0; i < n_chunks; i++) maxn = chunks[i] > maxn ? chunks[i] : maxn;
    struct mla_scratch *s;
    CHECK_EQ_INT(mla_scratch_create(&ly->c, maxn, &s), SL_OK);
    float *x = malloc((size_t)N * h * 4), *oc = malloc((size_t)N * h * 4);
    float *og = malloc((size_t)N * h * 4), *cc = calloc((size_t)N * D, 4);
    float *cg = calloc((size_t)N * D, 4), *sc = malloc((size_t)ly->c.n_heads * N * 4);
    for (int i = 0; i < N * h; i++) x[i] = frand();
    int ok = 1;
    for (int p = 0, ci = 0; p < N && ok; ci++) {
        int n = chunks[ci < n_chunks ? ci : n_chunks - 1];
        if (n > N - p) n = N - p;
        ok = mla_attention(pool, s, &ly->c, &ly->L, inv, msc, cc, x + (size_t)p * h,
                           oc + (size_t)p * h, (uint32_t)p, n, sc, MLA_ABSORBED) == SL_OK;
        int st = ok ? cuda_test_mla_attention(&ly->c, &ly->L, inv, msc, cg, x + (size_t)p * h,
                                              og + (size_t)p * h, p, n)
                    : SL_OK;
        CHECK_MSG(ok && st == SL_OK, "%s at %d: %s", what, p, sl_errmsg());
        ok = ok && st == SL_OK;
        p += n;
    }
    if (ok) {
        char w[160];
        snprintf(w, sizeof w, "%s: out", what);
        check_tensor(w, og, oc, (size_t)N * h, 1e-9, -1);
        snprintf(w, sizeof w, "%s: latent cache", what);
        check_tensor(w, cg, cc, (size_t)N * D, 1e-9, -1);
    }
    free(x), free(oc), free(og), free(cc), free(cg), free(sc);
    mla_scratch_free(s);
}

TEST(cuda_mla_attention) {
    NEED_GPU();
    struct sl_pool *pool;
    CHECK_EQ_INT(pool_create(2, &pool), SL_OK);
    const int steps[] = {5, 3, 1};
    float yarn[8];
    CHECK_EQ_INT(ops_rope_yarn_inv_freq(yarn, 8, 1e4f, 4, 32, 1, 4, 1), SL_OK);
    for (int dt = 0; dt < 2; dt++)
        for (int lora = 0; lora < 2; lora++)
            for (int il = 0; il < 2; il++)
                for (int y = 0; y < 2; y++) {
                    struct mlayer ly;
                    int dtype = dt ? SL_DTYPE_BF16 : SL_DTYPE_F32;
                    mlayer_init(&ly, 3, 32, 8, lora, il, dtype);
                    if (y) {
                        ly.c.rope_kind = SL_ROPE_YARN;
                        ly.c.rope_factor = 4;
                        ly.c.rope_mscale_all_dim = 0.8f;
                    }
                    char what[96];
                    snprintf(what, sizeof what, "mla %s lora %d interleave %d yarn %d",
                             sl_dtype_name(dtype), lora, il, y);
                    check_mla(pool, &ly, y ? yarn : NULL, y ? 1.05f : 1.0f, 12, steps, 3, what);
                    mlayer_free(&ly);
                }
    /* a long prefill: 280 positions (> one block of threads), then decode;
     * 4 heads, latent 64, rope 16 */
    struct mlayer ly;
    mlayer_init(&ly, 4, 64, 16, 1, 1, SL_DTYPE_BF16);
    const int long_chunks[] = {280, 1};
    check_mla(pool, &ly, NULL, 1.0f, 284, long_chunks, 2, "mla long prefill");
    mlayer_free(&ly);
    pool_free(pool);
}

/* ---- the noaux_tc router ---- */

static void check_route(int ne, int ng, int tg, int k, int norm, float scaling, int bias,
                        int n) {
    struct sl_config c;
    memset(&c, 0, sizeof c);
    c.n_experts = (uint32_t)ne;
    c.n_experts_used = (uint32_t)k;
    c.n_group = (uint32_t)ng;
    c.topk_group = (uint32_t)tg;
    c.norm_topk_prob = norm;
    c.routed_scaling_factor = scaling;
    float *lg = malloc((size_t)n * ne * 4), *cp = malloc((size_t)n * ne * 4);
    float *b = malloc((size_t)ne * 4), *wc = malloc((size_t)n * k * 4), *wg = malloc((size_t)n * k * 4);
    int32_t *ic = malloc((size_t)n * k * 4), *ig = malloc((size_t)n * k * 4);
    for (int i = 0; i < n * ne; i++) lg[i] = 3.0f * frand();
    for (int e = 0; e < ne; e++) b[e] = 0.3f * frand();
    int per = ne / ng;
    /* token 0: every logit equal (with a bias, ties only where it is) */
    for (int e = 0; e < ne; e++) lg[e] = 0.5f;
    /* token 1: groups with identical contents (group-score ties) */
    if (n > 1)
        for (int g = 1; g < ng; g++)
            for (int j = 0; j < per; j++) lg[ne + g * per + j] = lg[ne + j];
    /* token 2: a NaN logit, and two equal maxima in different groups */
    if (n > 2) {
        lg[2 * ne + 1] = NAN;
        lg[2 * ne + ne - 1] = lg[2 * ne + 0] = 9.0f;
    }
    memcpy(cp, lg, (size_t)n * ne * 4); /* the CPU overwrites its logits */
    CHECK_EQ_INT(moe_route_noaux_tc(&c, cp, bias ? b : NULL, n, ic, wc), SL_OK);
    int st = cuda_test_route_noaux(&c, lg, bias ? b : NULL, n, ig, wg);
    CHECK_MSG(st == SL_OK, "%s", sl_errmsg());
    char what[128];
    snprintf(what, sizeof what, "noaux ne %d groups %d/%d top-%d norm %d bias %d", ne, tg, ng,
             k, norm, bias);
    int same = memcmp(ic, ig, (size_t)n * k * 4) == 0;
    CHECK_MSG(same, "%s: ids differ", what);
    for (int i = 0; !same && i < n * k; i++)
        if (ic[i] != ig[i]) {
            fprintf(stderr, "    token %d slot %d: cpu %d gpu %d\n", i / k, i % k, ic[i], ig[i]);
            break;
        }
    check_tensor(what, wg, wc, (size_t)n * k, 1e-12, -1);
    free(lg), free(cp), free(b), free(wc), free(wg), free(ic), free(ig);
}

TEST(cuda_route_noaux) {
    NEED_GPU();
    for (int bias = 0; bias < 2; bias++) {
        check_route(8, 4, 2, 2, 1, 2.5f, bias, 5);    /* qlora_yarn */
        check_route(4, 1, 1, 2, 0, 1.5f, bias, 5);    /* direct_q */
        check_route(16, 8, 3, 4, 1, 2.0f, bias, 9);   /* groups */
        check_route(256, 8, 4, 8, 1, 2.5f, bias, 7);  /* DeepSeek-V3's shape */
        check_route(64, 1, 1, 6, 1, 1.0f, bias, 3);
        check_route(384, 1, 1, 8, 1, 2.827f, bias, 3); /* Kimi K2's shape */
    }
    /* groups that do not fit: the CPU's message */
    struct sl_config c;
    memset(&c, 0, sizeof c);
    c.n_experts = 8, c.n_experts_used = 3, c.n_group = 4, c.topk_group = 1;
    float lg[8] = {0}, w[3];
    int32_t ids[3];
    CHECK_EQ_INT(cuda_test_route_noaux(&c, lg, NULL, 1, ids, w), SL_ERR_ARG);
    CHECK_MSG(strstr(sl_errmsg(), "do not fit") != NULL, "%s", sl_errmsg());
}

/* ---- end to end ---- */

struct fixture {
    char name[64], dir[512];
    size_t V;
    int32_t prompt[N_PROMPT], gen[N_GEN];
    float *logits;
};

static int fixture_load(const char *name, struct fixture *fx) {
    memset(fx, 0, sizeof *fx);
    snprintf(fx->name, sizeof fx->name, "%s", name);
    snprintf(fx->dir, sizeof fx->dir, "%s/deepseek_v3/%s", golden_fx_root(), name);
    return golden_fixture_read(fx->dir, 0, N_PROMPT, N_GEN, &fx->V, fx->prompt, fx->gen,
                               &fx->logits);
}

/* Prompt in chunks of 16 (all logits into all), n_gen greedy tokens (gen;
 * their logits into steps (n_gen, V) when not NULL), then token by token
 * (min cosine vs ref into *step_min when not NULL). */
static int run_seq(struct sl_model *m, const struct fixture *fx, float *all, int n_gen,
                   int32_t *gen, float *steps, double *step_min) {
    struct sl_context *ctx;
    struct sl_context_params cp = sl_context_default_params();
    cp.n_batch = 16;
    if (sl_context_create(m, &cp, &ctx) != SL_OK) {
        fprintf(stderr, "    context: %s\n", sl_errmsg());
        return 0;
    }
    int ok = sl_eval(ctx, fx->prompt, N_PROMPT, all) == SL_OK;
    for (int g = 0; ok && g < n_gen; g++) {
        const float *l = sl_logits(ctx);
        gen[g] = golden_argmax(l, fx->V);
        if (steps) memcpy(steps + (size_t)g * fx->V, l, fx->V * sizeof(float));
        if (g + 1 < n_gen) ok = sl_eval(ctx, &gen[g], 1, NULL) == SL_OK;
    }
    if (ok && step_min) {
        *step_min = golden_step_min(ctx, fx->prompt, N_PROMPT, fx->logits, fx->V);
        ok = *step_min >= 0;
    }
    if (!ok) fprintf(stderr, "    sl_eval: %s\n", sl_errmsg());
    sl_context_free(ctx);
    return ok;
}

static void golden_one(const struct fixture *fx, int ed, int dd, int graphs) {
    char path[600];
    if (!convert_to(fx->dir, ed, dd, path, sizeof path)) {
        CHECK_MSG(0, "%s: convert", fx->name);
        return;
    }
    if (!graphs) setenv("SLUICE_CUDA_GRAPH", "0", 1); /* read at model open */
    struct sl_model *mg = open_dev(path, SL_DEVICE_CUDA, SL_GPU_CACHE_AUTO);
    unsetenv("SLUICE_CUDA_GRAPH");
    struct sl_model *mc = open_dev(path, SL_DEVICE_CPU, 0);
    CHECK_MSG(mg && mc, "%s: open", fx->name);
    size_t V = fx->V;
    float *ag = malloc(N_PROMPT * V * 4), *ac = malloc(N_PROMPT * V * 4);
    int32_t gg[N_GEN], gc[N_GEN];
    double step = -1;
    if (mg && mc && run_seq(mg, fx, ag, N_GEN, gg, NULL, &step) &&
        run_seq(mc, fx, ac, N_GEN, gc, NULL, NULL)) {
        double min_t, mean_t, min_c = 2, mean_c = 0;
        golden_cos_stats(ag, fx->logits, N_PROMPT, V, &min_t, &mean_t);
        for (int i = 0; i < N_PROMPT; i++) {
            double c = golden_cosine(ag + i * V, ac + i * V, V);
            if (!(c >= min_c)) min_c = c;
            mean_c += c / N_PROMPT;
        }
        int same_ref = memcmp(gg, fx->gen, sizeof gg) == 0;
        int same_cpu = memcmp(gg, gc, sizeof gg) == 0;
        printf("  %-16s %-4s/%-4s graphs %d: vs transformers min %.7f mean %.7f | vs cpu min "
               "%.7f mean %.7f | stepwise min %.7f | greedy = ref %d, = cpu %d\n", fx->name,
               sl_dtype_name(ed), sl_dtype_name(dd), graphs, min_t, mean_t, min_c, mean_c,
               step, same_ref, same_cpu);
        if (ed == SL_DTYPE_BF16) {
            CHECK_MSG(min_t >= 0.9999, "%s: cos vs transformers %.7f", fx->name, min_t);
            CHECK_MSG(min_c >= 0.9999, "%s: cos vs cpu %.7f", fx->name, min_c);
            CHECK_MSG(step >= 0.9999, "%s: stepwise cos %.7f", fx->name, step);
            CHECK_MSG(same_ref, "%s: greedy tokens differ from transformers", fx->name);
            CHECK_MSG(same_cpu, "%s: greedy tokens differ from the CPU", fx->name);
        } else {
            double want = ed == SL_DTYPE_Q8 ? 0.999 : 0.99;
            CHECK_MSG(mean_t >= want, "%s %s: mean cos vs transformers %.7f < %g", fx->name,
                      sl_dtype_name(ed), mean_t, want);
        }
    } else {
        CHECK_MSG(0, "%s: runs", fx->name);
    }
    free(ag), free(ac);
    sl_model_close(mg);
    sl_model_close(mc);
    remove_model(path);
}

TEST(cuda_mla_golden) {
    NEED_GPU();
    char names[FX_MAX][64], d[512];
    snprintf(d, sizeof d, "%s/deepseek_v3", golden_fx_root());
    int nf = golden_list_fixtures(d, names, FX_MAX);
    CHECK_MSG(nf >= 4, "%s: want >= 4 fixtures, found %d", d, nf);
    for (int f = 0; f < nf; f++) {
        struct fixture fx;
        if (!fixture_load(names[f], &fx)) {
            CHECK_MSG(0, "fixture %s unreadable", names[f]);
            free(fx.logits);
            continue;
        }
        size_t nl = strlen(names[f]);
        int fp8 = nl > 4 && strcmp(names[f] + nl - 4, "_fp8") == 0;
        golden_one(&fx, SL_DTYPE_BF16, SL_DTYPE_BF16, 1);
        golden_one(&fx, SL_DTYPE_BF16, SL_DTYPE_BF16, 0);
        if (!fp8) {
            golden_one(&fx, SL_DTYPE_Q8, SL_DTYPE_Q8, 1);
            golden_one(&fx, SL_DTYPE_Q4, SL_DTYPE_BF16, 1);
        }
        free(fx.logits);
    }
}

/* Logits bit-identical with every expert resident and with k + 2 slots. */
TEST(cuda_mla_cache_sizes) {
    NEED_GPU();
    char names[FX_MAX][64], d[512];
    snprintf(d, sizeof d, "%s/deepseek_v3", golden_fx_root());
    int nf = golden_list_fixtures(d, names, FX_MAX);
    for (int f = 0; f < nf; f++) {
        struct fixture fx;
        char path[600];
        if (!fixture_load(names[f], &fx) ||
            !convert_to(fx.dir, SL_DTYPE_Q4, SL_DTYPE_BF16, path, sizeof path)) {
            CHECK_MSG(0, "%s: fixture/convert", names[f]);
            free(fx.logits);
            continue;
        }
        struct sl_model *ma = open_dev(path, SL_DEVICE_CUDA, SL_RAM_CACHE_ALL);
        CHECK(ma != NULL);
        struct sl_model *mb = NULL;
        if (ma) {
            struct sl_stats s;
            struct sl_context *tmp;
            CHECK(sl_context_create(ma, NULL, &tmp) == SL_OK);
            sl_context_stats(tmp, &s);
            sl_context_free(tmp);
            int n_moe = 0, ne = 0, k = 0;
            for (int l = 0; l < sl_model_n_layers(ma); l++) {
                struct sl_expert_layer_stats ls;
                n_moe += sl_model_expert_layer_stats(ma, (uint32_t)l, &ls) == SL_OK;
            }
            cJSON *j = NULL;
            size_t len;
            char p[700];
            snprintf(p, sizeof p, "%s/config.json", fx.dir);
            char *txt = golden_read_all(p, &len);
            j = txt ? cJSON_Parse(txt) : NULL;
            const cJSON *a = cJSON_GetObjectItemCaseSensitive(j, "n_routed_experts");
            const cJSON *b = cJSON_GetObjectItemCaseSensitive(j, "num_experts_per_tok");
            ne = cJSON_IsNumber(a) ? a->valueint : 0;
            k = cJSON_IsNumber(b) ? b->valueint : 0;
            cJSON_Delete(j);
            free(txt);
            CHECK(n_moe > 0 && ne > 0 && k > 0);
            if (n_moe > 0 && ne > 0 && k > 0) {
                uint64_t slot = s.gpu_cache_bytes / ((uint64_t)n_moe * ne);
                mb = open_dev(path, SL_DEVICE_CUDA, (uint64_t)(k + 2) * slot);
                CHECK(mb != NULL);
            }
        }
        size_t V = fx.V;
        float *aa = malloc(N_PROMPT * V * 4), *ab = malloc(N_PROMPT * V * 4);
        float *sa = malloc(8 * V * 4), *sb = malloc(8 * V * 4);
        int32_t ga[8], gb[8];
        if (ma && mb) {
            int ok = run_seq(ma, &fx, aa, 8, ga, sa, NULL) && run_seq(mb, &fx, ab, 8, gb, sb, NULL);
            CHECK_MSG(ok, "%s: runs", fx.name);
            if (ok) {
                CHECK_MSG(memcmp(aa, ab, N_PROMPT * V * 4) == 0, "%s: prompt logits differ",
                          fx.name);
                CHECK_MSG(memcmp(sa, sb, 8 * V * 4) == 0, "%s: decode logits differ", fx.name);
                struct sl_stats s;
                struct sl_context *c2;
                CHECK(sl_context_create(mb, NULL, &c2) == SL_OK);
                sl_context_stats(c2, &s);
                sl_context_free(c2);
                printf("  %-16s small GPU cache: %llu hits, %llu uploads\n", fx.name,
                       (unsigned long long)s.gpu_hits, (unsigned long long)s.gpu_uploads);
                CHECK(s.gpu_uploads > 0);
            }
        }
        free(aa), free(ab), free(sa), free(sb);
        sl_model_close(mb);
        sl_model_close(ma);
        remove_model(path);
        free(fx.logits);
    }
}

#endif /* SLUICE_CUDA */

TEST_MAIN()
