/*
 * tokenizer_bpe.c — the encoder: text -> ids, following HF tokenizers'
 * pipeline for encode(text, add_special_tokens=False):
 *
 *   1. split on added tokens that are not normalized (leftmost-longest, with
 *      lstrip/rstrip/single_word as HF's AddedVocabulary::find_matches);
 *   2. NFC-normalize each remaining segment (if the normalizer asks), then
 *      split it on the normalized added tokens;
 *   3. pre-tokenize: each Split regex (Isolated: matches and the gaps between
 *      them become pieces), then ByteLevel (optional prefix space, optional
 *      GPT-2 regex);
 *   4. BPE on each piece's bytes: symbols start as one-byte tokens; the pair
 *      with the lowest merge rank is merged first, ties leftmost (a binary
 *      heap of candidate merges, stale entries skipped, as HF's merge_word).
 *
 * What it is not: a cache or a general normalizer. Cost is O(n log n) in
 * the longest piece (heap), O(n) elsewhere; no quadratic case on long runs.
 *
 * Invariants: the tokenizer is only read, so concurrent calls are safe; all
 * scratch lives in struct enc on the caller's stack and heap.
 */
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "tokenizer_impl.h"
#include "util.h"

struct bpe_sym {
    int32_t id;
    int32_t prev, next; /* neighbours in the live list, -1 at the ends */
    uint32_t len;       /* bytes covered; 0 = merged into its left */
};

struct bpe_cand {
    int32_t rank, pos, new_id; /* merge sym[pos] with its next into new_id */
};

/* A direct-mapped cache of short pieces -> ids, one per encode call: words
 * repeat, and each BPE merge lookup is a cache miss in a multi-MB table. */
#define WCACHE_N 4096 /* entries (power of two) */
#define WCACHE_KEY 24 /* longest cached piece, bytes */
#define WCACHE_IDS 8  /* most ids of a cached piece */
struct wcache_entry {
    uint8_t key_len, n_ids; /* key_len 0: empty */
    char key[WCACHE_KEY];
    int32_t ids[WCACHE_IDS];
};

struct enc {
    const struct sl_tokenizer *t;
    int flags;
    int32_t *ids;            /* (cap) output */
    size_t n, cap;
    struct bpe_sym *sym;     /* (sym_cap) */
    struct bpe_cand *heap;   /* (3 * sym_cap) */
    size_t sym_cap;
    char *pre;               /* (pre_cap) " " + piece for add_prefix_space */
    size_t pre_cap;
    pcre2_match_data *md;
    struct wcache_entry *cache; /* (WCACHE_N), NULL for short texts */
};

static int push_id(struct enc *e, int32_t id) {
    if (e->n == e->cap) {
        size_t c = e->cap ? 2 * e->cap : 256;
        int32_t *p = sl_realloc(e->ids, c * sizeof *p);
        if (!p) return sl_seterr(SL_ERR_NOMEM, "tokenizer: out of memory");
        e->ids = p, e->cap = c;
    }
    e->ids[e->n++] = id;
    return SL_OK;
}

/* ---- BPE --------------------------------------------------------------- */

static int cand_less(const struct bpe_cand *a, const struct bpe_cand *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(struct bpe_cand *h, size_t *n, struct bpe_cand c) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_less(&c, &h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = c;
}

static struct bpe_cand heap_pop(struct bpe_cand *h, size_t *n) {
    struct bpe_cand top = h[0], last = h[--*n];
    size_t i = 0, m = *n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= m) break;
        if (c + 1 < m && cand_less(&h[c + 1], &h[c])) c++;
        if (!cand_less(&h[c], &last)) break;
        h[i] = h[c];
        i = c;
    }
    if (m) h[i] = last;
    return top;
}

static void cand_add(const struct sl_tokenizer *t, struct enc *e, size_t *nh, int32_t pos) {
    int32_t nx = e->sym[pos].next;
    if (nx < 0) return;
    const struct tok_merge *m = tok_merge_find(t, e->sym[pos].id, e->sym[nx].id);
    if (m) heap_push(e->heap, nh, (struct bpe_cand){m->rank, pos, m->new_id});
}

static int bpe_merge(struct enc *e, const unsigned char *s, size_t n);

