/*
 * expert_store.c — expert residency (contract in expert_store.h, design in
 * docs/streaming.md): the slot cache, pins, demand and prefetch queues,
 * lookahead bookkeeping, the warm-start profile and the counters. The read
 * engine is expert_io.c, the replacement policies expert_policy.c.
 *
 * What it is not: the forward pass. forward.c's moe() requests a layer's
 * experts, computes them in the order they become resident, and predicts
 * the next layer's experts for expert_store_prefetch.
 *
 * Invariants (beyond the header's): an entry holds a slot exactly while it
 * is E_READING or E_READY; cached_bytes is the sum of the record sizes of
 * occupied slots and never exceeds n_slots * slot_size <= budget; a queued
 * entry is in exactly one queue.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "expert_store_impl.h"
#include "model.h"
#include "util.h"

#define MIB (1024.0 * 1024.0)

/* ---- queues (doubly linked through entry ids) ---- */

static void q_push(struct expert_store *s, int q, int32_t ei) {
    struct entry *e = &s->entries[ei];
    e->queue = (uint8_t)q;
    e->q_next = -1;
    e->q_prev = s->q_tail[q];
    if (s->q_tail[q] >= 0) s->entries[s->q_tail[q]].q_next = ei;
    else s->q_head[q] = ei;
    s->q_tail[q] = ei;
    s->q_len[q]++;
}

static void q_unlink(struct expert_store *s, int32_t ei) {
    struct entry *e = &s->entries[ei];
    int q = e->queue;
    if (e->q_prev >= 0) s->entries[e->q_prev].q_next = e->q_next;
    else s->q_head[q] = e->q_next;
    if (e->q_next >= 0) s->entries[e->q_next].q_prev = e->q_prev;
    else s->q_tail[q] = e->q_prev;
    e->q_prev = e->q_next = -1;
    s->q_len[q]--;
}

/* ---- lookup ---- */

static const struct sl_expert_layer *layer_of(const struct expert_store *s,
                                              uint32_t layer) {
    return layer < s->n_layer_slots ? s->by_layer[layer] : NULL;
}

static int check_ids(const struct expert_store *s, uint32_t layer,
                     const int32_t *experts, int n) {
    const struct sl_expert_layer *el = layer_of(s, layer);
    if (!el) return sl_seterr(SL_ERR_RANGE, "layer %u has no routed experts", layer);
    for (int i = 0; i < n; i++)
        if (experts[i] < 0 || (uint32_t)experts[i] >= el->n_experts)
            return sl_seterr(SL_ERR_RANGE, "expert %d out of range (layer %u has %u)",
                             experts[i], layer, el->n_experts);
    return SL_OK;
}

static struct entry *entry_of(struct expert_store *s, uint32_t layer, int32_t e) {
    return &s->entries[s->base[layer] + e];
}

static void fill_view(const struct expert_store *s, const struct entry *e,
                      struct expert_view *v) {
    const struct sl_expert_layer *el = s->by_layer[e->layer];
    const uint8_t *rec = s->io_mode == SL_IO_MMAP
                             ? s->file->map + el->offsets[e->expert]
                             : s->arena + (uint64_t)e->slot * s->slot_size;
    v->gate = rec + el->part[0].offset;
    v->up = rec + el->part[1].offset;
    v->down = rec + el->part[2].offset;
    for (int i = 0; i < 3; i++) v->dtype[i] = el->part[i].dtype;
    v->bytes = el->record_size;
}

/* ---- slots ---- */

static void free_slot(struct expert_store *s, struct entry *e) {
    s->slot_entry[e->slot] = -1;
    s->free_slots[s->n_free++] = e->slot;
    s->cached_bytes -= s->by_layer[e->layer]->record_size;
    e->slot = -1;
}

/* A free slot, or one taken from the policy's victim; -1 if none. */
static int32_t take_slot(struct expert_store *s, int prefetch) {
    if (s->n_free > 0) return s->free_slots[--s->n_free];
    int32_t slot = policy_victim(s, prefetch);
    if (slot < 0) return -1;
    struct entry *v = &s->entries[s->slot_entry[slot]];
    if (v->prefetched) s->pf_wasted_bytes += s->by_layer[v->layer]->record_size;
    s->cached_bytes -= s->by_layer[v->layer]->record_size;
    v->prefetched = 0;
    v->state = E_ABSENT;
    v->slot = -1;
    s->slot_entry[slot] = -1;
    s->evictions++;
    return slot;
}

/* ---- engine interface (mu held) ---- */

