/*
 * model.c — opening a .sluice file as a model: validate the file (format.c),
 * parse the manifest (config.c), bind every dense tensor by its HF name to
 * its role with shape and dtype checked, load the embedded tokenizer, and
 * create the expert store.
 *
 * Not here: the forward pass (forward.c) and per-sequence state (context.c).
 * Invariant after sl_model_open succeeds: every struct weight points to
 * rows * quant_row_bytes(dtype, cols) readable bytes inside the mapping, and
 * every MoE layer has an expert table entry with the configured shapes.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#include "model.h"
#include "cuda/cuda.h"
#include "placement.h"
#include "cpu/ops_ext.h"
#include "quant.h"
#include "tokenizer.h"
#include "util.h"

struct sl_model_params sl_model_default_params(void) {
    struct sl_model_params p = {0};
    p.n_threads = 0;
    p.use_mlock = 0;
    p.verify = 0;
    p.ram_cache_bytes = SL_RAM_CACHE_DEFAULT;
    p.io_mode = SL_IO_DEFAULT;
    p.cache_policy = SL_CACHE_DEFAULT;
    p.prefetch = SL_PREFETCH_AUTO;
    p.io_threads = 0;
    p.no_uring = 0;
    p.expert_profile = NULL;
    p.device = SL_DEVICE_CPU;
    p.gpu_cache_bytes = SL_GPU_CACHE_AUTO;
    return p;
}

/* Finds name and checks it is a matrix of (rows, cols) in a matrix dtype. */
static int bind_matrix(struct sl_model *m, const char *name, uint64_t rows,
                       uint64_t cols, struct weight *w) {
    const struct sl_tensor_info *t = file_find_tensor(&m->file, name);
    if (!t) return sl_seterr(SL_ERR_FORMAT, "missing tensor %s", name);
    if (t->n_dims != 2 || t->dims[0] != rows || t->dims[1] != cols) {
        char got[96];
        int k = snprintf(got, sizeof got, "[");
        for (int i = 0; i < t->n_dims && k < 80; i++)
            k += snprintf(got + k, sizeof got - (size_t)k, "%s%llu", i ? ", " : "",
                          (unsigned long long)t->dims[i]);
        snprintf(got + k, sizeof got - (size_t)k, "]");
        return sl_seterr(SL_ERR_FORMAT, "tensor %s: expected [%llu, %llu], got %s",
                         name, (unsigned long long)rows,
                         (unsigned long long)cols, got);
    }
    if (quant_row_bytes(t->dtype, cols) * rows != t->size)
        return sl_seterr(SL_ERR_FORMAT, "tensor %s: %llu bytes do not match %s [%llu, %llu]",
                         name, (unsigned long long)t->size,
                         sl_dtype_name(t->dtype), (unsigned long long)rows,
                         (unsigned long long)cols);
    w->data = m->file.map + t->offset;
    w->dtype = t->dtype;
    w->rows = rows;
    w->cols = cols;
    return SL_OK;
}

/* Finds name and checks it is an f32 vector of n elements. optional: absent
 * gives *out = NULL and SL_OK. */
static int bind_vector(struct sl_model *m, const char *name, uint64_t n,
                       int optional, const float **out) {
    *out = NULL;
    const struct sl_tensor_info *t = file_find_tensor(&m->file, name);
    if (!t) {
        if (optional) return SL_OK;
        return sl_seterr(SL_ERR_FORMAT, "missing tensor %s", name);
    }
    if (t->n_dims != 1 || t->dims[0] != n || t->dtype != SL_DTYPE_F32)
        return sl_seterr(SL_ERR_FORMAT,
                         "tensor %s: expected f32 [%llu], got %s [%llu%s]", name,
                         (unsigned long long)n, sl_dtype_name(t->dtype),
                         (unsigned long long)t->dims[0], t->n_dims > 1 ? ", ..." : "");
    *out = (const float *)(m->file.map + t->offset);
    return SL_OK;
}

/* Finds name and checks it is an f32 matrix [rows, cols] (expert biases). */
static int bind_f32_matrix(struct sl_model *m, const char *name, uint64_t rows,
                           uint64_t cols, const float **out) {
    const struct sl_tensor_info *t = file_find_tensor(&m->file, name);
    if (!t) return sl_seterr(SL_ERR_FORMAT, "missing tensor %s", name);
    if (t->n_dims != 2 || t->dims[0] != rows || t->dims[1] != cols ||
        t->dtype != SL_DTYPE_F32)
        return sl_seterr(SL_ERR_FORMAT, "tensor %s: expected f32 [%llu, %llu], got %s "
                         "with %d dims [%llu, ...]", name, (unsigned long long)rows,
                         (unsigned long long)cols, sl_dtype_name(t->dtype), t->n_dims,
                         (unsigned long long)t->dims[0]);
    *out = (const float *)(m->file.map + t->offset);
    return SL_OK;
}

