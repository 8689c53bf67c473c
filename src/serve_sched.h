/*
 * serve_sched.h — the request scheduler of `sluice serve`: many concurrent
 * generation requests over one model, driven by ONE scheduler thread.
 *
 * What it is: a bounded queue of requests, a pool of contexts (one per
 * active request, at most max_seqs active), and a loop that gives every
 * active request one step in turn (a prompt chunk, or one decoded token), so
 * the model's compute threads are never oversubscribed. Sampling, stop
 * strings, end-of-generation ids, max_tokens, per-token logprobs and the
 * request deadline are handled here; clients read a per-request stream of
 * events (text released so far, per-token data, the finish reason).
 *
 * Prefix cache: a finished request leaves its context idle with the tokens
 * it evaluated. A new request takes the idle context whose tokens are the
 * longest prefix of its prompt and evaluates only the rest. Contexts cannot
 * be truncated yet (the library has no KV truncation or state save/load),
 * so a context is reused only when ALL its tokens are a prefix of the new
 * prompt (multi-turn chat: the previous prompt + answer); otherwise the
 * least recently used idle context is reset.
 *
 * The seam for batched decode (issue 8): serve_sched.c's step_decode() runs one
 * decode step for a set of requests; today it calls sl_eval per context,
 * a multi-sequence step will replace that one function.
 *
 * What it is not: HTTP (tools/cli_serve.c), chat templates, tokenizing the
 * prompt.
 *
 * Thread safety: every function may be called from any client thread; the
 * scheduler owns the contexts.
 */
#ifndef SL_SERVE_SCHED_H
#define SL_SERVE_SCHED_H

#include <stddef.h>
#include <stdint.h>

#include "sluice.h"

#define SCHED_MAX_STOP 4
#define SCHED_MAX_TOP_LOGPROBS 20

struct sched_params {
    int max_seqs;          /* requests decoding at once (contexts in use) */
    int max_queue;         /* requests waiting beyond those; more: busy */
    int n_cached;          /* idle contexts kept for prefix reuse */
    uint32_t n_ctx;        /* positions per context */
    uint32_t n_batch;      /* prompt tokens per step of one request */
    int n_threads;         /* compute threads (0 = the model's) */
};

struct sched_req_params {
    int32_t max_tokens;    /* >= 1 */
    struct sl_sampler_params sampler;
    int logprobs;          /* nonzero: per-token logprobs */
    int top_logprobs;      /* 0..SCHED_MAX_TOP_LOGPROBS alternatives */
    const char *stop[SCHED_MAX_STOP]; /* NULL-terminated or full; copied */
    double timeout_s;      /* > 0: deadline from submission */
    int ignore_eos;        /* nonzero: end-of-generation ids do not stop */
};

enum sched_finish {
    SCHED_RUNNING = 0,
    SCHED_STOP,            /* end-of-generation id or stop string */
    SCHED_LENGTH,          /* max_tokens or the context is full */
    SCHED_CANCELLED,       /* the client released it early */
    SCHED_TIMEOUT,         /* the deadline passed */
    SCHED_ERROR,           /* evaluation failed (message in the request) */
};

/* One generated token as a client sees it. */
struct sched_token {
    int32_t id;
    float logprob;                       /* when logprobs was asked */
    int n_top;
    int32_t top_id[SCHED_MAX_TOP_LOGPROBS];
    float top_logprob[SCHED_MAX_TOP_LOGPROBS];
    size_t text_end;                     /* released text after this token */
};

/* A client's copy of a request's progress: sched_wait appends what is new
 * (the buffers are the client's, grown with sl_realloc; free them with
 * sched_view_free). Zero-initialise before the first sched_wait. */
struct sched_view {
    struct sched_token *tokens;
    size_t n_tokens, cap_tokens;
    char *text;                          /* released text (complete UTF-8) */
    size_t text_len, cap_text;
    int finish;                          /* enum sched_finish */
    uint32_t n_prompt, n_cached_prompt;  /* prompt tokens, of them reused */
    char error[256];                     /* SCHED_ERROR: the message */
};
/* Frees the view's buffers and zeroes it (ready for another request). */
void sched_view_free(struct sched_view *v);

struct sched;
struct sched_req;

struct sched_params sched_default_params(void);

/* Starts the scheduler thread over model (borrowed; must outlive it). */
int sched_create(struct sl_model *model, const struct sched_params *params,
                 struct sched **out);
/* Cancels every request, joins the thread, frees the contexts. Requests
 * not yet released stay valid until sched_release. NULL is a no-op. */
void sched_free(struct sched *s);

/* Queues a request for prompt[0..n) (copied). SL_ERR_RANGE when n == 0 or
 * n + max_tokens exceeds n_ctx (message says by how much), SL_ERR_ARG for
 * invalid parameters, SL_ERR_UNSUPPORTED ("busy") when max_seqs are active
 * and max_queue wait. On success the caller owns *out until sched_release. */
int sched_submit(struct sched *s, const int32_t *prompt, size_t n,
                 const struct sched_req_params *p, struct sched_req **out);

/* Waits until the request has tokens the view lacks, or has finished, or
 * timeout_s passes (< 0: forever); then appends the new tokens and text to
 * *view and sets its finish reason. Returns SL_OK, or SL_ERR_NOMEM (the view
 * is then unchanged). */
int sched_wait(struct sched_req *r, struct sched_view *view, double timeout_s);

/* The client is done with r: a running request is cancelled (its context
 * goes back to the pool) and r is freed once the scheduler lets go. */
void sched_release(struct sched_req *r);

/* Counters for /metrics. */
struct sched_metrics {
    uint64_t requests, finished, rejected_busy;
    uint64_t prompt_tokens, cached_prompt_tokens, generated_tokens;
    double decode_seconds, prompt_seconds; /* scheduler time in steps */
    int active, queued, contexts;
    struct sl_stats store;                 /* model-wide expert store */
};
void sched_get_metrics(struct sched *s, struct sched_metrics *m);

#endif /* SL_SERVE_SCHED_H */
