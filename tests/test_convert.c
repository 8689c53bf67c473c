/*
 * test_convert.c — sl_convert end to end (src/convert.c, src/safetensors.c):
 * tiny qwen3_moe checkpoints are written here in C (a small safetensors
 * writer below) into mkdtemp directories, converted, and the .sluice result
 * is opened with file_open and compared tensor by tensor: bit exact for
 * bf16/f32, within the block error for q8/q4.
 *
 * Every weight is k/128 for an integer |k| <= 127, exactly representable in
 * f32, f16 and bf16, so checkpoints in any of the three dtypes, sharded or
 * not, per-expert or fused (transformers v5) layout must all give
 * byte-identical model files — which the tests check.
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "format.h"
#include "quant.h"
#include "safetensors.h"
#include "test.h"
#include "util.h"

/* ---- the fixture model ---- */

struct fx {
    const char *dtype;        /* "F32", "F16", "BF16" */
    int fused;                /* transformers v5 expert layout */
    int n_shards;             /* 0/1: model.safetensors; >1: index + shards */
    int tie;                  /* tie_word_embeddings */
    int bias;                 /* attention_bias */
    uint32_t moe_ffn;         /* 0 = 32 */
    int no_tokenizer;         /* omit tokenizer.json */
    int no_generation;        /* omit generation_config.json */
    int extra;                /* add a rotary inv_freq buffer */
    int no_ids;               /* no bos/eos ids in config.json */
    const char *drop;         /* omit this tensor */
    const char *swap;         /* write this 2-D tensor with swapped dims */
    const char *bad_dtype_of; /* write this tensor as bad_dtype */
    const char *bad_dtype;
    const char *nan_in;       /* one NaN in this tensor */
};

enum { L = 3, H = 64, NH = 4, NKV = 2, HD = 16, V = 96, FFN = 96, E = 4 };
/* Layer 1 is dense (mlp_only_layers = [1]); 0 and 2 are MoE. */
static int layer_moe(int l) { return l != 1; }

struct spec {
    char name[128];
    int n_dims;
    uint64_t dims[3];
    int fused;          /* 0, 1 gate_up_proj, 2 down_proj */
    int layer;
    const char *dtype;
    int nan;
};

/* Value i of the logical tensor name: k/128 with k in [-127, 127]. */
static float val(const char *name, uint64_t i) {
    uint64_t h = sl_fnv1a64(name, strlen(name), SL_FNV_SEED);
    h ^= (i + 1) * 0x9e3779b97f4a7c15ull;
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 32;
    return (float)((int)(h % 255) - 127) / 128.0f;
}

static void expert_name(char *buf, size_t n, int l, uint64_t e, int part) {
    static const char *p[3] = {"gate_proj", "up_proj", "down_proj"};
    snprintf(buf, n, "model.layers.%d.mlp.experts.%llu.%s.weight", l,
             (unsigned long long)e, p[part]);
}

/* Element i of a spec: fused tensors take their values from the logical
 * per-expert names, so that both layouts describe the same model. */
static float spec_val(const struct spec *s, uint64_t i, uint32_t F) {
    char n[128];
    if (s->fused == 1) { /* [E, 2F, H] */
        uint64_t e = i / (2 * F * H), j = i / H % (2 * F), c = i % H;
        expert_name(n, sizeof n, s->layer, e, j < F ? 0 : 1);
        return val(n, (j % F) * H + c);
    }
    if (s->fused == 2) { /* [E, H, F] */
        uint64_t e = i / ((uint64_t)H * F), r = i % ((uint64_t)H * F);
        expert_name(n, sizeof n, s->layer, e, 2);
        return val(n, r);
    }
    return val(s->name, i);
}

static int add(struct spec *s, int n, const char *name, int nd, uint64_t d0,
               uint64_t d1, uint64_t d2) {
    memset(&s[n], 0, sizeof s[n]);
    snprintf(s[n].name, sizeof s[n].name, "%s", name);
    s[n].n_dims = nd;
    s[n].dims[0] = d0;
    s[n].dims[1] = d1;
    s[n].dims[2] = d2;
    return n + 1;
}

