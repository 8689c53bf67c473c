/*
 * config_hybrid.c — the configuration keys of the hybrid Qwen families,
 * qwen3_next (Qwen3NextConfig) and qwen3_5_moe (Qwen3_5MoeTextConfig, also
 * inside the multimodal Qwen3_5MoeConfig under "text_config"), as
 * transformers 5.24 reads them:
 *
 *   layer_types        list of "linear_attention" / "full_attention"; when
 *                      absent, full_attention_interval (default 4): layer i
 *                      is full attention iff (i + 1) % interval == 0.
 *   linear_num_key_heads (16), linear_num_value_heads (32, a multiple),
 *   linear_key_head_dim (128), linear_value_head_dim (128),
 *   linear_conv_kernel_dim (4), shared_expert_intermediate_size (512):
 *                      HF's class defaults when absent.
 *   partial_rotary_factor  in rope_parameters or at the top level; default
 *                      0.25; rotated dims = int(head_dim * factor), even.
 *   attn_output_gate   absent or true (the attention always gates).
 *   rope_parameters.mrope_section / mrope_interleaved: accepted; for text,
 *                      the three M-RoPE position rows are equal, so M-RoPE
 *                      is plain RoPE over the rotated dims.
 *
 * qwen3_5_moe routes with renormalised top-k and every layer is MoE (its
 * config class has neither norm_topk_prob nor mlp_only_layers); qwen3_next
 * reads both (norm_topk_prob defaults to true) and may have dense layers.
 *
 * What it is not: the common keys (config.c parses those first, then calls
 * config_hybrid_parse). Messages name the key; callers prefix the file.
 */
#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "util.h"

/* An integer key in [lo, hi], def when absent or null. */
static int hy_uint(const cJSON *obj, const char *key, uint32_t def, uint32_t lo,
                   uint32_t hi, uint32_t *out) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!it || cJSON_IsNull(it)) {
        *out = def;
        return SL_OK;
    }
    if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble))
        return sl_seterr(SL_ERR_CONFIG, "key '%s' must be an integer", key);
    if (it->valuedouble < lo || it->valuedouble > hi)
        return sl_seterr(SL_ERR_CONFIG, "key '%s' = %.0f is out of range [%u, %u]",
                         key, it->valuedouble, lo, hi);
    *out = (uint32_t)it->valuedouble;
    return SL_OK;
}

int config_hybrid_unwrap(const cJSON **root, const cJSON **wrapper) {
    *wrapper = NULL;
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(*root, "model_type");
    if (!cJSON_IsString(mt) || strcmp(mt->valuestring, "qwen3_5_moe") != 0)
        return SL_OK;
    const cJSON *tc = cJSON_GetObjectItemCaseSensitive(*root, "text_config");
    if (!cJSON_IsObject(tc))
        return sl_seterr(SL_ERR_CONFIG, "model_type 'qwen3_5_moe' needs a "
                         "'text_config' object (the text model of the "
                         "multimodal checkpoint)");
    const cJSON *tmt = cJSON_GetObjectItemCaseSensitive(tc, "model_type");
    if (!cJSON_IsString(tmt) || strcmp(tmt->valuestring, "qwen3_5_moe_text") != 0)
        return sl_seterr(SL_ERR_CONFIG, "text_config.model_type must be "
                         "'qwen3_5_moe_text', got %s%.64s%s",
                         cJSON_IsString(tmt) ? "'" : "",
                         cJSON_IsString(tmt) ? tmt->valuestring : "no string",
                         cJSON_IsString(tmt) ? "'" : "");
    *wrapper = *root;
    *root = tc;
    return SL_OK;
}

/* layer_types, else full_attention_interval. */
static int parse_layer_kinds(struct sl_config *c, const cJSON *root) {
    const cJSON *lt = cJSON_GetObjectItemCaseSensitive(root, "layer_types");
    if (lt && !cJSON_IsNull(lt)) {
        if (!cJSON_IsArray(lt) || (uint32_t)cJSON_GetArraySize(lt) != c->n_layers)
            return sl_seterr(SL_ERR_CONFIG, "key 'layer_types' must be a list "
                             "of num_hidden_layers = %u strings", c->n_layers);
        for (uint32_t i = 0; i < c->n_layers; i++) {
            const cJSON *it = cJSON_GetArrayItem(lt, (int)i);
            int lin = cJSON_IsString(it) && strcmp(it->valuestring, "linear_attention") == 0;
            int full = cJSON_IsString(it) && strcmp(it->valuestring, "full_attention") == 0;
            if (!lin && !full)
                return sl_seterr(SL_ERR_UNSUPPORTED, "layer_types[%u] %s%.64s%s is "
                                 "not supported (\"linear_attention\" or "
                                 "\"full_attention\")", i,
                                 cJSON_IsString(it) ? "'" : "",
                                 cJSON_IsString(it) ? it->valuestring : "(not a string)",
                                 cJSON_IsString(it) ? "'" : "");
            c->layer_linear[i] = (uint8_t)lin;
        }
        return SL_OK;
    }
    uint32_t interval;
    int rc = hy_uint(root, "full_attention_interval", 4, 1, SL_MAX_LAYERS, &interval);
    if (rc) return rc;
    for (uint32_t i = 0; i < c->n_layers; i++)
        c->layer_linear[i] = (i + 1) % interval != 0;
    return SL_OK;
}

