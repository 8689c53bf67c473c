/*
 * format.h — the .sluice model file: writer and validating reader.
 * The byte-level specification is docs/format.md; this header is its API.
 *
 * Layout (all integers little-endian):
 *
 *   [header: 64 bytes]
 *   [dense region]   every dense tensor, each 64-byte aligned   (mmap'ed)
 *   [expert region]  every (layer, expert) record, 4096-byte aligned: the
 *                    expert's gate, up and down matrices contiguous, so that
 *                    one expert is one read
 *   [sections]       manifest (JSON), tokenizer.json, tokenizer config (JSON),
 *                    tensor table, expert table
 *   [section table]  n_sections entries of 32 bytes
 *
 * The writer streams: data first, tables last, the header rewritten at the
 * end; it holds no more than the caller's current tensor in memory.
 *
 * The reader maps the file read-only and validates magic, version, file size,
 * every section's bounds and hash, every tensor's and record's bounds,
 * sizes against dtype and shape, and alignment. After file_open succeeds,
 * every offset and size it exposes is inside the file.
 */
#ifndef SL_FORMAT_H
#define SL_FORMAT_H

#include <stddef.h>
#include <stdint.h>

#define SL_FILE_MAGIC "SLUICEMF"
#define SL_FILE_VERSION 1u
#define SL_FILE_HEADER_SIZE 64u
#define SL_DENSE_ALIGN 64u
#define SL_EXPERT_ALIGN 4096u
#define SL_MAX_DIMS 4
#define SL_MAX_NAME 255

enum sl_section_kind {
    SL_SECTION_MANIFEST = 1,         /* JSON: architecture + hyper-parameters */
    SL_SECTION_TOKENIZER = 2,        /* tokenizer.json, verbatim */
    SL_SECTION_TOKENIZER_CONFIG = 3, /* JSON: chat template, special tokens,
                                        eos ids (see docs/format.md) */
    SL_SECTION_TENSORS = 4,          /* binary tensor table */
    SL_SECTION_EXPERTS = 5,          /* binary expert table */
    SL_SECTION_DENSE_DATA = 6,       /* the dense region (hashed on verify) */
    SL_SECTION_EXPERT_DATA = 7,      /* the expert region (hashed on verify) */
};

struct sl_tensor_info {
    char name[SL_MAX_NAME + 1];
    int dtype;                  /* enum sl_dtype */
    int n_dims;                 /* 1..SL_MAX_DIMS */
    uint64_t dims[SL_MAX_DIMS]; /* PyTorch order: [rows, cols] for matrices */
    uint64_t offset;            /* absolute file offset */
    uint64_t size;              /* bytes */
};

/* One matrix inside an expert record. */
struct sl_expert_part {
    int dtype;
    uint64_t rows, cols;
    uint64_t offset;            /* within the record */
    uint64_t size;
};

/* The routed experts of one MoE layer. Parts: 0 gate [ffn, hidden],
 * 1 up [ffn, hidden], 2 down [hidden, ffn]. */
struct sl_expert_layer {
    uint32_t layer;
    uint32_t n_experts;
    uint64_t record_size;       /* bytes of one record, a multiple of 4096 */
    struct sl_expert_part part[3];
    uint64_t *offsets;          /* (n_experts) absolute file offsets */
};

/* ---- reader ---- */

struct sl_file {
    int fd;
    const uint8_t *map;         /* whole file, read-only */
    uint64_t size;
    uint32_t version;
    const char *manifest;       /* not NUL-terminated: use manifest_len */
    size_t manifest_len;
    const char *tokenizer;      /* tokenizer.json bytes (may be absent: NULL) */
    size_t tokenizer_len;
    const char *tokenizer_config;
    size_t tokenizer_config_len;
    uint32_t n_tensors;
    struct sl_tensor_info *tensors;   /* (n_tensors), owned */
    uint32_t n_expert_layers;
    struct sl_expert_layer *expert_layers; /* (n_expert_layers), owned */
    uint64_t dense_bytes;       /* sum of tensor sizes */
    uint64_t expert_bytes;      /* sum of record sizes */
};

/* Opens and validates path. verify != 0 also hashes the data regions.
 * On failure *f is left closed (file_close is still safe). */
int file_open(struct sl_file *f, const char *path, int verify);
void file_close(struct sl_file *f);
/* NULL if absent. */
const struct sl_tensor_info *file_find_tensor(const struct sl_file *f,
                                              const char *name);
/* NULL if layer has no routed experts. */
const struct sl_expert_layer *file_expert_layer(const struct sl_file *f,
                                                uint32_t layer);

/* ---- writer ---- */

struct sl_writer;

int writer_open(struct sl_writer **w, const char *path);
/* Section blobs (manifest, tokenizer, tokenizer config). Copied. */
int writer_set_section(struct sl_writer *w, int kind, const void *data,
                       size_t len);
/* Appends a dense tensor whose bytes (size = rows * row_bytes) are already in
 * its stored dtype. */
int writer_add_tensor(struct sl_writer *w, const char *name, int dtype,
                      int n_dims, const uint64_t *dims, const void *data,
                      uint64_t size);
/* The same tensor streamed in row blocks, so that no caller needs it whole
 * in memory: writer_begin_tensor checks what writer_add_tensor checks
 * (name, dtype, shape; before any expert record; no duplicate) and opens
 * it; writer_write_rows appends n_rows rows (n_rows * row_bytes bytes of
 * the stored dtype; a row is the last dimension) and refuses more rows
 * than the shape holds; writer_end_tensor commits it once every row is
 * written. The file is byte-identical to one writer_add_tensor call. While
 * a tensor is open every other add/begin call is SL_ERR_ARG, and
 * writer_close(w, 1) fails and removes the file. */
int writer_begin_tensor(struct sl_writer *w, const char *name, int dtype,
                        int n_dims, const uint64_t *dims);
int writer_write_rows(struct sl_writer *w, const void *data, uint64_t n_rows);
int writer_end_tensor(struct sl_writer *w);
/* Declares the expert layout of a layer before its records are written. The
 * offsets and sizes in parts are computed by the writer from dtype, rows and
 * cols (parts[i].offset/size are ignored on input). Layers may be declared in
 * any order but records of one layer must follow its declaration. */
int writer_begin_experts(struct sl_writer *w, uint32_t layer,
                         uint32_t n_experts,
                         const struct sl_expert_part parts[3]);
/* Appends the record of (layer, expert); experts in order 0..n-1. data[i] is
 * part i's bytes in its dtype. */
int writer_add_expert(struct sl_writer *w, uint32_t layer, uint32_t expert,
                      const void *const data[3]);
/* Writes the tables and header, fsyncs and closes. On any earlier failure
 * or if called with ok == 0, removes the partial file instead. Frees w. */
int writer_close(struct sl_writer *w, int ok);

#endif /* SL_FORMAT_H */
