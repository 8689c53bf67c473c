/*
 * test_format.c — the .sluice model file (src/format.c): a small model
 * written with the writer and read back field by field and byte by byte;
 * determinism; every reader validation path with its status and message
 * (truncation, magic, version, hashes, table contents resealed so the
 * structural checks are reached); a seeded mutation fuzz loop; writer
 * argument and I/O errors; allocation failures.
 *
 * Files live in a mkdtemp directory under /tmp, removed at exit.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "format.h"
#include "fuzz/format_reseal.h"
#include "quant.h"
#include "test.h"
#include "util.h"

/* ---- scratch directory ---- */

static char tmp_dir[64];

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}
static void rm_tmp_dir(void) {
    if (tmp_dir[0]) nftw(tmp_dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
}

/* Path of name inside the scratch directory: one stable buffer per name. */
static const char *tpath(const char *name) {
    static char names[32][64], paths[32][160];
    static int n;
    if (!tmp_dir[0]) {
        strcpy(tmp_dir, "/tmp/sluice_test_format_XXXXXX");
        if (!mkdtemp(tmp_dir)) {
            perror("mkdtemp");
            exit(1);
        }
        atexit(rm_tmp_dir);
    }
    for (int i = 0; i < n; i++)
        if (!strcmp(names[i], name)) return paths[i];
    if (n == 32 || strlen(name) >= sizeof names[0]) {
        fprintf(stderr, "tpath: too many or too long names\n");
        exit(1);
    }
    snprintf(names[n], sizeof names[n], "%s", name);
    snprintf(paths[n], sizeof paths[n], "%s/%s", tmp_dir, name);
    return paths[n++];
}

static int file_exists(const char *p) { return access(p, F_OK) == 0; }

static uint8_t *slurp(const char *path, size_t *len) {
    char *d;
    if (sl_read_file(path, &d, len) != SL_OK) return NULL;
    return (uint8_t *)d;
}

static void spit(const char *path, const void *d, size_t len) {
    FILE *fp = fopen(path, "wb");
    if (!fp || (len && fwrite(d, 1, len, fp) != len)) {
        perror(path);
        exit(1);
    }
    fclose(fp);
}

/* ---- the sample model ---- */

static const char manifest[] = "{\"model_type\":\"qwen3_moe\",\"hidden_size\":64}";
static const char tokenizer[] = "{\"version\":\"1.0\",\"model\":{\"type\":\"BPE\"}}";
static const char tok_config[] =
    "{\"chat_template\":null,\"bos_token\":null,\"eos_token\":\"<|im_end|>\","
    "\"eos_token_ids\":[2],\"bos_token_id\":null,\"special_tokens\":{}}";

enum { HIDDEN = 64, FFN = 32, N_EXPERTS = 3 };

struct sample_tensor {
    const char *name;
    int dtype, n_dims;
    uint64_t dims[4];
};
/* deliberately not in name order: the writer sorts the table */
static const struct sample_tensor sample[] = {
    {"model.embed_tokens.weight", SL_DTYPE_BF16, 2, {8, HIDDEN}},
    {"model.norm.weight", SL_DTYPE_F32, 1, {HIDDEN}},
    {"lm_head.weight", SL_DTYPE_Q8, 2, {8, HIDDEN}},
    {"model.layers.0.self_attn.q_proj.weight", SL_DTYPE_Q4, 2, {16, HIDDEN}},
    {"model.layers.0.self_attn.k_proj.weight", SL_DTYPE_F16, 3, {2, 3, HIDDEN}},
    {"a", SL_DTYPE_F32, 1, {1}},
};
#define N_SAMPLE ((int)(sizeof sample / sizeof *sample))
static const uint32_t sample_layers[2] = {3, 1}; /* declared out of order */

static uint64_t shape_bytes(int dtype, int n_dims, const uint64_t *dims) {
    uint64_t rows = 1;
    for (int i = 0; i + 1 < n_dims; i++) rows *= dims[i];
    return rows * quant_row_bytes(dtype, dims[n_dims - 1]);
}

/* Deterministic contents: real quantized values for tensors (seeded). */
static uint8_t *tensor_bytes(int idx, uint64_t *size) {
    const struct sample_tensor *t = &sample[idx];
    uint64_t cols = t->dims[t->n_dims - 1], rb = quant_row_bytes(t->dtype, cols);
    *size = shape_bytes(t->dtype, t->n_dims, t->dims);
    uint8_t *b = malloc(*size);
    float *row = malloc(cols * sizeof *row);
    for (uint64_t r = 0; r < *size / rb; r++) {
        for (uint64_t c = 0; c < cols; c++)
            row[c] = sinf((float)(idx * 1000 + r * 31 + c) * 0.37f);
        quant_row_from_f32(t->dtype, row, b + r * rb, cols);
    }
    free(row);
    return b;
}

static void expert_parts(struct sl_expert_part p[3]) {
    memset(p, 0, 3 * sizeof *p);
    p[0] = (struct sl_expert_part){.dtype = SL_DTYPE_Q4, .rows = FFN, .cols = HIDDEN};
    p[1] = (struct sl_expert_part){.dtype = SL_DTYPE_Q4, .rows = FFN, .cols = HIDDEN};
    p[2] = (struct sl_expert_part){.dtype = SL_DTYPE_Q8, .rows = HIDDEN, .cols = FFN};
}

static uint8_t expert_byte(uint32_t layer, uint32_t e, int part, uint64_t i) {
    return (uint8_t)(layer * 77 + e * 13 + (uint64_t)part * 101 + i * 7 + (i >> 8));
}

static uint8_t *expert_data(uint32_t layer, uint32_t e, int part, uint64_t size) {
    uint8_t *b = malloc(size);
    for (uint64_t i = 0; i < size; i++) b[i] = expert_byte(layer, e, part, i);
    return b;
}

static int write_sample(const char *path) {
    struct sl_writer *w;
    int st = writer_open(&w, path);
    if (st) return st;
    st = writer_set_section(w, SL_SECTION_MANIFEST, "placeholder", 11); /* replaced */
    if (!st) st = writer_set_section(w, SL_SECTION_MANIFEST, manifest, strlen(manifest));
    if (!st) st = writer_set_section(w, SL_SECTION_TOKENIZER, tokenizer, strlen(tokenizer));
    if (!st)
        st = writer_set_section(w, SL_SECTION_TOKENIZER_CONFIG, tok_config, strlen(tok_config));
    for (int i = 0; i < N_SAMPLE && !st; i++) {
        uint64_t size;
        uint8_t *b = tensor_bytes(i, &size);
        st = writer_add_tensor(w, sample[i].name, sample[i].dtype, sample[i].n_dims,
                               sample[i].dims, b, size);
        free(b);
    }
    struct sl_expert_part parts[3];
    expert_parts(parts);
    for (int l = 0; l < 2 && !st; l++) st = writer_begin_experts(w, sample_layers[l], N_EXPERTS, parts);
    uint64_t sizes[3] = {FFN * HIDDEN / 32 * 20, FFN * HIDDEN / 32 * 20, HIDDEN * FFN / 32 * 34};
    for (int l = 0; l < 2 && !st; l++)
        for (uint32_t e = 0; e < N_EXPERTS && !st; e++) {
            uint8_t *d[3];
            for (int p = 0; p < 3; p++) d[p] = expert_data(sample_layers[l], e, p, sizes[p]);
            st = writer_add_expert(w, sample_layers[l], e, (const void *const *)d);
            for (int p = 0; p < 3; p++) free(d[p]);
        }
    int st2 = writer_close(w, st == SL_OK);
    return st ? st : st2;
}

/* The good file's bytes, written once. */
static uint8_t *good;
static size_t good_len;
static const char *good_path(void) {
    static char p[256];
    if (!good) {
        snprintf(p, sizeof p, "%s", tpath("good.sluice"));
        if (write_sample(p) != SL_OK) {
            fprintf(stderr, "write_sample: %s\n", sl_errmsg());
            exit(1);
        }
        good = slurp(p, &good_len);
    }
    return p;
}

/* ---- reading the sample back ---- */

TEST(write_read_roundtrip) {
    struct sl_file f;
    CHECK_EQ_INT(file_open(&f, good_path(), 1), SL_OK);
    if (!f.map) {
        fprintf(stderr, "    %s\n", sl_errmsg());
        return;
    }
    CHECK_EQ_INT(f.version, 1);
    CHECK_EQ_INT(f.size, good_len);
    CHECK(f.manifest_len == strlen(manifest) && !memcmp(f.manifest, manifest, f.manifest_len));
    CHECK(f.tokenizer_len == strlen(tokenizer) &&
          !memcmp(f.tokenizer, tokenizer, f.tokenizer_len));
    CHECK(f.tokenizer_config_len == strlen(tok_config) &&
          !memcmp(f.tokenizer_config, tok_config, f.tokenizer_config_len));

    CHECK_EQ_INT(f.n_tensors, N_SAMPLE);
    uint64_t dense = 0;
    for (uint32_t i = 1; i < f.n_tensors; i++)
        CHECK(strcmp(f.tensors[i - 1].name, f.tensors[i].name) < 0);
    for (int i = 0; i < N_SAMPLE; i++) {
        const struct sl_tensor_info *t = file_find_tensor(&f, sample[i].name);
        CHECK(t != NULL);
        if (!t) continue;
        uint64_t size;
        uint8_t *b = tensor_bytes(i, &size);
        CHECK_EQ_INT(t->dtype, sample[i].dtype);
        CHECK_EQ_INT(t->n_dims, sample[i].n_dims);
        for (int d = 0; d < 4; d++) CHECK_EQ_INT(t->dims[d], sample[i].dims[d]);
        CHECK_EQ_INT(t->size, size);
        CHECK_EQ_INT(t->offset % 64, 0);
        CHECK(!memcmp(f.map + t->offset, b, size));
        /* the fd stays usable for pread-based streaming */
        uint8_t tmp[16];
        CHECK_EQ_INT(pread(f.fd, tmp, 16, (off_t)t->offset), 16);
        CHECK(!memcmp(tmp, b, size < 16 ? size : 16));
        dense += size;
        free(b);
    }
    CHECK_EQ_INT(f.dense_bytes, dense);
    CHECK(file_find_tensor(&f, "missing") == NULL);
    CHECK(file_find_tensor(&f, "") == NULL);
    /* dense tensors are in add order in the file: embed first, at 64 */
    CHECK_EQ_INT(file_find_tensor(&f, "model.embed_tokens.weight")->offset, 64);

    CHECK_EQ_INT(f.n_expert_layers, 2);
    CHECK(file_expert_layer(&f, 0) == NULL);
    CHECK(file_expert_layer(&f, 2) == NULL);
    uint64_t sizes[3] = {1280, 1280, 2176}, offs[3] = {0, 1280, 2560};
    uint64_t prev_end = 0;
    for (int l = 0; l < 2; l++) { /* layer 3 was written first, then 1 */
        uint32_t layer = sample_layers[l];
        const struct sl_expert_layer *el = file_expert_layer(&f, layer);
        CHECK(el != NULL);
        if (!el) continue;
        CHECK_EQ_INT(el->layer, layer);
        CHECK_EQ_INT(el->n_experts, N_EXPERTS);
        CHECK_EQ_INT(el->record_size, 8192);
        struct sl_expert_part want[3];
        expert_parts(want);
        for (int p = 0; p < 3; p++) {
            CHECK_EQ_INT(el->part[p].dtype, want[p].dtype);
            CHECK_EQ_INT(el->part[p].rows, want[p].rows);
            CHECK_EQ_INT(el->part[p].cols, want[p].cols);
            CHECK_EQ_INT(el->part[p].offset, offs[p]);
            CHECK_EQ_INT(el->part[p].size, sizes[p]);
        }
        for (uint32_t e = 0; e < N_EXPERTS; e++) {
            CHECK_EQ_INT(el->offsets[e] % 4096, 0);
            CHECK(el->offsets[e] >= prev_end); /* records in write order */
            prev_end = el->offsets[e] + el->record_size;
            for (int p = 0; p < 3; p++) {
                uint8_t *d = expert_data(layer, e, p, sizes[p]);
                CHECK(!memcmp(f.map + el->offsets[e] + offs[p], d, sizes[p]));
                free(d);
            }
            /* padding between and after parts is zero */
            CHECK_EQ_INT(f.map[el->offsets[e] + 2560 + 2176], 0);
            CHECK_EQ_INT(f.map[el->offsets[e] + 8191], 0);
        }
    }
    CHECK_EQ_INT(f.expert_bytes, 6 * 8192);
    file_close(&f);
    file_close(&f); /* idempotent */
    CHECK(f.map == NULL && f.tensors == NULL);
}

TEST(header_bytes) {
    good_path();
    CHECK(!memcmp(good, "SLUICEMF", 8));
    uint32_t v;
    uint64_t fs;
    memcpy(&v, good + 8, 4);
    memcpy(&fs, good + 16, 8);
    CHECK_EQ_INT(v, 1);
    CHECK_EQ_INT(fs, good_len);
    for (int i = 40; i < 56; i++) CHECK_EQ_INT(good[i], 0);
    CHECK(good_len < 64 * 1024); /* small enough for the fuzz corpus */
}

TEST(deterministic) {
    const char *a = tpath("det_a.sluice"), *b = tpath("det_b.sluice");
    CHECK_EQ_INT(write_sample(a), SL_OK);
    CHECK_EQ_INT(write_sample(b), SL_OK);
    size_t la, lb;
    uint8_t *da = slurp(a, &la), *db = slurp(b, &lb);
    CHECK(da && db && la == lb && !memcmp(da, db, la));
    CHECK(!file_exists(tpath("det_a.sluice.tmp")));
    free(da);
    free(db);
}

TEST(close_safe_on_zeroed_and_failed) {
    struct sl_file f;
    memset(&f, 0, sizeof f);
    file_close(&f); /* must not close fd 0 */
    CHECK(fcntl(0, F_GETFD) != -1 || errno != EBADF);
    file_close(NULL);
    CHECK_EQ_INT(file_open(&f, tpath("does_not_exist"), 0), SL_ERR_IO);
    CHECK(strstr(sl_errmsg(), "No such file") != NULL);
    file_close(&f);
    file_close(&f);
    CHECK_EQ_INT(file_open(&f, "/tmp", 0), SL_ERR_IO);
    CHECK(strstr(sl_errmsg(), "not a regular file") != NULL);
}

/* ---- bad input ---- */

/* Writes buf to a scratch file and expects file_open to fail with status
 * and a message containing want. */
#define EXPECT_BAD(buf, len, verify, status, want)                                 \
    do {                                                                           \
        const char *p_ = tpath("bad.sluice");                                      \
        spit(p_, buf, len);                                                        \
        struct sl_file f_;                                                         \
        int st_ = file_open(&f_, p_, verify);                                      \
        CHECK_EQ_INT(st_, status);                                                 \
        CHECK_MSG(strstr(sl_errmsg(), want) != NULL, "message \"%s\" lacks \"%s\"", \
                  sl_errmsg(), want);                                              \
        CHECK_MSG(strstr(sl_errmsg(), p_) != NULL, "message lacks the path");      \
        CHECK(f_.map == NULL && f_.tensors == NULL && f_.expert_layers == NULL);   \
        file_close(&f_);                                                           \
    } while (0)

static uint8_t *copy_good(void) {
    good_path();
    uint8_t *b = malloc(good_len);
    memcpy(b, good, good_len);
    return b;
}

static uint32_t g32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t g64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static void p32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void p64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

/* Section entry of kind in image b (NULL if absent). */
static uint8_t *entry_of(uint8_t *b, uint32_t kind) {
    uint32_t n = g32(b + 12);
    uint8_t *t = b + g64(b + 24);
    for (uint32_t i = 0; i < n; i++)
        if (g32(t + 32 * i) == kind) return t + 32 * i;
    return NULL;
}
static uint8_t *section_of(uint8_t *b, uint32_t kind) { return b + g64(entry_of(b, kind) + 8); }
static uint8_t *tensor_rec(uint8_t *b, uint32_t i) { return section_of(b, SL_SECTION_TENSORS) + 8 + 312 * i; }

TEST(bad_truncated) {
    good_path();
    EXPECT_BAD(good, 0, 0, SL_ERR_FORMAT, "file is truncated: 0 bytes, header needs 64");
    EXPECT_BAD(good, 10, 0, SL_ERR_FORMAT, "file is truncated: 10 bytes, header needs 64");
    EXPECT_BAD(good, 63, 0, SL_ERR_FORMAT, "file is truncated: 63 bytes");
    char want[128];
    for (int k = 1; k <= 6; k++) { /* in data, in sections, in tables */
        size_t len = good_len * (size_t)k / 7;
        snprintf(want, sizeof want, "header says %zu bytes, file has %zu", good_len, len);
        EXPECT_BAD(good, len, 0, SL_ERR_FORMAT, want);
    }
    EXPECT_BAD(good, good_len - 1, 0, SL_ERR_FORMAT, "file is truncated (or has trailing data)");
    uint8_t *b = malloc(good_len + 1);
    memcpy(b, good, good_len);
    b[good_len] = 0;
    EXPECT_BAD(b, good_len + 1, 0, SL_ERR_FORMAT, "file is truncated (or has trailing data)");
    free(b);
}

TEST(bad_header) {
    uint8_t *b = copy_good();
    b[0] = 'X';
    EXPECT_BAD(b, good_len, 0, SL_ERR_FORMAT, "not a sluice model file (bad magic)");
    free(b);
    b = copy_good();
    p32(b + 8, 2);
    EXPECT_BAD(b, good_len, 0, SL_ERR_FORMAT,
               "file format version 2 is newer than this sluice supports (1); HINT: upgrade "
               "sluice or re-run convert");
    p32(b + 8, 0);
    EXPECT_BAD(b, good_len, 0, SL_ERR_FORMAT, "version 0 is invalid");
    free(b);
    b = copy_good();
    b[44] ^= 1; /* reserved byte, header hash not updated */
    EXPECT_BAD(b, good_len, 0, SL_ERR_FORMAT, "header hash mismatch");
    format_reseal(b, good_len, 0);
    EXPECT_BAD(b, good_len, 0, SL_ERR_FORMAT, "header byte 44 is reserved");
    free(b);
    b = copy_good();
    p32(b + 12, 0);
    format_reseal(b, good_len, 0);
    EXPECT_BAD(b, good_len, 0, SL_ERR_FORMAT, "header: 0 sections");
    p32(b + 12, 0xffffffffu);
    format_reseal(b, good_len, 0);
    EXPECT_BAD(b, good_len, 0, SL_ERR_FORMAT, "header: 4294967295 sections");
    free(b);
    b = copy_good();
    p64(b + 24, UINT64_MAX - 8);
    format_reseal(b, good_len, 0);
    EXPECT_BAD(b, good_len, 0, SL_ERR_FORMAT, "section table (offset 18446744073709551607");
    free(b);
}

TEST(bad_hashes) {
    uint8_t *b = copy_good();
    section_of(b, SL_SECTION_MANIFEST)[3] ^= 0x20;
    EXPECT_BAD(b, good_len, 0, SL_ERR_FORMAT, "section manifest (kind 1): hash mismatch");
    free(b);
    b = copy_good();
    tensor_rec(b, 2)[300] ^= 1;
    EXPECT_BAD(b, good_len, 0, SL_ERR_FORMAT, "section tensor table (kind 4): hash mismatch");
    free(b);
    b = copy_good();
    section_of(b, SL_SECTION_EXPERTS)[20] ^= 1;
    EXPECT_BAD(b, good_len, 0, SL_ERR_FORMAT, "section expert table (kind 5): hash mismatch");
    free(b);
    b = copy_good();
    section_of(b, SL_SECTION_TOKENIZER_CONFIG)[0] ^= 1;
    EXPECT_BAD(b, good_len, 0, SL_ERR_FORMAT, "tokenizer config (kind 3): hash mismatch");
    free(b);
    b = copy_good();
    entry_of(b, SL_SECTION_TOKENIZER)[16] ^= 1; /* size field in the section table */
    EXPECT_BAD(b, good_len, 0, SL_ERR_FORMAT, "section table hash mismatch");
    free(b);

    /* data regions: only verify=1 hashes them */
    const char *p = tpath("flip.sluice");
    for (int kind = SL_SECTION_DENSE_DATA; kind <= SL_SECTION_EXPERT_DATA; kind++) {
        b = copy_good();
        section_of(b, (uint32_t)kind)[100] ^= 0x80;
        spit(p, b, good_len);
        struct sl_file f;
        CHECK_EQ_INT(file_open(&f, p, 0), SL_OK);
        file_close(&f);
        EXPECT_BAD(b, good_len, 1, SL_ERR_FORMAT,
                   kind == SL_SECTION_DENSE_DATA ? "section dense data (kind 6): hash mismatch"
                                                 : "section expert data (kind 7): hash mismatch");
        free(b);
    }
}

TEST(bad_sections) {
    uint8_t *b = copy_good();
    p64(entry_of(b, SL_SECTION_TOKENIZER) + 16, UINT64_MAX); /* size */
    format_reseal(b, good_len, 0);
    EXPECT_BAD(b, good_len, 0, SL_ERR_FORMAT, "section tokenizer (kind 2): offset");
    EXPECT_BAD(b, good_len, 0, SL_ERR_FORMAT, "is outside the file");
    free(b);
    b = copy_good();
    p32(entry_of(b, SL_SECTION_MANIFEST), 9); /* unknown, optional */
    format_reseal(b, good_len, 0);
    EXPECT_BAD(b, good_len, 0, SL_ERR_FORMAT, "required section manifest (kind 1) is missing");
    p32(entry_of(b, 9) + 4, 1); /* unknown and required */
    format_reseal(b, good_len, 0);
    EXPECT_BAD(b, good_len, 0, SL_ERR_FORMAT, "section kind 9 is required but unknown");
    p32(entry_of(b, 9) + 4, 6); /* undefined flag bits */
    format_reseal(b, good_len, 0);
    EXPECT_BAD(b, good_len, 0, SL_ERR_FORMAT, "unknown flags 0x6");
    free(b);
    b = copy_good();
    p32(entry_of(b, SL_SECTION_TOKENIZER), SL_SECTION_MANIFEST);
    format_reseal(b, good_len, 0);
    EXPECT_BAD(b, good_len, 0, SL_ERR_FORMAT, "section manifest appears twice");
    free(b);
    b = copy_good();
    uint8_t *tok = entry_of(b, SL_SECTION_TOKENIZER);
    p64(tok + 8, g64(entry_of(b, SL_SECTION_MANIFEST) + 8) + 4); /* inside the manifest */
    p64(tok + 16, 4);
    format_reseal(b, good_len, 0);
    EXPECT_BAD(b, good_len, 0, SL_ERR_FORMAT, "overlaps section tokenizer");
    free(b);
    b = copy_good();
    p64(entry_of(b, SL_SECTION_MANIFEST) + 8, 8); /* inside the header */
    format_reseal(b, good_len, 0);
    EXPECT_BAD(b, good_len, 0, SL_ERR_FORMAT, "is outside the file");
    free(b);
    b = copy_good();
    p64(entry_of(b, SL_SECTION_MANIFEST) + 8, 64); /* inside the dense data */
    format_reseal(b, good_len, 0);
    EXPECT_BAD(b, good_len, 0, SL_ERR_FORMAT, "overlaps");
    free(b);
}

TEST(bad_tensor_table) {
    uint8_t *b = copy_good();
    uint8_t *ts = section_of(b, SL_SECTION_TENSORS);
    p32(ts, 0xffffffffu);
    format_reseal(b, good_len, 0);
    EXPECT_BAD(b, good_len, 0, SL_ERR_FORMAT,
               "tensor table: 4294967295 tensors of 312 bytes do not match the section size");
    free(b);

    /* records sorted by name: 0 "a" f32 [1], 1 lm_head q8 [8,64],
     * 3 k_proj f16 [2,3,64] */
    struct {
        uint32_t rec, field;
        uint64_t value;
        int width;
        const char *want;
    } cases[] = {
        {0, 296, 0, 8, "tensor a: offset 0 + size 4 is outside the dense region"},
        {0, 296, 1u << 20, 8, "is outside the dense region"},
        {0, 296, 65, 8, "tensor a: offset 65 is not 64-aligned"},
        {0, 304, 5, 8, "tensor a: size 5 does not match dtype f32 shape [1] (expected 4)"},
        {0, 256, 9, 4, "tensor a: unknown dtype 9"},
        {0, 260, 0, 4, "tensor a: n_dims 0 (expected 1..4)"},
        {0, 260, 5, 4, "tensor a: n_dims 5"},
        {0, 260, 2, 4, "tensor a: dim 1 is 0 (n_dims 2)"},
        {0, 272, 7, 8, "tensor a: dim 1 is 7 (n_dims 1)"},
        {1, 256, SL_DTYPE_Q4, 4, "size 544 does not match dtype q4 shape [8,64]"},
        {1, 272, 33, 8, "lm_head.weight: dtype q8 cannot store shape [8,33]"},
        {3, 264, 1ull << 40, 8, "shape [1099511627776,1099511627776,64] overflows"},
        {3, 304, UINT64_MAX, 8, "does not match"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        b = copy_good();
        uint8_t *r = tensor_rec(b, cases[i].rec);
        if (cases[i].field == 264) p64(r + 272, 1ull << 40); /* both leading dims huge */
        if (cases[i].width == 4) p32(r + cases[i].field, (uint32_t)cases[i].value);
        else p64(r + cases[i].field, cases[i].value);
        format_reseal(b, good_len, 0);
        EXPECT_BAD(b, good_len, 0, SL_ERR_FORMAT, cases[i].want);
        free(b);
    }

    /* names */
    b = copy_good();
    memset(tensor_rec(b, 0), 'x', 256);
    format_reseal(b, good_len, 0);
    EXPECT_BAD(b, good_len, 0, SL_ERR_FORMAT, "tensor record 0: name is not NUL-terminated");
    free(b);
    b = copy_good();
    tensor_rec(b, 0)[0] = 0;
    format_reseal(b, good_len, 0);
    EXPECT_BAD(b, good_len, 0, SL_ERR_FORMAT, "tensor record 0: empty name");
    free(b);
    b = copy_good();
    tensor_rec(b, 0)[200] = 'z';
    format_reseal(b, good_len, 0);
    EXPECT_BAD(b, good_len, 0, SL_ERR_FORMAT, "tensor a: name padding is not zero");
    free(b);
    b = copy_good();
    memcpy(tensor_rec(b, 1), "a\0", 2); /* record 1 renamed "a" */
    memset(tensor_rec(b, 1) + 2, 0, 254);
    format_reseal(b, good_len, 0);
    EXPECT_BAD(b, good_len, 0, SL_ERR_FORMAT, "duplicate tensor name a");
    free(b);
    b = copy_good();
    tensor_rec(b, 0)[0] = 'z'; /* "z" then "lm_head.weight" */
    format_reseal(b, good_len, 0);
    EXPECT_BAD(b, good_len, 0, SL_ERR_FORMAT, "not sorted by name: lm_head.weight after z");
    free(b);

    /* overlap: lm_head (q8 [8,64], 544 bytes) moved onto the embedding at 64 */
    b = copy_good();
    p64(tensor_rec(b, 1) + 296, 64);
    format_reseal(b, good_len, 0);
    EXPECT_BAD(b, good_len, 0, SL_ERR_FORMAT, "dense region: tensor");
    EXPECT_BAD(b, good_len, 0, SL_ERR_FORMAT, "overlaps tensor");
    free(b);
    /* reserved word */
    b = copy_good();
    p32(section_of(b, SL_SECTION_TENSORS) + 4, 1);
    format_reseal(b, good_len, 0);
    EXPECT_BAD(b, good_len, 0, SL_ERR_FORMAT, "tensor table: reserved word is 1");
    free(b);
}

TEST(bad_expert_table) {
    /* entry layout: +0 layer, +4 n_experts, +8 record_size, +16 parts (40
     * bytes each: dtype, 0, rows, cols, offset, size), +136 offsets */
    struct {
        uint64_t field, value;
        int width;
        const char *want;
    } cases[] = {
        {8 + 4, 0, 4, "experts of layer 1: 0 experts do not fit"},
        {8 + 4, 0x10000000, 4, "268435456 experts do not fit in the expert table"},
        {8 + 8, 4096 + 1, 8, "record size 4097 is not a positive multiple of 4096"},
        {8 + 8, 0, 8, "record size 0 is not"},
        {8 + 8, 4096, 8, "down at record offset 2560 (+2176 bytes)"},
        {8 + 16, 7, 4, "experts of layer 1: gate has unknown dtype 7"},
        {8 + 16 + 32, 1281, 8, "gate size 1281 does not match dtype q4 shape [32,64]"},
        {8 + 16 + 24, 64, 8, "up at record offset 1280 (+1280 bytes) is unaligned, overlaps"},
        {8 + 16 + 24, 8192, 8, "gate at record offset 8192 (+1280 bytes)"},
        {8 + 56 + 24, 1216, 8, "up at record offset 1216"}, /* overlaps gate */
        {8 + 56 + 24, 1300, 8, "up at record offset 1300"}, /* unaligned */
        {8 + 16 + 16, 33, 8, "gate shape [32,33] is invalid for dtype q4"},
        {8 + 16 + 8, 0, 8, "gate shape [0,64] is invalid"},
        {8 + 16 + 4, 1, 4, "gate reserved word is not 0"},
        {8 + 136, 4097, 8, "expert 0 of layer 1: record at 4097"},
        {8 + 136, 64, 8, "is unaligned or outside the expert region"},
        {8 + 136, UINT64_MAX - 4095, 8, "outside the expert region"},
        {8 + 144, 0, 8, "outside the expert region"},
        {0, 1000000, 4, "expert table: 1000000 layers cannot fit"},
        {8, 70000, 4, "expert table: layer index 70000 exceeds 65535"},
        {0, 1, 4, "expert table: 160 trailing bytes"},
        {4, 3, 4, "expert table: reserved word is 3"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        uint8_t *b = copy_good();
        uint8_t *e = section_of(b, SL_SECTION_EXPERTS);
        if (cases[i].width == 4) p32(e + cases[i].field, (uint32_t)cases[i].value);
        else p64(e + cases[i].field, cases[i].value);
        format_reseal(b, good_len, 0);
        EXPECT_BAD(b, good_len, 0, SL_ERR_FORMAT, cases[i].want);
        free(b);
    }
    uint8_t *b = copy_good();
    uint8_t *e = section_of(b, SL_SECTION_EXPERTS);
    p64(e + 8 + 96 + 8, 32); /* down [64,32] -> [32,64]: same q8 size 2176 */
    p64(e + 8 + 96 + 16, 64);
    format_reseal(b, good_len, 0);
    EXPECT_BAD(b, good_len, 0, SL_ERR_FORMAT,
               "shapes gate [32,64] up [32,64] down [32,64] are inconsistent");
    free(b);
    b = copy_good();
    e = section_of(b, SL_SECTION_EXPERTS);
    p32(e + 8 + 160, 1); /* second entry: layer 3 -> 1 */
    format_reseal(b, good_len, 0);
    EXPECT_BAD(b, good_len, 0, SL_ERR_FORMAT, "expert table: layer 1 appears twice");
    p32(e + 8 + 160, 0);
    format_reseal(b, good_len, 0);
    EXPECT_BAD(b, good_len, 0, SL_ERR_FORMAT, "expert table: layer 0 is out of order");
    free(b);
    b = copy_good();
    e = section_of(b, SL_SECTION_EXPERTS);
    p64(e + 8 + 144, g64(e + 8 + 136)); /* expert 1 on expert 0 */
    format_reseal(b, good_len, 0);
    EXPECT_BAD(b, good_len, 0, SL_ERR_FORMAT, "expert region: record of layer 1 expert 0");
    free(b);
    b = copy_good();
    /* drop the expert data section: the table needs it */
    p32(entry_of(b, SL_SECTION_EXPERT_DATA), 12);
    format_reseal(b, good_len, 0);
    EXPECT_BAD(b, good_len, 0, SL_ERR_FORMAT, "expert table present without expert data");
    free(b);
}

/* Seeded mutations of the good file: each open either succeeds (and then
 * every exposed range is inside the file) or fails with a message; half of
 * the mutants are resealed so they get past the hashes. */
TEST(mutation_fuzz) {
    good_path();
    /* a memfd: rewriting a real file 2000 times is slow on some /tmp */
    int mfd = memfd_create("mutation_fuzz", MFD_CLOEXEC);
    if (mfd < 0) TEST_SKIP("memfd_create: %s", strerror(errno));
    char p[64];
    snprintf(p, sizeof p, "/proc/self/fd/%d", mfd);
    uint64_t s = 0x853c49e6748fea9bull;
#define NEXT() (s ^= s << 13, s ^= s >> 7, s ^= s << 17, s)
    int n_ok = 0, n_fail = 0;
    uint8_t *b = malloc(good_len);
    for (int it = 0; it < 2000; it++) {
        memcpy(b, good, good_len);
        size_t len = good_len;
        int kind = (int)(NEXT() % 4);
        if (kind == 0) {
            len = NEXT() % (good_len + 1);
        } else {
            int n = 1 + (int)(NEXT() % 8);
            for (int k = 0; k < n; k++) {
                /* bias toward the tables and header, where the structure is */
                size_t at = NEXT() & 1 ? good_len - 1 - NEXT() % 1200 : NEXT() % good_len;
                if (kind == 1) b[at] ^= (uint8_t)(1u << (NEXT() % 8));
                else if (kind == 2) b[at] = (uint8_t)NEXT();
                else if (at + 8 <= len) p64(b + at, NEXT() & 1 ? UINT64_MAX >> (NEXT() % 64) : NEXT() % 70000);
            }
        }
        if (NEXT() & 1) format_reseal(b, len, 1);
        if (ftruncate(mfd, 0) != 0 || pwrite(mfd, b, len, 0) != (ssize_t)len) {
            CHECK(!"memfd write");
            break;
        }
        struct sl_file f;
        int st = file_open(&f, p, (int)(NEXT() & 1));
        if (st == SL_OK) {
            n_ok++;
            for (uint32_t i = 0; i < f.n_tensors; i++)
                CHECK(f.tensors[i].offset + f.tensors[i].size <= f.size);
            for (uint32_t i = 0; i < f.n_expert_layers; i++)
                for (uint32_t e = 0; e < f.expert_layers[i].n_experts; e++)
                    CHECK(f.expert_layers[i].offsets[e] + f.expert_layers[i].record_size <= f.size);
            CHECK(f.manifest + f.manifest_len <= (const char *)f.map + f.size);
        } else {
            n_fail++;
            CHECK(st == SL_ERR_FORMAT);
            CHECK(sl_errmsg()[0] != 0);
        }
        file_close(&f);
    }
#undef NEXT
    free(b);
    close(mfd);
    fprintf(stderr, "  mutation_fuzz: %d opened, %d rejected\n", n_ok, n_fail);
    CHECK(n_fail > 1000);
}

/* Every allocation of file_open and of the writer failing in turn. */
TEST(alloc_failures) {
    const char *p = good_path();
    int saw_nomem = 0;
    for (long n = 1; n < 20; n++) {
        struct sl_file f;
        sl_alloc_fail_after(n);
        int st = file_open(&f, p, 0);
        sl_alloc_fail_after(0);
        CHECK(st == SL_OK || st == SL_ERR_NOMEM);
        saw_nomem |= st == SL_ERR_NOMEM;
        file_close(&f);
    }
    CHECK(saw_nomem);
    const char *wp = tpath("oom.sluice");
    /* n counts up until the n-th allocation is past the last one: that
     * run succeeds and ends the loop (each success costs an fsync) */
    for (long n = 1; n < 1000; n++) {
        sl_alloc_fail_after(n);
        int st = write_sample(wp);
        sl_alloc_fail_after(0);
        CHECK(st == SL_OK || st == SL_ERR_NOMEM);
        CHECK(!file_exists(tpath("oom.sluice.tmp")));
        if (st == SL_OK) {
            size_t len;
            uint8_t *d = slurp(wp, &len);
            CHECK(d && len == good_len && !memcmp(d, good, len));
            free(d);
            unlink(wp);
            CHECK(n > 5); /* the writer does allocate */
            break;
        }
    }
}

/* ---- writer errors ---- */

TEST(writer_bad_path) {
    struct sl_writer *w = (struct sl_writer *)1;
    CHECK_EQ_INT(writer_open(&w, "/nonexistent_dir_sluice/x.sluice"), SL_ERR_IO);
    CHECK(w == NULL);
    CHECK(strstr(sl_errmsg(), "/nonexistent_dir_sluice/x.sluice.tmp") != NULL);
    CHECK(strstr(sl_errmsg(), "No such file or directory") != NULL);
    CHECK_EQ_INT(writer_open(&w, ""), SL_ERR_ARG);
    CHECK_EQ_INT(writer_close(NULL, 1), SL_OK);
}

#define EXPECT_ARG(call, want)                                                      \
    do {                                                                            \
        CHECK_EQ_INT(call, SL_ERR_ARG);                                             \
        CHECK_MSG(strstr(sl_errmsg(), want) != NULL, "message \"%s\" lacks \"%s\"", \
                  sl_errmsg(), want);                                               \
    } while (0)

TEST(writer_bad_args) {
    const char *p = tpath("args.sluice");
    struct sl_writer *w;
    CHECK_EQ_INT(writer_open(&w, p), SL_OK);
    float x[64] = {0};
    uint64_t d1[1] = {64}, d2[2] = {2, 32}, d33[2] = {1, 33}, d0[2] = {0, 32};
    char longname[300];
    memset(longname, 'n', 299);
    longname[299] = 0;
    EXPECT_ARG(writer_add_tensor(w, longname, SL_DTYPE_F32, 1, d1, x, 256),
               "tensor name of 299 bytes (expected 1..255)");
    EXPECT_ARG(writer_add_tensor(w, "", SL_DTYPE_F32, 1, d1, x, 256), "tensor name of 0 bytes");
    EXPECT_ARG(writer_add_tensor(w, "t", SL_DTYPE_F32, 0, d1, x, 256), "n_dims 0");
    EXPECT_ARG(writer_add_tensor(w, "t", SL_DTYPE_F32, 5, d1, x, 256), "n_dims 5");
    EXPECT_ARG(writer_add_tensor(w, "t", 9, 1, d1, x, 256), "unknown dtype 9");
    EXPECT_ARG(writer_add_tensor(w, "t", SL_DTYPE_F32, 1, d1, x, 255),
               "tensor t: size 255 does not match dtype f32 shape [64] (expected 256)");
    EXPECT_ARG(writer_add_tensor(w, "t", SL_DTYPE_Q8, 2, d33, x, 33),
               "dtype q8 cannot store rows of 33 columns");
    EXPECT_ARG(writer_add_tensor(w, "t", SL_DTYPE_F32, 2, d0, x, 0), "zero dimension in [0,32]");
    EXPECT_ARG(writer_add_tensor(w, "t", SL_DTYPE_F32, 2, d2, NULL, 256), "NULL argument");
    CHECK_EQ_INT(writer_add_tensor(w, "t", SL_DTYPE_F32, 1, d1, x, 256), SL_OK);
    EXPECT_ARG(writer_add_tensor(w, "t", SL_DTYPE_F32, 2, d2, x, 256), "duplicate tensor name t");
    /* many names: the name set grows and still finds duplicates */
    for (int i = 0; i < 300; i++) {
        char nm[32];
        snprintf(nm, sizeof nm, "t%d", i);
        CHECK_EQ_INT(writer_add_tensor(w, nm, SL_DTYPE_F32, 1, d1, x, 256), SL_OK);
    }
    EXPECT_ARG(writer_add_tensor(w, "t123", SL_DTYPE_F32, 1, d1, x, 256), "duplicate tensor name t123");
    EXPECT_ARG(writer_set_section(w, SL_SECTION_TENSORS, "x", 1), "section kind 4 cannot be set");

    struct sl_expert_part parts[3];
    expert_parts(parts);
    struct sl_expert_part bad[3];
    memcpy(bad, parts, sizeof bad);
    bad[2].rows = 32;
    EXPECT_ARG(writer_begin_experts(w, 0, 2, bad), "layer 0: expert shapes gate [32,64]");
    memcpy(bad, parts, sizeof bad);
    bad[0].cols = 48;
    EXPECT_ARG(writer_begin_experts(w, 0, 2, bad), "expert gate [32,48] cannot be stored as dtype q4");
    EXPECT_ARG(writer_begin_experts(w, 0, 0, parts), "layer 0: 0 experts");
    EXPECT_ARG(writer_begin_experts(w, 65536, 1, parts), "layer index 65536 exceeds 65535");
    CHECK_EQ_INT(writer_begin_experts(w, 5, 2, parts), SL_OK);
    EXPECT_ARG(writer_begin_experts(w, 5, 2, parts), "experts of layer 5 declared twice");
    uint8_t blob[4096] = {0};
    const void *data[3] = {blob, blob, blob};
    EXPECT_ARG(writer_add_expert(w, 6, 0, data), "layer not declared");
    EXPECT_ARG(writer_add_expert(w, 5, 1, data), "layer 5: expert 1 written out of order (expected 0 of 2)");
    CHECK_EQ_INT(writer_add_expert(w, 5, 0, data), SL_OK);
    EXPECT_ARG(writer_add_tensor(w, "late", SL_DTYPE_F32, 1, d1, x, 256),
               "dense tensors must be added before the first expert record");
    CHECK_EQ_INT(writer_set_section(w, SL_SECTION_MANIFEST, "{}", 2), SL_OK);
    /* layer 5 has 1 of 2 experts: close fails and leaves no file */
    EXPECT_ARG(writer_close(w, 1), "layer 5: only 1 of 2 experts were written");
    CHECK(!file_exists(p));
    CHECK(!file_exists(tpath("args.sluice.tmp")));

    /* no manifest */
    CHECK_EQ_INT(writer_open(&w, p), SL_OK);
    EXPECT_ARG(writer_close(w, 1), "no manifest section");
    CHECK(!file_exists(p) && !file_exists(tpath("args.sluice.tmp")));

    /* deliberate abort */
    CHECK_EQ_INT(writer_open(&w, p), SL_OK);
    CHECK(file_exists(tpath("args.sluice.tmp")));
    CHECK_EQ_INT(writer_add_tensor(w, "t", SL_DTYPE_F32, 1, d1, x, 256), SL_OK);
    CHECK_EQ_INT(writer_close(w, 0), SL_OK);
    CHECK(!file_exists(p) && !file_exists(tpath("args.sluice.tmp")));

    /* a minimal file: manifest and one tensor, no experts, no tokenizer */
    CHECK_EQ_INT(writer_open(&w, p), SL_OK);
    CHECK_EQ_INT(writer_set_section(w, SL_SECTION_MANIFEST, "{}", 2), SL_OK);
    CHECK_EQ_INT(writer_add_tensor(w, "t", SL_DTYPE_F32, 1, d1, x, 256), SL_OK);
    CHECK_EQ_INT(writer_close(w, 1), SL_OK);
    struct sl_file f;
    CHECK_EQ_INT(file_open(&f, p, 1), SL_OK);
    CHECK(f.tokenizer == NULL && f.tokenizer_config == NULL);
    CHECK_EQ_INT(f.n_tensors, 1);
    CHECK_EQ_INT(f.n_expert_layers, 0);
    CHECK(file_expert_layer(&f, 0) == NULL);
    file_close(&f);
}

/* A write that fails part way (RLIMIT_FSIZE -> EFBIG, like ENOSPC): the
 * writer reports SL_ERR_IO with the OS error and removes the partial file. */
TEST(writer_io_error) {
    const char *p = tpath("big.sluice");
    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    lim = old;
    lim.rlim_cur = 10000;
    if (setrlimit(RLIMIT_FSIZE, &lim) != 0) {
        signal(SIGXFSZ, prev);
        TEST_SKIP("setrlimit: %s", strerror(errno));
    }
    struct sl_writer *w;
    int st = writer_open(&w, p);
    CHECK_EQ_INT(st, SL_OK);
    static float big[8192];
    uint64_t dims[2] = {4, 2048};
    st = writer_add_tensor(w, "big", SL_DTYPE_F32, 2, dims, big, sizeof big);
    setrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, prev);
    CHECK_EQ_INT(st, SL_ERR_IO);
    CHECK_MSG(strstr(sl_errmsg(), "File too large") != NULL, "%s", sl_errmsg());
    CHECK(strstr(sl_errmsg(), "big.sluice") != NULL);
    /* the writer stays failed */
    uint64_t d1[1] = {1};
    CHECK_EQ_INT(writer_add_tensor(w, "x", SL_DTYPE_F32, 1, d1, big, 4), SL_ERR_IO);
    CHECK_EQ_INT(writer_close(w, 1), SL_ERR_IO);
    CHECK(!file_exists(p));
    CHECK(!file_exists(tpath("big.sluice.tmp")));
}

/* SLUICE_FORMAT_CORPUS=dir writes the fuzz seed corpus (the sample model
 * and a minimal one) into dir: tests/fuzz/corpus/format is made this way. */
TEST(write_fuzz_corpus) {
    const char *dir = getenv("SLUICE_FORMAT_CORPUS");
    if (!dir) return;
    char p[512];
    good_path();
    snprintf(p, sizeof p, "%s/sample.sluice", dir);
    spit(p, good, good_len);
    snprintf(p, sizeof p, "%s/minimal.sluice", dir);
    struct sl_writer *w;
    float x[4] = {1, 2, 3, 4};
    uint64_t d[2] = {2, 2};
    CHECK_EQ_INT(writer_open(&w, p), SL_OK);
    CHECK_EQ_INT(writer_set_section(w, SL_SECTION_MANIFEST, "{}", 2), SL_OK);
    CHECK_EQ_INT(writer_add_tensor(w, "w", SL_DTYPE_F32, 2, d, x, sizeof x), SL_OK);
    CHECK_EQ_INT(writer_close(w, 1), SL_OK);
    /* one MoE layer with one small expert */
    snprintf(p, sizeof p, "%s/one_expert.sluice", dir);
    struct sl_expert_part parts[3] = {{SL_DTYPE_Q4, 32, 32, 0, 0},
                                      {SL_DTYPE_Q4, 32, 32, 0, 0},
                                      {SL_DTYPE_BF16, 32, 32, 0, 0}};
    static uint8_t blob[2048];
    const void *data[3] = {blob, blob, blob};
    CHECK_EQ_INT(writer_open(&w, p), SL_OK);
    CHECK_EQ_INT(writer_set_section(w, SL_SECTION_MANIFEST, "{}", 2), SL_OK);
    CHECK_EQ_INT(writer_set_section(w, SL_SECTION_TOKENIZER, "{}", 2), SL_OK);
    CHECK_EQ_INT(writer_add_tensor(w, "w", SL_DTYPE_F32, 2, d, x, sizeof x), SL_OK);
    CHECK_EQ_INT(writer_begin_experts(w, 0, 1, parts), SL_OK);
    CHECK_EQ_INT(writer_add_expert(w, 0, 0, data), SL_OK);
    CHECK_EQ_INT(writer_close(w, 1), SL_OK);
}

TEST_MAIN()
