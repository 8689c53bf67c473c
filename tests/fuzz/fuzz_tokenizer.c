/*
 * fuzz_tokenizer.c — libFuzzer target for the tokenizer: the tokenizer.json
 * parser and the encoder/decoder.
 * Build (from the repository root):
 *   clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude -Isrc -I/usr/include/cjson tests/fuzz/fuzz_tokenizer.c src/tokenizer.c src/tokenizer_bpe.c src/util.c -lcjson -lpcre2-8 -lutf8proc -lm -o build/fuzz_tokenizer && build/fuzz_tokenizer -max_total_time=60 tests/fuzz/corpus/tokenizer
 *
 * The first byte picks a mode. Even: the rest is a tokenizer.json; loading
 * must succeed or fail with a status, never crash. Odd: the rest is text
 * for the GPT-2 style fixture tokenizer (no normalizer, so the contract is
 * exact): valid UTF-8 must encode, decode back to itself and stream through
 * sl_detok to the same bytes; invalid UTF-8 must give SL_ERR_ARG.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer_impl.h"
#include "util.h"

static void must(int c, const char *what) {
    if (!c) {
        fprintf(stderr, "fuzz_tokenizer: contract violated: %s\n", what);
        abort();
    }
}

static int valid_utf8(const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n;) {
        int L = tok_utf8_seq(s + i, n - i);
        if (L <= 0) return 0;
        i += (size_t)L;
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static struct sl_tokenizer *gpt;
    if (!gpt && sl_tokenizer_load("tests/fixtures/tokenizer/gpt2style/tokenizer.json", &gpt)) {
        fprintf(stderr, "fuzz_tokenizer: run from the repository root: %s\n", sl_errmsg());
        abort();
    }
    if (size == 0) return 0;
    const char *s = (const char *)data + 1;
    size_t n = size - 1;
    if (!(data[0] & 1)) {
        struct sl_tokenizer *t = NULL;
        int rc = tokenizer_load_json(s, n, &t);
        must((rc == SL_OK) == (t != NULL), "load status matches result");
        if (t) {
            int32_t *ids;
            size_t k;
            if (sl_tokenize(t, "Hello, world! <|im_end|> 123", 28, &ids, &k) == SL_OK) {
                for (size_t i = 0; i < k; i++)
                    must(ids[i] >= 0 && ids[i] < sl_tokenizer_n_vocab(t), "ids in range");
                free(ids);
            }
        }
        sl_tokenizer_free(t);
        return 0;
    }
    int32_t *ids;
    size_t k;
    int rc = sl_tokenize(gpt, s, n, &ids, &k);
    if (!valid_utf8((const uint8_t *)s, n)) {
        must(rc == SL_ERR_ARG, "invalid UTF-8 rejected");
        return 0;
    }
    must(rc == SL_OK, "valid text encodes");
    char *dec;
    size_t dn;
    must(tokenizer_decode(gpt, ids, k, 0, &dec, &dn) == SL_OK, "decode");
    must(dn == n && memcmp(dec, s, n) == 0, "decode(encode(s)) == s");
    struct sl_detok *d;
    must(sl_detok_create(gpt, &d) == SL_OK, "detok");
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
    free(ids);
    return 0;
}
