/*
 * test_golden_hybrid.c — qwen3_next and qwen3_5_moe (Gated DeltaNet +
 * gated attention + shared expert) against HF transformers.
 *
 * Golden: every fixture directory under tests/fixtures/{qwen3_next,
 * qwen3_5_moe}/ (written by tests/gen/gen_qwen3_next.py: fused and split
 * GDN projections, per-expert and fused experts, the multimodal wrapper
 * with mtp.* tensors) is converted with sl_convert and run on its 40-token
 * prompt (all logits: the chunked delta rule) and a 16-token greedy decode
 * (the recurrent step):
 *   bf16 experts + bf16 dense: cosine >= 0.9999 at every position, as one
 *       prompt, token by token, and in chunks of 7 (state carried across
 *       forward calls); greedy tokens identical;
 *   q8 + q8: mean cosine >= 0.999;   q4 experts + bf16 dense: >= 0.99.
 * Also: sl_context_reset clears the recurrent state (same logits again),
 * config parsing of both families (hub and transformers-5 spellings, the
 * wrapper; every rejection) and converter rejections naming the tensor.
 *
 * The fixtures are committed: a missing directory is a failure. Root:
 * tests/fixtures relative to the working directory, or $SLUICE_FIXTURES_ROOT.
 */
#include <cJSON.h>
#include <dirent.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "sluice.h"
#include "golden.h"
#include "test.h"
#include "config_test.h"
#include "util.h"

#define N_PROMPT 40
#define N_GEN 16
#define FX_MAX 16

static const char *families[2] = {"qwen3_next", "qwen3_5_moe"};

struct fixture {
    char dir[512];
    size_t n_vocab;
    int32_t prompt[N_PROMPT], gen[N_GEN];
    float *logits; /* (N_PROMPT, n_vocab) */
};

/* Loads family/name; vocab_size at the top level or in text_config (the
 * wrapper). Prints the reason and returns 0 on failure. */
static int fixture_load(const char *family, const char *name, struct fixture *fx) {
    memset(fx, 0, sizeof *fx);
    snprintf(fx->dir, sizeof fx->dir, "%s/%s/%s", golden_fx_root(), family, name);
    return golden_fixture_read(fx->dir, 1, N_PROMPT, N_GEN, &fx->n_vocab, fx->prompt, fx->gen,
                               &fx->logits);
}

/* Log capture: the converter's notes. */
static char log_buf[8192];
static void capture(int level, const char *msg, void *user) {
    (void)level, (void)user;
    size_t n = strlen(log_buf);
    snprintf(log_buf + n, sizeof log_buf - n, "%s\n", msg);
}

static struct sl_model *convert_open(const char *dir, int ed, int dd) {
    log_buf[0] = 0;
    return golden_convert_open(dir, ed, dd, "/tmp/sluice_gh_XXXXXX", capture);
}

struct result {
    double min_cos, mean_cos, step_min, chunk7_min;
    int greedy_prefix;
    int reset_same; /* prefill after sl_context_reset gave identical logits */
};

/* Min and mean cosine of all (N_PROMPT, V) against the fixture. */
static void cos_stats(const struct fixture *fx, const float *all, double *mn, double *mean) {
    golden_cos_stats(all, fx->logits, N_PROMPT, fx->n_vocab, mn, mean);
}

