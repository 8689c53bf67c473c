/*
 * safetensors.c — validating reader of safetensors checkpoints, single file
 * or sharded (see safetensors.h).
 *
 * File layout: u64 little-endian header length N, N bytes of JSON
 * {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
 * {...}}, then the data area; offsets are relative to the data area.
 *
 * What it is not: a cache. Every read is a pread into the caller's buffer
 * (the kernel page cache does the caching), so memory stays bounded by what
 * the caller asks for. Shards are all opened and their headers validated up
 * front — a missing or corrupt shard is reported before any conversion work
 * starts — and their descriptors stay open until st_close.
 */
#include "safetensors.h"

#include <cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host"
#endif

/* safetensors itself refuses headers above 100 MB. */
#define ST_MAX_HEADER (100ull << 20)

struct st_file {
    char *path;
    int fd;
    uint64_t size;
    uint64_t data_start; /* 8 + header length */
};

struct st_set {
    uint32_t n_files;
    struct st_file *files;   /* (n_files) */
    uint32_t n;
    uint32_t cap;
    struct st_tensor *t;     /* (n) sorted by name after open */
};

static const struct {
    const char *name;
    uint32_t size;
    int dtype;
} dtype_table[] = {
    {"F32", 4, SL_DTYPE_F32}, {"F16", 2, SL_DTYPE_F16},
    {"BF16", 2, SL_DTYPE_BF16}, {"F64", 8, -1}, {"I64", 8, -1},
    {"U64", 8, -1}, {"I32", 4, -1}, {"U32", 4, -1}, {"I16", 2, -1},
    {"U16", 2, -1}, {"I8", 1, -1}, {"U8", 1, -1}, {"BOOL", 1, -1},
    {"F8_E4M3", 1, -1}, {"F8_E5M2", 1, -1}, {"F8_E8M0", 1, -1},
};

void st_close(struct st_set *s) {
    if (!s) return;
    for (uint32_t i = 0; i < s->n_files; i++) {
        if (s->files[i].fd >= 0) close(s->files[i].fd);
        sl_free(s->files[i].path);
    }
    for (uint32_t i = 0; i < s->n; i++) sl_free((char *)s->t[i].name);
    sl_free(s->files);
    sl_free(s->t);
    sl_free(s);
}

uint32_t st_count(const struct st_set *s) { return s->n; }

const struct st_tensor *st_at(const struct st_set *s, uint32_t i) {
    return i < s->n ? &s->t[i] : NULL;
}

const char *st_file_path(const struct st_set *s, const struct st_tensor *t) {
    return s->files[t->shard].path;
}

uint64_t st_cols(const struct st_tensor *t) {
    return t->n_dims ? t->dims[t->n_dims - 1] : 1;
}

