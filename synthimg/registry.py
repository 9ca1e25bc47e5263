"""Name-to-builder registries for variants (learners, LLM backends, caption methods, descriptors)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Registry(dict[str, Any]):
    """A dict with a ``register(name)`` decorator; ``get_or_fail`` names the choices on a miss."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[Any], Any]:
        def wrap(builder: Any) -> Any:
            self[name] = builder
            return builder

        return wrap

    def get_or_fail(self, name: str) -> Any:
        from synthimg.errors import SynthimgError

        if name not in self:
            raise SynthimgError(f"unknown {self.kind} {name!r}; choose from: {', '.join(self)}")
        return self[name]
