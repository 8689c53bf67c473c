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
    char desc[256];
};

#endif /* SL_MODEL_H */
