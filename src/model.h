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
    const float *q_norm;        /* (head_dim) */
    const float *k_norm;        /* (head_dim) */
    struct weight router;       /* (n_experts, hidden); MoE layers only */
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
    struct expert_store *experts;
    struct sl_tokenizer *tok;   /* NULL if the file has none */
    char desc[256];
};

#endif /* SL_MODEL_H */
