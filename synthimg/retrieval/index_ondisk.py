"""``index build --embeddings``: an IVF index over released embeddings, filled chunk by chunk, its lists on disk.

The input is clip-retrieval's inference layout, which is how LAION released its embeddings:
``EMB/img_emb/*.npy``, ``EMB/text_emb/*.npy`` and ``EMB/metadata/*.parquet``, the k-th files
of each aligned row by row (names sorted by their trailing number). Three resumable steps,
as autofaiss builds LAION's indexes:

1. **train**: the factory's index trained on ``train_samples`` vectors drawn (seeded) from all
   files through memory maps;
2. **fill**: every ``chunk_rows`` vectors are added, with their global row ids, to a copy of
   the trained index and written as a part (``_build/KIND/part-NNNNN.index``); a rerun skips
   finished parts;
3. **merge**: ``faiss.contrib.ondisk.merge_ondisk`` joins the parts' inverted lists into
   ``KIND.ivfdata``; ``KIND.index`` holds the quantiser and refers to it. Served with
   ``IO_FLAG_MMAP | IO_FLAG_ONDISK_SAME_DIR``, so the lists stay on disk and the folder can move.

Peak memory is the training sample, one chunk and the quantiser: it does not grow with N.
The metadata files are linked into ``OUT/metadata/`` in order, never loaded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from synthimg.atomic import atomic_path, atomic_write
from synthimg.config import IndexConfig
from synthimg.errors import SynthimgError
from synthimg.pause import pause_point

FOLDERS = {"image": "img_emb", "text": "text_emb"}


def _number(path: Path) -> tuple[int, str]:
    found = re.findall(r"\d+", path.stem)
    return (int(found[-1]) if found else -1, path.name)


def released_files(emb: Path) -> tuple[dict[str, list[Path]], list[Path]]:
    """The embedding files per kind and the metadata files, in their aligned order."""
    emb = Path(emb)
    kinds = {kind: sorted((emb / sub).glob("*.npy"), key=_number) for kind, sub in FOLDERS.items()
             if (emb / sub).is_dir()}
    kinds = {k: v for k, v in kinds.items() if v}
    meta = sorted((emb / "metadata").glob("*.parquet"), key=_number) if (emb / "metadata").is_dir() else []
    if not kinds:
        raise SynthimgError(f"no img_emb/*.npy or text_emb/*.npy under {emb} (clip-retrieval's inference layout)")
    return kinds, meta


def _shapes(files: list[Path]) -> list[tuple[int, int]]:
    shapes = []
    for f in files:
        try:
            arr = np.load(f, mmap_mode="r")
        except (ValueError, OSError) as err:
            raise SynthimgError(f"{f} is not a readable .npy file ({err})") from None
        if arr.ndim != 2:
            raise SynthimgError(f"{f} holds an array of shape {arr.shape}, not (rows, dim)")
        shapes.append((int(arr.shape[0]), int(arr.shape[1])))
    if len({d for _, d in shapes}) > 1:
        raise SynthimgError(f"embedding files of different widths: {sorted({d for _, d in shapes})}")
    return shapes


def _rows(files: list[Path], starts: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Float32, L2-normalised rows ``ids`` (sorted, global) read through memory maps.

    A contiguous range (a chunk) is sliced from the one or two files it spans; a scattered
    sample is gathered file by file.
    """
    import faiss

    out = []
    lo, hi = np.searchsorted(starts, [ids[0], ids[-1]], side="right") - 1
    contiguous = ids[-1] - ids[0] + 1 == len(ids)
    for f in range(int(lo), int(hi) + 1):
        mm = np.load(files[f], mmap_mode="r")
        if contiguous:
            a, b = max(ids[0], starts[f]) - starts[f], min(ids[-1] + 1, starts[f + 1]) - starts[f]
            out.append(np.asarray(mm[a:b], dtype=np.float32))
        else:
            sel = ids[(ids >= starts[f]) & (ids < starts[f + 1])] - starts[f]
            if len(sel):
                out.append(np.asarray(mm[sel], dtype=np.float32))
    x = np.ascontiguousarray(np.concatenate(out))
    faiss.normalize_L2(x)
    return x


def _ivf(factory: str, dim: int) -> Any:
    """An empty IVF index (optionally behind a pre-transform such as OPQ): what merge_ondisk can fill."""
    import faiss

    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        raise SynthimgError(f"faiss cannot build {factory!r}: {str(err).strip().splitlines()[-1]}") from None
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexPreTransform) else index
    if not isinstance(inner, faiss.IndexIVF) or isinstance(inner, faiss.IndexIVFPQR):
        raise SynthimgError(f"index build --embeddings needs an IVF factory with lists on disk "
                            f"(e.g. IVF16384,PQ64 or OPQ64_768,IVF16384_HNSW32,PQ64), not {factory!r}")
    return index