/* Every tensor of the fixture checkpoint. */
static int fx_specs(const struct fx *o, struct spec *s) {
    uint32_t F = o->moe_ffn ? o->moe_ffn : 32;
    int n = 0;
    char b[128];
    n = add(s, n, "model.embed_tokens.weight", 2, V, H, 0);
    for (int l = 0; l < L; l++) {
#define NM(fmt) (snprintf(b, sizeof b, "model.layers.%d." fmt, l), b)
        n = add(s, n, NM("input_layernorm.weight"), 1, H, 0, 0);
        n = add(s, n, NM("post_attention_layernorm.weight"), 1, H, 0, 0);
        n = add(s, n, NM("self_attn.q_proj.weight"), 2, NH * HD, H, 0);
        n = add(s, n, NM("self_attn.k_proj.weight"), 2, NKV * HD, H, 0);
        n = add(s, n, NM("self_attn.v_proj.weight"), 2, NKV * HD, H, 0);
        n = add(s, n, NM("self_attn.o_proj.weight"), 2, H, NH * HD, 0);
        if (o->bias) {
            n = add(s, n, NM("self_attn.q_proj.bias"), 1, NH * HD, 0, 0);
            n = add(s, n, NM("self_attn.k_proj.bias"), 1, NKV * HD, 0, 0);
            n = add(s, n, NM("self_attn.v_proj.bias"), 1, NKV * HD, 0, 0);
            n = add(s, n, NM("self_attn.o_proj.bias"), 1, H, 0, 0);
        }
        n = add(s, n, NM("self_attn.q_norm.weight"), 1, HD, 0, 0);
        n = add(s, n, NM("self_attn.k_norm.weight"), 1, HD, 0, 0);
        if (o->extra) n = add(s, n, NM("self_attn.rotary_emb.inv_freq"), 1, HD / 2, 0, 0);
        if (!layer_moe(l)) {
            n = add(s, n, NM("mlp.gate_proj.weight"), 2, FFN, H, 0);
            n = add(s, n, NM("mlp.up_proj.weight"), 2, FFN, H, 0);
            n = add(s, n, NM("mlp.down_proj.weight"), 2, H, FFN, 0);
            continue;
        }
        n = add(s, n, NM("mlp.gate.weight"), 2, E, H, 0);
        if (o->fused) {
            n = add(s, n, NM("mlp.experts.gate_up_proj"), 3, E, 2 * F, H);
            s[n - 1].fused = 1;
            s[n - 1].layer = l;
            n = add(s, n, NM("mlp.experts.down_proj"), 3, E, H, F);
            s[n - 1].fused = 2;
            s[n - 1].layer = l;
        } else {
            for (int e = 0; e < E; e++)
                for (int p = 0; p < 3; p++) {
                    expert_name(b, sizeof b, l, (uint64_t)e, p);
                    n = add(s, n, b, 2, p < 2 ? F : H, p < 2 ? H : F, 0);
                }
        }
#undef NM
    }
    n = add(s, n, "model.norm.weight", 1, H, 0, 0);
    if (!o->tie) n = add(s, n, "lm_head.weight", 2, V, H, 0);
    /* Sabotage. */
    for (int i = 0; i < n; i++) {
        s[i].dtype = o->dtype;
        if (o->swap && !strcmp(s[i].name, o->swap)) {
            uint64_t t = s[i].dims[0];
            s[i].dims[0] = s[i].dims[1];
            s[i].dims[1] = t;
        }
        if (o->bad_dtype_of && !strcmp(s[i].name, o->bad_dtype_of))
            s[i].dtype = o->bad_dtype;
        if (o->nan_in && !strcmp(s[i].name, o->nan_in)) s[i].nan = 1;
    }
    if (o->drop)
        for (int i = 0; i < n; i++)
            if (!strcmp(s[i].name, o->drop)) s[i--] = s[--n];
    return n;
}

static uint32_t dtype_size(const char *d) {
    if (!strcmp(d, "F32") || !strcmp(d, "I32")) return 4;
    if (!strcmp(d, "I64")) return 8;
    if (!strcmp(d, "F8_E4M3")) return 1;
    return 2;
}

static uint64_t numel(const struct spec *s) {
    uint64_t n = 1;
    for (int i = 0; i < s->n_dims; i++) n *= s->dims[i];
    return n;
}

static void write_text(const char *dir, const char *name, const char *txt) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    if (!f) {
        perror(p);
        return;
    }
    fputs(txt, f);
    fclose(f);
}

/* The tiny safetensors writer: header JSON padded to 8 bytes, then data. */
static void st_write_file(const char *path, const struct spec *s, int n,
                          uint32_t F) {
    size_t cap = 1 << 16, k = 0;
    char *hdr = malloc(cap);
    uint64_t off = 0;
    k += (size_t)snprintf(hdr + k, cap - k, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (int i = 0; i < n; i++) {
        uint64_t sz = numel(&s[i]) * dtype_size(s[i].dtype);
        k += (size_t)snprintf(hdr + k, cap - k, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[",
                              s[i].name, s[i].dtype);
        for (int d = 0; d < s[i].n_dims; d++)
            k += (size_t)snprintf(hdr + k, cap - k, "%s%llu", d ? "," : "",
                                  (unsigned long long)s[i].dims[d]);
        k += (size_t)snprintf(hdr + k, cap - k, "],\"data_offsets\":[%llu,%llu]}",
                              (unsigned long long)off,
                              (unsigned long long)(off + sz));
        off += sz;
    }
    k += (size_t)snprintf(hdr + k, cap - k, "}");
    while (k % 8) hdr[k++] = ' ';
    FILE *f = fopen(path, "wb");
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)k >> (8 * i));
    fwrite(len8, 1, 8, f);
    fwrite(hdr, 1, k, f);
    for (int i = 0; i < n; i++) {
        uint64_t m = numel(&s[i]);
        uint32_t es = dtype_size(s[i].dtype);
        uint8_t *buf = calloc(m, es);
        for (uint64_t j = 0; j < m; j++) {
            float v = spec_val(&s[i], j, F);
            if (s[i].nan && j == 5) v = NAN;
            uint8_t *p = buf + j * es;
            if (!strcmp(s[i].dtype, "F32")) {
                memcpy(p, &v, 4);
            } else if (!strcmp(s[i].dtype, "BF16")) {
                uint16_t h = sl_f32_to_bf16(v);
                memcpy(p, &h, 2);
            } else if (!strcmp(s[i].dtype, "F16")) {
                uint16_t h = sl_f32_to_f16(v);
                memcpy(p, &h, 2);
            } /* other dtypes: zeros */
        }
        fwrite(buf, es, m, f);
        free(buf);
    }
    fclose(f);
    free(hdr);
}

