"""The one launcher layer: rank, world and local rank under torchrun **or** SLURM, the process
group's set-up and tear-down, gathers and barriers.

Every distributed stage (generate, index build, curate score, train, eval) goes through it,
so the same command runs under ``python -m synthimg``, ``torchrun`` and plain ``srun``:

- torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
- ``srun`` sets ``SLURM_PROCID``, ``SLURM_NTASKS`` and ``SLURM_LOCALID``; the master address is
  the first host of ``SLURM_NODELIST`` (or ``SLURM_JOB_NODELIST``) unless ``MASTER_ADDR`` is
  set, and the port is ``MASTER_PORT`` or one derived from the job id.

torchrun's variables win when both are present (torchrun inside an allocation). NCCL on GPUs,
gloo on CPU.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class Launch:
    """Where this process sits: from the launcher's environment, before any process group exists."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    launcher: str = "single"  # single | torchrun | slurm
    master_addr: str | None = None
    master_port: int | None = None


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``gpu[003-004,007],cpu1`` -> ``gpu003``."""
    head = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist.strip())
    if head is None:
        raise ValueError(f"cannot read the SLURM node list {nodelist!r}")
    prefix, ranges = head.group(1), head.group(3)
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def launch_env(env: Mapping[str, str] | None = None) -> Launch:
    """The launch this process is part of, read from torchrun's or SLURM's variables."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        port = env.get("MASTER_PORT")
        return Launch(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)), "torchrun",
                      env.get("MASTER_ADDR"), int(port) if port else None)
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", 1)) > 1:
        nodes = env.get("SLURM_NODELIST") or env.get("SLURM_JOB_NODELIST") or "127.0.0.1"
        addr = env.get("MASTER_ADDR") or first_host(nodes)
        port = env.get("MASTER_PORT") or str(20000 + int(env.get("SLURM_JOB_ID", 0)) % 20000)
        return Launch(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)), "slurm",
                      addr, int(port))
    return Launch()


def is_initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def rank_world() -> tuple[int, int]:
    """(rank, world size): the process group's when it exists, else the launcher's variables."""
    if is_initialized():
        import torch.distributed as dist

        return dist.get_rank(), dist.get_world_size()
    launch = launch_env()
    return launch.rank, launch.world


def device() -> str:
    """``cuda:LOCAL_RANK`` when a GPU is visible, else ``cpu``."""
    import torch

    if torch.cuda.is_available():
        return f"cuda:{gpu_index()}"
    return "cpu"


def gpu_index() -> int:
    """This process's GPU: its local rank among the visible devices (one visible device each under
    ``srun --gpus-per-task 1``: then it is device 0)."""
    import torch

    return launch_env().local_rank % max(1, torch.cuda.device_count())


def init() -> tuple[int, int]:
    """Join the launcher's process group (once); returns (rank, world). A single process joins none.

    Rank 0 evaluates every epoch while the others wait at a barrier, so the timeout is long
    (``SYNTHIMG_DIST_TIMEOUT_MIN``, default 180): NCCL's 10-minute default would fire at
    ImageNet scale.
    """
    import datetime

    import torch
    import torch.distributed as dist

    if is_initialized():
        return dist.get_rank(), dist.get_world_size()
    launch = launch_env()
    if launch.world <= 1:
        return 0, 1
    if launch.launcher == "slurm":  # what torchrun would have set, so every library sees one launch
        os.environ.update(RANK=str(launch.rank), WORLD_SIZE=str(launch.world), LOCAL_RANK=str(launch.local_rank),
                          MASTER_ADDR=str(launch.master_addr), MASTER_PORT=str(launch.master_port))
    if torch.cuda.is_available():
        torch.cuda.set_device(gpu_index())
    minutes = int(os.environ.get("SYNTHIMG_DIST_TIMEOUT_MIN", "180"))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                            timeout=datetime.timedelta(minutes=minutes))
    return dist.get_rank(), dist.get_world_size()


def teardown() -> None:
    """Leave the process group (no-op without one)."""
    if is_initialized():
        import torch.distributed as dist

        dist.destroy_process_group()


def gather_to_rank0(obj: Any) -> list[Any] | None:
    """All ranks' objects on rank 0 (None elsewhere); just ``[obj]`` when not distributed."""
    if not is_initialized():
        return [obj]
    import torch.distributed as dist

    out: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def barrier() -> None:
    """Wait for all ranks (no-op outside a process group)."""
    if is_initialized():
        import torch.distributed as dist

        dist.barrier()

