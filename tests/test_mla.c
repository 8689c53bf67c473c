/*
 * test_mla.c — multi-head latent attention (src/layer_mla.c) and the other
 * deepseek_v3 pieces that need no fixture.
 *
 * MLA: the absorbed form (what the forward pass runs) and the naive form
 * (K and V reconstructed from the latent cache) agree with each other and
 * with a direct double-precision formula written here from the HF module
 * (its own RMSNorm, interleaved / rotate-half RoPE and softmax), over a
 * prefill chunk, a second chunk and single-token decode steps, with f32 and
 * bf16 weights, q through the low-rank path or directly, interleaved or not,
 * plain RoPE or a YaRN table with its cos/sin factor. The attention scale
 * with mscale_all_dim against transformers' number for DeepSeek-V3.
 * Router: noaux_tc by hand (selection bias, group ranking by top-2 sums,
 * weights from unbiased scores, renormalisation, scaling, ties).
 * FP8: every F8_E4M3 code against the format's definition and known values.
 * Config: DeepSeek-V3's and Kimi K2's config.json, manifest round trip, and
 * every rejection by key name.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "config.h"
#include "cpu/ops_ext.h"
#include "cpu/pool.h"
#include "layer_mla.h"
#include "moe_route.h"
#include "quant.h"
#include "safetensors.h"
#include "sluice.h"
#include "test.h"
#include "config_test.h"
#include "util.h"

/* ---- a random MLA layer ---- */

struct rnd { uint64_t s; };
static float frand(struct rnd *r) { /* uniform in [-1, 1) */
    r->s = r->s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((r->s >> 40) & 0xffffff) / (float)(1 << 23) - 1.0f;
}

struct mat { float *f; void *q; struct weight w; };

static void mat_init(struct mat *m, struct rnd *r, int rows, int cols, float std, int dtype) {
    m->f = malloc((size_t)rows * cols * sizeof(float));
    for (int i = 0; i < rows * cols; i++) m->f[i] = std * frand(r) * 1.7f;
    uint64_t rb = quant_row_bytes(dtype, (uint64_t)cols);
    m->q = malloc((size_t)(rb * rows));
    for (int i = 0; i < rows; i++) {
        quant_row_from_f32(dtype, m->f + (size_t)i * cols, (uint8_t *)m->q + i * rb, (uint64_t)cols);
        /* the reference uses the stored values */
        quant_row_to_f32(dtype, (uint8_t *)m->q + i * rb, m->f + (size_t)i * cols, (uint64_t)cols);
    }
    m->w.data = m->q;
    m->w.dtype = dtype;
    m->w.rows = (uint64_t)rows;
    m->w.cols = (uint64_t)cols;
}

static void mat_free(struct mat *m) {
    free(m->f);
    free(m->q);
}

struct layer {
    struct sl_config c;
    struct mat qa, qb, q, kva, kvb, o;
    float *qa_norm, *kva_norm;
    struct layer_weights L;
};

static void layer_init(struct layer *ly, int lora, int interleave, int dtype, uint64_t seed) {
    memset(ly, 0, sizeof *ly);
    struct sl_config *c = &ly->c;
    c->arch = SL_ARCH_DEEPSEEK_V3;
    c->hidden = 64;
    c->n_heads = 3;
    c->q_lora_rank = lora ? 32 : 0;
    c->kv_lora_rank = 32;
    c->qk_nope_head_dim = 16;
    c->qk_rope_head_dim = 8;
    c->head_dim = 8;
    c->v_head_dim = 24;
    c->rope_theta = 10000.0f;
    c->rope_interleave = interleave;
    struct rnd r = {seed};
    int nh = 3, qk = 24, h = 64;
    if (lora) {
        mat_init(&ly->qa, &r, 32, h, 0.125f, dtype);
        mat_init(&ly->qb, &r, nh * qk, 32, 0.18f, dtype);
        ly->L.wq_a = ly->qa.w;
        ly->L.wq_b = ly->qb.w;
    } else {
        mat_init(&ly->q, &r, nh * qk, h, 0.125f, dtype);
        ly->L.wq = ly->q.w;
    }
    mat_init(&ly->kva, &r, 32 + 8, h, 0.125f, dtype);
    mat_init(&ly->kvb, &r, nh * (16 + 24), 32, 0.18f, dtype);
    mat_init(&ly->o, &r, h, nh * 24, 0.1f, dtype);
    ly->L.wkv_a = ly->kva.w;
    ly->L.wkv_b = ly->kvb.w;
    ly->L.wo = ly->o.w;
    ly->qa_norm = malloc(32 * sizeof(float));
    ly->kva_norm = malloc(32 * sizeof(float));
    for (int i = 0; i < 32; i++) {
        ly->qa_norm[i] = 1 + 0.2f * frand(&r);
        ly->kva_norm[i] = 1 + 0.2f * frand(&r);
    }
    ly->L.q_a_norm = ly->qa_norm;
    ly->L.kv_a_norm = ly->kva_norm;
}

