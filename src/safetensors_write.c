/*
 * safetensors_write.c — `sluice export-hf`: a .sluice qwen3_moe model as a
 * HuggingFace checkpoint directory (contract in safetensors_write.h).
 *
 * Steps: (1) plan — the output tensor list in layer order (embedding, then
 * per layer its dense tensors and its experts, then the rest), each with
 * its HF name, output dtype, shape and byte size, assigned to shards of at
 * most shard_bytes; (2) per shard, the safetensors header and then the
 * data, every row dequantized from the read-only mapping through one row
 * buffer; (3) model.safetensors.index.json, generation_config.json, the
 * tokenizer files and, last, config.json.
 *
 * HF names (src/convert.c's list): dense tensors keep the names they have
 * in the .sluice file (the converter and synth store HF names); routed
 * experts are model.layers.{L}.mlp.experts.{E}.{gate,up,down}_proj.weight,
 * or with fused_experts model.layers.{L}.mlp.experts.gate_up_proj
 * [E, 2*ffn, hidden] (per expert: gate rows, then up rows) and
 * model.layers.{L}.mlp.experts.down_proj [E, hidden, ffn].
 *
 * What it is not: a reader (the tests read the output back with
 * `sluice convert` and with transformers), nor a re-quantizer.
 */
#include <cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "format.h"
#include "quant.h"
#include "safetensors_write.h"
#include "util.h"

#define HF_NAME_MAX (SL_MAX_NAME + 1)

enum hf_src_kind {
    HF_DENSE = 0,     /* one .sluice dense tensor */
    HF_EXPERT = 1,    /* one part of one expert */
    HF_GATE_UP = 2,   /* fused: parts 0 and 1 of every expert */
    HF_DOWN = 3,      /* fused: part 2 of every expert */
};

struct hf_tensor {
    char name[HF_NAME_MAX];
    int kind;                          /* enum hf_src_kind */
    int out_dtype;                     /* SL_DTYPE_BF16 or SL_DTYPE_F32 */
    int n_dims;
    uint64_t shape[3];
    uint64_t bytes;                    /* output bytes */
    const struct sl_tensor_info *src;  /* HF_DENSE */
    const struct sl_expert_layer *el;  /* the others */
    uint32_t expert;                   /* HF_EXPERT */
    int part;                          /* HF_EXPERT */
    uint32_t shard;
    uint64_t offset;                   /* within the shard's data */
};

struct plan {
    struct hf_tensor *t;
    uint32_t n, cap;
    uint32_t n_shards;
    uint64_t *shard_bytes;             /* (n_shards) data bytes */
};

static void plan_free(struct plan *pl) {
    sl_free(pl->t);
    sl_free(pl->shard_bytes);
    memset(pl, 0, sizeof *pl);
}

static struct hf_tensor *plan_add(struct plan *pl) {
    if (pl->n == pl->cap) {
        uint32_t cap = pl->cap ? pl->cap * 2 : 256;
        struct hf_tensor *t = sl_realloc(pl->t, (size_t)cap * sizeof *t);
        if (!t) return NULL;
        pl->t = t;
        pl->cap = cap;
    }
    struct hf_tensor *t = &pl->t[pl->n++];
    memset(t, 0, sizeof *t);
    return t;
}

/* f32 and f16 sources stay exact (f32); the rest follow the request. */
static int out_dtype_of(int src_dtype, int want_f32) {
    if (want_f32 || src_dtype == SL_DTYPE_F32 || src_dtype == SL_DTYPE_F16) return SL_DTYPE_F32;
    return SL_DTYPE_BF16;
}

static uint64_t elt_bytes(int out_dtype) { return out_dtype == SL_DTYPE_F32 ? 4 : 2; }

/* The layer of an HF name "model.layers.L...."; -1 before every layer
 * (the embedding), n_layers after (final norm, lm_head, anything else). */
static long layer_group(const char *name, uint32_t n_layers) {
    if (!strncmp(name, "model.embed_tokens.", 19)) return -1;
    if (strncmp(name, "model.layers.", 13)) return n_layers;
    char *end;
    long l = strtol(name + 13, &end, 10);
    if (end == name + 13 || *end != '.' || l < 0 || (uint64_t)l >= n_layers) return n_layers;
    return l;
}

