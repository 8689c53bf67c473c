/*
 * fuzz_qwen3.c — libFuzzer target for the tokenizer's encoder on arbitrary
 * bytes with the real Qwen3 tokenizer (151k tokens, NFC normalizer, the
 * Qwen2 pre-tokenizer regex, added and special tokens). The tokenizer is
 * loaded once in LLVMFuzzerInitialize from
 * tests/fixtures/tokenizer/qwen3/tokenizer.json.gz (through `gzip -dc`; run
 * from the repository root). `make fuzz` builds it.
 *
 * The whole input is the text. Contracts:
 *   - invalid UTF-8 gives SL_ERR_ARG, nothing else;
 *   - valid UTF-8 encodes (SL_ERR_UNSUPPORTED is allowed only as PCRE2's
 *     match limit on pathological input), every id in [0, n_vocab);
 *   - decode(encode(s)) == NFC(s) (utf8proc; added tokens are matched
 *     before normalization, so NFC is applied to the pieces between them —
 *     the expected text is built the same way);
 *   - encode is idempotent through decode: encode(decode(encode(s))) ==
 *     encode(s);
 *   - the streaming detokenizer gives the same bytes as decode.
 * With the low bit of the first byte set, the text is also encoded with
 * TOKENIZER_SPLIT_SPECIAL (ids must be in range).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "tokenizer_impl.h"
#include "util.h"

static struct sl_tokenizer *qwen;

static void must(int c, const char *what) {
    if (!c) {
        fprintf(stderr, "fuzz_qwen3: contract violated: %s\n", what);
        abort();
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv) {
    const char *gz = "tests/fixtures/tokenizer/qwen3/tokenizer.json.gz";
    char cmd[256];
    snprintf(cmd, sizeof cmd, "gzip -dc '%s'", gz);
    FILE *f = popen(cmd, "r");
    if (!f) abort();
    size_t cap = 16u << 20, n = 0, r;
    char *buf = malloc(cap);
    while (buf && (r = fread(buf + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap) buf = realloc(buf, cap *= 2);
    }
    if (pclose(f) != 0 || !buf || n == 0 || tokenizer_load_json(buf, n, &qwen) != SL_OK) {
        fprintf(stderr, "fuzz_qwen3: cannot load %s (run from the repository root): %s\n",
                gz, sl_errmsg());
        abort();
    }
    free(buf);
    return 0;
}

static int valid_utf8(const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n;) {
        int L = tok_utf8_seq(s + i, n - i);
        if (L <= 0) return 0;
        i += (size_t)L;
    }
    return 1;
}

/* Appends NFC(s[0..n)) to *out (grown with realloc). */
static void append_nfc(char **out, size_t *len, const char *s, size_t n) {
    utf8proc_uint8_t *nfc = NULL;
    utf8proc_ssize_t m = 0;
    if (n) {
        m = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &nfc,
                         UTF8PROC_STABLE | UTF8PROC_COMPOSE);
        must(m >= 0, "utf8proc NFC");
    }
    *out = realloc(*out, *len + (size_t)m + 1);
    must(*out != NULL, "realloc");
    if (m) memcpy(*out + *len, nfc, (size_t)m);
    *len += (size_t)m;
    free(nfc);
}

static void check_decode(const int32_t *ids, size_t k, const char *want, size_t wn) {
    char *dec;
    size_t dn;
    must(tokenizer_decode(qwen, ids, k, 0, &dec, &dn) == SL_OK, "decode");
    if (dn != wn || memcmp(dec, want, wn) != 0)
        fprintf(stderr, "decoded %zu bytes, expected %zu\n", dn, wn);
    must(dn == wn && memcmp(dec, want, wn) == 0, "decode(encode(s)) == NFC(s)");
    struct sl_detok *d;
    must(sl_detok_create(qwen, &d) == SL_OK, "detok");
    size_t o = 0;
    for (size_t i = 0; i <= k; i++) {
        const char *p;
        size_t m;
        must((i < k ? sl_detok_push(d, ids[i], &p, &m) : sl_detok_flush(d, &p, &m)) == SL_OK,
             "detok push");
        must(o + m <= dn && memcmp(dec + o, p, m) == 0, "streamed == full decode");
        o += m;
    }
    must(o == dn, "streamed length");
    sl_detok_free(d);
    free(dec);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *s = malloc(size ? size : 1); /* exact size: over-reads are caught */
    if (!s) return 0;
    memcpy(s, data, size);
    int32_t *ids = NULL;
    size_t k = 0;
    int rc = tokenizer_encode(qwen, s, size, 0, &ids, &k);
    if (!valid_utf8(data, size)) {
        must(rc == SL_ERR_ARG, "invalid UTF-8 rejected");
        free(s);
        return 0;
    }
    if (rc == SL_ERR_UNSUPPORTED) { /* PCRE2 match limit */
        free(s);
        return 0;
    }
    must(rc == SL_OK, "valid text encodes");
    int32_t nv = sl_tokenizer_n_vocab(qwen);
    for (size_t i = 0; i < k; i++) must(ids[i] >= 0 && ids[i] < nv, "ids in range");

    /* Expected text: NFC of the pieces between added tokens, each added
     * token's own text kept. */
    char *want = NULL;
    size_t wn = 0, from = 0;
    for (size_t i = 0; i < k; i++) {
        if (!tokenizer_is_added(qwen, ids[i])) continue;
        size_t tl;
        const char *tt = sl_token_bytes(qwen, ids[i], &tl);
        /* the added token's text appears in s at or after `from` */
        const char *at = memmem(s + from, size - from, tt, tl);
        must(at != NULL, "added token text present in input");
        append_nfc(&want, &wn, s + from, (size_t)(at - s) - from);
        append_nfc(&want, &wn, tt, tl);
        from = (size_t)(at - s) + tl;
    }
    append_nfc(&want, &wn, s + from, size - from);
    check_decode(ids, k, want, wn);

    /* idempotence through decode */
    char *dec;
    size_t dn;
    must(tokenizer_decode(qwen, ids, k, 0, &dec, &dn) == SL_OK, "decode");
    int32_t *ids2;
    size_t k2;
    must(tokenizer_encode(qwen, dec, dn, 0, &ids2, &k2) == SL_OK, "re-encode");
    must(k2 == k && (k == 0 || memcmp(ids, ids2, k * sizeof *ids) == 0),
         "encode(decode(encode(s))) == encode(s)");
    free(ids2);
    free(dec);

    if (size && (data[0] & 1)) {
        int32_t *ids3;
        size_t k3;
        must(tokenizer_encode(qwen, s, size, TOKENIZER_SPLIT_SPECIAL, &ids3, &k3) == SL_OK,
             "split-special encode");
        for (size_t i = 0; i < k3; i++)
            must(ids3[i] >= 0 && ids3[i] < nv, "split-special ids in range");
        free(ids3);
    }
    free(want);
    free(ids);
    free(s);
    return 0;
}
