"""open_clip learners and the paper's zero-shot-initialised classification head.

``create_clip`` takes ``pretrained=`` an open_clip tag (``laion2b_s34b_b88k``), a local
checkpoint file, or None (random weights). Tiny configs named ``synthimg-tiny-*`` ship in
``model_configs/`` for tests and the demo; the BPE vocabulary ships inside open_clip.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from synthimg.errors import SynthimgError

CONFIG_DIR = Path(__file__).parent / "model_configs"
_registered = False


def register_tiny_configs() -> None:
    """Make the ``synthimg-tiny-*`` configs known to open_clip (idempotent)."""
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


@dataclass
class ClipBundle:
    """A created open_clip model with its transforms and tokenizer."""

    model: Any
    preprocess_train: Any
    preprocess_val: Any
    tokenizer: Any
    name: str
    pretrained: str | None


def check_model_name(name: str) -> None:
    """Fail with close matches for a model name open_clip does not know."""
    import open_clip

    register_tiny_configs()
    known = open_clip.list_models()
    if name not in known and not name.startswith(("hf-hub:", "local-dir:")):
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        hint = f"; close matches: {', '.join(close)}" if close else "; see open_clip.list_models()"
        raise SynthimgError(f"unknown open_clip model {name!r}{hint}")


def create_clip(
    name: str,
    pretrained: str | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    **kwargs: Any,
) -> ClipBundle:
    """Create an open_clip model; ``pretrained`` is a tag, a local checkpoint path, or None."""
    import open_clip

    check_model_name(name)
    if pretrained and ("/" in pretrained or pretrained.endswith((".pt", ".bin", ".safetensors"))):
        if not Path(pretrained).is_file():
            raise SynthimgError(f"checkpoint not found: {pretrained}")
    elif pretrained and not name.startswith("hf-hub:"):
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            raise SynthimgError(
                f"open_clip has no pretrained tag {pretrained!r} for {name}; "
                f"choose from: {', '.join(tags) or 'none (pass a checkpoint file)'}"
            )
    model, pre_train, pre_val = open_clip.create_model_and_transforms(
        name, pretrained=pretrained or None, device=device, precision=precision, **kwargs
    )
    return ClipBundle(model, pre_train, pre_val, open_clip.get_tokenizer(name), name, pretrained)


def zeroshot_weights(
    model: Any, tokenizer: Any, prompts_per_class: list[list[str]], device: str = "cpu"
) -> torch.Tensor:
    """Class embeddings [K, D]: per class, normalise template embeddings, average, renormalise."""
    rows = []
    with torch.no_grad():
        for prompts in prompts_per_class:
            emb = model.encode_text(tokenizer(prompts).to(device))
            rows.append(F.normalize(F.normalize(emb.float(), dim=-1).mean(dim=0), dim=-1))
    return torch.stack(rows)


def zeroshot_head(
    model: Any, tokenizer: Any, prompts_per_class: list[list[str]], device: str = "cpu"
) -> torch.nn.Linear:
    """The paper's head: a Linear whose weight is ``logit_scale.exp()`` x class embeddings, bias 0."""
    weights = zeroshot_weights(model, tokenizer, prompts_per_class, device)
    head = torch.nn.Linear(weights.shape[1], weights.shape[0], bias=True)
    with torch.no_grad():
        head.weight.copy_(model.logit_scale.exp().float() * weights)
        head.bias.zero_()
    return head.to(device)


class ClipClassifier(torch.nn.Module):
    """Image tower + zero-shot head; image features are L2-normalised before the head."""

    def __init__(self, visual: torch.nn.Module, head: torch.nn.Linear):
        super().__init__()
        self.visual, self.head = visual, head

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(images), dim=-1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))
