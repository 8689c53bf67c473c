/*
 * soak.c — the soak run (docs/robustness.md): thousands of generated tokens
 * through a tiny expert cache, with random truncations and context and
 * model churn, checked token for token against a reference run with every
 * expert resident, while RSS is sampled against a budget.
 *
 * Usage: build/bench/soak [--model PATH] [--tokens N] [--cache-records R]
 *                         [--seed S] [--rss-slack MIB] [--threads T]
 *   Default model: the "tiny" synthetic preset written to a temporary
 *   directory; default 20000 tokens; cache of R records (default: one
 *   layer's experts); RSS may grow at most MIB (default 8) past its value
 *   after the first tenth of the run.
 *
 * One run is a seeded sequence of episodes: a random prompt (1..32 ids),
 * then sampled tokens (seeded sampler); at random points the sequence is
 * truncated to a random prefix (sl_context_truncate, then its last token is
 * evaluated again for fresh logits); a full context truncates too. In the
 * checked run only, about every 97th step saves the state to a file, resets
 * the context and loads the state back (sl_state_save / sl_state_load), so
 * the reference run proves the round trip changed nothing. Every 7th
 * episode frees the context and creates a new one; every 29th closes and
 * reopens the model. The run hashes every logits vector (FNV-1a); the soak
 * run (tiny cache) must produce exactly the reference run's hashes and
 * tokens. Exits 0 when outputs match and RSS stayed in budget.
 *
 * Not a CI test (minutes, and RSS depends on the allocator); not yet
 * covered: file truncation mid-run (tests/test_faults.c has it).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model.h"
#include "sluice.h"
#include "synth.h"
#include "util.h"

#define N_CTX 256

struct run_out {
    uint64_t *hashes; /* (n_tokens) FNV-1a of each logits vector */
    int32_t *tokens;  /* (n_tokens) the token evaluated at each step */
    size_t n;
    size_t n_state_roundtrips; /* save -> reset -> load cycles */
    long rss_after_warmup_kib, rss_max_kib;
    double seconds;
    struct sl_stats stats;
};

static long rss_kib(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, rss = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &rss) != 2) rss = 0;
        fclose(f);
    }
    return rss * (sysconf(_SC_PAGESIZE) / 1024);
}

