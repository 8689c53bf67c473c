/*
 * context_seq.c — several independent sequences in one context, and the
 * mixed-batch forward pass over them (sl_decode_batch, sl_seq_*).
 *
 * Design: every per-sequence field of struct sl_context (KV or latent
 * cache, recurrent state, token history, checkpoints, n_past, logits) is
 * that of the *bound* sequence; the other sequences wait in seqs[] and
 * seq_bind swaps them in. So every single-sequence routine (forward_batch,
 * sl_eval, truncation, saved state) works unchanged on whichever sequence
 * is bound, and sequence 0 is bound between API calls: sl_eval stays the
 * exact same code path as without sequences.
 *
 * A mixed batch is grouped by sequence into runs (ctx->runs); forward.c
 * runs only what reads a sequence's own cache or state once per run: for
 * attention layers the q/k norms, RoPE at each token's own position, the
 * K/V append and the attention itself; MLA (deepseek_v3) and Gated DeltaNet
 * layers whole. Everything else — the q/k/v/o projections, the dense
 * matmuls, the router, the experts, the lm_head — runs once over the whole
 * batch, so each weight matrix and each distinct expert of a layer is read
 * once for all sequences. The CPU matmul kernels compute every row alone,
 * in the same order whatever the batch (src/cpu/ops_kern.h), so a
 * sequence's logits are bit-identical to the sequence evaluated alone.
 *
 * Not here: CUDA (SL_ERR_UNSUPPORTED), sequences sharing cache rows
 * (sl_seq_copy copies).
 */
#include <stdlib.h>

#include "context.h"
#include "layer_hybrid.h"
#include "util.h"

#define SEQ_MAX 256

struct seq_slot {
    float *k_cache, *v_cache;   /* (n_layers, n_ctx, kv_dim) or NULL */
    float *mla_cache;           /* (n_layers, n_ctx, mla_dim) or NULL */
    float *hstate;              /* (state_floats) recurrent state or NULL */
    float *logits;              /* (n_vocab) */
    int32_t *tokens;            /* (n_ctx) */
    uint32_t n_past, n_ckpt, ckpt_cap;
    int has_logits;
    uint32_t *ckpt_pos;
    float **ckpt_state;
};

static void slot_save(const struct sl_context *ctx, struct seq_slot *s) {
    s->k_cache = ctx->k_cache;
    s->v_cache = ctx->v_cache;
    s->mla_cache = ctx->mla_cache;
    s->hstate = ctx->hybrid ? ctx->hybrid->state : NULL;
    s->logits = ctx->logits;
    s->tokens = ctx->tokens;
    s->n_past = ctx->n_past;
    s->n_ckpt = ctx->n_ckpt;
    s->ckpt_cap = ctx->ckpt_cap;
    s->has_logits = ctx->has_logits;
    s->ckpt_pos = ctx->ckpt_pos;
    s->ckpt_state = ctx->ckpt_state;
}

static void slot_load(struct sl_context *ctx, const struct seq_slot *s) {
    ctx->k_cache = s->k_cache;
    ctx->v_cache = s->v_cache;
    ctx->mla_cache = s->mla_cache;
    if (ctx->hybrid) { /* rebase every layer's conv / ssm pointers */
        struct hybrid_state *h = ctx->hybrid;
        const struct sl_config *c = &ctx->model->cfg;
        for (uint32_t l = 0; l < c->n_layers; l++) {
            if (!c->layer_linear[l]) continue;
            h->gdn[l].conv = s->hstate + (h->gdn[l].conv - h->state);
            h->gdn[l].ssm = s->hstate + (h->gdn[l].ssm - h->state);
        }
        h->state = s->hstate;
    }
    ctx->logits = s->logits;
    ctx->tokens = s->tokens;
    ctx->n_past = s->n_past;
    ctx->n_ckpt = s->n_ckpt;
    ctx->ckpt_cap = s->ckpt_cap;
    ctx->has_logits = s->has_logits;
    ctx->ckpt_pos = s->ckpt_pos;
    ctx->ckpt_state = s->ckpt_state;
}

void seq_bind(struct sl_context *ctx, uint32_t s) {
    if (!ctx->seqs || s == ctx->cur_seq) return;
    slot_save(ctx, &ctx->seqs[ctx->cur_seq]);
    slot_load(ctx, &ctx->seqs[s]);
    ctx->cur_seq = s;
}

