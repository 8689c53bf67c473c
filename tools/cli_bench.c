/*
 * cli_bench.c — `sluice bench`: prompt and decode speed of a model on a
 * fixed, seeded token trace (so that two builds route identically), with the
 * bytes each token moves and how close that is to the machine's measured
 * memory bandwidth. A benchmark, not a test: it asserts nothing.
 *
 * Output: a device line and a model line, then one line per repetition and
 * a summary on stderr (prompt and decode tok/s mean ± sd, ms per token by
 * stage, active bytes per token, achieved GB/s against the measured RAM
 * bandwidth, expert cache hit rate, disk bytes and GB/s per token, logits
 * hash); with --json one JSON object on stdout (the schema bench/report.py
 * reads: docs/benchmarks.md). `--disk FILE` measures the disk tier's limit
 * (O_DIRECT, tools/cli_bench_disk.c), alone or next to a model run.
 *
 * The trace: token i is splitmix64(seed)_i mod n_vocab; --trace-out writes
 * it as a JSON array so that peers (bench/peers/) feed the same ids.
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

#include <cJSON.h>

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
    fprintf(stderr, "usage: sluice bench -m MODEL [--prompt N] [--gen N] [--reps R] [--warmup W]\n"
                    "                    [--seed S] [-t THREADS] [--scenario NAME] [--trace-out F]\n"
                    "                    [--disk FILE [--disk-qd N] [--disk-block BYTES]] [--json]\n"
                    "                    [--ram-cache SIZE] [--io direct|buffered|mmap] [...store flags]\n"
                    "       sluice bench --disk FILE [--disk-qd N] [--disk-block BYTES] [--json]\n");
    return 2;
}

/* Per-repetition figures. */
struct rep {
    double pp, tg;              /* tok/s */
    double ebt;                 /* expert record bytes per decoded token */
    double stage[5];            /* decode ms/token: attention, router, experts,
                                   io wait, other */
    double hits, uses;          /* expert cache, decode phase */
    double disk_bpt;            /* bytes read from the file per decoded token */
    double h2d_bpt;             /* CUDA: expert bytes uploaded per decoded token */
    /* CUDA streaming decode (sl_stats gpu_*; zero when every expert is
     * resident): per-layer GPU time; per token: upload wait, host round
     * trips, copy-engine busy time, and the bytes a token needed uploaded
     * (demand uploads + lookahead uploads that were used) */
    double layer_ms, wait_ms, rt_ms, busy_ms, need_bpt;
    double gpu_hit;             /* GPU cache hits / uses, decode phase */
};

static const char *const stage_names[5] = {"attention", "router", "experts", "io_wait", "other"};

static void write_trace(const char *path, const int32_t *trace, size_t n) {
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "sluice bench: --trace-out %s: %s\n", path, strerror(errno));
        return;
    }
    fputc('[', f);
    for (size_t i = 0; i < n; i++) fprintf(f, "%s%d", i ? "," : "", trace[i]);
    fputs("]\n", f);
    fclose(f);
}

