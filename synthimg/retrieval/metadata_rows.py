"""Rows of an index's metadata by id, read from its parquet files on demand.

A LAION-2B index has two billion metadata rows; serving it must not load them. The files'
footers give each file's row count and row-group boundaries, so a row id maps to one row
group, which is read (and kept in a small LRU cache) only when a query needs it.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from synthimg.data.parquet import parquet_file


class ParquetRows:
    """Rows ``0 .. len-1`` of parquet files read in order, fetched by id without loading the files."""

    def __init__(self, files: list[Path], cache_groups: int = 16):
        from synthimg.data.parquet import parquet_metadata

        self.files = [Path(f) for f in files]
        starts = [0]
        self._group_starts = []  # per file: first row of each row group, within the file
        self.columns: list[str] = []
        for f in self.files:  # footers only: no file stays open (LAION-2B has thousands)
            md = parquet_metadata(f)
            sizes = [md.row_group(g).num_rows for g in range(md.num_row_groups)]
            self._group_starts.append(np.cumsum([0] + sizes[:-1]).astype(np.int64))
            starts.append(starts[-1] + md.num_rows)
            self.columns = self.columns or md.schema.to_arrow_schema().names
        self._file_starts = np.asarray(starts, np.int64)
        self._cache: OrderedDict[tuple[int, int], Any] = OrderedDict()
        self._cache_groups = cache_groups

    def __len__(self) -> int:
        return int(self._file_starts[-1])

    def file_counts(self) -> list[int]:
        return np.diff(self._file_starts).tolist()

    def _group(self, f: int, g: int) -> Any:
        """Row group ``g`` of file ``f`` as an Arrow table, kept in a small LRU cache."""
        key = (f, g)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        with parquet_file(self.files[f]) as pf:
            table = pf.read_row_group(g)
        self._cache[key] = table
        if len(self._cache) > self._cache_groups:
            self._cache.popitem(last=False)
        return table

    def take(self, ids: list[int] | np.ndarray) -> list[dict[str, Any]]:
        """The rows (every column) of ``ids``, in order; ids outside ``0 .. len-1`` give empty rows."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        out: list[dict[str, Any]] = [{} for _ in range(len(ids))]
        valid = np.flatnonzero((ids >= 0) & (ids < len(self)))
        if not len(valid):
            return out
        files = np.searchsorted(self._file_starts, ids[valid], side="right") - 1
        within = ids[valid] - self._file_starts[files]
        by_group: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for slot, f, w in zip(valid.tolist(), files.tolist(), within.tolist()):
            g = int(np.searchsorted(self._group_starts[f], w, side="right")) - 1
            by_group.setdefault((f, g), []).append((slot, w - int(self._group_starts[f][g])))
        for (f, g), wanted in by_group.items():
            rows = self._group(f, g).take([r for _, r in wanted]).to_pylist()
            for (slot, _), row in zip(wanted, rows):
                out[slot] = row
        return out
