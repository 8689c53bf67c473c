# sluice — one hand-written Makefile. `make help` lists the targets.
# Sources are found by wildcard: src/*.c and src/cpu/*.c form the library;
# files named *_avx2.c / *_avx512.c get their ISA flags (chosen at run time);
# tools/*.c are programs (tools/sluice*.c link into build/sluice*),
# tests/test_*.c each become one test binary, bench/*.c one bench binary.

CC      ?= cc
BUILD   ?= build
OPT     ?= -O2
CFLAGS  ?=
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wno-unused-parameter \
           -fno-strict-aliasing -pthread -g $(OPT) -Iinclude -Isrc \
           -I/usr/include/cjson
LDLIBS  += -lcjson -lpcre2-8 -lutf8proc -lpthread -lm
DEPFLAGS = -MMD -MP

ISA_avx2   = -mavx2 -mfma -mf16c
ISA_avx512 = -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c

LIB_SRC  := $(wildcard src/*.c src/cpu/*.c)
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
LIB      := $(BUILD)/libsluice.a
TOOL_SRC := $(wildcard tools/*.c)
TOOL_MAIN:= $(wildcard tools/sluice*.c)
TOOL_LIB := $(filter-out $(TOOL_MAIN),$(TOOL_SRC))
TOOL_LIB_OBJ := $(TOOL_LIB:%.c=$(BUILD)/%.o)
TOOLS    := $(TOOL_MAIN:tools/%.c=$(BUILD)/%)
TEST_SRC := $(wildcard tests/test_*.c)
TESTS    := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
BENCH_SRC:= $(wildcard bench/*.c)
BENCHES  := $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)
DEFAULT_MODEL := $(BUILD)/default.sluice

# all: the library, the CLI and the embedded default model
all: $(LIB) $(TOOLS) $(DEFAULT_MODEL)

$(BUILD)/%_avx2.o: %_avx2.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(ISA_avx2) $(DEPFLAGS) -c $< -o $@
$(BUILD)/%_avx512.o: %_avx512.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(ISA_avx512) $(DEPFLAGS) -c $< -o $@
$(BUILD)/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(DEPFLAGS) -c $< -o $@

$(LIB): $(LIB_OBJ)
	@mkdir -p $(@D)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/sluice%: $(BUILD)/tools/sluice%.o $(TOOL_LIB_OBJ) $(LIB)
	$(CC) $(CFLAGS) $^ $(LDLIBS) -o $@
$(BUILD)/sluice: $(BUILD)/tools/sluice.o $(TOOL_LIB_OBJ) $(LIB)
	$(CC) $(CFLAGS) $^ $(LDLIBS) -o $@

$(BUILD)/tests/%: $(BUILD)/tests/%.o $(LIB)
	$(CC) $(CFLAGS) $^ $(LDLIBS) -o $@
$(BUILD)/bench/%: $(BUILD)/bench/%.o $(LIB)
	$(CC) $(CFLAGS) $^ $(LDLIBS) -o $@

# The embedded default model: a small qwen3_moe with seeded random weights,
# written deterministically by `sluice synth` (replaced later by a trained one).
$(DEFAULT_MODEL): $(BUILD)/sluice tests/fixtures/tokenizer/gpt2style/tokenizer.json
	$(BUILD)/sluice synth --preset demo --tokenizer tests/fixtures/tokenizer/gpt2style/tokenizer.json -o $@.tmp && mv $@.tmp $@

# test: build everything and run the whole suite (tests/run.sh)
test: all $(TESTS)
	tests/run.sh $(BUILD)

# bench: matvec bandwidth and decode tok/s (bench/run.sh; not a test)
bench: all $(BENCHES)
	bench/run.sh $(BUILD)

# asan: the suite under AddressSanitizer + UndefinedBehaviorSanitizer
asan:
	$(MAKE) BUILD=build/asan OPT=-O1 \
	  CFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" \
	  LDFLAGS="-fsanitize=address,undefined" test

# format: clang-format every C source in place
format:
	clang-format -i include/*.h src/*.[ch] src/cpu/*.[ch] tools/*.c tests/*.[ch] bench/*.c

# clean: remove every build output
clean:
	rm -rf build

help:
	@grep -B1 -E '^[a-z-]+:' Makefile | grep '^#' | sed 's/^# //'

.PHONY: all test bench asan format clean help
.SECONDARY:
-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
