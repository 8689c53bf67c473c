/*
 * test_expert_store.c — the bounded expert cache (src/expert_store*.c,
 * src/expert_io.c, src/expert_policy.c) and the streaming forward pass.
 *
 * Invariants tested: logits are bit-identical between the file mapping,
 * --ram-cache all, a cache of a few records, every policy, prefetch off /
 * auto / always, direct and buffered I/O, io_uring and pread threads, and
 * two contexts sharing one store; the budget is a hard limit; the peak RSS
 * of `sluice logits` on a model whose experts are 12x the budget stays under
 * dense + budget + KV + 64 MiB; injected EIO, short reads, slow reads and a
 * file truncated while open give a clear SL_ERR_IO, no wrong logits, and a
 * context that works again once reads work; profiles round-trip; sizes
 * parse.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <spawn.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "context.h"
#include "expert_store.h"
#include "model.h"
#include "synth.h"
#include "test.h"
#include "util.h"

extern char **environ;

#define N_TOK 9
static const int32_t toks[N_TOK] = {3, 141, 59, 26, 5, 35, 89, 79, 32};
static char model_path[256];
static float *ref_logits; /* (N_TOK, n_vocab) via the file mapping */
static int n_vocab;

/* A model whose experts (4 layers x 32 x 0.75 MiB = 96 MiB) dwarf an 8 MiB
 * budget (and the RSS bound's 64 MiB slack, so that touching the experts
 * through the mapping would show); bf16 experts: one record, one read. */
static const char *test_model(void) {
    if (model_path[0]) return model_path;
    snprintf(model_path, sizeof model_path, "/tmp/sl_test_store_%d.sluice", (int)getpid());
    struct synth_params p;
    synth_preset("tiny", &p);
    p.cfg.hidden = 256;
    p.cfg.n_heads = 4;
    p.cfg.n_kv_heads = 2;
    p.cfg.head_dim = 64;
    p.cfg.n_experts = 32;
    p.cfg.n_experts_used = 4;
    p.cfg.moe_ffn = 512;
    p.cfg.ffn = 512;
    p.cfg.n_vocab = 256;
    p.expert_dtype = SL_DTYPE_BF16;
    p.dense_dtype = SL_DTYPE_BF16;
    p.skew = 0.3f;
    p.seed = 7;
    synth_set_layers(&p, 4);
    if (synth_write(&p, model_path, NULL) != SL_OK) {
        fprintf(stderr, "synth: %s\n", sl_errmsg());
        model_path[0] = 0;
        return NULL;
    }
    return model_path;
}

static struct sl_model_params params(uint64_t cache, int io, int policy, int prefetch) {
    struct sl_model_params mp = sl_model_default_params();
    mp.n_threads = 2;
    mp.ram_cache_bytes = cache;
    mp.io_mode = io;
    mp.cache_policy = policy;
    mp.prefetch = prefetch;
    return mp;
}

/* Prefill of 5 tokens in chunks of 2, then 4 decode steps: every row of
 * logits into out (N_TOK, n_vocab). Returns the status of the first
 * failing eval. */
static int run_tokens(struct sl_model *m, float *out) {
    struct sl_context_params cp = sl_context_default_params();
    cp.n_ctx = 32;
    cp.n_batch = 2;
    struct sl_context *ctx;
    int st = sl_context_create(m, &cp, &ctx);
    if (st) return st;
    int nv = sl_model_n_vocab(m);
    st = sl_eval(ctx, toks, 5, out);
    for (int i = 5; !st && i < N_TOK; i++) {
        st = sl_eval(ctx, &toks[i], 1, NULL);
        if (!st) memcpy(out + (size_t)i * nv, sl_logits(ctx), (size_t)nv * sizeof(float));
    }
    sl_context_free(ctx);
    return st;
}

