"""Where the catalog's data lives: the top-level ``data_manifests/`` folder, installed as
``synthimg.data_manifests`` (editable or not)."""

from __future__ import annotations

from importlib import resources
from importlib.abc import Traversable


def manifests() -> Traversable:
    """The root of the catalog data: ``tasks/<task>/*.json`` and ``captions/*.json``."""
    return resources.files("synthimg.data_manifests")
