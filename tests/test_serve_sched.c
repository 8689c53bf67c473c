/*
 * test_serve_sched.c — the request scheduler (src/serve_sched.h) on the
 * demo model ($SLUICE_TEST_MODEL or build/default.sluice, skipped when
 * absent): concurrent requests give exactly what each gives alone, decoded
 * together in one batch (mean batch size > 1), in the batched mode and in
 * the one-context-per-sequence fallback; stop strings cut the text, a
 * released request frees its sequence, a full queue says busy, the prefix
 * cache reuses a finished sequence and forks a partly shared one (copy +
 * truncate, the cached one intact), bad parameters are refused. The
 * premise of "concurrent = alone": a sequence's logits from a mixed
 * sl_decode_batch are bit-identical to the same sequence evaluated alone
 * (demo model and a synthetic hybrid Gated DeltaNet model). Also the
 * public chat API (sl_chat_create / sl_model_chat_template) on it.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "serve_sched.h"
#include "sluice.h"
#include "synth.h"
#include "test.h"
#include "util.h"

#define N_REQ 6
#define N_GEN 6

/* The demo model: $SLUICE_TEST_MODEL, else build/default.sluice. */
static const char *model_path(void) {
    const char *e = getenv("SLUICE_TEST_MODEL");
    return e && *e ? e : "build/default.sluice";
}
#define MODEL model_path()

static struct sl_model *open_demo(void) {
    if (access(MODEL, R_OK)) return NULL;
    struct sl_model_params mp = sl_model_default_params();
    mp.n_threads = 1;
    struct sl_model *m = NULL;
    if (sl_model_open(MODEL, &mp, &m)) return NULL;
    return m;
}

static struct sched_req_params greedy(int n) {
    struct sched_req_params p = {0};
    p.max_tokens = n;
    p.sampler = sl_sampler_default_params();
    p.sampler.temperature = 0;
    return p;
}

static void prompt_of(int i, int32_t *ids, size_t *n) {
    /* distinct, no prompt a prefix of another */
    *n = 4 + (size_t)(i % 3);
    for (size_t k = 0; k < *n; k++) ids[k] = 100 + 37 * i + 11 * (int32_t)k;
}

struct job {
    struct sched *s;
    int i;
    struct sched_req *r;     /* submitted already, or NULL: run_job submits */
    struct sched_view v;
};

static void *run_job(void *arg) {
    struct job *j = arg;
    int32_t ids[8];
    size_t n;
    prompt_of(j->i, ids, &n);
    struct sched_req_params p = greedy(N_GEN);
    p.ignore_eos = 1;
    struct sched_req *r = j->r;
    if (!r && sched_submit(j->s, ids, n, &p, &r)) return NULL;
    while (j->v.finish == SCHED_RUNNING && sched_wait(r, &j->v, -1) == SL_OK) {}
    sched_release(r);
    return NULL;
}

/* The greedy tokens of request i served alone on a batched scheduler
 * (computed once, compared by both modes). */
static int32_t alone_ids[N_REQ][N_GEN];

