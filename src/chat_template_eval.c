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
 * Macros run in a scope whose parent is the template's top level, with
 * their own output buffer; their result is a string. Filters and methods
 * live in chat_template_filters.c.
 */
#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include <time.h>

#include "chat_template.h"
#include "chat_template_eval.h"
#include "util.h"

int ct_oom(void) { return sl_seterr(SL_ERR_NOMEM, "chat template: out of memory"); }

int ct_sb_put(struct sbuf *b, const char *s, size_t n) {
    if (n > CT_MAX_STRING || b->n + n > CT_MAX_STRING)
        return sl_seterr(SL_ERR_ARG, "chat template: rendered text over %zu bytes",
                         CT_MAX_STRING);
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = sl_realloc(b->p, cap);
        if (!p) return ct_oom();
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return SL_OK;
}
int ct_sb_str(struct sbuf *b, const char *s) { return ct_sb_put(b, s, strlen(s)); }

struct val ct_from_json(const cJSON *j) {
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

struct val ct_mkstr(struct rstate *st, const char *s, size_t n) {
    struct val v = {.t = V_STR, .len = n};
    v.s = ct_arena_strndup(&st->arena, s, n);
    if (!v.s) v.t = V_UNDEF;
    return v;
}

/* A fresh, unparented cJSON item holding v (JSON containers by reference). */
cJSON *ct_to_json(const struct val *v) {
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
int ct_park(struct rstate *st, cJSON *arr, struct val *out) {
    if (!arr) return ct_oom();
    cJSON_AddItemToArray(st->junk, arr);
    *out = (struct val){.t = V_JSON, .j = arr};
    return SL_OK;
}

int ct_truthy(const struct val *v) {
    switch (v->t) {
    case V_BOOL: case V_INT: return v->i != 0;
    case V_FLOAT: return v->f != 0;
    case V_STR: return v->len > 0;
    case V_JSON: return v->j->child != NULL;
    case V_NS: case V_LOOP: case V_MACRO: return 1;
    default: return 0;
    }
}

const char *ct_type_name(const struct val *v) {
    static const char *const n[] = {"undefined", "none", "bool", "int", "float",
                                    "string", "list", "namespace", "loop", "macro"};
    if (v->t == V_JSON && cJSON_IsObject(v->j)) return "dict";
    return n[v->t];
}

int ct_fail(const struct ct_node *n, const char *fmt, const char *a, const char *b) {
    return sl_seterr(SL_ERR_ARG, "chat template line %d: %s%s%s", n->line, fmt, a ? a : "",
                     b ? b : "");
}

/* Python's repr of a float: the shortest form that round-trips. */
void ct_float_repr(double f, char *buf, size_t n) {
    if (isnan(f)) { snprintf(buf, n, "nan"); return; }
    if (isinf(f)) { snprintf(buf, n, f < 0 ? "-inf" : "inf"); return; }
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, n, "%.*g", p, f);
        if (strtod(buf, NULL) == f) break;
    }
    if (!strpbrk(buf, ".en")) strncat(buf, ".0", n - strlen(buf) - 1);
}

int ct_val_write(struct sbuf *b, const struct val *v, int repr) {
    char num[40];
    switch (v->t) {
    case V_UNDEF: return SL_OK;
    case V_NONE: return ct_sb_str(b, "None");
    case V_BOOL: return ct_sb_str(b, v->i ? "True" : "False");
    case V_INT: snprintf(num, sizeof num, "%lld", v->i); return ct_sb_str(b, num);
    case V_FLOAT: ct_float_repr(v->f, num, sizeof num); return ct_sb_str(b, num);
    case V_STR:
        if (!repr) return ct_sb_put(b, v->s, v->len);
        {
            int rc = ct_sb_put(b, "'", 1);
            if (!rc) rc = ct_sb_put(b, v->s, v->len);
            return rc ? rc : ct_sb_put(b, "'", 1);
        }
    case V_JSON: {
        int obj = cJSON_IsObject(v->j), rc = ct_sb_put(b, obj ? "{" : "[", 1);
        for (const cJSON *e = v->j->child; !rc && e; e = e->next) {
            if (e != v->j->child) rc = ct_sb_put(b, ", ", 2);
            if (!rc && obj) {
                struct val k = {.t = V_STR, .s = e->string, .len = strlen(e->string)};
                rc = ct_val_write(b, &k, 1);
                if (!rc) rc = ct_sb_put(b, ": ", 2);
            }
            struct val ev = ct_from_json(e);
            if (!rc) rc = ct_val_write(b, &ev, 1);
        }
        return rc ? rc : ct_sb_put(b, obj ? "}" : "]", 1);
    }
    default: return ct_sb_str(b, "<object>");
    }
}

