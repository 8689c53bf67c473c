#!/usr/bin/env python3
"""Writes tests/fixtures/chat/<name>.json: conversations rendered by
transformers' tokenizer.apply_chat_template(tokenize=False) with a model's
chat template. tests/test_chat_template.c renders the same conversations with
sluice's public chat API (sl_chat_create_from_source + sl_chat_render) and
compares byte for byte; cases with "error" must fail in both.

Usage: python tests/gen/gen_chat_templates.py   (needs transformers + jinja2;
run from the repository root). Templates:
  qwen3        tests/fixtures/tokenizer/qwen3/tokenizer_config.json
  demo         models/demo/tokenizer_config.json
  deepseek_v3  tests/fixtures/chat/templates/deepseek_v3.jinja
  mixtral      tests/fixtures/chat/templates/mixtral.jinja
  gpt_oss      tests/fixtures/chat/templates/gpt_oss.jinja
(provenance of the .jinja files: tests/fixtures/chat/README.md).

Every template is applied through a real tokenizer object (the demo model's,
with its chat_template replaced), so transformers' own preprocessing runs:
None-valued message keys are dropped, reasoning fields are aliased
(reasoning_content / thinking), the special tokens and keyword arguments
become template variables. gpt-oss's template calls strftime_now(): the clock
is frozen at FROZEN_DATE here, and the C test sets SOURCE_DATE_EPOCH to the
same instant (recorded in each file as "source_date_epoch").
"""
import copy, datetime as _dt, json
import transformers
import transformers.utils.chat_template_utils as ctu
from transformers import AutoTokenizer

FROZEN = _dt.datetime(2025, 8, 5, 12, 0, 0)
FROZEN_EPOCH = int(FROZEN.replace(tzinfo=_dt.timezone.utc).timestamp())


class _FrozenDatetime(_dt.datetime):
    @classmethod
    def now(cls, tz=None):
        return FROZEN


ctu.datetime = _FrozenDatetime  # strftime_now() reads the module's datetime

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

# ---- Mixtral (mistralai "v1" template): alternating roles, optional system
MX = {"bos_token": "<s>", "eos_token": "</s>"}
MIXTRAL_CASES = [
    ("single_user", [U1], True, MX),
    ("system_multi_turn", [SYS, U1, A1, U2], True, MX),
    ("multi_turn_no_system", [U1, A1, U2, A1], False, MX),
    ("system_then_long", [SYS, U1, A1, U2, A_THINK, U1], True, MX),
    ("err_two_users", [U1, U2], True, MX),
    ("err_assistant_first", [SYS, A1, U1], True, MX),
    ("err_tool_role", [U1, T_RESP], True, MX),
    ("err_two_systems", [SYS, SYS, U1], True, MX),
]

# ---- DeepSeek-V3.1: <｜User｜>/<｜Assistant｜> turns, thinking, tool calls
DS = {"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>"}
SYS2 = {"role": "system", "content": "Answer briefly."}
DS_TOOL = {"role": "assistant", "content": "", "tool_calls": [
    {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
    {"type": "function", "function": {"name": "get_time", "arguments": "{\"tz\": \"CET\"}"}}]}
DS_TOOL_TEXT = {"role": "assistant", "content": "Let me check.", "tool_calls": [
    {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]}
DS_TOOL_NULL = {"role": "assistant", "content": None, "tool_calls": DS_TOOL["tool_calls"]}
DS_PREFIX = {"role": "assistant", "content": "Sure", "prefix": True}
DEEPSEEK_CASES = [
    ("single_user", [U1], True, DS),
    ("system_multi_turn", [SYS, U1, A1, U2], True, DS),
    ("two_systems", [SYS, SYS2, U1], True, DS),
    ("no_gen", [SYS, U1, A1], False, DS),
    ("thinking_true", [SYS, U1], True, dict(DS, thinking=True)),
    ("enable_thinking_true", [U1, A1, U2], True, dict(DS, enable_thinking=True)),
    ("think_in_content", [U1, A_THINK, U2], True, DS),
    ("tool_calls", [SYS, U1, DS_TOOL, T_RESP, T_RESP, A1, U2], True, dict(DS, tools=TOOLS)),
    ("tool_call_with_text", [U1, DS_TOOL_TEXT, T_RESP], True, DS),
    ("prefix_thinking", [U1, DS_PREFIX], False, dict(DS, thinking=True)),
    ("err_tool_call_content_null", [U1, DS_TOOL_NULL], True, DS),
]

# ---- gpt-oss harmony: developer message, reasoning, tools, builtin tools
OSS = {"bos_token": "<|startoftext|>", "eos_token": "<|return|>"}
DEV = {"role": "developer", "content": "Talk like a pirate."}
A_THINKING = {"role": "assistant", "content": "4.", "thinking": "2 and 2 make 4"}
RICH_TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "City name"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
            "days": {"type": "integer", "default": 1},
            "precise": {"type": "boolean"},
            "ratio": {"type": "number", "nullable": True},
            "tags": {"type": "array", "items": {"type": "string"}},
            "points": {"type": "array", "items": {"type": "object", "properties": {
                "x": {"type": "number"}, "y": {"type": "number"}}, "required": ["x"]}},
            "where": {"type": "object", "properties": {
                "lat": {"type": "number"}, "lon": {"type": "number"}}, "required": ["lat", "lon"]},
            "mode": {"oneOf": [{"type": "string", "description": "a name"},
                               {"type": "integer", "default": 3}]},
            "either": {"type": ["string", "number"]},
            "note": {"type": "string", "nullable": True},
            "anything": {},
        }, "required": ["city"]}}},
    {"type": "function", "function": {"name": "ping", "description": "No arguments",
                                      "parameters": {"type": "object", "properties": {}}}},
]
OSS_CALL = {"role": "assistant", "content": "", "thinking": "I need the weather.", "tool_calls": [
    {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}]}
