/*
 * tokenizer.c — loads a HuggingFace tokenizer.json (byte-level BPE) and
 * answers lookups: token bytes, token ids, full decoding and incremental
 * detokenization. The public sl_tokenizer_* / sl_token_* / sl_detok_* API.
 *
 * What it is not: the encoder (tokenizer_bpe.c) — this file only builds the
 * tables it uses (byte ids, merge map, added tokens, compiled regexes).
 *
 * Invariants: after tokenizer_load_json succeeds the tokenizer is immutable;
 * vocab ids are dense; every model vocab entry is stored as raw bytes (the
 * GPT-2 byte-to-unicode mapping undone) when all its characters are in the
 * byte table, else as its UTF-8 text (as HF's ByteLevel decoder does).
 * Decoding replaces invalid UTF-8 with U+FFFD per maximal subpart, exactly as
 * Rust's String::from_utf8_lossy that HF uses.
 */
#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "tokenizer_impl.h"
#include "util.h"

/* ---- byte-level table and UTF-8 ---------------------------------------- */

/* bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other
 * 68 bytes map in order to U+0100.. U+0143. */
static int byte_printable(int b) {
    return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) ||
           (b >= 0xAE && b <= 0xFF);
}

uint32_t tok_byte_to_cp(int byte) {
    if (byte_printable(byte)) return (uint32_t)byte;
    uint32_t n = 0;
    for (int b = 0; b < byte; b++) n += !byte_printable(b);
    return 256 + n;
}

/* The byte a code point stands for, or -1. */
static int cp_to_byte(uint32_t cp, const int16_t *inv) {
    return cp < 324 ? inv[cp] : -1;
}

int tok_utf8_seq(const unsigned char *s, size_t n) {
    unsigned c = s[0], lo = 0x80, hi = 0xBF;
    int need;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) need = 2;
    else if (c == 0xE0) need = 3, lo = 0xA0;
    else if (c == 0xED) need = 3, hi = 0x9F;
    else if (c >= 0xE1 && c <= 0xEF) need = 3;
    else if (c == 0xF0) need = 4, lo = 0x90;
    else if (c == 0xF4) need = 4, hi = 0x8F;
    else if (c >= 0xF1 && c <= 0xF3) need = 4;
    else return -1;
    for (int i = 1; i < need; i++) {
        if ((size_t)i >= n) return 0;
        unsigned b = s[i];
        if (i == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) return -i;
    }
    return need;
}

/* Decodes the valid sequence at s (length L from tok_utf8_seq). */
static uint32_t utf8_cp(const unsigned char *s, int L) {
    if (L == 1) return s[0];
    uint32_t cp = s[0] & (0x7F >> L);
    for (int i = 1; i < L; i++) cp = cp << 6 | (s[i] & 0x3F);
    return cp;
}

