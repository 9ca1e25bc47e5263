"""Shard reading: throughput of synthimg's readers, and the class mix of training batches.

    python scripts/bench/loader.py [--samples 4000] [--size 64] [--workers 0 2]
                                   [--classes 100] [--per-class 200] [--batch 512]

Part 1, the streaming reader (evaluation, scoring, embedding) against plain webdataset,
same shards, same run: both decode every image fully to RGB PIL; ours also groups per tar,
counts skips and splits by node/worker.

Part 2, training batches on fully class-sorted shards (every shard holds one class, as
generation, download and ImageFolder conversion write them): the IID loader (one
permutation of the subset per epoch, random access into the tars) against the streaming
loader the trainer used before (shard order shuffled, a 1,000-sample shuffle buffer), same
transform, same run, each twice in alternating order (the better run of each is kept; the
tars are indexed before timing). Prints samples/s, the distinct classes per batch and their
IID expectation. The last line is JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def write(out: Path, n: int, size: int) -> list[str]:
    from synthimg.data.shards import ShardWriter, finalize, sample_key

    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    with ShardWriter(out, maxcount=500) as writer:
        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(np.roll(base, i, axis=0)).save(buf, format="JPEG", quality=90)
            writer.write({"__key__": sample_key(i), "jpg": buf.getvalue(), "cls": i % 10, "txt": "x",
                          "json": {"source": "upstream", "class_id": i % 10, "class_name": str(i % 10)}})
    finalize(out)
    return sorted(str(p) for p in out.glob("*.tar"))


def write_sorted(out: Path, classes: int, per_class: int, size: int) -> None:
    """Fully class-sorted shards: class 0's images, then class 1's, ..., one class per shard."""
    from synthimg.data.shards import ShardWriter, finalize, sample_key

    rng = np.random.default_rng(1)
    base = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    with ShardWriter(out, maxcount=per_class) as writer:
        for c in range(classes):
            for i in range(per_class):
                buf = io.BytesIO()
                Image.fromarray(np.roll(base, c * per_class + i, axis=1)).save(buf, format="JPEG", quality=90)
                writer.write({"__key__": sample_key(c * per_class + i), "jpg": buf.getvalue(), "cls": c, "txt": "x",
                              "json": {"source": "retrieved", "class_id": c, "class_name": f"c{c}"}})
    finalize(out, [f"c{c}" for c in range(classes)])


def rate(iterable, n_expected: int) -> float:
    start = time.perf_counter()
    n = sum(1 for _ in iterable)
    assert n == n_expected, (n, n_expected)
    return n / (time.perf_counter() - start)


def transform(size: int):
    import torchvision.transforms as T

    return T.Compose([T.RandomResizedCrop(size, scale=(0.9, 1.0)), T.ToTensor()])


def streaming_epoch(shards: Path, batch: int, workers: int, seed: int, size: int, steps: int):
    """The trainer's loader before IID batches (synthimg 0.1's ``epoch_batches``, one source)."""
    from synthimg.data.loader import shard_loader
    from synthimg.data.shards import list_shards

    urls = list_shards(shards)
    random.Random(seed).shuffle(urls)
    loader = shard_loader(urls, batch_size=batch, num_workers=workers, transform=transform(size), resample="auto",
                          epoch_size=steps * batch, shuffle=1000, seed=seed, drop_last=True)
    for n, b in enumerate(loader):
        if n == steps:
            return
        yield b["label"]


def iid_epoch(shards: Path, batch: int, workers: int, seed: int, size: int, steps: int):
    from synthimg.config import load_config
    from synthimg.train.data import (
        epoch_loader,
        plan_epoch,
        resolve_sources,
        sample_table,
    )

    cfg = load_config(overrides=[f"train.data=[{shards}]", f"train.batch_size={batch}", f"train.seed={seed}"]).train
    table = sample_table(resolve_sources(cfg))
    plan = plan_epoch(table, cfg, 0, 1, 0, steps)
    for b in epoch_loader(table, plan, transform(size), workers):
        yield b["label"]


def diversity_run(make, shards: Path, batch: int, workers: int, size: int, steps: int) -> tuple[float, float]:
    start = time.perf_counter()
    distinct, n = [], 0
    for labels in make(shards, batch, workers, 0, size, steps):
        distinct.append(len(set(labels.tolist())))
        n += len(labels)
    return n / (time.perf_counter() - start), float(np.mean(distinct))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--batch", type=int, default=512)
    args = parser.parse_args()
    import sys

    import torch
    import webdataset as wds

    from synthimg.data.loader import shard_loader
    from synthimg.train.data import expected_distinct

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import device

    summary: dict = {"bench": "loader", "unit": "samples/s", "device": device(), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        urls = write(Path(tmp) / "plain", args.samples, args.size)
        print(f"part 1: {args.samples} JPEGs of {args.size}px in {len(urls)} shards")
        for workers in args.workers:
            plain_ds = wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.split_by_node).decode("pil").to_tuple("jpg", "cls")
            plain = torch.utils.data.DataLoader(plain_ds, batch_size=None, num_workers=workers)
            plain_rate = rate(plain, args.samples)
            ours = torch.utils.data.DataLoader(
                shard_loader(urls, batch_size=1, num_workers=workers).dataset, batch_size=None, num_workers=workers
            )
            ours_rate = rate(ours, args.samples)
            print(f"workers={workers}: plain webdataset {plain_rate:,.0f} samples/s | synthimg {ours_rate:,.0f} samples/s "
                  f"| ratio {ours_rate / plain_rate:.2f}")

        sorted_dir = Path(tmp) / "sorted"
        write_sorted(sorted_dir, args.classes, args.per_class, args.size)
        n = args.classes * args.per_class
        steps = n // args.batch
        iid = expected_distinct(np.full(args.classes, args.per_class), args.batch)
        print(f"part 2: {n} JPEGs of {args.size}px, class-sorted ({args.classes} classes x {args.per_class}, one class "
              f"per shard), batch {args.batch}, {steps} batches, RandomResizedCrop({args.size}); IID expectation "
              f"{iid:.1f} classes per batch")
        iid_epoch(sorted_dir, args.batch, 0, 0, args.size, 1).__next__()  # index the tars once, outside the timing
        for workers in args.workers:
            runs: dict[str, list[tuple[float, float]]] = {"old": [], "new": []}
            for name in ("old", "new", "new", "old"):  # alternate, so neither gets the warmer cache
                make = streaming_epoch if name == "old" else iid_epoch
                runs[name].append(diversity_run(make, sorted_dir, args.batch, workers, args.size, steps))
            (old_rate, old_div), (new_rate, new_div) = (max(runs[k]) for k in ("old", "new"))
            print(f"workers={workers}: streaming (before) {old_rate:,.0f} samples/s, {old_div:.1f} classes/batch | "
                  f"IID {new_rate:,.0f} samples/s, {new_div:.1f} classes/batch | throughput ratio {new_rate / old_rate:.2f}")
            summary["runs"].append({"workers": workers, "ours": round(new_rate, 1), "baseline": round(old_rate, 1),
                                    "ratio": round(new_rate / old_rate, 3), "batch_classes_iid_loader": round(new_div, 2),
                                    "batch_classes_streaming": round(old_div, 2), "batch_classes_expected": round(iid, 2)})
    best = summary["runs"][-1]
    print(json.dumps({**summary, "ours": best["ours"], "baseline": best["baseline"], "ratio": best["ratio"]}))


if __name__ == "__main__":
    main()