int store_next_job(struct expert_store *s, struct io_job *job, int block) {
    for (;;) {
        if (s->stop) return 0;
        int q = -1;
        if (s->q_len[Q_DEMAND] && s->n_inflight < s->max_inflight) q = Q_DEMAND;
        else if (!s->q_len[Q_DEMAND] && s->q_len[Q_PREFETCH] &&
                 s->n_pf_inflight < s->max_pf_inflight && s->n_inflight < s->max_inflight)
            q = Q_PREFETCH;
        if (q >= 0) {
            int32_t ei = s->q_head[q];
            struct entry *e = &s->entries[ei];
            int32_t slot = take_slot(s, q == Q_PREFETCH);
            if (slot >= 0) {
                q_unlink(s, ei);
                const struct sl_expert_layer *el = s->by_layer[e->layer];
                e->state = E_READING;
                e->slot = slot;
                s->slot_entry[slot] = ei;
                s->cached_bytes += el->record_size;
                if (s->cached_bytes > s->peak_bytes) s->peak_bytes = s->cached_bytes;
                SL_ASSERT(s->cached_bytes <= s->budget);
                job->entry = ei;
                job->prefetch = q == Q_PREFETCH;
                job->issued_at = s->n_requests;
                job->buf = s->arena + (uint64_t)slot * s->slot_size;
                job->off = el->offsets[e->expert];
                job->len = el->record_size;
                if (s->n_inflight++ == 0) s->busy_t0 = sl_now();
                if (job->prefetch) {
                    s->n_pf_inflight++;
                    s->pf_issued++;
                }
                return 1;
            }
            if (q == Q_PREFETCH) { /* no room for a guess: drop it */
                q_unlink(s, ei);
                e->state = E_ABSENT;
                e->prefetched = 0;
                continue;
            }
            /* a demand read waits for a pin to be dropped */
        }
        if (!block) return 0;
        pthread_cond_wait(&s->cv_work, &s->mu);
    }
}

void store_complete(struct expert_store *s, const struct io_job *job, int err,
                    uint64_t got) {
    struct entry *e = &s->entries[job->entry];
    if (--s->n_inflight == 0) s->busy_seconds += sl_now() - s->busy_t0;
    if (job->prefetch) s->n_pf_inflight--;
    s->lstat[e->layer].st.bytes_read += got;
    if (err == 0) {
        e->state = E_READY;
    } else {
        free_slot(s, e);
        e->prefetched = 0;
        if (e->refs > 0 && e->req_stamp > job->issued_at) {
            /* a request that joined this read after it was issued (a
             * prefetch, or a read a cancelled evaluation left in flight)
             * gets a read of its own: only that one's failure is its */
            e->state = E_QUEUED;
            q_push(s, Q_DEMAND, job->entry);
        } else if (e->refs > 0) {
            e->state = E_FAILED;
            e->err = err;
            e->got = got;
        } else {
            e->state = E_ABSENT;
        }
    }
    pthread_cond_broadcast(&s->cv_ready);
    io_engine_kick(s);
}

/* ---- default budget ---- */

static uint64_t read_u64_file(const char *path, uint64_t fallback) {
    FILE *f = fopen(path, "r");
    if (!f) return fallback;
    char buf[64];
    uint64_t v = fallback;
    if (fgets(buf, sizeof buf, f)) {
        char *end;
        unsigned long long x = strtoull(buf, &end, 10);
        if (end != buf) v = x;
    }
    fclose(f);
    return v;
}

/* Room left in this process's memory cgroup (v1 or v2); UINT64_MAX if none. */
static uint64_t cgroup_room(void) {
    FILE *f = fopen("/proc/self/cgroup", "r");
    if (!f) return UINT64_MAX;
    char line[512], p1[700], p2[700];
    uint64_t room = UINT64_MAX;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2) continue;
        uint64_t lim = UINT64_MAX, use = 0;
        if (!strncmp(c1 + 1, "memory:", 7) || strstr(c1 + 1, ",memory:")) {
            snprintf(p1, sizeof p1, "/sys/fs/cgroup/memory%s/memory.limit_in_bytes", c2 + 1);
            snprintf(p2, sizeof p2, "/sys/fs/cgroup/memory%s/memory.usage_in_bytes", c2 + 1);
        } else if (c2 == c1 + 1) {
            snprintf(p1, sizeof p1, "/sys/fs/cgroup%s/memory.max", c2 + 1);
            snprintf(p2, sizeof p2, "/sys/fs/cgroup%s/memory.current", c2 + 1);
        } else {
            continue;
        }
        lim = read_u64_file(p1, UINT64_MAX); /* "max" parses as no limit */
        use = read_u64_file(p2, 0);
        if (lim != UINT64_MAX && lim < (1ull << 60)) {
            uint64_t r = lim > use ? lim - use : 0;
            if (r < room) room = r;
        }
    }
    fclose(f);
    return room;
}

uint64_t expert_store_default_budget(const struct sl_file *file, uint64_t dense_bytes) {
    uint64_t avail = UINT64_MAX;
    FILE *f = fopen("/proc/meminfo", "r");
    if (f) {
        char line[256];
        unsigned long long kb;
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) avail = (uint64_t)kb * 1024;
        fclose(f);
    }
    uint64_t room = cgroup_room();
    if (room < avail) avail = room;
    uint64_t reserve = dense_bytes + (256ull << 20), budget = 0;
    if (avail != UINT64_MAX && avail > reserve) budget = (avail - reserve) / 4 * 3;
    if (avail == UINT64_MAX) budget = file->expert_bytes;
    uint64_t max_rec = 0;
    for (uint32_t i = 0; i < file->n_expert_layers; i++)
        if (file->expert_layers[i].record_size > max_rec)
            max_rec = file->expert_layers[i].record_size;
    uint64_t floor = 8 * max_rec;
    if (budget < floor) budget = floor;
    if (budget > file->expert_bytes) budget = file->expert_bytes;
    return budget;
}

/* ---- profile ---- */

