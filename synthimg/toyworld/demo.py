"""``synthimg demo``: the whole study in miniature, through ``synthimg study``, on the toy world.

Builds the world (or reuses it), fills ``demo.yaml`` with its paths and the shipped weights,
runs the study with every stage's real code path (captions, generate, index build, kNN and
substring retrieval, img2dataset download over ``file://`` URLs, curation, training, evaluation,
analysis, report) and counts how many planted near-copies of test images decontamination removed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from synthimg.study.plan import Step

TEMPLATE = Path(__file__).resolve().parent / "demo.yaml"
# --quick: a sub-minute smoke version of the same study (one seed, one scale, a smaller world)
QUICK = ["seeds=[0]", "scales=[30]", "arms.synthetic.pool_per_class=10", "arms.retrieved.pool_per_class=10",
         "arms.retrieved_substring.pool_per_class=10", "base.train.epochs=1", "base.train.steps_per_epoch=5", "base.train.batch_size=10", "base.eval.lp_epochs=10",
         "base.generate.steps=8", "base.retrieve.k_per_query=50"]


def resolved_yaml(out: Path, world: Path, weights: Path) -> Path:
    """``OUT/demo.yaml``: the template with its placeholders filled."""
    text = TEMPLATE.read_text()
    for name, value in (("{out}", out), ("{world}", world), ("{weights}", weights)):
        text = text.replace(name, str(Path(value).resolve()))
    path = out / "demo.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def planted_notes(world: Path, task: str) -> Any:
    """A study notes hook: per retrieved arm, how many planted copies were downloaded and then dropped."""

    def notes(root: Path, steps: list[Step]) -> list[str]:
        import pandas as pd

        from synthimg.data.manifest import read_manifest

        planted = {p["url"] for p in json.loads((world / "world.json").read_text())["planted"]
                   if p["planted_from"].startswith(f"{task}/")}
        lines = []
        for step in steps:
            if step.kind != "decontaminate" or not (step.outputs[0].parent / "dropped.parquet").is_file():
                continue
            images = next(s for s in steps if s.id == _images_of(step, steps))
            manifest = read_manifest(images.outputs[0].parent)
            dropped = set(pd.read_parquet(step.outputs[0].parent / "dropped.parquet")["key"])
            checked = set(pd.read_parquet(step.outputs[0].parent / "decontam_scores.parquet")["key"])
            mine = manifest[manifest["url"].isin(planted)]
            reached = mine[mine["key"].isin(checked)]
            caught = int(reached["key"].isin(dropped).sum())
            lines.append(f"{step.arm}: {len(mine)} of the {len(planted)} near-copies of {task} test images planted in "
                         f"the upstream were retrieved and downloaded, {len(reached)} of them passed the CLIP-score "
                         f"filter, and decontamination removed {caught} of those {len(reached)} "
                         f"({len(dropped)} images dropped in all).")
        return lines

    return notes


def _images_of(step: Step, steps: list[Step]) -> str:
    """The pool step (download) upstream of a curation step."""
    by_id = {s.id: s for s in steps}
    todo = list(step.deps)
    while todo:
        sid = todo.pop()
        if by_id[sid].kind in ("download", "generate", "shards"):
            return sid
        todo += by_id[sid].deps
    raise KeyError(step.id)


def run_demo(out: str | Path, quick: bool, invoke: Any, echo: Any = print, log_file: Path | None = None,
             live: Any = None) -> dict[str, Any]:
    """Build the world, run the demo study, return its stats (with the summary table's path).

    ``log_file``: where everything but ``echo``'s one line per step goes (libraries' warnings,
    progress bars, child processes); None leaves it all on the terminal.
    """
    from synthimg.progress import output_to
    from synthimg.study.run import run_study
    from synthimg.study.spec import load_study
    from synthimg.toyworld.pretrain import WEIGHTS
    from synthimg.toyworld.world import WorldConfig, build_world

    out = Path(out)
    world = out / ("world_quick" if quick else "world")
    cfg = WorldConfig(upstream=3000 if quick else 8000)  # the first images of the world the models saw
    echo(f"toy world: {cfg.upstream:,} upstream images -> {world}")
    with output_to(log_file):
        build_world(world, cfg)
        path = resolved_yaml(out, world, WEIGHTS)
        study = load_study(path, QUICK if quick else None, out / ("study_quick" if quick else "study"))
        stats = run_study(study, invoke, echo, notes=planted_notes(world, study.task), log_file=log_file, live=live)
    stats["summary"] = str(Path(study.out) / "report" / "summary.csv")
    stats["study_yaml"] = str(path)
    return stats