int cli_bench(int argc, char **argv) {
    const char *path = NULL, *disk = NULL, *scenario = "", *trace_out = NULL;
    long n_prompt = 128, n_gen = 128, reps = 3, n_threads = 0, seed = 1234, warmup = 1;
    long disk_qd = 8, disk_block = 4 << 20;
    int json = 0;
    struct sl_model_params mp = sl_model_default_params();
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        long *dst = NULL;
        const char **sdst = NULL;
        if (!strcmp(s, "--json")) {
            json = 1;
            continue;
        }
        int sf = cli_store_flag("sluice bench", argc, argv, &i, &mp);
        if (sf < 0) return 2;
        if (sf > 0) continue;
        if (!strcmp(s, "-m")) sdst = &path;
        else if (!strcmp(s, "--disk")) sdst = &disk;
        else if (!strcmp(s, "--scenario")) sdst = &scenario;
        else if (!strcmp(s, "--trace-out")) sdst = &trace_out;
        else if (!strcmp(s, "--prompt")) dst = &n_prompt;
        else if (!strcmp(s, "--gen")) dst = &n_gen;
        else if (!strcmp(s, "--reps")) dst = &reps;
        else if (!strcmp(s, "--warmup")) dst = &warmup;
        else if (!strcmp(s, "--seed")) dst = &seed;
        else if (!strcmp(s, "--disk-qd")) dst = &disk_qd;
        else if (!strcmp(s, "--disk-block")) dst = &disk_block;
        else if (!strcmp(s, "-t") || !strcmp(s, "--threads")) dst = &n_threads;
        else return bench_usage("unknown option ", s);
        if (++i >= argc) return bench_usage("missing value for ", s);
        if (sdst) {
            *sdst = argv[i];
            continue;
        }
        char *end;
        errno = 0;
        *dst = strtol(argv[i], &end, 10);
        if (errno || *end || end == argv[i] || *dst < 0 || *dst > (1L << 30))
            return bench_usage("bad number: ", argv[i]);
    }
    if (!path && !disk) return bench_usage("missing -m MODEL", NULL);
    if (reps < 1 || reps > 100) return bench_usage("--reps must be 1..100", NULL);
    if (warmup > 100) return bench_usage("--warmup must be 0..100", NULL);
    if (n_prompt < 1) return bench_usage("--prompt must be >= 1", NULL);
    if (disk_qd < 1 || disk_qd > 256) return bench_usage("--disk-qd must be 1..256", NULL);
    if (disk_block < 4096 || disk_block % 4096)
        return bench_usage("--disk-block must be a multiple of 4096", NULL);

    double disk_gbs = 0;
    if (disk) {
        char err[512];
        disk_gbs = bench_disk_read_gbs(disk, (int)disk_qd, (uint64_t)disk_block, 3.0, err,
                                       sizeof err);
        if (disk_gbs < 0) {
            fprintf(stderr, "sluice bench: %s\n", err);
            return 1;
        }
        fprintf(stderr, "disk: %s, O_DIRECT random %ld KiB reads, %ld in flight: %.2f GB/s\n",
                disk, disk_block >> 10, disk_qd, disk_gbs);
        if (!path) {
            if (json)
                printf("{\"scenario\":\"%s\",\"engine\":\"disk\",\"disk_file\":\"%s\","
                       "\"disk_qd\":%ld,\"disk_block\":%ld,\"disk_read_gbs\":%.3f}\n",
                       *scenario ? scenario : "disk", disk, disk_qd, disk_block, disk_gbs);
            return 0;
        }
    }

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
    /* on a GPU the resident weights' tier is device memory, uploads the
     * host-to-device link's */
    double dev_bw = 0, h2d_bw = 0;
    if (sl_model_measure_device_bandwidth(m, &dev_bw, &h2d_bw) != SL_OK) dev_bw = h2d_bw = 0;
    fprintf(stderr, "device: %s, %ld cpus, %s, %d threads, RAM read %.1f GB/s (measured)", cpu,
            sysconf(_SC_NPROCESSORS_ONLN), sl_model_backend_desc(m), threads, bw);
    if (dev_bw > 0)
        fprintf(stderr, ", GPU memory %.0f GB/s, host-to-device %.1f GB/s (measured)", dev_bw,
                h2d_bw);
    fputc('\n', stderr);
    const char *tier = dev_bw > 0 ? "GPU memory" : "RAM";
    fprintf(stderr, "model: %s | %s | dense %.1f MiB, experts %.1f MiB\n", path,
            sl_model_desc(m), (double)sl_model_dense_bytes(m) / (1 << 20),
            (double)sl_model_expert_bytes(m) / (1 << 20));
    fprintf(stderr, "%s\n", sl_model_expert_cache_desc(m));

    /* The trace: seeded random ids, the same for every build and rep. */
    int32_t n_vocab = sl_model_n_vocab(m);
    size_t n_trace = (size_t)(n_prompt + n_gen);
    int32_t *trace = malloc(n_trace * sizeof *trace);
    struct rep *rp = calloc((size_t)(reps + warmup), sizeof *rp);
    int rc = 1;
    if (!trace || !rp) {
        fprintf(stderr, "sluice bench: out of memory\n");
        goto done;
    }
    uint64_t x = (uint64_t)seed;
    for (size_t i = 0; i < n_trace; i++) trace[i] = (int32_t)(splitmix(&x) % (uint64_t)n_vocab);
    if (trace_out) write_trace(trace_out, trace, n_trace);

    uint64_t hash = 0;
    for (long r = 0; r < reps + warmup; r++) {
        struct rep *R = &rp[r];
        sl_context_reset(ctx);
        struct sl_stats s1, s2;
        double t0 = now();
        if (sl_eval(ctx, trace, (size_t)n_prompt, NULL) != SL_OK) goto eval_fail;
        double t1 = now();
        sl_context_stats(ctx, &s1);
        for (long i = 0; i < n_gen; i++)
            if (sl_eval(ctx, &trace[n_prompt + i], 1, NULL) != SL_OK) goto eval_fail;
        double t2 = now();
        sl_context_stats(ctx, &s2);
        R->pp = (double)n_prompt / (t1 - t0);
        R->tg = n_gen ? (double)n_gen / (t2 - t1) : 0;
        double g = n_gen ? (double)n_gen : 1;
        R->ebt = (double)(s2.expert_bytes_read - s1.expert_bytes_read) / g;
        R->stage[0] = 1e3 * (s2.t_attention - s1.t_attention) / g;
        R->stage[1] = 1e3 * (s2.t_router - s1.t_router) / g;
        R->stage[2] = 1e3 * (s2.t_experts - s1.t_experts) / g;
        R->stage[3] = 1e3 * (s2.t_io_wait - s1.t_io_wait) / g;
        R->stage[4] = 1e3 * (t2 - t1) / g - R->stage[0] - R->stage[1] - R->stage[2] - R->stage[3];
        R->hits = (double)(s2.cache_hits - s1.cache_hits);
        R->uses = R->hits + (double)(s2.cache_misses - s1.cache_misses) +
                  (double)(s2.prefetch_hits - s1.prefetch_hits);
        R->disk_bpt = (double)(s2.cache_bytes_read - s1.cache_bytes_read) / g;
        R->h2d_bpt = (double)(s2.gpu_h2d_bytes - s1.gpu_h2d_bytes) / g;
        {
            uint64_t li = s2.gpu_layer_intervals - s1.gpu_layer_intervals;
            double n_up = (double)(s2.gpu_uploads - s1.gpu_uploads);
            double n_pf = (double)(s2.gpu_prefetch_uploads - s1.gpu_prefetch_uploads);
            double n_use = (double)(s2.gpu_prefetch_useful - s1.gpu_prefetch_useful);
            double per_up = n_up + n_pf > 0 ? R->h2d_bpt * g / (n_up + n_pf) : 0;
            R->layer_ms = li ? 1e3 * (s2.gpu_layer_seconds - s1.gpu_layer_seconds) / (double)li : 0;
            R->wait_ms = 1e3 * (s2.gpu_upload_wait_seconds - s1.gpu_upload_wait_seconds) / g;
            R->rt_ms = 1e3 * (s2.gpu_roundtrip_seconds - s1.gpu_roundtrip_seconds) / g;
            R->busy_ms = 1e3 * (s2.gpu_h2d_seconds - s1.gpu_h2d_seconds) / g;
            R->need_bpt = (n_up + n_use) * per_up / g;
            double gh = (double)(s2.gpu_hits - s1.gpu_hits);
            double gu = gh + n_up + (double)(s2.gpu_cpu_experts - s1.gpu_cpu_experts);
            R->gpu_hit = gu > 0 ? gh / gu : 0;
        }
        const float *lg = sl_logits(ctx);
        uint64_t h = 0xcbf29ce484222325ull;
        const unsigned char *b = (const unsigned char *)lg;
        for (size_t i = 0; i < (size_t)n_vocab * sizeof(float); i++) h = (h ^ b[i]) * 0x100000001b3ull;
        hash = h;
        fprintf(stderr, "%s %ld: prompt %.2f tok/s, decode %.2f tok/s, logits hash %016" PRIx64 "\n",
                r < warmup ? "warm-up" : "rep", r < warmup ? r + 1 : r - warmup + 1, R->pp, R->tg, h);
    }
    /* statistics over the measured repetitions only */
    double v[100], ppm, pps, tgm, tgs, ebm, ebs, st[5], sd_unused, hits = 0, uses = 0, dbm, dbs;
    double hbm, hbs, lym, lys, wtm, rtm, bym, ndm, ghm;
    struct rep *M = rp + warmup;
