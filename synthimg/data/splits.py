"""Evaluation splits of a task: torchvision datasets (``download=False``) or a WebDataset eval set.

A root holding ``classnames.txt`` / ``nshards.txt`` / ``SPLIT/*.tar`` is read as
CLIP_benchmark's WebDataset layout; any other root goes to the task's torchvision class.
Derived splits (the paper's Cars val = 20% of train, ImageNet val = 50K of train) use
``torch.utils.data.random_split`` with a seeded generator, as the official code does, so
they come out exactly and are a stable function of the seed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from synthimg.errors import SynthimgError
from synthimg.tasks.spec import RandomSplit, TaskSpec

Transform = Callable[[Any], Any] | None


def split_indices(n: int, spec: RandomSplit) -> list[list[int]]:
    """Index lists of each part of a seeded ``random_split`` over ``n`` items."""
    import torch

    lengths: list[float | int] = list(spec.lengths)  # type: ignore[arg-type]
    if any(v is None for v in lengths):
        fixed = sum(int(v) for v in lengths if v is not None)
        if fixed > n:
            raise SynthimgError(f"cannot hold out {fixed} items from a split of {n}")
        lengths = [n - fixed if v is None else int(v) for v in spec.lengths]  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(spec.seed)
    parts = torch.utils.data.random_split(range(n), lengths, generator=generator)
    return [list(p.indices) for p in parts]


def is_wds_root(root: str | os.PathLike[str]) -> bool:
    """True for CLIP_benchmark's WebDataset layout (or any folder of SPLIT/*.tar)."""
    root = Path(root)
    return (root / "classnames.txt").is_file() or any(root.glob("*/nshards.txt")) or any(root.glob("*/*.tar"))


class _Relabel:
    """Map a torchvision label onto the catalog index (picklable for workers)."""

    def __init__(self, offset: int):
        self.offset = offset

    def __call__(self, label: int) -> int:
        return int(label) + self.offset


def load_split(task: TaskSpec, split: str, root: str | os.PathLike[str], transform: Transform = None) -> Any:
    """A dataset of ``(image, label)`` for ``split`` of ``task``; labels are catalog indices.

    Torchvision roots give a map-style dataset; WebDataset roots an iterable one yielding
    record dicts (``image``, ``label``, ``key``, ``text``).
    """
    root = Path(root)
    if not root.exists():
        raise SynthimgError(f"evaluation root {root} does not exist; {_where(task, root)}")
    if is_wds_root(root):
        return _load_wds_split(task, split, root, transform)
    if task.eval is None:
        raise SynthimgError(f"task {task.name!r} has no torchvision source; pass a WebDataset eval folder")
    if split not in task.eval.splits:
        raise SynthimgError(f"task {task.name!r} has no split {split!r}; choose from: {', '.join(task.eval.splits)}")
    return _load_torchvision_split(task, split, root, transform)


def _where(task: TaskSpec, root: Path) -> str:
    if task.eval is None:
        return "expected a WebDataset eval folder (SPLIT/*.tar, classnames.txt)"
    return (
        f"put the {task.display_name or task.name} data there as torchvision.datasets.{task.eval.dataset} expects "
        f"({root}/{task.eval.expects}), or a CLIP_benchmark WebDataset folder (SPLIT/0.tar, classnames.txt)"
    )


def _load_torchvision_split(task: TaskSpec, split: str, root: Path, transform: Transform) -> Any:
    import torch
    import torchvision

    assert task.eval is not None
    spec = task.eval.splits[split]
    cls = getattr(torchvision.datasets, task.eval.dataset)
    kwargs = {**task.eval.kwargs, **spec.kwargs}
    target_transform = _Relabel(task.eval.label_offset) if task.eval.label_offset else None
    try:
        dataset = cls(root=str(root), download=False, transform=transform, target_transform=target_transform, **kwargs)
    except (RuntimeError, FileNotFoundError, OSError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SynthimgError(f"{task.name} {split} split not found under {root} ({first}); {_where(task, root)}") from None
    classes = getattr(dataset, "classes", None) or getattr(dataset, "categories", None)
    if classes is not None and len(classes) + task.eval.label_offset != task.num_classes:
        # torchvision derives some label sets from the files present: a partial copy would shift them
        raise SynthimgError(
            f"{task.name} {split}: torchvision found {len(classes)} classes under {root}, the catalog has "
            f"{task.num_classes - task.eval.label_offset}; is the dataset copy complete?"
        )
    if spec.part is None:
        return dataset
    assert task.eval.random_split is not None
    indices = split_indices(len(dataset), task.eval.random_split)[spec.part]
    return torch.utils.data.Subset(dataset, indices)


def _load_wds_split(task: TaskSpec, split: str, root: Path, transform: Transform) -> Any:
    from synthimg.data.loader import shard_pipeline

    names_file = root / "classnames.txt"
    if names_file.is_file():
        names = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
        if len(names) != task.num_classes:
            raise SynthimgError(
                f"{names_file} lists {len(names)} classes but task {task.name!r} has {task.num_classes}"
            )
    split_dir = root / split
    tars = sorted(split_dir.glob("*.tar"))
    if not tars:
        available = sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*.tar")))
        raise SynthimgError(f"no {split}/*.tar under {root}; splits there: {', '.join(available) or 'none'}")
    return shard_pipeline([str(t) for t in tars], transform=transform)
