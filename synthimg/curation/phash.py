"""The model-free decontamination pass: perceptual hashes of crop variants, confirmed pixel by pixel.

Evaluation images are hashed whole and cropped by every combination of ``phash_crops`` on
their four sides (81 variants for 0, 5 and 10%), with a 256-bit pHash; candidates as they
are and mirrored. A crop of up to about 10% a side then lies within a few percent of some
variant. Many variants also make chance matches likelier, and a pHash cannot tell apart
images whose coarse luminance is alike, so every hash match within ``phash_threshold`` is
confirmed before it counts: the candidate's 32 x 32 luminance must correlate with the
matched variant's (normalised cross-correlation >= ``phash_verify_ncc``) and their 8 x 8
colours must agree (mean absolute difference <= ``phash_verify_colour`` grey levels). The
evaluation side keeps a 64 px luminance and a 16 px colour thumbnail per image (5 KB), from
which any variant is cut on the fly.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

EVAL_LUMA, EVAL_RGB, LUMA, RGB = 64, 16, 32, 8


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


def crop_boxes(fractions: list[float]) -> list[tuple[float, float, float, float]]:
    """(left, top, right, bottom) fractions of every variant, the uncropped one first."""
    return list(itertools.product(sorted(set(fractions)), repeat=4))


def _crop(image: Any, box: tuple[float, float, float, float]) -> Any:
    w, h = image.size
    left, top, right, bottom = box
    pixels = (round(left * w), round(top * h), w - round(right * w), h - round(bottom * h))
    return image if pixels == (0, 0, w, h) else image.crop(pixels)


def crop_variants(image: Any, fractions: list[float]) -> list[Any]:
    """The image cropped by every combination of ``fractions`` on its four sides (the uncropped one first)."""
    return [_crop(image, box) for box in crop_boxes(fractions)]


def _thumb(image: Any, size: int, mode: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(image.convert(mode).resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def eval_thumbs(image: Any) -> tuple[np.ndarray, np.ndarray]:
    """What verification keeps of an evaluation image: 64 px luminance and 16 px colour."""
    return _thumb(image, EVAL_LUMA, "L"), _thumb(image, EVAL_RGB, "RGB")


def candidate_thumbs(image: Any) -> tuple[np.ndarray, np.ndarray]:
    """A candidate's 32 px luminance and 8 px colour (its mirror is these flipped)."""
    return _thumb(image, LUMA, "L").astype(np.float32), _thumb(image, RGB, "RGB").astype(np.float32)


def _variant(thumb: np.ndarray, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(_crop(Image.fromarray(thumb), box).resize((size, size), Image.Resampling.BILINEAR),
                      dtype=np.float32)


def agreement(cand: tuple[np.ndarray, np.ndarray], evaluation: tuple[np.ndarray, np.ndarray],
              box: tuple[float, float, float, float]) -> tuple[float, float]:
    """(luminance correlation, mean colour difference) of a candidate and one variant of an evaluation image."""
    a = cand[0] - cand[0].mean()
    b = _variant(evaluation[0], box, LUMA)
    b = b - b.mean()
    ncc = float((a * b).sum() / (np.sqrt((a * a).sum() * (b * b).sum()) + 1e-6))
    colour = float(np.abs(cand[1] - _variant(evaluation[1], box, RGB)).mean())
    return ncc, colour


def mirror(thumbs: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return np.ascontiguousarray(thumbs[0][:, ::-1]), np.ascontiguousarray(thumbs[1][:, ::-1])
