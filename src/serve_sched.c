/*
 * serve_sched.c — the request scheduler (contract in serve_sched.h): a queue, a pool of
 * contexts with a prefix cache, and one thread that steps every active
 * request in turn.
 *
 * Not here: HTTP, JSON, templates. Invariants: only the scheduler thread
 * evaluates, samples or touches a slot's context; everything a client can
 * see (a request's tokens, text, finish reason, the queue, the counters) is
 * written under s->mu; a request is freed exactly once, by whichever of the
 * scheduler (retiring a released request) and the client (releasing a
 * finished or queued one) comes last.
 */
#include "serve_sched.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "context.h"
#include "cpu/pool.h"
#include "util.h"

enum { R_QUEUED, R_ACTIVE, R_DONE };

struct slot {
    struct sl_context *ctx;  /* NULL until first used */
    int32_t *toks;           /* (cap) ids evaluated in ctx, in order */
    size_t n_toks, cap;
    int in_use;
    uint64_t last_used;
};

struct sched_req {
    struct sched *s;
    int state;               /* R_QUEUED / R_ACTIVE / R_DONE */
    int client_gone;         /* the client let go (sched_release) */
    pthread_cond_t cv;
    /* the request (immutable after submit) */
    int32_t *prompt;         /* (n_prompt) */
    size_t n_prompt;
    struct sched_req_params p;
    char *stop[SCHED_MAX_STOP];
    double deadline;         /* monotonic seconds; 0 = none */
    /* progress, written under s->mu */
    struct sched_token *tokens; /* (cap_tokens) */
    size_t n_tokens, cap_tokens;
    char *gen;               /* (gen_cap) generated text; [0, released) final */
    size_t gen_len, gen_cap, released;
    int finish;
    int stop_hit;            /* a stop string matched: the text is final */
    uint32_t n_cached;
    char error[256];
    /* scheduler private */
    struct slot *slot;
    size_t n_done;           /* prompt tokens evaluated in the slot */
    struct sl_sampler *sampler;
    struct sl_detok *detok;
    struct sched_req *next;  /* queue link */
};

struct sched {
    struct sl_model *model;
    struct sched_params p;
    const int32_t *eos;
    size_t n_eos;
    int32_t n_vocab;
    pthread_t thread;
    int started;
    pthread_mutex_t mu;
    pthread_cond_t work;     /* the scheduler waits here when idle */
    int stopping;
    struct sched_req *q_head, *q_tail;
    int n_queued;
    struct sched_req **active; /* (max_seqs) */
    int n_active;
    struct sl_pool *pool;    /* the compute threads every context uses: the
                                first context's pool (contexts are driven by
                                this one thread, one at a time) */
    struct slot *slots;      /* (max_seqs + n_cached) */
    int n_slots;
    uint64_t tick;
    struct sched_metrics m;
};

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

struct sched_params sched_default_params(void) {
    return (struct sched_params){.max_seqs = 4, .max_queue = 64, .n_cached = 4, .n_ctx = 0,
                                 .n_batch = 0, .n_threads = 0};
}

void sched_view_free(struct sched_view *v) {
    if (!v) return;
    sl_free(v->tokens);
    sl_free(v->text);
    memset(v, 0, sizeof *v);
}

static void req_free(struct sched_req *r) {
    if (!r) return;
    pthread_cond_destroy(&r->cv);
    sl_free(r->prompt);
    for (int i = 0; i < SCHED_MAX_STOP; i++) sl_free(r->stop[i]);
    sl_free(r->tokens);
    sl_free(r->gen);
    sl_sampler_free(r->sampler);
    sl_detok_free(r->detok);
    sl_free(r);
}

/* ---- text and finishing (under s->mu) ------------------------------------ */

static int gen_append(struct sched_req *r, const char *t, size_t n) {
    if (r->gen_len + n + 1 > r->gen_cap) {
        size_t cap = r->gen_cap ? r->gen_cap : 256;
        while (cap < r->gen_len + n + 1) cap *= 2;
        char *g = sl_realloc(r->gen, cap);
        if (!g) return SL_ERR_NOMEM;
        r->gen = g;
        r->gen_cap = cap;
    }
    if (n) memcpy(r->gen + r->gen_len, t, n);
    r->gen_len += n;
    r->gen[r->gen_len] = 0;
    return SL_OK;
}

/* Releases generated text up to what no stop string can still claim;
 * returns 1 when a stop string matched (the text is cut before it). */
