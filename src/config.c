/*
 * config.c — parses a HuggingFace config.json (or the manifest of a .sluice
 * file, which uses the same keys) into struct sl_config, and writes the
 * manifest back out (see config.h).
 *
 * What it is not: it does not read tensors, and it knows nothing of the file
 * format beyond the "sluice" object of the manifest.
 *
 * Invariants: a config that parses is internally consistent (heads divide,
 * top-k <= experts, sizes non-zero and below sanity bounds, layer_is_moe
 * resolved for every layer). Keys whose HF class has a default (head_dim,
 * num_key_value_heads, decoder_sparse_step, mlp_only_layers, attention_bias,
 * tie_word_embeddings, norm_topk_prob, hidden_act) take that default when
 * absent, exactly as transformers would; every other key is required, and a
 * value sluice does not implement (rope scaling, sliding window, another
 * activation) is rejected by name rather than ignored. Messages name the
 * key but not the file: callers prefix the path (sl_preerr).
 */
#include "config.h"

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

/* Sanity bounds: far above any released model, low enough that products of
 * two of them fit comfortably in 64 bits. */
#define MAX_HIDDEN (1u << 20)
#define MAX_HEADS (1u << 14)
#define MAX_HEAD_DIM (1u << 14)
#define MAX_VOCAB (1u << 26)
#define MAX_FFN (1u << 22)
#define MAX_EXPERTS (1u << 16)
#define MAX_CTX (1u << 30)

static const char *supported_types = "qwen3_moe, mixtral, olmoe, gpt_oss, deepseek_v3, "
                                      "qwen3_next, qwen3_5_moe, qwen3_5_moe_text";

const char *config_supported_types(void) { return supported_types; }

static const char *json_type_name(const cJSON *it) {
    if (!it) return "nothing";
    if (cJSON_IsNull(it)) return "null";
    if (cJSON_IsBool(it)) return "a boolean";
    if (cJSON_IsNumber(it)) return "a number";
    if (cJSON_IsString(it)) return "a string";
    if (cJSON_IsArray(it)) return "an array";
    if (cJSON_IsObject(it)) return "an object";
    return "an invalid value";
}

/* Reads an integer in [lo, hi]. Absent (or null, when null_ok) keys take
 * def if !required. */
static int get_uint(const cJSON *obj, const char *key, int required,
                    uint32_t def, uint32_t lo, uint32_t hi, uint32_t *out) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!it || cJSON_IsNull(it)) {
        if (required)
            return sl_seterr(SL_ERR_CONFIG, "missing required key '%s'",
                             key);
        *out = def;
        return SL_OK;
    }
    if (!cJSON_IsNumber(it))
        return sl_seterr(SL_ERR_CONFIG,
                         "key '%s' must be an integer, got %s", key,
                         json_type_name(it));
    double v = it->valuedouble;
    if (v != floor(v))
        return sl_seterr(SL_ERR_CONFIG,
                         "key '%s' must be an integer, got %g", key, v);
    if (v < (double)lo || v > (double)hi)
        return sl_seterr(SL_ERR_CONFIG,
                         "key '%s' = %.0f is out of range [%u, %u]", key,
                         v, lo, hi);
    *out = (uint32_t)v;
    return SL_OK;
}

static int get_bool(const cJSON *obj, const char *key, int def, int *out) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!it || cJSON_IsNull(it)) {
        *out = def;
        return SL_OK;
    }
    if (!cJSON_IsBool(it))
        return sl_seterr(SL_ERR_CONFIG,
                         "key '%s' must be true or false, got %s", key,
                         json_type_name(it));
    *out = cJSON_IsTrue(it) ? 1 : 0;
    return SL_OK;
}

/* A positive finite number, stored as float. */
static int get_pos_float(const cJSON *obj, const char *key, const char *where,
                         float *out) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!it || cJSON_IsNull(it))
        return sl_seterr(SL_ERR_CONFIG, "missing required key '%s%s'",
                         where, key);
    if (!cJSON_IsNumber(it))
        return sl_seterr(SL_ERR_CONFIG,
                         "key '%s%s' must be a number, got %s", where,
                         key, json_type_name(it));
    float v = (float)it->valuedouble;
    if (!(v > 0) || !isfinite(v))
        return sl_seterr(SL_ERR_CONFIG,
                         "key '%s%s' = %g must be positive and finite",
                         where, key, it->valuedouble);
    *out = v;
    return SL_OK;
}

/* rope_scaling (old) or rope_parameters (transformers >= 4.56 / v5): only
 * plain RoPE ("default", or null) is implemented. */
static int check_rope_type(const cJSON *obj, const char *key) {
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!rs || cJSON_IsNull(rs)) return SL_OK;
    if (!cJSON_IsObject(rs))
        return sl_seterr(SL_ERR_CONFIG,
                         "key '%s' must be an object or null, got %s",
                         key, json_type_name(rs));
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
    if (!t) t = cJSON_GetObjectItemCaseSensitive(rs, "type");
    if (!t || cJSON_IsNull(t)) return SL_OK;
    if (!cJSON_IsString(t))
        return sl_seterr(SL_ERR_CONFIG, "key '%s.rope_type' must be a "
                         "string, got %s", key, json_type_name(t));
    if (strcmp(t->valuestring, "default") != 0)
        return sl_seterr(SL_ERR_UNSUPPORTED,
                         "%s type '%s' is not supported (only plain "
                         "RoPE, \"default\" or null)", key, t->valuestring);
    return SL_OK;
}

/* bos_token_id / eos_token_id as found in config.json, generation_config.json
 * and the manifest: bos an int or null, eos an int, a list of ints, or null.
 * Absent keys leave cfg unchanged. */
