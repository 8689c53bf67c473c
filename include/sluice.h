/*
 * sluice.h — the public API of sluice, an engine that runs Mixture-of-Experts
 * language models larger than memory by streaming the routed experts.
 *
 * This is the only public header. Every handle is opaque; every function
 * returns a status (enum sl_status) and, on failure, leaves a message with
 * context in a per-thread buffer read by sl_errmsg(). The library never exits
 * or aborts on bad input.
 *
 * Usage:
 *
 *     struct sl_model *model;
 *     struct sl_model_params mp = sl_model_default_params();
 *     if (sl_model_open("model.sluice", &mp, &model) != SL_OK) {
 *         fprintf(stderr, "%s\n", sl_errmsg());
 *         return 1;
 *     }
 *     struct sl_context *ctx;
 *     struct sl_context_params cp = sl_context_default_params();
 *     sl_context_create(model, &cp, &ctx);
 *     int32_t toks[3] = {1, 2, 3};
 *     sl_eval(ctx, toks, 3, NULL);          // logits of the last token
 *     const float *logits = sl_logits(ctx); // n_vocab floats
 *     sl_context_free(ctx);
 *     sl_model_close(model);
 *
 * Thread safety: a model may be shared by several contexts on different
 * threads once opened; a context is used by one thread at a time.
 */
#ifndef SLUICE_H
#define SLUICE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SLUICE_VERSION_MAJOR 0
#define SLUICE_VERSION_MINOR 1
#define SLUICE_VERSION_PATCH 0
#define SLUICE_VERSION_STRING "0.1.0"

/* ---- status and errors ------------------------------------------------- */

enum sl_status {
    SL_OK = 0,
    SL_ERR_ARG = 1,         /* invalid argument from the caller */
    SL_ERR_IO = 2,          /* open/read/write/mmap failed */
    SL_ERR_FORMAT = 3,      /* corrupt, truncated or inconsistent file */
    SL_ERR_UNSUPPORTED = 4, /* valid input that sluice does not handle */
    SL_ERR_NOMEM = 5,       /* allocation failed */
    SL_ERR_CONFIG = 6,      /* config.json missing, inconsistent or invalid */
    SL_ERR_RANGE = 7,       /* token id, position or size out of range */
    SL_ERR_INTERNAL = 8,    /* a bug in sluice */
};

/* The message of the last failure on the calling thread ("" if none). Valid
 * until the next failing call on this thread. */
const char *sl_errmsg(void);

/* A short constant name for a status ("format error"). */
const char *sl_status_str(int status);

/* Log callback: level 0 = error, 1 = warning, 2 = info, 3 = debug. The
 * default writes warnings and errors to stderr. Pass NULL to silence. Not
 * thread safe: set it once at start-up. */
typedef void (*sl_log_fn)(int level, const char *msg, void *user);
void sl_set_log(sl_log_fn fn, void *user, int max_level);

/* The compute backend in words ("cpu avx512"). Constant string. */
const char *sl_backend_desc(void);
/* The backend a model runs on: sl_backend_desc() on the CPU, else the GPU,
 * its memory and the GPU cache ("cuda NVIDIA H100 80GB HBM3 (sm_90, 79.1
 * GiB), gpu cache 6144 slots x 3.0 MiB"). Borrowed, model lifetime. */
struct sl_model;
const char *sl_model_backend_desc(const struct sl_model *model);
/* The limits a GPU model runs against, measured now (about 0.1 s): device
 * memory bandwidth (GB/s read + written, a device-to-device copy) and pinned
 * host-to-device bandwidth (GB/s). SL_ERR_UNSUPPORTED on a CPU model. */
int sl_model_measure_device_bandwidth(struct sl_model *model, double *mem_gbs,
                                      double *h2d_gbs);

/* ---- data types of stored tensors ------------------------------------- */

enum sl_dtype {
    SL_DTYPE_F32 = 0,
    SL_DTYPE_F16 = 1,
    SL_DTYPE_BF16 = 2,
    SL_DTYPE_Q8 = 3, /* blocks of 32 int8 + f16 scale: 8.5 bits/weight */
    SL_DTYPE_Q4 = 4, /* blocks of 32 uint4 + f16 scale + f16 min: 5.0 b/w */
    SL_DTYPE_COUNT
};