static int load_profile(struct expert_store *s, const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) {
        if (errno == ENOENT) return SL_OK; /* first run: written at close */
        return sl_seterr(SL_ERR_IO, "expert profile %s: %s", path, strerror(errno));
    }
    int st = SL_OK;
    unsigned version = 0, n_layers = 0, n_exp = 0;
    if (fscanf(f, "sluice-expert-profile %u layers %u experts %u", &version,
               &n_layers, &n_exp) != 3 || version != 1) {
        st = sl_seterr(SL_ERR_FORMAT, "expert profile %s: not a version 1 profile "
                       "(expected a 'sluice-expert-profile 1 layers N experts E' header)", path);
        goto done;
    }
    for (unsigned i = 0; i < n_layers; i++) {
        unsigned layer;
        if (fscanf(f, " L %u", &layer) != 1) {
            st = sl_seterr(SL_ERR_FORMAT, "expert profile %s: layer line %u is malformed",
                           path, i + 1);
            goto done;
        }
        const struct sl_expert_layer *el = layer_of(s, layer);
        if (!el || el->n_experts != n_exp) {
            st = sl_seterr(SL_ERR_FORMAT, "expert profile %s: layer %u with %u experts does "
                           "not match the model (%u experts there)", path, layer, n_exp,
                           el ? el->n_experts : 0);
            goto done;
        }
        for (unsigned e = 0; e < n_exp; e++) {
            unsigned long long c;
            if (fscanf(f, " %llu", &c) != 1) {
                st = sl_seterr(SL_ERR_FORMAT, "expert profile %s: layer %u: expected %u "
                               "counts", path, layer, n_exp);
                goto done;
            }
            entry_of(s, layer, (int32_t)e)->profile = c;
        }
    }
done:
    fclose(f);
    return st;
}

static int cmp_desc_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* Pins the most used experts of the profile (at most half the slots) and
 * queues their reads; seeds LFU counts. */
static int warm_start(struct expert_store *s) {
    uint64_t *keys = sl_malloc((size_t)s->n_entries * sizeof *keys);
    if (!keys) return sl_seterr(SL_ERR_NOMEM, "expert profile: out of memory");
    /* key = count << 24 | entry id: sorted descending, ties by id */
    for (uint32_t i = 0; i < s->n_entries; i++) {
        uint64_t c = s->entries[i].profile;
        if (c > (1ull << 39) - 1) c = (1ull << 39) - 1;
        keys[i] = c << 24 | (uint64_t)((1u << 24) - 1 - i);
        s->entries[i].freq = (uint32_t)(c > 0xffff ? 0xffff : c);
    }
    qsort(keys, s->n_entries, sizeof *keys, cmp_desc_u64);
    uint32_t n_pin = s->n_slots / 2;
    pthread_mutex_lock(&s->mu);
    for (uint32_t i = 0; i < n_pin && i < s->n_entries && (keys[i] >> 24) > 0; i++) {
        int32_t ei = (int32_t)((1u << 24) - 1 - (keys[i] & 0xffffff));
        s->entries[ei].pinned = 1;
        s->entries[ei].state = E_QUEUED;
        q_push(s, Q_DEMAND, ei);
    }
    io_engine_kick(s);
    pthread_mutex_unlock(&s->mu);
    sl_free(keys);
    return SL_OK;
}

int expert_store_write_profile(struct expert_store *s, const char *path) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return sl_seterr(SL_ERR_IO, "expert profile %s: %s", tmp, strerror(errno));
    uint32_t n_layers = 0, n_exp = 0;
    for (uint32_t l = 0; l < s->n_layer_slots; l++)
        if (s->by_layer[l]) {
            n_layers++;
            n_exp = s->by_layer[l]->n_experts;
        }
    pthread_mutex_lock(&s->mu);
    fprintf(f, "sluice-expert-profile 1 layers %u experts %u\n", n_layers, n_exp);
    for (uint32_t l = 0; l < s->n_layer_slots; l++) {
        if (!s->by_layer[l]) continue;
        fprintf(f, "L %u", l);
        for (uint32_t e = 0; e < s->by_layer[l]->n_experts; e++) {
            const struct entry *en = entry_of(s, l, (int32_t)e);
            fprintf(f, " %" PRIu64, en->profile + en->uses);
        }
        fputc('\n', f);
    }
    pthread_mutex_unlock(&s->mu);
    if (ferror(f) | fclose(f) || rename(tmp, path) != 0) {
        unlink(tmp);
        return sl_seterr(SL_ERR_IO, "expert profile %s: write failed: %s", path,
                         strerror(errno));
    }
    return SL_OK;
}

/* ---- create / free ---- */

/* Opens the read descriptor; direct falls back to buffered where the
 * filesystem refuses O_DIRECT (tmpfs) only when the mode was not forced. */
