/*
 * util.c — error reporting, logging, the allocation seam, half-float
 * conversion, hashing and file helpers (see util.h).
 *
 * The only per-process state here is the log callback (set once at start-up)
 * and the allocation-failure countdown used by tests; the error message is
 * per thread.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "util.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>

static _Thread_local char err_msg[1024];

const char *sl_errmsg(void) { return err_msg; }

const char *sl_status_str(int status) {
    switch (status) {
    case SL_OK: return "ok";
    case SL_ERR_ARG: return "invalid argument";
    case SL_ERR_IO: return "I/O error";
    case SL_ERR_FORMAT: return "format error";
    case SL_ERR_UNSUPPORTED: return "unsupported";
    case SL_ERR_NOMEM: return "out of memory";
    case SL_ERR_CONFIG: return "config error";
    case SL_ERR_RANGE: return "out of range";
    case SL_ERR_INTERNAL: return "internal error";
    }
    return "unknown status";
}

int sl_seterr(int status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_msg, sizeof err_msg, fmt, ap);
    va_end(ap);
    return status;
}

int sl_preerr(int status, const char *fmt, ...) {
    char prefix[512], old[sizeof err_msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, err_msg, sizeof old);
    size_t a = strlen(prefix), b = strlen(old);
    if (a > sizeof err_msg - 1) a = sizeof err_msg - 1;
    if (b > sizeof err_msg - 1 - a) b = sizeof err_msg - 1 - a;
    memcpy(err_msg, prefix, a);
    memcpy(err_msg + a, old, b);
    err_msg[a + b] = 0;
    return status;
}

void sl_clearerr(void) { err_msg[0] = 0; }

static void log_default(int level, const char *msg, void *user) {
    (void)user;
    static const char *names[] = {"error", "warning", "info", "debug"};
    fprintf(stderr, "sluice: %s: %s\n", names[level & 3], msg);
}

static sl_log_fn log_fn = log_default;
static void *log_user;
static int log_max = SL_LOG_WARN;

void sl_set_log(sl_log_fn fn, void *user, int max_level) {
    log_fn = fn;
    log_user = user;
    log_max = max_level;
}

void sl_log(int level, const char *fmt, ...) {
    if (!log_fn || level > log_max) return;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    log_fn(level, buf, log_user);
}

void sl_assert_fail(const char *what, const char *file, int line) {
    fprintf(stderr, "sluice: internal assertion failed: %s (%s:%d)\n", what,
            file, line);
    abort();
}

/* ---- allocation ---- */

static long alloc_countdown; /* tests only: > 0 counts down to a failure */

void sl_alloc_fail_after(long n) {
    __atomic_store_n(&alloc_countdown, n, __ATOMIC_SEQ_CST);
}

static int alloc_should_fail(void) {
    if (__atomic_load_n(&alloc_countdown, __ATOMIC_RELAXED) <= 0) return 0;
    return __atomic_sub_fetch(&alloc_countdown, 1, __ATOMIC_SEQ_CST) == 0;
}

void *sl_malloc(size_t n) {
    if (alloc_should_fail()) return NULL;
    return malloc(n ? n : 1);
}

void *sl_calloc(size_t count, size_t size) {
    if (alloc_should_fail()) return NULL;
    return calloc(count ? count : 1, size ? size : 1);
}

void *sl_realloc(void *p, size_t n) {
    if (alloc_should_fail()) return NULL;
    return realloc(p, n ? n : 1);
}

void sl_free(void *p) { free(p); }

void *sl_aligned_alloc(size_t align, size_t n) {
    if (alloc_should_fail()) return NULL;
    void *p = NULL;
    if (posix_memalign(&p, align, n ? n : 1) != 0) return NULL;
    return p;
}

void sl_aligned_free(void *p) { free(p); }

char *sl_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = sl_malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

/* ---- IEEE half ---- */

float sl_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: renormalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) {
                man <<= 1;
                exp--;
            }
            man &= 0x3ff;
            u = sign | (exp << 23) | (man << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t sl_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000;
    int32_t exp = (int32_t)((u >> 23) & 0xff);
    uint32_t man = u & 0x7fffff;
    if (exp == 255) return (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0));
    exp = exp - 127 + 15;
    if (exp >= 31) return (uint16_t)(sign | 0x7c00);
    if (exp <= 0) {
        if (exp < -10) return (uint16_t)sign;
        man |= 0x800000;
        uint32_t shift = (uint32_t)(14 - exp);
        uint32_t half = man >> shift;
        uint32_t rem = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t h = sign | ((uint32_t)exp << 10) | (man >> 13);
    uint32_t rem = man & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++; /* may carry into exp: correct */
    return (uint16_t)h;
}

/* ---- hashing, files, time ---- */

uint64_t sl_fnv1a64(const void *data, size_t n, uint64_t seed) {
    const uint8_t *p = data;
    uint64_t h = seed;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

int sl_read_file(const char *path, char **data, size_t *len) {
    *data = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return sl_seterr(SL_ERR_IO, "open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return sl_seterr(SL_ERR_IO, "%s: not a regular file", path);
    }
    size_t n = (size_t)st.st_size;
    char *buf = sl_malloc(n + 1);
    if (!buf) {
        close(fd);
        return sl_seterr(SL_ERR_NOMEM, "%s: cannot allocate %zu bytes", path, n);
    }
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            int e = errno;
            sl_free(buf);
            close(fd);
            return sl_seterr(SL_ERR_IO, "read %s: %s", path,
                             r == 0 ? "unexpected end of file" : strerror(e));
        }
        got += (size_t)r;
    }
    close(fd);
    buf[n] = 0;
    *data = buf;
    *len = n;
    return SL_OK;
}

char *sl_path_join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = sl_malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    size_t k = a;
    if (a && dir[a - 1] != '/') p[k++] = '/';
    memcpy(p + k, name, b + 1);
    return p;
}

double sl_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int sl_n_cpus(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

const char *sl_dtype_name(int dtype) {
    static const char *names[] = {"f32", "f16", "bf16", "q8", "q4"};
    return dtype >= 0 && dtype < SL_DTYPE_COUNT ? names[dtype] : "?";
}
