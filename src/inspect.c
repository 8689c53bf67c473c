/*
 * inspect.c — sl_model_inspect: a human-readable dump of a .sluice file
 * (manifest, tokenizer, tensor table, expert table) for `sluice inspect`.
 * Reads through the validating reader, so a corrupt file gets the same
 * error as sl_model_open; the architecture is not bound here, so a file
 * whose tensors do not match its manifest can still be looked at.
 */
#include <stdio.h>

#include "format.h"
#include "quant.h"
#include "util.h"

static void print_shape(FILE *f, const uint64_t *dims, int n) {
    fputc('[', f);
    for (int i = 0; i < n; i++)
        fprintf(f, "%s%llu", i ? ", " : "", (unsigned long long)dims[i]);
    fputc(']', f);
}

int sl_model_inspect(const char *path, void *stream) {
    FILE *out = stream;
    struct sl_file file = {0};
    file.fd = -1;
    int st = file_open(&file, path, 0);
    if (st) return sl_preerr(st, "%s: ", path);
    fprintf(out, "file: %s\n", path);
    fprintf(out, "format version: %u, %llu bytes\n", file.version,
            (unsigned long long)file.size);
    fprintf(out, "dense: %u tensors, %.2f MiB\n", file.n_tensors,
            (double)file.dense_bytes / (1 << 20));
    fprintf(out, "experts: %u MoE layers, %.2f MiB\n", file.n_expert_layers,
            (double)file.expert_bytes / (1 << 20));
    fprintf(out, "tokenizer: %s (%zu bytes)\n", file.tokenizer ? "embedded" : "none",
            file.tokenizer_len);
    fprintf(out, "manifest: %.*s\n", (int)file.manifest_len, file.manifest);
    if (file.tokenizer_config)
        fprintf(out, "tokenizer config: %.*s\n",
                (int)(file.tokenizer_config_len > 2000 ? 2000 : file.tokenizer_config_len),
                file.tokenizer_config);
    fprintf(out, "tensors:\n");
    for (uint32_t i = 0; i < file.n_tensors; i++) {
        const struct sl_tensor_info *t = &file.tensors[i];
        fprintf(out, "  %-56s %-5s ", t->name, sl_dtype_name(t->dtype));
        print_shape(out, t->dims, t->n_dims);
        fprintf(out, " @%llu +%llu\n", (unsigned long long)t->offset,
                (unsigned long long)t->size);
    }
    fprintf(out, "expert layers:\n");
    static const char *parts[3] = {"gate", "up", "down"};
    for (uint32_t i = 0; i < file.n_expert_layers; i++) {
        const struct sl_expert_layer *el = &file.expert_layers[i];
        fprintf(out, "  layer %u: %u experts x %llu bytes at @%llu..", el->layer,
                el->n_experts, (unsigned long long)el->record_size,
                (unsigned long long)(el->n_experts ? el->offsets[0] : 0));
        for (int p = 0; p < 3; p++)
            fprintf(out, " %s %s [%llu, %llu]", parts[p], sl_dtype_name(el->part[p].dtype),
                    (unsigned long long)el->part[p].rows,
                    (unsigned long long)el->part[p].cols);
        fputc('\n', out);
    }
    file_close(&file);
    return SL_OK;
}
