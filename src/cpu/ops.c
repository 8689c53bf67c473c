/*
 * ops.c — run-time dispatch and threading of the CPU ops (see ops.h).
 *
 * Picks a kernel set (ops_kern.h) once per process from cpuid and the
 * SLUICE_ISA override, prepares activations (int8 blocks for Q8/Q4 on the
 * SIMD paths), splits weight rows (matvec/matmul) or heads (attention)
 * evenly across the pool's threads and calls the kernels.
 *
 * Invariants: the only process-wide state is the CPU features and the ISA
 * decision, each written once under pthread_once and read-only afterwards. Row splits are contiguous
 * (each thread streams one slice of the matrix) and the result for a row
 * does not depend on which thread computed it.
 */
#include <pthread.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#include <stdlib.h>
#include <string.h>

#include "cpu/ops.h"
#include "cpu/ops_kern.h"
#include "quant.h"
#include "util.h"

static const struct ops_kernels kernels_scalar = {
    .name = "scalar",
    .rows = ops_ref_rows,
    .int8_act = 0,
    .dot = ops_ref_dot_f32,
    .axpy = ops_ref_axpy,
};

/* ---- ISA detection ---- */

/* CPU features from cpuid, with the OS's register-state support (xgetbv):
 * __builtin_cpu_supports lacks "f16c" on clang 14. */
struct cpu_feat {
    int avx2, avx512, vnni;
};

static struct cpu_feat cpu_detect(void) {
    struct cpu_feat f = {0, 0, 0};
#if defined(__x86_64__) || defined(__i386__)
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
    int fma = (c >> 12) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1,
        f16c = (c >> 29) & 1;
    if (!osxsave || !avx) return f;
    unsigned xlo, xhi;
    __asm__ volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
    (void)xhi;
    if ((xlo & 0x6) != 0x6) return f; /* XMM and YMM state enabled */
    if (__get_cpuid_max(0, NULL) < 7) return f;
    __cpuid_count(7, 0, a, b, c, d);
    f.avx2 = ((b >> 5) & 1) && fma && f16c;
    int avx512 = ((b >> 16) & 1) && ((b >> 17) & 1) && ((b >> 30) & 1) &&
                 ((b >> 31) & 1); /* F, DQ, BW, VL */
    f.avx512 = f.avx2 && avx512 && (xlo & 0xe0) == 0xe0; /* opmask, ZMM */
    f.vnni = f.avx512 && ((c >> 11) & 1);
#endif
    return f;
}

static pthread_once_t feat_once = PTHREAD_ONCE_INIT;
static struct cpu_feat feat;

static void feat_init(void) { feat = cpu_detect(); }

static int cpu_has_avx2(void) {
    pthread_once(&feat_once, feat_init);
    return feat.avx2;
}
static int cpu_has_avx512(void) {
    pthread_once(&feat_once, feat_init);
    return feat.avx512;
}
static int cpu_has_vnni(void) {
    pthread_once(&feat_once, feat_init);
    return feat.vnni;
}

int ops_isa_available(int isa) {
    switch (isa) {
    case SL_ISA_SCALAR: return 1;
    case SL_ISA_AVX2: return cpu_has_avx2();
    case SL_ISA_AVX512: return cpu_has_avx512();
    }
    return 0;
}

static pthread_once_t isa_once = PTHREAD_ONCE_INIT;
static int isa_chosen;

static void isa_decide(void) {
    int best = cpu_has_avx512() ? SL_ISA_AVX512
               : cpu_has_avx2() ? SL_ISA_AVX2
                                : SL_ISA_SCALAR;
    isa_chosen = best;
    const char *env = getenv("SLUICE_ISA");
    if (!env || !*env) return;
    int want = -1;
    if (!strcmp(env, "scalar")) want = SL_ISA_SCALAR;
    else if (!strcmp(env, "avx2")) want = SL_ISA_AVX2;
    else if (!strcmp(env, "avx512")) want = SL_ISA_AVX512;
    if (want < 0) {
        sl_log(SL_LOG_WARN, "SLUICE_ISA=%s is not scalar, avx2 or avx512; using %s",
               env, ops_isa_name(best));
    } else if (!ops_isa_available(want)) {
        sl_log(SL_LOG_WARN, "SLUICE_ISA=%s: this CPU lacks it; using %s", env,
               ops_isa_name(best));
    } else {
        isa_chosen = want;
    }
}

int ops_isa(void) {
    pthread_once(&isa_once, isa_decide);
    return isa_chosen;
}

const char *ops_isa_name(int isa) {
    switch (isa) {
    case SL_ISA_SCALAR: return "scalar";
    case SL_ISA_AVX2: return "avx2";
    case SL_ISA_AVX512: return cpu_has_vnni() ? "avx512-vnni" : "avx512";
    }
    return "?";
}

