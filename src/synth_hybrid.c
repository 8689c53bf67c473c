/*
 * synth_hybrid.c — the synthetic generator's qwen3_5_moe (text) layout:
 * hybrid presets, their checks, and the dense tensors of one hybrid layer
 * (Gated DeltaNet or gated full attention, router, shared expert), named
 * and shaped as src/model.c's bind_layer_hybrid binds them and stored as
 * src/convert.c stores a converted checkpoint: zero-centred RMSNorm
 * weights already folded to plain multipliers (1 + w), in_proj_a /
 * in_proj_b / conv1d taps in f32, vectors f32, matrices in the dense dtype.
 *
 * What it is not: the write loop, the PRNG, the router fit or the expert
 * records (synth.c; routed experts are written exactly as for qwen3_moe).
 *
 * Preset numbers and where they come from: docs/synth.md, "Hybrid presets".
 * Invariant: as synth.c, every tensor is a pure function of (seed, name).
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "format.h"
#include "quant.h"
#include "synth_impl.h"
#include "util.h"

#define FULL_ATTN_INTERVAL 4 /* layers 3, 7, 11, ... are full attention */

/* What differs between the hybrid presets. */
struct hybrid_shape {
    const char *name;
    uint32_t layers, hidden, heads, kv_heads, head_dim;
    uint32_t lin_k_heads, lin_v_heads, lin_k_dim, lin_v_dim;
    uint32_t experts, top_k, moe_ffn, shared_ffn, vocab, ctx;
    float skew;
};

static const struct hybrid_shape shapes[] = {
    /* A test model: 3 linear + 1 full layer, q4-compatible rows. */
    {"tiny-hybrid", 4, 64, 4, 2, 16, 2, 4, 16, 16, 4, 2, 32, 32, 256, 512, 0},
    /* Qwen3.5-397B-A17B (60 layers in the release). */
    {"a17b", 4, 4096, 32, 2, 256, 16, 64, 128, 128, 512, 10, 1024, 1024, 248320,
     262144, 0.4f},
    /* Qwen3.6-35B-A3B = the Qwen3.5-35B-A3B shape (40 layers). */
    {"a3b35", 4, 2048, 16, 2, 256, 16, 32, 128, 128, 256, 8, 512, 512, 248320,
     262144, 0.4f},
};

int synth_hybrid_preset(const char *name, struct synth_params *p,
                        uint32_t *layers) {
    const struct hybrid_shape *h = NULL;
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        if (strcmp(name, shapes[i].name) == 0) h = &shapes[i];
    if (!h) return 0;
    struct sl_config *c = &p->cfg;
    c->arch = SL_ARCH_QWEN3_5_MOE;
    snprintf(c->model_type, sizeof c->model_type, "qwen3_5_moe_text");
    c->rope_theta = 1e7f;
    c->hidden = h->hidden;
    c->n_heads = h->heads;
    c->n_kv_heads = h->kv_heads;
    c->head_dim = h->head_dim;
    c->rope_dim = h->head_dim / 4; /* partial_rotary_factor 0.25 */
    c->attn_gate = 1;
    c->lin_k_heads = h->lin_k_heads;
    c->lin_v_heads = h->lin_v_heads;
    c->lin_k_dim = h->lin_k_dim;
    c->lin_v_dim = h->lin_v_dim;
    c->lin_conv = 4;
    c->n_experts = h->experts;
    c->n_experts_used = h->top_k;
    c->moe_ffn = h->moe_ffn;
    c->shared_ffn = h->shared_ffn;
    c->ffn = 0; /* no dense MLP layers */
    c->n_vocab = h->vocab;
    c->n_ctx_train = h->ctx;
    if (h->vocab == 248320) {
        c->n_eos = 2;
        c->eos_ids[0] = 248046; /* <|im_end|> */
        c->eos_ids[1] = 248044; /* <|endoftext|> */
    }
    p->skew = h->skew;
    *layers = h->layers;
    return 1;
}

void synth_hybrid_set_layers(struct sl_config *c) {
    memset(c->layer_linear, 0, sizeof c->layer_linear);
    for (uint32_t i = 0; i < c->n_layers; i++) {
        c->layer_linear[i] = (i + 1) % FULL_ATTN_INTERVAL != 0;
        c->layer_is_moe[i] = 1;
    }
}

