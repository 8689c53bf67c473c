/*
 * internal.cuh — the CUDA backend's state, shared by model_cuda.cu (device
 * weights, contexts), expert_cache_cuda.cu (the GPU expert cache) and
 * forward_cuda.cu (the forward pass). C++; nothing outside src/cuda sees it.
 *
 * Ownership: struct cuda_model belongs to the sl_model (device weights, the
 * GPU cache, the copy stream); struct cuda_ctx to one sl_context (its
 * compute stream, KV cache, activations, pinned staging, decode graph).
 */
#ifndef SL_CUDA_INTERNAL_CUH
#define SL_CUDA_INTERNAL_CUH

#include <pthread.h>

#include "cuda/ops_cuda.cuh"

extern "C" {
#include "context.h"
#include "cuda/cuda.h"
#include "gpu_miss.h"
#include "model.h"
}

struct mla_cuda_model; /* layer_mla_cuda.cuh */
struct nccl_ep;        /* nccl_cuda.cuh */
struct mla_cuda_ctx;

/* Device pointers of one layer's dense weights (NULL where the host's is). */
struct gpu_layer {
    const float *attn_norm, *ffn_norm;      /* (hidden) */
    const float *q_norm, *k_norm;           /* (head_dim) or NULL */
    const float *bq, *bk, *bv, *bo;         /* biases or NULL */
    const float *router_b;                  /* (n_experts) or NULL */
    const float *sinks;                     /* (n_heads) attention sinks or NULL */
    const void *wq, *wk, *wv, *wo, *router; /* as struct layer_weights */
    const void *w_gate, *w_up, *w_down;     /* dense-MLP layers */
    struct ffn_shape mlp;                   /* dense-MLP layers */
    struct ffn_shape moe;                   /* MoE layers: expert shapes */
    struct part_off off;                    /* MoE layers: record parts */
};

/* One slot of the GPU expert cache. */
struct gpu_slot {
    int32_t layer, expert;  /* -1 when empty */
    uint64_t tick;          /* last use (LRU) */
    int pins;               /* contexts computing with it now */
    cudaEvent_t ev_free;    /* recorded after its last use was enqueued */
    int ev_valid;
    cudaEvent_t ev_ready;   /* recorded after its upload */
    int in_flight;          /* ev_ready may not have completed */
    int prefetched;         /* uploaded by a lookahead, not used yet */
};

/* A host RAM cache record read by a direct upload: its store pin, dropped
 * by a host function on the release stream once the copy is done. */
struct gpu_release {
    struct expert_store *store;
    uint32_t layer, expert;
    int busy;               /* atomic: set at launch, cleared by the callback */
};

/* The GPU expert cache: n_slots record-sized slots in one device arena
 * (a hard budget), LRU over unpinned slots, filled through pinned staging
 * buffers on its own copy stream. Guarded by mu. */
