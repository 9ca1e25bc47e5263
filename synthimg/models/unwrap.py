"""The model inside its wrappers: DDP's ``.module`` and ``torch.compile``'s ``._orig_mod``."""

from __future__ import annotations

from typing import Any


def unwrap(model: Any) -> Any:
    """The plain module under any DDP and ``torch.compile`` wrappers, in either order."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if inner is None:
            inner = getattr(model, "module", None)
        if inner is None or inner is model:
            return model
        model = inner
