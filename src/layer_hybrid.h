/*
 * layer_hybrid.h — what qwen3_next / qwen3_5_moe add to the forward pass
 * (forward.c calls these hooks when config_is_hybrid):
 *   - the Gated DeltaNet layers (cfg.layer_linear): input projections,
 *     layer_gdn.c's mixer, out_proj, with one recurrent state per layer;
 *   - the gated attention: q_proj yields per head q and a gate, the
 *     attention output is multiplied by sigmoid(gate) before o_proj;
 *   - the shared expert's sigmoid gate.
 *
 * State: struct hybrid_state belongs to a context (one sequence). It holds
 * each GDN layer's conv state (conv_dim, kernel - 1) and delta-rule state
 * (n_v_heads, k_dim, v_dim) — fixed size, whatever the context length —
 * and the scratch buffers of these layers for n_batch tokens. Cleared by
 * hybrid_state_reset (sl_context_reset); a sequence cannot be rewound, so
 * a failed sl_eval resets it (context.c).
 */
#ifndef SL_LAYER_HYBRID_H
#define SL_LAYER_HYBRID_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "layer_gdn.h"

struct sl_context;

struct hybrid_state {
    struct gdn_state *gdn;  /* (n_layers): state of GDN layer l, zeroed
                               pointers for attention layers */
    float *state;           /* backing store of every gdn[l].conv / .ssm */
    size_t state_floats;
    /* scratch for up to n_batch tokens */
    float *qkv;             /* (n_batch, conv_dim) in_proj_qkv, then conv */
    float *z;               /* (n_batch, lin value_dim) in_proj_z */
    float *a, *b;           /* (n_batch, lin_v_heads) in_proj_a / in_proj_b */
    float *core;            /* (n_batch, lin value_dim) mixer output */
    float *gdn_scratch;     /* gdn_scratch_floats(n_batch, n_threads) */
    float *qg;              /* (n_batch, 2 * n_heads * head_dim) q_proj out */
    float *gate;            /* (n_batch, n_heads * head_dim) attention gate */
};

/* Allocates the state (zero) and scratch for cfg, n_batch tokens a call and
 * a pool of n_threads. SL_ERR_NOMEM with a message on failure (*out NULL). */
int hybrid_state_create(const struct sl_config *cfg, int n_batch, int n_threads,
                        struct hybrid_state **out);
void hybrid_state_free(struct hybrid_state *s); /* NULL is a no-op */
/* Zeroes every recurrent state: the start of a new sequence. */
void hybrid_state_reset(struct hybrid_state *s);
/* Bytes of recurrent state (all GDN layers): what a prompt cache saves. */
size_t hybrid_state_bytes(const struct hybrid_state *s);

/* GDN layer l on n tokens: reads ctx->xb (n, hidden), writes ctx->xb2
 * (n, hidden), advances the layer's state. n > 1 uses the chunked delta
 * rule (as transformers does for prompts), n == 1 the recurrent step.
 * Fails only if the pool's scratch cannot grow. */
int hybrid_gdn_layer(struct sl_context *ctx, uint32_t l, int n);

/* Gated attention, q side: q_proj of ctx->xb (n rows) split into ctx->q
 * (n, n_heads * head_dim) and the gate (kept in ctx->hybrid). */
int hybrid_attn_q(struct sl_context *ctx, uint32_t l, int n);
/* ctx->att (n, n_heads * head_dim) *= sigmoid(gate). */
void hybrid_attn_gate(struct sl_context *ctx, int n);

/* The shared expert's gate: rows t < n of out (n, hidden) are scaled by
 * sigmoid(sh_expert_gate . x_t), x = ctx->xb. */
void hybrid_shared_gate(struct sl_context *ctx, uint32_t l, float *out, int n);

#endif /* SL_LAYER_HYBRID_H */
