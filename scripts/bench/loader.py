"""Shard reading throughput: synthimg's loader vs plain webdataset, same shards, same run.

    python scripts/bench/loader.py [--samples 4000] [--size 64] [--workers 0 2]

Both decode every image fully to RGB PIL; ours also groups per tar, counts skips and
splits by node/worker. Prints samples/s and the ratio ours / plain.
"""

from __future__ import annotations

import argparse
import io
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


def rate(iterable, n_expected: int) -> float:
    start = time.perf_counter()
    n = sum(1 for _ in iterable)
    assert n == n_expected, (n, n_expected)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()
    import torch
    import webdataset as wds

    from synthimg.data.loader import shard_loader

    with tempfile.TemporaryDirectory() as tmp:
        urls = write(Path(tmp), args.samples, args.size)
        print(f"{args.samples} JPEGs of {args.size}px in {len(urls)} shards")
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


if __name__ == "__main__":
    main()
