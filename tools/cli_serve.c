/*
 * cli_serve.c — `sluice serve`: an OpenAI-compatible HTTP server
 * (docs/serve.md) on libmicrohttpd, one thread per connection, with the
 * generation work done by the scheduler of src/serve_sched.h.
 *
 * Routes: POST /v1/chat/completions, POST /v1/completions (streaming as
 * server-sent events or not), GET /v1/models, /health, /metrics.
 * Every failure is an HTTP 4xx/5xx with an OpenAI-style JSON error body:
 * {"error": {"message", "type", "param", "code"}}.
 *
 * Not here: the HTTP parser (libmicrohttpd), JSON (cJSON), scheduling,
 * sampling, templates (src/). Invariants: a connection thread never touches
 * a context; a request handed to the scheduler is released exactly once
 * (by the handler, or by the stream's free callback, which libmicrohttpd
 * also calls when the client disconnects mid-stream).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <microhttpd.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cJSON.h>
#include <utf8proc.h>

#include "cli.h"
#include "serve_sched.h"
#include "sluice.h"

struct server {
    struct sl_model *model;
    struct sl_chat *chat;            /* NULL: the model has no template */
    struct sched *sched;
    const char *model_id;
    const char *api_key;             /* NULL: none */
    size_t max_body;
    double timeout_s;
    uint32_t n_ctx;
    int32_t default_max_tokens;
    unsigned long long next_id;
    pthread_mutex_t mu;
    uint64_t http_errors;
    uint64_t n_seeds;
};

/* Per-connection state across the access handler's calls. */
struct conn {
    char *body;
    size_t len, cap;
    int too_big;
};

struct sbuf {
    char *p;
    size_t n, cap;
};

static int sb_put(struct sbuf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return -1;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return 0;
}

static int sb_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int sb_printf(struct sbuf *b, const char *fmt, ...) {
    char tmp[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    return n < 0 ? -1 : sb_put(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* ---- responses ---------------------------------------------------------- */

static enum MHD_Result send_text(struct MHD_Connection *c, unsigned code, const char *type,
                                 char *body /* malloc'ed, taken */) {
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", type);
    enum MHD_Result ret = MHD_queue_response(c, code, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result send_json(struct MHD_Connection *c, unsigned code, cJSON *j) {
    char *s = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (!s) return MHD_NO;
    return send_text(c, code, "application/json", s);
}

/* An OpenAI-style error: {"error": {"message", "type", "param", "code"}}. */
static enum MHD_Result send_error(struct server *srv, struct MHD_Connection *c, unsigned code,
                                  const char *param, const char *ecode, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
static enum MHD_Result send_error(struct server *srv, struct MHD_Connection *c, unsigned code,
                                  const char *param, const char *ecode, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&srv->mu);
    srv->http_errors++;
    pthread_mutex_unlock(&srv->mu);
    cJSON *j = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(j, "error");
    cJSON_AddStringToObject(e, "message", msg);
    cJSON_AddStringToObject(e, "type",
                            code == 401 ? "authentication_error"
                            : code == 429 ? "rate_limit_error"
                            : code >= 500 ? "server_error" : "invalid_request_error");
    if (param) cJSON_AddStringToObject(e, "param", param);
    else cJSON_AddNullToObject(e, "param");
    if (ecode) cJSON_AddStringToObject(e, "code", ecode);
    else cJSON_AddNullToObject(e, "code");
    return send_json(c, code, j);
}

/* ---- request parsing ------------------------------------------------------ */

static int valid_utf8(const char *s, size_t n) {
    utf8proc_int32_t cp;
    for (size_t i = 0; i < n;) {
        utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &cp);
        if (k <= 0) return 0;
        i += (size_t)k;
    }
    return 1;
}

/* Everything a generation request says, validated. */
struct gen_req {
    int chat;                       /* /v1/chat/completions */
    int stream, include_usage;
    struct sched_req_params p;
    char *prompt_text;              /* malloc'ed */
    int logprobs;                   /* chat: bool; completions: top n */
};

/* Fails with a message and the offending parameter (for a 400). */
struct bad {
    char msg[400];
    const char *param;
    const char *code;
    unsigned status;
};

static int badf(struct bad *b, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int badf(struct bad *b, const char *param, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b->msg, sizeof b->msg, fmt, ap);
    va_end(ap);
    b->param = param;
    if (!b->status) b->status = 400;
    return -1;
}

/* A number field in [lo, hi]; integer when want_int. Absent: keeps *out. */
static int get_num(const cJSON *o, const char *key, double lo, double hi, int want_int,
                   double *out, struct bad *b) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsNumber(v)) return badf(b, key, "'%s' must be a number", key);
    double d = v->valuedouble;
    if (want_int && d != floor(d)) return badf(b, key, "'%s' must be an integer, got %g", key, d);
    if (!(d >= lo && d <= hi))
        return badf(b, key, "'%s' must be in [%g, %g], got %g", key, lo, hi, d);
    *out = d;
    return 0;
}

static int get_bool(const cJSON *o, const char *key, int *out, struct bad *b) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsBool(v)) return badf(b, key, "'%s' must be a boolean", key);
    *out = cJSON_IsTrue(v);
    return 0;
}

/* message content: a string, null, or [{"type": "text", "text": s}, ...] */
static int content_text(const cJSON *m, int i, struct sbuf *out, struct bad *b) {
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(m, "content");
    if (!c || cJSON_IsNull(c)) return 0;
    if (cJSON_IsString(c)) return sb_put(out, c->valuestring, strlen(c->valuestring));
    if (!cJSON_IsArray(c))
        return badf(b, "messages", "messages[%d].content must be a string or an array of "
                    "text parts", i);
    const cJSON *part;
    cJSON_ArrayForEach(part, c) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(part, "type");
        const cJSON *x = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsString(t) || strcmp(t->valuestring, "text") || !cJSON_IsString(x))
            return badf(b, "messages", "messages[%d].content: only {\"type\": \"text\", "
                        "\"text\": ...} parts are supported", i);
        if (sb_put(out, x->valuestring, strlen(x->valuestring))) return -1;
    }
    return 0;
}

