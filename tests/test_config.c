/*
 * test_config.c — config.json / manifest parsing (src/config.c): a real
 * Qwen3-30B-A3B config, HF defaults, the newer rope_parameters form, the
 * manifest round trip (parse -> manifest -> parse gives a memcmp-identical
 * struct), generation_config ids, and every rejection path with its message.
 */
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "test.h"
#include "util.h"

static const char *a3b_config =
    "{\n"
    "  \"architectures\": [\"Qwen3MoeForCausalLM\"],\n"
    "  \"attention_bias\": false, \"attention_dropout\": 0.0,\n"
    "  \"bos_token_id\": 151643, \"decoder_sparse_step\": 1,\n"
    "  \"eos_token_id\": 151645, \"head_dim\": 128, \"hidden_act\": \"silu\",\n"
    "  \"hidden_size\": 2048, \"initializer_range\": 0.02,\n"
    "  \"intermediate_size\": 6144, \"max_position_embeddings\": 40960,\n"
    "  \"max_window_layers\": 48, \"mlp_only_layers\": [],\n"
    "  \"model_type\": \"qwen3_moe\", \"moe_intermediate_size\": 768,\n"
    "  \"norm_topk_prob\": true, \"num_attention_heads\": 32,\n"
    "  \"num_experts\": 128, \"num_experts_per_tok\": 8,\n"
    "  \"num_hidden_layers\": 48, \"num_key_value_heads\": 4,\n"
    "  \"output_router_logits\": false, \"rms_norm_eps\": 1e-06,\n"
    "  \"rope_scaling\": null, \"rope_theta\": 1000000.0,\n"
    "  \"router_aux_loss_coef\": 0.001, \"sliding_window\": null,\n"
    "  \"tie_word_embeddings\": false, \"torch_dtype\": \"bfloat16\",\n"
    "  \"transformers_version\": \"4.51.0\", \"use_cache\": true,\n"
    "  \"use_sliding_window\": false, \"vocab_size\": 151936\n"
    "}\n";

/* A minimal config; extra is spliced in before the closing brace (it must
 * start with a comma). Keys in extra override nothing: tests that change a
 * key build their own text. */
static char text_buf[4096];
static const char *mini(const char *extra) {
    snprintf(text_buf, sizeof text_buf,
             "{\"model_type\": \"qwen3_moe\", \"num_hidden_layers\": 4,"
             " \"hidden_size\": 64, \"num_attention_heads\": 4,"
             " \"vocab_size\": 100, \"max_position_embeddings\": 256,"
             " \"intermediate_size\": 96, \"moe_intermediate_size\": 32,"
             " \"num_experts\": 8, \"num_experts_per_tok\": 2,"
             " \"rms_norm_eps\": 1e-6, \"rope_theta\": 10000%s}",
             extra ? extra : "");
    return text_buf;
}

/* Replaces the first occurrence of from in the a3b config with to. */
static char edit_buf[4096];
static const char *a3b_with(const char *from, const char *to) {
    const char *p = strstr(a3b_config, from);
    if (!p) {
        fprintf(stderr, "test bug: '%s' not in config\n", from);
        return a3b_config;
    }
    snprintf(edit_buf, sizeof edit_buf, "%.*s%s%s", (int)(p - a3b_config),
             a3b_config, to, p + strlen(from));
    return edit_buf;
}

static int parse(struct sl_config *c, const char *txt) {
    memset(c, 0, sizeof *c);
    return config_parse(c, txt, strlen(txt));
}

/* Expects parse failure with status and a message containing want. */
#define CHECK_REJECT(txt, status, want)                                       \
    do {                                                                      \
        struct sl_config c_;                                                  \
        int rc_ = parse(&c_, (txt));                                          \
        CHECK_EQ_INT(rc_, (status));                                          \
        CHECK_MSG(strstr(sl_errmsg(), (want)) != NULL, "message '%s' lacks "  \
                  "'%s'", sl_errmsg(), (want));                               \
    } while (0)