/* "f32", "f16", "bf16", "q8", "q4"; "?" for an unknown value. */
const char *sl_dtype_name(int dtype);

/* ---- conversion from a HuggingFace checkpoint ------------------------- */

struct sl_convert_params {
    int expert_dtype;       /* SL_DTYPE_BF16 (default), _Q8 or _Q4 */
    int dense_dtype;        /* SL_DTYPE_BF16 (default), _Q8 or _F32 */
    int progress;           /* nonzero: progress bar on stderr */
};
struct sl_convert_params sl_convert_default_params(void);

/* Converts the checkpoint in hf_dir (config.json, *.safetensors or a sharded
 * index, tokenizer.json, tokenizer_config.json, generation_config.json) to
 * the single model file out_path. Holds at most one dense tensor or one
 * expert in memory. Output is deterministic. On failure the partial output
 * is removed. */
int sl_convert(const char *hf_dir, const char *out_path,
               const struct sl_convert_params *params);

/* ---- model ------------------------------------------------------------- */

struct sl_model;

/* Routed-expert residency (docs/streaming.md). ram_cache_bytes sentinels: */
#define SL_RAM_CACHE_DEFAULT 0ull       /* derived from available memory */
#define SL_RAM_CACHE_ALL UINT64_MAX     /* read every expert once, keep it */

enum sl_io_mode {
    SL_IO_DEFAULT = 0,      /* direct where the filesystem allows, else buffered */
    SL_IO_DIRECT = 1,       /* O_DIRECT reads into the cache (no page cache) */
    SL_IO_BUFFERED = 2,     /* ordinary reads into the cache */
    SL_IO_MMAP = 3,         /* no cache: experts served from the file mapping,
                               the kernel's page cache decides residency */
};

enum sl_cache_policy {
    SL_CACHE_DEFAULT = 0,   /* = SL_CACHE_LFU */
    SL_CACHE_LRU = 1,       /* least recently used */
    SL_CACHE_LFU = 2,       /* least frequently used, counts halved periodically
                               (ageing), ties to the least recent */
};

enum sl_prefetch_mode {
    SL_PREFETCH_AUTO = 0,   /* router lookahead, paused while it does not pay */
    SL_PREFETCH_OFF = -1,
    SL_PREFETCH_ALWAYS = 1, /* lookahead, never paused */
};

/* Where the forward pass runs. */
enum sl_device {
    SL_DEVICE_CPU = 0,      /* the CPU backend (default) */
    SL_DEVICE_CUDA = 1,     /* an NVIDIA GPU: sl_model_open fails
                               (SL_ERR_UNSUPPORTED) without one */
    SL_DEVICE_AUTO = 2,     /* CUDA when a GPU and a CUDA build are there,
                               else the CPU with a warning */
};
#define SL_GPU_CACHE_AUTO 0ull  /* every expert if they fit in free device
                                   memory, else 90% of what remains after the
                                   dense weights and a reserve */

/* SL_DEVICE_CUDA, an expert missing from the GPU cache (docs/cuda.md): */
enum sl_gpu_miss_policy {
    SL_GPU_MISS_UPLOAD = 0, /* (default) always upload: logits bit-identical
                               whatever the GPU cache size */
    SL_GPU_MISS_AUTO = 1,   /* per miss, from measured numbers: upload it, or
                               (decode, batches <= 4, the record in host RAM)
                               compute it on the CPU where the weights are,
                               whichever finishes first while the GPU runs
                               the resident experts; logits then depend on
                               the timings (cosine >= 0.9999, not bit-exact) */
    SL_GPU_MISS_CPU = 2,    /* always compute misses on the CPU */
};

