"""A self-contained ``report.html`` that leads with the answer: every table and figure embedded, no server.

Order: the question and its answer on this run (retrieved − synthetic at equal N, with 95%
intervals), how to read the figures, the results tables, the figures, why the arms differ
(distances, galleries), notes, and the provenance (config hashes, versions, cost). It opens
offline in any browser and prints to PDF (figures and tables never split across pages).
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import pandas as pd

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
     padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em} h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.question{font-size:1.1em;color:#444}
#answer{background:#f3f7fb;border-left:4px solid #0072B2;padding:.6em 1em;margin:1em 0}
#answer .headline{font-size:1.15em;font-weight:600;margin:.2em 0 .5em}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right;vertical-align:top}
th{background:#f2f2f2} td:first-child,th:first-child{text-align:left}
figure{margin:1em 0} figcaption{color:#555;font-size:.9em}
img{max-width:100%} .gallery td{text-align:center} .gallery img{margin:1px}
.small{color:#666;font-size:.85em}
@media print{body{max-width:none;margin:0} table,figure,.gallery tr{page-break-inside:avoid}
             #answer{-webkit-print-color-adjust:exact;print-color-adjust:exact}}
"""


def _img(path: Path, alt: str, width: int | None = None) -> str:
    kind = "png" if path.suffix == ".png" else "jpeg"
    data = base64.b64encode(path.read_bytes()).decode()
    size = f" width='{width}'" if width else ""
    return f"<img alt='{html.escape(alt)}' title='{html.escape(alt)}'{size} src='data:image/{kind};base64,{data}'>"


def _table(df: pd.DataFrame) -> str:
    """A plain HTML table: one header row, no index column, no pandas artefacts."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v)).replace(chr(10), '<br>')}</td>" for v in row) + "</tr>"
                   for row in df.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _chunks(df: pd.DataFrame, size: int = 10) -> list[pd.DataFrame]:
    """Blocks of at most ``size`` rows: one per number of images, each led by the baseline rows."""
    if "images" not in df or df.empty:
        return [df.iloc[i: i + size] for i in range(0, len(df), size)] or [df]
    base = df[df["images"] == "—"]
    blocks = []
    for _, group in df[df["images"] != "—"].groupby("images", sort=False):
        room = max(1, size - len(base))
        blocks += [pd.concat([base, group.iloc[i: i + room]]) for i in range(0, len(group), room)]
    return blocks or [base]


def _cost_view(cost: pd.DataFrame) -> pd.DataFrame:
    """The cost table with short headers (the heading gives the unit), so it fits the page's width."""
    def short(col: str) -> str:
        names = {"num_train_images": "images", "gpu_hours": "training", "data_gpu_hours": "data, all",
                 "gpu_hours_total": "total"}
        if col in names:
            return names[col]
        return col.removeprefix("data_").removesuffix("_gpu_hours") if col.startswith("data_") else col
    return cost.rename(columns=short)


def write_html(out: Path, *, question: str, headline: str, answer_table: pd.DataFrame,
               tables: dict[str, pd.DataFrame], figures: list[tuple[Path, str]], how_to_read: list[str],
               notes: list[str], provenance: dict[str, Any], cost: pd.DataFrame,
               distances: pd.DataFrame | None = None, galleries: list[dict[str, Any]] | None = None) -> Path:
    """Write ``OUT/report.html``; ``figures`` are (PNG, caption) pairs."""
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'>",
             f"<title>synthimg report</title><style>{CSS}</style></head><body>",
             "<h1>Synthetic or retrieved training images?</h1>",
             f"<p class='question'>{html.escape(question)}</p>",
             f"<div id='answer'><p class='headline'>{html.escape(headline)}</p>"]
    if len(answer_table):  # each comparison's difference, interval and verdict (the console also has them as sentences)
        parts.append(_table(answer_table))
    parts.append("</div>")
    if how_to_read:
        parts += ["<h2>How to read this</h2>", "<p>" + " ".join(html.escape(s) for s in how_to_read) + "</p>"]
    parts.append("<h2>Results</h2>")
    for title, df in tables.items():
        parts.append(f"<h3>{html.escape(title)}</h3>")
        parts += [_table(chunk) for chunk in _chunks(df)]
    parts.append("<p class='small'>Test accuracy (%), mean ± std over seeds, at the learning rate with the best mean "
                 "validation accuracy and each seed's best validation epoch. Δ: points against the pretrained model. "
                 "retrieved − synthetic: points at the same number of images, 95% Welch interval; * the interval "
                 "excludes 0.</p>")
    if figures:
        parts.append("<h2>Figures</h2>")
        for path, caption in figures:
            parts.append(f"<figure>{_img(path, caption)}<figcaption>{html.escape(caption)}</figcaption></figure>")
    if distances is not None and not distances.empty:
        parts += ["<h2>Distance of the training images to the test set</h2>",
                  "<p>FID and KID between each subset and the task's test images, in the CLIP feature space "
                  "named in the table (lower: closer to the test distribution).</p>", _table(distances.round(4))]
    if galleries:
        parts.append(_galleries(galleries))
    if notes:
        parts += ["<h2>Notes</h2>", "<ul>", *[f"<li>{html.escape(n)}</li>" for n in notes], "</ul>"]
    parts.append("<h2>Provenance</h2>")
    rows = pd.DataFrame([{"what": k, "value": v} for k, v in provenance.items()])
    parts.append(_table(rows))
    if not cost.empty:
        parts += ["<h3>Cost (GPU-hours: training, and making the data)</h3>", _table(_cost_view(cost.round(4)))]
    parts.append("</body></html>")
    path = out / "report.html"
    path.write_text("\n".join(parts))
    return path


def _galleries(rows: list[dict[str, Any]]) -> str:
    """One table per task: a row per class; columns test | each arm, in the same order on every row."""
    parts = ["<h2>Galleries: a test image beside each arm's training images</h2>"]
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        arms = sorted({a for r in mine for a in r["arms"]})
        head = "<tr><th>class</th><th>test</th>" + "".join(f"<th>{html.escape(a)}</th>" for a in arms) + "</tr>"
        body = []
        for r in mine:
            cells = [f"<td>{html.escape(r['class_name'])}</td>",
                     f"<td>{_img(r['test'], 'test', 72)}</td>" if r["test"] else "<td>—</td>"]
            for arm in arms:
                thumbs = "".join(_img(p, arm, 72) for p in r["arms"].get(arm, []))
                cells.append(f"<td>{thumbs or '—'}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        parts.append(f"<h3>{html.escape(task)}</h3><table class='gallery'><thead>{head}</thead>"
                     f"<tbody>{''.join(body)}</tbody></table>")
    return "\n".join(parts)