/* The chat prompt: messages normalised (content as a string) and rendered
 * with the model's template. */
static int chat_prompt(struct server *srv, const cJSON *body, char **out, struct bad *b) {
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(body, "messages");
    if (!cJSON_IsArray(msgs) || !cJSON_GetArraySize(msgs))
        return badf(b, "messages", "'messages' must be a non-empty array");
    if (!srv->chat)
        return badf(b, "messages", "this model has no chat template: use /v1/completions");
    cJSON *norm = cJSON_CreateArray();
    const cJSON *m;
    int i = 0, rc = 0;
    static const char *const roles[] = {"system", "user", "assistant", "tool", "developer", NULL};
    cJSON_ArrayForEach(m, msgs) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        int ok = cJSON_IsObject(m) && cJSON_IsString(role);
        for (int k = 0; ok && roles[k]; k++)
            if (!strcmp(role->valuestring, roles[k])) ok = 2;
        if (ok != 2) {
            rc = badf(b, "messages", "messages[%d] must be an object with a 'role' of system, "
                      "user, assistant, tool or developer", i);
            break;
        }
        struct sbuf t = {0};
        if ((rc = content_text(m, i, &t, b))) {
            free(t.p);
            break;
        }
        cJSON *n = cJSON_Duplicate(m, 1);
        cJSON_DeleteItemFromObjectCaseSensitive(n, "content");
        cJSON_AddStringToObject(n, "content", t.p ? t.p : "");
        free(t.p);
        cJSON_AddItemToArray(norm, n);
        i++;
    }
    char *mj = rc ? NULL : cJSON_PrintUnformatted(norm);
    cJSON_Delete(norm);
    if (rc) return rc;
    cJSON *extra = cJSON_CreateObject();
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(body, "tools");
    if (cJSON_IsArray(tools)) cJSON_AddItemToObject(extra, "tools", cJSON_Duplicate(tools, 1));
    const cJSON *kw = cJSON_GetObjectItemCaseSensitive(body, "chat_template_kwargs");
    const cJSON *e;
    if (cJSON_IsObject(kw)) cJSON_ArrayForEach(e, kw)
        cJSON_AddItemToObject(extra, e->string, cJSON_Duplicate(e, 1));
    char *ej = cJSON_PrintUnformatted(extra);
    cJSON_Delete(extra);
    if (!mj || !ej) rc = badf(b, NULL, "out of memory");
    else if (sl_chat_render(srv->chat, mj, 1, ej, out) != SL_OK)
        rc = badf(b, "messages", "chat template: %s", sl_errmsg());
    cJSON_free(mj);
    cJSON_free(ej);
    return rc;
}

static int parse_gen(struct server *srv, const cJSON *body, struct gen_req *g, struct bad *b) {
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(body, "model");
    if (model && !cJSON_IsNull(model)) {
        if (!cJSON_IsString(model)) return badf(b, "model", "'model' must be a string");
        if (strcmp(model->valuestring, srv->model_id)) {
            b->status = 404;
            b->code = "model_not_found";
            return badf(b, "model", "The model '%s' does not exist (this server serves '%s')",
                        model->valuestring, srv->model_id);
        }
    }
    double d;
    g->p.sampler = sl_sampler_default_params();
    g->p.sampler.temperature = 1.0f;
    g->p.sampler.top_k = 0;
    g->p.sampler.top_p = 1.0f;
    g->p.timeout_s = srv->timeout_s;
    d = -1;
    if (get_num(body, "max_tokens", 1, INT32_MAX, 1, &d, b) ||
        (g->chat && get_num(body, "max_completion_tokens", 1, INT32_MAX, 1, &d, b)))
        return -1;
    g->p.max_tokens = d > 0 ? (int32_t)d : 0;
    d = g->p.sampler.temperature;
    if (get_num(body, "temperature", 0, 2, 0, &d, b)) return -1;
    g->p.sampler.temperature = (float)d;
    d = 1;
    if (get_num(body, "top_p", 0, 1, 0, &d, b)) return -1;
    if (d <= 0) return badf(b, "top_p", "'top_p' must be in (0, 1], got 0");
    g->p.sampler.top_p = (float)d;
    d = 0;
    if (get_num(body, "top_k", 0, 1e9, 1, &d, b)) return -1;
    g->p.sampler.top_k = (int32_t)d;
    const cJSON *seed = cJSON_GetObjectItemCaseSensitive(body, "seed");
    d = 0;
    if (get_num(body, "seed", -9.2e18, 9.2e18, 1, &d, b)) return -1;
    if (seed && !cJSON_IsNull(seed)) {
        g->p.sampler.seed = (uint64_t)(int64_t)d;
    } else { /* no seed: a different one per request, like OpenAI's */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        pthread_mutex_lock(&srv->mu);
        uint64_t k = ++srv->n_seeds;
        pthread_mutex_unlock(&srv->mu);
        g->p.sampler.seed = ((uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30)) + k * 0x9E3779B97F4A7C15ull;
    }
    d = 1;
    if (get_num(body, "n", 1, 1, 1, &d, b)) return badf(b, "n", "only n = 1 is supported");
    if (get_bool(body, "stream", &g->stream, b)) return -1;
    /* vLLM's extension: end-of-generation ids do not stop (benchmarks, tests) */
    if (get_bool(body, "ignore_eos", &g->p.ignore_eos, b)) return -1;
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(body, "stream_options");
    if (so && !cJSON_IsNull(so)) {
        if (!cJSON_IsObject(so)) return badf(b, "stream_options", "'stream_options' must be an object");
        if (get_bool(so, "include_usage", &g->include_usage, b)) return -1;
    }
    const cJSON *stop = cJSON_GetObjectItemCaseSensitive(body, "stop");
    if (cJSON_IsString(stop)) {
        g->p.stop[0] = stop->valuestring;
    } else if (cJSON_IsArray(stop)) {
        int k = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, stop) {
            if (!cJSON_IsString(e) || k == SCHED_MAX_STOP)
                return badf(b, "stop", "'stop' must be a string or an array of at most %d "
                            "strings", SCHED_MAX_STOP);
            g->p.stop[k++] = e->valuestring;
        }
    } else if (stop && !cJSON_IsNull(stop)) {
        return badf(b, "stop", "'stop' must be a string or an array of strings");
    }
    for (int i = 0; i < SCHED_MAX_STOP && g->p.stop[i]; i++)
        if (!g->p.stop[i][0]) return badf(b, "stop", "stop strings must not be empty");
    if (g->chat) {
        if (get_bool(body, "logprobs", &g->logprobs, b)) return -1;
        d = 0;
        if (get_num(body, "top_logprobs", 0, SCHED_MAX_TOP_LOGPROBS, 1, &d, b)) return -1;
        if (d > 0 && !g->logprobs) return badf(b, "top_logprobs", "'top_logprobs' needs 'logprobs': true");
        g->p.logprobs = g->logprobs;
        g->p.top_logprobs = (int)d;
        return chat_prompt(srv, body, &g->prompt_text, b);
    }
    d = -1;
    if (get_num(body, "logprobs", 0, 5, 1, &d, b)) return -1;
    g->logprobs = (int)d;
    g->p.logprobs = d >= 0;
    g->p.top_logprobs = d > 0 ? (int)d : 0;
    const cJSON *pr = cJSON_GetObjectItemCaseSensitive(body, "prompt");
    if (cJSON_IsArray(pr) && cJSON_GetArraySize(pr) == 1 && cJSON_IsString(pr->child)) pr = pr->child;
    if (!cJSON_IsString(pr)) return badf(b, "prompt", "'prompt' must be a string");
    g->prompt_text = strdup(pr->valuestring);
    return g->prompt_text ? 0 : badf(b, NULL, "out of memory");
}

