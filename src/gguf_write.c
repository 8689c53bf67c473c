/*
 * gguf_write.c — `sluice export-gguf`: a .sluice qwen3_moe model written as a
 * GGUF v3 file for llama.cpp's `qwen3moe` architecture, weights regrouped
 * into ggml blocks without re-encoding (mapping in gguf_write.h).
 *
 * GGUF v3 layout (ggml docs/gguf.md), all little-endian:
 *   u32 magic "GGUF", u32 version 3, u64 n_tensors, u64 n_kv,
 *   n_kv × {string key, u32 type, value}       string = u64 len + bytes
 *   n_tensors × {string name, u32 n_dims, u64 ne[n_dims] (ne0 = the
 *                contiguous dimension), u32 ggml_type, u64 offset}
 *   zero padding to GGUF_ALIGN, then the data; each offset (relative to the
 *   data start) is a multiple of GGUF_ALIGN.
 *
 * What it is not: a reader or a quantizer. Streaming: the tables are built
 * first (sizes are known from the .sluice tables), then each tensor is copied
 * row by row from the read-only mapping through one row buffer.
 */
#include <cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "format.h"
#include "gguf_write.h"
#include "quant.h"
#include "util.h"

/* ---- row regrouping ---- */

int gguf_repack_row(int sl_dtype, const void *src, void *dst, uint64_t cols) {
    const uint8_t *s = src;
    uint8_t *d = dst;
    uint64_t nb = cols / SL_QBLOCK;
    switch (sl_dtype) {
    case SL_DTYPE_F32:
        memcpy(d, s, cols * 4);
        return GGUF_GGML_F32;
    case SL_DTYPE_F16:
        memcpy(d, s, cols * 2);
        return GGUF_GGML_F16;
    case SL_DTYPE_BF16:
        memcpy(d, s, cols * 2);
        return GGUF_GGML_BF16;
    case SL_DTYPE_Q8: /* [cols int8][nb f16 d] -> nb × {d, qs[32]} */
        for (uint64_t b = 0; b < nb; b++) {
            memcpy(d + b * 34, s + cols + b * 2, 2);
            memcpy(d + b * 34 + 2, s + b * 32, 32);
        }
        return GGUF_GGML_Q8_0;
    case SL_DTYPE_Q4: /* [cols/2 nibbles][nb f16 d][nb f16 m] -> {d, m, qs[16]} */
        for (uint64_t b = 0; b < nb; b++) {
            memcpy(d + b * 20, s + cols / 2 + b * 2, 2);
            memcpy(d + b * 20 + 2, s + cols / 2 + nb * 2 + b * 2, 2);
            memcpy(d + b * 20 + 4, s + b * 16, 16);
        }
        return GGUF_GGML_Q4_1;
    default:
        return -1;
    }
}

/* ---- buffered output with sticky error ---- */

struct gw {
    FILE *fp;
    const char *path;
    uint64_t pos;
    int err; /* errno of the first failed write, 0 if none */
};

static void w_bytes(struct gw *w, const void *p, size_t n) {
    if (w->err || n == 0) return;
    if (fwrite(p, 1, n, w->fp) != n) w->err = errno ? errno : EIO;
    w->pos += n;
}
static void w_u32(struct gw *w, uint32_t v) {
    uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    w_bytes(w, b, 4);
}
static void w_u64(struct gw *w, uint64_t v) {
    w_u32(w, (uint32_t)v);
    w_u32(w, (uint32_t)(v >> 32));
}
static void w_f32(struct gw *w, float f) {
    uint32_t v;
    memcpy(&v, &f, 4);
    w_u32(w, v);
}
static void w_strn(struct gw *w, const char *s, size_t n) {
    w_u64(w, n);
    w_bytes(w, s, n);
}
static void w_str(struct gw *w, const char *s) { w_strn(w, s, strlen(s)); }
static void w_pad(struct gw *w, uint64_t align) {
    static const uint8_t zero[64];
    uint64_t n = sl_align_up(w->pos, align) - w->pos;
    w_bytes(w, zero, (size_t)n);
}

