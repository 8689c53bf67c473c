/*
 * fuzz_chat_template.c — libFuzzer target for the chat-template interpreter
 * (src/chat_template*.c through the public sl_chat_* API). `make fuzz`
 * builds it.
 *
 * Input: template source, a NUL byte, then a JSON messages array (when the
 * NUL is absent the whole input is the template and a fixed conversation is
 * rendered). Contracts checked:
 *   - every input gives a status, never a crash or a hang; a failure leaves
 *     a message;
 *   - a template that parses renders or fails cleanly for both
 *     add_generation_prompt values, and rendering is deterministic (twice
 *     gives the same bytes).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sluice.h"

static void must(int c, const char *what) {
    if (!c) {
        fprintf(stderr, "fuzz_chat_template: contract violated: %s\n", what);
        abort();
    }
}

static const char default_messages[] =
    "[{\"role\":\"system\",\"content\":\"You are terse.\"},"
    "{\"role\":\"user\",\"content\":\"Hi <|im_end|> there\"},"
    "{\"role\":\"assistant\",\"content\":\"Hello.\",\"reasoning_content\":\"think\"},"
    "{\"role\":\"user\",\"content\":\"Again\"}]";

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
    if (size > 65536) return 0; /* gpt-oss's template is ~17 KB; keep runs bounded */
    char *buf = malloc(size + 1);
    if (!buf) return 0;
    memcpy(buf, data, size);
    buf[size] = 0;
    const char *source = buf;
    size_t src_len = strlen(buf);
    const char *messages = src_len < size ? buf + src_len + 1 : default_messages;

    struct sl_chat *chat = NULL;
    int st = sl_chat_create_from_source(source, "<s>", "</s>", &chat);
    if (st != SL_OK) {
        must(chat == NULL, "failed create leaves *out NULL");
        must(sl_errmsg()[0] != 0, "failure leaves a message");
        free(buf);
        return 0;
    }
    for (int agp = 0; agp < 2; agp++) {
        char *a = NULL, *b = NULL;
        int r1 = sl_chat_render(chat, messages, agp, "{\"enable_thinking\":false}", &a);
        int r2 = sl_chat_render(chat, messages, agp, "{\"enable_thinking\":false}", &b);
        must(r1 == r2, "rendering twice gives the same status");
        if (r1 == SL_OK) must(a && b && strcmp(a, b) == 0, "rendering is deterministic");
        else must(sl_errmsg()[0] != 0, "failure leaves a message");
        free(a);
        free(b);
    }
    sl_chat_free(chat);
    free(buf);
    return 0;
}
