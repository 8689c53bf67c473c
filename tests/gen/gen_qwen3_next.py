#!/usr/bin/env python3
"""gen_qwen3_next.py — golden fixtures for the hybrid Qwen families (qwen3_next,
qwen3_5_moe) from HF transformers.

What it is: for tiny configurations of Qwen3NextForCausalLM,
Qwen3_5MoeForCausalLM (model_type qwen3_5_moe_text) and the multimodal
Qwen3_5MoeForConditionalGeneration (model_type qwen3_5_moe, text model under
model.language_model.*, a tiny vision tower and extra mtp.* tensors, as the
released checkpoints carry), it writes a checkpoint directory (config.json,
bf16 model.safetensors), loads it back with from_pretrained (no missing,
unexpected or mismatched keys), and records the float32 logits of a 40-token
prompt (transformers' chunked delta rule) and a 16-token greedy continuation
(full recompute). The configurations vary head counts (GQA, MQA, grouped and
ungrouped value heads), full_attention_interval / layer_types, the conv
kernel, partial rotary, shared-expert sizes, a dense layer, top-k
renormalisation and both expert layouts (per expert, fused gate_up_proj).

Layout: tests/fixtures/<model_type dir>/<name>/{config.json,
model.safetensors, generation_config.json, logits.f32, generated.json,
meta.json}.

What it is not: run by `make test` (torch and transformers are not needed to
build or test sluice; the outputs are committed).

Invariants: every weight is bf16-exact; a seed is kept only if its greedy
margins, router top-k gaps and simulated q8/q4 weight rounding (sluice's
formats, weights only, matrices sluice quantizes) leave the golden test's
tolerances reachable by a correct engine; HF's cached generate() (the
recurrent delta rule) must agree with the full-recompute greedy tokens.

Usage: /tmp/tv/bin/python tests/gen/gen_qwen3_next.py --out tests/fixtures
"""
import argparse
import json
import math
import os
import platform
import shutil
import struct
import sys
import tempfile

import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file
from transformers import Qwen3NextConfig, Qwen3NextForCausalLM
from transformers.models.qwen3_5_moe import (Qwen3_5MoeConfig, Qwen3_5MoeForCausalLM,
                                             Qwen3_5MoeForConditionalGeneration,
                                             Qwen3_5MoeTextConfig)

N_PROMPT = 40
N_GEN = 16
V = 512
MIN_GREEDY_MARGIN = 1e-2   # relative to the logits' standard deviation
MIN_ROUTER_GAP = 1e-3     # ~1000x the float32 differences between engines
MIN_DISTINCT = 4
MIN_IDEAL_Q8_COS = 0.9997
MIN_IDEAL_Q4_COS = 0.992
MAX_TRIES = 40
BRANCH_SCALE = 0.3
EXPERT_SCALE = 0.2          # routed experts' down_proj: keeps q4 rounding small

COMMON = dict(vocab_size=V, max_position_embeddings=512, hidden_act="silu", rms_norm_eps=1e-6,
              tie_word_embeddings=False)