struct sl_model_params {
    int n_threads;          /* compute threads; 0 = number of online CPUs */
    int use_mlock;          /* nonzero: mlock the dense tensors */
    int verify;             /* nonzero: hash every section on open (slow) */
    uint64_t ram_cache_bytes; /* expert cache budget in bytes, or a
                               SL_RAM_CACHE_* sentinel; a hard limit on
                               cached expert bytes */
    int io_mode;            /* enum sl_io_mode */
    int cache_policy;       /* enum sl_cache_policy */
    int prefetch;           /* enum sl_prefetch_mode */
    int io_threads;         /* reads in flight (io_uring depth or pread
                               threads); 0 = 8 */
    int no_uring;           /* nonzero: pread threads even where io_uring works */
    const char *expert_profile; /* usage profile: pins the most used experts
                               at open if the file exists, written back at
                               close; NULL = none (borrowed during open) */
    int device;             /* enum sl_device (docs/cuda.md) */
    uint64_t gpu_cache_bytes; /* SL_DEVICE_CUDA: GPU expert cache budget in
                               bytes (a hard limit on expert bytes in device
                               memory), or SL_GPU_CACHE_AUTO / SL_RAM_CACHE_ALL
                               (every expert resident) */
    int gpu_miss_policy;    /* enum sl_gpu_miss_policy (default UPLOAD) */
    /* Expert parallelism over NCCL (docs/multi_gpu.md): one process per
     * GPU, each with SL_DEVICE_CUDA and the same model, profile and
     * prompts. Every rank holds the dense weights and the experts it owns;
     * each MoE layer's partial outputs are summed with an all-reduce, so
     * every rank gets the same logits. nccl_world <= 1: one GPU, no NCCL. */
    int nccl_rank;          /* this process's rank in [0, nccl_world) */
    int nccl_world;         /* number of ranks (0 or 1 = off) */
    const char *nccl_id_path; /* the bootstrap file: rank 0 writes NCCL's
                               unique id there (atomically) and removes it
                               once every rank has joined; the others wait
                               for it. Required with nccl_world > 1;
                               borrowed during open */
    double nccl_timeout_s;  /* seconds without progress (bootstrap, an
                               all-reduce) before the model fails with an
                               error naming the stalled step; 0 = 60 */
};
struct sl_model_params sl_model_default_params(void);

/* Opens and validates a .sluice file. On success *out owns the mapping, the
 * weights and the tokenizer until sl_model_close. */
int sl_model_open(const char *path, const struct sl_model_params *params,
                  struct sl_model **out);
void sl_model_close(struct sl_model *model); /* NULL is a no-op */

int32_t sl_model_n_vocab(const struct sl_model *model);
int32_t sl_model_n_ctx_train(const struct sl_model *model);
/* A one-line description ("qwen3_moe, 48 layers, 128 experts top-8, ...").
 * Borrowed; valid while the model is open. */
const char *sl_model_desc(const struct sl_model *model);
/* Bytes of all routed-expert records and of everything else. */
uint64_t sl_model_expert_bytes(const struct sl_model *model);
uint64_t sl_model_dense_bytes(const struct sl_model *model);
/* Dense bytes a decode step reads: every dense tensor except the embedding
 * table, plus one embedding row (the whole table when it is tied to the
 * output head). Routed experts come on top (sl_stats.expert_bytes_read). */
uint64_t sl_model_active_dense_bytes(const struct sl_model *model);
/* Number of end-of-generation ids and the ids (borrowed, model lifetime). */
size_t sl_model_eos_ids(const struct sl_model *model, const int32_t **ids);

/* Writes a human-readable description of the file (manifest, sections,
 * tensors, expert records) to the stream (a FILE *). */
int sl_model_inspect(const char *path, void *file_stream);

/* ---- tokenizer --------------------------------------------------------- */

struct sl_tokenizer;

/* Loads a HuggingFace tokenizer.json (byte-level BPE). */
int sl_tokenizer_load(const char *path, struct sl_tokenizer **out);
void sl_tokenizer_free(struct sl_tokenizer *tok); /* NULL is a no-op */
/* The model's tokenizer; borrowed, valid while the model is open. */
const struct sl_tokenizer *sl_model_tokenizer(const struct sl_model *model);

int32_t sl_tokenizer_n_vocab(const struct sl_tokenizer *tok);

/* Encodes text like HF encode(text, add_special_tokens=False): special and
 * added tokens written in the text are recognised, none are added. On
 * success *ids is malloc'ed (caller frees) and holds *n_ids ids. */
int sl_tokenize(const struct sl_tokenizer *tok, const char *text, size_t len,
                int32_t **ids, size_t *n_ids);

/* The bytes of one token (special tokens render as their text). Borrowed,
 * tokenizer lifetime. Returns NULL for an out-of-range id. */
const char *sl_token_bytes(const struct sl_tokenizer *tok, int32_t id,
                           size_t *len);

