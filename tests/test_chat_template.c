/*
 * test_chat_template.c — the Jinja subset interpreter (src/chat_template.h):
 * byte-for-byte against transformers' apply_chat_template for the Qwen3,
 * demo, Mixtral, DeepSeek-V3.1 and gpt-oss templates (tests/fixtures/chat/,
 * one JSON per template, written by tests/gen/gen_chat_templates.py),
 * each construct on its own, and every refusal (unsupported construct at
 * parse, syntax error, runtime error) with its status and message.
 */
#include <math.h>
#include <unistd.h>
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

/* The chat template of a fixture's "template_file": a tokenizer_config.json
 * ("chat_template") or a .jinja file (caller frees). */
static char *fixture_template(const char *path) {
    char *txt = slurp(path);
    size_t n = strlen(path);
    if (!txt || n < 5 || strcmp(path + n - 5, ".json")) return txt;
    cJSON *c = cJSON_Parse(txt);
    const cJSON *src = cJSON_GetObjectItem(c, "chat_template");
    char *out = cJSON_IsString(src) ? strdup(src->valuestring) : NULL;
    cJSON_Delete(c);
    free(txt);
    return out;
}

/* Renders every case of tests/fixtures/chat/<name>.json through the public
 * API (sl_chat_create_from_source + sl_chat_render: the same preparation of
 * messages as transformers) and compares byte for byte; an "error" case must
 * fail with SL_ERR_ARG, and when the text transformers raised is a literal
 * of the template (raise_exception), sluice's message must carry it. */
static void check_fixture(const char *name, int min_cases) {
    char path[256];
    snprintf(path, sizeof path, "tests/fixtures/chat/%s.json", name);
    char *fx = slurp(path);
    CHECK_MSG(fx != NULL, "missing %s", path);
    if (!fx) return;
    cJSON *f = cJSON_Parse(fx);
    const cJSON *tf = cJSON_GetObjectItem(f, "template_file");
    const cJSON *sde = cJSON_GetObjectItem(f, "source_date_epoch");
    CHECK(cJSON_IsString(tf) && cJSON_IsNumber(sde));
    char *src = cJSON_IsString(tf) ? fixture_template(tf->valuestring) : NULL;
    CHECK_MSG(src != NULL, "%s: no template", name);
    char epoch[32];
    snprintf(epoch, sizeof epoch, "%lld", cJSON_IsNumber(sde) ? (long long)sde->valuedouble : 0LL);
    setenv("SOURCE_DATE_EPOCH", epoch, 1); /* gpt-oss: strftime_now() */
    struct sl_chat *chat = NULL;
    int rc = src ? sl_chat_create_from_source(src, NULL, NULL, &chat) : SL_ERR_ARG;
    CHECK_MSG(rc == SL_OK, "%s: %s", name, sl_errmsg());
    int n = 0;
    const cJSON *cs, *cases = chat ? cJSON_GetObjectItem(f, "cases") : NULL;
    cJSON_ArrayForEach(cs, cases) {
        const char *cname = cJSON_GetObjectItem(cs, "name")->valuestring;
        const cJSON *want = cJSON_GetObjectItem(cs, "expected");
        const cJSON *err = cJSON_GetObjectItem(cs, "error");
        cJSON *extra = cJSON_Duplicate(cJSON_GetObjectItem(cs, "vars"), 1);
        cJSON *msgs = cJSON_DetachItemFromObject(extra, "messages");
        cJSON *agp = cJSON_DetachItemFromObject(extra, "add_generation_prompt");
        char *mj = cJSON_PrintUnformatted(msgs), *ej = cJSON_PrintUnformatted(extra), *got = NULL;
        rc = sl_chat_render(chat, mj, cJSON_IsTrue(agp), ej, &got);
        if (cJSON_IsString(err)) {
            CHECK_MSG(rc == SL_ERR_ARG && !got, "%s/%s: rendered instead of failing (%s)", name,
                      cname, got ? got : sl_errmsg());
            if (strstr(src, err->valuestring))
                CHECK_MSG(strstr(sl_errmsg(), err->valuestring), "%s/%s: message '%s' lacks '%s'",
                          name, cname, sl_errmsg(), err->valuestring);
            else
                CHECK_MSG(strstr(sl_errmsg(), "chat template line"), "%s/%s: message '%s'", name,
                          cname, sl_errmsg());
        } else {
            CHECK_MSG(rc == SL_OK, "%s/%s: %s", name, cname, sl_errmsg());
            if (got && cJSON_IsString(want))
                CHECK_MSG(!strcmp(got, want->valuestring), "%s/%s:\n--- got ---\n%s\n--- want ---\n%s",
                          name, cname, got, want->valuestring);
        }
        free(got);
        cJSON_free(mj);
        cJSON_free(ej);
        cJSON_Delete(msgs);
        cJSON_Delete(agp);
        cJSON_Delete(extra);
        n++;
    }
    CHECK_MSG(n >= min_cases, "%s: %d cases", name, n);
    unsetenv("SOURCE_DATE_EPOCH");
    sl_chat_free(chat);
    cJSON_Delete(f);
    free(src);
    free(fx);
}