/* Encodes one pre-tokenized piece s[0..n) (raw bytes), through the cache. */
static int bpe_piece(struct enc *e, const unsigned char *s, size_t n) {
    if (n == 0) return SL_OK;
    if (n == 1 && !e->t->ignore_merges && e->t->byte_id[s[0]] >= 0)
        return push_id(e, e->t->byte_id[s[0]]);
    if (!e->cache || n > WCACHE_KEY) return bpe_merge(e, s, n);
    struct wcache_entry *c =
        &e->cache[sl_fnv1a64(s, n, SL_FNV_SEED) & (WCACHE_N - 1)];
    int rc;
    if (c->key_len == n && memcmp(c->key, s, n) == 0) {
        for (int i = 0; i < c->n_ids; i++)
            if ((rc = push_id(e, c->ids[i]))) return rc;
        return SL_OK;
    }
    size_t first = e->n;
    if ((rc = bpe_merge(e, s, n))) return rc;
    if (e->n - first <= WCACHE_IDS) {
        c->key_len = (uint8_t)n;
        c->n_ids = (uint8_t)(e->n - first);
        memcpy(c->key, s, n);
        memcpy(c->ids, e->ids + first, c->n_ids * sizeof *c->ids);
    }
    return SL_OK;
}

/* BPE of one piece s[0..n) (raw bytes, n >= 1). */
static int bpe_merge(struct enc *e, const unsigned char *s, size_t n) {
    const struct sl_tokenizer *t = e->t;
    if (t->ignore_merges) {
        int32_t id = tok_vocab_find(t, (const char *)s, n);
        if (id >= 0) return push_id(e, id);
    }
    if (n > e->sym_cap) {
        size_t c = n < 64 ? 64 : n;
        struct bpe_sym *sym = sl_realloc(e->sym, c * sizeof *sym);
        if (sym) e->sym = sym;
        struct bpe_cand *heap = sl_realloc(e->heap, 3 * c * sizeof *heap);
        if (heap) e->heap = heap;
        if (!sym || !heap) return sl_seterr(SL_ERR_NOMEM, "tokenizer: out of memory");
        e->sym_cap = c;
    }
    /* Symbols: one per byte; a byte without a token becomes unk, or is
     * dropped when there is no unk (as HF). */
    int32_t ns = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = t->byte_id[s[i]];
        if (id < 0) {
            if (t->unk_id < 0) continue;
            id = t->unk_id;
            if (t->fuse_unk && ns > 0 && e->sym[ns - 1].id == id) {
                e->sym[ns - 1].len++;
                continue;
            }
        }
        e->sym[ns] = (struct bpe_sym){id, ns - 1, ns + 1, 1};
        ns++;
    }
    if (ns == 0) return SL_OK;
    e->sym[ns - 1].next = -1;
    size_t nh = 0;
    for (int32_t i = 0; i + 1 < ns; i++) cand_add(t, e, &nh, i);
    while (nh) {
        struct bpe_cand c = heap_pop(e->heap, &nh);
        struct bpe_sym *a = &e->sym[c.pos];
        if (a->len == 0 || a->next < 0) continue; /* stale */
        struct bpe_sym *b = &e->sym[a->next];
        const struct tok_merge *m = tok_merge_find(t, a->id, b->id);
        if (!m || m->new_id != c.new_id) continue; /* stale */
        a->id = c.new_id;
        a->len += b->len;
        b->len = 0;
        a->next = b->next;
        if (a->next >= 0) e->sym[a->next].prev = c.pos;
        if (a->prev >= 0) cand_add(t, e, &nh, a->prev);
        cand_add(t, e, &nh, c.pos);
    }
    /* Symbol 0 is never merged away (merges remove the right symbol). */
    for (int32_t i = 0; i >= 0; i = e->sym[i].next) {
        int rc = push_id(e, e->sym[i].id);
        if (rc) return rc;
    }
    return SL_OK;
}

/* ---- pre-tokenization -------------------------------------------------- */

/* Finds the next match of re in s[0..n) at or after off: 1 and [*ms, *me)
 * on a match, 0 on none, < 0 (status set) on a PCRE2 failure. */
static int re_next(struct enc *e, const pcre2_code *re, const char *s, size_t n, size_t off,
                   size_t *ms, size_t *me) {
    int rc = pcre2_match(re, (PCRE2_SPTR)s, n, off, PCRE2_NO_UTF_CHECK, e->md, NULL);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT) /* the interpreter uses the heap */
        rc = pcre2_match(re, (PCRE2_SPTR)s, n, off, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT,
                         e->md, NULL);
    if (rc == PCRE2_ERROR_NOMATCH) return 0;
    if (rc < 0) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(rc, msg, sizeof msg);
        sl_seterr(SL_ERR_UNSUPPORTED, "tokenizer: pre-tokenizer regex failed on a piece of "
                  "%zu bytes: %s", n, (const char *)msg);
        return -1;
    }
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->md);
    *ms = ov[0], *me = ov[1];
    return 1;
}

static size_t utf8_len_at(const char *s, size_t i, size_t n) {
    int L = tok_utf8_seq((const unsigned char *)s + i, n - i);
    return L > 0 ? (size_t)L : 1;
}

static int pre_apply(struct enc *e, int step, const char *s, size_t n);

