/*
 * chat.c — the public chat-template API of include/sluice.h
 * (sl_model_chat_template, sl_chat_*): reads the template and special tokens
 * from the model file's tokenizer-config section and renders conversations
 * with the interpreter of chat_template.h.
 *
 * The variables a template sees are the ones transformers'
 * apply_chat_template passes, prepared the same way: message keys whose
 * value is null are dropped, reasoning is aliased (reasoning_content /
 * thinking / reasoning: the first non-null fills "thinking" and
 * "reasoning_content"), `tools` and `documents` are null unless given, the
 * special tokens (bos_token, eos_token, pad_token, ...) come first and the
 * caller's extra variables override them.
 *
 * Not here: the template language itself (chat_template.c,
 * chat_template_eval.c, chat_template_filters.c). Invariant: a struct
 * sl_chat is immutable after creation, so renders may run concurrently.
 */
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "chat_template.h"
#include "model.h"
#include "sluice.h"
#include "util.h"

struct sl_chat {
    struct chat_template *tmpl;
    char *bos, *eos;    /* NULL when the file has none */
    cJSON *special;     /* {"pad_token": "...", ...} of the model file, or NULL */
};

/* The tokenizer-config section as a JSON object (caller deletes). */
static int tokenizer_config(const struct sl_model *m, cJSON **out) {
    *out = NULL;
    if (!m) return sl_seterr(SL_ERR_ARG, "chat template: no model");
    if (!m->file.tokenizer_config || !m->file.tokenizer_config_len)
        return sl_seterr(SL_ERR_UNSUPPORTED, "the model file has no tokenizer-config "
                         "section (no chat template); HINT: re-run convert with "
                         "tokenizer_config.json in the checkpoint");
    *out = cJSON_ParseWithLength(m->file.tokenizer_config, m->file.tokenizer_config_len);
    if (!cJSON_IsObject(*out)) {
        cJSON_Delete(*out);
        *out = NULL;
        return sl_seterr(SL_ERR_FORMAT, "tokenizer-config section: not a JSON object");
    }
    return SL_OK;
}

int sl_model_chat_template(const struct sl_model *model, char **out) {
    if (!out) return sl_seterr(SL_ERR_ARG, "sl_model_chat_template: out is NULL");
    *out = NULL;
    cJSON *tc;
    int rc = tokenizer_config(model, &tc);
    if (rc) return rc;
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(tc, "chat_template");
    if (!cJSON_IsString(ct)) rc = sl_seterr(SL_ERR_UNSUPPORTED, "the model has no chat template");
    else if (!(*out = sl_strdup(ct->valuestring))) rc = sl_seterr(SL_ERR_NOMEM, "out of memory");
    cJSON_Delete(tc);
    return rc;
}

int sl_chat_create_from_source(const char *source, const char *bos_token, const char *eos_token,
                               struct sl_chat **out) {
    if (!out || !source) return sl_seterr(SL_ERR_ARG, "sl_chat_create: NULL argument");
    *out = NULL;
    struct sl_chat *c = sl_calloc(1, sizeof *c);
    if (!c) return sl_seterr(SL_ERR_NOMEM, "out of memory");
    int rc = chat_template_parse(source, &c->tmpl);
    if (!rc && ((bos_token && !(c->bos = sl_strdup(bos_token))) ||
                (eos_token && !(c->eos = sl_strdup(eos_token)))))
        rc = sl_seterr(SL_ERR_NOMEM, "out of memory");
    if (rc) {
        sl_chat_free(c);
        return rc;
    }
    *out = c;
    return SL_OK;
}

int sl_chat_create(const struct sl_model *model, struct sl_chat **out) {
    if (!out) return sl_seterr(SL_ERR_ARG, "sl_chat_create: out is NULL");
    *out = NULL;
    cJSON *tc;
    int rc = tokenizer_config(model, &tc);
    if (rc) return rc;
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(tc, "chat_template");
    const cJSON *bos = cJSON_GetObjectItemCaseSensitive(tc, "bos_token");
    const cJSON *eos = cJSON_GetObjectItemCaseSensitive(tc, "eos_token");
    if (!cJSON_IsString(ct))
        rc = sl_seterr(SL_ERR_UNSUPPORTED, "the model has no chat template");
    else
        rc = sl_chat_create_from_source(ct->valuestring,
                                        cJSON_IsString(bos) ? bos->valuestring : NULL,
                                        cJSON_IsString(eos) ? eos->valuestring : NULL, out);
    const cJSON *sp = cJSON_GetObjectItemCaseSensitive(tc, "special_tokens");
    if (!rc && cJSON_IsObject(sp) && !((*out)->special = cJSON_Duplicate(sp, 1))) {
        sl_chat_free(*out);
        *out = NULL;
        rc = sl_seterr(SL_ERR_NOMEM, "out of memory");
    }
    cJSON_Delete(tc);
    return rc;
}

