"""Text data for language modelling: load, split, tokenise, cache, pack, sample.

Pipeline::

    source (stdlib .py files | local .txt/.jsonl/.json/.parquet | hub dataset)
      -> datasets.Dataset with a ``text`` column and a ``key`` per document
      -> split by a hash of the key (deterministic, no document in both splits)
      -> tokenise, join documents with the tokenizer's separator, one flat array per split
      -> cached on disk as .npy (keyed by the sources, their sizes/mtimes and the tokenizer)
      -> windows of ``seq_len + 1`` tokens (inputs ``[:-1]``, targets ``[1:]``)

Resume is exact: the training order is a function of ``(seed, epoch)`` only, and the
DataModule counts the batches it handed to training and stores that count in the
checkpoint (Lightning saves ``state_dict()`` of the DataModule), so a resumed run starts at
the batch after the last one trained.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import io
import json
import os
import sysconfig
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, SequentialSampler

from .fileio import atomic_write
from .sampler import ResumableBatchSampler, ShardedEvalSampler
from .tokenizer import Tokenizer, get_tokenizer

SUFFIXES = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
_FORMAT_VERSION = 1  # bump when the cached layout or the split rule changes


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


def _unit(key: str) -> float:
    """A stable pseudo-random number in [0, 1) from a string (not Python's salted hash)."""
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") / 2**64


def split_is_val(keys: list[str], val_fraction: float) -> np.ndarray:
    """``[N]`` bool: which documents go to validation, decided by a hash of each key."""
    return np.array([_unit(k) < val_fraction for k in keys], dtype=bool)


def _atomic_save(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write(path, buf.getvalue())


class PackedSequences(Dataset):
    """Windows of ``seq_len + 1`` tokens over one flat token array ``[N]``.

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


class TextDataModule(L.LightningDataModule):
    """Byte-level (by default) language-modelling data from local files or the stdlib.

    Args:
        path: a file, folder or glob of .txt/.jsonl/.json/.parquet files; None means the
            embedded default corpus, the Python standard library's own source.
        hf_name: a Hugging Face hub dataset name (needs a network); excludes ``path``.
        text_field: the column holding the text (json/parquet/hub).
        seq_len: tokens per training sequence (each item holds ``seq_len + 1``).
        batch_size: sequences per batch (train and validation).
        val_fraction: share of documents held out for validation, chosen by a hash of
            each document's key (relative path for files, row index for tables).
        max_bytes: cap the corpus at about this many bytes of text, for quick runs.
        tokenizer: a name from ``postformer.train.tokenizer.TOKENIZERS``.
        cache_dir: where tokenised arrays go; default ``$POSTFORMER_CACHE`` or
            ``~/.cache/postformer``.
        num_workers: DataLoader workers.
        seed: the training order is a function of ``(seed, epoch)``.
        val_tokens: validate on a fixed random subset of about this many tokens of the
            held-out split (``ceil(val_tokens / seq_len)`` windows drawn uniformly from the
            whole split, so from every held-out document in proportion); None: all of it.
        val_seed: the seed of that subset and of the order its windows are evaluated in;
            independent of ``seed``, so every run of a study sees the same validation set.
    """

    def __init__(
        self,
        path: str | None = None,
        hf_name: str | None = None,
        text_field: str = "text",
        seq_len: int = 256,
        batch_size: int = 16,
        val_fraction: float = 0.05,
        max_bytes: int | None = None,
        tokenizer: str = "bytes",
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
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"seq_len and batch_size must be positive, got {seq_len}, {batch_size}")
        self.path = path
        self.hf_name = hf_name
        self.text_field = text_field
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.max_bytes = max_bytes
        self.tokenizer: Tokenizer = get_tokenizer(tokenizer)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.num_workers = num_workers
        self.seed = seed
        self.val_tokens = val_tokens
        self.val_seed = val_seed
        # Fail before any training starts when the data is not there.
        self.files = resolve_files(path) if path is not None else None
        self._cache_key: str | None = None
        self.batches_trained = 0  # saved in checkpoints; where a resumed run starts
        self.cache_hit: bool | None = None  # set by setup(): True when tokens came from cache
        self.tokens: dict[str, np.ndarray] = {}

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def token_bytes(self) -> np.ndarray:
        """``[vocab]`` bytes per token, for bits per byte."""
        return self.tokenizer.token_bytes()

    # ---- loading ---------------------------------------------------------------------

    def _file_docs(self) -> tuple[Path, list[Path]]:
        """The root and the text files to read, capped at ``max_bytes`` in hash order."""
        if self.files is None:
            root, files = stdlib_files()
        else:
            files = self.files
            root = Path(os.path.commonpath([f.parent for f in files]))
        if self.max_bytes is not None:
            # A hash order, not alphabetical, so a capped corpus still mixes all folders;
            # salted so that it does not line up with the split (which uses the bare key).
            order = sorted(files, key=lambda f: _unit("cap:" + f.relative_to(root).as_posix()))
            keep, total = [], 0
            for f in order:
                if total >= self.max_bytes:
                    break
                keep.append(f)
                total += f.stat().st_size
            files = sorted(keep)
        return root, files

    def _uses_files_as_documents(self) -> bool:
        return self.hf_name is None and (
            self.files is None or all(SUFFIXES[f.suffix] == "text" for f in self.files)
        )

    def cache_key(self) -> str:
        """A hash of everything the tokenised arrays depend on (computed once per instance)."""
        if self._cache_key is None:
            self._cache_key = self._compute_cache_key()
        return self._cache_key

    def _compute_cache_key(self) -> str:
        desc: dict[str, Any] = {
            "version": _FORMAT_VERSION,
            "tokenizer": self.tokenizer.name,
            "val_fraction": self.val_fraction,
            "max_bytes": self.max_bytes,
            "text_field": self.text_field,
        }
        if self.hf_name is not None:
            desc["hf_name"] = self.hf_name
        else:
            if self._uses_files_as_documents():
                files = self._file_docs()[1]
            else:
                files = self.files or []
            desc["files"] = [
                (f.as_posix(), f.stat().st_size, f.stat().st_mtime_ns) for f in files
            ]
        return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:20]

    def load_documents(self):
        """The corpus as a ``datasets.Dataset`` with columns ``key`` and ``text``."""
        import datasets

        if self._uses_files_as_documents():
            root, files = self._file_docs()
            texts = [f.read_text(encoding="utf-8", errors="replace") for f in files]
            keys = [f.relative_to(root).as_posix() for f in files]
            return datasets.Dataset.from_dict({"key": keys, "text": texts})

        hf_cache = str(self.cache_dir / "hf")
        if self.hf_name is not None:
            ds = datasets.load_dataset(self.hf_name, split="train", cache_dir=hf_cache)
        else:
            kinds = {SUFFIXES[f.suffix] for f in self.files}
            if len(kinds) > 1:
                raise ValueError(f"data path {self.path!r} mixes file kinds {sorted(kinds)}")
            builder = kinds.pop()
            data_files = [str(f) for f in self.files]
            ds = datasets.load_dataset(
                builder, data_files=data_files, split="train", cache_dir=hf_cache,
                **({"sample_by": "document"} if builder == "text" else {}),
            )
        if self.text_field not in ds.column_names:
            raise ValueError(
                f"text_field {self.text_field!r} not in the data's columns {ds.column_names}"
            )
        if self.max_bytes is not None:
            total, n = 0, 0
            for text in ds[self.text_field]:
                if total >= self.max_bytes:
                    break
                total += len(text.encode("utf-8"))
                n += 1
            ds = ds.select(range(n))
        ds = ds.select_columns([self.text_field])
        if self.text_field != "text":
            ds = ds.rename_column(self.text_field, "text")
        return ds.add_column("key", [str(i) for i in range(len(ds))])

    def _tokenize(self) -> dict[str, np.ndarray]:
        docs = self.load_documents()
        if len(docs) == 0:
            raise ValueError("the corpus is empty")
        is_val = split_is_val(docs["key"], self.val_fraction)
        sep = np.array([self.tokenizer.eos_id])
        encoded = [self.tokenizer.encode(t) for t in docs["text"]]
        dtype = np.uint8 if self.vocab_size <= 2**8 else np.uint16 if self.vocab_size <= 2**16 else np.int32

        def join(parts: list[np.ndarray]) -> np.ndarray:
            if not parts:
                return np.zeros(0, dtype=dtype)
            return np.concatenate([x for p in parts for x in (p, sep)]).astype(dtype)

        if is_val.all() or not is_val.any():
            # Too few documents to split by document (e.g. one big file): hold out the tail.
            stream = join(encoded)
            cut = int(len(stream) * (1 - self.val_fraction))
            self._meta = {"split": "tail", "documents": {"train": len(docs), "val": len(docs)}}
            return {"train": stream[:cut], "val": stream[cut:]}
        self._meta = {"split": "by document",
                      "documents": {"train": int((~is_val).sum()), "val": int(is_val.sum())}}
        return {
            "train": join([e for e, v in zip(encoded, is_val, strict=True) if not v]),
            "val": join([e for e, v in zip(encoded, is_val, strict=True) if v]),
        }

    def _cache_paths(self) -> dict[str, Path]:
        key = self.cache_key()
        return {s: self.cache_dir / "tokens" / f"{key}-{s}.npy" for s in ("train", "val")}

    def _meta_path(self) -> Path:
        return self.cache_dir / "tokens" / f"{self.cache_key()}-meta.json"

    def prepare_data(self) -> None:
        """Tokenise into the cache unless it is there already (rank 0 only under DDP)."""
        paths = self._cache_paths()
        if all(p.exists() for p in paths.values()) and self._meta_path().exists():
            return
        for split, arr in self._tokenize().items():
            _atomic_save(paths[split], arr)
        atomic_write(self._meta_path(), json.dumps(self._meta) + "\n")

    def setup(self, stage: str | None = None) -> None:
        if self.tokens:
            return
        paths = self._cache_paths()
        self.cache_hit = all(p.exists() for p in paths.values()) and self._meta_path().exists()
        if not self.cache_hit:
            self.prepare_data()
        self.tokens = {s: np.load(p, mmap_mode="r") for s, p in paths.items()}
        for split in ("train", "val"):
            if len(self.tokens[split]) < self.seq_len + 1:
                raise ValueError(
                    f"the {split} split has only {len(self.tokens[split])} tokens, fewer than "
                    f"seq_len + 1 = {self.seq_len + 1}; raise max_bytes or val_fraction"
                )

    # ---- loaders ---------------------------------------------------------------------

    def dataset(self, split: str) -> PackedSequences:
        self.setup()
        return PackedSequences(self.tokens[split], self.seq_len)

    def train_dataloader(self) -> DataLoader:
        ds = self.dataset("train")
        # batch_size is per device; under DDP each rank takes its slice of every global batch
        sampler = ResumableBatchSampler(SequentialSampler(ds), self.batch_size, seed=self.seed,
                                        start_batch=self.batches_trained)
        return DataLoader(
            ds, batch_sampler=sampler, num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

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
        meta = json.loads(self._meta_path().read_text())
        windows = len(self.val_windows())
        return {"split": meta["split"], "val_fraction": self.val_fraction,
                "documents": meta["documents"]["val"], "held_out_tokens": len(self.tokens["val"]),
                "windows": windows, "tokens": windows * self.seq_len, "seq_len": self.seq_len,
                "seed": self.val_seed, "tokenizer": self.tokenizer.name}

    def val_dataloader(self) -> DataLoader:
        ds = torch.utils.data.Subset(self.dataset("val"), self.val_windows().tolist())
        # every window once, split across ranks (sums are reduced over ranks)
        sampler = ShardedEvalSampler(SequentialSampler(ds), self.batch_size)
        return DataLoader(ds, batch_sampler=sampler, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Called once per batch right before it is used, after prefetching: the honest
        # place to count what training consumed.
        if self.trainer is not None and self.trainer.training:
            self.batches_trained += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"batches_trained": self.batches_trained, "seed": self.seed,
                "batch_size": self.batch_size, "seq_len": self.seq_len}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("seed", "batch_size", "seq_len"):
            if name in state and state[name] != getattr(self, name):
                warnings.warn(
                    f"resuming with data.{name}={getattr(self, name)} but the checkpoint used "
                    f"{state[name]}; the data order will not continue exactly",
                    stacklevel=2,
                )
        self.batches_trained = int(state.get("batches_trained", 0))