static void concurrent_equals_alone(int per_seq) {
    struct sl_model *m = open_demo();
    if (!m) TEST_SKIP("%s not built", MODEL);
    struct sched_params sp = sched_default_params();
    sp.max_seqs = 3; /* 6 requests: 3 run, 3 queue */
    sp.n_ctx = 64;
    sp.per_seq_contexts = per_seq;
    struct sched *s;
    CHECK(sched_create(m, &sp, &s) == SL_OK);
    struct job alone[N_REQ], conc[N_REQ];
    memset(alone, 0, sizeof alone);
    memset(conc, 0, sizeof conc);
    for (int i = 0; i < N_REQ; i++) {
        alone[i] = (struct job){.s = s, .i = i};
        run_job(&alone[i]);
        for (int k = 0; k < N_GEN && k < (int)alone[i].v.n_tokens; k++) {
            if (!per_seq) alone_ids[i][k] = alone[i].v.tokens[k].id;
            CHECK_MSG(alone_ids[i][k] == alone[i].v.tokens[k].id,
                      "request %d token %d: the fallback differs from the batched mode", i, k);
        }
    }
    struct sched_metrics m0;
    sched_get_metrics(s, &m0);
    CHECK_EQ_INT(m0.decode_batch_max, 1);
    CHECK_EQ_INT(m0.batched, !per_seq);
    pthread_t th[N_REQ];
    for (int i = 0; i < N_REQ; i++) {
        /* all submitted before any waits, so that they overlap however
         * slowly the threads start (a loaded machine) */
        int32_t ids[8];
        size_t n;
        prompt_of(i, ids, &n);
        struct sched_req_params p = greedy(N_GEN);
        p.ignore_eos = 1;
        conc[i] = (struct job){.s = s, .i = i};
        CHECK(sched_submit(s, ids, n, &p, &conc[i].r) == SL_OK);
    }
    for (int i = 0; i < N_REQ; i++) {
        pthread_create(&th[i], NULL, run_job, &conc[i]);
    }
    for (int i = 0; i < N_REQ; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < N_REQ; i++) {
        CHECK_EQ_INT(alone[i].v.finish, SCHED_LENGTH);
        CHECK_EQ_INT(conc[i].v.n_tokens, N_GEN);
        int same = alone[i].v.n_tokens == conc[i].v.n_tokens;
        for (size_t k = 0; same && k < conc[i].v.n_tokens; k++)
            same = alone[i].v.tokens[k].id == conc[i].v.tokens[k].id;
        CHECK_MSG(same, "request %d: concurrent tokens differ from alone", i);
        CHECK(conc[i].v.text_len == alone[i].v.text_len &&
              !memcmp(conc[i].v.text, alone[i].v.text, alone[i].v.text_len));
        sched_view_free(&alone[i].v);
        sched_view_free(&conc[i].v);
    }
    struct sched_metrics mt;
    sched_get_metrics(s, &mt);
    CHECK_EQ_INT(mt.requests, 2 * N_REQ);
    CHECK_EQ_INT(mt.finished, 2 * N_REQ);
    CHECK_EQ_INT(mt.generated_tokens, 2 * N_REQ * N_GEN);
    CHECK_EQ_INT(mt.contexts, per_seq ? sp.max_seqs + sp.n_cached : 1);
    /* the concurrent phase decoded requests together: every decode token
     * was in some batch, in fewer passes than tokens */
    uint64_t steps = mt.decode_steps - m0.decode_steps;
    uint64_t toks = mt.decode_batch_tokens - m0.decode_batch_tokens;
    CHECK_EQ_INT(toks, N_REQ * N_GEN);
    CHECK_EQ_INT(mt.decode_batch_max, sp.max_seqs);
    CHECK_MSG(steps > 0 && (double)toks / (double)steps > 1.5,
              "mean decode batch %.2f (%llu tokens in %llu passes)",
              steps ? (double)toks / (double)steps : 0.0, (unsigned long long)toks,
              (unsigned long long)steps);
    sched_free(s);
    sl_model_close(m);
}

TEST(concurrent_equals_alone_batched) { concurrent_equals_alone(0); }
TEST(concurrent_equals_alone_fallback) { concurrent_equals_alone(1); }

/* Runs ids greedily for n tokens on s; returns the view (caller frees). */
static struct sched_view run_greedy(struct sched *s, const int32_t *ids, size_t n, int n_gen) {
    struct sched_req_params p = greedy(n_gen);
    p.ignore_eos = 1;
    struct sched_req *r;
    struct sched_view v = {0};
    if (sched_submit(s, ids, n, &p, &r)) {
        v.finish = SCHED_ERROR;
        return v;
    }
    while (v.finish == SCHED_RUNNING && sched_wait(r, &v, -1) == SL_OK) {}
    sched_release(r);
    return v;
}

