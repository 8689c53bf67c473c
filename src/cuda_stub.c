/*
 * cuda_stub.c — the CUDA backend's entry points (src/cuda/cuda.h) in a
 * build without nvcc or with NO_CUDA=1: every one fails with
 * SL_ERR_UNSUPPORTED "built without CUDA", so `--device cuda` gets a clear
 * error and `--device auto` falls back to the CPU. Compiles to nothing when
 * SLUICE_CUDA is defined (the real backend is linked instead).
 */
#include "cuda/cuda.h"
#include "util.h"

#ifndef SLUICE_CUDA

#define NO_CUDA_MSG                                                                  \
    "this sluice was built without CUDA (HINT: rebuild with nvcc on the PATH and " \
    "without NO_CUDA=1, or use --device cpu)"

int cuda_probe(char *desc, size_t desc_len) {
    if (desc && desc_len) desc[0] = 0;
    return sl_seterr(SL_ERR_UNSUPPORTED, NO_CUDA_MSG);
}

int cuda_model_create(struct sl_model *m, struct cuda_model **out) {
    (void)m;
    *out = NULL;
    return sl_seterr(SL_ERR_UNSUPPORTED, NO_CUDA_MSG);
}

void cuda_model_free(struct cuda_model *cm) { (void)cm; }

const char *cuda_model_desc(const struct cuda_model *cm) {
    (void)cm;
    return "cuda (not built)";
}

void cuda_model_stats(const struct cuda_model *cm, struct sl_stats *out) {
    (void)cm;
    (void)out;
}

int cuda_ctx_create(struct sl_context *ctx, struct cuda_ctx **out) {
    (void)ctx;
    *out = NULL;
    return sl_seterr(SL_ERR_UNSUPPORTED, NO_CUDA_MSG);
}

void cuda_ctx_free(struct cuda_ctx *cc) { (void)cc; }

int cuda_measure_bandwidth(struct cuda_model *cm, double *mem_gbs, double *h2d_gbs) {
    (void)cm;
    *mem_gbs = *h2d_gbs = 0;
    return sl_seterr(SL_ERR_UNSUPPORTED, "built without CUDA");
}

int forward_batch_cuda(struct sl_context *ctx, const int32_t *tokens, int n, uint32_t pos,
                       float *logits, int all_logits) {
    (void)ctx, (void)tokens, (void)n, (void)pos, (void)logits, (void)all_logits;
    return sl_seterr(SL_ERR_UNSUPPORTED, NO_CUDA_MSG);
}

#else
typedef int cuda_stub_unused; /* ISO C: a translation unit is not empty */
#endif
