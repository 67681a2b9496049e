"""Each mixer's width rule (``Mixer.width_options``, collected by ``registry.width_options``):
the same options as the size ladder's former hard-coded table at every width, options that
resolve and build at every ladder width, and heads that keep to each mixer's documented rule,
checked on the resolved options by properties written apart from the rules."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from postformer.arch import MIXERS, width_options
from postformer.arch.mixer import heads_of_at_least

# ---- the legacy reference: scaling/plan.py's table before the rules moved into the mixers ----


def _heads(channels: int, per_head: int, *, even: bool = False, divides: int | None = None) -> int:
    """The most heads of at least ``per_head`` channels that divide ``channels`` (and
    ``divides``), with an even head dim when asked; at least one."""
    for h in range(max(1, channels // per_head), 0, -1):
        if channels % h or (divides is not None and divides % h):
            continue
        if even and (channels // h) % 2:
            continue
        return h
    return 1


def _rung_mixers(d: int, head_dim: int, d_state: int | None) -> dict[str, dict[str, Any]]:
    """Mixer options that keep heads and states sensible at width d (see the docstring)."""
    attn = _heads(d, head_dim, even=True)
    if attn == 1 and d >= 16 and d % 4 == 0:  # issue 25: two heads wherever two even heads of 8+ fit
        attn = 2
    inner = 2 * d  # mamba2's d_inner at expand 2
    mamba_hd = inner // _heads(inner, head_dim)
    key_gla, val_gla = d // 2, d  # GLA: expand_k 0.5, expand_v 1
    gla = _heads(key_gla, 32, divides=val_gla) if key_gla >= 32 else 1
    key_gdn = int(round(0.75 * d))
    gdn = max(1, key_gdn // 32)
    kda = _heads(d, head_dim)  # Kimi Delta Attention: key dim d in heads of about head_dim
    return {
        "attn": {"n_heads": attn},
        "swa": {"n_heads": attn},
        "mamba2": {"head_dim": mamba_hd, **({"d_state": int(d_state)} if d_state else {})},
        "gla": {"n_heads": gla},
        "gdn": {"n_heads": gdn, "head_dim": max(1, key_gdn // gdn)},
        "deltanet": {"n_heads": max(1, d // 32), "head_dim": d // max(1, d // 32)},
        "gated_attn": {"n_heads": attn},
        "deltaproduct": {"n_heads": gdn, "head_dim": max(1, key_gdn // gdn)},
        "kda": {"n_heads": kda, "head_dim": d // kda},
        "mamba3": {"head_dim": mamba_hd, **({"d_state": int(d_state)} if d_state else {})},
        "rwkv7": {"head_dim": d // kda},  # heads of about head_dim channels that divide d
    }


# ---- behaviour preserved ----------------------------------------------------------------------

LEGACY_HEAD_DIMS = (1, 8, 16, 32, 64, 128)
LEGACY_D_STATES = (None, 16, 64, 128)


def test_rules_equal_the_legacy_table_at_every_width():
    """Every width 8..1024, odd ones included (pure Python: well under a second)."""
    for d in range(8, 1025):
        for head_dim in LEGACY_HEAD_DIMS:
            for d_state in LEGACY_D_STATES:
                got = width_options(d, head_dim=head_dim, d_state=d_state)
                want = _rung_mixers(d, head_dim, d_state)
                assert got == want, (d, head_dim, d_state)
                assert list(got) == [name for name in MIXERS if name in want], "not in MIXERS order"


def test_heads_of_at_least_is_the_legacy_helper():
    for channels in range(1, 200):
        for per_head in range(1, 70):
            for divides in (None, channels, 2 * channels, channels // 2 or 1, 96):
                for even in (False, True):
                    assert heads_of_at_least(channels, per_head, even=even, divides=divides) == _heads(
                        channels, per_head, even=even, divides=divides
                    ), (channels, per_head, even, divides)


def test_defaults_apply_without_a_ladder_knob():
    """The keyword defaults: head_dim 16, no d_state (mamba2/mamba3 keep their default 128)."""
    assert width_options(256) == _rung_mixers(256, 16, None)
    assert "d_state" not in width_options(256, d_state=0)["mamba2"]  # 0 counts as not given


# ---- every mixer states its rule ------------------------------------------------------------

#: mixers that inherit their parent's rule rather than stating one
INHERITED = {"swa": "attn", "gated_attn": "attn", "deltaproduct": "gdn"}
#: mixers whose defaults already follow the width: their rule is empty
EMPTY = {"mamba", "hgrn2", "rglru", "retnet", "mlstm"}


@pytest.mark.parametrize("name", list(MIXERS))
def test_every_mixer_states_its_rule(name):
    cls = MIXERS[name]
    if name in INHERITED:
        assert "width_options" not in vars(cls)
        parent = MIXERS[INHERITED[name]]
        assert issubclass(cls, parent) and cls.width_options.__func__ is parent.width_options.__func__
    else:
        assert "width_options" in vars(cls), f"{name} does not state its width rule"
        doc = vars(cls)["width_options"].__func__.__doc__
        assert doc and len(doc.split()) > 20, f"{name}'s rule is not said in words"
    opts = cls.width_options(256, head_dim=32, d_state=64)
    assert set(opts) <= set(cls.option_keys())
    assert (opts == {}) == (name in EMPTY)


# ---- the rules resolve, build and keep to their documented properties ------------------------

#: with awkward widths: 150, 210 and 270 have an odd divisor (25, 35, 45) as the smallest head dim
#: of at least 16 or 32 channels, where the attention family needs an even one
LADDER_WIDTHS = (16, 18, 20, 22, 24, 26, 28, 32, 36, 40, 44, 48, 56, 64, 80, 96, 100, 128, 150, 160,
                 192, 210, 256, 270, 320, 384, 512, 640, 768, 1024)
HEAD_DIMS = (16, 32, 64)
D_STATES = (None, 16, 128)


def _divisors(n: int) -> list[int]:
    return [e for e in range(1, n + 1) if n % e == 0]


def _smallest_divisor_at_least(n: int, floor: int, *, even: bool = False) -> int:
    """The smallest (even) divisor of n that is >= floor; n itself when none is."""
    fits = [e for e in _divisors(n) if e >= floor and not (even and e % 2)]
    return min(fits) if fits else n


def _check_attention(d: int, head_dim: int, d_state: int | None, o: Any) -> None:
    # heads of head_dim channels: the smallest even head dim >= head_dim that divides d
    P = d // o.n_heads
    assert o.n_heads * P == d and P % 2 == 0 and o.n_kv_heads == o.n_heads
    if d >= 16 and d % 4 == 0:  # two even heads of >= 8 channels fit: never a single head
        assert o.n_heads >= 2 and P >= 8
        if P < head_dim:
            assert o.n_heads == 2
            return
    assert P >= min(head_dim, d)
    assert P == _smallest_divisor_at_least(d, head_dim, even=True)


def _check_ssm(d: int, head_dim: int, d_state: int | None, o: Any) -> None:
    # Mamba-2 / Mamba-3: heads of at least head_dim channels over d_inner = 2 d; the ladder's state
    d_inner = o.expand * d
    assert o.expand == 2 and d_inner % o.head_dim == 0
    assert (d_inner // o.head_dim) * o.head_dim == 2 * d
    assert o.head_dim >= min(head_dim, d_inner)
    assert o.head_dim == _smallest_divisor_at_least(d_inner, head_dim)
    assert o.d_state == (d_state if d_state else 128)


def _check_gla(d: int, head_dim: int, d_state: int | None, o: Any) -> None:
    key, value = int(d * o.expand_k), int(d * o.expand_v)
    assert (o.expand_k, o.expand_v) == (0.5, 1.0)
    assert key % o.n_heads == 0 and value % o.n_heads == 0
    if key < 32:
        assert o.n_heads == 1
        return
    assert key // o.n_heads >= 32
    # maximal: no more heads would also divide both and keep >= 32 key channels each
    assert not [h for h in range(o.n_heads + 1, key + 1) if key % h == 0 and value % h == 0 and key // h >= 32]


def _check_key_heads_of_32(key: int, o: Any) -> None:
    """Heads of at least 32 key channels fitting in ``key`` channels: as many as fit, the
    remainder (fewer than one per head) dropped; one head of all of them below 32."""
    H, P = o.n_heads, o.head_dim
    if key < 32:
        assert (H, P) == (1, key)
        return
    assert 32 * H <= key < 32 * (H + 1)  # the most heads of >= 32 channels
    assert 32 <= P < 64
    assert H * P <= key < H * (P + 1)  # as wide as they can be


def _check_deltanet(d: int, head_dim: int, d_state: int | None, o: Any) -> None:
    assert o.expand_v == 1.0
    _check_key_heads_of_32(d, o)


def _check_gdn(d: int, head_dim: int, d_state: int | None, o: Any) -> None:
    assert o.expand_v == 2.0
    q, r = divmod(3 * d, 4)  # the key dim 0.75 d, rounded half to even (Python's round)
    key = q + (2 * r > 4 or (2 * r == 4 and q % 2))
    _check_key_heads_of_32(key, o)


def _check_kda(d: int, head_dim: int, d_state: int | None, o: Any) -> None:
    # heads of about head_dim channels over key dim d: the smallest divisor of d >= head_dim
    assert o.n_heads * o.head_dim == d
    assert o.head_dim >= min(head_dim, d)
    assert o.head_dim == _smallest_divisor_at_least(d, head_dim)
    assert o.gate_low_rank_dim == o.head_dim


def _check_rwkv7(d: int, head_dim: int, d_state: int | None, o: Any) -> None:
    assert d % o.head_dim == 0 and o.head_dim >= min(head_dim, d)
    assert o.head_dim == _smallest_divisor_at_least(d, head_dim)


def _check_hgrn2(d: int, head_dim: int, d_state: int | None, o: Any) -> None:
    assert o.expand_ratio == max(e for e in _divisors(d) if e <= 128)


def _check_mamba(d: int, head_dim: int, d_state: int | None, o: Any) -> None:
    assert o.d_state == 16  # the paper's, whatever the ladder's d_state
    assert o.expand == 2
    assert o.dt_rank == -(-d // 16)


def _check_rglru(d: int, head_dim: int, d_state: int | None, o: Any) -> None:
    assert o.d_rnn % 16 == 0 and 3 * o.d_rnn >= 4 * d > 3 * (o.d_rnn - 16)  # 4/3 d up to 16
    assert o.n_heads == min(h for h in _divisors(o.d_rnn) if o.d_rnn // h <= 256)


def _check_retnet(d: int, head_dim: int, d_state: int | None, o: Any) -> None:
    # key dim d, value dim 2 d: the most heads of >= 256 (even) key channels, one below 512
    assert (o.expand_k, o.expand_v) == (1.0, 2.0)
    fits = [h for h in _divisors(d) if d // h >= 256 and (d // h) % 2 == 0]
    assert o.n_heads == max(fits, default=1)
    if d < 512:
        assert o.n_heads == 1


def _check_mlstm(d: int, head_dim: int, d_state: int | None, o: Any) -> None:
    # key dim d / 2, value dim d: the fewest heads of at most 128 value channels dividing both
    key, value = d // 2, d
    assert o.n_heads == min(h for h in _divisors(key) if value % h == 0 and value // h <= 128)


CHECKS = {
    "attn": _check_attention, "swa": _check_attention, "gated_attn": _check_attention,
    "mamba2": _check_ssm, "mamba3": _check_ssm, "gla": _check_gla, "deltanet": _check_deltanet,
    "gdn": _check_gdn, "deltaproduct": _check_gdn, "kda": _check_kda, "rwkv7": _check_rwkv7,
    "hgrn2": _check_hgrn2, "mamba": _check_mamba, "rglru": _check_rglru, "retnet": _check_retnet,
    "mlstm": _check_mlstm,
}


def test_every_registered_mixer_has_a_property_check():
    assert set(CHECKS) == set(MIXERS)


@pytest.mark.parametrize("name", list(MIXERS))
def test_rule_resolves_builds_and_keeps_its_heads(name):
    cls, check = MIXERS[name], CHECKS[name]
    built = set()
    for d in LADDER_WIDTHS:
        for head_dim in HEAD_DIMS:
            for d_state in D_STATES:
                opts = cls.width_options(d, head_dim=head_dim, d_state=d_state)
                assert opts == width_options(d, head_dim=head_dim, d_state=d_state).get(name, {})
                resolved = cls.resolve_options(d, opts)
                check(d, head_dim, d_state, resolved)
                key = (d, tuple(sorted(opts.items())))
                if key not in built:  # many knobs give the same options: build each once
                    built.add(key)
                    with torch.device("meta"):
                        cls(d, opts)
