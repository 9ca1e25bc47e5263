"""Shared fixtures: tiny images and shard folders written on the fly (no downloads, ever)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthimg.data.shards import ShardWriter, finalize, sample_key


def jpeg_bytes(seed: int, size: tuple[int, int] = (16, 16)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def make_sample(index: int, class_id: int, classnames: list[str]) -> dict:
    return {
        "__key__": sample_key(index),
        "jpg": jpeg_bytes(index),
        "cls": class_id,
        "txt": f"a photo of a {classnames[class_id]}.",
        "json": {"source": "upstream", "class_id": class_id, "class_name": classnames[class_id]},
    }


CLASSNAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture
def classnames() -> list[str]:
    return list(CLASSNAMES)


def write_dataset(out: Path, n: int = 40, maxcount: int = 10, num_classes: int = 10) -> list[str]:
    """n samples, labels round-robin over classes, ``maxcount`` per shard; returns the keys."""
    with ShardWriter(out, prefix="shard", maxcount=maxcount) as writer:
        for i in range(n):
            writer.write(make_sample(i, i % num_classes, CLASSNAMES))
    finalize(out, CLASSNAMES)
    return [sample_key(i) for i in range(n)]


@pytest.fixture
def shard_dir(tmp_path: Path) -> tuple[Path, list[str]]:
    out = tmp_path / "shards"
    return out, write_dataset(out)


COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255],
                    [0, 255, 255], [128, 0, 0], [0, 128, 0], [0, 0, 128], [128, 128, 128]])


def _jpeg(c: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    a = np.clip(COLOURS[c][None, None] * 0.8 + rng.normal(0, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG")
    return buf.getvalue()


def write_colour_shards(out: Path, n: int, offset: int, source: str = "synthetic", maxcount: int = 50) -> None:
    """``n`` samples of a learnable toy task: the colour is the class."""
    with ShardWriter(out, maxcount=maxcount) as w:
        for i in range(n):
            c = i % 10
            w.write({"__key__": sample_key(i), "jpg": _jpeg(c, offset + i), "cls": c, "txt": "x",
                     "json": {"source": source, "class_id": c, "class_name": CLASSNAMES[c]}})
    finalize(out, CLASSNAMES)


def scoring_copies(tmp_path: Path, names: tuple[str, ...]) -> tuple[list[str], list[Path]]:
    """``curate score`` arguments for a saved tiny-ViT checkpoint, and one identical 40-sample
    shard folder per name, so that launches can be compared score for score."""
    import shutil

    import torch

    from synthimg.models.clip import create_clip

    ckpt = tmp_path / "tiny.pt"
    torch.save({"state_dict": create_clip("synthimg-tiny-vit").model.state_dict()}, ckpt)
    folders = [tmp_path / n for n in names]
    write_dataset(folders[0], n=40, maxcount=10)
    for f in folders[1:]:
        shutil.copytree(folders[0], f)
    args = ["--quiet", "curate", "score", "--task", "cifar10", "--model", "synthimg-tiny-vit", "--pretrained", str(ckpt)]
    return args, folders
