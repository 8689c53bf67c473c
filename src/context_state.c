/*
 * context_state.c — a context's sequence as data: truncation and removal of
 * positions, recurrent-state checkpoints, forking into another context, and
 * the saved-state image (sl_state_*; docs/api.md).
 *
 * What it is not: the forward pass (forward.c) or the bookkeeping of several
 * sequences (context_seq.c): everything here acts on the bound sequence.
 *
 * Invariants:
 *   - ctx->tokens[0 .. n_past) are the ids behind every cached position.
 *   - Hybrid (Gated DeltaNet) models: checkpoint i holds hybrid->state as it
 *     was after positions 0 .. ckpt_pos[i] - 1; positions ascend and are all
 *     <= n_past. The state at position 0 is zero and is never stored.
 *   - Truncation is exact: caches of attention and MLA layers are indexed by
 *     position, so forgetting rows is enough; the recurrent state is
 *     restored from the nearest checkpoint and the kept tokens after it are
 *     evaluated again. (Evaluated in different chunks than the first time,
 *     the recomputed state can differ from the original in the last bits:
 *     the chunked and the recurrent delta rule round differently.)
 *   - A saved image: little-endian header, payload, then fnv1a64 of every
 *     byte before it. A load validates everything before it changes the
 *     context.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "context.h"
#include "layer_hybrid.h"
#include "sluice.h"
#include "util.h"

#define STATE_MAGIC "SLUICEST"
#define STATE_VERSION 1u
#define STATE_HEADER_BYTES 72u /* magic 8, then the fields of struct state_header */

/* ---- checkpoints --------------------------------------------------------- */

/* Makes room for at least want checkpoints (buffers allocated lazily). */
static int ckpt_reserve(struct sl_context *ctx, uint32_t want) {
    if (want <= ctx->ckpt_cap) return SL_OK;
    uint32_t cap = ctx->ckpt_cap ? ctx->ckpt_cap * 2 : 8;
    if (cap < want) cap = want;
    uint32_t *pos = sl_realloc(ctx->ckpt_pos, cap * sizeof *pos);
    if (!pos) return sl_seterr(SL_ERR_NOMEM, "out of memory (state checkpoints)");
    ctx->ckpt_pos = pos;
    float **bufs = sl_realloc(ctx->ckpt_state, cap * sizeof *bufs);
    if (!bufs) return sl_seterr(SL_ERR_NOMEM, "out of memory (state checkpoints)");
    for (uint32_t i = ctx->ckpt_cap; i < cap; i++) bufs[i] = NULL;
    ctx->ckpt_state = bufs;
    ctx->ckpt_cap = cap;
    return SL_OK;
}

/* The buffer of checkpoint slot i, allocated on first use. */
static float *ckpt_buf(struct sl_context *ctx, uint32_t i) {
    if (!ctx->ckpt_state[i])
        ctx->ckpt_state[i] =
            sl_aligned_alloc(64, ctx->hybrid->state_floats * sizeof(float) + 64);
    return ctx->ckpt_state[i];
}

int context_checkpoint(struct sl_context *ctx, uint32_t p_end) {
    if (!ctx->hybrid || ctx->ckpt_interval == UINT32_MAX || p_end == 0) return SL_OK;
    uint32_t last = ctx->n_ckpt ? ctx->ckpt_pos[ctx->n_ckpt - 1] : 0;
    if (p_end / ctx->ckpt_interval <= last / ctx->ckpt_interval) return SL_OK;
    int st = ckpt_reserve(ctx, ctx->n_ckpt + 1);
    if (st) return st;
    float *buf = ckpt_buf(ctx, ctx->n_ckpt);
    if (!buf) return sl_seterr(SL_ERR_NOMEM, "out of memory (state checkpoint)");
    memcpy(buf, ctx->hybrid->state, ctx->hybrid->state_floats * sizeof(float));
    ctx->ckpt_pos[ctx->n_ckpt++] = p_end;
    return SL_OK;
}

void context_drop_checkpoints(struct sl_context *ctx, uint32_t p) {
    while (ctx->n_ckpt && ctx->ckpt_pos[ctx->n_ckpt - 1] > p) ctx->n_ckpt--;
}

