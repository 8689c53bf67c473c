/*
 * test_cuda_families.c — the CUDA backend on mixtral, olmoe and gpt_oss
 * against the CPU specification and transformers:
 *   per op (host-pointer twins of src/cuda/ops_ext_cuda_test.h vs the
 *     scalar references of src/cpu/ops.h and src/cpu/ops_ext.h, fresh random
 *     inputs, device outputs poisoned with NaN):
 *     q/k norm (per head and over the whole projection, olmoe) + NeoX rope
 *       from the plain and the YaRN table with its attention factor + KV
 *       append: nmse <= 1e-12;
 *     attention with sliding windows and sinks, prompt chunks and decode,
 *       head_dim 32..256: nmse <= 1e-10 vs ops_attention_ext_ref;
 *     decode attention split over spans of positions (flash-decode) up to
 *       3000 positions, with windows and sinks: split and unsplit kernels
 *       each nmse <= 1e-10 vs the reference and vs each other; the split
 *       result bit-identical run to run and whatever n_ctx (the span
 *       boundaries depend only on the position count);
 *     routed experts with gpt-oss's gate/up and down biases and the clamped
 *       SwiGLU (alone and together; Q4 decode kernels, BF16, Q8, unaligned
 *       Q4; one token and a chunk): nmse <= 1e-9;
 *   end to end on every fixture of tests/fixtures/{mixtral,olmoe,gpt_oss}
 *     converted at bf16: logits vs transformers and vs the CPU backend
 *     cosine >= 0.9999 at every position (one prompt chunk, chunks of 7
 *     tokens, and token by token through the decode graph), the 16 greedy
 *     tokens identical to transformers' and the CPU's; q4 experts: mean
 *     cosine vs transformers >= 0.99 and logits bit-identical with every
 *     expert resident and with a GPU cache of k + 2 slots (streaming).
 * Without a GPU (CI) or in a build without CUDA every test is skipped with
 * the reason.
 */
#include <cJSON.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sluice.h"
#include "golden.h"
#include "test.h"

#ifndef SLUICE_CUDA

TEST(cuda_families) { TEST_SKIP("built without CUDA (NO_CUDA=1 or no nvcc): GPU tests not run"); }

#else

#include "cpu/ops.h"
#include "cpu/ops_ext.h"
#include "cuda/cuda.h"
#include "cuda/ops_ext_cuda_test.h"
#include "quant.h"
#include "util.h"

#define N_PROMPT 40
#define N_GEN 16
#define FX_MAX 16

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
static float *rnd(size_t n, float scale) {
    float *x = malloc(n * sizeof(float));
    fill(x, n, scale);
    return x;
}

/* ---- q/k norm + rope (plain, YaRN) + KV append ------------------------- */

