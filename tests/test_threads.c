/*
 * test_threads.c — concurrency of the threaded parts: two contexts, each
 * with its own thread pool, driven from two threads over ONE shared model
 * (file mapping, expert store, tokenizer), must give logits bit-identical to
 * the same work done one context at a time. Run by `make test`, and under
 * ThreadSanitizer by `make tsan` (where any data race fails the run).
 *
 * The model is a tiny synthetic qwen3_moe written to a temporary directory
 * (src/synth.h) with the GPT-2 style fixture tokenizer embedded, so that the
 * threads also tokenize concurrently on the shared tokenizer.
 *
 * What it is not: a performance test, or a test of one context used from two
 * threads (a context is used by one thread at a time, sluice.h).
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model.h"
#include "sluice.h"
#include "synth.h"
#include "test.h"
#include "util.h"

#define GPT2_TOKENIZER "tests/fixtures/tokenizer/gpt2style/tokenizer.json"
#define N_DECODE 6 /* greedy decode steps after each prompt */
#define N_ROUNDS 3 /* prompt + decode, then reset, this many times */

static char tmp_dir[64];
static char model_path[128];

static void cleanup(void) {
    if (model_path[0]) unlink(model_path);
    if (tmp_dir[0]) rmdir(tmp_dir);
}

/* Writes the tiny model once; returns its path or NULL (with a message). */
static const char *tiny_model(void) {
    if (model_path[0]) return model_path;
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/test_threads.XXXXXX");
    if (!mkdtemp(tmp_dir)) return NULL;
    atexit(cleanup);
    snprintf(model_path, sizeof model_path, "%s/tiny.sluice", tmp_dir);
    struct synth_params p;
    if (synth_preset("tiny", &p) != SL_OK) return NULL;
    p.cfg.n_vocab = 0; /* the tokenizer's size */
    p.tokenizer_path = GPT2_TOKENIZER;
    p.n_threads = 2;
    if (synth_write(&p, model_path, NULL) != SL_OK) {
        fprintf(stderr, "  synth_write: %s\n", sl_errmsg());
        model_path[0] = 0;
        return NULL;
    }
    return model_path;
}

/* One worker's job: prompt text -> ids -> logits of every prompt token,
 * then greedy decode; every logits row is recorded in out. */
struct job {
    struct sl_model *model;
    const char *prompt;
    int n_threads;         /* of the context's pool */
    uint32_t n_batch;
    float *out;            /* (N_ROUNDS, n_rows, n_vocab) */
    size_t n_rows;         /* prompt tokens + N_DECODE */
    int32_t decoded[N_DECODE];
    int status;
    char err[256];
};

static int job_fail(struct job *j, int st) {
    j->status = st;
    snprintf(j->err, sizeof j->err, "%s", sl_errmsg());
    return st;
}

static void *job_run(void *arg) {
    struct job *j = arg;
    const struct sl_tokenizer *tok = sl_model_tokenizer(j->model);
    int32_t nv = sl_model_n_vocab(j->model);
    int32_t *ids = NULL;
    size_t n = 0;
    struct sl_context *ctx = NULL;
    struct sl_context_params cp = sl_context_default_params();
    cp.n_ctx = 256;
    cp.n_batch = j->n_batch;
    cp.n_threads = j->n_threads;
    if (job_fail(j, sl_tokenize(tok, j->prompt, strlen(j->prompt), &ids, &n))) goto done;
    if (n + N_DECODE != j->n_rows) {
        snprintf(j->err, sizeof j->err, "prompt gave %zu tokens, expected %zu", n,
                 j->n_rows - N_DECODE);
        j->status = SL_ERR_INTERNAL;
        goto done;
    }
    if (job_fail(j, sl_context_create(j->model, &cp, &ctx))) goto done;
    for (int r = 0; r < N_ROUNDS; r++) {
        float *rows = j->out + (size_t)r * j->n_rows * (size_t)nv;
        sl_context_reset(ctx);
        if (job_fail(j, sl_eval(ctx, ids, n, rows))) goto done;
        for (int s = 0; s < N_DECODE; s++) {
            const float *lg = sl_logits(ctx);
            int32_t best = 0;
            for (int32_t v = 1; v < nv; v++)
                if (lg[v] > lg[best]) best = v;
            j->decoded[s] = best;
            if (job_fail(j, sl_eval(ctx, &best, 1, NULL))) goto done;
            memcpy(rows + (n + (size_t)s) * (size_t)nv, sl_logits(ctx),
                   (size_t)nv * sizeof(float));
        }
    }
    j->status = SL_OK;
done:
    sl_context_free(ctx);
    free(ids);
    return NULL;
}

static size_t prompt_rows(struct sl_model *m, const char *prompt) {
    int32_t *ids;
    size_t n;
    if (sl_tokenize(sl_model_tokenizer(m), prompt, strlen(prompt), &ids, &n)) return 0;
    free(ids);
    return n + N_DECODE;
}

static void job_init(struct job *j, struct sl_model *m, const char *prompt, int n_threads,
                     uint32_t n_batch) {
    memset(j, 0, sizeof *j);
    j->model = m;
    j->prompt = prompt;
    j->n_threads = n_threads;
    j->n_batch = n_batch;
    j->n_rows = prompt_rows(m, prompt);
    j->out = calloc((size_t)N_ROUNDS * j->n_rows * (size_t)sl_model_n_vocab(m), sizeof(float));
}