/* partial_rotary_factor → rope_dim. */
static int parse_rotary(struct sl_config *c, const cJSON *root) {
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(root, "rope_parameters");
    const cJSON *f = cJSON_IsObject(rp)
                         ? cJSON_GetObjectItemCaseSensitive(rp, "partial_rotary_factor")
                         : NULL;
    if (!f || cJSON_IsNull(f)) f = cJSON_GetObjectItemCaseSensitive(root, "partial_rotary_factor");
    double prf = 0.25;
    if (f && !cJSON_IsNull(f)) {
        if (!cJSON_IsNumber(f) || !(f->valuedouble > 0) || f->valuedouble > 1)
            return sl_seterr(SL_ERR_CONFIG, "partial_rotary_factor must be a "
                             "number in (0, 1]");
        prf = f->valuedouble;
    }
    /* Python's int(head_dim * factor); the tiny slack absorbs the manifest's
     * decimal round trip. */
    uint32_t d = (uint32_t)floor((double)c->head_dim * prf + 1e-7);
    if (d < 2 || d % 2)
        return sl_seterr(SL_ERR_CONFIG, "partial_rotary_factor %g of head_dim %u "
                         "rotates %u dims; it must be an even number >= 2", prf,
                         c->head_dim, d);
    c->rope_dim = d;
    return SL_OK;
}

int config_hybrid_parse(struct sl_config *c, const cJSON *root, const cJSON *wrapper) {
    int rc;
    if ((rc = hy_uint(root, "linear_num_key_heads", 16, 1, 1u << 12, &c->lin_k_heads)) ||
        (rc = hy_uint(root, "linear_num_value_heads", 32, 1, 1u << 12, &c->lin_v_heads)) ||
        (rc = hy_uint(root, "linear_key_head_dim", 128, 1, 1u << 12, &c->lin_k_dim)) ||
        (rc = hy_uint(root, "linear_value_head_dim", 128, 1, 1u << 12, &c->lin_v_dim)) ||
        (rc = hy_uint(root, "linear_conv_kernel_dim", 4, 1, 64, &c->lin_conv)) ||
        (rc = hy_uint(root, "shared_expert_intermediate_size", 512, 1, 1u << 22,
                      &c->shared_ffn)) ||
        (rc = parse_layer_kinds(c, root)) || (rc = parse_rotary(c, root)))
        return rc;
    if (c->lin_v_heads % c->lin_k_heads)
        return sl_seterr(SL_ERR_CONFIG, "linear_num_value_heads = %u is not a "
                         "multiple of linear_num_key_heads = %u", c->lin_v_heads,
                         c->lin_k_heads);
    const cJSON *g = cJSON_GetObjectItemCaseSensitive(root, "attn_output_gate");
    if (g && !cJSON_IsNull(g) && !cJSON_IsTrue(g))
        return sl_seterr(SL_ERR_UNSUPPORTED, "attn_output_gate must be true (the "
                         "%s attention always gates its output)", c->model_type);
    c->attn_gate = 1;
    /* The hybrid attention binds no bias tensors: refuse rather than drop
     * them silently (released checkpoints set it false). */
    if (c->attention_bias)
        return sl_seterr(SL_ERR_UNSUPPORTED, "attention_bias = true is not "
                         "supported for %s", c->model_type);
    if (c->arch == SL_ARCH_QWEN3_5_MOE) {
        /* Qwen3_5MoeSparseMoeBlock on every layer, always renormalised. */
        c->norm_topk_prob = 1;
        for (uint32_t i = 0; i < c->n_layers; i++) c->layer_is_moe[i] = 1;
    }
    for (uint32_t i = 0; i < c->n_layers; i++)
        if (!c->layer_is_moe[i] && c->ffn == 0)
            return sl_seterr(SL_ERR_CONFIG, "layer %u has a dense MLP "
                             "(mlp_only_layers / decoder_sparse_step) but "
                             "intermediate_size is missing", i);
    if (wrapper) {
        /* The wrapper's tie_word_embeddings is the one transformers uses. */
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(wrapper, "tie_word_embeddings");
        if (cJSON_IsBool(t)) {
            const cJSON *tt = cJSON_GetObjectItemCaseSensitive(root, "tie_word_embeddings");
            if (cJSON_IsBool(tt) && cJSON_IsTrue(tt) != cJSON_IsTrue(t))
                return sl_seterr(SL_ERR_CONFIG, "tie_word_embeddings differs between "
                                 "the top level and text_config");
            c->tie_embeddings = cJSON_IsTrue(t);
        }
    }
    return SL_OK;
}

int config_hybrid_to_manifest(const struct sl_config *c, cJSON *r) {
    int ok = 1;
    cJSON *lt = cJSON_AddArrayToObject(r, "layer_types");
    ok &= lt != NULL;
    for (uint32_t i = 0; ok && i < c->n_layers; i++)
        ok &= cJSON_AddItemToArray(lt, cJSON_CreateString(c->layer_linear[i]
                                                              ? "linear_attention"
                                                              : "full_attention"));
    ok &= cJSON_AddNumberToObject(r, "linear_num_key_heads", c->lin_k_heads) != NULL;
    ok &= cJSON_AddNumberToObject(r, "linear_num_value_heads", c->lin_v_heads) != NULL;
    ok &= cJSON_AddNumberToObject(r, "linear_key_head_dim", c->lin_k_dim) != NULL;
    ok &= cJSON_AddNumberToObject(r, "linear_value_head_dim", c->lin_v_dim) != NULL;
    ok &= cJSON_AddNumberToObject(r, "linear_conv_kernel_dim", c->lin_conv) != NULL;
    ok &= cJSON_AddNumberToObject(r, "shared_expert_intermediate_size", c->shared_ffn) != NULL;
    ok &= cJSON_AddNumberToObject(r, "partial_rotary_factor",
                                  (double)c->rope_dim / (double)c->head_dim) != NULL;
    ok &= cJSON_AddBoolToObject(r, "attn_output_gate", 1) != NULL;
    return ok ? SL_OK : sl_seterr(SL_ERR_NOMEM, "manifest: out of memory");
}
