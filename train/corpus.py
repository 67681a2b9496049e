"""Corpora at scale: document sources, parallel tokenisation, memory-mapped token caches.

Light on imports (numpy only at import time; ``datasets``, ``filelock`` and ``tokenizers``
when used), so tokenisation workers and ``postformer tokenizer`` start fast.

- ``Corpus``: where the documents come from (the stdlib's ``.py`` files, local
  ``.txt/.jsonl/.json/.parquet`` files, or a hub dataset, streamed or not) and
  ``Corpus.documents()``, the documents in reading order as ``(key, payload)``.
- ``tokenize_corpus``: documents -> two flat token arrays (train, val) written to ``.npy``
  files on the fly, tokenised in a pool of ``num_proc`` processes, capped at
  ``max_tokens``.
- ``locked_build``: build a cache once under a file lock while other processes wait.
"""

from __future__ import annotations

import codecs
import functools
import glob
import hashlib
import multiprocessing as mp
import os
import struct
import sys
import sysconfig
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SUFFIXES = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
BATCH_DOCS = 256  # documents per tokenisation task
BATCH_BYTES = 16 << 20  # ... or about this many bytes of text, whichever comes first


class DataError(ValueError):
    """The data cannot be used as given (too little of it, a file that does not parse, a
    damaged token cache); the message names the source or file and what to do.
    ``postformer fit`` reports it in one line."""


def default_cache_dir() -> Path:
    """``$POSTFORMER_CACHE`` or ``~/.cache/postformer``."""
    return Path(os.environ.get("POSTFORMER_CACHE", Path.home() / ".cache" / "postformer"))


def stdlib_files() -> tuple[Path, list[Path]]:
    """The standard library's own ``.py`` files (no site-packages, no test folders), sorted."""
    root, files = _stdlib_files()
    return root, list(files)


@functools.lru_cache(maxsize=1)
def _stdlib_files() -> tuple[Path, tuple[Path, ...]]:
    # walked once per process: a study runs hundreds of runs in one process
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
    files = [
        p for p in root.rglob("*.py")
        if not skip.intersection(p.relative_to(root).parts[:-1]) and p.is_file()
    ]
    return root, tuple(sorted(files, key=lambda p: p.relative_to(root).as_posix()))


def resolve_files(path: str) -> list[Path]:
    """A file, a folder (searched recursively) or a glob -> the data files it names, sorted.

    Raises FileNotFoundError naming ``path`` when nothing usable is there.
    """
    p = Path(path).expanduser()
    if p.is_file():
        files = [p]
    elif p.is_dir():
        files = [f for f in p.rglob("*") if f.is_file() and f.suffix in SUFFIXES]
    elif glob.has_magic(str(p)):
        files = [Path(f) for f in glob.glob(str(p), recursive=True) if Path(f).is_file()]
    else:
        raise FileNotFoundError(f"data path {path!r} does not exist")
    files = sorted(f for f in files if f.suffix in SUFFIXES)
    if not files:
        raise FileNotFoundError(
            f"data path {path!r} holds no data files (looked for {', '.join(sorted(SUFFIXES))})"
        )
    return files


def stable_unit(key: str) -> float:
    """A stable pseudo-random number in [0, 1) from a string (not Python's salted hash)."""
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") / 2**64


def split_is_val(keys: list[str], val_fraction: float) -> np.ndarray:
    """``[N]`` bool: which documents go to validation, decided by a hash of each key."""
    return np.array([stable_unit(k) < val_fraction for k in keys], dtype=bool)


# ---- text ------------------------------------------------------------------------------

_replaced = [0]


def _count_and_replace(err: UnicodeDecodeError) -> tuple[str, int]:
    _replaced[0] += err.end - err.start
    return "\ufffd", err.end


codecs.register_error("postformer.count_replace", _count_and_replace)


def decode_utf8(data: bytes) -> tuple[str, int]:
    """``data`` decoded as UTF-8 with ``errors="replace"`` (one U+FFFD per invalid
    sequence), and the number of bytes replaced."""
    before = _replaced[0]
    text = data.decode("utf-8", errors="postformer.count_replace")
    return text, _replaced[0] - before


