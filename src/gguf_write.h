/*
 * gguf_write.h — export of a .sluice model to a GGUF v3 file that llama.cpp
 * loads as its `qwen3moe` architecture, with bit-identical weights: the
 * benchmark peers (bench/peers/) run the same numbers as sluice.
 *
 * What it is: a streaming writer (one tensor row, or one expert matrix, in
 * memory at a time) from the public GGUF spec (ggml docs/gguf.md). Weight
 * encodings map one to one, only regrouped into ggml's block structs:
 *
 *   sluice F32  -> GGML_TYPE_F32      sluice F16 -> GGML_TYPE_F16
 *   sluice BF16 -> GGML_TYPE_BF16
 *   sluice Q8   -> GGML_TYPE_Q8_0  block {f16 d; int8 qs[32]}   w = d*q
 *   sluice Q4   -> GGML_TYPE_Q4_1  block {f16 d; f16 m; u8 qs[16]}
 *                  w = d*q + m; byte j holds q[j] (low) and q[j+16] (high),
 *                  the nibble order of sluice Q4 (see src/quant.h)
 *
 * What it is not: a general GGUF library or a quantizer (no re-encoding,
 * ever), nor a reader (tests/test_gguf.c carries an independent one).
 *
 * Invariants: the output is a pure function of the input file and the
 * tokenizer; it is written to OUT.tmp and renamed, so a failure leaves no
 * partial file. Every tensor offset is a multiple of GGUF_ALIGN.
 */
#ifndef SL_GGUF_WRITE_H
#define SL_GGUF_WRITE_H

#include <stdint.h>

#define GGUF_VERSION 3u
#define GGUF_ALIGN 32u

/* ggml_type values used here (ggml.h). */
enum gguf_ggml_type {
    GGUF_GGML_F32 = 0,
    GGUF_GGML_F16 = 1,
    GGUF_GGML_Q4_1 = 3,
    GGUF_GGML_Q8_0 = 8,
    GGUF_GGML_BF16 = 30,
};

/* Metadata value types (gguf_type in the spec). */
enum gguf_value_type {
    GGUF_T_UINT8 = 0, GGUF_T_INT8 = 1, GGUF_T_UINT16 = 2, GGUF_T_INT16 = 3,
    GGUF_T_UINT32 = 4, GGUF_T_INT32 = 5, GGUF_T_FLOAT32 = 6, GGUF_T_BOOL = 7,
    GGUF_T_STRING = 8, GGUF_T_ARRAY = 9, GGUF_T_UINT64 = 10, GGUF_T_INT64 = 11,
    GGUF_T_FLOAT64 = 12,
};

struct gguf_export_params {
    const char *tokenizer_path; /* tokenizer.json used when the model has
                                   none embedded (borrowed; may be NULL) */
    int progress;               /* nonzero: one line per layer on stderr */
};

/* What gguf_export wrote. */
struct gguf_export_report {
    uint64_t file_bytes;
    uint32_t n_tensors;
    uint32_t n_tokens;          /* vocabulary written (= model n_vocab) */
    uint32_t n_pad_tokens;      /* ids the tokenizer lacks, written as
                                   "<|sl_pad_ID|>" (type unused) */
    double seconds;
};

/* Writes the .sluice file at in_path as a GGUF v3 qwen3moe model at
 * out_path (replacing it). The tokenizer is the model's embedded
 * tokenizer.json, else p->tokenizer_path; its vocabulary is padded with
 * dummy tokens to the model's n_vocab. Errors (message names the cause):
 * SL_ERR_IO (open/read/write), SL_ERR_FORMAT (invalid .sluice or tokenizer
 * JSON), SL_ERR_UNSUPPORTED (a model llama.cpp's qwen3moe cannot express:
 * another model_type, attention biases, dense MLP layers, norm_topk_prob
 * false, an unexpected tensor, a tokenizer that is not BPE or is larger than
 * n_vocab), SL_ERR_ARG (no tokenizer at all: pass one), SL_ERR_NOMEM.
 * report may be NULL. */
int gguf_export(const char *in_path, const char *out_path,
                const struct gguf_export_params *p,
                struct gguf_export_report *report);

/* Regroups one row of cols elements from sluice dtype layout into the GGUF
 * layout (dst must hold the same number of bytes, quant_row_bytes).
 * Returns the ggml type, or -1 for a dtype with no GGUF twin. Exposed for
 * tests. */
int gguf_repack_row(int sl_dtype, const void *src, void *dst, uint64_t cols);

#endif /* SL_GGUF_WRITE_H */
