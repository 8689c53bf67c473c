/*
 * chat_template_eval.c — renders a parsed chat template (chat_template.h)
 * with JSON variables: a tree-walking evaluator over chat_template_impl.h.
 *
 * Not here: parsing and the name checks (chat_template.c).
 * Values: JSON data are borrowed from the caller's cJSON tree (strings by
 * pointer); values built while rendering (strings, lists, namespaces) come
 * from a per-render arena or, for lists, from cJSON items parked in one
 * `junk` array deleted at the end. Python semantics are followed where
 * templates depend on them: truthiness, `and`/`or` returning an operand,
 * negative indices, str.split/strip, json.dumps spacing for tojson.
 */
#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "chat_template.h"
#include "chat_template_impl.h"
#include "util.h"

enum vt { V_UNDEF, V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_JSON, V_NS, V_LOOP };

struct scope;
struct loop_state {
    long long index0, length;
};

struct val {
    int t;                  /* enum vt */
    long long i;            /* V_BOOL, V_INT */
    double f;               /* V_FLOAT */
    const char *s;          /* V_STR: NUL-terminated */
    size_t len;
    const cJSON *j;         /* V_JSON: an array or object */
    struct scope *ns;       /* V_NS */
    struct loop_state *loop;/* V_LOOP */
};

struct var {
    const char *name;
    struct val v;
};

struct scope {
    struct var *vars;
    int n, cap;
    struct scope *parent;
};

struct sbuf {
    char *p;
    size_t n, cap;
};

struct rstate {
    struct ct_arena arena;
    cJSON *junk;
    struct sbuf out;
    int flow;               /* 1 break, 2 continue */
};

static const struct val k_undef = {.t = V_UNDEF};

static int oom(void) { return sl_seterr(SL_ERR_NOMEM, "chat template: out of memory"); }

static int sb_put(struct sbuf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = sl_realloc(b->p, cap);
        if (!p) return oom();
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return SL_OK;
}
static int sb_str(struct sbuf *b, const char *s) { return sb_put(b, s, strlen(s)); }

static struct val from_json(const cJSON *j) {
    struct val v = {.t = V_UNDEF};
    if (!j) return v;
    if (cJSON_IsString(j)) {
        v.t = V_STR;
        v.s = j->valuestring;
        v.len = strlen(v.s);
    } else if (cJSON_IsNumber(j)) {
        double d = j->valuedouble;
        if (d == floor(d) && fabs(d) < 9007199254740992.0) {
            v.t = V_INT;
            v.i = (long long)d;
        } else {
            v.t = V_FLOAT;
            v.f = d;
        }
    } else if (cJSON_IsBool(j)) {
        v.t = V_BOOL;
        v.i = cJSON_IsTrue(j);
    } else if (cJSON_IsNull(j)) {
        v.t = V_NONE;
    } else {
        v.t = V_JSON;
        v.j = j;
    }
    return v;
}

static struct val mkstr(struct rstate *st, const char *s, size_t n) {
    struct val v = {.t = V_STR, .len = n};
    v.s = ct_arena_strndup(&st->arena, s, n);
    if (!v.s) v.t = V_UNDEF;
    return v;
}

/* A fresh, unparented cJSON item holding v (JSON containers by reference). */
static cJSON *to_json(const struct val *v) {
    switch (v->t) {
    case V_NONE: return cJSON_CreateNull();
    case V_BOOL: return cJSON_CreateBool((int)v->i);
    case V_INT: return cJSON_CreateNumber((double)v->i);
    case V_FLOAT: return cJSON_CreateNumber(v->f);
    case V_STR: return cJSON_CreateString(v->s);
    case V_JSON:
        return cJSON_IsArray(v->j) ? cJSON_CreateArrayReference(v->j->child)
                                   : cJSON_CreateObjectReference(v->j->child);
    default: return NULL;
    }
}

/* Parks a new list in junk and returns it as a value. */
static int park(struct rstate *st, cJSON *arr, struct val *out) {
    if (!arr) return oom();
    cJSON_AddItemToArray(st->junk, arr);
    *out = (struct val){.t = V_JSON, .j = arr};
    return SL_OK;
}

static int truthy(const struct val *v) {
    switch (v->t) {
    case V_BOOL: case V_INT: return v->i != 0;
    case V_FLOAT: return v->f != 0;
    case V_STR: return v->len > 0;
    case V_JSON: return v->j->child != NULL;
    case V_NS: case V_LOOP: return 1;
    default: return 0;
    }
}

static const char *type_name(const struct val *v) {
    static const char *const n[] = {"undefined", "none", "bool", "int", "float",
                                    "string", "list", "namespace", "loop"};
    if (v->t == V_JSON && cJSON_IsObject(v->j)) return "dict";
    return n[v->t];
}

static int fail(const struct ct_node *n, const char *fmt, const char *a, const char *b) {
    return sl_seterr(SL_ERR_ARG, "chat template line %d: %s%s%s", n->line, fmt, a ? a : "",
                     b ? b : "");
}

/* Python's repr of a float: the shortest form that round-trips. */
static void float_repr(double f, char *buf, size_t n) {
    if (isnan(f)) { snprintf(buf, n, "nan"); return; }
    if (isinf(f)) { snprintf(buf, n, f < 0 ? "-inf" : "inf"); return; }
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, n, "%.*g", p, f);
        if (strtod(buf, NULL) == f) break;
    }
    if (!strpbrk(buf, ".en")) strncat(buf, ".0", n - strlen(buf) - 1);
}