def read_text(payload: str | Path) -> tuple[str, int]:
    """A document as text and the count of its bytes that were not valid UTF-8."""
    if isinstance(payload, Path):
        return decode_utf8(payload.read_bytes())
    return payload, 0


def read_bytes(payload: str | Path) -> bytes:
    """A document's raw bytes (a file's bytes as they are; text as UTF-8)."""
    if isinstance(payload, Path):
        return payload.read_bytes()
    return payload.encode("utf-8", errors="surrogatepass")


# ---- sources ---------------------------------------------------------------------------


@dataclass
class Corpus:
    """Where the documents come from, and in which order they are read.

    ``files`` (resolved from ``path``; None: the stdlib's ``.py`` files) or ``hf_name``
    (``datasets.load_dataset(hf_name, hf_config, split=split, streaming=streaming)``).
    ``.txt`` files (and the stdlib's files) are one document each, keyed by their path
    relative to the files' common folder (streamed or not); json/parquet/hub rows are
    documents keyed by their running index (streamed or not: both give the same keys).
    ``max_bytes``: stop once about that many bytes are read (files in a hash order so a
    capped corpus mixes all folders; rows in order). With ``max_tokens`` set, files are
    read in that hash order too (the token cap takes a prefix of the reading order).
    ``split`` and ``text_field`` apply to rows only.
    """

    files: list[Path] | None = None
    path: str | None = None
    hf_name: str | None = None
    hf_config: str | None = None
    split: str = "train"
    streaming: bool = False
    text_field: str = "text"
    max_bytes: int | None = None
    max_tokens: int | None = None
    cache_dir: Path | None = None
    capped: bool = field(default=False, init=False)  # max_bytes left documents unread

    def __post_init__(self) -> None:
        if self.files is not None and self.hf_name is not None:
            raise ValueError("give data.path or data.hf_name, not both")
        if self.hf_config is not None and self.hf_name is None:
            raise ValueError(f"data.hf_config={self.hf_config!r} needs data.hf_name (a hub "
                             "dataset); local files have no subsets")
        if self.streaming and self.files is None and self.hf_name is None:
            raise ValueError("data.streaming needs data.path or data.hf_name; the default "
                             "corpus (the stdlib's .py files) is read from disk, not streamed")
        if self.split != "train" and self.files_are_documents():
            raise ValueError(f"data.split={self.split!r} applies to json/parquet/hub data; "
                             "the stdlib and .txt files are one split of documents (use "
                             "val_fraction)")
        if self.max_bytes is not None and self.max_bytes < 1:
            raise ValueError(f"data.max_bytes must be >= 1 or None (all), got {self.max_bytes}")
        if self.files is not None and not self.files_are_documents():
            kinds = {SUFFIXES[f.suffix] for f in self.files}
            if len(kinds) > 1:
                raise ValueError(f"data path {self.path!r} mixes file kinds {sorted(kinds)}; "
                                 "expected only .txt or only .jsonl/.json or only .parquet")

    def files_are_documents(self) -> bool:
        """True for the stdlib and .txt files (one document per file)."""
        return self.hf_name is None and (
            self.files is None or all(SUFFIXES[f.suffix] == "text" for f in self.files)
        )

    def file_docs(self) -> tuple[Path, list[Path]]:
        """The root and the document files in reading order (``max_bytes`` applied)."""
        if self.files is None:
            root, files = stdlib_files()
        else:
            files = list(self.files)
            root = Path(os.path.commonpath([f.parent for f in files]))
        if self.max_bytes is None and self.max_tokens is None:
            return root, files
        # a hash order, salted so that it does not line up with the split (the bare key)
        order = sorted(files, key=lambda f: stable_unit("cap:" + f.relative_to(root).as_posix()))
        if self.max_bytes is not None:
            keep, total = [], 0
            for f in order:
                if total >= self.max_bytes:
                    break
                keep.append(f)
                total += f.stat().st_size
            self.capped = len(keep) < len(order)
            order = keep
        return root, (sorted(order) if self.max_tokens is None else order)

    def describe(self) -> dict[str, Any]:
        """What the documents depend on, for a cache key."""
        desc: dict[str, Any] = {"max_bytes": self.max_bytes, "text_field": self.text_field,
                                "split": self.split, "streaming": self.streaming}
        if self.hf_name is not None:
            desc |= {"hf_name": self.hf_name, "hf_config": self.hf_config}
        else:
            files = self.file_docs()[1] if self.files_are_documents() else self.files or []
            desc["files"] = [(f.as_posix(), f.stat().st_size, f.stat().st_mtime_ns)
                             for f in files]
        return desc

    def documents(self) -> Iterator[tuple[str, str | Path]]:
        """The documents in reading order: ``(key, payload)``, the payload a file ``Path``
        (read by the tokenisation workers) or the text of a row."""
        if self.files_are_documents():
            root, files = self.file_docs()
            for f in files:
                yield f.relative_to(root).as_posix(), f
            return
        total = 0
        for i, text in enumerate(self._rows()):
            if self.max_bytes is not None:
                if total >= self.max_bytes:
                    self.capped = True
                    return
                total += len(text.encode("utf-8", errors="surrogatepass"))
            yield str(i), text

    def _rows(self) -> Iterator[str]:
        if self.hf_name is not None:
            yield from self._table_rows()
            return
        import datasets
        import pyarrow as pa

        try:
            yield from self._table_rows()
        except (datasets.exceptions.DatasetGenerationError, pa.ArrowInvalid) as err:
            kind = SUFFIXES[self.files[0].suffix]
            want = (f"one JSON object per line, each with a {self.text_field!r} field"
                    if kind == "json" else f"Parquet tables with a {self.text_field!r} column")
            cause = err.__cause__ or err
            raise DataError(f"data.path {self.path!r}: a file does not parse as {kind} "
                            f"({' '.join(str(cause).split())}); expected {want}") from None

    def _table_rows(self) -> Iterator[str]:
        import datasets

        cache = str((self.cache_dir or default_cache_dir()) / "hf")
        if self.hf_name is not None:
            ds = datasets.load_dataset(self.hf_name, self.hf_config, split=self.split,
                                       streaming=self.streaming, cache_dir=cache)
        else:
            builder = SUFFIXES[self.files[0].suffix]
            ds = datasets.load_dataset(builder, data_files=[str(f) for f in self.files],
                                       split=self.split, streaming=self.streaming,
                                       cache_dir=cache)
        field = self.text_field
        columns = getattr(ds, "column_names", None)
        if columns is not None and field not in columns:
            raise ValueError(f"data.text_field {field!r} is not among the data's columns "
                             f"{columns}")
        if not self.streaming:
            for batch in ds.select_columns([field]).iter(batch_size=1024):
                yield from (t or "" for t in batch[field])
            return
        for row in ds:
            if field not in row:
                raise ValueError(f"data.text_field {field!r} is not among the data's columns "
                                 f"{sorted(row)}")
            yield row[field] or ""


