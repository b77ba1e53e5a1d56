"""The CLIP BPE tokenizer of MobileCLIP-S2's text tower: texts → (N, 77) token ids, as open_clip makes them.

Production loads Hugging Face's ``tokenizer.json`` (a CLIPTokenizerFast file, from Xenova/mobileclip_s2);
``from_bpe_vocab`` builds the same tokenizer from the vocabulary file that open_clip ships, for machines that
cannot reach the model hub (the tests).

Where the ids still differ from open_clip 3.3.0's: mojibake that ftfy would repair (see ``_FTFY``); a literal
"<|startoftext|>" or "<|endoftext|>" in a text, which is that special token here as in Hugging Face's and
OpenAI's tokenizers (open_clip 3.3 spells its own "<start_of_text>", "<end_of_text>"); and two characters that
open_clip's case-insensitive pattern misreads: "ſ" after an apostrophe (its "'s") and U+0345 (which it drops).
"""

from __future__ import annotations

import gzip
import html
import itertools
import os
import unicodedata
from collections.abc import Sequence

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

CONTEXT_LENGTH = 77
START_ID = 49406
END_ID = 49407
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
# open_clip's padding, and what MobileCLIP-S2's text tower was trained with. That tower has no padding mask (and
# no causal one: MobileCLIP's text config sets causal_masking false), so every one of the 77 positions, pads
# included, is attended to before it pools at the end token: another pad id gives another embedding, and
# the text would no longer land in the space of the image embeddings. Pinned by test_pad_id_is_zero.
PAD_ID = 0
# open_clip: SimpleTokenizer reads lines[1 : 49152 - 256 - 2 + 1] of the vocabulary file (line 0 is a header).
_MERGES = 49152 - 256 - 2


def _ftfy_character_fixes() -> dict[int, str | None]:
    """The character repairs of ``ftfy.fix_text`` (6.x defaults) that a typed query can need, as one
    ``str.translate`` table: removed control characters, Latin ligatures, full/half-width forms, curly quotes.

    open_clip runs ftfy on every text before tokenizing it. We do not depend on ftfy: only its repairs of mojibake
    (text decoded with the wrong codec, such as "cafÃ©"), terminal escape codes and lone surrogates are missing,
    none of which a query typed by a person contains."""
    controls = itertools.chain(
        range(0x09), [0x0B], range(0x0E, 0x20), [0x7F], range(0x206A, 0x2070), [0xFEFF], range(0xFFF9, 0xFFFD)
    )
    table: dict[int, str | None] = dict.fromkeys(controls)
    # ftfy turns "ŉ" into "ʼn", then uncurls the "ʼ".
    ligatures = {"Ĳ": "IJ", "ĳ": "ij", "ŉ": "'n", "Ǳ": "DZ", "ǲ": "Dz", "ǳ": "dz", "Ǆ": "DŽ", "ǅ": "Dž", "ǆ": "dž"}
    ligatures |= {"Ǉ": "LJ", "ǈ": "Lj", "ǉ": "lj", "Ǌ": "NJ", "ǋ": "Nj", "ǌ": "nj"}
    ligatures |= {"ﬀ": "ff", "ﬁ": "fi", "ﬂ": "fl", "ﬃ": "ffi", "ﬄ": "ffl", "ﬅ": "ſt", "ﬆ": "st"}
    table |= {ord(char): text for char, text in ligatures.items()}
    table[0x3000] = " "
    for code in range(0xFF01, 0xFFF0):
        if (standard := unicodedata.normalize("NFKC", chr(code))) != chr(code):
            table[code] = standard
    table |= dict.fromkeys([0x02BC, *range(0x2018, 0x201C)], "'") | dict.fromkeys(range(0x201C, 0x2020), '"')
    return table


_FTFY = _ftfy_character_fixes()


def _clean(text: str) -> str:
    """open_clip's default text cleaning ("lower"): ftfy (the fixes of ``_FTFY``), HTML entities unescaped
    twice, whitespace runs made one space, lower case. A CLIPTokenizerFast file only does NFC, whitespace and
    lower case, so without this a curly apostrophe ("it’s") or "&amp;" would give other ids than the text tower
    was trained on."""
    text = unicodedata.normalize("NFC", text.translate(_FTFY))
    text = html.unescape(html.unescape(text))
    # str.lower rather than the tokenizer's Lowercase, which maps each character alone: only str.lower writes a
    # final sigma ("ΟΔΟΣ" → "οδος").
    return " ".join(text.split()).lower()


def load(path: str | os.PathLike[str]) -> Tokenizer:
    """A CLIP tokenizer from a Hugging Face ``tokenizer.json``, for ``encode``.

    The file's own truncation and padding are switched off: ``encode`` applies open_clip's, so the ids do not
    depend on what the file's producer enabled."""
    tokenizer = Tokenizer.from_file(os.fspath(path))
    found = (tokenizer.token_to_id(START_TOKEN), tokenizer.token_to_id(END_TOKEN))
    if found != (START_ID, END_ID):
        raise ValueError(f"{path}: not a CLIP tokenizer ({START_TOKEN}, {END_TOKEN} have ids {found})")
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def encode(tokenizer: Tokenizer, texts: Sequence[str]) -> np.ndarray:
    """(len(texts), 77) int64 ids, as open_clip's tokenizer gives them: start token, BPE ids, end token, then
    zeros; a longer text keeps its first 75 BPE ids so that the end token stays last."""
    ids = np.full((len(texts), CONTEXT_LENGTH), PAD_ID, dtype=np.int64)
    encodings = tokenizer.encode_batch([_clean(text) for text in texts], add_special_tokens=False)
    for row, encoding in zip(ids, encodings, strict=True):
        tokens = [START_ID, *encoding.ids[: CONTEXT_LENGTH - 2], END_ID]
        row[: len(tokens)] = tokens
    return ids


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) printable stand-in for each byte, the alphabet of the BPE vocabulary."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {b: chr(b) for b in printable} | {b: chr(256 + n) for n, b in enumerate(others)}


def from_bpe_vocab(vocab_gz: str | os.PathLike[str]) -> Tokenizer:
    """The tokenizer Hugging Face's CLIPTokenizerFast is (transformers' ``CLIPConverter``), built from CLIP's
    ``bpe_simple_vocab_16e6.txt.gz``: the vocabulary and ids of open_clip's ``SimpleTokenizer``."""
    with gzip.open(vocab_gz, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _MERGES + 1]]
    alphabet = list(_bytes_to_unicode().values())
    words = [*alphabet, *(char + "</w>" for char in alphabet), *("".join(merge) for merge in merges)]
    vocab = {word: i for i, word in enumerate([*words, START_TOKEN, END_TOKEN])}
    tokenizer = Tokenizer(
        BPE(
            vocab,
            merges,
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix="</w>",
            fuse_unk=False,
            unk_token=END_TOKEN,
        )
    )
    tokenizer.add_special_tokens([START_TOKEN, END_TOKEN])
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    words_pattern = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(words_pattern), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.RobertaProcessing(
        (END_TOKEN, END_ID), (START_TOKEN, START_ID), trim_offsets=False, add_prefix_space=False
    )
    return tokenizer
