/*
 * expert_io.c — the read engine of the expert store: several reads in
 * flight, either through one io_uring (one thread submits and reaps up to
 * max_inflight reads, woken through an eventfd) or through max_inflight
 * pread threads. One read per expert record, straight into its cache slot.
 *
 * What it is not: a scheduler. Which read goes next and into which slot is
 * store_next_job's decision (expert_store.c); the engine only moves bytes
 * and reports how it went through store_complete.
 *
 * Invariants: a job's buffer belongs to the engine from store_next_job to
 * store_complete; io_engine_stop returns only after every read in flight
 * has completed, so buffers can be freed after it. The test hook
 * (struct expert_store_io) forces the pread threads, so that every read
 * goes through it.
 */
#include <errno.h>
#include <liburing.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "expert_store_impl.h"
#include "util.h"

int io_read_full(const struct expert_store *s, void *buf, uint64_t len,
                 uint64_t off, uint64_t *got) {
    uint64_t done = 0;
    while (done < len) {
        ssize_t r = s->io.pread
                        ? s->io.pread(s->io.user, s->fd, (uint8_t *)buf + done,
                                      (size_t)(len - done), off + done)
                        : pread(s->fd, (uint8_t *)buf + done, (size_t)(len - done),
                                (off_t)(off + done));
        if (r < 0) {
            if (errno == EINTR) continue;
            *got = done;
            return errno ? errno : EIO;
        }
        if (r == 0) break;
        done += (uint64_t)r;
    }
    *got = done;
    return done == len ? 0 : -1;
}

/* ---- pread threads ---- */

