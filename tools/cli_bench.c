/*
 * cli_bench.c — `sluice bench`: prompt and decode speed of a model on a
 * fixed, seeded token trace (so that two builds route identically), with the
 * bytes each token moves and how close that is to the machine's measured
 * memory bandwidth. A benchmark, not a test: it asserts nothing.
 *
 * Output: a device line and a model line, then one line per repetition and
 * a summary on stderr; with --json one JSON object on stdout.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "sluice.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void cpu_model(char *out, size_t n) {
    snprintf(out, n, "unknown cpu");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (!strncmp(line, "model name", 10)) {
            char *c = strchr(line, ':');
            if (c) {
                c += 2;
                c[strcspn(c, "\n")] = 0;
                snprintf(out, n, "%s", c);
            }
            break;
        }
    }
    fclose(f);
}

/* ---- memory read bandwidth: each thread sums its share of a buffer ---- */

struct bw_job {
    const uint64_t *p;
    size_t n;
    uint64_t sum;
};

static void *bw_thread(void *arg) {
    struct bw_job *j = arg;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (size_t i = 0; i + 4 <= j->n; i += 4) {
        s0 += j->p[i];
        s1 += j->p[i + 1];
        s2 += j->p[i + 2];
        s3 += j->p[i + 3];
    }
    j->sum = s0 + s1 + s2 + s3;
    return NULL;
}

/* Best of 5 passes over 512 MiB with n_threads readers, in GB/s. */
static double measure_read_bw(int n_threads) {
    size_t bytes = (size_t)512 << 20, n = bytes / 8;
    uint64_t *buf = malloc(bytes);
    if (!buf) return 0;
    for (size_t i = 0; i < n; i++) buf[i] = i;
    struct bw_job jobs[64];
    pthread_t th[64];
    if (n_threads > 64) n_threads = 64;
    double best = 0;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = now();
        for (int t = 0; t < n_threads; t++) {
            jobs[t] = (struct bw_job){buf + n / (size_t)n_threads * (size_t)t,
                                      n / (size_t)n_threads, 0};
            pthread_create(&th[t], NULL, bw_thread, &jobs[t]);
        }
        uint64_t sink = 0;
        for (int t = 0; t < n_threads; t++) {
            pthread_join(th[t], NULL);
            sink += jobs[t].sum;
        }
        double gbs = (double)bytes / (now() - t0) / 1e9;
        if (gbs > best && sink != 1) best = gbs;
    }
    free(buf);
    return best;
}

