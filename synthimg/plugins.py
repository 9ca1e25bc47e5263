"""The plug-in interfaces, as ``typing.Protocol``: what a new learner, evaluator, descriptor, LLM
backend or search backend must provide to be registered. Nothing here imports a heavy library.

Registries: learners ``synthimg.models.learners.LEARNERS``, descriptors
``synthimg.curation.descriptors.DESCRIPTORS``, LLMs ``synthimg.synthetic.llm.BACKENDS``,
retrieval backends ``synthimg.retrieval.retrieve.BACKENDS`` (each builds a :class:`Search`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Learner(Protocol):
    """A model being fine-tuned: its loss on a batch, and the logits and features evaluation reads."""

    model: Any  # torch.nn.Module, the trained parameters
    transform_train: Any
    transform_eval: Any

    def loss(self, batch: dict[str, Any]) -> Any: ...

    def classifier(self) -> Any: ...

    def encode_image(self, images: Any) -> Any: ...


@runtime_checkable
class Evaluator(Protocol):
    """Called by the trainer after every epoch (rank 0): appends the epoch's result lines."""

    def has_epoch(self, run_dir: Path, epoch: int) -> bool: ...

    def on_epoch(self, learner: Any, base: dict[str, Any], run_dir: Path, device: str,
                 wise_alpha: float | None = None) -> None: ...


@runtime_checkable
class Descriptor(Protocol):
    """Image descriptors for decontamination: L2-normalised rows, compared by cosine."""

    name: str
    default_threshold: float
    transform: Any

    def __call__(self, images: Any) -> Any: ...


@runtime_checkable
class LLM(Protocol):
    """A text completer for captions and backgrounds: one completion per prompt, seeded."""

    id: str

    def complete(self, prompts: list[str], seed: int) -> list[str]: ...


@runtime_checkable
class Search(Protocol):
    """One text query's hits (``id``, ``url``, ``caption``, ``similarity``, ``index``, ``rank``)."""

    def __call__(self, query: str, k: int) -> list[dict[str, Any]]: ...


def members(protocol: type) -> list[str]:
    """The attribute and method names a protocol asks for."""
    names = set(getattr(protocol, "__annotations__", {}))
    names |= {n for n, v in vars(protocol).items() if callable(v) and (not n.startswith("_") or n == "__call__")}
    return sorted(names)
