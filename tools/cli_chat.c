/*
 * cli_chat.c — `sluice chat`: an interactive terminal chat with the model's
 * own chat template (docs/serve.md), GNU readline for line editing and
 * history, answers streamed as they are generated.
 *
 * Commands: /reset, /stats, /system TEXT, /save FILE, /load FILE, /help,
 * /quit. Ctrl-C stops the answer being generated and returns to the
 * prompt; Ctrl-D quits.
 *
 * /save FILE writes the context's saved state with sl_state_save (tokens,
 * KV cache, logits: a standard saved-state image) and the conversation
 * (system prompt and messages, which the template re-renders each turn) to
 * FILE.json. /load FILE reads both; the state goes through sl_state_load,
 * which refuses another model, a corrupt or a too-long state and leaves the
 * context unchanged — the session then keeps its conversation.
 *
 * Prefix reuse: the context keeps the tokens it has evaluated; the next
 * rendered conversation evaluates only what follows the longest prefix it
 * shares with them (sl_context_truncate cuts the rest).
 *
 * Not here: templates (src/chat.c), sampling (src/sampler.c).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <readline/history.h>
#include <readline/readline.h>

#include <cJSON.h>

#include "cli.h"
#include "sluice.h"

static volatile sig_atomic_t g_interrupted;

static void on_sigint(int sig) {
    (void)sig;
    g_interrupted = 1;
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

struct chat_state {
    struct sl_model *model;
    struct sl_context *ctx;
    struct sl_chat *chat;
    struct sl_sampler_params sp;
    cJSON *messages;
    const char *system;
    int32_t *toks;           /* (cap) ids evaluated in ctx */
    size_t n_toks, cap;
    long max_answer;
    int ignore_eos;
    int no_thinking;
    uint64_t n_answers, n_generated;
    double gen_seconds;
};

static void chat_reset(struct chat_state *cs) {
    cJSON_Delete(cs->messages);
    cs->messages = cJSON_CreateArray();
    if (cs->system) {
        cJSON *m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "role", "system");
        cJSON_AddStringToObject(m, "content", cs->system);
        cJSON_AddItemToArray(cs->messages, m);
    }
    sl_context_reset(cs->ctx);
    cs->n_toks = 0;
}

static int push_toks(struct chat_state *cs, const int32_t *ids, size_t n) {
    if (cs->n_toks + n > cs->cap) {
        size_t cap = cs->cap ? cs->cap * 2 : 1024;
        while (cap < cs->n_toks + n) cap *= 2;
        int32_t *t = realloc(cs->toks, cap * sizeof *t);
        if (!t) return -1;
        cs->toks = t;
        cs->cap = cap;
    }
    memcpy(cs->toks + cs->n_toks, ids, n * sizeof *ids);
    cs->n_toks += n;
    return 0;
}

static int is_eos(struct chat_state *cs, int32_t id) {
    const int32_t *eos;
    size_t n = sl_model_eos_ids(cs->model, &eos);
    for (size_t i = 0; i < n; i++)
        if (eos[i] == id) return 1;
    return 0;
}

