/*
 * test_cuda_stream.c — the GPU expert cache's streaming path (issue 7 items
 * 2 and 3; docs/cuda.md "The GPU expert cache"):
 *   everywhere (no GPU needed):
 *     - gpu_miss_decide: forced policies, AUTO's rules (prompt chunks and
 *       records not in RAM upload, the one CPU probe while unmeasured, the
 *       greedy split between copy engine and CPU, the re-probe);
 *     - gpu_miss_expert_cpu against the scalar reference (bf16, q8, q4;
 *       one token and a chunk);
 *     - expert_store_try_acquire / expert_store_host_arena on a real store
 *       (not resident → 0 and no pin; resident → the record's bytes inside
 *       the arena; mmap mode → no arena; bad ids → 0);
 *   on a GPU, every committed qwen3_moe fixture at bf16 with a GPU cache of
 *   k + 2 slots (the host RAM cache holds every expert) against the run
 *   with every expert resident:
 *     - --gpu-miss upload: logits bit-identical (memcmp), also with uploads
 *       through staging (SLUICE_CUDA_REGISTER=0), through staging because
 *       the store is in mmap mode, with the lookahead off and always on;
 *     - --gpu-miss cpu and auto: greedy tokens identical, cosine >= 0.9999
 *       at every prompt position and decode step;
 *     - statistics: GPU hits + uploads + CPU experts = the (layer, expert)
 *       uses; cpu: no demand upload; upload: no CPU expert; auto: at least
 *       the CPU probe; direct uploads when registered, all staged when not;
 *       lookahead uploads only when on, used + wasted <= uploaded;
 *     - a bad gpu_miss_policy is SL_ERR_ARG naming it;
 *     - timing (docs/cuda.md): with uploads, the copy engine's busy time is
 *       positive and its rate plausible; every decode step times its MoE
 *       layers (gpu_layer_intervals = steps x (last - first MoE layer));
 *       SLUICE_CUDA_STREAM_TIMING=0 / SLUICE_CUDA_COPY_TIMING=0 zero them,
 *       and they, like SLUICE_CUDA_LATE_WAIT=0, leave the logits
 *       bit-identical.
 * Without a GPU (CI) or in a build without CUDA the GPU tests are skipped
 * with the reason.
 */
#include <cJSON.h>
#include <dirent.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cpu/ops.h"
#include "cpu/pool.h"
#include "expert_store.h"
#include "golden.h"
#include "gpu_miss.h"
#include "model.h"
#include "quant.h"
#include "sluice.h"
#include "test.h"

#define FX_ROOT "tests/fixtures/qwen3_moe"
#define N_PROMPT 40
#define N_STEPS 8

/* ---- gpu_miss_decide ------------------------------------------------------ */

TEST(decide_policies) {
    struct gpu_miss_model mm = {0};
    uint64_t bytes[3] = {1000, 1000, 1000};
    int32_t tok[3] = {1, 1, 1};
    uint8_t ram[3] = {1, 0, 1}, cpu[3];
    gpu_miss_decide(&mm, SL_GPU_MISS_UPLOAD, 1, bytes, tok, ram, 3, 1e9, cpu);
    CHECK(cpu[0] == 0 && cpu[1] == 0 && cpu[2] == 0);
    gpu_miss_decide(&mm, SL_GPU_MISS_CPU, 64, bytes, tok, ram, 3, 1e9, cpu);
    CHECK(cpu[0] == 1 && cpu[1] == 1 && cpu[2] == 1); /* forced: even not in RAM */
    /* AUTO, CPU unmeasured: exactly one probe, on the first miss in RAM */
    gpu_miss_decide(&mm, SL_GPU_MISS_AUTO, 1, bytes, tok, ram, 3, 0, cpu);
    CHECK(cpu[0] == 1 && cpu[1] == 0 && cpu[2] == 0);
    /* a prompt chunk uploads */
    gpu_miss_decide(&mm, SL_GPU_MISS_AUTO, GPU_MISS_CPU_MAX_TOKENS + 1, bytes, tok, ram, 3, 0,
                    cpu);
    CHECK(cpu[0] == 0 && cpu[1] == 0 && cpu[2] == 0);
    /* CPU measured, copies not: upload to measure them */
    gpu_miss_note_cpu(&mm, 1e-6, 1000, 1);
    CHECK_NEAR(mm.cpu_spb, 1e-9, 1e-15);
    gpu_miss_decide(&mm, SL_GPU_MISS_AUTO, 1, bytes, tok, ram, 3, 0, cpu);
    CHECK(cpu[0] == 0 && cpu[2] == 0);
    /* the exponential average */
    gpu_miss_note_cpu(&mm, 3e-6, 1000, 1);
    CHECK_NEAR(mm.cpu_spb, 1.5e-9, 1e-15);
    gpu_miss_note_cpu(&mm, 0, 1000, 1); /* ignored */
    gpu_miss_note_cpu(&mm, 1e-6, 0, 1);
    CHECK_NEAR(mm.cpu_spb, 1.5e-9, 1e-15);
}

