/*
 * expert_cache_cuda.cu — the GPU expert cache: the tier above the host
 * expert store (src/expert_store.h). Contracts in internal.cuh; design in
 * docs/cuda.md.
 *
 * What it is: n_slots slots of the largest record in one device arena,
 * allocated once (the budget is a hard limit), an LRU over unpinned slots,
 * and uploads: a missing expert is taken from the host store (RAM cache or
 * disk, through expert_store_request / acquire_next so its reads overlap)
 * and sent host-to-device on the cache's own copy stream, so that the
 * compute stream runs the layer's resident experts while the missing ones
 * arrive. Direct uploads: the host store's RAM arena is page-locked once
 * (cudaHostRegister) and a record is copied straight from it, its store
 * pin held until the copy is done (a host function on the release stream
 * drops it); where registration fails (or SLUICE_CUDA_REGISTER=0, or the
 * store is in mmap mode) a record is first copied into one of n_stage
 * pinned staging buffers. Also: the per-miss choice's bookkeeping
 * (gpu_cache_plan; src/gpu_miss.h decides) and lookahead uploads
 * (gpu_cache_prefetch).
 * When every expert fits, all are uploaded at creation and the forward pass
 * reads a device table of record bases (no host round trip per layer).
 *
 * Invariants: a slot is never overwritten while pinned or before the
 * compute that last read it has run (the copy waits for the slot's ev_free);
 * a slot whose upload is in flight is waited for (ev_ready) by any other
 * stream that finds it; the bytes in a slot are exactly the record's bytes;
 * a host record is never released to the store (so never evicted or
 * reread) while a direct copy out of it may still run.
 * Locking: mu guards everything; the host store is called under it (its
 * own mutex is never held across a CUDA call, so the release callbacks,
 * which take only the store's, cannot deadlock with mu).
 */
#include <inttypes.h>
#include <stdlib.h>

#include "cuda/internal.cuh"
#include "cuda/nccl_cuda.cuh"

#define N_STAGE 8
#define N_TIMED 256 /* timed copies pending at once (a ring of event pairs) */

/* Data bytes of layer's record: up to the end of its down matrix. */
static uint64_t record_data_bytes(const struct sl_expert_layer *el) {
    return el->part[2].offset + el->part[2].size;
}

/* Adds the timed copies that have run to h2d_seconds and t_bytes, oldest
 * first; with `block`, waits for every pending one (mu held). A pair covers
 * one cudaMemcpyAsync and nothing else (its start is recorded after the
 * slot's ev_free wait), so the sum is the copy engine's busy time. */
static void timing_collect(struct gpu_cache *gc, int block) {
    while (gc->t_count > 0) {
        int i = (gc->t_head - gc->t_count + gc->n_timed) % gc->n_timed;
        cudaError_t q = block ? cudaEventSynchronize(gc->tev[2 * i + 1])
                              : cudaEventQuery(gc->tev[2 * i + 1]);
        if (q == cudaErrorNotReady) break;
        float ms = 0;
        if (q == cudaSuccess &&
            cudaEventElapsedTime(&ms, gc->tev[2 * i], gc->tev[2 * i + 1]) == cudaSuccess) {
            gc->h2d_seconds += ms / 1e3;
            gc->t_bytes += gc->t_len[i];
        } else {
            cudaGetLastError();
        }
        gc->t_count--;
    }
}

/* The start event of the next timed copy on the copy stream; -1 when
 * timing is off or the record failed (mu held). The ring's oldest pair is
 * waited for when it is full (it is long done in practice). */
static int timing_start(struct gpu_cache *gc) {
    if (!gc->copy_timing) return -1;
    if (gc->t_count == gc->n_timed) timing_collect(gc, 0);
    while (gc->t_count == gc->n_timed) { /* still full: wait for the oldest */
        int i = (gc->t_head - gc->t_count + gc->n_timed) % gc->n_timed;
        cudaEventSynchronize(gc->tev[2 * i + 1]);
        timing_collect(gc, 0);
    }
    int i = gc->t_head;
    if (cudaEventRecord(gc->tev[2 * i], gc->copy) != cudaSuccess) {
        cudaGetLastError();
        return -1;
    }
    return i;
}

