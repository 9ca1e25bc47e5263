"""Atomic WebDataset shard writing and the metadata files that open_clip and timm read.

A sample is a dict ``{"__key__": "000000042", "jpg": bytes, "txt": str, "cls": int,
"json": {...provenance...}}`` (see ``conventions.md``). Each tar is written as
``NAME.tar.tmp`` by webdataset's ``TarWriter`` and renamed when complete, so an
interrupted job never leaves a truncated tar that looks whole. Beside each tar a manifest
fragment (``_manifest/NAME.parquet``) lists every sample attempted for that shard, the
failed ones included with their ``status`` and ``error``, as img2dataset's parquet does.
:func:`finalize` then writes ``sizes.json``, ``_info.json``, ``classnames.txt`` and
``manifest.parquet`` from the completed shards.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Callable

from synthimg.atomic import atomic_path, atomic_write
from synthimg.data.manifest import build_manifest, fragment_path
from synthimg.errors import SynthimgError

IMAGE_EXTS = ("jpg", "png", "webp")
KEY_DIGITS = 9
SUCCESS = "success"
# A fixed tar mtime makes a shard's bytes a function of its samples alone (reruns are byte-identical).
_TAR_MTIME = 0.0


def sample_key(index: int) -> str:
    """A dataset-unique sample key: a zero-padded integer, never containing a dot."""
    if index < 0:
        raise ValueError("sample index must be >= 0")
    return f"{index:0{KEY_DIGITS}d}"


def shard_name(prefix: str, index: int) -> str:
    """``PREFIX-000007.tar``, the naming open_clip's brace patterns expect."""
    return f"{prefix}-{index:06d}.tar"


def list_shards(path: str | os.PathLike[str]) -> list[str]:
    """Complete shards of a directory (sorted), or the tars a file / brace pattern names."""
    text = str(path)
    if os.path.isdir(text):
        return sorted(str(p) for p in Path(text).glob("*.tar"))
    if "{" in text:
        import braceexpand

        return list(braceexpand.braceexpand(text))
    if "*" in text or "?" in text:
        import glob

        return sorted(glob.glob(text))
    if os.path.isfile(text):
        return [text]
    raise SynthimgError(f"no shards found at {text}: expected a directory of .tar files, a .tar file or a brace pattern")


def _check_sample(sample: dict[str, Any]) -> str:
    key = sample.get("__key__")
    if not isinstance(key, str) or not key or "." in key or "/" in key:
        raise ValueError(f"sample key {key!r} must be a non-empty string without dots or slashes")
    images = [ext for ext in IMAGE_EXTS if ext in sample]
    if len(images) != 1:
        raise ValueError(f"sample {key} must hold exactly one image among {IMAGE_EXTS}, has {images}")
    meta = sample.get("json")
    if not isinstance(meta, dict) or not {"source", "class_id", "class_name"} <= set(meta):
        raise ValueError(f"sample {key} needs a json dict with source, class_id and class_name")
    if "cls" in sample and int(sample["cls"]) != int(meta["class_id"]):
        raise ValueError(f"sample {key}: cls {sample['cls']} disagrees with json class_id {meta['class_id']}")
    return key


def manifest_row(sample: dict[str, Any], shard: str, status: str = SUCCESS, error: str | None = None) -> dict[str, Any]:
    """One manifest row: key, shard, status, the caption, and the provenance fields flattened."""
    row: dict[str, Any] = {"key": sample["__key__"], "shard": shard, "status": status, "error": error}
    if "txt" in sample:
        row.setdefault("caption", sample["txt"])
    for name, value in (sample.get("json") or {}).items():
        row[name] = json.dumps(value) if isinstance(value, (dict, list)) else value
    return row


def _atomic_parquet(rows: list[dict[str, Any]], path: Path) -> None:
    import pandas as pd

    with atomic_path(path) as tmp:
        pd.DataFrame(rows).to_parquet(tmp, index=False)


class _OpenShard:
    """One tar being written to ``NAME.tar.tmp``; :meth:`commit` makes it visible."""

    def __init__(self, path: Path):
        import webdataset as wds

        self.path = path
        self.tmp = path.with_name(path.name + ".tmp")
        self.rows: list[dict[str, Any]] = []
        self.count = 0
        self._writer = wds.TarWriter(str(self.tmp), mtime=_TAR_MTIME)

    def write(self, sample: dict[str, Any]) -> None:
        _check_sample(sample)
        self._writer.write(sample)
        self.rows.append(manifest_row(sample, self.path.name))
        self.count += 1

    def record_failure(self, sample: dict[str, Any], status: str, error: str) -> None:
        self.rows.append(manifest_row(sample, self.path.name, status=status, error=error))

    def commit(self) -> int:
        self._writer.close()
        # Fragment first, tar last: a visible tar always has its fragment.
        _atomic_parquet(self.rows, fragment_path(self.path))
        os.replace(self.tmp, self.path)
        return self.count

    def abort(self) -> None:
        try:
            self._writer.close()
        finally:
            self.tmp.unlink(missing_ok=True)