/* Key-value writers; *n_kv counts what was written. */
static void kv_u32(struct gw *w, uint64_t *n_kv, const char *key, uint32_t v) {
    w_str(w, key);
    w_u32(w, GGUF_T_UINT32);
    w_u32(w, v);
    (*n_kv)++;
}
static void kv_f32(struct gw *w, uint64_t *n_kv, const char *key, float v) {
    w_str(w, key);
    w_u32(w, GGUF_T_FLOAT32);
    w_f32(w, v);
    (*n_kv)++;
}
static void kv_bool(struct gw *w, uint64_t *n_kv, const char *key, int v) {
    uint8_t b = v != 0;
    w_str(w, key);
    w_u32(w, GGUF_T_BOOL);
    w_bytes(w, &b, 1);
    (*n_kv)++;
}
static void kv_str(struct gw *w, uint64_t *n_kv, const char *key, const char *v) {
    w_str(w, key);
    w_u32(w, GGUF_T_STRING);
    w_str(w, v);
    (*n_kv)++;
}

/* ---- the output tensor table ---- */

struct out_tensor {
    char name[64];
    int sl_dtype;
    int ggml_type;
    uint32_t n_dims;
    uint64_t ne[3];       /* ne[0] = cols (contiguous) */
    uint64_t size;        /* bytes */
    uint64_t offset;      /* relative to the data start */
    const struct sl_tensor_info *src; /* dense source, or NULL */
    const struct sl_expert_layer *el; /* expert source (with part) */
    int part;
};

static int ggml_of(int sl_dtype) {
    switch (sl_dtype) {
    case SL_DTYPE_F32: return GGUF_GGML_F32;
    case SL_DTYPE_F16: return GGUF_GGML_F16;
    case SL_DTYPE_BF16: return GGUF_GGML_BF16;
    case SL_DTYPE_Q8: return GGUF_GGML_Q8_0;
    case SL_DTYPE_Q4: return GGUF_GGML_Q4_1;
    default: return -1;
    }
}

/* Adds dense tensor hf_name as gguf_name; SL_ERR_FORMAT if absent. */
static int add_dense(const struct sl_file *f, struct out_tensor *t, uint8_t *used,
                     const char *hf_name, const char *gguf_name) {
    const struct sl_tensor_info *ti = file_find_tensor(f, hf_name);
    if (!ti)
        return sl_seterr(SL_ERR_FORMAT, "export-gguf: tensor %s is missing", hf_name);
    if (ti->n_dims > 2)
        return sl_seterr(SL_ERR_UNSUPPORTED, "export-gguf: tensor %s has %d dims (want 1 or 2)",
                         hf_name, ti->n_dims);
    int gt = ggml_of(ti->dtype);
    if (gt < 0)
        return sl_seterr(SL_ERR_UNSUPPORTED, "export-gguf: tensor %s: dtype %s has no GGUF twin",
                         hf_name, sl_dtype_name(ti->dtype));
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", gguf_name);
    t->sl_dtype = ti->dtype;
    t->ggml_type = gt;
    t->n_dims = (uint32_t)ti->n_dims;
    for (int i = 0; i < ti->n_dims; i++) t->ne[i] = ti->dims[ti->n_dims - 1 - i];
    t->size = ti->size;
    t->src = ti;
    used[ti - f->tensors] = 1;
    return SL_OK;
}

static const char *const layer_map[][2] = {
    {"input_layernorm.weight", "attn_norm.weight"},
    {"self_attn.q_proj.weight", "attn_q.weight"},
    {"self_attn.k_proj.weight", "attn_k.weight"},
    {"self_attn.v_proj.weight", "attn_v.weight"},
    {"self_attn.o_proj.weight", "attn_output.weight"},
    {"self_attn.q_norm.weight", "attn_q_norm.weight"},
    {"self_attn.k_norm.weight", "attn_k_norm.weight"},
    {"post_attention_layernorm.weight", "ffn_norm.weight"},
    {"mlp.gate.weight", "ffn_gate_inp.weight"},
};
static const char *const expert_names[3] = {"ffn_gate_exps.weight", "ffn_up_exps.weight",
                                            "ffn_down_exps.weight"};

/* Builds the table in file order and checks that every .sluice tensor was
 * used. *out is sl_malloc'ed. */
