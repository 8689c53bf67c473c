#!/usr/bin/env python3
"""gen_tokenizer_fixtures.py — writes the tokenizer conformance fixtures.

What it is: the one script that produces tests/fixtures/tokenizer/ from the
reference implementation, the HuggingFace `tokenizers` library:
  qwen3/tokenizer.json.gz, qwen3/tokenizer_config.json  (copied from
      /work/shared/tokenizers/qwen3, the JSON gzip -9'd, mtime 0)
  gpt2style/tokenizer.json   a small GPT-2 style byte-level BPE (vocab 2048,
      <|endoftext|>=0, <|im_start|>=1, <|im_end|>=2) trained here on the
      Debian license texts plus generated multilingual lines
  */cases.jsonl              one JSON object per line:
      {"text": s, "ids": [...], "decoded": d}   ids = encode(s,
          add_special_tokens=False), d = decode(ids, skip_special_tokens=False)
      {"decode_ids": [...], "decoded": d}       decode-only cases (random ids,
          multibyte characters split across tokens, invalid UTF-8 -> U+FFFD)
      A string that holds U+0000 is written as "text_hex"/"decoded_hex"
      (hex of its UTF-8) so that C string parsers can read it.
What it is not: run by `make test` (the fixtures are committed; this needs
the `tokenizers` package and is deterministic: rerun and diff).

Usage: python3 tests/gen/gen_tokenizer_fixtures.py [--src DIR] [--out DIR]
"""
import argparse
import gzip
import json
import os
import random
import shutil
import unicodedata

import tokenizers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LICENSES = ["Apache-2.0", "Artistic", "BSD", "CC0-1.0", "GFDL-1.3", "GPL-2",
            "GPL-3", "LGPL-2.1", "LGPL-3", "MPL-1.1", "MPL-2.0"]


def multilingual_lines():
    """Deterministic non-English training lines so that the small vocab has
    some multibyte merges (the license texts are ASCII)."""
    base = [
        "Le café est très bon, déjà à l'été. Où est la gare ? Ça va très bien.",
        "Die Größe der Straße überrascht. Fünf Bücher über Äpfel und Öl.",
        "El niño comió piña en la montaña. ¿Dónde está el baño? ¡Olé!",
        "Быстрая коричневая лиса прыгает через ленивую собаку. Привет, мир!",
        "Η γρήγορη καφέ αλεπού πηδά πάνω από τον τεμπέλη σκύλο.",
        "我们今天去公园散步，天气很好。你好，世界！中文分词测试。",
        "今日はいい天気ですね。東京に行きます。ありがとうございます。",
        "안녕하세요, 세계! 오늘 날씨가 좋네요.",
        "مرحبا بالعالم. اللغة العربية جميلة.",
        "שלום עולם. עברית היא שפה יפה.",
        "नमस्ते दुनिया। हिंदी एक सुंदर भाषा है।",
        "สวัสดีชาวโลก ภาษาไทยสวยงาม",
        "Emoji 😀 😃 👍🏽 👨‍👩‍👧‍👦 ❤️ 🇫🇷 🎉",
        "def main():\n    print('hello world')\n    return 0\n",
        "for (int i = 0; i < n; i++) { sum += a[i] * b[i]; }\n",
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n",
    ]
    rng = random.Random(7)
    out = []
    for k in range(40):
        line = base[:]
        rng.shuffle(line)
        out.append("\n".join(line[: 4 + k % 5]))
    return out


def train_gpt2style(out_path):
    texts = []
    for name in LICENSES:
        with open(os.path.join("/usr/share/common-licenses", name),
                  encoding="utf-8") as f:
            texts.append(f.read())
    texts += multilingual_lines()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                 use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2048, min_frequency=2, special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.save(out_path)
    for i, s in enumerate(SPECIALS):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))
    return tok