const struct st_tensor *st_find(const struct st_set *s, const char *name) {
    uint32_t lo = 0, hi = s->n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        int c = strcmp(s->t[mid].name, name);
        if (c == 0) return &s->t[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

static int pread_full(int fd, void *dst, uint64_t n, uint64_t off,
                      const char *path) {
    uint8_t *p = dst;
    while (n) {
        size_t chunk = n > (1u << 30) ? (1u << 30) : (size_t)n;
        ssize_t r = pread(fd, p, chunk, (off_t)off);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0)
            return sl_seterr(SL_ERR_IO, "read %s at offset %llu: %s", path,
                             (unsigned long long)off, strerror(errno));
        if (r == 0)
            return sl_seterr(SL_ERR_IO, "read %s at offset %llu: unexpected "
                             "end of file (was it truncated?)", path,
                             (unsigned long long)off);
        p += r;
        off += (uint64_t)r;
        n -= (uint64_t)r;
    }
    return SL_OK;
}

static int add_file(struct st_set *s, const char *path, int fd, uint64_t size) {
    struct st_file *f = sl_realloc(s->files, (s->n_files + 1) * sizeof *f);
    if (!f) return sl_seterr(SL_ERR_NOMEM, "safetensors: out of memory");
    s->files = f;
    f = &s->files[s->n_files];
    f->path = sl_strdup(path);
    if (!f->path) return sl_seterr(SL_ERR_NOMEM, "safetensors: out of memory");
    f->fd = fd;
    f->size = size;
    f->data_start = 0;
    s->n_files++;
    return SL_OK;
}

/* Parses one tensor entry of a header. */
static int parse_entry(struct st_tensor *t, const cJSON *e, uint64_t data_size,
                       const char *path) {
    const char *name = e->string;
    if (!cJSON_IsObject(e))
        return sl_seterr(SL_ERR_FORMAT, "%s: tensor %s: header entry is not "
                         "an object", path, name);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(dt) || !cJSON_IsArray(sh) || !cJSON_IsArray(off) ||
        cJSON_GetArraySize(off) != 2)
        return sl_seterr(SL_ERR_FORMAT, "%s: tensor %s: header entry needs "
                         "\"dtype\" (string), \"shape\" (list) and "
                         "\"data_offsets\" ([begin, end])", path, name);
    int k = -1;
    for (size_t i = 0; i < sizeof dtype_table / sizeof dtype_table[0]; i++)
        if (strcmp(dt->valuestring, dtype_table[i].name) == 0) k = (int)i;
    if (k < 0)
        return sl_seterr(SL_ERR_UNSUPPORTED, "%s: tensor %s: dtype '%.16s' is "
                         "not supported (supported: F32, F16, BF16)", path,
                         name, dt->valuestring);
    snprintf(t->dtype_name, sizeof t->dtype_name, "%s", dtype_table[k].name);
    t->dtype = dtype_table[k].dtype;
    t->elem_size = dtype_table[k].size;
    int nd = cJSON_GetArraySize(sh);
    if (nd > ST_MAX_DIMS)
        return sl_seterr(SL_ERR_UNSUPPORTED, "%s: tensor %s has %d dimensions "
                         "(at most %d)", path, name, nd, ST_MAX_DIMS);
    t->n_dims = nd;
    uint64_t numel = 1;
    for (int i = 0; i < nd; i++) {
        const cJSON *d = cJSON_GetArrayItem(sh, i);
        if (!cJSON_IsNumber(d) || d->valuedouble < 0 ||
            d->valuedouble > 9.0e15 || d->valuedouble != (double)(uint64_t)d->valuedouble)
            return sl_seterr(SL_ERR_FORMAT, "%s: tensor %s: shape must hold "
                             "non-negative integers", path, name);
        t->dims[i] = (uint64_t)d->valuedouble;
        if (!sl_mul_ok(numel, t->dims[i], &numel))
            return sl_seterr(SL_ERR_FORMAT, "%s: tensor %s: shape overflows",
                             path, name);
    }
    t->numel = numel;
    uint64_t b[2];
    for (int i = 0; i < 2; i++) {
        const cJSON *d = cJSON_GetArrayItem(off, i);
        if (!cJSON_IsNumber(d) || d->valuedouble < 0 || d->valuedouble > 9.0e15 ||
            d->valuedouble != (double)(uint64_t)d->valuedouble)
            return sl_seterr(SL_ERR_FORMAT, "%s: tensor %s: data_offsets must "
                             "be non-negative integers", path, name);
        b[i] = (uint64_t)d->valuedouble;
    }
    if (b[0] > b[1])
        return sl_seterr(SL_ERR_FORMAT, "%s: tensor %s: data_offsets [%llu, "
                         "%llu] are reversed", path, name,
                         (unsigned long long)b[0], (unsigned long long)b[1]);
    if (b[1] > data_size)
        return sl_seterr(SL_ERR_FORMAT, "%s: tensor %s: data [%llu, %llu) "
                         "extends past the end of the data area (%llu bytes); "
                         "the file is truncated or corrupt", path, name,
                         (unsigned long long)b[0], (unsigned long long)b[1],
                         (unsigned long long)data_size);
    uint64_t want;
    if (!sl_mul_ok(numel, t->elem_size, &want) || want != b[1] - b[0])
        return sl_seterr(SL_ERR_FORMAT, "%s: tensor %s: %s shape needs %llu "
                         "bytes but data_offsets span %llu", path, name,
                         t->dtype_name, (unsigned long long)want,
                         (unsigned long long)(b[1] - b[0]));
    t->offset = b[0]; /* relative until the caller adds data_start */
    t->size = b[1] - b[0];
    return SL_OK;
}