/* ---- generation responses ----------------------------------------------- */

static const char *finish_name(int f) {
    return f == SCHED_STOP ? "stop" : f == SCHED_LENGTH ? "length" : f == SCHED_CANCELLED ? "cancelled"
           : f == SCHED_TIMEOUT ? "timeout" : "error";
}

static cJSON *token_bytes_json(const struct sl_tokenizer *tok, int32_t id, const char **text) {
    size_t n = 0;
    const char *s = sl_token_bytes(tok, id, &n);
    cJSON *arr = cJSON_CreateArray();
    for (size_t i = 0; s && i < n; i++) cJSON_AddItemToArray(arr, cJSON_CreateNumber((unsigned char)s[i]));
    *text = s;
    return arr;
}

/* A token's text as a JSON string (raw bytes; lossy for partial UTF-8). */
static cJSON *token_str(const struct sl_tokenizer *tok, int32_t id) {
    size_t n = 0;
    const char *s = sl_token_bytes(tok, id, &n);
    char buf[512];
    size_t k = 0;
    for (size_t i = 0; s && i < n && k + 4 < sizeof buf;) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t l = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &cp);
        if (l <= 0) { /* U+FFFD */
            memcpy(buf + k, "\xEF\xBF\xBD", 3);
            k += 3;
            i++;
        } else {
            memcpy(buf + k, s + i, (size_t)l);
            k += (size_t)l;
            i += (size_t)l;
        }
    }
    buf[k] = 0;
    return cJSON_CreateString(buf);
}

/* Chat logprobs: {"content": [{"token", "logprob", "bytes", "top_logprobs"}]} */
static cJSON *chat_logprobs(struct server *srv, const struct sched_token *t, size_t n) {
    const struct sl_tokenizer *tok = sl_model_tokenizer(srv->model);
    cJSON *lp = cJSON_CreateObject(), *content = cJSON_AddArrayToObject(lp, "content");
    for (size_t i = 0; i < n; i++) {
        cJSON *e = cJSON_CreateObject();
        const char *s;
        cJSON_AddItemToObject(e, "token", token_str(tok, t[i].id));
        cJSON_AddNumberToObject(e, "logprob", t[i].logprob);
        cJSON_AddItemToObject(e, "bytes", token_bytes_json(tok, t[i].id, &s));
        cJSON *top = cJSON_AddArrayToObject(e, "top_logprobs");
        for (int k = 0; k < t[i].n_top; k++) {
            cJSON *x = cJSON_CreateObject();
            cJSON_AddItemToObject(x, "token", token_str(tok, t[i].top_id[k]));
            cJSON_AddNumberToObject(x, "logprob", t[i].top_logprob[k]);
            cJSON_AddItemToObject(x, "bytes", token_bytes_json(tok, t[i].top_id[k], &s));
            cJSON_AddItemToArray(top, x);
        }
        cJSON_AddItemToArray(content, e);
    }
    return lp;
}