/* Closes timed copy i (from timing_start) of len bytes (mu held). */
static void timing_end(struct gpu_cache *gc, int i, uint64_t len) {
    if (i < 0) return;
    if (cudaEventRecord(gc->tev[2 * i + 1], gc->copy) != cudaSuccess) {
        cudaGetLastError();
        return;
    }
    gc->t_len[i] = len;
    gc->t_head = (i + 1) % gc->n_timed;
    gc->t_count++;
}

/* The host function that drops a direct upload's store pin. No CUDA call
 * in here (a stream callback must not make one). */
static void CUDART_CB release_cb(void *u) {
    struct gpu_release *r = (struct gpu_release *)u;
    expert_store_release(r->store, r->layer, r->expert);
    __atomic_store_n(&r->busy, 0, __ATOMIC_RELEASE);
}

/* Copies one acquired record (its store pin held) into slot and drops the
 * pin: at once after a staging copy, once the copy has run for a direct
 * one. Every path drops it exactly once (mu held). */
static int upload(struct cuda_model *cm, int slot, const struct expert_view *v,
                  const struct sl_expert_layer *el, uint32_t layer, uint32_t expert) {
    struct gpu_cache *gc = &cm->gc;
    struct expert_store *store = cm->m->experts;
    uint64_t len = record_data_bytes(el);
    const uint8_t *src = (const uint8_t *)v->gate - el->part[0].offset;
    uint8_t *dst = gc->arena + (uint64_t)slot * gc->slot_bytes;
    struct gpu_slot *s = &gc->slots[slot];
    cudaError_t e = cudaSuccess;
    if (gc->reg_base && src >= gc->reg_base && src + len <= gc->reg_base + gc->reg_len) {
        struct gpu_release *r = &gc->rel[gc->rel_next];
        if (__atomic_load_n(&r->busy, __ATOMIC_ACQUIRE)) /* ring full: drain it */
            e = cudaStreamSynchronize(gc->release);
        if (e == cudaSuccess && s->ev_valid) e = cudaStreamWaitEvent(gc->copy, s->ev_free, 0);
        int ti = e == cudaSuccess ? timing_start(gc) : -1;
        if (e == cudaSuccess)
            e = cudaMemcpyAsync(dst, src, len, cudaMemcpyHostToDevice, gc->copy);
        if (e == cudaSuccess) timing_end(gc, ti, len);
        if (e == cudaSuccess) e = cudaEventRecord(s->ev_ready, gc->copy);
        if (e == cudaSuccess) {
            s->in_flight = 1;
            gc->rel_next = (gc->rel_next + 1) % gc->n_rel;
            r->store = store;
            r->layer = layer;
            r->expert = expert;
            __atomic_store_n(&r->busy, 1, __ATOMIC_RELEASE);
            e = cudaStreamWaitEvent(gc->release, s->ev_ready, 0);
            if (e == cudaSuccess) e = cudaLaunchHostFunc(gc->release, release_cb, r);
            if (e == cudaSuccess) {
                gc->h2d_bytes += len;
                return SL_OK;
            }
            __atomic_store_n(&r->busy, 0, __ATOMIC_RELEASE);
        }
        cudaStreamSynchronize(gc->copy); /* nothing may read the record now */
        expert_store_release(store, layer, expert);
        return cuda_fail(e, "a direct expert upload");
    }
    int i = gc->stage_next;
    gc->stage_next = (i + 1) % gc->n_stage;
    uint8_t *stage = gc->staging + (uint64_t)i * gc->slot_bytes;
    e = cudaEventSynchronize(gc->ev_stage[i]); /* its previous copy is done */
    if (e == cudaSuccess) memcpy(stage, src, len);
    expert_store_release(store, layer, expert);
    if (e != cudaSuccess) return cuda_fail(e, "cudaEventSynchronize (staging)");
    if (s->ev_valid) CU_TRY(cudaStreamWaitEvent(gc->copy, s->ev_free, 0));
    int ti = timing_start(gc);
    CU_TRY(cudaMemcpyAsync(dst, stage, len, cudaMemcpyHostToDevice, gc->copy));
    timing_end(gc, ti, len);
    CU_TRY(cudaEventRecord(gc->ev_stage[i], gc->copy));
    CU_TRY(cudaEventRecord(s->ev_ready, gc->copy));
    s->in_flight = 1;
    gc->staged++;
    gc->h2d_bytes += len;
    return SL_OK;
}

