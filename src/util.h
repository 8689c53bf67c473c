/*
 * util.h — small helpers shared by every module: error reporting, the
 * allocation seam, float16/bfloat16 conversion, hashing, file reading, time.
 *
 * Not a grab bag: anything here is used by at least two modules. Internal
 * functions return an int status (enum sl_status); on failure they call
 * sl_seterr() once, at the place that knows the context, and callers pass the
 * status up unchanged (they may prefix context with sl_preerr()).
 */
#ifndef SL_UTIL_H
#define SL_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "sluice.h"

#if defined(__GNUC__)
#define SL_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define SL_PRINTF(a, b)
#endif

/* Records status and a formatted message for sl_errmsg(); returns status so
 * that `return sl_seterr(SL_ERR_IO, "open %s: %s", p, strerror(errno));`
 * reads naturally. */
int sl_seterr(int status, const char *fmt, ...) SL_PRINTF(2, 3);
/* Prefixes the current message with formatted context ("model.sluice: ").
 * Returns status. */
int sl_preerr(int status, const char *fmt, ...) SL_PRINTF(2, 3);
void sl_clearerr(void);

/* Logging through the callback installed with sl_set_log. */
void sl_log(int level, const char *fmt, ...) SL_PRINTF(2, 3);
#define SL_LOG_ERROR 0
#define SL_LOG_WARN 1
#define SL_LOG_INFO 2
#define SL_LOG_DEBUG 3

/* Internal invariant that is always checked: a failure is a bug in sluice,
 * printed with file:line before aborting. Never use it for bad input. */
#define SL_ASSERT(c)                                                         \
    do {                                                                     \
        if (!(c)) sl_assert_fail(#c, __FILE__, __LINE__);                    \
    } while (0)
void sl_assert_fail(const char *what, const char *file, int line);

/* The allocation seam: every allocation of the library goes through these so
 * that tests can inject failures. sl_free(NULL) is a no-op. sl_aligned_alloc
 * returns memory aligned to `align` (a power of two >= sizeof(void*)), to be
 * released with sl_aligned_free. */
void *sl_malloc(size_t n);
void *sl_calloc(size_t count, size_t size);
void *sl_realloc(void *p, size_t n);
void sl_free(void *p);
void *sl_aligned_alloc(size_t align, size_t n);
void sl_aligned_free(void *p);
char *sl_strdup(const char *s);
/* Test hook: fail the n-th allocation from now (n >= 1); 0 disables. */
void sl_alloc_fail_after(long n);

/* Checked arithmetic for sizes read from files: returns 0 on overflow. */
static inline int sl_mul_ok(uint64_t a, uint64_t b, uint64_t *out) {
    return !__builtin_mul_overflow(a, b, out);
}
static inline int sl_add_ok(uint64_t a, uint64_t b, uint64_t *out) {
    return !__builtin_add_overflow(a, b, out);
}
static inline uint64_t sl_align_up(uint64_t x, uint64_t a) {
    return (x + a - 1) / a * a;
}

/* bfloat16 and IEEE half conversions. f32 -> 16-bit rounds to nearest even;
 * NaN stays NaN. */
static inline float sl_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline uint16_t sl_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
float sl_f16_to_f32(uint16_t h);
uint16_t sl_f32_to_f16(float f);

/* 64-bit FNV-1a, chainable through seed (start with SL_FNV_SEED). */
#define SL_FNV_SEED 0xcbf29ce484222325ull
uint64_t sl_fnv1a64(const void *data, size_t n, uint64_t seed);

/* Reads a whole file into a malloc'ed, NUL-terminated buffer. */
int sl_read_file(const char *path, char **data, size_t *len);
/* Joins dir and name into a malloc'ed path. */
char *sl_path_join(const char *dir, const char *name);

/* Monotonic seconds. */
double sl_now(void);

/* Number of online CPUs (>= 1). */
int sl_n_cpus(void);

#endif /* SL_UTIL_H */