def write_shard(path: str | os.PathLike[str], samples: Iterable[dict[str, Any] | tuple[dict[str, Any], str, str]]) -> int:
    """Write one complete shard atomically; returns the number of samples written.

    An item may be a sample, or ``(sample, status, error)`` for an attempt that failed:
    the failure goes into the manifest fragment only. This is the unit of resumable work:
    a stage that cuts its work into deterministic shards skips those whose tar exists.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shard = _OpenShard(path)
    try:
        for item in samples:
            if isinstance(item, tuple):
                shard.record_failure(*item)
            else:
                shard.write(item)
    except BaseException:
        shard.abort()
        raise
    return shard.commit()


class ShardWriter:
    """Rolling writer: ``maxcount`` samples per atomic shard, ``PREFIX-000000.tar`` onwards.

    Thin glue over webdataset's ``TarWriter`` (webdataset's own ``ShardWriter`` writes in
    place, so a crash leaves a truncated tar that looks complete).
    """

    def __init__(self, out_dir: str | os.PathLike[str], prefix: str = "shard", maxcount: int = 1000, start: int = 0,
                 names: Callable[[int], str] | None = None):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.prefix, self.maxcount, self.index = prefix, maxcount, start
        self.names = names or (lambda i: shard_name(prefix, i))  # CLIP_benchmark's layout: lambda i: f"{i}.tar"
        self._shard: _OpenShard | None = None
        self.written: dict[str, int] = {}

    def _current(self) -> _OpenShard:
        if self._shard is None:
            self._shard = _OpenShard(self.out_dir / self.names(self.index))
        return self._shard

    def write(self, sample: dict[str, Any]) -> None:
        self._current().write(sample)
        if self._shard is not None and self._shard.count >= self.maxcount:
            self._rotate()

    def _rotate(self) -> None:
        if self._shard is not None:
            self.written[self._shard.path.name] = self._shard.commit()
            self._shard = None
            self.index += 1

    def close(self) -> dict[str, int]:
        self._rotate()
        return self.written

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        elif self._shard is not None:
            self._shard.abort()


def count_tar_samples(path: str | os.PathLike[str]) -> int:
    """Number of distinct sample keys in a tar (for shards written by other tools)."""
    keys = set()
    with tarfile.open(path) as tar:
        for member in tar:
            if member.isfile() and not member.name.split("/")[-1].startswith("__"):
                keys.add(member.name.split(".", 1)[0])
    return len(keys)


def _shard_counts(tars: list[Path]) -> Iterator[tuple[Path, int]]:
    import pyarrow.parquet as pq

    for tar in tars:
        frag = fragment_path(tar)
        if frag.is_file():
            status = pq.read_table(frag, columns=["status"]).column("status").to_pylist()
            yield tar, sum(s == SUCCESS for s in status)
        else:
            yield tar, count_tar_samples(tar)


def finalize(
    out_dir: str | os.PathLike[str], classnames: list[str] | None = None, split: str = "train"
) -> dict[str, int]:
    """Write ``sizes.json``, ``_info.json``, ``classnames.txt`` and ``manifest.parquet`` for a shard folder.

    Derived from the completed tars alone, so it is safe to rerun after any interruption.
    Returns the sizes (shard basename -> sample count).
    """
    out = Path(out_dir)
    tars = sorted(out.glob("*.tar"))
    sizes = {tar.name: n for tar, n in _shard_counts(tars)}
    _write_json(out / "sizes.json", sizes)
    info = {
        "name": out.name,
        "splits": {
            split: {
                "name": split,
                "num_samples": sum(sizes.values()),
                "filenames": list(sizes),
                "shard_lengths": list(sizes.values()),
            }
        },
    }
    _write_json(out / "_info.json", info)
    if classnames is not None:
        (out / "classnames.txt").write_text("".join(f"{c}\n" for c in classnames))
    build_manifest(out)
    return sizes


def _write_json(path: Path, data: Any) -> None:
    atomic_write(path, json.dumps(data, indent=1))
