"""Scaling plots (matplotlib, PNG and PDF): accuracy vs training images (log x), one line per arm,
shaded std, the zero-shot baseline dashed; ZS and LP panels; and a compute-matched view
(accuracy vs GPU-hours, since synthetic data costs generation time)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

COLOURS = {"retrieved": "tab:blue", "synthetic": "tab:orange", "mixed": "tab:green", "sdedit": "tab:purple"}


def _panel(ax: object, table: pd.DataFrame, x: str, title: str) -> None:
    base = table[table["arm"] == "zeroshot_baseline"]["acc1_mean"]
    for arm, g in table[table["arm"] != "zeroshot_baseline"].groupby("arm"):
        g = g.sort_values(x)
        mean, std = 100 * g["acc1_mean"], 100 * g["acc1_std"].fillna(0)
        ax.plot(g[x], mean, marker="o", label=arm, color=COLOURS.get(arm))  # type: ignore[attr-defined]
        ax.fill_between(g[x], mean - std, mean + std, alpha=0.2, color=COLOURS.get(arm))  # type: ignore[attr-defined]
    if len(base):
        ax.axhline(100 * base.iloc[0], linestyle="--", color="gray", label="zero-shot baseline")  # type: ignore[attr-defined]
    ax.set_xscale("log")  # type: ignore[attr-defined]
    ax.set_title(title)  # type: ignore[attr-defined]
    ax.set_ylabel("test acc1 (%)")  # type: ignore[attr-defined]
    ax.grid(alpha=0.3)  # type: ignore[attr-defined]
    ax.legend(fontsize=8)  # type: ignore[attr-defined]


def scaling_plots(table: pd.DataFrame, cost: pd.DataFrame | None, out: Path) -> list[Path]:
    """One figure per task: ZS and LP panels vs images, and accuracy vs GPU-hours when costs are known."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for task, t in table.groupby("dataset"):
        modes = [m for m in ("zs", "lp") if m in set(t["eval_mode"])]
        panels = len(modes) + (1 if cost is not None and not cost.empty else 0)
        fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), squeeze=False)
        for ax, mode in zip(axes[0], modes):
            _panel(ax, t[t["eval_mode"] == mode], "num_train_images",
                   f"{task}: {'zero-shot' if mode == 'zs' else 'linear probe'}")
            ax.set_xlabel("training images")
        if panels > len(modes):
            c = t[t["eval_mode"] == modes[0]].merge(cost, on=["dataset", "arm", "num_train_images"], how="inner")
            _panel(axes[0][-1], c, "gpu_hours_total", f"{task}: compute-matched ({modes[0]})")
            axes[0][-1].set_xlabel("GPU-hours (data + training)")
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
