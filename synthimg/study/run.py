"""``synthimg study``: plan the grid, run every step without output, collect results, report.

The study folder holds ``configs/`` (one resolved config per step), ``arms/ARM/`` (pools,
curation, subsets, analysis), ``cells/`` (one training run per cell), ``baseline-*/``,
``results.jsonl`` (every cell's lines), ``report/`` and ``study_stats.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from synthimg.errors import SynthimgError
from synthimg.study.executors import LocalExecutor, Outcome, SlurmExecutor
from synthimg.study.plan import Step, build_plan, write_configs
from synthimg.study.spec import StudyConfig
from synthimg.study.steps import Invoke, is_done


def plan_rows(study: StudyConfig, root: Path) -> tuple[list[Step], list[dict[str, Any]], dict[str, Any]]:
    """The steps, one row per step (id, kind, status, work) and the cost estimate of what is left."""
    from synthimg.study.estimate import estimate

    steps = build_plan(study, root)
    done = {s.id for s in steps if is_done(root, s)}
    rows = [{"id": s.id, "kind": s.kind, "status": "done" if s.id in done else "todo", "cell": s.cell,
             "work": s.work} for s in steps]
    todo = {s.id for s in steps if s.id not in done and s.kind != "shards"}
    return steps, rows, estimate(steps, todo, study.estimates, root)


def _check_inputs(study: StudyConfig, steps: list[Step]) -> None:
    for step in steps:
        if step.kind == "shards" and not step.outputs[0].exists():
            raise SynthimgError(f"arm {step.arm!r}: no shards at {step.outputs[0].parent} (manifest.parquet missing)")
    needs_eval = any(s.kind in ("train", "baseline", "decontaminate", "analyze") for s in steps)
    if needs_eval and not study.eval_root:
        raise SynthimgError("the study needs eval_root: the task's data for evaluation and decontamination")
    if study.eval_root and not Path(study.eval_root).exists():
        raise SynthimgError(f"eval_root {study.eval_root} does not exist")


def collect(root: Path, steps: list[Step]) -> Path:
    """Concatenate the finished cells' and the baseline's result lines into ``ROOT/results.jsonl``."""
    lines: list[str] = []
    for step in steps:
        if step.kind in ("train", "baseline") and step.outputs[0].is_file():
            lines += [line for line in step.outputs[0].read_text().splitlines() if line.strip()]
    path = root / "results.jsonl"
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    tmp.replace(path)
    return path


def data_costs(root: Path, steps: list[Step]) -> dict[str, float]:
    """GPU-hours per image of each generated arm (from generate_stats.json), for the cost table."""
    costs = {}
    for step in steps:
        stats_path = step.outputs[0] if step.kind == "generate" else None
        if stats_path is not None and stats_path.is_file() and step.arm:
            stats = json.loads(stats_path.read_text())
            if stats.get("successes"):
                costs[step.arm] = stats.get("gpu_seconds", 0.0) / stats["successes"] / 3600
    return costs


def decontamination_notes(steps: list[Step]) -> list[str]:
    """One line per decontaminated arm: how many candidates matched evaluation images."""
    lines = []
    for step in steps:
        path = step.outputs[0].parent / "decontaminate_stats.json" if step.kind == "decontaminate" else None
        if path is not None and path.is_file():
            s = json.loads(path.read_text())
            lines.append(f"{step.arm}: decontamination dropped {s['dropped']} of {s['count']} images matching "
                         f"{s['eval_images']} evaluation images ({s['dropped_by']}).")
    return lines


def run_study(study: StudyConfig, invoke: Invoke | None, echo: Any = print,
              notes: Callable[[Path, list[Step]], list[str]] | None = None) -> dict[str, Any]:
    """Run every missing step, then collect and report. Returns ``study_stats.json``'s content.

    ``notes(root, steps)`` may add lines to the report (the demo counts its planted copies).
    """
    root = Path(study.out)
    start = time.time()
    steps = build_plan(study, root)
    _check_inputs(study, steps)
    root.mkdir(parents=True, exist_ok=True)
    write_configs(steps)
    (root / "study.yaml").write_text(_dump(study))
    if study.executor.kind == "slurm":
        outcome: Outcome = SlurmExecutor(root, study.executor.slurm, echo).run(steps)
        if not study.executor.slurm.wait:
            return {"submitted": outcome.submitted}
    else:
        outcome = LocalExecutor(root, invoke, study.executor.gpus, echo).run(steps)
    results = collect(root, steps)
    stats: dict[str, Any] = {"steps": len([s for s in steps if s.kind != "shards"]), **outcome.summary(),
                             "cells": sum(s.kind == "train" for s in steps),
                             "cells_done": sum(s.kind == "train" and is_done(root, s) for s in steps),
                             "duration": round(time.time() - start, 3), "results": str(results)}
    if results.stat().st_size:
        from synthimg.report.build import build_report

        analyses = [s.outputs[0].parent for s in steps if s.kind == "analyze" and is_done(root, s)]
        extra = decontamination_notes(steps) + (notes(root, steps) if notes else [])
        info = build_report([results], root / "report", data_costs=data_costs(root, steps), analyses=analyses,
                            notes=extra)
        stats["report"] = info["html"]
        stats["notes"] = info["notes"]
    (root / "study_stats.json").write_text(json.dumps(stats, indent=1))
    return stats


def _dump(study: StudyConfig) -> str:
    import yaml

    from synthimg.config import to_dict

    return yaml.safe_dump(to_dict(study), sort_keys=False)
