/*
 * cli_export_gguf.c — `sluice export-gguf MODEL.sluice -o OUT.gguf
 * [--tokenizer tokenizer.json] [--quiet]`: writes the model as a GGUF v3
 * qwen3moe file with bit-identical weights (src/gguf_write.h), so that
 * llama.cpp can be benchmarked on exactly the numbers sluice runs.
 * Exit codes: 0 ok, 2 usage, 1 other errors (one line on stderr).
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "gguf_write.h"
#include "sluice.h"

static int export_usage(const char *msg, const char *arg) {
    fprintf(stderr, "sluice export-gguf: %s%s\n", msg, arg ? arg : "");
    fprintf(stderr, "usage: sluice export-gguf MODEL.sluice -o OUT.gguf "
                    "[--tokenizer tokenizer.json] [--quiet]\n");
    return 2;
}

int cli_export_gguf(int argc, char **argv) {
    const char *in = NULL, *out = NULL;
    struct gguf_export_params p = {0};
    int quiet = 0;
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        if (!strcmp(s, "-o") || !strcmp(s, "--tokenizer")) {
            if (i + 1 >= argc) return export_usage("missing value for ", s);
            if (s[1] == 'o') out = argv[++i];
            else p.tokenizer_path = argv[++i];
        } else if (!strcmp(s, "--quiet")) {
            quiet = 1;
        } else if (s[0] == '-') {
            return export_usage("unknown option ", s);
        } else if (!in) {
            in = s;
        } else {
            return export_usage("unexpected argument ", s);
        }
    }
    if (!in) return export_usage("missing MODEL.sluice", NULL);
    if (!out) return export_usage("missing -o OUT.gguf", NULL);
    p.progress = !quiet && isatty(2);
    struct gguf_export_report r;
    if (gguf_export(in, out, &p, &r) != SL_OK) {
        fprintf(stderr, "sluice export-gguf: %s\n", sl_errmsg());
        if (strstr(sl_errmsg(), "no embedded tokenizer"))
            fprintf(stderr, "HINT: add --tokenizer tests/fixtures/tokenizer/gpt2style/"
                            "tokenizer.json (padded to the model's vocabulary)\n");
        return 1;
    }
    if (!quiet)
        fprintf(stderr, "sluice export-gguf: %s -> %s: %u tensors, %u tokens (%u padding), "
                        "%.3f GB in %.1f s\n",
                in, out, r.n_tensors, r.n_tokens, r.n_pad_tokens, (double)r.file_bytes / 1e9,
                r.seconds);
    return 0;
}
