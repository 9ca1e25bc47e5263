"""Training data: IID batches drawn from shard folders (optionally curated key lists, mixed by weight).

The paper's loader shuffles a map-style dataset, so every batch is a uniform draw without
replacement from the training subset, whatever order the images sit in on disk. We do the
same over tar shards: every sample is located once (:mod:`synthimg.data.tar_index`), each
epoch draws one global permutation of the subset from ``(seed, epoch)``, cuts it into
global batches, and gives rank ``r`` every ``world``-th sample of each. A sample is read
with one seek, by any DataLoader worker; the order does not depend on the number of ranks
or workers, every sample is seen exactly once per epoch, and a resumed run sees the same
batches as an uninterrupted one.

The last global batch of an epoch may be short. Its micro-batches are padded to the usual
shape with weight-0 copies, and the trainer sums the loss over the global batch, so the
gradient equals the plain mean over the samples the step received.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synthimg.config import TrainConfig
from synthimg.data.tar_index import SampleTable
from synthimg.errors import SynthimgError


@dataclass
class Source:
    path: Path
    keys: list[str] | None
    weight: float | None  # None: in proportion to its size (the union of the sources)
    size: int


def resolve_sources(cfg: TrainConfig) -> list[Source]:
    """Shard folders with their key lists, weights and sizes; absent keys are an error with the count."""
    from synthimg.data.loader import dataset_size
    from synthimg.data.manifest import check_keys, read_keys

    if not cfg.data:
        raise SynthimgError("no training data: pass --train-data SHARDS")
    if cfg.keys and len(cfg.keys) != len(cfg.data):
        raise SynthimgError(f"{len(cfg.keys)} key lists for {len(cfg.data)} shard folders: give one per folder ('' for all)")
    if cfg.weights and len(cfg.weights) != len(cfg.data):
        raise SynthimgError(f"{len(cfg.weights)} weights for {len(cfg.data)} shard folders")
    sources = []
    for i, folder in enumerate(cfg.data):
        path = Path(folder)
        if not path.is_dir():
            raise SynthimgError(f"training shards not found: {path}")
        key_file = cfg.keys[i] if cfg.keys else ""
        keys = read_keys(key_file) if key_file else None
        if keys is not None:
            check_keys(path, keys)
        size = len(keys) if keys is not None else dataset_size(path)
        sources.append(Source(path, keys, cfg.weights[i] if cfg.weights else None, size))
    return sources


def infer_arm(sources: list[Source]) -> str:
    """The arm from the manifests' ``source`` column: one value names it, several make ``mixed``."""
    from synthimg.data.manifest import read_manifest

    found = set()
    for s in sources:
        try:
            found |= set(read_manifest(s.path)["source"].dropna().unique())
        except (SynthimgError, KeyError):
            found.add("upstream")
    return found.pop() if len(found) == 1 else "mixed"


def sample_table(sources: list[Source]) -> SampleTable:
    """Locate every sample of the sources (cached tar scans); a curated key that no tar holds is an error."""
    import pandas as pd

    from synthimg.data.shards import list_shards
    from synthimg.data.tar_index import load_tar_index

    paths: list[str] = []
    frames = []
    dropped: dict[str, int] = {}
    for s_id, src in enumerate(sources):
        wanted = set(src.keys) if src.keys is not None else None
        found = 0
        for tar in list_shards(src.path):
            index, lost = load_tar_index(tar)
            for reason, n in lost.items():
                dropped[reason] = dropped.get(reason, 0) + n
            if wanted is not None:
                index = index[index["key"].isin(wanted)]
            if len(index):
                frames.append(index.assign(shard=len(paths), source=s_id))
                found += len(index)
            paths.append(tar)
        if found == 0:
            raise SynthimgError(f"no readable training samples in {src.path}")
        if wanted is not None and found < len(wanted):
            raise SynthimgError(f"{len(wanted) - found} keys of the key list for {src.path} are in no readable tar "
                                f"(truncated or unreadable shards: {dropped})")
    table = pd.concat(frames, ignore_index=True)
    # One fixed order, independent of the order of the key list: sorted by source, then key.
    table = table.sort_values(["source", "key"], kind="stable").reset_index(drop=True)
    weights = None if all(s.weight is None for s in sources) else [
        float(s.size if s.weight is None else s.weight) for s in sources]
    return SampleTable(paths=paths, shard=table["shard"].to_numpy(np.int32), offset=table["offset"].to_numpy(np.int64),
                       size=table["size"].to_numpy(np.int64), label=table["label"].to_numpy(np.int64),
                       source=table["source"].to_numpy(np.int16), weights=weights, dropped=dropped)


def is_union(table: SampleTable) -> bool:
    """True when the epoch is the union of the sources: no weights, or weights in proportion to the sizes."""
    if table.weights is None:
        return True
    sizes = np.bincount(table.source, minlength=len(table.weights)).astype(np.float64)
    weights = np.asarray(table.weights, dtype=np.float64)
    return bool(np.allclose(weights / weights.sum(), sizes / sizes.sum(), rtol=1e-2, atol=1e-4))


