"""Local CLIP indexes: embed a collection with open_clip, build faiss, search in process (``synthimg index``).

Layout of an index folder (clip-retrieval's, so its LAION indexes open too):
``image.index`` and/or ``text.index`` (faiss, inner product on normalised vectors),
``metadata/*.parquet`` (rows aligned with the index ids: url, caption, ...), and our
``info.json`` (embedder, dimension, counts). Embeddings are computed shard by shard into
``parts/`` so an interrupted build resumes; under torchrun each rank embeds its shards.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from synthimg.atomic import atomic_path
from synthimg.config import Config, IndexConfig, save_resolved
from synthimg.errors import SynthimgError
from synthimg.retrieval.metadata_rows import ParquetRows
from synthimg.stage import Stats

KINDS = ("image", "text")


def _save_part(folder: Path, name: str, emb: np.ndarray, meta: pd.DataFrame) -> None:
    with atomic_path(folder / f"{name}.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, emb.astype(np.float32))
    with atomic_path(folder / f"{name}.parquet") as tmp:  # the metadata, written last, marks the part done
        meta.to_parquet(tmp, index=False)


def embed_shards(shards: str | Path, out: Path, cfg: IndexConfig, progress: bool = True) -> int:
    """Image embeddings of every sample of a shard folder (ours or img2dataset's), one part per shard."""
    import torch

    from synthimg import dist
    from synthimg.data.loader import shard_pipeline
    from synthimg.data.shards import list_shards
    from synthimg.models.clip import create_clip
    from synthimg.runtime import autocast

    rank, world = dist.init()
    device = dist.device()
    parts = out / "parts" / "image"
    todo = [t for i, t in enumerate(list_shards(shards)) if i % world == rank
            and not (parts / f"{Path(t).stem}.parquet").is_file()]
    if not todo:
        return 0
    bundle = create_clip(cfg.model, cfg.pretrained, device=device)
    bundle.model.eval()
    done = 0
    for tar in todo:
        embs, rows = [], []
        loader = torch.utils.data.DataLoader(shard_pipeline([tar], transform=bundle.preprocess_val, with_meta=True),
                                             batch_size=cfg.batch_size, num_workers=0, collate_fn=_records)
        for batch in loader:
            with torch.no_grad(), autocast(device):
                e = bundle.model.encode_image(torch.stack([r["image"] for r in batch]).to(device), normalize=True)
            embs.append(e.float().cpu().numpy())
            for r in batch:
                m = r["meta"]
                rows.append({"key": r["key"], "shard": Path(tar).name, "url": m.get("url") or f"{Path(tar).name}#{r['key']}",
                             "caption": r["text"] or m.get("caption", ""), "NSFW": m.get("NSFW")})
        if rows:
            _save_part(parts, Path(tar).stem, np.concatenate(embs), pd.DataFrame(rows))
            done += len(rows)
    return done


def _records(batch: list[Any]) -> list[Any]:
    return batch


def embed_captions(metadata: str, out: Path, cfg: IndexConfig, chunk: int = 100_000) -> int:
    """Text embeddings of a caption parquet (url, caption): the caption index."""
    import glob

    import torch
    import torch.nn.functional as F

    from synthimg import dist
    from synthimg.models.clip import create_clip

    files = sorted(glob.glob(metadata)) if any(ch in metadata for ch in "*?[") else [metadata]
    if not files or not all(Path(f).is_file() for f in files):
        raise SynthimgError(f"caption metadata not found: {metadata}")
    device = dist.device()
    bundle = None
    parts = out / "parts" / "text"
    done = 0
    for f in files:
        df = pd.read_parquet(f, columns=None)
        if not {"url", "caption"} <= set(df.columns):
            raise SynthimgError(f"{f} needs url and caption columns")
        for start in range(0, len(df), chunk):
            name = f"{Path(f).stem}-{start:012d}"
            if (parts / f"{name}.parquet").is_file():
                continue
            bundle = bundle or create_clip(cfg.model, cfg.pretrained, device=device)
            sub = df.iloc[start : start + chunk]
            embs = []
            for b in range(0, len(sub), cfg.batch_size):
                with torch.no_grad():
                    tokens = bundle.tokenizer([str(c) for c in sub["caption"].iloc[b : b + cfg.batch_size]]).to(device)
                    embs.append(F.normalize(bundle.model.encode_text(tokens).float(), dim=-1).cpu().numpy())
            keep = [c for c in ("url", "caption", "NSFW", "key") if c in sub]
            _save_part(parts, name, np.concatenate(embs), sub[keep].reset_index(drop=True))
            done += len(sub)
    return done


def build_index(out: Path, cfg: IndexConfig, embed_gpu_seconds: float = 0.0) -> dict[str, Any]:
    """Concatenate the parts (sorted by name) into faiss indexes and aligned metadata.

    ``index_stats.json`` records the device-seconds of embedding (``embed_gpu_seconds``,
    carried over interrupted runs) and of building, which the report charges to the arms
    that query the index.
    """
    import time

    import faiss

    from synthimg.runtime import carried_gpu_seconds

    start = time.time()
    info: dict[str, Any] = {"model": cfg.model, "pretrained": cfg.pretrained, "factory": cfg.factory, "kinds": {}}
    for kind in KINDS:
        parts = sorted((out / "parts" / kind).glob("*.parquet")) if (out / "parts" / kind).is_dir() else []
        if not parts:
            continue
        meta = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
        x = np.ascontiguousarray(np.concatenate([np.load(p.with_suffix("").with_suffix(".npy")) for p in parts]))
        index = faiss.index_factory(x.shape[1], cfg.factory, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            index.train(x)
        index.add(x)
        faiss.write_index(index, str(out / f"{kind}.index"))
        meta_dir = out / "metadata" if kind == "image" else out / "metadata_text"
        meta_dir.mkdir(parents=True, exist_ok=True)
        meta.to_parquet(meta_dir / "0000.parquet", index=False)
        info["kinds"][kind] = {"count": int(index.ntotal), "dim": int(x.shape[1])}
    if not info["kinds"]:
        raise SynthimgError(f"nothing embedded in {out}")
    (out / "info.json").write_text(json.dumps(info, indent=1))
    stats_path = out / "index_stats.json"
    stats = {"count": sum(k["count"] for k in info["kinds"].values()), "kinds": info["kinds"], "factory": cfg.factory,
             "build_seconds": round(time.time() - start, 3),
             "gpu_seconds": carried_gpu_seconds(stats_path, embed_gpu_seconds + time.time() - start)}
    stats_path.write_text(json.dumps(stats, indent=1))
    return info


def run(cfg: Config, out: str | os.PathLike[str], shards: str | os.PathLike[str] | None = None,
        captions: str | None = None, embeddings: str | os.PathLike[str] | None = None) -> Stats:
    """``index build`` under one process, torchrun or srun: every rank embeds its shards, rank 0
    embeds the captions, builds the faiss indexes and writes ``info.json`` and the config.

    Returns ``info.json``'s content on rank 0 and ``{"rank": r}`` elsewhere.
    """
    import time

    from synthimg import dist

    if embeddings is not None:
        if shards is not None or captions is not None:
            raise SynthimgError("--embeddings builds from released embeddings: give it alone, not with --shards/--captions")
        from synthimg.retrieval.index_ondisk import build_from_embeddings

        info = build_from_embeddings(embeddings, out, cfg.index)
        save_resolved(cfg, out)
        return info
    if shards is None and captions is None:
        raise SynthimgError("give --shards (image index), --captions (caption index) or --embeddings (released)")
    out = Path(out)
    rank, world = dist.init()
    start = time.time()
    if shards is not None:
        embed_shards(shards, out, cfg.index)
    dist.barrier()
    embed_seconds = (time.time() - start) * world
    if rank != 0:
        return {"rank": rank}
    start = time.time()
    if captions is not None:
        embed_captions(captions, out, cfg.index)
    info = build_index(out, cfg.index, embed_seconds + time.time() - start)
    save_resolved(cfg, out)
    return info


def open_index(path: Path) -> Any:
    """A faiss index memory-mapped; one whose inverted lists live on disk (autofaiss's merged
    indexes, ``index build --embeddings``) maps its ``.ivfdata``, looked up beside the index file."""
    import faiss

    index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    try:
        lists = faiss.extract_index_ivf(index).invlists
    except (RuntimeError, TypeError):
        return index
    if isinstance(faiss.downcast_InvertedLists(lists), faiss.OnDiskInvertedLists):
        # the lists map themselves; IO_FLAG_MMAP on top of them breaks search (faiss 1.15)
        index = faiss.read_index(str(path), faiss.IO_FLAG_READ_ONLY | faiss.IO_FLAG_ONDISK_SAME_DIR)
    return index


def set_nprobe(index: Any, nprobe: int) -> None:
    """``nprobe`` on an IVF index, also inside a pre-transform (OPQ) or refine wrapper; HNSW coarse
    quantisers search at least as wide."""
    import faiss

    try:
        ivf = faiss.extract_index_ivf(index)
    except (RuntimeError, TypeError):
        return
    ivf.nprobe = nprobe
    quantizer = faiss.downcast_index(ivf.quantizer)
    if hasattr(quantizer, "hnsw"):
        quantizer.hnsw.efSearch = max(quantizer.hnsw.efSearch, 2 * nprobe)


class LocalIndex:
    """Search a local index folder in process (ours, or a clip-retrieval index with our info.json or explicit model)."""

    def __init__(self, folder: str | Path, model: str | None = None, pretrained: str | None = None, nprobe: int = 64):

        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise SynthimgError(f"index folder not found: {folder}")
        info_path = self.folder / "info.json"
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        self.model_name = model or info.get("model")
        self.pretrained = pretrained if pretrained is not None else info.get("pretrained")
        if not self.model_name:
            raise SynthimgError(f"{folder} has no info.json: name the embedder (index.model / index.pretrained)")
        self.indexes, self.metadata = {}, {}
        for kind, meta_dir in (("image", "metadata"), ("text", "metadata_text")):
            path = self.folder / f"{kind}.index"
            if path.is_file():
                index = open_index(path)
                set_nprobe(index, nprobe)
                self.indexes[kind] = index
                if kind == "text" and not (self.folder / meta_dir).is_dir():
                    meta_dir = "metadata"  # clip-retrieval's layout: both indexes are aligned with one metadata
                files = sorted((self.folder / meta_dir).glob("*.parquet"))
                shared = next((m for m in self.metadata.values() if m is not None and m.files == files), None)
                self.metadata[kind] = shared or (ParquetRows(files) if files else None)  # one reader per folder
        if not self.indexes:
            raise SynthimgError(f"no image.index or text.index in {folder}")
        self._bundle = None

    def embed_text(self, texts: list[str]) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        from synthimg.models.clip import create_clip

        if self._bundle is None:
            self._bundle = create_clip(self.model_name, self.pretrained)
            self._bundle.model.eval()
        with torch.no_grad():
            return F.normalize(self._bundle.model.encode_text(self._bundle.tokenizer(texts)).float(), dim=-1).numpy()

    def embed_images(self, images: list[Any]) -> np.ndarray:
        """Normalised image embeddings of PIL images, with the index's own model and preprocessing."""
        import torch
        import torch.nn.functional as F

        from synthimg.models.clip import create_clip

        if self._bundle is None:
            self._bundle = create_clip(self.model_name, self.pretrained)
            self._bundle.model.eval()
        batch = torch.stack([self._bundle.preprocess_val(img.convert("RGB")) for img in images])
        with torch.no_grad():
            return F.normalize(self._bundle.model.encode_image(batch).float(), dim=-1).numpy()

    def search_and_reconstruct(self, vector: np.ndarray, kind: str, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One query's top-``k`` of one index: (similarities, row ids, the rows' stored embeddings), -1 rows dropped."""
        if kind not in self.indexes:
            raise SynthimgError(f"{self.folder.name} has no {kind} index (it has: {', '.join(self.indexes)})")
        query = np.ascontiguousarray(vector.reshape(1, -1), dtype=np.float32)
        sims, ids, emb = self.indexes[kind].search_and_reconstruct(query, k)
        keep = ids[0] >= 0
        return sims[0][keep], ids[0][keep], emb[0][keep]

    def rows(self, kind: str, ids: list[int]) -> list[dict[str, Any]]:
        """The metadata rows (every column) of row ids of one index; ids past the end give empty rows."""
        meta = self.metadata.get(kind)
        return [{} for _ in ids] if meta is None else meta.take(ids)

    def search(self, vectors: np.ndarray, k: int, kinds: tuple[str, ...] = KINDS) -> list[list[dict[str, Any]]]:
        """Per query vector, the top-``k`` of **each** requested index: the union, never merged by cosine.

        Text-to-text cosines (caption index) run far higher than text-to-image ones, so sorting
        the two together would keep almost only caption hits. Each hit records its ``index``
        and ``rank`` there; ids are namespaced (``image:17``, ``text:17``) since row 17 of one
        index is not row 17 of the other. The list interleaves the indexes by rank.
        """
        missing = [kind for kind in kinds if kind not in self.indexes]
        if missing:
            have = ", ".join(self.indexes)
            raise SynthimgError(f"{self.folder} has no {' or '.join(missing)} index (it has: {have}); "
                                f"set retrieve.indexes to what it holds")
        out: list[list[dict[str, Any]]] = [[] for _ in range(len(vectors))]
        for kind in kinds:
            sims, ids = self.indexes[kind].search(np.ascontiguousarray(vectors, dtype=np.float32), k)
            every = iter(self.rows(kind, ids[ids >= 0].tolist()))  # one metadata read for all queries
            for q in range(len(vectors)):
                keep = ids[q] >= 0
                rows = [next(every) for _ in range(int(keep.sum()))]
                for rank, (s, i, row) in enumerate(zip(sims[q][keep], ids[q][keep], rows)):
                    out[q].append({"id": f"{kind}:{int(i)}", "row": int(i), "upstream_id": str(int(i)), "similarity": float(s),
                                   "url": str(row.get("url", f"{kind}:{i}")), "caption": str(row.get("caption", "")),
                                   "index": kind, "rank": rank, "NSFW": row.get("NSFW")})
        order = {kind: n for n, kind in enumerate(kinds)}
        return [sorted(hits, key=lambda h: (h["rank"], order[h["index"]])) for hits in out]