static int cmp_offset(const void *a, const void *b) {
    const struct st_tensor *x = *(const struct st_tensor *const *)a;
    const struct st_tensor *y = *(const struct st_tensor *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Opens path, parses and validates its header, appends its tensors. */
static int open_one(struct st_set *s, const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return sl_seterr(SL_ERR_IO, "open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return sl_seterr(SL_ERR_IO, "%s: not a regular file", path);
    }
    int rc = add_file(s, path, fd, (uint64_t)st.st_size);
    if (rc) {
        close(fd);
        return rc;
    }
    uint32_t shard = s->n_files - 1;
    uint64_t size = (uint64_t)st.st_size;
    if (size < 8)
        return sl_seterr(SL_ERR_FORMAT, "%s: %llu bytes is too short for a "
                         "safetensors file", path, (unsigned long long)size);
    uint8_t lenb[8];
    if ((rc = pread_full(fd, lenb, 8, 0, path))) return rc;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | lenb[i];
    if (hlen > size - 8)
        return sl_seterr(SL_ERR_FORMAT, "%s: header length %llu exceeds the "
                         "file size %llu", path, (unsigned long long)hlen,
                         (unsigned long long)size);
    if (hlen > ST_MAX_HEADER)
        return sl_seterr(SL_ERR_FORMAT, "%s: header length %llu exceeds the "
                         "100 MB safetensors limit", path,
                         (unsigned long long)hlen);
    char *hdr = sl_malloc((size_t)hlen + 1);
    if (!hdr) return sl_seterr(SL_ERR_NOMEM, "%s: out of memory", path);
    if ((rc = pread_full(fd, hdr, hlen, 8, path))) {
        sl_free(hdr);
        return rc;
    }
    hdr[hlen] = 0;
    cJSON *root = cJSON_ParseWithLength(hdr, (size_t)hlen);
    sl_free(hdr);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return sl_seterr(SL_ERR_FORMAT, "%s: header is not a valid JSON "
                         "object", path);
    }
    s->files[shard].data_start = 8 + hlen;
    uint64_t data_size = size - 8 - hlen;
    uint32_t first = s->n;
    const cJSON *e;
    cJSON_ArrayForEach(e, root) {
        if (strcmp(e->string, "__metadata__") == 0) continue;
        if (s->n == s->cap) {
            uint32_t cap = s->cap ? s->cap * 2 : 256;
            struct st_tensor *t = sl_realloc(s->t, cap * sizeof *t);
            if (!t) {
                rc = sl_seterr(SL_ERR_NOMEM, "%s: out of memory", path);
                break;
            }
            s->t = t;
            s->cap = cap;
        }
        struct st_tensor *t = &s->t[s->n];
        memset(t, 0, sizeof *t);
        if ((rc = parse_entry(t, e, data_size, path))) break;
        t->name = sl_strdup(e->string);
        if (!t->name) {
            rc = sl_seterr(SL_ERR_NOMEM, "%s: out of memory", path);
            break;
        }
        t->shard = shard;
        s->n++;
    }
    cJSON_Delete(root);
    if (rc) return rc;

    /* Overlap check: sort this file's tensors by offset (a pointer array so
     * the tensor array keeps its order). */
    uint32_t n = s->n - first;
    if (n > 1) {
        struct st_tensor **by = sl_malloc(n * sizeof *by);
        if (!by) return sl_seterr(SL_ERR_NOMEM, "%s: out of memory", path);
        for (uint32_t i = 0; i < n; i++) by[i] = &s->t[first + i];
        qsort(by, n, sizeof *by, cmp_offset);
        for (uint32_t i = 1; i < n && !rc; i++)
            if (by[i]->offset < by[i - 1]->offset + by[i - 1]->size)
                rc = sl_seterr(SL_ERR_FORMAT, "%s: tensors %s and %s overlap",
                               path, by[i - 1]->name, by[i]->name);
        sl_free(by);
        if (rc) return rc;
    }
    for (uint32_t i = first; i < s->n; i++)
        s->t[i].offset += s->files[shard].data_start;
    return SL_OK;
}

static int cmp_name(const void *a, const void *b) {
    return strcmp(((const struct st_tensor *)a)->name,
                  ((const struct st_tensor *)b)->name);
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorts by name, rejects duplicates across shards, numbers the tensors. */
static int finish(struct st_set *s) {
    if (s->n) qsort(s->t, s->n, sizeof *s->t, cmp_name); /* t may be NULL */
    for (uint32_t i = 0; i < s->n; i++) {
        s->t[i].index = i;
        if (i && strcmp(s->t[i].name, s->t[i - 1].name) == 0)
            return sl_seterr(SL_ERR_FORMAT, "tensor %s appears twice (%s and "
                             "%s)", s->t[i].name,
                             s->files[s->t[i - 1].shard].path,
                             s->files[s->t[i].shard].path);
    }
    return SL_OK;
}

int st_open_file(const char *path, struct st_set **out) {
    *out = NULL;
    struct st_set *s = sl_calloc(1, sizeof *s);
    if (!s) return sl_seterr(SL_ERR_NOMEM, "safetensors: out of memory");
    int rc = open_one(s, path);
    if (!rc) rc = finish(s);
    if (rc) {
        st_close(s);
        return rc;
    }
    *out = s;
    return SL_OK;
}

/* model.safetensors.index.json: {"weight_map": {tensor: shard file}}. */
static int open_index(struct st_set *s, const char *dir, const char *ipath) {
    char *txt;
    size_t len;
    int rc = sl_read_file(ipath, &txt, &len);
    if (rc) return rc;
    cJSON *root = cJSON_ParseWithLength(txt, len);
    sl_free(txt);
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(wm)) {
        cJSON_Delete(root);
        return sl_seterr(SL_ERR_FORMAT, "%s: %s", ipath,
                         root ? "no \"weight_map\" object" : "not valid JSON");
    }
    /* Unique shard names, sorted so that the open order is deterministic. */
    int n_entries = cJSON_GetArraySize(wm);
    char **names = sl_malloc(((size_t)n_entries + 1) * sizeof *names);
    if (!names) {
        cJSON_Delete(root);
        return sl_seterr(SL_ERR_NOMEM, "%s: out of memory", ipath);
    }
    int n_names = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, wm) {
        if (!cJSON_IsString(e) || !e->valuestring[0] ||
            strchr(e->valuestring, '/')) {
            rc = sl_seterr(SL_ERR_FORMAT, "%s: weight_map entry for %s must "
                           "be a file name in the same directory", ipath,
                           e->string);
            break;
        }
        names[n_names++] = e->valuestring;
    }
    if (!rc) {
        qsort(names, (size_t)n_names, sizeof *names, cmp_str);
        for (int i = 0; i < n_names && !rc; i++) {
            if (i && strcmp(names[i], names[i - 1]) == 0) continue;
            char *p = sl_path_join(dir, names[i]);
            if (!p) {
                rc = sl_seterr(SL_ERR_NOMEM, "out of memory");
                break;
            }
            rc = open_one(s, p);
            if (rc && access(p, F_OK) != 0)
                sl_preerr(rc, "%s names shard %s, which is missing: ", ipath,
                          names[i]);
            sl_free(p);
        }
    }
    sl_free(names);
    if (!rc) rc = finish(s);
    /* Each weight_map entry must be found in the shard it names. */
    cJSON_ArrayForEach(e, wm) {
        if (rc) break;
        const struct st_tensor *t = st_find(s, e->string);
        const char *base = t ? strrchr(s->files[t->shard].path, '/') : NULL;
        base = base ? base + 1 : (t ? s->files[t->shard].path : NULL);
        if (!t || strcmp(base, e->valuestring) != 0)
            rc = sl_seterr(SL_ERR_FORMAT, "%s: weight_map places tensor %s in "
                           "%s, but %s", ipath, e->string, e->valuestring,
                           t ? "it is in another shard" : "that shard lacks it");
    }
    cJSON_Delete(root);
    return rc;
}

