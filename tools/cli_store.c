/*
 * cli_store.c — the expert-store flags shared by `sluice run`, `logits` and
 * `bench` (--ram-cache, --io, --cache-policy, --prefetch, --expert-profile,
 * --mlock, --io-threads, --no-uring, --device, --gpu-cache, --gpu-miss) and the statistics that --timing
 * prints (docs/streaming.md explains every number).
 *
 * What it is not: option parsing for anything else; each command keeps its
 * own loop and asks cli_store_flag about the flags it does not know.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "sluice.h"

static int bad(const char *cmd, const char *flag, const char *val, const char *want) {
    fprintf(stderr, "%s: option %s: '%s' is not %s\n", cmd, flag, val ? val : "", want);
    return -1;
}

int cli_store_flag(const char *cmd, int argc, char **argv, int *i,
                   struct sl_model_params *mp) {
    const char *s = argv[*i];
    static const char *takes_value[] = {"--ram-cache", "--io", "--cache-policy", "--prefetch",
                                        "--expert-profile", "--io-threads", "--device",
                                        "--gpu-cache", "--gpu-miss", "--nccl-rank",
                                        "--nccl-world", "--nccl-id", "--nccl-timeout"};
    int needs = 0;
    for (size_t k = 0; k < sizeof takes_value / sizeof *takes_value; k++)
        needs |= !strcmp(s, takes_value[k]);
    if (!strcmp(s, "--mlock")) {
        mp->use_mlock = 1;
        return 1;
    }
    if (!strcmp(s, "--no-uring")) {
        mp->no_uring = 1;
        return 1;
    }
    if (!needs) return 0;
    if (*i + 1 >= argc) {
        fprintf(stderr, "%s: option %s needs a value\n", cmd, s);
        return -1;
    }
    const char *v = argv[++*i];
    if (!strcmp(s, "--ram-cache")) {
        if (sl_parse_size(v, &mp->ram_cache_bytes) != SL_OK)
            return bad(cmd, s, v, "a size (512M, 4G, 1.5G, all)");
    } else if (!strcmp(s, "--io")) {
        if (!strcmp(v, "direct")) mp->io_mode = SL_IO_DIRECT;
        else if (!strcmp(v, "buffered")) mp->io_mode = SL_IO_BUFFERED;
        else if (!strcmp(v, "mmap")) mp->io_mode = SL_IO_MMAP;
        else return bad(cmd, s, v, "direct, buffered or mmap");
    } else if (!strcmp(s, "--cache-policy")) {
        if (!strcmp(v, "lru")) mp->cache_policy = SL_CACHE_LRU;
        else if (!strcmp(v, "lfu")) mp->cache_policy = SL_CACHE_LFU;
        else return bad(cmd, s, v, "lru or lfu");
    } else if (!strcmp(s, "--prefetch")) {
        if (!strcmp(v, "0") || !strcmp(v, "off")) mp->prefetch = SL_PREFETCH_OFF;
        else if (!strcmp(v, "1") || !strcmp(v, "auto")) mp->prefetch = SL_PREFETCH_AUTO;
        else if (!strcmp(v, "2") || !strcmp(v, "always")) mp->prefetch = SL_PREFETCH_ALWAYS;
        else return bad(cmd, s, v, "0/off, 1/auto or 2/always");
    } else if (!strcmp(s, "--device")) {
        if (!strcmp(v, "cpu")) mp->device = SL_DEVICE_CPU;
        else if (!strcmp(v, "cuda") || !strcmp(v, "gpu")) mp->device = SL_DEVICE_CUDA;
        else if (!strcmp(v, "auto")) mp->device = SL_DEVICE_AUTO;
        else return bad(cmd, s, v, "cpu, cuda or auto");
    } else if (!strcmp(s, "--gpu-cache")) {
        if (!strcmp(v, "auto")) mp->gpu_cache_bytes = SL_GPU_CACHE_AUTO;
        else if (sl_parse_size(v, &mp->gpu_cache_bytes) != SL_OK || mp->gpu_cache_bytes == 0)
            return bad(cmd, s, v, "a size (512M, 20G, all, auto)");
    } else if (!strcmp(s, "--gpu-miss")) {
        if (!strcmp(v, "auto")) mp->gpu_miss_policy = SL_GPU_MISS_AUTO;
        else if (!strcmp(v, "upload")) mp->gpu_miss_policy = SL_GPU_MISS_UPLOAD;
        else if (!strcmp(v, "cpu")) mp->gpu_miss_policy = SL_GPU_MISS_CPU;
        else return bad(cmd, s, v, "auto, upload or cpu");
    } else if (!strcmp(s, "--expert-profile")) {
        mp->expert_profile = v;
    } else if (!strcmp(s, "--nccl-rank") || !strcmp(s, "--nccl-world")) {
        char *end;
        errno = 0;
        long x = strtol(v, &end, 10);
        if (errno || *end || end == v || x < 0 || x > 65535)
            return bad(cmd, s, v, "an integer in [0, 65535]");
        if (!strcmp(s, "--nccl-rank")) mp->nccl_rank = (int)x;
        else mp->nccl_world = (int)x;
    } else if (!strcmp(s, "--nccl-id")) {
        mp->nccl_id_path = v;
    } else if (!strcmp(s, "--nccl-timeout")) {
        char *end;
        errno = 0;
        double x = strtod(v, &end);
        if (errno || *end || end == v || !(x > 0) || x > 86400)
            return bad(cmd, s, v, "a number of seconds in (0, 86400]");
        mp->nccl_timeout_s = x;
    } else if (!strcmp(s, "--io-threads")) {
        char *end;
        errno = 0;
        long x = strtol(v, &end, 10);
        if (errno || *end || end == v || x < 1 || x > 256)
            return bad(cmd, s, v, "an integer in [1, 256]");
        mp->io_threads = (int)x;
    }
    return 1;
}

/* kB value of a "Key:   123 kB" line of /proc/self/status; 0 if absent. */
static double status_kb(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return 0;
    char line[256];
    double v = 0;
    size_t n = strlen(key);
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, n) && line[n] == ':') v = strtod(line + n + 1, NULL);
    fclose(f);
    return v;
}