void context_free_checkpoints(struct sl_context *ctx) {
    for (uint32_t i = 0; i < ctx->ckpt_cap; i++) sl_aligned_free(ctx->ckpt_state[i]);
    sl_free(ctx->ckpt_state);
    sl_free(ctx->ckpt_pos);
    ctx->ckpt_state = NULL;
    ctx->ckpt_pos = NULL;
    ctx->n_ckpt = ctx->ckpt_cap = 0;
}

/* ---- truncation and removal ---------------------------------------------- */

int sl_context_truncate(struct sl_context *ctx, uint32_t p0) {
    if (!ctx) return sl_seterr(SL_ERR_ARG, "sl_context_truncate: NULL context");
    if (p0 > ctx->n_past)
        return sl_seterr(SL_ERR_RANGE, "sl_context_truncate: position %u is past the "
                         "sequence's end (n_past %u)", p0, ctx->n_past);
    if (p0 == ctx->n_past) return SL_OK;
    ctx->has_logits = 0;
    if (!ctx->hybrid) { /* position-indexed caches: forget the rows */
        ctx->n_past = p0;
        return SL_OK;
    }
    if (ctx->cuda)
        return sl_seterr(SL_ERR_UNSUPPORTED, "sl_context_truncate: recurrent-state "
                         "models on the CUDA device cannot be truncated");
    context_drop_checkpoints(ctx, p0);
    uint32_t base = ctx->n_ckpt ? ctx->ckpt_pos[ctx->n_ckpt - 1] : 0;
    if (base)
        memcpy(ctx->hybrid->state, ctx->ckpt_state[ctx->n_ckpt - 1],
               ctx->hybrid->state_floats * sizeof(float));
    else
        hybrid_state_reset(ctx->hybrid);
    ctx->n_past = base;
    if (p0 > base) { /* replay the kept tokens after the checkpoint */
        int st = sl_eval(ctx, ctx->tokens + base, p0 - base, NULL);
        if (st) return st; /* sl_eval has reset the context */
        ctx->has_logits = 0;
    }
    return SL_OK;
}

int sl_context_remove(struct sl_context *ctx, uint32_t p0, uint32_t p1) {
    if (!ctx) return sl_seterr(SL_ERR_ARG, "sl_context_remove: NULL context");
    if (p1 > ctx->n_past) p1 = ctx->n_past;
    if (p0 > p1)
        return sl_seterr(SL_ERR_RANGE, "sl_context_remove: range [%u, %u) is empty or "
                         "reversed (n_past %u)", p0, p1, ctx->n_past);
    uint32_t n_tail = ctx->n_past - p1;
    if (p0 == p1) return SL_OK;
    int32_t *tail = NULL;
    if (n_tail) {
        tail = sl_malloc((size_t)n_tail * sizeof *tail);
        if (!tail) return sl_seterr(SL_ERR_NOMEM, "out of memory (%u tokens)", n_tail);
        memcpy(tail, ctx->tokens + p1, (size_t)n_tail * sizeof *tail);
    }
    int st = sl_context_truncate(ctx, p0);
    /* the tail moves to positions p0.. and is evaluated there (RoPE) */
    if (!st && n_tail) st = sl_eval(ctx, tail, n_tail, NULL);
    sl_free(tail);
    return st;
}

int64_t sl_context_pos_max(const struct sl_context *ctx) {
    return ctx ? (int64_t)ctx->n_past - 1 : -1;
}

const int32_t *sl_context_tokens(const struct sl_context *ctx, uint32_t *n) {
    if (n) *n = ctx ? ctx->n_past : 0;
    return ctx ? ctx->tokens : NULL;
}

/* ---- model identity ------------------------------------------------------- */

uint64_t sl_model_identity(const struct sl_model *model) {
    if (!model) return 0;
    const struct sl_file *f = &model->file;
    uint64_t h = sl_fnv1a64(f->manifest, f->manifest_len, SL_FNV_SEED);
    for (uint32_t i = 0; i < f->n_tensors; i++) {
        const struct sl_tensor_info *t = &f->tensors[i];
        h = sl_fnv1a64(t->name, strlen(t->name), h);
        uint64_t v[4] = {(uint64_t)t->dtype, (uint64_t)t->n_dims, t->offset, t->size};
        h = sl_fnv1a64(v, sizeof v, h);
        h = sl_fnv1a64(t->dims, (size_t)t->n_dims * sizeof t->dims[0], h);
    }
    return h;
}

