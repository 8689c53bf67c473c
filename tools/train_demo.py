#!/usr/bin/env python3
"""train_demo.py — trains the embedded demo model (models/demo) and writes
transformers' reference numbers for it.

What it is: step 2 of reproducing models/demo (step 1, tools/demo_data.py,
writes the token files and the tokenizer). On one GPU it trains a small
qwen3_moe (Qwen3MoeForCausalLM from transformers, config DEMO below) on the
train chapters of the King James Bible with bf16 autocast, AdamW and a
warmup + cosine schedule, keeps the weights of the step with the lowest
validation loss, saves them in bf16 exactly as a hub checkpoint looks
(per-expert tensor names, tied embeddings, config.json as transformers 4.x
spells it), then RELOADS that checkpoint in float32 and computes from it:

  * perplexity of the held-out text (definition in PPL_DOC below);
  * greedy continuations (64 tokens) of a few prompts, with the smallest
    top-1/top-2 logit margin along each, so the golden test uses a prompt
    whose greedy path cannot flip under float rounding.

What it is not: not run by `make` or `make test` (torch/transformers are not
needed to build sluice); the outputs are committed (models/demo,
tests/fixtures/demo).

Invariants:
  * the reference numbers come from the committed bf16 weights, computed in
    float32 (TF32 off, eager attention, eager experts);
  * the seed fixes data order and initialisation; the GPU's atomics make
    the trained weights differ in the last bits between runs, so the
    committed checkpoint, not a rerun, is the reference.

Reproduce (after `python3 tools/demo_data.py --out .demo_data`):
  python3 tools/train_demo.py --data .demo_data --out OUT --steps 800 --seed 1
(800 steps of 32 x 512 tokens, about 13 epochs of the 0.99 M train tokens:
the validation loss bottoms out near there; longer runs memorise the text)
"""
import argparse
import copy
import json
import math
import os
import platform
import sys
import time

import numpy as np
import torch
import transformers
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "tests", "gen"))
from gen_qwen3_moe import expected_keys, hub_config, hub_state_dict  # noqa: E402

DEMO = dict(vocab_size=4096, hidden_size=256, num_hidden_layers=6,
            num_attention_heads=4, num_key_value_heads=2, head_dim=64,
            num_experts=32, num_experts_per_tok=4, moe_intermediate_size=64,
            intermediate_size=512, norm_topk_prob=True,
            tie_word_embeddings=True, rope_theta=10000.0, rms_norm_eps=1e-6)
CTX = 512
EOS_IDS = [0, 2]  # <|endoftext|>, <|im_end|>
PPL_WINDOW = 256
PPL_SMALL = 2048
PPL_DOC = ("tokens = encode(heldout.txt) with no special tokens; cut into "
           "non-overlapping windows of 256 tokens (the last one shorter); each "
           "window is evaluated from an empty cache; every token of a window "
           "but its first is scored; ppl = exp(sum of -log p / number scored)")
PROMPTS = ["And it came to pass, when the king", "In the beginning",
           "The LORD is my shepherd", "Blessed are the",
           "And Jesus answered and said unto them,"]
N_GREEDY = 64


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def load_u16(path):
    return torch.from_numpy(np.fromfile(path, dtype="<u2").astype(np.int64))


def make_config(train):
    cfg = Qwen3MoeConfig(**DEMO, max_position_embeddings=CTX,
                         bos_token_id=None, eos_token_id=EOS_IDS[0],
                         pad_token_id=0, hidden_act="silu",
                         use_sliding_window=False,
                         output_router_logits=train,
                         router_aux_loss_coef=0.01)
    return cfg


@torch.no_grad()
def valid_loss(model, ids, dev):
    n = (len(ids) - 1) // CTX
    x = ids[: n * CTX].view(n, CTX).to(dev)
    tot = 0.0
    for i in range(0, n, 16):
        b = x[i:i + 16]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            lg = model(input_ids=b).logits
        ce = torch.nn.functional.cross_entropy(
            lg[:, :-1].float().reshape(-1, lg.shape[-1]), b[:, 1:].reshape(-1))
        tot += ce.item() * len(b)
    return tot / n


def set_experts(model, impl):
    if hasattr(model, "set_experts_implementation"):
        model.set_experts_implementation(impl)