#define MEAN_SD(field, mean, sd)                                  \
    do {                                                          \
        for (long r_ = 0; r_ < reps; r_++) v[r_] = M[r_].field;   \
        mean_sd(v, (int)reps, &(mean), &(sd));                    \
    } while (0)
    MEAN_SD(pp, ppm, pps);
    MEAN_SD(tg, tgm, tgs);
    MEAN_SD(ebt, ebm, ebs);
    MEAN_SD(disk_bpt, dbm, dbs);
    MEAN_SD(h2d_bpt, hbm, hbs);
    MEAN_SD(layer_ms, lym, lys);
    MEAN_SD(wait_ms, wtm, sd_unused);
    MEAN_SD(rt_ms, rtm, sd_unused);
    MEAN_SD(busy_ms, bym, sd_unused);
    MEAN_SD(need_bpt, ndm, sd_unused);
    MEAN_SD(gpu_hit, ghm, sd_unused);
    for (int k = 0; k < 5; k++) MEAN_SD(stage[k], st[k], sd_unused);
#undef MEAN_SD
    for (long r = 0; r < reps; r++) {
        hits += M[r].hits;
        uses += M[r].uses;
    }
    double active = (double)sl_model_active_dense_bytes(m) + ebm;
    double gbs = active * tgm / 1e9;
    double tier_bw = dev_bw > 0 ? dev_bw : bw;
    double limit = tier_bw > 0 ? tier_bw * 1e9 / active : 0;
    /* streaming on a GPU: the uploads' bytes over the link bound decode too */
    double h2d_limit = h2d_bw > 0 && hbm > 0 ? h2d_bw * 1e9 / hbm : 0;
    /* The tier that binds decode: RAM unless experts come from disk. */
    double disk_limit = disk_gbs > 0 && dbm > 0 ? disk_gbs * 1e9 / dbm : 0;
    fprintf(stderr,
            "prompt: %.2f ± %.2f tok/s (%ld tokens) | decode: %.2f ± %.2f tok/s, %.1f ms/token (%ld tokens)\n"
            "decode ms/token by stage: attention %.2f, router %.2f, experts %.2f, I/O wait %.2f, "
            "other %.2f\n"
            "active bytes/token: %.1f MiB (dense %.1f + experts %.1f) | achieved %.2f GB/s = %.0f%% "
            "of measured %s bandwidth | limit %.2f tok/s\n"
            "expert cache (decode): hit %.1f%% of %.0f uses | disk %.2f MiB/token, %.3f GB/s%s",
            ppm, pps, n_prompt, tgm, tgs, tgm > 0 ? 1000 / tgm : 0, n_gen, st[0], st[1], st[2],
            st[3], st[4], active / (1 << 20), (double)sl_model_active_dense_bytes(m) / (1 << 20),
            ebm / (1 << 20), gbs, tier_bw > 0 ? 100 * gbs / tier_bw : 0, tier, limit,
            uses > 0 ? 100 * hits / uses : 0, uses, dbm / (1 << 20), dbm * tgm / 1e9,
            disk_limit > 0 ? "" : "\n");
    if (disk_limit > 0)
        fprintf(stderr, " | disk limit %.2f tok/s (%.0f%% reached)\n", disk_limit,
                100 * tgm / disk_limit);
    if (h2d_limit > 0)
        fprintf(stderr, "GPU uploads: %.2f MiB/token | host-to-device limit %.2f tok/s (%.0f%% "
                "reached)\n", hbm / (1 << 20), h2d_limit, 100 * tgm / h2d_limit);
    /* streaming decode: the needed bytes (misses, lookahead used) bound it */
    double need_limit = h2d_bw > 0 && ndm > 0 ? h2d_bw * 1e9 / ndm : 0;
    double copy_gbs = bym > 0 ? hbm / 1e6 / bym : 0; /* bytes / copy-engine busy time */
    if (lym > 0 || hbm > 0)
        fprintf(stderr, "GPU streaming decode: layer %.3f ± %.3f ms (%d layers), upload wait "
                "%.2f ms/token, host round trips %.2f ms/token, copy engine busy %.2f ms/token "
                "at %.1f GB/s | needed %.2f MiB/token (misses + lookahead used): host-to-device "
                "bound %.2f tok/s (%.0f%% reached)\n", lym, lys, (int)sl_model_n_layers(m), wtm,
                rtm, bym, copy_gbs, ndm / (1 << 20), need_limit,
                need_limit > 0 ? 100 * tgm / need_limit : 0);
    {
        struct sl_stats fs; /* the GPU expert cache's tiers (CUDA only) */
        sl_context_stats(ctx, &fs);
        if (fs.gpu_cache_bytes) cli_print_store_stats(m, &fs, 0);
    }
    if (json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "scenario", scenario);
        cJSON_AddStringToObject(o, "engine", "sluice");
        cJSON_AddStringToObject(o, "version", SLUICE_VERSION_STRING);
        cJSON_AddStringToObject(o, "model_path", path);
        cJSON_AddStringToObject(o, "model", sl_model_desc(m));
        cJSON_AddStringToObject(o, "backend", sl_backend_desc());
        cJSON_AddStringToObject(o, "cpu", cpu);
        cJSON_AddNumberToObject(o, "n_cpus", (double)sysconf(_SC_NPROCESSORS_ONLN));
        cJSON_AddNumberToObject(o, "threads", threads);
        cJSON_AddStringToObject(o, "expert_cache", sl_model_expert_cache_desc(m));
        cJSON_AddNumberToObject(o, "ram_read_gbs", bw);
        if (dev_bw > 0) {
            cJSON_AddNumberToObject(o, "gpu_mem_gbs", dev_bw);
            cJSON_AddNumberToObject(o, "h2d_gbs", h2d_bw);
            cJSON_AddNumberToObject(o, "h2d_bytes_per_token", hbm);
            cJSON_AddNumberToObject(o, "h2d_limit_tps", h2d_limit);
            cJSON_AddNumberToObject(o, "n_layers", (double)sl_model_n_layers(m));
            cJSON_AddNumberToObject(o, "gpu_layer_ms", lym);
            cJSON_AddNumberToObject(o, "gpu_layer_ms_sd", lys);
            cJSON_AddNumberToObject(o, "gpu_upload_wait_ms_per_token", wtm);
            cJSON_AddNumberToObject(o, "gpu_roundtrip_ms_per_token", rtm);
            cJSON_AddNumberToObject(o, "h2d_busy_ms_per_token", bym);
            cJSON_AddNumberToObject(o, "h2d_copy_gbs", copy_gbs);
            cJSON_AddNumberToObject(o, "h2d_needed_bytes_per_token", ndm);
            cJSON_AddNumberToObject(o, "h2d_needed_limit_tps", need_limit);
            cJSON_AddNumberToObject(o, "gpu_hit_rate_decode", ghm);
        }
        cJSON_AddStringToObject(o, "limit_tier", tier);
        cJSON_AddNumberToObject(o, "prompt_tokens", (double)n_prompt);
        cJSON_AddNumberToObject(o, "gen_tokens", (double)n_gen);
        cJSON_AddNumberToObject(o, "reps", (double)reps);
        cJSON_AddNumberToObject(o, "warmup", (double)warmup);
        cJSON_AddNumberToObject(o, "seed", (double)seed);
        cJSON_AddNumberToObject(o, "prompt_tps", ppm);
        cJSON_AddNumberToObject(o, "prompt_tps_sd", pps);
        cJSON_AddNumberToObject(o, "decode_tps", tgm);
        cJSON_AddNumberToObject(o, "decode_tps_sd", tgs);
        cJSON *stages = cJSON_AddObjectToObject(o, "decode_ms_per_token");
        for (int k = 0; k < 5; k++) cJSON_AddNumberToObject(stages, stage_names[k], st[k]);
        cJSON_AddNumberToObject(o, "active_bytes_per_token", active);
        cJSON_AddNumberToObject(o, "dense_active_bytes", (double)sl_model_active_dense_bytes(m));
        cJSON_AddNumberToObject(o, "expert_bytes_per_token", ebm);
        cJSON_AddNumberToObject(o, "achieved_gbs", gbs);
        cJSON_AddNumberToObject(o, "limit_tps", limit);
        cJSON_AddNumberToObject(o, "cache_hit_rate", uses > 0 ? hits / uses : 0);
        struct sl_stats fin;
        sl_context_stats(ctx, &fin);
        cJSON_AddNumberToObject(o, "cache_budget_bytes", (double)fin.cache_budget_bytes);
        cJSON_AddNumberToObject(o, "expert_bytes", (double)sl_model_expert_bytes(m));
        { /* expert store, whole run (prompt + decode, all reps) */
            double u = (double)(fin.cache_hits + fin.cache_misses + fin.prefetch_hits);
            double cand = (double)(fin.cache_misses + fin.prefetch_hits);
            cJSON *cs = cJSON_AddObjectToObject(o, "expert_store_run");
            cJSON_AddNumberToObject(cs, "hit", u > 0 ? (double)fin.cache_hits / u : 0);
            cJSON_AddNumberToObject(cs, "prefetch_hit", u > 0 ? (double)fin.prefetch_hits / u : 0);
            cJSON_AddNumberToObject(cs, "miss", u > 0 ? (double)fin.cache_misses / u : 0);
            cJSON_AddNumberToObject(cs, "prefetch_accuracy",
                                    cand > 0 ? (double)fin.prefetch_hits / cand : 0);
            cJSON_AddNumberToObject(cs, "prefetch_issued", (double)fin.prefetch_issued);
            cJSON_AddNumberToObject(cs, "prefetch_precision",
                                    fin.prefetch_issued ? (double)fin.prefetch_useful /
                                                              (double)fin.prefetch_issued : 0);
            cJSON_AddNumberToObject(cs, "prefetch_wasted_bytes", (double)fin.prefetch_wasted_bytes);
            cJSON_AddNumberToObject(cs, "lookahead_accuracy",
                                    fin.lookahead_total ? (double)fin.lookahead_hits /
                                                              (double)fin.lookahead_total : 0);
            cJSON_AddNumberToObject(cs, "bytes_read", (double)fin.cache_bytes_read);
            cJSON_AddNumberToObject(cs, "read_gbs", fin.io_busy_seconds > 0
                                    ? (double)fin.cache_bytes_read / fin.io_busy_seconds / 1e9 : 0);
            cJSON_AddNumberToObject(cs, "stall_seconds", fin.io_stall_seconds);
            cJSON_AddNumberToObject(cs, "peak_bytes", (double)fin.cache_peak_bytes);
        }
        double la[3] = {0, 0, 0};
        FILE *lf = fopen("/proc/loadavg", "r");
        if (lf) {
            if (fscanf(lf, "%lf %lf %lf", &la[0], &la[1], &la[2]) != 3) la[0] = la[1] = la[2] = 0;
            fclose(lf);
        }
        cJSON_AddItemToObject(o, "loadavg", cJSON_CreateDoubleArray(la, 3));
        cJSON_AddNumberToObject(o, "disk_bytes_per_token", dbm);
        cJSON_AddNumberToObject(o, "disk_gbs", dbm * tgm / 1e9);
        if (disk) {
            cJSON_AddNumberToObject(o, "disk_read_gbs", disk_gbs);
            cJSON_AddNumberToObject(o, "disk_limit_tps", disk_limit);
        }
        if (fin.nccl_allreduces) { /* multi-GPU (docs/multi_gpu.md): whole run, this rank */
            cJSON *nc = cJSON_AddObjectToObject(o, "nccl");
            cJSON_AddNumberToObject(nc, "allreduces", (double)fin.nccl_allreduces);
            cJSON_AddNumberToObject(nc, "bytes", (double)fin.nccl_bytes);
            cJSON_AddNumberToObject(nc, "timed", (double)fin.nccl_timed);
            cJSON_AddNumberToObject(nc, "seconds_timed", fin.nccl_seconds);
            cJSON_AddNumberToObject(nc, "us_per_allreduce",
                                    fin.nccl_timed ? 1e6 * fin.nccl_seconds / (double)fin.nccl_timed
                                                   : 0);
        }
        char hs[17];
        snprintf(hs, sizeof hs, "%016" PRIx64, hash);
        cJSON_AddStringToObject(o, "logits_hash", hs);
        char *txt = cJSON_PrintUnformatted(o);
        if (txt) printf("%s\n", txt);
        free(txt);
        cJSON_Delete(o);
    }
    rc = 0;
    goto done;
eval_fail:
    fprintf(stderr, "sluice bench: %s\n", sl_errmsg());
done:
    free(trace);
    free(rp);
    sl_context_free(ctx);
    sl_model_close(m);
    return rc;
}
