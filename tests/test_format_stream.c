/*
 * test_format_stream.c — the writer's streamed dense tensors
 * (writer_begin_tensor / writer_write_rows / writer_end_tensor in
 * src/format_write.c): a file whose tensors are streamed in blocks of
 * every size is byte-identical to the same file written with
 * writer_add_tensor, and reads back with its hashes verified; every misuse
 * (rows with no open tensor, too many or too few rows, another write while
 * a tensor is open, closing with a tensor open) is refused with its
 * message, and the bad tensor declarations writer_add_tensor refuses are
 * refused by writer_begin_tensor too.
 *
 * Files live in a mkdtemp directory under /tmp, removed at exit.
 */
#include <ftw.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "format.h"
#include "quant.h"
#include "test.h"
#include "util.h"

static char tmp_dir[64];

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}
static void rm_tmp_dir(void) {
    if (tmp_dir[0]) nftw(tmp_dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
}

/* dir/name in buf (n bytes). */
static const char *tpath(char *buf, size_t n, const char *name) {
    if (!tmp_dir[0]) {
        snprintf(tmp_dir, sizeof tmp_dir, "/tmp/sluice_fstream_XXXXXX");
        if (!mkdtemp(tmp_dir)) {
            perror("mkdtemp");
            exit(1);
        }
        atexit(rm_tmp_dir);
    }
    snprintf(buf, n, "%s/%s", tmp_dir, name);
    return buf;
}

#define EXPECT_ARG(call, want)                                                      \
    do {                                                                            \
        CHECK_EQ_INT(call, SL_ERR_ARG);                                             \
        CHECK_MSG(strstr(sl_errmsg(), want) != NULL, "message \"%s\" lacks \"%s\"", \
                  sl_errmsg(), want);                                               \
    } while (0)

/* ---- the sample: three dense tensors and one expert layer ---- */

enum { ROWS = 37, COLS = 64, VEC = 48, N_EXPERTS = 2 };

static uint8_t q8_rows[ROWS * 2 * COLS]; /* (ROWS, q8 row of COLS), filled once */
static float f32_rows[ROWS * COLS];      /* (ROWS, COLS) */
static float vec[VEC];                   /* (VEC) */

static void fill_sample(void) {
    float row[COLS];
    uint64_t rb = quant_row_bytes(SL_DTYPE_Q8, COLS);
    SL_ASSERT(rb * ROWS <= sizeof q8_rows);
    for (int r = 0; r < ROWS; r++) {
        for (int c = 0; c < COLS; c++) {
            row[c] = (float)((r * 31 + c * 7) % 41 - 20) / 16.0f;
            f32_rows[r * COLS + c] = row[c] * 0.5f;
        }
        quant_row_from_f32(SL_DTYPE_Q8, row, q8_rows + r * rb, COLS);
    }
    for (int i = 0; i < VEC; i++) vec[i] = (float)i - 9.5f;
}

/* Streams rows [0, rows) of data (rb bytes a row) in blocks of block rows. */
static int stream(struct sl_writer *w, const char *name, int dtype, int n_dims,
                  const uint64_t *dims, const void *data, uint64_t rows, uint64_t rb,
                  uint64_t block) {
    int st = writer_begin_tensor(w, name, dtype, n_dims, dims);
    for (uint64_t r = 0; !st && r < rows; r += block)
        st = writer_write_rows(w, (const uint8_t *)data + r * rb,
                               rows - r < block ? rows - r : block);
    return st ? st : writer_end_tensor(w);
}

/* The sample file at path; block 0 = writer_add_tensor, else streamed in
 * blocks of that many rows (the 1-D tensor as its single row). */
static int write_sample(const char *path, uint64_t block) {
    static const char *manifest = "{\"sample\":1}";
    uint64_t dq[2] = {ROWS, COLS}, df[3] = {1, ROWS, COLS}, dv[1] = {VEC};
    uint64_t rq = quant_row_bytes(SL_DTYPE_Q8, COLS), rf = COLS * sizeof(float);
    struct sl_writer *w;
    int st = writer_open(&w, path);
    if (st) return st;
    st = writer_set_section(w, SL_SECTION_MANIFEST, manifest, strlen(manifest));
    if (!st && !block) {
        if (!(st = writer_add_tensor(w, "q8", SL_DTYPE_Q8, 2, dq, q8_rows, ROWS * rq)) &&
            !(st = writer_add_tensor(w, "f32", SL_DTYPE_F32, 3, df, f32_rows, ROWS * rf)))
            st = writer_add_tensor(w, "vec", SL_DTYPE_F32, 1, dv, vec, sizeof vec);
    } else if (!st) {
        if (!(st = stream(w, "q8", SL_DTYPE_Q8, 2, dq, q8_rows, ROWS, rq, block)) &&
            !(st = stream(w, "f32", SL_DTYPE_F32, 3, df, f32_rows, ROWS, rf, block)))
            st = stream(w, "vec", SL_DTYPE_F32, 1, dv, vec, 1, sizeof vec, block);
    }
    struct sl_expert_part parts[3] = {{.dtype = SL_DTYPE_F32, .rows = 2, .cols = 32},
                                      {.dtype = SL_DTYPE_F32, .rows = 2, .cols = 32},
                                      {.dtype = SL_DTYPE_F32, .rows = 32, .cols = 2}};
    float e[64] = {0};
    const void *data[3] = {e, e, e};
    if (!st) st = writer_begin_experts(w, 3, N_EXPERTS, parts);
    for (uint32_t x = 0; x < N_EXPERTS && !st; x++) {
        e[0] = (float)x;
        st = writer_add_expert(w, 3, x, data);
    }
    int st2 = writer_close(w, st == SL_OK);
    return st ? st : st2;
}

static int same_bytes(const char *a, const char *b) {
    char *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    int same = sl_read_file(a, &x, &nx) == SL_OK && sl_read_file(b, &y, &ny) == SL_OK &&
               nx == ny && memcmp(x, y, nx) == 0;
    sl_free(x);
    sl_free(y);
    return same;
}

/* ---- tests ---- */

TEST(streamed_equals_whole) {
    fill_sample();
    char ref[128], got[128];
    tpath(ref, sizeof ref, "whole.sluice");
    CHECK_EQ_INT(write_sample(ref, 0), SL_OK);
    static const uint64_t blocks[] = {1, 2, 5, 36, 37, 1000};
    for (size_t i = 0; i < sizeof blocks / sizeof blocks[0]; i++) {
        char name[32];
        snprintf(name, sizeof name, "stream%llu.sluice", (unsigned long long)blocks[i]);
        tpath(got, sizeof got, name);
        CHECK_EQ_INT(write_sample(got, blocks[i]), SL_OK);
        CHECK_MSG(same_bytes(ref, got), "block of %llu rows: file differs",
                  (unsigned long long)blocks[i]);
    }
    /* and it reads back, hashes verified, with the streamed bytes in place */
    struct sl_file f;
    char *bytes = NULL;
    size_t n = 0;
    CHECK_EQ_INT(file_open(&f, got, 1), SL_OK);
    CHECK_EQ_INT(sl_read_file(got, &bytes, &n), SL_OK);
    const struct sl_tensor_info *t = file_find_tensor(&f, "f32");
    CHECK(t != NULL && bytes != NULL);
    if (t && bytes) {
        CHECK_EQ_INT(t->size, sizeof f32_rows);
        CHECK(t->offset + t->size <= n && memcmp(bytes + t->offset, f32_rows, sizeof f32_rows) == 0);
    }
    t = file_find_tensor(&f, "q8");
    uint64_t qsize = ROWS * quant_row_bytes(SL_DTYPE_Q8, COLS);
    CHECK(t != NULL);
    if (t && bytes)
        CHECK(t->size == qsize && t->offset + qsize <= n &&
              memcmp(bytes + t->offset, q8_rows, qsize) == 0);
    sl_free(bytes);
    file_close(&f);
}

TEST(stream_misuse) {
    fill_sample();
    char p[128];
    tpath(p, sizeof p, "misuse.sluice");
    struct sl_writer *w;
    CHECK_EQ_INT(writer_open(&w, p), SL_OK);
    uint64_t d[2] = {4, 32}, d1[1] = {32}, d33[2] = {1, 33}, d0[2] = {0, 32};
    float x[4 * 32] = {0};
    EXPECT_ARG(writer_write_rows(w, x, 1), "writer_write_rows with no open tensor");
    EXPECT_ARG(writer_end_tensor(w), "writer_end_tensor with no open tensor");
    EXPECT_ARG(writer_begin_tensor(w, NULL, SL_DTYPE_F32, 2, d), "NULL argument");
    EXPECT_ARG(writer_begin_tensor(w, "", SL_DTYPE_F32, 2, d), "tensor name of 0 bytes");
    EXPECT_ARG(writer_begin_tensor(w, "t", 9, 2, d), "unknown dtype 9");
    EXPECT_ARG(writer_begin_tensor(w, "t", SL_DTYPE_F32, 5, d), "n_dims 5");
    EXPECT_ARG(writer_begin_tensor(w, "t", SL_DTYPE_F32, 2, d0), "zero dimension in [0,32]");
    EXPECT_ARG(writer_begin_tensor(w, "t", SL_DTYPE_Q8, 2, d33),
               "dtype q8 cannot store rows of 33 columns");
    CHECK_EQ_INT(writer_add_tensor(w, "done", SL_DTYPE_F32, 1, d1, x, 128), SL_OK);
    EXPECT_ARG(writer_begin_tensor(w, "done", SL_DTYPE_F32, 2, d), "duplicate tensor name done");

    CHECK_EQ_INT(writer_begin_tensor(w, "t", SL_DTYPE_F32, 2, d), SL_OK);
    CHECK_EQ_INT(writer_write_rows(w, NULL, 0), SL_OK); /* nothing */
    EXPECT_ARG(writer_write_rows(w, NULL, 1), "NULL argument");
    CHECK_EQ_INT(writer_write_rows(w, x, 3), SL_OK);
    EXPECT_ARG(writer_write_rows(w, x, 2), "tensor t: 2 more rows would exceed its 4 (3 written)");
    EXPECT_ARG(writer_end_tensor(w), "tensor t: only 3 of 4 rows written");
    EXPECT_ARG(writer_add_tensor(w, "u", SL_DTYPE_F32, 1, d1, x, 128),
               "writer_add_tensor while tensor t is open (3 of 4 rows written");
    EXPECT_ARG(writer_begin_tensor(w, "u", SL_DTYPE_F32, 1, d1),
               "writer_begin_tensor while tensor t is open");
    struct sl_expert_part parts[3] = {{.dtype = SL_DTYPE_F32, .rows = 2, .cols = 32},
                                      {.dtype = SL_DTYPE_F32, .rows = 2, .cols = 32},
                                      {.dtype = SL_DTYPE_F32, .rows = 32, .cols = 2}};
    EXPECT_ARG(writer_begin_experts(w, 0, 1, parts), "writer_begin_experts while tensor t");
    const void *data[3] = {x, x, x};
    EXPECT_ARG(writer_add_expert(w, 0, 0, data), "writer_add_expert while tensor t");
    CHECK_EQ_INT(writer_write_rows(w, x, 1), SL_OK);
    CHECK_EQ_INT(writer_end_tensor(w), SL_OK);
    /* a streamed tensor counts as a dense tensor: duplicates and order */
    EXPECT_ARG(writer_begin_tensor(w, "t", SL_DTYPE_F32, 1, d1), "duplicate tensor name t");
    CHECK_EQ_INT(writer_begin_experts(w, 0, 1, parts), SL_OK);
    CHECK_EQ_INT(writer_add_expert(w, 0, 0, data), SL_OK);
    EXPECT_ARG(writer_begin_tensor(w, "late", SL_DTYPE_F32, 1, d1),
               "dense tensors must be added before the first expert record");
    CHECK_EQ_INT(writer_set_section(w, SL_SECTION_MANIFEST, "{}", 2), SL_OK);
    CHECK_EQ_INT(writer_close(w, 1), SL_OK);
    struct sl_file f;
    CHECK_EQ_INT(file_open(&f, p, 1), SL_OK);
    CHECK(file_find_tensor(&f, "t") != NULL && file_find_tensor(&f, "done") != NULL);
    file_close(&f);

    /* NULL writer */
    EXPECT_ARG(writer_begin_tensor(NULL, "t", SL_DTYPE_F32, 1, d1), "NULL argument");
    EXPECT_ARG(writer_write_rows(NULL, x, 1), "NULL argument");
    EXPECT_ARG(writer_end_tensor(NULL), "NULL argument");
}

TEST(close_with_open_tensor) {
    char p[128], tmp[140];
    tpath(p, sizeof p, "open.sluice");
    snprintf(tmp, sizeof tmp, "%s.tmp", p);
    uint64_t d[2] = {4, 32};
    float x[4 * 32] = {0};
    struct sl_writer *w;
    /* ok = 1: refused, nothing left behind */
    CHECK_EQ_INT(writer_open(&w, p), SL_OK);
    CHECK_EQ_INT(writer_set_section(w, SL_SECTION_MANIFEST, "{}", 2), SL_OK);
    CHECK_EQ_INT(writer_begin_tensor(w, "half", SL_DTYPE_F32, 2, d), SL_OK);
    CHECK_EQ_INT(writer_write_rows(w, x, 2), SL_OK);
    EXPECT_ARG(writer_close(w, 1),
               "tensor half: only 2 of 4 rows were written (writer_end_tensor not called)");
    CHECK(access(p, F_OK) != 0 && access(tmp, F_OK) != 0);
    /* ok = 0: a plain cleanup */
    CHECK_EQ_INT(writer_open(&w, p), SL_OK);
    CHECK_EQ_INT(writer_begin_tensor(w, "half", SL_DTYPE_F32, 2, d), SL_OK);
    CHECK_EQ_INT(writer_close(w, 0), SL_OK);
    CHECK(access(p, F_OK) != 0 && access(tmp, F_OK) != 0);
}

TEST_MAIN()