static int parse_special_ids(struct sl_config *cfg, const cJSON *root) {
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(root, "bos_token_id");
    if (b) {
        if (cJSON_IsNull(b)) {
            cfg->bos_id = -1;
        } else if (!cJSON_IsNumber(b) || b->valuedouble != floor(b->valuedouble) ||
                   b->valuedouble < 0 || b->valuedouble > INT32_MAX) {
            return sl_seterr(SL_ERR_CONFIG, "key 'bos_token_id' must be a "
                             "non-negative integer or null");
        } else {
            cfg->bos_id = (int32_t)b->valuedouble;
        }
    }
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(root, "eos_token_id");
    if (!e) return SL_OK;
    int32_t ids[SL_MAX_EOS];
    uint32_t n = 0;
    if (cJSON_IsNull(e)) {
        /* no eos */
    } else if (cJSON_IsNumber(e) || cJSON_IsArray(e)) {
        int count = cJSON_IsArray(e) ? cJSON_GetArraySize(e) : 1;
        if (count > SL_MAX_EOS)
            return sl_seterr(SL_ERR_UNSUPPORTED, "key 'eos_token_id' has "
                             "%d ids; at most %d are supported", count,
                             SL_MAX_EOS);
        for (int i = 0; i < count; i++) {
            const cJSON *it = cJSON_IsArray(e) ? cJSON_GetArrayItem(e, i) : e;
            if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble) ||
                it->valuedouble < 0 || it->valuedouble > INT32_MAX)
                return sl_seterr(SL_ERR_CONFIG, "key 'eos_token_id' must "
                                 "be a non-negative integer or a list of them");
            int32_t id = (int32_t)it->valuedouble;
            int dup = 0;
            for (uint32_t j = 0; j < n; j++) dup |= ids[j] == id;
            if (!dup) ids[n++] = id;
        }
    } else {
        return sl_seterr(SL_ERR_CONFIG, "key 'eos_token_id' must be an "
                         "integer or a list, got %s", json_type_name(e));
    }
    memset(cfg->eos_ids, 0, sizeof cfg->eos_ids);
    memcpy(cfg->eos_ids, ids, n * sizeof ids[0]);
    cfg->n_eos = n;
    return SL_OK;
}

/* Checks that special ids are inside the vocabulary. */
static int check_special_ids(const struct sl_config *c) {
    if (c->bos_id >= 0 && (uint32_t)c->bos_id >= c->n_vocab)
        return sl_seterr(SL_ERR_CONFIG, "bos_token_id %d is not below "
                         "vocab_size %u", c->bos_id, c->n_vocab);
    for (uint32_t i = 0; i < c->n_eos; i++)
        if ((uint32_t)c->eos_ids[i] >= c->n_vocab)
            return sl_seterr(SL_ERR_CONFIG, "eos_token_id %d is not below "
                             "vocab_size %u", c->eos_ids[i], c->n_vocab);
    return SL_OK;
}

/* The manifest's "sluice" object: validated when present, otherwise unused
 * here (the loader reads dtypes from the tensor tables). */
static int check_sluice_object(const cJSON *root) {
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(root, "sluice");
    if (!s) return SL_OK;
    if (!cJSON_IsObject(s))
        return sl_seterr(SL_ERR_CONFIG, "manifest: key 'sluice' must be an "
                         "object, got %s", json_type_name(s));
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(s, "format_version");
    if (!cJSON_IsNumber(v) || v->valuedouble != 1.0)
        return sl_seterr(SL_ERR_UNSUPPORTED, "manifest: sluice.format_version "
                         "must be 1");
    static const char *keys[2] = {"expert_dtype", "dense_dtype"};
    for (int k = 0; k < 2; k++) {
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(s, keys[k]);
        if (!d) continue;
        int ok = 0;
        for (int t = 0; cJSON_IsString(d) && t < SL_DTYPE_COUNT; t++)
            ok |= strcmp(d->valuestring, sl_dtype_name(t)) == 0;
        if (!ok)
            return sl_seterr(SL_ERR_CONFIG, "manifest: sluice.%s is not a "
                             "known dtype", keys[k]);
    }
    return SL_OK;
}

/* An optional positive finite number: absent or null gives def. */
static int get_opt_pos_float(const cJSON *obj, const char *key,
                             const char *where, float def, float *out) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!it || cJSON_IsNull(it)) {
        *out = def;
        return SL_OK;
    }
    return get_pos_float(obj, key, where, out);
}

/* layer_types (a list of "sliding_attention" / "full_attention", one per
 * layer) into layer_sliding; absent keeps what the caller resolved. */
static int parse_layer_types(struct sl_config *c, const cJSON *root) {
    const cJSON *lt = cJSON_GetObjectItemCaseSensitive(root, "layer_types");
    if (!lt || cJSON_IsNull(lt)) return SL_OK;
    if (!cJSON_IsArray(lt) || (uint32_t)cJSON_GetArraySize(lt) != c->n_layers)
        return sl_seterr(SL_ERR_CONFIG, "key 'layer_types' must be a list of "
                         "num_hidden_layers = %u strings", c->n_layers);
    for (uint32_t i = 0; i < c->n_layers; i++) {
        const cJSON *it = cJSON_GetArrayItem(lt, (int)i);
        if (cJSON_IsString(it) && strcmp(it->valuestring, "sliding_attention") == 0)
            c->layer_sliding[i] = 1;
        else if (cJSON_IsString(it) && strcmp(it->valuestring, "full_attention") == 0)
            c->layer_sliding[i] = 0;
        else
            return sl_seterr(SL_ERR_UNSUPPORTED, "layer_types[%u] %s%.64s%s is "
                             "not supported (\"sliding_attention\" or "
                             "\"full_attention\")", i,
                             cJSON_IsString(it) ? "'" : "",
                             cJSON_IsString(it) ? it->valuestring : json_type_name(it),
                             cJSON_IsString(it) ? "'" : "");
    }
    return SL_OK;
}

