/*
 * expert_store.h — the one seam through which routed experts are reached:
 * every (layer, expert) is addressed through this store, never by raw
 * pointers, so that residency (caching, I/O, prefetch) lives here alone.
 * Design, policies, defaults and statistics: docs/streaming.md.
 *
 * What it is: a bounded RAM cache of expert records (slots of the largest
 * record size, 4096-aligned for O_DIRECT) filled by a pool of reads in
 * flight (io_uring, or pread threads), with a replacement policy (LRU, LFU
 * with ageing), pins, low-priority prefetch and counters. In SL_IO_MMAP
 * mode it is the old pass-through: views point into the file mapping.
 * What it is not: a compute engine — it hands out read-only views.
 *
 * Invariants:
 *   - Cached expert bytes never exceed the budget: the slot arena is
 *     floor(budget / slot_size) slots, allocated once, and a record is only
 *     read into a free or evicted slot.
 *   - A slot is never evicted while pinned: a pin is taken per requested
 *     expert by expert_store_request and dropped by expert_store_release (or
 *     expert_store_cancel); experts pinned by a warm-start profile are never
 *     evicted.
 *   - A view's bytes are exactly the record's bytes in the file, whatever
 *     the cache size, policy, prefetch or I/O mode, so outputs are
 *     bit-identical across all of them.
 *   - The expert pages of the file mapping are never touched unless the I/O
 *     mode is SL_IO_MMAP.
 *   - Demand reads go before prefetch reads; at most half of the reads in
 *     flight are prefetches, so a demand read is never queued behind one.
 *
 * Thread safety: every function may be called from any thread; one mutex
 * guards the state, reads run outside it.
 */
#ifndef SL_EXPERT_STORE_H
#define SL_EXPERT_STORE_H

#include <stdint.h>
#include <sys/types.h>

#include "format.h"
#include "sluice.h"

/* One expert's three matrices, valid between acquire and release. */
struct expert_view {
    const void *gate;    /* (moe_ffn, hidden) in dtype[0] */
    const void *up;      /* (moe_ffn, hidden) in dtype[1] */
    const void *down;    /* (hidden, moe_ffn) in dtype[2] */
    int dtype[3];
    uint64_t bytes;      /* record size */
};

/* The test hook (also for issue 12's fault injection): a pread-like read
 * function. It must behave like pread(2): return the bytes read (possibly
 * fewer than len: the store then reads the rest; 0 = end of file) or -1
 * with errno set. A store with a hook uses pread threads (not io_uring), so
 * every read goes through the hook. */
struct expert_store_io {
    ssize_t (*pread)(void *user, int fd, void *buf, size_t len, uint64_t off);
    void *user;
};

struct expert_store_params {
    uint64_t budget_bytes;   /* bytes or SL_RAM_CACHE_DEFAULT / _ALL */
    int io_mode;             /* enum sl_io_mode */
    int policy;              /* enum sl_cache_policy */
    int prefetch;            /* enum sl_prefetch_mode */
    int n_io;                /* reads in flight; 0 = 8 */
    int no_uring;            /* nonzero: pread threads */
    uint64_t dense_bytes;    /* for the default budget */
    const char *profile_path; /* NULL = none; copied */
    const struct expert_store_io *io; /* NULL = pread(2) (copied) */
};

struct expert_store;

/* Creates a store over an open file (path names the same file; it is
 * reopened for reads, with O_DIRECT in direct mode). The file must outlive
 * the store. p may be NULL (all defaults, SL_IO_MMAP off). Errors:
 * SL_ERR_ARG for a budget smaller than one record or a bad mode/policy,
 * SL_ERR_IO if the file cannot be reopened, SL_ERR_FORMAT for a profile of
 * the wrong shape, SL_ERR_NOMEM. */
int expert_store_create(const struct sl_file *file, const char *path,
                        const struct expert_store_params *p,
                        struct expert_store **out);
/* Stops the reads, writes the usage profile if one was named (a failure is
 * logged as a warning), frees everything. NULL is a no-op. */
void expert_store_free(struct expert_store *s);

/* Makes (layer, expert) available, blocking until it is, and fills *view:
 * request + acquire_next of one expert. SL_ERR_RANGE for a bad layer or
 * expert, SL_ERR_IO for a failed read. Pair with expert_store_release. */
