/*
 * moe_route.c — per-family MoE routing (see moe_route.h). The
 * softmax-first path is exactly the arithmetic qwen3_moe always used
 * (ops_softmax, ops_topk, float renormalisation), so its outputs are
 * bit-identical to the code it replaced.
 */
#include "moe_route.h"

#include <math.h>

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

/* a ranks above b: larger, NaN last (ties are decided by the caller's scan
 * order, lower index first). */
static int ranks_above(float a, float b) {
    if (isnan(a)) return 0;
    return isnan(b) || a > b;
}

/* Inserts (id, v) into the descending list ids/vals of length *len, capped
 * at cap; equal values keep the earlier (lower) id first. */
static void insert_top(int32_t *ids, float *vals, int *len, int cap, int32_t id, float v) {
    int i = *len < cap ? *len : cap - 1;
    if (*len == cap && !ranks_above(v, vals[cap - 1])) return;
    while (i > 0 && ranks_above(v, vals[i - 1])) {
        ids[i] = ids[i - 1];
        vals[i] = vals[i - 1];
        i--;
    }
    ids[i] = id;
    vals[i] = v;
    if (*len < cap) (*len)++;
}

int moe_route_noaux_tc(const struct sl_config *c, float *logits,
                       const float *sel_bias, int n, int32_t *ids, float *w) {
    int ne = (int)c->n_experts, k = (int)c->n_experts_used, ng = (int)c->n_group;
    int tg = (int)c->topk_group;
    if (ng < 1 || ng > SL_MAX_GROUPS || ne % ng || ne / ng < 2 || tg < 1 || tg > ng ||
        k < 1 || k > tg * (ne / ng))
        return sl_seterr(SL_ERR_ARG, "noaux_tc routing: %d experts, n_group %d, "
                         "topk_group %d, top-%d do not fit", ne, ng, tg, k);
    int per = ne / ng;
    for (int t = 0; t < n; t++) {
        float *s = logits + (size_t)t * ne, *wt = w + (size_t)t * k;
        int32_t *it = ids + (size_t)t * k;
        for (int e = 0; e < ne; e++) s[e] = 1.0f / (1.0f + expf(-s[e]));
        /* group scores: the sum of each group's two best choice scores */
        float gs[SL_MAX_GROUPS], gv[SL_MAX_GROUPS];
        int32_t gid[SL_MAX_GROUPS];
        int ngl = 0;
        for (int g = 0; g < ng; g++) {
            int32_t top_id[2];
            float top[2];
            int len = 0;
            for (int j = 0; j < per; j++) {
                int e = g * per + j;
                insert_top(top_id, top, &len, 2, e, s[e] + (sel_bias ? sel_bias[e] : 0));
            }
            gs[g] = top[0] + top[1];
            insert_top(gid, gv, &ngl, tg, g, gs[g]);
        }
        /* the k best choice scores among the kept groups' experts, visited
         * in expert order so that ties go to the lower id */
        uint8_t keep[SL_MAX_GROUPS] = {0};
        for (int i = 0; i < ngl; i++) keep[gid[i]] = 1;
        float cv[64], *cvals = cv;
        float *heap = NULL;
        if (k > 64) { /* rare: fall back to the output weights as storage */
            heap = wt;
            cvals = heap;
        }
        int len = 0;
        for (int e = 0; e < ne; e++)
            if (keep[e / per])
                insert_top(it, cvals, &len, k, e, s[e] + (sel_bias ? sel_bias[e] : 0));
        SL_ASSERT(len == k);
        float sum = 0;
        for (int i = 0; i < k; i++) {
            wt[i] = s[it[i]];
            sum += wt[i];
        }
        if (c->norm_topk_prob)
            for (int i = 0; i < k; i++) wt[i] /= sum + 1e-20f;
        for (int i = 0; i < k; i++) wt[i] *= c->routed_scaling_factor;
    }
    return SL_OK;
}

int moe_route_layer(const struct sl_config *c, float *logits, const float *sel_bias,
                    int n, int32_t *ids, float *w) {
    return c->router_kind == SL_ROUTER_NOAUX_TC
               ? moe_route_noaux_tc(c, logits, sel_bias, n, ids, w)
               : moe_route(c, logits, n, ids, w);
}

int moe_route_predict(const struct sl_config *c, float *logits, const float *router_b,
                      const float *sel_bias, int n, int32_t *out, int *n_out) {
    int ne = (int)c->n_experts, k = (int)c->n_experts_used, np = 0, st;
    *n_out = 0;
    if (k > MOE_ROUTE_PREDICT_MAX_K)
        return sl_seterr(SL_ERR_ARG, "router lookahead: top-%d above the %d it predicts",
                         k, MOE_ROUTE_PREDICT_MAX_K);
    int32_t ids[MOE_ROUTE_PREDICT_MAX_K];
    float w[MOE_ROUTE_PREDICT_MAX_K];
    for (int t = 0; t < n; t++) { /* one token at a time: routing is per token */
        float *p = logits + (size_t)t * ne;
        if (router_b) ops_add(p, router_b, ne); /* as forward.c's add_bias */
        if ((st = moe_route_layer(c, p, sel_bias, 1, ids, w))) return st;
        for (int i = 0; i < k; i++) {
            int dup = 0;
            for (int j = 0; j < np && !dup; j++) dup = out[j] == ids[i];
            if (!dup) out[np++] = ids[i];
        }
    }
    *n_out = np;
    return SL_OK;
}
