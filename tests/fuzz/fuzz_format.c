/*
 * fuzz_format.c — libFuzzer target for the .sluice reader (file_open).
 * Build (from the repository root; `make fuzz` will do this):
 *   clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude -Isrc tests/fuzz/fuzz_format.c src/format.c src/format_write.c src/quant.c src/util.c -lm -o build/fuzz_format && mkdir -p build/fuzz_corpus && build/fuzz_format -max_total_time=30 build/fuzz_corpus tests/fuzz/corpus/format
 *
 * Each input is written to a memfd and opened through /proc/self/fd/N, the
 * way a real file is (open, fstat, mmap). The low bit of the first byte
 * picks a mode: odd inputs are first "resealed" (every hash and the file
 * size recomputed, tests/fuzz/format_reseal.h) so that mutations reach the
 * structural checks behind the hashes; the next bit picks verify. On
 * success, every range the reader exposes must lie inside the file (the
 * reader's contract) — a violation aborts, which libFuzzer reports.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "format.h"
#include "format_reseal.h"

static void must(int c, const char *what) {
    if (!c) {
        fprintf(stderr, "fuzz_format: contract violated: %s\n", what);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        fd = memfd_create("fuzz_format", MFD_CLOEXEC);
        if (fd < 0) return 0;
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    uint8_t *b = malloc(size ? size : 1);
    if (!b) return 0;
    if (size) memcpy(b, data, size);
    int mode = size ? data[0] : 0;
    /* the mode byte lives inside the magic: restore it so that resealed
     * inputs are not all rejected as "bad magic" */
    if (size) b[0] = 'S';
    if (mode & 1) format_reseal(b, size, 1);
    if (ftruncate(fd, 0) != 0 || pwrite(fd, b, size, 0) != (ssize_t)size) {
        free(b);
        return 0;
    }
    free(b);
    struct sl_file f;
    if (file_open(&f, path, (mode >> 1) & 1) == SL_OK) {
        for (uint32_t i = 0; i < f.n_tensors; i++) {
            const struct sl_tensor_info *t = &f.tensors[i];
            must(t->offset <= f.size && t->size <= f.size - t->offset, "tensor inside file");
            must(file_find_tensor(&f, t->name) == t, "tensor lookup");
            volatile uint8_t last = f.map[t->offset + t->size - 1];
            (void)last;
        }
        for (uint32_t i = 0; i < f.n_expert_layers; i++) {
            const struct sl_expert_layer *l = &f.expert_layers[i];
            must(file_expert_layer(&f, l->layer) == l, "layer lookup");
            for (uint32_t e = 0; e < l->n_experts; e++)
                must(l->offsets[e] <= f.size && l->record_size <= f.size - l->offsets[e],
                     "record inside file");
        }
        must(f.manifest_len <= f.size && (const uint8_t *)f.manifest >= f.map,
             "manifest inside file");
    }
    file_close(&f);
    return 0;
}
