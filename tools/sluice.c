/*
 * sluice.c — the `sluice` command line: convert, run, logits, tokenize,
 * inspect, bench, synth. The contract (flags, outputs, exit codes) is in
 * DESIGN.md's "CLI contract" and docs/cli.md; the scripts in tests/cli hold it.
 *
 * Exit codes: 0 ok, 2 bad usage (usage on stderr), 1 any other error (one
 * line "sluice <cmd>: <message>" on stderr). stdout carries only generated
 * text or the requested data; statistics go to stderr.
 */
#include <errno.h>
#include <stdarg.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "sluice.h"

#define EXIT_USAGE 2

static const char *cmd_name = "sluice";

static const char usage_text[] =
    "usage: sluice <command> [options]\n"
    "\n"
    "commands:\n"
    "  convert HF_DIR -o OUT.sluice [--experts bf16|q8|q4] [--dense bf16|q8|f32] [--quiet]\n"
    "  run     [-m MODEL] -p TEXT [-n N] [--temp T] [--top-k K] [--top-p P] [--seed S]\n"
    "          [-t THREADS] [--ctx N] [--batch N] [--prompt-cache FILE] [--timing]\n"
    "          [STORE FLAGS]\n"
    "  logits  -m MODEL --tokens 1,2,3 -o OUT.f32 [--generate N] [-t THREADS] [--timing]\n"
    "          [STORE FLAGS]\n"
    "  tokenize (-m MODEL | --tokenizer tokenizer.json) --text-file F\n"
    "  inspect MODEL [--verify]\n"
    "  bench   -m MODEL [--prompt N] [--gen N] [--reps R] [--seed S] [-t THREADS] [--json]\n"
    "  synth   --preset NAME [-o OUT] [--layers N] [--experts D] [--dense D] [--skew G]\n"
    "  perplexity -m MODEL --text-file F [--window N] [--max-tokens N] [--kl-ref REF] [--json]\n"
    "  export-gguf MODEL.sluice -o OUT.gguf [--tokenizer tokenizer.json] [--quiet]\n"
    "  export-hf -m MODEL.sluice -o DIR [--dtype bf16|f32] [--shard-size SIZE] [--fused-experts]\n"
    "  serve   -m MODEL [--port N] [--max-seqs N] [--ctx N] [--api-key K] ... (docs/serve.md)\n"
    "  chat    -m MODEL [--system TEXT] [--temp T] [-n N] ... (docs/serve.md)\n"
    "\n"
    "STORE FLAGS (run, logits, bench; docs/streaming.md):\n"
    "  --ram-cache SIZE (512M, 4G, 1.5G, all; default: from available memory)\n"
    "  --io direct|buffered|mmap  --cache-policy lru|lfu  --prefetch 0|1|2\n"
    "  --expert-profile FILE  --io-threads N  --no-uring  --mlock\n"
    "  --device cpu|cuda|auto (auto: CUDA if present, else CPU; docs/cuda.md)\n"
    "  --gpu-cache SIZE|all|auto (CUDA: expert bytes kept in GPU memory)\n"
    "  --gpu-miss upload|auto|cpu (CUDA: an expert missing on the GPU is\n"
    "    uploaded (default, bit-identical outputs) or computed on the CPU)\n"
    "  --nccl-rank R --nccl-world N --nccl-id FILE [--nccl-timeout S] (CUDA:\n"
    "    expert parallelism, one process per GPU; tools/sluice_launch.sh starts\n"
    "    the local ranks; docs/multi_gpu.md)\n"
    "\n"
    "Without -m, run uses $SLUICE_MODEL or the default model built next to the\n"
    "sluice binary (build/default.sluice).\n";

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", cmd_name);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n\n%s", usage_text);
    return EXIT_USAGE;
}

/* Prints "sluice <cmd>: <what>: <library message>" and returns 1. */
static int fail(const char *what) {
    if (what && *what)
        fprintf(stderr, "%s: %s: %s\n", cmd_name, what, sl_errmsg());
    else
        fprintf(stderr, "%s: %s\n", cmd_name, sl_errmsg());
    return 1;
}

/* ---- argument helpers ---- */

struct args {
    int argc, i;
    char **argv;
    int bad; /* set when a value is missing or malformed */
};

/* The value after flag argv[i]; advances. NULL (and bad) if missing. */
static const char *arg_value(struct args *a) {
    if (a->i + 1 >= a->argc) {
        usage_error("option %s needs a value", a->argv[a->i]);
        a->bad = 1;
        return NULL;
    }
    return a->argv[++a->i];
}

