/*
 * expert_cache_cuda.cu — the GPU expert cache: the tier above the host
 * expert store (src/expert_store.h). Contracts in internal.cuh; design in
 * docs/cuda.md.
 *
 * What it is: n_slots slots of the largest record in one device arena,
 * allocated once (the budget is a hard limit), an LRU over unpinned slots,
 * and uploads: a missing expert is taken from the host store (RAM cache or
 * disk, through expert_store_request / acquire_next so its reads overlap),
 * copied into one of n_stage pinned staging buffers and sent host-to-device
 * on the cache's own copy stream, so that the compute stream runs the
 * layer's resident experts while the missing ones arrive.
 * When every expert fits, all are uploaded at creation and the forward pass
 * reads a device table of record bases (no host round trip per layer).
 *
 * Invariants: a slot is never overwritten while pinned or before the
 * compute that last read it has run (the copy waits for the slot's ev_free);
 * a slot whose upload is in flight is waited for (ev_ready) by any other
 * stream that finds it; the bytes in a slot are exactly the record's bytes.
 */
#include <inttypes.h>
#include <stdlib.h>

#include "cuda/internal.cuh"

#define N_STAGE 8

/* Data bytes of layer's record: up to the end of its down matrix. */
static uint64_t record_data_bytes(const struct sl_expert_layer *el) {
    return el->part[2].offset + el->part[2].size;
}

static void timing_collect(struct gpu_cache *gc) {
    if (!gc->timing_pending) return;
    if (cudaEventSynchronize(gc->ev_t1) == cudaSuccess) {
        float ms = 0;
        if (cudaEventElapsedTime(&ms, gc->ev_t0, gc->ev_t1) == cudaSuccess)
            gc->h2d_seconds += ms / 1e3;
    }
    gc->timing_pending = 0;
}

/* Copies one acquired record into slot (mu held). */
static int upload(struct gpu_cache *gc, int slot, const struct expert_view *v,
                  const struct sl_expert_layer *el) {
    uint64_t len = record_data_bytes(el);
    const uint8_t *src = (const uint8_t *)v->gate - el->part[0].offset;
    int i = gc->stage_next;
    gc->stage_next = (i + 1) % gc->n_stage;
    uint8_t *stage = gc->staging + (uint64_t)i * gc->slot_bytes;
    CU_TRY(cudaEventSynchronize(gc->ev_stage[i])); /* its previous copy is done */
    memcpy(stage, src, len);
    struct gpu_slot *s = &gc->slots[slot];
    if (s->ev_valid) CU_TRY(cudaStreamWaitEvent(gc->copy, s->ev_free, 0));
    CU_TRY(cudaMemcpyAsync(gc->arena + (uint64_t)slot * gc->slot_bytes, stage, len,
                           cudaMemcpyHostToDevice, gc->copy));
    CU_TRY(cudaEventRecord(gc->ev_stage[i], gc->copy));
    CU_TRY(cudaEventRecord(s->ev_ready, gc->copy));
    s->in_flight = 1;
    gc->uploads++;
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
}