def _batched(docs: Iterable[tuple[str, str | Path]]) -> Iterator[list[tuple[str, str | Path]]]:
    batch: list[tuple[str, str | Path]] = []
    size = 0
    for doc in docs:
        batch.append(doc)
        payload = doc[1]
        size += payload.stat().st_size if isinstance(payload, Path) else len(payload)
        if len(batch) >= BATCH_DOCS or size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


# ---- tokenisation ----------------------------------------------------------------------


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype for ids below ``vocab_size``: uint8 (the byte
    tokenizer), uint16 (up to 65536) or uint32."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dt).max + 1:
            return np.dtype(dt)
    raise ValueError(f"vocab_size {vocab_size} does not fit in uint32")


def encode_documents(tokenizer: Any, payloads: list[str | Path]) -> tuple[np.ndarray, np.ndarray, int]:
    """Tokenise documents -> (ids of all of them concatenated ``[sum N_i]`` uint32, lengths
    ``[D]`` int64, bytes replaced by U+FFFD). A tokenizer with ``encode_bytes`` gets the
    raw bytes; others get text (invalid UTF-8 replaced and counted)."""
    bad = 0
    if hasattr(tokenizer, "encode_bytes"):
        ids = [tokenizer.encode_bytes(read_bytes(p)) for p in payloads]
    else:
        texts = []
        for p in payloads:
            text, n = read_text(p)
            texts.append(text)
            bad += n
        if hasattr(tokenizer, "encode_batch"):
            ids = tokenizer.encode_batch(texts)
        else:
            ids = [tokenizer.encode(t) for t in texts]
    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    flat = np.concatenate(ids).astype(np.uint32) if ids else np.zeros(0, np.uint32)
    return flat, lengths, bad


