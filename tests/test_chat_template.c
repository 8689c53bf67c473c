/*
 * test_chat_template.c — the Jinja subset interpreter (src/chat_template.h):
 * byte-for-byte against transformers' apply_chat_template for the Qwen3 and
 * demo templates (tests/fixtures/chat/ (one JSON per template), tests/gen/gen_chat_templates.py),
 * each construct on its own, and every refusal (unsupported construct at
 * parse, syntax error, runtime error) with its status and message.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_template.h"
#include "sluice.h"
#include "test.h"
#include "util.h"

static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = malloc((size_t)n + 1);
    if (p && fread(p, 1, (size_t)n, f) != (size_t)n) {
        free(p);
        p = NULL;
    }
    if (p) p[n] = 0;
    fclose(f);
    return p;
}

/* Renders every case of fixture `name` with the template of tok_config. */
static void check_fixture(const char *fixture, const char *tok_config, int min_cases) {
    char *fx = slurp(fixture), *tc = slurp(tok_config);
    CHECK_MSG(fx && tc, "missing %s or %s", fixture, tok_config);
    if (!fx || !tc) goto out;
    cJSON *f = cJSON_Parse(fx), *c = cJSON_Parse(tc);
    const cJSON *src = cJSON_GetObjectItem(c, "chat_template");
    CHECK(cJSON_IsString(src));
    struct chat_template *t = NULL;
    int rc = chat_template_parse(src->valuestring, &t);
    CHECK_MSG(rc == SL_OK, "%s", sl_errmsg());
    int n = 0;
    const cJSON *cs;
    cJSON_ArrayForEach(cs, cJSON_GetObjectItem(f, "cases")) {
        const char *name = cJSON_GetObjectItem(cs, "name")->valuestring;
        const char *want = cJSON_GetObjectItem(cs, "expected")->valuestring;
        cJSON *vars = cJSON_Duplicate(cJSON_GetObjectItem(cs, "vars"), 1);
        cJSON_AddStringToObject(vars, "bos_token", "");
        char *got = NULL;
        size_t len = 0;
        rc = t ? chat_template_render(t, vars, &got, &len) : SL_ERR_ARG;
        CHECK_MSG(rc == SL_OK, "%s: %s", name, sl_errmsg());
        if (got) {
            CHECK_EQ_INT(len, strlen(got));
            CHECK_MSG(!strcmp(got, want), "%s:\n--- got ---\n%s\n--- want ---\n%s", name, got,
                      want);
        }
        sl_free(got);
        cJSON_Delete(vars);
        n++;
    }
    CHECK_MSG(n >= min_cases, "%d cases", n);
    chat_template_free(t);
    cJSON_Delete(f);
    cJSON_Delete(c);
out:
    free(fx);
    free(tc);
}

TEST(qwen3_matches_transformers) {
    check_fixture("tests/fixtures/chat/qwen3.json", "tests/fixtures/tokenizer/qwen3/tokenizer_config.json", 8);
}

TEST(demo_matches_transformers) {
    check_fixture("tests/fixtures/chat/demo.json", "models/demo/tokenizer_config.json", 3);
}

/* Renders src with vars (JSON text); returns the output (static) or NULL. */
static char *render(const char *src, const char *vars_json, int *status) {
    static char buf[4096];
    struct chat_template *t;
    *status = chat_template_parse(src, &t);
    if (*status) return NULL;
    cJSON *v = cJSON_Parse(vars_json);
    char *out = NULL;
    *status = chat_template_render(t, v, &out, NULL);
    cJSON_Delete(v);
    chat_template_free(t);
    if (*status) return NULL;
    snprintf(buf, sizeof buf, "%s", out);
    sl_free(out);
    return buf;
}

static void expect(const char *src, const char *vars, const char *want) {
    int st;
    const char *got = render(src, vars, &st);
    CHECK_MSG(got && !strcmp(got, want), "template %s\n  got  [%s] (%s)\n  want [%s]", src,
              got ? got : "(error)", got ? "" : sl_errmsg(), want);
}