def test_strings():
    """Hand-picked cases, then deterministic random ones."""
    s = [
        "", " ", "  ", "a", "A", "é", "\n", "\t", "\r\n", "0", "!", "<", "|",
        "Hello world", "Hello, world!", " leading space", "trailing space ",
        "trailing spaces   ", "  two leading", "multiple   spaces   inside",
        "tab\tseparated\tvalues", "\t\tindented with tabs", "line1\nline2",
        "line1\r\nline2\r\n", "para\n\n\nnext para", "spaces then newline   \n",
        "\n\n\n", " \n \n ", "a\u00a0b (nbsp)", "ideographic\u3000space",
        "em\u2003space", "line\u2028separator",
        "DON'T", "I'LL", "WE'VE", "YOU'RE", "HE'D", "I'M", "IT'S",
        "don't", "i'll", "we've", "you're", "he'd", "i'm", "it's",
        "Don't stop", "rock 'n' roll", "'s", "''", "the dog's bone",
        "12345", "1234567890123", "3.14159", "1,000,000", "2024-01-15",
        "v1.2.3", "0x1F", "1e-9", "+44 20 7946 0958", "½ ¾ ² ³", "٣٤٥ arabic digits",
        "१२३ devanagari digits", "①②③", "Ⅻ roman",
        "café", "cafe\u0301", "naïve", "nai\u0308ve", "Å", "A\u030a",
        "\u212b angstrom sign", "ñ", "n\u0303", "ḱṷṓn", "e\u0301\u0301",
        "\u1e9b\u0323", "한국어", "\u1112\u1161\u11ab", "ﬁ ligature",
        "Ｆｕｌｌｗｉｄｔｈ", "Ǆ dz", "İstanbul", "ß STRASSE",
        "你好，世界！", "我们今天去公园散步。", "日本語のテキストです。",
        "カタカナ ひらがな 漢字", "안녕하세요", "中文English混合text",
        "𠀀𠀁 CJK ext B", "𝕳𝖊𝖑𝖑𝖔 math", "مرحبا بالعالم", "שלום עולם",
        "नमस्ते दुनिया", "สวัสดีชาวโลก", "Привет, мир!", "Γειά σου Κόσμε",
        "Ἀθῆναι", "ქართული", "Հայերեն", "ᚠᛇᚻ runes", "ⴰⵣⵓⵍ",
        "😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇺🇸🇫🇷", "❤️", "✌🏿 peace",
        "family: 👩‍👩‍👧 and 🧑🏻‍💻", "emoji😀inside", "🤖🤖🤖🤖🤖",
        "keycap 1️⃣ #️⃣", "\ufe0f alone", "\u200d zwj alone", "a\u200bb zwsp",
        "hi<|im_end|>\n<|im_start|>user", "<|im_start|>system\nYou are helpful.<|im_end|>\n",
        "<|endoftext|>", "<|endoftext|><|endoftext|>", "x<|endoftext|>y",
        " <|im_end|> ", "<|im_end", "<|im_end|", "<||im_end|>", "<<|im_start|>>",
        "<|im_start|>assistant\n<think>\n\n</think>\n\nHello<|im_end|>",
        "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>",
        "<|fim_prefix|>def f(<|fim_suffix|>):<|fim_middle|>",
        "# Title\n\n## Subtitle\n\n- item 1\n- item 2\n\n**bold** _it_ `code`",
        "| a | b |\n|---|---|\n| 1 | 2 |", "> quote\n>> nested",
        "[link](https://example.com/path?q=1&r=2#frag)",
        "https://www.example.org/a/b/c.html", "mailto:someone@example.com",
        "ftp://ftp.example.net/pub/file.tar.gz", "C:\\Users\\name\\file.txt",
        "def f(x):\n    return x * 2\n", "int main(void) {\n\treturn 0;\n}\n",
        "fn main() { println!(\"{}\", 1); }", "const x = () => { return [1, 2]; };",
        "SELECT * FROM t WHERE id = 1;", "<div class=\"a\">text</div>",
        "#include <stdio.h>\n", "x += 1; y -= 2; z *= 3;", "a!=b&&c||d",
        "    if (x) {\n        y();\n    }\n", "\"\"\"docstring\"\"\"", "$HOME/.bashrc",
        "{\"key\": [1, 2, {\"n\": null}]}", "λx. x + 1", "∀x ∈ ℝ: x² ≥ 0",
        "→ ← ↑ ↓", "©®™", "…", "—", "–", "«guillemets»", "„Anführung“", "「括弧」",
        "!!!???", "...", "----", "====", "____", "***", "@@@", "###",
        "supercalifragilisticexpialidocious",
        "Pneumonoultramicroscopicsilicovolcanoconiosis",
        "a" * 300, "ab" * 200, " " * 100, "\n" * 50, "\t" * 30,
        "x" + " " * 40 + "y", "word " * 60, "1" * 100, "😀" * 40, "é" * 80,
        "The quick brown fox jumps over the lazy dog.",
        "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG.",
        "Mr. O'Neil's car isn't here; it's Mary's.",
        "e.g. i.e. etc. vs.", "U.S.A.", "Ph.D.", "3pm-5pm", "50%", "$100.00", "€20",
        "\x01\x02 control", "bell\x07", "\x7f del", "\x1b[31mred\x1b[0m",
        "\ufeffBOM start", "\ufffd replacement", "\U0010FFFD private", "\ue000 pua",
    ]
    rng = random.Random(12345)
    pools = [
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "0123456789", " \t\n\r", ".,;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`",
        "éèêëàâäôöûüçñÉÀÇ", "\u0301\u0300\u0308\u0327\u0303",
        "你好世界中文字符测试日本語한국어", "😀👍🏽❤️🎉🤖\u200d🏻",
        "абвгдежзийклмнопрстуфхцчшщыэюя", "αβγδεζηθικλμνξοπρστυφχψω",
        "مرحبابالعالم", "שלוםעולם", "नमस्तेदुनिया", "สวัสดีชาวโลก",
    ]
    for n in range(90):
        k = rng.randint(1, 60)
        chars = []
        for _ in range(k):
            pool = pools[rng.randrange(len(pools))]
            chars.append(pool[rng.randrange(len(pool))])
        if n % 9 == 0:
            chars.insert(rng.randrange(len(chars) + 1),
                         SPECIALS[rng.randrange(3)])
        s.append("".join(chars))
    # Excerpts of real text: a paragraph from each license.
    for name in LICENSES[:6]:
        with open(os.path.join("/usr/share/common-licenses", name),
                  encoding="utf-8") as f:
            body = f.read()
        s.append(body[1000:1600])
    return s


