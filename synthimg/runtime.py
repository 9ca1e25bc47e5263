"""Device and precision helpers shared by the GPU stages."""

from __future__ import annotations

import contextlib
from typing import Any


def default_device() -> str:
    """``cuda:LOCAL_RANK`` when a GPU is visible (torchrun sets LOCAL_RANK), else ``cpu``."""
    import os

    import torch

    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return "cpu"


def autocast(device: str, enabled: bool = True) -> Any:
    """bf16 autocast on CUDA (when ``enabled``), nothing on CPU."""
    import torch

    if enabled and device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def init_distributed() -> tuple[int, int]:
    """Join the torchrun / srun process group when launched under one; returns (rank, world)."""
    import datetime
    import os

    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        # Rank 0 evaluates every epoch (features of whole splits, two probes) while the others wait at a
        # barrier: NCCL's 10-minute default would time out at ImageNet scale.
        minutes = int(os.environ.get("SYNTHIMG_DIST_TIMEOUT_MIN", "180"))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                                timeout=datetime.timedelta(minutes=minutes))
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_to_rank0(obj: Any) -> list[Any] | None:
    """All ranks' objects on rank 0 (None elsewhere); just ``[obj]`` when not distributed."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def barrier() -> None:
    """Wait for all ranks (no-op outside a process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


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
