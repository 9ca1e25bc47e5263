"""Drop candidates that are near-duplicates of evaluation images (``synthimg curate decontaminate``).

Evaluation descriptors go into a faiss index once; candidates stream through in batches
and are searched as they come, so memory stays flat however many there are. A candidate is
dropped when the pHash pass (Hamming, mirrored too) or the descriptor (cosine) reaches its
threshold. Outputs: ``dropped.parquet`` (key, match_key, similarity, descriptor), the kept
``keys.parquet``, per-class counts (as the paper's Table 1) and a contact sheet of the
pairs nearest the threshold for a human to check.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from synthimg.config import Config, CurateConfig, save_resolved
from synthimg.curation.descriptors import create_descriptor
from synthimg.curation.phash import (
    agreement,
    candidate_thumbs,
    crop_boxes,
    crop_variants,
    eval_thumbs,
    mirror,
    phash_codes,
)
from synthimg.data.manifest import merge_columns, read_manifest, write_keys
from synthimg.errors import SynthimgError
from synthimg.stage import Stats
from synthimg.tasks.spec import TaskSpec

log = logging.getLogger("synthimg.curate")


class Describe:
    """Per-image transform run in loader workers: the descriptor tensor, pHash codes and thumbnails.

    For a candidate: its hash and its mirrored image's, and the thumbnails that confirm a
    match. For an evaluation image (``crops`` given): the hashes of all its crop variants and
    its thumbnails; nothing mirrored (the candidate side covers flips).
    """

    def __init__(self, transform: Any, phash: bool, bits: int = 64, crops: list[float] | None = None):
        self.transform, self.phash, self.bits, self.crops = transform, phash, bits, crops

    def __call__(self, image: Any) -> tuple[Any, Any, Any]:
        tensor = self.transform(image) if self.transform is not None else None
        if not self.phash:
            return tensor, None, None
        if self.crops is not None:
            return tensor, phash_codes(crop_variants(image, self.crops), bits=self.bits), eval_thumbs(image)
        codes = (phash_codes([image], bits=self.bits)[0], phash_codes([image], mirrored=True, bits=self.bits)[0])
        return tensor, codes, candidate_thumbs(image)


@dataclass
class EvalSource:
    """Where evaluation images come from: a shard folder (ours or CLIP_benchmark's) or a task split."""

    against: Path | None = None
    task: TaskSpec | None = None
    eval_root: Path | None = None
    splits: list[str] = field(default_factory=lambda: ["test"])

    def datasets(self, transform: Any) -> Iterator[tuple[str, Any]]:
        """(prefix for match keys, dataset) per split."""
        from synthimg.data.loader import shard_pipeline
        from synthimg.data.splits import load_split

        if self.against is not None:
            if not self.against.is_dir():
                raise SynthimgError(f"evaluation folder not found: {self.against}")
            if any(self.against.glob("*.tar")):
                yield "", shard_pipeline(self.against, transform=transform)
                return
            found = [s for s in self.splits if any((self.against / s).glob("*.tar"))]
            if not found:
                raise SynthimgError(f"{self.against} has no .tar shards, nor {'/'.join(self.splits)}/*.tar")
            for s in found:
                yield f"{s}/", shard_pipeline(self.against / s, transform=transform)
            return
        if self.task is None or self.eval_root is None:
            raise SynthimgError("give --against EVAL_DIR, or --task T with --eval-root ROOT")
        for s in self.splits:
            yield f"{s}/", load_split(self.task, s, self.eval_root, transform=transform)


def _batches(dataset: Any, batch_size: int, workers: int) -> Iterator[tuple[list[str], list[Any]]]:
    """(keys, transformed items) batches from a shard pipeline (records) or a map-style dataset."""
    import torch

    if isinstance(dataset, torch.utils.data.IterableDataset):
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=_as_list)
        for batch in loader:
            yield [r["key"] for r in batch], [r["image"] for r in batch]
        return
    indexed = _Indexed(dataset)
    loader = torch.utils.data.DataLoader(indexed, batch_size=batch_size, num_workers=workers, collate_fn=_as_list)
    for batch in loader:
        yield [str(i) for i, _ in batch], [item for _, item in batch]


