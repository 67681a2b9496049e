"""Learning-rate schedules as a multiplier of the peak LR, per optimizer step.

``lr_factor(step, ...)`` is the factor used by optimizer step ``step`` (0-based), so the
first step trains with ``1 / warmup_steps`` of the peak (never with zero) and the last step
(``total_steps - 1``) with exactly ``min_lr_ratio``.

- ``cosine``: linear warmup, then half a cosine from 1 down to ``min_lr_ratio``.
- ``wsd`` (warmup-stable-decay): linear warmup, constant 1, then a linear decay to
  ``min_lr_ratio`` over the last ``decay_fraction`` of the steps (Hu et al. 2024, MiniCPM),
  which lets one run be branched into several token budgets: up to
  ``wsd_decay_start(T_b)`` a run of ``T_b`` steps follows the same LR as any longer run,
  so a checkpoint taken there and cooled down to ``T_b`` steps equals a standalone run of
  ``T_b`` steps (Hägele et al. 2024). ``LMModule`` re-reads the schedule from the current
  ``trainer.max_steps`` when training (re)starts, which is what makes such a branch exact.
"""

from __future__ import annotations

import math

SCHEDULES = ("cosine", "wsd")
#: The schedule decided once for each kind of run. A single run (``postformer fit``, a probe
#: cell) anneals over its own length: cosine. A study trains wsd, because its token budgets are
#: cooldowns branched off one longer run's stable phase, which a cosine run does not have.
DEFAULT_SCHEDULE = "cosine"
STUDY_SCHEDULE = "wsd"


def lr_factor(
    step: int,
    *,
    total_steps: int,
    warmup_steps: int,
    schedule: str = DEFAULT_SCHEDULE,
    min_lr_ratio: float = 0.1,
    decay_fraction: float = 0.2,
) -> float:
    """The LR multiplier for 0-based optimizer step ``step`` of ``total_steps``."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; known: {list(SCHEDULES)}")
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    last = total_steps - 1
    if schedule == "cosine":
        span = max(1, last - warmup_steps)
        progress = min(1.0, max(0.0, (step - warmup_steps) / span))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    decay_start = wsd_decay_start(total_steps, warmup_steps=warmup_steps, decay_fraction=decay_fraction)
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start + 1) / max(1, total_steps - decay_start))
    return 1.0 - (1.0 - min_lr_ratio) * progress


def wsd_decay_start(total_steps: int, *, warmup_steps: int, decay_fraction: float = 0.2) -> int:
    """The first 0-based step of a wsd run of ``total_steps`` whose LR is below the peak.

    The decay takes ``max(1, round(decay_fraction * total_steps))`` steps and never starts
    inside the warmup. Steps before this one use exactly the LR of any longer wsd run with
    the same warmup (and a decay start no earlier), so a checkpoint after this many steps is
    the branching point of a cooldown to ``total_steps``.
    """
    decay_steps = max(1, round(decay_fraction * total_steps))
    return max(warmup_steps, total_steps - decay_steps)