def build_kind(kind: str, files: list[Path], out: Path, cfg: IndexConfig, echo: Any = print,
               shapes: list[tuple[int, int]] | None = None) -> dict[str, Any]:
    """Train, fill and merge one kind's index; every step is skipped when its output exists.

    ``shapes`` are the files' (rows, dim), when the caller has read them already."""
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    from synthimg.progress import progress_bar

    shapes = shapes or _shapes(files)
    dim = shapes[0][1]
    starts = np.cumsum([0] + [n for n, _ in shapes]).astype(np.int64)
    total = int(starts[-1])
    final = out / f"{kind}.index"
    work = out / "_build" / kind
    plan = {"factory": cfg.factory, "train_samples": cfg.train_samples, "chunk_rows": cfg.chunk_rows,
            "files": [str(Path(f).resolve()) for f in files], "rows": [n for n, _ in shapes], "dim": dim}
    plan_path = (work if not final.is_file() else out) / f"{kind}_plan.json"
    if final.is_file():
        _same_plan(out / f"{kind}_plan.json", plan, out)
        shutil.rmtree(work, ignore_errors=True)  # a build killed after its index was written
        return {"count": total, "dim": dim, "resumed": "done"}
    work.mkdir(parents=True, exist_ok=True)
    _same_plan(plan_path, plan, out)
    atomic_write(plan_path, json.dumps(plan))
    trained = work / "trained.index"
    if not trained.is_file():
        index = _ivf(cfg.factory, dim)
        nlist = faiss.extract_index_ivf(index).nlist
        if min(total, cfg.train_samples) < nlist:
            raise SynthimgError(f"{cfg.factory} has {nlist:,} lists but only {min(total, cfg.train_samples):,} "
                                f"training vectors: raise index.train_samples (>= 39 per list) or use fewer lists")
        if min(total, cfg.train_samples) < 39 * nlist:
            echo(f"{kind}: warning: {min(total, cfg.train_samples):,} training vectors for {nlist:,} lists "
                 f"(faiss wants >= 39 per list)")
        sample = np.sort(np.random.default_rng(0).choice(total, min(total, cfg.train_samples), replace=False))
        echo(f"{kind}: training {cfg.factory} on {len(sample):,} of {total:,} vectors")
        index.train(_rows(files, starts, sample))
        with atomic_path(trained) as tmp:
            faiss.write_index(index, str(tmp))
    chunks = [(s, min(s + cfg.chunk_rows, total)) for s in range(0, total, cfg.chunk_rows)]
    parts = [work / f"part-{i:05d}.index" for i in range(len(chunks))]
    todo = [i for i, p in enumerate(parts) if not p.is_file()]
    with progress_bar(len(chunks), f"{kind} index: parts") as bar:
        bar.advance(len(chunks) - len(todo))
        for i in todo:
            lo, hi = chunks[i]
            index = faiss.read_index(str(trained))
            ids = np.arange(lo, hi, dtype=np.int64)
            index.add_with_ids(_rows(files, starts, ids), ids)
            with atomic_path(parts[i]) as tmp:
                faiss.write_index(index, str(tmp))
            del index
            bar.advance()
            pause_point(f"index-part:{i}")
    echo(f"{kind}: merging {len(parts)} parts into {kind}.ivfdata")
    index = faiss.read_index(str(trained))
    data = out / f"{kind}.ivfdata"
    data.unlink(missing_ok=True)  # a merge cut short leaves a partial file
    merge_ondisk(index, [str(p) for p in parts], str(data))
    os.replace(plan_path, out / f"{kind}_plan.json")  # the finished index's plan, checked by every rerun
    with atomic_path(final) as tmp:
        faiss.write_index(index, str(tmp))
    shutil.rmtree(work, ignore_errors=True)
    return {"count": total, "dim": dim, "parts": len(parts)}


def _same_plan(path: Path, plan: dict[str, Any], out: Path) -> None:
    """A rerun must build what the first run started: same factory, sample, chunks and files."""
    if not path.is_file():
        return
    before = json.loads(path.read_text())
    changed = [k for k in plan if before.get(k) != plan[k]]
    if changed:
        raise SynthimgError(f"{out} was started with other settings ({', '.join(changed)} changed): "
                            f"build into a new --out, or delete it to start over")