static void layer_free(struct layer *ly) {
    if (ly->c.q_lora_rank) {
        mat_free(&ly->qa);
        mat_free(&ly->qb);
    } else {
        mat_free(&ly->q);
    }
    mat_free(&ly->kva);
    mat_free(&ly->kvb);
    mat_free(&ly->o);
    free(ly->qa_norm);
    free(ly->kva_norm);
}

/* ---- the direct formula (double) ---- */

static void mv(const float *W, const double *x, double *y, int rows, int cols) {
    for (int i = 0; i < rows; i++) {
        double s = 0;
        for (int j = 0; j < cols; j++) s += (double)W[(size_t)i * cols + j] * x[j];
        y[i] = s;
    }
}

static void rms(double *x, const float *w, int n) {
    double ss = 0;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    double inv = 1 / sqrt(ss / n + 1e-6);
    for (int i = 0; i < n; i++) x[i] = x[i] * inv * w[i];
}

/* HF: interleaved pairs (2i, 2i+1) → output [rotated evens | rotated odds];
 * else rotate_half on (i, i + half). Angle p * inv_freq[i] in float. */
static void rope_ref(double *x, int dim, int p, const float *inv_freq, double mscale,
                     int interleave) {
    int half = dim / 2;
    double out[64];
    for (int i = 0; i < half; i++) {
        float f = (float)p * inv_freq[i];
        double c = (float)cos((double)f) * mscale, s = (float)sin((double)f) * mscale;
        double a = interleave ? x[2 * i] : x[i], b = interleave ? x[2 * i + 1] : x[i + half];
        out[i] = a * c - b * s;
        out[i + half] = b * c + a * s;
    }
    memcpy(x, out, (size_t)dim * sizeof(double));
}