/* The least recently used unpinned slot, or -1 (mu held). */
static int victim(struct gpu_cache *gc) {
    int best = -1;
    for (int i = 0; i < gc->n_slots; i++) {
        const struct gpu_slot *s = &gc->slots[i];
        if (s->pins) continue;
        if (best < 0 || s->tick < gc->slots[best].tick) best = i;
        if (s->layer < 0) return i;
    }
    return best;
}

static void slot_forget(struct gpu_cache *gc, int slot, uint32_t ne) {
    struct gpu_slot *s = &gc->slots[slot];
    if (s->layer >= 0) gc->slot_of[(uint64_t)s->layer * ne + (uint32_t)s->expert] = -1;
    s->layer = s->expert = -1;
    s->prefetched = 0;
}

/* Takes slot v for a new record: a lookahead upload nobody used is wasted. */
static void evict(struct gpu_cache *gc, int v, uint32_t ne) {
    if (gc->slots[v].prefetched) gc->pf_wasted++;
    slot_forget(gc, v, ne);
}

int gpu_cache_acquire(struct cuda_model *cm, uint32_t layer, const int32_t *ids, int n,
                      cudaStream_t stream, const uint8_t **base, uint8_t *hit,
                      int32_t *slots, cudaEvent_t ev_arrive, int *uploaded) {
    struct gpu_cache *gc = &cm->gc;
    struct sl_model *m = cm->m;
    uint32_t ne = m->cfg.n_experts;
    const struct sl_expert_layer *el = file_expert_layer(&m->file, layer);
    int st = SL_OK, nm = 0, late = 0;
    *uploaded = 0;
    pthread_mutex_lock(&gc->mu);
    timing_collect(gc, 0);
    for (int i = 0; i < n; i++) {
        if (!nccl_ep_owns(cm->ep, layer, ids[i])) { /* multi-GPU: another rank's */
            slots[i] = -1;
            hit[i] = 1;
            base[i] = nccl_ep_zero(cm->ep); /* all zero: its output is exactly 0 */
            continue;
        }
        int32_t s = gc->slot_of[(uint64_t)layer * ne + (uint32_t)ids[i]];
        slots[i] = s;
        hit[i] = s >= 0;
        if (s < 0) {
            gc->miss_idx[nm++] = i;
            continue;
        }
        struct gpu_slot *sl = &gc->slots[s];
        sl->pins++;
        sl->tick = ++gc->tick;
        gc->hits++;
        if (sl->prefetched) {
            gc->pf_useful++;
            sl->prefetched = 0;
        }
        if (sl->in_flight) { /* its copy (a lookahead's) may still run */
            cudaError_t q = cudaEventQuery(sl->ev_ready);
            if (q == cudaErrorNotReady && gc->late_wait) {
                hit[i] = 0; /* computed with the uploads, after ev_arrive */
                late++;
            } else if (q == cudaErrorNotReady) {
                if ((q = cudaStreamWaitEvent(stream, sl->ev_ready, 0)) != cudaSuccess)
                    st = cuda_fail(q, "cudaStreamWaitEvent");
            } else {
                sl->in_flight = 0;
            }
        }
        base[i] = gc->arena + (uint64_t)s * gc->slot_bytes;
    }
    if (st) { /* no miss holds a slot yet: unpin the hits */
        for (int i = 0; i < n; i++)
            if (slots[i] >= 0) gc->slots[slots[i]].pins--;
        goto out;
    }
    if (nm == 0 && late == 0) goto out;
    for (int j = 0; j < nm; j++) { /* victims first: all pinned before any read */
        int i = gc->miss_idx[j], v = victim(gc);
        if (v < 0) {
            st = sl_seterr(SL_ERR_NOMEM, "GPU expert cache: all %d slots are in use by this "
                           "layer (it needs %d); HINT: a larger --gpu-cache", gc->n_slots, n);
            for (int r = 0; r < j; r++) { /* unwind the victims taken */
                int s = slots[gc->miss_idx[r]];
                slot_forget(gc, s, ne);
                gc->slots[s].pins--;
                slots[gc->miss_idx[r]] = -1;
            }
            for (int r = 0; r < n; r++) /* and the hits: the caller releases nothing */
                if (slots[r] >= 0) gc->slots[slots[r]].pins--;
            goto out;
        }
        evict(gc, v, ne);
        struct gpu_slot *sl = &gc->slots[v];
        sl->layer = (int32_t)layer;
        sl->expert = ids[i];
        sl->pins = 1;
        sl->tick = ++gc->tick;
        gc->slot_of[(uint64_t)layer * ne + (uint32_t)ids[i]] = v;
        slots[i] = v;
        base[i] = gc->arena + (uint64_t)v * gc->slot_bytes;
        gc->miss_ids[j] = ids[i];
        gc->miss_done[j] = 0;
    }
    if (nm && (st = expert_store_request(m->experts, layer, gc->miss_ids, nm))) goto fail;
    for (int left = nm; left > 0; left--) {
        struct expert_view v;
        int j;
        if ((st = expert_store_acquire_next(m->experts, layer, gc->miss_ids, gc->miss_done, nm,
                                            &j, &v)))
            break;
        st = upload(cm, slots[gc->miss_idx[j]], &v, el, layer, (uint32_t)gc->miss_ids[j]);
        if (st) break;
        gc->uploads++;
    }
    if (st) {
        expert_store_cancel(m->experts, layer, gc->miss_ids, gc->miss_done, nm);
        goto fail;
    }
    { /* after this layer's copies and any in-flight lookahead one (the
       * copy stream runs them in order) */
        cudaError_t e = cudaEventRecord(ev_arrive, gc->copy);
        if (e != cudaSuccess) {
            st = cuda_fail(e, "cudaEventRecord");
            goto fail;
        }
    }
    *uploaded = 1;
    goto out;
fail: /* the missed slots hold nothing usable: forget them, unpin all */
    for (int j = 0; j < nm; j++) slot_forget(gc, slots[gc->miss_idx[j]], ne);
    for (int i = 0; i < n; i++)
        if (slots[i] >= 0) gc->slots[slots[i]].pins--;
out:
    pthread_mutex_unlock(&gc->mu);
    return st;
}

