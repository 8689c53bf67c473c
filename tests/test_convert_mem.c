/*
 * test_convert_mem.c — sl_convert's peak memory does not grow with the size
 * of a dense tensor (src/convert.c streams dense tensors to the writer in
 * row blocks). A one-layer qwen3_moe checkpoint whose tied embedding is
 * EMB_MB of f32 (vocab V_BIG x hidden H) is written here, converted with
 * --dense f32 in a forked child, and the child's peak RSS (ru_maxrss from
 * wait4) must stay under RSS_BOUND_MB, well under the tensor itself; the
 * converted embedding is then checked row by row against the pattern it
 * was written with, and the file's section hashes are verified.
 *
 * What it is not: a speed test. The checkpoint (~410 MB) and the output
 * (~410 MB) live in a mkdtemp directory under /tmp, removed at exit.
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "format.h"
#include "sluice.h"
#include "test.h"
#include "util.h"

enum {
    V_BIG = 100000, /* vocab: the embedding is V_BIG x H f32 = 409.6 MB */
    H = 1024,
    NH = 2,
    NKV = 1,
    HD = 32,
    E = 2,
    F = 32, /* moe_intermediate_size */
    RSS_BOUND_MB = 150,
};

static char dir[64];

static void rm_dir(void) {
    if (!dir[0]) return;
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *de;
        char p[sizeof dir + 300];
        while ((de = readdir(d)))
            if (de->d_name[0] != '.') {
                snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
                unlink(p);
            }
        closedir(d);
    }
    rmdir(dir);
}

/* Element (r, c) of every tensor: k/128 for |k| <= 127, exact in f32. */
static float pattern(uint64_t r, uint64_t c) {
    return (float)((int)((r * 7 + c * 13) % 255) - 127) / 128.0f;
}

struct t {
    char name[96];
    int n_dims;
    uint64_t rows, cols; /* a 1-D tensor: rows = 1 */
};

static int specs(struct t *s) {
    int n = 0;
#define ADD(nm, nd, r, c) (snprintf(s[n].name, sizeof s[n].name, "%s", nm), \
                           s[n].n_dims = nd, s[n].rows = r, s[n].cols = c, n++)
    ADD("model.embed_tokens.weight", 2, V_BIG, H);
    ADD("model.layers.0.input_layernorm.weight", 1, 1, H);
    ADD("model.layers.0.post_attention_layernorm.weight", 1, 1, H);
    ADD("model.layers.0.self_attn.q_proj.weight", 2, NH * HD, H);
    ADD("model.layers.0.self_attn.k_proj.weight", 2, NKV * HD, H);
    ADD("model.layers.0.self_attn.v_proj.weight", 2, NKV * HD, H);
    ADD("model.layers.0.self_attn.o_proj.weight", 2, H, NH * HD);
    ADD("model.layers.0.self_attn.q_norm.weight", 1, 1, HD);
    ADD("model.layers.0.self_attn.k_norm.weight", 1, 1, HD);
    ADD("model.layers.0.mlp.gate.weight", 2, E, H);
    for (int e = 0; e < E; e++) {
        char b[96];
        snprintf(b, sizeof b, "model.layers.0.mlp.experts.%d.gate_proj.weight", e);
        ADD(b, 2, F, H);
        snprintf(b, sizeof b, "model.layers.0.mlp.experts.%d.up_proj.weight", e);
        ADD(b, 2, F, H);
        snprintf(b, sizeof b, "model.layers.0.mlp.experts.%d.down_proj.weight", e);
        ADD(b, 2, H, F);
    }
    ADD("model.norm.weight", 1, 1, H);
#undef ADD
    return n;
}

static int write_text(const char *name, const char *txt) {
    char p[256];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    if (!f) return -1;
    fputs(txt, f);
    return fclose(f);
}

/* The checkpoint: config.json and one F32 model.safetensors, written a row
 * at a time (this process never holds a tensor either). */
