/*
 * convert.c — sl_convert: a HuggingFace qwen3_moe checkpoint directory to
 * one .sluice model file (see include/sluice.h and docs/convert.md).
 *
 * What it is: a two-pass streaming converter. Pass 1 looks up every tensor
 * the config implies and checks presence, dtype and shape, so that a bad
 * checkpoint fails in seconds, before any output is written; pass 2 walks
 * the same sequence again and converts. This file holds the entry point,
 * the config and tokenizer side files, the walk over the model, the
 * per-family dense tensor names and the row-conversion primitives; the
 * routed experts of a layer are convert_experts.c's (shared state and
 * contracts: convert_impl.h). What it is not: a loader, and it does not
 * touch tokenizer.json beyond embedding its bytes.
 *
 * Families: qwen3_moe, olmoe (as qwen3_moe, with q_norm/k_norm over the
 * whole projection), mixtral (router block_sparse_moe.gate.weight, experts
 * block_sparse_moe.experts.{e}.{w1,w3,w2}.weight = gate, up, down, no q/k
 * norms) and gpt_oss (see convert_experts.c: router mlp.router.{weight,bias},
 * self_attn.sinks, biased experts in bf16 or MXFP4). gpt_oss's expert
 * biases mlp.experts.gate_up_proj_bias [E, 2*ffn] (interleaved gate/up)
 * and down_proj_bias [E, hidden] stay dense f32 tensors under their HF
 * names: they are small (E * (2*ffn + hidden) floats a layer) and keeping
 * them out of the expert records leaves the file format unchanged.
 * deepseek_v3 (do_layer_deepseek): MLA tensors self_attn.{q_a_proj,
 * q_a_layernorm, q_b_proj | q_proj, kv_a_proj_with_mqa, kv_a_layernorm,
 * kv_b_proj, o_proj}, dense mlp.* for layers below first_k_dense_replace,
 * else mlp.gate.weight + mlp.gate.e_score_correction_bias (f32) +
 * mlp.shared_experts.* (dense) and routed experts as qwen3_moe's (per expert
 * or fused). FP8 checkpoints (quantization_config quant_method "fp8"):
 * F8_E4M3 weights are dequantized with their *_scale_inv block scales while
 * rows are read (convert_fp8.h), then stored like any other source.
 *
 * Tensor names (HF qwen3_moe). Dense tensors keep their HF names in the
 * output so that the loader looks them up by those names:
 *   model.embed_tokens.weight                        [vocab, hidden]
 *   model.layers.{i}.input_layernorm.weight          [hidden]
 *   model.layers.{i}.post_attention_layernorm.weight [hidden]
 *   model.layers.{i}.self_attn.q_proj.weight         [heads*head_dim, hidden]
 *   model.layers.{i}.self_attn.{k,v}_proj.weight     [kv_heads*head_dim, hidden]
 *   model.layers.{i}.self_attn.o_proj.weight         [hidden, heads*head_dim]
 *   model.layers.{i}.self_attn.{q,k,v,o}_proj.bias   if attention_bias
 *   model.layers.{i}.self_attn.{q,k}_norm.weight     [head_dim]
 *   MoE layer:   model.layers.{i}.mlp.gate.weight    [n_experts, hidden]
 *   dense layer: model.layers.{i}.mlp.{gate,up}_proj.weight [ffn, hidden],
 *                model.layers.{i}.mlp.down_proj.weight      [hidden, ffn]
 *   model.norm.weight [hidden]; lm_head.weight [vocab, hidden] unless tied.
 * Routed experts become expert records (parts gate [moe_ffn, hidden], up
 * [moe_ffn, hidden], down [hidden, moe_ffn]). Two source layouts exist and
 * are told apart per layer by name:
 *   per expert (every released checkpoint, transformers <= 4.x):
 *     model.layers.{i}.mlp.experts.{e}.{gate,up,down}_proj.weight
 *   fused (transformers v5 Qwen3MoeExperts, when it saves its own layout):
 *     model.layers.{i}.mlp.experts.gate_up_proj [n_experts, 2*moe_ffn, hidden]
 *       (rows [0, moe_ffn) of expert e are gate, [moe_ffn, 2*moe_ffn) up)
 *     model.layers.{i}.mlp.experts.down_proj    [n_experts, hidden, moe_ffn]
 *
 * Dtype policy: 1-D tensors (norms, biases) f32; the router f32 because
 * routing picks top-k from logits that are often within a few 1e-3 of each
 * other, and a rounded router flips expert choices, which no later precision
 * can repair (and it is only n_experts * hidden floats per layer); embedding,
 * attention, dense MLP and lm_head in dense_dtype; experts in expert_dtype.
 * A matrix whose columns are not a multiple of 32 cannot be q8/q4 and is
 * stored bf16 (one warning). Values go through f32, which is exact for bf16,
 * f16 and f32 sources; bf16 -> bf16 is therefore bit exact.
 *
 * Invariants: memory holds one block of at most ROW_BLOCK stored rows of a
 * dense tensor (dense tensors are streamed to the writer block by block,
 * never held whole: the embedding and lm_head of a large vocabulary are
 * gigabytes) or one expert's three stored matrices, plus one read chunk of
 * CHUNK_FLOATS floats; peak memory is therefore independent of the size of
 * any dense tensor. The output depends only on the input files and the
 * params; on any failure the partial output is removed (writer_close(w,
 * 0)).
 */
#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "convert_fp8.h"
#include "convert_impl.h"
#include "format.h"
#include "quant.h"
#include "safetensors.h"
#include "util.h"

/* Rows are read in chunks of at most this many floats (16 MiB). */
#define CHUNK_FLOATS ((uint64_t)1 << 22)

/* Dense tensors are converted and written ROW_BLOCK rows at a time, and at
 * most ROW_BLOCK_BYTES (8 MiB) of stored rows, but at least one row. */
#define ROW_BLOCK 256
#define ROW_BLOCK_BYTES ((uint64_t)8 << 20)

enum tensor_kind {
    KIND_VECTOR, /* 1-D: f32 */
    KIND_ROUTER, /* f32, see the file comment */
    KIND_MATRIX, /* dense_dtype */
};

/* struct conv: convert_impl.h. */

