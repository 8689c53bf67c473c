/*
 * layer_gdn_cuda.cuh — the qwen3_next / qwen3_5_moe hybrid layers on the
 * GPU (C++, for src/cuda only): the Gated DeltaNet mixer (conv1d with its
 * rolling state, the gated delta rule, the gated RMSNorm), the gated
 * full attention (q projection carrying a sigmoid output gate, per-head q/k
 * RMSNorm, partial NeoX rotary), and the shared expert with its sigmoid
 * gate. The CPU specification is src/layer_gdn.c + src/layer_hybrid.c;
 * forward_cuda.cu calls these hooks when cm->hy is set.
 *
 * What it is not: attention itself (ops_cuda.cu's kernel_attention, reused
 * as is), the routed experts (forward_cuda.cu's moe_block), the matmuls
 * (ops_cuda.cu).
 *
 * State: struct hybrid_cuda_ctx belongs to one cuda_ctx (one sequence): the
 * conv state (conv_dim, kernel - 1) and delta-rule state (n_v_heads, k_dim,
 * v_dim) of every GDN layer in device memory, laid out as the CPU's
 * struct hybrid_state, plus scratch for n_batch tokens. Invariant: the
 * state is zero at position 0 — forward_batch_cuda calls
 * hybrid_cuda_reset whenever a chunk starts at position 0, which is every
 * way a context starts a sequence over (creation, sl_context_reset, a
 * failed sl_eval; truncation and saved states are refused for recurrent
 * models on the GPU by context_state.c).
 *
 * Numbers: float32 like the CPU; the delta rule runs token by token on the
 * GPU for prompts and decode alike (the CPU runs prompts in chunks: the two
 * agree within float rounding, tests/test_cuda_hybrid.c).
 */
#ifndef SL_CUDA_LAYER_GDN_CUDA_CUH
#define SL_CUDA_LAYER_GDN_CUDA_CUH

#include "cuda/internal.cuh"

/* Device pointers of one hybrid layer's weights (NULL where absent). */
struct hybrid_layer {
    /* Gated DeltaNet layers */
    const void *qkv, *z, *b, *a, *out; /* projections, dtypes in layer_weights */
    const float *conv;                 /* (conv_dim, kernel) */
    const float *A_log, *dt_bias;      /* (n_v_heads) */
    const float *norm;                 /* (v_dim) */
    /* MoE layers: the shared expert */
    struct ffn_shape sh;
    const uint8_t *sh_gate, *sh_up, *sh_down;
    const float *sh_expert_gate;       /* (hidden) */
};

struct hybrid_cuda {
    struct hybrid_layer *layers; /* (n_layers) */
    float *d_inv_freq;           /* (rope_dim / 2) partial-rotary frequencies */
};

struct hybrid_cuda_ctx {
    float *state;        /* every GDN layer: conv (conv_dim, kernel - 1) then
                            ssm (n_v_heads, k_dim, v_dim), as the CPU */
    uint64_t state_floats;
    float **conv, **ssm; /* (n_layers) host arrays of device pointers into
                            state; NULL for attention layers */
    float *qkv;          /* (n_batch, conv_dim) in_proj_qkv, then conv + SiLU */
    float *z;            /* (n_batch, lin value_dim) in_proj_z */
    float *a, *b;        /* (n_batch, lin_v_heads) */
    float *core;         /* (n_batch, lin value_dim) delta rule, gated norm */
    float *qg;           /* (n_batch, 2 * q_dim) gated attention's q_proj */
    float *Hsh;          /* (n_batch, shared_ffn) shared expert SwiGLU */
    float *sh_out;       /* (n_batch, hidden) gated shared expert, then + routed */
};

/* The hybrid features the GPU does not run: a message naming the first, or
 * NULL when m's configuration is supported. */
const char *hybrid_cuda_unsupported(const struct sl_model *m);

/* Device pointers (into cm->d_dense, uploaded already) and the rope table.
 * SL_ERR_NOMEM / SL_ERR_IO with a message; *out owned by cm. */
int hybrid_cuda_model_create(struct cuda_model *cm, struct hybrid_cuda **out);
void hybrid_cuda_model_free(struct hybrid_cuda *hy); /* NULL is a no-op */

/* Zeroed state and scratch for ctx's n_batch. SL_ERR_NOMEM names the bytes. */
int hybrid_cuda_ctx_create(const struct cuda_model *cm, const struct sl_context *ctx,
                           struct hybrid_cuda_ctx **out);
void hybrid_cuda_ctx_free(struct hybrid_cuda_ctx *h); /* NULL is a no-op */
/* Enqueues the zeroing of every recurrent state on stream. */
int hybrid_cuda_reset(struct hybrid_cuda_ctx *h, cudaStream_t stream);

/* The token mixer of layer l for n tokens (GDN or gated attention, chosen
 * by cfg.layer_linear) with its residual: rmsnorm(cc->x) → mixer → cc->x +=
 * out_proj / o_proj; then cc->xb = ffn rmsnorm(cc->x), ready for the MLP.
 * Enqueued on cc->stream, no host synchronisation (graph-capturable). */
int hybrid_mixer_cuda(struct cuda_model *cm, struct cuda_ctx *cc, struct sl_context *ctx,
                      uint32_t l, int n);

/* The routed experts of forward_cuda.cu: adds layer l's weighted expert sum
 * of cc->xb into cc->x (n rows). */
typedef int (*hybrid_routed_fn)(struct cuda_model *cm, struct cuda_ctx *cc,
                                struct sl_context *ctx, uint32_t l, int n, int router_done);

/* MoE layer l with the gated shared expert, summed in the CPU's order:
 * s = sigmoid(sh_expert_gate · xb) * shared(xb); t = s + routed (routed
 * runs with cc->x pointed at t); cc->x += t — forward.c's x += (routed +
 * shared). Layers without a shared expert: routed only. */
int hybrid_moe_cuda(struct cuda_model *cm, struct cuda_ctx *cc, struct sl_context *ctx,
                    uint32_t l, int n, hybrid_routed_fn routed);

#endif /* SL_CUDA_LAYER_GDN_CUDA_CUH */
