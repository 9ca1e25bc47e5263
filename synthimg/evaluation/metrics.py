"""Classification metrics with CLIP_benchmark's names: acc1, acc5, mean_per_class_recall."""

from __future__ import annotations

from typing import Any


def classification_metrics(logits: Any, labels: Any) -> dict[str, float | None]:
    """Top-1 / top-5 accuracy and balanced accuracy (mean recall over the classes present).

    acc5 is None when there are fewer than 5 classes (CLIP_benchmark writes NaN there).
    """
    import torch

    logits, labels = logits.float().cpu(), labels.long().cpu()
    k = logits.shape[1]
    top = logits.topk(min(5, k), dim=1).indices
    acc1 = (top[:, 0] == labels).float().mean().item()
    acc5 = (top == labels[:, None]).any(dim=1).float().mean().item() if k >= 5 else None
    pred = top[:, 0]
    recalls = [(pred[labels == c] == c).float().mean() for c in labels.unique()]
    return {"acc1": acc1, "acc5": acc5, "mean_per_class_recall": torch.stack(recalls).mean().item()}
