"""timm ViT learners: ``timm.create_model`` with a fresh classification head.

``pretrained`` is False (random), True (timm's default tag), a tag (``augreg2_in21k_ft_in1k``)
or a local weights file (loaded through timm's ``pretrained_cfg_overlay``).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from synthimg.errors import SynthimgError


def create_vit(name: str, num_classes: int, pretrained: bool | str = False, **kwargs: Any) -> Any:
    """Create a timm model for ``num_classes``; unknown names fail with close matches."""
    import timm

    base = name.split(".", 1)[0]
    if not timm.is_model(base):
        close = difflib.get_close_matches(base, timm.list_models(), n=5, cutoff=0.5)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise SynthimgError(f"unknown timm model {name!r}{hint}")
    if isinstance(pretrained, str) and pretrained not in ("", "none", "None"):
        path = Path(pretrained)
        if path.suffix in (".pth", ".pt", ".bin", ".safetensors", ".npz") or path.exists():
            if not path.is_file():
                raise SynthimgError(f"weights file not found: {pretrained}")
            return timm.create_model(
                name, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay={"file": str(path)}, **kwargs
            )
        return timm.create_model(f"{base}.{pretrained}", pretrained=True, num_classes=num_classes, **kwargs)
    return timm.create_model(name, pretrained=bool(pretrained), num_classes=num_classes, **kwargs)
