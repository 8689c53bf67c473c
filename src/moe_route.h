/*
 * moe_route.h — the routing stage of an MoE layer, per family: router
 * logits (n, n_experts) → top-k ids and weights (n, k).
 *
 *   SL_ROUTER_SOFTMAX_TOPK (qwen3_moe, mixtral, olmoe): softmax over all
 *       experts, the k largest probabilities, renormalised to sum 1 when
 *       cfg.norm_topk_prob (always for mixtral).
 *   SL_ROUTER_TOPK_SOFTMAX (gpt_oss): the k largest logits, softmax over
 *       those k.
 *   SL_ROUTER_NOAUX_TC (deepseek_v3): moe_route_noaux_tc.
 * Ties go to the lower expert id (ops_topk). moe_route_layer picks the
 * family's rule; moe_route_predict is the router lookahead's prediction
 * with that same rule. Not here: the router matmul, the experts.
 */
#ifndef SL_MOE_ROUTE_H
#define SL_MOE_ROUTE_H

#include <stdint.h>

#include "config.h"

/* Routes n tokens. logits: (n, n_experts), overwritten (probabilities for
 * the softmax-first kind, unchanged otherwise); ids, w: (n, k) with k =
 * cfg->n_experts_used. Returns SL_OK, or SL_ERR_ARG from ops_topk for an
 * impossible k (config_parse rules that out). */
int moe_route(const struct sl_config *cfg, float *logits, int n, int32_t *ids,
              float *w);

/* deepseek_v3's noaux_tc routing of n tokens, as transformers'
 * DeepseekV3TopkRouter: s = sigmoid(logit) (float32); the choice score
 * s + sel_bias[e] (e_score_correction_bias, may be NULL = 0) decides the
 * selection only: groups of n_experts / n_group consecutive experts are
 * ranked by the sum of their two largest choice scores, the topk_group best
 * groups are kept, and the k best choice scores among their experts are
 * selected. Weights are the unbiased s of those experts, divided by their
 * sum + 1e-20 when norm_topk_prob, times routed_scaling_factor.
 * logits: (n, n_experts), overwritten with s; ids, w: (n, k), ids ordered
 * by choice score descending; ties (groups and experts) go to the lower
 * index, NaN ranks last. Returns SL_ERR_ARG if n_group is 0 or above
 * SL_MAX_GROUPS, does not split the experts into groups of >= 2, or the
 * kept groups hold fewer than k experts (config_parse rules these out). */
int moe_route_noaux_tc(const struct sl_config *cfg, float *logits,
                       const float *sel_bias, int n, int32_t *ids, float *w);

/* The MoE layer's routing of n tokens: moe_route_noaux_tc (with sel_bias)
 * for SL_ROUTER_NOAUX_TC, else moe_route (sel_bias unused). logits: (n,
 * n_experts), the router's output with its bias already added, overwritten;
 * ids, w: (n, k). Returns as those do. */
int moe_route_layer(const struct sl_config *cfg, float *logits, const float *sel_bias,
                    int n, int32_t *ids, float *w);

/* The largest k moe_route_predict takes (its per-token scratch). */
#define MOE_ROUTE_PREDICT_MAX_K 64

/* The router lookahead's prediction (forward.c, cuda/moe_stream_cuda.cu):
 * the distinct experts that a layer routes n tokens to, given that layer's
 * raw router output logits (n, n_experts; the matmul without its bias),
 * overwritten. The selection is exactly the layer's own (moe() in
 * forward.c): router_b (n_experts, may be NULL; gpt_oss) is added as the
 * layer adds it, then moe_route_layer with sel_bias (n_experts, may be
 * NULL; deepseek_v3's e_score_correction_bias), ties included. out:
 * (n_experts) the union in the order first picked (token by token, each
 * token's ids in routing order); *n_out their count. Returns SL_OK, or
 * SL_ERR_ARG for k above MOE_ROUTE_PREDICT_MAX_K or what routing rejects
 * (*n_out is then 0). */
int moe_route_predict(const struct sl_config *cfg, float *logits, const float *router_b,
                      const float *sel_bias, int n, int32_t *out, int *n_out);

#endif /* SL_MOE_ROUTE_H */