static uint64_t splitmix(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void mean_sd(const double *v, int n, double *mean, double *sd) {
    double s = 0, q = 0;
    for (int i = 0; i < n; i++) s += v[i];
    *mean = s / n;
    for (int i = 0; i < n; i++) q += (v[i] - *mean) * (v[i] - *mean);
    *sd = n > 1 ? sqrt(q / (n - 1)) : 0;
}

static int bench_usage(const char *msg, const char *arg) {
    fprintf(stderr, "sluice bench: %s%s\n", msg, arg ? arg : "");
    fprintf(stderr, "usage: sluice bench -m MODEL [--prompt N] [--gen N] [--reps R] "
                    "[--seed S] [-t THREADS] [--json]\n");
    return 2;
}

int cli_bench(int argc, char **argv) {
    const char *path = NULL;
    long n_prompt = 128, n_gen = 128, reps = 3, n_threads = 0, seed = 1234;
    int json = 0;
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        long *dst = NULL;
        if (!strcmp(s, "-m")) {
            if (++i >= argc) return bench_usage("-m needs a value", NULL);
            path = argv[i];
            continue;
        }
        if (!strcmp(s, "--json")) {
            json = 1;
            continue;
        }
        if (!strcmp(s, "--prompt")) dst = &n_prompt;
        else if (!strcmp(s, "--gen")) dst = &n_gen;
        else if (!strcmp(s, "--reps")) dst = &reps;
        else if (!strcmp(s, "--seed")) dst = &seed;
        else if (!strcmp(s, "-t") || !strcmp(s, "--threads")) dst = &n_threads;
        else return bench_usage("unknown option ", s);
        if (++i >= argc) return bench_usage("missing value for ", s);
        char *end;
        errno = 0;
        *dst = strtol(argv[i], &end, 10);
        if (errno || *end || end == argv[i] || *dst < 0 || *dst > (1L << 24))
            return bench_usage("bad number: ", argv[i]);
    }
    if (!path) return bench_usage("missing -m MODEL", NULL);
    if (reps < 1 || reps > 100) return bench_usage("--reps must be 1..100", NULL);
    if (n_prompt < 1) return bench_usage("--prompt must be >= 1", NULL);

    struct sl_model_params mp = sl_model_default_params();
    mp.n_threads = (int)n_threads;
    struct sl_model *m;
    if (sl_model_open(path, &mp, &m) != SL_OK) {
        fprintf(stderr, "sluice bench: %s\n", sl_errmsg());
        return 1;
    }
    struct sl_context_params cp = sl_context_default_params();
    cp.n_ctx = (uint32_t)(n_prompt + n_gen);
    cp.n_threads = (int)n_threads;
    struct sl_context *ctx;
    if (sl_context_create(m, &cp, &ctx) != SL_OK) {
        fprintf(stderr, "sluice bench: %s\n", sl_errmsg());
        sl_model_close(m);
        return 1;
    }
    int threads = n_threads > 0 ? (int)n_threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    char cpu[256];
    cpu_model(cpu, sizeof cpu);
    double bw = measure_read_bw(threads);
    fprintf(stderr, "device: %s, %ld cpus, %s, %d threads, RAM read %.1f GB/s (measured)\n",
            cpu, sysconf(_SC_NPROCESSORS_ONLN), sl_backend_desc(), threads, bw);
    fprintf(stderr, "model: %s | %s | dense %.1f MiB, experts %.1f MiB\n", path,
            sl_model_desc(m), (double)sl_model_dense_bytes(m) / (1 << 20),
            (double)sl_model_expert_bytes(m) / (1 << 20));

    /* The trace: seeded random ids, the same for every build and rep. */
    int32_t n_vocab = sl_model_n_vocab(m);
    size_t n_trace = (size_t)(n_prompt + n_gen);
    int32_t *trace = malloc(n_trace * sizeof *trace);
    double *pp = calloc((size_t)reps, sizeof(double)), *tg = calloc((size_t)reps, sizeof(double));
    double *ebt = calloc((size_t)reps, sizeof(double));
    int rc = 1;
    if (!trace || !pp || !tg || !ebt) {
        fprintf(stderr, "sluice bench: out of memory\n");
        goto done;
    }
    uint64_t x = (uint64_t)seed;
    for (size_t i = 0; i < n_trace; i++) trace[i] = (int32_t)(splitmix(&x) % (uint64_t)n_vocab);

    uint64_t hash = 0;
    for (long r = 0; r < reps; r++) {
        sl_context_reset(ctx);
        struct sl_stats s0, s1, s2;
        sl_context_stats(ctx, &s0);
        double t0 = now();
        if (sl_eval(ctx, trace, (size_t)n_prompt, NULL) != SL_OK) goto eval_fail;
        double t1 = now();
        sl_context_stats(ctx, &s1);
        for (long i = 0; i < n_gen; i++)
            if (sl_eval(ctx, &trace[n_prompt + i], 1, NULL) != SL_OK) goto eval_fail;
        double t2 = now();
        sl_context_stats(ctx, &s2);
        pp[r] = (double)n_prompt / (t1 - t0);
        tg[r] = n_gen ? (double)n_gen / (t2 - t1) : 0;
        ebt[r] = n_gen ? (double)(s2.expert_bytes_read - s1.expert_bytes_read) / (double)n_gen : 0;
        const float *lg = sl_logits(ctx);
        uint64_t h = 0xcbf29ce484222325ull;
        const unsigned char *b = (const unsigned char *)lg;
        for (size_t i = 0; i < (size_t)n_vocab * sizeof(float); i++) h = (h ^ b[i]) * 0x100000001b3ull;
        hash = h;
        fprintf(stderr, "rep %ld: prompt %.2f tok/s, decode %.2f tok/s, logits hash %016" PRIx64 "\n",
                r + 1, pp[r], tg[r], h);
        (void)s0;
    }
    double ppm, pps, tgm, tgs, ebm, ebs;
    mean_sd(pp, (int)reps, &ppm, &pps);
    mean_sd(tg, (int)reps, &tgm, &tgs);
    mean_sd(ebt, (int)reps, &ebm, &ebs);
    double active = (double)sl_model_active_dense_bytes(m) + ebm;
    double gbs = active * tgm / 1e9;
    double limit = bw > 0 ? bw * 1e9 / active : 0;
    fprintf(stderr,
            "prompt: %.2f ± %.2f tok/s (%ld tokens) | decode: %.2f ± %.2f tok/s, %.1f ms/token (%ld tokens)\n"
            "active bytes/token: %.1f MiB (dense %.1f + experts %.1f) | achieved %.2f GB/s = %.0f%% "
            "of measured RAM bandwidth | limit %.2f tok/s\n",
            ppm, pps, n_prompt, tgm, tgs, tgm > 0 ? 1000 / tgm : 0, n_gen, active / (1 << 20),
            (double)sl_model_active_dense_bytes(m) / (1 << 20), ebm / (1 << 20), gbs,
            bw > 0 ? 100 * gbs / bw : 0, limit);
    if (json)
        printf("{\"model\":\"%s\",\"backend\":\"%s\",\"threads\":%d,\"cpu\":\"%s\","
               "\"ram_read_gbs\":%.2f,\"prompt_tokens\":%ld,\"gen_tokens\":%ld,\"reps\":%ld,"
               "\"prompt_tps\":%.3f,\"prompt_tps_sd\":%.3f,\"decode_tps\":%.3f,"
               "\"decode_tps_sd\":%.3f,\"active_bytes_per_token\":%.0f,"
               "\"expert_bytes_per_token\":%.0f,\"achieved_gbs\":%.3f,"
               "\"limit_tps\":%.3f,\"logits_hash\":\"%016" PRIx64 "\"}\n",
               sl_model_desc(m), sl_backend_desc(), threads, cpu, bw, n_prompt, n_gen, reps,
               ppm, pps, tgm, tgs, active, ebm, gbs, limit, hash);
    rc = 0;
    goto done;
eval_fail:
    fprintf(stderr, "sluice bench: %s\n", sl_errmsg());
done:
    free(trace);
    free(pp);
    free(tg);
    free(ebt);
    sl_context_free(ctx);
    sl_model_close(m);
    return rc;
}