int context_seq_create(struct sl_context *ctx, uint32_t n_seq_max) {
    ctx->n_seq_max = n_seq_max ? n_seq_max : 1;
    if (ctx->n_seq_max <= SEQ_MAX) {
        size_t nb = ctx->n_batch;
        ctx->bt_count = sl_calloc(ctx->n_seq_max, sizeof(int32_t));
        ctx->bt_order = sl_malloc(nb * sizeof(int32_t));
        ctx->bt_toks = sl_malloc(nb * sizeof(int32_t));
        ctx->bt_inv = sl_malloc(nb * sizeof(int32_t));
        ctx->bt_runs = sl_malloc(nb * sizeof(struct seq_run));
        ctx->bt_row = sl_malloc((size_t)ctx->model->cfg.n_vocab * sizeof(float));
        if (!ctx->bt_count || !ctx->bt_order || !ctx->bt_toks || !ctx->bt_inv ||
            !ctx->bt_runs || !ctx->bt_row)
            return sl_seterr(SL_ERR_NOMEM, "out of memory (batch scratch)");
    }
    if (ctx->n_seq_max == 1) return SL_OK;
    if (ctx->n_seq_max > SEQ_MAX)
        return sl_seterr(SL_ERR_ARG, "n_seq_max %u is too large (max %d)", n_seq_max, SEQ_MAX);
    if (ctx->cuda)
        return sl_seterr(SL_ERR_UNSUPPORTED, "n_seq_max %u: several sequences per context "
                         "are not supported on the CUDA device", n_seq_max);
    const struct sl_config *c = &ctx->model->cfg;
    ctx->seqs = sl_calloc(ctx->n_seq_max, sizeof *ctx->seqs);
    if (!ctx->seqs) return sl_seterr(SL_ERR_NOMEM, "out of memory (sequences)");
    slot_save(ctx, &ctx->seqs[0]);
    uint64_t kv = ctx->k_cache ? (uint64_t)c->n_layers * ctx->n_ctx * config_kv_dim(c) : 0;
    uint64_t mla =
        ctx->mla_cache ? (uint64_t)c->n_layers * ctx->n_ctx * config_mla_cache_dim(c) : 0;
    uint64_t hs = ctx->hybrid ? ctx->hybrid->state_floats : 0;
    int ok = 1;
    for (uint32_t s = 1; s < ctx->n_seq_max && ok; s++) {
        struct seq_slot *q = &ctx->seqs[s];
        if (kv) {
            q->k_cache = sl_aligned_alloc(64, kv * sizeof(float));
            q->v_cache = sl_aligned_alloc(64, kv * sizeof(float));
            ok &= q->k_cache && q->v_cache;
        }
        if (mla) ok &= (q->mla_cache = sl_aligned_alloc(64, mla * sizeof(float))) != NULL;
        if (hs) {
            q->hstate = sl_aligned_alloc(64, hs * sizeof(float));
            if (q->hstate) memset(q->hstate, 0, hs * sizeof(float));
            ok &= q->hstate != NULL;
        }
        q->logits = sl_aligned_alloc(64, (uint64_t)c->n_vocab * sizeof(float));
        q->tokens = sl_calloc(ctx->n_ctx, sizeof(int32_t));
        ok &= q->logits && q->tokens;
    }
    if (kv) { /* a mixed batch's K and V (forward.c attention_runs) */
        uint64_t bkv = (uint64_t)ctx->n_batch * config_kv_dim(c);
        ctx->bt_k = sl_aligned_alloc(64, bkv * sizeof(float));
        ctx->bt_v = sl_aligned_alloc(64, bkv * sizeof(float));
        ok &= ctx->bt_k && ctx->bt_v;
    }
    if (!ok)
        return sl_seterr(SL_ERR_NOMEM, "out of memory for %u sequences of %u positions "
                         "(%.1f MiB each); HINT: lower n_seq_max or n_ctx", ctx->n_seq_max,
                         ctx->n_ctx, (double)(2 * kv + mla + hs) * 4 / (1 << 20));
    return SL_OK;
}

