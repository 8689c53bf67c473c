/*
 * chat_template.c — lexer and parser of the chat template subset
 * (chat_template.h): source text -> segments (text and tags, with
 * transformers' whitespace rules applied) -> syntax tree
 * (chat_template_impl.h). The evaluator is chat_template_eval.c.
 *
 * Not here: evaluation. Strictness lives here: every filter, test, method
 * and function name is checked against the evaluator's lists when parsed,
 * so an unsupported template fails at load, not at the first request.
 */
#include "chat_template.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_template_impl.h"
#include "util.h"

/* ---- arena ------------------------------------------------------------- */

struct ct_block {
    struct ct_block *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
};

void *ct_arena_alloc(struct ct_arena *a, size_t n) {
    n = (n + 15) & ~(size_t)15;
    struct ct_block *b = a->head;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > 16384 ? n : 16384;
        b = sl_malloc(sizeof *b + cap);
        if (!b) return NULL;
        b->next = a->head;
        b->used = 0;
        b->cap = cap;
        a->head = b;
    }
    void *p = b->data + b->used;
    b->used += n;
    memset(p, 0, n);
    return p;
}

char *ct_arena_strndup(struct ct_arena *a, const char *s, size_t n) {
    char *p = ct_arena_alloc(a, n + 1);
    if (p) {
        if (n) memcpy(p, s, n);
        p[n] = 0;
    }
    return p;
}

void ct_arena_free(struct ct_arena *a) {
    while (a->head) {
        struct ct_block *n = a->head->next;
        sl_free(a->head);
        a->head = n;
    }
}

/* ---- names the evaluator implements (kept in sync with its switches) -- */

static const char *const k_filters[] = {
    "trim", "length", "count", "tojson", "string", "default", "d", "upper",
    "lower", "first", "last", "join", "list", "int", "capitalize", "items", NULL};
static const char *const k_tests[] = {
    "defined", "undefined", "none", "string", "number", "integer", "float",
    "boolean", "true", "false", "mapping", "sequence", "iterable", "even",
    "odd", NULL};
static const char *const k_methods[] = {
    "startswith", "endswith", "split", "strip", "lstrip", "rstrip", "replace",
    "upper", "lower", "items", "keys", "values", "get", NULL};
static const char *const k_funcs[] = {"namespace", "raise_exception", "range",
                                      "strftime_now", NULL};

static int in_list(const char *const *l, const char *s) {
    for (; *l; l++)
        if (!strcmp(*l, s)) return 1;
    return 0;
}

/* ---- segments ----------------------------------------------------------- */

enum { SEG_TEXT, SEG_VAR, SEG_BLOCK, SEG_COMMENT };

struct seg {
    int kind;
    const char *b, *e;   /* text, or the tag's inner expression */
    int lminus, rminus, lplus;
    int line;
};

struct parser {
    struct chat_template *t;
    struct seg *segs;
    int n_segs, pos;
    /* expression lexer over the current tag */
    const char *p, *end;
    int line;
    /* macro calls seen, checked against the macros defined once parsed */
    struct ct_node **calls;
    int n_calls, cap_calls;
    const char **macros;
    int n_macros, cap_macros;
    /* current token */
    int tk;              /* enum tok */
    const char *tb;      /* token text */
    size_t tl;
};

enum tok { TK_END, TK_NAME, TK_STR, TK_INT, TK_FLOAT, TK_OP };

static int line_of(const char *src, const char *p) {
    int l = 1;
    for (const char *q = src; q < p; q++) l += *q == '\n';
    return l;
}

