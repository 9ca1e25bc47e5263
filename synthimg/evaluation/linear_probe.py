"""Linear probe: a fresh, normalised linear head on frozen image features (paper Sec. 4).

Features of each split are computed once and cached to disk (keyed by model and split), so
an LR sweep does not re-embed. The head trains on the train split with AdamW and a cosine
schedule; every epoch is scored on val and test, and the reported epoch is the best on val,
never on test. Defaults: lr 1e-2, batch 256, 200 epochs, wd 0.1 (ImageNet: 1e-3, 40, 0).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthimg.evaluation.data import eval_batches
from synthimg.evaluation.metrics import classification_metrics


def extract_features(
    encode: Any, dataset: Any, batch_size: int, workers: int, device: str, cache: Path | None = None
) -> tuple[Any, Any]:
    """L2-normalised features and labels of a split, from ``cache`` when it exists."""
    import torch
    import torch.nn.functional as F

    from synthimg.runtime import autocast

    if cache is not None and cache.is_file():
        data = torch.load(cache, weights_only=True)
        return data["features"], data["labels"]
    feats, labels = [], []
    with torch.no_grad():
        for images, y in eval_batches(dataset, batch_size, workers):
            with autocast(device):
                feats.append(F.normalize(encode(images.to(device)).float(), dim=-1).cpu())
            labels.append(y)
    features, labels_t = torch.cat(feats), torch.cat(labels)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + ".tmp")
        torch.save({"features": features, "labels": labels_t}, tmp)
        tmp.replace(cache)
    return features, labels_t


def feature_cache_key(*parts: Any) -> str:
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:16]


@dataclass
class ProbeResult:
    best_epoch: int
    val: dict[str, Any]
    test: dict[str, Any] | None
    history: list[dict[str, Any]]


def train_probe(
    train: tuple[Any, Any],
    val: tuple[Any, Any],
    test: tuple[Any, Any] | None,
    num_classes: int,
    lr: float = 1e-2,
    batch_size: int = 256,
    epochs: int = 200,
    wd: float = 0.1,
    seed: int = 0,
) -> ProbeResult:
    """Train the head on ``train``; pick the epoch with the best val acc1; report its test metrics."""
    import torch

    x, y = train
    generator = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * 0.01)
        head.bias.zero_()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=wd)
    steps_per_epoch = max(1, -(-len(x) // batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    best: tuple[float, int, dict[str, Any], dict[str, Any] | None] = (-1.0, -1, {}, None)
    history = []
    for epoch in range(1, epochs + 1):
        head.train()
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            loss = torch.nn.functional.cross_entropy(head(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        head.eval()
        with torch.no_grad():
            val_m = classification_metrics(head(val[0]), val[1])
            test_m = classification_metrics(head(test[0]), test[1]) if test is not None else None
        history.append({"epoch": epoch, "val_acc1": val_m["acc1"], "test_acc1": test_m["acc1"] if test_m else None})
        if val_m["acc1"] > best[0]:
            best = (val_m["acc1"], epoch, val_m, test_m)
    return ProbeResult(best_epoch=best[1], val=best[2], test=best[3], history=history)