static int check_expert_layer(const struct sl_model *m, uint32_t l) {
    const struct sl_config *c = &m->cfg;
    const struct sl_expert_layer *el = file_expert_layer(&m->file, l);
    if (!el) return sl_seterr(SL_ERR_FORMAT, "layer %u: no expert records", l);
    if (el->n_experts != c->n_experts)
        return sl_seterr(SL_ERR_FORMAT, "layer %u: %u expert records, config says %u",
                         l, el->n_experts, c->n_experts);
    const uint64_t want[3][2] = {{c->moe_ffn, c->hidden},
                                 {c->moe_ffn, c->hidden},
                                 {c->hidden, c->moe_ffn}};
    static const char *names[3] = {"gate", "up", "down"};
    for (int i = 0; i < 3; i++)
        if (el->part[i].rows != want[i][0] || el->part[i].cols != want[i][1])
            return sl_seterr(SL_ERR_FORMAT,
                             "layer %u experts: %s expected [%llu, %llu], got [%llu, %llu]",
                             l, names[i], (unsigned long long)want[i][0],
                             (unsigned long long)want[i][1],
                             (unsigned long long)el->part[i].rows,
                             (unsigned long long)el->part[i].cols);
    return SL_OK;
}

/* A deepseek_v3 layer: norms, MLA projections (layer_mla.h), then a dense
 * MLP (l < first_k_dense_replace) or router + selection bias + shared
 * experts + expert records. */
static int bind_layer_deepseek(struct sl_model *m, uint32_t l) {
    const struct sl_config *c = &m->cfg;
    struct layer_weights *L = &m->layers[l];
    char n[SL_MAX_NAME + 1];
    uint64_t h = c->hidden, nh = c->n_heads, qk = config_qk_head_dim(c);
    uint64_t r = c->kv_lora_rank, sh = (uint64_t)c->moe_ffn * c->n_shared_experts;
    int st;
#define NAME(suffix) (snprintf(n, sizeof n, "model.layers.%u.%s", l, suffix), n)
    if ((st = bind_vector(m, NAME("input_layernorm.weight"), h, 0, &L->attn_norm)) ||
        (st = bind_vector(m, NAME("post_attention_layernorm.weight"), h, 0, &L->ffn_norm)) ||
        (st = bind_matrix(m, NAME("self_attn.kv_a_proj_with_mqa.weight"),
                          r + c->qk_rope_head_dim, h, &L->wkv_a)) ||
        (st = bind_vector(m, NAME("self_attn.kv_a_layernorm.weight"), r, 0, &L->kv_a_norm)) ||
        (st = bind_matrix(m, NAME("self_attn.kv_b_proj.weight"),
                          nh * (c->qk_nope_head_dim + c->v_head_dim), r, &L->wkv_b)) ||
        (st = bind_matrix(m, NAME("self_attn.o_proj.weight"), h, nh * c->v_head_dim, &L->wo)))
        return st;
    if (c->q_lora_rank) {
        if ((st = bind_matrix(m, NAME("self_attn.q_a_proj.weight"), c->q_lora_rank, h,
                              &L->wq_a)) ||
            (st = bind_vector(m, NAME("self_attn.q_a_layernorm.weight"), c->q_lora_rank, 0,
                              &L->q_a_norm)) ||
            (st = bind_matrix(m, NAME("self_attn.q_b_proj.weight"), nh * qk, c->q_lora_rank,
                              &L->wq_b)))
            return st;
    } else if ((st = bind_matrix(m, NAME("self_attn.q_proj.weight"), nh * qk, h, &L->wq))) {
        return st;
    }
    if (!c->layer_is_moe[l])
        return (st = bind_matrix(m, NAME("mlp.gate_proj.weight"), c->ffn, h, &L->w_gate)) ||
               (st = bind_matrix(m, NAME("mlp.up_proj.weight"), c->ffn, h, &L->w_up)) ||
               (st = bind_matrix(m, NAME("mlp.down_proj.weight"), h, c->ffn, &L->w_down))
                   ? st : SL_OK;
    if ((st = bind_matrix(m, NAME("mlp.gate.weight"), c->n_experts, h, &L->router)) ||
        (st = bind_vector(m, NAME("mlp.gate.e_score_correction_bias"), c->n_experts, 0,
                          &L->router_sel_bias)))
        return st;
    if (sh && ((st = bind_matrix(m, NAME("mlp.shared_experts.gate_proj.weight"), sh, h,
                                 &L->sh_gate)) ||
               (st = bind_matrix(m, NAME("mlp.shared_experts.up_proj.weight"), sh, h,
                                 &L->sh_up)) ||
               (st = bind_matrix(m, NAME("mlp.shared_experts.down_proj.weight"), h, sh,
                                 &L->sh_down))))
        return st;
    return check_expert_layer(m, l);
#undef NAME
}