static int bits_equal(const struct job *a, const struct job *b, int32_t nv) {
    return a->n_rows == b->n_rows &&
           memcmp(a->out, b->out, (size_t)N_ROUNDS * a->n_rows * (size_t)nv * sizeof(float)) == 0 &&
           memcmp(a->decoded, b->decoded, sizeof a->decoded) == 0;
}

static const char *prompts[2] = {
    "The quick brown fox jumps over the lazy dog, again and again.",
    "Hello, world! 12345 <|endoftext|> and some more text here",
};

/* Bytes of one expert record of the tiny model. */
static uint64_t record_bytes(const char *path) {
    struct sl_model *m;
    if (sl_model_open(path, NULL, &m)) return 0;
    uint64_t n = 0;
    for (uint32_t l = 0; l < m->cfg.n_layers; l++) n += m->cfg.layer_is_moe[l] ? m->cfg.n_experts : 0;
    uint64_t r = n ? sl_model_expert_bytes(m) / n : 0;
    sl_model_close(m);
    return r;
}

/* Two contexts (each with a pool of pool_threads) on two threads over one
 * model, against the same jobs run one after the other on this thread.
 * cache_records > 0 bounds the shared expert cache to that many records
 * (evictions, demand reads and prefetches from both threads at once). */
static void run_concurrent(int pool_threads, uint32_t n_batch, int cache_records) {
    const char *path = tiny_model();
    if (!path) TEST_SKIP("cannot write the tiny model (%s)", sl_errmsg());
    struct sl_model *m;
    struct sl_model_params mp = sl_model_default_params();
    mp.n_threads = pool_threads;
    if (cache_records > 0) {
        mp.ram_cache_bytes = (uint64_t)cache_records * record_bytes(path);
        mp.prefetch = SL_PREFETCH_ALWAYS;
        mp.io_threads = 2;
    }
    CHECK_EQ_INT(sl_model_open(path, &mp, &m), SL_OK);
    if (!m) return;
    int32_t nv = sl_model_n_vocab(m);
    struct job ref[2], par[2];
    for (int i = 0; i < 2; i++) {
        job_init(&ref[i], m, prompts[i], pool_threads, n_batch);
        job_init(&par[i], m, prompts[i], pool_threads, n_batch);
        CHECK(ref[i].n_rows > N_DECODE && ref[i].out && par[i].out);
    }
    /* reference: one context at a time, on this thread */
    for (int i = 0; i < 2; i++) {
        job_run(&ref[i]);
        CHECK_MSG(ref[i].status == SL_OK, "reference %d: %s", i, ref[i].err);
    }
    /* concurrent: both at once */
    pthread_t th[2];
    int started[2] = {0, 0};
    for (int i = 0; i < 2; i++)
        started[i] = pthread_create(&th[i], NULL, job_run, &par[i]) == 0;
    for (int i = 0; i < 2; i++)
        if (started[i]) pthread_join(th[i], NULL);
    for (int i = 0; i < 2; i++) {
        CHECK(started[i]);
        CHECK_MSG(par[i].status == SL_OK, "thread %d: %s", i, par[i].err);
        CHECK_MSG(bits_equal(&par[i], &ref[i], nv),
                  "thread %d (pool of %d, n_batch %u): logits differ from the serial run", i,
                  pool_threads, n_batch);
        /* rounds after a reset repeat the first exactly */
        size_t per = par[i].n_rows * (size_t)nv;
        for (int r = 1; r < N_ROUNDS; r++)
            CHECK(memcmp(par[i].out, par[i].out + r * per, per * sizeof(float)) == 0);
    }
    /* the two prompts really differ (the comparison is not vacuous) */
    CHECK(par[0].n_rows != par[1].n_rows ||
          memcmp(par[0].out, par[1].out, par[0].n_rows * (size_t)nv * sizeof(float)) != 0);
    for (int i = 0; i < 2; i++) {
        free(ref[i].out);
        free(par[i].out);
    }
    sl_model_close(m);
}

TEST(test_two_contexts_single_thread_pools) { run_concurrent(1, 64, 0); }

TEST(test_two_contexts_two_thread_pools) { run_concurrent(2, 64, 0); }

TEST(test_two_contexts_small_batches) { run_concurrent(2, 5, 0); }

/* The expert store's I/O pool, eviction and prefetch under two threads: a
 * cache of 3 records (of 8) forces reads and evictions on every layer. */
TEST(test_two_contexts_tiny_expert_cache) { run_concurrent(2, 5, 3); }

/* A pool of any size computes exactly what a pool of one does: the CPU
 * backend splits work by output rows, never a reduction across threads. */
TEST(test_thread_count_does_not_change_logits) {
    const char *path = tiny_model();
    if (!path) TEST_SKIP("cannot write the tiny model (%s)", sl_errmsg());
    struct sl_model *m;
    CHECK_EQ_INT(sl_model_open(path, NULL, &m), SL_OK);
    if (!m) return;
    int32_t nv = sl_model_n_vocab(m);
    struct job one, many;
    job_init(&one, m, prompts[0], 1, 7);
    job_init(&many, m, prompts[0], 3, 7);
    job_run(&one);
    job_run(&many);
    CHECK_MSG(one.status == SL_OK && many.status == SL_OK, "%s %s", one.err, many.err);
    CHECK(bits_equal(&one, &many, nv));
    free(one.out);
    free(many.out);
    sl_model_close(m);
}

TEST_MAIN()
