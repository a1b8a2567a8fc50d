"""Learning-rate and weight-decay schedules, evaluated per optimisation step."""

from __future__ import annotations

import math


def warmup_cosine(
    step: int,
    total_steps: int,
    base: float,
    final: float,
    warmup_steps: int = 0,
    start: float = 0.0,
) -> float:
    """Linear warm-up from ``start`` to ``base`` over ``warmup_steps``, then cosine to ``final``.

    The schedule of DINO's ``cosine_scheduler`` (Caron et al. 2021), as a pure function of the step.
    """
    if step < warmup_steps:
        return start + (base - start) * step / max(warmup_steps, 1)
    remaining = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / remaining, 1.0)
    return final + 0.5 * (base - final) * (1 + math.cos(math.pi * progress))


def linear_warmup(step: int, warmup_steps: int, start: float, end: float) -> float:
    """Linear ramp from ``start`` to ``end`` over ``warmup_steps``, then ``end`` (teacher temp)."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return end
    return start + (end - start) * step / warmup_steps