static uint64_t rng_next(uint64_t *s) { /* splitmix64 */
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int die(const char *what) {
    fprintf(stderr, "soak: %s: %s\n", what, sl_errmsg());
    return 1;
}

/* Generates n_tokens under mp; fills *o. */
static int run(const char *path, const struct sl_model_params *mp, size_t n_tokens,
               uint64_t seed, const char *state_path, struct run_out *o) {
    memset(o, 0, sizeof *o);
    o->hashes = calloc(n_tokens, sizeof *o->hashes);
    o->tokens = calloc(n_tokens, sizeof *o->tokens);
    int32_t *seq = calloc(N_CTX, sizeof *seq); /* tokens in the context */
    if (!o->hashes || !o->tokens || !seq) return die("out of memory");
    struct sl_model *m = NULL;
    struct sl_context *ctx = NULL;
    struct sl_sampler *smp = NULL;
    struct sl_context_params cp = sl_context_default_params();
    cp.n_ctx = N_CTX;
    cp.n_batch = 16;
    uint64_t rng = seed;
    double t0 = sl_now();
    for (size_t ep = 0; o->n < n_tokens; ep++) {
        if (!m || ep % 29 == 28) {
            sl_context_free(ctx);
            ctx = NULL;
            sl_sampler_free(smp);
            smp = NULL;
            sl_model_close(m);
            if (sl_model_open(path, mp, &m)) return die("open");
        }
        if (!ctx || ep % 7 == 6) {
            sl_context_free(ctx);
            if (sl_context_create(m, &cp, &ctx)) return die("context");
        }
        int32_t nv = sl_model_n_vocab(m);
        if (!smp) {
            struct sl_sampler_params sp = sl_sampler_default_params();
            sp.seed = seed ^ ep;
            if (sl_sampler_create(&sp, nv, &smp)) return die("sampler");
        }
        /* prompt */
        sl_context_reset(ctx);
        uint32_t len = 1 + (uint32_t)(rng_next(&rng) % 32);
        for (uint32_t i = 0; i < len; i++) seq[i] = (int32_t)(rng_next(&rng) % (uint64_t)nv);
        if (sl_eval(ctx, seq, len, NULL)) return die("prompt");
        uint32_t steps = 16 + (uint32_t)(rng_next(&rng) % 400);
        for (uint32_t s = 0; s < steps && o->n < n_tokens; s++) {
            const float *lg = sl_logits(ctx);
            o->hashes[o->n] = sl_fnv1a64(lg, (size_t)nv * sizeof(float), SL_FNV_SEED);
            int32_t id = sl_sample(smp, lg);
            o->tokens[o->n++] = id;
            if (o->n % 100 == 0 || o->n == n_tokens / 10) {
                long r = rss_kib();
                if (o->n == n_tokens / 10) o->rss_after_warmup_kib = r;
                if (r > o->rss_max_kib) o->rss_max_kib = r;
            }
            if (len == N_CTX || rng_next(&rng) % 64 == 0) {
                /* truncate to a random prefix (sl_context_truncate), then
                 * evaluate its last token again for fresh logits */
                len = 1 + (uint32_t)(rng_next(&rng) % len);
                if (sl_context_truncate(ctx, len - 1)) return die("truncate");
                if (sl_eval(ctx, &seq[len - 1], 1, NULL)) return die("re-evaluate last token");
                continue;
            }
            /* save the state, forget everything, load it back: only in the
             * checked run, so the reference run proves it changed nothing */
            if (rng_next(&rng) % 97 == 0 && state_path) {
                if (sl_state_save(ctx, state_path)) return die("state save");
                sl_context_reset(ctx);
                if (sl_state_load(ctx, state_path)) return die("state load");
                o->n_state_roundtrips++;
            }
            seq[len++] = id;
            if (sl_eval(ctx, &id, 1, NULL)) return die("decode");
        }
    }
    o->seconds = sl_now() - t0;
    if (ctx) sl_context_stats(ctx, &o->stats);
    sl_context_free(ctx);
    sl_sampler_free(smp);
    sl_model_close(m);
    free(seq);
    return 0;
}

int main(int argc, char **argv) {
    const char *model = NULL;
    size_t n_tokens = 20000;
    long cache_records = 0, slack_mib = 8;
    uint64_t seed = 1234;
    int threads = 2;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) goto usage;
        if (!strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--tokens")) n_tokens = (size_t)strtoull(v, NULL, 10);
        else if (!strcmp(a, "--cache-records")) cache_records = strtol(v, NULL, 10);
        else if (!strcmp(a, "--seed")) seed = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--rss-slack")) slack_mib = strtol(v, NULL, 10);
        else if (!strcmp(a, "--threads")) threads = (int)strtol(v, NULL, 10);
        else goto usage;
        i++;
    }
    if (n_tokens < 100) n_tokens = 100;
    char dir[64] = "", path[128];
    if (!model) {
        snprintf(dir, sizeof dir, "/tmp/soak.XXXXXX");
        if (!mkdtemp(dir)) return die("mkdtemp");
        snprintf(path, sizeof path, "%s/tiny.sluice", dir);
        struct synth_params p;
        synth_preset("tiny", &p);
        if (synth_write(&p, path, NULL)) return die("synth");
        model = path;
    }
    /* record size and shape, from the model itself */
    struct sl_model *m;
    if (sl_model_open(model, NULL, &m)) return die("open");
    uint64_t n_records = 0;
    for (uint32_t l = 0; l < m->cfg.n_layers; l++)
        n_records += m->cfg.layer_is_moe[l] ? m->cfg.n_experts : 0;
    uint64_t record = n_records ? sl_model_expert_bytes(m) / n_records : 0;
    if (cache_records <= 0) cache_records = (long)m->cfg.n_experts;
    printf("soak: model %s: %s\n", model, sl_model_desc(m));
    sl_model_close(m);

    struct sl_model_params ref_p = sl_model_default_params(), soak_p = ref_p;
    ref_p.n_threads = soak_p.n_threads = threads;
    ref_p.ram_cache_bytes = SL_RAM_CACHE_ALL;
    soak_p.ram_cache_bytes = (uint64_t)cache_records * record;
    struct run_out ref, got;
    char state_dir[] = "/tmp/soak_state.XXXXXX", state_path[sizeof state_dir + 16];
    if (!mkdtemp(state_dir)) return die("mkdtemp");
    snprintf(state_path, sizeof state_path, "%s/state", state_dir);
    if (run(model, &ref_p, n_tokens, seed, NULL, &ref)) return 1;
    printf("soak: reference (all experts resident): %zu tokens in %.1f s\n", ref.n, ref.seconds);
    int rc_got = run(model, &soak_p, n_tokens, seed, state_path, &got);
    unlink(state_path);
    rmdir(state_dir);
    if (rc_got) return 1;
    printf("soak: %zu state save/reset/load round trips in the checked run\n",
           got.n_state_roundtrips);
    printf("soak: tiny cache (%ld records, %.1f KiB): %zu tokens in %.1f s; last context: "
           "%llu hits, %llu misses, %llu evictions, peak %.1f KiB cached\n",
           cache_records, soak_p.ram_cache_bytes / 1024.0, got.n, got.seconds,
           (unsigned long long)got.stats.cache_hits, (unsigned long long)got.stats.cache_misses,
           (unsigned long long)got.stats.cache_evictions, got.stats.cache_peak_bytes / 1024.0);
    size_t first_diff = got.n;
    for (size_t i = 0; i < got.n && first_diff == got.n; i++)
        if (got.hashes[i] != ref.hashes[i] || got.tokens[i] != ref.tokens[i]) first_diff = i;
    long growth = got.rss_max_kib - got.rss_after_warmup_kib;
    printf("soak: RSS after warm-up %ld KiB, max %ld KiB, growth %ld KiB (budget %ld KiB)\n",
           got.rss_after_warmup_kib, got.rss_max_kib, growth, slack_mib * 1024);
    int ok = 1;
    if (got.n != ref.n || first_diff != got.n) {
        printf("soak: FAILED: outputs differ from the reference at token %zu\n", first_diff);
        ok = 0;
    } else {
        printf("soak: outputs identical to the reference (%zu logits hashes)\n", got.n);
    }
    if (growth > slack_mib * 1024) {
        printf("soak: FAILED: RSS grew beyond the budget\n");
        ok = 0;
    }
    if (dir[0]) {
        unlink(path);
        rmdir(dir);
    }
    free(ref.hashes);
    free(ref.tokens);
    free(got.hashes);
    free(got.tokens);
    printf("soak: %s\n", ok ? "passed" : "FAILED");
    return ok ? 0 : 1;
usage:
    fprintf(stderr, "usage: soak [--model PATH] [--tokens N] [--cache-records R] [--seed S] "
                    "[--rss-slack MIB] [--threads T]\n");
    return 2;
}