/* Splits src into segments. Strings inside tags may contain "}}" / "%}". */
static int split_segments(struct parser *ps, const char *src) {
    size_t n = strlen(src), cap = 64;
    ps->segs = ct_arena_alloc(&ps->t->arena, cap * sizeof *ps->segs);
    if (!ps->segs) return sl_seterr(SL_ERR_NOMEM, "chat template: out of memory");
    const char *p = src, *end = src + n;
    while (p < end) {
        if ((size_t)ps->n_segs + 2 > cap) {
            struct seg *ns = ct_arena_alloc(&ps->t->arena, 2 * cap * sizeof *ns);
            if (!ns) return sl_seterr(SL_ERR_NOMEM, "chat template: out of memory");
            memcpy(ns, ps->segs, cap * sizeof *ns);
            ps->segs = ns;
            cap *= 2;
        }
        const char *k = p;
        while (k + 1 < end && !(k[0] == '{' && (k[1] == '{' || k[1] == '%' || k[1] == '#'))) k++;
        if (k + 1 >= end) k = end;
        if (k > p) ps->segs[ps->n_segs++] = (struct seg){SEG_TEXT, p, k, 0, 0, 0, line_of(src, p)};
        if (k == end) break;
        struct seg s = {0};
        s.kind = k[1] == '{' ? SEG_VAR : k[1] == '%' ? SEG_BLOCK : SEG_COMMENT;
        s.line = line_of(src, k);
        const char *q = k + 2;
        if (q < end && *q == '-') s.lminus = 1, q++;
        else if (q < end && *q == '+') s.lplus = 1, q++;
        char close = s.kind == SEG_VAR ? '}' : s.kind == SEG_BLOCK ? '%' : '#';
        const char *r = q;
        char quote = 0;
        for (; r + 1 < end; r++) {
            if (s.kind != SEG_COMMENT) {
                if (quote) {
                    if (*r == '\\') r++;
                    else if (*r == quote) quote = 0;
                    continue;
                }
                if (*r == '\'' || *r == '"') {
                    quote = *r;
                    continue;
                }
            }
            if (r[0] == close && r[1] == '}') break;
        }
        if (r + 1 >= end)
            return sl_seterr(SL_ERR_FORMAT, "chat template line %d: unclosed '{%c'", s.line, k[1]);
        const char *ie = r;
        if (ie > q && ie[-1] == '-') s.rminus = 1, ie--;
        s.b = q;
        s.e = ie;
        ps->segs[ps->n_segs++] = s;
        p = r + 2;
    }
    /* Whitespace: lstrip_blocks, trim_blocks and the '-' markers. */
    for (int i = 0; i < ps->n_segs; i++) {
        struct seg *s = &ps->segs[i];
        if (s->kind != SEG_TEXT) continue;
        const struct seg *prev = i > 0 ? &ps->segs[i - 1] : NULL;
        const struct seg *next = i + 1 < ps->n_segs ? &ps->segs[i + 1] : NULL;
        if (next && next->lminus) {
            while (s->e > s->b && isspace((unsigned char)s->e[-1])) s->e--;
        } else if (next && next->kind != SEG_VAR && !next->lplus) {
            const char *k = s->e;
            while (k > s->b && (k[-1] == ' ' || k[-1] == '\t')) k--;
            int line_start = k > s->b ? k[-1] == '\n' : (s->b == src || s->b[-1] == '\n');
            if (line_start) s->e = k;
        }
        if (prev && prev->rminus) {
            while (s->b < s->e && isspace((unsigned char)*s->b)) s->b++;
        } else if (prev && prev->kind != SEG_VAR) {
            if (s->b < s->e && *s->b == '\n') s->b++;
            else if (s->e - s->b >= 2 && s->b[0] == '\r' && s->b[1] == '\n') s->b += 2;
        }
    }
    return SL_OK;
}

/* ---- expression lexer -------------------------------------------------- */

static int next_tok(struct parser *ps) {
    while (ps->p < ps->end && isspace((unsigned char)*ps->p)) {
        ps->line += *ps->p == '\n';
        ps->p++;
    }
    ps->tb = ps->p;
    if (ps->p >= ps->end) {
        ps->tk = TK_END;
        ps->tl = 0;
        return SL_OK;
    }
    char c = *ps->p;
    if (isalpha((unsigned char)c) || c == '_') {
        while (ps->p < ps->end && (isalnum((unsigned char)*ps->p) || *ps->p == '_')) ps->p++;
        ps->tk = TK_NAME;
    } else if (isdigit((unsigned char)c)) {
        ps->tk = TK_INT;
        while (ps->p < ps->end && isdigit((unsigned char)*ps->p)) ps->p++;
        if (ps->p + 1 < ps->end && *ps->p == '.' && isdigit((unsigned char)ps->p[1])) {
            ps->tk = TK_FLOAT;
            ps->p++;
            while (ps->p < ps->end && isdigit((unsigned char)*ps->p)) ps->p++;
        }
    } else if (c == '\'' || c == '"') {
        ps->p++;
        while (ps->p < ps->end && *ps->p != c) ps->p += *ps->p == '\\' ? 2 : 1;
        if (ps->p >= ps->end)
            return sl_seterr(SL_ERR_FORMAT, "chat template line %d: unterminated string", ps->line);
        ps->p++;
        ps->tk = TK_STR;
    } else {
        static const char *const two[] = {"==", "!=", "<=", ">=", "//", "**", NULL};
        ps->tk = TK_OP;
        ps->p++;
        for (int i = 0; two[i]; i++)
            if (ps->p < ps->end && c == two[i][0] && *ps->p == two[i][1]) {
                ps->p++;
                break;
            }
        if (!strchr("+-*/%~=!<>()[]{}.,:|", c))
            return sl_seterr(SL_ERR_FORMAT, "chat template line %d: unexpected character '%c'",
                             ps->line, c);
    }
    ps->tl = (size_t)(ps->p - ps->tb);
    return SL_OK;
}

static int tok_is(const struct parser *ps, int kind, const char *text) {
    return ps->tk == kind && strlen(text) == ps->tl && !memcmp(ps->tb, text, ps->tl);
}
static int is_op(const struct parser *ps, const char *op) { return tok_is(ps, TK_OP, op); }
static int is_kw(const struct parser *ps, const char *kw) { return tok_is(ps, TK_NAME, kw); }