static int add_dense(struct plan *pl, const struct sl_tensor_info *ti, int want_f32) {
    if (strlen(ti->name) >= HF_NAME_MAX)
        return sl_seterr(SL_ERR_UNSUPPORTED, "tensor name %s is longer than %d bytes",
                         ti->name, HF_NAME_MAX - 1);
    for (const char *c = ti->name; *c; c++)
        if (*c == '"' || *c == '\\' || (unsigned char)*c < 0x20)
            return sl_seterr(SL_ERR_UNSUPPORTED, "tensor name %s has a character "
                             "that needs JSON escaping", ti->name);
    if (ti->n_dims < 1 || ti->n_dims > 3)
        return sl_seterr(SL_ERR_UNSUPPORTED, "tensor %s has %d dims (want 1..3)",
                         ti->name, ti->n_dims);
    uint64_t cols = ti->dims[ti->n_dims - 1], rb = quant_row_bytes(ti->dtype, cols);
    if (!rb || ti->size % rb)
        return sl_seterr(SL_ERR_FORMAT, "tensor %s: %" PRIu64 " bytes are not whole "
                         "rows of %" PRIu64 " %s values", ti->name, ti->size, cols,
                         sl_dtype_name(ti->dtype));
    struct hf_tensor *t = plan_add(pl);
    if (!t) return sl_seterr(SL_ERR_NOMEM, "out of memory for the tensor list");
    snprintf(t->name, sizeof t->name, "%s", ti->name);
    t->kind = HF_DENSE;
    t->out_dtype = out_dtype_of(ti->dtype, want_f32);
    t->n_dims = ti->n_dims;
    for (int i = 0; i < ti->n_dims; i++) t->shape[i] = ti->dims[i];
    t->bytes = ti->size / rb * cols * elt_bytes(t->out_dtype);
    t->src = ti;
    return SL_OK;
}

static int add_experts(struct plan *pl, const struct sl_expert_layer *el, uint32_t l,
                       const struct hf_export_params *p) {
    static const char *const part_name[3] = {"gate_proj", "up_proj", "down_proj"};
    const struct sl_expert_part *ep = el->part;
    if (p->fused_experts) {
        if (ep[0].cols != ep[1].cols || ep[0].rows != ep[1].rows)
            return sl_seterr(SL_ERR_FORMAT, "layer %u: gate [%" PRIu64 ", %" PRIu64
                             "] and up [%" PRIu64 ", %" PRIu64 "] differ in shape", l,
                             ep[0].rows, ep[0].cols, ep[1].rows, ep[1].cols);
        for (int k = 0; k < 2; k++) {
            struct hf_tensor *t = plan_add(pl);
            if (!t) return sl_seterr(SL_ERR_NOMEM, "out of memory for the tensor list");
            const struct sl_expert_part *a = k == 0 ? &ep[0] : &ep[2];
            snprintf(t->name, sizeof t->name, "model.layers.%u.mlp.experts.%s", l,
                     k == 0 ? "gate_up_proj" : "down_proj");
            t->kind = k == 0 ? HF_GATE_UP : HF_DOWN;
            /* gate and up share one tensor: f32 if either needs it */
            int f32 = k == 0 ? (out_dtype_of(ep[0].dtype, p->f32) == SL_DTYPE_F32 ||
                                out_dtype_of(ep[1].dtype, p->f32) == SL_DTYPE_F32)
                             : out_dtype_of(a->dtype, p->f32) == SL_DTYPE_F32;
            t->out_dtype = f32 ? SL_DTYPE_F32 : SL_DTYPE_BF16;
            t->n_dims = 3;
            t->shape[0] = el->n_experts;
            t->shape[1] = k == 0 ? 2 * a->rows : a->rows;
            t->shape[2] = a->cols;
            t->bytes = t->shape[0] * t->shape[1] * t->shape[2] * elt_bytes(t->out_dtype);
            t->el = el;
        }
        return SL_OK;
    }
    for (uint32_t e = 0; e < el->n_experts; e++)
        for (int k = 0; k < 3; k++) {
            struct hf_tensor *t = plan_add(pl);
            if (!t) return sl_seterr(SL_ERR_NOMEM, "out of memory for the tensor list");
            snprintf(t->name, sizeof t->name, "model.layers.%u.mlp.experts.%u.%s.weight", l, e,
                     part_name[k]);
            t->kind = HF_EXPERT;
            t->out_dtype = out_dtype_of(ep[k].dtype, p->f32);
            t->n_dims = 2;
            t->shape[0] = ep[k].rows;
            t->shape[1] = ep[k].cols;
            t->bytes = ep[k].rows * ep[k].cols * elt_bytes(t->out_dtype);
            t->el = el;
            t->expert = e;
            t->part = k;
        }
    return SL_OK;
}

