/*
 * context.h — a context: its sequences' KV caches (context_seq.c binds one
 * at a time), the activation buffers of
 * the forward pass (allocated once; the forward pass never allocates), the
 * thread pool and the counters. Owned by the caller of sl_context_create;
 * borrows the model, which must outlive it.
 */
#ifndef SL_CONTEXT_H
#define SL_CONTEXT_H

#include <stdint.h>
#include <stdio.h>

#include "model.h"

struct sl_pool;
struct mla_scratch;
struct hybrid_state;
struct seq_slot;
struct seq_run;
struct cuda_ctx;

struct sl_context {
    struct sl_model *model;
    struct sl_pool *pool;
    uint32_t n_ctx;           /* KV capacity in positions */
    uint32_t n_batch;         /* most tokens per forward_batch call */
    uint32_t n_past;          /* positions evaluated */
    float *k_cache;           /* (n_layers, n_ctx, n_kv_heads * head_dim) */
    float *v_cache;           /* (n_layers, n_ctx, n_kv_heads * head_dim) */
    /* activations of a chunk of up to n_batch tokens */
    float *x;                 /* (n_batch, hidden) residual stream */
    float *xb;                /* (n_batch, hidden) normed input of a block */
    float *xb2;               /* (n_batch, hidden) block output */
    float *q;                 /* (n_batch, n_heads * head_dim) */
    float *att;               /* (n_batch, n_heads * head_dim) attention out */
    float *att_scores;        /* (n_heads, n_ctx) attention scratch */
    float *router;            /* (n_batch, n_experts) logits, then probs */
    int32_t *topk_ids;        /* (n_batch, n_experts_used) */
    float *topk_w;            /* (n_batch, n_experts_used) */
    int32_t *expert_count;    /* (n_experts) selections per expert */
    int32_t *expert_start;    /* (n_experts) first slot in sel_order */
    int32_t *sel_order;       /* (n_batch * n_experts_used) selections
                                 (token * k + slot) grouped by expert */
    float *gather;            /* (n_batch, hidden) tokens of one expert */
    float *hb, *hb2;          /* (n_batch, max(ffn, moe_ffn)) */
    float *moe_tmp;           /* (n_batch * n_experts_used, hidden) expert
                                 outputs, row = selection's place in
                                 sel_order (combined in a fixed order) */
    int32_t *moe_ids;         /* (n_experts) distinct experts of a chunk */
    uint8_t *moe_done;        /* (n_experts) acquired flags of moe_ids */
    int32_t *pf_ids;          /* (n_experts) lookahead prediction */
    /* MLA (deepseek_v3, layer_mla.h): the latent cache replaces k_cache
     * and v_cache, which stay NULL; both NULL for other families. */
    float *mla_cache;         /* (n_layers, n_ctx, kv_lora_rank +
                                 qk_rope_head_dim): per position the normed
                                 latent, then the roped shared key */
    struct mla_scratch *mla;  /* MLA activation buffers */
    /* qwen3_next / qwen3_5_moe (layer_hybrid.h): the Gated DeltaNet layers'
     * recurrent state (fixed size per layer) and scratch; NULL otherwise.
     * Cleared by sl_context_reset; a failed sl_eval resets the context. */
    struct hybrid_state *hybrid;
    /* Token history and recurrent-state checkpoints (context_state.c). */
    int32_t *tokens;          /* (n_ctx) the ids at positions 0..n_past-1 */
    uint32_t ckpt_interval;   /* hybrid: checkpoint spacing; UINT32_MAX none */
    uint32_t n_ckpt, ckpt_cap;
    uint32_t *ckpt_pos;       /* (ckpt_cap) ascending positions > 0 */
    float **ckpt_state;       /* (ckpt_cap) copies of hybrid->state
                                 (state_floats each) at ckpt_pos */
    float *logits;            /* (n_vocab) after the last token */
    int has_logits;
    /* Sequences (context_seq.c): the fields above that belong to one
     * sequence (caches, recurrent state, tokens, checkpoints, n_past,
     * logits) are those of the bound sequence cur_seq; the others wait in
     * seqs[]. Between API calls sequence 0 is bound. NULL when n_seq_max is
     * 1. */
    uint32_t n_seq_max, cur_seq;
    struct seq_slot *seqs;    /* (n_seq_max) */
    const struct seq_run *runs; /* forward_batch: the chunk's runs of one
                                 sequence each, or NULL (one run, the bound
                                 sequence at pos) */
    int n_runs;
    /* sl_decode_batch scratch, allocated once by context_seq_create so that
     * a batched step allocates nothing */
    int32_t *bt_count;        /* (n_seq_max) tokens per sequence */
    int32_t *bt_order;        /* (n_batch) batch index of each run-order token */
    int32_t *bt_toks;         /* (n_batch) the tokens in run order */
    int32_t *bt_inv;          /* (n_batch) run-order index of each batch index */
    struct seq_run *bt_runs;  /* (n_batch) */
    float *bt_row;            /* (n_vocab) one logits row, for the reorder */
    float *bt_k, *bt_v;       /* (n_batch, n_kv_heads * head_dim) a mixed
                                 batch's K and V before each run's rows go to
                                 its sequence's cache; NULL unless several
                                 sequences and a K/V cache */
    uint64_t n_attn_proj;     /* attention projection matrices applied (q, k,
                                 v and o count one each per application,
                                 whatever the rows; MLA not counted): a
                                 mixed batch applies each once per layer */
    const char *dump_dir;     /* SLUICE_DUMP, or NULL */
    struct cuda_ctx *cuda;    /* device KV cache and activations when the
                                 model runs on CUDA (src/cuda/cuda.h) */
    struct sl_stats stats;
};

/* Runs n tokens (1 <= n <= n_batch) at positions pos..pos+n-1 (< n_ctx)
 * through every layer, writing their K and V into the cache. If logits is
 * not NULL it receives n_vocab floats for the last token, or for every token
 * ((n, n_vocab)) when all_logits. Fails only if an expert cannot be acquired
 * or scratch cannot grow; the cache rows past pos are then undefined. */
int forward_batch(struct sl_context *ctx, const int32_t *tokens, int n,
                  uint32_t pos, float *logits, int all_logits);

/* One sequence's share of a chunk: rows [start, start + n) at positions
 * pos.. of sequence seq. */
struct seq_run {
    uint32_t seq, pos;
    int start, n;
};

/* context_seq.c: makes sequence s the bound one (swaps the per-sequence
 * fields of struct sl_context with seqs[s]). No-op without seqs. */
void seq_bind(struct sl_context *ctx, uint32_t s);
/* Allocates sequences 1 .. n_seq_max - 1 (sequence 0 is the context's own
 * buffers) or, for n_seq_max <= 1, nothing. SL_ERR_NOMEM. */
int context_seq_create(struct sl_context *ctx, uint32_t n_seq_max);
void context_seq_free(struct sl_context *ctx);

/* context_state.c: after a successful chunk that ended at position p_end,
 * copies the recurrent state when a checkpoint interval boundary was
 * crossed since the last checkpoint (no-op without hybrid layers). Fails
 * only for lack of memory, which the caller may ignore (fewer
 * checkpoints only cost recomputation). */
int context_checkpoint(struct sl_context *ctx, uint32_t p_end);
/* Drops the checkpoints above position p (p = 0: all of them). */
void context_drop_checkpoints(struct sl_context *ctx, uint32_t p);
void context_free_checkpoints(struct sl_context *ctx);

#endif /* SL_CONTEXT_H */