/* Looks up the id of a token's exact text (e.g. "<|im_end|>"); -1 if none. */
int32_t sl_token_id(const struct sl_tokenizer *tok, const char *text);

/* Incremental UTF-8-safe detokenizer for streaming: feed ids one at a time,
 * receive only complete UTF-8 sequences. */
struct sl_detok;
int sl_detok_create(const struct sl_tokenizer *tok, struct sl_detok **out);
void sl_detok_free(struct sl_detok *d);
/* Appends the text of id; *out points to the bytes now complete (borrowed,
 * valid until the next call). Incomplete trailing UTF-8 is held back. */
int sl_detok_push(struct sl_detok *d, int32_t id, const char **out,
                  size_t *out_len);
/* Returns whatever is held back (invalid bytes as U+FFFD). */
int sl_detok_flush(struct sl_detok *d, const char **out, size_t *out_len);

/* ---- context and evaluation ------------------------------------------- */

struct sl_context;

struct sl_context_params {
    uint32_t n_ctx;         /* KV positions; 0 = min(model's, 4096) */
    uint32_t n_batch;       /* tokens per forward chunk of a prompt (each
                               weight and expert is read once per chunk);
                               0 = 64 */
    int n_threads;          /* 0 = the model's */
    uint32_t state_checkpoint_interval; /* Gated DeltaNet models
                               (qwen3_next, qwen3_5_moe): keep a copy of the
                               recurrent state about every this many
                               positions so that sl_context_truncate
                               recomputes from the nearest one; each copy
                               costs the state's size (docs/api.md). 0 = 256;
                               UINT32_MAX = none (truncation recomputes from
                               position 0). Ignored by other models. */
    uint32_t n_seq_max;     /* independent sequences the context holds (each
                               with its own n_ctx positions of cache and
                               recurrent state); 0 = 1. sl_eval and the
                               sl_context_* / sl_state_* calls act on
                               sequence 0; sl_decode_batch mixes them. */
};
struct sl_context_params sl_context_default_params(void);

/* Creates a context over the model (KV cache, scratch). The model must
 * outlive the context. */
int sl_context_create(struct sl_model *model,
                      const struct sl_context_params *params,
                      struct sl_context **out);
void sl_context_free(struct sl_context *ctx); /* NULL is a no-op */

/* Evaluates n tokens at the next positions. If logits_all is not NULL it
 * receives n * n_vocab floats (row i = logits after token i); the last row is
 * always available from sl_logits. Fails with SL_ERR_RANGE for an id outside
 * the vocabulary or when the context is full; the context is then unchanged. */
int sl_eval(struct sl_context *ctx, const int32_t *tokens, size_t n,
            float *logits_all);

/* Logits after the last evaluated token (n_vocab floats), borrowed until the
 * next sl_eval. NULL before any evaluation. */
const float *sl_logits(const struct sl_context *ctx);

/* Number of positions evaluated so far; sl_context_reset forgets them. */
uint32_t sl_context_n_past(const struct sl_context *ctx);
void sl_context_reset(struct sl_context *ctx);

