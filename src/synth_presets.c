/*
 * synth_presets.c — what the synthetic generator builds: the named presets
 * (qwen3_moe shapes here; the hybrid ones come from synth_hybrid.c through
 * synth_hybrid_preset), the layer count setter, and synth_check, which
 * validates a parameter set and resolves n_vocab / eos from an optional
 * tokenizer.json (see synth.h for the contracts of the exported functions).
 *
 * What it is not: the generator. No weight is drawn and nothing is written
 * here; the PRNG, the router skew fit and the write loop live in synth.c.
 * Only tokenizer.json's id range and its "<|endoftext|>" entry are read:
 * the tokenizer itself is loaded by src/tokenizer.c, not here.
 *
 * Invariants: a preset is a pure function of its name (no clock, no
 * environment); synth_check never modifies its params and writes *out only
 * on success; every rejection is SL_ERR_ARG / SL_ERR_CONFIG /
 * SL_ERR_UNSUPPORTED with a message naming the offending field.
 */
#include <cJSON.h>
#include <stdio.h>
#include <string.h>

#include "quant.h"
#include "synth.h"
#include "synth_impl.h"
#include "util.h"

/* ---- presets ----------------------------------------------------------- */

static void preset_qwen3_moe(struct sl_config *c) {
    memset(c, 0, sizeof *c);
    c->arch = SL_ARCH_QWEN3_MOE;
    snprintf(c->model_type, sizeof c->model_type, "qwen3_moe");
    c->norm_topk_prob = 1;
    c->decoder_sparse_step = 1;
    c->rms_eps = 1e-6f;
    c->rope_theta = 1e6f;
    c->bos_id = -1;
}

const char *synth_preset_names(void) {
    return "demo tiny a3b-cpu a3b-gpu " SYNTH_HYBRID_PRESETS;
}

int synth_set_layers(struct synth_params *p, uint32_t n_layers) {
    if (n_layers == 0 || n_layers > SL_MAX_LAYERS)
        return sl_seterr(SL_ERR_ARG, "number of layers must be 1..%d, got %u",
                         SL_MAX_LAYERS, n_layers);
    p->cfg.n_layers = n_layers;
    memset(p->cfg.layer_is_moe, 0, sizeof p->cfg.layer_is_moe);
    memset(p->cfg.layer_is_moe, 1, n_layers);
    if (config_is_hybrid(&p->cfg)) synth_hybrid_set_layers(&p->cfg);
    return SL_OK;
}

int synth_preset(const char *name, struct synth_params *p) {
    memset(p, 0, sizeof *p);
    struct sl_config *c = &p->cfg;
    preset_qwen3_moe(c);
    p->expert_dtype = SL_DTYPE_Q4;
    p->dense_dtype = SL_DTYPE_BF16;
    p->seed = 42;
    p->preset = name;
    uint32_t layers;
    if (synth_hybrid_preset(name, p, &layers)) {
        /* qwen3_5_moe shapes: synth_hybrid.c */
    } else if (strcmp(name, "demo") == 0) {
        /* The default model shipped by `make`: n_vocab and eos come from
         * the tokenizer given at write time. */
        layers = 4;
        c->hidden = 256;
        c->n_heads = 8;
        c->n_kv_heads = 2;
        c->head_dim = 32;
        c->n_experts = 16;
        c->n_experts_used = 4;
        c->moe_ffn = 128;
        c->ffn = 512;
        c->n_ctx_train = 4096;
        c->n_vocab = 0;
        /* 16 experts top-4 reach Gini ~0.44 by row scaling at most: 0.3
         * keeps every layer's target (0.15..0.38) reachable. */
        p->skew = 0.3f;
    } else if (strcmp(name, "tiny") == 0) {
        layers = 2;
        c->hidden = 64;
        c->n_heads = 4;
        c->n_kv_heads = 2;
        c->head_dim = 16;
        c->n_experts = 4;
        c->n_experts_used = 2;
        c->moe_ffn = 32;
        c->ffn = 128;
        c->n_ctx_train = 512;
        c->n_vocab = 256;
        p->skew = 0;
    } else if (strcmp(name, "a3b-cpu") == 0 || strcmp(name, "a3b-gpu") == 0) {
        /* Qwen3-30B-A3B layer shape (its config.json). */
        layers = name[4] == 'c' ? 8 : 48;
        c->hidden = 2048;
        c->n_heads = 32;
        c->n_kv_heads = 4;
        c->head_dim = 128;
        c->n_experts = 128;
        c->n_experts_used = 8;
        c->moe_ffn = 768;
        c->ffn = 6144;
        c->n_ctx_train = 40960;
        c->n_vocab = 151936;
        c->n_eos = 2;
        c->eos_ids[0] = 151645; /* <|im_end|> */
        c->eos_ids[1] = 151643; /* <|endoftext|> */
        p->skew = 0.4f;
    } else {
        p->preset = NULL;
        return sl_seterr(SL_ERR_ARG, "unknown preset '%s'; known: %s", name,
                         synth_preset_names());
    }
    return synth_set_layers(p, layers);
}

