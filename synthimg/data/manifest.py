"""The per-sample parquet manifest: one row per sample with its shard and full provenance.

Rows of failed attempts are kept (``status`` != ``"success"``, with ``error``) so that a
stage can retry only its failures. Curation adds columns (``clip_score``, ``kept_filter``,
``decontam_max_sim``, ``kept_decontam``); a curated subset is a key list, never a copy.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from synthimg.atomic import atomic_path
from synthimg.errors import SynthimgError

MANIFEST = "manifest.parquet"
MANIFEST_DIR = "_manifest"  # one fragment per tar, written with it: SHARD.parquet


def fragment_path(tar_path: str | os.PathLike[str]) -> Path:
    """Where a shard's manifest fragment lives: ``DIR/_manifest/NAME.parquet`` for ``DIR/NAME.tar``."""
    tar_path = Path(tar_path)
    return tar_path.parent / MANIFEST_DIR / (tar_path.name.removesuffix(".tar") + ".parquet")


def build_manifest(shard_dir: str | os.PathLike[str]) -> Path | None:
    """Concatenate the per-shard fragments of completed tars into ``manifest.parquet``.

    Fragments of shards whose tar is absent (an interrupted write) are ignored. Returns
    None when the folder has no fragments (shards written by another tool).
    """
    out = Path(shard_dir)
    frags = [fragment_path(t) for t in sorted(out.glob("*.tar"))]
    frags = [f for f in frags if f.is_file()]
    if not frags:
        return None
    df = pd.concat([pd.read_parquet(f) for f in frags], ignore_index=True)
    path = out / MANIFEST
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
    return path


def read_manifest(shard_dir: str | os.PathLike[str], successes_only: bool = True) -> pd.DataFrame:
    """Read a shard folder's manifest (one row per sample)."""
    path = Path(shard_dir) / MANIFEST
    if not path.is_file():
        raise SynthimgError(f"no {MANIFEST} in {shard_dir}: run the stage that writes it, or `synthimg shards inspect`")
    df = pd.read_parquet(path)
    if successes_only and "status" in df:
        df = df[df["status"] == "success"].reset_index(drop=True)
    return df


def read_keys(path: str | os.PathLike[str]) -> list[str]:
    """Read a key list: a parquet with a ``key`` column, a JSON list (or ``{"keys": [...]}``), or text lines."""
    path = Path(path)
    if not path.is_file():
        raise SynthimgError(f"key list not found: {path}")
    if path.suffix == ".parquet":
        df = pd.read_parquet(path)
        if "key" not in df:
            raise SynthimgError(f"key list {path} has no 'key' column (columns: {', '.join(df.columns)})")
        return [str(k) for k in df["key"]]
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        keys = data.get("keys") if isinstance(data, dict) else data
        if not isinstance(keys, list):
            raise SynthimgError(f"key list {path} must be a JSON list or an object with a 'keys' list")
        return [str(k) for k in keys]
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def write_keys(keys: Iterable[str], path: str | os.PathLike[str]) -> Path:
    """Write a key list as parquet (``key`` column) or JSON, by the file suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = [str(k) for k in keys]
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            pd.DataFrame({"key": keys}).to_parquet(tmp, index=False)
        else:
            tmp.write_text(json.dumps(keys))
    return path


def check_keys(shard_dir: str | os.PathLike[str], keys: Iterable[str]) -> None:
    """Fail with the count when a key list names samples that the shards do not hold."""
    present = set(read_manifest(shard_dir)["key"].astype(str))
    missing = [k for k in keys if k not in present]
    if missing:
        raise SynthimgError(
            f"{len(missing)} keys of the key list are not in {shard_dir} (first: {missing[0]}); "
            "was it made from another shard folder?"
        )


def merge_columns(shard_dir: str | os.PathLike[str], table: pd.DataFrame) -> Path:
    """Add or replace per-sample columns of ``table`` (joined on ``key``) in the manifest.

    Later stages record their results here (``clip_score``, ``kept_filter``,
    ``decontam_max_sim``, ``kept_decontam``). Rebuilding the manifest from fragments drops
    them; the stages re-add them from their caches.
    """
    path = Path(shard_dir) / MANIFEST
    if not path.is_file():
        raise SynthimgError(f"no {MANIFEST} in {shard_dir}")
    columns = [c for c in table.columns if c != "key"]
    manifest = pd.read_parquet(path).drop(columns=columns, errors="ignore")
    merged = manifest.merge(table, on="key", how="left")
    with atomic_path(path) as tmp:
        merged.to_parquet(tmp, index=False)
    return path
