"""The one NSFW rule, for the client (``retrieve``) and the server (``index serve``) alike."""

from __future__ import annotations

from typing import Any

# LAION's NSFW column holds UNLIKELY / UNSURE / NSFW; other collections write booleans or 0/1.
# UNSURE is dropped too: the retrieved arm must not be the place where borderline images slip in.
FLAGGED = ("NSFW", "UNSURE", "TRUE", "1")


def flagged(value: Any) -> bool:
    """True when a metadata NSFW value marks the row unsafe (missing or NaN: not flagged).

    Words by the list above; numbers (a 0/1 column, which pandas makes 1.0 once a value is
    missing, or a probability) from 0.5 up.
    """
    if value is None or value != value:
        return False
    if isinstance(value, (bool, int, float)) or type(value).__module__ == "numpy":
        try:
            return float(value) >= 0.5
        except (TypeError, ValueError):
            pass
    return str(value).strip().upper() in FLAGGED