/* json.dumps(ensure_ascii=False) with its default ", " and ": " spacing. */
static int json_str(struct sbuf *b, const char *s) {
    int rc = sb_put(b, "\"", 1);
    for (; !rc && *s; s++) {
        unsigned char c = (unsigned char)*s;
        char e[8];
        if (c == '"') rc = sb_put(b, "\\\"", 2);
        else if (c == '\\') rc = sb_put(b, "\\\\", 2);
        else if (c == '\n') rc = sb_put(b, "\\n", 2);
        else if (c == '\r') rc = sb_put(b, "\\r", 2);
        else if (c == '\t') rc = sb_put(b, "\\t", 2);
        else if (c == '\b') rc = sb_put(b, "\\b", 2);
        else if (c == '\f') rc = sb_put(b, "\\f", 2);
        else if (c < 0x20) snprintf(e, sizeof e, "\\u%04x", c), rc = sb_str(b, e);
        else rc = sb_put(b, (const char *)&c, 1);
    }
    return rc ? rc : sb_put(b, "\"", 1);
}

static int json_write(struct sbuf *b, const cJSON *j) {
    char num[40];
    int rc = SL_OK;
    if (cJSON_IsString(j)) return json_str(b, j->valuestring);
    if (cJSON_IsNumber(j)) {
        struct val v = from_json(j);
        if (v.t == V_INT) snprintf(num, sizeof num, "%lld", v.i);
        else float_repr(v.f, num, sizeof num);
        return sb_str(b, num);
    }
    if (cJSON_IsBool(j)) return sb_str(b, cJSON_IsTrue(j) ? "true" : "false");
    if (cJSON_IsNull(j)) return sb_str(b, "null");
    int obj = cJSON_IsObject(j);
    rc = sb_put(b, obj ? "{" : "[", 1);
    for (const cJSON *e = j->child; !rc && e; e = e->next) {
        if (e != j->child) rc = sb_put(b, ", ", 2);
        if (!rc && obj) {
            rc = json_str(b, e->string ? e->string : "");
            if (!rc) rc = sb_put(b, ": ", 2);
        }
        if (!rc) rc = json_write(b, e);
    }
    return rc ? rc : sb_put(b, obj ? "}" : "]", 1);
}

/* Python str() of v, appended to b (lists and dicts as Python repr). */
static int val_write(struct sbuf *b, const struct val *v, int repr) {
    char num[40];
    switch (v->t) {
    case V_UNDEF: return SL_OK;
    case V_NONE: return sb_str(b, "None");
    case V_BOOL: return sb_str(b, v->i ? "True" : "False");
    case V_INT: snprintf(num, sizeof num, "%lld", v->i); return sb_str(b, num);
    case V_FLOAT: float_repr(v->f, num, sizeof num); return sb_str(b, num);
    case V_STR:
        if (!repr) return sb_put(b, v->s, v->len);
        {
            int rc = sb_put(b, "'", 1);
            if (!rc) rc = sb_put(b, v->s, v->len);
            return rc ? rc : sb_put(b, "'", 1);
        }
    case V_JSON: {
        int obj = cJSON_IsObject(v->j), rc = sb_put(b, obj ? "{" : "[", 1);
        for (const cJSON *e = v->j->child; !rc && e; e = e->next) {
            if (e != v->j->child) rc = sb_put(b, ", ", 2);
            if (!rc && obj) {
                struct val k = {.t = V_STR, .s = e->string, .len = strlen(e->string)};
                rc = val_write(b, &k, 1);
                if (!rc) rc = sb_put(b, ": ", 2);
            }
            struct val ev = from_json(e);
            if (!rc) rc = val_write(b, &ev, 1);
        }
        return rc ? rc : sb_put(b, obj ? "}" : "]", 1);
    }
    default: return sb_str(b, "<object>");
    }
}

static int to_string(struct rstate *st, const struct val *v, struct val *out) {
    if (v->t == V_STR) {
        *out = *v;
        return SL_OK;
    }
    struct sbuf b = {0};
    int rc = val_write(&b, v, 0);
    if (!rc) {
        *out = mkstr(st, b.p ? b.p : "", b.n);
        if (out->t == V_UNDEF) rc = oom();
    }
    sl_free(b.p);
    return rc;
}

static int val_eq(const struct val *a, const struct val *b) {
    int an = a->t == V_INT || a->t == V_FLOAT || a->t == V_BOOL;
    int bn = b->t == V_INT || b->t == V_FLOAT || b->t == V_BOOL;
    if (an && bn) {
        double x = a->t == V_FLOAT ? a->f : (double)a->i, y = b->t == V_FLOAT ? b->f : (double)b->i;
        return x == y;
    }
    if (a->t != b->t) return 0;
    if (a->t == V_STR) return a->len == b->len && !memcmp(a->s, b->s, a->len);
    if (a->t == V_JSON) return cJSON_Compare(a->j, b->j, 1);
    if (a->t == V_NS) return a->ns == b->ns;
    return 1; /* none == none, undefined == undefined */
}

/* ---- scopes ------------------------------------------------------------- */

static struct val *scope_find(struct scope *s, const char *name, int walk) {
    for (; s; s = walk ? s->parent : NULL)
        for (int i = 0; i < s->n; i++)
            if (!strcmp(s->vars[i].name, name)) return &s->vars[i].v;
    return NULL;
}

static int scope_set(struct rstate *st, struct scope *s, const char *name, struct val v) {
    struct val *p = scope_find(s, name, 0);
    if (p) {
        *p = v;
        return SL_OK;
    }
    if (s->n == s->cap) {
        int cap = s->cap ? s->cap * 2 : 8;
        struct var *nv = ct_arena_alloc(&st->arena, (size_t)cap * sizeof *nv);
        if (!nv) return oom();
        if (s->n) memcpy(nv, s->vars, (size_t)s->n * sizeof *nv);
        s->vars = nv;
        s->cap = cap;
    }
    s->vars[s->n].name = name;
    s->vars[s->n++].v = v;
    return SL_OK;
}

