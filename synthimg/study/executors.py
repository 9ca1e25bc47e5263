"""Where a study's steps run: here, one after another, or as SLURM jobs through submitit.

Both skip done steps, report a failed step and go on with every step that does not depend
on it. The local executor runs single-process steps in this process (no import cost per
step) and launches distributed steps with torchrun over the local GPUs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthimg.errors import SynthimgError
from synthimg.study.plan import Step
from synthimg.study.spec import SlurmSpec
from synthimg.study.steps import Invoke, execute, is_done, run_step_job

log = logging.getLogger("synthimg.study")


@dataclass
class Outcome:
    """What happened to each step of a run."""

    done_before: list[str] = field(default_factory=list)
    ran: dict[str, float] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    blocked: dict[str, str] = field(default_factory=dict)
    submitted: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"done_before": len(self.done_before), "ran": len(self.ran), "failed": self.failed,
                "blocked": self.blocked, "submitted": self.submitted}


def _triage(root: Path, step: Step, out: Outcome) -> str | None:
    """Why ``step`` needs no run: "done" (recorded in ``out``), "blocked by DEP", or None to run it."""
    if is_done(root, step):
        out.done_before.append(step.id)
        return "done"
    dep = next((d for d in step.deps if d in out.failed or d in out.blocked), None)
    if dep is not None:
        out.blocked[step.id] = dep
        return f"skipped, {dep} failed"
    return None


def local_gpus(requested: int | None) -> int:
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return visible if requested is None else min(requested, visible) if visible else 0


class LocalExecutor:
    """Steps in order on this machine; ``invoke`` runs a command line in this process.

    With ``log_file``, everything a step writes (its own lines, libraries' warnings and progress
    bars, child processes) goes to that file and ``echo`` prints one line per step; ``live(text)``,
    a context manager such as rich's ``Console.status``, shows the running step meanwhile.
    """

    def __init__(self, root: Path, invoke: Invoke | None, gpus: int | None = None, echo: Any = print,
                 log_file: Path | None = None, live: Any = None):
        self.root, self.invoke, self.echo, self.log_file = Path(root), invoke, echo, log_file
        self.live = live
        self.nproc = max(1, local_gpus(gpus))

    def run(self, steps: list[Step]) -> Outcome:
        import contextlib
        import time

        from synthimg.progress import output_to

        out = Outcome()
        todo = [s for s in steps if s.kind != "shards"]
        start = time.time()
        width = len(str(len(todo)))

        def line(i: int, step: Step, what: str) -> None:
            elapsed = time.strftime("%M:%S", time.gmtime(time.time() - start))
            self.echo(f"[{i:>{width}}/{len(todo)}] {elapsed} {step.id}: {what}")

        for i, step in enumerate(todo, 1):
            why = _triage(self.root, step, out)
            if why is not None:
                if why != "done":
                    line(i, step, why)
                continue
            if self.log_file is None:
                line(i, step, "running")
            status = (self.live(f"[{i:>{width}}/{len(todo)}] {step.id}: running") if self.live is not None
                      and self.log_file is not None else contextlib.nullcontext())
            try:
                with status, output_to(self.log_file):
                    seconds = execute(self.root, step, self.invoke, self.nproc)
            except Exception as err:  # a failed cell is reported; the others go on
                msg = f"{type(err).__name__}: {err}" if not isinstance(err, SynthimgError) else str(err)
                out.failed[step.id] = msg.strip().splitlines()[0] if msg.strip() else type(err).__name__
                line(i, step, f"FAILED: {out.failed[step.id]}")
                log.debug("step %s failed", step.id, exc_info=True)
                continue
            out.ran[step.id] = seconds
            line(i, step, f"done in {seconds:.1f}s")
        return out


class SlurmExecutor:
    """One submitit job per step, chained with ``afterok`` dependencies (SLURM) or waited on in order."""

    def __init__(self, root: Path, spec: SlurmSpec, echo: Any = print):
        try:
            import submitit
        except ImportError:
            raise SynthimgError("executor.kind slurm needs submitit: pip install 'synthimg[slurm]'") from None
        self.root, self.spec, self.echo = Path(root), spec, echo
        folder = Path(spec.folder) if spec.folder else self.root / "slurm"
        self.executor = submitit.AutoExecutor(folder=folder / "%j", cluster=spec.cluster)
        self.on_slurm = self.executor.cluster == "slurm"

    def _parameters(self, step: Step, deps: list[str]) -> dict[str, Any]:
        s = self.spec
        params: dict[str, Any] = {"name": step.id, "timeout_min": s.timeout_min if step.gpu else s.cpu_timeout_min,
                                  "nodes": 1, "tasks_per_node": 1}
        gpus = s.gpus_per_node if (step.gpu and step.distributed) else 1 if step.gpu else 0
        if self.on_slurm:
            params["slurm_gpus_per_node"] = gpus or None
            params["cpus_per_task"] = s.cpus_per_gpu * max(1, gpus)
            for key in ("partition", "account", "qos", "constraint"):
                if getattr(s, key):
                    params[f"slurm_{key}" if key != "constraint" else "slurm_constraint"] = getattr(s, key)
            if s.mem_gb:
                params["mem_gb"] = s.mem_gb
            if deps:
                params["slurm_additional_parameters"] = {"dependency": "afterok:" + ":".join(deps),
                                                         "kill-on-invalid-dep": "yes"}
        return {k: v for k, v in params.items() if v is not None}

    def run(self, steps: list[Step]) -> Outcome:
        out = Outcome()
        jobs: dict[str, Any] = {}
        for step in steps:
            if step.kind == "shards" or _triage(self.root, step, out) is not None:
                continue
            pending = [jobs[d] for d in step.deps if d in jobs]
            if not self.on_slurm:  # no scheduler to hold the job: wait for its inputs here
                failed = self._wait(pending, out)
                if failed:
                    out.blocked[step.id] = failed
                    continue
            self.executor.update_parameters(**self._parameters(step, [j.job_id for j in pending]))
            nproc = self.spec.gpus_per_node if (step.gpu and step.distributed and self.on_slurm) else 1
            job = self.executor.submit(run_step_job, str(self.root), step, nproc)
            jobs[step.id] = job
            out.submitted[step.id] = str(job.job_id)
            self.echo(f"submitted {step.id} as job {job.job_id}")
        if self.spec.wait:
            self._wait(list(jobs.values()), out)
        return out

    def _wait(self, jobs: list[Any], out: Outcome) -> str | None:
        """Wait for ``jobs``; record each result; the id of the first failed step, if any."""
        first = None
        for job in jobs:
            name = next((k for k, v in out.submitted.items() if v == str(job.job_id)), str(job.job_id))
            if name in out.ran or name in out.failed:
                first = first or (name if name in out.failed else None)
                continue
            try:
                out.ran[name] = float(job.result())
            except Exception as err:  # the job's exception, or SLURM cancelling it
                out.failed[name] = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
                self.echo(f"{name}: FAILED: {out.failed[name]}")
                first = first or name
        return first