static int syntax(const struct parser *ps, const char *want) {
    return sl_seterr(SL_ERR_FORMAT, "chat template line %d: expected %s, got '%.*s'", ps->line,
                     want, ps->tk == TK_END ? 5 : (int)ps->tl,
                     ps->tk == TK_END ? "end of tag" : ps->tb);
}

static int expect_op(struct parser *ps, const char *op) {
    if (!is_op(ps, op)) {
        char w[16];
        snprintf(w, sizeof w, "'%s'", op);
        return syntax(ps, w);
    }
    return next_tok(ps);
}

static struct ct_node *mk(struct parser *ps, int kind) {
    struct ct_node *n = ct_arena_alloc(&ps->t->arena, sizeof *n);
    if (n) {
        n->kind = kind;
        n->line = ps->line;
    }
    return n;
}

#define NEW(var, kind)                                                                  \
    struct ct_node *var = mk(ps, kind);                                                 \
    if (!var) return sl_seterr(SL_ERR_NOMEM, "chat template: out of memory")

/* Decodes a string literal token (escapes \n \t \r \\ \' \" \uXXXX). */
static int string_lit(struct parser *ps, struct ct_node *n) {
    const char *s = ps->tb + 1, *e = ps->tb + ps->tl - 1;
    char *o = ct_arena_alloc(&ps->t->arena, (size_t)(e - s) * 2 + 1);
    if (!o) return sl_seterr(SL_ERR_NOMEM, "chat template: out of memory");
    size_t k = 0;
    for (; s < e; s++) {
        if (*s != '\\' || s + 1 >= e) {
            o[k++] = *s;
            continue;
        }
        char c = *++s;
        if (c == 'n') o[k++] = '\n';
        else if (c == 't') o[k++] = '\t';
        else if (c == 'r') o[k++] = '\r';
        else if (c == '\\' || c == '\'' || c == '"') o[k++] = c;
        else if (c == 'u' && e - s > 4) {
            char hex[5] = {s[1], s[2], s[3], s[4], 0};
            long cp = strtol(hex, NULL, 16);
            s += 4;
            if (cp < 0x80) o[k++] = (char)cp;
            else if (cp < 0x800) o[k++] = (char)(0xC0 | cp >> 6), o[k++] = (char)(0x80 | (cp & 63));
            else {
                o[k++] = (char)(0xE0 | cp >> 12);
                o[k++] = (char)(0x80 | ((cp >> 6) & 63));
                o[k++] = (char)(0x80 | (cp & 63));
            }
        } else {
            o[k++] = '\\';
            o[k++] = c;
        }
    }
    o[k] = 0;
    n->s = o;
    n->len = k;
    return SL_OK;
}

static int parse_expr(struct parser *ps, struct ct_node **out);

/* Appends p to the arena-backed pointer array *arr (*n used, *cap held). */
static int remember(struct parser *ps, void ***arr, int *n, int *cap, void *p) {
    if (*n == *cap) {
        int c = *cap ? *cap * 2 : 16;
        void **a = ct_arena_alloc(&ps->t->arena, (size_t)c * sizeof *a);
        if (!a) return sl_seterr(SL_ERR_NOMEM, "chat template: out of memory");
        if (*n) memcpy(a, *arr, (size_t)*n * sizeof *a);
        *arr = a;
        *cap = c;
    }
    (*arr)[(*n)++] = p;
    return SL_OK;
}

/* (args): positional and keyword arguments, into n->kids / n->kw. */
static int parse_args(struct parser *ps, struct ct_node *n) {
    int rc, cap = 0;
    if ((rc = expect_op(ps, "("))) return rc;
    while (!is_op(ps, ")")) {
        if (n->n_kids == cap) {
            cap = cap ? cap * 2 : 4;
            struct ct_node **k = ct_arena_alloc(&ps->t->arena, (size_t)cap * sizeof *k);
            const char **w = ct_arena_alloc(&ps->t->arena, (size_t)cap * sizeof *w);
            if (!k || !w) return sl_seterr(SL_ERR_NOMEM, "chat template: out of memory");
            if (n->n_kids) {
                memcpy(k, n->kids, (size_t)n->n_kids * sizeof *k);
                memcpy(w, n->kw, (size_t)n->n_kids * sizeof *w);
            }
            n->kids = k;
            n->kw = w;
        }
        /* name=value: a keyword argument */
        if (ps->tk == TK_NAME) {
            const char *save_p = ps->p, *tb = ps->tb;
            size_t tl = ps->tl;
            int save_line = ps->line;
            if ((rc = next_tok(ps))) return rc;
            if (is_op(ps, "=")) {
                n->kw[n->n_kids] = ct_arena_strndup(&ps->t->arena, tb, tl);
                if ((rc = next_tok(ps))) return rc;
            } else {
                ps->p = save_p;
                ps->tb = tb;
                ps->tl = tl;
                ps->tk = TK_NAME;
                ps->line = save_line;
            }
        }
        if ((rc = parse_expr(ps, &n->kids[n->n_kids]))) return rc;
        n->n_kids++;
        if (is_op(ps, ",")) {
            if ((rc = next_tok(ps))) return rc;
        } else if (!is_op(ps, ")")) {
            return syntax(ps, "',' or ')'");
        }
    }
    return next_tok(ps);
}