/* The keys of mixtral, olmoe and gpt_oss beyond those every family shares
 * (parse_root has read those, with intermediate_size as the expert width).
 * Every layer of these families is MoE. */
static int family_parse(struct sl_config *c, const cJSON *root) {
    int rc;
    c->ffn = c->moe_ffn;
    c->decoder_sparse_step = 1;
    const cJSON *mo = cJSON_GetObjectItemCaseSensitive(root, "mlp_only_layers");
    if (mo && !(cJSON_IsNull(mo) || (cJSON_IsArray(mo) && cJSON_GetArraySize(mo) == 0)))
        return sl_seterr(SL_ERR_UNSUPPORTED, "mlp_only_layers is not supported "
                         "for %s (every layer is MoE)", c->model_type);
    switch (c->arch) {
    case SL_ARCH_MIXTRAL:
        if (c->attention_bias)
            return sl_seterr(SL_ERR_UNSUPPORTED, "attention_bias = true is not "
                             "supported for mixtral (its projections have no bias)");
        c->norm_topk_prob = 1; /* MixtralSparseMoeBlock always renormalises */
        if ((rc = get_uint(root, "sliding_window", 0, 0, 1, MAX_CTX,
                           &c->sliding_window)))
            return rc;
        for (uint32_t i = 0; i < c->n_layers; i++)
            c->layer_sliding[i] = c->sliding_window > 0;
        break;
    case SL_ARCH_OLMOE: {
        const cJSON *clip = cJSON_GetObjectItemCaseSensitive(root, "clip_qkv");
        if (clip && !cJSON_IsNull(clip))
            return sl_seterr(SL_ERR_UNSUPPORTED, "clip_qkv = %s is not supported "
                             "(only null)", cJSON_IsNumber(clip) ? "a number"
                             : json_type_name(clip));
        c->qk_norm = SL_QK_NORM_FULL;
        break;
    }
    case SL_ARCH_GPT_OSS:
        c->router_kind = SL_ROUTER_TOPK_SOFTMAX;
        c->norm_topk_prob = 0;
        c->router_bias = 1;
        c->expert_bias = 1;
        c->attn_sinks = 1;
        /* swiglu_alpha: a config key since transformers 5 (GptOssConfig);
         * earlier versions hard-code the same 1.702. */
        if ((rc = get_opt_pos_float(root, "swiglu_limit", "", 7.0f,
                                    &c->swiglu_limit)) ||
            (rc = get_opt_pos_float(root, "swiglu_alpha", "", 1.702f,
                                    &c->swiglu_alpha)) ||
            (rc = get_uint(root, "sliding_window", 0, 128, 1, MAX_CTX,
                           &c->sliding_window)))
            return rc;
        /* GptOssConfig's default: even layers slide, odd layers are full. */
        for (uint32_t i = 0; i < c->n_layers; i++) c->layer_sliding[i] = (i + 1) % 2;
        break;
    default:
        SL_ASSERT(0);
    }
    if ((rc = parse_layer_types(c, root))) return rc;
    int any = 0;
    for (uint32_t i = 0; i < c->n_layers; i++) any |= c->layer_sliding[i];
    if (any && c->sliding_window == 0)
        return sl_seterr(SL_ERR_CONFIG, "layer_types names sliding layers but "
                         "sliding_window is null");
    if (!any) c->sliding_window = 0;
    return SL_OK;
}

/* A string key that must be absent, null or equal to want. */
static int check_string_value(const cJSON *root, const char *key, const char *want) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!it || cJSON_IsNull(it)) return SL_OK;
    if (!cJSON_IsString(it) || strcmp(it->valuestring, want) != 0)
        return sl_seterr(SL_ERR_UNSUPPORTED, "%s %s%.64s%s is not supported "
                         "(only \"%s\")", key, cJSON_IsString(it) ? "'" : "",
                         cJSON_IsString(it) ? it->valuestring : json_type_name(it),
                         cJSON_IsString(it) ? "'" : "", want);
    return SL_OK;
}

/* deepseek_v3 (DeepseekV3Config of transformers 5.24): multi-head latent
 * attention, the noaux_tc router, dense first layers, shared experts. Absent
 * keys take HF's class defaults; q_lora_rank null means a direct q_proj
 * (absent means 1536, HF's default). HF sets head_dim = qk_rope_head_dim. */