/* One user turn: render, evaluate what is new, stream the answer. */
static int chat_turn(struct chat_state *cs, const char *line) {
    g_interrupted = 0; /* a Ctrl-C from now on stops this turn's answer */
    cJSON *u = cJSON_CreateObject();
    cJSON_AddStringToObject(u, "role", "user");
    cJSON_AddStringToObject(u, "content", line);
    cJSON_AddItemToArray(cs->messages, u);
    char *mj = cJSON_PrintUnformatted(cs->messages), *prompt = NULL;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    int rc = sl_chat_render(cs->chat, mj, 1, cs->no_thinking ? "{\"enable_thinking\": false}" : NULL,
                            &prompt);
    cJSON_free(mj);
    if (!rc) rc = sl_tokenize(sl_model_tokenizer(cs->model), prompt, strlen(prompt), &ids, &n_ids);
    free(prompt);
    if (rc) {
        fprintf(stderr, "sluice chat: %s\n", sl_errmsg());
        cJSON_DeleteItemFromArray(cs->messages, cJSON_GetArraySize(cs->messages) - 1);
        free(ids);
        return 0;
    }
    /* reuse the longest prefix the context shares with the prompt (all
     * but the prompt's last token, so that there is something to evaluate) */
    size_t keep = 0;
    while (keep < cs->n_toks && keep + 1 < n_ids && cs->toks[keep] == ids[keep]) keep++;
    if (keep < cs->n_toks && (!keep || sl_context_truncate(cs->ctx, (uint32_t)keep))) {
        sl_context_reset(cs->ctx);
        keep = 0;
    }
    cs->n_toks = keep;
    struct sl_sampler *smp = NULL;
    struct sl_detok *dt = NULL;
    rc = sl_eval(cs->ctx, ids + keep, n_ids - keep, NULL);
    if (!rc) rc = push_toks(cs, ids + keep, n_ids - keep) ? SL_ERR_NOMEM : 0;
    free(ids);
    if (!rc) rc = sl_sampler_create(&cs->sp, sl_model_n_vocab(cs->model), &smp);
    if (!rc) rc = sl_detok_create(sl_model_tokenizer(cs->model), &dt);
    if (rc) {
        fprintf(stderr, "sluice chat: %s%s\n", sl_errmsg(),
                rc == SL_ERR_RANGE ? " (HINT: /reset, or a larger --ctx)" : "");
        cJSON_DeleteItemFromArray(cs->messages, cJSON_GetArraySize(cs->messages) - 1);
        sl_context_reset(cs->ctx);
        cs->n_toks = 0;
        sl_sampler_free(smp);
        return 0;
    }
    char *answer = NULL;
    size_t alen = 0;
    FILE *as = open_memstream(&answer, &alen);
    double t0 = now_s();
    long n = 0;
    const char *why = NULL;
    for (; n < cs->max_answer; n++) {
        if (g_interrupted) {
            why = "interrupted";
            break;
        }
        int32_t id = sl_sample(smp, sl_logits(cs->ctx));
        if (!cs->ignore_eos && is_eos(cs, id)) break;
        const char *t;
        size_t tl;
        if (sl_detok_push(dt, id, &t, &tl) == SL_OK && tl) {
            fwrite(t, 1, tl, stdout);
            fwrite(t, 1, tl, as);
            fflush(stdout);
        }
        if (sl_eval(cs->ctx, &id, 1, NULL) != SL_OK) {
            why = "context full";
            break;
        }
        push_toks(cs, &id, 1);
    }
    const char *t;
    size_t tl;
    if (sl_detok_flush(dt, &t, &tl) == SL_OK && tl) {
        fwrite(t, 1, tl, stdout);
        fwrite(t, 1, tl, as);
    }
    fclose(as);
    cs->gen_seconds += now_s() - t0;
    cs->n_generated += (uint64_t)n;
    cs->n_answers++;
    printf(why ? "\n[%s]\n" : "\n", why);
    fflush(stdout);
    cJSON *a = cJSON_CreateObject();
    cJSON_AddStringToObject(a, "role", "assistant");
    cJSON_AddStringToObject(a, "content", answer ? answer : "");
    cJSON_AddItemToArray(cs->messages, a);
    free(answer);
    sl_sampler_free(smp);
    sl_detok_free(dt);
    g_interrupted = 0;
    return 0;
}

/* /save FILE: the state image (sl_state_save) and FILE.json with the
 * conversation; both written whole or not at all (temporary + rename). */
static void chat_save(struct chat_state *cs, const char *path) {
    char *json_path = NULL, *tmp = NULL, *text = NULL;
    cJSON *doc = cJSON_CreateObject();
    int ok = 0;
    if (sl_state_save(cs->ctx, path) != SL_OK) {
        printf("/save: %s\n", sl_errmsg());
        goto out;
    }
    if (asprintf(&json_path, "%s.json", path) < 0 || asprintf(&tmp, "%s.json.tmp", path) < 0) {
        json_path = tmp = NULL;
        printf("/save: out of memory\n");
        goto out;
    }
    cJSON_AddStringToObject(doc, "format", "sluice-chat");
    cJSON_AddNumberToObject(doc, "version", 1);
    if (cs->system) cJSON_AddStringToObject(doc, "system", cs->system);
    else cJSON_AddNullToObject(doc, "system");
    cJSON_AddItemToObject(doc, "messages", cJSON_Duplicate(cs->messages, 1));
    text = cJSON_Print(doc);
    FILE *f = text ? fopen(tmp, "w") : NULL;
    ok = f && fputs(text, f) >= 0;
    if (f && fclose(f)) ok = 0;
    if (ok && rename(tmp, json_path)) ok = 0;
    if (!ok) {
        printf("/save: cannot write %s\n", json_path);
        remove(tmp);
        goto out;
    }
    printf("saved %u tokens to %s, %d messages to %s\n", sl_context_n_past(cs->ctx), path,
           cJSON_GetArraySize(cs->messages), json_path);
out:
    cJSON_Delete(doc);
    cJSON_free(text);
    free(json_path);
    free(tmp);
}

/* /load FILE: FILE.json first (checked), then the state; on any failure the
 * session keeps its context and conversation. *sys_owned takes the loaded
 * system prompt. */
