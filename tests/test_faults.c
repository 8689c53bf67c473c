/*
 * test_faults.c — fault injection at the public API: an allocation failure at
 * every allocation site of sl_model_open (file, config, bindings, embedded
 * tokenizer, expert store), sl_context_create (KV cache, scratch, thread
 * pool) and sl_eval, each through the allocator seam's countdown
 * (sl_alloc_fail_after in src/util.h).
 *
 * For every n = 1, 2, ... the n-th allocation fails; the call must return
 * SL_ERR_NOMEM with a message, leave *out NULL (or the context unchanged),
 * release everything it took (memory: LeakSanitizer in `make asan`; file
 * descriptors and the model mapping: counted here), and a later call without
 * the fault must succeed and compute logits bit-identical to an untouched
 * run. The sweep ends after several consecutive successes (the countdown
 * then outlives the call), so a new allocation site is covered without
 * changing this file.
 *
 * The expert store's reads go through its test hook (expert_store_set_io,
 * src/expert_store.h) with a cache of two records, so that every layer
 * reads: EIO after k reads, short reads, slow reads and a file that ends
 * early (truncated mid-run, simulated by the hook and done for real with
 * ftruncate) must each give SL_ERR_IO with a message, or the reference
 * logits where the fault is recoverable (short, slow), and the context and
 * the store must work again once the fault is gone.
 *
 * What it is not: a test of allocations made inside cJSON, PCRE2 or utf8proc
 * (they use malloc directly, below the seam).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "expert_store.h"
#include "model.h"
#include "sluice.h"
#include "synth.h"
#include "test.h"
#include "util.h"

#define GPT2_TOKENIZER "tests/fixtures/tokenizer/gpt2style/tokenizer.json"
#define SWEEP_MAX 200000L /* far above any real count; stops a runaway */
#define SWEEP_DONE 4      /* consecutive successes that end a sweep */

static char tmp_dir[64];
static char model_path[128];

static void cleanup(void) {
    if (model_path[0]) unlink(model_path);
    if (tmp_dir[0]) rmdir(tmp_dir);
}

static const char *tiny_model(void) {
    if (model_path[0]) return model_path;
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/test_faults.XXXXXX");
    if (!mkdtemp(tmp_dir)) return NULL;
    atexit(cleanup);
    snprintf(model_path, sizeof model_path, "%s/tiny.sluice", tmp_dir);
    struct synth_params p;
    if (synth_preset("tiny", &p) != SL_OK) return NULL;
    p.cfg.n_vocab = 0; /* the embedded tokenizer's size */
    p.tokenizer_path = GPT2_TOKENIZER;
    p.n_threads = 1;
    if (synth_write(&p, model_path, NULL) != SL_OK) {
        fprintf(stderr, "  synth_write: %s\n", sl_errmsg());
        model_path[0] = 0;
        return NULL;
    }
    return model_path;
}

static int count_fds(void) {
    DIR *d = opendir("/proc/self/fd");
    if (!d) return -1;
    int n = 0;
    while (readdir(d)) n++;
    closedir(d);
    return n;
}

/* Nonzero if the model file is mapped in this process. */
static int model_mapped(void) {
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) return 0;
    char line[512];
    int found = 0;
    while (fgets(line, sizeof line, f))
        if (strstr(line, model_path)) found = 1;
    fclose(f);
    return found;
}

static const int32_t prompt[] = {5, 17, 3, 99, 42, 7, 300, 1, 64, 12, 250};
#define N_PROMPT (sizeof prompt / sizeof prompt[0])

/* Evaluates the prompt in a fresh context and copies the last logits. */
static int eval_logits(struct sl_model *m, float *out) {
    struct sl_context *ctx;
    struct sl_context_params cp = sl_context_default_params();
    cp.n_ctx = 64;
    cp.n_batch = 4;
    cp.n_threads = 2;
    int st = sl_context_create(m, &cp, &ctx);
    if (st) return st;
    st = sl_eval(ctx, prompt, N_PROMPT, NULL);
    if (!st) memcpy(out, sl_logits(ctx), (size_t)sl_model_n_vocab(m) * sizeof(float));
    sl_context_free(ctx);
    return st;
}

