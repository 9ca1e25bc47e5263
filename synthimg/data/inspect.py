"""``synthimg shards inspect``: per-class counts, totals, skipped samples and missing classes."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from synthimg.data.loader import SkipStats, shard_pipeline
from synthimg.data.shards import list_shards
from synthimg.errors import SynthimgError


def read_classnames(shard_dir: Path) -> list[str] | None:
    path = shard_dir / "classnames.txt"
    return [line.strip() for line in path.read_text().splitlines() if line.strip()] if path.is_file() else None


def inspect_shards(shard_dir: str | os.PathLike[str], classnames: list[str] | None = None, progress: bool = True) -> dict[str, Any]:
    """Read every sample once (decoding images) and report what is there and what was skipped.

    Shards that yield fewer samples than ``sizes.json`` promises are listed: a tar cut at a
    member boundary ends without an error, and only the recorded size reveals the loss.
    """
    from synthimg.progress import progress_bar

    shard_dir = Path(shard_dir)
    if not shard_dir.is_dir():
        raise SynthimgError(f"{shard_dir} is not a shard folder (not a folder)")
    tars = list_shards(shard_dir)
    if not tars:
        raise SynthimgError(f"no .tar shards in {shard_dir}")
    classnames = classnames or read_classnames(shard_dir)
    sizes_path = shard_dir / "sizes.json"
    expected = json.loads(sizes_path.read_text()) if sizes_path.is_file() else {}
    stats = SkipStats()
    per_class: Counter[int] = Counter()
    per_shard: Counter[str] = Counter()
    with progress_bar(total=sum(expected.values()) or None, description="inspect", enabled=progress) as bar:
        for record in shard_pipeline(tars, stats=stats, with_meta=True):
            per_class[record["label"]] += 1
            per_shard[record["shard"]] += 1
            bar.advance()
    if not per_class and not expected and not (shard_dir / "classnames.txt").is_file():
        raise SynthimgError(f"{shard_dir} is not a shard folder: none of its {len(tars)} tars holds an image with "
                            "a class label, and it has no sizes.json or classnames.txt")
    names = classnames or [str(i) for i in range(max(per_class, default=-1) + 1)]
    short = {s: {"expected": n, "read": per_shard.get(s, 0)} for s, n in expected.items() if per_shard.get(s, 0) < n}
    counts = [per_class.get(i, 0) for i in range(len(names))]
    return {
        "path": str(shard_dir),
        "shards": len(tars),
        "total": sum(per_class.values()),
        "expected_total": sum(expected.values()) if expected else None,
        "num_classes": len(names),
        "per_class": {names[i]: counts[i] for i in range(len(names))},
        "min_per_class": min(counts) if counts else 0,
        "max_per_class": max(counts) if counts else 0,
        "missing_classes": [names[i] for i, n in enumerate(counts) if n == 0],
        "unknown_labels": sorted(k for k in per_class if k >= len(names) or k < 0),
        "skipped": stats.as_dict(),
        "skipped_total": stats.total,
        "short_shards": short,
    }