static int same_tokens(const struct sched_view *a, const struct sched_view *b) {
    if (a->n_tokens != b->n_tokens) return 0;
    for (size_t k = 0; k < a->n_tokens; k++)
        if (a->tokens[k].id != b->tokens[k].id) return 0;
    return 1;
}

/* A prompt sharing 12 tokens with a cached 20-token one forks it (copy,
 * truncate) and gives what it gives without any cache; the cached one
 * stays whole for its own follow-up. */
TEST(prefix_cache_fork) {
    struct sl_model *m = open_demo();
    if (!m) TEST_SKIP("%s not built", MODEL);
    for (int per_seq = 0; per_seq < 2; per_seq++) {
        struct sched_params sp = sched_default_params();
        sp.max_seqs = 1;
        sp.n_cached = 2;
        sp.n_ctx = 128;
        sp.n_batch = 8; /* prompts in several chunks */
        sp.per_seq_contexts = per_seq;
        struct sched *s, *fresh;
        CHECK(sched_create(m, &sp, &s) == SL_OK);
        sp.n_cached = 0;
        CHECK(sched_create(m, &sp, &fresh) == SL_OK);
        int32_t a[20], b[17];
        for (int k = 0; k < 20; k++) a[k] = 200 + 13 * k;
        memcpy(b, a, 12 * sizeof *b);
        for (int k = 12; k < 17; k++) b[k] = 900 + k;
        struct sched_view va = run_greedy(s, a, 20, 3);
        CHECK_EQ_INT(va.n_cached_prompt, 0);
        struct sched_view vb = run_greedy(s, b, 17, 4);
        CHECK_EQ_INT(vb.n_cached_prompt, 12);
        struct sched_view wb = run_greedy(fresh, b, 17, 4);
        CHECK_EQ_INT(wb.n_cached_prompt, 0);
        CHECK_MSG(same_tokens(&vb, &wb), "forked prefix: tokens differ from a fresh run");
        struct sched_view va2 = run_greedy(s, a, 20, 3);
        CHECK_EQ_INT(va2.n_cached_prompt, 19); /* all but the last prompt token */
        CHECK(same_tokens(&va, &va2));
        /* a short shared prefix (< SCHED_MIN_REUSE) is not worth a copy */
        int32_t c[10] = {a[0], a[1], a[2], 7, 8, 9, 10, 11, 12, 13};
        struct sched_view vc = run_greedy(s, c, 10, 2);
        CHECK_EQ_INT(vc.n_cached_prompt, 0);
        struct sched_metrics mt;
        sched_get_metrics(s, &mt);
        CHECK(mt.cached_seqs >= 1 && mt.cached_seqs <= 3);
        CHECK_EQ_INT(mt.cached_prompt_tokens, 12 + 19);
        struct sched_view *vs[] = {&va, &vb, &wb, &va2, &vc};
        for (size_t i = 0; i < sizeof vs / sizeof *vs; i++) sched_view_free(vs[i]);
        sched_free(s);
        sched_free(fresh);
    }
    sl_model_close(m);
}

/* A sequence's logits in a mixed sl_decode_batch (other sequences' tokens
 * in the same pass, in changing order) are bit-identical to the sequence
 * evaluated alone in its own context with the same prompt cut. */
