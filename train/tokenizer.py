"""Tokenizers: text <-> integer ids, behind one small interface.

A tokenizer also says how many UTF-8 bytes each token stands for (``token_bytes``), so the
validation loss can be reported in bits per byte whatever the vocabulary: bpb is the one
number that stays comparable across tokenizers.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Tokenizer(Protocol):
    """What the data pipeline needs from a tokenizer."""

    name: str  # enters the cache key; change it when the encoding changes
    vocab_size: int
    eos_id: int  # the separator put between documents when packing

    def encode(self, text: str) -> np.ndarray:
        """``text`` -> ids ``[N]`` (an unsigned integer array)."""
        ...

    def decode(self, ids: np.ndarray | list[int]) -> str:
        """ids ``[N]`` -> text."""
        ...

    def token_bytes(self) -> np.ndarray:
        """``[vocab_size]`` int64: the number of UTF-8 bytes each token stands for."""
        ...


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocab 256, nothing to train, nothing to download.

    The separator is byte 0 (NUL), which does not occur in text files, so it marks document
    boundaries without a 257th token. Every token, the separator included, is one byte.
    """

    name = "bytes"
    vocab_size = 256
    eos_id = 0

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()

    def decode(self, ids: np.ndarray | list[int]) -> str:
        return bytes(np.asarray(ids, dtype=np.uint8).tolist()).decode("utf-8", errors="replace")

    def token_bytes(self) -> np.ndarray:
        return np.ones(self.vocab_size, dtype=np.int64)


TOKENIZERS: dict[str, type] = {"bytes": ByteTokenizer}


def get_tokenizer(name: str) -> Tokenizer:
    """The tokenizer registered under ``name``."""
    if name not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {name!r}; known: {sorted(TOKENIZERS)}")
    return TOKENIZERS[name]()
