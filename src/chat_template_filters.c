/*
 * chat_template_filters.c — the filters (| tojson, | join, ...) and string /
 * dict methods (.split(), .items(), ...) of the chat template evaluator,
 * with Python's semantics where templates depend on them (json.dumps
 * options and spacing, str.split with maxsplit, str.strip with a set).
 *
 * Not here: expressions, statements, macros (chat_template_eval.c); which
 * names exist is checked when parsing (chat_template.c).
 */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_template.h"
#include "chat_template_eval.h"
#include "util.h"

/* json.dumps options: tojson(ensure_ascii=False, indent=None,
 * separators=None, sort_keys=False), transformers' override of the filter. */
struct json_opts {
    int ascii;            /* ensure_ascii: non-ASCII as \uXXXX (surrogate pairs) */
    int indent;           /* < 0: one line */
    int sort;
    const char *item_sep, *key_sep;
};

/* The next code point of UTF-8 text at *p (advanced); U+FFFD for bad bytes. */
static unsigned utf8_next(const unsigned char **p) {
    const unsigned char *s = *p;
    unsigned c = s[0], cp;
    int k = c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : c >= 0xC0 ? 1 : 0;
    cp = k == 3 ? c & 7 : k == 2 ? c & 15 : k == 1 ? c & 31 : c;
    for (int i = 1; i <= k; i++) {
        if ((s[i] & 0xC0) != 0x80) {
            *p = s + i;
            return 0xFFFD;
        }
        cp = cp << 6 | (s[i] & 63);
    }
    *p = s + k + 1;
    return c >= 0x80 && k == 0 ? 0xFFFD : cp;
}

