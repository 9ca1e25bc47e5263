"""Substring retrieval throughput: caption rows/s for all 1,000 ImageNet classes in one pass.

    python scripts/bench/substring.py [--rows 1000000]

A LAION-like parquet of generated captions (web-like word soup, a fifth of them holding an
ImageNet class name) is scanned in the same run by:

- **ours**: ``scan_tables``, the compiled pre-filter (one numba pass over each batch's caption bytes,
  eight at a time: token starts and 8-byte keys by word arithmetic, a bit filter and a hash table,
  then pattern compares) with Python's matcher only on the rows it cannot settle;
- **previous**: ``scan_python``, the one-pass Aho-Corasick matcher on every caption (the
  scan before any pre-filter existed), whose matches ours must reproduce row for row;
- **naive**, on a sample: one word-boundary regex per class over every caption.

Single process, parquet decoded on the calling thread, so rows/s is per core; each scan
runs ``--repeat`` times, interleaved, and its fastest pass counts. The last line is JSON.
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
    parser.add_argument("--repeat", type=int, default=5,
                        help="passes of each scan, interleaved; the fastest counts (the first passes of a process "
                             "pay for its fresh memory, page faults that cost about 9 ms per MB on a VM like ours)")
    args = parser.parse_args()
    import pandas as pd

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import device, summary

    from synthimg.retrieval.substring import naive_match, scan_python, scan_tables
    from synthimg.tasks import get_task

    task = get_task("imagenet")
    caps = captions(args.rows, task.classnames)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "laion.parquet"
        pd.DataFrame({"url": [f"http://x.invalid/{i}" for i in range(args.rows)], "caption": caps}).to_parquet(path)
        ours = previous = 0.0
        for _ in range(args.repeat):  # interleaved, so drifts in the machine's speed hit both alike
            t = time.perf_counter()
            tables = list(scan_tables(task, str(path), threads=False))
            ours = max(ours, args.rows / (time.perf_counter() - t))
            t = time.perf_counter()
            previous_rows = list(scan_python(task, str(path), threads=False))
            previous = max(previous, args.rows / (time.perf_counter() - t))
    ours_rows = [r for tab in tables for r in tab.to_pylist()]
    key = ("upstream_id", "class_id", "query", "url", "caption")
    identical = [tuple(r[k] for k in key) for r in ours_rows] == [tuple(r[k] for k in key) for r in previous_rows]
    t = time.perf_counter()
    naive_match(task, caps[: args.naive_rows])
    naive = args.naive_rows / (time.perf_counter() - t)
    print(f"{args.rows:,} captions x {task.num_classes} ImageNet classes, {len(ours_rows):,} matches")
    print(f"  ours (compiled pre-filter + matcher on the rest):   {ours:,.0f} rows/s")
    print(f"  previous (one-pass Aho-Corasick on every caption):  {previous:,.0f} rows/s "
          f"-> {ours / previous:.1f}x, identical matches: {identical}")
    print(f"  naive per-class regex loop ({args.naive_rows:,} rows):      {naive:,.0f} rows/s -> {ours / naive:.0f}x")
    summary("substring", ours, previous, "captions/s", device() + " (1 used)", ratio_vs_previous=round(ours / previous, 2),
            ratio_vs_naive=round(ours / naive, 1), identical_matches=identical, rows=args.rows, matches=len(ours_rows))

if __name__ == "__main__":
    main()