static int parse_long(struct args *a, long lo, long hi, long *out) {
    const char *flag = a->argv[a->i], *v = arg_value(a);
    if (!v) return 0;
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi) {
        usage_error("option %s: '%s' is not an integer in [%ld, %ld]", flag, v, lo, hi);
        a->bad = 1;
        return 0;
    }
    *out = x;
    return 1;
}

static int parse_float(struct args *a, double lo, double hi, float *out) {
    const char *flag = a->argv[a->i], *v = arg_value(a);
    if (!v) return 0;
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end || !(x >= lo && x <= hi)) {
        usage_error("option %s: '%s' is not a number in [%g, %g]", flag, v, lo, hi);
        a->bad = 1;
        return 0;
    }
    *out = (float)x;
    return 1;
}

static int parse_dtype(struct args *a, const int *allowed, int n, int *out) {
    const char *flag = a->argv[a->i], *v = arg_value(a);
    if (!v) return 0;
    for (int i = 0; i < n; i++)
        if (!strcmp(v, sl_dtype_name(allowed[i]))) {
            *out = allowed[i];
            return 1;
        }
    usage_error("option %s: unknown format '%s'", flag, v);
    a->bad = 1;
    return 0;
}

/* $SLUICE_MODEL, else default.sluice next to this executable. */
static const char *default_model_path(void) {
    static char path[PATH_MAX];
    const char *env = getenv("SLUICE_MODEL");
    if (env && *env) return env;
    ssize_t n = readlink("/proc/self/exe", path, sizeof path - 32);
    if (n <= 0) return "build/default.sluice";
    path[n] = 0;
    char *slash = strrchr(path, '/');
    strcpy(slash ? slash + 1 : path, "default.sluice");
    return path;
}

static int open_model_p(const char *path, struct sl_model_params mp, struct sl_model **m) {
    if (sl_model_open(path, &mp, m) != SL_OK) {
        fprintf(stderr, "%s: %s\n", cmd_name, sl_errmsg());
        if (access(path, F_OK) != 0 && !getenv("SLUICE_MODEL"))
            fprintf(stderr, "HINT: build the default model with `make`, or pass -m MODEL\n");
        return 1;
    }
    return 0;
}

static int open_model(const char *path, int n_threads, struct sl_model **m) {
    struct sl_model_params mp = sl_model_default_params();
    mp.n_threads = n_threads;
    return open_model_p(path, mp, m);
}

/* ---- convert ---- */

static int cmd_convert(int argc, char **argv) {
    struct args a = {argc, 1, argv, 0};
    const char *in = NULL, *out = NULL;
    struct sl_convert_params p = sl_convert_default_params();
    p.progress = isatty(2);
    static const int ex[] = {SL_DTYPE_BF16, SL_DTYPE_Q8, SL_DTYPE_Q4};
    static const int de[] = {SL_DTYPE_BF16, SL_DTYPE_Q8, SL_DTYPE_F32};
    for (; a.i < argc && !a.bad; a.i++) {
        const char *s = argv[a.i];
        if (!strcmp(s, "-o")) out = arg_value(&a);
        else if (!strcmp(s, "--experts")) parse_dtype(&a, ex, 3, &p.expert_dtype);
        else if (!strcmp(s, "--dense")) parse_dtype(&a, de, 3, &p.dense_dtype);
        else if (!strcmp(s, "--quiet")) p.progress = 0;
        else if (!strcmp(s, "--progress")) p.progress = 1;
        else if (s[0] == '-') return usage_error("unknown option %s", s);
        else if (!in) in = s;
        else return usage_error("unexpected argument '%s'", s);
    }
    if (a.bad) return EXIT_USAGE;
    if (!in) return usage_error("missing HF_DIR");
    if (!out) return usage_error("missing -o OUT.sluice");
    if (sl_convert(in, out, &p) != SL_OK) return fail(NULL);
    return 0;
}

/* ---- run ---- */

/* --prompt-cache: loads path (if it exists) and keeps the longest prefix of
 * its tokens that the prompt shares; returns how many prompt tokens are
 * already evaluated (the caller evaluates the rest, so at least the last
 * one unless the cache holds exactly the prompt and its logits). A cache
 * that cannot be used is reported and ignored. */
