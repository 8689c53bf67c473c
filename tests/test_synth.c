/*
 * test_synth.c — the synthetic model generator (src/synth.c): determinism,
 * a file that opens and re-parses to the requested config, every tensor and
 * expert record with its dtype and shape, weight scales, the routing skew
 * measured independently on the written router, and rejected parameters.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "config.h"
#include "format.h"
#include "sluice.h"
#include "quant.h"
#include "synth.h"
#include "test.h"
#include "util.h"

#define GPT2_TOKENIZER "tests/fixtures/tokenizer/gpt2style/tokenizer.json"

static char tmp_dir[64];

static void remove_tmp_dir(void) { rmdir(tmp_dir); }

static const char *tmp_path(const char *name) {
    static char buf[4][256];
    static int k;
    if (!tmp_dir[0]) {
        snprintf(tmp_dir, sizeof tmp_dir, "/tmp/test_synth.XXXXXX");
        if (!mkdtemp(tmp_dir)) {
            perror("mkdtemp");
            exit(1);
        }
        atexit(remove_tmp_dir);
    }
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmp_dir, name);
    return buf[k];
}

static int exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

static int files_equal(const char *a, const char *b) {
    char *x, *y;
    size_t nx, ny;
    if (sl_read_file(a, &x, &nx) || sl_read_file(b, &y, &ny)) return -1;
    int eq = nx == ny && memcmp(x, y, nx) == 0;
    sl_free(x);
    sl_free(y);
    return eq;
}

static struct synth_params tiny(void) {
    struct synth_params p;
    synth_preset("tiny", &p);
    p.n_threads = 2;
    return p;
}

static struct synth_params tiny_hybrid(void) {
    struct synth_params p;
    synth_preset("tiny-hybrid", &p);
    p.n_threads = 2;
    return p;
}

TEST(test_determinism) {
    struct synth_params p = tiny();
    p.skew = 0.3f; /* exercise the fit as well */
    const char *a = tmp_path("a.sluice"), *b = tmp_path("b.sluice"),
               *c = tmp_path("c.sluice");
    CHECK_EQ_INT(synth_write(&p, a, NULL), SL_OK);
    p.n_threads = 3; /* thread count must not change a byte */
    CHECK_EQ_INT(synth_write(&p, b, NULL), SL_OK);
    CHECK_EQ_INT(files_equal(a, b), 1);
    p.seed = 43;
    CHECK_EQ_INT(synth_write(&p, c, NULL), SL_OK);
    CHECK_EQ_INT(files_equal(a, c), 0);
    unlink(a);
    unlink(b);
    unlink(c);
}

static void check_matrix(const struct sl_file *f, const char *name,
                         int dtype, uint64_t rows, uint64_t cols) {
    const struct sl_tensor_info *t = file_find_tensor(f, name);
    CHECK_MSG(t != NULL, "missing %s", name);
    if (!t) return;
    CHECK_MSG(t->dtype == dtype && t->n_dims == 2 && t->dims[0] == rows &&
                  t->dims[1] == cols,
              "%s: %s [%llu, %llu] n_dims %d", name, sl_dtype_name(t->dtype),
              (unsigned long long)t->dims[0], (unsigned long long)t->dims[1],
              t->n_dims);
    CHECK_EQ_INT(t->size, rows * quant_row_bytes(dtype, cols));
}

static void check_vector(const struct sl_file *f, const char *name,
                         uint64_t n) {
    const struct sl_tensor_info *t = file_find_tensor(f, name);
    CHECK_MSG(t != NULL, "missing %s", name);
    if (!t) return;
    CHECK_MSG(t->dtype == SL_DTYPE_F32 && t->n_dims == 1 && t->dims[0] == n,
              "%s: %s [%llu]", name, sl_dtype_name(t->dtype),
              (unsigned long long)t->dims[0]);
    /* Norm weights are 1 + small noise. */
    const float *v = (const float *)(f->map + t->offset);
    for (uint64_t i = 0; i < n; i++)
        CHECK_MSG(v[i] > 0.85f && v[i] < 1.15f, "%s[%llu] = %g", name,
                  (unsigned long long)i, (double)v[i]);
}

/* Mean square of a stored matrix, dequantized row by row. */
static double tensor_mean_square(const struct sl_file *f,
                                 const struct sl_tensor_info *t) {
    uint64_t rows = t->dims[0], cols = t->dims[1];
    uint64_t rb = quant_row_bytes(t->dtype, cols);
    float *row = malloc(cols * sizeof *row);
    double ss = 0;
    for (uint64_t r = 0; r < rows; r++) {
        quant_row_to_f32(t->dtype, f->map + t->offset + r * rb, row, cols);
        for (uint64_t i = 0; i < cols; i++) ss += (double)row[i] * row[i];
    }
    free(row);
    return ss / (double)(rows * cols);
}

