"""Image descriptors for near-duplicate search, chosen by name (``clip``, ``isc``) plus the pHash pass.

- ``clip``: open_clip image embeddings (any model, offline with random weights in tests).
  Exact copies give identical embeddings with any weights; catching transformed copies
  needs trained weights.
- ``isc``: the paper's descriptor, ``isc_ft_v107`` (EfficientNetV2-M via timm, GeM pooling,
  256-d projection, BatchNorm, L2), from a local weights file the user supplies; the
  paper's threshold 0.604169 on cosine similarity.
- pHash (imagehash): DCT hashes (256 bits by default) compared by Hamming distance with a
  faiss binary index. Evaluation images are hashed whole and cropped by every combination of
  ``curate.phash_crops`` per side, candidates as they are and mirrored, so exact, resized,
  recompressed, recoloured, cropped (up to about 10% a side) and flipped copies are caught
  without any model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from synthimg.config import CurateConfig
from synthimg.errors import SynthimgError
from synthimg.registry import Registry

ISC_THRESHOLD = 0.604169  # paper Sec. 3.3, Table 1
DESCRIPTORS = Registry("descriptor")
register = DESCRIPTORS.register



def create_descriptor(cfg: CurateConfig, device: str) -> Any:
    """The configured float descriptor, or None for ``descriptor: none``."""
    if cfg.descriptor == "none":
        return None
    if cfg.descriptor not in DESCRIPTORS:
        raise SynthimgError(f"unknown descriptor {cfg.descriptor!r}; choose from: {', '.join(DESCRIPTORS)}, none")
    return DESCRIPTORS[cfg.descriptor](cfg, device)


@register("clip")
class ClipDescriptor:
    """L2-normalised open_clip image embeddings."""

    name = "clip"
    default_threshold = 0.95

    def __init__(self, cfg: CurateConfig, device: str):
        from synthimg.models.clip import create_clip

        bundle = create_clip(cfg.model, cfg.pretrained, device=device)
        self.model, self.transform, self.device = bundle.model.eval(), bundle.preprocess_val, device

    def __call__(self, images: Any) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.model.encode_image(images.to(self.device), normalize=True).float().cpu().numpy()


def isc_net(backbone: str, fc_dim: int = 256, eval_p: float = 1.0) -> Any:
    """The ISC21 descriptor network: timm features -> GeM -> Linear (no bias) -> BatchNorm1d -> L2."""
    import timm
    import torch
    import torch.nn.functional as F

    class ISCNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = timm.create_model(backbone, features_only=True, pretrained=False)
            self.fc = torch.nn.Linear(self.backbone.feature_info.info[-1]["num_chs"], fc_dim, bias=False)
            self.bn = torch.nn.BatchNorm1d(fc_dim)
            self.eval_p = eval_p

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            feats = self.backbone(x)[-1].clamp(min=1e-6).pow(self.eval_p)
            pooled = F.adaptive_avg_pool2d(feats, 1).pow(1.0 / self.eval_p).flatten(1)
            return F.normalize(self.bn(self.fc(pooled)), dim=-1)

    return ISCNet()


def load_isc_checkpoint(path: Path) -> dict[str, Any]:
    """An ``isc_ft_v107``-style checkpoint: ``state_dict`` (``module.``-prefixed), ``arch``, ``args``.

    ``args`` is a pickled ``argparse.Namespace``, which a plain ``weights_only=True`` load
    refuses; that one class is allow-listed, nothing else.
    """
    import argparse

    import torch

    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling refusal is a one-line user error
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SynthimgError(f"cannot load ISC weights {path}: {first[:200]}") from None
    return ckpt if isinstance(ckpt, dict) else {"state_dict": ckpt}


@register("isc")
class IscDescriptor:
    """The paper's copy-detection descriptor, from a local ``isc_ft_v107`` weights file.

    The backbone and input size come from the checkpoint (``arch``, ``args.input_size``:
    ``tf_efficientnetv2_m_in21ft1k`` at 512 px for v107) when it names them, else from
    ``curate.isc_backbone`` and ``curate.isc_image_size``.
    """

    name = "isc"
    default_threshold = ISC_THRESHOLD

    def __init__(self, cfg: CurateConfig, device: str):
        import torchvision.transforms as T

        if not cfg.isc_weights:
            raise SynthimgError("descriptor isc needs curate.isc_weights: the local isc_ft_v107 weights file")
        path = Path(cfg.isc_weights)
        if not path.is_file():
            raise SynthimgError(f"ISC weights not found: {path}")
        ckpt = load_isc_checkpoint(path)
        args = ckpt.get("args")
        self.backbone = str(ckpt.get("arch") or cfg.isc_backbone)
        self.image_size = int(getattr(args, "input_size", 0) or cfg.isc_image_size)
        net = isc_net(self.backbone)
        state = ckpt.get("state_dict", ckpt)
        state = {k.removeprefix("module."): v for k, v in state.items()}
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise SynthimgError(
                f"{path} does not fit the ISC network on {self.backbone}: "
                f"{len(missing)} missing and {len(unexpected)} unexpected keys (first: {(missing or unexpected)[0]})"
            )
        cfg_data = net.backbone.pretrained_cfg
        self.transform = T.Compose([
            T.Resize((self.image_size, self.image_size)),
            T.ToTensor(),
            T.Normalize(cfg_data.get("mean", (0.5, 0.5, 0.5)), cfg_data.get("std", (0.5, 0.5, 0.5))),
        ])
        self.model, self.device = net.to(device).eval(), device

    def __call__(self, images: Any) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.model(images.to(self.device)).float().cpu().numpy()


def phash_codes(images: list[Any], mirrored: bool = False, bits: int = 64) -> np.ndarray:
    """Perceptual hashes as uint8 rows [N, bits / 8] (faiss binary format)."""
    import imagehash
    from PIL import ImageOps

    side = int(round(bits ** 0.5))
    rows = []
    for img in images:
        h = imagehash.phash(ImageOps.mirror(img) if mirrored else img, hash_size=side)
        rows.append(np.packbits(h.hash.flatten()))
    return np.stack(rows).astype(np.uint8) if rows else np.zeros((0, bits // 8), np.uint8)


def crop_variants(image: Any, fractions: list[float]) -> list[Any]:
    """The image cropped by every combination of ``fractions`` on its four sides (the uncropped one first)."""
    import itertools

    w, h = image.size
    out = []
    for left, top, right, bottom in itertools.product(sorted(set(fractions)), repeat=4):
        box = (round(left * w), round(top * h), w - round(right * w), h - round(bottom * h))
        out.append(image if box == (0, 0, w, h) else image.crop(box))
    return out
