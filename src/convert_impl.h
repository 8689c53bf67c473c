/*
 * convert_impl.h — internals shared by the converter's two files:
 * convert.c (sl_convert itself: params, config and side files, the
 * two-pass walk, the per-family dense tensor names, and the primitives
 * below) and convert_experts.c (the routed experts of one MoE layer, in
 * every source layout, written as expert records).
 *
 * What it is not: an API for anything else; include sluice.h and call
 * sl_convert for that. Nothing here opens or closes files.
 *
 * Invariants (both files keep them): every tensor the model needs is
 * looked up and shape-checked in both passes, in the same order
 * (convert_expect; MXFP4 bytes by convert_experts.c's own U8 check), so
 * pass 1 proves pass 2 will find it; pass 1 writes nothing (cv->w is NULL
 * then); messages name the checkpoint's tensor (convert_src_name).
 */
#ifndef SL_CONVERT_IMPL_H
#define SL_CONVERT_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "format.h"
#include "safetensors.h"
#include "sluice.h"

/* The state of one sl_convert call; owned by sl_convert, borrowed by every
 * function below for the duration of the call. */
struct conv {
    struct sl_convert_params p;
    struct sl_config cfg;
    struct st_set *st;
    struct sl_writer *w;         /* open during pass 2 */
    int pass;                    /* 1: check names, dtypes, shapes; 2: write */
    uint8_t *used;               /* (st_count) tensor consumed by the model */
    float *chunk;                /* (CHUNK_FLOATS or one row) read buffer */
    uint64_t chunk_floats;
    uint8_t *block;              /* (at most ROW_BLOCK rows) stored rows of
                                    the dense tensor being streamed */
    uint64_t block_bytes;
    uint64_t total, done;        /* elements to convert / converted */
    double last_draw;
    const char *stage;           /* progress label */
    uint32_t stage_layer;
    int warned_fallback;
    const char *src_prefix;      /* "model.language_model." for the multimodal
                                    qwen3_5_moe checkpoints, else NULL */
    char src_buf[SL_MAX_NAME + 64]; /* convert_src_name's result */
    uint32_t fp8_block[2];       /* FP8 checkpoint: weight_block_size; else 0 */
    const struct st_tensor **fp8_scale; /* (st_count) scale_inv of an F8
                                           weight, else NULL (convert_fp8.h) */
};

/* convert.c. */

/* Redraws the progress bar on stderr when params.progress is set and this
 * is pass 2: at most every 0.1 s, or now (plus a newline) when final.
 * Callers add the elements they converted to cv->done first. */
void convert_progress_draw(struct conv *cv, int final);

/* Formats dims[0..n_dims) as "[a, b, c]" into buf (n bytes, always
 * NUL-terminated, truncated if short). */
void convert_format_dims(char *buf, size_t n, int n_dims, const uint64_t *d);

/* The checkpoint's name of output tensor name: the same, except that the
 * multimodal qwen3_5_moe checkpoints keep the text model's "model.*" under
 * "model.language_model.*". Returns name itself or cv->src_buf, which is
 * valid until the next call. */
const char *convert_src_name(struct conv *cv, const char *name);

/* Finds the tensor whose output name is name (looked up under
 * convert_src_name) and checks that its dtype is readable (F32, F16, BF16;
 * F8_E4M3 with a quantization_config fp8, paired here with its scale_inv)
 * and that its shape is exactly dims[0..n_dims). Marks it (and an FP8
 * scale) used and, in pass 1, adds its elements to cv->total. *out is set
 * on SL_OK and borrowed from cv->st. SL_ERR_FORMAT for a missing tensor
 * or a wrong shape, SL_ERR_UNSUPPORTED for a dtype, each naming the
 * checkpoint's tensor. */
int convert_expect(struct conv *cv, const char *name, int n_dims,
                   const uint64_t *dims, const struct st_tensor **out);

/* Converts rows [row0, row0 + n_rows) of t (seen as [numel/cols, cols]) to
 * dtype into out (n_rows * quant_row_bytes(dtype, cols) bytes, caller's),
 * reading a chunk of cv->chunk at a time and applying an FP8 scale_inv
 * when t has one. dtype must fit cols (convert_pick_dtype). A non-finite
 * value is SL_ERR_FORMAT naming what, the row (of t, counted from 0, not
 * from row0) and the column. Advances cv->done and the progress bar. Pass
 * 2 only. */
int convert_rows(struct conv *cv, const struct st_tensor *t, uint64_t row0,
                 uint64_t n_rows, int dtype, void *out, const char *what);

/* The stored dtype of a matrix of cols columns whose policy dtype is want:
 * want if it fits cols, else bf16, with one warning per conversion (pass 2)
 * naming the first such matrix, name. */
int convert_pick_dtype(struct conv *cv, int want, uint64_t cols,
                       const char *name);

/* convert_experts.c. */

/* The routed experts of MoE layer l in pass cv->pass: pass 1 checks every
 * source tensor (convert_expect), pass 2 converts them to
 * params.expert_dtype (convert_pick_dtype per part) and writes layer l's
 * expert records through writer_begin_experts / writer_add_expert. Source
 * layouts: qwen3_moe / olmoe / deepseek_v3 per expert or fused (v5), mixtral
 * w1/w3/w2, gpt_oss bf16 or MXFP4 (convert.c's file comment). Holds one
 * expert's three stored matrices (plus, for gpt_oss, one expert's source
 * slice) at a time. A layer holding two layouts at once is SL_ERR_FORMAT. */
int convert_experts(struct conv *cv, uint32_t l);

#endif /* SL_CONVERT_IMPL_H */
