"""Progress bars for long loops (rich), quiet under ``--quiet``, CI or a non-terminal stderr."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
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


@contextmanager
def output_to(log: Path | None) -> Iterator[None]:
    """Send everything written to stdout and stderr (child processes, C libraries and warnings included) to ``log``.

    File descriptors 1 and 2 are redirected, so img2dataset's workers, torchrun's ranks and
    third-party progress bars land in the log too. ``None`` leaves the terminal alone.
    """
    if log is None:
        yield
        return
    import contextlib

    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "ab", buffering=0) as f, open(log, "a", buffering=1, encoding="utf-8") as text:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:  # sys.stdout may not be fd 1 (notebooks, pytest): redirect it too
            with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
                yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def terminal() -> Any:
    """A writable file on the terminal as it is now, unaffected by a later :func:`output_to`."""
    return os.fdopen(os.dup(1), "w", buffering=1)