int ct_to_string(struct rstate *st, const struct val *v, struct val *out) {
    if (v->t == V_STR) {
        *out = *v;
        return SL_OK;
    }
    struct sbuf b = {0};
    int rc = ct_val_write(&b, v, 0);
    if (!rc) {
        *out = ct_mkstr(st, b.p ? b.p : "", b.n);
        if (out->t == V_UNDEF) rc = ct_oom();
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
        if (!nv) return ct_oom();
        if (s->n) memcpy(nv, s->vars, (size_t)s->n * sizeof *nv);
        s->vars = nv;
        s->cap = cap;
    }
    s->vars[s->n].name = name;
    s->vars[s->n++].v = v;
    return SL_OK;
}

/* ---- expressions -------------------------------------------------------- */


int ct_arg(struct rstate *st, struct scope *sc, const struct ct_node *n, int pos,
               const char *kw, struct val *out, int required) {
    for (int i = 0; i < n->n_kids; i++)
        if (n->kw && n->kw[i] && kw && !strcmp(n->kw[i], kw)) return ct_eval(st, sc, n->kids[i], out);
    int k = 0;
    for (int i = 0; i < n->n_kids; i++) {
        if (n->kw && n->kw[i]) continue;
        if (k++ == pos) return ct_eval(st, sc, n->kids[i], out);
    }
    *out = k_undef;
    if (required)
        return sl_seterr(SL_ERR_ARG, "chat template line %d: %s() needs argument %d", n->line,
                         n->s, pos + 1);
    return SL_OK;
}

int ct_need(const struct ct_node *n, const struct val *v, int t, const char *what) {
    if (v->t == t) return SL_OK;
    char m[96];
    snprintf(m, sizeof m, "%s expects a %s, got ", what,
             t == V_STR ? "string" : t == V_JSON ? "list or dict" : "number");
    return ct_fail(n, m, ct_type_name(v), NULL);
}

static int test(struct rstate *st, struct scope *sc, const struct ct_node *n, struct val *out) {
    struct val v;
    int rc = ct_eval(st, sc, n->a, &v);
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
        if (v.t != V_INT) return ct_fail(n, "test '", t, "' of a non-integer");
        r = (v.i % 2 == 0) == (t[0] == 'e');
    } else return ct_fail(n, "unknown test ", t, NULL);
    *out = (struct val){.t = V_BOOL, .i = n->op ? !r : r};
    return SL_OK;
}

static int getattr(struct rstate *st, const struct ct_node *n, const struct val *o,
                   const char *name, struct val *out) {
    (void)st;
    *out = k_undef;
    if (o->t == V_UNDEF) return ct_fail(n, "attribute '", name, "' of an undefined value");
    if (o->t == V_JSON && cJSON_IsObject(o->j))
        *out = ct_from_json(cJSON_GetObjectItemCaseSensitive(o->j, name));
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
        else return ct_fail(n, "unsupported loop attribute '", name, "'");
    }
    return SL_OK;
}

static int eval_index(struct rstate *st, const struct ct_node *n, const struct val *o,
                      const struct val *k, struct val *out) {
    if (k->t == V_STR) return getattr(st, n, o, k->s, out);
    if (o->t == V_UNDEF) return ct_fail(n, "subscript of an undefined value", NULL, NULL);
    if (k->t != V_INT) return ct_fail(n, "index of type ", ct_type_name(k), NULL);
    long long i = k->i;
    *out = k_undef;
    if (o->t == V_JSON && cJSON_IsArray(o->j)) {
        long long len = list_len(o->j);
        if (i < 0) i += len;
        if (i >= 0 && i < len) *out = ct_from_json(cJSON_GetArrayItem(o->j, (int)i));
    } else if (o->t == V_STR) {
        if (i < 0) i += (long long)o->len;
        if (i >= 0 && i < (long long)o->len) *out = ct_mkstr(st, o->s + i, 1);
    } else {
        return ct_fail(n, "subscript of a ", ct_type_name(o), " value");
    }
    return SL_OK;
}