/* out (n_tok, hidden) for tokens 0..n_tok-1 at positions 0.. of x. */
static void direct(const struct layer *ly, const float *inv_freq, double mscale,
                   const float *x, int n_tok, double *out) {
    const struct sl_config *c = &ly->c;
    int h = (int)c->hidden, nh = (int)c->n_heads, r = 32, rope = 8, nope = 16, vd = 24;
    int qk = nope + rope;
    double *lat = calloc((size_t)n_tok * r, sizeof(double)), *kr = calloc((size_t)n_tok * rope, sizeof(double));
    double xd[64], qa[32], q[3 * 24], ckv[40], kv[3 * 40], att[3 * 24], sc[64];
    double scale = mla_attn_scale(c);
    for (int t = 0; t < n_tok; t++) {
        for (int i = 0; i < h; i++) xd[i] = x[(size_t)t * h + i];
        if (c->q_lora_rank) {
            mv(ly->qa.f, xd, qa, 32, h);
            rms(qa, ly->qa_norm, 32);
            mv(ly->qb.f, qa, q, nh * qk, 32);
        } else {
            mv(ly->q.f, xd, q, nh * qk, h);
        }
        mv(ly->kva.f, xd, ckv, r + rope, h);
        rms(ckv, ly->kva_norm, r);
        rope_ref(ckv + r, rope, t, inv_freq, mscale, c->rope_interleave);
        memcpy(lat + (size_t)t * r, ckv, r * sizeof(double));
        memcpy(kr + (size_t)t * rope, ckv + r, rope * sizeof(double));
        for (int hh = 0; hh < nh; hh++) rope_ref(q + hh * qk + nope, rope, t, inv_freq, mscale,
                                                 c->rope_interleave);
        for (int hh = 0; hh < nh; hh++) {
            double m = -1e300, z = 0;
            for (int s = 0; s <= t; s++) {
                mv(ly->kvb.f, lat + (size_t)s * r, kv, nh * (nope + vd), r);
                double d = 0;
                for (int j = 0; j < nope; j++) d += q[hh * qk + j] * kv[hh * (nope + vd) + j];
                for (int j = 0; j < rope; j++) d += q[hh * qk + nope + j] * kr[(size_t)s * rope + j];
                sc[s] = d * scale;
                m = sc[s] > m ? sc[s] : m;
            }
            for (int s = 0; s <= t; s++) z += (sc[s] = exp(sc[s] - m));
            for (int j = 0; j < vd; j++) att[hh * vd + j] = 0;
            for (int s = 0; s <= t; s++) {
                mv(ly->kvb.f, lat + (size_t)s * r, kv, nh * (nope + vd), r);
                for (int j = 0; j < vd; j++) att[hh * vd + j] += sc[s] / z * kv[hh * (nope + vd) + nope + j];
            }
        }
        mv(ly->o.f, att, out + (size_t)t * h, h, nh * vd);
    }
    free(lat);
    free(kr);
}

/* Runs the layer over N tokens as chunks {5, 3} then decode steps, in form;
 * out (N, hidden). */
static int run_form(struct sl_pool *pool, const struct layer *ly, const float *inv_freq,
                    float mscale, const float *x, int N, int form, float *out) {
    struct mla_scratch *s;
    int st = mla_scratch_create(&ly->c, 8, &s);
    if (st) return st;
    float *cache = calloc((size_t)N * config_mla_cache_dim(&ly->c), sizeof(float));
    float *scores = calloc((size_t)ly->c.n_heads * N, sizeof(float));
    int h = (int)ly->c.hidden;
    for (int p = 0; p < N && !st;) {
        int n = p == 0 ? 5 : p == 5 ? 3 : 1;
        st = mla_attention(pool, s, &ly->c, &ly->L, inv_freq, mscale, cache, x + (size_t)p * h,
                           out + (size_t)p * h, (uint32_t)p, n, scores, form);
        p += n;
    }
    free(cache);
    free(scores);
    mla_scratch_free(s);
    return st;
}

static void check_layer(struct sl_pool *pool, int lora, int interleave, int dtype, int yarn) {
    enum { N = 12 };
    struct layer ly;
    layer_init(&ly, lora, interleave, dtype, 99 + (uint64_t)(lora * 4 + interleave * 2 + yarn));
    float inv[4], *tab = NULL, msc = 1.0f;
    if (yarn) { /* factor 4 over 4 positions, attention factor and scale */
        ly.c.rope_kind = SL_ROPE_YARN;
        ly.c.rope_factor = 4;
        ly.c.rope_mscale_all_dim = 0.8f;
        CHECK_EQ_INT(ops_rope_yarn_inv_freq(inv, 8, 1e4f, 4, 32, 1, 4, 1), SL_OK);
        tab = inv;
        msc = 1.05f;
    }
    float plain[4];
    for (int i = 0; i < 4; i++) plain[i] = 1.0f / powf(1e4f, (float)(2 * i) / 8.0f);
    struct rnd r = {7};
    static float x[N * 64], a[N * 64], b[N * 64], d32[N * 64];
    static double d[N * 64];
    for (int i = 0; i < N * 64; i++) x[i] = frand(&r);
    CHECK_EQ_INT(run_form(pool, &ly, tab, msc, x, N, MLA_ABSORBED, a), SL_OK);
    CHECK_EQ_INT(run_form(pool, &ly, tab, msc, x, N, MLA_NAIVE, b), SL_OK);
    direct(&ly, tab ? tab : plain, msc, x, N, d);
    for (int i = 0; i < N * 64; i++) d32[i] = (float)d[i];
    char what[96];
    snprintf(what, sizeof what, "absorbed vs naive (lora %d, interleave %d, %s, yarn %d)", lora,
             interleave, sl_dtype_name(dtype), yarn);
    check_tensor(what, a, b, N * 64, 1e-10, -1);
    snprintf(what, sizeof what, "naive vs direct (lora %d, interleave %d, %s, yarn %d)", lora,
             interleave, sl_dtype_name(dtype), yarn);
    check_tensor(what, b, d32, N * 64, 1e-11, -1);
    layer_free(&ly);
}