static int release_text(struct sched_req *r) {
    size_t hold = 0;
    for (int i = 0; i < SCHED_MAX_STOP && r->stop[i]; i++) {
        size_t sl = strlen(r->stop[i]);
        size_t from = r->released >= sl ? r->released - sl + 1 : 0;
        const char *hit = memmem(r->gen + from, r->gen_len - from, r->stop[i], sl);
        if (hit) {
            r->gen_len = (size_t)(hit - r->gen);
            r->gen[r->gen_len] = 0;
            r->released = r->gen_len;
            return 1;
        }
        /* the longest tail of gen that begins this stop string */
        for (size_t k = sl - 1; k > hold; k--)
            if (k <= r->gen_len && !memcmp(r->gen + r->gen_len - k, r->stop[i], k)) {
                hold = k;
                break;
            }
    }
    size_t rel = r->gen_len - hold;
    if (rel > r->released) r->released = rel;
    return 0;
}

/* Ends r (under s->mu): flushes held-back text unless a stop cut it, frees
 * its slot for reuse, wakes the client; frees r if it was released. */
static void retire(struct sched *s, struct sched_req *r, int finish) {
    if (r->finish == SCHED_RUNNING) r->finish = finish;
    if (!r->stop_hit) { /* held-back text (partial UTF-8, a stop's prefix) */
        const char *t;
        size_t n;
        if (r->detok && sl_detok_flush(r->detok, &t, &n) == SL_OK && n) gen_append(r, t, n);
        r->released = r->gen_len;
    }
    if (r->slot) {
        r->slot->in_use = 0;
        r->slot->last_used = ++s->tick;
        r->slot = NULL;
    }
    for (int i = 0; i < s->n_active; i++)
        if (s->active[i] == r) {
            s->active[i] = s->active[--s->n_active];
            break;
        }
    r->state = R_DONE;
    s->m.finished++;
    pthread_cond_broadcast(&r->cv);
    if (r->client_gone) req_free(r);
}

/* ---- admission: a slot per request, reusing the longest cached prefix ---- */

static int slot_push(struct slot *sl, const int32_t *ids, size_t n) {
    if (sl->n_toks + n > sl->cap) {
        size_t cap = sl->cap ? sl->cap : 256;
        while (cap < sl->n_toks + n) cap *= 2;
        int32_t *t = sl_realloc(sl->toks, cap * sizeof *t);
        if (!t) return SL_ERR_NOMEM;
        sl->toks = t;
        sl->cap = cap;
    }
    memcpy(sl->toks + sl->n_toks, ids, n * sizeof *ids);
    sl->n_toks += n;
    return SL_OK;
}

static int admit_one(struct sched *s, struct sched_req *r) {
    struct slot *best = NULL, *lru = NULL, *empty = NULL;
    for (int i = 0; i < s->n_slots; i++) {
        struct slot *sl = &s->slots[i];
        if (sl->in_use) continue;
        if (!sl->ctx) {
            if (!empty) empty = sl;
            continue;
        }
        if (!lru || sl->last_used < lru->last_used) lru = sl;
        if (sl->n_toks && sl->n_toks <= r->n_prompt && (!best || sl->n_toks > best->n_toks) &&
            !memcmp(sl->toks, r->prompt, sl->n_toks * sizeof *sl->toks) &&
            (sl->n_toks < r->n_prompt || sl_logits(sl->ctx)))
            best = sl;
    }
    struct slot *sl = best ? best : empty ? empty : lru;
    SL_ASSERT(sl != NULL); /* n_slots > max_seqs >= n_active */
    if (!sl->ctx) {
        struct sl_context_params cp = sl_context_default_params();
        cp.n_ctx = s->p.n_ctx;
        cp.n_batch = s->p.n_batch;
        cp.n_threads = s->p.n_threads;
        int rc = sl_context_create(s->model, &cp, &sl->ctx);
        if (rc) {
            snprintf(r->error, sizeof r->error, "cannot create a context: %s", sl_errmsg());
            return rc;
        }
        /* Why: one pool per context means every context's workers spin
         * after its step while the next context computes; sharing one pool
         * keeps exactly n_threads busy. */
        if (!s->pool) {
            s->pool = sl->ctx->pool;
        } else {
            pool_free(sl->ctx->pool);
            sl->ctx->pool = s->pool;
        }
    } else if (sl != best) {
        sl_context_reset(sl->ctx);
        sl->n_toks = 0;
    }
    sl->in_use = 1;
    r->slot = sl;
    r->n_done = sl->n_toks;
    r->n_cached = (uint32_t)sl->n_toks;
    s->m.cached_prompt_tokens += sl->n_toks;
    return SL_OK;
}

