# sluice — one hand-written Makefile. `make help` lists the targets.
# Sources are found by wildcard: src/*.c and src/cpu/*.c form the library;
# files named *_avx2.c / *_avx512.c get their ISA flags (chosen at run time);
# tools/*.c are programs (tools/sluice*.c link into build/sluice*),
# tests/test_*.c each become one test binary, bench/*.c one bench binary.

CC      ?= cc
BUILD   ?= build
OPT     ?= -O2
CFLAGS  ?=
# SAN: instrumentation flags of the asan/tsan/fuzz builds, appended to CFLAGS
# (passing CFLAGS itself on a sub-make's command line would drop the flags
# below, -Iinclude included).
SAN     ?=
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wno-unused-parameter \
           -fno-strict-aliasing -pthread -g $(OPT) -Iinclude -Isrc \
           -I/usr/include/cjson $(SAN)
LDLIBS  += -lcjson -lpcre2-8 -lutf8proc -luring -lpthread -lm
# the programs only (sluice serve, sluice chat): HTTP server, line editing
TOOL_LDLIBS = -lmicrohttpd -lreadline
DEPFLAGS = -MMD -MP

ISA_avx2   = -mavx2 -mfma -mf16c
ISA_avx512 = -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c

LIB_SRC  := $(wildcard src/*.c src/cpu/*.c)
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)

# The CUDA backend (src/cuda/*.cu, docs/cuda.md): built when nvcc is found
# (on the PATH or in /usr/local/cuda); NO_CUDA=1 builds the CPU backend only
# (then --device cuda fails with "built without CUDA"). CUARCH picks the
# targets: by default Hopper machine code (sm_90a) plus portable PTX.
ifneq ($(NO_CUDA),1)
NVCC    ?= $(shell command -v nvcc 2>/dev/null || { test -x /usr/local/cuda/bin/nvcc && echo /usr/local/cuda/bin/nvcc; })
endif
CU_SRC  := $(wildcard src/cuda/*.cu)
ifneq ($(strip $(NVCC)),)
ifneq ($(strip $(CU_SRC)),)
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
CUARCH  ?= -gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_80,code=compute_80
NVCCFLAGS ?= -O3 -std=c++17 -lineinfo
CU_OBJ  := $(CU_SRC:%.cu=$(BUILD)/%.o)
LIB_OBJ += $(CU_OBJ)
CFLAGS  += -DSLUICE_CUDA
LDLIBS  += -L$(CUDA_HOME)/lib64 -lcudart_static -ldl -lrt -lstdc++
# NCCL (multi-GPU expert parallelism, docs/multi_gpu.md): where nccl.h is
# found the CUDA objects get -DSLUICE_NCCL; libnccl.so.2 itself is loaded
# with dlopen at the first multi-GPU open, never linked (no binary needs it
# to start). NO_NCCL=1 builds without (--nccl-world then fails with "built
# without NCCL").
ifneq ($(NO_NCCL),1)
NCCL_INC ?= $(patsubst %/nccl.h,%,$(firstword $(wildcard $(CUDA_HOME)/include/nccl.h \
              /usr/local/include/nccl.h /usr/include/nccl.h)))
endif
ifneq ($(strip $(NCCL_INC)),)
NCCL_FLAGS := -DSLUICE_NCCL -I$(NCCL_INC)
endif
endif
endif
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

$(BUILD)/%.o: %.cu
	@mkdir -p $(@D)
	$(NVCC) $(NVCCFLAGS) $(CUARCH) -DSLUICE_CUDA $(NCCL_FLAGS) -Iinclude -Isrc \
	  -Xcompiler -Wall,-Wextra,-Wno-unused-parameter,-fno-strict-aliasing -MMD -MP -c $< -o $@

$(LIB): $(LIB_OBJ)
	@mkdir -p $(@D)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/sluice%: $(BUILD)/tools/sluice%.o $(TOOL_LIB_OBJ) $(LIB)
	$(CC) $(CFLAGS) $^ $(LDLIBS) $(TOOL_LDLIBS) -o $@
$(BUILD)/sluice: $(BUILD)/tools/sluice.o $(TOOL_LIB_OBJ) $(LIB)
	$(CC) $(CFLAGS) $^ $(LDLIBS) $(TOOL_LDLIBS) -o $@

$(BUILD)/tests/%: $(BUILD)/tests/%.o $(LIB)
	$(CC) $(CFLAGS) $^ $(LDLIBS) -o $@
$(BUILD)/bench/%: $(BUILD)/bench/%.o $(LIB)
	$(CC) $(CFLAGS) $^ $(LDLIBS) -o $@

# The embedded default model: the trained demo qwen3_moe committed in
# models/demo (bf16 HF checkpoint; docs/quality.md), converted
# deterministically with q8 experts.
DEMO_HF := $(wildcard models/demo/*.json models/demo/*.safetensors)
$(DEFAULT_MODEL): $(BUILD)/sluice $(DEMO_HF)
	$(BUILD)/sluice convert models/demo -o $@.tmp --experts q8 --quiet && mv $@.tmp $@

# test: build everything and run the whole suite (tests/run.sh)
test: all $(TESTS)
	tests/run.sh $(BUILD)

# test-cuda: the CUDA backend's tests alone (tests/test_cuda.c; skip without a GPU)
test-cuda: $(BUILD)/tests/test_cuda
	$(BUILD)/tests/test_cuda

# bench: matvec bandwidth and decode tok/s (bench/run.sh; not a test)
bench: all $(BENCHES)
	bench/run.sh $(BUILD)

# bench-report: docs/benchmarks.md tables + PNG plots from bench/results/*.json (PYTHON needs matplotlib for plots)
bench-report:
	$(or $(PYTHON),python3) bench/report.py

# asan: the suite under AddressSanitizer + UndefinedBehaviorSanitizer (+ LeakSanitizer)
asan:
	$(MAKE) BUILD=build/asan OPT=-O1 \
	  SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" test

TSAN_TESTS ?= test_threads test_faults
# tsan: the threaded tests (TSAN_TESTS) under ThreadSanitizer, built with clang
tsan:
	$(MAKE) CC=clang BUILD=build/tsan OPT=-O1 SAN="-fsanitize=thread" NO_CUDA=1 \
	  $(TSAN_TESTS:%=build/tsan/tests/%)
	for t in $(TSAN_TESTS); do \
	  TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" build/tsan/tests/$$t || exit 1; \
	done

# Fuzzing (docs/robustness.md): every tests/fuzz/fuzz_*.c is a libFuzzer
# target, built by clang with ASan + UBSan into build/fuzz/.
FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_SECONDS ?= 60
FUZZ_CHECK_SECONDS ?= 4
FUZZ_SAN := -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer \
            -fno-sanitize-recover=all
# fuzz: build every fuzz target and run each for FUZZ_SECONDS (default 60)
fuzz: fuzz-build
	tests/fuzz/run.sh build/fuzz $(FUZZ_SECONDS)

# fuzz-check: each fuzz target over its committed corpus for FUZZ_CHECK_SECONDS (CI)
fuzz-check: fuzz-build
	tests/fuzz/run.sh build/fuzz $(FUZZ_CHECK_SECONDS)

fuzz-build:
	$(MAKE) CC=clang BUILD=build/fuzz OPT=-O1 SAN="$(FUZZ_SAN)" NO_CUDA=1 \
	  $(FUZZ_SRC:tests/fuzz/%.c=build/fuzz/%)
$(BUILD)/fuzz_%: tests/fuzz/fuzz_%.c $(LIB)
	$(CC) $(CFLAGS) -fsanitize=fuzzer $(DEPFLAGS) -MF $@.d $< $(LIB) $(LDLIBS) $(TOOL_LDLIBS) -o $@

# format: clang-format every C source in place
format:
	clang-format -i include/*.h src/*.[ch] src/cpu/*.[ch] tools/*.c tests/*.[ch] bench/*.c

# clean: remove every build output
clean:
	rm -rf build

help:
	@grep -B1 -E '^[a-z-]+:' Makefile | grep '^#' | sed 's/^# //'

.PHONY: all test test-cuda bench bench-report asan tsan fuzz fuzz-check fuzz-build format clean help
.SECONDARY:
-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
