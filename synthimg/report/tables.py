"""Tables: task x arm x scale, mean +/- std over seeds, the zero-shot baseline and the delta to it.

Written as Markdown, LaTeX (booktabs, ready to ``\\input``) and CSV (CLIP_benchmark's long
format: one row per result with the metrics as columns). pandas does the pivoting.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

# Tasks whose reported metric includes mean per-class recall (the paper: Aircraft, Flowers, Pets)
PER_CLASS_TASKS = {"fgvc_aircraft", "flowers102", "oxford_pets"}


def summary(selected: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and seed count per (task, mode, arm, scale), plus the baseline and the delta to it."""
    metrics = ["acc1", "mean_per_class_recall"]
    grouped = selected.groupby(["dataset", "eval_mode", "arm", "num_train_images"], dropna=False)[metrics]
    table = grouped.agg(["mean", "std", "count"])
    table.columns = [f"{m}_{s}" for m, s in table.columns]
    table = table.reset_index()
    base = table[table["arm"] == "zeroshot_baseline"][["dataset", "eval_mode", "acc1_mean"]].rename(
        columns={"acc1_mean": "baseline_acc1"})
    table = table.merge(base, on=["dataset", "eval_mode"], how="left")
    table["delta_acc1"] = table["acc1_mean"] - table["baseline_acc1"]
    table.loc[table["arm"] == "zeroshot_baseline", "delta_acc1"] = float("nan")
    order = {"zeroshot_baseline": 0, "retrieved": 1, "synthetic": 2, "mixed": 3}
    return table.sort_values(["dataset", "eval_mode", "arm", "num_train_images"],
                             key=lambda s: s.map(order).fillna(9) if s.name == "arm" else s).reset_index(drop=True)


def _fmt(mean: float, std: float, n: float, pct: bool = True) -> str:
    if pd.isna(mean):
        return "—"
    scale = 100.0 if pct else 1.0
    return f"{mean * scale:.1f}" if pd.isna(std) or n < 2 else f"{mean * scale:.1f} ± {std * scale:.1f}"


def wide(table: pd.DataFrame, task: str, mode: str) -> pd.DataFrame:
    """One task and mode: rows are arms, columns are scales; missing cells show as '—'."""
    t = table[(table["dataset"] == task) & (table["eval_mode"] == mode)].copy()
    t["cell"] = [_fmt(m, s, n) for m, s, n in zip(t["acc1_mean"], t["acc1_std"], t["acc1_count"])]
    t["scale"] = t["num_train_images"].map(lambda n: "0" if n == 0 else f"{int(n):,}")
    pivot = t.pivot_table(index="arm", columns="scale", values="cell", aggfunc="first").fillna("—")
    cols = sorted(pivot.columns, key=lambda c: int(c.replace(",", "")))
    pivot = pivot[cols]
    base = t[t["arm"] == "zeroshot_baseline"]["acc1_mean"]
    if len(base):
        pivot.insert(0, "baseline", _fmt(base.iloc[0], float("nan"), 1))
    return pivot


def write_tables(table: pd.DataFrame, selected: pd.DataFrame, out: Path) -> list[Path]:
    """``results.md``, ``results.tex``, ``summary.csv`` and ``results_long.csv``."""
    out.mkdir(parents=True, exist_ok=True)
    md, tex = ["# Results (test accuracy at the epoch and LR chosen on val, mean ± std over seeds)", ""], []
    for (task, mode), _ in table.groupby(["dataset", "eval_mode"]):
        w = wide(table, task, mode)
        md += [f"## {task}, {'zero-shot' if mode == 'zs' else 'linear probe'} (acc1, %)", "", markdown(w), ""]
        deltas = table[(table.dataset == task) & (table.eval_mode == mode) & table.delta_acc1.notna()]
        if len(deltas):
            md += ["Delta to the zero-shot baseline (points): " + ", ".join(
                f"{r.arm} {int(r.num_train_images):,}: {100 * r.delta_acc1:+.1f}" for r in deltas.itertuples()), ""]
        tex.append(w.to_latex(caption=f"{task}, {mode}: test acc1 (\\%)", label=f"tab:{task}-{mode}",
                              escape=True, column_format="l" + "r" * len(w.columns)))
    paths = [out / "results.md", out / "results.tex", out / "summary.csv", out / "results_long.csv"]
    paths[0].write_text("\n".join(md))
    paths[1].write_text("% requires \\usepackage{booktabs}\n" + "\n".join(tex))
    table.to_csv(paths[2], index=False)
    selected.to_csv(paths[3], index=False)
    return paths


def markdown(df: pd.DataFrame) -> str:
    header = "| " + " | ".join([df.index.name or ""] + list(map(str, df.columns))) + " |"
    rule = "|" + "---|" * (len(df.columns) + 1)
    rows = ["| " + " | ".join([str(i)] + [str(v) for v in r]) + " |" for i, r in zip(df.index, df.values)]
    return "\n".join([header, rule, *rows])
