/*
 * convert_fp8.h — the converter's reading of FP8 block-scaled checkpoints
 * (DeepSeek-V3/R1 and Kimi K2 releases): weights stored as F8_E4M3 with a
 * companion `<name>_scale_inv` tensor of per-block factors, and
 * config.json's quantization_config {"quant_method": "fp8", "fmt": "e4m3",
 * "weight_block_size": [br, bc]}. A weight w [rows, cols] dequantizes as
 *   w[i, j] = fp8[i, j] * scale_inv[i / br, j / bc]    (float32)
 * with scale_inv of shape [ceil(rows / br), ceil(cols / bc)], exactly as
 * DeepSeek's weight_dequant and transformers' FP8 dequantization do.
 *
 * What it is not: an FP8 compute path. sluice stores the dequantized values
 * in its own formats (bf16 / q8 / q4), like any other source dtype.
 */
#ifndef SL_CONVERT_FP8_H
#define SL_CONVERT_FP8_H

#include <stdint.h>

#include "safetensors.h"

struct cJSON;

/* Validates an "fp8" quantization_config and returns its block size in
 * block[2] (rows, cols). SL_ERR_UNSUPPORTED naming the key for another fmt
 * or a missing / malformed weight_block_size. */
int fp8_parse_quant_config(const struct cJSON *qc, uint32_t block[2]);

/* For an F8_E4M3 tensor w: finds `<w->name>_scale_inv` and checks it is a
 * 2-D F32 / BF16 tensor [ceil(rows / br), ceil(cols / bc)] and that w is
 * 2-D. SL_ERR_FORMAT naming the tensor otherwise. */
int fp8_find_scale(const struct st_set *st, const struct st_tensor *w,
                   const uint32_t block[2], const struct st_tensor **scale);

/* Multiplies rows (n, cols), holding rows row0 .. row0 + n - 1 of the
 * weight as stored (st_read_rows_f32), by their block factors from scale.
 * Reads one scale row per block row; allocates ceil(cols / bc) floats. */
int fp8_scale_rows(const struct st_set *st, const struct st_tensor *scale,
                   const uint32_t block[2], uint64_t row0, uint64_t n,
                   uint64_t cols, float *rows);

#endif /* SL_CONVERT_FP8_H */
