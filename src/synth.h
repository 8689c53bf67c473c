/*
 * synth.h — the synthetic model generator: writes a qwen3_moe or a
 * qwen3_5_moe (text: hybrid Gated DeltaNet + gated attention, shared expert;
 * src/synth_hybrid.c) .sluice file of any layer shape and number of layers,
 * with seeded random weights and a configurable skew of expert usage,
 * without any checkpoint.
 *
 * What it is: a benchmark and test tool (the demo model shipped by `make`,
 * the a3b-* benchmark scenarios, tiny models for tests). What it is not: a
 * trained model; its text is noise. Its logits are finite and
 * non-degenerate (matrices are drawn with std 1/sqrt(fan_in), so activations
 * stay O(1) through any number of layers).
 *
 * Invariants:
 *   - Deterministic: the same params give byte-identical files, whatever the
 *     number of threads. Every tensor row is drawn from its own PRNG stream,
 *     seeded from (seed, tensor name, row), so generation order and thread
 *     split do not matter.
 *   - Bounded memory: dense tensors stream to the file in row blocks of at
 *     most 8 MiB, experts in batches of at most 64 MiB; the largest whole
 *     buffers are one router in f32 (n_experts x hidden) and its fit's
 *     simulated logits, so peak memory does not grow with the vocabulary
 *     nor with the number of layers.
 *   - Routing skew (docs/synth.md): router row e of layer l is a random unit
 *     vector scaled by s_e = exp(sigma_l * z_e), z_e a permuted normal
 *     quantile; sigma_l is fitted by bisection so that routing Gaussian
 *     unit-RMS inputs (softmax + top-k, as qwen3_moe) gives the layer's target
 *     Gini of usage counts. skew 0 gives s_e = 1 (uniform usage).
 */
#ifndef SL_SYNTH_H
#define SL_SYNTH_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

/* Highest median Gini accepted for skew. Each layer's target is further
 * capped at 95 % of the Gini that row scaling can reach for the layer's
 * expert count (about 0.44 for 16 experts top-4, 0.86 for 128 top-8). */
#define SYNTH_MAX_SKEW 0.9f

struct synth_params {
    struct sl_config cfg;       /* shape (arch qwen3_moe, or qwen3_5_moe
                                   with model_type "qwen3_5_moe_text");
                                   cfg.n_vocab == 0 means "the
                                   tokenizer's size" (needs tokenizer_path);
                                   cfg.n_eos == 0 with a tokenizer takes the
                                   id of "<|endoftext|>" if present */
    int expert_dtype;           /* enum sl_dtype of expert matrices */
    int dense_dtype;            /* enum sl_dtype of dense matrices (norms are
                                   always f32) */
    uint64_t seed;
    float skew;                 /* median target Gini of expert usage per
                                   layer, 0 = uniform; layers vary around it
                                   (x0.5 .. x1.27, as the Qwen3.5 profile) */
    const char *tokenizer_path; /* optional tokenizer.json to embed
                                   (borrowed); NULL = none */
    const char *preset;         /* name recorded in the manifest (borrowed,
                                   may be NULL) */
    int progress;               /* nonzero: per-layer routing statistics and
                                   progress on stderr */
    int n_threads;              /* 0 = online CPUs; output does not depend
                                   on it */
};

/* Routing statistics of one layer (usage counts of top-k selections). */
struct synth_route_stats {
    double gini;                /* Gini coefficient of the counts */
    double top20_share;         /* share of selections of the 20 most used
                                   experts (all if fewer than 20) */
    uint32_t n_cover50;         /* fewest experts covering >= 50 % of the
                                   selections */
};

/* What synth_write produced. */
struct synth_report {
    uint64_t file_bytes;
    uint64_t expert_bytes;      /* sum of expert records */
    uint64_t dense_bytes;       /* sum of dense tensors */
    double seconds;
    double gini_min, gini_median, gini_max; /* achieved, over MoE layers */
    uint32_t n_capped;          /* layers whose target was above 95 % of the
                                   reachable Gini and was lowered to it */
};

/* Fills *p with the named preset ("demo", "tiny", "a3b-cpu", "a3b-gpu";
 * hybrid qwen3_5_moe: "tiny-hybrid", "a17b", "a3b35"): shape, dtypes, seed,
 * skew. Returns SL_ERR_ARG naming the known presets for an unknown name. */
int synth_preset(const char *name, struct synth_params *p);

/* Space-separated list of preset names (for usage messages). */
const char *synth_preset_names(void);

/* Sets cfg.n_layers and marks every layer as MoE; for a hybrid config also
 * the layer kinds (layer i full attention iff (i + 1) % 4 == 0, the rest
 * Gated DeltaNet). SL_ERR_ARG if n_layers is 0 or above SL_MAX_LAYERS. */
int synth_set_layers(struct synth_params *p, uint32_t n_layers);

/* Checks p for everything that can be checked without writing: shape,
 * top-k <= experts, dtypes that fit the row lengths, skew range, the
 * tokenizer (readable, parseable, vocabulary <= n_vocab). Fills *resolved
 * with p's config after resolving n_vocab / eos from the tokenizer.
 * Returns SL_OK or SL_ERR_ARG / SL_ERR_IO / SL_ERR_CONFIG with a message. */
int synth_check(const struct synth_params *p, struct sl_config *resolved);

/* Writes the model to out_path (replacing it). On failure no partial file
 * is left and the message says what failed. report may be NULL. */
int synth_write(const struct synth_params *p, const char *out_path,
                struct synth_report *report);

/* The requested target Gini of layer `layer` for params p: p->skew times a
 * per-layer factor in [0.5, 1.27], stratified over the layers in a seeded
 * order so that its median over layers is 1 (the Qwen3.5 profile's
 * 0.20..0.52 around 0.41). 0 when p->skew is 0 or layer is out of range.
 * The fit caps it at 95 % of the reachable Gini (see synth_report). */
float synth_layer_target(const struct synth_params *p, uint32_t layer);

/* The simulation used for fitting, exposed for tests: routes n_tokens
 * Gaussian inputs (each element N(0,1): unit RMS), seeded by seed, through
 * router (n_experts rows of hidden floats, row-major) like qwen3_moe (logits,
 * softmax, top-k with ties to the lower index) and fills counts
 * (n_experts, may be NULL) and *st. Returns SL_ERR_ARG for k == 0 or
 * k > n_experts, SL_ERR_NOMEM. */
int synth_route_sim(const float *router, uint32_t n_experts, uint32_t hidden,
                    uint32_t k, uint32_t n_tokens, uint64_t seed,
                    uint64_t *counts, struct synth_route_stats *st);

/* Gini coefficient, top-20 share and 50 % cover of n usage counts. */
void synth_usage_stats(const uint64_t *counts, uint32_t n,
                       struct synth_route_stats *st);

#endif /* SL_SYNTH_H */
