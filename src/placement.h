/*
 * placement.h — expert parallelism's pure-C parts (docs/multi_gpu.md):
 * which rank owns each (layer, expert), read from an expert-usage profile
 * or round-robin, and the NCCL unique-id file the ranks bootstrap from.
 *
 * What it is: deterministic functions of their inputs, so every rank that
 * calls them with the same model and profile gets the same placement (the
 * CUDA side checks that across ranks at bootstrap: src/cuda/nccl_cuda.cu).
 * What it is not: NCCL or CUDA (nothing here links either; it runs and is
 * tested on any machine).
 *
 * Invariants: every expert of every layer is owned by exactly one rank in
 * [0, world); with a profile, per layer, no rank owns more than
 * ceil(n_experts / world) experts (each rank's GPU cache holds the same
 * number of records) and the ranks' summed counts are balanced greedily
 * (largest count first onto the least-loaded rank that has room).
 */
#ifndef SL_PLACEMENT_H
#define SL_PLACEMENT_H

#include <stddef.h>
#include <stdint.h>

/* The owner rank of each (layer, expert). */
struct ep_placement {
    uint32_t n_layers, n_experts;
    int world;
    uint16_t *owner; /* (n_layers, n_experts) rank */
};

/* Builds the placement of n_layers x n_experts experts over world ranks:
 * balanced from counts ((n_layers, n_experts) uses, e.g. a usage profile)
 * when counts is not NULL, else expert e of every layer to rank
 * e % world. SL_ERR_ARG for world < 1 or > 65535 or an empty shape,
 * SL_ERR_NOMEM. On success p owns owner (placement_free). */
int placement_build(struct ep_placement *p, uint32_t n_layers, uint32_t n_experts, int world,
                    const uint64_t *counts);
void placement_free(struct ep_placement *p); /* zeroes p; a zeroed p is a no-op */

/* Experts of layer owned by rank. */
uint32_t placement_owned(const struct ep_placement *p, int rank, uint32_t layer);
/* Summed counts of layer's experts owned by rank (0 without counts). */
uint64_t placement_load(const struct ep_placement *p, const uint64_t *counts, int rank,
                        uint32_t layer);
/* A 64-bit digest of the owner table and shape (FNV-1a), equal on every
 * rank that built the same placement. */
uint64_t placement_digest(const struct ep_placement *p);

/* Reads a usage profile written by the host expert store
 * (expert_store_write_profile: "sluice-expert-profile 1 layers N experts E"
 * then one "L layer c0 c1 ..." line per MoE layer) into *counts
 * ((n_layers, n_experts), layers absent from the file at 0; sl_free).
 * SL_ERR_IO if it cannot be opened (ENOENT included: a placement profile
 * must exist), SL_ERR_FORMAT naming the line for a bad header, a layer out
 * of range, an expert count other than n_experts or a missing count. */
int placement_load_profile(const char *path, uint32_t n_layers, uint32_t n_experts,
                           uint64_t **counts);

/* Checks the multi-GPU fields of sl_model_params (struct sl_model_params
 * of sluice.h): nccl_world <= 1 is single-device (SL_OK, nothing else
 * checked); else SL_ERR_ARG for device other than SL_DEVICE_CUDA, a rank
 * outside [0, world), a world over 65535, no nccl_id_path, or a negative
 * or non-finite nccl_timeout_s. */
struct sl_model_params;
int placement_check_params(const struct sl_model_params *p);

/* The NCCL unique-id file: "sluice-nccl-id 1 world W\n" + the id in hex.
 * Write: atomically (path.tmp.PID, then rename), so a reader never sees a
 * partial file. SL_ERR_IO names the path and errno. */
int nccl_id_write(const char *path, const void *id, size_t len, int world);
/* Read: polls path until it exists (every 10 ms) for at most timeout_s
 * seconds. SL_ERR_IO on the timeout ("no NCCL id file PATH after N s: is
 * rank 0 running with the same --nccl-id?"), SL_ERR_FORMAT for a file that
 * is not an id of len bytes, SL_ERR_ARG when it was written for another
 * world size. */
int nccl_id_read(const char *path, void *id, size_t len, int world, double timeout_s);

#endif /* SL_PLACEMENT_H */