/* Counters since the context was created. */
struct sl_stats {
    uint64_t n_prompt_tokens, n_decode_tokens;
    double prompt_seconds, decode_seconds;
    uint64_t expert_bytes_read;  /* routed-expert record bytes touched */
    uint64_t expert_loads;       /* (layer, expert) records used */
    /* The model's expert store, shared by all contexts of the model: totals
     * since open or sl_model_reset_expert_stats (docs/streaming.md). */
    uint64_t cache_hits;         /* uses found resident */
    uint64_t cache_misses;       /* uses that had to wait for a demand read */
    uint64_t prefetch_hits;      /* uses resident or in flight thanks to a
                                    prefetch (not counted as hits or misses) */
    uint64_t cache_bytes_read;   /* bytes read from the file (demand + prefetch) */
    double io_busy_seconds;      /* wall time with at least one read in flight */
    double io_stall_seconds;     /* time the forward pass waited for reads */
    uint64_t prefetch_issued;    /* prefetch reads started */
    uint64_t prefetch_useful;    /* of those, used before eviction */
    uint64_t prefetch_wasted_bytes; /* prefetched bytes evicted unused */
    uint64_t lookahead_hits;     /* experts used that the lookahead predicted */
    uint64_t lookahead_total;    /* experts used in layers with a prediction */
    uint64_t cache_evictions;
    uint64_t cache_budget_bytes; /* the budget (hard limit) */
    uint64_t cache_peak_bytes;   /* most expert bytes ever cached at once */
    /* Wall seconds of this context's forward passes by stage (sl_bench's
     * "ms per token by stage"); the rest of prompt/decode_seconds is embed,
     * dense MLP layers, final norm and lm_head. */
    double t_attention;          /* norms, q/k/v, rope, attention, o_proj */
    double t_router;             /* router logits, top-k, grouping, requests */
    double t_experts;            /* routed expert compute and weighted sum */
    double t_io_wait;            /* inside expert_store_acquire* (waiting for
                                    reads, or a resident expert's lookup) */
    /* SL_DEVICE_CUDA: the GPU expert cache (model-wide; zero on the CPU). */
    uint64_t gpu_hits;           /* uses found in device memory */
    uint64_t gpu_uploads;        /* uses copied host -> device first */
    uint64_t gpu_h2d_bytes;      /* bytes copied host -> device (experts) */
    double gpu_h2d_seconds;      /* device time of those copies */
    uint64_t gpu_cache_bytes;    /* the GPU cache budget (slots x record) */
    uint64_t gpu_cpu_experts;    /* GPU misses computed on the CPU instead
                                    (gpu_miss_policy); hits + uploads + these
                                    = the (layer, expert) uses */
    double gpu_cpu_seconds;      /* wall time of those CPU computations */
    uint64_t gpu_staged_uploads; /* uploads (demand and prefetch) through the
                                    pinned staging copy rather than straight
                                    from the registered host RAM cache */
    uint64_t gpu_prefetch_uploads; /* lookahead uploads into the GPU cache */
    uint64_t gpu_prefetch_useful;  /* of those, used before eviction */
    uint64_t gpu_prefetch_wasted;  /* of those, evicted unused */
    /* SL_DEVICE_CUDA streaming decode steps (this context; GPU events,
     * SLUICE_CUDA_STREAM_TIMING=0 turns them off): GPU time from the first
     * MoE layer's routed experts to the last one's, over that many layer
     * intervals (per-layer time = seconds / intervals); GPU time the compute
     * stream waited for expert uploads; GPU time idle while the host got
     * the router ids and planned the layer (the per-layer round trip). */
    double gpu_layer_seconds;
    uint64_t gpu_layer_intervals;
    double gpu_upload_wait_seconds;
    double gpu_roundtrip_seconds;
    uint64_t nccl_allreduces;    /* multi-GPU: MoE all-reduces run */
    uint64_t nccl_bytes;         /* their payload (floats x 4) per rank */
    double nccl_seconds;         /* device time of the timed ones: eager
                                    decode steps' (one token); neither
                                    prompt chunks nor decode graphs */
    uint64_t nccl_timed;         /* how many of them were timed */
};
void sl_context_stats(const struct sl_context *ctx, struct sl_stats *out);

/* Per-layer expert store counters (model-wide, like the fields above). */
struct sl_expert_layer_stats {
    uint64_t hits, misses, prefetch_hits;
    uint64_t bytes_read;
    double stall_seconds;
    uint64_t lookahead_hits, lookahead_total;
};
/* Fills *out for layer; SL_ERR_RANGE if the layer has no routed experts. */
int sl_model_expert_layer_stats(const struct sl_model *model, uint32_t layer,
                                struct sl_expert_layer_stats *out);
/* Zeroes the store's counters (not its contents). Not thread safe against
 * a concurrent sl_eval on the same model. */
void sl_model_reset_expert_stats(struct sl_model *model);
/* One line: cache budget and slots, policy, I/O mode and engine, prefetch
 * state. Borrowed; valid until the next call on this model. */
const char *sl_model_expert_cache_desc(const struct sl_model *model);
/* Number of layers (dense and MoE). */
int32_t sl_model_n_layers(const struct sl_model *model);
/* Parses a size: "512M", "4G", "1.5G", "65536", "64K", "all" (->
 * SL_RAM_CACHE_ALL). Suffixes K/M/G/T are binary (KiB...). SL_ERR_ARG with a
 * message for anything else. */