static void check_mixed_bit_identical(struct sl_model *m, const char *name) {
    enum { NS = 3, ND = 6 };
    const int plen[NS] = {9, 13, 5};
    size_t nv = (size_t)sl_model_n_vocab(m);
    int32_t ps[NS][13];
    for (int q = 0; q < NS; q++)
        for (int k = 0; k < plen[q]; k++) ps[q][k] = (int32_t)((50 + 31 * q + 7 * k) % nv);
    struct sl_context_params cp = sl_context_default_params();
    cp.n_ctx = 64;
    cp.n_batch = 16;
    cp.n_threads = 2;
    cp.n_seq_max = NS;
    struct sl_context *mix = NULL;
    CHECK(sl_context_create(m, &cp, &mix) == SL_OK);
    if (!mix) return;
    int32_t sid[16], pending[NS];
    for (int q = 0; q < NS; q++) { /* prompts but their last token, alone */
        for (int k = 0; k < 16; k++) sid[k] = q;
        struct sl_batch b = {(size_t)plen[q] - 1, ps[q], sid, NULL};
        CHECK(sl_decode_batch(mix, &b) == SL_OK);
        pending[q] = ps[q][plen[q] - 1];
    }
    float *rows = malloc(NS * nv * sizeof(float)), *got = malloc(NS * ND * nv * sizeof(float));
    int32_t toks[NS][ND + 1];
    for (int d = 0; d < ND; d++) {
        int32_t bt[NS], bs[NS];
        for (int j = 0; j < NS; j++) {
            bs[j] = (j + d) % NS; /* a different order every step */
            bt[j] = pending[bs[j]];
        }
        struct sl_batch b = {NS, bt, bs, rows};
        CHECK(sl_decode_batch(mix, &b) == SL_OK);
        for (int j = 0; j < NS; j++) {
            int q = bs[j];
            memcpy(got + (q * ND + d) * nv, rows + j * nv, nv * sizeof(float));
            toks[q][d] = pending[q];
            int32_t best = 0;
            for (size_t t = 1; t < nv; t++)
                if (rows[j * nv + t] > rows[j * nv + best]) best = (int32_t)t;
            pending[q] = best;
        }
    }
    cp.n_seq_max = 1;
    for (int q = 0; q < NS; q++) {
        struct sl_context *one = NULL;
        CHECK(sl_context_create(m, &cp, &one) == SL_OK);
        if (!one) continue;
        CHECK(sl_eval(one, ps[q], (size_t)plen[q] - 1, NULL) == SL_OK);
        for (int d = 0; d < ND; d++) {
            CHECK(sl_eval(one, &toks[q][d], 1, NULL) == SL_OK);
            CHECK_MSG(memcmp(sl_logits(one), got + (q * ND + d) * nv, nv * sizeof(float)) == 0,
                      "%s: sequence %d step %d: mixed-batch logits differ from alone", name, q,
                      d);
        }
        sl_context_free(one);
    }
    free(rows);
    free(got);
    sl_context_free(mix);
}

TEST(mixed_batch_bit_identical) {
    struct sl_model *m = open_demo();
    if (m) check_mixed_bit_identical(m, "demo");
    sl_model_close(m);
    char dir[] = "/tmp/sluice_sched_XXXXXX", path[64];
    CHECK(mkdtemp(dir) != NULL);
    snprintf(path, sizeof path, "%s/hybrid.sluice", dir);
    struct synth_params p;
    CHECK(synth_preset("tiny-hybrid", &p) == SL_OK);
    p.n_threads = 2;
    sl_set_log(NULL, NULL, 0);
    CHECK(synth_write(&p, path, NULL) == SL_OK);
    sl_set_log(NULL, NULL, 1);
    struct sl_model *h = NULL;
    CHECK(sl_model_open(path, NULL, &h) == SL_OK);
    if (h) check_mixed_bit_identical(h, "tiny-hybrid");
    sl_model_close(h);
    unlink(path);
    rmdir(dir);
}

