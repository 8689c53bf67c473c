/*
 * bench_matvec.c — memory read bandwidth of this machine and the GB/s of
 * weight bytes that the optimized matvec reaches for each stored dtype, on
 * matrices far larger than the last-level cache.
 *
 * Usage: bench_matvec [--rows R] [--cols C] [--reps N] [--mib M]
 *   Each dtype gets enough copies of one R x C matrix (default 4096 x 8192)
 *   to occupy M MiB (default: max(1024, 2 x LLC)); one rep runs matvec over
 *   every copy in turn, so every byte comes from DRAM. Bandwidth is a sum
 *   over a 1 GiB buffer split across the same threads (best of N).
 *   Prints a device line, then one line per (dtype, threads): mean +- stddev
 *   over reps, best, % of the measured peak (the larger of the 1- and
 *   2-thread bandwidths) and % of the bandwidth with the same threads.
 *
 * Not a test: numbers depend on the machine and its load.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cpu/ops.h"
#include "cpu/pool.h"
#include "quant.h"
#include "util.h"

/* ---- memory bandwidth: a sum over a large buffer ---- */

struct bw_job {
    const uint64_t *buf;
    size_t n; /* uint64 words */
    uint64_t out[64];
};

__attribute__((target("avx2"))) static uint64_t sum_avx2(const uint64_t *p,
                                                        size_t n) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_add_epi64(a0, _mm256_load_si256((const void *)(p + i)));
        a1 = _mm256_add_epi64(a1, _mm256_load_si256((const void *)(p + i + 4)));
        a2 = _mm256_add_epi64(a2, _mm256_load_si256((const void *)(p + i + 8)));
        a3 = _mm256_add_epi64(a3, _mm256_load_si256((const void *)(p + i + 12)));
    }
    a0 = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
    uint64_t t[4];
    _mm256_storeu_si256((void *)t, a0);
    uint64_t s = t[0] + t[1] + t[2] + t[3];
    for (; i < n; i++) s += p[i];
    return s;
}

static uint64_t sum_scalar(const uint64_t *p, size_t n) {
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) s0 += p[i], s1 += p[i + 1], s2 += p[i + 2], s3 += p[i + 3];
    for (; i < n; i++) s0 += p[i];
    return s0 + s1 + s2 + s3;
}

static int have_avx2;

static void bw_work(void *arg, int ith, int nth) {
    struct bw_job *j = arg;
    size_t a = j->n * ith / nth / 8 * 8, b = j->n * (ith + 1) / nth / 8 * 8;
    if (ith == nth - 1) b = j->n;
    j->out[ith] = have_avx2 ? sum_avx2(j->buf + a, b - a) : sum_scalar(j->buf + a, b - a);
}

static double measure_bw(struct sl_pool *pool, const uint64_t *buf, size_t n,
                         int reps) {
    double best = 0;
    struct bw_job j = {.buf = buf, .n = n};
    pool_run(pool, bw_work, &j); /* warm-up */
    for (int r = 0; r < reps; r++) {
        double t0 = sl_now();
        pool_run(pool, bw_work, &j);
        double gbs = (double)n * 8 / (sl_now() - t0) / 1e9;
        if (gbs > best) best = gbs;
    }
    return best;
}

/* ---- device line ---- */

static void cpu_model(char *out, size_t n) {
    snprintf(out, n, "unknown CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (!strncmp(line, "model name", 10)) {
            char *p = strchr(line, ':');
            if (p) {
                p += 2;
                p[strcspn(p, "\n")] = 0;
                snprintf(out, n, "%s", p);
            }
            break;
        }
    }
    fclose(f);
}

static const int bench_dtypes[] = {SL_DTYPE_BF16, SL_DTYPE_Q8, SL_DTYPE_Q4,
                                   SL_DTYPE_F32};