static int reference(void) {
    if (ref_logits) return 1;
    if (!test_model()) return 0;
    struct sl_model_params mp = params(0, SL_IO_MMAP, 0, 0);
    struct sl_model *m;
    if (sl_model_open(model_path, &mp, &m) != SL_OK) return 0;
    n_vocab = sl_model_n_vocab(m);
    ref_logits = malloc((size_t)N_TOK * n_vocab * sizeof(float));
    int ok = ref_logits && run_tokens(m, ref_logits) == SL_OK;
    sl_model_close(m);
    return ok;
}

/* Opens with mp, runs the tokens, compares bit for bit with the mapping. */
static void check_identical(const char *what, struct sl_model_params mp, struct sl_stats *st_out) {
    struct sl_model *m;
    int st = sl_model_open(model_path, &mp, &m);
    CHECK_MSG(st == SL_OK, "%s: open: %s", what, sl_errmsg());
    if (st) return;
    float *got = malloc((size_t)N_TOK * n_vocab * sizeof(float));
    st = run_tokens(m, got);
    CHECK_MSG(st == SL_OK, "%s: eval: %s", what, sl_errmsg());
    CHECK_MSG(st || !memcmp(got, ref_logits, (size_t)N_TOK * n_vocab * sizeof(float)),
              "%s: logits differ from the file mapping's", what);
    struct sl_stats s;
    struct sl_context *ctx;
    struct sl_context_params cp = sl_context_default_params();
    if (sl_context_create(m, &cp, &ctx) == SL_OK) {
        sl_context_stats(ctx, &s);
        CHECK_MSG(s.cache_peak_bytes <= s.cache_budget_bytes, "%s: peak %llu > budget %llu",
                  what, (unsigned long long)s.cache_peak_bytes,
                  (unsigned long long)s.cache_budget_bytes);
        if (st_out) *st_out = s;
        sl_context_free(ctx);
    }
    free(got);
    sl_model_close(m);
}

#define REC (768u * 1024u) /* one record: 3 x 256 x 512 bf16 */

TEST(test_identical_across_configs) {
    if (!reference()) {
        CHECK_MSG(0, "reference run failed: %s", sl_errmsg());
        return;
    }
    struct sl_stats s;
    check_identical("all", params(SL_RAM_CACHE_ALL, SL_IO_DIRECT, 0, 0), &s);
    CHECK(s.cache_misses > 0 && s.cache_evictions == 0);
    check_identical("default", params(SL_RAM_CACHE_DEFAULT, SL_IO_DEFAULT, 0, 0), NULL);
    /* 3 slots: fewer than the distinct experts of one chunk (up to 8) */
    check_identical("3 slots lru", params(3 * REC, SL_IO_DIRECT, SL_CACHE_LRU, SL_PREFETCH_OFF), &s);
    CHECK(s.cache_evictions > 0);
    CHECK_EQ_INT(s.cache_budget_bytes, 3 * REC);
    check_identical("3 slots lfu", params(3 * REC, SL_IO_DIRECT, SL_CACHE_LFU, SL_PREFETCH_OFF), NULL);
    check_identical("3 slots lfu prefetch", params(3 * REC, SL_IO_DIRECT, SL_CACHE_LFU,
                                                   SL_PREFETCH_ALWAYS), NULL);
    check_identical("8 MiB lru prefetch", params(8u << 20, SL_IO_DIRECT, SL_CACHE_LRU,
                                                 SL_PREFETCH_ALWAYS), &s);
    CHECK(s.prefetch_issued > 0 && s.prefetch_useful <= s.prefetch_issued);
    CHECK(s.lookahead_total > 0 && s.lookahead_hits <= s.lookahead_total);
    check_identical("8 MiB buffered", params(8u << 20, SL_IO_BUFFERED, 0, 0), NULL);
    struct sl_model_params mp = params(5 * REC, SL_IO_DIRECT, SL_CACHE_LRU, SL_PREFETCH_ALWAYS);
    mp.no_uring = 1;
    mp.io_threads = 3;
    check_identical("pread threads", mp, NULL);
    mp.io_threads = 1;
    check_identical("one read in flight", mp, NULL);
}

