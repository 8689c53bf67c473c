/*
 * cuda.h — the CUDA backend as the rest of the library sees it (plain C).
 * Implemented by the .cu files of src/cuda when the build has nvcc (SLUICE_CUDA), and
 * by src/cuda_stub.c otherwise, where every entry point fails with
 * SL_ERR_UNSUPPORTED "built without CUDA".
 *
 * What it is: device weights (the dense region uploaded once at model
 * open), the GPU expert cache (src/cuda/expert_cache_cuda.cu: a hard byte
 * budget of record-sized slots in device memory, LRU, filled from the host
 * expert store through pinned staging on a copy stream), per-context device
 * KV cache and activations, and forward_batch_cuda, the qwen3_moe forward
 * pass with the stages of src/forward.c. Design: docs/cuda.md.
 * What it is not: a second model loader — it binds nothing by name, it
 * mirrors struct sl_model's host pointers into device memory.
 *
 * Invariants: outputs do not depend on the GPU cache size (every expert is
 * computed by the same kernels from the same bytes, and the weighted sum
 * runs in a fixed order); a failed CUDA call returns a status with the call
 * and CUDA's message, never wrong logits.
 */
#ifndef SL_CUDA_H
#define SL_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct sl_model;
struct sl_context;
struct sl_stats;
struct cuda_model;
struct cuda_ctx;

/* Whether a usable CUDA device is there: SL_OK and a description ("NVIDIA
 * H100 80GB HBM3 (sm_90, 79.1 GiB)") in desc, or SL_ERR_UNSUPPORTED with the
 * reason (no CUDA build, no device, driver error) set as the message. */
int cuda_probe(char *desc, size_t desc_len);

/* Uploads m's dense weights, creates the GPU expert cache of
 * m->params.gpu_cache_bytes and, when every expert fits, uploads all of
 * them. Errors: SL_ERR_UNSUPPORTED (no device, a model feature the backend
 * lacks: the message names it), SL_ERR_ARG (a budget larger than the
 * device's free memory or smaller than one expert), SL_ERR_NOMEM (device or
 * pinned memory), SL_ERR_IO (a failed expert read or CUDA call). On success
 * *out is owned by the model (cuda_model_free at close). */
int cuda_model_create(struct sl_model *m, struct cuda_model **out);
void cuda_model_free(struct cuda_model *cm); /* NULL is a no-op */
/* One line for sl_model_backend_desc. Borrowed, model lifetime. */
const char *cuda_model_desc(const struct cuda_model *cm);
/* Adds the GPU cache counters into the gpu_* fields of *out. */
void cuda_model_stats(const struct cuda_model *cm, struct sl_stats *out);

/* Measures the device's memory bandwidth (a device-to-device copy: bytes
 * read + written per second) and the pinned host-to-device bandwidth, best
 * of 5 copies of up to 256 MiB each, in GB/s. SL_ERR_NOMEM when too little
 * device memory is free for the probe. */
int cuda_measure_bandwidth(struct cuda_model *cm, double *mem_gbs, double *h2d_gbs);

/* Device KV cache (float32, like the CPU's) and activations for ctx's
 * n_ctx and n_batch. SL_ERR_NOMEM names the sizes. Owned by the context. */
int cuda_ctx_create(struct sl_context *ctx, struct cuda_ctx **out);
void cuda_ctx_free(struct cuda_ctx *cc); /* NULL is a no-op */

/* forward_batch (context.h) on the GPU: same arguments, same contract;
 * logits (host memory) receive the last token's or every token's row. */
int forward_batch_cuda(struct sl_context *ctx, const int32_t *tokens, int n,
                       uint32_t pos, float *logits, int all_logits);

#ifdef __cplusplus
}
#endif
#endif /* SL_CUDA_H */
