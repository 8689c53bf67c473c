/*
 * test_sampler.c — the sampler on hand-computed 4-token distributions:
 * greedy ties, top-k / top-p truncation, frequencies against the softmax,
 * seed reproducibility, bad parameters.
 */
#include <math.h>

#include "sluice.h"
#include "test.h"

static struct sl_sampler *make(float temp, int top_k, float top_p, uint64_t seed, int n) {
    struct sl_sampler_params p = sl_sampler_default_params();
    p.temperature = temp;
    p.top_k = top_k;
    p.top_p = top_p;
    p.seed = seed;
    struct sl_sampler *s = NULL;
    CHECK_EQ_INT(sl_sampler_create(&p, n, &s), SL_OK);
    return s;
}

TEST(greedy_ties_go_to_lower_id) {
    float lg[4] = {1.0f, 3.0f, 3.0f, -2.0f};
    struct sl_sampler *s = make(0, 40, 1, 1, 4);
    CHECK_EQ_INT(sl_sample(s, lg), 1);
    sl_sampler_free(s);
    s = make(1.0f, 1, 1, 1, 4); /* top_k 1 is greedy too */
    CHECK_EQ_INT(sl_sample(s, lg), 1);
    sl_sampler_free(s);
}

/* Draws n samples and returns counts. */
static void draw(struct sl_sampler *s, const float *lg, int n, int counts[4]) {
    for (int i = 0; i < 4; i++) counts[i] = 0;
    for (int i = 0; i < n; i++) {
        int32_t id = sl_sample(s, lg);
        CHECK(id >= 0 && id < 4);
        if (id >= 0 && id < 4) counts[id]++;
    }
}

TEST(frequencies_follow_softmax) {
    /* softmax of {0, ln 2, ln 3, ln 4} = {1, 2, 3, 4} / 10 */
    float lg[4] = {0, logf(2), logf(3), logf(4)};
    struct sl_sampler *s = make(1.0f, 0, 1.0f, 42, 4);
    int c[4], n = 40000;
    draw(s, lg, n, c);
    for (int i = 0; i < 4; i++) CHECK_NEAR((double)c[i] / n, (i + 1) / 10.0, 0.01);
    sl_sampler_free(s);
}

TEST(temperature_sharpens) {
    /* at T = 0.5 the weights are squared: {1, 4, 9, 16} / 30 */
    float lg[4] = {0, logf(2), logf(3), logf(4)};
    struct sl_sampler *s = make(0.5f, 0, 1.0f, 7, 4);
    int c[4], n = 40000;
    draw(s, lg, n, c);
    const double want[4] = {1 / 30.0, 4 / 30.0, 9 / 30.0, 16 / 30.0};
    for (int i = 0; i < 4; i++) CHECK_NEAR((double)c[i] / n, want[i], 0.01);
    sl_sampler_free(s);
}

TEST(top_k_truncates) {
    float lg[4] = {0, logf(2), logf(3), logf(4)};
    struct sl_sampler *s = make(1.0f, 2, 1.0f, 9, 4);
    int c[4], n = 20000;
    draw(s, lg, n, c);
    CHECK_EQ_INT(c[0], 0);
    CHECK_EQ_INT(c[1], 0);
    CHECK_NEAR((double)c[3] / n, 4.0 / 7.0, 0.015); /* {3, 4} / 7 */
    sl_sampler_free(s);
}

TEST(top_p_truncates) {
    /* probs {0.1, 0.2, 0.3, 0.4}: top_p 0.6 keeps {4, 3} (0.7 >= 0.6) */
    float lg[4] = {0, logf(2), logf(3), logf(4)};
    struct sl_sampler *s = make(1.0f, 0, 0.6f, 11, 4);
    int c[4], n = 20000;
    draw(s, lg, n, c);
    CHECK_EQ_INT(c[0] + c[1], 0);
    CHECK_NEAR((double)c[2] / n, 3.0 / 7.0, 0.015);
    sl_sampler_free(s);
}

TEST(top_k_heap_matches_full_sort_on_large_vocab) {
    /* a vocabulary larger than k exercises the heap selection: with
     * top_k = 3 only the three largest logits may ever come out */
    enum { N = 1000 };
    static float lg[N];
    for (int i = 0; i < N; i++) lg[i] = (float)((i * 7919) % 1000) / 100.0f;
    /* the three largest: values 9.99, 9.98, 9.97 */
    int want[3], k = 0;
    for (int v = 999; v >= 997; v--)
        for (int i = 0; i < N; i++)
            if ((i * 7919) % 1000 == v) want[k++] = i;
    struct sl_sampler *s = make(1.0f, 3, 1.0f, 5, N);
    for (int t = 0; t < 2000; t++) {
        int32_t id = sl_sample(s, lg);
        CHECK(id == want[0] || id == want[1] || id == want[2]);
    }
    sl_sampler_free(s);
}

TEST(same_seed_same_sequence) {
    float lg[4] = {0.1f, 0.2f, 0.3f, 0.4f};
    struct sl_sampler *a = make(1.0f, 0, 1.0f, 123, 4), *b = make(1.0f, 0, 1.0f, 123, 4);
    struct sl_sampler *c = make(1.0f, 0, 1.0f, 124, 4);
    int same = 1, differs = 0;
    for (int i = 0; i < 200; i++) {
        int32_t x = sl_sample(a, lg), y = sl_sample(b, lg), z = sl_sample(c, lg);
        same &= x == y;
        differs |= x != z;
    }
    CHECK(same);
    CHECK(differs);
    sl_sampler_free(a);
    sl_sampler_free(b);
    sl_sampler_free(c);
}

TEST(bad_parameters_rejected) {
    struct sl_sampler_params p = sl_sampler_default_params();
    struct sl_sampler *s = NULL;
    p.temperature = -1;
    CHECK_EQ_INT(sl_sampler_create(&p, 4, &s), SL_ERR_ARG);
    CHECK(strstr(sl_errmsg(), "temperature") != NULL);
    p = sl_sampler_default_params();
    p.top_p = 0;
    CHECK_EQ_INT(sl_sampler_create(&p, 4, &s), SL_ERR_ARG);
    CHECK(strstr(sl_errmsg(), "top_p") != NULL);
    p = sl_sampler_default_params();
    CHECK_EQ_INT(sl_sampler_create(&p, 0, &s), SL_ERR_ARG);
    CHECK(s == NULL);
    sl_sampler_free(NULL);
}

TEST_MAIN()
