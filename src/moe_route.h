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
 * Ties go to the lower expert id (ops_topk). Not here: the router matmul
 * and its bias (the caller adds the bias to the logits first), the experts.
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

#endif /* SL_MOE_ROUTE_H */
