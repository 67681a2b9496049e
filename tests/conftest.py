"""Shared test setup: GPU-marked tests skip without CUDA; caches go to a temporary folder."""

from __future__ import annotations

import pytest
import torch


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