/* The whole file against the config: manifest, tensors, expert records. */
static void check_model(const char *path, const struct synth_params *p,
                        uint32_t n_vocab) {
    struct sl_file f;
    int rc = file_open(&f, path, 1);
    CHECK_MSG(rc == SL_OK, "file_open: %s", sl_errmsg());
    if (rc) return;
    struct sl_config c;
    rc = config_parse(&c, f.manifest, f.manifest_len);
    CHECK_MSG(rc == SL_OK, "config_parse: %s", sl_errmsg());
    const struct sl_config *w = &p->cfg;
    CHECK_EQ_INT(c.arch, SL_ARCH_QWEN3_MOE);
    CHECK_EQ_INT(c.n_layers, w->n_layers);
    CHECK_EQ_INT(c.hidden, w->hidden);
    CHECK_EQ_INT(c.n_heads, w->n_heads);
    CHECK_EQ_INT(c.n_kv_heads, w->n_kv_heads);
    CHECK_EQ_INT(c.head_dim, w->head_dim);
    CHECK_EQ_INT(c.n_vocab, n_vocab);
    CHECK_EQ_INT(c.n_experts, w->n_experts);
    CHECK_EQ_INT(c.n_experts_used, w->n_experts_used);
    CHECK_EQ_INT(c.moe_ffn, w->moe_ffn);
    CHECK_EQ_INT(c.norm_topk_prob, w->norm_topk_prob);
    CHECK_EQ_INT(c.tie_embeddings, w->tie_embeddings);
    CHECK_NEAR(c.rope_theta, w->rope_theta, 1e-3);
    CHECK_NEAR(c.rms_eps, w->rms_eps, 1e-12);
    for (uint32_t l = 0; l < w->n_layers; l++)
        CHECK_EQ_INT(c.layer_is_moe[l], 1);

    uint32_t H = w->hidden, qd = config_q_dim(w), kvd = config_kv_dim(w);
    int dd = p->dense_dtype;
    check_matrix(&f, "model.embed_tokens.weight", dd, n_vocab, H);
    check_matrix(&f, "lm_head.weight", dd, n_vocab, H);
    check_vector(&f, "model.norm.weight", H);
    uint32_t n_tensors = 3;
    char n[300];
    for (uint32_t l = 0; l < w->n_layers; l++) {
#define NAME(s) (snprintf(n, sizeof n, "model.layers.%u.%s", l, s), n)
        check_vector(&f, NAME("input_layernorm.weight"), H);
        check_vector(&f, NAME("post_attention_layernorm.weight"), H);
        check_vector(&f, NAME("self_attn.q_norm.weight"), w->head_dim);
        check_vector(&f, NAME("self_attn.k_norm.weight"), w->head_dim);
        check_matrix(&f, NAME("self_attn.q_proj.weight"), dd, qd, H);
        check_matrix(&f, NAME("self_attn.k_proj.weight"), dd, kvd, H);
        check_matrix(&f, NAME("self_attn.v_proj.weight"), dd, kvd, H);
        check_matrix(&f, NAME("self_attn.o_proj.weight"), dd, H, qd);
        check_matrix(&f, NAME("mlp.gate.weight"), dd, w->n_experts, H);
#undef NAME
        n_tensors += 9;
        const struct sl_expert_layer *el = file_expert_layer(&f, l);
        CHECK_MSG(el != NULL, "layer %u has no experts", l);
        if (!el) continue;
        CHECK_EQ_INT(el->n_experts, w->n_experts);
        const uint64_t shape[3][2] = {{w->moe_ffn, H}, {w->moe_ffn, H},
                                      {H, w->moe_ffn}};
        for (int i = 0; i < 3; i++) {
            CHECK_EQ_INT(el->part[i].dtype, p->expert_dtype);
            CHECK_EQ_INT(el->part[i].rows, shape[i][0]);
            CHECK_EQ_INT(el->part[i].cols, shape[i][1]);
        }
        CHECK_EQ_INT(el->record_size % SL_EXPERT_ALIGN, 0);
    }
    CHECK_EQ_INT(f.n_tensors, n_tensors);
    CHECK_EQ_INT(f.n_expert_layers, w->n_layers);

    /* Scales: embedding unit RMS, projections 1/sqrt(fan_in). */
    const struct sl_tensor_info *t =
        file_find_tensor(&f, "model.embed_tokens.weight");
    if (t) CHECK_NEAR(tensor_mean_square(&f, t), 1.0, 0.05);
    t = file_find_tensor(&f, "model.layers.0.self_attn.o_proj.weight");
    if (t) CHECK_NEAR(tensor_mean_square(&f, t) * qd, 1.0, 0.1);
    /* First expert's down matrix: 1/sqrt(moe_ffn), within q4 error. */
    const struct sl_expert_layer *el = file_expert_layer(&f, 0);
    if (el) {
        const struct sl_expert_part *d = &el->part[2];
        uint64_t rb = quant_row_bytes(d->dtype, d->cols);
        float *row = malloc(d->cols * sizeof *row);
        double ss = 0;
        for (uint64_t r = 0; r < d->rows; r++) {
            quant_row_to_f32(d->dtype, f.map + el->offsets[0] + d->offset +
                                           r * rb, row, d->cols);
            for (uint64_t i = 0; i < d->cols; i++) ss += (double)row[i] * row[i];
        }
        free(row);
        CHECK_NEAR(ss / (double)(d->rows * d->cols) * d->cols, 1.0, 0.15);
    }
    file_close(&f);
}

TEST(test_tiny_layout) {
    struct synth_params p = tiny();
    const char *path = tmp_path("tiny.sluice");
    struct synth_report r;
    CHECK_EQ_INT(synth_write(&p, path, &r), SL_OK);
    check_model(path, &p, 256);
    CHECK(r.expert_bytes > 0 && r.dense_bytes > 0);
    CHECK(r.file_bytes >= r.expert_bytes + r.dense_bytes);
    /* Other dtypes: q8 experts, f32 dense; three layers. */
    p.expert_dtype = SL_DTYPE_Q8;
    p.dense_dtype = SL_DTYPE_F32;
    synth_set_layers(&p, 3);
    CHECK_EQ_INT(synth_write(&p, path, NULL), SL_OK);
    check_model(path, &p, 256);
    unlink(path);
}