const struct ops_kernels *ops_kernels_get(int isa, int allow_vnni) {
    if (!ops_isa_available(isa)) return NULL;
    switch (isa) {
    case SL_ISA_SCALAR: return &kernels_scalar;
    case SL_ISA_AVX2: return &ops_kernels_avx2;
    case SL_ISA_AVX512:
        return allow_vnni && cpu_has_vnni() ? &ops_kernels_avx512_vnni
                                            : &ops_kernels_avx512;
    }
    return NULL;
}

/* ---- matvec / matmul ---- */

struct mm_job {
    const struct ops_kernels *k;
    int dtype;
    const uint8_t *w;
    uint64_t row_bytes;
    struct ops_act act;
    const float *X; /* (n, cols) for activation quantization */
    int8_t *q;      /* (n, cols) */
    float *d, *s, *t; /* (n, cols/32) */
    float *Y;
    int n, rows, cols;
};

/* Quantizes input i; with interleave, each group of 4 blocks is stored as
 * [q0..15 of blocks 0-3 | q16..31 of blocks 0-3] (ops_kern.h). */
static void quant_one(const struct mm_job *j, int i, int interleave) {
    int nb = j->cols / 32;
    const float *x = j->X + (size_t)i * j->cols;
    int8_t *q = j->q + (size_t)i * j->act.q_stride;
    float *d = j->d + (size_t)i * nb, *s = j->s + (size_t)i * nb,
          *t = j->t + (size_t)i * nb;
    if (!interleave) {
        ops_quantize_act(x, q, d, s, t, j->cols);
        return;
    }
    for (int b0 = 0; b0 < nb; b0 += 4) {
        int8_t tmp[128];
        int cnt = nb - b0 < 4 ? nb - b0 : 4;
        memset(tmp, 0, sizeof tmp);
        ops_quantize_act(x + 32 * b0, tmp, d + b0, s + b0, t + b0, 32 * cnt);
        int8_t *g = q + 32 * b0;
        for (int k = 0; k < 4; k++) {
            memcpy(g + 16 * k, tmp + 32 * k, 16);
            memcpy(g + 64 + 16 * k, tmp + 32 * k + 16, 16);
        }
    }
}

static void mm_quant_work(void *arg, int ith, int nth) {
    struct mm_job *j = arg;
    int il = j->k->q4_interleave && j->dtype == SL_DTYPE_Q4;
    for (int i = ith; i < j->n; i += nth) quant_one(j, i, il);
}

static void mm_work(void *arg, int ith, int nth) {
    struct mm_job *j = arg;
    int r0 = (int)((int64_t)j->rows * ith / nth);
    int r1 = (int)((int64_t)j->rows * (ith + 1) / nth);
    if (r0 < r1)
        j->k->rows(j->dtype, j->w, j->row_bytes, &j->act, j->Y, j->n, j->rows,
                   r0, r1, j->cols);
}

int ops_matmul_kern(const struct ops_kernels *k, struct sl_pool *pool,
                    int dtype, const void *w, const float *X, float *Y, int n,
                    int rows, int cols) {
    int st = ops_check_mat("matmul", dtype, n, rows, cols);
    if (st) return st;
    if (!pool) return sl_seterr(SL_ERR_ARG, "matmul: NULL thread pool");
    struct mm_job j = {
        .k = k, .dtype = dtype, .w = w,
        .row_bytes = quant_row_bytes(dtype, (uint64_t)cols),
        .act = {.f = X}, .X = X, .Y = Y, .n = n, .rows = rows, .cols = cols,
    };
    if (k->int8_act && (dtype == SL_DTYPE_Q8 || dtype == SL_DTYPE_Q4)) {
        int q_stride = (int)sl_align_up((uint64_t)cols, 128);
        size_t nq = (size_t)n * q_stride;
        size_t nbn = (size_t)n * (cols / 32);
        uint8_t *buf = pool_scratch(pool, nq + 3 * nbn * sizeof(float));
        if (!buf) return SL_ERR_NOMEM;
        j.q = (int8_t *)buf;
        j.d = (float *)(buf + nq);
        j.s = j.d + nbn;
        j.t = j.s + nbn;
        j.act.q_stride = q_stride;
        /* Quantizing one input costs ~1 us: not worth waking the pool. */
        if (n == 1) mm_quant_work(&j, 0, 1);
        else pool_run(pool, mm_quant_work, &j);
        j.act = (struct ops_act){.q = j.q, .q_stride = q_stride, .d = j.d,
                                 .s = j.s, .t = j.t};
    }
    pool_run(pool, mm_work, &j);
    return SL_OK;
}

int ops_matmul_isa(int isa, struct sl_pool *pool, int dtype, const void *w,
                   const float *X, float *Y, int n, int rows, int cols) {
    const struct ops_kernels *k = ops_kernels_get(isa, 1);
    if (!k)
        return sl_seterr(SL_ERR_UNSUPPORTED, "matmul: ISA %s not available on this CPU",
                         ops_isa_name(isa));
    return ops_matmul_kern(k, pool, dtype, w, X, Y, n, rows, cols);
}

