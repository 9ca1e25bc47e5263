"""kNN throughput and recall on 2 cores: batched class queries against a 1M x 768 collection.

    python scripts/bench/knn.py [--n 1000000] [--dim 768] [--queries 2000] [--factory IVF1024,Flat] [--nprobe 8 16 32]

The collection is float32 unit vectors with clustered structure (random centres plus noise),
like CLIP embeddings of a web collection; queries are drawn the same way. Baseline: exact
search (faiss Flat, which is BLAS matmul + top-k) in the same run, which also gives the
ground truth for recall@k.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def clustered(rng: np.random.Generator, n: int, dim: int, centres: np.ndarray, noise: float) -> np.ndarray:
    x = centres[rng.integers(0, len(centres), n)] + noise * rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--factory", default="IVF1024,Flat")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--noise", type=float, default=1.5, help="per-dimension noise around the cluster centres")
    args = parser.parse_args()
    import faiss

    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads")
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4096, args.dim), dtype=np.float32)
    t = time.perf_counter()
    base = np.empty((args.n, args.dim), dtype=np.float32)
    for s in range(0, args.n, 100_000):
        base[s : s + 100_000] = clustered(rng, min(100_000, args.n - s), args.dim, centres, args.noise)
    queries = clustered(rng, args.queries, args.dim, centres, args.noise)
    print(f"data: {args.n} x {args.dim}, 4096 clusters, noise {args.noise}, in {time.perf_counter() - t:.1f}s")

    flat = faiss.IndexFlatIP(args.dim)
    flat.add(base)
    t = time.perf_counter()
    _, truth = flat.search(queries, args.k)
    exact_qps = args.queries / (time.perf_counter() - t)
    print(f"exact (Flat) baseline: {exact_qps:,.0f} queries/s, recall@{args.k} 1.000")
    del flat

    index = faiss.index_factory(args.dim, args.factory, faiss.METRIC_INNER_PRODUCT)
    t = time.perf_counter()
    index.train(base[rng.choice(args.n, min(args.n, 100_000), replace=False)])
    index.add(base)
    print(f"{args.factory}: trained and added in {time.perf_counter() - t:.1f}s")
    for nprobe in args.nprobe:
        index.nprobe = nprobe
        t = time.perf_counter()
        _, ids = index.search(queries, args.k)
        qps = args.queries / (time.perf_counter() - t)
        recall = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(ids, truth)])
        print(f"{args.factory} nprobe {nprobe}: {qps:,.0f} queries/s ({qps / exact_qps:.1f}x exact), "
              f"recall@{args.k} {recall:.3f}")


if __name__ == "__main__":
    main()
