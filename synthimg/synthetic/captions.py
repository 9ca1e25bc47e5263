"""Class-targeted captions with exact per-class quotas (``synthimg captions``).

Methods (a registry): ``llm`` (SynCLR-style prompting through any LLM backend) and
``template`` (the task's zero-shot templates combined with hand-written scene phrases; the
offline fallback). Unlike the paper's ``random.choice`` over classes, every class gets
exactly ``per_class`` unique captions: short classes are topped up round after round, and a
class that cannot reach its quota is reported, never hidden.

LLM work is cut into chunks of classes written to ``OUT/_parts/``; a rerun skips finished
chunks. Every caption records its prompt type, in-context example ids, relation or
background, the LLM id, sampling parameters and seed.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd

from synthimg.atomic import atomic_path, atomic_write
from synthimg.config import CaptionsConfig, Config, save_resolved
from synthimg.errors import SynthimgError
from synthimg.manifests import manifests
from synthimg.registry import Registry
from synthimg.synthetic.prompting import (
    PromptBuilder,
    clean_caption,
    concept,
    hash_seed,
)
from synthimg.tasks.spec import TaskSpec, article

METHODS = Registry("caption method")
register = METHODS.register
CLASSES_PER_CHUNK = 50



@register("template")
def template_captions(task: TaskSpec, cfg: CaptionsConfig, classes: list[int], **_: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Zero-shot prompts alone and combined with scene phrases, shuffled per class by the seed."""
    phrases = json.loads((manifests() / "captions" / "scene_phrases.json").read_text())["phrases"]
    rows = []
    for c in classes:
        candidates: dict[str, dict[str, Any]] = {}
        for t, prompt in enumerate(task.prompts(c)):
            candidates.setdefault(prompt, {"template": t, "phrase": None})
        name = concept(task, c)
        for phrase in phrases:
            candidates.setdefault(f"a photo of {article(name)} {name} {phrase}.", {"template": None, "phrase": phrase})
        order = list(candidates)
        random.Random(f"{cfg.seed}/{c}").shuffle(order)
        for i, caption in enumerate(order[: cfg.per_class]):
            rows.append({"class_id": c, "caption": caption, "prompt_type": "template",
                         "template_index": candidates[caption]["template"], "background": candidates[caption]["phrase"]})
    return rows, {}


