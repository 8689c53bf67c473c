/*
 * test_tokenizer.c — the tokenizer against HuggingFace `tokenizers`
 * (fixtures written by tests/gen/gen_tokenizer_fixtures.py) and by hand.
 *
 * Conformance: for the Qwen3 tokenizer (NFC + Split regex + ByteLevel) and a
 * small GPT-2 style one (ByteLevel regex), every fixture string must encode
 * to HF's ids, decode to HF's text, and stream through sl_detok one id at a
 * time to the same text; decode-only cases cover ids that cut characters
 * and invalid UTF-8 (U+FFFD). Units: merge priority and ties, added tokens
 * (longest match, lstrip/rstrip, single_word, split_special), every
 * malformed tokenizer.json path (status and message), out-of-range ids,
 * invalid UTF-8 input, long runs, allocation failures.
 *
 * Runs from the repository root; SL_FIXTURES overrides "tests/fixtures".
 * The Qwen3 JSON is read through `gzip -dc`.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "sluice.h"
#include "test.h"
#include "tokenizer.h"
#include "util.h"

static const char *fixtures(void) {
    const char *d = getenv("SL_FIXTURES");
    return d && *d ? d : "tests/fixtures";
}

/* Reads the whole output of a command (NULL on failure). */
static char *read_cmd(const char *cmd, size_t *len) {
    FILE *f = popen(cmd, "r");
    if (!f) return NULL;
    size_t cap = 1 << 20, n = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (n == cap) buf = realloc(buf, cap *= 2);
        size_t r = fread(buf + n, 1, cap - n, f);
        if (r == 0) break;
        n += r;
    }
    if (pclose(f) != 0 || n == 0) {
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

static struct sl_tokenizer *load_qwen3(void) {
    static struct sl_tokenizer *tok;
    static int tried;
    if (tried) return tok;
    tried = 1;
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "gzip -dc '%s/tokenizer/qwen3/tokenizer.json.gz'", fixtures());
    size_t n;
    char *json = read_cmd(cmd, &n);
    if (!json) return NULL;
    if (tokenizer_load_json(json, n, &tok) != SL_OK)
        fprintf(stderr, "  qwen3 load: %s\n", sl_errmsg());
    free(json);
    return tok;
}

static struct sl_tokenizer *load_gpt2style(void) {
    static struct sl_tokenizer *tok;
    static int tried;
    if (tried) return tok;
    tried = 1;
    char path[1024];
    snprintf(path, sizeof path, "%s/tokenizer/gpt2style/tokenizer.json", fixtures());
    if (sl_tokenizer_load(path, &tok) != SL_OK)
        fprintf(stderr, "  gpt2style load: %s\n", sl_errmsg());
    return tok;
}

static int hexval(int c) { return c <= '9' ? c - '0' : (c | 32) - 'a' + 10; }

/* A fixture string: "key" as JSON text or "key_hex" as hex bytes. Returns a
 * malloc'ed buffer (NULL if absent). */
static char *fixture_str(const cJSON *o, const char *key, size_t *len) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (cJSON_IsString(v)) {
        *len = strlen(v->valuestring);
        return strdup(v->valuestring);
    }
    char hk[64];
    snprintf(hk, sizeof hk, "%s_hex", key);
    v = cJSON_GetObjectItemCaseSensitive(o, hk);
    if (!cJSON_IsString(v)) return NULL;
    size_t n = strlen(v->valuestring) / 2;
    char *s = malloc(n + 1);
    for (size_t i = 0; i < n; i++)
        s[i] = (char)(hexval(v->valuestring[2 * i]) << 4 | hexval(v->valuestring[2 * i + 1]));
    s[n] = 0;
    *len = n;
    return s;
}

static int32_t *fixture_ids(const cJSON *arr, size_t *n) {
    *n = (size_t)cJSON_GetArraySize(arr);
    int32_t *ids = malloc((*n + 1) * sizeof *ids);
    size_t i = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, arr) ids[i++] = (int32_t)v->valuedouble;
    return ids;
}