static size_t prompt_cache_load(struct sl_context *ctx, const char *path,
                                const int32_t *ids, size_t n_ids) {
    if (access(path, F_OK) != 0) return 0;
    if (sl_state_load(ctx, path) != SL_OK) {
        fprintf(stderr, "%s: warning: ignoring the prompt cache: %s\n", cmd_name, sl_errmsg());
        sl_context_reset(ctx);
        return 0;
    }
    uint32_t nt;
    const int32_t *cached = sl_context_tokens(ctx, &nt);
    size_t k = 0;
    while (k < nt && k < n_ids && cached[k] == ids[k]) k++;
    if (!(k == n_ids && nt == n_ids && sl_logits(ctx))) {
        if (k == n_ids) k--; /* re-evaluate the last token for its logits */
        if (sl_context_truncate(ctx, (uint32_t)k) != SL_OK) {
            fprintf(stderr, "%s: warning: ignoring the prompt cache: %s\n", cmd_name,
                    sl_errmsg());
            sl_context_reset(ctx);
            return 0;
        }
    }
    fprintf(stderr, "%s: prompt cache %s: reusing %zu of %zu prompt tokens\n", cmd_name, path,
            k, n_ids);
    return k;
}

static int cmd_run(int argc, char **argv) {
    struct args a = {argc, 1, argv, 0};
    const char *model_path = NULL, *prompt = NULL, *prompt_cache = NULL;
    long n_gen = 128, n_threads = 0, n_ctx = 0, seed = 0x5eed, n_batch = 0;
    int timing = 0;
    struct sl_sampler_params sp = sl_sampler_default_params();
    struct sl_model_params mp = sl_model_default_params();
    for (; a.i < argc && !a.bad; a.i++) {
        const char *s = argv[a.i];
        long v;
        if (!strcmp(s, "-m")) model_path = arg_value(&a);
        else if (!strcmp(s, "-p")) prompt = arg_value(&a);
        else if (!strcmp(s, "-n")) parse_long(&a, 0, 1 << 24, &n_gen);
        else if (!strcmp(s, "--temp")) parse_float(&a, 0, 100, &sp.temperature);
        else if (!strcmp(s, "--top-k")) {
            if (parse_long(&a, 0, INT32_MAX, &v)) sp.top_k = (int32_t)v;
        } else if (!strcmp(s, "--top-p")) parse_float(&a, 1e-6, 1, &sp.top_p);
        else if (!strcmp(s, "--seed")) parse_long(&a, 0, LONG_MAX, &seed);
        else if (!strcmp(s, "-t") || !strcmp(s, "--threads")) parse_long(&a, 0, 1024, &n_threads);
        else if (!strcmp(s, "--ctx")) parse_long(&a, 0, 1 << 24, &n_ctx);
        else if (!strcmp(s, "--batch")) parse_long(&a, 1, 4096, &n_batch);
        else if (!strcmp(s, "--prompt-cache")) prompt_cache = arg_value(&a);
        else if (!strcmp(s, "--timing")) timing = 1;
        else if ((v = cli_store_flag(cmd_name, argc, argv, &a.i, &mp)) < 0) {
            return usage_error("bad expert-store option");
        } else if (v == 0) return usage_error("unknown option %s", s);
    }
    if (a.bad) return EXIT_USAGE;
    if (!prompt) return usage_error("missing -p TEXT");
    sp.seed = (uint64_t)seed;
    if (!model_path) model_path = default_model_path();

    struct sl_model *m = NULL;
    struct sl_context *ctx = NULL;
    struct sl_sampler *smp = NULL;
    struct sl_detok *dt = NULL;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    int rc = 1;
    mp.n_threads = (int)n_threads;
    if (open_model_p(model_path, mp, &m)) return 1;
    const struct sl_tokenizer *tok = sl_model_tokenizer(m);
    if (!tok) {
        fprintf(stderr, "%s: %s has no tokenizer; HINT: use `sluice logits --tokens`\n",
                cmd_name, model_path);
        goto done;
    }
    if (sl_tokenize(tok, prompt, strlen(prompt), &ids, &n_ids) != SL_OK) {
        fail("prompt");
        goto done;
    }
    if (n_ids == 0) {
        fprintf(stderr, "%s: the prompt is empty (no tokens to evaluate)\n", cmd_name);
        goto done;
    }
    struct sl_context_params cp = sl_context_default_params();
    cp.n_ctx = n_ctx ? (uint32_t)n_ctx : (uint32_t)(n_ids + (size_t)n_gen);
    cp.n_batch = (uint32_t)n_batch;
    if (n_ids + (size_t)n_gen > cp.n_ctx) {
        fprintf(stderr, "%s: prompt (%zu tokens) + -n %ld exceeds --ctx %u\n", cmd_name,
                n_ids, n_gen, cp.n_ctx);
        goto done;
    }
    if (sl_context_create(m, &cp, &ctx) != SL_OK ||
        sl_sampler_create(&sp, sl_model_n_vocab(m), &smp) != SL_OK ||
        sl_detok_create(tok, &dt) != SL_OK) {
        fail(NULL);
        goto done;
    }
    if (timing) fprintf(stderr, "device: %s\nmodel: %s\n", sl_model_backend_desc(m), sl_model_desc(m));
    size_t n_done = prompt_cache ? prompt_cache_load(ctx, prompt_cache, ids, n_ids) : 0;
    if (n_done < n_ids && sl_eval(ctx, ids + n_done, n_ids - n_done, NULL) != SL_OK) {
        fail("prompt");
        goto done;
    }
    if (prompt_cache && sl_state_save(ctx, prompt_cache) != SL_OK)
        fprintf(stderr, "%s: warning: prompt cache not saved: %s\n", cmd_name, sl_errmsg());
    const int32_t *eos;
    size_t n_eos = sl_model_eos_ids(m, &eos);
    for (long i = 0; i < n_gen; i++) {
        int32_t id = sl_sample(smp, sl_logits(ctx));
        int stop = 0;
        for (size_t k = 0; k < n_eos; k++) stop |= id == eos[k];
        if (stop) break;
        const char *text;
        size_t len;
        if (sl_detok_push(dt, id, &text, &len) != SL_OK) {
            fail("detokenize");
            goto done;
        }
        fwrite(text, 1, len, stdout);
        fflush(stdout);
        if (i + 1 < n_gen && sl_eval(ctx, &id, 1, NULL) != SL_OK) {
            fail("decode");
            goto done;
        }
    }
    const char *text;
    size_t len;
    sl_detok_flush(dt, &text, &len);
    fwrite(text, 1, len, stdout);
    fputc('\n', stdout);
    fflush(stdout);

    struct sl_stats st;
    sl_context_stats(ctx, &st);
    uint64_t n_tok = st.n_prompt_tokens + st.n_decode_tokens;
    fprintf(stderr,
            "prompt: %" PRIu64 " tokens, %.2f tok/s | decode: %" PRIu64
            " tokens, %.2f tok/s | experts: %.1f MiB read (%.2f MiB/token)\n",
            st.n_prompt_tokens,
            st.prompt_seconds > 0 ? (double)st.n_prompt_tokens / st.prompt_seconds : 0,
            st.n_decode_tokens,
            st.decode_seconds > 0 ? (double)st.n_decode_tokens / st.decode_seconds : 0,
            (double)st.expert_bytes_read / (1 << 20),
            n_tok ? (double)st.expert_bytes_read / (1 << 20) / (double)n_tok : 0);
    if (timing) cli_print_store_stats(m, &st, 1);
    rc = 0;
done:
    free(ids);
    sl_detok_free(dt);
    sl_sampler_free(smp);
    sl_context_free(ctx);
    sl_model_close(m);
    return rc;
}

