/*
 * synth.c — the synthetic model generator (see synth.h for the contract and
 * docs/synth.md for the skew method and measured statistics).
 *
 * What it is: seeded weight generation with a thread pool that splits
 * rows, the routing simulation and router-skew fit, the streaming write
 * through the format writer, and the qwen3_moe layer layout. What it is
 * not: the presets and parameter checks (synth_presets.c, whose exported
 * functions synth.h declares), the qwen3_5_moe hybrid layout and presets
 * (synth_hybrid.c, through synth_impl.h), a converter (no checkpoint is
 * read) nor a model loader (file_open is used once at the end, to report
 * sizes and prove the file opens).
 *
 * Invariants: every row of every tensor is a pure function of (seed, tensor
 * name, row index); nothing depends on thread timing or count. Memory is
 * bounded whatever the model's size: every dense tensor is drawn and
 * written in blocks of at most SYNTH_BLOCK_ROWS rows and SYNTH_BLOCK_BYTES
 * bytes (writer_begin_tensor / writer_write_rows / writer_end_tensor; the
 * file is byte-identical to whole-tensor writes), and experts in batches of
 * at most SYNTH_BATCH_BYTES. The one whole matrix is a router in f32
 * (n_experts x hidden, needed by the skew fit), plus the fit's simulated
 * logits (at most 65536 tokens x n_experts f32).
 */
#include "synth.h"
#include "synth_impl.h"

#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "format.h"
#include "quant.h"
#include "util.h"

/* ---- PRNG: splitmix64 seeding, xoshiro256** streams ------------------- */

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* One mixing step of two values into a fresh 64-bit seed. */
static uint64_t seed_mix(uint64_t a, uint64_t b) {
    uint64_t s = a ^ (b * 0xd1b54a32d192ed03ull);
    splitmix64(&s);
    return splitmix64(&s);
}

static uint64_t seed_of_name(uint64_t seed, const char *name) {
    return seed_mix(seed, sl_fnv1a64(name, strlen(name), SL_FNV_SEED));
}

struct rng {
    uint64_t s[4];
};

