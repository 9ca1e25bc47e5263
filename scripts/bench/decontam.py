"""Decontamination: what the model-free pass catches, and its throughput on 2 cores.

    python scripts/bench/decontam.py --planted        # recall and false positives on the test's planted set
    python scripts/bench/decontam.py [--eval 10000] [--candidates 5000]

0. ``--planted``: the planted set of ``tests/test_curation.py`` (220 evaluation scenes; 20
   copies each exact, recompressed, resized, upscaled, recoloured, flipped and cropped 5-10%
   a side; 600 unrelated scenes), run through ``decontaminate`` with ``--descriptor none``
   for several pHash settings: recall per transform, false positives, and the distance margin.

1. End to end (`synthimg.curation.decontaminate`, pHash pass, no model): decode + hash +
   faiss binary search, candidates/s.
2. Search alone, faiss vs the obvious numpy baseline in the same run:
   - 64-bit hashes: faiss IndexBinaryFlat vs numpy XOR + popcount;
   - 512-d descriptors: faiss IndexFlatIP vs numpy matmul + argmax.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def planted() -> None:
    import json

    from tests.test_curation import scene

    unchecked = {"phash_verify_ncc": -1.0, "phash_verify_colour": 255.0}
    settings = {"pHash 64, whole image (before)": {"phash_bits": 64, "phash_crops": [0.0], "phash_threshold": 0.875,
                                                   **unchecked},
                "pHash 256, 81 crop variants, unconfirmed": {**unchecked},
                "pHash 256, 81 crop variants, confirmed (default)": {}}
    summary = {}
    for family, make in (("scenes", scene), ("plain objects on white", plain_object)):
        print(f"== {family}")
        summary[family] = _planted_family(make, settings)
    best = summary["scenes"]["pHash 256, 81 crop variants, confirmed (default)"]
    before = summary["scenes"]["pHash 64, whole image (before)"]
    print(json.dumps({"bench": "decontam_planted", "ours": best["recall"], "baseline": before["recall"],
                      "ratio": round(best["recall"] / before["recall"], 3), "unit": "recall",
                      "false_positive_rate": best["false_positive_rate"],
                      "plain_false_positive_rate": summary["plain objects on white"][
                          "pHash 256, 81 crop variants, confirmed (default)"]["false_positive_rate"], "device": _device()}))


def _device() -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import device

    return device()


def plain_object(seed: int, size: int = 96):
    """A product-shot stand-in: one object of a few coloured parts, centred on a near-white background."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size, size), tuple(int(x) for x in 235 + rng.integers(0, 20, 3)))
    draw = ImageDraw.Draw(img)
    cx, cy = size / 2 + rng.uniform(-8, 8, 2)
    w, h = rng.uniform(0.2, 0.4, 2) * size
    draw.rectangle([cx - w, cy - h / 2, cx + w, cy + h / 2], fill=tuple(int(x) for x in rng.integers(0, 200, 3)))
    for _ in range(int(rng.integers(2, 5))):  # parts: windows, wheels, stripes
        x, y = cx + rng.uniform(-w, w), cy + rng.uniform(-h / 2, h / 2)
        r = rng.uniform(3, 10)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return img