TEST(test_a3b_config) {
    struct sl_config c;
    CHECK_EQ_INT(parse(&c, a3b_config), SL_OK);
    CHECK_EQ_INT(c.arch, SL_ARCH_QWEN3_MOE);
    CHECK(strcmp(c.model_type, "qwen3_moe") == 0);
    CHECK_EQ_INT(c.n_layers, 48);
    CHECK_EQ_INT(c.hidden, 2048);
    CHECK_EQ_INT(c.n_heads, 32);
    CHECK_EQ_INT(c.n_kv_heads, 4);
    CHECK_EQ_INT(c.head_dim, 128);
    CHECK_EQ_INT(config_q_dim(&c), 4096);
    CHECK_EQ_INT(config_kv_dim(&c), 512);
    CHECK_EQ_INT(c.n_vocab, 151936);
    CHECK_EQ_INT(c.n_ctx_train, 40960);
    CHECK_EQ_INT(c.ffn, 6144);
    CHECK_EQ_INT(c.moe_ffn, 768);
    CHECK_EQ_INT(c.n_experts, 128);
    CHECK_EQ_INT(c.n_experts_used, 8);
    CHECK_EQ_INT(c.norm_topk_prob, 1);
    CHECK_EQ_INT(c.decoder_sparse_step, 1);
    CHECK_NEAR(c.rms_eps, 1e-6, 1e-12);
    CHECK_NEAR(c.rope_theta, 1e6, 0);
    CHECK_EQ_INT(c.attention_bias, 0);
    CHECK_EQ_INT(c.tie_embeddings, 0);
    for (int i = 0; i < 48; i++) CHECK_EQ_INT(c.layer_is_moe[i], 1);
    CHECK_EQ_INT(c.layer_is_moe[48], 0);
    CHECK_EQ_INT(c.bos_id, 151643);
    CHECK_EQ_INT(c.n_eos, 1);
    CHECK_EQ_INT(c.eos_ids[0], 151645);
}

TEST(test_hf_defaults) {
    struct sl_config c;
    /* No num_key_value_heads, head_dim, decoder_sparse_step, mlp_only_layers,
     * attention_bias, tie_word_embeddings, hidden_act, bos/eos. */
    CHECK_EQ_INT(parse(&c, mini(NULL)), SL_OK);
    CHECK_EQ_INT(c.n_kv_heads, 4);
    CHECK_EQ_INT(c.head_dim, 16);
    CHECK_EQ_INT(c.decoder_sparse_step, 1);
    CHECK_EQ_INT(c.attention_bias, 0);
    CHECK_EQ_INT(c.tie_embeddings, 0);
    CHECK_EQ_INT(c.norm_topk_prob, 0);
    CHECK_EQ_INT(c.bos_id, -1);
    CHECK_EQ_INT(c.n_eos, 0);
    for (int i = 0; i < 4; i++) CHECK_EQ_INT(c.layer_is_moe[i], 1);
    /* head_dim null means the default too (as HF). */
    CHECK_EQ_INT(parse(&c, mini(", \"head_dim\": null")), SL_OK);
    CHECK_EQ_INT(c.head_dim, 16);
    CHECK_EQ_INT(parse(&c, mini(", \"head_dim\": 32")), SL_OK);
    CHECK_EQ_INT(c.head_dim, 32);
    CHECK_EQ_INT(config_q_dim(&c), 128);
}

TEST(test_layer_resolution) {
    struct sl_config c;
    /* step 2: layers 1, 3 are MoE; layer 3 also listed as dense. */
    CHECK_EQ_INT(parse(&c, mini(", \"decoder_sparse_step\": 2,"
                                " \"mlp_only_layers\": [3]")), SL_OK);
    CHECK_EQ_INT(c.layer_is_moe[0], 0);
    CHECK_EQ_INT(c.layer_is_moe[1], 1);
    CHECK_EQ_INT(c.layer_is_moe[2], 0);
    CHECK_EQ_INT(c.layer_is_moe[3], 0);
    CHECK_EQ_INT(parse(&c, mini(", \"mlp_only_layers\": [0, 2]")), SL_OK);
    CHECK_EQ_INT(c.layer_is_moe[0], 0);
    CHECK_EQ_INT(c.layer_is_moe[1], 1);
    CHECK_EQ_INT(c.layer_is_moe[2], 0);
    CHECK_EQ_INT(c.layer_is_moe[3], 1);
}

TEST(test_rope_forms) {
    struct sl_config c;
    /* transformers >= 4.56: rope_theta inside rope_parameters. */
    const char *t = a3b_with("\"rope_theta\": 1000000.0",
                             "\"rope_parameters\": {\"rope_type\": \"default\","
                             " \"rope_theta\": 5000000.0}");
    CHECK_EQ_INT(parse(&c, t), SL_OK);
    CHECK_NEAR(c.rope_theta, 5e6, 0);
    CHECK_EQ_INT(parse(&c, a3b_with("\"rope_scaling\": null",
                                    "\"rope_scaling\": {\"type\": \"default\"}")),
                 SL_OK);
    CHECK_REJECT(a3b_with("\"rope_scaling\": null",
                          "\"rope_scaling\": {\"rope_type\": \"yarn\", "
                          "\"factor\": 4.0}"),
                 SL_ERR_UNSUPPORTED, "'yarn'");
    CHECK_REJECT(a3b_with("\"rope_theta\": 1000000.0",
                          "\"rope_parameters\": {\"rope_type\": \"linear\","
                          " \"rope_theta\": 1e6}"),
                 SL_ERR_UNSUPPORTED, "'linear'");
    CHECK_REJECT(a3b_with("\"rope_theta\": 1000000.0", "\"x\": 1"),
                 SL_ERR_CONFIG, "'rope_theta'");
}