/* Reference logits of the untouched model (malloc'ed). */
static float *reference_logits(const char *path, int32_t *nv) {
    struct sl_model *m;
    if (sl_model_open(path, NULL, &m)) return NULL;
    *nv = sl_model_n_vocab(m);
    float *ref = malloc((size_t)*nv * sizeof(float));
    if (ref && eval_logits(m, ref)) {
        free(ref);
        ref = NULL;
    }
    sl_model_close(m);
    return ref;
}

TEST(test_model_open_alloc_failures) {
    const char *path = tiny_model();
    if (!path) TEST_SKIP("cannot write the tiny model");
    int32_t nv = 0;
    float *ref = reference_logits(path, &nv);
    CHECK(ref != NULL);
    if (!ref) return;
    float *got = malloc((size_t)nv * sizeof(float));
    int fds0 = count_fds();
    long n, n_failed = 0, ok_run = 0, bad_status = 0;
    for (n = 1; n < SWEEP_MAX && ok_run < SWEEP_DONE; n++) {
        struct sl_model *m = (struct sl_model *)1;
        sl_clearerr();
        sl_alloc_fail_after(n);
        int st = sl_model_open(path, NULL, &m);
        sl_alloc_fail_after(0);
        if (st == SL_OK) {
            ok_run++;
            sl_model_close(m);
            continue;
        }
        ok_run = 0;
        n_failed++;
        if (st != SL_ERR_NOMEM && bad_status++ < 5)
            CHECK_MSG(0, "allocation %ld: status %s (%s), want out of memory", n,
                      sl_status_str(st), sl_errmsg());
        CHECK_MSG(m == NULL, "allocation %ld: *out not NULL after failure", n);
        CHECK_MSG(sl_errmsg()[0] != 0, "allocation %ld: no message", n);
        if (count_fds() != fds0 || model_mapped()) {
            CHECK_MSG(0, "allocation %ld: fd or mapping leaked (%s)", n, sl_errmsg());
            break;
        }
        /* every 16th failure: the model still opens and computes the same */
        if (n % 16 == 1) {
            CHECK_EQ_INT(sl_model_open(path, NULL, &m), SL_OK);
            if (m) {
                CHECK_EQ_INT(eval_logits(m, got), SL_OK);
                CHECK(memcmp(got, ref, (size_t)nv * sizeof(float)) == 0);
                sl_model_close(m);
            }
        }
    }
    fprintf(stderr, "  model open: %ld allocation sites failed cleanly\n", n_failed);
    CHECK(n_failed > 10); /* file tables, config, layers, tokenizer, store */
    CHECK(n < SWEEP_MAX);
    CHECK_EQ_INT(count_fds(), fds0);
    struct sl_model *m;
    CHECK_EQ_INT(sl_model_open(path, NULL, &m), SL_OK);
    if (m) {
        CHECK_EQ_INT(eval_logits(m, got), SL_OK);
        CHECK(memcmp(got, ref, (size_t)nv * sizeof(float)) == 0);
        sl_model_close(m);
    }
    free(got);
    free(ref);
}

TEST(test_context_create_alloc_failures) {
    const char *path = tiny_model();
    if (!path) TEST_SKIP("cannot write the tiny model");
    int32_t nv = 0;
    float *ref = reference_logits(path, &nv);
    CHECK(ref != NULL);
    if (!ref) return;
    struct sl_model *m;
    CHECK_EQ_INT(sl_model_open(path, NULL, &m), SL_OK);
    if (!m) {
        free(ref);
        return;
    }
    float *got = malloc((size_t)nv * sizeof(float));
    struct sl_context_params cp = sl_context_default_params();
    cp.n_ctx = 64;
    cp.n_batch = 4;
    cp.n_threads = 2;
    long n, n_failed = 0, ok_run = 0;
    for (n = 1; n < SWEEP_MAX && ok_run < SWEEP_DONE; n++) {
        struct sl_context *ctx = (struct sl_context *)1;
        sl_alloc_fail_after(n);
        int st = sl_context_create(m, &cp, &ctx);
        sl_alloc_fail_after(0);
        if (st == SL_OK) {
            ok_run++;
            sl_context_free(ctx);
            continue;
        }
        ok_run = 0;
        n_failed++;
        CHECK_MSG(st == SL_ERR_NOMEM, "allocation %ld: %s", n, sl_errmsg());
        CHECK(ctx == NULL);
        /* the model is untouched: a context made now computes the same */
        CHECK_EQ_INT(eval_logits(m, got), SL_OK);
        CHECK_MSG(memcmp(got, ref, (size_t)nv * sizeof(float)) == 0,
                  "allocation %ld: logits changed after a failed create", n);
    }
    fprintf(stderr, "  context create: %ld allocation sites failed cleanly\n", n_failed);
    CHECK(n_failed >= 10); /* KV cache, activations, topk buffers, pool */
    free(got);
    sl_model_close(m);
    free(ref);
}