/* A qwen3_next / qwen3_5_moe layer: norms; Gated DeltaNet projections or
 * gated attention; router + shared expert + expert records, or a dense
 * MLP (qwen3_next's mlp_only_layers). Norms are stored multiplicative
 * (the converter folds the zero-centred 1 + w). */
static int bind_layer_hybrid(struct sl_model *m, uint32_t l) {
    const struct sl_config *c = &m->cfg;
    struct layer_weights *L = &m->layers[l];
    char n[SL_MAX_NAME + 1];
    uint64_t h = c->hidden, nv = c->lin_v_heads, cd = config_lin_conv_dim(c);
    uint64_t vd = config_lin_value_dim(c);
    int st;
#define NAME(suffix) (snprintf(n, sizeof n, "model.layers.%u.%s", l, suffix), n)
    if ((st = bind_vector(m, NAME("input_layernorm.weight"), h, 0, &L->attn_norm)) ||
        (st = bind_vector(m, NAME("post_attention_layernorm.weight"), h, 0, &L->ffn_norm)))
        return st;
    if (c->layer_linear[l]) {
        if ((st = bind_matrix(m, NAME("linear_attn.in_proj_qkv.weight"), cd, h, &L->lin_qkv)) ||
            (st = bind_matrix(m, NAME("linear_attn.in_proj_z.weight"), vd, h, &L->lin_z)) ||
            (st = bind_matrix(m, NAME("linear_attn.in_proj_b.weight"), nv, h, &L->lin_b)) ||
            (st = bind_matrix(m, NAME("linear_attn.in_proj_a.weight"), nv, h, &L->lin_a)) ||
            (st = bind_f32_matrix(m, NAME("linear_attn.conv1d.weight"), cd, c->lin_conv,
                                  &L->lin_conv)) ||
            (st = bind_vector(m, NAME("linear_attn.A_log"), nv, 0, &L->lin_A_log)) ||
            (st = bind_vector(m, NAME("linear_attn.dt_bias"), nv, 0, &L->lin_dt_bias)) ||
            (st = bind_vector(m, NAME("linear_attn.norm.weight"), c->lin_v_dim, 0,
                              &L->lin_norm)) ||
            (st = bind_matrix(m, NAME("linear_attn.out_proj.weight"), h, vd, &L->lin_out)))
            return st;
    } else if ((st = bind_matrix(m, NAME("self_attn.q_proj.weight"), 2ull * config_q_dim(c),
                                 h, &L->wq)) ||
               (st = bind_matrix(m, NAME("self_attn.k_proj.weight"), config_kv_dim(c), h,
                                 &L->wk)) ||
               (st = bind_matrix(m, NAME("self_attn.v_proj.weight"), config_kv_dim(c), h,
                                 &L->wv)) ||
               (st = bind_matrix(m, NAME("self_attn.o_proj.weight"), h, config_q_dim(c),
                                 &L->wo)) ||
               (st = bind_vector(m, NAME("self_attn.q_norm.weight"), c->head_dim, 0,
                                 &L->q_norm)) ||
               (st = bind_vector(m, NAME("self_attn.k_norm.weight"), c->head_dim, 0,
                                 &L->k_norm))) {
        return st;
    }
    if (!c->layer_is_moe[l])
        return (st = bind_matrix(m, NAME("mlp.gate_proj.weight"), c->ffn, h, &L->w_gate)) ||
               (st = bind_matrix(m, NAME("mlp.up_proj.weight"), c->ffn, h, &L->w_up)) ||
               (st = bind_matrix(m, NAME("mlp.down_proj.weight"), h, c->ffn, &L->w_down))
                   ? st : SL_OK;
    uint64_t sh = c->shared_ffn;
    if ((st = bind_matrix(m, NAME("mlp.gate.weight"), c->n_experts, h, &L->router)) ||
        (st = bind_matrix(m, NAME("mlp.shared_expert.gate_proj.weight"), sh, h, &L->sh_gate)) ||
        (st = bind_matrix(m, NAME("mlp.shared_expert.up_proj.weight"), sh, h, &L->sh_up)) ||
        (st = bind_matrix(m, NAME("mlp.shared_expert.down_proj.weight"), h, sh, &L->sh_down)) ||
        (st = bind_vector(m, NAME("mlp.shared_expert_gate.weight"), h, 0, &L->sh_expert_gate)))
        return st;
    return check_expert_layer(m, l);
#undef NAME
}

