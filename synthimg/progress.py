"""Progress bars for long loops (rich), quiet under ``--quiet``, CI or a non-terminal stderr."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

QUIET = False


def enabled() -> bool:
    """Bars show only on an interactive terminal, never under ``--quiet`` or CI."""
    return not QUIET and not os.environ.get("CI") and sys.stderr.isatty()


class _Bar:
    def __init__(self, progress: Any, task: Any):
        self._progress, self._task = progress, task

    def advance(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)


@contextmanager
def progress_bar(total: int | None, description: str, enabled: bool = True) -> Iterator[_Bar]:
    """A rich bar with count, rate and ETA; a no-op when disabled."""
    if not (enabled and globals()["enabled"]()):
        yield _Bar(None, None)
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text(f"{task.speed:,.1f}/s" if task.speed else "-/s")

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(), TimeRemainingColumn()]
    with Progress(*columns, transient=False) as progress:
        yield _Bar(progress, progress.add_task(description, total=total))