static int json_str(struct sbuf *b, const char *s, int ascii) {
    int rc = ct_sb_put(b, "\"", 1);
    const unsigned char *p = (const unsigned char *)s;
    while (!rc && *p) {
        unsigned char c = *p;
        char e[16];
        if (c == '"') rc = ct_sb_put(b, "\\\"", 2);
        else if (c == '\\') rc = ct_sb_put(b, "\\\\", 2);
        else if (c == '\n') rc = ct_sb_put(b, "\\n", 2);
        else if (c == '\r') rc = ct_sb_put(b, "\\r", 2);
        else if (c == '\t') rc = ct_sb_put(b, "\\t", 2);
        else if (c == '\b') rc = ct_sb_put(b, "\\b", 2);
        else if (c == '\f') rc = ct_sb_put(b, "\\f", 2);
        else if (c < 0x20) snprintf(e, sizeof e, "\\u%04x", c), rc = ct_sb_str(b, e);
        else if (c < 0x80 || !ascii) {
            rc = ct_sb_put(b, (const char *)p, 1);
            p++;
            continue;
        } else {
            unsigned cp = utf8_next(&p);
            if (cp >= 0x10000) {
                cp -= 0x10000;
                snprintf(e, sizeof e, "\\u%04x\\u%04x", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
            } else {
                snprintf(e, sizeof e, "\\u%04x", cp);
            }
            rc = ct_sb_str(b, e);
            continue;
        }
        p++;
    }
    return rc ? rc : ct_sb_put(b, "\"", 1);
}

static int json_newline(struct sbuf *b, const struct json_opts *o, int level) {
    int rc = ct_sb_put(b, "\n", 1);
    for (int i = 0; !rc && i < o->indent * level; i++) rc = ct_sb_put(b, " ", 1);
    return rc;
}

static int key_cmp(const void *x, const void *y) {
    return strcmp((*(const cJSON *const *)x)->string, (*(const cJSON *const *)y)->string);
}

static int json_write(struct sbuf *b, const cJSON *j, const struct json_opts *o, int level) {
    char num[40];
    int rc = SL_OK;
    if (level > 512) return sl_seterr(SL_ERR_ARG, "chat template: tojson of data nested too deep");
    if (cJSON_IsString(j)) return json_str(b, j->valuestring, o->ascii);
    if (cJSON_IsNumber(j)) {
        struct val v = ct_from_json(j);
        if (v.t == V_INT) snprintf(num, sizeof num, "%lld", v.i);
        else if (isnan(v.f)) snprintf(num, sizeof num, "NaN");
        else if (isinf(v.f)) snprintf(num, sizeof num, v.f < 0 ? "-Infinity" : "Infinity");
        else ct_float_repr(v.f, num, sizeof num);
        return ct_sb_str(b, num);
    }
    if (cJSON_IsBool(j)) return ct_sb_str(b, cJSON_IsTrue(j) ? "true" : "false");
    if (cJSON_IsNull(j)) return ct_sb_str(b, "null");
    int obj = cJSON_IsObject(j), n = list_len(j);
    if (n == 0) return ct_sb_str(b, obj ? "{}" : "[]");
    const cJSON **items = sl_malloc((size_t)n * sizeof *items);
    if (!items) return ct_oom();
    int k = 0;
    for (const cJSON *e = j->child; e && k < n; e = e->next) items[k++] = e;
    if (obj && o->sort) qsort(items, (size_t)k, sizeof *items, key_cmp);
    rc = ct_sb_put(b, obj ? "{" : "[", 1);
    for (int i = 0; !rc && i < k; i++) {
        if (i) rc = ct_sb_str(b, o->item_sep);
        if (!rc && o->indent >= 0) rc = json_newline(b, o, level + 1);
        if (!rc && obj) {
            rc = json_str(b, items[i]->string ? items[i]->string : "", o->ascii);
            if (!rc) rc = ct_sb_str(b, o->key_sep);
        }
        if (!rc) rc = json_write(b, items[i], o, level + 1);
    }
    sl_free(items);
    if (!rc && o->indent >= 0) rc = json_newline(b, o, level);
    return rc ? rc : ct_sb_put(b, obj ? "}" : "]", 1);
}

/* | tojson(ensure_ascii, indent, separators, sort_keys) */
static int filter_tojson(struct rstate *st, struct scope *sc, const struct ct_node *n,
                         const struct val *v, struct val *out) {
    struct val a, ind, sep, sk;
    struct json_opts o = {0, -1, 0, ", ", ": "};
    int rc;
    if ((rc = ct_arg(st, sc, n, 0, "ensure_ascii", &a, 0)) ||
        (rc = ct_arg(st, sc, n, 1, "indent", &ind, 0)) ||
        (rc = ct_arg(st, sc, n, 2, "separators", &sep, 0)) ||
        (rc = ct_arg(st, sc, n, 3, "sort_keys", &sk, 0)))
        return rc;
    o.ascii = ct_truthy(&a);
    o.sort = ct_truthy(&sk);
    if (ind.t == V_INT) {
        o.indent = ind.i < 0 ? 0 : ind.i > 64 ? 64 : (int)ind.i;
        o.item_sep = ",";
    } else if (ind.t != V_UNDEF && ind.t != V_NONE) {
        return ct_fail(n, "tojson(indent=) needs an integer, got ", ct_type_name(&ind), NULL);
    }
    if (sep.t == V_JSON && cJSON_IsArray(sep.j) && list_len(sep.j) == 2 &&
        cJSON_IsString(cJSON_GetArrayItem(sep.j, 0)) && cJSON_IsString(cJSON_GetArrayItem(sep.j, 1))) {
        o.item_sep = cJSON_GetArrayItem(sep.j, 0)->valuestring;
        o.key_sep = cJSON_GetArrayItem(sep.j, 1)->valuestring;
    } else if (sep.t != V_UNDEF && sep.t != V_NONE) {
        return ct_fail(n, "tojson(separators=) needs a list of two strings, got ",
                       ct_type_name(&sep), NULL);
    }
    struct sbuf b = {0};
    if (v->t == V_JSON) {
        rc = json_write(&b, v->j, &o, 0);
    } else {
        cJSON *j = ct_to_json(v);
        if (!j) return ct_fail(n, "tojson of a ", ct_type_name(v), " value");
        rc = json_write(&b, j, &o, 0);
        cJSON_Delete(j);
    }
    if (!rc) *out = ct_mkstr(st, b.p ? b.p : "", b.n);
    if (!rc && out->t == V_UNDEF) rc = ct_oom();
    sl_free(b.p);
    return rc;
}

static long long utf8_len(const char *s, size_t n) {
    long long k = 0;
    for (size_t i = 0; i < n; i++) k += ((unsigned char)s[i] & 0xC0) != 0x80;
    return k;
}

static int is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

/* strip / lstrip / rstrip / trim with optional character set */
static struct val strip(const struct val *v, const struct val *chars, int left, int right) {
    const char *b = v->s, *e = v->s + v->len;
    const char *set = chars && chars->t == V_STR ? chars->s : NULL;
#define STRIPPABLE(c) (set ? strchr(set, (c)) != NULL && (c) : is_ws(c))
    if (left) while (b < e && STRIPPABLE(*b)) b++;
    if (right) while (e > b && STRIPPABLE(e[-1])) e--;
#undef STRIPPABLE
    struct val r = {.t = V_STR, .s = b, .len = (size_t)(e - b)};
    return r;
}

static int finish_str(struct rstate *st, struct val *v) {
    /* strings are NUL-terminated: copy a view that is not */
    if (v->t == V_STR && v->s[v->len] != 0) {
        *v = ct_mkstr(st, v->s, v->len);
        if (v->t == V_UNDEF) return ct_oom();
    }
    return SL_OK;
}

int ct_method(struct rstate *st, struct scope *sc, const struct ct_node *n, struct val *out) {
    struct val o, a1, a2;
    int rc = ct_eval(st, sc, n->a, &o);
    if (rc) return rc;
    const char *m = n->s;
    if (o.t == V_UNDEF) return ct_fail(n, "call of ", m, "() on an undefined value");
    if (!strcmp(m, "items") || !strcmp(m, "keys") || !strcmp(m, "values") || !strcmp(m, "get")) {
        if (o.t != V_JSON || !cJSON_IsObject(o.j))
            return ct_fail(n, m, "() needs a dict, got ", ct_type_name(&o));
        if (!strcmp(m, "get")) {
            if ((rc = ct_arg(st, sc, n, 0, NULL, &a1, 1)) || (rc = ct_arg(st, sc, n, 1, NULL, &a2, 0)))
                return rc;
            if ((rc = ct_need(n, &a1, V_STR, "get()"))) return rc;
            const cJSON *e = cJSON_GetObjectItemCaseSensitive(o.j, a1.s);
            *out = e ? ct_from_json(e) : (a2.t == V_UNDEF ? (struct val){.t = V_NONE} : a2);
            return SL_OK;
        }
        cJSON *arr = cJSON_CreateArray();
        for (const cJSON *e = o.j->child; arr && e; e = e->next) {
            struct val ev = ct_from_json(e);
            cJSON *item;
            if (m[0] == 'k') item = cJSON_CreateString(e->string);
            else if (m[0] == 'v') item = ct_to_json(&ev);
            else {
                item = cJSON_CreateArray();
                if (item) {
                    cJSON_AddItemToArray(item, cJSON_CreateString(e->string));
                    cJSON_AddItemToArray(item, ct_to_json(&ev));
                }
            }
            if (!item) break;
            cJSON_AddItemToArray(arr, item);
        }
        return ct_park(st, arr, out);
    }
    if ((rc = ct_need(n, &o, V_STR, m))) return rc;
    if ((rc = ct_arg(st, sc, n, 0, NULL, &a1, 0)) || (rc = ct_arg(st, sc, n, 1, NULL, &a2, 0))) return rc;
    if (!strcmp(m, "startswith") || !strcmp(m, "endswith")) {
        if ((rc = ct_need(n, &a1, V_STR, m))) return rc;
        int ok = a1.len <= o.len &&
                 !memcmp(m[0] == 's' ? o.s : o.s + o.len - a1.len, a1.s, a1.len);
        *out = (struct val){.t = V_BOOL, .i = ok};
        return SL_OK;
    }
    if (!strcmp(m, "strip") || !strcmp(m, "lstrip") || !strcmp(m, "rstrip")) {
        *out = strip(&o, &a1, m[0] != 'r', m[0] != 'l');
        return finish_str(st, out);
    }
    if (!strcmp(m, "upper") || !strcmp(m, "lower")) {
        *out = ct_mkstr(st, o.s, o.len);
        if (out->t == V_UNDEF) return ct_oom();
        for (char *p = (char *)out->s; *p; p++)
            if ((unsigned char)*p < 0x80) *p = (char)(m[0] == 'u' ? toupper(*p) : tolower(*p));
        return SL_OK;
    }
    if (!strcmp(m, "replace")) {
        if ((rc = ct_need(n, &a1, V_STR, m)) || (rc = ct_need(n, &a2, V_STR, m))) return rc;
        if (a1.len == 0) return ct_fail(n, "replace() of an empty string", NULL, NULL);
        struct sbuf b = {0};
        const char *p = o.s, *e = o.s + o.len;
        while (!rc && p < e) {
            const char *h = memmem(p, (size_t)(e - p), a1.s, a1.len);
            if (!h) h = e;
            rc = ct_sb_put(&b, p, (size_t)(h - p));
            if (!rc && h < e) rc = ct_sb_put(&b, a2.s, a2.len);
            p = h < e ? h + a1.len : e;
        }
        if (!rc) *out = ct_mkstr(st, b.p ? b.p : "", b.n);
        sl_free(b.p);
        return rc;
    }
    /* split(sep=None, maxsplit=-1) */
    struct val ms;
    if ((rc = ct_arg(st, sc, n, 0, "sep", &a1, 0)) || (rc = ct_arg(st, sc, n, 1, "maxsplit", &ms, 0)))
        return rc;
    if (ms.t != V_UNDEF && ms.t != V_INT)
        return ct_fail(n, "split() maxsplit must be an integer, got ", ct_type_name(&ms), NULL);
    long long left = ms.t == V_INT && ms.i >= 0 ? ms.i : -1; /* splits still allowed */
    cJSON *arr = cJSON_CreateArray();
    if (!arr) return ct_oom();
    const char *p = o.s, *e = o.s + o.len;
    if (a1.t == V_UNDEF || a1.t == V_NONE) {
        for (;;) {
            while (p < e && is_ws(*p)) p++;
            if (p >= e) break;
            const char *q = p;
            if (left == 0) q = e; /* the rest, as is */
            else while (q < e && !is_ws(*q)) q++;
            if (left > 0) left--;
            char *w = ct_arena_strndup(&st->arena, p, (size_t)(q - p));
            cJSON_AddItemToArray(arr, w ? cJSON_CreateString(w) : NULL);
            p = q;
        }
    } else {
        if ((rc = ct_need(n, &a1, V_STR, m))) {
            cJSON_Delete(arr);
            return rc;
        }
        if (a1.len == 0) {
            cJSON_Delete(arr);
            return ct_fail(n, "split() with an empty separator", NULL, NULL);
        }
        for (;;) {
            const char *h = left == 0 ? NULL : memmem(p, (size_t)(e - p), a1.s, a1.len);
            if (left > 0) left--;
            const char *q = h ? h : e;
            char *w = ct_arena_strndup(&st->arena, p, (size_t)(q - p));
            cJSON_AddItemToArray(arr, w ? cJSON_CreateString(w) : NULL);
            if (!h) break;
            p = h + a1.len;
        }
    }
    return ct_park(st, arr, out);
}

int ct_filter(struct rstate *st, struct scope *sc, const struct ct_node *n, struct val *out) {
    struct val v, a1;
    int rc = ct_eval(st, sc, n->a, &v);
    if (rc) return rc;
    const char *f = n->s;
    if (!strcmp(f, "default") || !strcmp(f, "d")) {
        struct val bl;
        if ((rc = ct_arg(st, sc, n, 0, NULL, &a1, 0)) || (rc = ct_arg(st, sc, n, 1, "boolean", &bl, 0)))
            return rc;
        *out = (v.t == V_UNDEF || (ct_truthy(&bl) && !ct_truthy(&v))) ? a1 : v;
        return SL_OK;
    }
    if (!strcmp(f, "tojson")) return filter_tojson(st, sc, n, &v, out);
    if (!strcmp(f, "string")) return ct_to_string(st, &v, out);
    if (!strcmp(f, "length") || !strcmp(f, "count")) {
        if (v.t == V_STR) *out = (struct val){.t = V_INT, .i = utf8_len(v.s, v.len)};
        else if (v.t == V_JSON) *out = (struct val){.t = V_INT, .i = list_len(v.j)};
        else return ct_fail(n, "length of a ", ct_type_name(&v), " value");
        return SL_OK;
    }
    if (!strcmp(f, "first") || !strcmp(f, "last")) {
        if ((rc = ct_need(n, &v, V_JSON, f))) return rc;
        int k = list_len(v.j);
        *out = k ? ct_from_json(cJSON_GetArrayItem(v.j, f[0] == 'f' ? 0 : k - 1)) : k_undef;
        return SL_OK;
    }
    if (!strcmp(f, "join")) {
        if ((rc = ct_need(n, &v, V_JSON, f)) || (rc = ct_arg(st, sc, n, 0, NULL, &a1, 0))) return rc;
        struct sbuf b = {0};
        for (const cJSON *e = v.j->child; !rc && e; e = e->next) {
            struct val ev = ct_from_json(e);
            if (e != v.j->child && a1.t == V_STR) rc = ct_sb_put(&b, a1.s, a1.len);
            if (!rc) rc = ct_val_write(&b, &ev, 0);
        }
        if (!rc) *out = ct_mkstr(st, b.p ? b.p : "", b.n);
        sl_free(b.p);
        return rc;
    }
    if (!strcmp(f, "list")) {
        if ((rc = ct_need(n, &v, V_JSON, f))) return rc;
        *out = v;
        return SL_OK;
    }
    if (!strcmp(f, "items")) {
        if (v.t != V_JSON || !cJSON_IsObject(v.j)) return ct_fail(n, "items of a ", ct_type_name(&v), " value");
        cJSON *arr = cJSON_CreateArray();
        for (const cJSON *e = v.j->child; arr && e; e = e->next) {
            struct val ev = ct_from_json(e);
            cJSON *pair = cJSON_CreateArray();
            if (!pair) break;
            cJSON_AddItemToArray(pair, cJSON_CreateString(e->string));
            cJSON_AddItemToArray(pair, ct_to_json(&ev));
            cJSON_AddItemToArray(arr, pair);
        }
        return ct_park(st, arr, out);
    }
    if (!strcmp(f, "int")) {
        if (v.t == V_FLOAT) *out = (struct val){.t = V_INT, .i = (long long)v.f};
        else if (v.t == V_STR) *out = (struct val){.t = V_INT, .i = strtoll(v.s, NULL, 10)};
        else if (v.t == V_INT || v.t == V_BOOL) *out = (struct val){.t = V_INT, .i = v.i};
        else *out = (struct val){.t = V_INT, .i = 0};
        return SL_OK;
    }
    /* string filters */
    if (v.t != V_STR && (rc = ct_to_string(st, &v, &v))) return rc;
    if (!strcmp(f, "trim")) {
        *out = strip(&v, NULL, 1, 1);
        return finish_str(st, out);
    }
    *out = ct_mkstr(st, v.s, v.len);
    if (out->t == V_UNDEF) return ct_oom();
    char *p = (char *)out->s;
    for (size_t i = 0; i < out->len; i++) {
        if ((unsigned char)p[i] >= 0x80) continue;
        if (!strcmp(f, "upper")) p[i] = (char)toupper(p[i]);
        else if (!strcmp(f, "lower")) p[i] = (char)tolower(p[i]);
        else p[i] = (char)(i == 0 ? toupper(p[i]) : tolower(p[i])); /* capitalize */
    }
    return SL_OK;
}

