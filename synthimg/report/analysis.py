"""The report's "why the arms differ" section, read from ``analysis.json`` files (``synthimg analyze``).

A distance table (FID/KID of each arm's subsets to the test set), a CLIP-score histogram
plot per task and per-class galleries (a test image beside each arm's training images),
both as contact-sheet PNGs and as rows of ``report.html``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from synthimg.report.plots import save_figure


def load_analyses(folders: list[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """Each folder's ``analysis.json`` with ``_dir`` set to the folder (thumbnail paths are relative to it)."""
    infos = []
    for folder in folders:
        path = Path(folder) / "analysis.json"
        if path.is_file():
            info = json.loads(path.read_text())
            info["_dir"] = str(Path(folder))
            infos.append(info)
    return infos


def distance_table(infos: list[dict[str, Any]]) -> pd.DataFrame:
    rows = [{"dataset": i["task"], "arm": i["arm"], "num_train_images": s["num_train_images"], "fid": s["fid"],
             "kid_mean": s["kid_mean"], "kid_std": s["kid_std"], "feature_model": i["feature_model"]}
            for i in infos for s in i["subsets"]]
    cols = ["dataset", "arm", "num_train_images", "fid", "kid_mean", "kid_std", "feature_model"]
    return pd.DataFrame(rows, columns=cols).sort_values(["dataset", "arm", "num_train_images"]).reset_index(drop=True)


def histogram_plots(infos: list[dict[str, Any]], out: Path, colours: dict[str, str] | None = None) -> list[Path]:
    """One figure per task: each arm's CLIP-score histogram (normalised), PNG and PDF, in the report's arm colours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for task in sorted({i["task"] for i in infos}):
        arms = [i for i in infos if i["task"] == task and i.get("clip_score_hist")]
        if not arms:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for info in arms:
            h = info["clip_score_hist"]
            total = max(1, sum(h["counts"]))
            ax.stairs([c / total for c in h["counts"]], h["edges"], label=f"{info['arm']} (mean {h['mean']:.3f})",
                      fill=False, linewidth=1.5, color=(colours or {}).get(info["arm"]))
        ax.set_xlabel("CLIP score against the class's templates")
        ax.set_ylabel("fraction of images")
        ax.set_title(f"{task}: CLIP scores of the training images")
        ax.legend(fontsize=8)
        paths += save_figure(fig, out / f"clip_scores_{task}", dpi=120)
    return paths


def gallery_rows(infos: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (task, class): the test thumbnail and each arm's thumbnails, as absolute paths."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for info in infos:
        base = Path(info["_dir"])
        for cid, names in info["gallery"]["classes"].items():
            row = rows.setdefault((info["task"], cid), {"task": info["task"], "class_id": int(cid), "test": None,
                                                        "class_name": info["classnames"][int(cid)], "arms": {}})
            test = info["gallery"]["test"].get(cid)
            if test and row["test"] is None:
                row["test"] = base / test
            row["arms"][info["arm"]] = [base / n for n in names]
    return [rows[k] for k in sorted(rows, key=lambda k: (k[0], int(k[1])))]


def contact_sheets(rows: list[dict[str, Any]], out: Path, thumb: int = 72) -> list[Path]:
    """One PNG per class: its name on top, then columns test | each arm (labelled), images down each column."""
    from PIL import Image, ImageDraw

    paths = []
    (out / "galleries").mkdir(parents=True, exist_ok=True)
    title_h, head_h, pad = 20, 16, 6
    for row in rows:
        arms = sorted(row["arms"])
        columns = [("test", [row["test"]] if row["test"] is not None else [])] + [(a, row["arms"][a]) for a in arms]
        col_w = thumb + pad
        depth = max((len(paths_) for _, paths_ in columns), default=1) or 1
        sheet = Image.new("RGB", (col_w * len(columns) + pad, title_h + head_h + depth * (thumb + 2) + pad), "white")
        draw = ImageDraw.Draw(sheet)
        draw.text((pad, 4), f"{row['task']}: {row['class_name']}", fill="black")
        for c, (label, images) in enumerate(columns):
            x = pad + c * col_w
            draw.text((x, title_h), label[: thumb // 6], fill="black")
            for j, image in enumerate(images):
                with Image.open(image) as img:
                    sheet.paste(img.convert("RGB").resize((thumb, thumb)), (x, title_h + head_h + j * (thumb + 2)))
        path = out / "galleries" / f"{row['task']}_class{row['class_id']:04d}.png"
        sheet.save(path)
        paths.append(path)
    return paths
