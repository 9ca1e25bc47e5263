"""``index build --embeddings`` at 1M and 4M vectors: peak memory must not grow with N.

    python scripts/bench/index_build.py [--sizes 1000000 4000000] [--factory IVF1024,PQ64]

Writes clip-retrieval's inference layout (``img_emb/*.npy`` float16 as LAION released them,
250K rows per file, and aligned ``metadata/*.parquet``) of clustered 768-d unit vectors, runs
``synthimg index build --embeddings`` in a child process per size and reads the child's peak
RSS from the kernel (``wait4``). Then opens the result memory-mapped (lists on disk) as
``index serve`` does and checks that 1,000 stored vectors find their own row's URL. The
baseline is the same build at the smallest size: the ratio of peak RSS is the claim (<= 1.2).
The last line is JSON.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from _common import device, summary  # noqa: E402

FILE_ROWS = 250_000


def write_released(root: Path, n: int, dim: int, seed: int = 0) -> None:
    import pandas as pd

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4096, dim), dtype=np.float32)
    for sub in ("img_emb", "metadata"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for f, start in enumerate(range(0, n, FILE_ROWS)):
        rows = min(FILE_ROWS, n - start)
        x = centres[rng.integers(0, 4096, rows)] + 1.5 * rng.standard_normal((rows, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        np.save(root / "img_emb" / f"img_emb_{f}.npy", x.astype(np.float16))
        pd.DataFrame({"url": [f"http://x.invalid/{start + i}" for i in range(rows)],
                      "caption": [f"caption {start + i}" for i in range(rows)]}).to_parquet(
            root / "metadata" / f"metadata_{f}.parquet", row_group_size=10_000)


def build(emb: Path, out: Path, factory: str, train: int, chunk: int) -> tuple[float, float]:
    """Seconds and peak RSS (GB) of one ``index build --embeddings`` child process."""
    argv = [sys.executable, "-m", "synthimg", "-q", "index", "build", "--embeddings", str(emb), "--out", str(out),
            "--factory", factory, "--model", "ViT-L-14", "--pretrained", "openai",
            f"index.train_samples={train}", f"index.chunk_rows={chunk}"]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"index build failed: {' '.join(argv)}")
    return time.perf_counter() - start, usage.ru_maxrss / 1e6  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 4_000_000])
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--factory", default="IVF1024,PQ64")
    parser.add_argument("--train", type=int, default=65_536)
    parser.add_argument("--chunk", type=int, default=250_000)
    parser.add_argument("--workdir", default=None, help="where to write the embeddings (default: a temp dir)")
    args = parser.parse_args()
    from synthimg.retrieval.index import LocalIndex

    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for n in args.sizes:
            emb, out = Path(tmp) / f"emb{n}", Path(tmp) / f"idx{n}"
            t = time.perf_counter()
            write_released(emb, n, args.dim)
            written = time.perf_counter() - t
            seconds, rss = build(emb, out, args.factory, args.train, args.chunk)
            index = LocalIndex(out, nprobe=32)
            probe = np.random.default_rng(1).choice(n, 1000, replace=False)
            files = sorted((emb / "img_emb").glob("*.npy"), key=lambda p: int(p.stem.split("_")[-1]))
            x = np.stack([np.load(files[i // FILE_ROWS], mmap_mode="r")[i % FILE_ROWS] for i in probe]).astype(np.float32)
            t = time.perf_counter()
            hits = index.search(x, 10, ("image",))
            qps = len(probe) / (time.perf_counter() - t)
            found = np.mean([any(h["url"] == f"http://x.invalid/{i}" for h in q) for i, q in zip(probe, hits)])
            disk = sum(p.stat().st_size for p in out.iterdir() if p.is_file()) / 1e9
            rows.append({"n": n, "build_s": seconds, "peak_rss_gb": rss, "disk_gb": disk, "serve_qps": qps,
                         "self_found_at_10": float(found)})
            print(f"{n:>10,} vectors ({written:.0f}s to write): build {seconds:.0f}s, peak RSS {rss:.2f} GB, "
                  f"index {disk:.2f} GB on disk; served memory-mapped: {qps:,.0f} queries/s (with metadata rows), "
                  f"own row in the top 10 for {found:.1%}")
            del index
    small, large = rows[0], rows[-1]
    summary("index_build", large["peak_rss_gb"], small["peak_rss_gb"], "GB peak RSS", device(),
            sizes=[r["n"] for r in rows], rows=[{k: round(v, 3) for k, v in r.items()} for r in rows],
            factory=args.factory, chunk_rows=args.chunk, train_samples=args.train)


if __name__ == "__main__":
    main()