static void *pread_worker(void *arg) {
    struct expert_store *s = arg;
    pthread_mutex_lock(&s->mu);
    struct io_job j;
    while (store_next_job(s, &j, 1)) {
        pthread_mutex_unlock(&s->mu);
        uint64_t got = 0;
        int err = io_read_full(s, j.buf, j.len, j.off, &got);
        pthread_mutex_lock(&s->mu);
        store_complete(s, &j, err, got);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ---- io_uring ---- */

#define EFD_TAG UINT64_MAX /* user_data of the eventfd read */

struct uring_state {
    struct io_uring ring;
    struct io_job *jobs;   /* (max_inflight) */
    int *job_free;         /* (max_inflight) free job indices */
    int n_job_free;
    uint64_t efd_buf;
};

static void uring_arm_eventfd(struct uring_state *u, int efd) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
    SL_ASSERT(sqe); /* the ring has room for max_inflight + 1 */
    io_uring_prep_read(sqe, efd, &u->efd_buf, sizeof u->efd_buf, 0);
    io_uring_sqe_set_data64(sqe, EFD_TAG);
}

static void *uring_worker(void *arg) {
    struct expert_store *s = arg;
    struct uring_state *u = s->uring;
    int in_flight = 0;
    uring_arm_eventfd(u, s->efd);
    io_uring_submit(&u->ring);
    pthread_mutex_lock(&s->mu);
    for (;;) {
        int added = 0;
        struct io_job j;
        while (u->n_job_free > 0 && store_next_job(s, &j, 0)) {
            int k = u->job_free[--u->n_job_free];
            u->jobs[k] = j;
            struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
            SL_ASSERT(sqe);
            io_uring_prep_read(sqe, s->fd, j.buf, (unsigned)j.len, j.off);
            io_uring_sqe_set_data64(sqe, (uint64_t)k);
            in_flight++;
            added++;
        }
        if (s->stop && in_flight == 0) break;
        pthread_mutex_unlock(&s->mu);
        if (added) io_uring_submit(&u->ring);
        struct io_uring_cqe *cqe;
        int rc = io_uring_wait_cqe(&u->ring, &cqe);
        pthread_mutex_lock(&s->mu);
        if (rc < 0) continue; /* -EINTR: retry */
        unsigned head, n = 0;
        io_uring_for_each_cqe(&u->ring, head, cqe) {
            n++;
            uint64_t tag = io_uring_cqe_get_data64(cqe);
            if (tag == EFD_TAG) {
                uring_arm_eventfd(u, s->efd);
                added++;
                continue;
            }
            struct io_job *jb = &u->jobs[tag];
            int res = cqe->res, err = 0;
            uint64_t got = res > 0 ? (uint64_t)res : 0;
            if (res < 0) {
                err = -res;
            } else if (got < jb->len) {
                /* short read: finish it synchronously (rare; EOF reports -1) */
                uint64_t more = 0;
                pthread_mutex_unlock(&s->mu);
                err = io_read_full(s, (uint8_t *)jb->buf + got, jb->len - got,
                                   jb->off + got, &more);
                pthread_mutex_lock(&s->mu);
                got += more;
            }
            store_complete(s, jb, err, got);
            u->job_free[u->n_job_free++] = (int)tag;
            in_flight--;
        }
        io_uring_cq_advance(&u->ring, n);
        if (added) {
            pthread_mutex_unlock(&s->mu);
            io_uring_submit(&u->ring);
            pthread_mutex_lock(&s->mu);
        }
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

static void uring_free(struct expert_store *s) {
    struct uring_state *u = s->uring;
    if (!u) return;
    io_uring_queue_exit(&u->ring);
    sl_free(u->jobs);
    sl_free(u->job_free);
    sl_free(u);
    s->uring = NULL;
    if (s->efd >= 0) close(s->efd);
    s->efd = -1;
}

/* Sets up the ring; nonzero (no message) if the kernel refuses io_uring. */
static int uring_setup(struct expert_store *s) {
    struct uring_state *u = sl_calloc(1, sizeof *u);
    if (!u) return 1;
    u->jobs = sl_calloc((size_t)s->max_inflight, sizeof *u->jobs);
    u->job_free = sl_calloc((size_t)s->max_inflight, sizeof *u->job_free);
    s->efd = eventfd(0, EFD_CLOEXEC);
    if (!u->jobs || !u->job_free || s->efd < 0 ||
        io_uring_queue_init((unsigned)s->max_inflight + 2, &u->ring, 0) < 0) {
        sl_free(u->jobs);
        sl_free(u->job_free);
        sl_free(u);
        if (s->efd >= 0) close(s->efd);
        s->efd = -1;
        return 1;
    }
    for (int i = 0; i < s->max_inflight; i++) u->job_free[i] = s->max_inflight - 1 - i;
    u->n_job_free = s->max_inflight;
    s->uring = u;
    return 0;
}

int io_engine_start(struct expert_store *s, int no_uring) {
    s->stop = 0;
    int want_uring = !no_uring && !s->io.pread && !uring_setup(s);
    if (!want_uring && !no_uring && !s->io.pread)
        sl_log(SL_LOG_INFO, "expert store: io_uring unavailable, using pread threads");
    int n = want_uring ? 1 : s->max_inflight;
    s->threads = sl_calloc((size_t)n, sizeof *s->threads);
    if (!s->threads) {
        uring_free(s);
        return sl_seterr(SL_ERR_NOMEM, "expert store: out of memory for I/O threads");
    }
    for (int i = 0; i < n; i++) {
        int rc = pthread_create(&s->threads[i], NULL,
                                want_uring ? uring_worker : pread_worker, s);
        if (rc) {
            s->n_threads = i;
            s->engine = want_uring ? ENGINE_URING : ENGINE_THREADS;
            io_engine_stop(s);
            return sl_seterr(SL_ERR_NOMEM, "expert store: cannot start an I/O thread: %s",
                             strerror(rc));
        }
    }
    s->n_threads = n;
    s->engine = want_uring ? ENGINE_URING : ENGINE_THREADS;
    return SL_OK;
}

void io_engine_kick(struct expert_store *s) {
    pthread_cond_broadcast(&s->cv_work);
    if (s->engine == ENGINE_URING && s->efd >= 0) {
        uint64_t one = 1;
        ssize_t w = write(s->efd, &one, sizeof one); /* wakes io_uring_wait_cqe */
        (void)w; /* a full counter (EAGAIN) still wakes the reader */
    }
}

void io_engine_stop(struct expert_store *s) {
    if (s->engine == ENGINE_NONE) return;
    pthread_mutex_lock(&s->mu);
    s->stop = 1;
    io_engine_kick(s);
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < s->n_threads; i++) pthread_join(s->threads[i], NULL);
    sl_free(s->threads);
    s->threads = NULL;
    s->n_threads = 0;
    uring_free(s);
    s->engine = ENGINE_NONE;
    s->stop = 0;
}