TEST(decide_greedy_split) {
    /* CPU 1 s per 1e9 byte-tokens, copies 1e9 B/s: equal costs, so the
     * misses alternate between the two queues (ties go to the upload) */
    struct gpu_miss_model mm = {0};
    mm.cpu_spb = 1e-9;
    uint64_t bytes[4] = {1000000, 1000000, 1000000, 1000000};
    int32_t tok[4] = {1, 1, 1, 1};
    uint8_t ram[4] = {1, 1, 1, 1}, cpu[4];
    gpu_miss_decide(&mm, SL_GPU_MISS_AUTO, 1, bytes, tok, ram, 4, 1e9, cpu);
    CHECK(cpu[0] == 0 && cpu[1] == 1 && cpu[2] == 0 && cpu[3] == 1);
    /* a CPU 10x faster than the link takes everything */
    mm.cpu_spb = 1e-10;
    gpu_miss_decide(&mm, SL_GPU_MISS_AUTO, 1, bytes, tok, ram, 4, 1e9, cpu);
    CHECK(cpu[0] == 1 && cpu[1] == 1 && cpu[2] == 1 && cpu[3] == 1);
    /* ... unless the record is not in RAM */
    ram[2] = 0;
    gpu_miss_decide(&mm, SL_GPU_MISS_AUTO, 1, bytes, tok, ram, 4, 1e9, cpu);
    CHECK(cpu[2] == 0);
    /* a CPU 10x slower never wins, except the re-probe */
    mm.cpu_spb = 1e-8;
    mm.since_cpu = mm.since_up = 0;
    ram[2] = 1;
    int n_cpu = 0;
    for (int r = 0; r < GPU_MISS_REPROBE; r++) {
        gpu_miss_decide(&mm, SL_GPU_MISS_AUTO, 1, bytes, tok, ram, 4, 1e9, cpu);
        n_cpu += cpu[0] + cpu[1] + cpu[2] + cpu[3];
    }
    /* 4 * REPROBE misses: the CPU is re-probed after every REPROBE uploads,
     * i.e. at misses REPROBE, 2 REPROBE + 1, 3 REPROBE + 2 */
    CHECK_EQ_INT(n_cpu, 3);
}

