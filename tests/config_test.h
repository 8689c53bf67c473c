/*
 * config_test.h — checks shared by the tests that feed config.json text to
 * config_parse (test_golden_families.c, test_golden_hybrid.c, test_mla.c):
 * the manifest round trip, one-substitution variants of a JSON text, and a
 * rejection with its message.
 *
 * What it is not: a fixture reader (that is golden.h, which asserts
 * nothing) nor a harness (test.h). Unlike golden.h these helpers CHECK, so
 * a failure is reported at this header's line, with the test's name.
 *
 * Header-only (static functions), like golden.h: each tests/test_*.c is its
 * own binary. Include after test.h. The names are short, not prefixed,
 * because the tests call them in long tables of cases.
 */
#ifndef SLUICE_TESTS_CONFIG_TEST_H
#define SLUICE_TESTS_CONFIG_TEST_H

#include <stdio.h>
#include <string.h>

#include "config.h"
#include "test.h"
#include "util.h"

#define CONFIG_TEST_UNUSED __attribute__((unused))

/* Parses json (a config.json text) into *out, writes its manifest (q4
 * experts, bf16 dense), parses that back and CHECKs that both parses
 * succeed and that the two configs are byte-identical. *out is the first
 * parse, whatever the checks found. */
CONFIG_TEST_UNUSED static void roundtrip(const char *json, struct sl_config *out) {
    struct sl_config a, b;
    CHECK_MSG(config_parse(&a, json, strlen(json)) == SL_OK, "%s", sl_errmsg());
    char *man = NULL;
    size_t len = 0;
    CHECK_EQ_INT(config_to_manifest(&a, SL_DTYPE_Q4, SL_DTYPE_BF16, &man, &len), SL_OK);
    CHECK_MSG(man && config_parse(&b, man, len) == SL_OK, "manifest: %s", sl_errmsg());
    CHECK(memcmp(&a, &b, sizeof a) == 0);
    sl_free(man);
    *out = a;
}

/* src with its first occurrence of from replaced by to, written into out
 * (n bytes, truncated if short); returns out. from must occur in src (a
 * test-table typo is an assertion, not a test failure). */
CONFIG_TEST_UNUSED static const char *subst(char *out, size_t n, const char *src,
                                            const char *from, const char *to) {
    const char *p = strstr(src, from);
    SL_ASSERT(p);
    snprintf(out, n, "%.*s%s%s", (int)(p - src), src, to, p + strlen(from));
    return out;
}

/* CHECKs that config_parse rejects json with status and that the error
 * message contains needle. */
CONFIG_TEST_UNUSED static void expect_reject(const char *json, int status,
                                             const char *needle) {
    struct sl_config c;
    int st = config_parse(&c, json, strlen(json));
    CHECK_MSG(st == status, "status %d, want %d (%s)", st, status, sl_errmsg());
    CHECK_MSG(strstr(sl_errmsg(), needle) != NULL, "message '%s' lacks '%s'", sl_errmsg(),
              needle);
}

#endif /* SLUICE_TESTS_CONFIG_TEST_H */
