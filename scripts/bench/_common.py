"""What every bench prints last: one JSON line with its headline, the baseline and the ratio."""

from __future__ import annotations

import json
import os
import platform
from typing import Any


def device(torch_device: Any = None) -> str:
    """The GPU's name when one ran the bench, else the CPU and the cores this process may use."""
    if torch_device is not None and str(torch_device).startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch_device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {len(os.sched_getaffinity(0))} cores"


def summary(bench: str, ours: float, baseline: float, unit: str, dev: str, **extra: Any) -> None:
    """Print the machine-readable last line."""
    ratio = ours / baseline if baseline else None
    print(json.dumps({"bench": bench, "ours": round(ours, 4), "baseline": round(baseline, 4),
                      "ratio": round(ratio, 3) if ratio is not None else None, "unit": unit, "device": dev, **extra}))