/* sl_eval must not allocate per call; where it may (scratch growing on first
 * use), a failure leaves the context unchanged and the next call works. */
TEST(test_eval_alloc_failures) {
    const char *path = tiny_model();
    if (!path) TEST_SKIP("cannot write the tiny model");
    int32_t nv = 0;
    float *ref = reference_logits(path, &nv);
    CHECK(ref != NULL);
    if (!ref) return;
    struct sl_model *m;
    CHECK_EQ_INT(sl_model_open(path, NULL, &m), SL_OK);
    if (!m) {
        free(ref);
        return;
    }
    struct sl_context_params cp = sl_context_default_params();
    cp.n_ctx = 64;
    cp.n_batch = 4;
    cp.n_threads = 2;
    long n, n_failed = 0, ok_run = 0;
    for (n = 1; n < 1000 && ok_run < SWEEP_DONE; n++) {
        struct sl_context *ctx;
        CHECK_EQ_INT(sl_context_create(m, &cp, &ctx), SL_OK);
        if (!ctx) break;
        sl_alloc_fail_after(n);
        int st = sl_eval(ctx, prompt, N_PROMPT, NULL);
        sl_alloc_fail_after(0);
        if (st == SL_OK) {
            ok_run++;
        } else {
            ok_run = 0;
            n_failed++;
            CHECK_MSG(st == SL_ERR_NOMEM, "allocation %ld: %s", n, sl_errmsg());
            CHECK_EQ_INT(sl_context_n_past(ctx), 0);
            CHECK(sl_logits(ctx) == NULL);
            CHECK_EQ_INT(sl_eval(ctx, prompt, N_PROMPT, NULL), SL_OK);
        }
        CHECK_MSG(sl_logits(ctx) &&
                      memcmp(sl_logits(ctx), ref, (size_t)nv * sizeof(float)) == 0,
                  "allocation %ld: logits differ from the reference", n);
        sl_context_free(ctx);
    }
    fprintf(stderr, "  eval: %ld allocation sites failed cleanly\n", n_failed);
    sl_model_close(m);
    free(ref);
}

/* ---- expert store read faults ---- */

/* F_EIO_LATE: every read fails, all but the first after 30 ms, so that an
 * evaluation fails while reads it issued are still in flight. */
enum fault { F_NONE, F_EIO, F_SHORT, F_SLOW, F_EOF, F_EIO_LATE };

struct fault_io {
    enum fault kind;
    long after;        /* reads that succeed before the fault starts */
    long n_reads;      /* reads seen */
    long n_faulted;    /* reads given the fault */
};

static ssize_t fault_pread(void *user, int fd, void *buf, size_t len, uint64_t off) {
    struct fault_io *f = user;
    long k = __atomic_fetch_add(&f->n_reads, 1, __ATOMIC_SEQ_CST);
    enum fault kind = __atomic_load_n(&f->kind, __ATOMIC_SEQ_CST);
    if (kind == F_NONE || k < f->after) return pread(fd, buf, len, (off_t)off);
    __atomic_fetch_add(&f->n_faulted, 1, __ATOMIC_SEQ_CST);
    switch (kind) {
    case F_EIO_LATE:
        if (k > 0) usleep(30000);
        errno = EIO;
        return -1;
    case F_EIO:
        errno = EIO;
        return -1;
    case F_SHORT: /* at most 1000 bytes per call, never on a nice boundary */
        return pread(fd, buf, len > 1000 ? 1000 - (off % 7) : len, (off_t)off);
    case F_SLOW:
        usleep(2000);
        return pread(fd, buf, len, (off_t)off);
    case F_EOF:
        return 0;
    default:
        return -1;
    }
}

