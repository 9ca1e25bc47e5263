"""LLM-written backgrounds for the ``c, background => caption`` prompts (paper Sec. 3.1, App. C).

The paper had an LLM write the places once: about 100 per class for ImageNet, and one list
per domain for the fine-grained tasks (Aircraft 80, Cars 100, Flowers 100). The counts and
the scope are the task's (``task.json: backgrounds``), overridable by ``captions.backgrounds_scope``
and ``captions.backgrounds_count``. The LLM is asked for a numbered list, round after round
with new seeds, until every subject has that many distinct places or ``captions.max_rounds``
runs out (the shortfall is reported). Progress is saved after every batch
(``OUT.partial.json``), so an interrupted run resumes; the finished file is what
``captions.backgrounds`` reads.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any

from synthimg.atomic import atomic_write
from synthimg.config import CaptionsConfig
from synthimg.synthetic.prompting import concept
from synthimg.tasks.spec import TaskSpec, article

log = logging.getLogger("synthimg.captions")

DOMAIN_KEY = "backgrounds"
_NUMBERED = re.compile(r"^\s*(?:\d+[.)]|[-*\u2022])?\s*")


def background_prompt(subject: str, count: int, known: list[str] | None = None) -> str:
    """The list prompt for one subject (a class's concept, or the task's domain noun).

    The places found so far (the last 20) are already numbered in it, so a base LM continues
    the list instead of starting it again.
    """
    shown = (known or [])[-20:]
    head = (f"List {count} different places or settings where a photo of {article(subject)} {subject} could be taken, "
            "one short place per line.\n")
    return head + "".join(f"{i + 1}. {place}\n" for i, place in enumerate(shown)) + f"{len(shown) + 1}."


def parse_places(text: str, max_chars: int = 60) -> list[str]:
    """Places from a numbered or bulleted list (the prompt's "1." is already consumed)."""
    places = []
    for line in text.splitlines():
        place = _NUMBERED.sub("", line).strip().strip(".;,\"'").strip()
        if 2 <= len(place) <= max_chars and any(ch.isalpha() for ch in place) and "=>" not in place:
            places.append(place)
    return places


def _subjects(task: TaskSpec, scope: str) -> dict[str, str]:
    """Key in the output file -> the noun the LLM is asked about."""
    if scope == "class":
        return {task.classnames[c]: concept(task, c) for c in range(task.num_classes)}
    domain = task.backgrounds.domain or task.category_word or task.display_name or task.name
    return {DOMAIN_KEY: domain}


def resolve_scope(task: TaskSpec, cfg: CaptionsConfig) -> tuple[str, int]:
    """(scope, count): the config's when set, else the task's (the paper's)."""
    return cfg.backgrounds_scope or task.backgrounds.scope, cfg.backgrounds_count or task.backgrounds.count


def make_backgrounds(task: TaskSpec, cfg: CaptionsConfig, out: str | Path, llm: Any = None,
                     progress: bool = True) -> dict[str, Any]:
    """Write ``OUT`` (JSON: ``{class: [places]}`` or ``{"backgrounds": [places]}``) and its stats; resumable.

    Returns the stats (also written to ``OUT_stats.json`` beside it).
    """
    from synthimg.progress import progress_bar
    from synthimg.runtime import carried_gpu_seconds
    from synthimg.synthetic.prompting import hash_seed

    out = Path(out)
    stats_path = out.with_name(out.stem + "_stats.json")
    partial = out.with_name(out.name + ".partial.json")
    scope, count = resolve_scope(task, cfg)
    subjects = _subjects(task, scope)
    places: dict[str, list[str]] = {k: [] for k in subjects}
    cursor: dict[str, Any] = {"round": 0, "batch": 0, "todo": None}
    settings = {"scope": scope, "count": count, "batch_size": cfg.batch_size, "seed": cfg.seed,
                "max_rounds": cfg.max_rounds, "llm": cfg.llm or cfg.llm_url}
    finished = out.is_file()
    if finished:  # a finished file is not asked again, even if some lists came out short
        places.update({k: [str(x) for x in v][:count] for k, v in json.loads(out.read_text()).items() if k in places})
    elif partial.is_file():  # resume exactly where the interrupted run stopped: same rounds, same batches, same seeds
        saved = json.loads(partial.read_text())
        if saved.get("settings") == settings:
            places.update({k: v for k, v in saved["places"].items() if k in places})
            cursor = saved["cursor"]
        else:
            log.warning("%s was written with other settings: starting the backgrounds again", partial)
    start, tokens, asked = time.time(), 0, 0
    if not finished and any(len(places[k]) < count for k in subjects):
        if llm is None:
            from synthimg.synthetic.llm import create_llm

            llm = create_llm(cfg)
        before = getattr(llm, "tokens", 0)
        with progress_bar(total=len(subjects) * count, description=f"backgrounds ({scope})", enabled=progress) as bar:
            bar.advance(sum(len(v) for v in places.values()))
            for round_ in range(cursor["round"], cfg.max_rounds):
                todo = cursor["todo"] if cursor["todo"] is not None else [k for k in subjects if len(places[k]) < count]
                if not todo:
                    break
                for b in range(cursor["batch"], len(todo), cfg.batch_size):
                    batch = todo[b: b + cfg.batch_size]
                    prompts = [background_prompt(subjects[k], count, places[k]) for k in batch]
                    for key, text in zip(batch, llm.complete(prompts, hash_seed(cfg.seed, 7, round_, b))):
                        seen = {p.lower() for p in places[key]}
                        for place in parse_places(text):
                            if len(places[key]) < count and place.lower() not in seen:
                                places[key].append(place)
                                seen.add(place.lower())
                                bar.advance(1)
                    asked += len(batch)
                    nxt = {"round": round_, "batch": b + cfg.batch_size, "todo": todo}
                    if nxt["batch"] >= len(todo):
                        nxt = {"round": round_ + 1, "batch": 0, "todo": None}
                    _atomic_json(partial, {"places": places, "cursor": nxt, "settings": settings})
                cursor = {"round": round_ + 1, "batch": 0, "todo": None}
        tokens = getattr(llm, "tokens", 0) - before
    short = {k: len(v) for k, v in places.items() if len(v) < count}
    if short:
        log.warning("%d of %d background lists are short of %d places after %d rounds (first: %s has %d)", len(short),
                    len(places), count, cfg.max_rounds, next(iter(short)), next(iter(short.values())))
    _atomic_json(out, places)
    partial.unlink(missing_ok=True)
    duration = time.time() - start
    stats = {"scope": scope, "count_per_subject": count, "subjects": len(places),
             "places": sum(len(v) for v in places.values()), "short": short, "prompts": asked, "tokens": tokens,
             "llm": getattr(llm, "id", None), "duration": round(duration, 3),
             "gpu_seconds": carried_gpu_seconds(stats_path, duration if asked and cfg.llm_url is None else 0.0)}
    _atomic_json(stats_path, stats)
    return stats


def _atomic_json(path: Path, data: Any) -> None:
    atomic_write(path, json.dumps(data, indent=1))
