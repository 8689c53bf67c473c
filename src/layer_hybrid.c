/*
 * layer_hybrid.c — the qwen3_next / qwen3_5_moe hooks of the forward pass
 * (see layer_hybrid.h): Gated DeltaNet layers around layer_gdn.c, the
 * attention's output gate, the shared expert's gate, and the per-context
 * recurrent state.
 *
 * Not here: the delta-rule math (layer_gdn.c), attention itself and the
 * experts (forward.c). Like forward.c it allocates nothing per token.
 */
#include "layer_hybrid.h"

#include <math.h>
#include <string.h>

#include "context.h"
#include "cpu/ops.h"
#include "cpu/pool.h"
#include "util.h"

static float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

/* Y (n, w->rows) = X (n, w->cols) · Wᵀ, as forward.c's linear_w. */
static int linear_w(struct sl_context *ctx, const struct weight *w, const float *X,
                    float *Y, int n) {
    if (n == 1)
        return ops_matvec(ctx->pool, w->dtype, w->data, X, Y, (int)w->rows, (int)w->cols);
    return ops_matmul(ctx->pool, w->dtype, w->data, X, Y, n, (int)w->rows, (int)w->cols);
}

static struct gdn_dims dims_of(const struct sl_config *c) {
    struct gdn_dims d = {(int)c->lin_k_heads, (int)c->lin_v_heads, (int)c->lin_k_dim,
                         (int)c->lin_v_dim, (int)c->lin_conv, c->rms_eps};
    return d;
}

void hybrid_state_free(struct hybrid_state *s) {
    if (!s) return;
    float **bufs[] = {&s->state, &s->qkv, &s->z,           &s->a,  &s->b,
                      &s->core,  &s->qg,  &s->gdn_scratch, &s->gate};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) sl_aligned_free(*bufs[i]);
    sl_free(s->gdn);
    sl_free(s);
}

int hybrid_state_create(const struct sl_config *c, int n_batch, int n_threads,
                        struct hybrid_state **out) {
    *out = NULL;
    struct hybrid_state *s = sl_calloc(1, sizeof *s);
    if (!s) return sl_seterr(SL_ERR_NOMEM, "out of memory (hybrid state)");
    struct gdn_dims d = dims_of(c);
    uint64_t cd = (uint64_t)gdn_conv_dim(&d), vd = (uint64_t)gdn_value_dim(&d);
    uint64_t per_conv = cd * (uint64_t)(d.kernel - 1);
    uint64_t per_ssm = (uint64_t)d.n_v_heads * d.k_dim * d.v_dim;
    uint32_t n_lin = 0;
    for (uint32_t l = 0; l < c->n_layers; l++) n_lin += c->layer_linear[l];
    s->state_floats = (size_t)(n_lin * (per_conv + per_ssm));
    uint64_t B = (uint64_t)n_batch, q = config_q_dim(c);
    int ok = 1;
#define ALLOC(p, count)                                                          \
    do {                                                                         \
        (p) = sl_aligned_alloc(64, ((count) > 0 ? (count) : 1) * sizeof(float)); \
        ok &= (p) != NULL;                                                       \
    } while (0)
    ALLOC(s->state, s->state_floats);
    ALLOC(s->qkv, B * cd);
    ALLOC(s->z, B * vd);
    ALLOC(s->a, B * d.n_v_heads);
    ALLOC(s->b, B * d.n_v_heads);
    ALLOC(s->core, B * vd);
    ALLOC(s->gdn_scratch, gdn_scratch_floats(&d, n_batch, n_threads));
    ALLOC(s->qg, B * 2 * q);
    ALLOC(s->gate, B * q);
#undef ALLOC
    s->gdn = sl_calloc(c->n_layers, sizeof *s->gdn);
    if (!ok || !s->gdn) {
        hybrid_state_free(s);
        return sl_seterr(SL_ERR_NOMEM, "out of memory for the Gated DeltaNet state "
                         "(%.1f MiB) and scratch", (double)s->state_floats * 4 / (1 << 20));
    }
    float *p = s->state;
    for (uint32_t l = 0; l < c->n_layers; l++) {
        if (!c->layer_linear[l]) continue;
        s->gdn[l].conv = p;
        s->gdn[l].ssm = p + per_conv;
        p += per_conv + per_ssm;
    }
    hybrid_state_reset(s);
    *out = s;
    return SL_OK;
}

