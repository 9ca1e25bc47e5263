"""Image descriptors for near-duplicate search, chosen by name (``clip``, ``isc``) plus the pHash pass.

- ``clip``: open_clip image embeddings (any model, offline with random weights in tests).
  Exact copies give identical embeddings with any weights; catching transformed copies
  needs trained weights.
- ``isc``: the paper's descriptor, ``isc_ft_v107`` (EfficientNetV2-M via timm, GeM pooling,
  256-d projection, BatchNorm, L2), from a local weights file the user supplies; the
  paper's threshold 0.604169 on cosine similarity.
- The model-free pHash pass lives in :mod:`synthimg.curation.phash`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from synthimg.config import CurateConfig
from synthimg.errors import SynthimgError
from synthimg.plugins import Descriptor
from synthimg.registry import Registry

ISC_THRESHOLD = 0.604169  # paper Sec. 3.3, Table 1
ISC_BACKBONE = "tf_efficientnetv2_m.in21k_ft_in1k"  # v107's arch (timm's current name for tf_efficientnetv2_m_in21ft1k)
ISC_IMAGE_SIZE = 512
DESCRIPTORS = Registry("descriptor")
register = DESCRIPTORS.register



def create_descriptor(cfg: CurateConfig, device: str) -> Descriptor:
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
    import pickle

    import torch

    try:
        if hasattr(torch.serialization, "safe_globals"):  # torch >= 2.5: scoped to this load
            with torch.serialization.safe_globals([argparse.Namespace]):
                ckpt = torch.load(path, map_location="cpu", weights_only=True)
        else:  # torch 2.4: only the process-wide allow-list exists
            torch.serialization.add_safe_globals([argparse.Namespace])
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SynthimgError(f"cannot load ISC weights {path}: {first[:200]}") from None
    return ckpt if isinstance(ckpt, dict) else {"state_dict": ckpt}


@register("isc")
class IscDescriptor:
    """The paper's copy-detection descriptor, from a local ``isc_ft_v107`` weights file.

    The backbone and input size are ``curate.isc_backbone`` / ``curate.isc_image_size`` when
    set, else the checkpoint's (``arch``, ``args.input_size``: ``tf_efficientnetv2_m_in21ft1k``
    at 512 px for v107), else v107's.
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
        # an explicit setting wins; then the checkpoint's own; then v107's (EfficientNetV2-M at 512 px)
        self.backbone = str(cfg.isc_backbone or ckpt.get("arch") or ISC_BACKBONE)
        self.image_size = int(cfg.isc_image_size or getattr(args, "input_size", 0) or ISC_IMAGE_SIZE)
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
