"""Tokenizers: text <-> integer ids, behind one small interface.

A tokenizer also says how many UTF-8 bytes each token stands for (``token_bytes``), so the
validation loss can be reported in bits per byte whatever the vocabulary: bpb is the one
number that stays comparable across tokenizers.

``get_tokenizer(spec)`` (the data option ``tokenizer``, ``--data.tokenizer``) takes

- ``bytes``: UTF-8 bytes as tokens (``ByteTokenizer``, vocab 256; the default);
- a path to a Hugging Face ``tokenizer.json`` (or a folder holding one), e.g. one written
  by ``postformer tokenizer train`` (``HFTokenizer``);
- a Hugging Face hub name such as ``gpt2`` (its ``tokenizer.json``; needs a network or the
  local hub cache).

``postformer tokenizer train --vocab_size 8192 --out tok.json`` trains a byte-level BPE on
a corpus (by default the data module's default corpus, the stdlib's ``.py`` files).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import re
import sys
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

EOT = "<|endoftext|>"
# special tokens taken as the document separator of a tokenizer.json, first match wins
SEPARATORS = (EOT, "<|end_of_text|>", "</s>", "<eos>", "<|eos|>", "[SEP]")
_HUB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


@runtime_checkable
class Tokenizer(Protocol):
    """What the data pipeline needs from a tokenizer.

    Optional, used when present: ``encode_bytes(data: bytes) -> ids [N]`` (the tokenizer
    reads raw bytes; files are then not decoded as text) and ``encode_batch(texts) ->
    list of ids`` (a faster batch encoder).
    """

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
    ``encode_bytes`` takes raw bytes, so a file that is not valid UTF-8 trains as its bytes.
    """

    name = "bytes"
    vocab_size = 256
    eos_id = 0

    def encode(self, text: str) -> np.ndarray:
        return self.encode_bytes(text.encode("utf-8", errors="surrogatepass"))

    def encode_bytes(self, data: bytes) -> np.ndarray:
        """Raw bytes ``[N]`` -> ids ``[N]`` uint8 (the bytes themselves)."""
        return np.frombuffer(data, dtype=np.uint8).copy()

    def decode(self, ids: np.ndarray | list[int]) -> str:
        return bytes(np.asarray(ids, dtype=np.uint8).tolist()).decode("utf-8", errors="replace")

    def token_bytes(self) -> np.ndarray:
        return np.ones(self.vocab_size, dtype=np.int64)


TOKENIZERS: dict[str, type] = {"bytes": ByteTokenizer}


@functools.lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, the alphabet of ``tokenizers``'
    ByteLevel pre-tokenizer: printable Latin-1 bytes map to themselves, the other 68 bytes
    to ``chr(256 + k)`` in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@functools.lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    return {c: b for b, c in byte_to_unicode().items()}


def _byte_level(spec: Any) -> bool:
    """Whether a decoder's json (possibly a Sequence) contains a ByteLevel decoder."""
    if not isinstance(spec, dict):
        return False
    return spec.get("type") == "ByteLevel" or any(_byte_level(d) for d in spec.get("decoders", []))