TEST(test_demo_with_tokenizer) {
    if (!exists(GPT2_TOKENIZER)) TEST_SKIP("no %s", GPT2_TOKENIZER);
    struct synth_params p;
    CHECK_EQ_INT(synth_preset("demo", &p), SL_OK);
    p.tokenizer_path = GPT2_TOKENIZER;
    const char *path = tmp_path("demo.sluice");
    struct synth_report r;
    double t0 = sl_now();
    int rc = synth_write(&p, path, &r);
    double dt = sl_now() - t0;
    CHECK_MSG(rc == SL_OK, "%s", sl_errmsg());
    CHECK_MSG(dt < 2.0, "demo took %.2f s", dt);
    struct sl_config resolved;
    CHECK_EQ_INT(synth_check(&p, &resolved), SL_OK);
    CHECK_EQ_INT(resolved.n_vocab, 2048); /* the fixture: ids 0..2047 */
    CHECK_EQ_INT(resolved.n_eos, 1);
    CHECK_EQ_INT(resolved.eos_ids[0], 0); /* "<|endoftext|>" */
    check_model(path, &p, resolved.n_vocab);
    struct sl_file f;
    if (file_open(&f, path, 0) == SL_OK) {
        char *tok;
        size_t len;
        CHECK_EQ_INT(sl_read_file(GPT2_TOKENIZER, &tok, &len), SL_OK);
        CHECK(f.tokenizer_len == len && memcmp(f.tokenizer, tok, len) == 0);
        sl_free(tok);
        CHECK(f.tokenizer_config != NULL && f.tokenizer_config_len > 0);
        struct sl_config c;
        CHECK_EQ_INT(config_parse(&c, f.manifest, f.manifest_len), SL_OK);
        CHECK_EQ_INT(c.n_eos, 1);
        CHECK_EQ_INT(c.eos_ids[0], 0);
        file_close(&f);
    }
    unlink(path);
}

/* Routes random inputs (a seed the fit never used) through the router as
 * stored in the file, and compares the Gini with the layer's target. */
static void measure_layers(const char *path, const struct synth_params *p,
                           double *gini) {
    struct sl_file f;
    int rc = file_open(&f, path, 0);
    CHECK_MSG(rc == SL_OK, "%s", sl_errmsg());
    if (rc) return;
    uint32_t E = p->cfg.n_experts, H = p->cfg.hidden;
    float *router = malloc((size_t)E * H * sizeof *router);
    for (uint32_t l = 0; l < p->cfg.n_layers; l++) {
        char n[64];
        snprintf(n, sizeof n, "model.layers.%u.mlp.gate.weight", l);
        const struct sl_tensor_info *t = file_find_tensor(&f, n);
        CHECK(t != NULL);
        if (!t) break;
        uint64_t rb = quant_row_bytes(t->dtype, H);
        for (uint32_t e = 0; e < E; e++)
            quant_row_to_f32(t->dtype, f.map + t->offset + e * rb,
                             router + (size_t)e * H, H);
        struct synth_route_stats st;
        uint64_t counts[64], total = 0;
        CHECK_EQ_INT(synth_route_sim(router, E, H, p->cfg.n_experts_used,
                                     16384, 0xabcdef + l, counts, &st),
                     SL_OK);
        for (uint32_t e = 0; e < E; e++) total += counts[e];
        CHECK_EQ_INT(total, 16384ull * p->cfg.n_experts_used);
        gini[l] = st.gini;
    }
    free(router);
    file_close(&f);
}

TEST(test_skew_fit) {
    struct synth_params p = tiny();
    p.cfg.n_experts = 32;
    p.cfg.n_experts_used = 4;
    p.skew = 0.4f;
    synth_set_layers(&p, 6);
    const char *path = tmp_path("skew.sluice");
    struct synth_report r;
    int rc = synth_write(&p, path, &r);
    CHECK_MSG(rc == SL_OK, "%s", sl_errmsg());
    if (rc) return;
    double gini[6] = {0}, tmin = 1, tmax = 0;
    measure_layers(path, &p, gini);
    for (uint32_t l = 0; l < 6; l++) {
        double t = synth_layer_target(&p, l);
        if (t < tmin) tmin = t;
        if (t > tmax) tmax = t;
        CHECK_MSG(t >= 0.2 - 1e-6 && t <= 0.4 * 1.27 + 1e-6, "target %g", t);
        CHECK_MSG(fabs(gini[l] - t) <= 0.05, "layer %u: gini %.3f, target "
                  "%.3f", l, gini[l], t);
    }
    CHECK_MSG(tmax - tmin > 0.1, "targets do not vary: %g..%g", tmin, tmax);
    /* Stratified: the targets' median is the requested skew. */
    double t6[6];
    for (uint32_t l = 0; l < 6; l++) t6[l] = synth_layer_target(&p, l);
    for (int i = 0; i < 6; i++) /* insertion sort */
        for (int j = i; j > 0 && t6[j] < t6[j - 1]; j--) {
            double x = t6[j];
            t6[j] = t6[j - 1];
            t6[j - 1] = x;
        }
    CHECK_NEAR(0.5 * (t6[2] + t6[3]), 0.4, 0.02);
    CHECK_EQ_INT(r.n_capped, 0);
    CHECK_EQ_INT(synth_layer_target(&p, 6), 0); /* out of range */
    CHECK(r.gini_min <= r.gini_median && r.gini_median <= r.gini_max);
    CHECK(r.gini_max - r.gini_min > 0.1);
    CHECK_NEAR(r.gini_median, 0.4, 0.03);

    /* A target above the reach of 4 experts top-2 is capped and counted. */
    struct synth_params q = tiny();
    q.skew = 0.8f;
    CHECK_EQ_INT(synth_write(&q, path, &r), SL_OK);
    CHECK(r.n_capped > 0);
    CHECK(r.gini_max < 0.8 * 1.27);

    /* skew 0: uniform usage. */
    p.skew = 0;
    CHECK_EQ_INT(synth_write(&p, path, &r), SL_OK);
    measure_layers(path, &p, gini);
    for (uint32_t l = 0; l < 6; l++) {
        CHECK_EQ_INT(synth_layer_target(&p, l), 0);
        CHECK_MSG(gini[l] < 0.1, "layer %u: gini %.3f with skew 0", l,
                  gini[l]);
    }
    unlink(path);
}

