/*
 * layer_gdn.h — the Gated DeltaNet token mixer of qwen3_next / qwen3_5_moe
 * (the "linear attention" layers), after its input projections:
 *
 *   qkv (conv_dim = 2 * n_k_heads * k_dim + n_v_heads * v_dim) → causal
 *   depthwise conv1d over time (kernel K, no bias) → SiLU → split q | k | v
 *   → per head: q, k L2-normalised (x / sqrt(sum x^2 + 1e-6)), q scaled by
 *   1 / sqrt(k_dim) → gated delta rule per value head h (its q/k head is
 *   h / (n_v_heads / n_k_heads)):
 *       g = -exp(A_log[h]) * softplus(a + dt_bias[h]),  beta = sigmoid(b)
 *       S = S * exp(g);  S += k ⊗ beta (v - Sᵀk);  o = Sᵀq
 *   → gated RMSNorm per value head: rmsnorm(o) * norm_w * silu(z).
 * S is (k_dim, v_dim) per value head, as transformers'
 * torch_recurrent_gated_delta_rule; torch_chunk_gated_delta_rule computes
 * the same outputs a chunk of tokens at a time (gdn_chunk_ref), which is what
 * prompts use.
 *
 * What it is not: the input projections (in_proj_qkv, in_proj_z,
 * in_proj_b, in_proj_a) and out_proj, which are ordinary matrix products
 * run by the caller (layer_hybrid.c). Everything here is float32 scalar C:
 * it is the specification, and the CPU path.
 *
 * State (struct gdn_state) is owned by the caller, one per GDN layer and
 * sequence: the last K - 1 conv inputs and the S matrices. Zero state is
 * the start of a sequence.
 */
#ifndef SL_LAYER_GDN_H
#define SL_LAYER_GDN_H

#include <stddef.h>

struct sl_pool;

#define GDN_CHUNK 64 /* tokens per chunk of the chunked form (HF's default) */

struct gdn_dims {
    int n_k_heads, n_v_heads; /* n_v_heads a multiple of n_k_heads */
    int k_dim, v_dim;         /* per head */
    int kernel;               /* conv kernel K >= 1 */
    float eps;                /* the gated RMSNorm's epsilon (rms_norm_eps) */
};

struct gdn_weights {
    const float *conv;    /* (conv_dim, kernel) depthwise conv taps */
    const float *A_log;   /* (n_v_heads) */
    const float *dt_bias; /* (n_v_heads) */
    const float *norm;    /* (v_dim) gated RMSNorm weight (plain, not 1 + w) */
};

struct gdn_state {
    float *conv; /* (conv_dim, kernel - 1): past conv inputs, oldest first */
    float *ssm;  /* (n_v_heads, k_dim, v_dim) */
};

static inline int gdn_conv_dim(const struct gdn_dims *d) {
    return 2 * d->n_k_heads * d->k_dim + d->n_v_heads * d->v_dim;
}
static inline int gdn_value_dim(const struct gdn_dims *d) {
    return d->n_v_heads * d->v_dim;
}

/* Floats of scratch gdn_forward needs for up to n_max tokens with up to
 * n_threads threads. */
size_t gdn_scratch_floats(const struct gdn_dims *d, int n_max, int n_threads);

/* The mixer for n consecutive tokens of one sequence. qkv: (n, conv_dim)
 * raw in_proj_qkv outputs, overwritten (conv output, normalised q, k);
 * z: (n, value_dim) in_proj_z; a, b: (n, n_v_heads) in_proj_a, in_proj_b;
 * out: (n, value_dim) receives the gated-normed output, ready for out_proj.
 * chunked != 0 runs the delta rule in chunks of GDN_CHUNK tokens
 * (gdn_chunk_ref), else token by token (gdn_step_ref); both update st
 * identically up to rounding. Value heads are split across pool's threads
 * (pool may be NULL). scratch: gdn_scratch_floats(d, n, threads) floats.
 * Returns SL_OK, or SL_ERR_ARG for bad dimensions. */
int gdn_forward(struct sl_pool *pool, const struct gdn_dims *d,
                const struct gdn_weights *w, struct gdn_state *st, float *qkv,
                const float *z, const float *a, const float *b, float *out,
                int n, int chunked, float *scratch);

/* The causal depthwise conv + SiLU over n tokens: x (n, dim) in place,
 * w (dim, kernel), state (dim, kernel - 1) read and updated. */
void gdn_conv_silu(float *x, int n, int dim, const float *w, int kernel,
                   float *state);

/* One delta-rule step of one value head: S (k_dim, v_dim) decayed by
 * exp(g) and updated with (k, v, beta); out (v_dim) = Sᵀq. q and k are
 * already normalised (and q scaled). */
void gdn_step_ref(float *S, const float *q, const float *k, const float *v,
                  float g, float beta, float *out, int k_dim, int v_dim);

/* The same for L <= GDN_CHUNK tokens at once (the UT-transform form of
 * torch_chunk_gated_delta_rule): token t's q, k, v at q + t * q_stride
 * etc., g and beta (L), out token t at out + t * out_stride. S updated
 * as L steps would. scratch: gdn_chunk_scratch_floats(k_dim, v_dim). */
size_t gdn_chunk_scratch_floats(int k_dim, int v_dim);
void gdn_chunk_ref(float *S, const float *q, int q_stride, const float *k,
                   int k_stride, const float *v, int v_stride, const float *g,
                   const float *beta, float *out, int out_stride, int L,
                   int k_dim, int v_dim, float *scratch);

#endif /* SL_LAYER_GDN_H */
