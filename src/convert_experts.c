/*
 * convert_experts.c — the converter's routed-expert writer: the experts of
 * one MoE layer, read from the checkpoint in whichever layout it uses and
 * written as expert records (parts gate [moe_ffn, hidden], up [moe_ffn,
 * hidden], down [hidden, moe_ffn], each in params.expert_dtype or bf16 when
 * the row length does not fit it). Source layouts, told apart per layer by
 * name (convert.c's file comment has the full tensor list):
 *   per expert  mlp.experts.{e}.{gate,up,down}_proj.weight (qwen3_moe,
 *               olmoe, deepseek_v3) or block_sparse_moe.experts.{e}.
 *               {w1,w3,w2}.weight (mixtral);
 *   fused       mlp.experts.gate_up_proj [E, 2*ffn, hidden] + down_proj
 *               [E, hidden, ffn] (transformers v5);
 *   gpt_oss     bf16 gate_up_proj [E, hidden, 2*ffn] (interleaved, x @ W) +
 *               down_proj [E, ffn, hidden], or their MXFP4 _blocks/_scales.
 *
 * What it is not: the dense tensors (router, shared experts and gpt_oss's
 * expert biases are dense, written by convert.c), the pass driver or the
 * file writer (format_write.c); the row reader, shape check and dtype
 * policy are convert.c's (convert_impl.h).
 *
 * Invariants: one expert's three stored matrices (plus, for gpt_oss, one
 * expert's source slice and one decoded row) in memory at a time; experts
 * written in index order 0..E-1; values are decoded to f32 (exact for
 * bf16, f16, f32 and MXFP4 sources) and quantized once to the stored dtype.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "convert_impl.h"
#include "format.h"
#include "quant.h"
#include "safetensors.h"
#include "util.h"

/* ---- gpt_oss experts ---- */

/* MXFP4 (e2m1) code points; bit 3 is the sign. */
static const float fp4_values[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,
                                     4.0f,  6.0f,  -0.0f, -0.5f, -1.0f, -1.5f,
                                     -2.0f, -3.0f, -4.0f, -6.0f};

/* Decodes one MXFP4 row of g blocks of 32: blocks (g, 16) bytes, the low
 * nibble of byte j is element 2j and the high nibble element 2j + 1 (as
 * transformers' convert_moe_packed_tensors); scales (g) E8M0 bytes,
 * element = value * 2^(scale - 127). Exact in float32. */
static void mxfp4_row(const uint8_t *blocks, const uint8_t *scales, uint64_t g,
                      float *out) {
    for (uint64_t b = 0; b < g; b++) {
        float sc = ldexpf(1.0f, (int)scales[b] - 127);
        for (int j = 0; j < 16; j++) {
            uint8_t byte = blocks[b * 16 + (uint64_t)j];
            out[b * 32 + 2 * (uint64_t)j] = fp4_values[byte & 15] * sc;
            out[b * 32 + 2 * (uint64_t)j + 1] = fp4_values[byte >> 4] * sc;
        }
    }
}

/* Finds an MXFP4 tensor (U8) and checks its shape; marks it used. */
static int expect_u8(struct conv *cv, const char *name, int n_dims,
                     const uint64_t *dims, const struct st_tensor **out) {
    const struct st_tensor *t = st_find(cv->st, name);
    if (!t) return sl_seterr(SL_ERR_FORMAT, "missing tensor %s", name);
    int same = strcmp(t->dtype_name, "U8") == 0 && t->n_dims == n_dims;
    for (int i = 0; same && i < n_dims; i++) same = t->dims[i] == dims[i];
    if (!same) {
        char want[96], got[96];
        convert_format_dims(want, sizeof want, n_dims, dims);
        convert_format_dims(got, sizeof got, t->n_dims, t->dims);
        return sl_seterr(SL_ERR_FORMAT, "tensor %s: expected U8 %s (MXFP4), got "
                         "%s %s", name, want, t->dtype_name, got);
    }
    if (cv->pass == 1 && !cv->used[t->index]) cv->total += t->numel;
    cv->used[t->index] = 1;
    *out = t;
    return SL_OK;
}

/* Quantizes row r of part k from the staged f32 row, checking finiteness. */
static int oss_store_row(struct conv *cv, const float *row, uint64_t cols,
                         int dtype, void *dst, uint64_t r, const char *what) {
    if (!quant_row_is_finite(row, cols))
        return sl_seterr(SL_ERR_FORMAT, "tensor %s: non-finite value in row "
                         "%llu (an MXFP4 scale of 255?)", what,
                         (unsigned long long)r);
    quant_row_from_f32(dtype, row, (uint8_t *)dst + r * quant_row_bytes(dtype, cols),
                       cols);
    return SL_OK;
}

