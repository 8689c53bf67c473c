/*
 * nccl_cuda.cu — expert parallelism over NCCL: bootstrap, placement, the
 * per-MoE-layer all-reduce and the waits with a timeout. Contracts in
 * nccl_cuda.cuh; design in docs/multi_gpu.md.
 *
 * NCCL is reached through dlopen("libnccl.so.2") (or $SLUICE_NCCL_LIB) at
 * the first multi-rank open, with the types of the nccl.h found at build
 * time (SLUICE_NCCL): no binary depends on the library, and a machine
 * without it fails only a multi-GPU open, with a hint.
 * Not here: the expert kernels (they read nccl_ep_zero for experts owned
 * elsewhere, through the GPU cache: expert_cache_cuda.cu), the placement
 * itself (src/placement.c).
 */
#include <dlfcn.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cuda/internal.cuh"
#include "cuda/nccl.h"
#include "cuda/nccl_cuda.cuh"

int nccl_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return n;
}

uint32_t nccl_ep_layer_owned(const struct nccl_ep *ep, uint32_t l, uint32_t n) {
    return ep ? placement_owned(&ep->pl, ep->rank, l) : n;
}

const uint8_t *nccl_ep_zero(const struct nccl_ep *ep) { return ep ? ep->zero : NULL; }

int nccl_ep_filter(const struct nccl_ep *ep, uint32_t l, int32_t *ids, int n) {
    if (!ep) return n;
    int m = 0;
    for (int i = 0; i < n; i++)
        if (nccl_ep_owns(ep, l, ids[i])) ids[m++] = ids[i];
    return m;
}

void nccl_ep_stats(const struct nccl_ep *ep, struct sl_stats *out) {
    if (!ep) return;
    out->nccl_allreduces = ep->n_allreduce;
    out->nccl_bytes = ep->bytes;
    out->nccl_seconds = ep->seconds;
    out->nccl_timed = ep->n_timed;
}

#ifndef SLUICE_NCCL /* ---- built without nccl.h ---------------------------- */

int nccl_check(char *why, size_t why_len) {
    if (why && why_len) snprintf(why, why_len, "built without NCCL (no nccl.h, or NO_NCCL=1)");
    return SL_ERR_UNSUPPORTED;
}

int nccl_ep_create(struct cuda_model *cm) {
    cm->ep = NULL;
    if (cm->m->params.nccl_world <= 1) return SL_OK;
    return sl_seterr(SL_ERR_UNSUPPORTED, "--nccl-world %d: this sluice was built without NCCL "
                     "(HINT: rebuild with nccl.h in the CUDA toolkit or /usr/local/include, "
                     "without NO_NCCL=1)", cm->m->params.nccl_world);
}
void nccl_ep_free(struct nccl_ep *ep) { (void)ep; }
int nccl_ep_moe_begin(struct cuda_model *cm, struct cuda_ctx *cc, int n) { return SL_OK; }
int nccl_ep_moe_end(struct cuda_model *cm, struct cuda_ctx *cc, uint32_t l, int n) {
    return SL_OK;
}
int nccl_ep_wait(struct cuda_model *cm, cudaStream_t s, int graph_step) {
    cudaError_t e = cudaStreamSynchronize(s);
    return e == cudaSuccess ? (int)SL_OK : cuda_fail(e, "the forward pass");
}

#else /* ---- with NCCL ------------------------------------------------------ */

#include <nccl.h>

/* The NCCL entry points, resolved once. */
static struct {
    int state; /* 0 not tried, 1 loaded, -1 failed */
    char err[512];
    ncclResult_t (*get_unique_id)(ncclUniqueId *);
    ncclResult_t (*init_rank_config)(ncclComm_t *, int, ncclUniqueId, int, ncclConfig_t *);
    ncclResult_t (*async_error)(ncclComm_t, ncclResult_t *);
    ncclResult_t (*all_reduce)(const void *, void *, size_t, ncclDataType_t, ncclRedOp_t,
                               ncclComm_t, cudaStream_t);
    ncclResult_t (*abort)(ncclComm_t);
    ncclResult_t (*finalize)(ncclComm_t);
    ncclResult_t (*destroy)(ncclComm_t);
    const char *(*error_string)(ncclResult_t);
    const char *(*last_error)(ncclComm_t);
    ncclResult_t (*get_version)(int *);
    int version;
} nc;
static pthread_mutex_t nc_mu = PTHREAD_MUTEX_INITIALIZER;