TEST(cuda_qk_rope_ext) {
    NEED_GPU();
    /* hd, norm (0 none, 1 per head, 2 whole projection), yarn */
    const int cases[][3] = {{32, 1, 0}, {64, 2, 0}, {128, 0, 1}, {256, 1, 1}, {64, 2, 1}};
    for (int ci = 0; ci < 5; ci++) {
        int hd = cases[ci][0], norm = cases[ci][1], yarn = cases[ci][2];
        int nh = 4, nkv = 2, pos = 9, n = 3, qd = nh * hd, kvd = nkv * hd;
        float *q = rnd((size_t)n * qd, 2.0f), *k = rnd((size_t)n * kvd, 2.0f);
        float *v = rnd((size_t)n * kvd, 2.0f);
        float *qr = malloc((size_t)n * qd * 4), *kr = malloc((size_t)n * kvd * 4);
        float *kc = malloc((size_t)(pos + n) * kvd * 4), *vc = malloc((size_t)(pos + n) * kvd * 4);
        float *qn = rnd(norm == 2 ? (size_t)qd : (size_t)hd, 1.0f);
        float *kn = rnd(norm == 2 ? (size_t)kvd : (size_t)hd, 1.0f);
        float *inv = malloc((size_t)hd / 2 * 4), mscale = 1.0f;
        if (yarn) {
            CHECK(ops_rope_yarn_inv_freq(inv, hd, 150000.0f, 32.0f, 32.0f, 1.0f, 4096, 1) ==
                  SL_OK);
            mscale = 0.1f * logf(32.0f) + 1.0f;
        } else {
            for (int i = 0; i < hd / 2; i++) inv[i] = 1.0f / powf(1e4f, (float)(2 * i) / (float)hd);
        }
        memcpy(qr, q, (size_t)n * qd * 4);
        memcpy(kr, k, (size_t)n * kvd * 4);
        for (int t = 0; t < n; t++) {
            float *qt = qr + (size_t)t * qd, *kt = kr + (size_t)t * kvd;
            if (norm == 1) {
                ops_rmsnorm_heads(qt, qn, nh, hd, 1e-6f);
                ops_rmsnorm_heads(kt, kn, nkv, hd, 1e-6f);
            } else if (norm == 2) {
                ops_rmsnorm(qt, qt, qn, qd, 1e-6f);
                ops_rmsnorm(kt, kt, kn, kvd, 1e-6f);
            }
            CHECK(ops_rope_neox_freqs(qt, nh, hd, hd, pos + t, inv, mscale) == SL_OK);
            CHECK(ops_rope_neox_freqs(kt, nkv, hd, hd, pos + t, inv, mscale) == SL_OK);
        }
        int st = cuda_test_qk_rope_ext(q, k, v, kc, vc, pos, n, nh, nkv, hd, norm ? qn : NULL,
                                       norm ? kn : NULL, norm == 2, 1e-6f, inv, mscale);
        CHECK_MSG(st == SL_OK, "%s", sl_errmsg());
        char what[96];
        snprintf(what, sizeof what, "q hd %d norm %d yarn %d", hd, norm, yarn);
        check_tensor(what, q, qr, (size_t)n * qd, 1e-12, -1);
        snprintf(what, sizeof what, "k cache hd %d norm %d yarn %d", hd, norm, yarn);
        check_tensor(what, kc + (size_t)pos * kvd, kr, (size_t)n * kvd, 1e-12, -1);
        check_tensor("v cache", vc + (size_t)pos * kvd, v, (size_t)n * kvd, 0, 0);
        free(q), free(k), free(v), free(qr), free(kr), free(kc), free(vc), free(qn), free(kn);
        free(inv);
    }
}

/* ---- attention: windows, sinks, split decode --------------------------- */

/* GPU attention_ext vs ops_attention_ext_ref; returns nonzero if it ran. */
static int att_case(int hd, int nh, int nkv, int pos, int n, int n_ctx, int window,
                    int with_sinks, int split, float *out_gpu, float qscale) {
    int kvd = nkv * hd;
    float *q = rnd((size_t)n * nh * hd, qscale), *kc = rnd((size_t)n_ctx * kvd, 1.0f);
    float *vc = rnd((size_t)n_ctx * kvd, 1.0f), *sinks = rnd((size_t)nh, 2.0f);
    float *ref = malloc((size_t)n * nh * hd * 4), *scr = malloc((size_t)nh * (pos + n) * 4);
    float scale = 1.0f / sqrtf((float)hd);
    CHECK(ops_attention_ext_ref(ref, q, kc, vc, n, pos, nh, nkv, hd, kvd, scale, window,
                                with_sinks ? sinks : NULL, scr) == SL_OK);
    int st = cuda_test_attention_ext(q, kc, vc, out_gpu, pos, n, nh, nkv, hd, n_ctx, scale,
                                     window, with_sinks ? sinks : NULL, split);
    CHECK_MSG(st == SL_OK, "%s", sl_errmsg());
    char what[128];
    snprintf(what, sizeof what, "attention hd %d nh %d/%d pos %d n %d ctx %d window %d sinks %d "
             "split %d", hd, nh, nkv, pos, n, n_ctx, window, with_sinks, split);
    check_tensor(what, out_gpu, ref, (size_t)n * nh * hd, 1e-10, -1);
    free(q), free(kc), free(vc), free(sinks), free(ref), free(scr);
    return st == SL_OK;
}