void context_seq_free(struct sl_context *ctx) {
    sl_free(ctx->bt_count);
    sl_free(ctx->bt_order);
    sl_free(ctx->bt_toks);
    sl_free(ctx->bt_inv);
    sl_free(ctx->bt_runs);
    sl_free(ctx->bt_row);
    ctx->bt_count = ctx->bt_order = ctx->bt_toks = ctx->bt_inv = NULL;
    ctx->bt_runs = NULL;
    ctx->bt_row = NULL;
    sl_aligned_free(ctx->bt_k);
    sl_aligned_free(ctx->bt_v);
    ctx->bt_k = ctx->bt_v = NULL;
    if (!ctx->seqs) return;
    seq_bind(ctx, 0);
    for (uint32_t s = 1; s < ctx->n_seq_max; s++) {
        struct seq_slot *q = &ctx->seqs[s];
        sl_aligned_free(q->k_cache);
        sl_aligned_free(q->v_cache);
        sl_aligned_free(q->mla_cache);
        sl_aligned_free(q->hstate);
        sl_aligned_free(q->logits);
        sl_free(q->tokens);
        for (uint32_t i = 0; i < q->ckpt_cap; i++) sl_aligned_free(q->ckpt_state[i]);
        sl_free(q->ckpt_state);
        sl_free(q->ckpt_pos);
    }
    sl_free(ctx->seqs);
    ctx->seqs = NULL;
}

/* ---- per-sequence memory -------------------------------------------------- */

static int seq_check(const struct sl_context *ctx, int32_t seq, const char *fn) {
    if (!ctx) return sl_seterr(SL_ERR_ARG, "%s: NULL context", fn);
    uint32_t n = ctx->n_seq_max ? ctx->n_seq_max : 1;
    if (seq < 0 || (uint32_t)seq >= n)
        return sl_seterr(SL_ERR_RANGE, "%s: sequence %d is out of range (the context holds "
                         "%u; see n_seq_max)", fn, seq, n);
    return SL_OK;
}

static uint32_t seq_n_past(const struct sl_context *ctx, uint32_t s) {
    return !ctx->seqs || s == ctx->cur_seq ? ctx->n_past : ctx->seqs[s].n_past;
}

int sl_seq_clear(struct sl_context *ctx, int32_t seq) {
    int st = seq_check(ctx, seq, "sl_seq_clear");
    if (st) return st;
    seq_bind(ctx, (uint32_t)seq);
    ctx->n_past = 0;
    ctx->has_logits = 0;
    hybrid_state_reset(ctx->hybrid);
    context_drop_checkpoints(ctx, 0);
    seq_bind(ctx, 0);
    return SL_OK;
}

int sl_seq_truncate(struct sl_context *ctx, int32_t seq, uint32_t p0) {
    int st = seq_check(ctx, seq, "sl_seq_truncate");
    if (st) return st;
    seq_bind(ctx, (uint32_t)seq);
    st = sl_context_truncate(ctx, p0);
    seq_bind(ctx, 0);
    return st;
}

int64_t sl_seq_pos_max(const struct sl_context *ctx, int32_t seq) {
    if (!ctx || seq < 0 || (uint32_t)seq >= (ctx->n_seq_max ? ctx->n_seq_max : 1)) return -1;
    return (int64_t)seq_n_past(ctx, (uint32_t)seq) - 1;
}

int sl_seq_copy(struct sl_context *ctx, int32_t src, int32_t dst) {
    int st;
    if ((st = seq_check(ctx, src, "sl_seq_copy")) || (st = seq_check(ctx, dst, "sl_seq_copy")))
        return st;
    if (src == dst) return SL_OK;
    seq_bind(ctx, (uint32_t)src);
    size_t size = 0;
    uint8_t *buf = NULL;
    if (!(st = sl_state_size(ctx, &size))) {
        buf = sl_malloc(size);
        st = buf ? sl_state_save_buffer(ctx, buf, size, NULL)
                 : sl_seterr(SL_ERR_NOMEM, "out of memory (%zu-byte state)", size);
    }
    if (!st) {
        seq_bind(ctx, (uint32_t)dst);
        st = sl_state_load_buffer(ctx, buf, size);
    }
    seq_bind(ctx, 0);
    sl_free(buf);
    return st;
}

/* ---- the mixed batch ------------------------------------------------------ */

/* Moves the n logits rows of R (nv floats each) from run order to batch
 * order in place: run-order row j belongs at batch index bt_order[j]. Follows
 * the permutation's cycles with one spare row (bt_row). */
static void reorder_rows(struct sl_context *ctx, float *R, int n, size_t nv) {
    int32_t *inv = ctx->bt_inv, *order = ctx->bt_order;
    size_t bytes = nv * sizeof(float);
    for (int j = 0; j < n; j++) inv[order[j]] = j;
    for (int i0 = 0; i0 < n; i0++) {
        if (inv[i0] < 0 || inv[i0] == i0) continue;
        memcpy(ctx->bt_row, R + (size_t)i0 * nv, bytes);
        int i = i0;
        while (inv[i] != i0) { /* batch slot i takes run-order row inv[i] */
            int src = inv[i];
            memcpy(R + (size_t)i * nv, R + (size_t)src * nv, bytes);
            inv[i] = -1;
            i = src;
        }
        memcpy(R + (size_t)i * nv, ctx->bt_row, bytes);
        inv[i] = -1;
    }
}