int main(int argc, char **argv) {
    int rows = 4096, cols = 8192, reps = 7;
    long mib = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--rows") && i + 1 < argc) rows = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--cols") && i + 1 < argc) cols = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--mib") && i + 1 < argc) mib = atol(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--rows R] [--cols C] [--reps N] [--mib M]\n",
                    argv[0]);
            return 2;
        }
    }
    if (rows < 1 || cols < 32 || cols % 32 || reps < 1) {
        fprintf(stderr, "bench_matvec: need rows >= 1, cols a multiple of 32, reps >= 1\n");
        return 2;
    }
    have_avx2 = __builtin_cpu_supports("avx2");
    long llc = sysconf(_SC_LEVEL3_CACHE_SIZE);
    if (llc <= 0) llc = 64L << 20;
    if (mib <= 0) mib = 2 * llc / (1 << 20) > 1024 ? 2 * llc / (1 << 20) : 1024;
    int n_cpu = sl_n_cpus(), max_t = n_cpu < 2 ? 1 : 2;

    char model[256];
    cpu_model(model, sizeof model);
    printf("device: %s, %d CPUs, LLC %ld MiB, ISA %s, threads 1 and %d\n", model,
           n_cpu, llc >> 20, ops_isa_name(ops_isa()), max_t);
    printf("matrix: %d x %d, rotating over >= %ld MiB per dtype, %d reps\n", rows,
           cols, mib, reps);

    struct sl_pool *pools[2] = {NULL, NULL};
    if (pool_create(1, &pools[0]) || pool_create(max_t, &pools[1])) {
        fprintf(stderr, "bench_matvec: %s\n", sl_errmsg());
        return 1;
    }

    /* Bandwidth over 1 GiB. */
    size_t bw_bytes = (size_t)1 << 30;
    uint64_t *bw_buf = sl_aligned_alloc(4096, bw_bytes);
    if (!bw_buf) {
        fprintf(stderr, "bench_matvec: cannot allocate 1 GiB\n");
        return 1;
    }
    for (size_t i = 0; i < bw_bytes / 8; i++) bw_buf[i] = i;
    double bw1 = measure_bw(pools[0], bw_buf, bw_bytes / 8, 5);
    double bw2 = measure_bw(pools[1], bw_buf, bw_bytes / 8, 5);
    sl_aligned_free(bw_buf);
    printf("memory read bandwidth (sum over 1 GiB, best of 5): 1 thread %.1f GB/s, "
           "%d threads %.1f GB/s\n",
           bw1, max_t, bw2);
    double peak = bw2 > bw1 ? bw2 : bw1;

    float *wf = malloc(sizeof(float) * (size_t)rows * cols);
    float *x = malloc(sizeof(float) * cols), *y = malloc(sizeof(float) * rows);
    if (!wf || !x || !y) return 1;
    uint64_t s = 12345;
    for (size_t i = 0; i < (size_t)rows * cols; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        wf[i] = ((float)(s >> 40) / (float)(1 << 24) - 0.5f) * 0.1f;
    }
    for (int i = 0; i < cols; i++) x[i] = sinf((float)i);

    printf("%-5s %7s %8s %18s %9s %8s %9s\n", "dtype", "threads", "MiB/mat",
           "GB/s mean+-sd", "GB/s best", "% peak", "% same-t");
    for (size_t di = 0; di < sizeof bench_dtypes / sizeof *bench_dtypes; di++) {
        int dt = bench_dtypes[di];
        uint64_t rb = quant_row_bytes(dt, (uint64_t)cols);
        size_t mat = (size_t)rb * rows;
        int n_mat = (int)(((size_t)mib << 20) / mat) + 1;
        uint8_t *w = sl_aligned_alloc(4096, mat * n_mat);
        if (!w) {
            fprintf(stderr, "bench_matvec: cannot allocate %zu MiB for %s\n",
                    mat * n_mat >> 20, sl_dtype_name(dt));
            return 1;
        }
        for (int r = 0; r < rows; r++)
            quant_row_from_f32(dt, wf + (size_t)r * cols, w + rb * r, (uint64_t)cols);
        for (int m = 1; m < n_mat; m++) memcpy(w + mat * m, w, mat);
        for (int pi = 0; pi < (max_t > 1 ? 2 : 1); pi++) {
            struct sl_pool *pool = pools[pi];
            double sum = 0, sum2 = 0, best = 0;
            for (int m = 0; m < n_mat; m++) /* warm-up pass */
                ops_matvec(pool, dt, w + mat * m, x, y, rows, cols);
            for (int r = 0; r < reps; r++) {
                double t0 = sl_now();
                for (int m = 0; m < n_mat; m++)
                    if (ops_matvec(pool, dt, w + mat * m, x, y, rows, cols)) {
                        fprintf(stderr, "bench_matvec: %s\n", sl_errmsg());
                        return 1;
                    }
                double gbs = (double)mat * n_mat / (sl_now() - t0) / 1e9;
                sum += gbs;
                sum2 += gbs * gbs;
                if (gbs > best) best = gbs;
            }
            double mean = sum / reps, sd = sqrt(fmax(0, sum2 / reps - mean * mean));
            double same = pi == 0 ? bw1 : bw2;
            printf("%-5s %7d %8.1f %10.1f +- %4.1f %9.1f %7.0f%% %8.0f%%\n",
                   sl_dtype_name(dt), pool_n_threads(pool), (double)mat / (1 << 20),
                   mean, sd, best, 100 * mean / peak, 100 * mean / same);
            fflush(stdout);
        }
        sl_aligned_free(w);
    }
    free(wf);
    free(x);
    free(y);
    pool_free(pools[0]);
    pool_free(pools[1]);
    return 0;
}