static char *fx_config(const struct fx *o) {
    static char buf[2048];
    snprintf(buf, sizeof buf,
             "{\"architectures\": [\"Qwen3MoeForCausalLM\"],"
             " \"model_type\": \"qwen3_moe\", \"num_hidden_layers\": %d,"
             " \"hidden_size\": %d, \"num_attention_heads\": %d,"
             " \"num_key_value_heads\": %d, \"head_dim\": %d,"
             " \"vocab_size\": %d, \"max_position_embeddings\": 128,"
             " \"intermediate_size\": %d, \"moe_intermediate_size\": %u,"
             " \"num_experts\": %d, \"num_experts_per_tok\": 2,"
             " \"norm_topk_prob\": true, \"decoder_sparse_step\": 1,"
             " \"mlp_only_layers\": [1], \"rms_norm_eps\": 1e-06,"
             " \"rope_theta\": 1000000.0, \"rope_scaling\": null,"
             " \"attention_bias\": %s, \"tie_word_embeddings\": %s,"
             " \"hidden_act\": \"silu\", \"use_sliding_window\": false,"
             "%s \"torch_dtype\": \"bfloat16\"}",
             L, H, NH, NKV, HD, V, FFN, o->moe_ffn ? o->moe_ffn : 32, E,
             o->bias ? "true" : "false", o->tie ? "true" : "false",
             o->no_ids ? "" : " \"bos_token_id\": 90, \"eos_token_id\": 91,");
    return buf;
}

static const char *tokenizer_config_json =
    "{\"add_bos_token\": false, \"bos_token\": null,"
    " \"eos_token\": {\"content\": \"<|im_end|>\", \"special\": true},"
    " \"pad_token\": \"<|endoftext|>\", \"model_max_length\": 128,"
    " \"chat_template\": \"{% for m in messages %}{{ m.content }}{% endfor %}\","
    " \"added_tokens_decoder\": {\"93\": {\"content\": \"<|im_end|>\","
    " \"special\": true}, \"94\": {\"content\": \"<|endoftext|>\"}}}";

/* Writes the whole checkpoint into a fresh temporary directory. */
static void fx_write(char *dir, const struct fx *o) {
    strcpy(dir, "/tmp/sluice_conv_XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return;
    }
    write_text(dir, "config.json", fx_config(o));
    if (!o->no_generation)
        write_text(dir, "generation_config.json",
                   "{\"bos_token_id\": 90, \"eos_token_id\": [93, 94]}");
    write_text(dir, "tokenizer_config.json", tokenizer_config_json);
    if (!o->no_tokenizer)
        write_text(dir, "tokenizer.json", "{\"version\": \"1.0\", \"model\": {}}");
    static struct spec s[256];
    int n = fx_specs(o, s);
    uint32_t F = o->moe_ffn ? o->moe_ffn : 32;
    char p[512];
    int shards = o->n_shards > 1 ? o->n_shards : 1;
    if (shards == 1) {
        snprintf(p, sizeof p, "%s/model.safetensors", dir);
        st_write_file(p, s, n, F);
        return;
    }
    /* Tensor i goes to shard i % shards; index.json maps every name. */
    static struct spec part[256];
    char *idx = malloc(1 << 16);
    size_t k = (size_t)snprintf(idx, 1 << 16, "{\"metadata\": {\"total_size\": 0},"
                                " \"weight_map\": {");
    int first = 1;
    for (int sh = 0; sh < shards; sh++) {
        int m = 0;
        char fname[64];
        snprintf(fname, sizeof fname, "model-%05d-of-%05d.safetensors", sh + 1,
                 shards);
        for (int i = sh; i < n; i += shards) {
            part[m++] = s[i];
            k += (size_t)snprintf(idx + k, (1 << 16) - k, "%s\"%s\": \"%s\"",
                                  first ? "" : ", ", s[i].name, fname);
            first = 0;
        }
        snprintf(p, sizeof p, "%s/%s", dir, fname);
        st_write_file(p, part, m, F);
    }
    snprintf(idx + k, (1 << 16) - k, "}}");
    write_text(dir, "model.safetensors.index.json", idx);
    free(idx);
}

static void rm_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *de;
    char p[512];
    while ((de = readdir(d)))
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
            snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
            unlink(p);
        }
    closedir(d);
    rmdir(dir);
}

/* ---- log capture ---- */

static char log_text[8192];
static void log_capture(int level, const char *msg, void *user) {
    (void)level;
    (void)user;
    size_t k = strlen(log_text);
    snprintf(log_text + k, sizeof log_text - k, "%s\n", msg);
}
static void log_start(void) {
    log_text[0] = 0;
    sl_set_log(log_capture, NULL, SL_LOG_WARN);
}

/* ---- checks on the converted file ---- */

static struct sl_convert_params params(int expert, int dense) {
    struct sl_convert_params p = sl_convert_default_params();
    p.expert_dtype = expert;
    p.dense_dtype = dense;
    return p;
}

/* Max |error| a stored dtype may add to values in [-1, 1]. */
static float tolerance(int dtype) {
    if (dtype == SL_DTYPE_Q8) return 0.5f / 127 + 1e-3f; /* half a step */
    if (dtype == SL_DTYPE_Q4) return 0.5f * 2 / 15 + 2e-3f;
    return 0; /* f32, bf16: exact for k/128 values */
}

/* Compares stored rows against the logical values of name. bf16 is checked
 * on the bits. */
static void check_rows(const char *what, int dtype, const uint8_t *data,
                       uint64_t rows, uint64_t cols, const char *name) {
    uint64_t rb = quant_row_bytes(dtype, cols);
    float *got = malloc(cols * sizeof *got), *want = malloc(cols * sizeof *want);
    int ok = 1;
    for (uint64_t r = 0; r < rows && ok; r++) {
        quant_row_to_f32(dtype, data + r * rb, got, cols);
        for (uint64_t c = 0; c < cols; c++) want[c] = val(name, r * cols + c);
        if (dtype == SL_DTYPE_BF16)
            for (uint64_t c = 0; c < cols; c++) {
                uint16_t h;
                memcpy(&h, data + r * rb + 2 * c, 2);
                ok &= h == sl_f32_to_bf16(want[c]);
            }
        ok &= check_tensor(what, got, want, cols, -1, tolerance(dtype));
    }
    CHECK_MSG(ok, "%s", what);
    free(got);
    free(want);
}