/* ---- expressions -------------------------------------------------------- */

static int eval(struct rstate *st, struct scope *sc, const struct ct_node *n, struct val *out);

static int arg(struct rstate *st, struct scope *sc, const struct ct_node *n, int pos,
               const char *kw, struct val *out, int required) {
    for (int i = 0; i < n->n_kids; i++)
        if (n->kw && n->kw[i] && kw && !strcmp(n->kw[i], kw)) return eval(st, sc, n->kids[i], out);
    int k = 0;
    for (int i = 0; i < n->n_kids; i++) {
        if (n->kw && n->kw[i]) continue;
        if (k++ == pos) return eval(st, sc, n->kids[i], out);
    }
    *out = k_undef;
    if (required)
        return sl_seterr(SL_ERR_ARG, "chat template line %d: %s() needs argument %d", n->line,
                         n->s, pos + 1);
    return SL_OK;
}

static int need(const struct ct_node *n, const struct val *v, int t, const char *what) {
    if (v->t == t) return SL_OK;
    char m[96];
    snprintf(m, sizeof m, "%s expects a %s, got ", what,
             t == V_STR ? "string" : t == V_JSON ? "list or dict" : "number");
    return fail(n, m, type_name(v), NULL);
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
        *v = mkstr(st, v->s, v->len);
        if (v->t == V_UNDEF) return oom();
    }
    return SL_OK;
}

static int list_len(const cJSON *j) { return cJSON_GetArraySize(j); }

static int method(struct rstate *st, struct scope *sc, const struct ct_node *n, struct val *out) {
    struct val o, a1, a2;
    int rc = eval(st, sc, n->a, &o);
    if (rc) return rc;
    const char *m = n->s;
    if (o.t == V_UNDEF) return fail(n, "call of ", m, "() on an undefined value");
    if (!strcmp(m, "items") || !strcmp(m, "keys") || !strcmp(m, "values") || !strcmp(m, "get")) {
        if (o.t != V_JSON || !cJSON_IsObject(o.j))
            return fail(n, m, "() needs a dict, got ", type_name(&o));
        if (!strcmp(m, "get")) {
            if ((rc = arg(st, sc, n, 0, NULL, &a1, 1)) || (rc = arg(st, sc, n, 1, NULL, &a2, 0)))
                return rc;
            if ((rc = need(n, &a1, V_STR, "get()"))) return rc;
            const cJSON *e = cJSON_GetObjectItemCaseSensitive(o.j, a1.s);
            *out = e ? from_json(e) : (a2.t == V_UNDEF ? (struct val){.t = V_NONE} : a2);
            return SL_OK;
        }
        cJSON *arr = cJSON_CreateArray();
        for (const cJSON *e = o.j->child; arr && e; e = e->next) {
            struct val ev = from_json(e);
            cJSON *item;
            if (m[0] == 'k') item = cJSON_CreateString(e->string);
            else if (m[0] == 'v') item = to_json(&ev);
            else {
                item = cJSON_CreateArray();
                if (item) {
                    cJSON_AddItemToArray(item, cJSON_CreateString(e->string));
                    cJSON_AddItemToArray(item, to_json(&ev));
                }
            }
            if (!item) break;
            cJSON_AddItemToArray(arr, item);
        }
        return park(st, arr, out);
    }
    if ((rc = need(n, &o, V_STR, m))) return rc;
    if ((rc = arg(st, sc, n, 0, NULL, &a1, 0)) || (rc = arg(st, sc, n, 1, NULL, &a2, 0))) return rc;
    if (!strcmp(m, "startswith") || !strcmp(m, "endswith")) {
        if ((rc = need(n, &a1, V_STR, m))) return rc;
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
        *out = mkstr(st, o.s, o.len);
        if (out->t == V_UNDEF) return oom();
        for (char *p = (char *)out->s; *p; p++)
            if ((unsigned char)*p < 0x80) *p = (char)(m[0] == 'u' ? toupper(*p) : tolower(*p));
        return SL_OK;
    }
    if (!strcmp(m, "replace")) {
        if ((rc = need(n, &a1, V_STR, m)) || (rc = need(n, &a2, V_STR, m))) return rc;
        if (a1.len == 0) return fail(n, "replace() of an empty string", NULL, NULL);
        struct sbuf b = {0};
        const char *p = o.s, *e = o.s + o.len;
        while (!rc && p < e) {
            const char *h = memmem(p, (size_t)(e - p), a1.s, a1.len);
            if (!h) h = e;
            rc = sb_put(&b, p, (size_t)(h - p));
            if (!rc && h < e) rc = sb_put(&b, a2.s, a2.len);
            p = h < e ? h + a1.len : e;
        }
        if (!rc) *out = mkstr(st, b.p ? b.p : "", b.n);
        sl_free(b.p);
        return rc;
    }
    /* split(sep=None) */
    cJSON *arr = cJSON_CreateArray();
    if (!arr) return oom();
    const char *p = o.s, *e = o.s + o.len;
    if (a1.t == V_UNDEF || a1.t == V_NONE) {
        for (;;) {
            while (p < e && is_ws(*p)) p++;
            if (p >= e) break;
            const char *q = p;
            while (q < e && !is_ws(*q)) q++;
            char *w = ct_arena_strndup(&st->arena, p, (size_t)(q - p));
            cJSON_AddItemToArray(arr, w ? cJSON_CreateString(w) : NULL);
            p = q;
        }
    } else {
        if ((rc = need(n, &a1, V_STR, m))) {
            cJSON_Delete(arr);
            return rc;
        }
        if (a1.len == 0) {
            cJSON_Delete(arr);
            return fail(n, "split() with an empty separator", NULL, NULL);
        }
        for (;;) {
            const char *h = memmem(p, (size_t)(e - p), a1.s, a1.len);
            const char *q = h ? h : e;
            char *w = ct_arena_strndup(&st->arena, p, (size_t)(q - p));
            cJSON_AddItemToArray(arr, w ? cJSON_CreateString(w) : NULL);
            if (!h) break;
            p = h + a1.len;
        }
    }
    return park(st, arr, out);
}

