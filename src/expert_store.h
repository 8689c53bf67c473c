/*
 * expert_store.h — the one seam through which routed experts are reached:
 * every (layer, expert) is addressed through expert_store_acquire, never by
 * raw pointers, so that residency (caching, I/O, prefetch) lives here alone.
 *
 * This version serves experts straight from the file mapping: acquire is a
 * bounds-checked lookup and the page cache is the only cache. It counts the
 * records and bytes each context touches. The bounded RAM cache with
 * parallel reads replaces the body of acquire/release, not the interface.
 */
#ifndef SL_EXPERT_STORE_H
#define SL_EXPERT_STORE_H

#include <stdint.h>

#include "format.h"

/* One expert's three matrices, valid between acquire and release. */
struct expert_view {
    const void *gate;    /* (moe_ffn, hidden) in dtype[0] */
    const void *up;      /* (moe_ffn, hidden) in dtype[1] */
    const void *down;    /* (hidden, moe_ffn) in dtype[2] */
    int dtype[3];
    uint64_t bytes;      /* record size */
};

struct expert_store;

/* Creates a store over an open file; the file must outlive the store. */
int expert_store_create(const struct sl_file *file, struct expert_store **out);
void expert_store_free(struct expert_store *s); /* NULL is a no-op */

/* Makes (layer, expert) available and fills *view. SL_ERR_RANGE if the
 * layer has no routed experts or expert is out of range. Thread safe. */
int expert_store_acquire(struct expert_store *s, uint32_t layer,
                         uint32_t expert, struct expert_view *view);
/* Ends the use begun by acquire. */
void expert_store_release(struct expert_store *s, uint32_t layer,
                          uint32_t expert);

#endif /* SL_EXPERT_STORE_H */
