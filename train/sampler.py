"""Batch samplers that are exact under data parallelism and exact on resume, and the
DataModule base that keeps their position in checkpoints.

Both follow ``torch.utils.data.BatchSampler``'s constructor (``sampler, batch_size,
drop_last``), which is what lets Lightning inject its ``DistributedSampler`` into them under
DDP/FSDP with its default ``use_distributed_sampler=True``: Lightning re-creates the batch
sampler with the distributed sampler as ``sampler`` and every other argument as given. The
injected sampler's order is not used; only its ``rank`` and ``num_replicas`` are (without
one, the ranks of an initialised ``torch.distributed`` process group, else rank 0 of 1).

``batch_size`` is per device. One global batch is ``batch_size * num_replicas`` items; rank
``r`` takes the ``r``-th slice of it. So a run on ``W`` devices with batch ``b`` trains on
exactly the batches of one device with batch ``W * b``, and the gradient DDP averages is the
gradient of the same mean loss.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import lightning as L
import numpy as np
import torch.distributed as dist
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    Sampler,
    SequentialSampler,
)


def replica_of(sampler: Sampler | None) -> tuple[int, int]:
    """``(rank, num_replicas)`` of this process: from Lightning's injected
    ``DistributedSampler``, else from the default process group, else ``(0, 1)``."""
    if isinstance(sampler, DistributedSampler):
        return int(sampler.rank), int(sampler.num_replicas)
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ResumableBatchSampler(BatchSampler):
    """Shuffled training batches whose order depends only on ``(seed, epoch)``, startable
    mid-stream, split across data-parallel ranks.

    Args:
        sampler: anything whose length is the number of items (the dataset's default
            sampler), or Lightning's injected ``DistributedSampler`` (see the module
            docstring); its order is ignored.
        batch_size: items per batch on each device.
        drop_last: must be True: every global batch is whole, every epoch has ``len(self)``
            batches (the remainder of the permutation is dropped).
        seed: the epoch permutations are ``default_rng([seed, epoch])``.
        start_batch: the global batch to begin at (a count of batches already trained,
            the same number on every rank).

    The stream of global batches over all epochs is fixed; the first ``iter()`` after a
    resume yields the rest of that epoch, the next one starts the following epoch.
    """

    def __init__(self, sampler: Sampler, batch_size: int, drop_last: bool = True, seed: int = 0,
                 start_batch: int = 0) -> None:
        if not drop_last:
            raise ValueError("ResumableBatchSampler needs drop_last=True (whole global batches)")
        super().__init__(sampler, batch_size, drop_last)
        self.seed = seed
        self.next_batch = start_batch
        self.rank, self.num_replicas = replica_of(sampler)
        self.n_items = len(sampler.dataset) if isinstance(sampler, DistributedSampler) \
            else len(sampler)
        if self.n_items < self.global_batch:
            raise ValueError(
                f"only {self.n_items} training sequences, fewer than one global batch "
                f"({batch_size} x {self.num_replicas} devices); use more data (max_bytes), a "
                "shorter seq_len or a smaller batch"
            )

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.num_replicas

    def __len__(self) -> int:
        return self.n_items // self.global_batch

    def epoch_order(self, epoch: int) -> np.ndarray:
        """``[n_items]``: epoch ``epoch``'s permutation (the same on every rank)."""
        return np.random.default_rng([self.seed, epoch]).permutation(self.n_items)

    def __iter__(self) -> Iterator[list[int]]:
        n = len(self)
        epoch, offset = divmod(self.next_batch, n)
        self.next_batch = (epoch + 1) * n  # set now: batches are prefetched
        order = self.epoch_order(epoch)
        g, lo = self.global_batch, self.rank * self.batch_size
        for b in range(offset, n):
            yield order[b * g + lo : b * g + lo + self.batch_size].tolist()


class ShardedEvalSampler(BatchSampler):
    """Evaluation batches in a fixed order, each global batch split across ranks, nothing
    repeated (Lightning's ``DistributedSampler`` pads ranks with duplicates, which biases a
    sum over the set; here the last global batch is simply shorter on some ranks).

    Args:
        sampler: an ordered sampler over the evaluation items (e.g. ``range(n)`` or a
            ``Subset``'s indices), or Lightning's injected ``DistributedSampler`` whose
            ``dataset`` is then enumerated in order.
        batch_size: items per batch on each device.
        drop_last: must be False (every item is evaluated once).
    """

    def __init__(self, sampler: Sampler, batch_size: int, drop_last: bool = False) -> None:
        if drop_last:
            raise ValueError("ShardedEvalSampler evaluates every item: drop_last must be False")
        super().__init__(sampler, batch_size, drop_last)
        self.rank, self.num_replicas = replica_of(sampler)
        self.n_items = len(sampler.dataset) if isinstance(sampler, DistributedSampler) \
            else len(sampler)

    def __len__(self) -> int:
        g = self.batch_size * self.num_replicas
        n_global, rest = divmod(self.n_items, g)
        return n_global + (1 if rest > self.rank * self.batch_size else 0)

    def __iter__(self) -> Iterator[list[int]]:
        g, lo = self.batch_size * self.num_replicas, self.rank * self.batch_size
        for start in range(0, self.n_items, g):
            idx = list(range(start + lo, min(start + lo + self.batch_size, self.n_items)))
            if idx:
                yield idx


class PositionedDataModule(L.LightningDataModule):
    """A DataModule whose training position is part of the checkpoint, so a resumed run
    starts at the batch after the last one trained (Lightning saves ``state_dict()``).

    Subclasses set ``seed``, ``batch_size`` and ``num_workers`` and build their loaders with
    ``train_loader`` / ``eval_loader``; ``resume_keys`` are the settings a resume warns about
    when they changed (they would change the order).
    """

    resume_keys: tuple[str, ...] = ("seed", "batch_size")

    def __init__(self) -> None:
        super().__init__()
        self.batches_trained = 0  # saved in checkpoints; where a resumed run starts

    def train_loader(self, ds: Dataset, collate_fn: Any = None) -> DataLoader:
        """Shuffled training batches of ``ds`` from ``batches_trained`` on; ``batch_size`` is
        per device (under DDP each rank takes its slice of every global batch)."""
        sampler = ResumableBatchSampler(SequentialSampler(ds), self.batch_size, seed=self.seed,
                                        start_batch=self.batches_trained)
        return DataLoader(ds, batch_sampler=sampler, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, collate_fn=collate_fn)

    def eval_loader(self, ds: Dataset, collate_fn: Any = None) -> DataLoader:
        """Every item of ``ds`` once, in order, split across ranks (sums reduced over ranks)."""
        sampler = ShardedEvalSampler(SequentialSampler(ds), self.batch_size)
        return DataLoader(ds, batch_sampler=sampler, num_workers=self.num_workers,
                          collate_fn=collate_fn)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Called once per batch right before it is used, after prefetching: the honest
        # place to count what training consumed.
        if self.trainer is not None and self.trainer.training:
            self.batches_trained += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"batches_trained": self.batches_trained,
                **{k: getattr(self, k) for k in self.resume_keys}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in self.resume_keys:
            if name in state and state[name] != getattr(self, name):
                warnings.warn(
                    f"resuming with data.{name}={getattr(self, name)} but the checkpoint used "
                    f"{state[name]}; the data order will not continue exactly",
                    stacklevel=2,
                )
        self.batches_trained = int(state.get("batches_trained", 0))