# (kind, name, config kwargs, options). kind: next | text | wrapper.
CONFIGS = [
    # Qwen3-Next hub style: fused in_proj_qkvz / in_proj_ba, 2 value heads
    # per key head, interval 4, partial rotary 0.25, per-expert experts.
    ("next", "base", dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                          num_key_value_heads=2, head_dim=16, linear_num_key_heads=2,
                          linear_num_value_heads=4, linear_key_head_dim=16,
                          linear_value_head_dim=16, linear_conv_kernel_dim=4,
                          num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                          shared_expert_intermediate_size=48, intermediate_size=96,
                          full_attention_interval=4, rope_theta=10000.0,
                          partial_rotary_factor=0.25),
     dict(experts="split", hub_config=True)),
    # interval 2, a dense layer (mlp_only_layers), MQA, head_dim 32 with
    # half rotary, kernel 3, no top-k renormalisation, fused experts.
    ("next", "dense_mqa", dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=2,
                               num_key_value_heads=1, head_dim=32, linear_num_key_heads=1,
                               linear_num_value_heads=2, linear_key_head_dim=32,
                               linear_value_head_dim=16, linear_conv_kernel_dim=3,
                               num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                               shared_expert_intermediate_size=64, intermediate_size=96,
                               full_attention_interval=2, mlp_only_layers=[2],
                               norm_topk_prob=False,
                               rope_parameters=dict(rope_type="default", rope_theta=1e6,
                                                    partial_rotary_factor=0.5)),
     dict(experts="fused", hub_config=False)),
    # The multimodal wrapper as Qwen3.5 ships: model.language_model.*, a
    # vision tower, mtp.* tensors; v_dim > k_dim, top-3, fused experts.
    ("wrapper", "mm", dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                           num_key_value_heads=1, head_dim=16, linear_num_key_heads=2,
                           linear_num_value_heads=2, linear_key_head_dim=16,
                           linear_value_head_dim=32, linear_conv_kernel_dim=4,
                           num_experts=8, num_experts_per_tok=3, moe_intermediate_size=32,
                           shared_expert_intermediate_size=32,
                           rope_parameters=dict(rope_type="default", rope_theta=1e7,
                                                partial_rotary_factor=0.25,
                                                mrope_interleaved=True,
                                                mrope_section=[1, 1, 0])),
     dict(experts="fused")),
    # qwen3_5_moe_text: explicit layer_types, 3 heads, kernel 2, 3 value
    # heads... grouped 2 per key head, per-expert experts.
    ("text", "small", dict(hidden_size=96, num_hidden_layers=3, num_attention_heads=3,
                           num_key_value_heads=3, head_dim=32, linear_num_key_heads=3,
                           linear_num_value_heads=6, linear_key_head_dim=16,
                           linear_value_head_dim=16, linear_conv_kernel_dim=2,
                           num_experts=6, num_experts_per_tok=2, moe_intermediate_size=32,
                           shared_expert_intermediate_size=96,
                           layer_types=["linear_attention", "full_attention",
                                        "linear_attention"],
                           rope_parameters=dict(rope_type="default", rope_theta=1e4,
                                                partial_rotary_factor=0.25)),
     dict(experts="split")),
]
DIRS = {"next": "qwen3_next", "text": "qwen3_5_moe", "wrapper": "qwen3_5_moe"}
VISION = dict(depth=1, hidden_size=32, intermediate_size=32, num_heads=2, out_hidden_size=64,
              patch_size=4, temporal_patch_size=1, spatial_merge_size=1)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def make(kind, kw):
    kw = dict(COMMON, **kw)
    ids = dict(bos_token_id=V - 2, eos_token_id=V - 1)
    if kind == "next":
        cfg = Qwen3NextConfig(**kw, **ids)
        cls = Qwen3NextForCausalLM
    elif kind == "text":
        cfg = Qwen3_5MoeTextConfig(**kw, **ids)
        cls = Qwen3_5MoeForCausalLM
    else:
        tie = kw.pop("tie_word_embeddings")
        cfg = Qwen3_5MoeConfig(text_config=dict(kw, **ids), vision_config=VISION,
                               tie_word_embeddings=tie)
        cls = Qwen3_5MoeForConditionalGeneration
    cfg._attn_implementation = "eager"
    return cfg, cls


def bf16(t):
    return t.to(torch.bfloat16).to(torch.float32)


def init_weights(model, gen):
    """bf16-exact random weights, moderate scales, by parameter name."""
    sd = {}
    for name, p in model.state_dict().items():
        shp = p.shape
        n = lambda std: bf16(std * torch.randn(*shp, generator=gen))
        fan_in = shp[-1] if len(shp) >= 2 else 1
        if "visual" in name:
            w = n(0.02)
        elif name.endswith("embed_tokens.weight"):
            w = n(0.5)
        elif name == "lm_head.weight":
            w = n(1.5 / fan_in ** 0.5)
        elif name.endswith("linear_attn.norm.weight"):      # plain weight
            w = bf16(1 + 0.1 * torch.randn(*shp, generator=gen))
        elif name.endswith("norm.weight"):                  # zero-centred (1 + w)
            w = n(0.1)
        elif name.endswith("A_log"):
            w = bf16(torch.log(0.05 + 2.5 * torch.rand(*shp, generator=gen)))
        elif name.endswith("dt_bias"):
            w = n(0.5)
        elif name.endswith("conv1d.weight"):
            w = n(0.5)
        elif name.endswith("experts.down_proj"):
            w = n(EXPERT_SCALE / fan_in ** 0.5)
        elif name.endswith(("o_proj.weight", "out_proj.weight", "down_proj.weight")):
            w = n(BRANCH_SCALE / fan_in ** 0.5)
        else:
            w = n(fan_in ** -0.5)
        sd[name] = w
    model.load_state_dict(sd, strict=True)
    return sd


def to_checkpoint(sd, experts):
    """Native state dict -> checkpoint tensors: experts per expert or fused."""
    out = {}
    for k, v in sd.items():
        if experts == "split" and k.endswith("mlp.experts.gate_up_proj"):
            p = k[: -len("gate_up_proj")]
            f = v.shape[1] // 2
            for e in range(v.shape[0]):
                out[f"{p}{e}.gate_proj.weight"] = v[e, :f]
                out[f"{p}{e}.up_proj.weight"] = v[e, f:]
        elif experts == "split" and k.endswith("mlp.experts.down_proj"):
            p = k[: -len("down_proj")]
            for e in range(v.shape[0]):
                out[f"{p}{e}.down_proj.weight"] = v[e]
        else:
            out[k] = v
    return out


