"""The dry run's cost estimate: images to make, GPU-hours per step kind, from recorded throughputs.

Throughputs measured by earlier steps of this study (``generate_stats.json``,
``train_stats.json``) take precedence over the study's ``estimates`` section, whose
defaults cite their source.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from synthimg.study.plan import Step
from synthimg.study.spec import Estimates


def recorded_rates(root: Path) -> dict[str, tuple[float, str]]:
    """Per-GPU rates measured by finished steps of this study: kind -> (rate, where)."""
    rates: dict[str, tuple[float, str]] = {}
    for path in sorted(Path(root).glob("arms/*/images-*/generate_stats.json")):
        stats = json.loads(path.read_text())
        gpus = max(1, stats.get("gpu", {}).get("count") or 1)
        if stats.get("images_per_sec"):
            rates["generate"] = (stats["images_per_sec"] / gpus, str(path))
    for path in sorted(Path(root).glob("cells/*/train_stats.json")):
        stats = json.loads(path.read_text())
        rate = stats.get("steady_samples_per_second") or stats.get("samples_per_second")
        if rate and str(stats.get("device", "")).startswith("cuda"):
            rates["train"] = (rate / max(1, stats.get("world_size", 1)), str(path))
    return rates


def estimate(steps: list[Step], todo: set[str], est: Estimates, root: Path) -> dict[str, Any]:
    """Work and GPU-hours for the steps in ``todo`` (and totals for the whole plan)."""
    recorded = recorded_rates(root)
    rates = {
        "generate": recorded.get("generate", (est.generate_images_per_gpu_s, "estimates.generate_images_per_gpu_s")),
        "train": recorded.get("train", (est.train_samples_per_gpu_s, "estimates.train_samples_per_gpu_s")),
        "inference": (est.inference_images_per_gpu_s, "estimates.inference_images_per_gpu_s"),
        "llm_new_tokens": (est.llm_new_tokens_per_gpu_s, "estimates.llm_new_tokens_per_gpu_s"),
        "llm_prompt_tokens": (est.llm_prompt_tokens_per_gpu_s, "estimates.llm_prompt_tokens_per_gpu_s"),
    }
    per_kind: dict[str, dict[str, float]] = {}
    totals = {"images_to_generate": 0.0, "images_to_download": 0.0, "gpu_hours": 0.0, "download_hours": 0.0,
              "gpu_hours_all": 0.0, "llm_prompt_tokens": 0.0, "llm_new_tokens": 0.0}
    for step in steps:
        hours = sum(step.work.get(k, 0.0) / rates[k][0] / 3600 for k in rates)
        totals["gpu_hours_all"] += hours
        if step.id not in todo:
            continue
        row = per_kind.setdefault(step.kind, {"steps": 0, "gpu_hours": 0.0})
        row["steps"] += 1
        row["gpu_hours"] += hours
        totals["gpu_hours"] += hours
        totals["images_to_generate"] += step.work.get("generate", 0.0)
        totals["images_to_download"] += step.work.get("download", 0.0)
        totals["llm_prompt_tokens"] += step.work.get("llm_prompt_tokens", 0.0)
        totals["llm_new_tokens"] += step.work.get("llm_new_tokens", 0.0)
        totals["download_hours"] += step.work.get("download", 0.0) / est.download_images_per_s / 3600
    totals["wall_hours_on_gpus"] = totals["gpu_hours"] / est.gpus
    return {"per_kind": per_kind, "totals": totals,
            "rates": {k: {"per_gpu_s": v[0], "from": v[1]} for k, v in rates.items()}}


LAION_2B_EN = 2_320_000_000  # rows of LAION-2B-en, the generator's training set in the paper (Sec. 3.2)


def index_footprints(study: Any, n: int = LAION_2B_EN) -> list[dict[str, Any]]:
    """RAM and disk of each semantic-retrieval arm's index (its ``index.factory``) at LAION-2B scale."""
    from synthimg.retrieval.index_ondisk import footprint, model_width

    out, seen = [], set()
    for name, arm in study.arms.items():
        if arm.source != "retrieved":
            continue
        cfg = study.stage_config(name)
        if cfg.retrieve.backend not in ("knn", "local"):
            continue
        key = (cfg.index.factory, cfg.index.model)
        if key in seen:
            continue
        seen.add(key)
        dim = model_width(cfg.index.model) or 768  # no open_clip config (hf-hub:...): ViT-L/14's width
        kinds = len(cfg.retrieve.indexes)  # the image and the caption index are two indexes of n vectors
        one = footprint(cfg.index.factory, n, dim)
        parts = -(-n // cfg.index.chunk_rows)
        temp = one["disk_bytes"] + parts * one.get("quantiser_bytes", 0.0) if one["ondisk"] else 0.0
        out.append({"arms": name, "factory": cfg.index.factory, "model": cfg.index.model, "dim": dim, "n": n,
                    "indexes": kinds, "ondisk": one["ondisk"], "disk_bytes": kinds * one["disk_bytes"],
                    "ram_bytes": kinds * one["ram_bytes"], "build_temp_bytes": temp, "parts": parts})
    return out