static int nccl_load(void) {
    pthread_mutex_lock(&nc_mu);
    if (nc.state == 0) {
        const char *env = getenv("SLUICE_NCCL_LIB");
        const char *names[] = {env && *env ? env : "libnccl.so.2", "libnccl.so"};
        void *h = NULL;
        char why[256] = "";
        for (int i = 0; i < 2 && !h; i++) {
            h = dlopen(names[i], RTLD_NOW | RTLD_GLOBAL);
            if (!h && i == 0) snprintf(why, sizeof why, "%s", dlerror());
        }
        struct {
            void **fn;
            const char *name;
        } sym[] = {{(void **)&nc.get_unique_id, "ncclGetUniqueId"},
                   {(void **)&nc.init_rank_config, "ncclCommInitRankConfig"},
                   {(void **)&nc.async_error, "ncclCommGetAsyncError"},
                   {(void **)&nc.all_reduce, "ncclAllReduce"},
                   {(void **)&nc.abort, "ncclCommAbort"},
                   {(void **)&nc.finalize, "ncclCommFinalize"},
                   {(void **)&nc.destroy, "ncclCommDestroy"},
                   {(void **)&nc.error_string, "ncclGetErrorString"},
                   {(void **)&nc.last_error, "ncclGetLastError"},
                   {(void **)&nc.get_version, "ncclGetVersion"}};
        nc.state = h ? 1 : -1;
        if (!h)
            snprintf(nc.err, sizeof nc.err, "cannot load NCCL (%s): %s; HINT: set "
                     "LD_LIBRARY_PATH to the directory holding libnccl.so.2 (e.g. python3 -c "
                     "\"import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__file__) + "
                     "'/lib')\") or SLUICE_NCCL_LIB to the library", names[0], why);
        for (size_t i = 0; h && i < sizeof sym / sizeof *sym; i++) {
            *sym[i].fn = dlsym(h, sym[i].name);
            if (!*sym[i].fn) {
                nc.state = -1;
                snprintf(nc.err, sizeof nc.err, "the NCCL library has no %s (NCCL >= 2.14 "
                         "needed: non-blocking communicators)", sym[i].name);
            }
        }
        if (nc.state > 0 && nc.get_version(&nc.version) == ncclSuccess && nc.version < 21400) {
            nc.state = -1;
            snprintf(nc.err, sizeof nc.err, "NCCL %d is too old (2.14 or newer needed: "
                     "non-blocking communicators)", nc.version);
        }
    }
    int st = nc.state > 0 ? (int)SL_OK : sl_seterr(SL_ERR_UNSUPPORTED, "%s", nc.err);
    pthread_mutex_unlock(&nc_mu);
    return st;
}

int nccl_check(char *why, size_t why_len) {
    int st = nccl_load();
    if (st && why && why_len) snprintf(why, why_len, "%s", sl_errmsg());
    if (!st && why && why_len) snprintf(why, why_len, "NCCL %d", nc.version);
    return st;
}

static ncclComm_t comm_of(const struct nccl_ep *ep) { return (ncclComm_t)ep->comm; }

/* Aborts the communicator after a failure and keeps the message for every
 * later call. Returns status with the message set. */
static int ep_fail(struct nccl_ep *ep, int status, const char *msg) {
    snprintf(ep->dead_msg, sizeof ep->dead_msg, "%s", msg);
    if (ep->comm) nc.abort(comm_of(ep)); /* ends its kernels on this GPU */
    ep->comm = NULL;
    ep->dead = 1;
    return sl_seterr(status, "%s", ep->dead_msg);
}

