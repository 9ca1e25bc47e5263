"""The one NSFW rule, for the client (``retrieve``) and the server (``index serve``) alike."""

from __future__ import annotations

from typing import Any

# LAION's NSFW column holds UNLIKELY / UNSURE / NSFW; other collections write booleans or 0/1.
# UNSURE is dropped too: the retrieved arm must not be the place where borderline images slip in.
FLAGGED = ("NSFW", "UNSURE", "TRUE", "1")


def flagged(value: Any) -> bool:
    """True when a metadata NSFW value marks the row unsafe (missing or NaN: not flagged)."""
    return value is not None and value == value and str(value).strip().upper() in FLAGGED