_worker_tokenizer: Any = None


def _init_worker(tokenizer: Any) -> None:
    global _worker_tokenizer
    # one process per core already: no thread pool inside each (and no oversubscription)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_tokenizer = tokenizer


def _encode_in_worker(payloads: list[str | Path]) -> tuple[np.ndarray, np.ndarray, int]:
    return encode_documents(_worker_tokenizer, payloads)


def _encoded(batches: Iterator[list], tokenizer: Any, num_proc: int) -> Iterator[tuple]:
    """``(batch, encode_documents(batch))`` in order; ``num_proc > 1``: in a pool of spawned
    processes with at most ``2 * num_proc`` batches in flight (so a stream is read only
    as far as it is consumed)."""
    if num_proc <= 1:
        for batch in batches:
            yield batch, encode_documents(tokenizer, [p for _, p in batch])
        return
    ctx = mp.get_context("spawn")  # fork is unsafe after torch/tokenizers start threads
    with ProcessPoolExecutor(num_proc, mp_context=ctx, initializer=_init_worker,
                             initargs=(tokenizer,)) as pool:
        pending: deque = deque()
        try:
            for batch in batches:
                pending.append((batch, pool.submit(_encode_in_worker, [p for _, p in batch])))
                if len(pending) >= 2 * num_proc:
                    b, fut = pending.popleft()
                    yield b, fut.result()
            while pending:
                b, fut = pending.popleft()
                yield b, fut.result()
        finally:
            for _, fut in pending:
                fut.cancel()


_NPY_HEADER = 128  # bytes; room for any 1-d shape, so the header is rewritten in place


def _npy_header(dtype: np.dtype, n: int) -> bytes:
    d = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
              "shape": (n,)})
    d = d.ljust(_NPY_HEADER - 10 - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(d)) + d.encode("latin1")


class NpyWriter:
    """A 1-d ``.npy`` file written in pieces (the length is patched into the header at the
    end); ``np.load(path, mmap_mode="r")`` reads it."""

    def __init__(self, path: Path, dtype: np.dtype) -> None:
        self.path, self.dtype, self.n = path, np.dtype(dtype), 0
        self.f = open(path, "wb")  # closed in close()
        self.f.write(_npy_header(self.dtype, 0))

    def write(self, array: np.ndarray) -> None:
        self.f.write(np.ascontiguousarray(array, dtype=self.dtype).tobytes())
        self.n += len(array)

    def close(self) -> None:
        """Write the final header, flush to disk."""
        self.f.seek(0)
        self.f.write(_npy_header(self.dtype, self.n))
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()