TEST(constructs) {
    const char *v = "{\"xs\": [1, 2, 3], \"s\": \"  Hello World  \", \"d\": {\"a\": 1, \"b\": [true, null]},"
                    " \"e\": \"\", \"m\": [{\"role\": \"user\", \"content\": \"hi\"}]}";
    expect("{% for x in xs %}{{ loop.index0 }}{{ x }}{% if loop.first %}F{% endif %}"
           "{% if loop.last %}L{{ loop.length }}{% endif %}{% endfor %}", v, "01F1223L3");
    expect("{{ xs[::-1] }}|{{ xs[1:] }}|{{ xs[-1] }}|{{ s[2:7] }}", v, "[3, 2, 1]|[2, 3]|3|Hello");
    expect("{{ s.strip() }}|{{ s|trim|upper }}|{{ s|lower|trim }}|{{ s.lstrip() }}.", v,
           "Hello World|HELLO WORLD|hello world|Hello World  .");
    expect("{{ 'a,b,,c'.split(',') }}{{ 'x y  z'.split()|length }}{{ 'abc'.replace('b', 'XY') }}", v,
           "['a', 'b', '', 'c']3aXYc");
    expect("{{ d|tojson }}|{{ 'q\"\\n'|tojson }}|{{ m|tojson }}", v,
           "{\"a\": 1, \"b\": [true, null]}|\"q\\\"\\n\"|[{\"role\": \"user\", \"content\": \"hi\"}]");
    expect("{% set ns = namespace(n=0, t='') %}{% for x in xs %}{% set ns.n = ns.n + x %}"
           "{% set local = 5 %}{% endfor %}{{ ns.n }}{{ local is defined }}", v, "6False");
    expect("{{ 1 if e else 2 }}{{ 'a' ~ 1 ~ none }}{{ 7 // 2 }}{{ 7 % 3 }}{{ -3 + 1 }}{{ 1.5 * 2 }}", v,
           "2a1None31-23.0");
    expect("{{ 'ell' in s }}{{ 'a' in d }}{{ 2 in xs }}{{ 4 not in xs }}{{ not e and xs|length > 2 }}", v,
           "TrueTrueTrueTrueTrue");
    expect("{{ e or 'dflt' }}{{ missing|default('D') }}{{ e|default('E', true) }}{{ d.a }}{{ d['b'][0] }}",
           v, "dfltDE1True");
    expect("{{ m[0].content is string }}{{ d.zz is none }}{{ d.zz is not defined }}{{ 3 is odd }}", v,
           "TrueFalseTrueTrue");
    expect("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{% for k in d %}{{ k }}{% endfor %}",
           v, "a=1;b=[True, None];ab");
    expect("{% for x in xs %}{% if x == 2 %}{% continue %}{% endif %}{{ x }}{% if x == 3 %}{% break %}"
           "{% endif %}{% endfor %}{% for x in [] %}no{% else %}empty{% endfor %}", v, "13empty");
    expect("{{ xs|first }}{{ xs|last }}{{ xs|join('-') }}{{ 'abc'|capitalize }}{{ range(3)|list }}", v,
           "131-2-3Abc[0, 1, 2]");
    expect("{% if xs|length == 1 %}one{% elif xs|length == 3 %}three{% else %}other{% endif %}", v, "three");
    /* whitespace: trim_blocks, lstrip_blocks, '-' and '+' markers */
    expect("A\n  {% if true %}\n  B\n  {% endif %}\nC", v, "A\n  B\nC");
    expect("A  {%- if true -%}  B  {%- endif -%}  C", v, "ABC");
    expect("A\n  {%+ if true %}B{% endif %}", v, "A\n  B");
    expect("{# comment #}\nX {{- ' y ' -}} Z", v, "X y Z");
    expect("{% generation %}G{% endgeneration %}", v, "G");
}

static void expect_fail(const char *src, const char *vars, int status, const char *msg_part) {
    int st;
    const char *got = render(src, vars, &st);
    CHECK_MSG(!got && st == status, "template %s: status %d want %d (%s)", src, st, status,
              got ? got : sl_errmsg());
    CHECK_MSG(strstr(sl_errmsg(), msg_part), "template %s: message '%s' lacks '%s'", src,
              sl_errmsg(), msg_part);
}

TEST(refusals) {
    const char *v = "{\"xs\": [1], \"s\": \"x\"}";
    /* unsupported at parse time, with the construct named */
    expect_fail("{% macro f() %}{% endmacro %}", v, SL_ERR_UNSUPPORTED, "statement 'macro'");
    expect_fail("{{ xs|map('x') }}", v, SL_ERR_UNSUPPORTED, "filter 'map'");
    expect_fail("{{ s.title() }}", v, SL_ERR_UNSUPPORTED, "method 'title'");
    expect_fail("{{ strftime_now('%Y') }}", v, SL_ERR_UNSUPPORTED, "function 'strftime_now'");
    expect_fail("{{ {'a': 1} }}", v, SL_ERR_UNSUPPORTED, "dict literal");
    expect_fail("{% if s is divisibleby %}{% endif %}", v, SL_ERR_UNSUPPORTED, "test 'divisibleby'");
    expect_fail("{% for x in xs if x %}{% endfor %}", v, SL_ERR_UNSUPPORTED, "for ... if");
    expect_fail("{% include 'x' %}", v, SL_ERR_UNSUPPORTED, "statement 'include'");
    expect_fail("line1\n{% raw %}{% endraw %}", v, SL_ERR_UNSUPPORTED, "line 2");
    /* syntax errors */
    expect_fail("{% if s %}x", v, SL_ERR_FORMAT, "missing endif");
    expect_fail("{{ s ", v, SL_ERR_FORMAT, "unclosed");
    expect_fail("{{ 'abc }}", v, SL_ERR_FORMAT, "unclosed");
    expect_fail("{% endfor %}", v, SL_ERR_FORMAT, "unexpected 'endfor'");
    expect_fail("{{ s + }}", v, SL_ERR_FORMAT, "expected an expression");
    expect_fail("{{ s @ 1 }}", v, SL_ERR_FORMAT, "unexpected character '@'");
    /* runtime errors */
    expect_fail("{{ raise_exception('bad role') }}", v, SL_ERR_ARG, "bad role");
    expect_fail("{{ nothing.attr }}", v, SL_ERR_ARG, "attribute 'attr' of an undefined");
    expect_fail("{{ s + 1 }}", v, SL_ERR_ARG, "'+'");
    expect_fail("{{ 1 // 0 }}", v, SL_ERR_ARG, "division by zero");
    expect_fail("{{ xs.startswith('a') }}", v, SL_ERR_ARG, "expects a string");
    int st;
    struct chat_template *t;
    CHECK(chat_template_parse("x", &t) == SL_OK);
    char *out;
    CHECK(chat_template_render(t, NULL, &out, NULL) == SL_ERR_ARG);
    chat_template_free(t);
    CHECK(render("{{ x }}", "{}", &st) && !strcmp(render("{{ x }}", "{}", &st), ""));
}

TEST_MAIN()