def _as_list(batch: list[Any]) -> list[Any]:
    return batch


class _Indexed:
    """Map-style dataset of (index, transformed image), dropping the label."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[int, Any]:
        return i, self.dataset[i][0]


@dataclass
class EvalIndex:
    keys: list[str]
    phash: Any = None
    owners: Any = None  # pHash variant -> evaluation image
    thumbs: list[Any] = field(default_factory=list)  # per evaluation image: (64 px luminance, 16 px colour)
    descriptor: Any = None


def build_eval_index(source: EvalSource, descriptor: Any, cfg: CurateConfig) -> EvalIndex:
    """Describe every evaluation image once and index the descriptors with faiss."""
    import faiss
    import torch

    transform = Describe(descriptor.transform if descriptor else None, cfg.phash, cfg.phash_bits, cfg.phash_crops)
    keys: list[str] = []
    codes: list[np.ndarray] = []
    owners: list[int] = []  # the evaluation image of each hashed variant
    index_thumbs: list[Any] = []
    feats: list[np.ndarray] = []
    for prefix, dataset in source.datasets(transform):
        workers = min(cfg.workers, getattr(dataset, "num_shards", cfg.workers))
        for batch_keys, items in _batches(dataset, cfg.batch_size, workers):
            for k, (_, variants, thumbs) in zip(batch_keys, items):
                if cfg.phash:
                    codes.append(variants)
                    owners.extend([len(keys)] * len(variants))
                    index_thumbs.append(thumbs)
                keys.append(prefix + k)
            if descriptor is not None:
                feats.append(descriptor(torch.stack([t for t, _, _ in items])))
    if not keys:
        raise SynthimgError("the evaluation set is empty")
    index = EvalIndex(keys)
    if cfg.phash:
        x = np.ascontiguousarray(np.concatenate(codes))
        index.phash = faiss.index_binary_factory(cfg.phash_bits, cfg.phash_index)
        if not index.phash.is_trained:
            index.phash.train(x)
        if hasattr(index.phash, "nprobe"):
            index.phash.nprobe = cfg.phash_nprobe
        index.phash.add(x)
        index.owners = np.asarray(owners, dtype=np.int64)
        index.thumbs = index_thumbs
    if descriptor is not None:
        x = np.ascontiguousarray(np.concatenate(feats), dtype=np.float32)
        index.descriptor = faiss.index_factory(x.shape[1], cfg.index_factory, faiss.METRIC_INNER_PRODUCT)
        if not index.descriptor.is_trained:
            index.descriptor.train(x)
        index.descriptor.add(x)
    return index


def search_candidates(
    shard_dir: Path, keys: list[str] | None, index: EvalIndex, descriptor: Any, cfg: CurateConfig, progress: bool
) -> pd.DataFrame:
    """One row per candidate: best pHash and descriptor similarity and their matches."""
    import torch

    from synthimg.data.loader import SkipStats, shard_pipeline
    from synthimg.progress import progress_bar

    stats = SkipStats()
    dataset = shard_pipeline(shard_dir, keys=keys, stats=stats,
                             transform=Describe(descriptor.transform if descriptor else None, cfg.phash, cfg.phash_bits))
    rows: list[pd.DataFrame] = []
    total = len(keys) if keys is not None else None
    with progress_bar(total=total, description="decontaminate", enabled=progress) as bar:
        for batch_keys, items in _batches(dataset, cfg.batch_size, min(cfg.workers, dataset.num_shards)):
            part: dict[str, Any] = {"key": batch_keys}
            if index.phash is not None:
                part.update(_phash_matches(items, index, cfg))
            if index.descriptor is not None:
                sims, ids = index.descriptor.search(descriptor(torch.stack([t for t, _, _ in items])), 1)
                part["desc_sim"] = sims[:, 0]
                part["desc_match"] = [index.keys[i] if i >= 0 else "" for i in ids[:, 0]]
            rows.append(pd.DataFrame(part))
            bar.advance(len(batch_keys))
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame({"key": []})
    table.attrs["skipped"] = stats.as_dict()
    return table


def _phash_matches(items: list[Any], index: EvalIndex, cfg: CurateConfig) -> dict[str, Any]:
    """Per candidate: the nearest hash (``phash_sim``) and the best confirmed match within the threshold.

    The ``phash_k`` nearest variants of the candidate and of its mirror are tried in order of
    distance; the first whose thumbnails agree (luminance correlation, colour) is the match.
    """
    bits = float(cfg.phash_bits)
    limit = round((1 - cfg.phash_threshold) * bits)
    boxes = crop_boxes(cfg.phash_crops)
    d1, i1 = index.phash.search(np.stack([c for _, (c, _), _ in items]), cfg.phash_k)
    d2, i2 = index.phash.search(np.stack([m for _, (_, m), _ in items]), cfg.phash_k)
    nearest, nearest_key, matches, confirmed, correlation = [], [], [], [], []
    for n, (_, _, thumbs) in enumerate(items):
        tries = sorted([(d, i, False) for d, i in zip(d1[n], i1[n]) if i >= 0]
                       + [(d, i, True) for d, i in zip(d2[n], i2[n]) if i >= 0])
        nearest.append(1.0 - tries[0][0] / bits if tries else 0.0)
        nearest_key.append(index.keys[int(index.owners[tries[0][1]])] if tries else "")
        found = ("", 0.0, float("nan"))
        for d, i, flipped in tries:
            if d > limit:
                break
            owner = int(index.owners[i])
            ncc, colour = agreement(mirror(thumbs) if flipped else thumbs, index.thumbs[owner], boxes[i % len(boxes)])
            if ncc >= cfg.phash_verify_ncc and colour <= cfg.phash_verify_colour:
                found = (index.keys[owner], 1.0 - d / bits, ncc)
                break
        matches.append(found[0])
        confirmed.append(found[1])
        correlation.append(found[2])
    return {"phash_sim": nearest, "phash_nearest": nearest_key, "phash_match": matches,
            "phash_confirmed_sim": confirmed, "phash_ncc": correlation}


def decide(scores: pd.DataFrame, descriptor_name: str, threshold: float | None, cfg: CurateConfig) -> pd.DataFrame:
    """The dropped rows: key, match_key, similarity, descriptor (pHash wins when both fire)."""
    out = []
    for row in scores.itertuples(index=False):
        if cfg.phash and row.phash_match:  # a hash match within the threshold, confirmed by the thumbnails
            out.append((row.key, row.phash_match, float(row.phash_confirmed_sim), "phash"))
        elif threshold is not None and row.desc_sim >= threshold:
            out.append((row.key, row.desc_match, float(row.desc_sim), descriptor_name))
    return pd.DataFrame(out, columns=["key", "match_key", "similarity", "descriptor"])


def decontaminate(
    shard_dir: str | os.PathLike[str],
    source: EvalSource,
    out: str | os.PathLike[str],
    cfg: CurateConfig,
    keys: list[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the whole stage; writes the outputs under ``out`` and returns the stats."""
    from synthimg import dist

    shard_dir, out = Path(shard_dir), Path(out)
    start = time.time()
    manifest = read_manifest(shard_dir)
    if keys is not None:
        manifest = manifest[manifest["key"].isin(set(keys))]
    descriptor = create_descriptor(cfg, dist.device())
    if descriptor is None and not cfg.phash:
        raise SynthimgError("nothing to match with: set curate.descriptor or curate.phash")
    threshold = (cfg.threshold if cfg.threshold is not None else descriptor.default_threshold) if descriptor else None
    index = build_eval_index(source, descriptor, cfg)
    t_search = time.time()
    scores = search_candidates(shard_dir, list(manifest["key"]), index, descriptor, cfg, progress)
    search_s = time.time() - t_search
    dropped = decide(scores, descriptor.name if descriptor else "none", threshold, cfg)
    dropped = dropped.merge(manifest[["key", "class_id", "class_name"]], on="key", how="left")
    kept = [k for k in manifest["key"] if k not in set(dropped["key"])]
    out.mkdir(parents=True, exist_ok=True)
    dropped.to_parquet(out / "dropped.parquet", index=False)
    scores.to_parquet(out / "decontam_scores.parquet", index=False)
    write_keys(kept, out / "keys.parquet")
    sim_cols = [c for c in ("phash_sim", "desc_sim") if c in scores]
    merge_columns(shard_dir, pd.DataFrame({
        "key": scores["key"], "decontam_max_sim": scores[sim_cols].max(axis=1),
        "kept_decontam": ~scores["key"].isin(set(dropped["key"])),
    }))
    per_class = _per_class(manifest, dropped)
    by = dropped["descriptor"].value_counts().to_dict()
    phash_rate = by.get("phash", 0) / max(1, len(scores))
    if phash_rate > 0.05:  # far above what test sets share with the web (Table 1): likely look-alikes, not copies
        log.warning("the pHash pass dropped %.1f%% of %d candidates; plain-background images (product shots) can look "
                    "alike to it: check %s and prefer a trained descriptor (curate.descriptor isc or clip)",
                    100 * phash_rate, len(scores), out / "contact_sheet.png")
    stats = {
        "count": len(manifest), "successes": len(scores), "dropped": len(dropped), "kept": len(kept),
        "eval_images": len(index.keys), "descriptor": descriptor.name if descriptor else "none", "threshold": threshold,
        "phash": cfg.phash, "phash_threshold": cfg.phash_threshold,
        "dropped_by": by, "phash_drop_rate": round(phash_rate, 5),
        "skipped": scores.attrs.get("skipped", {}), "duration": round(time.time() - start, 3),
        "gpu_seconds": round(time.time() - start, 3) if descriptor is not None else 0.0,  # a rerun redoes it all
        "candidates_per_sec": round(len(scores) / search_s, 1) if search_s > 0 else None,
        "per_class": per_class,
    }
    (out / "decontaminate_stats.json").write_text(json.dumps(stats, indent=1))
    if cfg.contact_pairs:
        from synthimg.curation.contact_sheet import draw_contact_sheet

        draw_contact_sheet(shard_dir, source, scores, threshold, cfg, out / "contact_sheet.png")
    return stats