static int open_reader(struct expert_store *s, const char *path, int mode) {
    int flags = O_RDONLY | O_CLOEXEC;
    if (mode == SL_IO_DIRECT || mode == SL_IO_DEFAULT) {
        s->fd = open(path, flags | O_DIRECT);
        if (s->fd >= 0) {
            s->io_mode = SL_IO_DIRECT;
        } else if (errno == EINVAL && mode == SL_IO_DEFAULT) {
            sl_log(SL_LOG_INFO, "%s: O_DIRECT not supported here; buffered reads", path);
        } else if (mode == SL_IO_DIRECT) {
            return sl_seterr(SL_ERR_IO, "open %s with O_DIRECT: %s%s", path, strerror(errno),
                             errno == EINVAL ? "; HINT: use --io buffered on this filesystem"
                                             : "");
        }
    }
    if (s->fd < 0) {
        s->fd = open(path, flags);
        if (s->fd < 0) return sl_seterr(SL_ERR_IO, "open %s: %s", path, strerror(errno));
        s->io_mode = SL_IO_BUFFERED;
    }
    struct stat a, b;
    if (fstat(s->fd, &a) != 0 || fstat(s->file->fd, &b) != 0 || a.st_ino != b.st_ino ||
        a.st_dev != b.st_dev)
        return sl_seterr(SL_ERR_IO, "%s was replaced since it was opened", path);
    return SL_OK;
}

static int setup_cache(struct expert_store *s, const struct expert_store_params *p) {
    const struct sl_file *file = s->file;
    s->slot_size = 0;
    for (uint32_t i = 0; i < file->n_expert_layers; i++)
        if (file->expert_layers[i].record_size > s->slot_size)
            s->slot_size = file->expert_layers[i].record_size;
    if (s->slot_size == 0) return SL_OK; /* no routed experts */
    uint64_t b = p->budget_bytes;
    if (b == SL_RAM_CACHE_ALL) b = (uint64_t)s->n_entries * s->slot_size;
    else if (b == SL_RAM_CACHE_DEFAULT) b = expert_store_default_budget(file, p->dense_bytes);
    if (b < s->slot_size)
        return sl_seterr(SL_ERR_ARG, "ram cache of %.2f MiB is smaller than one expert record "
                         "(%.2f MiB); HINT: give at least %.1fM", (double)b / MIB,
                         (double)s->slot_size / MIB, (double)s->slot_size / MIB + 0.05);
    uint64_t n = b / s->slot_size;
    if (n > s->n_entries) n = s->n_entries; /* more room than experts */
    s->n_slots = (uint32_t)n;
    s->budget = b;
    s->arena = sl_aligned_alloc(SL_EXPERT_ALIGN, (size_t)(n * s->slot_size));
    s->slot_entry = sl_malloc(n * sizeof *s->slot_entry);
    s->free_slots = sl_malloc(n * sizeof *s->free_slots);
    if (!s->arena || !s->slot_entry || !s->free_slots)
        return sl_seterr(SL_ERR_NOMEM, "out of memory for a %.1f MiB expert cache",
                         (double)(n * s->slot_size) / MIB);
    for (uint32_t i = 0; i < n; i++) {
        s->slot_entry[i] = -1;
        s->free_slots[i] = (int32_t)(n - 1 - i);
    }
    s->n_free = (uint32_t)n;
    return SL_OK;
}

int expert_store_create(const struct sl_file *file, const char *path,
                        const struct expert_store_params *params,
                        struct expert_store **out) {
    *out = NULL;
    struct expert_store_params p = {0};
    if (params) p = *params;
    if (p.io_mode < SL_IO_DEFAULT || p.io_mode > SL_IO_MMAP)
        return sl_seterr(SL_ERR_ARG, "expert store: unknown I/O mode %d", p.io_mode);
    if (p.policy < SL_CACHE_DEFAULT || p.policy > SL_CACHE_LFU)
        return sl_seterr(SL_ERR_ARG, "expert store: unknown cache policy %d", p.policy);
    if (p.prefetch < SL_PREFETCH_OFF || p.prefetch > SL_PREFETCH_ALWAYS)
        return sl_seterr(SL_ERR_ARG, "expert store: unknown prefetch mode %d", p.prefetch);
    if (p.n_io < 0 || p.n_io > 256)
        return sl_seterr(SL_ERR_ARG, "expert store: %d reads in flight (1..256)", p.n_io);
    struct expert_store *s = sl_calloc(1, sizeof *s);
    if (!s) return sl_seterr(SL_ERR_NOMEM, "expert store: out of memory");
    s->file = file;
    s->fd = -1;
    s->efd = -1;
    s->io_mode = p.io_mode;
    s->policy = p.policy == SL_CACHE_DEFAULT ? SL_CACHE_LFU : p.policy;
    s->prefetch_mode = p.prefetch;
    s->max_inflight = p.n_io ? p.n_io : 8;
    s->max_pf_inflight = s->max_inflight / 2 ? s->max_inflight / 2 : 1;
    s->pf_pause_len = 64;
    if (p.io) s->io = *p.io;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv_work, NULL);
    pthread_cond_init(&s->cv_ready, NULL);
    for (int q = 0; q < Q_COUNT; q++) s->q_head[q] = s->q_tail[q] = -1;
    int st = SL_OK;
    uint32_t n = 0;
    for (uint32_t i = 0; i < file->n_expert_layers; i++)
        if (file->expert_layers[i].layer + 1 > n) n = file->expert_layers[i].layer + 1;
    s->n_layer_slots = n;
    s->by_layer = sl_calloc(n ? n : 1, sizeof *s->by_layer);
    s->base = sl_malloc((n ? n : 1) * sizeof *s->base);
    s->lstat = sl_calloc(n ? n : 1, sizeof *s->lstat);
    if (!s->by_layer || !s->base || !s->lstat) goto nomem;
    for (uint32_t l = 0; l < n; l++) s->base[l] = -1;
    s->first_moe = UINT32_MAX;
    for (uint32_t i = 0; i < file->n_expert_layers; i++) {
        const struct sl_expert_layer *el = &file->expert_layers[i];
        if (el->layer < s->first_moe) s->first_moe = el->layer;
        s->by_layer[el->layer] = el;
        s->base[el->layer] = (int32_t)s->n_entries;
        s->n_entries += el->n_experts;
    }
    s->entries = sl_calloc(s->n_entries ? s->n_entries : 1, sizeof *s->entries);
    if (!s->entries) goto nomem;
    for (uint32_t l = 0; l < n; l++)
        for (uint32_t e = 0; s->by_layer[l] && e < s->by_layer[l]->n_experts; e++) {
            struct entry *en = entry_of(s, l, (int32_t)e);
            en->layer = l;
            en->expert = e;
            en->slot = en->q_prev = en->q_next = -1;
        }
    s->age_period = 8 * (uint64_t)(s->n_entries ? s->n_entries : 1);
    if (p.profile_path && !(s->profile_path = sl_strdup(p.profile_path))) goto nomem;
    if (s->io_mode == SL_IO_MMAP || s->n_entries == 0) {
        s->io_mode = SL_IO_MMAP;
        s->prefetch_mode = SL_PREFETCH_OFF;
        *out = s;
        return SL_OK;
    }
    if ((st = open_reader(s, path, p.io_mode)) || (st = setup_cache(s, &p))) goto fail;
    if (s->profile_path && (st = load_profile(s, s->profile_path))) goto fail;
    if ((st = io_engine_start(s, p.no_uring))) goto fail;
    if (s->profile_path && (st = warm_start(s))) goto fail;
    *out = s;
    return SL_OK;
