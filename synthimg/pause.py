"""Named pause points, so that a test can kill -9 a run at a known place instead of racing it.

``SYNTHIMG_PAUSE_AT=checkpoint:2`` makes the run stop (sleep) right after that point, having
first created the file ``SYNTHIMG_PAUSE_FILE`` names; without the variable a point costs one
dictionary lookup.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def pause_point(name: str) -> None:
    """Sleep for an hour here when ``SYNTHIMG_PAUSE_AT`` names this point."""
    if os.environ.get("SYNTHIMG_PAUSE_AT") != name:
        return
    flag = os.environ.get("SYNTHIMG_PAUSE_FILE")
    if flag:
        Path(flag).touch()
    time.sleep(3600)