/* Opens out and checks every tensor and record against the fixture. */
static void check_model(const char *out, const struct fx *o, int expert_dtype,
                        int dense_dtype) {
    struct sl_file f;
    int rc = file_open(&f, out, 1);
    CHECK_MSG(rc == SL_OK, "file_open: %s", sl_errmsg());
    if (rc) return;
    struct sl_config c;
    CHECK_EQ_INT(config_parse(&c, f.manifest, f.manifest_len), SL_OK);
    CHECK_EQ_INT(c.n_layers, L);
    CHECK_EQ_INT(c.layer_is_moe[1], 0);
    CHECK_EQ_INT(c.layer_is_moe[2], 1);
    CHECK_EQ_INT(c.tie_embeddings, o->tie);
    CHECK_EQ_INT(c.n_eos, o->no_generation ? 1 : 2);
    CHECK_EQ_INT(c.eos_ids[0], o->no_generation ? 91 : 93);
    CHECK_EQ_INT(c.bos_id, 90);

    static struct spec s[256];
    struct fx plain = *o;
    plain.fused = 0;
    plain.extra = 0;
    int n = fx_specs(&plain, s);
    uint32_t F = o->moe_ffn ? o->moe_ffn : 32;
    int n_dense = 0;
    for (int i = 0; i < n; i++) {
        if (strstr(s[i].name, ".experts.")) continue;
        n_dense++;
        const struct sl_tensor_info *t = file_find_tensor(&f, s[i].name);
        CHECK_MSG(t != NULL, "tensor %s missing from the output", s[i].name);
        if (!t) continue;
        int want_dtype = s[i].n_dims == 1 || strstr(s[i].name, "mlp.gate.weight")
                             ? SL_DTYPE_F32
                             : dense_dtype;
        CHECK_MSG(t->dtype == want_dtype, "%s: dtype %d", s[i].name, t->dtype);
        CHECK_EQ_INT(t->n_dims, s[i].n_dims);
        CHECK_EQ_INT(t->dims[0], s[i].dims[0]);
        uint64_t rows = s[i].n_dims == 1 ? 1 : s[i].dims[0];
        uint64_t cols = s[i].n_dims == 1 ? s[i].dims[0] : s[i].dims[1];
        check_rows(s[i].name, t->dtype, f.map + t->offset, rows, cols, s[i].name);
    }
    CHECK_EQ_INT(f.n_tensors, n_dense);
    CHECK(file_find_tensor(&f, "lm_head.weight") == NULL || !o->tie);
    CHECK(file_find_tensor(&f, "model.layers.0.self_attn.rotary_emb.inv_freq") ==
          NULL);
    CHECK_EQ_INT(f.n_expert_layers, 2);
    for (int l = 0; l < L; l++) {
        const struct sl_expert_layer *el = file_expert_layer(&f, (uint32_t)l);
        CHECK_EQ_INT(el != NULL, layer_moe(l));
        if (!el) continue;
        CHECK_EQ_INT(el->n_experts, E);
        uint64_t rows[3] = {F, F, H}, cols[3] = {H, H, F};
        for (int k = 0; k < 3; k++) {
            int want = quant_dtype_fits(expert_dtype, cols[k]) ? expert_dtype
                                                               : SL_DTYPE_BF16;
            CHECK_EQ_INT(el->part[k].dtype, want);
            CHECK_EQ_INT(el->part[k].rows, rows[k]);
            CHECK_EQ_INT(el->part[k].cols, cols[k]);
        }
        for (int e = 0; e < E; e++)
            for (int k = 0; k < 3; k++) {
                char name[128];
                expert_name(name, sizeof name, l, (uint64_t)e, k);
                check_rows(name, el->part[k].dtype,
                           f.map + el->offsets[e] + el->part[k].offset, rows[k],
                           cols[k], name);
            }
    }
    /* The tokenizer config section. */
    CHECK_EQ_INT(f.tokenizer != NULL, !o->no_tokenizer);
    char tc[4096];
    snprintf(tc, sizeof tc, "%.*s", (int)f.tokenizer_config_len,
             f.tokenizer_config ? f.tokenizer_config : "");
    CHECK_MSG(strstr(tc, "\"chat_template\":\"{% for m in messages %}") != NULL,
              "%s", tc);
    CHECK_MSG(strstr(tc, "\"eos_token\":\"<|im_end|>\"") != NULL, "%s", tc);
    CHECK_MSG(strstr(tc, "\"bos_token\":null") != NULL, "%s", tc);
    CHECK_MSG(strstr(tc, o->no_generation ? "\"eos_token_ids\":[91]"
                                          : "\"eos_token_ids\":[93,94]") != NULL,
              "%s", tc);
    CHECK_MSG(strstr(tc, "\"bos_token_id\":90") != NULL, "%s", tc);
    CHECK_MSG(strstr(tc, "\"special_tokens\":{\"eos_token\":\"<|im_end|>\","
                         "\"pad_token\":\"<|endoftext|>\"}") != NULL, "%s", tc);
    file_close(&f);
}

static int read_all(const char *path, char **data, size_t *len) {
    return sl_read_file(path, data, len);
}

static int same_file(const char *a, const char *b) {
    char *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    int same = read_all(a, &x, &nx) == SL_OK && read_all(b, &y, &ny) == SL_OK &&
               nx == ny && memcmp(x, y, nx) == 0;
    sl_free(x);
    sl_free(y);
    return same;
}

