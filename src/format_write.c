/*
 * format_write.c — the .sluice model file: the streaming writer (API in
 * format.h; byte-level specification in docs/format.md; the reader is
 * format.c).
 *
 * Invariants: the output is a pure function of the calls made (padding is
 * zero, tables are sorted, no timestamps), written to PATH.tmp and renamed
 * to PATH only by a successful writer_close; any failure (or
 * writer_close(w, 0)) removes PATH.tmp. It holds only the tables in memory,
 * never tensor data: a dense tensor may be streamed in row blocks
 * (writer_begin_tensor / writer_write_rows / writer_end_tensor), and the
 * section hashes are running hashes over the bytes in file order, so the
 * file is the same whether a tensor came in one call or in many. While a
 * tensor is open nothing else may be written. Every write is checked:
 * short writes are retried, an error (ENOSPC, EFBIG, EIO) makes the writer
 * fail for good with SL_ERR_IO and the OS message.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <unistd.h>

#include "format_layout.h"

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
    struct wtensor *tensors;  /* (n_tensors) in add order, plus the open
                                 tensor at [n_tensors] while open */
    int open;                 /* 1 between writer_begin_tensor and _end */
    uint64_t open_row_bytes;  /* the open tensor's stored bytes per row */
    uint64_t open_rows, open_done; /* its rows: in all, written so far */
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

/* Refuses a write while a streamed tensor is open (what names the call). */
static int check_not_open(const struct sl_writer *w, const char *what) {
    if (!w->open) return SL_OK;
    return sl_seterr(SL_ERR_ARG, "%s: %s while tensor %s is open (%" PRIu64 " of %" PRIu64
                     " rows written; call writer_end_tensor first)", w->path, what,
                     w->tensors[w->n_tensors].name, w->open_done, w->open_rows);
}

/* Every check of a new dense tensor except the duplicate name; *size is
 * its stored byte count. */
static int check_tensor(const struct sl_writer *w, const char *name, int dtype, int n_dims,
                        const uint64_t *dims, uint64_t *size) {
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
    if (!quant_dtype_fits(dtype, dims[n_dims - 1]))
        return sl_seterr(SL_ERR_ARG, "%s: tensor %s: dtype %s cannot store rows of %" PRIu64
                         " columns (quantized dtypes need a multiple of %d)", w->path, name,
                         sl_dtype_name(dtype), dims[n_dims - 1], SL_QBLOCK);
    if (!shape_size(dtype, n_dims, dims, size))
        return sl_seterr(SL_ERR_ARG, "%s: tensor %s: shape %s overflows", w->path, name, shape);
    return SL_OK;
}

/* Opens a checked tensor: refuses a duplicate name, pads to its aligned
 * offset and fills the slot at tensors[n_tensors], which writer_end_tensor
 * then commits. */
static int open_tensor(struct sl_writer *w, const char *name, int dtype, int n_dims,
                       const uint64_t *dims, uint64_t size) {
    if (w->set_cap && w->name_set[name_slot(w, name)])
        return sl_seterr(SL_ERR_ARG, "%s: duplicate tensor name %s", w->path, name);
    int st = grow_tensors(w);
    if (st) return st;
    st = wpad_to(w, sl_align_up(w->pos, SL_DENSE_ALIGN));
    if (st) return st;
    struct wtensor *t = &w->tensors[w->n_tensors];
    memset(t, 0, sizeof *t);
    memcpy(t->name, name, strlen(name) + 1);
    t->dtype = dtype;
    t->n_dims = n_dims;
    memcpy(t->dims, dims, (size_t)n_dims * sizeof *dims);
    t->offset = w->pos;
    t->size = size;
    w->open = 1;
    w->open_row_bytes = quant_row_bytes(dtype, dims[n_dims - 1]);
    w->open_rows = size / w->open_row_bytes;
    w->open_done = 0;
    return SL_OK;
}