TEST(test_budget_errors) {
    if (!test_model()) return;
    struct sl_model_params mp = params(REC - 4096, SL_IO_DIRECT, 0, 0);
    struct sl_model *m = NULL;
    CHECK_EQ_INT(sl_model_open(model_path, &mp, &m), SL_ERR_ARG);
    CHECK_MSG(strstr(sl_errmsg(), "smaller than one expert record") != NULL, "%s", sl_errmsg());
    CHECK(m == NULL);
    mp = params(8u << 20, 9, 0, 0);
    CHECK_EQ_INT(sl_model_open(model_path, &mp, &m), SL_ERR_ARG);
    CHECK(strstr(sl_errmsg(), "I/O mode") != NULL);
    mp = params(8u << 20, SL_IO_DIRECT, 7, 0);
    CHECK_EQ_INT(sl_model_open(model_path, &mp, &m), SL_ERR_ARG);
    CHECK(strstr(sl_errmsg(), "policy") != NULL);
    /* default budget: at least 8 records, at most every expert */
    struct sl_model_params dp = params(0, SL_IO_DIRECT, 0, 0);
    CHECK_EQ_INT(sl_model_open(model_path, &dp, &m), SL_OK);
    if (m) {
        uint64_t b = expert_store_default_budget(&m->file, m->file.dense_bytes);
        CHECK(b >= 8ull * REC && b <= m->file.expert_bytes);
        sl_model_close(m);
    }
}

TEST(test_parse_size) {
    uint64_t v;
    CHECK_EQ_INT(sl_parse_size("512M", &v), SL_OK);
    CHECK_EQ_INT(v, 512ull << 20);
    CHECK_EQ_INT(sl_parse_size("4G", &v), SL_OK);
    CHECK_EQ_INT(v, 4ull << 30);
    CHECK_EQ_INT(sl_parse_size("1.5G", &v), SL_OK);
    CHECK_EQ_INT(v, 3ull << 29);
    CHECK_EQ_INT(sl_parse_size("64KiB", &v), SL_OK);
    CHECK_EQ_INT(v, 65536);
    CHECK_EQ_INT(sl_parse_size("65536", &v), SL_OK);
    CHECK_EQ_INT(v, 65536);
    CHECK_EQ_INT(sl_parse_size("all", &v), SL_OK);
    CHECK(v == SL_RAM_CACHE_ALL);
    const char *bad[] = {"", "0", "-1M", "12X", "4GG", "M", "1e30G", "all2"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        CHECK_MSG(sl_parse_size(bad[i], &v) == SL_ERR_ARG, "'%s' accepted", bad[i]);
        CHECK(strstr(sl_errmsg(), "size") != NULL);
    }
}

/* ---- fault injection through the read hook ---- */

struct fault {
    int mode;        /* 0 pass, 1 EIO, 2 short (half, then EOF), 3 slow */
    int after;       /* reads that pass before the fault */
    int n;           /* reads seen */
    pthread_mutex_t mu;
};

static ssize_t fault_pread(void *user, int fd, void *buf, size_t len, uint64_t off) {
    struct fault *f = user;
    pthread_mutex_lock(&f->mu);
    int k = f->n++;
    pthread_mutex_unlock(&f->mu);
    if (k >= f->after) {
        if (f->mode == 1) {
            errno = EIO;
            return -1;
        }
        if (f->mode == 2) {
            if (off % (2 * 4096) != 0) return 0; /* the rest: end of file */
            len = len / 2 / 4096 * 4096;
        }
        if (f->mode == 3) usleep(3000);
    }
    return pread(fd, buf, len, (off_t)off);
}