void hybrid_state_reset(struct hybrid_state *s) {
    if (s) memset(s->state, 0, s->state_floats * sizeof(float));
}

size_t hybrid_state_bytes(const struct hybrid_state *s) {
    return s ? s->state_floats * sizeof(float) : 0;
}

int hybrid_gdn_layer(struct sl_context *ctx, uint32_t l, int n) {
    const struct sl_config *c = &ctx->model->cfg;
    const struct layer_weights *L = &ctx->model->layers[l];
    struct hybrid_state *s = ctx->hybrid;
    SL_ASSERT(s && c->layer_linear[l]);
    int st;
    if ((st = linear_w(ctx, &L->lin_qkv, ctx->xb, s->qkv, n)) ||
        (st = linear_w(ctx, &L->lin_z, ctx->xb, s->z, n)) ||
        (st = linear_w(ctx, &L->lin_b, ctx->xb, s->b, n)) ||
        (st = linear_w(ctx, &L->lin_a, ctx->xb, s->a, n)))
        return st;
    struct gdn_dims d = dims_of(c);
    struct gdn_weights w = {L->lin_conv, L->lin_A_log, L->lin_dt_bias, L->lin_norm};
    if ((st = gdn_forward(ctx->pool, &d, &w, &s->gdn[l], s->qkv, s->z, s->a, s->b, s->core,
                          n, n > 1, s->gdn_scratch)))
        return st;
    return linear_w(ctx, &L->lin_out, s->core, ctx->xb2, n);
}

int hybrid_attn_q(struct sl_context *ctx, uint32_t l, int n) {
    const struct sl_config *c = &ctx->model->cfg;
    struct hybrid_state *s = ctx->hybrid;
    int nh = (int)c->n_heads, hd = (int)c->head_dim, q = nh * hd;
    int st = linear_w(ctx, &ctx->model->layers[l].wq, ctx->xb, s->qg, n);
    if (st) return st;
    /* per head: q (head_dim) then gate (head_dim), as HF's view + chunk */
    for (int t = 0; t < n; t++)
        for (int h = 0; h < nh; h++) {
            const float *src = s->qg + (size_t)t * 2 * q + (size_t)h * 2 * hd;
            memcpy(ctx->q + (size_t)t * q + (size_t)h * hd, src, (size_t)hd * sizeof(float));
            memcpy(s->gate + (size_t)t * q + (size_t)h * hd, src + hd,
                   (size_t)hd * sizeof(float));
        }
    return SL_OK;
}

void hybrid_attn_gate(struct sl_context *ctx, int n) {
    const struct sl_config *c = &ctx->model->cfg;
    size_t m = (size_t)n * config_q_dim(c);
    for (size_t i = 0; i < m; i++) ctx->att[i] *= sigmoid(ctx->hybrid->gate[i]);
}

void hybrid_shared_gate(struct sl_context *ctx, uint32_t l, float *out, int n) {
    const struct sl_config *c = &ctx->model->cfg;
    const float *g = ctx->model->layers[l].sh_expert_gate; /* (hidden) */
    int hidden = (int)c->hidden;
    for (int t = 0; t < n; t++) {
        const float *x = ctx->xb + (size_t)t * hidden;
        float *o = out + (size_t)t * hidden;
        float dot = 0;
        for (int i = 0; i < hidden; i++) dot += x[i] * g[i];
        float sg = sigmoid(dot);
        for (int i = 0; i < hidden; i++) o[i] *= sg;
    }
}