/* The output list in layer order, then shard assignment. */
static int plan_build(struct plan *pl, const struct sl_file *f, const struct sl_config *c,
                      const struct hf_export_params *p) {
    int st;
    for (long g = -1; g <= (long)c->n_layers; g++) {
        for (uint32_t i = 0; i < f->n_tensors; i++)
            if (layer_group(f->tensors[i].name, c->n_layers) == g &&
                (st = add_dense(pl, &f->tensors[i], p->f32)))
                return st;
        if (g < 0 || g >= (long)c->n_layers) continue;
        const struct sl_expert_layer *el = file_expert_layer(f, (uint32_t)g);
        if (c->layer_is_moe[g] && (!el || el->n_experts != c->n_experts))
            return sl_seterr(SL_ERR_FORMAT, "layer %ld: expected %u routed experts, "
                             "found %u", g, c->n_experts, el ? el->n_experts : 0);
        if (el && (st = add_experts(pl, el, (uint32_t)g, p))) return st;
    }
    uint64_t limit = p->shard_bytes ? p->shard_bytes : HF_EXPORT_SHARD_BYTES, cur = 0;
    uint32_t shard = 0;
    for (uint32_t i = 0; i < pl->n; i++) {
        if (cur > 0 && cur + pl->t[i].bytes > limit) {
            shard++;
            cur = 0;
        }
        pl->t[i].shard = shard;
        pl->t[i].offset = cur;
        cur += pl->t[i].bytes;
    }
    pl->n_shards = pl->n ? shard + 1 : 0;
    if (pl->n_shards > 99999)
        return sl_seterr(SL_ERR_ARG, "%u shards (more than 99999): raise the shard "
                         "size", pl->n_shards);
    pl->shard_bytes = sl_calloc(pl->n_shards ? pl->n_shards : 1, sizeof *pl->shard_bytes);
    if (!pl->shard_bytes) return sl_seterr(SL_ERR_NOMEM, "out of memory");
    for (uint32_t i = 0; i < pl->n; i++) pl->shard_bytes[pl->t[i].shard] += pl->t[i].bytes;
    return SL_OK;
}

/* ---- a growable text buffer ---- */

struct sbuf {
    char *s;
    size_t len, cap;
    int oom;
};

static void sb_printf(struct sbuf *b, const char *fmt, ...) SL_PRINTF(2, 3);
static void sb_printf(struct sbuf *b, const char *fmt, ...) {
    if (b->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (k < 0) {
            b->oom = 1;
            return;
        }
        if (b->s && b->len + (size_t)k < b->cap) {
            b->len += (size_t)k;
            return;
        }
        size_t cap = (b->cap ? b->cap * 2 : 4096) + (size_t)k;
        char *s = sl_realloc(b->s, cap);
        if (!s) {
            b->oom = 1;
            return;
        }
        b->s = s;
        b->cap = cap;
    }
}

/* ---- output files with a sticky error ---- */

struct outf {
    FILE *fp;
    char *path;
    int err; /* errno of the first failure */
};

static void o_write(struct outf *o, const void *p, size_t n) {
    if (o->err || !n) return;
    if (fwrite(p, 1, n, o->fp) != n) o->err = errno ? errno : EIO;
}

/* The files created so far, removed on failure. */
struct created {
    char **path;
    uint32_t n, cap;
};

static int created_add(struct created *c, const char *path) {
    if (c->n == c->cap) {
        uint32_t cap = c->cap ? c->cap * 2 : 16;
        char **p = sl_realloc(c->path, cap * sizeof *p);
        if (!p) return sl_seterr(SL_ERR_NOMEM, "out of memory");
        c->path = p;
        c->cap = cap;
    }
    if (!(c->path[c->n] = sl_strdup(path)))
        return sl_seterr(SL_ERR_NOMEM, "out of memory");
    c->n++;
    return SL_OK;
}

