"""One logging set-up for the command line: our loggers and the libraries' go the same way.

Libraries such as open_clip log through the root logger (``logging.warning(...)``), which,
left alone, configures itself and prints ``WARNING:root:...``. The CLI installs one stderr
handler on the root logger instead; each line names the library it came from.
"""

from __future__ import annotations

import logging
import sys
from pathlib import PurePath

_MARK = "_synthimg_handler"


def _source(record: logging.LogRecord) -> str:
    """``synthimg.train``, or the top-level package a root-logger line came from (``open_clip``)."""
    if record.name != "root":
        return record.name
    parts = PurePath(record.pathname).parts
    for anchor in ("site-packages", "dist-packages"):
        if anchor in parts and parts.index(anchor) + 1 < len(parts):
            return parts[parts.index(anchor) + 1].removesuffix(".py")
    return PurePath(record.pathname).stem or "root"


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each line (redirects and test captures follow)."""

    @property  # type: ignore[override]
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {_source(record)}: {record.getMessage()}"


def setup_logging(debug: bool = False) -> None:
    """One root handler on stderr: warnings and up, everything with ``debug``."""
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not getattr(h, _MARK, False)]
    handler = _Stderr()
    handler.setFormatter(_Format())
    setattr(handler, _MARK, True)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
