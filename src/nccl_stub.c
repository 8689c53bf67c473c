/*
 * nccl_stub.c — src/cuda/nccl.h in a build without CUDA (NO_CUDA=1 or no
 * nvcc): no device, and multi-GPU runs are unsupported. Compiles to
 * nothing when SLUICE_CUDA is defined (src/cuda/nccl_cuda.cu implements
 * them; without nccl.h it answers "built without NCCL" itself).
 */
#include "cuda/nccl.h"

#include <stdio.h>

#include "util.h"

#ifndef SLUICE_CUDA

int nccl_device_count(void) { return 0; }

int nccl_check(char *why, size_t why_len) {
    if (why && why_len) snprintf(why, why_len, "built without CUDA (NO_CUDA=1 or no nvcc)");
    return SL_ERR_UNSUPPORTED;
}

#else
typedef int nccl_stub_unused; /* ISO C: a translation unit is not empty */
#endif