/* Opens the tiny model with a 2-record expert cache, prefetch off, and the
 * fault hook installed. */
static struct sl_model *open_faulty(const char *path, struct fault_io *f) {
    struct sl_model *m;
    struct sl_model_params mp = sl_model_default_params();
    mp.n_threads = 1;
    mp.io_mode = SL_IO_BUFFERED;
    mp.prefetch = SL_PREFETCH_OFF;
    mp.io_threads = 2;
    uint64_t n = 0;
    if (sl_model_open(path, NULL, &m)) return NULL;
    for (uint32_t l = 0; l < m->cfg.n_layers; l++) n += m->cfg.layer_is_moe[l] ? m->cfg.n_experts : 0;
    mp.ram_cache_bytes = 2 * (sl_model_expert_bytes(m) / n);
    sl_model_close(m);
    if (sl_model_open(path, &mp, &m)) return NULL;
    struct expert_store_io io = {fault_pread, f};
    if (expert_store_set_io(m->experts, &io)) {
        sl_model_close(m);
        return NULL;
    }
    return m;
}

static void read_fault_case(enum fault kind, long after, int recoverable) {
    const char *path = tiny_model();
    if (!path) TEST_SKIP("cannot write the tiny model");
    int32_t nv = 0;
    float *ref = reference_logits(path, &nv);
    CHECK(ref != NULL);
    if (!ref) return;
    struct fault_io f = {kind, after, 0, 0};
    struct sl_model *m = open_faulty(path, &f);
    CHECK_MSG(m != NULL, "%s", sl_errmsg());
    if (!m) {
        free(ref);
        return;
    }
    struct sl_context *ctx;
    struct sl_context_params cp = sl_context_default_params();
    cp.n_ctx = 64;
    cp.n_batch = 4;
    cp.n_threads = 1;
    CHECK_EQ_INT(sl_context_create(m, &cp, &ctx), SL_OK);
    if (ctx) {
        sl_clearerr();
        int st = sl_eval(ctx, prompt, N_PROMPT, NULL);
        CHECK(f.n_faulted > 0); /* the fault was really hit */
        if (recoverable) {
            CHECK_MSG(st == SL_OK, "%s", sl_errmsg());
            CHECK(st || memcmp(sl_logits(ctx), ref, (size_t)nv * sizeof(float)) == 0);
        } else {
            CHECK_MSG(st == SL_ERR_IO, "status %s: %s", sl_status_str(st), sl_errmsg());
            CHECK(strlen(sl_errmsg()) > 10);
            CHECK_EQ_INT(sl_context_n_past(ctx), 0);
            CHECK(sl_logits(ctx) == NULL);
        }
        /* the fault goes away: the same context and store work again and
         * compute exactly the reference */
        __atomic_store_n(&f.kind, F_NONE, __ATOMIC_SEQ_CST);
        sl_context_reset(ctx);
        CHECK_EQ_INT(sl_eval(ctx, prompt, N_PROMPT, NULL), SL_OK);
        CHECK(sl_logits(ctx) && memcmp(sl_logits(ctx), ref, (size_t)nv * sizeof(float)) == 0);
        sl_context_free(ctx);
    }
    sl_model_close(m);
    free(ref);
}

TEST(test_read_eio_first) { read_fault_case(F_EIO, 0, 0); }
/* a read the failed evaluation left in flight fails during the next one,
 * which must not inherit that failure */
TEST(test_read_eio_in_flight) { read_fault_case(F_EIO_LATE, 0, 0); }
TEST(test_read_eio_later) { read_fault_case(F_EIO, 5, 0); }
TEST(test_read_eof_later) { read_fault_case(F_EOF, 3, 0); }
TEST(test_read_short) { read_fault_case(F_SHORT, 0, 1); }
TEST(test_read_slow) { read_fault_case(F_SLOW, 0, 1); }

/* Faults on every read from the k-th on, for each k up to the reads a clean
 * evaluation needs: each must fail cleanly and recover. */