TEST(stop_cancel_busy_prefix) {
    struct sl_model *m = open_demo();
    if (!m) TEST_SKIP("%s not built", MODEL);
    struct sched_params sp = sched_default_params();
    sp.max_seqs = 1;
    sp.max_queue = 0;
    sp.n_cached = 1;
    sp.n_ctx = 128;
    struct sched *s;
    CHECK(sched_create(m, &sp, &s) == SL_OK);
    int32_t ids[8];
    size_t n;
    prompt_of(0, ids, &n);
    /* the greedy text, then a stop string from its middle cuts it there */
    struct sched_req_params p = greedy(12);
    p.ignore_eos = 1;
    struct sched_req *r;
    struct sched_view base = {0}, v = {0};
    CHECK(sched_submit(s, ids, n, &p, &r) == SL_OK);
    while (base.finish == SCHED_RUNNING && sched_wait(r, &base, -1) == SL_OK) {}
    sched_release(r);
    CHECK(base.text_len > 6);
    char stop[4] = {0};
    memcpy(stop, base.text + base.text_len / 2, 3);
    const char *hit = strstr(base.text, stop);
    p.stop[0] = stop;
    CHECK(sched_submit(s, ids, n, &p, &r) == SL_OK);
    while (v.finish == SCHED_RUNNING && sched_wait(r, &v, -1) == SL_OK) {}
    sched_release(r);
    CHECK_EQ_INT(v.finish, SCHED_STOP);
    CHECK_EQ_INT(v.text_len, hit - base.text);
    CHECK(!memcmp(v.text, base.text, v.text_len));
    sched_view_free(&v);
    sched_view_free(&base);
    /* busy: one running, none may queue */
    p = greedy(100);
    p.ignore_eos = 1;
    struct sched_req *r2;
    CHECK(sched_submit(s, ids, n, &p, &r) == SL_OK);
    int rc = sched_submit(s, ids, n, &p, &r2);
    CHECK_EQ_INT(rc, SL_ERR_UNSUPPORTED);
    CHECK(strstr(sl_errmsg(), "busy") != NULL);
    /* releasing mid-generation frees the sequence: a new request runs */
    CHECK(sched_wait(r, &v, 5) == SL_OK && v.n_tokens >= 1);
    sched_release(r);
    sched_view_free(&v);
    struct sched_metrics mt;
    for (int k = 0; k < 500; k++) {
        sched_get_metrics(s, &mt);
        if (mt.active == 0) break;
        usleep(10000);
    }
    CHECK_EQ_INT(mt.active, 0);
    CHECK(mt.generated_tokens < 24 + 100);
    /* prefix cache: a request that ends after its prompt leaves exactly the
     * prompt in its context; a longer prompt starting with it reuses it */
    p = greedy(1);
    CHECK(sched_submit(s, ids, n, &p, &r) == SL_OK);
    while (v.finish == SCHED_RUNNING && sched_wait(r, &v, -1) == SL_OK) {}
    sched_release(r);
    sched_view_free(&v);
    int32_t longer[10];
    memcpy(longer, ids, n * sizeof *ids);
    longer[n] = 500;
    longer[n + 1] = 501;
    CHECK(sched_submit(s, longer, n + 2, &p, &r) == SL_OK);
    v = (struct sched_view){0};
    while (v.finish == SCHED_RUNNING && sched_wait(r, &v, -1) == SL_OK) {}
    sched_release(r);
    CHECK_EQ_INT(v.n_cached_prompt, n);
    CHECK_EQ_INT(v.n_prompt, n + 2);
    sched_view_free(&v);
    /* refusals */
    p = greedy(0);
    CHECK_EQ_INT(sched_submit(s, ids, n, &p, &r), SL_ERR_ARG);
    p = greedy(200);
    CHECK_EQ_INT(sched_submit(s, ids, n, &p, &r), SL_ERR_RANGE);
    CHECK(strstr(sl_errmsg(), "exceeds the context size") != NULL);
    CHECK_EQ_INT(sched_submit(s, ids, 0, &p, &r), SL_ERR_RANGE);
    p = greedy(2);
    p.top_logprobs = 99;
    CHECK_EQ_INT(sched_submit(s, ids, n, &p, &r), SL_ERR_ARG);
    p = greedy(2);
    p.stop[0] = "";
    CHECK_EQ_INT(sched_submit(s, ids, n, &p, &r), SL_ERR_ARG);
    p = greedy(2);
    ids[0] = 1 << 30; /* out of the vocabulary: the request fails, not the server */
    CHECK(sched_submit(s, ids, n, &p, &r) == SL_OK);
    while (v.finish == SCHED_RUNNING && sched_wait(r, &v, -1) == SL_OK) {}
    sched_release(r);
    CHECK_EQ_INT(v.finish, SCHED_ERROR);
    CHECK(strstr(v.error, "prompt evaluation failed") != NULL);
    sched_view_free(&v);
    sp.max_seqs = 0;
    struct sched *bad;
    CHECK_EQ_INT(sched_create(m, &sp, &bad), SL_ERR_ARG);
    sched_free(s);
    sl_model_close(m);
}

