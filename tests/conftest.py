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


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Tokenised-data caches of one test session never leak into the user's ~/.cache."""
    monkeypatch.setenv("POSTFORMER_CACHE", str(tmp_path_factory.getbasetemp() / "postformer-cache"))