static void created_free(struct created *c, int remove_files) {
    for (uint32_t i = 0; i < c->n; i++) {
        if (remove_files) unlink(c->path[i]);
        sl_free(c->path[i]);
    }
    sl_free(c->path);
    memset(c, 0, sizeof *c);
}

/* Opens dir/name for writing and records it in cr. */
static int out_open(struct outf *o, struct created *cr, const char *dir, const char *name) {
    memset(o, 0, sizeof *o);
    if (!(o->path = sl_path_join(dir, name))) return sl_seterr(SL_ERR_NOMEM, "out of memory");
    int st = created_add(cr, o->path);
    if (st) return st;
    if (!(o->fp = fopen(o->path, "wb")))
        return sl_seterr(SL_ERR_IO, "create %s: %s", o->path, strerror(errno));
    setvbuf(o->fp, NULL, _IOFBF, 1 << 20);
    return SL_OK;
}

/* Flushes, fsyncs and closes; reports the first error. Frees o->path. */
static int out_close(struct outf *o) {
    int st = SL_OK;
    if (o->fp) {
        if (!o->err && (fflush(o->fp) || fsync(fileno(o->fp)))) o->err = errno ? errno : EIO;
        if (fclose(o->fp) && !o->err) o->err = errno ? errno : EIO;
        o->fp = NULL;
    }
    if (o->err) st = sl_seterr(SL_ERR_IO, "write %s: %s", o->path, strerror(o->err));
    sl_free(o->path);
    o->path = NULL;
    return st;
}

static int write_text(struct created *cr, const char *dir, const char *name, const char *text,
                      size_t len) {
    struct outf o;
    int st = out_open(&o, cr, dir, name);
    if (!st) o_write(&o, text, len);
    int st2 = out_close(&o);
    return st ? st : st2;
}

/* ---- one shard ---- */

/* Header JSON of shard s, padded with spaces so that 8 + its length is a
 * multiple of 8. */
