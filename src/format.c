/*
 * format.c — the .sluice model file: the validating reader (API in
 * format.h; byte-level specification in docs/format.md; the writer is
 * format_write.c, the shared layout constants format_layout.h).
 *
 * What it is not: it does not interpret the manifest or tokenizer JSON (the
 * model and tokenizer modules do), and it does not read expert records (the
 * expert store preads them through f->fd at the offsets exposed here).
 *
 * Invariants: after file_open returns SL_OK, every offset and size in
 * struct sl_file lies inside the mapping; tensor and expert tables are
 * sorted (by name, by layer) so lookups are binary searches; nothing
 * overlaps; every size matches its dtype and shape. All arithmetic on
 * numbers read from the file is overflow-checked, and every count is
 * bounded by its section's size before anything is allocated. A failed
 * open leaves nothing mapped, open or allocated.
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

#include "format_layout.h"

/* ======================================================================
 * Reader
 * ====================================================================== */

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