int st_open_dir(const char *dir, struct st_set **out) {
    *out = NULL;
    struct st_set *s = sl_calloc(1, sizeof *s);
    if (!s) return sl_seterr(SL_ERR_NOMEM, "safetensors: out of memory");
    int rc = SL_OK;
    char *ipath = sl_path_join(dir, "model.safetensors.index.json");
    char *single = sl_path_join(dir, "model.safetensors");
    if (!ipath || !single) {
        rc = sl_seterr(SL_ERR_NOMEM, "out of memory");
    } else if (access(ipath, F_OK) == 0) {
        rc = open_index(s, dir, ipath);
    } else if (access(single, F_OK) == 0) {
        rc = open_one(s, single);
        if (!rc) rc = finish(s);
    } else {
        /* Any *.safetensors files, in name order. */
        DIR *d = opendir(dir);
        if (!d) {
            rc = sl_seterr(SL_ERR_IO, "open directory %s: %s", dir,
                           strerror(errno));
        } else {
            char **names = NULL;
            size_t n = 0;
            struct dirent *de;
            while (!rc && (de = readdir(d))) {
                size_t l = strlen(de->d_name);
                if (l <= 12 || strcmp(de->d_name + l - 12, ".safetensors"))
                    continue;
                char **nn = sl_realloc(names, (n + 1) * sizeof *nn);
                if (nn) names = nn;
                if (!nn || !(names[n] = sl_strdup(de->d_name)))
                    rc = sl_seterr(SL_ERR_NOMEM, "out of memory");
                else
                    n++;
            }
            closedir(d);
            if (!rc && n == 0)
                rc = sl_seterr(SL_ERR_IO, "%s: no model.safetensors, "
                               "model.safetensors.index.json or *.safetensors "
                               "file", dir);
            if (names) qsort(names, n, sizeof *names, cmp_str);
            for (size_t i = 0; i < n && !rc; i++) {
                char *p = sl_path_join(dir, names[i]);
                rc = p ? open_one(s, p) : sl_seterr(SL_ERR_NOMEM, "out of memory");
                sl_free(p);
            }
            for (size_t i = 0; i < n; i++) sl_free(names[i]);
            sl_free(names);
            if (!rc) rc = finish(s);
        }
    }
    sl_free(ipath);
    sl_free(single);
    if (rc) {
        st_close(s);
        return rc;
    }
    *out = s;
    return SL_OK;
}