static int deepseek_parse(struct sl_config *c, const cJSON *root) {
    int rc;
    uint32_t freq;
    const cJSON *ql = cJSON_GetObjectItemCaseSensitive(root, "q_lora_rank");
    if (ql && cJSON_IsNull(ql)) c->q_lora_rank = 0;
    else if ((rc = get_uint(root, "q_lora_rank", 0, 1536, 1, MAX_HIDDEN, &c->q_lora_rank)))
        return rc;
    if ((rc = get_uint(root, "kv_lora_rank", 0, 512, 1, MAX_HIDDEN, &c->kv_lora_rank)) ||
        (rc = get_uint(root, "qk_nope_head_dim", 0, 128, 0, MAX_HEAD_DIM,
                       &c->qk_nope_head_dim)) ||
        (rc = get_uint(root, "qk_rope_head_dim", 0, 64, 2, 1024, &c->qk_rope_head_dim)) ||
        (rc = get_uint(root, "v_head_dim", 0, 128, 1, MAX_HEAD_DIM, &c->v_head_dim)) ||
        (rc = get_uint(root, "n_shared_experts", 0, 1, 0, 64, &c->n_shared_experts)) ||
        (rc = get_uint(root, "first_k_dense_replace", 0, 3, 0, c->n_layers,
                       &c->first_k_dense)) ||
        (rc = get_uint(root, "moe_layer_freq", 0, 1, 1, SL_MAX_LAYERS, &freq)) ||
        (rc = get_uint(root, "n_group", 0, 8, 1, SL_MAX_GROUPS, &c->n_group)) ||
        (rc = get_uint(root, "topk_group", 0, 4, 1, MAX_EXPERTS, &c->topk_group)) ||
        (rc = get_bool(root, "norm_topk_prob", 1, &c->norm_topk_prob)) ||
        (rc = get_bool(root, "rope_interleave", 1, &c->rope_interleave)) ||
        (rc = get_opt_pos_float(root, "routed_scaling_factor", "", 2.5f,
                                &c->routed_scaling_factor)) ||
        (rc = check_string_value(root, "topk_method", "noaux_tc")) ||
        (rc = check_string_value(root, "scoring_func", "sigmoid")))
        return rc;
    if (freq != 1)
        return sl_seterr(SL_ERR_UNSUPPORTED, "moe_layer_freq = %u is not "
                         "supported (only 1: every layer from first_k_dense_replace "
                         "on is MoE, as transformers runs it)", freq);
    if (c->attention_bias)
        return sl_seterr(SL_ERR_UNSUPPORTED, "attention_bias = true is not "
                         "supported for deepseek_v3");
    if (c->qk_rope_head_dim % 2)
        return sl_seterr(SL_ERR_CONFIG, "qk_rope_head_dim = %u must be even "
                         "(RoPE rotates pairs)", c->qk_rope_head_dim);
    if (c->n_experts % c->n_group || c->n_experts / c->n_group < 2)
        return sl_seterr(SL_ERR_CONFIG, "n_group = %u must divide n_routed_experts "
                         "= %u into groups of at least 2 (groups are ranked by "
                         "their top-2)", c->n_group, c->n_experts);
    if (c->topk_group > c->n_group)
        return sl_seterr(SL_ERR_CONFIG, "topk_group = %u exceeds n_group = %u",
                         c->topk_group, c->n_group);
    if (c->n_experts_used > c->topk_group * (c->n_experts / c->n_group))
        return sl_seterr(SL_ERR_CONFIG, "num_experts_per_tok = %u exceeds the "
                         "%u experts of topk_group = %u groups", c->n_experts_used,
                         c->topk_group * (c->n_experts / c->n_group), c->topk_group);
    const cJSON *mo = cJSON_GetObjectItemCaseSensitive(root, "mlp_only_layers");
    if (mo && !(cJSON_IsNull(mo) || (cJSON_IsArray(mo) && cJSON_GetArraySize(mo) == 0)))
        return sl_seterr(SL_ERR_UNSUPPORTED, "mlp_only_layers is not supported "
                         "for deepseek_v3 (first_k_dense_replace says which "
                         "layers are dense)");
    c->head_dim = c->qk_rope_head_dim;
    c->decoder_sparse_step = 1;
    c->router_kind = SL_ROUTER_NOAUX_TC;
    return SL_OK;
}

/* rope_scaling (hub spelling) or rope_parameters (transformers >= 4.56):
 * plain RoPE or YaRN, resolved exactly as transformers'
 * _compute_yarn_parameters does (factor, if null, is max_position_embeddings
 * / original_max_position_embeddings; beta_fast/beta_slow default to 32/1;
 * truncate to true; attention_factor to 0.1 ln(factor) + 1). */
