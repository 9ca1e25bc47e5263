"""Image descriptors for near-duplicate search, chosen by name (``clip``, ``isc``) plus the pHash pass.

- ``clip``: open_clip image embeddings (any model, offline with random weights in tests).
  Exact copies give identical embeddings with any weights; catching transformed copies
  needs trained weights.
- ``isc``: the paper's descriptor, ``isc_ft_v107`` (EfficientNetV2-M via timm, GeM pooling,
  256-d projection, BatchNorm, L2), from a local weights file the user supplies; the
  paper's threshold 0.604169 on cosine similarity.
- pHash (imagehash): 64-bit DCT hashes compared by Hamming distance with a faiss binary
  index; also matched against the mirrored image, so it catches exact, recompressed,
  resized, slightly recoloured and flipped copies without any model.
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


@register("isc")
class IscDescriptor:
    """The paper's copy-detection descriptor, from a local ``isc_ft_v107`` weights file."""

    name = "isc"
    default_threshold = ISC_THRESHOLD

    def __init__(self, cfg: CurateConfig, device: str):
        import torch
        import torchvision.transforms as T

        if not cfg.isc_weights:
            raise SynthimgError("descriptor isc needs curate.isc_weights: the local isc_ft_v107 weights file")
        path = Path(cfg.isc_weights)
        if not path.is_file():
            raise SynthimgError(f"ISC weights not found: {path}")
        net = isc_net(cfg.isc_backbone)
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        state = {k.removeprefix("module."): v for k, v in state.items()}
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise SynthimgError(
                f"{path} does not fit the ISC network on {cfg.isc_backbone}: "
                f"{len(missing)} missing and {len(unexpected)} unexpected keys (first: {(missing or unexpected)[0]})"
            )
        cfg_data = net.backbone.pretrained_cfg
        self.transform = T.Compose([
            T.Resize((cfg.isc_image_size, cfg.isc_image_size)),
            T.ToTensor(),
            T.Normalize(cfg_data.get("mean", (0.5, 0.5, 0.5)), cfg_data.get("std", (0.5, 0.5, 0.5))),
        ])
        self.model, self.device = net.to(device).eval(), device

    def __call__(self, images: Any) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.model(images.to(self.device)).float().cpu().numpy()


def phash_codes(images: list[Any], mirrored: bool = False) -> np.ndarray:
    """64-bit perceptual hashes as uint8 rows [N, 8] (faiss binary format)."""
    import imagehash
    from PIL import ImageOps

    rows = []
    for img in images:
        h = imagehash.phash(ImageOps.mirror(img) if mirrored else img)
        rows.append(np.packbits(h.hash.flatten()))
    return np.stack(rows).astype(np.uint8) if rows else np.zeros((0, 8), np.uint8)
