"""Batches of (images, labels) from any evaluation split: torchvision (map-style) or WebDataset records.

A training run evaluates the same val and test splits at every epoch, for the zero-shot head
and again for the probe, and a study runs many cells in one process. :class:`MemoSplit` keeps a
split's preprocessed tensors in memory after its first full pass, when they fit a byte budget
(``eval.memo_mb``), so each split is decoded once per process instead of 4 times per epoch.
The eval transform is deterministic, so the batches are the same tensors either way.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import Any

_MEMO: OrderedDict[Hashable, tuple[Any, Any]] = OrderedDict()


@dataclass
class MemoSplit:
    """A split whose preprocessed (images, labels) are kept under ``key`` once read, if ≤ ``budget_bytes``."""

    dataset: Any
    key: Hashable
    budget_bytes: int


def _memo_bytes() -> int:
    return sum(x.element_size() * x.nelement() + y.element_size() * y.nelement() for x, y in _MEMO.values())


def clear_memo() -> None:
    """Forget every kept split (tests; a process that changes eval data on disk)."""
    _MEMO.clear()


def _batches(dataset: Any, batch_size: int, workers: int) -> Iterator[tuple[Any, Any]]:
    import torch

    from synthimg.data.loader import collate_records

    if isinstance(dataset, torch.utils.data.IterableDataset):
        workers = min(workers, getattr(dataset, "num_shards", workers))
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                             collate_fn=collate_records)
        for batch in loader:
            yield batch["image"], batch["label"]
        return
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False)
    for images, labels in loader:
        yield images, torch.as_tensor(labels)


def eval_batches(dataset: Any, batch_size: int, workers: int) -> Iterator[tuple[Any, Any]]:
    """Yield ``(images, labels)`` tensors; works for map-style datasets, shard pipelines and :class:`MemoSplit`."""
    import torch

    if not isinstance(dataset, MemoSplit):
        yield from _batches(dataset, batch_size, workers)
        return
    if dataset.key in _MEMO:
        _MEMO.move_to_end(dataset.key)
        images, labels = _MEMO[dataset.key]
        for i in range(0, len(labels), batch_size):
            yield images[i : i + batch_size], labels[i : i + batch_size]
        return
    kept: list[tuple[Any, Any]] | None = []
    size = 0
    for images, labels in _batches(dataset.dataset, batch_size, workers):
        if kept is not None:
            size += images.element_size() * images.nelement()
            if size <= dataset.budget_bytes:
                kept.append((images, labels))
            else:
                kept = None  # too big to keep: stream it every time
        yield images, labels
    if kept:  # a full pass (a consumer that stops early never gets here)
        _MEMO[dataset.key] = (torch.cat([x for x, _ in kept]), torch.cat([y for _, y in kept]))
        while len(_MEMO) > 1 and _memo_bytes() > dataset.budget_bytes:
            _MEMO.popitem(last=False)  # least recently used first