struct gpu_cache {
    pthread_mutex_t mu;
    int mu_init;
    uint8_t *arena;          /* (n_slots, slot_bytes) device */
    uint64_t slot_bytes;     /* largest record's data, 256-aligned */
    int n_slots;
    struct gpu_slot *slots;  /* (n_slots) */
    int32_t *slot_of;        /* (n_layers * n_experts) slot or -1 */
    uint8_t **d_table;       /* (n_layers * n_experts) device record bases,
                                only when every expert is resident */
    int all_resident;
    uint64_t tick;
    cudaStream_t copy;
    uint8_t *staging;        /* (n_stage, slot_bytes) pinned host */
    int n_stage, stage_next;
    cudaEvent_t *ev_stage;   /* (n_stage) H2D of that buffer done */
    /* per-copy timing (SLUICE_CUDA_COPY_TIMING, default on): an event pair
     * around each upload's cudaMemcpyAsync on the copy stream, so that
     * h2d_seconds is the time the copy engine was busy with expert bytes */
    int copy_timing;
    cudaEvent_t *tev;        /* (2 * n_timed) start, end of a pending copy */
    uint64_t *t_len;         /* (n_timed) its bytes */
    int n_timed, t_head, t_count; /* ring of pending pairs */
    int late_wait;           /* SLUICE_CUDA_LATE_WAIT: a lookahead slot still
                                in flight is computed with the uploads (the
                                compute stream waits at ev_arrive), not
                                waited for before the resident experts */
    int32_t *miss_idx, *miss_ids; /* (n_experts) scratch of an acquire */
    uint8_t *miss_done;
    int n_events;            /* slots whose events exist */
    uint64_t hits, uploads, h2d_bytes;
    double h2d_seconds;
    /* direct uploads: the host store's RAM arena page-locked with
     * cudaHostRegister (NULL: every upload goes through staging) */
    uint8_t *reg_base;
    uint64_t reg_len;
    cudaStream_t release;    /* host functions dropping the store pins */
    struct gpu_release *rel; /* (n_rel) ring of pending pin drops */
    int n_rel, rel_next;
    uint64_t staged;         /* uploads through staging */
    uint64_t t_bytes;        /* bytes of the timed copies: the copy engine's
                                H2D rate is t_bytes / h2d_seconds */
    /* the per-miss choice (gpu_miss.h) and the lookahead */
    int miss_policy;         /* enum sl_gpu_miss_policy */
    struct gpu_miss_model mm;
    uint64_t cpu_experts;
    double cpu_seconds;
    int prefetch_on;         /* lookahead uploads into the GPU cache */
    uint64_t pf_uploads, pf_useful, pf_wasted;
    uint64_t *miss_bytes;    /* (n_experts) scratch of a plan */
    int32_t *miss_tok;       /* (n_experts) */
    uint8_t *miss_ram, *miss_cpu; /* (n_experts) */
};

struct cuda_model {
    struct sl_model *m;
    int device;
    char desc[640];
    uint8_t *d_dense;            /* the dense region, uploaded once */
    const uint8_t *h_dense;      /* its host start in the mapping */
    uint64_t dense_span;
    struct gpu_layer *layers;    /* (n_layers) */
    const void *embed, *lm_head; /* device */
    const float *final_norm;
    float *d_inv_freq;           /* (head_dim / 2) rope frequencies */
    struct gpu_cache gc;
    int use_graphs;              /* SLUICE_CUDA_GRAPH != 0 */
    uint64_t decode_expert_loads; /* per decode step: k per MoE layer */
    uint64_t decode_expert_bytes; /* and their record data bytes */
    struct hybrid_cuda *hy;      /* qwen3_next / qwen3_5_moe layers
                                    (layer_gdn_cuda.cuh), else NULL */
    struct mla_cuda_model *mla;  /* deepseek_v3 (layer_mla_cuda.cuh) or NULL */
    struct nccl_ep *ep;          /* multi-GPU expert parallelism
                                    (nccl_cuda.cuh) or NULL: one GPU */
};

struct cuda_ctx {
    cudaStream_t stream;
    int32_t *d_io;               /* [pos, tokens (n_batch)] device */
    int32_t *h_io;               /* the same, pinned host */
    float *k_cache, *v_cache;    /* (n_layers, n_ctx, kv_dim) */
    float *x, *xb;               /* (n_batch, hidden) */
    float *q, *att;              /* (n_batch, q_dim) */
    float *kb, *vb;              /* (n_batch, kv_dim) new keys, values */
    float *scores;               /* (n_batch, n_heads, n_ctx) */
    float *router, *topk_w;      /* (n_batch, n_experts), (n_batch, k) */
    int32_t *topk_ids, *sel;     /* (n_batch, k), (n_batch * max(k, 1)) */
    int32_t *n_items;            /* (2 * n_experts + 2): the device-built
                                    count; per streaming batch, resident and
                                    uploaded counts */
    struct moe_item *items;      /* (max(n_experts, n_batch * k)) */
    float *H;                    /* (n_batch * k, max(moe_ffn, ffn)) */
    float *moe_tmp;              /* (n_batch * k, hidden) */
    float *logits;               /* (n_batch, n_vocab) */
    float *h_logits;             /* (n_vocab) pinned */
    int32_t *h_ids;              /* (n_batch * k) pinned */
    int32_t *h_sel;              /* (n_batch * k) pinned */
    struct moe_item *h_items;    /* (max items) pinned */
    int32_t *h_counts;           /* (2 * n_experts + 2) pinned */
    int32_t *distinct;           /* (n_experts) host scratch */
    int32_t *tmp_count;          /* (n_experts) host scratch */
    int32_t *slot_ids;           /* (n_experts) slots pinned this layer */
    const uint8_t **bases;       /* (n_experts) their device record bases */
    uint8_t *hit;                /* (n_experts) resident before the layer */
    int32_t *iota;               /* (n_batch) 0, 1, ... device (dense MLP) */
    unsigned int *d_sync;        /* (32) zeroed: [0] the fused router's
                                    block counter (matvec_route_cuda) */
    cudaEvent_t ev_arrive;
    struct stream_ctx *sx;       /* streaming MoE buffers (moe_stream_cuda.cu),
                                    made on first use */
    cudaGraphExec_t graph;       /* the decode step (n = 1, resident) */
    int graph_state;             /* 0 not yet, 1 ready, -1 off */
    uint32_t max_items;
    struct hybrid_cuda_ctx *hy;  /* recurrent state and scratch of the hybrid
                                    layers (layer_gdn_cuda.cuh), else NULL */
    struct mla_cuda_ctx *mla;    /* deepseek_v3: latent cache and MLA buffers
                                    (layer_mla_cuda.cuh), else NULL */
};