def enc_case(tok, text):
    ids = tok.encode(text, add_special_tokens=False).ids
    return {"text": text, "ids": ids,
            "decoded": tok.decode(ids, skip_special_tokens=False)}


def dec_case(tok, ids):
    return {"decode_ids": ids,
            "decoded": tok.decode(ids, skip_special_tokens=False)}


def hexify(obj):
    for k in ("text", "decoded"):
        if k in obj and "\x00" in obj[k]:
            obj[k + "_hex"] = obj.pop(k).encode("utf-8").hex()
    return obj


def decode_cases(tok, n_vocab, rng):
    out = []
    # Each multibyte string encoded, then decoded from every prefix of ids:
    # cuts characters between tokens.
    for text in ["你好世界", "👨‍👩‍👧‍👦 family", "é\u0301", "𠀀𠀁", "नमस्ते"]:
        ids = tok.encode(text, add_special_tokens=False).ids
        for k in range(1, len(ids) + 1):
            out.append(dec_case(tok, ids[:k]))
    # Single-byte tokens of all 256 bytes in order and reversed: invalid
    # UTF-8 everywhere.
    byte_ids = [tok.token_to_id(c) for c in bytes_to_unicode_chars()]
    out.append(dec_case(tok, byte_ids))
    out.append(dec_case(tok, byte_ids[::-1]))
    for _ in range(40):
        ids = [rng.randrange(n_vocab) for _ in range(rng.randint(1, 30))]
        out.append(dec_case(tok, ids))
    for _ in range(20):
        ids = [byte_ids[rng.randrange(256)] for _ in range(rng.randint(1, 12))]
        out.append(dec_case(tok, ids))
    return out


def bytes_to_unicode_chars():
    bs = (list(range(ord("!"), ord("~") + 1)) +
          list(range(ord("¡"), ord("¬") + 1)) +
          list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]


def write_cases(path, tok, n_vocab, seed):
    rng = random.Random(seed)
    cases = [enc_case(tok, t) for t in test_strings()]
    cases += decode_cases(tok, n_vocab, rng)
    with open(path, "w", encoding="utf-8") as f:
        for c in cases:
            f.write(json.dumps(hexify(c), ensure_ascii=False) + "\n")
    return len(cases)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", default="/work/shared/tokenizers/qwen3")
    ap.add_argument("--out", default=os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "fixtures",
        "tokenizer"))
    args = ap.parse_args()
    qdir = os.path.join(args.out, "qwen3")
    gdir = os.path.join(args.out, "gpt2style")
    os.makedirs(qdir, exist_ok=True)
    os.makedirs(gdir, exist_ok=True)

    src_json = os.path.join(args.src, "tokenizer.json")
    with open(src_json, "rb") as f:
        raw = f.read()
    with open(os.path.join(qdir, "tokenizer.json.gz"), "wb") as f:
        f.write(gzip.compress(raw, compresslevel=9, mtime=0))
    shutil.copyfile(os.path.join(args.src, "tokenizer_config.json"),
                    os.path.join(qdir, "tokenizer_config.json"))
    qwen = Tokenizer.from_str(raw.decode("utf-8"))
    nq = write_cases(os.path.join(qdir, "cases.jsonl"), qwen,
                     qwen.get_vocab_size(with_added_tokens=True), 1)

    gpt = train_gpt2style(os.path.join(gdir, "tokenizer.json"))
    ng = write_cases(os.path.join(gdir, "cases.jsonl"), gpt,
                     gpt.get_vocab_size(with_added_tokens=True), 2)
    print(f"tokenizers {tokenizers.__version__}: qwen3 {nq} cases, "
          f"gpt2style {ng} cases (vocab {gpt.get_vocab_size()})")


if __name__ == "__main__":
    main()