OSS_CALL_TEXT = {"role": "assistant", "content": "Checking the weather.", "tool_calls": [
    {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]}
OSS_RESULT = {"role": "tool", "content": "{\"temp\": 21, \"sky\": \"clear ☀\"}"}
OSS_FINAL = {"role": "assistant", "content": "It is 21 °C and clear in Paris."}
OSS_BAD = {"role": "assistant", "content": "<|channel|>final<|message|>hi"}
GPT_OSS_CASES = [
    ("single_user", [U1], True, OSS),
    ("system_multi_turn", [SYS, U1, A1, U2], True, OSS),
    ("developer_effort_high", [DEV, U1], True, dict(OSS, reasoning_effort="high")),
    ("model_identity", [U1], True, dict(OSS, model_identity="You are a test model.")),
    ("thinking_last_no_gen", [U1, A_THINKING], False, OSS),
    ("thinking_dropped_earlier", [U1, A_THINKING, U2], True, OSS),
    ("reasoning_content_alias", [U1, A_RC], False, OSS),
    ("tools_call_result_final", [SYS, U1, OSS_CALL, OSS_RESULT, OSS_FINAL, U2], True,
     dict(OSS, tools=RICH_TOOLS)),
    ("tool_call_pending", [U1, OSS_CALL, OSS_RESULT], True, dict(OSS, tools=RICH_TOOLS)),
    ("tool_call_content_as_analysis", [U1, OSS_CALL_TEXT, OSS_RESULT], True,
     dict(OSS, tools=TOOLS)),
    ("builtin_tools", [U1], True, dict(OSS, builtin_tools=["browser", "python"], reasoning_effort="low")),
    ("builtin_python_only", [DEV, U1], True, dict(OSS, builtin_tools=["python"], tools=TOOLS)),
    ("err_channel_tags_in_content", [U1, OSS_BAD, U2], True, OSS),
    ("err_tool_without_call", [U1, OSS_RESULT], True, OSS),
]


def write(name, template_file, cases, carrier="models/demo"):
    tok = AutoTokenizer.from_pretrained(carrier)
    if template_file.endswith(".json"):
        with open(template_file, encoding="utf-8") as f:
            src = json.load(f)["chat_template"]
    else:
        with open(template_file, encoding="utf-8") as f:
            src = f.read()
    tok.chat_template = src
    out = {"generator": "tests/gen/gen_chat_templates.py",
           "transformers": transformers.__version__,
           "template_file": template_file,
           "source_date_epoch": FROZEN_EPOCH, "cases": []}
    for cname, msgs, agp, extra in cases:
        kw = dict(extra)
        tools = kw.pop("tools", None)
        vars_ = {"messages": copy.deepcopy(msgs), "add_generation_prompt": agp}
        if tools is not None:
            vars_["tools"] = tools
        vars_.update(kw)
        case = {"name": cname, "vars": vars_}
        try:
            case["expected"] = tok.apply_chat_template(copy.deepcopy(msgs), tools=tools, tokenize=False,
                                                       add_generation_prompt=agp, **kw)
            if cname.startswith("err_"):
                raise SystemExit(f"{name}/{cname}: expected an exception")
        except Exception as e:  # jinja2 TemplateError / UndefinedError
            if not cname.startswith("err_"):
                raise
            case["error"] = str(e)
        out["cases"].append(case)
    path = f"tests/fixtures/chat/{name}.json"
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
    print(path, len(out["cases"]), "cases")


write("qwen3", "tests/fixtures/tokenizer/qwen3/tokenizer_config.json", CASES)
write("demo", "models/demo/tokenizer_config.json", DEMO_CASES)
write("mixtral", "tests/fixtures/chat/templates/mixtral.jinja", MIXTRAL_CASES)
write("deepseek_v3", "tests/fixtures/chat/templates/deepseek_v3.jinja", DEEPSEEK_CASES)
write("gpt_oss", "tests/fixtures/chat/templates/gpt_oss.jinja", GPT_OSS_CASES)
