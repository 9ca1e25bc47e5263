"""Batches of (images, labels) from any evaluation split: torchvision (map-style) or WebDataset records."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def eval_batches(dataset: Any, batch_size: int, workers: int) -> Iterator[tuple[Any, Any]]:
    """Yield ``(images, labels)`` tensors; works for map-style datasets and shard pipelines."""
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
