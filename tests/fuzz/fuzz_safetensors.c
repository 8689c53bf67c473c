/*
 * fuzz_safetensors.c — libFuzzer target for the safetensors reader
 * (src/safetensors.c): the header parser of one file (st_open_file) and the
 * shard index (st_open_dir with model.safetensors.index.json).
 * `make fuzz` builds it.
 *
 * The low bit of the first byte picks a mode; the rest is the input.
 *   even: a whole .safetensors file, written to a memfd and opened through
 *         /proc/self/fd/N (open, fstat, pread as for a real file);
 *   odd:  a model.safetensors.index.json, written into a temporary directory
 *         that holds two small valid shards (a.safetensors: tensors "a", "b";
 *         b.safetensors: "c"), then st_open_dir on it.
 * On success the invariants of safetensors.h must hold: every tensor inside
 * its file's data area, size == numel * element size, no overlap within a
 * file, names sorted and unique, st_find finding each; and every float
 * tensor of a sane size must read back (st_read_f32, st_read_rows_f32).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "safetensors.h"
#include "sluice.h"
#include "util.h"

static void must(int c, const char *what) {
    if (!c) {
        fprintf(stderr, "fuzz_safetensors: contract violated: %s\n", what);
        abort();
    }
}

static char dir[64];

static void write_file(const char *name, const char *hdr, const void *data, size_t n) {
    char path[128];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    uint64_t hl = strlen(hdr);
    uint8_t lb[8];
    for (int i = 0; i < 8; i++) lb[i] = (uint8_t)(hl >> (8 * i));
    if (fwrite(lb, 1, 8, f) != 8 || fwrite(hdr, 1, hl, f) != hl ||
        (n && fwrite(data, 1, n, f) != n) || fclose(f) != 0)
        abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv) {
    snprintf(dir, sizeof dir, "/tmp/fuzz_safetensors.XXXXXX");
    if (!mkdtemp(dir)) abort();
    float a[6] = {1, 2, 3, 4, 5, 6};
    write_file("a.safetensors",
               "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
               "\"b\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[16,24]}}",
               a, 24);
    write_file("b.safetensors",
               "{\"__metadata__\":{\"format\":\"pt\"},"
               "\"c\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}",
               a, 4);
    return 0;
}

static void check_set(const struct st_set *s) {
    uint32_t n = st_count(s);
    for (uint32_t i = 0; i < n; i++) {
        const struct st_tensor *t = st_at(s, i);
        must(t->index == i, "index is the name order");
        must(st_find(s, t->name) == t, "st_find finds it");
        if (i) must(strcmp(st_at(s, i - 1)->name, t->name) < 0, "names sorted, unique");
        must(t->n_dims >= 0 && t->n_dims <= ST_MAX_DIMS, "dims bounded");
        uint64_t numel = 1, bytes;
        for (int d = 0; d < t->n_dims; d++) must(sl_mul_ok(numel, t->dims[d], &numel), "numel");
        must(numel == t->numel, "numel is the product of dims");
        must(sl_mul_ok(numel, t->elem_size, &bytes) && bytes == t->size, "size = numel * elem");
        struct stat st;
        must(stat(st_file_path(s, t), &st) == 0, "file path valid");
        must(t->offset <= (uint64_t)st.st_size && t->size <= (uint64_t)st.st_size - t->offset,
             "tensor inside its file");
        for (uint32_t j = 0; j < i; j++) {
            const struct st_tensor *u = st_at(s, j);
            if (u->shard != t->shard || !u->size || !t->size) continue;
            must(u->offset + u->size <= t->offset || t->offset + t->size <= u->offset,
                 "no overlap");
        }
        if (t->dtype >= 0 && t->numel <= (1u << 16)) {
            float *buf = malloc((t->numel ? t->numel : 1) * sizeof(float));
            must(buf != NULL, "malloc");
            must(st_read_f32(s, t, buf) == SL_OK, "float tensor reads");
            uint64_t cols = st_cols(t);
            if (cols && t->numel)
                must(st_read_rows_f32(s, t, 0, t->numel / cols, buf) == SL_OK, "rows read");
            must(st_read_rows_f32(s, t, t->numel + 1, 1, buf) != SL_OK, "rows past end refused");
            free(buf);
        } else if (t->dtype < 0) {
            float x;
            must(t->numel == 0 || st_read_f32(s, t, &x) == SL_ERR_UNSUPPORTED,
                 "non-float read refused");
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    struct st_set *s = NULL;
    int rc;
    sl_clearerr();
    if (!(data[0] & 1)) {
        static int fd = -1;
        static char path[64];
        if (fd < 0) {
            fd = memfd_create("fuzz_safetensors", MFD_CLOEXEC);
            if (fd < 0) return 0;
            snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        }
        if (ftruncate(fd, 0) != 0 ||
            pwrite(fd, data + 1, size - 1, 0) != (ssize_t)(size - 1))
            return 0;
        rc = st_open_file(path, &s);
    } else {
        char ipath[128];
        snprintf(ipath, sizeof ipath, "%s/model.safetensors.index.json", dir);
        FILE *f = fopen(ipath, "wb");
        if (!f) return 0;
        size_t w = fwrite(data + 1, 1, size - 1, f);
        if (fclose(f) != 0 || w != size - 1) return 0;
        rc = st_open_dir(dir, &s);
    }
    must((rc == SL_OK) == (s != NULL), "status matches result");
    if (rc != SL_OK) {
        must(rc == SL_ERR_FORMAT || rc == SL_ERR_IO || rc == SL_ERR_UNSUPPORTED ||
                 rc == SL_ERR_NOMEM,
             "status kind");
        must(sl_errmsg()[0] != 0, "failure has a message");
    } else {
        check_set(s);
    }
    st_close(s);
    return 0;
}
