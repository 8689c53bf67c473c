/*
 * config.h — the model's hyper-parameters: one flat struct, parsed from a
 * HuggingFace config.json (by the converter) or from the manifest of a
 * .sluice file (by the loader). Both use one parser: the manifest is a JSON
 * object with the same key names as config.json, every value resolved and
 * written explicitly (see config_to_manifest), plus a "sluice" object.
 *
 * Unknown or unsupported values are rejected with a message, never silently
 * defaulted. Derived sizes are inline helpers, never stored twice.
 */
#ifndef SL_CONFIG_H
#define SL_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#define SL_MAX_LAYERS 1024
#define SL_MAX_EOS 8
#define SL_MAX_GROUPS 256 /* n_group of the noaux_tc router */

enum sl_arch {
    SL_ARCH_QWEN3_MOE = 1,
    SL_ARCH_MIXTRAL = 2,
    SL_ARCH_OLMOE = 3,
    SL_ARCH_GPT_OSS = 4,
    SL_ARCH_DEEPSEEK_V3 = 5, /* deepseek_v3 (DeepSeek-V3/R1/V3.1, Kimi K2) */
    SL_ARCH_QWEN3_NEXT = 6,  /* hybrid: Gated DeltaNet + gated attention */
    SL_ARCH_QWEN3_5_MOE = 7, /* the same layers: qwen3_5_moe(_text) */
};

/* Normalisation of q and k after their projections. */
enum sl_qk_norm {
    SL_QK_NORM_NONE = 0,  /* mixtral, gpt_oss */
    SL_QK_NORM_HEAD = 1,  /* qwen3_moe: per head, weight (head_dim) */
    SL_QK_NORM_FULL = 2,  /* olmoe: over the whole projection, weight
                             (n_heads * head_dim) resp. (n_kv_heads * ...) */
};

/* How router logits become top-k ids and weights. */
enum sl_router_kind {
    SL_ROUTER_SOFTMAX_TOPK = 0, /* softmax over all experts, top-k, then
                                   renormalised if norm_topk_prob */
    SL_ROUTER_TOPK_SOFTMAX = 1, /* top-k of the logits, softmax over those k
                                   (gpt_oss) */
    SL_ROUTER_NOAUX_TC = 2,     /* deepseek_v3: sigmoid scores, selection
                                   bias, group-limited top-k (moe_route.h) */
};

enum sl_rope_kind {
    SL_ROPE_DEFAULT = 0,
    SL_ROPE_YARN = 1,     /* rope_type "yarn" (gpt_oss) */
};

struct sl_config {
    int arch;                     /* enum sl_arch, from model_type */
    char model_type[32];          /* as written in config.json */
    uint32_t n_layers;            /* num_hidden_layers */
    uint32_t hidden;              /* hidden_size */
    uint32_t n_heads;             /* num_attention_heads */
    uint32_t n_kv_heads;          /* num_key_value_heads (GQA) */
    uint32_t head_dim;            /* head_dim, or hidden / n_heads */
    uint32_t n_vocab;             /* vocab_size */
    uint32_t n_ctx_train;         /* max_position_embeddings */
    uint32_t ffn;                 /* intermediate_size (dense MLP layers) */
    uint32_t moe_ffn;             /* moe_intermediate_size (each expert) */
    uint32_t n_experts;           /* num_experts (routed) */
    uint32_t n_experts_used;      /* num_experts_per_tok (top-k) */
    int norm_topk_prob;           /* renormalise top-k weights to sum 1 */
    uint32_t decoder_sparse_step; /* MoE every n-th layer */
    float rms_eps;                /* rms_norm_eps */
    float rope_theta;             /* rope_theta or rope_parameters.rope_theta */
    int attention_bias;           /* q/k/v/o projections carry biases */
    int tie_embeddings;           /* tie_word_embeddings */
    uint8_t layer_is_moe[SL_MAX_LAYERS]; /* resolved from mlp_only_layers and
                                            decoder_sparse_step */
    /* Family variations; all zero for qwen3_moe except qk_norm. */
    int qk_norm;                  /* enum sl_qk_norm */
    int router_kind;              /* enum sl_router_kind */
    int router_bias;              /* the router has a bias (gpt_oss) */
    int expert_bias;              /* expert gate/up/down have biases (gpt_oss) */
    int attn_sinks;               /* per-head sink logits (gpt_oss) */
    uint32_t sliding_window;      /* window of sliding layers; 0 = none */
    uint8_t layer_sliding[SL_MAX_LAYERS]; /* layer attends to the last
                                     sliding_window positions only */
    float swiglu_limit;           /* > 0: gpt-oss clamped SwiGLU */
    float swiglu_alpha;           /* its sigmoid gain (swiglu_alpha, 1.702) */
    int rope_kind;                /* enum sl_rope_kind */
    float rope_factor;            /* yarn: factor */
    float rope_beta_fast;         /* yarn: beta_fast */
    float rope_beta_slow;         /* yarn: beta_slow */
    uint32_t rope_orig_ctx;       /* yarn: original_max_position_embeddings */
    int rope_truncate;            /* yarn: truncate (HF default true) */
    float rope_attn_factor;       /* yarn: attention_factor, resolved */
    uint32_t rope_dim;            /* dims rotated per head: head_dim, or
                                     head_dim * partial_rotary_factor */
    /* Hybrid families (qwen3_next, qwen3_5_moe; config_hybrid.c); all zero
     * for the others. */
    uint8_t layer_linear[SL_MAX_LAYERS]; /* Gated DeltaNet layer, else full
                                     (gated) attention; from layer_types or
                                     full_attention_interval */
    uint32_t lin_k_heads;         /* linear_num_key_heads */
    uint32_t lin_v_heads;         /* linear_num_value_heads (multiple of
                                     lin_k_heads) */
    uint32_t lin_k_dim;           /* linear_key_head_dim */
    uint32_t lin_v_dim;           /* linear_value_head_dim */
    uint32_t lin_conv;            /* linear_conv_kernel_dim (>= 2) */
    uint32_t shared_ffn;          /* shared_expert_intermediate_size; 0: no
                                     shared expert */
    int attn_gate;                /* q_proj carries a sigmoid output gate:
                                     rows per head [q (head_dim), gate] */
    /* DeepSeek-V3 (arch SL_ARCH_DEEPSEEK_V3) only; zero otherwise. MLA
     * (layer_mla.h) replaces q/k/v; head_dim = qk_rope_head_dim as in HF. */
    uint32_t q_lora_rank;         /* q_lora_rank; 0 = null (direct q_proj) */
    uint32_t kv_lora_rank;        /* kv_lora_rank (the latent); > 0 marks MLA */
    uint32_t qk_nope_head_dim;    /* qk_nope_head_dim */
    uint32_t qk_rope_head_dim;    /* qk_rope_head_dim */
    uint32_t v_head_dim;          /* v_head_dim */
    uint32_t n_shared_experts;    /* n_shared_experts (one MLP of
                                     moe_ffn * n_shared_experts) */
    uint32_t first_k_dense;       /* first_k_dense_replace */
    uint32_t n_group;             /* n_group: expert groups of the router */
    uint32_t topk_group;          /* topk_group: groups kept per token */
    float routed_scaling_factor;  /* routed_scaling_factor */
    int rope_interleave;          /* rope_interleave: rotary pairs (2i, 2i+1) */
    float rope_mscale_all_dim;    /* yarn: mscale_all_dim; != 0 multiplies
                                     the attention scale by mscale(factor,
                                     mscale_all_dim)^2 */
    /* From generation_config.json / tokenizer config, when known. */
    int32_t bos_id;               /* -1 if none */
    uint32_t n_eos;
    int32_t eos_ids[SL_MAX_EOS];
};