def _planted_family(scene, settings) -> dict:
    import pandas as pd

    from synthimg.config import CurateConfig
    from synthimg.curation.decontaminate import EvalSource, decontaminate
    from tests.test_curation import CLASSNAMES, TRANSFORMS, write_images

    summary = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        n = 20 * len(TRANSFORMS)
        write_images(root / "eval" / "test", [(scene(i), i % 10) for i in range(n)])
        (root / "eval" / "classnames.txt").write_text("\n".join(CLASSNAMES))
        images, kinds = [], []
        for t, (name, fn) in enumerate(TRANSFORMS.items()):
            for j in range(20):
                images.append((fn(scene(t * 20 + j)), j % 10))
                kinds.append(name)
        images += [(scene(100000 + j), j % 10) for j in range(600)]
        kinds += ["unrelated"] * 600
        keys = write_images(root / "cands", images)
        kind_of = dict(zip(keys, kinds))
        for label, extra in settings.items():
            cfg = CurateConfig(descriptor="none", contact_pairs=0, workers=0, **extra)
            t = time.perf_counter()
            decontaminate(root / "cands", EvalSource(against=root / "eval"), root / label.replace(" ", "_"), cfg,
                          progress=False)
            seconds = time.perf_counter() - t
            scores = pd.read_parquet(root / label.replace(" ", "_") / "decontam_scores.parquet")
            scores["kind"] = scores["key"].map(kind_of)
            hit = scores["phash_match"] != ""
            recall = {k: int(hit[scores["kind"] == k].sum()) for k in TRANSFORMS}
            fp = int(hit[scores["kind"] == "unrelated"].sum())
            bits = cfg.phash_bits
            worst = int(round((1 - scores.loc[scores["kind"] != "unrelated", "phash_sim"].min()) * bits))
            closest = int(round((1 - scores.loc[scores["kind"] == "unrelated", "phash_sim"].max()) * bits))
            print(f"{label}: caught {sum(recall.values())}/{n} planted copies, false positives {fp}/600 "
                  f"({100 * fp / 600:.2f}%); farthest copy {worst}/{bits} bits, nearest unrelated {closest}/{bits} "
                  f"(threshold {round((1 - cfg.phash_threshold) * bits)}); {seconds:.1f}s")
            print("   per transform (of 20): " + ", ".join(f"{k} {v}" for k, v in recall.items()))
            summary[label] = {"recall": sum(recall.values()) / n, "false_positive_rate": fp / 600,
                              "per_transform": recall, "farthest_copy_bits": worst, "nearest_unrelated_bits": closest}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--planted", action="store_true", help="recall / false positives on the planted set")
    parser.add_argument("--eval", type=int, default=10000)
    parser.add_argument("--candidates", type=int, default=5000)
    parser.add_argument("--queries", type=int, default=20000)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import device, summary

    if args.planted:
        planted()  # ends in its own JSON line
        return
    import faiss

    from synthimg.config import CurateConfig
    from synthimg.curation.decontaminate import EvalSource, decontaminate
    from tests.test_curation import scene, write_images

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        write_images(root / "eval", [(scene(i), i % 10) for i in range(args.eval)])
        write_images(root / "cands", [(scene(10**6 + i), i % 10) for i in range(args.candidates)])
        print(f"wrote {args.eval} eval + {args.candidates} candidate images (64 px) in {time.perf_counter() - t:.1f}s")
        cfg = CurateConfig(descriptor="none", phash=True, contact_pairs=0, workers=2, batch_size=256)
        t = time.perf_counter()
        stats = decontaminate(root / "cands", EvalSource(against=root / "eval"), root / "out", cfg, progress=False)
        total = time.perf_counter() - t
        print(f"end to end (pHash, 2 workers): {stats['candidates_per_sec']:,.0f} candidates/s in the candidate pass; "
              f"{total:.1f}s total including hashing the {args.eval} eval images")

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (args.eval, 8), dtype=np.uint8)
    queries = rng.integers(0, 256, (args.queries, 8), dtype=np.uint8)
    index = faiss.IndexBinaryFlat(64)
    index.add(base)
    t = time.perf_counter()
    index.search(queries, 1)
    faiss_s = time.perf_counter() - t
    base64, q64 = base.view(np.uint64)[:, 0], queries.view(np.uint64)[:, 0]
    t = time.perf_counter()
    for start in range(0, len(q64), 512):
        x = np.bitwise_xor(q64[start:start + 512, None], base64[None, :])
        np.bitwise_count(x).min(axis=1)
    numpy_s = time.perf_counter() - t
    hash_faiss_qps, hash_numpy_qps = args.queries / faiss_s, args.queries / numpy_s
    print(f"hash search {args.queries} x {args.eval}: faiss {args.queries / faiss_s:,.0f} q/s | numpy "
          f"{args.queries / numpy_s:,.0f} q/s | ratio {numpy_s / faiss_s:.1f}x")

    d = 512
    base_f = rng.standard_normal((args.eval, d)).astype(np.float32)
    base_f /= np.linalg.norm(base_f, axis=1, keepdims=True)
    q_f = rng.standard_normal((args.queries, d)).astype(np.float32)
    q_f /= np.linalg.norm(q_f, axis=1, keepdims=True)
    flat = faiss.IndexFlatIP(d)
    flat.add(base_f)
    t = time.perf_counter()
    flat.search(q_f, 1)
    faiss_s = time.perf_counter() - t
    t = time.perf_counter()
    for start in range(0, len(q_f), 1024):
        (q_f[start:start + 1024] @ base_f.T).argmax(axis=1)
    numpy_s = time.perf_counter() - t
    print(f"512-d cosine search {args.queries} x {args.eval}: faiss {args.queries / faiss_s:,.0f} q/s | numpy "
          f"{args.queries / numpy_s:,.0f} q/s | ratio {numpy_s / faiss_s:.1f}x")
    summary("decontam", hash_faiss_qps, hash_numpy_qps, "hash queries/s", device(),
            candidates_per_sec=round(stats["candidates_per_sec"], 1), cosine_faiss_qps=round(args.queries / faiss_s, 1),
            cosine_numpy_qps=round(args.queries / numpy_s, 1))


if __name__ == "__main__":
    main()