static int parse_rope_yarn(struct sl_config *c, const cJSON *root) {
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(root, "rope_parameters");
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    const char *where = "rope_parameters.";
    const cJSON *r = cJSON_IsObject(rp) ? rp : NULL;
    if (cJSON_IsObject(rs) &&
        (!r || (!cJSON_GetObjectItemCaseSensitive(r, "rope_type") &&
                !cJSON_GetObjectItemCaseSensitive(r, "type")))) {
        r = rs;
        where = "rope_scaling.";
    }
    if (rs && !cJSON_IsNull(rs) && !cJSON_IsObject(rs))
        return sl_seterr(SL_ERR_CONFIG, "key 'rope_scaling' must be an object "
                         "or null, got %s", json_type_name(rs));
    c->rope_kind = SL_ROPE_DEFAULT;
    const cJSON *prf = cJSON_GetObjectItemCaseSensitive(r ? r : root,
                                                        "partial_rotary_factor");
    if (!prf) prf = cJSON_GetObjectItemCaseSensitive(root, "partial_rotary_factor");
    if (prf && !cJSON_IsNull(prf) && (!cJSON_IsNumber(prf) || prf->valuedouble != 1.0))
        return sl_seterr(SL_ERR_UNSUPPORTED, "partial_rotary_factor other than "
                         "1 is not supported");
    if (!r) return SL_OK;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(r, "rope_type");
    if (!t) t = cJSON_GetObjectItemCaseSensitive(r, "type");
    if (!t || cJSON_IsNull(t) ||
        (cJSON_IsString(t) && strcmp(t->valuestring, "default") == 0))
        return SL_OK;
    if (!cJSON_IsString(t) || strcmp(t->valuestring, "yarn") != 0)
        return sl_seterr(SL_ERR_UNSUPPORTED, "%srope_type %s%.64s%s is not "
                         "supported (\"default\" or \"yarn\")", where,
                         cJSON_IsString(t) ? "'" : "",
                         cJSON_IsString(t) ? t->valuestring : json_type_name(t),
                         cJSON_IsString(t) ? "'" : "");
    int rc;
    c->rope_kind = SL_ROPE_YARN;
    if ((rc = get_uint(r, "original_max_position_embeddings", 0, c->n_ctx_train,
                       1, MAX_CTX, &c->rope_orig_ctx)) ||
        (rc = get_opt_pos_float(r, "factor", where,
                                (float)c->n_ctx_train / (float)c->rope_orig_ctx,
                                &c->rope_factor)))
        return rc;
    /* HF: `get("beta_fast") or 32`: 0 and null take the default too. */
    const cJSON *bf = cJSON_GetObjectItemCaseSensitive(r, "beta_fast");
    const cJSON *bs = cJSON_GetObjectItemCaseSensitive(r, "beta_slow");
    if ((bf && !cJSON_IsNull(bf) && !cJSON_IsNumber(bf)) ||
        (bs && !cJSON_IsNull(bs) && !cJSON_IsNumber(bs)))
        return sl_seterr(SL_ERR_CONFIG, "%sbeta_fast / beta_slow must be "
                         "numbers", where);
    c->rope_beta_fast = cJSON_IsNumber(bf) && bf->valuedouble != 0
                            ? (float)bf->valuedouble : 32.0f;
    c->rope_beta_slow = cJSON_IsNumber(bs) && bs->valuedouble != 0
                            ? (float)bs->valuedouble : 1.0f;
    if ((rc = get_bool(r, "truncate", 1, &c->rope_truncate))) return rc;
    const cJSON *ms = cJSON_GetObjectItemCaseSensitive(r, "mscale");
    const cJSON *msa = cJSON_GetObjectItemCaseSensitive(r, "mscale_all_dim");
    if ((ms && !cJSON_IsNull(ms) && !cJSON_IsNumber(ms)) ||
        (msa && !cJSON_IsNull(msa) && !cJSON_IsNumber(msa)))
        return sl_seterr(SL_ERR_CONFIG, "%smscale / mscale_all_dim must be "
                         "numbers", where);
    double m1 = cJSON_IsNumber(ms) ? ms->valuedouble : 0;
    double m2 = cJSON_IsNumber(msa) ? msa->valuedouble : 0;
    if (c->arch != SL_ARCH_DEEPSEEK_V3 && (m1 != 0 || m2 != 0))
        return sl_seterr(SL_ERR_UNSUPPORTED, "%smscale / mscale_all_dim are "
                         "not supported for %s", where, c->model_type);
    if (!isfinite(m1) || !isfinite(m2) || m2 < 0)
        return sl_seterr(SL_ERR_CONFIG, "%smscale / mscale_all_dim must be "
                         "finite (mscale_all_dim >= 0)", where);
    c->rope_mscale_all_dim = (float)m2;
    float f = c->rope_factor;
    /* HF: mscale and mscale_all_dim both set: the ratio of their mscales. */
    float def = f <= 1 ? 1.0f : (float)(0.1 * log((double)f) + 1.0);
    if (m1 != 0 && m2 != 0 && f > 1)
        def = (float)((0.1 * m1 * log((double)f) + 1.0) /
                      (0.1 * m2 * log((double)f) + 1.0));
    return get_opt_pos_float(r, "attention_factor", where, def,
                             &c->rope_attn_factor);
}