void gpu_cache_release(struct cuda_model *cm, const int32_t *slots, int n, cudaStream_t stream) {
    struct gpu_cache *gc = &cm->gc;
    pthread_mutex_lock(&gc->mu);
    for (int i = 0; i < n; i++) {
        if (slots[i] < 0) continue; /* another rank's expert (gpu_cache_acquire) */
        struct gpu_slot *s = &gc->slots[slots[i]];
        s->ev_valid = cudaEventRecord(s->ev_free, stream) == cudaSuccess;
        s->pins--;
    }
    pthread_mutex_unlock(&gc->mu);
}

void gpu_cache_plan(struct cuda_model *cm, uint32_t layer, const int32_t *ids,
                    const int32_t *tokens, int n, int n_tok, uint8_t *cpu) {
    struct gpu_cache *gc = &cm->gc;
    memset(cpu, 0, (size_t)n);
    if (gc->miss_policy == SL_GPU_MISS_UPLOAD || gc->all_resident) return;
    struct sl_model *m = cm->m;
    uint32_t ne = m->cfg.n_experts;
    const struct sl_expert_layer *el = file_expert_layer(&m->file, layer);
    if (!el) return;
    pthread_mutex_lock(&gc->mu);
    int nm = 0;
    for (int i = 0; i < n; i++) {
        if (gc->slot_of[(uint64_t)layer * ne + (uint32_t)ids[i]] >= 0 ||
            !nccl_ep_owns(cm->ep, layer, ids[i])) /* multi-GPU: not a miss here */
            continue;
        struct expert_view v;
        uint8_t ram = 1;
        if (gc->miss_policy == SL_GPU_MISS_AUTO) {
            ram = (uint8_t)expert_store_try_acquire(m->experts, layer, (uint32_t)ids[i], &v);
            if (ram) expert_store_release(m->experts, layer, (uint32_t)ids[i]);
        }
        gc->miss_idx[nm] = i;
        gc->miss_bytes[nm] = record_data_bytes(el);
        gc->miss_tok[nm] = tokens[i];
        gc->miss_ram[nm] = ram;
        nm++;
    }
    double bps = gc->h2d_seconds > 0 ? (double)gc->t_bytes / gc->h2d_seconds : 0;
    gpu_miss_decide(&gc->mm, gc->miss_policy, n_tok, gc->miss_bytes, gc->miss_tok,
                    gc->miss_ram, nm, bps, gc->miss_cpu);
    for (int j = 0; j < nm; j++) cpu[gc->miss_idx[j]] = gc->miss_cpu[j];
    pthread_mutex_unlock(&gc->mu);
}

