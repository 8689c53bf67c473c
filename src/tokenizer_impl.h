/*
 * tokenizer_impl.h — the private layout of struct sl_tokenizer, shared only
 * by tokenizer.c (loading, lookup, decoding) and tokenizer_bpe.c (encoding).
 * No other file may include it; everyone else uses tokenizer.h.
 *
 * Invariants: every id in [0, n_vocab) has str[id]/len[id] (its decoded
 * bytes, NUL-terminated in the arena); bstr[id] is the raw-byte form of model
 * vocab entries that are byte-level (NULL otherwise) and keys vocab_map;
 * merges maps (left id, right id) to (rank, merged id); added[] are sorted in
 * tokenizer.json order, added_order[] by first byte then length descending.
 */
#ifndef SL_TOKENIZER_IMPL_H
#define SL_TOKENIZER_IMPL_H

#include <stdint.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "tokenizer.h"

#define TOK_ADDED 1u
#define TOK_SPECIAL 2u
#define TOK_MAX_PRE 8 /* pre-tokenizer steps */

/* Open-addressing string -> id map; keys live in the owner's per-id arrays
 * (str[id], len[id]) so a slot is just an id (-1 = empty). */
struct tok_strmap {
    int32_t *slot; /* (mask + 1) */
    size_t mask;
};

/* (left, right) -> (rank, merged id). key = left << 32 | right; empty slots
 * have key UINT64_MAX. */
struct tok_merge {
    uint64_t key;
    int32_t rank;
    int32_t new_id;
};
struct tok_mergemap {
    struct tok_merge *slot; /* (mask + 1) */
    size_t mask;
};

struct tok_added {
    int32_t id;
    const char *content; /* as written in tokenizer.json (arena) */
    const char *match;   /* what is matched: NFC(content) if normalized */
    uint32_t content_len, match_len;
    uint8_t special, lstrip, rstrip, single_word, normalized;
};

enum tok_pre_kind { TOK_PRE_SPLIT, TOK_PRE_BYTELEVEL };
struct tok_pre {
    int kind;
    pcre2_code *re;       /* Split pattern, or ByteLevel's GPT-2 regex; NULL
                             for ByteLevel(use_regex=false) */
    int add_prefix_space; /* ByteLevel only */
};

struct sl_tokenizer {
    int32_t n_vocab;
    char *arena;          /* all token bytes, each NUL-terminated */
    const char **str;     /* (n_vocab) decoded bytes (added: content) */
    uint32_t *len;        /* (n_vocab) */
    const char **bstr;    /* (n_vocab) raw bytes of byte-level vocab entries */
    uint32_t *blen;       /* (n_vocab) */
    uint8_t *flags;       /* (n_vocab) TOK_ADDED | TOK_SPECIAL */
    struct tok_strmap vocab_map;  /* raw bytes -> id (bstr keys) */
    struct tok_mergemap merges;
    int32_t byte_id[256]; /* id of the one-byte token of each byte, or -1 */
    int32_t unk_id;       /* -1: bytes without a token are dropped (as HF) */
    int fuse_unk, ignore_merges;
    int nfc;              /* normalizer: 0 none, 1 NFC */
    struct tok_added *added; /* (n_added) */
    int32_t n_added;
    int n_added_normalized;  /* added tokens matched after normalization */
    int32_t *added_order;    /* (n_added) indices into added */
    int32_t added_first[257];/* added_order[added_first[b]..added_first[b+1])
                                start with byte b */
    struct tok_pre pre[TOK_MAX_PRE];
    int n_pre;
};

/* GPT-2 bytes_to_unicode: the code point standing for each byte. */
uint32_t tok_byte_to_cp(int byte);

/* Length of the UTF-8 sequence at s[0..n): L > 0 for a complete valid
 * sequence, 0 for a valid but incomplete prefix (n too short), -k when
 * s[0..k) is a maximal invalid subpart. n >= 1. */
int tok_utf8_seq(const unsigned char *s, size_t n);

/* The id of raw bytes s[0..n) in the byte-level vocabulary, or -1. */
int32_t tok_vocab_find(const struct sl_tokenizer *t, const char *s, size_t n);

/* The merge of (a, b) or NULL. */
static inline const struct tok_merge *tok_merge_find(const struct sl_tokenizer *t,
                                                     int32_t a, int32_t b) {
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t i = (size_t)((key * 0x9E3779B97F4A7C15ull) >> 20) & t->merges.mask;
    for (;;) {
        const struct tok_merge *m = &t->merges.slot[i];
        if (m->key == key) return m;
        if (m->key == UINT64_MAX) return NULL;
        i = (i + 1) & t->merges.mask;
    }
}

#endif /* SL_TOKENIZER_IMPL_H */