static int filter(struct rstate *st, struct scope *sc, const struct ct_node *n, struct val *out) {
    struct val v, a1;
    int rc = eval(st, sc, n->a, &v);
    if (rc) return rc;
    const char *f = n->s;
    if (!strcmp(f, "default") || !strcmp(f, "d")) {
        struct val bl;
        if ((rc = arg(st, sc, n, 0, NULL, &a1, 0)) || (rc = arg(st, sc, n, 1, "boolean", &bl, 0)))
            return rc;
        *out = (v.t == V_UNDEF || (truthy(&bl) && !truthy(&v))) ? a1 : v;
        return SL_OK;
    }
    if (!strcmp(f, "tojson")) {
        struct sbuf b = {0};
        if (v.t == V_JSON) rc = json_write(&b, v.j);
        else {
            cJSON *j = to_json(&v);
            if (!j) return fail(n, "tojson of a ", type_name(&v), " value");
            rc = json_write(&b, j);
            cJSON_Delete(j);
        }
        if (!rc) *out = mkstr(st, b.p ? b.p : "", b.n);
        sl_free(b.p);
        return rc;
    }
    if (!strcmp(f, "string")) return to_string(st, &v, out);
    if (!strcmp(f, "length") || !strcmp(f, "count")) {
        if (v.t == V_STR) *out = (struct val){.t = V_INT, .i = utf8_len(v.s, v.len)};
        else if (v.t == V_JSON) *out = (struct val){.t = V_INT, .i = list_len(v.j)};
        else return fail(n, "length of a ", type_name(&v), " value");
        return SL_OK;
    }
    if (!strcmp(f, "first") || !strcmp(f, "last")) {
        if ((rc = need(n, &v, V_JSON, f))) return rc;
        int k = list_len(v.j);
        *out = k ? from_json(cJSON_GetArrayItem(v.j, f[0] == 'f' ? 0 : k - 1)) : k_undef;
        return SL_OK;
    }
    if (!strcmp(f, "join")) {
        if ((rc = need(n, &v, V_JSON, f)) || (rc = arg(st, sc, n, 0, NULL, &a1, 0))) return rc;
        struct sbuf b = {0};
        for (const cJSON *e = v.j->child; !rc && e; e = e->next) {
            struct val ev = from_json(e);
            if (e != v.j->child && a1.t == V_STR) rc = sb_put(&b, a1.s, a1.len);
            if (!rc) rc = val_write(&b, &ev, 0);
        }
        if (!rc) *out = mkstr(st, b.p ? b.p : "", b.n);
        sl_free(b.p);
        return rc;
    }
    if (!strcmp(f, "list")) {
        if ((rc = need(n, &v, V_JSON, f))) return rc;
        *out = v;
        return SL_OK;
    }
    if (!strcmp(f, "items")) {
        if (v.t != V_JSON || !cJSON_IsObject(v.j)) return fail(n, "items of a ", type_name(&v), " value");
        cJSON *arr = cJSON_CreateArray();
        for (const cJSON *e = v.j->child; arr && e; e = e->next) {
            struct val ev = from_json(e);
            cJSON *pair = cJSON_CreateArray();
            if (!pair) break;
            cJSON_AddItemToArray(pair, cJSON_CreateString(e->string));
            cJSON_AddItemToArray(pair, to_json(&ev));
            cJSON_AddItemToArray(arr, pair);
        }
        return park(st, arr, out);
    }
    if (!strcmp(f, "int")) {
        if (v.t == V_FLOAT) *out = (struct val){.t = V_INT, .i = (long long)v.f};
        else if (v.t == V_STR) *out = (struct val){.t = V_INT, .i = strtoll(v.s, NULL, 10)};
        else if (v.t == V_INT || v.t == V_BOOL) *out = (struct val){.t = V_INT, .i = v.i};
        else *out = (struct val){.t = V_INT, .i = 0};
        return SL_OK;
    }
    /* string filters */
    if (v.t != V_STR && (rc = to_string(st, &v, &v))) return rc;
    if (!strcmp(f, "trim")) {
        *out = strip(&v, NULL, 1, 1);
        return finish_str(st, out);
    }
    *out = mkstr(st, v.s, v.len);
    if (out->t == V_UNDEF) return oom();
    char *p = (char *)out->s;
    for (size_t i = 0; i < out->len; i++) {
        if ((unsigned char)p[i] >= 0x80) continue;
        if (!strcmp(f, "upper")) p[i] = (char)toupper(p[i]);
        else if (!strcmp(f, "lower")) p[i] = (char)tolower(p[i]);
        else p[i] = (char)(i == 0 ? toupper(p[i]) : tolower(p[i])); /* capitalize */
    }
    return SL_OK;
}