static int eval_slice(struct rstate *st, struct scope *sc, const struct ct_node *n,
                      struct val *out) {
    struct val o, p[3];
    int rc = ct_eval(st, sc, n->a, &o);
    for (int k = 0; k < 3 && !rc; k++) {
        p[k] = k_undef;
        if (n->kids[k]) rc = ct_eval(st, sc, n->kids[k], &p[k]);
        if (!rc && p[k].t != V_UNDEF && p[k].t != V_NONE && p[k].t != V_INT)
            return ct_fail(n, "slice bound of type ", ct_type_name(&p[k]), NULL);
    }
    if (rc) return rc;
    long long len;
    if (o.t == V_STR) len = (long long)o.len;
    else if (o.t == V_JSON && cJSON_IsArray(o.j)) len = list_len(o.j);
    else return ct_fail(n, "slice of a ", ct_type_name(&o), " value");
    long long step = p[2].t == V_INT ? p[2].i : 1;
    if (step == 0) return ct_fail(n, "slice step 0", NULL, NULL);
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
            rc = ct_sb_put(&b, o.s + i, 1);
        if (!rc) *out = ct_mkstr(st, b.p ? b.p : "", b.n);
        sl_free(b.p);
        return rc;
    }
    cJSON *arr = cJSON_CreateArray();
    for (long long i = lo; arr && (step > 0 ? i < hi : i > hi); i += step) {
        struct val ev = ct_from_json(cJSON_GetArrayItem(o.j, (int)i));
        cJSON_AddItemToArray(arr, ct_to_json(&ev));
    }
    return ct_park(st, arr, out);
}

static int arith(const struct ct_node *n, const struct val *a, const struct val *b,
                 struct val *out) {
    int ai = a->t == V_INT || a->t == V_BOOL, bi = b->t == V_INT || b->t == V_BOOL;
    if (!(ai || a->t == V_FLOAT) || !(bi || b->t == V_FLOAT))
        return ct_fail(n, "arithmetic on ", ct_type_name(a), ct_type_name(b)[0] ? " and another type" : "");
    double x = ai ? (double)a->i : a->f, y = bi ? (double)b->i : b->f;
    int op = n->op;
    if ((op == CT_OP_DIV || op == CT_OP_FLOORDIV || op == CT_OP_MOD) && y == 0)
        return ct_fail(n, "division by zero", NULL, NULL);
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
        if (needle->t != V_STR) return ct_fail(n, "'in <string>' needs a string, got ", ct_type_name(needle), NULL);
        *r = memmem(hay->s, hay->len, needle->s, needle->len) != NULL;
    } else if (hay->t == V_JSON && cJSON_IsObject(hay->j)) {
        *r = needle->t == V_STR && cJSON_GetObjectItemCaseSensitive(hay->j, needle->s) != NULL;
    } else if (hay->t == V_JSON) {
        *r = 0;
        for (const cJSON *e = hay->j->child; e && !*r; e = e->next) {
            struct val ev = ct_from_json(e);
            *r = val_eq(needle, &ev);
        }
    } else {
        return ct_fail(n, "'in' on a ", ct_type_name(hay), " value");
    }
    return SL_OK;
}