/* Streams ids through sl_detok one by one; returns the concatenation. */
static char *stream_decode(const struct sl_tokenizer *tok, const int32_t *ids, size_t n,
                           size_t *len) {
    struct sl_detok *d;
    if (sl_detok_create(tok, &d) != SL_OK) return NULL;
    size_t cap = 64, o = 0;
    char *s = malloc(cap);
    for (size_t i = 0; i <= n; i++) {
        const char *p;
        size_t m;
        int rc = i < n ? sl_detok_push(d, ids[i], &p, &m) : sl_detok_flush(d, &p, &m);
        if (rc != SL_OK) {
            free(s);
            sl_detok_free(d);
            return NULL;
        }
        while (o + m + 1 > cap) s = realloc(s, cap *= 2);
        memcpy(s + o, p, m);
        o += m;
    }
    sl_detok_free(d);
    s[o] = 0;
    *len = o;
    return s;
}

static void print_ids(const char *what, const int32_t *ids, size_t n) {
    fprintf(stderr, "    %s (%zu):", what, n);
    for (size_t i = 0; i < n && i < 40; i++) fprintf(stderr, " %d", ids[i]);
    fprintf(stderr, n > 40 ? " ...\n" : "\n");
}

/* Runs every case of <dir>/cases.jsonl; returns the number of cases. */
static int run_cases(const struct sl_tokenizer *tok, const char *name, int exact_roundtrip) {
    char path[1024];
    snprintf(path, sizeof path, "%s/tokenizer/%s/cases.jsonl", fixtures(), name);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char *line = NULL;
    size_t cap = 0;
    int n_cases = 0, n_enc = 0;
    while (getline(&line, &cap, f) > 0) {
        cJSON *c = cJSON_Parse(line);
        CHECK_MSG(c != NULL, "%s: bad fixture line %d", path, n_cases + 1);
        if (!c) break;
        n_cases++;
        size_t tlen = 0, dlen = 0, n_want = 0, n_got = 0;
        char *text = fixture_str(c, "text", &tlen);
        char *want_dec = fixture_str(c, "decoded", &dlen);
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(c, text ? "ids" : "decode_ids");
        int32_t *want = fixture_ids(arr, &n_want), *got = NULL;
        if (text) {
            n_enc++;
            int rc = sl_tokenize(tok, text, tlen, &got, &n_got);
            CHECK_MSG(rc == SL_OK, "%s case %d: %s", name, n_cases, sl_errmsg());
            int same = rc == SL_OK && n_got == n_want &&
                       memcmp(got, want, n_want * sizeof *want) == 0;
            CHECK_MSG(same, "%s case %d: ids differ for \"%.60s\"", name, n_cases, text);
            if (!same) {
                print_ids("want", want, n_want);
                print_ids("got ", got, n_got);
            }
            if (exact_roundtrip) { /* no normalizer: decode(encode(s)) == s */
                char *dec = NULL;
                size_t n = 0;
                CHECK(tokenizer_decode(tok, got, n_got, 0, &dec, &n) == SL_OK);
                CHECK_MSG(dec && n == tlen && memcmp(dec, text, n) == 0, "%s case %d: round trip",
                          name, n_cases);
                free(dec);
            }
        }
        char *dec = NULL, *str;
        size_t n = 0, ns;
        CHECK_MSG(want_dec != NULL, "%s case %d: no \"decoded\"", name, n_cases);
        if (!want_dec) want_dec = strdup("");
        CHECK(tokenizer_decode(tok, want, n_want, 0, &dec, &n) == SL_OK);
        CHECK_MSG(dec && n == dlen && memcmp(dec, want_dec, n) == 0,
                  "%s case %d: decode differs", name, n_cases);
        str = stream_decode(tok, want, n_want, &ns);
        CHECK_MSG(str && ns == dlen && memcmp(str, want_dec, ns) == 0,
                  "%s case %d: streamed decode differs", name, n_cases);
        free(dec);
        free(str);
        free(got);
        free(want);
        free(text);
        free(want_dec);
        cJSON_Delete(c);
    }
    free(line);
    fclose(f);
    CHECK_MSG(n_enc >= 200, "%s: only %d encode cases", name, n_enc);
    return n_cases;
}

TEST(test_conformance_gpt2style) {
    struct sl_tokenizer *tok = load_gpt2style();
    if (!tok) TEST_SKIP("gpt2style tokenizer not found under %s", fixtures());
    CHECK_EQ_INT(sl_tokenizer_n_vocab(tok), 2048);
    CHECK(run_cases(tok, "gpt2style", 1) > 200);
}

