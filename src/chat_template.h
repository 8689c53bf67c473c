/*
 * chat_template.h — a strict interpreter for the subset of Jinja2 that
 * HuggingFace chat templates use (tokenizer_config.json "chat_template").
 *
 * What it is: a lexer, parser and tree-walking evaluator that renders a
 * template with the variables transformers' apply_chat_template passes
 * (messages, add_generation_prompt, tools, bos_token, eos_token, extra
 * keyword arguments such as enable_thinking), with transformers' environment
 * settings: trim_blocks and lstrip_blocks on, loop controls (break, continue)
 * on, {% generation %} blocks rendered transparently.
 *
 * Supported: text, {{ expr }}, {% if/elif/else %}, {% for x in xs %} and
 * {% for a, b in pairs %} with loop.index/index0/first/last/length/
 * revindex/revindex0 and {% else %}, {% set x = e %} and {% set ns.x = e %}
 * (namespace()), {% break %}, {% continue %}, whitespace control (-, +),
 * {% macro name(a, b=default) %} (called with positional and keyword
 * arguments, recursion bounded, seeing its arguments and the template's
 * top-level variables), comments; literals (strings, ints, floats,
 * true/false/none, lists), +, -, *,
 * /, //, %, ~, comparisons, in / not in, is / is not tests (defined,
 * undefined, none, string, number, integer, float, boolean, true, false,
 * mapping, sequence, iterable, even, odd), and/or/not, a if c else b,
 * attribute and subscript access, negative indices, slices [a:b:c], filters
 * (trim, length, count, tojson with json.dumps' ensure_ascii / indent /
 * separators / sort_keys, string, default/d, upper, lower, first, last,
 * join, list, int, capitalize, items), methods (startswith, endswith,
 * split with maxsplit, strip, lstrip, rstrip, replace, upper, lower, items,
 * keys, values, get), functions namespace(), raise_exception(), range(),
 * strftime_now() (local time, or SOURCE_DATE_EPOCH in UTC when that
 * environment variable is set).
 *
 * What it is not: full Jinja. Call blocks, macro *args and **kwargs, includes,
 * filters or
 * tests or methods outside the lists above, dict literals and {% raw %} are
 * refused with SL_ERR_UNSUPPORTED when the template is parsed — never
 * skipped silently. Scoping follows Jinja: a {% set %} inside a for loop
 * does not leak out of it (hence namespace()).
 *
 * Limits: a rendered string stops at 64 MiB and macro calls nest at most
 * 64 deep (SL_ERR_ARG with the line), so no template exhausts memory or
 * the stack.
 *
 * Invariants: a parsed template is immutable and may be rendered from
 * several threads at once; a render allocates only from its own arena.
 */
#ifndef SL_CHAT_TEMPLATE_H
#define SL_CHAT_TEMPLATE_H

#include <stddef.h>

#include <cJSON.h>

struct chat_template;

/* Parses src (NUL-terminated). On success *out owns the syntax tree (it
 * keeps no pointer into src). SL_ERR_FORMAT for a syntax error, and
 * SL_ERR_UNSUPPORTED for a construct outside the subset, each with the line
 * number and the construct in the message. */
int chat_template_parse(const char *src, struct chat_template **out);
void chat_template_free(struct chat_template *t); /* NULL is a no-op */

/* Renders t with the variables of the JSON object vars (borrowed; e.g.
 * {"messages": [...], "add_generation_prompt": true, "bos_token": "..."}).
 * On success *out is sl_malloc'ed, NUL-terminated text of *out_len bytes
 * (caller frees with sl_free). SL_ERR_ARG when the template raises
 * (raise_exception) or an operation fails on the given data (the message
 * says which and where). */
int chat_template_render(const struct chat_template *t, const cJSON *vars,
                         char **out, size_t *out_len);

#endif /* SL_CHAT_TEMPLATE_H */