static int test(struct rstate *st, struct scope *sc, const struct ct_node *n, struct val *out) {
    struct val v;
    int rc = eval(st, sc, n->a, &v);
    if (rc) return rc;
    const char *t = n->s;
    int r = 0;
    if (!strcmp(t, "defined")) r = v.t != V_UNDEF;
    else if (!strcmp(t, "undefined")) r = v.t == V_UNDEF;
    else if (!strcmp(t, "none")) r = v.t == V_NONE;
    else if (!strcmp(t, "string")) r = v.t == V_STR;
    else if (!strcmp(t, "number")) r = v.t == V_INT || v.t == V_FLOAT;
    else if (!strcmp(t, "integer")) r = v.t == V_INT;
    else if (!strcmp(t, "float")) r = v.t == V_FLOAT;
    else if (!strcmp(t, "boolean")) r = v.t == V_BOOL;
    else if (!strcmp(t, "true")) r = v.t == V_BOOL && v.i;
    else if (!strcmp(t, "false")) r = v.t == V_BOOL && !v.i;
    else if (!strcmp(t, "mapping")) r = (v.t == V_JSON && cJSON_IsObject(v.j)) || v.t == V_NS;
    else if (!strcmp(t, "sequence") || !strcmp(t, "iterable")) r = v.t == V_JSON || v.t == V_STR;
    else if (!strcmp(t, "even") || !strcmp(t, "odd")) {
        if (v.t != V_INT) return fail(n, "test '", t, "' of a non-integer");
        r = (v.i % 2 == 0) == (t[0] == 'e');
    } else return fail(n, "unknown test ", t, NULL);
    *out = (struct val){.t = V_BOOL, .i = n->op ? !r : r};
    return SL_OK;
}

static int getattr(struct rstate *st, const struct ct_node *n, const struct val *o,
                   const char *name, struct val *out) {
    (void)st;
    *out = k_undef;
    if (o->t == V_UNDEF) return fail(n, "attribute '", name, "' of an undefined value");
    if (o->t == V_JSON && cJSON_IsObject(o->j))
        *out = from_json(cJSON_GetObjectItemCaseSensitive(o->j, name));
    else if (o->t == V_NS) {
        struct val *p = scope_find(o->ns, name, 0);
        if (p) *out = *p;
    } else if (o->t == V_LOOP) {
        const struct loop_state *l = o->loop;
        long long x = -1;
        if (!strcmp(name, "index0")) x = l->index0;
        else if (!strcmp(name, "index")) x = l->index0 + 1;
        else if (!strcmp(name, "length")) x = l->length;
        else if (!strcmp(name, "revindex")) x = l->length - l->index0;
        else if (!strcmp(name, "revindex0")) x = l->length - l->index0 - 1;
        if (x >= 0) *out = (struct val){.t = V_INT, .i = x};
        else if (!strcmp(name, "first")) *out = (struct val){.t = V_BOOL, .i = l->index0 == 0};
        else if (!strcmp(name, "last"))
            *out = (struct val){.t = V_BOOL, .i = l->index0 == l->length - 1};
        else return fail(n, "unsupported loop attribute '", name, "'");
    }
    return SL_OK;
}

static int eval_index(struct rstate *st, const struct ct_node *n, const struct val *o,
                      const struct val *k, struct val *out) {
    if (k->t == V_STR) return getattr(st, n, o, k->s, out);
    if (o->t == V_UNDEF) return fail(n, "subscript of an undefined value", NULL, NULL);
    if (k->t != V_INT) return fail(n, "index of type ", type_name(k), NULL);
    long long i = k->i;
    *out = k_undef;
    if (o->t == V_JSON && cJSON_IsArray(o->j)) {
        long long len = list_len(o->j);
        if (i < 0) i += len;
        if (i >= 0 && i < len) *out = from_json(cJSON_GetArrayItem(o->j, (int)i));
    } else if (o->t == V_STR) {
        if (i < 0) i += (long long)o->len;
        if (i >= 0 && i < (long long)o->len) *out = mkstr(st, o->s + i, 1);
    } else {
        return fail(n, "subscript of a ", type_name(o), " value");
    }
    return SL_OK;
}

static int eval_slice(struct rstate *st, struct scope *sc, const struct ct_node *n,
                      struct val *out) {
    struct val o, p[3];
    int rc = eval(st, sc, n->a, &o);
    for (int k = 0; k < 3 && !rc; k++) {
        p[k] = k_undef;
        if (n->kids[k]) rc = eval(st, sc, n->kids[k], &p[k]);
        if (!rc && p[k].t != V_UNDEF && p[k].t != V_NONE && p[k].t != V_INT)
            return fail(n, "slice bound of type ", type_name(&p[k]), NULL);
    }
    if (rc) return rc;
    long long len;
    if (o.t == V_STR) len = (long long)o.len;
    else if (o.t == V_JSON && cJSON_IsArray(o.j)) len = list_len(o.j);
    else return fail(n, "slice of a ", type_name(&o), " value");
    long long step = p[2].t == V_INT ? p[2].i : 1;
    if (step == 0) return fail(n, "slice step 0", NULL, NULL);
    long long lo, hi;
    /* Python's slice.indices */
    long long dlo = step > 0 ? 0 : len - 1, dhi = step > 0 ? len : -1;
    lo = p[0].t == V_INT ? p[0].i : dlo;
    hi = p[1].t == V_INT ? p[1].i : dhi;
    if (p[0].t == V_INT) {
        if (lo < 0) lo += len;
        if (lo < 0) lo = step > 0 ? 0 : -1;
        if (lo >= len) lo = step > 0 ? len : len - 1;
    }
    if (p[1].t == V_INT) {
        if (hi < 0) hi += len;
        if (hi < 0) hi = step > 0 ? 0 : -1;
        if (hi >= len) hi = step > 0 ? len : len - 1;
    }
    if (o.t == V_STR) {
        struct sbuf b = {0};
        for (long long i = lo; !rc && (step > 0 ? i < hi : i > hi); i += step)
            rc = sb_put(&b, o.s + i, 1);
        if (!rc) *out = mkstr(st, b.p ? b.p : "", b.n);
        sl_free(b.p);
        return rc;
    }
    cJSON *arr = cJSON_CreateArray();
    for (long long i = lo; arr && (step > 0 ? i < hi : i > hi); i += step) {
        struct val ev = from_json(cJSON_GetArrayItem(o.j, (int)i));
        cJSON_AddItemToArray(arr, to_json(&ev));
    }
    return park(st, arr, out);
}

