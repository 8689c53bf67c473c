/*
 * serve_sched.c — the request scheduler (contract in serve_sched.h): a
 * queue, one multi-sequence context (or one context per slot as the
 * fallback) with a prefix cache, and one thread that runs continuous
 * batching steps: a prefill batch of prompt chunks, then ONE decode batch
 * of every decoding request's next token.
 *
 * Not here: HTTP, JSON, templates. Invariants: only the scheduler thread
 * evaluates, samples or touches a slot or a context; everything a client
 * can see (a request's tokens, text, finish reason, the queue, the
 * counters) is written under s->mu; a request is freed exactly once, by
 * whichever of the scheduler (retiring a released request) and the client
 * (releasing a finished or queued one) comes last. A slot's toks are
 * exactly the tokens its sequence holds (resynchronised with sl_seq_pos_max
 * after a failed evaluation).
 */
#include "serve_sched.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "util.h"

enum { R_QUEUED, R_ACTIVE, R_DONE };

/* One sequence: in the shared context (batched) or in its own context. */
struct slot {
    struct sl_context *ctx;  /* batched: s->ctx; else its own, NULL until used */
    int32_t seq;             /* the sequence id in ctx (0 when not batched) */
    int32_t *toks;           /* (cap) ids the sequence holds, in order */
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
    size_t n_done;           /* prompt tokens the slot holds; the prompt's
                                last token is evaluated as the first decode
                                token (pending), so n_done < n_prompt */
    int32_t pending;         /* decoding: the token to evaluate next */
    uint64_t admit_no;       /* admission order (prefill is oldest first) */
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
    struct sl_context *ctx;  /* batched: the one context of n_slots sequences;
                                NULL in the fallback */
    struct slot *slots;      /* (n_slots = max_seqs + n_cached) */
    int n_slots;
    uint64_t tick, n_admitted;
    /* step scratch (scheduler private, sized at create) */
    float *rows;             /* (max_seqs, n_vocab) decode logits */
    int32_t *b_tok, *b_seq;  /* (n_batch_ctx) a batch's tokens and sequences */
    struct sched_req **b_req; /* (max_seqs) */
    struct sched_token *b_out; /* (max_seqs) sampled tokens */
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

/* ---- sequences (scheduler thread only) ----------------------------------- */

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

/* After a failed evaluation: the slot's tokens = what its sequence kept
 * (sl_decode_batch rolls back; a hybrid model's sequence is cleared). */
static void slot_resync(struct slot *sl) {
    int64_t pm = sl->ctx ? sl_seq_pos_max(sl->ctx, sl->seq) : -1;
    size_t held = pm < 0 ? 0 : (size_t)pm + 1;
    if (held < sl->n_toks) sl->n_toks = held;
}

static void slot_clear(struct slot *sl) {
    if (sl->ctx) {
        if (sl_seq_clear(sl->ctx, sl->seq)) sl_context_reset(sl->ctx); /* seq is valid */
    }
    sl->n_toks = 0;
}

/* The slot's context in the fallback (one per slot), created on first use. */
static int slot_ctx(struct sched *s, struct slot *sl) {
    if (sl->ctx) return SL_OK;
    struct sl_context_params cp = sl_context_default_params();
    cp.n_ctx = s->p.n_ctx;
    cp.n_batch = s->p.n_batch;
    cp.n_threads = s->p.n_threads;
    return sl_context_create(s->model, &cp, &sl->ctx);
}

/* Keeps dst's first keep tokens, or makes dst hold src's first keep tokens
 * (src != dst, idle). Any failure leaves dst empty and returns 0 kept: the
 * request then evaluates its whole prompt. Returns the tokens kept. */
static size_t slot_reuse(struct sched *s, struct slot *dst, struct slot *src, size_t keep) {
    if (!keep) {
        slot_clear(dst);
        return 0;
    }
    int rc = SL_OK;
    if (src && src != dst) {
        rc = s->ctx ? sl_seq_copy(s->ctx, src->seq, dst->seq)
                    : sl_context_copy(dst->ctx, src->ctx);
        if (!rc) {
            dst->n_toks = 0;
            rc = slot_push(dst, src->toks, src->n_toks);
        }
    }
    if (!rc && keep < dst->n_toks) {
        rc = s->ctx ? sl_seq_truncate(s->ctx, dst->seq, (uint32_t)keep)
                    : sl_context_truncate(dst->ctx, (uint32_t)keep);
        if (!rc) dst->n_toks = keep;
    }
    if (rc) {
        sl_log(SL_LOG_DEBUG, "serve: prefix reuse failed (%s); evaluating the whole prompt",
               sl_errmsg());
        slot_clear(dst);
        return 0;
    }
    return keep;
}

/* ---- admission: a slot per request, reusing the longest cached prefix ---- */

static size_t common_prefix(const int32_t *a, size_t na, const int32_t *b, size_t nb) {
    size_t n = na < nb ? na : nb, i = 0;
    while (i < n && a[i] == b[i]) i++;
    return i;
}

/* Gives r (just made active) a slot holding the longest prefix of its
 * prompt that the cache has. Called with s->mu held; drops it around the
 * context work (only this thread touches slots). Returns an error with
 * r->error set when the request cannot run. */
static int admit_one(struct sched *s, struct sched_req *r) {
    for (size_t i = 0; i < r->n_prompt; i++)
        if (r->prompt[i] < 0 || r->prompt[i] >= s->n_vocab) {
            snprintf(r->error, sizeof r->error, "prompt evaluation failed: token id %d at "
                     "index %zu is out of range (vocabulary has %d ids)", r->prompt[i], i,
                     s->n_vocab);
            return SL_ERR_RANGE;
        }
    size_t limit = r->n_prompt - 1; /* the last prompt token is decoded */
    struct slot *best = NULL, *lru = NULL, *empty = NULL;
    size_t best_len = 0;
    for (int i = 0; i < s->n_slots; i++) {
        struct slot *sl = &s->slots[i];
        if (sl->in_use) continue;
        if (!sl->n_toks) {
            if (!empty) empty = sl;
            continue;
        }
        if (!lru || sl->last_used < lru->last_used) lru = sl;
        size_t c = common_prefix(sl->toks, sl->n_toks, r->prompt, limit);
        /* ties: the one that needs no copy (all its tokens shared) */
        if (c > best_len || (c && c == best_len && c == sl->n_toks)) best = sl, best_len = c;
    }
    struct slot *dst, *src = NULL;
    size_t keep = 0;
    if (best && best_len == best->n_toks) { /* its tokens are a prefix: take it */
        dst = best;
        keep = best_len;
    } else if (best && best_len >= SCHED_MIN_REUSE) { /* fork it, cut the copy */
        dst = empty ? empty : lru != best ? lru : NULL;
        for (int i = 0; !dst && i < s->n_slots; i++)
            if (!s->slots[i].in_use && &s->slots[i] != best &&
                (!dst || s->slots[i].last_used < dst->last_used))
                dst = &s->slots[i];
        if (!dst) dst = best; /* the only idle one: cut it in place */
        src = best;
        keep = best_len;
    } else {
        dst = empty ? empty : lru;
    }
    SL_ASSERT(dst != NULL); /* n_slots > max_seqs >= n_active */
    dst->in_use = 1;
    dst->last_used = ++s->tick;
    if (src) src->last_used = s->tick;
    r->slot = dst;
    r->admit_no = ++s->n_admitted;
    pthread_mutex_unlock(&s->mu);
    int rc = s->ctx ? SL_OK : slot_ctx(s, dst);
    if (!rc) keep = slot_reuse(s, dst, src, keep);
    pthread_mutex_lock(&s->mu);
    if (rc) {
        snprintf(r->error, sizeof r->error, "cannot create a context: %s", sl_errmsg());
        return rc;
    }
    r->n_done = keep;
    r->pending = r->prompt[r->n_prompt - 1];
    r->n_cached = (uint32_t)keep;
    s->m.cached_prompt_tokens += keep;
    return SL_OK;
}
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


/* ---- one step --------------------------------------------------------- */

static int is_eos(const struct sched *s, int32_t id) {
    for (size_t i = 0; i < s->n_eos; i++)
        if (s->eos[i] == id) return 1;
    return 0;
}

/* Under s->mu: r failed; its slot keeps what its sequence still holds. */
static void fail_req(struct sched *s, struct sched_req *r, const char *what, const char *msg) {
    snprintf(r->error, sizeof r->error, "%s: %s", what, msg);
    if (r->slot) slot_resync(r->slot);
    retire(s, r, SCHED_ERROR);
}

/* The chunk of r's prompt the next prefill evaluates: up to the next
 * multiple of n_batch positions (the same cut whatever else runs), never
 * the prompt's last token. */
static size_t prefill_len(const struct sched *s, const struct sched_req *r) {
    size_t c = s->p.n_batch, end = (r->n_done / c + 1) * c;
    if (end > r->n_prompt - 1) end = r->n_prompt - 1;
    return end - r->n_done;
}

/* Prefill: whole chunks of the oldest requests in their prompt, n_batch
 * tokens at most, in one forward pass without logits (the fallback: one
 * sl_eval per chunk). reqs[0..n) are the active requests; a request whose
 * chunk failed is set to NULL and its error put in err[i]. Returns the
 * tokens evaluated. */
static size_t step_prefill(struct sched *s, struct sched_req **reqs, int n, char **err,
                           char *msgs, size_t msg_cap) {
    struct sched_req **pick = s->b_req;
    int np = 0;
    size_t total = 0;
    for (;;) { /* oldest first, whole chunks while they fit */
        int at = -1;
        for (int i = 0; i < n; i++) {
            struct sched_req *r = reqs[i];
            if (!r || r->n_done + 1 >= r->n_prompt) continue;
            int taken = 0;
            for (int j = 0; j < np && !taken; j++) taken = pick[j] == r;
            if (!taken && (at < 0 || r->admit_no < reqs[at]->admit_no)) at = i;
        }
        if (at < 0) break;
        size_t k = prefill_len(s, reqs[at]);
        if (total + k > s->p.n_batch) break;
        pick[np++] = reqs[at];
        total += k;
    }
    if (!np) return 0;
    int rc = SL_OK;
    if (s->ctx) {
        size_t at = 0;
        for (int j = 0; j < np; j++) {
            struct sched_req *r = pick[j];
            size_t k = prefill_len(s, r);
            memcpy(s->b_tok + at, r->prompt + r->n_done, k * sizeof *s->b_tok);
            for (size_t q = 0; q < k; q++) s->b_seq[at + q] = r->slot->seq;
            at += k;
        }
        struct sl_batch b = {total, s->b_tok, s->b_seq, NULL};
        rc = sl_decode_batch(s->ctx, &b);
        if (rc) snprintf(msgs, msg_cap, "%s", sl_errmsg());
    }
    for (int j = 0; j < np; j++) {
        struct sched_req *r = pick[j];
        size_t k = prefill_len(s, r);
        int rj = rc;
        if (!s->ctx) {
            rj = sl_eval(r->slot->ctx, r->prompt + r->n_done, k, NULL);
            if (rj) snprintf(msgs, msg_cap, "%s", sl_errmsg());
        }
        if (!rj) rj = slot_push(r->slot, r->prompt + r->n_done, k);
        if (!rj) {
            r->n_done += k;
            continue;
        }
        for (int i = 0; i < n; i++)
            if (reqs[i] == r) {
                err[i] = msgs; /* the message of the failed pass */
                reqs[i] = NULL;
            }
    }
    return total;
}

/* Decode: evaluates dec[i]->pending for i < n in ONE forward pass (the
 * fallback: one sl_eval each), so each routed expert is read once for all
 * of them; on success row i of s->rows holds dec[i]'s logits. Sets rc[i]. */
static void step_decode(struct sched *s, struct sched_req **dec, int n, int *rc, char *msg,
                        size_t msg_cap) {
    size_t nv = (size_t)s->n_vocab;
    if (s->ctx) {
        for (int i = 0; i < n; i++) {
            s->b_tok[i] = dec[i]->pending;
            s->b_seq[i] = dec[i]->slot->seq;
        }
        struct sl_batch b = {(size_t)n, s->b_tok, s->b_seq, s->rows};
        int st = sl_decode_batch(s->ctx, &b);
        if (st) snprintf(msg, msg_cap, "%s", sl_errmsg());
        for (int i = 0; i < n; i++) rc[i] = st;
    } else {
        for (int i = 0; i < n; i++) {
            rc[i] = sl_eval(dec[i]->slot->ctx, &dec[i]->pending, 1, NULL);
            if (rc[i]) snprintf(msg, msg_cap, "%s", sl_errmsg());
            else memcpy(s->rows + i * nv, sl_logits(dec[i]->slot->ctx), nv * sizeof(float));
        }
    }
    for (int i = 0; i < n; i++)
        if (!rc[i]) rc[i] = slot_push(dec[i]->slot, &dec[i]->pending, 1);
}

/* One continuous-batching step over the active requests: a prefill batch,
 * then one decode batch, then sampling and publishing. Called and returns
 * with s->mu held; drops it around model work. */
static void step_all(struct sched *s) {
    double t_now = now_s();
    for (int i = 0; i < s->n_active;) {
        struct sched_req *r = s->active[i];
        if (r->client_gone) retire(s, r, SCHED_CANCELLED);
        else if (r->deadline > 0 && t_now > r->deadline) retire(s, r, SCHED_TIMEOUT);
        else i++;
    }
    int n = s->n_active;
    if (!n) return;
    struct sched_req *reqs[n], *s_orig[n], *dec[n];
    char *err[n];
    int rcs[n], n_dec = 0;
    char pmsg[256] = "", dmsg[256] = "";
    memcpy(reqs, s->active, (size_t)n * sizeof *reqs);
    memcpy(s_orig, s->active, (size_t)n * sizeof *reqs);
    memset(err, 0, sizeof err);
    pthread_mutex_unlock(&s->mu);

    double t0 = now_s();
    size_t n_pre = step_prefill(s, reqs, n, err, pmsg, sizeof pmsg);
    double t1 = now_s();
    for (int i = 0; i < n; i++) /* those with their prompt in (but its last token) */
        if (reqs[i] && reqs[i]->n_done + 1 >= reqs[i]->n_prompt) dec[n_dec++] = reqs[i];
    if (n_dec) step_decode(s, dec, n_dec, rcs, dmsg, sizeof dmsg);
    double t2 = now_s();
    size_t nv = (size_t)s->n_vocab;
    for (int i = 0; i < n_dec; i++) { /* sampling: the scheduler's own state */
        if (rcs[i]) continue;
        const float *logits = s->rows + i * nv;
        struct sched_token *t = &s->b_out[i];
        memset(t, 0, sizeof *t);
        t->id = sl_sample(dec[i]->sampler, logits);
        if (dec[i]->p.logprobs) token_logprobs(s, logits, dec[i]->p.top_logprobs, t);
    }

    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < n; i++)
        if (err[i]) fail_req(s, s_orig[i], "prompt evaluation failed", err[i]);
    for (int i = 0; i < n_dec; i++) {
        struct sched_req *r = dec[i];
        struct sched_token *t = &s->b_out[i];
        if (rcs[i]) {
            fail_req(s, r, "decode failed", dmsg);
            continue;
        }
        if (!r->p.ignore_eos && is_eos(s, t->id)) {
            retire(s, r, SCHED_STOP);
            continue;
        }
        const char *txt;
        size_t tl;
        if (sl_detok_push(r->detok, t->id, &txt, &tl)) { /* an id the tokenizer lacks */
            snprintf(r->error, sizeof r->error, "cannot decode the sampled token: %s",
                     sl_errmsg());
            retire(s, r, SCHED_ERROR);
            continue;
        }
        if (r->n_tokens == r->cap_tokens || gen_append(r, txt, tl)) {
            snprintf(r->error, sizeof r->error, "out of memory");
            retire(s, r, SCHED_ERROR);
            continue;
        }
        int stopped = r->stop_hit = release_text(r);
        t->text_end = r->released;
        r->tokens[r->n_tokens++] = *t;
        s->m.generated_tokens++;
        pthread_cond_broadcast(&r->cv);
        if (stopped) retire(s, r, SCHED_STOP);
        else if ((int32_t)r->n_tokens >= r->p.max_tokens) retire(s, r, SCHED_LENGTH);
        else if (r->slot->n_toks + 1 > s->p.n_ctx) retire(s, r, SCHED_LENGTH);
        else r->pending = t->id;
    }
    if (n_pre) {
        s->m.prompt_seconds += t1 - t0;
        s->m.prefill_steps++;
        s->m.prefill_batch_tokens += n_pre;
    }
    if (n_dec) {
        s->m.decode_seconds += t2 - t1;
        s->m.decode_steps++;
        s->m.decode_batch_tokens += (uint64_t)n_dec;
        if (n_dec > s->m.decode_batch_max) s->m.decode_batch_max = n_dec;
    }
    /* the store-wide counters, read here where no context is evaluating */
    uint64_t loads = 0, bytes = 0;
    int first = 1, cached = 0, contexts = s->ctx != NULL;
    for (int i = 0; i < s->n_slots; i++) {
        struct slot *sl = &s->slots[i];
        cached += !sl->in_use && sl->n_toks > 0;
        contexts += !s->ctx && sl->ctx;
        if (!sl->ctx || (s->ctx && i > 0)) continue;
        struct sl_stats st;
        sl_context_stats(sl->ctx, &st);
        if (first) s->m.store = st;
        first = 0;
        loads += st.expert_loads;
        bytes += st.expert_bytes_read;
    }
    s->m.store.expert_loads = loads;
    s->m.store.expert_bytes_read = bytes;
    s->m.cached_seqs = cached;
    s->m.contexts = contexts;
}