/* ---- one step --------------------------------------------------------- */

/* Fills tok's logprob and top alternatives from logits (log-softmax at
 * temperature 1: the model's own distribution). */
static void token_logprobs(const struct sched *s, const float *logits, int n_top,
                           struct sched_token *tok) {
    float mx = -INFINITY;
    for (int32_t i = 0; i < s->n_vocab; i++) mx = logits[i] > mx ? logits[i] : mx;
    double sum = 0;
    for (int32_t i = 0; i < s->n_vocab; i++) sum += exp((double)(logits[i] - mx));
    float lse = mx + (float)log(sum);
    tok->logprob = logits[tok->id] - lse;
    tok->n_top = 0;
    for (int32_t i = 0; i < s->n_vocab && n_top > 0; i++) {
        float v = logits[i] - lse;
        int k = tok->n_top;
        if (k == n_top && v <= tok->top_logprob[k - 1]) continue;
        if (k < n_top) tok->n_top++;
        else k--;
        while (k > 0 && tok->top_logprob[k - 1] < v) {
            tok->top_logprob[k] = tok->top_logprob[k - 1];
            tok->top_id[k] = tok->top_id[k - 1];
            k--;
        }
        tok->top_logprob[k] = v;
        tok->top_id[k] = i;
    }
}

/* The seam for batched decode: evaluates ids[i] in reqs[i]'s context for
 * i < n (one new token each). Today: one sl_eval per context; a
 * multi-sequence decode step will replace this function. Sets rc[i]. */
static void step_decode(struct sched_req **reqs, const int32_t *ids, int n, int *rc) {
    for (int i = 0; i < n; i++) {
        struct slot *sl = reqs[i]->slot;
        rc[i] = sl_eval(sl->ctx, &ids[i], 1, NULL);
        if (!rc[i]) rc[i] = slot_push(sl, &ids[i], 1);
    }
}

static int is_eos(const struct sched *s, int32_t id) {
    for (size_t i = 0; i < s->n_eos; i++)
        if (s->eos[i] == id) return 1;
    return 0;
}

static void fail_req(struct sched *s, struct sched_req *r, const char *what) {
    snprintf(r->error, sizeof r->error, "%s: %s", what, sl_errmsg());
    if (r->slot) { /* a failed eval leaves the context undefined past n_past */
        sl_context_reset(r->slot->ctx);
        r->slot->n_toks = 0;
    }
    retire(s, r, SCHED_ERROR);
}

/* One pass over the active requests: a prompt chunk for each request still
 * in its prompt, then one decode step for all the others. Called and
 * returns with s->mu held; drops it around model work. */