int writer_begin_tensor(struct sl_writer *w, const char *name, int dtype, int n_dims,
                        const uint64_t *dims) {
    if (!w || !name || !dims) return sl_seterr(SL_ERR_ARG, "writer_begin_tensor: NULL argument");
    if (w->failed) return sl_seterr(w->failed, "%s: writer already failed", w->path);
    uint64_t size;
    int st = check_not_open(w, "writer_begin_tensor");
    if (!st) st = check_tensor(w, name, dtype, n_dims, dims, &size);
    if (!st) st = open_tensor(w, name, dtype, n_dims, dims, size);
    return st;
}

int writer_write_rows(struct sl_writer *w, const void *data, uint64_t n_rows) {
    if (!w || (!data && n_rows))
        return sl_seterr(SL_ERR_ARG, "writer_write_rows: NULL argument");
    if (w->failed) return sl_seterr(w->failed, "%s: writer already failed", w->path);
    if (!w->open)
        return sl_seterr(SL_ERR_ARG, "%s: writer_write_rows with no open tensor (call "
                         "writer_begin_tensor first)", w->path);
    const char *name = w->tensors[w->n_tensors].name;
    if (n_rows > w->open_rows - w->open_done)
        return sl_seterr(SL_ERR_ARG, "%s: tensor %s: %" PRIu64 " more rows would exceed its %"
                         PRIu64 " (%" PRIu64 " written)", w->path, name, n_rows, w->open_rows,
                         w->open_done);
    int st = wwrite(w, data, n_rows * w->open_row_bytes);
    if (st) return st;
    w->open_done += n_rows;
    return SL_OK;
}

int writer_end_tensor(struct sl_writer *w) {
    if (!w) return sl_seterr(SL_ERR_ARG, "writer_end_tensor: NULL argument");
    if (w->failed) return sl_seterr(w->failed, "%s: writer already failed", w->path);
    if (!w->open)
        return sl_seterr(SL_ERR_ARG, "%s: writer_end_tensor with no open tensor", w->path);
    const char *name = w->tensors[w->n_tensors].name;
    if (w->open_done != w->open_rows)
        return sl_seterr(SL_ERR_ARG, "%s: tensor %s: only %" PRIu64 " of %" PRIu64 " rows "
                         "written", w->path, name, w->open_done, w->open_rows);
    w->open = 0;
    w->n_tensors++;
    w->name_set[name_slot(w, name)] = w->n_tensors;
    return SL_OK;
}

int writer_add_tensor(struct sl_writer *w, const char *name, int dtype, int n_dims,
                      const uint64_t *dims, const void *data, uint64_t size) {
    if (!w || !name || !dims || !data)
        return sl_seterr(SL_ERR_ARG, "writer_add_tensor: NULL argument");
    if (w->failed) return sl_seterr(w->failed, "%s: writer already failed", w->path);
    uint64_t want;
    int st = check_not_open(w, "writer_add_tensor");
    if (!st) st = check_tensor(w, name, dtype, n_dims, dims, &want);
    if (st) return st;
    if (want != size) {
        char shape[128];
        shape_str(shape, sizeof shape, n_dims, dims);
        return sl_seterr(SL_ERR_ARG, "%s: tensor %s: size %" PRIu64 " does not match dtype %s "
                         "shape %s (expected %" PRIu64 ")", w->path, name, size,
                         sl_dtype_name(dtype), shape, want);
    }
    if ((st = open_tensor(w, name, dtype, n_dims, dims, size)) ||
        (st = writer_write_rows(w, data, w->open_rows)))
        return st;
    return writer_end_tensor(w);
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
    if (w->open) return check_not_open(w, "writer_begin_experts");
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
    if (w->open) return check_not_open(w, "writer_add_expert");
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
    if (w->open)
        return wfail(w, SL_ERR_ARG, "tensor %s: only %" PRIu64 " of %" PRIu64 " rows were "
                     "written (writer_end_tensor not called)", w->tensors[w->n_tensors].name,
                     w->open_done, w->open_rows);
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
