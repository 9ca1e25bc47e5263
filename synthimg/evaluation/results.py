"""The results.jsonl schema: CLIP_benchmark's keys unchanged, plus the study's provenance.

One JSON object per evaluation. Saved alone as a ``.json`` file, a line is read by
``clip_benchmark build``. Only rank 0 appends; each line is flushed and fsynced so a
killed run never leaves half a line.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from synthimg import __version__

# zeroshot_baseline | synthetic | retrieved | mixed | upstream | sdedit, or a study's own arm name
Arm = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]+$")]


class Metrics(BaseModel):
    model_config = ConfigDict(extra="allow")
    acc1: float
    acc5: float | None = None
    mean_per_class_recall: float


class ResultRecord(BaseModel):
    """One evaluation. ``pretrained`` is always a string (CLIP_benchmark joins it to the model name)."""

    model_config = ConfigDict(extra="forbid")
    dataset: str
    model: str
    pretrained: str
    task: Literal["zeroshot_classification", "linear_probe"]
    metrics: Metrics
    language: str = "en"
    classnames: list[str] | None = Field(None, description="as CLIP_benchmark's --dump_classnames writes them")
    templates: list[str] | dict[str, list[str]] | None = Field(
        None, description="as CLIP_benchmark's --dump_templates writes them (a dict per class for CuPL prompts)")
    arm: Arm
    arm_source: str | None = Field(None, description="the training data's provenance: synthetic, retrieved, mixed, ...")
    num_train_images: int = 0
    finetune: Literal["none", "ce", "flyp", "lp", "timm"] = "none"
    eval_mode: Literal["zs", "lp"]
    split: Literal["train", "val", "test"]
    seed: int = 0
    epoch: int = 0
    lr: float | None = None
    wise_alpha: float | None = None
    gpu_hours: float = 0.0
    config_hash: str = ""
    synthimg_version: str = __version__
    git_sha: str = Field(default_factory=lambda: git_sha())
    run: str | None = None
    lp_trained_on: str | None = Field(None, description="the probe's training splits: train (val line), train+val (test line)")
    lp_epochs: int | None = None


def git_sha() -> str:
    """The checkout's commit, or "unknown" outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def append_result(path: str | os.PathLike[str], record: ResultRecord) -> None:
    """Append one line atomically enough for a crash: write, flush, fsync."""
    append_results(path, [record])


def append_results(path: str | os.PathLike[str], records: list[ResultRecord]) -> None:
    """Append several lines with one write, flushed and fsynced: they land together or not at all."""
    if not records:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = "".join(json.dumps(_line(r)) + "\n" for r in records)
    with open(path, "a") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())


def _line(record: ResultRecord) -> dict:
    """The JSON object of a line; CLIP_benchmark's optional dumps only when set, as it writes them."""
    return record.model_dump(mode="json", exclude={k for k in ("classnames", "templates") if getattr(record, k) is None})


def read_results(path: str | os.PathLike[str]) -> list[ResultRecord]:
    """Read and validate every line (a torn last line from a crash is ignored)."""
    records = []
    lines = Path(path).read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(ResultRecord.model_validate_json(line))
        except ValueError:
            if i == len(lines) - 1:
                continue
            raise
    return records
