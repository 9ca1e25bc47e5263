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

from synthimg.atomic import atomic_write
from synthimg.errors import SynthimgError
from synthimg.study.executors import LocalExecutor, Outcome, SlurmExecutor
from synthimg.study.plan import Step, plan_with_coverage, write_configs
from synthimg.study.pools import check_coverage
from synthimg.study.spec import StudyConfig
from synthimg.study.steps import Invoke, is_done


def plan_rows(study: StudyConfig, root: Path) -> tuple[list[Step], list[dict[str, Any]], dict[str, Any],
                                                        list[dict[str, Any]]]:
    """The steps, one row per step (id, kind, status, work), the cost estimate of what is left, and the coverage."""
    from synthimg.study.estimate import estimate

    steps, coverage = plan_with_coverage(study, root)
    done = {s.id for s in steps if is_done(root, s)}
    rows = [{"id": s.id, "kind": s.kind, "status": "done" if s.id in done else "todo", "cell": s.cell,
             "work": s.work} for s in steps]
    todo = {s.id for s in steps if s.id not in done and s.kind != "shards"}
    return steps, rows, estimate(steps, todo, study.estimates, root), coverage


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
    return atomic_write(root / "results.jsonl", "".join(line + "\n" for line in lines))


# Where each kind of data step records its device-seconds (relative to its first output's folder).
_COST_FILES = {"captions": "captions_stats.json", "generate": "generate_stats.json", "index": "index_stats.json",
               "retrieve": "retrieve_stats.json", "score": "score_stats.json",
               "decontaminate": "decontaminate_stats.json"}


def _gpu_hours(step: Step) -> float:
    path = step.outputs[0].parent / _COST_FILES[step.kind]
    if not path.is_file():
        return 0.0
    return float(json.loads(path.read_text()).get("gpu_seconds") or 0.0) / 3600


def data_costs(study: StudyConfig, steps: list[Step]) -> dict[str, dict[str, float]]:
    """GPU-hours per curated image of each arm, by kind of work (for the cost table and compute plot).

    Everything upstream of an arm's subsets counts, as if the arm were made alone: captions
    and generation; embedding and index building (in this task's share that
    ``index.share_classes`` gives), kNN queries; CLIP scoring and decontamination; for an
    SDEdit arm, also the retrieved pool it renders. A step shared by several arms (an index,
    identical captions) is charged in full to each. The sum is divided by the curated pool
    (the images that survive curation), so a subset of N images costs N times that.
    """
    from synthimg.tasks import get_task

    by_id = {s.id: s for s in steps}
    classes = get_task(study.task).num_classes
    costs: dict[str, dict[str, float]] = {}
    for arm, spec in study.arms.items():
        subsets = next((s for s in steps if s.kind == "subsample" and s.arm == arm), None)
        if spec.source == "mixed" or subsets is None:
            continue
        # walk upstream; the subsets step's links to other arms ('all', pairing) are not this arm's making
        todo = [d for d in subsets.deps if d in by_id and by_id[d].arm in (None, arm)]
        seen: set[str] = set()
        parts: dict[str, float] = {}
        while todo:
            step = by_id.get(todo.pop())
            if step is None or step.id in seen:  # a user's own shards: nothing we made
                continue
            seen.add(step.id)
            todo += step.deps
            if step.kind in _COST_FILES:
                hours = _gpu_hours(step)
                if step.kind == "index":
                    index = spec.index or (study.arms[step.arm].index if step.arm else None)
                    hours *= min(1.0, classes / index.share_classes) if index is not None and index.share_classes else 1.0
                parts[step.kind] = parts.get(step.kind, 0.0) + hours
        meta = subsets.outputs[-1]
        pool = json.loads(meta.read_text()).get("pool", 0) if meta.is_file() else 0
        if pool:
            costs[arm] = {k: v / pool for k, v in parts.items()}
    for arm, spec in study.arms.items():
        if spec.source == "mixed":
            kinds = {k for part in spec.mix for k in costs.get(part, {})}
            costs[arm] = {k: sum(f * costs.get(part, {}).get(k, 0.0) for part, f in spec.mix.items()) for k in kinds}
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
              notes: Callable[[Path, list[Step]], list[str]] | None = None,
              log_file: Path | None = None, live: Any = None) -> dict[str, Any]:
    """Run every missing step, then collect and report. Returns ``study_stats.json``'s content.

    ``notes(root, steps)`` may add lines to the report (the demo counts its planted copies).
    ``log_file``: what the steps print goes there; ``echo`` gets one line per step and
    ``live(text)`` (e.g. rich's ``Console.status``) shows the step that is running.
    """
    from synthimg.progress import output_to

    root = Path(study.out)
    start = time.time()
    steps, coverage = plan_with_coverage(study, root)
    check_coverage(coverage)  # a cell no planned pool can feed fails now, before any step runs
    _check_inputs(study, steps)
    root.mkdir(parents=True, exist_ok=True)
    write_configs(steps)
    (root / "study.yaml").write_text(_dump(study))
    if study.executor.kind == "slurm":
        outcome: Outcome = SlurmExecutor(root, study.executor.slurm, echo).run(steps)
        if not study.executor.slurm.wait:
            return {"submitted": outcome.submitted}
    else:
        outcome = LocalExecutor(root, invoke, study.executor.gpus, echo, log_file, live).run(steps)
    results = collect(root, steps)
    stats: dict[str, Any] = {"steps": len([s for s in steps if s.kind != "shards"]), **outcome.summary(),
                             "cells": sum(s.kind == "train" for s in steps),
                             "cells_done": sum(s.kind == "train" and is_done(root, s) for s in steps),
                             "duration": round(time.time() - start, 3), "results": str(results)}
    if results.stat().st_size:
        from synthimg.report.build import build_report

        analyses = [s.outputs[0].parent for s in steps if s.kind == "analyze" and is_done(root, s)]
        extra = decontamination_notes(steps) + (notes(root, steps) if notes else [])
        with output_to(log_file):
            info = build_report([results], root / "report", data_costs=data_costs(study, steps), analyses=analyses,
                                notes=extra)
        for key in ("question", "headline", "answer", "answer_table", "arm_tables", "data_notes"):
            stats[key] = info[key]
        stats["report"] = info["html"]
        stats["notes"] = info["notes"]
    (root / "study_stats.json").write_text(json.dumps(stats, indent=1))
    return stats


def _dump(study: StudyConfig) -> str:
    import yaml

    from synthimg.config import to_dict

    return yaml.safe_dump(to_dict(study), sort_keys=False)