def _per_class(manifest: pd.DataFrame, dropped: pd.DataFrame) -> dict[str, dict[str, float]]:
    total = manifest.groupby("class_name")["key"].size()
    hit = dropped.groupby("class_name")["key"].size() if len(dropped) else pd.Series(dtype=int)
    return {
        str(name): {"candidates": int(n), "dropped": int(hit.get(name, 0)), "pct": round(100.0 * hit.get(name, 0) / n, 3)}
        for name, n in total.items()
    }


def run(cfg: Config, shards: str | os.PathLike[str], out: str | os.PathLike[str],
        against: str | os.PathLike[str] | None = None, eval_root: str | os.PathLike[str] | None = None,
        keys: str | os.PathLike[str] | None = None) -> Stats:
    """``curate decontaminate``: against an eval shard folder, or the task's splits under ``eval_root``."""
    from synthimg.data.manifest import read_keys
    from synthimg.tasks import get_task

    if against is None and (cfg.task is None or eval_root is None):
        raise SynthimgError("give --against EVAL_DIR, or --task T with --eval-root ROOT")
    source = EvalSource(against=Path(against) if against else None, task=get_task(cfg.task) if cfg.task else None,
                        eval_root=Path(eval_root) if eval_root else None, splits=list(cfg.curate.against_splits))
    stats = decontaminate(shards, source, out, cfg.curate, read_keys(keys) if keys else None)
    save_resolved(cfg, out)
    return stats
