/*
 * test_gguf.c — the GGUF exporter (src/gguf_write.c): row regrouping checked
 * against ggml's block semantics written here from the spec (Q4_1:
 * y[j] = (qs[j] & 15) * d + m, y[j + 16] = (qs[j] >> 4) * d + m; Q8_0:
 * y[j] = qs[j] * d), and a whole exported model re-read by an independent
 * minimal GGUF reader: header, metadata, tokenizer padding, tensor table,
 * alignment, file size, and weights equal to the .sluice file's after
 * dequantization. Bad inputs: no tokenizer, oversized or malformed
 * tokenizer, missing input, unwritable output, unsupported configs.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "format.h"
#include "gguf_write.h"
#include "quant.h"
#include "synth.h"
#include "test.h"
#include "util.h"

#define GPT2_TOKENIZER "tests/fixtures/tokenizer/gpt2style/tokenizer.json"

static char tmp_dir[64];
static const char *tmp_path(const char *name) {
    static char buf[8][256];
    static int k;
    if (!tmp_dir[0]) {
        snprintf(tmp_dir, sizeof tmp_dir, "/tmp/test_gguf.XXXXXX");
        if (!mkdtemp(tmp_dir)) {
            perror("mkdtemp");
            exit(1);
        }
    }
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmp_dir, name);
    return buf[k];
}

/* ---- ggml block semantics, from the spec ---- */

static void deq_q4_1(const uint8_t *row, float *y, uint64_t cols) {
    for (uint64_t b = 0; b < cols / 32; b++) {
        const uint8_t *blk = row + b * 20;
        uint16_t dh, mh;
        memcpy(&dh, blk, 2);
        memcpy(&mh, blk + 2, 2);
        float d = sl_f16_to_f32(dh), m = sl_f16_to_f32(mh);
        for (int j = 0; j < 16; j++) {
            y[b * 32 + j] = (float)(blk[4 + j] & 15) * d + m;
            y[b * 32 + j + 16] = (float)(blk[4 + j] >> 4) * d + m;
        }
    }
}

static void deq_q8_0(const uint8_t *row, float *y, uint64_t cols) {
    for (uint64_t b = 0; b < cols / 32; b++) {
        const uint8_t *blk = row + b * 34;
        uint16_t dh;
        memcpy(&dh, blk, 2);
        float d = sl_f16_to_f32(dh);
        for (int j = 0; j < 32; j++) y[b * 32 + j] = (float)(int8_t)blk[2 + j] * d;
    }
}

static void deq_ggml(int type, const uint8_t *row, float *y, uint64_t cols) {
    if (type == GGUF_GGML_Q4_1) deq_q4_1(row, y, cols);
    else if (type == GGUF_GGML_Q8_0) deq_q8_0(row, y, cols);
    else if (type == GGUF_GGML_BF16)
        for (uint64_t i = 0; i < cols; i++) {
            uint16_t h;
            memcpy(&h, row + 2 * i, 2);
            y[i] = sl_bf16_to_f32(h);
        }
    else if (type == GGUF_GGML_F32) memcpy(y, row, cols * 4);
    else memset(y, 0xff, cols * 4); /* NaN: fails any comparison */
}

TEST(test_repack_rows) {
    enum { COLS = 128 };
    float src[COLS], ref[COLS], got[COLS];
    uint8_t q[COLS * 4], g[COLS * 4];
    uint64_t x = 7;
    for (int i = 0; i < COLS; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        src[i] = (float)((int64_t)(x >> 33) % 2000 - 1000) / 300.0f;
    }
    const int dts[] = {SL_DTYPE_Q4, SL_DTYPE_Q8, SL_DTYPE_BF16, SL_DTYPE_F32};
    const int want[] = {GGUF_GGML_Q4_1, GGUF_GGML_Q8_0, GGUF_GGML_BF16, GGUF_GGML_F32};
    for (int k = 0; k < 4; k++) {
        quant_row_from_f32(dts[k], src, q, COLS);
        quant_row_to_f32(dts[k], q, ref, COLS);
        memset(g, 0, sizeof g);
        CHECK_EQ_INT(gguf_repack_row(dts[k], q, g, COLS), want[k]);
        deq_ggml(want[k], g, got, COLS);
        int same = 1;
        for (int i = 0; i < COLS; i++) same &= got[i] == ref[i];
        CHECK_MSG(same, "dtype %s: ggml dequantization differs", sl_dtype_name(dts[k]));
    }
    CHECK_EQ_INT(gguf_repack_row(99, q, g, COLS), -1);
}