static int arith(const struct ct_node *n, const struct val *a, const struct val *b,
                 struct val *out) {
    int ai = a->t == V_INT || a->t == V_BOOL, bi = b->t == V_INT || b->t == V_BOOL;
    if (!(ai || a->t == V_FLOAT) || !(bi || b->t == V_FLOAT))
        return fail(n, "arithmetic on ", type_name(a), type_name(b)[0] ? " and another type" : "");
    double x = ai ? (double)a->i : a->f, y = bi ? (double)b->i : b->f;
    int op = n->op;
    if ((op == CT_OP_DIV || op == CT_OP_FLOORDIV || op == CT_OP_MOD) && y == 0)
        return fail(n, "division by zero", NULL, NULL);
    if (ai && bi && op != CT_OP_DIV) {
        long long p = a->i, q = b->i, r;
        if (op == CT_OP_ADD) r = p + q;
        else if (op == CT_OP_SUB) r = p - q;
        else if (op == CT_OP_MUL) r = p * q;
        else if (op == CT_OP_FLOORDIV) r = (long long)floor((double)p / (double)q);
        else r = p - q * (long long)floor((double)p / (double)q);
        *out = (struct val){.t = V_INT, .i = r};
        return SL_OK;
    }
    double r = op == CT_OP_ADD ? x + y : op == CT_OP_SUB ? x - y : op == CT_OP_MUL ? x * y
             : op == CT_OP_DIV ? x / y : op == CT_OP_FLOORDIV ? floor(x / y)
             : x - y * floor(x / y);
    *out = (struct val){.t = V_FLOAT, .f = r};
    return SL_OK;
}

static int contains(const struct ct_node *n, const struct val *needle, const struct val *hay,
                    int *r) {
    if (hay->t == V_STR) {
        if (needle->t != V_STR) return fail(n, "'in <string>' needs a string, got ", type_name(needle), NULL);
        *r = memmem(hay->s, hay->len, needle->s, needle->len) != NULL;
    } else if (hay->t == V_JSON && cJSON_IsObject(hay->j)) {
        *r = needle->t == V_STR && cJSON_GetObjectItemCaseSensitive(hay->j, needle->s) != NULL;
    } else if (hay->t == V_JSON) {
        *r = 0;
        for (const cJSON *e = hay->j->child; e && !*r; e = e->next) {
            struct val ev = from_json(e);
            *r = val_eq(needle, &ev);
        }
    } else {
        return fail(n, "'in' on a ", type_name(hay), " value");
    }
    return SL_OK;
}

static int binary(struct rstate *st, struct scope *sc, const struct ct_node *n, struct val *out) {
    struct val a, b;
    int rc = eval(st, sc, n->a, &a);
    if (!rc) rc = eval(st, sc, n->b, &b);
    if (rc) return rc;
    int r = 0;
    switch (n->op) {
    case CT_OP_CONCAT: {
        struct val x, y;
        if ((rc = to_string(st, &a, &x)) || (rc = to_string(st, &b, &y))) return rc;
        struct sbuf s = {0};
        rc = sb_put(&s, x.s, x.len);
        if (!rc) rc = sb_put(&s, y.s, y.len);
        if (!rc) *out = mkstr(st, s.p ? s.p : "", s.n);
        sl_free(s.p);
        return rc;
    }
    case CT_OP_ADD:
        if (a.t == V_STR && b.t == V_STR) {
            char *p = ct_arena_alloc(&st->arena, a.len + b.len + 1);
            if (!p) return oom();
            memcpy(p, a.s, a.len);
            memcpy(p + a.len, b.s, b.len);
            *out = (struct val){.t = V_STR, .s = p, .len = a.len + b.len};
            return SL_OK;
        }
        if (a.t == V_JSON && b.t == V_JSON && cJSON_IsArray(a.j) && cJSON_IsArray(b.j)) {
            cJSON *arr = cJSON_CreateArray();
            for (const cJSON *e = a.j->child; arr && e; e = e->next) {
                struct val ev = from_json(e);
                cJSON_AddItemToArray(arr, to_json(&ev));
            }
            for (const cJSON *e = b.j->child; arr && e; e = e->next) {
                struct val ev = from_json(e);
                cJSON_AddItemToArray(arr, to_json(&ev));
            }
            return park(st, arr, out);
        }
        if (a.t == V_STR || b.t == V_STR)
            return fail(n, "'+' of ", type_name(&a), b.t == V_STR ? " and a string" : " and a non-string");
        return arith(n, &a, &b, out);
    case CT_OP_SUB: case CT_OP_MUL: case CT_OP_DIV: case CT_OP_FLOORDIV: case CT_OP_MOD:
        return arith(n, &a, &b, out);
    case CT_OP_EQ: r = val_eq(&a, &b); break;
    case CT_OP_NE: r = !val_eq(&a, &b); break;
    case CT_OP_IN: case CT_OP_NOT_IN:
        if ((rc = contains(n, &a, &b, &r))) return rc;
        if (n->op == CT_OP_NOT_IN) r = !r;
        break;
    default: { /* ordering */
        double c;
        if (a.t == V_STR && b.t == V_STR) {
            size_t m = a.len < b.len ? a.len : b.len;
            int k = memcmp(a.s, b.s, m);
            c = k ? k : (double)a.len - (double)b.len;
        } else if ((a.t == V_INT || a.t == V_FLOAT || a.t == V_BOOL) &&
                   (b.t == V_INT || b.t == V_FLOAT || b.t == V_BOOL)) {
            c = (a.t == V_FLOAT ? a.f : (double)a.i) - (b.t == V_FLOAT ? b.f : (double)b.i);
        } else {
            return fail(n, "comparison of ", type_name(&a), " with another type");
        }
        r = n->op == CT_OP_LT ? c < 0 : n->op == CT_OP_LE ? c <= 0 : n->op == CT_OP_GT ? c > 0 : c >= 0;
    }
    }
    *out = (struct val){.t = V_BOOL, .i = r};
    return SL_OK;
}