/* ---- the saved image ------------------------------------------------------ */

/* The header after the magic, in file order (each field little-endian). */
struct state_header {
    uint32_t version, header_bytes;
    uint64_t model_id, total_bytes;
    uint32_t n_past, n_layers;
    uint32_t kv_dim, mla_dim;    /* 0 when the context has no such cache */
    uint64_t hybrid_floats;      /* 0 without recurrent layers */
    uint32_t n_vocab, has_logits;
    uint32_t n_ckpt, reserved;
};

/* A cursor over a buffer; with p NULL it only counts. */
struct cursor {
    uint8_t *p;
    const uint8_t *r;
    size_t off, cap;
};

static void put(struct cursor *w, const void *src, size_t n) {
    if (w->p && w->off + n <= w->cap) memcpy(w->p + w->off, src, n);
    w->off += n;
}
static void put32(struct cursor *w, uint32_t v) {
    uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    put(w, b, 4);
}
static void put64(struct cursor *w, uint64_t v) {
    put32(w, (uint32_t)v);
    put32(w, (uint32_t)(v >> 32));
}
static uint32_t get32(struct cursor *r) {
    const uint8_t *b = r->r + r->off;
    r->off += 4;
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}
static uint64_t get64(struct cursor *r) {
    uint64_t lo = get32(r);
    return lo | (uint64_t)get32(r) << 32;
}

/* The header this context would write. */
static struct state_header header_of(const struct sl_context *ctx) {
    const struct sl_config *c = &ctx->model->cfg;
    struct state_header h = {0};
    h.version = STATE_VERSION;
    h.header_bytes = STATE_HEADER_BYTES;
    h.model_id = sl_model_identity(ctx->model);
    h.n_past = ctx->n_past;
    h.n_layers = c->n_layers;
    h.kv_dim = ctx->k_cache ? (uint32_t)config_kv_dim(c) : 0;
    h.mla_dim = ctx->mla_cache ? (uint32_t)config_mla_cache_dim(c) : 0;
    h.hybrid_floats = ctx->hybrid ? ctx->hybrid->state_floats : 0;
    h.n_vocab = c->n_vocab;
    h.has_logits = (uint32_t)(ctx->has_logits != 0);
    h.n_ckpt = ctx->hybrid ? ctx->n_ckpt : 0;
    return h;
}

/* Bytes of an image with header h (payload sizes from h alone). */
static uint64_t image_bytes(const struct state_header *h) {
    uint64_t n = STATE_HEADER_BYTES, np = h->n_past;
    n += np * 4;                                           /* tokens */
    n += 2ull * h->n_layers * np * h->kv_dim * 4;          /* K, V rows */
    n += (uint64_t)h->n_layers * np * h->mla_dim * 4;      /* latent rows */
    n += h->hybrid_floats * 4;                             /* recurrent state */
    n += (uint64_t)h->n_ckpt * (4 + h->hybrid_floats * 4); /* checkpoints */
    n += h->has_logits ? (uint64_t)h->n_vocab * 4 : 0;
    return n + 8; /* checksum */
}

static void put_floats(struct cursor *w, const float *x, uint64_t n) {
    /* the image is little-endian; so are the hosts sluice builds for */
    put(w, x, (size_t)n * sizeof(float));
}

static int check_device(const struct sl_context *ctx, const char *fn) {
    if (!ctx) return sl_seterr(SL_ERR_ARG, "%s: NULL context", fn);
    if (ctx->cuda)
        return sl_seterr(SL_ERR_UNSUPPORTED, "%s: saved states are not supported on "
                         "the CUDA device (the caches live in GPU memory)", fn);
    return SL_OK;
}

int sl_state_size(const struct sl_context *ctx, size_t *size) {
    int st = check_device(ctx, "sl_state_size");
    if (st) return st;
    if (!size) return sl_seterr(SL_ERR_ARG, "sl_state_size: NULL size");
    struct state_header h = header_of(ctx);
    *size = (size_t)image_bytes(&h);
    return SL_OK;
}