static void run_fixture(struct sl_model *m, const struct fixture *fx, struct result *r) {
    size_t V = fx->n_vocab;
    struct sl_context *ctx = NULL;
    struct sl_context_params cp = sl_context_default_params();
    float *all = malloc(N_PROMPT * V * sizeof(float)), *again = malloc(N_PROMPT * V * sizeof(float));
    memset(r, 0, sizeof *r);
    r->min_cos = r->mean_cos = r->step_min = r->chunk7_min = -1;
    if (sl_context_create(m, &cp, &ctx)) goto out;
    int st = sl_eval(ctx, fx->prompt, N_PROMPT, all);
    CHECK_MSG(st == SL_OK, "%s: sl_eval: %s", fx->dir, sl_errmsg());
    if (st) goto out;
    cos_stats(fx, all, &r->min_cos, &r->mean_cos);
    /* decode: the recurrent step */
    r->greedy_prefix = golden_greedy_prefix(ctx, sl_logits(ctx), fx->gen, N_GEN, V);
    /* reset forgets the recurrent state: the same prompt gives the same logits */
    sl_context_reset(ctx);
    r->reset_same = sl_eval(ctx, fx->prompt, N_PROMPT, again) == SL_OK &&
                    memcmp(all, again, N_PROMPT * V * sizeof(float)) == 0;
    /* token by token */
    r->step_min = golden_step_min(ctx, fx->prompt, N_PROMPT, fx->logits, V);
    sl_context_free(ctx);
    ctx = NULL;
    /* chunks of 7: the state crosses forward calls mid-prompt */
    cp.n_batch = 7;
    if (sl_context_create(m, &cp, &ctx) == SL_OK &&
        sl_eval(ctx, fx->prompt, N_PROMPT, again) == SL_OK) {
        double mean;
        cos_stats(fx, again, &r->chunk7_min, &mean);
    }
out:
    sl_context_free(ctx);
    free(all);
    free(again);
}

static int list_fixtures(const char *family, char names[FX_MAX][64]) {
    char d[512];
    snprintf(d, sizeof d, "%s/%s", golden_fx_root(), family);
    return golden_list_fixtures(d, names, FX_MAX);
}

static void golden(int ed, int dd, double min_mean, int strict) {
    for (int f = 0; f < 2; f++) {
        char names[FX_MAX][64];
        int n = list_fixtures(families[f], names);
        CHECK_MSG(n >= 2, "%s/%s: want >= 2 fixtures, found %d", golden_fx_root(), families[f], n);
        for (int k = 0; k < n; k++) {
            struct fixture fx;
            if (!fixture_load(families[f], names[k], &fx)) {
                CHECK_MSG(0, "fixture %s/%s", families[f], names[k]);
                continue;
            }
            struct sl_model *m = convert_open(fx.dir, ed, dd);
            CHECK_MSG(m != NULL, "%s: convert/open", fx.dir);
            if (!m) {
                free(fx.logits);
                continue;
            }
            if (strstr(fx.dir, "/mm"))
                CHECK_MSG(strstr(log_buf, "mtp.*") && strstr(log_buf, "model.visual"),
                          "%s: no MTP / vision note in:\n%s", fx.dir, log_buf);
            struct result r;
            run_fixture(m, &fx, &r);
            printf("  %-11s %-9s experts %-4s dense %-4s: cos min %.7f mean %.7f, stepwise "
                   "min %.7f, chunks-of-7 min %.7f, greedy %d/%d\n", families[f], names[k],
                   sl_dtype_name(ed), sl_dtype_name(dd), r.min_cos, r.mean_cos, r.step_min,
                   r.chunk7_min, r.greedy_prefix, N_GEN);
            CHECK_MSG(r.mean_cos >= min_mean, "%s: mean cosine %.7f < %g", fx.dir, r.mean_cos,
                      min_mean);
            CHECK_MSG(r.reset_same, "%s: logits after sl_context_reset differ", fx.dir);
            if (strict) {
                CHECK_MSG(r.min_cos >= 0.9999, "%s: min cosine %.7f", fx.dir, r.min_cos);
                CHECK_MSG(r.step_min >= 0.9999, "%s: stepwise min %.7f", fx.dir, r.step_min);
                CHECK_MSG(r.chunk7_min >= 0.9999, "%s: chunks-of-7 min %.7f", fx.dir,
                          r.chunk7_min);
                CHECK_MSG(r.greedy_prefix == N_GEN, "%s: greedy differs from index %d", fx.dir,
                          r.greedy_prefix);
            }
            free(fx.logits);
            sl_model_close(m);
        }
    }
}