int synth_hybrid_check(const struct sl_config *c, int dense_dtype) {
    if (!c->lin_k_heads || !c->lin_v_heads || !c->lin_k_dim || !c->lin_v_dim)
        return sl_seterr(SL_ERR_ARG, "linear attention heads (%u key, %u "
                         "value) and head dims (%u, %u) must all be > 0",
                         c->lin_k_heads, c->lin_v_heads, c->lin_k_dim,
                         c->lin_v_dim);
    if (c->lin_v_heads % c->lin_k_heads)
        return sl_seterr(SL_ERR_ARG, "%u linear value heads are not a "
                         "multiple of %u linear key heads", c->lin_v_heads,
                         c->lin_k_heads);
    if (c->lin_v_dim > 1024)
        return sl_seterr(SL_ERR_ARG, "linear value head dim %u is above "
                         "1024 (the Gated DeltaNet kernel's limit)",
                         c->lin_v_dim);
    if (c->lin_conv < 2 || c->lin_conv > 64)
        return sl_seterr(SL_ERR_ARG, "linear conv kernel %u must be 2..64",
                         c->lin_conv);
    if (c->rope_dim < 2 || c->rope_dim % 2 || c->rope_dim > c->head_dim)
        return sl_seterr(SL_ERR_ARG, "rotary dims %u must be even, >= 2 and "
                         "<= head_dim %u", c->rope_dim, c->head_dim);
    if (!c->shared_ffn)
        return sl_seterr(SL_ERR_ARG, "qwen3_5_moe needs a shared expert "
                         "(shared ffn > 0)");
    if (!c->attn_gate)
        return sl_seterr(SL_ERR_ARG, "qwen3_5_moe attention always gates "
                         "its output (attn_gate must be set)");
    for (uint32_t l = 0; l < c->n_layers; l++)
        if (!c->layer_is_moe[l])
            return sl_seterr(SL_ERR_ARG, "layer %u is dense: qwen3_5_moe has "
                             "MoE on every layer", l);
    const uint64_t cols[2] = {config_lin_value_dim(c), c->shared_ffn};
    static const char *what[2] = {"linear value dim", "shared ffn"};
    for (int i = 0; i < 2; i++)
        if (!quant_dtype_fits(dense_dtype, cols[i]))
            return sl_seterr(SL_ERR_ARG, "dense dtype %s needs row lengths "
                             "that are multiples of %d; %s is %llu",
                             sl_dtype_name(dense_dtype), SL_QBLOCK, what[i],
                             (unsigned long long)cols[i]);
    return SL_OK;
}

int synth_hybrid_write_layer(struct synth_state *s, uint32_t l) {
    const struct sl_config *c = &s->c;
    int dt = s->p->dense_dtype, f32 = SL_DTYPE_F32;
    uint64_t h = c->hidden, q = config_q_dim(c), kv = config_kv_dim(c);
    uint64_t cd = config_lin_conv_dim(c), vd = config_lin_value_dim(c);
    uint64_t nv = c->lin_v_heads, sf = c->shared_ffn;
    float sh = 1.0f / sqrtf((float)h);
    char n[SL_MAX_NAME + 1];
    int rc;
#define NAME(suffix) (snprintf(n, sizeof n, "model.layers.%u.%s", l, suffix), n)
#define MAT(suffix, dtype, rows, cols, mean, std)                              \
    synth_put_matrix(s, NAME(suffix), dtype, rows, cols, mean, std)
#define VEC(suffix, len, mean, std) synth_put_vector(s, NAME(suffix), len, mean, std)
    if ((rc = VEC("input_layernorm.weight", h, 1.0f, 0.02f)))
        return rc;
    if (c->layer_linear[l]) {
        /* A = exp(A_log) ~ 1 and dt_bias ~ 1 (HF initialises dt_bias to
         * ones): per-token decay exp(-A softplus(a + dt_bias)) ~ 0.3, so
         * the state stays bounded over any sequence length. */
        if ((rc = MAT("linear_attn.in_proj_qkv.weight", dt, cd, h, 0, sh)) ||
            (rc = MAT("linear_attn.in_proj_z.weight", dt, vd, h, 0, sh)) ||
            (rc = MAT("linear_attn.in_proj_b.weight", f32, nv, h, 0, sh)) ||
            (rc = MAT("linear_attn.in_proj_a.weight", f32, nv, h, 0, sh)) ||
            (rc = MAT("linear_attn.conv1d.weight", f32, cd, c->lin_conv, 0,
                      1.0f / sqrtf((float)c->lin_conv))) ||
            (rc = VEC("linear_attn.A_log", nv, 0.0f, 0.5f)) ||
            (rc = VEC("linear_attn.dt_bias", nv, 1.0f, 0.1f)) ||
            (rc = VEC("linear_attn.norm.weight", c->lin_v_dim, 1.0f, 0.02f)) ||
            (rc = MAT("linear_attn.out_proj.weight", dt, h, vd, 0,
                      1.0f / sqrtf((float)vd))))
            return rc;
    } else if ((rc = MAT("self_attn.q_proj.weight", dt, 2 * q, h, 0, sh)) ||
               (rc = MAT("self_attn.k_proj.weight", dt, kv, h, 0, sh)) ||
               (rc = MAT("self_attn.v_proj.weight", dt, kv, h, 0, sh)) ||
               (rc = MAT("self_attn.o_proj.weight", dt, h, q, 0,
                         1.0f / sqrtf((float)q))) ||
               (rc = VEC("self_attn.q_norm.weight", c->head_dim, 1.0f, 0.02f)) ||
               (rc = VEC("self_attn.k_norm.weight", c->head_dim, 1.0f, 0.02f))) {
        return rc;
    }
    if ((rc = VEC("post_attention_layernorm.weight", h, 1.0f, 0.02f)) ||
        (rc = synth_put_router(s, l, NAME("mlp.gate.weight"))) ||
        (rc = MAT("mlp.shared_expert.gate_proj.weight", dt, sf, h, 0, sh)) ||
        (rc = MAT("mlp.shared_expert.up_proj.weight", dt, sf, h, 0, sh)) ||
        (rc = MAT("mlp.shared_expert.down_proj.weight", dt, h, sf, 0,
                  1.0f / sqrtf((float)sf))))
        return rc;
    /* The shared expert's scalar gate: sigmoid(w . x), w ~ N(0, 1/hidden). */
    return VEC("mlp.shared_expert_gate.weight", h, 0.0f, sh);
#undef VEC
#undef MAT
#undef NAME
}