static void fault_case(int mode, const char *want_msg) {
    struct sl_model_params mp = params(4 * REC, SL_IO_DIRECT, 0, SL_PREFETCH_ALWAYS);
    struct sl_model *m;
    if (sl_model_open(model_path, &mp, &m) != SL_OK) {
        CHECK_MSG(0, "open: %s", sl_errmsg());
        return;
    }
    struct fault f = {mode, 6, 0, PTHREAD_MUTEX_INITIALIZER};
    struct expert_store_io io = {fault_pread, &f};
    CHECK_EQ_INT(expert_store_set_io(m->experts, &io), SL_OK);
    struct sl_context_params cp = sl_context_default_params();
    cp.n_ctx = 32;
    cp.n_batch = 2;
    struct sl_context *ctx;
    CHECK_EQ_INT(sl_context_create(m, &cp, &ctx), SL_OK);
    float *got = malloc((size_t)N_TOK * n_vocab * sizeof(float));
    int st = sl_eval(ctx, toks, 5, got);
    if (mode == 3) { /* slow reads: only slower */
        CHECK_EQ_INT(st, SL_OK);
        for (int i = 5; !st && i < N_TOK; i++) {
            st = sl_eval(ctx, &toks[i], 1, NULL);
            if (!st) memcpy(got + (size_t)i * n_vocab, sl_logits(ctx), (size_t)n_vocab * 4);
        }
        CHECK(!st && !memcmp(got, ref_logits, (size_t)N_TOK * n_vocab * sizeof(float)));
    } else {
        CHECK_EQ_INT(st, SL_ERR_IO);
        CHECK_MSG(strstr(sl_errmsg(), want_msg) && strstr(sl_errmsg(), "layer"), "%s",
                  sl_errmsg());
        CHECK_EQ_INT(sl_context_n_past(ctx), 0); /* rolled back */
        CHECK(sl_logits(ctx) == NULL);           /* no stale logits */
        /* reads work again: the same context gives the right answer */
        CHECK_EQ_INT(expert_store_set_io(m->experts, NULL), SL_OK);
        st = sl_eval(ctx, toks, 5, got);
        CHECK_MSG(st == SL_OK, "after recovery: %s", sl_errmsg());
        CHECK(!st && !memcmp(got, ref_logits, (size_t)5 * n_vocab * sizeof(float)));
    }
    free(got);
    sl_context_free(ctx);
    sl_model_close(m);
}

TEST(test_read_faults) {
    if (!reference()) return;
    fault_case(1, "Input/output error");
    fault_case(2, "short read");
    fault_case(3, "");
}

/* The file truncated while the model is open: both engines report a short
 * read; the mapping's dense pages stay valid (they precede the experts). */
TEST(test_truncated_while_running) {
    if (!reference()) return;
    char copy[300];
    snprintf(copy, sizeof copy, "%s.trunc", model_path);
    for (int no_uring = 0; no_uring < 2; no_uring++) {
        char cmd[700];
        snprintf(cmd, sizeof cmd, "cp %s %s", model_path, copy);
        CHECK_EQ_INT(system(cmd), 0);
        struct sl_model_params mp = params(4 * REC, SL_IO_DIRECT, 0, 0);
        mp.no_uring = no_uring;
        struct sl_model *m;
        if (sl_model_open(copy, &mp, &m) != SL_OK) {
            CHECK_MSG(0, "open: %s", sl_errmsg());
            break;
        }
        const struct sl_expert_layer *el = file_expert_layer(&m->file, 0);
        CHECK_EQ_INT(truncate(copy, (off_t)(el->offsets[0] + 2 * REC)), 0);
        float *got = malloc((size_t)N_TOK * n_vocab * sizeof(float));
        struct sl_context_params cp = sl_context_default_params();
        cp.n_batch = 2;
        struct sl_context *ctx;
        CHECK_EQ_INT(sl_context_create(m, &cp, &ctx), SL_OK);
        int st = sl_eval(ctx, toks, 5, got);
        CHECK_EQ_INT(st, SL_ERR_IO);
        CHECK_MSG(strstr(sl_errmsg(), "short read") || strstr(sl_errmsg(), "failed"), "%s",
                  sl_errmsg());
        CHECK_EQ_INT(sl_context_n_past(ctx), 0);
        CHECK_EQ_INT(sl_eval(ctx, toks, 1, NULL), SL_ERR_IO); /* again: still clear */
        sl_context_free(ctx);
        sl_model_close(m);
        free(got);
    }
    unlink(copy);
}