static void rng_init(struct rng *r, uint64_t seed) {
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

static inline uint64_t rotl(uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
}

static inline uint64_t rng_next(struct rng *r) {
    uint64_t *s = r->s;
    uint64_t out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

/* Approximate standard normal: the sum of four 16-bit uniforms (Irwin-Hall,
 * |z| <= 3.46), centred and scaled to unit variance. Why not Box-Muller:
 * one PRNG call and no libm per value keeps a 5 GB model at a few ns per
 * weight, and matmul activations only need the first two moments. */
static inline float rng_normal(struct rng *r) {
    uint64_t x = rng_next(r);
    uint32_t s = (uint32_t)(x & 0xffff) + (uint32_t)((x >> 16) & 0xffff) +
                 (uint32_t)((x >> 32) & 0xffff) + (uint32_t)(x >> 48);
    return ((float)s - 131070.0f) * (1.0f / 37837.23f);
}

/* Row `row` of the tensor seeded tseed: cols values mean + std * N(0,1). */
static void gen_row(float *dst, uint64_t cols, uint64_t tseed, uint64_t row,
                    float mean, float std) {
    struct rng r;
    rng_init(&r, seed_mix(tseed, row));
    for (uint64_t i = 0; i < cols; i++) dst[i] = mean + std * rng_normal(&r);
}

/* ---- parallel row fill ------------------------------------------------- */

/* Rows row0 .. row0 + rows - 1 of one matrix to draw and store: cols
 * values each, row r = mean + std * N(0,1) from the stream (seed, r),
 * stored row by row in dtype at out (rows * quant_row_bytes bytes; row r at
 * out + (r - row0) * row bytes). */
struct mat_task {
    uint64_t seed;
    uint64_t row0, rows, cols;
    float mean, std;
    int dtype;
    uint8_t *out;
};

#define FILL_CHUNK 16 /* rows per work item: small enough to balance */

struct fill_job {
    const struct mat_task *tasks;
    int n_tasks;
    uint64_t n_chunks;
    atomic_uint_fast64_t next;
    uint64_t max_cols;
    atomic_int failed;
};

static void *fill_worker(void *arg) {
    struct fill_job *job = arg;
    float *row = sl_malloc(job->max_cols * sizeof *row); /* (max_cols) */
    if (!row) {
        atomic_store(&job->failed, 1);
        return NULL;
    }
    for (;;) {
        uint64_t c = atomic_fetch_add(&job->next, 1);
        if (c >= job->n_chunks) break;
        /* Chunk c -> (task, first row): chunks never straddle tasks. */
        int t = 0;
        uint64_t base = 0, nc;
        while ((nc = (job->tasks[t].rows + FILL_CHUNK - 1) / FILL_CHUNK),
               c >= base + nc) {
            base += nc;
            t++;
        }
        const struct mat_task *m = &job->tasks[t];
        uint64_t r0 = (c - base) * FILL_CHUNK, r1 = r0 + FILL_CHUNK;
        if (r1 > m->rows) r1 = m->rows;
        uint64_t rb = quant_row_bytes(m->dtype, m->cols);
        for (uint64_t r = r0; r < r1; r++) {
            gen_row(row, m->cols, m->seed, m->row0 + r, m->mean, m->std);
            quant_row_from_f32(m->dtype, row, m->out + r * rb, m->cols);
        }
    }
    sl_free(row);
    return NULL;
}

/* Fills every task using n_threads threads (the caller's thread included). */
static int fill_tasks(const struct mat_task *tasks, int n_tasks,
                      int n_threads) {
    struct fill_job job = {.tasks = tasks, .n_tasks = n_tasks};
    atomic_init(&job.next, 0);
    atomic_init(&job.failed, 0);
    for (int t = 0; t < n_tasks; t++) {
        job.n_chunks += (tasks[t].rows + FILL_CHUNK - 1) / FILL_CHUNK;
        if (tasks[t].cols > job.max_cols) job.max_cols = tasks[t].cols;
    }
    if ((uint64_t)n_threads > job.n_chunks) n_threads = (int)job.n_chunks;
    if (n_threads < 1) n_threads = 1;
    pthread_t th[256];
    int started = 0;
    for (int i = 1; i < n_threads && i < 256; i++, started++)
        if (pthread_create(&th[started], NULL, fill_worker, &job) != 0) break;
    fill_worker(&job);
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
    if (atomic_load(&job.failed))
        return sl_seterr(SL_ERR_NOMEM, "synth: out of memory for a row");
    return SL_OK;
}

/* ---- routing simulation ------------------------------------------------ */

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

void synth_usage_stats(const uint64_t *counts, uint32_t n,
                       struct synth_route_stats *st) {
    memset(st, 0, sizeof *st);
    uint64_t *s = sl_malloc((size_t)n * sizeof *s);
    if (!s || n == 0) {
        sl_free(s);
        return;
    }
    memcpy(s, counts, (size_t)n * sizeof *s);
    qsort(s, n, sizeof *s, cmp_u64); /* ascending */
    double total = 0, weighted = 0;
    for (uint32_t i = 0; i < n; i++) {
        total += (double)s[i];
        weighted += (double)(i + 1) * (double)s[i];
    }
    if (total > 0) {
        /* G = 2 sum(i c_i) / (n sum c) - (n + 1) / n, c ascending, i 1-based */
        st->gini = 2.0 * weighted / ((double)n * total) - (double)(n + 1) / n;
        double top = 0, cum = 0;
        for (uint32_t i = 0; i < n && i < 20; i++) top += (double)s[n - 1 - i];
        st->top20_share = top / total;
        for (uint32_t i = 0; i < n; i++) {
            cum += (double)s[n - 1 - i];
            if (cum >= 0.5 * total) {
                st->n_cover50 = i + 1;
                break;
            }
        }
    }
    sl_free(s);
}

/* Base logits of n_tokens simulated inputs: out[t * n_experts + e] =
 * router_e . x_t, x_t ~ N(0, I_hidden) drawn from (seed, t). */
struct sim_job {
    const float *router; /* (n_experts, hidden) */
    uint32_t n_experts, hidden, n_tokens;
    uint64_t seed;
    float *out;          /* (n_tokens, n_experts) */
    atomic_uint next;
    atomic_int failed;
};

static void *sim_worker(void *arg) {
    struct sim_job *j = arg;
    float *x = sl_malloc((size_t)j->hidden * sizeof *x); /* (hidden) */
    if (!x) {
        atomic_store(&j->failed, 1);
        return NULL;
    }
    for (;;) {
        unsigned t = atomic_fetch_add(&j->next, 1);
        if (t >= j->n_tokens) break;
        gen_row(x, j->hidden, j->seed, t, 0.0f, 1.0f);
        for (uint32_t e = 0; e < j->n_experts; e++) {
            const float *w = j->router + (size_t)e * j->hidden;
            /* 8 partial sums: lets the compiler vectorise the reduction. */
            float acc[8] = {0};
            uint32_t i = 0;
            for (; i + 8 <= j->hidden; i += 8)
                for (int k = 0; k < 8; k++) acc[k] += w[i + k] * x[i + k];
            float sum = 0;
            for (; i < j->hidden; i++) sum += w[i] * x[i];
            for (int k = 0; k < 8; k++) sum += acc[k];
            j->out[(size_t)t * j->n_experts + e] = sum;
        }
    }
    sl_free(x);
    return NULL;
}

static int sim_logits(const float *router, uint32_t n_experts, uint32_t hidden,
                      uint32_t n_tokens, uint64_t seed, int n_threads,
                      float *out) {
    struct sim_job j = {.router = router, .n_experts = n_experts, .hidden = hidden,
                       .n_tokens = n_tokens, .seed = seed, .out = out};
    atomic_init(&j.next, 0);
    atomic_init(&j.failed, 0);
    pthread_t th[256];
    int started = 0;
    for (int i = 1; i < n_threads && i < 256 && (uint32_t)i < n_tokens;
         i++, started++)
        if (pthread_create(&th[started], NULL, sim_worker, &j) != 0) break;
    sim_worker(&j);
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
    if (atomic_load(&j.failed))
        return sl_seterr(SL_ERR_NOMEM, "synth: out of memory in simulation");
    return SL_OK;
}

/* Top-k of each row of logits * scale (scale may be NULL = 1), counted into
 * counts (n_experts, zeroed here). Softmax is monotone, so the top-k of the
 * probabilities is the top-k of the logits; ties go to the lower index. */
static void route_count(const float *logits, const float *scale,
                        uint32_t n_experts, uint32_t k, uint32_t n_tokens,
                        uint64_t *counts) {
    uint32_t best[64];
    float bv[64];
    memset(counts, 0, (size_t)n_experts * sizeof *counts);
    for (uint32_t t = 0; t < n_tokens; t++) {
        const float *l = logits + (size_t)t * n_experts;
        uint32_t m = 0;
        for (uint32_t e = 0; e < n_experts; e++) {
            float v = scale ? l[e] * scale[e] : l[e];
            if (m == k && !(v > bv[k - 1])) continue;
            uint32_t p = m < k ? m++ : k - 1;
            while (p > 0 && v > bv[p - 1]) { /* strict: earlier index wins */
                bv[p] = bv[p - 1];
                best[p] = best[p - 1];
                p--;
            }
            bv[p] = v;
            best[p] = e;
        }
        for (uint32_t i = 0; i < m; i++) counts[best[i]]++;
    }
}

int synth_route_sim(const float *router, uint32_t n_experts, uint32_t hidden,
                    uint32_t k, uint32_t n_tokens, uint64_t seed,
                    uint64_t *counts, struct synth_route_stats *st) {
    if (k == 0 || k > n_experts || k > SYNTH_MAX_TOPK || hidden == 0 ||
        n_tokens == 0)
        return sl_seterr(SL_ERR_ARG, "synth_route_sim: need 1 <= k (%u) <= "
                         "n_experts (%u) and k <= %d, hidden and n_tokens > 0",
                         k, n_experts, SYNTH_MAX_TOPK);
    float *logits = sl_malloc((size_t)n_tokens * n_experts * sizeof *logits);
    uint64_t *c = sl_malloc((size_t)n_experts * sizeof *c);
    int rc = SL_OK;
    if (!logits || !c) {
        rc = sl_seterr(SL_ERR_NOMEM, "synth_route_sim: out of memory");
    } else if (!(rc = sim_logits(router, n_experts, hidden, n_tokens, seed,
                                 sl_n_cpus(), logits))) {
        route_count(logits, NULL, n_experts, k, n_tokens, c);
        synth_usage_stats(c, n_experts, st);
        if (counts) memcpy(counts, c, (size_t)n_experts * sizeof *c);
    }
    sl_free(logits);
    sl_free(c);
    return rc;
}

/* ---- skew fit ---------------------------------------------------------- */

/* Standard normal quantile by bisection on erfc (only n_experts calls). */
static double normal_quantile(double p) {
    double lo = -10, hi = 10;
    for (int i = 0; i < 100; i++) {
        double mid = 0.5 * (lo + hi);
        if (0.5 * erfc(-mid / sqrt(2.0)) < p) lo = mid;
        else hi = mid;
    }
    return 0.5 * (lo + hi);
}

float synth_layer_target(const struct synth_params *p, uint32_t layer) {
    uint32_t L = p->cfg.n_layers;
    if (p->skew <= 0 || L == 0 || L > SL_MAX_LAYERS || layer >= L) return 0;
    /* Stratified: layer l gets quantile (pi(l) + 0.5) / L of the factor
     * distribution, pi a seeded permutation, so that the median over
     * layers is the requested skew whatever the number of layers. */
    uint16_t perm[SL_MAX_LAYERS];
    for (uint32_t i = 0; i < L; i++) perm[i] = (uint16_t)i;
    struct rng r;
    rng_init(&r, seed_of_name(p->seed, "skew.target"));
    for (uint32_t i = L; i > 1; i--) {
        uint32_t j = (uint32_t)(rng_next(&r) % i);
        uint16_t t = perm[i - 1];
        perm[i - 1] = perm[j];
        perm[j] = t;
    }
    double u = (perm[layer] + 0.5) / L;
    /* Factor with median 1 spanning the profile's 0.20..0.52 around 0.41:
     * [0.5, 1) below the median, [1, 1.27] above. */
    double f = u < 0.5 ? 0.5 + u : 1.0 + (u - 0.5) * 0.54;
    return (float)(p->skew * f);
}

/* Tokens simulated per layer fit: about 256 selections per expert on
 * average, so that the sampling noise of the Gini stays near 0.03. */
static uint32_t sim_tokens(const struct sl_config *c) {
    uint64_t n = 256ull * c->n_experts / c->n_experts_used;
    if (n < 4096) n = 4096;
    if (n > 65536) n = 65536;
    return (uint32_t)n;
}

/* Largest spread tried: exp(8 * 3.1) keeps scaled logits far from float
 * overflow, and Gini is flat long before. */
#define SYNTH_MAX_SIGMA 8.0

/* Fits the router of one layer in place: router (n_experts, hidden) holds
 * unit-norm rows on entry and rows scaled by s_e = exp(sigma * z_e) on exit.
 * *sigma_out, *target_out (the target after the reachability cap) and *st
 * describe the achieved fit on the simulated tokens. */
static int fit_router(const struct synth_params *p, uint32_t layer,
                      float *router, int n_threads, double *sigma_out,
                      float *target_out, struct synth_route_stats *st) {
    const struct sl_config *c = &p->cfg;
    uint32_t E = c->n_experts, H = c->hidden, k = c->n_experts_used;
    uint32_t N = sim_tokens(c);
    float target = synth_layer_target(p, layer);
    float *logits = sl_malloc((size_t)N * E * sizeof *logits); /* (N, E) */
    float *scale = sl_malloc((size_t)E * sizeof *scale);       /* (E) */
    double *z = sl_malloc((size_t)E * sizeof *z);              /* (E) */
    uint64_t *counts = sl_malloc((size_t)E * sizeof *counts);  /* (E) */
    int rc = SL_OK;
    if (!logits || !scale || !z || !counts) {
        rc = sl_seterr(SL_ERR_NOMEM, "synth: out of memory fitting layer %u "
                       "router", layer);
        goto done;
    }
    /* z: the E normal quantiles in a seeded random order (which experts
     * are hot differs per layer). */
    struct rng r;
    rng_init(&r, seed_mix(seed_of_name(p->seed, "skew.order"), layer));
    for (uint32_t e = 0; e < E; e++) z[e] = normal_quantile((e + 0.5) / E);
    for (uint32_t e = E; e > 1; e--) {
        uint32_t j = (uint32_t)(rng_next(&r) % e);
        double tmp = z[e - 1];
        z[e - 1] = z[j];
        z[j] = tmp;
    }
    rc = sim_logits(router, E, H, N,
                    seed_mix(seed_of_name(p->seed, "skew.inputs"), layer),
                    n_threads, logits);
    if (rc) goto done;

    double sigma = 0;
    if (target > 0) {
        /* Row scaling cannot push Gini past its value at large sigma (an
         * expert with a huge row still loses whenever its logit is
         * negative): cap the target at 95 % of that, reported in *target_out. */
        for (uint32_t e = 0; e < E; e++)
            scale[e] = (float)exp(SYNTH_MAX_SIGMA * z[e]);
        route_count(logits, scale, E, k, N, counts);
        synth_usage_stats(counts, E, st);
        if (target > 0.95 * st->gini) target = (float)(0.95 * st->gini);
        /* Gini grows with sigma; bisect on the same inputs (common random
         * numbers keep the curve monotone in practice). */
        double lo = 0, hi = SYNTH_MAX_SIGMA;
        for (int it = 0; it < 50 && hi - lo > 1e-6; it++) {
            double mid = 0.5 * (lo + hi);
            for (uint32_t e = 0; e < E; e++) scale[e] = (float)exp(mid * z[e]);
            route_count(logits, scale, E, k, N, counts);
            synth_usage_stats(counts, E, st);
            if (fabs(st->gini - target) < 5e-4) {
                lo = hi = mid;
                break;
            }
            if (st->gini < target) lo = mid;
            else hi = mid;
        }
        sigma = 0.5 * (lo + hi);
    }
    for (uint32_t e = 0; e < E; e++) {
        scale[e] = (float)exp(sigma * z[e]);
        for (uint32_t i = 0; i < H; i++) router[(size_t)e * H + i] *= scale[e];
    }
    /* The statistics of the final router (scaled logits = scale * base). */
    route_count(logits, scale, E, k, N, counts);
    synth_usage_stats(counts, E, st);
    *sigma_out = sigma;
    *target_out = target;
done:
    sl_free(logits);
    sl_free(scale);
    sl_free(z);
    sl_free(counts);
    return rc;
}

/* ---- writing ----------------------------------------------------------- */

/* struct synth_state: synth_impl.h. */

/* A dense tensor goes to the writer in blocks of at most SYNTH_BLOCK_ROWS
 * rows and SYNTH_BLOCK_BYTES stored bytes (at least one row), so that no
 * tensor is ever whole in memory; the bytes are those of one whole-tensor
 * write (format.h). */
#define SYNTH_BLOCK_ROWS 1024
#define SYNTH_BLOCK_BYTES ((uint64_t)8 << 20)

/* Rows per block for rows of rb stored bytes, of a tensor of `rows` rows. */
static uint64_t block_rows(uint64_t rb, uint64_t rows) {
    uint64_t per = SYNTH_BLOCK_BYTES / rb;
    if (per > SYNTH_BLOCK_ROWS) per = SYNTH_BLOCK_ROWS;
    if (per > rows) per = rows;
    return per < 1 ? 1 : per;
}

int synth_put_matrix(struct synth_state *s, const char *name, int dtype,
                     uint64_t rows, uint64_t cols, float mean, float std) {
    uint64_t rb = quant_row_bytes(dtype, cols), per = block_rows(rb, rows);
    uint8_t *buf = sl_malloc((size_t)(per * rb)); /* (per, row bytes) */
    if (!buf)
        return sl_seterr(SL_ERR_NOMEM, "synth: cannot allocate %llu bytes for"
                         " a block of %s", (unsigned long long)(per * rb),
                         name);
    struct mat_task t = {.seed = seed_of_name(s->p->seed, name), .cols = cols,
                         .mean = mean, .std = std, .dtype = dtype, .out = buf};
    uint64_t dims[2] = {rows, cols};
    int rc = writer_begin_tensor(s->w, name, dtype, 2, dims);
    for (uint64_t r = 0; !rc && r < rows; r += per) {
        t.row0 = r;
        t.rows = rows - r < per ? rows - r : per;
        if (!(rc = fill_tasks(&t, 1, s->n_threads)))
            rc = writer_write_rows(s->w, buf, t.rows);
    }
    if (!rc) rc = writer_end_tensor(s->w);
    sl_free(buf);
    return rc;
}

/* A dense-dtype matrix, N(0, std^2). */
static int write_matrix(struct synth_state *s, const char *name, uint64_t rows,
                        uint64_t cols, float std) {
    return synth_put_matrix(s, name, s->p->dense_dtype, rows, cols, 0.0f, std);
}

int synth_put_vector(struct synth_state *s, const char *name, uint64_t n,
                     float mean, float std) {
    float *v = sl_malloc((size_t)n * sizeof *v); /* (n) */
    if (!v) return sl_seterr(SL_ERR_NOMEM, "synth: out of memory for %s", name);
    gen_row(v, n, seed_of_name(s->p->seed, name), 0, mean, std);
    uint64_t dims[1] = {n};
    int rc = writer_begin_tensor(s->w, name, SL_DTYPE_F32, 1, dims);
    if (!rc) rc = writer_write_rows(s->w, v, 1); /* 1-D: one row of n */
    if (!rc) rc = writer_end_tensor(s->w);
    sl_free(v);
    return rc;
}

/* Norm weights: f32, 1 + 0.02 N(0,1). */
static int write_norm(struct synth_state *s, const char *name, uint64_t n) {
    return synth_put_vector(s, name, n, 1.0f, 0.02f);
}

/* The router of layer l: unit-norm random rows, scaled to the layer's
 * target Gini by fit_router, stored in the dense dtype. */
int synth_put_router(struct synth_state *s, uint32_t l, const char *name) {
    const struct sl_config *c = &s->c;
    uint32_t E = c->n_experts, H = c->hidden;
    int dtype = s->p->dense_dtype;
    uint64_t rb = quant_row_bytes(dtype, H), per = block_rows(rb, E);
    /* The fit needs every row in f32 (E * H * 4 bytes: 8.4 MB for a17b's
     * 512 x 4096); the stored rows stream out in blocks. */
    float *r = sl_malloc((size_t)E * H * sizeof *r); /* (E, H) */
    uint8_t *q = sl_malloc((size_t)(per * rb));      /* (per, row bytes) */
    int rc = SL_OK;
    if (!r || !q) {
        rc = sl_seterr(SL_ERR_NOMEM, "synth: out of memory for %s", name);
        goto done;
    }
    struct mat_task t = {.seed = seed_of_name(s->p->seed, name), .rows = E,
                         .cols = H, .std = 1.0f, .dtype = SL_DTYPE_F32,
                         .out = (uint8_t *)r};
    if ((rc = fill_tasks(&t, 1, s->n_threads))) goto done;
    for (uint32_t e = 0; e < E; e++) {
        double ss = 0;
        for (uint32_t i = 0; i < H; i++)
            ss += (double)r[(size_t)e * H + i] * r[(size_t)e * H + i];
        float inv = ss > 0 ? (float)(1.0 / sqrt(ss)) : 0.0f;
        for (uint32_t i = 0; i < H; i++) r[(size_t)e * H + i] *= inv;
    }
    struct synth_params p = *s->p;
    p.cfg = *c;
    if ((rc = fit_router(&p, l, r, s->n_threads, &s->sigma[l], &s->target[l],
                         &s->stats[l])))
        goto done;
    uint64_t dims[2] = {E, H};
    rc = writer_begin_tensor(s->w, name, dtype, 2, dims);
    for (uint64_t e0 = 0; !rc && e0 < E; e0 += per) {
        uint64_t n = E - e0 < per ? E - e0 : per;
        for (uint64_t e = 0; e < n; e++)
            quant_row_from_f32(dtype, r + (size_t)(e0 + e) * H, q + e * rb, H);
        rc = writer_write_rows(s->w, q, n);
    }
    if (!rc) rc = writer_end_tensor(s->w);
    if (!rc && s->p->progress) {
        const struct synth_route_stats *st = &s->stats[l];
        float want = synth_layer_target(&p, l);
        fprintf(stderr, "synth: layer %3u router: gini %.3f (target %.3f%s), "
                "top-20 share %.1f%%, 50%% of activations on %u of %u experts"
                ", sigma %.3f\n", l, st->gini, (double)s->target[l],
                s->target[l] < want - 1e-6f ? ", capped: reach limit" : "",
                100 * st->top20_share, st->n_cover50, E, s->sigma[l]);
    }
done:
    sl_free(r);
    sl_free(q);
    return rc;
}

static int write_dense(struct synth_state *s) {
    const struct sl_config *c = &s->c;
    char n[SL_MAX_NAME + 1];
    float sh = 1.0f / sqrtf((float)c->hidden);
    int rc;
    /* Embedding rows have unit RMS, like the normed hidden state. */
    if ((rc = write_matrix(s, "model.embed_tokens.weight", c->n_vocab,
                           c->hidden, 1.0f)))
        return rc;
    for (uint32_t l = 0; l < c->n_layers; l++) {
        if (config_is_hybrid(c)) {
            if ((rc = synth_hybrid_write_layer(s, l))) return rc;
            continue;
        }
#define NAME(suffix) (snprintf(n, sizeof n, "model.layers.%u.%s", l, suffix), n)
        if ((rc = write_norm(s, NAME("input_layernorm.weight"), c->hidden)) ||
            (rc = write_matrix(s, NAME("self_attn.q_proj.weight"),
                               config_q_dim(c), c->hidden, sh)) ||
            (rc = write_matrix(s, NAME("self_attn.k_proj.weight"),
                               config_kv_dim(c), c->hidden, sh)) ||
            (rc = write_matrix(s, NAME("self_attn.v_proj.weight"),
                               config_kv_dim(c), c->hidden, sh)) ||
            (rc = write_matrix(s, NAME("self_attn.o_proj.weight"), c->hidden,
                               config_q_dim(c),
                               1.0f / sqrtf((float)config_q_dim(c)))) ||
            (rc = write_norm(s, NAME("self_attn.q_norm.weight"), c->head_dim)) ||
            (rc = write_norm(s, NAME("self_attn.k_norm.weight"), c->head_dim)) ||
            (rc = write_norm(s, NAME("post_attention_layernorm.weight"),
                             c->hidden)))
            return rc;
        if (c->layer_is_moe[l]) {
            rc = synth_put_router(s, l, NAME("mlp.gate.weight"));
        } else if (!(rc = write_matrix(s, NAME("mlp.gate_proj.weight"), c->ffn,
                                       c->hidden, sh)) &&
                   !(rc = write_matrix(s, NAME("mlp.up_proj.weight"), c->ffn,
                                       c->hidden, sh))) {
            rc = write_matrix(s, NAME("mlp.down_proj.weight"), c->hidden,
                              c->ffn, 1.0f / sqrtf((float)c->ffn));
        }
        if (rc) return rc;
#undef NAME
    }
    if ((rc = write_norm(s, "model.norm.weight", c->hidden))) return rc;
    if (!c->tie_embeddings)
        rc = write_matrix(s, "lm_head.weight", c->n_vocab, c->hidden, sh);
    return rc;
}

static const char *const part_names[3] = {"gate_proj", "up_proj", "down_proj"};

static void expert_parts(const struct synth_state *s,
                         struct sl_expert_part parts[3]) {
    const struct sl_config *c = &s->c;
    memset(parts, 0, 3 * sizeof *parts);
    for (int i = 0; i < 3; i++) {
        parts[i].dtype = s->p->expert_dtype;
        parts[i].rows = i < 2 ? c->moe_ffn : c->hidden;
        parts[i].cols = i < 2 ? c->hidden : c->moe_ffn;
    }
}

/* Bytes of expert records drawn at once (s->batch is capped by it). */
#define SYNTH_BATCH_BYTES ((uint64_t)64 << 20)

/* The records of layer l, in batches of s->batch experts drawn in
 * parallel and appended in expert order. */
static int write_experts(struct synth_state *s, uint32_t l) {
    const struct sl_config *c = &s->c;
    struct sl_expert_part parts[3];
    expert_parts(s, parts);
    int rc = writer_begin_experts(s->w, l, c->n_experts, parts);
    if (rc) return rc;
    uint64_t psize[3];
    for (int i = 0; i < 3; i++)
        psize[i] = parts[i].rows * quant_row_bytes(parts[i].dtype,
                                                   parts[i].cols);
    struct mat_task tasks[3 * 64];
    char n[SL_MAX_NAME + 1];
    for (uint32_t e0 = 0; e0 < c->n_experts; e0 += s->batch) {
        uint32_t nb = c->n_experts - e0 < s->batch ? c->n_experts - e0
                                                   : s->batch;
        for (uint32_t b = 0; b < nb; b++)
            for (int i = 0; i < 3; i++) {
                snprintf(n, sizeof n, "model.layers.%u.mlp.experts.%u.%s."
                         "weight", l, e0 + b, part_names[i]);
                tasks[3 * b + i] = (struct mat_task){
                    .seed = seed_of_name(s->p->seed, n),
                    .rows = parts[i].rows, .cols = parts[i].cols,
                    .std = 1.0f / sqrtf((float)parts[i].cols),
                    .dtype = parts[i].dtype, .out = s->slot[i] + b * psize[i]};
            }
        if ((rc = fill_tasks(tasks, (int)(3 * nb), s->n_threads))) return rc;
        for (uint32_t b = 0; b < nb; b++) {
            const void *data[3] = {s->slot[0] + b * psize[0],
                                   s->slot[1] + b * psize[1],
                                   s->slot[2] + b * psize[2]};
            if ((rc = writer_add_expert(s->w, l, e0 + b, data))) return rc;
        }
    }
    return SL_OK;
}

/* The manifest: config_to_manifest plus a "synth" object recording how the
 * file was made (preset, seed, skew, achieved Gini per MoE layer). */
static int build_manifest(const struct synth_state *s, char **out,
                          size_t *out_len) {
    char *m;
    size_t len;
    int rc = config_to_manifest(&s->c, s->p->expert_dtype, s->p->dense_dtype,
                                &m, &len);
    if (rc) return rc;
    cJSON *root = cJSON_ParseWithLength(m, len);
    sl_free(m);
    cJSON *syn = root ? cJSON_AddObjectToObject(root, "synth") : NULL;
    cJSON *g = syn ? cJSON_AddArrayToObject(syn, "gini") : NULL;
    char seed[32];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)s->p->seed);
    int ok = g != NULL;
    ok = ok && cJSON_AddStringToObject(syn, "preset", s->p->preset ?
                                       s->p->preset : "custom");
    ok = ok && cJSON_AddStringToObject(syn, "seed", seed);
    ok = ok && cJSON_AddNumberToObject(syn, "skew",
                                       round(s->p->skew * 1e4) / 1e4);
    for (uint32_t l = 0; ok && l < s->c.n_layers; l++)
        if (s->c.layer_is_moe[l])
            ok = cJSON_AddItemToArray(
                g, cJSON_CreateNumber(round(s->stats[l].gini * 1e4) / 1e4));
    char *txt = ok ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    if (!txt) return sl_seterr(SL_ERR_NOMEM, "synth: manifest: out of memory");
    *out_len = strlen(txt);
    *out = sl_malloc(*out_len + 1);
    if (*out) memcpy(*out, txt, *out_len + 1);
    cJSON_free(txt);
    return *out ? SL_OK : sl_seterr(SL_ERR_NOMEM, "synth: out of memory");
}

