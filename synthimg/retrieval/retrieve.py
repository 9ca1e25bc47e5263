"""Per-class candidates from a backend (``synthimg retrieve``): ``knn`` (HTTP), ``local`` (faiss), ``substring``.

Semantic backends query each class with each of its retrieval templates (the paper: ImageNet
80, Aircraft 2, Cars 8, DTD 8, Flowers 1), k per query, searching the image index and (local)
the caption index, then merge. NSFW-tagged rows are dropped when the metadata has such a
column; candidates are deduplicated by id/url within a class. A service drops duplicates and
unsafe items after its kNN step, so short classes are asked again with a larger k until the
target is met or the service has no more.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd

from synthimg.config import RetrieveConfig
from synthimg.errors import SynthimgError
from synthimg.registry import Registry
from synthimg.tasks.spec import TaskSpec

BACKENDS = Registry("retrieval backend")
COLUMNS = ["class_id", "class_name", "url", "caption", "query", "similarity", "backend", "upstream_id"]


def _nsfw(value: Any) -> bool:
    return value is not None and value == value and str(value).upper() in ("NSFW", "TRUE", "1", "UNSURE")


class _Collector:
    """Deduplicated candidates per class, with the counts retrieve_stats.json reports."""

    def __init__(self, task: TaskSpec, backend: str):
        self.task, self.backend = task, backend
        self.rows: dict[int, dict[str, dict[str, Any]]] = {c: {} for c in range(task.num_classes)}
        self.stats = {c: {"queries": 0, "returned": 0, "nsfw_dropped": 0} for c in range(task.num_classes)}

    def add(self, c: int, query: str, hits: list[dict[str, Any]]) -> None:
        self.stats[c]["queries"] += 1
        self.stats[c]["returned"] += len(hits)
        for h in hits:
            if _nsfw(h.get("NSFW")):
                self.stats[c]["nsfw_dropped"] += 1
                continue
            key = str(h.get("id") if h.get("id") is not None else h["url"])
            if key in self.rows[c]:  # dedup by id here, by url in frame()
                old = self.rows[c][key]
                if (h.get("similarity") or 0) > (old["similarity"] or 0):
                    old.update(similarity=h.get("similarity"), query=query)
                continue
            self.rows[c][key] = {"class_id": c, "class_name": self.task.classnames[c], "url": h["url"],
                                 "caption": h.get("caption", ""), "query": query, "similarity": h.get("similarity"),
                                 "backend": self.backend, "upstream_id": str(h.get("id", h.get("upstream_id", "")))}

    def count(self, c: int) -> int:
        return len({r["url"] for r in self.rows[c].values()})

    def frame(self) -> pd.DataFrame:
        out = []
        for c in range(self.task.num_classes):
            seen: set[str] = set()
            ranked = sorted(self.rows[c].values(), key=lambda r: -(r["similarity"] or 0))
            for r in ranked:
                if r["url"] not in seen:  # also dedup by url: one image under two ids
                    seen.add(r["url"])
                    out.append(r)
        return pd.DataFrame(out, columns=COLUMNS)


def _semantic(task: TaskSpec, cfg: RetrieveConfig, search: Any, name: str) -> _Collector:
    """Query every class with each template; re-ask short classes with a doubled k."""
    col = _Collector(task, name)
    k = cfg.k_per_query
    todo = list(range(task.num_classes))
    while todo:
        before = {c: col.count(c) for c in todo}
        for c in todo:
            for q in task.retrieval_queries(c):
                col.add(c, q, search(q, k))
        k *= 2
        # ask again with a larger k while short, within max_k, and the last ask still brought new items
        todo = [c for c in todo if col.count(c) < cfg.per_class and k <= cfg.max_k and col.count(c) > before[c]]
    return col


@BACKENDS.register("knn")
def knn_backend(task: TaskSpec, cfg: RetrieveConfig) -> _Collector:
    from synthimg.retrieval.knn_http import KnnClient

    if not cfg.url:
        raise SynthimgError("--backend knn needs --url (a clip-retrieval compatible service)")
    client = KnnClient(cfg.url, cfg.indice_name, cfg.timeout, deduplicate=cfg.deduplicate,
                       use_safety_model=cfg.use_safety_model, use_violence_detector=cfg.use_violence_detector,
                       aesthetic_weight=cfg.aesthetic_weight)
    return _semantic(task, cfg, lambda q, k: client.query(text=q, num_images=k, modality=cfg.modality), "knn")


@BACKENDS.register("local")
def local_backend(task: TaskSpec, cfg: RetrieveConfig) -> _Collector:
    from synthimg.retrieval.index import LocalIndex

    if not cfg.index:
        raise SynthimgError("--backend local needs --index DIR (synthimg index build)")
    index = LocalIndex(cfg.index)
    kinds = ("image", "text") if cfg.use_caption_index else ("image",)
    return _semantic(task, cfg, lambda q, k: index.search(index.embed_text([q]), k, kinds)[0], "local")


@BACKENDS.register("substring")
def substring_backend(task: TaskSpec, cfg: RetrieveConfig) -> _Collector:
    from synthimg.retrieval.substring import scan

    if not cfg.metadata:
        raise SynthimgError("--backend substring needs --metadata PARQUET_OR_GLOB")
    col = _Collector(task, "substring")
    for row in scan(task, cfg.metadata):
        col.add(row["class_id"], row["query"], [{"url": row["url"], "caption": row["caption"], "id": row["upstream_id"],
                                                  "similarity": None, "NSFW": row["NSFW"]}])
    return col


def retrieve(task: TaskSpec, cfg: RetrieveConfig, out: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Write ``OUT/candidates.parquet`` and ``OUT/retrieve_stats.json``."""
    out = Path(out)
    start = time.time()
    col = BACKENDS.get_or_fail(cfg.backend)(task, cfg)
    table = col.frame()
    out.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out / "candidates.parquet", index=False)
    per_class = table.groupby("class_id").size()
    overlap = int(table.duplicated("url", keep=False).sum())
    stats = {
        "backend": cfg.backend, "count": int(len(table)), "target_per_class": cfg.per_class,
        "queries": sum(s["queries"] for s in col.stats.values()), "returned": sum(s["returned"] for s in col.stats.values()),
        "after_dedup": int(len(table)), "nsfw_dropped": sum(s["nsfw_dropped"] for s in col.stats.values()),
        "rows_in_several_classes": overlap,
        "per_class": {task.classnames[c]: {**col.stats[c], "after_dedup": int(per_class.get(c, 0))}
                      for c in range(task.num_classes)},
        "short_classes": [task.classnames[c] for c in range(task.num_classes) if per_class.get(c, 0) < cfg.per_class],
        "duration": round(time.time() - start, 3),
        # the query tower and (local) the search run on the accelerator; a remote service's cost is not ours to see
        "gpu_seconds": round(time.time() - start, 3) if cfg.backend == "local" else 0.0,
    }
    (out / "retrieve_stats.json").write_text(json.dumps(stats, indent=1))
    return table, stats