/* ---- the CPU expert ------------------------------------------------------- */

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float frand(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

static void *rand_weights(int dtype, int rows, int cols, float scale) {
    uint64_t rb = quant_row_bytes(dtype, (uint64_t)cols);
    uint8_t *w = malloc((size_t)rb * rows);
    float *row = malloc((size_t)cols * sizeof(float));
    for (int r = 0; r < rows; r++) {
        for (int c = 0; c < cols; c++) row[c] = frand() * scale;
        quant_row_from_f32(dtype, row, w + (uint64_t)r * rb, (uint64_t)cols);
    }
    free(row);
    return w;
}

TEST(cpu_expert_matches_reference) {
    const int hidden = 256, ffn = 96;
    struct sl_pool *pool = NULL;
    CHECK_EQ_INT(pool_create(3, &pool), SL_OK);
    if (!pool) return;
    const int dts[3] = {SL_DTYPE_BF16, SL_DTYPE_Q8, SL_DTYPE_Q4};
    for (int d = 0; d < 3; d++) {
        int dt = dts[d];
        struct expert_view v = {0};
        void *wg = rand_weights(dt, ffn, hidden, 0.1f), *wu = rand_weights(dt, ffn, hidden, 0.1f);
        void *wd = rand_weights(dt, hidden, ffn, 0.1f);
        v.gate = wg, v.up = wu, v.down = wd;
        v.dtype[0] = v.dtype[1] = v.dtype[2] = dt;
        for (int m = 1; m <= 3; m += 2) {
            float *X = malloc((size_t)m * hidden * 4), *out = malloc((size_t)m * hidden * 4);
            float *ref = malloc((size_t)m * hidden * 4);
            float *hb = malloc((size_t)m * ffn * 4), *hb2 = malloc((size_t)m * ffn * 4);
            for (int i = 0; i < m * hidden; i++) X[i] = frand();
            for (int i = 0; i < m * hidden; i++) out[i] = NAN;
            CHECK_EQ_INT(gpu_miss_expert_cpu(pool, &v, hidden, ffn, X, out, m, hb, hb2), SL_OK);
            float g[96], u[96];
            for (int t = 0; t < m; t++) {
                ops_matvec_ref(dt, wg, X + (size_t)t * hidden, g, ffn, hidden);
                ops_matvec_ref(dt, wu, X + (size_t)t * hidden, u, ffn, hidden);
                ops_swiglu(g, g, u, ffn);
                ops_matvec_ref(dt, wd, g, ref + (size_t)t * hidden, hidden, ffn);
            }
            /* bf16: float accumulation; q8/q4: the AVX paths round x to int8 */
            char what[64];
            snprintf(what, sizeof what, "%s m=%d", sl_dtype_name(dt), m);
            check_tensor(what, out, ref, (size_t)m * hidden, dt == SL_DTYPE_BF16 ? 1e-9 : 1e-3,
                         -1);
            free(X), free(out), free(ref), free(hb), free(hb2);
        }
        free(wg), free(wu), free(wd);
    }
    pool_free(pool);
}

/* ---- fixtures ------------------------------------------------------------- */

struct fixture {
    char name[64], dir[512];
    size_t n_vocab;
    int k, ne;
    int32_t prompt[N_PROMPT];
};

static int json_int(const cJSON *j, const char *key, int *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    if (!cJSON_IsNumber(v)) return 0;
    *out = (int)v->valuedouble;
    return 1;
}

static int fixture_load(const char *name, struct fixture *fx) {
    memset(fx, 0, sizeof *fx);
    snprintf(fx->name, sizeof fx->name, "%s", name);
    snprintf(fx->dir, sizeof fx->dir, "%s/%s", FX_ROOT, name);
    char p[1024];
    size_t len;
    int nv = 0, ok;
    snprintf(p, sizeof p, "%s/config.json", fx->dir);
    char *txt = golden_read_all(p, &len);
    cJSON *j = txt ? cJSON_ParseWithLength(txt, len) : NULL;
    ok = json_int(j, "vocab_size", &nv) && json_int(j, "num_experts_per_tok", &fx->k) &&
         (json_int(j, "num_experts", &fx->ne) || json_int(j, "num_local_experts", &fx->ne));
    fx->n_vocab = (size_t)nv;
    cJSON_Delete(j);
    free(txt);
    if (!ok) return 0;
    snprintf(p, sizeof p, "%s/generated.json", fx->dir);
    txt = golden_read_all(p, &len);
    j = txt ? cJSON_ParseWithLength(txt, len) : NULL;
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(j, "prompt");
    ok = cJSON_IsArray(arr) && cJSON_GetArraySize(arr) >= N_PROMPT;
    for (int i = 0; ok && i < N_PROMPT; i++)
        fx->prompt[i] = (int32_t)cJSON_GetArrayItem(arr, i)->valuedouble;
    cJSON_Delete(j);
    free(txt);
    return ok;
}

GOLDEN_UNUSED static int fixtures_list(char names[][64], int max) {
    DIR *d = opendir(FX_ROOT);
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < max) {
        char p[1024];
        struct stat st;
        if (e->d_name[0] == '.' || strlen(e->d_name) >= 64) continue;
        snprintf(p, sizeof p, "%s/%s/config.json", FX_ROOT, e->d_name);
        if (stat(p, &st) == 0) snprintf(names[n++], 64, "%.63s", e->d_name);
    }
    closedir(d);
    return n;
}

/* fixture → a temporary .sluice at bf16 (path receives it). */
static int convert_bf16(const struct fixture *fx, char *path, size_t n) {
    char dir[] = "/tmp/sluice_cstream_XXXXXX";
    if (!mkdtemp(dir)) return 0;
    snprintf(path, n, "%s/model.sluice", dir);
    struct sl_convert_params cp = sl_convert_default_params();
    cp.expert_dtype = SL_DTYPE_BF16;
    cp.dense_dtype = SL_DTYPE_BF16;
    int st = sl_convert(fx->dir, path, &cp);
    if (st) fprintf(stderr, "    convert %s: %s\n", fx->dir, sl_errmsg());
    return st == SL_OK;
}

