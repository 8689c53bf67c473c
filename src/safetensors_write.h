/*
 * safetensors_write.h — export of a .sluice model as a HuggingFace
 * checkpoint directory (`sluice export-hf`): config.json, sharded
 * safetensors with an index, generation_config.json and, when the model
 * embeds them, tokenizer.json / tokenizer_config.json. The benchmark peer
 * bench/peers/transformers_peer.py then runs the same weights as sluice.
 *
 * What it is: a streaming writer (one row of one tensor in memory at a
 * time) of the safetensors format (8-byte little-endian header length, a
 * JSON header {name: {dtype, shape, data_offsets}} padded with spaces to a
 * multiple of 8, then the tensors back to back) and of the HF tensor names
 * of qwen3_moe, the names `sluice convert` reads (src/convert.c).
 *
 * What it is not: a quantizer or a general safetensors library. Weights are
 * dequantized exactly (quant_row_to_f32, src/quant.h) and then stored as
 * bf16 (round to nearest even) or f32; tensors stored f32 or f16 in the
 * .sluice file (norms, a converted model's router) are written f32 in both
 * modes, so only q8/q4 values lose bits, and only in bf16 mode. A bf16
 * tensor is written bit-identically.
 *
 * Invariants: the output depends only on the input file and the params;
 * config.json is written last, so a directory without it is an incomplete
 * export; on any failure every file this call created is removed, and the
 * directory too when this call created it.
 */
#ifndef SL_SAFETENSORS_WRITE_H
#define SL_SAFETENSORS_WRITE_H

#include <stdint.h>

#define HF_EXPORT_SHARD_BYTES (4ull << 30) /* default shard size */

struct hf_export_params {
    int f32;              /* nonzero: matrices in f32 (exact); zero: bf16 */
    uint64_t shard_bytes; /* 0: HF_EXPORT_SHARD_BYTES; a tensor larger than
                             this gets a shard of its own */
    int fused_experts;    /* nonzero: transformers 5's fused layout
                             mlp.experts.gate_up_proj [E, 2*ffn, hidden] and
                             mlp.experts.down_proj [E, hidden, ffn]; zero:
                             one tensor per expert and matrix (loads in
                             transformers 4 and 5) */
    int progress;         /* nonzero: one line per shard on stderr */
};

struct hf_export_report {
    uint64_t data_bytes;  /* sum of the tensors' bytes (index total_size) */
    uint32_t n_tensors;
    uint32_t n_shards;
    int tokenizer;        /* tokenizer.json written */
    double seconds;
};

/* Writes the .sluice model at in_path as an HF checkpoint in out_dir, which
 * must not exist (its parent must) or be an empty directory. Supported:
 * model_type qwen3_moe (every synthetic and converted qwen3_moe model).
 * Errors (message names the cause): SL_ERR_ARG (bad params, out_dir not
 * empty or not a directory), SL_ERR_IO (open/read/write, disk full; the
 * files written so far are removed), SL_ERR_FORMAT (invalid .sluice),
 * SL_ERR_UNSUPPORTED (another model_type, a tensor with no HF name),
 * SL_ERR_NOMEM. report may be NULL. */
int hf_export(const char *in_path, const char *out_dir, const struct hf_export_params *p,
              struct hf_export_report *report);

#endif /* SL_SAFETENSORS_WRITE_H */