TEST(golden_hybrid_bf16) { golden(SL_DTYPE_BF16, SL_DTYPE_BF16, 0.9999, 1); }
TEST(golden_hybrid_q8) { golden(SL_DTYPE_Q8, SL_DTYPE_Q8, 0.999, 0); }
TEST(golden_hybrid_q4) { golden(SL_DTYPE_Q4, SL_DTYPE_BF16, 0.99, 0); }

/* ---- config ---- */

/* Qwen3-Next-80B-A3B's config.json (hub spelling). */
static const char *next_cfg =
    "{\"architectures\": [\"Qwen3NextForCausalLM\"], \"attention_bias\": false,"
    " \"bos_token_id\": 151643, \"decoder_sparse_step\": 1, \"eos_token_id\": 151645,"
    " \"full_attention_interval\": 4, \"head_dim\": 256, \"hidden_act\": \"silu\","
    " \"hidden_size\": 2048, \"intermediate_size\": 5120, \"linear_conv_kernel_dim\": 4,"
    " \"linear_key_head_dim\": 128, \"linear_num_key_heads\": 16,"
    " \"linear_num_value_heads\": 32, \"linear_value_head_dim\": 128,"
    " \"max_position_embeddings\": 262144, \"mlp_only_layers\": [],"
    " \"model_type\": \"qwen3_next\", \"moe_intermediate_size\": 512,"
    " \"norm_topk_prob\": true, \"num_attention_heads\": 16, \"num_experts\": 512,"
    " \"num_experts_per_tok\": 10, \"num_hidden_layers\": 48, \"num_key_value_heads\": 2,"
    " \"partial_rotary_factor\": 0.25, \"rms_norm_eps\": 1e-06, \"rope_scaling\": null,"
    " \"rope_theta\": 10000000, \"shared_expert_intermediate_size\": 512,"
    " \"tie_word_embeddings\": false, \"use_sliding_window\": false,"
    " \"vocab_size\": 151936}";

/* A Qwen3.5-397B-A17B-shaped multimodal config (transformers 5 spelling). */
static const char *wrap_cfg =
    "{\"architectures\": [\"Qwen3_5MoeForConditionalGeneration\"],"
    " \"model_type\": \"qwen3_5_moe\", \"tie_word_embeddings\": false,"
    " \"text_config\": {\"model_type\": \"qwen3_5_moe_text\", \"hidden_size\": 4096,"
    " \"num_hidden_layers\": 60, \"num_attention_heads\": 32, \"num_key_value_heads\": 2,"
    " \"head_dim\": 256, \"linear_num_key_heads\": 16, \"linear_num_value_heads\": 64,"
    " \"linear_key_head_dim\": 128, \"linear_value_head_dim\": 128,"
    " \"linear_conv_kernel_dim\": 4, \"num_experts\": 512, \"num_experts_per_tok\": 10,"
    " \"moe_intermediate_size\": 1024, \"shared_expert_intermediate_size\": 1024,"
    " \"max_position_embeddings\": 262144, \"rms_norm_eps\": 1e-06,"
    " \"vocab_size\": 248320, \"attn_output_gate\": true, \"eos_token_id\": 248046,"
    " \"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": 10000000,"
    " \"partial_rotary_factor\": 0.25, \"mrope_interleaved\": true,"
    " \"mrope_section\": [11, 11, 10]}, \"tie_word_embeddings\": false},"
    " \"vision_config\": {\"model_type\": \"qwen3_5_moe_vision\", \"depth\": 27}}";

