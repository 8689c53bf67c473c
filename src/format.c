/*
 * format.c — the .sluice model file: streaming writer and validating reader
 * (API in format.h; the byte-level specification is docs/format.md).
 *
 * What it is not: it does not interpret the manifest or tokenizer JSON (the
 * model and tokenizer modules do), and it does not read expert records (the
 * expert store preads them through f->fd at the offsets exposed here).
 *
 * Invariants:
 *   - Reader: after file_open returns SL_OK, every offset and size in
 *     struct sl_file lies inside the mapping; tensor and expert tables are
 *     sorted (by name, by layer) so lookups are binary searches; nothing
 *     overlaps; every size matches its dtype and shape. All arithmetic on
 *     numbers read from the file is overflow-checked.
 *   - Writer: the output is a pure function of the calls made (padding is
 *     zero, tables are sorted, no timestamps), written to PATH.tmp and
 *     renamed to PATH only by a successful writer_close; any failure removes
 *     PATH.tmp. It holds only tables in memory, never tensor data.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "format.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "quant.h"
#include "util.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "format.c reads little-endian integers with memcpy");

/* ---- byte layout (docs/format.md) ---- */

enum {
    HDR_VERSION = 8,        /* u32 */
    HDR_N_SECTIONS = 12,    /* u32 */
    HDR_FILE_SIZE = 16,     /* u64 */
    HDR_TABLE_OFFSET = 24,  /* u64 */
    HDR_TABLE_HASH = 32,    /* u64 */
    HDR_RESERVED = 40,      /* 16 bytes, zero */
    HDR_HASH = 56,          /* u64: fnv1a64 of bytes 0..55 */
    SECTION_ENTRY = 32,     /* u32 kind, u32 flags, u64 offset, size, hash */
    MAX_SECTIONS = 64,
    SECTION_ALIGN = 8,
    TABLE_HEAD = 8,         /* u32 count, u32 reserved (tensor/expert table) */
    TENSOR_RECORD = 312,    /* name[256] u32 dtype u32 n_dims u64 dims[4]
                               u64 offset u64 size */
    EXPERT_PART = 40,       /* u32 dtype u32 0 u64 rows cols offset size */
    EXPERT_ENTRY = 136,     /* u32 layer u32 n_experts u64 record_size
                               part[3]; then u64 offsets[n_experts] */
};
#define SECTION_FLAG_REQUIRED 1u
#define MAX_LAYER 65535u /* layer indices above it are rejected: consumers
                            index per-layer arrays by layer number */
#define N_KINDS 8 /* known kinds are 1..7 */

static uint32_t rd32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}
static uint64_t rd64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}
static void wr32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void wr64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

static const char *section_name(uint32_t kind) {
    static const char *names[N_KINDS] = {"?", "manifest", "tokenizer",
                                         "tokenizer config", "tensor table",
                                         "expert table", "dense data",
                                         "expert data"};
    return kind < N_KINDS ? names[kind] : "unknown";
}

/* Rows and row bytes of a [d0, ..., dn-1] tensor: rows = d0*...*dn-2,
 * cols = dn-1. Returns 0 on overflow or when dtype cannot store the row. */
static int shape_size(int dtype, int n_dims, const uint64_t *dims,
                      uint64_t *size) {
    uint64_t rows = 1;
    for (int i = 0; i + 1 < n_dims; i++)
        if (!sl_mul_ok(rows, dims[i], &rows)) return 0;
    uint64_t rb = quant_row_bytes(dtype, dims[n_dims - 1]);
    return rb != 0 && sl_mul_ok(rows, rb, size);
}

