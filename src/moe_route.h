/*
 * moe_route.h — the routing stage of an MoE layer, per family: router
 * logits (n, n_experts) → top-k ids and weights (n, k).
 *
 *   SL_ROUTER_SOFTMAX_TOPK (qwen3_moe, mixtral, olmoe): softmax over all
 *       experts, the k largest probabilities, renormalised to sum 1 when
 *       cfg.norm_topk_prob (always for mixtral).
 *   SL_ROUTER_TOPK_SOFTMAX (gpt_oss): the k largest logits, softmax over
 *       those k.
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

#endif /* SL_MOE_ROUTE_H */