int sl_parse_size(const char *text, uint64_t *out);

/* ---- quality: perplexity, divergence from a reference ------------------ */

struct sl_quality {
    uint64_t n_tokens;      /* tokens evaluated */
    uint64_t n_scored;      /* predictions scored */
    double nll;             /* sum of -ln p(token) over the scored tokens */
    double ppl;             /* exp(nll / n_scored) */
    /* With a reference context (all zero without one): */
    double ref_nll, ref_ppl;/* the reference's own nll and perplexity */
    double kl_mean;         /* mean KL(ref || model) in nats per position */
    double kl_max;          /* largest KL(ref || model) at one position */
    double top1_agree;      /* fraction of positions whose argmax agrees */
};

/* Perplexity of tokens[0..n) (docs/quality.md): the tokens are cut into
 * non-overlapping windows of `window` tokens (the last one shorter; a lone
 * last token is skipped); each window is evaluated from an empty context
 * and every token of it but the first is scored. With ref (a context of
 * another model with the same vocabulary, e.g. the bf16 conversion) it
 * evaluates the same windows there and compares the next-token
 * distributions at every scored position. Both contexts need n_ctx >=
 * window, and are reset on entry and on return. n >= 2, window >= 2. */
int sl_perplexity(struct sl_context *ctx, struct sl_context *ref,
                  const int32_t *tokens, size_t n, uint32_t window,
                  struct sl_quality *out);

/* ---- sampling ----------------------------------------------------------- */

struct sl_sampler_params {
    float temperature;      /* 0 = greedy (default 0.8) */
    int32_t top_k;          /* 0 = off (default 40) */
    float top_p;            /* 1 = off (default 0.95) */
    uint64_t seed;          /* default 0x5eed */
};
struct sl_sampler_params sl_sampler_default_params(void);

struct sl_sampler;
int sl_sampler_create(const struct sl_sampler_params *params, int32_t n_vocab,
                      struct sl_sampler **out);
void sl_sampler_free(struct sl_sampler *s);
/* Picks the next id from logits (n_vocab floats, not modified). Greedy
 * ties go to the lower id. */
int32_t sl_sample(struct sl_sampler *s, const float *logits);


/* ---- chat templates ------------------------------------------------------ */

/* The model's chat template source (tokenizer_config.json "chat_template",
 * stored in the file's tokenizer-config section). On success *out is a
 * malloc'ed NUL-terminated copy (caller frees with free()); SL_ERR_UNSUPPORTED
 * when the file has no chat template. */
int sl_model_chat_template(const struct sl_model *model, char **out);

/* A parsed chat template (src/chat_template.h: a strict Jinja2 subset with
 * transformers' settings). Immutable once created: sl_chat_render may run
 * on several threads at once. */
struct sl_chat;
/* Parses the model's template (bos_token / eos_token come from the file).
 * SL_ERR_UNSUPPORTED when there is none or it uses a construct outside the
 * subset (the message names it and its line). */
int sl_chat_create(const struct sl_model *model, struct sl_chat **out);
/* The same from template source text; bos/eos may be NULL. */
int sl_chat_create_from_source(const char *source, const char *bos_token,
                               const char *eos_token, struct sl_chat **out);
void sl_chat_free(struct sl_chat *chat); /* NULL is a no-op */
/* Renders messages_json (a JSON array of {"role", "content", ...}) like
 * transformers' apply_chat_template(tokenize=False). extra_json is NULL or
 * a JSON object of further template variables ({"enable_thinking": false,
 * "tools": [...]}). On success *out is malloc'ed text (caller frees with
 * free()). SL_ERR_ARG for malformed JSON or when the template raises. */
int sl_chat_render(const struct sl_chat *chat, const char *messages_json,
                   int add_generation_prompt, const char *extra_json,
                   char **out);

/* ---- context memory and saved state (docs/api.md) ---------------------- */

/* Forgets positions [p0, n_past): afterwards n_past = p0 and the context
 * is as if it had only seen its first p0 tokens. Exact for every layer
 * type: attention and MLA caches are position-indexed; a Gated DeltaNet
 * model restores the nearest recurrent-state checkpoint <= p0 and
 * re-evaluates the kept tokens after it (state_checkpoint_interval).
 * sl_logits is NULL afterwards. SL_ERR_RANGE when p0 > n_past. If the
 * re-evaluation fails the context is reset (n_past 0). */
