/*
 * chat_template_eval.h — the values and helpers shared by the chat template
 * evaluator (chat_template_eval.c: expressions, statements, macros) and its
 * library of filters and methods (chat_template_filters.c). Not for use
 * outside those two files; the contract is in chat_template.h.
 *
 * Invariants: values borrow JSON data from the caller's cJSON tree or point
 * into the render's arena; V_STR strings are NUL-terminated at s[len];
 * lists built while rendering are parked in rstate.junk and die with it.
 */
#ifndef SL_CHAT_TEMPLATE_EVAL_H
#define SL_CHAT_TEMPLATE_EVAL_H

#include <cJSON.h>

#include "chat_template_impl.h"

/* Bytes one rendered string (or the whole output) may reach: a template
 * that doubles a string in a loop fails instead of eating memory. */
#define CT_MAX_STRING ((size_t)64 << 20)
/* Nested macro calls (recursion) a render may make. */
#define CT_MAX_DEPTH 64

enum vt { V_UNDEF, V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_JSON, V_NS, V_LOOP, V_MACRO };

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
    const struct ct_node *macro; /* V_MACRO: the CT_MACRO node */
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
    struct scope *globals;  /* the template's top level: what macros see */
    int depth;              /* macro calls in progress (bounded) */
};


static const struct val k_undef = {.t = V_UNDEF};

static inline int list_len(const cJSON *j) { return cJSON_GetArraySize(j); }

/* Helpers of chat_template_eval.c. Errors set sl_seterr and return the
 * status; ct_fail's message is "chat template line N: " fmt a b. */
int ct_oom(void);
int ct_sb_put(struct sbuf *b, const char *s, size_t n);  /* fails past CT_MAX_STRING */
int ct_sb_str(struct sbuf *b, const char *s);
struct val ct_from_json(const cJSON *j);                  /* NULL -> undefined */
struct val ct_mkstr(struct rstate *st, const char *s, size_t n); /* V_UNDEF on OOM */
cJSON *ct_to_json(const struct val *v);  /* fresh item; containers by reference */
int ct_park(struct rstate *st, cJSON *arr, struct val *out);    /* arr NULL: OOM */
int ct_truthy(const struct val *v);
const char *ct_type_name(const struct val *v);
int ct_fail(const struct ct_node *n, const char *fmt, const char *a, const char *b);
void ct_float_repr(double f, char *buf, size_t n);       /* Python's repr(float) */
int ct_val_write(struct sbuf *b, const struct val *v, int repr); /* Python str()/repr() */
int ct_to_string(struct rstate *st, const struct val *v, struct val *out);
int ct_eval(struct rstate *st, struct scope *sc, const struct ct_node *n, struct val *out);
/* Argument pos (positional) or kw (keyword) of call node n, undefined when
 * absent (an error when required). */
int ct_arg(struct rstate *st, struct scope *sc, const struct ct_node *n, int pos,
           const char *kw, struct val *out, int required);
int ct_need(const struct ct_node *n, const struct val *v, int t, const char *what);

/* chat_template_filters.c: n is a CT_FILTER / CT_METHOD node whose name the
 * parser checked against its lists. */
int ct_filter(struct rstate *st, struct scope *sc, const struct ct_node *n, struct val *out);
int ct_method(struct rstate *st, struct scope *sc, const struct ct_node *n, struct val *out);

#endif /* SL_CHAT_TEMPLATE_EVAL_H */