/* Parses config.json text (or a manifest). Fills cfg on success; on failure
 * returns SL_ERR_CONFIG / SL_ERR_UNSUPPORTED with the offending key named.
 * An unsupported model_type gets the list of supported ones. */
int config_parse(struct sl_config *cfg, const char *json, size_t len);

/* Reads generation_config.json text (eos_token_id: int or list,
 * bos_token_id) into cfg; absent keys leave cfg unchanged. */
int config_parse_generation(struct sl_config *cfg, const char *json,
                            size_t len);

/* Writes the manifest: every field explicitly, HF key names, plus
 * "sluice": {"format_version", "expert_dtype", "dense_dtype"} from the
 * arguments. *out is malloc'ed, NUL-terminated. */
int config_to_manifest(const struct sl_config *cfg, int expert_dtype,
                       int dense_dtype, char **out, size_t *out_len);

/* Comma-separated list of supported model_type values. */
const char *config_supported_types(void);

static inline uint32_t config_q_dim(const struct sl_config *c) {
    return c->n_heads * c->head_dim;
}
static inline uint32_t config_kv_dim(const struct sl_config *c) {
    return c->n_kv_heads * c->head_dim;
}
static inline int config_is_hybrid(const struct sl_config *c) {
    return c->arch == SL_ARCH_QWEN3_NEXT || c->arch == SL_ARCH_QWEN3_5_MOE;
}
/* Gated DeltaNet sizes: q and k (lin_k_heads * lin_k_dim each), v and the
 * output (lin_v_heads * lin_v_dim); the conv runs over [q | k | v]. */
static inline uint32_t config_lin_key_dim(const struct sl_config *c) {
    return c->lin_k_heads * c->lin_k_dim;
}
static inline uint32_t config_lin_value_dim(const struct sl_config *c) {
    return c->lin_v_heads * c->lin_v_dim;
}
static inline uint32_t config_lin_conv_dim(const struct sl_config *c) {
    return 2 * config_lin_key_dim(c) + config_lin_value_dim(c);
}

/* config_hybrid.c: the keys of qwen3_next / qwen3_5_moe (see there).
 * config_hybrid_unwrap: when *root is a qwen3_5_moe multimodal wrapper
 * (model_type "qwen3_5_moe" with a "text_config" object), points *root at
 * the text config and *wrapper at the wrapper; else leaves *root and sets
 * *wrapper = NULL. config_hybrid_parse reads the hybrid keys after the
 * common ones (layer_is_moe resolved); config_hybrid_to_manifest adds
 * them to a manifest object. Errors name the key (SL_ERR_CONFIG /
 * SL_ERR_UNSUPPORTED). */
struct cJSON;
int config_hybrid_unwrap(const struct cJSON **root, const struct cJSON **wrapper);
int config_hybrid_parse(struct sl_config *c, const struct cJSON *root,
                        const struct cJSON *wrapper);
int config_hybrid_to_manifest(const struct sl_config *c, struct cJSON *manifest);
/* MLA sizes (deepseek_v3). */
static inline uint32_t config_qk_head_dim(const struct sl_config *c) {
    return c->qk_nope_head_dim + c->qk_rope_head_dim;
}
/* Floats per position of an MLA layer's cache: latent, then rope key. */
static inline uint32_t config_mla_cache_dim(const struct sl_config *c) {
    return c->kv_lora_rank + c->qk_rope_head_dim;
}

#endif /* SL_CONFIG_H */