TEST(config_hybrid) {
    struct sl_config c;
    roundtrip(next_cfg, &c);
    CHECK_EQ_INT(c.arch, SL_ARCH_QWEN3_NEXT);
    CHECK_EQ_INT(c.rope_dim, 64);
    CHECK_EQ_INT(c.lin_k_heads, 16);
    CHECK_EQ_INT(c.lin_v_heads, 32);
    CHECK_EQ_INT(c.lin_conv, 4);
    CHECK_EQ_INT(c.shared_ffn, 512);
    CHECK_EQ_INT(c.attn_gate, 1);
    CHECK_EQ_INT(c.norm_topk_prob, 1);
    CHECK_EQ_INT(c.qk_norm, SL_QK_NORM_HEAD);
    CHECK(c.layer_linear[0] && c.layer_linear[1] && c.layer_linear[2] && !c.layer_linear[3]);
    CHECK(!c.layer_linear[47] && c.layer_linear[46]);
    CHECK(c.layer_is_moe[0] && c.layer_is_moe[47]);
    CHECK_EQ_INT(config_lin_conv_dim(&c), 2 * 16 * 128 + 32 * 128);
    roundtrip(wrap_cfg, &c);
    CHECK_EQ_INT(c.arch, SL_ARCH_QWEN3_5_MOE);
    CHECK(strcmp(c.model_type, "qwen3_5_moe_text") == 0);
    CHECK_EQ_INT(c.hidden, 4096);
    CHECK_EQ_INT(c.n_layers, 60);
    CHECK_EQ_INT(c.n_experts, 512);
    CHECK_EQ_INT(c.n_experts_used, 10);
    CHECK_EQ_INT(c.shared_ffn, 1024);
    CHECK_EQ_INT(c.rope_dim, 64);
    CHECK_EQ_INT(c.norm_topk_prob, 1);
    CHECK_EQ_INT(c.ffn, 0);
    CHECK_EQ_INT(c.n_eos, 1);
    int n_full = 0;
    for (int i = 0; i < 60; i++) n_full += !c.layer_linear[i];
    CHECK_EQ_INT(n_full, 15); /* 3 linear : 1 full */
}

TEST(config_hybrid_reject) {
    char b[8192];
    expect_reject(subst(b, sizeof b, next_cfg, "\"linear_num_value_heads\": 32",
                        "\"linear_num_value_heads\": 24"),
                  SL_ERR_CONFIG, "linear_num_value_heads");
    expect_reject(subst(b, sizeof b, next_cfg, "\"full_attention_interval\": 4",
                        "\"layer_types\": [\"linear_attention\"]"),
                  SL_ERR_CONFIG, "layer_types");
    expect_reject(subst(b, sizeof b, next_cfg, "\"num_hidden_layers\": 48",
                        "\"num_hidden_layers\": 2, \"layer_types\": [\"linear_attention\","
                        " \"sliding_attention\"]"),
                  SL_ERR_UNSUPPORTED, "sliding_attention");
    expect_reject(subst(b, sizeof b, next_cfg, "\"attention_bias\": false",
                        "\"attn_output_gate\": false"),
                  SL_ERR_UNSUPPORTED, "attn_output_gate");
    expect_reject(subst(b, sizeof b, next_cfg, "\"partial_rotary_factor\": 0.25",
                        "\"partial_rotary_factor\": 0.005"),
                  SL_ERR_CONFIG, "partial_rotary_factor");
    expect_reject(subst(b, sizeof b, next_cfg, "\"partial_rotary_factor\": 0.25",
                        "\"partial_rotary_factor\": 1.5"),
                  SL_ERR_CONFIG, "partial_rotary_factor");
    expect_reject(subst(b, sizeof b, next_cfg, "\"linear_conv_kernel_dim\": 4",
                        "\"linear_conv_kernel_dim\": 0"),
                  SL_ERR_CONFIG, "linear_conv_kernel_dim");
    char b2[8192]; /* a dense layer needs intermediate_size */
    subst(b2, sizeof b2, next_cfg, "\"intermediate_size\": 5120, ", "");
    expect_reject(subst(b, sizeof b, b2, "\"mlp_only_layers\": [], ",
                        "\"mlp_only_layers\": [3], "),
                  SL_ERR_CONFIG, "intermediate_size");
    expect_reject(subst(b, sizeof b, wrap_cfg, "\"text_config\"", "\"text_cfg\""),
                  SL_ERR_CONFIG, "text_config");
    expect_reject(subst(b, sizeof b, wrap_cfg, "\"qwen3_5_moe_text\"", "\"qwen3_moe\""),
                  SL_ERR_CONFIG, "text_config.model_type");
    expect_reject(subst(b, sizeof b, wrap_cfg, "\"tie_word_embeddings\": false}",
                        "\"tie_word_embeddings\": true}"),
                  SL_ERR_CONFIG, "tie_word_embeddings");
    expect_reject(subst(b, sizeof b, wrap_cfg, "\"rope_type\": \"default\"",
                        "\"rope_type\": \"yarn\""),
                  SL_ERR_UNSUPPORTED, "yarn");
}