TEST(test_round_trip) {
    const char *texts[4] = {
        a3b_config,
        mini(", \"decoder_sparse_step\": 2, \"mlp_only_layers\": [3],"
             " \"tie_word_embeddings\": true, \"attention_bias\": true,"
             " \"eos_token_id\": [7, 9], \"bos_token_id\": 3,"
             " \"rms_norm_eps\": 1.1e-5, \"norm_topk_prob\": true"),
        mini(", \"mlp_only_layers\": [0, 1, 2, 3]"),
        mini(", \"bos_token_id\": null, \"eos_token_id\": 5,"
             " \"rope_theta\": 123456.7"),
    };
    for (int k = 0; k < 4; k++) {
        char copy[4096];
        snprintf(copy, sizeof copy, "%s", texts[k]);
        struct sl_config a, b;
        CHECK_EQ_INT(parse(&a, copy), SL_OK);
        char *m = NULL;
        size_t n = 0;
        CHECK_EQ_INT(config_to_manifest(&a, SL_DTYPE_Q4, SL_DTYPE_BF16, &m, &n),
                     SL_OK);
        if (!m) continue;
        CHECK_EQ_INT(strlen(m), n);
        CHECK(strstr(m, "\"expert_dtype\":") && strstr(m, "\"q4\""));
        CHECK(strstr(m, "\"format_version\":") != NULL);
        memset(&b, 0xab, sizeof b); /* parse must not depend on b's bytes */
        CHECK_EQ_INT(config_parse(&b, m, n), SL_OK);
        CHECK_MSG(memcmp(&a, &b, sizeof a) == 0, "round trip %d differs", k);
        sl_free(m);
    }
}

TEST(test_generation_config) {
    struct sl_config c;
    CHECK_EQ_INT(parse(&c, a3b_config), SL_OK);
    const char *g = "{\"bos_token_id\": 151643, \"eos_token_id\": [151645, "
                    "151643], \"do_sample\": true, \"temperature\": 0.6}";
    CHECK_EQ_INT(config_parse_generation(&c, g, strlen(g)), SL_OK);
    CHECK_EQ_INT(c.n_eos, 2);
    CHECK_EQ_INT(c.eos_ids[0], 151645);
    CHECK_EQ_INT(c.eos_ids[1], 151643);
    /* Absent keys leave cfg unchanged. */
    g = "{\"temperature\": 0.7}";
    CHECK_EQ_INT(config_parse_generation(&c, g, strlen(g)), SL_OK);
    CHECK_EQ_INT(c.n_eos, 2);
    CHECK_EQ_INT(c.bos_id, 151643);
    g = "{\"eos_token_id\": 7, \"bos_token_id\": null}";
    CHECK_EQ_INT(config_parse_generation(&c, g, strlen(g)), SL_OK);
    CHECK_EQ_INT(c.n_eos, 1);
    CHECK_EQ_INT(c.eos_ids[0], 7);
    CHECK_EQ_INT(c.bos_id, -1);
    /* Failures leave cfg unchanged. */
    g = "{\"eos_token_id\": 999999999}";
    CHECK_EQ_INT(config_parse_generation(&c, g, strlen(g)), SL_ERR_CONFIG);
    CHECK(strstr(sl_errmsg(), "vocab_size") != NULL);
    g = "{\"eos_token_id\": \"x\"}";
    CHECK_EQ_INT(config_parse_generation(&c, g, strlen(g)), SL_ERR_CONFIG);
    CHECK(strstr(sl_errmsg(), "eos_token_id") != NULL);
    g = "{\"eos_token_id\": [1,2,3,4,5,6,7,8,9]}";
    CHECK_EQ_INT(config_parse_generation(&c, g, strlen(g)), SL_ERR_UNSUPPORTED);
    g = "[1";
    CHECK_EQ_INT(config_parse_generation(&c, g, strlen(g)), SL_ERR_CONFIG);
    CHECK_EQ_INT(c.n_eos, 1);
    CHECK_EQ_INT(c.eos_ids[0], 7);
}