static int write_checkpoint(void) {
    char cfg[1024];
    snprintf(cfg, sizeof cfg,
             "{\"architectures\": [\"Qwen3MoeForCausalLM\"], \"model_type\": \"qwen3_moe\","
             " \"num_hidden_layers\": 1, \"hidden_size\": %d, \"num_attention_heads\": %d,"
             " \"num_key_value_heads\": %d, \"head_dim\": %d, \"vocab_size\": %d,"
             " \"max_position_embeddings\": 128, \"intermediate_size\": 64,"
             " \"moe_intermediate_size\": %d, \"num_experts\": %d, \"num_experts_per_tok\": 2,"
             " \"norm_topk_prob\": true, \"decoder_sparse_step\": 1, \"mlp_only_layers\": [],"
             " \"rms_norm_eps\": 1e-06, \"rope_theta\": 1000000.0, \"rope_scaling\": null,"
             " \"attention_bias\": false, \"tie_word_embeddings\": true,"
             " \"hidden_act\": \"silu\", \"use_sliding_window\": false,"
             " \"bos_token_id\": 1, \"eos_token_id\": 2, \"torch_dtype\": \"float32\"}",
             H, NH, NKV, HD, V_BIG, F, E);
    if (write_text("config.json", cfg) ||
        write_text("tokenizer.json", "{\"version\": \"1.0\", \"model\": {}}"))
        return -1;
    static struct t s[64];
    int n = specs(s);
    char *hdr = malloc(1 << 16);
    if (!hdr) return -1;
    size_t k = (size_t)snprintf(hdr, 1 << 16, "{\"__metadata__\":{\"format\":\"pt\"}");
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        uint64_t sz = s[i].rows * s[i].cols * 4;
        if (s[i].n_dims == 1)
            k += (size_t)snprintf(hdr + k, (1 << 16) - k, ",\"%s\":{\"dtype\":\"F32\","
                                  "\"shape\":[%llu]", s[i].name,
                                  (unsigned long long)s[i].cols);
        else
            k += (size_t)snprintf(hdr + k, (1 << 16) - k, ",\"%s\":{\"dtype\":\"F32\","
                                  "\"shape\":[%llu,%llu]", s[i].name,
                                  (unsigned long long)s[i].rows,
                                  (unsigned long long)s[i].cols);
        k += (size_t)snprintf(hdr + k, (1 << 16) - k, ",\"data_offsets\":[%llu,%llu]}",
                              (unsigned long long)off, (unsigned long long)(off + sz));
        off += sz;
    }
    k += (size_t)snprintf(hdr + k, (1 << 16) - k, "}");
    while (k % 8) hdr[k++] = ' ';
    char p[256];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    FILE *f = fopen(p, "wb");
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)k >> (8 * i));
    int ok = f && fwrite(len8, 1, 8, f) == 8 && fwrite(hdr, 1, k, f) == k;
    float row[H]; /* (H) >= every tensor's cols */
    for (int i = 0; ok && i < n; i++)
        for (uint64_t r = 0; ok && r < s[i].rows; r++) {
            for (uint64_t c = 0; c < s[i].cols; c++) row[c] = pattern(r, c);
            ok = fwrite(row, 4, s[i].cols, f) == s[i].cols;
        }
    if (f && fclose(f)) ok = 0;
    free(hdr);
    return ok ? 0 : -1;
}

TEST(test_dense_tensor_streamed) {
    strcpy(dir, "/tmp/sluice_cmem_XXXXXX");
    if (!mkdtemp(dir)) {
        dir[0] = 0;
        TEST_SKIP("mkdtemp failed");
    }
    atexit(rm_dir);
    if (write_checkpoint()) {
        CHECK_MSG(0, "cannot write the checkpoint in %s", dir);
        return;
    }
    char out[128];
    snprintf(out, sizeof out, "%s/out.sluice", dir);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        struct sl_convert_params p = sl_convert_default_params();
        p.dense_dtype = SL_DTYPE_F32;
        int rc = sl_convert(dir, out, &p);
        if (rc) fprintf(stderr, "sl_convert: %s\n", sl_errmsg());
        _exit(rc ? 1 : 0);
    }
    CHECK(pid > 0);
    if (pid <= 0) return;
    int status = 0;
    struct rusage ru;
    memset(&ru, 0, sizeof ru);
    CHECK_EQ_INT(wait4(pid, &status, 0, &ru), pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    double emb_mb = (double)V_BIG * H * 4 / 1e6, peak_mb = (double)ru.ru_maxrss * 1024 / 1e6;
    fprintf(stderr, "  convert of a %.1f MB f32 embedding: child peak RSS %.1f MB (bound %d)\n",
            emb_mb, peak_mb, RSS_BOUND_MB);
    CHECK_MSG(peak_mb < RSS_BOUND_MB, "peak RSS %.1f MB >= %d MB: a dense tensor of %.1f MB "
              "is held whole", peak_mb, RSS_BOUND_MB, emb_mb);

    /* the output: hashes verified, embedding rows as written */
    struct sl_file f;
    CHECK_EQ_INT(file_open(&f, out, 1), SL_OK);
    const struct sl_tensor_info *t = file_find_tensor(&f, "model.embed_tokens.weight");
    CHECK(t != NULL);
    int fd = open(out, O_RDONLY);
    if (t && fd >= 0) {
        CHECK_EQ_INT(t->dtype, SL_DTYPE_F32);
        CHECK_EQ_INT(t->size, (uint64_t)V_BIG * H * 4);
        static const uint64_t rows[] = {0, 1, 255, 256, 257, 12345, V_BIG - 1};
        float got[H], want[H];
        for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
            uint64_t r = rows[i];
            for (uint64_t c = 0; c < H; c++) want[c] = pattern(r, c);
            ssize_t n = pread(fd, got, sizeof got, (off_t)(t->offset + r * H * 4));
            CHECK_EQ_INT(n, (ssize_t)sizeof got);
            CHECK_MSG(memcmp(got, want, sizeof got) == 0, "embedding row %llu differs",
                      (unsigned long long)r);
        }
    }
    if (fd >= 0) close(fd);
    file_close(&f);
}

TEST_MAIN()
