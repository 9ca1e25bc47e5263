"""Tables: task x arm x scale, mean +/- std over seeds, the baseline, the delta to it, and the study's question.

The question is answered by **retrieved - synthetic at equal N**: for each scale that a
retrieved arm and a synthetic arm share, the difference of their seed means with a 95%
Welch t-interval (seeds of the two arms are independent runs, so the variances are not
pooled). Significance statements come from whether that interval excludes 0, never from
comparing a change with one std.

Written as Markdown, LaTeX (booktabs, ready to ``\\input``) and CSV (CLIP_benchmark's long
format: one row per result with the metrics as columns). pandas does the pivoting.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

BASELINE = "zeroshot_baseline"


def summary(selected: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and seed count per (task, mode, arm, scale), plus the baseline and the delta to it."""
    metrics = ["acc1", "mean_per_class_recall"]
    keys = ["dataset", "eval_mode", "arm", "model", "finetune", "num_train_images"]
    grouped = selected.groupby(keys, dropna=False)[metrics]
    table = grouped.agg(["mean", "std", "count"])
    table.columns = [f"{m}_{s}" for m, s in table.columns]
    table = table.reset_index()
    table["missing"] = selected.assign(m=selected["acc1"].isna()).groupby(keys, dropna=False)["m"].sum().to_numpy()
    kinds = selected.assign(kind=arm_kind(selected)).groupby(keys, dropna=False)["kind"].first()
    table["arm_kind"] = kinds.to_numpy()
    base = table[table["arm"] == BASELINE][["dataset", "eval_mode", "acc1_mean"]].rename(
        columns={"acc1_mean": "baseline_acc1"})
    table = table.merge(base, on=["dataset", "eval_mode"], how="left")
    table["delta_acc1"] = table["acc1_mean"] - table["baseline_acc1"]
    table.loc[table["arm"] == BASELINE, "delta_acc1"] = float("nan")
    order = {BASELINE: 0, "retrieved": 1, "synthetic": 2, "mixed": 3}
    return table.sort_values(["dataset", "eval_mode", "arm", "num_train_images"],
                             key=lambda s: s.map(order).fillna(9) if s.name == "arm" else s).reset_index(drop=True)


def arm_kind(rows: pd.DataFrame) -> pd.Series:
    """``retrieved`` / ``synthetic`` / ... per row: the data's provenance, else the arm's own name."""
    source = rows["arm_source"] if "arm_source" in rows else pd.Series(None, index=rows.index)
    return source.where(source.notna() & (source != ""), rows["arm"])


