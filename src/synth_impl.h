/*
 * synth_impl.h — internals shared by the synthetic model generator's
 * files: synth.c (PRNG, routing simulation, skew fit, the qwen3_moe layout
 * and the write loop), synth_presets.c (presets and synth_check) and
 * synth_hybrid.c (the qwen3_5_moe hybrid layout: presets, checks and the
 * dense tensors of one layer).
 *
 * What it is not: an API for anything else; include synth.h for that.
 * Invariant: every tensor written through these functions is a pure
 * function of (params seed, tensor name, row), as synth.h promises.
 */
#ifndef SL_SYNTH_IMPL_H
#define SL_SYNTH_IMPL_H

#include "synth.h"

struct sl_writer;

/* Largest top-k (n_experts_used) the generator handles: synth_check rejects
 * more, and route_count (synth.c) keeps this many candidates per token. */
#define SYNTH_MAX_TOPK 64

/* The state of one synth_write call. */
struct synth_state {
    const struct synth_params *p;
    struct sl_config c;                /* resolved (n_vocab, eos) */
    struct sl_writer *w;
    int n_threads;
    struct synth_route_stats *stats;   /* (n_layers) */
    double *sigma;                     /* (n_layers) */
    float *target;                     /* (n_layers) */
    uint8_t *slot[3];                  /* expert batch: (batch, part bytes) */
    uint32_t batch;
};

/* Writes the matrix `name` [rows, cols] in dtype, every element
 * mean + std * N(0,1) (synth.c's generator, seeded by the name). */
int synth_put_matrix(struct synth_state *s, const char *name, int dtype,
                     uint64_t rows, uint64_t cols, float mean, float std);

/* Writes the f32 vector `name` [n], elements mean + std * N(0,1). */
int synth_put_vector(struct synth_state *s, const char *name, uint64_t n,
                     float mean, float std);

/* Writes layer l's router `name` [n_experts, hidden], fitted to the layer's
 * target Gini (synth.h), in the dense dtype; records the statistics. */
int synth_put_router(struct synth_state *s, uint32_t l, const char *name);

/* synth_hybrid.c. */

/* Fills p for the hybrid presets ("tiny-hybrid", "a17b", "a3b35"):
 * returns 1 and sets *layers if name is one of them, 0 otherwise. */
int synth_hybrid_preset(const char *name, struct synth_params *p,
                        uint32_t *layers);

/* Space-separated names of the hybrid presets. */
#define SYNTH_HYBRID_PRESETS "tiny-hybrid a17b a3b35"

/* Layer kinds of a hybrid config with n_layers set: layer i is full
 * attention iff (i + 1) % 4 == 0 (full_attention_interval 4, as the
 * released Qwen3.5 / Qwen3-Next models), every layer MoE. */
void synth_hybrid_set_layers(struct sl_config *c);

/* The hybrid-specific checks of synth_check (c's common fields already
 * checked): linear-attention sizes, rotary dims, shared expert, dtypes
 * that fit the row lengths. SL_ERR_ARG naming the field. */
int synth_hybrid_check(const struct sl_config *c, int dense_dtype);

/* Writes the dense tensors of hybrid layer l (norms, Gated DeltaNet or
 * gated attention, router, shared expert), the names model.c's
 * bind_layer_hybrid binds. */
int synth_hybrid_write_layer(struct synth_state *s, uint32_t l);

#endif /* SL_SYNTH_IMPL_H */