TEST(cuda_attention_window_sinks) {
    NEED_GPU();
    const int hds[] = {32, 64, 128, 256};
    /* pos, n, window, sinks */
    const int cfg[][4] = {{37, 5, 0, 1}, {37, 5, 8, 0}, {37, 5, 8, 1}, {40, 1, 0, 1},
                          {40, 1, 16, 1}, {3, 4, 2, 1}, {0, 1, 5, 1}};
    for (int hi = 0; hi < 4; hi++)
        for (int ci = 0; ci < 7; ci++) {
            int hd = hds[hi], pos = cfg[ci][0], n = cfg[ci][1];
            int nkv = hi == 1 ? 1 : 2;
            float *out = malloc((size_t)n * 4 * hd * 4);
            att_case(hd, 4, nkv, pos, n, pos + n, cfg[ci][2], cfg[ci][3], 1, out, 2.0f);
            free(out);
        }
}

TEST(cuda_attention_split_decode) {
    NEED_GPU();
    /* np (= pos + 1), n_ctx, window, sinks, hd */
    const int cfg[][5] = {{3000, 3000, 0, 0, 128}, {3000, 4096, 0, 1, 128},
                          {3000, 4096, 1000, 1, 64}, {3000, 3000, 100, 0, 256},
                          {1, 4096, 0, 1, 64},       {256, 4096, 0, 0, 64},
                          {257, 4096, 0, 1, 64},     {513, 1024, 0, 1, 32},
                          {700, 1024, 256, 1, 128},  {2048, 2048, 0, 1, 256}};
    for (int ci = 0; ci < 10; ci++) {
        int np = cfg[ci][0], n_ctx = cfg[ci][1], window = cfg[ci][2], sinks = cfg[ci][3];
        int hd = cfg[ci][4], nh = 8, nkv = 2, pos = np - 1;
        size_t no = (size_t)nh * hd;
        float *a = malloc(no * 4), *b = malloc(no * 4), *c = malloc(no * 4);
        uint64_t seed = rng;
        att_case(hd, nh, nkv, pos, 1, n_ctx, window, sinks, 1, a, 4.0f);
        rng = seed; /* the same inputs again */
        att_case(hd, nh, nkv, pos, 1, n_ctx, window, sinks, 0, b, 4.0f);
        rng = seed;
        att_case(hd, nh, nkv, pos, 1, n_ctx, window, sinks, 1, c, 4.0f);
        char what[96];
        snprintf(what, sizeof what, "split vs unsplit np %d ctx %d window %d", np, n_ctx, window);
        check_tensor(what, a, b, no, 1e-10, -1);
        CHECK_MSG(memcmp(a, c, no * 4) == 0, "split attention np %d: not bit-identical run to "
                  "run", np);
        free(a), free(b), free(c);
    }
    /* the same positions in a larger cache: identical bits (the kv rows
     * past np differ; the split boundaries depend on np only) */
    {
        int hd = 128, nh = 8, nkv = 2, kvd = nkv * hd, np = 2500;
        float *q = rnd((size_t)nh * hd, 4.0f), *sinks = rnd((size_t)nh, 2.0f);
        float *kc = rnd((size_t)4096 * kvd, 1.0f), *vc = rnd((size_t)4096 * kvd, 1.0f);
        float *a = malloc((size_t)nh * hd * 4), *b = malloc((size_t)nh * hd * 4);
        float scale = 1.0f / sqrtf((float)hd);
        CHECK(cuda_test_attention_ext(q, kc, vc, a, np - 1, 1, nh, nkv, hd, 4096, scale, 0, sinks,
                                      1) == SL_OK);
        CHECK(cuda_test_attention_ext(q, kc, vc, b, np - 1, 1, nh, nkv, hd, 2600, scale, 0, sinks,
                                      1) == SL_OK);
        CHECK_MSG(memcmp(a, b, (size_t)nh * hd * 4) == 0,
                  "split attention depends on n_ctx (4096 vs 2600)");
        free(q), free(sinks), free(kc), free(vc), free(a), free(b);
    }
}

/* ---- experts: biases, clamped SwiGLU ----------------------------------- */