@register("llm")
def llm_captions(
    task: TaskSpec, cfg: CaptionsConfig, classes: list[int], llm: Any = None, chunk: int = 0, progress: Any = None,
    seen: set[str] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Prompt the LLM until each class has ``per_class`` unique cleaned captions (or rounds run out).

    ``seen`` holds the captions of earlier chunks: a caption is unique across the whole set,
    since one caption under two labels would teach nothing.
    """
    builder = PromptBuilder(task, cfg.seed, cfg.backgrounds)
    have: dict[int, list[dict[str, Any]]] = {c: [] for c in classes}
    seen = seen if seen is not None else set()
    attempts = {c: 0 for c in classes}
    counts = {"generated": 0, "duplicates": 0, "rejected": 0, "chars": 0}
    for round_ in range(cfg.max_rounds):
        short = [c for c in classes if len(have[c]) < cfg.per_class]
        if not short:
            break
        prompts = []
        for c in short:
            need = cfg.per_class - len(have[c])
            for _ in range(need + max(1, need // 4)):  # over-ask a little: some come back empty or repeated
                prompts.append(builder.build(c, attempts[c]))
                attempts[c] += 1
        for b in range(0, len(prompts), cfg.batch_size):
            batch = prompts[b : b + cfg.batch_size]
            seed = hash_seed(cfg.seed, chunk, round_, b)
            for prompt, text in zip(batch, llm.complete([p.text for p in batch], seed)):
                counts["generated"] += 1
                counts["chars"] += len(text)
                caption = clean_caption(text, cfg.max_chars)
                c = prompt.class_id
                if caption is None:
                    counts["rejected"] += 1
                elif caption.lower() in seen:
                    counts["duplicates"] += 1
                elif len(have[c]) < cfg.per_class:
                    seen.add(caption.lower())
                    have[c].append({
                        "class_id": c, "caption": caption, "prompt_type": prompt.prompt_type,
                        "example_ids": json.dumps(prompt.example_ids), "relation": prompt.relation,
                        "background": prompt.background, "prompt": prompt.text, "llm_seed": seed,
                    })
            if progress is not None:
                progress(len(batch))
    return [row for c in classes for row in have[c]], counts


def make_captions(task: TaskSpec, cfg: CaptionsConfig, out: str | Path, progress: bool = True,
                  keep_parts: bool = False) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Write ``OUT/captions.parquet`` and ``OUT/captions_stats.json``; resumable by class chunk.

    The chunks (``OUT/_parts/``) go once the table is written, unless ``keep_parts``; a rerun
    with the same task and settings then returns the finished table without any LLM work.
    """
    from synthimg.progress import progress_bar
    from synthimg.runtime import carried_gpu_seconds

    out = Path(out)
    parts_dir = out / "_parts"
    settings = {"task": task.name, "captions": cfg.model_dump(mode="json")}
    done = _finished(out, settings)
    if done is not None and not parts_dir.is_dir():
        return done
    marker = parts_dir / "settings.json"
    if parts_dir.is_dir() and (not marker.is_file() or json.loads(marker.read_text()) != settings):
        shutil.rmtree(parts_dir)  # chunks of other settings are not this run's
    parts_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(marker, json.dumps(settings))
    start = time.time()
    llm = None
    if cfg.method == "llm":
        from synthimg.synthetic.llm import create_llm

        llm = create_llm(cfg)
    chunks = [list(range(i, min(i + CLASSES_PER_CHUNK, task.num_classes))) for i in range(0, task.num_classes, CLASSES_PER_CHUNK)]
    totals = {"generated": 0, "duplicates": 0, "rejected": 0, "chars": 0}
    seen: set[str] = set()
    with progress_bar(total=task.num_classes * cfg.per_class, description=f"captions ({cfg.method})", enabled=progress) as bar:
        for i, classes in enumerate(chunks):
            part = parts_dir / f"chunk_{i:05d}.parquet"
            if part.is_file():
                seen |= {c.lower() for c in pd.read_parquet(part, columns=["caption"])["caption"]}
                bar.advance(len(classes) * cfg.per_class)
                continue
            rows, counts = METHODS[cfg.method](task, cfg, classes, llm=llm, chunk=i, progress=bar.advance, seen=seen)
            for k, v in counts.items():
                totals[k] += v
            frame = pd.DataFrame(rows, columns=_COLUMNS) if rows else pd.DataFrame(columns=_COLUMNS)
            with atomic_path(part) as tmp:
                frame.to_parquet(tmp, index=False)
    table = pd.concat([pd.read_parquet(p) for p in sorted(parts_dir.glob("chunk_*.parquet"))], ignore_index=True)
    table = _provenance(table, task, cfg, llm)
    path = out / "captions.parquet"
    with atomic_path(path) as tmp:
        table.to_parquet(tmp, index=False)
    per_class = table.groupby("class_id").size().reindex(range(task.num_classes), fill_value=0)
    duration = time.time() - start
    stats = {
        "count": int(len(table)), "per_class_quota": cfg.per_class, "method": cfg.method,
        "per_class": {task.classnames[c]: int(n) for c, n in per_class.items()},
        "short_classes": {task.classnames[c]: int(n) for c, n in per_class.items() if n < cfg.per_class},
        "duplicates_dropped": totals["duplicates"], "rejected": totals["rejected"], "generated": totals["generated"],
        "duration": round(duration, 3), "captions_per_sec": round(len(table) / duration, 2) if duration else None,
        "gpu_seconds": carried_gpu_seconds(out / "captions_stats.json", duration if cfg.method == "llm" and totals["generated"] else 0.0),
        "chars_per_sec": round(totals["chars"] / duration, 1) if duration else None, "llm": getattr(llm, "id", None),
        "tokens": getattr(llm, "tokens", None),
        "tokens_per_sec": round(llm.tokens / duration, 1) if llm is not None and duration else None,
    }
    stats["settings"] = settings
    atomic_write(out / "captions_stats.json", json.dumps(stats, indent=1))
    if not keep_parts:
        shutil.rmtree(parts_dir, ignore_errors=True)
    return table, stats


def _finished(out: Path, settings: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]] | None:
    """The finished table and stats of an earlier run with the same settings, or None."""
    stats_path, path = out / "captions_stats.json", out / "captions.parquet"
    if not (stats_path.is_file() and path.is_file()):
        return None
    stats = json.loads(stats_path.read_text())
    return (pd.read_parquet(path), stats) if stats.get("settings") == settings else None


_COLUMNS = ["class_id", "caption", "prompt_type", "template_index", "example_ids", "relation", "background",
            "prompt", "llm_seed"]


def _provenance(table: pd.DataFrame, task: TaskSpec, cfg: CaptionsConfig, llm: Any) -> pd.DataFrame:
    table = table.sort_values(["class_id"], kind="stable").reset_index(drop=True)
    table["class_id"] = table["class_id"].astype(int)
    table["class_name"] = [task.classnames[c] for c in table["class_id"]]
    table["caption_index"] = table.groupby("class_id").cumcount()
    table["caption_method"] = cfg.method
    table["caption_seed"] = cfg.seed
    table["llm"] = getattr(llm, "id", None)
    if cfg.method == "llm":
        table["temperature"], table["top_p"], table["max_new_tokens"] = cfg.temperature, cfg.top_p, cfg.max_new_tokens
    first = ["class_id", "class_name", "caption_index", "caption"]
    return table[first + [c for c in table.columns if c not in first]]


def run(cfg: Config, out: str | Path, keep_parts: bool = False) -> dict[str, Any]:
    """``captions``: OUT/captions.parquet, OUT/captions_stats.json and the resolved config."""
    from synthimg.tasks import get_task

    if cfg.task is None:
        raise SynthimgError("no task to caption (--task)")
    _, stats = make_captions(get_task(cfg.task), cfg.captions, out, keep_parts=keep_parts)
    save_resolved(cfg, out)
    return stats
