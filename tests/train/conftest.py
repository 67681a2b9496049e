"""Train tests: the root conftest already points POSTFORMER_CACHE at a session temp folder."""

import pytest

# Small enough to tokenise in a blink, large enough for a few batches of 32-token windows.
TINY_DATA = {"max_bytes": 150_000, "seq_len": 32, "batch_size": 4}


@pytest.fixture
def tiny_data() -> dict:
    return dict(TINY_DATA)
