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

    def __init__(self, files: list[Path], cache_groups: int = 64):
        self.files = [Path(f) for f in files]
        self._parquet = [parquet_file(f) for f in self.files]
        starts = [0]
        self._group_starts = []  # per file: first row of each row group, within the file
        for pf in self._parquet:
            sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
            self._group_starts.append(np.cumsum([0] + sizes[:-1]).astype(np.int64))
            starts.append(starts[-1] + pf.metadata.num_rows)
        self._file_starts = np.asarray(starts, np.int64)
        self.columns = self._parquet[0].schema_arrow.names if self._parquet else []
        self._cache: OrderedDict[tuple[int, int], list[dict[str, Any]]] = OrderedDict()
        self._cache_groups = cache_groups

    def __len__(self) -> int:
        return int(self._file_starts[-1])

    def file_counts(self) -> list[int]:
        return np.diff(self._file_starts).tolist()

    def _group(self, f: int, g: int) -> list[dict[str, Any]]:
        key = (f, g)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        rows = self._parquet[f].read_row_group(g).to_pylist()
        self._cache[key] = rows
        if len(self._cache) > self._cache_groups:
            self._cache.popitem(last=False)
        return rows

    def take(self, ids: list[int] | np.ndarray) -> list[dict[str, Any]]:
        """The rows (every column) of ``ids``; ids outside ``0 .. len-1`` give empty rows."""
        out: list[dict[str, Any]] = []
        for i in np.asarray(ids, np.int64).tolist():
            if not 0 <= i < len(self):
                out.append({})
                continue
            f = int(np.searchsorted(self._file_starts, i, side="right")) - 1
            within = i - int(self._file_starts[f])
            g = int(np.searchsorted(self._group_starts[f], within, side="right")) - 1
            out.append(self._group(f, g)[within - int(self._group_starts[f][g])])
        return out
