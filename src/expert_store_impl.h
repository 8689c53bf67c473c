/*
 * expert_store_impl.h — the inside of the expert store, shared by
 * expert_store.c (cache, pins, queues, statistics), expert_policy.c
 * (replacement policies) and expert_io.c (the read engine: io_uring or
 * pread threads). Not for any other file: use expert_store.h.
 *
 * Locking: every field below `mu` is guarded by mu unless marked. The
 * engine takes jobs with store_next_job and hands them back with
 * store_complete, both under mu; the read itself runs unlocked into a slot
 * that nobody else may touch while its entry is E_READING.
 */
#ifndef SL_EXPERT_STORE_IMPL_H
#define SL_EXPERT_STORE_IMPL_H

#include <pthread.h>
#include <stdint.h>

#include "expert_store.h"

enum entry_state {
    E_ABSENT = 0,  /* not cached, nothing pending */
    E_QUEUED,      /* waiting in a queue for a slot and a reader */
    E_READING,     /* read in flight into its slot */
    E_READY,       /* resident in its slot */
    E_FAILED,      /* read failed; kept until its pins are dropped */
};

enum { Q_DEMAND = 0, Q_PREFETCH = 1, Q_COUNT = 2 };

/* One (layer, expert). Every entry exists for the store's lifetime, so the
 * policy's history (frequency, recency) survives eviction. */
struct entry {
    uint8_t state;         /* enum entry_state */
    uint8_t queue;         /* Q_* while E_QUEUED */
    uint8_t prefetched;    /* read (or queued) by a prefetch and not used yet */
    uint8_t predicted;     /* in its layer's latest lookahead prediction */
    uint8_t pinned;        /* warm-start profile pin: never evicted */
    uint32_t layer, expert;
    int32_t slot;          /* slot index while E_READING / E_READY, else -1 */
    int32_t refs;          /* pins held by callers */
    int32_t q_prev, q_next; /* queue links (entry ids), -1 = none */
    uint32_t freq;         /* LFU count, halved every age period */
    uint32_t pf_epoch;     /* prefetch call that queued it */
    uint64_t last_use;     /* tick of the last use (or prefetch) */
    uint64_t req_stamp;    /* request number that last asked for it */
    uint64_t uses;         /* demand uses since open (for the profile) */
    uint64_t profile;      /* count loaded from the profile */
    int err;               /* failed read: errno, or -1 for a short read */
    uint64_t got;          /* failed read: bytes read before the failure */
};

/* One read for the engine: record of entry into buf. */
struct io_job {
    int32_t entry;
    int prefetch;
    uint64_t issued_at;    /* s->n_requests when the read was issued */
    void *buf;
    uint64_t off, len;
};

struct layer_stat {
    struct sl_expert_layer_stats st;
    int pred_valid;        /* a prediction awaits this layer's demand */
};

enum { ENGINE_NONE = 0, ENGINE_THREADS = 1, ENGINE_URING = 2 };