static int binary(struct rstate *st, struct scope *sc, const struct ct_node *n, struct val *out) {
    struct val a, b;
    int rc = ct_eval(st, sc, n->a, &a);
    if (!rc) rc = ct_eval(st, sc, n->b, &b);
    if (rc) return rc;
    int r = 0;
    switch (n->op) {
    case CT_OP_CONCAT: {
        struct val x, y;
        if ((rc = ct_to_string(st, &a, &x)) || (rc = ct_to_string(st, &b, &y))) return rc;
        struct sbuf s = {0};
        rc = ct_sb_put(&s, x.s, x.len);
        if (!rc) rc = ct_sb_put(&s, y.s, y.len);
        if (!rc) *out = ct_mkstr(st, s.p ? s.p : "", s.n);
        sl_free(s.p);
        return rc;
    }
    case CT_OP_ADD:
        if (a.t == V_STR && b.t == V_STR) {
            if (a.len + b.len > CT_MAX_STRING)
                return ct_fail(n, "string over the size limit", NULL, NULL);
            char *p = ct_arena_alloc(&st->arena, a.len + b.len + 1);
            if (!p) return ct_oom();
            memcpy(p, a.s, a.len);
            memcpy(p + a.len, b.s, b.len);
            *out = (struct val){.t = V_STR, .s = p, .len = a.len + b.len};
            return SL_OK;
        }
        if (a.t == V_JSON && b.t == V_JSON && cJSON_IsArray(a.j) && cJSON_IsArray(b.j)) {
            cJSON *arr = cJSON_CreateArray();
            for (const cJSON *e = a.j->child; arr && e; e = e->next) {
                struct val ev = ct_from_json(e);
                cJSON_AddItemToArray(arr, ct_to_json(&ev));
            }
            for (const cJSON *e = b.j->child; arr && e; e = e->next) {
                struct val ev = ct_from_json(e);
                cJSON_AddItemToArray(arr, ct_to_json(&ev));
            }
            return ct_park(st, arr, out);
        }
        if (a.t == V_STR || b.t == V_STR)
            return ct_fail(n, "'+' of ", ct_type_name(&a), b.t == V_STR ? " and a string" : " and a non-string");
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
            return ct_fail(n, "comparison of ", ct_type_name(&a), " with another type");
        }
        r = n->op == CT_OP_LT ? c < 0 : n->op == CT_OP_LE ? c <= 0 : n->op == CT_OP_GT ? c > 0 : c >= 0;
    }
    }
    *out = (struct val){.t = V_BOOL, .i = r};
    return SL_OK;
}

static int exec_list(struct rstate *st, struct scope *sc, const struct ct_node *n);

/* A call of macro m (a CT_MACRO node) with the arguments of call node n:
 * parameters bound by position then keyword, defaults evaluated in the
 * macro's scope; the body renders into its own buffer, which is the result. */
static int call_macro(struct rstate *st, struct scope *sc, const struct ct_node *n,
                      const struct ct_node *m, struct val *out) {
    int rc = SL_OK, npos = 0;
    if (st->depth >= CT_MAX_DEPTH)
        return ct_fail(n, "macro calls nested deeper than the limit (recursion?) in ", m->s, "()");
    struct scope *msc = ct_arena_alloc(&st->arena, sizeof *msc);
    if (!msc) return ct_oom();
    msc->parent = st->globals;
    for (int i = 0; i < n->n_kids; i++) {
        struct val v;
        int k = -1;
        if (n->kw && n->kw[i]) {
            for (int j = 0; j < m->n_kids && k < 0; j++)
                if (!strcmp(m->kw[j], n->kw[i])) k = j;
            if (k < 0) return ct_fail(n, m->s, "() got an unexpected keyword argument ", n->kw[i]);
        } else if ((k = npos++) >= m->n_kids) {
            return ct_fail(n, m->s, "() got too many arguments", NULL);
        }
        if ((rc = ct_eval(st, sc, n->kids[i], &v)) || (rc = scope_set(st, msc, m->kw[k], v)))
            return rc;
    }
    for (int j = 0; j < m->n_kids; j++) {
        if (scope_find(msc, m->kw[j], 0)) continue;
        struct val v = k_undef; /* Jinja: a missing argument is undefined */
        if (m->kids[j] && (rc = ct_eval(st, msc, m->kids[j], &v))) return rc;
        if ((rc = scope_set(st, msc, m->kw[j], v))) return rc;
    }
    struct sbuf saved = st->out;
    st->out = (struct sbuf){0};
    st->depth++;
    rc = ct_sb_put(&st->out, "", 0);
    if (!rc) rc = exec_list(st, msc, m->b);
    st->depth--;
    st->flow = 0;
    if (!rc) {
        *out = ct_mkstr(st, st->out.p, st->out.n);
        if (out->t == V_UNDEF) rc = ct_oom();
    }
    sl_free(st->out.p);
    st->out = saved;
    return rc;
}

/* strftime_now(format): the local time now, or the instant of the
 * SOURCE_DATE_EPOCH environment variable (UTC) when set, for reproducible
 * prompts and tests. */
