/*
 * layer_mla_cuda.cuh — deepseek_v3 on the CUDA backend (C++, src/cuda only):
 * multi-head latent attention (MLA) over a device latent cache, the
 * noaux_tc router (sigmoid, e_score_correction_bias for selection only,
 * group-limited top-k, renormalisation, routed_scaling_factor) and the
 * shared experts. Implemented in layer_mla_cuda.cu; the CPU specification
 * is src/layer_mla.c and src/moe_route.c.
 *
 * The device cache has the CPU's form (layer_mla.h): per layer and
 * position one row [rmsnorm(latent) (kv_lora_rank), rope(k_rot)
 * (qk_rope_head_dim)] of float32, never expanded K and V. Attention runs in
 * the absorbed form, as the CPU's forward pass does: q_nope is multiplied
 * into kv_b_proj's key rows, attention is multi-query over the latent rows,
 * and the value rows of kv_b_proj are applied after the softmax.
 *
 * What it is not: the qwen3_moe stages (forward_cuda.cu) nor the routed
 * experts' kernels (ops_cuda.cu), which deepseek_v3 reuses unchanged.
 * Everything reads positions from device memory, so the decode step can be
 * captured in the backend's CUDA graph.
 */
#ifndef SL_CUDA_LAYER_MLA_CUDA_CUH
#define SL_CUDA_LAYER_MLA_CUDA_CUH

#include "cuda/internal.cuh"

/* What the backend cannot run of a deepseek_v3 / MLA model: SL_OK, or
 * SL_ERR_UNSUPPORTED naming the feature ("HINT: --device cpu"). */
int mla_cuda_check(const struct sl_model *m);

/* After upload_dense: cm->mla with the device pointers of the MLA weights,
 * selection biases and shared experts (all inside the uploaded dense
 * region) and the rope table. SL_ERR_NOMEM / SL_ERR_IO on failure. Freed
 * by mla_cuda_model_free (NULL is a no-op). */
int mla_cuda_model_create(struct cuda_model *cm);
void mla_cuda_model_free(struct mla_cuda_model *mm);

/* cc->mla: the latent cache (n_layers, n_ctx, kv_lora_rank +
 * qk_rope_head_dim) and MLA activations for ctx->n_batch tokens.
 * SL_ERR_NOMEM names the sizes. Freed by mla_cuda_ctx_free. */
int mla_cuda_ctx_create(const struct sl_context *ctx, struct cuda_ctx *cc);
void mla_cuda_ctx_free(struct mla_cuda_ctx *mc);

/* forward_cuda.cu's attention_block for an MLA model: rmsnorm(x) →
 * MLA (cache rows *d_pos .. + n - 1 written) → x += o_proj, then the ffn
 * rmsnorm of x into cc->xb. */
int mla_attention_block_cuda(struct cuda_model *cm, struct cuda_ctx *cc,
                             struct sl_context *ctx, uint32_t l, int n);

/* route_cuda for the noaux_tc router of layer l: logits (n, n_experts) →
 * ids, w (n, k), exactly moe_route_noaux_tc's choices (ties to the lower id)
 * and weights; with table and n == 1 also the decode items, as route_cuda. */
int route_noaux_layer_cuda(const struct cuda_model *cm, uint32_t l, cudaStream_t s,
                           const float *logits, int n, int32_t *ids, float *w,
                           uint8_t *const *table, struct part_off off,
                           struct moe_item *items, int32_t *sel, int32_t *n_items);

/* forward_cuda.cu's moe_block: the routed experts of layer l added into
 * cc->x (n, hidden). */
typedef int (*mla_routed_fn)(struct cuda_model *cm, struct cuda_ctx *cc, struct sl_context *ctx,
                             uint32_t l, int n, int router_done);

/* MoE layer l of a deepseek_v3 model in the CPU's order of sums: t =
 * shared(xb) (down(silu(gate xb) * up xb)), then routed() adds the routed
 * experts onto t (cc->x pointed at t meanwhile), then x += t: x + (routed +
 * shared), as forward.c. Without shared experts: routed() alone. */
int mla_moe_cuda(struct cuda_model *cm, struct cuda_ctx *cc, struct sl_context *ctx,
                 uint32_t l, int n, int router_done, mla_routed_fn routed);

#endif /* SL_CUDA_LAYER_MLA_CUDA_CUH */
