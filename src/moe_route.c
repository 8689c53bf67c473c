/*
 * moe_route.c — per-family MoE routing (see moe_route.h). The
 * softmax-first path is exactly the arithmetic qwen3_moe always used
 * (ops_softmax, ops_topk, float renormalisation), so its outputs are
 * bit-identical to the code it replaced.
 */
#include "moe_route.h"

#include "cpu/ops.h"
#include "util.h"

int moe_route(const struct sl_config *c, float *logits, int n, int32_t *ids,
              float *w) {
    int ne = (int)c->n_experts, k = (int)c->n_experts_used, st;
    for (int t = 0; t < n; t++) {
        float *p = logits + (size_t)t * ne, *wt = w + (size_t)t * k;
        int32_t *it = ids + (size_t)t * k;
        if (c->router_kind == SL_ROUTER_TOPK_SOFTMAX) {
            if ((st = ops_topk(p, ne, k, it, wt))) return st;
            ops_softmax(wt, k);
            continue;
        }
        ops_softmax(p, ne);
        if ((st = ops_topk(p, ne, k, it, wt))) return st;
        if (c->norm_topk_prob) {
            float sum = 0;
            for (int i = 0; i < k; i++) sum += wt[i];
            for (int i = 0; i < k; i++) wt[i] /= sum;
        }
    }
    return SL_OK;
}
