"""Batch samplers under data parallelism: each rank's slice of one global order, exact resume,
evaluation without duplicates, and Lightning's sampler injection."""

import numpy as np
import pytest
from torch.utils.data import DistributedSampler

from postformer.train.sampler import ResumableBatchSampler, ShardedEvalSampler


def _ranks(cls, n, b, world, **kw):
    return [cls(DistributedSampler(range(n), num_replicas=world, rank=r, shuffle=True), b, **kw)
            for r in range(world)]


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_split_the_single_device_global_batches(world):
    n, b = 50, 4
    single = ResumableBatchSampler(range(n), batch_size=world * b, seed=5)
    ranks = _ranks(ResumableBatchSampler, n, b, world, seed=5)
    assert [len(r) for r in ranks] == [len(single)] * world == [n // (world * b)] * world
    for _ in range(2):  # two epochs
        whole = list(single)
        parts = [list(r) for r in ranks]
        for k, batch in enumerate(whole):
            # rank r holds items [r*b, (r+1)*b) of global batch k, in order
            assert sum((p[k] for p in parts), []) == batch
        assert all(len(x) == b for p in parts for x in p)


def test_resume_is_the_same_global_batch_on_every_rank():
    n, b, world = 41, 3, 2
    uninterrupted = [[x for _ in range(3) for x in r] for r in _ranks(ResumableBatchSampler, n, b, world, seed=1)]
    per_epoch = n // (b * world)
    for start in (0, 1, per_epoch, per_epoch + 2):
        resumed = _ranks(ResumableBatchSampler, n, b, world, seed=1, start_batch=start)
        for r in range(world):
            tail = [x for _ in range(3) for x in resumed[r]][: 3 * per_epoch - start]
            assert tail == uninterrupted[r][start:]


def test_single_process_order_is_unchanged():
    # the order of one process is a seeded permutation cut into batches (as before DDP)
    s = ResumableBatchSampler(range(23), batch_size=4, seed=3)
    perm = np.random.default_rng([3, 0]).permutation(23)
    assert list(s) == [perm[i * 4:(i + 1) * 4].tolist() for i in range(5)]


def test_too_little_data_for_one_global_batch():
    with pytest.raises(ValueError, match="fewer than one global batch"):
        _ranks(ResumableBatchSampler, 7, 4, 2)
    with pytest.raises(ValueError, match="drop_last"):
        ResumableBatchSampler(range(10), 2, drop_last=False)


@pytest.mark.parametrize("n", [1, 7, 8, 13, 16])
def test_eval_shards_cover_every_item_once(n):
    b, world = 2, 3
    ranks = _ranks(ShardedEvalSampler, n, b, world)
    parts = [list(r) for r in ranks]
    assert [len(p) for p in parts] == [len(r) for r in ranks]
    # global batch k = the ranks' k-th batches in rank order = items [k*b*W, (k+1)*b*W)
    seen = []
    for k in range(max(len(p) for p in parts)):
        seen += sum((p[k] for p in parts if k < len(p)), [])
    assert seen == list(range(n))
    assert list(ShardedEvalSampler(range(n), b)) == [list(range(i, min(i + b, n))) for i in range(0, n, b)]