/* Completions logprobs: {"tokens", "token_logprobs", "top_logprobs", "text_offset"} */
static cJSON *cmpl_logprobs(struct server *srv, const struct sched_token *t, size_t n,
                            size_t text_base) {
    const struct sl_tokenizer *tok = sl_model_tokenizer(srv->model);
    cJSON *lp = cJSON_CreateObject();
    cJSON *toks = cJSON_AddArrayToObject(lp, "tokens"), *lps = cJSON_AddArrayToObject(lp, "token_logprobs");
    cJSON *tops = cJSON_AddArrayToObject(lp, "top_logprobs"), *offs = cJSON_AddArrayToObject(lp, "text_offset");
    size_t off = text_base;
    for (size_t i = 0; i < n; i++) {
        cJSON_AddItemToArray(toks, token_str(tok, t[i].id));
        cJSON_AddItemToArray(lps, cJSON_CreateNumber(t[i].logprob));
        cJSON *top = cJSON_CreateObject();
        for (int k = 0; k < t[i].n_top; k++) {
            cJSON *name = token_str(tok, t[i].top_id[k]);
            cJSON_AddNumberToObject(top, name->valuestring, t[i].top_logprob[k]);
            cJSON_Delete(name);
        }
        cJSON_AddItemToArray(tops, top);
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
        off = text_base + t[i].text_end;
    }
    return lp;
}

static cJSON *usage_json(const struct sched_view *v) {
    cJSON *u = cJSON_CreateObject();
    cJSON_AddNumberToObject(u, "prompt_tokens", v->n_prompt);
    cJSON_AddNumberToObject(u, "completion_tokens", (double)v->n_tokens);
    cJSON_AddNumberToObject(u, "total_tokens", (double)(v->n_prompt + v->n_tokens));
    cJSON *d = cJSON_AddObjectToObject(u, "prompt_tokens_details");
    cJSON_AddNumberToObject(d, "cached_tokens", v->n_cached_prompt);
    return u;
}

static cJSON *response_head(struct server *srv, const struct gen_req *g, const char *id,
                            int chunk) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "id", id);
    cJSON_AddStringToObject(j, "object", g->chat ? (chunk ? "chat.completion.chunk" : "chat.completion")
                                                 : "text_completion");
    cJSON_AddNumberToObject(j, "created", (double)time(NULL));
    cJSON_AddStringToObject(j, "model", srv->model_id);
    cJSON_AddStringToObject(j, "system_fingerprint", "sluice-" SLUICE_VERSION_STRING);
    return j;
}

/* A streaming response: libmicrohttpd pulls bytes through stream_read. */
struct stream {
    struct server *srv;
    struct gen_req g;
    struct sched_req *req;
    struct sched_view v;
    size_t n_sent_tokens, n_sent_text;
    struct sbuf out;
    size_t out_pos;
    int state;                       /* 0 start, 1 tokens, 2 done */
    char id[48];
};

static void sse(struct stream *st, cJSON *j) {
    char *s = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (!s) return;
    sb_put(&st->out, "data: ", 6);
    sb_put(&st->out, s, strlen(s));
    sb_put(&st->out, "\n\n", 2);
    cJSON_free(s);
}

/* One chunk: delta text (and logprobs of tokens [t0, t1)), finish reason. */
static void stream_chunk(struct stream *st, const char *text, size_t n, size_t t0, size_t t1,
                         const char *finish) {
    cJSON *j = response_head(st->srv, &st->g, st->id, 1);
    cJSON *choices = cJSON_AddArrayToObject(j, "choices"), *c = cJSON_CreateObject();
    cJSON_AddItemToArray(choices, c);
    cJSON_AddNumberToObject(c, "index", 0);
    char *txt = strndup(text ? text : "", n);
    if (st->g.chat) {
        cJSON *delta = cJSON_AddObjectToObject(c, "delta");
        if (st->state == 0) cJSON_AddStringToObject(delta, "role", "assistant");
        if (text) cJSON_AddStringToObject(delta, "content", txt ? txt : "");
        if (st->g.logprobs && t1 > t0)
            cJSON_AddItemToObject(c, "logprobs", chat_logprobs(st->srv, st->v.tokens + t0, t1 - t0));
        else cJSON_AddNullToObject(c, "logprobs");
    } else {
        cJSON_AddStringToObject(c, "text", txt ? txt : "");
        if (st->g.p.logprobs && t1 > t0)
            cJSON_AddItemToObject(c, "logprobs", cmpl_logprobs(st->srv, st->v.tokens + t0, t1 - t0,
                                                               st->n_sent_text));
        else cJSON_AddNullToObject(c, "logprobs");
    }
    free(txt);
    if (finish) cJSON_AddStringToObject(c, "finish_reason", finish);
    else cJSON_AddNullToObject(c, "finish_reason");
    sse(st, j);
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    struct stream *st = cls;
    (void)pos;
    while (st->out_pos == st->out.n) {
        st->out.n = st->out_pos = 0;
        if (st->state == 2) return MHD_CONTENT_READER_END_OF_STREAM;
        if (st->state == 0 && st->g.chat) {
            stream_chunk(st, "", 0, 0, 0, NULL);
            st->state = 1;
            continue;
        }
        st->state = 1;
        if (sched_wait(st->req, &st->v, -1) != SL_OK) return MHD_CONTENT_READER_END_WITH_ERROR;
        /* one chunk per new token, its text being what it released */
        for (size_t i = st->n_sent_tokens; i < st->v.n_tokens; i++) {
            size_t end = st->v.tokens[i].text_end;
            stream_chunk(st, st->v.text + st->n_sent_text, end - st->n_sent_text, i, i + 1, NULL);
            st->n_sent_text = end;
        }
        st->n_sent_tokens = st->v.n_tokens;
        if (st->v.finish != SCHED_RUNNING) {
            if (st->v.finish == SCHED_ERROR || st->v.finish == SCHED_TIMEOUT) {
                cJSON *j = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(j, "error");
                cJSON_AddStringToObject(e, "message", st->v.finish == SCHED_TIMEOUT ? "request timed out" : st->v.error);
                cJSON_AddStringToObject(e, "type", "server_error");
                sse(st, j);
            } else {
                stream_chunk(st, st->v.text + st->n_sent_text, st->v.text_len - st->n_sent_text, 0, 0,
                             finish_name(st->v.finish));
                st->n_sent_text = st->v.text_len;
                if (st->g.include_usage) {
                    cJSON *j = response_head(st->srv, &st->g, st->id, 1);
                    cJSON_AddArrayToObject(j, "choices");
                    cJSON_AddItemToObject(j, "usage", usage_json(&st->v));
                    sse(st, j);
                }
            }
            sb_put(&st->out, "data: [DONE]\n\n", 14);
            st->state = 2;
        }
    }
    size_t n = st->out.n - st->out_pos;
    if (n > max) n = max;
    memcpy(buf, st->out.p + st->out_pos, n);
    st->out_pos += n;
    return (ssize_t)n;
}