TEST(qwen3_matches_transformers) { check_fixture("qwen3", 8); }
TEST(demo_matches_transformers) { check_fixture("demo", 3); }
TEST(mixtral_matches_transformers) { check_fixture("mixtral", 8); }
TEST(deepseek_v3_matches_transformers) { check_fixture("deepseek_v3", 11); }
TEST(gpt_oss_matches_transformers) { check_fixture("gpt_oss", 14); }

/* Writes text to dir/name. */
static int write_file(const char *dir, const char *name, const char *text) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    if (!f) return -1;
    size_t n = strlen(text);
    int ok = fwrite(text, 1, n, f) == n;
    return fclose(f) == 0 && ok ? 0 : -1;
}

/* End to end: the demo checkpoint converted with the family's template in
 * tokenizer_config.json (DeepSeek, special tokens as {"content": ...}
 * objects) or in chat_template.jinja (gpt-oss, newer transformers layout);
 * sl_chat_create on the opened model must render the fixture case with the
 * model file's own bos/eos tokens. */
static void check_converted(const char *fixture, const char *case_name, int as_jinja,
                            const char *bos, const char *eos) {
    char dir[64] = "/tmp/sluice_chattmpl_XXXXXX", path[512], *src = NULL, *fx = NULL;
    CHECK(mkdtemp(dir) != NULL);
    static const char *const links[] = {"config.json", "generation_config.json",
                                        "model.safetensors", "tokenizer.json"};
    char cwd[400];
    CHECK(getcwd(cwd, sizeof cwd) != NULL);
    for (int i = 0; i < 4; i++) {
        char target[512];
        snprintf(target, sizeof target, "%s/models/demo/%s", cwd, links[i]);
        snprintf(path, sizeof path, "%s/%s", dir, links[i]);
        CHECK(symlink(target, path) == 0);
    }
    snprintf(path, sizeof path, "tests/fixtures/chat/%s.json", fixture);
    fx = slurp(path);
    cJSON *f = cJSON_Parse(fx);
    src = fixture_template(cJSON_GetObjectItem(f, "template_file")->valuestring);
    cJSON *tc = cJSON_CreateObject(), *o;
    cJSON_AddItemToObject(tc, "bos_token", o = cJSON_CreateObject());
    cJSON_AddStringToObject(o, "content", bos);
    cJSON_AddItemToObject(tc, "eos_token", o = cJSON_CreateObject());
    cJSON_AddStringToObject(o, "content", eos);
    if (as_jinja) CHECK(write_file(dir, "chat_template.jinja", src) == 0);
    else cJSON_AddStringToObject(tc, "chat_template", src);
    char *tct = cJSON_Print(tc);
    CHECK(write_file(dir, "tokenizer_config.json", tct) == 0);
    char out[512];
    snprintf(out, sizeof out, "%s/m.sluice", dir);
    struct sl_convert_params cp = sl_convert_default_params();
    int rc = sl_convert(dir, out, &cp);
    CHECK_MSG(rc == SL_OK, "convert: %s", sl_errmsg());
    struct sl_model_params mp = sl_model_default_params();
    mp.n_threads = 1;
    struct sl_model *m = NULL;
    struct sl_chat *chat = NULL;
    if (!rc) rc = sl_model_open(out, &mp, &m);
    CHECK_MSG(rc == SL_OK, "open: %s", sl_errmsg());
    char *own = NULL;
    if (!rc) {
        CHECK(sl_model_chat_template(m, &own) == SL_OK && own && !strcmp(own, src));
        rc = sl_chat_create(m, &chat);
        CHECK_MSG(rc == SL_OK, "sl_chat_create: %s", sl_errmsg());
    }
    const cJSON *cs, *cases = chat ? cJSON_GetObjectItem(f, "cases") : NULL;
    int found = 0;
    cJSON_ArrayForEach(cs, cases) {
        if (strcmp(cJSON_GetObjectItem(cs, "name")->valuestring, case_name)) continue;
        found = 1;
        cJSON *extra = cJSON_Duplicate(cJSON_GetObjectItem(cs, "vars"), 1);
        cJSON *msgs = cJSON_DetachItemFromObject(extra, "messages");
        cJSON *agp = cJSON_DetachItemFromObject(extra, "add_generation_prompt");
        /* the special tokens come from the model file, not the fixture */
        CHECK(!strcmp(cJSON_GetObjectItem(extra, "bos_token")->valuestring, bos));
        cJSON_DeleteItemFromObject(extra, "bos_token");
        cJSON_DeleteItemFromObject(extra, "eos_token");
        char *mj = cJSON_PrintUnformatted(msgs), *ej = cJSON_PrintUnformatted(extra), *got = NULL;
        char epoch[32];
        snprintf(epoch, sizeof epoch, "%lld",
                 (long long)cJSON_GetObjectItem(f, "source_date_epoch")->valuedouble);
        setenv("SOURCE_DATE_EPOCH", epoch, 1);
        rc = sl_chat_render(chat, mj, cJSON_IsTrue(agp), ej, &got);
        unsetenv("SOURCE_DATE_EPOCH");
        CHECK_MSG(rc == SL_OK, "%s: %s", case_name, sl_errmsg());
        const char *want = cJSON_GetObjectItem(cs, "expected")->valuestring;
        CHECK_MSG(got && !strcmp(got, want), "%s/%s via the model file:\n%s", fixture, case_name,
                  got ? got : "(null)");
        free(got);
        cJSON_free(mj);
        cJSON_free(ej);
        cJSON_Delete(msgs);
        cJSON_Delete(agp);
        cJSON_Delete(extra);
    }
    CHECK_MSG(found || !chat, "no case %s", case_name);
    free(own);
    sl_chat_free(chat);
    sl_model_close(m);
    cJSON_free(tct);
    cJSON_Delete(tc);
    cJSON_Delete(f);
    free(src);
    free(fx);
    unlink(out);
    for (int i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, links[i]);
        unlink(path);
    }
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/chat_template.jinja", dir);
    unlink(path);
    rmdir(dir);
}