static int parse_root(struct sl_config *c, const cJSON *root) {
    int rc;
    if (!cJSON_IsObject(root))
        return sl_seterr(SL_ERR_CONFIG, "top level must be a JSON "
                         "object, got %s", json_type_name(root));
    /* qwen3_5_moe's multimodal wrapper: the text model's keys are in
     * text_config (config_hybrid.c). */
    const cJSON *wrapper = NULL;
    if ((rc = config_hybrid_unwrap(&root, &wrapper))) return rc;

    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (!mt)
        return sl_seterr(SL_ERR_CONFIG, "missing required key "
                         "'model_type'; supported: %s", supported_types);
    if (!cJSON_IsString(mt))
        return sl_seterr(SL_ERR_CONFIG, "key 'model_type' must be a "
                         "string, got %s", json_type_name(mt));
    static const struct { const char *name; int arch; } archs[] = {
        {"qwen3_moe", SL_ARCH_QWEN3_MOE}, {"mixtral", SL_ARCH_MIXTRAL},
        {"olmoe", SL_ARCH_OLMOE}, {"gpt_oss", SL_ARCH_GPT_OSS},
        {"deepseek_v3", SL_ARCH_DEEPSEEK_V3}, {"qwen3_next", SL_ARCH_QWEN3_NEXT},
        {"qwen3_5_moe_text", SL_ARCH_QWEN3_5_MOE}};
    c->arch = 0;
    for (size_t i = 0; i < sizeof archs / sizeof archs[0]; i++)
        if (strcmp(mt->valuestring, archs[i].name) == 0) c->arch = archs[i].arch;
    if (!c->arch)
        return sl_seterr(SL_ERR_UNSUPPORTED, "model_type '%.64s' is not "
                         "supported; supported: %s", mt->valuestring,
                         supported_types);
    /* The hybrid families share qwen3_moe's keys and add their own. */
    int hybrid = config_is_hybrid(c);
    int qwen = c->arch == SL_ARCH_QWEN3_MOE || hybrid;
    int deepseek = c->arch == SL_ARCH_DEEPSEEK_V3;
    snprintf(c->model_type, sizeof c->model_type, "%s", mt->valuestring);

    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "hidden_act");
    if (act && !cJSON_IsNull(act) &&
        (!cJSON_IsString(act) || strcmp(act->valuestring, "silu") != 0))
        return sl_seterr(SL_ERR_UNSUPPORTED, "hidden_act %s%.64s%s is "
                         "not supported (only \"silu\")",
                         cJSON_IsString(act) ? "'" : "",
                         cJSON_IsString(act) ? act->valuestring
                                             : json_type_name(act),
                         cJSON_IsString(act) ? "'" : "");
    int sliding = 0;
    if (qwen && (rc = get_bool(root, "use_sliding_window", 0, &sliding))) return rc;
    if (sliding)
        return sl_seterr(SL_ERR_UNSUPPORTED, "use_sliding_window = "
                         "true is not supported");
    /* Key names that differ between the families. */
    const char *experts_key = c->arch == SL_ARCH_MIXTRAL ||
                                      c->arch == SL_ARCH_GPT_OSS
                                  ? "num_local_experts" : "num_experts";
    /* transformers 5 saves qwen3_moe's expert count as num_local_experts. */
    if (qwen && !cJSON_GetObjectItemCaseSensitive(root, "num_experts") &&
        cJSON_GetObjectItemCaseSensitive(root, "num_local_experts"))
        experts_key = "num_local_experts";
    if (deepseek) experts_key = "n_routed_experts";

    if ((rc = get_uint(root, "num_hidden_layers", 1, 0, 1, SL_MAX_LAYERS,
                       &c->n_layers)) ||
        (rc = get_uint(root, "hidden_size", 1, 0, 1, MAX_HIDDEN, &c->hidden)) ||
        (rc = get_uint(root, "num_attention_heads", 1, 0, 1, MAX_HEADS,
                       &c->n_heads)) ||
        (rc = get_uint(root, "num_key_value_heads", 0, c->n_heads, 1,
                       MAX_HEADS, &c->n_kv_heads)) ||
        (rc = get_uint(root, "head_dim", 0, c->hidden / c->n_heads, 1,
                       MAX_HEAD_DIM, &c->head_dim)) ||
        (rc = get_uint(root, "vocab_size", 1, 0, 1, MAX_VOCAB, &c->n_vocab)) ||
        (rc = get_uint(root, "max_position_embeddings", 1, 0, 1, MAX_CTX,
                       &c->n_ctx_train)) ||
        (rc = get_uint(root, "intermediate_size", !hybrid, 0, !hybrid, MAX_FFN,
                       &c->ffn)) ||
        (rc = get_uint(root, qwen || deepseek ? "moe_intermediate_size" : "intermediate_size",
                       1, 0, 1, MAX_FFN, &c->moe_ffn)) ||
        (rc = get_uint(root, experts_key, 1, 0, 1, MAX_EXPERTS,
                       &c->n_experts)) ||
        (rc = get_uint(root, "num_experts_per_tok", 1, 0, 1, MAX_EXPERTS,
                       &c->n_experts_used)) ||
        (rc = get_uint(root, "decoder_sparse_step", 0, 1, 1, SL_MAX_LAYERS,
                       &c->decoder_sparse_step)) ||
        (rc = get_bool(root, "norm_topk_prob", hybrid, &c->norm_topk_prob)) ||
        (rc = get_bool(root, "attention_bias", c->arch == SL_ARCH_GPT_OSS,
                       &c->attention_bias)) ||
        (rc = get_bool(root, "tie_word_embeddings", 0, &c->tie_embeddings)) ||
        (rc = get_pos_float(root, "rms_norm_eps", "", &c->rms_eps)))
        return rc;

    if (c->head_dim == 0)
        return sl_seterr(SL_ERR_CONFIG, "head_dim defaults to "
                         "hidden_size / num_attention_heads = 0; give head_dim");
    if (c->head_dim % 2)
        return sl_seterr(SL_ERR_CONFIG, "head_dim = %u must be even "
                         "(RoPE rotates pairs)", c->head_dim);
    if (c->n_heads % c->n_kv_heads)
        return sl_seterr(SL_ERR_CONFIG, "num_attention_heads = %u is "
                         "not a multiple of num_key_value_heads = %u",
                         c->n_heads, c->n_kv_heads);
    if (c->n_experts_used > c->n_experts)
        return sl_seterr(SL_ERR_CONFIG, "num_experts_per_tok = %u "
                         "exceeds num_experts = %u", c->n_experts_used,
                         c->n_experts);
    if ((uint64_t)c->n_heads * c->head_dim > MAX_HIDDEN * 4ull)
        return sl_seterr(SL_ERR_CONFIG, "num_attention_heads * "
                         "head_dim = %llu is implausibly large",
                         (unsigned long long)c->n_heads * c->head_dim);

    if (deepseek && (rc = deepseek_parse(c, root))) return rc;
    if (!qwen && !deepseek && (rc = family_parse(c, root))) return rc;

    /* rope_theta: top level (transformers < 4.56) or inside rope_parameters
     * (newer); rope scaling is not implemented except YaRN for gpt_oss. */
    if (c->arch == SL_ARCH_GPT_OSS || deepseek) {
        if ((rc = parse_rope_yarn(c, root))) return rc;
    } else if ((rc = check_rope_type(root, "rope_scaling")) ||
               (rc = check_rope_type(root, "rope_parameters"))) {
        return rc;
    }
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(root, "rope_parameters");
    if (cJSON_GetObjectItemCaseSensitive(root, "rope_theta") || !cJSON_IsObject(rp))
        rc = get_pos_float(root, "rope_theta", "", &c->rope_theta);
    else
        rc = get_pos_float(rp, "rope_theta", "rope_parameters.", &c->rope_theta);
    if (rc) return rc;

    /* mlp_only_layers: layers whose MLP is dense even though MoE is on. */
    uint8_t dense_only[SL_MAX_LAYERS] = {0};
    const cJSON *mo = cJSON_GetObjectItemCaseSensitive(root, "mlp_only_layers");
    if (mo && !cJSON_IsNull(mo)) {
        if (!cJSON_IsArray(mo))
            return sl_seterr(SL_ERR_CONFIG, "key 'mlp_only_layers' "
                             "must be a list of layer indices, got %s",
                             json_type_name(mo));
        const cJSON *it;
        cJSON_ArrayForEach(it, mo) {
            if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble))
                return sl_seterr(SL_ERR_CONFIG, "mlp_only_layers must "
                                 "hold integers, got %s", json_type_name(it));
            if (it->valuedouble < 0 || it->valuedouble >= c->n_layers)
                return sl_seterr(SL_ERR_CONFIG, "mlp_only_layers "
                                 "index %.0f is out of range [0, %u)",
                                 it->valuedouble, c->n_layers);
            dense_only[(uint32_t)it->valuedouble] = 1;
        }
    }
    for (uint32_t i = 0; i < c->n_layers; i++)
        c->layer_is_moe[i] = !dense_only[i] && c->n_experts > 0 &&
                             (i + 1) % c->decoder_sparse_step == 0;
    if (qwen) c->qk_norm = SL_QK_NORM_HEAD;
    c->rope_dim = c->head_dim;
    if (hybrid && (rc = config_hybrid_parse(c, root, wrapper))) return rc;
    for (uint32_t i = 0; deepseek && i < c->n_layers; i++) /* HF: layer_idx >= */
        c->layer_is_moe[i] = i >= c->first_k_dense;         /* first_k_dense_replace */

    c->bos_id = -1;
    c->n_eos = 0;
    if ((rc = parse_special_ids(c, root)) ||
        (rc = check_special_ids(c)) || (rc = check_sluice_object(root)))
        return rc;
    return SL_OK;
}