TEST(mla_forms_agree_with_direct_formula) {
    struct sl_pool *pool;
    CHECK_EQ_INT(pool_create(3, &pool), SL_OK);
    for (int lora = 0; lora < 2; lora++)
        for (int il = 0; il < 2; il++) check_layer(pool, lora, il, SL_DTYPE_F32, 0);
    check_layer(pool, 1, 1, SL_DTYPE_BF16, 0);
    check_layer(pool, 1, 1, SL_DTYPE_F32, 1);
    check_layer(pool, 0, 0, SL_DTYPE_BF16, 1);
    pool_free(pool);
}

/* The cache holds exactly [latent, k_rot] per position, and the forms
 * agree for one token even when the pool has a single thread. */
TEST(mla_cache_layout) {
    struct sl_pool *pool;
    CHECK_EQ_INT(pool_create(1, &pool), SL_OK);
    struct layer ly;
    layer_init(&ly, 0, 0, SL_DTYPE_F32, 5);
    struct mla_scratch *s;
    CHECK_EQ_INT(mla_scratch_create(&ly.c, 2, &s), SL_OK);
    float x[64], out[64], cache[2 * 40], sc[3 * 2];
    struct rnd r = {3};
    for (int i = 0; i < 64; i++) x[i] = frand(&r);
    CHECK_EQ_INT(mla_attention(pool, s, &ly.c, &ly.L, NULL, 1, cache, x, out, 0, 1, sc,
                               MLA_ABSORBED), SL_OK);
    double xd[64], ckv[40];
    for (int i = 0; i < 64; i++) xd[i] = x[i];
    mv(ly.kva.f, xd, ckv, 40, 64);
    rms(ckv, ly.kva_norm, 32);
    for (int i = 0; i < 40; i++) CHECK_NEAR(cache[i], ckv[i], 1e-5); /* position 0: no rotation */
    /* bad arguments */
    CHECK_EQ_INT(mla_attention(pool, s, &ly.c, &ly.L, NULL, 1, cache, x, out, 0, 3, sc,
                               MLA_ABSORBED), SL_ERR_ARG);
    CHECK_EQ_INT(mla_attention(pool, s, &ly.c, &ly.L, NULL, 1, cache, x, out, 0, 1, sc, 7),
                 SL_ERR_ARG);
    mla_scratch_free(s);
    struct sl_config plain = ly.c;
    plain.kv_lora_rank = 0;
    CHECK_EQ_INT(mla_scratch_create(&plain, 2, &s), SL_ERR_ARG);
    CHECK(s == NULL);
    mla_scratch_free(NULL);
    layer_free(&ly);
    pool_free(pool);
}

TEST(mla_attention_scale) {
    struct sl_config c;
    memset(&c, 0, sizeof c);
    c.qk_nope_head_dim = 128;
    c.qk_rope_head_dim = 64;
    CHECK_NEAR(mla_attn_scale(&c), 1 / sqrt(192.0), 1e-7);
    /* DeepSeek-V3: yarn factor 40, mscale_all_dim 1.0; transformers 5.24
     * DeepseekV3Attention.scaling = 0.13523377... */
    c.rope_kind = SL_ROPE_YARN;
    c.rope_factor = 40;
    c.rope_mscale_all_dim = 1.0f;
    double m = 0.1 * log(40.0) + 1;
    CHECK_NEAR(mla_attn_scale(&c), m * m / sqrt(192.0), 1e-7);
    CHECK_NEAR(mla_attn_scale(&c), 0.1352337788, 1e-7);
    c.rope_mscale_all_dim = 0; /* without mscale_all_dim: the plain scale */
    CHECK_NEAR(mla_attn_scale(&c), 1 / sqrt(192.0), 1e-7);
}