/* Converts fixture o; returns the status and leaves the output at out. */
static int convert_fx(const struct fx *o, const struct sl_convert_params *p,
                      char *dir, char *out) {
    fx_write(dir, o);
    snprintf(out, 600, "%s/out.sluice", dir);
    return sl_convert(dir, out, p);
}

/* ---- tests: good input ---- */

TEST(test_bf16_exact_and_layouts_agree) {
    struct sl_convert_params p = params(SL_DTYPE_BF16, SL_DTYPE_BF16);
    struct fx base = {.dtype = "BF16"};
    char dir0[64], out0[600];
    int rc = convert_fx(&base, &p, dir0, out0);
    CHECK_MSG(rc == SL_OK, "%s", sl_errmsg());
    if (rc) return;
    check_model(out0, &base, SL_DTYPE_BF16, SL_DTYPE_BF16);
    /* Same model as f32, f16, sharded, fused, sharded+fused+f32: the output
     * file must be byte-identical; a second run too (determinism). */
    struct fx variants[6] = {
        {.dtype = "BF16"},
        {.dtype = "F32"},
        {.dtype = "F16"},
        {.dtype = "BF16", .n_shards = 3},
        {.dtype = "BF16", .fused = 1},
        {.dtype = "F32", .fused = 1, .n_shards = 2},
    };
    for (int v = 0; v < 6; v++) {
        char dir[64], out[600];
        rc = convert_fx(&variants[v], &p, dir, out);
        CHECK_MSG(rc == SL_OK, "variant %d: %s", v, sl_errmsg());
        CHECK_MSG(same_file(out0, out), "variant %d differs from the bf16 "
                  "single-file conversion", v);
        if (v == 4) check_model(out, &variants[v], SL_DTYPE_BF16, SL_DTYPE_BF16);
        rm_dir(dir);
    }
    rm_dir(dir0);
}

TEST(test_quantized_formats) {
    int combos[3][2] = {{SL_DTYPE_Q8, SL_DTYPE_Q8},
                        {SL_DTYPE_Q4, SL_DTYPE_BF16},
                        {SL_DTYPE_Q4, SL_DTYPE_F32}};
    for (int k = 0; k < 3; k++) {
        struct sl_convert_params p = params(combos[k][0], combos[k][1]);
        struct fx o = {.dtype = "BF16", .fused = k == 1};
        char dir[64], out[600];
        int rc = convert_fx(&o, &p, dir, out);
        CHECK_MSG(rc == SL_OK, "%s", sl_errmsg());
        if (!rc) check_model(out, &o, combos[k][0], combos[k][1]);
        rm_dir(dir);
    }
}

TEST(test_fallback_tied_bias_extras) {
    /* moe_ffn 48: the down matrix (48 columns) cannot be q4 and is stored
     * bf16 with one warning; gate/up (64 columns) stay q4. */
    struct sl_convert_params p = params(SL_DTYPE_Q4, SL_DTYPE_BF16);
    struct fx o = {.dtype = "F16", .moe_ffn = 48, .tie = 1, .bias = 1,
                   .extra = 1, .no_tokenizer = 1, .no_generation = 1};
    char dir[64], out[600];
    log_start();
    int rc = convert_fx(&o, &p, dir, out);
    sl_set_log(NULL, NULL, 0);
    CHECK_MSG(rc == SL_OK, "%s", sl_errmsg());
    if (!rc) check_model(out, &o, SL_DTYPE_Q4, SL_DTYPE_BF16);
    CHECK_MSG(strstr(log_text, "not a multiple of 32") != NULL, "%s", log_text);
    CHECK_MSG(strstr(log_text, "skipping tensor model.layers.0.self_attn."
                               "rotary_emb.inv_freq") != NULL, "%s", log_text);
    CHECK_MSG(strstr(log_text, "no tokenizer.json") != NULL, "%s", log_text);
    /* One fallback warning, not one per expert. */
    const char *first = strstr(log_text, "not a multiple");
    CHECK(first && !strstr(first + 1, "not a multiple"));
    rm_dir(dir);
}

/* With no ids in config.json or generation_config.json, eos comes from
 * tokenizer_config.json's eos_token through added_tokens_decoder. */
TEST(test_eos_from_tokenizer_config) {
    struct sl_convert_params p = params(SL_DTYPE_Q8, SL_DTYPE_BF16);
    struct fx o = {.dtype = "BF16", .no_ids = 1, .no_generation = 1};
    char dir[64], out[600];
    int rc = convert_fx(&o, &p, dir, out);
    CHECK_MSG(rc == SL_OK, "%s", sl_errmsg());
    struct sl_file f;
    if (!rc && file_open(&f, out, 0) == SL_OK) {
        struct sl_config c;
        CHECK_EQ_INT(config_parse(&c, f.manifest, f.manifest_len), SL_OK);
        CHECK_EQ_INT(c.n_eos, 1);
        CHECK_EQ_INT(c.eos_ids[0], 93);
        CHECK_EQ_INT(c.bos_id, -1);
        char tc[4096];
        snprintf(tc, sizeof tc, "%.*s", (int)f.tokenizer_config_len,
                 f.tokenizer_config);
        CHECK_MSG(strstr(tc, "\"eos_token_ids\":[93]") &&
                      strstr(tc, "\"bos_token_id\":null"), "%s", tc);
        file_close(&f);
    } else {
        CHECK_MSG(0, "file_open: %s", sl_errmsg());
    }
    rm_dir(dir);
}

