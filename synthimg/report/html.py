"""A self-contained ``report.html``: every table and plot embedded, no server, opens in any browser."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd


def write_html(out: Path, table: pd.DataFrame, wide_tables: dict[str, pd.DataFrame], cost: pd.DataFrame,
               images: list[Path], notes: list[str]) -> Path:
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
            data = base64.b64encode(img.read_bytes()).decode()
            parts.append(f"<h3>{html.escape(img.stem)}</h3><img alt='{html.escape(img.stem)}' "
                         f"src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    path = out / "report.html"
    path.write_text("\n".join(parts))
    return path