/* The embedded tokenizer and a minimal tokenizer config (eos token, and a
 * ChatML template when the tokenizer has <|im_start|> / <|im_end|>). */
static int write_tokenizer(struct synth_state *s) {
    char *json;
    size_t len;
    int rc = sl_read_file(s->p->tokenizer_path, &json, &len);
    if (rc) return sl_preerr(rc, "tokenizer: ");
    rc = writer_set_section(s->w, SL_SECTION_TOKENIZER, json, len);
    int chatml = strstr(json, "\"<|im_start|>\"") && strstr(json,
                                                            "\"<|im_end|>\"");
    int eot = strstr(json, "\"<|endoftext|>\"") != NULL;
    sl_free(json);
    if (rc) return rc;
    cJSON *r = cJSON_CreateObject();
    int ok = r && cJSON_AddBoolToObject(r, "add_bos_token", 0);
    if (ok && eot) ok = cJSON_AddStringToObject(r, "eos_token",
                                                "<|endoftext|>") != NULL;
    if (ok && chatml)
        ok = cJSON_AddStringToObject(
                 r, "chat_template",
                 "{% for message in messages %}{{'<|im_start|>' + "
                 "message['role'] + '\\n' + message['content'] + "
                 "'<|im_end|>' + '\\n'}}{% endfor %}{% if "
                 "add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                 "{% endif %}") != NULL;
    char *txt = ok ? cJSON_Print(r) : NULL;
    cJSON_Delete(r);
    if (!txt) return sl_seterr(SL_ERR_NOMEM, "synth: out of memory");
    rc = writer_set_section(s->w, SL_SECTION_TOKENIZER_CONFIG, txt,
                            strlen(txt));
    cJSON_free(txt);
    return rc;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void fill_report(const struct synth_state *s, const struct sl_file *f,
                        double t0, struct synth_report *rep) {
    memset(rep, 0, sizeof *rep);
    rep->file_bytes = f->size;
    rep->expert_bytes = f->expert_bytes;
    rep->dense_bytes = f->dense_bytes;
    rep->seconds = sl_now() - t0;
    double g[SL_MAX_LAYERS];
    uint32_t n = 0;
    struct synth_params p = *s->p;
    p.cfg = s->c;
    for (uint32_t l = 0; l < s->c.n_layers; l++) {
        if (!s->c.layer_is_moe[l]) continue;
        g[n++] = s->stats[l].gini;
        rep->n_capped += s->target[l] < synth_layer_target(&p, l) - 1e-6f;
    }
    if (!n) return;
    qsort(g, n, sizeof *g, cmp_double);
    rep->gini_min = g[0];
    rep->gini_max = g[n - 1];
    rep->gini_median = n % 2 ? g[n / 2] : 0.5 * (g[n / 2 - 1] + g[n / 2]);
}

int synth_write(const struct synth_params *p, const char *out_path,
                struct synth_report *report) {
    double t0 = sl_now();
    struct synth_state s = {.p = p};
    int rc = synth_check(p, &s.c);
    if (rc) return rc;
    uint32_t L = s.c.n_layers;
    s.n_threads = p->n_threads > 0 ? p->n_threads : sl_n_cpus();
    if (s.n_threads > 256) s.n_threads = 256;
    s.batch = (uint32_t)(2 * s.n_threads);
    if (s.batch > 64) s.batch = 64;
    if (s.batch > s.c.n_experts) s.batch = s.c.n_experts;
    struct sl_expert_part parts[3];
    expert_parts(&s, parts);
    /* At most SYNTH_BATCH_BYTES of expert records at a time (one record at
     * least): a record's 3 parts already give every thread work. */
    uint64_t rec = 0;
    for (int i = 0; i < 3; i++)
        rec += parts[i].rows * quant_row_bytes(parts[i].dtype, parts[i].cols);
    if ((uint64_t)s.batch * rec > SYNTH_BATCH_BYTES)
        s.batch = rec >= SYNTH_BATCH_BYTES
                      ? 1 : (uint32_t)(SYNTH_BATCH_BYTES / rec);
    s.stats = sl_calloc(L, sizeof *s.stats);
    s.sigma = sl_calloc(L, sizeof *s.sigma);
    s.target = sl_calloc(L, sizeof *s.target);
    int ok = s.stats && s.sigma && s.target;
    for (int i = 0; ok && i < 3; i++) {
        uint64_t sz = parts[i].rows *
                      quant_row_bytes(parts[i].dtype, parts[i].cols);
        ok = (s.slot[i] = sl_malloc((size_t)(sz * s.batch))) != NULL;
    }
    if (!ok) {
        rc = sl_seterr(SL_ERR_NOMEM, "synth: out of memory");
        goto done;
    }
    /* The expert progress line rewrites itself: terminals only. */
    int tty = p->progress && isatty(2);
    if ((rc = writer_open(&s.w, out_path))) goto done;
    if ((p->tokenizer_path && (rc = write_tokenizer(&s))) ||
        (rc = write_dense(&s)))
        goto done;
    for (uint32_t l = 0; l < L; l++) {
        if (!s.c.layer_is_moe[l]) continue;
        if ((rc = write_experts(&s, l))) goto done;
        if (tty)
            fprintf(stderr, "\rsynth: experts of layer %u/%u written (%.1f s)",
                    l + 1, L, sl_now() - t0);
    }
    if (tty) fputc('\n', stderr);
    char *manifest = NULL;
    size_t mlen = 0;
    if (!(rc = build_manifest(&s, &manifest, &mlen)))
        rc = writer_set_section(s.w, SL_SECTION_MANIFEST, manifest, mlen);
    sl_free(manifest);
done:
    if (s.w) {
        int rc2 = writer_close(s.w, rc == SL_OK);
        if (!rc) rc = rc2;
    }
    if (!rc) {
        /* Re-open: proves the file validates and gives the sizes. */
        struct sl_file f;
        if ((rc = file_open(&f, out_path, 0))) {
            sl_preerr(rc, "synth: wrote %s but it does not open: ", out_path);
        } else {
            if (report) fill_report(&s, &f, t0, report);
            file_close(&f);
        }
    }
    for (int i = 0; i < 3; i++) sl_free(s.slot[i]);
    sl_free(s.stats);
    sl_free(s.sigma);
    sl_free(s.target);
    return rc;
}
