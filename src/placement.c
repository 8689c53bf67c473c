/*
 * placement.c — expert placement over ranks and the NCCL id file
 * (contracts in placement.h; design in docs/multi_gpu.md).
 *
 * Not here: NCCL, CUDA (src/cuda/nccl_cuda.cu uses these functions).
 * Invariants: see placement.h — one owner per expert, at most
 * ceil(n_experts / world) experts per rank and layer with a profile.
 */
#include "placement.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sluice.h"
#include "util.h"

int placement_build(struct ep_placement *p, uint32_t n_layers, uint32_t n_experts, int world,
                    const uint64_t *counts) {
    memset(p, 0, sizeof *p);
    if (world < 1 || world > 65535)
        return sl_seterr(SL_ERR_ARG, "expert placement: world size %d is not in [1, 65535]",
                         world);
    if (n_layers == 0 || n_experts == 0)
        return sl_seterr(SL_ERR_ARG, "expert placement: empty shape (%u layers, %u experts)",
                         n_layers, n_experts);
    uint64_t n = (uint64_t)n_layers * n_experts;
    p->owner = sl_malloc(n * sizeof *p->owner);
    uint32_t *order = counts ? sl_malloc(n_experts * sizeof *order) : NULL;
    uint64_t *load = counts ? sl_calloc((size_t)world, sizeof *load) : NULL;
    uint32_t *have = counts ? sl_calloc((size_t)world, sizeof *have) : NULL;
    if (!p->owner || (counts && (!order || !load || !have))) {
        sl_free(order), sl_free(load), sl_free(have);
        placement_free(p);
        return sl_seterr(SL_ERR_NOMEM, "expert placement: out of memory");
    }
    p->n_layers = n_layers;
    p->n_experts = n_experts;
    p->world = world;
    uint32_t cap = (n_experts + (uint32_t)world - 1) / (uint32_t)world;
    for (uint32_t l = 0; l < n_layers; l++) {
        uint16_t *own = p->owner + (uint64_t)l * n_experts;
        if (!counts) {
            for (uint32_t e = 0; e < n_experts; e++) own[e] = (uint16_t)(e % (uint32_t)world);
            continue;
        }
        const uint64_t *c = counts + (uint64_t)l * n_experts;
        /* experts by count, descending; ties by id (insertion sort: stable,
         * n_experts is at most a few hundred) */
        for (uint32_t i = 0; i < n_experts; i++) {
            uint32_t j = i;
            while (j > 0 && c[order[j - 1]] < c[i]) {
                order[j] = order[j - 1];
                j--;
            }
            order[j] = i;
        }
        memset(load, 0, (size_t)world * sizeof *load);
        memset(have, 0, (size_t)world * sizeof *have);
        for (uint32_t i = 0; i < n_experts; i++) {
            int best = -1; /* least load among ranks with room; ties: fewer experts, lower rank */
            for (int r = 0; r < world; r++) {
                if (have[r] >= cap) continue;
                if (best < 0 || load[r] < load[best] ||
                    (load[r] == load[best] && have[r] < have[best]))
                    best = r;
            }
            SL_ASSERT(best >= 0); /* world * cap >= n_experts */
            own[order[i]] = (uint16_t)best;
            load[best] += c[order[i]];
            have[best]++;
        }
    }
    sl_free(order), sl_free(load), sl_free(have);
    return SL_OK;
}

void placement_free(struct ep_placement *p) {
    sl_free(p->owner);
    memset(p, 0, sizeof *p);
}

uint32_t placement_owned(const struct ep_placement *p, int rank, uint32_t layer) {
    uint32_t n = 0;
    if (layer >= p->n_layers) return 0;
    for (uint32_t e = 0; e < p->n_experts; e++)
        n += p->owner[(uint64_t)layer * p->n_experts + e] == rank;
    return n;
}

uint64_t placement_load(const struct ep_placement *p, const uint64_t *counts, int rank,
                        uint32_t layer) {
    uint64_t s = 0;
    if (!counts || layer >= p->n_layers) return 0;
    for (uint32_t e = 0; e < p->n_experts; e++) {
        uint64_t i = (uint64_t)layer * p->n_experts + e;
        if (p->owner[i] == rank) s += counts[i];
    }
    return s;
}

uint64_t placement_digest(const struct ep_placement *p) {
    uint32_t shape[3] = {p->n_layers, p->n_experts, (uint32_t)p->world};
    uint64_t h = sl_fnv1a64(shape, sizeof shape, 0xcbf29ce484222325ull);
    if (p->owner)
        h = sl_fnv1a64(p->owner, (size_t)p->n_layers * p->n_experts * sizeof *p->owner, h);
    return h;
}