static int utf8_put(uint32_t cp, char *out) {
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) return o[0] = (unsigned char)cp, 1;
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | cp >> 6);
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | cp >> 12);
        o[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | cp >> 18);
    o[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3F));
    o[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Appends the lossy UTF-8 of in[0..n) to out (room for 3 * n bytes) and
 * returns the bytes consumed: all of them if final, else all but a trailing
 * incomplete-but-valid sequence. *out_len grows by what was written. */
static size_t utf8_lossy(const unsigned char *in, size_t n, int final,
                         char *out, size_t *out_len) {
    size_t i = 0, o = *out_len;
    while (i < n) {
        int L = tok_utf8_seq(in + i, n - i);
        if (L > 0) {
            memcpy(out + o, in + i, (size_t)L);
            o += (size_t)L, i += (size_t)L;
            continue;
        }
        if (L == 0 && !final) break;
        memcpy(out + o, "\xEF\xBF\xBD", 3); /* U+FFFD */
        o += 3;
        i += L == 0 ? n - i : (size_t)-L;
    }
    *out_len = o;
    return i;
}

/* ---- maps -------------------------------------------------------------- */

static size_t pow2_at_least(size_t n) {
    size_t c = 16;
    while (c < n) c <<= 1;
    return c;
}

static size_t str_hash(const char *s, size_t n) {
    return (size_t)sl_fnv1a64(s, n, SL_FNV_SEED);
}

static int strmap_init(struct tok_strmap *m, size_t n) {
    size_t cap = pow2_at_least(2 * n + 1);
    m->slot = sl_malloc(cap * sizeof *m->slot);
    if (!m->slot) return sl_seterr(SL_ERR_NOMEM, "tokenizer: out of memory");
    memset(m->slot, 0xFF, cap * sizeof *m->slot);
    m->mask = cap - 1;
    return SL_OK;
}

/* Finds key s[0..n) among keys str[id]/len[id]; -1 if absent. */
static int32_t strmap_get(const struct tok_strmap *m, const char *const *str,
                          const uint32_t *len, const char *s, size_t n) {
    size_t i = str_hash(s, n) & m->mask;
    for (;; i = (i + 1) & m->mask) {
        int32_t id = m->slot[i];
        if (id < 0) return -1;
        if (len[id] == n && memcmp(str[id], s, n) == 0) return id;
    }
}

static void strmap_put(struct tok_strmap *m, const char *const *str,
                       const uint32_t *len, int32_t id) {
    size_t i = str_hash(str[id], len[id]) & m->mask;
    while (m->slot[i] >= 0) i = (i + 1) & m->mask;
    m->slot[i] = id;
}

int32_t tok_vocab_find(const struct sl_tokenizer *t, const char *s, size_t n) {
    return strmap_get(&t->vocab_map, t->bstr, t->blen, s, n);
}

/* Inserts or overwrites (HF builds its merge map with a later duplicate
 * winning). */
static void merge_put(struct tok_mergemap *m, int32_t a, int32_t b,
                      int32_t rank, int32_t new_id) {
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t i = (size_t)((key * 0x9E3779B97F4A7C15ull) >> 20) & m->mask;
    while (m->slot[i].key != UINT64_MAX && m->slot[i].key != key)
        i = (i + 1) & m->mask;
    m->slot[i] = (struct tok_merge){key, rank, new_id};
}

/* ---- loading ----------------------------------------------------------- */

/* Temporary state of one load: the vocab by its tokenizer.json spelling. */
struct load {
    struct sl_tokenizer *t;
    const char **mstr; /* (n_limit) vocab key of each id, or NULL */
    uint32_t *mlen;    /* (n_limit) */
    struct tok_strmap mmap; /* spelling -> id */
    int16_t inv[324];  /* code point -> byte, or -1 */
};

static const char *jstr(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Reads a boolean field; missing or null gives def. */
static int jbool(const cJSON *o, const char *key, int def, int *out,
                 const char *where) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v)) return *out = def, SL_OK;
    if (!cJSON_IsBool(v))
        return sl_seterr(SL_ERR_FORMAT, "tokenizer.json: %s.%s is not a boolean",
                         where, key);
    *out = cJSON_IsTrue(v);
    return SL_OK;
}

/* An id field: an integer in [0, limit). */
static int jid(const cJSON *v, size_t limit, int32_t *out, const char *what,
               const char *name) {
    if (!cJSON_IsNumber(v))
        return sl_seterr(SL_ERR_FORMAT, "tokenizer.json: %s \"%s\": id is not a number",
                         what, name);
    double d = v->valuedouble;
    /* range first: casting a double >= 2^63 to int64_t is undefined */
    if (!(d >= 0) || (d < 9.0e15 && d != (double)(int64_t)d))
        return sl_seterr(SL_ERR_FORMAT,
                         "tokenizer.json: %s \"%s\": id %g is not a non-negative integer",
                         what, name, d);
    if (d >= (double)limit)
        return sl_seterr(SL_ERR_FORMAT,
                         "tokenizer.json: %s \"%s\": id %.0f is beyond the vocabulary "
                         "(%zu entries; ids must be dense)", what, name, d, limit);
    *out = (int32_t)d;
    return SL_OK;
}

static int32_t mfind(const struct load *L, const char *s, size_t n) {
    return strmap_get(&L->mmap, L->mstr, L->mlen, s, n);
}

