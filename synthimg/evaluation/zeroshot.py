"""Zero-shot evaluation: a classifier (the fine-tuned or the template-built head) applied directly."""

from __future__ import annotations

from typing import Any

from synthimg.evaluation.data import eval_batches
from synthimg.evaluation.metrics import classification_metrics


def predict(model: Any, dataset: Any, batch_size: int, workers: int, device: str,
            precision: str = "fp32") -> tuple[Any, Any]:
    """Logits and labels of a whole split (fp32 unless ``amp_bf16``, as the official evaluation)."""
    import torch

    from synthimg.runtime import autocast

    model.eval()
    logits, labels = [], []
    with torch.no_grad():
        for images, y in eval_batches(dataset, batch_size, workers):
            with autocast(device, enabled=precision.startswith("amp")):
                logits.append(model(images.to(device)).float().cpu())
            labels.append(y)
    return torch.cat(logits), torch.cat(labels)


def evaluate_zeroshot(model: Any, dataset: Any, batch_size: int = 256, workers: int = 2, device: str = "cpu",
                      precision: str = "fp32") -> dict[str, Any]:
    """CLIP_benchmark-style metrics of ``model`` on one split."""
    logits, labels = predict(model, dataset, batch_size, workers, device, precision)
    return classification_metrics(logits, labels)