def welch_interval(a: list[float], b: list[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """mean(a) - mean(b) with Welch's t-interval: (difference, low, high, degrees of freedom).

    NaN bounds when either side has fewer than two values (no variance to estimate).
    """
    from scipy import stats

    a = [x for x in a if x == x]
    b = [x for x in b if x == x]
    if not a or not b:
        return float("nan"), float("nan"), float("nan"), float("nan")
    diff = sum(a) / len(a) - sum(b) / len(b)
    if len(a) < 2 or len(b) < 2:
        return diff, float("nan"), float("nan"), float("nan")
    va, vb = pd.Series(a).var(ddof=1) / len(a), pd.Series(b).var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:  # no variance over seeds on either side: nothing to infer from
        return diff, float("nan"), float("nan"), float("nan")
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(stats.t.ppf(0.5 + level / 2, dof)) * se
    return diff, diff - half, diff + half, dof


def baseline_interval(values: list[float], baseline: float, level: float = 0.95) -> tuple[float, float, float]:
    """mean(values) - baseline with a one-sample t-interval over seeds (the baseline is one fixed model)."""
    from scipy import stats

    values = [v for v in values if v == v]
    if not values:
        return float("nan"), float("nan"), float("nan")
    diff = sum(values) / len(values) - baseline
    if len(values) < 2:
        return diff, float("nan"), float("nan")
    se = pd.Series(values).std(ddof=1) / math.sqrt(len(values))
    half = float(stats.t.ppf(0.5 + level / 2, len(values) - 1)) * se
    return diff, diff - half, diff + half


def arm_differences(selected: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """retrieved - synthetic at equal N: one row per (task, mode, scale, retrieved arm, synthetic arm)."""
    rows = selected[selected["arm"] != BASELINE].assign(kind=lambda d: arm_kind(d))
    out = []
    for (task, mode, _, _, n), g in rows.groupby(["dataset", "eval_mode", "model", "finetune", "num_train_images"]):
        retrieved = sorted(g.loc[g["kind"] == "retrieved", "arm"].unique())
        synthetic = sorted(g.loc[g["kind"] == "synthetic", "arm"].unique())
        for r in retrieved:
            for s in synthetic:
                a = g.loc[g["arm"] == r, "acc1"].tolist()
                b = g.loc[g["arm"] == s, "acc1"].tolist()
                diff, low, high, dof = welch_interval(a, b, level)
                excludes = bool(low > 0 or high < 0) if low == low else None
                out.append({"dataset": task, "eval_mode": mode, "num_train_images": int(n), "retrieved": r,
                            "synthetic": s, "diff_acc1": diff, "ci_low": low, "ci_high": high, "dof": dof,
                            "seeds_retrieved": sum(x == x for x in a), "seeds_synthetic": sum(x == x for x in b),
                            "excludes_zero": excludes})
    cols = ["dataset", "eval_mode", "num_train_images", "retrieved", "synthetic", "diff_acc1", "ci_low", "ci_high",
            "dof", "seeds_retrieved", "seeds_synthetic", "excludes_zero"]
    return pd.DataFrame(out, columns=cols)


def difference_sentence(row: object) -> str:
    """One plain sentence for one comparison, with its interval and what the interval says."""
    r = row
    mode = "zero-shot" if r.eval_mode == "zs" else "linear probe"  # type: ignore[attr-defined]
    head = (f"{r.dataset} {mode}, {int(r.num_train_images):,} images: {r.retrieved} - {r.synthetic} = "  # type: ignore[attr-defined]
            f"{100 * r.diff_acc1:+.1f} points")  # type: ignore[attr-defined]
    if r.excludes_zero is None:  # type: ignore[attr-defined]
        return head + " (no interval: fewer than two seeds on a side, or no variance over seeds)."
    ci = f"95% CI [{100 * r.ci_low:+.1f}, {100 * r.ci_high:+.1f}]"  # type: ignore[attr-defined]
    if r.excludes_zero:  # type: ignore[attr-defined]
        better = r.retrieved if r.diff_acc1 > 0 else r.synthetic  # type: ignore[attr-defined]
        return f"{head}, {ci}: the interval excludes 0, so {better} is better on this run."
    return f"{head}, {ci}: the interval includes 0, so this run cannot tell the two apart."


def _pct(mean: float, std: float, n: float) -> str:
    if pd.isna(mean):
        return "—"
    return f"{100 * mean:.1f}" if pd.isna(std) or n < 2 else f"{100 * mean:.1f} ± {100 * std:.1f}"


def _points(value: float) -> str:
    return "—" if pd.isna(value) else f"{100 * value:+.1f}"


def _delta(r: object, level: float = 0.95) -> str:
    """An arm's change to the baseline in points, with its one-sample t-interval over seeds (``*``: excludes 0)."""
    from scipy import stats

    mode = str(r.eval_mode).upper()  # type: ignore[attr-defined]
    diff, std, n = r.delta_acc1, r.acc1_std, r.acc1_count  # type: ignore[attr-defined]
    if pd.isna(std) or n < 2:
        return f"{mode} {_points(diff)}"
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    star = "*" if diff - half > 0 or diff + half < 0 else ""
    return f"{mode} {_points(diff)} [{_points(diff - half)}, {_points(diff + half)}]{star}"


def arm_table(table: pd.DataFrame, diffs: pd.DataFrame, task: str) -> pd.DataFrame:
    """The report's table for one task: one row per arm and scale, both metrics, both comparisons.

    Columns: arm | images | ZS | LP | Δ vs baseline | retrieved − synthetic. ZS and LP are test
    accuracy mean ± std over seeds; Δ is the change to the pretrained model's own ZS and LP;
    the last column is this retrieved arm minus the synthetic arm at the same N, with its 95%
    interval (``*`` when the interval excludes 0).
    """
    t = table[table["dataset"] == task]
    rows = []
    keys = t[["arm", "num_train_images"]].drop_duplicates()
    order = {BASELINE: 0, "retrieved": 1, "synthetic": 2, "mixed": 3}
    kinds = t.groupby("arm")["arm_kind"].first().to_dict() if "arm_kind" in t else {}
    keys = keys.assign(o=keys["arm"].map(lambda a: (order.get(a, order.get(kinds.get(a, ""), 4)) if a != "target_train"
                                                     else 9, a)),
                       n=keys.apply(lambda r: -1 if r["arm"] == BASELINE else r["num_train_images"], axis=1))
    keys = keys.sort_values(["n", "o"])  # the baseline, then one block per scale
    for arm, n in keys[["arm", "num_train_images"]].itertuples(index=False):
        cells = {}
        for mode in ("zs", "lp"):
            r = t[(t["arm"] == arm) & (t["num_train_images"] == n) & (t["eval_mode"] == mode)]
            cells[mode] = r.iloc[0] if len(r) else None
        value = {m: _pct(r.acc1_mean, r.acc1_std, r.acc1_count) if r is not None else "—" for m, r in cells.items()}
        delta = "\n".join(_delta(r) for r in cells.values() if r is not None and not pd.isna(r.delta_acc1)) or "—"
        versus = []
        for mode in ("zs", "lp"):
            d = diffs[(diffs["dataset"] == task) & (diffs["eval_mode"] == mode) & (diffs["retrieved"] == arm)
                      & (diffs["num_train_images"] == n)]
            for r in d.itertuples():
                star = "*" if r.excludes_zero else ""
                ci = "" if r.excludes_zero is None else f" [{100 * r.ci_low:+.1f}, {100 * r.ci_high:+.1f}]"
                who = f" vs {r.synthetic}" if len(d) > 1 else ""
                versus.append(f"{mode.upper()} {100 * r.diff_acc1:+.1f}{ci}{star}{who}")
        label = "pretrained (no fine-tuning)" if arm == BASELINE else (
            f"{arm} (upper reference)" if arm == "target_train" else arm)
        rows.append({"arm": label, "images": "—" if arm == BASELINE else f"{int(n):,}", "ZS": value["zs"],
                     "LP": value["lp"], "Δ vs baseline": delta, "retrieved − synthetic": "\n".join(versus) or "—"})
    return pd.DataFrame(rows, columns=["arm", "images", "ZS", "LP", "Δ vs baseline", "retrieved − synthetic"])


def differences_markdown(diffs: pd.DataFrame) -> str:
    rows = ["| task | mode | images | retrieved | synthetic | retrieved − synthetic (points) | 95% CI | excludes 0 |",
            "|---|---|---:|---|---|---:|---|---|"]
    for r in diffs.itertuples():
        ci = "—" if r.excludes_zero is None else f"[{100 * r.ci_low:+.1f}, {100 * r.ci_high:+.1f}]"
        ex = "—" if r.excludes_zero is None else ("yes" if r.excludes_zero else "no")
        rows.append(f"| {r.dataset} | {r.eval_mode} | {int(r.num_train_images):,} | {r.retrieved} | {r.synthetic} | "
                    f"{100 * r.diff_acc1:+.1f} | {ci} | {ex} |")
    return "\n".join(rows)


def write_tables(table: pd.DataFrame, selected: pd.DataFrame, out: Path, diffs: pd.DataFrame | None = None) -> list[Path]:
    """``results.md``, ``results.tex``, ``summary.csv``, ``results_long.csv`` and ``differences.csv``."""
    out.mkdir(parents=True, exist_ok=True)
    diffs = arm_differences(selected) if diffs is None else diffs
    md = ["# Results (test accuracy; one LR per cell by the mean val accuracy over seeds, each seed at its val-best "
          "epoch; mean ± std over seeds)", ""]
    if len(diffs):
        md += ["## Retrieved − synthetic at equal N (95% Welch interval over seeds)", "", differences_markdown(diffs), ""]
    tex = []
    for task in sorted(set(table["dataset"])):
        t = arm_table(table, diffs, task)
        md += [f"## {task} (test acc1, %)", "", markdown(t.assign(**{c: t[c].str.replace("\n", "<br>") for c in t})), ""]
        cells = t.assign(**{c: t[c].str.replace("\n", "; ") for c in t})
        caption = latex_escape(f"{task}: test acc1 (%), mean ± std over seeds; Δ and retrieved − synthetic in points "
                               "with 95% intervals (* excludes 0)")
        tex.append(cells.to_latex(index=False, escape=True, caption=caption, label=f"tab:{task}",
                                  column_format="ll" + "r" * (len(t.columns) - 2)))
    paths = [out / "results.md", out / "results.tex", out / "summary.csv", out / "results_long.csv",
             out / "differences.csv"]
    paths[0].write_text("\n".join(md))
    paths[1].write_text("% requires \\usepackage{booktabs}\n" + latex_symbols("\n".join(tex)))
    table.to_csv(paths[2], index=False)
    selected.to_csv(paths[3], index=False)
    diffs.to_csv(paths[4], index=False)
    return paths


def markdown(df: pd.DataFrame) -> str:
    """A GitHub table; a named index becomes the first column, a default RangeIndex is left out."""
    if df.index.name is not None or not isinstance(df.index, pd.RangeIndex):
        df = df.reset_index()
    header = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "---|" * len(df.columns)
    rows = ["| " + " | ".join(str(v) for v in r) + " |" for r in df.values]
    return "\n".join([header, rule, *rows])


def latex_escape(text: str) -> str:
    """Text for a LaTeX caption (pandas escapes cells, not captions)."""
    table = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
             "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    return re.sub(r"[\\&%$#_{}~^]", lambda m: table[m.group()], text)


def latex_symbols(tex: str) -> str:
    """±, Δ, − and — as plain LaTeX, so the tables compile with pdflatex as well as with XeLaTeX."""
    for char, repl in (("±", r"$\pm$"), ("Δ", r"$\Delta$"), ("−", "$-$"), ("—", "---")):
        tex = tex.replace(char, repl)
    return tex