/* Isolated split: every match and every gap between matches is a piece,
 * passed to step + 1 (or BPE'd when step is ByteLevel's regex). */
static int re_split(struct enc *e, const pcre2_code *re, int step, const char *s, size_t n) {
    size_t off = 0, last = 0, ms, me;
    int rc, found;
    while (off < n && (found = re_next(e, re, s, n, off, &ms, &me)) != 0) {
        if (found < 0) return SL_ERR_UNSUPPORTED;
        if (me == ms) { /* an empty match splits nothing */
            off = ms + utf8_len_at(s, ms, n);
            continue;
        }
        int last_step = step == e->t->n_pre - 1;
        if (ms > last && (rc = last_step ? bpe_piece(e, (const unsigned char *)s + last, ms - last)
                                         : pre_apply(e, step + 1, s + last, ms - last)))
            return rc;
        if ((rc = last_step ? bpe_piece(e, (const unsigned char *)s + ms, me - ms)
                            : pre_apply(e, step + 1, s + ms, me - ms)))
            return rc;
        last = off = me;
    }
    if (last < n)
        return step == e->t->n_pre - 1 ? bpe_piece(e, (const unsigned char *)s + last, n - last)
                                       : pre_apply(e, step + 1, s + last, n - last);
    return SL_OK;
}

/* Applies pre-tokenizer step `step` (and the following ones) to s[0..n). */
static int pre_apply(struct enc *e, int step, const char *s, size_t n) {
    const struct tok_pre *p = &e->t->pre[step];
    if (n == 0) return SL_OK;
    if (p->kind == TOK_PRE_SPLIT) return re_split(e, p->re, step, s, n);
    /* ByteLevel: the last step. The byte-to-unicode mapping is implicit:
     * BPE works on raw bytes with a vocabulary converted back to bytes. */
    if (p->add_prefix_space && s[0] != ' ') {
        if (n + 1 > e->pre_cap) {
            char *q = sl_realloc(e->pre, n + 1);
            if (!q) return sl_seterr(SL_ERR_NOMEM, "tokenizer: out of memory");
            e->pre = q, e->pre_cap = n + 1;
        }
        e->pre[0] = ' ';
        memcpy(e->pre + 1, s, n);
        s = e->pre, n++;
    }
    if (p->re) return re_split(e, p->re, step, s, n);
    return bpe_piece(e, (const unsigned char *)s, n);
}

/* ---- added tokens and normalization ----------------------------------- */

/* Rust's char::is_whitespace (Unicode White_Space). */
static int is_ws(uint32_t c) {
    return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

/* Rust's char::is_alphanumeric, approximated by the L and N categories. */
static int is_alnum(uint32_t c) {
    utf8proc_category_t k = utf8proc_category((utf8proc_int32_t)c);
    return (k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO) ||
           (k >= UTF8PROC_CATEGORY_ND && k <= UTF8PROC_CATEGORY_NO);
}

static uint32_t cp_at(const char *s, size_t i, size_t n, size_t *L) {
    utf8proc_int32_t c;
    utf8proc_ssize_t r = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &c);
    *L = r > 0 ? (size_t)r : 1;
    return r > 0 ? (uint32_t)c : 0xFFFD;
}

/* Start of the character that ends at byte i (i > 0). */
static size_t cp_start_before(const char *s, size_t i) {
    do i--;
    while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80);
    return i;
}

struct added_match {
    size_t start, stop; /* the span the token takes, strip included */
    int32_t id;
};

/* Finds the next added-token match (normalized or not) in s[from..n), as
 * HF's find_matches: leftmost-longest, single_word and, with
 * TOKENIZER_SPLIT_SPECIAL, special tokens skipped (the search resumes after
 * them), lstrip/rstrip widening the span over Unicode whitespace but never
 * before start_offset. Returns 1 and *m, or 0. */
static int added_next(const struct enc *e, int normalized, const char *s, size_t n,
                      size_t from, size_t start_offset, struct added_match *m) {
    const struct sl_tokenizer *t = e->t;
    size_t p = from;
    while (p < n) {
        unsigned b = (unsigned char)s[p];
        const struct tok_added *hit = NULL;
        for (int32_t k = t->added_first[b]; k < t->added_first[b + 1]; k++) {
            const struct tok_added *a = &t->added[t->added_order[k]];
            if (a->normalized != normalized || a->match_len > n - p) continue;
            if (memcmp(s + p, a->match, a->match_len) == 0) {
                hit = a; /* longest first */
                break;
            }
        }
        if (!hit) {
            p++;
            continue;
        }
        size_t start = p, stop = p + hit->match_len, L;
        int skip = (e->flags & TOKENIZER_SPLIT_SPECIAL) && hit->special;
        if (hit->single_word && !skip) {
            int word_before = start > 0 && is_alnum(cp_at(s, cp_start_before(s, start), n, &L));
            int word_after = stop < n && is_alnum(cp_at(s, stop, n, &L));
            skip = word_before || word_after;
        }
        if (skip) {
            p = stop;
            continue;
        }
        if (hit->lstrip) {
            while (start > start_offset) {
                size_t q = cp_start_before(s, start);
                if (!is_ws(cp_at(s, q, n, &L))) break;
                start = q;
            }
        }
        if (hit->rstrip) {
            while (stop < n && is_ws(cp_at(s, stop, n, &L))) stop += L;
        }
        *m = (struct added_match){start, stop, hit->id};
        return 1;
    }
    return 0;
}

