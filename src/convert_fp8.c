/*
 * convert_fp8.c — FP8 block-scaled weights for the converter (see
 * convert_fp8.h). The F8_E4M3 decode itself is safetensors.c's
 * (st_f8e4m3_to_f32); here are the quantization_config checks, the pairing
 * of a weight with its scale tensor, and the block multiplication.
 */
#include "convert_fp8.h"

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "util.h"

int fp8_parse_quant_config(const cJSON *qc, uint32_t block[2]) {
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(qc, "fmt");
    if (fmt && !cJSON_IsNull(fmt) &&
        (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, "e4m3") != 0))
        return sl_seterr(SL_ERR_UNSUPPORTED, "quantization_config.fmt %s%.32s%s is "
                         "not supported (only \"e4m3\")", cJSON_IsString(fmt) ? "'" : "",
                         cJSON_IsString(fmt) ? fmt->valuestring : "(not a string)",
                         cJSON_IsString(fmt) ? "'" : "");
    const cJSON *bs = cJSON_GetObjectItemCaseSensitive(qc, "weight_block_size");
    if (!cJSON_IsArray(bs) || cJSON_GetArraySize(bs) != 2)
        return sl_seterr(SL_ERR_UNSUPPORTED, "quantization_config.weight_block_size "
                         "must be [rows, cols] (per-tensor FP8 scales are not supported)");
    for (int i = 0; i < 2; i++) {
        const cJSON *v = cJSON_GetArrayItem(bs, i);
        if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) ||
            v->valuedouble < 1 || v->valuedouble > 65536)
            return sl_seterr(SL_ERR_UNSUPPORTED, "quantization_config.weight_block_size"
                             "[%d] must be an integer in [1, 65536]", i);
        block[i] = (uint32_t)v->valuedouble;
    }
    return SL_OK;
}

int fp8_find_scale(const struct st_set *st, const struct st_tensor *w,
                   const uint32_t block[2], const struct st_tensor **scale) {
    char name[1024];
    *scale = NULL;
    if (w->n_dims != 2)
        return sl_seterr(SL_ERR_FORMAT, "tensor %s: F8_E4M3 with %d dimensions; only "
                         "2-D block-scaled FP8 weights are supported", w->name, w->n_dims);
    snprintf(name, sizeof name, "%s_scale_inv", w->name);
    const struct st_tensor *s = st_find(st, name);
    if (!s)
        return sl_seterr(SL_ERR_FORMAT, "tensor %s is F8_E4M3 but %s is missing",
                         w->name, name);
    uint64_t want0 = (w->dims[0] + block[0] - 1) / block[0];
    uint64_t want1 = (w->dims[1] + block[1] - 1) / block[1];
    if (s->n_dims != 2 || s->dims[0] != want0 || s->dims[1] != want1 ||
        (strcmp(s->dtype_name, "F32") != 0 && strcmp(s->dtype_name, "BF16") != 0))
        return sl_seterr(SL_ERR_FORMAT, "tensor %s: expected F32 [%llu, %llu] (blocks "
                         "of [%u, %u] over [%llu, %llu]), got %s with %d dims [%llu, %llu]",
                         name, (unsigned long long)want0, (unsigned long long)want1,
                         block[0], block[1], (unsigned long long)w->dims[0],
                         (unsigned long long)w->dims[1], s->dtype_name, s->n_dims,
                         (unsigned long long)s->dims[0],
                         (unsigned long long)(s->n_dims > 1 ? s->dims[1] : 0));
    *scale = s;
    return SL_OK;
}

int fp8_scale_rows(const struct st_set *st, const struct st_tensor *scale,
                   const uint32_t block[2], uint64_t row0, uint64_t n,
                   uint64_t cols, float *rows) {
    uint64_t nb = scale->dims[1];
    float *f = sl_malloc((size_t)nb * sizeof(float));
    if (!f) return sl_seterr(SL_ERR_NOMEM, "out of memory (FP8 scales)");
    uint64_t have = UINT64_MAX;
    int rc = SL_OK;
    for (uint64_t i = 0; i < n && !rc; i++) {
        uint64_t br = (row0 + i) / block[0];
        if (br != have && (rc = st_read_rows_f32(st, scale, br, 1, f))) break;
        have = br;
        float *row = rows + i * cols;
        for (uint64_t j = 0; j < cols; j++) row[j] *= f[j / block[1]];
    }
    sl_free(f);
    return rc;
}