/* Called when the response is done or the client went away: cancels a
 * request still running and frees everything. */
static void stream_free(void *cls) {
    struct stream *st = cls;
    sched_release(st->req);
    sched_view_free(&st->v);
    free(st->out.p);
    free(st->g.prompt_text);
    free(st);
}

static enum MHD_Result handle_generate(struct server *srv, struct MHD_Connection *c,
                                       struct conn *cn, int chat) {
    if (!valid_utf8(cn->body, cn->len))
        return send_error(srv, c, 400, NULL, NULL, "the request body is not valid UTF-8");
    cJSON *body = cJSON_ParseWithLength(cn->body, cn->len);
    if (!cJSON_IsObject(body)) {
        cJSON_Delete(body);
        return send_error(srv, c, 400, NULL, NULL, "the request body is not a valid JSON object");
    }
    struct gen_req g = {.chat = chat};
    struct bad b = {0};
    int rc = parse_gen(srv, body, &g, &b);
    if (rc) {
        cJSON_Delete(body);
        free(g.prompt_text);
        return send_error(srv, c, b.status, b.param, b.code, "%s", b.msg);
    }
    int32_t *ids = NULL;
    size_t n_ids = 0;
    if (sl_tokenize(sl_model_tokenizer(srv->model), g.prompt_text, strlen(g.prompt_text), &ids,
                    &n_ids) != SL_OK) {
        cJSON_Delete(body);
        free(g.prompt_text);
        return send_error(srv, c, 400, "prompt", NULL, "cannot tokenize the prompt: %s", sl_errmsg());
    }
    if (!g.p.max_tokens) {
        int64_t room = (int64_t)srv->n_ctx - (int64_t)n_ids;
        g.p.max_tokens = room < srv->default_max_tokens ? (int32_t)(room > 0 ? room : 1)
                                                        : srv->default_max_tokens;
    }
    struct sched_req *req = NULL;
    rc = sched_submit(srv->sched, ids, n_ids, &g.p, &req);
    free(ids);
    cJSON_Delete(body); /* stop strings were copied by sched_submit */
    if (rc) {
        free(g.prompt_text);
        if (rc == SL_ERR_UNSUPPORTED)
            return send_error(srv, c, 429, NULL, "server_busy", "%s; retry later", sl_errmsg());
        if (rc == SL_ERR_RANGE)
            return send_error(srv, c, 400, chat ? "messages" : "prompt", "context_length_exceeded",
                              "%s", sl_errmsg());
        return send_error(srv, c, 400, NULL, NULL, "%s", sl_errmsg());
    }
    pthread_mutex_lock(&srv->mu);
    unsigned long long id = ++srv->next_id;
    pthread_mutex_unlock(&srv->mu);
    if (g.stream) {
        struct stream *st = calloc(1, sizeof *st);
        if (!st) {
            sched_release(req);
            free(g.prompt_text);
            return MHD_NO;
        }
        st->srv = srv;
        st->g = g;
        st->req = req;
        snprintf(st->id, sizeof st->id, "%s-%llu", chat ? "chatcmpl" : "cmpl", id);
        struct MHD_Response *r =
            MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_read, st, stream_free);
        if (!r) {
            stream_free(st);
            return MHD_NO;
        }
        MHD_add_response_header(r, "Content-Type", "text/event-stream");
        MHD_add_response_header(r, "Cache-Control", "no-cache");
        enum MHD_Result ret = MHD_queue_response(c, 200, r);
        MHD_destroy_response(r);
        return ret;
    }
    struct sched_view v = {0};
    while (v.finish == SCHED_RUNNING && sched_wait(req, &v, -1) == SL_OK) {}
    sched_release(req);
    free(g.prompt_text);
    enum MHD_Result ret;
    if (v.finish == SCHED_TIMEOUT) {
        ret = send_error(srv, c, 408, NULL, "timeout", "the request timed out after %g s", srv->timeout_s);
    } else if (v.finish == SCHED_ERROR || v.finish == SCHED_CANCELLED) {
        ret = send_error(srv, c, 500, NULL, NULL, "generation failed: %s", v.error[0] ? v.error : "cancelled");
    } else {
        char idbuf[48];
        snprintf(idbuf, sizeof idbuf, "%s-%llu", chat ? "chatcmpl" : "cmpl", id);
        cJSON *j = response_head(srv, &g, idbuf, 0);
        cJSON *choices = cJSON_AddArrayToObject(j, "choices"), *ch = cJSON_CreateObject();
        cJSON_AddItemToArray(choices, ch);
        cJSON_AddNumberToObject(ch, "index", 0);
        if (chat) {
            cJSON *m = cJSON_AddObjectToObject(ch, "message");
            cJSON_AddStringToObject(m, "role", "assistant");
            cJSON_AddStringToObject(m, "content", v.text ? v.text : "");
            if (g.logprobs) cJSON_AddItemToObject(ch, "logprobs", chat_logprobs(srv, v.tokens, v.n_tokens));
            else cJSON_AddNullToObject(ch, "logprobs");
        } else {
            cJSON_AddStringToObject(ch, "text", v.text ? v.text : "");
            if (g.p.logprobs) cJSON_AddItemToObject(ch, "logprobs", cmpl_logprobs(srv, v.tokens, v.n_tokens, 0));
            else cJSON_AddNullToObject(ch, "logprobs");
        }
        cJSON_AddStringToObject(ch, "finish_reason", finish_name(v.finish));
        cJSON_AddItemToObject(j, "usage", usage_json(&v));
        ret = send_json(c, 200, j);
    }
    sched_view_free(&v);
    return ret;
}

