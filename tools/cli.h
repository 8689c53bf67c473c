/*
 * cli.h — the subcommands of the `sluice` program. tools/sluice.c parses
 * argv[1] and hands the rest to one of these; each is also callable from a
 * test. Contract shared by all: argv[0] is the subcommand's name
 * ("synth"), the return value is the process exit status (0 ok, 2 usage
 * error with the usage on stderr, 1 any other error with one line
 * "sluice <cmd>: <message>" on stderr); stdout carries only requested data.
 */
#ifndef SL_TOOLS_CLI_H
#define SL_TOOLS_CLI_H

#include <stddef.h>
#include <stdint.h>

/* sluice synth --preset NAME [-o OUT] [--layers N] [--experts bf16|q8|q4]
 *              [--dense bf16|q8|f32] [--skew GINI] [--seed S]
 *              [--tokenizer FILE] [--quiet]
 * Writes a synthetic qwen3_moe model (src/synth.h, docs/synth.md). */
int cli_synth(int argc, char **argv);

/* sluice bench -m MODEL ... [--json]: prompt and decode speed
 * (tools/cli_bench.c). */
int cli_bench(int argc, char **argv);

/* sluice perplexity -m MODEL --text-file F [--window N] [--max-tokens N]
 *                   [--kl-ref REF] [-t THREADS] [--json]
 * Perplexity, and KL / top-1 agreement against REF (tools/cli_perplexity.c,
 * docs/quality.md). */
int cli_perplexity(int argc, char **argv);

/* Read bandwidth of path in GB/s with O_DIRECT, n_inflight reads of block
 * bytes (multiple of 4096) at random aligned offsets for about seconds
 * (tools/cli_bench_disk.c). Returns -1 with a message in err on failure. */
double bench_disk_read_gbs(const char *path, int n_inflight, uint64_t block, double seconds,
                           char *err, size_t err_len);

/* sluice export-gguf MODEL.sluice -o OUT.gguf [--tokenizer F] [--quiet]:
 * the model as a GGUF qwen3moe file, same weights (tools/cli_export_gguf.c). */
int cli_export_gguf(int argc, char **argv);

/* sluice export-hf -m MODEL.sluice -o DIR [--dtype bf16|f32] [--shard-size
 * SIZE] [--fused-experts] [--quiet]: the model as a HuggingFace checkpoint,
 * same weights dequantized (tools/cli_export_hf.c). */
int cli_export_hf(int argc, char **argv);

/* sluice serve -m MODEL [--port N] ...: the OpenAI-compatible HTTP server
 * (tools/cli_serve.c, docs/serve.md); runs until SIGINT/SIGTERM. */
int cli_serve(int argc, char **argv);

/* sluice chat -m MODEL [--system TEXT] ...: the interactive terminal chat
 * (tools/cli_chat.c, docs/serve.md). */
int cli_chat(int argc, char **argv);

/* Expert-store flags (tools/cli_store.c): if argv[*i] is one of --ram-cache
 * SIZE, --io direct|buffered|mmap, --cache-policy lru|lfu, --prefetch
 * 0|1|2 (off, auto, always), --expert-profile FILE, --io-threads N,
 * --no-uring, --mlock, --device cpu|cuda|auto, --gpu-cache SIZE|all|auto,
 * --gpu-miss auto|upload|cpu,
 * stores it in *mp (advancing *i past a value) and
 * returns 1; returns 0 for any other flag, -1 (message on stderr) for a bad
 * value. */
struct sl_model_params;
struct sl_model;
struct sl_stats;
int cli_store_flag(const char *cmd, int argc, char **argv, int *i,
                   struct sl_model_params *mp);
/* Prints the expert cache line and its counters (and per layer) on stderr. */
void cli_print_store_stats(const struct sl_model *m, const struct sl_stats *st,
                           int per_layer);

#endif /* SL_TOOLS_CLI_H */
