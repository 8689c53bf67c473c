/*
 * fuzz_http_body.c — libFuzzer target for the server's request-body parser
 * (tools/cli_serve.c: parse_gen and chat_prompt, which turn a POST body of
 * /v1/chat/completions or /v1/completions into a generation request or an
 * OpenAI-style 4xx). `make fuzz` builds it.
 *
 * The parser's functions are static, so this file includes cli_serve.c
 * whole (SQLite's way of reaching internals from a test) and drives them
 * with a server struct that holds the demo model's chat template (no model
 * is loaded: parsing never touches it). The low bit of the first byte picks
 * the endpoint; the rest is the body. Contracts checked:
 *   - every body gives either a request or a 4xx status with a message,
 *     never a crash;
 *   - a 4xx names a status in 400..499;
 *   - an accepted request has a prompt text and sane sampling values.
 */
#include "../../tools/cli_serve.c"

static void must(int c, const char *what) {
    if (!c) {
        fprintf(stderr, "fuzz_http_body: contract violated: %s\n", what);
        abort();
    }
}

/* cli_serve()'s option parsing (tools/cli_store.c) is never reached here. */
int cli_store_flag(const char *cmd, int argc, char **argv, int *i,
                   struct sl_model_params *mp) {
    (void)cmd, (void)argc, (void)argv, (void)i, (void)mp;
    return 0;
}

static struct server srv;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    srv.model_id = "demo";
    srv.timeout_s = 10;
    pthread_mutex_init(&srv.mu, NULL);
    /* The demo model's ChatML template (models/demo/tokenizer_config.json). */
    static const char tmpl[] =
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
        "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}"
        "{{ '<|im_start|>assistant\\n' }}{% endif %}";
    if (sl_chat_create_from_source(tmpl, NULL, "<|endoftext|>", &srv.chat) != SL_OK) {
        fprintf(stderr, "fuzz_http_body: template: %s\n", sl_errmsg());
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
    if (size < 1) return 0;
    cJSON *body = cJSON_ParseWithLength((const char *)data + 1, size - 1);
    if (!body) return 0; /* the server answers 400 before parsing fields */
    struct gen_req g;
    memset(&g, 0, sizeof g);
    g.chat = data[0] & 1;
    struct bad b;
    memset(&b, 0, sizeof b);
    int rc = cJSON_IsObject(body) ? parse_gen(&srv, body, &g, &b) : -1;
    if (rc) {
        if (cJSON_IsObject(body)) {
            must(b.status >= 400 && b.status < 500, "a rejected body gets a 4xx");
            must(b.msg[0] != 0, "a rejected body gets a message");
        }
    } else {
        must(g.prompt_text != NULL, "an accepted request has a prompt");
        must(g.p.sampler.temperature >= 0 && g.p.sampler.temperature <= 2, "temperature range");
        must(g.p.sampler.top_p > 0 && g.p.sampler.top_p <= 1, "top_p range");
    }
    free(g.prompt_text);
    cJSON_Delete(body);
    return 0;
}
