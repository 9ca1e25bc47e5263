"""Load results.jsonl lines and pick each cell's epoch and LR on validation (never on test)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from synthimg.errors import SynthimgError
from synthimg.evaluation.results import read_results

METRICS = ("acc1", "acc5", "mean_per_class_recall")
CELL = ["dataset", "model", "arm", "finetune", "eval_mode", "num_train_images", "seed"]


def load(paths: list[str | os.PathLike[str]]) -> pd.DataFrame:
    """Every validated result line of the files (or folders holding results.jsonl), one row each."""
    rows = []
    for p in paths:
        path = Path(p)
        files = sorted(path.rglob("results.jsonl")) if path.is_dir() else [path]
        if not files or not all(f.is_file() for f in files):
            raise SynthimgError(f"no results file at {p}")
        for f in files:
            for r in read_results(f):
                row = r.model_dump()
                row.update({m: row["metrics"].get(m) for m in METRICS})
                row.pop("metrics")
                row["source_file"] = str(f)
                rows.append(row)
    if not rows:
        raise SynthimgError("the results files hold no lines")
    df = pd.DataFrame(rows)
    df["wise_alpha"] = df["wise_alpha"].astype(float)
    return df


def select_on_val(df: pd.DataFrame) -> pd.DataFrame:
    """One test row per cell (task, model, arm, finetune, mode, scale, seed): the (lr, epoch) best on val.

    WiSE-FT lines are left out (they are reported apart). Cells without val lines keep their
    last test line and are flagged ``selected_on="last"``; the choice is never made on test.
    """
    plain = df[df["wise_alpha"].isna()]
    out = []
    for _, cell in plain.groupby(CELL, dropna=False):
        val, test = cell[cell["split"] == "val"], cell[cell["split"] == "test"]
        if test.empty:
            continue
        if val.empty:
            best = test.sort_values(["epoch"]).iloc[[-1]].assign(selected_on="last")
        else:
            v = val.sort_values(["acc1", "epoch"], ascending=[False, True]).iloc[0]
            match = test[(test["lr"].fillna(-1) == (v["lr"] if pd.notna(v["lr"]) else -1)) & (test["epoch"] == v["epoch"])]
            if match.empty:
                continue
            best = match.iloc[[0]].assign(selected_on="val", val_acc1=v["acc1"])
        out.append(best)
    if not out:
        raise SynthimgError("no test results to report")
    return pd.concat(out, ignore_index=True)