TEST(test_usage_stats) {
    /* Hand-computed: counts 0,0,0,4 -> Gini 0.75; one expert covers 50 %. */
    uint64_t c[4] = {0, 4, 0, 0};
    struct synth_route_stats st;
    synth_usage_stats(c, 4, &st);
    CHECK_NEAR(st.gini, 0.75, 1e-12);
    CHECK_EQ_INT(st.n_cover50, 1);
    CHECK_NEAR(st.top20_share, 1.0, 1e-12);
    uint64_t u[40];
    for (int i = 0; i < 40; i++) u[i] = 5;
    synth_usage_stats(u, 40, &st);
    CHECK_NEAR(st.gini, 0.0, 1e-12);
    CHECK_EQ_INT(st.n_cover50, 20);
    CHECK_NEAR(st.top20_share, 0.5, 1e-12);
    /* Routing: a router with one dominant row wins every token's top-1,
     * and ties go to the lower index (zero rows tie at logit 0). */
    float router[3 * 32] = {0};
    for (int i = 0; i < 32; i++) router[32 + i] = 0; /* row 1 zero */
    struct synth_route_stats s2;
    uint64_t counts[3];
    CHECK_EQ_INT(synth_route_sim(router, 3, 32, 2, 100, 1, counts, &s2),
                 SL_OK);
    CHECK_EQ_INT(counts[0], 100);
    CHECK_EQ_INT(counts[1], 100);
    CHECK_EQ_INT(counts[2], 0);
    CHECK_EQ_INT(synth_route_sim(router, 3, 32, 4, 100, 1, counts, &s2),
                 SL_ERR_ARG);
}

TEST(test_presets) {
    struct synth_params p;
    CHECK_EQ_INT(synth_preset("a3b-cpu", &p), SL_OK);
    CHECK_EQ_INT(p.cfg.n_layers, 8);
    CHECK_EQ_INT(p.cfg.hidden, 2048);
    CHECK_EQ_INT(p.cfg.n_heads, 32);
    CHECK_EQ_INT(p.cfg.n_kv_heads, 4);
    CHECK_EQ_INT(p.cfg.head_dim, 128);
    CHECK_EQ_INT(p.cfg.n_experts, 128);
    CHECK_EQ_INT(p.cfg.n_experts_used, 8);
    CHECK_EQ_INT(p.cfg.moe_ffn, 768);
    CHECK_EQ_INT(p.cfg.n_vocab, 151936);
    CHECK_EQ_INT(p.cfg.norm_topk_prob, 1);
    CHECK_EQ_INT(p.cfg.tie_embeddings, 0);
    CHECK_EQ_INT(p.expert_dtype, SL_DTYPE_Q4);
    CHECK_EQ_INT(p.dense_dtype, SL_DTYPE_BF16);
    CHECK_NEAR(p.skew, 0.4, 1e-6);
    CHECK_EQ_INT(synth_check(&p, NULL), SL_OK);
    CHECK_EQ_INT(synth_preset("a3b-gpu", &p), SL_OK);
    CHECK_EQ_INT(p.cfg.n_layers, 48);
    CHECK_EQ_INT(synth_preset("demo", &p), SL_OK);
    CHECK_EQ_INT(p.cfg.n_experts, 16);
    /* demo without a tokenizer has no vocabulary. */
    CHECK_EQ_INT(synth_check(&p, NULL), SL_ERR_ARG);
    CHECK(strstr(sl_errmsg(), "--tokenizer") != NULL);
    CHECK_EQ_INT(synth_preset("nope", &p), SL_ERR_ARG);
    CHECK(strstr(sl_errmsg(), "a3b-cpu") != NULL);
    CHECK_EQ_INT(synth_set_layers(&p, 0), SL_ERR_ARG);
    CHECK_EQ_INT(synth_set_layers(&p, SL_MAX_LAYERS + 1), SL_ERR_ARG);
}

/* Each bad parameter fails with a message naming it and leaves no file. */
static void expect_bad(struct synth_params *p, const char *path, int status,
                       const char *needle) {
    int rc = synth_write(p, path, NULL);
    CHECK_MSG(rc == status, "got %d (%s), want %d", rc, sl_errmsg(), status);
    CHECK_MSG(strstr(sl_errmsg(), needle) != NULL, "message '%s' lacks '%s'",
              sl_errmsg(), needle);
    char tmp[300];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    CHECK(!exists(path) && !exists(tmp));
}