static void remove_model(const char *path) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    unlink(path);
    if (slash) {
        *slash = 0;
        rmdir(dir);
    }
}

/* ---- the host store's accessors (no GPU needed) --------------------------- */

TEST(store_try_acquire_and_arena) {
    struct fixture fx;
    if (!fixture_load("base", &fx)) TEST_SKIP("fixture %s/base not found", FX_ROOT);
    char path[600];
    CHECK(convert_bf16(&fx, path, sizeof path));
    for (int mode = 0; mode < 2; mode++) {
        struct sl_model_params mp = sl_model_default_params();
        mp.io_mode = mode ? SL_IO_MMAP : SL_IO_DEFAULT;
        struct sl_model *m = NULL;
        CHECK_EQ_INT(sl_model_open(path, &mp, &m), SL_OK);
        if (!m) continue;
        struct expert_store *s = m->experts;
        uint32_t l = 0;
        while (l < m->cfg.n_layers && !m->cfg.layer_is_moe[l]) l++;
        struct expert_view v, w;
        void *base = NULL;
        uint64_t bytes = 0;
        int has = expert_store_host_arena(s, &base, &bytes);
        CHECK_EQ_INT(expert_store_try_acquire(s, l, (uint32_t)fx.ne, &v), 0); /* bad ids */
        CHECK_EQ_INT(expert_store_try_acquire(s, 9999, 0, &v), 0);
        if (mode) { /* mmap: no arena; every record is "resident" in the mapping */
            CHECK_EQ_INT(has, 0);
            CHECK_EQ_INT(expert_store_try_acquire(s, l, 1, &v), 1);
            expert_store_release(s, l, 1);
        } else {
            CHECK_EQ_INT(has, 1);
            CHECK(bytes > 0);
            CHECK_EQ_INT(expert_store_try_acquire(s, l, 1, &v), 0); /* never read */
            CHECK_EQ_INT(expert_store_acquire(s, l, 1, &w), SL_OK);
            expert_store_release(s, l, 1);
            CHECK_EQ_INT(expert_store_try_acquire(s, l, 1, &v), 1);
            CHECK(v.gate == w.gate && v.down == w.down && v.bytes == w.bytes);
            CHECK((const uint8_t *)v.gate >= (const uint8_t *)base &&
                  (const uint8_t *)v.down < (const uint8_t *)base + bytes);
            expert_store_release(s, l, 1);
            /* a try-acquire is no use: the store's counters did not move */
            struct sl_context *ctx;
            struct sl_stats st;
            CHECK_EQ_INT(sl_context_create(m, NULL, &ctx), SL_OK);
            sl_context_stats(ctx, &st);
            CHECK_EQ_INT((int)(st.cache_hits + st.cache_misses + st.prefetch_hits), 1);
            sl_context_free(ctx);
        }
        sl_model_close(m);
    }
    remove_model(path);
}

#ifndef SLUICE_CUDA

TEST(cuda_stream) { TEST_SKIP("built without CUDA (NO_CUDA=1 or no nvcc): GPU tests not run"); }

#else

#include "cuda/cuda.h"

#include "cuda_test.h" /* have_gpu */

/* One configuration of a run. */
struct conf {
    const char *what;
    int policy, prefetch, io_mode, no_register;
    const char *env; /* NAME=0 set for the open and the run, or NULL */
};

static void conf_env(const struct conf *c, int on) {
    if (!c->env) return;
    char name[64];
    snprintf(name, sizeof name, "%.*s", (int)(strchr(c->env, '=') - c->env), c->env);
    if (on) setenv(name, strchr(c->env, '=') + 1, 1);
    else unsetenv(name);
}

static struct sl_model *open_gpu(const char *path, uint64_t gpu_cache, const struct conf *c) {
    struct sl_model_params mp = sl_model_default_params();
    mp.device = SL_DEVICE_CUDA;
    mp.gpu_cache_bytes = gpu_cache;
    mp.gpu_miss_policy = c->policy;
    mp.prefetch = c->prefetch;
    mp.io_mode = c->io_mode;
    if (c->no_register) setenv("SLUICE_CUDA_REGISTER", "0", 1);
    struct sl_model *m = NULL;
    int st = sl_model_open(path, &mp, &m);
    unsetenv("SLUICE_CUDA_REGISTER");
    if (st != SL_OK) {
        fprintf(stderr, "    open %s (%s): %s\n", path, c->what, sl_errmsg());
        return NULL;
    }
    return m;
}