TEST(test_conformance_qwen3) {
    struct sl_tokenizer *tok = load_qwen3();
    if (!tok) TEST_SKIP("qwen3 tokenizer not readable (gzip -dc) under %s", fixtures());
    CHECK_EQ_INT(sl_tokenizer_n_vocab(tok), 151669);
    CHECK(run_cases(tok, "qwen3", 0) > 200);
}

TEST(test_qwen3_lookups) {
    struct sl_tokenizer *tok = load_qwen3();
    if (!tok) TEST_SKIP("qwen3 tokenizer not readable");
    CHECK_EQ_INT(sl_token_id(tok, "<|im_end|>"), 151645);
    CHECK_EQ_INT(sl_token_id(tok, "<|endoftext|>"), 151643);
    CHECK_EQ_INT(sl_token_id(tok, " the"), 279); /* "Ġthe" looked up by its bytes */
    CHECK_EQ_INT(sl_token_id(tok, "no such token at all"), -1);
    CHECK(tokenizer_is_special(tok, 151645));
    CHECK(tokenizer_is_added(tok, 151667) && !tokenizer_is_special(tok, 151667)); /* <think> */
    CHECK(!tokenizer_is_added(tok, 279) && !tokenizer_is_special(tok, -1));
    CHECK_EQ_INT(tokenizer_n_added(tok), 26);
    CHECK_EQ_INT(tokenizer_added_id(tok, 0), 151643);
    CHECK_EQ_INT(tokenizer_added_id(tok, 26), -1);
    size_t n;
    const char *b = sl_token_bytes(tok, 151645, &n);
    CHECK(b && n == 10 && memcmp(b, "<|im_end|>", 10) == 0);
    b = sl_token_bytes(tok, 279, &n);
    CHECK(b && n == 4 && memcmp(b, " the", 4) == 0);
    CHECK(sl_token_bytes(tok, 151669, &n) == NULL && n == 0);
    CHECK(sl_token_bytes(tok, -1, NULL) == NULL);

    /* split_special: <|im_end|> is text, <think> (added, not special) still
     * matches. */
    int32_t *ids;
    size_t k;
    const char *s = "<|im_end|><think>";
    CHECK(tokenizer_encode(tok, s, strlen(s), TOKENIZER_SPLIT_SPECIAL, &ids, &k) == SL_OK);
    CHECK(k > 2 && ids[k - 1] == 151667);
    for (size_t i = 0; i + 1 < k; i++) CHECK(ids[i] < 151643);
    free(ids);
    CHECK(tokenizer_encode(tok, s, strlen(s), 0, &ids, &k) == SL_OK);
    CHECK(k == 2 && ids[0] == 151645 && ids[1] == 151667);
    free(ids);
}

/* Long inputs: no quadratic blow-up, exact round trip. */
TEST(test_long_inputs) {
    struct sl_tokenizer *toks[2] = {load_qwen3(), load_gpt2style()};
    if (!toks[0] || !toks[1]) TEST_SKIP("tokenizers not readable");
    size_t n = 100000;
    char *s = malloc(n + 1);
    for (int kind = 0; kind < 4; kind++) {
        for (size_t i = 0; i < n; i++)
            s[i] = kind == 0 ? ' ' : kind == 1 ? 'a' : kind == 2 ? "\t \n"[i % 3]
                                                                  : "ab1 ,\n"[(i * 7) % 6];
        for (int k = 0; k < 2; k++) {
            int32_t *ids;
            size_t m, dn;
            char *dec;
            double t0 = sl_now();
            CHECK(sl_tokenize(toks[k], s, n, &ids, &m) == SL_OK);
            double dt = sl_now() - t0;
            CHECK_MSG(dt < 2.0, "kind %d tokenizer %d: %.2f s for 100 KB", kind, k, dt);
            CHECK(m > 0 && m <= n);
            CHECK(tokenizer_decode(toks[k], ids, m, 0, &dec, &dn) == SL_OK);
            CHECK_MSG(dn == n && memcmp(dec, s, n) == 0, "kind %d tokenizer %d round trip",
                      kind, k);
            free(dec);
            free(ids);
        }
    }
    free(s);
}

/* ---- hand-built tokenizers --------------------------------------------- */

/* A tiny tokenizer.json: vocab of single letters + Ġ, the given merges and
 * added tokens. Fields are spliced in as JSON text. */
