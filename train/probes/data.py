"""``ProbeDataModule``: a synthetic probe task (MQAR, the MAD suite) as a Lightning DataModule.

The task's fixed training and test sets (``probes.tasks.make_split``: deterministic in the
task, its settings and ``seed``; no test example in the training set) become batches of
``(inputs [B, T], targets [B, T])``, targets ``IGNORE`` except at the answers, which is
what ``LMModule`` scores (loss and ``val/accuracy`` on the answers only). The same trainer
as language modelling trains it, through ``postformer fit`` with::

    data:
      class_path: postformer.train.probes.data.ProbeDataModule
      init_args: {task: mqar, settings: {seq_len: 128, num_kv_pairs: 8}, batch_size: 64}

Training order and resume are those of ``TextDataModule`` (``train.sampler``): shuffled by
``(seed, epoch)``, the position saved in checkpoints, each rank its slice of every global
batch. Validation is the whole test set, every example once.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..sampler import PositionedDataModule


class TaskExamples(Dataset):
    """Examples ``i`` -> ``(inputs [T], targets [T])`` int64 tensors from two ``[N, T]`` arrays."""

    def __init__(self, inputs: np.ndarray, targets: np.ndarray) -> None:
        if inputs.shape != targets.shape or inputs.ndim != 2:
            raise ValueError(f"inputs and targets must be [N, T] arrays of one shape, got "
                             f"{inputs.shape} and {targets.shape}")
        self.inputs, self.targets = inputs, targets

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.from_numpy(self.inputs[i].astype(np.int64)),
                torch.from_numpy(self.targets[i].astype(np.int64)))


def _compact(a: np.ndarray) -> np.ndarray:
    """The smallest signed dtype that holds ``a`` (100K MQAR examples of 512 tokens are 400 MB
    as int64, 100 MB as int16)."""
    for dtype in (np.int16, np.int32):
        info = np.iinfo(dtype)
        if a.size == 0 or (a.min() >= info.min and a.max() <= info.max):
            return a.astype(dtype)
    return a


class ProbeDataModule(PositionedDataModule):
    """A probe task's fixed train and test sets.

    Args:
        task: a name from ``postformer.train.probes.tasks.TASKS`` (``mqar``,
            ``in_context_recall``, ``noisy_in_context_recall``, ``fuzzy_in_context_recall``,
            ``selective_copying``, ``compression``, ``memorization``).
        settings: the task's settings over its paper defaults (``tasks.task_settings``: e.g.
            ``seq_len``, ``vocab_size``, ``num_kv_pairs``, ``num_train``, ``num_test``).
        seed: the data seed (examples and the training order).
        batch_size: examples per batch on each device.
        num_workers: DataLoader workers.
    """

    def __init__(self, task: str = "mqar", settings: dict[str, Any] | None = None, seed: int = 0,
                 batch_size: int = 64, num_workers: int = 0) -> None:
        super().__init__()
        from .tasks import task_settings

        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        self.task = task
        self.settings = task_settings(task, **(settings or {}))  # checks names and values now
        self.seed = seed
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.splits: dict[str, TaskExamples] = {}

    @staticmethod
    def planned_vocab(init_args: dict[str, Any]) -> int:
        """The vocabulary a model needs for the task (``train.cli`` sets the model's)."""
        from .tasks import model_vocab

        return model_vocab(init_args.get("task") or "mqar", **(init_args.get("settings") or {}))

    @property
    def vocab_size(self) -> int:
        from .tasks import model_vocab

        return model_vocab(self.task, **self.settings)

    @property
    def seq_len(self) -> int:
        """Tokens per example (the model's input length; not always the task's ``seq_len``
        setting, e.g. compression's inputs are the sequence and as many compression tokens)."""
        from .tasks import input_length

        return input_length(self.task, **self.settings)

    def token_bytes(self) -> np.ndarray:
        """One "byte" per token: a probe's bpb is its loss in bits per answer token."""
        return np.ones(self.vocab_size, dtype=np.int64)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        from .tasks import make_split

        for name, (x, y) in make_split(self.task, self.seed, **self.settings).items():
            self.splits[name] = TaskExamples(_compact(np.asarray(x)), _compact(np.asarray(y)))

    def dataset(self, split: str) -> TaskExamples:
        """``train`` or ``test``."""
        self.setup()
        return self.splits[split]

    def train_dataloader(self) -> DataLoader:
        return self.train_loader(self.dataset("train"))

    def val_dataloader(self) -> DataLoader:
        return self.eval_loader(self.dataset("test"))

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def describe(self) -> dict[str, Any]:
        """The task as a report states it: name, settings, seed, set sizes."""
        self.setup()
        return {"task": self.task, "settings": dict(self.settings), "seed": self.seed,
                "train_examples": len(self.splits["train"]),
                "test_examples": len(self.splits["test"])}
