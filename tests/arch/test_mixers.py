"""The contract every mixer meets, parametrised over all mixers: recurrent decoding equals the
parallel form, a multi-token call continues a non-empty cache, and the cache carries the past.
Each mixer's own equations are checked in its file (test_<mixer>.py)."""

from __future__ import annotations

import pytest
import torch
from mixer_testing import CONTRACT_D_MODEL as D_MODEL
from mixer_testing import make_mixer, step_by_step

# (mixer name, options): small but non-trivial shapes, GQA and several B/C groups included.
CASES = [
    ("attn", {"n_heads": 4}),
    ("attn", {"n_heads": 4, "n_kv_heads": 2}),
    ("mamba", {"d_state": 8}),
    ("rglru", {"n_heads": 4}),
    ("swa", {"n_heads": 4, "n_kv_heads": 2, "window": 4}),  # continuation chunks longer than the window
    ("swa", {"n_heads": 4, "window": 8}),
    ("mamba2", {"d_state": 16, "head_dim": 16, "ngroups": 2}),
    ("mamba2", {"d_state": 8}),  # head_dim clamps to 64: 2 heads
    ("gla", {}),
    ("gla", {"n_heads": 2, "expand_k": 1.0}),
    ("deltanet", {"n_heads": 2}),
    ("gdn", {"n_heads": 2, "head_dim": 16}),
    ("gdn", {}),  # 1 head of 48 key, 96 value channels
    ("retnet", {"n_heads": 4}),
    ("hgrn2", {"expand_ratio": 16}),
    ("gated_attn", {"n_heads": 4, "n_kv_heads": 2, "gate": "headwise"}),
    ("gated_attn", {"n_heads": 4}),
    ("mlstm", {"n_heads": 2}),
    ("deltaproduct", {"n_heads": 2, "head_dim": 16, "n_householder": 3}),
    ("kda", {"n_heads": 2, "head_dim": 16}),
    ("mamba3", {}),
    ("rwkv7", {}),
]
IDS = [f"{name}-{'-'.join(f'{k}{v}' for k, v in opts.items()) or 'default'}" for name, opts in CASES]


@pytest.mark.parametrize(("name", "opts"), CASES, ids=IDS)
def test_step_equals_parallel(name, opts):
    mixer = make_mixer(name, opts)
    torch.manual_seed(1)
    x = torch.randn(2, 21, D_MODEL)
    with torch.no_grad():
        y = mixer(x)  # (B, T, D)
        for split in (0, 1, int(torch.randint(2, 20, ()).item())):
            y_rec = step_by_step(mixer, x, split)
            torch.testing.assert_close(y_rec, y, atol=1e-5, rtol=1e-4, msg=f"split={split}")


@pytest.mark.parametrize(("name", "opts"), CASES, ids=IDS)
def test_chunked_continuation(name, opts):
    """A multi-token call on a non-empty cache (attention's bottom-right causal mask)."""
    mixer = make_mixer(name, opts)
    torch.manual_seed(2)
    x = torch.randn(3, 19, D_MODEL)
    with torch.no_grad():
        y = mixer(x)
        cache = mixer.new_cache(3)
        parts = [mixer(x[:, :5], cache), mixer(x[:, 5:12], cache), mixer(x[:, 12:13], cache), mixer(x[:, 13:], cache)]
    torch.testing.assert_close(torch.cat(parts, dim=1), y, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("name", "opts"), CASES, ids=IDS)
def test_cache_carries_the_past(name, opts):
    """Guards the test above: stepping without history gives a different output."""
    mixer = make_mixer(name, opts)
    x = torch.randn(1, 8, D_MODEL)
    with torch.no_grad():
        y = mixer(x)
        y_last_alone = mixer(x[:, -1:], mixer.new_cache(1))
    assert not torch.allclose(y_last_alone, y[:, -1:], atol=1e-3)


def test_every_registered_mixer_has_a_case():
    from postformer.arch import MIXERS

    assert {name for name, _ in CASES} == set(MIXERS)