nomem:
    st = sl_seterr(SL_ERR_NOMEM, "expert store: out of memory");
fail:
    if (s->profile_path) {
        sl_free(s->profile_path);
        s->profile_path = NULL; /* a failed open must not overwrite the profile */
    }
    expert_store_free(s);
    return st;
}

void expert_store_free(struct expert_store *s) {
    if (!s) return;
    io_engine_stop(s);
    if (s->profile_path && expert_store_write_profile(s, s->profile_path))
        sl_log(SL_LOG_WARN, "%s", sl_errmsg());
    if (s->fd >= 0) close(s->fd);
    sl_aligned_free(s->arena);
    sl_free(s->slot_entry);
    sl_free(s->free_slots);
    sl_free(s->entries);
    sl_free(s->by_layer);
    sl_free(s->base);
    sl_free(s->lstat);
    sl_free(s->profile_path);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv_work);
    pthread_cond_destroy(&s->cv_ready);
    sl_free(s);
}

int expert_store_set_io(struct expert_store *s, const struct expert_store_io *io) {
    if (s->io_mode == SL_IO_MMAP)
        return sl_seterr(SL_ERR_ARG, "expert store: no reads in mmap mode");
    io_engine_stop(s);
    s->io = io ? *io : (struct expert_store_io){0};
    return io_engine_start(s, 1);
}

/* ---- demand ---- */

/* Prefetch pays when most predictions it read get used: a window of 64
 * outcomes with fewer than 1 in 3 used pauses it, for twice as long each
 * time in a row (docs/streaming.md). */
static void pf_outcome(struct expert_store *s, int useful) {
    if (useful) s->win_useful++;
    else s->win_wasted++;
    if (s->win_useful + s->win_wasted < 64 || s->prefetch_mode != SL_PREFETCH_AUTO) return;
    if (s->win_useful * 3 < s->win_useful + s->win_wasted) {
        s->pf_pause_until = s->n_requests + s->pf_pause_len;
        if (s->pf_pause_len < (1u << 16)) s->pf_pause_len *= 2;
    } else {
        s->pf_pause_len = 64;
    }
    s->win_useful = s->win_wasted = 0;
}

/* The A/B probe of auto prefetch, at each request of the first MoE layer
 * (mu held): a step is the time from one such request to the next, i.e. one
 * chunk or decode token. PF_PROBE steps with prefetch, PF_PROBE without,
 * then whichever was faster per step (prefetch must win by 5 %, since it
 * costs bandwidth and a lookahead matvec per layer) holds for ab_hold
 * steps, doubling while successive probes agree, up to 4096. Why: whether
 * prefetch pays depends on the machine (disk vs compute bound, spare
 * cores), which only timing shows; its precision alone cannot. */
#define PF_PROBE 8
static void ab_step(struct expert_store *s) {
    double now = sl_now();
    if (s->ab_t_last > 0) {
        s->ab_sum[s->ab_step_on] += now - s->ab_t_last;
        s->ab_cnt[s->ab_step_on]++;
        if (s->ab_phase < 2 && ++s->ab_n >= PF_PROBE) {
            s->ab_n = 0;
            if (++s->ab_phase == 2) {
                double on = s->ab_sum[1] / (s->ab_cnt[1] ? s->ab_cnt[1] : 1);
                double off = s->ab_sum[0] / (s->ab_cnt[0] ? s->ab_cnt[0] : 1);
                int dec_off = s->ab_cnt[1] && s->ab_cnt[0] && on > 0.95 * off;
                if (!s->ab_hold) s->ab_hold = 32;
                else if (dec_off == s->ab_off && s->ab_hold < 4096) s->ab_hold *= 2;
                else s->ab_hold = 32;
                s->ab_off = dec_off;
                s->ab_decisions[!dec_off]++;
            }
        } else if (s->ab_phase == 2 && ++s->ab_n >= s->ab_hold) {
            s->ab_n = 0;
            s->ab_phase = 0; /* probe again */
            s->ab_sum[0] = s->ab_sum[1] = 0;
            s->ab_cnt[0] = s->ab_cnt[1] = 0;
        }
    }
    s->ab_t_last = now;
}

