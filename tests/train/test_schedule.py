import math

import pytest

from postformer.train.schedule import lr_factor


def f(step, **kw):
    args = {"total_steps": 100, "warmup_steps": 10, "min_lr_ratio": 0.1} | kw
    return lr_factor(step, **args)


def test_warmup_is_linear_from_one_step():
    assert [f(s) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert f(9) == pytest.approx(1.0)


def test_cosine_peak_midpoint_and_end():
    assert f(10) == pytest.approx(1.0)
    # midway through the decay the cosine is at zero: factor is halfway to the floor
    mid = 10 + (99 - 10) / 2
    assert lr_factor(int(mid), total_steps=100, warmup_steps=10, min_lr_ratio=0.1) == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (int(mid) - 10) / 89))
    )
    assert f(99) == pytest.approx(0.1)
    assert f(500) == pytest.approx(0.1)  # past the end it stays at the floor
    values = [f(s) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_wsd_plateau_then_linear_decay():
    kw = {"schedule": "wsd", "decay_fraction": 0.2}
    assert [f(s, **kw) for s in range(10, 80)] == pytest.approx([1.0] * 70)
    # last 20 steps: 80..99, linear down to 0.1, reached exactly at the final step
    assert f(80, **kw) == pytest.approx(1 - 0.9 / 20)
    assert f(89, **kw) == pytest.approx(1 - 0.9 * 10 / 20)
    assert f(99, **kw) == pytest.approx(0.1)


def test_unknown_schedule():
    with pytest.raises(ValueError, match="known"):
        f(0, schedule="linear")