/* gpt_oss experts of layer l, from either hub layout:
 *   bf16:  mlp.experts.gate_up_proj [E, hidden, 2*ffn] (x @ W: columns 2j
 *          gate j, 2j + 1 up j), mlp.experts.down_proj [E, ffn, hidden];
 *   MXFP4: mlp.experts.{gate_up,down}_proj_{blocks,scales}: blocks
 *          [E, rows, cols/32, 16] U8, scales [E, rows, cols/32] U8, rows
 *          the output features (gate_up: 2j gate j, 2j + 1 up j).
 * Each expert is decoded to float32 (exact for both) one matrix at a time
 * and quantized straight to the expert dtype: MXFP4 -> q4 goes through no
 * bf16 rounding. */
static int do_experts_oss(struct conv *cv, uint32_t l) {
    const struct sl_config *c = &cv->cfg;
    uint64_t h = c->hidden, f = c->moe_ffn, E = c->n_experts;
    char gu[SL_MAX_NAME + 1], dn[SL_MAX_NAME + 1], gub[SL_MAX_NAME + 1],
        gus[SL_MAX_NAME + 1], dnb[SL_MAX_NAME + 1], dns[SL_MAX_NAME + 1];
    snprintf(gu, sizeof gu, "model.layers.%u.mlp.experts.gate_up_proj", l);
    snprintf(dn, sizeof dn, "model.layers.%u.mlp.experts.down_proj", l);
    snprintf(gub, sizeof gub, "model.layers.%u.mlp.experts.gate_up_proj_blocks", l);
    snprintf(gus, sizeof gus, "model.layers.%u.mlp.experts.gate_up_proj_scales", l);
    snprintf(dnb, sizeof dnb, "model.layers.%u.mlp.experts.down_proj_blocks", l);
    snprintf(dns, sizeof dns, "model.layers.%u.mlp.experts.down_proj_scales", l);
    int mx = st_find(cv->st, gub) != NULL;
    if (mx && st_find(cv->st, gu))
        return sl_seterr(SL_ERR_FORMAT, "layer %u holds both %s and %s", l, gu, gub);
    const struct st_tensor *t_gu = NULL, *t_dn = NULL, *t_gub = NULL,
                           *t_gus = NULL, *t_dnb = NULL, *t_dns = NULL;
    int rc;
    if (mx) {
        if (h % 32 || f % 32)
            return sl_seterr(SL_ERR_FORMAT, "layer %u: MXFP4 experts need hidden "
                             "(%llu) and intermediate_size (%llu) to be multiples "
                             "of 32", l, (unsigned long long)h, (unsigned long long)f);
        uint64_t d1[4] = {E, 2 * f, h / 32, 16}, d2[3] = {E, 2 * f, h / 32};
        uint64_t d3[4] = {E, h, f / 32, 16}, d4[3] = {E, h, f / 32};
        if ((rc = expect_u8(cv, gub, 4, d1, &t_gub)) ||
            (rc = expect_u8(cv, gus, 3, d2, &t_gus)) ||
            (rc = expect_u8(cv, dnb, 4, d3, &t_dnb)) ||
            (rc = expect_u8(cv, dns, 3, d4, &t_dns)))
            return rc;
    } else {
        uint64_t d1[3] = {E, h, 2 * f}, d2[3] = {E, f, h};
        if ((rc = convert_expect(cv, gu, 3, d1, &t_gu)) ||
            (rc = convert_expect(cv, dn, 3, d2, &t_dn)))
            return rc;
    }
    if (cv->pass == 1) return SL_OK;

    uint64_t rows[3] = {f, f, h}, cols[3] = {h, h, f};
    struct sl_expert_part parts[3];
    memset(parts, 0, sizeof parts);
    void *data[3] = {NULL, NULL, NULL};
    /* Staging: one expert's gate_up or down in f32 (bf16 source), or its raw
     * MXFP4 bytes; plus one decoded row. */
    uint64_t stage_floats = 2 * f * h, raw_bytes = 2 * f * (h / 32) * 17 + h * (f / 32) * 17;
    float *stage = NULL, *row = NULL;
    uint8_t *raw = NULL;
    rc = SL_OK;
    for (int k = 0; k < 3 && !rc; k++) {
        char what[SL_MAX_NAME + 32];
        snprintf(what, sizeof what, "model.layers.%u.mlp.experts.* (%s)", l,
                 k == 0 ? "gate" : k == 1 ? "up" : "down");
        parts[k].dtype = convert_pick_dtype(cv, cv->p.expert_dtype, cols[k], what);
        parts[k].rows = rows[k];
        parts[k].cols = cols[k];
        uint64_t sz = rows[k] * quant_row_bytes(parts[k].dtype, cols[k]);
        if (!(data[k] = sl_malloc((size_t)sz)))
            rc = sl_seterr(SL_ERR_NOMEM, "layer %u experts: cannot allocate %llu "
                           "bytes", l, (unsigned long long)sz);
    }
    if (!rc) {
        stage = mx ? NULL : sl_malloc((size_t)stage_floats * sizeof(float));
        raw = mx ? sl_malloc((size_t)raw_bytes) : NULL;
        row = sl_malloc((size_t)(h > f ? h : f) * sizeof(float));
        if ((!mx && !stage) || (mx && !raw) || !row)
            rc = sl_seterr(SL_ERR_NOMEM, "layer %u experts: out of memory", l);
    }
    if (!rc) rc = writer_begin_experts(cv->w, l, (uint32_t)E, parts);
    for (uint64_t e = 0; e < E && !rc; e++) {
        if (mx) {
            uint64_t gu_blk = 2 * f * (h / 32) * 16, gu_sc = 2 * f * (h / 32);
            uint64_t dn_blk = h * (f / 32) * 16, dn_sc = h * (f / 32);
            uint8_t *b1 = raw, *s1 = b1 + gu_blk, *b2 = s1 + gu_sc, *s2 = b2 + dn_blk;
            if ((rc = st_read_raw(cv->st, t_gub, e * gu_blk, gu_blk, b1)) ||
                (rc = st_read_raw(cv->st, t_gus, e * gu_sc, gu_sc, s1)) ||
                (rc = st_read_raw(cv->st, t_dnb, e * dn_blk, dn_blk, b2)) ||
                (rc = st_read_raw(cv->st, t_dns, e * dn_sc, dn_sc, s2)))
                break;
            uint64_t g = h / 32;
            for (uint64_t r = 0; r < 2 * f && !rc; r++) { /* interleaved rows */
                mxfp4_row(b1 + r * g * 16, s1 + r * g, g, row);
                rc = oss_store_row(cv, row, h, parts[r % 2].dtype, data[r % 2], r / 2, gub);
            }
            g = f / 32;
            for (uint64_t r = 0; r < h && !rc; r++) {
                mxfp4_row(b2 + r * g * 16, s2 + r * g, g, row);
                rc = oss_store_row(cv, row, f, parts[2].dtype, data[2], r, dnb);
            }
        } else {
            /* gate_up slice (h, 2f): part row j is column 2j (gate) or
             * 2j + 1 (up). */
            if ((rc = st_read_rows_f32(cv->st, t_gu, e * h, h, stage))) break;
            for (uint64_t j = 0; j < 2 * f && !rc; j++) {
                for (uint64_t i = 0; i < h; i++) row[i] = stage[i * 2 * f + j];
                rc = oss_store_row(cv, row, h, parts[j % 2].dtype, data[j % 2], j / 2, gu);
            }
            /* down slice (f, h): part row r is column r. */
            if (rc || (rc = st_read_rows_f32(cv->st, t_dn, e * f, f, stage))) break;
            for (uint64_t r = 0; r < h && !rc; r++) {
                for (uint64_t i = 0; i < f; i++) row[i] = stage[i * h + r];
                rc = oss_store_row(cv, row, f, parts[2].dtype, data[2], r, dn);
            }
        }
        if (!rc) rc = writer_add_expert(cv->w, l, (uint32_t)e, (const void *const *)data);
        cv->done += mx ? 3 * f * h / 2 + 3 * f * h / 32 : 3 * f * h;
        convert_progress_draw(cv, 0);
    }
    for (int k = 0; k < 3; k++) sl_free(data[k]);
    sl_free(stage);
    sl_free(raw);
    sl_free(row);
    return rc;
}