struct sl_convert_params sl_convert_default_params(void) {
    struct sl_convert_params p;
    memset(&p, 0, sizeof p);
    p.expert_dtype = SL_DTYPE_BF16;
    p.dense_dtype = SL_DTYPE_BF16;
    p.progress = 0;
    return p;
}

/* ---- progress ---- */

/* Contract: convert_impl.h. */
void convert_progress_draw(struct conv *cv, int final) {
    if (!cv->p.progress || cv->pass != 2) return;
    double now = sl_now();
    if (!final && now - cv->last_draw < 0.1) return;
    cv->last_draw = now;
    int pct = cv->total ? (int)(cv->done * 100 / cv->total) : 100;
    char bar[31];
    int fill = pct * 30 / 100;
    for (int i = 0; i < 30; i++) bar[i] = i < fill ? '#' : '.';
    bar[30] = 0;
    if (cv->stage_layer)
        fprintf(stderr, "\r[%s] %3d%% %s %u/%u   ", bar, pct, cv->stage,
                cv->stage_layer, cv->cfg.n_layers);
    else
        fprintf(stderr, "\r[%s] %3d%% %-20s", bar, pct, cv->stage);
    if (final) fputc('\n', stderr);
    fflush(stderr);
}

/* ---- shape checks (pass 1) ---- */