void gpu_cache_note_cpu(struct cuda_model *cm, double seconds, uint64_t bytes, int tokens) {
    struct gpu_cache *gc = &cm->gc;
    pthread_mutex_lock(&gc->mu);
    gc->cpu_experts++;
    gc->cpu_seconds += seconds;
    gpu_miss_note_cpu(&gc->mm, seconds, bytes, tokens);
    pthread_mutex_unlock(&gc->mu);
}

void gpu_cache_prefetch(struct cuda_model *cm, uint32_t layer, const int32_t *ids, int n) {
    struct gpu_cache *gc = &cm->gc;
    struct sl_model *m = cm->m;
    if (!gc->prefetch_on || gc->all_resident || layer >= m->cfg.n_layers) return;
    const struct sl_expert_layer *el = file_expert_layer(&m->file, layer);
    if (!el) return;
    uint32_t ne = m->cfg.n_experts;
    int cap = gc->n_slots / 2, done = 0;
    pthread_mutex_lock(&gc->mu);
    for (int i = 0; i < n && done < cap; i++) {
        if (ids[i] < 0 || (uint32_t)ids[i] >= ne ||
            gc->slot_of[(uint64_t)layer * ne + (uint32_t)ids[i]] >= 0 ||
            !nccl_ep_owns(cm->ep, layer, ids[i]))
            continue;
        struct expert_view v;
        if (!expert_store_try_acquire(m->experts, layer, (uint32_t)ids[i], &v)) continue;
        int s = victim(gc);
        if (s < 0) {
            expert_store_release(m->experts, layer, (uint32_t)ids[i]);
            break;
        }
        evict(gc, s, ne);
        struct gpu_slot *sl = &gc->slots[s];
        sl->layer = (int32_t)layer;
        sl->expert = ids[i];
        sl->tick = ++gc->tick;
        gc->slot_of[(uint64_t)layer * ne + (uint32_t)ids[i]] = s;
        if (upload(cm, s, &v, el, layer, (uint32_t)ids[i]) != SL_OK) {
            sl_log(SL_LOG_WARN, "cuda: lookahead upload failed: %s", sl_errmsg());
            sl_clearerr();
            slot_forget(gc, s, ne);
            break;
        }
        sl->prefetched = 1;
        gc->pf_uploads++;
        done++;
    }
    pthread_mutex_unlock(&gc->mu);
}

void gpu_cache_stats(const struct gpu_cache *gcc, struct sl_stats *out) {
    struct gpu_cache *gc = (struct gpu_cache *)gcc; /* locks only */
    if (gc->mu_init) pthread_mutex_lock(&gc->mu);
    out->gpu_hits = gc->hits;
    out->gpu_uploads = gc->uploads;
    out->gpu_h2d_bytes = gc->h2d_bytes;
    /* the copy engine's busy time (every copy timed, SLUICE_CUDA_COPY_TIMING),
     * scaled to the copies still pending or untimed */
    timing_collect(gc, 0);
    out->gpu_h2d_seconds = gc->t_bytes ? gc->h2d_seconds * (double)gc->h2d_bytes /
                                             (double)gc->t_bytes
                                       : gc->h2d_seconds;
    out->gpu_cache_bytes = (uint64_t)gc->n_slots * gc->slot_bytes;
    out->gpu_cpu_experts = gc->cpu_experts;
    out->gpu_cpu_seconds = gc->cpu_seconds;
    out->gpu_staged_uploads = gc->staged;
    out->gpu_prefetch_uploads = gc->pf_uploads;
    out->gpu_prefetch_useful = gc->pf_useful;
    out->gpu_prefetch_wasted = gc->pf_wasted;
    if (gc->mu_init) pthread_mutex_unlock(&gc->mu);
}

/* Page-locks the host store's RAM arena for direct uploads; on failure
 * (or SLUICE_CUDA_REGISTER=0, or no arena) says why once and leaves
 * reg_base NULL: uploads then go through staging. */
