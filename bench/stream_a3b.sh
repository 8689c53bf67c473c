#!/usr/bin/env bash
# a3b-cpu-stream (docs/benchmarks.md): sluice decode speed with the routed
# experts streamed from disk under a memory cgroup whose limit is at most
# half the expert bytes. Not a test. Writes one JSON line per configuration
# (sluice bench --json, plus the cgroup's peak usage) to OUT.
#
# Usage: bench/stream_a3b.sh MODEL LIMIT_BYTES OUT [BUILD] [PROMPT] [GEN]
#   MODEL: build/sluice synth --preset a3b-cpu --layers 16 -o /tmp/a3b16.sluice
#   (the v1 memory cgroup at /sys/fs/cgroup/memory must be writable: root)
# Configurations: CONFIGS="name:flags;name:flags" overrides the default list.
set -eu
model=$1 limit=$2 out=$3 build=${4:-build} prompt=${5:-32} gen=${6:-32}
cg=/sys/fs/cgroup/memory/sluice_stream_bench
mkdir -p "$cg"
echo "$limit" > "$cg/memory.limit_in_bytes"
default_configs="lfu-256M:--ram-cache 256M;lfu-512M:--ram-cache 512M;lfu-768M:--ram-cache 768M;\
lru-512M:--ram-cache 512M --cache-policy lru;lfu-512M-nopf:--ram-cache 512M --prefetch 0;\
lru-256M:--ram-cache 256M --cache-policy lru;mmap:--io mmap"
IFS=';' read -ra configs <<< "${CONFIGS:-$default_configs}"
: > "$out"
for c in "${configs[@]}"; do
  name=${c%%:*} flags=${c#*:}
  # cold start: drop the model's pages from the page cache
  python3 -c "import os,sys; fd=os.open(sys.argv[1], os.O_RDONLY); \
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)" "$model"
  echo 0 > "$cg/memory.max_usage_in_bytes" 2>/dev/null || true
  echo "== $name: $flags" >&2
  # shellcheck disable=SC2086
  json=$(sh -c 'echo $$ > '"$cg"'/cgroup.procs; exec "$@"' sh \
    "$build/sluice" bench -m "$model" --prompt "$prompt" --gen "$gen" --reps 1 --warmup 0 \
    -t 2 --scenario a3b-cpu-stream --json $flags) || { echo "$name failed" >&2; continue; }
  peak=$(cat "$cg/memory.max_usage_in_bytes")
  echo "{\"config\":\"$name\",\"flags\":\"$flags\",\"cgroup_limit\":$limit,\"cgroup_peak\":$peak,\"bench\":$json}" >> "$out"
done