static void *make_weights(int dtype, int rows, int cols) {
    uint64_t rb = quant_row_bytes(dtype, (uint64_t)cols);
    uint8_t *w = malloc((size_t)rb * rows);
    float *row = malloc((size_t)cols * sizeof(float));
    for (int r = 0; r < rows; r++) {
        fill(row, (size_t)cols, 0.5f);
        quant_row_from_f32(dtype, row, w + (uint64_t)r * rb, (uint64_t)cols);
    }
    free(row);
    return w;
}

TEST(cuda_moe_bias_clamp) {
    NEED_GPU();
    const int shapes[][3] = {{SL_DTYPE_Q4, 512, 768}, {SL_DTYPE_BF16, 64, 32},
                             {SL_DTYPE_Q8, 256, 96}, {SL_DTYPE_Q4, 64, 32}};
    /* biases, limit (0 = plain SwiGLU) */
    const float acts[][2] = {{1, 1.0f}, {1, 0}, {0, 7.0f}, {1, 7.0f}};
    for (int ci = 0; ci < 4; ci++)
        for (int ai = 0; ai < 4; ai++)
            for (int n = 1; n <= 9; n += 8) {
                int dt = shapes[ci][0], hid = shapes[ci][1], ffn = shapes[ci][2], ne = 6, k = 2;
                int bias = acts[ai][0] != 0;
                float limit = acts[ai][1], alpha = 1.702f;
                uint64_t rgu = quant_row_bytes(dt, hid), rdn = quant_row_bytes(dt, ffn);
                uint64_t off[3] = {0, rgu * ffn, 2 * rgu * ffn};
                uint64_t rec = (off[2] + rdn * hid + 4095) / 4096 * 4096;
                uint8_t *recs = calloc(ne, rec);
                for (int e = 0; e < ne; e++)
                    for (int part = 0; part < 3; part++) {
                        int rows = part < 2 ? ffn : hid, cols = part < 2 ? hid : ffn;
                        void *w = make_weights(dt, rows, cols);
                        memcpy(recs + e * rec + off[part], w, quant_row_bytes(dt, cols) * rows);
                        free(w);
                    }
                float *gub = rnd((size_t)ne * 2 * ffn, 1.0f), *dnb = rnd((size_t)ne * hid, 1.0f);
                int32_t ids[9 * 2];
                float wt[9 * 2], *x = malloc((size_t)n * hid * 4);
                float *ref = malloc((size_t)n * hid * 4);
                for (int t = 0; t < n; t++) {
                    ids[t * k] = (t * 5 + 1) % ne; /* two distinct ids per token */
                    ids[t * k + 1] = (t * 5 + 1 + 1 + t % 3) % ne;
                    wt[t * k] = 0.7f, wt[t * k + 1] = 0.3f;
                }
                fill(x, (size_t)n * hid, 1.0f);
                memcpy(ref, x, (size_t)n * hid * 4);
                float *g = malloc(ffn * 4), *u = malloc(ffn * 4), *y = malloc(hid * 4);
                float *sum = malloc(hid * 4);
                for (int t = 0; t < n; t++) {
                    int order[2] = {0, 1};
                    if (ids[t * k + 1] < ids[t * k]) order[0] = 1, order[1] = 0;
                    memset(sum, 0, hid * 4);
                    for (int s = 0; s < k; s++) {
                        int j = t * k + order[s], e = ids[j];
                        const uint8_t *r = recs + (uint64_t)e * rec;
                        ops_matvec_ref(dt, r + off[0], x + t * hid, g, ffn, hid);
                        ops_matvec_ref(dt, r + off[1], x + t * hid, u, ffn, hid);
                        for (int i = 0; bias && i < ffn; i++) { /* HF-interleaved */
                            g[i] += gub[(size_t)e * 2 * ffn + 2 * i];
                            u[i] += gub[(size_t)e * 2 * ffn + 2 * i + 1];
                        }
                        if (limit > 0) ops_swiglu_clamped(g, g, u, ffn, alpha, limit);
                        else ops_swiglu(g, g, u, ffn);
                        ops_matvec_ref(dt, r + off[2], g, y, hid, ffn);
                        if (bias) ops_add(y, dnb + (size_t)e * hid, hid);
                        ops_scale_add(sum, y, wt[j], hid);
                    }
                    ops_add(ref + t * hid, sum, hid);
                }
                int st = cuda_test_moe_ext(recs, rec, off, ne, dt, dt, hid, ffn, ids, wt, n, k,
                                           bias ? gub : NULL, bias ? dnb : NULL, alpha, limit, x);
                CHECK_MSG(st == SL_OK, "%s", sl_errmsg());
                char what[96];
                snprintf(what, sizeof what, "moe %s %dx%d n=%d bias %d limit %g",
                         sl_dtype_name(dt), hid, ffn, n, bias, (double)limit);
                check_tensor(what, x, ref, (size_t)n * hid, 1e-9, -1);
                free(recs), free(gub), free(dnb), free(x), free(ref), free(g), free(u), free(y);
                free(sum);
            }
}

