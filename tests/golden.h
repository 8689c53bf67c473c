/*
 * golden.h — helpers shared by the golden tests (test_golden*.c, test_cuda.c):
 * reading a fixture directory written by tests/gen/ (config.json,
 * generated.json, logits.f32), converting it to a temporary .sluice and
 * opening it, converting a copy with one config.json edit, cosine / argmax, the per-position cosine statistics, the
 * greedy-prefix and token-by-token loops, a prompt + greedy run on a fresh
 * context, listing fixture directories.
 *
 * What it is not: a test harness (that is test.h) nor a place for
 * assertions; every helper reports through its return value and the caller
 * keeps its own CHECKs and thresholds.
 *
 * Header-only (static functions): each tests/test_*.c is its own binary and
 * links only build/libsluice.a. Unused helpers are marked unused so that
 * -Wall -Werror stays quiet in files that take only a few.
 */
#ifndef SLUICE_TESTS_GOLDEN_H
#define SLUICE_TESTS_GOLDEN_H

#include <cJSON.h>
#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sluice.h"

#define GOLDEN_UNUSED __attribute__((unused))

/* Root of the committed fixtures: $SLUICE_FIXTURES_ROOT or tests/fixtures. */
GOLDEN_UNUSED static const char *golden_fx_root(void) {
    const char *r = getenv("SLUICE_FIXTURES_ROOT");
    return r && *r ? r : "tests/fixtures";
}

/* Reads a whole file; malloc'ed and NUL-terminated, *len its size. NULL on
 * any failure, silently. */
GOLDEN_UNUSED static char *golden_read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0) n = ftell(f);
    if (n >= 0 && fseek(f, 0, SEEK_SET) == 0) buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[n] = 0;
        *len = (size_t)n;
    }
    return buf;
}

/* Copies a file whole; nonzero on success. */
GOLDEN_UNUSED static int golden_copy_file(const char *from, const char *to) {
    size_t len;
    char *d = golden_read_all(from, &len);
    if (!d) return 0;
    FILE *f = fopen(to, "wb");
    int ok = f && fwrite(d, 1, len, f) == len;
    if (f) fclose(f);
    free(d);
    return ok;
}

/* Reads a JSON array of exactly n numbers into out (no range check). */
GOLDEN_UNUSED static int golden_json_ids(const cJSON *a, int32_t *out, int n) {
    if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) != n) return 0;
    for (int i = 0; i < n; i++) out[i] = (int32_t)cJSON_GetArrayItem(a, i)->valuedouble;
    return 1;
}

/* vocab_size of a parsed config.json (j may be NULL); with text_config,
 * also looked up under "text_config" (the multimodal wrapper). 0 if none. */
GOLDEN_UNUSED static size_t golden_vocab_of(const cJSON *j, int text_config) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "vocab_size");
    if (!v && text_config)
        v = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(j, "text_config"), "vocab_size");
    return cJSON_IsNumber(v) ? (size_t)v->valuedouble : 0;
}

/* Reads fixture directory dir: config.json vocab_size into *n_vocab,
 * generated.json "prompt" (n_prompt ids) and "generated" (n_gen ids), and
 * logits.f32 (n_prompt, *n_vocab) into *logits (malloc'ed, the caller frees).
 * Returns nonzero on success; on failure prints "fixture <dir> unreadable"
 * and returns 0 (*logits stays untouched). */
GOLDEN_UNUSED static int golden_fixture_read(const char *dir, int text_config, int n_prompt,
                                             int n_gen, size_t *n_vocab, int32_t *prompt,
                                             int32_t *gen, float **logits) {
    char p[600];
    size_t len;
    snprintf(p, sizeof p, "%s/config.json", dir);
    char *txt = golden_read_all(p, &len);
    cJSON *j = txt ? cJSON_Parse(txt) : NULL;
    *n_vocab = golden_vocab_of(j, text_config);
    cJSON_Delete(j);
    free(txt);
    snprintf(p, sizeof p, "%s/generated.json", dir);
    txt = golden_read_all(p, &len);
    j = txt ? cJSON_Parse(txt) : NULL;
    int ok = *n_vocab > 0 &&
             golden_json_ids(cJSON_GetObjectItemCaseSensitive(j, "prompt"), prompt, n_prompt) &&
             golden_json_ids(cJSON_GetObjectItemCaseSensitive(j, "generated"), gen, n_gen);
    cJSON_Delete(j);
    free(txt);
    snprintf(p, sizeof p, "%s/logits.f32", dir);
    txt = ok ? golden_read_all(p, &len) : NULL;
    if (!txt || len != (size_t)n_prompt * *n_vocab * sizeof(float)) {
        fprintf(stderr, "    fixture %s unreadable\n", dir);
        free(txt);
        return 0;
    }
    *logits = (float *)txt;
    return 1;
}

