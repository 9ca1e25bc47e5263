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
from synthimg.report.tables import (
    arm_differences,
    baseline_interval,
    difference_sentence,
    markdown,
    summary,
    wide,
    write_tables,
)


def baseline_notes(selected: Any, table: Any) -> list[str]:
    """One line per arm and scale: its change to the pretrained baseline with a 95% interval over seeds."""
    notes = []
    for r in table[table["delta_acc1"].notna()].itertuples():
        values = selected[(selected["dataset"] == r.dataset) & (selected["eval_mode"] == r.eval_mode)
                          & (selected["arm"] == r.arm) & (selected["num_train_images"] == r.num_train_images)]["acc1"]
        diff, low, high = baseline_interval(values.tolist(), r.baseline_acc1)
        mode = "zero-shot" if r.eval_mode == "zs" else "linear probe"
        head = f"{r.dataset} {mode} {r.arm} at {int(r.num_train_images):,} images: {100 * diff:+.1f} points vs the pretrained baseline"
        if low != low:
            notes.append(f"{head} (one seed: no interval).")
        else:
            verdict = "excludes 0" if low > 0 or high < 0 else "includes 0"
            notes.append(f"{head}, 95% CI [{100 * low:+.1f}, {100 * high:+.1f}], which {verdict}.")
    return notes


def build_report(paths: list[str | os.PathLike[str]], out: str | os.PathLike[str],
                 data_costs: dict[str, dict[str, float]] | None = None,
                 analyses: list[str | os.PathLike[str]] | None = None,
                 notes: list[str] | None = None) -> dict[str, Any]:
    """Tables, plots, cost and ``report.html``; ``analyses``: folders from ``synthimg analyze``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    selected = select_on_val(load(paths))
    table = summary(selected)
    diffs = arm_differences(selected)
    files = write_tables(table, selected, out, diffs)
    cost = cost_table(selected, data_costs)
    cost.to_csv(out / "cost.csv", index=False)
    plots = scaling_plots(table, cost, out)
    wides = {f"{t}, {'zero-shot' if m == 'zs' else 'linear probe'} (test acc1 %)": wide(table, t, m)
             for t, m in table[["dataset", "eval_mode"]].drop_duplicates().itertuples(index=False)}
    missing = [f"missing: {m['dataset']} {m['eval_mode']} {m['arm']} at {m['num_train_images']:,} images, seed "
               f"{m['seed']}: the point selected on val (lr {m['lr']:g}, epoch {m['epoch']}) has no test line."
               for m in selected.attrs.get("missing", [])]
    notes = ([difference_sentence(r) for r in diffs.itertuples()] + missing + list(notes or [])
             + baseline_notes(selected, table))
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
            "cells": int(len(selected)), "galleries": [str(p) for p in sheets],
            "differences": diffs.to_dict(orient="records"), "missing": selected.attrs.get("missing", [])}
