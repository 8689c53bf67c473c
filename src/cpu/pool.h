/*
 * pool.h — a persistent thread pool for the CPU backend: n_threads - 1
 * worker threads plus the calling thread run one function in parallel.
 *
 * Not a task queue: pool_run hands the same function to every thread (each
 * learns its index ith of nth and takes its share) and returns when all are
 * done. A decode step calls it hundreds of times per token, so the wake-up is
 * a short spin on a generation counter, then a futex sleep; the calling
 * thread spins for completion.
 *
 * Invariants: no global state (two pools in one process are independent);
 * a pool is driven by one thread at a time; pool_run is not re-entrant (fn
 * must not call pool_run on the same pool). n_threads == 1 runs fn inline.
 */
#ifndef SL_POOL_H
#define SL_POOL_H

#include <stddef.h>

struct sl_pool;

/* Creates a pool of n_threads (>= 1, including the caller of pool_run).
 * Returns SL_OK and *out, or SL_ERR_ARG for n_threads < 1 or > 1024,
 * SL_ERR_NOMEM / SL_ERR_INTERNAL if memory or a thread cannot be had (then
 * nothing is leaked and *out is NULL). The caller owns *out. */
int pool_create(int n_threads, struct sl_pool **out);

/* Stops and joins the workers, frees the pool. NULL is a no-op. */
void pool_free(struct sl_pool *pool);

/* Runs fn(arg, ith, nth) on every thread, ith = 0..nth-1 (ith 0 is the
 * caller), and returns when every call has returned. Writes made by fn are
 * visible to the caller afterwards. pool may be NULL: then fn(arg, 0, 1). */
void pool_run(struct sl_pool *pool, void (*fn)(void *arg, int ith, int nth),
              void *arg);

/* Number of threads (1 for NULL). */
int pool_n_threads(const struct sl_pool *pool);

/* A scratch buffer of at least `bytes` bytes, 64-byte aligned, owned by the
 * pool (grown on demand, so it allocates only when a larger size is first
 * asked for). Valid until the next pool_scratch call or pool_free; for the
 * thread that drives the pool. Returns NULL (with sl_seterr) on OOM or for a
 * NULL pool. */
void *pool_scratch(struct sl_pool *pool, size_t bytes);

#endif /* SL_POOL_H */
