"""torchrun / srun process groups: the same command runs under python -m, torchrun and srun."""

from __future__ import annotations

import os


def world_info() -> tuple[int, int]:
    """(rank, world size) from the initialised group, else 0, 1."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def setup() -> tuple[int, int, str]:
    """Join the process group when launched by torchrun or srun; returns (rank, world, device).

    Reads the variables open_clip reads: torchrun's RANK/WORLD_SIZE/LOCAL_RANK, or SLURM's
    SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID (with MASTER_ADDR/MASTER_PORT set by the launcher
    script). NCCL on GPUs, gloo on CPU.
    """
    import torch

    from synthimg.runtime import init_distributed

    if "RANK" not in os.environ and "SLURM_PROCID" in os.environ and int(os.environ.get("SLURM_NTASKS", 1)) > 1:
        os.environ["RANK"] = os.environ["SLURM_PROCID"]
        os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
        os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
    rank, world = init_distributed()
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return rank, world, f"cuda:{local}"
    return rank, world, "cpu"