static int call(struct rstate *st, struct scope *sc, const struct ct_node *n, struct val *out) {
    int rc;
    if (!strcmp(n->s, "namespace")) {
        struct scope *ns = ct_arena_alloc(&st->arena, sizeof *ns);
        if (!ns) return oom();
        for (int i = 0; i < n->n_kids; i++) {
            struct val v;
            if (!n->kw[i]) return fail(n, "namespace() takes keyword arguments only", NULL, NULL);
            if ((rc = eval(st, sc, n->kids[i], &v)) || (rc = scope_set(st, ns, n->kw[i], v)))
                return rc;
        }
        *out = (struct val){.t = V_NS, .ns = ns};
        return SL_OK;
    }
    if (!strcmp(n->s, "raise_exception")) {
        struct val m, s;
        if ((rc = arg(st, sc, n, 0, NULL, &m, 0)) || (rc = to_string(st, &m, &s))) return rc;
        return sl_seterr(SL_ERR_ARG, "chat template raised an exception: %s", s.s);
    }
    /* range(stop) / range(start, stop[, step]) */
    struct val a[3];
    long long x[3] = {0, 0, 1};
    int k = 0;
    for (; k < 3; k++) {
        if ((rc = arg(st, sc, n, k, NULL, &a[k], 0))) return rc;
        if (a[k].t == V_UNDEF) break;
        if (a[k].t != V_INT) return fail(n, "range() of a ", type_name(&a[k]), NULL);
    }
    if (k == 0) return fail(n, "range() needs arguments", NULL, NULL);
    if (k == 1) x[1] = a[0].i;
    else for (int i = 0; i < k; i++) x[i] = a[i].i;
    if (x[2] == 0) return fail(n, "range() step 0", NULL, NULL);
    cJSON *arr = cJSON_CreateArray();
    for (long long i = x[0]; arr && (x[2] > 0 ? i < x[1] : i > x[1]); i += x[2]) {
        if (list_len(arr) > 1000000) break;
        cJSON_AddItemToArray(arr, cJSON_CreateNumber((double)i));
    }
    return park(st, arr, out);
}

static int eval(struct rstate *st, struct scope *sc, const struct ct_node *n, struct val *out) {
    int rc;
    struct val a, b;
    switch (n->kind) {
    case CT_STR: *out = (struct val){.t = V_STR, .s = n->s, .len = n->len}; return SL_OK;
    case CT_INT: *out = (struct val){.t = V_INT, .i = n->i}; return SL_OK;
    case CT_FLOAT: *out = (struct val){.t = V_FLOAT, .f = n->f}; return SL_OK;
    case CT_BOOL: *out = (struct val){.t = V_BOOL, .i = n->i}; return SL_OK;
    case CT_NONE: *out = (struct val){.t = V_NONE}; return SL_OK;
    case CT_NAME: {
        const struct val *p = scope_find(sc, n->s, 1);
        *out = p ? *p : k_undef;
        return SL_OK;
    }
    case CT_LIST: {
        cJSON *arr = cJSON_CreateArray();
        if (!arr) return oom();
        for (int i = 0; i < n->n_kids; i++) {
            if ((rc = eval(st, sc, n->kids[i], &a))) {
                cJSON_Delete(arr);
                return rc;
            }
            cJSON *item = to_json(&a);
            if (!item) {
                cJSON_Delete(arr);
                return fail(n, "a list cannot hold a ", type_name(&a), " value");
            }
            cJSON_AddItemToArray(arr, item);
        }
        return park(st, arr, out);
    }
    case CT_ATTR:
        if ((rc = eval(st, sc, n->a, &a))) return rc;
        return getattr(st, n, &a, n->s, out);
    case CT_INDEX:
        if ((rc = eval(st, sc, n->a, &a)) || (rc = eval(st, sc, n->b, &b))) return rc;
        return eval_index(st, n, &a, &b, out);
    case CT_SLICE: return eval_slice(st, sc, n, out);
    case CT_METHOD: return method(st, sc, n, out);
    case CT_CALL: return call(st, sc, n, out);
    case CT_FILTER: return filter(st, sc, n, out);
    case CT_TEST: return test(st, sc, n, out);
    case CT_NOT:
        if ((rc = eval(st, sc, n->a, &a))) return rc;
        *out = (struct val){.t = V_BOOL, .i = !truthy(&a)};
        return SL_OK;
    case CT_NEG:
        if ((rc = eval(st, sc, n->a, &a))) return rc;
        if (a.t == V_INT) *out = (struct val){.t = V_INT, .i = -a.i};
        else if (a.t == V_FLOAT) *out = (struct val){.t = V_FLOAT, .f = -a.f};
        else return fail(n, "negation of a ", type_name(&a), " value");
        return SL_OK;
    case CT_AND: case CT_OR:
        if ((rc = eval(st, sc, n->a, &a))) return rc;
        if (truthy(&a) == (n->kind == CT_OR)) {
            *out = a;
            return SL_OK;
        }
        return eval(st, sc, n->b, out);
    case CT_COND:
        if ((rc = eval(st, sc, n->b, &b))) return rc;
        if (truthy(&b)) return eval(st, sc, n->a, out);
        if (n->c) return eval(st, sc, n->c, out);
        *out = k_undef;
        return SL_OK;
    case CT_BINOP: return binary(st, sc, n, out);
    default: return sl_seterr(SL_ERR_INTERNAL, "chat template: node kind %d in an expression", n->kind);
    }
}