TEST(test_progress_bar) {
    struct sl_convert_params p = params(SL_DTYPE_Q8, SL_DTYPE_BF16);
    p.progress = 1;
    struct fx o = {.dtype = "BF16"};
    char dir[64], out[600];
    /* Redirect stderr to a file to see the bar. */
    char errp[128];
    snprintf(errp, sizeof errp, "/tmp/sluice_conv_err_%d", (int)getpid());
    fflush(stderr);
    int saved = dup(2);
    int fd = open(errp, O_CREAT | O_TRUNC | O_WRONLY, 0600);
    dup2(fd, 2);
    close(fd);
    int rc = convert_fx(&o, &p, dir, out);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    CHECK_MSG(rc == SL_OK, "%s", sl_errmsg());
    char *txt = NULL;
    size_t len = 0;
    CHECK_EQ_INT(sl_read_file(errp, &txt, &len), SL_OK);
    CHECK_MSG(txt && strstr(txt, "100%") && strstr(txt, "\r["), "%s",
              txt ? txt : "");
    sl_free(txt);
    unlink(errp);
    rm_dir(dir);
}

TEST(test_safetensors_reader) {
    struct fx o = {.dtype = "F16", .n_shards = 2};
    char dir[64];
    fx_write(dir, &o);
    struct st_set *st = NULL;
    int rc = st_open_dir(dir, &st);
    CHECK_MSG(rc == SL_OK, "%s", sl_errmsg());
    if (rc) return;
    const struct st_tensor *t = st_find(st, "model.embed_tokens.weight");
    CHECK(t != NULL && t->dtype == SL_DTYPE_F16 && t->n_dims == 2 &&
          t->dims[0] == V && t->dims[1] == H);
    CHECK(st_find(st, "model.embed_tokens") == NULL);
    /* Names are sorted and indexed. */
    for (uint32_t i = 1; i < st_count(st); i++)
        CHECK(strcmp(st_at(st, i - 1)->name, st_at(st, i)->name) < 0 &&
              st_at(st, i)->index == i);
    if (t) {
        float rows[3 * H], all[V * H];
        CHECK_EQ_INT(st_read_rows_f32(st, t, 10, 3, rows), SL_OK);
        CHECK_EQ_INT(st_read_f32(st, t, all), SL_OK);
        for (int i = 0; i < 3 * H; i++) {
            CHECK(rows[i] == val(t->name, 10 * H + (uint64_t)i));
            CHECK(rows[i] == all[10 * H + i]);
        }
        CHECK_EQ_INT(st_read_rows_f32(st, t, V - 1, 2, rows), SL_ERR_RANGE);
    }
    st_close(st);
    rm_dir(dir);
}

/* ---- tests: bad input ---- */

/* Converts o and expects status with every one of the want substrings in the
 * message, and no output file left behind. */
static void expect_fail(const struct fx *o, int status, const char *want1,
                        const char *want2) {
    struct sl_convert_params p = params(SL_DTYPE_Q8, SL_DTYPE_BF16);
    char dir[64], out[600];
    int rc = convert_fx(o, &p, dir, out);
    CHECK_EQ_INT(rc, status);
    CHECK_MSG(strstr(sl_errmsg(), want1) != NULL, "message '%s' lacks '%s'",
              sl_errmsg(), want1);
    if (want2)
        CHECK_MSG(strstr(sl_errmsg(), want2) != NULL, "message '%s' lacks '%s'",
                  sl_errmsg(), want2);
    CHECK_MSG(access(out, F_OK) != 0, "partial output %s left behind", out);
    rm_dir(dir);
}

TEST(test_bad_tensors) {
    struct fx o = {.dtype = "BF16",
                   .drop = "model.layers.2.mlp.experts.3.up_proj.weight"};
    expect_fail(&o, SL_ERR_FORMAT,
                "missing tensor model.layers.2.mlp.experts.3.up_proj.weight", NULL);
    o = (struct fx){.dtype = "BF16", .fused = 1,
                    .drop = "model.layers.2.mlp.experts.down_proj"};
    expect_fail(&o, SL_ERR_FORMAT, "missing tensor model.layers.2.mlp.experts."
                "down_proj", NULL);
    o = (struct fx){.dtype = "BF16", .drop = "lm_head.weight"};
    expect_fail(&o, SL_ERR_FORMAT, "missing tensor lm_head.weight", NULL);
    o = (struct fx){.dtype = "BF16",
                    .swap = "model.layers.0.mlp.experts.1.down_proj.weight"};
    expect_fail(&o, SL_ERR_FORMAT,
                "tensor model.layers.0.mlp.experts.1.down_proj.weight: "
                "expected [64, 32], got [32, 64]", NULL);
    o = (struct fx){.dtype = "F32", .fused = 1,
                    .swap = "model.layers.1.mlp.down_proj.weight"};
    expect_fail(&o, SL_ERR_FORMAT, "expected [64, 96], got [96, 64]", NULL);
    o = (struct fx){.dtype = "BF16", .bad_dtype_of = "model.layers.0.self_attn."
                    "q_proj.weight", .bad_dtype = "I64"};
    expect_fail(&o, SL_ERR_UNSUPPORTED, "model.layers.0.self_attn.q_proj.weight",
                "I64");
    o = (struct fx){.dtype = "BF16", .bad_dtype_of = "model.layers.2.mlp.experts."
                    "0.gate_proj.weight", .bad_dtype = "F8_E4M3"};
    expect_fail(&o, SL_ERR_UNSUPPORTED, "F8_E4M3", "experts.0.gate_proj");
    o = (struct fx){.dtype = "BF16", .nan_in = "model.layers.1.mlp.up_proj.weight"};
    expect_fail(&o, SL_ERR_FORMAT, "model.layers.1.mlp.up_proj.weight",
                "non-finite");
    o = (struct fx){.dtype = "F32", .fused = 1,
                    .nan_in = "model.layers.2.mlp.experts.gate_up_proj"};
    expect_fail(&o, SL_ERR_FORMAT, "gate_up_proj (expert 0 gate)", "non-finite");
}