static int strftime_now(struct rstate *st, struct scope *sc, const struct ct_node *n,
                        struct val *out) {
    struct val f;
    int rc = ct_arg(st, sc, n, 0, NULL, &f, 1);
    if (rc || (rc = ct_need(n, &f, V_STR, "strftime_now()"))) return rc;
    const char *sde = getenv("SOURCE_DATE_EPOCH");
    struct tm tm;
    time_t now;
    char *end = NULL;
    long long e = sde && *sde ? strtoll(sde, &end, 10) : 0;
    if (sde && *sde && end && !*end) {
        now = (time_t)e;
        if (!gmtime_r(&now, &tm)) return ct_fail(n, "strftime_now(): bad SOURCE_DATE_EPOCH", NULL, NULL);
    } else {
        now = time(NULL);
        if (!localtime_r(&now, &tm)) return ct_fail(n, "strftime_now(): no local time", NULL, NULL);
    }
    char buf[256];
    size_t k = f.len ? strftime(buf, sizeof buf, f.s, &tm) : 0;
    if (f.len && !k) return ct_fail(n, "strftime_now(): empty or over-long result for '", f.s, "'");
    *out = ct_mkstr(st, buf, k);
    return out->t == V_UNDEF ? ct_oom() : SL_OK;
}

static int call(struct rstate *st, struct scope *sc, const struct ct_node *n, struct val *out) {
    int rc;
    if (n->op == 1) { /* a macro of the template */
        const struct val *m = scope_find(sc, n->s, 1);
        if (!m || m->t != V_MACRO)
            return ct_fail(n, "call of ", n->s, "() before its macro is defined");
        return call_macro(st, sc, n, m->macro, out);
    }
    if (!strcmp(n->s, "strftime_now")) return strftime_now(st, sc, n, out);
    if (!strcmp(n->s, "namespace")) {
        struct scope *ns = ct_arena_alloc(&st->arena, sizeof *ns);
        if (!ns) return ct_oom();
        for (int i = 0; i < n->n_kids; i++) {
            struct val v;
            if (!n->kw[i]) return ct_fail(n, "namespace() takes keyword arguments only", NULL, NULL);
            if ((rc = ct_eval(st, sc, n->kids[i], &v)) || (rc = scope_set(st, ns, n->kw[i], v)))
                return rc;
        }
        *out = (struct val){.t = V_NS, .ns = ns};
        return SL_OK;
    }
    if (!strcmp(n->s, "raise_exception")) {
        struct val m, s;
        if ((rc = ct_arg(st, sc, n, 0, NULL, &m, 0)) || (rc = ct_to_string(st, &m, &s))) return rc;
        return sl_seterr(SL_ERR_ARG, "chat template raised an exception: %s", s.s);
    }
    /* range(stop) / range(start, stop[, step]) */
    struct val a[3];
    long long x[3] = {0, 0, 1};
    int k = 0;
    for (; k < 3; k++) {
        if ((rc = ct_arg(st, sc, n, k, NULL, &a[k], 0))) return rc;
        if (a[k].t == V_UNDEF) break;
        if (a[k].t != V_INT) return ct_fail(n, "range() of a ", ct_type_name(&a[k]), NULL);
    }
    if (k == 0) return ct_fail(n, "range() needs arguments", NULL, NULL);
    if (k == 1) x[1] = a[0].i;
    else for (int i = 0; i < k; i++) x[i] = a[i].i;
    if (x[2] == 0) return ct_fail(n, "range() step 0", NULL, NULL);
    cJSON *arr = cJSON_CreateArray();
    for (long long i = x[0]; arr && (x[2] > 0 ? i < x[1] : i > x[1]); i += x[2]) {
        if (list_len(arr) > 1000000) break;
        cJSON_AddItemToArray(arr, cJSON_CreateNumber((double)i));
    }
    return ct_park(st, arr, out);
}

