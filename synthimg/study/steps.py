"""Running one step: done markers, resuming a cell's run, torchrun over local GPUs.

A step is done when its marker (``STUDY/.steps/ID.json``, written after it succeeds) names
its hash and all its outputs exist, so deleting an output reruns exactly that step. A train
step whose run was interrupted resumes from ``epoch_latest.pt``; one whose results were
deleted is trained again from scratch.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from synthimg.atomic import atomic_write
from synthimg.errors import SynthimgError
from synthimg.study.plan import Step

Invoke = Callable[[list[str]], None]
MARKERS = ".steps"


def marker(root: Path, step: Step) -> Path:
    return Path(root) / MARKERS / f"{step.id}.json"


def is_done(root: Path, step: Step) -> bool:
    """True when the step succeeded with this hash and its outputs are still there."""
    if step.kind == "shards":
        return all(o.exists() for o in step.outputs)
    path = marker(root, step)
    if not path.is_file() or not all(o.exists() for o in step.outputs):
        return False
    try:
        return json.loads(path.read_text()).get("hash") == step.hash
    except (OSError, ValueError):
        return False


def prepared_argv(step: Step) -> list[str]:
    """The step's command line; a train step resumes an interrupted run or restarts a stale one."""
    argv = list(step.argv)
    if step.run_dir is not None and step.run_dir.exists():
        finished = (step.run_dir / "train_stats.json").exists()
        if finished or not (step.run_dir / "checkpoints" / "epoch_latest.pt").exists():
            shutil.rmtree(step.run_dir)  # results deleted after it finished, or nothing to resume from
        else:
            argv += ["--resume", "latest"]
    return argv


def subprocess_invoke(argv: list[str], nproc: int = 1) -> None:
    """Run ``synthimg ARGV`` in a child process, under torchrun when ``nproc > 1``."""
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "synthimg", *argv]
    else:
        cmd = [sys.executable, "-m", "synthimg", *argv]
    result = subprocess.run(cmd, env=os.environ.copy(), stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stderr)
        tail = [line for line in result.stderr.strip().splitlines() if line.strip()]
        raise SynthimgError(tail[-1] if tail else f"exit status {result.returncode}")


def execute(root: Path, step: Step, invoke: Invoke | None = None, nproc: int = 1) -> float:
    """Run a step and write its marker; returns seconds. ``invoke`` runs argv in this process."""
    start = time.time()
    argv = prepared_argv(step)
    if invoke is not None and not (step.distributed and nproc > 1):
        invoke(argv)
    else:
        subprocess_invoke(argv, nproc if step.distributed else 1)
    missing = [str(o) for o in step.outputs if not o.exists()]
    if missing:
        raise SynthimgError(f"step {step.id} finished without writing {', '.join(missing)}")
    if step.check is not None:  # e.g. a downloaded pool too small for its cells: stop before the GPU work
        step.check(step)
    duration = time.time() - start
    path = marker(root, step)
    atomic_write(path, json.dumps({"id": step.id, "hash": step.hash, "argv": argv, "duration": round(duration, 3),
                                   "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1))
    return duration


def run_step_job(root: str, step: Step, nproc: int) -> float:
    """Entry point of a submitit job: one step in a child process (torchrun over the node's GPUs)."""
    return execute(Path(root), step, None, nproc)