class HFTokenizer:
    """A Hugging Face ``tokenizers.Tokenizer`` behind the ``Tokenizer`` interface.

    ``vocab_size`` is ``get_vocab_size(with_added_tokens=True)``. Document text never
    yields special tokens (``encode_special_tokens`` is on: a literal ``<|endoftext|>`` in
    a document is encoded as text), and ``encode`` adds no BOS/EOS of its own; the data
    pipeline puts ``eos_id`` (the first of ``SEPARATORS`` in the vocabulary) between
    documents.

    ``token_bytes`` (for bits per byte): a byte-level tokenizer's token strings map back
    through the ByteLevel alphabet (``byte_to_unicode``) to the exact bytes they stand for,
    partial UTF-8 sequences included. The document separator counts as 1 byte, as the byte
    tokenizer's NUL does, so bpb stays comparable with ``bytes``: the mean bytes per token
    of a packed split is (UTF-8 bytes of its texts + separators) / tokens. Other special
    tokens never occur in encoded text and count 0; a non-special added token counts its
    content's UTF-8 length. For tokenizers that are not byte-level (e.g. SentencePiece
    style) the table is an approximation (``▁`` as a space, ``<0xNN>`` as one byte, a
    leading ``##`` dropped) and a warning says so.
    """

    def __init__(self, tok: Any, name: str, eos_token: str | None = None) -> None:
        tok.encode_special_tokens = True
        self._tok = tok
        self.name = name
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        candidates = [eos_token] if eos_token else list(SEPARATORS)
        ids = [tok.token_to_id(t) for t in candidates]
        found = [(t, i) for t, i in zip(candidates, ids) if i is not None]
        if not found:
            raise ValueError(
                f"tokenizer {name!r} has no document separator token (looked for "
                f"{', '.join(candidates)}); add one, e.g. train it with `postformer tokenizer train`"
            )
        self.eos_token, self.eos_id = found[0]
        self._added = tok.get_added_tokens_decoder()  # id -> AddedToken
        self._byte_level = _byte_level(json.loads(tok.to_str()).get("decoder"))
        self._token_bytes: np.ndarray | None = None

    @classmethod
    def from_file(cls, path: str | os.PathLike, name: str | None = None) -> HFTokenizer:
        """Load a ``tokenizer.json``; the name is ``FILE:HASH`` (a hash of its contents)."""
        from tokenizers import Tokenizer as _Tok

        raw = Path(path).read_bytes()
        try:
            tok = _Tok.from_str(raw.decode("utf-8"))
        except Exception as err:  # tokenizers raises plain Exception
            raise ValueError(f"{path} is not a valid tokenizer.json ({_one_line(err)})") from None
        digest = hashlib.sha256(raw).hexdigest()[:12]
        return cls(tok, name or f"{Path(path).name}:{digest}")

    # pickled as json: DataLoader / tokenisation workers get their own copy
    def __getstate__(self) -> dict[str, Any]:
        return {"json": self._tok.to_str(), "name": self.name, "eos_token": self.eos_token}

    def __setstate__(self, state: dict[str, Any]) -> None:
        from tokenizers import Tokenizer as _Tok

        self.__init__(_Tok.from_str(state["json"]), state["name"], state["eos_token"])

    @property
    def backend(self) -> Any:
        """The wrapped ``tokenizers.Tokenizer``."""
        return self._tok

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=np.uint32)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Many texts at once (parallel inside ``tokenizers``) -> one ids array ``[N_i]`` each."""
        encode = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)  # no offsets
        encs = encode(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.uint32) for e in encs]

    def decode(self, ids: np.ndarray | list[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_bytes(self) -> np.ndarray:
        if self._token_bytes is None:
            self._token_bytes = self._compute_token_bytes()
        return self._token_bytes.copy()  # instances are shared (get_tokenizer caches them)

    def id_to_bytes(self, i: int) -> bytes | None:
        """The bytes token ``i`` stands for: a byte-level token's characters mapped back
        through the ByteLevel alphabet (a partial UTF-8 sequence stays partial); an added
        token's content as UTF-8; None when not exact (not byte-level, or no such id)."""
        added = self._added.get(i)
        if added is not None:
            return added.content.encode()
        s = self._tok.id_to_token(i)
        if s is None or not self._byte_level:
            return None
        table = _unicode_to_byte()
        if not all(c in table for c in s):
            return None
        return bytes(table[c] for c in s)

    def _compute_token_bytes(self) -> np.ndarray:
        out = np.zeros(self.vocab_size, dtype=np.int64)
        approx = False
        for i in range(self.vocab_size):
            if i == self.eos_id:
                out[i] = 1  # the separator: one byte, as the byte tokenizer's NUL
                continue
            if i in self._added:
                t = self._added[i]
                out[i] = 0 if t.special else len(t.content.encode())
                continue
            b = self.id_to_bytes(i)
            s = self._tok.id_to_token(i)
            if b is not None:
                out[i] = len(b)
            elif s is None:
                continue
            elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", s):
                out[i] = 1  # SentencePiece byte fallback
            else:
                approx = True
                s = s[2:] if s.startswith("##") and len(s) > 2 else s
                out[i] = len(s.replace("\u2581", " ").encode())
        if approx:
            warnings.warn(f"tokenizer {self.name!r} is not byte-level: its bytes per token "
                          "(for bits per byte) are approximate", stacklevel=3)
        return out

    def save(self, path: str | os.PathLike) -> None:
        """Write the ``tokenizer.json`` atomically."""
        from .fileio import atomic_write

        atomic_write(path, self._tok.to_str())


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def _from_hub(name: str) -> HFTokenizer:
    """``name``'s ``tokenizer.json`` from the local hub cache, else downloaded."""
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(name, "tokenizer.json", local_files_only=True)
    except Exception:  # not cached: try the network below
        path = None
    if path is None:
        try:
            path = hf_hub_download(name, "tokenizer.json")
        except Exception as err:  # any hub/network failure: one message
            raise ValueError(
                f"tokenizer {name!r}: not 'bytes', not a tokenizer.json file, and not "
                f"loadable from the Hugging Face hub (no network or cache? {_one_line(err)})"
            ) from None
    return HFTokenizer.from_file(path, name=f"hub:{name}:{_digest(path)}")