/* ---- end to end --------------------------------------------------------- */

static const char *families[3] = {"mixtral", "olmoe", "gpt_oss"};

struct fixture {
    char dir[512];
    size_t n_vocab;
    int k, ne;                   /* num_experts_per_tok, experts */
    int32_t prompt[N_PROMPT], gen[N_GEN];
    float *logits; /* (N_PROMPT, n_vocab) */
};

/* num_experts_per_tok and num_experts / num_local_experts of the
 * fixture's config.json; nonzero on success. */
static int read_moe_config(struct fixture *fx) {
    char p[600];
    size_t len;
    snprintf(p, sizeof p, "%s/config.json", fx->dir);
    char *txt = golden_read_all(p, &len);
    cJSON *j = txt ? cJSON_Parse(txt) : NULL;
    const cJSON *k = cJSON_GetObjectItemCaseSensitive(j, "num_experts_per_tok");
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "num_local_experts");
    if (!e) e = cJSON_GetObjectItemCaseSensitive(j, "num_experts");
    int ok = cJSON_IsNumber(k) && cJSON_IsNumber(e);
    if (ok) {
        fx->k = (int)k->valuedouble;
        fx->ne = (int)e->valuedouble;
    }
    cJSON_Delete(j);
    free(txt);
    return ok;
}