/* ---- noaux_tc routing ---- */

static float logit(double p) { return (float)log(p / (1 - p)); }

TEST(route_noaux_tc_by_hand) {
    struct sl_config c;
    memset(&c, 0, sizeof c);
    c.n_experts = 8;
    c.n_experts_used = 2;
    c.n_group = 4;
    c.topk_group = 2;
    c.routed_scaling_factor = 2.5f;
    c.norm_topk_prob = 1;
    /* scores: groups {0,1} {2,3} {4,5} {6,7}. Unbiased group sums: 0.9+0.1,
     * 0.6+0.5, 0.7+0.2, 0.3+0.3. The bias lifts expert 6 and 7 by 0.45:
     * group 3 sums 1.5 and wins, group 1 (1.1) second; group 0 (1.0) is
     * dropped although expert 0 has the best score. */
    double p[8] = {0.9, 0.1, 0.6, 0.5, 0.7, 0.2, 0.3, 0.3};
    float bias[8] = {0, 0, 0, 0, 0, 0, 0.45f, 0.45f}, lg[8], w[2];
    int32_t ids[2];
    for (int i = 0; i < 8; i++) lg[i] = logit(p[i]);
    CHECK_EQ_INT(moe_route_noaux_tc(&c, lg, bias, 1, ids, w), SL_OK);
    /* choice: 0.75 (6), 0.75 (7), 0.6 (2): a tie between 6 and 7 → 6 first */
    CHECK(ids[0] == 6 && ids[1] == 7);
    /* weights from the unbiased scores 0.3, 0.3, renormalised, times 2.5 */
    CHECK_NEAR(w[0], 1.25, 1e-5);
    CHECK_NEAR(w[1], 1.25, 1e-5);
    CHECK_NEAR(lg[0], 0.9, 1e-6); /* logits became the sigmoid scores */
    /* no bias: groups 1 (1.1) and 0 (1.0) → experts 0 (0.9) and 4? no:
     * group 2 sums 0.9 and is dropped, so 0 and 2 */
    for (int i = 0; i < 8; i++) lg[i] = logit(p[i]);
    c.norm_topk_prob = 0;
    c.routed_scaling_factor = 1.0f;
    CHECK_EQ_INT(moe_route_noaux_tc(&c, lg, NULL, 1, ids, w), SL_OK);
    CHECK(ids[0] == 0 && ids[1] == 2);
    CHECK_NEAR(w[0], 0.9, 1e-6);
    CHECK_NEAR(w[1], 0.6, 1e-6);
    /* one group keeps all: plain top-k of biased sigmoid; two tokens */
    c.n_group = 1;
    c.topk_group = 1;
    float lg2[16];
    for (int t = 0; t < 2; t++)
        for (int i = 0; i < 8; i++) lg2[t * 8 + i] = logit(p[(i + 3 * t) % 8]);
    int32_t ids2[4];
    float w2[4];
    CHECK_EQ_INT(moe_route_noaux_tc(&c, lg2, bias, 2, ids2, w2), SL_OK);
    CHECK(ids2[0] == 0 && ids2[1] == 6); /* 0.9, then 0.75 (6, 7 biased; tie) */
    /* token 1: p[(i+3)%8]: expert 5 has 0.9, 6 and 7 0.1+0.45, 0.6+0.45 */
    CHECK(ids2[2] == 7 && ids2[3] == 5);
    CHECK_NEAR(w2[2], 0.6, 1e-6);
    /* impossible shapes */
    c.n_group = 3;
    CHECK_EQ_INT(moe_route_noaux_tc(&c, lg, NULL, 1, ids, w), SL_ERR_ARG);
    c.n_group = 8; /* groups of one expert */
    CHECK_EQ_INT(moe_route_noaux_tc(&c, lg, NULL, 1, ids, w), SL_ERR_ARG);
    c.n_group = 4;
    c.topk_group = 1;
    c.n_experts_used = 3; /* one kept group of 2 cannot give 3 */
    CHECK_EQ_INT(moe_route_noaux_tc(&c, lg, NULL, 1, ids, w), SL_ERR_ARG);
}

