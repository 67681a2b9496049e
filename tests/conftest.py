"""Shared test setup: GPU-marked tests skip without CUDA; caches go to a temporary folder;
Triton kernels run under Triton's interpreter on CPU-only machines."""

from __future__ import annotations

import os

import pytest
import torch

# Triton reads TRITON_INTERPRET when a kernel is defined (@triton.jit), i.e. when a
# ``postformer.kernels.*.triton`` module is first imported: set it here, before any test module
# imports postformer, so CPU CI runs the Triton kernels on CPU tensors. A user's explicit
# setting (e.g. TRITON_INTERPRET=0) wins.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


#: op families; a GPU test belongs to the first one named in its function's name, else its file's
OPS = ("dplr_delta_rule", "delta_rule", "selective_scan", "linear_scan", "causal_conv1d", "rms_norm", "gla")


def _op_of(item) -> str:
    for where in (item.originalname, item.path.name):
        for op in OPS:
            if op in where:
                return op
    return "other"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        # With pytest-xdist's --dist loadgroup (bench/gpu_check.sh), all GPU tests of one op and
        # input dtype run in one worker, so each kernel variant is compiled once, not once per
        # worker: the compilations, not the tests, are what takes the time on a fresh GPU
        # machine. bf16 and fp32 compile different variants (other dot precisions and operand
        # types), so they form separate groups and compile in parallel.
        for item in items:
            if "gpu" in item.keywords:
                dtype = "-bf16" if "bf16" in item.name else ""
                item.add_marker(pytest.mark.xdist_group(name=_op_of(item) + dtype))
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Tokenised-data caches of one test session never leak into the user's ~/.cache."""
    monkeypatch.setenv("POSTFORMER_CACHE", str(tmp_path_factory.getbasetemp() / "postformer-cache"))