static int tiny(const char *vocab_extra, const char *merges, const char *added,
                const char *normalizer, const char *pre, const char *decoder,
                struct sl_tokenizer **out) {
    char json[8192];
    snprintf(json, sizeof json,
             "{\"version\":\"1.0\",\"added_tokens\":[%s],\"normalizer\":%s,"
             "\"pre_tokenizer\":%s,\"decoder\":%s,"
             "\"model\":{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":null,"
             "\"vocab\":{\"a\":0,\"b\":1,\"c\":2,\"\\u0120\":3,\"d\":4%s},"
             "\"merges\":[%s]}}",
             added, normalizer, pre, decoder, vocab_extra, merges);
    return tokenizer_load_json(json, strlen(json), out);
}

#define BL "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":true}"
#define BLD "{\"type\":\"ByteLevel\"}"

static int enc_eq(const struct sl_tokenizer *tok, const char *s, const int32_t *want,
                  size_t n_want) {
    int32_t *ids;
    size_t n;
    if (sl_tokenize(tok, s, strlen(s), &ids, &n) != SL_OK) {
        fprintf(stderr, "    encode \"%s\": %s\n", s, sl_errmsg());
        return 0;
    }
    int ok = n == n_want && memcmp(ids, want, n * sizeof *ids) == 0;
    if (!ok) {
        fprintf(stderr, "    encode \"%s\":\n", s);
        print_ids("want", want, n_want);
        print_ids("got ", ids, n);
    }
    free(ids);
    return ok;
}

TEST(test_merge_priority) {
    struct sl_tokenizer *tok;
    /* ids: ab 5, bc 6, abc 7. bc has the lower rank: b+c first, then a+bc. */
    CHECK(tiny(",\"ab\":5,\"bc\":6,\"abc\":7", "\"b c\",\"a b\",\"a bc\"", "", "null", BL, BLD,
               &tok) == SL_OK);
    CHECK(enc_eq(tok, "abc", (int32_t[]){7}, 1));
    CHECK(enc_eq(tok, "abcab", (int32_t[]){7, 5}, 2));
    sl_tokenizer_free(tok);
    /* Reversed ranks, list form: a+b first, then ab+c is absent -> [ab, c]. */
    CHECK(tiny(",\"ab\":5,\"bc\":6,\"abc\":7", "[\"a\",\"b\"],[\"b\",\"c\"],[\"a\",\"bc\"]", "",
               "null", BL, BLD, &tok) == SL_OK);
    CHECK(enc_eq(tok, "abc", (int32_t[]){5, 2}, 2));
    sl_tokenizer_free(tok);
    /* Ties go leftmost: aaa -> [aa, a]; aaaa -> [aa, aa] -> aaaa. */
    CHECK(tiny(",\"aa\":5,\"aaaa\":6", "\"a a\",\"aa aa\"", "", "null", BL, BLD, &tok) == SL_OK);
    CHECK(enc_eq(tok, "aaa", (int32_t[]){5, 0}, 2));
    CHECK(enc_eq(tok, "aaaa", (int32_t[]){6}, 1));
    CHECK(enc_eq(tok, "aaaaa", (int32_t[]){6, 0}, 2));
    /* Bytes without a token are dropped (HF with unk_token null); the GPT-2
     * regex splits " a" from "b". */
    CHECK(enc_eq(tok, "xa", (int32_t[]){0}, 1));
    CHECK(enc_eq(tok, "a a", (int32_t[]){0, 3, 0}, 3));
    sl_tokenizer_free(tok);
}

