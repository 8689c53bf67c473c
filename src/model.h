/*
 * model.h — an open model: the validated file, its configuration, and every
 * dense weight bound by name to its place in the architecture. Routed
 * experts are not bound here: they are reached through the expert store.
 *
 * The model owns the file mapping, the tokenizer and the expert store; the
 * pointers in struct model_weights point into the mapping and live as long
 * as the model.
 */
#ifndef SL_MODEL_H
#define SL_MODEL_H

#include <stdint.h>

#include "sluice.h"
#include "config.h"
#include "expert_store.h"
#include "format.h"

/* A stored matrix (rows, cols) in one of the dtypes of quant.h. */
struct weight {
    const void *data;
    int dtype;
    uint64_t rows, cols;
};

struct cuda_model;

struct layer_weights {
    const float *attn_norm;     /* (hidden) */
    const float *ffn_norm;      /* (hidden) */
    struct weight wq;           /* (n_heads * head_dim, hidden) */
    struct weight wk, wv;       /* (n_kv_heads * head_dim, hidden) */
    struct weight wo;           /* (hidden, n_heads * head_dim) */
    const float *bq, *bk, *bv, *bo; /* biases or NULL (attention_bias) */
    const float *q_norm;        /* (head_dim); olmoe: (n_heads * head_dim);
                                   NULL without q/k norm (cfg.qk_norm) */
    const float *k_norm;        /* (head_dim); olmoe: (n_kv_heads * head_dim) */
    const float *sinks;         /* (n_heads) attention sink logits, or NULL */
    struct weight router;       /* (n_experts, hidden); MoE layers only */
    const float *router_b;      /* (n_experts) router bias, or NULL */
    const float *exp_gate_up_b; /* (n_experts, 2 * moe_ffn) expert gate/up
                                   biases, HF-interleaved: gate j at 2j, up j
                                   at 2j + 1; NULL unless cfg.expert_bias */
    const float *exp_down_b;    /* (n_experts, hidden) expert down biases */
    struct weight w_gate, w_up; /* (ffn, hidden); dense-MLP layers only */
    struct weight w_down;       /* (hidden, ffn) */
    /* deepseek_v3 (layer_mla.h); empty otherwise. wq is q_proj (n_heads *
     * qk_head_dim, hidden) when q_lora_rank is 0; wo is (hidden, n_heads *
     * v_head_dim); wk, wv are unused. */
    struct weight wq_a;         /* (q_lora_rank, hidden) q_a_proj */
    const float *q_a_norm;      /* (q_lora_rank) q_a_layernorm */
    struct weight wq_b;         /* (n_heads * qk_head_dim, q_lora_rank) */
    struct weight wkv_a;        /* (kv_lora_rank + qk_rope_head_dim, hidden)
                                   kv_a_proj_with_mqa */
    const float *kv_a_norm;     /* (kv_lora_rank) kv_a_layernorm */
    struct weight wkv_b;        /* (n_heads * (qk_nope_head_dim + v_head_dim),
                                   kv_lora_rank): per head nope rows, then v */
    const float *router_sel_bias; /* (n_experts) e_score_correction_bias */
    struct weight sh_gate, sh_up; /* (moe_ffn * n_shared_experts, hidden) */
    struct weight sh_down;      /* (hidden, moe_ffn * n_shared_experts) */
    /* qwen3_next / qwen3_5_moe (layer_hybrid.c); empty otherwise. Their
     * shared expert is sh_gate/sh_up/sh_down (shared_ffn rows) scaled by
     * sigmoid(sh_expert_gate . x). Attention layers: wq is (2 * n_heads *
     * head_dim, hidden), per head its q rows then its gate rows. Gated
     * DeltaNet layers (cfg.layer_linear) have no wq..wo but: */
    const float *sh_expert_gate; /* (hidden) shared_expert_gate, or NULL */
    struct weight lin_qkv;      /* (conv_dim, hidden) in_proj_qkv */
    struct weight lin_z;        /* (lin value_dim, hidden) in_proj_z */
    struct weight lin_b, lin_a; /* (lin_v_heads, hidden) in_proj_b / _a, f32 */
    const float *lin_conv;      /* (conv_dim, lin_conv) conv1d taps */
    const float *lin_A_log;     /* (lin_v_heads) */
    const float *lin_dt_bias;   /* (lin_v_heads) */
    const float *lin_norm;      /* (lin_v_dim) gated RMSNorm weight */
    struct weight lin_out;      /* (hidden, lin value_dim) out_proj */
};

struct sl_model {
    struct sl_file file;
    struct sl_config cfg;
    struct sl_model_params params;
    struct weight embed;        /* (n_vocab, hidden) */
    struct weight lm_head;      /* (n_vocab, hidden); = embed when tied */
    const float *final_norm;    /* (hidden) */
    struct layer_weights *layers; /* (n_layers) */
    float *rope_inv_freq;       /* (head_dim / 2) YaRN frequencies, owned;
                                   NULL for plain RoPE */
    float rope_mscale;          /* YaRN attention factor (1 for plain) */
    struct expert_store *experts;
    struct sl_tokenizer *tok;   /* NULL if the file has none */
    struct cuda_model *cuda;    /* the CUDA backend's device weights and GPU
                                   expert cache (src/cuda/cuda.h); NULL on
                                   the CPU */
    char desc[256];
};

#endif /* SL_MODEL_H */