static int register_host_cache(struct cuda_model *cm) {
    struct gpu_cache *gc = &cm->gc;
    void *base = NULL;
    uint64_t bytes = 0;
    if (!cuda_tune("SLUICE_CUDA_REGISTER", 1)) {
        sl_log(SL_LOG_INFO, "cuda: SLUICE_CUDA_REGISTER=0: expert uploads through pinned "
               "staging");
        return SL_OK;
    }
    if (!expert_store_host_arena(cm->m->experts, &base, &bytes)) {
        sl_log(SL_LOG_INFO, "cuda: the host expert store has no RAM cache (--io mmap): "
               "expert uploads through pinned staging");
        return SL_OK;
    }
    double t0 = sl_now();
    cudaError_t e = cudaHostRegister(base, bytes, cudaHostRegisterDefault);
    if (e != cudaSuccess) {
        cudaGetLastError();
        sl_log(SL_LOG_WARN, "cuda: cannot page-lock the host expert cache (%.2f GiB) for "
               "direct uploads: %s; uploading through pinned staging (slower)",
               bytes / (1024.0 * 1024.0 * 1024.0), cudaGetErrorString(e));
        return SL_OK;
    }
    gc->reg_base = (uint8_t *)base;
    gc->reg_len = bytes;
    sl_log(SL_LOG_INFO, "cuda: host expert cache (%.2f GiB) page-locked in %.2f s: direct "
           "uploads", bytes / (1024.0 * 1024.0 * 1024.0), sl_now() - t0);
    gc->n_rel = 2 * gc->n_slots + 64;
    if (gc->n_rel > 4096) gc->n_rel = 4096;
    gc->rel = (struct gpu_release *)sl_calloc((size_t)gc->n_rel, sizeof *gc->rel);
    if (!gc->rel) return sl_seterr(SL_ERR_NOMEM, "out of memory for the GPU expert cache");
    CU_TRY(cudaStreamCreateWithFlags(&gc->release, cudaStreamNonBlocking));
    return SL_OK;
}

/* Every expert into its own slot, and the device table of bases. */
static int upload_all(struct cuda_model *cm) {
    struct gpu_cache *gc = &cm->gc;
    struct sl_model *m = cm->m;
    uint32_t ne = m->cfg.n_experts, nl = m->cfg.n_layers;
    uint64_t n_tab = (uint64_t)nl * ne;
    uint8_t **tab = (uint8_t **)sl_calloc(n_tab, sizeof *tab);
    if (!tab) return sl_seterr(SL_ERR_NOMEM, "out of memory for the GPU expert table");
    int slot = 0, st = SL_OK;
    double t0 = sl_now();
    for (uint32_t l = 0; l < nl && !st; l++) {
        const struct sl_expert_layer *el = file_expert_layer(&m->file, l);
        if (!el) continue;
        for (uint32_t e = 0; e < ne && !st; e++, slot++) {
            if (!nccl_ep_owns(cm->ep, l, (int32_t)e)) { /* multi-GPU: another rank's */
                tab[(uint64_t)l * ne + e] = (uint8_t *)nccl_ep_zero(cm->ep);
                slot--;
                continue;
            }
            struct expert_view v;
            if ((st = expert_store_acquire(m->experts, l, e, &v))) break;
            st = upload(cm, slot, &v, el, l, e);
            gc->slots[slot].layer = (int32_t)l;
            gc->slots[slot].expert = (int32_t)e;
            gc->slot_of[(uint64_t)l * ne + e] = slot;
            tab[(uint64_t)l * ne + e] = gc->arena + (uint64_t)slot * gc->slot_bytes;
        }
    }
    gc->uploads = gc->staged = 0; /* the initial fill is not a per-token statistic */
    if (!st) {
        cudaError_t e = cudaMalloc(&gc->d_table, n_tab * sizeof *tab);
        if (e == cudaSuccess)
            e = cudaMemcpy(gc->d_table, tab, n_tab * sizeof *tab, cudaMemcpyHostToDevice);
        if (e == cudaSuccess) e = cudaStreamSynchronize(gc->copy);
        if (e != cudaSuccess) st = cuda_fail(e, "uploading the experts");
    }
    sl_free(tab);
    if (!st) {
        double dt = sl_now() - t0;
        sl_log(SL_LOG_INFO, "cuda: %d experts (%.2f GB) uploaded in %.1f s (%.2f GB/s)", slot,
               (double)gc->h2d_bytes / 1e9, dt, dt > 0 ? (double)gc->h2d_bytes / 1e9 / dt : 0);
        gc->all_resident = 1;
        for (int i = 0; i < gc->n_slots; i++) gc->slots[i].in_flight = 0;
    }
    cudaStreamSynchronize(gc->copy);
    timing_collect(gc, 1); /* the fill's copies are not a per-token rate */
    gc->h2d_bytes = 0;
    gc->h2d_seconds = 0;
    gc->t_bytes = 0;
    return st;
}

