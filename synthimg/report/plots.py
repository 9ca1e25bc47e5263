"""Figures (matplotlib, PNG and PDF): accuracy vs training images per arm, and the compute-matched view.

Every figure draws an arm in the same colour (:func:`arm_colours`, the Okabe-Ito palette,
which stays distinct for colour-blind readers), with plain tick labels (50, 120, 1K, 10K).
Each panel's dotted line names its own baseline: the pretrained model's zero-shot accuracy,
or its linear probe; the upper reference arm (``target_train``) is dashed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

BASELINE = "zeroshot_baseline"
# Okabe & Ito (2008): distinguishable with the common colour-vision deficiencies.
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
REFERENCE = "target_train"
_KIND_ORDER = {"retrieved": 0, "synthetic": 1, "mixed": 2}


def arm_colours(arms: list[str], kinds: dict[str, str] | None = None) -> dict[str, str]:
    """One colour per arm, the same in every figure of a report: retrieved arms first, then synthetic, then others."""
    kinds = kinds or {}
    ordered = sorted(dict.fromkeys(a for a in arms if a != BASELINE),
                     key=lambda a: (a == REFERENCE, _KIND_ORDER.get(kinds.get(a, a), 3), a))
    return {arm: OKABE_ITO[i % len(OKABE_ITO)] for i, arm in enumerate(ordered)} | {BASELINE: "#888888"}


def arm_label(arm: str) -> str:
    return f"{arm} (upper reference)" if arm == REFERENCE else arm


def plain_number(value: float, _pos: Any = None) -> str:
    """Tick labels people read: 50, 120, 1K, 12K, 1.5M, 0.02."""
    v = float(value)
    if v >= 1e6:
        return f"{v / 1e6:.3g}M"
    if v >= 1e3:
        return f"{v / 1e3:.3g}K"
    if v >= 1:
        return f"{v:.3g}"
    return f"{v:.2g}"


def _log_axis(ax: Any, values: list[float]) -> None:
    """Log x with ticks at the values themselves (at most 6, spread out), labelled plainly."""
    import matplotlib.ticker as mticker

    ax.set_xscale("log")
    values = sorted({float(v) for v in values if v and v == v and v > 0})
    span = math.log10(values[-1] / values[0]) if values else 0.0
    gap = max(span / 6, 0.08)  # in decades: labels closer than this would overlap
    ticks: list[float] = []
    for v in values:
        if not ticks or math.log10(v / ticks[-1]) >= gap:
            ticks.append(v)
    ax.xaxis.set_major_locator(mticker.FixedLocator(ticks))
    ax.xaxis.set_major_formatter(mticker.FuncFormatter(plain_number))
    ax.xaxis.set_minor_formatter(mticker.NullFormatter())
    if len(ticks) > 3:
        for label in ax.get_xticklabels():
            label.set_rotation(30)
            label.set_horizontalalignment("right")


def _panel(ax: Any, table: pd.DataFrame, x: str, title: str, colours: dict[str, str], baseline_label: str) -> None:
    base = table[table["arm"] == BASELINE]["acc1_mean"]
    rows = table[table["arm"] != BASELINE]
    flat = rows["num_train_images"] == 0  # evaluations without training (external CLIP_benchmark rows): lines
    for r in rows[flat].itertuples():
        ax.axhline(100 * r.acc1_mean, linestyle="-.", color=colours.get(str(r.arm)), label=str(r.arm))
    rows = rows[~flat]
    for arm, g in rows.groupby("arm"):
        g = g.sort_values(x)
        mean, std = 100 * g["acc1_mean"], 100 * g["acc1_std"].fillna(0)
        style = "--" if arm == REFERENCE else "-"
        ax.plot(g[x], mean, style, marker="o", label=arm_label(str(arm)), color=colours.get(str(arm)))
        ax.fill_between(g[x], mean - std, mean + std, alpha=0.2, color=colours.get(str(arm)))
    if len(base):
        ax.axhline(100 * base.iloc[0], linestyle=":", color=colours[BASELINE], label=baseline_label)
    if len(rows):
        _log_axis(ax, list(rows[x]))
    ax.set_title(title)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def scaling_plots(table: pd.DataFrame, cost: pd.DataFrame | None, out: Path,
                  colours: dict[str, str] | None = None) -> list[Path]:
    """One figure per task: ZS and LP panels vs images, and accuracy vs GPU-hours when costs are known."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = colours or arm_colours(list(table["arm"]))
    paths = []
    for task, t in table.groupby("dataset"):
        modes = [m for m in ("zs", "lp") if m in set(t["eval_mode"])]
        panels = len(modes) + (1 if cost is not None and not cost.empty else 0)
        fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), squeeze=False)
        for ax, mode in zip(axes[0], modes):
            name = "zero-shot" if mode == "zs" else "linear probe"
            _panel(ax, t[t["eval_mode"] == mode], "num_train_images", f"{task}: {name}", colours,
                   f"pretrained ({name})")
            ax.set_xlabel("training images")
        if panels > len(modes):
            mode = modes[0]
            name = "zero-shot" if mode == "zs" else "linear probe"
            # the baseline row has no cost: it only draws its dashed line
            c = t[t["eval_mode"] == mode].merge(cost, on=["dataset", "arm", "num_train_images"], how="left")
            _panel(axes[0][-1], c, "gpu_hours_total", f"{task}: compute-matched ({name})", colours,
                   f"pretrained ({name})")
            axes[0][-1].set_xlabel("GPU-hours: data (every arm's) + training")
        paths += save_figure(fig, out / f"scaling_{task}")
    return paths


def save_figure(fig: Any, stem: Path, dpi: int = 150) -> list[Path]:
    """Write ``STEM.png`` and ``STEM.pdf`` and close the figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    paths = []
    for ext in ("png", "pdf"):
        fig.savefig(stem.with_suffix(f".{ext}"), dpi=dpi)
        paths.append(stem.with_suffix(f".{ext}"))
    plt.close(fig)
    return paths


def cost_table(selected: pd.DataFrame, data_costs: dict[str, dict[str, float]] | None = None) -> pd.DataFrame:
    """GPU-hours per task, arm and scale: training (from the results) plus making the data, per kind of work.

    ``data_costs``: arm -> {kind of work: GPU-hours per curated image}. For a synthetic arm
    that is captioning, generation and scoring; for a retrieved arm embedding the collection
    and building the index (amortised over the classes that share it), kNN queries, scoring
    and decontamination. Every arm's data cost counts, so the compute-matched view favours
    neither arm.
    """
    rows = selected[selected["acc1"].notna()] if "acc1" in selected else selected
    train = rows.groupby(["dataset", "arm", "num_train_images"])["gpu_hours"].mean().reset_index()
    per_image = data_costs or {}
    kinds = sorted({k for parts in per_image.values() for k in parts})
    for kind in kinds:
        train[f"data_{kind}_gpu_hours"] = [per_image.get(a, {}).get(kind, 0.0) * n
                                           for a, n in zip(train["arm"], train["num_train_images"])]
    train["data_gpu_hours"] = train[[f"data_{k}_gpu_hours" for k in kinds]].sum(axis=1) if kinds else 0.0
    train["gpu_hours_total"] = train["gpu_hours"] + train["data_gpu_hours"]
    return train