static int bind_layer(struct sl_model *m, uint32_t l) {
    const struct sl_config *c = &m->cfg;
    struct layer_weights *L = &m->layers[l];
    char n[SL_MAX_NAME + 1];
    int st;
#define NAME(suffix) (snprintf(n, sizeof n, "model.layers.%u.%s", l, suffix), n)
    if (c->arch == SL_ARCH_DEEPSEEK_V3) return bind_layer_deepseek(m, l);
    if (config_is_hybrid(c)) return bind_layer_hybrid(m, l);
    if ((st = bind_vector(m, NAME("input_layernorm.weight"), c->hidden, 0, &L->attn_norm)) ||
        (st = bind_vector(m, NAME("post_attention_layernorm.weight"), c->hidden, 0, &L->ffn_norm)) ||
        (st = bind_matrix(m, NAME("self_attn.q_proj.weight"), config_q_dim(c), c->hidden, &L->wq)) ||
        (st = bind_matrix(m, NAME("self_attn.k_proj.weight"), config_kv_dim(c), c->hidden, &L->wk)) ||
        (st = bind_matrix(m, NAME("self_attn.v_proj.weight"), config_kv_dim(c), c->hidden, &L->wv)) ||
        (st = bind_matrix(m, NAME("self_attn.o_proj.weight"), c->hidden, config_q_dim(c), &L->wo)))
        return st;
    if (c->qk_norm != SL_QK_NORM_NONE) {
        int full = c->qk_norm == SL_QK_NORM_FULL;
        if ((st = bind_vector(m, NAME("self_attn.q_norm.weight"),
                              full ? config_q_dim(c) : c->head_dim, 0, &L->q_norm)) ||
            (st = bind_vector(m, NAME("self_attn.k_norm.weight"),
                              full ? config_kv_dim(c) : c->head_dim, 0, &L->k_norm)))
            return st;
    }
    int opt = !c->attention_bias;
    /* qwen3_moe's o_proj has no bias even with attention_bias; gpt_oss's has. */
    int opt_o = opt || c->arch == SL_ARCH_QWEN3_MOE;
    if ((st = bind_vector(m, NAME("self_attn.q_proj.bias"), config_q_dim(c), opt, &L->bq)) ||
        (st = bind_vector(m, NAME("self_attn.k_proj.bias"), config_kv_dim(c), opt, &L->bk)) ||
        (st = bind_vector(m, NAME("self_attn.v_proj.bias"), config_kv_dim(c), opt, &L->bv)) ||
        (st = bind_vector(m, NAME("self_attn.o_proj.bias"), c->hidden, opt_o, &L->bo)))
        return st;
    if (c->attn_sinks &&
        (st = bind_vector(m, NAME("self_attn.sinks"), c->n_heads, 0, &L->sinks)))
        return st;
    if (c->layer_is_moe[l]) {
        const char *router = c->arch == SL_ARCH_MIXTRAL ? "block_sparse_moe.gate.weight"
                             : c->arch == SL_ARCH_GPT_OSS ? "mlp.router.weight"
                                                          : "mlp.gate.weight";
        if ((st = bind_matrix(m, NAME(router), c->n_experts, c->hidden, &L->router)))
            return st;
        if (c->router_bias &&
            (st = bind_vector(m, NAME("mlp.router.bias"), c->n_experts, 0, &L->router_b)))
            return st;
        if (c->expert_bias &&
            ((st = bind_f32_matrix(m, NAME("mlp.experts.gate_up_proj_bias"), c->n_experts,
                                   2ull * c->moe_ffn, &L->exp_gate_up_b)) ||
             (st = bind_f32_matrix(m, NAME("mlp.experts.down_proj_bias"), c->n_experts,
                                   c->hidden, &L->exp_down_b))))
            return st;
        return check_expert_layer(m, l);
    }
    if ((st = bind_matrix(m, NAME("mlp.gate_proj.weight"), c->ffn, c->hidden, &L->w_gate)) ||
        (st = bind_matrix(m, NAME("mlp.up_proj.weight"), c->ffn, c->hidden, &L->w_up)) ||
        (st = bind_matrix(m, NAME("mlp.down_proj.weight"), c->hidden, c->ffn, &L->w_down)))
        return st;
    return SL_OK;
#undef NAME
}