static int ep_nccl_fail(struct nccl_ep *ep, ncclResult_t r, const char *what) {
    char msg[400];
    const char *last = ep->comm ? nc.last_error(comm_of(ep)) : NULL;
    snprintf(msg, sizeof msg, "rank %d of %d: NCCL error in %s: %s%s%s", ep->rank, ep->world,
             what, nc.error_string(r), last && *last ? ": " : "", last ? last : "");
    return ep_fail(ep, SL_ERR_IO, msg);
}

static void ep_pause(int spin) {
    if (spin < 2000) sched_yield();
    else usleep(50);
}

/* Polls the communicator until a non-blocking call has completed. */
static int ep_settle(struct nccl_ep *ep, ncclResult_t r, const char *what) {
    double t0 = sl_now();
    for (int spin = 0; r == ncclInProgress; spin++) {
        if (sl_now() - t0 > ep->timeout_s) {
            char msg[400];
            snprintf(msg, sizeof msg, "rank %d of %d: %s did not complete within %.0f s "
                     "(another rank stopped responding or never joined)", ep->rank, ep->world,
                     what, ep->timeout_s);
            return ep_fail(ep, SL_ERR_IO, msg);
        }
        ep_pause(spin);
        ncclResult_t q = nc.async_error(comm_of(ep), &r);
        if (q != ncclSuccess) r = q;
    }
    return r == ncclSuccess ? (int)SL_OK : ep_nccl_fail(ep, r, what);
}

/* The first layer whose all-reduce was enqueued this step and has not
 * completed (-1: none known). */
static int first_pending(const struct nccl_ep *ep) {
    for (uint32_t l = 0; l < ep->n_layers; l++)
        if (ep->recorded[l] && cudaEventQuery(ep->ev_t1[l]) == cudaErrorNotReady) return (int)l;
    return -1;
}

/* Adds the timed pairs of the step (all complete) and forgets them. */
static void harvest(struct nccl_ep *ep) {
    for (uint32_t l = 0; l < ep->n_layers; l++) {
        if (!ep->recorded[l]) continue;
        float ms = 0;
        if (ep->timing && ep->recorded[l] == 1 && /* decode (one row) all-reduces only */
            cudaEventElapsedTime(&ms, ep->ev_t0[l], ep->ev_t1[l]) == cudaSuccess) {
            ep->seconds += ms / 1e3;
            ep->n_timed++;
        }
        ep->recorded[l] = 0;
    }
    cudaGetLastError();
}

static int ep_wait_stream(struct nccl_ep *ep, cudaStream_t s, const char *what) {
    double t_last = sl_now();
    int prog = first_pending(ep);
    for (int spin = 0;; spin++) {
        cudaError_t e = cudaStreamQuery(s);
        if (e == cudaSuccess) break;
        if (e != cudaErrorNotReady) return cuda_fail(e, what);
        ncclResult_t ae = ncclSuccess;
        if (nc.async_error(comm_of(ep), &ae) == ncclSuccess && ae != ncclSuccess &&
            ae != ncclInProgress)
            return ep_nccl_fail(ep, ae, what);
        int p = first_pending(ep);
        double now = sl_now();
        if (p != prog) {
            prog = p;
            t_last = now;
        }
        if (now - t_last > ep->timeout_s) {
            char who[64], where[96], msg[400];
            if (ep->world == 2) snprintf(who, sizeof who, "rank %d", 1 - ep->rank);
            else snprintf(who, sizeof who, "another rank");
            if (p >= 0) snprintf(where, sizeof where, "layer %d's all-reduce", p);
            else snprintf(where, sizeof where, "%s (a decode graph's all-reduces)", what);
            snprintf(msg, sizeof msg, "rank %d of %d: %s stopped responding in %s (no progress "
                     "for %.0f s); the NCCL communicator is aborted: reopen the model on every "
                     "rank", ep->rank, ep->world, who, where, ep->timeout_s);
            return ep_fail(ep, SL_ERR_IO, msg);
        }
        ep_pause(spin);
    }
    harvest(ep);
    return SL_OK;
}

