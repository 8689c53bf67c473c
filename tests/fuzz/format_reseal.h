/*
 * format_reseal.h — test-only helper shared by tests/test_format.c and
 * tests/fuzz/fuzz_format.c: recomputes every hash of a (possibly mutated)
 * .sluice image in place, so that a mutation reaches the structural checks
 * behind the hash checks instead of stopping at "hash mismatch".
 *
 * It trusts nothing in the image: every offset is bounds-checked and
 * entries that point outside the buffer are left alone. Not part of the
 * library (a reader must never "fix" hashes).
 */
#ifndef SL_FORMAT_RESEAL_H
#define SL_FORMAT_RESEAL_H

#include <stdint.h>
#include <string.h>

#include "util.h"

static inline uint64_t reseal_rd64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline void reseal_wr64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

/* fix_size != 0 also sets the header's file_size to len. */
static inline void format_reseal(uint8_t *b, size_t len, int fix_size) {
    if (len < 64) return;
    if (fix_size) reseal_wr64(b + 16, (uint64_t)len);
    uint32_t n;
    memcpy(&n, b + 12, 4);
    uint64_t toff = reseal_rd64(b + 24);
    if (n <= 64 && toff <= len && (uint64_t)n * 32 <= len - toff) {
        for (uint32_t i = 0; i < n; i++) {
            uint8_t *e = b + toff + 32 * (uint64_t)i;
            uint64_t off = reseal_rd64(e + 8), size = reseal_rd64(e + 16);
            if (off <= len && size <= len - off)
                reseal_wr64(e + 24, sl_fnv1a64(b + off, (size_t)size, SL_FNV_SEED));
        }
        reseal_wr64(b + 32, sl_fnv1a64(b + toff, (size_t)n * 32, SL_FNV_SEED));
    }
    reseal_wr64(b + 56, sl_fnv1a64(b, 56, SL_FNV_SEED));
}

#endif /* SL_FORMAT_RESEAL_H */