TEST(test_bad_params) {
    const char *path = tmp_path("bad.sluice");
    struct synth_params p = tiny();
    p.cfg.n_experts_used = 5; /* > 4 experts */
    expect_bad(&p, path, SL_ERR_ARG, "top-k 5");
    p = tiny();
    p.cfg.n_experts_used = 0;
    expect_bad(&p, path, SL_ERR_ARG, "top-k 0");
    p = tiny();
    p.skew = 0.95f;
    expect_bad(&p, path, SL_ERR_ARG, "skew");
    p = tiny();
    p.skew = -0.1f;
    expect_bad(&p, path, SL_ERR_ARG, "skew");
    p = tiny();
    p.cfg.hidden = 48; /* q4 needs multiples of 32 */
    expect_bad(&p, path, SL_ERR_ARG, "multiples of 32");
    p = tiny();
    p.cfg.n_kv_heads = 3;
    expect_bad(&p, path, SL_ERR_ARG, "kv heads");
    p = tiny();
    p.expert_dtype = SL_DTYPE_F16;
    expect_bad(&p, path, SL_ERR_ARG, "expert dtype f16");
    p = tiny();
    p.cfg.n_eos = 1;
    p.cfg.eos_ids[0] = 256;
    expect_bad(&p, path, SL_ERR_ARG, "eos id 256");
    p = tiny();
    snprintf(p.cfg.model_type, sizeof p.cfg.model_type, "mixtral");
    expect_bad(&p, path, SL_ERR_UNSUPPORTED, "mixtral");

    /* Tokenizer: larger than n_vocab, missing, not JSON, no vocab. */
    p = tiny();
    if (exists(GPT2_TOKENIZER)) {
        p.tokenizer_path = GPT2_TOKENIZER;
        expect_bad(&p, path, SL_ERR_ARG, "2048 tokens, more than the "
                   "model's n_vocab 256");
    }
    p.tokenizer_path = tmp_path("missing.json");
    expect_bad(&p, path, SL_ERR_IO, "missing.json");
    const char *bad_json = tmp_path("bad.json");
    FILE *fp = fopen(bad_json, "w");
    fputs("{\"model\": {\"vocab\": ", fp);
    fclose(fp);
    p.tokenizer_path = bad_json;
    expect_bad(&p, path, SL_ERR_CONFIG, "not valid JSON");
    fp = fopen(bad_json, "w");
    fputs("{\"model\": {\"type\": \"BPE\"}}", fp);
    fclose(fp);
    expect_bad(&p, path, SL_ERR_CONFIG, "no model.vocab");
    unlink(bad_json);

    /* Unwritable output. */
    p = tiny();
    const char *nowhere = "/nonexistent-dir/x.sluice";
    int rc = synth_write(&p, nowhere, NULL);
    CHECK(rc != SL_OK);
    CHECK_MSG(strstr(sl_errmsg(), "nonexistent-dir") != NULL, "%s",
              sl_errmsg());
}

TEST(test_alloc_failures) {
    /* Every allocation failure is reported (no crash, no file left); the
     * countdown eventually passes all of them. */
    const char *path = tmp_path("oom.sluice");
    char tmp[300];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    for (int hybrid = 0; hybrid < 2; hybrid++) {
        struct synth_params p = hybrid ? tiny_hybrid() : tiny();
        p.n_threads = 1;
        int rc = -1;
        long n;
        for (n = 1; n < 4000 && rc != SL_OK; n++) {
            sl_alloc_fail_after(n);
            rc = synth_write(&p, path, NULL);
            sl_alloc_fail_after(0);
            if (rc != SL_OK) {
                CHECK_MSG(sl_errmsg()[0] != 0, "allocation %ld: no message", n);
                CHECK_MSG(!exists(path) && !exists(tmp), "allocation %ld: "
                          "file left behind", n);
            }
        }
        CHECK_MSG(rc == SL_OK, "still failing after %ld allocations", n);
        CHECK(n > 5);
        unlink(path);
    }
}

/* ---- qwen3_5_moe (hybrid) ---------------------------------------------- */