static int bind_model(struct sl_model *m) {
    const struct sl_config *c = &m->cfg;
    int st;
    if ((st = bind_matrix(m, "model.embed_tokens.weight", c->n_vocab, c->hidden, &m->embed)) ||
        (st = bind_vector(m, "model.norm.weight", c->hidden, 0, &m->final_norm)))
        return st;
    if (c->tie_embeddings) {
        m->lm_head = m->embed;
    } else if ((st = bind_matrix(m, "lm_head.weight", c->n_vocab, c->hidden, &m->lm_head))) {
        return st;
    }
    m->layers = sl_calloc(c->n_layers, sizeof *m->layers);
    if (!m->layers) return sl_seterr(SL_ERR_NOMEM, "out of memory binding layers");
    for (uint32_t l = 0; l < c->n_layers; l++)
        if ((st = bind_layer(m, l))) return st;
    return SL_OK;
}

/* The YaRN frequency table (plain RoPE computes its own in ops_rope_neox). */
static int rope_init(struct sl_model *m) {
    const struct sl_config *c = &m->cfg;
    m->rope_mscale = 1.0f;
    if (c->rope_kind != SL_ROPE_YARN) return SL_OK;
    m->rope_inv_freq = sl_malloc(c->head_dim / 2 * sizeof(float));
    if (!m->rope_inv_freq) return sl_seterr(SL_ERR_NOMEM, "out of memory (rope table)");
    m->rope_mscale = c->rope_attn_factor;
    return ops_rope_yarn_inv_freq(m->rope_inv_freq, (int)c->head_dim, c->rope_theta,
                                  c->rope_factor, c->rope_beta_fast, c->rope_beta_slow,
                                  c->rope_orig_ctx, c->rope_truncate);
}

/* Locks every dense tensor in RAM (best effort is not enough: failure is an
 * error, since the user asked for it). */
static int lock_dense(struct sl_model *m) {
    for (uint32_t i = 0; i < m->file.n_tensors; i++) {
        const struct sl_tensor_info *t = &m->file.tensors[i];
        uintptr_t a = (uintptr_t)(m->file.map + t->offset) & ~(uintptr_t)4095;
        uintptr_t b = (uintptr_t)(m->file.map + t->offset + t->size);
        if (mlock((void *)a, b - a) != 0)
            return sl_seterr(SL_ERR_IO,
                             "mlock of dense tensors failed (%s); HINT: raise "
                             "ulimit -l or run without --mlock",
                             strerror(errno));
    }
    return SL_OK;
}

