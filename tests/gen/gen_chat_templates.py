#!/usr/bin/env python3
"""Writes tests/fixtures/chat/<name>.json: conversations rendered by
transformers' tokenizer.apply_chat_template(tokenize=False) with the chat
template of a model's tokenizer_config.json. tests/test_chat_template.c renders
the same conversations with src/chat_template.c and compares byte for byte.

Usage: python tests/gen/gen_chat_templates.py   (needs transformers; run from
the repository root). Templates: Qwen3 (/work/shared/tokenizers/qwen3, also
committed at tests/fixtures/tokenizer/qwen3) and the demo model (models/demo).
"""
import json, os, sys
import transformers
from transformers import AutoTokenizer

SYS = {"role": "system", "content": "You are a helpful assistant."}
U1 = {"role": "user", "content": "Hello! What is 2+2?"}
A1 = {"role": "assistant", "content": "2+2 is 4."}
U2 = {"role": "user", "content": "And 3+3? Réponds en français — merci ✓"}
A_THINK = {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n6."}
A_RC = {"role": "assistant", "content": "It is 6.", "reasoning_content": "3 plus 3 makes 6"}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                         "required": ["city"]}}}]
A_TOOL = {"role": "assistant", "content": "", "tool_calls": [
    {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}]}
T_RESP = {"role": "tool", "content": "{\"temp\": 21}"}

CASES = [
    ("single_user", [U1], True, {}),
    ("system_multi_turn", [SYS, U1, A1, U2], True, {}),
    ("system_multi_turn_no_gen", [SYS, U1, A1, U2, A1], False, {}),
    ("no_thinking", [U1], True, {"enable_thinking": False}),
    ("thinking_true", [SYS, U1], True, {"enable_thinking": True}),
    ("think_in_content", [U1, A1, U2, A_THINK], False, {}),
    ("reasoning_content", [U1, A_RC, U2, A_RC], False, {}),
    ("tools_and_calls", [SYS, U1, A_TOOL, T_RESP, T_RESP, A1], True, {"tools": TOOLS}),
]
DEMO_CASES = CASES[:3]


def write(name, tok_dir, cases):
    tok = AutoTokenizer.from_pretrained(tok_dir)
    out = {"generator": "tests/gen/gen_chat_templates.py",
           "transformers": transformers.__version__,
           "template_from": tok_dir + "/tokenizer_config.json", "cases": []}
    for cname, msgs, agp, extra in cases:
        kw = dict(extra)
        tools = kw.pop("tools", None)
        s = tok.apply_chat_template(msgs, tools=tools, tokenize=False,
                                    add_generation_prompt=agp, **kw)
        vars_ = {"messages": msgs, "add_generation_prompt": agp}
        if tools is not None:
            vars_["tools"] = tools
        vars_.update(kw)
        out["cases"].append({"name": cname, "vars": vars_, "expected": s})
    path = f"tests/fixtures/chat/{name}.json"
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
    print(path, len(out["cases"]), "cases")


write("qwen3", "tests/fixtures/tokenizer/qwen3", CASES)
write("demo", "models/demo", DEMO_CASES)