int ops_matmul(struct sl_pool *pool, int dtype, const void *w, const float *X,
               float *Y, int n, int rows, int cols) {
    return ops_matmul_isa(ops_isa(), pool, dtype, w, X, Y, n, rows, cols);
}

int ops_matvec_isa(int isa, struct sl_pool *pool, int dtype, const void *w,
                   const float *x, float *y, int rows, int cols) {
    return ops_matmul_isa(isa, pool, dtype, w, x, y, 1, rows, cols);
}

int ops_matvec(struct sl_pool *pool, int dtype, const void *w, const float *x,
               float *y, int rows, int cols) {
    return ops_matmul_isa(ops_isa(), pool, dtype, w, x, y, 1, rows, cols);
}

/* ---- attention ---- */

struct att_job {
    const struct ops_kernels *k;
    float *out;
    const float *q, *kc, *vc;
    int n_q, p0, n_heads, group, head_dim;
    int64_t kv_stride;
    float scale;
    float *scratch; /* (n_heads, p0 + n_q) */
};

static void att_work(void *arg, int ith, int nth) {
    struct att_job *j = arg;
    int h0 = (int)((int64_t)j->n_heads * ith / nth);
    int h1 = (int)((int64_t)j->n_heads * (ith + 1) / nth);
    int hd = j->head_dim;
    for (int h = h0; h < h1; h++) {
        size_t koff = (size_t)(h / j->group) * hd;
        float *p = j->scratch + (size_t)h * (j->p0 + j->n_q);
        for (int i = 0; i < j->n_q; i++) {
            int n_pos = j->p0 + i + 1;
            const float *qh = j->q + ((size_t)i * j->n_heads + h) * hd;
            float *oh = j->out + ((size_t)i * j->n_heads + h) * hd;
            for (int t = 0; t < n_pos; t++)
                p[t] = j->scale *
                       j->k->dot(qh, j->kc + (size_t)t * j->kv_stride + koff, hd);
            ops_softmax(p, n_pos);
            memset(oh, 0, (size_t)hd * sizeof(float));
            for (int t = 0; t < n_pos; t++)
                j->k->axpy(oh, p[t], j->vc + (size_t)t * j->kv_stride + koff, hd);
        }
    }
}

static int attention_run(const struct ops_kernels *k, struct sl_pool *pool,
                         float *out, const float *q, const float *kc,
                         const float *vc, int n_q, int p0, int n_heads,
                         int n_kv_heads, int head_dim, int64_t kv_stride,
                         float scale, float *scratch) {
    if (n_q < 1 || p0 < 0 || (int64_t)p0 + n_q > 0x7fffffff)
        return sl_seterr(SL_ERR_ARG, "attention: bad query range (n_q %d, p0 %d)",
                         n_q, p0);
    int st = ops_check_attention(n_heads, n_kv_heads, head_dim, p0 + n_q,
                                 kv_stride, scratch);
    if (st) return st;
    struct att_job j = {
        .k = k, .out = out, .q = q, .kc = kc, .vc = vc, .n_q = n_q, .p0 = p0,
        .n_heads = n_heads, .group = n_heads / n_kv_heads, .head_dim = head_dim,
        .kv_stride = kv_stride, .scale = scale, .scratch = scratch,
    };
    pool_run(pool, att_work, &j);
    return SL_OK;
}

int ops_attention_isa(int isa, struct sl_pool *pool, float *out,
                      const float *q, const float *k, const float *v,
                      int n_heads, int n_kv_heads, int head_dim, int n_pos,
                      int64_t kv_stride, float scale, float *scratch) {
    const struct ops_kernels *kern = ops_kernels_get(isa, 1);
    if (!kern)
        return sl_seterr(SL_ERR_UNSUPPORTED, "attention: ISA %s not available",
                         ops_isa_name(isa));
    if (n_pos < 1)
        return sl_seterr(SL_ERR_ARG, "attention: n_pos = %d", n_pos);
    return attention_run(kern, pool, out, q, k, v, 1, n_pos - 1, n_heads,
                         n_kv_heads, head_dim, kv_stride, scale, scratch);
}

int ops_attention(struct sl_pool *pool, float *out, const float *q,
                  const float *k, const float *v, int n_heads, int n_kv_heads,
                  int head_dim, int n_pos, int64_t kv_stride, float scale,
                  float *scratch) {
    return ops_attention_isa(ops_isa(), pool, out, q, k, v, n_heads, n_kv_heads,
                             head_dim, n_pos, kv_stride, scale, scratch);
}

int ops_attention_causal(struct sl_pool *pool, float *out, const float *q,
                         const float *k, const float *v, int n_q, int p0,
                         int n_heads, int n_kv_heads, int head_dim,
                         int64_t kv_stride, float scale, float *scratch) {
    return attention_run(ops_kernels_get(ops_isa(), 1), pool, out, q, k, v, n_q,
                         p0, n_heads, n_kv_heads, head_dim, kv_stride, scale,
                         scratch);
}