int placement_load_profile(const char *path, uint32_t n_layers, uint32_t n_experts,
                           uint64_t **counts) {
    *counts = NULL;
    FILE *f = fopen(path, "r");
    if (!f) return sl_seterr(SL_ERR_IO, "expert placement profile %s: %s", path, strerror(errno));
    unsigned version = 0, nl = 0, ne = 0;
    int st = SL_OK;
    uint64_t *c = NULL;
    if (fscanf(f, "sluice-expert-profile %u layers %u experts %u", &version, &nl, &ne) != 3 ||
        version != 1) {
        st = sl_seterr(SL_ERR_FORMAT, "expert placement profile %s: not a version 1 profile "
                       "(expected a 'sluice-expert-profile 1 layers N experts E' header)", path);
        goto done;
    }
    if (ne != n_experts) {
        st = sl_seterr(SL_ERR_FORMAT, "expert placement profile %s: written for %u experts per "
                       "layer, the model has %u", path, ne, n_experts);
        goto done;
    }
    c = sl_calloc((size_t)n_layers * n_experts, sizeof *c);
    if (!c) {
        st = sl_seterr(SL_ERR_NOMEM, "expert placement profile: out of memory");
        goto done;
    }
    for (unsigned i = 0; i < nl; i++) {
        unsigned layer;
        if (fscanf(f, " L %u", &layer) != 1) {
            st = sl_seterr(SL_ERR_FORMAT, "expert placement profile %s: layer line %u is "
                           "malformed", path, i + 1);
            goto done;
        }
        if (layer >= n_layers) {
            st = sl_seterr(SL_ERR_FORMAT, "expert placement profile %s: layer %u out of range "
                           "(the model has %u layers)", path, layer, n_layers);
            goto done;
        }
        for (unsigned e = 0; e < ne; e++) {
            unsigned long long v;
            if (fscanf(f, " %llu", &v) != 1) {
                st = sl_seterr(SL_ERR_FORMAT, "expert placement profile %s: layer %u: expected "
                               "%u counts", path, layer, ne);
                goto done;
            }
            c[(uint64_t)layer * n_experts + e] = v;
        }
    }
done:
    fclose(f);
    if (st) sl_free(c);
    else *counts = c;
    return st;
}

int placement_check_params(const struct sl_model_params *p) {
    if (p->nccl_world <= 1) return SL_OK;
    if (p->nccl_world > 65535)
        return sl_seterr(SL_ERR_ARG, "--nccl-world %d: at most 65535 ranks", p->nccl_world);
    if (p->device != SL_DEVICE_CUDA)
        return sl_seterr(SL_ERR_ARG, "--nccl-world %d needs --device cuda (device %d given): "
                         "expert parallelism runs one GPU per rank", p->nccl_world, p->device);
    if (p->nccl_rank < 0 || p->nccl_rank >= p->nccl_world)
        return sl_seterr(SL_ERR_ARG, "--nccl-rank %d is not in [0, %d) (--nccl-world %d)",
                         p->nccl_rank, p->nccl_world, p->nccl_world);
    if (!p->nccl_id_path || !*p->nccl_id_path)
        return sl_seterr(SL_ERR_ARG, "--nccl-world %d needs --nccl-id FILE (the file rank 0 "
                         "writes NCCL's unique id to)", p->nccl_world);
    if (!isfinite(p->nccl_timeout_s) || p->nccl_timeout_s < 0)
        return sl_seterr(SL_ERR_ARG, "nccl_timeout_s %g is not a number of seconds >= 0 "
                         "(0 = 60)", p->nccl_timeout_s);
    return SL_OK;
}

/* ---- the NCCL unique-id file ---- */

#define ID_MAGIC "sluice-nccl-id 1 world"

int nccl_id_write(const char *path, const void *id, size_t len, int world) {
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp)
        return sl_seterr(SL_ERR_ARG, "NCCL id file path too long: %s", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return sl_seterr(SL_ERR_IO, "NCCL id file %s: %s", tmp, strerror(errno));
    fprintf(f, "%s %d\n", ID_MAGIC, world);
    const uint8_t *b = id;
    for (size_t i = 0; i < len; i++) fprintf(f, "%02x", b[i]);
    fputc('\n', f);
    if (ferror(f) | fclose(f) || rename(tmp, path) != 0) {
        int err = errno;
        unlink(tmp);
        return sl_seterr(SL_ERR_IO, "NCCL id file %s: write failed: %s", path, strerror(err));
    }
    return SL_OK;
}

int nccl_id_read(const char *path, void *id, size_t len, int world, double timeout_s) {
    double t0 = sl_now();
    FILE *f;
    while (!(f = fopen(path, "r"))) {
        if (errno != ENOENT)
            return sl_seterr(SL_ERR_IO, "NCCL id file %s: %s", path, strerror(errno));
        if (sl_now() - t0 >= timeout_s)
            return sl_seterr(SL_ERR_IO, "no NCCL id file %s after %.1f s: is rank 0 running "
                             "with the same --nccl-id?", path, timeout_s);
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    int w = 0, st = SL_OK;
    uint8_t *b = id;
    if (fscanf(f, ID_MAGIC " %d", &w) != 1) {
        st = sl_seterr(SL_ERR_FORMAT, "%s is not a sluice NCCL id file (expected a '" ID_MAGIC
                       " N' header)", path);
        goto done;
    }
    if (w != world) {
        st = sl_seterr(SL_ERR_ARG, "NCCL id file %s was written by a rank 0 of world %d; this "
                       "rank runs with --nccl-world %d", path, w, world);
        goto done;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned v;
        if (fscanf(f, "%2x", &v) != 1) {
            st = sl_seterr(SL_ERR_FORMAT, "NCCL id file %s: the id is shorter than %zu bytes",
                           path, len);
            goto done;
        }
        b[i] = (uint8_t)v;
    }
done:
    fclose(f);
    return st;
}