TEST(test_added_tokens) {
    struct sl_tokenizer *tok;
    const char *added =
        "{\"id\":5,\"content\":\"<m>\",\"special\":true,\"lstrip\":true,\"rstrip\":false,"
        "\"normalized\":false,\"single_word\":false},"
        "{\"id\":6,\"content\":\"<r>\",\"special\":true,\"lstrip\":false,\"rstrip\":true,"
        "\"normalized\":false,\"single_word\":false},"
        "{\"id\":7,\"content\":\"<mm>\",\"special\":false,\"lstrip\":false,\"rstrip\":false,"
        "\"normalized\":false,\"single_word\":false},"
        "{\"id\":8,\"content\":\"bd\",\"special\":false,\"lstrip\":false,\"rstrip\":false,"
        "\"normalized\":true,\"single_word\":true}";
    CHECK(tiny("", "", added, "{\"type\":\"NFC\"}", BL, BLD, &tok) == SL_OK);
    /* lstrip eats the spaces on the left (Unicode whitespace too). */
    CHECK(enc_eq(tok, "a <m> b", (int32_t[]){0, 5, 3, 1}, 4));
    CHECK(enc_eq(tok, "a \xE3\x80\x80\t<m>", (int32_t[]){0, 5}, 2));
    /* rstrip eats the spaces on the right. */
    CHECK(enc_eq(tok, "a <r>  b", (int32_t[]){0, 3, 6, 1}, 4));
    /* Longest match: <mm> is not <m> followed by "m>". */
    CHECK(enc_eq(tok, "<mm><m>", (int32_t[]){7, 5}, 2));
    /* single_word: "bd" only as a whole word. */
    CHECK(enc_eq(tok, "a bd c", (int32_t[]){0, 3, 8, 3, 2}, 5));
    CHECK(enc_eq(tok, "abd", (int32_t[]){0, 1, 4}, 3));
    /* Special tokens render as their text; added tokens are listed. */
    size_t n;
    const char *b = sl_token_bytes(tok, 5, &n);
    CHECK(b && n == 3 && memcmp(b, "<m>", 3) == 0);
    CHECK(tokenizer_is_special(tok, 5) && !tokenizer_is_special(tok, 7));
    CHECK(tokenizer_is_added(tok, 7) && !tokenizer_is_added(tok, 0));
    CHECK_EQ_INT(sl_token_id(tok, "<mm>"), 7);
    CHECK_EQ_INT(sl_token_id(tok, " "), 3);
    sl_tokenizer_free(tok);
}

TEST(test_nfc) {
    struct sl_tokenizer *tok;
    /* e + U+0301 normalizes to U+00E9 = bytes C3 A9 (mapped "Ã" "©"). */
    CHECK(tiny(",\"\\u00c3\":5,\"\\u00a9\":6,\"\\u00c3\\u00a9\":7,\"e\":8", "\"\\u00c3 \\u00a9\"",
               "", "{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"NFC\"}]}", BL, BLD,
               &tok) == SL_OK);
    CHECK(enc_eq(tok, "e\xCC\x81", (int32_t[]){7}, 1));
    CHECK(enc_eq(tok, "\xC3\xA9", (int32_t[]){7}, 1));
    sl_tokenizer_free(tok);
}

/* Loads json expecting status and a message containing want. */
static void expect_bad(const char *json, int status, const char *want) {
    struct sl_tokenizer *tok = (struct sl_tokenizer *)1;
    int rc = tokenizer_load_json(json, strlen(json), &tok);
    CHECK_MSG(rc == status, "status %d (%s), want %d for %s", rc, sl_errmsg(), status, want);
    CHECK_MSG(strstr(sl_errmsg(), want) != NULL, "message \"%s\" lacks \"%s\"", sl_errmsg(),
              want);
    CHECK(tok == NULL);
}

static void expect_bad_tiny(const char *vocab_extra, const char *merges, const char *added,
                            const char *normalizer, const char *pre, const char *decoder,
                            int status, const char *want) {
    struct sl_tokenizer *tok = NULL;
    int rc = tiny(vocab_extra, merges, added, normalizer, pre, decoder, &tok);
    CHECK_MSG(rc == status, "status %d (%s), want %d for %s", rc, sl_errmsg(), status, want);
    CHECK_MSG(strstr(sl_errmsg(), want) != NULL, "message \"%s\" lacks \"%s\"", sl_errmsg(),
              want);
    CHECK(tok == NULL);
}