def _digest(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


@functools.lru_cache(maxsize=32)
def _load_file(path: str, size: int, mtime_ns: int) -> HFTokenizer:
    return HFTokenizer.from_file(path)


def get_tokenizer(spec: str) -> Tokenizer:
    """The tokenizer ``spec`` names: ``bytes``, a path to a ``tokenizer.json`` (or a folder
    holding one), or a Hugging Face hub name. Raises FileNotFoundError for a missing file,
    ValueError for anything else unusable."""
    if spec in TOKENIZERS:
        return TOKENIZERS[spec]()
    p = Path(spec).expanduser()
    if p.is_dir() and (p / "tokenizer.json").is_file():
        p = p / "tokenizer.json"
    if p.is_file():
        st = p.stat()
        return _load_file(str(p.resolve()), st.st_size, st.st_mtime_ns)
    looks_like_path = (p.suffix == ".json" or spec.startswith((".", "/", "~"))
                       or spec.count("/") > 1 or p.is_dir())
    if looks_like_path:
        raise FileNotFoundError(f"tokenizer file {spec!r} does not exist (data.tokenizer takes "
                                "'bytes', a tokenizer.json path or a hub name)")
    if not _HUB_NAME.fullmatch(spec):
        raise ValueError(f"unknown tokenizer {spec!r}; known: {sorted(TOKENIZERS)}, a path to a "
                         "tokenizer.json, or a Hugging Face hub name such as 'gpt2'")
    return _from_hub(spec)


# ---- training ------------------------------------------------------------------------


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2,
              eos_token: str = EOT, length: int | None = None) -> HFTokenizer:
    """A byte-level BPE trained on ``texts``: the ByteLevel pre-tokenizer (GPT-2's split
    regex, no prefix space) and decoder, all 256 bytes in the base alphabet, and
    ``eos_token`` (id 0) as the document separator. ``vocab_size`` counts the 256 bytes,
    the merges and the separator (a small corpus may give fewer merges)."""
    from tokenizers import Tokenizer as _Tok
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if vocab_size < 257:
        raise ValueError(f"vocab_size must be >= 257 (256 bytes + the separator), got {vocab_size}")
    tok = _Tok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[eos_token],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer, length=length)
    digest = hashlib.sha256(tok.to_str().encode()).hexdigest()[:12]
    return HFTokenizer(tok, f"bpe{tok.get_vocab_size(with_added_tokens=True)}:{digest}", eos_token)


def _corpus_texts(corpus: Any, counter: list[int], val_fraction: float | None = None
                  ) -> Iterable[str]:
    """The corpus's texts (invalid UTF-8 replaced, counted in ``counter[0]``), without the
    documents held out at ``val_fraction`` when given."""
    from .corpus import read_text, stable_unit

    for key, payload in corpus.documents():
        if val_fraction is not None and stable_unit(key) < val_fraction:
            continue
        text, bad = read_text(payload)
        counter[0] += bad
        yield text


