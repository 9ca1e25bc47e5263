"""The paper's learning-rate schedule: linear warmup, then cosine decay to 0, set per optimiser step.

The official code's ``cosine_lr`` (``adapt/src/models/utils.py``) sets step ``i`` (0-based) to
``lr * (i + 1) / warmup`` during warmup and ``0.5 * (1 + cos(pi * (i - warmup) / (total - warmup))) * lr``
after it. Fine-tuning (500 warmup steps) and the linear probe (200) both use it. timm's
``CosineLRScheduler`` is one step off on both sides of the warmup, so the factor is given
to torch's ``LambdaLR`` instead.
"""

from __future__ import annotations

import math
from typing import Any


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """The LR factor of 0-based optimiser step ``step``."""
    if step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))


class WarmupCosine:
    """A picklable ``lr_lambda`` for :class:`torch.optim.lr_scheduler.LambdaLR`."""

    def __init__(self, warmup: int, total: int):
        self.warmup, self.total = warmup, total

    def __call__(self, step: int) -> float:
        return warmup_cosine(step, self.warmup, self.total)


def paper_scheduler(optimizer: Any, warmup: int, total: int) -> Any:
    """LambdaLR with :func:`warmup_cosine`; call ``step()`` after every optimiser step."""
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup, total))