static int build_table(const struct sl_file *f, const struct sl_config *c,
                       struct out_tensor **out, uint32_t *n_out) {
    uint32_t cap = 3 + c->n_layers * 12, n = 0;
    struct out_tensor *t = sl_calloc(cap, sizeof *t);
    uint8_t *used = sl_calloc(f->n_tensors ? f->n_tensors : 1, 1);
    int st = SL_OK;
    if (!t || !used) {
        st = sl_seterr(SL_ERR_NOMEM, "export-gguf: out of memory for the tensor table");
        goto done;
    }
    if ((st = add_dense(f, &t[n++], used, "model.embed_tokens.weight", "token_embd.weight")))
        goto done;
    char hf[SL_MAX_NAME + 1], gg[64];
    for (uint32_t l = 0; l < c->n_layers; l++) {
        for (size_t i = 0; i < sizeof layer_map / sizeof layer_map[0]; i++) {
            snprintf(hf, sizeof hf, "model.layers.%u.%s", l, layer_map[i][0]);
            snprintf(gg, sizeof gg, "blk.%u.%s", l, layer_map[i][1]);
            if ((st = add_dense(f, &t[n++], used, hf, gg))) goto done;
        }
        const struct sl_expert_layer *el = file_expert_layer(f, l);
        if (!el || el->n_experts != c->n_experts) {
            st = sl_seterr(SL_ERR_FORMAT, "export-gguf: layer %u: expected %u routed experts, "
                           "found %u", l, c->n_experts, el ? el->n_experts : 0);
            goto done;
        }
        for (int p = 0; p < 3; p++) {
            const struct sl_expert_part *ep = &el->part[p];
            struct out_tensor *o = &t[n++];
            int gt = ggml_of(ep->dtype);
            if (gt < 0) {
                st = sl_seterr(SL_ERR_UNSUPPORTED, "export-gguf: layer %u experts: dtype %s has "
                               "no GGUF twin", l, sl_dtype_name(ep->dtype));
                goto done;
            }
            snprintf(o->name, sizeof o->name, "blk.%u.%s", l, expert_names[p]);
            o->sl_dtype = ep->dtype;
            o->ggml_type = gt;
            o->n_dims = 3;
            o->ne[0] = ep->cols;
            o->ne[1] = ep->rows;
            o->ne[2] = el->n_experts;
            o->size = ep->size * el->n_experts;
            o->el = el;
            o->part = p;
        }
    }
    if ((st = add_dense(f, &t[n++], used, "model.norm.weight", "output_norm.weight"))) goto done;
    if (!c->tie_embeddings &&
        (st = add_dense(f, &t[n++], used, "lm_head.weight", "output.weight")))
        goto done;
    for (uint32_t i = 0; i < f->n_tensors; i++)
        if (!used[i]) {
            st = sl_seterr(SL_ERR_UNSUPPORTED, "export-gguf: tensor %s has no place in "
                           "llama.cpp's qwen3moe", f->tensors[i].name);
            goto done;
        }
    uint64_t off = 0;
    for (uint32_t i = 0; i < n; i++) {
        t[i].offset = off;
        off = sl_align_up(off + t[i].size, GGUF_ALIGN);
    }
done:
    sl_free(used);
    if (st) {
        sl_free(t);
        return st;
    }
    *out = t;
    *n_out = n;
    return SL_OK;
}

/* ---- tokenizer ---- */

struct vocab {
    uint32_t n;          /* = model n_vocab */
    const char **text;   /* (n) borrowed from json, NULL = padding */
    int32_t *type;       /* (n) llama token type */
    cJSON *json;
    cJSON *merges;       /* model.merges array */
    uint32_t n_pad;
};

static void vocab_free(struct vocab *v) {
    sl_free(v->text);
    sl_free(v->type);
    cJSON_Delete(v->json);
    memset(v, 0, sizeof *v);
}