static void step_all(struct sched *s) {
    int n = s->n_active;
    struct sched_req *reqs[n > 0 ? n : 1], *dec[n > 0 ? n : 1];
    int32_t ids[n > 0 ? n : 1];
    int rcs[n > 0 ? n : 1], n_dec = 0;
    double t_now = now_s();
    for (int i = 0; i < s->n_active;) {
        struct sched_req *r = s->active[i];
        if (r->client_gone) retire(s, r, SCHED_CANCELLED);
        else if (r->deadline > 0 && t_now > r->deadline) retire(s, r, SCHED_TIMEOUT);
        else i++;
    }
    n = s->n_active;
    memcpy(reqs, s->active, (size_t)n * sizeof *reqs);
    pthread_mutex_unlock(&s->mu);
    /* prompts: one chunk each (a long prompt does not stall the others) */
    double t0 = now_s();
    int any_prompt = 0;
    for (int i = 0; i < n; i++) {
        struct sched_req *r = reqs[i];
        if (r->n_done >= r->n_prompt) continue;
        size_t k = r->n_prompt - r->n_done, chunk = s->p.n_batch ? s->p.n_batch : 64;
        if (k > chunk * 4) k = chunk * 4;
        int rc = sl_eval(r->slot->ctx, r->prompt + r->n_done, k, NULL);
        if (!rc) rc = slot_push(r->slot, r->prompt + r->n_done, k);
        any_prompt = 1;
        if (rc) {
            pthread_mutex_lock(&s->mu);
            fail_req(s, r, "prompt evaluation failed");
            pthread_mutex_unlock(&s->mu);
            reqs[i] = NULL;
            continue;
        }
        r->n_done += k;
        /* sampling waits for the next pass, so every request moves once */
        reqs[i] = NULL;
    }
    double t1 = now_s();
    /* decode: sample from each context's logits, publish, evaluate */
    struct sched_token toks[n > 0 ? n : 1];
    for (int i = 0; i < n; i++) {
        struct sched_req *r = reqs[i];
        if (!r) continue;
        const float *logits = sl_logits(r->slot->ctx);
        struct sched_token *t = &toks[n_dec];
        memset(t, 0, sizeof *t);
        t->id = sl_sample(r->sampler, logits);
        if (r->p.logprobs) token_logprobs(s, logits, r->p.top_logprobs, t);
        dec[n_dec++] = r;
    }
    pthread_mutex_lock(&s->mu);
    int n_eval = 0;
    for (int i = 0; i < n_dec; i++) {
        struct sched_req *r = dec[i];
        struct sched_token *t = &toks[i];
        if (!r->p.ignore_eos && is_eos(s, t->id)) {
            retire(s, r, SCHED_STOP);
            continue;
        }
        const char *txt;
        size_t tl;
        int stopped = 0;
        if (r->n_tokens == r->cap_tokens || sl_detok_push(r->detok, t->id, &txt, &tl) ||
            gen_append(r, txt, tl)) {
            snprintf(r->error, sizeof r->error, "out of memory");
            retire(s, r, SCHED_ERROR);
            continue;
        }
        stopped = r->stop_hit = release_text(r);
        t->text_end = r->released;
        r->tokens[r->n_tokens++] = *t;
        s->m.generated_tokens++;
        pthread_cond_broadcast(&r->cv);
        if (stopped) retire(s, r, SCHED_STOP);
        else if ((int32_t)r->n_tokens >= r->p.max_tokens) retire(s, r, SCHED_LENGTH);
        else if (r->slot->n_toks + 1 > s->p.n_ctx) retire(s, r, SCHED_LENGTH);
        else {
            dec[n_eval] = r;
            ids[n_eval++] = t->id;
        }
    }
    pthread_mutex_unlock(&s->mu);
    if (n_eval) step_decode(dec, ids, n_eval, rcs);
    double t2 = now_s();
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < n_eval; i++)
        if (rcs[i] && dec[i]->state == R_ACTIVE) fail_req(s, dec[i], "decode failed");
    if (any_prompt) s->m.prompt_seconds += t1 - t0;
    s->m.decode_seconds += t2 - t1;
    /* the store-wide counters, read here where no context is evaluating */
    for (int i = 0; i < s->n_slots; i++)
        if (s->slots[i].ctx) {
            sl_context_stats(s->slots[i].ctx, &s->m.store);
            break;
        }
}

