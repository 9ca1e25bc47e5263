"""Pool sizes from the cells they must feed, through every expected loss, and the check that they do.

A cell of N images needs N images *after curation*. Between asking and training an arm
loses images at each stage:

- retrieved: only ``link_success`` of the candidate URLs download (img2dataset measured 95%
  on LAION at release, losing about a point a month to link rot: rom1504/img2dataset#277;
  the default 0.7 is that trend at the paper's time);
- both: the CLIP-score filter keeps ``ceil(top x n)`` per class (0.3, the paper), then the
  per-class ``cap``;
- decontaminated arms: the descriptor and pHash passes drop ``decontam_drop`` and
  ``phash_drop`` of what is left (the paper's Table 1: up to 5.6%);
- synthetic: ``generate_drop`` (an explicit safety checker's drops).

``size_pool`` inverts that chain for the largest numeric scale of an arm (with ``margin``);
``expected_after_curation`` runs it forward, for the dry run's coverage table and the check
that stops a study before any GPU work when a cell cannot be met.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthimg.config import Config
from synthimg.errors import SynthimgError
from synthimg.study.spec import ALL

if TYPE_CHECKING:
    from synthimg.study.plan import Step
    from synthimg.study.spec import ArmSpec, LossSpec, StudyConfig


@dataclass
class PoolSize:
    """What an arm asks for per class, and what is expected to survive curation (all classes)."""

    arm: str
    made_per_class: int  # captions x images per caption, or images downloaded
    candidates_per_class: int | None  # retrieved: URLs to find
    expected_post: int  # images expected after curation, over all classes
    needed: int  # the largest numeric scale this pool feeds (0 when only 'all')
    auto: bool


def decontam_keep(arm: ArmSpec, losses: LossSpec) -> float:
    """Fraction of the filtered images expected to pass decontamination (1 for arms not decontaminated)."""
    return 1 - losses.decontam_drop - losses.phash_drop if arm.decontaminates else 1.0


def kept_per_class(made: int, top: float | None, cap: int | None, keep: float, generate_drop: float = 0.0) -> int:
    """Images of one class left after the safety drops, the filter (``top``, then ``cap``) and decontamination."""
    survived = made * (1 - generate_drop)
    kept = math.ceil(top * survived) if top is not None else survived
    if cap is not None:
        kept = min(kept, cap)
    return int(math.floor(kept * keep))


def expected_after_curation(made_per_class: int, classes: int, arm: ArmSpec, cfg: Config, losses: LossSpec) -> int:
    """Images expected after filter, cap and decontamination, from ``made_per_class`` downloaded or generated."""
    drop = losses.generate_drop if arm.source == "synthetic" else 0.0
    top, cap = (cfg.curate.top, cfg.curate.cap) if arm.filters else (None, None)
    return kept_per_class(made_per_class, top, cap, decontam_keep(arm, losses), drop) * classes


def size_pool(name: str, arm: ArmSpec, cfg: Config, classes: int, needed: int, losses: LossSpec) -> PoolSize:
    """Per-class quotas that cover ``needed`` images after curation (or the arm's explicit ``pool_per_class``)."""
    if arm.pool_per_class is not None:
        made, auto = arm.pool_per_class, False
    elif not needed:
        raise SynthimgError(f"arm {name!r} has only the scale 'all': give arms.{name}.pool_per_class, the images to "
                            "make per class (everything that survives their curation is then used)")
    else:
        per_class = math.ceil(needed * (1 + losses.margin) / classes)
        after_filter = per_class / decontam_keep(arm, losses)
        cap = cfg.curate.cap if arm.filters else None
        if cap is not None and after_filter > cap:
            raise SynthimgError(
                f"arm {name!r}: {needed:,} images need about {math.ceil(after_filter):,} per class after the filter, "
                f"above its cap of {cap:,} per class (curate.cap); lower the scale or raise the cap")
        made = math.ceil(after_filter / cfg.curate.top) if arm.filters else math.ceil(after_filter)
        if arm.source == "synthetic":
            made = math.ceil(made / (1 - losses.generate_drop))
        made, auto = max(made, 1), True
    candidates = math.ceil(made / losses.link_success) if arm.source == "retrieved" else None
    return PoolSize(name, made, candidates, expected_after_curation(made, classes, arm, cfg, losses), needed, auto)


def shards_pool(name: str, arm: ArmSpec, cfg: Config, classes: int, needed: int, losses: LossSpec) -> PoolSize:
    """A ``shards`` arm's pool: what its manifest holds (unknown until the folder exists)."""
    sizes = Path(arm.shards or "") / "sizes.json"
    total = sum(json.loads(sizes.read_text()).values()) if sizes.is_file() else 0
    made = math.ceil(total / classes) if total else 0
    return PoolSize(name, made, None, expected_after_curation(made, classes, arm, cfg, losses) if made else 0,
                    needed, False)


@dataclass
class PoolCheck:
    """Run after an arm's pool step (captions or download): stops the arm before GPU work when it falls short.

    Counts per class come from the step's stats; the same forward chain as the plan
    (:func:`kept_per_class`) tells how many images survive curation.
    """

    arm: str
    needed: int
    classes: int
    top: float | None  # None: no filter
    cap: int | None
    keep: float
    per_item: int = 1  # images per caption
    generate_drop: float = 0.0
    backend: str | None = None  # retrieved: what more candidates would take

    def expected(self, per_class: list[int]) -> int:
        return sum(kept_per_class(n * self.per_item, self.top, self.cap, self.keep, self.generate_drop)
                   for n in per_class)

    def __call__(self, step: Step) -> None:
        folder = step.outputs[0].parent
        stats_file = folder / ("download_stats.json" if step.kind == "download" else "captions_stats.json")
        if not self.needed or not stats_file.is_file():
            return
        per_class = list(json.loads(stats_file.read_text())["per_class"].values())
        expected = self.expected(per_class)
        if expected < self.needed:
            if step.kind == "captions":
                hint = "the LLM ran out of new captions: raise captions.max_rounds or lower the scale"
            elif self.backend == "substring":
                hint = "the metadata holds no more caption matches: lower the scale or add metadata"
            else:
                hint = "add candidates (retrieve.per_class, retrieve.max_k) or lower the scale"
            what = "downloaded" if step.kind == "download" else "captioned"
            raise SynthimgError(
                f"arm {self.arm!r}: the {what} pool gives about {expected:,} images after curation, short of the "
                f"{self.needed:,}-image cell; {hint} (stopped before any GPU work on this arm)")


def caption_work(cfg: Config, task_name: str, captions: int) -> dict[str, float]:
    """LLM tokens for ``captions`` SynCLR-style captions: prompt tokens and (at most) new tokens."""
    from synthimg.synthetic.prompting import PromptBuilder
    from synthimg.tasks import get_task

    task = get_task(task_name)
    builder = PromptBuilder(task, cfg.captions.seed, None)
    sample = [builder.build(c % task.num_classes, a) for c in range(min(20, task.num_classes)) for a in range(5)]
    prompt_tokens = sum(len(p.text) for p in sample) / len(sample) / CHARS_PER_TOKEN
    prompts = captions * 1.25  # captions.py over-asks a quarter for empty or repeated answers
    return {"llm_prompt_tokens": prompts * prompt_tokens, "llm_new_tokens": prompts * cfg.captions.max_new_tokens}


def background_work(cfg: Config, task_name: str) -> dict[str, float]:
    """LLM tokens for the background lists: about 15 places per completion of 100 tokens."""
    from synthimg.synthetic.backgrounds import background_prompt, resolve_scope
    from synthimg.tasks import get_task

    task = get_task(task_name)
    scope, count = resolve_scope(task, cfg.captions)
    subjects = task.num_classes if scope == "class" else 1
    per_answer = max(1.0, cfg.captions.max_new_tokens / 100 * PLACES_PER_100_TOKENS)
    prompts = subjects * math.ceil(count / per_answer)
    prompt_tokens = len(background_prompt(task.classnames[0], count)) / CHARS_PER_TOKEN
    return {"llm_prompt_tokens": prompts * prompt_tokens, "llm_new_tokens": prompts * cfg.captions.max_new_tokens}


# English text averages about 4 characters per Llama token; a numbered list of short places
# averages about 6-7 tokens per line. Both are estimates for the dry run only.
CHARS_PER_TOKEN = 4.0
PLACES_PER_100_TOKENS = 15.0


def coverage_rows(study: StudyConfig, sizes: dict[str, PoolSize]) -> list[dict[str, Any]]:
    """One row per (arm, scale): whether the planned pool covers it, and the margin.

    An 'all' cell is the smallest expected pool of the arms that ask for 'all'; it is covered
    when that is not empty.
    """
    everything = [n for n in sizes if ALL in study.arm_scales(n)]
    smallest = min((sizes[n].expected_post for n in everything), default=0)
    rows = []
    for name, arm in study.arms.items():
        for scale in study.arm_scales(name):
            if arm.source == "mixed":
                parts = {p: round(scale * f) for p, f in arm.mix.items()}  # type: ignore[operator]
                pools = {p: sizes[p].expected_post for p in parts}
                rows.append({"arm": name, "scale": scale, "expected_pool": None,
                             "covered": all(pools[p] >= n for p, n in parts.items()),
                             "margin": min(pools[p] / n - 1 for p, n in parts.items()),
                             "from": ", ".join(f"{p}: {n:,}" for p, n in parts.items())})
                continue
            pool = sizes[name].expected_post
            origin = ("auto" if sizes[name].auto else f"renders {arm.init_from}" if arm.source == "sdedit"
                      else "pool_per_class" if arm.pool_per_class else "the shards")
            if scale == ALL:
                rows.append({"arm": name, "scale": ALL, "expected_pool": smallest, "covered": smallest > 0,
                             "margin": None, "from": f"all that survives, equal across {', '.join(everything)}"})
            else:
                rows.append({"arm": name, "scale": scale, "expected_pool": pool, "covered": pool >= scale,
                             "margin": pool / scale - 1, "from": origin})
    return rows


def check_coverage(rows: list[dict[str, Any]]) -> None:
    """One line, before any step runs, when a planned pool cannot feed one of its cells."""
    short = [r for r in rows if not r["covered"]]
    if short:
        r = short[0]
        pool = f"{r['expected_pool']:,}" if r["expected_pool"] is not None else "its parts' pools"
        more = f" (and {len(short) - 1} more cells)" if len(short) > 1 else ""
        cell = "'all'" if r["scale"] == ALL else f"{r['scale']:,} images"
        raise SynthimgError(f"arm {r['arm']!r}: the cell of {cell} cannot be met: the planned pool "
                            f"gives about {pool} after curation{more}; raise arms.{r['arm']}.pool_per_class or drop "
                            f"the cell (`synthimg study ... --dry-run` shows the coverage)")