/* GPU cache (expert_cache_cuda.cu). Create: budget in bytes or
 * SL_GPU_CACHE_AUTO / SL_RAM_CACHE_ALL, free = device bytes still free
 * after the dense weights and the reserve; uploads every expert when they
 * all fit. */
int gpu_cache_create(struct cuda_model *cm, uint64_t budget, uint64_t free_bytes);
void gpu_cache_free(struct gpu_cache *gc);

/* Makes experts ids[0..n) (distinct) of layer resident for a computation
 * enqueued on `stream`: base[i] receives each record's device base,
 * hit[i] whether it was resident, slots[i] its slot. Misses are read through the host expert store and copied
 * on the copy stream; when any were, ev_arrive (recorded on the copy
 * stream) completes once they are in place, and *uploaded is nonzero.
 * Every returned slot is pinned until gpu_cache_release. */
int gpu_cache_acquire(struct cuda_model *cm, uint32_t layer, const int32_t *ids, int n,
                      cudaStream_t stream, const uint8_t **base, uint8_t *hit,
                      int32_t *slots, cudaEvent_t ev_arrive, int *uploaded);
/* Records on `stream` that the slots' use is enqueued, and unpins them. */
void gpu_cache_release(struct cuda_model *cm, const int32_t *slots, int n, cudaStream_t stream);

/* The per-miss choice for distinct experts ids[0..n) of layer (ascending),
 * used by tokens[i] of a chunk of n_tok tokens: cpu[i] = 1 where the
 * expert is missing from the GPU cache and is to be computed on the CPU
 * (gpu_miss_decide with the cache's policy and measured H2D rate). */
void gpu_cache_plan(struct cuda_model *cm, uint32_t layer, const int32_t *ids,
                    const int32_t *tokens, int n, int n_tok, uint8_t *cpu);
/* Records a CPU expert computation (statistics and the cost model). */
void gpu_cache_note_cpu(struct cuda_model *cm, double seconds, uint64_t bytes, int tokens);
/* Lookahead: uploads those of experts ids[0..n) of layer that are in the
 * host RAM cache but not the GPU cache into unpinned slots (at most half
 * the slots), on the copy stream. Never blocks on a read, never fails (a
 * failed copy just forgets the slot). */
void gpu_cache_prefetch(struct cuda_model *cm, uint32_t layer, const int32_t *ids, int n);

/* Streaming MoE of layer l for n tokens (moe_stream_cuda.cu): routing done
 * (cc->topk_ids, cc->topk_w, cc->xb), adds the routed experts' weighted sum
 * into cc->x. */
int moe_streaming_cuda(struct cuda_model *cm, struct cuda_ctx *cc, struct sl_context *ctx,
                       uint32_t l, int n);
/* The cache's counters into the gpu_* fields of *out (cuda_model_stats). */
void gpu_cache_stats(const struct gpu_cache *gc, struct sl_stats *out);
/* Frees cc->sx (NULL is a no-op). */
void stream_ctx_free(struct cuda_ctx *cc);

#endif /* SL_CUDA_INTERNAL_CUH */