/* Every tensor model.c's bind_layer_hybrid binds, with dtype and shape. */
static void check_hybrid_layout(const char *path, const struct synth_params *p) {
    struct sl_file f;
    int rc = file_open(&f, path, 1);
    CHECK_MSG(rc == SL_OK, "file_open: %s", sl_errmsg());
    if (rc) return;
    struct sl_config c;
    rc = config_parse(&c, f.manifest, f.manifest_len);
    CHECK_MSG(rc == SL_OK, "config_parse: %s", sl_errmsg());
    const struct sl_config *w = &p->cfg;
    CHECK_EQ_INT(c.arch, SL_ARCH_QWEN3_5_MOE);
    CHECK(strcmp(c.model_type, "qwen3_5_moe_text") == 0);
    CHECK_EQ_INT(c.n_layers, w->n_layers);
    CHECK_EQ_INT(c.lin_k_heads, w->lin_k_heads);
    CHECK_EQ_INT(c.lin_v_heads, w->lin_v_heads);
    CHECK_EQ_INT(c.lin_k_dim, w->lin_k_dim);
    CHECK_EQ_INT(c.lin_v_dim, w->lin_v_dim);
    CHECK_EQ_INT(c.lin_conv, w->lin_conv);
    CHECK_EQ_INT(c.shared_ffn, w->shared_ffn);
    CHECK_EQ_INT(c.rope_dim, w->head_dim / 4);
    CHECK_EQ_INT(c.attn_gate, 1);
    for (uint32_t l = 0; l < w->n_layers; l++) {
        CHECK_EQ_INT(c.layer_linear[l], (l + 1) % 4 != 0);
        CHECK_EQ_INT(c.layer_is_moe[l], 1);
    }
    uint32_t H = w->hidden, qd = config_q_dim(w), kvd = config_kv_dim(w);
    uint32_t cd = config_lin_conv_dim(w), vd = config_lin_value_dim(w);
    uint32_t nv = w->lin_v_heads, sf = w->shared_ffn;
    int dd = p->dense_dtype, f32 = SL_DTYPE_F32;
    uint32_t n_tensors = 3;
    char n[300];
    for (uint32_t l = 0; l < w->n_layers; l++) {
#define NAME(s) (snprintf(n, sizeof n, "model.layers.%u.%s", l, s), n)
        check_vector(&f, NAME("input_layernorm.weight"), H);
        check_vector(&f, NAME("post_attention_layernorm.weight"), H);
        if ((l + 1) % 4) {
            check_matrix(&f, NAME("linear_attn.in_proj_qkv.weight"), dd, cd, H);
            check_matrix(&f, NAME("linear_attn.in_proj_z.weight"), dd, vd, H);
            check_matrix(&f, NAME("linear_attn.in_proj_b.weight"), f32, nv, H);
            check_matrix(&f, NAME("linear_attn.in_proj_a.weight"), f32, nv, H);
            check_matrix(&f, NAME("linear_attn.conv1d.weight"), f32, cd,
                         w->lin_conv);
            check_vector(&f, NAME("linear_attn.norm.weight"), w->lin_v_dim);
            check_matrix(&f, NAME("linear_attn.out_proj.weight"), dd, H, vd);
            const struct sl_tensor_info *a = file_find_tensor(
                &f, NAME("linear_attn.A_log"));
            const struct sl_tensor_info *b = file_find_tensor(
                &f, NAME("linear_attn.dt_bias"));
            CHECK(a && a->dtype == f32 && a->n_dims == 1 && a->dims[0] == nv);
            CHECK(b && b->dtype == f32 && b->n_dims == 1 && b->dims[0] == nv);
            n_tensors += 9;
        } else {
            check_matrix(&f, NAME("self_attn.q_proj.weight"), dd, 2 * qd, H);
            check_matrix(&f, NAME("self_attn.k_proj.weight"), dd, kvd, H);
            check_matrix(&f, NAME("self_attn.v_proj.weight"), dd, kvd, H);
            check_matrix(&f, NAME("self_attn.o_proj.weight"), dd, H, qd);
            check_vector(&f, NAME("self_attn.q_norm.weight"), w->head_dim);
            check_vector(&f, NAME("self_attn.k_norm.weight"), w->head_dim);
            n_tensors += 6;
        }
        check_matrix(&f, NAME("mlp.gate.weight"), dd, w->n_experts, H);
        check_matrix(&f, NAME("mlp.shared_expert.gate_proj.weight"), dd, sf, H);
        check_matrix(&f, NAME("mlp.shared_expert.up_proj.weight"), dd, sf, H);
        check_matrix(&f, NAME("mlp.shared_expert.down_proj.weight"), dd, H, sf);
        const struct sl_tensor_info *g = file_find_tensor(
            &f, NAME("mlp.shared_expert_gate.weight"));
        CHECK(g && g->dtype == f32 && g->n_dims == 1 && g->dims[0] == H);
#undef NAME
        n_tensors += 7;
        const struct sl_expert_layer *el = file_expert_layer(&f, l);
        CHECK_MSG(el && el->n_experts == w->n_experts, "layer %u experts", l);
        if (el) CHECK_EQ_INT(el->part[2].dtype, p->expert_dtype);
    }
    CHECK_EQ_INT(f.n_tensors, n_tensors);
    CHECK_EQ_INT(f.n_expert_layers, w->n_layers);
    file_close(&f);
}

/* Opens the model and evaluates n tokens: every logit finite, spread. */
static void eval_model(const char *path, int n) {
    struct sl_model_params mp = sl_model_default_params();
    mp.n_threads = 2;
    struct sl_model *m = NULL;
    int rc = sl_model_open(path, &mp, &m);
    CHECK_MSG(rc == SL_OK, "sl_model_open: %s", sl_errmsg());
    if (rc) return;
    struct sl_context_params cp = sl_context_default_params();
    cp.n_ctx = 64;
    struct sl_context *ctx = NULL;
    rc = sl_context_create(m, &cp, &ctx);
    CHECK_MSG(rc == SL_OK, "sl_context_create: %s", sl_errmsg());
    int32_t nv = sl_model_n_vocab(m);
    int32_t toks[16];
    for (int i = 0; i < n && i < 16; i++) toks[i] = (int32_t)((i * 37 + 5) % nv);
    float *all = malloc((size_t)n * (size_t)nv * sizeof *all);
    rc = ctx ? sl_eval(ctx, toks, (size_t)n, all) : SL_ERR_ARG;
    CHECK_MSG(rc == SL_OK, "sl_eval: %s", sl_errmsg());
    /* Then one decode step (the recurrent path after the chunked prompt). */
    if (!rc) rc = sl_eval(ctx, toks, 1, NULL);
    CHECK_MSG(rc == SL_OK, "sl_eval (decode): %s", sl_errmsg());
    if (!rc) {
        double ss = 0;
        int finite = 1;
        for (int64_t i = 0; i < (int64_t)n * nv; i++) {
            finite &= isfinite(all[i]);
            ss += (double)all[i] * all[i];
        }
        const float *last = sl_logits(ctx);
        for (int32_t i = 0; i < nv; i++) finite &= isfinite(last[i]);
        CHECK(finite);
        double rms = sqrt(ss / ((double)n * nv));
        CHECK_MSG(rms > 0.1 && rms < 10, "logit rms %g", rms);
    }
    free(all);
    sl_context_free(ctx);
    sl_model_close(m);
}

