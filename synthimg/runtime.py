"""Precision and cost helpers shared by the GPU stages (devices and ranks: ``synthimg.dist``)."""

from __future__ import annotations

import contextlib
from typing import Any


def autocast(device: str, enabled: bool = True) -> Any:
    """bf16 autocast on CUDA (when ``enabled``), nothing on CPU."""
    import torch

    if enabled and device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def carried_gpu_seconds(stats_path: Any, this_run: float) -> float:
    """Device-seconds of a resumable stage: this run's plus those an earlier, interrupted run recorded.

    A rerun that finds the work done adds nothing, so a stage's cost is counted once
    whatever the number of runs it took.
    """
    import json
    from pathlib import Path

    path = Path(stats_path)
    before = 0.0
    if path.is_file():
        try:
            before = float(json.loads(path.read_text()).get("gpu_seconds") or 0.0)
        except (ValueError, OSError):
            before = 0.0
    return round(before + this_run, 3)
