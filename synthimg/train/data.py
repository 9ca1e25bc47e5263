"""Training data: shard folders (optionally restricted to curated key lists, mixed by weight).

Every epoch's order is a function of (seed, epoch) alone: shard order and sample shuffle
are reseeded per epoch, so a run resumed from an epoch checkpoint sees the same data as an
uninterrupted one. Each rank takes exactly ``steps_per_epoch`` batches (its stream is
restarted if it runs dry), so DDP ranks never wait on each other at the end of an epoch.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthimg.config import TrainConfig
from synthimg.errors import SynthimgError


@dataclass
class Source:
    path: Path
    keys: list[str] | None
    weight: float
    size: int


def resolve_sources(cfg: TrainConfig) -> list[Source]:
    """Shard folders with their key lists, weights and sizes; absent keys are an error with the count."""
    from synthimg.data.loader import dataset_size
    from synthimg.data.manifest import check_keys, read_keys

    if not cfg.data:
        raise SynthimgError("no training data: pass --train-data SHARDS")
    if cfg.keys and len(cfg.keys) != len(cfg.data):
        raise SynthimgError(f"{len(cfg.keys)} key lists for {len(cfg.data)} shard folders: give one per folder ('' for all)")
    if cfg.weights and len(cfg.weights) != len(cfg.data):
        raise SynthimgError(f"{len(cfg.weights)} weights for {len(cfg.data)} shard folders")
    sources = []
    for i, folder in enumerate(cfg.data):
        path = Path(folder)
        if not path.is_dir():
            raise SynthimgError(f"training shards not found: {path}")
        key_file = cfg.keys[i] if cfg.keys else ""
        keys = read_keys(key_file) if key_file else None
        if keys is not None:
            check_keys(path, keys)
        size = len(keys) if keys is not None else dataset_size(path)
        sources.append(Source(path, keys, cfg.weights[i] if cfg.weights else float(size), size))
    return sources


def infer_arm(sources: list[Source]) -> str:
    """The arm from the manifests' ``source`` column: one value names it, several make ``mixed``."""
    from synthimg.data.manifest import read_manifest

    found = set()
    for s in sources:
        try:
            found |= set(read_manifest(s.path)["source"].dropna().unique())
        except (SynthimgError, KeyError):
            found.add("upstream")
    return found.pop() if len(found) == 1 else "mixed"


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def epoch_batches(
    sources: list[Source], cfg: TrainConfig, transform: Any, epoch: int, per_rank_batch: int, steps: int
) -> Iterator[dict[str, Any]]:
    """Exactly ``steps * cfg.grad_accum`` batches of ``per_rank_batch`` for this rank and epoch."""
    from synthimg.data.loader import shard_loader
    from synthimg.data.shards import list_shards

    seed = _epoch_seed(cfg.seed, epoch)
    needed = steps * cfg.grad_accum

    def one_pass(attempt: int) -> Any:
        if len(sources) == 1:
            urls = list_shards(sources[0].path)
            random.Random(seed + attempt).shuffle(urls)
            return shard_loader(urls, batch_size=per_rank_batch, num_workers=cfg.workers, keys=sources[0].keys,
                                transform=transform, resample="auto", epoch_size=needed * per_rank_batch,
                                shuffle=cfg.shuffle_buffer, seed=seed + attempt, drop_last=True)
        return _mixed_loader(sources, cfg, transform, per_rank_batch, needed, seed + attempt)

    produced, attempt = 0, 0
    while produced < needed:
        empty = True
        for batch in one_pass(attempt):
            empty = False
            yield batch
            produced += 1
            if produced == needed:
                return
        if empty:
            raise SynthimgError("the training data yielded no full batch: fewer samples than the per-rank batch?")
        attempt += 1


def _mixed_loader(sources: list[Source], cfg: TrainConfig, transform: Any, batch: int, batches: int, seed: int) -> Any:
    """Several shard folders sampled by weight (each resampled), via webdataset's RandomMix."""
    import torch
    import webdataset as wds

    from synthimg.data.loader import collate_records, shard_pipeline

    pipes = [shard_pipeline(str(s.path), keys=s.keys, transform=transform, resampled=True, shuffle=cfg.shuffle_buffer,
                            seed=seed + i) for i, s in enumerate(sources)]
    total = sum(s.weight for s in sources)
    mix = wds.DataPipeline(wds.RandomMix(pipes, probs=[s.weight / total for s in sources])).with_epoch(
        -(-batches * batch // max(1, cfg.workers)))
    return torch.utils.data.DataLoader(mix, batch_size=batch, num_workers=cfg.workers, collate_fn=collate_records,
                                       drop_last=True)