int sl_state_save_buffer(const struct sl_context *ctx, void *buf, size_t cap,
                         size_t *written) {
    int st = check_device(ctx, "sl_state_save_buffer");
    if (st) return st;
    if (!buf) return sl_seterr(SL_ERR_ARG, "sl_state_save_buffer: NULL buffer");
    struct state_header h = header_of(ctx);
    h.total_bytes = image_bytes(&h);
    if (h.total_bytes > cap)
        return sl_seterr(SL_ERR_RANGE, "sl_state_save_buffer: the state needs %llu bytes, "
                         "the buffer has %zu (see sl_state_size)",
                         (unsigned long long)h.total_bytes, cap);
    struct cursor w = {buf, NULL, 0, cap};
    put(&w, STATE_MAGIC, 8);
    put32(&w, h.version);
    put32(&w, h.header_bytes);
    put64(&w, h.model_id);
    put64(&w, h.total_bytes);
    put32(&w, h.n_past);
    put32(&w, h.n_layers);
    put32(&w, h.kv_dim);
    put32(&w, h.mla_dim);
    put64(&w, h.hybrid_floats);
    put32(&w, h.n_vocab);
    put32(&w, h.has_logits);
    put32(&w, h.n_ckpt);
    put32(&w, h.reserved);
    SL_ASSERT(w.off == STATE_HEADER_BYTES);
    for (uint32_t i = 0; i < h.n_past; i++) put32(&w, (uint32_t)ctx->tokens[i]);
    uint64_t np = h.n_past;
    for (uint32_t l = 0; l < h.n_layers && h.kv_dim; l++) {
        uint64_t base = (uint64_t)l * ctx->n_ctx * h.kv_dim;
        put_floats(&w, ctx->k_cache + base, np * h.kv_dim);
        put_floats(&w, ctx->v_cache + base, np * h.kv_dim);
    }
    for (uint32_t l = 0; l < h.n_layers && h.mla_dim; l++)
        put_floats(&w, ctx->mla_cache + (uint64_t)l * ctx->n_ctx * h.mla_dim, np * h.mla_dim);
    if (h.hybrid_floats) put_floats(&w, ctx->hybrid->state, h.hybrid_floats);
    for (uint32_t i = 0; i < h.n_ckpt; i++) put32(&w, ctx->ckpt_pos[i]);
    for (uint32_t i = 0; i < h.n_ckpt; i++) put_floats(&w, ctx->ckpt_state[i], h.hybrid_floats);
    if (h.has_logits) put_floats(&w, ctx->logits, h.n_vocab);
    put64(&w, sl_fnv1a64(buf, w.off, SL_FNV_SEED));
    SL_ASSERT(w.off == h.total_bytes);
    if (written) *written = w.off;
    return SL_OK;
}