static int parse_merges(struct load *L, const cJSON *merges) {
    struct sl_tokenizer *t = L->t;
    int n = cJSON_GetArraySize(merges);
    size_t cap = pow2_at_least(2 * (size_t)n + 1);
    t->merges.slot = sl_malloc(cap * sizeof *t->merges.slot);
    if (!t->merges.slot) return sl_seterr(SL_ERR_NOMEM, "tokenizer: out of memory");
    memset(t->merges.slot, 0xFF, cap * sizeof *t->merges.slot);
    t->merges.mask = cap - 1;
    char *cat = NULL;
    size_t cat_cap = 0;
    int rank = 0, rc = SL_OK;
    const cJSON *m;
    cJSON_ArrayForEach(m, merges) {
        const char *a = NULL, *b = NULL;
        size_t na = 0, nb = 0;
        if (cJSON_IsString(m)) {
            /* "a b": exactly one space (HF rejects anything else). */
            const char *sp = strchr(m->valuestring, ' ');
            if (sp && !strchr(sp + 1, ' ')) {
                a = m->valuestring, na = (size_t)(sp - a);
                b = sp + 1, nb = strlen(b);
            }
        } else if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 &&
                   cJSON_IsString(m->child) && cJSON_IsString(m->child->next)) {
            a = m->child->valuestring, na = strlen(a);
            b = m->child->next->valuestring, nb = strlen(b);
        }
        if (!a) {
            rc = sl_seterr(SL_ERR_FORMAT,
                           "tokenizer.json: model.merges[%d] is neither \"a b\" nor [\"a\", \"b\"]",
                           rank);
            break;
        }
        int32_t ia = mfind(L, a, na), ib = mfind(L, b, nb);
        if (ia < 0 || ib < 0) {
            rc = sl_seterr(SL_ERR_FORMAT,
                           "tokenizer.json: model.merges[%d] names token \"%.*s\" that is "
                           "not in the vocabulary", rank, (int)(ia < 0 ? na : nb),
                           ia < 0 ? a : b);
            break;
        }
        if (na + nb + 1 > cat_cap) {
            cat_cap = 2 * (na + nb + 1);
            char *p = sl_realloc(cat, cat_cap);
            if (!p) {
                rc = sl_seterr(SL_ERR_NOMEM, "tokenizer: out of memory");
                break;
            }
            cat = p;
        }
        memcpy(cat, a, na);
        memcpy(cat + na, b, nb);
        int32_t ic = mfind(L, cat, na + nb);
        if (ic < 0) {
            rc = sl_seterr(SL_ERR_FORMAT,
                           "tokenizer.json: model.merges[%d]: the merge \"%.*s\" of \"%.*s\" "
                           "and \"%.*s\" is not in the vocabulary", rank,
                           (int)(na + nb), cat, (int)na, a, (int)nb, b);
            break;
        }
        merge_put(&t->merges, ia, ib, rank, ic);
        rank++;
    }
    sl_free(cat);
    return rc;
}

/* Converts each vocab spelling to raw bytes in the arena. */
static void unmap_vocab(struct load *L, char **arena) {
    struct sl_tokenizer *t = L->t;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        const unsigned char *s = (const unsigned char *)L->mstr[id];
        if (!s) continue;
        size_t n = L->mlen[id], i = 0, o = 0;
        char *dst = *arena;
        while (i < n) {
            int Ls = tok_utf8_seq(s + i, n - i);
            int b = Ls > 0 ? cp_to_byte(utf8_cp(s + i, Ls), L->inv) : -1;
            if (b < 0) break;
            dst[o++] = (char)b;
            i += (size_t)Ls;
        }
        if (i < n) { /* not byte-level: keep the text (HF decoder fallback) */
            memcpy(dst, s, n);
            o = n;
        } else {
            t->bstr[id] = dst, t->blen[id] = (uint32_t)o;
        }
        dst[o] = 0;
        t->str[id] = dst, t->len[id] = (uint32_t)o;
        *arena += o + 1;
    }
}

