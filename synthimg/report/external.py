"""Result files written by others: CLIP_benchmark's ``clip_benchmark eval`` output as it is.

A CLIP_benchmark file is one JSON object (``dataset, model, pretrained, task, metrics,
language`` and, when asked, ``classnames`` and ``templates``) without the study's
provenance. It becomes a labelled external row: a test-split, zero-training evaluation whose
arm is taken from the file name (or is the pretrained baseline, for ``--baseline`` files).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from synthimg.errors import SynthimgError
from synthimg.evaluation.results import ResultRecord

log = logging.getLogger("synthimg.report")

# what makes a line ours: without these it is someone else's evaluation
PROVENANCE = ("arm", "eval_mode", "split")
CLIP_BENCHMARK_KEYS = ("dataset", "model", "pretrained", "task", "metrics")
TASKS = {"zeroshot_classification": "zs", "linear_probe": "lp"}
BASELINE = "zeroshot_baseline"


def is_ours(obj: dict[str, Any]) -> bool:
    """True for a line that carries the study's provenance (and is then validated strictly)."""
    return any(k in obj for k in PROVENANCE)


def dataset_name(name: str) -> str:
    """Our task name for a CLIP_benchmark dataset name (``wds/vtab/flowers`` -> ``flowers102``)."""
    from synthimg.tasks import get_task, list_tasks

    bare = name.removeprefix("wds/")
    for task in list_tasks():
        spec = get_task(task)
        if task == bare or (spec.eval is not None and spec.eval.clip_benchmark in (bare, name)):
            return task
    return bare.replace("/", "_")


def arm_from_file(path: Path, obj: dict[str, Any]) -> str:
    """The file's stem, less CLIP_benchmark's default ``{dataset}_`` prefix and ``_{language}_{task}`` suffix."""
    stem = path.stem
    dataset = str(obj.get("dataset", "")).removeprefix("wds/").replace("/", "_")  # as CLIP_benchmark names it
    if dataset and stem.startswith(dataset + "_"):
        stem = stem[len(dataset) + 1:]
    task, language = str(obj.get("task", "")), str(obj.get("language", ""))
    for suffix in (f"_{language}_{task}", f"_{task}"):
        if task and stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    arm = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("_") or "external"
    return arm if arm == BASELINE else f"external_{arm}"


def from_clip_benchmark(obj: dict[str, Any], arm: str, where: str) -> ResultRecord | None:
    """One CLIP_benchmark result as a record, or None (with a warning) for a task the report cannot show."""
    absent = [k for k in CLIP_BENCHMARK_KEYS if k not in obj]
    if absent:
        raise SynthimgError(f"{where}: neither a synthimg result nor a CLIP_benchmark one (no {', '.join(absent)})")
    mode = TASKS.get(obj["task"])
    metrics = dict(obj["metrics"] or {})
    if mode == "lp":  # CLIP_benchmark prefixes the probe's metrics: lp_acc1, lp_acc5, ...
        metrics = {k.removeprefix("lp_"): v for k, v in metrics.items()}
    if mode is None or "acc1" not in metrics or "mean_per_class_recall" not in metrics:
        log.warning("%s: CLIP_benchmark task %r without acc1 and mean_per_class_recall; skipped", where, obj["task"])
        return None
    language = obj.get("language") or "en"
    try:
        return ResultRecord(
            dataset=dataset_name(str(obj["dataset"])), model=str(obj["model"]), pretrained=str(obj["pretrained"]),
            task=obj["task"], metrics=metrics, arm=arm, arm_source="external", eval_mode=mode, split="test",
            language=language if isinstance(language, str) else "+".join(language),
            classnames=obj.get("classnames"), templates=obj.get("templates"), git_sha="", synthimg_version="",
            run=where)
    except ValidationError as e:
        raise SynthimgError(f"{where}: unreadable CLIP_benchmark result: {_first(e)}") from None


def read_any(path: Path, baseline: bool = False) -> list[ResultRecord]:
    """Every result in a file: our lines validated strictly, CLIP_benchmark lines as external rows.

    A file is JSON Lines or one (possibly indented) JSON object. A torn last line, as a
    crash leaves it, is ignored; any other unreadable line is a one-line error naming it.
    """
    text = path.read_text()
    try:
        whole = json.loads(text)
        objects = [(1, whole)] if isinstance(whole, dict) else None
    except json.JSONDecodeError:
        objects = None
    if objects is None:
        lines = text.splitlines()
        objects = []
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                objects.append((i, json.loads(line)))
            except json.JSONDecodeError:
                if i == len(lines):
                    continue
                raise SynthimgError(f"{path}:{i}: not a JSON line") from None
    records = []
    for i, obj in objects:
        where = f"{path}:{i}"
        if not isinstance(obj, dict):
            raise SynthimgError(f"{where}: not a JSON object")
        if is_ours(obj) and not baseline:
            try:
                records.append(ResultRecord.model_validate(obj))
            except ValidationError as e:
                raise SynthimgError(f"{where}: invalid result line: {_first(e)}") from None
            continue
        arm = BASELINE if baseline else arm_from_file(path, obj)
        record = from_clip_benchmark(obj, arm, where)
        if record is not None:
            records.append(record)
    return records


def _first(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "line"
    return f"{loc}: {err['msg']} ({e.error_count()} error{'s' if e.error_count() > 1 else ''})"