/* ---- tokenizer --------------------------------------------------------- */

/* Size (max id + 1 over model.vocab and added_tokens) and the id of
 * "<|endoftext|>" (-1 if absent) of a tokenizer.json. */
static int tokenizer_scan(const char *path, const char *json, size_t len,
                          uint32_t *n_vocab, int32_t *eot_id) {
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root)
        return sl_seterr(SL_ERR_CONFIG, "tokenizer %s: not valid JSON", path);
    int rc = SL_OK;
    int64_t max_id = -1;
    *eot_id = -1;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    if (!cJSON_IsObject(vocab)) {
        rc = sl_seterr(SL_ERR_CONFIG, "tokenizer %s: no model.vocab object",
                       path);
        goto done;
    }
    const cJSON *it;
    cJSON_ArrayForEach(it, vocab) {
        if (!cJSON_IsNumber(it) || it->valuedouble < 0 ||
            it->valuedouble > 1e9) {
            rc = sl_seterr(SL_ERR_CONFIG, "tokenizer %s: model.vocab['%.64s']"
                           " is not a valid id", path, it->string);
            goto done;
        }
        if (it->valueint > max_id) max_id = it->valueint;
        if (strcmp(it->string, "<|endoftext|>") == 0) *eot_id = it->valueint;
    }
    cJSON_ArrayForEach(it, added) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "id");
        const cJSON *ct = cJSON_GetObjectItemCaseSensitive(it, "content");
        if (!cJSON_IsNumber(id) || id->valuedouble < 0 ||
            id->valuedouble > 1e9) {
            rc = sl_seterr(SL_ERR_CONFIG, "tokenizer %s: an added_tokens "
                           "entry has no valid id", path);
            goto done;
        }
        if (id->valueint > max_id) max_id = id->valueint;
        if (cJSON_IsString(ct) && strcmp(ct->valuestring, "<|endoftext|>") == 0)
            *eot_id = id->valueint;
    }
    if (max_id < 0)
        rc = sl_seterr(SL_ERR_CONFIG, "tokenizer %s: empty vocabulary", path);
    *n_vocab = (uint32_t)(max_id + 1);
done:
    cJSON_Delete(root);
    return rc;
}

/* ---- checks ------------------------------------------------------------ */

static int check_dtype(const char *what, int dtype, const int *allowed,
                       uint64_t cols1, uint64_t cols2) {
    int ok = 0;
    for (int i = 0; allowed[i] >= 0; i++) ok |= allowed[i] == dtype;
    if (!ok)
        return sl_seterr(SL_ERR_ARG, "%s dtype %s is not supported here",
                         what, sl_dtype_name(dtype));
    if (!quant_dtype_fits(dtype, cols1) || !quant_dtype_fits(dtype, cols2))
        return sl_seterr(SL_ERR_ARG, "%s dtype %s needs row lengths that are "
                         "multiples of %d; got %llu and %llu", what,
                         sl_dtype_name(dtype), SL_QBLOCK,
                         (unsigned long long)cols1, (unsigned long long)cols2);
    return SL_OK;
}