int expert_store_acquire(struct expert_store *s, uint32_t layer,
                         uint32_t expert, struct expert_view *view);
/* Ends one use begun by acquire / acquire_next (drops its pin). */
void expert_store_release(struct expert_store *s, uint32_t layer,
                          uint32_t expert);

/* Pins experts[0..n) of layer (distinct ids) and starts demand reads for
 * those not resident or in flight. Checks every id first: SL_ERR_RANGE
 * leaves nothing pinned. Every pinned expert must then be acquired with
 * expert_store_acquire_next (and released) or dropped by
 * expert_store_cancel. */
int expert_store_request(struct expert_store *s, uint32_t layer,
                         const int32_t *experts, int n);
/* Among experts[i] with done[i] == 0 (all requested), picks one that is
 * resident — blocking only when none is — sets done[i] = 1, *idx = i and
 * fills *view. A failed read returns SL_ERR_IO (with the expert, offset and
 * cause in the message) after setting done[i] = 1 and dropping that pin;
 * the caller then cancels the rest. */
int expert_store_acquire_next(struct expert_store *s, uint32_t layer,
                              const int32_t *experts, uint8_t *done, int n,
                              int *idx, struct expert_view *view);
/* Drops the pins of experts[i] with done[i] == 0 and marks them done. */
void expert_store_cancel(struct expert_store *s, uint32_t layer,
                         const int32_t *experts, uint8_t *done, int n);

/* Pins (layer, expert) and fills *view only if it is resident now (in
 * SL_IO_MMAP mode: always); never blocks, starts no read, counts no use.
 * Returns 1 when pinned (pair with expert_store_release), 0 when it is not
 * resident or the ids are out of range (nothing pinned). For the GPU
 * expert cache: prefetch uploads and the per-miss choice (docs/cuda.md). */
int expert_store_try_acquire(struct expert_store *s, uint32_t layer,
                             uint32_t expert, struct expert_view *view);
/* The RAM cache's slot arena (one allocation, fixed for the store's
 * lifetime; views of resident records point into it): *base and *bytes, or
 * 0 with nothing set when there is none (SL_IO_MMAP mode, no routed
 * experts). The GPU backend page-locks it for direct uploads. */
int expert_store_host_arena(const struct expert_store *s, void **base,
                            uint64_t *bytes);

/* Nonzero when a lookahead prediction for layer would be used: prefetch
 * is on, not paused, and the layer has routed experts. */
int expert_store_prefetch_wanted(struct expert_store *s, uint32_t layer);
/* The lookahead's prediction of layer's experts: records the prediction
 * (for its accuracy), cancels queued prefetches of earlier predictions,
 * and queues low-priority reads of those not resident. Never blocks, never
 * fails (bad ids are ignored). */
void expert_store_prefetch(struct expert_store *s, uint32_t layer,
                           const int32_t *experts, int n);

/* Replaces the read function (test hook): waits for reads in flight,
 * switches to pread threads through io (NULL = pread(2)). */
int expert_store_set_io(struct expert_store *s, const struct expert_store_io *io);

/* Counters (model-wide) into the cache fields of *out. */
void expert_store_stats(const struct expert_store *s, struct sl_stats *out);
int expert_store_layer_stats(const struct expert_store *s, uint32_t layer,
                             struct sl_expert_layer_stats *out);
void expert_store_reset_stats(struct expert_store *s);
/* One-line description (budget, slots, policy, I/O, prefetch). Borrowed. */
const char *expert_store_desc(struct expert_store *s);

/* Writes the usage profile (counts per (layer, expert): the loaded profile
 * plus this run's uses) to path now. */
int expert_store_write_profile(struct expert_store *s, const char *path);

/* The budget that SL_RAM_CACHE_DEFAULT resolves to (docs/streaming.md):
 * 3/4 of (available memory - dense bytes - 256 MiB), available memory being
 * the smaller of MemAvailable and the memory cgroup's room, clamped to
 * [8 records, all expert bytes]. */
uint64_t expert_store_default_budget(const struct sl_file *file,
                                     uint64_t dense_bytes);

#endif /* SL_EXPERT_STORE_H */