static int unsupported(const struct parser *ps, const char *what, const char *name) {
    return sl_seterr(SL_ERR_UNSUPPORTED, "chat template line %d: unsupported %s '%s'", ps->line,
                     what, name);
}

static int parse_primary(struct parser *ps, struct ct_node **out) {
    int rc;
    if (ps->tk == TK_STR) {
        NEW(n, CT_STR);
        if ((rc = string_lit(ps, n))) return rc;
        if ((rc = next_tok(ps))) return rc;
        *out = n;
        return SL_OK;
    }
    if (ps->tk == TK_INT || ps->tk == TK_FLOAT) {
        NEW(n, ps->tk == TK_INT ? CT_INT : CT_FLOAT);
        char buf[64];
        snprintf(buf, sizeof buf, "%.*s", (int)ps->tl, ps->tb);
        n->i = strtoll(buf, NULL, 10);
        n->f = strtod(buf, NULL);
        *out = n;
        return next_tok(ps);
    }
    if (ps->tk == TK_NAME) {
        char *name = ct_arena_strndup(&ps->t->arena, ps->tb, ps->tl);
        if (!name) return sl_seterr(SL_ERR_NOMEM, "chat template: out of memory");
        if ((rc = next_tok(ps))) return rc;
        if (!strcmp(name, "true") || !strcmp(name, "True") || !strcmp(name, "false") ||
            !strcmp(name, "False")) {
            NEW(n, CT_BOOL);
            n->i = name[0] == 't' || name[0] == 'T';
            *out = n;
        } else if (!strcmp(name, "none") || !strcmp(name, "None")) {
            NEW(n, CT_NONE);
            *out = n;
        } else if (is_op(ps, "(")) {
            NEW(n, CT_CALL);
            n->s = name;
            /* not a built-in: a macro of this template (checked at the end) */
            if (!in_list(k_funcs, name)) {
                n->op = 1;
                if ((rc = remember(ps, (void ***)&ps->calls, &ps->n_calls, &ps->cap_calls, n)))
                    return rc;
            }
            if ((rc = parse_args(ps, n))) return rc;
            *out = n;
        } else {
            NEW(n, CT_NAME);
            n->s = name;
            *out = n;
        }
        return SL_OK;
    }
    if (is_op(ps, "(")) {
        if ((rc = next_tok(ps)) || (rc = parse_expr(ps, out))) return rc;
        if (is_op(ps, ",")) return unsupported(ps, "construct", "tuple");
        return expect_op(ps, ")");
    }
    if (is_op(ps, "[")) {
        NEW(n, CT_LIST);
        int cap = 0;
        if ((rc = next_tok(ps))) return rc;
        while (!is_op(ps, "]")) {
            if (n->n_kids == cap) {
                cap = cap ? cap * 2 : 4;
                struct ct_node **k = ct_arena_alloc(&ps->t->arena, (size_t)cap * sizeof *k);
                if (!k) return sl_seterr(SL_ERR_NOMEM, "chat template: out of memory");
                if (n->n_kids) memcpy(k, n->kids, (size_t)n->n_kids * sizeof *k);
                n->kids = k;
            }
            if ((rc = parse_expr(ps, &n->kids[n->n_kids++]))) return rc;
            if (is_op(ps, ",")) {
                if ((rc = next_tok(ps))) return rc;
            } else if (!is_op(ps, "]")) {
                return syntax(ps, "',' or ']'");
            }
        }
        *out = n;
        return next_tok(ps);
    }
    if (is_op(ps, "{")) return unsupported(ps, "construct", "dict literal");
    return syntax(ps, "an expression");
}

/* primary, then .attr, .method(args), [index], [a:b:c] */
static int parse_postfix(struct parser *ps, struct ct_node **out) {
    int rc = parse_primary(ps, out);
    while (!rc) {
        if (is_op(ps, ".")) {
            if ((rc = next_tok(ps))) return rc;
            if (ps->tk != TK_NAME) return syntax(ps, "an attribute name");
            char *name = ct_arena_strndup(&ps->t->arena, ps->tb, ps->tl);
            if (!name) return sl_seterr(SL_ERR_NOMEM, "chat template: out of memory");
            if ((rc = next_tok(ps))) return rc;
            if (is_op(ps, "(")) {
                if (!in_list(k_methods, name)) return unsupported(ps, "method", name);
                NEW(n, CT_METHOD);
                n->a = *out;
                n->s = name;
                if ((rc = parse_args(ps, n))) return rc;
                *out = n;
            } else {
                NEW(n, CT_ATTR);
                n->a = *out;
                n->s = name;
                *out = n;
            }
        } else if (is_op(ps, "[")) {
            struct ct_node *part[3] = {NULL, NULL, NULL};
            int k = 0;
            if ((rc = next_tok(ps))) return rc;
            for (;;) {
                if (!is_op(ps, ":") && !is_op(ps, "]") && (rc = parse_expr(ps, &part[k])))
                    return rc;
                if (is_op(ps, ":") && k < 2) {
                    k++;
                    if ((rc = next_tok(ps))) return rc;
                    continue;
                }
                break;
            }
            if ((rc = expect_op(ps, "]"))) return rc;
            if (k == 0) {
                if (!part[0]) return syntax(ps, "an index");
                NEW(n, CT_INDEX);
                n->a = *out;
                n->b = part[0];
                *out = n;
            } else {
                NEW(n, CT_SLICE);
                n->a = *out;
                n->kids = ct_arena_alloc(&ps->t->arena, 3 * sizeof *n->kids);
                if (!n->kids) return sl_seterr(SL_ERR_NOMEM, "chat template: out of memory");
                memcpy(n->kids, part, sizeof part);
                n->n_kids = 3;
                *out = n;
            }
        } else {
            return SL_OK;
        }
    }
    return rc;
}

