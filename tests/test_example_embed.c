/*
 * test_example_embed.c — compiles docs/api.md's embedding example
 * (tests/example_embed.c) into the suite and runs it on a tiny synthetic
 * model, so that the documented example keeps building and working.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SL_EXAMPLE_NO_MAIN
#include "example_embed.c"
#include "synth.h"
#include "test.h"

TEST(test_example_runs) {
    char dir[64] = "/tmp/sluice_example_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char model_path[128], state_path[128];
    snprintf(model_path, sizeof model_path, "%s/tiny.sluice", dir);
    snprintf(state_path, sizeof state_path, "%s/prompt.state", dir);
    struct synth_params p;
    CHECK(synth_preset("tiny", &p) == SL_OK);
    p.n_threads = 2;
    CHECK(synth_write(&p, model_path, NULL) == SL_OK);
    CHECK_EQ_INT(example_main(model_path, state_path), 0);
    CHECK(access(state_path, F_OK) == 0);
    /* a missing model fails cleanly with a message */
    CHECK_EQ_INT(example_main("/nonexistent.sluice", state_path), 1);
    unlink(state_path);
    unlink(model_path);
    rmdir(dir);
}

TEST_MAIN()
