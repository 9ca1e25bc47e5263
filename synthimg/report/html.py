"""A self-contained ``report.html``: every table and plot embedded, no server, opens in any browser."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import pandas as pd


def _img(path: Path, alt: str, width: int | None = None) -> str:
    kind = "png" if path.suffix == ".png" else "jpeg"
    data = base64.b64encode(path.read_bytes()).decode()
    size = f" width='{width}'" if width else ""
    return f"<img alt='{html.escape(alt)}' title='{html.escape(alt)}'{size} src='data:image/{kind};base64,{data}'>"


def write_html(out: Path, table: pd.DataFrame, wide_tables: dict[str, pd.DataFrame], cost: pd.DataFrame,
               images: list[Path], notes: list[str], distances: pd.DataFrame | None = None,
               galleries: list[dict[str, Any]] | None = None) -> Path:
    """Write ``OUT/report.html`` with every table, plot and gallery thumbnail embedded."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>synthimg report</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
             "margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}</style>",
             "</head><body><h1>Synthetic vs retrieved training images</h1>"]
    parts += [f"<p>{html.escape(n)}</p>" for n in notes]
    for title, w in wide_tables.items():
        parts += [f"<h2>{html.escape(title)}</h2>", w.to_html(escape=True)]
    if not cost.empty:
        parts += ["<h2>Cost (GPU-hours)</h2>", cost.round(4).to_html(index=False)]
    for img in images:
        if img.suffix == ".png":
            parts.append(f"<h3>{html.escape(img.stem)}</h3>{_img(img, img.stem)}")
    if distances is not None and not distances.empty:
        parts += ["<h2>Distance of the training images to the test set</h2>",
                  "<p>FID and KID between each subset and the task's test images, in the CLIP feature space "
                  "named in the table (lower: closer to the test distribution).</p>",
                  distances.round(4).to_html(index=False)]
    if galleries:
        parts.append("<h2>Galleries: a test image beside each arm's training images</h2>")
        for row in galleries:
            cells = [f"<td>{_img(row['test'], 'test', 96)}<br>test</td>" if row["test"] else "<td>-</td>"]
            for arm, paths in sorted(row["arms"].items()):
                thumbs = "".join(_img(p, arm, 96) for p in paths)
                cells.append(f"<td style='text-align:left'>{thumbs}<br>{html.escape(arm)}</td>")
            parts.append(f"<h3>{html.escape(row['task'])}: {html.escape(row['class_name'])}</h3>"
                         f"<table><tr>{''.join(cells)}</tr></table>")
    parts.append("</body></html>")
    path = out / "report.html"
    path.write_text("\n".join(parts))
    return path