/* ---- an independent minimal GGUF reader ---- */

struct rd {
    const uint8_t *p;
    size_t n, pos;
    int bad;
};
static const uint8_t *take(struct rd *r, size_t n) {
    if (r->bad || n > r->n - r->pos) {
        r->bad = 1;
        return NULL;
    }
    const uint8_t *p = r->p + r->pos;
    r->pos += n;
    return p;
}
static uint64_t get_u(struct rd *r, int bytes) {
    const uint8_t *p = take(r, (size_t)bytes);
    uint64_t v = 0;
    for (int i = 0; p && i < bytes; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}
/* A string as pointer + length. */
static const char *get_str(struct rd *r, uint64_t *len) {
    *len = get_u(r, 8);
    return (const char *)take(r, (size_t)*len);
}
static int scalar_size(uint32_t t) {
    static const int sz[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    return t <= 12 ? sz[t] : -1;
}

struct kv {
    char key[96];
    uint32_t type, arr_type;
    uint64_t arr_n;
    size_t val; /* offset of the value (after type, or after arr header) */
};

struct gguf {
    uint8_t *data;
    size_t size;
    uint64_t n_tensors, n_kv, data_start;
    struct kv kv[64];
    struct {
        char name[64];
        uint32_t n_dims, type;
        uint64_t ne[4], offset;
    } t[64];
};

static int gguf_read(struct gguf *g, const char *path) {
    memset(g, 0, sizeof *g);
    if (sl_read_file(path, (char **)&g->data, &g->size)) return 0;
    struct rd r = {g->data, g->size, 0, 0};
    const uint8_t *magic = take(&r, 4);
    if (!magic || memcmp(magic, "GGUF", 4) || get_u(&r, 4) != 3) return 0;
    g->n_tensors = get_u(&r, 8);
    g->n_kv = get_u(&r, 8);
    if (g->n_tensors > 64 || g->n_kv > 64) return 0;
    for (uint64_t i = 0; i < g->n_kv && !r.bad; i++) {
        uint64_t kl;
        const char *k = get_str(&r, &kl);
        if (!k || kl >= sizeof g->kv[i].key) return 0;
        memcpy(g->kv[i].key, k, kl);
        g->kv[i].type = (uint32_t)get_u(&r, 4);
        uint32_t t = g->kv[i].type;
        uint64_t n = 1;
        if (t == GGUF_T_ARRAY) {
            g->kv[i].arr_type = t = (uint32_t)get_u(&r, 4);
            g->kv[i].arr_n = n = get_u(&r, 8);
        }
        g->kv[i].val = r.pos;
        for (uint64_t j = 0; j < n && !r.bad; j++) {
            uint64_t sl;
            if (t == GGUF_T_STRING) get_str(&r, &sl);
            else if (scalar_size(t) > 0) take(&r, (size_t)scalar_size(t));
            else return 0;
        }
    }
    for (uint64_t i = 0; i < g->n_tensors && !r.bad; i++) {
        uint64_t nl;
        const char *nm = get_str(&r, &nl);
        if (!nm || nl >= sizeof g->t[i].name) return 0;
        memcpy(g->t[i].name, nm, nl);
        g->t[i].n_dims = (uint32_t)get_u(&r, 4);
        if (g->t[i].n_dims > 4) return 0;
        for (uint32_t d = 0; d < g->t[i].n_dims; d++) g->t[i].ne[d] = get_u(&r, 8);
        g->t[i].type = (uint32_t)get_u(&r, 4);
        g->t[i].offset = get_u(&r, 8);
    }
    g->data_start = (r.pos + 31) / 32 * 32;
    return !r.bad;
}

static const struct kv *find_kv(const struct gguf *g, const char *key) {
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (!strcmp(g->kv[i].key, key)) return &g->kv[i];
    return NULL;
}
static uint32_t kv_u32(const struct gguf *g, const char *key) {
    const struct kv *k = find_kv(g, key);
    if (!k || k->type != GGUF_T_UINT32) return 0xffffffffu;
    uint32_t v;
    memcpy(&v, g->data + k->val, 4);
    return v;
}
/* Element i of a string array (or the string value when i < 0). */
static int kv_str_eq(const struct gguf *g, const char *key, long i, const char *want) {
    const struct kv *k = find_kv(g, key);
    if (!k) return 0;
    struct rd r = {g->data, g->size, k->val, 0};
    uint64_t len = 0;
    const char *s = NULL;
    for (long j = 0; j <= (i < 0 ? 0 : i); j++) s = get_str(&r, &len);
    return s && len == strlen(want) && !memcmp(s, want, len);
}
static int find_tensor(const struct gguf *g, const char *name) {
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (!strcmp(g->t[i].name, name)) return (int)i;
    return -1;
}
static uint64_t ggml_row_bytes(uint32_t type, uint64_t cols) {
    switch (type) {
    case GGUF_GGML_F32: return cols * 4;
    case GGUF_GGML_BF16: return cols * 2;
    case GGUF_GGML_Q8_0: return cols / 32 * 34;
    case GGUF_GGML_Q4_1: return cols / 32 * 20;
    default: return 0;
    }
}

/* A tiny model with n_vocab 2100 (the tokenizer has 2048: 52 padding ids). */
static int write_tiny(const char *path, int dense_dtype, int norm_topk) {
    struct synth_params p;
    if (synth_preset("tiny", &p)) return 0;
    p.cfg.n_vocab = 2100;
    p.dense_dtype = dense_dtype;
    p.cfg.norm_topk_prob = norm_topk;
    p.n_threads = 1;
    return synth_write(&p, path, NULL) == SL_OK;
}

static void check_export(int dense_dtype) {
    const char *in = tmp_path("tiny.sluice"), *out = tmp_path("tiny.gguf");
    CHECK(write_tiny(in, dense_dtype, 1));
    struct gguf_export_params ep = {GPT2_TOKENIZER, 0};
    struct gguf_export_report rep;
    CHECK_EQ_INT(gguf_export(in, out, &ep, &rep), SL_OK);
    CHECK_EQ_INT(rep.n_tokens, 2100);
    CHECK_EQ_INT(rep.n_pad_tokens, 52);
    struct gguf *g = calloc(1, sizeof *g);
    CHECK(g && gguf_read(g, out));
    if (!g || !g->data) {
        free(g);
        return;
    }
    CHECK_EQ_INT(g->size, rep.file_bytes);
    CHECK(kv_str_eq(g, "general.architecture", -1, "qwen3moe"));
    CHECK(kv_str_eq(g, "tokenizer.ggml.model", -1, "gpt2"));
    CHECK_EQ_INT(kv_u32(g, "qwen3moe.block_count"), 2);
    CHECK_EQ_INT(kv_u32(g, "qwen3moe.embedding_length"), 64);
    CHECK_EQ_INT(kv_u32(g, "qwen3moe.expert_count"), 4);
    CHECK_EQ_INT(kv_u32(g, "qwen3moe.expert_used_count"), 2);
    CHECK_EQ_INT(kv_u32(g, "qwen3moe.expert_feed_forward_length"), 32);
    CHECK_EQ_INT(kv_u32(g, "qwen3moe.attention.key_length"), 16);
    CHECK_EQ_INT(kv_u32(g, "qwen3moe.attention.head_count_kv"), 2);
    const struct kv *toks = find_kv(g, "tokenizer.ggml.tokens");
    CHECK(toks && toks->arr_type == GGUF_T_STRING && toks->arr_n == 2100);
    CHECK(kv_str_eq(g, "tokenizer.ggml.tokens", 0, "<|endoftext|>"));
    CHECK(kv_str_eq(g, "tokenizer.ggml.tokens", 2099, "<|sl_pad_2099|>"));
    const struct kv *tt = find_kv(g, "tokenizer.ggml.token_type");
    CHECK(tt && tt->arr_type == GGUF_T_INT32 && tt->arr_n == 2100);
    if (tt) {
        int32_t t0, t100, t2099;
        memcpy(&t0, g->data + tt->val, 4);
        memcpy(&t100, g->data + tt->val + 400, 4);
        memcpy(&t2099, g->data + tt->val + 4 * 2099, 4);
        CHECK_EQ_INT(t0, 3);    /* special added token: control */
        CHECK_EQ_INT(t100, 1);  /* normal */
        CHECK_EQ_INT(t2099, 5); /* padding: unused */
    }
    const struct kv *mg = find_kv(g, "tokenizer.ggml.merges");
    CHECK(mg && mg->arr_n > 1000);
    CHECK(kv_str_eq(g, "tokenizer.ggml.merges", 0, "\xc4\xa0 \xc4\xa0")); /* "Ġ Ġ" */
    /* 1 embedding + 2 × (9 dense + 3 expert) + norm + output */
    CHECK_EQ_INT(g->n_tensors, 27);
    uint64_t end = 0;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        CHECK_MSG(g->t[i].offset % 32 == 0, "%s offset %llu", g->t[i].name,
                  (unsigned long long)g->t[i].offset);
        uint64_t rows = 1;
        for (uint32_t d = 1; d < g->t[i].n_dims; d++) rows *= g->t[i].ne[d];
        uint64_t e = g->t[i].offset + rows * ggml_row_bytes(g->t[i].type, g->t[i].ne[0]);
        if (e > end) end = e;
    }
    CHECK_EQ_INT(g->data_start + (end + 31) / 32 * 32, g->size);

    struct sl_file f;
    CHECK_EQ_INT(file_open(&f, in, 1), SL_OK);
    float a[256], b[256];
    /* one expert row: layer 1, down, expert 3, row 5 */
    int ti = find_tensor(g, "blk.1.ffn_down_exps.weight");
    CHECK(ti >= 0);
    if (ti >= 0) {
        CHECK_EQ_INT(g->t[ti].type, GGUF_GGML_Q4_1);
        CHECK_EQ_INT(g->t[ti].n_dims, 3);
        CHECK(g->t[ti].ne[0] == 32 && g->t[ti].ne[1] == 64 && g->t[ti].ne[2] == 4);
        const struct sl_expert_layer *el = file_expert_layer(&f, 1);
        const struct sl_expert_part *dp = &el->part[2];
        uint64_t srb = quant_row_bytes(dp->dtype, dp->cols), grb = ggml_row_bytes(GGUF_GGML_Q4_1, 32);
        quant_row_to_f32(dp->dtype, f.map + el->offsets[3] + dp->offset + 5 * srb, a, 32);
        deq_ggml(GGUF_GGML_Q4_1, g->data + g->data_start + g->t[ti].offset + (3 * 64 + 5) * grb,
                 b, 32);
        CHECK(!memcmp(a, b, 32 * sizeof(float)));
    }
    /* one dense row of the embedding (row 2099) and of q_proj */
    const char *pairs[2][2] = {{"model.embed_tokens.weight", "token_embd.weight"},
                               {"model.layers.0.self_attn.q_proj.weight", "blk.0.attn_q.weight"}};
    for (int k = 0; k < 2; k++) {
        const struct sl_tensor_info *st = file_find_tensor(&f, pairs[k][0]);
        ti = find_tensor(g, pairs[k][1]);
        CHECK(st && ti >= 0);
        if (!st || ti < 0) continue;
        uint64_t cols = st->dims[1], rows = st->dims[0], r = rows - 1;
        CHECK(g->t[ti].ne[0] == cols && g->t[ti].ne[1] == rows);
        CHECK_EQ_INT(g->t[ti].type, dense_dtype == SL_DTYPE_Q8 ? GGUF_GGML_Q8_0 : GGUF_GGML_BF16);
        uint64_t srb = quant_row_bytes(st->dtype, cols), grb = ggml_row_bytes(g->t[ti].type, cols);
        quant_row_to_f32(st->dtype, f.map + st->offset + r * srb, a, cols);
        deq_ggml((int)g->t[ti].type, g->data + g->data_start + g->t[ti].offset + r * grb, b, cols);
        CHECK_MSG(!memcmp(a, b, cols * sizeof(float)), "%s row %llu differs", pairs[k][1],
                  (unsigned long long)r);
    }
    file_close(&f);
    free(g->data);
    free(g);
    unlink(in);
    unlink(out);
}

TEST(test_export_bf16_dense) { check_export(SL_DTYPE_BF16); }
TEST(test_export_q8_dense) { check_export(SL_DTYPE_Q8); }

static int exists(const char *p) { return access(p, F_OK) == 0; }

TEST(test_export_bad_inputs) {
    const char *in = tmp_path("bad.sluice"), *out = tmp_path("bad.gguf");
    CHECK(write_tiny(in, SL_DTYPE_BF16, 1));
    /* no tokenizer anywhere */
    CHECK_EQ_INT(gguf_export(in, out, NULL, NULL), SL_ERR_ARG);
    CHECK(strstr(sl_errmsg(), "no embedded tokenizer") != NULL);
    /* tokenizer not JSON */
    const char *junk = tmp_path("junk.json");
    FILE *fp = fopen(junk, "w");
    CHECK(fp != NULL);
    if (fp) {
        fputs("{not json", fp);
        fclose(fp);
    }
    struct gguf_export_params ep = {junk, 0};
    CHECK_EQ_INT(gguf_export(in, out, &ep, NULL), SL_ERR_FORMAT);
    CHECK(strstr(sl_errmsg(), "not valid JSON") != NULL);
    /* a tokenizer without BPE merges */
    fp = fopen(junk, "w");
    if (fp) {
        fputs("{\"model\":{\"type\":\"WordPiece\",\"vocab\":{}}}", fp);
        fclose(fp);
    }
    CHECK_EQ_INT(gguf_export(in, out, &ep, NULL), SL_ERR_UNSUPPORTED);
    /* missing tokenizer file, missing input, unwritable output */
    ep.tokenizer_path = tmp_path("nope.json");
    CHECK_EQ_INT(gguf_export(in, out, &ep, NULL), SL_ERR_IO);
    ep.tokenizer_path = GPT2_TOKENIZER;
    CHECK_EQ_INT(gguf_export(tmp_path("missing.sluice"), out, &ep, NULL), SL_ERR_IO);
    CHECK_EQ_INT(gguf_export(in, tmp_path("no/such/dir.gguf"), &ep, NULL), SL_ERR_IO);
    CHECK(strstr(sl_errmsg(), "no/such/dir.gguf.tmp") != NULL);
    CHECK(!exists(out));
    unlink(junk);
    unlink(in);

    /* the tokenizer (2048 ids) does not fit a 256-token vocabulary */
    struct synth_params p;
    CHECK_EQ_INT(synth_preset("tiny", &p), SL_OK);
    p.n_threads = 1;
    CHECK_EQ_INT(synth_write(&p, in, NULL), SL_OK);
    CHECK_EQ_INT(gguf_export(in, out, &ep, NULL), SL_ERR_UNSUPPORTED);
    CHECK(strstr(sl_errmsg(), "outside the model's vocabulary of 256") != NULL);
    CHECK(!exists(out));
    unlink(in);

    /* llama.cpp's qwen3moe always renormalises the top-k weights */
    CHECK(write_tiny(in, SL_DTYPE_BF16, 0));
    CHECK_EQ_INT(gguf_export(in, out, &ep, NULL), SL_ERR_UNSUPPORTED);
    CHECK(strstr(sl_errmsg(), "norm_topk_prob") != NULL);
    CHECK(!exists(out));
    unlink(in);
    CHECK_EQ_INT(gguf_export(NULL, out, &ep, NULL), SL_ERR_ARG);
    rmdir(tmp_dir);
}

TEST_MAIN()
