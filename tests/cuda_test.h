/*
 * cuda_test.h — what every CUDA test program (tests/test_cuda*.c) shares:
 * whether a usable GPU is there, and the skip that says why not. Included
 * inside the programs' SLUICE_CUDA sections, after cuda/cuda.h.
 *
 * Not here: fixtures and golden checks (tests/golden.h), kernels' test
 * twins (the src/cuda test headers).
 */
#ifndef SL_TESTS_CUDA_TEST_H
#define SL_TESTS_CUDA_TEST_H

#include <stdio.h>

#include "cuda/cuda.h"
#include "util.h"

/* 1 when cuda_probe finds a device (printing it once), else 0 with the
 * reason on stderr each time it is asked. */
static inline int have_gpu(void) {
    static int cached = -1;
    static char why[512];
    if (cached < 0) {
        char d[256];
        cached = cuda_probe(d, sizeof d) == SL_OK;
        if (cached) printf("  device: %s\n", d);
        else snprintf(why, sizeof why, "%s", sl_errmsg());
    }
    if (!cached) fprintf(stderr, "  (no GPU: %s)\n", why);
    return cached;
}

#define NEED_GPU()                                                    \
    do {                                                              \
        if (!have_gpu()) TEST_SKIP("no usable CUDA device");          \
    } while (0)

#endif /* SL_TESTS_CUDA_TEST_H */