int config_parse(struct sl_config *cfg, const char *json, size_t len) {
    struct sl_config c;
    memset(&c, 0, sizeof c);
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        long off = at && at >= json && at <= json + len ? (long)(at - json) : -1;
        return sl_seterr(SL_ERR_CONFIG, "not valid JSON (error near byte "
                         "%ld)", off);
    }
    int rc = parse_root(&c, root);
    cJSON_Delete(root);
    if (rc) return rc;
    *cfg = c;
    return SL_OK;
}

int config_parse_generation(struct sl_config *cfg, const char *json,
                            size_t len) {
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root)
        return sl_seterr(SL_ERR_CONFIG, "not valid JSON");
    struct sl_config c = *cfg;
    int rc = SL_OK;
    if (!cJSON_IsObject(root))
        rc = sl_seterr(SL_ERR_CONFIG, "top level must be an object");
    if (!rc) rc = parse_special_ids(&c, root);
    if (!rc && c.n_vocab) rc = check_special_ids(&c);
    cJSON_Delete(root);
    if (rc) return rc;
    *cfg = c;
    return SL_OK;
}

/* The shortest decimal that reads back as the same float, as a double, so
 * that the manifest says 1e-06 rather than 9.99999997475243e-07. */
static double float_for_json(float v) {
    char buf[32];
    for (int prec = 6; prec <= 9; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)v);
        double d = strtod(buf, NULL);
        if ((float)d == v) return d;
    }
    return (double)v;
}