def tokenizer_main(argv: Sequence[str]) -> None:
    """``postformer tokenizer train ...`` (``argv`` without ``tokenizer``)."""
    parser = argparse.ArgumentParser(prog="postformer tokenizer",
                                     description="train or inspect subword tokenizers")
    sub = parser.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="train a byte-level BPE on a corpus, write tokenizer.json",
                        description="Train a byte-level BPE (ByteLevel pre-tokenizer and "
                        f"decoder, {EOT} as the document separator) on a corpus, the same "
                        "corpus options as the data module (default: the stdlib's .py files).")
    tr.add_argument("--data.path", dest="path", help="a file, folder or glob of "
                    ".txt/.jsonl/.json/.parquet files (default: the stdlib's .py files)")
    tr.add_argument("--data.hf_name", dest="hf_name", help="a Hugging Face hub dataset")
    tr.add_argument("--data.hf_config", dest="hf_config", help="its subset")
    tr.add_argument("--data.split", dest="split", default="train")
    tr.add_argument("--data.streaming", dest="streaming", action="store_true")
    tr.add_argument("--data.text_field", dest="text_field", default="text")
    tr.add_argument("--data.max_bytes", dest="max_bytes", type=int,
                    help="train on about this many bytes of the corpus")
    tr.add_argument("--data.val_fraction", dest="val_fraction", type=float,
                    help="leave out the documents the data module holds out at this "
                    "val_fraction (default: train on every document)")
    tr.add_argument("--vocab_size", type=int, default=8192,
                    help="tokens in all: 256 bytes + merges + the separator (default 8192)")
    tr.add_argument("--min_frequency", type=int, default=2)
    tr.add_argument("--out", required=True, help="the tokenizer.json to write")
    args = parser.parse_args(list(argv))

    from .corpus import Corpus, default_cache_dir, resolve_files

    if args.vocab_size < 257:
        tr.error(f"--vocab_size must be >= 257 (256 bytes + the separator), got "
                 f"{args.vocab_size}")
    if args.max_bytes is not None and args.max_bytes < 1:
        tr.error(f"--data.max_bytes must be >= 1, got {args.max_bytes}")
    if args.val_fraction is not None and not 0.0 < args.val_fraction < 1.0:
        tr.error(f"--data.val_fraction must be in (0, 1), got {args.val_fraction}")
    out = Path(args.out).expanduser()
    if out.is_dir():
        tr.error(f"--out {args.out!r} is a folder; give the tokenizer.json file to write")
    try:
        files = resolve_files(args.path) if args.path is not None else None
        corpus = Corpus(files=files, path=args.path, hf_name=args.hf_name,
                        hf_config=args.hf_config, split=args.split, streaming=args.streaming,
                        text_field=args.text_field, max_bytes=args.max_bytes,
                        cache_dir=default_cache_dir())
    except (ValueError, OSError) as err:
        tr.error(str(err))
    bad = [0]
    try:
        tok = train_bpe(_corpus_texts(corpus, bad, args.val_fraction), args.vocab_size,
                        args.min_frequency)
    except (ValueError, OSError) as err:
        print(f"postformer tokenizer: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if bad[0]:
        warnings.warn(f"{bad[0]} bytes of the corpus are not valid UTF-8 and were replaced by "
                      "U+FFFD for training", stacklevel=1)
    tok.save(out)
    # bytes per token of the packed corpus, as the data module packs it (a separator each)
    n_docs = n_bytes = n_tokens = 0
    batch: list[str] = []

    def flush() -> None:
        nonlocal n_docs, n_bytes, n_tokens
        n_docs += len(batch)
        n_bytes += sum(len(t.encode("utf-8", "surrogatepass")) for t in batch) + len(batch)
        n_tokens += sum(len(ids) for ids in tok.encode_batch(batch)) + len(batch)
        batch.clear()

    for text in _corpus_texts(corpus, [0]):
        batch.append(text)
        if len(batch) == 256:
            flush()
    flush()
    print(f"wrote {out}: vocab size {tok.vocab_size}, {n_bytes / max(n_tokens, 1):.3f} bytes "
          f"per token on the corpus ({n_docs} documents, {n_bytes} bytes with one separator "
          f"each, {n_tokens} tokens)")
