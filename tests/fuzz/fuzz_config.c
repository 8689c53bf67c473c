/*
 * fuzz_config.c — libFuzzer target for the config parsers (src/config.c):
 * config_parse (HF config.json and the .sluice manifest) and
 * config_parse_generation (generation_config.json). `make fuzz` builds it.
 *
 * The low bit of the first byte picks the parser; the rest is the JSON text
 * (not NUL-terminated: the parser must respect len). Contracts checked:
 *   - every input gives a status, never a crash; a failure leaves a message;
 *   - a config that parses is consistent (config.h's invariants: top-k <=
 *     experts, heads divide, layer_is_moe only inside n_layers, eos ids
 *     below the vocabulary);
 *   - it survives the manifest round trip: config_to_manifest then
 *     config_parse gives the same struct, byte for byte;
 *   - config_parse_generation changes only bos/eos, and on failure leaves
 *     the config as it was.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "sluice.h"
#include "util.h"

static void must(int c, const char *what) {
    if (!c) {
        fprintf(stderr, "fuzz_config: contract violated: %s\n", what);
        abort();
    }
}

static void check_consistent(const struct sl_config *c) {
    must(c->arch == SL_ARCH_QWEN3_MOE, "arch set");
    must(c->n_layers >= 1 && c->n_layers <= SL_MAX_LAYERS, "n_layers in range");
    must(c->hidden > 0 && c->n_heads > 0 && c->n_kv_heads > 0 && c->head_dim > 0,
         "sizes non-zero");
    must(c->n_heads % c->n_kv_heads == 0, "kv heads divide heads");
    must(c->n_vocab > 0, "vocab non-zero");
    for (uint32_t l = c->n_layers; l < SL_MAX_LAYERS; l++)
        must(c->layer_is_moe[l] == 0, "no MoE layer past n_layers");
    int any_moe = 0;
    for (uint32_t l = 0; l < c->n_layers; l++) any_moe |= c->layer_is_moe[l];
    if (any_moe)
        must(c->n_experts_used >= 1 && c->n_experts_used <= c->n_experts &&
                 c->moe_ffn > 0,
             "top-k within experts");
    must(c->n_eos <= SL_MAX_EOS, "n_eos bounded");
    for (uint32_t i = 0; i < c->n_eos; i++)
        must(c->eos_ids[i] >= 0 && (uint32_t)c->eos_ids[i] < c->n_vocab, "eos below vocab");
    must(c->bos_id == -1 || (c->bos_id >= 0 && (uint32_t)c->bos_id < c->n_vocab),
         "bos below vocab");
    must(memchr(c->model_type, 0, sizeof c->model_type) != NULL, "model_type terminated");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    const char *json = (const char *)data + 1;
    size_t len = size - 1;
    /* an exact-size heap copy, so that reading past len is an ASan error */
    char *copy = malloc(len ? len : 1);
    if (!copy) return 0;
    memcpy(copy, json, len);
    if (!(data[0] & 1)) {
        struct sl_config c;
        sl_clearerr();
        int rc = config_parse(&c, copy, len);
        if (rc != SL_OK) {
            must(rc == SL_ERR_CONFIG || rc == SL_ERR_UNSUPPORTED || rc == SL_ERR_NOMEM,
                 "config status");
            must(sl_errmsg()[0] != 0, "failure has a message");
        } else {
            check_consistent(&c);
            char *man;
            size_t man_len;
            must(config_to_manifest(&c, SL_DTYPE_Q4, SL_DTYPE_BF16, &man, &man_len) == SL_OK,
                 "manifest written");
            struct sl_config c2;
            int rc2 = config_parse(&c2, man, man_len);
            if (rc2 != SL_OK) fprintf(stderr, "manifest re-parse: %s\n%s\n", sl_errmsg(), man);
            must(rc2 == SL_OK, "manifest re-parses");
            must(memcmp(&c, &c2, sizeof c) == 0, "manifest round trip is exact");
            sl_free(man);
        }
    } else {
        /* generation config over a fixed valid base config */
        static const char base[] =
            "{\"model_type\":\"qwen3_moe\",\"num_hidden_layers\":2,\"hidden_size\":64,"
            "\"num_attention_heads\":4,\"num_key_value_heads\":2,\"head_dim\":16,"
            "\"vocab_size\":300,\"max_position_embeddings\":512,\"intermediate_size\":128,"
            "\"moe_intermediate_size\":32,\"num_experts\":4,\"num_experts_per_tok\":2,"
            "\"norm_topk_prob\":true,\"decoder_sparse_step\":1,\"mlp_only_layers\":[],"
            "\"rms_norm_eps\":1e-6,\"rope_theta\":1000000.0,\"attention_bias\":false,"
            "\"tie_word_embeddings\":false,\"hidden_act\":\"silu\"}";
        static struct sl_config cfg0;
        static int have;
        if (!have) {
            if (config_parse(&cfg0, base, sizeof base - 1) != SL_OK) {
                fprintf(stderr, "fuzz_config: base config: %s\n", sl_errmsg());
                abort();
            }
            have = 1;
        }
        struct sl_config c = cfg0;
        int rc = config_parse_generation(&c, copy, len);
        if (rc != SL_OK) {
            must(sl_errmsg()[0] != 0, "failure has a message");
            must(memcmp(&c, &cfg0, sizeof c) == 0, "failure leaves the config unchanged");
        } else {
            check_consistent(&c);
            struct sl_config a = c, b = cfg0;
            a.bos_id = b.bos_id = 0;
            a.n_eos = b.n_eos = 0;
            memset(a.eos_ids, 0, sizeof a.eos_ids);
            memset(b.eos_ids, 0, sizeof b.eos_ids);
            must(memcmp(&a, &b, sizeof a) == 0, "only bos/eos change");
        }
    }
    free(copy);
    return 0;
}
