"""CLIP's byte-level BPE tokenizer, giving exactly OpenAI's token ids, offline.

A re-implementation of `clip/simple_tokenizer.py` and `clip.tokenize` from openai/CLIP, because the
text encoder's weights only make sense for ids produced by that exact pipeline: ftfy `fix_text`,
HTML unescaping (twice), whitespace collapsing, lower-casing, CLIP's pre-tokenisation regex, then
BPE over UTF-8 bytes mapped to printable characters, with `</w>` marking the end of a word.
`transformers.CLIPTokenizer` (checked against transformers 5.24, where it is backed by the
`tokenizers` library) normalises with NFC, whitespace collapsing and lower-casing only. Without ftfy
and HTML unescaping its ids differ on HTML entities (`&amp;`), curly quotes, mojibake, ligatures
(`ﬁ`), full-width and control characters; its pre-tokenisation pattern lacks OpenAI's IGNORECASE
flag (`'ſ` splits differently); and it pads with EOT (49407, with an attention mask) where
`clip.tokenize` pads with 0. On plain class names and prompts, truncated ones included, the ids
agree (tests/weights/test_weights_hf.py). It is not used here.

The vocabulary ships as package data (identical to OpenAI's file), so nothing is downloaded.
"""

import functools
import gzip
import html
import importlib.resources
import re
from collections.abc import Iterable, Sequence

import ftfy
import numpy as np
import regex

_VOCAB_RESOURCE = "assets/bpe_simple_vocab_16e6.txt.gz"
# OpenAI uses the first 49152 - 256 - 2 merges (after a header line): 256 byte symbols, their 256
# `</w>` forms, the merges and 2 special tokens make the 49408-entry vocabulary of every CLIP.
_NUM_MERGES = 49152 - 256 - 2
_SOT = "<|startoftext|>"
_EOT = "<|endoftext|>"
# CLIP's pre-tokenisation pattern, verbatim (including the special tokens and the IGNORECASE flag).
_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_WHITESPACE = regex.compile(r"\s+")


@functools.cache
def _bytes_to_unicode() -> dict[int, str]:
    """Maps every byte to a printable character, so BPE never sees whitespace or control bytes.

    Printable Latin-1 bytes map to themselves; the other 68 bytes map to 256, 257, ... in order.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    extra = [b for b in range(256) if b not in printable]
    codes = printable + [256 + n for n in range(len(extra))]
    return {b: chr(c) for b, c in zip(printable + extra, codes, strict=True)}


def _clean(text: str) -> str:
    """OpenAI's `basic_clean`, `whitespace_clean` and lower-casing, in that order."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _WHITESPACE.sub(" ", text).strip().lower()


def _load_merges() -> list[tuple[str, str]]:
    resource = importlib.resources.files("tcclip_jax").joinpath(_VOCAB_RESOURCE)
    lines = gzip.decompress(resource.read_bytes()).decode("utf-8").split("\n")
    merges = []
    for lineno, line in enumerate(lines[1 : _NUM_MERGES + 1], start=2):
        pair = tuple(line.split())
        if len(pair) != 2:
            raise ValueError(f"{resource}, line {lineno}: expected a BPE merge 'a b', got {line!r}")
        merges.append(pair)
    if len(merges) != _NUM_MERGES:
        raise ValueError(f"{resource}: expected {_NUM_MERGES} merges, found {len(merges)}")
    return merges


