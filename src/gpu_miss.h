/*
 * gpu_miss.h — the host side of the GPU expert cache's per-miss choice
 * (issue 7 item 3, docs/cuda.md "The GPU expert cache"): for an expert that
 * a decode step needs and the GPU cache lacks, either upload it (host RAM
 * → device over PCIe) or compute it on the CPU where its weights already
 * are (the Fiddler / KTransformers observation: at batch 1 a CPU matvec
 * over the record can beat shipping the record), decided per miss from
 * numbers measured at run time; and the CPU computation itself.
 *
 * What it is: plain C (no CUDA), so the decision and the CPU expert are
 * tested without a GPU (tests/test_cuda_stream.c). The CUDA backend
 * (src/cuda/expert_cache_cuda.cu, moe_stream_cuda.cu) calls it.
 * What it is not: thread safe — the caller serialises access to a model
 * (the GPU cache does, under its mutex).
 *
 * Invariants: the decision only picks who computes an expert; the CPU
 * output of an expert is down(silu(gate x) * up x) per token, unweighted,
 * like the GPU kernels' (the weighted sum stays on the GPU, in expert-id
 * order), so logits depend only on which side computed each expert.
 */
#ifndef SL_GPU_MISS_H
#define SL_GPU_MISS_H

#include <stdint.h>

#include "expert_store.h"

struct sl_pool;

/* Tokens per chunk up to which AUTO considers the CPU (beyond, a chunk
 * reuses each uploaded expert for many tokens: always upload). */
#define GPU_MISS_CPU_MAX_TOKENS 4
/* A path not taken for this many misses is taken once to re-measure it. */
#define GPU_MISS_REPROBE 256

/* Measured costs (model-wide). */
struct gpu_miss_model {
    double cpu_spb;         /* CPU seconds per (record byte x token), an
                               exponential average; 0 = not measured yet */
    uint64_t since_cpu;     /* AUTO decisions since the CPU was last picked */
    uint64_t since_up;      /* ... since an upload was last picked */
};

/* Decides, for the n misses of one chunk of n_tok tokens (in expert-id
 * order), who computes each: cpu[i] = 1 for the CPU, 0 to upload.
 * bytes[i]: the record's bytes; tokens[i]: the chunk's tokens using it;
 * in_ram[i]: the record is resident in the host RAM cache now; h2d_bps: the
 * uploads' measured bytes per second (0 = not measured yet).
 * UPLOAD: all 0. CPU: all 1. AUTO: 0 for n_tok > GPU_MISS_CPU_MAX_TOKENS
 * and for records not in RAM; otherwise an unmeasured path is taken once
 * (to measure it), a path unused for GPU_MISS_REPROBE misses is taken once,
 * and the rest is a greedy split between the two queues that run in
 * parallel — the copy engine (bytes / h2d_bps each) and the CPU (cpu_spb x
 * bytes x tokens each): each miss goes where it would finish first. */
void gpu_miss_decide(struct gpu_miss_model *mm, int policy, int n_tok,
                     const uint64_t *bytes, const int32_t *tokens,
                     const uint8_t *in_ram, int n, double h2d_bps,
                     uint8_t *cpu);

/* Records one CPU expert computation: seconds for a record of bytes on
 * tokens tokens. */
void gpu_miss_note_cpu(struct gpu_miss_model *mm, double seconds,
                       uint64_t bytes, int tokens);

/* One routed expert on the CPU, plain SwiGLU: out (m, hidden) =
 * down(silu(gate X) * up X) for X (m, hidden), with the pool's threads.
 * hb, hb2: (m, ffn) scratch. Returns the ops' status (SL_ERR_NOMEM if the
 * pool's scratch cannot grow). */
int gpu_miss_expert_cpu(struct sl_pool *pool, const struct expert_view *v,
                        int hidden, int ffn, const float *X, float *out,
                        int m, float *hb, float *hb2);

#endif /* SL_GPU_MISS_H */
