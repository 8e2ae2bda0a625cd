"""Learning-rate schedules: linear warm-up, then linear / cosine decay or constant.

Pure functions of the optimiser step, so they are tested alone; :func:`build_scheduler`
wraps them in a ``LambdaLR`` whose state is just the step counter.
"""

from __future__ import annotations

import math

import torch

SCHEDULES = ("linear", "cosine", "constant")


def lr_factor(step: int, total_steps: int, warmup_steps: int, kind: str = "linear") -> float:
    """The multiplier (0..1) of the peak learning rate after ``step`` optimiser steps.

    Warm-up rises linearly from 0 at step 0 to 1 at ``warmup_steps``; then ``linear`` and
    ``cosine`` fall to 0 at ``total_steps`` (and stay there), ``constant`` stays 1.

    Args:
        step: optimiser steps taken so far (the lr of the next update).
        total_steps: the step at which decay reaches 0.
        warmup_steps: length of the warm-up (0 = none).
        kind: one of :data:`SCHEDULES`.

    Returns:
        The factor in [0, 1].
    """
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; choose one of {SCHEDULES}")
    if step < warmup_steps:
        return step / warmup_steps
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if kind == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def resolve_warmup(total_steps: int, warmup_steps: int = 0, warmup_ratio: float = 0.0) -> int:
    """Warm-up length: ``warmup_steps`` when > 0, else ``round(warmup_ratio * total_steps)``."""
    return warmup_steps if warmup_steps > 0 else int(round(warmup_ratio * total_steps))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
                    kind: str = "linear") -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` following :func:`lr_factor`; call its ``step()`` after each update.

    Args:
        optimizer: its groups' ``lr`` are the peak rates.
        total_steps: optimiser steps of the whole run.
        warmup_steps: linear warm-up steps.
        kind: one of :data:`SCHEDULES`.

    Returns:
        The scheduler (its ``state_dict`` holds plain numbers only).
    """
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; choose one of {SCHEDULES}")

    def factor(step: int) -> float:  # a plain function: LambdaLR does not pickle it
        return lr_factor(step, total_steps, warmup_steps, kind)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
