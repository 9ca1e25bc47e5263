"""Random access into tar shards: where each sample's image bytes sit, and its label.

IID training batches need any sample at any moment (the official code shuffles a map-style
dataset), but a tar is a stream. A tar member's data lies at a fixed byte offset, so one
scan of a shard's headers gives every sample's ``(key, image offset, image size, label)``.
The scan is cached beside the shards (``_index/NAME.parquet``, keyed by the tar's size
and mtime) and is reused by every run, rank and worker. Files are grouped into samples
with webdataset's own rule (the key is the name up to the first dot of the basename).

:class:`TarSamples` reads one sample with one ``seek`` + ``read``: an epoch reads exactly
the bytes of the subset it trains on, once. Samples the scan cannot use (no image, no
label, a member cut off by a truncated tar) are counted per reason, never read.
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from synthimg.atomic import atomic_path
from synthimg.data.shards import IMAGE_EXTS

log = logging.getLogger(__name__)

INDEX_DIR = "_index"
INDEX_VERSION = 1
COLUMNS = ["key", "offset", "size", "label"]


def _split_name(name: str) -> tuple[str | None, str | None]:
    """webdataset's ``base_plus_ext``: ``a/b.c.jpg`` -> (``a/b``, ``c.jpg``)."""
    from webdataset.tariterators import base_plus_ext

    return base_plus_ext(name)


def scan_tar(path: str | os.PathLike[str]) -> tuple[pd.DataFrame, dict[str, int]]:
    """Every complete sample of one tar (key, image offset, size, label) and the drops by reason."""
    path = Path(path)
    total = path.stat().st_size
    samples: dict[str, dict[str, Any]] = {}
    dropped = {"unreadable_tar": 0, "incomplete_sample": 0, "bad_label": 0}
    try:
        with tarfile.open(path, mode="r:") as tar:
            try:
                for member in tar:
                    if not member.isreg():
                        continue
                    key, ext = _split_name(member.name)
                    if key is None or os.path.basename(key).startswith("__"):
                        continue
                    entry = samples.setdefault(key, {})
                    if member.offset_data + member.size > total:  # cut off by a truncated tar
                        entry["cut"] = True
                        continue
                    ext = ext.lower()
                    if ext in (*IMAGE_EXTS, "jpeg") and "offset" not in entry:
                        entry["offset"], entry["size"] = member.offset_data, member.size
                    elif ext == "cls":
                        raw = tar.extractfile(member).read()  # type: ignore[union-attr]
                        try:
                            entry["label"] = int(raw.decode().strip())
                        except ValueError:
                            entry["bad_label"] = True
            except (tarfile.ReadError, EOFError, OSError) as err:
                dropped["unreadable_tar"] += 1
                log.warning("skipped the rest of %s: %s", path, err)
    except (tarfile.ReadError, OSError) as err:
        dropped["unreadable_tar"] += 1
        log.warning("skipped unreadable tar %s: %s", path, err)
        return pd.DataFrame(columns=COLUMNS), dropped
    rows = []
    for key, e in samples.items():
        if e.get("bad_label"):
            dropped["bad_label"] += 1
        elif e.get("cut") or "offset" not in e or "label" not in e:
            dropped["incomplete_sample"] += 1
        else:
            rows.append((key, e["offset"], e["size"], e["label"]))
    frame = pd.DataFrame(rows, columns=COLUMNS).astype({"offset": "int64", "size": "int64", "label": "int64"})
    return frame, dropped


def _cache_path(tar: Path) -> Path:
    return tar.parent / INDEX_DIR / (tar.name.removesuffix(".tar") + ".parquet")