TEST(test_hybrid_tiny) {
    struct synth_params p = tiny_hybrid();
    p.skew = 0.3f; /* exercise the router fit */
    const char *a = tmp_path("h1.sluice"), *b = tmp_path("h2.sluice");
    struct synth_report r;
    CHECK_EQ_INT(synth_write(&p, a, &r), SL_OK);
    CHECK(r.expert_bytes > 0 && r.dense_bytes > 0);
    p.n_threads = 3;
    CHECK_EQ_INT(synth_write(&p, b, NULL), SL_OK);
    CHECK_EQ_INT(files_equal(a, b), 1);
    check_hybrid_layout(a, &p);
    eval_model(a, 5);
    /* Fewer and more layers keep the 3 : 1 pattern; q8 dense. */
    synth_set_layers(&p, 9);
    p.dense_dtype = SL_DTYPE_Q8;
    CHECK_EQ_INT(synth_write(&p, b, NULL), SL_OK);
    check_hybrid_layout(b, &p);
    eval_model(b, 3);
    synth_set_layers(&p, 2); /* linear layers only */
    CHECK_EQ_INT(synth_write(&p, b, NULL), SL_OK);
    check_hybrid_layout(b, &p);
    eval_model(b, 2);
    unlink(a);
    unlink(b);
}

TEST(test_hybrid_presets) {
    struct synth_params p;
    CHECK_EQ_INT(synth_preset("a17b", &p), SL_OK);
    const struct sl_config *c = &p.cfg;
    CHECK_EQ_INT(c->arch, SL_ARCH_QWEN3_5_MOE);
    CHECK_EQ_INT(c->n_layers, 4);
    CHECK_EQ_INT(c->hidden, 4096);
    CHECK_EQ_INT(c->n_heads, 32);
    CHECK_EQ_INT(c->n_kv_heads, 2);
    CHECK_EQ_INT(c->head_dim, 256);
    CHECK_EQ_INT(c->rope_dim, 64);
    CHECK_EQ_INT(c->lin_k_heads, 16);
    CHECK_EQ_INT(c->lin_v_heads, 64);
    CHECK_EQ_INT(c->lin_k_dim, 128);
    CHECK_EQ_INT(c->lin_v_dim, 128);
    CHECK_EQ_INT(c->lin_conv, 4);
    CHECK_EQ_INT(c->n_experts, 512);
    CHECK_EQ_INT(c->n_experts_used, 10);
    CHECK_EQ_INT(c->moe_ffn, 1024);
    CHECK_EQ_INT(c->shared_ffn, 1024);
    CHECK_EQ_INT(c->n_vocab, 248320);
    CHECK_EQ_INT(c->n_eos, 2);
    CHECK_EQ_INT(p.expert_dtype, SL_DTYPE_Q4);
    CHECK_EQ_INT(p.dense_dtype, SL_DTYPE_BF16);
    CHECK_EQ_INT(synth_check(&p, NULL), SL_OK);
    int pattern[4] = {1, 1, 1, 0};
    for (int i = 0; i < 4; i++) CHECK_EQ_INT(c->layer_linear[i], pattern[i]);
    CHECK_EQ_INT(synth_set_layers(&p, 60), SL_OK);
    for (int i = 0; i < 60; i++) CHECK_EQ_INT(c->layer_linear[i], (i + 1) % 4 != 0);
    CHECK_EQ_INT(synth_preset("a3b35", &p), SL_OK);
    CHECK_EQ_INT(c->hidden, 2048);
    CHECK_EQ_INT(c->n_heads, 16);
    CHECK_EQ_INT(c->n_kv_heads, 2);
    CHECK_EQ_INT(c->head_dim, 256);
    CHECK_EQ_INT(c->lin_v_heads, 32);
    CHECK_EQ_INT(c->n_experts, 256);
    CHECK_EQ_INT(c->n_experts_used, 8);
    CHECK_EQ_INT(c->moe_ffn, 512);
    CHECK_EQ_INT(c->shared_ffn, 512);
    CHECK_EQ_INT(synth_check(&p, NULL), SL_OK);
    CHECK(strstr(synth_preset_names(), "tiny-hybrid") != NULL);
    /* Switching back to a qwen3_moe preset clears the hybrid fields. */
    CHECK_EQ_INT(synth_preset("tiny", &p), SL_OK);
    CHECK_EQ_INT(c->arch, SL_ARCH_QWEN3_MOE);
    CHECK_EQ_INT(c->lin_v_heads, 0);
}