static int vocab_load(struct vocab *v, const char *json, size_t len, const char *what,
                      uint32_t n_vocab) {
    memset(v, 0, sizeof *v);
    v->json = cJSON_ParseWithLength(json, len);
    if (!v->json) return sl_seterr(SL_ERR_FORMAT, "export-gguf: %s: not valid JSON", what);
    cJSON *model = cJSON_GetObjectItemCaseSensitive(v->json, "model");
    cJSON *type = cJSON_GetObjectItemCaseSensitive(model, "type");
    cJSON *vmap = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    v->merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!cJSON_IsString(type) || strcmp(type->valuestring, "BPE") || !cJSON_IsObject(vmap) ||
        !cJSON_IsArray(v->merges)) {
        vocab_free(v);
        return sl_seterr(SL_ERR_UNSUPPORTED, "export-gguf: %s: need a BPE tokenizer with "
                         "model.vocab and model.merges", what);
    }
    v->n = n_vocab;
    v->text = sl_calloc(n_vocab, sizeof *v->text);
    v->type = sl_calloc(n_vocab, sizeof *v->type);
    if (!v->text || !v->type) {
        vocab_free(v);
        return sl_seterr(SL_ERR_NOMEM, "export-gguf: out of memory for %u tokens", n_vocab);
    }
    cJSON *it;
    cJSON_ArrayForEach(it, vmap) {
        if (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble >= n_vocab) {
            sl_seterr(SL_ERR_UNSUPPORTED, "export-gguf: %s: token %s has id outside the "
                      "model's vocabulary of %u", what, it->string, n_vocab);
            vocab_free(v);
            return SL_ERR_UNSUPPORTED;
        }
        v->text[it->valueint] = it->string;
        v->type[it->valueint] = 1; /* LLAMA_TOKEN_TYPE_NORMAL */
    }
    cJSON *added = cJSON_GetObjectItemCaseSensitive(v->json, "added_tokens");
    cJSON_ArrayForEach(it, added) {
        cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "id");
        cJSON *content = cJSON_GetObjectItemCaseSensitive(it, "content");
        if (!cJSON_IsNumber(id) || !cJSON_IsString(content) || id->valuedouble < 0 ||
            id->valuedouble >= n_vocab) {
            vocab_free(v);
            return sl_seterr(SL_ERR_UNSUPPORTED, "export-gguf: %s: an added token has no id or "
                             "an id outside the model's vocabulary of %u", what, n_vocab);
        }
        v->text[id->valueint] = content->valuestring;
        v->type[id->valueint] = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(it, "special"))
                                    ? 3  /* CONTROL */
                                    : 4; /* USER_DEFINED */
    }
    for (uint32_t i = 0; i < n_vocab; i++)
        if (!v->text[i]) {
            v->type[i] = 5; /* UNUSED */
            v->n_pad++;
        }
    return SL_OK;
}

static void write_vocab(struct gw *w, uint64_t *n_kv, const struct vocab *v) {
    kv_str(w, n_kv, "tokenizer.ggml.model", "gpt2");
    kv_str(w, n_kv, "tokenizer.ggml.pre", "qwen2");
    w_str(w, "tokenizer.ggml.tokens");
    w_u32(w, GGUF_T_ARRAY);
    w_u32(w, GGUF_T_STRING);
    w_u64(w, v->n);
    char pad[48];
    for (uint32_t i = 0; i < v->n; i++) {
        if (v->text[i]) {
            w_str(w, v->text[i]);
        } else {
            snprintf(pad, sizeof pad, "<|sl_pad_%u|>", i);
            w_str(w, pad);
        }
    }
    (*n_kv)++;
    w_str(w, "tokenizer.ggml.token_type");
    w_u32(w, GGUF_T_ARRAY);
    w_u32(w, GGUF_T_INT32);
    w_u64(w, v->n);
    for (uint32_t i = 0; i < v->n; i++) w_u32(w, (uint32_t)v->type[i]);
    (*n_kv)++;
    /* merges: "a b" strings, or [a, b] pairs in newer tokenizer.json files */
    w_str(w, "tokenizer.ggml.merges");
    w_u32(w, GGUF_T_ARRAY);
    w_u32(w, GGUF_T_STRING);
    w_u64(w, (uint64_t)cJSON_GetArraySize(v->merges));
    cJSON *it;
    char buf[1024];
    cJSON_ArrayForEach(it, v->merges) {
        if (cJSON_IsString(it)) {
            w_str(w, it->valuestring);
        } else {
            cJSON *a = cJSON_GetArrayItem(it, 0), *b = cJSON_GetArrayItem(it, 1);
            int k = snprintf(buf, sizeof buf, "%s %s", cJSON_IsString(a) ? a->valuestring : "",
                             cJSON_IsString(b) ? b->valuestring : "");
            w_strn(w, buf, k < 0 ? 0 : (size_t)k >= sizeof buf ? sizeof buf - 1 : (size_t)k);
        }
    }
    (*n_kv)++;
}

/* ---- the export ---- */