/* ---- FP8 ---- */

TEST(f8e4m3_decode) {
    CHECK(st_f8e4m3_to_f32(0x00) == 0.0f && !signbit(st_f8e4m3_to_f32(0x00)));
    CHECK(st_f8e4m3_to_f32(0x80) == 0.0f && signbit(st_f8e4m3_to_f32(0x80)));
    CHECK(st_f8e4m3_to_f32(0x38) == 1.0f);
    CHECK(st_f8e4m3_to_f32(0xb8) == -1.0f);
    CHECK(st_f8e4m3_to_f32(0x7e) == 448.0f);
    CHECK(st_f8e4m3_to_f32(0xfe) == -448.0f);
    CHECK(st_f8e4m3_to_f32(0x01) == ldexpf(1, -9)); /* smallest subnormal */
    CHECK(st_f8e4m3_to_f32(0x07) == 7 * ldexpf(1, -9));
    CHECK(st_f8e4m3_to_f32(0x08) == ldexpf(1, -6)); /* smallest normal */
    CHECK(st_f8e4m3_to_f32(0x3c) == 1.5f);
    CHECK(st_f8e4m3_to_f32(0x40) == 2.0f);
    CHECK(isnan(st_f8e4m3_to_f32(0x7f)) && isnan(st_f8e4m3_to_f32(0xff)));
    /* every finite code: (-1)^s 2^(e-7) (1 + m/8), subnormal 2^-6 m/8;
     * monotonic over the positive codes */
    float prev = -1;
    for (int b = 0; b < 0x7f; b++) {
        int e = b >> 3, m = b & 7;
        double want = e ? ldexp(1 + m / 8.0, e - 7) : ldexp(m / 8.0, -6);
        CHECK_NEAR(st_f8e4m3_to_f32((uint8_t)b), want, 0);
        CHECK_NEAR(st_f8e4m3_to_f32((uint8_t)(b | 0x80)), -want, 0);
        CHECK(st_f8e4m3_to_f32((uint8_t)b) > prev);
        prev = st_f8e4m3_to_f32((uint8_t)b);
    }
}

/* ---- config ---- */

/* DeepSeek-V3's config.json (hub), abridged of keys sluice ignores. */
static const char *ds_cfg =
    "{\"architectures\": [\"DeepseekV3ForCausalLM\"], \"attention_bias\": false,"
    " \"bos_token_id\": 0, \"eos_token_id\": 1, \"ep_size\": 1, \"first_k_dense_replace\": 3,"
    " \"hidden_act\": \"silu\", \"hidden_size\": 7168, \"intermediate_size\": 18432,"
    " \"kv_lora_rank\": 512, \"max_position_embeddings\": 163840, \"model_type\": \"deepseek_v3\","
    " \"moe_intermediate_size\": 2048, \"moe_layer_freq\": 1, \"n_group\": 8,"
    " \"n_routed_experts\": 256, \"n_shared_experts\": 1, \"norm_topk_prob\": true,"
    " \"num_attention_heads\": 128, \"num_experts_per_tok\": 8, \"num_hidden_layers\": 61,"
    " \"num_key_value_heads\": 128, \"num_nextn_predict_layers\": 1, \"q_lora_rank\": 1536,"
    " \"qk_nope_head_dim\": 128, \"qk_rope_head_dim\": 64, \"rms_norm_eps\": 1e-06,"
    " \"rope_scaling\": {\"beta_fast\": 32, \"beta_slow\": 1, \"factor\": 40, \"mscale\": 1.0,"
    " \"mscale_all_dim\": 1.0, \"original_max_position_embeddings\": 4096, \"type\": \"yarn\"},"
    " \"rope_theta\": 10000, \"routed_scaling_factor\": 2.5, \"scoring_func\": \"sigmoid\","
    " \"tie_word_embeddings\": false, \"topk_group\": 4, \"topk_method\": \"noaux_tc\","
    " \"torch_dtype\": \"bfloat16\", \"v_head_dim\": 128, \"vocab_size\": 129280,"
    " \"quantization_config\": {\"activation_scheme\": \"dynamic\", \"fmt\": \"e4m3\","
    " \"quant_method\": \"fp8\", \"weight_block_size\": [128, 128]}}";