int sl_decode_batch(struct sl_context *ctx, const struct sl_batch *b) {
    if (!ctx || !b || !b->tokens || !b->seq_ids)
        return sl_seterr(SL_ERR_ARG, "sl_decode_batch: NULL argument");
    if (b->n == 0) return sl_seterr(SL_ERR_ARG, "sl_decode_batch: empty batch");
    if (ctx->cuda)
        return sl_seterr(SL_ERR_UNSUPPORTED, "sl_decode_batch is not supported on the CUDA "
                         "device; use sl_eval");
    if (b->n > ctx->n_batch)
        return sl_seterr(SL_ERR_RANGE, "sl_decode_batch: %zu tokens exceed n_batch %u", b->n,
                         ctx->n_batch);
    const struct sl_config *c = &ctx->model->cfg;
    uint32_t n_seq = ctx->n_seq_max ? ctx->n_seq_max : 1;
    int n = (int)b->n, st;
    for (int i = 0; i < n; i++) {
        if ((st = seq_check(ctx, b->seq_ids[i], "sl_decode_batch"))) return st;
        if (b->tokens[i] < 0 || (uint32_t)b->tokens[i] >= c->n_vocab)
            return sl_seterr(SL_ERR_RANGE, "sl_decode_batch: token id %d at index %d is out "
                             "of range (vocabulary has %u ids)", b->tokens[i], i, c->n_vocab);
    }
    /* Scratch allocated once (context_seq_create); the logits rows come out
     * of forward_batch in run order straight into b->logits and are put
     * back in batch order in place at the end. */
    int32_t *count = ctx->bt_count, *order = ctx->bt_order, *toks = ctx->bt_toks;
    struct seq_run *runs = ctx->bt_runs;
    float *rows = b->logits;
    memset(count, 0, n_seq * sizeof *count);
    for (int i = 0; i < n; i++) count[b->seq_ids[i]]++;
    int nr = 0, at = 0;
    for (uint32_t s = 0; s < n_seq; s++) {
        if (!count[s]) continue;
        uint32_t np = seq_n_past(ctx, s);
        if ((uint32_t)count[s] > ctx->n_ctx - np) {
            return sl_seterr(SL_ERR_RANGE, "sl_decode_batch: sequence %u is full: %u of %u "
                             "positions used, %d more requested", s, np, ctx->n_ctx, count[s]);
        }
        runs[nr] = (struct seq_run){s, np, at, count[s]};
        for (int i = 0; i < n; i++)
            if ((uint32_t)b->seq_ids[i] == s) {
                order[at] = i;
                toks[at++] = b->tokens[i];
            }
        nr++;
    }
    double t0 = sl_now();
    for (int r = 0; r < nr; r++) { /* token history first (as sl_eval) */
        seq_bind(ctx, runs[r].seq);
        memcpy(ctx->tokens + runs[r].pos, toks + runs[r].start, (size_t)runs[r].n * 4);
    }
    seq_bind(ctx, 0);
    ctx->runs = runs;
    ctx->n_runs = nr;
    st = forward_batch(ctx, toks, n, 0, rows, 1);
    ctx->runs = NULL;
    ctx->n_runs = 0;
    for (int r = 0; r < nr; r++) {
        const struct seq_run *u = &runs[r];
        seq_bind(ctx, u->seq);
        if (st) { /* K/V rows past n_past are ignored; recurrent state is not */
            ctx->has_logits = 0;
            if (ctx->hybrid) {
                hybrid_state_reset(ctx->hybrid);
                context_drop_checkpoints(ctx, 0);
                ctx->n_past = 0;
            }
            continue;
        }
        ctx->n_past = u->pos + (uint32_t)u->n;
        ctx->has_logits = rows != NULL;
        if (rows)
            memcpy(ctx->logits, rows + (size_t)(u->start + u->n - 1) * c->n_vocab,
                   (size_t)c->n_vocab * sizeof(float));
        if (ctx->hybrid) (void)context_checkpoint(ctx, ctx->n_past);
    }
    seq_bind(ctx, 0);
    if (!st && rows) reorder_rows(ctx, rows, n, (size_t)c->n_vocab);
    if (!st) {
        ctx->stats.n_decode_tokens += (uint64_t)n;
        ctx->stats.decode_seconds += sl_now() - t0;
    }
    return st;
}