TEST(test_malformed) {
    expect_bad("not json", SL_ERR_FORMAT, "not a JSON object");
    expect_bad("[1,2]", SL_ERR_FORMAT, "not a JSON object");
    expect_bad("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0}", SL_ERR_FORMAT,
               "not a JSON object"); /* truncated */
    expect_bad("{\"version\":\"1.0\"}", SL_ERR_FORMAT, "missing \"model\"");
    expect_bad("{\"model\":{\"type\":\"WordPiece\",\"vocab\":{}}}", SL_ERR_UNSUPPORTED,
               "model type \"WordPiece\"");
    expect_bad("{\"model\":{\"type\":\"BPE\",\"merges\":[]}}", SL_ERR_FORMAT, "model.vocab");
    expect_bad("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0}}}", SL_ERR_FORMAT,
               "model.merges");
    expect_bad("{\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]},"
               "\"pre_tokenizer\":" BL ",\"decoder\":" BLD "}",
               SL_ERR_FORMAT, "vocabulary is empty");
    expect_bad("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[],"
               "\"byte_fallback\":true}}", SL_ERR_UNSUPPORTED, "byte_fallback");
    expect_bad("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[],"
               "\"dropout\":0.1}}", SL_ERR_UNSUPPORTED, "dropout");
    expect_bad("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[],"
               "\"continuing_subword_prefix\":\"##\"}}", SL_ERR_UNSUPPORTED,
               "continuing_subword_prefix");
    expect_bad("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[],"
               "\"unk_token\":\"<unk>\"}, \"pre_tokenizer\":" BL ",\"decoder\":" BLD "}",
               SL_ERR_FORMAT, "unk_token \"<unk>\"");
    expect_bad("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},"
               "\"added_tokens\":{}}", SL_ERR_FORMAT, "added_tokens is not an array");
    /* Vocabulary. */
    expect_bad_tiny(",\"e\":1", "", "", "null", BL, BLD, SL_ERR_FORMAT,
                    "vocab id 1 is used by both \"b\" and \"e\"");
    expect_bad_tiny(",\"e\":99", "", "", "null", BL, BLD, SL_ERR_FORMAT,
                    "id 99 is beyond the vocabulary");
    expect_bad_tiny(",\"e\":-1", "", "", "null", BL, BLD, SL_ERR_FORMAT,
                    "not a non-negative integer");
    expect_bad_tiny(",\"e\":\"x\"", "", "", "null", BL, BLD, SL_ERR_FORMAT, "id is not a number");
    expect_bad_tiny(",\"a\":5", "", "", "null", BL, BLD, SL_ERR_FORMAT, "\"a\" appears twice");
    expect_bad_tiny(",\"e\":6", "", "{\"id\":6,\"content\":\"e\"}", "null", BL, BLD, SL_ERR_FORMAT,
                    "id 5 has no token (ids must be dense");
    /* Merges. */
    expect_bad_tiny(",\"ab\":5", "\"a x\"", "", "null", BL, BLD, SL_ERR_FORMAT,
                    "merges[0] names token \"x\" that is not in the vocabulary");
    expect_bad_tiny(",\"ab\":5", "\"a b\",\"b c\"", "", "null", BL, BLD, SL_ERR_FORMAT,
                    "merges[1]: the merge \"bc\" of \"b\" and \"c\" is not in the vocabulary");
    expect_bad_tiny(",\"ab\":5", "\"a b c\"", "", "null", BL, BLD, SL_ERR_FORMAT,
                    "merges[0] is neither");
    expect_bad_tiny(",\"ab\":5", "[\"a\"]", "", "null", BL, BLD, SL_ERR_FORMAT,
                    "merges[0] is neither");
    /* Added tokens. */
    expect_bad_tiny("", "", "{\"id\":5,\"content\":\"\"}", "null", BL, BLD, SL_ERR_FORMAT,
                    "added_tokens[0] has no content");
    expect_bad_tiny("", "", "{\"id\":5,\"content\":\"<x>\"},{\"id\":5,\"content\":\"<y>\"}",
                    "null", BL, BLD, SL_ERR_FORMAT,
                    "added token id 5 is used by both \"<x>\" and \"<y>\"");
    expect_bad_tiny("", "", "{\"id\":50,\"content\":\"<x>\"}", "null", BL, BLD, SL_ERR_FORMAT,
                    "added token \"<x>\": id 50 is beyond the vocabulary");
    expect_bad_tiny("", "", "{\"id\":5,\"content\":\"<x>\",\"special\":1}", "null", BL, BLD,
                    SL_ERR_FORMAT, "added_tokens[0].special is not a boolean");
    /* Components. */
    expect_bad_tiny("", "", "", "{\"type\":\"NFKC\"}", BL, BLD, SL_ERR_UNSUPPORTED,
                    "normalizer \"NFKC\"");
    expect_bad_tiny("", "", "",
                    "{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"NFC\"},"
                    "{\"type\":\"Lowercase\"}]}", BL, BLD, SL_ERR_UNSUPPORTED,
                    "normalizer \"Lowercase\" in a Sequence");
    expect_bad_tiny("", "", "", "null", "null", BLD, SL_ERR_UNSUPPORTED, "pre_tokenizer null");
    expect_bad_tiny("", "", "", "null", "{\"type\":\"Whitespace\"}", BLD, SL_ERR_UNSUPPORTED,
                    "pre_tokenizer \"Whitespace\"");
    expect_bad_tiny("", "", "", "null",
                    "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\","
                    "\"pattern\":{\"Regex\":\"\\\\s+\"},\"behavior\":\"Removed\","
                    "\"invert\":false}," BL "]}", BLD, SL_ERR_UNSUPPORTED,
                    "behavior \"Removed\"");
    expect_bad_tiny("", "", "", "null",
                    "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\","
                    "\"pattern\":{\"Regex\":\"(unclosed\"},\"behavior\":\"Isolated\","
                    "\"invert\":false}," BL "]}", BLD, SL_ERR_UNSUPPORTED,
                    "regex \"(unclosed\"");
    expect_bad_tiny("", "", "", "null",
                    "{\"type\":\"Sequence\",\"pretokenizers\":[" BL ",{\"type\":\"Split\","
                    "\"pattern\":{\"String\":\" \"},\"behavior\":\"Isolated\"}]}", BLD,
                    SL_ERR_UNSUPPORTED, "must end with exactly one ByteLevel");
    expect_bad_tiny("", "", "", "null", BL, "null", SL_ERR_UNSUPPORTED, "decoder \"null\"");
    expect_bad_tiny("", "", "", "null", BL, "{\"type\":\"WordPiece\"}", SL_ERR_UNSUPPORTED,
                    "decoder \"WordPiece\"");
    /* Files. */
    struct sl_tokenizer *tok;
    CHECK(sl_tokenizer_load("/nonexistent/tokenizer.json", &tok) == SL_ERR_IO);
    CHECK(strstr(sl_errmsg(), "/nonexistent/tokenizer.json") != NULL);
    CHECK(sl_tokenizer_load(NULL, &tok) == SL_ERR_ARG);
    sl_tokenizer_free(NULL);
}