void sl_chat_free(struct sl_chat *chat) {
    if (!chat) return;
    chat_template_free(chat->tmpl);
    sl_free(chat->bos);
    sl_free(chat->eos);
    cJSON_Delete(chat->special);
    sl_free(chat);
}

/* One message as transformers prepares it (_normalize_chat_messages, then
 * _alias_reasoning_fields): null-valued keys dropped; when reasoning_content,
 * thinking or reasoning (first non-null) is set, the message becomes
 * {"thinking": r, ...message..., "reasoning_content": r}. */
static cJSON *prepare_message(const cJSON *m) {
    if (!cJSON_IsObject(m)) return cJSON_Duplicate(m, 1);
    static const char *const fields[] = {"reasoning_content", "thinking", "reasoning"};
    const cJSON *r = NULL;
    for (int i = 0; i < 3 && !r; i++) {
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(m, fields[i]);
        if (f && !cJSON_IsNull(f)) r = f;
    }
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    int ok = 1;
    const cJSON *th = cJSON_GetObjectItemCaseSensitive(m, "thinking");
    if (r) /* "thinking" first: its own value when set, else r */
        ok = cJSON_AddItemToObject(o, "thinking", cJSON_Duplicate(th && !cJSON_IsNull(th) ? th : r, 1));
    const cJSON *e;
    cJSON_ArrayForEach(e, m) {
        if (!ok) break;
        if (cJSON_IsNull(e) || (r && !strcmp(e->string, "thinking"))) continue;
        const cJSON *v = r && !strcmp(e->string, "reasoning_content") ? r : e;
        ok = cJSON_AddItemToObject(o, e->string, cJSON_Duplicate(v, 1));
    }
    if (ok && r && !cJSON_GetObjectItemCaseSensitive(o, "reasoning_content"))
        ok = cJSON_AddItemToObject(o, "reasoning_content", cJSON_Duplicate(r, 1));
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

int sl_chat_render(const struct sl_chat *chat, const char *messages_json,
                   int add_generation_prompt, const char *extra_json, char **out) {
    if (!chat || !messages_json || !out) return sl_seterr(SL_ERR_ARG, "sl_chat_render: NULL argument");
    *out = NULL;
    cJSON *vars = cJSON_CreateObject(), *msgs = cJSON_Parse(messages_json);
    cJSON *extra = extra_json ? cJSON_Parse(extra_json) : NULL, *prepared = NULL;
    int rc = SL_OK;
    if (!vars) rc = sl_seterr(SL_ERR_NOMEM, "out of memory");
    else if (!cJSON_IsArray(msgs)) rc = sl_seterr(SL_ERR_ARG, "chat: messages must be a JSON array");
    else if (extra_json && !cJSON_IsObject(extra))
        rc = sl_seterr(SL_ERR_ARG, "chat: extra variables must be a JSON object");
    else if (!(prepared = cJSON_CreateArray())) rc = sl_seterr(SL_ERR_NOMEM, "out of memory");
    if (rc) goto done;
    const cJSON *e;
    cJSON_ArrayForEach(e, msgs) {
        cJSON *m = prepare_message(e);
        if (!m) {
            rc = sl_seterr(SL_ERR_NOMEM, "out of memory");
            goto done;
        }
        cJSON_AddItemToArray(prepared, m);
    }
    /* transformers: special tokens, then messages, tools, documents,
     * add_generation_prompt and the keyword arguments (which win) */
    if (chat->special) cJSON_ArrayForEach(e, chat->special)
        cJSON_AddItemToObject(vars, e->string, cJSON_Duplicate(e, 1));
    cJSON_DeleteItemFromObjectCaseSensitive(vars, "bos_token");
    cJSON_DeleteItemFromObjectCaseSensitive(vars, "eos_token");
    cJSON_AddStringToObject(vars, "bos_token", chat->bos ? chat->bos : "");
    cJSON_AddStringToObject(vars, "eos_token", chat->eos ? chat->eos : "");
    cJSON_AddItemToObject(vars, "messages", prepared);
    prepared = NULL;
    cJSON_AddNullToObject(vars, "tools");
    cJSON_AddNullToObject(vars, "documents");
    cJSON_AddBoolToObject(vars, "add_generation_prompt", add_generation_prompt != 0);
    if (extra) cJSON_ArrayForEach(e, extra) {
        cJSON_DeleteItemFromObjectCaseSensitive(vars, e->string);
        cJSON_AddItemToObject(vars, e->string, cJSON_Duplicate(e, 1));
    }
    size_t len;
    rc = chat_template_render(chat->tmpl, vars, out, &len);
done:
    cJSON_Delete(vars);
    cJSON_Delete(msgs);
    cJSON_Delete(prepared);
    cJSON_Delete(extra);
    return rc;
}