def add_mtp(ck, H, gen):
    """A few mtp.* tensors like the released checkpoints' (ignored by HF and
    skipped by sluice)."""
    ck["mtp.fc.weight"] = bf16(0.02 * torch.randn(H, 2 * H, generator=gen))
    ck["mtp.norm.weight"] = torch.zeros(H)
    ck["mtp.pre_fc_norm_embedding.weight"] = torch.zeros(H)
    ck["mtp.layers.0.input_layernorm.weight"] = torch.zeros(H)


def save_ck(ck, d):
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in ck.items()},
              os.path.join(d, "model.safetensors"), metadata={"format": "pt"})


def hub_config(d):
    """Qwen3-Next hub spelling: rope_theta and partial_rotary_factor at the
    top level, rope_scaling null, full_attention_interval, torch_dtype."""
    p = os.path.join(d, "config.json")
    c = json.load(open(p))
    rp = c.pop("rope_parameters")
    c["rope_theta"] = rp["rope_theta"]
    c["partial_rotary_factor"] = rp["partial_rotary_factor"]
    c["rope_scaling"] = None
    c["full_attention_interval"] = 4
    c.pop("layer_types")
    c["torch_dtype"] = c.pop("dtype", "bfloat16")
    json.dump(dict(sorted(c.items())), open(p, "w"), indent=2)


def load(cls, d):
    m, info = cls.from_pretrained(d, dtype=torch.float32, attn_implementation="eager",
                                  output_loading_info=True)
    bad = {k: v for k, v in info.items() if v and k in
           ("missing_keys", "unexpected_keys", "mismatched_keys")}
    assert not bad, f"{d}: loading info {bad}"
    return m.eval()


def text_layers(model):
    base = model.model
    return base.language_model.layers if hasattr(base, "language_model") else base.layers


@torch.no_grad()
def reference(model, prompt, k):
    logits = model(input_ids=torch.tensor([prompt])).logits[0].float()
    seq = list(prompt)
    gen, margins = [], []
    for _ in range(N_GEN):
        last = model(input_ids=torch.tensor([seq])).logits[0, -1].float()
        top2 = torch.topk(last, 2).values
        margins.append(float(top2[0] - top2[1]))
        tok = int(torch.argmax(last))
        gen.append(tok)
        seq.append(tok)
    ins, hs, rs = {}, [], []
    for i, layer in enumerate(text_layers(model)):
        g = getattr(layer.mlp, "gate", None)
        if g is None or not hasattr(g, "top_k"):
            continue
        rs.append((i, g))
        hs.append(g.register_forward_pre_hook(
            lambda m, a, i=i: ins.__setitem__(i, a[0].detach().reshape(-1, a[0].shape[-1]))))
    model(input_ids=torch.tensor([seq[:-1]]))
    for h in hs:
        h.remove()
    gap = float("inf")
    for i, r in rs:
        lg = F.linear(ins[i].float(), r.weight.float())
        s = torch.sort(lg, dim=-1, descending=True).values
        gap = min(gap, float((s[:, k - 1] - s[:, k]).min()))
    return logits, gen, min(margins), gap


def fake_quant(w, dtype):
    """sluice's q8 / q4 blocks of 32 along the last dimension."""
    b = w.reshape(-1, 32).float()
    if dtype == "q8":
        d = (b.abs().amax(1, keepdim=True) / 127).half().float()
        q = torch.where(d > 0, torch.round(b / d.clamp_min(1e-30)),
                        torch.zeros_like(b)).clamp(-127, 127)
        return (q * d).reshape(w.shape)
    m = b.amin(1, keepdim=True).half().float()
    d = ((b.amax(1, keepdim=True) - b.amin(1, keepdim=True)) / 15).half().float()
    q = torch.where(d > 0, torch.round((b - m) / d.clamp_min(1e-30)),
                    torch.zeros_like(b)).clamp(0, 15)
    return (q * d + m).reshape(w.shape)


F32_SUFFIXES = ("mlp.gate.weight", "in_proj_ba.weight", "in_proj_a.weight",
                "in_proj_b.weight", "conv1d.weight", "shared_expert_gate.weight")


def quant_ck(ck, expert_dtype, dense_dtype):
    """What sluice stores: f32 for 1-D tensors and F32_SUFFIXES, experts in
    expert_dtype, other matrices in dense_dtype; bf16 where the last dim is
    not a multiple of 32."""
    out = {}
    for k, v in ck.items():
        if v.dim() < 2 or k.endswith(F32_SUFFIXES) or "visual" in k or k.startswith("mtp."):
            out[k] = v
            continue
        dt = expert_dtype if ".experts." in k else dense_dtype
        out[k] = fake_quant(v, dt) if dt and v.shape[-1] % 32 == 0 else v
    return out