/* unary minus, postfix, then filters (| f(args)) and tests (is [not] t) */
static int parse_unary(struct parser *ps, struct ct_node **out) {
    int rc;
    if (is_op(ps, "-")) {
        NEW(n, CT_NEG);
        if ((rc = next_tok(ps)) || (rc = parse_unary(ps, &n->a))) return rc;
        *out = n;
        return SL_OK;
    }
    if ((rc = parse_postfix(ps, out))) return rc;
    for (;;) {
        if (is_op(ps, "|")) {
            if ((rc = next_tok(ps))) return rc;
            if (ps->tk != TK_NAME) return syntax(ps, "a filter name");
            NEW(n, CT_FILTER);
            n->s = ct_arena_strndup(&ps->t->arena, ps->tb, ps->tl);
            if (!n->s) return sl_seterr(SL_ERR_NOMEM, "chat template: out of memory");
            if (!in_list(k_filters, n->s)) return unsupported(ps, "filter", n->s);
            n->a = *out;
            if ((rc = next_tok(ps))) return rc;
            if (is_op(ps, "(") && (rc = parse_args(ps, n))) return rc;
            *out = n;
        } else if (is_kw(ps, "is")) {
            NEW(n, CT_TEST);
            if ((rc = next_tok(ps))) return rc;
            if (is_kw(ps, "not")) {
                n->op = 1;
                if ((rc = next_tok(ps))) return rc;
            }
            if (ps->tk != TK_NAME) return syntax(ps, "a test name");
            n->s = ct_arena_strndup(&ps->t->arena, ps->tb, ps->tl);
            if (!n->s) return sl_seterr(SL_ERR_NOMEM, "chat template: out of memory");
            if (!in_list(k_tests, n->s)) return unsupported(ps, "test", n->s);
            n->a = *out;
            if ((rc = next_tok(ps))) return rc;
            if (is_op(ps, "(")) return unsupported(ps, "test with arguments", n->s);
            *out = n;
        } else {
            return SL_OK;
        }
    }
}

static int binop(struct parser *ps, struct ct_node **out, int op,
                 int (*rhs)(struct parser *, struct ct_node **)) {
    NEW(n, CT_BINOP);
    n->op = op;
    n->a = *out;
    int rc = next_tok(ps);
    if (!rc) rc = rhs(ps, &n->b);
    *out = n;
    return rc;
}

static int parse_mul(struct parser *ps, struct ct_node **out) {
    int rc = parse_unary(ps, out);
    while (!rc) {
        if (is_op(ps, "**")) return unsupported(ps, "operator", "**");
        int op = is_op(ps, "*") ? CT_OP_MUL : is_op(ps, "//") ? CT_OP_FLOORDIV
               : is_op(ps, "/") ? CT_OP_DIV : is_op(ps, "%") ? CT_OP_MOD : -1;
        if (op < 0) break;
        rc = binop(ps, out, op, parse_unary);
    }
    return rc;
}

static int parse_concat(struct parser *ps, struct ct_node **out) {
    int rc = parse_mul(ps, out);
    while (!rc && is_op(ps, "~")) rc = binop(ps, out, CT_OP_CONCAT, parse_mul);
    return rc;
}

static int parse_add(struct parser *ps, struct ct_node **out) {
    int rc = parse_concat(ps, out);
    while (!rc && (is_op(ps, "+") || is_op(ps, "-")))
        rc = binop(ps, out, is_op(ps, "+") ? CT_OP_ADD : CT_OP_SUB, parse_concat);
    return rc;
}

static int parse_compare(struct parser *ps, struct ct_node **out) {
    int rc = parse_add(ps, out);
    while (!rc) {
        int op = is_op(ps, "==") ? CT_OP_EQ : is_op(ps, "!=") ? CT_OP_NE
               : is_op(ps, "<=") ? CT_OP_LE : is_op(ps, ">=") ? CT_OP_GE
               : is_op(ps, "<") ? CT_OP_LT : is_op(ps, ">") ? CT_OP_GT
               : is_kw(ps, "in") ? CT_OP_IN : -1;
        if (op < 0 && is_kw(ps, "not")) {
            /* "not in" (a bare "not" here is a syntax error) */
            if ((rc = next_tok(ps))) return rc;
            if (!is_kw(ps, "in")) return syntax(ps, "'in' after 'not'");
            op = CT_OP_NOT_IN;
        }
        if (op < 0) break;
        rc = binop(ps, out, op, parse_add);
    }
    return rc;
}