/* ---- logits ---- */

/* Parses "1,2,3" into a malloc'ed array. Returns 0 and prints on error. */
static int parse_token_list(const char *s, int32_t **out, size_t *n) {
    size_t cap = 16, k = 0;
    int32_t *v = malloc(cap * sizeof *v);
    if (!v) return 0;
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        long x = strtol(p, &end, 10);
        if (end == p || errno || x < INT32_MIN || x > INT32_MAX || (*end && *end != ',')) {
            free(v);
            usage_error("--tokens: '%s' is not a comma-separated list of integers", s);
            return 0;
        }
        if (k == cap) {
            int32_t *nv = realloc(v, (cap *= 2) * sizeof *v);
            if (!nv) {
                free(v);
                return 0;
            }
            v = nv;
        }
        v[k++] = (int32_t)x;
        p = *end ? end + 1 : end;
    }
    *out = v;
    *n = k;
    return 1;
}

static int write_all(FILE *f, const void *p, size_t n) { return fwrite(p, 1, n, f) == n; }

static int cmd_logits(int argc, char **argv) {
    struct args a = {argc, 1, argv, 0};
    const char *model_path = NULL, *tokens_s = NULL, *out_path = NULL;
    long n_gen = 0, n_threads = 0;
    int timing = 0, v;
    struct sl_model_params mp = sl_model_default_params();
    for (; a.i < argc && !a.bad; a.i++) {
        const char *s = argv[a.i];
        if (!strcmp(s, "-m")) model_path = arg_value(&a);
        else if (!strcmp(s, "--tokens")) tokens_s = arg_value(&a);
        else if (!strcmp(s, "-o")) out_path = arg_value(&a);
        else if (!strcmp(s, "--generate")) parse_long(&a, 0, 1 << 24, &n_gen);
        else if (!strcmp(s, "-t") || !strcmp(s, "--threads")) parse_long(&a, 0, 1024, &n_threads);
        else if (!strcmp(s, "--timing")) timing = 1;
        else if ((v = cli_store_flag(cmd_name, argc, argv, &a.i, &mp)) < 0)
            return usage_error("bad expert-store option");
        else if (v == 0) return usage_error("unknown option %s", s);
    }
    if (a.bad) return EXIT_USAGE;
    if (!model_path) return usage_error("missing -m MODEL");
    if (!tokens_s) return usage_error("missing --tokens");
    if (!out_path) return usage_error("missing -o OUT.f32");
    int32_t *toks = NULL;
    size_t n = 0;
    if (!parse_token_list(tokens_s, &toks, &n)) return EXIT_USAGE;
    if (n == 0) {
        free(toks);
        return usage_error("--tokens: the list is empty");
    }
    struct sl_model *m = NULL;
    struct sl_context *ctx = NULL;
    float *all = NULL;
    FILE *f = NULL;
    int rc = 1;
    mp.n_threads = (int)n_threads;
    if (open_model_p(model_path, mp, &m)) goto done;
    struct sl_context_params cp = sl_context_default_params();
    cp.n_ctx = (uint32_t)(n + (size_t)n_gen);
    if (sl_context_create(m, &cp, &ctx) != SL_OK) {
        fail(NULL);
        goto done;
    }
    size_t nv = (size_t)sl_model_n_vocab(m);
    all = malloc(n * nv * sizeof(float));
    if (!all) {
        fprintf(stderr, "%s: out of memory for %zu x %zu logits\n", cmd_name, n, nv);
        goto done;
    }
    if (sl_eval(ctx, toks, n, all) != SL_OK) {
        fail(NULL);
        goto done;
    }
    f = fopen(out_path, "wb");
    if (!f || !write_all(f, all, n * nv * sizeof(float)) || fclose(f) != 0) {
        f = NULL;
        fprintf(stderr, "%s: write %s: %s\n", cmd_name, out_path, strerror(errno));
        goto done;
    }
    f = NULL;
    if (n_gen > 0) {
        printf("{\"generated\":[");
        for (long i = 0; i < n_gen; i++) {
            const float *lg = sl_logits(ctx);
            int32_t best = 0;
            for (size_t j = 1; j < nv; j++)
                if (lg[j] > lg[best]) best = (int32_t)j;
            printf("%s%d", i ? "," : "", best);
            if (i + 1 < n_gen && sl_eval(ctx, &best, 1, NULL) != SL_OK) {
                printf("]}\n");
                fail("generate");
                goto done;
            }
        }
        printf("]}\n");
    }
    if (timing) {
        struct sl_stats st;
        sl_context_stats(ctx, &st);
        cli_print_store_stats(m, &st, 1);
    }
    rc = 0;
done:
    if (f) fclose(f);
    free(all);
    free(toks);
    sl_context_free(ctx);
    sl_model_close(m);
    return rc;
}