static int shard_header(const struct plan *pl, uint32_t s, struct sbuf *b) {
    sb_printf(b, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (uint32_t i = 0; i < pl->n; i++) {
        const struct hf_tensor *t = &pl->t[i];
        if (t->shard != s) continue;
        sb_printf(b, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", t->name,
                  t->out_dtype == SL_DTYPE_F32 ? "F32" : "BF16");
        for (int d = 0; d < t->n_dims; d++) sb_printf(b, "%s%" PRIu64, d ? "," : "", t->shape[d]);
        sb_printf(b, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", t->offset,
                  t->offset + t->bytes);
    }
    sb_printf(b, "}");
    while (!b->oom && (8 + b->len) % 8) sb_printf(b, " ");
    return b->oom ? sl_seterr(SL_ERR_NOMEM, "out of memory for a shard header") : SL_OK;
}

/* Dequantizes rows rows of cols values at src (stored dtype) and writes
 * them in out_dtype; f and o are work rows of cols floats / cols*4 bytes. */
static void put_rows(struct outf *o, const uint8_t *src, int dtype, uint64_t rows, uint64_t cols,
                     int out_dtype, float *f, uint16_t *h) {
    uint64_t rb = quant_row_bytes(dtype, cols);
    for (uint64_t r = 0; r < rows && !o->err; r++) {
        if (dtype == SL_DTYPE_BF16 && out_dtype == SL_DTYPE_BF16) {
            o_write(o, src + r * rb, cols * 2); /* bit-identical */
            continue;
        }
        quant_row_to_f32(dtype, src + r * rb, f, cols);
        if (out_dtype == SL_DTYPE_F32) {
            o_write(o, f, cols * 4);
        } else {
            for (uint64_t i = 0; i < cols; i++) h[i] = sl_f32_to_bf16(f[i]);
            o_write(o, h, cols * 2);
        }
    }
}

/* Drops the mapped pages of [off, off + len) from this process once read
 * (they stay in the page cache), so that resident memory stays near one
 * tensor's worth however large the model. Advisory: errors are ignored. */
static void drop_pages(const struct sl_file *f, uint64_t off, uint64_t len) {
    uint64_t pg = (uint64_t)sysconf(_SC_PAGESIZE), a = off / pg * pg;
    if (len) madvise((void *)(uintptr_t)(f->map + a), (size_t)(off + len - a), MADV_DONTNEED);
}

static void put_tensor(struct outf *o, const struct sl_file *f, const struct hf_tensor *t,
                       float *fr, uint16_t *hr) {
    const struct sl_expert_part *ep = t->el ? t->el->part : NULL;
    switch (t->kind) {
    case HF_DENSE: {
        uint64_t cols = t->src->dims[t->src->n_dims - 1];
        uint64_t rows = t->src->size / quant_row_bytes(t->src->dtype, cols);
        put_rows(o, f->map + t->src->offset, t->src->dtype, rows, cols, t->out_dtype, fr, hr);
        drop_pages(f, t->src->offset, t->src->size);
        break;
    }
    case HF_EXPERT:
        put_rows(o, f->map + t->el->offsets[t->expert] + ep[t->part].offset, ep[t->part].dtype,
                 ep[t->part].rows, ep[t->part].cols, t->out_dtype, fr, hr);
        if (t->part == 2) drop_pages(f, t->el->offsets[t->expert], t->el->record_size);
        break;
    case HF_GATE_UP:
    case HF_DOWN:
        for (uint32_t e = 0; e < t->el->n_experts && !o->err; e++) {
            for (int k = t->kind == HF_DOWN ? 2 : 0; k < (t->kind == HF_DOWN ? 3 : 2); k++)
                put_rows(o, f->map + t->el->offsets[e] + ep[k].offset, ep[k].dtype, ep[k].rows,
                         ep[k].cols, t->out_dtype, fr, hr);
            if (t->kind == HF_DOWN) drop_pages(f, t->el->offsets[e], t->el->record_size);
        }
        break;
    }
}

static void shard_name(char *buf, size_t n, uint32_t s, uint32_t n_shards) {
    snprintf(buf, n, "model-%05u-of-%05u.safetensors", s + 1, n_shards);
}

static int write_shard(const struct plan *pl, uint32_t s, const struct sl_file *f,
                       const char *dir, struct created *cr, float *fr, uint16_t *hr,
                       int progress) {
    char name[64];
    shard_name(name, sizeof name, s, pl->n_shards);
    struct sbuf b = {0};
    struct outf o = {0};
    int st = shard_header(pl, s, &b);
    if (!st) st = out_open(&o, cr, dir, name);
    if (!st) {
        uint8_t len[8];
        for (int i = 0; i < 8; i++) len[i] = (uint8_t)((uint64_t)b.len >> (8 * i));
        o_write(&o, len, 8);
        o_write(&o, b.s, b.len);
        for (uint32_t i = 0; i < pl->n && !o.err; i++)
            if (pl->t[i].shard == s) put_tensor(&o, f, &pl->t[i], fr, hr);
    }
    int st2 = o.path ? out_close(&o) : SL_OK;
    sl_free(b.s);
    if (!st && !st2 && progress)
        fprintf(stderr, "export-hf: %s: %.3f GB\n", name, (double)pl->shard_bytes[s] / 1e9);
    return st ? st : st2;
}

/* ---- JSON side files ---- */

static int write_index(const struct plan *pl, const char *dir, struct created *cr,
                       uint64_t total) {
    struct sbuf b = {0};
    char name[64];
    sb_printf(&b, "{\n  \"metadata\": {\"total_size\": %" PRIu64 "},\n  \"weight_map\": {", total);
    for (uint32_t i = 0; i < pl->n; i++) {
        shard_name(name, sizeof name, pl->t[i].shard, pl->n_shards);
        sb_printf(&b, "%s\n    \"%s\": \"%s\"", i ? "," : "", pl->t[i].name, name);
    }
    sb_printf(&b, "\n  }\n}\n");
    int st = b.oom ? sl_seterr(SL_ERR_NOMEM, "out of memory for the index")
                   : write_text(cr, dir, "model.safetensors.index.json", b.s, b.len);
    sl_free(b.s);
    return st;
}

static int write_json(struct created *cr, const char *dir, const char *name, cJSON *j) {
    char *s = j ? cJSON_Print(j) : NULL;
    if (!s) return sl_seterr(SL_ERR_NOMEM, "out of memory for %s", name);
    size_t n = strlen(s);
    char *t = sl_malloc(n + 2);
    int st;
    if (!t) {
        st = sl_seterr(SL_ERR_NOMEM, "out of memory for %s", name);
    } else {
        memcpy(t, s, n);
        t[n] = '\n';
        st = write_text(cr, dir, name, t, n + 1);
    }
    sl_free(t);
    cJSON_free(s);
    return st;
}

/* eos ids as HF writes them: null, one int, or a list. */
static cJSON *eos_json(const struct sl_config *c) {
    if (c->n_eos == 0) return cJSON_CreateNull();
    if (c->n_eos == 1) return cJSON_CreateNumber(c->eos_ids[0]);
    cJSON *a = cJSON_CreateArray();
    for (uint32_t i = 0; a && i < c->n_eos; i++)
        cJSON_AddItemToArray(a, cJSON_CreateNumber(c->eos_ids[i]));
    return a;
}

/* config.json: the manifest (HF keys, every value resolved) without the
 * sluice-only objects, plus architectures and dtype. */
static int write_config(const struct sl_file *f, const struct sl_config *c, int f32,
                        const char *dir, struct created *cr) {
    cJSON *j = cJSON_ParseWithLength(f->manifest, f->manifest_len);
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return sl_seterr(SL_ERR_FORMAT, "the manifest is not a JSON object");
    }
    cJSON_DeleteItemFromObjectCaseSensitive(j, "sluice");
    cJSON_DeleteItemFromObjectCaseSensitive(j, "synth");
    cJSON_DeleteItemFromObjectCaseSensitive(j, "architectures");
    cJSON_DeleteItemFromObjectCaseSensitive(j, "eos_token_id");
    cJSON_DeleteItemFromObjectCaseSensitive(j, "torch_dtype");
    cJSON_DeleteItemFromObjectCaseSensitive(j, "dtype");
    cJSON *arch = cJSON_CreateArray();
    cJSON_AddItemToArray(arch, cJSON_CreateString("Qwen3MoeForCausalLM"));
    cJSON_AddItemToObject(j, "architectures", arch);
    cJSON_AddItemToObject(j, "eos_token_id", eos_json(c));
    cJSON_AddStringToObject(j, "torch_dtype", f32 ? "float32" : "bfloat16");
    int st = write_json(cr, dir, "config.json", j);
    cJSON_Delete(j);
    return st;
}

