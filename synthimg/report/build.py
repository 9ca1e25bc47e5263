"""``synthimg report``: results.jsonl files -> Markdown, LaTeX, CSV, PNG/PDF plots and report.html."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from synthimg.report.analysis import (
    contact_sheets,
    distance_table,
    gallery_rows,
    histogram_plots,
    load_analyses,
)
from synthimg.report.html import write_html
from synthimg.report.plots import cost_table, scaling_plots
from synthimg.report.results import load, select_on_val
from synthimg.report.tables import markdown, summary, wide, write_tables


def seed_noise_notes(table: Any) -> list[str]:
    """Honest one-liners: each arm's change to the baseline and whether it exceeds the seed std."""
    notes = []
    for r in table[table["delta_acc1"].notna()].itertuples():
        head = (f"{r.dataset} {r.eval_mode} {r.arm} at {int(r.num_train_images):,} images: "
                f"{100 * r.delta_acc1:+.1f} points vs the zero-shot baseline")
        if r.acc1_count > 1 and r.acc1_std == r.acc1_std:
            verdict = "exceeds" if abs(r.delta_acc1) > r.acc1_std else "is within"
            notes.append(f"{head}; the change {verdict} the seed std ({100 * r.acc1_std:.1f})")
        else:
            notes.append(f"{head} (one seed: no std to compare with)")
    return notes


def build_report(paths: list[str | os.PathLike[str]], out: str | os.PathLike[str],
                 data_costs: dict[str, float] | None = None,
                 analyses: list[str | os.PathLike[str]] | None = None,
                 notes: list[str] | None = None) -> dict[str, Any]:
    """Tables, plots, cost and ``report.html``; ``analyses``: folders from ``synthimg analyze``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    selected = select_on_val(load(paths))
    table = summary(selected)
    files = write_tables(table, selected, out)
    cost = cost_table(selected, data_costs)
    cost.to_csv(out / "cost.csv", index=False)
    plots = scaling_plots(table, cost, out)
    wides = {f"{t}, {'zero-shot' if m == 'zs' else 'linear probe'} (test acc1 %)": wide(table, t, m)
             for t, m in table[["dataset", "eval_mode"]].drop_duplicates().itertuples(index=False)}
    notes = list(notes or []) + seed_noise_notes(table)
    infos = load_analyses(list(analyses or []))
    distances = distance_table(infos)
    if not distances.empty:
        distances.to_csv(out / "distances.csv", index=False)
        (out / "distances.md").write_text(markdown(distances.round(4).set_index("dataset")) + "\n")
        plots += histogram_plots(infos, out)
    rows = gallery_rows(infos)
    sheets = contact_sheets(rows, out)
    page = write_html(out, table, wides, cost, plots, notes, distances=distances, galleries=rows)
    return {"tables": [str(p) for p in files], "plots": [str(p) for p in plots], "html": str(page), "notes": notes,
            "cells": int(len(selected)), "galleries": [str(p) for p in sheets]}