typedef int (*segment_fn)(struct enc *e, const char *s, size_t n);

/* Splits s[0..n) on added tokens (normalized or not): tokens go to the
 * output, the text between them to fn. */
static int split_added(struct enc *e, int normalized, const char *s, size_t n, segment_fn fn) {
    size_t start_offset = 0;
    struct added_match m;
    int rc;
    while (added_next(e, normalized, s, n, start_offset, start_offset, &m)) {
        if (m.start > start_offset && (rc = fn(e, s + start_offset, m.start - start_offset)))
            return rc;
        if ((rc = push_id(e, m.id))) return rc;
        start_offset = m.stop;
    }
    return start_offset < n ? fn(e, s + start_offset, n - start_offset) : SL_OK;
}

static int pre_first(struct enc *e, const char *s, size_t n) { return pre_apply(e, 0, s, n); }

/* Whether NFC could change s[0..n). A sufficient test: code points below
 * U+0300, kana, CJK unified ideographs and Hangul syllables have no
 * canonical decomposition, combining class 0, and never compose with a
 * preceding character, so text made only of them is already NFC. */
static int nfc_needed(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        size_t L;
        uint32_t c = cp_at(s, i, n, &L);
        i += L;
        if (c < 0x300 || (c >= 0x3041 && c <= 0x3096) || (c >= 0x30A1 && c <= 0x30FA) ||
            (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0xAC00 && c <= 0xD7A3))
            continue;
        return 1;
    }
    return 0;
}

/* A segment between non-normalized added tokens: normalize, split on the
 * normalized added tokens, pre-tokenize. */
static int encode_segment(struct enc *e, const char *s, size_t n) {
    const struct sl_tokenizer *t = e->t;
    utf8proc_uint8_t *nfc = NULL;
    if (t->nfc && nfc_needed(s, n)) {
        utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n,
                                          &nfc, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
        if (r < 0) {
            free(nfc);
            return sl_seterr(r == UTF8PROC_ERROR_NOMEM ? SL_ERR_NOMEM : SL_ERR_INTERNAL,
                             "tokenizer: NFC normalization failed: %s",
                             utf8proc_errmsg(r));
        }
        s = (const char *)nfc, n = (size_t)r;
    }
    int rc = t->n_added_normalized ? split_added(e, 1, s, n, pre_first) : pre_first(e, s, n);
    free(nfc); /* utf8proc allocates with malloc */
    return rc;
}

int tokenizer_encode(const struct sl_tokenizer *t, const char *text, size_t len, int flags,
                     int32_t **ids, size_t *n_ids) {
    if (!t || (!text && len) || !ids || !n_ids)
        return sl_seterr(SL_ERR_ARG, "sl_tokenize: NULL argument");
    *ids = NULL, *n_ids = 0;
    for (size_t i = 0; i < len;) {
        int L = tok_utf8_seq((const unsigned char *)text + i, len - i);
        if (L <= 0) return sl_seterr(SL_ERR_ARG, "text is not valid UTF-8 at byte %zu", i);
        i += (size_t)L;
    }
    struct enc e = {.t = t, .flags = flags};
    e.md = pcre2_match_data_create(1, NULL);
    if (len >= 4096) /* only worth its allocation on long texts; optional */
        e.cache = sl_calloc(WCACHE_N, sizeof *e.cache);
    e.cap = len / 2 + 16; /* prose is 3-4 bytes a token; grows if needed */
    e.ids = sl_malloc(e.cap * sizeof *e.ids);
    int rc = e.md && e.ids ? SL_OK : sl_seterr(SL_ERR_NOMEM, "tokenizer: out of memory");
    if (!rc && len)
        rc = t->n_added > t->n_added_normalized ? split_added(&e, 0, text, len, encode_segment)
                                                : encode_segment(&e, text, len);
    pcre2_match_data_free(e.md);
    sl_free(e.cache);
    sl_free(e.sym);
    sl_free(e.heap);
    sl_free(e.pre);
    if (rc) {
        sl_free(e.ids);
        return rc;
    }
    *ids = e.ids, *n_ids = e.n;
    return SL_OK;
}