/* ---- two contexts on two threads share one small cache ---- */

struct worker {
    struct sl_model *m;
    float *out;
    int st;
};

static void *worker_run(void *arg) {
    struct worker *w = arg;
    w->st = run_tokens(w->m, w->out);
    return NULL;
}

TEST(test_shared_store_threads) {
    if (!reference()) return;
    struct sl_model_params mp = params(6 * REC, SL_IO_DIRECT, SL_CACHE_LRU, SL_PREFETCH_ALWAYS);
    mp.n_threads = 1;
    struct sl_model *m;
    if (sl_model_open(model_path, &mp, &m) != SL_OK) {
        CHECK_MSG(0, "open: %s", sl_errmsg());
        return;
    }
    struct worker w[2];
    pthread_t th[2];
    for (int i = 0; i < 2; i++) {
        w[i] = (struct worker){m, malloc((size_t)N_TOK * n_vocab * sizeof(float)), -1};
        pthread_create(&th[i], NULL, worker_run, &w[i]);
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(th[i], NULL);
        CHECK_EQ_INT(w[i].st, SL_OK);
        CHECK(!memcmp(w[i].out, ref_logits, (size_t)N_TOK * n_vocab * sizeof(float)));
        free(w[i].out);
    }
    sl_model_close(m);
}

/* ---- the store's own API ---- */

TEST(test_store_api) {
    if (!test_model()) return;
    struct sl_model_params mp = params(3 * REC, SL_IO_BUFFERED, SL_CACHE_LRU, SL_PREFETCH_OFF);
    struct sl_model *m;
    if (sl_model_open(model_path, &mp, &m) != SL_OK) return;
    struct expert_store *s = m->experts;
    struct expert_view v;
    CHECK_EQ_INT(expert_store_acquire(s, 0, 32, &v), SL_ERR_RANGE);
    CHECK_EQ_INT(expert_store_acquire(s, 5, 0, &v), SL_ERR_RANGE);
    int32_t bad[2] = {1, -1};
    CHECK_EQ_INT(expert_store_request(s, 0, bad, 2), SL_ERR_RANGE);
    /* a view holds exactly the record's bytes */
    CHECK_EQ_INT(expert_store_acquire(s, 1, 17, &v), SL_OK);
    const struct sl_expert_layer *el = file_expert_layer(&m->file, 1);
    CHECK_EQ_INT(v.bytes, el->record_size);
    CHECK(!memcmp(v.gate, m->file.map + el->offsets[17], el->record_size));
    expert_store_release(s, 1, 17);
    /* LRU: touching 0, 1, 2 then 0 and reading 3 evicts 1 */
    for (int e = 0; e < 3; e++) {
        CHECK_EQ_INT(expert_store_acquire(s, 0, (uint32_t)e, &v), SL_OK);
        expert_store_release(s, 0, (uint32_t)e);
    }
    CHECK_EQ_INT(expert_store_acquire(s, 0, 0, &v), SL_OK);
    expert_store_release(s, 0, 0);
    CHECK_EQ_INT(expert_store_acquire(s, 0, 3, &v), SL_OK);
    expert_store_release(s, 0, 3);
    struct sl_expert_layer_stats a, b;
    CHECK_EQ_INT(sl_model_expert_layer_stats(m, 0, &a), SL_OK);
    int32_t keep[2] = {0, 2};
    uint8_t done[2] = {0, 0};
    CHECK_EQ_INT(expert_store_request(s, 0, keep, 2), SL_OK);
    CHECK_EQ_INT(sl_model_expert_layer_stats(m, 0, &b), SL_OK);
    CHECK_EQ_INT(b.hits - a.hits, 2); /* 0 and 2 stayed; 1 went */
    expert_store_cancel(s, 0, keep, done, 2);
    CHECK(done[0] && done[1]);
    CHECK_EQ_INT(expert_store_request(s, 0, keep + 1, 1), SL_OK);
    CHECK_EQ_INT(sl_model_expert_layer_stats(m, 0, &a), SL_OK);
    CHECK_EQ_INT(a.hits - b.hits, 1);
    done[0] = 0;
    int idx;
    CHECK_EQ_INT(expert_store_acquire_next(s, 0, keep + 1, done, 1, &idx, &v), SL_OK);
    CHECK_EQ_INT(idx, 0);
    expert_store_release(s, 0, 2);
    /* pins: with every slot pinned a fourth request still completes once
     * a pin is dropped (the read waits for a slot, not forever) */
    int32_t four[4] = {10, 11, 12, 13};
    uint8_t d4[4] = {0};
    CHECK_EQ_INT(expert_store_request(s, 0, four, 4), SL_OK);
    for (int k = 0; k < 4; k++) {
        CHECK_EQ_INT(expert_store_acquire_next(s, 0, four, d4, 4, &idx, &v), SL_OK);
        expert_store_release(s, 0, (uint32_t)four[idx]);
    }
    CHECK(d4[0] && d4[1] && d4[2] && d4[3]);
    CHECK(sl_model_expert_layer_stats(m, 7, &a) == SL_ERR_RANGE);
    CHECK(strstr(sl_model_expert_cache_desc(m), "3 slots") != NULL);
    sl_model_close(m);
}