/* Contract: convert_impl.h. */
void convert_format_dims(char *buf, size_t n, int n_dims, const uint64_t *d) {
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < n_dims && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, "%s%llu", i ? ", " : "",
                              (unsigned long long)d[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

/* The checkpoint's name of output tensor name: the same, except that the
 * multimodal qwen3_5_moe checkpoints keep the text model's "model.*" under
 * "model.language_model.*". Valid until the next call. */
const char *convert_src_name(struct conv *cv, const char *name) {
    if (!cv->src_prefix || strncmp(name, "model.", 6) != 0) return name;
    snprintf(cv->src_buf, sizeof cv->src_buf, "%s%s", cv->src_prefix, name + 6);
    return cv->src_buf;
}

/* Finds name (its checkpoint name, convert_src_name) and checks its dtype
 * and shape; marks it used and, in pass 1, counts its elements for the
 * progress bar. Messages name the checkpoint's tensor. Contract:
 * convert_impl.h. */
int convert_expect(struct conv *cv, const char *name, int n_dims,
                   const uint64_t *dims, const struct st_tensor **out) {
    name = convert_src_name(cv, name);
    const struct st_tensor *t = st_find(cv->st, name);
    if (!t) return sl_seterr(SL_ERR_FORMAT, "missing tensor %s", name);
    int f8 = strcmp(t->dtype_name, "F8_E4M3") == 0;
    if (t->dtype < 0 && !(f8 && cv->fp8_block[0]))
        return sl_seterr(SL_ERR_UNSUPPORTED, "tensor %s: dtype %s is not "
                         "supported (supported: F32, F16, BF16; F8_E4M3 with "
                         "quantization_config fp8)", name, t->dtype_name);
    if (f8) { /* block-scaled FP8: pair it with its scale_inv */
        const struct st_tensor *sc;
        int rc = fp8_find_scale(cv->st, t, cv->fp8_block, &sc);
        if (rc) return rc;
        cv->fp8_scale[t->index] = sc;
        cv->used[sc->index] = 1;
    }
    int same = t->n_dims == n_dims;
    for (int i = 0; same && i < n_dims; i++) same = t->dims[i] == dims[i];
    if (!same) {
        char want[96], got[96];
        convert_format_dims(want, sizeof want, n_dims, dims);
        convert_format_dims(got, sizeof got, t->n_dims, t->dims);
        return sl_seterr(SL_ERR_FORMAT, "tensor %s: expected %s, got %s",
                         name, want, got);
    }
    if (cv->pass == 1 && !cv->used[t->index]) cv->total += t->numel;
    cv->used[t->index] = 1;
    *out = t;
    return SL_OK;
}

/* ---- conversion (pass 2) ---- */

static int chunk_reserve(struct conv *cv, uint64_t cols) {
    uint64_t want = cols > CHUNK_FLOATS ? cols : CHUNK_FLOATS;
    if (cv->chunk_floats >= want) return SL_OK;
    sl_free(cv->chunk);
    cv->chunk = sl_malloc(want * sizeof(float));
    cv->chunk_floats = cv->chunk ? want : 0;
    if (!cv->chunk)
        return sl_seterr(SL_ERR_NOMEM, "cannot allocate a %llu-float read "
                         "buffer", (unsigned long long)want);
    return SL_OK;
}

/* Rows [row0, row0 + n_rows) of t (seen as [numel/cols, cols]) into out in
 * dtype, a chunk at a time. what names the data in messages. Contract:
 * convert_impl.h. */
int convert_rows(struct conv *cv, const struct st_tensor *t, uint64_t row0,
                 uint64_t n_rows, int dtype, void *out, const char *what) {
    uint64_t cols = st_cols(t);
    uint64_t row_bytes = quant_row_bytes(dtype, cols);
    SL_ASSERT(row_bytes != 0);
    int rc = chunk_reserve(cv, cols);
    if (rc) return rc;
    uint64_t per = cv->chunk_floats / cols;
    for (uint64_t r = 0; r < n_rows; r += per) {
        uint64_t n = n_rows - r < per ? n_rows - r : per;
        if ((rc = st_read_rows_f32(cv->st, t, row0 + r, n, cv->chunk)))
            return rc;
        if (cv->fp8_scale[t->index] &&
            (rc = fp8_scale_rows(cv->st, cv->fp8_scale[t->index], cv->fp8_block,
                                 row0 + r, n, cols, cv->chunk)))
            return rc;
        for (uint64_t i = 0; i < n; i++) {
            const float *row = cv->chunk + i * cols;
            if (!quant_row_is_finite(row, cols)) {
                uint64_t c = 0;
                while (c < cols && isfinite(row[c])) c++;
                return sl_seterr(SL_ERR_FORMAT, "tensor %s: non-finite value "
                                 "(%g) at row %llu, column %llu", what,
                                 (double)row[c], (unsigned long long)(row0 + r + i),
                                 (unsigned long long)c);
            }
            quant_row_from_f32(dtype, row, (uint8_t *)out + (r + i) * row_bytes,
                               cols);
        }
        cv->done += n * cols;
        convert_progress_draw(cv, 0);
    }
    return SL_OK;
}

/* The stored dtype of a matrix with cols columns whose policy dtype is
 * want: bf16 when want is a block format that cols does not fit. Contract:
 * convert_impl.h. */
int convert_pick_dtype(struct conv *cv, int want, uint64_t cols,
                       const char *name) {
    if (quant_dtype_fits(want, cols)) return want;
    if (!cv->warned_fallback && cv->pass == 2) {
        sl_log(SL_LOG_WARN, "%s: %llu columns are not a multiple of %d; "
               "stored as bf16 instead of %s (and so is every such matrix)",
               name, (unsigned long long)cols, SL_QBLOCK, sl_dtype_name(want));
        cv->warned_fallback = 1;
    }
    return SL_DTYPE_BF16;
}

/* Makes cv->block hold n bytes. */
static int block_reserve(struct conv *cv, uint64_t n) {
    if (cv->block_bytes >= n) return SL_OK;
    sl_free(cv->block);
    cv->block = sl_malloc((size_t)n);
    cv->block_bytes = cv->block ? n : 0;
    if (!cv->block)
        return sl_seterr(SL_ERR_NOMEM, "cannot allocate a %llu-byte row block",
                         (unsigned long long)n);
    return SL_OK;
}

/* Rows [row0, row0 + n_rows) of t converted to dtype and appended to the
 * tensor open in cv->w, a block (ROW_BLOCK) at a time through cv->block;
 * add_one (f32 only) stores 1 + w. what names t in messages. */
static int stream_rows(struct conv *cv, const struct st_tensor *t, uint64_t row0,
                       uint64_t n_rows, int dtype, int add_one, const char *what) {
    uint64_t cols = st_cols(t), rb = quant_row_bytes(dtype, cols);
    uint64_t per = ROW_BLOCK_BYTES / rb;
    per = per < 1 ? 1 : per > ROW_BLOCK ? ROW_BLOCK : per;
    SL_ASSERT(!add_one || dtype == SL_DTYPE_F32);
    int rc = block_reserve(cv, (n_rows < per ? n_rows : per) * rb);
    for (uint64_t r = 0; !rc && r < n_rows; r += per) {
        uint64_t n = n_rows - r < per ? n_rows - r : per;
        if ((rc = convert_rows(cv, t, row0 + r, n, dtype, cv->block, what))) break;
        float *f = (float *)(void *)cv->block;
        for (uint64_t i = 0; add_one && i < n * cols; i++) f[i] += 1.0f;
        rc = writer_write_rows(cv->w, cv->block, n);
    }
    return rc;
}

/* One dense tensor: checked in pass 1, converted and written (streamed in
 * row blocks) in pass 2. */
static int do_dense(struct conv *cv, const char *name, int kind, uint64_t d0,
                    uint64_t d1) {
    uint64_t dims[2] = {d0, d1};
    int n_dims = kind == KIND_VECTOR ? 1 : 2;
    const struct st_tensor *t;
    int rc = convert_expect(cv, name, n_dims, dims, &t);
    if (rc || cv->pass == 1) return rc;
    int dtype = kind == KIND_MATRIX
                    ? convert_pick_dtype(cv, cv->p.dense_dtype, st_cols(t), name)
                    : SL_DTYPE_F32;
    uint64_t rows = n_dims == 1 ? 1 : d0;
    if ((rc = writer_begin_tensor(cv->w, name, dtype, n_dims, dims)) ||
        (rc = stream_rows(cv, t, 0, rows, dtype, 0, name)))
        return rc;
    return writer_end_tensor(cv->w);
}

/* deepseek_v3's dense tensors of layer l (names in model.c's
 * bind_layer_deepseek): MLA projections and norms, then the dense MLP, or
 * router + e_score_correction_bias (f32) + shared experts. */
static int do_layer_deepseek(struct conv *cv, uint32_t l) {
    const struct sl_config *c = &cv->cfg;
    uint64_t h = c->hidden, nh = c->n_heads, qk = config_qk_head_dim(c);
    uint64_t r = c->kv_lora_rank, qr = c->q_lora_rank;
    uint64_t sh = (uint64_t)c->moe_ffn * c->n_shared_experts;
    char n[SL_MAX_NAME + 1];
    int rc;
#define P(fmt) (snprintf(n, sizeof n, "model.layers.%u." fmt, l), n)
    if ((rc = do_dense(cv, P("input_layernorm.weight"), KIND_VECTOR, h, 0)) ||
        (qr && ((rc = do_dense(cv, P("self_attn.q_a_proj.weight"), KIND_MATRIX, qr, h)) ||
                (rc = do_dense(cv, P("self_attn.q_a_layernorm.weight"), KIND_VECTOR, qr, 0)) ||
                (rc = do_dense(cv, P("self_attn.q_b_proj.weight"), KIND_MATRIX, nh * qk, qr)))) ||
        (!qr && (rc = do_dense(cv, P("self_attn.q_proj.weight"), KIND_MATRIX, nh * qk, h))) ||
        (rc = do_dense(cv, P("self_attn.kv_a_proj_with_mqa.weight"), KIND_MATRIX,
                       r + c->qk_rope_head_dim, h)) ||
        (rc = do_dense(cv, P("self_attn.kv_a_layernorm.weight"), KIND_VECTOR, r, 0)) ||
        (rc = do_dense(cv, P("self_attn.kv_b_proj.weight"), KIND_MATRIX,
                       nh * (c->qk_nope_head_dim + c->v_head_dim), r)) ||
        (rc = do_dense(cv, P("self_attn.o_proj.weight"), KIND_MATRIX, h, nh * c->v_head_dim)) ||
        (rc = do_dense(cv, P("post_attention_layernorm.weight"), KIND_VECTOR, h, 0)))
        return rc;
    if (!c->layer_is_moe[l])
        return (rc = do_dense(cv, P("mlp.gate_proj.weight"), KIND_MATRIX, c->ffn, h)) ||
               (rc = do_dense(cv, P("mlp.up_proj.weight"), KIND_MATRIX, c->ffn, h)) ||
               (rc = do_dense(cv, P("mlp.down_proj.weight"), KIND_MATRIX, h, c->ffn))
                   ? rc : SL_OK;
    if ((rc = do_dense(cv, P("mlp.gate.weight"), KIND_ROUTER, c->n_experts, h)) ||
        (rc = do_dense(cv, P("mlp.gate.e_score_correction_bias"), KIND_VECTOR,
                       c->n_experts, 0)))
        return rc;
    if (sh && ((rc = do_dense(cv, P("mlp.shared_experts.gate_proj.weight"), KIND_MATRIX, sh, h)) ||
               (rc = do_dense(cv, P("mlp.shared_experts.up_proj.weight"), KIND_MATRIX, sh, h)) ||
               (rc = do_dense(cv, P("mlp.shared_experts.down_proj.weight"), KIND_MATRIX, h, sh))))
        return rc;
#undef P
    return SL_OK;
}

/* ---- qwen3_next / qwen3_5_moe ---- */

/* Tensor name checked as the checkpoint's shape sd (sn dims) and written
 * as od (on dims, the same row-major data): f32 for KIND_VECTOR /
 * KIND_ROUTER, dense_dtype for KIND_MATRIX; add_one stores 1 + w (the
 * zero-centred RMSNorms of this family, folded so that every norm in a
 * .sluice file is multiplicative). */
static int do_dense_as(struct conv *cv, const char *name, int kind, int add_one,
                       int sn, const uint64_t *sd, int on, const uint64_t *od) {
    const struct st_tensor *t;
    int rc = convert_expect(cv, name, sn, sd, &t);
    if (rc || cv->pass == 1) return rc;
    uint64_t cols = st_cols(t), rows = t->numel / cols;
    int dtype = kind == KIND_MATRIX ? convert_pick_dtype(cv, cv->p.dense_dtype, cols, name)
                                    : SL_DTYPE_F32;
    SL_ASSERT(!add_one || dtype == SL_DTYPE_F32);
    SL_ASSERT(od[on - 1] == cols); /* rows keep their length */
    if ((rc = writer_begin_tensor(cv->w, name, dtype, on, od)) ||
        (rc = stream_rows(cv, t, 0, rows, dtype, add_one, name)))
        return rc;
    return writer_end_tensor(cv->w);
}

/* qwen3_next's fused Gated DeltaNet projections, rewritten in qwen3_5's
 * layout. in_proj_qkvz [2*kd + 2*vd, hidden] holds per key head g the rows
 * q (k_dim), k (k_dim), v (r * v_dim), z (r * v_dim), r = v_heads /
 * k_heads; in_proj_ba [2 * v_heads, hidden] per key head b (r), a (r).
 * Written: in_proj_qkv [q of all heads | k | v], in_proj_z, in_proj_b and
 * in_proj_a (f32, like the router: they feed exp and sigmoid), each
 * streamed in its own row order from the source rows of every key head. */
static int do_gdn_fused(struct conv *cv, uint32_t l) {
    const struct sl_config *c = &cv->cfg;
    uint64_t h = c->hidden, hk = c->lin_k_dim, hv = c->lin_v_dim, nk = c->lin_k_heads;
    uint64_t nv = c->lin_v_heads, r = nv / nk, kd = nk * hk, vd = nv * hv;
    char qn[SL_MAX_NAME + 1], bn[SL_MAX_NAME + 1], n[SL_MAX_NAME + 1];
    snprintf(qn, sizeof qn, "model.layers.%u.linear_attn.in_proj_qkvz.weight", l);
    snprintf(bn, sizeof bn, "model.layers.%u.linear_attn.in_proj_ba.weight", l);
    const struct st_tensor *tq, *tb;
    uint64_t dq[2] = {2 * kd + 2 * vd, h}, db[2] = {2 * nv, h};
    int rc;
    if ((rc = convert_expect(cv, qn, 2, dq, &tq)) || (rc = convert_expect(cv, bn, 2, db, &tb)) ||
        cv->pass == 1)
        return rc;
    int dt = convert_pick_dtype(cv, cv->p.dense_dtype, h, qn);
    uint64_t d1[2] = {2 * kd + vd, h}, d2[2] = {vd, h}, d3[2] = {nv, h};
    /* Output rows in order; source row of part (q, k, v, z) of key head g:
     * g * (2 * hk + 2 * r * hv) + off[part]. */
    const uint64_t off[4] = {0, hk, 2 * hk, 2 * hk + r * hv};
    const uint64_t len[4] = {hk, hk, r * hv, r * hv};
    snprintf(n, sizeof n, "model.layers.%u.linear_attn.in_proj_qkv.weight", l);
    rc = writer_begin_tensor(cv->w, n, dt, 2, d1);
    for (int p = 0; p < 4 && !rc; p++) {
        if (p == 3) { /* z: its own tensor */
            snprintf(n, sizeof n, "model.layers.%u.linear_attn.in_proj_z.weight", l);
            if ((rc = writer_end_tensor(cv->w)) ||
                (rc = writer_begin_tensor(cv->w, n, dt, 2, d2)))
                break;
        }
        for (uint64_t g = 0; g < nk && !rc; g++)
            rc = stream_rows(cv, tq, g * (2 * hk + 2 * r * hv) + off[p], len[p], dt, 0, qn);
    }
    if (!rc) rc = writer_end_tensor(cv->w);
    /* in_proj_b, then in_proj_a: per key head g, rows g * 2r + {0, r} of ba. */
    for (int p = 0; p < 2 && !rc; p++) {
        snprintf(n, sizeof n, "model.layers.%u.linear_attn.in_proj_%c.weight", l, "ba"[p]);
        rc = writer_begin_tensor(cv->w, n, SL_DTYPE_F32, 2, d3);
        for (uint64_t g = 0; g < nk && !rc; g++)
            rc = stream_rows(cv, tb, g * 2 * r + (uint64_t)p * r, r, SL_DTYPE_F32, 0, bn);
        if (!rc) rc = writer_end_tensor(cv->w);
    }
    return rc;
}

/* A hybrid layer's dense tensors (names in model.c's bind_layer_hybrid),
 * from either checkpoint layout. */
static int do_layer_hybrid(struct conv *cv, uint32_t l) {
    const struct sl_config *c = &cv->cfg;
    uint64_t h = c->hidden, q = config_q_dim(c), kv = config_kv_dim(c);
    uint64_t cd = config_lin_conv_dim(c), vd = config_lin_value_dim(c), nv = c->lin_v_heads;
    uint64_t vh[1] = {h}, vhd[1] = {c->head_dim};
    char n[SL_MAX_NAME + 1];
    int rc;
#define P(fmt) (snprintf(n, sizeof n, "model.layers.%u." fmt, l), n)
    if ((rc = do_dense_as(cv, P("input_layernorm.weight"), KIND_VECTOR, 1, 1, vh, 1, vh)))
        return rc;
    if (c->layer_linear[l]) {
        uint64_t sconv[3] = {cd, 1, c->lin_conv}, oconv[2] = {cd, c->lin_conv};
        if (st_find(cv->st, convert_src_name(cv, P("linear_attn.in_proj_qkvz.weight"))))
            rc = do_gdn_fused(cv, l);
        else if (!(rc = do_dense(cv, P("linear_attn.in_proj_qkv.weight"), KIND_MATRIX, cd, h)) &&
                 !(rc = do_dense(cv, P("linear_attn.in_proj_z.weight"), KIND_MATRIX, vd, h)) &&
                 !(rc = do_dense(cv, P("linear_attn.in_proj_b.weight"), KIND_ROUTER, nv, h)))
            rc = do_dense(cv, P("linear_attn.in_proj_a.weight"), KIND_ROUTER, nv, h);
        if (rc ||
            (rc = do_dense_as(cv, P("linear_attn.conv1d.weight"), KIND_ROUTER, 0, 3, sconv, 2,
                              oconv)) ||
            (rc = do_dense(cv, P("linear_attn.A_log"), KIND_VECTOR, nv, 0)) ||
            (rc = do_dense(cv, P("linear_attn.dt_bias"), KIND_VECTOR, nv, 0)) ||
            (rc = do_dense(cv, P("linear_attn.norm.weight"), KIND_VECTOR, c->lin_v_dim, 0)) ||
            (rc = do_dense(cv, P("linear_attn.out_proj.weight"), KIND_MATRIX, h, vd)))
            return rc;
    } else if ((rc = do_dense(cv, P("self_attn.q_proj.weight"), KIND_MATRIX, 2 * q, h)) ||
               (rc = do_dense(cv, P("self_attn.k_proj.weight"), KIND_MATRIX, kv, h)) ||
               (rc = do_dense(cv, P("self_attn.v_proj.weight"), KIND_MATRIX, kv, h)) ||
               (rc = do_dense(cv, P("self_attn.o_proj.weight"), KIND_MATRIX, h, q)) ||
               (rc = do_dense_as(cv, P("self_attn.q_norm.weight"), KIND_VECTOR, 1, 1, vhd, 1,
                                 vhd)) ||
               (rc = do_dense_as(cv, P("self_attn.k_norm.weight"), KIND_VECTOR, 1, 1, vhd, 1,
                                 vhd))) {
        return rc;
    }
    if ((rc = do_dense_as(cv, P("post_attention_layernorm.weight"), KIND_VECTOR, 1, 1, vh, 1,
                          vh)))
        return rc;
    if (!c->layer_is_moe[l])
        return (rc = do_dense(cv, P("mlp.gate_proj.weight"), KIND_MATRIX, c->ffn, h)) ||
               (rc = do_dense(cv, P("mlp.up_proj.weight"), KIND_MATRIX, c->ffn, h)) ||
               (rc = do_dense(cv, P("mlp.down_proj.weight"), KIND_MATRIX, h, c->ffn))
                   ? rc : SL_OK;
    uint64_t sh = c->shared_ffn, sg[2] = {1, h};
    if ((rc = do_dense(cv, P("mlp.gate.weight"), KIND_ROUTER, c->n_experts, h)) ||
        (rc = do_dense(cv, P("mlp.shared_expert.gate_proj.weight"), KIND_MATRIX, sh, h)) ||
        (rc = do_dense(cv, P("mlp.shared_expert.up_proj.weight"), KIND_MATRIX, sh, h)) ||
        (rc = do_dense(cv, P("mlp.shared_expert.down_proj.weight"), KIND_MATRIX, h, sh)) ||
        (rc = do_dense_as(cv, P("mlp.shared_expert_gate.weight"), KIND_VECTOR, 0, 2, sg, 1,
                          vh)))
        return rc;
#undef P
    return SL_OK;
}

static int do_layer_dense(struct conv *cv, uint32_t l) {
    const struct sl_config *c = &cv->cfg;
    if (c->arch == SL_ARCH_DEEPSEEK_V3) return do_layer_deepseek(cv, l);
    if (config_is_hybrid(c)) return do_layer_hybrid(cv, l);
    uint64_t h = c->hidden, q = config_q_dim(c), kv = config_kv_dim(c);
    char n[SL_MAX_NAME + 1];
    int rc;
#define P(fmt) (snprintf(n, sizeof n, "model.layers.%u." fmt, l), n)
    if ((rc = do_dense(cv, P("input_layernorm.weight"), KIND_VECTOR, h, 0)) ||
        (rc = do_dense(cv, P("self_attn.q_proj.weight"), KIND_MATRIX, q, h)) ||
        (rc = do_dense(cv, P("self_attn.k_proj.weight"), KIND_MATRIX, kv, h)) ||
        (rc = do_dense(cv, P("self_attn.v_proj.weight"), KIND_MATRIX, kv, h)) ||
        (rc = do_dense(cv, P("self_attn.o_proj.weight"), KIND_MATRIX, h, q)))
        return rc;
    if (c->attention_bias &&
        ((rc = do_dense(cv, P("self_attn.q_proj.bias"), KIND_VECTOR, q, 0)) ||
         (rc = do_dense(cv, P("self_attn.k_proj.bias"), KIND_VECTOR, kv, 0)) ||
         (rc = do_dense(cv, P("self_attn.v_proj.bias"), KIND_VECTOR, kv, 0)) ||
         (rc = do_dense(cv, P("self_attn.o_proj.bias"), KIND_VECTOR, h, 0))))
        return rc;
    if (c->qk_norm != SL_QK_NORM_NONE) {
        int full = c->qk_norm == SL_QK_NORM_FULL; /* olmoe: whole projection */
        if ((rc = do_dense(cv, P("self_attn.q_norm.weight"), KIND_VECTOR,
                           full ? q : c->head_dim, 0)) ||
            (rc = do_dense(cv, P("self_attn.k_norm.weight"), KIND_VECTOR,
                           full ? kv : c->head_dim, 0)))
            return rc;
    }
    if (c->attn_sinks &&
        (rc = do_dense(cv, P("self_attn.sinks"), KIND_VECTOR, c->n_heads, 0)))
        return rc;
    if ((rc = do_dense(cv, P("post_attention_layernorm.weight"), KIND_VECTOR,
                       h, 0)))
        return rc;
    if (c->layer_is_moe[l]) {
        const char *router = c->arch == SL_ARCH_MIXTRAL ? "block_sparse_moe.gate.weight"
                             : c->arch == SL_ARCH_GPT_OSS ? "mlp.router.weight"
                                                          : "mlp.gate.weight";
        snprintf(n, sizeof n, "model.layers.%u.%s", l, router);
        if ((rc = do_dense(cv, n, KIND_ROUTER, c->n_experts, h))) return rc;
        if (c->router_bias &&
            (rc = do_dense(cv, P("mlp.router.bias"), KIND_VECTOR, c->n_experts, 0)))
            return rc;
        /* gpt_oss expert biases: small, kept dense in f32 under their HF
         * names and layout (gate/up interleaved), see the file comment. */
        if (c->expert_bias &&
            ((rc = do_dense(cv, P("mlp.experts.gate_up_proj_bias"), KIND_ROUTER,
                            c->n_experts, 2 * c->moe_ffn)) ||
             (rc = do_dense(cv, P("mlp.experts.down_proj_bias"), KIND_ROUTER,
                            c->n_experts, h))))
            return rc;
        return SL_OK;
    }
    if ((rc = do_dense(cv, P("mlp.gate_proj.weight"), KIND_MATRIX, c->ffn, h)) ||
        (rc = do_dense(cv, P("mlp.up_proj.weight"), KIND_MATRIX, c->ffn, h)) ||
        (rc = do_dense(cv, P("mlp.down_proj.weight"), KIND_MATRIX, h, c->ffn)))
        return rc;
#undef P
    return SL_OK;
}

/* The whole model in file order: dense tensors first (the dense region),
 * then the expert records layer by layer, in pass cv->pass. */
static int walk(struct conv *cv) {
    const struct sl_config *c = &cv->cfg;
    int rc;
    cv->stage = "embeddings";
    cv->stage_layer = 0;
    if ((rc = do_dense(cv, "model.embed_tokens.weight", KIND_MATRIX,
                       c->n_vocab, c->hidden)))
        return rc;
    cv->stage = "dense layer";
    for (uint32_t l = 0; l < c->n_layers; l++) {
        cv->stage_layer = l + 1;
        if ((rc = do_layer_dense(cv, l))) return rc;
    }
    cv->stage = "output";
    cv->stage_layer = 0;
    uint64_t hd[1] = {c->hidden}; /* hybrid: zero-centred, stored 1 + w */
    if ((rc = config_is_hybrid(c)
                  ? do_dense_as(cv, "model.norm.weight", KIND_VECTOR, 1, 1, hd, 1, hd)
                  : do_dense(cv, "model.norm.weight", KIND_VECTOR, c->hidden, 0)))
        return rc;
    if (!c->tie_embeddings &&
        (rc = do_dense(cv, "lm_head.weight", KIND_MATRIX, c->n_vocab, c->hidden)))
        return rc;
    cv->stage = "experts layer";
    for (uint32_t l = 0; l < c->n_layers; l++) {
        cv->stage_layer = l + 1;
        if (c->layer_is_moe[l] && (rc = convert_experts(cv, l))) return rc;
    }
    return SL_OK;
}

/* ---- side files ---- */

/* Reads dir/name into *txt; *txt = NULL if the file does not exist. */
static int read_optional(const char *dir, const char *name, char **txt,
                         size_t *len) {
    *txt = NULL;
    *len = 0;
    char *p = sl_path_join(dir, name);
    if (!p) return sl_seterr(SL_ERR_NOMEM, "out of memory");
    FILE *probe = fopen(p, "rb");
    int rc = SL_OK;
    if (probe) {
        fclose(probe);
        rc = sl_read_file(p, txt, len);
    }
    sl_free(p);
    return rc;
}

/* A special token in tokenizer_config.json: a string, {"content": str}, or
 * null. Returns the string (borrowed from j) or NULL. */
static int token_string(const cJSON *j, const char *key, const char **out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    *out = NULL;
    if (!v || cJSON_IsNull(v)) return SL_OK;
    if (cJSON_IsObject(v)) v = cJSON_GetObjectItemCaseSensitive(v, "content");
    if (!cJSON_IsString(v))
        return sl_seterr(SL_ERR_FORMAT, "tokenizer_config.json: %s must be a "
                         "string, {\"content\": string} or null", key);
    *out = v->valuestring;
    return SL_OK;
}

/* The id of a special token's text, from added_tokens_decoder; -1 if not
 * listed (or out of the vocabulary). */
static int32_t token_id(const cJSON *j, const char *text, uint32_t n_vocab) {
    const cJSON *atd = cJSON_GetObjectItemCaseSensitive(j, "added_tokens_decoder");
    const cJSON *e;
    if (!text || !cJSON_IsObject(atd)) return -1;
    cJSON_ArrayForEach(e, atd) {
        const cJSON *ct = cJSON_GetObjectItemCaseSensitive(e, "content");
        if (!cJSON_IsString(ct) || strcmp(ct->valuestring, text) != 0) continue;
        char *end;
        long id = strtol(e->string, &end, 10);
        if (*end || id < 0 || (uint64_t)id >= n_vocab) return -1;
        return (int32_t)id;
    }
    return -1;
}

/* Builds the tokenizer-config section (docs/format.md):
 * {"chat_template", "bos_token", "eos_token", "eos_token_ids",
 *  "bos_token_id", "special_tokens"}, filling cfg's bos/eos ids from the special tokens when
 * config.json and generation_config.json gave none. */
static int build_tokenizer_config(const char *dir, struct sl_config *cfg,
                                  char **out, size_t *out_len) {
    char *txt = NULL, *jinja = NULL;
    size_t len = 0, jlen = 0;
    cJSON *tc = NULL, *o = NULL;
    int rc = read_optional(dir, "tokenizer_config.json", &txt, &len);
    if (!rc) rc = read_optional(dir, "chat_template.jinja", &jinja, &jlen);
    if (rc) goto done;
    if (txt) {
        tc = cJSON_ParseWithLength(txt, len);
        if (!cJSON_IsObject(tc)) {
            rc = sl_seterr(SL_ERR_FORMAT, "%s/tokenizer_config.json: not a "
                           "valid JSON object", dir);
            goto done;
        }
    }
    const char *tmpl = jinja, *bos = NULL, *eos = NULL;
    if (tc) {
        const cJSON *ct = cJSON_GetObjectItemCaseSensitive(tc, "chat_template");
        if (cJSON_IsString(ct)) {
            tmpl = ct->valuestring;
        } else if (cJSON_IsArray(ct)) {
            /* Older multi-template form: [{"name", "template"}]; take
             * "default", else the first. */
            const cJSON *e;
            cJSON_ArrayForEach(e, ct) {
                const cJSON *nm = cJSON_GetObjectItemCaseSensitive(e, "name");
                const cJSON *tp = cJSON_GetObjectItemCaseSensitive(e, "template");
                if (!cJSON_IsString(tp)) continue;
                if (!tmpl || (cJSON_IsString(nm) &&
                              strcmp(nm->valuestring, "default") == 0))
                    tmpl = tp->valuestring;
            }
        } else if (ct && !cJSON_IsNull(ct)) {
            rc = sl_seterr(SL_ERR_FORMAT, "%s/tokenizer_config.json: "
                           "chat_template must be a string", dir);
            goto done;
        }
        if ((rc = token_string(tc, "bos_token", &bos)) ||
            (rc = token_string(tc, "eos_token", &eos)))
            goto done;
        int32_t id = token_id(tc, eos, cfg->n_vocab);
        if (cfg->n_eos == 0 && id >= 0) cfg->eos_ids[cfg->n_eos++] = id;
        id = token_id(tc, bos, cfg->n_vocab);
        if (cfg->bos_id < 0 && id >= 0) cfg->bos_id = id;
    }
    o = cJSON_CreateObject();
    int ok = o != NULL;
    if (ok) {
        ok &= (tmpl ? cJSON_AddStringToObject(o, "chat_template", tmpl)
                    : cJSON_AddNullToObject(o, "chat_template")) != NULL;
        ok &= (bos ? cJSON_AddStringToObject(o, "bos_token", bos)
                   : cJSON_AddNullToObject(o, "bos_token")) != NULL;
        ok &= (eos ? cJSON_AddStringToObject(o, "eos_token", eos)
                   : cJSON_AddNullToObject(o, "eos_token")) != NULL;
        cJSON *ids = cJSON_AddArrayToObject(o, "eos_token_ids");
        ok &= ids != NULL;
        for (uint32_t i = 0; ok && i < cfg->n_eos; i++)
            ok &= cJSON_AddItemToArray(ids, cJSON_CreateNumber(cfg->eos_ids[i]));
        ok &= (cfg->bos_id >= 0
                   ? cJSON_AddNumberToObject(o, "bos_token_id", cfg->bos_id)
                   : cJSON_AddNullToObject(o, "bos_token_id")) != NULL;
        /* special_tokens: every "*_token" key of tokenizer_config.json whose
         * value is a string or {"content": string} (bos, eos, pad, unk...). */
        cJSON *sp = cJSON_AddObjectToObject(o, "special_tokens");
        ok &= sp != NULL;
        const cJSON *e;
        if (ok && tc) cJSON_ArrayForEach(e, tc) {
            size_t kl = strlen(e->string);
            if (kl < 6 || strcmp(e->string + kl - 6, "_token") != 0) continue;
            const cJSON *v = cJSON_IsObject(e)
                                 ? cJSON_GetObjectItemCaseSensitive(e, "content")
                                 : e;
            if (cJSON_IsString(v))
                ok &= cJSON_AddStringToObject(sp, e->string, v->valuestring) != NULL;
        }
    }
    char *s = ok ? cJSON_PrintUnformatted(o) : NULL;
    if (!s) {
        rc = sl_seterr(SL_ERR_NOMEM, "tokenizer config: out of memory");
        goto done;
    }
    *out_len = strlen(s);
    *out = sl_malloc(*out_len + 1);
    if (*out) memcpy(*out, s, *out_len + 1);
    else rc = sl_seterr(SL_ERR_NOMEM, "tokenizer config: out of memory");
    cJSON_free(s);
done:
    cJSON_Delete(o);
    cJSON_Delete(tc);
    sl_free(txt);
    sl_free(jinja);
    return rc;
}

/* config.json (required) and generation_config.json (optional) into cfg. */
static int read_config(const char *dir, struct sl_config *cfg, uint32_t fp8_block[2]) {
    char *txt;
    size_t len;
    char *p = sl_path_join(dir, "config.json");
    if (!p) return sl_seterr(SL_ERR_NOMEM, "out of memory");
    int rc = read_optional(dir, "config.json", &txt, &len);
    if (!rc && !txt)
        rc = sl_seterr(SL_ERR_CONFIG, "%s: not found; a HuggingFace checkpoint "
                       "directory needs config.json", p);
    if (!rc) {
        rc = config_parse(cfg, txt, len);
        if (rc) sl_preerr(rc, "%s: ", p);
        cJSON *j = rc ? NULL : cJSON_ParseWithLength(txt, len);
        const cJSON *qc = cJSON_GetObjectItemCaseSensitive(j, "quantization_config");
        const cJSON *qm = cJSON_GetObjectItemCaseSensitive(qc, "quant_method");
        /* gpt_oss ships its experts in MXFP4, which convert_experts.c reads. */
        int mxfp4 = cfg->arch == SL_ARCH_GPT_OSS && cJSON_IsString(qm) &&
                    strcmp(qm->valuestring, "mxfp4") == 0;
        /* deepseek_v3 ships FP8 block-scaled weights (convert_fp8.h). */
        int fp8 = cfg->arch == SL_ARCH_DEEPSEEK_V3 && cJSON_IsString(qm) &&
                  strcmp(qm->valuestring, "fp8") == 0;
        if (fp8 && (rc = fp8_parse_quant_config(qc, fp8_block))) sl_preerr(rc, "%s: ", p);
        if (!rc && qc && !cJSON_IsNull(qc) && !mxfp4 && !fp8) {
            const cJSON *m = cJSON_GetObjectItemCaseSensitive(qc, "quant_method");
            rc = sl_seterr(SL_ERR_UNSUPPORTED, "%s: quantized checkpoints "
                           "(quantization_config.quant_method '%s') are not "
                           "supported; convert from the bf16 release", p,
                           cJSON_IsString(m) ? m->valuestring : "?");
        }
        cJSON_Delete(j);
        sl_free(txt);
    }
    sl_free(p);
    if (rc) return rc;
    if ((rc = read_optional(dir, "generation_config.json", &txt, &len)))
        return rc;
    if (txt) {
        rc = config_parse_generation(cfg, txt, len);
        if (rc) sl_preerr(rc, "%s/generation_config.json: ", dir);
        sl_free(txt);
    }
    return rc;
}

/* ---- entry point ---- */

static int check_params(const struct sl_convert_params *p) {
    if (p->expert_dtype != SL_DTYPE_BF16 && p->expert_dtype != SL_DTYPE_Q8 &&
        p->expert_dtype != SL_DTYPE_Q4)
        return sl_seterr(SL_ERR_ARG, "expert dtype %s is not supported for "
                         "conversion (bf16, q8 or q4)",
                         sl_dtype_name(p->expert_dtype));
    if (p->dense_dtype != SL_DTYPE_BF16 && p->dense_dtype != SL_DTYPE_Q8 &&
        p->dense_dtype != SL_DTYPE_F32)
        return sl_seterr(SL_ERR_ARG, "dense dtype %s is not supported for "
                         "conversion (bf16, q8 or f32)",
                         sl_dtype_name(p->dense_dtype));
    return SL_OK;
}

/* Warns about checkpoint tensors the model does not use (rotary inv_freq
 * buffers, a tied lm_head, MTP heads, ...). */
static void warn_unused(const struct conv *cv) {
    uint32_t n = st_count(cv->st), skipped = 0, mtp = 0, visual = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (cv->used[i]) continue;
        const char *nm = st_at(cv->st, i)->name;
        /* Qwen3-Next / Qwen3.5: multi-token-prediction head and the vision
         * tower, both unused by text generation: one note each. */
        if (strncmp(nm, "mtp.", 4) == 0) {
            mtp++;
            continue;
        }
        if (cv->src_prefix && strncmp(nm, "model.visual.", 13) == 0) {
            visual++;
            continue;
        }
        if (skipped++ < 8)
            sl_log(SL_LOG_WARN, "skipping tensor %s: not used by %s",
                   st_at(cv->st, i)->name, cv->cfg.model_type);
    }
    if (skipped > 8)
        sl_log(SL_LOG_WARN, "skipped %u unused tensors in all", skipped);
    if (mtp)
        sl_log(SL_LOG_INFO, "skipping %u multi-token-prediction tensors (mtp.*): "
               "not used for generation", mtp);
    if (visual)
        sl_log(SL_LOG_INFO, "skipping %u vision tensors (model.visual.*): sluice "
               "runs the text model", visual);
}

int sl_convert(const char *hf_dir, const char *out_path,
               const struct sl_convert_params *params) {
    if (!hf_dir || !out_path)
        return sl_seterr(SL_ERR_ARG, "sl_convert: hf_dir and out_path are "
                         "required");
    struct conv cv;
    memset(&cv, 0, sizeof cv);
    cv.p = params ? *params : sl_convert_default_params();
    char *manifest = NULL, *tok = NULL, *tokcfg = NULL;
    size_t manifest_len = 0, tok_len = 0, tokcfg_len = 0;
    int rc = check_params(&cv.p);
    if (!rc) rc = read_config(hf_dir, &cv.cfg, cv.fp8_block);
    if (!rc) rc = build_tokenizer_config(hf_dir, &cv.cfg, &tokcfg, &tokcfg_len);
    if (!rc) rc = read_optional(hf_dir, "tokenizer.json", &tok, &tok_len);
    if (!rc && !tok)
        sl_log(SL_LOG_WARN, "%s has no tokenizer.json: the model file will "
               "take token ids only", hf_dir);
    if (!rc)
        rc = config_to_manifest(&cv.cfg, cv.p.expert_dtype, cv.p.dense_dtype,
                                &manifest, &manifest_len);
    if (!rc) rc = st_open_dir(hf_dir, &cv.st);
    if (!rc && cv.cfg.arch == SL_ARCH_QWEN3_5_MOE &&
        st_find(cv.st, "model.language_model.embed_tokens.weight"))
        cv.src_prefix = "model.language_model."; /* the multimodal wrapper */
    if (!rc && !(cv.used = sl_calloc(st_count(cv.st) + 1, 1)))
        rc = sl_seterr(SL_ERR_NOMEM, "out of memory");
    if (!rc && !(cv.fp8_scale = sl_calloc(st_count(cv.st) + 1, sizeof *cv.fp8_scale)))
        rc = sl_seterr(SL_ERR_NOMEM, "out of memory");
    cv.pass = 1;
    if (!rc) rc = walk(&cv); /* pass 1: names, dtypes, shapes */
    if (!rc) {
        warn_unused(&cv);
        rc = writer_open(&cv.w, out_path);
    }
    if (!rc) rc = writer_set_section(cv.w, SL_SECTION_MANIFEST, manifest,
                                     manifest_len);
    if (!rc) rc = writer_set_section(cv.w, SL_SECTION_TOKENIZER_CONFIG, tokcfg,
                                     tokcfg_len);
    if (!rc && tok)
        rc = writer_set_section(cv.w, SL_SECTION_TOKENIZER, tok, tok_len);
    if (!rc) {
        cv.pass = 2;
        cv.last_draw = sl_now();
        rc = walk(&cv); /* pass 2: convert and write */
    }
    if (cv.w) {
        if (rc) {
            /* Keep the message of the first failure across the cleanup. */
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", sl_errmsg());
            writer_close(cv.w, 0);
            sl_seterr(rc, "%s", msg);
            if (cv.p.progress && cv.pass == 2) fputc('\n', stderr); /* end the bar */
        } else {
            rc = writer_close(cv.w, 1);
            if (!rc) {
                cv.stage = "done";
                cv.stage_layer = 0;
                convert_progress_draw(&cv, 1);
            }
        }
        cv.w = NULL;
    }
    st_close(cv.st);
    sl_free(cv.used);
    sl_free((void *)cv.fp8_scale);
    sl_free(cv.chunk);
    sl_free(cv.block);
    sl_free(manifest);
    sl_free(tok);
    sl_free(tokcfg);
    return rc;
}
