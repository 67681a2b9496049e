"""Text data for language modelling: load, split, tokenise, cache, pack, sample.

Pipeline::

    source (stdlib .py files | local .txt/.jsonl/.json/.parquet | hub dataset; streamed or not)
      -> documents (key, text or file) in reading order       (train/corpus.py: Corpus)
      -> split by a hash of the key (deterministic, no document in both splits)
      -> tokenised in ``num_proc`` processes, each document followed by the separator,
         capped at ``max_tokens``, appended to one flat token file per split
      -> cached on disk as .npy (keyed by the sources, their sizes/mtimes and the tokenizer),
         built once under a file lock while other processes and ranks wait
      -> memory-mapped; windows of ``seq_len + 1`` tokens (inputs ``[:-1]``, targets ``[1:]``)

Resume is exact: the training order is a function of ``(seed, epoch)`` only, and the
DataModule counts the batches it handed to training and stores that count in the
checkpoint (Lightning saves ``state_dict()`` of the DataModule), so a resumed run starts at
the batch after the last one trained.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from .corpus import (
    SUFFIXES,
    Corpus,
    DataError,
    default_cache_dir,
    locked_build,
    resolve_files,
    split_is_val,
    stdlib_files,
    tokenize_corpus,
)
from .fileio import atomic_write
from .sampler import PositionedDataModule
from .tokenizer import Tokenizer, get_tokenizer

__all__ = ["SUFFIXES", "DataError", "PackedSequences", "TextDataModule", "default_cache_dir",
           "resolve_files", "split_is_val", "stdlib_files"]  # the helpers live in corpus.py

_FORMAT_VERSION = 2  # bump when the cached layout or the split rule changes


class PackedSequences(Dataset):
    """Windows of ``seq_len + 1`` tokens over one flat token array ``[N]`` (in memory or
    memory-mapped; only the window read is paged in).

    Window ``i`` is ``tokens[i*L : i*L + L + 1]``: consecutive windows share one token so
    every token is a target exactly once. Items are int64 tensors ``[L + 1]``.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int) -> None:
        self.tokens = tokens
        self.seq_len = seq_len

    def __len__(self) -> int:
        return max(0, (len(self.tokens) - 1) // self.seq_len)

    def __getitem__(self, i: int) -> torch.Tensor:
        start = i * self.seq_len
        window = np.asarray(self.tokens[start : start + self.seq_len + 1], dtype=np.int64)
        return torch.from_numpy(window)  # [L + 1]


class TextDataModule(PositionedDataModule):
    """Language-modelling data (byte-level by default) from local files, a hub dataset or
    the stdlib.

    Args:
        path: a file, folder or glob of .txt/.jsonl/.json/.parquet files; None means the
            embedded default corpus, the Python standard library's own source.
        hf_name: a Hugging Face hub dataset name (needs a network); excludes ``path``.
        hf_config: the hub dataset's subset (``load_dataset(hf_name, hf_config)``).
        split: the split to read (``load_dataset(..., split=split)``; local files too).
        streaming: read the documents as a stream (``load_dataset(..., streaming=True)``)
            instead of downloading/converting everything first; with ``max_tokens`` only the
            documents needed are read. Needs ``path`` or ``hf_name``. The token arrays are
            the same as without streaming.
        text_field: the column holding the text (json/parquet/hub).
        seq_len: tokens per training sequence (each item holds ``seq_len + 1``).
        batch_size: sequences per batch (train and validation).
        val_fraction: share of documents held out for validation, chosen by a hash of
            each document's key (relative path for files, row index for tables and
            streams); with too few documents the tail of the token stream is held out.
        max_bytes: cap the corpus at about this many bytes of text, for quick runs.
        max_tokens: cap the corpus at exactly this many tokens (train + val, separators
            included): documents are read in order (files in a hash order) and tokenised
            until the cap, the last one cut there; applied while reading, so a streamed
            corpus is read only that far.
        tokenizer: ``bytes`` (UTF-8 bytes, vocab 256), a path to a ``tokenizer.json``
            (e.g. from ``postformer tokenizer train``) or a hub name; see
            ``postformer.train.tokenizer.get_tokenizer``. The bytes tokenizer reads files as
            raw bytes; a text tokenizer decodes them (invalid UTF-8 replaced, with a warning).
        num_proc: processes that tokenise (1: in this process; Hugging Face tokenizers are
            multi-threaded already). Does not change the result.
        cache_dir: where tokenised arrays go; default ``$POSTFORMER_CACHE`` or
            ``~/.cache/postformer``.
        num_workers: DataLoader workers.
        seed: the training order is a function of ``(seed, epoch)``.
        val_tokens: validate on a fixed random subset of about this many tokens of the
            held-out split (``ceil(val_tokens / seq_len)`` windows drawn uniformly from the
            whole split, so from every held-out document in proportion); None: all of it.
        val_seed: the seed of that subset and of the order its windows are evaluated in;
            independent of ``seed``, so every run of a study sees the same validation set.

    The cache (``cache_dir/tokens``): ``KEY-train.npy`` and ``KEY-val.npy`` (1-d, uint8 for
    the byte tokenizer, uint16 up to 65536 tokens, else uint32; read memory-mapped),
    ``KEY-meta.json`` (written last: the cache is complete when it exists) and ``KEY.lock``.
    """

    resume_keys = ("seed", "batch_size", "seq_len")

    @staticmethod
    def planned_vocab(init_args: dict[str, Any]) -> int:
        """The vocabulary a model needs for data built with ``init_args`` (the tokenizer's),
        without building it; ``train.cli`` sets ``model.config.vocab_size`` from it."""
        return get_tokenizer(init_args.get("tokenizer") or "bytes").vocab_size

    def __init__(
        self,
        path: str | None = None,
        hf_name: str | None = None,
        hf_config: str | None = None,
        split: str = "train",
        streaming: bool = False,
        text_field: str = "text",
        seq_len: int = 256,
        batch_size: int = 16,
        val_fraction: float = 0.05,
        max_bytes: int | None = None,
        max_tokens: int | None = None,
        tokenizer: str = "bytes",
        num_proc: int = 1,
        cache_dir: str | None = None,
        num_workers: int = 0,
        seed: int = 0,
        val_tokens: int | None = None,
        val_seed: int = 0,
    ) -> None:
        super().__init__()
        if path is not None and hf_name is not None:
            raise ValueError("give data.path or data.hf_name, not both")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if val_tokens is not None and val_tokens < 1:
            raise ValueError(f"val_tokens must be >= 1 or None (all), got {val_tokens}")
        for key, value in (("seq_len", seq_len), ("batch_size", batch_size)):
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"data.{key}: expected an integer >= 1, got {value!r}")
        if max_tokens is not None and max_tokens < seq_len + 1:
            raise ValueError(f"data.max_tokens={max_tokens} is below seq_len + 1 = {seq_len + 1}; "
                             "expected room for at least one window (or None: no cap)")
        if num_proc < 1:
            raise ValueError(f"data.num_proc must be >= 1, got {num_proc}")
        self.path = path
        self.hf_name = hf_name
        self.hf_config = hf_config
        self.split = split
        self.streaming = streaming
        self.text_field = text_field
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.max_bytes = max_bytes
        self.max_tokens = max_tokens
        self.tokenizer: Tokenizer = get_tokenizer(tokenizer)
        self.num_proc = num_proc
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.num_workers = num_workers
        self.seed = seed
        self.val_tokens = val_tokens
        self.val_seed = val_seed
        # Fail before any training starts when the data is not there or the options clash.
        self.files = resolve_files(path) if path is not None else None
        self.corpus = Corpus(files=self.files, path=path, hf_name=hf_name, hf_config=hf_config,
                             split=split, streaming=streaming, text_field=text_field,
                             max_bytes=max_bytes, max_tokens=max_tokens, cache_dir=self.cache_dir)
        self._cache_key: str | None = None
        self.cache_hit: bool | None = None  # set by setup(): True when tokens came from cache
        self._built = False  # this instance tokenised (in prepare_data or setup)
        self.tokens: dict[str, np.ndarray] = {}

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def token_bytes(self) -> np.ndarray:
        """``[vocab]`` bytes per token, for bits per byte."""
        return self.tokenizer.token_bytes()

    # ---- loading ---------------------------------------------------------------------

    def cache_key(self) -> str:
        """A hash of everything the tokenised arrays depend on (computed once per instance)."""
        if self._cache_key is None:
            desc: dict[str, Any] = {
                "version": _FORMAT_VERSION, "tokenizer": self.tokenizer.name,
                "val_fraction": self.val_fraction, "max_tokens": self.max_tokens,
                **self.corpus.describe(),
            }
            self._cache_key = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:20]
        return self._cache_key

    def load_documents(self):
        """The documents read (``max_bytes`` applied, ``max_tokens`` not) as a
        ``datasets.Dataset`` with columns ``key`` and ``text``, in reading order. For a look
        at the corpus: it holds all of it in memory; training reads ``Corpus.documents``."""
        import datasets

        from .corpus import read_text

        keys, texts = [], []
        for key, payload in self.corpus.documents():
            keys.append(key)
            texts.append(read_text(payload)[0])
        return datasets.Dataset.from_dict({"key": keys, "text": texts})

    def _cache_paths(self) -> dict[str, Path]:
        key = self.cache_key()
        return {s: self.cache_dir / "tokens" / f"{key}-{s}.npy" for s in ("train", "val")}

    def _meta_path(self) -> Path:
        return self.cache_dir / "tokens" / f"{self.cache_key()}-meta.json"

    def _cache_ready(self) -> bool:
        return self._meta_path().exists() and all(p.exists() for p in self._cache_paths().values())

    def _tokenize(self) -> None:
        """Tokenise the corpus into the cache (called under the lock): temporary files in
        the cache folder, renamed into place, the meta file last."""
        paths = self._cache_paths()
        folder = self._meta_path().parent
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(f".{self.cache_key()}-*"):  # left by a killed build
            stale.unlink(missing_ok=True)
        tmp = {s: p.with_name(f".{p.name}.{os.getpid()}.tmp") for s, p in paths.items()}
        try:
            meta = tokenize_corpus(self.corpus.documents(), self.tokenizer, self.val_fraction,
                                   tmp, max_tokens=self.max_tokens, num_proc=self.num_proc)
            for s in tmp:
                os.replace(tmp[s], paths[s])
        finally:
            for t in tmp.values():
                t.unlink(missing_ok=True)
        meta |= {"version": _FORMAT_VERSION, "tokenizer": self.tokenizer.name,
                 "capped": meta["capped"] or self.corpus.capped}
        atomic_write(self._meta_path(), json.dumps(meta) + "\n")
        if meta["replaced_bytes"]:
            warnings.warn(
                f"{meta['replaced_bytes']} bytes of the corpus are not valid UTF-8 and were "
                f"replaced by U+FFFD before tokenizer {self.tokenizer.name!r} saw them (the "
                "bytes tokenizer reads raw bytes)", stacklevel=3,
            )

    def _build(self) -> bool:
        """The cache, built once under ``KEY.lock``; True when this call built it."""
        built = locked_build(self.cache_dir / "tokens" / f"{self.cache_key()}.lock",
                             self._cache_ready, self._tokenize,
                             f"the token cache {self.cache_key()}")
        self._built |= built
        return built

    def prepare_data(self) -> None:
        """Tokenise into the cache unless it is there already (rank 0 only under DDP;
        ``setup`` on the other ranks waits on the same lock)."""
        self._build()

    def setup(self, stage: str | None = None) -> None:
        if self.tokens:
            return
        self._build()
        self.cache_hit = not self._built
        tokens = {s: self._read_cache(p, lambda p: np.load(p, mmap_mode="r"))
                  for s, p in self._cache_paths().items()}
        for split in ("train", "val"):
            if len(tokens[split]) < self.seq_len + 1:
                raise DataError(self._too_small(split, len(tokens[split])))
        self.tokens = tokens

    def _read_cache(self, path: Path, read: Any) -> Any:
        """``read(path)`` of a file of the token cache; a damaged one (truncated, not what
        it should be) is a DataError naming it and how to rebuild it."""
        try:
            return read(path)
        except (ValueError, OSError, EOFError) as err:
            raise DataError(
                f"the token cache file {path} cannot be read ({' '.join(str(err).split())}); "
                f"it is truncated or damaged: remove {path.parent / self.cache_key()}-* and "
                "run again to rebuild it") from None

    def _meta(self) -> dict[str, Any]:
        return self._read_cache(self._meta_path(), lambda p: json.loads(p.read_text()))

    def _too_small(self, split: str, n: int) -> str:
        """What to say when a split holds less than one window: the caps only when they
        cut the corpus (a 4-byte file does not grow with max_bytes)."""
        where = (f"data.path {self.path!r}" if self.path is not None else
                 f"data.hf_name {self.hf_name!r}" if self.hf_name is not None else
                 "the default corpus")
        fixes = []
        if self._meta().get("capped", True):
            caps = [f"data.{k} ({v})" for k, v in (("max_bytes", self.max_bytes),
                                                     ("max_tokens", self.max_tokens)) if v]
            fixes += [f"raise {' or '.join(caps)}"] if caps else []
        if split == "val":
            fixes.append(f"raise data.val_fraction ({self.val_fraction})")
        fixes.append("give more text")
        if n >= 2:  # one input and one target at least
            fixes.append(f"lower data.seq_len ({self.seq_len})")
        advice = f"{', '.join(fixes[:-1])} or {fixes[-1]}" if len(fixes) > 1 else fixes[0]
        return (f"{where}: the {split} split has {n} tokens, fewer than one window of "
                f"data.seq_len + 1 = {self.seq_len + 1}; {advice}")

    # ---- loaders ---------------------------------------------------------------------

    def dataset(self, split: str) -> PackedSequences:
        self.setup()
        return PackedSequences(self.tokens[split], self.seq_len)

    def train_dataloader(self) -> DataLoader:
        return self.train_loader(self.dataset("train"))

    def val_windows(self) -> np.ndarray:
        """Indices of the validation windows evaluated, in the order evaluated: a fixed
        permutation (``val_seed``) of every window of the held-out split, cut to
        ``ceil(val_tokens / seq_len)`` windows."""
        n = len(self.dataset("val"))
        order = np.random.default_rng([0x5EED, self.val_seed]).permutation(n)
        if self.val_tokens is not None:
            order = order[: -(-self.val_tokens // self.seq_len)]
        return order

    def describe_validation(self) -> dict[str, Any]:
        """What the validation set is, for a report: documents and tokens held out, and the
        windows and tokens evaluated."""
        self.setup()
        meta = self._meta()
        windows = len(self.val_windows())
        return {"split": meta["split"], "val_fraction": self.val_fraction,
                "documents": meta["documents"]["val"], "held_out_tokens": len(self.tokens["val"]),
                "windows": windows, "tokens": windows * self.seq_len, "seq_len": self.seq_len,
                "seed": self.val_seed, "tokenizer": self.tokenizer.name}

    def val_dataloader(self) -> DataLoader:
        return self.eval_loader(Subset(self.dataset("val"), self.val_windows().tolist()))

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