TEST(test_profile_roundtrip) {
    if (!reference()) return;
    char prof[300];
    snprintf(prof, sizeof prof, "%s.profile", model_path);
    unlink(prof);
    struct sl_model_params mp = params(8u << 20, SL_IO_DIRECT, 0, 0);
    mp.expert_profile = prof;
    struct sl_model *m;
    CHECK_EQ_INT(sl_model_open(model_path, &mp, &m), SL_OK); /* absent: fine */
    float *got = malloc((size_t)N_TOK * n_vocab * sizeof(float));
    CHECK_EQ_INT(run_tokens(m, got), SL_OK);
    sl_model_close(m); /* writes the profile */
    char *text;
    size_t len;
    CHECK_EQ_INT(sl_read_file(prof, &text, &len), SL_OK);
    CHECK(text && !strncmp(text, "sluice-expert-profile 1 layers 4 experts 32\nL 0 ", 48));
    sl_free(text);
    /* warm start: pinned experts are resident before the first token */
    CHECK_EQ_INT(sl_model_open(model_path, &mp, &m), SL_OK);
    if (m) {
        struct sl_stats st;
        struct sl_context *ctx;
        struct sl_context_params cp = sl_context_default_params();
        CHECK_EQ_INT(sl_context_create(m, &cp, &ctx), SL_OK);
        for (int i = 0; i < 200; i++) { /* the warm-start reads land */
            sl_context_stats(ctx, &st);
            if (st.cache_bytes_read >= 5 * REC) break;
            usleep(10000);
        }
        sl_context_free(ctx);
        CHECK_EQ_INT(st.cache_peak_bytes, 5 * REC); /* half of 10 slots */
        CHECK_EQ_INT(st.cache_bytes_read, 5 * REC);
        CHECK_EQ_INT(run_tokens(m, got), SL_OK);
        CHECK(!memcmp(got, ref_logits, (size_t)N_TOK * n_vocab * sizeof(float)));
        sl_model_close(m);
    }
    /* a profile of another shape is refused, and not overwritten */
    FILE *f = fopen(prof, "w");
    fprintf(f, "sluice-expert-profile 1 layers 1 experts 16\nL 0 1 2 3\n");
    fclose(f);
    CHECK_EQ_INT(sl_model_open(model_path, &mp, &m), SL_ERR_FORMAT);
    CHECK_MSG(strstr(sl_errmsg(), "does not match") != NULL, "%s", sl_errmsg());
    f = fopen(prof, "w");
    fprintf(f, "garbage\n");
    fclose(f);
    CHECK_EQ_INT(sl_model_open(model_path, &mp, &m), SL_ERR_FORMAT);
    CHECK(sl_read_file(prof, &text, &len) == SL_OK && !strcmp(text, "garbage\n"));
    sl_free(text);
    free(got);
    unlink(prof);
}