/* F8_E4M3 (torch float8_e4m3fn, DeepSeek's FP8 weights): sign, 4 exponent
 * bits (bias 7), 3 mantissa bits, subnormals, no infinities, S.1111.111 is
 * NaN; largest finite 448. Every value is exact in float32. */
float st_f8e4m3_to_f32(uint8_t b) {
    int e = (b >> 3) & 15, m = b & 7;
    float v;
    if (e == 15 && m == 7) v = NAN;
    else if (e == 0) v = ldexpf((float)m, -9);            /* m/8 * 2^-6 */
    else v = ldexpf((float)(8 + m), e - 10);              /* (1 + m/8) 2^(e-7) */
    return b & 0x80 ? -v : v;
}

static int is_f8e4m3(const struct st_tensor *t) { return strcmp(t->dtype_name, "F8_E4M3") == 0; }

/* Widens n F8_E4M3 bytes at the start of dst into floats, in place (back to
 * front: float i covers bytes 4i..4i+3, all >= i, already converted). */
static void widen_f8_in_place(float *dst, uint64_t n) {
    const uint8_t *src = (const uint8_t *)(void *)dst;
    for (uint64_t i = n; i-- > 0;) dst[i] = st_f8e4m3_to_f32(src[i]);
}

static int check_float(const struct st_set *s, const struct st_tensor *t) {
    if (t->dtype < 0 && !is_f8e4m3(t))
        return sl_seterr(SL_ERR_UNSUPPORTED, "tensor %s (%s): dtype %s is not "
                         "supported (supported: F32, F16, BF16, F8_E4M3)", t->name,
                         s->files[t->shard].path, t->dtype_name);
    return SL_OK;
}