/* ---- tokenize ---- */

static int cmd_tokenize(int argc, char **argv) {
    struct args a = {argc, 1, argv, 0};
    const char *model_path = NULL, *tok_path = NULL, *text_path = NULL;
    for (; a.i < argc && !a.bad; a.i++) {
        const char *s = argv[a.i];
        if (!strcmp(s, "-m")) model_path = arg_value(&a);
        else if (!strcmp(s, "--tokenizer")) tok_path = arg_value(&a);
        else if (!strcmp(s, "--text-file")) text_path = arg_value(&a);
        else return usage_error("unknown option %s", s);
    }
    if (a.bad) return EXIT_USAGE;
    if (!model_path == !tok_path) return usage_error("give exactly one of -m MODEL or --tokenizer FILE");
    if (!text_path) return usage_error("missing --text-file F");

    FILE *tf = fopen(text_path, "rb");
    if (!tf) {
        fprintf(stderr, "%s: open %s: %s\n", cmd_name, text_path, strerror(errno));
        return 1;
    }
    size_t cap = 1 << 16, len = 0;
    char *text = malloc(cap);
    for (size_t r; text && (r = fread(text + len, 1, cap - len, tf)) > 0;) {
        len += r;
        if (len == cap) {
            char *nt = realloc(text, cap *= 2);
            if (!nt) {
                free(text);
                text = NULL;
            }
            text = nt;
        }
    }
    int read_err = ferror(tf);
    fclose(tf);
    if (!text || read_err) {
        free(text);
        fprintf(stderr, "%s: read %s: %s\n", cmd_name, text_path,
                text ? "read error" : "out of memory");
        return 1;
    }

    struct sl_model *m = NULL;
    struct sl_tokenizer *own = NULL;
    const struct sl_tokenizer *tok = NULL;
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = 1;
    if (model_path) {
        if (open_model(model_path, 1, &m)) goto done;
        tok = sl_model_tokenizer(m);
        if (!tok) {
            fprintf(stderr, "%s: %s has no tokenizer\n", cmd_name, model_path);
            goto done;
        }
    } else {
        if (sl_tokenizer_load(tok_path, &own) != SL_OK) {
            fail(NULL);
            goto done;
        }
        tok = own;
    }
    if (sl_tokenize(tok, text, len, &ids, &n) != SL_OK) {
        fail(text_path);
        goto done;
    }
    putchar('[');
    for (size_t i = 0; i < n; i++) printf("%s%d", i ? "," : "", ids[i]);
    printf("]\n");
    rc = 0;
done:
    free(ids);
    free(text);
    sl_tokenizer_free(own);
    sl_model_close(m);
    return rc;
}