/* ---- peak RSS of the CLI on experts 6x the budget ---- */

/* Peak RSS in bytes of `sluice logits` on the test model with an 8 MiB
 * cache and the given --io mode; 0 on failure. */
static uint64_t spawn_rss(const char *sluice, const char *io) {
    char out[300], err[300];
    snprintf(out, sizeof out, "%s.logits", model_path);
    snprintf(err, sizeof err, "%s.stderr", model_path);
    char *argv[] = {(char *)sluice, "logits", "-m", model_path, "--tokens",
                    "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20", "--generate", "12",
                    "-o", out, "--ram-cache", "8M", "--io", (char *)io, "-t", "2", "--timing",
                    NULL};
    pid_t pid;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int rc = posix_spawn(&pid, sluice, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    CHECK_EQ_INT(rc, 0);
    if (rc) return 0;
    int status;
    CHECK_EQ_INT(waitpid(pid, &status, 0), pid);
    CHECK_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 0, "sluice logits --io %s failed", io);
    unlink(out);
    /* the child's own VmHWM, printed by --timing: a spawned child's
     * rusage would also count the parent's pages from before exec */
    char *text = NULL;
    size_t len;
    uint64_t rss = 0;
    if (sl_read_file(err, &text, &len) == SL_OK) {
        const char *p = strstr(text, "peak RSS ");
        double mib;
        if (p && sscanf(p, "peak RSS %lf MiB", &mib) == 1) rss = (uint64_t)(mib * 1048576.0);
        CHECK_MSG(p != NULL, "no 'peak RSS' in: %s", text);
    }
    sl_free(text);
    unlink(err);
    return rss;
}

TEST(test_peak_rss_bounded) {
#if defined(__SANITIZE_ADDRESS__)
    TEST_SKIP("RSS bound not meaningful under AddressSanitizer");
#endif
    if (!test_model()) return;
    char exe[512], sluice[560];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) TEST_SKIP("no /proc/self/exe");
    exe[n] = 0;
    char *slash = strrchr(exe, '/');
    *slash = 0;
    slash = strrchr(exe, '/');
    if (slash) *slash = 0;
    snprintf(sluice, sizeof sluice, "%s/sluice", exe);
    if (access(sluice, X_OK) != 0) TEST_SKIP("%s not built", sluice);
    uint64_t rss = spawn_rss(sluice, "direct"), rss_mmap = spawn_rss(sluice, "mmap");
    struct sl_model_params mp = params(0, SL_IO_MMAP, 0, 0);
    struct sl_model *m;
    if (sl_model_open(model_path, &mp, &m) != SL_OK) return;
    const struct sl_config *c = &m->cfg;
    uint64_t kv = 2ull * c->n_layers * 32 * config_kv_dim(c) * sizeof(float);
    uint64_t bound = m->file.dense_bytes + (8ull << 20) + kv + (64ull << 20);
    fprintf(stderr, "  peak RSS %.1f MiB (bound %.1f MiB: dense %.1f + cache 8 + KV %.2f + 64; "
            "experts %.1f MiB)\n", rss / 1048576.0, bound / 1048576.0,
            m->file.dense_bytes / 1048576.0, kv / 1048576.0, m->file.expert_bytes / 1048576.0);
    CHECK(m->file.expert_bytes >= 4 * (8ull << 20));
    CHECK_MSG(rss <= bound, "peak RSS %llu > %llu", (unsigned long long)rss,
              (unsigned long long)bound);
    /* the measurement can see expert pages: the mapping touches them */
    fprintf(stderr, "  peak RSS with --io mmap: %.1f MiB\n", rss_mmap / 1048576.0);
    CHECK_MSG(rss_mmap > rss + (32ull << 20), "mmap %llu vs cache %llu",
              (unsigned long long)rss_mmap, (unsigned long long)rss);
    sl_model_close(m);
}

TEST(test_zz_cleanup) {
    if (model_path[0]) unlink(model_path);
    free(ref_logits);
    ref_logits = NULL;
}

TEST_MAIN()
