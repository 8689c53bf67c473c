/*
 * serve_sched.h — the request scheduler of `sluice serve`: many concurrent
 * generation requests over one model, driven by ONE scheduler thread.
 *
 * What it is: a bounded queue of requests, ONE context holding one sequence
 * per request slot (sl_context_params.n_seq_max = max_seqs + n_cached), and
 * a loop of steps (continuous batching). Each step is
 *   1. prefill: whole prompt chunks of the oldest requests still in their
 *      prompt, up to n_batch tokens in all, in one sl_decode_batch without
 *      logits (chunks end at multiples of n_batch positions, so a prompt is
 *      cut the same way whatever else runs; a long prompt takes several
 *      steps and never stalls the others for more than one chunk);
 *   2. decode: ONE sl_decode_batch of every decoding request's next token
 *      (the last prompt token, then each sampled token), so concurrent
 *      requests share each routed expert read; then sampling.
 * A running request therefore waits at most one n_batch-token prefill
 * forward plus one decode forward between two of its tokens. A sequence's
 * logits in a mixed batch are bit-identical to it alone (rows are
 * independent in every kernel; tests/test_serve_sched.c checks it), so a
 * request at temperature 0 gives the same tokens however many others run.
 * Sampling, stop strings, end-of-generation ids, max_tokens, per-token
 * logprobs and the request deadline are handled here; clients read a
 * per-request stream of events (text released so far, per-token data, the
 * finish reason).
 *
 * Prefix cache: a finished request leaves its sequence idle with the tokens
 * it evaluated. A new request takes the idle sequence sharing the longest
 * prefix with its prompt (at most all but the prompt's last token): the
 * sequence itself when all its tokens are that prefix (multi-turn chat),
 * else a copy of it truncated to the shared prefix (sl_seq_copy +
 * sl_seq_truncate: the cached sequence stays for others, e.g. the same
 * system prompt with another question). Shared prefixes under
 * SCHED_MIN_REUSE tokens of a longer sequence are not worth a copy; the
 * request then takes an empty or the least recently used idle sequence.
 *
 * Fallback: a model whose contexts cannot hold several sequences (the CUDA
 * device) gets one context per slot, evaluated with sl_eval one after the
 * other (same scheduling, no shared reads; sched_metrics.batched = 0).
 *
 * What it is not: HTTP (tools/cli_serve.c), chat templates, tokenizing the
 * prompt.
 *
 * Thread safety: every function may be called from any client thread; the
 * scheduler thread owns the context(s).
 */
#ifndef SL_SERVE_SCHED_H
#define SL_SERVE_SCHED_H

#include <stddef.h>
#include <stdint.h>

#include "sluice.h"

#define SCHED_MAX_STOP 4
#define SCHED_MAX_TOP_LOGPROBS 20
#define SCHED_MAX_SEQS 256  /* the context's limit on sequences */
#define SCHED_MIN_REUSE 8   /* shortest shared prefix worth a copy */

struct sched_params {
    int max_seqs;          /* requests decoding at once (sequences in use) */
    int max_queue;         /* requests waiting beyond those; more: busy */
    int n_cached;          /* idle sequences kept for prefix reuse;
                              max_seqs + n_cached <= SCHED_MAX_SEQS */
    uint32_t n_ctx;        /* positions per sequence */
    uint32_t n_batch;      /* prompt tokens per step, all requests (0 = 64) */
    int n_threads;         /* compute threads (0 = the model's) */
    int per_seq_contexts;  /* 1: the fallback (one context per slot, sl_eval
                              in turn) even where batching works (tests) */
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

/* Starts the scheduler thread over model (borrowed; must outlive it) and
 * creates its context (max_seqs + n_cached sequences of n_ctx positions,
 * allocated now: an allocation failure is reported here, with a hint). */
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

/* The client is done with r: a running request is cancelled (its sequence
 * goes back to the pool) and r is freed once the scheduler lets go. */
void sched_release(struct sched_req *r);

/* Counters for /metrics. */
struct sched_metrics {
    uint64_t requests, finished, rejected_busy;
    uint64_t prompt_tokens, cached_prompt_tokens, generated_tokens;
    double decode_seconds, prompt_seconds; /* scheduler time in steps */
    uint64_t decode_steps;                 /* decode forward passes */
    uint64_t decode_batch_tokens;          /* tokens in them (sum of sizes) */
    int decode_batch_max;                  /* the largest */
    uint64_t prefill_steps, prefill_batch_tokens; /* the same for prompts */
    int active, queued;
    int contexts;                          /* contexts allocated */
    int cached_seqs;                       /* idle sequences holding tokens */
    int batched;                           /* 1: one multi-sequence context */
    struct sl_stats store;                 /* model-wide expert store; the
                                              context fields (expert_loads,
                                              expert_bytes_read) summed
                                              over the scheduler's contexts */
};
void sched_get_metrics(struct sched *s, struct sched_metrics *m);

#endif /* SL_SERVE_SCHED_H */
