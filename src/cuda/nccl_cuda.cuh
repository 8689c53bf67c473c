/*
 * nccl_cuda.cuh — expert parallelism over NCCL as the CUDA backend sees it
 * (design and usage: docs/multi_gpu.md). C++; nothing outside src/cuda.
 *
 * What it is: one process per GPU (rank); every rank holds the dense
 * weights and the experts it owns (src/placement.h); every rank runs the
 * same forward pass on the same tokens and routes identically; at each
 * MoE layer a rank computes only its own experts' selections — a selection
 * of an expert it does not own reads an all-zero record (nccl_ep_zero),
 * whose output is exactly 0 — and the partial outputs are summed with one
 * ncclAllReduce (float32, sum) over x. Rank 0 keeps the residual in x,
 * the other ranks zero x before their experts (nccl_ep_moe_begin), so the
 * sum is x + every expert's weighted output, identical on every rank.
 * What it is not: a transport (NCCL is loaded with dlopen from
 * libnccl.so.2 at the first multi-rank open: the binaries do not depend on
 * it), nor a scheduler: one context per model evaluates at a time (the
 * collectives of every rank must come in the same order).
 *
 * Failure: the communicator is non-blocking; every wait on a stream that
 * holds an all-reduce polls it with ncclCommGetAsyncError and a timeout on
 * progress (a per-layer event); on a stall or an NCCL error the
 * communicator is aborted and every later call fails with the first error.
 *
 * Without NCCL at build time (no nccl.h, or NO_NCCL=1) nccl_ep_create
 * answers SL_ERR_UNSUPPORTED "built without NCCL" for nccl_world > 1 and
 * cm->ep stays NULL: every hook below is then a no-op.
 */
#ifndef SL_NCCL_CUDA_CUH
#define SL_NCCL_CUDA_CUH

#include <cuda_runtime.h>
#include <stdint.h>

extern "C" {
#include "placement.h"
}

struct cuda_model;
struct cuda_ctx;
struct sl_stats;

/* One rank's expert-parallel state (model lifetime; cm->ep). */
struct nccl_ep {
    int rank, world;
    double timeout_s;          /* no progress for this long: abort */
    struct ep_placement pl;    /* owner of each (layer, expert) */
    uint32_t n_layers, n_experts, n_moe, hidden;
    uint8_t *zero;             /* device: one all-zero record (slot bytes) */
    void *comm;                /* ncclComm_t */
    int dead;                  /* aborted after a failure: every call fails */
    char dead_msg[400];
    cudaEvent_t *ev_t0, *ev_t1; /* (n_layers) around layer l's all-reduce */
    uint8_t *recorded;         /* (n_layers) pair recorded this step: 1 for
                                  one row (decode: timed), 2 for a chunk */
    int timing;                /* SLUICE_NCCL_TIMING (default 1) */
    uint64_t n_allreduce, bytes, n_timed;
    double seconds;
    char desc[160];
};

/* With m->params.nccl_world > 1 (checked by placement_check_params):
 * loads NCCL, builds the placement (balanced from m->params.expert_profile
 * when that file exists, else round-robin), writes or waits for the id
 * file, joins the communicator (non-blocking, timeout), checks that every
 * rank built the same placement for the same model, and sets cm->ep. With
 * nccl_world <= 1: SL_OK and cm->ep = NULL. Must run before
 * gpu_cache_create (which sizes the cache for the owned experts only).
 * Errors: SL_ERR_UNSUPPORTED (built without NCCL, libnccl.so.2 not found,
 * a model the expert-parallel path does not handle), SL_ERR_IO (bootstrap
 * timeout, NCCL error: the message names rank and step), SL_ERR_ARG (ranks
 * disagree on model or placement), SL_ERR_NOMEM. */
int nccl_ep_create(struct cuda_model *cm);
void nccl_ep_free(struct nccl_ep *ep); /* NULL is a no-op */

/* Whether this rank computes expert e of layer l (always without ep). */
static inline int nccl_ep_owns(const struct nccl_ep *ep, uint32_t l, int32_t e) {
    return !ep || ep->pl.owner[(uint64_t)l * ep->n_experts + (uint32_t)e] == ep->rank;
}
/* How many of layer l's n experts this rank holds (n without ep). */
uint32_t nccl_ep_layer_owned(const struct nccl_ep *ep, uint32_t l, uint32_t n);
/* The all-zero device record read in place of an expert owned elsewhere. */
const uint8_t *nccl_ep_zero(const struct nccl_ep *ep);
/* Keeps the ids[0..n) this rank owns, in order; returns how many. */
int nccl_ep_filter(const struct nccl_ep *ep, uint32_t l, int32_t *ids, int n);

/* Before a MoE layer's experts (after its router has read x): ranks > 0
 * zero cc->x (n rows). Fails once the communicator was aborted. */
int nccl_ep_moe_begin(struct cuda_model *cm, struct cuda_ctx *cc, int n);
/* After the experts combined into cc->x: the all-reduce (sum) of the n
 * rows over the ranks, enqueued on cc->stream (capturable: no events and
 * no waits while the stream is capturing); in streaming mode (the host
 * synchronises per layer anyway) it also waits for it with the timeout. */
int nccl_ep_moe_end(struct cuda_model *cm, struct cuda_ctx *cc, uint32_t l, int n);
/* Waits for stream s like cudaStreamSynchronize, but polls NCCL's error
 * state and fails after timeout_s without progress (aborting the
 * communicator, with "rank R of N: ... stopped responding in layer L's
 * all-reduce"). graph_step: the step was a replayed decode graph (its
 * n_moe all-reduces are counted here). */
int nccl_ep_wait(struct cuda_model *cm, cudaStream_t s, int graph_step);
/* "expert parallel: rank R of N, ..." for the backend description; "" without ep. */
const char *nccl_ep_desc(const struct nccl_ep *ep);
/* The nccl_* fields of *out. */
void nccl_ep_stats(const struct nccl_ep *ep, struct sl_stats *out);

#endif /* SL_NCCL_CUDA_CUH */