int nccl_ep_wait(struct cuda_model *cm, cudaStream_t s, int graph_step) {
    struct nccl_ep *ep = cm->ep;
    if (!ep) {
        cudaError_t e = cudaStreamSynchronize(s);
        return e == cudaSuccess ? (int)SL_OK : cuda_fail(e, "the forward pass");
    }
    if (ep->dead) { /* aborted: the stream holds no live collective */
        cudaStreamSynchronize(s);
        return sl_seterr(SL_ERR_IO, "%s", ep->dead_msg);
    }
    if (graph_step) {
        ep->n_allreduce += ep->n_moe;
        ep->bytes += (uint64_t)ep->n_moe * ep->hidden * 4;
    }
    return ep_wait_stream(ep, s, "the forward pass");
}

int nccl_ep_moe_begin(struct cuda_model *cm, struct cuda_ctx *cc, int n) {
    struct nccl_ep *ep = cm->ep;
    if (!ep) return SL_OK;
    if (ep->dead) return sl_seterr(SL_ERR_IO, "%s", ep->dead_msg);
    if (ep->rank == 0) return SL_OK; /* keeps the residual */
    CU_TRY(cudaMemsetAsync(cc->x, 0, (size_t)n * ep->hidden * sizeof(float), cc->stream));
    return SL_OK;
}

int nccl_ep_moe_end(struct cuda_model *cm, struct cuda_ctx *cc, uint32_t l, int n) {
    struct nccl_ep *ep = cm->ep;
    if (!ep) return SL_OK;
    if (ep->dead) return sl_seterr(SL_ERR_IO, "%s", ep->dead_msg);
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    CU_TRY(cudaStreamIsCapturing(cc->stream, &cs));
    int eager = cs == cudaStreamCaptureStatusNone;
    size_t count = (size_t)n * ep->hidden;
    if (eager) CU_TRY(cudaEventRecord(ep->ev_t0[l], cc->stream));
    ncclResult_t r = nc.all_reduce(cc->x, cc->x, count, ncclFloat32, ncclSum, comm_of(ep),
                                   cc->stream);
    char what[64];
    snprintf(what, sizeof what, "layer %u's all-reduce", l);
    int st = ep_settle(ep, r, what);
    if (st) return st;
    if (!eager) return SL_OK; /* counted per replay (nccl_ep_wait) */
    CU_TRY(cudaEventRecord(ep->ev_t1[l], cc->stream));
    ep->recorded[l] = n == 1 ? 1 : 2; /* 1: a decode step's, timed (harvest) */
    ep->n_allreduce++;
    ep->bytes += count * sizeof(float);
    if (cm->gc.all_resident) return SL_OK; /* waited for at the end of the step */
    return ep_wait_stream(ep, cc->stream, what);
}

/* What the expert-parallel path cannot run: its name, or NULL. */
static const char *ep_unsupported(const struct sl_model *m) {
    const struct sl_config *c = &m->cfg;
    if (config_is_hybrid(c)) return "hybrid layers (a shared expert would be summed per rank)";
    if (c->kv_lora_rank || c->arch == SL_ARCH_DEEPSEEK_V3)
        return "deepseek_v3 (shared experts would be summed per rank)";
    if (c->expert_bias) return "expert biases (gpt_oss)";
    if (c->n_experts == 0) return "a model without routed experts";
    return NULL;
}

/* Joins the communicator through the id file. */
static int ep_bootstrap(struct nccl_ep *ep, const char *id_path) {
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    int st;
    if (ep->rank == 0) {
        ncclResult_t r = nc.get_unique_id(&id);
        if (r != ncclSuccess) return ep_nccl_fail(ep, r, "ncclGetUniqueId");
        if ((st = nccl_id_write(id_path, &id, sizeof id, ep->world))) return st;
    } else if ((st = nccl_id_read(id_path, &id, sizeof id, ep->world, ep->timeout_s))) {
        return sl_preerr(st, "rank %d of %d: ", ep->rank, ep->world);
    }
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0; /* every wait below has a timeout */
    ncclComm_t comm = NULL;
    ncclResult_t r = nc.init_rank_config(&comm, ep->world, id, ep->rank, &cfg);
    ep->comm = comm;
    if (r != ncclSuccess && r != ncclInProgress) return ep_nccl_fail(ep, r, "ncclCommInitRank");
    char what[200];
    snprintf(what, sizeof what, "the NCCL bootstrap (--nccl-id %s)", id_path);
    if ((st = ep_settle(ep, r, what))) return st;
    if (ep->rank == 0) unlink(id_path); /* every rank has read it: no stale file is left */
    return SL_OK;
}

