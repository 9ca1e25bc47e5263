"""Reading parquet inputs a user hands us: a corrupt or non-parquet file is one line naming it."""

from __future__ import annotations

import os
from typing import Any

from synthimg.errors import SynthimgError


def _unreadable(path: str | os.PathLike[str], err: Exception) -> SynthimgError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return SynthimgError(f"{path} is not a readable parquet file ({first})")


def parquet_file(path: str | os.PathLike[str]) -> Any:
    """``pyarrow.parquet.ParquetFile`` of ``path``, or a one-line error."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise _unreadable(path, err) from None


def parquet_metadata(path: str | os.PathLike[str]) -> Any:
    """The footer (``pyarrow.parquet.FileMetaData``) of ``path``, read and closed, or a one-line error."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_metadata(path)
    except (pa.ArrowException, OSError) as err:
        raise _unreadable(path, err) from None


def iter_batches(path: str | os.PathLike[str], parquet: Any, **kwargs: Any) -> Any:
    """``parquet.iter_batches(**kwargs)``; a file that breaks part-way is a one-line error too."""
    import pyarrow as pa

    try:
        yield from parquet.iter_batches(**kwargs)
    except (pa.ArrowException, OSError) as err:
        raise _unreadable(path, err) from None


def read_table(path: str | os.PathLike[str], columns: list[str] | None = None) -> Any:
    """``pandas.read_parquet`` of a user's file, or a one-line error naming it."""
    import pandas as pd
    import pyarrow as pa

    try:
        return pd.read_parquet(path, columns=columns)
    except (pa.ArrowException, OSError, ValueError) as err:
        raise _unreadable(path, err) from None