def link_metadata(meta: list[Path], out: Path, counts: list[int]) -> None:
    """``OUT/metadata/NNNNN.parquet`` -> the released files, checked to align with the embeddings."""
    from synthimg.retrieval.metadata_rows import ParquetRows

    rows = ParquetRows(meta).file_counts() if meta else []
    if rows and rows != counts:
        raise SynthimgError(f"metadata rows per file {rows[:5]}... do not match the embeddings' {counts[:5]}...")
    folder = out / "metadata"
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(meta):
        link = folder / f"{i:05d}.parquet"
        if not link.exists():
            os.symlink(Path(f).resolve(), link)


def build_from_embeddings(emb: str | os.PathLike[str], out: str | os.PathLike[str], cfg: IndexConfig,
                          echo: Any = print) -> dict[str, Any]:
    """Both kinds' on-disk indexes, the linked metadata and ``info.json``; resumable."""
    start = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kinds, meta = released_files(Path(emb))
    if not meta:
        raise SynthimgError(f"no metadata/*.parquet under {emb}: the index would serve rows without urls")
    info: dict[str, Any] = {"model": cfg.model, "pretrained": cfg.pretrained, "factory": cfg.factory,
                            "source": str(Path(emb).resolve()), "ondisk": True, "kinds": {}}
    shapes = {kind: _shapes(files) for kind, files in kinds.items()}  # the .npy headers, read once
    counts = [n for n, _ in next(iter(shapes.values()))]
    for kind, kind_shapes in shapes.items():
        if [n for n, _ in kind_shapes] != counts:
            raise SynthimgError(f"{FOLDERS[kind]} files do not align row for row with the other embeddings")
    link_metadata(meta, out, counts)
    width = next(iter(shapes.values()))[0][1]
    expected = model_width(cfg.model)
    if expected is not None and expected != width:
        raise SynthimgError(f"the embeddings are {width}-d but index.model {cfg.model} embeds {expected}-d: "
                            f"name the model that made them (--model/--pretrained), queries are embedded with it")
    for kind, files in kinds.items():
        info["kinds"][kind] = build_kind(kind, files, out, cfg, echo, shapes[kind])
    if (out / "_build").is_dir() and not any((out / "_build").iterdir()):
        (out / "_build").rmdir()
    stats = {"count": max(k["count"] for k in info["kinds"].values()), "kinds": info["kinds"], "factory": cfg.factory,
             "build_seconds": round(time.time() - start, 3), "gpu_seconds": 0.0}
    atomic_write(out / "index_stats.json", json.dumps(stats, indent=1))
    atomic_write(out / "info.json", json.dumps(info, indent=1))  # last: the study's marker that the step is done
    return info


def model_width(model: str) -> int | None:
    """The open_clip model's embedding width from its config, or None when it has none (hf-hub, ...)."""
    import open_clip

    from synthimg.models.clip import register_tiny_configs

    register_tiny_configs()
    cfg = open_clip.get_model_config(model)
    return int(cfg["embed_dim"]) if cfg and "embed_dim" in cfg else None


def footprint(factory: str, n: int, dim: int) -> dict[str, float]:
    """Bytes an index of ``n`` vectors needs: on disk (codes + ids in the lists, or flat storage)
    and in RAM when served memory-mapped (the quantiser, transforms and codebooks)."""
    import faiss

    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    try:
        ivf = faiss.extract_index_ivf(index)
    except (RuntimeError, TypeError):
        per = 4 * dim if "Flat" in factory else max(1, getattr(index, "code_size", 4 * dim))
        return {"disk_bytes": float(n) * per, "ram_bytes": float(n) * per, "ondisk": False}
    quantiser = ivf.nlist * dim * 4.0
    if "HNSW" in factory:
        m = int(re.search(r"HNSW(\d+)", factory).group(1)) if re.search(r"HNSW(\d+)", factory) else 32
        quantiser += ivf.nlist * m * 2 * 4.0  # links, layer 0 holds 2M neighbours
    transforms = dim * dim * 4.0 if "OPQ" in factory or "PCA" in factory else 0.0
    refine = float(n) * 4 * dim if "RFlat" in factory or "Refine" in factory else 0.0  # kept in RAM
    return {"disk_bytes": float(n) * (ivf.code_size + 8), "ram_bytes": quantiser + transforms + refine + float(1 << 20),
            "ondisk": True, "nlist": int(ivf.nlist), "code_size": int(ivf.code_size), "quantiser_bytes": quantiser}