TEST(config_deepseek_v3) {
    struct sl_config c;
    roundtrip(ds_cfg, &c);
    CHECK_EQ_INT(c.arch, SL_ARCH_DEEPSEEK_V3);
    CHECK_EQ_INT(c.q_lora_rank, 1536);
    CHECK_EQ_INT(c.kv_lora_rank, 512);
    CHECK_EQ_INT(c.qk_nope_head_dim, 128);
    CHECK_EQ_INT(c.qk_rope_head_dim, 64);
    CHECK_EQ_INT(c.head_dim, 64); /* HF: head_dim = qk_rope_head_dim */
    CHECK_EQ_INT(c.v_head_dim, 128);
    CHECK_EQ_INT(c.n_experts, 256);
    CHECK_EQ_INT(c.moe_ffn, 2048);
    CHECK_EQ_INT(c.ffn, 18432);
    CHECK_EQ_INT(c.n_shared_experts, 1);
    CHECK_EQ_INT(c.n_group, 8);
    CHECK_EQ_INT(c.topk_group, 4);
    CHECK_EQ_INT(c.router_kind, SL_ROUTER_NOAUX_TC);
    CHECK_NEAR(c.routed_scaling_factor, 2.5, 0);
    CHECK_EQ_INT(c.norm_topk_prob, 1);
    CHECK_EQ_INT(c.rope_interleave, 1); /* HF default */
    CHECK(!c.layer_is_moe[0] && !c.layer_is_moe[2] && c.layer_is_moe[3] && c.layer_is_moe[60]);
    CHECK_EQ_INT(c.rope_kind, SL_ROPE_YARN);
    CHECK_NEAR(c.rope_factor, 40, 0);
    CHECK_EQ_INT(c.rope_orig_ctx, 4096);
    CHECK_NEAR(c.rope_attn_factor, 1.0, 0); /* mscale / mscale_all_dim both 1 */
    CHECK_NEAR(c.rope_mscale_all_dim, 1.0, 0);
    /* mscale 0.707 over mscale_all_dim 1: their ratio */
    char b[4096];
    roundtrip(subst(b, sizeof b, ds_cfg, "\"mscale\": 1.0", "\"mscale\": 0.707"), &c);
    double l = log(40.0);
    CHECK_NEAR(c.rope_attn_factor, (0.1 * 0.707 * l + 1) / (0.1 * l + 1), 1e-6);
    /* Kimi K2 style: one group, q_lora null (direct q_proj), 1 dense layer */
    char k2[4096];
    subst(b, sizeof b, ds_cfg, "\"n_group\": 8", "\"n_group\": 1");
    subst(k2, sizeof k2, b, "\"topk_group\": 4", "\"topk_group\": 1");
    subst(b, sizeof b, k2, "\"q_lora_rank\": 1536", "\"q_lora_rank\": null");
    subst(k2, sizeof k2, b, "\"first_k_dense_replace\": 3", "\"first_k_dense_replace\": 1");
    roundtrip(k2, &c);
    CHECK_EQ_INT(c.q_lora_rank, 0);
    CHECK_EQ_INT(c.n_group, 1);
    CHECK(!c.layer_is_moe[0] && c.layer_is_moe[1]);
    /* absent keys take HF's defaults: q_lora_rank 1536, n_shared_experts 1 */
    roundtrip(subst(b, sizeof b, ds_cfg, "\"q_lora_rank\": 1536,", ""), &c);
    CHECK_EQ_INT(c.q_lora_rank, 1536);
    /* transformers 5 spelling: rope_parameters with rope_type */
    roundtrip(subst(b, sizeof b, ds_cfg, "\"type\": \"yarn\"},",
                    "\"rope_type\": \"yarn\"}, \"rope_parameters\": {\"rope_theta\": 10000,"
                    " \"rope_type\": \"yarn\", \"factor\": 40, \"mscale\": 1.0, \"mscale_all_dim\":"
                    " 1.0, \"original_max_position_embeddings\": 4096},"), &c);
    CHECK_EQ_INT(c.rope_kind, SL_ROPE_YARN);
}

