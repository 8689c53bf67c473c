/*
 * gpu_miss.c — the per-miss choice of the GPU expert cache (upload or
 * compute on the CPU) and the CPU expert. Contracts in gpu_miss.h; design
 * in docs/cuda.md.
 */
#include "gpu_miss.h"

#include "cpu/ops.h"
#include "util.h"

void gpu_miss_decide(struct gpu_miss_model *mm, int policy, int n_tok,
                     const uint64_t *bytes, const int32_t *tokens,
                     const uint8_t *in_ram, int n, double h2d_bps,
                     uint8_t *cpu) {
    if (policy == SL_GPU_MISS_CPU || policy == SL_GPU_MISS_UPLOAD) {
        for (int i = 0; i < n; i++) cpu[i] = policy == SL_GPU_MISS_CPU;
        return;
    }
    double t_up = 0, t_cpu = 0; /* the two queues' finish times, seconds */
    int probed = 0;
    for (int i = 0; i < n; i++) {
        double up = h2d_bps > 0 ? (double)bytes[i] / h2d_bps : 0;
        double c = mm->cpu_spb * (double)bytes[i] * (double)tokens[i];
        int on_cpu;
        if (n_tok > GPU_MISS_CPU_MAX_TOKENS || !in_ram[i]) on_cpu = 0;
        else if (mm->cpu_spb <= 0) on_cpu = !probed; /* measure the CPU once */
        else if (h2d_bps <= 0) on_cpu = 0;          /* measure the copies */
        else if (mm->since_cpu >= GPU_MISS_REPROBE) on_cpu = 1;
        else if (mm->since_up >= GPU_MISS_REPROBE) on_cpu = 0;
        else on_cpu = t_cpu + c < t_up + up;
        if (on_cpu && mm->cpu_spb <= 0) probed = 1;
        cpu[i] = (uint8_t)on_cpu;
        if (on_cpu) {
            t_cpu += c;
            mm->since_cpu = 0;
            mm->since_up++;
        } else {
            t_up += up;
            mm->since_up = 0;
            mm->since_cpu++;
        }
    }
}

void gpu_miss_note_cpu(struct gpu_miss_model *mm, double seconds, uint64_t bytes,
                       int tokens) {
    if (bytes == 0 || tokens < 1 || !(seconds > 0)) return;
    double spb = seconds / ((double)bytes * (double)tokens);
    mm->cpu_spb = mm->cpu_spb > 0 ? 0.75 * mm->cpu_spb + 0.25 * spb : spb;
}

int gpu_miss_expert_cpu(struct sl_pool *pool, const struct expert_view *v,
                        int hidden, int ffn, const float *X, float *out,
                        int m, float *hb, float *hb2) {
    int st;
    if (m == 1) {
        if ((st = ops_matvec(pool, v->dtype[0], v->gate, X, hb, ffn, hidden)) ||
            (st = ops_matvec(pool, v->dtype[1], v->up, X, hb2, ffn, hidden)))
            return st;
        ops_swiglu(hb, hb, hb2, ffn);
        return ops_matvec(pool, v->dtype[2], v->down, hb, out, hidden, ffn);
    }
    if ((st = ops_matmul(pool, v->dtype[0], v->gate, X, hb, m, ffn, hidden)) ||
        (st = ops_matmul(pool, v->dtype[1], v->up, X, hb2, m, ffn, hidden)))
        return st;
    ops_swiglu(hb, hb, hb2, m * ffn);
    return ops_matmul(pool, v->dtype[2], v->down, hb, out, m, hidden, ffn);
}