int sl_context_truncate(struct sl_context *ctx, uint32_t p0);

/* Removes positions [p0, p1) of the sequence: the tokens after p1 move down
 * to p0 onwards. RoPE positions of those tokens change, so they are
 * re-evaluated (costs their compute); sl_logits is then the logits of the
 * last token. p1 > n_past is clamped to n_past. SL_ERR_RANGE when p0 > p1. */
int sl_context_remove(struct sl_context *ctx, uint32_t p0, uint32_t p1);

/* The largest position evaluated (n_past - 1), or -1 when empty. */
int64_t sl_context_pos_max(const struct sl_context *ctx);

/* The tokens evaluated so far (*n = n_past of them), borrowed until the
 * next call that changes the context. */
const int32_t *sl_context_tokens(const struct sl_context *ctx, uint32_t *n);

/* Makes dst (same model, n_ctx >= src's n_past) hold src's sequence: its
 * tokens, caches, recurrent state and logits (fork a prefix, then
 * sl_context_truncate the copy). */
int sl_context_copy(struct sl_context *dst, const struct sl_context *src);

/* Saved state: a versioned, checksummed image of the context's sequence
 * (tokens, KV or latent caches of positions < n_past, recurrent state and
 * its checkpoints, last logits) tagged with the model's identity.
 * Loading refuses another model, another format version, a corrupt or a
 * truncated image (SL_ERR_FORMAT, SL_ERR_ARG for the model, SL_ERR_RANGE
 * when n_past exceeds the context's n_ctx) and leaves the context
 * unchanged then. SL_ERR_UNSUPPORTED on the CUDA device. */
int sl_state_size(const struct sl_context *ctx, size_t *size);
int sl_state_save_buffer(const struct sl_context *ctx, void *buf, size_t cap,
                         size_t *written);
int sl_state_load_buffer(struct sl_context *ctx, const void *buf, size_t len);
int sl_state_save(const struct sl_context *ctx, const char *path);
int sl_state_load(struct sl_context *ctx, const char *path);
/* The model's identity as saved states record it: a hash of the file's
 * manifest and tensor table. */
uint64_t sl_model_identity(const struct sl_model *model);

/* ---- several sequences in one context (docs/api.md) --------------------- */

/* A mixed batch: token i goes to sequence seq_ids[i] (0 <= id < n_seq_max)
 * at that sequence's next position (tokens of one sequence in batch order).
 * n <= the context's n_batch. */
struct sl_batch {
    size_t n;
    const int32_t *tokens;      /* (n) */
    const int32_t *seq_ids;     /* (n) */
    float *logits;              /* NULL, or (n, n_vocab): row i = logits
                                   after token i */
};

/* Evaluates the batch in one forward pass: dense layers, the attention
 * projections (q/k/v, o) and the MoE stage run over all n tokens together
 * (each weight and each routed expert is read once for the batch); RoPE, the
 * KV append and attention run per sequence on its own cache, and MLA and
 * Gated DeltaNet layers run whole per sequence. On the CPU each sequence's
 * logits are bit-identical to evaluating its tokens alone with sl_eval in
 * the same chunks. Validates
 * everything first (SL_ERR_RANGE: bad id, full sequence, n > n_batch); if the
 * forward pass fails, the batch's sequences are rolled back (hybrid models:
 * cleared). With batch->logits, each sequence's last row also becomes its
 * own last logits (sl_logits for sequence 0); without, they are dropped.
 * SL_ERR_UNSUPPORTED on the CUDA device. */
int sl_decode_batch(struct sl_context *ctx, const struct sl_batch *batch);

/* Per-sequence memory: clear; keep positions [0, p0) (sl_context_truncate);
 * the largest position (-1 when empty); make dst a copy of src (fork). */
int sl_seq_clear(struct sl_context *ctx, int32_t seq);
int sl_seq_truncate(struct sl_context *ctx, int32_t seq, uint32_t p0);
int64_t sl_seq_pos_max(const struct sl_context *ctx, int32_t seq);
int sl_seq_copy(struct sl_context *ctx, int32_t src, int32_t dst);

#ifdef __cplusplus
}
#endif
#endif /* SLUICE_H */
