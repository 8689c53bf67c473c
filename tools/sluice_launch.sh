#!/bin/bash
# tools/sluice_launch.sh — starts the local ranks of a multi-GPU sluice run
# (expert parallelism over NCCL, docs/multi_gpu.md) and waits for them all.
#
#   tools/sluice_launch.sh --gpus N [--sluice PATH] [--logs DIR] -- <sluice args>
#   e.g. tools/sluice_launch.sh --gpus 2 -- bench -m a3b.sluice --device cuda --gpu-cache all
#
# Rank r runs `sluice <args> --nccl-rank r --nccl-world N --nccl-id FILE`
# with CUDA_VISIBLE_DEVICES set to the r-th GPU of $CUDA_VISIBLE_DEVICES (or
# r), FILE a fresh file in a private temporary directory. Rank 0's stdout
# and stderr are this script's; rank r > 0 writes to DIR/rank<r>.out and
# .err (DIR: --logs, default the temporary directory, removed at the end
# unless --logs is given). When one rank exits non-zero the others are
# killed (after 2 s, so they can print their own error first) and the script
# exits with that status. libnccl.so.2 must be loadable: LD_LIBRARY_PATH or
# SLUICE_NCCL_LIB (bench/nccl_bench.sh finds PyTorch's copy).
set -u
N=0
SLUICE=${SLUICE:-}
LOGS=
while [ $# -gt 0 ]; do
  case "$1" in
    --gpus) N=$2; shift 2 ;;
    --sluice) SLUICE=$2; shift 2 ;;
    --logs) LOGS=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "sluice_launch: unknown option $1 (usage: --gpus N [--sluice PATH] [--logs DIR] -- <sluice args>)" >&2; exit 2 ;;
  esac
done
case "$N" in ''|*[!0-9]*) N=0 ;; esac
if [ "$N" -lt 1 ] || [ $# -eq 0 ]; then
  echo "sluice_launch: usage: --gpus N [--sluice PATH] [--logs DIR] -- <sluice args>" >&2
  exit 2
fi
if [ -z "$SLUICE" ]; then
  SLUICE=$(dirname "$0")/../build/sluice
  [ -x "$SLUICE" ] || SLUICE=$(command -v sluice || true)
fi
[ -x "$SLUICE" ] || { echo "sluice_launch: no sluice binary (use --sluice PATH)" >&2; exit 2; }
TMP=$(mktemp -d /tmp/sluice_launch.XXXXXX) || exit 1
[ -n "$LOGS" ] || LOGS=$TMP
mkdir -p "$LOGS"
ID=$TMP/nccl.id
IFS=, read -r -a VIS <<< "${CUDA_VISIBLE_DEVICES:-}"
declare -a PIDS
for ((r = 0; r < N; r++)); do
  dev=${VIS[$r]:-$r}
  if [ "$r" -eq 0 ]; then
    CUDA_VISIBLE_DEVICES=$dev "$SLUICE" "$@" --nccl-rank $r --nccl-world $N --nccl-id "$ID" &
  else
    CUDA_VISIBLE_DEVICES=$dev "$SLUICE" "$@" --nccl-rank $r --nccl-world $N --nccl-id "$ID" \
      > "$LOGS/rank$r.out" 2> "$LOGS/rank$r.err" &
  fi
  PIDS[$r]=$!
done
rc=0
left=$N
while [ $left -gt 0 ]; do
  wait -n -p done_pid 2>/dev/null
  st=$?
  if [ -z "${done_pid:-}" ]; then break; fi # no children left
  left=$((left - 1))
  for ((r = 0; r < N; r++)); do
    [ "${PIDS[$r]:-}" = "$done_pid" ] && PIDS[$r]=
  done
  if [ $st -ne 0 ] && [ $rc -eq 0 ]; then
    rc=$st
    echo "sluice_launch: a rank exited with status $st; stopping the others" >&2
    sleep 2
    for p in "${PIDS[@]}"; do [ -n "$p" ] && kill "$p" 2>/dev/null; done
  fi
  unset done_pid
done
for ((r = 1; r < N; r++)); do
  if [ -s "$LOGS/rank$r.err" ] && [ $rc -ne 0 ]; then
    echo "--- rank $r stderr (tail):" >&2
    tail -5 "$LOGS/rank$r.err" >&2
  fi
done
rm -rf "$TMP"
exit $rc