static void shape_str(char *buf, size_t n, int n_dims, const uint64_t *dims) {
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < n_dims && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, "%s%" PRIu64, i ? "," : "", dims[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

/* The gate/up/down shapes of an expert: gate [ffn, hidden], up [ffn, hidden],
 * down [hidden, ffn]. Returns 0 if inconsistent. */
static int expert_shapes_ok(const struct sl_expert_part p[3]) {
    return p[0].rows == p[1].rows && p[0].cols == p[1].cols &&
           p[2].rows == p[0].cols && p[2].cols == p[0].rows;
}

/* ======================================================================
 * Reader
 * ====================================================================== */

struct section {
    uint32_t kind, flags;
    uint64_t offset, size, hash;
};

struct interval {
    uint64_t offset, size;
    uint32_t id; /* for messages */
};

static int cmp_interval(const void *a, const void *b) {
    const struct interval *x = a, *y = b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static int cmp_tensor_name(const void *key, const void *elem) {
    return strcmp(key, ((const struct sl_tensor_info *)elem)->name);
}

static int cmp_layer(const void *key, const void *elem) {
    uint32_t k = *(const uint32_t *)key, l = ((const struct sl_expert_layer *)elem)->layer;
    return k < l ? -1 : k > l;
}

static int ferr(const char *path, int status, const char *fmt, ...) SL_PRINTF(3, 4);
static int ferr(const char *path, int status, const char *fmt, ...) {
    char msg[900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return sl_seterr(status, "%s: %s", path, msg);
}

/* Sorts n intervals and fails on the first pair that overlaps; names come
 * from name(id). */
static int check_overlaps(const char *path, struct interval *iv, size_t n,
                          const char *what, void (*name)(const void *ctx, uint32_t id,
                                                         char *buf, size_t len),
                          const void *ctx) {
    qsort(iv, n, sizeof *iv, cmp_interval);
    for (size_t i = 1; i < n; i++) {
        if (iv[i - 1].offset + iv[i - 1].size > iv[i].offset) { /* no overflow:
                                                                   both checked */
            char a[300], b[300];
            name(ctx, iv[i - 1].id, a, sizeof a);
            name(ctx, iv[i].id, b, sizeof b);
            return ferr(path, SL_ERR_FORMAT,
                        "%s: %s (offset %" PRIu64 ", %" PRIu64 " bytes) overlaps %s "
                        "(offset %" PRIu64 ")",
                        what, a, iv[i - 1].offset, iv[i - 1].size, b, iv[i].offset);
        }
    }
    return SL_OK;
}

static void name_section(const void *ctx, uint32_t id, char *buf, size_t len) {
    (void)ctx;
    if (id == 0) snprintf(buf, len, "the header");
    else if (id == 1) snprintf(buf, len, "the section table");
    else snprintf(buf, len, "section %s", section_name(id - 2));
}

static void name_tensor(const void *ctx, uint32_t id, char *buf, size_t len) {
    snprintf(buf, len, "tensor %s", ((const struct sl_tensor_info *)ctx)[id].name);
}

static void name_record(const void *ctx, uint32_t id, char *buf, size_t len) {
    const struct sl_file *f = ctx;
    uint32_t li = id >> 20 /* layer index */, e = id & 0xfffff;
    if (li < f->n_expert_layers)
        snprintf(buf, len, "record of layer %u expert %u", f->expert_layers[li].layer, e);
    else
        snprintf(buf, len, "record #%u of expert layer #%u", e, li);
}

/* Header, section table and section bounds/hashes. Fills sec[kind] for the
 * known kinds (size 0 and offset 0 where absent; present[kind] set). */
static int read_sections(struct sl_file *f, const char *path, int verify,
                         struct section sec[N_KINDS], int present[N_KINDS]) {
    const uint8_t *m = f->map;
    if (memcmp(m, SL_FILE_MAGIC, 8) != 0)
        return ferr(path, SL_ERR_FORMAT, "not a sluice model file (bad magic)");
    f->version = rd32(m + HDR_VERSION);
    if (f->version == 0)
        return ferr(path, SL_ERR_FORMAT, "file format version 0 is invalid");
    if (f->version > SL_FILE_VERSION)
        return ferr(path, SL_ERR_FORMAT,
                    "file format version %u is newer than this sluice supports "
                    "(%u); HINT: upgrade sluice or re-run convert",
                    f->version, SL_FILE_VERSION);
    uint64_t fsize = rd64(m + HDR_FILE_SIZE);
    if (fsize != f->size)
        return ferr(path, SL_ERR_FORMAT,
                    "file is truncated (or has trailing data): header says %" PRIu64
                    " bytes, file has %" PRIu64, fsize, f->size);
    uint64_t hh = sl_fnv1a64(m, HDR_HASH, SL_FNV_SEED);
    if (hh != rd64(m + HDR_HASH))
        return ferr(path, SL_ERR_FORMAT,
                    "header hash mismatch (stored %016" PRIx64 ", computed %016" PRIx64 ")",
                    rd64(m + HDR_HASH), hh);
    for (int i = HDR_RESERVED; i < HDR_HASH; i++)
        if (m[i])
            return ferr(path, SL_ERR_FORMAT, "header byte %d is reserved and must be 0, got %u",
                        i, m[i]);

    uint32_t n = rd32(m + HDR_N_SECTIONS);
    uint64_t toff = rd64(m + HDR_TABLE_OFFSET), tend;
    if (n == 0 || n > MAX_SECTIONS)
        return ferr(path, SL_ERR_FORMAT, "header: %u sections (expected 1..%d)", n,
                    MAX_SECTIONS);
    if (toff < SL_FILE_HEADER_SIZE || !sl_add_ok(toff, (uint64_t)n * SECTION_ENTRY, &tend) ||
        tend > f->size)
        return ferr(path, SL_ERR_FORMAT,
                    "section table (offset %" PRIu64 ", %u entries of %d bytes) is outside "
                    "the file (%" PRIu64 " bytes)", toff, n, SECTION_ENTRY, f->size);
    uint64_t th = sl_fnv1a64(m + toff, (size_t)n * SECTION_ENTRY, SL_FNV_SEED);
    if (th != rd64(m + HDR_TABLE_HASH))
        return ferr(path, SL_ERR_FORMAT,
                    "section table hash mismatch (stored %016" PRIx64 ", computed %016" PRIx64
                    ")", rd64(m + HDR_TABLE_HASH), th);

    struct interval iv[MAX_SECTIONS + 2];
    size_t niv = 0;
    iv[niv++] = (struct interval){0, SL_FILE_HEADER_SIZE, 0};
    iv[niv++] = (struct interval){toff, tend - toff, 1};
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *e = m + toff + (uint64_t)i * SECTION_ENTRY;
        struct section s = {rd32(e), rd32(e + 4), rd64(e + 8), rd64(e + 16), rd64(e + 24)};
        uint64_t end;
        if (s.flags & ~SECTION_FLAG_REQUIRED)
            return ferr(path, SL_ERR_FORMAT, "section %u (kind %u): unknown flags 0x%x", i,
                        s.kind, s.flags);
        if (s.offset < SL_FILE_HEADER_SIZE || !sl_add_ok(s.offset, s.size, &end) ||
            end > f->size)
            return ferr(path, SL_ERR_FORMAT,
                        "section %s (kind %u): offset %" PRIu64 " + size %" PRIu64
                        " is outside the file (%" PRIu64 " bytes)",
                        section_name(s.kind), s.kind, s.offset, s.size, f->size);
        int known = s.kind >= 1 && s.kind < N_KINDS;
        if (!known && (s.flags & SECTION_FLAG_REQUIRED))
            return ferr(path, SL_ERR_FORMAT,
                        "section kind %u is required but unknown to this sluice; HINT: "
                        "upgrade sluice", s.kind);
        if (known && present[s.kind])
            return ferr(path, SL_ERR_FORMAT, "section %s appears twice", section_name(s.kind));
        int is_data = s.kind == SL_SECTION_DENSE_DATA || s.kind == SL_SECTION_EXPERT_DATA;
        if (!is_data || verify) {
            uint64_t h = sl_fnv1a64(m + s.offset, (size_t)s.size, SL_FNV_SEED);
            if (h != s.hash)
                return ferr(path, SL_ERR_FORMAT,
                            "section %s (kind %u): hash mismatch (stored %016" PRIx64
                            ", computed %016" PRIx64 "): the file is corrupt",
                            section_name(s.kind), s.kind, s.hash, h);
        }
        if (s.size) iv[niv++] = (struct interval){s.offset, s.size, known ? s.kind + 2 : 0 + 2};
        if (known) {
            sec[s.kind] = s;
            present[s.kind] = 1;
        }
    }
    int st = check_overlaps(path, iv, niv, "layout", name_section, NULL);
    if (st) return st;

    static const int required[] = {SL_SECTION_MANIFEST, SL_SECTION_TENSORS,
                                   SL_SECTION_DENSE_DATA};
    for (size_t i = 0; i < sizeof required / sizeof *required; i++)
        if (!present[required[i]])
            return ferr(path, SL_ERR_FORMAT, "required section %s (kind %d) is missing",
                        section_name((uint32_t)required[i]), required[i]);
    if (present[SL_SECTION_EXPERTS] && !present[SL_SECTION_EXPERT_DATA])
        return ferr(path, SL_ERR_FORMAT, "section expert table present without expert data");
    if (sec[SL_SECTION_DENSE_DATA].offset % SL_DENSE_ALIGN)
        return ferr(path, SL_ERR_FORMAT, "dense data offset %" PRIu64 " is not %u-aligned",
                    sec[SL_SECTION_DENSE_DATA].offset, SL_DENSE_ALIGN);
    if (sec[SL_SECTION_EXPERT_DATA].size && sec[SL_SECTION_EXPERT_DATA].offset % SL_EXPERT_ALIGN)
        return ferr(path, SL_ERR_FORMAT, "expert data offset %" PRIu64 " is not %u-aligned",
                    sec[SL_SECTION_EXPERT_DATA].offset, SL_EXPERT_ALIGN);
    return SL_OK;
}

static int read_tensors(struct sl_file *f, const char *path, const struct section *ts,
                        const struct section *dense) {
    const uint8_t *t = f->map + ts->offset;
    if (ts->size < TABLE_HEAD)
        return ferr(path, SL_ERR_FORMAT, "tensor table is %" PRIu64 " bytes, less than its "
                    "%d-byte header", ts->size, TABLE_HEAD);
    uint32_t n = rd32(t);
    if (rd32(t + 4))
        return ferr(path, SL_ERR_FORMAT, "tensor table: reserved word is %u, expected 0",
                    rd32(t + 4));
    if ((ts->size - TABLE_HEAD) / TENSOR_RECORD != n ||
        (ts->size - TABLE_HEAD) % TENSOR_RECORD)
        return ferr(path, SL_ERR_FORMAT,
                    "tensor table: %u tensors of %d bytes do not match the section size "
                    "%" PRIu64, n, TENSOR_RECORD, ts->size);
    f->tensors = sl_calloc(n ? n : 1, sizeof *f->tensors);
    struct interval *iv = sl_calloc(n ? n : 1, sizeof *iv);
    if (!f->tensors || !iv) {
        sl_free(iv);
        return ferr(path, SL_ERR_NOMEM, "cannot allocate the table of %u tensors", n);
    }
    f->n_tensors = n;
    uint64_t dend = dense->offset + dense->size; /* checked in read_sections */
    int st = SL_OK;
    for (uint32_t i = 0; i < n && !st; i++) {
        const uint8_t *r = t + TABLE_HEAD + (uint64_t)i * TENSOR_RECORD;
        struct sl_tensor_info *ti = &f->tensors[i];
        const uint8_t *nul = memchr(r, 0, SL_MAX_NAME + 1);
        if (!nul) {
            st = ferr(path, SL_ERR_FORMAT, "tensor record %u: name is not NUL-terminated", i);
            break;
        }
        size_t len = (size_t)(nul - r);
        memcpy(ti->name, r, len);
        ti->name[len] = 0;
        if (len == 0) {
            st = ferr(path, SL_ERR_FORMAT, "tensor record %u: empty name", i);
            break;
        }
        for (size_t k = len; k <= SL_MAX_NAME; k++)
            if (r[k]) {
                st = ferr(path, SL_ERR_FORMAT, "tensor %s: name padding is not zero", ti->name);
                break;
            }
        if (st) break;
        if (i > 0) {
            int c = strcmp(f->tensors[i - 1].name, ti->name);
            if (c == 0) st = ferr(path, SL_ERR_FORMAT, "duplicate tensor name %s", ti->name);
            else if (c > 0)
                st = ferr(path, SL_ERR_FORMAT, "tensor table is not sorted by name: %s after %s",
                          ti->name, f->tensors[i - 1].name);
            if (st) break;
        }
        uint32_t dtype = rd32(r + 256), n_dims = rd32(r + 260);
        if (dtype >= SL_DTYPE_COUNT) {
            st = ferr(path, SL_ERR_FORMAT, "tensor %s: unknown dtype %u", ti->name, dtype);
            break;
        }
        if (n_dims < 1 || n_dims > SL_MAX_DIMS) {
            st = ferr(path, SL_ERR_FORMAT, "tensor %s: n_dims %u (expected 1..%d)", ti->name,
                      n_dims, SL_MAX_DIMS);
            break;
        }
        ti->dtype = (int)dtype;
        ti->n_dims = (int)n_dims;
        for (int d = 0; d < SL_MAX_DIMS; d++) {
            ti->dims[d] = rd64(r + 264 + 8 * d);
            if ((d < ti->n_dims) != (ti->dims[d] != 0)) {
                st = ferr(path, SL_ERR_FORMAT, "tensor %s: dim %d is %" PRIu64 " (n_dims %d)",
                          ti->name, d, ti->dims[d], ti->n_dims);
                break;
            }
        }
        if (st) break;
        ti->offset = rd64(r + 296);
        ti->size = rd64(r + 304);
        char shape[128];
        shape_str(shape, sizeof shape, ti->n_dims, ti->dims);
        uint64_t want, end;
        if (!quant_dtype_fits(ti->dtype, ti->dims[ti->n_dims - 1])) {
            st = ferr(path, SL_ERR_FORMAT, "tensor %s: dtype %s cannot store shape %s", ti->name,
                      sl_dtype_name(ti->dtype), shape);
        } else if (!shape_size(ti->dtype, ti->n_dims, ti->dims, &want)) {
            st = ferr(path, SL_ERR_FORMAT, "tensor %s: shape %s overflows", ti->name, shape);
        } else if (want != ti->size) {
            st = ferr(path, SL_ERR_FORMAT,
                      "tensor %s: size %" PRIu64 " does not match dtype %s shape %s (expected "
                      "%" PRIu64 ")", ti->name, ti->size, sl_dtype_name(ti->dtype), shape, want);
        } else if (ti->offset % SL_DENSE_ALIGN) {
            st = ferr(path, SL_ERR_FORMAT, "tensor %s: offset %" PRIu64 " is not %u-aligned",
                      ti->name, ti->offset, SL_DENSE_ALIGN);
        } else if (ti->offset < dense->offset || !sl_add_ok(ti->offset, ti->size, &end) ||
                   end > dend) {
            st = ferr(path, SL_ERR_FORMAT,
                      "tensor %s: offset %" PRIu64 " + size %" PRIu64 " is outside the dense "
                      "region [%" PRIu64 ", %" PRIu64 ")", ti->name, ti->offset, ti->size,
                      dense->offset, dend);
        }
        iv[i] = (struct interval){ti->offset, ti->size, i};
        f->dense_bytes += ti->size; /* <= dense region size: no overflow */
    }
    if (!st) st = check_overlaps(path, iv, n, "dense region", name_tensor, f->tensors);
    sl_free(iv);
    return st;
}

static int read_part(const char *path, uint32_t layer, int i, const uint8_t *p,
                     uint64_t record_size, uint64_t min_offset, struct sl_expert_part *out) {
    static const char *names[3] = {"gate", "up", "down"};
    uint32_t dtype = rd32(p);
    out->rows = rd64(p + 8);
    out->cols = rd64(p + 16);
    out->offset = rd64(p + 24);
    out->size = rd64(p + 32);
    uint64_t dims[2] = {out->rows, out->cols}, want, end;
    if (rd32(p + 4))
        return ferr(path, SL_ERR_FORMAT, "experts of layer %u: %s reserved word is not 0",
                    layer, names[i]);
    if (dtype >= SL_DTYPE_COUNT)
        return ferr(path, SL_ERR_FORMAT, "experts of layer %u: %s has unknown dtype %u", layer,
                    names[i], dtype);
    out->dtype = (int)dtype;
    if (!out->rows || !out->cols || !quant_dtype_fits(out->dtype, out->cols) ||
        !shape_size(out->dtype, 2, dims, &want))
        return ferr(path, SL_ERR_FORMAT,
                    "experts of layer %u: %s shape [%" PRIu64 ",%" PRIu64 "] is invalid for "
                    "dtype %s", layer, names[i], out->rows, out->cols,
                    sl_dtype_name(out->dtype));
    if (want != out->size)
        return ferr(path, SL_ERR_FORMAT,
                    "experts of layer %u: %s size %" PRIu64 " does not match dtype %s shape "
                    "[%" PRIu64 ",%" PRIu64 "] (expected %" PRIu64 ")", layer, names[i],
                    out->size, sl_dtype_name(out->dtype), out->rows, out->cols, want);
    if (out->offset % SL_DENSE_ALIGN || out->offset < min_offset ||
        !sl_add_ok(out->offset, out->size, &end) || end > record_size)
        return ferr(path, SL_ERR_FORMAT,
                    "experts of layer %u: %s at record offset %" PRIu64 " (+%" PRIu64
                    " bytes) is unaligned, overlaps the previous part or exceeds the record "
                    "size %" PRIu64, layer, names[i], out->offset, out->size, record_size);
    return SL_OK;
}

static int read_experts(struct sl_file *f, const char *path, const struct section *es,
                        const struct section *data) {
    const uint8_t *t = f->map + es->offset;
    if (es->size < TABLE_HEAD)
        return ferr(path, SL_ERR_FORMAT, "expert table is %" PRIu64 " bytes, less than its "
                    "%d-byte header", es->size, TABLE_HEAD);
    uint32_t n = rd32(t);
    if (rd32(t + 4))
        return ferr(path, SL_ERR_FORMAT, "expert table: reserved word is %u, expected 0",
                    rd32(t + 4));
    /* every layer takes at least one fixed entry and one offset */
    if ((uint64_t)n > (es->size - TABLE_HEAD) / (EXPERT_ENTRY + 8))
        return ferr(path, SL_ERR_FORMAT,
                    "expert table: %u layers cannot fit in %" PRIu64 " bytes", n, es->size);
    f->expert_layers = sl_calloc(n ? n : 1, sizeof *f->expert_layers);
    /* every record takes 8 bytes of the table: bounded by the section size */
    uint64_t max_records = (es->size - TABLE_HEAD) / 8, n_records = 0;
    struct interval *iv = sl_calloc((size_t)max_records + 1, sizeof *iv);
    if (!f->expert_layers || !iv) {
        sl_free(iv);
        return ferr(path, SL_ERR_NOMEM, "cannot allocate the table of %u expert layers", n);
    }
    f->n_expert_layers = n;
    uint64_t pos = TABLE_HEAD, dend = data->offset + data->size;
    int st = SL_OK;
    for (uint32_t i = 0; i < n && !st; i++) {
        struct sl_expert_layer *el = &f->expert_layers[i];
        if (es->size - pos < EXPERT_ENTRY) {
            st = ferr(path, SL_ERR_FORMAT, "expert table: entry %u is cut off at byte %" PRIu64,
                      i, pos);
            break;
        }
        const uint8_t *e = t + pos;
        el->layer = rd32(e);
        el->n_experts = rd32(e + 4);
        el->record_size = rd64(e + 8);
        pos += EXPERT_ENTRY;
        if (el->layer > MAX_LAYER) {
            st = ferr(path, SL_ERR_FORMAT, "expert table: layer index %u exceeds %u", el->layer,
                      MAX_LAYER);
            break;
        }
        if (i > 0 && el->layer <= f->expert_layers[i - 1].layer) {
            st = ferr(path, SL_ERR_FORMAT, el->layer == f->expert_layers[i - 1].layer
                                               ? "expert table: layer %u appears twice"
                                               : "expert table: layer %u is out of order",
                      el->layer);
            break;
        }
        if (el->n_experts == 0 || el->n_experts > (es->size - pos) / 8) {
            st = ferr(path, SL_ERR_FORMAT,
                      "experts of layer %u: %u experts do not fit in the expert table (%" PRIu64
                      " bytes left)", el->layer, el->n_experts, es->size - pos);
            break;
        }
        if (el->record_size == 0 || el->record_size % SL_EXPERT_ALIGN) {
            st = ferr(path, SL_ERR_FORMAT,
                      "experts of layer %u: record size %" PRIu64 " is not a positive multiple "
                      "of %u", el->layer, el->record_size, SL_EXPERT_ALIGN);
            break;
        }
        uint64_t min_off = 0;
        for (int p = 0; p < 3 && !st; p++) {
            st = read_part(path, el->layer, p, e + 16 + p * EXPERT_PART, el->record_size,
                           min_off, &el->part[p]);
            min_off = el->part[p].offset + el->part[p].size;
        }
        if (st) break;
        if (!expert_shapes_ok(el->part)) {
            st = ferr(path, SL_ERR_FORMAT,
                      "experts of layer %u: shapes gate [%" PRIu64 ",%" PRIu64 "] up [%" PRIu64
                      ",%" PRIu64 "] down [%" PRIu64 ",%" PRIu64 "] are inconsistent", el->layer,
                      el->part[0].rows, el->part[0].cols, el->part[1].rows, el->part[1].cols,
                      el->part[2].rows, el->part[2].cols);
            break;
        }
        el->offsets = sl_malloc((size_t)el->n_experts * sizeof *el->offsets);
        if (!el->offsets) {
            st = ferr(path, SL_ERR_NOMEM, "cannot allocate %u expert offsets", el->n_experts);
            break;
        }
        for (uint32_t x = 0; x < el->n_experts; x++, pos += 8) {
            uint64_t off = rd64(t + pos), end;
            el->offsets[x] = off;
            if (off % SL_EXPERT_ALIGN || off < data->offset ||
                !sl_add_ok(off, el->record_size, &end) || end > dend) {
                st = ferr(path, SL_ERR_FORMAT,
                          "expert %u of layer %u: record at %" PRIu64 " (%" PRIu64
                          " bytes) is unaligned or outside the expert region [%" PRIu64
                          ", %" PRIu64 ")", x, el->layer, off, el->record_size, data->offset,
                          dend);
                break;
            }
            SL_ASSERT(n_records < max_records);
            iv[n_records++] = (struct interval){off, el->record_size, (i << 20) | (x & 0xfffff)};
            f->expert_bytes += el->record_size; /* <= region size: no overflow */
        }
    }
    if (!st && pos != es->size)
        st = ferr(path, SL_ERR_FORMAT, "expert table: %" PRIu64 " trailing bytes",
                  es->size - pos);
    if (!st) st = check_overlaps(path, iv, (size_t)n_records, "expert region", name_record, f);
    sl_free(iv);
    return st;
}

static int parse_file(struct sl_file *f, const char *path, int verify) {
    struct section sec[N_KINDS];
    int present[N_KINDS];
    memset(sec, 0, sizeof sec);
    memset(present, 0, sizeof present);
    int st = read_sections(f, path, verify, sec, present);
    if (st) return st;
    const char *base = (const char *)f->map;
    f->manifest = base + sec[SL_SECTION_MANIFEST].offset;
    f->manifest_len = (size_t)sec[SL_SECTION_MANIFEST].size;
    if (present[SL_SECTION_TOKENIZER]) {
        f->tokenizer = base + sec[SL_SECTION_TOKENIZER].offset;
        f->tokenizer_len = (size_t)sec[SL_SECTION_TOKENIZER].size;
    }
    if (present[SL_SECTION_TOKENIZER_CONFIG]) {
        f->tokenizer_config = base + sec[SL_SECTION_TOKENIZER_CONFIG].offset;
        f->tokenizer_config_len = (size_t)sec[SL_SECTION_TOKENIZER_CONFIG].size;
    }
    st = read_tensors(f, path, &sec[SL_SECTION_TENSORS], &sec[SL_SECTION_DENSE_DATA]);
    if (!st && present[SL_SECTION_EXPERTS])
        st = read_experts(f, path, &sec[SL_SECTION_EXPERTS], &sec[SL_SECTION_EXPERT_DATA]);
    return st;
}

int file_open(struct sl_file *f, const char *path, int verify) {
    memset(f, 0, sizeof *f);
    f->fd = -1;
    if (!path) return sl_seterr(SL_ERR_ARG, "file_open: path is NULL");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return sl_seterr(SL_ERR_IO, "open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return sl_seterr(SL_ERR_IO, "stat %s: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return ferr(path, SL_ERR_IO, "not a regular file");
    }
    if ((uint64_t)st.st_size < SL_FILE_HEADER_SIZE) {
        close(fd);
        return ferr(path, SL_ERR_FORMAT, "file is truncated: %lld bytes, header needs %u",
                    (long long)st.st_size, SL_FILE_HEADER_SIZE);
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
        int e = errno;
        close(fd);
        return sl_seterr(SL_ERR_IO, "mmap %s (%lld bytes): %s", path, (long long)st.st_size,
                         strerror(e));
    }
    f->fd = fd;
    f->map = map;
    f->size = (uint64_t)st.st_size;
    int rc = parse_file(f, path, verify);
    if (rc) file_close(f);
    return rc;
}

void file_close(struct sl_file *f) {
    if (!f) return;
    if (f->map) { /* fd is ours only once the mapping exists (a zeroed struct
                     has fd 0, which must not be closed) */
        munmap((void *)f->map, (size_t)f->size);
        if (f->fd >= 0) close(f->fd);
    }
    if (f->expert_layers)
        for (uint32_t i = 0; i < f->n_expert_layers; i++) sl_free(f->expert_layers[i].offsets);
    sl_free(f->expert_layers);
    sl_free(f->tensors);
    memset(f, 0, sizeof *f);
    f->fd = -1;
}

const struct sl_tensor_info *file_find_tensor(const struct sl_file *f, const char *name) {
    if (!f || !f->tensors || !name) return NULL;
    return bsearch(name, f->tensors, f->n_tensors, sizeof *f->tensors, cmp_tensor_name);
}

const struct sl_expert_layer *file_expert_layer(const struct sl_file *f, uint32_t layer) {
    if (!f || !f->expert_layers) return NULL;
    return bsearch(&layer, f->expert_layers, f->n_expert_layers, sizeof *f->expert_layers,
                   cmp_layer);
}

/* ======================================================================
 * Writer
 * ====================================================================== */

struct wtensor {
    char name[SL_MAX_NAME + 1];
    int dtype, n_dims;
    uint64_t dims[SL_MAX_DIMS];
    uint64_t offset, size;
};

struct wlayer {
    struct sl_expert_layer l; /* l.offsets: (n_experts), owned */
    uint32_t n_written;
};

struct sl_writer {
    char *path, *tmp_path;
    int fd;
    int failed;               /* sticky status of the first I/O failure */
    uint64_t pos;             /* bytes written so far = file offset */
    uint64_t hash;            /* running fnv1a64 of the current data region */
    int in_experts;           /* 1 after the first expert record */
    uint64_t dense_end, dense_hash, expert_start;
    struct wtensor *tensors;  /* (n_tensors) in add order */
    uint32_t n_tensors, cap_tensors;
    uint32_t *name_set;       /* open addressing: tensor index + 1, 0 = empty */
    uint32_t set_cap;         /* power of two, > 2 * n_tensors */
    struct wlayer *layers;    /* (n_layers) in declaration order */
    uint32_t n_layers, cap_layers;
    void *blob[3];            /* manifest, tokenizer, tokenizer config */
    size_t blob_len[3];
    int blob_set[3];
};

static int wfail(struct sl_writer *w, int status, const char *fmt, ...) SL_PRINTF(3, 4);
static int wfail(struct sl_writer *w, int status, const char *fmt, ...) {
    char msg[800];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (!w->failed) w->failed = status;
    return sl_seterr(status, "%s: %s", w->path, msg);
}

/* Writes n bytes at the current position, retrying short writes. */
static int wwrite(struct sl_writer *w, const void *data, uint64_t n) {
    const uint8_t *p = data;
    while (n > 0) {
        size_t chunk = n > (1u << 30) ? (1u << 30) : (size_t)n;
        ssize_t r = write(w->fd, p, chunk);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0)
            return wfail(w, SL_ERR_IO, "write at offset %" PRIu64 ": %s", w->pos,
                         r < 0 ? strerror(errno) : "no progress (disk full?)");
        w->hash = sl_fnv1a64(p, (size_t)r, w->hash);
        p += r;
        n -= (uint64_t)r;
        w->pos += (uint64_t)r;
    }
    return SL_OK;
}

/* Zero bytes up to the absolute offset `to` (>= pos). */
static int wpad_to(struct sl_writer *w, uint64_t to) {
    static const uint8_t zeros[SL_EXPERT_ALIGN];
    while (w->pos < to) {
        uint64_t n = to - w->pos < sizeof zeros ? to - w->pos : sizeof zeros;
        int st = wwrite(w, zeros, n);
        if (st) return st;
    }
    return SL_OK;
}

int writer_open(struct sl_writer **out, const char *path) {
    if (!out || !path || !*path) return sl_seterr(SL_ERR_ARG, "writer_open: no path");
    *out = NULL;
    struct sl_writer *w = sl_calloc(1, sizeof *w);
    size_t n = strlen(path);
    if (w) w->path = sl_strdup(path);
    if (w) w->tmp_path = sl_malloc(n + 5);
    if (!w || !w->path || !w->tmp_path) {
        if (w) {
            sl_free(w->path);
            sl_free(w->tmp_path);
        }
        sl_free(w);
        return sl_seterr(SL_ERR_NOMEM, "writer_open %s: out of memory", path);
    }
    memcpy(w->tmp_path, path, n);
    memcpy(w->tmp_path + n, ".tmp", 5);
    w->fd = open(w->tmp_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (w->fd < 0) {
        int st = sl_seterr(SL_ERR_IO, "create %s: %s", w->tmp_path, strerror(errno));
        sl_free(w->path);
        sl_free(w->tmp_path);
        sl_free(w);
        return st;
    }
    uint8_t header[SL_FILE_HEADER_SIZE] = {0}; /* placeholder, rewritten at close */
    int st = wwrite(w, header, sizeof header);
    if (st) {
        writer_close(w, 0);
        return st;
    }
    w->hash = SL_FNV_SEED; /* the dense region starts here */
    *out = w;
    return SL_OK;
}

int writer_set_section(struct sl_writer *w, int kind, const void *data, size_t len) {
    if (!w) return sl_seterr(SL_ERR_ARG, "writer_set_section: writer is NULL");
    if (kind < SL_SECTION_MANIFEST || kind > SL_SECTION_TOKENIZER_CONFIG)
        return sl_seterr(SL_ERR_ARG, "%s: section kind %d cannot be set (only 1..3)", w->path,
                         kind);
    if (!data && len) return sl_seterr(SL_ERR_ARG, "%s: section %s: NULL data", w->path,
                                       section_name((uint32_t)kind));
    void *copy = sl_malloc(len);
    if (!copy) return sl_seterr(SL_ERR_NOMEM, "%s: cannot copy section %s (%zu bytes)",
                                w->path, section_name((uint32_t)kind), len);
    if (len) memcpy(copy, data, len);
    int i = kind - SL_SECTION_MANIFEST;
    sl_free(w->blob[i]);
    w->blob[i] = copy;
    w->blob_len[i] = len;
    w->blob_set[i] = 1;
    return SL_OK;
}

static uint32_t name_hash(const char *s) {
    return (uint32_t)sl_fnv1a64(s, strlen(s), SL_FNV_SEED);
}

/* Finds name in the set: returns its slot (empty slot if absent). */
static uint32_t name_slot(const struct sl_writer *w, const char *name) {
    uint32_t mask = w->set_cap - 1, i = name_hash(name) & mask;
    while (w->name_set[i] && strcmp(w->tensors[w->name_set[i] - 1].name, name) != 0)
        i = (i + 1) & mask;
    return i;
}

/* Makes room for one more tensor in the array and the name set. */
static int grow_tensors(struct sl_writer *w) {
    if (w->n_tensors == w->cap_tensors) {
        uint32_t cap = w->cap_tensors ? 2 * w->cap_tensors : 64;
        void *p = sl_realloc(w->tensors, (size_t)cap * sizeof *w->tensors);
        if (!p) return sl_seterr(SL_ERR_NOMEM, "%s: cannot grow the tensor table", w->path);
        w->tensors = p;
        w->cap_tensors = cap;
    }
    if (2 * (w->n_tensors + 1) >= w->set_cap) {
        uint32_t cap = w->set_cap ? 2 * w->set_cap : 256;
        uint32_t *old = w->name_set, old_cap = w->set_cap;
        w->name_set = sl_calloc(cap, sizeof *w->name_set);
        if (!w->name_set) {
            w->name_set = old;
            return sl_seterr(SL_ERR_NOMEM, "%s: cannot grow the name set", w->path);
        }
        w->set_cap = cap;
        for (uint32_t i = 0; i < old_cap; i++)
            if (old[i]) w->name_set[name_slot(w, w->tensors[old[i] - 1].name)] = old[i];
        sl_free(old);
    }
    return SL_OK;
}

int writer_add_tensor(struct sl_writer *w, const char *name, int dtype, int n_dims,
                      const uint64_t *dims, const void *data, uint64_t size) {
    if (!w || !name || !dims || !data)
        return sl_seterr(SL_ERR_ARG, "writer_add_tensor: NULL argument");
    if (w->failed) return sl_seterr(w->failed, "%s: writer already failed", w->path);
    size_t len = strlen(name);
    if (len == 0 || len > SL_MAX_NAME)
        return sl_seterr(SL_ERR_ARG, "%s: tensor name of %zu bytes (expected 1..%d)", w->path,
                         len, SL_MAX_NAME);
    if (w->in_experts)
        return sl_seterr(SL_ERR_ARG, "%s: tensor %s: dense tensors must be added before the "
                         "first expert record", w->path, name);
    if (dtype < 0 || dtype >= SL_DTYPE_COUNT)
        return sl_seterr(SL_ERR_ARG, "%s: tensor %s: unknown dtype %d", w->path, name, dtype);
    if (n_dims < 1 || n_dims > SL_MAX_DIMS)
        return sl_seterr(SL_ERR_ARG, "%s: tensor %s: n_dims %d (expected 1..%d)", w->path, name,
                         n_dims, SL_MAX_DIMS);
    char shape[128];
    shape_str(shape, sizeof shape, n_dims, dims);
    for (int i = 0; i < n_dims; i++)
        if (dims[i] == 0)
            return sl_seterr(SL_ERR_ARG, "%s: tensor %s: zero dimension in %s", w->path, name,
                             shape);
    uint64_t want;
    if (!quant_dtype_fits(dtype, dims[n_dims - 1]))
        return sl_seterr(SL_ERR_ARG, "%s: tensor %s: dtype %s cannot store rows of %" PRIu64
                         " columns (quantized dtypes need a multiple of %d)", w->path, name,
                         sl_dtype_name(dtype), dims[n_dims - 1], SL_QBLOCK);
    if (!shape_size(dtype, n_dims, dims, &want))
        return sl_seterr(SL_ERR_ARG, "%s: tensor %s: shape %s overflows", w->path, name, shape);
    if (want != size)
        return sl_seterr(SL_ERR_ARG, "%s: tensor %s: size %" PRIu64 " does not match dtype %s "
                         "shape %s (expected %" PRIu64 ")", w->path, name, size,
                         sl_dtype_name(dtype), shape, want);
    if (w->set_cap && w->name_set[name_slot(w, name)])
        return sl_seterr(SL_ERR_ARG, "%s: duplicate tensor name %s", w->path, name);
    int st = grow_tensors(w);
    if (st) return st;
    st = wpad_to(w, sl_align_up(w->pos, SL_DENSE_ALIGN));
    if (st) return st;
    struct wtensor *t = &w->tensors[w->n_tensors];
    memset(t, 0, sizeof *t);
    memcpy(t->name, name, len + 1);
    t->dtype = dtype;
    t->n_dims = n_dims;
    memcpy(t->dims, dims, (size_t)n_dims * sizeof *dims);
    t->offset = w->pos;
    t->size = size;
    st = wwrite(w, data, size);
    if (st) return st;
    w->n_tensors++;
    w->name_set[name_slot(w, name)] = w->n_tensors;
    return SL_OK;
}

static struct wlayer *find_layer(struct sl_writer *w, uint32_t layer) {
    for (uint32_t i = 0; i < w->n_layers; i++)
        if (w->layers[i].l.layer == layer) return &w->layers[i];
    return NULL;
}

int writer_begin_experts(struct sl_writer *w, uint32_t layer, uint32_t n_experts,
                         const struct sl_expert_part parts[3]) {
    static const char *names[3] = {"gate", "up", "down"};
    if (!w || !parts) return sl_seterr(SL_ERR_ARG, "writer_begin_experts: NULL argument");
    if (w->failed) return sl_seterr(w->failed, "%s: writer already failed", w->path);
    if (layer > MAX_LAYER)
        return sl_seterr(SL_ERR_ARG, "%s: layer index %u exceeds %u", w->path, layer, MAX_LAYER);
    if (find_layer(w, layer))
        return sl_seterr(SL_ERR_ARG, "%s: experts of layer %u declared twice", w->path, layer);
    if (n_experts == 0 || n_experts > 0xfffff)
        return sl_seterr(SL_ERR_ARG, "%s: layer %u: %u experts (expected 1..%u)", w->path,
                         layer, n_experts, 0xfffffu);
    struct sl_expert_layer l = {.layer = layer, .n_experts = n_experts};
    uint64_t pos = 0;
    for (int i = 0; i < 3; i++) {
        struct sl_expert_part p = parts[i];
        uint64_t dims[2] = {p.rows, p.cols};
        if (p.dtype < 0 || p.dtype >= SL_DTYPE_COUNT || !p.rows || !p.cols ||
            !quant_dtype_fits(p.dtype, p.cols) || !shape_size(p.dtype, 2, dims, &p.size))
            return sl_seterr(SL_ERR_ARG, "%s: layer %u: expert %s [%" PRIu64 ",%" PRIu64
                             "] cannot be stored as dtype %s", w->path, layer, names[i],
                             p.rows, p.cols, sl_dtype_name(p.dtype));
        p.offset = sl_align_up(pos, SL_DENSE_ALIGN);
        if (!sl_add_ok(p.offset, p.size, &pos) || pos > (UINT64_MAX >> 1))
            return sl_seterr(SL_ERR_ARG, "%s: layer %u: expert record size overflows", w->path,
                             layer);
        l.part[i] = p;
    }
    if (!expert_shapes_ok(l.part))
        return sl_seterr(SL_ERR_ARG, "%s: layer %u: expert shapes gate [%" PRIu64 ",%" PRIu64
                         "] up [%" PRIu64 ",%" PRIu64 "] down [%" PRIu64 ",%" PRIu64 "] are "
                         "inconsistent (want gate/up [ffn,hidden], down [hidden,ffn])",
                         w->path, layer, parts[0].rows, parts[0].cols, parts[1].rows,
                         parts[1].cols, parts[2].rows, parts[2].cols);
    l.record_size = sl_align_up(pos, SL_EXPERT_ALIGN);
    if (w->n_layers == w->cap_layers) {
        uint32_t cap = w->cap_layers ? 2 * w->cap_layers : 16;
        void *p = sl_realloc(w->layers, (size_t)cap * sizeof *w->layers);
        if (!p) return sl_seterr(SL_ERR_NOMEM, "%s: cannot grow the expert table", w->path);
        w->layers = p;
        w->cap_layers = cap;
    }
    l.offsets = sl_calloc(n_experts, sizeof *l.offsets);
    if (!l.offsets)
        return sl_seterr(SL_ERR_NOMEM, "%s: cannot allocate %u expert offsets", w->path,
                         n_experts);
    w->layers[w->n_layers++] = (struct wlayer){.l = l};
    return SL_OK;
}

int writer_add_expert(struct sl_writer *w, uint32_t layer, uint32_t expert,
                      const void *const data[3]) {
    if (!w || !data || !data[0] || !data[1] || !data[2])
        return sl_seterr(SL_ERR_ARG, "writer_add_expert: NULL argument");
    if (w->failed) return sl_seterr(w->failed, "%s: writer already failed", w->path);
    struct wlayer *wl = find_layer(w, layer);
    if (!wl)
        return sl_seterr(SL_ERR_ARG, "%s: expert %u of layer %u: layer not declared with "
                         "writer_begin_experts", w->path, expert, layer);
    if (expert != wl->n_written)
        return sl_seterr(SL_ERR_ARG, "%s: layer %u: expert %u written out of order (expected "
                         "%u of %u)", w->path, layer, expert, wl->n_written, wl->l.n_experts);
    if (!w->in_experts) { /* close the dense region, open the expert region */
        w->in_experts = 1;
        w->dense_end = w->pos;
        w->dense_hash = w->hash;
        int st = wpad_to(w, sl_align_up(w->pos, SL_EXPERT_ALIGN));
        if (st) return st;
        w->expert_start = w->pos;
        w->hash = SL_FNV_SEED;
    }
    uint64_t start = w->pos; /* 4096-aligned: every record size is */
    for (int i = 0; i < 3; i++) {
        int st = wpad_to(w, start + wl->l.part[i].offset);
        if (!st) st = wwrite(w, data[i], wl->l.part[i].size);
        if (st) return st;
    }
    int st = wpad_to(w, start + wl->l.record_size);
    if (st) return st;
    wl->l.offsets[expert] = start;
    wl->n_written++;
    return SL_OK;
}

static int cmp_wtensor(const void *a, const void *b) {
    return strcmp(((const struct wtensor *)a)->name, ((const struct wtensor *)b)->name);
}

static int cmp_wlayer(const void *a, const void *b) {
    uint32_t x = ((const struct wlayer *)a)->l.layer, y = ((const struct wlayer *)b)->l.layer;
    return x < y ? -1 : x > y;
}

/* Writes one section blob at the next 8-aligned offset and fills its entry. */
static int write_section(struct sl_writer *w, uint32_t kind, const void *data, uint64_t len,
                         struct section *out) {
    int st = wpad_to(w, sl_align_up(w->pos, SECTION_ALIGN));
    if (st) return st;
    *out = (struct section){.kind = kind, .offset = w->pos, .size = len};
    w->hash = SL_FNV_SEED;
    st = wwrite(w, data, len);
    out->hash = w->hash;
    return st;
}

static int write_tables(struct sl_writer *w, struct section *sec, uint32_t *n_sec) {
    int st;
    for (int i = 0; i < 3; i++)
        if (w->blob_set[i] &&
            (st = write_section(w, (uint32_t)(SL_SECTION_MANIFEST + i), w->blob[i],
                                w->blob_len[i], &sec[(*n_sec)++])))
            return st;
    /* tensor table, sorted by name (the reader binary-searches it) */
    if (w->n_tensors) qsort(w->tensors, w->n_tensors, sizeof *w->tensors, cmp_wtensor);
    uint64_t tsize = TABLE_HEAD + (uint64_t)w->n_tensors * TENSOR_RECORD;
    uint8_t *tab = sl_calloc(1, (size_t)tsize);
    if (!tab) return wfail(w, SL_ERR_NOMEM, "cannot allocate the tensor table");
    wr32(tab, w->n_tensors);
    for (uint32_t i = 0; i < w->n_tensors; i++) {
        const struct wtensor *t = &w->tensors[i];
        uint8_t *r = tab + TABLE_HEAD + (uint64_t)i * TENSOR_RECORD;
        memcpy(r, t->name, strlen(t->name));
        wr32(r + 256, (uint32_t)t->dtype);
        wr32(r + 260, (uint32_t)t->n_dims);
        for (int d = 0; d < SL_MAX_DIMS; d++) wr64(r + 264 + 8 * d, t->dims[d]);
        wr64(r + 296, t->offset);
        wr64(r + 304, t->size);
    }
    st = write_section(w, SL_SECTION_TENSORS, tab, tsize, &sec[(*n_sec)++]);
    sl_free(tab);
    if (st) return st;
    /* expert table, sorted by layer */
    if (w->n_layers) qsort(w->layers, w->n_layers, sizeof *w->layers, cmp_wlayer);
    uint64_t esize = TABLE_HEAD;
    for (uint32_t i = 0; i < w->n_layers; i++)
        esize += EXPERT_ENTRY + 8 * (uint64_t)w->layers[i].l.n_experts;
    tab = sl_calloc(1, (size_t)esize);
    if (!tab) return wfail(w, SL_ERR_NOMEM, "cannot allocate the expert table");
    wr32(tab, w->n_layers);
    uint64_t pos = TABLE_HEAD;
    for (uint32_t i = 0; i < w->n_layers; i++) {
        const struct sl_expert_layer *l = &w->layers[i].l;
        wr32(tab + pos, l->layer);
        wr32(tab + pos + 4, l->n_experts);
        wr64(tab + pos + 8, l->record_size);
        for (int p = 0; p < 3; p++) {
            uint8_t *e = tab + pos + 16 + p * EXPERT_PART;
            wr32(e, (uint32_t)l->part[p].dtype);
            wr64(e + 8, l->part[p].rows);
            wr64(e + 16, l->part[p].cols);
            wr64(e + 24, l->part[p].offset);
            wr64(e + 32, l->part[p].size);
        }
        pos += EXPERT_ENTRY;
        for (uint32_t x = 0; x < l->n_experts; x++, pos += 8) wr64(tab + pos, l->offsets[x]);
    }
    st = write_section(w, SL_SECTION_EXPERTS, tab, esize, &sec[(*n_sec)++]);
    sl_free(tab);
    return st;
}

static int finish(struct sl_writer *w) {
    for (uint32_t i = 0; i < w->n_layers; i++)
        if (w->layers[i].n_written != w->layers[i].l.n_experts)
            return wfail(w, SL_ERR_ARG, "layer %u: only %u of %u experts were written",
                         w->layers[i].l.layer, w->layers[i].n_written,
                         w->layers[i].l.n_experts);
    if (!w->blob_set[0]) return wfail(w, SL_ERR_ARG, "no manifest section was set");
    struct section sec[8];
    uint32_t n = 0;
    if (!w->in_experts) { /* no expert records: an empty expert region */
        w->dense_end = w->pos;
        w->dense_hash = w->hash;
        w->expert_start = w->pos;
        w->hash = SL_FNV_SEED;
    }
    sec[n++] = (struct section){SL_SECTION_DENSE_DATA, 0, SL_FILE_HEADER_SIZE,
                                w->dense_end - SL_FILE_HEADER_SIZE, w->dense_hash};
    sec[n++] = (struct section){SL_SECTION_EXPERT_DATA, 0, w->expert_start,
                                w->pos - w->expert_start, w->hash};
    int st = write_tables(w, sec, &n);
    if (st) return st;
    /* section table, ordered by kind */
    for (uint32_t i = 1; i < n; i++)
        for (uint32_t j = i; j > 0 && sec[j - 1].kind > sec[j].kind; j--) {
            struct section t = sec[j];
            sec[j] = sec[j - 1];
            sec[j - 1] = t;
        }
    st = wpad_to(w, sl_align_up(w->pos, SECTION_ALIGN));
    if (st) return st;
    uint8_t table[8 * SECTION_ENTRY] = {0};
    for (uint32_t i = 0; i < n; i++) {
        uint8_t *e = table + i * SECTION_ENTRY;
        wr32(e, sec[i].kind);
        wr32(e + 4, sec[i].flags);
        wr64(e + 8, sec[i].offset);
        wr64(e + 16, sec[i].size);
        wr64(e + 24, sec[i].hash);
    }
    uint64_t toff = w->pos;
    st = wwrite(w, table, (uint64_t)n * SECTION_ENTRY);
    if (st) return st;
    uint8_t h[SL_FILE_HEADER_SIZE] = {0};
    memcpy(h, SL_FILE_MAGIC, 8);
    wr32(h + HDR_VERSION, SL_FILE_VERSION);
    wr32(h + HDR_N_SECTIONS, n);
    wr64(h + HDR_FILE_SIZE, w->pos);
    wr64(h + HDR_TABLE_OFFSET, toff);
    wr64(h + HDR_TABLE_HASH, sl_fnv1a64(table, (size_t)n * SECTION_ENTRY, SL_FNV_SEED));
    wr64(h + HDR_HASH, sl_fnv1a64(h, HDR_HASH, SL_FNV_SEED));
    if (pwrite(w->fd, h, sizeof h, 0) != (ssize_t)sizeof h)
        return wfail(w, SL_ERR_IO, "write header: %s", strerror(errno));
    if (fsync(w->fd) != 0) return wfail(w, SL_ERR_IO, "fsync: %s", strerror(errno));
    int fd = w->fd;
    w->fd = -1;
    if (close(fd) != 0) return wfail(w, SL_ERR_IO, "close: %s", strerror(errno));
    if (rename(w->tmp_path, w->path) != 0)
        return wfail(w, SL_ERR_IO, "rename %s: %s", w->tmp_path, strerror(errno));
    return SL_OK;
}

int writer_close(struct sl_writer *w, int ok) {
    if (!w) return SL_OK;
    int st = w->failed;
    if (!st && ok) st = finish(w);
    if (w->fd >= 0) close(w->fd);
    if (st || !ok) unlink(w->tmp_path);
    for (uint32_t i = 0; i < w->n_layers; i++) sl_free(w->layers[i].l.offsets);
    sl_free(w->layers);
    sl_free(w->tensors);
    sl_free(w->name_set);
    for (int i = 0; i < 3; i++) sl_free(w->blob[i]);
    sl_free(w->path);
    sl_free(w->tmp_path);
    sl_free(w);
    return st;
}