int gpu_cache_create(struct cuda_model *cm, uint64_t budget, uint64_t free_bytes) {
    struct gpu_cache *gc = &cm->gc;
    struct sl_model *m = cm->m;
    const struct sl_config *c = &m->cfg;
    pthread_mutex_init(&gc->mu, NULL);
    gc->mu_init = 1;
    uint64_t sb = 0, n_total = 0;
    for (uint32_t l = 0; l < c->n_layers; l++) {
        const struct sl_expert_layer *el = file_expert_layer(&m->file, l);
        if (!el) continue;
        n_total += nccl_ep_layer_owned(cm->ep, l, el->n_experts); /* multi-GPU: its shard */
        if (record_data_bytes(el) > sb) sb = record_data_bytes(el);
    }
    if (n_total == 0) { /* no routed experts: nothing to stream */
        gc->all_resident = 1;
        return SL_OK;
    }
    sb = sl_align_up(sb, 256);
    gc->slot_bytes = sb;
    uint64_t all = n_total * sb;
    double gib = 1024.0 * 1024.0 * 1024.0;
    if (budget == SL_GPU_CACHE_AUTO) {
        budget = all <= free_bytes ? all : free_bytes / 10 * 9;
    } else if (budget == SL_RAM_CACHE_ALL) {
        if (all > free_bytes)
            return sl_seterr(SL_ERR_NOMEM, "--gpu-cache all: the experts need %.2f GiB but "
                             "%.2f GiB of device memory is free after the dense weights; "
                             "HINT: --gpu-cache SIZE streams them", all / gib, free_bytes / gib);
        budget = all;
    } else if (budget > free_bytes) {
        return sl_seterr(SL_ERR_ARG, "--gpu-cache %.2f GiB is larger than the %.2f GiB of "
                         "device memory free after the dense weights and a reserve",
                         budget / gib, free_bytes / gib);
    }
    uint64_t n = budget / sb;
    if (n > n_total) n = n_total;
    if (n < c->n_experts_used)
        return sl_seterr(SL_ERR_ARG, "--gpu-cache %.1f MiB holds %" PRIu64 " experts of %.1f "
                         "MiB; a token needs %u at once", budget / 1048576.0, n,
                         sb / 1048576.0, c->n_experts_used);
    gc->n_slots = (int)n;
    gc->miss_policy = m->params.gpu_miss_policy;
    if (gc->miss_policy != SL_GPU_MISS_AUTO && gc->miss_policy != SL_GPU_MISS_UPLOAD &&
        gc->miss_policy != SL_GPU_MISS_CPU)
        return sl_seterr(SL_ERR_ARG, "gpu_miss_policy %d is not auto (%d), upload (%d) or "
                         "cpu (%d)", gc->miss_policy, SL_GPU_MISS_AUTO, SL_GPU_MISS_UPLOAD,
                         SL_GPU_MISS_CPU);
    gc->prefetch_on = m->params.prefetch != SL_PREFETCH_OFF && cuda_tune("SLUICE_CUDA_PREFETCH", 1);
    gc->copy_timing = cuda_tune("SLUICE_CUDA_COPY_TIMING", 1) != 0;
    gc->late_wait = cuda_tune("SLUICE_CUDA_LATE_WAIT", 1) != 0;
    cudaError_t e = cudaMalloc(&gc->arena, n * sb);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return sl_seterr(SL_ERR_NOMEM, "GPU expert cache: cannot allocate %.2f GiB of device "
                         "memory (%s); HINT: a smaller --gpu-cache", n * sb / gib,
                         cudaGetErrorString(e));
    }
    uint64_t n_tab = (uint64_t)c->n_layers * c->n_experts;
    gc->slots = (struct gpu_slot *)sl_calloc(n, sizeof *gc->slots);
    gc->slot_of = (int32_t *)sl_malloc(n_tab * sizeof *gc->slot_of);
    gc->miss_idx = (int32_t *)sl_malloc(c->n_experts * sizeof(int32_t));
    gc->miss_ids = (int32_t *)sl_malloc(c->n_experts * sizeof(int32_t));
    gc->miss_done = (uint8_t *)sl_malloc(c->n_experts);
    gc->miss_bytes = (uint64_t *)sl_malloc(c->n_experts * sizeof(uint64_t));
    gc->miss_tok = (int32_t *)sl_malloc(c->n_experts * sizeof(int32_t));
    gc->miss_ram = (uint8_t *)sl_malloc(c->n_experts);
    gc->miss_cpu = (uint8_t *)sl_malloc(c->n_experts);
    gc->n_stage = N_STAGE;
    gc->ev_stage = (cudaEvent_t *)sl_calloc(N_STAGE, sizeof(cudaEvent_t));
    gc->n_timed = N_TIMED;
    gc->tev = (cudaEvent_t *)sl_calloc(2 * N_TIMED, sizeof(cudaEvent_t));
    gc->t_len = (uint64_t *)sl_calloc(N_TIMED, sizeof(uint64_t));
    if (!gc->slots || !gc->slot_of || !gc->miss_idx || !gc->miss_ids || !gc->miss_done ||
        !gc->ev_stage || !gc->miss_bytes || !gc->miss_tok || !gc->miss_ram || !gc->miss_cpu ||
        !gc->tev || !gc->t_len)
        return sl_seterr(SL_ERR_NOMEM, "out of memory for the GPU expert cache's tables");
    for (uint64_t i = 0; i < n_tab; i++) gc->slot_of[i] = -1;
    for (uint64_t i = 0; i < n; i++) {
        gc->slots[i].layer = gc->slots[i].expert = -1;
        CU_TRY(cudaEventCreateWithFlags(&gc->slots[i].ev_free, cudaEventDisableTiming));
        CU_TRY(cudaEventCreateWithFlags(&gc->slots[i].ev_ready, cudaEventDisableTiming));
        gc->n_events = (int)i + 1;
    }
    for (int i = 0; i < N_STAGE; i++)
        CU_TRY(cudaEventCreateWithFlags(&gc->ev_stage[i], cudaEventDisableTiming));
    for (int i = 0; i < 2 * N_TIMED; i++) CU_TRY(cudaEventCreate(&gc->tev[i]));
    CU_TRY(cudaStreamCreateWithFlags(&gc->copy, cudaStreamNonBlocking));
    e = cudaHostAlloc((void **)&gc->staging, (uint64_t)N_STAGE * sb, cudaHostAllocDefault);
    if (e != cudaSuccess) {
        cudaGetLastError();
        gc->staging = NULL;
        return sl_seterr(SL_ERR_NOMEM, "GPU expert cache: cannot pin %.1f MiB of host "
                         "staging memory (%s)", N_STAGE * sb / 1048576.0, cudaGetErrorString(e));
    }
    if (n == n_total) return upload_all(cm);
    return register_host_cache(cm);
}