def train(a, dev):
    torch.manual_seed(a.seed)
    tr = load_u16(os.path.join(a.data, "train.u16")).to(dev)
    va = load_u16(os.path.join(a.data, "valid.u16"))
    cfg = make_config(True)
    model = Qwen3MoeForCausalLM(cfg).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"params {n_params} ({n_params * 2 / 2**20:.1f} MiB bf16)")
    impl = "eager"
    if not a.eager:
        try:
            set_experts(model, "grouped_mm")
            x = tr[: 2 * CTX].view(2, CTX)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                model(input_ids=x, labels=x).loss.backward()
            model.zero_grad(set_to_none=True)
            impl = "grouped_mm"
        except Exception as e:  # older transformers or no kernel
            log(f"grouped_mm unavailable ({type(e).__name__}: {e}); eager")
            set_experts(model, "eager")
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    nodecay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": nodecay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
    g = torch.Generator(device="cpu").manual_seed(a.seed)
    steps, warm = a.steps, min(100, a.steps // 10 + 1)

    def lr_at(s):
        if s < warm:
            return a.lr * (s + 1) / warm
        f = (s - warm) / max(1, steps - warm)
        return a.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(f, 1.0))))

    best, best_state, best_step, hist = float("inf"), None, -1, []
    t0 = time.time()
    s = 0
    while s < steps:
        for grp in opt.param_groups:
            grp["lr"] = lr_at(s)
        off = torch.randint(0, len(tr) - CTX, (a.batch,), generator=g)
        x = torch.stack([tr[o:o + CTX] for o in off.tolist()])
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(input_ids=x, labels=x)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        s += 1
        if s == 30 and a.max_seconds:
            per = (time.time() - t0) / 30
            fit = int(a.max_seconds / per)
            if fit < steps:
                log(f"{per * 1000:.0f} ms/step: {steps} steps would not fit "
                    f"in {a.max_seconds}s; running {fit}")
                steps = fit
        if s % a.eval_every == 0 or s == steps:
            model.eval()
            v = valid_loss(model, va, dev)
            model.train()
            hist.append({"step": s, "train_loss": round(out.loss.item(), 4),
                         "valid_loss": round(v, 4),
                         "seconds": round(time.time() - t0, 1)})
            log(json.dumps(hist[-1]))
            if v < best:
                best, best_step = v, s
                best_state = {k: t.detach().clone()
                              for k, t in model.state_dict().items()}
    model.load_state_dict(best_state)
    return model, {"params": n_params, "steps": steps, "best_step": best_step,
                   "best_valid_loss": best, "experts_impl": impl,
                   "seconds": round(time.time() - t0, 1), "history": hist,
                   "lr": a.lr, "batch": a.batch, "ctx": CTX, "seed": a.seed}