static void chat_load(struct chat_state *cs, const char *path, char **sys_owned) {
    char *json_path = NULL, *text = NULL, *sys = NULL;
    cJSON *doc = NULL;
    if (asprintf(&json_path, "%s.json", path) < 0) {
        printf("/load: out of memory\n");
        return;
    }
    FILE *f = fopen(json_path, "r");
    size_t len = 0;
    if (f) {
        fseek(f, 0, SEEK_END);
        long n = ftell(f);
        fseek(f, 0, SEEK_SET);
        text = n >= 0 ? malloc((size_t)n + 1) : NULL;
        len = text ? fread(text, 1, (size_t)n, f) : 0;
        if (text) text[len] = 0;
        fclose(f);
    }
    if (!text) {
        printf("/load: cannot read %s (written by /save next to %s); the conversation is "
               "unchanged\n", json_path, path);
        goto out;
    }
    doc = cJSON_Parse(text);
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(doc, "format");
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(doc, "messages");
    const cJSON *sy = cJSON_GetObjectItemCaseSensitive(doc, "system");
    if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, "sluice-chat") ||
        !cJSON_IsArray(msgs) || !(cJSON_IsString(sy) || cJSON_IsNull(sy))) {
        printf("/load: %s is not a sluice chat conversation (format \"sluice-chat\", "
               "\"messages\" array, \"system\"); the conversation is unchanged\n", json_path);
        goto out;
    }
    if (cJSON_IsString(sy) && !(sys = strdup(sy->valuestring))) {
        printf("/load: out of memory\n");
        goto out;
    }
    if (sl_state_load(cs->ctx, path) != SL_OK) {
        printf("/load: %s; the conversation is unchanged\n", sl_errmsg());
        goto out;
    }
    uint32_t n = 0;
    const int32_t *toks = sl_context_tokens(cs->ctx, &n);
    cs->n_toks = 0;
    if (push_toks(cs, toks, n)) { /* the context is then reused from scratch */
        sl_context_reset(cs->ctx);
        cs->n_toks = 0;
    }
    cJSON_Delete(cs->messages);
    cs->messages = cJSON_DetachItemFromObjectCaseSensitive(doc, "messages");
    free(*sys_owned);
    *sys_owned = sys;
    cs->system = sys;
    sys = NULL;
    printf("loaded %u tokens from %s, %d messages from %s\n", n, path,
           cJSON_GetArraySize(cs->messages), json_path);
out:
    cJSON_Delete(doc);
    free(text);
    free(sys);
    free(json_path);
}

static void chat_stats(struct chat_state *cs) {
    struct sl_stats st;
    sl_context_stats(cs->ctx, &st);
    printf("messages %d, context %u tokens\n", cJSON_GetArraySize(cs->messages),
           sl_context_n_past(cs->ctx));
    printf("answers %llu, generated %llu tokens, %.2f tok/s\n", (unsigned long long)cs->n_answers,
           (unsigned long long)cs->n_generated,
           cs->gen_seconds > 0 ? (double)cs->n_generated / cs->gen_seconds : 0.0);
    printf("prompt tokens %llu (%.3f s), decode tokens %llu (%.3f s)\n",
           (unsigned long long)st.n_prompt_tokens, st.prompt_seconds,
           (unsigned long long)st.n_decode_tokens, st.decode_seconds);
    double tot = (double)(st.cache_hits + st.cache_misses);
    printf("expert cache: hit rate %.1f%%, %.1f MiB read\n",
           tot > 0 ? 100.0 * (double)st.cache_hits / tot : 0.0,
           (double)st.cache_bytes_read / (1024.0 * 1024.0));
    fflush(stdout);
}

static const char chat_usage[] =
    "usage: sluice chat -m MODEL [--system TEXT] [--temp T] [--top-k K] [--top-p P]\n"
    "                   [--seed S] [-n MAX_ANSWER_TOKENS] [--ctx N] [-t THREADS]\n"
    "                   [--no-thinking] [store flags]\n"
    "  commands: /reset /stats /system TEXT /save FILE /load FILE /help /quit\n"
    "  Ctrl-C stops an answer; Ctrl-D or /quit leaves.\n";

static const char chat_help[] =
    "/reset        forget the conversation (the system prompt stays)\n"
    "/system TEXT  set the system prompt and reset\n"
    "/stats        tokens, speed, expert cache\n"
    "/save FILE    save the conversation: FILE (context state) and FILE.json\n"
    "/load FILE    continue a saved conversation (same model)\n"
    "/quit         leave (or Ctrl-D)\n";

