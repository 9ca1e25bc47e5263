"""Linear probe: a fresh, normalised linear head on frozen image features (paper Sec. 4.1, App. D).

As the official ``adapt/src/models/linear_probe.py``: features are L2-normalised, the head is
a ``torch.nn.Linear`` with its default weight initialisation and a zero bias (the official
``ClassificationHead``), trained with AdamW (0.9, 0.95), the
paper's warmup + cosine schedule per step, gradient clip 1.0 and a fresh shuffle every epoch,
and the final head is evaluated (no choice of probe epoch). Defaults: lr 1e-2, batch 256,
200 epochs, 200 warmup steps, wd 0.1 (ImageNet: 1e-3, 40, 0).

At every fine-tuning epoch two probes are trained on the same features, extracted once:
train -> val (the line that selects the epoch and LR) and train+val -> test (the reported
line). The trainer's features are kept in memory for that epoch only; ``synthimg eval`` can
cache them on disk.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthimg.atomic import atomic_path
from synthimg.evaluation.data import eval_batches
from synthimg.evaluation.metrics import classification_metrics


def extract_features(
    encode: Any, dataset: Any, batch_size: int, workers: int, device: str, cache: Path | None = None,
    precision: str = "fp32",
) -> tuple[Any, Any]:
    """L2-normalised features and labels of a split, from ``cache`` when it exists (fp32 unless ``amp_bf16``)."""
    import torch
    import torch.nn.functional as F

    from synthimg.runtime import autocast

    if cache is not None and cache.is_file():
        data = torch.load(cache, weights_only=True)
        return data["features"], data["labels"]
    feats, labels = [], []
    with torch.no_grad():
        for images, y in eval_batches(dataset, batch_size, workers):
            with autocast(device, enabled=precision.startswith("amp")):
                feats.append(F.normalize(encode(images.to(device)).float(), dim=-1).cpu())
            labels.append(y)
    features, labels_t = torch.cat(feats), torch.cat(labels)
    if cache is not None:
        with atomic_path(cache) as tmp:
            torch.save({"features": features, "labels": labels_t}, tmp)
    return features, labels_t


def feature_cache_key(*parts: Any) -> str:
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ProbeSettings:
    """The probe's hyper-parameters (from ``EvalConfig``'s ``lp_*`` keys)."""

    lr: float = 1e-2
    batch_size: int = 256
    epochs: int = 200
    wd: float = 0.1
    warmup: int = 200
    grad_clip: float | None = 1.0
    betas: tuple[float, float] = (0.9, 0.95)

    @classmethod
    def from_config(cls, cfg: Any) -> "ProbeSettings":
        return cls(lr=cfg.lp_lr, batch_size=cfg.lp_batch_size, epochs=cfg.lp_epochs, wd=cfg.lp_wd,
                   warmup=cfg.lp_warmup, grad_clip=cfg.lp_grad_clip, betas=(cfg.lp_beta1, cfg.lp_beta2))


def train_probe(train: tuple[Any, Any], num_classes: int, settings: ProbeSettings = ProbeSettings(), seed: int = 0,
                device: str = "cpu") -> Any:
    """Train a linear head on (normalised features, labels); returns the final head (on the CPU)."""
    import torch
    import torch.nn.functional as F

    from synthimg.models.schedule import paper_scheduler

    x, y = train[0].to(device), train[1].to(device)
    x = F.normalize(x.float(), dim=-1)  # the official ClassificationHead(normalize=True)
    torch.manual_seed(seed)  # the official ClassificationHead: nn.Linear's default weights, a zero bias
    head = torch.nn.Linear(x.shape[1], num_classes)
    torch.nn.init.zeros_(head.bias)
    head = head.to(device)
    opt = torch.optim.AdamW(head.parameters(), lr=settings.lr, weight_decay=settings.wd, betas=settings.betas)
    steps_per_epoch = max(1, -(-len(x) // settings.batch_size))
    sched = paper_scheduler(opt, settings.warmup, settings.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    head.train()
    for _ in range(settings.epochs):
        order = torch.randperm(len(x), generator=generator).to(device)
        for start in range(0, len(x), settings.batch_size):
            idx = order[start : start + settings.batch_size]
            loss = F.cross_entropy(head(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if settings.grad_clip:
                torch.nn.utils.clip_grad_norm_(head.parameters(), settings.grad_clip)
            opt.step()
            sched.step()
    return head.eval().cpu()


def probe_metrics(head: Any, data: tuple[Any, Any]) -> dict[str, Any]:
    """CLIP_benchmark metrics of a trained head on (features, labels)."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        return classification_metrics(head(F.normalize(data[0].float(), dim=-1)), data[1])


@dataclass
class ProbePair:
    """The two probes of one evaluation: train -> val (selection) and train+val -> test (reported)."""

    val: dict[str, Any] | None
    test: dict[str, Any] | None
    val_trained_on: str
    test_trained_on: str


def probe_pair(feats: dict[str, tuple[Any, Any]], num_classes: int, settings: ProbeSettings, seed: int,
               device: str, held_out_val: bool) -> ProbePair:
    """Both probes from features of ``train``, ``val`` and ``test`` (any of val/test may be absent)."""
    import torch

    val = test = None
    if "val" in feats:
        head = train_probe(feats["train"], num_classes, settings, seed, device)
        val = probe_metrics(head, feats["val"])
    if "test" in feats:
        both = feats["train"] if "val" not in feats else tuple(
            torch.cat([feats["train"][i], feats["val"][i]]) for i in range(2))
        head = train_probe(both, num_classes, settings, seed, device)  # type: ignore[arg-type]
        test = probe_metrics(head, feats["test"])
    if held_out_val:  # the split has no val: 20% of train stood in for it, the test probe sees all of train
        return ProbePair(val=val, test=test, val_trained_on="train-80%", test_trained_on="train")
    return ProbePair(val=val, test=test, val_trained_on="train", test_trained_on="train" if val is None else "train+val")
