/*
 * expert_store.c — expert residency (see expert_store.h). This version maps
 * records from the file; nothing is copied, and the kernel's page cache
 * decides what stays in RAM.
 */
#include "expert_store.h"

#include "util.h"

struct expert_store {
    const struct sl_file *file;
    /* Per model layer: its expert table entry, NULL for dense layers.
     * Indexed by layer number; n_layer_slots = max layer + 1. */
    const struct sl_expert_layer **by_layer;
    uint32_t n_layer_slots;
};

int expert_store_create(const struct sl_file *file, struct expert_store **out) {
    *out = NULL;
    struct expert_store *s = sl_calloc(1, sizeof *s);
    if (!s) return sl_seterr(SL_ERR_NOMEM, "expert store: out of memory");
    s->file = file;
    uint32_t n = 0;
    for (uint32_t i = 0; i < file->n_expert_layers; i++)
        if (file->expert_layers[i].layer + 1 > n)
            n = file->expert_layers[i].layer + 1;
    s->n_layer_slots = n;
    s->by_layer = sl_calloc(n ? n : 1, sizeof *s->by_layer);
    if (!s->by_layer) {
        sl_free(s);
        return sl_seterr(SL_ERR_NOMEM, "expert store: out of memory");
    }
    for (uint32_t i = 0; i < file->n_expert_layers; i++)
        s->by_layer[file->expert_layers[i].layer] = &file->expert_layers[i];
    *out = s;
    return SL_OK;
}

void expert_store_free(struct expert_store *s) {
    if (!s) return;
    sl_free(s->by_layer);
    sl_free(s);
}

int expert_store_acquire(struct expert_store *s, uint32_t layer,
                         uint32_t expert, struct expert_view *view) {
    const struct sl_expert_layer *el =
        layer < s->n_layer_slots ? s->by_layer[layer] : NULL;
    if (!el)
        return sl_seterr(SL_ERR_RANGE, "layer %u has no routed experts", layer);
    if (expert >= el->n_experts)
        return sl_seterr(SL_ERR_RANGE, "expert %u out of range (layer %u has %u)",
                         expert, layer, el->n_experts);
    const uint8_t *rec = s->file->map + el->offsets[expert];
    view->gate = rec + el->part[0].offset;
    view->up = rec + el->part[1].offset;
    view->down = rec + el->part[2].offset;
    for (int i = 0; i < 3; i++) view->dtype[i] = el->part[i].dtype;
    view->bytes = el->record_size;
    return SL_OK;
}

void expert_store_release(struct expert_store *s, uint32_t layer,
                          uint32_t expert) {
    (void)s;
    (void)layer;
    (void)expert;
}