/* ---- converter rejections (copies of a fixture with config.json patched) ---- */

static int convert_patched(const char *family, const char *name, const char *from,
                           const char *to) {
    char src[512], dir[64] = "/tmp/sluice_ghp_XXXXXX", p[600], q[600];
    snprintf(src, sizeof src, "%s/%s/%s", golden_fx_root(), family, name);
    if (!mkdtemp(dir)) return -1;
    int st = -1;
    size_t len;
    snprintf(p, sizeof p, "%s/config.json", src);
    char *cfg = golden_read_all(p, &len);
    snprintf(p, sizeof p, "%s/model.safetensors", src);
    snprintf(q, sizeof q, "%s/model.safetensors", dir);
    if (cfg && strstr(cfg, from) && golden_copy_file(p, q)) {
        char *patched = malloc(len + strlen(to) + 1);
        subst(patched, len + strlen(to) + 1, cfg, from, to);
        snprintf(q, sizeof q, "%s/config.json", dir);
        FILE *f = fopen(q, "wb");
        fputs(patched, f);
        fclose(f);
        free(patched);
        char out[96];
        snprintf(out, sizeof out, "%s/m.sluice", dir);
        struct sl_convert_params cp = sl_convert_default_params();
        sl_set_log(NULL, NULL, 0);
        st = sl_convert(dir, out, &cp);
        sl_set_log(NULL, NULL, 1);
        unlink(out);
        unlink(q);
    } else {
        fprintf(stderr, "    %s: cannot patch '%s'\n", src, from);
    }
    free(cfg);
    snprintf(q, sizeof q, "%s/model.safetensors", dir);
    unlink(q);
    rmdir(dir);
    return st;
}

static void expect_convert_reject(const char *family, const char *name, const char *from,
                                  const char *to, const char *needle) {
    int st = convert_patched(family, name, from, to);
    CHECK_MSG(st == SL_ERR_FORMAT, "%s/%s %s -> %s: status %d (%s)", family, name, from, to,
              st, sl_errmsg());
    CHECK_MSG(strstr(sl_errmsg(), needle) != NULL, "message '%s' lacks '%s'", sl_errmsg(),
              needle);
}

TEST(convert_hybrid_reject) {
    /* inconsistent head counts: the fused projection's shape, named */
    expect_convert_reject("qwen3_next", "base", "\"linear_num_value_heads\": 4",
                          "\"linear_num_value_heads\": 2", "in_proj_qkvz");
    expect_convert_reject("qwen3_next", "base", "\"num_key_value_heads\": 2",
                          "\"num_key_value_heads\": 4", "self_attn.k_proj");
    /* a layer the config calls full attention holds GDN tensors: missing q_proj */
    expect_convert_reject("qwen3_next", "base", "\"full_attention_interval\": 4",
                          "\"full_attention_interval\": 1", "missing tensor "
                          "model.layers.0.self_attn.q_proj.weight");
    /* the wrapper's names carry the language_model prefix */
    expect_convert_reject("qwen3_5_moe", "mm", "\"linear_value_head_dim\": 32",
                          "\"linear_value_head_dim\": 16",
                          "model.language_model.layers.0.linear_attn.in_proj_qkv.weight");
    expect_convert_reject("qwen3_5_moe", "small", "\"shared_expert_intermediate_size\": 96",
                          "\"shared_expert_intermediate_size\": 64", "shared_expert.gate_proj");
    expect_convert_reject("qwen3_5_moe", "small", "\"linear_conv_kernel_dim\": 2",
                          "\"linear_conv_kernel_dim\": 3", "conv1d.weight");
}

TEST_MAIN()