static int parse_not(struct parser *ps, struct ct_node **out) {
    if (is_kw(ps, "not")) {
        NEW(n, CT_NOT);
        int rc = next_tok(ps);
        if (!rc) rc = parse_not(ps, &n->a);
        *out = n;
        return rc;
    }
    return parse_compare(ps, out);
}

/* A left-associative chain `sub (kw sub)*` of node kind `kind`. */
static int parse_kw_chain(struct parser *ps, struct ct_node **out, const char *kw, int kind,
                          int (*sub)(struct parser *, struct ct_node **)) {
    int rc = sub(ps, out);
    while (!rc && is_kw(ps, kw)) {
        NEW(n, kind);
        n->a = *out;
        if (!(rc = next_tok(ps))) rc = sub(ps, &n->b);
        *out = n;
    }
    return rc;
}

static int parse_and(struct parser *ps, struct ct_node **out) {
    return parse_kw_chain(ps, out, "and", CT_AND, parse_not);
}

static int parse_or(struct parser *ps, struct ct_node **out) {
    return parse_kw_chain(ps, out, "or", CT_OR, parse_and);
}

/* a if cond else b */
static int parse_expr(struct parser *ps, struct ct_node **out) {
    int rc = parse_or(ps, out);
    while (!rc && is_kw(ps, "if")) {
        NEW(n, CT_COND);
        n->a = *out;
        if ((rc = next_tok(ps)) || (rc = parse_or(ps, &n->b))) return rc;
        if (is_kw(ps, "else")) {
            if ((rc = next_tok(ps)) || (rc = parse_or(ps, &n->c))) return rc;
        }
        *out = n;
    }
    return rc;
}

/* ---- statements --------------------------------------------------------- */

static int begin_tag(struct parser *ps, const struct seg *s) {
    ps->p = s->b;
    ps->end = s->e;
    ps->line = s->line;
    return next_tok(ps);
}

static int end_tag(struct parser *ps) {
    return ps->tk == TK_END ? SL_OK : syntax(ps, "end of tag");
}

static int parse_macro(struct parser *ps, struct ct_node **out);

/* Parses statements until a block tag whose keyword is in stops (NULL-
 * terminated) or the end; *stop receives the index of that keyword (-1 at
 * the end of the template), with the lexer positioned after the keyword. */
