"""What every stage's entry point looks like: ``run(cfg, ...) -> Stats``.

A stage's ``run`` takes the resolved ``Config`` (never edited afterwards) plus its paths,
does the work, writes **all** of its outputs (data, stats JSON, the resolved ``config.yaml``)
and returns its stats. The CLI and the study call these; the CLI only parses and prints.
"""

from __future__ import annotations

from typing import Any, TypeAlias

Stats: TypeAlias = dict[str, Any]  # what the stage also wrote to its ``*_stats.json`` / ``subsets.json``