/* Converts dir at the dtypes into path (a fresh temporary directory). */
static int convert_to(const char *dir, int ed, int dd, char *path, size_t n) {
    char tmp[] = "/tmp/sluice_cf_XXXXXX";
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

static struct sl_model *open_dev(const char *path, int device, uint64_t gpu_cache) {
    struct sl_model_params mp = sl_model_default_params();
    mp.device = device;
    mp.gpu_cache_bytes = gpu_cache;
    /* uploads only: CPU-computed misses (gpu_miss_policy auto/cpu) round
     * differently, and the cache-size test wants identical bits */
    mp.gpu_miss_policy = SL_GPU_MISS_UPLOAD;
    struct sl_model *m = NULL;
    if (sl_model_open(path, &mp, &m) != SL_OK) {
        fprintf(stderr, "    open %s (device %d): %s\n", path, device, sl_errmsg());
        return NULL;
    }
    return m;
}

/* Prompt (chunks of n_batch; 0 = default) with all logits into all
 * (N_PROMPT, V), then n_gen greedy steps (tokens into gen, their logits
 * into steps (n_gen, V) when not NULL). Nonzero on success. */
static int run_seq(struct sl_model *m, const struct fixture *fx, uint32_t n_batch, float *all,
                   int n_gen, int32_t *gen, float *steps) {
    return golden_run_seq(m, n_batch, fx->prompt, N_PROMPT, fx->n_vocab, all, n_gen, gen, steps);
}

/* Token by token on m: min cosine of each step's logits vs ref and vs cpu
 * ((N_PROMPT, V) each). 0 if an sl_eval fails. */
static int stepwise(struct sl_model *m, const struct fixture *fx, const float *cpu,
                    double *min_ref, double *min_cpu) {
    struct sl_context *ctx;
    struct sl_context_params cp = sl_context_default_params();
    if (sl_context_create(m, &cp, &ctx) != SL_OK) return 0;
    size_t V = fx->n_vocab;
    *min_ref = *min_cpu = 2;
    int ok = 1;
    for (int i = 0; ok && i < N_PROMPT; i++) {
        ok = sl_eval(ctx, &fx->prompt[i], 1, NULL) == SL_OK;
        if (!ok) break;
        double a = golden_cosine(sl_logits(ctx), fx->logits + (size_t)i * V, V);
        double b = golden_cosine(sl_logits(ctx), cpu + (size_t)i * V, V);
        if (!(a >= *min_ref)) *min_ref = a;
        if (!(b >= *min_cpu)) *min_cpu = b;
    }
    sl_context_free(ctx);
    return ok;
}

static void golden_bf16(const struct fixture *fx, const char *name, const char *path) {
    struct sl_model *mg = open_dev(path, SL_DEVICE_CUDA, SL_GPU_CACHE_AUTO);
    struct sl_model *mc = open_dev(path, SL_DEVICE_CPU, 0);
    CHECK_MSG(mg && mc, "%s: open (GPU %p, CPU %p)", name, (void *)mg, (void *)mc);
    if (mg && mc) {
        size_t V = fx->n_vocab;
        float *ag = malloc(N_PROMPT * V * 4), *ac = malloc(N_PROMPT * V * 4);
        float *a7 = malloc(N_PROMPT * V * 4);
        int32_t gg[N_GEN], gc[N_GEN], g7[N_GEN];
        CHECK(run_seq(mg, fx, 0, ag, N_GEN, gg, NULL));
        CHECK(run_seq(mc, fx, 0, ac, N_GEN, gc, NULL));
        CHECK(run_seq(mg, fx, 7, a7, N_GEN, g7, NULL));
        double min_t, mean_t, min_c, mean_c, min_7, mean_7, st_t = -1, st_c = -1;
        golden_cos_stats(ag, fx->logits, N_PROMPT, V, &min_t, &mean_t);
        golden_cos_stats(ag, ac, N_PROMPT, V, &min_c, &mean_c);
        golden_cos_stats(a7, fx->logits, N_PROMPT, V, &min_7, &mean_7);
        CHECK(stepwise(mg, fx, ac, &st_t, &st_c));
        int same_ref = memcmp(gg, fx->gen, sizeof gg) == 0;
        int same_cpu = memcmp(gg, gc, sizeof gg) == 0, same_7 = memcmp(g7, fx->gen, sizeof g7) == 0;
        printf("  %-20s bf16: cos min vs transformers %.7f, vs cpu %.7f, chunks of 7 %.7f, "
               "stepwise %.7f / cpu %.7f | greedy = ref %d, = cpu %d, chunked = ref %d\n", name,
               min_t, min_c, min_7, st_t, st_c, same_ref, same_cpu, same_7);
        CHECK_MSG(min_t >= 0.9999, "%s: cos vs transformers %.7f", name, min_t);
        CHECK_MSG(min_c >= 0.9999, "%s: cos vs cpu %.7f", name, min_c);
        CHECK_MSG(min_7 >= 0.9999, "%s: chunks of 7: cos vs transformers %.7f", name, min_7);
        CHECK_MSG(st_t >= 0.9999, "%s: stepwise cos vs transformers %.7f", name, st_t);
        CHECK_MSG(st_c >= 0.9999, "%s: stepwise cos vs cpu %.7f", name, st_c);
        CHECK_MSG(same_ref, "%s: greedy tokens differ from transformers", name);
        CHECK_MSG(same_cpu, "%s: greedy tokens differ from the CPU", name);
        CHECK_MSG(same_7, "%s: chunked prompt: greedy tokens differ from transformers", name);
        free(ag), free(ac), free(a7);
    }
    sl_model_close(mg);
    sl_model_close(mc);
}

/* q4 experts: the CPU's threshold vs transformers; every expert resident vs
 * a GPU cache of k + 2 slots: bit-identical prompt and decode logits. */
static void q4_streaming(const struct fixture *fx, const char *name, const char *path) {
    struct sl_model *ma = open_dev(path, SL_DEVICE_CUDA, SL_RAM_CACHE_ALL);
    CHECK_MSG(ma != NULL, "%s: open q4", name);
    if (!ma) return;
    struct sl_stats s;
    struct sl_context *tmp = NULL;
    CHECK(sl_context_create(ma, NULL, &tmp) == SL_OK);
    sl_context_stats(tmp, &s);
    sl_context_free(tmp);
    int n_moe = 0, k = fx->k, ne = fx->ne;
    for (int l = 0; l < sl_model_n_layers(ma); l++) {
        struct sl_expert_layer_stats ls;
        n_moe += sl_model_expert_layer_stats(ma, (uint32_t)l, &ls) == SL_OK;
    }
    size_t V = fx->n_vocab;
    float *aa = malloc(N_PROMPT * V * 4), *ab = malloc(N_PROMPT * V * 4);
    float *sa = malloc(8 * V * 4), *sb = malloc(8 * V * 4);
    int32_t ga[8], gb[8];
    struct sl_model *mb = NULL;
    if (n_moe && ne) {
        uint64_t slot = s.gpu_cache_bytes / ((uint64_t)n_moe * ne);
        mb = open_dev(path, SL_DEVICE_CUDA, (uint64_t)(k + 2) * slot);
    }
    CHECK_MSG(mb != NULL, "%s: small GPU cache", name);
    if (mb && run_seq(ma, fx, 0, aa, 8, ga, sa) && run_seq(mb, fx, 0, ab, 8, gb, sb)) {
        double mn, mean;
        golden_cos_stats(aa, fx->logits, N_PROMPT, V, &mn, &mean);
        printf("  %-20s q4:   mean cos vs transformers %.7f (min %.7f); small cache "
               "bit-identical: prompt %d, decode %d\n", name, mean, mn,
               memcmp(aa, ab, N_PROMPT * V * 4) == 0, memcmp(sa, sb, 8 * V * 4) == 0);
        CHECK_MSG(mean >= 0.99, "%s: q4 mean cos vs transformers %.7f", name, mean);
        CHECK_MSG(memcmp(aa, ab, N_PROMPT * V * 4) == 0, "%s: prompt logits depend on the "
                  "GPU cache size", name);
        CHECK_MSG(memcmp(sa, sb, 8 * V * 4) == 0, "%s: decode logits depend on the GPU cache "
                  "size", name);
    } else {
        CHECK_MSG(0, "%s: q4 runs", name);
    }
    free(aa), free(ab), free(sa), free(sb);
    sl_model_close(mb);
    sl_model_close(ma);
}

TEST(cuda_families_golden) {
    NEED_GPU();
    for (int f = 0; f < 3; f++) {
        char names[FX_MAX][64], d[512];
        snprintf(d, sizeof d, "%.400s/%s", golden_fx_root(), families[f]);
        int nf = golden_list_fixtures(d, names, FX_MAX);
        CHECK_MSG(nf >= 2, "%s: want >= 2 fixtures, found %d", d, nf);
        for (int i = 0; i < nf; i++) {
            struct fixture fx;
            char name[160];
            memset(&fx, 0, sizeof fx);
            snprintf(name, sizeof name, "%s/%.63s", families[f], names[i]);
            snprintf(fx.dir, sizeof fx.dir, "%.420s/%.63s", d, names[i]);
            if (!golden_fixture_read(fx.dir, 0, N_PROMPT, N_GEN, &fx.n_vocab, fx.prompt, fx.gen,
                                     &fx.logits)) {
                CHECK_MSG(0, "fixture %s", fx.dir);
                continue;
            }
            if (!read_moe_config(&fx)) {
                CHECK_MSG(0, "fixture %s: num_experts_per_tok / experts in config.json", fx.dir);
                free(fx.logits);
                continue;
            }
            char path[600];
            if (convert_to(fx.dir, SL_DTYPE_BF16, SL_DTYPE_BF16, path, sizeof path)) {
                golden_bf16(&fx, name, path);
                remove_model(path);
            } else {
                CHECK_MSG(0, "%s: convert bf16", name);
            }
            if (convert_to(fx.dir, SL_DTYPE_Q4, SL_DTYPE_BF16, path, sizeof path)) {
                q4_streaming(&fx, name, path);
                remove_model(path);
            } else {
                CHECK_MSG(0, "%s: convert q4", name);
            }
            free(fx.logits);
        }
    }
}

#endif /* SLUICE_CUDA */

TEST_MAIN()