/* Whether auto prefetch is on for the current step (mu held). */
static int ab_wants(const struct expert_store *s) {
    if (s->ab_phase == 0) return 1;
    if (s->ab_phase == 1) return 0;
    return !s->ab_off;
}

int expert_store_request(struct expert_store *s, uint32_t layer,
                         const int32_t *experts, int n) {
    int st = check_ids(s, layer, experts, n);
    if (st) return st;
    if (s->io_mode == SL_IO_MMAP) return SL_OK;
    pthread_mutex_lock(&s->mu);
    uint64_t req = ++s->n_requests;
    if (layer == s->first_moe && s->prefetch_mode == SL_PREFETCH_AUTO) {
        ab_step(s);
        s->ab_step_on = ab_wants(s);
    }
    struct layer_stat *ls = &s->lstat[layer];
    int queued = 0;
    for (int i = 0; i < n; i++) {
        struct entry *e = entry_of(s, layer, experts[i]);
        e->req_stamp = req;
        if (ls->pred_valid) {
            ls->st.lookahead_total++;
            ls->st.lookahead_hits += e->predicted;
        }
        int via_prefetch = e->prefetched && (e->state == E_READY || e->state == E_READING);
        if (via_prefetch) {
            ls->st.prefetch_hits++;
            s->pf_useful++;
            pf_outcome(s, 1);
        } else if (e->state == E_READY) {
            ls->st.hits++;
        } else {
            ls->st.misses++;
        }
        e->prefetched = 0;
        if (e->state == E_ABSENT) {
            e->state = E_QUEUED;
            q_push(s, Q_DEMAND, (int32_t)(e - s->entries));
            queued = 1;
        } else if (e->state == E_QUEUED && e->queue == Q_PREFETCH) {
            q_unlink(s, (int32_t)(e - s->entries)); /* promote the guess */
            q_push(s, Q_DEMAND, (int32_t)(e - s->entries));
            queued = 1;
        }
        e->refs++;
        policy_touch(s, e);
    }
    if (ls->pred_valid) { /* predictions that were read but not asked for */
        const struct sl_expert_layer *el = s->by_layer[layer];
        for (uint32_t x = 0; x < el->n_experts; x++) {
            struct entry *e = entry_of(s, layer, (int32_t)x);
            if (e->predicted && e->prefetched && e->req_stamp != req &&
                e->pf_epoch == s->pf_epoch)
                pf_outcome(s, 0);
            e->predicted = 0;
        }
        ls->pred_valid = 0;
    }
    if (queued) io_engine_kick(s);
    pthread_mutex_unlock(&s->mu);
    return SL_OK;
}

/* Drops one pin (mu held). */
static void unpin(struct expert_store *s, struct entry *e) {
    SL_ASSERT(e->refs > 0);
    if (--e->refs == 0 && e->state == E_FAILED) e->state = E_ABSENT;
    if (e->refs == 0 && s->q_len[Q_DEMAND]) io_engine_kick(s);
}

int expert_store_acquire_next(struct expert_store *s, uint32_t layer,
                              const int32_t *experts, uint8_t *done, int n,
                              int *idx, struct expert_view *view) {
    if (s->io_mode == SL_IO_MMAP) {
        for (int i = 0; i < n; i++)
            if (!done[i]) {
                struct entry e = {.layer = layer, .expert = (uint32_t)experts[i]};
                done[i] = 1;
                *idx = i;
                fill_view(s, &e, view);
                return SL_OK;
            }
        return sl_seterr(SL_ERR_INTERNAL, "expert store: nothing left to acquire");
    }
    pthread_mutex_lock(&s->mu);
    double t0 = 0;
    int st = SL_OK;
    for (;;) {
        int pending = 0;
        for (int i = 0; i < n; i++) {
            if (done[i]) continue;
            pending++;
            struct entry *e = entry_of(s, layer, experts[i]);
            if (e->state == E_READY) {
                done[i] = 1;
                *idx = i;
                fill_view(s, e, view);
                goto out;
            }
            if (e->state == E_FAILED) {
                const struct sl_expert_layer *el = s->by_layer[layer];
                done[i] = 1;
                *idx = i;
                if (e->err == -1)
                    st = sl_seterr(SL_ERR_IO, "expert store: layer %u expert %d: short read, "
                                   "%" PRIu64 " of %" PRIu64 " bytes at offset %" PRIu64
                                   " (file truncated?)", layer, experts[i], e->got,
                                   el->record_size, el->offsets[experts[i]]);
                else
                    st = sl_seterr(SL_ERR_IO, "expert store: layer %u expert %d: read of %"
                                   PRIu64 " bytes at offset %" PRIu64 " failed: %s", layer,
                                   experts[i], el->record_size, el->offsets[experts[i]],
                                   strerror(e->err));
                unpin(s, e);
                goto out;
            }
        }
        if (!pending) {
            st = sl_seterr(SL_ERR_INTERNAL, "expert store: nothing left to acquire");
            goto out;
        }
        if (t0 == 0) t0 = sl_now();
        pthread_cond_wait(&s->cv_ready, &s->mu);
    }
out:
    if (t0 != 0) s->lstat[layer].st.stall_seconds += sl_now() - t0;
    pthread_mutex_unlock(&s->mu);
    return st;
}