/* ---- statements --------------------------------------------------------- */

static int exec_list(struct rstate *st, struct scope *sc, const struct ct_node *n);

static int exec_for(struct rstate *st, struct scope *sc, const struct ct_node *n) {
    struct val it;
    int rc = eval(st, sc, n->a, &it);
    if (rc) return rc;
    if (it.t == V_UNDEF || it.t == V_NONE) return exec_list(st, sc, n->c);
    const cJSON *items = NULL;
    if (it.t == V_JSON) items = it.j;
    else if (it.t == V_STR) { /* characters (bytes of ASCII; UTF-8 sequences kept whole) */
        cJSON *arr = cJSON_CreateArray();
        for (size_t i = 0; arr && i < it.len;) {
            size_t k = 1;
            while (i + k < it.len && ((unsigned char)it.s[i + k] & 0xC0) == 0x80) k++;
            char *w = ct_arena_strndup(&st->arena, it.s + i, k);
            cJSON_AddItemToArray(arr, w ? cJSON_CreateString(w) : NULL);
            i += k;
        }
        struct val pv = {0};
        if ((rc = park(st, arr, &pv))) return rc;
        items = pv.j;
    } else {
        return fail(n, "for loop over a ", type_name(&it), " value");
    }
    int obj = cJSON_IsObject(items);
    struct loop_state ls = {0, list_len(items)};
    if (ls.length == 0) return exec_list(st, sc, n->c);
    for (const cJSON *e = items->child; e; e = e->next, ls.index0++) {
        struct scope inner = {.parent = sc};
        struct val ev = obj ? (struct val){.t = V_STR, .s = e->string, .len = strlen(e->string)}
                            : from_json(e);
        if (n->s2) { /* a, b in pairs */
            if (ev.t != V_JSON || list_len(ev.j) != 2)
                return fail(n, "cannot unpack a ", type_name(&ev), " into two loop variables");
            if ((rc = scope_set(st, &inner, n->s, from_json(cJSON_GetArrayItem(ev.j, 0)))) ||
                (rc = scope_set(st, &inner, n->s2, from_json(cJSON_GetArrayItem(ev.j, 1)))))
                return rc;
        } else if ((rc = scope_set(st, &inner, n->s, ev))) {
            return rc;
        }
        if ((rc = scope_set(st, &inner, "loop", (struct val){.t = V_LOOP, .loop = &ls})) ||
            (rc = exec_list(st, &inner, n->b)))
            return rc;
        if (st->flow == 1) {
            st->flow = 0;
            break;
        }
        st->flow = 0;
    }
    return SL_OK;
}

static int exec_list(struct rstate *st, struct scope *sc, const struct ct_node *n) {
    int rc = SL_OK;
    struct val v;
    for (; n && !rc && !st->flow; n = n->next) {
        switch (n->kind) {
        case CT_TEXT: rc = sb_put(&st->out, n->s, n->len); break;
        case CT_OUT:
            if (!(rc = eval(st, sc, n->a, &v))) rc = val_write(&st->out, &v, 0);
            break;
        case CT_IF:
            if (!(rc = eval(st, sc, n->a, &v))) rc = exec_list(st, sc, truthy(&v) ? n->b : n->c);
            break;
        case CT_FOR: rc = exec_for(st, sc, n); break;
        case CT_SET:
            if ((rc = eval(st, sc, n->a, &v))) break;
            if (n->s2) {
                struct val *ns = scope_find(sc, n->s, 1);
                if (!ns || ns->t != V_NS)
                    rc = fail(n, "set ", n->s, ".attribute: not a namespace");
                else rc = scope_set(st, ns->ns, n->s2, v);
            } else {
                rc = scope_set(st, sc, n->s, v);
            }
            break;
        case CT_BREAK: st->flow = 1; break;
        case CT_CONTINUE: st->flow = 2; break;
        default: rc = sl_seterr(SL_ERR_INTERNAL, "chat template: node kind %d as a statement", n->kind);
        }
    }
    return rc;
}

int chat_template_render(const struct chat_template *t, const cJSON *vars, char **out,
                         size_t *out_len) {
    *out = NULL;
    if (out_len) *out_len = 0;
    if (!t || !cJSON_IsObject(vars))
        return sl_seterr(SL_ERR_ARG, "chat template render: vars must be a JSON object");
    struct rstate st = {0};
    struct scope globals = {0};
    st.junk = cJSON_CreateArray();
    int rc = st.junk ? SL_OK : oom();
    for (const cJSON *e = vars->child; !rc && e; e = e->next)
        rc = scope_set(&st, &globals, e->string, from_json(e));
    if (!rc) rc = sb_put(&st.out, "", 0);
    if (!rc) rc = exec_list(&st, &globals, t->body);
    cJSON_Delete(st.junk);
    ct_arena_free(&st.arena);
    if (rc) {
        sl_free(st.out.p);
        return rc;
    }
    *out = st.out.p;
    if (out_len) *out_len = st.out.n;
    return SL_OK;
}