TEST(logprobs) {
    struct sl_model *m = open_demo();
    if (!m) TEST_SKIP("%s not built", MODEL);
    struct sched *s;
    struct sched_params sp = sched_default_params();
    sp.n_ctx = 64;
    CHECK(sched_create(m, &sp, &s) == SL_OK);
    int32_t ids[8];
    size_t n;
    prompt_of(1, ids, &n);
    struct sched_req_params p = greedy(3);
    p.logprobs = 1;
    p.top_logprobs = 5;
    struct sched_req *r;
    struct sched_view v = {0};
    CHECK(sched_submit(s, ids, n, &p, &r) == SL_OK);
    while (v.finish == SCHED_RUNNING && sched_wait(r, &v, -1) == SL_OK) {}
    sched_release(r);
    for (size_t k = 0; k < v.n_tokens; k++) {
        const struct sched_token *t = &v.tokens[k];
        CHECK_EQ_INT(t->n_top, 5);
        CHECK_EQ_INT(t->top_id[0], t->id); /* greedy: the best is the pick */
        CHECK(t->logprob <= 0 && t->top_logprob[0] == t->logprob);
        for (int q = 1; q < t->n_top; q++) CHECK(t->top_logprob[q] <= t->top_logprob[q - 1]);
    }
    sched_view_free(&v);
    sched_free(s);
    sl_model_close(m);
}

TEST(public_chat_api) {
    struct sl_model *m = open_demo();
    if (!m) TEST_SKIP("%s not built", MODEL);
    char *src = NULL;
    CHECK(sl_model_chat_template(m, &src) == SL_OK && src && strstr(src, "<|im_start|>"));
    free(src);
    struct sl_chat *c;
    CHECK(sl_chat_create(m, &c) == SL_OK);
    char *out = NULL;
    CHECK(sl_chat_render(c, "[{\"role\": \"user\", \"content\": \"hi\"}]", 1, NULL, &out) == SL_OK);
    CHECK(out && !strcmp(out, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"));
    free(out);
    CHECK_EQ_INT(sl_chat_render(c, "{\"role\": 1}", 1, NULL, &out), SL_ERR_ARG);
    CHECK_EQ_INT(sl_chat_render(c, "[", 1, NULL, &out), SL_ERR_ARG);
    CHECK_EQ_INT(sl_chat_render(c, "[]", 1, "[1]", &out), SL_ERR_ARG);
    /* (a message without "content": whatever transformers does, which
     * tests/test_chat_template.c checks against its fixtures) */
    sl_chat_free(c);
    c = NULL; /* an unterminated block is refused (the constructs the
               * interpreter supports: tests/test_chat_template.c) */
    CHECK(sl_chat_create_from_source("{% if x %}", NULL, NULL, &c) != SL_OK && !c);
    CHECK(strlen(sl_errmsg()) > 0);
    CHECK(sl_chat_create_from_source("{{ bos_token }}{{ messages[0].content }}", "<s>", NULL, &c) ==
          SL_OK);
    CHECK(sl_chat_render(c, "[{\"role\": \"user\", \"content\": \"x\"}]", 0, NULL, &out) == SL_OK);
    CHECK(out && !strcmp(out, "<s>x"));
    free(out);
    sl_chat_free(c);
    sl_model_close(m);
}

TEST_MAIN()
