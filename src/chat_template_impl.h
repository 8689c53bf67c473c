/*
 * chat_template_impl.h — the syntax tree shared by the chat template parser
 * (chat_template.c) and evaluator (chat_template_eval.c). Not for use
 * outside those two files; the contract is in chat_template.h.
 *
 * Invariants: every node and string of a template lives in the template's
 * arena and is freed with it; strings are NUL-terminated; statement lists
 * are linked through `next` (NULL-terminated, possibly empty).
 */
#ifndef SL_CHAT_TEMPLATE_IMPL_H
#define SL_CHAT_TEMPLATE_IMPL_H

#include <stddef.h>

/* A bump allocator: blocks linked from head, freed all at once. */
struct ct_arena {
    struct ct_block *head;
};
void *ct_arena_alloc(struct ct_arena *a, size_t n); /* zeroed; NULL on OOM */
char *ct_arena_strndup(struct ct_arena *a, const char *s, size_t n);
void ct_arena_free(struct ct_arena *a);

enum ct_kind {
    /* statements */
    CT_TEXT,     /* s, len: literal text */
    CT_OUT,      /* {{ a }} */
    CT_IF,       /* if a: b (list) else c (list; elif nests an CT_IF) */
    CT_FOR,      /* for s[, s2] in a: b (list) else c (list) */
    CT_SET,      /* set s = a, or set s.s2 = a (namespace attribute) */
    CT_BREAK,
    CT_CONTINUE,
    CT_MACRO,    /* macro s(kw[i] = kids[i] or NULL default, ...): b (list) */
    /* expressions */
    CT_STR,      /* s, len */
    CT_INT,      /* i */
    CT_FLOAT,    /* f */
    CT_BOOL,     /* i (0/1) */
    CT_NONE,
    CT_LIST,     /* kids[0..n_kids) */
    CT_NAME,     /* s */
    CT_ATTR,     /* a.s */
    CT_INDEX,    /* a[b] */
    CT_SLICE,    /* a[kids[0]:kids[1]:kids[2]] (each may be NULL) */
    CT_METHOD,   /* a.s(kids) */
    CT_CALL,     /* s(kids): a built-in (op 0: namespace, raise_exception,
                    range, strftime_now) or a template macro (op 1) */
    CT_FILTER,   /* a | s(kids) */
    CT_TEST,     /* a is [not] s  (op = 1 for "is not") */
    CT_NOT,      /* not a */
    CT_NEG,      /* -a */
    CT_BINOP,    /* a op b, op one of enum ct_op */
    CT_AND,      /* a and b */
    CT_OR,       /* a or b */
    CT_COND,     /* a if b else c (c may be NULL: undefined) */
};

enum ct_op {
    CT_OP_ADD, CT_OP_SUB, CT_OP_MUL, CT_OP_DIV, CT_OP_FLOORDIV, CT_OP_MOD,
    CT_OP_CONCAT, CT_OP_EQ, CT_OP_NE, CT_OP_LT, CT_OP_LE, CT_OP_GT, CT_OP_GE,
    CT_OP_IN, CT_OP_NOT_IN,
};

struct ct_node {
    int kind;            /* enum ct_kind */
    int line;            /* 1-based line in the template source */
    int op;              /* enum ct_op, or 1 for a negated test */
    const char *s, *s2;  /* text, name, attribute, filter, method */
    size_t len;          /* bytes of s for CT_TEXT / CT_STR */
    long long i;
    double f;
    struct ct_node *a, *b, *c;
    struct ct_node **kids;   /* arguments or list items */
    const char **kw;         /* per kid: keyword name, or NULL (positional) */
    int n_kids;
    struct ct_node *next;    /* the next statement */
};

struct chat_template {
    struct ct_arena arena;
    struct ct_node *body;    /* statement list */
};

#endif /* SL_CHAT_TEMPLATE_IMPL_H */
