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
shape with weight-0 copies, and the loss is the weighted sum over the *global* batch, so
the gradient equals the plain mean over the samples that exist.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from synthimg.config import TrainConfig
from synthimg.errors import SynthimgError


@dataclass
class Source:
    path: Path
    keys: list[str] | None
    weight: float
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
        sources.append(Source(path, keys, cfg.weights[i] if cfg.weights else float(size), size))
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


@dataclass
class SampleTable:
    """Every training sample of a run, located in its tar: arrays indexed by sample number."""

    paths: list[str]
    shard: np.ndarray
    offset: np.ndarray
    size: np.ndarray
    label: np.ndarray
    source: np.ndarray
    weights: list[float]
    dropped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.label)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.label, minlength=int(self.label.max()) + 1 if len(self.label) else 0)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.shard, self.offset, self.size, self.label, self.source))


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
    return SampleTable(paths=paths, shard=table["shard"].to_numpy(np.int32), offset=table["offset"].to_numpy(np.int64),
                       size=table["size"].to_numpy(np.int64), label=table["label"].to_numpy(np.int64),
                       source=table["source"].to_numpy(np.int16), weights=[s.weight for s in sources], dropped=dropped)


def _epoch_seed(seed: int, epoch: int) -> list[int]:
    return [seed, epoch]


def epoch_order(table: SampleTable, seed: int, epoch: int, total: int | None = None) -> np.ndarray:
    """The epoch's sample order: a permutation of the subset, a pure function of ``(seed, epoch)``.

    With mixing weights that differ from the sources' sizes, each source contributes its
    weight's share, drawn without replacement from a per-source permutation that carries
    on across epochs. ``total`` (an explicit ``steps_per_epoch``) continues into the next
    permutation when it exceeds the subset.
    """
    n = len(table)
    total = n if total is None else total
    sizes = np.bincount(table.source, minlength=len(table.weights))
    weights = np.asarray(table.weights, dtype=np.float64)
    proportional = np.allclose(weights / weights.sum(), sizes / sizes.sum())
    if proportional:
        parts, j = [], 0
        while sum(len(p) for p in parts) < total:
            parts.append(np.random.default_rng([*_epoch_seed(seed, epoch), j]).permutation(n))
            j += 1
        return np.concatenate(parts)[:total]
    shares = np.floor(total * weights / weights.sum()).astype(np.int64)
    shares[np.argmax(weights)] += total - shares.sum()
    picks = []
    for s, share in enumerate(shares):
        members = np.flatnonzero(table.source == s)
        start = epoch * share  # where this epoch starts in the source's endless stream of permutations
        stream = []
        cycle = start // len(members)
        while sum(len(x) for x in stream) < (start % len(members)) + share:
            stream.append(members[np.random.default_rng([seed, 1_000 + s, cycle]).permutation(len(members))])
            cycle += 1
        flat = np.concatenate(stream) if stream else members[:0]
        picks.append(flat[start % len(members): start % len(members) + share])
    mixed = np.concatenate(picks)
    return mixed[np.random.default_rng([*_epoch_seed(seed, epoch), 999]).permutation(len(mixed))]


@dataclass
class EpochPlan:
    """One epoch's global batches and this rank's micro-batches of ``(sample, weight)`` items."""

    global_batches: list[np.ndarray]
    micro: list[list[tuple[int, float]]]
    per_micro: int

    @property
    def steps(self) -> int:
        return len(self.global_batches)


def plan_epoch(table: SampleTable, cfg: TrainConfig, epoch: int, world: int, rank: int,
               steps: int | None = None) -> EpochPlan:
    """Cut the epoch's order into global batches; rank ``r`` takes every ``world``-th sample of each.

    Each rank's share of a global batch is split into ``grad_accum`` micro-batches of
    ``batch_size / (world x grad_accum)`` items; short ones (only in the last, partial global
    batch) are padded with weight-0 copies so every rank runs the same shapes.
    """
    batch = cfg.batch_size
    per_micro = batch // (world * cfg.grad_accum)
    order = epoch_order(table, cfg.seed, epoch, None if steps is None else steps * batch)
    globals_ = [order[i: i + batch] for i in range(0, len(order), batch)]
    micro: list[list[tuple[int, float]]] = []
    for gb in globals_:
        mine = gb[rank::world]
        for m in range(cfg.grad_accum):
            part = [(int(i), 1.0) for i in mine[m * per_micro: (m + 1) * per_micro]]
            part += [(int(gb[0]), 0.0)] * (per_micro - len(part))
            micro.append(part)
    return EpochPlan(globals_, micro, per_micro)


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


def batch_diversity(table: SampleTable, plan: EpochPlan) -> dict[str, float]:
    """Distinct classes per global batch (mean) against their expectation under IID sampling."""
    counts = table.class_counts()
    seen = [len(np.unique(table.label[gb])) for gb in plan.global_batches]
    cache: dict[int, float] = {}
    iid = [cache.setdefault(len(gb), expected_distinct(counts, len(gb))) for gb in plan.global_batches]
    return {"batch_classes_mean": float(np.mean(seen)), "batch_classes_iid": float(np.mean(iid)),
            "batches": len(seen), "classes": int((counts > 0).sum())}


def epoch_loader(table: SampleTable, plan: EpochPlan, transform: Any, workers: int, stats: Any = None,
                 pin_memory: bool = False) -> Iterator[dict[str, Any]]:
    """The rank's micro-batches of the epoch, in order, decoded by ``workers`` DataLoader workers."""
    import torch

    from synthimg.data.tar_index import TarSamples, collate_weighted

    dataset = TarSamples(table.paths, table.shard, table.offset, table.size, table.label, transform, stats)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=plan.micro, num_workers=workers,
                                         collate_fn=collate_weighted, pin_memory=pin_memory,
                                         persistent_workers=False)
    return iter(loader)
