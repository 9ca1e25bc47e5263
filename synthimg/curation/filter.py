"""Top fraction per class and arm by CLIP score, then a per-class cap (``synthimg curate filter``).

The paper keeps the top 30% per class in each arm separately, then caps retrieved classes
at 10,000 images keeping the highest scores.
"""

from __future__ import annotations

import math

import pandas as pd

from synthimg.errors import SynthimgError


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