TEST(test_split_string_pattern) {
    struct sl_tokenizer *tok;
    /* Split on the literal "." (String pattern, Isolated), then ByteLevel
     * without regex and with a prefix space on every piece. */
    CHECK(tiny(",\".\":5", "", "", "null",
               "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\","
               "\"pattern\":{\"String\":\".\"},\"behavior\":\"Isolated\",\"invert\":false},"
               "{\"type\":\"ByteLevel\",\"add_prefix_space\":true,\"use_regex\":false}]}",
               BLD, &tok) == SL_OK);
    CHECK(enc_eq(tok, "a.b", (int32_t[]){3, 0, 3, 5, 3, 1}, 6));
    sl_tokenizer_free(tok);
}

TEST(test_ranges_and_utf8) {
    struct sl_tokenizer *tok = load_gpt2style();
    if (!tok) TEST_SKIP("gpt2style tokenizer not found");
    int32_t *ids;
    size_t n;
    struct { const char *s; size_t len, at; } bad[] = {
        {"ab\xff", 3, 2}, {"\xC0\x80", 2, 0}, {"x\xED\xA0\x80", 4, 1}, {"\xE4\xBD", 2, 0},
        {"ok\xF4\x90\x80\x80", 6, 2}, {"\x80", 1, 0},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK(sl_tokenize(tok, bad[i].s, bad[i].len, &ids, &n) == SL_ERR_ARG);
        char want[64];
        snprintf(want, sizeof want, "not valid UTF-8 at byte %zu", bad[i].at);
        CHECK_MSG(strstr(sl_errmsg(), want), "\"%s\" lacks \"%s\"", sl_errmsg(), want);
    }
    CHECK(sl_tokenize(tok, NULL, 1, &ids, &n) == SL_ERR_ARG);
    /* NUL is valid text. */
    CHECK(sl_tokenize(tok, "a\0b", 3, &ids, &n) == SL_OK && n == 3);
    char *dec;
    size_t dn;
    CHECK(tokenizer_decode(tok, ids, n, 0, &dec, &dn) == SL_OK);
    CHECK(dn == 3 && memcmp(dec, "a\0b", 3) == 0);
    free(dec);
    free(ids);
    /* Empty text gives zero ids and a freeable pointer. */
    CHECK(sl_tokenize(tok, "", 0, &ids, &n) == SL_OK && n == 0 && ids != NULL);
    free(ids);

    /* Out-of-range ids. */
    int32_t badid[2] = {5, 2048};
    CHECK(tokenizer_decode(tok, badid, 2, 0, &dec, &dn) == SL_ERR_RANGE);
    CHECK(strstr(sl_errmsg(), "id 2048 at 1") != NULL);
    struct sl_detok *d;
    const char *out;
    size_t on;
    CHECK(sl_detok_create(tok, &d) == SL_OK);
    CHECK(sl_detok_push(d, -1, &out, &on) == SL_ERR_RANGE && on == 0);
    CHECK(sl_detok_push(d, 2048, &out, &on) == SL_ERR_RANGE);
    /* "€" = E2 82 AC fed one byte token at a time: held back, then whole. */
    int32_t e2 = sl_token_id(tok, "\xE2"), x82 = sl_token_id(tok, "\x82"),
            xac = sl_token_id(tok, "\xAC");
    CHECK(e2 >= 0 && x82 >= 0 && xac >= 0);
    CHECK(sl_detok_push(d, e2, &out, &on) == SL_OK && on == 0);
    CHECK(sl_detok_push(d, x82, &out, &on) == SL_OK && on == 0);
    CHECK(sl_detok_push(d, xac, &out, &on) == SL_OK && on == 3 &&
          memcmp(out, "\xE2\x82\xAC", 3) == 0);
    /* An incomplete tail flushes as U+FFFD; a broken one is replaced at once. */
    CHECK(sl_detok_push(d, e2, &out, &on) == SL_OK && on == 0);
    CHECK(sl_detok_flush(d, &out, &on) == SL_OK && on == 3 &&
          memcmp(out, "\xEF\xBF\xBD", 3) == 0);
    CHECK(sl_detok_flush(d, &out, &on) == SL_OK && on == 0);
    CHECK(sl_detok_push(d, e2, &out, &on) == SL_OK && on == 0);
    CHECK(sl_detok_push(d, sl_token_id(tok, "a"), &out, &on) == SL_OK && on == 4 &&
          memcmp(out, "\xEF\xBF\xBD" "a", 4) == 0);
    /* Special tokens stream as their text; decode can skip them. */
    CHECK(sl_detok_push(d, 2, &out, &on) == SL_OK && on == 10 &&
          memcmp(out, "<|im_end|>", 10) == 0);
    sl_detok_free(d);
    sl_detok_free(NULL);
    int32_t sp[3] = {sl_token_id(tok, "a"), 0, sl_token_id(tok, "b")};
    CHECK(tokenizer_decode(tok, sp, 3, 1, &dec, &dn) == SL_OK && dn == 2 &&
          strcmp(dec, "ab") == 0);
    free(dec);
}

