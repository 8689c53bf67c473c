/*
 * test_quant.c — the stored weight formats (src/quant.c): row sizes, exact
 * byte layouts of hand-computed blocks, round-trip error bounds per dtype,
 * zero blocks, determinism and the defined behaviour on non-finite input.
 */
#include <stdint.h>

#include "quant.h"
#include "test.h"
#include "util.h"

/* Seeded xorshift64* uniform in [-1, 1). */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static float rnd(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    uint64_t r = rng_state * 0x2545f4914f6cdd1dull;
    return (float)((double)(r >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

TEST(row_bytes) {
    CHECK_EQ_INT(quant_row_bytes(SL_DTYPE_F32, 10), 40);
    CHECK_EQ_INT(quant_row_bytes(SL_DTYPE_F16, 10), 20);
    CHECK_EQ_INT(quant_row_bytes(SL_DTYPE_BF16, 7), 14);
    CHECK_EQ_INT(quant_row_bytes(SL_DTYPE_Q8, 64), 64 + 4);
    CHECK_EQ_INT(quant_row_bytes(SL_DTYPE_Q4, 64), 32 + 4 + 4);
    CHECK_EQ_INT(quant_row_bytes(SL_DTYPE_Q8, 2048), 2048 * 34 / 32);
    CHECK_EQ_INT(quant_row_bytes(SL_DTYPE_Q4, 2048), 2048 * 20 / 32);
    /* quantized dtypes need whole blocks */
    CHECK_EQ_INT(quant_row_bytes(SL_DTYPE_Q8, 33), 0);
    CHECK_EQ_INT(quant_row_bytes(SL_DTYPE_Q4, 48), 0);
    CHECK_EQ_INT(quant_row_bytes(SL_DTYPE_BF16, 33), 66);
    /* unknown dtype and overflow */
    CHECK_EQ_INT(quant_row_bytes(-1, 32), 0);
    CHECK_EQ_INT(quant_row_bytes(SL_DTYPE_COUNT, 32), 0);
    CHECK_EQ_INT(quant_row_bytes(SL_DTYPE_F32, UINT64_MAX / 2), 0);
    CHECK_EQ_INT(quant_row_bytes(SL_DTYPE_Q8, UINT64_MAX - 31), 0);
    CHECK(quant_dtype_fits(SL_DTYPE_Q4, 32));
    CHECK(!quant_dtype_fits(SL_DTYPE_Q4, 0));
    CHECK(!quant_dtype_fits(SL_DTYPE_Q4, 16));
    CHECK(quant_dtype_fits(SL_DTYPE_F32, 1));
    CHECK(!quant_dtype_fits(7, 32));
}

/* Block w = 0, 1, ..., 31. Hand computation:
 * Q8: d = 31/127 = 0.2440945 -> half 0x33d0 = 0.244140625 (= 2000 * 2^-13);
 *     q = round(j / 0.244140625) = round(4.096 j): 0,4,8,12,16,20,25,...,127.
 * Q4: m = 0 (half 0x0000); d = 31/15 = 2.0667 -> half 0x4022 = 2.06640625;
 *     q = round(j / d) = 0,0,1,1,2,2,...,15,15; byte j = q[j] | q[j+16] << 4. */
TEST(hand_computed_block_ramp) {
    float w[32];
    for (int i = 0; i < 32; i++) w[i] = (float)i;

    uint8_t q8[34];
    quant_row_from_f32(SL_DTYPE_Q8, w, q8, 32);
    static const int8_t want8[32] = {0,  4,  8,  12, 16, 20, 25,  29,
                                     33, 37, 41, 45, 49, 53, 57,  61,
                                     66, 70, 74, 78, 82, 86, 90,  94,
                                     98, 102, 106, 111, 115, 119, 123, 127};
    CHECK(memcmp(q8, want8, 32) == 0);
    CHECK_EQ_INT(rd16(q8 + 32), 0x33d0);

    uint8_t q4[20];
    quant_row_from_f32(SL_DTYPE_Q4, w, q4, 32);
    static const uint8_t want4[16] = {0x80, 0x80, 0x91, 0x91, 0xa2, 0xa2,
                                      0xb3, 0xb3, 0xc4, 0xc4, 0xd5, 0xd5,
                                      0xe6, 0xe6, 0xf7, 0xf7};
    CHECK(memcmp(q4, want4, 16) == 0);
    CHECK_EQ_INT(rd16(q4 + 16), 0x4022); /* d */
    CHECK_EQ_INT(rd16(q4 + 18), 0x0000); /* m */

    float back[32];
    quant_row_to_f32(SL_DTYPE_Q4, q4, back, 32);
    CHECK_NEAR(back[31], 15 * 2.06640625, 0);
    CHECK_NEAR(back[2], 2.06640625, 0);
    quant_row_to_f32(SL_DTYPE_Q8, q8, back, 32);
    CHECK_NEAR(back[31], 127 * 0.244140625, 0);
    CHECK_NEAR(back[1], 4 * 0.244140625, 0);
}

/* Negative block with an offset: m = -8 exactly, d = 1 exactly -> the
 * integers -8..7 (each twice) round-trip exactly; nibble order checked. */
TEST(hand_computed_q4_offset) {
    float w[32];
    for (int i = 0; i < 32; i++) w[i] = (float)(i / 2) - 8.0f;
    uint8_t q4[20];
    quant_row_from_f32(SL_DTYPE_Q4, w, q4, 32);
    CHECK_EQ_INT(rd16(q4 + 16), 0x3c00); /* d = 1.0 */
    CHECK_EQ_INT(rd16(q4 + 18), 0xc800); /* m = -8.0 */
    /* q[j] = j/2; byte j = q[j] | q[j+16] << 4 = j/2 | (8 + j/2) << 4 */
    for (int j = 0; j < 16; j++) CHECK_EQ_INT(q4[j], (j / 2) | ((8 + j / 2) << 4));
    float back[32];
    quant_row_to_f32(SL_DTYPE_Q4, q4, back, 32);
    check_tensor("q4 exact", back, w, 32, 0, 0);
}

TEST(zero_blocks) {
    float w[64] = {0};
    for (int i = 32; i < 64; i++) w[i] = 0.5f; /* second block constant */
    uint8_t q8[68], q4[40];
    float back[64];
    quant_row_from_f32(SL_DTYPE_Q8, w, q8, 64);
    for (int i = 0; i < 32; i++) CHECK_EQ_INT(q8[i], 0);
    CHECK_EQ_INT(rd16(q8 + 64), 0);
    quant_row_to_f32(SL_DTYPE_Q8, q8, back, 64);
    check_tensor("q8 zero/const", back, w, 64, -1, 0.5f / 127 / 2 + 1e-6);

    quant_row_from_f32(SL_DTYPE_Q4, w, q4, 64);
    for (int i = 0; i < 32; i++) CHECK_EQ_INT(q4[i], 0); /* d == 0 -> q 0 */
    CHECK_EQ_INT(rd16(q4 + 32), 0);      /* block 0 d */
    CHECK_EQ_INT(rd16(q4 + 34), 0);      /* block 1 d (constant block) */
    CHECK_EQ_INT(rd16(q4 + 38), 0x3800); /* block 1 m = 0.5 */
    quant_row_to_f32(SL_DTYPE_Q4, q4, back, 64);
    check_tensor("q4 zero/const", back, w, 64, 0, 0);
}

/* Random rows of several magnitudes: per-block error bounds against the
 * stored (rounded) scale. */
TEST(round_trip_bounds) {
    enum { COLS = 256, NB = COLS / 32 };
    float w[COLS], back[COLS];
    uint8_t buf[COLS * 4];
    static const float scales[] = {1e-3f, 0.02f, 1.0f, 37.0f, 3000.0f};
    for (int s = 0; s < 5; s++) {
        for (int rep = 0; rep < 20; rep++) {
            for (int i = 0; i < COLS; i++) w[i] = rnd() * scales[s] + (rep & 1) * scales[s];

            quant_row_from_f32(SL_DTYPE_Q8, w, buf, COLS);
            quant_row_to_f32(SL_DTYPE_Q8, buf, back, COLS);
            for (int b = 0; b < NB; b++) {
                float d = sl_f16_to_f32(rd16(buf + COLS + 2 * b));
                float amax = 0;
                for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(w[32 * b + i]));
                /* half rounding: relative 2^-11, absolute 2^-25 when the
                 * scale is a half subnormal (amax < ~0.0078) */
                CHECK_NEAR(d, amax / 127, fmax(amax / 127 / 2048, 0x1p-25));
                /* |w - d q| <= d/2, plus what clamping to 127 loses when the
                 * rounded d is below amax/127 (only for subnormal d) */
                double clip = fmax(0.0, amax - 127.0 * d);
                if (s >= 1) CHECK(clip <= d / 2);
                for (int i = 0; i < 32; i++)
                    CHECK_NEAR(back[32 * b + i], w[32 * b + i], d / 2 * 1.0001 + clip);
            }

            quant_row_from_f32(SL_DTYPE_Q4, w, buf, COLS);
            quant_row_to_f32(SL_DTYPE_Q4, buf, back, COLS);
            for (int b = 0; b < NB; b++) {
                float d = sl_f16_to_f32(rd16(buf + COLS / 2 + 2 * b));
                float m = sl_f16_to_f32(rd16(buf + COLS / 2 + 2 * NB + 2 * b));
                float lo = INFINITY;
                for (int i = 0; i < 32; i++) lo = fminf(lo, w[32 * b + i]);
                float eps = fabsf(lo - m) + fabsf(lo) * 1e-6f; /* m's rounding */
                for (int i = 0; i < 32; i++)
                    CHECK_NEAR(back[32 * b + i], w[32 * b + i], d / 2 * 1.0001 + eps);
            }

            /* bf16: relative error <= 2^-9; f16: <= 2^-11 (in normal range) */
            quant_row_from_f32(SL_DTYPE_BF16, w, buf, COLS);
            quant_row_to_f32(SL_DTYPE_BF16, buf, back, COLS);
            for (int i = 0; i < COLS; i++)
                CHECK_NEAR(back[i], w[i], fabsf(w[i]) / 256);
            if (s >= 2) {
                quant_row_from_f32(SL_DTYPE_F16, w, buf, COLS);
                quant_row_to_f32(SL_DTYPE_F16, buf, back, COLS);
                for (int i = 0; i < COLS; i++)
                    CHECK_NEAR(back[i], w[i], fabsf(w[i]) / 1024);
            }
            quant_row_from_f32(SL_DTYPE_F32, w, buf, COLS);
            quant_row_to_f32(SL_DTYPE_F32, buf, back, COLS);
            CHECK(memcmp(back, w, sizeof w) == 0);
        }
    }
}

/* bf16-representable input round-trips bit-exactly (bf16 checkpoints are
 * stored losslessly), and f32 -> bf16 rounds to nearest even. */
TEST(bf16_exact_and_rne) {
    float w[64], back[64];
    uint8_t buf[128];
    for (int i = 0; i < 64; i++) w[i] = sl_bf16_to_f32(sl_f32_to_bf16(rnd() * 10));
    quant_row_from_f32(SL_DTYPE_BF16, w, buf, 64);
    quant_row_to_f32(SL_DTYPE_BF16, buf, back, 64);
    CHECK(memcmp(back, w, sizeof w) == 0);
    /* 1 + 2^-8 is halfway between bf16 1.0 and 1.0078125: ties to even 1.0;
     * 1 + 3*2^-8 is halfway between 1.0078125 and 1.015625: to even 1.015625 */
    float t[2] = {1.0f + 1.0f / 256, 1.0f + 3.0f / 256};
    quant_row_from_f32(SL_DTYPE_BF16, t, buf, 2);
    CHECK_EQ_INT(rd16(buf), 0x3f80);
    CHECK_EQ_INT(rd16(buf + 2), 0x3f82);
}

TEST(deterministic) {
    float w[128];
    for (int i = 0; i < 128; i++) w[i] = rnd();
    for (int dt = 0; dt < SL_DTYPE_COUNT; dt++) {
        uint8_t a[512], b[512];
        memset(a, 0xaa, sizeof a);
        memset(b, 0x55, sizeof b);
        quant_row_from_f32(dt, w, a, 128);
        quant_row_from_f32(dt, w, b, 128);
        CHECK(memcmp(a, b, quant_row_bytes(dt, 128)) == 0);
    }
}

/* Rows are self-contained: quantizing a 2-row buffer row by row equals the
 * bytes of each row quantized alone at its row offset. */
TEST(rows_self_contained) {
    float w[2][64];
    for (int r = 0; r < 2; r++)
        for (int i = 0; i < 64; i++) w[r][i] = rnd() * (float)(r + 1);
    uint64_t rb = quant_row_bytes(SL_DTYPE_Q4, 64);
    uint8_t both[80], one[40];
    for (int r = 0; r < 2; r++) quant_row_from_f32(SL_DTYPE_Q4, w[r], both + r * rb, 64);
    quant_row_from_f32(SL_DTYPE_Q4, w[1], one, 64);
    CHECK(memcmp(both + rb, one, rb) == 0);
}

/* Non-finite input: detected by quant_row_is_finite; quantizing it anyway is
 * defined (no UB, no NaN scale): NaN -> q 0, Inf saturates the scale. */
TEST(non_finite) {
    float w[32];
    for (int i = 0; i < 32; i++) w[i] = (float)i;
    CHECK(quant_row_is_finite(w, 32));
    w[5] = NAN;
    CHECK(!quant_row_is_finite(w, 32));
    uint8_t q8[34], q4[20];
    quant_row_from_f32(SL_DTYPE_Q8, w, q8, 32);
    CHECK_EQ_INT((int8_t)q8[5], 0);
    CHECK_EQ_INT(rd16(q8 + 32), 0x33d0); /* NaN ignored in max|w| */
    quant_row_from_f32(SL_DTYPE_Q4, w, q4, 32);
    CHECK_EQ_INT(q4[5] & 0x0f, 0);
    CHECK_EQ_INT(rd16(q4 + 16), 0x4022);

    w[5] = INFINITY;
    CHECK(!quant_row_is_finite(w, 32));
    quant_row_from_f32(SL_DTYPE_Q8, w, q8, 32);
    CHECK_EQ_INT(rd16(q8 + 32), 0x7bff); /* saturated, finite */
    CHECK_EQ_INT((int8_t)q8[5], 127);
    float back[32];
    quant_row_to_f32(SL_DTYPE_Q8, q8, back, 32);
    for (int i = 0; i < 32; i++) CHECK(isfinite(back[i]));

    /* all-NaN block: zero scale and minimum */
    for (int i = 0; i < 32; i++) w[i] = NAN;
    quant_row_from_f32(SL_DTYPE_Q4, w, q4, 32);
    CHECK_EQ_INT(rd16(q4 + 16), 0);
    CHECK_EQ_INT(rd16(q4 + 18), 0);

    /* finite but beyond half range: scale saturates instead of Inf */
    for (int i = 0; i < 32; i++) w[i] = (i & 1) ? 1e10f : -1e10f;
    quant_row_from_f32(SL_DTYPE_Q4, w, q4, 32);
    CHECK_EQ_INT(rd16(q4 + 16), 0x7bff);
    CHECK_EQ_INT(rd16(q4 + 18), 0xfbff);
    quant_row_to_f32(SL_DTYPE_Q4, q4, back, 32);
    for (int i = 0; i < 32; i++) CHECK(isfinite(back[i]));
}

TEST_MAIN()