int st_read_raw(const struct st_set *s, const struct st_tensor *t,
                uint64_t off, uint64_t n, void *dst) {
    uint64_t end;
    if (!sl_add_ok(off, n, &end) || end > t->size)
        return sl_seterr(SL_ERR_RANGE, "tensor %s: read of [%llu, %llu) "
                         "outside its %llu bytes", t->name,
                         (unsigned long long)off, (unsigned long long)end,
                         (unsigned long long)t->size);
    const struct st_file *f = &s->files[t->shard];
    return pread_full(f->fd, dst, n, t->offset + off, f->path);
}

/* Widens n 16-bit values stored at the start of dst into floats, in place:
 * walking backwards, element i is written at bytes [4i, 4i+4), which only
 * covers 16-bit elements 2i and 2i+1, both already converted. */
static void widen_in_place(float *dst, uint64_t n, int dtype) {
    const uint16_t *src = (const uint16_t *)(void *)dst;
    for (uint64_t i = n; i-- > 0;) {
        uint16_t h = src[i];
        dst[i] = dtype == SL_DTYPE_BF16 ? sl_bf16_to_f32(h) : sl_f16_to_f32(h);
    }
}

int st_read_rows_f32(const struct st_set *s, const struct st_tensor *t,
                     uint64_t row0, uint64_t n_rows, float *dst) {
    int rc = check_float(s, t);
    if (rc) return rc;
    uint64_t cols = st_cols(t);
    uint64_t rows = cols ? t->numel / cols : 0;
    if (row0 > rows || n_rows > rows - row0)
        return sl_seterr(SL_ERR_RANGE, "tensor %s: rows [%llu, %llu) outside "
                         "its %llu rows", t->name, (unsigned long long)row0,
                         (unsigned long long)(row0 + n_rows),
                         (unsigned long long)rows);
    uint64_t n = n_rows * cols;
    if ((rc = st_read_raw(s, t, row0 * cols * t->elem_size, n * t->elem_size,
                          dst)))
        return rc;
    if (is_f8e4m3(t)) widen_f8_in_place(dst, n);
    else if (t->dtype != SL_DTYPE_F32) widen_in_place(dst, n, t->dtype);
    return SL_OK;
}

int st_read_f32(const struct st_set *s, const struct st_tensor *t,
                float *dst) {
    int rc = check_float(s, t);
    if (rc) return rc;
    if ((rc = st_read_raw(s, t, 0, t->size, dst))) return rc;
    if (is_f8e4m3(t)) widen_f8_in_place(dst, t->numel);
    else if (t->dtype != SL_DTYPE_F32) widen_in_place(dst, t->numel, t->dtype);
    return SL_OK;
}
