/*
 * example_embed.c — the embedding example of docs/api.md: open a model,
 * evaluate a prompt in chunks, decode greedily, save the sequence, fork it
 * into a second context, truncate, and load the saved state back.
 *
 * Compiled and run by the test suite (tests/test_example_embed.c includes
 * this file with SL_EXAMPLE_NO_MAIN); on its own:
 *     cc -Iinclude tests/example_embed.c build/libsluice.a -lcjson \
 *        -lpcre2-8 -lutf8proc -luring -lpthread -lm -o example
 *     ./example model.sluice
 */
#include <stdio.h>

#include "sluice.h"

static int32_t greedy(const float *logits, int32_t n_vocab) {
    int32_t best = 0;
    for (int32_t i = 1; i < n_vocab; i++)
        if (logits[i] > logits[best]) best = i;
    return best;
}

/* Returns 0 on success; prints sl_errmsg() and returns 1 otherwise. */
static int example_main(const char *model_path, const char *state_path) {
    struct sl_model *model = NULL;
    struct sl_context *ctx = NULL, *fork = NULL;
    int rc = 1;
    struct sl_model_params mp = sl_model_default_params();
    if (sl_model_open(model_path, &mp, &model) != SL_OK) goto out;

    struct sl_context_params cp = sl_context_default_params();
    cp.n_ctx = 256;   /* KV positions */
    cp.n_batch = 16;  /* prompt tokens per forward chunk */
    if (sl_context_create(model, &cp, &ctx) != SL_OK ||
        sl_context_create(model, &cp, &fork) != SL_OK)
        goto out;

    int32_t n_vocab = sl_model_n_vocab(model), prompt[24];
    for (int i = 0; i < 24; i++) prompt[i] = (i * 7 + 3) % n_vocab;
    if (sl_eval(ctx, prompt, 24, NULL) != SL_OK) goto out; /* 2 chunks */

    /* save the prompt's state, then decode 4 tokens greedily */
    if (sl_state_save(ctx, state_path) != SL_OK) goto out;
    int32_t gen[4];
    for (int i = 0; i < 4; i++) {
        gen[i] = greedy(sl_logits(ctx), n_vocab);
        if (sl_eval(ctx, &gen[i], 1, NULL) != SL_OK) goto out;
    }

    /* fork: the second context continues from the same 28 positions */
    if (sl_context_copy(fork, ctx) != SL_OK) goto out;
    printf("fork holds %u positions (last %lld)\n", sl_context_n_past(fork),
           (long long)sl_context_pos_max(fork));

    /* drop the generated tokens: back to the prompt, then redo one step */
    if (sl_context_truncate(ctx, 24) != SL_OK) goto out;
    if (sl_eval(ctx, &prompt[23], 1, NULL) != SL_OK) goto out; /* replace pos 24 */
    if (sl_context_truncate(ctx, 24) != SL_OK) goto out;

    /* or reload the saved prompt state: same logits as before decoding */
    sl_context_reset(ctx);
    if (sl_state_load(ctx, state_path) != SL_OK) goto out;
    int32_t again = greedy(sl_logits(ctx), n_vocab);
    printf("first generated token %d, after reload %d\n", gen[0], again);
    rc = again == gen[0] ? 0 : 1;
    if (rc) fprintf(stderr, "reloaded state disagrees\n");
out:
    if (rc && sl_errmsg()[0]) fprintf(stderr, "error: %s\n", sl_errmsg());
    sl_context_free(fork);
    sl_context_free(ctx);
    sl_model_close(model);
    return rc;
}

#ifndef SL_EXAMPLE_NO_MAIN
int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL.sluice [STATE_FILE]\n", argv[0]);
        return 2;
    }
    return example_main(argv[1], argc > 2 ? argv[2] : "example.state");
}
#endif
