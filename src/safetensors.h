/*
 * safetensors.h — read-only access to a HuggingFace checkpoint stored as
 * safetensors: one file, or several shards named by
 * model.safetensors.index.json.
 *
 * What it is: a validating header parser plus pread-based readers that turn
 * F32 / F16 / BF16 / F8_E4M3 data into floats (F8 values as stored: block
 * scales are the caller's, see convert_fp8.c), a row range at a time so that
 * callers bound their memory. What it is not: a writer, or a reader of other dtypes
 * (they are listed, with their names, so that the caller can skip them or
 * report them; reading one fails with SL_ERR_UNSUPPORTED).
 *
 * Invariants after st_open_dir / st_open_file succeed: every tensor's
 * [offset, offset + size) lies inside its file's data area, size equals
 * numel * element size, no two tensors of one file overlap, names are unique
 * across shards, and the tensors are sorted by name (st_find is a binary
 * search). Nothing is mapped; reads go through pread and the page cache.
 */
#ifndef SL_SAFETENSORS_H
#define SL_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define ST_MAX_DIMS 8

struct st_tensor {
    const char *name;            /* owned by the set */
    char dtype_name[12];         /* as in the header: "BF16", "I64", ... */
    int dtype;                   /* enum sl_dtype (F32/F16/BF16), or -1
                                    (F8_E4M3 is -1 but readable as floats) */
    uint32_t elem_size;          /* bytes per element */
    int n_dims;                  /* 0..ST_MAX_DIMS; 0 is a scalar */
    uint64_t dims[ST_MAX_DIMS];  /* PyTorch order */
    uint64_t numel;
    uint32_t shard;              /* index into the set's files */
    uint32_t index;              /* position in name order, 0..n-1 */
    uint64_t offset;             /* absolute offset in the shard file */
    uint64_t size;               /* bytes */
};

struct st_set;

/* Opens the checkpoint in dir: model.safetensors.index.json if present
 * (every shard it names is opened and validated now, so errors show before
 * any work), else model.safetensors, else every *.safetensors file of dir in
 * name order. On success *out owns the open files until st_close. Errors:
 * SL_ERR_IO (missing file), SL_ERR_FORMAT (bad header, offsets, JSON, index
 * naming a tensor its shard lacks), each naming the file and tensor. */
int st_open_dir(const char *dir, struct st_set **out);

/* Opens a single .safetensors file. */
int st_open_file(const char *path, struct st_set **out);

void st_close(struct st_set *set); /* NULL is a no-op */

uint32_t st_count(const struct st_set *set);
/* i-th tensor in name order; borrowed for the set's lifetime. */
const struct st_tensor *st_at(const struct st_set *set, uint32_t i);
/* NULL if absent. */
const struct st_tensor *st_find(const struct st_set *set, const char *name);
/* The shard file's path (for messages). */
const char *st_file_path(const struct st_set *set, const struct st_tensor *t);

/* Number of columns when the tensor is seen as a matrix [numel/cols, cols]:
 * the last dimension (1 for a scalar). */
uint64_t st_cols(const struct st_tensor *t);

/* Reads the whole tensor as floats: dst holds t->numel floats. Fails with
 * SL_ERR_UNSUPPORTED (naming the tensor and dtype) for dtypes other than
 * F32 / F16 / BF16, SL_ERR_IO on a short read. Values are not checked. */
int st_read_f32(const struct st_set *set, const struct st_tensor *t,
                float *dst);

/* Reads rows [row0, row0 + n_rows) of the tensor seen as a matrix
 * [numel / st_cols(t), st_cols(t)] (so a 3-D expert tensor [E, R, C] is
 * read as E*R rows): dst holds n_rows * st_cols(t) floats. SL_ERR_RANGE if
 * the range is outside the tensor. No extra memory is allocated. */
int st_read_rows_f32(const struct st_set *set, const struct st_tensor *t,
                     uint64_t row0, uint64_t n_rows, float *dst);

/* The float value of an F8_E4M3 byte (exact; 0x7f / 0xff are NaN). */
float st_f8e4m3_to_f32(uint8_t b);

/* Reads n raw bytes at byte offset off of the tensor's data. */
int st_read_raw(const struct st_set *set, const struct st_tensor *t,
                uint64_t off, uint64_t n, void *dst);

#endif /* SL_SAFETENSORS_H */