/* Converts HF checkpoint dir at the dtypes into a private temporary file
 * (mkdtemp template tmpl, e.g. "/tmp/sluice_gf_XXXXXX", under 64 chars) and
 * opens it; the file is removed before returning (the model stays mapped).
 * With log_fn, the library log goes to log_fn (level 2) during sl_convert
 * and back to the default (NULL, level 1) after. NULL on failure (printed). */
GOLDEN_UNUSED static struct sl_model *golden_convert_open(const char *dir, int ed, int dd,
                                                          const char *tmpl,
                                                          sl_log_fn log_fn) {
    char tmp[64], path[96];
    snprintf(tmp, sizeof tmp, "%s", tmpl);
    if (!mkdtemp(tmp)) return NULL;
    snprintf(path, sizeof path, "%s/m.sluice", tmp);
    struct sl_convert_params cp = sl_convert_default_params();
    cp.expert_dtype = ed;
    cp.dense_dtype = dd;
    if (log_fn) sl_set_log(log_fn, NULL, 2);
    int st = sl_convert(dir, path, &cp);
    if (log_fn) sl_set_log(NULL, NULL, 1);
    struct sl_model *m = NULL;
    if (st) {
        fprintf(stderr, "    sl_convert %s: %s\n", dir, sl_errmsg());
    } else {
        struct sl_model_params mp = sl_model_default_params();
        if ((st = sl_model_open(path, &mp, &m)))
            fprintf(stderr, "    sl_model_open %s: %s\n", path, sl_errmsg());
    }
    unlink(path);
    rmdir(tmp);
    return m;
}

/* Copies fixture directory src (config.json and model.safetensors) into a
 * private temporary directory (mkdtemp template tmpl, under 64 chars) with
 * the first occurrence of from in config.json replaced by to, converts the
 * copy with the default params and removes it. Returns sl_convert's status
 * (sl_errmsg() holds its message), or -1 if the copy could not be made
 * (from not found included). */
GOLDEN_UNUSED static int golden_convert_patched(const char *src, const char *tmpl,
                                                const char *from, const char *to) {
    char dir[64], p[600], q[600];
    snprintf(dir, sizeof dir, "%s", tmpl);
    if (!mkdtemp(dir)) return -1;
    size_t len;
    snprintf(p, sizeof p, "%s/config.json", src);
    char *cfg = golden_read_all(p, &len);
    const char *at = cfg ? strstr(cfg, from) : NULL;
    int st = -1;
    snprintf(p, sizeof p, "%s/model.safetensors", src);
    snprintf(q, sizeof q, "%s/model.safetensors", dir);
    if (at && golden_copy_file(p, q)) {
        snprintf(q, sizeof q, "%s/config.json", dir);
        FILE *f = fopen(q, "wb");
        if (f) {
            fprintf(f, "%.*s%s%s", (int)(at - cfg), cfg, to, at + strlen(from));
            fclose(f);
            char out[96];
            snprintf(out, sizeof out, "%s/m.sluice", dir);
            struct sl_convert_params cp = sl_convert_default_params();
            st = sl_convert(dir, out, &cp);
            unlink(out);
        }
        unlink(q);
    }
    free(cfg);
    snprintf(q, sizeof q, "%s/model.safetensors", dir);
    unlink(q);
    rmdir(dir);
    return st;
}

/* Cosine similarity of a and b (n values) in double; 0 if either is zero. */
GOLDEN_UNUSED static double golden_cosine(const float *a, const float *b, size_t n) {
    double ab = 0, aa = 0, bb = 0;
    for (size_t i = 0; i < n; i++) {
        ab += (double)a[i] * b[i];
        aa += (double)a[i] * a[i];
        bb += (double)b[i] * b[i];
    }
    return aa > 0 && bb > 0 ? ab / sqrt(aa * bb) : 0.0;
}

