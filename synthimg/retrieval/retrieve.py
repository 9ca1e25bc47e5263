"""Per-class candidates from a backend (``synthimg retrieve``): ``knn`` (HTTP), ``local`` (faiss), ``substring``.

Semantic backends query each class with each of its retrieval templates (the paper: ImageNet
80, Aircraft 2, Cars 8, DTD 8, Flowers 1), k per query, in **each** configured index (the
paper: the image index and the caption index) and take the union of each index's top-k. The
two indexes' cosines live on different scales (text-text about 0.7-0.9, text-image about
0.2-0.35), so they are never sorted together: every hit keeps the ``index`` that found it
and its ``rank`` there, ids are namespaced by index, and "best first" means by rank, the
indexes interleaved. NSFW-tagged rows are dropped when the metadata has such a column;
candidates are deduplicated by id, then by url, within a class. A service drops duplicates
and unsafe items after its kNN step, so short classes are asked again with a larger k until
the target is met or the service has no more.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd

from synthimg.config import Config, RetrieveConfig
from synthimg.errors import SynthimgError
from synthimg.plugins import Search
from synthimg.registry import Registry
from synthimg.retrieval.safety import flagged
from synthimg.tasks.spec import TaskSpec

BACKENDS = Registry("retrieval backend")
COLUMNS = ["class_id", "class_name", "url", "caption", "query", "similarity", "index", "rank", "found_by", "backend",
           "upstream_id"]
_INDEX_ORDER = {"image": 0, "text": 1}


class _Collector:
    """Deduplicated candidates per class, with the counts retrieve_stats.json reports."""

    def __init__(self, task: TaskSpec, backend: str):
        self.task, self.backend = task, backend
        self.rows: dict[int, dict[str, dict[str, Any]]] = {c: {} for c in range(task.num_classes)}
        self.stats = {c: {"queries": 0, "returned": 0, "nsfw_dropped": 0} for c in range(task.num_classes)}

    def add(self, c: int, query: str, hits: list[dict[str, Any]]) -> None:
        """Hits of one query; ``id`` must be unique across indexes (namespaced), ``rank`` is per index."""
        self.stats[c]["queries"] += 1
        self.stats[c]["returned"] += len(hits)
        for n, h in enumerate(hits):
            if flagged(h.get("NSFW")):
                self.stats[c]["nsfw_dropped"] += 1
                continue
            rank = h.get("rank", n)
            key = str(h.get("id") if h.get("id") is not None else h["url"])
            old = self.rows[c].get(key)
            if old is not None:  # the same hit from another query of the class: keep its best rank
                if rank < old["rank"]:
                    old.update(rank=rank, query=query, similarity=h.get("similarity"))
                continue
            self.rows[c][key] = {"class_id": c, "class_name": self.task.classnames[c], "url": h["url"],
                                 "caption": h.get("caption", ""), "query": query, "similarity": h.get("similarity"),
                                 "index": h.get("index"), "rank": rank, "backend": self.backend,
                                 "upstream_id": str(h.get("upstream_id", h.get("id", "")))}

    def count(self, c: int) -> int:
        return len({r["url"] for r in self.rows[c].values()})

    def frame(self) -> pd.DataFrame:
        """Best first by rank (the indexes interleaved, never by comparing their cosines), one row per url."""
        out = []
        for c in range(self.task.num_classes):
            kept: dict[str, dict[str, Any]] = {}
            ranked = sorted(self.rows[c].values(), key=lambda r: (r["rank"], _INDEX_ORDER.get(r["index"], 2)))
            for r in ranked:
                first = kept.get(r["url"])
                if first is None:  # one image under two ids (found by both indexes): keep the better rank
                    kept[r["url"]] = {**r, "found_by": r["index"]}
                elif r["index"] and r["index"] not in (first["found_by"] or "").split(","):
                    first["found_by"] = ",".join(filter(None, [first["found_by"], r["index"]]))
            out += kept.values()
        return pd.DataFrame(out, columns=COLUMNS)


def _semantic(task: TaskSpec, cfg: RetrieveConfig, search: Search, name: str) -> _Collector:
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
    def search(query: str, k: int) -> list[dict[str, Any]]:
        hits = []
        for modality in cfg.indexes:  # one request per index: the union of each one's top-k
            # the rank is the position in the service's answer, after its own dedup and safety filter
            for rank, h in enumerate(client.query(text=query, num_images=k, modality=modality)):
                raw = h.get("id", h.get("url"))
                hits.append({**h, "id": f"{modality}:{raw}", "upstream_id": str(raw), "index": modality, "rank": rank})
        return sorted(hits, key=lambda h: (h["rank"], _INDEX_ORDER[h["index"]]))

    return _semantic(task, cfg, search, "knn")


@BACKENDS.register("local")
def local_backend(task: TaskSpec, cfg: RetrieveConfig) -> _Collector:
    from synthimg.retrieval.index import LocalIndex

    if not cfg.index:
        raise SynthimgError("--backend local needs --index DIR (synthimg index build)")
    index = LocalIndex(cfg.index)
    kinds = tuple(cfg.indexes)
    return _semantic(task, cfg, lambda q, k: index.search(index.embed_text([q]), k, kinds)[0], "local")


@BACKENDS.register("substring")
def substring_backend(task: TaskSpec, cfg: RetrieveConfig) -> _Collector:
    from synthimg.retrieval.substring import scan

    if not cfg.metadata:
        raise SynthimgError("--backend substring needs --metadata PARQUET_OR_GLOB")
    col = _Collector(task, "substring")
    found = [0] * task.num_classes
    for row in scan(task, cfg.metadata):
        c = row["class_id"]
        col.add(c, row["query"], [{"url": row["url"], "caption": row["caption"], "id": row["upstream_id"],
                                   "similarity": None, "NSFW": row["NSFW"], "index": None, "rank": found[c]}])
        found[c] += 1  # rank: the order of the metadata
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
    by_index = table["index"].value_counts().to_dict() if table["index"].notna().any() else {}
    overlap = int(table.duplicated("url", keep=False).sum())
    stats = {
        "backend": cfg.backend, "count": int(len(table)), "target_per_class": cfg.per_class,
        "queries": sum(s["queries"] for s in col.stats.values()), "returned": sum(s["returned"] for s in col.stats.values()),
        "after_dedup": int(len(table)), "nsfw_dropped": sum(s["nsfw_dropped"] for s in col.stats.values()),
        "rows_in_several_classes": overlap, "by_index": {str(k): int(v) for k, v in by_index.items()},
        "per_class": {task.classnames[c]: {**col.stats[c], "after_dedup": int(per_class.get(c, 0))}
                      for c in range(task.num_classes)},
        "short_classes": [task.classnames[c] for c in range(task.num_classes) if per_class.get(c, 0) < cfg.per_class],
        "duration": round(time.time() - start, 3),
        # the query tower and (local) the search run on the accelerator; a remote service's cost is not ours to see.
        # A rerun redoes all of it, so its time replaces the last run's (resumable stages carry theirs over).
        "gpu_seconds": round(time.time() - start, 3) if cfg.backend == "local" else 0.0,
    }
    (out / "retrieve_stats.json").write_text(json.dumps(stats, indent=1))
    return table, stats


def run(cfg: Config, out: str | Path) -> dict[str, Any]:
    """``retrieve``: OUT/candidates.parquet, OUT/retrieve_stats.json and the resolved config."""
    from synthimg.config import save_resolved
    from synthimg.tasks import get_task

    if cfg.task is None:
        raise SynthimgError("no task to retrieve for (--task)")
    _, stats = retrieve(get_task(cfg.task), cfg.retrieve, out)
    save_resolved(cfg, out)
    return stats
