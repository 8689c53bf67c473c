/*
 * nccl.h — the multi-GPU probes plain C code (tests, tools) may call
 * (docs/multi_gpu.md). Implemented by src/cuda/nccl_cuda.cu in a CUDA build
 * and by src/nccl_stub.c otherwise. The expert-parallel forward pass itself
 * is reached through sl_model_params (nccl_rank, nccl_world, nccl_id_path).
 */
#ifndef SL_CUDA_NCCL_H
#define SL_CUDA_NCCL_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Number of CUDA devices this process sees (0 without a CUDA build, a
 * driver or a device). Initialises CUDA: call it in a child process before
 * forking ranks. */
int nccl_device_count(void);
/* Whether the expert-parallel path can run here: SL_OK, or
 * SL_ERR_UNSUPPORTED with the reason in why (built without CUDA or NCCL,
 * libnccl.so.2 not loadable). Does not initialise CUDA. */
int nccl_check(char *why, size_t why_len);

#ifdef __cplusplus
}
#endif
#endif /* SL_CUDA_NCCL_H */