def load_tar_index(path: str | os.PathLike[str]) -> tuple[pd.DataFrame, dict[str, int]]:
    """:func:`scan_tar`, cached in ``_index/`` and rescanned when the tar changed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tar = Path(path)
    st = tar.stat()
    stamp = f"{INDEX_VERSION}:{st.st_size}:{st.st_mtime_ns}"
    cache = _cache_path(tar)
    if cache.is_file():
        try:
            table = pq.read_table(cache)
            meta = table.schema.metadata or {}
            if meta.get(b"stamp", b"").decode() == stamp:
                dropped = {k: int(v) for k, v in
                           (item.split("=") for item in meta.get(b"dropped", b"").decode().split(",") if item)}
                return table.to_pandas(), dropped
        except (OSError, pa.ArrowInvalid):
            pass  # a torn or foreign cache file: scan again
    frame, dropped = scan_tar(tar)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({"stamp": stamp, "dropped": ",".join(f"{k}={v}" for k, v in dropped.items())})
    try:
        with atomic_path(cache) as tmp:
            pq.write_table(table, tmp)
    except OSError as err:  # a read-only shard folder: work from memory
        log.debug("cannot cache the index of %s: %s", tar, err)
    return frame, dropped


class SkipStatsLike(Protocol):
    def add(self, reason: str) -> None: ...


@dataclass
class SampleTable:
    """Samples located in their tars: arrays indexed by sample number (30 bytes per sample)."""

    paths: list[str]
    shard: np.ndarray
    offset: np.ndarray
    size: np.ndarray
    label: np.ndarray
    source: np.ndarray
    weights: list[float] | None = None  # mixing weights per source; None: the union, in proportion to the sizes
    dropped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.label)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.label, minlength=int(self.label.max()) + 1 if len(self.label) else 0)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.shard, self.offset, self.size, self.label, self.source))


class TarSamples:
    """A map-style dataset over a :class:`SampleTable`: item ``(i, weight)`` -> record dict, or None if undecodable.

    Each process (DataLoader workers included) keeps at most ``max_open`` files open, least
    recently used closed first: a pool has more shards than the usual open-file limit. A
    sample whose bytes do not decode is counted in ``stats`` (``corrupt_image``) and comes
    back as None; :func:`collate_weighted` leaves it out. Failing to open or read a shard is
    not a corrupt sample: it raises.
    """

    def __init__(self, table: SampleTable, transform: Callable[[Any], Any] | None = None,
                 stats: SkipStatsLike | None = None, max_open: int = 64):
        self.table, self.transform, self.stats, self.max_open = table, transform, stats, max_open
        self._files: OrderedDict[int, Any] = OrderedDict()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.table)

    def _file(self, shard: int) -> Any:
        if self._pid != os.getpid():  # a forked worker must not share its parent's file positions
            self._files, self._pid = OrderedDict(), os.getpid()
        handle = self._files.get(shard)
        if handle is not None:
            self._files.move_to_end(shard)
            return handle
        if len(self._files) >= self.max_open:
            self._files.popitem(last=False)[1].close()
        handle = self._files[shard] = open(self.table.paths[shard], "rb")  # noqa: SIM115 (an LRU of handles)
        return handle

    def read(self, i: int) -> bytes:
        t = self.table
        handle = self._file(int(t.shard[i]))
        handle.seek(int(t.offset[i]))
        data = handle.read(int(t.size[i]))
        if len(data) != int(t.size[i]):
            raise OSError(f"{t.paths[int(t.shard[i])]} changed since it was indexed: sample {i} is cut short")
        return data

    def __getitem__(self, item: tuple[int, float]) -> dict[str, Any] | None:
        from PIL import Image

        i, weight = item
        data = self.read(i)
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()  # decode now: a corrupt or truncated JPEG fails here
                image = img.convert("RGB")
        except (OSError, ValueError, SyntaxError) as err:  # PIL's decoder errors (UnidentifiedImageError is an OSError)
            if self.stats is not None:
                self.stats.add("corrupt_image")
            log.warning("skipped (corrupt_image): sample %d of %s: %s", i, self.table.paths[int(self.table.shard[i])],
                        str(err).splitlines()[0][:200] if str(err) else type(err).__name__)
            return None
        return {"image": self.transform(image) if self.transform else image, "label": int(self.table.label[i]),
                "index": i, "weight": float(weight)}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_files"] = OrderedDict()
        return state


def collate_weighted(batch: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Stack images, labels, dataset indices and loss weights; unreadable samples are left out."""
    import torch

    records = [r for r in batch if r is not None]
    if not records:
        return {"image": None, "label": torch.zeros(0, dtype=torch.long), "index": torch.zeros(0, dtype=torch.long),
                "weight": torch.zeros(0)}
    images = [r["image"] for r in records]
    return {
        "image": torch.stack(images) if isinstance(images[0], torch.Tensor) else images,
        "label": torch.tensor([r["label"] for r in records], dtype=torch.long),
        "index": torch.tensor([r["index"] for r in records], dtype=torch.long),
        "weight": torch.tensor([r["weight"] for r in records], dtype=torch.float32),
    }
