"""Top fraction per class and arm by CLIP score, then a per-class cap (``synthimg curate filter``).

The paper keeps the top 30% per class in each arm separately, then caps retrieved classes
at 10,000 images keeping the highest scores.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd

from synthimg.atomic import atomic_write
from synthimg.config import Config, save_resolved
from synthimg.data.manifest import merge_columns, read_keys, read_manifest, write_keys
from synthimg.errors import SynthimgError
from synthimg.stage import Stats


def filter_top(manifest: pd.DataFrame, top: float, cap: int | None, keys: list[str] | None = None) -> pd.DataFrame:
    """Rows kept: per (source, class) the ``ceil(top * n)`` highest ``clip_score``, then at most ``cap``.

    Ties break by key so the result is deterministic.
    """
    if "clip_score" not in manifest or manifest["clip_score"].isna().any():
        raise SynthimgError("the manifest has samples without clip_score: run `synthimg curate score` first")
    df = manifest if keys is None else manifest[manifest["key"].isin(set(keys))]
    group = ["source", "class_id"] if "source" in df else ["class_id"]
    ranked = df.sort_values(group + ["clip_score", "key"], ascending=[True] * len(group) + [False, True])
    sizes = ranked.groupby(group, sort=False)["key"].transform("size")
    rank = ranked.groupby(group, sort=False).cumcount()
    quota = sizes.map(lambda n: math.ceil(top * n))
    if cap is not None:
        quota = quota.clip(upper=cap)
    return ranked[rank < quota].reset_index(drop=True)


def per_class_counts(before: pd.DataFrame, after: pd.DataFrame) -> dict[str, dict[str, int]]:
    """``{class_name: {"before": n, "kept": m}}`` for the stats file."""
    b = before.groupby("class_name")["key"].size()
    a = after.groupby("class_name")["key"].size()
    return {name: {"before": int(b[name]), "kept": int(a.get(name, 0))} for name in b.index}


def run(cfg: Config, shards: str | os.PathLike[str], out: str | os.PathLike[str],
        keys: str | os.PathLike[str] | None = None) -> Stats:
    """``curate filter``: OUT/keys.parquet, the manifest's ``kept_filter`` column, OUT/filter_stats.json, config."""
    out = Path(out)
    manifest = read_manifest(shards)
    subset = read_keys(keys) if keys else None
    kept = filter_top(manifest, cfg.curate.top, cfg.curate.cap, subset)
    write_keys(kept["key"], out / "keys.parquet")
    before = manifest if subset is None else manifest[manifest["key"].isin(set(subset))]
    merge_columns(shards, pd.DataFrame({"key": before["key"], "kept_filter": before["key"].isin(set(kept["key"]))}))
    stats = {"count": len(before), "kept": len(kept), "top": cfg.curate.top, "cap": cfg.curate.cap,
             "per_class": per_class_counts(before, kept)}
    atomic_write(out / "filter_stats.json", json.dumps(stats, indent=1))
    save_resolved(cfg, out)
    return stats