int gpu_cache_acquire(struct cuda_model *cm, uint32_t layer, const int32_t *ids, int n,
                      cudaStream_t stream, const uint8_t **base, uint8_t *hit,
                      int32_t *slots, cudaEvent_t ev_arrive, int *uploaded) {
    struct gpu_cache *gc = &cm->gc;
    struct sl_model *m = cm->m;
    uint32_t ne = m->cfg.n_experts;
    const struct sl_expert_layer *el = file_expert_layer(&m->file, layer);
    int st = SL_OK, nm = 0;
    *uploaded = 0;
    pthread_mutex_lock(&gc->mu);
    timing_collect(gc);
    for (int i = 0; i < n; i++) {
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
        if (sl->in_flight) { /* uploaded for another stream: wait for it */
            cudaError_t q = cudaEventQuery(sl->ev_ready);
            if (q == cudaErrorNotReady) {
                if ((q = cudaStreamWaitEvent(stream, sl->ev_ready, 0)) != cudaSuccess)
                    st = cuda_fail(q, "cudaStreamWaitEvent");
            } else {
                sl->in_flight = 0;
            }
        }
        base[i] = gc->arena + (uint64_t)s * gc->slot_bytes;
    }
    if (nm == 0 || st) goto out;
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
            goto out;
        }
        slot_forget(gc, v, ne);
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
    if ((st = expert_store_request(m->experts, layer, gc->miss_ids, nm))) goto fail;
    if (!gc->timing_pending) cudaEventRecord(gc->ev_t0, gc->copy);
    for (int left = nm; left > 0; left--) {
        struct expert_view v;
        int j;
        if ((st = expert_store_acquire_next(m->experts, layer, gc->miss_ids, gc->miss_done, nm,
                                            &j, &v)))
            break;
        st = upload(gc, slots[gc->miss_idx[j]], &v, el);
        expert_store_release(m->experts, layer, (uint32_t)gc->miss_ids[j]);
        if (st) break;
    }
    if (st) {
        expert_store_cancel(m->experts, layer, gc->miss_ids, gc->miss_done, nm);
        goto fail;
    }
    if (!gc->timing_pending && cudaEventRecord(gc->ev_t1, gc->copy) == cudaSuccess)
        gc->timing_pending = 1;
    {
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
        struct gpu_slot *s = &gc->slots[slots[i]];
        s->ev_valid = cudaEventRecord(s->ev_free, stream) == cudaSuccess;
        s->pins--;
    }
    pthread_mutex_unlock(&gc->mu);
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
            struct expert_view v;
            if ((st = expert_store_acquire(m->experts, l, e, &v))) break;
            st = upload(gc, slot, &v, el);
            expert_store_release(m->experts, l, e);
            gc->slots[slot].layer = (int32_t)l;
            gc->slots[slot].expert = (int32_t)e;
            gc->slot_of[(uint64_t)l * ne + e] = slot;
            tab[(uint64_t)l * ne + e] = gc->arena + (uint64_t)slot * gc->slot_bytes;
        }
    }
    gc->uploads = 0; /* the initial fill is not a per-token statistic */
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
    gc->h2d_bytes = 0;
    gc->h2d_seconds = 0;
    gc->timing_pending = 0;
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
        n_total += el->n_experts;
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
    gc->n_stage = N_STAGE;
    gc->ev_stage = (cudaEvent_t *)sl_calloc(N_STAGE, sizeof(cudaEvent_t));
    if (!gc->slots || !gc->slot_of || !gc->miss_idx || !gc->miss_ids || !gc->miss_done ||
        !gc->ev_stage)
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
    CU_TRY(cudaEventCreate(&gc->ev_t0));
    CU_TRY(cudaEventCreate(&gc->ev_t1));
    CU_TRY(cudaStreamCreateWithFlags(&gc->copy, cudaStreamNonBlocking));
    e = cudaHostAlloc((void **)&gc->staging, (uint64_t)N_STAGE * sb, cudaHostAllocDefault);
    if (e != cudaSuccess) {
        cudaGetLastError();
        gc->staging = NULL;
        return sl_seterr(SL_ERR_NOMEM, "GPU expert cache: cannot pin %.1f MiB of host "
                         "staging memory (%s)", N_STAGE * sb / 1048576.0, cudaGetErrorString(e));
    }
    return n == n_total ? upload_all(cm) : SL_OK;
}

void gpu_cache_free(struct gpu_cache *gc) {
    if (gc->copy) cudaStreamSynchronize(gc->copy);
    for (int i = 0; i < gc->n_events; i++) {
        cudaEventDestroy(gc->slots[i].ev_free);
        cudaEventDestroy(gc->slots[i].ev_ready);
    }
    if (gc->ev_stage)
        for (int i = 0; i < gc->n_stage; i++)
            if (gc->ev_stage[i]) cudaEventDestroy(gc->ev_stage[i]);
    if (gc->ev_t0) cudaEventDestroy(gc->ev_t0);
    if (gc->ev_t1) cudaEventDestroy(gc->ev_t1);
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