/* ---- inspect ---- */

static int cmd_inspect(int argc, char **argv) {
    const char *path = NULL;
    int verify = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--verify")) verify = 1;
        else if (argv[i][0] == '-') return usage_error("unknown option %s", argv[i]);
        else if (!path) path = argv[i];
        else return usage_error("unexpected argument '%s'", argv[i]);
    }
    if (!path) return usage_error("missing MODEL");
    if (sl_model_inspect(path, stdout) != SL_OK) return fail(NULL);
    if (verify) {
        struct sl_model_params mp = sl_model_default_params();
        mp.verify = 1;
        struct sl_model *m;
        if (sl_model_open(path, &mp, &m) != SL_OK) return fail("verify");
        sl_model_close(m);
        printf("verify: every section's hash matches; tensors bind to %s\n", "the architecture");
    }
    return 0;
}

/* ---- dispatch ---- */

int main(int argc, char **argv) {
    if (argc < 2) return usage_error("missing command");
    const char *c = argv[1];
    static char name[64];
    snprintf(name, sizeof name, "sluice %s", c);
    cmd_name = name;
    if (!strcmp(c, "-h") || !strcmp(c, "--help") || !strcmp(c, "help")) {
        fputs(usage_text, stdout);
        return 0;
    }
    if (!strcmp(c, "--version") || !strcmp(c, "version")) {
        printf("sluice %s\n", SLUICE_VERSION_STRING);
        return 0;
    }
    argc--;
    argv++;
    if (!strcmp(c, "convert")) return cmd_convert(argc, argv);
    if (!strcmp(c, "run")) return cmd_run(argc, argv);
    if (!strcmp(c, "logits")) return cmd_logits(argc, argv);
    if (!strcmp(c, "tokenize")) return cmd_tokenize(argc, argv);
    if (!strcmp(c, "inspect")) return cmd_inspect(argc, argv);
    if (!strcmp(c, "bench")) return cli_bench(argc, argv);
    if (!strcmp(c, "synth")) return cli_synth(argc, argv);
    if (!strcmp(c, "perplexity")) return cli_perplexity(argc, argv);
    if (!strcmp(c, "export-gguf")) return cli_export_gguf(argc, argv);
    if (!strcmp(c, "export-hf")) return cli_export_hf(argc, argv);
    if (!strcmp(c, "serve")) return cli_serve(argc, argv);
    if (!strcmp(c, "chat")) return cli_chat(argc, argv);
    cmd_name = "sluice";
    return usage_error("unknown command '%s'", c);
}
