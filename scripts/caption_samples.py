"""Print 20 captions per SynCLR prompt type from a real `synthimg captions` run (for docs/synthetic.md).

    python scripts/caption_samples.py [--llm PATH_OR_ID] [--task fgvc_aircraft]

Without --llm it builds the tiny 2-layer GPT-2 the tests use (random weights, a BPE vocabulary
of five sentences), so the captions show the prompting and the cleaning, not a real LLM's text.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--llm", default=None)
    parser.add_argument("--task", default="fgvc_aircraft")
    parser.add_argument("--per-class", type=int, default=3)
    args = parser.parse_args()
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from synthimg.config import CaptionsConfig
    from synthimg.synthetic.captions import make_captions
    from synthimg.tasks import get_task

    with tempfile.TemporaryDirectory() as tmp:
        llm = args.llm
        if llm is None:
            from tests.tiny_models import tiny_causal_lm

            llm = str(tiny_causal_lm(Path(tmp) / "lm"))
        cfg = CaptionsConfig(method="llm", llm=llm, per_class=args.per_class, max_new_tokens=24, batch_size=64)
        table, _ = make_captions(get_task(args.task), cfg, Path(tmp) / "out", progress=False)
    for kind in ("c", "c_relation", "c_background"):
        rows = table[table["prompt_type"] == kind].head(20)
        print(f"\n`{kind}` ({len(table[table['prompt_type'] == kind])} of {len(table)} captions):\n")
        print("| class | relation / background | caption |\n|---|---|---|")
        for r in rows.itertuples():
            extra = r.relation if kind == "c_relation" else r.background if kind == "c_background" else ""
            print(f"| {r.class_name} | {extra or ''} | {r.caption.replace('|', '/')} |")


if __name__ == "__main__":
    main()
