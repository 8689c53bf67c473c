/*
 * format_layout.h — private to src/format.c (reader) and src/format_write.c
 * (writer): the byte offsets and record sizes of docs/format.md and the
 * small helpers both sides use, so that the two can never disagree.
 * Not an API: nothing outside the format module includes it.
 */
#ifndef SL_FORMAT_LAYOUT_H
#define SL_FORMAT_LAYOUT_H

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "format.h"
#include "quant.h"
#include "util.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "the format reads little-endian integers with memcpy");

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

static inline uint32_t rd32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}
static inline uint64_t rd64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}
static inline void wr32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void wr64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

static inline const char *section_name(uint32_t kind) {
    static const char *names[N_KINDS] = {"?", "manifest", "tokenizer",
                                         "tokenizer config", "tensor table",
                                         "expert table", "dense data",
                                         "expert data"};
    return kind < N_KINDS ? names[kind] : "unknown";
}

/* Rows and row bytes of a [d0, ..., dn-1] tensor: rows = d0*...*dn-2,
 * cols = dn-1. Returns 0 on overflow or when dtype cannot store the row. */
static inline int shape_size(int dtype, int n_dims, const uint64_t *dims,
                      uint64_t *size) {
    uint64_t rows = 1;
    for (int i = 0; i + 1 < n_dims; i++)
        if (!sl_mul_ok(rows, dims[i], &rows)) return 0;
    uint64_t rb = quant_row_bytes(dtype, dims[n_dims - 1]);
    return rb != 0 && sl_mul_ok(rows, rb, size);
}

static inline void shape_str(char *buf, size_t n, int n_dims, const uint64_t *dims) {
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < n_dims && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, "%s%" PRIu64, i ? "," : "", dims[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

/* The gate/up/down shapes of an expert: gate [ffn, hidden], up [ffn, hidden],
 * down [hidden, ffn]. Returns 0 if inconsistent. */
static inline int expert_shapes_ok(const struct sl_expert_part p[3]) {
    return p[0].rows == p[1].rows && p[0].cols == p[1].cols &&
           p[2].rows == p[0].cols && p[2].cols == p[0].rows;
}

struct section {
    uint32_t kind, flags;
    uint64_t offset, size, hash;
};

#endif /* SL_FORMAT_LAYOUT_H */