TEST(config_deepseek_v3_reject) {
    char b[4096];
    expect_reject(subst(b, sizeof b, ds_cfg, "\"noaux_tc\"", "\"greedy\""), SL_ERR_UNSUPPORTED,
                  "topk_method");
    expect_reject(subst(b, sizeof b, ds_cfg, "\"sigmoid\"", "\"softmax\""), SL_ERR_UNSUPPORTED,
                  "scoring_func");
    expect_reject(subst(b, sizeof b, ds_cfg, "\"moe_layer_freq\": 1", "\"moe_layer_freq\": 2"),
                  SL_ERR_UNSUPPORTED, "moe_layer_freq");
    expect_reject(subst(b, sizeof b, ds_cfg, "\"n_group\": 8", "\"n_group\": 3"), SL_ERR_CONFIG,
                  "n_group");
    expect_reject(subst(b, sizeof b, ds_cfg, "\"n_group\": 8", "\"n_group\": 256"), SL_ERR_CONFIG,
                  "n_group");
    expect_reject(subst(b, sizeof b, ds_cfg, "\"topk_group\": 4", "\"topk_group\": 9"),
                  SL_ERR_CONFIG, "topk_group");
    expect_reject(subst(b, sizeof b, ds_cfg, "\"topk_group\": 4", "\"topk_group\": 0"),
                  SL_ERR_CONFIG, "topk_group");
    expect_reject(subst(b, sizeof b, ds_cfg, "\"num_experts_per_tok\": 8",
                        "\"num_experts_per_tok\": 200"), SL_ERR_CONFIG, "num_experts_per_tok");
    expect_reject(subst(b, sizeof b, ds_cfg, "\"attention_bias\": false", "\"attention_bias\": true"),
                  SL_ERR_UNSUPPORTED, "attention_bias");
    expect_reject(subst(b, sizeof b, ds_cfg, "\"qk_rope_head_dim\": 64", "\"qk_rope_head_dim\": 63"),
                  SL_ERR_CONFIG, "qk_rope_head_dim");
    expect_reject(subst(b, sizeof b, ds_cfg, "\"kv_lora_rank\": 512", "\"kv_lora_rank\": 0"),
                  SL_ERR_CONFIG, "kv_lora_rank");
    expect_reject(subst(b, sizeof b, ds_cfg, "\"first_k_dense_replace\": 3",
                        "\"first_k_dense_replace\": 62"), SL_ERR_CONFIG, "first_k_dense_replace");
    expect_reject(subst(b, sizeof b, ds_cfg, "\"routed_scaling_factor\": 2.5",
                        "\"routed_scaling_factor\": -1"), SL_ERR_CONFIG, "routed_scaling_factor");
    expect_reject(subst(b, sizeof b, ds_cfg, "\"type\": \"yarn\"", "\"type\": \"dynamic\""),
                  SL_ERR_UNSUPPORTED, "dynamic");
    expect_reject(subst(b, sizeof b, ds_cfg, "\"mscale_all_dim\": 1.0", "\"mscale_all_dim\": \"x\""),
                  SL_ERR_CONFIG, "mscale");
    expect_reject(subst(b, sizeof b, ds_cfg, "\"q_lora_rank\": 1536", "\"q_lora_rank\": 0"),
                  SL_ERR_CONFIG, "q_lora_rank");
    expect_reject(subst(b, sizeof b, ds_cfg, "\"first_k_dense_replace\": 3",
                        "\"first_k_dense_replace\": 3, \"mlp_only_layers\": [5]"),
                  SL_ERR_UNSUPPORTED, "mlp_only_layers");
}

TEST_MAIN()