static void *sched_main(void *arg) {
    struct sched *s = arg;
    pthread_mutex_lock(&s->mu);
    while (!s->stopping) {
        while (s->q_head && s->n_active < s->p.max_seqs && !s->stopping) {
            struct sched_req *r = s->q_head;
            s->q_head = r->next;
            if (!s->q_head) s->q_tail = NULL;
            s->n_queued--;
            r->state = R_ACTIVE;
            s->active[s->n_active++] = r;
            if (admit_one(s, r)) retire(s, r, SCHED_ERROR);
        }
        if (!s->n_active) {
            if (!s->stopping) pthread_cond_wait(&s->work, &s->mu);
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
    if (p.max_seqs < 1 || p.max_queue < 0 || p.n_cached < 0 ||
        p.max_seqs + p.n_cached > SCHED_MAX_SEQS)
        return sl_seterr(SL_ERR_ARG, "scheduler: max_seqs must be >= 1 (got %d), max_queue "
                         ">= 0 (got %d), n_cached >= 0 (got %d), and max_seqs + n_cached at "
                         "most %d (one context sequence each)", p.max_seqs, p.max_queue,
                         p.n_cached, SCHED_MAX_SEQS);
    if (!p.n_ctx) {
        int32_t t = sl_model_n_ctx_train(model);
        p.n_ctx = t > 0 && t < 4096 ? (uint32_t)t : 4096;
    }
    if (!p.n_batch) p.n_batch = 64;
    struct sched *s = sl_calloc(1, sizeof *s);
    if (!s) return sl_seterr(SL_ERR_NOMEM, "scheduler: out of memory");
    s->model = model;
    s->p = p;
    s->n_eos = sl_model_eos_ids(model, &s->eos);
    s->n_vocab = sl_model_n_vocab(model);
    s->n_slots = p.max_seqs + p.n_cached;
    uint32_t nb = p.n_batch > (uint32_t)p.max_seqs ? p.n_batch : (uint32_t)p.max_seqs;
    s->active = sl_calloc((size_t)p.max_seqs, sizeof *s->active);
    s->slots = sl_calloc((size_t)s->n_slots, sizeof *s->slots);
    s->rows = sl_malloc((size_t)p.max_seqs * (size_t)s->n_vocab * sizeof *s->rows);
    s->b_tok = sl_malloc(nb * sizeof *s->b_tok);
    s->b_seq = sl_malloc(nb * sizeof *s->b_seq);
    s->b_req = sl_malloc((size_t)p.max_seqs * sizeof *s->b_req);
    s->b_out = sl_malloc((size_t)p.max_seqs * sizeof *s->b_out);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->work, NULL);
    if (!s->active || !s->slots || !s->rows || !s->b_tok || !s->b_seq || !s->b_req ||
        !s->b_out) {
        sched_free(s);
        return sl_seterr(SL_ERR_NOMEM, "scheduler: out of memory");
    }
    /* One context, one sequence per slot; its n_batch fits a prefill batch
     * and a decode batch of every slot. */
    struct sl_context_params cp = sl_context_default_params();
    cp.n_ctx = p.n_ctx;
    cp.n_batch = nb;
    cp.n_threads = p.n_threads;
    cp.n_seq_max = (uint32_t)s->n_slots;
    int rc = p.per_seq_contexts ? SL_OK : sl_context_create(model, &cp, &s->ctx);
    if (rc == SL_ERR_UNSUPPORTED) { /* the CUDA device: one context per slot */
        sl_log(SL_LOG_INFO, "serve: %s; one context per sequence, decoded in turn",
               sl_errmsg());
        s->ctx = NULL;
    } else if (rc) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", sl_errmsg());
        sched_free(s);
        return sl_seterr(rc, "scheduler: cannot create its context of %d sequences x %u "
                         "positions: %s", p.max_seqs + p.n_cached, p.n_ctx, msg);
    }
    for (int i = 0; i < s->n_slots; i++) {
        s->slots[i].ctx = s->ctx;
        s->slots[i].seq = s->ctx ? i : 0;
    }
    s->m.batched = s->ctx != NULL;
    s->m.contexts = s->ctx != NULL;
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
        if (!s->ctx) sl_context_free(s->slots[i].ctx);
        sl_free(s->slots[i].toks);
    }
    sl_context_free(s->ctx);
    pthread_cond_destroy(&s->work);
    pthread_mutex_destroy(&s->mu);
    sl_free(s->slots);
    sl_free(s->active);
    sl_free(s->rows);
    sl_free(s->b_tok);
    sl_free(s->b_seq);
    sl_free(s->b_req);
    sl_free(s->b_out);
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
    pthread_mutex_unlock(&s->mu);
}