void expert_store_cancel(struct expert_store *s, uint32_t layer,
                         const int32_t *experts, uint8_t *done, int n) {
    if (s->io_mode != SL_IO_MMAP) pthread_mutex_lock(&s->mu);
    for (int i = 0; i < n; i++) {
        if (done[i]) continue;
        done[i] = 1;
        if (s->io_mode != SL_IO_MMAP) unpin(s, entry_of(s, layer, experts[i]));
    }
    if (s->io_mode != SL_IO_MMAP) pthread_mutex_unlock(&s->mu);
}

int expert_store_acquire(struct expert_store *s, uint32_t layer, uint32_t expert,
                         struct expert_view *view) {
    int32_t e = (int32_t)(expert > INT32_MAX ? INT32_MAX : expert);
    uint8_t done = 0;
    int idx, st = expert_store_request(s, layer, &e, 1);
    if (st) return st;
    return expert_store_acquire_next(s, layer, &e, &done, 1, &idx, view);
}

void expert_store_release(struct expert_store *s, uint32_t layer, uint32_t expert) {
    if (s->io_mode == SL_IO_MMAP) return;
    pthread_mutex_lock(&s->mu);
    unpin(s, entry_of(s, layer, (int32_t)expert));
    pthread_mutex_unlock(&s->mu);
}

int expert_store_try_acquire(struct expert_store *s, uint32_t layer, uint32_t expert,
                             struct expert_view *view) {
    const struct sl_expert_layer *el = layer_of(s, layer);
    if (!el || expert >= el->n_experts) return 0;
    if (s->io_mode == SL_IO_MMAP) {
        struct entry e = {.layer = layer, .expert = expert};
        fill_view(s, &e, view);
        return 1;
    }
    pthread_mutex_lock(&s->mu);
    struct entry *e = entry_of(s, layer, (int32_t)expert);
    int got = e->state == E_READY;
    if (got) {
        e->refs++;
        fill_view(s, e, view);
    }
    pthread_mutex_unlock(&s->mu);
    return got;
}

int expert_store_host_arena(const struct expert_store *s, void **base, uint64_t *bytes) {
    if (s->io_mode == SL_IO_MMAP || !s->arena || !s->n_slots) return 0;
    *base = s->arena;
    *bytes = (uint64_t)s->n_slots * s->slot_size;
    return 1;
}

/* ---- prefetch ---- */

int expert_store_prefetch_wanted(struct expert_store *s, uint32_t layer) {
    if (s->prefetch_mode == SL_PREFETCH_OFF || !layer_of(s, layer)) return 0;
    pthread_mutex_lock(&s->mu);
    int paused = s->prefetch_mode == SL_PREFETCH_AUTO &&
                 (s->n_requests < s->pf_pause_until || !ab_wants(s));
    s->pf_paused_now = paused;
    pthread_mutex_unlock(&s->mu);
    return !paused;
}

void expert_store_prefetch(struct expert_store *s, uint32_t layer,
                           const int32_t *experts, int n) {
    const struct sl_expert_layer *el = layer_of(s, layer);
    if (!el || s->prefetch_mode == SL_PREFETCH_OFF) return;
    pthread_mutex_lock(&s->mu);
    s->pf_epoch++;
    while (s->q_len[Q_PREFETCH]) { /* older guesses still queued: cancel */
        int32_t ei = s->q_head[Q_PREFETCH];
        q_unlink(s, ei);
        s->entries[ei].state = E_ABSENT;
        s->entries[ei].prefetched = 0;
    }
    for (uint32_t x = 0; x < el->n_experts; x++) entry_of(s, layer, (int32_t)x)->predicted = 0;
    s->lstat[layer].pred_valid = 1;
    int queued = 0;
    for (int i = 0; i < n; i++) {
        if (experts[i] < 0 || (uint32_t)experts[i] >= el->n_experts) continue;
        struct entry *e = entry_of(s, layer, experts[i]);
        e->predicted = 1;
        if (e->state != E_ABSENT) continue;
        e->state = E_QUEUED;
        e->prefetched = 1;
        e->pf_epoch = s->pf_epoch;
        e->last_use = ++s->tick; /* recent, so LRU spares it for a while */
        q_push(s, Q_PREFETCH, (int32_t)(e - s->entries));
        queued = 1;
    }
    if (queued) io_engine_kick(s);
    pthread_mutex_unlock(&s->mu);
}

/* ---- statistics ---- */