def epoch_order(table: SampleTable, seed: int, epoch: int, total: int | None = None) -> np.ndarray:
    """The epoch's sample order: a permutation of the subset, a pure function of ``(seed, epoch)``.

    With mixing weights that differ from the sources' sizes, each source contributes its
    weight's share, drawn without replacement from a per-source permutation that carries
    on across epochs. ``total`` (an explicit ``steps_per_epoch``) continues into the next
    permutation when it exceeds the subset.
    """
    n = len(table)
    total = n if total is None else total
    if is_union(table):
        parts, j = [], 0
        while sum(len(p) for p in parts) < total:
            parts.append(np.random.default_rng([seed, epoch, j]).permutation(n))
            j += 1
        return np.concatenate(parts)[:total]
    weights = np.asarray(table.weights, dtype=np.float64)
    shares = np.floor(total * weights / weights.sum()).astype(np.int64)
    shares[np.argmax(weights)] += total - shares.sum()
    picks = []
    for s, share in enumerate(shares):
        members = np.flatnonzero(table.source == s)
        start = epoch * share  # where this epoch starts in the source's endless stream of permutations
        offset, cycle, stream = start % len(members), start // len(members), []
        while sum(len(x) for x in stream) < offset + share:
            stream.append(members[np.random.default_rng([seed, 1_000 + s, cycle]).permutation(len(members))])
            cycle += 1
        picks.append(np.concatenate(stream)[offset: offset + share] if stream else members[:0])
    mixed = np.concatenate(picks)
    return mixed[np.random.default_rng([seed, epoch, 999]).permutation(len(mixed))]


class MicroBatches:
    """This rank's micro-batches of one epoch as ``[(sample, weight), ...]`` lists, built lazily from arrays.

    The global order is one int64 array (8 bytes per sample); a DataLoader takes this as
    its ``batch_sampler``.
    """

    def __init__(self, order: np.ndarray, batch: int, world: int, rank: int, accum: int):
        self.order, self.batch, self.world, self.rank, self.accum = order, batch, world, rank, accum
        self.per_micro = batch // (world * accum)

    @property
    def steps(self) -> int:
        return math.ceil(len(self.order) / self.batch)

    def global_batch(self, step: int) -> np.ndarray:
        return self.order[step * self.batch: (step + 1) * self.batch]

    def __len__(self) -> int:
        return self.steps * self.accum

    def __iter__(self) -> Iterator[list[tuple[int, float]]]:
        for step in range(self.steps):
            gb = self.global_batch(step)
            mine = gb[self.rank:: self.world]
            for m in range(self.accum):
                part = [(int(i), 1.0) for i in mine[m * self.per_micro: (m + 1) * self.per_micro]]
                yield part + [(int(gb[0]), 0.0)] * (self.per_micro - len(part))


def plan_epoch(table: SampleTable, cfg: TrainConfig, epoch: int, world: int, rank: int,
               steps: int | None = None) -> MicroBatches:
    """Cut the epoch's order into global batches; rank ``r`` takes every ``world``-th sample of each.

    Each rank's share of a global batch is split into ``grad_accum`` micro-batches of
    ``batch_size / (world x grad_accum)`` items; short ones (only in the last, partial global
    batch) are padded with weight-0 copies so every rank runs the same shapes.
    """
    order = epoch_order(table, cfg.seed, epoch, None if steps is None else steps * cfg.batch_size)
    return MicroBatches(order, cfg.batch_size, world, rank, cfg.grad_accum)


def expected_distinct(counts: np.ndarray, batch: int) -> float:
    """Expected number of distinct classes in ``batch`` samples drawn uniformly without replacement.

    sum over classes of 1 - C(N - n_c, b) / C(N, b), with log-gamma for large N.
    """
    n = int(counts.sum())
    b = min(batch, n)
    log_total = math.lgamma(n + 1) - math.lgamma(n - b + 1)
    value = 0.0
    for n_c in counts[counts > 0]:
        rest = n - int(n_c)
        if rest < b:
            value += 1.0
            continue
        value += 1.0 - math.exp(math.lgamma(rest + 1) - math.lgamma(rest - b + 1) - log_total)
    return value


def iid_expectation(table: SampleTable, batch_sizes: list[int]) -> float:
    """Mean over batches of :func:`expected_distinct` for batches of these sizes."""
    counts = table.class_counts()
    cache: dict[int, float] = {}
    return float(np.mean([cache.setdefault(b, expected_distinct(counts, b)) for b in batch_sizes]))


def batch_diversity(table: SampleTable, plan: MicroBatches) -> dict[str, float]:
    """Distinct classes per global batch of a plan (mean) against their expectation under IID sampling."""
    batches = [plan.global_batch(s) for s in range(plan.steps)]
    seen = [len(np.unique(table.label[gb])) for gb in batches]
    return {"batch_classes_mean": float(np.mean(seen)), "batch_classes_iid": iid_expectation(table, [len(b) for b in batches]),
            "batches": len(seen), "classes": int((table.class_counts() > 0).sum())}


def epoch_loader(table: SampleTable, plan: MicroBatches, transform: Any, workers: int, stats: Any = None,
                 pin_memory: bool = False) -> Iterator[dict[str, Any]]:
    """The rank's micro-batches of the epoch, in order, decoded by ``workers`` DataLoader workers."""
    import torch

    from synthimg.data.tar_index import TarSamples, collate_weighted

    loader = torch.utils.data.DataLoader(TarSamples(table, transform, stats), batch_sampler=plan,
                                         num_workers=workers, collate_fn=collate_weighted, pin_memory=pin_memory,
                                         persistent_workers=False)
    return iter(loader)