static int parse_body(struct parser *ps, const char *const *stops, struct ct_node **head,
                      int *stop) {
    struct ct_node **tail = head;
    *head = NULL;
    *stop = -1;
    int rc;
    while (ps->pos < ps->n_segs) {
        const struct seg *s = &ps->segs[ps->pos++];
        if (s->kind == SEG_COMMENT) continue;
        if (s->kind == SEG_TEXT) {
            if (s->e == s->b) continue;
            NEW(n, CT_TEXT);
            n->s = ct_arena_strndup(&ps->t->arena, s->b, (size_t)(s->e - s->b));
            if (!n->s) return sl_seterr(SL_ERR_NOMEM, "chat template: out of memory");
            n->len = (size_t)(s->e - s->b);
            *tail = n;
            tail = &n->next;
            continue;
        }
        if ((rc = begin_tag(ps, s))) return rc;
        if (s->kind == SEG_VAR) {
            NEW(n, CT_OUT);
            if ((rc = parse_expr(ps, &n->a)) || (rc = end_tag(ps))) return rc;
            *tail = n;
            tail = &n->next;
            continue;
        }
        if (ps->tk != TK_NAME) return syntax(ps, "a statement keyword");
        for (int i = 0; stops && stops[i]; i++)
            if (is_kw(ps, stops[i])) {
                *stop = i;
                return next_tok(ps);
            }
        struct ct_node *n = NULL;
        int sub;
        if (is_kw(ps, "if")) {
            n = mk(ps, CT_IF);
            if (!n) return sl_seterr(SL_ERR_NOMEM, "chat template: out of memory");
            static const char *const if_stops[] = {"elif", "else", "endif", NULL};
            struct ct_node *cur = n;
            if ((rc = next_tok(ps)) || (rc = parse_expr(ps, &cur->a)) || (rc = end_tag(ps)))
                return rc;
            for (;;) {
                if ((rc = parse_body(ps, if_stops, &cur->b, &sub))) return rc;
                if (sub == 0) { /* elif: a nested if in the else branch */
                    struct ct_node *e = mk(ps, CT_IF);
                    if (!e) return sl_seterr(SL_ERR_NOMEM, "chat template: out of memory");
                    cur->c = e;
                    cur = e;
                    if ((rc = parse_expr(ps, &cur->a)) || (rc = end_tag(ps))) return rc;
                    continue;
                }
                if (sub == 1) {
                    static const char *const else_stops[] = {"endif", NULL};
                    if ((rc = end_tag(ps)) || (rc = parse_body(ps, else_stops, &cur->c, &sub)))
                        return rc;
                }
                if (sub < 0)
                    return sl_seterr(SL_ERR_FORMAT, "chat template line %d: missing endif",
                                     n->line);
                if ((rc = end_tag(ps))) return rc;
                break;
            }
        } else if (is_kw(ps, "for")) {
            n = mk(ps, CT_FOR);
            if (!n) return sl_seterr(SL_ERR_NOMEM, "chat template: out of memory");
            if ((rc = next_tok(ps))) return rc;
            if (ps->tk != TK_NAME) return syntax(ps, "a loop variable");
            n->s = ct_arena_strndup(&ps->t->arena, ps->tb, ps->tl);
            if ((rc = next_tok(ps))) return rc;
            if (is_op(ps, ",")) {
                if ((rc = next_tok(ps))) return rc;
                if (ps->tk != TK_NAME) return syntax(ps, "a loop variable");
                n->s2 = ct_arena_strndup(&ps->t->arena, ps->tb, ps->tl);
                if ((rc = next_tok(ps))) return rc;
            }
            if (!n->s || (ps->tl && ps->tk == TK_NAME && !is_kw(ps, "in")))
                return syntax(ps, "'in'");
            if (!is_kw(ps, "in")) return syntax(ps, "'in'");
            if ((rc = next_tok(ps)) || (rc = parse_or(ps, &n->a))) return rc;
            if (is_kw(ps, "if")) return unsupported(ps, "construct", "for ... if");
            if (is_kw(ps, "recursive")) return unsupported(ps, "construct", "recursive loop");
            if ((rc = end_tag(ps))) return rc;
            static const char *const for_stops[] = {"else", "endfor", NULL};
            if ((rc = parse_body(ps, for_stops, &n->b, &sub))) return rc;
            if (sub == 0) {
                static const char *const end_stops[] = {"endfor", NULL};
                if ((rc = end_tag(ps)) || (rc = parse_body(ps, end_stops, &n->c, &sub)))
                    return rc;
            }
            if (sub < 0)
                return sl_seterr(SL_ERR_FORMAT, "chat template line %d: missing endfor",
                                 n->line);
            if ((rc = end_tag(ps))) return rc;
        } else if (is_kw(ps, "set")) {
            n = mk(ps, CT_SET);
            if (!n) return sl_seterr(SL_ERR_NOMEM, "chat template: out of memory");
            if ((rc = next_tok(ps))) return rc;
            if (ps->tk != TK_NAME) return syntax(ps, "a variable name");
            n->s = ct_arena_strndup(&ps->t->arena, ps->tb, ps->tl);
            if ((rc = next_tok(ps))) return rc;
            if (is_op(ps, ".")) {
                if ((rc = next_tok(ps))) return rc;
                if (ps->tk != TK_NAME) return syntax(ps, "an attribute name");
                n->s2 = ct_arena_strndup(&ps->t->arena, ps->tb, ps->tl);
                if ((rc = next_tok(ps))) return rc;
            }
            if (is_op(ps, ",")) return unsupported(ps, "construct", "set a, b = ...");
            if (!is_op(ps, "=")) return unsupported(ps, "construct", "{% set %} block");
            if ((rc = next_tok(ps)) || (rc = parse_expr(ps, &n->a)) || (rc = end_tag(ps)))
                return rc;
        } else if (is_kw(ps, "macro")) {
            if ((rc = parse_macro(ps, &n))) return rc;
        } else if (is_kw(ps, "break") || is_kw(ps, "continue")) {
            n = mk(ps, is_kw(ps, "break") ? CT_BREAK : CT_CONTINUE);
            if (!n) return sl_seterr(SL_ERR_NOMEM, "chat template: out of memory");
            if ((rc = next_tok(ps)) || (rc = end_tag(ps))) return rc;
        } else if (is_kw(ps, "generation")) {
            /* transformers' AssistantTracker: the body renders as is */
            static const char *const gen_stops[] = {"endgeneration", NULL};
            struct ct_node *body;
            if ((rc = next_tok(ps)) || (rc = end_tag(ps)) ||
                (rc = parse_body(ps, gen_stops, &body, &sub)))
                return rc;
            if (sub < 0)
                return sl_seterr(SL_ERR_FORMAT, "chat template line %d: missing endgeneration",
                                 s->line);
            if ((rc = end_tag(ps))) return rc;
            *tail = body;
            while (*tail) tail = &(*tail)->next;
            continue;
        } else {
            char kw[32];
            snprintf(kw, sizeof kw, "%.*s", (int)(ps->tl < 31 ? ps->tl : 31), ps->tb);
            static const char *const enders[] = {"endif", "endfor", "elif", "else",
                                                 "endgeneration", "endmacro", NULL};
            if (in_list(enders, kw))
                return sl_seterr(SL_ERR_FORMAT, "chat template line %d: unexpected '%s'",
                                 ps->line, kw);
            return unsupported(ps, "statement", kw);
        }
        if (!n->s && (n->kind == CT_FOR || n->kind == CT_SET))
            return sl_seterr(SL_ERR_NOMEM, "chat template: out of memory");
        *tail = n;
        tail = &n->next;
    }
    return SL_OK;
}