/* ---- other routes ------------------------------------------------------------ */

static enum MHD_Result handle_metrics(struct server *srv, struct MHD_Connection *c) {
    struct sched_metrics m;
    sched_get_metrics(srv->sched, &m);
    pthread_mutex_lock(&srv->mu);
    unsigned long long http_errors = (unsigned long long)srv->http_errors;
    pthread_mutex_unlock(&srv->mu);
    struct sbuf b = {0};
#define METRIC(name, type, help, fmt, val) \
    sb_printf(&b, "# HELP sluice_" name " " help "\n# TYPE sluice_" name " " type "\nsluice_" name " " fmt "\n", val)
    METRIC("requests_total", "counter", "Generation requests accepted.", "%llu", (unsigned long long)m.requests);
    METRIC("requests_finished_total", "counter", "Generation requests finished.", "%llu", (unsigned long long)m.finished);
    METRIC("requests_rejected_total", "counter", "Requests refused with 429 (busy).", "%llu", (unsigned long long)m.rejected_busy);
    METRIC("http_errors_total", "counter", "Responses with a 4xx/5xx status.", "%llu", http_errors);
    METRIC("prompt_tokens_total", "counter", "Prompt tokens submitted.", "%llu", (unsigned long long)m.prompt_tokens);
    METRIC("prompt_tokens_cached_total", "counter", "Prompt tokens reused from the prefix cache.", "%llu", (unsigned long long)m.cached_prompt_tokens);
    METRIC("generated_tokens_total", "counter", "Tokens generated.", "%llu", (unsigned long long)m.generated_tokens);
    METRIC("decode_seconds_total", "counter", "Scheduler seconds in decode steps.", "%.6f", m.decode_seconds);
    METRIC("prompt_seconds_total", "counter", "Scheduler seconds in prompt steps.", "%.6f", m.prompt_seconds);
    METRIC("decode_tokens_per_second", "gauge", "Generated tokens per decode second (all sequences).", "%.3f",
           m.decode_seconds > 0 ? (double)m.generated_tokens / m.decode_seconds : 0.0);
    METRIC("active_sequences", "gauge", "Requests decoding now.", "%d", m.active);
    METRIC("queue_depth", "gauge", "Requests waiting for a sequence.", "%d", m.queued);
    METRIC("contexts", "gauge", "Contexts allocated (one multi-sequence context when batched).", "%d", m.contexts);
    METRIC("cached_sequences", "gauge", "Idle sequences holding tokens for the prefix cache.", "%d", m.cached_seqs);
    METRIC("batched_decode", "gauge", "1: one decode forward pass for all active requests; 0: one per request (CUDA).", "%d", m.batched);
    METRIC("decode_steps_total", "counter", "Decode forward passes (each covers every decoding request).", "%llu", (unsigned long long)m.decode_steps);
    METRIC("decode_batch_tokens_total", "counter", "Tokens in decode forward passes.", "%llu", (unsigned long long)m.decode_batch_tokens);
    METRIC("decode_batch_size_mean", "gauge", "Mean tokens per decode forward pass.", "%.4f",
           m.decode_steps ? (double)m.decode_batch_tokens / (double)m.decode_steps : 0.0);
    METRIC("decode_batch_size_max", "gauge", "Largest decode forward pass so far.", "%d", m.decode_batch_max);
    METRIC("prefill_steps_total", "counter", "Prompt forward passes (chunks of several requests).", "%llu", (unsigned long long)m.prefill_steps);
    METRIC("prefill_batch_tokens_total", "counter", "Prompt tokens evaluated (not cached).", "%llu", (unsigned long long)m.prefill_batch_tokens);
    const struct sl_stats *s = &m.store;
    sb_printf(&b, "# HELP sluice_expert_cache_hits_total Expert uses found resident, per tier.\n"
                  "# TYPE sluice_expert_cache_hits_total counter\n"
                  "sluice_expert_cache_hits_total{tier=\"ram\"} %llu\n"
                  "sluice_expert_cache_hits_total{tier=\"gpu\"} %llu\n",
              (unsigned long long)s->cache_hits, (unsigned long long)s->gpu_hits);
    sb_printf(&b, "# HELP sluice_expert_cache_misses_total Expert uses that waited for a read (ram) or an upload (gpu).\n"
                  "# TYPE sluice_expert_cache_misses_total counter\n"
                  "sluice_expert_cache_misses_total{tier=\"ram\"} %llu\n"
                  "sluice_expert_cache_misses_total{tier=\"gpu\"} %llu\n",
              (unsigned long long)s->cache_misses, (unsigned long long)s->gpu_uploads);
    double rt = (double)(s->cache_hits + s->cache_misses), gt = (double)(s->gpu_hits + s->gpu_uploads);
    sb_printf(&b, "# HELP sluice_expert_cache_hit_ratio Hits / (hits + misses), per tier.\n"
                  "# TYPE sluice_expert_cache_hit_ratio gauge\n"
                  "sluice_expert_cache_hit_ratio{tier=\"ram\"} %.6f\n"
                  "sluice_expert_cache_hit_ratio{tier=\"gpu\"} %.6f\n",
              rt > 0 ? (double)s->cache_hits / rt : 0.0, gt > 0 ? (double)s->gpu_hits / gt : 0.0);
    METRIC("expert_bytes_read_total", "counter", "Expert bytes read from the model file.", "%llu", (unsigned long long)s->cache_bytes_read);
    METRIC("expert_prefetch_hits_total", "counter", "Expert uses served thanks to a prefetch.", "%llu", (unsigned long long)s->prefetch_hits);
    METRIC("expert_loads_total", "counter", "Routed (layer, expert) records applied; one per distinct expert per forward pass.", "%llu", (unsigned long long)s->expert_loads);
    METRIC("expert_bytes_touched_total", "counter", "Routed-expert bytes the forward passes used (resident or read).", "%llu", (unsigned long long)s->expert_bytes_read);
#undef METRIC
    if (!b.p) return MHD_NO;
    return send_text(c, 200, "text/plain; version=0.0.4", b.p);
}