/* Every rank must run the same model with the same placement: the min and
 * max over ranks of a digest must equal this rank's. */
static int ep_check_same(struct nccl_ep *ep, uint64_t digest) {
    uint64_t h[2] = {digest, digest}, *d = NULL;
    cudaStream_t s = NULL;
    int st = SL_OK;
    CU_TRY(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    cudaError_t e = cudaMalloc(&d, sizeof h);
    if (e == cudaSuccess) e = cudaMemcpy(d, h, sizeof h, cudaMemcpyHostToDevice);
    if (e != cudaSuccess) st = cuda_fail(e, "the placement check");
    if (!st) st = ep_settle(ep, nc.all_reduce(d, d, 1, ncclUint64, ncclMin, comm_of(ep), s),
                            "the placement check");
    if (!st) st = ep_settle(ep, nc.all_reduce(d + 1, d + 1, 1, ncclUint64, ncclMax, comm_of(ep),
                                              s), "the placement check");
    if (!st) st = ep_wait_stream(ep, s, "the placement check");
    if (!st && (e = cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost)) != cudaSuccess)
        st = cuda_fail(e, "the placement check");
    if (!st && (h[0] != digest || h[1] != digest))
        st = sl_seterr(SL_ERR_ARG, "rank %d of %d: the ranks opened different models or built "
                       "different expert placements (different --expert-profile files?): every "
                       "rank must open the same model with the same profile", ep->rank,
                       ep->world);
    if (d) cudaFree(d);
    cudaStreamDestroy(s);
    return st;
}