int sl_state_load_buffer(struct sl_context *ctx, const void *buf, size_t len) {
    int st = check_device(ctx, "sl_state_load_buffer");
    if (st) return st;
    if (!buf) return sl_seterr(SL_ERR_ARG, "sl_state_load_buffer: NULL buffer");
    if (len < 8 || memcmp(buf, STATE_MAGIC, 8) != 0)
        return sl_seterr(SL_ERR_FORMAT, "not a sluice saved state (bad magic; %zu bytes)", len);
    if (len < STATE_HEADER_BYTES + 8)
        return sl_seterr(SL_ERR_FORMAT, "saved state truncated: %zu bytes, the header "
                         "alone needs %u", len, STATE_HEADER_BYTES + 8);
    struct cursor r = {NULL, buf, 8, len};
    struct state_header h;
    h.version = get32(&r);
    h.header_bytes = get32(&r);
    h.model_id = get64(&r);
    h.total_bytes = get64(&r);
    h.n_past = get32(&r);
    h.n_layers = get32(&r);
    h.kv_dim = get32(&r);
    h.mla_dim = get32(&r);
    h.hybrid_floats = get64(&r);
    h.n_vocab = get32(&r);
    h.has_logits = get32(&r);
    h.n_ckpt = get32(&r);
    h.reserved = get32(&r);
    if (h.version != STATE_VERSION || h.header_bytes != STATE_HEADER_BYTES)
        return sl_seterr(SL_ERR_FORMAT, "saved state format version %u (header %u bytes); "
                         "this build reads version %u", h.version, h.header_bytes,
                         STATE_VERSION);
    if (h.total_bytes > len)
        return sl_seterr(SL_ERR_FORMAT, "saved state truncated: %zu of %llu bytes", len,
                         (unsigned long long)h.total_bytes);
    if (h.total_bytes < len)
        return sl_seterr(SL_ERR_FORMAT, "saved state has %llu trailing bytes after its "
                         "%llu", (unsigned long long)(len - h.total_bytes),
                         (unsigned long long)h.total_bytes);
    struct cursor tail = {NULL, buf, len - 8, len};
    uint64_t sum = get64(&tail), want = sl_fnv1a64(buf, len - 8, SL_FNV_SEED);
    if (sum != want)
        return sl_seterr(SL_ERR_FORMAT, "saved state is corrupt: checksum %016llx, the "
                         "content hashes to %016llx", (unsigned long long)sum,
                         (unsigned long long)want);
    struct state_header me = header_of(ctx);
    if (h.model_id != me.model_id)
        return sl_seterr(SL_ERR_ARG, "saved state belongs to another model (identity "
                         "%016llx, this model is %016llx)", (unsigned long long)h.model_id,
                         (unsigned long long)me.model_id);
    if (h.n_layers != me.n_layers || h.kv_dim != me.kv_dim || h.mla_dim != me.mla_dim ||
        h.hybrid_floats != me.hybrid_floats || h.n_vocab != me.n_vocab)
        return sl_seterr(SL_ERR_FORMAT, "saved state layout (layers %u, kv %u, latent %u, "
                         "recurrent %llu floats, vocab %u) does not match the context's "
                         "(%u, %u, %u, %llu, %u)", h.n_layers, h.kv_dim, h.mla_dim,
                         (unsigned long long)h.hybrid_floats, h.n_vocab, me.n_layers,
                         me.kv_dim, me.mla_dim, (unsigned long long)me.hybrid_floats,
                         me.n_vocab);
    if (h.has_logits > 1 || (h.n_ckpt && !h.hybrid_floats) || image_bytes(&h) != len)
        return sl_seterr(SL_ERR_FORMAT, "saved state is inconsistent: %zu bytes for %u "
                         "positions and %u checkpoints", len, h.n_past, h.n_ckpt);
    if (h.n_past > ctx->n_ctx)
        return sl_seterr(SL_ERR_RANGE, "saved state holds %u positions, the context has "
                         "room for %u (raise n_ctx)", h.n_past, ctx->n_ctx);
    struct cursor p = {NULL, buf, STATE_HEADER_BYTES, len};
    const uint8_t *tok = p.r + p.off;
    for (uint32_t i = 0; i < h.n_past; i++) {
        uint32_t id = get32(&p);
        if (id >= h.n_vocab)
            return sl_seterr(SL_ERR_FORMAT, "saved state: token %u at position %u is out of "
                             "range (vocabulary has %u ids)", id, i, h.n_vocab);
    }
    uint64_t np = h.n_past;
    size_t kv_off = p.off;
    size_t ck_off = kv_off + (size_t)(2ull * h.n_layers * np * h.kv_dim * 4 +
                                      (uint64_t)h.n_layers * np * h.mla_dim * 4 +
                                      h.hybrid_floats * 4);
    struct cursor cp = {NULL, buf, ck_off, len};
    uint32_t prev = 0;
    for (uint32_t i = 0; i < h.n_ckpt; i++) {
        uint32_t q = get32(&cp);
        if (q <= prev || q > h.n_past)
            return sl_seterr(SL_ERR_FORMAT, "saved state: checkpoint %u at position %u is "
                             "out of order or past n_past %u", i, q, h.n_past);
        prev = q;
    }
    if ((st = ckpt_reserve(ctx, h.n_ckpt))) return st;
    for (uint32_t i = 0; i < h.n_ckpt; i++)
        if (!ckpt_buf(ctx, i)) return sl_seterr(SL_ERR_NOMEM, "out of memory (checkpoints)");

    /* validated: now change the context */
    memcpy(ctx->tokens, tok, np * 4);
    const uint8_t *src = p.r + kv_off;
    for (uint32_t l = 0; l < h.n_layers && h.kv_dim; l++) {
        uint64_t base = (uint64_t)l * ctx->n_ctx * h.kv_dim, n = np * h.kv_dim * 4;
        memcpy(ctx->k_cache + base, src, n);
        memcpy(ctx->v_cache + base, src + n, n);
        src += 2 * n;
    }
    for (uint32_t l = 0; l < h.n_layers && h.mla_dim; l++) {
        uint64_t n = np * h.mla_dim * 4;
        memcpy(ctx->mla_cache + (uint64_t)l * ctx->n_ctx * h.mla_dim, src, n);
        src += n;
    }
    if (h.hybrid_floats) {
        memcpy(ctx->hybrid->state, src, h.hybrid_floats * 4);
        src += h.hybrid_floats * 4;
    }
    src += (size_t)h.n_ckpt * 4;
    for (uint32_t i = 0; i < h.n_ckpt; i++) {
        memcpy(&ctx->ckpt_pos[i], (const uint8_t *)buf + ck_off + (size_t)i * 4, 4);
        memcpy(ctx->ckpt_state[i], src, h.hybrid_floats * 4);
        src += h.hybrid_floats * 4;
    }
    ctx->n_ckpt = h.n_ckpt;
    if (h.has_logits) memcpy(ctx->logits, src, (size_t)h.n_vocab * 4);
    ctx->has_logits = (int)h.has_logits;
    ctx->n_past = h.n_past;
    return SL_OK;
}