/* {% macro name(a, b=default) %} body {% endmacro %}; the lexer is on
 * "macro". Call blocks, *args and **kwargs are outside the subset. */
static int parse_macro(struct parser *ps, struct ct_node **out) {
    int rc, sub, cap = 0;
    NEW(n, CT_MACRO);
    int line = ps->line;
    if ((rc = next_tok(ps))) return rc;
    if (ps->tk != TK_NAME) return syntax(ps, "a macro name");
    if (!(n->s = ct_arena_strndup(&ps->t->arena, ps->tb, ps->tl)))
        return sl_seterr(SL_ERR_NOMEM, "chat template: out of memory");
    if ((rc = next_tok(ps)) || (rc = expect_op(ps, "("))) return rc;
    while (!is_op(ps, ")")) {
        if (is_op(ps, "*") || is_op(ps, "**")) return unsupported(ps, "construct", "macro *args");
        if (ps->tk != TK_NAME) return syntax(ps, "a parameter name");
        if (n->n_kids == cap) {
            cap = cap ? cap * 2 : 4;
            struct ct_node **k = ct_arena_alloc(&ps->t->arena, (size_t)cap * sizeof *k);
            const char **w = ct_arena_alloc(&ps->t->arena, (size_t)cap * sizeof *w);
            if (!k || !w) return sl_seterr(SL_ERR_NOMEM, "chat template: out of memory");
            if (n->n_kids) {
                memcpy(k, n->kids, (size_t)n->n_kids * sizeof *k);
                memcpy(w, n->kw, (size_t)n->n_kids * sizeof *w);
            }
            n->kids = k;
            n->kw = w;
        }
        if (!(n->kw[n->n_kids] = ct_arena_strndup(&ps->t->arena, ps->tb, ps->tl)))
            return sl_seterr(SL_ERR_NOMEM, "chat template: out of memory");
        if ((rc = next_tok(ps))) return rc;
        if (is_op(ps, "=")) {
            if ((rc = next_tok(ps)) || (rc = parse_expr(ps, &n->kids[n->n_kids]))) return rc;
        } else if (n->n_kids && n->kids[n->n_kids - 1]) {
            return sl_seterr(SL_ERR_FORMAT, "chat template line %d: macro %s: a parameter "
                             "without a default follows one with a default", ps->line, n->s);
        }
        n->n_kids++;
        if (is_op(ps, ",")) {
            if ((rc = next_tok(ps))) return rc;
        } else if (!is_op(ps, ")")) {
            return syntax(ps, "',' or ')'");
        }
    }
    if ((rc = next_tok(ps)) || (rc = end_tag(ps))) return rc;
    static const char *const stops[] = {"endmacro", NULL};
    if ((rc = parse_body(ps, stops, &n->b, &sub))) return rc;
    if (sub < 0)
        return sl_seterr(SL_ERR_FORMAT, "chat template line %d: missing endmacro", line);
    if (ps->tk == TK_NAME && ps->tl == strlen(n->s) && !memcmp(ps->tb, n->s, ps->tl) &&
        (rc = next_tok(ps)))
        return rc;
    if ((rc = end_tag(ps)) ||
        (rc = remember(ps, (void ***)&ps->macros, &ps->n_macros, &ps->cap_macros, (void *)n->s)))
        return rc;
    *out = n;
    return SL_OK;
}

/* Every call of a name that is not a built-in must name a macro. */
static int check_calls(const struct parser *ps) {
    for (int i = 0; i < ps->n_calls; i++) {
        int found = 0;
        for (int k = 0; k < ps->n_macros && !found; k++) found = !strcmp(ps->macros[k], ps->calls[i]->s);
        if (!found)
            return sl_seterr(SL_ERR_UNSUPPORTED, "chat template line %d: unsupported function "
                             "'%s' (neither a built-in nor a macro of the template)",
                             ps->calls[i]->line, ps->calls[i]->s);
    }
    return SL_OK;
}

int chat_template_parse(const char *src, struct chat_template **out) {
    *out = NULL;
    if (!src) return sl_seterr(SL_ERR_ARG, "chat template: no source");
    struct chat_template *t = sl_calloc(1, sizeof *t);
    if (!t) return sl_seterr(SL_ERR_NOMEM, "chat template: out of memory");
    struct parser ps = {.t = t};
    int rc = split_segments(&ps, src), stop;
    if (!rc) rc = parse_body(&ps, NULL, &t->body, &stop);
    if (!rc) rc = check_calls(&ps);
    if (rc) {
        chat_template_free(t);
        return rc;
    }
    *out = t;
    return SL_OK;
}

void chat_template_free(struct chat_template *t) {
    if (!t) return;
    ct_arena_free(&t->arena);
    sl_free(t);
}