void gpu_cache_free(struct gpu_cache *gc) {
    if (gc->copy) cudaStreamSynchronize(gc->copy);
    if (gc->release) { /* every pending store pin dropped */
        cudaStreamSynchronize(gc->release);
        cudaStreamDestroy(gc->release);
    }
    if (gc->reg_base) cudaHostUnregister(gc->reg_base);
    sl_free(gc->rel);
    sl_free(gc->miss_bytes);
    sl_free(gc->miss_tok);
    sl_free(gc->miss_ram);
    sl_free(gc->miss_cpu);
    for (int i = 0; i < gc->n_events; i++) {
        cudaEventDestroy(gc->slots[i].ev_free);
        cudaEventDestroy(gc->slots[i].ev_ready);
    }
    if (gc->ev_stage)
        for (int i = 0; i < gc->n_stage; i++)
            if (gc->ev_stage[i]) cudaEventDestroy(gc->ev_stage[i]);
    if (gc->tev)
        for (int i = 0; i < 2 * gc->n_timed; i++)
            if (gc->tev[i]) cudaEventDestroy(gc->tev[i]);
    sl_free(gc->tev);
    sl_free(gc->t_len);
    if (gc->copy) cudaStreamDestroy(gc->copy);
    if (gc->staging) cudaFreeHost(gc->staging);
    if (gc->arena) cudaFree(gc->arena);
    if (gc->d_table) cudaFree(gc->d_table);
    sl_free(gc->slots);
    sl_free(gc->slot_of);
    sl_free(gc->miss_idx);
    sl_free(gc->miss_ids);
    sl_free(gc->miss_done);
    sl_free(gc->ev_stage);
    if (gc->mu_init) pthread_mutex_destroy(&gc->mu);
    memset(gc, 0, sizeof *gc);
}