static void *sched_main(void *arg) {
    struct sched *s = arg;
    pthread_mutex_lock(&s->mu);
    while (!s->stopping) {
        while (s->q_head && s->n_active < s->p.max_seqs) {
            struct sched_req *r = s->q_head;
            s->q_head = r->next;
            if (!s->q_head) s->q_tail = NULL;
            s->n_queued--;
            r->state = R_ACTIVE;
            s->active[s->n_active++] = r;
            if (admit_one(s, r)) retire(s, r, SCHED_ERROR);
        }
        if (!s->n_active) {
            pthread_cond_wait(&s->work, &s->mu);
            continue;
        }
        step_all(s);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ---- public ------------------------------------------------------------- */

int sched_create(struct sl_model *model, const struct sched_params *params,
                 struct sched **out) {
    *out = NULL;
    struct sched_params p = params ? *params : sched_default_params();
    if (p.max_seqs < 1 || p.max_seqs > 1024 || p.max_queue < 0 || p.n_cached < 0 ||
        p.n_cached > 1024)
        return sl_seterr(SL_ERR_ARG, "scheduler: max_seqs must be 1..1024 (got %d), "
                         "max_queue >= 0 (got %d), n_cached 0..1024 (got %d)",
                         p.max_seqs, p.max_queue, p.n_cached);
    if (!p.n_ctx) {
        int32_t t = sl_model_n_ctx_train(model);
        p.n_ctx = t > 0 && t < 4096 ? (uint32_t)t : 4096;
    }
    struct sched *s = sl_calloc(1, sizeof *s);
    if (!s) return sl_seterr(SL_ERR_NOMEM, "scheduler: out of memory");
    s->model = model;
    s->p = p;
    s->n_eos = sl_model_eos_ids(model, &s->eos);
    s->n_vocab = sl_model_n_vocab(model);
    s->n_slots = p.max_seqs + p.n_cached;
    s->active = sl_calloc((size_t)p.max_seqs, sizeof *s->active);
    s->slots = sl_calloc((size_t)s->n_slots, sizeof *s->slots);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->work, NULL);
    if (!s->active || !s->slots) {
        sched_free(s);
        return sl_seterr(SL_ERR_NOMEM, "scheduler: out of memory");
    }
    if (pthread_create(&s->thread, NULL, sched_main, s)) {
        sched_free(s);
        return sl_seterr(SL_ERR_INTERNAL, "scheduler: cannot start its thread");
    }
    s->started = 1;
    *out = s;
    return SL_OK;
}

void sched_free(struct sched *s) {
    if (!s) return;
    pthread_mutex_lock(&s->mu);
    s->stopping = 1;
    pthread_cond_broadcast(&s->work);
    pthread_mutex_unlock(&s->mu);
    if (s->started) pthread_join(s->thread, NULL);
    while (s->n_active) retire(s, s->active[0], SCHED_CANCELLED);
    while (s->q_head) {
        struct sched_req *r = s->q_head;
        s->q_head = r->next;
        r->state = R_DONE;
        r->finish = SCHED_CANCELLED;
        pthread_cond_broadcast(&r->cv);
        if (r->client_gone) req_free(r);
    }
    for (int i = 0; i < s->n_slots && s->slots; i++) {
        if (s->slots[i].ctx) s->slots[i].ctx->pool = NULL; /* shared: freed below */
        sl_context_free(s->slots[i].ctx);
        sl_free(s->slots[i].toks);
    }
    pool_free(s->pool);
    pthread_cond_destroy(&s->work);
    pthread_mutex_destroy(&s->mu);
    sl_free(s->slots);
    sl_free(s->active);
    sl_free(s);
}

int sched_submit(struct sched *s, const int32_t *prompt, size_t n,
                 const struct sched_req_params *p, struct sched_req **out) {
    *out = NULL;
    if (!n) return sl_seterr(SL_ERR_RANGE, "the prompt is empty (no tokens)");
    if (p->max_tokens < 1)
        return sl_seterr(SL_ERR_ARG, "max_tokens must be at least 1 (got %d)", p->max_tokens);
    if (p->top_logprobs < 0 || p->top_logprobs > SCHED_MAX_TOP_LOGPROBS)
        return sl_seterr(SL_ERR_ARG, "top_logprobs must be 0..%d (got %d)",
                         SCHED_MAX_TOP_LOGPROBS, p->top_logprobs);
    if (n + (size_t)p->max_tokens > s->p.n_ctx)
        return sl_seterr(SL_ERR_RANGE, "the prompt (%zu tokens) plus max_tokens (%d) exceeds "
                         "the context size (%u tokens) by %zu", n, p->max_tokens, s->p.n_ctx,
                         n + (size_t)p->max_tokens - s->p.n_ctx);
    for (int i = 0; i < SCHED_MAX_STOP && p->stop[i]; i++)
        if (!p->stop[i][0]) return sl_seterr(SL_ERR_ARG, "stop strings must not be empty");
    struct sched_req *r = sl_calloc(1, sizeof *r);
    if (!r) return sl_seterr(SL_ERR_NOMEM, "out of memory");
    pthread_cond_init(&r->cv, NULL);
    r->s = s;
    r->p = *p;
    r->n_prompt = n;
    r->prompt = sl_malloc(n * sizeof *prompt);
    r->cap_tokens = (size_t)p->max_tokens;
    r->tokens = sl_malloc(r->cap_tokens * sizeof *r->tokens);
    int rc = r->prompt && r->tokens ? SL_OK : sl_seterr(SL_ERR_NOMEM, "out of memory");
    for (int i = 0; !rc && i < SCHED_MAX_STOP && p->stop[i]; i++) {
        r->stop[i] = sl_strdup(p->stop[i]);
        if (!r->stop[i]) rc = sl_seterr(SL_ERR_NOMEM, "out of memory");
    }
    for (int i = 0; i < SCHED_MAX_STOP; i++) r->p.stop[i] = r->stop[i];
    if (!rc) rc = sl_sampler_create(&p->sampler, s->n_vocab, &r->sampler);
    if (!rc) rc = sl_detok_create(sl_model_tokenizer(s->model), &r->detok);
    if (rc) {
        req_free(r);
        return rc;
    }
    memcpy(r->prompt, prompt, n * sizeof *prompt);
    if (p->timeout_s > 0) r->deadline = now_s() + p->timeout_s;
    pthread_mutex_lock(&s->mu);
    if (s->n_active + s->n_queued >= s->p.max_seqs + s->p.max_queue) {
        s->m.rejected_busy++;
        pthread_mutex_unlock(&s->mu);
        req_free(r);
        return sl_seterr(SL_ERR_UNSUPPORTED, "busy: %d requests running and %d queued",
                         s->p.max_seqs, s->p.max_queue);
    }
    r->state = R_QUEUED;
    if (s->q_tail) s->q_tail->next = r;
    else s->q_head = r;
    s->q_tail = r;
    s->n_queued++;
    s->m.requests++;
    s->m.prompt_tokens += n;
    pthread_cond_signal(&s->work);
    pthread_mutex_unlock(&s->mu);
    *out = r;
    return SL_OK;
}

int sched_wait(struct sched_req *r, struct sched_view *v, double timeout_s) {
    struct sched *s = r->s;
    pthread_mutex_lock(&s->mu);
    if (timeout_s != 0) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        double t = (double)until.tv_sec + 1e-9 * (double)until.tv_nsec + timeout_s;
        until.tv_sec = (time_t)t;
        until.tv_nsec = (long)((t - (double)until.tv_sec) * 1e9);
        while (r->state != R_DONE && r->n_tokens <= v->n_tokens) {
            if (timeout_s < 0) pthread_cond_wait(&r->cv, &s->mu);
            else if (pthread_cond_timedwait(&r->cv, &s->mu, &until)) break;
        }
    }
    int rc = SL_OK;
    size_t nt = r->n_tokens, nx = r->released;
    if (nt > v->cap_tokens) {
        struct sched_token *t = sl_realloc(v->tokens, nt * sizeof *t);
        if (!t) rc = SL_ERR_NOMEM;
        else v->tokens = t, v->cap_tokens = nt;
    }
    if (!rc && nx + 1 > v->cap_text) {
        char *t = sl_realloc(v->text, nx + 1);
        if (!t) rc = SL_ERR_NOMEM;
        else v->text = t, v->cap_text = nx + 1;
    }
    if (!rc) {
        if (nt > v->n_tokens)
            memcpy(v->tokens + v->n_tokens, r->tokens + v->n_tokens,
                   (nt - v->n_tokens) * sizeof *v->tokens);
        v->n_tokens = nt;
        if (nx > v->text_len) memcpy(v->text + v->text_len, r->gen + v->text_len, nx - v->text_len);
        v->text_len = nx;
        v->text[nx] = 0;
        v->finish = r->state == R_DONE ? r->finish : SCHED_RUNNING;
        v->n_prompt = (uint32_t)r->n_prompt;
        v->n_cached_prompt = r->n_cached;
        snprintf(v->error, sizeof v->error, "%s", r->error);
    }
    pthread_mutex_unlock(&s->mu);
    return rc ? sl_seterr(rc, "out of memory") : SL_OK;
}

void sched_release(struct sched_req *r) {
    if (!r) return;
    struct sched *s = r->s;
    pthread_mutex_lock(&s->mu);
    int free_now = 0;
    if (r->state == R_DONE) {
        free_now = 1;
    } else if (r->state == R_QUEUED) {
        struct sched_req **pp = &s->q_head, *prev = NULL;
        while (*pp && *pp != r) prev = *pp, pp = &(*pp)->next;
        if (*pp) {
            *pp = r->next;
            if (s->q_tail == r) s->q_tail = prev;
            s->n_queued--;
        }
        free_now = 1;
    } else {
        r->client_gone = 1; /* the scheduler retires and frees it */
        pthread_cond_signal(&s->work);
    }
    pthread_mutex_unlock(&s->mu);
    if (free_now) req_free(r);
}

void sched_get_metrics(struct sched *s, struct sched_metrics *m) {
    pthread_mutex_lock(&s->mu);
    *m = s->m;
    m->active = s->n_active;
    m->queued = s->n_queued;
    m->contexts = 0;
    for (int i = 0; i < s->n_slots; i++) m->contexts += s->slots[i].ctx != NULL;
    pthread_mutex_unlock(&s->mu);
}
