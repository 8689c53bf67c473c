/*
 * tokenizer.h — HuggingFace tokenizer.json byte-level BPE (GPT-2, Qwen2/3
 * style): loading, encoding like HF `encode(text, add_special_tokens=False)`,
 * decoding and incremental (streaming) detokenization.
 *
 * What it is: the internal interface of src/tokenizer.c (loading, lookup,
 * decoding) and src/tokenizer_bpe.c (the encode pipeline: added-token split,
 * NFC, regex pre-tokenization, byte-level map, BPE by merge rank). The public
 * sl_tokenizer_* / sl_tokenize / sl_token_* / sl_detok_* functions of
 * sluice.h are thin wrappers over these.
 *
 * What it is not: a general HF tokenizers port. Supported: model BPE (no
 * dropout, no byte_fallback, no subword prefix/suffix); normalizer null, NFC
 * or a Sequence of NFC; pre_tokenizer ByteLevel, or a Sequence of
 * Split(Regex|String, Isolated, invert false) steps ending in one ByteLevel;
 * decoder ByteLevel. The post_processor is ignored (special tokens are never
 * added). Anything else is rejected at load with SL_ERR_UNSUPPORTED naming it.
 *
 * Invariants: ids are dense, 0 <= id < n_vocab, each with one token; a loaded
 * tokenizer is immutable, so every function taking a const tokenizer is safe
 * to call from several threads at once. Input text must be valid UTF-8 (HF's
 * Rust API takes a str, so invalid UTF-8 has no reference behaviour): it is
 * rejected with SL_ERR_ARG "text is not valid UTF-8 at byte N".
 */
#ifndef SL_TOKENIZER_H
#define SL_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "sluice.h"

/* Parses a tokenizer.json held in json[0..len) (need not be NUL-terminated;
 * not retained). On success *out owns everything (free with
 * sl_tokenizer_free). Errors: SL_ERR_FORMAT for malformed JSON or an
 * inconsistent vocabulary (missing model/vocab, duplicate tokens or ids, ids
 * not dense, a merge naming an unknown token), SL_ERR_UNSUPPORTED for a
 * valid but unsupported component (named in the message), SL_ERR_NOMEM. */
int tokenizer_load_json(const char *json, size_t len, struct sl_tokenizer **out);

/* Flags of tokenizer_encode. */
#define TOKENIZER_SPLIT_SPECIAL 1 /* special tokens in the text are plain text
                                     (HF split_special_tokens=True); added
                                     tokens that are not special still match */

/* Encodes text[0..len) like HF encode(text, add_special_tokens=False), with
 * flags (0 or TOKENIZER_SPLIT_SPECIAL). On success *ids is malloc'ed (free()
 * or sl_free(); NULL is never returned, even for 0 ids) with *n_ids ids.
 * Errors: SL_ERR_ARG for NULL arguments or invalid UTF-8, SL_ERR_NOMEM,
 * SL_ERR_UNSUPPORTED if PCRE2 gives up on a pathological input (match
 * limit). Thread safe on a shared tokenizer. */
int tokenizer_encode(const struct sl_tokenizer *tok, const char *text,
                     size_t len, int flags, int32_t **ids, size_t *n_ids);

/* Decodes ids into text like HF decode(ids, skip_special_tokens=skip): the
 * tokens' bytes concatenated, invalid UTF-8 replaced by U+FFFD per maximal
 * subpart (Rust's from_utf8_lossy). *text is malloc'ed and NUL-terminated,
 * *len excludes the NUL. SL_ERR_RANGE for an id outside [0, n_vocab). */
int tokenizer_decode(const struct sl_tokenizer *tok, const int32_t *ids,
                     size_t n, int skip_special, char **text, size_t *len);

/* Token classes. Both return 0 for an out-of-range id. An added token is one
 * listed in tokenizer.json's added_tokens (matched as a whole in text);
 * special ones are those with "special": true (<|im_end|>, ...), which chat
 * front ends usually hide when printing. */
int tokenizer_is_added(const struct sl_tokenizer *tok, int32_t id);
int tokenizer_is_special(const struct sl_tokenizer *tok, int32_t id);

/* Number of added tokens and the id of the i-th (0 <= i < n, in
 * tokenizer.json order; -1 for i out of range). */
int32_t tokenizer_n_added(const struct sl_tokenizer *tok);
int32_t tokenizer_added_id(const struct sl_tokenizer *tok, int32_t i);

#endif /* SL_TOKENIZER_H */