TEST(test_read_eio_sweep) {
    const char *path = tiny_model();
    if (!path) TEST_SKIP("cannot write the tiny model");
    struct fault_io f = {F_NONE, 0, 0, 0};
    struct sl_model *m = open_faulty(path, &f);
    CHECK(m != NULL);
    if (!m) return;
    struct sl_context *ctx;
    struct sl_context_params cp = sl_context_default_params();
    cp.n_ctx = 64;
    cp.n_batch = 4;
    cp.n_threads = 1;
    CHECK_EQ_INT(sl_context_create(m, &cp, &ctx), SL_OK);
    if (!ctx) {
        sl_model_close(m);
        return;
    }
    CHECK_EQ_INT(sl_eval(ctx, prompt, N_PROMPT, NULL), SL_OK);
    long clean_reads = f.n_reads;
    CHECK(clean_reads > 4);
    for (long k = 0; k < clean_reads; k++) {
        sl_context_reset(ctx);
        f.after = f.n_reads + k;
        __atomic_store_n(&f.kind, F_EIO, __ATOMIC_SEQ_CST);
        int st = sl_eval(ctx, prompt, N_PROMPT, NULL);
        __atomic_store_n(&f.kind, F_NONE, __ATOMIC_SEQ_CST);
        /* the cache may hold what the first reads needed: then no fault */
        CHECK_MSG(st == SL_OK || st == SL_ERR_IO, "read %ld: %s", k, sl_errmsg());
        sl_context_reset(ctx);
        CHECK_EQ_INT(sl_eval(ctx, prompt, N_PROMPT, NULL), SL_OK);
    }
    sl_context_free(ctx);
    sl_model_close(m);
}

/* The model file really shrinks under an open model: expert reads past the
 * new end fail with SL_ERR_IO (never a crash), and growing it back to its
 * content makes the model work again. */
TEST(test_file_truncated_mid_run) {
    const char *path = tiny_model();
    if (!path) TEST_SKIP("cannot write the tiny model");
    char copy[160];
    snprintf(copy, sizeof copy, "%s/trunc.sluice", tmp_dir);
    char *data;
    size_t len;
    CHECK_EQ_INT(sl_read_file(path, &data, &len), SL_OK);
    FILE *w = fopen(copy, "wb");
    CHECK(w && fwrite(data, 1, len, w) == len);
    if (w) fclose(w);
    struct fault_io f = {F_NONE, 0, 0, 0};
    struct sl_model *m = open_faulty(copy, &f);
    CHECK(m != NULL);
    if (!m) {
        sl_free(data);
        unlink(copy);
        return;
    }
    /* the first expert record of the model: everything from it on goes */
    uint64_t cut = UINT64_MAX;
    for (uint32_t i = 0; i < m->file.n_expert_layers; i++) {
        const struct sl_expert_layer *l = &m->file.expert_layers[i];
        for (uint32_t e = 0; e < l->n_experts; e++)
            if (l->offsets[e] < cut) cut = l->offsets[e];
    }
    /* cut only where no dense tensor lies behind (mapped pages past the end
     * of a file raise SIGBUS: expert records must be the file's tail) */
    int tail = 1;
    for (uint32_t i = 0; i < m->file.n_tensors; i++)
        if (m->file.tensors[i].offset >= cut) tail = 0;
    struct sl_context *ctx;
    struct sl_context_params cp = sl_context_default_params();
    cp.n_ctx = 64;
    cp.n_batch = 4;
    cp.n_threads = 1;
    CHECK_EQ_INT(sl_context_create(m, &cp, &ctx), SL_OK);
    if (ctx && tail && cut < len) {
        CHECK_EQ_INT(truncate(copy, (off_t)cut), 0);
        sl_context_reset(ctx);
        int st = sl_eval(ctx, prompt, N_PROMPT, NULL);
        CHECK_MSG(st == SL_ERR_IO, "status %s: %s", sl_status_str(st), sl_errmsg());
        /* restore the content: the model works again */
        int fd = open(copy, O_WRONLY);
        CHECK(fd >= 0 && pwrite(fd, data + cut, len - cut, (off_t)cut) == (ssize_t)(len - cut));
        if (fd >= 0) close(fd);
        sl_context_reset(ctx);
        CHECK_MSG(sl_eval(ctx, prompt, N_PROMPT, NULL) == SL_OK, "%s", sl_errmsg());
    } else if (ctx) {
        CHECK_MSG(tail, "dense data lies behind the expert records");
    }
    sl_context_free(ctx);
    sl_model_close(m);
    sl_free(data);
    unlink(copy);
}

TEST_MAIN()