static int write_generation_config(const struct sl_config *c, const char *dir,
                                   struct created *cr) {
    cJSON *j = cJSON_CreateObject();
    if (j) {
        if (c->bos_id >= 0) cJSON_AddNumberToObject(j, "bos_token_id", c->bos_id);
        else cJSON_AddNullToObject(j, "bos_token_id");
        cJSON_AddItemToObject(j, "eos_token_id", eos_json(c));
    }
    int st = write_json(cr, dir, "generation_config.json", j);
    cJSON_Delete(j);
    return st;
}

/* tokenizer.json verbatim; tokenizer_config.json from the tokenizer
 * config section (chat_template, bos/eos and the other special tokens). */
static int write_tokenizer(const struct sl_file *f, const struct sl_config *c, const char *dir,
                           struct created *cr) {
    int st = write_text(cr, dir, "tokenizer.json", f->tokenizer, f->tokenizer_len);
    if (st) return st;
    cJSON *sec = f->tokenizer_config
                     ? cJSON_ParseWithLength(f->tokenizer_config, f->tokenizer_config_len)
                     : NULL;
    cJSON *j = cJSON_CreateObject();
    if (!j) {
        cJSON_Delete(sec);
        return sl_seterr(SL_ERR_NOMEM, "out of memory");
    }
    cJSON_AddStringToObject(j, "tokenizer_class", "PreTrainedTokenizerFast");
    cJSON_AddNumberToObject(j, "model_max_length", c->n_ctx_train);
    const cJSON *sp = cJSON_GetObjectItemCaseSensitive(sec, "special_tokens"), *e;
    cJSON_ArrayForEach(e, sp)
        if (cJSON_IsString(e) && e->string) cJSON_AddStringToObject(j, e->string, e->valuestring);
    static const char *const keys[] = {"bos_token", "eos_token", "chat_template"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(sec, keys[i]);
        cJSON_DeleteItemFromObjectCaseSensitive(j, keys[i]);
        if (cJSON_IsString(v)) cJSON_AddStringToObject(j, keys[i], v->valuestring);
        else cJSON_AddNullToObject(j, keys[i]);
    }
    st = write_json(cr, dir, "tokenizer_config.json", j);
    cJSON_Delete(j);
    cJSON_Delete(sec);
    return st;
}