static int parse_model(struct load *L, const cJSON *model, const cJSON *added) {
    struct sl_tokenizer *t = L->t;
    const char *type = jstr(model, "type");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (type && strcmp(type, "BPE") != 0)
        return sl_seterr(SL_ERR_UNSUPPORTED,
                         "tokenizer.json: model type \"%s\" is not supported (only BPE)",
                         type);
    if (!cJSON_IsObject(vocab))
        return sl_seterr(SL_ERR_FORMAT, "tokenizer.json: model.vocab is missing or not an object");
    if (!cJSON_IsArray(merges))
        return sl_seterr(SL_ERR_FORMAT, "tokenizer.json: model.merges is missing or not an array");
    const cJSON *drop = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (drop && !cJSON_IsNull(drop) && !(cJSON_IsNumber(drop) && drop->valuedouble == 0))
        return sl_seterr(SL_ERR_UNSUPPORTED, "tokenizer.json: BPE dropout is not supported");
    const char *keys[2] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int k = 0; k < 2; k++) {
        const char *v = jstr(model, keys[k]);
        if (v && *v)
            return sl_seterr(SL_ERR_UNSUPPORTED, "tokenizer.json: model.%s \"%s\" is not supported",
                             keys[k], v);
    }
    int byte_fallback, rc;
    if ((rc = jbool(model, "byte_fallback", 0, &byte_fallback, "model")) ||
        (rc = jbool(model, "fuse_unk", 0, &t->fuse_unk, "model")) ||
        (rc = jbool(model, "ignore_merges", 0, &t->ignore_merges, "model")))
        return rc;
    if (byte_fallback)
        return sl_seterr(SL_ERR_UNSUPPORTED, "tokenizer.json: model.byte_fallback is not supported");

    /* Ids: the vocab's, overridden by added tokens with the same id. */
    size_t n_v = (size_t)cJSON_GetArraySize(vocab);
    size_t n_a = cJSON_IsArray(added) ? (size_t)cJSON_GetArraySize(added) : 0;
    size_t limit = n_v + n_a;
    L->mstr = sl_calloc(limit + 1, sizeof *L->mstr);
    L->mlen = sl_calloc(limit + 1, sizeof *L->mlen);
    if (!L->mstr || !L->mlen || (rc = strmap_init(&L->mmap, n_v)))
        return sl_seterr(SL_ERR_NOMEM, "tokenizer: out of memory");
    int32_t max_id = -1;
    size_t arena_n = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, vocab) {
        int32_t id;
        if ((rc = jid(v, limit, &id, "vocab token", v->string))) return rc;
        if (L->mstr[id])
            return sl_seterr(SL_ERR_FORMAT,
                             "tokenizer.json: vocab id %d is used by both \"%s\" and \"%s\"",
                             id, L->mstr[id], v->string);
        size_t n = strlen(v->string);
        if (mfind(L, v->string, n) >= 0)
            return sl_seterr(SL_ERR_FORMAT, "tokenizer.json: vocab token \"%s\" appears twice",
                             v->string);
        L->mstr[id] = v->string, L->mlen[id] = (uint32_t)n;
        strmap_put(&L->mmap, L->mstr, L->mlen, id);
        arena_n += n + 1;
        if (id > max_id) max_id = id;
    }

    /* Added tokens. */
    t->added = sl_calloc(n_a + 1, sizeof *t->added);
    if (!t->added) return sl_seterr(SL_ERR_NOMEM, "tokenizer: out of memory");
    int32_t *added_at = sl_malloc((limit + 1) * sizeof *added_at);
    if (!added_at) return sl_seterr(SL_ERR_NOMEM, "tokenizer: out of memory");
    memset(added_at, 0xFF, (limit + 1) * sizeof *added_at);
    const cJSON *a;
    int i = 0;
    cJSON_ArrayForEach(a, added) {
        struct tok_added *ad = &t->added[i];
        const char *content = jstr(a, "content");
        char where[48];
        snprintf(where, sizeof where, "added_tokens[%d]", i);
        if (!content || !*content) {
            rc = sl_seterr(SL_ERR_FORMAT, "tokenizer.json: %s has no content", where);
            break;
        }
        int b[5];
        if ((rc = jid(cJSON_GetObjectItemCaseSensitive(a, "id"), limit, &ad->id,
                      "added token", content)) ||
            (rc = jbool(a, "special", 0, &b[0], where)) ||
            (rc = jbool(a, "lstrip", 0, &b[1], where)) ||
            (rc = jbool(a, "rstrip", 0, &b[2], where)) ||
            (rc = jbool(a, "single_word", 0, &b[3], where)) ||
            (rc = jbool(a, "normalized", 0, &b[4], where)))
            break;
        if (added_at[ad->id] >= 0) {
            rc = sl_seterr(SL_ERR_FORMAT, "tokenizer.json: added token id %d is used by both "
                           "\"%s\" and \"%s\"", ad->id, t->added[added_at[ad->id]].content,
                           content);
            break;
        }
        added_at[ad->id] = i;
        ad->content = content, ad->content_len = (uint32_t)strlen(content);
        ad->special = (uint8_t)b[0], ad->lstrip = (uint8_t)b[1];
        ad->rstrip = (uint8_t)b[2], ad->single_word = (uint8_t)b[3];
        ad->normalized = (uint8_t)b[4];
        arena_n += ad->content_len + 1;
        if (ad->id > max_id) max_id = ad->id;
        i++;
    }
    t->n_added = i;
    if (rc) {
        sl_free(added_at);
        return rc;
    }
    t->n_vocab = max_id + 1;
    for (int32_t id = 0; id < t->n_vocab && !rc; id++)
        if (!L->mstr[id] && added_at[id] < 0)
            rc = sl_seterr(SL_ERR_FORMAT, "tokenizer.json: id %d has no token (ids must be "
                           "dense 0..%d)", id, max_id);
    if (!rc && t->n_vocab == 0)
        rc = sl_seterr(SL_ERR_FORMAT, "tokenizer.json: the vocabulary is empty");
    if (rc) {
        sl_free(added_at);
        return rc;
    }

    /* Per-id tables and the arena. */
    size_t nv = (size_t)t->n_vocab;
    t->str = sl_calloc(nv, sizeof *t->str);
    t->bstr = sl_calloc(nv, sizeof *t->bstr);
    t->len = sl_calloc(nv, sizeof *t->len);
    t->blen = sl_calloc(nv, sizeof *t->blen);
    t->flags = sl_calloc(nv, 1);
    t->arena = sl_malloc(arena_n + 1);
    if (!t->str || !t->bstr || !t->len || !t->blen || !t->flags || !t->arena) {
        sl_free(added_at);
        return sl_seterr(SL_ERR_NOMEM, "tokenizer: out of memory");
    }
    char *arena = t->arena;
    unmap_vocab(L, &arena);
    for (i = 0; i < t->n_added; i++) {
        struct tok_added *ad = &t->added[i];
        memcpy(arena, ad->content, ad->content_len + 1);
        ad->content = ad->match = arena;
        ad->match_len = ad->content_len;
        arena += ad->content_len + 1;
        t->str[ad->id] = ad->content, t->len[ad->id] = ad->content_len;
        t->flags[ad->id] = (uint8_t)(TOK_ADDED | (ad->special ? TOK_SPECIAL : 0));
    }
    sl_free(added_at);

    if ((rc = strmap_init(&t->vocab_map, nv))) return rc;
    for (int32_t id = 0; id < t->n_vocab; id++)
        if (t->bstr[id]) strmap_put(&t->vocab_map, t->bstr, t->blen, id);
    for (int b = 0; b < 256; b++) {
        char u[4];
        int n = utf8_put(tok_byte_to_cp(b), u);
        t->byte_id[b] = mfind(L, u, (size_t)n);
    }
    t->unk_id = -1;
    const char *unk = jstr(model, "unk_token");
    if (unk && (t->unk_id = mfind(L, unk, strlen(unk))) < 0)
        return sl_seterr(SL_ERR_FORMAT, "tokenizer.json: model.unk_token \"%s\" is not in "
                         "the vocabulary", unk);
    return parse_merges(L, merges);
}

