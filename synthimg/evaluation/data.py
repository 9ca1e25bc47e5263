"""Batches of (images, labels) from any evaluation split: torchvision (map-style) or WebDataset records.

:class:`MemoSplit` keeps a split's preprocessed batches in memory after one full pass, within
``eval.memo_mb``, so the epochs and cells of one process decode each split once (docs/evaluation.md).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import Any

_MEMO: OrderedDict[Hashable, tuple[int, list[tuple[Any, Any]]]] = OrderedDict()  # key -> (bytes, batches)
_TOO_BIG: set[Hashable] = set()  # splits seen not to fit: streamed without copying batches again


@dataclass
class MemoSplit:
    """A split whose batches are kept under ``key`` after a full pass, if they fit ``budget_bytes`` (all kept splits)."""

    dataset: Any
    key: Hashable
    budget_bytes: int


def clear_memo() -> None:
    """Forget every kept split (tests; a process that rewrites eval data in place)."""
    _MEMO.clear()
    _TOO_BIG.clear()


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
    if not isinstance(dataset, MemoSplit):
        yield from _batches(dataset, batch_size, workers)
        return
    key = (dataset.key, batch_size)  # replayed exactly as first yielded: same batch shapes, same results
    if key in _TOO_BIG:
        yield from _batches(dataset.dataset, batch_size, workers)
        return
    if key in _MEMO:
        _MEMO.move_to_end(key)
        for images, labels in _MEMO[key][1]:
            yield images.clone(), labels.clone()  # a consumer that edits its input leaves the memo as it was
        return
    kept: list[tuple[Any, Any]] | None = []
    size = 0
    for images, labels in _batches(dataset.dataset, batch_size, workers):
        if kept is not None:
            size += images.element_size() * images.nelement() + labels.element_size() * labels.nelement()
            if size <= dataset.budget_bytes:
                kept.append((images.clone(), labels.clone()))
            else:
                kept = None
                _TOO_BIG.add(key)  # too big to keep: stream it from now on
        yield images, labels
    if kept:  # a full pass (a consumer that stops early never gets here)
        while _MEMO and sum(n for n, _ in _MEMO.values()) + size > dataset.budget_bytes:
            _MEMO.popitem(last=False)  # least recently used first, before the new one goes in
        _MEMO[key] = (size, kept)
