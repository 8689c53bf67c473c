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

/* sluice synth --preset NAME [-o OUT] [--layers N] [--experts bf16|q8|q4]
 *              [--dense bf16|q8|f32] [--skew GINI] [--seed S]
 *              [--tokenizer FILE] [--quiet]
 * Writes a synthetic qwen3_moe model (src/synth.h, docs/synth.md). */
int cli_synth(int argc, char **argv);

/* sluice bench -m MODEL ... [--json]: prompt and decode speed
 * (tools/cli_bench.c). */
int cli_bench(int argc, char **argv);

#endif /* SL_TOOLS_CLI_H */
