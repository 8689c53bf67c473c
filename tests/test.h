/*
 * test.h — the tiny test harness: TEST() declares a test, CHECK* record
 * failures without stopping the test, check_tensor() compares arrays and
 * prints the first mismatches, max |diff| and nmse. Each test binary's main
 * is TEST_MAIN(), which runs every test, prints "N passed, N failed" and
 * exits non-zero on any failure. Tests that need a file or a device they
 * cannot find call TEST_SKIP("why"), which prints the reason; a skip is
 * counted and shown, never silent.
 */
#ifndef SL_TEST_H
#define SL_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct test_case {
    const char *name;
    void (*fn)(void);
};

#define TEST_MAX 512
static struct test_case test_cases[TEST_MAX];
static int test_n_cases, test_failed_checks, test_skipped;
static const char *test_current;

#define TEST(name)                                                            \
    static void name(void);                                                   \
    __attribute__((constructor)) static void register_##name(void) {          \
        if (test_n_cases < TEST_MAX)                                          \
            test_cases[test_n_cases++] = (struct test_case){#name, name};     \
    }                                                                         \
    static void name(void)

#define CHECK(c)                                                              \
    do {                                                                      \
        if (!(c)) {                                                           \
            fprintf(stderr, "  FAIL %s:%d: %s: %s\n", __FILE__, __LINE__,     \
                    test_current, #c);                                        \
            test_failed_checks++;                                             \
        }                                                                     \
    } while (0)

#define CHECK_MSG(c, ...)                                                     \
    do {                                                                      \
        if (!(c)) {                                                           \
            fprintf(stderr, "  FAIL %s:%d: %s: %s: ", __FILE__, __LINE__,     \
                    test_current, #c);                                        \
            fprintf(stderr, __VA_ARGS__);                                     \
            fputc('\n', stderr);                                              \
            test_failed_checks++;                                             \
        }                                                                     \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                    \
    do {                                                                      \
        long long va_ = (long long)(a), vb_ = (long long)(b);                 \
        CHECK_MSG(va_ == vb_, "%lld != %lld", va_, vb_);                      \
    } while (0)

#define CHECK_NEAR(a, b, tol)                                                 \
    do {                                                                      \
        double va_ = (double)(a), vb_ = (double)(b);                          \
        CHECK_MSG(fabs(va_ - vb_) <= (tol), "%.9g vs %.9g (tol %g)", va_,     \
                  vb_, (double)(tol));                                        \
    } while (0)

#define TEST_SKIP(...)                                                        \
    do {                                                                      \
        fprintf(stderr, "  SKIP %s: ", test_current);                         \
        fprintf(stderr, __VA_ARGS__);                                         \
        fputc('\n', stderr);                                                  \
        test_skipped++;                                                       \
        return;                                                               \
    } while (0)

/* Compares n floats; fails when nmse > max_nmse or any |a-b| > max_abs
 * (pass a negative value to disable either). Returns nonzero if ok. */
static inline int check_tensor(const char *what, const float *got,
                               const float *want, size_t n, double max_nmse,
                               double max_abs) {
    double err = 0, ref = 0, maxd = 0;
    size_t shown = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)got[i] - (double)want[i];
        err += d * d;
        ref += (double)want[i] * want[i];
        if (fabs(d) > maxd || d != d) maxd = d != d ? INFINITY : fabs(d);
        if (max_abs >= 0 && !(fabs(d) <= max_abs) && shown < 5) {
            fprintf(stderr, "    %s[%zu]: got %.9g want %.9g\n", what, i,
                    got[i], want[i]);
            shown++;
        }
    }
    double nmse = ref > 0 ? err / ref : err;
    int ok = (max_nmse < 0 || nmse <= max_nmse) &&
             (max_abs < 0 || maxd <= max_abs);
    if (!ok) {
        fprintf(stderr, "  FAIL %s: %s: n=%zu max|diff|=%.3g nmse=%.3g\n",
                test_current, what, n, maxd, nmse);
        test_failed_checks++;
    }
    return ok;
}

#define TEST_MAIN()                                                           \
    int main(int argc, char **argv) {                                         \
        int passed = 0, failed = 0;                                           \
        for (int i = 0; i < test_n_cases; i++) {                              \
            if (argc > 1 && !strstr(test_cases[i].name, argv[1])) continue;   \
            int before = test_failed_checks, skipped = test_skipped;          \
            test_current = test_cases[i].name;                                \
            test_cases[i].fn();                                               \
            if (test_failed_checks != before) {                               \
                failed++;                                                     \
                fprintf(stderr, "FAIL %s\n", test_current);                   \
            } else if (test_skipped == skipped) {                             \
                passed++;                                                     \
            }                                                                 \
        }                                                                     \
        printf("%s: %d passed, %d failed, %d skipped\n", argv[0], passed,     \
               failed, test_skipped);                                         \
        return failed ? 1 : 0;                                                \
    }

#endif /* SL_TEST_H */