struct expert_store {
    const struct sl_file *file;
    int fd;                /* read descriptor; -1 in mmap mode */
    int io_mode;           /* SL_IO_DIRECT / _BUFFERED / _MMAP (resolved) */
    int policy;            /* SL_CACHE_LRU / _LFU (resolved) */
    int prefetch_mode;     /* enum sl_prefetch_mode */
    /* layers */
    uint32_t n_layer_slots;                 /* max layer + 1 */
    const struct sl_expert_layer **by_layer; /* (n_layer_slots), NULL = dense */
    int32_t *base;         /* (n_layer_slots) first entry id, -1 = dense */
    struct layer_stat *lstat; /* (n_layer_slots) */
    uint32_t n_entries;
    struct entry *entries; /* (n_entries) */
    /* cache */
    uint64_t budget;       /* resolved budget in bytes */
    uint64_t slot_size;    /* largest record size (multiple of 4096) */
    uint32_t n_slots;
    uint8_t *arena;        /* (n_slots, slot_size), 4096-aligned */
    int32_t *slot_entry;   /* (n_slots) entry id or -1 */
    int32_t *free_slots;   /* (n_slots) stack of free slot ids */
    uint32_t n_free;
    uint64_t cached_bytes; /* record bytes in occupied slots */
    /* queues and engine */
    int32_t q_head[Q_COUNT], q_tail[Q_COUNT];
    uint32_t q_len[Q_COUNT];
    int max_inflight, max_pf_inflight;
    int n_inflight, n_pf_inflight;
    int engine;            /* ENGINE_* running */
    int stop;              /* engine threads must exit */
    int n_threads;
    pthread_t *threads;    /* (n_threads) */
    void *uring;           /* struct io_uring * (expert_io.c) */
    int efd;               /* eventfd that wakes the io_uring thread, -1 */
    struct expert_store_io io; /* hook (pread == NULL: pread(2)) */
    /* ticks and policy */
    uint64_t tick, n_requests;
    uint64_t uses_since_age, age_period;
    uint32_t pf_epoch;
    /* prefetch auto-pause */
    uint64_t win_useful, win_wasted;
    uint64_t pf_pause_until; /* n_requests value */
    uint64_t pf_pause_len;
    int pf_paused_now;
    /* prefetch A/B probe (auto mode): steps are the intervals between
     * requests of the first MoE layer; PF_PROBE steps with prefetch, as many
     * without, then the faster choice holds for ab_hold steps */
    uint32_t first_moe;     /* first layer with routed experts */
    double ab_t_last;       /* start of the current step, 0 = none */
    int ab_step_on;         /* prefetch was wanted during the current step */
    int ab_phase;           /* 0 probe on, 1 probe off, 2 hold */
    uint32_t ab_n;          /* steps measured in this phase */
    double ab_sum[2];       /* step seconds without [0] / with [1] prefetch */
    uint32_t ab_cnt[2];
    int ab_off;             /* hold decision: prefetch does not pay */
    uint64_t ab_hold;       /* steps to hold (doubles while it agrees) */
    uint64_t ab_decisions[2]; /* times decided off [0] / on [1] */
    /* statistics */
    double busy_t0, busy_seconds;
    uint64_t evictions, pf_issued, pf_useful, pf_wasted_bytes, peak_bytes;
    char *profile_path;
    char desc[320];
    pthread_mutex_t mu;
    pthread_cond_t cv_work;  /* engine: new work or a freed slot */
    pthread_cond_t cv_ready; /* callers: a read completed */
};

/* expert_store.c, called by the engine with mu held. Takes the next read
 * (demand first) with a slot; blocks on cv_work when block != 0 and there
 * is none. Returns 0 when the engine must stop (or, non-blocking, when there
 * is nothing to do now). */
int store_next_job(struct expert_store *s, struct io_job *job, int block);
/* Hands back a read: err 0 = ok, errno, or -1 = short read (got bytes). */
void store_complete(struct expert_store *s, const struct io_job *job, int err,
                    uint64_t got);

/* expert_io.c. Starts the engine (io_uring unless no_uring or a hook, else
 * n threads); called without mu. Returns SL_ERR_* with a message. */
int io_engine_start(struct expert_store *s, int no_uring);
/* Stops it after the reads in flight complete; called without mu. */
void io_engine_stop(struct expert_store *s);
/* Wakes the engine after new work or a freed slot; called with mu held. */
void io_engine_kick(struct expert_store *s);
/* Reads len bytes at off through the hook or pread(2), retrying partial
 * reads. Returns 0, an errno, or -1 for end of file (*got bytes read). */
int io_read_full(const struct expert_store *s, void *buf, uint64_t len,
                 uint64_t off, uint64_t *got);

/* expert_policy.c, with mu held. The slot to evict for a new read, or -1:
 * among READY unpinned entries; prefetch != 0 also spares entries that the
 * last two predictions prefetched and nobody used yet (so a prediction does
 * not evict its own), demand spares them only if it can. */
int32_t policy_victim(const struct expert_store *s, int prefetch);
/* Records a use of e (recency, frequency, ageing). */
void policy_touch(struct expert_store *s, struct entry *e);
/* "lru" / "lfu". */
const char *policy_name(int policy);

#endif /* SL_EXPERT_STORE_IMPL_H */
