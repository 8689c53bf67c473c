/*
 * cli_bench_disk.c — the disk tier's physical limit for `sluice bench`:
 * read bandwidth of a file with O_DIRECT (the page cache is bypassed, so a
 * cached file still measures the device), several reads in flight, at
 * random block-aligned offsets (experts are random reads of ~3 MB).
 *
 * What it is not: a general disk benchmark (no writes, no latency
 * percentiles). One thread per read in flight, each doing pread(2) on its
 * own aligned buffer; the measured figure is total bytes / wall time.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

struct disk_job {
    int fd;
    uint64_t n_blocks, block;
    uint64_t seed;
    double until;
    uint64_t bytes;
    int err;
};

static double disk_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void *disk_thread(void *arg) {
    struct disk_job *j = arg;
    void *buf;
    if (posix_memalign(&buf, 4096, j->block)) {
        j->err = ENOMEM;
        return NULL;
    }
    uint64_t x = j->seed;
    while (disk_now() < j->until) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        uint64_t off = ((x >> 17) % j->n_blocks) * j->block;
        ssize_t r = pread(j->fd, buf, j->block, (off_t)off);
        if (r < 0) {
            j->err = errno;
            break;
        }
        j->bytes += (uint64_t)r;
    }
    free(buf);
    return NULL;
}

double bench_disk_read_gbs(const char *path, int n_inflight, uint64_t block, double seconds,
                           char *err, size_t err_len) {
    if (n_inflight < 1 || n_inflight > 256 || block < 4096 || block % 4096) {
        snprintf(err, err_len, "reads in flight must be 1..256 and the block a multiple of 4096");
        return -1;
    }
    int fd = open(path, O_RDONLY | O_DIRECT);
    if (fd < 0) {
        snprintf(err, err_len, "open %s with O_DIRECT: %s", path, strerror(errno));
        return -1;
    }
    struct stat sb;
    if (fstat(fd, &sb) || (uint64_t)sb.st_size < block) {
        snprintf(err, err_len, "%s: smaller than one %llu-byte block", path,
                 (unsigned long long)block);
        close(fd);
        return -1;
    }
    struct disk_job jobs[256];
    pthread_t th[256];
    double t0 = disk_now();
    int started = 0;
    for (int i = 0; i < n_inflight; i++) {
        jobs[i] = (struct disk_job){fd, (uint64_t)sb.st_size / block, block,
                                    0x9e3779b97f4a7c15ull * (uint64_t)(i + 1), t0 + seconds, 0, 0};
        if (pthread_create(&th[i], NULL, disk_thread, &jobs[i])) break;
        started++;
    }
    uint64_t bytes = 0;
    int e = started ? 0 : EAGAIN;
    for (int i = 0; i < started; i++) {
        pthread_join(th[i], NULL);
        bytes += jobs[i].bytes;
        if (jobs[i].err) e = jobs[i].err;
    }
    double dt = disk_now() - t0;
    close(fd);
    if (e) {
        snprintf(err, err_len, "read %s with O_DIRECT: %s", path, strerror(e));
        return -1;
    }
    return (double)bytes / dt / 1e9;
}