/* The manifest spells every key out, so that a reader needs no defaults. */
int config_to_manifest(const struct sl_config *c, int expert_dtype,
                       int dense_dtype, char **out, size_t *out_len) {
    *out = NULL;
    *out_len = 0;
    if (c->n_layers == 0 || c->n_layers > SL_MAX_LAYERS || c->n_eos > SL_MAX_EOS)
        return sl_seterr(SL_ERR_ARG, "config_to_manifest: config not parsed");
    cJSON *r = cJSON_CreateObject();
    if (!r) return sl_seterr(SL_ERR_NOMEM, "manifest: out of memory");
    int ok = 1;
#define NUM(k, v) ok &= cJSON_AddNumberToObject(r, k, (double)(v)) != NULL
#define BOOL(k, v) ok &= cJSON_AddBoolToObject(r, k, (v) != 0) != NULL
    ok &= cJSON_AddStringToObject(r, "model_type", c->model_type) != NULL;
    ok &= cJSON_AddStringToObject(r, "hidden_act", "silu") != NULL;
    NUM("num_hidden_layers", c->n_layers);
    NUM("hidden_size", c->hidden);
    NUM("num_attention_heads", c->n_heads);
    NUM("num_key_value_heads", c->n_kv_heads);
    NUM("head_dim", c->head_dim);
    NUM("vocab_size", c->n_vocab);
    NUM("max_position_embeddings", c->n_ctx_train);
    /* qwen3_moe's keys come first and in this order (its manifests are
     * byte-identical to those written before the other families existed);
     * the other families spell their keys as their config.json does. */
    int hybrid = config_is_hybrid(c);
    int qwen = c->arch == SL_ARCH_QWEN3_MOE || hybrid, deepseek = c->arch == SL_ARCH_DEEPSEEK_V3;
    NUM("intermediate_size", c->ffn);
    if (qwen || deepseek) NUM("moe_intermediate_size", c->moe_ffn);
    NUM(c->arch == SL_ARCH_MIXTRAL || c->arch == SL_ARCH_GPT_OSS ? "num_local_experts"
        : deepseek ? "n_routed_experts" : "num_experts", c->n_experts);
    NUM("num_experts_per_tok", c->n_experts_used);
    if (qwen || deepseek || c->arch == SL_ARCH_OLMOE)
        BOOL("norm_topk_prob", c->norm_topk_prob);
    if (deepseek) { /* MLA, router and layer keys; see deepseek_parse */
        if (c->q_lora_rank) NUM("q_lora_rank", c->q_lora_rank);
        else ok &= cJSON_AddNullToObject(r, "q_lora_rank") != NULL;
        NUM("kv_lora_rank", c->kv_lora_rank);
        NUM("qk_nope_head_dim", c->qk_nope_head_dim);
        NUM("qk_rope_head_dim", c->qk_rope_head_dim);
        NUM("v_head_dim", c->v_head_dim);
        NUM("n_shared_experts", c->n_shared_experts);
        NUM("first_k_dense_replace", c->first_k_dense);
        NUM("moe_layer_freq", 1);
        NUM("n_group", c->n_group);
        NUM("topk_group", c->topk_group);
        ok &= cJSON_AddStringToObject(r, "topk_method", "noaux_tc") != NULL;
        ok &= cJSON_AddStringToObject(r, "scoring_func", "sigmoid") != NULL;
        NUM("routed_scaling_factor", float_for_json(c->routed_scaling_factor));
        BOOL("rope_interleave", c->rope_interleave);
    }
    if (qwen) NUM("decoder_sparse_step", c->decoder_sparse_step);
    NUM("rms_norm_eps", float_for_json(c->rms_eps));
    NUM("rope_theta", float_for_json(c->rope_theta));
    if (c->rope_kind == SL_ROPE_YARN) {
        cJSON *y = cJSON_AddObjectToObject(r, "rope_scaling");
        ok &= y != NULL;
        if (ok) {
            ok &= cJSON_AddStringToObject(y, "rope_type", "yarn") != NULL;
            ok &= cJSON_AddNumberToObject(y, "factor", float_for_json(c->rope_factor)) != NULL;
            ok &= cJSON_AddNumberToObject(y, "beta_fast", float_for_json(c->rope_beta_fast)) != NULL;
            ok &= cJSON_AddNumberToObject(y, "beta_slow", float_for_json(c->rope_beta_slow)) != NULL;
            ok &= cJSON_AddNumberToObject(y, "original_max_position_embeddings",
                                          c->rope_orig_ctx) != NULL;
            ok &= cJSON_AddBoolToObject(y, "truncate", c->rope_truncate != 0) != NULL;
            ok &= cJSON_AddNumberToObject(y, "attention_factor",
                                          float_for_json(c->rope_attn_factor)) != NULL;
            if (c->rope_mscale_all_dim != 0)
                ok &= cJSON_AddNumberToObject(y, "mscale_all_dim",
                                              float_for_json(c->rope_mscale_all_dim)) != NULL;
        }
    } else {
        ok &= cJSON_AddNullToObject(r, "rope_scaling") != NULL;
    }
    BOOL("attention_bias", c->attention_bias);
    BOOL("tie_word_embeddings", c->tie_embeddings);
    if (qwen) {
        BOOL("use_sliding_window", 0);
        /* Every non-MoE layer is listed, so the re-parse resolves layer_is_moe
         * identically whatever decoder_sparse_step is. */
        cJSON *mo = cJSON_AddArrayToObject(r, "mlp_only_layers");
        ok &= mo != NULL;
        for (uint32_t i = 0; ok && i < c->n_layers; i++)
            if (!c->layer_is_moe[i])
                ok &= cJSON_AddItemToArray(mo, cJSON_CreateNumber(i));
        if (hybrid) ok &= config_hybrid_to_manifest(c, r) == SL_OK;
    } else if (!deepseek) {
        if (c->sliding_window) NUM("sliding_window", c->sliding_window);
        else ok &= cJSON_AddNullToObject(r, "sliding_window") != NULL;
        cJSON *lt = cJSON_AddArrayToObject(r, "layer_types");
        ok &= lt != NULL;
        for (uint32_t i = 0; ok && i < c->n_layers; i++)
            ok &= cJSON_AddItemToArray(lt, cJSON_CreateString(
                      c->layer_sliding[i] ? "sliding_attention" : "full_attention"));
        if (c->arch == SL_ARCH_GPT_OSS) {
            NUM("swiglu_limit", float_for_json(c->swiglu_limit));
            NUM("swiglu_alpha", float_for_json(c->swiglu_alpha));
        }
        if (c->arch == SL_ARCH_OLMOE)
            ok &= cJSON_AddNullToObject(r, "clip_qkv") != NULL;
    }
    if (c->bos_id >= 0) NUM("bos_token_id", c->bos_id);
    else ok &= cJSON_AddNullToObject(r, "bos_token_id") != NULL;
    cJSON *eos = cJSON_AddArrayToObject(r, "eos_token_id");
    ok &= eos != NULL;
    for (uint32_t i = 0; ok && i < c->n_eos; i++)
        ok &= cJSON_AddItemToArray(eos, cJSON_CreateNumber(c->eos_ids[i]));
    cJSON *s = cJSON_AddObjectToObject(r, "sluice");
    ok &= s != NULL;
    if (ok) {
        ok &= cJSON_AddNumberToObject(s, "format_version", 1) != NULL;
        ok &= cJSON_AddStringToObject(s, "expert_dtype",
                                      sl_dtype_name(expert_dtype)) != NULL;
        ok &= cJSON_AddStringToObject(s, "dense_dtype",
                                      sl_dtype_name(dense_dtype)) != NULL;
    }
#undef NUM
#undef BOOL
    char *txt = ok ? cJSON_Print(r) : NULL;
    cJSON_Delete(r);
    if (!txt) return sl_seterr(SL_ERR_NOMEM, "manifest: out of memory");
    /* Copied so that the caller frees with sl_free like everything else. */
    size_t n = strlen(txt);
    char *buf = sl_malloc(n + 1);
    if (!buf) {
        cJSON_free(txt);
        return sl_seterr(SL_ERR_NOMEM, "manifest: out of memory");
    }
    memcpy(buf, txt, n + 1);
    cJSON_free(txt);
    *out = buf;
    *out_len = n;
    return SL_OK;
}