int ct_eval(struct rstate *st, struct scope *sc, const struct ct_node *n, struct val *out) {
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
        if (!arr) return ct_oom();
        for (int i = 0; i < n->n_kids; i++) {
            if ((rc = ct_eval(st, sc, n->kids[i], &a))) {
                cJSON_Delete(arr);
                return rc;
            }
            cJSON *item = ct_to_json(&a);
            if (!item) {
                cJSON_Delete(arr);
                return ct_fail(n, "a list cannot hold a ", ct_type_name(&a), " value");
            }
            cJSON_AddItemToArray(arr, item);
        }
        return ct_park(st, arr, out);
    }
    case CT_ATTR:
        if ((rc = ct_eval(st, sc, n->a, &a))) return rc;
        return getattr(st, n, &a, n->s, out);
    case CT_INDEX:
        if ((rc = ct_eval(st, sc, n->a, &a)) || (rc = ct_eval(st, sc, n->b, &b))) return rc;
        return eval_index(st, n, &a, &b, out);
    case CT_SLICE: return eval_slice(st, sc, n, out);
    case CT_METHOD: return ct_method(st, sc, n, out);
    case CT_CALL: return call(st, sc, n, out);
    case CT_FILTER: return ct_filter(st, sc, n, out);
    case CT_TEST: return test(st, sc, n, out);
    case CT_NOT:
        if ((rc = ct_eval(st, sc, n->a, &a))) return rc;
        *out = (struct val){.t = V_BOOL, .i = !ct_truthy(&a)};
        return SL_OK;
    case CT_NEG:
        if ((rc = ct_eval(st, sc, n->a, &a))) return rc;
        if (a.t == V_INT) *out = (struct val){.t = V_INT, .i = -a.i};
        else if (a.t == V_FLOAT) *out = (struct val){.t = V_FLOAT, .f = -a.f};
        else return ct_fail(n, "negation of a ", ct_type_name(&a), " value");
        return SL_OK;
    case CT_AND: case CT_OR:
        if ((rc = ct_eval(st, sc, n->a, &a))) return rc;
        if (ct_truthy(&a) == (n->kind == CT_OR)) {
            *out = a;
            return SL_OK;
        }
        return ct_eval(st, sc, n->b, out);
    case CT_COND:
        if ((rc = ct_eval(st, sc, n->b, &b))) return rc;
        if (ct_truthy(&b)) return ct_eval(st, sc, n->a, out);
        if (n->c) return ct_eval(st, sc, n->c, out);
        *out = k_undef;
        return SL_OK;
    case CT_BINOP: return binary(st, sc, n, out);
    default: return sl_seterr(SL_ERR_INTERNAL, "chat template: node kind %d in an expression", n->kind);
    }
}

/* ---- statements --------------------------------------------------------- */


static int exec_for(struct rstate *st, struct scope *sc, const struct ct_node *n) {
    struct val it;
    int rc = ct_eval(st, sc, n->a, &it);
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
        if ((rc = ct_park(st, arr, &pv))) return rc;
        items = pv.j;
    } else {
        return ct_fail(n, "for loop over a ", ct_type_name(&it), " value");
    }
    int obj = cJSON_IsObject(items);
    struct loop_state ls = {0, list_len(items)};
    if (ls.length == 0) return exec_list(st, sc, n->c);
    for (const cJSON *e = items->child; e; e = e->next, ls.index0++) {
        struct scope inner = {.parent = sc};
        struct val ev = obj ? (struct val){.t = V_STR, .s = e->string, .len = strlen(e->string)}
                            : ct_from_json(e);
        if (n->s2) { /* a, b in pairs */
            if (ev.t != V_JSON || list_len(ev.j) != 2)
                return ct_fail(n, "cannot unpack a ", ct_type_name(&ev), " into two loop variables");
            if ((rc = scope_set(st, &inner, n->s, ct_from_json(cJSON_GetArrayItem(ev.j, 0)))) ||
                (rc = scope_set(st, &inner, n->s2, ct_from_json(cJSON_GetArrayItem(ev.j, 1)))))
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
        case CT_TEXT: rc = ct_sb_put(&st->out, n->s, n->len); break;
        case CT_OUT:
            if (!(rc = ct_eval(st, sc, n->a, &v))) rc = ct_val_write(&st->out, &v, 0);
            break;
        case CT_IF:
            if (!(rc = ct_eval(st, sc, n->a, &v))) rc = exec_list(st, sc, ct_truthy(&v) ? n->b : n->c);
            break;
        case CT_FOR: rc = exec_for(st, sc, n); break;
        case CT_SET:
            if ((rc = ct_eval(st, sc, n->a, &v))) break;
            if (n->s2) {
                struct val *ns = scope_find(sc, n->s, 1);
                if (!ns || ns->t != V_NS)
                    rc = ct_fail(n, "set ", n->s, ".attribute: not a namespace");
                else rc = scope_set(st, ns->ns, n->s2, v);
            } else {
                rc = scope_set(st, sc, n->s, v);
            }
            break;
        case CT_MACRO:
            rc = scope_set(st, sc, n->s, (struct val){.t = V_MACRO, .macro = n});
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
    int rc = st.junk ? SL_OK : ct_oom();
    st.globals = &globals;
    for (const cJSON *e = vars->child; !rc && e; e = e->next)
        rc = scope_set(&st, &globals, e->string, ct_from_json(e));
    if (!rc) rc = ct_sb_put(&st.out, "", 0);
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