TEST(test_hybrid_bad_params) {
    const char *path = tmp_path("hbad.sluice");
    struct synth_params p = tiny_hybrid();
    p.cfg.lin_v_heads = 3; /* not a multiple of 2 key heads */
    expect_bad(&p, path, SL_ERR_ARG, "3 linear value heads");
    p = tiny_hybrid();
    p.cfg.lin_k_dim = 0;
    expect_bad(&p, path, SL_ERR_ARG, "linear attention heads");
    p = tiny_hybrid();
    p.cfg.lin_v_dim = 2048;
    expect_bad(&p, path, SL_ERR_ARG, "above 1024");
    p = tiny_hybrid();
    p.cfg.lin_conv = 1;
    expect_bad(&p, path, SL_ERR_ARG, "conv kernel 1");
    p = tiny_hybrid();
    p.cfg.rope_dim = 3;
    expect_bad(&p, path, SL_ERR_ARG, "rotary dims 3");
    p = tiny_hybrid();
    p.cfg.shared_ffn = 0;
    expect_bad(&p, path, SL_ERR_ARG, "shared expert");
    p = tiny_hybrid();
    p.cfg.attn_gate = 0;
    expect_bad(&p, path, SL_ERR_ARG, "attn_gate");
    p = tiny_hybrid();
    p.cfg.layer_is_moe[1] = 0;
    p.cfg.ffn = 64;
    expect_bad(&p, path, SL_ERR_ARG, "layer 1 is dense");
    p = tiny_hybrid();
    p.cfg.shared_ffn = 48; /* q8 rows need multiples of 32 */
    p.dense_dtype = SL_DTYPE_Q8;
    expect_bad(&p, path, SL_ERR_ARG, "shared ffn is 48");
    p = tiny_hybrid();
    snprintf(p.cfg.model_type, sizeof p.cfg.model_type, "qwen3_next");
    expect_bad(&p, path, SL_ERR_UNSUPPORTED, "qwen3_next");
}

/* ---- bounded memory ---------------------------------------------------- */

TEST(test_stream_memory) {
    /* A 327.7 MB f32 embedding (80000 x 1024) is written in row blocks
     * (src/synth.c, SYNTH_BLOCK_BYTES): the writing child's peak RSS stays
     * far below the tensor. Before streaming it held the tensor whole. */
    enum { V = 80000, HB = 1024, RSS_BOUND_MB = 150 };
    struct synth_params p = tiny();
    p.cfg.n_vocab = V;
    p.cfg.hidden = HB;
    p.cfg.tie_embeddings = 1;
    p.dense_dtype = SL_DTYPE_F32;
    const char *path = tmp_path("big.sluice");
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        int rc = synth_write(&p, path, NULL);
        if (rc) fprintf(stderr, "synth_write: %s\n", sl_errmsg());
        _exit(rc ? 1 : 0);
    }
    CHECK(pid > 0);
    if (pid <= 0) return;
    int status = 0;
    struct rusage ru;
    memset(&ru, 0, sizeof ru);
    CHECK_EQ_INT(wait4(pid, &status, 0, &ru), pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    double emb_mb = (double)V * HB * 4 / 1e6;
    double peak_mb = (double)ru.ru_maxrss * 1024 / 1e6;
    fprintf(stderr, "  synth of a %.1f MB f32 embedding: child peak RSS %.1f "
            "MB (bound %d)\n", emb_mb, peak_mb, RSS_BOUND_MB);
    CHECK_MSG(peak_mb < RSS_BOUND_MB, "peak RSS %.1f MB >= %d MB: a dense "
              "tensor of %.1f MB is held whole", peak_mb, RSS_BOUND_MB, emb_mb);

    /* The file verifies; rows from different blocks (1024 rows of 4 KB
     * each here) are distinct draws with unit RMS, the last row included. */
    struct sl_file f;
    CHECK_EQ_INT(file_open(&f, path, 1), SL_OK);
    const struct sl_tensor_info *t =
        file_find_tensor(&f, "model.embed_tokens.weight");
    CHECK(t != NULL && t->dtype == SL_DTYPE_F32 &&
          t->size == (uint64_t)V * HB * 4);
    CHECK(file_find_tensor(&f, "lm_head.weight") == NULL);
    FILE *fp = fopen(path, "rb");
    CHECK(fp != NULL);
    if (t && fp) {
        static const uint64_t rows[] = {0, 1023, 1024, 2047, 2048, 40000,
                                        V - 1};
        enum { NR = sizeof rows / sizeof rows[0] };
        static float got[NR][HB];
        for (int i = 0; i < NR; i++) {
            CHECK(fseeko(fp, (off_t)(t->offset + rows[i] * HB * 4),
                         SEEK_SET) == 0);
            CHECK(fread(got[i], sizeof got[i], 1, fp) == 1);
            double ss = 0;
            for (int c = 0; c < HB; c++) ss += (double)got[i][c] * got[i][c];
            double rms = sqrt(ss / HB);
            CHECK_MSG(rms > 0.9 && rms < 1.1, "row %llu: rms %.3f",
                      (unsigned long long)rows[i], rms);
            for (int j = 0; j < i; j++)
                CHECK_MSG(memcmp(got[i], got[j], sizeof got[i]) != 0,
                          "rows %llu and %llu are equal",
                          (unsigned long long)rows[j],
                          (unsigned long long)rows[i]);
        }
    }
    if (fp) fclose(fp);
    file_close(&f);
    unlink(path);
}

TEST_MAIN()