static int parse_normalizer(struct sl_tokenizer *t, const cJSON *n) {
    if (!n || cJSON_IsNull(n)) return SL_OK;
    const char *type = jstr(n, "type");
    if (type && strcmp(type, "NFC") == 0) return t->nfc = 1, SL_OK;
    if (type && strcmp(type, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "normalizers"), *e;
        if (!cJSON_IsArray(list))
            return sl_seterr(SL_ERR_FORMAT, "tokenizer.json: normalizer Sequence has no "
                             "\"normalizers\" array");
        cJSON_ArrayForEach(e, list) {
            const char *et = jstr(e, "type");
            if (!et || strcmp(et, "NFC") != 0)
                return sl_seterr(SL_ERR_UNSUPPORTED, "tokenizer.json: normalizer \"%s\" in a "
                                 "Sequence is not supported (only NFC)", et ? et : "?");
            t->nfc = 1;
        }
        return SL_OK;
    }
    return sl_seterr(SL_ERR_UNSUPPORTED, "tokenizer.json: normalizer \"%s\" is not "
                     "supported (only null, NFC or a Sequence of NFC)", type ? type : "?");
}

/* The GPT-2 pre-tokenization regex of HF's ByteLevel(use_regex=true). */
static const char *const gpt2_regex =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static int compile_regex(const char *pat, int literal, pcre2_code **out) {
    int err;
    PCRE2_SIZE off;
    uint32_t opt = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
    *out = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, opt, &err, &off, NULL);
    if (!*out) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(err, msg, sizeof msg);
        return sl_seterr(SL_ERR_UNSUPPORTED, "tokenizer.json: pre_tokenizer regex \"%s\": "
                         "%s at offset %zu", pat, (const char *)msg, (size_t)off);
    }
    /* JIT is several times faster; without it the interpreter is used. */
    pcre2_jit_compile(*out, PCRE2_JIT_COMPLETE);
    return SL_OK;
}

static int parse_pre_step(struct sl_tokenizer *t, const cJSON *p) {
    const char *type = jstr(p, "type");
    if (t->n_pre == TOK_MAX_PRE)
        return sl_seterr(SL_ERR_UNSUPPORTED, "tokenizer.json: more than %d pre_tokenizers",
                         TOK_MAX_PRE);
    struct tok_pre *st = &t->pre[t->n_pre];
    int rc;
    if (type && strcmp(type, "ByteLevel") == 0) {
        int use_regex;
        st->kind = TOK_PRE_BYTELEVEL;
        if ((rc = jbool(p, "add_prefix_space", 1, &st->add_prefix_space, "pre_tokenizer")) ||
            (rc = jbool(p, "use_regex", 1, &use_regex, "pre_tokenizer")))
            return rc;
        t->n_pre++;
        return use_regex ? compile_regex(gpt2_regex, 0, &st->re) : SL_OK;
    }
    if (type && strcmp(type, "Split") == 0) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(p, "pattern");
        const char *re = jstr(pat, "Regex"), *lit = jstr(pat, "String");
        const char *behavior = jstr(p, "behavior");
        int invert;
        if ((rc = jbool(p, "invert", 0, &invert, "pre_tokenizer Split"))) return rc;
        if (!re && !lit)
            return sl_seterr(SL_ERR_FORMAT, "tokenizer.json: pre_tokenizer Split has no "
                             "pattern.Regex or pattern.String");
        if (!behavior || strcmp(behavior, "Isolated") != 0 || invert)
            return sl_seterr(SL_ERR_UNSUPPORTED, "tokenizer.json: pre_tokenizer Split with "
                             "behavior \"%s\"%s is not supported (only Isolated, invert false)",
                             behavior ? behavior : "?", invert ? ", invert true" : "");
        st->kind = TOK_PRE_SPLIT;
        t->n_pre++;
        return compile_regex(re ? re : lit, !re, &st->re);
    }
    return sl_seterr(SL_ERR_UNSUPPORTED, "tokenizer.json: pre_tokenizer \"%s\" is not "
                     "supported (only ByteLevel, Split, Sequence)", type ? type : "?");
}