/* Prompt (all logits into all (N_PROMPT, V)), then N_STEPS greedy decode
 * steps (tokens into gen, logits into steps (N_STEPS, V)); the context's
 * statistics into *st. Nonzero on success. */
static int run_seq(struct sl_model *m, const struct fixture *fx, float *all, int32_t *gen,
                   float *steps, struct sl_stats *st) {
    struct sl_context *ctx;
    if (sl_context_create(m, NULL, &ctx) != SL_OK) {
        fprintf(stderr, "    context: %s\n", sl_errmsg());
        return 0;
    }
    size_t V = fx->n_vocab;
    int ok = sl_eval(ctx, fx->prompt, N_PROMPT, all) == SL_OK;
    for (int g = 0; ok && g < N_STEPS; g++) {
        const float *l = sl_logits(ctx);
        gen[g] = golden_argmax(l, V);
        memcpy(steps + (size_t)g * V, l, V * sizeof(float));
        if (g + 1 < N_STEPS) ok = sl_eval(ctx, &gen[g], 1, NULL) == SL_OK;
    }
    if (!ok) fprintf(stderr, "    sl_eval: %s\n", sl_errmsg());
    sl_context_stats(ctx, st);
    sl_context_free(ctx);
    return ok;
}

static double min_cosine(const float *a, const float *b, int rows, size_t V) {
    double mn = 1;
    for (int i = 0; i < rows; i++) {
        double c = golden_cosine(a + (size_t)i * V, b + (size_t)i * V, V);
        if (!(c >= mn)) mn = c;
    }
    return mn;
}

