"""Study executor overhead: steps run in the study's process vs one ``python -m synthimg`` process per step.

Runs the same tiny study (2 arms of colour shards, 1 scale, 2 seeds, tiny CLIP, no baseline
or analysis) twice from scratch, once per way, and a third time with nothing left to do.

    python scripts/bench/study.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthimg.cli import _invoke  # noqa: E402
from synthimg.study.run import run_study  # noqa: E402
from synthimg.study.spec import load_study  # noqa: E402
from tests.conftest import CLASSNAMES, write_colour_shards  # noqa: E402


def main() -> None:
    root = Path(tempfile.mkdtemp())
    write_colour_shards(root / "a", 120, 0, "synthetic")
    write_colour_shards(root / "b", 120, 50_000, "retrieved")
    for split, n, off in (("train", 60, 10_000), ("val", 30, 20_000), ("test", 60, 30_000)):
        write_colour_shards(root / "eval" / split, n, off, "upstream")
    (root / "eval" / "classnames.txt").write_text("\n".join(CLASSNAMES))
    rows = []
    for name, invoke in (("in-process", _invoke), ("subprocess per step", None), ("in-process, all done", _invoke)):
        out = root / ("subproc" if "subprocess" in name else "inproc")
        data = {"task": "cifar10", "out": str(out), "eval_root": str(root / "eval"), "scales": [40], "seeds": [0, 1],
                "lrs": [1e-3], "baseline": False, "analysis": False,
                "arms": {"synthetic": {"source": "shards", "shards": str(root / "a"), "decontaminate": False},
                         "retrieved": {"source": "shards", "shards": str(root / "b"), "decontaminate": False}},
                "base": {"curate": {"model": "synthimg-tiny-vit", "pretrained": None, "top": 0.6, "workers": 0},
                         "train": {"model": "synthimg-tiny-vit", "pretrained": None, "epochs": 2, "batch_size": 20,
                                   "warmup": 2, "workers": 0, "precision": "fp32"},
                         "eval": {"workers": 0, "lp_epochs": 10}}}
        path = root / f"{out.name}.yaml"
        path.write_text(yaml.safe_dump(data))
        start = time.time()
        stats = run_study(load_study(path), invoke, echo=lambda *_: None)
        rows.append((name, stats["ran"], time.time() - start))
    base = rows[1][2]
    print("| executor | steps run | seconds | vs subprocess per step |")
    print("|---|---|---|---|")
    for name, ran, sec in rows:
        print(f"| {name} | {ran} | {sec:.1f} | {base / sec:.2f}x |")
    from _common import device, summary

    summary("study", rows[0][1] / rows[0][2], rows[1][1] / base, "steps/s", device(),
            seconds_in_process=round(rows[0][2], 2), seconds_subprocess=round(base, 2),
            rerun_all_done_s=round(rows[2][2], 2), steps=rows[0][1])


if __name__ == "__main__":
    main()