static int parse_pre(struct sl_tokenizer *t, const cJSON *p) {
    int rc;
    if (!p || cJSON_IsNull(p))
        return sl_seterr(SL_ERR_UNSUPPORTED, "tokenizer.json: pre_tokenizer null is not "
                         "supported (byte-level BPE needs ByteLevel)");
    const char *type = jstr(p, "type");
    if (type && strcmp(type, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(p, "pretokenizers"), *e;
        if (!cJSON_IsArray(list))
            return sl_seterr(SL_ERR_FORMAT, "tokenizer.json: pre_tokenizer Sequence has no "
                             "\"pretokenizers\" array");
        cJSON_ArrayForEach(e, list) if ((rc = parse_pre_step(t, e))) return rc;
    } else if ((rc = parse_pre_step(t, p))) {
        return rc;
    }
    for (int i = 0; i < t->n_pre; i++)
        if ((t->pre[i].kind == TOK_PRE_BYTELEVEL) != (i == t->n_pre - 1))
            return sl_seterr(SL_ERR_UNSUPPORTED, "tokenizer.json: pre_tokenizer must end "
                             "with exactly one ByteLevel (after any Split steps)");
    return SL_OK;
}

static int parse_decoder(const cJSON *d) {
    const char *type = d ? jstr(d, "type") : NULL;
    if (type && strcmp(type, "ByteLevel") == 0) return SL_OK;
    return sl_seterr(SL_ERR_UNSUPPORTED, "tokenizer.json: decoder \"%s\" is not supported "
                     "(only ByteLevel)", type ? type : "null");
}

/* Normalizes the match text of normalized added tokens and orders all by
 * first byte, longest first, for leftmost-longest matching. */
static int index_added(struct sl_tokenizer *t) {
    for (int32_t i = 0; i < t->n_added; i++) {
        struct tok_added *ad = &t->added[i];
        if (!ad->normalized) continue;
        t->n_added_normalized++;
        if (!t->nfc) continue;
        utf8proc_uint8_t *nfc = NULL;
        utf8proc_ssize_t n = utf8proc_map((const utf8proc_uint8_t *)ad->content,
                                          ad->content_len, &nfc,
                                          UTF8PROC_STABLE | UTF8PROC_COMPOSE);
        if (n <= 0) {
            free(nfc);
            return sl_seterr(SL_ERR_FORMAT, "tokenizer.json: added token \"%s\" is not valid "
                             "UTF-8", ad->content);
        }
        ad->match = (const char *)nfc, ad->match_len = (uint32_t)n;
    }
    t->added_order = sl_malloc(((size_t)t->n_added + 1) * sizeof *t->added_order);
    if (!t->added_order) return sl_seterr(SL_ERR_NOMEM, "tokenizer: out of memory");
    for (int32_t i = 0; i < t->n_added; i++) t->added_order[i] = i;
    /* Insertion sort: n_added is small and qsort has no context argument. */
    for (int32_t i = 1; i < t->n_added; i++) {
        int32_t x = t->added_order[i], j = i;
        struct tok_added *base = t->added;
        while (j > 0) {
            const struct tok_added *a = &base[x], *b = &base[t->added_order[j - 1]];
            unsigned ca = (unsigned char)a->match[0], cb = (unsigned char)b->match[0];
            int before = ca != cb ? ca < cb
                         : a->match_len != b->match_len ? a->match_len > b->match_len
                                                       : a->id < b->id;
            if (!before) break;
            t->added_order[j] = t->added_order[j - 1];
            j--;
        }
        t->added_order[j] = x;
    }
    int32_t k = 0;
    for (int b = 0; b <= 256; b++) {
        while (k < t->n_added && (unsigned char)t->added[t->added_order[k]].match[0] < b) k++;
        t->added_first[b] = k;
    }
    return SL_OK;
}

int tokenizer_load_json(const char *json, size_t len, struct sl_tokenizer **out) {
    if (!json || !out) return sl_seterr(SL_ERR_ARG, "tokenizer_load_json: NULL argument");
    *out = NULL;
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return sl_seterr(SL_ERR_FORMAT, "tokenizer.json is not a JSON object");
    }
    struct sl_tokenizer *t = sl_calloc(1, sizeof *t);
    struct load L = {.t = t};
    int rc = SL_OK;
    if (!t) {
        cJSON_Delete(root);
        return sl_seterr(SL_ERR_NOMEM, "tokenizer: out of memory");
    }
    memset(L.inv, 0xFF, sizeof L.inv);
    for (int b = 0; b < 256; b++) L.inv[tok_byte_to_cp(b)] = (int16_t)b;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    if (!cJSON_IsObject(model))
        rc = sl_seterr(SL_ERR_FORMAT, "tokenizer.json: missing \"model\" object");
    else if (added && !cJSON_IsNull(added) && !cJSON_IsArray(added))
        rc = sl_seterr(SL_ERR_FORMAT, "tokenizer.json: added_tokens is not an array");
    if (!rc) rc = parse_model(&L, model, added);
    if (!rc) rc = parse_normalizer(t, cJSON_GetObjectItemCaseSensitive(root, "normalizer"));
    if (!rc) rc = parse_pre(t, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"));
    if (!rc) rc = parse_decoder(cJSON_GetObjectItemCaseSensitive(root, "decoder"));
    if (!rc) rc = index_added(t);
    sl_free(L.mstr);
    sl_free(L.mlen);
    sl_free(L.mmap.slot);
    if (rc) {
        sl_tokenizer_free(t);
    } else {
        *out = t;
    }
    cJSON_Delete(root);
    return rc;
}

int sl_tokenizer_load(const char *path, struct sl_tokenizer **out) {
    if (!path || !out) return sl_seterr(SL_ERR_ARG, "sl_tokenizer_load: NULL argument");
    *out = NULL;
    char *data;
    size_t n;
    int rc = sl_read_file(path, &data, &n);
    if (rc) return rc;
    rc = tokenizer_load_json(data, n, out);
    sl_free(data);
    if (rc) sl_preerr(rc, "%s: ", path);
    return rc;
}

void sl_tokenizer_free(struct sl_tokenizer *t) {
    if (!t) return;
    for (int32_t i = 0; t->added && i < t->n_added; i++)
        if (t->added[i].match && t->added[i].match != t->added[i].content)
            free((void *)t->added[i].match); /* from utf8proc (malloc) */
    for (int i = 0; i < t->n_pre; i++) pcre2_code_free(t->pre[i].re);
    sl_free(t->added);
    sl_free(t->added_order);
    sl_free(t->arena);
    sl_free(t->str);
    sl_free(t->len);
    sl_free(t->bstr);
    sl_free(t->blen);
    sl_free(t->flags);
    sl_free(t->vocab_map.slot);
    sl_free(t->merges.slot);
    sl_free(t);
}

/* ---- lookups ----------------------------------------------------------- */

int32_t sl_tokenizer_n_vocab(const struct sl_tokenizer *t) { return t ? t->n_vocab : 0; }

const char *sl_token_bytes(const struct sl_tokenizer *t, int32_t id, size_t *len) {
    if (!t || id < 0 || id >= t->n_vocab) {
        if (len) *len = 0;
        return NULL;
    }
    if (len) *len = t->len[id];
    return t->str[id];
}

int32_t sl_token_id(const struct sl_tokenizer *t, const char *text) {
    if (!t || !text) return -1;
    size_t n = strlen(text);
    for (int32_t i = 0; i < t->n_added; i++)
        if (t->added[i].content_len == n && memcmp(t->added[i].content, text, n) == 0)
            return t->added[i].id;
    return tok_vocab_find(t, text, n);
}

int tokenizer_is_added(const struct sl_tokenizer *t, int32_t id) {
    return t && id >= 0 && id < t->n_vocab && (t->flags[id] & TOK_ADDED);
}

int tokenizer_is_special(const struct sl_tokenizer *t, int32_t id) {
    return t && id >= 0 && id < t->n_vocab && (t->flags[id] & TOK_SPECIAL);
}

int32_t tokenizer_n_added(const struct sl_tokenizer *t) { return t ? t->n_added : 0; }

int32_t tokenizer_added_id(const struct sl_tokenizer *t, int32_t i) {
    return t && i >= 0 && i < t->n_added ? t->added[i].id : -1;
}

int sl_tokenize(const struct sl_tokenizer *t, const char *text, size_t len, int32_t **ids,
                size_t *n_ids) {
    return tokenizer_encode(t, text, len, 0, ids, n_ids);
}

/* ---- decoding ---------------------------------------------------------- */

/* Grows *buf to hold at least n bytes. */
static int grow(char **buf, size_t *cap, size_t n) {
    if (n <= *cap) return SL_OK;
    size_t c = *cap ? *cap : 64;
    while (c < n) c *= 2;
    char *p = sl_realloc(*buf, c);
    if (!p) return sl_seterr(SL_ERR_NOMEM, "tokenizer: out of memory");
    *buf = p, *cap = c;
    return SL_OK;
}

int tokenizer_decode(const struct sl_tokenizer *t, const int32_t *ids, size_t n,
                     int skip_special, char **text, size_t *len) {
    if (!t || (!ids && n) || !text || !len)
        return sl_seterr(SL_ERR_ARG, "tokenizer_decode: NULL argument");
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->n_vocab)
            return sl_seterr(SL_ERR_RANGE, "tokenizer_decode: id %d at %zu is outside "
                             "[0, %d)", ids[i], i, t->n_vocab);
        total += t->len[ids[i]];
    }
    unsigned char *raw = sl_malloc(total + 1);
    char *out = sl_malloc(3 * total + 1);
    if (!raw || !out) {
        sl_free(raw);
        sl_free(out);
        return sl_seterr(SL_ERR_NOMEM, "tokenizer: out of memory");
    }
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (skip_special && (t->flags[ids[i]] & TOK_SPECIAL)) continue;
        memcpy(raw + o, t->str[ids[i]], t->len[ids[i]]);
        o += t->len[ids[i]];
    }
    size_t olen = 0;
    utf8_lossy(raw, o, 1, out, &olen);
    out[olen] = 0;
    sl_free(raw);
    *text = out, *len = olen;
    return SL_OK;
}

