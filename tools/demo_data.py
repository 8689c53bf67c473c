#!/usr/bin/env python3
"""demo_data.py — the data recipe and tokenizer of the embedded demo model.

What it is: step 1 of reproducing models/demo (step 2 is tools/train_demo.py
on a GPU machine). It dumps the King James Bible from the Debian package
bible-kjv-text (public domain; `apt-get install bible-kjv bible-kjv-text`,
the `bible` program prints the text), cuts it into chapters, splits them
deterministically into train and held-out, trains a byte-level BPE tokenizer
(HF `tokenizers`) on the train chapters only, and writes:

  models/demo/tokenizer.json, models/demo/tokenizer_config.json
  tests/fixtures/demo/heldout.txt      the held-out chapters, plain text
  OUT/train.u16   train token ids (uint16 LE), chapters separated by
                  <|endoftext|> (id 0)
  OUT/heldout.u16 ids of heldout.txt (encode, no special tokens added)
  OUT/valid.u16   ids of the validation chapters (early stopping only;
                  neither trained on nor reported)
  OUT/meta.json   counts, hashes, package versions

What it is not: it trains no model and needs no torch.

Invariants:
  * chapter text = "<Book> <n>\\n\\n" + one verse per line (no verse
    numbers) + "\\n"; chapter i (0-based, Bible order, 1189 chapters) is
    held out iff i % 40 == 20, a validation chapter iff i % 40 == 0, and a
    train chapter otherwise;
  * the output is deterministic: rerunning gives byte-identical files.

Usage: python3 tools/demo_data.py --out .demo_data
"""
import argparse
import hashlib
import json
import os
import re
import subprocess
import sys

from array import array
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

VOCAB = 4096
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
HELDOUT_MOD, HELDOUT_REM, VALID_REM = 40, 20, 0
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def dump_bible():
    out = subprocess.run(["bible", "-l100000", "Gen1:1-Rev22:21"],
                         check=True, capture_output=True, text=True).stdout
    chapters, cur = [], None
    for line in out.split("\n"):
        if not line.strip():
            continue
        m = re.match(r"^  (\d+) (.*)$", line)
        if m:
            assert cur is not None, line
            cur[1].append(m.group(2).strip())
        else:
            assert re.match(r"^\S.* \d+$", line), repr(line)
            cur = (line.strip(), [])
            chapters.append(cur)
    assert len(chapters) == 1189, len(chapters)
    return [f"{h}\n\n" + "\n".join(v) + "\n" for h, v in chapters]


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".demo_data")
    ap.add_argument("--model-dir", default="models/demo")
    ap.add_argument("--fixture-dir", default="tests/fixtures/demo")
    a = ap.parse_args()
    for d in (a.out, a.model_dir, a.fixture_dir):
        os.makedirs(d, exist_ok=True)
    chapters = dump_bible()
    train = [c for i, c in enumerate(chapters)
             if i % HELDOUT_MOD not in (HELDOUT_REM, VALID_REM)]
    valid = [c for i, c in enumerate(chapters) if i % HELDOUT_MOD == VALID_REM]
    held = [c for i, c in enumerate(chapters) if i % HELDOUT_MOD == HELDOUT_REM]

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                 use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, min_frequency=2, special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False)
    tok.train_from_iterator(train, trainer=trainer)
    for i, s in enumerate(SPECIALS):
        assert tok.token_to_id(s) == i, s
    assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
    tok.save(os.path.join(a.model_dir, "tokenizer.json"))
    tc = {
        "added_tokens_decoder": {
            str(i): {"content": s, "lstrip": False, "normalized": False,
                     "rstrip": False, "single_word": False, "special": True}
            for i, s in enumerate(SPECIALS)},
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "model_max_length": 512,
        "pad_token": "<|endoftext|>",
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    with open(os.path.join(a.model_dir, "tokenizer_config.json"), "w") as f:
        json.dump(tc, f, indent=2)
        f.write("\n")

    ids = array("H")
    for c in train:
        ids.extend(tok.encode(c).ids)
        ids.append(0)
    held_text = "".join(held)
    hids = array("H", tok.encode(held_text).ids)
    assert sys.byteorder == "little"
    with open(os.path.join(a.out, "train.u16"), "wb") as f:
        ids.tofile(f)
    with open(os.path.join(a.out, "heldout.u16"), "wb") as f:
        hids.tofile(f)
    vids = array("H")
    for c in valid:
        vids.extend(tok.encode(c).ids)
        vids.append(0)
    with open(os.path.join(a.out, "valid.u16"), "wb") as f:
        vids.tofile(f)
    hp = os.path.join(a.fixture_dir, "heldout.txt")
    with open(hp, "w", encoding="utf-8") as f:
        f.write(held_text)
    pkg = subprocess.run(["dpkg-query", "-W", "bible-kjv-text", "bible-kjv"],
                         capture_output=True, text=True).stdout.split("\n")
    import tokenizers
    meta = {
        "source": "Debian bible-kjv-text via `bible -l100000 Gen1:1-Rev22:21`",
        "packages": [p for p in pkg if p],
        "tokenizers": tokenizers.__version__,
        "chapters": len(chapters), "train_chapters": len(train),
        "heldout_chapters": len(held), "valid_chapters": len(valid),
        "heldout_rule": f"chapter index % {HELDOUT_MOD} == {HELDOUT_REM}",
        "train_tokens": len(ids), "heldout_tokens": len(hids),
        "valid_tokens": len(vids),
        "train_chars": sum(map(len, train)), "heldout_chars": len(held_text),
        "sha256": {"tokenizer.json": sha(os.path.join(a.model_dir, "tokenizer.json")),
                   "heldout.txt": sha(hp),
                   "train.u16": sha(os.path.join(a.out, "train.u16"))},
    }
    with open(os.path.join(a.out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    print(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
