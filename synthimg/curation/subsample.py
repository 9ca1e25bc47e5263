"""Seeded, equal-size subsets for each data scale (``synthimg curate subsample``).

For a seed, every class's keys are shuffled (a generator per class) and the classes are
dealt round-robin in a seeded class order. The subset of size N is the first N keys of that
one sequence, so it is:

- exact (N keys, never "20% silently unused");
- stratified (class counts differ by at most one, classes that run out are filled by the others);
- nested across scales (the 1K subset lies inside the 10K subset);
- a pure function of (keys, labels, seed).

``stratified=False`` is the paper's plain ``random_split``: a seeded shuffle of all keys.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from synthimg.atomic import atomic_write
from synthimg.config import Config, config_hash, save_resolved, to_dict
from synthimg.data.manifest import read_keys, read_manifest, write_keys
from synthimg.errors import SynthimgError
from synthimg.stage import Stats


def draw_order(pool: pd.DataFrame, seed: int, stratified: bool = True) -> list[str]:
    """The seeded order whose prefixes are the subsets of every scale."""
    keys = pool.sort_values("key")  # the order of the input must not matter
    if not stratified:
        rng = np.random.default_rng([seed, 0])
        return list(keys["key"].to_numpy()[rng.permutation(len(keys))])
    classes = sorted(keys["class_id"].unique())
    order = np.random.default_rng([seed, 1]).permutation(len(classes))
    queues = []
    for idx in order:
        c = classes[idx]
        members = keys.loc[keys["class_id"] == c, "key"].to_numpy()
        queues.append(list(members[np.random.default_rng([seed, 2, int(c)]).permutation(len(members))]))
    sequence: list[str] = []
    for round_ in range(max(len(q) for q in queues)):
        sequence.extend(q[round_] for q in queues if round_ < len(q))
    return sequence


def subsample(pool: pd.DataFrame, scale: int, seed: int, stratified: bool = True) -> list[str]:
    """The keys of the subset of size ``scale`` for ``seed``; larger than the pool is an error."""
    if scale > len(pool):
        raise SynthimgError(f"scale {scale} is larger than the curated pool of {len(pool)} samples")
    if scale <= 0:
        raise SynthimgError(f"scale must be positive, got {scale}")
    return draw_order(pool, seed, stratified)[:scale]


def pool_size(path: str | os.PathLike[str]) -> int:
    """Samples in a curated pool: a key list, or a shard folder's manifest (successes)."""
    from pathlib import Path

    from synthimg.data.manifest import read_keys, read_manifest

    path = Path(path)
    return len(read_manifest(path)) if path.is_dir() else len(read_keys(path))


def paired_subset(pool: pd.DataFrame, init_keys: list[str]) -> list[str]:
    """The samples made from ``init_keys`` (SDEdit: the ``init_key`` column), one per init key, in their order.

    The SDEdit arm at (N, seed) is then the noised and denoised version of exactly the
    retrieved subset at (N, seed).
    """
    if "init_key" not in pool:
        raise SynthimgError("--paired-with needs an arm made from another arm's images (an init_key column)")
    first = pool.sort_values("key").drop_duplicates("init_key").set_index("init_key")["key"]
    missing = [k for k in init_keys if k not in first.index]
    if missing:
        raise SynthimgError(f"{len(missing)} images of the paired subset have no counterpart here (first: {missing[0]})")
    return [str(first[k]) for k in init_keys]


def run(cfg: Config, shards: str | os.PathLike[str], out: str | os.PathLike[str],
        keys: str | os.PathLike[str] | None = None, all_from: list[str | os.PathLike[str]] | None = None,
        paired_with: str | os.PathLike[str] | None = None) -> Stats:
    """``curate subsample``: OUT/subset_n{N}_s{SEED}.parquet per scale and seed, OUT/subsets.json, config.

    ``all_from``: the other arms' curated pools, so that scale ``all`` is the smallest pool;
    ``paired_with``: another arm's subsets folder whose subsets this arm's images were made from.
    """
    if not cfg.curate.scales:
        raise SynthimgError("no scales to draw (curate.scales), e.g. --scales 1000,10000")
    out = Path(out)
    pool = read_manifest(shards)
    if keys:
        pool = pool[pool["key"].isin(set(read_keys(keys)))]
    everything = min([len(pool), *(pool_size(p) for p in all_from or [])])
    written = {}
    for seed in cfg.curate.seeds:
        for scale in cfg.curate.scales:
            n = everything if scale == "all" else int(scale)
            if paired_with is not None:
                chosen = paired_subset(pool, read_keys(Path(paired_with) / f"subset_n{scale}_s{seed}.parquet"))
                n = len(chosen)
            else:
                chosen = subsample(pool, n, seed, cfg.curate.stratified)
            path = write_keys(chosen, out / f"subset_n{scale}_s{seed}.parquet")
            counts = pool[pool["key"].isin(set(chosen))].groupby("class_id")["key"].size()
            written[path.name] = {"scale": scale, "n": n, "seed": seed, "min_per_class": int(counts.min()),
                                  "max_per_class": int(counts.max()), "classes": int(len(counts))}
    save_resolved(cfg, out)
    meta = {"pool": len(pool), "all": everything, "all_from": [str(p) for p in all_from or []],
            "paired_with": str(paired_with) if paired_with else None,
            "stratified": cfg.curate.stratified, "config_hash": config_hash(cfg),
            "keys_from": str(keys) if keys else None, "shards": str(shards), "subsets": written,
            "curate": to_dict(cfg.curate)}
    atomic_write(out / "subsets.json", json.dumps(meta, indent=1))
    return meta