/* The routed experts of MoE layer l: checked in pass 1, written as records
 * in pass 2. Holds one expert's three stored matrices at a time. Contract:
 * convert_impl.h. */
int convert_experts(struct conv *cv, uint32_t l) {
    const struct sl_config *c = &cv->cfg;
    uint64_t h = c->hidden, f = c->moe_ffn, E = c->n_experts;
    if (c->arch == SL_ARCH_GPT_OSS) return do_experts_oss(cv, l);
    /* mixtral: block_sparse_moe.experts.{e}.w1 (gate), w3 (up), w2 (down) */
    int mx = c->arch == SL_ARCH_MIXTRAL;
    const char *pre = mx ? "block_sparse_moe.experts" : "mlp.experts";
    const char *part_names[3] = {"gate_proj", "up_proj", "down_proj"};
    if (mx) {
        part_names[0] = "w1";
        part_names[1] = "w3";
        part_names[2] = "w2";
    }
    char n[SL_MAX_NAME + 1], gu_name[SL_MAX_NAME + 1], d_name[SL_MAX_NAME + 1];
    snprintf(gu_name, sizeof gu_name, "model.layers.%u.%s.gate_up_proj", l, pre);
    snprintf(d_name, sizeof d_name, "model.layers.%u.%s.down_proj", l, pre);
    snprintf(n, sizeof n, "model.layers.%u.%s.0.%s.weight", l, pre, part_names[0]);
    int fused = st_find(cv->st, convert_src_name(cv, gu_name)) != NULL;
    if (fused && st_find(cv->st, convert_src_name(cv, n)))
        return sl_seterr(SL_ERR_FORMAT, "layer %u holds both the fused (%s) "
                         "and the per-expert (%s) expert layout", l, gu_name, n);
    int rc;
    const struct st_tensor *gu = NULL, *dn = NULL;
    if (fused) {
        uint64_t gd[3] = {E, 2 * f, h}, dd[3] = {E, h, f};
        if ((rc = convert_expect(cv, gu_name, 3, gd, &gu)) ||
            (rc = convert_expect(cv, d_name, 3, dd, &dn)))
            return rc;
    }
    uint64_t rows[3] = {f, f, h}, cols[3] = {h, h, f};
    struct sl_expert_part parts[3];
    memset(parts, 0, sizeof parts);
    void *data[3] = {NULL, NULL, NULL};
    if (cv->pass == 2) {
        for (int k = 0; k < 3; k++) {
            snprintf(n, sizeof n, "model.layers.%u.%s.*.%s", l, pre,
                     part_names[k]);
            parts[k].dtype = convert_pick_dtype(cv, cv->p.expert_dtype, cols[k], n);
            parts[k].rows = rows[k];
            parts[k].cols = cols[k];
            uint64_t sz = rows[k] * quant_row_bytes(parts[k].dtype, cols[k]);
            if (!(data[k] = sl_malloc((size_t)sz))) {
                rc = sl_seterr(SL_ERR_NOMEM, "layer %u experts: cannot "
                               "allocate %llu bytes", l, (unsigned long long)sz);
                goto done;
            }
        }
        if ((rc = writer_begin_experts(cv->w, l, (uint32_t)E, parts))) goto done;
    }
    for (uint64_t e = 0; e < E; e++) {
        if (fused) {
            if (cv->pass == 1) continue; /* shapes checked above */
            char what[SL_MAX_NAME + 64];
            snprintf(what, sizeof what, "%s (expert %llu gate)", gu_name,
                     (unsigned long long)e);
            if ((rc = convert_rows(cv, gu, e * 2 * f, f, parts[0].dtype,
                                   data[0], what)))
                goto done;
            snprintf(what, sizeof what, "%s (expert %llu up)", gu_name,
                     (unsigned long long)e);
            if ((rc = convert_rows(cv, gu, e * 2 * f + f, f, parts[1].dtype,
                                   data[1], what)))
                goto done;
            snprintf(what, sizeof what, "%s (expert %llu)", d_name,
                     (unsigned long long)e);
            if ((rc = convert_rows(cv, dn, e * h, h, parts[2].dtype, data[2],
                                   what)))
                goto done;
        } else {
            for (int k = 0; k < 3; k++) {
                const struct st_tensor *t;
                uint64_t dims[2] = {rows[k], cols[k]};
                snprintf(n, sizeof n, "model.layers.%u.%s.%llu.%s.weight",
                         l, pre, (unsigned long long)e, part_names[k]);
                if ((rc = convert_expect(cv, n, 2, dims, &t))) goto done;
                if (cv->pass == 2 &&
                    (rc = convert_rows(cv, t, 0, rows[k], parts[k].dtype,
                                       data[k], n)))
                    goto done;
            }
        }
        if (cv->pass == 2 &&
            (rc = writer_add_expert(cv->w, l, (uint32_t)e,
                                    (const void *const *)data)))
            goto done;
    }
    rc = SL_OK;
done:
    for (int k = 0; k < 3; k++) sl_free(data[k]);
    return rc;
}
