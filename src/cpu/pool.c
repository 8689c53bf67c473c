/*
 * pool.c — the persistent thread pool (see pool.h).
 *
 * Protocol: the driver publishes (fn, arg), resets `n_done`, then bumps the
 * generation counter `gen`. Workers spin on `gen` for a while (a decode step
 * issues the next job within microseconds), then register in `n_sleeping`
 * and futex-wait on `gen`; the driver only pays for a futex wake when
 * someone sleeps. Each worker bumps `n_done` when its share is finished; the
 * driver runs share 0 itself and spins until n_done == nth - 1.
 *
 * The sleeping handshake is Dekker-style with sequentially consistent
 * atomics: a worker increments n_sleeping then re-reads gen; the driver
 * increments gen then reads n_sleeping. One of them sees the other, and the
 * futex syscall re-checks gen atomically in the kernel, so no wake is lost.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "cpu/pool.h"

#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "util.h"

/* Iterations of the pause loop before a worker sleeps (~0.5-2 ms). */
#define POOL_SPIN 20000

struct pool_worker {
    struct sl_pool *pool;
    int ith;
    pthread_t thread;
};

struct sl_pool {
    int n_threads;
    struct pool_worker *workers; /* (n_threads - 1) */
    void (*fn)(void *, int, int);
    void *arg;
    _Atomic uint32_t gen;        /* job generation; also the futex word */
    _Atomic int n_done;          /* workers finished with this generation */
    _Atomic int n_sleeping;      /* workers in (or entering) futex wait */
    _Atomic int stop;
    void *scratch;               /* pool_scratch buffer */
    size_t scratch_bytes;
};

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void futex_wait(_Atomic uint32_t *addr, uint32_t val) {
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT_PRIVATE, val, NULL, NULL,
            0);
}

static void futex_wake_all(_Atomic uint32_t *addr) {
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE_PRIVATE, INT_MAX, NULL,
            NULL, 0);
}

static void *pool_worker_main(void *p) {
    struct pool_worker *w = p;
    struct sl_pool *pool = w->pool;
    uint32_t seen = 0;
    for (;;) {
        uint32_t g;
        int spins = 0;
        while ((g = atomic_load_explicit(&pool->gen, memory_order_acquire)) ==
               seen) {
            if (++spins < POOL_SPIN) {
                cpu_relax();
                continue;
            }
            atomic_fetch_add(&pool->n_sleeping, 1);
            if (atomic_load(&pool->gen) == seen) futex_wait(&pool->gen, seen);
            atomic_fetch_sub(&pool->n_sleeping, 1);
            spins = 0;
        }
        seen = g;
        if (atomic_load_explicit(&pool->stop, memory_order_acquire)) break;
        pool->fn(pool->arg, w->ith, pool->n_threads);
        atomic_fetch_add_explicit(&pool->n_done, 1, memory_order_release);
    }
    return NULL;
}

/* Publishes a new generation and wakes sleepers if there are any. */
static void pool_kick(struct sl_pool *pool) {
    atomic_fetch_add(&pool->gen, 1);
    if (atomic_load(&pool->n_sleeping) > 0) futex_wake_all(&pool->gen);
}

int pool_create(int n_threads, struct sl_pool **out) {
    *out = NULL;
    if (n_threads < 1 || n_threads > 1024)
        return sl_seterr(SL_ERR_ARG, "thread pool: n_threads = %d (want 1..1024)",
                         n_threads);
    struct sl_pool *pool = sl_calloc(1, sizeof *pool);
    if (!pool) return sl_seterr(SL_ERR_NOMEM, "thread pool: out of memory");
    pool->n_threads = n_threads;
    if (n_threads > 1) {
        pool->workers = sl_calloc((size_t)n_threads - 1, sizeof *pool->workers);
        if (!pool->workers) {
            sl_free(pool);
            return sl_seterr(SL_ERR_NOMEM, "thread pool: out of memory");
        }
    }
    for (int i = 0; i < n_threads - 1; i++) {
        struct pool_worker *w = &pool->workers[i];
        w->pool = pool;
        w->ith = i + 1;
        int rc = pthread_create(&w->thread, NULL, pool_worker_main, w);
        if (rc != 0) {
            /* Stop the ones already started. */
            atomic_store(&pool->stop, 1);
            pool_kick(pool);
            for (int j = 0; j < i; j++) pthread_join(pool->workers[j].thread, NULL);
            sl_free(pool->workers);
            sl_free(pool);
            return sl_seterr(SL_ERR_INTERNAL,
                             "thread pool: cannot start thread %d of %d (error %d)",
                             i + 1, n_threads, rc);
        }
    }
    *out = pool;
    return SL_OK;
}

void pool_free(struct sl_pool *pool) {
    if (!pool) return;
    atomic_store(&pool->stop, 1);
    pool_kick(pool);
    for (int i = 0; i < pool->n_threads - 1; i++)
        pthread_join(pool->workers[i].thread, NULL);
    sl_free(pool->workers);
    sl_aligned_free(pool->scratch);
    sl_free(pool);
}

void pool_run(struct sl_pool *pool, void (*fn)(void *arg, int ith, int nth),
              void *arg) {
    if (!pool || pool->n_threads == 1) {
        fn(arg, 0, 1);
        return;
    }
    pool->fn = fn;
    pool->arg = arg;
    atomic_store_explicit(&pool->n_done, 0, memory_order_relaxed);
    pool_kick(pool); /* seq_cst: publishes fn, arg and n_done */
    fn(arg, 0, pool->n_threads);
    int want = pool->n_threads - 1;
    long spins = 0;
    while (atomic_load_explicit(&pool->n_done, memory_order_acquire) != want) {
        /* Yield now and then in case a worker was descheduled. */
        if (++spins % 256 == 0) sched_yield();
        else cpu_relax();
    }
}

int pool_n_threads(const struct sl_pool *pool) {
    return pool ? pool->n_threads : 1;
}

void *pool_scratch(struct sl_pool *pool, size_t bytes) {
    if (!pool) {
        sl_seterr(SL_ERR_ARG, "pool_scratch: NULL pool");
        return NULL;
    }
    if (bytes <= pool->scratch_bytes && pool->scratch) return pool->scratch;
    size_t n = sl_align_up(bytes ? bytes : 1, 4096);
    void *p = sl_aligned_alloc(64, n);
    if (!p) {
        sl_seterr(SL_ERR_NOMEM, "thread pool: cannot allocate %zu bytes of scratch",
                  n);
        return NULL;
    }
    sl_aligned_free(pool->scratch);
    pool->scratch = p;
    pool->scratch_bytes = n;
    return p;
}