/* Constant-time comparison of the Authorization header with "Bearer KEY". */
static int auth_ok(const struct server *srv, struct MHD_Connection *c) {
    if (!srv->api_key) return 1;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    char want[512];
    snprintf(want, sizeof want, "Bearer %s", srv->api_key);
    size_t wl = strlen(want), hl = h ? strlen(h) : 0;
    unsigned diff = (unsigned)(wl ^ hl);
    for (size_t i = 0; i < wl; i++) diff |= (unsigned char)want[i] ^ (unsigned char)(i < hl ? h[i] : 0);
    return diff == 0;
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url,
                               const char *method, const char *version, const char *upload,
                               size_t *upload_size, void **con_cls) {
    struct server *srv = cls;
    (void)version;
    struct conn *cn = *con_cls;
    int post = !strcmp(method, "POST");
    if (!cn) {
        cn = calloc(1, sizeof *cn);
        if (!cn) return MHD_NO;
        *con_cls = cn;
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        if (post && cl && strtoull(cl, NULL, 10) > srv->max_body) cn->too_big = 1;
        else return MHD_YES;
    }
    if (post && *upload_size) {
        if (!cn->too_big && cn->len + *upload_size > srv->max_body) cn->too_big = 1;
        if (!cn->too_big) {
            if (cn->len + *upload_size + 1 > cn->cap) {
                size_t cap = cn->cap ? cn->cap * 2 : 4096;
                while (cap < cn->len + *upload_size + 1) cap *= 2;
                char *p = realloc(cn->body, cap);
                if (!p) return MHD_NO;
                cn->body = p;
                cn->cap = cap;
            }
            memcpy(cn->body + cn->len, upload, *upload_size);
            cn->len += *upload_size;
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (cn->too_big)
        return send_error(srv, c, 413, NULL, "request_too_large",
                          "the request body exceeds --max-body (%zu bytes)", srv->max_body);
    if (!strcmp(url, "/health")) return send_text(c, 200, "application/json", strdup("{\"status\":\"ok\"}"));
    if (!auth_ok(srv, c))
        return send_error(srv, c, 401, NULL, "invalid_api_key", "missing or invalid API key");
    int gen = !strcmp(url, "/v1/chat/completions") ? 1 : !strcmp(url, "/v1/completions") ? 2 : 0;
    if (gen) {
        if (!post) return send_error(srv, c, 405, NULL, NULL, "%s needs POST", url);
        return handle_generate(srv, c, cn, gen == 1);
    }
    if (strcmp(method, "GET"))
        return send_error(srv, c, 405, NULL, NULL, "%s %s: method not allowed", method, url);
    if (!strcmp(url, "/metrics")) return handle_metrics(srv, c);
    if (!strcmp(url, "/v1/models")) {
        cJSON *j = cJSON_CreateObject(), *d = cJSON_AddArrayToObject(j, "data"), *m = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "object", "list");
        cJSON_AddStringToObject(m, "id", srv->model_id);
        cJSON_AddStringToObject(m, "object", "model");
        cJSON_AddNumberToObject(m, "created", 0);
        cJSON_AddStringToObject(m, "owned_by", "sluice");
        cJSON_AddNumberToObject(m, "context_length", srv->n_ctx);
        cJSON_AddItemToArray(d, m);
        return send_json(c, 200, j);
    }
    return send_error(srv, c, 404, NULL, "not_found", "no route %s %s", method, url);
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls,
                      enum MHD_RequestTerminationCode toe) {
    (void)cls, (void)c, (void)toe;
    struct conn *cn = *con_cls;
    if (cn) {
        free(cn->body);
        free(cn);
        *con_cls = NULL;
    }
}

/* ---- the command -------------------------------------------------------- */

static const char serve_usage[] =
    "usage: sluice serve -m MODEL [--host ADDR] [--port N] [--port-file F]\n"
    "                    [--max-seqs N] [--max-queue N] [--prefix-cache N] [--ctx N] [--batch N]\n"
    "                    [--max-body SIZE] [--timeout SECONDS] [--max-tokens N]\n"
    "                    [--api-key KEY] [--model-name NAME] [-t THREADS] [store flags]\n"
    "  An OpenAI-compatible server (docs/serve.md). --port 0 picks a free port\n"
    "  (written to --port-file). Binds 127.0.0.1 unless --host says otherwise.\n";

static int serve_fail(const char *fmt, const char *a) {
    fprintf(stderr, "sluice serve: ");
    fprintf(stderr, fmt, a);
    fputc('\n', stderr);
    return 1;
}

int cli_serve(int argc, char **argv) {
    const char *model_path = NULL, *host = "127.0.0.1", *port_file = NULL, *name = NULL;
    long port = 8080, max_seqs = 4, max_queue = 16, n_cached = -1, n_ctx = 0, threads = 0,
         max_tokens = 256, n_batch = 0;
    double timeout = 600;
    uint64_t max_body = 1 << 20;
    struct server srv = {0};
    struct sl_model_params mp = sl_model_default_params();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int r = cli_store_flag("sluice serve", argc, argv, &i, &mp);
        if (r < 0) return 2;
        if (r > 0) continue;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(serve_usage, stdout);
            return 0;
        }
        if (!v) {
            fprintf(stderr, "sluice serve: unknown flag or missing value: %s\n%s", a, serve_usage);
            return 2;
        }
        char *end = NULL;
        long n = strtol(v, &end, 10);
        int num_ok = end && *end == 0 && end != v;
        i++;
        if (!strcmp(a, "-m")) model_path = v;
        else if (!strcmp(a, "--host")) host = v;
        else if (!strcmp(a, "--port-file")) port_file = v;
        else if (!strcmp(a, "--model-name")) name = v;
        else if (!strcmp(a, "--api-key")) srv.api_key = v;
        else if (!strcmp(a, "--max-body")) {
            if (sl_parse_size(v, &max_body) || !max_body) {
                fprintf(stderr, "sluice serve: --max-body %s: %s\n", v, sl_errmsg());
                return 2;
            }
        } else if (!strcmp(a, "--timeout")) {
            timeout = strtod(v, &end);
            if (*end || !(timeout > 0)) {
                fprintf(stderr, "sluice serve: --timeout must be a positive number of seconds\n");
                return 2;
            }
        } else {
            long *dst = !strcmp(a, "--port") ? &port : !strcmp(a, "--max-seqs") ? &max_seqs
                      : !strcmp(a, "--max-queue") ? &max_queue : !strcmp(a, "--prefix-cache") ? &n_cached
                      : !strcmp(a, "--ctx") ? &n_ctx : !strcmp(a, "--max-tokens") ? &max_tokens
                      : !strcmp(a, "--batch") ? &n_batch
                      : (!strcmp(a, "-t") || !strcmp(a, "--threads")) ? &threads : NULL;
            if (!dst) {
                fprintf(stderr, "sluice serve: unknown flag %s\n%s", a, serve_usage);
                return 2;
            }
            long hi = dst == &port ? 65535 : dst == &n_ctx ? (1L << 24) : dst == &n_batch ? 4096 : 100000;
            if (!num_ok || n < (dst == &max_seqs || dst == &max_tokens ? 1 : 0) || n > hi) {
                fprintf(stderr, "sluice serve: %s %s: not a valid number\n", a, v);
                return 2;
            }
            *dst = n;
        }
    }
    if (!model_path) {
        fprintf(stderr, "sluice serve: missing -m MODEL\n%s", serve_usage);
        return 2;
    }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) return serve_fail("--host %s: not an IPv4 address", host);
    mp.n_threads = (int)threads;
    if (sl_model_open(model_path, &mp, &srv.model)) return serve_fail("%s", sl_errmsg());
    if (sl_chat_create(srv.model, &srv.chat) != SL_OK) {
        fprintf(stderr, "sluice serve: warning: %s; /v1/chat/completions is off\n", sl_errmsg());
        srv.chat = NULL;
    }
    const char *base = strrchr(model_path, '/');
    srv.model_id = name ? name : base ? base + 1 : model_path;
    srv.max_body = (size_t)max_body;
    srv.timeout_s = timeout;
    srv.default_max_tokens = (int32_t)max_tokens;
    pthread_mutex_init(&srv.mu, NULL);
    struct sched_params sp = sched_default_params();
    sp.max_seqs = (int)max_seqs;
    sp.max_queue = (int)max_queue;
    sp.n_cached = n_cached < 0 ? (int)max_seqs : (int)n_cached;
    sp.n_ctx = (uint32_t)n_ctx;
    sp.n_batch = (uint32_t)n_batch;
    int32_t train = sl_model_n_ctx_train(srv.model);
    srv.n_ctx = sp.n_ctx ? sp.n_ctx : (train > 0 && train < 4096 ? (uint32_t)train : 4096);
    sp.n_ctx = srv.n_ctx;
    int rc = 1;
    /* SIGINT/SIGTERM are taken by sigwait below; every thread inherits the mask */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (sched_create(srv.model, &sp, &srv.sched)) {
        serve_fail("%s", sl_errmsg());
        goto out;
    }
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD, (uint16_t)port, NULL, NULL,
        handler, &srv, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)(max_seqs + max_queue + 32), MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)(timeout + 60),
        MHD_OPTION_NOTIFY_COMPLETED, completed, &srv, MHD_OPTION_END);
    if (!d) {
        char p[16];
        snprintf(p, sizeof p, "%ld", port);
        serve_fail("cannot listen on port %s (in use, or not allowed)", p);
        goto out_sched;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    unsigned bound = info ? info->port : (unsigned)port;
    fprintf(stderr, "sluice serve: %s on http://%s:%u (max %ld sequences, ctx %u)\n", srv.model_id,
            host, bound, max_seqs, srv.n_ctx);
    if (port_file) {
        FILE *f = fopen(port_file, "w");
        if (!f || fprintf(f, "%u\n", bound) < 0 || fclose(f)) {
            serve_fail("cannot write --port-file %s", port_file);
            MHD_stop_daemon(d);
            goto out_sched;
        }
    }
    int sig = 0;
    sigwait(&sigs, &sig);
    fprintf(stderr, "sluice serve: signal %d, shutting down\n", sig);
    MHD_stop_daemon(d); /* closes connections: every request is released */
    rc = 0;
out_sched:
    sched_free(srv.sched);
out:
    sl_chat_free(srv.chat);
    sl_model_close(srv.model);
    pthread_mutex_destroy(&srv.mu);
    return rc;
}