int cli_chat(int argc, char **argv) {
    const char *model_path = getenv("SLUICE_MODEL");
    struct chat_state cs = {0};
    cs.sp = sl_sampler_default_params();
    cs.sp.temperature = 0.7f;
    cs.max_answer = 512;
    long n_ctx = 0, threads = 0;
    struct sl_model_params mp = sl_model_default_params();
    char *sys_owned = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int r = cli_store_flag("sluice chat", argc, argv, &i, &mp);
        if (r < 0) return 2;
        if (r > 0) continue;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(chat_usage, stdout);
            return 0;
        }
        if (!strcmp(a, "--no-thinking")) {
            cs.no_thinking = 1;
            continue;
        }
        if (!strcmp(a, "--ignore-eos")) { /* tests: answers of a known length */
            cs.ignore_eos = 1;
            continue;
        }
        if (!v) {
            fprintf(stderr, "sluice chat: unknown flag or missing value: %s\n%s", a, chat_usage);
            return 2;
        }
        i++;
        char *end;
        double d = strtod(v, &end);
        int num = *v && !*end;
        if (!strcmp(a, "-m")) model_path = v;
        else if (!strcmp(a, "--system")) cs.system = v;
        else if (!strcmp(a, "--temp") && num && d >= 0 && d <= 100) cs.sp.temperature = (float)d;
        else if (!strcmp(a, "--top-p") && num && d > 0 && d <= 1) cs.sp.top_p = (float)d;
        else if (!strcmp(a, "--top-k") && num && d >= 0 && d == (long)d) cs.sp.top_k = (int32_t)d;
        else if (!strcmp(a, "--seed") && num && d >= 0) cs.sp.seed = (uint64_t)d;
        else if (!strcmp(a, "-n") && num && d >= 1 && d == (long)d) cs.max_answer = (long)d;
        else if (!strcmp(a, "--ctx") && num && d >= 0 && d == (long)d) n_ctx = (long)d;
        else if ((!strcmp(a, "-t") || !strcmp(a, "--threads")) && num && d >= 0) threads = (long)d;
        else {
            fprintf(stderr, "sluice chat: bad flag or value: %s %s\n%s", a, v, chat_usage);
            return 2;
        }
    }
    if (!model_path) {
        fprintf(stderr, "sluice chat: missing -m MODEL\n%s", chat_usage);
        return 2;
    }
    mp.n_threads = (int)threads;
    int rc = 1;
    if (sl_model_open(model_path, &mp, &cs.model) != SL_OK ||
        sl_chat_create(cs.model, &cs.chat) != SL_OK) {
        fprintf(stderr, "sluice chat: %s\n", sl_errmsg());
        goto out;
    }
    struct sl_context_params cp = sl_context_default_params();
    cp.n_ctx = (uint32_t)n_ctx;
    if (sl_context_create(cs.model, &cp, &cs.ctx) != SL_OK) {
        fprintf(stderr, "sluice chat: %s\n", sl_errmsg());
        goto out;
    }
    struct sigaction sa = {0};
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    chat_reset(&cs);
    printf("sluice chat: %s — /help for commands, Ctrl-D to leave\n", sl_model_desc(cs.model));
    fflush(stdout);
    for (;;) {
        char *line = readline("> ");
        if (!line) {
            printf("\n");
            break;
        }
        char *s = line;
        while (*s == ' ' || *s == '\t') s++;
        if (!*s) {
            free(line);
            continue;
        }
        add_history(s);
        if (!strcmp(s, "/quit") || !strcmp(s, "/exit")) {
            free(line);
            break;
        } else if (!strcmp(s, "/reset")) {
            chat_reset(&cs);
            printf("conversation reset\n");
        } else if (!strcmp(s, "/stats")) {
            chat_stats(&cs);
        } else if (!strcmp(s, "/help")) {
            fputs(chat_help, stdout);
        } else if (!strncmp(s, "/system ", 8)) {
            free(sys_owned);
            sys_owned = strdup(s + 8);
            cs.system = sys_owned;
            chat_reset(&cs);
            printf("system prompt set; conversation reset\n");
        } else if ((!strncmp(s, "/save", 5) || !strncmp(s, "/load", 5)) &&
                   (!s[5] || s[5] == ' ')) {
            char *file = s + 5;
            while (*file == ' ') file++;
            size_t fl = strlen(file);
            while (fl && file[fl - 1] == ' ') file[--fl] = 0;
            if (!*file) printf("%.5s needs a FILE (/help)\n", s);
            else if (s[1] == 's') chat_save(&cs, file);
            else chat_load(&cs, file, &sys_owned);
        } else if (s[0] == '/') {
            printf("unknown command %s (/help lists them)\n", s);
        } else {
            chat_turn(&cs, s);
        }
        fflush(stdout);
        free(line);
    }
    rc = 0;
out:
    cJSON_Delete(cs.messages);
    free(cs.toks);
    free(sys_owned);
    sl_context_free(cs.ctx);
    sl_chat_free(cs.chat);
    sl_model_close(cs.model);
    return rc;
}
