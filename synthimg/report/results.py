"""Load results.jsonl lines and select, on validation only, one LR per cell and each seed's epoch.

Selection is the paper's and fair across seeds: within a cell (task, model, arm, finetune,
mode, scale), each seed's epoch is its best on val at a given LR; the cell's LR is the one
whose mean of those val accuracies over seeds is highest; the cell reports each seed's test
line at that LR and epoch. Choosing the LR per seed would let seed noise pick the best.
A selected point without a test line is reported as missing, with a warning, never dropped.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from synthimg.errors import SynthimgError
from synthimg.report.external import read_any

log = logging.getLogger("synthimg.report")

METRICS = ("acc1", "acc5", "mean_per_class_recall")
CELL = ["dataset", "model", "arm", "finetune", "eval_mode", "num_train_images"]


def load(paths: list[str | os.PathLike[str]], baselines: list[str | os.PathLike[str]] | None = None) -> pd.DataFrame:
    """Every result of the files (or folders holding results.jsonl), one row each.

    Our lines are validated; CLIP_benchmark files become external rows (see ``external``),
    and ``baselines`` are CLIP_benchmark files that stand for the pretrained baseline.
    """
    rows = []
    for p, is_baseline in [(p, False) for p in paths] + [(p, True) for p in baselines or []]:
        path = Path(p)
        files = sorted(path.rglob("results.jsonl")) if path.is_dir() else [path]
        if not files or not all(f.is_file() for f in files):
            raise SynthimgError(f"no results file at {p}")
        for f in files:
            for r in read_any(f, baseline=is_baseline):
                row = r.model_dump(exclude={"classnames", "templates"})
                row.update({m: row["metrics"].get(m) for m in METRICS})
                row.pop("metrics")
                row["source_file"] = str(f)
                rows.append(row)
    if not rows:
        raise SynthimgError("the results files hold no lines")
    df = pd.DataFrame(rows)
    base = df[df["arm"] == "zeroshot_baseline"]
    clash = base.groupby(["dataset", "eval_mode"])["arm_source"].agg(lambda s: s.eq("external").any() and s.ne("external").any())
    if clash.any():
        dataset, mode = clash[clash].index[0]
        raise SynthimgError(f"{dataset} {mode}: both the results and a --baseline file give the pretrained baseline; "
                            "pass only one")
    df["wise_alpha"] = df["wise_alpha"].astype(float)
    return df


def _lr_key(value: object) -> float:
    return -1.0 if value is None or pd.isna(value) else float(value)  # type: ignore[arg-type]


def _best_epochs(val: pd.DataFrame) -> pd.DataFrame:
    """Per (lr, seed): the val line of the best epoch (ties: the earlier epoch)."""
    ranked = val.sort_values(["acc1", "epoch"], ascending=[False, True])
    return ranked.groupby(["lr_key", "seed"], sort=True).head(1)


def select_on_val(df: pd.DataFrame) -> pd.DataFrame:
    """One test row per (cell, seed) at the cell's LR (best mean val over seeds) and the seed's best val epoch.

    WiSE-FT lines are left out (they are reported apart). A cell without val lines keeps each
    seed's last test line (``selected_on="last"``); with several LRs and no val there is
    nothing to choose by, so the smallest LR is taken and a warning says so. A seed whose
    selected (LR, epoch) has no test line is a ``missing`` row (acc1 NaN) with a warning.
    The frame's ``attrs["missing"]`` lists them.
    """
    plain = df[df["wise_alpha"].isna()].assign(lr_key=lambda d: d["lr"].map(_lr_key))
    out, missing = [], []
    for key, cell in plain.groupby(CELL, dropna=False):
        val, test = cell[cell["split"] == "val"], cell[cell["split"] == "test"]
        if test.empty and val.empty:
            continue
        label = dict(zip(CELL, key))
        if val.empty:
            lrs = sorted(test["lr_key"].unique())
            if len(lrs) > 1:
                log.warning("%s: no val lines to choose among LRs %s; reporting the smallest", _name(label), lrs)
            chosen = test[test["lr_key"] == lrs[0]]
            for seed, rows in chosen.groupby("seed"):
                out.append(rows.sort_values("epoch").iloc[[-1]].assign(selected_on="last", selected_lr=lrs[0]))
            continue
        best = _best_epochs(val)
        seeds = sorted(cell["seed"].unique())
        counts = best.groupby("lr_key")["seed"].nunique()
        if counts.nunique() > 1:
            log.warning("%s: LRs have val lines for different numbers of seeds (%s); each LR's mean is over its own",
                        _name(label), ", ".join(f"lr {k:g}: {v}" for k, v in counts.items()))
        means = best.groupby("lr_key")["acc1"].mean()
        lr = float(means.sort_index().idxmax())  # ties: the smaller LR
        for seed in seeds:  # a seed with no val line at the chosen LR (a crashed run) is missing, not dropped
            if not ((best["lr_key"] == lr) & (best["seed"] == seed)).any():
                missing.append({**label, "seed": int(seed), "lr": lr, "epoch": None})
                log.warning("%s seed %d: no val line at the selected lr %g; reported as missing", _name(label), seed, lr)
                stub = cell[cell["seed"] == seed].iloc[[0]].assign(split="test", lr=lr, epoch=-1,
                                                                   **{m: float("nan") for m in METRICS})
                out.append(stub.assign(selected_on="missing", selected_lr=lr, val_acc1=float("nan"),
                                       val_mean_acc1=means[lr]))
        for row in best[best["lr_key"] == lr].itertuples():
            match = test[(test["lr_key"] == lr) & (test["seed"] == row.seed) & (test["epoch"] == row.epoch)]
            if match.empty:
                missing.append({**label, "seed": int(row.seed), "lr": lr, "epoch": int(row.epoch)})
                log.warning("%s seed %d: the selected point (lr %g, epoch %d) has no test line; reported as missing",
                            _name(label), row.seed, lr, row.epoch)
                stub = val.loc[[row.Index]].assign(split="test", **{m: float("nan") for m in METRICS})
                out.append(stub.assign(selected_on="missing", selected_lr=lr, val_acc1=row.acc1, val_mean_acc1=means[lr]))
                continue
            out.append(match.iloc[[0]].assign(selected_on="val", selected_lr=lr, val_acc1=row.acc1,
                                              val_mean_acc1=means[lr]))
    if not out:
        raise SynthimgError("no test results to report")
    selected = pd.concat(out, ignore_index=True).drop(columns=["lr_key"], errors="ignore")
    selected.attrs["missing"] = missing
    return selected


def _name(label: dict[str, object]) -> str:
    return f"{label['dataset']} {label['eval_mode']} {label['arm']} at {label['num_train_images']} images"