TEST(test_bad_params) {
    struct sl_convert_params p = params(SL_DTYPE_F32, SL_DTYPE_BF16);
    CHECK_EQ_INT(sl_convert("/nonexistent", "/tmp/x.sluice", &p), SL_ERR_ARG);
    CHECK(strstr(sl_errmsg(), "expert dtype f32") != NULL);
    p = params(SL_DTYPE_Q4, SL_DTYPE_Q4);
    CHECK_EQ_INT(sl_convert("/nonexistent", "/tmp/x.sluice", &p), SL_ERR_ARG);
    CHECK(strstr(sl_errmsg(), "dense dtype q4") != NULL);
    CHECK_EQ_INT(sl_convert(NULL, "/tmp/x.sluice", NULL), SL_ERR_ARG);
}

/* dst = src with the first occurrence of from replaced by to. */
static void subst(char *dst, size_t cap, const char *src, const char *from,
                  const char *to) {
    const char *q = strstr(src, from);
    if (!q) {
        fprintf(stderr, "test bug: '%s' not found\n", from);
        snprintf(dst, cap, "%s", src);
        return;
    }
    snprintf(dst, cap, "%.*s%s%s", (int)(q - src), src, to, q + strlen(from));
}

/* Writes a good checkpoint, replaces config.json with text (NULL: delete
 * it), converts and checks status and message. */
static void expect_config_fail(const char *text, int status, const char *want) {
    struct fx o = {.dtype = "BF16"};
    char dir[64], p[600], out[600];
    fx_write(dir, &o);
    snprintf(p, sizeof p, "%s/config.json", dir);
    if (text) write_text(dir, "config.json", text);
    else unlink(p);
    snprintf(out, sizeof out, "%s/out.sluice", dir);
    CHECK_EQ_INT(sl_convert(dir, out, NULL), status);
    CHECK_MSG(strstr(sl_errmsg(), want) != NULL, "message '%s' lacks '%s'",
              sl_errmsg(), want);
    CHECK(access(out, F_OK) != 0);
    rm_dir(dir);
}

TEST(test_bad_config) {
    expect_config_fail(NULL, SL_ERR_CONFIG, "config.json: not found");
    expect_config_fail("this is not json", SL_ERR_CONFIG, "not valid JSON");
    struct fx o = {.dtype = "BF16"};
    char cfg[2048], *p;
    (void)p;
    /* Missing key. */
    subst(cfg, sizeof cfg, fx_config(&o), " \"vocab_size\": 96,", "");
    expect_config_fail(cfg, SL_ERR_CONFIG, "config.json: missing required key "
                       "'vocab_size'");
    /* Wrong type. */
    subst(cfg, sizeof cfg, fx_config(&o), "\"num_experts\": 4",
          "\"num_experts\": \"4\"");
    expect_config_fail(cfg, SL_ERR_CONFIG, "'num_experts' must be an integer, "
                       "got a string");
    /* Unknown model_type lists the supported ones. */
    subst(cfg, sizeof cfg, fx_config(&o), "\"qwen3_moe\"", "\"llama\"");
    expect_config_fail(cfg, SL_ERR_UNSUPPORTED, "model_type 'llama' is not "
                       "supported; supported: qwen3_moe");
    /* Inconsistent heads: 4 query heads, 3 kv heads. */
    subst(cfg, sizeof cfg, fx_config(&o), "\"num_key_value_heads\": 2",
          "\"num_key_value_heads\": 3");
    expect_config_fail(cfg, SL_ERR_CONFIG, "not a multiple of "
                       "num_key_value_heads = 3");
    /* A pre-quantized checkpoint. */
    snprintf(cfg, sizeof cfg, "%s", fx_config(&o));
    p = strrchr(cfg, '}');
    snprintf(p, 200, ", \"quantization_config\": {\"quant_method\": \"fp8\"}}");
    expect_config_fail(cfg, SL_ERR_UNSUPPORTED, "quant_method 'fp8'");
}

TEST(test_bad_tokenizer_config) {
    const char *bad[3][2] = {
        {"{\"chat_template\": ", "tokenizer_config.json: not a valid JSON"},
        {"{\"chat_template\": 5}", "chat_template must be a string"},
        {"{\"eos_token\": [1]}", "eos_token must be a string"},
    };
    for (int i = 0; i < 3; i++) {
        struct fx o = {.dtype = "BF16"};
        char dir[64], out[600];
        fx_write(dir, &o);
        write_text(dir, "tokenizer_config.json", bad[i][0]);
        snprintf(out, sizeof out, "%s/out.sluice", dir);
        CHECK_EQ_INT(sl_convert(dir, out, NULL), SL_ERR_FORMAT);
        CHECK_MSG(strstr(sl_errmsg(), bad[i][1]) != NULL, "'%s' lacks '%s'",
                  sl_errmsg(), bad[i][1]);
        CHECK(access(out, F_OK) != 0);
        rm_dir(dir);
    }
}

/* Allocation failure at every allocation point in turn: a clean error and
 * no output each time, until the conversion succeeds. */