/* Index of the largest value; ties go to the lower index (as torch). */
GOLDEN_UNUSED static int32_t golden_argmax(const float *x, size_t n) {
    size_t best = 0;
    for (size_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return (int32_t)best;
}

/* A fresh context on m (n_batch 0 = the default): the prompt (n_prompt
 * ids, chunks of n_batch) with every position's logits into all
 * (n_prompt, V), then n_gen greedy steps (their tokens into gen, their
 * logits into steps (n_gen, V) when not NULL). Nonzero on success; a
 * failure is printed to stderr. */
GOLDEN_UNUSED static int golden_run_seq(struct sl_model *m, uint32_t n_batch,
                                        const int32_t *prompt, int n_prompt, size_t V,
                                        float *all, int n_gen, int32_t *gen, float *steps) {
    struct sl_context *ctx;
    struct sl_context_params cp = sl_context_default_params();
    if (n_batch) cp.n_batch = n_batch;
    if (sl_context_create(m, &cp, &ctx) != SL_OK) {
        fprintf(stderr, "    context: %s\n", sl_errmsg());
        return 0;
    }
    int ok = sl_eval(ctx, prompt, (size_t)n_prompt, all) == SL_OK;
    for (int g = 0; ok && g < n_gen; g++) {
        const float *l = sl_logits(ctx);
        gen[g] = golden_argmax(l, V);
        if (steps) memcpy(steps + (size_t)g * V, l, V * sizeof(float));
        if (g + 1 < n_gen) ok = sl_eval(ctx, &gen[g], 1, NULL) == SL_OK;
    }
    if (!ok) fprintf(stderr, "    sl_eval: %s\n", sl_errmsg());
    sl_context_free(ctx);
    return ok;
}

/* Min and mean cosine of the rows of all (n_rows, V) against ref
 * (n_rows, V). A NaN cosine sticks as the min. */
GOLDEN_UNUSED static void golden_cos_stats(const float *all, const float *ref, int n_rows,
                                           size_t V, double *mn, double *mean) {
    double sum = 0, m = 2;
    for (int i = 0; i < n_rows; i++) {
        double c = golden_cosine(all + i * V, ref + i * V, V);
        sum += c;
        if (!(c >= m)) m = c;
    }
    *mn = m, *mean = sum / n_rows;
}

/* Greedy decode from last (the logits after the prompt, may be NULL):
 * n_gen argmax tokens fed back into ctx, compared with want. Returns how
 * many leading tokens equal want; stops at the first failing sl_eval. */
GOLDEN_UNUSED static int golden_greedy_prefix(struct sl_context *ctx, const float *last,
                                              const int32_t *want, int n_gen, size_t V) {
    int prefix = 1, n = 0;
    for (int g = 0; g < n_gen && last; g++) {
        int32_t tok = golden_argmax(last, V);
        prefix = prefix && tok == want[g];
        n += prefix;
        if (g == n_gen - 1 || sl_eval(ctx, &tok, 1, NULL)) break;
        last = sl_logits(ctx);
    }
    return n;
}

/* Token by token: resets ctx, then feeds prompt (n tokens) one at a time
 * and returns the min cosine of each step's logits against ref (n, V);
 * -1 if an sl_eval fails. */
GOLDEN_UNUSED static double golden_step_min(struct sl_context *ctx, const int32_t *prompt,
                                            int n, const float *ref, size_t V) {
    sl_context_reset(ctx);
    double mn = 2;
    for (int i = 0; i < n; i++) {
        if (sl_eval(ctx, &prompt[i], 1, NULL)) return -1;
        double c = golden_cosine(sl_logits(ctx), ref + (size_t)i * V, V);
        if (!(c >= mn)) mn = c;
    }
    return mn;
}

/* Names (under 64 bytes) of the subdirectories of d holding a config.json,
 * at most max, sorted; returns the count (0 if d cannot be opened). */
GOLDEN_UNUSED static int golden_list_fixtures(const char *d, char (*names)[64], int max) {
    DIR *dir = opendir(d);
    if (!dir) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(dir)) && n < max) {
        char p[1024];
        struct stat st;
        if (e->d_name[0] == '.' || strlen(e->d_name) >= 64) continue;
        snprintf(p, sizeof p, "%s/%s/config.json", d, e->d_name);
        if (stat(p, &st) == 0) {
            memcpy(names[n], e->d_name, strlen(e->d_name) + 1); /* < 64, checked */
            n++;
        }
    }
    closedir(dir);
    qsort(names, (size_t)n, 64, (int (*)(const void *, const void *))strcmp);
    return n;
}

#endif /* SLUICE_TESTS_GOLDEN_H */