int sl_state_save(const struct sl_context *ctx, const char *path) {
    size_t size;
    int st = sl_state_size(ctx, &size);
    if (st) return st;
    if (!path) return sl_seterr(SL_ERR_ARG, "sl_state_save: NULL path");
    uint8_t *buf = sl_malloc(size);
    if (!buf) return sl_seterr(SL_ERR_NOMEM, "out of memory (%zu-byte state)", size);
    if ((st = sl_state_save_buffer(ctx, buf, size, NULL))) {
        sl_free(buf);
        return st;
    }
    /* write a temporary and rename it, so a reader never sees half a file */
    size_t plen = strlen(path);
    char *tmp = sl_malloc(plen + 8);
    if (!tmp) {
        sl_free(buf);
        return sl_seterr(SL_ERR_NOMEM, "out of memory");
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);
    FILE *f = fopen(tmp, "wb");
    int ok = f && fwrite(buf, 1, size, f) == size;
    if (f && fclose(f) != 0) ok = 0;
    if (ok && rename(tmp, path) != 0) ok = 0;
    if (!ok) {
        st = sl_seterr(SL_ERR_IO, "cannot write the saved state %s: %s", path,
                       strerror(errno));
        remove(tmp);
    }
    sl_free(tmp);
    sl_free(buf);
    return st;
}

int sl_state_load(struct sl_context *ctx, const char *path) {
    int st = check_device(ctx, "sl_state_load");
    if (st) return st;
    if (!path) return sl_seterr(SL_ERR_ARG, "sl_state_load: NULL path");
    char *data;
    size_t len;
    if ((st = sl_read_file(path, &data, &len))) return st;
    st = sl_state_load_buffer(ctx, data, len);
    if (st) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", sl_errmsg());
        sl_seterr(st, "%s: %s", path, msg);
    }
    sl_free(data);
    return st;
}

int sl_context_copy(struct sl_context *dst, const struct sl_context *src) {
    if (!dst || !src) return sl_seterr(SL_ERR_ARG, "sl_context_copy: NULL context");
    if (dst == src) return SL_OK;
    if (dst->model != src->model)
        return sl_seterr(SL_ERR_ARG, "sl_context_copy: the contexts belong to different "
                         "models");
    size_t size;
    int st = sl_state_size(src, &size);
    if (st || (st = check_device(dst, "sl_context_copy"))) return st;
    uint8_t *buf = sl_malloc(size);
    if (!buf) return sl_seterr(SL_ERR_NOMEM, "out of memory (%zu-byte state)", size);
    st = sl_state_save_buffer(src, buf, size, NULL);
    if (!st) st = sl_state_load_buffer(dst, buf, size);
    sl_free(buf);
    return st;
}