void expert_store_stats(const struct expert_store *sc, struct sl_stats *out) {
    struct expert_store *s = (struct expert_store *)sc; /* locks only */
    pthread_mutex_lock(&s->mu);
    out->cache_hits = out->cache_misses = out->prefetch_hits = 0;
    out->cache_bytes_read = out->lookahead_hits = out->lookahead_total = 0;
    out->io_stall_seconds = 0;
    for (uint32_t l = 0; l < s->n_layer_slots; l++) {
        const struct sl_expert_layer_stats *st = &s->lstat[l].st;
        out->cache_hits += st->hits;
        out->cache_misses += st->misses;
        out->prefetch_hits += st->prefetch_hits;
        out->cache_bytes_read += st->bytes_read;
        out->io_stall_seconds += st->stall_seconds;
        out->lookahead_hits += st->lookahead_hits;
        out->lookahead_total += st->lookahead_total;
    }
    out->io_busy_seconds = s->busy_seconds + (s->n_inflight ? sl_now() - s->busy_t0 : 0);
    out->prefetch_issued = s->pf_issued;
    out->prefetch_useful = s->pf_useful;
    out->prefetch_wasted_bytes = s->pf_wasted_bytes;
    out->cache_evictions = s->evictions;
    out->cache_budget_bytes = s->budget;
    out->cache_peak_bytes = s->peak_bytes;
    pthread_mutex_unlock(&s->mu);
}

int expert_store_layer_stats(const struct expert_store *sc, uint32_t layer,
                             struct sl_expert_layer_stats *out) {
    struct expert_store *s = (struct expert_store *)sc;
    if (!layer_of(s, layer))
        return sl_seterr(SL_ERR_RANGE, "layer %u has no routed experts", layer);
    pthread_mutex_lock(&s->mu);
    *out = s->lstat[layer].st;
    pthread_mutex_unlock(&s->mu);
    return SL_OK;
}

void expert_store_reset_stats(struct expert_store *s) {
    pthread_mutex_lock(&s->mu);
    for (uint32_t l = 0; l < s->n_layer_slots; l++)
        memset(&s->lstat[l].st, 0, sizeof s->lstat[l].st);
    s->busy_seconds = 0;
    if (s->n_inflight) s->busy_t0 = sl_now();
    s->evictions = s->pf_issued = s->pf_useful = s->pf_wasted_bytes = 0;
    s->peak_bytes = s->cached_bytes;
    pthread_mutex_unlock(&s->mu);
}

const char *expert_store_desc(struct expert_store *s) {
    static const char *modes[] = {"default", "direct", "buffered", "mmap"};
    static const char *pf[] = {"off", "auto", "always"};
    if (s->io_mode == SL_IO_MMAP) {
        snprintf(s->desc, sizeof s->desc,
                 "experts: served from the file mapping (page cache), %.1f MiB",
                 (double)s->file->expert_bytes / MIB);
        return s->desc;
    }
    pthread_mutex_lock(&s->mu);
    int paused = s->pf_paused_now;
    char ab[96] = "";
    if (s->prefetch_mode == SL_PREFETCH_AUTO && s->ab_decisions[0] + s->ab_decisions[1])
        snprintf(ab, sizeof ab, "; A/B probes kept it on %" PRIu64 ", off %" PRIu64 " times",
                 s->ab_decisions[1], s->ab_decisions[0]);
    pthread_mutex_unlock(&s->mu);
    snprintf(s->desc, sizeof s->desc,
             "expert cache: %.1f MiB = %u slots x %.2f MiB (experts %.1f MiB), %s, %s %s x%d, "
             "prefetch %s%s%s",
             (double)s->budget / MIB, s->n_slots, (double)s->slot_size / MIB,
             (double)s->file->expert_bytes / MIB, policy_name(s->policy),
             modes[s->io_mode], s->engine == ENGINE_URING ? "io_uring" : "pread",
             s->max_inflight, pf[s->prefetch_mode + 1], paused ? " (paused now)" : "", ab);
    return s->desc;
}

/* ---- public API (sluice.h) ---- */

int sl_model_expert_layer_stats(const struct sl_model *m, uint32_t layer,
                                struct sl_expert_layer_stats *out) {
    return expert_store_layer_stats(m->experts, layer, out);
}

int32_t sl_model_n_layers(const struct sl_model *m) { return (int32_t)m->cfg.n_layers; }

void sl_model_reset_expert_stats(struct sl_model *m) { expert_store_reset_stats(m->experts); }

const char *sl_model_expert_cache_desc(const struct sl_model *m) {
    return expert_store_desc(m->experts);
}

int sl_parse_size(const char *text, uint64_t *out) {
    if (!text || !*text) return sl_seterr(SL_ERR_ARG, "empty size");
    if (!strcmp(text, "all")) {
        *out = SL_RAM_CACHE_ALL;
        return SL_OK;
    }
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    double mul = 1;
    if (end != text) {
        switch (*end) {
        case 'K': case 'k': mul = 1024.0; end++; break;
        case 'M': case 'm': mul = MIB; end++; break;
        case 'G': case 'g': mul = MIB * 1024; end++; break;
        case 'T': case 't': mul = MIB * MIB; end++; break;
        default: break;
        }
        if (mul > 1 && end[0] == 'i' && end[1] == 'B') end += 2; /* "MiB" */
        else if (mul > 1 && end[0] == 'B') end++;                 /* "MB" */
    }
    if (end == text || *end || errno || !(v > 0) || v * mul >= 1.8e19)
        return sl_seterr(SL_ERR_ARG, "'%s' is not a size (examples: 512M, 4G, 1.5G, all)",
                         text);
    *out = (uint64_t)(v * mul);
    return SL_OK;
}