int nccl_ep_create(struct cuda_model *cm) {
    cm->ep = NULL;
    struct sl_model *m = cm->m;
    const struct sl_model_params *p = &m->params;
    const struct sl_config *c = &m->cfg;
    if (p->nccl_world <= 1) return SL_OK;
    const char *what = ep_unsupported(m);
    if (what)
        return sl_seterr(SL_ERR_UNSUPPORTED, "multi-GPU expert parallelism does not run %s yet "
                         "(model %s); HINT: one GPU (no --nccl-world)", what, c->model_type);
    if ((uint32_t)p->nccl_world > c->n_experts)
        return sl_seterr(SL_ERR_UNSUPPORTED, "--nccl-world %d: more ranks than the model's %u "
                         "experts per layer", p->nccl_world, c->n_experts);
    int st = nccl_load();
    if (st) return st;
    struct nccl_ep *ep = (struct nccl_ep *)sl_calloc(1, sizeof *ep);
    if (!ep) return sl_seterr(SL_ERR_NOMEM, "out of memory");
    ep->rank = p->nccl_rank;
    ep->world = p->nccl_world;
    ep->timeout_s = p->nccl_timeout_s > 0 ? p->nccl_timeout_s : 60.0;
    ep->n_layers = c->n_layers;
    ep->n_experts = c->n_experts;
    ep->hidden = c->hidden;
    ep->timing = cuda_tune("SLUICE_NCCL_TIMING", 1);
    uint64_t sb = 0;
    for (uint32_t l = 0; l < c->n_layers; l++) {
        ep->n_moe += c->layer_is_moe[l] ? 1 : 0;
        const struct sl_expert_layer *el = file_expert_layer(&m->file, l);
        if (el && el->part[2].offset + el->part[2].size > sb)
            sb = el->part[2].offset + el->part[2].size;
    }
    uint64_t *counts = NULL;
    const char *prof = p->expert_profile;
    if (prof && access(prof, R_OK) == 0) {
        if ((st = placement_load_profile(prof, c->n_layers, c->n_experts, &counts))) goto fail;
    } else if (prof) {
        sl_log(SL_LOG_INFO, "nccl: no expert profile at %s yet: experts placed round-robin", prof);
    }
    st = placement_build(&ep->pl, c->n_layers, c->n_experts, ep->world, counts);
    sl_free(counts);
    if (st) goto fail;
    ep->ev_t0 = (cudaEvent_t *)sl_calloc(c->n_layers, sizeof(cudaEvent_t));
    ep->ev_t1 = (cudaEvent_t *)sl_calloc(c->n_layers, sizeof(cudaEvent_t));
    ep->recorded = (uint8_t *)sl_calloc(c->n_layers, 1);
    if (!ep->ev_t0 || !ep->ev_t1 || !ep->recorded) {
        st = sl_seterr(SL_ERR_NOMEM, "out of memory");
        goto fail;
    }
    for (uint32_t l = 0; l < c->n_layers && !st; l++) {
        cudaError_t e = cudaEventCreate(&ep->ev_t0[l]);
        if (e == cudaSuccess) e = cudaEventCreate(&ep->ev_t1[l]);
        if (e != cudaSuccess) st = cuda_fail(e, "cudaEventCreate (nccl)");
    }
    if (st) goto fail;
    {
        cudaError_t e = cudaMalloc(&ep->zero, sl_align_up(sb ? sb : 1, 256));
        if (e == cudaSuccess) e = cudaMemset(ep->zero, 0, sl_align_up(sb ? sb : 1, 256));
        if (e != cudaSuccess) {
            st = cuda_fail(e, "the zero expert record");
            goto fail;
        }
    }
    if ((st = ep_bootstrap(ep, p->nccl_id_path))) goto fail;
    {
        uint64_t d = placement_digest(&ep->pl);
        uint64_t sizes[2] = {m->file.expert_bytes, m->file.dense_bytes};
        d = sl_fnv1a64(sizes, sizeof sizes, d);
        if ((st = ep_check_same(ep, d))) goto fail;
    }
    if (!cuda_tune("SLUICE_NCCL_GRAPH", 1)) cm->use_graphs = 0;
    {
        uint64_t own = 0, all = 0;
        for (uint32_t l = 0; l < c->n_layers; l++)
            if (c->layer_is_moe[l]) {
                own += placement_owned(&ep->pl, ep->rank, l);
                all += c->n_experts;
            }
        snprintf(ep->desc, sizeof ep->desc, "expert parallel: rank %d of %d, %llu of %llu "
                 "experts here (NCCL %d)", ep->rank, ep->world, (unsigned long long)own,
                 (unsigned long long)all, nc.version);
    }
    sl_log(SL_LOG_INFO, "nccl: %s", ep->desc);
    cm->ep = ep;
    return SL_OK;
fail:
    nccl_ep_free(ep);
    return st;
}

void nccl_ep_free(struct nccl_ep *ep) {
    if (!ep) return;
    if (ep->comm && !ep->dead) { /* finalize (flushes), then destroy; abort if stuck */
        ncclResult_t r = nc.finalize(comm_of(ep));
        double t0 = sl_now();
        for (int spin = 0; r == ncclInProgress && sl_now() - t0 < 10.0; spin++) {
            ep_pause(spin);
            if (nc.async_error(comm_of(ep), &r) != ncclSuccess) r = ncclInternalError;
        }
        if (r == ncclSuccess) nc.destroy(comm_of(ep));
        else nc.abort(comm_of(ep));
    } else if (ep->comm) {
        nc.abort(comm_of(ep));
    }
    for (uint32_t l = 0; l < ep->n_layers; l++) {
        if (ep->ev_t0 && ep->ev_t0[l]) cudaEventDestroy(ep->ev_t0[l]);
        if (ep->ev_t1 && ep->ev_t1[l]) cudaEventDestroy(ep->ev_t1[l]);
    }
    if (ep->zero) cudaFree(ep->zero);
    sl_free(ep->ev_t0);
    sl_free(ep->ev_t1);
    sl_free(ep->recorded);
    placement_free(&ep->pl);
    sl_free(ep);
}

#endif /* SLUICE_NCCL */

const char *nccl_ep_desc(const struct nccl_ep *ep) { return ep ? ep->desc : ""; }