static int check_config(const struct sl_config *c) {
    if (c->arch != SL_ARCH_QWEN3_MOE)
        return sl_seterr(SL_ERR_UNSUPPORTED, "export-gguf: model_type %s: only qwen3_moe "
                         "is exported", c->model_type);
    if (c->attention_bias)
        return sl_seterr(SL_ERR_UNSUPPORTED, "export-gguf: attention_bias true: llama.cpp's "
                         "qwen3moe has no attention biases");
    if (!c->norm_topk_prob)
        return sl_seterr(SL_ERR_UNSUPPORTED, "export-gguf: norm_topk_prob false: llama.cpp's "
                         "qwen3moe always renormalises the top-k weights");
    for (uint32_t l = 0; l < c->n_layers; l++)
        if (!c->layer_is_moe[l])
            return sl_seterr(SL_ERR_UNSUPPORTED, "export-gguf: layer %u is a dense MLP: "
                             "llama.cpp's qwen3moe needs every layer MoE", l);
    return SL_OK;
}

static int write_data(struct gw *w, const struct sl_file *f, const struct out_tensor *t,
                      uint32_t n, uint64_t data_start, int progress) {
    uint64_t max_row = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t rb = quant_row_bytes(t[i].sl_dtype, t[i].ne[0]);
        if (rb > max_row) max_row = rb;
    }
    uint8_t *row = sl_malloc(max_row ? max_row : 1);
    if (!row) return sl_seterr(SL_ERR_NOMEM, "export-gguf: out of memory for a row");
    for (uint32_t i = 0; i < n && !w->err; i++) {
        const struct out_tensor *o = &t[i];
        SL_ASSERT(w->pos == data_start + o->offset);
        uint64_t rb = quant_row_bytes(o->sl_dtype, o->ne[0]);
        if (o->src) {
            uint64_t rows = o->src->size / rb;
            for (uint64_t r = 0; r < rows; r++) {
                gguf_repack_row(o->sl_dtype, f->map + o->src->offset + r * rb, row, o->ne[0]);
                w_bytes(w, row, rb);
            }
        } else {
            const struct sl_expert_part *ep = &o->el->part[o->part];
            for (uint32_t e = 0; e < o->el->n_experts; e++) {
                const uint8_t *base = f->map + o->el->offsets[e] + ep->offset;
                for (uint64_t r = 0; r < ep->rows; r++) {
                    gguf_repack_row(o->sl_dtype, base + r * rb, row, o->ne[0]);
                    w_bytes(w, row, rb);
                }
            }
            if (progress && o->part == 2)
                fprintf(stderr, "export-gguf: %s done\n", o->name);
        }
        w_pad(w, GGUF_ALIGN);
    }
    sl_free(row);
    return SL_OK;
}

