"""A contact sheet of candidate / evaluation pairs nearest the decontamination threshold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from synthimg.config import CurateConfig

THUMB = 96


def _eval_images(source: Any, wanted: set[str]) -> dict[str, Any]:
    import torch

    found: dict[str, Any] = {}
    for prefix, dataset in source.datasets(None):
        if isinstance(dataset, torch.utils.data.IterableDataset):
            for record in dataset:
                if prefix + record["key"] in wanted:
                    found[prefix + record["key"]] = record["image"]
        else:
            for key in wanted:
                if key.startswith(prefix) and key[len(prefix):].isdigit():
                    found[key] = dataset[int(key[len(prefix):])][0]
    return found


def draw_contact_sheet(
    shard_dir: Path, source: Any, scores: pd.DataFrame, threshold: float | None, cfg: CurateConfig, path: Path
) -> Path | None:
    """Draw up to ``cfg.contact_pairs`` pairs, closest to the threshold first, with their similarity."""
    from PIL import Image, ImageDraw

    from synthimg.data.loader import shard_pipeline

    if scores.empty:
        return None
    if threshold is not None and "desc_sim" in scores:
        column, match, thr = "desc_sim", "desc_match", threshold
    else:  # the nearest hash variant's image; DROP when the match was confirmed by the thumbnails
        column, match, thr = "phash_sim", "phash_nearest", cfg.phash_threshold
    picked = scores.assign(gap=(scores[column] - thr).abs()).nsmallest(cfg.contact_pairs, "gap")
    cands = {r["key"]: r["image"] for r in shard_pipeline(shard_dir, keys=list(picked["key"]))}
    evals = _eval_images(source, set(picked[match]))
    rows = [r for r in picked.itertuples() if r.key in cands and getattr(r, match) in evals]
    if not rows:
        return None
    sheet = Image.new("RGB", (2 * THUMB + 200, len(rows) * (THUMB + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, r in enumerate(rows):
        y = i * (THUMB + 4)
        sheet.paste(cands[r.key].convert("RGB").resize((THUMB, THUMB)), (0, y))
        sheet.paste(evals[getattr(r, match)].convert("RGB").resize((THUMB, THUMB)), (THUMB, y))
        sim = getattr(r, column)
        dropped = bool(r.phash_match) if column == "phash_sim" else sim >= thr
        verdict = "DROP" if dropped else "keep"
        draw.text((2 * THUMB + 6, y + 8), f"{verdict} {column} {sim:.4f}", fill="black")
        draw.text((2 * THUMB + 6, y + 28), f"cand {r.key}", fill="black")
        draw.text((2 * THUMB + 6, y + 48), f"eval {getattr(r, match)}", fill="black")
        draw.text((2 * THUMB + 6, y + 68), f"threshold {thr:.4f}", fill="gray")
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