void cli_print_store_stats(const struct sl_model *m, const struct sl_stats *st, int per_layer) {
    fprintf(stderr, "%s\n", sl_model_expert_cache_desc(m));
    fprintf(stderr, "memory: peak RSS %.1f MiB (VmHWM), RSS now %.1f MiB; dense %.1f MiB, "
            "experts %.1f MiB\n", status_kb("VmHWM") / 1024, status_kb("VmRSS") / 1024,
            (double)sl_model_dense_bytes(m) / 1048576.0,
            (double)sl_model_expert_bytes(m) / 1048576.0);
    if (st->gpu_cache_bytes) {
        uint64_t gu = st->gpu_hits + st->gpu_uploads + st->gpu_cpu_experts;
        uint64_t all_up = st->gpu_uploads + st->gpu_prefetch_uploads;
        fprintf(stderr, "gpu cache: %" PRIu64 " uses, GPU hit %.1f%%, uploaded %.1f%%, CPU %.1f%% "
                "(%.3f s) | H2D %.3f GB at %.2f GB/s, %s | budget %.1f MiB\n", gu,
                gu ? 100.0 * (double)st->gpu_hits / (double)gu : 0,
                gu ? 100.0 * (double)st->gpu_uploads / (double)gu : 0,
                gu ? 100.0 * (double)st->gpu_cpu_experts / (double)gu : 0, st->gpu_cpu_seconds,
                (double)st->gpu_h2d_bytes / 1e9,
                st->gpu_h2d_seconds > 0 ? (double)st->gpu_h2d_bytes / 1e9 / st->gpu_h2d_seconds : 0,
                all_up == 0 ? "no uploads"
                : st->gpu_staged_uploads == 0 ? "direct"
                : st->gpu_staged_uploads == all_up ? "staged" : "direct + staged",
                (double)st->gpu_cache_bytes / 1048576.0);
        if (st->gpu_prefetch_uploads)
            fprintf(stderr, "gpu lookahead: %" PRIu64 " uploads, %" PRIu64 " used (%.1f%%), %"
                    PRIu64 " evicted unused\n", st->gpu_prefetch_uploads, st->gpu_prefetch_useful,
                    100.0 * (double)st->gpu_prefetch_useful / (double)st->gpu_prefetch_uploads,
                    st->gpu_prefetch_wasted);
        if (st->nccl_allreduces) /* multi-GPU: docs/multi_gpu.md */
            fprintf(stderr, "nccl: %" PRIu64 " all-reduces, %.1f KiB each, %.1f us each (%"
                    PRIu64 " timed: eager steps only)\n", st->nccl_allreduces,
                    (double)st->nccl_bytes / (double)st->nccl_allreduces / 1024.0,
                    st->nccl_timed ? 1e6 * st->nccl_seconds / (double)st->nccl_timed : 0,
                    st->nccl_timed);
    }
    uint64_t uses = st->cache_hits + st->cache_misses + st->prefetch_hits;
    if (uses == 0) return;
    double gb = (double)st->cache_bytes_read / 1e9;
    fprintf(stderr,
            "expert cache: %" PRIu64 " uses, hit %.1f%%, prefetch-hit %.1f%%, miss %.1f%% | "
            "read %.3f GB at %.3f GB/s (busy %.2f s), stalled %.2f s | peak %.1f of %.1f MiB, "
            "%" PRIu64 " evictions\n",
            uses, 100.0 * (double)st->cache_hits / (double)uses,
            100.0 * (double)st->prefetch_hits / (double)uses,
            100.0 * (double)st->cache_misses / (double)uses, gb,
            st->io_busy_seconds > 0 ? gb / st->io_busy_seconds : 0, st->io_busy_seconds,
            st->io_stall_seconds, (double)st->cache_peak_bytes / 1048576.0,
            (double)st->cache_budget_bytes / 1048576.0, st->cache_evictions);
    uint64_t cand = st->cache_misses + st->prefetch_hits;
    fprintf(stderr,
            "prefetch: %" PRIu64 " reads, %" PRIu64 " used (precision %.1f%%), accuracy %.1f%% "
            "(misses avoided), wasted %.1f MiB | lookahead predicted %.1f%% of %" PRIu64
            " experts used\n",
            st->prefetch_issued, st->prefetch_useful,
            st->prefetch_issued ? 100.0 * (double)st->prefetch_useful / (double)st->prefetch_issued : 0,
            cand ? 100.0 * (double)st->prefetch_hits / (double)cand : 0,
            (double)st->prefetch_wasted_bytes / 1048576.0,
            st->lookahead_total ? 100.0 * (double)st->lookahead_hits / (double)st->lookahead_total : 0,
            st->lookahead_total);
    if (!per_layer) return;
    for (uint32_t l = 0; l < 4096; l++) {
        struct sl_expert_layer_stats ls;
        if (sl_model_expert_layer_stats(m, l, &ls) != SL_OK) {
            if (l >= (uint32_t)sl_model_n_layers(m)) break;
            continue;
        }
        uint64_t u = ls.hits + ls.misses + ls.prefetch_hits;
        fprintf(stderr,
                "  layer %3u: hit %5.1f%% pf %5.1f%% miss %5.1f%% | %8.1f MiB read | "
                "stall %6.3f s | lookahead %5.1f%%\n",
                l, u ? 100.0 * (double)ls.hits / (double)u : 0,
                u ? 100.0 * (double)ls.prefetch_hits / (double)u : 0,
                u ? 100.0 * (double)ls.misses / (double)u : 0,
                (double)ls.bytes_read / 1048576.0, ls.stall_seconds,
                ls.lookahead_total ? 100.0 * (double)ls.lookahead_hits / (double)ls.lookahead_total
                                   : 0);
    }
}
