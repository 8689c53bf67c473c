/*
 * quant.h — the stored weight formats: byte layout, sizes, and the scalar
 * reference quantize / dequantize routines (the specification; SIMD and CUDA
 * kernels must read exactly this layout).
 *
 * Every 2-D tensor [rows, cols] is stored row by row; each row is
 * self-contained so that threads split work by rows and an embedding lookup
 * reads one row:
 *
 *   F32   row = cols * 4 bytes
 *   F16   row = cols * 2 bytes (IEEE half)
 *   BF16  row = cols * 2 bytes
 *   Q8    row = [cols int8 q][cols/32 f16 d]                w = d * q
 *         (8.5 bits per weight; d = max|w| / 127 over a block of 32)
 *   Q4    row = [cols/2 bytes of nibbles][cols/32 f16 d][cols/32 f16 m]
 *         w = d * q + m, q in 0..15 (5.0 bits per weight). In block b, byte
 *         j (0..15) holds q[32b + j] in its low nibble and q[32b + j + 16] in
 *         its high nibble, so one 16-byte load gives a whole block.
 *
 * Q8 and Q4 need cols % 32 == 0; tensors that do not satisfy it are stored
 * in BF16 by the converter. 1-D tensors (norm weights) are always F32.
 */
#ifndef SL_QUANT_H
#define SL_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "sluice.h"

#define SL_QBLOCK 32

/* Bytes of one row of `cols` elements in dtype; 0 if dtype is unknown or
 * cols is not a multiple of 32 for a quantized dtype. */
uint64_t quant_row_bytes(int dtype, uint64_t cols);

/* Whether dtype can store a row of cols elements. */
int quant_dtype_fits(int dtype, uint64_t cols);

/* Quantizes (or converts) one row of cols floats into dst
 * (quant_row_bytes(dtype, cols) bytes). Deterministic. */
void quant_row_from_f32(int dtype, const float *src, void *dst, uint64_t cols);

/* Dequantizes one row into dst (cols floats). */
void quant_row_to_f32(int dtype, const void *src, float *dst, uint64_t cols);

/* 1 if every one of the n floats is finite, else 0. Converters call it and
 * reject a tensor with NaN/Inf before quantizing: quant_row_from_f32 gives
 * such input a defined but meaningless encoding (NaN -> q 0, Inf saturates). */
int quant_row_is_finite(const float *src, uint64_t n);

#endif /* SL_QUANT_H */