struct sl_detok {
    const struct sl_tokenizer *tok;
    unsigned char hold[4]; /* an incomplete but valid UTF-8 prefix */
    size_t n_hold;
    char *work, *out;      /* hold + token bytes; the lossy output */
    size_t work_cap, out_cap;
};

int sl_detok_create(const struct sl_tokenizer *tok, struct sl_detok **out) {
    if (!tok || !out) return sl_seterr(SL_ERR_ARG, "sl_detok_create: NULL argument");
    *out = sl_calloc(1, sizeof **out);
    if (!*out) return sl_seterr(SL_ERR_NOMEM, "tokenizer: out of memory");
    (*out)->tok = tok;
    return SL_OK;
}

void sl_detok_free(struct sl_detok *d) {
    if (!d) return;
    sl_free(d->work);
    sl_free(d->out);
    sl_free(d);
}

/* Runs hold + bytes through the lossy decoder; keeps an incomplete tail. */
static int detok_feed(struct sl_detok *d, const char *bytes, size_t n, int final,
                      const char **out, size_t *out_len) {
    size_t m = d->n_hold + n;
    int rc;
    if ((rc = grow(&d->work, &d->work_cap, m + 1)) ||
        (rc = grow(&d->out, &d->out_cap, 3 * m + 1)))
        return rc;
    memcpy(d->work, d->hold, d->n_hold);
    memcpy(d->work + d->n_hold, bytes, n);
    size_t olen = 0;
    size_t used = utf8_lossy((const unsigned char *)d->work, m, final, d->out, &olen);
    SL_ASSERT(m - used < sizeof d->hold);
    d->n_hold = m - used;
    memcpy(d->hold, d->work + used, d->n_hold);
    d->out[olen] = 0;
    *out = d->out, *out_len = olen;
    return SL_OK;
}

int sl_detok_push(struct sl_detok *d, int32_t id, const char **out, size_t *out_len) {
    if (!d || !out || !out_len) return sl_seterr(SL_ERR_ARG, "sl_detok_push: NULL argument");
    *out = "", *out_len = 0;
    if (id < 0 || id >= d->tok->n_vocab)
        return sl_seterr(SL_ERR_RANGE, "sl_detok_push: id %d is outside [0, %d)", id,
                         d->tok->n_vocab);
    return detok_feed(d, d->tok->str[id], d->tok->len[id], 0, out, out_len);
}

int sl_detok_flush(struct sl_detok *d, const char **out, size_t *out_len) {
    if (!d || !out || !out_len) return sl_seterr(SL_ERR_ARG, "sl_detok_flush: NULL argument");
    return detok_feed(d, "", 0, 1, out, out_len);
}