def tokenize_corpus(docs: Iterable[tuple[str, str | Path]], tokenizer: Any,
                    val_fraction: float, out: dict[str, Path], max_tokens: int | None = None,
                    num_proc: int = 1) -> dict[str, Any]:
    """Tokenise ``docs`` into ``out["train"]`` and ``out["val"]`` (``.npy``, 1-d).

    Each document is followed by ``tokenizer.eos_id`` and goes to the split
    ``split_is_val(key)`` says; within a split documents keep their reading order. When
    every document lands on one side (too few documents), the whole stream is split at
    ``1 - val_fraction`` of its tokens instead (the tail is held out). ``max_tokens``: the
    documents are read in order until train + val hold exactly ``max_tokens`` tokens (the
    last one cut there, with no separator if the cut falls before it), so
    ``len(train) + len(val) == min(max_tokens, tokens of the corpus)``.

    Returns the metadata: ``split`` ("by document" or "tail"), ``documents`` per split,
    ``tokens`` per split, ``replaced_bytes`` (bytes of invalid UTF-8 replaced, text
    tokenizers only), ``dtype``, ``capped`` (``max_tokens`` cut the corpus).
    """
    dtype = token_dtype(tokenizer.vocab_size)
    writers = {s: NpyWriter(p, dtype) for s, p in out.items()}
    n_docs = {"train": 0, "val": 0}
    total = replaced = 0
    try:
        for batch, (ids, lengths, bad) in _encoded(_batched(docs), tokenizer, num_proc):
            replaced += bad
            is_val = split_is_val([k for k, _ in batch], val_fraction)
            ends = np.cumsum(lengths)
            stream = np.insert(ids, ends, tokenizer.eos_id)  # a separator after each document
            starts = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]])
            side = np.repeat(is_val, lengths + 1)
            if max_tokens is not None and total + len(stream) >= max_tokens:
                keep = max_tokens - total
                stream, side, taken = stream[:keep], side[:keep], starts < keep
            else:
                taken = np.ones(len(batch), dtype=bool)
            writers["train"].write(stream[~side])
            writers["val"].write(stream[side])
            n_docs["val"] += int((is_val & taken).sum())
            n_docs["train"] += int((~is_val & taken).sum())
            total += len(stream)
            if max_tokens is not None and total >= max_tokens:
                break
    except BaseException:
        for w in writers.values():
            w.f.close()
        raise
    if n_docs["train"] + n_docs["val"] == 0:
        for w in writers.values():
            w.f.close()
        raise DataError("the corpus is empty (no documents were read); expected at least one "
                        "document in data.path or data.hf_name")
    for w in writers.values():
        w.close()
    meta: dict[str, Any] = {"split": "by document", "documents": dict(n_docs)}
    if n_docs["train"] == 0 or n_docs["val"] == 0:
        # too few documents to split by document (e.g. one big file): hold out the tail
        _hold_out_tail(out, "train" if n_docs["val"] == 0 else "val", val_fraction, dtype)
        docs = n_docs["train"] + n_docs["val"]
        meta = {"split": "tail", "documents": {"train": docs, "val": docs}}
    meta["tokens"] = {s: int(len(np.load(p, mmap_mode="r"))) for s, p in out.items()}
    meta["replaced_bytes"] = replaced
    meta["dtype"] = dtype.name
    meta["capped"] = max_tokens is not None and total >= max_tokens
    return meta


def _copy_npy(array: np.ndarray, path: Path, dtype: np.dtype) -> None:
    w = NpyWriter(path, dtype)
    for i in range(0, len(array), 1 << 24):
        w.write(array[i : i + (1 << 24)])
    w.close()


def _hold_out_tail(out: dict[str, Path], full: str, val_fraction: float,
                   dtype: np.dtype) -> None:
    """``out[full]`` holds the whole stream (the other split is empty): make train its
    first ``1 - val_fraction`` and val the rest."""
    stream = np.load(out[full], mmap_mode="r")
    cut = int(len(stream) * (1 - val_fraction))
    if full == "train":  # the common case (one big file): cut train in place
        _copy_npy(stream[cut:], out["val"], dtype)
        del stream
        with open(out["train"], "r+b") as f:
            f.truncate(_NPY_HEADER + cut * dtype.itemsize)
            f.write(_npy_header(dtype, cut))
            f.flush()
            os.fsync(f.fileno())
        return
    _copy_npy(stream[:cut], out["train"], dtype)
    tail = out["val"].with_name(out["val"].name + ".tail")
    _copy_npy(stream[cut:], tail, dtype)
    del stream
    os.replace(tail, out["val"])


# ---- building once ---------------------------------------------------------------------


def locked_build(lock_path: Path, ready: Callable[[], bool], build: Callable[[], None],
                 what: str = "the token cache") -> bool:
    """Run ``build`` unless ``ready()``, holding a file lock at ``lock_path``: among
    processes (or DDP ranks) that call this at once one builds, the others wait and then
    find it ready. Returns True when this call built."""
    if ready():
        return False
    from filelock import FileLock, Timeout

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"waiting for another process to build {what} ({lock_path})", file=sys.stderr)
        lock.acquire()
    try:
        if ready():
            return False
        build()
        return True
    finally:
        lock.release()
