"""Why the arms differ: FID/KID of training subsets to the test set, CLIP-score histograms, galleries.

``synthimg analyze`` embeds the task's test images and each subset of an arm with a CLIP
image tower (the learner's feature space; the paper's learner is ViT-B/16) and hands the
features to torchmetrics' FID and KID. It also writes a histogram of the arm's CLIP scores
and per-class gallery thumbnails (test image beside training images). The report reads
``analysis.json`` and the thumbnails; it never loads a model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from synthimg.config import CurateConfig
from synthimg.data.manifest import read_keys, read_manifest
from synthimg.tasks.spec import TaskSpec


def _features(dim: int) -> Any:
    """torchmetrics calls its feature extractor on what ``update`` gets: here, features already computed."""
    import torch

    module = torch.nn.Identity()
    module.num_features = dim  # read by torchmetrics instead of probing with a dummy image
    return module


def fid_kid(real: Any, fake: Any, subset_size: int = 1000, subsets: int = 50, seed: int = 0) -> dict[str, float]:
    """FID and KID (mean, std) between two feature sets, computed by torchmetrics."""
    import warnings

    import torch
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    dim = real.shape[1]
    fid = FrechetInceptionDistance(feature=_features(dim), reset_real_features=False)
    fid.update(real.double(), real=True)
    fid.update(fake.double(), real=False)
    size = max(2, min(subset_size, len(real), len(fake)))
    torch.manual_seed(seed)
    with warnings.catch_warnings():  # "will save all extracted features": they are ours, already in memory
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=_features(dim), subsets=subsets, subset_size=size)
    kid.update(real.float(), real=True)
    kid.update(fake.float(), real=False)
    kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid_mean": float(kid_mean), "kid_std": float(kid_std),
            "kid_subset_size": size}


def _thumb(image: Any, size: int) -> Any:
    from PIL import ImageOps

    return ImageOps.fit(image.convert("RGB"), (size, size))


def _first_per_class(dataset: Any, classes: set[int], per_class: int) -> dict[int, list[Any]]:
    """The first ``per_class`` images of each wanted class (in the dataset's order)."""
    found: dict[int, list[Any]] = {c: [] for c in classes}
    for item in dataset:
        image, label = (item["image"], item["label"]) if isinstance(item, dict) else item
        label = int(label)
        if label in found and len(found[label]) < per_class:
            found[label].append(image)
            if all(len(v) >= per_class for v in found.values()):
                break
    return found


def analyze(
    shards: str | Path, keys: list[str | Path], task: TaskSpec, eval_root: str | Path, cfg: CurateConfig, out: str | Path,
    arm: str, device: str = "cpu", gallery_classes: int = 8, gallery_per_class: int = 4, thumb: int = 96,
    bins: int = 20,
) -> dict[str, Any]:
    """Write ``OUT/analysis.json`` and ``OUT/gallery/``: distances per subset, score histogram, thumbnails."""
    import numpy as np
    import torch

    from synthimg.data.loader import shard_pipeline
    from synthimg.data.shards import list_shards
    from synthimg.data.splits import load_split
    from synthimg.evaluation.linear_probe import extract_features
    from synthimg.models.clip import create_clip

    out = Path(out)
    (out / "gallery").mkdir(parents=True, exist_ok=True)
    bundle = create_clip(cfg.model, cfg.pretrained, device=device)
    bundle.model.eval()
    urls = [str(p) for p in list_shards(shards)]
    test = load_split(task, "test", eval_root, bundle.preprocess_val)
    real, _ = extract_features(bundle.model.encode_image, test, cfg.batch_size, cfg.workers, device,
                               out / "features" / "test.pt")
    manifest = read_manifest(shards)
    subsets = []
    for path in keys:
        chosen = read_keys(path)
        data = shard_pipeline(urls, keys=chosen, transform=bundle.preprocess_val)
        fake, _ = extract_features(bundle.model.encode_image, data, cfg.batch_size, cfg.workers, device)
        subsets.append({"keys": str(path), "num_train_images": len(chosen), "test_images": len(real),
                        **fid_kid(real, fake)})
    largest = read_keys(keys[-1]) if keys else list(manifest["key"])
    scores = manifest.loc[manifest["key"].isin(set(largest)), "clip_score"] if "clip_score" in manifest else None
    hist = None
    if scores is not None and scores.notna().any():
        counts, edges = np.histogram(scores.dropna().to_numpy(), bins=bins)
        hist = {"counts": counts.tolist(), "edges": [round(float(e), 6) for e in edges],
                "mean": float(scores.mean()), "n": int(scores.notna().sum())}
    classes = set(range(min(gallery_classes, task.num_classes)))
    gallery: dict[str, Any] = {"classes": {}, "test": {}}
    train_images = _first_per_class(shard_pipeline(urls, keys=sorted(largest)), classes, gallery_per_class)
    test_images = _first_per_class(load_split(task, "test", eval_root, None), classes, 1)
    for c in sorted(classes):
        names = []
        for j, image in enumerate(train_images[c]):
            name = f"gallery/{c:04d}_{j}.jpg"
            _thumb(image, thumb).save(out / name, quality=90)
            names.append(name)
        gallery["classes"][str(c)] = names
        if test_images[c]:
            name = f"gallery/test_{c:04d}.jpg"
            _thumb(test_images[c][0], thumb).save(out / name, quality=90)
            gallery["test"][str(c)] = name
    info = {"arm": arm, "task": task.name, "classnames": task.classnames[: len(classes)],
            "feature_model": cfg.model, "feature_pretrained": cfg.pretrained, "subsets": subsets,
            "clip_score_hist": hist, "gallery": gallery, "torch": torch.__version__}
    (out / "analysis.json").write_text(json.dumps(info, indent=1))
    return info