def save(model, d):
    os.makedirs(d, exist_ok=True)
    from safetensors.torch import save_file
    sd = hub_state_dict(model, DEMO)
    assert set(sd) == expected_keys(DEMO), sorted(set(sd) ^ expected_keys(DEMO))[:8]
    save_file(sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    cfg = make_config(False)
    cfg.save_pretrained(d)
    hub_config(d, DEMO)
    p = os.path.join(d, "config.json")
    with open(p) as f:
        c = json.load(f)
    c["torch_dtype"] = "bfloat16"
    c["architectures"] = ["Qwen3MoeForCausalLM"]
    with open(p, "w") as f:
        json.dump(dict(sorted(c.items())), f, indent=2)
        f.write("\n")
    with open(os.path.join(d, "generation_config.json"), "w") as f:
        json.dump({"do_sample": False, "eos_token_id": EOS_IDS,
                   "pad_token_id": 0}, f, indent=2)
        f.write("\n")


@torch.no_grad()
def perplexity(model, ids, dev, max_tokens=None):
    ids = ids[:max_tokens] if max_tokens else ids
    nll, n = 0.0, 0
    for s in range(0, len(ids), PPL_WINDOW):
        w = ids[s:s + PPL_WINDOW]
        if len(w) < 2:
            continue
        x = w[None]
        lp = torch.log_softmax(model(input_ids=x).logits[0, :-1].double(), -1)
        nll -= lp.gather(1, x[0, 1:, None]).sum().item()
        n += len(w) - 1
    return {"tokens": len(ids), "scored": n, "nll": nll,
            "ppl": math.exp(nll / n)}


@torch.no_grad()
def greedy(model, tok, prompt, dev, n_gen):
    ids = tok.encode(prompt).ids
    x = torch.tensor(ids)[None]
    gen, margin = [], float("inf")
    for _ in range(n_gen):
        lg = model(input_ids=x).logits[0, -1].float()
        top = torch.topk(lg, 2)
        nxt = int(top.indices[0])
        if nxt in EOS_IDS:
            break
        margin = min(margin, float(top.values[0] - top.values[1]))
        gen.append(nxt)
        x = torch.cat([x, torch.tensor([[nxt]])], 1)
    out = model.generate(torch.tensor(ids)[None], do_sample=False,
                         max_new_tokens=n_gen, eos_token_id=EOS_IDS,
                         pad_token_id=0)
    hf_gen = [t for t in out[0, len(ids):].tolist()]
    while hf_gen and hf_gen[-1] in EOS_IDS:
        hf_gen.pop()
    return {"prompt": prompt, "prompt_ids": ids, "ids": gen,
            "text": tok.decode(gen, skip_special_tokens=False),
            "min_margin": margin, "generate_agrees": hf_gen == gen}


def load_eager(d):
    """The saved checkpoint in float32 with eager attention and experts."""
    try:
        m = Qwen3MoeForCausalLM.from_pretrained(
            d, dtype=torch.float32, attn_implementation="eager",
            experts_implementation="eager")
    except TypeError:
        m = Qwen3MoeForCausalLM.from_pretrained(
            d, dtype=torch.float32, attn_implementation="eager")
    set_experts(m, "eager")
    return m.eval()


@torch.no_grad()
def reference(a, d, dev, trained):
    """Every reference number, on the CPU in float32 from the saved files."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(a.tokenizer_dir, "tokenizer.json"))
    dev = "cpu"
    torch.set_num_threads(os.cpu_count() or 1)
    m = load_eager(d)
    log("experts impl:", getattr(m.config, "_experts_implementation", None),
        "attn:", getattr(m.config, "_attn_implementation", None))
    # The reload holds exactly the bf16-rounded trained weights: the same
    # state dict loaded into a second eager copy gives the same logits.
    t = load_eager(d)
    sd = {k: v.detach().to("cpu", torch.bfloat16).to(torch.float32)
          for k, v in trained.state_dict().items()}
    t.load_state_dict(sd, strict=True)
    x = load_u16(os.path.join(a.data, "heldout.u16"))[:128][None]
    d_max = float((m(input_ids=x).logits - t(input_ids=x).logits).abs().max())
    log(f"reload max |dlogit| {d_max:.3g}")
    if d_max >= 1e-4:
        log(f"WARNING: the reloaded checkpoint differs from the trained weights")
    held = load_u16(os.path.join(a.data, "heldout.u16"))
    with open(os.path.join(a.heldout_txt), encoding="utf-8") as f:
        assert tok.encode(f.read()).ids == held.tolist(), "heldout.u16 stale"
    res = {"ppl_definition": PPL_DOC, "window": PPL_WINDOW,
           "reload_max_abs_dlogit": d_max,
           "ppl_full": perplexity(m, held, dev),
           "ppl_first_2048": perplexity(m, held, dev, PPL_SMALL)}
    log("ppl", res["ppl_full"]["ppl"], res["ppl_first_2048"]["ppl"])
    res["greedy"] = [greedy(m, tok, p, dev, a.n_greedy) for p in a.prompts]
    for g_ in res["greedy"]:
        log(f"{g_['min_margin']:.4f} {g_['generate_agrees']} "
            f"{g_['prompt']!r} -> {g_['text']!r}")
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=".demo_data")
    ap.add_argument("--tokenizer-dir", default="models/demo")
    ap.add_argument("--heldout-txt", default="tests/fixtures/demo/heldout.txt")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--max-seconds", type=float, default=0,
                    help="cut --steps to what fits (measured over 30 steps)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--eager", action="store_true")
    ap.add_argument("--smoke", action="store_true",
                    help="a few steps and short references: checks the paths")
    a = ap.parse_args()
    a.prompts, a.n_greedy = PROMPTS, N_GREEDY
    if a.smoke:
        a.steps, a.eval_every, a.batch, a.max_seconds = 40, 20, 4, 0
        a.prompts, a.n_greedy = PROMPTS[:1], 4
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    dev = "cuda"
    model, info = train(a, dev)
    save(model, a.out)
    with open(os.path.join(a.out, "train.json"), "w") as f:
        json.dump(info, f, indent=1)
    res = reference(a, a.out, dev, model)
    res["train"] = info
    res["config"] = DEMO
    res["versions"] = {"python": platform.python_version(),
                       "torch": torch.__version__,
                       "transformers": transformers.__version__,
                       "gpu": torch.cuda.get_device_name(0)}
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