int synth_check(const struct synth_params *p, struct sl_config *out) {
    struct sl_config c = p->cfg;
    int hybrid = c.arch == SL_ARCH_QWEN3_5_MOE &&
                 strcmp(c.model_type, "qwen3_5_moe_text") == 0;
    if (!hybrid &&
        (c.arch != SL_ARCH_QWEN3_MOE || strcmp(c.model_type, "qwen3_moe") != 0))
        return sl_seterr(SL_ERR_UNSUPPORTED, "synth writes qwen3_moe and "
                         "qwen3_5_moe_text only, got model_type '%.31s'",
                         c.model_type);
    if (c.n_layers == 0 || c.n_layers > SL_MAX_LAYERS)
        return sl_seterr(SL_ERR_ARG, "number of layers must be 1..%d, got %u",
                         SL_MAX_LAYERS, c.n_layers);
    if (!c.hidden || !c.n_heads || !c.n_kv_heads || !c.head_dim ||
        !c.n_experts || !c.moe_ffn || !c.n_ctx_train)
        return sl_seterr(SL_ERR_ARG, "hidden, heads, kv heads, head_dim, "
                         "experts, moe ffn and context must all be > 0");
    if (c.n_heads % c.n_kv_heads)
        return sl_seterr(SL_ERR_ARG, "%u attention heads are not a multiple "
                         "of %u kv heads", c.n_heads, c.n_kv_heads);
    if (c.head_dim % 2)
        return sl_seterr(SL_ERR_ARG, "head_dim %u must be even (rope)",
                         c.head_dim);
    if (c.n_experts_used == 0 || c.n_experts_used > c.n_experts ||
        c.n_experts_used > SYNTH_MAX_TOPK)
        return sl_seterr(SL_ERR_ARG, "top-k %u must be 1..n_experts (%u) and "
                         "<= %d", c.n_experts_used, c.n_experts,
                         SYNTH_MAX_TOPK);
    int any_dense = 0;
    for (uint32_t l = 0; l < c.n_layers; l++) any_dense |= !c.layer_is_moe[l];
    if (any_dense && !c.ffn)
        return sl_seterr(SL_ERR_ARG, "dense MLP layers need ffn > 0");
    if (!(p->skew >= 0 && p->skew < SYNTH_MAX_SKEW))
        return sl_seterr(SL_ERR_ARG, "skew (target Gini) must be in [0, %.2f),"
                         " got %g", (double)SYNTH_MAX_SKEW, (double)p->skew);
    static const int expert_ok[] = {SL_DTYPE_BF16, SL_DTYPE_Q8, SL_DTYPE_Q4,
                                    SL_DTYPE_F32, -1};
    static const int dense_ok[] = {SL_DTYPE_BF16, SL_DTYPE_Q8, SL_DTYPE_F32,
                                   SL_DTYPE_F16, -1};
    int rc;
    if ((rc = check_dtype("expert", p->expert_dtype, expert_ok, c.hidden,
                          c.moe_ffn)) ||
        (rc = check_dtype("dense", p->dense_dtype, dense_ok, c.hidden,
                          config_q_dim(&c))) ||
        (any_dense &&
         (rc = check_dtype("dense", p->dense_dtype, dense_ok, c.ffn, c.ffn))) ||
        (hybrid && (rc = synth_hybrid_check(&c, p->dense_dtype))))
        return rc;
    if (p->tokenizer_path) {
        char *json;
        size_t len;
        uint32_t tv = 0;
        int32_t eot = -1;
        if ((rc = sl_read_file(p->tokenizer_path, &json, &len)))
            return sl_preerr(rc, "tokenizer: ");
        rc = tokenizer_scan(p->tokenizer_path, json, len, &tv, &eot);
        sl_free(json);
        if (rc) return rc;
        if (c.n_vocab == 0) c.n_vocab = tv;
        if (tv > c.n_vocab)
            return sl_seterr(SL_ERR_ARG, "tokenizer %s has %u tokens, more "
                             "than the model's n_vocab %u", p->tokenizer_path,
                             tv, c.n_vocab);
        if (c.n_eos == 0 && eot >= 0) {
            c.n_eos = 1;
            c.eos_ids[0] = eot;
        }
    }
    if (c.n_vocab == 0)
        return sl_seterr(SL_ERR_ARG, "n_vocab is 0: this preset takes its "
                         "vocabulary from a tokenizer (--tokenizer FILE)");
    for (uint32_t i = 0; i < c.n_eos; i++)
        if (c.eos_ids[i] < 0 || (uint32_t)c.eos_ids[i] >= c.n_vocab)
            return sl_seterr(SL_ERR_ARG, "eos id %d outside the vocabulary "
                             "(%u)", c.eos_ids[i], c.n_vocab);
    if (out) *out = c;
    return SL_OK;
}
