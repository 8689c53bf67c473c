/*
 * sampler.c — picking the next token from logits: greedy (temperature 0,
 * ties to the lower id) or temperature + top-k + top-p with a seeded
 * xoshiro256** generator, so a seed reproduces a run exactly.
 *
 * The sampler owns scratch for n_vocab candidates, allocated once.
 */
#include <math.h>
#include <stdlib.h>

#include "util.h"

struct candidate {
    float p;
    int32_t id;
};

struct sl_sampler {
    struct sl_sampler_params params;
    int32_t n_vocab;
    uint64_t s[4];               /* xoshiro256** state */
    struct candidate *cand;      /* (n_vocab) */
};

struct sl_sampler_params sl_sampler_default_params(void) {
    struct sl_sampler_params p;
    p.temperature = 0.8f;
    p.top_k = 40;
    p.top_p = 0.95f;
    p.seed = 0x5eed;
    return p;
}

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t next_u64(struct sl_sampler *s) {
    uint64_t r = rotl(s->s[1] * 5, 7) * 9, t = s->s[1] << 17;
    s->s[2] ^= s->s[0];
    s->s[3] ^= s->s[1];
    s->s[1] ^= s->s[2];
    s->s[0] ^= s->s[3];
    s->s[2] ^= t;
    s->s[3] = rotl(s->s[3], 45);
    return r;
}

int sl_sampler_create(const struct sl_sampler_params *params, int32_t n_vocab,
                      struct sl_sampler **out) {
    *out = NULL;
    struct sl_sampler_params p = params ? *params : sl_sampler_default_params();
    if (n_vocab <= 0) return sl_seterr(SL_ERR_ARG, "sampler: n_vocab must be positive");
    if (!(p.temperature >= 0) || !isfinite(p.temperature))
        return sl_seterr(SL_ERR_ARG, "sampler: temperature must be >= 0, got %g",
                         (double)p.temperature);
    if (!(p.top_p > 0 && p.top_p <= 1))
        return sl_seterr(SL_ERR_ARG, "sampler: top_p must be in (0, 1], got %g",
                         (double)p.top_p);
    if (p.top_k < 0) return sl_seterr(SL_ERR_ARG, "sampler: top_k must be >= 0");
    struct sl_sampler *s = sl_calloc(1, sizeof *s);
    if (!s) return sl_seterr(SL_ERR_NOMEM, "sampler: out of memory");
    s->cand = sl_malloc((size_t)n_vocab * sizeof *s->cand);
    if (!s->cand) {
        sl_free(s);
        return sl_seterr(SL_ERR_NOMEM, "sampler: out of memory");
    }
    s->params = p;
    s->n_vocab = n_vocab;
    uint64_t x = p.seed;
    for (int i = 0; i < 4; i++) s->s[i] = splitmix64(&x);
    *out = s;
    return SL_OK;
}

void sl_sampler_free(struct sl_sampler *s) {
    if (!s) return;
    sl_free(s->cand);
    sl_free(s);
}

static int cmp_cand(const void *a, const void *b) {
    const struct candidate *x = a, *y = b;
    if (x->p != y->p) return x->p > y->p ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* "a ranks below b": lower logit, or equal logit and higher id. */
static int below(struct candidate a, struct candidate b) {
    return a.p < b.p || (a.p == b.p && a.id > b.id);
}

/* Puts the k best candidates of logits into s->cand[0..k) (unordered) with a
 * min-heap, O(n log k) instead of sorting the whole vocabulary. */
static int32_t select_top_k(struct sl_sampler *s, const float *logits, int32_t k) {
    struct candidate *h = s->cand;
    for (int32_t i = 0; i < s->n_vocab; i++) {
        struct candidate c = {logits[i], i};
        int32_t j;
        if (i < k) { /* sift up */
            for (j = i; j > 0 && below(c, h[(j - 1) / 2]); j = (j - 1) / 2) h[j] = h[(j - 1) / 2];
            h[j] = c;
            continue;
        }
        if (!below(h[0], c)) continue;
        for (j = 0;;) { /* replace the root, sift down */
            int32_t l = 2 * j + 1, m = j;
            struct candidate best = c;
            if (l < k && below(h[l], best)) m = l, best = h[l];
            if (l + 1 < k && below(h[l + 1], best)) m = l + 1;
            if (m == j) break;
            h[j] = h[m];
            j = m;
        }
        h[j] = c;
    }
    return k;
}

static int32_t argmax(const float *logits, int32_t n) {
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (logits[i] > logits[best]) best = i;
    return best;
}

int32_t sl_sample(struct sl_sampler *s, const float *logits) {
    const struct sl_sampler_params *p = &s->params;
    if (p->temperature == 0 || p->top_k == 1) return argmax(logits, s->n_vocab);
    /* Candidates: top-k by logit (all if top_k is 0), then softmax at the
     * temperature, then the smallest prefix whose mass reaches top_p. */
    int32_t n = s->n_vocab;
    if (p->top_k > 0 && p->top_k < n) {
        n = select_top_k(s, logits, p->top_k);
    } else {
        for (int32_t i = 0; i < n; i++) s->cand[i] = (struct candidate){logits[i], i};
    }
    qsort(s->cand, (size_t)n, sizeof *s->cand, cmp_cand);
    float maxl = s->cand[0].p;
    double sum = 0;
    for (int32_t i = 0; i < n; i++) {
        s->cand[i].p = expf((s->cand[i].p - maxl) / p->temperature);
        sum += s->cand[i].p;
    }
    double cum = 0;
    int32_t keep = n;
    for (int32_t i = 0; i < n; i++) {
        cum += s->cand[i].p / sum;
        if (cum >= p->top_p) {
            keep = i + 1;
            break;
        }
    }
    double mass = 0;
    for (int32_t i = 0; i < keep; i++) mass += s->cand[i].p;
    double r = (double)(next_u64(s) >> 11) * 0x1.0p-53 * mass;
    for (int32_t i = 0; i < keep; i++) {
        r -= s->cand[i].p;
        if (r < 0) return s->cand[i].id;
    }
    return s->cand[keep - 1].id;
}