/* ---- the output directory ---- */

/* Creates out_dir, or accepts an existing empty directory. *made: created. */
static int prepare_dir(const char *dir, int *made) {
    *made = 0;
    struct stat sb;
    if (stat(dir, &sb) == 0) {
        if (!S_ISDIR(sb.st_mode))
            return sl_seterr(SL_ERR_ARG, "%s exists and is not a directory", dir);
        DIR *d = opendir(dir);
        if (!d) return sl_seterr(SL_ERR_IO, "open directory %s: %s", dir, strerror(errno));
        struct dirent *de;
        int empty = 1;
        while (empty && (de = readdir(d)))
            if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) empty = 0;
        closedir(d);
        if (!empty)
            return sl_seterr(SL_ERR_ARG, "output directory %s exists and is not empty "
                             "(remove it or pick another)", dir);
        return SL_OK;
    }
    if (errno != ENOENT)
        return sl_seterr(SL_ERR_IO, "stat %s: %s", dir, strerror(errno));
    if (mkdir(dir, 0755))
        return sl_seterr(SL_ERR_IO, "create directory %s: %s", dir, strerror(errno));
    *made = 1;
    return SL_OK;
}

int hf_export(const char *in_path, const char *out_dir, const struct hf_export_params *p,
              struct hf_export_report *report) {
    struct hf_export_params dp = {0};
    if (!p) p = &dp;
    if (!in_path || !out_dir || !*out_dir)
        return sl_seterr(SL_ERR_ARG, "missing input or output path");
    double t0 = sl_now();
    struct sl_file f;
    struct sl_config c;
    struct plan pl = {0};
    struct created cr = {0};
    float *fr = NULL;
    uint16_t *hr = NULL;
    int made = 0;
    int st = file_open(&f, in_path, 0);
    if (st) return st;
    if ((st = config_parse(&c, f.manifest, f.manifest_len))) goto done;
    if (c.arch != SL_ARCH_QWEN3_MOE) {
        st = sl_seterr(SL_ERR_UNSUPPORTED, "%s: model_type %s: only qwen3_moe is "
                       "exported", in_path, c.model_type);
        goto done;
    }
    if ((st = plan_build(&pl, &f, &c, p))) goto done;
    uint64_t max_cols = 1, total = 0;
    for (uint32_t i = 0; i < pl.n; i++) {
        uint64_t cols = pl.t[i].shape[pl.t[i].n_dims - 1];
        if (cols > max_cols) max_cols = cols;
        total += pl.t[i].bytes;
    }
    fr = sl_malloc(max_cols * sizeof *fr);
    hr = sl_malloc(max_cols * sizeof *hr);
    if (!fr || !hr) {
        st = sl_seterr(SL_ERR_NOMEM, "out of memory for a row of %" PRIu64, max_cols);
        goto done;
    }
    if ((st = prepare_dir(out_dir, &made))) goto done;
    for (uint32_t s = 0; s < pl.n_shards && !st; s++)
        st = write_shard(&pl, s, &f, out_dir, &cr, fr, hr, p->progress);
    if (!st) st = write_index(&pl, out_dir, &cr, total);
    if (!st) st = write_generation_config(&c, out_dir, &cr);
    if (!st && f.tokenizer) st = write_tokenizer(&f, &c, out_dir, &cr);
    if (!st) st = write_config(&f, &c, p->f32, out_dir, &cr); /* last: marks completion */
    if (!st && report) {
        report->data_bytes = total;
        report->n_tensors = pl.n;
        report->n_shards = pl.n_shards;
        report->tokenizer = f.tokenizer != NULL;
        report->seconds = sl_now() - t0;
    }
done:
    created_free(&cr, st != SL_OK);
    if (st && made) rmdir(out_dir);
    sl_free(fr);
    sl_free(hr);
    plan_free(&pl);
    file_close(&f);
    return st;
}