TEST(cuda_stream) {
    if (!have_gpu()) TEST_SKIP("no usable CUDA device: streaming GPU cache tests not run");
    char names[32][64];
    int nf = fixtures_list(names, 32);
    CHECK(nf > 0);
    const struct conf confs[] = {
        {"upload", SL_GPU_MISS_UPLOAD, SL_PREFETCH_AUTO, SL_IO_DEFAULT, 0, NULL},
        {"upload staged", SL_GPU_MISS_UPLOAD, SL_PREFETCH_AUTO, SL_IO_DEFAULT, 1, NULL},
        {"upload mmap", SL_GPU_MISS_UPLOAD, SL_PREFETCH_AUTO, SL_IO_MMAP, 0, NULL},
        {"upload pf off", SL_GPU_MISS_UPLOAD, SL_PREFETCH_OFF, SL_IO_DEFAULT, 0, NULL},
        {"upload pf always", SL_GPU_MISS_UPLOAD, SL_PREFETCH_ALWAYS, SL_IO_DEFAULT, 0, NULL},
        {"cpu", SL_GPU_MISS_CPU, SL_PREFETCH_AUTO, SL_IO_DEFAULT, 0, NULL},
        {"cpu pf off", SL_GPU_MISS_CPU, SL_PREFETCH_OFF, SL_IO_DEFAULT, 0, NULL},
        {"auto", SL_GPU_MISS_AUTO, SL_PREFETCH_AUTO, SL_IO_DEFAULT, 0, NULL},
        {"upload no timing", SL_GPU_MISS_UPLOAD, SL_PREFETCH_AUTO, SL_IO_DEFAULT, 0,
         "SLUICE_CUDA_STREAM_TIMING=0"},
        {"upload no copy t", SL_GPU_MISS_UPLOAD, SL_PREFETCH_AUTO, SL_IO_DEFAULT, 0,
         "SLUICE_CUDA_COPY_TIMING=0"},
        {"upload early wait", SL_GPU_MISS_UPLOAD, SL_PREFETCH_ALWAYS, SL_IO_DEFAULT, 0,
         "SLUICE_CUDA_LATE_WAIT=0"},
    };
    const int n_conf = (int)(sizeof confs / sizeof *confs);
    for (int f = 0; f < nf; f++) {
        struct fixture fx;
        if (!fixture_load(names[f], &fx)) {
            CHECK_MSG(0, "fixture %s unreadable", names[f]);
            continue;
        }
        char path[600];
        if (!convert_bf16(&fx, path, sizeof path)) {
            CHECK(!"convert");
            continue;
        }
        const struct conf res = {"resident", SL_GPU_MISS_UPLOAD, SL_PREFETCH_AUTO, SL_IO_DEFAULT, 0,
                                 NULL};
        struct sl_model *ma = open_gpu(path, SL_RAM_CACHE_ALL, &res);
        CHECK(ma != NULL);
        size_t V = fx.n_vocab;
        float *aa = malloc(N_PROMPT * V * 4), *sa = malloc(N_STEPS * V * 4);
        float *ab = malloc(N_PROMPT * V * 4), *sb = malloc(N_STEPS * V * 4);
        int32_t ga[N_STEPS], gb[N_STEPS];
        struct sl_stats s;
        if (!ma || !run_seq(ma, &fx, aa, ga, sa, &s)) {
            CHECK(!"resident run");
            sl_model_close(ma);
            free(aa), free(sa), free(ab), free(sb);
            remove_model(path);
            continue;
        }
        int n_moe = 0, first_moe = -1, last_moe = -1;
        for (int l = 0; l < sl_model_n_layers(ma); l++) {
            struct sl_expert_layer_stats ls;
            if (sl_model_expert_layer_stats(ma, (uint32_t)l, &ls) != SL_OK) continue;
            n_moe++;
            if (first_moe < 0) first_moe = l;
            last_moe = l;
        }
        CHECK(s.gpu_layer_intervals == 0); /* resident: no streaming timing */
        uint64_t slot = s.gpu_cache_bytes / ((uint64_t)n_moe * fx.ne);
        uint64_t small = (uint64_t)(fx.k + 2) * slot;
        sl_model_close(ma);
        for (int ci = 0; ci < n_conf; ci++) {
            const struct conf *c = &confs[ci];
            conf_env(c, 1);
            struct sl_model *mb = open_gpu(path, small, c);
            CHECK_MSG(mb != NULL, "%s %s: open failed", fx.name, c->what);
            if (!mb) {
                conf_env(c, 0);
                continue;
            }
            int ok = run_seq(mb, &fx, ab, gb, sb, &s);
            CHECK_MSG(ok, "%s %s: run failed", fx.name, c->what);
            sl_model_close(mb);
            conf_env(c, 0);
            if (!ok) continue;
            double cp = min_cosine(ab, aa, N_PROMPT, V), cd = min_cosine(sb, sa, N_STEPS, V);
            int same = memcmp(gb, ga, sizeof ga) == 0;
            int bits = !memcmp(ab, aa, N_PROMPT * V * 4) && !memcmp(sb, sa, N_STEPS * V * 4);
            uint64_t uses = s.gpu_hits + s.gpu_uploads + s.gpu_cpu_experts;
            printf("  %-16s %-16s: cos prompt %.7f decode %.7f, greedy same %d, bit-identical %d"
                   " | %llu uses: %llu GPU hits, %llu uploads (%llu staged), %llu CPU (%.4f s)"
                   " | lookahead %llu up, %llu used, %llu wasted\n",
                   fx.name, c->what, cp, cd, same, bits, (unsigned long long)s.expert_loads,
                   (unsigned long long)s.gpu_hits, (unsigned long long)s.gpu_uploads,
                   (unsigned long long)s.gpu_staged_uploads,
                   (unsigned long long)s.gpu_cpu_experts, s.gpu_cpu_seconds,
                   (unsigned long long)s.gpu_prefetch_uploads,
                   (unsigned long long)s.gpu_prefetch_useful,
                   (unsigned long long)s.gpu_prefetch_wasted);
            CHECK_MSG(same, "%s %s: greedy tokens differ from the resident run", fx.name,
                      c->what);
            CHECK_MSG(cp >= 0.9999 && cd >= 0.9999, "%s %s: cosine %.7f / %.7f", fx.name,
                      c->what, cp, cd);
            CHECK_MSG(uses == s.expert_loads, "%s %s: hits + uploads + cpu = %llu, uses %llu",
                      fx.name, c->what, (unsigned long long)uses,
                      (unsigned long long)s.expert_loads);
            CHECK(s.gpu_cache_bytes <= small);
            uint64_t all_up = s.gpu_uploads + s.gpu_prefetch_uploads;
            if (c->policy == SL_GPU_MISS_UPLOAD) {
                CHECK_MSG(bits, "%s %s: logits not bit-identical to the resident run", fx.name,
                          c->what);
                CHECK(s.gpu_cpu_experts == 0);
                CHECK(s.gpu_uploads > 0);
            }
            if (c->policy == SL_GPU_MISS_CPU) {
                CHECK(s.gpu_uploads == 0);
                CHECK(s.gpu_cpu_experts > 0);
            }
            if (c->policy == SL_GPU_MISS_AUTO) CHECK(s.gpu_cpu_experts >= 1); /* the probe */
            if (c->no_register || c->io_mode == SL_IO_MMAP)
                CHECK_MSG(s.gpu_staged_uploads == all_up, "%s %s: %llu of %llu staged", fx.name,
                          c->what, (unsigned long long)s.gpu_staged_uploads,
                          (unsigned long long)all_up);
            else
                CHECK_MSG(s.gpu_staged_uploads == 0, "%s %s: %llu uploads staged (host cache "
                          "not registered? see the log)", fx.name, c->what,
                          (unsigned long long)s.gpu_staged_uploads);
            if (c->prefetch == SL_PREFETCH_OFF) CHECK(s.gpu_prefetch_uploads == 0);
            if (c->prefetch == SL_PREFETCH_ALWAYS) CHECK(s.gpu_prefetch_uploads > 0);
            CHECK(s.gpu_prefetch_useful + s.gpu_prefetch_wasted <= s.gpu_prefetch_uploads);
            /* timing: per-copy busy time, per-layer decode events */
            int no_st = c->env && strstr(c->env, "STREAM_TIMING"),
                no_ct = c->env && strstr(c->env, "COPY_TIMING");
            printf("    timing: H2D %.6f s (%.2f GB/s), layers %.6f s over %llu intervals, "
                   "upload wait %.6f s, round trips %.6f s\n", s.gpu_h2d_seconds,
                   s.gpu_h2d_seconds > 0 ? (double)s.gpu_h2d_bytes / 1e9 / s.gpu_h2d_seconds : 0,
                   s.gpu_layer_seconds, (unsigned long long)s.gpu_layer_intervals,
                   s.gpu_upload_wait_seconds, s.gpu_roundtrip_seconds);
            if (no_ct) CHECK(s.gpu_h2d_seconds == 0);
            else if (all_up && !c->no_register && c->io_mode != SL_IO_MMAP) {
                double gbs = s.gpu_h2d_seconds > 0
                                 ? (double)s.gpu_h2d_bytes / 1e9 / s.gpu_h2d_seconds : 0;
                CHECK_MSG(gbs > 0.001 && gbs < 1000, "%s %s: H2D %.4f GB/s", fx.name, c->what,
                          gbs);
            }
            if (no_st) {
                CHECK(s.gpu_layer_intervals == 0 && s.gpu_layer_seconds == 0);
                CHECK(s.gpu_upload_wait_seconds == 0 && s.gpu_roundtrip_seconds == 0);
            } else if (n_moe >= 2) {
                CHECK_MSG(s.gpu_layer_intervals ==
                              (uint64_t)(N_STEPS - 1) * (uint64_t)(last_moe - first_moe),
                          "%s %s: %llu layer intervals, want %d x %d", fx.name, c->what,
                          (unsigned long long)s.gpu_layer_intervals, N_STEPS - 1,
                          last_moe - first_moe);
                CHECK(s.gpu_layer_seconds > 0);
                CHECK(s.gpu_upload_wait_seconds >= 0 && s.gpu_roundtrip_seconds >= 0);
                if (c->policy == SL_GPU_MISS_UPLOAD) CHECK(s.gpu_roundtrip_seconds > 0);
            }
        }
        /* a bad policy */
        struct sl_model_params mp = sl_model_default_params();
        struct sl_model *mx = NULL;
        mp.device = SL_DEVICE_CUDA;
        mp.gpu_cache_bytes = small;
        mp.gpu_miss_policy = 7;
        CHECK_EQ_INT(sl_model_open(path, &mp, &mx), SL_ERR_ARG);
        CHECK(mx == NULL);
        CHECK_MSG(strstr(sl_errmsg(), "gpu_miss_policy 7") != NULL, "%s", sl_errmsg());
        free(aa), free(sa), free(ab), free(sb);
        remove_model(path);
    }
}

#endif /* SLUICE_CUDA */

TEST_MAIN()
