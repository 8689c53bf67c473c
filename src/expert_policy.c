/*
 * expert_policy.c — replacement policies of the expert cache (see
 * expert_store_impl.h): which resident expert gives its slot to a new read.
 *
 * LRU evicts the least recently used. LFU evicts the least frequently used,
 * ties to the least recent; counts are kept for absent experts too (an
 * expert that returns keeps its history) and halved every age period
 * (8 uses per (layer, expert) of the model) so that old popularity fades.
 *
 * Invariant: a victim is always E_READY, unpinned (refs == 0) and not
 * pinned by a warm-start profile; the scan is linear in the number of slots,
 * which costs microseconds against a read of a multi-megabyte record.
 */
#include "expert_store_impl.h"

const char *policy_name(int policy) {
    return policy == SL_CACHE_LRU ? "lru" : "lfu";
}

/* Nonzero if a is a better victim than b under the store's policy. */
static int better_victim(const struct expert_store *s, const struct entry *a,
                         const struct entry *b) {
    if (s->policy == SL_CACHE_LFU && a->freq != b->freq) return a->freq < b->freq;
    return a->last_use < b->last_use;
}

int32_t policy_victim(const struct expert_store *s, int prefetch) {
    for (int pass = 0; pass < 2; pass++) {
        int32_t best = -1;
        const struct entry *be = NULL;
        for (uint32_t i = 0; i < s->n_slots; i++) {
            int32_t ei = s->slot_entry[i];
            if (ei < 0) continue;
            const struct entry *e = &s->entries[ei];
            if (e->state != E_READY || e->refs > 0 || e->pinned) continue;
            /* a fresh, unused prediction: spared in the first pass */
            if (pass == 0 && e->prefetched && e->pf_epoch + 1 >= s->pf_epoch) continue;
            if (!be || better_victim(s, e, be)) {
                best = (int32_t)i;
                be = e;
            }
        }
        if (best >= 0 || prefetch) return best;
    }
    return -1;
}

void policy_touch(struct expert_store *s, struct entry *e) {
    e->last_use = ++s->tick;
    if (e->freq < UINT32_MAX) e->freq++;
    e->uses++;
    if (++s->uses_since_age >= s->age_period) {
        s->uses_since_age = 0;
        for (uint32_t i = 0; i < s->n_entries; i++) s->entries[i].freq >>= 1;
    }
}