TEST(test_alloc_failures) {
    struct fx o = {.dtype = "BF16", .n_shards = 2};
    struct sl_convert_params p = params(SL_DTYPE_Q4, SL_DTYPE_BF16);
    char dir[64], out[600];
    fx_write(dir, &o);
    snprintf(out, sizeof out, "%s/out.sluice", dir);
    sl_set_log(NULL, NULL, 0);
    int n, rc = -1;
    for (n = 1; n < 5000; n++) {
        sl_alloc_fail_after(n);
        rc = sl_convert(dir, out, &p);
        sl_alloc_fail_after(0);
        if (rc == SL_OK) break;
        CHECK_MSG(rc == SL_ERR_NOMEM, "failure %d: status %d: %s", n, rc,
                  sl_errmsg());
        CHECK_MSG(access(out, F_OK) != 0, "failure %d left output", n);
        if (rc != SL_ERR_NOMEM) break;
    }
    CHECK_MSG(rc == SL_OK, "never succeeded (n = %d)", n);
    CHECK(n > 10);
    printf("  alloc failure points exercised: %d\n", n - 1);
    rm_dir(dir);
}

/* Writes a good checkpoint, then damages model.safetensors with fn. */
static void expect_file_fail(void (*damage)(const char *path), int status,
                             const char *want) {
    struct fx o = {.dtype = "BF16"};
    char dir[64], p[600], out[600];
    fx_write(dir, &o);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    damage(p);
    snprintf(out, sizeof out, "%s/out.sluice", dir);
    CHECK_EQ_INT(sl_convert(dir, out, NULL), status);
    CHECK_MSG(strstr(sl_errmsg(), want) != NULL, "message '%s' lacks '%s'",
              sl_errmsg(), want);
    CHECK(access(out, F_OK) != 0);
    rm_dir(dir);
}

static void damage_truncate(const char *p) {
    struct stat st;
    stat(p, &st);
    if (truncate(p, st.st_size - 100) != 0) perror("truncate");
}
static void damage_header_len(const char *p) {
    int fd = open(p, O_WRONLY);
    uint8_t big[8] = {0, 0, 0, 0x10, 0, 0, 0, 0}; /* 256 MiB */
    if (pwrite(fd, big, 8, 0) != 8) perror("pwrite");
    close(fd);
}
static void damage_header_json(const char *p) {
    int fd = open(p, O_WRONLY);
    if (pwrite(fd, "{\"x\":[", 6, 8) != 6) perror("pwrite");
    close(fd);
}
static void damage_tiny(const char *p) {
    if (truncate(p, 5) != 0) perror("truncate");
}
static void damage_offsets(const char *p) {
    /* Make the first tensor's data_offsets claim one byte more: the size no
     * longer matches its shape. */
    char *txt;
    size_t len;
    if (sl_read_file(p, &txt, &len)) return;
    char *q = len > 8 ? strstr(txt + 8, "\"data_offsets\":[0,") : NULL;
    if (q) {
        q += strlen("\"data_offsets\":[0,");
        unsigned long v = strtoul(q, NULL, 10);
        char num[32];
        int n = snprintf(num, sizeof num, "%lu", v + 1);
        int old = (int)strspn(q, "0123456789");
        if (n == old) memcpy(q, num, (size_t)n);
    }
    FILE *f = fopen(p, "wb");
    fwrite(txt, 1, len, f);
    fclose(f);
    sl_free(txt);
}

TEST(test_bad_safetensors) {
    expect_file_fail(damage_truncate, SL_ERR_FORMAT, "extends past the end");
    expect_file_fail(damage_header_len, SL_ERR_FORMAT, "exceeds the file size");
    expect_file_fail(damage_header_json, SL_ERR_FORMAT,
                     "header is not a valid JSON object");
    expect_file_fail(damage_tiny, SL_ERR_FORMAT, "too short");
    expect_file_fail(damage_offsets, SL_ERR_FORMAT, "data_offsets span");
}

TEST(test_bad_shards) {
    /* index.json names a shard that is not there. */
    struct fx o = {.dtype = "BF16", .n_shards = 2};
    char dir[64], p[600], out[600];
    fx_write(dir, &o);
    snprintf(p, sizeof p, "%s/model-00002-of-00002.safetensors", dir);
    unlink(p);
    snprintf(out, sizeof out, "%s/out.sluice", dir);
    CHECK_EQ_INT(sl_convert(dir, out, NULL), SL_ERR_IO);
    CHECK_MSG(strstr(sl_errmsg(), "names shard model-00002-of-00002."
                                  "safetensors, which is missing") != NULL,
              "%s", sl_errmsg());
    rm_dir(dir);
    /* index.json places a tensor in the wrong shard. */
    fx_write(dir, &o);
    char *txt;
    size_t len;
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    if (sl_read_file(p, &txt, &len) == SL_OK) {
        char *q = strstr(txt, "\"model.norm.weight\": \"model-0000");
        if (q) {
            q += strlen("\"model.norm.weight\": \"model-0000");
            *q = *q == '1' ? '2' : '1';
        }
        write_text(dir, "model.safetensors.index.json", txt);
        sl_free(txt);
    }
    CHECK_EQ_INT(sl_convert(dir, out, NULL), SL_ERR_FORMAT);
    CHECK_MSG(strstr(sl_errmsg(), "weight_map places tensor model.norm.weight")
                  != NULL, "%s", sl_errmsg());
    rm_dir(dir);
    /* No weights at all. */
    fx_write(dir, &o);
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    unlink(p);
    for (int i = 1; i <= 2; i++) {
        snprintf(p, sizeof p, "%s/model-%05d-of-00002.safetensors", dir, i);
        unlink(p);
    }
    CHECK_EQ_INT(sl_convert(dir, out, NULL), SL_ERR_IO);
    CHECK_MSG(strstr(sl_errmsg(), "no model.safetensors") != NULL, "%s",
              sl_errmsg());
    rm_dir(dir);
}

TEST_MAIN()