class Tokenizer:
    """Text to CLIP token ids, identical to OpenAI's `SimpleTokenizer` and `clip.tokenize`."""

    def __init__(self) -> None:
        merges = _load_merges()
        self._byte_encoder = _bytes_to_unicode()
        self._byte_decoder = {c: b for b, c in self._byte_encoder.items()}
        symbols = list(self._byte_encoder.values())
        vocab = [
            *symbols,
            *(s + "</w>" for s in symbols),
            *("".join(pair) for pair in merges),
            _SOT,
            _EOT,
        ]
        self._encoder = {token: i for i, token in enumerate(vocab)}
        self._decoder = dict(enumerate(vocab))
        self._ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.sot_token: int = self._encoder[_SOT]
        self.eot_token: int = self._encoder[_EOT]
        # Per instance, so the cache dies with the tokenizer.
        self._bpe = functools.lru_cache(maxsize=1 << 16)(self._bpe_uncached)

    @property
    def vocab_size(self) -> int:
        return len(self._decoder)

    def _bpe_uncached(self, word: str) -> tuple[str, ...]:
        """Applies merges in rank order to one pre-token (already mapped to byte symbols)."""
        if word in (_SOT, _EOT):  # OpenAI seeds its BPE cache with these, so they stay whole.
            return (word,)
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = {(a, b) for a, b in zip(parts, parts[1:], strict=False)}
            best = min(pairs, key=lambda pair: self._ranks.get(pair, float("inf")))
            if best not in self._ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return tuple(parts)

    def encode(self, text: str) -> list[int]:
        """BPE ids of `text`, without SOT/EOT."""
        ids = []
        for piece in _PATTERN.findall(_clean(text)):
            word = "".join(self._byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self._encoder[token] for token in self._bpe(word))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, as OpenAI's: each `</w>` becomes a space, special ids spell themselves."""
        tokens = []
        for i in ids:
            if int(i) not in self._decoder:
                raise ValueError(f"token id {i} is outside the vocabulary [0, {self.vocab_size})")
            tokens.append(self._decoder[int(i)])
        data = bytearray(self._byte_decoder[c] for c in "".join(tokens))
        return data.decode("utf-8", errors="replace").replace("</w>", " ")

    def __call__(
        self, texts: str | Sequence[str], context_length: int = 77, truncate: bool = False
    ) -> np.ndarray:
        """int32 [len(texts), context_length]: SOT, ids, EOT, then zeros.

        A text longer than the context raises, or with `truncate` keeps its first
        `context_length - 1` tokens (SOT included) and ends with EOT, as `clip.tokenize` does.
        """
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2 (SOT and EOT), got {context_length}")
        if isinstance(texts, str):
            texts = [texts]
        result = np.zeros((len(texts), context_length), np.int32)
        for row, text in enumerate(texts):
            tokens = [self.sot_token, *self.encode(text), self.eot_token]
            if len(tokens) > context_length:
                if not truncate:
                    raise ValueError(
                        f"text {text!r} has {len(tokens)} tokens (SOT and EOT included), more than"
                        f" context_length={context_length}; shorten it or pass truncate=True"
                    )
                tokens = [*tokens[: context_length - 1], self.eot_token]
            result[row, : len(tokens)] = tokens
        return result


@functools.cache
def get_tokenizer() -> Tokenizer:
    """The shared tokenizer (building it reads and indexes 49k merges, so do it once)."""
    return Tokenizer()


def normalize_classname(name: str) -> str:
    """Class name as TC-CLIP prompts it: `ApplyEyeMakeup` -> `Apply Eye Makeup`, `a_b` -> `a b`.

    A space goes before every ASCII capital and the result is stripped, then `_` becomes a space
    (after the strip, as TC-CLIP does; the tokenizer collapses the extra whitespace anyway).
    """
    return re.sub(r"([A-Z])", r" \1", name).strip().replace("_", " ")


def tokenize_prompts(
    classnames: Sequence[str],
    template: str = "a photo of a {}.",
    context_length: int = 30,
    normalize: bool = True,
    truncate: bool = False,
) -> np.ndarray:
    """int32 [len(classnames), context_length] ids of `template` filled with each class name."""
    if isinstance(classnames, str):
        raise TypeError(f"classnames must be a sequence of names, not the string {classnames!r}")
    if len(classnames) == 0:
        raise ValueError("classnames is empty: need at least one class name")
    if template.count("{}") != 1:
        raise ValueError(f"template must contain exactly one '{{}}' placeholder, got {template!r}")
    prompts = []
    for index, raw in enumerate(classnames):
        name = normalize_classname(raw) if normalize else raw
        if not name.strip():
            raise ValueError(f"class name {index} ({raw!r}) is empty")
        prompts.append(template.replace("{}", name))
    return get_tokenizer()(prompts, context_length=context_length, truncate=truncate)


def trim_padding(tokens: np.ndarray) -> np.ndarray:
    """Drop the padding columns after the longest prompt's EOT: [C, L] -> [C, max(EOT) + 1].

    Exact for CLIP's causal text tower: a position attends only to itself and earlier positions,
    so the rows up to each prompt's EOT (the only rows read) never see the padding. It saves the
    text tower most of its work (an "a photo of a {}." prompt is ~10 of 30 or 77 tokens).
    """
    tokens = np.asarray(tokens)
    return tokens[:, : int(tokens.argmax(axis=-1).max()) + 1]