int sl_model_open(const char *path, const struct sl_model_params *params,
                  struct sl_model **out) {
    if (!path || !out) return sl_seterr(SL_ERR_ARG, "sl_model_open: NULL argument");
    *out = NULL;
    struct sl_model *m = sl_calloc(1, sizeof *m);
    if (!m) return sl_seterr(SL_ERR_NOMEM, "out of memory opening %s", path);
    m->file.fd = -1;
    m->params = params ? *params : sl_model_default_params();
    int st = file_open(&m->file, path, m->params.verify);
    if (st) goto fail;
    st = config_parse(&m->cfg, m->file.manifest, m->file.manifest_len);
    if (st) {
        sl_preerr(st, "manifest: ");
        goto fail;
    }
    if ((st = bind_model(m))) goto fail;
    if ((st = rope_init(m))) goto fail;
    if (m->file.tokenizer) {
        st = tokenizer_load_json(m->file.tokenizer, m->file.tokenizer_len, &m->tok);
        if (st) {
            sl_preerr(st, "embedded tokenizer: ");
            goto fail;
        }
        int32_t nt = sl_tokenizer_n_vocab(m->tok);
        if (nt > (int32_t)m->cfg.n_vocab) {
            st = sl_seterr(SL_ERR_FORMAT,
                           "embedded tokenizer has %d tokens but the model's vocabulary is %u",
                           nt, m->cfg.n_vocab);
            goto fail;
        }
    }
    struct expert_store_params sp = {
        .budget_bytes = m->params.ram_cache_bytes,
        .io_mode = m->params.io_mode,
        .policy = m->params.cache_policy,
        .prefetch = m->params.prefetch,
        .n_io = m->params.io_threads,
        .no_uring = m->params.no_uring,
        .dense_bytes = m->file.dense_bytes,
        .profile_path = m->params.expert_profile,
    };
    if ((st = expert_store_create(&m->file, path, &sp, &m->experts))) goto fail;
    if (m->params.use_mlock && (st = lock_dense(m))) goto fail;
    if ((st = placement_check_params(&m->params))) goto fail; /* multi-GPU: placement.h */
    if (m->params.device == SL_DEVICE_CUDA || m->params.device == SL_DEVICE_AUTO) {
        st = cuda_model_create(m, &m->cuda); /* src/cuda/cuda.h */
        if (st == SL_ERR_UNSUPPORTED && m->params.device == SL_DEVICE_AUTO) {
            sl_log(SL_LOG_WARN, "--device auto: running on the CPU: %s", sl_errmsg());
            sl_clearerr();
            st = SL_OK;
        }
        if (st) goto fail;
    } else if (m->params.device != SL_DEVICE_CPU) {
        st = sl_seterr(SL_ERR_ARG, "unknown device %d (cpu 0, cuda 1, auto 2)", m->params.device);
        goto fail;
    }
    m->params.expert_profile = NULL; /* borrowed only during open (the GPU placement reads it) */
    m->params.nccl_id_path = NULL;
    const struct sl_config *c = &m->cfg;
    uint32_t n_moe = 0;
    for (uint32_t l = 0; l < c->n_layers; l++) n_moe += c->layer_is_moe[l];
    snprintf(m->desc, sizeof m->desc,
             "%s, %u layers (%u MoE), hidden %u, %u/%u heads x %u, %u experts top-%u "
             "ffn %u, vocab %u",
             c->model_type, c->n_layers, n_moe, c->hidden, c->n_heads,
             c->n_kv_heads, c->head_dim, c->n_experts, c->n_experts_used,
             c->moe_ffn, c->n_vocab);
    *out = m;
    return SL_OK;
fail:
    sl_preerr(st, "%s: ", path);
    sl_model_close(m);
    return st;
}

void sl_model_close(struct sl_model *m) {
    if (!m) return;
    cuda_model_free(m->cuda); /* before the store it reads from */
    expert_store_free(m->experts);
    sl_tokenizer_free(m->tok);
    sl_free(m->layers);
    sl_free(m->rope_inv_freq);
    file_close(&m->file);
    sl_free(m);
}

int32_t sl_model_n_vocab(const struct sl_model *m) { return (int32_t)m->cfg.n_vocab; }
int32_t sl_model_n_ctx_train(const struct sl_model *m) { return (int32_t)m->cfg.n_ctx_train; }
const char *sl_model_desc(const struct sl_model *m) { return m->desc; }
const char *sl_model_backend_desc(const struct sl_model *m) {
    return m->cuda ? cuda_model_desc(m->cuda) : sl_backend_desc();
}
int sl_model_measure_device_bandwidth(struct sl_model *m, double *mem_gbs, double *h2d_gbs) {
    if (!m || !mem_gbs || !h2d_gbs) return sl_seterr(SL_ERR_ARG, "null argument");
    *mem_gbs = *h2d_gbs = 0;
    if (!m->cuda) return sl_seterr(SL_ERR_UNSUPPORTED, "the model runs on the CPU");
    return cuda_measure_bandwidth(m->cuda, mem_gbs, h2d_gbs);
}
uint64_t sl_model_expert_bytes(const struct sl_model *m) { return m->file.expert_bytes; }
uint64_t sl_model_dense_bytes(const struct sl_model *m) { return m->file.dense_bytes; }
const struct sl_tokenizer *sl_model_tokenizer(const struct sl_model *m) { return m->tok; }

size_t sl_model_eos_ids(const struct sl_model *m, const int32_t **ids) {
    *ids = m->cfg.eos_ids;
    return m->cfg.n_eos;
}

uint64_t sl_model_active_dense_bytes(const struct sl_model *m) {
    uint64_t total = m->file.dense_bytes;
    if (!m->cfg.tie_embeddings) {
        uint64_t table = m->embed.rows * quant_row_bytes(m->embed.dtype, m->embed.cols);
        total = total - table + quant_row_bytes(m->embed.dtype, m->embed.cols);
    }
    return total;
}
