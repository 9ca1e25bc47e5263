"""Substring retrieval throughput: caption rows/s for all ImageNet classes in one pass.

    python scripts/bench/substring.py [--rows 1000000]

A LAION-like parquet of generated captions (web-like word soup, some mentioning ImageNet
class names) is scanned by synthimg's one-pass Aho-Corasick matcher and, on a sample, by the
obvious baseline in the same run: one word-boundary regex per class over every caption.
Single process, so rows/s is per core.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

WORDS = ("photo of the best new sale cheap free shipping image stock vector white background red blue green "
         "vintage modern design art print home decor wallpaper").split()


def captions(n: int, classnames: list[str], seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = rng.choices(WORDS, k=rng.randint(4, 14))
        if rng.random() < 0.2:
            words.insert(rng.randint(0, len(words)), rng.choice(classnames))
        out.append(" ".join(words))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--naive-rows", type=int, default=5_000)
    args = parser.parse_args()
    import pandas as pd

    from synthimg.retrieval.substring import naive_match, scan
    from synthimg.tasks import get_task

    task = get_task("imagenet")
    caps = captions(args.rows, task.classnames)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "laion.parquet"
        pd.DataFrame({"url": [f"http://x.invalid/{i}" for i in range(args.rows)], "caption": caps}).to_parquet(path)
        t = time.perf_counter()
        matches = sum(1 for _ in scan(task, str(path)))
        ours = args.rows / (time.perf_counter() - t)
    t = time.perf_counter()
    naive_match(task, caps[: args.naive_rows])
    naive = args.naive_rows / (time.perf_counter() - t)
    print(f"{args.rows:,} captions x {task.num_classes} ImageNet classes: one-pass Aho-Corasick {ours:,.0f} rows/s "
          f"({matches:,} matches) | naive per-class regex loop {naive:,.0f} rows/s | ratio {ours / naive:.0f}x")


if __name__ == "__main__":
    main()