TEST(converted_model_renders_its_template) {
    check_converted("deepseek_v3", "tool_calls", 0, "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>");
    check_converted("gpt_oss", "tools_call_result_final", 1, "<|startoftext|>", "<|return|>");
    check_converted("mixtral", "system_multi_turn", 0, "<s>", "</s>");
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
    /* macros: defaults, keywords, recursion, top-level variables, scoping */
    expect("{% macro m(a, b='B', c=none) -%}[{{ a }}{{ b }}{{ c }}{{ s|trim }}]{%- endmacro %}"
           "{{ m(1) }}{{ m(2, c=3) }}{{ m(b=4, a=5) }}{% set r = m('x') %}{{ r|length }}", v,
           "[1BNoneHello World][2B3Hello World][54NoneHello World]19");
    expect("{% macro fact(n) %}{% if n > 1 %}{{ n * fact(n - 1)|int }}{% else %}1{% endif %}"
           "{% endmacro %}{{ fact(5) }}", v, "120");
    expect("{% macro m() %}{% set s = 'inner' %}{{ s }}{% endmacro %}{{ m() }}{{ s|trim }}", v,
           "innerHello World");
    /* tojson options (json.dumps), split with maxsplit */
    expect("{{ d|tojson(indent=2) }}", v, "{\n  \"a\": 1,\n  \"b\": [\n    true,\n    null\n  ]\n}");
    expect("{{ m|tojson(sort_keys=true) }}|{{ 'é☃😀'|tojson(ensure_ascii=true) }}|{{ 'é'|tojson }}", v,
           "[{\"content\": \"hi\", \"role\": \"user\"}]|\"\\u00e9\\u2603\\ud83d\\ude00\"|\"é\"");
    expect("{{ d|tojson(separators=[',', ':']) }}|{{ [1]|tojson(indent=0) }}|{{ []|tojson(indent=2) }}", v,
           "{\"a\":1,\"b\":[true,null]}|[\n1\n]|[]");
    expect("{{ 'a,b,c'.split(',', 1) }}{{ ' x  y z '.split(none, 1) }}{{ 'a b'.split(maxsplit=0) }}", v,
           "['a', 'b,c']['x', 'y z ']['a b']");
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
    expect_fail("{% call f() %}{% endcall %}", v, SL_ERR_UNSUPPORTED, "statement 'call'");
    expect_fail("{% macro f(*a) %}{% endmacro %}", v, SL_ERR_UNSUPPORTED, "macro *args");
    expect_fail("{{ xs|map('x') }}", v, SL_ERR_UNSUPPORTED, "filter 'map'");
    expect_fail("{{ s.title() }}", v, SL_ERR_UNSUPPORTED, "method 'title'");
    expect_fail("line1\n{{ nomacro(1) }}", v, SL_ERR_UNSUPPORTED, "line 2: unsupported function 'nomacro'");
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
    expect_fail("{% macro f(a=1, b) %}{% endmacro %}", v, SL_ERR_FORMAT, "without a default");
    expect_fail("{% macro f() %}x", v, SL_ERR_FORMAT, "missing endmacro");
    expect_fail("{% endmacro %}", v, SL_ERR_FORMAT, "unexpected 'endmacro'");
    /* runtime errors */
    expect_fail("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", v, SL_ERR_ARG,
                "nested deeper than the limit");
    expect_fail("{% macro f(a) %}{% endmacro %}{{ f(1, 2) }}", v, SL_ERR_ARG, "too many arguments");
    expect_fail("{% macro f(a) %}{% endmacro %}{{ f(b=2) }}", v, SL_ERR_ARG,
                "unexpected keyword argument b");
    expect_fail("{{ f() }}{% macro f() %}{% endmacro %}", v, SL_ERR_ARG, "before its macro is defined");
    expect_fail("{% set ns = namespace(s='xxxxxxxxxxxxxxxx') %}{% for i in range(40) %}"
                "{% set ns.s = ns.s + ns.s %}{% endfor %}", v, SL_ERR_ARG, "size limit");
    expect_fail("{{ xs|tojson(indent='x') }}", v, SL_ERR_ARG, "tojson(indent=) needs an integer");
    expect_fail("{{ xs|tojson(separators=1) }}", v, SL_ERR_ARG, "list of two strings");
    expect_fail("{{ s.split(',', 'x') }}", v, SL_ERR_ARG, "maxsplit must be an integer");
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