/* Every allocation of load and encode may fail: the status is NOMEM, never
 * a crash, and nothing leaks (checked under ASan). */
TEST(test_alloc_failures) {
    char path[1024];
    snprintf(path, sizeof path, "%s/tokenizer/gpt2style/tokenizer.json", fixtures());
    char *json;
    size_t len;
    if (sl_read_file(path, &json, &len) != SL_OK) TEST_SKIP("gpt2style tokenizer not found");
    int saw_nomem = 0;
    for (long k = 1; k < 200; k++) {
        struct sl_tokenizer *tok = NULL;
        sl_alloc_fail_after(k);
        int rc = tokenizer_load_json(json, len, &tok);
        if (rc == SL_OK) {
            int32_t *ids;
            size_t n;
            const char *s = "Hello <|im_end|> world, \xE4\xBD\xA0\xE5\xA5\xBD!";
            rc = sl_tokenize(tok, s, strlen(s), &ids, &n);
            if (rc == SL_OK) free(ids);
            sl_tokenizer_free(tok);
        }
        sl_alloc_fail_after(0);
        CHECK_MSG(rc == SL_OK || rc == SL_ERR_NOMEM, "k=%ld: %d %s", k, rc, sl_errmsg());
        saw_nomem |= rc == SL_ERR_NOMEM;
        if (rc == SL_OK) break;
    }
    CHECK(saw_nomem);
    sl_free(json);
}

TEST_MAIN()