TEST(test_rejections) {
    CHECK_REJECT("{\"model_type\": ", SL_ERR_CONFIG, "not valid JSON");
    CHECK_REJECT("[1, 2]", SL_ERR_CONFIG, "JSON object");
    CHECK_REJECT(a3b_with("\"qwen3_moe\"", "\"llama\""), SL_ERR_UNSUPPORTED,
                 "model_type 'llama' is not supported; supported: qwen3_moe");
    CHECK_REJECT(a3b_with("\"model_type\": \"qwen3_moe\",", ""), SL_ERR_CONFIG,
                 "'model_type'");
    CHECK_REJECT(a3b_with("\"hidden_size\": 2048,", ""), SL_ERR_CONFIG,
                 "missing required key 'hidden_size'");
    CHECK_REJECT(a3b_with("\"vocab_size\": 151936", "\"x\": 0"), SL_ERR_CONFIG,
                 "missing required key 'vocab_size'");
    CHECK_REJECT(a3b_with("\"hidden_size\": 2048", "\"hidden_size\": \"2048\""),
                 SL_ERR_CONFIG, "'hidden_size' must be an integer, got a string");
    CHECK_REJECT(a3b_with("\"hidden_size\": 2048", "\"hidden_size\": 20.5"),
                 SL_ERR_CONFIG, "'hidden_size' must be an integer");
    CHECK_REJECT(a3b_with("\"norm_topk_prob\": true", "\"norm_topk_prob\": 1"),
                 SL_ERR_CONFIG, "'norm_topk_prob' must be true or false");
    CHECK_REJECT(a3b_with("\"hidden_size\": 2048", "\"hidden_size\": 0"),
                 SL_ERR_CONFIG, "'hidden_size' = 0 is out of range");
    CHECK_REJECT(a3b_with("\"num_experts\": 128", "\"num_experts\": -4"),
                 SL_ERR_CONFIG, "'num_experts' = -4");
    CHECK_REJECT(a3b_with("\"hidden_size\": 2048", "\"hidden_size\": 2000000"),
                 SL_ERR_CONFIG, "'hidden_size' = 2000000 is out of range");
    CHECK_REJECT(a3b_with("\"num_hidden_layers\": 48",
                          "\"num_hidden_layers\": 2000"),
                 SL_ERR_CONFIG, "'num_hidden_layers' = 2000");
    CHECK_REJECT(a3b_with("\"num_key_value_heads\": 4",
                          "\"num_key_value_heads\": 5"),
                 SL_ERR_CONFIG, "num_attention_heads = 32 is not a multiple of "
                 "num_key_value_heads = 5");
    CHECK_REJECT(a3b_with("\"num_experts_per_tok\": 8",
                          "\"num_experts_per_tok\": 200"),
                 SL_ERR_CONFIG, "num_experts_per_tok = 200 exceeds num_experts "
                 "= 128");
    CHECK_REJECT(a3b_with("\"mlp_only_layers\": []", "\"mlp_only_layers\": [48]"),
                 SL_ERR_CONFIG, "mlp_only_layers index 48 is out of range");
    CHECK_REJECT(a3b_with("\"mlp_only_layers\": []", "\"mlp_only_layers\": 3"),
                 SL_ERR_CONFIG, "'mlp_only_layers' must be a list");
    CHECK_REJECT(a3b_with("\"use_sliding_window\": false",
                          "\"use_sliding_window\": true"),
                 SL_ERR_UNSUPPORTED, "use_sliding_window");
    CHECK_REJECT(a3b_with("\"silu\"", "\"gelu\""), SL_ERR_UNSUPPORTED,
                 "hidden_act 'gelu'");
    CHECK_REJECT(a3b_with("\"rms_norm_eps\": 1e-06", "\"rms_norm_eps\": -1"),
                 SL_ERR_CONFIG, "'rms_norm_eps'");
    CHECK_REJECT(a3b_with("\"head_dim\": 128", "\"head_dim\": 127"),
                 SL_ERR_CONFIG, "head_dim = 127 must be even");
    CHECK_REJECT(a3b_with("\"eos_token_id\": 151645", "\"eos_token_id\": 160000"),
                 SL_ERR_CONFIG, "eos_token_id 160000 is not below vocab_size");
    /* A manifest of a future format is refused. */
    CHECK_REJECT(a3b_with("\"vocab_size\": 151936",
                          "\"vocab_size\": 151936, \"sluice\": "
                          "{\"format_version\": 2}"),
                 SL_ERR_UNSUPPORTED, "format_version");
}

TEST(test_supported_types) {
    CHECK(strstr(config_supported_types(), "qwen3_moe") != NULL);
}

TEST_MAIN()
