/*
 * test_serve_sched.c — the request scheduler (src/serve_sched.h) on the
 * demo model (build/default.sluice, skipped when absent): concurrent
 * requests give exactly what each gives alone, stop strings cut the text,
 * a released request frees its sequence, a full queue says busy, the
 * prefix cache reuses a finished context, bad parameters are refused. Also
 * the public chat API (sl_chat_create / sl_model_chat_template) on it.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "serve_sched.h"
#include "sluice.h"
#include "test.h"
#include "util.h"

#define MODEL "build/default.sluice"
#define N_REQ 6
#define N_GEN 6

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
    struct sched_view v;
};

static void *run_job(void *arg) {
    struct job *j = arg;
    int32_t ids[8];
    size_t n;
    prompt_of(j->i, ids, &n);
    struct sched_req_params p = greedy(N_GEN);
    p.ignore_eos = 1;
    struct sched_req *r;
    if (sched_submit(j->s, ids, n, &p, &r)) return NULL;
    while (j->v.finish == SCHED_RUNNING && sched_wait(r, &j->v, -1) == SL_OK) {}
    sched_release(r);
    return NULL;
}

TEST(concurrent_equals_alone) {
    struct sl_model *m = open_demo();
    if (!m) TEST_SKIP("%s not built", MODEL);
    struct sched_params sp = sched_default_params();
    sp.max_seqs = 3; /* 6 requests: 3 run, 3 queue */
    sp.n_ctx = 64;
    struct sched *s;
    CHECK(sched_create(m, &sp, &s) == SL_OK);
    struct job alone[N_REQ], conc[N_REQ];
    memset(alone, 0, sizeof alone);
    memset(conc, 0, sizeof conc);
    for (int i = 0; i < N_REQ; i++) {
        alone[i] = (struct job){.s = s, .i = i};
        run_job(&alone[i]);
    }
    pthread_t th[N_REQ];
    for (int i = 0; i < N_REQ; i++) {
        conc[i] = (struct job){.s = s, .i = i};
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
    CHECK(mt.contexts <= sp.max_seqs + sp.n_cached);
    sched_free(s);
    sl_model_close(m);
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
    /* the template reads message['content'] of a message without one */
    CHECK_EQ_INT(sl_chat_render(c, "[{\"role\": \"user\"}]", 1, NULL, &out), SL_ERR_ARG);
    sl_chat_free(c);
    CHECK_EQ_INT(sl_chat_create_from_source("{% macro x() %}{% endmacro %}", NULL, NULL, &c),
                 SL_ERR_UNSUPPORTED);
    CHECK(sl_chat_create_from_source("{{ bos_token }}{{ messages[0].content }}", "<s>", NULL, &c) ==
          SL_OK);
    CHECK(sl_chat_render(c, "[{\"role\": \"user\", \"content\": \"x\"}]", 0, NULL, &out) == SL_OK);
    CHECK(out && !strcmp(out, "<s>x"));
    free(out);
    sl_chat_free(c);
    sl_model_close(m);
}

TEST_MAIN()