int gguf_export(const char *in_path, const char *out_path, const struct gguf_export_params *p,
                struct gguf_export_report *report) {
    struct gguf_export_params dp = {0};
    if (!p) p = &dp;
    if (!in_path || !out_path)
        return sl_seterr(SL_ERR_ARG, "export-gguf: missing input or output path");
    double t0 = sl_now();
    struct sl_file f;
    struct sl_config c;
    struct vocab v = {0};
    struct out_tensor *t = NULL;
    uint32_t n_t = 0;
    char *tok_owned = NULL, *tmp = NULL;
    size_t tok_len = 0;
    struct gw w = {0};
    int st = file_open(&f, in_path, 0);
    if (st) return st;
    if ((st = config_parse(&c, f.manifest, f.manifest_len))) goto done;
    if ((st = check_config(&c))) goto done;
    const char *tok = f.tokenizer, *tok_what = "embedded tokenizer";
    tok_len = f.tokenizer_len;
    if (!tok) {
        if (!p->tokenizer_path) {
            st = sl_seterr(SL_ERR_ARG, "export-gguf: %s has no embedded tokenizer and none was "
                           "given (llama.cpp needs one: pass a tokenizer.json)", in_path);
            goto done;
        }
        if ((st = sl_read_file(p->tokenizer_path, &tok_owned, &tok_len))) goto done;
        tok = tok_owned;
        tok_what = p->tokenizer_path;
    }
    if ((st = vocab_load(&v, tok, tok_len, tok_what, c.n_vocab))) goto done;
    if ((st = build_table(&f, &c, &t, &n_t))) goto done;

    size_t tl = strlen(out_path) + 5;
    if (!(tmp = sl_malloc(tl))) {
        st = sl_seterr(SL_ERR_NOMEM, "export-gguf: out of memory");
        goto done;
    }
    snprintf(tmp, tl, "%s.tmp", out_path);
    w.path = tmp;
    if (!(w.fp = fopen(tmp, "wb"))) {
        st = sl_seterr(SL_ERR_IO, "export-gguf: create %s: %s", tmp, strerror(errno));
        goto done;
    }
    setvbuf(w.fp, NULL, _IOFBF, 1 << 20);
    w_bytes(&w, "GGUF", 4);
    w_u32(&w, GGUF_VERSION);
    w_u64(&w, n_t);
    w_u64(&w, 0); /* n_kv, patched below */
    uint64_t n_kv = 0;
    kv_str(&w, &n_kv, "general.architecture", "qwen3moe");
    kv_str(&w, &n_kv, "general.name", "sluice export");
    kv_u32(&w, &n_kv, "general.alignment", GGUF_ALIGN);
    kv_u32(&w, &n_kv, "qwen3moe.block_count", c.n_layers);
    kv_u32(&w, &n_kv, "qwen3moe.context_length", c.n_ctx_train);
    kv_u32(&w, &n_kv, "qwen3moe.embedding_length", c.hidden);
    kv_u32(&w, &n_kv, "qwen3moe.feed_forward_length", c.ffn);
    kv_u32(&w, &n_kv, "qwen3moe.expert_feed_forward_length", c.moe_ffn);
    kv_u32(&w, &n_kv, "qwen3moe.attention.head_count", c.n_heads);
    kv_u32(&w, &n_kv, "qwen3moe.attention.head_count_kv", c.n_kv_heads);
    kv_u32(&w, &n_kv, "qwen3moe.attention.key_length", c.head_dim);
    kv_u32(&w, &n_kv, "qwen3moe.attention.value_length", c.head_dim);
    kv_f32(&w, &n_kv, "qwen3moe.rope.freq_base", c.rope_theta);
    kv_f32(&w, &n_kv, "qwen3moe.attention.layer_norm_rms_epsilon", c.rms_eps);
    kv_u32(&w, &n_kv, "qwen3moe.expert_count", c.n_experts);
    kv_u32(&w, &n_kv, "qwen3moe.expert_used_count", c.n_experts_used);
    write_vocab(&w, &n_kv, &v);
    if (c.bos_id >= 0) kv_u32(&w, &n_kv, "tokenizer.ggml.bos_token_id", (uint32_t)c.bos_id);
    if (c.n_eos > 0) {
        kv_u32(&w, &n_kv, "tokenizer.ggml.eos_token_id", (uint32_t)c.eos_ids[0]);
        kv_u32(&w, &n_kv, "tokenizer.ggml.padding_token_id", (uint32_t)c.eos_ids[0]);
    }
    kv_bool(&w, &n_kv, "tokenizer.ggml.add_bos_token", 0);
    for (uint32_t i = 0; i < n_t; i++) {
        w_str(&w, t[i].name);
        w_u32(&w, t[i].n_dims);
        for (uint32_t d = 0; d < t[i].n_dims; d++) w_u64(&w, t[i].ne[d]);
        w_u32(&w, (uint32_t)t[i].ggml_type);
        w_u64(&w, t[i].offset);
    }
    w_pad(&w, GGUF_ALIGN);
    uint64_t data_start = w.pos;
    if ((st = write_data(&w, &f, t, n_t, data_start, p->progress))) goto done;
    if (!w.err && (fflush(w.fp) || fseek(w.fp, 16, SEEK_SET))) w.err = errno ? errno : EIO;
    uint64_t end = w.pos;
    w_u64(&w, n_kv);
    if (!w.err && (fflush(w.fp) || fsync(fileno(w.fp)))) w.err = errno ? errno : EIO;
    if (w.err) {
        st = sl_seterr(SL_ERR_IO, "export-gguf: write %s: %s", tmp, strerror(w.err));
        goto done;
    }
    if (fclose(w.fp)) {
        w.fp = NULL;
        st = sl_seterr(SL_ERR_IO, "export-gguf: close %s: %s", tmp, strerror(errno));
        goto done;
    }
    w.fp = NULL;
    if (rename(tmp, out_path)) {
        st = sl_seterr(SL_ERR_IO, "export-gguf: rename %s -> %s: %s", tmp, out_path,
                       strerror(errno));
        goto done;
    }
    if (report) {
        report->file_bytes = end;
        report->n_tensors = n_t;
        report->n_tokens = v.n;
        report->n_pad_tokens = v.n_pad;
        report->seconds = sl_now() - t0;
    }
done:
    if (w.fp) fclose(w.fp);
    if (st && tmp) unlink(tmp);
    sl_free(tmp);
    sl_free(t);
    vocab_free(&v);
    sl_free(tok_owned);
    file_close(&f);
    return st;
}
