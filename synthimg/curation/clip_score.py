"""CLIP score of every sample against its own class's templates (``synthimg curate score``).

``reduce="max"``: the maximum over templates of cos(image, template), as the paper says.
``reduce="mean"``: cos(image, normalised mean of template embeddings), as the official
code computes it. Scores are cached per scorer in ``SHARDS/_curation/``; a rerun scores
only samples not yet in the cache, and the ``clip_score`` column is merged into the manifest.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd

from synthimg.atomic import atomic_path
from synthimg.config import Config, CurateConfig, save_resolved
from synthimg.data.manifest import merge_columns, read_manifest
from synthimg.errors import SynthimgError
from synthimg.stage import Stats
from synthimg.tasks.spec import TaskSpec

CACHE_DIR = "_curation"


def cache_path(shard_dir: Path, task: TaskSpec, cfg: CurateConfig) -> Path:
    tag = f"{cfg.model}__{cfg.pretrained or 'random'}__{cfg.reduce}__{task.name}".replace("/", "_")
    return shard_dir / CACHE_DIR / f"clip_score__{tag}.parquet"


def template_embeddings(bundle: Any, task: TaskSpec, device: str) -> Any:
    """[K, T_max, D] normalised template embeddings (padded with NaN where a class has fewer prompts)."""
    import torch
    import torch.nn.functional as F

    prompts = [task.prompts(c) for c in range(task.num_classes)]
    t_max = max(len(p) for p in prompts)
    out = torch.full((task.num_classes, t_max, bundle.model.text_projection.shape[1]), float("nan"))
    with torch.no_grad():
        for c, ps in enumerate(prompts):
            out[c, : len(ps)] = F.normalize(bundle.model.encode_text(bundle.tokenizer(ps).to(device)).float(), dim=-1).cpu()
    return out


def reduce_scores(image: Any, templates: Any, labels: Any, reduce: str) -> Any:
    """Scores of normalised image features [B, D] against their own class's templates [K, T, D]."""
    import torch
    import torch.nn.functional as F

    own = templates[labels]  # [B, T, D]
    valid = ~torch.isnan(own[..., 0])
    if reduce == "mean":
        mean = F.normalize(torch.nan_to_num(own).sum(1) / valid.sum(1, keepdim=True), dim=-1)
        return (image * mean).sum(-1)
    sims = torch.einsum("bd,btd->bt", image, torch.nan_to_num(own))
    return sims.masked_fill(~valid, float("-inf")).max(1).values


def score_shards(
    shard_dir: str | os.PathLike[str], task: TaskSpec, cfg: CurateConfig, progress: bool = True
) -> pd.DataFrame:
    """Score all samples not yet cached; returns the full score table (key, clip_score)."""
    import torch

    from synthimg import dist
    from synthimg.data.loader import SkipStats
    from synthimg.models.clip import create_clip
    from synthimg.progress import progress_bar
    from synthimg.runtime import autocast, carried_gpu_seconds

    shard_dir = Path(shard_dir)
    start = time.time()
    manifest = read_manifest(shard_dir)
    cache = cache_path(shard_dir, task, cfg)
    empty = pd.DataFrame({"key": pd.Series(dtype=str), "clip_score": pd.Series(dtype=float)})
    done = pd.read_parquet(cache) if cache.is_file() else empty
    todo = sorted(set(manifest["key"].astype(str)) - set(done["key"].astype(str)))
    new_rows: list[pd.DataFrame] = []
    stats = SkipStats()
    if todo:
        device = dist.device()
        bundle = create_clip(cfg.model, cfg.pretrained, device=device)
        bundle.model.eval()
        templates = template_embeddings(bundle, task, device).to(device)
        loader = _loader(shard_dir, cfg, todo, bundle, stats)
        with progress_bar(total=len(todo), description="curate score", enabled=progress) as bar, torch.no_grad():
            for batch in loader:
                with autocast(device):
                    feats = bundle.model.encode_image(batch["image"].to(device), normalize=True)
                scores = reduce_scores(feats.float(), templates, batch["label"].to(device), cfg.reduce)
                new_rows.append(pd.DataFrame({"key": batch["key"], "clip_score": scores.cpu().numpy()}))
                bar.advance(len(batch["key"]))
    # Under torchrun each rank scored its own shards; rank 0 merges and writes.
    gathered = dist.gather_to_rank0(new_rows)
    if gathered is None:
        return pd.DataFrame()
    new_rows = [df for part in gathered for df in part]
    parts = [df for df in (done, *new_rows) if len(df)]
    table = pd.concat(parts, ignore_index=True).drop_duplicates("key", keep="last") if parts else done
    with atomic_path(cache) as tmp:
        table.to_parquet(tmp, index=False)
    merge_columns(shard_dir, table.assign(
        clip_score_model=f"{cfg.model}:{cfg.pretrained or 'random'}", clip_score_reduce=cfg.reduce))
    scored = len(table)
    stats_path = shard_dir / CACHE_DIR / "score_stats.json"
    this_run = (time.time() - start) * len(gathered) if todo else 0.0
    stats_path.write_text(json.dumps({
        "count": len(manifest), "successes": scored, "newly_scored": sum(len(r) for r in new_rows),
        "cached": len(done), "skipped": stats.as_dict(), "duration": round(time.time() - start, 3),
        "world_size": len(gathered), "gpu_seconds": carried_gpu_seconds(stats_path, this_run),
        "model": cfg.model, "pretrained": cfg.pretrained, "reduce": cfg.reduce,
    }, indent=1))
    if scored < len(manifest):
        missing = len(manifest) - scored
        raise SynthimgError(f"{missing} samples of {shard_dir} could not be scored (corrupt or unreadable); see score_stats.json")
    return table


def _loader(shard_dir: Path, cfg: CurateConfig, keys: list[str], bundle: Any, stats: Any) -> Any:
    from synthimg.data.loader import shard_loader
    from synthimg.data.shards import list_shards

    workers = min(cfg.workers, len(list_shards(shard_dir)))
    return shard_loader(shard_dir, batch_size=cfg.batch_size, num_workers=workers, keys=keys,
                        transform=bundle.preprocess_val, stats=stats, resample="never")


def run(cfg: Config, shards: str | os.PathLike[str]) -> Stats:
    """``curate score`` under one process, torchrun or srun: each rank scores its shards, rank 0
    merges them into the manifest and writes ``SHARDS/_clip_scores/score_config.yaml``."""
    from synthimg import dist
    from synthimg.tasks import get_task

    if cfg.task is None:
        raise SynthimgError("no task: the class templates to score against (--task)")
    rank, world = dist.init()
    table = score_shards(shards, get_task(cfg.task), cfg.curate)
    if rank == 0:
        save_resolved(cfg, Path(shards) / CACHE_DIR, "score_config.yaml")
    return {"rank": rank, "world": world, "count": int(len(table)),
            "mean_clip_score": float(table["clip_score"].mean()) if len(table) else None}