@torch.no_grad()
def ideal_quant_cos(cls, ck, d, prompt, ref, expert_dtype, dense_dtype):
    with tempfile.TemporaryDirectory() as t:
        shutil.copy(os.path.join(d, "config.json"), t)
        save_file({k: v.contiguous() for k, v in quant_ck(ck, expert_dtype, dense_dtype).items()},
                  os.path.join(t, "model.safetensors"), metadata={"format": "pt"})
        m = load(cls, t)
        lg = m(input_ids=torch.tensor([prompt])).logits[0].float()
    c = F.cosine_similarity(lg, ref, dim=-1)
    return float(c.mean()), float(c.min()), int((lg.argmax(-1) == ref.argmax(-1)).sum())


def write_f32(path, t):
    v = t.detach().to(torch.float32).contiguous().flatten().tolist()
    with open(path, "wb") as f:
        f.write(struct.pack(f"<{len(v)}f", *v))


def gen_one(kind, name, kw, opt, seed0, out):
    cfg, cls = make(kind, kw)
    d = os.path.join(out, DIRS[kind], name)
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    k = kw["num_experts_per_tok"]
    for t in range(MAX_TRIES):
        seed = seed0 + t
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        model = cls(cfg).eval()
        sd = init_weights(model, gen)
        ck = to_checkpoint(sd, opt["experts"])
        if kind == "wrapper":
            add_mtp(ck, kw["hidden_size"], gen)
        prompt = torch.randint(0, V, (N_PROMPT,), generator=gen).tolist()
        cfg.save_pretrained(d)
        if opt.get("hub_config"):
            hub_config(d)
        save_ck(ck, d)
        model = load(cls, d)
        logits, g, gm, rg = reference(model, prompt, k)
        lstd = float(logits.std())
        log(f"{kind}/{name}: seed {seed}: greedy margin {gm:.4g} (logit std {lstd:.3g}), "
            f"router gap {rg:.4g}, {len(set(g))} distinct")
        if not (gm >= MIN_GREEDY_MARGIN * lstd and rg >= MIN_ROUTER_GAP
                and len(set(g)) >= MIN_DISTINCT):
            continue
        iq8 = ideal_quant_cos(cls, ck, d, prompt, logits, "q8", "q8")
        iq4 = ideal_quant_cos(cls, ck, d, prompt, logits, "q4", None)
        log(f"{kind}/{name}: seed {seed}: ideal q8 {iq8[0]:.6f}, q4 {iq4[0]:.6f}")
        if iq8[0] >= MIN_IDEAL_Q8_COS and iq4[0] >= MIN_IDEAL_Q4_COS:
            break
    else:
        raise SystemExit(f"{kind}/{name}: no seed in {MAX_TRIES} tries is clear")
    o = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=N_GEN,
                       pad_token_id=0, eos_token_id=None)[0, N_PROMPT:].tolist()
    with open(os.path.join(d, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": V - 2, "eos_token_id": V - 1, "do_sample": False}, f, indent=2)
    write_f32(os.path.join(d, "logits.f32"), logits)
    with open(os.path.join(d, "generated.json"), "w") as f:
        json.dump({"prompt": prompt, "generated": g}, f)
    meta = {"kind": kind, "class": cls.__name__, "name": name, "config_kwargs": kw,
            "options": opt, "seed": seed, "min_greedy_margin": gm, "logit_std": lstd,
            "min_router_logit_gap": rg, "distinct_greedy_ids": len(set(g)),
            "ideal_q8_cos_mean_min_top1": iq8, "ideal_q4_cos_mean_min_top1": iq4,
            "cached_generate_agrees_with_recompute_greedy": o == g,
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "transformers": transformers.__version__}}
    if o != g:
        raise SystemExit(f"{d}: HF's cached generate {o} differs from recompute {g}")
    meta["bytes"] = sum(os.path.getsize(os.path.join(d, fn)) for fn in os.listdir(d))
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
    log(f"{d}: {meta['bytes']} bytes, generated {g}")
    return meta


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="fixtures root (tests/fixtures)")
    ap.add_argument("--seed", type=int, default=4321)
    ap.add_argument("--only", nargs="*", help="names to generate")
    args = ap.parse_args()
    torch.set_num_threads(min(8, os.cpu_count() or 1))
    log(f"python {platform.python_version()} torch {torch.__version__} "
        f"transformers {transformers.__version__}")
    for kind, name, kw, opt in CONFIGS:
        if args.only and name not in args.only:
            continue
        gen_one(kind, name, kw, opt, args.seed, args.out)


if __name__ == "__main__":
    main()
